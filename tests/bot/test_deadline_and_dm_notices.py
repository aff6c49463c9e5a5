"""The answer's deadline counts from the question's arrival, and a DM's notices go where its answer goes.

`[answer] deadline_s` used to start when a worker picked a question up, so with a slow model and a
queue the last askers waited minutes for an answer. Now a question that waited gets what is left
of its deadline, and one whose deadline passed while it waited gets the busy notice ("ask again in
a minute") at once, without a search or a model call.

A DM's streamed answer is a thread reply under the question, but the busy, apology and restart
notices (and the rate-limit ones) were posted at the DM's top level, where a later top-level
follow-up read them as earlier answers. Now every reply to a DM question goes to the answer's
thread, and no notice is read back as an answer (in a DM, a channel thread or the panel).

Real pieces: slack-bolt over Socket Mode, the pools, the answer job, the Answerer with ChatOpenAI.
Stand-ins: the Slack emulator and the OpenAI-compatible server (a slow model writes a piece every
GAP seconds, or is held on an Event, so the outcomes here do not depend on the machine's speed).
"""

from __future__ import annotations

import threading
import time

import pytest
from slack_sdk import WebClient
from support.openai_server import Fail
from support.slack_emulator import SlackEmulator
from support.slack_harness import ANSWER, CACHE_Q, held_reply, llm_reply

from flytegpt.bot import messages
from flytegpt.bot.answering import Turn
from flytegpt.bot.answering import prompts as answer_prompts
from flytegpt.bot.slack import blocks
from flytegpt.bot.slack.history import ThreadHistory
from flytegpt.bot.slack.shutdown import drain

pytestmark = pytest.mark.timeout(120)

DM = "D0DIRECT01"
APOLOGY_START = "Sorry, I couldn't write an answer"


def _finished(h, thread_ts: str, n: int = 1, timeout: float = 30.0) -> list[dict]:
    """The bot's messages in a thread once `n` of them exist and none is still streaming."""
    return h.emu.wait_for(lambda: (m := h.answers(thread_ts=thread_ts)) and len(m) >= n
                          and not any(x.get("streaming") for x in m) and m, timeout)


def _replied_at(emu: SlackEmulator, thread_ts: str) -> float:
    """When the bot's last write to a thread reached Slack (time.monotonic(), as the test's clock)."""
    mine = {m["ts"] for m in emu.bot_messages(thread_ts=thread_ts)}
    return max(c.at for c in emu.calls
               if (c.method in ("chat.postMessage", "chat.startStream") and c.args.get("thread_ts") == thread_ts)
               or (c.method in ("chat.appendStream", "chat.stopStream", "chat.update") and c.args.get("ts") in mine))


def _top_level(emu: SlackEmulator, channel: str) -> list[dict]:
    return [m for m in emu.bot_messages(channel=channel) if not m.get("thread_ts")]


# --- the deadline counts from the question's arrival -------------------------------------------


