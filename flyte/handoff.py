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
from typing import TYPE_CHECKING, Any, Iterable

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
    from flytegpt.ingest.artifact import modified_time

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


def split_jsonl(data: bytes, above: int, size: int) -> list[bytes]:
    """`data` (JSON lines) as one piece when it has at most `above` lines, else pieces of `size` lines."""
    lines = data.splitlines(keepends=True)
    if len(lines) <= above:
        return [data]
    return [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def npy_bytes(vectors: "np.ndarray") -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> "np.ndarray":
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)
