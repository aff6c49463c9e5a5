"""The answering chain: condense -> retrieve -> fit sources -> prompt -> model -> citations.

LangChain runnables do the prompt/model/parser plumbing; the retry loop is ours because
it has to honour Retry-After with a cap (the openai client would wait up to minutes,
which a Slack user will not), and because an empty completion is a failure we retry too.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import prompts
from .budget import Source, dedupe_hits, fit_sources
from .citations import process_citations, source_citations
from .offline import offline_answer
from .types import Answer, Citation, IndexNotReady, ModelUnavailable, QuestionRejected, Turn

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.ingest.config import Config, Settings
    from flytegpt.ingest.search import HybridSearcher

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 409, 429}
_RELATED = 3
_CONDENSED_MAX_CHARS = 1000


class _EmptyCompletion(Exception):
    pass


def _retry_after(headers: Any) -> float | None:
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


class Answerer:
    """Answers questions against whichever index `searcher()` returns at the time.

    Thread-safe: the Slack worker pool shares one Answerer. Each answer takes its
    searcher once, so a hot reload never swaps the index mid-answer.
    """

    def __init__(
        self,
        config: "Config",
        settings: "Settings",
        searcher: Callable[[], "HybridSearcher | None"],
    ) -> None:
        self.config = config
        self.settings = settings
        self._searcher = searcher
        self.llm_enabled: bool = settings.openai_api_key is not None or settings.openai_base_url is not None
        self._lock = threading.Lock()
        self._chains: tuple[Any, Any] | None = None

    # ---- public API -------------------------------------------------------------
    def answer(self, question: str, history: Sequence[Turn] = ()) -> Answer:
        question = self.validate(question)
        searcher = self._searcher()
        if searcher is None:
            raise IndexNotReady()
        version = getattr(searcher, "version", None)
        history = list(history)[-self.config.answer.history_turns :] if self.config.answer.history_turns else []

        standalone = question
        if history and self.llm_enabled:
            standalone = self._condense(question, history, searcher)
        elif history:
            # No model to rewrite with: the last user turn adds the missing subject.
            last_user = next((t.text for t in reversed(history) if t.role == "user"), "")
            standalone = f"{last_user.strip()} {question}".strip() if last_user else question

        hits = searcher.search(standalone, self.config.retrieval.k)
        sources = dedupe_hits(hits, self.config.answer.max_sources)
        if not self._relevant(hits):
            return self._not_found(question, standalone, sources, version)

        if not self.llm_enabled:
            text, citations = offline_answer(standalone, sources)
            return Answer(question, standalone, text, citations, "offline", version)

        fitted = fit_sources(sources, self.config.answer.token_budget)
        _, answer_chain = self._get_chains()
        inputs = {"sources": prompts.format_sources(fitted), "question": standalone}
        try:
            raw = self._invoke(answer_chain, inputs, fitted)
        except _EmptyCompletion:
            text, citations = offline_answer(standalone, sources, header=prompts.MODEL_EMPTY_NOTE)
            return Answer(question, standalone, text, citations, "offline", version, note="empty model output")
        text, citations = process_citations(raw, fitted)
        return Answer(question, standalone, text, citations, "llm", version)

    def answer_many(self, questions: Sequence[str]) -> list[dict]:
        from .bulk import answer_many

        return answer_many(self, questions)

    def validate(self, question: str) -> str:
        """The question, stripped; QuestionRejected before any search or model call."""
        q = (question or "").strip()
        if not q:
            raise QuestionRejected(prompts.EMPTY_QUESTION)
        limit = self.config.answer.max_question_chars
        if len(q) > limit:
            raise QuestionRejected(prompts.TOO_LONG_QUESTION.format(length=len(q), limit=limit))
        return q

    # ---- steps -----------------------------------------------------------------
    def _relevant(self, hits: Sequence[Any]) -> bool:
        """Is anything found worth a model call? Fused score and raw cosine must both clear their bar.

        The fused score is normalised per query (the best hit is near 1 even for "best
        pizza in new york"), so the absolute cosine of the dense retriever is the signal
        that separates on-topic from off-topic; it is skipped when the searcher gives none.
        """
        if not hits:
            return False
        cfg = self.config.answer
        if max(h.score for h in hits) < cfg.min_score:
            return False
        dense = [d for d in (getattr(h, "dense_score", None) for h in hits) if d is not None]
        return not dense or max(dense) >= cfg.min_similarity

    def _not_found(self, question: str, standalone: str, sources: list[Source], version: str | None) -> Answer:
        closest = sources[:_RELATED]
        lines = [prompts.NOT_FOUND]
        if closest:
            lines += ["", prompts.NOT_FOUND_CLOSEST]
            lines += [f"- {s.title} [{i}]" for i, s in enumerate(closest, start=1)]
        citations = [Citation(i, s.title, s.url, s.source_id) for i, s in enumerate(closest, start=1)]
        return Answer(question, standalone, "\n".join(lines), citations, "not_found", version)

    def _condense(self, question: str, history: list[Turn], searcher: "HybridSearcher") -> str:
        condense_chain, _ = self._get_chains()
        inputs = {"history": prompts.format_history(history), "question": question}
        try:
            out = self._invoke(condense_chain, inputs, related_for=(searcher, question))
        except _EmptyCompletion:
            return question
        out = out.strip().strip('"').strip()
        for prefix in ("Standalone question:", "Question:"):
            if out.lower().startswith(prefix.lower()):
                out = out[len(prefix) :].strip()
        return out[:_CONDENSED_MAX_CHARS] if out else question

    def _get_chains(self) -> tuple[Any, Any]:
        with self._lock:
            if self._chains is None:
                from langchain_core.output_parsers import StrOutputParser

                model = self._chat_model()
                self._chains = (
                    prompts.condense_prompt() | model | StrOutputParser(),
                    prompts.answer_prompt() | model | StrOutputParser(),
                )
            return self._chains

    def _chat_model(self) -> Any:
        from langchain_openai import ChatOpenAI

        key = self.settings.openai_api_key
        return ChatOpenAI(
            model=self.settings.chat_model,
            base_url=self.settings.openai_base_url,
            # Local OpenAI-compatible servers (Ollama, vLLM) accept any key; the client needs one.
            api_key=key.get_secret_value() if key is not None else "not-needed",
            timeout=self.config.answer.timeout_s,
            max_retries=0,  # our loop below retries, with a capped Retry-After
            temperature=self.config.answer.temperature,
        )

    def _invoke(
        self,
        chain: Any,
        inputs: dict,
        related: list[Source] | None = None,
        related_for: tuple["HybridSearcher", str] | None = None,
    ) -> str:
        """Run a chain with bounded retries; ModelUnavailable (with related sources) at the end."""
        import openai

        cfg = self.config.answer
        failures = empties = 0
        reason = "no answer"
        detail = ""
        while True:
            wait: float | None = None
            try:
                out = chain.invoke(inputs)
                if out and out.strip():
                    return out
                empties += 1
                if empties >= 2:
                    raise _EmptyCompletion()
                log.warning("chat model returned an empty answer; retrying once")
                continue
            except openai.APIStatusError as e:
                status = e.status_code
                reason, detail = f"HTTP {status}", str(e)
                if status not in _RETRYABLE_STATUS and status < 500:
                    break  # 400/401/404: retrying cannot help
                wait = _retry_after(getattr(e.response, "headers", None))
            except openai.APITimeoutError as e:
                reason, detail = "timed out", str(e)
            except openai.APIConnectionError as e:
                reason, detail = "connection failed", str(e)
            if failures >= cfg.max_retries:
                break
            delay = cfg.retry_backoff_s * (2**failures) if wait is None else wait
            delay = min(delay, cfg.retry_max_wait_s)
            failures += 1
            log.warning("chat model failed (%s); retry %d/%d in %.1fs", reason, failures, cfg.max_retries, delay)
            time.sleep(delay)
        log.error("chat model unavailable after %d attempts: %s %s", failures + 1, reason, detail)
        if related is None and related_for is not None:
            searcher, q = related_for
            try:
                related = dedupe_hits(searcher.search(q, self.config.retrieval.k), _RELATED)
            except Exception:  # noqa: BLE001 - the model error is the one to report
                related = []
        raise ModelUnavailable(
            prompts.MODEL_UNAVAILABLE.format(reason=reason),
            related=source_citations(list(related or [])[:_RELATED]),
            detail=detail,
        )
