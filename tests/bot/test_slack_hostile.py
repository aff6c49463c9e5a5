"""Hostile input, end to end: the real Bolt app
over Socket Mode against the Slack emulator, real answering over the sample index.

Each test sends what a user (or something that is not Slack) can send and checks what the user
reads, what the question log keeps and what the bot writes to disk.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

import pytest
from click.testing import CliRunner
from support.openai_server import Reply
from support.slack_emulator import SlackEmulator
from support.slack_harness import ANSWER, CACHE_Q

from flytegpt.bot import messages
from flytegpt.bot.slack import blocks
from flytegpt.bot.slack.dedupe import seen_path_for

pytestmark = pytest.mark.timeout(120)

INVISIBLE = "\u200d\u200b \u2060 \ufeff"


def _rows(harness) -> list[tuple]:
    db = sqlite3.connect(harness.config.bot.feedback_db)
    try:
        return db.execute("SELECT id, question, outcome, failure FROM answers ORDER BY created_at").fetchall()
    finally:
        db.close()


def _settled(harness, *delivered) -> None:
    for d in delivered:
        harness.emu.wait_ack(d.envelope_id)
    harness.idle()


def _metric(counter, *labels: str) -> float:
    return sum(counter.labels(label)._value.get() for label in labels)


def test_a_question_is_logged_without_control_characters_and_a_rejected_one_cut(make_harness, tmp_path):
    """Before, the question log (and `flytegpt feedback questions`) kept NUL, ESC, BEL and U+202E as typed,
    and a question turned down as too long was stored whole (45 KB a row)."""
    from flytegpt.bot.slack.feedback import export_confirmed

    harness = make_harness(answer={"max_question_chars": 200})
    emu = harness.emu
    d = emu.mention("how\x00 do I \x1b[31mcache\u202e a task\x07?")
    [answer] = harness.wait_answers(thread_ts=d.ts)
    long = emu.mention("how do I cache " * 300)  # 4,500 characters
    [refused] = harness.wait_answers(thread_ts=long.ts)
    assert "too long" in refused["text"]
    harness.idle()
    stored = {q: (outcome, failure) for _, q, outcome, failure in _rows(harness)}
    assert stored.pop("how do I [31mcache a task?") == ("answered", None)
    [(cut, outcome)] = stored.items()
    assert outcome == ("failed", "rejected") and len(cut) == 200 and cut.endswith("\u2026")
    assert cut.startswith("how do I cache how do I cache")
    value = [b for b in answer["blocks"] if b["type"] == "actions"][0]["elements"][0]["value"]
    click = emu.block_action(blocks.ACTION_FEEDBACK_UP, value, message=answer, user="U0USER")  # the asker
    emu.wait_for(lambda: emu.response_posts[emu.response_id(click.response_url)])
    out = tmp_path / "confirmed.jsonl"
    assert export_confirmed(harness.config.bot.feedback_db, out) == 1
    [row] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["question"] == "how do I [31mcache a task?"


def test_a_question_of_invisible_characters_is_the_empty_question(make_harness):
    """Before, zero-width spaces and joiners were searched (👀, "I couldn't find this ...") and logged as a
    knowledge gap (not_found); now it is told what an empty mention is told: the usage."""
    harness = make_harness()
    emu = harness.emu
    d = emu.mention(INVISIBLE)
    [reply] = harness.wait_answers(thread_ts=d.ts)
    assert "/flytegpt" in reply["text"]  # the usage, as for a bare mention and `/flytegpt` alone
    cmd = emu.slash_command("\u200b \ufeff")
    ack = emu.wait_ack(cmd.envelope_id)
    assert "/flytegpt" in ack.payload["text"]  # the usage, as for `/flytegpt` alone
    harness.idle()
    assert [r for r in emu.reactions if r["timestamp"] == d.ts] == []  # turned down at once: no 👀
    assert harness.llm.requests == [] and emu.response_posts[emu.response_id(cmd.response_url)] == []
    assert _rows(harness) == []  # no question: nothing logged


def test_the_slash_command_with_only_the_bots_mention_gets_the_usage(make_harness):
    """Before, `/flytegpt @FlyteGPT` was searched as the question "@someone" (the bot's own mention was
    stripped from events only); a mention before a question is dropped as in a channel."""
    harness = make_harness()
    emu = harness.emu
    cmd = emu.slash_command(f"<@{emu.bot_user_id}>")
    ack = emu.wait_ack(cmd.envelope_id)
    assert "/flytegpt" in ack.payload["text"] and ack.payload["response_type"] == "ephemeral"
    asked = emu.slash_command(f"<@{emu.bot_user_id}> how do I invalidate the cache?")
    rid = emu.response_id(asked.response_url)
    [post] = emu.wait_for(lambda: emu.response_posts[rid])
    assert "cache_version" in post["text"]
    harness.idle()
    assert emu.response_posts[emu.response_id(cmd.response_url)] == []
    assert [q for _, q, _, _ in _rows(harness)] == ["how do I invalidate the cache?"]


def test_an_event_whose_ts_is_no_slack_timestamp_is_ignored_and_counted(make_harness):
    """Before, `ts: "abc"`, `"1e30"` and `thread_ts: "nope"` were answered, posting to thread_ts="abc"."""
    harness = make_harness()
    emu = harness.emu
    bot = emu.bot_user_id
    events = [{"type": "app_mention", "user": "U0USER", "text": f"<@{bot}> how to cache?", "channel": "C0GENERAL",
               "ts": ts, **({"thread_ts": thread} if thread else {})}
              for ts, thread in (("abc", None), ("1e30", None), (emu.new_ts(), "nope"))]
    events.append({"type": "message", "channel_type": "im", "user": "U0USER", "text": "how to cache?",
                   "channel": "D0DIRECT01", "ts": "1.5e9"})
    _settled(harness, *[emu.send_event(e) for e in events])
    counted = harness.bot.metrics.malformed_events
    emu.wait_for(lambda: _metric(counted, "app_mention", "message") == len(events))
    assert harness.answers() == [] and emu.reactions == [] and harness.llm.requests == []
    assert _rows(harness) == []
    d = emu.mention(CACHE_Q)  # and the next question is answered
    harness.wait_answers(thread_ts=d.ts)


def test_questions_turned_down_at_once_do_not_use_up_the_rate_limit(make_harness):
    """Before, an empty mention, a too-long one and one of zero-width characters each used one of the
    user's questions a minute, so their real questions after them were refused. (Four turn-downs: as
    many as their own count allows, see test_turn_down_replies_to_one_user_are_rate_limited_...)"""
    # the turn-downs are sent at once: as many in flight as there are (user_in_flight is not tested here)
    harness = make_harness(bot={"user_rate_limit": 4, "user_in_flight": 4}, answer={"max_question_chars": 200})
    emu = harness.emu
    turned_down = [emu.mention(""), emu.mention("why " * 100), emu.mention(INVISIBLE)]
    for d in turned_down:  # the usage for the empty ones, the length limit for the long one
        [reply] = harness.wait_answers(thread_ts=d.ts)
        assert "/flytegpt" in reply["text"] or reply["text"] == messages.TOO_LONG_QUESTION.format(length=399, limit=200)
    cmd = emu.slash_command("why " * 100)
    too_long = emu.wait_for(lambda: emu.response_posts[emu.response_id(cmd.response_url)])
    assert "too long" in too_long[0]["text"]
    asked = [emu.mention(CACHE_Q), emu.mention("how do I use secrets?")]
    for d in asked:
        [answer] = harness.wait_answers(thread_ts=d.ts)
        assert "cache_version" in answer["text"]
    harness.idle()
    assert emu.ephemerals == [] and harness.bot.metrics.rate_limited._value.get() == 0


def test_a_busy_refusal_does_not_use_up_the_rate_limit(make_harness):
    """Before, a question refused because the answer pool was full still counted against its asker."""
    harness = make_harness(bot={"workers": 1, "queue_size": 1, "user_rate_limit": 2})
    gate = threading.Event()
    harness.llm.script(*[Reply(lambda body: (gate.wait(20), ANSWER)[1]) for _ in range(2)])
    emu = harness.emu
    emu.mention("first question about caching", user="U0OTHER1")
    emu.wait_for(lambda: harness.llm.requests)  # one answer runs (held by the model) ...
    emu.mention("second question about caching", user="U0OTHER2")
    emu.wait_for(lambda: harness.bot.pool.pending == 2)  # ... and one waits: the pool is full
    refused = [emu.mention(f"caching question {i}", user="U0ASKER") for i in range(2)]
    for d in refused:
        [busy] = harness.wait_answers(thread_ts=d.ts)
        assert busy["text"] == messages.BUSY
    gate.set()
    emu.wait_for(lambda: len([m for m in harness.answers() if "cache_version" in m["text"]]) == 2, 20)
    harness.idle()
    asked = [emu.mention(f"how do I cache a task, take {i}?", user="U0ASKER") for i in range(2)]
    for d in asked:
        [answer] = harness.wait_answers(thread_ts=d.ts)
        assert "cache_version" in answer["text"]
    assert emu.ephemerals == [] and harness.bot.metrics.rate_limited._value.get() == 0


def test_a_feedback_db_that_is_a_directory_is_refused_at_start(tmp_path):
    """Before, `[bot] feedback_db = "/tmp"` started a bot whose every 👍/👎 failed ("try again later"),
    and wrote its de-dup file beside the directory: `/tmp.seen-events.sqlite3` at the root."""
    from flytegpt.bot.answering import Answerer
    from flytegpt.bot.cli_serve import serve_cmd
    from flytegpt.bot.slack.app import build_app
    from flytegpt.ingest.config import ConfigError, Settings, load_config, sample_config_path

    folder = tmp_path / "data"
    folder.mkdir()
    config_file = tmp_path / "flytegpt.toml"
    config_file.write_text(f'[[sources]]\nname = "docs"\nkind = "docs"\npath = '
                           f'{json.dumps(str(sample_config_path().parent / "docs"))}\n\n'
                           f'[bot]\nfeedback_db = {json.dumps(str(folder))}\n', encoding="utf-8")
    with SlackEmulator() as emu:
        settings = Settings(SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1", SLACK_API_URL=emu.api_url,
                            OPENAI_API_KEY=None)
        config = load_config(config_file).with_store(str(tmp_path / "store"))
        with pytest.raises(ConfigError, match=r"\[bot\] feedback_db .*data is a directory"):
            build_app(config, settings, Answerer(config, settings, lambda: None))
        env = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1", "SLACK_API_URL": emu.api_url}
        result = CliRunner().invoke(serve_cmd, ["--config", str(config_file), "--store", str(tmp_path / "store"),
                                                "--port", "0"], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = [x for x in result.output.splitlines() if x.strip()]
    assert line == (f"Error: [bot] feedback_db {folder} is a directory, not a database file; "
                    f"name a file, e.g. {folder / 'feedback.sqlite3'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "flytegpt.toml"]  # no data.seen-events.sqlite3
    assert list(folder.iterdir()) == [] and seen_path_for(str(folder)) is None


@pytest.mark.parametrize("value", ["sideways:abc", "up:", "down", ""])
def test_a_feedback_click_with_a_value_the_bot_never_sent_is_told_so(make_harness, value):
    """Before, a streamed answer's feedback_buttons click whose value is not "up:<id>"/"down:<id>" got no
    reply at all (the other tampered values are told the answer is unknown)."""
    harness = make_harness()
    emu = harness.emu
    click = emu.block_action(blocks.ACTION_FEEDBACK, value, user="U0VOTER")
    [reply] = emu.wait_for(lambda: emu.response_posts[emu.response_id(click.response_url)])
    assert reply["text"] == messages.VOTE_UNKNOWN_ANSWER and reply["response_type"] == "ephemeral"


def test_envelopes_not_from_slack_are_acked_and_ignored_without_a_traceback(make_harness, caplog):
    """Before, an `event_id` that is a list raised `TypeError: unhashable type` in the de-dup, and an
    `event` that is a string a traceback in Bolt's authorization middleware."""
    harness = make_harness()
    emu = harness.emu
    event = {"type": "app_mention", "user": "U0USER", "text": f"<@{emu.bot_user_id}> how to cache?",
             "channel": "C0GENERAL", "ts": emu.new_ts()}
    with caplog.at_level(logging.WARNING):
        sent = [emu.send_envelope("events_api", dict(emu.event_body(event), event_id=["a"])),
                emu.send_envelope("events_api", dict(emu.event_body({"type": "app_mention"}), event="junk"))]
        for envelope_id in sent:
            assert emu.wait_ack(envelope_id).latency < 3.0
        counted = harness.bot.metrics.malformed_events
        emu.wait_for(lambda: _metric(counted, "app_mention", "unknown") == 2)
        harness.idle()
    assert harness.answers() == [] and harness.llm.requests == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not [r for r in caplog.records if r.exc_info]
    d = emu.mention(CACHE_Q)
    harness.wait_answers(thread_ts=d.ts)


