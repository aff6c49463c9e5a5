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


# --- the bot, end to end: real Bolt app, real Answerer + ChatOpenAI, emulator + model stand-in ---

import sqlite3  # noqa: E402

from support.openai_server import Slow  # noqa: E402
from support.slack_harness import ANSWER, CACHE_Q, CLIENT_TRIES, BotHarness, harness_factory, llm_reply  # noqa: E402

from flytegpt.bot.answering.live import CLEAN_EVERY  # noqa: E402
from flytegpt.bot.slack import blocks  # noqa: E402
from flytegpt.bot.slack.stream import MAX_MESSAGE_MARKDOWN  # noqa: E402

LONG_ANSWER = ("Caching in Flyte keys a task's outputs by its inputs and its `cache_version` [1]. " * 18).strip()


@pytest.fixture
def make_bot(sample, tmp_path):
    with harness_factory(sample, tmp_path / "feedback.sqlite3", bot_defaults={"streaming": True}) as make:
        yield make


@pytest.fixture
def bot(make_bot):
    return make_bot()


def slow_model(h: BotHarness, text: str = LONG_ANSWER, tokens: int = 20, delay: float = 0.05) -> None:
    """The answer model writes `text` in `tokens` pieces; the condense model answers at once."""
    h.llm.reply = lambda body: STANDALONE_OR(body, text)
    h.llm.token_delay, h.llm.stream_tokens = delay, tokens


def STANDALONE_OR(body: dict, text: str) -> str:  # noqa: N802 - reads as a sentence at the call site
    reply = llm_reply(body)
    return text if reply == ANSWER else reply


def finished(h: BotHarness, thread_ts: str, n: int = 1, timeout: float = 30.0) -> list[dict]:
    """The bot's messages in a thread once `n` of them exist and none is still streaming."""
    return h.emu.wait_for(lambda: (m := h.answers(thread_ts=thread_ts)) and len(m) >= n
                          and not any(x.get("streaming") for x in m) and m, timeout)


def kinds(msg: dict) -> list[str]:
    return [b["type"] for b in msg.get("blocks") or []]


def test_mention_streams_with_sources_and_feedback_buttons(bot):
    emu = bot.emu
    slow_model(bot)
    d = emu.mention(CACHE_Q)
    [msg] = finished(bot, d.ts)
    calls = emu.stream_calls()
    start, stop = calls[0], calls[-1]
    assert start.method == "chat.startStream" and stop.method == "chat.stopStream"
    assert start.args["thread_ts"] == d.ts
    assert (start.args["recipient_team_id"], start.args["recipient_user_id"]) == ("T0EMU", "U0USER")
    appends = [c for c in calls if c.method == "chat.appendStream"]
    assert appends, "the answer grew in place"
    # what was shown first is the start of the answer, and it was shown while the model was writing
    assert LONG_ANSWER.startswith(start.args["markdown_text"])
    assert stop.at - start.at > 0.3
    assert msg["text"] == LONG_ANSWER and emu.calls_to("chat.postMessage") == []
    # buffered: 20 model pieces, far fewer Slack calls, never two within half a second
    assert len(calls) < 20
    gated = [start, *appends]
    assert all(b.at - a.at >= 0.45 for a, b in zip(gated, gated[1:]))
    # sources and Block Kit feedback buttons under the answer
    assert kinds(msg) == ["context", "context_actions"]
    assert msg["blocks"][0]["elements"][0]["text"].startswith("*Sources*\n[1] ")
    buttons = msg["blocks"][1]["elements"][0]
    assert buttons["type"] == "feedback_buttons" and buttons["action_id"] == blocks.ACTION_FEEDBACK
    assert emu.wait_for(lambda: [r for r in emu.reactions if r["timestamp"] == d.ts and r["name"] == "eyes"])
    # a click on 👍 is stored in the feedback database with the answer
    bot.idle()  # the answer is stored right after it is posted
    click = emu.block_action(blocks.ACTION_FEEDBACK, buttons["positive_button"]["value"], message=msg,
                             user="U0VOTER")
    [thanks] = emu.wait_for(lambda: emu.response_posts[emu.response_id(click.response_url)])
    assert thanks["text"] == "Thanks for the feedback!"
    db = sqlite3.connect(bot.config.bot.feedback_db)
    rows = db.execute("SELECT v.vote, v.user, a.question, a.answer FROM votes v JOIN answers a "
                      "ON a.id = v.answer_id").fetchall()
    assert rows == [("up", "U0VOTER", CACHE_Q, LONG_ANSWER)]
    assert streamed_count(bot, "streamed") == 1


