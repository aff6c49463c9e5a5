"""Talking to the chat model: the LangChain/OpenAI client, one call or one streamed answer with
bounded retries, what a reply said (its text without thinking, and why it stopped), and the check
at start that the endpoint serves the model. What to ask and what to do with the reply is the
answering flow's (chain.Answerer); one call's bounds (deadline, retries, failure classes) are
model_calls'.

LangChain runnables do the prompt/model plumbing; the retry loop is ours because it has to honour
Retry-After with a cap (the openai client would wait up to minutes, which a Slack user will not),
and because an empty completion is a failure we retry too.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator

from .budget import Source, dedupe_hits
from .live import Delta, LiveCitations
from .model_calls import MIN_CALL_S, RELATED, Deadline, NoAnswerInTime, Retries, check_model, endpoint_host
from .reasoning import ReasoningFilter, closes_unopened, strip_reasoning

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.ingest.config import Config, Settings
    from flytegpt.ingest.search import HybridSearcher

log = logging.getLogger(__name__)

# finish reasons that end a reply before the model meant to: retrying an empty one does the same again
CUT_SHORT = ("length", "content_filter")


@dataclass(frozen=True)
class Reply:
    """What one model call said: its answer text (any thinking removed) and why it stopped
    (`finish_reason`: "stop", "length", "content_filter"; None when the server never said)."""

    text: str
    finish: str | None = None


def _text_of(message: Any) -> str:
    """A message's (or chunk's) text, as StrOutputParser makes it."""
    from langchain_core.outputs import ChatGeneration

    return message if isinstance(message, str) else ChatGeneration(message=message).text


# Finish reasons other servers give for the same two stops (Gemini's and Anthropic's OpenAI-compatible
# endpoints, proxies passing theirs through): read as OpenAI's, so a cut answer gets its note either way
_FINISH_ALIASES = {"max_tokens": "length", "max_output_tokens": "length", "model_length": "length",
                   "safety": "content_filter", "recitation": "content_filter", "blocklist": "content_filter",
                   "prohibited_content": "content_filter", "spii": "content_filter", "refusal": "content_filter"}


def _finish_of(message: Any) -> str | None:
    finish = (getattr(message, "response_metadata", None) or {}).get("finish_reason")
    if not isinstance(finish, str) or not finish:
        return None
    finish = finish.lower()
    return _FINISH_ALIASES.get(finish, finish)


class ChatModel:
    """The chat model an Answerer talks to, built on first use from `[answer]` and the OPENAI_*
    settings. Thread-safe: the Slack worker pool shares one (through its Answerer); what it learns
    from replies (whether they start inside a thinking block) holds for the process."""

    def __init__(self, config: "Config", settings: "Settings") -> None:
        self.config = config
        self.settings = settings
        # Settings reads a blank OPENAI_API_KEY / OPENAI_BASE_URL as unset; a malformed base URL is a
        # ConfigError naming it now (`flytegpt serve`: one line at start), not retried connection failures.
        base_url = settings.checked_openai_base_url()
        key = settings.openai_api_key
        self.enabled: bool = (key is not None and bool(key.get_secret_value().strip())) or base_url is not None
        self._lock = threading.Lock()
        self._chat: Any = None
        self._thinking_opens_in_prompt = False  # learnt from replies: see _saw_thinking_open_in_prompt
        self._unopened_closes = 0  # replies in a row that closed a thinking block they never opened

    def model_label(self) -> str:
        """The chat model and where it is, for the "FlyteGPT is running" line: "gpt-4o-mini at
        api.openai.com", "qwen3:8b at ollama:11434" (the base URL's host, never its path, query or the
        key); "none (quoting passages)" without a model."""
        if not self.enabled:
            return "none (quoting passages)"
        return f"{self.settings.chat_model} at {endpoint_host(self.settings.openai_base_url)}"

    def check_model(self) -> bool:
        """Ask the endpoint once whether it serves the chat model with this key (`model_calls.check_model`:
        its model list, else a 1-token completion); one log line either way, a warning naming the
        problem when it does not. Never raises: `flytegpt serve` runs it beside its start, which goes
        on whatever it finds (a model still loading, a key fixed later). True when the model answered."""
        if not self.enabled:
            return False
        key = self.settings.openai_api_key
        model, where = self.settings.chat_model, self.settings.openai_base_url or "https://api.openai.com/v1"
        try:
            failure = check_model(self.settings.openai_base_url,
                                  key.get_secret_value() if key is not None else "not-needed", model,
                                  timeout=self.config.answer.timeout_s,
                                  max_tokens_field=max_tokens_field(self.config.answer.max_tokens_field,
                                                                    self.settings.openai_base_url))
        except Exception as e:  # noqa: BLE001 - a check must not take the bot down
            log.warning("chat model check at start could not run (%s): the first answers will tell", type(e).__name__)
            return False
        if failure is None:
            log.info("chat model check at start: '%s' is served at %s", model, where)
            return True
        cause = failure.cause
        if where.rstrip("/") not in cause:  # classify names the endpoint of a 404 or 401, not of the others
            cause += f" (model '{model}' at {where})"
        said = f" | {failure.detail}" if failure.detail else ""
        if failure.kind == "transient":  # "connection failed", "timed out", "HTTP 503": may pass by itself
            log.warning("chat model check at start: %s; while it lasts, askers get the best passages instead of "
                        "answers%s", cause, said)
        else:
            log.warning("chat model check at start: %s; until this is fixed, askers get the best passages and "
                        "a note that the model is misconfigured%s", cause, said)
        return False

    def _model(self) -> Any:
        with self._lock:
            if self._chat is None:
                self._chat = self._chat_model()
            return self._chat

    def chain(self, prompt: Any, deadline: Deadline) -> Callable[[], Any]:
        """prompt | model, built per attempt so each call's timeout is what the deadline leaves.

        No output parser: the message itself carries the finish reason ("length", "content_filter"),
        which StrOutputParser drops, and without it a cut answer would be posted as if whole; and
        closing a stream of a sequence that ends in a parser reads the rest of the model's reply first
        (langchain_core keeps the parser's whole input for its trace), so a slow model would hold the
        worker until it had written everything, long past the deadline."""
        model = self._model()
        return lambda: prompt | model.bind(timeout=deadline.timeout(self.config.answer.timeout_s))

    def _chat_model(self) -> Any:
        from langchain_openai import ChatOpenAI

        key = self.settings.openai_api_key
        cap = self.config.answer.max_tokens
        # langchain-openai sends `max_tokens` as `max_completion_tokens`, which Ollama's /v1 ignores (its
        # replies would have no cap); OpenAI refuses `max_tokens` for its reasoning models. The other name
        # goes as extra_body.
        plain = max_tokens_field(self.config.answer.max_tokens_field, self.settings.openai_base_url) == "max_tokens"
        return ChatOpenAI(
            model=self.settings.chat_model,
            base_url=self.settings.openai_base_url,
            # Local OpenAI-compatible servers (Ollama, vLLM) accept any key; the client needs one.
            api_key=key.get_secret_value() if key is not None else "not-needed",
            timeout=self.config.answer.timeout_s,
            max_retries=0,  # our loop below retries, with a capped Retry-After
            temperature=self.config.answer.temperature,
            max_tokens=None if plain else cap,
            extra_body={"max_tokens": cap} if plain else None,
        )

    def _read(self, message: Any) -> Reply:
        """A whole reply: its answer without thinking, and its finish reason. A reply that closes a
        thinking block it never opened (R1's templates open it in the prompt) teaches the streams
        that follow to hold such text back from the start."""
        text = _text_of(message)
        self._saw_thinking_open_in_prompt(closes_unopened(text))
        return Reply(strip_reasoning(text), _finish_of(message))

    def _saw_thinking_open_in_prompt(self, seen: bool) -> None:
        """After each reply: did it close a thinking block it never opened? Two replies in a row that
        did make streams hold such text back from the start; one that did not ends it. One reply
        never decides for the process: an answer could hold the tag on a line of its own."""
        with self._lock:
            self._unopened_closes = self._unopened_closes + 1 if seen else 0
            learnt = self._unopened_closes >= 2
            if learnt == self._thinking_opens_in_prompt:
                return
            self._thinking_opens_in_prompt = learnt
        if learnt:
            log.info("the chat model's replies start inside a thinking block (a closing tag, no opening one): "
                     "streamed answers are held back until it closes")
        else:
            log.info("the chat model's replies no longer start inside a thinking block: answers stream again")

    def stream_answer(self, chain: Callable[[], Any], inputs: dict, fitted: list[Source], deadline: Deadline, *,
                      shrink_next: bool = False) -> Generator[Delta, None, Reply]:
        """Stream the answer: yields Deltas, returns the Reply (for `yield from`).

        Retried like `invoke` while nothing was shown; once text was shown a failure
        cannot be retried without showing it twice, so it ends the answer (NoAnswerInTime
        with the partial text). A stall is bounded by the call's timeout (what the deadline
        left when the call started); the deadline itself is checked at every piece, and a
        stream ended there is closed at once (the rest of the model's reply is not read).
        A reasoning model's thinking is held back (ReasoningFilter): nothing is shown while it
        thinks, and its time counts against the deadline like any other. A stream that ends with
        text but without a finish reason was cut (a proxy timing out upstream): "stopped".
        """
        retries = Retries(self.config.answer, deadline)
        while True:
            live = LiveCitations(fitted)
            thinking = ReasoningFilter(starts_inside=self._thinking_opens_in_prompt)
            pieces, finish = None, None
            try:
                pieces = chain().stream(inputs)
                for chunk in pieces:
                    finish = _finish_of(chunk) or finish  # on the last chunks only
                    piece = thinking.feed(_text_of(chunk))
                    if thinking.restarted and not live.diverged:
                        live = self._thinking_was_shown(fitted)
                    new = live.feed(piece) if piece else ""
                    if new:
                        yield Delta(new)
                    if deadline.remaining() <= 0:
                        raise NoAnswerInTime(live.raw)
                rest = thinking.flush()
                if rest:
                    live.feed(rest)
            except _model_errors() as e:
                if live.raw.strip():
                    late = deadline.remaining() < MIN_CALL_S
                    log.warning("chat model stopped mid-answer", extra={"error": type(e).__name__})
                    raise NoAnswerInTime(live.raw, "deadline" if late else "stopped") from None
                if retries.failed(e):
                    continue
                break
            finally:
                if pieces is not None:
                    pieces.close()
            self._saw_thinking_open_in_prompt(thinking.closed_unopened)
            if live.raw.strip():
                retries.succeeded()
                if finish is None:
                    log.warning("chat model's stream ended without a finish reason: the answer was cut")
                    raise NoAnswerInTime(live.raw, "stopped")
                rest = live.flush()
                if rest:
                    yield Delta(rest)
                return Reply(live.raw, finish)
            if finish in CUT_SHORT:  # nothing but thinking, or filtered: a retry would do the same
                return Reply("", finish)
            retries.empty()
        raise retries.unavailable(fitted, shrink_next=shrink_next)

    def _thinking_was_shown(self, fitted: list[Source]) -> LiveCitations:
        """A reply that closed a thinking block it never opened, after its thinking was shown: the
        answer from the closing tag on is collected but not streamed (the final answer replaces what
        was shown)."""
        live = LiveCitations(fitted)
        live.diverged = True
        return live

    def invoke(
        self,
        chain: Callable[[], Any],
        inputs: dict,
        related: list[Source] | None = None,
        related_for: tuple["HybridSearcher", str] | None = None,
        deadline: Deadline | None = None,
        shrink_next: bool = False,
    ) -> Reply:
        """Run a chain with bounded retries; ModelUnavailable (with related sources) at the end.

        An empty reply is retried once (EmptyCompletion after that), but not one the model ended
        with "length" or "content_filter": that comes back empty, for the caller to tell apart."""
        retries = Retries(self.config.answer, deadline or Deadline(self.config.answer.deadline_s))
        while True:
            try:
                reply = self._read(chain().invoke(inputs))
            except _model_errors() as e:
                if retries.failed(e):
                    continue
                break
            if reply.text.strip():
                retries.succeeded()
                return reply
            if reply.finish in CUT_SHORT:
                return reply
            retries.empty()
        if related is None and related_for is not None:
            searcher, q = related_for
            try:
                related = dedupe_hits(searcher.search(q, self.config.retrieval.k), RELATED)
            except Exception:  # noqa: BLE001 - the model error is the one to report
                related = []
        raise retries.unavailable(related, shrink_next=shrink_next)


def _model_errors() -> tuple[type[BaseException], ...]:
    """What a model call raises when the model (or what stands in front of it) failed: the openai
    client's errors, and a reply it cannot read. A 200 page that is not JSON (an SSO sign-in page
    from a proxy) is a ValueError in langchain-openai ("Unexpected response type…", "No generation
    chunks were returned" when streamed) or a JSON decode error: the asker gets the model-unavailable
    answer with its sources, not a traceback."""
    import openai

    return (openai.APIStatusError, openai.APIConnectionError, openai.APIResponseValidationError, ValueError)


def max_tokens_field(setting: str, base_url: str | None) -> str:
    """The request field `[answer] max_tokens` goes out as (`[answer] max_tokens_field`). "auto":
    `max_completion_tokens` for OpenAI itself (no base URL, api.openai.com, Azure OpenAI), which
    refuses `max_tokens` for its reasoning models; `max_tokens` for any other server: Ollama's /v1
    reads only that, and vLLM, llama.cpp, LM Studio and LiteLLM read it too."""
    if setting != "auto":
        return setting
    from urllib.parse import urlsplit

    host = (urlsplit(base_url).hostname or "").lower() if base_url else "api.openai.com"
    openai_itself = host == "api.openai.com" or host.endswith(".openai.azure.com")
    return "max_completion_tokens" if openai_itself else "max_tokens"
