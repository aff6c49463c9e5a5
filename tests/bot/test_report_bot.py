"""The running bot logs what the report needs for every question it handles, and the report reads it.

The real Bolt app over Socket Mode against the Slack emulator, real answering over the
sample corpus, the OpenAI-compatible stand-in as the model.
"""

from __future__ import annotations

import pytest
from support.openai_server import Fail
from support.slack_harness import CACHE_Q, BotHarness, build_sample_index, tuned

from flytegpt.bot.index_holder import IndexHolder
from flytegpt.bot.report import ReportOptions, build_report, render_page
from flytegpt.bot.report.data import PrivacyFilter
from flytegpt.bot.slack import blocks
from flytegpt.bot.slack.feedback import FeedbackStore

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

OFF_TOPIC = "Which spices go into a traditional lasagna recipe?"
FAILING = "How do I run a map task over a list of files?"


@pytest.fixture()
def harness(tmp_path, embedder):
    from flytegpt.ingest.search import HybridSearcher

    config = build_sample_index(tmp_path / "store", embedder)
    searcher = HybridSearcher.open(config, embedder=embedder)
    h = BotHarness(tuned(config, feedback_db=tmp_path / "feedback.sqlite3"), IndexHolder(searcher)).start()
    yield h
    h.stop()
    assert h.emu.violations == []


def test_every_question_is_logged_with_outcome_surface_latency_version_sources_and_thread(harness, embedder):
    emu = harness.emu
    version = harness.holder.version
    asked = emu.mention(CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=asked.ts)
    harness.idle()  # the answer is stored right after it is posted
    down = [e for e in blocks_of(answer, "actions")[0]["elements"] if e["action_id"] == blocks.ACTION_FEEDBACK_DOWN]
    click = emu.block_action(blocks.ACTION_FEEDBACK_DOWN, down[0]["value"], message=answer, user="U0VOTER")
    emu.wait_ack(click.envelope_id)

    lost = emu.mention(OFF_TOPIC)
    harness.wait_answers(thread_ts=lost.ts)
    emu.slash_command("how do I invalidate the cache?")
    emu.add_channel("D0DIRECT01", "dm", is_im=True)
    emu.message(CACHE_Q, channel="D0DIRECT01", channel_type="im")
    harness.wait_answers(channel="D0DIRECT01")
    harness.idle()
    harness.llm.script(Fail(500), Fail(500))  # the model is down for the last question
    failed = emu.mention(FAILING)
    harness.wait_answers(thread_ts=failed.ts)
    harness.idle()

    store = FeedbackStore(harness.config.bot.feedback_db)
    try:
        logged = store.questions()
    finally:
        store.close()
    assert len(logged) == 5
    rows = {(r["question"], r["surface"]): r for r in logged}
    answered = rows[CACHE_Q, "mention"]
    assert rows[CACHE_Q, "dm"]["channel"] == "D0DIRECT01" and rows[CACHE_Q, "dm"]["outcome"] == "answered"
    assert answered["outcome"] == "answered" and answered["index_version"] == version
    assert answered["channel"] == "C0GENERAL" and answered["latency_s"] > 0 and answered["down"] == 1
    assert answered["permalink"] == f"https://emu.slack.com/archives/C0GENERAL/p{asked.ts.replace('.', '')}"
    assert any(s["source_id"] for s in answered["sources"])
    assert rows[OFF_TOPIC, "mention"]["outcome"] == "not_found" and rows[OFF_TOPIC, "mention"]["index_version"] == version
    slash = rows["how do I invalidate the cache?", "command"]
    assert slash["surface"] == "command" and slash["outcome"] == "answered" and slash["permalink"] is None
    failed_row = rows[FAILING, "mention"]
    assert failed_row["outcome"] == "model_failed" and failed_row["failure"] == "model_unavailable"
    assert failed_row["latency_s"] > 0 and failed_row["sources"]  # the sources offered instead of an answer
    assert failed_row["index_version"] == version
    assert failed_row["permalink"].endswith(f"p{failed.ts.replace('.', '')}")

    report = build_report(harness.config.bot.feedback_db, store=harness.config.index.store,
                          options=ReportOptions(privacy=PrivacyFilter(None, dms=False)), embedder=embedder)
    assert report.totals["questions"] == 4 and report.left_out["dm"] == 1  # the DM is private
    assert (report.totals["answered"], report.totals["not_found"], report.totals["model_failed"]) == (2, 1, 1)
    assert {q["question"] for t in report.topics for q in t.questions} == {CACHE_Q, OFF_TOPIC}
    page = render_page(report)
    assert "U0USER" not in page and "U0VOTER" not in page
    assert f"p{lost.ts.replace('.', '')}" in page  # the gap question links to its thread


def blocks_of(msg: dict, kind: str) -> list[dict]:
    return [b for b in msg.get("blocks", []) if b["type"] == kind]


def test_a_question_cut_off_by_a_shutdown_is_logged_as_failed(harness):
    import time

    from support.openai_server import Hang

    from flytegpt.bot.slack.shutdown import drain

    harness.llm.script(Hang(seconds=60))
    asked = harness.emu.mention(CACHE_Q)
    harness.emu.wait_for(lambda: harness.llm.requests, timeout=30)  # stuck with the model
    assert drain(harness.bot, time.monotonic() + 0.5) is False
    [notice] = harness.wait_answers(thread_ts=asked.ts)
    store = FeedbackStore(harness.config.bot.feedback_db)
    try:
        [row] = store.questions()
    finally:
        store.close()
    assert (row["question"], row["outcome"], row["failure"]) == (CACHE_Q, "failed", "shutdown")
    assert row["latency_s"] > 0 and row["index_version"] == harness.holder.version
    harness.llm.close()  # the model gives up: the job's own failure comes after the shutdown's notice
    failures = harness.bot.metrics.failures
    harness.emu.wait_for(lambda: sum(failures.labels(k)._value.get() for k in ("model_unavailable", "error")) >= 1,
                         timeout=30)
    harness.idle()
    store = FeedbackStore(harness.config.bot.feedback_db)
    try:
        assert len(store.questions()) == 1  # logged once
    finally:
        store.close()


def test_questions_turned_away_by_the_rate_limit_are_logged(tmp_path, embedder):
    from flytegpt.ingest.search import HybridSearcher

    config = build_sample_index(tmp_path / "store", embedder)
    searcher = HybridSearcher.open(config, embedder=embedder)
    config = tuned(config, feedback_db=tmp_path / "feedback.sqlite3", bot={"user_rate_limit": 1})
    h = BotHarness(config, IndexHolder(searcher)).start()
    try:
        first = h.emu.mention(CACHE_Q)
        h.wait_answers(thread_ts=first.ts)
        second = h.emu.mention(OFF_TOPIC)  # the same user again within the minute
        h.emu.wait_ack(second.envelope_id)
        h.emu.wait_for(lambda: h.bot.metrics.rate_limited._value.get() == 1)
        h.idle()
    finally:
        h.stop()
    store = FeedbackStore(config.bot.feedback_db)
    try:
        rows = {r["question"]: r for r in store.questions()}
    finally:
        store.close()
    assert rows[CACHE_Q]["outcome"] == "answered"
    assert (rows[OFF_TOPIC]["outcome"], rows[OFF_TOPIC]["failure"]) == ("failed", "rate_limited")
    assert rows[OFF_TOPIC]["surface"] == "mention"
