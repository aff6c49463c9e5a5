"""How the bot opens its SQLite files (the question log, the seen-events table).

No WAL: WAL memory-maps a `-shm` file, and when that mapping cannot be backed (a full disk,
a volume without shared mmap) the process dies of SIGBUS instead of getting an error. The
bot's rule is that a failing database is logged and survived, so it uses a rollback journal,
where the same faults are `sqlite3.OperationalError`s. Writes are one small row per question
or event, so the journal's extra sync costs nothing a user notices.

Only the bot's user may read them: they hold every question asked, DMs included.
A file is created 0600 (SQLite gives its rollback journal the database file's mode), a folder
the bot creates for it 0700, and an existing file (or journal) readable by others is narrowed
to its owner's bits when it is opened. Folders that already exist are left as they are.

Reading without changing. The commands that only read a database (a snapshot, an
export) never open it with `connect`: `backup_read_only` copies it through a `mode=ro` connection,
so its bytes, journal mode and mode bits stay as they were, for the bot that owns it and for an
older release that may still use it. A database a read-only connection cannot read although it is
sound (a hot journal left by a writer killed mid-transaction, a WAL file in a read-only place)
is copied with its journal or WAL under SQLite's own read lock and recovered in the
copy (`recovered_copy`); the original is still only read.

Temporary copies. A copy is as big as the database: `scratch_place` puts it beside
the database (the volume that holds it already, where the manifests' 1 GiB /tmp is not at risk)
when that folder is writable with room to spare, else in the temporary folder ($TMPDIR, tried
first when it is set), and says so before copying when neither has room.

Space. SQLite never gives pages back to the filesystem by itself: a file only grows.
A database created with `incremental=True` uses `auto_vacuum = INCREMENTAL`, so the pages a large
delete freed can be returned later in small steps (`give_back_free_pages`), each a short write
transaction, while the bot keeps writing. An existing file made without it (auto_vacuum NONE) can
only be switched by one VACUUM, which rewrites the file under an exclusive lock (`compact`): that
is for a moment when nothing else writes, such as start-up before the bot serves. VACUUM rewrites
the file in place (same inode) under a rollback journal, so the file keeps its 0600 mode and the
journal gets the file's mode as always; `compact` narrows both again afterwards all the same.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

log = logging.getLogger(__name__)

FILE_MODE = 0o600
FOLDER_MODE = 0o700
# SQLite's companions of a database file: the rollback journal (kept, empty, in TRUNCATE mode) and
# the files of a database someone opened in WAL mode. Each may hold pages of the database.
_COMPANIONS = ("-journal", "-wal", "-shm")


def names_a_folder(path: str | Path) -> bool:
    """Whether a configured database path is a folder (an existing one, or written with a
    trailing slash): no database can live there, and a file named after it would land beside it."""
    text = str(path)
    return text != ":memory:" and (text.endswith(("/", os.sep)) or Path(text).is_dir())


def connect(path: str | Path, *, timeout_s: float = 5.0, incremental: bool = False) -> sqlite3.Connection:
    """An autocommit connection shared by threads, with a rollback journal (never memory-mapped).

    `timeout_s`: how long a statement waits for another connection's lock (SQLite's busy handler)
    before it fails with "database is locked". `incremental`: a database that has no page yet
    (a new file) is created with auto_vacuum = INCREMENTAL (see `give_back_free_pages`); an
    existing one keeps its mode (changing it needs a VACUUM: `compact`).
    """
    path = str(path)
    if path != ":memory:":
        make_private_folder(Path(path).parent)
        create_private_file(path)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=TRUNCATE")
        conn.execute("PRAGMA mmap_size=0")
        if incremental and conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # applies when the first table is created; two processes creating the file at once
            # both ask for it, and whichever creates the tables writes it into the header
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    except BaseException:
        conn.close()
        raise
    return conn


def read_only_uri(path: str | Path) -> str:
    """The `file:` URI that opens `path` read only (`mode=ro`), its characters escaped: a `?`, `#` or
    `%` in a folder name would otherwise end the path or start the URI's parameters."""
    return f"file:{quote(str(Path(path).resolve()))}?mode=ro"


