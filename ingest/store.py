"""The index store: one fsspec-based place for local folders, s3:// and gs:// URLs.

Everything that reads or writes the store goes through here, so the rules that keep
readers safe live in one place: a file appears whole or not at all (local: temp file
in the same folder + os.replace; object stores: a single PUT is atomic per object),
and listings are never served from a stale cache.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO, Any, Iterator

import fsspec

log = logging.getLogger(__name__)

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
    fd, tmp = create_temp(folder, ".tmp-", "." + os.path.basename(path))
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


def create_temp(folder: str, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new, empty file in `folder` opened for writing: (fd, path), for a rename into place.

    Unlike tempfile.mkstemp (always 0600) its mode is 0666 less the process umask, as a
    plain open() gives: the renamed file is the store's file, and a bot running as another
    user (a local or NFS store written by an ingest job or cron) must be able to read it.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    while True:
        path = os.path.join(folder, f"{prefix}{uuid.uuid4().hex}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:  # pragma: no cover - 122 random bits
            continue


class StoreWriteError(RuntimeError):
    """The store cannot be written to."""


def check_writable(store: str) -> None:
    """Write and remove an empty probe file at the store's root.

    Run before an ingest reads and embeds anything: a path that cannot be created, a read-only
    folder, a missing bucket or missing credentials then stop it in a second with a message,
    not after an hour of embedding with a traceback. Only a local store's folder is created:
    on an object store the probe is one PUT, which fails on a missing bucket and never makes one.
    """
    try:
        fs, root = get_fs(store)
        if is_local(fs):
            _not_a_file(store, root)
            os.makedirs(root, exist_ok=True)
        probe = join(root, f".write-check-{uuid.uuid4().hex}")
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except StoreWriteError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, botocore's credential and bucket errors, ...
        raise StoreWriteError(f"cannot write to the index store {store}: {e}") from e


def _not_a_file(store: str, root: str) -> None:
    """A local store path that is (or lies under) a file: said so, not `[Errno 17] File exists`."""
    path = root
    while True:
        if os.path.isfile(path):
            what = "is a file" if path == root else f"lies under {path}, which is a file"
            raise StoreWriteError(f"cannot write to the index store {store}: {root} {what}, not a folder")
        parent = os.path.dirname(path)
        if not parent or parent == path:
            return
        path = parent


def make_dirs(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Create the folder `path` on a local store; nothing on an object store.

    Object stores have no folders to make, and s3fs's makedirs on a path whose bucket does not
    exist creates the bucket: a mistyped store would then receive the corpus (Slack threads
    included) in a new bucket, or in somebody else's of that name, instead of failing.
    """
    if is_local(fs):
        os.makedirs(path, exist_ok=True)


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


class StoreLockError(RuntimeError):
    """Another process holds the store's lock and did not release it in time."""


WORK_DIR = "flyte-work"  # the Flyte tasks' intermediates (flyte/handoff.py), pruned with old versions (artifact.prune)

LOCK_STALE_AFTER_S = 300.0  # a holder that died without removing its lock: how long until it is broken
LOCK_WAIT_S = 120.0  # how long a second publisher waits for the first


@contextmanager
def store_lock(fs: fsspec.AbstractFileSystem, path: str, *, stale_after_s: float = LOCK_STALE_AFTER_S,
               wait_s: float = LOCK_WAIT_S, poll_s: float = 0.2, activity: str = "publish") -> Iterator[None]:
    """Hold the lock file `path` while the block runs: one holder at a time, across machines.

    The file is created whole and exclusively (a hard link of a written temporary file on a
    local store; `If-None-Match: *` on S3 through s3fs's "xb" mode) and holds who took it and when. A lock whose holder is gone is broken:
    on the same host when its process no longer exists, anywhere after `stale_after_s`.
    While the block runs, its time is renewed every third of `stale_after_s` (a publish that
    downloads and verifies a large index on S3 may take longer than that, and must not have its
    lock broken by a second publisher on another machine). Only the holder's own lock is removed
    at the end. `activity` names what the lock guards ("publish", "collect of ..."), in the log
    line a waiter writes once and in the error it raises after `wait_s`.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "at": time.time()}
    mine = json.dumps(me).encode()
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        if _create_exclusive(fs, path, mine):
            break
        held = read_bytes(fs, path)
        holder = _lock_holder(held)
        if held is not None and _stale(holder, stale_after_s):
            if read_bytes(fs, path) == held:  # nobody broke and re-took it meanwhile
                log.warning("breaking a stale lock %s held by %s", path, holder or held[:200])
                _remove(fs, path)
            continue
        who = (f"{holder.get('host', '?')} pid {holder.get('pid', '?')} since "
               f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(holder.get('at', 0)))}")
        if time.monotonic() >= deadline:
            raise StoreLockError(
                f"{path} is held by {who}: another {activity} is running (delete the file if that process is gone)"
            )
        if not waiting and held is not None:  # a command that seems to hang says what it waits for
            log.warning("waiting up to %g s for another %s: %s is held by %s", wait_s, activity, path, who)
            waiting = True
        time.sleep(poll_s)
    stop = threading.Event()
    renew = threading.Thread(target=_renew_lock, args=(fs, path, me, stale_after_s / 3, stop),
                             name="flytegpt-store-lock", daemon=True)
    renew.start()
    try:
        yield
    finally:
        stop.set()
        renew.join()
        if _lock_holder(read_bytes(fs, path)).get("token") == me["token"]:
            _remove(fs, path)


def _renew_lock(fs: fsspec.AbstractFileSystem, path: str, me: dict[str, Any], every_s: float,
                stop: threading.Event) -> None:
    """Rewrite the lock with a new time every `every_s` while it is still ours."""
    while not stop.wait(every_s):
        try:
            if _lock_holder(read_bytes(fs, path)).get("token") != me["token"]:
                log.warning("the lock %s is no longer ours (broken as stale?); not renewing it", path)
                return
            atomic_write(fs, path, json.dumps({**me, "at": time.time()}).encode())
        except Exception as e:  # noqa: BLE001 - a store hiccup: try again at the next beat
            log.warning("renewing the lock %s failed: %s", path, e)


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create `path` holding `data`, whole, unless it exists: False when it does."""
    if not is_local(fs):
        try:
            with fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError):  # a filesystem without exclusive create
            log.warning("%s: no exclusive create on this store; the lock is best effort", path)
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return read_bytes(fs, path) == data
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = create_temp(folder, ".tmp-lock-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(tmp, path)  # atomic, fails if the lock exists: readers never see it half-written
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _lock_holder(data: bytes | None) -> dict[str, Any]:
    try:
        holder = json.loads(data or b"")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict[str, Any], stale_after_s: float) -> bool:
    at = holder.get("at")
    if not isinstance(at, (int, float)) or time.time() - at > stale_after_s:
        return True  # unreadable (a holder that died mid-write) or too old
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def modified_time(fs, path: str, info: dict[str, Any] | None = None) -> datetime | None:
    """When `path` was last written (UTC), from a listing's `info` or asked of `fs`; None if unknown."""
    info = info or {}
    stamp = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if stamp is None:
        try:
            stamp = fs.modified(path)
        except (NotImplementedError, OSError):
            return None
    if isinstance(stamp, (int, float)):
        return datetime.fromtimestamp(stamp, tz=timezone.utc)
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
