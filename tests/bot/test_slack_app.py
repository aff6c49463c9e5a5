"""End to end: the real Bolt app over Socket Mode against the Slack emulator, real answering.

The index is the bundled sample corpus (built once for this module); the chat model is
the OpenAI-compatible stand-in. Each test checks what a Slack user would see.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest
from support.openai_server import Fail, Reply
from support.slack_harness import ANSWER, CACHE_Q, STANDALONE

from slack_sdk.models.blocks import Block

from flytegpt.bot import messages
from flytegpt.bot.slack import blocks

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def harness(make_harness):
    return make_harness()


def _blocks(msg: dict, kind: str) -> list[dict]:
    return [b for b in msg.get("blocks", []) if b["type"] == kind]


def test_mention_is_answered_in_thread_with_sources(harness, sample):
    emu = harness.emu
    d = emu.mention(CACHE_Q)
    assert emu.wait_ack(d.envelope_id).latency < 3.0
    [answer] = harness.wait_answers(thread_ts=d.ts)
    # picked up: 👀 on the question
    assert emu.wait_for(lambda: [r for r in emu.reactions if r["timestamp"] == d.ts and r["name"] == "eyes"])
    call = emu.calls_to("chat.postMessage")[-1].args
    assert call["thread_ts"] == d.ts and call["unfurl_links"] is False and call["unfurl_media"] is False
    assert call.get("reply_broadcast") in (False, None)
    section = _blocks(answer, "section")[0]["text"]["text"]
    assert section == "Bump *`cache_version`* in the task decorator to invalidate the cache [1]."
    sources = _blocks(answer, "context")[0]["elements"][0]["text"]
    # [1] is a link for web URLs; the sample docs live on disk (file://), which Slack can't open; a
    # Slack thread says the day it was started (tests/bot/test_slack_source_dates.py)
    assert re.fullmatch(r"\*Sources\*\n\[1\] (<https?://[^|>]+\|[^>]+>|[^<>\n]+)( \(\d{4}-\d\d-\d\d\))?", sources), sources
    buttons = _blocks(answer, "actions")[0]["elements"]
    assert {b["action_id"] for b in buttons} == {blocks.ACTION_FEEDBACK_UP, blocks.ACTION_FEEDBACK_DOWN}
    # the model saw the retrieved sources
    assert "cache" in harness.llm.requests[-1].text_of("user").lower()
    # the answer is stored for feedback with its index version
    harness.idle()  # the answer is stored right after it is posted
    row = harness.bot.feedback.get_answer(buttons[0]["value"])
    assert row["question"] == CACHE_Q and row["index_version"] == sample[1].version and row["sources"]
    assert harness.bot.metrics.answers.labels("llm")._value.get() == 1


@pytest.mark.parametrize("streaming", [False, True])
def test_an_answer_citing_nothing_lists_the_sources_it_was_given_and_is_a_knowledge_gap(make_harness, streaming):
    """Before, "I don't know: the sources do not cover this." went out with no sources and
    was logged as answered, so the maintainers' knowledge-gap report never listed it."""
    harness = make_harness(bot={"streaming": streaming})
    emu = harness.emu
    harness.llm.reply = "I don't know: the sources do not cover this."
    d = emu.mention(CACHE_Q)
    [answer] = emu.wait_for(lambda: (m := harness.answers(thread_ts=d.ts)) and not m[0].get("streaming")
                            and m[0].get("blocks") and m, timeout=30)
    context = [b for b in answer["blocks"] if b["type"] == "context"]
    sources = context[0]["elements"][0]["text"]
    assert sources.startswith(f"*{messages.CONSULTED_HEADING}*\n[1] "), sources
    harness.idle()
    [row] = harness.logged_questions()
    assert (row["outcome"], row["mode"], row["question"]) == ("not_found", "llm", CACHE_Q) and row["sources"]


def test_a_shared_answer_citing_nothing_keeps_its_consulted_heading(harness):
    emu = harness.emu
    harness.llm.reply = "I don't know: the sources do not cover this."
    d = emu.slash_command("how do I invalidate the cache?", user="U0ASKER")
    [post] = emu.wait_for(lambda: emu.response_posts[emu.response_id(d.response_url)])
    share = [a for b in post["blocks"] if b["type"] == "actions" for a in b["elements"]
             if a["action_id"] == blocks.ACTION_SHARE][0]
    harness.idle()
    click = emu.block_action(blocks.ACTION_SHARE, share["value"], ephemeral=True, user="U0ASKER")
    posts = emu.wait_for(lambda: (p := emu.response_posts[emu.response_id(click.response_url)]) and p)
    shared = posts[0]
    assert shared["response_type"] == "in_channel" and "do not cover" in shared["text"]
    assert f"*{messages.CONSULTED_HEADING}*" in str(shared["blocks"])