def streamed_count(h: BotHarness, outcome: str) -> float:
    """flytegpt_streamed_answers_total{outcome} as /metrics shows it."""
    return h.bot.metrics.streamed.labels(outcome)._value.get()


def test_thread_follow_up_streams_with_the_thread_as_context(bot):
    emu = bot.emu
    first = emu.mention(CACHE_Q)
    finished(bot, first.ts)
    slow_model(bot, text="For map tasks set `cache_version` on the mapped task [1].", tokens=5, delay=0.02)
    emu.message("and for map tasks?", thread_ts=first.ts)
    answers = finished(bot, first.ts, n=2)
    assert answers[1]["text"] == "For map tasks set `cache_version` on the mapped task [1]."
    condense = [r for r in bot.llm.requests if "standalone question" in str(r.messages[0]["content"])]
    assert condense and ANSWER.split(" [")[0].replace("**", "") in condense[-1].text_of("user").replace("*", "")
    starts = emu.calls_to("chat.startStream")
    assert len(starts) == 2 and starts[1].args["thread_ts"] == first.ts
    assert emu.calls_to("chat.postMessage") == []


def test_direct_message_streams_as_a_reply_without_recipients(bot):
    emu = bot.emu
    emu.add_channel("D0DIRECT01", "dm", is_im=True)
    d = emu.message(CACHE_Q, channel="D0DIRECT01", channel_type="im")
    [msg] = finished(bot, d.ts)
    assert msg["channel"] == "D0DIRECT01" and msg["text"] == ANSWER
    start = emu.calls_to("chat.startStream")[0].args
    assert "recipient_user_id" not in start and start["thread_ts"] == d.ts
    # a follow-up written at the DM's top level, not in that thread, still continues it
    follow = emu.message("and for map tasks?", channel="D0DIRECT01", channel_type="im")
    finished(bot, follow.ts)
    condense = [r for r in bot.llm.requests if "standalone question" in str(r.messages[0]["content"])]
    assert condense and CACHE_Q in condense[-1].text_of("user")


def test_assistant_panel(bot):
    emu = bot.emu
    opened = emu.open_assistant_thread(context={"channel_id": "C0GENERAL", "team_id": "T0EMU"})
    [prompts] = emu.wait_for(lambda: emu.assistant_calls_to("setSuggestedPrompts"))
    assert [p["message"] for p in prompts["prompts"]] == bot.config.bot.suggested_prompts
    assert prompts["thread_ts"] == opened.ts
    slow_model(bot, text=ANSWER, tokens=6, delay=0.05)
    d = emu.assistant_message(CACHE_Q, opened.ts)
    [msg] = finished(bot, opened.ts)
    assert msg["text"] == ANSWER and kinds(msg) == ["context", "context_actions"]
    [title] = emu.assistant_calls_to("setTitle")
    assert title["title"] == CACHE_Q[:79] + "…" and title["thread_ts"] == opened.ts
    statuses = [c["status"] for c in emu.assistant_calls_to("setStatus")]
    assert statuses[0] == "is searching the docs, code and Slack history…" and "writing" in statuses[-1]
    # the status came before the answer's first words
    first_status = emu.assistant_calls_to("setStatus")[0]["_at"]
    assert first_status < emu.calls_to("chat.startStream")[0].at
    assert not [r for r in emu.reactions if r["timestamp"] == d.ts]  # the status replaces 👀
    emu.change_assistant_context(opened.ts, context={"channel_id": "C0OTHER", "team_id": "T0EMU"})
    emu.wait_for(lambda: bot.bot.panel.contexts.get(opened.ts, {}).get("channel_id") == "C0OTHER")
    assert emu.calls_to("chat.update") == []  # the context is not written into a message


