"""Upgrading from older releases, the feedback database's side.

`feedback export`, `feedback questions` and `feedback snapshot` only read the database: an older
release's file keeps its bytes, schema version, journal mode and mode bits, and the snapshot is the
database as it was (the older release can still open it). The first `serve` after an upgrade
does not blank an older release's history at once: a warning, then a grace period. A database
another process holds is "in use", not "not usable", and the snapshot works beside it.

The older release's database is built here as that release made it (its schema, `user_version` 1,
WAL for releases before eb20010, a rollback journal after, mode 0644 before the bot made it private). Its header
is read from the bytes, so checking the file never opens (and so never changes) it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner, Result

from support.feedback_dbs import header, older_release_db

from flytegpt.bot.cli import main
from flytegpt.bot.slack import feedback
from flytegpt.bot.slack.feedback import (
    DAY_S,
    FeedbackDatabaseBusy,
    FeedbackDatabaseError,
    FeedbackStore,
    export_snapshot,
    read_copy,
)
from flytegpt.bot.slack.retention import META_RETENTION_PENDING_SINCE, RETENTION_GRACE_S, RetentionJob

def state(path: Path) -> tuple[str, int, str, int]:
    """What must not change: the bytes (sha256), user_version, journal kind and mode bits."""
    return (hashlib.sha256(path.read_bytes()).hexdigest(), *header(path), stat.S_IMODE(os.stat(path).st_mode))


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


# --- the read-only commands leave an older release's file as it was ----------------------------------


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_export_questions_and_snapshot_leave_an_older_releases_database_as_it_was(tmp_path: Path,
                                                                                  journal: str) -> None:
    db = tmp_path / "data" / "feedback.sqlite3"
    db.parent.mkdir()
    older_release_db(db, journal=journal)
    before = state(db)
    assert before[1:] == (1, "wal" if journal == "wal" else "rollback", 0o644)

    result = run("feedback", "export", "--db", str(db), "--out", str(tmp_path / "votes.jsonl"))
    assert result.exit_code == 0, result.output
    assert state(db) == before
    votes = [json.loads(line) for line in (tmp_path / "votes.jsonl").read_text().splitlines()]
    assert sorted(v["question"] for v in votes) == [f"how do I cache task {i}?" for i in range(4)]

    # an older release logged no channel types: --include-private, or its channel questions are left out
    result = run("feedback", "questions", "--db", str(db), "--out", str(tmp_path / "q.jsonl"), "--include-private")
    assert result.exit_code == 0, result.output
    assert state(db) == before
    questions = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(questions) == 4 and questions[0]["gold"] == ["docs:caching.md"]

    backup = tmp_path / "backup.sqlite3"
    result = run("feedback", "snapshot", "--db", str(db), "--to", str(backup))
    assert result.exit_code == 0, result.output
    assert state(db) == before
    # the backup is the database as it was: the release that wrote it (schema 1) can still open it
    assert header(backup) == header(db)
    conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 4
        assert "channel_type" not in {r[1] for r in conn.execute("PRAGMA table_info(answers)")}
    finally:
        conn.close()

    # a read-only connection cannot checkpoint: a WAL database's -wal is there but holds nothing
    wal = Path(f"{db}-wal")
    if wal.exists():
        assert wal.stat().st_size == 0 and not stat.S_IMODE(wal.stat().st_mode) & ~0o644
    assert not Path(f"{db}-journal").exists()


def test_reading_a_copy_names_the_users_database_in_every_error(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    FeedbackStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {feedback.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(FeedbackDatabaseError, match=f"{newer} has schema version {feedback.SCHEMA_VERSION + 1}"):
        with read_copy(newer):
            pass
    other = tmp_path / "other.sqlite3"  # another program's SQLite file is neither read as empty nor changed
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    before = state(other)
    for command in (["export", "--out", str(tmp_path / "o.jsonl")], ["snapshot", "--to", str(tmp_path / "s")]):
        result = run("feedback", command[0], "--db", str(other), *command[1:])
        assert result.exit_code == 1 and f"{other} is not a FlyteGPT feedback database" in result.output
    assert state(other) == before and not (tmp_path / "s").exists()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not sqlite" * 500)
    result = run("feedback", "snapshot", "--db", str(junk), "--to", str(tmp_path / "s"))
    assert result.exit_code == 1 and f"{junk} is not a usable feedback database" in result.output
    assert junk.read_bytes() == b"not sqlite" * 500


def test_a_database_in_a_folder_with_uri_characters_in_its_name_is_read(tmp_path: Path) -> None:
    """The read-only connection is a file: URI; a `#` or `?` in a folder must not cut the path."""
    folder = tmp_path / "ops #1?x=%20"
    folder.mkdir()
    db = folder / "feedback.sqlite3"
    older_release_db(db, journal="delete")
    before = state(db)
    assert export_snapshot(db, str(tmp_path / "copy.sqlite3")) > 0
    with read_copy(db) as store:
        assert len(store.questions()) == 4
    assert state(db) == before


# --- another process holds the database ----------------------------------------------------------

HOLDER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")  # as a release before eb20010 opened it
conn.execute("PRAGMA busy_timeout = 5000")
i = 0
while True:
    conn.execute("INSERT INTO answers (id, created_at, question, answer, sources) VALUES (?, ?, 'q', 'a', '[]')",
                 (f"live{i}", time.time()))
    if i == 0:
        print("writing", flush=True)
    i += 1
    time.sleep(0.005)
"""


