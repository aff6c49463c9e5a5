"""How the bot opens its SQLite files (the question log, the seen-events table).

No WAL: WAL memory-maps a `-shm` file, and when that mapping cannot be backed (a full disk,
a volume without shared mmap) the process dies of SIGBUS instead of getting an error. The
bot's rule is that a failing database is logged and survived, so it uses a rollback journal,
where the same faults are `sqlite3.OperationalError`s. Writes are one small row per question
or event, so the journal's extra sync costs nothing a user notices.

Only the bot's user may read them (audit 23 L3): they hold every question asked, DMs included.
A file is created 0600 (SQLite gives its rollback journal the database file's mode), a folder
the bot creates for it 0700, and an existing file (or journal) readable by others is narrowed
to its owner's bits when it is opened. Folders that already exist are left as they are.

Reading without changing (audit 30 F1). The commands that only read a database (a snapshot, an
export) never open it with `connect`: `backup_read_only` copies it through a `mode=ro` connection,
so its bytes, journal mode and mode bits stay as they were, for the bot that owns it and for an
older release that may still use it.

Space (audit 25 F7). SQLite never gives pages back to the filesystem by itself: a file only grows.
A database created with `incremental=True` uses `auto_vacuum = INCREMENTAL`, so the pages a large
delete freed can be returned later in small steps (`give_back_free_pages`), each a short write
transaction, while the bot keeps writing. An existing file made without it (auto_vacuum NONE) can
only be switched by one VACUUM, which rewrites the file under an exclusive lock (`compact`): that
is for a moment when nothing else writes, such as start-up before the bot serves. VACUUM rewrites
the file in place (same inode) under a rollback journal, so the file keeps its 0600 mode and the
journal gets the file's mode as always; `compact` narrows both again afterwards all the same.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
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
    it was, for the bot that owns it and for an older release that may still use it (audit 30 F1):
    `connect` would switch its journal mode and narrow its mode bits, and opening it as a store
    would migrate its schema. The copy is one consistent point in time while others write: one
    backup step under one read transaction; a database in WAL mode (an older bot) is read beside
    its writer without waiting for it, WAL content included. A read-only connection cannot
    checkpoint, so a WAL database's `-wal` and `-shm` files are left as they were (SQLite creates
    them, empty and with the database file's mode, if the database had none open).

    `timeout_s`: how long to wait for another connection's write lock (a rollback-journal writer,
    or a VACUUM) before SQLite's "database is locked".
    """
    src = sqlite3.connect(read_only_uri(path), uri=True, timeout=timeout_s, isolation_level=None)
    try:
        # The read transaction first, under the busy timeout: the backup API retries a lock forever
        # (Python's backup() sleeps and steps again while SQLite says busy); inside the transaction
        # the backup reads the same snapshot without asking for the lock again.
        src.execute("BEGIN")
        src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()


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
