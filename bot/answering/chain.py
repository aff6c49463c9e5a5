"""The answering chain: condense -> retrieve -> fit sources -> prompt -> model -> citations.

This module is the flow: what is searched, what the model is asked and what the asker gets back
(with the events the Slack layer shows). Talking to the chat model (the client, retries, streaming,
reading a reply) is model.ChatModel's.

Every answer has one deadline (`[answer] deadline_s`) that covers condensing, retries,
waits and the model's writing: each model call gets what is left of it as its timeout.
Past the deadline the asker gets the best passages, with a note that the model did not
answer, instead of a worker held for (retries + 1) x timeout. The deadline counts from
when the question was asked (`asked_at`: the Slack bot passes its event's arrival), so time
spent waiting for a worker is part of it: with a slow model and a queue, an answer must not
come minutes after the question. Without `asked_at` (CLI, bulk) it starts now.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from flytegpt.bot.pasted import SEARCH_MAX_CHARS, fit_pieces, fit_question, read_paste, search_text
from flytegpt.bot.question_text import (code_identifiers, mostly_another_script, reads_as_another_language,
                                        separate_questions, stands_alone)

from . import prompts
from .budget import SOURCE_SHARE_TOKENS, Source, dedupe_hits, pack_sources, pack_within, prompt_room, token_counter
from .citations import cite_source, report_made_up, source_citations
from .live import Delta, Progress, clean_answer
from .model import CUT_SHORT, ChatModel, Reply
from .model_calls import RELATED as _RELATED, Deadline, EmptyCompletion, NoAnswerInTime, PromptTooLong, clipped
from .offline import offline_answer
from .reasoning import strip_reasoning
from .types import Answer, IndexNotReady, QuestionRejected, Turn, UNCITED, keep_turns

Event = Progress | Delta | Answer

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.ingest.config import Config, Settings
    from flytegpt.ingest.search import HybridSearcher

log = logging.getLogger(__name__)

_CONDENSED_MAX_CHARS = 1000
_REWRITE_MAX_CHARS = 300  # the search terms a rewrite may add
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def close_fence(markdown: str) -> str:
    """`markdown` with a code fence it leaves open closed: an answer cut at `[answer] max_tokens`
    often stops inside a code block, which would swallow the note after it."""
    opened: str | None = None
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if m is None:
            continue
        if opened is None:
            opened = m.group(1)
        elif m.group(1)[0] == opened[0] and len(m.group(1)) >= len(opened) and not m.group(2).strip():
            opened = None
    return markdown if opened is None else f"{markdown.rstrip()}\n{opened}"


def with_thread_subject(question: str, history: Sequence[Turn], limit: int = SEARCH_MAX_CHARS) -> str:
    """A follow-up searched without a model to rewrite it: the thread's first question (what the
    thread is about) and the last question before this one (what it moved on to), then the
    follow-up. Only user turns that were for the bot are in `history` (see slack.history).
    Only for a message that does not stand alone (`stands_alone`): in a thread most messages to
    the bot follow up; a new question asked there ("separate question: …", a long question that
    points back at nothing) is searched alone, or the old subject would pull in its sources. A
    question that pasted a traceback gives its words and its error (`pasted.search_text`), not its
    frames.

    Within `limit` characters (`[answer] max_question_chars`), the follow-up's words whole when they
    are short: it is searched, logged as the question searched, and may go to the model (the rewrite).
    `history` holds answered turns only (`answered_turns`): a question refused as too long is no
    subject (two refused 40,000-character messages would make "why?" an 80,000-character search of
    6 s)."""
    asked = [t.text.strip() for t in history if t.role == "user" and t.text.strip()]
    context = list(dict.fromkeys(search_text(q, limit) for q in asked[:1] + asked[-1:]))  # one of each
    return fit_pieces([*context, question.strip()], limit, sep=" ").strip()


def answered_turns(history: Sequence[Turn], limit: int) -> list[Turn]:
    """`history` without the user turns the bot refused as too long for `limit` (no paste in them to cut
    to fit: `pasted.fit_question`); their notice is not in `history` either (slack.history)."""
    return [t for t in history if t.role != "user" or fit_question(t.text.strip(), limit) is not None]


def _own_words(question: str) -> str:
    """The asker's words around a pasted traceback or log: what tells a follow-up ("still getting
    this:" and a trace) from a new question; the question itself when it holds no paste."""
    pasted = read_paste(question)
    return pasted.prose if pasted is not None else question


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
        self.model = ChatModel(config, settings)  # a malformed OPENAI_BASE_URL is a ConfigError here
        self.llm_enabled: bool = self.model.enabled

    # ---- public API -------------------------------------------------------------
    def answer(self, question: str, history: Sequence[Turn] = (), *, asked_at: float | None = None) -> Answer:
        """The whole answer at once (CLI, bulk Q&A, Slack without streaming).

        `asked_at` (time.monotonic()) is when the question was asked: the deadline counts from
        it, so a question that waited for a worker has only what is left. None: from now."""
        for event in self._events(question, history, stream=False, asked_at=asked_at):
            if isinstance(event, Answer):
                return event
        raise AssertionError("the answer path ended without an answer")  # pragma: no cover

    def stream(self, question: str, history: Sequence[Turn] = (), *,
               asked_at: float | None = None) -> Iterator[Event]:
        """The answer as it is written: Progress steps, Delta texts, then the final Answer.

        The deltas are cleaned as they come (LiveCitations), so their concatenation is the
        start of Answer.text unless the model's later text changed an earlier marker's
        meaning; the final Answer is authoritative. Answers without a model (offline,
        not found) come as one Answer with no deltas. Errors raise as in `answer`, and
        `asked_at` is read as there.
        """
        return self._events(question, history, stream=True, asked_at=asked_at)

    def answer_many(self, questions: Sequence[str], *, workers: int = 1, **resume: Any) -> list[dict]:
        """bulk.answer_many on this answerer (`answered=`, `on_progress=`: resuming a killed run)."""
        from .bulk import answer_many

        return answer_many(self, questions, workers=workers, **resume)

    def model_label(self) -> str:
        """The chat model and where it is, for the "FlyteGPT is running" line (ChatModel.model_label)."""
        return self.model.model_label()

    def check_model(self) -> bool:
        """Ask the endpoint once whether it serves the chat model (ChatModel.check_model): one log line,
        never raises; True when the model answered."""
        return self.model.check_model()

    def _events(self, question: str, history: Sequence[Turn], *, stream: bool,
                asked_at: float | None = None) -> Iterator[Event]:
        # what the model reads (a long pasted trace cut to its head and its error), and what is
        # searched: the asker's words with a pasted trace's error, not the library frames that fill most
        # of it and match code the question is not about
        asked = self.validate(question)
        # what is searched is what is logged as the question searched (standalone_question) and what the
        # rewrite step reads: within [answer] max_question_chars like what the model answers (a longer
        # text costs seconds to search and would fill the log line)
        limit = self.config.answer.max_question_chars
        searched = search_text(question.strip(), limit)
        searcher = self._searcher()
        if searcher is None:
            raise IndexNotReady()
        version = getattr(searcher, "version", None)
        deadline = Deadline(self.config.answer.deadline_s, start=asked_at)
        # a question the bot turned down as too long was never answered: it is no part of the thread's
        # subject, in the condense prompt or the search (else a refused 40,000-character first message
        # would be what a thread's follow-ups are searched with); of the kept turns only, each
        # read once: a thread can hold many 40,000-character messages
        history = answered_turns(keep_turns(history, self.config.answer.history_turns), limit)
        # an answer posted by an older version that did not yet tell a model's thinking from its answer
        # is read without that thinking
        history = [Turn(t.role, strip_reasoning(t.text)) if t.role == "assistant" else t for t in history]
        yield Progress("searching")

        standalone, late, condensed, followup = searched, False, "", False
        if history and self.llm_enabled:
            try:
                condensed = self._condense(asked, history, searcher, deadline)
            except NoAnswerInTime:
                late = True
        if condensed:
            standalone, followup = condensed, True
        elif history and not stands_alone(_own_words(asked)):
            # no model, no time for it, or it said nothing: the thread gives a message its subject unless
            # it stands alone (in a thread most messages to the bot follow up; a DM's top-level message
            # has a history only when it reads as a follow-up: answer_job, reads_as_followup)
            standalone, followup = with_thread_subject(searched, history, limit), True

        query = standalone
        # a question the index cannot read (Chinese over English docs; Spanish or German, whose words
        # find false friends) is searched with the model's search terms alone;
        # [answer] rewrite_query adds them to any thread's first question
        unreadable = self.llm_enabled and self.config.project.in_english and (
            mostly_another_script(standalone) or reads_as_another_language(standalone))
        # the model reads the question as asked; a follow-up also as the thread made it. Not rewritten when
        # it alone fills [answer] context_window: it gets the passages, and the call could only be refused
        told = prompts.asked_question(asked, standalone) if followup else asked
        room = self._sources_room(told)
        if room is not None and (unreadable or (self.config.answer.rewrite_query and self.llm_enabled
                                                and not history)):
            # the model's terms alone, unless the asker names code (map_task, ContainerTask, a path): the
            # docs and the code hold those as written, in any language
            query = self._rewrite(standalone, deadline, terms_alone=unreadable and not code_identifiers(standalone))
        # a message of several questions: each one's best source among the first (searched whole, the
        # questions compete and one can lose all its sources to the others); not a thread's subject
        # joined with a follow-up offline, which would search the old question and the bare follow-up
        # alone
        joined = followup and not condensed
        hits = searcher.search(query, self.config.retrieval.k,
                               questions=() if joined else separate_questions(query))
        sources = dedupe_hits(hits, self.config.answer.max_sources)
        question = asked  # the question as answered and logged: within [answer] max_question_chars
        if not self._relevant(hits):
            yield self._not_found(question, standalone, sources, version, hits)
            return
        if not self.llm_enabled:
            text, citations = offline_answer(standalone, sources, asked=question)
            yield Answer(question, standalone, text, citations, "offline", version)
            return
        if late:
            yield self._too_late(question, standalone, sources, version)
            return

        if room is None:  # the question alone fills [answer] context_window: a call could only fail
            yield self._question_fills_window(question, standalone, sources, version, told)
            return
        budget = min(self.config.answer.token_budget, room)
        fitted = self._pack(sources, query, budget, room)  # with the search terms
        if sources and not fitted:  # not even one source's excerpt fits beside the question: as above
            yield self._question_fills_window(question, standalone, sources, version, told)
            return
        yield Progress("writing", len(fitted))
        prompt, shrunk = prompts.answer_prompt(self.config.project), False
        try:
            while True:
                inputs = {"sources": prompts.format_sources(fitted), "question": told}
                try:
                    if stream:
                        reply = yield from self.model.stream_answer(self.model.chain(prompt, deadline), inputs,
                                                                    fitted, deadline, shrink_next=not shrunk)
                    else:
                        reply = self.model.invoke(self.model.chain(prompt, deadline), inputs, fitted,
                                                  deadline=deadline, shrink_next=not shrunk)
                    break
                except PromptTooLong as e:
                    # over the model's context window (no text was shown: the refusal comes first): once
                    # more with about half the sources' budget, within the same deadline: a shorter prompt
                    # often fits, and the asker gets an answer instead of a setup notice
                    smaller = [] if shrunk else self._pack(sources, query, budget // 2, room)
                    if smaller == fitted:  # short sources, a long question: the same prompt, refused again
                        smaller = []
                    if not smaller:
                        if not shrunk:
                            log.error("chat model unavailable after 1 attempt: %s | %s", e.cause, clipped(e.detail))
                        raise
                    log.info("the prompt was too long for the chat model's context window: trying once more with "
                             "half the sources' tokens (%d) | %s", budget // 2, clipped(e.detail, 300))
                    budget, fitted, shrunk = budget // 2, smaller, True
        except EmptyCompletion:
            yield self._empty_output(question, standalone, sources, version)
            return
        except NoAnswerInTime as e:
            if not e.partial.strip():
                yield self._too_late(question, standalone, sources, version)
                return
            text, citations = clean_answer(e.partial, fitted)
            report_made_up(e.partial, fitted)
            if not text.strip():
                yield self._too_late(question, standalone, sources, version)
                return
            note = prompts.MODEL_STOPPED_NOTE if e.reason == "stopped" else prompts.MODEL_DEADLINE_PARTIAL_NOTE
            yield Answer(question, standalone, f"{text}\n\n{note}", citations, "llm", version, note=e.reason)
            return
        if shrunk:  # answered, but every question this long pays a refused call first
            log.warning("answered with half the sources' tokens (%d) after the prompt was too long for the chat "
                        "model's context window: %s", budget, self._window_advice())
        if not reply.text.strip():  # cut short before any answer (a reasoning model's thinking, a filter)
            yield self._cut_short(question, standalone, sources, version, reply.finish)
            return
        cut = reply.finish in CUT_SHORT
        raw = close_fence(reply.text) if cut else reply.text
        text, citations = clean_answer(raw, fitted)
        report_made_up(raw, fitted)  # once per answer: the streamed pieces are not counted
        if not text.strip():  # only characters cleaning removes (NULs, control codes): nothing said
            log.warning("chat model's answer was empty once cleaned: offline passages")
            yield self._empty_output(question, standalone, sources, version)
            return
        note: str | None = None
        if cut:  # posted with a note: the asker knows the answer is not all the model meant to say
            note = reply.finish
            text = f"{text}\n\n{self._finish_note(reply.finish)}"
        if not citations:  # never an answer without a source to check it against
            log.info("the model's answer cites no source: the sources it was given are listed")
            yield Answer(question, standalone, text, source_citations(fitted[:_RELATED]), "llm", version,
                         note=UNCITED)  # the heading over the sources depends on it; a cut shows in the text
            return
        yield Answer(question, standalone, text, citations, "llm", version, note=note)

    def _window_advice(self) -> str:
        """What to change after a prompt the model found too long: its window, unless it is set already
        (then the model's tokenizer counts more than the bot's: leave more room)."""
        cfg = self.config.answer
        if not cfg.context_window:
            return "set [answer] context_window to the model's window (or lower token_budget or max_tokens)"
        return (f"[answer] context_window ({cfg.context_window}) is set, so the model counts more tokens than the "
                "bot does (long URLs, base64, YAML): set it a tenth lower, or lower token_budget or max_tokens")

    def _sources_room(self, told: str) -> int | None:
        """Tokens the sources may take in the answer prompt: any number (the budget decides) without
        `[answer] context_window`; with it, what the window leaves after max_tokens, the instructions,
        the question as sent and a margin (budget.prompt_room). None when that is too little for any
        source: the question alone (a long paste) fills the window."""
        cfg = self.config.answer
        if not cfg.context_window:
            return cfg.token_budget
        counter = token_counter()
        fixed = (counter.count(prompts.answer_system(self.config.project))
                 + counter.count(prompts.ANSWER_HUMAN.format(sources="", question=told)))
        room = prompt_room(cfg.context_window, cfg.max_tokens, fixed)
        return room if room >= SOURCE_SHARE_TOKENS else None  # less: not even one passage worth reading

    def _pack(self, sources: list[Source], query: str, budget: int, room: int) -> list[Source]:
        """The sources within `budget` tokens of text and, with `[answer] context_window`, `room`
        tokens as the prompt renders them (tags and titles too)."""
        if not self.config.answer.context_window:
            return pack_sources(sources, query, budget)
        return pack_within(sources, query, budget, min(budget, room), prompts.format_sources)

    def _question_fills_window(self, question: str, standalone: str, sources: list[Source], version: str | None,
                               told: str) -> Answer:
        """The passages, when the question leaves no room for a source in `[answer] context_window`: the
        search found them for it; a call could only be refused, and a refusal ("too long") tells the
        asker less than the passages do."""
        cfg = self.config.answer
        log.warning("the question (%d tokens) leaves no room for sources in [answer] context_window (%d) after "
                    "max_tokens (%d): passages instead of a model call; lower [answer] max_question_chars or "
                    "max_tokens, or use a model with a larger window", token_counter().count(told),
                    cfg.context_window, cfg.max_tokens)
        text, citations = offline_answer(standalone, sources, header=prompts.MODEL_QUESTION_TOO_LONG_NOTE, asked=question)
        return Answer(question, standalone, text, citations, "offline", version, note="context")

    def _finish_note(self, finish: str | None) -> str:
        """The note under an answer the model did not finish, and the operator's log line for it."""
        if finish == "length":
            log.warning("chat model's answer was cut at [answer] max_tokens (%d)", self.config.answer.max_tokens,
                        extra={"finish_reason": finish})
            return prompts.MODEL_LENGTH_NOTE
        log.warning("the model provider's content filter stopped the answer", extra={"finish_reason": finish})
        return prompts.MODEL_FILTERED_NOTE

    def _cut_short(self, question: str, standalone: str, sources: list[Source], version: str | None,
                   finish: str | None) -> Answer:
        """The passages, when the model stopped before writing any answer: a reasoning model that spent
        `[answer] max_tokens` thinking (a retry would think as long again), or a content filter."""
        if finish == "length":
            log.warning("chat model used all max_tokens (%d) before answering: raise [answer] max_tokens",
                        self.config.answer.max_tokens, extra={"finish_reason": finish})
            header = prompts.MODEL_LENGTH_EMPTY_NOTE
        else:
            log.warning("the model provider's content filter stopped the answer before any text",
                        extra={"finish_reason": finish})
            header = prompts.MODEL_FILTERED_EMPTY_NOTE
        text, citations = offline_answer(standalone, sources, header=header, asked=question)
        return Answer(question, standalone, text, citations, "offline", version, note=finish)

    def _empty_output(self, question: str, standalone: str, sources: list[Source], version: str | None) -> Answer:
        text, citations = offline_answer(standalone, sources, header=prompts.MODEL_EMPTY_NOTE, asked=question)
        return Answer(question, standalone, text, citations, "offline", version, note="empty model output")

    def _too_late(self, question: str, standalone: str, sources: list[Source], version: str | None) -> Answer:
        log.warning("no model answer within the deadline: offline passages",
                    extra={"deadline_s": self.config.answer.deadline_s})
        text, citations = offline_answer(standalone, sources, header=prompts.MODEL_DEADLINE_NOTE, asked=question)
        return Answer(question, standalone, text, citations, "offline", version, note="deadline")

    def validate(self, question: str) -> str:
        """The question, stripped, as the model may read it; QuestionRejected before any search or
        model call. A question over `[answer] max_question_chars` that holds a pasted traceback or
        log is kept with that paste cut to its first lines and its error (`pasted.fit_question`):
        pasting the error is how people ask. Any other is refused as too long."""
        q = (question or "").strip()
        if not q:
            raise QuestionRejected(prompts.EMPTY_QUESTION)
        limit = self.config.answer.max_question_chars
        fitted = fit_question(q, limit)
        if fitted is None:
            raise QuestionRejected(prompts.TOO_LONG_QUESTION.format(length=len(q), limit=limit))
        return fitted

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

    def _not_found(self, question: str, standalone: str, sources: list[Source], version: str | None,
                   hits: Sequence[Any] = ()) -> Answer:
        """"I couldn't find this", with the closest sources that are still near the question (a
        knowledge gap's neighbours help; "Hello, World!" for "who won the world cup" does not)."""
        floor = self.config.answer.closest_min_similarity
        best: dict[str, float] = {}
        for h in hits:
            if getattr(h, "dense_score", None) is not None:
                sid = h.chunk.source_id
                best[sid] = max(best.get(sid, -1.0), h.dense_score)
        near = [s for s in sources if not best or best.get(s.source_id, -1.0) >= floor]
        closest = near[:_RELATED]
        citations = [cite_source(i, s) for i, s in enumerate(closest, start=1)]
        lines = [prompts.NOT_FOUND]
        if closest:
            lines += ["", prompts.NOT_FOUND_CLOSEST, *(f"- {c.title}{c.date_note} [{c.n}]" for c in citations)]
        return Answer(question, standalone, "\n".join(lines), citations, "not_found", version)

    def _condense(self, question: str, history: list[Turn], searcher: "HybridSearcher", deadline: Deadline) -> str:
        """The follow-up as a standalone question; "" when the model said nothing usable (some
        local and reasoning models answer with empty content), so the caller falls back."""
        history = self._history_within_window(history, question)
        if not history:
            log.info("the thread does not fit [answer] context_window with the follow-up: not condensed")
            return ""
        inputs = {"history": prompts.format_history(history), "question": question}
        try:
            reply = self.model.invoke(self.model.chain(prompts.condense_prompt(self.config.project), deadline),
                                      inputs, related_for=(searcher, question), deadline=deadline, shrink_next=True)
        except EmptyCompletion:
            reply = Reply("")
        except PromptTooLong as e:  # the thread is longer than the model reads: its questions give the subject
            log.warning("the thread was too long for the chat model's context window to condense the follow-up; "
                        "%s | %s", self._window_advice(), clipped(e.detail, 300))
            return ""
        out = reply.text
        if not out.strip():
            if reply.finish == "length":  # a reasoning model that thought until max_tokens
                log.warning("the condense step used all max_tokens (%d) before answering: raise [answer] max_tokens",
                            self.config.answer.max_tokens)
            log.warning("the condense step returned nothing: the thread's questions give the subject")
            return ""
        out = out.strip().strip('"').strip()
        for prefix in ("Standalone question:", "Question:"):
            if out.lower().startswith(prefix.lower()):
                out = out[len(prefix) :].strip()
        return out[:min(_CONDENSED_MAX_CHARS, self.config.answer.max_question_chars)]

    def _history_within_window(self, history: list[Turn], question: str) -> list[Turn]:
        """The thread's latest turns that fit the condense prompt in `[answer] context_window` (all of
        them without it); [] when not even the last one does."""
        cfg = self.config.answer
        if not cfg.context_window:
            return history
        counter = token_counter()
        fixed = (counter.count(prompts.condense_system(self.config.project))
                 + counter.count(prompts.CONDENSE_HUMAN.format(history="", question=question)))
        room = prompt_room(cfg.context_window, cfg.max_tokens, fixed)
        kept = list(history)
        while kept and counter.count(prompts.format_history(kept)) > room:
            kept = kept[1:]  # the oldest turn first: the follow-up reads the latest ones
        return kept

    def _rewrite(self, question: str, deadline: Deadline, *, terms_alone: bool = False) -> str:
        """The question plus the model's search terms for it (`[answer] rewrite_query`): a vague
        question or a pasted error names the feature or setting it is about. Best-effort: with at
        most a quarter of the answer's time and no answer-breaking error, else the question alone."""
        budget = Deadline(min(deadline.remaining() / 4, self.config.answer.timeout_s))
        try:
            out = self.model.invoke(self.model.chain(prompts.rewrite_prompt(self.config.project), budget),
                                    {"question": question}, related=[], deadline=budget).text
        except Exception as e:  # noqa: BLE001 - the rewrite only helps; the answer must not depend on it
            log.info("query rewrite skipped: %s", type(e).__name__)
            return question
        terms = " ".join(out.split())[:_REWRITE_MAX_CHARS]
        if not terms:
            return question
        return terms if terms_alone else f"{question}\n{terms}"
