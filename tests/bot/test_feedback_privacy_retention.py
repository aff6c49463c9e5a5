"""`flytegpt feedback questions` keeps private conversations out and counts only
the asker's 👍; the feedback database and the seen-events file are private to the bot's user, and
question text older than [bot] retention_days is removed while what the report counts stays."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.answering import Answer, Citation
from flytegpt.bot.cli_serve import feedback_group
from flytegpt.bot.report.data import load_questions
from flytegpt.bot.slack.dedupe import Deduper, seen_path_for
from flytegpt.bot.slack.feedback import DAY_S, FeedbackStore, export_confirmed
from flytegpt.bot.slack.retention import RetentionJob, prune_database
from flytegpt.ingest.config import BotConfig


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _answer(question: str, source: str = "docs:c.md", text: str = "text") -> Answer:
    return Answer(question, question, text, [Citation(1, "t", "https://e.org/1", source)], "llm", "v1")


def _answered(store: FeedbackStore, question: str, *, asker: str | None = "U1", votes=(), surface="mention",
              channel: str | None = "C1", channel_type: str | None = "channel") -> str:
    fid = store.record_answer(_answer(question), surface=surface, channel=channel, user=asker,
                              channel_type=channel_type)
    for user, vote in votes:
        store.record_vote(fid, vote, user=user, channel=channel)
    return fid


# ---- which questions are "confirmed" ----------------------------------------------------------------

def test_only_the_askers_thumbs_up_confirms_a_question(tmp_path: Path):
    """Anyone could 👍 any answer: one vote put someone else's question into the eval set."""
    store = FeedbackStore(tmp_path / "f.sqlite3")
    _answered(store, "asker liked it?", asker="U1", votes=[("U1", "up")])
    _answered(store, "others liked it?", asker="U1", votes=[("U2", "up"), ("U3", "up"), ("U4", "up")])
    _answered(store, "asker liked, others not?", asker="U1", votes=[("U1", "up"), ("U2", "down"), ("U3", "down")])
    _answered(store, "asker changed their mind?", asker="U1", votes=[("U1", "up"), ("U2", "up"), ("U1", "down")])
    _answered(store, "no asker logged?", asker=None, votes=[("U1", "up")])
    rows = store.confirmed_questions()
    store.close()
    assert [(r["question"], r["up"], r["down"]) for r in rows] == [
        ("asker liked it?", 1, 0),
        ("asker liked, others not?", 1, 2),  # the asker's verdict; up/down still count every voter
    ]


# ---- privacy ----------------------------------------------------------------------------------------

def _mixed_db(tmp_path: Path) -> Path:
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    up = [("U1", "up")]
    _answered(store, "public channel?", votes=up)
    _answered(store, "private channel?", channel="C0PRIV", channel_type="group", votes=up)
    _answered(store, "group dm?", channel="C0MPIM", channel_type="mpim", votes=up)
    _answered(store, "direct message?", surface="dm", channel="D0DM", channel_type="im", votes=up)
    _answered(store, "assistant panel?", surface="assistant", channel="D0PANEL", channel_type="im", votes=up)
    _answered(store, "slash command in a dm?", surface="command", channel="D0DM2", channel_type=None, votes=up)
    _answered(store, "old bot's channel row?", channel="C0OLD", channel_type=None, votes=up)  # untyped
    store.close()
    return db


