"""The model cache's small JSON files: a reader sees the whole old file or the whole new one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from flytegpt.ingest.json_files import read_json_dict, write_json_atomic


def test_written_file_is_whole_and_readable_by_all(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "autotune.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]}, indent=1, sort_keys=True)
    assert read_json_dict(path) == {"a": [1, 2], "b": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a shared cache: other users read it
    assert [p.name for p in path.parent.iterdir()] == ["autotune.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "fingerprints.json"
    write_json_atomic(path, {"old": "digest"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"new": object()})  # fails half-way through serialising
    assert json.loads(path.read_text()) == {"old": "digest"}
    assert [p.name for p in tmp_path.iterdir()] == ["fingerprints.json"]


@pytest.mark.parametrize("content", [None, "", "{half", "[1, 2]", '"text"', "\x00\xff"])
def test_reading_anything_else_gives_an_empty_dict(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "check.json"
    if content is not None:
        path.write_text(content, errors="surrogateescape")
    assert read_json_dict(path) == {}


def test_an_unwritable_cache_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OSError):
        write_json_atomic(blocker / "autotune.json", {})
