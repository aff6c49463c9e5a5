"""The bot as Bolt's own tests drive an app: events handed to `App.dispatch` as socket-mode
`BoltRequest`s, every Web API call answered by a stand-in that returns a bare `{"ok": true}`.

The Socket Mode tests (test_slack_app.py, test_streaming.py) use the emulator, which answers like
Slack. This is the other side: Slack's SDK test servers answer with no `ts`, no `messages`, no
`channel`, and the bot must still ack at once and deliver an answer with its sources.
"""

from __future__ import annotations

import time

import pytest
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from support.canned_slack import AUTH_TEST, CannedSlack
from support.slack_harness import CACHE_Q, tuned

from flytegpt.bot.answering import Answerer
from flytegpt.bot.index_holder import IndexHolder
from flytegpt.bot.slack.app import build_app
from flytegpt.ingest.config import Settings

pytestmark = pytest.mark.timeout(120)
BOT = AUTH_TEST["user_id"]


@pytest.fixture(params=[False, True], ids=["posted", "streamed"])
def bot(request, sample, tmp_path):
    config, searcher = sample
    config = tuned(config, feedback_db=tmp_path / "feedback.sqlite3", bot={"streaming": request.param})
    with CannedSlack() as slack:
        # no OpenAI key: the offline answerer, which quotes the sources
        settings = Settings(SLACK_BOT_TOKEN="xoxb-canned", SLACK_APP_TOKEN="xapp-canned", SLACK_API_URL=slack.url,
                            OPENAI_API_KEY=None)
        holder = IndexHolder(searcher)
        app = build_app(config, settings, Answerer(config, settings, holder.get), holder,
                        client=WebClient(token="xoxb-canned", base_url=slack.url))
        try:
            yield app, slack, config
        finally:
            app.close(wait=False)


def dispatch(app, body: dict):
    return app.app.dispatch(BoltRequest(body=body, mode="socket_mode"))


