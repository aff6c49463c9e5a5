"""What the asker sees when Slack refuses a message's block text, answers a post with
"possibly succeeded", or refuses what a reply holds.

Slack refuses a message whose blocks hold more than ~12,000 characters of text
(`msg_blocks_too_long`, slackapi/bolt-js#2509 and #2867); the emulator now refuses it too, so
every answer posted whole (streaming off, streaming refused, a broken stream's repair, the slash
command) must keep each message under it. After HTTP 5xx, `internal_error`, `fatal_error` or
a connection lost once the request was sent, Slack may have posted the message: it must be looked
for before it is posted again, and a half-made stream must not be left behind. A refusal for
what a reply holds gets one try as plain text, then a notice that does not say "ask again".

End to end: the real Bolt app over Socket Mode, the Slack emulator, real answering over the
sample corpus with the OpenAI-compatible stand-in writing the answers.
"""

from __future__ import annotations

import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient
from support.slack_emulator import MAX_BLOCKS_TEXT, SlackEmulator
from support.slack_harness import ANSWER, CACHE_Q, BotHarness, harness_factory, llm_reply

from flytegpt.bot import messages
from flytegpt.bot.answering import Answer, Citation
from flytegpt.bot.slack import blocks

pytestmark = pytest.mark.timeout(120)

PARA = ("Flyte caches a task's outputs when `cache=True` and `cache_version` is set; changing the version "
        "invalidates old entries & forces a re-run <see docs> [1]. ")
LONG = "\n\n".join(f"Step {i}: " + PARA * 3 for i in range(100))  # ~37,000 characters: many messages
MEDIUM = "\n\n".join([PARA * 2] * 55)  # ~15,700 characters: a medium answer, over one message's limit


def _answer_with(text: str):
    """The stand-in model: `text` for the answer, the condensed question for a follow-up."""
    def reply(body: dict) -> str:
        r = llm_reply(body)
        return text if r == ANSWER else r
    return reply


@pytest.fixture
def make_bot(sample, tmp_path):
    """Bots answering posted whole ([bot] streaming off) unless a test asks for streaming."""
    with harness_factory(sample, tmp_path / "feedback.sqlite3", bot_defaults={"streaming": False}) as make:
        yield make


def _say(h: BotHarness, text: str = CACHE_Q, **kw):
    d = h.emu.mention(text, **kw)
    h.emu.wait_ack(d.envelope_id)
    return d


def _in_blocks(args: dict) -> int:
    return SlackEmulator.block_text_size(args.get("blocks") or [])


def _buttons_value(msg: dict) -> str:
    [actions] = [b for b in msg.get("blocks") or [] if b["type"] == "actions"]
    return actions["elements"][0]["value"]


def _refused_metric(h: BotHarness) -> float:
    return h.bot.metrics.failures.labels("post_refused")._value.get()


# --- every message posted whole keeps its blocks under Slack's cumulative limit ----------------

def test_the_emulator_refuses_a_message_whose_blocks_hold_too_much_text():
    """The stand-in the suite stands on refuses as Slack does (chat.postMessage, chat.update,
    response_url), so a regression of the packing fails the tests that post long answers."""
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}}
    too_much = [section] * 5  # 14,500 characters of text, each block within its own limit
    with SlackEmulator() as emu:
        c = WebClient(token="xoxb-test", base_url=emu.api_url)
        with pytest.raises(SlackApiError) as err:
            c.chat_postMessage(channel="C0GENERAL", text="x", blocks=too_much)
        assert err.value.response["error"] == "msg_blocks_too_long"
        ts = c.chat_postMessage(channel="C0GENERAL", text="x", blocks=too_much[:4])["ts"]  # 11,600: taken
        with pytest.raises(SlackApiError) as err:
            c.chat_update(channel="C0GENERAL", ts=ts, text="x", blocks=too_much)
        assert err.value.response["error"] == "msg_blocks_too_long"
        url = emu.response_url()
        resp = WebhookClient(url).send(text="x", blocks=too_much)
        assert (resp.status_code, resp.body) == (400, "msg_blocks_too_long")
        assert emu.response_posts[emu.response_id(url)] == []
        assert len(emu.violations) == 3