def backup_read_only(path: str | Path, dest: str | Path, *, timeout_s: float = 5.0) -> None:
    """Copy the database at `path` into the file `dest` as it is (its schema, user_version and journal
    mode in the file header), through SQLite's backup API from a read-only connection.

    Why read only: a command that only reads (a snapshot, an export) must leave the file exactly as
    it was, for the bot that owns it and for an older release that may still use it:
    `connect` would switch its journal mode and narrow its mode bits, and opening it as a store
    would migrate its schema. The copy is one consistent point in time while others write: one
    backup step under one read transaction; a database in WAL mode (an older bot) is read beside
    its writer without waiting for it, WAL content included. A read-only connection cannot
    checkpoint, so a WAL database's `-wal` and `-shm` files are left as they were (SQLite creates
    them, empty and with the database file's mode, if the database had none open).

    A sound database a read-only connection cannot read (a hot journal, which only a
    writer may roll back; a WAL file without its `-shm` in a read-only place, which it cannot
    create) is copied with its journal or WAL and recovered in `dest` instead: `recovered_copy`.

    `timeout_s`: how long to wait for another connection's write lock (a rollback-journal writer,
    or a VACUUM) before SQLite's "database is locked".
    """
    src = sqlite3.connect(read_only_uri(path), uri=True, timeout=timeout_s, isolation_level=None)
    try:
        # The read transaction first, under the busy timeout: the backup API retries a lock forever
        # (Python's backup() sleeps and steps again while SQLite says busy); inside the transaction
        # the backup reads the same snapshot without asking for the lock again.
        src.execute("BEGIN")
        try:
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            if not needs_a_writer(e):
                raise
            src.close()  # before the file is opened again (see recovered_copy: this process's locks)
            recovered_copy(path, dest, timeout_s=timeout_s, why=e)
            return
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()


# SQLite's extended result codes of a sound database that a read-only connection cannot open or read:
# a hot journal to roll back (READONLY_ROLLBACK), a WAL to recover or a -shm to create or initialise
# (READONLY_RECOVERY, READONLY_CANTINIT, READONLY_CANTLOCK, and CANTOPEN for a -shm it cannot create).
_READONLY_ROLLBACK, _READONLY_RECOVERY, _READONLY_CANTLOCK, _READONLY_CANTINIT = 776, 264, 520, 1288
_CANTOPEN = 14
# SQLite's lock bytes in a database file (unix VFS, os_unix.c): every reader holds a read lock on the
# SHARED range; a writer needs a write lock on the whole range to change the file (EXCLUSIVE), and so
# does the connection that rolls back a hot journal.
_PENDING_BYTE = 0x40000000
_SHARED_FIRST = _PENDING_BYTE + 2
_SHARED_SIZE = 510
_COPY_CHUNK = 1 << 20


class NotReadableAsIs(sqlite3.OperationalError):
    """A sound database that neither a read-only connection nor a copy of its files could read: it
    needs its interrupted write rolled back by a writer (the bot, at its next start)."""


