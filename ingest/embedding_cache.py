"""Content-addressed embedding cache in the index store, so re-ingest cost follows change.

Layout: `<store>/embeddings/<model slug>/<shard>.npz`, each shard holding `keys`
(fixed-width ASCII, the chunk's content key) and `vectors` (float32). Shards are only
ever added (one per flush) and merged when there are many, so concurrent ingests can't
corrupt each other, and a shard that does not load is skipped: it is only a cache.
An ingest flushes a shard every `[embeddings] cache_shard_size` new vectors while it embeds,
so a killed ingest loses at most the vectors of one shard and the next run continues.
No pickle: arrays are plain dtypes and loading uses allow_pickle=False.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import zipfile
from typing import Sequence

import numpy as np

from flytegpt.ingest.store import atomic_writer, get_fs, join, list_dir

log = logging.getLogger(__name__)

COMPACT_ABOVE = 16  # shards; more than this and flush() merges them into one
READ_BLOCK_ROWS = 4096  # rows of a shard read at once by gather() (6 MB at 384 float32)


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model_id).strip("_") or "model"


def _shard_name() -> str:
    # sortable by time, unique across concurrent writers
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{secrets.token_hex(4)}.npz"


class EmbeddingCache:
    """Vectors by content key (`Chunk.content_key(model_id)`) for one model."""

    def __init__(self, store: str, model_id: str, dimension: int) -> None:
        self.model_id = model_id
        self.dimension = dimension
        self.fs, root = get_fs(store)
        self.folder = join(root, "embeddings", model_slug(model_id))
        self._vectors: dict[str, np.ndarray] | None = None  # everything known, loaded once per run
        self._shards: list[str] = []  # shard paths read into _vectors
        # Added since the last flush, as the caller's blocks (keys, vectors): a shard is written
        # from them without stacking one small array per row into a second copy.
        self._pending: list[tuple[list[str], np.ndarray]] = []
        self._written: set[str] = set()  # keys added with hold=False: in a shard, not in _vectors

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            for path in self._shard_paths():
                shard = self._read_shard(path)
                if shard is not None:
                    keys, vectors = shard
                    self._vectors.update(zip(keys, vectors))
                    self._shards.append(path)
        return self._vectors

    def _shard_paths(self) -> list[str]:
        return sorted(
            e["name"] for e in list_dir(self.fs, self.folder)
            if e["name"].endswith(".npz") and e.get("type") == "file"
        )

    def _read_shard(self, path: str) -> tuple[list[str], np.ndarray] | None:
        try:
            # Opened, not read whole: np.load reads the members from the file (no bytes copy).
            with self.fs.open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
                keys = npz["keys"]
                vectors = npz["vectors"]
            if vectors.ndim != 2 or vectors.shape != (len(keys), self.dimension):
                raise ValueError(
                    f"shape {vectors.shape}, expected ({len(keys)}, {self.dimension})"
                )
            return [k.decode("ascii") for k in keys.tolist()], vectors.astype(np.float32, copy=False)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            log.warning("embedding cache: skipping unreadable shard %s (%s)", path, e)
            return None

    def __len__(self) -> int:
        return len(self._load())

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys` (missing keys are simply absent)."""
        known = self._load()
        return {k: known[k] for k in keys if k in known}

    def gather(self, keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The stored vectors among `keys`: (the keys found, unique, in the order of `keys`; their
        vectors as one float32 array). The keys not found are the ones still to embed.

        Read one shard at a time, keeping only the rows asked for: an ingest (and the Flyte
        workflow's `plan` and `embed` tasks) needs the vectors of one corpus, not every vector
        the store ever cached for the model (every page and thread as it read on every night),
        in memory at once. What this instance added but did not flush is not seen: it reads
        the store.
        """
        wanted = dict.fromkeys(keys)  # unique, in order
        row_of: dict[str, int] = {}  # a found key -> its row in the blocks stacked
        blocks: list[np.ndarray] = []
        for path in self._shard_paths():
            try:
                found_here = self._read_rows(path, wanted, row_of)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
                log.warning("embedding cache: skipping unreadable shard %s (%s)", path, e)
                continue
            for key, _ in found_here:
                row_of[key] = len(row_of)
            if found_here:
                blocks.append(np.stack([v for _, v in found_here]))
            if path not in self._shards:
                self._shards.append(path)  # read this run: a later flush may merge it
        if not row_of:
            return [], np.empty((0, self.dimension), dtype=np.float32)
        stacked = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        del blocks
        found = [key for key in wanted if key in row_of]
        return found, stacked[[row_of[key] for key in found]]

    def _read_rows(self, path: str, wanted: dict[str, None], taken: dict[str, int]) -> list[tuple[str, np.ndarray]]:
        """The rows of one shard whose keys are wanted and not taken yet, read block by block.

        A compacted shard holds every vector the model ever cached (GBs after months of nightly
        ingests): its `vectors` member is read `READ_BLOCK_ROWS` rows at a time, so memory follows
        what is asked for, not the shard's size. Raises what a damaged shard raises.
        """
        with self.fs.open(path, "rb") as f, zipfile.ZipFile(f) as npz:
            with npz.open("keys.npy") as member:
                keys = np.lib.format.read_array(member, allow_pickle=False)
            names = [k.decode("ascii") for k in keys.tolist()]
            rows = [i for i, key in enumerate(names) if key in wanted and key not in taken]
            with npz.open("vectors.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(member)
                if shape != (len(names), self.dimension) or fortran or dtype.kind != "f":
                    raise ValueError(f"shape {shape} ({dtype}), expected ({len(names)}, {self.dimension})")
                row_bytes = self.dimension * dtype.itemsize
                out: list[tuple[str, np.ndarray]] = []
                seen: set[str] = set()
                # Read to the end, in blocks, even past the last row asked for: the zip's CRC of
                # the member is checked once it is read whole, so a damaged shard is not served.
                i = 0
                for first in range(0, len(names), READ_BLOCK_ROWS):
                    count = min(READ_BLOCK_ROWS, len(names) - first)
                    data = member.read(count * row_bytes)
                    if len(data) != count * row_bytes:
                        raise EOFError(f"vectors end at row {first + len(data) // row_bytes}")
                    array = np.frombuffer(data, dtype=dtype).reshape(count, self.dimension)
                    while i < len(rows) and rows[i] < first + count:
                        r = rows[i]
                        if names[r] not in seen:
                            seen.add(names[r])
                            out.append((names[r], array[r - first].astype(np.float32)))  # a copy
                        i += 1
                if member.read(1):
                    raise ValueError("more data than the header says")
        return out

    def add(self, keys: Sequence[str], vectors: np.ndarray, *, hold: bool = True) -> None:
        """Remember new vectors; the block is kept as given (no per-row copies) until `flush`.

        `hold=False`: after the flush only the keys are remembered, not the vectors (a caller
        that keeps its own copy, such as an ingest's output array, needs no second one); and
        the cache is not loaded to check the keys against it: such a caller adds what `gather`
        did not find (a key another run cached meanwhile is stored twice, which reads the same).
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dimension):
            raise ValueError(
                f"embedding cache: got vectors of shape {vectors.shape} for {len(keys)} keys, "
                f"dimension {self.dimension}"
            )
        known = self._load() if hold else (self._vectors or {})
        # First occurrence of each key not cached yet: the same text may come twice in `keys`.
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in known and key not in self._written and key not in first:
                first[key] = i
        if not first:
            return
        if len(first) < len(keys):
            keys, vectors = list(first), vectors[list(first.values())]
        if hold:
            known.update(zip(keys, vectors))
        else:
            self._written.update(keys)
        self._pending.append((list(keys), vectors))

    def _write_shard(self, keys: Sequence[str], vectors: np.ndarray) -> str:
        """Write one shard; on a local store the arrays stream to the file (no in-memory copy)."""
        key_array = np.array([k.encode("ascii") for k in keys], dtype=f"S{max(map(len, keys))}")
        path = join(self.folder, _shard_name())
        with atomic_writer(self.fs, path) as f:
            np.savez(f, keys=key_array, vectors=np.ascontiguousarray(vectors, dtype=np.float32))
        return path

    @property
    def pending(self) -> int:
        """Vectors added since the last flush."""
        return sum(len(keys) for keys, _ in self._pending)

    def _write_pending(self) -> int:
        keys = [k for block_keys, _ in self._pending for k in block_keys]
        blocks = [v for _, v in self._pending]
        vectors = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        self._shards.append(self._write_shard(keys, vectors))
        self._pending = []
        return len(keys)

    def flush(self, *, compact: bool = True) -> None:
        """Persist what was added since the last flush as one new shard; merge if many.

        `compact=False` while an ingest is still embedding: merging rewrites every shard, so it
        waits for the last flush.
        """
        if self._pending:
            log.info("embedding cache: stored %d new vectors", self._write_pending())
        if compact and len(self._shards) > COMPACT_ABOVE:
            self.compact()

    def compact(self) -> None:
        """Merge every shard this run has read or written into one, then delete the old ones.

        The shards are read back from the store (vectors added with hold=False are not in
        memory). The merged shard is written before anything is deleted, so a crash loses nothing.
        """
        if self._pending:
            self._write_pending()
        if len(self._shards) <= 1:
            return
        old = list(self._shards)
        keys: list[str] = []
        blocks: list[np.ndarray] = []
        seen: set[str] = set()
        for path in old:
            shard = self._read_shard(path)
            if shard is None:
                continue
            rows = [i for i, key in enumerate(shard[0]) if key not in seen]
            seen.update(shard[0][i] for i in rows)
            keys.extend(shard[0][i] for i in rows)
            blocks.append(shard[1][rows])
        if not keys:
            return
        merged = self._write_shard(keys, np.concatenate(blocks))
        del blocks
        for path in old:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
        self._shards = [merged]
        log.info("embedding cache: merged %d shards into one (%d vectors)", len(old), len(keys))