def test_slash_command_keeps_its_response_url(bot):
    emu = bot.emu
    d = emu.slash_command("how do I invalidate the cache?")
    rid = emu.response_id(d.response_url)
    [post] = emu.wait_for(lambda: emu.response_posts[rid])
    assert post["response_type"] == "ephemeral" and "cache_version" in post["text"]
    assert blocks.ACTION_SHARE in str(post["blocks"])
    assert emu.stream_calls() == []


@pytest.mark.parametrize("error", ["not_allowed", "method_deprecated", "unknown_method"])
def test_no_streaming_means_one_posted_answer(bot, error):
    emu = bot.emu
    emu.fail_streaming(error)
    slow_model(bot, text=ANSWER, tokens=6, delay=0.02)
    d = emu.mention(CACHE_Q)
    [msg] = bot.wait_answers(thread_ts=d.ts)
    bot.idle()
    assert len(emu.calls_to("chat.startStream")) == 1  # tried once, then never again for this answer
    assert [c.method for c in emu.stream_calls()] == ["chat.startStream"] and emu.streams == {}
    assert len(bot.answers(thread_ts=d.ts)) == 1 and len(emu.calls_to("chat.postMessage")) == 1
    assert "cache_version" in msg["text"] and "actions" in kinds(msg)
    assert streamed_count(bot, "refused") == 1 and streamed_count(bot, "streamed") == 0


def test_answer_longer_than_a_message_continues_in_a_second_one(bot):
    emu = bot.emu
    para = "Flyte caches a task's outputs when `cache=True` and the `cache_version` is unchanged [1]. " * 12
    code = "```python\n" + "\n".join(f"@task(cache=True, cache_version='{i}')\ndef t{i}(): ..." for i in range(150)) + "\n```"
    text = "\n\n".join([para.strip()] * 10 + [code] + [para.strip()] * 3)
    assert len(text) > MAX_MESSAGE_MARKDOWN + 2000
    slow_model(bot, text=text, tokens=30, delay=0.01)
    d = emu.mention(CACHE_Q)
    msgs = finished(bot, d.ts, n=2)
    assert len(msgs) == 2 and all(len(m["text"]) <= MAX_MESSAGE_MARKDOWN for m in msgs)
    assert "blocks" not in msgs[0] and kinds(msgs[1]) == ["context", "context_actions"]
    # every message is valid Markdown on its own: code fences are balanced
    assert all(m["text"].count("```") % 2 == 0 for m in msgs)
    joined = msgs[0]["text"] + "\n\n" + msgs[1]["text"]
    assert joined.replace("```\n```python\n", "").replace("\n```\n\n```python", "\n").replace(" ", "") \
        .replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert emu.calls_to("chat.postMessage") == []


def test_rate_limited_append_is_retried_after_retry_after(bot):
    emu = bot.emu
    slow_model(bot, tokens=20, delay=0.05)
    emu.script_error("chat.appendStream", status=429, retry_after=1)
    d = emu.mention(CACHE_Q)
    [msg] = finished(bot, d.ts)
    assert msg["text"] == LONG_ANSWER and kinds(msg) == ["context", "context_actions"]
    first, second = emu.calls_to("chat.appendStream")[:2]
    assert second.at - first.at >= 0.9 and first.args == second.args  # the same text, sent again
    assert emu.calls_to("chat.postMessage") == []


