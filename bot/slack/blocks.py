"""Block Kit: how an answer, an apology or a notice is laid out as Slack messages, and read back.

The one owner of the message layout: the builders below write it, `answer_text` reads it
back (thread history gives the bot's earlier answers to the model), and the action ids of
the buttons are defined here for the listeners that handle clicks. Slack's limits (50
blocks and 40,000 characters of fallback `text` per message, 2,000 per button value, and
about 12,000 characters of text in all the blocks of one message: MESSAGE_BLOCKS_BUDGET)
are kept by spreading sections over several messages; every message carries fallback
`text` for notifications and history. `plain_text` is the same messages without blocks,
for one more try when Slack refuses the blocks themselves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextActionsBlock,
    ContextBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from flytegpt.bot import messages
from flytegpt.ingest.models import strip_controls

from .render import SECTION_BUDGET, split_text, escape, link, markdown_sections

if TYPE_CHECKING:  # bot.answering imports heavy libraries; the layout needs only the shapes
    from flytegpt.bot.answering import Answer, Citation

MAX_BLOCKS = 50
MAX_TEXT_CHARS = 40000
MAX_BUTTON_VALUE = 2000
# Slack refuses a message whose blocks hold more than about 12,000 characters of text in all
# (`msg_blocks_too_long`). The reference docs do not say so; Slack's own tracker does:
# slackapi/bolt-js#2509 (chat.postMessage refused at ~13,200 characters of section/markdown/
# header blocks; the maintainer: "12,000 text characters with a buffer for block containers")
# and slackapi/bolt-js#2867 (refused at 11,341 characters summed over every `text` in the
# blocks). The markdown block's documented 12,000 is the same figure. Every message the bot
# posts whole (chat.postMessage, chat.update, response_url) keeps the text of its blocks
# (block_text_size) to 10,000: under the lowest refusal reported, with room for what Slack
# counts that we cannot see (the "block containers"). Before this, only the 40,000 of the
# fallback text was budgeted, and a long answer's messages of up to ~34,000 were refused.
MESSAGE_BLOCKS_BUDGET = 10_000
# The sources list's share of it: one section (2,900), the sources and the buttons always fit one
# message; a longer list ends with "… and N more sources" (the streamed answer's stopStream too).
SOURCES_BUDGET = 6_000
TITLE_CHARS = 150
MAX_SOURCE_BLOCKS = 5  # context blocks of sources under an answer (at most SOURCES_BUDGET in all)
MAX_SOURCE_LINE = 1000  # a source line longer than this (a huge URL) shows its title unlinked
PLAIN_TEXT_CHARS = 4000  # a message without blocks: Slack's advice for `text` ("best results")
REPLY_EVENT = "flytegpt_reply"  # the `metadata` event_type that marks each message the bot posts

ACTION_FEEDBACK_UP = "flytegpt_feedback_up"
ACTION_FEEDBACK_DOWN = "flytegpt_feedback_down"
ACTION_SHARE = "flytegpt_share"
ACTION_FEEDBACK = "flytegpt_feedback"  # Block Kit feedback_buttons; the value is "up:<id>" or "down:<id>"


@dataclass
class SlackMessage:
    """One chat message: fallback `text` (always set) and Block Kit `blocks` as dicts.

    `marker` names the message uniquely (an answer's id and part, else a random id); posted as
    Slack message `metadata`, it lets delivery find the message in its thread when Slack's
    answer to the post was lost or said "possibly done" (and never mistake another one for it).
    """

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)

    def kwargs(self) -> dict[str, Any]:
        """chat.postMessage/postEphemeral arguments; no `blocks` at all for a text-only message."""
        return {"text": self.text, "blocks": self.blocks} if self.blocks else {"text": self.text}

    def metadata(self) -> dict[str, Any]:
        """The `metadata` argument that marks the message (read back with include_all_metadata)."""
        return {"event_type": REPLY_EVENT, "event_payload": {"reply": self.marker}}


def marker_of(msg: dict[str, Any]) -> str | None:
    """The marker a message read back from Slack carries (see SlackMessage.metadata), if any."""
    meta = msg.get("metadata")
    if not isinstance(meta, dict) or meta.get("event_type") != REPLY_EVENT:
        return None
    payload = meta.get("event_payload")
    return str(payload.get("reply")) if isinstance(payload, dict) and payload.get("reply") else None


def block_text_size(blocks: Sequence[Any]) -> int:
    """The characters of text in a message's blocks, as Slack's `msg_blocks_too_long` counts them
    (every `text` string in the block tree: sections, context elements, button labels)."""
    def size(node: Any) -> int:
        if isinstance(node, dict):
            return sum(len(v) if k == "text" and isinstance(v, str) else size(v) for k, v in node.items())
        if isinstance(node, list):
            return sum(size(v) for v in node)
        return 0
    return size(list(blocks))


def _short(title: str, n: int = TITLE_CHARS) -> str:
    title = " ".join((title or "").split())
    return title if len(title) <= n else title[: n - 1] + "…"


def source_lines(citations: Sequence["Citation"]) -> list[str]:
    """`[n] <url|title>` per cited source, compact (the title alone for a URL too long to link);
    a Slack thread's with the day it was started after the link, `[n] <url|title> (2023-10-21)`,
    unless its title says it already (Citation.date_note): a 2021 answer reads as dated."""
    lines = []
    for c in citations:
        title = _short(strip_controls(c.title or c.source_id))  # a page's own bidi override or BEL
        linked = link(c.url, title) if c.url else ""
        shown = linked if linked and len(linked) < MAX_SOURCE_LINE else escape(title)
        lines.append(f"[{c.n}] {shown}{escape(c.date_note)}")
    return lines


_MORE_ROOM = len(messages.more_sources(999)) + 1  # kept free for the "… and N more sources" line


def _sources_blocks(citations: Sequence["Citation"], heading: str) -> tuple[list[dict], str]:
    """The sources list as context blocks of whole lines (a link is never cut in two), at most
    MAX_SOURCE_BLOCKS of them and SOURCES_BUDGET characters in all, so the sources and the
    buttons always fit one message within Slack's limits; the lines past that are counted in a
    last "… and N more sources" line."""
    lines = source_lines(citations)
    if not lines:
        return [], ""
    parts: list[list[str]] = [[f"*{heading}*"]]
    size = total = len(heading) + 3  # this block's text, and the whole list's
    for i, line in enumerate(lines):
        room = SOURCES_BUDGET - (_MORE_ROOM if i < len(lines) - 1 else 0)
        if total + len(line) + 1 > room or (size + len(line) > SECTION_BUDGET and len(parts) == MAX_SOURCE_BLOCKS):
            more = escape(messages.more_sources(len(lines) - i))
            if size + len(more) > SECTION_BUDGET and len(parts) < MAX_SOURCE_BLOCKS:
                parts.append([])  # (else it goes last in the last block: still under Slack's 3,000)
            parts[-1].append(more)
            break
        if size + len(line) > SECTION_BUDGET:
            parts.append([])
            size = 0
        parts[-1].append(line)
        size += len(line) + 1
        total += len(line) + 1
    texts = ["\n".join(p) for p in parts]
    blocks = [ContextBlock(elements=[MarkdownTextObject(text=t, verbatim=True)]).to_dict() for t in texts]
    return blocks, "\n".join(texts)


def _actions_block(feedback_id: str, *, share: bool) -> dict:
    if len(feedback_id) > MAX_BUTTON_VALUE:
        raise ValueError("feedback id too long for a button value")
    elements = [
        ButtonElement(text=PlainTextObject(text=messages.BUTTON_HELPFUL, emoji=True),
                      action_id=ACTION_FEEDBACK_UP, value=feedback_id),
        ButtonElement(text=PlainTextObject(text=messages.BUTTON_NOT_HELPFUL, emoji=True),
                      action_id=ACTION_FEEDBACK_DOWN, value=feedback_id),
    ]
    if share:
        elements.append(ButtonElement(text=PlainTextObject(text=messages.BUTTON_SHARE),
                                      action_id=ACTION_SHARE, value=feedback_id, style="primary"))
    return ActionsBlock(block_id=f"flytegpt_actions_{feedback_id}"[:255], elements=elements).to_dict()


def _section(text: str) -> dict:
    return SectionBlock(text=MarkdownTextObject(text=text, verbatim=True)).to_dict()


def _pack(sections: list[str], tail_blocks: list[dict], tail_text: str,
          head_blocks: list[dict] | None = None, head_text: str = "") -> list[SlackMessage]:
    """Spread sections over as few messages as Slack's limits allow: 50 blocks, and
    MESSAGE_BLOCKS_BUDGET characters of text in the blocks of one message (the fallback
    text, about the same, stays far under its 40,000).

    The head (question context) goes on the first message, the tail (sources, buttons) on
    the last, so the buttons sit under the end of the answer.
    """
    head_blocks = head_blocks or []
    messages: list[SlackMessage] = []
    blocks: list[dict] = list(head_blocks)
    texts: list[str] = [head_text] if head_text else []
    size = block_text_size(head_blocks)
    for sec in sections:
        if blocks and (len(blocks) + 1 > MAX_BLOCKS or size + len(sec) > MESSAGE_BLOCKS_BUDGET):
            messages.append(SlackMessage("\n\n".join(texts), blocks))
            blocks, texts, size = [], [], 0
        blocks.append(_section(sec))
        texts.append(sec)
        size += len(sec)
    if tail_blocks:
        if blocks and (len(blocks) + len(tail_blocks) > MAX_BLOCKS
                       or size + block_text_size(tail_blocks) > MESSAGE_BLOCKS_BUDGET):
            messages.append(SlackMessage("\n\n".join(texts), blocks))
            blocks, texts = [], []
        blocks.extend(tail_blocks)
        if tail_text:
            texts.append(tail_text)
    if blocks or not messages:
        messages.append(SlackMessage("\n\n".join(texts) or " ", blocks))
    for m in messages:  # belt and braces: the fallback text never exceeds Slack's limit
        if len(m.text) > MAX_TEXT_CHARS:
            m.text = m.text[: MAX_TEXT_CHARS - 1] + "…"
    return messages


def render_answer(answer: "Answer", *, feedback_id: str | None = None, share: bool = False,
                  question: str | None = None, shared_by: str | None = None) -> list[SlackMessage]:
    """An answer as one or more Slack messages: text sections, sources, feedback buttons.

    `question` adds a quoted context line first (slash-command answers, where the
    question itself is not visible in the channel); `shared_by` (a user id) says who
    shared it there.
    """
    head_blocks, head_text = [], ""
    if question:
        head_text = f"> {escape(_short(question, 300))}"
        if shared_by:
            head_text += "\n_" + messages.SHARED_BY.format(user=f"<@{escape(shared_by)}>") + "_"
        head_blocks = [ContextBlock(elements=[MarkdownTextObject(text=head_text, verbatim=True)]).to_dict()]
    sources = [c.url for c in answer.citations if c.url]
    # quoted passages come from indexed pages and threads: their control characters and bidi
    # overrides ("run \u202etxt.exe" shows as "run exe.txt") are not shown (a model's were cleaned)
    sections = markdown_sections(strip_controls(answer.text), links=sources) or [escape(messages.EMPTY_ANSWER)]
    tail, tail_text = _sources_blocks(answer.citations, answer.sources_heading)
    if feedback_id:
        tail.append(_actions_block(feedback_id, share=share))
    replies = _pack(sections, tail, tail_text, head_blocks, head_text)
    if feedback_id:  # the answer's id names its messages: found again in a thread by it
        for part, m in enumerate(replies):
            m.marker = f"{feedback_id}.{part}"
    return replies


def plain_text(replies: Sequence[SlackMessage], limit: int = PLAIN_TEXT_CHARS) -> list[SlackMessage]:
    """The same replies without blocks: each one's fallback text (the answer in mrkdwn, its
    sources as `[n] <url|title>` links) cut into messages of at most `limit` characters.

    For one more try when Slack refuses the blocks or the size of a message (`invalid_blocks`,
    `msg_blocks_too_long`, `msg_too_long`): text alone is what Slack always renders. The
    buttons are lost in this form; the answer is not.
    """
    out: list[SlackMessage] = []
    for m in replies:
        for n, part in enumerate(split_text(m.text, limit) or [" "]):
            out.append(SlackMessage(part, [], marker=f"{m.marker}.plain{n}"))
    return out


def streamed_answer_tail(citations: Sequence["Citation"], feedback_id: str | None,
                         heading: str = messages.SOURCES_HEADING) -> list[dict]:
    """The blocks chat.stopStream puts under a streamed answer: sources, then 👍/👎.

    The buttons are Block Kit's `feedback_buttons` in a `context_actions` block, the
    form Slack gives AI answers; a click sends ACTION_FEEDBACK with "up:<id>"/"down:<id>".
    """
    tail, _ = _sources_blocks(citations, heading)
    if feedback_id:
        if len(feedback_id) + 5 > MAX_BUTTON_VALUE:
            raise ValueError("feedback id too long for a button value")
        buttons = FeedbackButtonsElement(
            action_id=ACTION_FEEDBACK,
            positive_button=FeedbackButtonObject(text=messages.BUTTON_HELPFUL, value=f"up:{feedback_id}"),
            negative_button=FeedbackButtonObject(text=messages.BUTTON_NOT_HELPFUL, value=f"down:{feedback_id}"))
        tail.append(ContextActionsBlock(block_id=f"flytegpt_feedback_{feedback_id}"[:255],
                                        elements=[buttons]).to_dict())
    return tail


def render_apology(related: Sequence["Citation"], reason: str | None = None) -> list[SlackMessage]:
    """The model failed: say so briefly and still give the best sources found."""
    text = reason or (messages.MODEL_UNREACHABLE_WITH_SOURCES if related else messages.MODEL_UNREACHABLE)
    tail, tail_text = _sources_blocks(related, messages.BEST_SOURCES_HEADING)
    return _pack([escape(text)], tail, tail_text)


def render_notice(text: str, *, mrkdwn: bool = False) -> SlackMessage:
    """A short notice (busy, rate limited, index not ready); plain text unless `mrkdwn`
    says it is already safe mrkdwn (e.g. our own `<#channel>` links)."""
    sections = split_text(text if mrkdwn else escape(text), SECTION_BUDGET)
    return _pack(sections, [], "")[0]


def render_markdown_notice(markdown: str) -> SlackMessage:
    """A short notice written in Markdown (usage help)."""
    return _pack(markdown_sections(markdown), [], "")[0]


def answer_text(msg: dict[str, Any]) -> str:
    """Read back what render_answer wrote: the answer's section blocks, not the sources list.

    Thread history uses it to give the model the bot's earlier answers as assistant turns.
    """
    sections = [b["text"]["text"] for b in msg.get("blocks") or []
                if b.get("type") == "section" and isinstance(b.get("text"), dict)]
    return "\n\n".join(sections) if sections else (msg.get("text") or "")