def test_a_long_answer_posted_whole_is_spread_over_messages_slack_takes(make_bot):
    """Before, a message carried up to ~34,000 characters of block text; Slack refused it and
    the asker read "Slack did not accept my answer just now" instead of the answer."""
    h = make_bot()
    h.llm.reply = _answer_with(LONG)
    d = _say(h)
    msgs = h.emu.wait_for(lambda: (a := h.answers(thread_ts=d.ts)) and "actions" in str(a[-1].get("blocks"))
                          and a, timeout=60)
    h.idle()
    msgs = h.answers(thread_ts=d.ts)
    posts = h.emu.calls_to("chat.postMessage")
    assert len(msgs) == len(posts) > 3  # every post taken, none refused
    assert all(_in_blocks(p.args) <= blocks.MESSAGE_BLOCKS_BUDGET for p in posts)
    joined = "\n".join(m["text"] for m in msgs)
    assert all(f"Step {i}:" in joined for i in range(100))  # nothing lost
    assert sum("Step 0:" in m["text"] for m in msgs) == 1  # nothing twice
    assert not any(messages.POST_FAILED in m["text"] for m in msgs) and h.post_failed() == 0
    assert h.emu.wait_for(lambda: h.bot.feedback.get_answer(_buttons_value(msgs[-1])))  # its 👍/👎 count


def test_a_workspace_refusing_streaming_gets_a_long_answer_in_messages_slack_takes(sample, tmp_path):
    """The README's GovSlack / `not_allowed` fallback posts the answer whole: same limit."""
    with harness_factory(sample, tmp_path / "fb.sqlite3", bot_defaults={"streaming": True}) as make:
        h = make()
        h.emu.fail_streaming("not_allowed")
        h.llm.reply = _answer_with(MEDIUM)
        d = _say(h)
        msgs = h.emu.wait_for(lambda: (a := h.answers(thread_ts=d.ts)) and "actions" in str(a[-1].get("blocks"))
                              and a, timeout=60)
        h.idle()
        assert len(h.answers(thread_ts=d.ts)) == len(msgs) >= 2
        assert all(_in_blocks(c.args) <= blocks.MESSAGE_BLOCKS_BUDGET for c in h.emu.calls_to("chat.postMessage"))
        assert h.post_failed() == 0 and h.bot.metrics.streamed.labels("refused")._value.get() == 1


def test_the_repair_of_a_broken_long_stream_rewrites_it_in_messages_slack_takes(sample, tmp_path):
    """A stream that breaks is rewritten with chat.update into the ordinary rendering: each
    update, and each post beyond the streamed messages, within the limit; one answer."""
    text = "\n\n".join([PARA.strip() * 4] * 40)  # ~24,000 characters: two streamed messages
    with harness_factory(sample, tmp_path / "fb.sqlite3", bot_defaults={"streaming": True}) as make:
        h = make()
        h.llm.reply = _answer_with(text)
        h.llm.token_delay, h.llm.stream_tokens = 0.01, 30
        h.emu.script_error("chat.stopStream", status=200, error="message_not_in_streaming_state", retry_after=None,
                           match=lambda args: "blocks" in args)  # the last stop finds the stream gone
        d = _say(h)
        h.emu.wait_for(lambda: h.emu.calls_to("chat.update"), timeout=60)
        h.idle()
        assert h.emu.wait_for(lambda: h.bot.delivery.deferred.pending == 0)
        msgs = h.answers(thread_ts=d.ts)
        updates = h.emu.calls_to("chat.update")
        assert len(h.emu.streams) >= 2  # the answer had reached a second streamed message
        assert {u.args["ts"] for u in updates} == set(h.emu.streams)  # each rewritten in place ...
        assert all(_in_blocks(u.args) <= blocks.MESSAGE_BLOCKS_BUDGET for u in updates)  # ... within the limit
        assert all(_in_blocks(p.args) <= blocks.MESSAGE_BLOCKS_BUDGET for p in h.emu.calls_to("chat.postMessage"))
        assert "actions" in str(msgs[-1]["blocks"]) and not any(m.get("streaming") for m in msgs)
        joined = "".join(m["text"] for m in msgs)
        assert joined.count("cache_version") == text.count("cache_version")  # all of it, once
        assert h.post_failed() == 0 and h.bot.metrics.streamed.labels("replaced")._value.get() == 1


def test_a_long_slash_command_answer_fits_its_posts(make_bot):
    h = make_bot()
    h.llm.reply = _answer_with(LONG)
    d = h.emu.slash_command("how do I invalidate the cache?")
    h.emu.wait_ack(d.envelope_id)
    rid = h.emu.response_id(d.response_url)
    posts = h.emu.wait_for(lambda: (p := h.emu.response_posts[rid]) and "too long" in p[-1]["text"] and p,
                           timeout=60)
    h.idle()
    assert len(posts) <= 4 and "Step 0:" in posts[0]["text"]
    assert all(_in_blocks(p) <= blocks.MESSAGE_BLOCKS_BUDGET for p in posts)
    assert not h.emu.ephemerals and h.post_failed() == 0


