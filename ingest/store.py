"""The index store: one fsspec-based place for local folders, s3:// and gs:// URLs.

Everything that reads or writes the store goes through here, so the rules that keep
readers safe live in one place: a file appears whole or not at all (local: temp file
in the same folder + os.replace; object stores: a single PUT is atomic per object),
and listings are never served from a stale cache.
"""

from __future__ import annotations

import io
import os
import posixpath
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator

import fsspec

S3_ENDPOINT_ENV = ("FLYTEGPT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def storage_options(store: str) -> dict[str, Any]:
    """fsspec options for `store` taken from the environment.

    An S3-compatible endpoint (MinIO, moto on 127.0.0.1, ...) is passed explicitly
    rather than relying on each s3fs/botocore version reading AWS_ENDPOINT_URL itself.
    """
    protocol = fsspec.utils.get_protocol(store)
    if protocol in ("s3", "s3a"):
        for var in S3_ENDPOINT_ENV:
            endpoint = os.environ.get(var)
            if endpoint:
                return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def get_fs(store: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem behind `store` and the store's root path on it (no protocol)."""
    if "://" not in store:
        store = os.path.abspath(os.path.expanduser(store))
    fs, root = fsspec.core.url_to_fs(store, **storage_options(store))
    return fs, root.rstrip("/") or "/"


def join(*parts: str) -> str:
    """Join store paths with '/', whatever the OS (object stores are always posix)."""
    return posixpath.join(*parts)


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` so that a concurrent reader sees the old file or the new one, never half."""
    with atomic_writer(fs, path) as f:
        f.write(data)


@contextmanager
def atomic_writer(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through, atomically like `atomic_write`.

    For writers that stream (np.savez, gzip): on a local store the bytes go straight to a
    temporary file in the same folder, so a large file is never held in memory whole. An
    object store gets one PUT of the buffered bytes on success and nothing on an error
    (a streamed upload would commit a partial object when the writer fails).
    """
    if not is_local(fs):
        buf = io.BytesIO()
        yield buf
        fs.pipe_file(path, buf.getvalue())
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="." + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    """The file's content, or None if it does not exist."""
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def list_dir(fs: fsspec.AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    """Fresh listing of `path` (empty if missing): object-store listings are cached by fsspec."""
    fs.invalidate_cache(path)
    try:
        return fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
