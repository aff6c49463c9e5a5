"""Content-addressed embedding cache in the index store, so re-ingest cost follows change.

Layout: `<store>/embeddings/<model slug>/<shard>.npz`, each shard holding `keys`
(fixed-width ASCII, the chunk's content key) and `vectors` (float32). Shards are only
ever added (one per flush) and merged when there are many, so concurrent ingests can't
corrupt each other, and a shard that does not load is skipped: it is only a cache.
An ingest flushes a shard every `[embeddings] cache_shard_size` new vectors while it embeds,
so a killed ingest loses at most the vectors of one shard and the next run continues.
No pickle: arrays are plain dtypes and loading uses allow_pickle=False.

A shard also holds `days` (uint32, days since 1970 UTC): when each vector was stored (a shard
written before that member existed counts from the time in its name). Merging keeps them, and a
merge told which keys the corpus has now (`compact(keep=...)`, only by a run that saw the whole
corpus) drops the vectors of text the corpus no longer has once they are EVICT_AFTER_DAYS old:
without that the cache kept every page and thread as it read on every night, for good.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import zipfile
from collections.abc import Collection, Iterator
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from flytegpt.ingest.store import atomic_writer, get_fs, join, list_dir

log = logging.getLogger(__name__)

COMPACT_ABOVE = 16  # shards; more than this and flush() merges them into one
READ_BLOCK_ROWS = 4096  # rows of a shard read at once by gather() and compact() (6 MB at 384 float32)
EVICT_AFTER_DAYS = 30  # a vector of text the corpus no longer has is dropped by a merge after this
_SHARD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)


def _today() -> int:
    return int(time.time() // 86400)


def _shard_day(path: str) -> int:
    """The day a shard's name says it was written (its vectors' day when it has no `days`)."""
    name = path.rsplit("/", 1)[-1]
    try:
        return int(datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp() // 86400)
    except ValueError:
        return _today()


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model_id).strip("_") or "model"


def _shard_name() -> str:
    # sortable by time, unique across concurrent writers
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{secrets.token_hex(4)}.npz"


def remove_model(store: str, model_id: str) -> bool:
    """Delete every cached vector of `model_id` (a tuned model pruned with the versions that used
    it: its vectors would never be read again). Returns whether there was anything."""
    fs, root = get_fs(store)
    folder = join(root, "embeddings", model_slug(model_id))
    if not fs.exists(folder):
        return False
    fs.rm(folder, recursive=True)
    return True


class EmbeddingCache:
    """Vectors by content key (`Chunk.content_key(model_id)`) for one model."""

    def __init__(self, store: str, model_id: str, dimension: int) -> None:
        self.model_id = model_id
        self.dimension = dimension
        self.fs, root = get_fs(store)
        self.folder = join(root, "embeddings", model_slug(model_id))
        # Added since the last flush, as the caller's blocks (keys, vectors): a shard is written
        # from them without stacking one small array per row into a second copy.
        self._pending: list[tuple[list[str], np.ndarray]] = []
        self._added: set[str] = set()  # keys this instance added (pending or written): stored once

    def _shard_paths(self) -> list[str]:
        return sorted(
            e["name"] for e in list_dir(self.fs, self.folder)
            if e["name"].endswith(".npz") and e.get("type") == "file"
        )

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors among `keys` the store holds or this instance added (missing keys are absent)."""
        found = dict(zip(*self.gather(keys)))
        wanted = set(keys)
        for block_keys, block in self._pending:
            for key, vector in zip(block_keys, block):
                if key in wanted:
                    found.setdefault(key, vector)
        return found

    def gather(self, keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The stored vectors among `keys`: (the keys found, unique, in the order of `keys`; their
        vectors as one float32 array). The keys not found are the ones still to embed.

        Read one shard at a time, `READ_BLOCK_ROWS` rows at a time, keeping only the rows asked
        for: an ingest (and the Flyte workflow's `plan` and `embed` tasks) needs the vectors of
        one corpus, not every vector the store cached for the model, in memory at once. What
        this instance added but did not flush is not seen: it reads the store.
        """
        wanted = dict.fromkeys(keys)  # unique, in order
        row_of: dict[str, int] = {}  # a found key -> its row in the blocks stacked
        blocks: list[np.ndarray] = []
        for path in self._shard_paths():
            try:
                names, _ = self._read_keys(path)
                rows, here = [], set()
                for i, key in enumerate(names):
                    if key in wanted and key not in row_of and key not in here:
                        here.add(key)
                        rows.append(i)
                found = [(names[r], block) for r, block in self._rows(path, rows)]
            except _SHARD_ERRORS as e:
                log.warning("embedding cache: skipping unreadable shard %s (%s)", path, e)
                continue
            for key, _ in found:
                row_of[key] = len(row_of)
            if found:
                blocks.append(np.stack([v for _, v in found]))
        if not row_of:
            return [], np.empty((0, self.dimension), dtype=np.float32)
        stacked = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        del blocks
        found_keys = [key for key in wanted if key in row_of]
        return found_keys, stacked[[row_of[key] for key in found_keys]]

    def _read_keys(self, path: str) -> tuple[list[str], np.ndarray]:
        """A shard's keys and the day each vector was stored, without its vectors."""
        with self.fs.open(path, "rb") as f, zipfile.ZipFile(f) as npz:
            with npz.open("keys.npy") as member:
                keys = np.lib.format.read_array(member, allow_pickle=False)
            if "days.npy" in npz.namelist():
                with npz.open("days.npy") as member:
                    days = np.lib.format.read_array(member, allow_pickle=False).astype(np.int64)
                if days.shape != keys.shape:
                    raise ValueError(f"{len(days)} days for {len(keys)} keys")
            else:
                days = np.full(len(keys), _shard_day(path), dtype=np.int64)
        return [k.decode("ascii") for k in keys.tolist()], days

    def _rows(self, path: str, rows: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(row, its vector as a float32 copy) for the ascending `rows` of a shard, reading its
        `vectors` member READ_BLOCK_ROWS rows at a time and always to its end: the zip's CRC of
        the member is checked once it has been read whole, so a damaged shard raises at the end,
        and the caller drops what it was given (gather skips the shard, a merge writes nothing).
        """
        with self.fs.open(path, "rb") as f, zipfile.ZipFile(f) as npz, npz.open("vectors.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(member)
            if len(shape) != 2 or shape[1] != self.dimension or fortran or dtype.kind != "f":
                raise ValueError(f"shape {shape} ({dtype}), expected (n, {self.dimension})")
            n, row_bytes = shape[0], self.dimension * dtype.itemsize
            i = 0
            for first in range(0, n, READ_BLOCK_ROWS):
                count = min(READ_BLOCK_ROWS, n - first)
                data = member.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise EOFError(f"vectors end at row {first + len(data) // row_bytes}")
                array = np.frombuffer(data, dtype=dtype).reshape(count, self.dimension)
                while i < len(rows) and rows[i] < first + count:
                    yield rows[i], array[rows[i] - first].astype(np.float32)  # a copy
                    i += 1
            if member.read(1):
                raise ValueError("more data than the header says")
            if i < len(rows):
                raise ValueError(f"row {rows[i]} asked of a shard of {n}")

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Remember new vectors until `flush`; the block is kept as given (no per-row copies) and
        no copy is kept after it (the caller, an ingest's output array, has its own). Each key is
        stored once per instance; the store is not read to check the keys: a caller adds what
        `gather` did not find (a key another run cached meanwhile is stored twice, which reads
        the same)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dimension):
            raise ValueError(
                f"embedding cache: got vectors of shape {vectors.shape} for {len(keys)} keys, "
                f"dimension {self.dimension}"
            )
        # First occurrence of each key not added yet: the same text may come twice in `keys`.
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in self._added and key not in first:
                first[key] = i
        if not first:
            return
        if len(first) < len(keys):
            keys, vectors = list(first), vectors[list(first.values())]
        self._added.update(keys)
        self._pending.append((list(keys), vectors))

    def _write_shard(self, keys: Sequence[str], vectors: np.ndarray) -> str:
        """Write one shard of vectors stored today; on a local store the arrays stream to the file."""
        key_array = np.array([k.encode("ascii") for k in keys], dtype=f"S{max(map(len, keys))}")
        path = join(self.folder, _shard_name())
        with atomic_writer(self.fs, path) as f:
            np.savez(f, keys=key_array, vectors=np.ascontiguousarray(vectors, dtype=np.float32),
                     days=np.full(len(keys), _today(), dtype="<u4"))
        return path

    def _write_merged(self, keys: list[str], days: list[int], rows: Iterator[np.ndarray]) -> str:
        """Write one shard from `rows` (a vector each, in the order of `keys`) as they come: a
        merge of a cache bigger than memory holds one block of them, not the whole cache. The
        same .npz layout np.savez writes (zip of .npy members, stored), so np.load reads it."""
        key_array = np.array([k.encode("ascii") for k in keys], dtype=f"S{max(map(len, keys))}")
        path = join(self.folder, _shard_name())
        with atomic_writer(self.fs, path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open("keys.npy", "w") as member:
                np.lib.format.write_array(member, key_array, allow_pickle=False)
            with z.open("days.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(days, dtype="<u4"), allow_pickle=False)
            with z.open("vectors.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {"descr": "<f4", "fortran_order": False,
                                                              "shape": (len(keys), self.dimension)})
                block = np.empty((min(READ_BLOCK_ROWS, len(keys)), self.dimension), dtype="<f4")
                written = filled = 0
                for vector in rows:
                    block[filled] = vector
                    filled += 1
                    if filled == len(block):
                        member.write(memoryview(block))
                        written, filled = written + filled, 0
                if filled:
                    member.write(memoryview(block[:filled]))
                    written += filled
                if written != len(keys):
                    raise ValueError(f"merged {written} vectors for {len(keys)} keys")
        return path

    @property
    def pending(self) -> int:
        """Vectors added since the last flush."""
        return sum(len(keys) for keys, _ in self._pending)

    def _write_pending(self) -> int:
        keys = [k for block_keys, _ in self._pending for k in block_keys]
        blocks = [v for _, v in self._pending]
        vectors = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        self._write_shard(keys, vectors)
        self._pending = []
        return len(keys)

    def flush(self, *, compact: bool = True, keep: Collection[str] | None = None) -> None:
        """Persist what was added since the last flush as one new shard; merge if many.

        `compact=False` while an ingest is still embedding: merging rewrites every shard, so it
        waits for the last flush. `keep`: every key of the whole corpus, from a run that saw it
        all (see compact); never a part of it, such as one Flyte embed task's shard.
        """
        if self._pending:
            log.info("embedding cache: stored %d new vectors", self._write_pending())
        if compact and len(self._shard_paths()) > COMPACT_ABOVE:
            self.compact(keep=keep)

    def compact(self, *, keep: Collection[str] | None = None) -> None:
        """Merge every shard of the model's folder into one, then delete the old ones.

        With `keep` (the keys of the whole corpus now), a vector whose key is not in it and that
        was stored more than EVICT_AFTER_DAYS ago is left out: the text it was made for left the
        corpus (an edited page's old section, a thread's old last chunk) long enough ago that a
        version rolled back to does not need it either (a version holds its own vectors).
        Two passes over the shards, keys first, then the vectors streamed into the merged shard;
        it is written before anything is deleted, so a crash (or a shard a concurrent merge
        deleted meanwhile) loses nothing.
        """
        if self._pending:
            self._write_pending()
        old = self._shard_paths()  # a shard another run writes meanwhile is neither merged nor deleted
        if len(old) <= 1:
            return
        wanted = set(keep) if keep is not None else None
        today = _today()
        keys: list[str] = []
        days: list[int] = []
        plan: list[tuple[str, list[int]]] = []
        seen: set[str] = set()
        dropped = 0
        for path in old:
            try:
                names, stored = self._read_keys(path)
            except _SHARD_ERRORS as e:
                log.warning("embedding cache: skipping unreadable shard %s (%s)", path, e)
                continue
            rows = []
            for i, key in enumerate(names):
                if key in seen:
                    continue
                seen.add(key)
                if wanted is not None and key not in wanted and today - int(stored[i]) > EVICT_AFTER_DAYS:
                    dropped += 1
                    continue
                rows.append(i)
                keys.append(key)
                days.append(int(stored[i]))
            if rows:
                plan.append((path, rows))
        if keys:
            vectors = (vector for path, rows in plan for _, vector in self._rows(path, rows))
            try:
                self._write_merged(keys, days, vectors)
            except _SHARD_ERRORS as e:  # a shard damaged or gone meanwhile: keep them all as they are
                log.warning("embedding cache: merging %d shards failed, kept as they are (%s)", len(old), e)
                return
        for path in old:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
        log.info("embedding cache: merged %d shards into one (%d vectors, %d of text no longer in the corpus "
                 "dropped)", len(old), len(keys), dropped)
