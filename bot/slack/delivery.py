"""Delivery: the one way replies reach Slack.

A question came either from a conversation (mention, thread follow-up, DM: the answer is
posted with chat.postMessage, in the thread when there is one) or from the slash command
(the answer goes to its response_url, which Slack accepts at most 5 times). `send` is the
one helper that knows both; `post` is what the answer job calls with a question and the
rendered answer. The small notices around an answer (👀, ephemeral notices, replies to
button clicks) are here too, so every Slack write of the bot is in this module.

An answer Slack keeps refusing for a passing reason (429, 5xx, `internal_error`, the
network) after the client's own retries is not lost: `DeferredPosts` keeps the replies not
posted yet and posts them again from one background thread (Retry-After honoured, else
growing waits) for up to [bot] deferred_post_s, while the answer workers go on to the next
question. A refusal that will not pass (`channel_not_found`, `is_archived`, auth) is reported
at once, as everything is with deferral off.

A post whose outcome Slack left open (a timeout, a connection lost after the request went
out, HTTP 5xx, `internal_error`, `fatal_error`: "possibly succeeded") is looked for in its
thread before it is called failed or made again (`_post_message`, by the message's `metadata`
marker); the WebClient does not retry those for chat.postMessage
(ingest/slack_client.py). A reply Slack refuses for what it holds (`msg_too_long`,
`invalid_blocks`, `msg_blocks_too_long`: CONTENT_ERRORS) gets one more try as plain text
(blocks.plain_text), and if that is refused too, a notice that does not promise a retry will
work.

The same queue finishes the repair of a streamed answer that broke half-way (stream.py):
rewriting the streamed messages into the final ordinary rendering is a list of `Edit`s
(chat.update of each streamed message, chat.delete of any left over) made before the posts
of the replies beyond them. What Slack refused for a passing reason is kept and done later,
in order, each step once; the answer counts as answered when the last step is done.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.webhook import WebhookClient

from flytegpt.bot import messages
from flytegpt.ingest.slack_client import SERVER_ERROR_RETRIES, TRANSIENT_ERRORS, outcome_unknown, retry_handlers

from .blocks import SlackMessage, marker_of, plain_text, render_notice

if TYPE_CHECKING:
    from flytegpt.bot.metrics import Metrics

    from .history import ThreadHistory
    from .question import Question

log = logging.getLogger(__name__)

PICKED_UP_REACTION = "eyes"
RESPONSE_URL_POSTS = 4  # Slack allows 5 per response_url; keep one spare
RESPONSE_URL_LIFE_S = 30 * 60 - 60  # Slack takes posts to a response_url for 30 minutes; one kept spare
WEBHOOK_TIMEOUT_S = 15
LANDED_CHECKS, LANDED_CHECK_S = 3, 1.0  # after a timed-out or cut-off post: look for it this often, this far apart
ANSWERED_CHECKS = 1  # ... after Slack answered "possibly done" (5xx, internal_error): what was done is done
LANDED_SKEW_S = 60.0  # ... among the messages from this long before the post on (Slack's clock is not ours)
# Slack refused what a reply holds, not the moment: the same reply is refused again, whenever.
CONTENT_ERRORS = frozenset({"msg_too_long", "invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long"})
MAX_DEFERRED = 100  # answers waiting for Slack at once; past this a refusal is reported at once
DEFERRED_FIRST_WAIT_S = 5.0  # without Retry-After: 5, 10, 20, 40 s (plus up to 1 s jitter) ...
DEFERRED_MAX_WAIT_S = 60.0  # ... and at most this between two tries
DEFERRED_MIN_WAIT_S = 1.0  # even when Retry-After says 0: never a busy loop against a refusing Slack

Callback = Callable[[], None]
# Told why the replies never reached Slack: the failure counted for them, "post_failed" (Slack refused
# where they were going, or for longer than deferral waited) or "post_refused" (for what they hold,
# also as plain text), so the question log records the same cause as flytegpt_failures_total.
Lost = Callable[[str], None]


def _webhook(url: str, *, retries: bool = True) -> WebhookClient:
    """A response_url client with the same retries as the Web API client (none for a deferred
    try: the waits between those are the queue's)."""
    return WebhookClient(url, timeout=WEBHOOK_TIMEOUT_S, retry_handlers=retry_handlers() if retries else [])


def _single_try(client: WebClient) -> WebClient:
    """`client` without retries, for deferred tries: Slack's Retry-After is honoured by the
    queue's schedule, not by sleeping on its one thread while other answers wait behind."""
    return WebClient(token=client.token, base_url=client.base_url, timeout=client.timeout, ssl=client.ssl,
                     proxy=client.proxy, headers=dict(client.headers), retry_handlers=[])


def _slack_error(e: BaseException) -> str:
    if isinstance(e, SlackApiError):
        return str(e.response.get("error"))
    if isinstance(e, DeliveryError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _where(q: "Question") -> dict[str, Any]:
    """Where a question's reply goes, as `send` takes it. A slash command's answer is only for
    its asker: through its response_url, or chat.postEphemeral when there is none (a proxy or
    client that sends none must not make a private question's answer public)."""
    return {"channel": q.channel, "thread_ts": q.thread_ts, "response_url": q.response_url,
            "private_to": q.user if q.surface == "command" else None}


def _privately(q: "Question") -> dict[str, Any]:
    """Where a slash command's reply goes once its response_url refused it (expired, gone, or
    refusing for longer than deferral waits): the same channel, seen by the asker only."""
    return {"channel": q.channel, "thread_ts": q.thread_ts, "private_to": q.user}


def _run(callback: Callable[..., None] | None, *args: Any) -> None:
    """A caller's follow-up (store the answer, forget its id); its failure is not the post's."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - the reply's fate is settled either way
        log.exception("the follow-up of a reply failed")


class DeliveryError(RuntimeError):
    """Slack did not accept a reply (after the client's retries)."""


class WebhookRefused(DeliveryError):
    """A response_url answered something other than 200 (kept: the status, body and Retry-After)."""

    def __init__(self, status: int, body: Any, headers: dict[str, Any] | None) -> None:
        super().__init__(f"response_url answered {status}: {body}")
        self.status, self.body, self.headers = status, str(body or ""), dict(headers or {})


class NotLanded(DeliveryError):
    """A chat.postMessage whose outcome Slack left open (`cause`), looked for in its thread and
    not there: another try shows it once."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(_slack_error(cause))
        self.cause = cause


class MaybeLanded(NotLanded):
    """... and the thread could not be read to look: it may be there. Another try looks first
    (DeferredPosts: `_Deferred.unsure_since`), so it is not shown twice."""


def _unsure_since(e: BaseException, before: float | None) -> float | None:
    """Since when (epoch seconds) the first reply of a refused post (`e`, a NotPosted) may be in
    its thread unseen: kept across tries until a look settles it (`before`), None when it cannot be."""
    if isinstance(e, NotPosted) and isinstance(e.cause, MaybeLanded):
        now = time.time() - LANDED_SKEW_S
        return now if before is None else min(before, now)
    return None


@dataclass(frozen=True)
class Edit:
    """A change to a message the bot has already shown: chat.update to `message`, or
    chat.delete when `message` is None (a streamed answer rewritten into its final rendering)."""

    ts: str
    message: SlackMessage | None


class NotPosted(DeliveryError):
    """Slack refused a reply or an edit: `edits` are the edits not made yet (the refused one
    first) and `unsent` the replies not posted yet (those before are done, so a later try
    starts there and never makes a step twice)."""

    def __init__(self, unsent: list[SlackMessage], cause: BaseException, edits: Sequence[Edit] = (),
                 posted: int = 0) -> None:
        super().__init__(_slack_error(cause))
        self.unsent, self.cause, self.edits = unsent, cause, list(edits)
        self.posted = posted  # replies this try posted before the refusal


def _transient(e: BaseException, *, checked_thread: bool) -> bool:
    """Whether Slack may take the reply later: rate limited, Slack's own trouble, the network.

    A post whose outcome was left open is transient only where it was looked for in its thread
    and not found (NotLanded, or a timeout with `checked_thread`); elsewhere Slack may have
    posted it, and a second try would show it twice.
    """
    if isinstance(e, NotLanded):  # a MaybeLanded too: the next try looks before it posts
        return True
    if isinstance(e, SlackApiError):
        status = getattr(e.response, "status_code", 200)
        return status == 429 or status >= 500 or e.response.get("error") in TRANSIENT_ERRORS
    if isinstance(e, WebhookRefused):
        return e.status == 429 or e.status >= 500
    if isinstance(e, TimeoutError):
        return checked_thread
    return isinstance(e, OSError)  # refused, reset, unreachable: nothing was posted


def _passing(q: "Question", e: NotPosted) -> bool:
    """Whether what Slack refused (`e`) may be taken later. A timed-out edit may be made again
    (an update sets the same message, a delete finds it gone); a timed-out post only where
    it was looked for in its thread (see _transient)."""
    return _transient(e.cause, checked_thread=bool(e.edits) or bool(q.thread_ts and not q.response_url))


def content_refused(e: BaseException) -> bool:
    """Whether Slack refused a reply for what it holds (CONTENT_ERRORS): trying the same again
    can never pass; a smaller or plainer form may."""
    cause = e.cause if isinstance(e, NotPosted) else e
    if isinstance(cause, SlackApiError):
        return cause.response.get("error") in CONTENT_ERRORS
    if isinstance(cause, WebhookRefused):
        return 400 <= cause.status < 500 and any(code in cause.body for code in CONTENT_ERRORS)
    return False


def look_for(client: WebClient, channel: str, thread_ts: str | None, match: Callable[[dict], bool], *,
             oldest: float, checks: int) -> list[dict] | None:
    """The messages `match` accepts in a thread (or, without `thread_ts`, at a channel's top
    level) from `oldest` (epoch seconds) on, read with their `metadata`; looked for `checks`
    times LANDED_CHECK_S apart until one is there. None when Slack could not be asked.

    The one way the bot finds out whether a write whose outcome Slack left open was done: a
    post (Delivery._post_message) and a stream's start (stream.py)."""
    since = f"{max(0.0, oldest):.6f}"
    for _ in range(max(1, checks)):
        time.sleep(LANDED_CHECK_S)
        try:
            if thread_ts:
                resp = client.conversations_replies(channel=channel, ts=thread_ts, oldest=since, limit=200,
                                                    include_all_metadata=True)
            else:
                resp = client.conversations_history(channel=channel, oldest=since, limit=200,
                                                    include_all_metadata=True)
        except Exception as e:  # noqa: BLE001 - unknown stays unknown
            log.info("could not read the thread to look for a message", extra={"error": _slack_error(e)})
            return None
        found = [msg for msg in resp.get("messages") or [] if isinstance(msg, dict) and match(msg)]
        if found:
            return found
    return []


def checks_for(error: BaseException) -> int:
    """How often to look for a write whose outcome `error` left open: Slack answered (5xx,
    `internal_error`): once; no answer (a timeout, a lost connection): Slack may still be at it."""
    return ANSWERED_CHECKS if isinstance(error, SlackApiError) else LANDED_CHECKS


def _retry_after(e: BaseException) -> float | None:
    """Slack's Retry-After (seconds) from a refusal's response headers, if it sent one."""
    if isinstance(e, NotLanded):
        return _retry_after(e.cause)
    if isinstance(e, SlackApiError):
        headers = getattr(e.response, "headers", None) or {}
    elif isinstance(e, WebhookRefused):
        headers = e.headers
    else:
        return None
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


@dataclass(eq=False)
class _Deferred:
    """An answer Slack refused for a while: what is left to edit and post, where, and until when."""

    q: "Question"
    replies: list[SlackMessage]
    landed: Callback | None
    lost: Lost | None
    since: float  # time.monotonic() when it was kept
    until: float  # ... and after which it is given up
    tries: int = 0  # deferred tries so far
    settled: bool = False  # landed or lost has run (or is running)
    edits: list[Edit] = field(default_factory=list)  # made before the replies are posted
    unsure_since: float | None = None  # the first reply may be in the thread unseen: looked for first


class DeferredPosts:
    """Answers Slack refused for a passing reason, posted again from one background thread.

    One thread, not a timer per answer: the queue is bounded (MAX_DEFERRED), tries go out one
    at a time (Slack's limits are per app and channel: a burst would be refused again), and a
    shutdown can give each one last try and account for the rest. A try is one request, no
    client retries: the waits are the queue's, Slack's Retry-After when it sends one, else
    slack_sdk's exponential backoff (5 s, 10 s, 20 s ... at most DEFERRED_MAX_WAIT_S).
    """

    def __init__(self, delivery: "Delivery", window_s: float, capacity: int = MAX_DEFERRED) -> None:
        self.delivery, self.window_s, self.capacity = delivery, window_s, capacity
        self._backoff = BackoffRetryIntervalCalculator(backoff_factor=DEFERRED_FIRST_WAIT_S)
        self._cond = threading.Condition()  # over an RLock: `pending` is read with it held
        self._queue: list[tuple[float, int, _Deferred]] = []  # a heap of (due, order, post)
        self._order = itertools.count()
        self._trying: _Deferred | None = None
        self._dropped: list[_Deferred] = []  # refused again at a shutdown's last call
        self._thread: threading.Thread | None = None  # runs while anything waits
        self._last_call = False  # shutting down: nothing new, one more try each
        self._closed = False

    @property
    def pending(self) -> int:
        """Answers waiting for Slack (queued or being tried)."""
        with self._cond:
            return len(self._queue) + (self._trying is not None)

    def keep(self, q: "Question", error: BaseException, landed: Callback | None, lost: Lost | None) -> bool:
        """Keep the edits and replies Slack refused (`error`, a NotPosted) for later; False when
        they are not for later: deferral off, a refusal that will not pass, the queue full, stopping."""
        if self.window_s <= 0 or not isinstance(error, NotPosted) or not (error.unsent or error.edits):
            return False
        if not _passing(q, error):
            return False
        now = time.monotonic()
        until = now + self.window_s
        if q.response_url:  # it takes posts for 30 minutes from the command
            until = min(until, q.received + RESPONSE_URL_LIFE_S)
        post = _Deferred(q, list(error.unsent), landed, lost, since=now, until=until, edits=list(error.edits),
                         unsure_since=_unsure_since(error, None))
        due = self._due(post, error.cause, now)
        with self._cond:
            if self._last_call or self._closed or due is None:
                return False
            if self.pending >= self.capacity:
                log.warning("too many answers waiting for Slack: this one is not kept for later",
                            extra={"channel": q.channel, "waiting": self.pending})
                return False
            self._push(post, due)
        self._count("kept")
        log.warning("Slack refused the answer for now: posting it later",
                    extra={"channel": q.channel, "error": _slack_error(error.cause), "unsent": len(post.replies),
                           "edits": len(post.edits), "retry_in_s": round(due - now, 1)})
        return True

    def _count(self, outcome: str) -> None:
        """flytegpt_deferred_posts_total{outcome}: how often Slack's refusals are waited out."""
        self.delivery.metrics.deferred_posts.labels(outcome).inc()

    def last_call(self) -> None:
        """Shutting down: keep nothing new, and try each waiting answer once more, now."""
        with self._cond:
            self._last_call = True
            self._cond.notify_all()

    def close(self, timeout_s: float = 0.0) -> list[str]:
        """Last call, up to `timeout_s` for those tries, then drop what is left: counted
        (post_failed) and logged with its channels, so no answer disappears silently.
        Returns the channel ids of the dropped answers."""
        self.last_call()
        with self._cond:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout_s))
        with self._cond:
            self._closed = True
            left = [p for _, _, p in self._queue] + self._dropped + ([self._trying] if self._trying else [])
            self._queue.clear()
            self._dropped = []
            left = [p for p in left if not p.settled]
            for p in left:
                p.settled = True
            self._cond.notify_all()
        for p in left:
            self.delivery.metrics.failures.labels("post_failed").inc()
            self._count("dropped")
            _run(p.lost, "post_failed")
        channels = [p.q.channel for p in left]
        if left:
            log.error("stopping: answers Slack had refused were dropped",
                      extra={"dropped": len(left), "channels": channels})
        return channels

    # --- the queue's thread -------------------------------------------------------------

    def _push(self, post: _Deferred, due: float) -> None:
        """Queue `post` for `due` and make sure the thread runs (with the lock held)."""
        heapq.heappush(self._queue, (due, next(self._order), post))
        self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True, name="flytegpt-deferred-posts")
            self._thread.start()

    def _due(self, post: _Deferred, error: BaseException, now: float) -> float | None:
        """When to try `post` next; None when that is past its window.

        Slack's Retry-After is honoured as given (a try that Slack asked not to make before
        the window ends is not made); a computed backoff is cut to one last try at the end."""
        after = _retry_after(error)
        wait = after if after is not None else min(DEFERRED_MAX_WAIT_S,
                                                   self._backoff.calculate_sleep_duration(post.tries))
        due = now + max(DEFERRED_MIN_WAIT_S, wait)
        if after is None and now < post.until:
            due = min(due, post.until)
        return due if due <= post.until else None

    def _work(self) -> None:
        while (post := self._next()) is not None:
            self._try(post)

    def _next(self) -> _Deferred | None:
        """The next answer due (all of them at once on a last call); None, and the thread
        ends, when nothing is left."""
        with self._cond:
            while True:
                if self._closed or not self._queue:
                    self._thread = None
                    return None
                due = self._queue[0][0]
                if self._last_call or due <= time.monotonic():
                    self._trying = heapq.heappop(self._queue)[2]
                    return self._trying
                self._cond.wait(due - time.monotonic())

    def _try(self, post: _Deferred) -> None:
        post.tries += 1
        try:
            self.delivery._post_all(post.replies, edits=post.edits, retries=False, look_since=post.unsure_since,
                                    **_where(post.q))
        except NotPosted as e:
            post.unsure_since = _unsure_since(e, post.unsure_since if e.posted == 0 else None)
            post.replies, post.edits = e.unsent, e.edits
            self._refused_again(post, e)
        else:
            self._landed(post)
        finally:
            with self._cond:
                if self._trying is post:
                    self._trying = None

    def _landed(self, post: _Deferred) -> None:
        with self._cond:
            late, post.settled = post.settled, True
        if late:  # a shutdown counted it as dropped while this try was on its way
            log.warning("a deferred answer reached Slack after the shutdown had dropped it",
                        extra={"channel": post.q.channel})
            return
        log.info("deferred answer posted", extra={"channel": post.q.channel, "tries": post.tries,
                                                  "waited_s": round(time.monotonic() - post.since, 1)})
        self._count("landed")
        _run(post.landed)

    def _refused_again(self, post: _Deferred, e: NotPosted) -> None:
        """Queue the next try while the window lasts; else tell the asker, as an undeferred post would."""
        due = self._due(post, e.cause, time.monotonic()) if _passing(post.q, e) else None
        with self._cond:
            if post.settled:
                return
            if self._last_call or self._closed:
                self._dropped.append(post)  # close() counts and logs it
                return
            if due is not None:
                self._trying = None
                self._push(post, due)
                return
            post.settled = True
        self._count("given_up")
        log.error("Slack did not take a deferred answer: giving up",
                  extra={"channel": post.q.channel, "tries": post.tries, "error": _slack_error(e.cause),
                         "waited_s": round(time.monotonic() - post.since, 1)})
        failure = self.delivery._give_up(post.q, e, tell=True, retries=False)
        if failure is None:
            _run(post.landed)
        else:
            _run(post.lost, failure)


