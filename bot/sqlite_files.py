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
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

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


def connect(path: str | Path, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """An autocommit connection shared by threads, with a rollback journal (never memory-mapped)."""
    path = str(path)
    if path != ":memory:":
        make_private_folder(Path(path).parent)
        create_private_file(path)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=TRUNCATE")
        conn.execute("PRAGMA mmap_size=0")
    except BaseException:
        conn.close()
        raise
    return conn


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