def test_streamed_text_is_fixed_when_the_final_answer_differs(bot):
    emu = bot.emu
    # a code span still open reads "[9]" as a citation of no source (dropped from the stream);
    # once it closes, "[9]" is code and stays: the shown text changed, so it is replaced
    # (longer than live.CLEAN_EVERY, so a cleaning pass sees the span open)
    span = "`settings [9] of the decorator, and a few more of them, written out in full so the span stays open a while`"
    assert span.index("`", 1) - span.index("[9]") > CLEAN_EVERY + 20
    slow_model(bot, text=LONG_ANSWER + f" Or set {span}.", tokens=200, delay=0.005)
    d = emu.mention(CACHE_Q)
    [update] = emu.wait_for(lambda: emu.calls_to("chat.update"), timeout=30)
    [msg] = finished(bot, d.ts)
    assert span in msg["text"]
    assert "context" in kinds(msg) and ("context_actions" in kinds(msg) or "actions" in kinds(msg))
    bot.idle()  # the outcome is counted right after the last Slack call: wait for the job to end
    assert streamed_count(bot, "replaced") == 1
    assert emu.calls_to("chat.postMessage") == [] and len(bot.answers(thread_ts=d.ts)) == 1


def test_the_models_own_source_list_is_never_streamed(bot):
    """The model appends a source list of its own (the bot lists the sources itself): it used to
    stream as text and be taken back at the end by replacing the whole message."""
    emu = bot.emu
    slow_model(bot, text=ANSWER + "\n\n**Sources:**\n[1] https://made.up/page\n- [7] nowhere", tokens=40,
               delay=0.01)
    d = emu.mention(CACHE_Q)
    [msg] = finished(bot, d.ts)
    appended = "".join(str(c.args.get("markdown_text", "")) for c in emu.calls_to("chat.appendStream"))
    assert "Sour" not in appended and "made.up" not in str(msg) and "[7]" not in msg["text"]
    assert "cache_version" in msg["text"] and "[1]" in msg["text"]
    bot.idle()
    assert emu.calls_to("chat.update") == [] and streamed_count(bot, "streamed") == 1


def test_model_text_cannot_ping_the_channel(bot):
    emu = bot.emu
    slow_model(bot, text="Ask <!channel> or <@U0ADMIN> about `cache_version` [1].", tokens=4, delay=0.01)
    d = emu.mention(CACHE_Q)
    [msg] = finished(bot, d.ts)
    assert "<!channel>" not in msg["text"] and "<@U0ADMIN>" not in msg["text"]
    assert "channel" in msg["text"] and "cache_version" in msg["text"]


def test_offline_and_not_found_answers_are_one_streamed_text(make_bot, sample):
    from flytegpt.bot.answering import Answerer
    from flytegpt.bot.answering import prompts as answer_prompts
    from flytegpt.ingest.config import Settings

    config, searcher = sample
    offline = Answerer(config, Settings(), lambda: searcher)
    h = make_bot(answerer=offline)
    d = h.emu.mention(CACHE_Q)
    [msg] = finished(h, d.ts)
    assert msg["text"].startswith(answer_prompts.OFFLINE_HEADER)
    assert [c.method for c in h.emu.stream_calls()] == ["chat.startStream", "chat.stopStream"]
    d = h.emu.mention("best pizza in new york?")
    [msg] = finished(h, d.ts)
    assert msg["text"].startswith(answer_prompts.NOT_FOUND)


def test_streaming_can_be_switched_off(make_bot):
    h = make_bot(bot={"streaming": False})
    d = h.emu.mention(CACHE_Q)
    [msg] = h.wait_answers(thread_ts=d.ts)
    assert h.emu.stream_calls() == [] and "actions" in kinds(msg)


