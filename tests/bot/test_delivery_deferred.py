"""End to end: answers Slack keeps refusing for a while are posted later, not lost.

The real Bolt app over Socket Mode against the Slack emulator, real answering (the sample
corpus, the OpenAI-compatible stand-in). The emulator refuses chosen posts (by their text)
beyond the WebClient's own retries (1 try + 3); bot/slack/delivery.py's deferred queue must
then post what is left later, from its own thread, within [bot] deferred_post_s.
"""

from __future__ import annotations

import logging
import time

import pytest
from support.slack_harness import ANSWER, CACHE_Q, CLIENT_TRIES, STANDALONE, harness_factory

from flytegpt.bot import messages
from flytegpt.bot.slack import blocks

pytestmark = pytest.mark.timeout(120)

MAP_ANSWER = "Map tasks keep one cached result per element; change the task's version to refresh them [1]."
LONG = "\n\n".join(f"Step {i}: set `cache_version` and keep the signature stable. " + "More detail here. " * 40
                   for i in range(120))  # ~100,000 characters: several messages


@pytest.fixture
def make_harness(sample, tmp_path):
    """Start a bot (answers posted whole, not streamed): make_harness(bot={...}) tunes it."""
    with harness_factory(sample, tmp_path / "feedback.sqlite3", bot_defaults={"streaming": False}) as make:
        yield make


def _question_in(body: dict) -> str:
    """The question the model is asked (the prompt ends with it)."""
    user = "\n".join(str(m.get("content", "")) for m in body["messages"] if m.get("role") == "user")
    return user.rsplit("Question:", 1)[-1]


def _two_answers(body: dict) -> str:
    """The stand-in model: the map-task question gets MAP_ANSWER, everything else ANSWER."""
    return MAP_ANSWER if "map task" in _question_in(body) else ANSWER


def _is_cache_answer(args: dict) -> bool:
    return "cache_version" in str(args.get("text", ""))


def _say(harness, text: str, **kw):
    d = harness.emu.mention(text, **kw)
    harness.emu.wait_ack(d.envelope_id)
    return d


def _asked_and_told(harness, **script):
    """Ask, have the answer refused as `script` says, and wait for the "Slack did not accept my
    answer" notice in the thread; the question's delivery."""
    harness.emu.script_error("chat.postMessage", match=_is_cache_answer, **script)
    d = _say(harness, CACHE_Q)
    [notice] = harness.wait_answers(thread_ts=d.ts, timeout=30)
    assert notice["text"] == messages.POST_FAILED
    return d


def _posts(harness, predicate=_is_cache_answer) -> list:
    return [c for c in harness.emu.calls_to("chat.postMessage") if predicate(c.args)]


def _button_value(msg: dict) -> str:
    [actions] = [b for b in msg.get("blocks", []) if b["type"] == "actions"]
    return actions["elements"][0]["value"]


def _settled(harness) -> bool:
    """Nothing waits in the deferred queue (waited for: the post lands before its follow-up ends)."""
    return harness.emu.wait_for(lambda: harness.bot.delivery.deferred.pending == 0, timeout=10)


