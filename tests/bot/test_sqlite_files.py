"""The bot's SQLite files never memory-map: a full disk is an error the bot survives, not SIGBUS; and they
can give space back without losing their private modes."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from flytegpt.bot import sqlite_files
from flytegpt.bot.answering import Citation
from flytegpt.bot.answering.types import Answer
from flytegpt.bot.slack.dedupe import SeenStore
from flytegpt.bot.slack.feedback import FeedbackStore


def _answer(i: int) -> Answer:
    return Answer(f"q{i}", f"q{i}", "text", [Citation(1, "Caching", "u", "docs:caching.md")], "llm", "v1")


def test_no_shared_memory_file_is_ever_mapped(tmp_path: Path) -> None:
    feedback, seen = FeedbackStore(tmp_path / "f.db"), SeenStore(tmp_path / "seen.db")
    try:
        for i in range(5):
            feedback.record_answer(_answer(i), surface="mention", channel="C1", user="U1")
            assert seen.first(f"event-{i}")
        assert not list(tmp_path.glob("*-shm")) and not list(tmp_path.glob("*-wal"))
        mode = sqlite3.connect(tmp_path / "f.db").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode != "wal"  # a rollback journal (its mode is per connection; WAL would persist)
    finally:
        feedback.close()


def test_a_wal_database_from_an_earlier_release_is_converted_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    store = FeedbackStore(db)
    store.record_answer(_answer(1), surface="mention", channel="C1", user="U1")
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")  # what the earlier release left behind
    conn.close()

    store = FeedbackStore(db)
    try:
        assert [r["question"] for r in store.questions()] == ["q1"]
        assert not (tmp_path / "f.db-shm").exists()
    finally:
        store.close()


def test_a_full_database_is_an_error_not_a_crash(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db")
    try:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(200):
                store.record_answer(_answer(i), surface="mention", channel="C1", user="U1")
    finally:
        store.close()


# ---- space ---------------------------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _filled(path: Path, *, incremental: bool, rows: int = 2_000) -> sqlite3.Connection:
    conn = sqlite_files.connect(path, incremental=incremental)
    conn.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 3000,) for _ in range(rows)])
    conn.execute("COMMIT")
    return conn


def test_a_new_database_can_give_pages_back_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    conn = _filled(tmp_path / "new.db", incremental=True)
    assert sqlite_files.auto_vacuum_mode(conn) == "incremental"
    conn.execute("DELETE FROM t")
    size = (tmp_path / "new.db").stat().st_size
    stop = threading.Event()
    stop.set()  # one step, then stop
    one = sqlite_files.give_back_free_pages(conn, step_pages=100, stop=stop)
    assert one == 100 * 4096 and (tmp_path / "new.db").stat().st_size == size - one
    rest = sqlite_files.give_back_free_pages(conn, pause_s=0)
    assert (tmp_path / "new.db").stat().st_size == size - one - rest < size / 10
    conn.close()

    old = _filled(tmp_path / "old.db", incremental=False)
    old.close()
    conn = sqlite_files.connect(tmp_path / "old.db", incremental=True)  # not new: left as it is
    assert sqlite_files.auto_vacuum_mode(conn) == "none"
    conn.execute("DELETE FROM t")
    assert sqlite_files.give_back_free_pages(conn) == 0  # nothing can go back without a VACUUM
    conn.close()


def test_a_vacuum_keeps_the_files_private(tmp_path: Path) -> None:
    folder = tmp_path / "made-by-the-bot"
    db = folder / "f.db"
    conn = _filled(db, incremental=False)
    conn.execute("DELETE FROM t WHERE rowid % 2 = 0")
    assert (_mode(folder), _mode(db), _mode(Path(f"{db}-journal"))) == (0o700, 0o600, 0o600)
    before, after = sqlite_files.compact(conn, db)
    assert after < before * 0.6
    assert sqlite_files.auto_vacuum_mode(conn) == "incremental"
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1_000
    conn.close()
    assert (_mode(folder), _mode(db), _mode(Path(f"{db}-journal"))) == (0o700, 0o600, 0o600)
    assert sorted(p.name for p in folder.iterdir()) == ["f.db", "f.db-journal"]  # no copy left beside it