def test_only_the_asker_may_share_a_slash_command_answer(make_harness):
    """Before, "Share in channel" posted any stored answer to the clicker's channel, whoever clicked;
    another user with the answer's id could put someone's private (or DM) answer in a channel."""
    harness = make_harness()
    emu = harness.emu
    emu.add_channel("C0OTHER01", "random")
    d = emu.slash_command("how do I invalidate the cache?", user="U0ASKER")
    [post] = emu.wait_for(lambda: emu.response_posts[emu.response_id(d.response_url)])
    share = [a for b in post["blocks"] if b["type"] == "actions" for a in b["elements"]
             if a["action_id"] == blocks.ACTION_SHARE][0]
    harness.idle()
    click = emu.block_action(blocks.ACTION_SHARE, share["value"], channel="C0OTHER01", user="U0EVE")
    [reply] = emu.wait_for(lambda: emu.response_posts[emu.response_id(click.response_url)])
    assert reply["text"] == messages.SHARE_NOT_YOURS and reply["response_type"] == "ephemeral"
    harness.idle()
    time.sleep(0.3)
    assert emu.response_posts[emu.response_id(click.response_url)] == [reply]
    assert harness.answers() == []  # nothing in any channel
    mine = emu.block_action(blocks.ACTION_SHARE, share["value"], ephemeral=True, user="U0ASKER")
    posts = emu.wait_for(lambda: len(p := emu.response_posts[emu.response_id(mine.response_url)]) >= 2 and p)
    assert posts[0]["response_type"] == "in_channel" and "cache_version" in posts[0]["text"]