def test_slack_app_manifest_matches_what_the_bot_handles():
    """manifests/slack-app-manifest.json is what users paste into "Create app from manifest"."""
    import json

    from support.paths import ROOT

    from flytegpt.bot import messages
    from flytegpt.ingest.config import BotConfig

    manifest = json.loads((ROOT / "manifests" / "slack-app-manifest.json").read_text())
    settings, features = manifest["settings"], manifest["features"]
    assert settings["socket_mode_enabled"] is True and settings["interactivity"]["is_enabled"] is True
    assert set(settings["event_subscriptions"]["bot_events"]) >= {
        "app_mention", "message.im", "message.channels", "assistant_thread_started",
        "assistant_thread_context_changed"}
    # chat:write covers chat.postMessage and the streaming methods; assistant:write the panel;
    # channels:read and groups:read look up [bot] allowed_channels given by name (public, private)
    assert set(manifest["oauth_config"]["scopes"]["bot"]) >= {
        "app_mentions:read", "assistant:write", "chat:write", "reactions:write", "channels:history",
        "im:history", "commands", "channels:read", "groups:read"}
    [command] = features["slash_commands"]
    assert command["command"] == messages.COMMAND
    prompts = features["assistant_view"]["suggested_prompts"]
    assert [p["message"] for p in prompts] == BotConfig().suggested_prompts


def test_panel_question_delivered_twice_is_answered_once(bot):
    emu = bot.emu
    opened = emu.open_assistant_thread()
    d = emu.assistant_message(CACHE_Q, opened.ts)
    retry = emu.send_event(d.body["event"], event_id=d.body["event_id"], retry_attempt=1, retry_reason="timeout")
    emu.wait_ack(retry.envelope_id)
    finished(bot, opened.ts)
    bot.idle()
    assert len(bot.answers(thread_ts=opened.ts)) == 1 and len(emu.calls_to("chat.startStream")) == 1


def test_model_that_stops_half_way_ends_the_same_message_with_a_note(make_bot):
    from flytegpt.bot.answering import prompts as answer_prompts

    h = make_bot(answer={"timeout_s": 1.0})
    h.llm.script(Slow(LONG_ANSWER, tokens=20, delay=0.02, hang_after=8))
    d = h.emu.mention(CACHE_Q)
    [msg] = finished(h, d.ts)
    assert msg["text"].startswith(LONG_ANSWER[:200]) and msg["text"].endswith(answer_prompts.MODEL_STOPPED_NOTE)
    assert kinds(msg) == ["context", "context_actions"]
    assert h.emu.calls_to("chat.postMessage") == [] and len(h.llm.requests) == 1


def test_stopping_ends_a_half_shown_answer_in_its_own_stream(make_bot):
    """SIGTERM while an answer is streaming: the shown text ends with the restart notice and the
    stream is stopped; no second message, and the answer's late end posts nothing."""
    import time

    from flytegpt.bot import messages
    from flytegpt.bot.slack import shutdown

    h = make_bot()
    h.llm.script(Slow(LONG_ANSWER, tokens=20, delay=0.02, hang_after=8))  # the model hangs half-way
    d = h.emu.mention(CACHE_Q)
    h.emu.wait_for(lambda: h.emu.calls_to("chat.startStream"), timeout=30)
    assert shutdown.drain(h.bot, deadline=time.monotonic() + 0.5) is False  # what the SIGTERM handler runs
    [msg] = finished(h, d.ts)
    assert msg["text"].startswith(LONG_ANSWER[:40]) and msg["text"].endswith(messages.RESTARTED)
    assert h.emu.streamed(msg["ts"]).state == "stopped"
    assert h.emu.calls_to("chat.postMessage") == [] and h.bot.metrics.restart_notices._value.get() == 1
    h.llm.close()  # the hung model call ends: the job gives up without a second word
    assert h.bot.pool.wait_idle(30)
    assert len(h.answers(thread_ts=d.ts)) == 1 and h.emu.violations == []