def test_followup_in_thread_uses_history(harness):
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    # a reply in the thread, without a mention: the bot already answered there
    emu.message("and for map tasks?", thread_ts=first.ts)
    answers = harness.wait_answers(2, thread_ts=first.ts)
    assert len(answers) == 2
    condense = [r for r in harness.llm.requests if "standalone question" in r.text_of("system")]
    assert len(condense) == 1
    convo = condense[0].text_of("user")
    assert "invalidate the cache" in convo and "cache_version" in convo and "and for map tasks?" in convo
    assert STANDALONE in harness.llm.requests[-1].text_of("user")  # retrieval + answer used the condensed question
    # a mention in the same thread is a follow-up too
    emu.mention("what about dynamic workflows?", thread_ts=first.ts)
    harness.wait_answers(3, thread_ts=first.ts)


def test_thread_reply_where_bot_did_not_answer_is_ignored(harness):
    emu = harness.emu
    root = emu.seed_message("C0GENERAL", "team lunch?", user="U1")["ts"]
    d = emu.message("yes please", thread_ts=root, user="U2")
    emu.wait_ack(d.envelope_id)
    harness.idle()
    assert harness.answers() == [] and emu.reactions == []


@pytest.mark.parametrize("reply", ["<@U0OTHER> we hit the same thing last week, ping me if it still fails",
                                   "thanks, that worked!", "ok", ":pray:", "<!here> heads up: cache bug above"])
def test_a_thread_reply_for_someone_else_or_a_thank_you_is_not_answered(harness, reply):
    """Before, once the bot had answered in a thread it answered everything there, another
    user's remark to a colleague and the asker's "thanks, that worked!" included."""
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    asked = len(harness.llm.requests)
    d = emu.message(reply, thread_ts=first.ts, user="U0OTHER" if reply.startswith("<@") else "U0USER")
    emu.wait_ack(d.envelope_id)
    harness.idle()
    assert len(harness.answers(thread_ts=first.ts)) == 1 and len(harness.llm.requests) == asked
    assert [r for r in emu.reactions if r["timestamp"] == d.ts] == []
    # a real follow-up, and a thank-you that asks more, are still answered; so is a mention
    emu.message("thanks! and how do I do that for map tasks", thread_ts=first.ts)
    harness.wait_answers(2, thread_ts=first.ts)
    emu.mention("<@U0OTHER> said this fails for map tasks, why?", thread_ts=first.ts)
    harness.wait_answers(3, thread_ts=first.ts)


def test_a_remark_to_someone_else_is_not_part_of_the_history_a_follow_up_is_read_with(harness):
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    emu.message("<@U0USER> we had that too, restarting the propeller pod fixed it", thread_ts=first.ts,
                user="U0OTHER")
    emu.message("and for map tasks?", thread_ts=first.ts)
    harness.wait_answers(2, thread_ts=first.ts)
    [condense] = [r for r in harness.llm.requests if "standalone question" in r.text_of("system")]
    convo = condense.text_of("user")
    assert "invalidate the cache" in convo and "and for map tasks?" in convo and "propeller" not in convo


def test_a_thank_you_in_a_direct_message_is_not_answered(harness):
    emu = harness.emu
    emu.add_channel("D0DIRECT01", "dm", is_im=True)
    emu.message(CACHE_Q, channel="D0DIRECT01", channel_type="im")
    harness.wait_answers(channel="D0DIRECT01")
    d = emu.message("thank you so much :pray:", channel="D0DIRECT01", channel_type="im")
    emu.wait_ack(d.envelope_id)
    harness.idle()
    assert len(harness.answers(channel="D0DIRECT01")) == 1
    emu.message("and for map tasks?", channel="D0DIRECT01", channel_type="im")
    harness.wait_answers(2, channel="D0DIRECT01")


