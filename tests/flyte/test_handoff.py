"""Work files (flyte/handoff.py) that a cached task made long ago stay while a run still reads them."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