def needs_a_writer(e: BaseException) -> bool:
    """Whether SQLite's error says a read-only connection cannot do what any writer would do first
    (roll back a hot journal, recover a WAL, create its -shm), as opposed to a damaged file or a lock."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code in (_READONLY_ROLLBACK, _READONLY_RECOVERY, _READONLY_CANTLOCK, _READONLY_CANTINIT) \
            or code & 0xFF == _CANTOPEN
    text = str(e)  # Python 3.10: no error codes
    return "attempt to write a readonly database" in text or "unable to open database file" in text


def recovered_copy(path: str | Path, dest: str | Path, *, timeout_s: float = 5.0,
                   why: BaseException | None = None) -> None:
    """Copy the database at `path` with its `-journal` and `-wal` into the new file `dest` and open
    the copy as a writer, so SQLite rolls back the interrupted write (or recovers the WAL) there:
    `dest` then holds the committed rows only, in the original's schema, user_version and journal
    mode. For a database a read-only connection cannot read.

    Why a copy and not a writable connection to the original, which would roll the journal back too
    (as the bot does at its next start): the command promised to only read; a read-only place (a
    mounted backup, another user's file) cannot be written at all; and a journal that is not the
    file's own (a database restored from a backup beside a stale `-journal`) would be "rolled back"
    into the original and damage it, where here it can only damage the copy. The `-shm` is never
    copied: SQLite rebuilds it from the `-wal`.

    Consistent while others may start writing: the original is opened once and holds a read lock on
    SQLite's SHARED range while its files are copied, so no connection can roll the hot journal back
    or commit to a rollback-journal database meanwhile (both need the EXCLUSIVE lock). The journal
    and WAL are copied before the database file, and every file's identity (inode, size, mtime and,
    for the -shm, whether it exists) is compared after: a change (a WAL writer, which does not take
    that lock, would first have to create the -shm) makes it copy again, until `timeout_s`, then
    "database is locked". Even without the lock (a filesystem without POSIX locks), an unchanged
    journal means no rollback finished while the file was copied, and replaying that journal over
    a half rolled-back page restores it.

    The lock is a POSIX lock, which closing any descriptor of the file drops for the whole process:
    when this process has the file open elsewhere (an SQLite connection of its own, whose locks that
    would drop), nothing is copied and NotReadableAsIs says what to do.
    """
    path, dest = str(path), str(dest)
    reason = f" ({why})" if why is not None else ""
    if _open_in_this_process(path):
        raise NotReadableAsIs(
            f"{path} needs an interrupted write rolled back before it can be read{reason}, and this process "
            "has it open: run the command on its own, or start the bot once (it rolls the write back)")
    deadline = time.monotonic() + timeout_s
    while not _copy_files(path, dest):
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError("database is locked (a writer kept changing it while it was copied)")
        time.sleep(0.05)
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # rolls back, or recovers the WAL
        if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the copy is one file: nothing left in its -wal
    finally:
        conn.close()
    for suffix in _COMPANIONS:  # rolled back and checkpointed: empty, or already gone
        try:
            os.unlink(dest + suffix)
        except FileNotFoundError:
            pass


def _copy_files(path: str, dest: str) -> bool:
    """One attempt of `recovered_copy`: the companions, then the database file, under a read lock on the
    SHARED range; False when the lock is held by a writer or a file changed meanwhile."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:  # closing `fd` releases the lock
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False  # a writer holds EXCLUSIVE: wait for it
            if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOTSUP):
                raise
            # a filesystem without POSIX locks: the comparison below is what is left
        before = _identities(path, fd)
        for suffix in ("-journal", "-wal"):
            if before[suffix] is not None:
                shutil.copyfile(path + suffix, dest + suffix)
            else:
                try:
                    os.unlink(dest + suffix)
                except FileNotFoundError:
                    pass
        with open(dest, "wb") as out:
            offset = 0
            while True:
                chunk = os.pread(fd, _COPY_CHUNK, offset)
                if not chunk:
                    break
                out.write(chunk)
                offset += len(chunk)
        return _identities(path, fd) == before
    finally:
        os.close(fd)