def test_a_follow_up_at_the_top_of_a_dm_is_understood_with_the_question_before_it(harness):
    """DM answers posted whole sit at the DM's top level, and so do the asker's next
    messages; "and for map tasks?" there was answered without the question it continues, while a
    new question is still answered on its own."""
    emu = harness.emu
    emu.add_channel("D0DIRECT01", "dm", is_im=True)
    emu.message(CACHE_Q, channel="D0DIRECT01", channel_type="im")
    harness.wait_answers(channel="D0DIRECT01")
    emu.message("and for map tasks?", channel="D0DIRECT01", channel_type="im")
    harness.wait_answers(2, channel="D0DIRECT01")
    [condense] = [r for r in harness.llm.requests if "standalone question" in r.text_of("system")]
    convo = condense.text_of("user")
    assert CACHE_Q in convo and "and for map tasks?" in convo and "cache_version" in convo
    emu.message("what is a launch plan?", channel="D0DIRECT01", channel_type="im")
    harness.wait_answers(3, channel="D0DIRECT01")
    assert len([r for r in harness.llm.requests if "standalone question" in r.text_of("system")]) == 1


def test_thread_followups_can_be_turned_off(make_harness):
    harness = make_harness(bot={"thread_followups": False})
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    reply = emu.message("and for map tasks?", thread_ts=first.ts)
    emu.wait_ack(reply.envelope_id)  # delivered and handled before silence is checked
    harness.idle()
    assert len(harness.answers(thread_ts=first.ts)) == 1


def test_direct_message_is_answered_in_the_dm(harness):
    emu = harness.emu
    emu.add_channel("D0DIRECT01", "dm", is_im=True)
    d = emu.message(CACHE_Q, channel="D0DIRECT01", channel_type="im")
    [answer] = harness.wait_answers(channel="D0DIRECT01")
    assert "thread_ts" not in answer  # a DM is already a private conversation
    assert "cache_version" in answer["text"]
    assert emu.wait_ack(d.envelope_id).latency < 3.0


def test_a_file_shared_without_words_is_not_taken_for_an_empty_question(harness):
    """A screenshot dropped in a thread the bot answered, or in its DM, got "Please ask a
    question: the message was empty."; a file with a question is still answered."""
    emu = harness.emu
    first = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=first.ts)
    emu.add_channel("D0DIRECT01", "dm", is_im=True)
    files = [{"id": "F1", "name": "screenshot.png"}]
    for d in (emu.message("", thread_ts=first.ts, subtype="file_share", files=files),
              emu.message("", channel="D0DIRECT01", channel_type="im", subtype="file_share", files=files)):
        emu.wait_ack(d.envelope_id)
    harness.idle()
    assert len(harness.answers(thread_ts=first.ts)) == 1 and harness.answers(channel="D0DIRECT01") == []
    emu.message(CACHE_Q, channel="D0DIRECT01", channel_type="im", subtype="file_share", files=files)
    [answer] = harness.wait_answers(channel="D0DIRECT01")
    assert "cache_version" in answer["text"]


def test_slash_command_acks_then_answers_via_response_url(harness):
    emu = harness.emu
    d = emu.slash_command("how do I invalidate the cache?")
    ack = emu.wait_ack(d.envelope_id)
    assert ack.latency < 3.0 and ack.payload == {"text": "Looking into it…", "response_type": "ephemeral"}
    rid = emu.response_id(d.response_url)
    [post] = emu.wait_for(lambda: emu.response_posts[rid])
    assert post["response_type"] == "ephemeral" and "cache_version" in post["text"]
    assert post["blocks"][0]["type"] == "context"  # the question, since only the asker saw it
    actions = _blocks(post, "actions")[0]["elements"]
    share = [a for a in actions if a["action_id"] == blocks.ACTION_SHARE][0]
    assert harness.answers() == []  # nothing in the channel yet
    harness.idle()  # the answer is stored right after it is posted

    click = emu.block_action(blocks.ACTION_SHARE, share["value"], ephemeral=True, user="U0USER")
    assert emu.wait_ack(click.envelope_id).latency < 3.0
    crid = emu.response_id(click.response_url)
    posts = emu.wait_for(lambda: len(emu.response_posts[crid]) >= 2 and emu.response_posts[crid])
    assert posts[0]["response_type"] == "in_channel" and "cache_version" in posts[0]["text"]
    assert "shared by <@U0USER>" in posts[0]["blocks"][0]["elements"][0]["text"]
    assert posts[1].get("delete_original") is True


@pytest.mark.parametrize("text", ["", "help"])
def test_slash_command_usage(harness, text):
    emu = harness.emu
    d = emu.slash_command(text)
    ack = emu.wait_ack(d.envelope_id)
    assert ack.payload["response_type"] == "ephemeral" and "/flytegpt" in ack.payload["text"]
    harness.idle()
    assert emu.response_posts[emu.response_id(d.response_url)] == [] and harness.llm.requests == []


