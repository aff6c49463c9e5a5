"""What the workflow's `plan` task reads on a CPU: the store's embedding cache, one shard at a time
(EmbeddingCache.gather), to send only the chunks without a vector to the GPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from flytegpt.ingest.embedding_cache import EmbeddingCache


def _vectors(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start * 8, (start + n) * 8, dtype=np.float32).reshape(n, 8)


def test_gather_returns_the_cached_vectors_in_the_order_asked_and_says_what_is_missing(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = EmbeddingCache(store, "test/model", 8)
    first.add(["a", "b", "c"], _vectors(3))
    first.flush()
    second = EmbeddingCache(store, "test/model", 8)
    second.add(["d", "e"], _vectors(2, start=3))
    second.flush()  # two shards in the store

    found, vectors = EmbeddingCache(store, "test/model", 8).gather(["e", "x", "a", "e", "c", "y"])
    assert found == ["e", "a", "c"]  # each once, in the order asked; "x" and "y" are to embed
    assert np.array_equal(vectors, np.stack([_vectors(1, 4)[0], _vectors(1, 0)[0], _vectors(1, 2)[0]]))
    assert vectors.dtype == np.float32

    none, empty = EmbeddingCache(store, "test/model", 8).gather(["x"])
    assert none == [] and empty.shape == (0, 8)
    assert EmbeddingCache(store, "other/model", 8).gather(["a"])[0] == []  # vectors are per model


def test_gather_skips_a_shard_that_does_not_load_and_sees_only_what_was_flushed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = str(tmp_path / "store")
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(["a", "b"], _vectors(2))
    cache.flush()
    broken = Path(cache.folder) / "00000000T000000Z-broken.npz"
    broken.write_bytes(b"not a zip")  # a truncated upload
    cache.add(["c"], _vectors(1, start=2))  # not flushed: not in the store yet

    with caplog.at_level(logging.WARNING):
        found, vectors = EmbeddingCache(store, "test/model", 8).gather(["a", "b", "c"])
    assert found == ["a", "b"] and np.array_equal(vectors, _vectors(2))
    assert "skipping unreadable shard" in caplog.text
