"""The weekly report on flytekit's local executor: a Deck with the charts, the page in the store."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from flytegpt.bot.answering import Citation
from flytegpt.bot.answering.types import Answer
from flytegpt.bot.slack.feedback import FeedbackStore, export_snapshot

pytestmark = pytest.mark.slow  # embeds real text


@pytest.fixture()
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")
    monkeypatch.setenv("HOME", str(tmp_path))


def _store(tmp: Path, embedder) -> str:
    from flytegpt.ingest.artifact import ModelInfo, publish, write_version
    from flytegpt.ingest.models import Chunk

    store = str(tmp / "store")
    texts = {"docs:caching.md": "Caching: cache=True and cache_version on a task",
             "docs:registry.md": "Container registries: push the image to a registry"}
    chunks = [Chunk(sid, "docs", sid.split(":")[1], f"https://d/{sid}", t, t) for sid, t in texts.items()]
    publish(store, write_version(store, chunks, embedder.embed_documents(list(texts.values())),
                                 ModelInfo(embedder.model_id, embedder.dimension)))
    return store


def _db(path: Path) -> Path:
    s = FeedbackStore(path)
    try:
        a = Answer("How do I cache a task?", "How do I cache a task?", "Use cache=True [1].",
                   [Citation(1, "Caching", "https://d/caching", "docs:caching.md")], "llm", "v")
        s.record_answer(a, surface="mention", channel="C01ASK001", thread_ts="1764500000.000100", user="U0ASKER1",
                        latency_s=1.5, channel_type="channel")
        for q in ("How do I use a private docker registry?", "Can I pull images from a private registry?"):
            s.record_answer(Answer(q, q, "I couldn't find this.", [], "not_found", "v"), surface="mention",
                            channel="C01ASK001", thread_ts="1764500000.000200", user="U0ASKER2", latency_s=0.5,
                            channel_type="channel")
    finally:
        s.close()
    return path


def test_weekly_report_makes_a_deck_and_writes_the_page_next_to_the_index(local: None, tmp_path: Path,
                                                                          embedder) -> None:
    from flytekit.core.context_manager import FlyteContextManager

    from flytegpt.flyte.report_wf import DECK_NAME, report_wf

    store = _store(tmp_path, embedder)
    live = _db(tmp_path / "bot" / "feedback.sqlite3")
    snapshot = tmp_path / "snapshots" / "feedback.sqlite3"
    export_snapshot(live, str(snapshot))  # how the database reaches the task
    config = tmp_path / "flytegpt.toml"
    config.write_text(f'[bot]\nfeedback_snapshot = "{snapshot}"\n'
                      '[embeddings]\nbackend = "torch"\nprecision = "fp32"\ndevice = "cpu"\n')
    started = time.time()
    path = report_wf(config_path=str(config), store=store, db="", since="7d")

    page = Path(path).read_text(encoding="utf-8")
    assert Path(path).parent == Path(store) / "reports" and (Path(store) / "reports" / "latest.html").read_text() == page
    assert 'data-chart="outcomes-per-day"' in page and "U0ASKER" not in page
    assert "1 of the 2 sources in the published index were never cited" in page

    sandbox = Path(FlyteContextManager.current_context().file_access.local_sandbox_dir)
    decks = [p for p in sandbox.rglob("deck.html") if p.stat().st_mtime >= started - 1]
    ours = [p.read_text(encoding="utf-8") for p in decks]
    ours = [d for d in ours if DECK_NAME in d]
    assert ours, f"no deck named {DECK_NAME!r} among {decks}"
    deck = ours[-1]
    for chart in ("outcomes-per-day", "gap-topics", "most-cited", "chunks-per-version", "latency-percentiles"):
        assert f'data-chart="{chart}"' in deck
    assert "private docker registry" in deck  # the gap topic


def test_weekly_report_without_a_database_says_how_to_provide_one(local: None, tmp_path: Path) -> None:
    from flytegpt.flyte.report_wf import report_wf

    config = tmp_path / "flytegpt.toml"
    config.write_text("[bot]\n")
    with pytest.raises(Exception, match="feedback_snapshot"):
        report_wf(config_path=str(config), store=str(tmp_path / "store"), db="", since="7d")
    assert not os.path.exists(tmp_path / "store" / "reports")


def test_a_snapshot_the_bot_never_wrote_names_both_configs(local: None, tmp_path: Path) -> None:
    """The bot writes its snapshot where its own config says, the task reads where the
    registered config says: when nothing is there, the error says the two must agree."""
    from flytegpt.flyte.report_wf import report_wf

    config = tmp_path / "flytegpt.toml"
    missing = tmp_path / "snapshots" / "feedback.sqlite3"
    config.write_text(f'[bot]\nfeedback_snapshot = "{missing}"\n')
    with pytest.raises(Exception, match="feedback database not found") as e:
        report_wf(config_path=str(config), store=str(tmp_path / "store"), db="", since="7d")
    assert str(missing) in str(e.value) and "its own config (its ConfigMap)" in str(e.value)
    assert not os.path.exists(tmp_path / "store" / "reports")


def test_the_launch_plan_runs_weekly_with_fixed_inputs() -> None:
    from flytegpt.flyte.report_wf import REPORT_CRON, weekly_report, weekly_report_lp

    assert weekly_report.enable_deck
    assert weekly_report_lp.name == "weekly_report"
    assert weekly_report_lp.schedule.cron_schedule.schedule == REPORT_CRON == "0 6 * * 1"
    fixed = {k: v.scalar.primitive.string_value for k, v in weekly_report_lp.fixed_inputs.literals.items()}
    assert set(fixed) == {"config_path", "store", "db", "since"} and fixed["since"] == "7d"


def _not_a_bot_database(tmp: Path, kind: str) -> tuple[bytes, str]:
    """A half-written snapshot, another program's SQLite file, random bytes; and what the run says."""
    import sqlite3

    if kind == "zero-byte":
        return b"", "is empty (0 bytes), not a FlyteGPT feedback database"
    if kind == "other-sqlite":
        other = tmp / "other-program.sqlite3"
        conn = sqlite3.connect(other)
        conn.execute("CREATE TABLE recipes (name TEXT)")
        conn.commit()
        conn.close()
        return other.read_bytes(), "is not a FlyteGPT feedback database (no answers table)"
    return bytes((i * 7919 + 13) % 251 for i in range(4096)), "is not an SQLite database: file is not a database"