def test_feedback_is_recorded_and_acknowledged(harness, tmp_path):
    emu = harness.emu
    d = emu.mention(CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    value = _blocks(answer, "actions")[0]["elements"][0]["value"]
    assert len(value) < 30  # a compact id, never the payload
    harness.idle()  # the answer is stored right after it is posted
    click = emu.block_action(blocks.ACTION_FEEDBACK_UP, value, message=answer, user="U0VOTER")
    assert emu.wait_ack(click.envelope_id).latency < 3.0
    rid = emu.response_id(click.response_url)
    [thanks] = emu.wait_for(lambda: emu.response_posts[rid])
    assert thanks["text"] == "Thanks for the feedback!" and thanks["response_type"] == "ephemeral"
    db = sqlite3.connect(harness.config.bot.feedback_db)
    rows = db.execute("SELECT v.vote, v.user, v.channel, v.created_at, a.question, a.index_version "
                      "FROM votes v JOIN answers a ON a.id = v.answer_id").fetchall()
    assert len(rows) == 1
    vote, user, channel, at, question, version = rows[0]
    assert (vote, user, channel, question) == ("up", "U0VOTER", "C0GENERAL", CACHE_Q)
    assert version and abs(at - time.time()) < 60


def test_each_message_is_answered_once(make_harness):
    # three questions from one user at once: each may be in flight (a duplicate must not take a slot)
    harness = make_harness(bot={"user_in_flight": 3})
    emu = harness.emu
    # the same event delivered again (a Socket Mode retry) ...
    d = emu.mention(CACHE_Q, event_id="Ev0DUPLICATE")
    emu.send_event(d.body["event"], event_id="Ev0DUPLICATE", retry_attempt=1, retry_reason="timeout")
    # ... and app_mention + message for one message, in both orders
    e = emu.mention("how do I use secrets?", also_message=True)
    msg = emu.post_user_message("<@UBOT> how do I read from S3?")
    emu.send_event(msg)
    emu.send_event(dict(msg, type="app_mention", channel_type=None))
    harness.wait_answers(thread_ts=d.ts)
    harness.wait_answers(thread_ts=e.ts)
    harness.wait_answers(thread_ts=msg["ts"])
    harness.idle()
    for ts in (d.ts, e.ts, msg["ts"]):
        assert len(harness.answers(thread_ts=ts)) == 1
    assert len(harness.answers()) == 3
    assert harness.bot.metrics.duplicates.labels("event")._value.get() == 1


def test_an_event_lost_in_transit_is_answered_when_slack_sends_it_again(harness):
    emu = harness.emu
    emu.redeliver_after = 0.5
    emu.lose_envelopes = 1  # e.g. sent on a connection the client was replacing: no ack, Slack retries it
    d = emu.mention(CACHE_Q)
    assert emu.acks.get(d.envelope_id) is None
    [answer] = harness.wait_answers(thread_ts=d.ts)
    assert emu.wait_ack(d.envelope_id) and len(emu.redeliveries) == 1
    harness.idle()
    assert len(harness.answers(thread_ts=d.ts)) == 1 and "cache" in answer["text"].lower()
    assert harness.bot.metrics.duplicates.labels("event")._value.get() == 0


def test_ignores_its_own_and_other_bots_messages(harness):
    emu = harness.emu
    emu.add_channel("D0DIRECT02", "dm", is_im=True)
    sent = [emu.message("I am a bot", channel="D0DIRECT02", channel_type="im", user="U0OTHERBOT",
                        bot_id="B0OTHER", subtype="bot_message"),
            emu.message("echo", channel="D0DIRECT02", channel_type="im", user="UBOT", bot_id="BBOT")]
    ev = emu.post_user_message("<@UBOT> loop?", user="U0OTHERBOT", bot_id="B0OTHER")
    sent.append(emu.send_event(dict(ev, type="app_mention")))
    for d in sent:  # delivered and handled before silence is checked
        emu.wait_ack(d.envelope_id)
    harness.idle()
    assert harness.emu.calls_to("chat.postMessage") == [] and harness.llm.requests == []
    assert harness.emu.reactions == []


def test_model_failure_gives_apology_with_sources(harness):
    harness.llm.script(Fail(500), Fail(500))
    d = harness.emu.mention(CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    text = answer["text"]
    assert text.startswith("Sorry, I couldn't write an answer") and "Best sources" in text
    assert "<http" in _blocks(answer, "context")[0]["elements"][0]["text"]
    assert harness.bot.metrics.failures.labels("model_unavailable")._value.get() == 1


def test_no_index_yet_says_not_ready(make_harness):
    harness = make_harness(empty=True)
    d = harness.emu.mention(CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    assert "not ready" in answer["text"]


def test_reconnects_after_the_socket_is_dropped(harness):
    emu = harness.emu
    emu.drop_connections()
    emu.wait_connected(2, timeout=15)
    d = emu.mention(CACHE_Q)
    assert emu.wait_ack(d.envelope_id).latency < 3.0
    harness.wait_answers(thread_ts=d.ts)
    emu.send_disconnect("refresh_requested")  # Slack asks the client to move to a new connection
    emu.wait_connected(3, timeout=15)
    d = emu.mention("how do I use secrets?")
    # acked within Slack's limit on the new connection while the old one closes (the SDK's
    # builtin client took ~3 s here: tests/bench/bench_socket_handover.py)
    assert emu.wait_ack(d.envelope_id).latency < 3.0
    harness.wait_answers(thread_ts=d.ts)


def test_slack_429_is_retried_after_retry_after(harness):
    harness.emu.script_error("chat.postMessage", status=429, retry_after=1, times=1)
    d = harness.emu.mention(CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    posts = harness.emu.calls_to("chat.postMessage")
    assert len(posts) == 2 and posts[1].at - posts[0].at >= 0.9


def test_busy_when_the_queue_is_full(make_harness):
    harness = make_harness(bot={"workers": 1, "queue_size": 1})
    gate = threading.Event()
    harness.llm.script(*[Reply(lambda body: (gate.wait(20), ANSWER)[1]) for _ in range(2)])
    emu = harness.emu
    sent = [emu.mention(f"question {i} about caching", user=f"U0USER{i}") for i in range(4)]
    for d in sent:
        assert emu.wait_ack(d.envelope_id).latency < 3.0
    busy = emu.wait_for(lambda: len(b := [m for m in harness.answers() if "answering a lot of questions" in m["text"]])
                        >= 2 and b)
    assert len(busy) == 2
    gate.set()
    emu.wait_for(lambda: len([m for m in harness.answers() if "cache_version" in m["text"]]) == 2, 20)
    assert harness.bot.metrics.busy._value.get() == 2


def test_rate_limit_and_length_limit(make_harness):
    harness = make_harness(bot={"user_rate_limit": 2}, answer={"max_question_chars": 200})
    emu = harness.emu
    for i in range(3):
        emu.mention(f"caching question {i}")
    emu.wait_for(lambda: emu.ephemerals)
    assert "faster than I can answer" in emu.ephemerals[0]["text"] and emu.ephemerals[0]["user"] == "U0USER"
    harness.wait_answers(2)
    d = emu.mention("why " * 100, user="U0OTHER")
    [answer] = harness.wait_answers(thread_ts=d.ts)
    assert "too long" in answer["text"]
    harness.idle()
    assert not [r for r in emu.reactions if r["timestamp"] == d.ts]  # rejected at once: no 👀


def test_channel_allowlist(make_harness):
    harness = make_harness(bot={"allowed_channels": ["C0ALLOWED1"]})
    emu = harness.emu
    emu.add_channel("C0ALLOWED1", "flyte-help")
    emu.mention(CACHE_Q)  # in #general: not allowed
    emu.wait_for(lambda: emu.ephemerals)
    # an id given as it is may be a private channel: not named to whoever mentions the bot
    assert emu.ephemerals[0]["text"] == messages.ONLY_IN_SOME_CHANNELS
    d = emu.mention(CACHE_Q, channel="C0ALLOWED1")
    harness.wait_answers(thread_ts=d.ts)
    assert harness.answers(channel="C0GENERAL") == []


# --- faults: the feedback database, Slack errors, malformed events, restarts ---------------------------------


def _say(harness, text: str, **kw):
    """Mention the bot and wait for the ack (so 'nothing happened' checks are meaningful)."""
    d = harness.emu.mention(text, **kw)
    harness.emu.wait_ack(d.envelope_id)
    return d


def test_locked_feedback_database_never_holds_back_the_answer(make_harness):
    harness = make_harness(bot={"streaming": False})
    emu = harness.emu
    locker = sqlite3.connect(harness.config.bot.feedback_db, isolation_level=None, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock (or the disk hangs)
    try:
        d = _say(harness, CACHE_Q)
        # the answer is in the thread while the database is still locked: posted first, stored after
        [answer] = harness.wait_answers(thread_ts=d.ts)
        assert "cache_version" in answer["text"]
        value = _blocks(answer, "actions")[0]["elements"][0]["value"]
        click = emu.block_action(blocks.ACTION_FEEDBACK_UP, value, message=answer, user="U0VOTER")
        rid = emu.response_id(click.response_url)
        [reply] = emu.wait_for(lambda: emu.response_posts[rid], timeout=20)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # the vote could not be stored, and the voter is told so instead of being thanked
    assert reply["text"] == messages.VOTE_NOT_STORED
    errors = harness.bot.metrics.feedback_store_errors
    assert errors.labels("answer")._value.get() == 1 and errors.labels("vote")._value.get() == 1
    assert harness.bot.metrics.answers.labels("llm")._value.get() == 1


def test_feedback_database_deleted_under_the_bot(make_harness, tmp_path):
    harness = make_harness(bot={"streaming": False})
    emu = harness.emu
    first = _say(harness, CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=first.ts)
    harness.idle()  # the answer is stored right after it is posted
    db = harness.config.bot.feedback_db
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / ("feedback.sqlite3" + suffix)).unlink(missing_ok=True)
    value = _blocks(answer, "actions")[0]["elements"][0]["value"]
    click = emu.block_action(blocks.ACTION_FEEDBACK_UP, value, message=answer, user="U0VOTER")
    rid = emu.response_id(click.response_url)
    [reply] = emu.wait_for(lambda: emu.response_posts[rid])
    assert reply["text"] != messages.THANKS and "vote" in reply["text"]
    # later answers are stored again, in a new database file
    second = _say(harness, "how do I use secrets?")
    [answer2] = harness.wait_answers(thread_ts=second.ts)
    value2 = _blocks(answer2, "actions")[0]["elements"][0]["value"]
    harness.idle()
    rows = sqlite3.connect(db).execute("SELECT id FROM answers").fetchall()
    assert rows == [(value2,)]


def test_unusable_feedback_database_at_start_still_answers(make_harness, tmp_path):
    db = tmp_path / "feedback.sqlite3"
    db.write_bytes(b"this is not a database " * 100)
    harness = make_harness(bot={"streaming": False})
    emu = harness.emu
    d = _say(harness, CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    harness.idle()  # the answer is stored right after it is posted
    value = _blocks(answer, "actions")[0]["elements"][0]["value"]
    click = emu.block_action(blocks.ACTION_FEEDBACK_DOWN, value, message=answer, user="U0VOTER")
    rid = emu.response_id(click.response_url)
    [reply] = emu.wait_for(lambda: emu.response_posts[rid])
    assert reply["text"] == messages.VOTE_NOT_STORED
    assert harness.bot.metrics.feedback_store_errors.labels("open")._value.get() == 1


@pytest.mark.parametrize("status,error", [(500, "internal_error"), (503, "service_unavailable"),
                                          (200, "internal_error"), (200, "fatal_error"), (429, "ratelimited")])
def test_slack_errors_on_posting_are_retried(make_harness, status, error):
    harness = make_harness(bot={"streaming": False})
    harness.emu.script_error("chat.postMessage", status=status, error=error, retry_after=0, times=2)
    d = _say(harness, CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    assert "cache_version" in answer["text"]
    assert len(harness.emu.calls_to("chat.postMessage")) == 3  # two failures, then the answer


def test_slack_refusing_the_answer_tells_the_asker(make_harness):
    # without a deferred post ([bot] deferred_post_s = 0): test_delivery_deferred.py has the later tries
    harness = make_harness(bot={"streaming": False, "deferred_post_s": 0})
    emu = harness.emu
    emu.script_error("chat.postMessage", status=500, error="internal_error", retry_after=None, times=4)
    d = _say(harness, CACHE_Q)
    [notice] = harness.wait_answers(thread_ts=d.ts)
    assert notice["text"] == messages.POST_FAILED
    assert len(emu.calls_to("chat.postMessage")) == 4 + 1  # the answer: 1 try + 3 retries; then the notice
    assert harness.bot.metrics.failures.labels("post_failed")._value.get() == 1


def test_a_post_that_times_out_but_lands_is_one_answer_that_takes_votes(make_harness):
    """Slack answering chat.postMessage after the client's timeout (it posted, slowly): the asker
    read the answer and "Slack did not accept my answer" under it, and its buttons were dead."""
    from flytegpt.bot.slack.client import make_client

    harness = make_harness(bot={"streaming": False})
    emu = harness.emu
    harness.bot.delivery.client = make_client(harness.settings(), timeout_s=1)
    emu.delays["chat.postMessage"] = 1.8
    d = _say(harness, CACHE_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts)
    harness.idle()
    time.sleep(0.5)  # a notice would follow the check
    assert [m["text"] for m in harness.answers(thread_ts=d.ts)] == [answer["text"]]
    assert "cache_version" in answer["text"] and messages.POST_FAILED not in answer["text"]
    assert harness.bot.metrics.failures.labels("post_failed")._value.get() == 0
    value = _blocks(answer, "actions")[0]["elements"][0]["value"]
    assert harness.bot.feedback.get_answer(value) is not None  # its 👍/👎 still count


MALFORMED = [
    {"type": "app_mention", "user": "U0USER", "text": "<@UBOT> hi"},  # no channel, no ts
    {"type": "app_mention", "user": "U0USER", "text": None, "channel": "C0GENERAL", "ts": "1.000001"},
    {"type": "app_mention", "text": "<@UBOT> who am I?", "channel": "C0GENERAL", "ts": "1.000002"},  # no user
    {"type": "message", "user": "U0USER", "text": None, "channel": "D0DIRECT09", "channel_type": "im",
     "ts": "1.000003"},
    {"type": "message", "user": "U0USER", "text": "hi", "channel": "D0DIRECT09", "channel_type": "im", "ts": 1.5},
    {"type": "app_mention", "user": "U0USER", "text": "<@UBOT> q", "channel": "C0GENERAL", "ts": "1.000005",
     "thread_ts": ["x"]},
]


def test_malformed_events_are_ignored_and_counted(harness):
    emu = harness.emu
    sent = [emu.send_event(e) for e in MALFORMED]
    for d in sent:
        emu.wait_ack(d.envelope_id)
    harness.idle()
    assert harness.answers() == [] and emu.reactions == [] and harness.llm.requests == []
    counted = harness.bot.metrics.malformed_events

    def total() -> float:
        return counted.labels("app_mention")._value.get() + counted.labels("message")._value.get()

    # Bolt acks before the listener's filters run: give the listener threads time to count
    deadline = time.monotonic() + 10
    while total() < len(MALFORMED) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert total() == len(MALFORMED)
    d = _say(harness, CACHE_Q)  # and the bot still answers
    harness.wait_answers(thread_ts=d.ts)


def test_retry_after_a_restart_is_not_answered_twice(make_harness):
    first = make_harness(bot={"streaming": False})
    d = first.emu.mention(CACHE_Q, event_id="Ev0RESTART")
    first.wait_answers(thread_ts=d.ts)
    first.idle()
    # a restarted (or second) process on the same volume gets Slack's retry of that event, and the app_mention's
    # `message` twin under another event id
    second = make_harness(bot={"streaming": False})
    second.emu.channels["C0GENERAL"].messages.append(dict(d.body["event"], type="message"))
    retry = second.emu.send_event(d.body["event"], event_id="Ev0RESTART", retry_attempt=1, retry_reason="timeout")
    twin = second.emu.send_event(dict(d.body["event"], type="message", channel_type="channel"),
                                 event_id="Ev0TWIN")
    second.emu.wait_ack(retry.envelope_id)
    second.emu.wait_ack(twin.envelope_id)
    # Bolt acks before its listener thread runs: wait for both to be counted (a race seen once in CI)
    duplicates = second.bot.metrics.duplicates
    second.emu.wait_for(lambda: duplicates.labels("event")._value.get() >= 1
                        and duplicates.labels("message")._value.get() >= 1, 15.0)
    second.idle()
    assert second.answers() == [] and second.llm.requests == []
    assert duplicates.labels("event")._value.get() == 1
    assert duplicates.labels("message")._value.get() == 1


# --- what reaches Slack: the model's text neutralised, long answers within Slack's limits -------------------

LOUD = ("Ping <!channel> and <!here> and <!everyone>, ask <@U0BOSS> or <#C0SECRET>, "
        "see <https://evil.example/x|the docs> [1].")


@pytest.mark.parametrize("streaming", [False, True])
def test_model_cannot_mention_or_link_in_what_is_posted(make_harness, streaming):
    harness = make_harness(bot={"streaming": streaming})
    harness.llm.reply = LOUD
    d = _say(harness, CACHE_Q)
    harness.wait_answers(thread_ts=d.ts)
    harness.idle()
    [answer] = harness.answers(thread_ts=d.ts)  # as it stands once the answer is complete
    posted = [c.args for c in harness.emu.calls
              if c.method in ("chat.postMessage", "chat.startStream", "chat.appendStream", "chat.stopStream",
                              "chat.update")]
    assert posted
    # streamed Markdown: link rules are the streaming module's (stream.py), checked in test_streaming.py
    forbidden = ("<!channel>", "<!here>", "<!everyone>", "<@U0BOSS>", "<#C0SECRET>") + (() if streaming else
                                                                                          ("<https://evil",))
    for args in posted:
        for text in _texts(args):
            for live in forbidden:
                assert live not in text, (live, text)
    assert "U0BOSS" in _all_text(answer)  # the words are still there, as text


def _texts(args: dict) -> list[str]:
    """Every string Slack would render from a call: text, markdown_text, chunks, block texts."""
    out = [str(args.get(k)) for k in ("text", "markdown_text") if args.get(k)]
    chunks = args.get("chunks")
    if isinstance(chunks, str):
        import json

        chunks = json.loads(chunks)
    for c in chunks or []:
        out += [str(v) for v in c.values() if isinstance(v, str)]
    out += _block_texts(args.get("blocks") or [])
    return out


def _block_texts(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "text" and isinstance(v, str)] + \
            [t for k, v in node.items() for t in _block_texts(v) if k != "text" or not isinstance(v, str)]
    if isinstance(node, list):
        return [t for v in node for t in _block_texts(v)]
    return []


def _all_text(msg: dict) -> str:
    return "\n".join([msg.get("text") or ""] + _block_texts(msg.get("blocks") or []))


LONG = "\n\n".join(f"Step {i}: set `cache_version` and keep the signature stable. " + "More detail here. " * 40
                    for i in range(120))  # ~100,000 characters: several messages


def test_long_answer_is_spread_over_several_messages(make_harness):
    harness = make_harness(bot={"streaming": False})
    harness.llm.reply = LONG + " [1]"
    d = _say(harness, CACHE_Q)
    answers = harness.emu.wait_for(lambda: (a := harness.answers(thread_ts=d.ts)) and
                                   any(_blocks(m, "actions") for m in a) and a, timeout=30)
    assert len(answers) >= 3
    for m in answers:
        for b in m.get("blocks", []):
            assert Block.parse(b).to_dict() == b
    text = "\n".join(t for m in answers for t in _block_texts(m.get("blocks") or []))
    assert "Step 0:" in text and "Step 119:" in text  # nothing lost
    assert _blocks(answers[-1], "actions") and not any(_blocks(m, "actions") for m in answers[:-1])
    assert harness.emu.violations == []


def test_long_answer_to_the_slash_command_keeps_to_five_posts(harness):
    harness.llm.reply = LONG * 2 + " [1]"
    emu = harness.emu
    d = emu.slash_command("how do I invalidate the cache?")
    emu.wait_ack(d.envelope_id)
    rid = emu.response_id(d.response_url)
    posts = emu.wait_for(lambda: (p := emu.response_posts[rid]) and "too long" in p[-1]["text"] and p, timeout=30)
    harness.idle()
    assert len(emu.response_posts[rid]) <= 5 and emu.violations == []
    assert "Step 0:" in posts[0]["text"]


def test_response_url_errors_are_retried(harness):
    emu = harness.emu
    emu.script_error("response_url", status=500, error="internal_error", retry_after=None, times=2)
    d = emu.slash_command("how do I invalidate the cache?")
    emu.wait_ack(d.envelope_id)
    rid = emu.response_id(d.response_url)
    [post] = emu.wait_for(lambda: emu.response_posts[rid], timeout=20)
    assert "cache_version" in post["text"] and emu.response_failures == 2


def test_question_arriving_while_stopping_is_told_to_ask_again(harness):
    harness.bot.pool.close_intake()  # the first step of a SIGTERM (bot/slack/shutdown.py)
    d = _say(harness, CACHE_Q)
    [notice] = harness.wait_answers(thread_ts=d.ts)
    assert notice["text"] == messages.RESTARTED and harness.llm.requests == []
    c = harness.emu.slash_command("how do I invalidate the cache?")
    assert harness.emu.wait_ack(c.envelope_id).payload["text"] == messages.RESTARTED
