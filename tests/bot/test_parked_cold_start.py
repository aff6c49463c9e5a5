"""Questions asked while the first index loads, once it is served.

A cold start (the embedding model loading from a cold cache, ~14 s) with 50 questions asked
meanwhile queued them all at once when the index arrived: 14 mentions and the slash command were
told "I'm answering a lot of questions right now" although an offline answer takes 40 ms, and each
waiting question held a timer thread of its own (74 threads at peak). Now they go to the answer
pool in the order asked, each as soon as there is room, within its deadline; one thread waits
for all of them.

Checked as a Slack user sees it: the real `BotServer` of `flytegpt serve` (real app, real offline
answerer, real index) against the Slack emulator, the first load held as in
tests/bot/test_slack_small_talk_and_first_load.py.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.slack_emulator import SlackEmulator
from support.slack_harness import tuned

from flytegpt.bot import messages
from flytegpt.bot.serve import BotServer
from flytegpt.ingest.config import Config, Settings, load_config, sample_config_path

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _routing_log(caplog: pytest.LogCaptureFixture) -> None:
    """The routing's info lines ("question waits for the first index") are what `_waiting` reads."""
    caplog.set_level(logging.INFO, logger="flytegpt.bot.slack.routing")


class _HeldEmbedder:
    """The real query embedder. Its warm-up at the first load waits for `first_load` (the model
    loading from a cold cache, for as long as a test needs); a question's embedding waits for
    `answers` (a slow answer holding its worker, so the answer pool stays full)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.first_load, self.answers = threading.Event(), threading.Event()
        self.answers.set()

    def embed_query(self, text: str) -> Any:
        (self.first_load if text == "warm-up" else self.answers).wait(60)
        return self._inner.embed_query(text)

    def release(self) -> None:
        self.first_load.set()
        self.answers.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _config(built_store: Path, tmp_path: Path, *, deadline_s: float, **bot: Any) -> Config:
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    base = load_config(sample_config_path()).with_store(str(store))
    return tuned(base, feedback_db=tmp_path / "fb.sqlite3", bot=bot, answer={"deadline_s": deadline_s})


def _server(emu: SlackEmulator, config: Config, embedder: Any) -> BotServer:
    settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                        SLACK_API_URL=emu.api_url)
    return BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)


def _eyes(emu: SlackEmulator, ts: str) -> list[dict]:
    return [r for r in emu.reactions if r["timestamp"] == ts and r["name"] == "eyes"]


def _logged(config: Config) -> list[dict]:
    from flytegpt.bot.slack.feedback import FeedbackStore

    store = FeedbackStore(config.bot.feedback_db)
    try:
        return store.questions()
    finally:
        store.close()


def _ask(emu: SlackEmulator, first: int, n: int) -> list[Any]:
    """`n` mentions from `n` different people (each has the per-user limits to themselves)."""
    asked = [emu.mention(f"how do I cache a task? (asker {k})", user=f"U0Q{k:04d}") for k in range(first, first + n)]
    for d in asked:
        emu.wait_ack(d.envelope_id)
    return asked


def _waiting(emu: SlackEmulator, caplog: pytest.LogCaptureFixture, n: int) -> None:
    """Until `n` questions are waiting, as the bot's log says (Bolt acks an event before its
    listener goes on to dispatch it: an ack alone does not say the question is parked yet)."""
    emu.wait_for(lambda: sum(r.getMessage() == "question waits for the first index"
                             for r in caplog.records) >= n, timeout=10)


def _split(emu: SlackEmulator, asked: list[Any]) -> tuple[list[Any], Any]:
    """(the questions in the answer pool: they have their 👀, the one waiting for room).
    Which of three asked at once is the third is the order the bot received them in."""
    emu.wait_for(lambda: sum(bool(_eyes(emu, d.ts)) for d in asked) == len(asked) - 1)
    time.sleep(0.3)
    [waiting] = [d for d in asked if not _eyes(emu, d.ts)]
    return [d for d in asked if d is not waiting], waiting


def test_a_cold_start_backlog_is_answered_in_a_small_pool_without_busy_notices(built_store, embedder, tmp_path,
                                                                                caplog):
    """50 mentions and a /flytegpt while the first index loads, with 2 workers and 8 queue places:
    each is answered once, none is told the bot is busy; waiting costs no thread per question."""
    config = _config(built_store, tmp_path, deadline_s=60.0, workers=2, queue_size=8)
    held = _HeldEmbedder(embedder)
    # every event is acked at once; the emulator's redelivery timers would be threads of this process
    with SlackEmulator(redeliver_after=None) as emu:
        server = _server(emu, config, held)
        server.start()
        try:
            emu.wait_connected()
            asked = _ask(emu, 0, 10)
            _waiting(emu, caplog, 10)
            threads_at_10 = threading.active_count()
            asked += _ask(emu, 10, 40)
            cmd = emu.slash_command("how do I cache a task?", user="U0CMD01")
            assert emu.wait_ack(cmd.envelope_id).payload["text"] == messages.LOOKING
            _waiting(emu, caplog, 51)
            threads_at_50 = threading.active_count()
            # 40 more questions waiting: a few pool threads at most, not one thread each
            assert threads_at_50 - threads_at_10 <= 8, (threads_at_10, threads_at_50)
            assert emu.bot_messages() == [] and emu.reactions == []  # all waiting, none turned away

            held.first_load.set()  # the model is loaded: the index is served
            for d in asked:
                emu.wait_for(lambda d=d: emu.bot_messages(thread_ts=d.ts), timeout=60)
            [post] = emu.wait_for(lambda: emu.response_posts[emu.response_id(cmd.response_url)], timeout=30)
            assert "cache" in post["text"].lower() and post["text"] != messages.BUSY
            time.sleep(0.5)  # nothing more comes
            for d in asked:
                [answer] = emu.bot_messages(thread_ts=d.ts)
                assert answer["text"] not in (messages.BUSY, messages.INDEX_NOT_READY)
                assert "cache" in answer["text"].lower()
                assert len(emu.wait_for(lambda d=d: _eyes(emu, d.ts))) == 1
            assert len(emu.response_posts[emu.response_id(cmd.response_url)]) == 1
            emu.wait_for(lambda: len(_logged(config)) == 51, timeout=10)
        finally:
            held.release()
            server.stop()
        assert emu.violations == []
    outcomes = {(row["outcome"], row["failure"]) for row in _logged(config)}
    assert outcomes == {("answered", None)}, outcomes


def test_a_question_whose_deadline_passes_behind_a_full_queue_gets_the_busy_notice(built_store, embedder,
                                                                                    tmp_path, caplog):
    """1 worker, 1 queue place, answers held: the third question waits for room, and when its
    deadline passes first it is told the bot is busy (no 👀, its question given back); the two in
    the pool are answered (or told by their own job), once each."""
    deadline_s = 4.0
    config = _config(built_store, tmp_path, deadline_s=deadline_s, workers=1, queue_size=1)
    held = _HeldEmbedder(embedder)
    held.answers.clear()
    with SlackEmulator() as emu:
        server = _server(emu, config, held)
        server.start()
        try:
            emu.wait_connected()
            asked = _ask(emu, 0, 3)
            _waiting(emu, caplog, 3)
            held.first_load.set()
            in_pool, waiting = _split(emu, asked)  # one answer held on the worker, one queued
            assert emu.bot_messages() == []  # the third waits for room, not turned away
            [notice] = emu.wait_for(lambda: emu.bot_messages(thread_ts=waiting.ts), timeout=deadline_s + 10)
            assert notice["text"] == messages.BUSY
            assert _eyes(emu, waiting.ts) == []
            held.answers.set()
            for d in in_pool:
                emu.wait_for(lambda d=d: emu.bot_messages(thread_ts=d.ts), timeout=30)
            time.sleep(0.5)
            assert [len(emu.bot_messages(thread_ts=d.ts)) for d in asked] == [1, 1, 1]
            emu.wait_for(lambda: len(_logged(config)) == 3, timeout=10)
        finally:
            held.release()
            server.stop()
        assert emu.violations == []
    rows = {row["question"]: (row["outcome"], row["failure"]) for row in _logged(config)}
    k = asked.index(waiting)
    assert rows[f"how do I cache a task? (asker {k})"] == ("failed", "queue_timeout")


def test_a_question_waiting_for_room_is_told_when_the_bot_stops(built_store, embedder, tmp_path, caplog):
    """SIGTERM while one question waits for room behind a full pool: every asker hears back once."""
    config = _config(built_store, tmp_path, deadline_s=60.0, workers=1, queue_size=1, shutdown_grace_s=1.0)
    held = _HeldEmbedder(embedder)
    held.answers.clear()
    with SlackEmulator() as emu:
        server = _server(emu, config, held)
        server.start()
        try:
            emu.wait_connected()
            asked = _ask(emu, 0, 3)
            _waiting(emu, caplog, 3)
            held.first_load.set()
            _, waiting = _split(emu, asked)
            server.stop()
            for d in asked:
                [notice] = emu.wait_for(lambda d=d: emu.bot_messages(thread_ts=d.ts), timeout=10)
                assert notice["text"] == messages.RESTARTED
            assert _eyes(emu, waiting.ts) == []
            held.answers.set()  # the held answer finishes after its asker was told: not posted
            time.sleep(1.0)
            assert [len(emu.bot_messages(thread_ts=d.ts)) for d in asked] == [1, 1, 1]
        finally:
            held.release()
            server.stop()
    rows = {row["question"]: (row["outcome"], row["failure"]) for row in _logged(config)}
    assert rows[f"how do I cache a task? (asker {asked.index(waiting)})"] == ("failed", "shutdown")