def test_rate_limited_answer_arrives_later_while_the_worker_answers_the_next_question(make_harness):
    # one worker: if the refused answer held it, the second question would wait for the first's fate
    harness = make_harness(bot={"workers": 1, "deferred_post_s": 30})
    harness.llm.reply = _two_answers
    emu = harness.emu
    refused = CLIENT_TRIES + 3  # the client's tries, then three deferred tries, then Slack takes it
    emu.script_error("chat.postMessage", status=429, retry_after=1, times=refused, match=_is_cache_answer)
    first = _say(harness, CACHE_Q)
    second = _say(harness, STANDALONE, user="U0OTHER")
    [other] = harness.wait_answers(thread_ts=second.ts, timeout=30)
    assert other["text"].startswith("Map tasks") and harness.answers(thread_ts=first.ts) == []
    [answer] = harness.wait_answers(thread_ts=first.ts, timeout=30)
    assert "cache_version" in answer["text"] and float(other["ts"]) < float(answer["ts"])
    tries = _posts(harness)
    assert len(tries) == refused + 1  # the refused tries, then the answer, once
    assert all(t.args["thread_ts"] == first.ts for t in tries)
    deferred = tries[CLIENT_TRIES - 1:]
    assert all(b.at - a.at >= 0.9 for a, b in zip(deferred, deferred[1:]))  # Retry-After: 1 honoured
    harness.idle()
    assert [m["text"] for m in harness.answers(thread_ts=first.ts)] == [answer["text"]]
    assert not any(m["text"] == messages.POST_FAILED for m in harness.answers())
    assert harness.post_failed() == 0 and _settled(harness)
    assert harness.bot.metrics.answers.labels("llm")._value.get() == 2
    assert (harness.deferred("kept"), harness.deferred("landed"), harness.deferred("given_up")) == (1, 1, 0)
    assert b"flytegpt_deferred_waiting 0.0" in harness.bot.metrics.render()  # an operator sees the queue
    # stored when it landed: its 👍 counts like any other answer's
    value = _button_value(answer)
    row = emu.wait_for(lambda: harness.bot.feedback.get_answer(value))
    assert row["question"] == CACHE_Q
    click = emu.block_action(blocks.ACTION_FEEDBACK_UP, value, message=answer, user="U0VOTER")
    emu.wait_ack(click.envelope_id)
    [thanks] = emu.wait_for(lambda: emu.response_posts[emu.response_id(click.response_url)])
    assert thanks["text"] == messages.THANKS


def test_answer_refused_half_way_goes_on_from_the_part_not_posted(make_harness):
    harness = make_harness(bot={"deferred_post_s": 30})
    harness.llm.reply = LONG + " [1]"
    emu = harness.emu

    def after_the_first(args: dict) -> bool:
        return "Step 0:" not in str(args.get("text", ""))

    # the first message goes through; the second is refused by the client's tries and one deferred try
    emu.script_error("chat.postMessage", status=429, retry_after=1, times=CLIENT_TRIES + 1, match=after_the_first)
    d = _say(harness, CACHE_Q)
    answers = emu.wait_for(lambda: (a := harness.answers(thread_ts=d.ts))
                           and any(b["type"] == "actions" for b in a[-1].get("blocks", [])) and a, timeout=40)
    harness.idle()
    answers = harness.answers(thread_ts=d.ts)
    texts = [m["text"] for m in answers]
    assert len(texts) >= 3 and len(set(texts)) == len(texts)  # nothing posted twice
    assert sum("Step 0:" in t for t in texts) == 1 and "Step 0:" in texts[0]
    assert "Step 119:" in "\n".join(texts)  # nothing lost
    assert len(_posts(harness, lambda a: "Step 0:" in str(a.get("text", "")))) == 1  # part 1 posted once
    second = _posts(harness, lambda a: str(a.get("text", "")).startswith(texts[1][:200]))
    assert len(second) == CLIENT_TRIES + 2  # refused 5 times, then posted
    assert second[-1].at - second[-2].at >= 0.9
    assert not any(m["text"] == messages.POST_FAILED for m in answers) and harness.post_failed() == 0
    value = _button_value(answers[-1])
    assert emu.wait_for(lambda: harness.bot.feedback.get_answer(value))


def test_answer_refused_for_the_whole_window_tells_the_asker(make_harness):
    harness = make_harness(bot={"deferred_post_s": 2.5})
    emu = harness.emu
    d = _asked_and_told(harness, status=429, retry_after=1, times=1000)
    tries = _posts(harness)
    assert len(tries) >= CLIENT_TRIES + 1  # tried again after the client gave up ...
    [told] = [c for c in emu.calls_to("chat.postMessage") if c.args.get("text") == messages.POST_FAILED]
    assert told.at - tries[CLIENT_TRIES - 1].at >= 1.8  # ... for the window, Retry-After apart, then told
    assert harness.post_failed() == 1 and _settled(harness)
    assert (harness.deferred("kept"), harness.deferred("given_up")) == (1, 1)
    time.sleep(1.5)
    assert len(_posts(harness)) == len(tries)  # and then left alone
    assert [m["text"] for m in harness.answers(thread_ts=d.ts)] == [messages.POST_FAILED]
    assert harness.bot.feedback.get_answer(_button_value(tries[0].args)) is None  # never shown: not stored


