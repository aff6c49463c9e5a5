"""Thread memory read from the thread itself.

The conversation so far lives in Slack (`conversations.replies`), not in the process, so
a restart or a second replica answers a follow-up just as well. Reads are cached per
thread (bounded LRU with a TTL) because a busy thread would otherwise cost one API call
per message; an entry is refreshed when it does not yet contain the message being
answered, and dropped when the bot posts in the thread.

The bot's notices (busy, restarted, the model-unavailable apology ...: what it posts instead
of an answer) are not earlier answers: the history leaves them out (`is_notice`), and a
half-streamed answer that a notice ended keeps its text without the notice.

A thread is read whole only for an answer's history. Whether a reply without a mention is
for the bot at all is decided from the threads the bot answered in (dedupe.py) and, for
other threads, from the parent message alone (`bot_replied`): people talking to each other
in a long thread must not cost five `conversations.replies` pages per message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from flytegpt.bot import messages
from flytegpt.bot.question_text import clean_question
from flytegpt.ingest.models import valid_unicode
from flytegpt.ingest.sources.slack_export import Directory, clean_messages, render_markup, ts_key, valid_ts

from .addressing import for_the_bot
from .blocks import answer_text
from .dedupe import SeenCache
from .render import escape

if TYPE_CHECKING:
    from slack_sdk import WebClient

    from flytegpt.bot.answering import Turn

log = logging.getLogger(__name__)
_USER_MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^<>]*)?>")
# A follow-up at the top of a DM is read with the exchange of the past quarter hour (dm_turns);
# older than that, the asker has moved on. One page of the DM's history covers it.
DM_CONTEXT_S, _DM_PAGE = 900.0, 20
# A thread found not to be the bot's is not read again for this long: the bot enters a thread only
# by answering there, which routing records before the answer is posted (Deduper.remember_thread).
NOT_OURS_TTL_S = 3600.0
# What kind of conversation a channel is (the question log's channel_type) is read once an hour at most:
# a public channel can be made private.
CHANNEL_TYPE_TTL_S = 3600.0
CHANNEL_TYPES = ("channel", "group", "mpim", "im")  # Slack's channel_type of message events

# What the bot posts in a thread or a DM instead of an answer (bot/messages.py); "{...}" stands for
# any text. An answer that a notice ended half-way (a stream stopped by a failure or a restart)
# is its text, "\n\n", then the notice.
NOTICES = (messages.BUSY, messages.INDEX_NOT_READY, messages.FAILED, messages.RESTARTED, messages.POST_FAILED,
           messages.EMPTY_QUESTION, messages.TOO_LONG_QUESTION, messages.NO_ANSWER_WRITTEN,
           messages.MODEL_UNREACHABLE, messages.MODEL_UNREACHABLE_WITH_SOURCES, messages.IN_FLIGHT)


def _notice_pattern(notices: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for the notices, as Slack gives them back (plain text escaped for mrkdwn)."""
    alternatives = []
    for notice in notices:
        parts = re.split(r"\{[^{}]*\}", escape(notice))
        alternatives.append("(?s:.+?)".join(re.escape(p) for p in parts))
    return re.compile("(?:" + "|".join(alternatives) + ")")


_NOTICE = _notice_pattern(NOTICES)
_ENDED_BY_NOTICE = re.compile(r"(?s)(.*\S)\s*\n\n(?:" + _NOTICE.pattern + r")\s*")


def is_notice(text: str) -> bool:
    """Whether a message of the bot (its text as `answer_text` reads it) is a notice, not an answer."""
    return _NOTICE.fullmatch(text.strip()) is not None


def without_notice(text: str) -> str:
    """An answer's text without the notice that ended it half-way; "" for a notice alone."""
    if is_notice(text):
        return ""
    ended = _ENDED_BY_NOTICE.fullmatch(text)
    return ended.group(1) if ended else text


def channel_type_of(info: dict[str, Any]) -> str:
    """conversations.info's `channel` as a message event's channel_type: a multi-person DM is
    "mpim", any other private conversation "group" (private channels have C ids nowadays)."""
    if info.get("is_im"):
        return "im"
    if info.get("is_mpim"):
        return "mpim"
    if info.get("is_private") or info.get("is_group") or not info.get("is_channel", True):
        return "group"
    return "channel"


