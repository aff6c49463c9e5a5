"""`flytegpt feedback compact`: one VACUUM that gives a feedback database's free pages back and
switches it to incremental auto_vacuum, for the files the bot does not switch at start (> 512 MB).
What an operator sees: the size before and after, the same rows, and a clear
one-line refusal, with the file left as it was, while the bot has it open or someone holds a lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.bot.slack import feedback
from flytegpt.bot.slack.feedback import COMPACT_LOCK_TIMEOUT_S, FeedbackStore
from flytegpt.bot.slack.retention import RetentionJob

ENV = {"FLYTEGPT_CONFIG": None, "COLUMNS": "300"}
TEXT = "How do I cache a task with a custom hash? " * 12  # ~500 characters a row
KEPT = 300  # of ROWS, the rows left after the delete
ROWS = 3_000


def run(*args: str):
    return CliRunner().invoke(main, ["feedback", "compact", *args], env=ENV)


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    for needle in needles:
        assert needle in line, line
    return line


def _earlier_release_database(path: Path) -> None:
    """A question log as an earlier release left it (auto_vacuum off, SQLite's default), made big by
    rows that were then deleted: the file keeps its size, the pages are free inside it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(feedback._SCHEMA_V0)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO answers (id, created_at, question, answer, sources) VALUES (?, ?, ?, ?, '[]')",
                     [(f"id{i}", 1_700_000_000.0 + i, f"Q{i} {TEXT}", f"A{i} {TEXT * 3}") for i in range(ROWS)])
    conn.execute("COMMIT")
    conn.execute("DELETE FROM answers WHERE rowid > ?", (KEPT,))
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()


def _rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, question, answer FROM answers ORDER BY id").fetchall()
    finally:
        conn.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 2**10:,.1f} KB"


def test_a_database_grown_by_deleted_rows_shrinks_keeps_its_rows_and_gives_space_back_from_then_on(tmp_path):
    db = tmp_path / "feedback.sqlite3"
    _earlier_release_database(db)
    before, rows = os.path.getsize(db), _rows(db)

    result = run("--db", str(db))
    assert result.exit_code == 0, result.output
    after = os.path.getsize(db)
    assert after < before / 5  # 9 rows in 10 were deleted
    lines = result.output.splitlines()
    assert lines[0] == (f"compacted {db}: {_size(before)} before, {_size(after)} after "
                        f"({_size(before - after)} given back)")
    assert lines[1] == "auto_vacuum: incremental (was none): retention now gives space back by itself"
    assert _rows(db) == rows and len(rows) == KEPT
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600  # still only the bot's user's
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0  # only the layout changed, not the schema
    conn.close()

    store = FeedbackStore(db)  # the bot opens it as it is, and it now gives space back in small steps
    try:
        assert store.auto_vacuum == "incremental"
    finally:
        store.close()
    again = run("--db", str(db))  # already incremental: compacted, nothing more to say
    assert again.exit_code == 0 and len(again.output.splitlines()) == 1
    assert again.output.startswith(f"compacted {db}: ")


def test_the_database_can_be_named_by_the_config(tmp_path):
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "fb.sqlite3"
    _earlier_release_database(db)
    config = tmp_path / "flytegpt.toml"
    config.write_text('[bot]\nfeedback_db = "data/fb.sqlite3"\n')  # relative to the config file
    result = CliRunner().invoke(main, ["feedback", "compact", "--config", str(config)], env=ENV)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"compacted {db}: ")
    with_env = CliRunner().invoke(main, ["feedback", "compact"], env={**ENV, "FLYTEGPT_CONFIG": str(config)})
    assert with_env.exit_code == 0 and with_env.output.startswith(f"compacted {db}: ")


