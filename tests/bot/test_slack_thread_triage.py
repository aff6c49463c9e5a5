"""People talking to each other in a thread cost the bot nothing but a look at its own record.

The real Bolt app over Socket Mode against the Slack emulator ([bot] thread_followups on, the
default). A thread reply without a mention is a follow-up only in a thread the bot answered in;
the bot keeps those threads in its seen-events file, so deciding costs no Slack call for its own
threads, one read of the parent (not of the thread) for any other, and survives a restart.
"""

from __future__ import annotations

import sqlite3

import pytest
from support.slack_harness import CACHE_Q

from flytegpt.bot.slack.dedupe import seen_path_for

pytestmark = pytest.mark.timeout(180)


def seen_rows(harness) -> dict[str, int]:
    """Rows per table of the bot's seen-events file."""
    conn = sqlite3.connect(seen_path_for(harness.config.bot.feedback_db))
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_chatter_in_a_long_thread_the_bot_is_not_in_costs_one_read_and_no_writes(make_harness):
    harness = make_harness()
    emu = harness.emu
    root = emu.seed_message("C0GENERAL", "what do people think of the new release?", user="U0OTHER")["ts"]
    for i in range(999):  # five pages of conversations.replies, were the thread read
        emu.seed_message("C0GENERAL", f"reply {i}", user=f"U0PEER{i % 7}", thread_ts=root)
    before = seen_rows(harness)
    for i in range(20):
        d = emu.message(f"I agree with the above, how do we roll it out? point {i}", thread_ts=root,
                        user=f"U0CHAT{i % 3}")
        emu.wait_ack(d.envelope_id)
    harness.idle()
    assert harness.answers() == [] and emu.reactions == [] and harness.llm.requests == []
    assert emu.calls_to("conversations.replies") == []
    [parent_read] = emu.calls_to("conversations.history")  # once for the thread, not once per reply
    assert parent_read.args["latest"] == root and str(parent_read.args["limit"]) == "1"
    assert seen_rows(harness) == before  # neither the deliveries nor the messages were recorded as seen


def test_a_follow_up_where_the_bot_answered_is_answered_without_a_read_and_after_a_restart(make_harness):
    harness = make_harness()
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    harness.idle()
    replies_before = len(emu.calls_to("conversations.replies"))
    emu.message("and for map tasks?", thread_ts=first.ts)
    harness.wait_answers(2, thread_ts=first.ts)
    harness.idle()
    assert emu.calls_to("conversations.history") == []  # the bot's record said so: no parent read
    # the history for the answer is the only read of the thread
    assert len(emu.calls_to("conversations.replies")) == replies_before + 1
    assert seen_rows(harness)["threads"] == 1

    # a restarted bot (same volume) on a workspace where Slack shows nothing of the bot in that thread:
    # only its own record can tell that the thread is its own
    restarted = make_harness()
    remu = restarted.emu
    remu.seed_message("C0GENERAL", f"<@{remu.bot_user_id}> {CACHE_Q}", ts=first.ts)
    # (event ids of its own: the two emulators number theirs alike, and the file remembers the first's)
    remu.message("and what about dynamic workflows?", thread_ts=first.ts, event_id="Ev0AFTERRESTART1")
    restarted.wait_answers(thread_ts=first.ts)
    restarted.idle()
    assert remu.calls_to("conversations.history") == []
    # while chatter in a thread it never answered in is still not for it
    other = remu.seed_message("C0GENERAL", "team lunch?", user="U1")["ts"]
    d = remu.message("yes please, and how about tacos?", thread_ts=other, user="U2", event_id="Ev0AFTERRESTART2")
    remu.wait_ack(d.envelope_id)
    restarted.idle()
    assert restarted.answers(thread_ts=other) == []


def test_a_thread_the_bot_answered_in_before_it_kept_a_record_is_found_from_its_parent(make_harness):
    """Threads answered by a bot without the record (an upgrade, another volume): Slack lists the
    bot among the parent's repliers, which one read of the parent shows."""
    harness = make_harness()
    emu = harness.emu
    root = emu.seed_message("C0GENERAL", f"<@{emu.bot_user_id}> {CACHE_Q}", user="U0USER")["ts"]
    emu.seed_message("C0GENERAL", "Bump `cache_version` [1].", user=emu.bot_user_id, bot_id=emu.bot_id,
                     thread_ts=root)
    for i in range(3):
        emu.message(f"and for map tasks, case {i}?", thread_ts=root)
        harness.wait_answers(2 + i, thread_ts=root)
    harness.idle()
    assert len(emu.calls_to("conversations.history")) == 1  # then the thread is in the record