def test_channel_chatter_is_not_written_to_the_seen_events_file(make_harness):
    """Before, every message in the bot's channels (joins, edits, other bots, talk without a mention)
    cost an INSERT and a commit in the seen-events file on Bolt's listener thread; now only events
    the bot may answer are recorded, and the twin and the retry of a question still are caught."""
    harness = make_harness()
    emu = harness.emu
    ts = emu.new_ts()
    chatter = [
        emu.message("lunch anyone?", event_id="Ev0CHATTER"),
        emu.message("<@U0ALICE> joined", subtype="channel_join", event_id="Ev0JOIN"),
        emu.send_event({"type": "message", "subtype": "message_changed", "channel": "C0GENERAL", "hidden": True,
                        "ts": emu.new_ts(), "channel_type": "channel",
                        "message": {"type": "message", "user": "U0USER", "text": "edited", "ts": ts}},
                       event_id="Ev0EDIT"),
        emu.message("beep", user="U0OTHERBOT", bot_id="B0OTHER", subtype="bot_message", event_id="Ev0BOT"),
    ]
    _settled(harness, *chatter)
    d = emu.mention(CACHE_Q, event_id="Ev0QUESTION", also_message=True)
    emu.send_event(d.body["event"], event_id="Ev0QUESTION", retry_attempt=1, retry_reason="timeout")
    harness.wait_answers(thread_ts=d.ts)
    harness.idle()
    time.sleep(0.3)
    assert len(harness.answers(thread_ts=d.ts)) == 1
    db = sqlite3.connect(seen_path_for(harness.config.bot.feedback_db))
    keys = {k for (k,) in db.execute("SELECT key FROM seen")}
    db.close()
    assert "event:Ev0QUESTION" in keys and f"message:C0GENERAL:{d.ts}" in keys
    assert not {f"event:{e}" for e in ("Ev0CHATTER", "Ev0JOIN", "Ev0EDIT", "Ev0BOT")} & keys
    assert harness.bot.metrics.duplicates.labels("event")._value.get() == 1


