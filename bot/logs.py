"""Structured logging that never prints a secret.

Slack and OpenAI tokens can reach a log line in many ways (an exception repr, a provider's
401 body echoing the key, a debug dump of request headers, a dict passed as `extra`). The
redaction filter sits on the handlers, so it sees every record from every library, not
only ours, and it redacts two things: the configured secret values themselves (whatever
their shape: an OpenAI-compatible server's key need not start with `sk-`) and anything
shaped like a known token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from flytegpt.ingest.config import Settings
from flytegpt.ingest.models import escape_controls, strip_terminal

# Known shapes: Slack bot/user/app tokens, OpenAI-style keys, GitHub and GitLab access tokens,
# bearer credentials, and the user:password (or token) part of a URL (a git source's clone URL).
_TOKEN = re.compile(r"\b(xox[abposr]-|xapp-|sk-|gh[pousr]_|github_pat_|glpat-)[A-Za-z0-9_\-]{4,}")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9_\-.~+/=]{8,}")
_MIN_SECRET_CHARS = 8  # shorter "secrets" (a test's "x") would blank out ordinary words
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_PLAIN = (str, int, float, bool, type(None))

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secrets(values: Iterable[str | None]) -> None:
    """Redact these exact values from every log line from now on (empty and short ones ignored)."""
    with _secrets_lock:
        _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_CHARS)


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values of `settings` (every SecretStr field: API key, Slack tokens, ...)."""
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            values.append(value.get_secret_value())
    return values


def redact(text: str) -> str:
    """Replace the registered secrets by '***' and token-shaped text by its prefix and '***'."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _TOKEN.sub(lambda m: m.group(1) + "***", text)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + "***@", text)
    return _BEARER.sub(lambda m: m.group(1) + "***", text)


def _redacted_value(value: Any) -> Any:
    """An `extra` value safe to print: strings redacted, anything else as its redacted repr."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    return redact(repr(value))


class RedactingFilter(logging.Filter):
    """Rewrites each record in place: message, arguments, traceback, stack and extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw message
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            record.exc_info = None  # formatters would otherwise format the live exception again
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STD_ATTRS and not key.startswith("_"):
                setattr(record, key, _redacted_value(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception.

    A log line quotes what users and the corpus wrote (a skipped file's name, a question):
    json.dumps escapes C0 controls, and the C1 controls and bidi overrides it leaves raw are
    escaped too, so no line can drive the terminal or log viewer that shows it."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, _PLAIN) else repr(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return escape_controls(json.dumps(out, ensure_ascii=False))


class _ExtrasFormatter(logging.Formatter):
    """Text lines with the extras appended, without terminal sequences or controls (see JsonFormatter)."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}
        return strip_terminal(base + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else ""))


def setup_logging(*, json_logs: bool = False, level: int | str = logging.INFO, stream: Any = None,
                  settings: Settings | None = None, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
                  replace: bool = True) -> logging.Handler | None:
    """Configure the root logger: one handler (replacing others), redaction, text or JSON lines.

    The secrets of `settings` (the environment's by default) are registered for redaction,
    and the redaction filter is put on every handler already configured anywhere, so a
    library's own handler cannot print what ours would hide. `replace=False` (the CLI): when
    the process has logging set up already (a host application, a test runner), only the
    filter is added and None is returned. Even at DEBUG, slack_bolt and slack_sdk log at INFO
    and above (their debug lines quote users' messages) unless FLYTEGPT_DEBUG_SLACK=1.
    """
    register_secrets(settings_secrets(settings if settings is not None else Settings()))
    redacting = RedactingFilter()
    if not replace and logging.getLogger().handlers:
        _filter_every_handler(redacting)
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(redacting)
    handler.addFilter(SlackPayloadFilter())
    handler.setFormatter(JsonFormatter() if json_logs else _ExtrasFormatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):  # the process's logging has one owner: one handler
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _filter_every_handler(redacting)
    # faiss.loader: "Could not load library with AVX2 support" at every import of a wheel that
    # dispatches at run time (AVX2 is used); it reads as a fault where there is none
    # httpx2/httpcore2: the HTTP client of openai 3.x (one INFO line per model call: 45% of all lines)
    for noisy in ("urllib3", "httpx", "httpcore", "httpx2", "httpcore2", "openai", "websockets", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # "skipped: maximum number of running instances" while a big version downloads is expected
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, root.level))
    slack_debug = slack_debug_enabled()
    for name in _SLACK_PAYLOAD_LOGGERS:  # cheaper than formatting each debug line to drop it
        logging.getLogger(name).setLevel(logging.NOTSET if slack_debug else max(logging.INFO, root.level))
    for name in _SLACK_HTTP_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, SlackRetryChatter)]:
            logger.removeFilter(old)
        if root.level > logging.DEBUG:
            logger.addFilter(SlackRetryChatter())
    return handler


# slack_bolt and slack_sdk log at debug every event's payload and every request's body: users'
# messages, DMs included. -vv is for debugging the bot, not for reading them:
# those lines are shown only with FLYTEGPT_DEBUG_SLACK=1.
SLACK_DEBUG_ENV = "FLYTEGPT_DEBUG_SLACK"
_SLACK_PAYLOAD_LOGGERS = ("slack_bolt", "slack_sdk")
_SLACK_HTTP_LOGGERS = ("slack_sdk.web.base_client", "slack_sdk.webhook.client")
_RETRY_CHATTER = ("Failed to send a request to Slack API server", "A retry handler found",
                  "Going to retry the same request")


class SlackRetryChatter(logging.Filter):
    """slack_sdk logs every failed try and retry of a request (an ERROR line for a connection
    error that its next try gets through); the bot reports the outcome, once, with what it
    meant (a deferred answer, "cannot reach Slack"). Those lines are shown with -v only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RETRY_CHATTER)


def slack_debug_enabled() -> bool:
    """FLYTEGPT_DEBUG_SLACK is set to something other than empty or 0: the operator opted in."""
    return os.environ.get(SLACK_DEBUG_ENV, "").strip() not in ("", "0")


class SlackPayloadFilter(logging.Filter):
    """Drops slack_bolt's and slack_sdk's debug lines unless FLYTEGPT_DEBUG_SLACK opts in (read when
    the filter is made). Their loggers are set to INFO too, but Bolt copies the root logger's level
    onto the loggers it makes, so a level alone would let some through."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = slack_debug_enabled()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.enabled or record.levelno > logging.DEBUG:
            return True
        return not any(record.name == n or record.name.startswith(n + ".") for n in _SLACK_PAYLOAD_LOGGERS)


def _filter_every_handler(redacting: RedactingFilter) -> None:
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(redacting)