def test_stream_that_slack_ends_half_way_is_replaced_in_place(bot):
    emu = bot.emu
    slow_model(bot, tokens=20, delay=0.05)
    # the second append finds the stream gone (Slack ends streams on its own after a while)
    emu.script_error("chat.appendStream", status=200, error="message_not_in_streaming_state", retry_after=None,
                     times=1)
    d = emu.mention(CACHE_Q)
    emu.wait_for(lambda: emu.calls_to("chat.update"), timeout=30)
    bot.idle()
    [msg] = bot.answers(thread_ts=d.ts)
    assert len(emu.calls_to("chat.appendStream")) == 1  # nothing more was sent into the broken stream
    assert "cache_version" in msg["text"] and msg["text"].count("Caching in Flyte") == LONG_ANSWER.count(
        "Caching in Flyte")
    assert [b["type"] for b in msg["blocks"]][-2:] == ["context", "actions"]  # the ordinary rendering
    assert emu.calls_to("chat.postMessage") == []


def test_a_stream_of_two_messages_that_breaks_becomes_one_answer(bot):
    """A long answer whose stream broke at its end is rewritten into its ordinary rendering:
    each streamed message updated in place, and what the rendering holds beyond them posted
    after them (an ordinary message keeps its blocks to 10,000 characters of text, Slack's
    `msg_blocks_too_long`, a streamed one holds 12,000 of Markdown), never a second answer.
    (Before, one ordinary message took it all and the second streamed one was deleted.)"""
    emu = bot.emu
    para = "Flyte caches a task's outputs when `cache=True` and the `cache_version` is unchanged [1]. " * 12
    text = "\n\n".join([para.strip()] * 17)
    assert len(text) > MAX_MESSAGE_MARKDOWN + 2000
    slow_model(bot, text=text, tokens=30, delay=0.01)
    # the last stopStream (the one with the sources and buttons) finds the stream gone
    emu.script_error("chat.stopStream", status=200, error="message_not_in_streaming_state", retry_after=None,
                     match=lambda args: "blocks" in args)
    d = emu.mention(CACHE_Q)
    msgs = emu.wait_for(lambda: (m := bot.answers(thread_ts=d.ts)) and "actions" in kinds(m[-1]) and m, timeout=30)
    bot.idle()
    msgs = bot.answers(thread_ts=d.ts)
    streamed = [c.args for c in emu.calls_to("chat.startStream")]
    assert len(streamed) == 2  # the answer had reached its second streamed message
    updated = [c.args["ts"] for c in emu.calls_to("chat.update")]
    assert updated == [m["ts"] for m in msgs[:2]] and set(updated) == set(emu.streams)  # in place, in order
    assert emu.calls_to("chat.delete") == [] and len(emu.calls_to("chat.postMessage")) == len(msgs) - 2
    assert "".join(m["text"] for m in msgs).count("cache_version") == text.count("cache_version")
    assert kinds(msgs[-1])[-2:] == ["context", "actions"] and streamed_count(bot, "replaced") == 1


# --- a broken stream whose repair Slack refuses: delivery's deferred queue finishes it -------

def _broken_stream(make_bot, **bot):
    """A bot whose answer streams, then breaks at the second append (Slack ended the stream)."""
    h = make_bot(bot=bot)
    slow_model(h, tokens=20, delay=0.05)
    h.emu.script_error("chat.appendStream", status=200, error="message_not_in_streaming_state", retry_after=None,
                       times=1)
    return h


def _feedback_value(blocks_: list[dict]) -> str:
    [actions] = [b for b in blocks_ if b["type"] == "actions"]
    return actions["elements"][0]["value"]


def _notices(h: BotHarness) -> list:
    from flytegpt.bot import messages

    return [c for c in h.emu.calls_to("chat.postMessage") if c.args.get("text") == messages.POST_FAILED]