class Delivery:
    def __init__(self, client: WebClient, history: "ThreadHistory", metrics: "Metrics", *,
                 deferred_post_s: float = 0.0) -> None:
        self.client, self.history, self.metrics = client, history, metrics
        self.deferred = DeferredPosts(self, deferred_post_s)
        metrics.deferred_waiting.set_function(lambda: self.deferred.pending)

    # --- answers ----------------------------------------------------------------------

    def post(self, q: "Question", replies: Sequence[SlackMessage], *, edits: Sequence[Edit] = (),
             tell_on_failure: bool = True, defer: bool = False, landed: Callback | None = None,
             lost: Lost | None = None) -> bool:
        """Post replies where the question came from (after `edits` to messages already shown, in
        order); True when they are in Slack or (`defer`) kept to be posted later, False (logged,
        counted) when Slack refused.

        The client has already retried Slack's transient errors. With `defer`, what Slack still
        refuses for a passing reason waits in `deferred` (the caller, an answer worker, is free
        for the next question); otherwise, and when that runs out too, the asker gets a short
        notice instead of silence (if Slack takes that one). Exactly one of `landed` (the
        replies are in Slack) and `lost` (given the failure counted) runs: before this returns, or
        when a deferred post is settled (on the deferred queue's thread).
        """
        try:
            self.send(replies, edits=edits, **_where(q))
        except Exception as e:  # noqa: BLE001 - reported to the caller as False
            if defer and self.deferred.keep(q, e, landed, lost):
                return True
            failure = self._give_up(q, e, tell=tell_on_failure)
            if failure is None:
                _run(landed)
                return True
            _run(lost, failure)
            return False
        _run(landed)
        return True

    def _give_up(self, q: "Question", e: BaseException, *, tell: bool, retries: bool = True) -> str | None:
        """Slack did not take the replies where they were going. Refused for what they hold, they
        are tried once more as plain text; a slash command's go to its asker with
        chat.postEphemeral instead (None: they arrived after all); else count, log and tell, and
        return the failure counted (see _refused)."""
        if content_refused(e):
            again = self._as_plain_text(q, e, retries=retries)
            if again is None:
                return None
            e = again
        if q.response_url and not content_refused(e):
            unsent = e.unsent if isinstance(e, NotPosted) else []
            try:
                self._post_all(unsent, retries=retries, **_privately(q))
            except Exception as e2:  # noqa: BLE001 - counted and logged below
                log.info("chat.postEphemeral did not take it either", extra={"error": _slack_error(e2)})
            else:
                if unsent:
                    log.warning("the response_url refused the answer: sent with chat.postEphemeral",
                                extra={"channel": q.channel, "error": _slack_error(e)})
                    return None
        return self._refused(q, e, tell=tell, retries=retries)

    def _as_plain_text(self, q: "Question", e: BaseException, *, retries: bool) -> BaseException | None:
        """One more try of what Slack refused for its content (`e`): the edits and replies not
        made yet, as plain text (blocks.plain_text). None when Slack took it, else its refusal."""
        unsent = list(e.unsent) if isinstance(e, NotPosted) else []
        edits = list(e.edits) if isinstance(e, NotPosted) else []
        plain = plain_text([ed.message for ed in edits if ed.message is not None] + unsent)
        plain_edits = [ed if ed.message is None else Edit(ed.ts, plain.pop(0) if plain else None) for ed in edits]
        if q.response_url:  # within Slack's 5 posts: those made before the refusal count
            room = max(1, RESPONSE_URL_POSTS - (e.posted if isinstance(e, NotPosted) else 0))
            if len(plain) > room:
                plain = plain[:room - 1] + [render_notice(messages.TRUNCATED)]
        log.warning("Slack refused the answer for what it holds: trying it as plain text",
                    extra={"channel": q.channel, "error": _slack_error(e), "messages": len(plain),
                           "edits": len(plain_edits)})
        try:
            self._post_all(plain, edits=plain_edits, retries=retries, **_where(q))
        except Exception as again:  # noqa: BLE001 - the caller reports it
            return again
        log.info("the answer was posted as plain text", extra={"channel": q.channel})
        return None

    def _refused(self, q: "Question", e: BaseException, *, tell: bool, retries: bool = True) -> str:
        """Count and log a reply Slack did not take; with `tell`, one notice to the asker (not
        through a response_url that has just refused: chat.postEphemeral). Returns the failure
        counted, which the caller logs the question with.

        Refused for what it holds (also as plain text), it is counted apart (`post_refused`: a
        bug of ours or a limit Slack changed, not a passing refusal) and the notice says so instead
        of asking to try again in a minute: the same question would be refused the same way."""
        refused = content_refused(e)
        failure = "post_refused" if refused else "post_failed"
        self.metrics.failures.labels(failure).inc()
        log.error("posting the answer failed", extra={"channel": q.channel, "error": _slack_error(e)})
        if tell:
            where = _privately(q) if q.response_url else _where(q)
            notice = messages.POST_REFUSED if refused else messages.POST_FAILED
            try:
                self._post_all([render_notice(notice)], retries=retries, **where)
            except Exception as e2:  # noqa: BLE001 - logged; nothing more to tell (one answer, counted once)
                log.error("the notice did not reach the asker either",
                          extra={"channel": q.channel, "error": _slack_error(e2)})
        return failure

    def notice(self, q: "Question", text: str) -> bool:
        """A short plain-text notice where the answer would have gone."""
        return self.post(q, [render_notice(text)])

    def send(self, replies: Sequence[SlackMessage], *, channel: str, thread_ts: str | None = None,
             response_url: str | None = None, response_type: Literal["ephemeral", "in_channel"] = "ephemeral",
             max_url_posts: int = RESPONSE_URL_POSTS, private_to: str | None = None,
             edits: Sequence[Edit] = ()) -> None:
        """Make `edits` (Web API), then post to a response_url (at most `max_url_posts` posts) or
        with chat.postMessage; raises NotPosted (a DeliveryError) on refusal."""
        replies = list(replies)
        if response_url and len(replies) > max_url_posts:
            replies = replies[:max_url_posts - 1] + [render_notice(messages.TRUNCATED)]
        self._post_all(replies, channel=channel, thread_ts=thread_ts, response_url=response_url,
                       response_type=response_type, private_to=private_to, edits=edits)

    def _post_all(self, replies: Sequence[SlackMessage], *, channel: str, thread_ts: str | None = None,
                  response_url: str | None = None, response_type: Literal["ephemeral", "in_channel"] = "ephemeral",
                  retries: bool = True, private_to: str | None = None, edits: Sequence[Edit] = (),
                  look_since: float | None = None) -> None:
        """Make the edits, then post the replies, in order (with the client's retries unless
        `retries` is off): to the response_url, else only for `private_to` (chat.postEphemeral),
        else chat.postMessage.

        The first step Slack refuses raises NotPosted with it and those after it: the ones
        before are done, and a later try must not make them again. `look_since`: the first
        reply may have been posted since then by a try whose outcome was never known; it is
        looked for before it is posted."""
        replies, edits = list(replies), list(edits)
        posted = edited = 0
        client = self.client if retries else _single_try(self.client)
        try:
            for edit in edits:
                self._edit(client, channel, edit)
                edited += 1
            if response_url:
                hook = _webhook(response_url, retries=retries)
                for m in replies:
                    resp = hook.send(text=m.text, blocks=m.blocks, response_type=response_type,
                                     replace_original=False)
                    if resp.status_code != 200:
                        raise WebhookRefused(resp.status_code, resp.body, resp.headers)
                    posted += 1
                return
            for m in replies:
                if private_to:
                    client.chat_postEphemeral(channel=channel, user=private_to, thread_ts=thread_ts, **m.kwargs())
                else:
                    self._post_message(client, m, channel, thread_ts, tries=1 + SERVER_ERROR_RETRIES if retries else 1,
                                       look_since=look_since if posted == 0 else None)
                posted += 1
        except Exception as e:
            raise NotPosted(replies[posted:], e, edits[edited:], posted=posted) from e
        finally:
            if thread_ts and not response_url and not private_to and (posted or edited or not replies):
                self.history.invalidate(channel, thread_ts)

    @staticmethod
    def _edit(client: WebClient, channel: str, edit: Edit) -> None:
        """One chat.update or chat.delete of a message already shown."""
        if edit.message is not None:  # `blocks` always: [] clears a message's blocks (plain text)
            client.chat_update(channel=channel, ts=edit.ts, text=edit.message.text, blocks=edit.message.blocks)
            return
        try:
            client.chat_delete(channel=channel, ts=edit.ts)
        except SlackApiError as e:  # gone already: an earlier try Slack did but answered too late
            if e.response.get("error") != "message_not_found":
                raise

    def _post_message(self, client: WebClient, m: SlackMessage, channel: str, thread_ts: str | None, *,
                      tries: int = 1, look_since: float | None = None) -> None:
        """One chat.postMessage, marked with the message's `metadata`, up to `tries` times.

        An outcome Slack leaves open (a timeout, a connection lost after the request went out,
        HTTP 5xx, `internal_error`, `fatal_error`) is no failure if the message is in the thread
        after all (looked for by its marker); it is tried again only when it is not there (a
        timeout not at once: that try would wait as long again), and raises NotLanded when it
        still is not, MaybeLanded when the thread could not be read. A blind second try showed
        the asker the answer twice. With `look_since` (an earlier try's outcome
        was never known) it is looked for before the first try."""
        where: dict[str, Any] = {"thread_ts": thread_ts, "reply_broadcast": False} if thread_ts else {}
        if look_since is not None:
            landed = self._landed(channel, thread_ts, m, look_since, checks=ANSWERED_CHECKS)
            if landed:
                log.warning("an earlier try of chat.postMessage had posted the message", extra={"channel": channel})
                return
            if landed is None:
                raise MaybeLanded(DeliveryError("the thread could not be read to look for an earlier try"))
        since = time.time()
        for attempt in range(1, max(1, tries) + 1):
            try:
                client.chat_postMessage(channel=channel, unfurl_links=False, unfurl_media=False,
                                        metadata=m.metadata(), **where, **m.kwargs())
                return
            except Exception as e:
                if not outcome_unknown(e):
                    raise
                landed = self._landed(channel, thread_ts, m, since, checks=checks_for(e))
                if landed:
                    log.warning("chat.postMessage failed, but the message is in the thread",
                                extra={"channel": channel, "error": _slack_error(e)})
                    return
                if landed is None:
                    raise MaybeLanded(e) from e
                if attempt >= tries or isinstance(e, TimeoutError):
                    raise NotLanded(e) from e
                log.info("chat.postMessage failed and the message is not in the thread: trying again",
                         extra={"channel": channel, "error": _slack_error(e), "attempt": attempt})

    def _landed(self, channel: str, thread_ts: str | None, m: SlackMessage, since: float, *,
                checks: int = LANDED_CHECKS) -> bool | None:
        """Whether `m` reached the thread (or the channel's top level) after all: a message with
        its marker, or, read back without metadata, with its text and posted since `since`. A slow
        Slack posts late: looked for `checks` times, LANDED_CHECK_S apart. None: could not look."""
        def same(msg: dict) -> bool:
            marker = marker_of(msg)
            if marker is not None:
                return marker == m.marker
            try:
                recent = float(msg.get("ts") or 0) >= since - LANDED_SKEW_S
            except (TypeError, ValueError):
                recent = False
            return recent and msg.get("text") == m.text

        found = look_for(self.client, channel, thread_ts, same, oldest=since - LANDED_SKEW_S, checks=checks)
        return None if found is None else bool(found)

    def delete_original(self, response_url: str) -> None:
        """Remove the ephemeral message a button was clicked in (after sharing it)."""
        _webhook(response_url).send(delete_original=True)

    # --- small notices ----------------------------------------------------------------

    def react(self, channel: str, ts: str, name: str = PICKED_UP_REACTION) -> None:
        """👀 on the question (it was picked up), or another reaction (a thank-you's 🤗); best-effort."""
        try:
            self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError as e:
            if e.response.get("error") != "already_reacted":
                log.info("reaction failed", extra={"error": e.response.get("error")})

    def ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None,
                  mrkdwn: bool = False) -> None:
        """A notice only `user` sees."""
        msg = render_notice(text, mrkdwn=mrkdwn)
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, **msg.kwargs())
        except SlackApiError as e:
            log.warning("ephemeral notice failed", extra={"error": e.response.get("error")})

    def respond(self, body: dict, text: str, channel: str | None, user: str) -> None:
        """An ephemeral reply to a button click: via its response_url, else chat.postEphemeral."""
        url = body.get("response_url")
        if url:
            try:
                self.send([render_notice(text)], channel=channel or "", response_url=url)
                return
            except Exception as e:  # noqa: BLE001 - fall back to the Web API
                log.info("response_url failed, using chat.postEphemeral", extra={"error": str(e)})
        if channel:
            self.ephemeral(channel, user, text)
