"""What the bot does with small talk, and with questions asked while it starts.

Before, "help", a bare mention and a greeting got "I couldn't find this" with closest matches about
Spark and MPI, and each was logged as a knowledge gap; they now get the usage (with a hello for a
greeting), with no search, no 👀 and nothing logged. "@FlyteGPT thanks!" in a thread got a new
set of passages; it now gets a 🤗 reaction and nothing else. A question asked after Socket Mode
connected but before the first index was loaded was told "not ready, try again in a minute" (and
got a 👀); it now waits for the index within its answer's deadline and is answered.

Everything is checked as a Slack user sees it: the real app over Socket Mode against the emulator
(`make_harness`), and for the first load the real `BotServer` of `flytegpt serve`.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.slack_emulator import SlackEmulator
from support.slack_harness import CACHE_Q, tuned

from flytegpt.bot import messages
from flytegpt.bot.serve import BotServer
from flytegpt.bot.slack.addressing import small_talk
from flytegpt.ingest.config import Config, Settings, load_config, sample_config_path

pytestmark = pytest.mark.timeout(120)

DM = "D0DIRECT01"


@pytest.fixture
def harness(make_harness):
    return make_harness()


def _eyes(emu: SlackEmulator, ts: str) -> list[dict]:
    return [r for r in emu.reactions if r["timestamp"] == ts and r["name"] == "eyes"]


def _mention_at_the_end(emu: SlackEmulator, text: str, **kw: Any) -> Any:
    """`hello @FlyteGPT`: the mention after the words (emu.mention puts it first)."""
    msg = emu.post_user_message(f"{text} <@{emu.bot_user_id}>", **kw)
    return emu.send_event({**{k: v for k, v in msg.items() if k != "channel_type"}, "type": "app_mention"})


# --- help, a bare mention, greetings --------------------------------------------------------------------


@pytest.mark.parametrize("text, kind", [
    ("", "help"), ("help", "help"), ("Help!", "help"), ("?", "help"), ("who are you and what can you do?", "help"),
    ("hi", "greeting"), ("hello there!", "greeting"), ("Hey, how are you?", "greeting"), ("hi FlyteGPT", "greeting"),
    ("good morning team", "greeting"), (":wave:", "greeting"),
    ("thanks!", "thanks"), ("thanks, that worked!", "thanks"), ("hello, thanks!", "thanks"), (":pray:", "thanks"),
    # questions stay questions: a greeting before one, "help" with a subject, a thank-you that asks more
    ("hi, how do I cache a task?", None), ("hey team, the cache is broken", None), ("help me with caching", None),
    ("thanks! and how do I do that for map tasks", None), ("why?", None), ("and for map tasks?", None),
])
def test_what_counts_as_small_talk_is_the_whole_message_only(text, kind):
    assert small_talk(text, "FlyteGPT") == kind


def test_help_and_a_bare_mention_get_the_usage_without_a_search(harness):
    emu = harness.emu
    emu.add_channel(DM, "dm", is_im=True)
    asked = [emu.mention("help"), emu.mention(""), emu.mention("who are you and what can you do?")]
    dm = emu.message("help", channel=DM, channel_type="im")
    for d in asked:
        [reply] = harness.wait_answers(thread_ts=d.ts)
        assert "/flytegpt" in reply["text"] and "FlyteGPT" in reply["text"], reply["text"]
        assert "couldn't find" not in reply["text"] and messages.EMPTY_QUESTION not in reply["text"]
    [reply] = harness.wait_answers(channel=DM)
    assert "/flytegpt" in reply["text"]
    harness.idle()
    assert all(_eyes(emu, d.ts) == [] for d in [*asked, dm])
    assert harness.llm.requests == [] and harness.logged_questions() == []  # no search, no knowledge gap
    assert harness.bot.metrics.questions.labels("mention")._value.get() == 0


def test_a_greeting_gets_a_hello_and_the_usage_and_a_greeting_with_a_question_is_answered(harness):
    emu = harness.emu
    emu.add_channel(DM, "dm", is_im=True)
    greetings = [emu.mention("hi"), _mention_at_the_end(emu, "hello")]
    emu.message("hey there :wave:", channel=DM, channel_type="im")
    for d in greetings:
        [reply] = harness.wait_answers(thread_ts=d.ts)
        assert reply["text"].startswith("Hi! 👋") and "/flytegpt" in reply["text"], reply["text"]
    [reply] = harness.wait_answers(channel=DM)
    assert reply["text"].startswith("Hi! 👋")
    cmd = emu.slash_command("hi")
    ack = emu.wait_ack(cmd.envelope_id)
    assert ack.payload["response_type"] == "ephemeral" and ack.payload["text"].startswith("Hi! 👋")
    harness.idle()
    assert all(_eyes(emu, d.ts) == [] for d in greetings)
    assert harness.llm.requests == [] and harness.logged_questions() == []
    assert emu.response_posts[emu.response_id(cmd.response_url)] == []

    # a greeting followed by a real question is a question: searched, answered, 👀, logged
    d = emu.mention("hi, how do I invalidate the cache of a task?")
    [answer] = harness.wait_answers(thread_ts=d.ts)
    assert "cache_version" in answer["text"]
    assert emu.wait_for(lambda: _eyes(emu, d.ts))
    harness.idle()
    [row] = harness.logged_questions()
    assert row["question"] == "hi, how do I invalidate the cache of a task?" and row["outcome"] == "answered"


def test_usage_replies_count_against_the_turn_down_limit(make_harness):
    """Each usage reply is a message in the channel: one user cannot make the bot post them without end."""
    harness = make_harness(bot={"user_rate_limit": 2})
    emu = harness.emu
    spam = [emu.mention("hi", user="U0SPAM") for _ in range(4)]
    emu.wait_for(lambda: len([d for d in spam if harness.answers(thread_ts=d.ts)]) + len(emu.ephemerals) == 4)
    harness.idle()
    assert len([d for d in spam if harness.answers(thread_ts=d.ts)]) == 2
    assert {e["user"] for e in emu.ephemerals} == {"U0SPAM"}
    d = emu.mention(CACHE_Q, user="U0SPAM")  # their questions are untouched
    [answer] = harness.wait_answers(thread_ts=d.ts)
    assert "cache_version" in answer["text"]


# --- a thank-you said to the bot ----------------------------------------------------------------------


def test_a_thank_you_mentioning_the_bot_gets_a_reaction_not_an_answer(harness):
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    asked = len(harness.llm.requests)
    thanks = emu.mention("thanks!", thread_ts=first.ts, also_message=True)  # app_mention and message both
    emu.wait_for(lambda: [r for r in emu.reactions if r["timestamp"] == thanks.ts])
    harness.idle()
    assert [r["name"] for r in emu.reactions if r["timestamp"] == thanks.ts] == [messages.THANKS_REACTION]
    assert len(harness.answers(thread_ts=first.ts)) == 1 and len(harness.llm.requests) == asked
    assert [row["question"] for row in harness.logged_questions()] == [CACHE_Q]

    # without a mention a thank-you stays between people: no reaction, no answer
    plain = emu.message("thanks, that worked!", thread_ts=first.ts)
    emu.wait_ack(plain.envelope_id)
    harness.idle()
    assert [r for r in emu.reactions if r["timestamp"] == plain.ts] == []
    assert len(harness.answers(thread_ts=first.ts)) == 1
    # a thank-you that asks more, with a mention, is a question
    more = emu.mention("thanks! and how do I do that for map tasks", thread_ts=first.ts)
    harness.wait_answers(2, thread_ts=first.ts)
    assert [r["name"] for r in emu.reactions if r["timestamp"] == more.ts] == ["eyes"]


# --- questions asked while the first index loads ------------------------------------------------------


class _SlowFirstLoad:
    """The real query embedder, whose warm-up at the first load waits for `gate`: the model
    loading from a cold cache (9.5-10.9 s when measured), for as long as a test needs."""

    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self._inner, self._gate = inner, gate

    def embed_query(self, text: str) -> Any:
        if text == "warm-up":
            self._gate.wait(60)
        return self._inner.embed_query(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _serve_config(store: Path, tmp_path: Path, deadline_s: float) -> Config:
    base = load_config(sample_config_path()).with_store(str(store))
    return tuned(base, feedback_db=tmp_path / "fb.sqlite3", answer={"deadline_s": deadline_s})


def _server(emu: SlackEmulator, config: Config, embedder: Any) -> BotServer:
    settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                        SLACK_API_URL=emu.api_url)
    return BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)


def _ready(server: BotServer) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _logged(config: Config) -> list[dict]:
    from flytegpt.bot.slack.feedback import FeedbackStore

    store = FeedbackStore(config.bot.feedback_db)
    try:
        return store.questions()
    finally:
        store.close()


def test_a_question_asked_while_the_first_index_loads_is_answered_once_it_is_loaded(built_store, embedder,
                                                                                     tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    deadline_s = 6.0
    config = _serve_config(store, tmp_path, deadline_s)
    gate = threading.Event()
    with SlackEmulator() as emu:
        server = _server(emu, config, _SlowFirstLoad(embedder, gate))
        server.start()
        try:
            emu.wait_connected()
            assert _ready(server) == 503  # connected, the index still loading
            # asked now and the load takes longer than its deadline: told it is not ready, with no 👀
            late = emu.mention(CACHE_Q)
            emu.wait_ack(late.envelope_id)
            time.sleep(1.0)
            assert emu.bot_messages(thread_ts=late.ts) == [] and emu.reactions == []  # waiting, not turned away
            [notice] = emu.wait_for(lambda: emu.bot_messages(thread_ts=late.ts), timeout=deadline_s + 10)
            assert notice["text"] == messages.INDEX_NOT_READY
            assert emu.reactions == []

            # asked now and the index arrives within the deadline: answered, with its 👀
            asked = emu.mention("how do I invalidate the cache of a task?")
            cmd = emu.slash_command("how do I invalidate the cache?")
            assert emu.wait_ack(cmd.envelope_id).payload["text"] == messages.LOOKING
            emu.wait_ack(asked.envelope_id)
            time.sleep(0.3)
            assert emu.bot_messages(thread_ts=asked.ts) == []
            gate.set()  # the model is loaded: the index is served
            [answer] = emu.wait_for(lambda: emu.bot_messages(thread_ts=asked.ts), timeout=deadline_s + 10)
            assert "cache" in answer["text"].lower() and "not ready" not in answer["text"]
            assert emu.wait_for(lambda: _eyes(emu, asked.ts))
            [post] = emu.wait_for(lambda: emu.response_posts[emu.response_id(cmd.response_url)], timeout=10)
            assert "cache" in post["text"].lower() and "not ready" not in post["text"]
            assert _ready(server) == 200
            assert _eyes(emu, late.ts) == [] and len(emu.bot_messages(thread_ts=late.ts)) == 1
            emu.wait_for(lambda: len(_logged(config)) == 3)
        finally:
            gate.set()
            server.stop()
        assert emu.violations == []
    rows = {row["question"]: (row["outcome"], row["failure"]) for row in _logged(config)}
    assert rows[CACHE_Q] == ("failed", "index_not_ready")
    assert rows["how do I invalidate the cache of a task?"][0] == "answered"
    assert rows["how do I invalidate the cache?"][0] == "answered"


def test_with_no_index_in_the_store_a_question_is_told_at_once_without_eyes(embedder, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = _serve_config(store, tmp_path, 30.0)
    with SlackEmulator() as emu:
        server = _server(emu, config, embedder)
        server.start()
        try:
            emu.wait_connected()
            d = emu.mention(CACHE_Q)
            started = time.monotonic()
            [notice] = emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=20)
            assert notice["text"] == messages.INDEX_NOT_READY
            assert time.monotonic() - started < 15  # not after the 30 s deadline: there is nothing to wait for
            time.sleep(0.5)
            assert emu.reactions == []
        finally:
            server.stop()


def test_a_question_waiting_for_the_index_is_told_when_the_bot_stops(built_store, embedder, tmp_path):
    """SIGTERM while a question waits for the first index: its asker hears back, not silence."""
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    config = _serve_config(store, tmp_path, 60.0)
    gate = threading.Event()
    with SlackEmulator() as emu:
        server = _server(emu, config, _SlowFirstLoad(embedder, gate))
        server.start()
        try:
            emu.wait_connected()
            d = emu.mention(CACHE_Q)
            emu.wait_ack(d.envelope_id)
            time.sleep(0.5)
            server.stop()
            [notice] = emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=10)
            assert notice["text"] in (messages.INDEX_NOT_READY, messages.RESTARTED)
            assert emu.reactions == []
        finally:
            gate.set()
            server.stop()
