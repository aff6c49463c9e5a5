"""Slack's streaming methods as the emulator enforces them, and the bot's streaming delivery.

The first group checks the stand-in itself with slack_sdk's real WebClient and ChatStream
(so the bot's tests stand on Slack's documented rules: recipients in a channel, 12,000
characters a call, no append after stop, blocks on stopStream, 429 + Retry-After).
"""

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from support.slack_emulator import SlackEmulator


@pytest.fixture()
def emu():
    with SlackEmulator() as e:
        e.add_channel("D0DM", "dm", is_im=True)
        yield e


def client(emu: SlackEmulator) -> WebClient:
    return WebClient(token="xoxb-test", base_url=emu.api_url,
                     retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])


def error_of(call) -> str:
    with pytest.raises(SlackApiError) as err:
        call()
    return err.value.response["error"]


def test_channel_stream_needs_both_recipients(emu):
    c = client(emu)
    root = emu.seed_message("C0GENERAL", "question")
    assert error_of(lambda: c.chat_startStream(channel="C0GENERAL", thread_ts=root["ts"],
                                               markdown_text="hi")) == "missing_recipient_team_id"
    assert error_of(lambda: c.chat_startStream(channel="C0GENERAL", thread_ts=root["ts"], markdown_text="hi",
                                               recipient_team_id="T0EMU")) == "missing_recipient_user_id"
    ok = c.chat_startStream(channel="C0GENERAL", thread_ts=root["ts"], markdown_text="hi",
                            recipient_team_id="T0EMU", recipient_user_id="U0USER")
    assert emu.streamed(ok["ts"]).message["text"] == "hi"


def test_dm_stream_append_stop_and_the_errors_after(emu):
    c = client(emu)
    root = emu.seed_message("D0DM", "question")
    ts = c.chat_startStream(channel="D0DM", thread_ts=root["ts"], markdown_text="**Hel")["ts"]
    c.chat_appendStream(channel="D0DM", ts=ts, markdown_text="lo**")
    assert emu.bot_messages(thread_ts=root["ts"])[0]["streaming"] is True
    assert error_of(lambda: c.chat_update(channel="D0DM", ts=ts, text="x")) == "streaming_state_conflict"
    blocks = [{"type": "context", "elements": [{"type": "mrkdwn", "text": "*Sources*"}]}]
    c.chat_stopStream(channel="D0DM", ts=ts, markdown_text=" world", blocks=blocks)
    [msg] = emu.bot_messages(thread_ts=root["ts"])
    assert msg["text"] == "**Hello** world" and msg["blocks"] == blocks and "streaming" not in msg
    assert error_of(lambda: c.chat_appendStream(channel="D0DM", ts=ts, markdown_text="more")) == \
        "message_not_in_streaming_state"
    assert error_of(lambda: c.chat_stopStream(channel="D0DM", ts=ts)) == "message_not_in_streaming_state"
    assert error_of(lambda: c.chat_appendStream(channel="D0DM", ts="1.000001", markdown_text="x")) == \
        "message_not_found"


def test_length_limits_and_bad_blocks(emu):
    c = client(emu)
    root = emu.seed_message("D0DM", "question")
    assert error_of(lambda: c.chat_startStream(channel="D0DM", thread_ts=root["ts"],
                                               markdown_text="x" * 12001)) == "msg_too_long"
    ts = c.chat_startStream(channel="D0DM", thread_ts=root["ts"], markdown_text="x" * 12000)["ts"]
    assert error_of(lambda: c.chat_appendStream(channel="D0DM", ts=ts, markdown_text="y")) == "msg_too_long"
    bad = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    assert error_of(lambda: c.chat_stopStream(channel="D0DM", ts=ts, blocks=bad)) == "invalid_blocks"
    assert emu.violations


def test_slack_sdk_chat_stream_helper_and_task_chunks(emu):
    from slack_sdk.models.messages.chunk import TaskUpdateChunk

    c = client(emu)
    root = emu.seed_message("C0GENERAL", "question")
    stream = c.chat_stream(channel="C0GENERAL", thread_ts=root["ts"], recipient_team_id="T0EMU",
                           recipient_user_id="U0USER", buffer_size=5)
    stream.append(chunks=[TaskUpdateChunk(id="search", title="Searching the docs", status="in_progress")])
    stream.append(markdown_text="abc")
    stream.append(markdown_text="defgh")
    stream.stop(markdown_text="!")
    assert emu.streamed(stream.ts).message["text"] == "abcdefgh!"
    assert [x.method for x in emu.stream_calls()] == ["chat.startStream", "chat.appendStream", "chat.stopStream"]


def test_streaming_switched_off_and_429_retried(emu):
    c = client(emu)
    root = emu.seed_message("D0DM", "question")
    for error in ("not_allowed", "method_deprecated", "unknown_method"):
        emu.fail_streaming(error)
        assert error_of(lambda: c.chat_startStream(channel="D0DM", thread_ts=root["ts"], markdown_text="x")) == error
    emu.fail_streaming(None)
    ts = c.chat_startStream(channel="D0DM", thread_ts=root["ts"], markdown_text="a")["ts"]
    emu.script_error("chat.appendStream", status=429, retry_after=1)
    c.chat_appendStream(channel="D0DM", ts=ts, markdown_text="b")
    assert len(emu.calls_to("chat.appendStream")) == 2
    assert emu.streamed(ts).message["text"] == "ab"


def test_assistant_thread_methods(emu):
    c = client(emu)
    d = emu.seed_message("D0DM", "", user=emu.bot_user_id, subtype="assistant_app_thread")
    d = type("Thread", (), {"channel": "D0DM", "ts": d["ts"]})
    c.assistant_threads_setSuggestedPrompts(channel_id=d.channel, thread_ts=d.ts,
                                            prompts=[{"title": "Cache", "message": "How do I cache?"}])
    c.assistant_threads_setStatus(channel_id=d.channel, thread_ts=d.ts, status="is searching the docs…")
    c.assistant_threads_setTitle(channel_id=d.channel, thread_ts=d.ts, title="Caching")
    assert [x["method"] for x in emu.assistant_calls] == ["setSuggestedPrompts", "setStatus", "setTitle"]
    assert error_of(lambda: c.assistant_threads_setSuggestedPrompts(
        channel_id=d.channel, thread_ts=d.ts, prompts=[{"title": "t", "message": "m"}] * 5)) == "invalid_arguments"
