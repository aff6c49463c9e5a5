"""The small JSON files of the model cache (autotune choices, int8 checks, weight fingerprints).

Several processes share the cache (an ingest, the bot, a second ingest), so a file is written
to a temporary name in its folder and renamed over the old one: a reader sees a whole file or
the previous one, never half of one. Readable by all (0644): the cache may be an image layer or
a volume shared by other users.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_json_dict(path: Path) -> dict[str, Any]:
    """The file's JSON object; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any, *, indent: int | None = None, sort_keys: bool = False) -> None:
    """Replace `path` with `data` as JSON in one rename. Raises OSError (a read-only or full cache):
    callers decide whether that is worth more than a log line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent, sort_keys=sort_keys)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