def test_a_retried_malformed_event_is_counted_once(make_harness, caplog):
    """The filters run before de-duplication (so chatter costs no seen-events write); before,
    each Slack retry of a malformed event (same event_id, a new envelope, retry_attempt 1) was
    counted and logged again: the operator's flytegpt_malformed_events_total doubled."""
    harness = make_harness()
    emu = harness.emu
    bad_mention = {"type": "app_mention", "user": "U0USER", "text": f"<@{emu.bot_user_id}> how to cache?",
                   "channel": "C0GENERAL", "ts": "abc"}
    bad_dm = {"type": "message", "channel_type": "im", "user": "U0USER", "text": "how to cache?",
              "channel": "D0DIRECT01", "ts": "1.5e9"}
    junk = dict(emu.event_body({"type": "app_mention"}, "Ev0JUNK"), event="junk")  # `event` is a string
    with caplog.at_level(logging.WARNING):
        sent = []
        for attempt in (0, 1):
            sent += [emu.send_event(bad_mention, event_id="Ev0BADTS", retry_attempt=attempt).envelope_id,
                     emu.send_event(bad_dm, event_id="Ev0BADDM", retry_attempt=attempt).envelope_id,
                     emu.send_envelope("events_api", junk, retry_attempt=attempt)]
        for envelope_id in sent:
            emu.wait_ack(envelope_id)
        counted, duplicates = harness.bot.metrics.malformed_events, harness.bot.metrics.duplicates
        # every delivery is seen once: as a bad event, or as the duplicate of one
        emu.wait_for(lambda: _metric(counted, "app_mention", "message", "unknown")
                     + _metric(duplicates, "event") == len(sent))
        harness.idle()
    assert {kind: _metric(counted, kind) for kind in ("app_mention", "message", "unknown")} == {
        "app_mention": 1, "message": 1, "unknown": 1}
    assert _metric(duplicates, "event") == 3
    assert len([r for r in caplog.records if r.getMessage() == "malformed event ignored"]) == 3
    assert harness.answers() == [] and harness.llm.requests == []
    d = emu.mention(CACHE_Q)  # and the next question is answered
    harness.wait_answers(thread_ts=d.ts)