@pytest.mark.timeout(60)
def test_broken_stream_whose_repair_slack_refuses_for_a_while_is_repaired_later(make_bot):
    from flytegpt.bot import messages

    h = _broken_stream(make_bot, deferred_post_s=30)
    emu = h.emu
    refused = CLIENT_TRIES + 2  # the client's tries, then two deferred tries (Retry-After: 1), then Slack takes it
    emu.script_error("chat.update", status=503, error="internal_error", retry_after=1, times=refused)
    d = emu.mention(CACHE_Q)
    [msg] = emu.wait_for(lambda: (m := h.answers(thread_ts=d.ts)) and "actions" in kinds(m[0]) and m, timeout=40)
    h.idle()
    assert h.emu.wait_for(lambda: h.bot.delivery.deferred.pending == 0)
    # the one streamed message, rewritten in place into the final ordinary rendering
    [start] = emu.calls_to("chat.startStream")
    updates = emu.calls_to("chat.update")
    assert len(updates) == refused + 1 and {u.args["ts"] for u in updates} == {msg["ts"]}
    deferred = updates[CLIENT_TRIES - 1:]
    assert all(b.at - a.at >= 0.9 for a, b in zip(deferred, deferred[1:]))  # Retry-After honoured
    assert [m["ts"] for m in h.answers(thread_ts=d.ts)] == [msg["ts"]] and start.args["thread_ts"] == d.ts
    assert msg["text"].count("Caching in Flyte") == LONG_ANSWER.count("Caching in Flyte")
    assert kinds(msg)[-2:] == ["context", "actions"] and "*Sources*" in str(msg["blocks"])
    assert emu.calls_to("chat.postMessage") == []  # never a second answer
    assert (h.deferred("kept"), h.deferred("landed"), h.deferred("given_up")) == (1, 1, 0)
    assert h.post_failed() == 0 and streamed_count(h, "replaced") == 1
    # counted as answered once repaired: stored, and its 👍 is recorded
    value = _feedback_value(msg["blocks"])
    row = emu.wait_for(lambda: h.bot.feedback.get_answer(value))
    assert row["question"] == CACHE_Q and h.bot.metrics.answers.labels("llm")._value.get() == 1
    click = emu.block_action(blocks.ACTION_FEEDBACK_UP, value, message=msg, user="U0VOTER")
    emu.wait_ack(click.envelope_id)
    [thanks] = emu.wait_for(lambda: emu.response_posts[emu.response_id(click.response_url)])
    assert thanks["text"] == messages.THANKS
    db = sqlite3.connect(h.config.bot.feedback_db)
    assert db.execute("SELECT v.vote, v.user, a.question FROM votes v JOIN answers a ON a.id = v.answer_id") \
        .fetchall() == [("up", "U0VOTER", CACHE_Q)]


@pytest.mark.timeout(60)
def test_broken_stream_whose_repair_is_refused_for_the_whole_window_tells_the_asker(make_bot):
    import time

    from flytegpt.bot import messages

    h = _broken_stream(make_bot, deferred_post_s=2.5)
    emu = h.emu
    emu.script_error("chat.update", status=429, retry_after=1, times=1000)
    d = emu.mention(CACHE_Q)
    [notice] = emu.wait_for(lambda: _notices(h), timeout=40)
    updates = emu.calls_to("chat.update")
    assert len(updates) >= CLIENT_TRIES + 1  # tried again after the client gave up ...
    assert notice.at - updates[CLIENT_TRIES - 1].at >= 1.8  # ... for the window, then told
    h.idle()
    assert emu.wait_for(lambda: h.bot.delivery.deferred.pending == 0)
    assert h.post_failed() == 1 and (h.deferred("kept"), h.deferred("given_up"), h.deferred("landed")) == \
        (1, 1, 0)
    [row] = emu.wait_for(lambda: h.logged_questions(), timeout=10)
    assert (row["question"], row["outcome"], row["failure"]) == (CACHE_Q, "failed", "post_failed")
    assert h.bot.feedback.get_answer(_feedback_value(updates[0].args["blocks"])) is None  # never shown: not stored
    time.sleep(1.5)
    assert len(emu.calls_to("chat.update")) == len(updates) and len(_notices(h)) == 1  # then left alone
    # the half-shown answer and the notice under it; no second answer
    texts = [m["text"] for m in h.answers(thread_ts=d.ts)]
    assert len(texts) == 2 and texts[1] == messages.POST_FAILED and LONG_ANSWER.startswith(texts[0])
    assert len(emu.calls_to("chat.postMessage")) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("error", ["cant_update_message", "message_not_found"])
