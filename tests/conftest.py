"""Shared test setup: everything offline, nothing outside 127.0.0.1, no state in $HOME."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ONNX exports (the graph OpenVINO runs) go to a folder of this test run, not
# ~/.cache; child processes (the CLI, flytekit) inherit it, so each graph is made once per run.
if "FLYTEGPT_ONNX_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["FLYTEGPT_ONNX_CACHE"] = tempfile.mkdtemp(prefix="flytegpt-test-onnx-")
    atexit.register(shutil.rmtree, os.environ["FLYTEGPT_ONNX_CACHE"], True)
# Secrets from a developer's shell must never leak into tests.
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_API_URL"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2 model, PyTorch fp32 on CPU (the reference), loaded once.

    Not the machine's default (OpenVINO, bf16 where the CPU has it): tests compare vectors to
    1e-4 and must give the same results on every CPU; tests/test_speed_paths.py covers the rest.
    """
    from flytegpt.ingest.config import EmbeddingsConfig
    from flytegpt.ingest.embedding import Embedder

    return Embedder.from_config(EmbeddingsConfig(device="cpu", backend="torch", precision="fp32"))
