"""The question log's schema: versioned, migrated from the first release without losing a row."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from flytegpt.bot.answering import Citation
from flytegpt.bot.answering.types import Answer
from flytegpt.bot.slack.feedback import (
    SCHEMA_VERSION, FeedbackDatabaseError, FeedbackStore, export_feedback, export_snapshot,
)

# The CREATE statements of the first release's bot/slack/feedback.py (git 523e4e2), verbatim.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    surface TEXT,
    channel TEXT,
    thread_ts TEXT,
    user TEXT,
    question TEXT NOT NULL,
    standalone_question TEXT,
    answer TEXT NOT NULL,
    sources TEXT NOT NULL,
    index_version TEXT,
    mode TEXT
);
CREATE TABLE IF NOT EXISTS votes (
    answer_id TEXT NOT NULL REFERENCES answers(id),
    user TEXT NOT NULL,
    vote TEXT NOT NULL CHECK (vote IN ('up', 'down')),
    channel TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (answer_id, user)
);
"""

SOURCES = json.dumps([{"n": 1, "title": "Caching", "url": "https://d/caching", "source_id": "docs:caching.md"}])


def first_release_db(path: Path, answers: int = 40) -> None:
    """A database exactly as the first release left it, journal mode WAL included."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(FIRST_RELEASE_SCHEMA)
    for i in range(answers):
        mode = "not_found" if i % 4 == 0 else ("offline" if i % 4 == 1 else "llm")
        conn.execute("INSERT INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (f"a{i}", 1_700_000_000 + i, "mention" if i % 2 else "command", "C1", f"17000.{i}",
                      f"U{i}", f"question {i}", f"standalone {i}", f"answer {i}", SOURCES, "v1", mode))
        if i % 3 == 0:
            conn.execute("INSERT INTO votes VALUES (?,?,?,?,?)", (f"a{i}", "U9", "down" if i % 2 else "up", "C1",
                                                                  1_700_000_100 + i))
    conn.close()


def dump(path: Path) -> tuple[list, list]:
    conn = sqlite3.connect(path)
    try:
        answers = conn.execute("SELECT id, created_at, surface, channel, thread_ts, user, question, "
                               "standalone_question, answer, sources, index_version, mode FROM answers ORDER BY id"
                               ).fetchall()
        votes = conn.execute("SELECT * FROM votes ORDER BY answer_id, user").fetchall()
    finally:
        conn.close()
    return answers, votes


def test_a_first_release_database_is_migrated_and_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite3"
    first_release_db(db)
    before = dump(db)
    assert len(before[0]) == 40 and len(before[1]) == 14

    store = FeedbackStore(db)
    try:
        assert store.migrated_from == 0 and store.schema_version == SCHEMA_VERSION
        rows = {r["id"]: r for r in store.questions()}
        # every old row is still there, with the outcome its mode implies
        assert len(rows) == 40
        assert rows["a0"]["outcome"] == "not_found" and rows["a1"]["outcome"] == "answered"
        assert rows["a2"]["mode"] == "llm" and rows["a2"]["outcome"] == "answered"
        assert rows["a3"]["down"] == 1 and rows["a0"]["up"] == 1
        assert rows["a5"]["sources"][0]["source_id"] == "docs:caching.md"
        assert rows["a5"]["latency_s"] is None
        # the new code writes the new columns beside the old rows
        new_id = store.record_question("is the model up?", outcome="model_failed", surface="mention",
                                       channel="C1", latency_s=2.5, failure="model_unavailable")
        assert store.record_vote("a7", "up", user="U1", channel="C1")
    finally:
        store.close()
    after = dump(db)
    assert [r for r in after[0] if r[0] != new_id] == before[0]  # old rows byte for byte
    assert set(before[1]) <= set(after[1]) and len(after[1]) == 15
    assert export_feedback(db, tmp_path / "votes.jsonl") == 15

    again = FeedbackStore(db)  # a second open migrates nothing
    try:
        assert again.migrated_from == SCHEMA_VERSION
        assert len(again.questions()) == 41
    finally:
        again.close()


def test_a_new_database_has_the_current_schema_and_logs_every_outcome(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "new.sqlite3")
    try:
        assert store.schema_version == SCHEMA_VERSION
        answer = Answer("how to cache?", "how to cache?", "Use cache=True [1].",
                        [Citation(1, "Caching", "https://d/caching", "docs:caching.md")], "llm", "v2")
        a = store.record_answer(answer, surface="panel", channel="D1", thread_ts="1.2", user="U1", latency_s=1.25,
                                permalink="https://x.slack.com/archives/D1/p12")
        nf = store.record_answer(Answer("q", "q", "I couldn't find this.", [], "not_found", "v2"), surface="mention")
        failed = store.record_question("q2", outcome="failed", surface="slash", failure="index_not_ready")
        with pytest.raises(ValueError, match="outcome must be one of"):
            store.record_question("q3", outcome="exploded", surface="mention")  # type: ignore[arg-type]
        rows = {r["id"]: r for r in store.questions()}
    finally:
        store.close()
    assert rows[a]["outcome"] == "answered" and rows[a]["latency_s"] == 1.25 and rows[a]["surface"] == "panel"
    assert rows[a]["sources"][0]["source_id"] == "docs:caching.md" and rows[a]["index_version"] == "v2"
    assert rows[a]["permalink"].endswith("/p12")
    assert rows[nf]["outcome"] == "not_found"
    assert rows[failed]["outcome"] == "failed" and rows[failed]["failure"] == "index_not_ready"


def test_a_database_from_a_newer_release_or_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(FeedbackDatabaseError, match="newer than this FlyteGPT"):
        FeedbackStore(newer)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FeedbackDatabaseError, match="junk.sqlite3 is not a usable feedback database"):
        FeedbackStore(junk)
    assert junk.read_bytes() == b"this is not sqlite" * 100  # left as it was


def test_a_snapshot_is_a_consistent_copy_written_to_the_store(tmp_path: Path) -> None:
    db = tmp_path / "live.sqlite3"
    first_release_db(db, answers=10)
    live = FeedbackStore(db)  # the bot has it open (WAL), and keeps writing
    try:
        live.record_question("still writing", outcome="failed", surface="mention")
        target = tmp_path / "store" / "feedback" / "feedback.sqlite3"
        assert export_snapshot(db, str(target)) > 0
        live.record_question("after the snapshot", outcome="failed", surface="mention")
    finally:
        live.close()
    copy = FeedbackStore(target)
    try:
        texts = [r["question"] for r in copy.questions()]
    finally:
        copy.close()
    assert len(texts) == 11 and "still writing" in texts and "after the snapshot" not in texts


def test_the_bot_copies_its_database_where_the_report_task_reads_it(tmp_path: Path, caplog) -> None:
    from flytegpt.bot.report.snapshot import SnapshotJob
    from flytegpt.ingest.config import Config

    db = tmp_path / "feedback.sqlite3"
    first_release_db(db, answers=3)
    target = tmp_path / "bucket" / "feedback.sqlite3"
    config = Config.model_validate({"bot": {"feedback_db": str(db), "feedback_snapshot": str(target)}})
    job = SnapshotJob(config)
    assert job.enabled and job.run_once()
    copy = FeedbackStore(target)
    try:
        assert len(copy.questions()) == 3
    finally:
        copy.close()
    (tmp_path / "file").write_text("x")  # a target under a file cannot be written: logged, not raised
    broken = Config.model_validate({"bot": {"feedback_db": str(db), "feedback_snapshot": str(tmp_path / "file" / "x")}})
    assert SnapshotJob(broken).run_once() is False
    assert "feedback snapshot failed" in caplog.text
    assert not SnapshotJob(Config()).enabled


def test_feedback_snapshot_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    db = tmp_path / "feedback.sqlite3"
    first_release_db(db, answers=2)
    config = tmp_path / "flytegpt.toml"
    config.write_text(f'[bot]\nfeedback_snapshot = "{tmp_path / "copies" / "db.sqlite3"}"\n')
    result = CliRunner().invoke(main, ["feedback", "snapshot", "--db", str(db), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(dump(tmp_path / "copies" / "db.sqlite3")[0]) == 2
    bare = tmp_path / "bare.toml"
    bare.write_text("")
    result = CliRunner().invoke(main, ["feedback", "snapshot", "--db", str(db), "--config", str(bare)])
    assert result.exit_code != 0 and "pass --to or set [bot] feedback_snapshot" in result.output
    result = CliRunner().invoke(main, ["feedback", "snapshot", "--db", str(tmp_path / "none.sqlite3"),
                                       "--to", str(tmp_path / "x.sqlite3"), "--config", str(bare)])
    assert result.exit_code != 0 and "feedback database not found" in result.output


# --- what the report refuses to read: files the bot never wrote -------------------------------


def not_bot_databases(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """A half-written snapshot, some other program's SQLite file, random bytes; with the reason
    the report gives for each."""
    other = tmp_path / "made-by-another-program.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE recipes (name TEXT, minutes INTEGER)")
    conn.execute("INSERT INTO recipes VALUES ('soup', 40)")
    conn.commit()
    conn.close()
    noise = bytes((i * 7919 + 13) % 251 for i in range(4096))  # fixed bytes, no SQLite header
    return {
        "zero-byte": (b"", "is empty (0 bytes), not a FlyteGPT feedback database"),
        "other-sqlite": (other.read_bytes(), "is not a FlyteGPT feedback database (no answers table)"),
        "corrupt": (noise, "is not an SQLite database: file is not a database"),
    }


KINDS = ("zero-byte", "other-sqlite", "corrupt")


@pytest.fixture()
def memory_fs() -> Iterator[Any]:
    """fsspec's in-memory filesystem (global to the process), emptied after the test."""
    import fsspec

    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/report-db-test"):
        fs.rm("/report-db-test", recursive=True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_local_file_the_bot_never_wrote_is_refused_naming_it(tmp_path: Path, kind: str) -> None:
    from flytegpt.bot.report import build_report

    data, reason = not_bot_databases(tmp_path)[kind]
    db = tmp_path / f"{kind}.sqlite3"
    db.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(f"{db} {reason}")):
        build_report(str(db))
    assert db.read_bytes() == data  # the user's file is left as it was