@pytest.fixture()
def older_bot(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """An older bot's database, held open in WAL mode by another process that keeps writing."""
    db = tmp_path / "feedback.sqlite3"
    older_release_db(db, journal="wal")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        yield db, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_snapshot_export_and_questions_work_while_an_older_bot_holds_and_writes_the_database(
        older_bot: tuple[Path, subprocess.Popen], tmp_path: Path) -> None:
    db, _ = older_bot
    for i in range(3):  # each a consistent copy, taken while the writes go on
        backup = tmp_path / f"backup{i}.sqlite3"
        result = run("feedback", "snapshot", "--db", str(db), "--to", str(backup))
        assert result.exit_code == 0, result.output
        assert header(backup)[0] == 1
        conn = sqlite3.connect(backup)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            live = conn.execute("SELECT COUNT(*) FROM answers WHERE id LIKE 'live%'").fetchone()[0]
        finally:
            conn.close()
        assert live >= 1  # the rows still in the writer's -wal are in the copy
    result = run("feedback", "export", "--db", str(db), "--out", str(tmp_path / "votes.jsonl"))
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "votes.jsonl").read_text().splitlines()) == 4
    result = run("feedback", "questions", "--db", str(db), "--out", str(tmp_path / "q.jsonl"))
    assert result.exit_code == 0, result.output
    assert header(db) == (1, "wal")  # still the older release's: its next restart opens it


def test_opening_a_database_an_older_bot_holds_says_it_is_in_use_not_damaged(
        older_bot: tuple[Path, subprocess.Popen]) -> None:
    db, proc = older_bot
    with pytest.raises(FeedbackDatabaseBusy) as e:
        FeedbackStore(db, timeout_s=0.2)  # switching from WAL needs the file alone
    text = str(e.value)
    assert f"{db} is in use by another process" in text and "an older FlyteGPT bot in WAL mode?" in text
    assert "stop it, or copy the file first" in text
    if Path(f"/proc/{proc.pid}/fd").is_dir():  # Linux: the process holding it is named
        assert f"pid {proc.pid}" in text
    assert "not a usable" not in text
    assert header(db) == (1, "wal")


def test_a_lock_held_past_the_wait_is_reported_as_in_use(tmp_path: Path) -> None:
    """A rollback-journal writer (or a VACUUM) holding the file: the read-only commands wait, then say so."""
    db = tmp_path / "feedback.sqlite3"
    older_release_db(db, journal="delete")
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FeedbackDatabaseBusy, match=f"{db} is in use by another process"):
            export_snapshot(db, str(tmp_path / "copy.sqlite3"), timeout_s=0.2)
        with pytest.raises(FeedbackDatabaseBusy, match="stop it, or copy the file first"):
            with read_copy(db, timeout_s=0.2):
                pass
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert not (tmp_path / "copy.sqlite3").exists()


