"""Fixtures the bot's end-to-end test modules share: the sample index, bots started on it, and the
OpenAI-compatible stand-in the answerer talks to over HTTP."""

from __future__ import annotations

import pytest
from support.openai_server import OpenAIStandIn
from support.slack_harness import harness_factory, open_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory, embedder):
    """(config, searcher) over an index of the sample corpus, built once per module."""
    return open_sample(tmp_path_factory.mktemp("store"), embedder)


@pytest.fixture
def make_harness(sample, tmp_path):
    """Start a bot: make_harness(bot={...}, answer={...}, empty=True) tunes it."""
    with harness_factory(sample, tmp_path / "feedback.sqlite3") as make:
        yield make


@pytest.fixture(scope="module")
def model_server():
    """One stand-in per module: starting a server per test would be most of a fast test's time."""
    with OpenAIStandIn() as s:
        yield s


@pytest.fixture
def server(model_server):
    """The stand-in with nothing scripted or recorded by an earlier test."""
    model_server.reset()
    return model_server
