"""Work files (flyte/handoff.py) that a cached task made long ago stay while a run still reads them."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flytegpt.flyte import handoff
from flytegpt.ingest.artifact import prune_work_files


def test_a_work_file_read_by_tonights_run_is_not_pruned_under_it(tmp_path: Path) -> None:
    """An unchanged embedding shard is a Flyte cache hit night after night: its task never runs
    again, so its file kept the day it was written, and publishing (which prunes `flyte-work/`
    files older than the oldest version kept) deleted it while `merge` still read it every night."""
    store = str(tmp_path / "store")
    old = handoff.write_work_file(store, "vectors", b"unchanged shard", ".npy")
    unread = handoff.write_work_file(store, "vectors", b"a shard nobody reads", ".npy")
    weeks_ago = time.time() - 14 * 86400
    for path in (old, unread):
        os.utime(path, (weeks_ago, weeks_ago))
    assert handoff.read_work_file(old) == b"unchanged shard"
    removed = prune_work_files(store, before=datetime.now(timezone.utc) - timedelta(days=1))
    assert removed == [unread] and Path(old).is_file()
    # a file read within REFRESH_AFTER_S is not touched again (no write per read)
    stamp = Path(old).stat().st_mtime
    handoff.read_work_file(old)
    assert Path(old).stat().st_mtime == stamp


def _keys(n: int, salt: str = "") -> list[str]:
    import hashlib

    return [hashlib.sha256(f"{salt}chunk {i}".encode()).hexdigest() for i in range(n)]


def test_shards_are_cut_by_content_so_one_new_text_changes_one_shard() -> None:
    """When shards were consecutive slices of the chunk table, an inserted page moved every later cut, so
    every later shard's GPU task missed Flyte's cache. Cut by content, a new key changes the shard it
    falls in (or splits one, when it is itself a cut), and every other shard keeps its exact keys."""
    keys = _keys(400)
    shards = handoff.content_shards(keys, above=50, size=20)
    assert sorted(k for s in shards for k in s) == sorted(keys)  # each key once
    assert 10 <= len(shards) <= 40  # `size` on average
    assert handoff.content_shards(list(reversed(keys)), above=50, size=20) == shards  # order does not matter
    for new in _keys(30, salt="new page "):
        again = handoff.content_shards([*keys, new], above=50, size=20)
        changed = [s for s in again if s not in shards]
        kept = [s for s in shards if s in again]
        assert new in {k for s in changed for k in s}
        assert len(changed) <= 2 and len(kept) == len(shards) - 1, (len(changed), len(kept))
    # up to `above` keys: one shard; none: no shard at all
    assert handoff.content_shards(keys[:50], above=50, size=20) == [sorted(keys[:50])]
    assert handoff.content_shards([], above=50, size=20) == []


def test_merge_puts_cached_and_new_vectors_back_in_chunk_order() -> None:
    import numpy as np

    keys = _keys(6)
    chunk_keys = [keys[3], keys[0], keys[5], keys[3], keys[1], keys[2], keys[4]]  # one text twice
    found = [keys[0], keys[3]]
    shards = [[keys[5], keys[1]], [keys[4], keys[2]]]
    vector = {k: np.full(3, i, dtype=np.float32) for i, k in enumerate(keys)}
    rows = handoff.layout_rows(chunk_keys, found, shards)
    blocks = [np.stack([vector[k] for k in found])] + [np.stack([vector[k] for k in s]) for s in shards]
    assert np.array_equal(handoff.assemble(rows, blocks), np.stack([vector[k] for k in chunk_keys]))
    empty = np.empty((0, 3), dtype=np.float32)  # nothing was cached
    rows = handoff.layout_rows(chunk_keys, [], [keys])
    assert np.array_equal(handoff.assemble(rows, [empty, np.stack([vector[k] for k in keys])]),
                          np.stack([vector[k] for k in chunk_keys]))
    with pytest.raises(ValueError, match="incomplete"):  # a shard's vectors missing
        handoff.assemble(rows, [empty])
    layout = handoff.npz_load(handoff.npz_bytes(rows=rows, found=empty))
    assert np.array_equal(layout["rows"], rows) and layout["found"].shape == (0, 3)