def test_a_repair_refusal_that_will_not_pass_is_not_deferred(make_bot, error):
    import time

    h = _broken_stream(make_bot, deferred_post_s=30)
    emu = h.emu
    emu.script_error("chat.update", status=200, error=error, retry_after=None, times=1)
    d = emu.mention(CACHE_Q)
    emu.wait_for(lambda: _notices(h), timeout=40)
    h.idle()
    assert len(emu.calls_to("chat.update")) == 1 and h.post_failed() == 1  # not retried, told at once
    assert h.deferred("kept") == 0 and h.bot.delivery.deferred.pending == 0
    time.sleep(1.0)
    assert len(emu.calls_to("chat.update")) == 1 and len(_notices(h)) == 1
    assert len(h.answers(thread_ts=d.ts)) == 2  # the half-shown answer, the notice
    [row] = emu.wait_for(lambda: h.logged_questions(), timeout=10)
    assert (row["outcome"], row["failure"]) == ("failed", "post_failed")


@pytest.mark.timeout(60)
def test_shutdown_gives_a_waiting_repair_its_last_try(make_bot):
    import time

    from flytegpt.bot.slack.shutdown import drain

    h = _broken_stream(make_bot, deferred_post_s=60)
    emu = h.emu
    # 500s: quick client retries, then a deferred wait of 5 s or more; Slack takes the next try
    emu.script_error("chat.update", status=500, error="internal_error", retry_after=None, times=CLIENT_TRIES)
    d = emu.mention(CACHE_Q)
    emu.wait_for(lambda: h.bot.delivery.deferred.pending == 1, timeout=40)
    kept = time.monotonic()
    assert drain(h.bot, time.monotonic() + 5)
    assert time.monotonic() - kept < 4.0  # not waiting for its scheduled try
    [msg] = h.answers(thread_ts=d.ts)
    assert kinds(msg)[-2:] == ["context", "actions"] and len(emu.calls_to("chat.update")) == CLIENT_TRIES + 1
    assert h.post_failed() == 0 and h.deferred("landed") == 1
    assert h.bot.feedback.get_answer(_feedback_value(msg["blocks"])) is not None


@pytest.mark.parametrize("first", [1, 60, 95, 100, 150])
def test_messages_split_within_the_limit_with_balanced_fences(emu, first):
    """Wherever the first piece ends, every streamed message stays within its limit and
    a code block cut between two messages is closed in the first and reopened in the next."""
    from flytegpt.bot.slack.stream import StreamedReply

    emu.stream_message_limit = 100
    root = emu.seed_message("D0DM", "question")
    text = "a" * 150 + " word" * 10 + "\n```py\n" + "x = 1\n" * 30 + "```\nend"
    reply = StreamedReply(client(emu), channel="D0DM", thread_ts=root["ts"], user="U0USER", team="T0EMU",
                          is_dm=True, limit=100)
    reply.append(text[:first])
    reply.append(text[first:first + 40])
    assert reply.finish(text, [{"type": "divider"}], []) is True
    msgs = emu.bot_messages(thread_ts=root["ts"])
    assert len(msgs) >= 3 and all(len(m["text"]) <= 100 for m in msgs) and emu.violations == []
    assert all(m["text"].count("```") % 2 == 0 for m in msgs)
    assert msgs[-1]["blocks"] == [{"type": "divider"}] and all("blocks" not in m for m in msgs[:-1])
    joined = "".join(m["text"] for m in msgs).replace("```py\n", "").replace("```", "")
    assert joined.replace("\n", "").replace(" ", "") == text.replace("```py\n", "").replace("```", "") \
        .replace("\n", "").replace(" ", "")
