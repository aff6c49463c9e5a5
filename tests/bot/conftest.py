"""Fixtures the bot's end-to-end test modules share: the sample index, bots started on it, and the
OpenAI-compatible stand-in the answerer talks to over HTTP."""

from __future__ import annotations

import pytest
from support.openai_server import OpenAIStandIn
from support.slack_harness import build_sample_index, harness_factory, open_sample, tuned


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


@pytest.fixture(scope="module")
def built_store(tmp_path_factory, embedder):
    """A store with the sample index published, built once per module; tests copy it (`reload_config`)."""
    store = tmp_path_factory.mktemp("store-v1")
    build_sample_index(store, embedder)
    return store


@pytest.fixture
def reload_config(built_store, tmp_path):
    """make(**bot): a config on a private copy of `built_store` (tests publish into it)."""
    import shutil

    from flytegpt.ingest.config import load_config, sample_config_path

    def make(**bot):
        store = tmp_path / "store"
        shutil.copytree(built_store, store)
        base = load_config(sample_config_path()).with_store(str(store))
        return tuned(base, feedback_db=tmp_path / "feedback.sqlite3", **({"bot": bot} if bot else {}))

    return make
