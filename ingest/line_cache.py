"""A cache of derived data kept in the index store as one gzip'd file of keyed text lines.

The chunk cache (ingest/chunk_cache.py) and the keyword tokens cache (ingest/keyword.py)
are both "what the last ingest computed, by content key, for this version of the code":
`<folder>/<code version><suffix>` in the store, replaced atomically by each ingest with the
lines it used (so entries of deleted content drop out), files of other code versions removed.
A line is kept as read: an unchanged entry is written back without being decoded and encoded
again. It is only a cache: a file that cannot be read or written is logged, never fatal.
"""

from __future__ import annotations

import gzip
import io
import logging
from typing import Callable, Iterable

from flytegpt.ingest.store import atomic_writer, get_fs, join, list_dir, read_bytes

log = logging.getLogger(__name__)


class LineFile:
    """One cache file: `read()` gives {key: line}, `write(lines)` replaces it."""

    def __init__(self, store: str, folder: str, version: str, suffix: str, key_of: Callable[[str], str]) -> None:
        self.fs, root = get_fs(store)
        self.folder = join(root, folder)
        self.suffix = suffix
        self.path = join(self.folder, f"{version}{suffix}")
        self._key_of = key_of

    def read(self) -> dict[str, str]:
        """Every line by its key (lines end with a newline); {} when there is no usable file."""
        known: dict[str, str] = {}
        data = read_bytes(self.fs, self.path)
        if data is None:
            return known
        try:
            with gzip.open(io.BytesIO(data), "rt", encoding="utf-8", newline="\n") as lines:
                for line in lines:
                    if line.endswith("\n"):  # a last line without one was cut off
                        known[self._key_of(line)] = line
        except (OSError, EOFError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            log.warning("cache %s is unreadable (%s): computing every entry afresh", self.path, e)
            return {}
        return known

    def write(self, lines: Iterable[str]) -> None:
        """Replace the file with `lines` (each ending in a newline), then drop other versions' files."""
        try:
            with atomic_writer(self.fs, self.path) as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                    text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
                    for line in lines:
                        text.write(line)
                    text.flush()
                    text.detach()
            for entry in list_dir(self.fs, self.folder):
                name = entry["name"].rstrip("/")
                if name != self.path and name.endswith(self.suffix):
                    self.fs.rm(name)
        except OSError as e:  # a cache that cannot be written costs time next run, nothing else
            log.warning("could not write the cache %s: %s", self.path, e)
