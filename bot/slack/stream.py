"""Streaming an answer into Slack while the model writes it.

Slack's streaming methods (`chat.startStream` / `appendStream` / `stopStream`) show a
message that grows in place. `StreamedReply` is one answer on its way through them:

- the first text starts the stream at once (the first words are what a user waits for);
  after that, text is buffered and appended at most every 0.5 s, once 256 characters
  are waiting or the oldest has waited 1 s, so a 1,500-character answer takes a handful
  of calls instead of one per token (appendStream has a rate tier like every method; a
  429 is waited out by the WebClient's RateLimitErrorRetryHandler);
- a message holds at most 12,000 characters of Markdown (Slack's limit per call, and
  what we keep a streamed message to); a longer answer stops the message at a line
  break (closing an open code fence) and continues in a second streamed message;
- `finish` appends what the model's final text adds and stops the stream with the
  sources and feedback buttons as blocks. When the final text is not a continuation
  of what was shown (a citation that only turned out invalid at the end), or the
  stream broke half-way, the streamed messages are to be replaced with the final
  rendering: `finish` stops the stream and leaves that repair to the caller as `edits`
  (chat.update of each streamed message, chat.delete of any left over) and `posts`
  (the replies beyond them), which delivery makes, later from its deferred queue while
  Slack refuses them for a passing reason (a stream that broke is often a Slack in trouble);
- exactly one answer: when Slack refuses streaming before anything was shown
  (`not_allowed`, `method_deprecated`, `unknown_method`, any error of the first call),
  `finish` says so and the caller posts the answer with chat.postMessage instead. Once
  something was shown, nothing is ever posted a second time.

- a `chat.startStream` whose outcome Slack left open (HTTP 5xx, `internal_error`,
  `fatal_error`, a connection lost after the request went out: "possibly succeeded") is not
  retried (ingest/slack_client.py: each retry was one more streaming message);
  the message it may have made is looked for in the thread (delivery.look_for). Found, it
  joins this reply's messages and the reply counts as broken: `finish` stops it and rewrites it
  in place with the final answer, as for any broken stream. Not found, nothing was shown: the
  answer is posted whole (or, for a later message of a long answer, the repair posts the rest).
  An `appendStream` whose outcome is open is not retried either (its text would show twice):
  the stream counts as broken and is rewritten in place.

slack_sdk's `ChatStream` helper buffers by size only and restarts a stream on `stop()`
after a failed start, which is the double answer this module exists to prevent; so the
three methods are called directly, through the same WebClient (and its retry policy).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from slack_sdk.errors import SlackApiError

from flytegpt.bot import messages
from flytegpt.ingest.slack_client import outcome_unknown

from .delivery import Edit, checks_for, look_for

if TYPE_CHECKING:
    from slack_sdk import WebClient

    from flytegpt.bot.answering.live import Progress

    from .blocks import SlackMessage

log = logging.getLogger(__name__)

MAX_MESSAGE_MARKDOWN = 12_000  # characters of Markdown in one streamed message
MIN_CHARS = 256  # an append waits for this much text ...
MIN_INTERVAL_S = 0.5  # ... and never comes sooner than this after the previous call ...
MAX_WAIT_S = 1.0  # ... unless text has waited this long
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_SLACK_SPECIAL = re.compile(r"<(?=[!@#])")  # <!here>, <@U…>, <#C…>: never a live mention from model text
_ZWSP = "\u200b"
_FENCE_ROOM = 16  # characters kept free at a message's end for closing an open code fence
# a half-made stream is a bot message in the thread from this long before its chat.startStream
# on (Slack's clock is not ours), not one of this reply's, that begins with the text it was sent
START_SKEW_S = 5.0
_WORDS = re.compile(r"[0-9A-Za-z]+")


def _fingerprint(text: str) -> str:
    """Letters and digits only, lower case: the same for the Markdown sent and however Slack
    shows it back (mrkdwn, escaped, with zero-width spaces)."""
    return "".join(_WORDS.findall(text or "")).lower()


def neutralize(markdown: str) -> str:
    """Model text cannot ping a channel or a person: `<!here>` is shown, not sent."""
    return _SLACK_SPECIAL.sub("<" + _ZWSP, markdown)


def _open_fence(text: str) -> tuple[str, str] | None:
    """The opening line and marker of a code fence still open at the end of `text`."""
    fence: tuple[str, str] | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if not m:
            continue
        marker = m.group(1)
        if fence is None:
            fence = (line.strip(), marker)
        elif marker[0] == fence[1][0] and len(marker) >= len(fence[1]) and not m.group(2).strip():
            fence = None
    return fence


def _cut(text: str, room: int) -> int:
    """Where to end a message that has `room` characters left: a paragraph, line or word break."""
    for sep in ("\n\n", "\n", " "):
        pos = text.rfind(sep, 0, room)
        if pos > room // 2:
            return pos + len(sep)
    return max(1, room)


class StreamedReply:
    """One answer streamed as a thread reply (see the module docstring)."""

    def __init__(self, client: "WebClient", *, channel: str, thread_ts: str, user: str, team: str | None,
                 is_dm: bool, limit: int = MAX_MESSAGE_MARKDOWN, min_chars: int = MIN_CHARS,
                 min_interval_s: float = MIN_INTERVAL_S, max_wait_s: float = MAX_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.channel, self.thread_ts = client, channel, thread_ts
        self.recipient = {} if is_dm else {"recipient_team_id": team, "recipient_user_id": user}
        self.limit, self.min_chars = limit, min_chars
        self.min_interval_s, self.max_wait_s, self.clock = min_interval_s, max_wait_s, clock
        self.state = "new"  # new -> streaming -> done; or refused (nothing shown) / broken (half shown)
        self.replaced = False  # the streamed messages are to be rewritten with the final rendering ...
        self.edits: list[Edit] = []  # ... by these edits of them (made by the caller, through delivery)
        self.posts: list["SlackMessage"] = []  # ... and these replies after them
        self.messages: list[str] = []  # ts of every streamed message, in order
        self.shown = ""  # every text handed to append(): what the user sees or is about to
        self.calls = 0  # Slack calls made for this reply
        self._buffer = ""
        self._message_text = ""  # Markdown in the current message
        self._open = False  # the current message is still streaming
        self._last_call = 0.0
        self._oldest = 0.0  # when the oldest buffered text arrived
        # the answer's worker appends and finishes; a shutdown may end the stream (fail) meanwhile
        self._lock = threading.RLock()

    @property
    def started(self) -> bool:
        return bool(self.messages)

    @property
    def refused(self) -> bool:
        return self.state == "refused"

    @property
    def outcome(self) -> str:
        """How the answer reached Slack: "streamed", "replaced" or "refused" (posted whole instead)."""
        return "refused" if self.refused else "replaced" if self.replaced else "streamed"

    # --- while the model writes ---------------------------------------------------------

    def append(self, text: str) -> None:
        with self._lock:
            self._append(text)

    def _append(self, text: str) -> None:
        if not text:
            return
        self.shown += text
        if self.state not in ("new", "streaming"):
            return
        now = self.clock()
        if not self._buffer:
            self._oldest = now
        self._buffer += text
        waited = now - self._last_call
        if not self.started or (waited >= self.min_interval_s
                                and (len(self._buffer) >= self.min_chars or now - self._oldest >= self.max_wait_s)):
            self._flush()

    def _flush(self) -> None:
        # a trailing "<" may become "<!here>" with the next piece: it waits for that piece
        keep = 1 if self._buffer.endswith("<") else 0
        text, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
        if text:
            self._guarded(lambda: self._send(text))

    def _guarded(self, action: Callable[[], None]) -> bool:
        """Run a stream call; a failure marks the reply refused (nothing shown) or broken."""
        try:
            action()
            return True
        except Exception as e:  # noqa: BLE001 - SlackApiError, or the connection after retries
            error = e.response.get("error") if isinstance(e, SlackApiError) else type(e).__name__
            if not self.started:
                self.state = "refused"
                log.info("streaming refused: posting the answer instead", extra={"error": error})
            else:
                self.state = "broken"
                log.warning("streaming failed half-way", extra={"error": error, "messages": len(self.messages)})
            return False

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        self.calls += 1
        self._last_call = self.clock()
        return method(**kwargs)

    def _send(self, text: str, *, stop: bool = False, blocks: list[dict] | None = None) -> None:
        """Stream `text`, starting and continuing messages as the limit requires; raises on refusal."""
        text = neutralize(text)  # before measuring: what Slack counts is what is sent
        while True:
            room = self.limit - len(self._message_text)
            if len(text) <= room:
                part, text = text, ""
            elif room <= _FENCE_ROOM:  # full: the rest goes into the next message
                part = ""
            else:  # room for closing an open fence is kept
                cut = _cut(text, room - _FENCE_ROOM)
                part, text = text[:cut], text[cut:]
                fence = _open_fence(self._message_text + part)
                if fence:
                    part, text = part.rstrip("\n") + "\n" + fence[1], fence[0] + "\n" + text
            last = not text
            md = part or None
            if not self._open:
                started = time.time()
                try:
                    resp = self._call(self.client.chat_startStream, channel=self.channel, thread_ts=self.thread_ts,
                                      markdown_text=md, **self.recipient)
                except Exception as e:
                    if outcome_unknown(e):
                        self._find_half_started(e, started, part)
                    raise
                self.messages.append(resp["ts"])
                self.state, self._open, self._message_text = "streaming", True, part
                if last and stop:
                    self._call(self.client.chat_stopStream, channel=self.channel, ts=self.messages[-1],
                               blocks=blocks)
                    self._open = False
            elif last and stop:
                self._call(self.client.chat_stopStream, channel=self.channel, ts=self.messages[-1],
                           markdown_text=md, blocks=blocks)
                self._message_text += part
                self._open = False
            elif md:
                self._call(self.client.chat_appendStream, channel=self.channel, ts=self.messages[-1],
                           markdown_text=md)
                self._message_text += part
            if last:
                return
            # this message is full: stop it, the rest goes into the next one
            self._call(self.client.chat_stopStream, channel=self.channel, ts=self.messages[-1])
            self._open, self._message_text = False, ""

    def _find_half_started(self, error: BaseException, started: float, sent: str) -> None:
        """chat.startStream failed with its outcome open (`error`): if the message it may have
        made is in the thread, it becomes this reply's last message, still streaming, so the
        caller's failure handling stops it and rewrites it (never a fragment left over)."""
        want = _fingerprint(sent)

        def half_made(msg: dict) -> bool:
            ts = str(msg.get("ts") or "")
            try:
                recent = float(ts) >= started - START_SKEW_S
            except ValueError:
                return False
            seen = _fingerprint(str(msg.get("text") or ""))
            return (bool(msg.get("bot_id")) and recent and ts != self.thread_ts and ts not in self.messages
                    and (not want or seen.startswith(want) or (bool(seen) and want.startswith(seen))))

        found = look_for(self.client, self.channel, self.thread_ts, half_made, oldest=started - START_SKEW_S,
                         checks=checks_for(error))
        if found is None:
            log.warning("chat.startStream failed and the thread could not be read: a half-made stream may be left",
                        extra={"channel": self.channel})
        elif len(found) == 1:
            log.warning("chat.startStream failed, but made its message: it is stopped and rewritten",
                        extra={"channel": self.channel})
            self.messages.append(str(found[0]["ts"]))
            self._open, self._message_text = True, sent
        elif found:  # more than one: not telling which is this reply's, none is touched
            log.warning("chat.startStream failed and several messages could be its own: left alone",
                        extra={"channel": self.channel, "found": len(found)})

    # --- the end ------------------------------------------------------------------------

    def finish(self, final_text: str, blocks: list[dict], replacement: Sequence["SlackMessage"]) -> bool:
        """End the reply with `final_text` (Markdown) and `blocks` under it.

        False when nothing was shown because Slack refused streaming: the caller posts the
        answer itself. True otherwise, also when the streamed messages have to be replaced
        by `replacement` (the final answer rendered as ordinary messages): then `edits` and
        `posts` are that repair, for the caller to make.
        """
        with self._lock:
            return self._finish(final_text, blocks, replacement)

    def _finish(self, final_text: str, blocks: list[dict], replacement: Sequence["SlackMessage"]) -> bool:
        if self.state == "refused":
            return False
        if self.state == "new":
            if self._guarded(lambda: self._send(final_text, stop=True, blocks=blocks)):
                self.state = "done"
                return True
            return self._repair(replacement) if self.started else False
        if self.state == "streaming" and final_text.startswith(self.shown):
            rest = self._buffer + final_text[len(self.shown):]
            self._buffer = ""
            if self._guarded(lambda: self._send(rest, stop=True, blocks=blocks)):
                self.state = "done"
                return True
        elif self.state == "streaming":
            log.info("final answer differs from the streamed text: replacing it")
        return self._repair(replacement)

    def fail(self, notice: str) -> None:
        """Something broke (or the bot is stopping) after text was shown: end the stream with
        `notice`, no second message. What was buffered but not sent yet goes first."""
        with self._lock:
            if self.state != "streaming":
                return
            rest, self._buffer = self._buffer, ""
            if self._guarded(lambda: self._send(rest + "\n\n" + notice, stop=True)):
                self.state = "done"

    def _repair(self, replacement: Sequence["SlackMessage"]) -> bool:
        """Stop the stream and set out how the final answer's ordinary rendering replaces the
        streamed messages: each one updated in place (deleted when the rendering has fewer),
        the rest of the rendering posted after them. Never a second full answer."""
        if self._open:
            try:
                self._call(self.client.chat_stopStream, channel=self.channel, ts=self.messages[-1])
            except Exception as e:  # noqa: BLE001 - e.g. already stopped by Slack; chat.update still works
                log.info("stopping a broken stream failed", extra={"error": str(e)})
            self._open = False
        self.state, self.replaced = "done", True
        self.edits = [Edit(ts, replacement[i] if i < len(replacement) else None) for i, ts in enumerate(self.messages)]
        self.posts = list(replacement[len(self.messages):])
        return True


ASSISTANT_STATUS = {"searching": messages.STATUS_SEARCHING, "writing": messages.STATUS_WRITING}


def assistant_status(client: "WebClient", channel: str, thread_ts: str, progress: "Progress") -> None:
    """The panel's status line ("FlyteGPT is searching …") for a step of the answer."""
    status = ASSISTANT_STATUS[progress.stage].format(sources=progress.sources)
    try:
        client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread_ts, status=status)
    except Exception as e:  # noqa: BLE001 - a status is a courtesy; the answer still comes
        log.info("assistant status failed", extra={"error": str(e)})
