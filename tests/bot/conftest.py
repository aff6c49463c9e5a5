"""Fixtures the bot's end-to-end test modules share: the sample index, and bots started on it."""

from __future__ import annotations

import pytest
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
