"""The feedback database's read-only commands and retention, in the harder cases.

`feedback snapshot`, `export` and `questions` read a sound database that a read-only connection
cannot: one left with a hot journal (the bot killed in the middle of a write) and an older release's
WAL file in a read-only place. The copies hold the committed rows only, and the original is left as
it was (its hot journal included: the bot rolls it back at its next start). A clock that was
behind when retention first found old text does not use the grace period up. The snapshot is
uploaded from a file, never from bytes in memory, and the temporary copies go where there is room.

The hot journal is made the way it happens: a writer process opens the database as the bot does,
changes rows in a transaction too big for its cache (so changed pages reach the file) and is killed
with SIGKILL before it commits.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner, Result
from fsspec.implementations.memory import MemoryFileSystem

from support.feedback_dbs import SOURCES, header, older_release_db

from flytegpt.bot import sqlite_files
from flytegpt.bot.cli import main
from flytegpt.bot.report.data import load_questions
from flytegpt.bot.slack import feedback
from flytegpt.bot.slack.feedback import (
    DAY_S,
    FeedbackDatabaseError,
    FeedbackStore,
    export_snapshot,
    read_copy,
)
from flytegpt.bot.slack.retention import META_RETENTION_PENDING_SINCE, RETENTION_GRACE_S, RetentionJob

ROWS = 60


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def files_of(db: Path) -> dict[str, tuple[str, int]]:
    """Every file of the database (itself, -journal, -wal, -shm): sha256 and mode bits."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(db.parent.glob(db.name + "*"))}


def bot_database(db: Path, rows: int = ROWS) -> None:
    """A database this release's bot wrote: `rows` answered questions in a public channel, each
    confirmed by its asker's 👍 (so `feedback questions` and `export` have rows)."""
    store = FeedbackStore(db)
    try:
        for i in range(rows):
            answer_id = store.record_question(f"how do I cache task {i}? " + "x" * 300, outcome="answered",
                                              surface="mention", channel="C0GENERAL", user="U1",
                                              channel_type="channel", related=json.loads(SOURCES))
            assert store.record_vote(answer_id, "up", user="U1", channel="C0GENERAL")
    finally:
        store.close()


# A writer that opens the database as the bot does, changes every row and adds one in a transaction
# bigger than its page cache (so changed pages are written to the file, their originals to the
# journal), says so, and waits to be killed.
CRASHING_WRITER = r"""
import sys, time
from flytegpt.bot import sqlite_files
conn = sqlite_files.connect(sys.argv[1])
conn.execute("PRAGMA cache_size = 1")
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE answers SET question = question || ' UNCOMMITTED', answer = 'UNCOMMITTED'")
conn.execute("INSERT INTO answers (id, created_at, question, answer, sources) VALUES ('ghost', 0, 'ghost', '', '[]')")
print("mid-write", flush=True)
time.sleep(60)
"""


