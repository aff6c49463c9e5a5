"""Small, deterministic index contents for artifact and store tests (local, s3://, subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from flytegpt.ingest.models import Chunk, ModelInfo

MODEL = ModelInfo("test/model", 8, True)


def make_chunks(n: int, tag: str = "") -> list[Chunk]:
    sources = ["docs:a.md", "docs:b.md", "slack:general/1.0", "code:pkg/x.py"]
    return [
        Chunk(
            source_id=sources[i % len(sources)],
            kind="code" if i % 4 == 3 else "docs",
            title=f"title {i}",
            url=f"https://example.org/{i}",
            text=f"chunk {i} {tag} text",
            embed_text=f"embedded chunk number {i} {tag}" + (" with_overrides" if i == 1 else ""),
            start_line=i if i % 4 == 3 else None,
            end_line=i + 5 if i % 4 == 3 else None,
        )
        for i in range(n)
    ]


def make_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def edit_manifest(store: Path, version: str, edit: Callable[[dict], object]) -> None:
    """Change a published version's manifest in place (what a corrupt or hostile store holds)."""
    path = store / version / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def published_versions(store: str | Path, sizes: tuple[int, ...]) -> list[str]:
    """One published version of `n` fake chunks per size, oldest first (the last is LATEST)."""
    import time

    from flytegpt.ingest.artifact import publish, write_version

    versions = []
    for i, n in enumerate(sizes):
        if i:
            time.sleep(1.0)  # version ids carry the time in seconds
        version = write_version(str(store), make_chunks(n, tag=str(i)), make_vectors(n, seed=i), MODEL)
        publish(str(store), version, max_shrink=1.0)  # sizes go down as well as up here
        versions.append(version)
    return versions