@pytest.mark.parametrize("kind", KINDS)
def test_a_url_the_bot_never_wrote_is_refused_naming_the_url(tmp_path: Path, memory_fs: Any, kind: str) -> None:
    from flytegpt.bot.report import build_report

    data, reason = not_bot_databases(tmp_path)[kind]
    memory_fs.pipe_file(f"/report-db-test/{kind}.sqlite3", data)
    url = f"memory://report-db-test/{kind}.sqlite3"
    with pytest.raises(ValueError, match=re.escape(f"{url} {reason}")) as e:
        build_report(url)
    assert "flytegpt-report-" not in str(e.value)  # not the temporary copy's path
    assert memory_fs.cat_file(f"/report-db-test/{kind}.sqlite3") == data


def test_a_newer_database_behind_a_url_names_the_url(tmp_path: Path, memory_fs: Any) -> None:
    from flytegpt.bot.report import build_report

    newer = tmp_path / "newer.sqlite3"
    FeedbackStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    memory_fs.pipe_file("/report-db-test/newer.sqlite3", newer.read_bytes())
    url = "memory://report-db-test/newer.sqlite3"
    with pytest.raises(ValueError, match=re.escape(f"{url} has schema version {SCHEMA_VERSION + 1}, newer")):
        build_report(url)


