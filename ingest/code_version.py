"""A fingerprint of the code behind a stage: it changes exactly when that code changes.

Caches of derived data (the chunk cache here, Flyte's task cache in flyte/cache.py) key on
it, so editing the chunker re-chunks everything without anybody bumping a version by hand.
Files are read, not imported, so computing a fingerprint costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Iterable

INGEST_ROOT = Path(__file__).resolve().parent
# The modules (globs relative to the ingest package) whose code decides a document's chunks.
CHUNKING_CODE = ("models.py", "chunking.py", "code_chunking.py", "doc_sections.py", "languages.py")


def code_version(modules: Iterable[str], *, root: Path | None = None, extra: str = "") -> str:
    """sha256 over the named module sources (and `extra`), shortened to 16 hex digits.

    A module that does not exist still counts (by name), so adding it later changes the version.
    """
    root = root or INGEST_ROOT
    h = hashlib.sha256()
    for pattern in modules:
        paths = sorted(root.glob(pattern))
        if not paths:
            h.update(f"missing:{pattern}\0".encode())
        for path in paths:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    if extra:
        h.update(b"extra\0" + extra.encode())
    return h.hexdigest()[:16]


@functools.cache
def chunking_version() -> str:
    return code_version(CHUNKING_CODE)