def test_a_slow_model_with_a_backlog_answers_nobody_past_the_deadline_from_arrival(make_harness):
    """The soak's slow model (a piece every GAP s) and a queue, one worker: the asker whose question
    the worker took gets what the model wrote within the deadline, with a note; the ones behind,
    whose deadline passed while they waited, get the busy notice at once. Nobody's reply comes
    later than the deadline from their question (plus one piece's wait and some slack). Before,
    each waited for the answers ahead and then had the whole deadline again (the fourth reply came
    after 4 x (DEADLINE + GAP) s), and an answer ended at its deadline still read the rest of the
    model's reply before the worker was free."""
    deadline, gap = 3.0, 2.0
    h = make_harness(bot={"streaming": True, "workers": 1, "queue_size": 8, "user_rate_limit": 1},
                     answer={"deadline_s": deadline, "timeout_s": 10.0})
    emu = h.emu
    _finished(h, emu.mention(CACHE_Q, user="U0WARM").ts)  # the bot's first search loads what it needs
    h.llm.token_delay, h.llm.stream_tokens = gap, 40
    sent: dict[str, float] = {}
    asker: dict[str, str] = {}
    for user in ("U0ASK1", "U0ASK2", "U0ASK3", "U0ASK4"):
        at = time.monotonic()
        d = emu.mention(CACHE_Q, user=user)
        sent[d.ts], asker[d.ts] = at, user
    replies = {ts: _finished(h, ts) for ts in sent}
    h.idle()

    assert all(len(r) == 1 for r in replies.values())  # one reply each, never an answer and a notice
    busy = [ts for ts, [msg] in replies.items() if msg["text"] == messages.BUSY]
    [(taken, [answer])] = [(ts, r) for ts, r in replies.items() if ts not in busy]
    assert len(busy) == 3 and answer["text"] != ANSWER  # the one the worker took: cut at its deadline
    assert (answer["text"].endswith(answer_prompts.MODEL_DEADLINE_PARTIAL_NOTE)
            or answer["text"].startswith(answer_prompts.MODEL_DEADLINE_NOTE))
    for ts, at in sent.items():
        assert _replied_at(emu, ts) - at < deadline + gap + 1.5, ts
    assert len(h.llm.requests) == 2  # the warm-up and the one taken: those that waited too long cost none
    assert h.bot.metrics.failures.labels("queue_timeout")._value.get() == 3
    assert h.bot.metrics.busy._value.get() == 0  # the queue was never full: none refused at the door
    logged = {q["thread_ts"]: q for q in h.logged_questions()}
    assert all(logged[ts]["failure"] == "queue_timeout" for ts in busy)  # the report counts them
    assert all(h.bot.router.in_flight.in_flight(u) == 0 for u in asker.values())

    # told to ask again in a minute, they may: the refused question did not use up their 1 a minute
    h.llm.token_delay, h.llm.stream_tokens = 0.0, None
    again = [emu.mention(CACHE_Q, user=asker[ts]).ts for ts in busy]
    assert all(_finished(h, ts)[0]["text"] == ANSWER for ts in again)
    assert emu.ephemerals == [] and h.bot.metrics.rate_limited._value.get() == 0


def test_a_question_that_waited_briefly_is_answered_with_what_is_left(make_harness):
    """A model that answers in ~1 s, one worker, two questions at once: the second waited ~1 s of its
    3 s deadline and still gets the model's answer, as a prompt question does."""
    h = make_harness(bot={"workers": 1}, answer={"deadline_s": 3.0})
    emu = h.emu
    h.llm.token_delay, h.llm.stream_tokens = 0.5, 2  # the whole answer after 2 x 0.5 s
    asked = [emu.mention(CACHE_Q, user=u) for u in ("U0ASK1", "U0ASK2")]
    replies = [h.wait_answers(thread_ts=d.ts, timeout=30) for d in asked]
    h.idle()
    assert [len(r) for r in replies] == [1, 1]
    for [msg] in replies:  # the model's answer, not the passages with the deadline's note
        assert "Bump *`cache_version`* in the task decorator" in msg["text"] and "did not answer" not in msg["text"]
    assert len(h.llm.requests) == 2 and h.bot.metrics.failures.labels("queue_timeout")._value.get() == 0


def test_a_prompt_question_is_answered_as_before(make_harness):
    h = make_harness(bot={"streaming": True}, answer={"deadline_s": 3.0})
    d = h.emu.mention(CACHE_Q)
    [msg] = _finished(h, d.ts)
    assert msg["text"] == ANSWER and "context_actions" in [b["type"] for b in msg["blocks"]]


# --- a DM's notices go in the question's thread, and are never read back as answers ------------