# (`invalid_blocks` and the other refusals of what a reply holds get one more try as plain text:
# test_slack_post_failures.py)
@pytest.mark.parametrize("error", ["channel_not_found", "is_archived", "invalid_auth"])
def test_a_refusal_that_will_not_pass_is_not_deferred(make_harness, error):
    harness = make_harness(bot={"deferred_post_s": 30})
    _asked_and_told(harness, status=200, error=error, retry_after=None, times=1)
    assert len(_posts(harness)) == 1 and harness.post_failed() == 1  # not retried, told at once
    assert _settled(harness)
    time.sleep(1.5)
    assert len(_posts(harness)) == 1


def test_deferral_off_tells_the_asker_at_once(make_harness):
    harness = make_harness(bot={"deferred_post_s": 0})
    _asked_and_told(harness, status=429, retry_after=1, times=1000)
    assert len(_posts(harness)) == CLIENT_TRIES and harness.post_failed() == 1
    assert _settled(harness)
    time.sleep(2.0)
    assert len(_posts(harness)) == CLIENT_TRIES


def test_slash_command_answer_is_posted_later_through_its_response_url(make_harness):
    harness = make_harness(bot={"deferred_post_s": 30})
    emu = harness.emu
    emu.script_error("response_url", status=429, retry_after=1, times=CLIENT_TRIES + 1, match=_is_cache_answer)
    d = emu.slash_command("how do I invalidate the cache?")
    emu.wait_ack(d.envelope_id)
    rid = emu.response_id(d.response_url)
    [post] = emu.wait_for(lambda: emu.response_posts[rid], timeout=30)
    assert "cache_version" in post["text"] and emu.response_failures == CLIENT_TRIES + 1
    harness.idle()
    time.sleep(0.5)
    assert len(emu.response_posts[rid]) == 1  # within Slack's 5 posts: the answer, once
    assert harness.post_failed() == 0 and _settled(harness)
    value = _button_value(post)
    assert emu.wait_for(lambda: harness.bot.feedback.get_answer(value))


def _deferred_once(harness, **script):
    """Ask, have the answer refused past the client's tries (500s: quick client retries, then a
    deferred wait of 5 s or more), and wait until it waits in the deferred queue."""
    harness.emu.script_error("chat.postMessage", status=500, error="internal_error", retry_after=None,
                             match=_is_cache_answer, **script)
    d = _say(harness, CACHE_Q)
    harness.emu.wait_for(lambda: harness.bot.delivery.deferred.pending == 1, timeout=30)
    return d


def test_shutdown_gives_a_waiting_answer_its_last_try(make_harness):
    from flytegpt.bot.slack.shutdown import drain

    harness = make_harness(bot={"deferred_post_s": 60})
    d = _deferred_once(harness, times=CLIENT_TRIES)  # Slack takes the next try
    kept = time.monotonic()
    assert drain(harness.bot, time.monotonic() + 5)
    assert time.monotonic() - kept < 4.0  # not waiting for its scheduled try (5 s or more away)
    [answer] = harness.answers(thread_ts=d.ts)
    assert "cache_version" in answer["text"] and harness.post_failed() == 0
    assert harness.bot.feedback.get_answer(_button_value(answer)) is not None


def test_shutdown_logs_the_answers_slack_still_refuses(make_harness, caplog):
    from flytegpt.bot.slack.shutdown import drain

    harness = make_harness(bot={"deferred_post_s": 60})
    d = _deferred_once(harness, times=1000)
    with caplog.at_level(logging.ERROR, logger="flytegpt.bot.slack.delivery"):
        drain(harness.bot, time.monotonic() + 5)
    [dropped] = [r for r in caplog.records if r.getMessage() == "stopping: answers Slack had refused were dropped"]
    # (the redaction filter, once installed by an earlier test's logging set-up, writes extras as text)
    assert dropped.dropped in (1, "1") and str(dropped.channels) == str(["C0GENERAL"])
    assert len(_posts(harness)) == CLIENT_TRIES + 1  # the last try was made
    assert harness.post_failed() == 1 and _settled(harness) and harness.deferred("dropped") == 1
    assert harness.answers(thread_ts=d.ts) == []


