"""Feedback databases as earlier releases left them, for the upgrade tests
(tests/bot/test_feedback_upgrade.py, tests/bot/test_feedback_hot_journal_and_clock.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from flytegpt.bot.slack import feedback

SOURCES = json.dumps([{"n": 1, "title": "Caching", "url": "https://d/caching", "source_id": "docs:caching.md"}])


def older_release_db(path: Path, *, journal: str = "wal", rows: list[tuple[str, float, str]] | None = None) -> None:
    """A question log as a release of schema version 1 left it: the first release's tables plus the
    0 -> 1 migration, `user_version` 1, `journal` ("wal" before eb20010, "delete" after), mode 0644.
    `rows`: (id, created_at, question); each answered in a public channel and confirmed by its asker."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.executescript(feedback._SCHEMA_V0 + feedback.MIGRATIONS[0] + "PRAGMA user_version = 1;")
    now = time.time()
    for rid, created, question in rows or [(f"a{i}", now - 3600 + i, f"how do I cache task {i}?") for i in range(4)]:
        conn.execute("INSERT INTO answers (id, created_at, surface, channel, thread_ts, user, question, answer, "
                     "sources, index_version, mode, outcome) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (rid, created, "mention", "C0GENERAL", "1.0", "U1", question, f"answer to {question}",
                      SOURCES, "v1", "llm", "answered"))
        conn.execute("INSERT INTO votes VALUES (?,?,?,?,?)", (rid, "U1", "up", "C0GENERAL", created + 5))
    conn.close()  # the last connection: a WAL database is checkpointed, its -wal and -shm removed
    os.chmod(path, 0o644)


def header(path: Path) -> tuple[int, str]:
    """(user_version, journal kind) from the file's first 100 bytes, without opening it with SQLite:
    SQLite's header keeps the user_version at offset 60 and writes 2 into bytes 18-19 of a database
    in WAL mode."""
    head = path.read_bytes()[:100]
    return int.from_bytes(head[60:64], "big"), "wal" if head[18] == 2 else "rollback"
