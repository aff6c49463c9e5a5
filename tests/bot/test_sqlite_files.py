"""The bot's SQLite files never memory-map: a full disk is an error the bot survives, not SIGBUS."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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
