"""The one way this project builds a Slack WebClient (the bot and the `slack_api` source).

Both talk to the same Web API with the same failure modes, so they share the base URL
rule (SLACK_API_URL for GovSlack or a test stand-in), the timeout and the retry policy:
- 429: wait out Retry-After (slack_sdk's RateLimitErrorRetryHandler);
- dropped or reset connections (ConnectionErrorRetryHandler);
- Slack's own trouble: an HTTP 5xx, or `ok: false` with a transient error code such as
  `internal_error` or `fatal_error`, retried with exponential backoff and jitter.
Anything else (`channel_not_found`, `invalid_auth`, ...) is the caller's error and fails
at once.

Except for the writes a repeat of which shows twice (UNREPEATABLE_WRITES: a new message, or
more text in a streamed one): after an outcome Slack documents as "possibly succeeded" (HTTP
5xx, `internal_error`, `fatal_error`, a connection lost after the request was sent) they are
not retried here (each blind retry was one more copy of the answer in the
thread). The bot looks for the message first (bot/slack/delivery.py) and tries again only
when it is not there. A 429, a connection that failed before the request went out, and
Slack's "not done" answers (`ratelimited`, `service_unavailable`, `request_timeout` with
HTTP 200) are retried for them as for everything else.
"""

from __future__ import annotations

import json
from http.client import HTTPException
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.error import URLError
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RetryHandler
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator

if TYPE_CHECKING:
    from slack_sdk.web import SlackResponse
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

    from flytegpt.ingest.config import Settings

DEFAULT_API_URL = "https://slack.com/api/"
TIMEOUT_S = 30
RATE_LIMIT_RETRIES = 3
SERVER_ERROR_RETRIES = 3
CONNECTION_RETRIES = 2
BACKOFF_FACTOR_S = 0.5  # first wait; doubles with each retry (plus jitter)
# Error codes Slack documents as transient ("try again"): retrying can succeed.
TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "ratelimited", "service_unavailable",
                              "request_timeout"})
# ... of which these say the operation may have been done all the same (Slack's error tables:
# "It's possible some aspect of the operation succeeded before the error was raised").
POSSIBLY_DONE_ERRORS = frozenset({"internal_error", "fatal_error"})
# Web API writes whose repeat shows twice: chat.postMessage and chat.startStream make a new
# message, chat.appendStream adds its text again. Not in the set, because a repeat is harmless:
# chat.update (sets the same content again), chat.delete (a repeat finds it gone:
# `message_not_found`), chat.stopStream (a repeat after a stop that was done is refused,
# `message_not_in_streaming_state`, and the stream is then rewritten in place with chat.update,
# never posted twice), reactions.add (`already_reacted`), chat.postEphemeral (seen by the asker
# only, and not readable back to check: a rare private duplicate beats a lost notice), and
# every read (the ingest's `slack_api` source keeps all its retries).
UNREPEATABLE_WRITES = frozenset({"chat.postMessage", "chat.startStream", "chat.appendStream"})


def api_base_url(settings: "Settings") -> str:
    """SLACK_API_URL (GovSlack, tests) or Slack's own, with the trailing slash WebClient needs.

    A value that is no http(s) URL is a ConfigError naming the variable: urllib would raise a
    ValueError (`unknown url type`) from deep inside the first API call.
    """
    url = (settings.slack_api_url or "").strip() or DEFAULT_API_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        from flytegpt.ingest.config import ConfigError

        raise ConfigError(f"SLACK_API_URL {url!r} is not an http(s) URL: unset it for Slack's own "
                          f"({DEFAULT_API_URL}) or give a base URL such as https://slack-gov.com/api/")
    from flytegpt.ingest.config import warn_if_plain_http

    warn_if_plain_http("SLACK_API_URL", url)
    return url if url.endswith("/") else url + "/"


