"""A cache of derived data kept in the index store as one gzip'd file of keyed text lines.

The chunk cache (ingest/chunk_cache.py) and the keyword tokens cache (ingest/keyword.py)
are both "what the last ingest computed, by content key, for this version of the code":
`<folder>/<code version><suffix>` in the store, replaced atomically by each ingest with the
lines it used (so entries of deleted content drop out). Of other code versions' files the
newest is kept (two releases ingesting into one store during an upgrade, the old nightly beside
a new manual run, would otherwise delete each other's and chunk everything at every run), older
ones removed.
A line is kept as read: an unchanged entry is written back without being decoded and encoded
again, and a file that would come out the same is not written at all (a scheduled re-ingest
of unchanged sources uploads nothing). It is only a cache: a file that cannot be read or
written is logged, never fatal.
"""

from __future__ import annotations

import gzip
import io
import logging
from typing import Callable, Collection, Iterable

from flytegpt.ingest.store import atomic_writer, get_fs, join, list_dir, modified_time, read_bytes

log = logging.getLogger(__name__)

KEEP_OTHER_VERSIONS = 1  # files of other code versions kept (the newest), see above


class LineFile:
    """One cache file: `read()` gives {key: line}, `save(...)` replaces it when it changed."""

    def __init__(self, store: str, folder: str, version: str, suffix: str, key_of: Callable[[str], str]) -> None:
        self.fs, root = get_fs(store)
        self.folder = join(root, folder)
        self.suffix = suffix
        self.path = join(self.folder, f"{version}{suffix}")
        self._key_of = key_of
        self._read: frozenset[str] | None = None  # the keys of the file as read (None: not read, or unusable)

    def read(self) -> dict[str, str]:
        """Every line by its key (lines end with a newline); {} when there is no usable file."""
        known: dict[str, str] = {}
        try:
            data = read_bytes(self.fs, self.path)
            if data is not None:
                with gzip.open(io.BytesIO(data), "rt", encoding="utf-8", newline="\n") as lines:
                    for line in lines:
                        if line.endswith("\n"):  # a last line without one was cut off
                            known[self._key_of(line)] = line
        # a damaged file, or the store's client failing in its own way (botocore's errors are no OSError)
        except Exception as e:  # noqa: BLE001
            log.warning("cache %s is unreadable (%s): computing every entry afresh", self.path, e)
            return {}
        self._read = frozenset(known)
        return known

    def save(self, keys: Collection[str], lines: Iterable[str], *, fresh: bool) -> None:
        """Replace the file with `lines` (one per key in `keys`), unless it holds them already:
        nothing was computed afresh (`fresh`) and the keys are exactly those read."""
        if not fresh and self._read is not None and self._read == frozenset(keys):
            return
        self._write(lines)

    def _write(self, lines: Iterable[str]) -> None:
        """Replace the file with `lines` (each ending in a newline), then drop other versions' files
        but the newest."""
        try:
            with atomic_writer(self.fs, self.path) as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                    text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
                    for line in lines:
                        text.write(line)
                    text.flush()
                    text.detach()
            others = []
            for entry in list_dir(self.fs, self.folder):
                name = entry["name"].rstrip("/")
                if name != self.path and name.endswith(self.suffix):
                    when = modified_time(self.fs, name, entry)
                    others.append((when.timestamp() if when else 0.0, name))
            for _, name in sorted(others)[:-KEEP_OTHER_VERSIONS]:
                self.fs.rm(name)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be written costs time next run, nothing else
            log.warning("could not write the cache %s: %s", self.path, e)