@pytest.mark.parametrize("where", ["local", "url"])
@pytest.mark.parametrize("kind", KINDS)
def test_flytegpt_report_says_so_in_one_line_and_writes_nothing(tmp_path: Path, memory_fs: Any, kind: str,
                                                                where: str) -> None:
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    data, reason = not_bot_databases(tmp_path)[kind]
    if where == "local":
        db = str(tmp_path / f"{kind}.sqlite3")
        Path(db).write_bytes(data)
    else:
        memory_fs.pipe_file(f"/report-db-test/{kind}.sqlite3", data)
        db = f"memory://report-db-test/{kind}.sqlite3"
    config = tmp_path / "flytegpt.toml"
    config.write_text("")
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", db, "--config", str(config), "--no-store",
                                       "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]  # one line
    assert result.output.startswith(f"Error: {db} {reason}") and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("where", ["local", "url"])
def test_a_bot_database_without_questions_in_the_period_is_an_empty_report(tmp_path: Path, memory_fs: Any,
                                                                          where: str) -> None:
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    live = tmp_path / "feedback.sqlite3"
    first_release_db(live, answers=3)  # 2023: long before the last 30 days
    FeedbackStore(live).close()  # and one the current bot has opened
    db = str(live)
    if where == "url":
        memory_fs.pipe_file("/report-db-test/feedback.sqlite3", live.read_bytes())
        db = "memory://report-db-test/feedback.sqlite3"
    config = tmp_path / "flytegpt.toml"
    config.write_text("")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", db, "--config", str(config), "--no-store",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 0 questions" in result.output and out.read_text().startswith("<!")

    new = tmp_path / "new.sqlite3"
    FeedbackStore(new).close()  # a bot that has not been asked anything yet
    result = CliRunner().invoke(main, ["report", "--db", str(new), "--config", str(config), "--no-store",
                                       "--out", str(out)])
    assert result.exit_code == 0 and "0 questions" in result.output, result.output