def api_method(url: str) -> str:
    """The Web API method a request URL calls (`.../api/chat.postMessage` -> `chat.postMessage`)."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


class ServerTroubleRetryHandler(RetryHandler):
    """Retries an HTTP 5xx and an `ok: false` answer whose error is in TRANSIENT_ERRORS; for
    UNREPEATABLE_WRITES only the answers that say nothing was done."""

    def _can_retry(self, *, state: "RetryState", request: "HttpRequest",
                   response: "HttpResponse | None" = None, error: Exception | None = None) -> bool:
        if response is None:
            return False
        if response.status_code == 429:
            return False  # RateLimitErrorRetryHandler's, with Retry-After
        code = _error_code(response)
        if api_method(request.url) in UNREPEATABLE_WRITES and possibly_done(response.status_code, code):
            return False  # the caller looks for what may have been done before trying again
        return server_trouble(response.status_code, code)


class SentRequestRetryHandler(ConnectionErrorRetryHandler):
    """slack_sdk's ConnectionErrorRetryHandler, except for UNREPEATABLE_WRITES whose request
    was sent before the connection was lost (Slack may have done it: see sent_then_lost)."""

    def _can_retry(self, *, state: "RetryState", request: "HttpRequest",
                   response: "HttpResponse | None" = None, error: Exception | None = None) -> bool:
        if error is not None and sent_then_lost(error) and api_method(request.url) in UNREPEATABLE_WRITES:
            return False
        return super()._can_retry(state=state, request=request, response=response, error=error)


def server_trouble(status: int, error: str | None) -> bool:
    """An HTTP 5xx, or an `ok: false` answer whose error is in TRANSIENT_ERRORS: Slack's side."""
    return status >= 500 or error in TRANSIENT_ERRORS


def possibly_done(status: int, error: str | None) -> bool:
    """Slack's trouble that may have come after the operation was done: an HTTP 5xx (a proxy's
    or Slack's, the request may have been handled behind it) or POSSIBLY_DONE_ERRORS."""
    return status >= 500 or error in POSSIBLY_DONE_ERRORS


def sent_then_lost(error: BaseException) -> bool:
    """A connection error after the request went out, so Slack may have acted on it.

    urllib (slack_sdk's transport, one connection per request) wraps in URLError what fails
    while connecting and sending; what fails while waiting for the answer (a reset,
    RemoteDisconnected, a read timeout) comes raw."""
    return isinstance(error, (ConnectionError, HTTPException, TimeoutError)) and not isinstance(error, URLError)


def outcome_unknown(error: BaseException) -> bool:
    """Whether a failed Web API call may have been done all the same (see possibly_done and
    sent_then_lost): a write of it is looked for before it is made again."""
    if isinstance(error, SlackApiError):
        return possibly_done(getattr(error.response, "status_code", 200) or 200, error.response.get("error"))
    return sent_then_lost(error)


def _error_code(response: "HttpResponse") -> str | None:
    body: Any = response.body
    if not body and response.data:
        try:
            body = json.loads(response.data)
        except ValueError:
            return None
    return body.get("error") if isinstance(body, dict) and body.get("ok") is False else None


def retry_handlers(*, rate_limit_retries: int = RATE_LIMIT_RETRIES, server_error_retries: int = SERVER_ERROR_RETRIES,
                   backoff_factor_s: float = BACKOFF_FACTOR_S) -> list[RetryHandler]:
    """The retry policy above, as slack_sdk handlers (first match wins)."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor_s)
    return [RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
            SentRequestRetryHandler(max_retry_count=CONNECTION_RETRIES, interval_calculator=backoff),
            ServerTroubleRetryHandler(max_retry_count=server_error_retries, interval_calculator=backoff)]


def make_web_client(settings: "Settings", token: str, *, rate_limit_retries: int = RATE_LIMIT_RETRIES,
                    server_error_retries: int = SERVER_ERROR_RETRIES, backoff_factor_s: float = BACKOFF_FACTOR_S,
                    timeout_s: int = TIMEOUT_S) -> WebClient:
    """A WebClient on the configured base URL with the shared retry policy.

    The token is passed in (not read from `settings`) because each caller checks it its own
    way: the bot names the variable and its prefix, an ingest source names the source.
    """
    return WebClient(token=token, base_url=api_base_url(settings), timeout=timeout_s,
                     retry_handlers=retry_handlers(rate_limit_retries=rate_limit_retries,
                                                   server_error_retries=server_error_retries,
                                                   backoff_factor_s=backoff_factor_s))


def pages(first: "SlackResponse", on_repeat: Callable[[str], None] | None = None) -> Iterator["SlackResponse"]:
    """slack_sdk's cursor pagination, stopped when a cursor comes back a second time: a server
    (a proxy, a stand-in, a bug) that repeats `next_cursor` would otherwise be paged forever.
    `on_repeat` gets the repeated cursor."""
    seen: set[str] = set()
    for page in first:
        yield page
        meta = page.get("response_metadata")
        cursor = str((meta.get("next_cursor") if isinstance(meta, dict) else None) or "")
        if cursor in seen:
            if on_repeat is not None:
                on_repeat(cursor)
            return
        if cursor:
            seen.add(cursor)
