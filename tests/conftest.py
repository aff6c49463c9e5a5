"""Shared test setup: everything offline, nothing outside 127.0.0.1, no state in $HOME."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Secrets from a developer's shell must never leak into tests.
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_API_URL"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2 model on CPU, loaded once per test session."""
    from ingest.config import EmbeddingsConfig
    from ingest.embedding import Embedder

    return Embedder.from_config(EmbeddingsConfig(device="cpu"))
