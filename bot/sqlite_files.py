"""How the bot opens its SQLite files (the question log, the seen-events table).

No WAL: WAL memory-maps a `-shm` file, and when that mapping cannot be backed (a full disk,
a volume without shared mmap) the process dies of SIGBUS instead of getting an error. The
bot's rule is that a failing database is logged and survived, so it uses a rollback journal,
where the same faults are `sqlite3.OperationalError`s. Writes are one small row per question
or event, so the journal's extra sync costs nothing a user notices.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def names_a_folder(path: str | Path) -> bool:
    """Whether a configured database path is a folder (an existing one, or written with a
    trailing slash): no database can live there, and a file named after it would land beside it."""
    text = str(path)
    return text != ":memory:" and (text.endswith(("/", os.sep)) or Path(text).is_dir())


def connect(path: str | Path, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """An autocommit connection shared by threads, with a rollback journal (never memory-mapped)."""
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=TRUNCATE")
        conn.execute("PRAGMA mmap_size=0")
    except BaseException:
        conn.close()
        raise
    return conn