def test_a_locked_database_gives_a_clear_error_and_is_left_intact(tmp_path):
    """Someone is writing (a transaction holds SQLite's lock): the VACUUM gives up after
    COMPACT_LOCK_TIMEOUT_S with one line, the file is byte for byte as it was, and the writer's
    transaction commits afterwards as if nothing had happened."""
    db = tmp_path / "feedback.sqlite3"
    _earlier_release_database(db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO answers (id, created_at, question, answer, sources) VALUES ('late', 0, 'q', 'a', '[]')")
    digest = _digest(db)

    t0 = time.monotonic()
    line = one_error_line(run("--db", str(db)), f"{db} is locked by another connection",
                          "is the bot, or another command, writing to it?", "nothing was changed")
    assert time.monotonic() - t0 < COMPACT_LOCK_TIMEOUT_S + 3
    assert "database is locked" in line
    assert _digest(db) == digest
    writer.execute("COMMIT")
    writer.close()
    assert len(_rows(db)) == KEPT + 1
    assert sqlite3.connect(db).execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # not switched


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see other processes' open files")
def test_the_bot_having_the_database_open_is_refused_and_nothing_changes(tmp_path):
    """The bot holds the question log open for its whole life but no lock between questions, so
    SQLite alone would let the VACUUM lock it out mid-answer: refused, naming the process."""
    db = tmp_path / "feedback.sqlite3"
    _earlier_release_database(db)
    bot = subprocess.Popen(  # opens the database as the running bot does, then idles
        [sys.executable, "-c", "import sys\nfrom flytegpt.bot.slack.feedback import FeedbackStore\n"
         f"store = FeedbackStore({str(db)!r})\nprint('open', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert bot.stdout.readline().strip() == "open"
        digest = _digest(db)
        line = one_error_line(run("--db", str(db)), f"{db} is open in another process right now (pid {bot.pid}: ",
                              "stop the bot first", "nothing was changed")
        assert "FeedbackStore" in line  # its command line, so the operator knows which process
        assert _digest(db) == digest
    finally:
        bot.communicate("", timeout=10)
    result = run("--db", str(db))  # the bot stopped: it goes ahead
    assert result.exit_code == 0 and result.output.startswith(f"compacted {db}: ")


def test_no_database_or_not_a_feedback_database_is_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "missing.sqlite3"
    one_error_line(run("--db", str(missing)), f"no feedback database at {missing}")
    assert not missing.exists()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_text("not a database " * 500)
    one_error_line(run("--db", str(garbage)), f"{garbage} is not a usable feedback database")
    assert garbage.read_text() == "not a database " * 500
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    one_error_line(run("--db", str(other)), f"{other} is not a feedback database (it has no answers table)")
    one_error_line(run(), "which database? pass --db PATH, or --config FILE")


def test_the_start_up_warning_for_a_big_database_names_the_command_and_it_works(tmp_path, monkeypatch, caplog):
    """The bot leaves an earlier release's file over COMPACT_AT_START_MAX_BYTES as it is and says
    what to run; what it says, run as it is, switches the file, and the next start is quiet."""
    db = tmp_path / "feedback.sqlite3"
    _earlier_release_database(db)
    monkeypatch.setattr(feedback, "COMPACT_AT_START_MAX_BYTES", 1024)
    with caplog.at_level(logging.WARNING, logger="flytegpt.bot.slack.feedback"):
        assert RetentionJob(db, 365).compact_at_start() is False
    [warning] = [r.getMessage() for r in caplog.records if "too big to switch at start" in r.getMessage()]
    command = re.search(r"run: (flytegpt feedback compact .*)$", warning).group(1)
    assert command == f"flytegpt feedback compact --db {db}"
    result = CliRunner().invoke(main, command.split()[1:], env=ENV)
    assert result.exit_code == 0 and "auto_vacuum: incremental (was none)" in result.output
    caplog.clear()
    assert RetentionJob(db, 365).compact_at_start() is False  # already incremental: nothing to do, no warning
    assert "too big" not in caplog.text


def test_help_says_when_to_run_it_and_what_it_needs():
    text = " ".join(CliRunner().invoke(main, ["feedback", "compact", "--help"], env=ENV).output.split())
    assert "--db PATH" in text and "[bot] feedback_db of --config" in text
    for promise in ("switch it to incremental auto_vacuum", "over 512 MB", "Run it with the bot stopped",
                    "refused while another process has the file open or holds a lock on it",
                    "nothing is changed", "free disk space", "size before and after"):
        assert promise in text, promise
    assert "compact" in CliRunner().invoke(main, ["feedback", "--help"], env=ENV).output
    assert f"{feedback.COMPACT_AT_START_MAX_BYTES >> 20} MB" in text  # the help and the code agree