# --- retention on the first start after an upgrade -----------------------------------------------


def texts(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, question FROM answers"))
    finally:
        conn.close()


def test_an_upgrade_warns_and_waits_a_grace_period_before_the_first_prune(tmp_path: Path, caplog) -> None:
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    older_release_db(db, journal="wal", rows=[
        ("old1", t0 - 400 * DAY_S, "how do I cache a task?"), ("old2", t0 - 399 * DAY_S, "what is a launch plan?"),
        ("new1", t0 - 10 * DAY_S, "how do I map over a list?")])

    with caplog.at_level(logging.INFO, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0).run_once() == 0  # the first `serve` after the upgrade
    assert texts(db) == {"old1": "how do I cache a task?", "old2": "what is a launch plan?",
                         "new1": "how do I map over a list?"}
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    text = warning[0].getMessage()
    assert f"2 question(s) in {db}" in text and "older than [bot] retention_days = 365" in text
    prune_after = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0 + RETENTION_GRACE_S))
    since = time.strftime("%Y-%m-%d", time.gmtime(t0 - 400 * DAY_S))
    assert f"logged from {since}" in text and f"Nothing is removed before {prune_after}" in text
    assert "set [bot] retention_days = 0 to keep them" in text.lower()

    caplog.clear()  # a restart three days later: the wait is not started again, the warning repeats
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0 + 3 * DAY_S).run_once() == 0
    assert f"Nothing is removed before {prune_after}" in caplog.text and texts(db)["old1"]

    caplog.clear()  # past the grace period: the first prune
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0 + RETENTION_GRACE_S + 1).run_once() == 2
    assert texts(db) == {"old1": "", "old2": "", "new1": "how do I map over a list?"}
    assert "question text removed" in caplog.text and "WARNING" not in caplog.text

    caplog.clear()  # later prunes run as before: the next row that ages is blanked at once
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0 + 360 * DAY_S).run_once() == 1
    assert texts(db)["new1"] == "" and not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # what retention remembers is not a schema change: releases of schema 2 open the file as before
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == feedback.SCHEMA_VERSION
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
            "answers", "votes", "meta"}
    finally:
        conn.close()


def test_an_upgraded_history_that_ages_past_retention_later_gets_the_same_warning(tmp_path: Path, caplog) -> None:
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    older_release_db(db, journal="delete", rows=[("a", t0 - 300 * DAY_S, "how do I cache a task?")])
    job = RetentionJob(db, 365, clock=lambda: t0)
    assert job.run_once() == 0 and "WARNING" not in caplog.text  # nothing old enough yet: nothing to say
    store = FeedbackStore(db)
    try:
        assert store.meta(META_RETENTION_PENDING_SINCE) is None
    finally:
        store.close()
    later = t0 + 70 * DAY_S  # the row logged by the older release is now past retention
    with caplog.at_level(logging.WARNING, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: later).run_once() == 0
    assert "1 question(s)" in caplog.text and texts(db)["a"]
    assert RetentionJob(db, 365, clock=lambda: later + RETENTION_GRACE_S).run_once() == 1


def test_a_database_this_release_created_has_nothing_to_wait_for(tmp_path: Path, caplog) -> None:
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    store = FeedbackStore(db)  # the bot's first start on a new volume
    store.record_question("how do I cache a task?", outcome="failed", surface="mention")
    store.close()
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0).run_once() == 0
        assert RetentionJob(db, 365, clock=lambda: t0 + 366 * DAY_S).run_once() == 1  # aged under retention
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert texts(db) and all(q == "" for q in texts(db).values())


def test_retention_off_keeps_an_upgraded_history(tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    older_release_db(db, journal="delete", rows=[("a", t0 - 400 * DAY_S, "how do I cache a task?")])
    assert RetentionJob(db, 0, clock=lambda: t0 + 30 * DAY_S).run_once() == 0
    assert texts(db) == {"a": "how do I cache a task?"}
