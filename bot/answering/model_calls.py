"""One model call's bounds: the deadline it must finish within, the retries it may take, and how it
is reported when it gives up (one log line per failed question, never the provider's raw text to
the asker).

A failure is classified once (`classify`): one that passes (a 5xx, a short rate limit, a timeout)
is retried and told to the asker as "try again in a few minutes"; one that asking again cannot fix
(a wrong model name, key or base URL, a used-up quota, a prompt over the model's context window, a
provider's prompt filter, an endpoint that does not speak the OpenAI API) is not retried, is told to
the asker as a setup problem, and its log line names the cause and the setting to change (audit 32
F3, F5, F10)."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

from . import prompts
from .budget import Source
from .citations import source_citations
from .types import ModelUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
RELATED = 3  # sources offered beside "the model is not available"
MIN_CALL_S = 0.05  # a model call with less time than this left is not started
TIMEOUT_RETRIES = 1  # a call that timed out is tried once more at most (see Retries.failed)
_DETAIL_MAX_CHARS = 600  # of the provider's text in the log line (an HTML page is not worth more)


class EmptyCompletion(Exception):
    pass


class PromptTooLong(ModelUnavailable):
    """The model refused the prompt as longer than its context window (`classify` kind "context"):
    the chain tries once more with about half the sources (chain.Answerer), then tells the asker."""

    cause = "prompt too long for the model's context window"


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


# How providers say when to come back in an error's text, for a proxy or server that sends no
# Retry-After header: OpenAI ("Please try again in 40s", "in 1.5s", "in 20ms", "in 1m30s", "in 6h0m0s"),
# Groq ("Please try again in 7.66s"), Azure ("Please retry after 6 seconds"), Gemini ("Please retry in 36.5s").
_WAIT_SAID = re.compile(r"\b(?:try[ \t]+again|retry)[ \t]+(?:in|after)[ \t]+((?:\d{1,6}(?:\.\d{1,6})?[ \t]*[a-z]{1,12}"
                        r"[ \t,]*(?:and[ \t]+)?){1,4})", re.I)
_WAIT_PART = re.compile(r"(\d{1,6}(?:\.\d{1,6})?)[ \t]*"
                        r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)(?![a-z])", re.I)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def wait_in_message(text: str) -> float | None:
    """The wait a provider's error text asks for ("Please try again in 1m30s." is 90 s), or None
    when it names none. Used only when the reply has no Retry-After header: OpenAI's rate-limit
    replies say it in words too, and a proxy in front of a model may drop the header."""
    said = _WAIT_SAID.search(text)
    if said is None:
        return None
    seconds, found = 0.0, False
    for number, unit in _WAIT_PART.findall(said.group(1)):
        unit = unit.lower()
        key = "ms" if unit == "ms" or unit.startswith("milli") else unit[0]
        seconds += float(number) * _UNIT_S[key]
        found = True
    return seconds if found else None


# A server's wait beyond this reads as "a day": no retry waits that long, and the asker is told a number
# they can read (a Retry-After of 1e300 was printed with all its 301 digits)
_LONGEST_WAIT_S = 86400.0


def retry_after(headers: Any, message: str = "") -> float | None:
    """The seconds the server asks to wait: its Retry-After-Ms or Retry-After header (seconds or an
    HTTP date), else the wait its error `message` names (`wait_in_message`), else None."""
    said = wait_in_message(message) if message else None
    said = None if said is None else min(said, _LONGEST_WAIT_S)
    if headers is None:
        return said
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if not math.isfinite(seconds):  # "inf", "1e309", "nan": no wait anyone could keep
            seconds = _LONGEST_WAIT_S
        return min(max(0.0, seconds), _LONGEST_WAIT_S)
    return said


Kind = Literal["transient", "setup", "context", "filtered"]

# What providers write for a prompt over the model's window: OpenAI ("maximum context length",
# code context_length_exceeded), vLLM ("maximum context length is 4096 tokens"), llama.cpp
# ("exceeds the available context size", type exceed_context_size_error), Anthropic-style and
# TGI proxies ("prompt is too long", "Input validation error: `inputs` tokens + `max_new_tokens`").
_CONTEXT_WORDS = re.compile(
    r"context[ _-]?(?:length|window|size)|maximum context|max_model_len|prompt is too long|input is too long"
    r"|too many (?:input )?tokens|tokens \+ `?max_new_tokens", re.I)
_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"}
# A model name the server does not know: OpenAI ("The model `x` does not exist", model_not_found),
# Ollama ('model "x" not found, try pulling it first'), LiteLLM (400 "Invalid model name passed in model=x")
_MODEL_WORDS = re.compile(r"\bmodel\b.{0,80}?(?:not found|does not exist|not exist|unknown|not available|"
                          r"not supported|no such)|(?:invalid|unknown|no such) model", re.I | re.S)
# "Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' instead" (OpenAI's reasoning
# models behind a proxy) and the other way round: [answer] max_tokens_field picks the name
_TOKENS_FIELD_WORDS = re.compile(r"max_(?:completion_)?tokens.{0,120}(?:not supported|unsupported|unrecognized|"
                                 r"unknown|extra|use\b)|(?:unsupported|unrecognized|unknown)[^.]{0,40}max_"
                                 r"(?:completion_)?tokens", re.I | re.S)
_FILTER_WORDS = re.compile(r"content[ _]?(?:management )?(?:filter|policy)|content_filter", re.I)


@dataclass(frozen=True)
class Failure:
    """What one failed model call was, for the retry policy, the operator and the asker.

    `cause` is the log's words (may name the model and base URL, never the key); `told` is the
    asker's (no provider text, no URL); `retry` whether another call can help; `wait` the
    seconds the server asked to wait (its Retry-After, else its error text's "try again in 40s"),
    if it named any."""

    kind: Kind
    cause: str
    told: str
    retry: bool
    wait: float | None = None
    detail: str = ""  # the provider's own words (check_model fills it in for its log line)


def _error_text(e: Any) -> str:
    """The provider's own message: the JSON error's "message" when there is one, else the body."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or body.get("detail")
        if message:
            return str(message)
    return str(body) if isinstance(body, str) else str(e)


def _endpoint(e: Any) -> tuple[str, str]:
    """(the base URL the call went to, the model it asked for), read from the failed request: the
    URL without its query (a proxy may take a key there) or user info, the path without the
    /chat/completions the client adds; the model from the request body. ("", "") when unknown."""
    request = getattr(e, "request", None)
    if request is None:
        return "", ""
    try:
        url = request.url
        port = f":{url.port}" if url.port else ""
        path = re.sub(r"/(?:chat/completions|models)/?$", "", url.path)  # the answer call, or the start check
        base = f"{url.scheme}://{url.host}{port}{path}"
    except Exception:  # noqa: BLE001 - only words for a log line
        base = ""
    try:
        model = str(json.loads(request.content or b"{}").get("model") or "")
    except Exception:  # noqa: BLE001 - a streamed or unread body: the model stays unnamed
        model = ""
    return base, model


def classify(e: Exception) -> Failure:
    """What a failed model call means. A non-JSON reply (langchain-openai's ValueError "Unexpected
    response type from OpenAI-compatible endpoint", "No generation chunks were returned" for a
    stream of no events, a JSON decode error, openai's APIResponseValidationError) is an endpoint
    that is no OpenAI-compatible API: an HTML page from a proxy or a login, not something a retry
    changes."""
    import openai

    not_openai = ("the endpoint did not answer like an OpenAI-compatible API (an HTML page from a proxy "
                  "or login?): check OPENAI_BASE_URL")
    if isinstance(e, (openai.APIResponseValidationError, ValueError)):
        return Failure("setup", not_openai, "the model endpoint did not answer like an OpenAI-compatible API",
                       retry=False)
    if isinstance(e, openai.APITimeoutError):
        return Failure("transient", "timed out", "timed out", retry=True)
    if isinstance(e, openai.APIConnectionError):
        return Failure("transient", "connection failed", "connection failed", retry=True)
    if not isinstance(e, openai.APIStatusError):
        name = type(e).__name__
        return Failure("transient", f"failed ({name})", "an unexpected error", retry=False)

    status = e.status_code
    code = {str(x).lower() for x in (getattr(e, "code", None), getattr(e, "type", None)) if x}
    text = _error_text(e)
    http = f"HTTP {status}"
    base, model = _endpoint(e)
    at = f" at {base}" if base else ""
    named = f"model '{model}'" if model else "the model"
    if status in (400, 413, 422) and (code & _CONTEXT_CODES or _CONTEXT_WORDS.search(text)):
        return Failure("context", "prompt too long for the model's context window: lower [answer] token_budget or "
                       "max_question_chars (or max_tokens, which the window also holds), or set [answer] "
                       f"context_window to the model's window ({http})", http, retry=False)
    if status == 400 and ("content_filter" in code or _FILTER_WORDS.search(text)):
        return Failure("filtered", f"the provider's content filter refused the prompt ({http}; the question or "
                       "one of its sources)", http, retry=False)
    if status == 404 or (status == 400 and _MODEL_WORDS.search(text)):
        if "model_not_found" in code or "model" in text.lower():
            return Failure("setup", f"{named} not found{at} ({http}): check FLYTEGPT_CHAT_MODEL and OPENAI_BASE_URL",
                           f"model not found, {http}", retry=False)
        return Failure("setup", f"no chat-completions endpoint{at} ({http}): check OPENAI_BASE_URL",
                       f"endpoint not found, {http}", retry=False)
    if status == 401:
        return Failure("setup", f"API key rejected{at} ({http}): check OPENAI_API_KEY",
                       f"API key rejected, {http}", retry=False)
    if status == 403:  # a key without access to this model, a region or an IP the provider refuses
        return Failure("setup", f"access denied{at} ({http}): check OPENAI_API_KEY and the account's access to "
                       f"{named} (a region or network the provider refuses says so below)",
                       f"access denied, {http}", retry=False)
    if status == 400 and _TOKENS_FIELD_WORDS.search(text):
        return Failure("setup", f"the endpoint{at} refused the answer-length field ({http}): set [answer] "
                       "max_tokens_field to the name it asks for (max_tokens or max_completion_tokens)",
                       f"request refused, {http}", retry=False)
    if status == 429 and ("insufficient_quota" in code or re.search(r"exceeded your current quota|billing", text, re.I)):
        return Failure("setup", f"quota exhausted{at} ({http}): the account's plan or billing needs attention",
                       f"quota used up, {http}", retry=False)
    wait = retry_after(getattr(getattr(e, "response", None), "headers", None), text)
    if status in RETRYABLE_STATUS or status >= 500:
        return Failure("transient", http, http, retry=True, wait=wait)
    return Failure("setup", f"the endpoint{at} refused the request ({http})", f"request refused, {http}",
                   retry=False)


class Retries:
    """The retry policy of one model call: bounded attempts, a capped Retry-After, all within the deadline."""

    def __init__(self, cfg: Any, deadline: Deadline) -> None:
        self.cfg, self.deadline = cfg, deadline
        self.failures = self.empties = self.timeouts = 0
        self.reason, self.detail = "no answer", ""
        self.last: Failure | None = None  # what the last failed call was (its kind picks the asker's words)
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

        Not retried: what `classify` says a retry cannot fix; a Retry-After (or, without one, the
        error text's "try again in 40s") beyond `[answer] retry_max_wait_s` or beyond what the
        deadline leaves (the server said it will still refuse:
        retrying at the cap only adds to its load and fails again, audit 32 F10); a second timeout
        (a single local GPU server does not always cancel an abandoned request, so each retry queued
        behind the last one and it computed all three). NoAnswerInTime when the deadline leaves no
        room for another call.
        """
        import openai

        failure = self.last = classify(e)
        self.reason, self.detail = failure.cause, str(e)
        if not failure.retry:
            return False
        if isinstance(e, openai.APITimeoutError):
            if self.deadline.remaining() < MIN_CALL_S:
                raise NoAnswerInTime() from None
            self.timeouts += 1
            if self.timeouts > TIMEOUT_RETRIES:
                return False
        if failure.wait is not None and (failure.wait > self.cfg.retry_max_wait_s
                                         or failure.wait >= self.deadline.remaining() - MIN_CALL_S):
            status, wait = getattr(e, "status_code", 0), failure.wait
            said = f"{math.ceil(wait)}" if wait >= 1 else f"{wait:.1f}"  # 6.5 s is "7 s": not sooner than said
            self.reason = f"rate limited for {said} s" if status == 429 else f"{failure.cause}, busy for {said} s"
            return False
        if self.failures >= self.cfg.max_retries:
            return False
        delay = self.cfg.retry_backoff_s * (2**self.failures) if failure.wait is None else failure.wait
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

    def unavailable(self, related: Sequence[Source] | None = None, *, shrink_next: bool = False) -> ModelUnavailable:
        """The error to raise after giving up; its message never holds the provider's raw text.

        A failure that asking again cannot fix is told as a setup problem for the bot's maintainers,
        not as "try again in a few minutes"; the log line names its cause and what to change. A prompt
        over the model's window is a PromptTooLong; with `shrink_next` (the caller will try once more
        with fewer sources) it is logged by the caller, not as an error here."""
        too_long = self.last is not None and self.last.kind == "context"
        related_citations = source_citations(list(related or [])[:RELATED])
        if too_long and shrink_next:
            log.debug("chat model refused the prompt as too long: %s", self.detail)
            err = PromptTooLong(self.told(), related=related_citations, detail=self.detail)
            err.cause = self.reason  # the log's words, for the caller's line when it does not try again
            return err
        earlier = f" (before: {', '.join(self.reasons)})" if self.reasons else ""
        log.error("chat model unavailable after %d %s: %s%s | %s", self.failures + 1,
                  "attempt" if self.failures == 0 else "attempts", self.reason, earlier, clipped(self.detail))
        kind = PromptTooLong if too_long else ModelUnavailable
        return kind(self.told(), related=related_citations, detail=self.detail)

    def told(self) -> str:
        """The asker's sentence for the last failure."""
        last = self.last
        if last is None or last.kind == "transient":  # "HTTP 503", "timed out", "rate limited for 40 s"
            reason = last.told if last is not None and self.reason == last.cause else self.reason
            return prompts.MODEL_UNAVAILABLE.format(reason=reason)
        if last.kind == "context":
            return prompts.MODEL_PROMPT_TOO_LONG
        if last.kind == "filtered":
            return prompts.MODEL_PROMPT_FILTERED
        return prompts.MODEL_MISCONFIGURED.format(reason=last.told)


def clipped(detail: str, limit: int = _DETAIL_MAX_CHARS) -> str:
    """A provider's text for a log line: an HTML page or a long body is not worth more than `limit`."""
    return detail if len(detail) <= limit else detail[:limit] + " […]"


# ---- the start-up check (`flytegpt serve`, [bot] check_model) --------------------------------------------

def endpoint_host(base_url: str | None) -> str:
    """Where the chat model is, as the "FlyteGPT is running" line names it: the base URL's host and
    port ("ollama:11434"), api.openai.com without one. Never its path, query or user info (a proxy
    may carry a key there), never the key."""
    if not base_url:
        return "api.openai.com"
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def _listed(model: str, ids: Sequence[str]) -> bool:
    """Is `model` among the served ones? Ollama lists "qwen3:latest" for what is asked as "qwen3"."""
    return model in ids or (":" not in model and f"{model}:latest" in ids)


def check_model(base_url: str | None, api_key: str, model: str, *, timeout: float,
                max_tokens_field: str = "max_tokens") -> Failure | None:
    """Does the endpoint answer for `model` with this key? None when it does, else what `classify`
    makes of the failure. At most two requests, never retried:

    1. `GET {base}/models` (free: no tokens, no model load): a model it lists is served. A 401/403 is
       the key, a connection failure or timeout the URL: no need to ask further.
    2. Else (a list without the model, or no list at all) a 1-token completion, the call answers make:
       llama.cpp lists one name and answers to any; Azure's v1 lists base models, not deployments;
       some proxies pass only /chat/completions. Its error, if any, is the answers' error too."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
    try:
        page = client.models.list()
        ids = [str(getattr(m, "id", "")) for m in (getattr(page, "data", None) or [])]
    except (openai.AuthenticationError, openai.PermissionDeniedError, openai.APIConnectionError) as e:
        return replace(classify(e), detail=_said(e))
    except Exception:  # noqa: BLE001 - no list (404, 405, an HTML page, a body of another shape): ask
        ids = []
    if _listed(model, ids):
        return None
    try:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say OK."}],
                                               **{max_tokens_field: 1})
    except Exception as e:  # noqa: BLE001 - any failure is the check's finding
        return replace(classify(e), detail=_said(e))
    if not hasattr(reply, "choices"):  # a 200 the client could not read as a completion (an HTML page)
        return classify(ValueError(f"unexpected response type {type(reply).__name__}"))
    return None


def _said(e: Exception) -> str:
    """What the provider said, for the log (not an HTML page: classify names that case)."""
    import openai

    if not isinstance(e, openai.APIStatusError):  # "Connection error.", an HTML page: classify said it
        return ""
    return clipped(_error_text(e), 300)
