"""One user's share of the answer pool.

`[bot] user_rate_limit` counts questions a minute, but one user could have all 10 in flight at
once, and the answer pool is one FIFO queue for everyone: a burst from one account was answered
before anyone else's question, and four accounts filled the queue (everyone else read "busy").
Now one user has at most `[bot] user_in_flight` questions running or queued; one more is refused
at once with a notice only they see, costs none of their questions a minute, and never reaches
the model. The slot is free again when the answer job ends, however it ends.

Real pieces: slack-bolt over Socket Mode, the answer job and pools, the Answerer with ChatOpenAI.
Stand-ins: the Slack emulator and the OpenAI-compatible server, whose replies are held on an
Event (the "slow model"), so nothing here depends on timing.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.openai_server import Fail, Hang
from support.slack_harness import held_reply

from flytegpt.bot import messages
from flytegpt.bot.slack.shutdown import drain

pytestmark = pytest.mark.timeout(120)

FLOOD, VICTIM = "U0FLOOD", "U0VICTIM"


def _answered(harness, d) -> bool:
    return any("cache_version" in m["text"] for m in harness.answers(thread_ts=d.ts))


def _in_flight(harness, user: str) -> int:
    return harness.bot.router.in_flight.in_flight(user)


def test_one_user_cannot_queue_more_than_user_in_flight_questions(make_harness):
    """5 questions at once from one user (within the rate limit); a slow model, one worker."""
    harness = make_harness(bot={"workers": 1, "queue_size": 32, "user_in_flight": 2, "user_rate_limit": 4})
    emu, gate = harness.emu, threading.Event()
    harness.llm.reply = held_reply(gate)
    try:
        flood = [emu.mention(f"how do I cache a task, variant {i}?", user=FLOOD) for i in range(5)]
        # three are refused at once, while the model still holds the first answer
        emu.wait_for(lambda: len(emu.ephemerals) == 3)
        emu.wait_for(lambda: harness.bot.pool.pending == 2 and len(harness.llm.requests) == 1)
        assert not gate.is_set()
        told = {n["thread_ts"] for n in emu.ephemerals}
        assert all(n["text"] == messages.IN_FLIGHT and n["user"] == FLOOD for n in emu.ephemerals)
        assert len(told) == 3 and told < {d.ts for d in flood}

        # another user's question waits behind the two the flood may have in flight, no more
        d = emu.mention("how do I cache a task?", user=VICTIM)
        emu.wait_for(lambda: harness.bot.pool.pending == 3)
        gate.set()
        emu.wait_for(lambda: _answered(harness, d), 30)
        harness.idle()
    finally:
        gate.set()
    asked = [r.text_of("user") for r in harness.llm.requests]
    assert len(asked) == 3 and "variant" not in asked[2]  # the victim's was the third model call
    accepted = [f for f in flood if f.ts not in told]
    assert all(_answered(harness, f) for f in accepted)
    assert not any(harness.answers(thread_ts=ts) for ts in told)  # refused: never queued nor answered
    assert not [r for r in emu.reactions if r["timestamp"] in told]  # no 👀 either

    # the answers are done: the slots are free, and the refusals cost none of the 4 questions a minute
    assert _in_flight(harness, FLOOD) == 0 and _in_flight(harness, VICTIM) == 0
    again = [emu.mention(f"and how do I cache a workflow, take {i}?", user=FLOOD) for i in range(2)]
    emu.wait_for(lambda: all(_answered(harness, a) for a in again), 30)
    harness.idle()
    metrics = harness.bot.metrics
    assert len(emu.ephemerals) == 3 and metrics.rate_limited._value.get() == 0
    assert metrics.failures.labels("in_flight")._value.get() == 3 and metrics.busy._value.get() == 0
    logged = [q for q in harness.logged_questions() if q["failure"] == "in_flight"]
    assert len(logged) == 3 and all(q["user"] == FLOOD for q in logged)  # the report counts them


def test_a_slash_command_beyond_the_cap_is_told_in_its_ack(make_harness):
    """/flytegpt acks at once: over the cap, the ack is the notice, and nothing is queued."""
    harness = make_harness(bot={"user_in_flight": 1})
    emu, gate = harness.emu, threading.Event()
    harness.llm.reply = held_reply(gate)
    try:
        d = emu.mention("how do I cache a task?")
        emu.wait_for(lambda: harness.llm.requests)
        c = emu.slash_command("how do I cache a workflow?")
        ack = emu.wait_ack(c.envelope_id)
        assert ack.payload == {"text": messages.IN_FLIGHT, "response_type": "ephemeral"}
        assert harness.bot.pool.pending == 1
        other = emu.slash_command("how do I cache a workflow?", user="U0OTHER")  # someone else: taken
        assert emu.wait_ack(other.envelope_id).payload["text"] == messages.LOOKING
        gate.set()
        emu.wait_for(lambda: _answered(harness, d), 30)
        harness.idle()
    finally:
        gate.set()
    assert emu.response_posts[emu.response_id(c.response_url)] == []
    assert emu.response_posts[emu.response_id(other.response_url)]
    c = emu.slash_command("how do I cache a workflow?")  # the mention's answer is done: a slot is free
    assert emu.wait_ack(c.envelope_id).payload["text"] == messages.LOOKING


@pytest.mark.parametrize("outcome", ["model failed", "model timed out"])
def test_the_slot_is_free_again_when_the_answer_job_fails(make_harness, outcome):
    """An answer job that ends without an answer (the model down, a timeout) gives its slot back."""
    harness = make_harness(bot={"user_in_flight": 1}, answer={"timeout_s": 1.0})
    emu = harness.emu
    harness.llm.script(Fail(500) if outcome == "model failed" else Hang(30))
    d = emu.mention("how do I cache a task?")
    emu.wait_for(lambda: harness.answers(thread_ts=d.ts), 30)  # the apology
    harness.idle()
    assert not _answered(harness, d) and _in_flight(harness, "U0USER") == 0
    d = emu.mention("how do I cache a task, again?")
    emu.wait_for(lambda: _answered(harness, d), 30)
    assert emu.ephemerals == []


def test_the_slots_are_free_again_after_a_shutdown(make_harness):
    """SIGTERM's drain: the queued question is cancelled (its slot freed at once), the running one
    frees its slot when its job ends."""
    harness = make_harness(bot={"workers": 1, "user_in_flight": 2})
    emu, gate = harness.emu, threading.Event()
    harness.llm.reply = held_reply(gate)
    try:
        for i in range(2):
            emu.mention(f"how do I cache a task, take {i}?")
        emu.wait_for(lambda: harness.bot.pool.pending == 2 and harness.llm.requests)
        assert _in_flight(harness, "U0USER") == 2
        assert drain(harness.bot, time.monotonic()) is False  # deadline now: both askers told
        assert _in_flight(harness, "U0USER") == 1  # the queued one was cancelled
    finally:
        gate.set()
    assert harness.bot.pool.wait_idle(30)
    assert _in_flight(harness, "U0USER") == 0


@pytest.mark.parametrize("value", [0, -1])
def test_user_in_flight_below_one_is_refused(tmp_path, value):
    """0 would refuse every question; the key must be at least 1 (the default is 2)."""
    from flytegpt.ingest.config import BotConfig, ConfigError, load_config

    assert BotConfig().user_in_flight == 2
    path = tmp_path / "flytegpt.toml"
    path.write_text(f"[bot]\nuser_in_flight = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bot\.user_in_flight: Input should be greater than or equal to 1"):
        load_config(path)