# --- where a slash command's answer goes when its response_url does not take it -------------

def _ephemeral_answers(emu) -> list[dict]:
    return [e for e in emu.ephemerals if "cache_version" in str(e.get("text", ""))]


@pytest.mark.parametrize("status", [404, 410])
def test_a_slash_answer_whose_response_url_is_gone_reaches_the_asker_privately(make_harness, status):
    """An expired or unknown response_url: the answer (and then the failure notice) went to the
    same dead URL, and the asker saw "Looking into it…" for good."""
    harness = make_harness(bot={"deferred_post_s": 30})
    emu = harness.emu
    emu.script_error("response_url", status=status, error="no_such_url", retry_after=None, times=100)
    d = emu.slash_command("how do I invalidate the cache?")
    emu.wait_ack(d.envelope_id)
    [answer] = emu.wait_for(lambda: _ephemeral_answers(emu), timeout=30)
    assert (answer["channel"], answer["user"]) == ("C0GENERAL", "U0USER")  # for the asker only
    assert not emu.calls_to("chat.postMessage")  # never public
    assert harness.post_failed() == 0 and _settled(harness)
    assert emu.wait_for(lambda: harness.bot.feedback.get_answer(_button_value(answer)))  # its 👍/👎 count


def test_a_slash_answer_nobody_takes_is_logged_as_failed(make_harness):
    """Neither the response_url nor chat.postEphemeral (the bot is not in that channel): counted,
    and the question is in the log the maintainers' report reads, not missing from it."""
    harness = make_harness(bot={"deferred_post_s": 30})
    emu = harness.emu
    emu.script_error("response_url", status=404, error="no_such_url", retry_after=None, times=100)
    emu.script_error("chat.postEphemeral", status=200, error="not_in_channel", retry_after=None, times=100)
    d = emu.slash_command("how do I invalidate the cache?")
    emu.wait_ack(d.envelope_id)
    assert emu.wait_for(lambda: harness.post_failed() == 1, timeout=30)
    harness.idle()
    [row] = emu.wait_for(lambda: harness.logged_questions(), timeout=10)
    assert (row["question"], row["outcome"], row["failure"]) == ("how do I invalidate the cache?", "failed",
                                                                 "post_failed")
    assert not emu.calls_to("chat.postMessage")


def test_an_answer_slack_refused_is_in_the_question_log(make_harness):
    harness = make_harness(bot={"deferred_post_s": 30})
    emu = harness.emu
    emu.script_error("chat.postMessage", status=200, error="not_in_channel", retry_after=None, times=1,
                     match=_is_cache_answer)
    d = _say(harness, CACHE_Q)
    [notice] = harness.wait_answers(thread_ts=d.ts, timeout=30)
    assert notice["text"] == messages.POST_FAILED
    harness.idle()
    [row] = harness.logged_questions()
    assert (row["question"], row["outcome"], row["failure"]) == (CACHE_Q, "failed", "post_failed")
    assert row["sources"] != "[]"  # the sources the answer would have cited


def test_a_slash_command_without_a_response_url_is_not_answered_in_public(make_harness):
    """Real Slack always sends one; a proxy or a test client may not. The answer was posted with
    chat.postMessage, in the channel for everyone, to a question asked in private."""
    harness = make_harness()
    emu = harness.emu
    payload = {"token": "verification-token", "team_id": emu.team_id, "channel_id": "C0GENERAL",
               "user_id": "U0USER", "user_name": "u0user", "command": "/flytegpt",
               "text": "how do I invalidate the cache?", "api_app_id": emu.app_id, "trigger_id": "1.trigger"}
    envelope_id = emu.send_envelope("slash_commands", payload, accepts_response_payload=True)
    emu.wait_ack(envelope_id)
    [answer] = emu.wait_for(lambda: _ephemeral_answers(emu), timeout=30)
    assert answer["user"] == "U0USER"
    assert not emu.calls_to("chat.postMessage")