def test_a_long_list_of_long_sources_is_shortened_to_fit_one_message_with_the_buttons():
    """60 sources with long titles and URLs held 12,700 characters of context blocks, in a
    posted message and in the streamed answer's stopStream."""
    cites = [Citation(i, f"Title {i} " + "t" * 140, f"https://docs.flyte.org/en/latest/page_{i}.html?q=" + "v" * 300,
                      f"docs:p{i}.md") for i in range(1, 61)]
    answer = Answer("q?", "q?", "See " + " ".join(f"[{i}]" for i in range(1, 61)) + ".", cites, "llm", "v1")
    for replies in (blocks.render_answer(answer, feedback_id="abc"),
                    blocks.render_answer(answer, feedback_id="abc", share=True, question="how? " * 80)):
        assert all(blocks.block_text_size(m.blocks) <= blocks.MESSAGE_BLOCKS_BUDGET for m in replies)
        assert replies[-1].blocks[-1]["type"] == "actions"
        listed = "\n".join(b["elements"][0]["text"] for m in replies for b in m.blocks if b["type"] == "context")
        assert "[1] <https://docs.flyte.org/en/latest/page_1.html" in listed
        assert "more sources (too many to list here)" in listed
    tail = blocks.streamed_answer_tail(cites, "abc")
    assert blocks.block_text_size(tail) <= blocks.SOURCES_BUDGET + 200  # the sources and the 👍/👎 labels


def test_block_text_is_measured_as_slack_counts_it():
    """blocks.block_text_size is what the emulator (and bolt-js#2867) sums: every `text` string."""
    answer = Answer("q?", "q?", LONG, [Citation(1, "Caching", "https://e.org/c", "d:c")], "llm", "v1")
    for m in blocks.render_answer(answer, feedback_id="abc", share=True, question="why?"):
        assert blocks.block_text_size(m.blocks) == SlackEmulator.block_text_size(m.blocks) <= MAX_BLOCKS_TEXT


# --- a post Slack may have made is looked for before it is made again ----------------------------

@pytest.mark.parametrize("status,error", [(200, "fatal_error"), (200, "internal_error"), (503, "service_unavailable"),
                                          (500, "internal_error"), (0, "")])
def test_a_post_slack_made_before_failing_is_one_answer(make_bot, status, error):
    """Slack posted the answer, then answered fatal_error / 5xx / nothing at all; the
    client retried and the thread showed the answer twice."""
    h = make_bot(bot={"deferred_post_s": 30})
    h.emu.script_error("chat.postMessage", status=status, error=error, retry_after=None, times=1, after=True,
                       match=lambda args: "cache_version" in str(args.get("text")))
    d = _say(h)
    [answer] = h.wait_answers(thread_ts=d.ts, timeout=30)
    h.idle()
    time.sleep(1.5)  # a second copy or a notice would come within this
    assert [m["text"] for m in h.answers(thread_ts=d.ts)] == [answer["text"]]
    assert "cache_version" in answer["text"] and len(h.emu.calls_to("chat.postMessage")) == 1
    replies = h.emu.calls_to("conversations.replies")
    assert any(str(c.args.get("include_all_metadata")).lower() in ("1", "true") for c in replies)  # looked for it
    assert h.post_failed() == 0 and h.deferred("kept") == 0
    assert h.emu.wait_for(lambda: h.bot.feedback.get_answer(_buttons_value(answer)))  # and it counts as answered


def test_a_post_whose_thread_cannot_be_read_is_looked_for_again_before_it_is_posted_again(make_bot):
    """Slack posted the answer and answered fatal_error, and the thread could not be read to
    check (Slack in trouble): the answer waits in the deferred queue, and its next try looks for
    it first instead of posting a second copy."""
    h = make_bot(bot={"deferred_post_s": 30})
    h.emu.script_error("chat.postMessage", status=200, error="fatal_error", retry_after=None, times=1, after=True)
    h.emu.script_error("conversations.replies", status=500, error="internal_error", retry_after=None, times=4,
                       match=lambda args: str(args.get("include_all_metadata")).lower() in ("1", "true"))
    d = _say(h)
    [answer] = h.wait_answers(thread_ts=d.ts, timeout=30)
    assert h.emu.wait_for(lambda: h.deferred("landed") == 1, timeout=30)  # settled by the deferred look
    h.idle()
    assert [m["text"] for m in h.answers(thread_ts=d.ts)] == [answer["text"]]
    assert len(h.emu.calls_to("chat.postMessage")) == 1 and h.post_failed() == 0
    assert h.emu.wait_for(lambda: h.bot.feedback.get_answer(_buttons_value(answer)))


