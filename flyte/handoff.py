"""How Flyte tasks load the configuration and hand data to each other.

Intermediate files (documents, chunks, vectors) are written into the index store under
`<store>/flyte-work/`, named by the sha256 of their content, and passed on as FlyteFiles
pointing there. Two things follow, locally and on a cluster alike:
- the files are durable (flytekit's local cache keeps a FlyteFile's *path*; a temp dir
  would vanish and turn the next cache hit into an error), and
- a file's URI changes exactly when its content does, so the cache key of the next task
  (computed from its inputs' URIs) is a content hash: same documents, same chunks, cache hit.
Files are read and written with the store's own fsspec settings (ingest.store), so an
S3-compatible endpoint configured for the store works for these files too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from flytegpt.ingest.config import Config, ConfigError, load_config, parse_config
from flytegpt.ingest.store import WORK_DIR, get_fs, is_local, join, make_dirs, read_bytes

if TYPE_CHECKING:
    import numpy as np
    from flytekit.types.file import FlyteFile

log = logging.getLogger(__name__)
REFRESH_AFTER_S = 6 * 3600  # a work file read after this long is marked in use again (see read_work_file)


def load_task_config(config_path: str, store: str = "") -> Config:
    """The configuration a task runs with; `store` (when not empty) overrides [index] store.

    `config_path` is a file in the task image (e.g. the bundled `ingest/sample/flytegpt.toml`,
    relative to the working directory) or an fsspec URL (s3://.../flytegpt.toml); paths inside
    a URL-loaded config are relative to the task's working directory.
    """
    if "://" in config_path:
        fs, path = get_fs(config_path)
        data = read_bytes(fs, path)
        if data is None:
            raise ConfigError(f"config file not found: {config_path}")
        try:
            config = parse_config(tomllib.loads(data.decode("utf-8")), Path.cwd())
        except (tomllib.TOMLDecodeError, ConfigError) as e:
            raise ConfigError(f"{config_path}: {e}") from None
    else:
        config = load_config(config_path)
    if store:
        config = config.with_store(store if "://" in store else str(Path(store).expanduser().resolve()))
    return config


# What the cached stages' output depends on: a task input is part of its cache key, so the index
# settings that only publishing and the bot read (keep_versions, cache_dir) stay out of it, or
# changing how many versions to keep would start the GPU tasks again for the same content.
_STAGE_SETTINGS = {"index": {"store", "index_type", "approximate_threshold"}, "embeddings": True, "tuning": True}


def settings_json(config: Config) -> str:
    """The parts of the configuration the cached stages need (not the sources), as task-input text."""
    return config.model_dump_json(include=_STAGE_SETTINGS)


def config_from_settings(settings: str) -> Config:
    return Config.model_validate_json(settings)


def write_work_file(store: str, stage: str, data: bytes, suffix: str) -> str:
    """Store `data` at `<store>/flyte-work/<stage>/<sha256><suffix>` (once) and return its location."""
    fs, root = get_fs(store)
    digest = hashlib.sha256(data).hexdigest()
    path = join(root, WORK_DIR, stage, digest + suffix)
    if not fs.exists(path):
        # Content-addressed: a concurrent writer can only write the same bytes. A folder only on a
        # local store: s3fs's makedirs would create a missing bucket (ingest.store.make_dirs).
        make_dirs(fs, join(root, WORK_DIR, stage))
        fs.pipe_file(path, data)
    return path if is_local(fs) else fs.unstrip_protocol(path)


def read_work_file(ff: "FlyteFile | str") -> bytes:
    """The content of a FlyteFile input (its original URI, read with the store's fsspec settings).

    A file read here is in use: a cached task made it, perhaps many nights ago, and publishing
    prunes `flyte-work/` files older than the oldest version kept. So a file older than
    REFRESH_AFTER_S is marked new again (its modification time; on an object store, which has
    none to set, by writing the same bytes back), or an unchanged embedding shard, cached by
    Flyte and never re-run, would be pruned under the nightly run that still reads it.
    """
    uri = ff if isinstance(ff, str) else (ff.remote_source or str(ff.path))
    fs, path = get_fs(uri)
    data = read_bytes(fs, path)
    if data is None:
        raise FileNotFoundError(f"{uri} is missing from the index store (was {WORK_DIR}/ cleaned up?)")
    _refresh(fs, path, data)
    return data


def _refresh(fs: Any, path: str, data: bytes) -> None:
    from flytegpt.ingest.store import modified_time

    try:
        modified = modified_time(fs, path)
        if modified is not None and (datetime.now(timezone.utc) - modified).total_seconds() < REFRESH_AFTER_S:
            return
        if is_local(fs):
            os.utime(path)
        else:
            fs.pipe_file(path, data)
    except (OSError, NotImplementedError, ValueError) as e:  # read-only, no times: pruning may re-run it
        log.info("could not mark %s as in use: %s", path, e)


def to_jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()


def from_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def content_shards(keys: Iterable[str], above: int, size: int) -> list[list[str]]:
    """Content keys (hex sha256) to embed, as the embed step's shards: all in one when there are at
    most `above` of them, else shards of `size` keys on average, cut by content.

    The keys are sorted, and a shard ends after each key whose last 12 hex digits are 0 modulo
    `size`. Where a shard ends depends on the key at the cut, not on how many keys come before it
    (cutting the chunk table every `size` rows moved every later cut when one page was inserted
    near the start). A key more or fewer changes the one shard it falls in (splits it, or joins two,
    when it is a cut) and every other shard keeps its exact content: the same file, the same Flyte
    cache key for its embed task, so a re-run after a crash finds the shards that finished in
    Flyte's cache. Sizes vary around `size` (geometrically: 1 shard in 20 is over 3 * `size`, 1 in
    20,000 over 10 *); no cap, since a cut by count would move again with every insertion.
    """
    ordered = sorted(set(keys))
    if len(ordered) <= above:
        return [ordered] if ordered else []
    shards: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        current.append(key)
        if int(key[-12:], 16) % size == 0:
            shards.append(current)
            current = []
    if current:
        shards.append(current)
    return shards


def layout_rows(keys: Sequence[str], found: Sequence[str], shards: Sequence[Sequence[str]]) -> "np.ndarray":
    """For each chunk's key in `keys` (chunk order, repeats allowed), the row holding its vector
    when the cached vectors (`found`'s order) and then each shard's new vectors (its keys' order)
    are stacked: how `assemble` puts the vectors back in chunk order. Every key must be in one."""
    import numpy as np

    row: dict[str, int] = {key: i for i, key in enumerate(found)}
    offset = len(found)
    for shard in shards:
        row.update((key, offset + i) for i, key in enumerate(shard))
        offset += len(shard)
    return np.fromiter((row[key] for key in keys), dtype=np.int64, count=len(keys))


def assemble(rows: "np.ndarray", blocks: Sequence["np.ndarray"]) -> "np.ndarray":
    """The matrix whose row i is row `rows[i]` of `blocks` stacked, without stacking them first (at
    a million chunks each copy of the vectors is 1.5 GB). Raises ValueError when a row is beyond
    the blocks: a shard's vectors are missing."""
    import numpy as np

    dims = {b.shape[1] for b in blocks if b.ndim == 2 and len(b)}
    if len(dims) > 1:
        raise ValueError(f"vectors of different dimensions: {sorted(dims)}")
    total = sum(len(b) for b in blocks)
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= total):
        raise ValueError(f"the vectors are incomplete: row {int(rows.max())} asked for, {total} given")
    out = np.empty((len(rows), dims.pop() if dims else 0), dtype=np.float32)
    start = 0
    for block in blocks:
        mine = (rows >= start) & (rows < start + len(block))
        out[mine] = block[rows[mine] - start]
        start += len(block)
    return out


def npy_bytes(vectors: "np.ndarray") -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> "np.ndarray":
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


def npz_bytes(**arrays: "np.ndarray") -> bytes:
    """Named arrays as one .npz file's bytes (plain dtypes: loaded with allow_pickle=False)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_load(data: bytes) -> dict[str, "np.ndarray"]:
    import numpy as np

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