def test_feedback_questions_leaves_private_conversations_out_and_says_so(tmp_path: Path):
    db = _mixed_db(tmp_path)
    out = tmp_path / "confirmed.jsonl"
    result = CliRunner().invoke(feedback_group, ["questions", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["question"] for line in out.read_text().splitlines()] == ["public channel?"]
    assert "wrote 1 confirmed question(s)" in result.output
    note = next(line for line in result.output.splitlines() if line.startswith("note: "))
    assert "left out 6 confirmed answer(s)" in note
    assert "3 from DMs or the assistant panel" in note and "2 from private channels or group DMs" in note
    assert "1 from channels logged before the bot recorded" in note and "--include-private" in note

    # stdout stays the question file; the note goes to stderr
    result = CliRunner().invoke(feedback_group, ["questions", "--db", str(db), "--out", "-"])
    assert result.exit_code == 0
    assert [json.loads(line)["question"] for line in result.stdout.splitlines()] == ["public channel?"]
    assert "left out 6" in result.stderr


def test_include_private_is_an_explicit_opt_in(tmp_path: Path):
    db = _mixed_db(tmp_path)
    out = tmp_path / "all.jsonl"
    result = CliRunner().invoke(feedback_group, ["questions", "--db", str(db), "--out", str(out), "--include-private"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 7 and "note:" not in result.output
    left_out: dict[str, int] = {}
    assert export_confirmed(db, tmp_path / "x.jsonl", include_private=True, left_out=left_out) == 7
    assert left_out == {}
    assert export_confirmed(db, tmp_path / "x.jsonl", left_out=left_out) == 1
    assert left_out == {"dm": 3, "private": 2, "untyped": 1}


def test_a_question_asked_in_public_and_in_a_dm_is_kept_with_only_the_public_gold(tmp_path: Path):
    store = FeedbackStore(tmp_path / "f.sqlite3")
    fid = store.record_answer(_answer("how to cache?", "docs:public.md"), surface="mention", channel="C1", user="U1",
                              channel_type="channel")
    store.record_vote(fid, "up", user="U1", channel="C1")
    fid = store.record_answer(_answer("How to cache?", "docs:dm.md"), surface="dm", channel="D1", user="U2",
                              channel_type="im")
    store.record_vote(fid, "up", user="U2", channel="D1")
    [row] = store.confirmed_questions()
    store.close()
    assert row["gold"] == ["docs:public.md"]


# ---- file modes -------------------------------------------------------------------------------------

def test_the_database_the_seen_events_file_and_their_folder_are_private(tmp_path: Path):
    old = os.umask(0o022)  # the usual umask: SQLite alone created 0644 files
    try:
        db = tmp_path / "new" / "deeper" / "feedback.sqlite3"
        store = FeedbackStore(db)
        store.record_question("q", outcome="failed", surface="mention")
        deduper = Deduper(path=seen_path_for(str(db)))
        assert deduper.new_event("Ev1")
        deduper.close()
        store.close()
    finally:
        os.umask(old)
    seen = Path(seen_path_for(str(db)))
    files = [db, seen, Path(f"{db}-journal"), Path(f"{seen}-journal")]
    assert all(p.exists() for p in files)
    assert {str(p.name): _mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "deeper") == 0o700
    assert _mode(tmp_path) == stat.S_IMODE(tmp_path.stat().st_mode)  # an existing folder is not changed


def test_an_existing_world_readable_database_is_made_private_when_opened(tmp_path: Path):
    db = tmp_path / "feedback.sqlite3"
    FeedbackStore(db).close()
    seen = Path(seen_path_for(str(db)))
    Deduper(path=str(seen)).close()
    for p in (db, Path(f"{db}-journal"), seen):
        os.chmod(p, 0o644)
    FeedbackStore(db).close()
    Deduper(path=str(seen)).close()
    assert _mode(db) == 0o600 and _mode(Path(f"{db}-journal")) == 0o600 and _mode(seen) == 0o600
    os.chmod(db, 0o640)  # owner bits are kept, group and others lose theirs
    FeedbackStore(db).close()
    assert _mode(db) == 0o600


# ---- retention --------------------------------------------------------------------------------------

def test_retention_days_defaults_to_a_year_and_zero_keeps_everything():
    assert BotConfig().retention_days == 365
    assert BotConfig(retention_days=0).retention_days == 0
    with pytest.raises(ValueError):
        BotConfig(retention_days=-1)


def test_old_questions_lose_their_text_and_keep_what_the_report_counts(tmp_path: Path):
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    now = time.time()
    old = store.record_answer(Answer("OLDQUESTION how to cache?", "OLDSTANDALONE how do I cache?",
                                     "OLDANSWER " * 800, [Citation(1, "t", "u", "docs:c.md")], "llm", "v1"),
                              surface="mention", channel="C1", user="U1", channel_type="channel", latency_s=1.5)
    store.record_vote(old, "up", user="U1", channel="C1")
    store.record_vote(old, "down", user="U2", channel="C1")
    store.record_question("OLDFAILED secret question", outcome="model_failed", surface="dm", channel="D1",
                          user="U3", failure="model_unavailable", reply="OLDREPLY")
    store._conn.execute("UPDATE answers SET created_at = ?", (now - 400 * DAY_S,))
    recent = store.record_answer(_answer("RECENT question?"), surface="mention", channel="C1", user="U1",
                                 channel_type="channel")
    store._conn.execute("PRAGMA secure_delete = OFF")  # as some SQLite builds default: prune turns it on
    assert store.prune(0) == 0  # 0: keep forever
    assert store.prune(365, now=now) == 2
    assert store.prune(365, now=now) == 0  # nothing left to blank
    rows = {r["id"]: r for r in store.questions()}
    assert rows[recent]["question"] == "RECENT question?" and store.get_answer(recent)["answer"] == "text"
    pruned = rows[old]
    assert (pruned["question"], pruned["standalone_question"]) == ("", None)
    assert store.get_answer(old)["answer"] == ""
    assert (pruned["outcome"], pruned["surface"], pruned["channel_type"], pruned["latency_s"]) == (
        "answered", "mention", "channel", 1.5)
    assert [s["source_id"] for s in pruned["sources"]] == ["docs:c.md"] and (pruned["up"], pruned["down"]) == (1, 1)
    failed = next(r for r in rows.values() if r["outcome"] == "model_failed")
    assert failed["question"] == "" and failed["failure"] == "model_unavailable" and failed["user"] == "U3"
    store.record_vote(recent, "up", user="U1", channel="C1")
    # the old answer, confirmed by its asker, has no text left to search: not in the eval set
    assert [r["question"] for r in store.confirmed_questions()] == ["RECENT question?"]
    store.close()
    raw = db.read_bytes()  # overwritten in the file, not only unlinked from the row
    for text in (b"OLDQUESTION", b"OLDSTANDALONE", b"OLDANSWER", b"OLDFAILED", b"OLDREPLY"):
        assert text not in raw, text
    assert b"RECENT question?" in raw
    assert len(load_questions(str(db))) == 3  # the report still counts every row


def test_the_bots_retention_job_prunes_at_start_and_is_off_at_zero(tmp_path: Path):
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    store.record_question("OLD", outcome="failed", surface="mention")
    store._conn.execute("UPDATE answers SET created_at = created_at - ?", (40 * DAY_S,))
    store.record_question("NEW", outcome="failed", surface="mention")
    store.close()
    assert RetentionJob(db, 0).run_once() == 0 and not RetentionJob(db, 0).enabled
    assert RetentionJob(":memory:", 30).enabled is False
    assert prune_database(tmp_path / "missing.sqlite3", 30) == 0 and not (tmp_path / "missing.sqlite3").exists()

    job = RetentionJob(db, 30, interval_s=3600)
    job.start()
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            conn = sqlite3.connect(db)
            texts = sorted(r[0] for r in conn.execute("SELECT question FROM answers"))
            conn.close()
            if texts == ["", "NEW"]:
                break
            time.sleep(0.05)
        assert texts == ["", "NEW"]
    finally:
        job.stop()  # waits for a run in progress
    assert job._scheduler is None


def test_a_retention_failure_is_logged_not_raised(tmp_path: Path, caplog):
    bad = tmp_path / "garbage.sqlite3"
    bad.write_text("not a database" * 100)
    assert RetentionJob(bad, 30).run_once() is None
    assert "feedback retention failed" in caplog.text


def test_serve_runs_retention_with_the_configured_days(tmp_path: Path, monkeypatch):
    from flytegpt.bot import cli_serve
    from flytegpt.bot.slack import retention

    started: list[tuple[str, float]] = []

    class Recording(RetentionJob):
        def start(self) -> None:
            started.append((self.db_path, self.retention_days))

    monkeypatch.setattr(retention, "RetentionJob", Recording)
    monkeypatch.setattr("flytegpt.bot.serve.serve", lambda *a, **k: None)
    config = tmp_path / "flytegpt.toml"
    config.write_text(f'[bot]\nfeedback_db = "{tmp_path / "f.sqlite3"}"\nretention_days = 30\n')
    result = CliRunner().invoke(cli_serve.serve_cmd, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    assert started == [(str(tmp_path / "f.sqlite3"), 30)]