def test_busy_notices_in_a_dm_and_the_panel_go_in_the_questions_thread(make_harness):
    h = make_harness(bot={"streaming": True, "workers": 1, "queue_size": 1})
    emu, gate = h.emu, threading.Event()
    emu.add_channel(DM, "dm", is_im=True)
    opened = emu.open_assistant_thread(user="U0PANEL")
    h.llm.reply = held_reply(gate)
    try:
        running = emu.mention(CACHE_Q, user="U0ASK1")
        waiting = emu.mention(CACHE_Q, user="U0ASK2")
        emu.wait_for(lambda: h.bot.pool.pending == 2 and h.llm.requests)
        d = emu.message(CACHE_Q, channel=DM, channel_type="im", user="U0DM")
        [notice] = h.wait_answers(channel=DM, thread_ts=d.ts)
        emu.assistant_message(CACHE_Q, opened.ts, user="U0PANEL")
        [panel_notice] = h.wait_answers(thread_ts=opened.ts)
    finally:
        gate.set()
    assert notice["text"] == panel_notice["text"] == messages.BUSY
    assert _top_level(emu, DM) == []  # nothing beside the 👀'd question
    for q in (running, waiting):
        assert _finished(h, q.ts)[0]["text"] == ANSWER
    h.idle()
    assert len(h.answers(channel=DM)) == 1


def test_apology_and_restart_notices_in_a_dm_go_in_the_questions_thread(make_harness):
    h = make_harness(bot={"streaming": True, "workers": 1})
    emu, gate = h.emu, threading.Event()
    emu.add_channel(DM, "dm", is_im=True)
    h.llm.script(Fail(503))  # the model down for one question: the apology with sources
    d = emu.message(CACHE_Q, channel=DM, channel_type="im")
    [apology] = h.wait_answers(channel=DM, thread_ts=d.ts)
    assert apology["text"].startswith(APOLOGY_START)
    h.idle()

    h.llm.reply = held_reply(gate)  # a shutdown while the next answer is still being written
    try:
        d = emu.message("how do I cache a workflow?", channel=DM, channel_type="im")
        emu.wait_for(lambda: len(h.llm.requests) == 2)
        assert drain(h.bot, time.monotonic()) is False
    finally:
        gate.set()
    assert h.bot.pool.wait_idle(30)
    assert [m["text"] for m in h.answers(channel=DM, thread_ts=d.ts)] == [messages.RESTARTED]
    assert _top_level(emu, DM) == []


def test_rate_limit_and_in_flight_notices_in_a_dm_go_in_the_questions_thread(make_harness):
    h = make_harness(bot={"streaming": True, "user_in_flight": 1, "user_rate_limit": 2})
    emu, gate = h.emu, threading.Event()
    emu.add_channel(DM, "dm", is_im=True)
    h.llm.reply = held_reply(gate)
    try:
        first = emu.message(CACHE_Q, channel=DM, channel_type="im")
        emu.wait_for(lambda: h.llm.requests)
        early = emu.message("how do I cache a workflow?", channel=DM, channel_type="im")
        [in_flight] = emu.wait_for(lambda: emu.ephemerals)
    finally:
        gate.set()
    _finished(h, first.ts)
    second = emu.message("how do I cache a workflow?", channel=DM, channel_type="im")
    _finished(h, second.ts)
    over = emu.message("how do I cache a launch plan?", channel=DM, channel_type="im")  # the 3rd this minute
    emu.wait_for(lambda: len(emu.ephemerals) == 2)
    h.idle()
    limited = emu.ephemerals[1]
    assert in_flight["text"] == messages.IN_FLIGHT and in_flight["thread_ts"] == early.ts
    assert limited["text"].startswith("You're asking questions faster") and limited["thread_ts"] == over.ts
    assert _top_level(emu, DM) == []