def _identities(path: str, fd: int) -> dict[str, tuple[int, int, int] | None]:
    """(inode, size, mtime in ns) of the database file and of each companion (None: not there)."""
    st = os.fstat(fd)
    found: dict[str, tuple[int, int, int] | None] = {"": (st.st_ino, st.st_size, st.st_mtime_ns)}
    for suffix in _COMPANIONS:
        try:
            st = os.stat(path + suffix)
        except FileNotFoundError:
            found[suffix] = None
        else:
            found[suffix] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _open_in_this_process(path: str) -> bool:
    """Whether a descriptor of this process has the file open (read from /proc: False where there is none)."""
    try:
        target = os.stat(path)
        fds = list(os.scandir("/proc/self/fd"))
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(fd.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


# --- temporary copies -------------------------------------------------------------------------

SCRATCH_PREFIX = ".flytegpt-copy-"
# Room left free beside the database after a copy: the bot keeps writing there.
SCRATCH_RESERVE_BYTES = 64 << 20


class NoRoomForCopy(OSError):
    """Neither beside the database nor in the temporary folder is there room for a copy of it."""


def database_bytes(path: str | Path) -> int:
    """The bytes a copy of the database at `path` may need: the file, its WAL and its journal."""
    total = 0
    for suffix in ("", "-wal", "-journal"):
        try:
            total += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return total


def scratch_place(beside: str | Path | None, needed: int) -> Path:
    """The folder for a temporary copy of `needed` bytes.

    Beside the database `beside` when its folder is writable and keeps SCRATCH_RESERVE_BYTES free
    after the copy: that volume holds the database already, while a pod's /tmp is often a small
    emptyDir (the manifests': 1 GiB, and going over it evicts the pod, where a full volume is an
    error). Else the temporary folder (Python's `tempfile`: $TMPDIR, /tmp), tried first when $TMPDIR
    is set, since that is the operator's choice. NoRoomForCopy, naming both, when neither has room:
    before anything is copied, rather than a full disk half-way.
    """
    places: list[tuple[Path, int]] = []
    if beside is not None and str(beside) != ":memory:":
        places.append((Path(beside).resolve().parent, SCRATCH_RESERVE_BYTES))
    system = (Path(tempfile.gettempdir()), 0)
    places.insert(0 if os.environ.get("TMPDIR") else len(places), system)
    seen = []
    for folder, reserve in places:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        seen.append(f"{folder} ({free / 2**20:,.0f} MB free)")
        if os.access(folder, os.W_OK | os.X_OK) and free >= needed + reserve:
            return folder
    raise NoRoomForCopy(
        errno.ENOSPC, f"no room for a temporary copy of the feedback database ({needed / 2**20:,.1f} MB) in "
        f"{' or '.join(seen) or 'any folder'}: set TMPDIR to a folder with room")


@contextmanager
def scratch_folder(place: Path) -> Iterator[Path]:
    """A new private folder in `place` (scratch_place) for temporary copies, removed afterwards.

    A process killed meanwhile leaves it behind, a database-sized file on the bot's volume: each
    folder holds a `lock` file locked (flock) while its owner lives, and a new one removes the
    folders of earlier owners whose lock is free, i.e. who have died."""
    import fcntl

    _sweep(place)
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=place))
    try:
        lock = open(folder / "lock.new", "wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.replace(folder / "lock.new", folder / "lock")  # only a locked `lock` is ever seen
            yield folder
        finally:
            lock.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sweep(place: Path) -> None:
    """Remove the scratch folders in `place` whose owner died (their `lock` is not locked)."""
    import fcntl

    try:
        leftovers = [p for p in place.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
    except OSError:
        return
    for folder in leftovers:
        try:
            lock = open(folder / "lock", "rb")
        except OSError:  # being created, not ours, or gone
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue  # its owner is copying
        try:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed a temporary copy left by a process that died", extra={"path": str(folder)})
        finally:
            lock.close()


def is_busy(e: BaseException) -> bool:
    """Whether SQLite's error says another connection holds a lock (SQLITE_BUSY, SQLITE_LOCKED), as
    opposed to a file that is damaged or not a database."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (5, 6)
    text = str(e)
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def make_private_folder(folder: Path) -> None:
    """Create `folder` and any missing parent with mode 0700; existing folders are not changed
    (the bot did not make them: /tmp, a mounted volume)."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass


def create_private_file(path: str | Path) -> None:
    """Create the database file 0600 if it does not exist (before SQLite would create it with the
    umask's 0644), and narrow an existing one, and its journal, to its owner's bits.

    A file this process may not chmod (another user's, a read-only mount) is logged and used as it is.
    """
    path = str(path)
    try:  # O_CREAT with read-only access: an existing read-only file is narrowed too
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    except OSError:
        return  # SQLite's own open says what is wrong (a folder, no permission), as before
    try:
        _narrow(path, fd)
    finally:
        os.close(fd)
    for suffix in _COMPANIONS:
        companion = path + suffix
        try:
            fd = os.open(companion, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # not there (the usual case)
        try:
            _narrow(companion, fd)
        finally:
            os.close(fd)


def _narrow(path: str, fd: int) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & 0o077:
        return
    try:
        os.fchmod(fd, mode & 0o700)
    except OSError as e:
        log.warning("cannot make the database file private: others can read it",
                    extra={"path": path, "mode": oct(mode), "error": str(e)})
    else:
        log.info("database file was readable by others: made private",
                 extra={"path": path, "was": oct(mode), "now": oct(mode & 0o700)})


# --- space ------------------------------------------------------------------------------------

AUTO_VACUUM_MODES = {0: "none", 1: "full", 2: "incremental"}
GIVE_BACK_STEP_PAGES = 1024  # pages returned per write transaction (4 MiB at SQLite's 4 KiB pages; ~10 ms)
GIVE_BACK_PAUSE_S = 0.01  # least pause between two steps (another writer's turn)


def auto_vacuum_mode(conn: sqlite3.Connection) -> str:
    """"none" (SQLite's default: a file never shrinks), "full" or "incremental"."""
    return AUTO_VACUUM_MODES.get(int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]), "none")


def free_bytes(conn: sqlite3.Connection) -> tuple[int, int]:
    """(bytes of free pages inside the file, bytes of all its pages)."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return free * page_size, pages * page_size


def give_back_free_pages(conn: sqlite3.Connection, *, step_pages: int = GIVE_BACK_STEP_PAGES,
                         pause_s: float = GIVE_BACK_PAUSE_S,
                         lock: AbstractContextManager[object] | None = None,
                         stop: threading.Event | None = None) -> int:
    """Return the file's free pages to the filesystem, `step_pages` at a time; returns the bytes
    the file shrank by (0 for a database not in incremental mode: nothing can be returned there
    without a VACUUM, and its free pages are reused by later rows).

    Each step is one short write transaction (SQLite moves the last pages into free ones and
    truncates the file), followed by a pause at least as long as the step took, so other
    connections' writes get the lock in between instead of waiting for all of it. `lock`, when
    given, is held around each step (the thread lock of a connection shared by threads); `stop`,
    when set, ends it after the current step.
    """
    if auto_vacuum_mode(conn) != "incremental":
        return 0
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    given = 0
    while True:
        with lock if lock is not None else nullcontext():
            before = int(conn.execute("PRAGMA page_count").fetchone()[0])
            if not int(conn.execute("PRAGMA freelist_count").fetchone()[0]):
                break
            t0 = time.monotonic()
            # executescript steps the pragma to its end: it yields one (column-less) row per page
            # freed, and execute() would stop after the first, returning one page a call
            conn.executescript(f"PRAGMA incremental_vacuum({int(step_pages)});")
            took = time.monotonic() - t0
            after = int(conn.execute("PRAGMA page_count").fetchone()[0])
        if after >= before:
            break  # no progress: stop rather than loop
        given += (before - after) * page_size
        if stop is not None:
            if stop.wait(max(pause_s, took)):
                break
        else:
            time.sleep(max(pause_s, took))
    return given


def processes_with_open(path: str | Path) -> list[tuple[int, str]]:
    """Other processes that have the file open right now, as (pid, command line), read from
    /proc (Linux). Empty where there is no /proc, and it cannot see processes of other users
    (their fds are not readable) or in another PID namespace (another pod).

    Why: an idle SQLite connection holds no lock, so SQLite itself cannot tell whether the bot has
    the file open between two questions; its open file descriptor can. A VACUUM then would lock
    the bot's writes out for as long as it takes (`compact`)."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    me = os.getpid()
    found: list[tuple[int, str]] = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list(os.scandir(f"/proc/{entry.name}/fd"))
        except OSError:  # gone meanwhile, or another user's
            continue
        for fd in fds:
            try:
                st = os.stat(fd.path)  # follows the link to the open file
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        cmd = " ".join(f.read().replace(b"\0", b" ").decode("utf-8", "replace").split())
                except OSError:
                    cmd = ""
                found.append((int(entry.name), cmd[:120] or "?"))
                break
    return found


def compact(conn: sqlite3.Connection, path: str | Path, *, incremental: bool = True) -> tuple[int, int]:
    """VACUUM the database (optionally switching it to auto_vacuum = INCREMENTAL first): the file
    is rewritten without its free and half-empty pages. Returns (bytes before, bytes after).

    Holds an exclusive lock for as long as it takes (about the time to read the file and write
    what it holds): only for a moment when no one else needs to write. It needs room for a
    temporary copy of what the database holds (SQLite's temp directory) and for the journal.
    """
    path = str(path)
    before = os.path.getsize(path)
    if incremental:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect with the VACUUM
    conn.execute("VACUUM")
    create_private_file(path)  # VACUUM keeps the inode and its mode; narrowed again all the same
    return before, os.path.getsize(path)