@pytest.fixture()
def memory_fs():
    import fsspec

    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/report-wf-test"):
        fs.rm("/report-wf-test", recursive=True)


@pytest.mark.parametrize("where", ["local", "url"])
@pytest.mark.parametrize("kind", ["zero-byte", "other-sqlite", "corrupt"])
def test_weekly_report_refuses_a_database_the_bot_never_wrote_and_keeps_the_last_report(
        local: None, tmp_path: Path, memory_fs, kind: str, where: str) -> None:
    from flytegpt.flyte.report_wf import report_wf

    data, reason = _not_a_bot_database(tmp_path, kind)
    if where == "local":
        db = str(tmp_path / "snapshot.sqlite3")
        Path(db).write_bytes(data)
    else:
        memory_fs.pipe_file("/report-wf-test/feedback.sqlite3", data)
        db = "memory://report-wf-test/feedback.sqlite3"
    store = tmp_path / "store"
    (store / "reports").mkdir(parents=True)
    (store / "reports" / "latest.html").write_text("last week's report")
    config = tmp_path / "flytegpt.toml"
    config.write_text("[bot]\n")
    with pytest.raises(ValueError, match=re.escape(f"{db} {reason}")) as e:
        report_wf(config_path=str(config), store=str(store), db=db, since="7d")
    assert "flytegpt-report-" not in str(e.value)  # the user's database, not a temporary copy
    assert os.listdir(store / "reports") == ["latest.html"]
    assert (store / "reports" / "latest.html").read_text() == "last week's report"


@pytest.mark.parametrize("kind", ["zero-byte", "other-sqlite", "corrupt"])
def test_the_local_runner_prints_one_error_and_writes_no_report(local: None, tmp_path: Path, memory_fs,
                                                                kind: str) -> None:
    from click.testing import CliRunner

    from flytegpt.flyte.__main__ import main

    data, reason = _not_a_bot_database(tmp_path, kind)
    memory_fs.pipe_file("/report-wf-test/feedback.sqlite3", data)
    db = "memory://report-wf-test/feedback.sqlite3"
    config = tmp_path / "flytegpt.toml"
    config.write_text("[bot]\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["report_wf", "--config_path", str(config), "--store", str(store),
                                       "--db", db])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a click error, not an exception escaping
    assert result.output.startswith("Error: ") and f"{db} {reason}" in result.output
    assert "Traceback" not in result.output
    assert not (store / "reports").exists()


def test_weekly_report_of_a_bot_database_without_questions_in_the_period_is_written(local: None,
                                                                                   tmp_path: Path) -> None:
    from flytegpt.flyte.report_wf import report_wf

    live = tmp_path / "bot" / "feedback.sqlite3"
    store_db = FeedbackStore(live)
    try:  # one question, a month ago: outside the last 7 days
        store_db.record_question("an old question", outcome="failed", surface="mention", channel="C01ASK001",
                                 channel_type="channel")
        store_db._conn.execute("UPDATE answers SET created_at = created_at - 30 * 86400")
    finally:
        store_db.close()
    snapshot = tmp_path / "snapshots" / "feedback.sqlite3"
    export_snapshot(live, str(snapshot))
    store = tmp_path / "store"
    (store / "reports").mkdir(parents=True)
    (store / "reports" / "latest.html").write_text("last week's report")
    config = tmp_path / "flytegpt.toml"
    config.write_text("[bot]\n")
    path = report_wf(config_path=str(config), store=str(store), db=str(snapshot), since="7d")
    page = (store / "reports" / "latest.html").read_text(encoding="utf-8")
    assert Path(path).read_text(encoding="utf-8") == page and page.startswith("<!")
    assert '<div class="card"><b>0</b>questions</div>' in page and "an old question" not in page