@pytest.mark.parametrize("where", ["dm", "channel thread"])
def test_a_notice_is_not_read_back_as_an_earlier_answer(make_harness, where):
    """The model down for the first question (the apology, with sources), then a follow-up: the
    model reads the question it continues, not the apology as the bot's earlier answer."""
    h = make_harness(bot={"streaming": True})
    emu = h.emu
    emu.add_channel(DM, "dm", is_im=True)
    h.llm.script(Fail(503))
    if where == "dm":
        d = emu.message(CACHE_Q, channel=DM, channel_type="im")
    else:
        d = emu.mention(CACHE_Q)
    assert h.wait_answers(thread_ts=d.ts)[0]["text"].startswith(APOLOGY_START)
    h.idle()
    if where == "dm":  # written at the DM's top level: read with the exchange before it
        follow = emu.message("and for map tasks?", channel=DM, channel_type="im")
    else:
        follow = emu.message("and for map tasks?", thread_ts=d.ts)
    _finished(h, follow.ts if where == "dm" else d.ts, n=1 if where == "dm" else 2)
    [condense] = [r for r in h.llm.requests if "standalone question" in r.text_of("system")]
    history = condense.text_of("user")
    assert CACHE_Q in history and "and for map tasks?" in history
    assert "Sorry" not in history and "Best sources" not in history


def test_thread_and_dm_history_leave_the_bots_notices_out():
    """What a follow-up is read with, from the messages as Slack gives them back: a notice (busy,
    restarted, the apology) is no assistant turn, wherever it was posted (a DM's top level, where
    answers posted whole and their notices go, or a thread); a half-streamed answer that the
    restart notice ended keeps its text."""
    with SlackEmulator() as emu:
        emu.add_channel("D0DM", "dm", is_im=True)
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        now = time.time() - 120

        def bot_says(channel: str, message: blocks.SlackMessage, at: float, thread: str | None = None) -> None:
            emu.seed_message(channel, message.text, user="UBOT", bot_id="BBOT", ts=f"{at:.6f}",
                             blocks=message.blocks, **({"thread_ts": thread} if thread else {}))

        asked = emu.seed_message("D0DM", "how do I cache a task?", user="U1", ts=f"{now:.6f}")["ts"]
        bot_says("D0DM", blocks.render_notice(messages.BUSY), now + 1)
        [apology] = blocks.render_apology([], messages.NO_ANSWER_WRITTEN.format(
            reason=messages.MODEL_UNAVAILABLE.format(reason="HTTP 503")))
        bot_says("D0DM", apology, now + 2)
        hist = ThreadHistory(client)
        later = f"{now + 60:.6f}"
        assert hist.dm_turns("D0DM", before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=6) == \
            [Turn("user", "how do I cache a task?")]

        root = emu.seed_message("C0GENERAL", "<@UBOT> how do I cache a task?", user="U1", ts=f"{now:.6f}")["ts"]
        bot_says("C0GENERAL", blocks.render_notice(messages.RESTARTED), now + 1, root)
        emu.seed_message("C0GENERAL", "<@UBOT> how do I cache a task?", user="U1", ts=f"{now + 2:.6f}",
                         thread_ts=root)
        bot_says("C0GENERAL", blocks.SlackMessage("Set `cache=True` [1].\n\n" + messages.RESTARTED), now + 3, root)
        turns = hist.turns("C0GENERAL", root, before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=6)
        assert turns == [Turn("user", "how do I cache a task?"), Turn("user", "how do I cache a task?"),
                         Turn("assistant", "Set `cache=True` [1].")]
        assert asked


def test_a_dm_answered_whole_keeps_its_replies_at_the_top_level(make_harness):
    """With [bot] streaming = false a DM's answer is posted whole at the DM's top level (a DM is
    already a private conversation), and its notices with it."""
    h = make_harness(bot={"streaming": False})
    emu = h.emu
    emu.add_channel(DM, "dm", is_im=True)
    h.llm.script(Fail(503))
    emu.message(CACHE_Q, channel=DM, channel_type="im")
    [apology] = h.wait_answers(channel=DM)
    assert "thread_ts" not in apology and apology["text"].startswith(APOLOGY_START)
    h.llm.reply = llm_reply
    emu.message("how do I cache a workflow?", channel=DM, channel_type="im")
    answers = h.wait_answers(2, channel=DM)
    assert all("thread_ts" not in m for m in answers) and "cache_version" in answers[1]["text"]