@pytest.mark.parametrize("status,error", [(500, "internal_error"), (200, "fatal_error"), (0, "")])
def test_a_post_slack_did_not_make_is_made_after_looking(make_bot, status, error):
    """The same failures without the message in the thread: posted again, once."""
    h = make_bot()
    h.emu.script_error("chat.postMessage", status=status, error=error, retry_after=None, times=2)
    d = _say(h)
    [answer] = h.wait_answers(thread_ts=d.ts, timeout=30)
    h.idle()
    assert "cache_version" in answer["text"] and len(h.answers(thread_ts=d.ts)) == 1
    assert len(h.emu.calls_to("chat.postMessage")) == 3 and h.post_failed() == 0


def test_a_post_at_the_top_of_a_dm_is_looked_for_in_the_dm(make_bot):
    """An answer posted whole to a top-level DM question goes to the DM's top level: it is looked
    for there (conversations.history), not in a thread."""
    h = make_bot()
    h.emu.add_channel("D0POSTDM", "dm", is_im=True)
    h.emu.script_error("chat.postMessage", status=200, error="fatal_error", retry_after=None, times=1, after=True)
    d = h.emu.message(CACHE_Q, channel="D0POSTDM", channel_type="im")
    h.emu.wait_ack(d.envelope_id)
    [answer] = h.emu.wait_for(lambda: h.answers(channel="D0POSTDM"), timeout=30)
    h.idle()
    time.sleep(1.5)
    assert [m["text"] for m in h.answers(channel="D0POSTDM")] == [answer["text"]] and "thread_ts" not in answer
    assert h.emu.calls_to("conversations.history") and h.post_failed() == 0


def test_a_stream_slack_started_before_failing_is_rewritten_not_left_behind(sample, tmp_path):
    """chat.startStream made the streaming message, then answered fatal_error; the client's
    retries used to leave four never-stopped fragments above the posted answer."""
    with harness_factory(sample, tmp_path / "fb.sqlite3", bot_defaults={"streaming": True}) as make:
        h = make()
        h.llm.reply = _answer_with(MEDIUM[:3000])
        h.llm.token_delay, h.llm.stream_tokens = 0.02, 20
        h.emu.script_error("chat.startStream", status=200, error="fatal_error", retry_after=None, times=1, after=True)
        d = _say(h)
        h.emu.wait_for(lambda: h.emu.calls_to("chat.update"), timeout=30)
        h.idle()
        assert h.emu.wait_for(lambda: h.bot.delivery.deferred.pending == 0)
        [msg] = h.answers(thread_ts=d.ts)  # one message: the half-made stream, rewritten in place
        assert len(h.emu.calls_to("chat.startStream")) == 1 and h.emu.calls_to("chat.postMessage") == []
        assert msg["ts"] == next(iter(h.emu.streams)) and "streaming" not in msg
        assert msg["text"].count("Flyte caches") == MEDIUM[:3000].count("Flyte caches")
        assert "actions" in str(msg["blocks"]) and h.post_failed() == 0
        assert h.emu.wait_for(lambda: h.bot.feedback.get_answer(_buttons_value(msg)))


def test_a_stream_slack_did_not_start_falls_back_to_one_posted_answer(sample, tmp_path):
    with harness_factory(sample, tmp_path / "fb.sqlite3", bot_defaults={"streaming": True}) as make:
        h = make()
        h.emu.script_error("chat.startStream", status=500, error="internal_error", retry_after=None, times=1)
        d = _say(h)
        [msg] = h.wait_answers(thread_ts=d.ts, timeout=30)
        h.idle()
        time.sleep(1.0)
        assert [m["ts"] for m in h.answers(thread_ts=d.ts)] == [msg["ts"]] and "cache_version" in msg["text"]
        assert len(h.emu.calls_to("chat.startStream")) == 1 and h.emu.streams == {}
        assert h.post_failed() == 0 and h.bot.metrics.streamed.labels("refused")._value.get() == 1