def test_turn_down_replies_to_one_user_are_rate_limited_without_costing_real_questions(make_harness):
    """Before, questions turned down at once cost no rate-limit slot, so one user could make the
    bot post "empty"/"too long" replies in the channel without end (one chat.postMessage each). They now
    have their own count of `[bot] user_rate_limit` a minute: past it the user gets the rate-limit notice
    (only they see it), the question is logged as rate_limited, and their real questions are untouched."""
    harness = make_harness(bot={"user_rate_limit": 2}, answer={"max_question_chars": 200})
    emu = harness.emu
    spam = [emu.mention("" if i % 2 else "why " * 100, user="U0SPAM") for i in range(5)]
    # every one is settled: a reply in its thread, or the rate-limit notice
    emu.wait_for(lambda: len([d for d in spam if harness.answers(thread_ts=d.ts)]) + len(emu.ephemerals) == 5)
    harness.idle()
    replied = [d for d in spam if harness.answers(thread_ts=d.ts)]
    assert len(replied) == 2  # two turn-down replies in the channel, no more
    for d in replied:  # the usage for an empty mention, the length limit for the long one
        [reply] = harness.answers(thread_ts=d.ts)
        assert "/flytegpt" in reply["text"] or reply["text"] == messages.TOO_LONG_QUESTION.format(length=399, limit=200)
    assert {(e["user"], e["text"][:40]) for e in emu.ephemerals} == {("U0SPAM", messages.rate_limited(1)[:40])}
    assert harness.bot.metrics.rate_limited._value.get() == 3
    # which two were replied to depends on the order they were handled in; the usage replies are no questions
    long_replied = len([d for d in replied if d.ts in {s.ts for s in spam[::2]}])
    assert harness.bot.metrics.questions.labels("mention")._value.get() == long_replied
    other = emu.mention("", user="U0OTHER")  # the count is per user
    [reply] = harness.wait_answers(thread_ts=other.ts)
    assert "/flytegpt" in reply["text"]
    asked = [emu.mention(CACHE_Q, user="U0SPAM"), emu.mention("how do I use secrets?", user="U0SPAM")]
    for d in asked:
        [answer] = harness.wait_answers(thread_ts=d.ts)
        assert "cache_version" in answer["text"]
    harness.idle()
    assert [r for r in emu.reactions if r["timestamp"] in {d.ts for d in spam}] == []
    failures = sorted(failure for _, _, _, failure in _rows(harness) if failure)
    # the too-long ones only: the empty mentions are no questions, not logged (over the limit or not)
    assert failures == ["rate_limited"] * (3 - long_replied) + ["rejected"] * long_replied