def wait_for(check, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def delivered_text(slack: CannedSlack) -> str:
    """Everything the bot wrote as an answer: posted messages, stream parts, response_url posts."""
    parts = []
    for method in ("chat.postMessage", "chat.startStream", "chat.appendStream", "chat.stopStream", "webhook"):
        for args in slack.called(method):
            parts += [str(args.get("text") or ""), str(args.get("markdown_text") or ""), str(args.get("blocks") or "")]
    return "\n".join(parts)


def mention(text: str, ts: str = "1700000000.000100") -> dict:
    return {
        "token": "verification", "team_id": AUTH_TEST["team_id"], "api_app_id": "A0CANNED",
        "type": "event_callback", "event_id": f"Ev{ts.replace('.', '')}", "event_time": 1700000000,
        "authorizations": [{"team_id": AUTH_TEST["team_id"], "user_id": BOT, "is_bot": True}],
        "event": {"type": "app_mention", "user": "U0ASKER", "text": f"<@{BOT}> {text}", "ts": ts,
                  "channel": "C0CANNED", "event_ts": ts},
    }


def test_a_mention_is_acked_and_answered_with_its_sources(bot):
    app, slack, _ = bot
    assert dispatch(app, mention(CACHE_Q)).status == 200
    text = wait_for(lambda: "cache" in (t := delivered_text(slack)).lower() and "http" in t and t)
    assert "cache_version" in text or "cache" in text.lower()
    threads = {a.get("thread_ts") for m in ("chat.postMessage", "chat.startStream") for a in slack.called(m)}
    assert threads == {"1700000000.000100"}  # in the asker's thread, never at channel level


def test_the_slash_command_acks_within_its_response_and_answers_to_its_response_url(bot):
    app, slack, _ = bot
    command = {
        "token": "verification", "team_id": AUTH_TEST["team_id"], "team_domain": "canned",
        "channel_id": "C0CANNED", "channel_name": "general", "user_id": "U0ASKER", "user_name": "asker",
        "command": "/flytegpt", "text": CACHE_Q, "api_app_id": "A0CANNED",
        "response_url": slack.url + "webhook", "trigger_id": "1.2.3",
    }
    ack = dispatch(app, command)
    assert ack.status == 200 and "ephemeral" in ack.body  # Slack shows the ack within 3 s
    [answer] = wait_for(lambda: slack.called("webhook"))
    assert "cache" in str(answer).lower() and "http" in str(answer)


def test_a_retried_event_is_answered_once(bot):
    app, slack, _ = bot
    body = mention(CACHE_Q, ts="1700000001.000200")
    for _ in range(3):  # Slack redelivers an event it thinks was not acked
        assert dispatch(app, body).status == 200
    wait_for(lambda: slack.called("chat.postMessage") or slack.called("chat.stopStream"))
    time.sleep(1.0)
    assert len(slack.called("chat.postMessage")) + len(slack.called("chat.startStream")) == 1


def test_half_an_emoji_in_a_question_and_garbage_in_its_thread_still_get_an_answer(bot):
    """A lone surrogate ("\\ud83d", an emoji cut in half) failed the tokenizer and then the feedback
    database ("surrogates not allowed"): the worker died after a generic error reply. Messages of
    the wrong shape in the thread's history (a number, a list as user, a ts that is no number)
    are read as absent."""
    from flytegpt.bot.slack.feedback import FeedbackStore

    app, slack, config = bot
    root = "1700000002.000100"
    slack.responses["conversations.replies"] = {"ok": True, "messages": [
        5, "text", {"ts": "abc", "text": 7}, {"ts": root, "user": ["U0X"], "text": {"a": 1}},
        {"ts": root, "user": "U0ASKER", "text": f"<@{BOT}> How do I cache a task \ud83d?"},
        {"ts": "1700000002.000900", "user": "U0ASKER", "text": "and its version \udfff"},
    ]}
    event = mention("and the cache version \ud83d?", ts="1700000003.000100")
    event["event"]["thread_ts"] = root
    assert dispatch(app, event).status == 200
    wait_for(lambda: "*Sources*" in delivered_text(slack))  # an answer with its sources
    app.close(wait=True)
    [row] = [r for r in FeedbackStore(config.bot.feedback_db).questions() if "cache version" in r["question"]]
    assert row["question"] == "and the cache version \ufffd?"


@pytest.mark.parametrize("value", ["", "no-such-answer", "x" * 3000 + "\ud800", 5])
def test_a_click_on_an_answer_it_does_not_know_is_told_so(bot, value):
    """Button values are the bot's own answer ids; one it does not know (a forged or a stale
    payload, half an emoji, a number) is answered with a notice, never a failed worker."""
    from flytegpt.bot import messages
    from flytegpt.bot.slack import blocks

    app, slack, _ = bot
    for action_id, notice in ((blocks.ACTION_FEEDBACK_UP, messages.VOTE_UNKNOWN_ANSWER),
                              (blocks.ACTION_SHARE, messages.SHARE_GONE)):
        before = len(slack.called("chat.postEphemeral"))
        body = {"type": "block_actions", "team": {"id": AUTH_TEST["team_id"]}, "user": {"id": "U0ASKER"},
                "api_app_id": "A0CANNED", "token": "verification", "trigger_id": "1.2.3",
                "channel": {"id": "C0CANNED"}, "container": {"type": "message", "channel_id": "C0CANNED"},
                "actions": [{"action_id": action_id, "block_id": "b", "type": "button", "value": value,
                             "action_ts": "1700000000.000100"}]}
        assert dispatch(app, body).status == 200
        [reply] = wait_for(lambda: slack.called("chat.postEphemeral")[before:])
        assert reply["text"] == notice and reply["user"] == "U0ASKER"


def test_malformed_assistant_panel_events_are_ignored_or_answered_without_errors(bot, caplog):
    """The panel's events with fields of the wrong type (an `assistant_thread` that is a string,
    a `context` that is a number, a message `text` that is a number) made Bolt log a failed
    listener; now they are read as absent."""
    import logging

    app, slack, _ = bot
    thread = {"user_id": "U0ASKER", "channel_id": "D0PANEL", "thread_ts": "1700000010.000100",
              "context": {"channel_id": "C0CANNED", "team_id": AUTH_TEST["team_id"]}}
    events = [
        {"type": "assistant_thread_started", "assistant_thread": "x", "event_ts": "1700000010.000200"},
        {"type": "assistant_thread_context_changed", "assistant_thread": {**thread, "context": 5},
         "event_ts": "1700000010.000300"},
        {"type": "message", "channel": "D0PANEL", "channel_type": "im", "user": "U0ASKER", "text": 5,
         "ts": "1700000011.000100", "thread_ts": thread["thread_ts"]},
    ]
    with caplog.at_level(logging.ERROR):
        for i, event in enumerate(events):
            body = {**mention("unused", ts=f"17000000{20 + i}.000100"), "event": event}
            assert dispatch(app, body).status == 200
        wait_for(lambda: slack.called("chat.postMessage"))  # the empty question is told what to ask
        app.close(wait=True)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_question_is_read_as_typed_not_as_slack_escapes_it(bot):
    """Slack sends `<` as `&lt;` and links as `<url|label>`: a pasted error was searched, recorded
    and shown to the model with the escapes in it (and shown back escaped twice)."""
    from flytegpt.bot.slack.feedback import FeedbackStore

    app, slack, config = bot
    typed = ("Why `TypeError: '&lt;' not supported between 'str' &amp; 'int'` in "
             "<https://docs.flyte.org/x|the caching docs> for <@U0OTHER>?")
    assert dispatch(app, mention(typed, ts="1700000030.000100")).status == 200
    wait_for(lambda: "http" in delivered_text(slack))
    app.close(wait=True)
    [row] = [r for r in FeedbackStore(config.bot.feedback_db).questions() if "TypeError" in r["question"]]
    assert row["question"] == ("Why `TypeError: '<' not supported between 'str' & 'int'` in "
                               "the caching docs (https://docs.flyte.org/x) for @someone?")  # no user id is stored
