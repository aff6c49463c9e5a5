"""One model call's bounds: the deadline it must finish within, the retries it may take, and how it
is reported when it gives up (one log line per failed question, never the provider's raw text to
the asker)."""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any, Sequence

from . import prompts
from .budget import Source
from .citations import source_citations
from .types import ModelUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
RELATED = 3  # sources offered beside "the model is not available"
MIN_CALL_S = 0.05  # a model call with less time than this left is not started


class EmptyCompletion(Exception):
    pass


class NoAnswerInTime(Exception):
    """The deadline passed, or the model stopped mid-answer; `partial` is what it wrote."""

    def __init__(self, partial: str = "", reason: str = "deadline") -> None:
        super().__init__(reason)
        self.partial, self.reason = partial, reason


class Deadline:
    def __init__(self, seconds: float, start: float | None = None) -> None:
        """`seconds` from `start` (a time.monotonic() in the past: the question's arrival), else from now."""
        self.end = (time.monotonic() if start is None else start) + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, per_call: float) -> float:
        """The timeout for the next model call; NoAnswerInTime when nothing is left."""
        left = self.remaining()
        if left < MIN_CALL_S:
            raise NoAnswerInTime()
        return min(per_call, left)


def retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


class Retries:
    """The retry policy of one model call: bounded attempts, a capped Retry-After, all within the deadline."""

    def __init__(self, cfg: Any, deadline: Deadline) -> None:
        self.cfg, self.deadline = cfg, deadline
        self.failures = self.empties = 0
        self.reason, self.detail = "no answer", ""
        self.reasons: list[str] = []  # one per failed call, for the one line that reports them

    def succeeded(self) -> None:
        """After a call that answered: one line when it took retries (a flaky model shows in the log)."""
        if self.failures:
            log.info("chat model answered after %d failed %s (%s)", self.failures,
                     "call" if self.failures == 1 else "calls", ", ".join(self.reasons))

    def empty(self) -> None:
        """An empty completion: retried once, then EmptyCompletion."""
        self.empties += 1
        if self.empties >= 2:
            raise EmptyCompletion()
        log.warning("chat model returned an empty answer; retrying once")

    def failed(self, e: Exception) -> bool:
        """After a failed call: wait and return True to try again, False to give up.

        NoAnswerInTime when the deadline leaves no room for another call.
        """
        import openai

        wait: float | None = None
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            self.reason, self.detail = f"HTTP {status}", str(e)
            if status not in RETRYABLE_STATUS and status < 500:
                return False  # 400/401/404: retrying cannot help
            wait = retry_after(getattr(e.response, "headers", None))
        elif isinstance(e, openai.APITimeoutError):
            self.reason, self.detail = "timed out", str(e)
            if self.deadline.remaining() < MIN_CALL_S:
                raise NoAnswerInTime() from None
        else:
            self.reason, self.detail = "connection failed", str(e)
        if self.failures >= self.cfg.max_retries:
            return False
        delay = self.cfg.retry_backoff_s * (2**self.failures) if wait is None else wait
        delay = min(delay, self.cfg.retry_max_wait_s)
        if delay >= self.deadline.remaining() - MIN_CALL_S:
            raise NoAnswerInTime() from None
        self.failures += 1
        self.reasons.append(self.reason)
        # debug: an outage would cost a line per retry per question; succeeded()/unavailable() report them
        log.debug("chat model failed (%s); retry %d/%d in %.1fs", self.reason, self.failures,
                  self.cfg.max_retries, delay)
        time.sleep(delay)
        return True

    def unavailable(self, related: Sequence[Source] | None = None) -> ModelUnavailable:
        """The error to raise after giving up; its message never holds the provider's raw text."""
        earlier = f" (before: {', '.join(self.reasons)})" if self.reasons else ""
        log.error("chat model unavailable after %d %s: %s%s %s", self.failures + 1,
                  "attempt" if self.failures == 0 else "attempts", self.reason, earlier, self.detail)
        return ModelUnavailable(
            prompts.MODEL_UNAVAILABLE.format(reason=self.reason),
            related=source_citations(list(related or [])[:RELATED]),
            detail=self.detail,
        )