def test_an_append_slack_made_before_failing_shows_its_text_once(sample, tmp_path):
    """chat.appendStream is not retried after a "possibly succeeded" answer (its text would show
    twice): the stream counts as broken and is rewritten in place with the final answer."""
    text = ("Caching in Flyte keys a task's outputs by its inputs and its `cache_version` [1]. " * 18).strip()
    with harness_factory(sample, tmp_path / "fb.sqlite3", bot_defaults={"streaming": True}) as make:
        h = make()
        h.llm.reply = _answer_with(text)
        h.llm.token_delay, h.llm.stream_tokens = 0.05, 20
        h.emu.script_error("chat.appendStream", status=500, error="internal_error", retry_after=None, times=1,
                           after=True)
        d = _say(h)
        h.emu.wait_for(lambda: h.emu.calls_to("chat.update"), timeout=30)
        h.idle()
        [msg] = h.answers(thread_ts=d.ts)
        assert len(h.emu.calls_to("chat.appendStream")) == 1  # not retried, nothing more sent into it
        assert msg["text"].count("Caching in Flyte") == text.count("Caching in Flyte")
        assert h.emu.calls_to("chat.postMessage") == [] and h.post_failed() == 0


# --- a refusal for what a reply holds: plain text once, then an honest notice --------------------

@pytest.mark.parametrize("error", ["msg_blocks_too_long", "invalid_blocks", "msg_too_long"])
def test_an_answer_refused_for_its_blocks_arrives_as_plain_text(make_bot, error):
    h = make_bot(bot={"deferred_post_s": 30})
    h.emu.script_error("chat.postMessage", status=200, error=error, retry_after=None, times=5,
                       match=lambda args: "cache_version" in str(args.get("text")) and args.get("blocks"))
    d = _say(h)
    [answer] = h.wait_answers(thread_ts=d.ts, timeout=30)
    h.idle()
    time.sleep(1.0)
    assert [m["text"] for m in h.answers(thread_ts=d.ts)] == [answer["text"]]
    assert "cache_version" in answer["text"] and not answer.get("blocks")  # the answer, as text
    assert "Sources" in answer["text"] and "<http" in answer["text"]  # its sources as links
    assert len(h.emu.calls_to("chat.postMessage")) == 2  # refused once (not deferred), then plain text
    assert h.post_failed() == 0 and _refused_metric(h) == 0 and h.deferred("kept") == 0


def test_an_answer_slack_refuses_in_every_form_gets_a_notice_that_does_not_say_try_again(make_bot):
    h = make_bot(bot={"deferred_post_s": 30})
    h.emu.script_error("chat.postMessage", status=200, error="msg_too_long", retry_after=None, times=10,
                       match=lambda args: "cache_version" in str(args.get("text")))
    d = _say(h)
    [notice] = h.wait_answers(thread_ts=d.ts, timeout=30)
    h.idle()
    assert notice["text"] == messages.POST_REFUSED and "minute" not in notice["text"]
    assert "again" not in notice["text"].lower()
    tries = [c for c in h.emu.calls_to("chat.postMessage") if "cache_version" in str(c.args.get("text"))]
    assert len(tries) == 2 and tries[0].args.get("blocks") and not tries[1].args.get("blocks")
    assert _refused_metric(h) == 1 and h.post_failed() == 0 and h.deferred("kept") == 0
    # the question log says what the metric says (it said post_failed), and the report shows it
    [row] = h.logged_questions()
    assert (row["question"], row["outcome"], row["failure"]) == (CACHE_Q, "failed", "post_refused")
    assert row["sources"] != "[]"  # the sources the refused answer would have cited
    from flytegpt.bot.report import ReportOptions, build_report, render_page
    from flytegpt.bot.report.data import PrivacyFilter

    report = build_report(str(h.config.bot.feedback_db),
                          options=ReportOptions(privacy=PrivacyFilter.from_config(["C0GENERAL"], [], dms=False)))
    assert report.totals["failed"] == 1 and report.failures == {"post_refused": 1}
    assert "by cause: 1 post refused." in render_page(report)


def test_a_slash_answer_its_response_url_refuses_for_its_blocks_arrives_as_plain_text(make_bot):
    h = make_bot(bot={"deferred_post_s": 30})
    h.emu.script_error("response_url", status=400, error="msg_blocks_too_long", retry_after=None, times=1)
    d = h.emu.slash_command("how do I invalidate the cache?")
    h.emu.wait_ack(d.envelope_id)
    rid = h.emu.response_id(d.response_url)
    [post] = h.emu.wait_for(lambda: h.emu.response_posts[rid], timeout=30)
    h.idle()
    assert "cache_version" in post["text"] and not post.get("blocks") and h.emu.response_failures == 1
    assert len(h.emu.response_posts[rid]) == 1 and not h.emu.ephemerals and h.post_failed() == 0