class ThreadHistory:
    def __init__(self, client: "WebClient", *, max_threads: int = 512, ttl_s: float = 60.0,
                 max_messages: int = 1000) -> None:
        self.client = client
        self.max_threads, self.ttl_s, self.max_messages = max_threads, ttl_s, max_messages
        self._cache: OrderedDict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0  # API reads, for tests and metrics
        self._not_ours = SeenCache(4096, NOT_OURS_TTL_S)  # (channel, thread_ts) the bot is not in
        self._types: OrderedDict[str, tuple[float, str]] = OrderedDict()  # channel -> (read at, type)

    def messages(self, channel: str, thread_ts: str, *, must_include: str | None = None) -> list[dict[str, Any]]:
        """The thread's messages, oldest first (cached)."""
        key = (channel, thread_ts)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] <= self.ttl_s and (
                must_include is None or any(m.get("ts") == must_include for m in hit[1])
            ):
                self._cache.move_to_end(key)
                return hit[1]
        msgs = self._fetch(channel, thread_ts)
        with self._lock:
            self._cache[key] = (time.monotonic(), msgs)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_threads:
                self._cache.popitem(last=False)
        return msgs

    def invalidate(self, channel: str, thread_ts: str) -> None:
        with self._lock:
            self._cache.pop((channel, thread_ts), None)

    def _fetch(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        from slack_sdk.errors import SlackApiError

        from flytegpt.ingest.slack_client import pages

        self.fetches += 1
        out: list[dict[str, Any]] = []
        try:
            for page in pages(self.client.conversations_replies(channel=channel, ts=thread_ts, limit=200)):
                out.extend(clean_messages(page))  # fields of the wrong type read as absent
                if len(out) >= self.max_messages:
                    break
        except SlackApiError as e:  # thread deleted, no access: answer without history
            log.warning("conversations.replies failed", extra={"channel": channel, "error": e.response.get("error")})
        return out[-self.max_messages:]

    @staticmethod
    def is_bot_message(msg: dict[str, Any], bot_user_id: str | None, bot_id: str | None) -> bool:
        return bool((bot_id and msg.get("bot_id") == bot_id) or (bot_user_id and msg.get("user") == bot_user_id))

    def bot_replied(self, channel: str, thread_ts: str, bot_user_id: str | None, bot_id: str | None) -> bool:
        """Whether the bot wrote this thread's parent or replied in it, from one read of the parent
        (`conversations.history` for that one message): Slack lists the repliers in the parent's
        `reply_users` (user ids, sometimes bot ids), so the replies themselves are not read.

        For threads the bot answered in before they were recorded (routing asks the record first).
        A "no" is kept for NOT_OURS_TTL_S, so a busy thread of people talking to each other costs
        one call an hour. Slack may list only some of a crowded thread's repliers: such an old
        thread's follow-ups then need a mention, as does any thread where the parent cannot be read."""
        from slack_sdk.errors import SlackApiError

        key = (channel, thread_ts)
        if key in self._not_ours:
            return False
        self.fetches += 1
        try:
            page = self.client.conversations_history(channel=channel, latest=thread_ts, inclusive=True, limit=1)
        except SlackApiError as e:  # no access, deleted: not known to be ours (a mention still works)
            log.warning("conversations.history failed", extra={"channel": channel, "error": e.response.get("error")})
            page = None
        parent = next((m for m in clean_messages(page) if m.get("ts") == thread_ts), None) if page else None
        repliers = parent.get("reply_users") if parent else None
        ours = parent is not None and (self.is_bot_message(parent, bot_user_id, bot_id) or (
            isinstance(repliers, list) and any(u and u in (bot_user_id, bot_id) for u in repliers)))
        if not ours:
            self._not_ours.first(key)
        return ours

    def channel_type(self, channel: str) -> str:
        """What kind of conversation `channel` is ("channel", "group", "mpim", "im"; "unknown" when
        Slack would not say), for the question log: the report leaves out private ones. An
        `app_mention` event, unlike a `message` event, does not carry its channel_type.
        One `conversations.info` per channel and CHANNEL_TYPE_TTL_S; DMs (D ids) need none."""
        from slack_sdk.errors import SlackApiError

        if channel.startswith("D"):
            return "im"
        now = time.monotonic()
        with self._lock:
            hit = self._types.get(channel)
            if hit and now - hit[0] <= CHANNEL_TYPE_TTL_S:
                return hit[1]
        try:
            info = self.client.conversations_info(channel=channel).get("channel")
        except SlackApiError as e:  # e.g. a group DM without mpim:read: private as far as we know
            log.warning("conversations.info failed", extra={"channel": channel, "error": e.response.get("error")})
            return "unknown"
        kind = channel_type_of(info) if isinstance(info, dict) else "unknown"
        with self._lock:
            self._types[channel] = (now, kind)
            self._types.move_to_end(channel)
            while len(self._types) > self.max_threads:
                self._types.popitem(last=False)
        return kind

    def turns(self, channel: str, thread_ts: str, *, before_ts: str, bot_user_id: str | None,
              bot_id: str | None, max_turns: int) -> list["Turn"]:
        """The conversation before `before_ts` as Turns (the bot's answers as assistant turns)."""
        from flytegpt.bot.answering import keep_turns

        before = ts_key(before_ts) if valid_ts(before_ts) else None
        msgs = [m for m in self.messages(channel, thread_ts, must_include=before_ts)
                if before is None or ts_key(m["ts"]) < before]
        return keep_turns(self._turns(msgs, bot_user_id, bot_id), max_turns)

    def dm_turns(self, channel: str, *, before_ts: str, bot_user_id: str | None, bot_id: str | None,
                 max_turns: int, window_s: float = DM_CONTEXT_S) -> list["Turn"]:
        """The exchange a follow-up written at the top of a DM continues: the asker's last question
        to the bot of the past `window_s` with its thread (a streamed answer and the follow-ups
        there), and the bot's answers posted after it at the top (answers posted whole).

        A DM's top-level messages are not a thread, so `turns` cannot read them; one history
        page, newest first, is enough to find the last question. Not read: nothing is lost but
        the context (a failed read is logged, the question answered alone)."""
        from slack_sdk.errors import SlackApiError

        from flytegpt.bot.answering import keep_turns

        if not valid_ts(before_ts):
            return []
        sec, frac = ts_key(before_ts)
        self.fetches += 1
        try:
            page = self.client.conversations_history(channel=channel, latest=before_ts, limit=_DM_PAGE,
                                                     oldest=f"{max(0.0, sec - window_s):.0f}.{frac:06d}")
        except SlackApiError as e:
            log.warning("conversations.history failed", extra={"channel": channel, "error": e.response.get("error")})
            return []
        answers_after: list[dict[str, Any]] = []
        for m in clean_messages(page):  # newest first
            if self.is_bot_message(m, bot_user_id, bot_id):
                answers_after.append(m)
            elif self._turns([m], bot_user_id, bot_id):
                asked = m
                break
        else:
            return []
        thread = (self.turns(channel, asked["ts"], before_ts=before_ts, bot_user_id=bot_user_id, bot_id=bot_id,
                             max_turns=max_turns)
                  if asked.get("reply_count") or asked.get("thread_ts") == asked["ts"] else [])
        if not thread:  # no thread read, or it is gone: the question as the history page has it
            thread = self._turns([asked], bot_user_id, bot_id)
        return keep_turns([*thread, *self._turns(answers_after[::-1], bot_user_id, bot_id)], max_turns)

    def _turns(self, msgs: list[dict[str, Any]], bot_user_id: str | None, bot_id: str | None) -> list["Turn"]:
        """Messages as Turns: the bot's answers (not its notices), and what people said to the bot."""
        from flytegpt.bot.answering import Turn

        turns: list[Turn] = []
        for m in msgs:
            if self.is_bot_message(m, bot_user_id, bot_id):
                text = without_notice(answer_text(m))
                if text.strip():
                    turns.append(Turn("assistant", valid_unicode(text)))
            elif m.get("bot_id") or m.get("subtype") not in (None, "thread_broadcast", "file_share"):
                continue  # other bots, joins, edits: not part of the conversation
            elif not isinstance(m.get("text"), str) or not for_the_bot(m["text"], bot_user_id):
                continue  # people talking to each other, a thank-you: not what a follow-up is about
            else:
                text = question_text(m.get("text"), bot_user_id)
                if text:
                    turns.append(Turn("user", text))
        return turns


def question_text(text: object, bot_user_id: str | None) -> str:
    """What the user typed, from a message's `text`: the bot's mention removed, other people's
    mentions made "@someone" (a question is stored for the maintainers' report: no user id or
    name is kept), then Slack's markup and escapes read as the indexed threads read them
    (`&lt;` -> `<`, `<url|label>` -> "label (url)"), so a pasted error or link searches as
    written; and valid Unicode (half an emoji would fail the tokenizer and the feedback database),
    cleaned of control characters, bidi overrides and invisible ends (`clean_question`)."""
    if not isinstance(text, str):
        return ""
    text = _USER_MENTION.sub("@someone", strip_mentions(text, bot_user_id))
    return clean_question(valid_unicode(render_markup(text, Directory())))


def strip_mentions(text: str, bot_user_id: str | None) -> str:
    """Remove the bot's own mention(s) from a question; other mentions stay. Only the gap a mention
    leaves is tidied (the mention and the spaces after it; one space where it stood between two
    words): the rest is kept as typed, since pasted YAML and Python mean their indentation, and
    flattening every run of spaces sent the model `defaults:` beside `cpu:`."""
    if bot_user_id:
        mention = re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^<>]*)?>[ \t]*")  # anchored at "<@": linear
        text = mention.sub(_mention_gap, text)
    return text.strip()


def _mention_gap(m: re.Match[str]) -> str:
    """What stands where the bot's mention was: a space between two words ("ask<@B> me" -> "ask me"),
    nothing at the start or end of a line or after a space ("hi <@B> how" -> "hi how")."""
    before = m.string[m.start() - 1] if m.start() else "\n"
    after = m.string[m.end()] if m.end() < len(m.string) else "\n"
    return "" if before.isspace() or after in "\r\n" else " "