def crash_mid_write(db: Path) -> None:
    """Leave `db` with a hot journal: its writer killed (SIGKILL) before it committed."""
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "mid-write"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    journal = Path(f"{db}-journal")
    assert journal.exists() and journal.stat().st_size > 0
    # why the commands used to fail on such a file: a read-only connection cannot roll it back
    conn = sqlite3.connect(sqlite_files.read_only_uri(db), uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            conn.execute("SELECT COUNT(*) FROM answers").fetchone()
    finally:
        conn.close()


def committed(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(rows, rows with uncommitted text, ghost rows)."""
    return conn.execute("SELECT COUNT(*), COALESCE(SUM(question LIKE '%UNCOMMITTED%' OR answer = 'UNCOMMITTED'), 0), "
                        "COALESCE(SUM(id = 'ghost'), 0) FROM answers").fetchone()


def check_copies(out: Path, rows: int, user_version: int, journal: str) -> None:
    snap = out / "snap.sqlite3"
    assert header(snap) == (user_version, journal)  # the database as it is: the release that wrote it opens it
    conn = sqlite3.connect(f"file:{snap}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert committed(conn) == (rows, 0, 0)
    finally:
        conn.close()
    votes = [json.loads(line) for line in (out / "votes.jsonl").read_text().splitlines()]
    assert len(votes) == rows and not [v for v in votes if "UNCOMMITTED" in v["question"]]
    questions = [json.loads(line) for line in (out / "q.jsonl").read_text().splitlines()]
    assert len(questions) == rows and questions[0]["gold"] == ["docs:caching.md"]


def test_a_database_left_with_a_hot_journal_is_snapshotted_and_exported_as_its_committed_rows(
        tmp_path: Path) -> None:
    db = tmp_path / "data" / "feedback.sqlite3"
    db.parent.mkdir()
    bot_database(db)
    crash_mid_write(db)
    before = files_of(db)

    out = tmp_path / "out"
    out.mkdir()
    result = run("feedback", "snapshot", "--db", str(db), "--to", str(out / "snap.sqlite3"))
    assert result.exit_code == 0, result.output
    result = run("feedback", "export", "--db", str(db), "--out", str(out / "votes.jsonl"))
    assert result.exit_code == 0, result.output
    result = run("feedback", "questions", "--db", str(db), "--out", str(out / "q.jsonl"))
    assert result.exit_code == 0, result.output
    check_copies(out, ROWS, feedback.SCHEMA_VERSION, "rollback")

    # the report reads it too
    assert len(load_questions(str(db))) == ROWS

    # the original is as it was, hot journal included, and nothing was left beside it
    assert files_of(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["feedback.sqlite3", "feedback.sqlite3-journal"]
    # the bot's next start rolls the write back, as it always has
    store = FeedbackStore(db)
    try:
        assert len(store.questions()) == ROWS and not [q for q in store.questions() if "UNCOMMITTED" in q["question"]]
    finally:
        store.close()


def test_the_recovery_never_runs_where_this_process_has_the_database_open(tmp_path: Path) -> None:
    """Copying the file under a POSIX lock would drop this process's own SQLite locks on it: refused,
    saying what to do, and nothing is written."""
    db = tmp_path / "feedback.sqlite3"
    bot_database(db)
    crash_mid_write(db)
    before = files_of(db)
    other = sqlite3.connect(sqlite_files.read_only_uri(db), uri=True)  # opens the file; reads nothing
    try:
        with pytest.raises(FeedbackDatabaseError) as e:
            export_snapshot(db, str(tmp_path / "snap.sqlite3"))
    finally:
        other.close()
    text = str(e.value)
    assert f"{db} needs an interrupted write rolled back" in text and "this process has it open" in text
    assert "not a usable" not in text
    assert files_of(db) == before and not (tmp_path / "snap.sqlite3").exists()


# --- a read-only place ---------------------------------------------------------------------------

IN_READ_ONLY_PLACE = r"""
import json, os, sqlite3, sys
from click.testing import CliRunner
from flytegpt.bot.cli import main
db, out = sys.argv[1], sys.argv[2]
try:
    open(os.path.join(os.path.dirname(db), "probe"), "w").close()
    writable = True
except OSError:
    writable = False
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
try:
    conn.execute("SELECT COUNT(*) FROM answers").fetchone()
    plain = "read"
except sqlite3.Error as e:
    plain = str(e)
finally:
    conn.close()
results = {"writable": writable, "plain": plain}
for name, args in (("snapshot", ["--to", f"{out}/snap.sqlite3"]), ("export", ["--out", f"{out}/votes.jsonl"]),
                   ("questions", ["--out", f"{out}/q.jsonl", "--include-private"])):
    r = CliRunner().invoke(main, ["feedback", name, "--db", db, *args])
    results[name] = [r.exit_code, r.output]
print(json.dumps(results))
"""


def run_in_read_only_place(folder: Path, db: Path, out: Path) -> dict:
    """The three commands in a process for which `folder` is read only: a read-only bind mount in a
    mount namespace of its own (root bypasses file modes), or the folder's modes (another user)."""
    argv = [sys.executable, "-c", IN_READ_ONLY_PLACE, str(db), str(out)]
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if not unshare or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without user namespaces: no read-only place can be made")
        argv = [unshare, "-rm", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"',
                str(folder), *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    else:
        folder.chmod(0o555)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["older release in WAL mode", "hot journal"])
def test_the_commands_read_a_database_in_a_read_only_place(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "mounted-backup"
    folder.mkdir()
    db = folder / "feedback.sqlite3"
    if case == "hot journal":
        bot_database(db)
        crash_mid_write(db)
        expected = (feedback.SCHEMA_VERSION, "rollback")
    else:
        now = time.time()
        older_release_db(db, rows=[(f"a{i}", now - 3600 + i, f"how do I cache task {i}?") for i in range(ROWS)])
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()  # closed cleanly
        expected = (1, "wal")
    before = files_of(db)
    out = tmp_path / "out"
    out.mkdir()

    results = run_in_read_only_place(folder, db, out)
    assert results["writable"] is False
    # what a read-only connection says there (what the commands used to fail with)
    assert results["plain"] == ("attempt to write a readonly database" if case == "hot journal"
                                else "unable to open database file")
    for name in ("snapshot", "export", "questions"):
        assert results[name][0] == 0, results[name][1]
    check_copies(out, ROWS, *expected)
    assert files_of(db) == before


# --- never in memory, and where there is room ------------------------------------------------------


class UploadOnlyFileSystem(MemoryFileSystem):
    """An object store that records uploads and refuses whole-bytes writes: a snapshot must reach it
    with put_file (streamed from a file on disk), not as bytes held in memory."""

    protocol = "uploadcheck"
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]
    uploads: list[tuple[str, int, bytes]] = []

    def put_file(self, lpath, rpath, **kwargs):
        with open(lpath, "rb") as f:
            head = f.read(16)
        self.uploads.append((str(rpath), os.path.getsize(lpath), head))
        return super().put_file(lpath, rpath, **kwargs)

    def pipe_file(self, path, value, **kwargs):
        raise AssertionError("the snapshot was held in memory and piped")


def test_the_snapshot_is_uploaded_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsspec.register_implementation("uploadcheck", UploadOnlyFileSystem, clobber=True)
    UploadOnlyFileSystem.uploads.clear()
    db = tmp_path / "data" / "feedback.sqlite3"
    db.parent.mkdir()
    bot_database(db, rows=20)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)

    size = export_snapshot(db, "uploadcheck://bucket/flytegpt/feedback.sqlite3")
    assert [(Path(rpath).name, n, head) for rpath, n, head in UploadOnlyFileSystem.uploads] == [
        ("feedback.sqlite3", size, b"SQLite format 3\x00")]
    uploaded = tmp_path / "uploaded.sqlite3"
    uploaded.write_bytes(fsspec.filesystem("uploadcheck").cat_file(UploadOnlyFileSystem.uploads[0][0]))
    conn = sqlite3.connect(uploaded)
    try:
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 20
    finally:
        conn.close()
    assert not list(tmpdir.iterdir()) and not [p for p in db.parent.iterdir() if not p.name.startswith(db.name)]


def test_temporary_copies_go_beside_the_database_or_to_a_tmpdir_set_for_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "data" / "feedback.sqlite3"
    db.parent.mkdir()
    bot_database(db, rows=3)
    monkeypatch.delenv("TMPDIR", raising=False)
    with read_copy(db) as store:  # the database's volume has room: beside it, not in a pod's small /tmp
        assert Path(store.path).parent.parent == db.parent
        assert Path(store.path).parent.name.startswith(sqlite_files.SCRATCH_PREFIX)
    assert not [p for p in db.parent.iterdir() if not p.name.startswith(db.name)]  # the copy is gone

    tmpdir = tmp_path / "scratch"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # the operator's choice comes first
    monkeypatch.setattr(tempfile, "tempdir", None)
    with read_copy(db) as store:
        assert Path(store.path).parent.parent == tmpdir
    assert not list(tmpdir.iterdir())

    with pytest.raises(sqlite_files.NoRoomForCopy) as e:  # before anything is copied
        sqlite_files.scratch_place(db, 1 << 60)
    assert f"{tmpdir} (" in str(e.value) and f"{db.parent} (" in str(e.value)
    assert "set TMPDIR to a folder with room" in str(e.value)


def test_a_copy_left_by_a_killed_process_is_removed_by_the_next_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "feedback.sqlite3"
    bot_database(db, rows=3)
    monkeypatch.delenv("TMPDIR", raising=False)
    dead = tmp_path / f"{sqlite_files.SCRATCH_PREFIX}dead"  # its owner died: its lock is free
    dead.mkdir()
    (dead / "lock").touch()
    (dead / "feedback.sqlite3").write_bytes(b"\0" * 4096)
    live = tmp_path / f"{sqlite_files.SCRATCH_PREFIX}live"  # its owner is still copying
    live.mkdir()
    with open(live / "lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = run("feedback", "export", "--db", str(db), "--out", str(tmp_path / "votes.jsonl"))
        assert result.exit_code == 0, result.output
        assert not dead.exists() and live.exists()


# --- retention's grace period and a wrong clock ----------------------------------------------------


def history(db: Path, t0: float) -> None:
    """An earlier release's history: two questions 400 days old, one 10 days old."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(feedback._SCHEMA_V0 + feedback.MIGRATIONS[0] + "PRAGMA user_version = 1;")
    for rid, age in (("old1", 400), ("old2", 399), ("new1", 10)):
        conn.execute("INSERT INTO answers (id, created_at, question, answer, sources) VALUES (?, ?, ?, 'a', '[]')",
                     (rid, t0 - age * DAY_S, f"question {rid}"))
    conn.close()


def kept(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM answers WHERE question != '' ORDER BY id")]
    finally:
        conn.close()


def day(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


@pytest.mark.parametrize("behind_days", [30, 8])
def test_a_clock_behind_at_the_first_run_does_not_use_the_grace_period_up(tmp_path: Path, caplog,
                                                                          behind_days: int) -> None:
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    history(db, t0)
    assert RetentionJob(db, 365, clock=lambda: t0 - behind_days * DAY_S).run_once() == 0
    assert kept(db) == ["new1", "old1", "old2"]

    caplog.clear()  # the clock is corrected: the grace starts again from now, nothing goes
    with caplog.at_level(logging.WARNING, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0).run_once() == 0
    assert kept(db) == ["new1", "old1", "old2"]
    assert f"Nothing is removed before {day(t0 + RETENTION_GRACE_S)}" in caplog.text

    # daily runs with a correct clock: held until the grace is over, then the first prune
    for d in range(1, 7):
        assert RetentionJob(db, 365, clock=lambda: t0 + d * DAY_S).run_once() == 0
    assert kept(db) == ["new1", "old1", "old2"]
    assert RetentionJob(db, 365, clock=lambda: t0 + RETENTION_GRACE_S).run_once() == 2
    assert kept(db) == ["new1"]


def test_a_clock_ahead_at_the_first_run_waits_the_grace_period_from_the_corrected_time(tmp_path: Path,
                                                                                      caplog) -> None:
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    history(db, t0)
    assert RetentionJob(db, 365, clock=lambda: t0 + 365 * DAY_S).run_once() == 0
    with caplog.at_level(logging.WARNING, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365, clock=lambda: t0).run_once() == 0  # set back: a moment in the future
    assert f"Nothing is removed before {day(t0 + RETENTION_GRACE_S)}" in caplog.text
    assert RetentionJob(db, 365, clock=lambda: t0 + 3 * DAY_S).run_once() == 0
    assert RetentionJob(db, 365, clock=lambda: t0 + RETENTION_GRACE_S).run_once() == 2


def test_a_wait_recorded_by_the_previous_release_with_a_clock_behind_starts_again(tmp_path: Path) -> None:
    """26e9b24 recorded only when the wait began: 30 days ago by a clock that was behind."""
    db = tmp_path / "feedback.sqlite3"
    t0 = time.time()
    history(db, t0)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(feedback._META_TABLE)
    conn.execute("INSERT INTO meta VALUES (?, ?)", (META_RETENTION_PENDING_SINCE, repr(t0 - 30 * DAY_S)))
    conn.close()
    job = RetentionJob(db, 365, clock=lambda: t0)
    assert job.run_once() == 0 and kept(db) == ["new1", "old1", "old2"]
    assert job.last_run is not None and job.last_run.held is not None
    assert job.last_run.held.prune_after == t0 + RETENTION_GRACE_S
