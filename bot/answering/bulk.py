"""Many questions at once (the Flyte bulk workflow), and a report writer for the results.

One bad question (rejected, model outage, anything) becomes an entry with `error`, never
a failed batch: a nightly job over hundreds of questions must not lose them all to one.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Literal, Mapping, Sequence

from flytegpt.bot.question_text import clean_question, clip_question

from .types import UNCITED, ModelUnavailable, QuestionRejected, sources_heading

if TYPE_CHECKING:  # pragma: no cover
    from .chain import Answerer

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0
# Questions with the chat model at once. Each is a thread waiting on one model call, on a task pod
# that requests 2 CPU / 4 GiB (flyte/resources.py ANSWER); a provider's rate limit turns more
# concurrent calls into HTTP 429s, i.e. `error` entries, not a faster run. 32 is above the
# concurrency most API tiers and a single vLLM/Ollama server serve well.
MAX_WORKERS = 32
NOT_ASKED = ("Not asked: the question has no letters or digits (only spaces, invisible characters, "
             "emoji or punctuation).")


def check_workers(workers: object, name: str = "workers") -> None:
    """The one rule for how many questions go to the model at once (the Flyte task checks it
    before loading the index; a cluster launch does not pass through the command line)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{name} must be at least 1 and at most {MAX_WORKERS} (a whole number), not {workers!r}")


def answer_one(answerer: "Answerer", question: str) -> dict:
    """One question as a JSON-ready dict; a failure is an entry with `error`, never an exception."""
    try:
        a = answerer.answer(question)
    except Exception as e:  # noqa: BLE001 - isolate every question
        if not isinstance(e, (QuestionRejected, ModelUnavailable)):
            log.exception("bulk: question failed: %r", question[:200])
        return _error(question, str(e) or type(e).__name__, [c.to_dict() for c in getattr(e, "related", [])])
    result = {
        "question": question,
        "answer": a.text,
        "mode": a.mode,
        "citations": [c.to_dict() for c in a.citations],
        "index_version": a.index_version,
    }
    if note := getattr(a, "note", None):  # why the model did not answer: "deadline", "empty model output"
        result["note"] = note
    return result


def _error(question: str, error: str, citations: list | None = None) -> dict:
    return {"question": question, "answer": None, "mode": "error", "citations": citations or [],
            "index_version": None, "error": error}


def _same(question: str) -> str:
    """What identical questions have in common: the question as the bot reads it (clean_question:
    no controls, no invisible ends), its whitespace runs made one space."""
    return " ".join(clean_question(question).split())


def answer_many(answerer: "Answerer", questions: Sequence[str], *, workers: int = 1,
                answered: Mapping[int, dict] | None = None,
                on_progress: Callable[[Mapping[int, dict]], None] | None = None) -> list[dict]:
    """JSON-ready dicts, in the order asked: question, answer, mode, citations [{n,title,url,
    source_id}], index_version[, note][, error].

    `workers` questions are answered at once: the chat model is a remote service, so a backlog
    of hundreds takes hours one by one. Progress is logged every PROGRESS_EVERY_S seconds (and
    at the end): the task's log is all a Flyte user sees of a long run. At the same moments
    `on_progress` gets every result so far by position, and `answered` (results a killed
    earlier attempt saved that way, by position) is not asked again: a retried run resumes.

    Every model call is paid for, so a question asked again (the same but for spaces) is asked
    once and its answer copied to each of its positions, and a question with no letter or digit
    (invisible characters, emoji, punctuation: nothing to search for) is not asked at all; it is
    an `error` entry saying so, in its place, so the report still has one entry per question.
    An error entry keeps at most the answerer's question limit of its question: a 5 MB "question"
    turned down as too long is not copied whole into the reports.
    """
    check_workers(workers)
    config = getattr(answerer, "config", None)
    limit = config.answer.max_question_chars if config is not None else None
    first: dict[str, int] = {}
    asks = [first.setdefault(_same(q), i) for i, q in enumerate(questions)]  # the position that asks for i
    results: list[dict | None] = [None] * len(questions)  # at the asking positions
    for i, r in (answered or {}).items():
        if 0 <= i < len(questions) and r.get("question") == questions[i]:
            results[asks[i]] = r

    def by_position() -> dict[int, dict]:
        out = {}
        for i, a in enumerate(asks):
            if (r := results[a]) is not None:
                shown = clip_question(questions[i], limit) if r["mode"] == "error" and limit else questions[i]
                out[i] = r if r["question"] == shown else {**r, "question": shown}
        return out

    resumed = len(by_position())
    if resumed:
        log.info("bulk: %d of %d questions answered by an earlier attempt", resumed, len(questions))
    if len(first) < len(questions):
        log.info("bulk: %d duplicate questions folded: each is asked once, its answer copied",
                 len(questions) - len(first))
    blank = {i for i in first.values() if results[i] is None and not any(c.isalnum() for c in questions[i])}
    for i in blank:
        results[i] = _error(questions[i], NOT_ASKED)
    if blank:
        log.warning("bulk: %d questions not asked: no letters or digits", sum(a in blank for a in asks))
    last = time.monotonic()
    asked = ((i, questions[i]) for i in first.values() if results[i] is None)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flytegpt-bulk") as pool:
        pending: dict = {}

        def refill() -> None:  # a few per worker in flight: waiting on 100k futures at once is quadratic
            for i, q in islice(asked, max(0, 2 * workers - len(pending))):
                pending[pool.submit(answer_one, answerer, q)] = i

        refill()
        while pending:
            finished, _ = wait(pending, timeout=PROGRESS_EVERY_S or None, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
            refill()
            if time.monotonic() - last >= PROGRESS_EVERY_S and pending:
                last = time.monotonic()
                so_far = by_position()
                log.info("bulk: %d of %d questions answered (%d failed)", len(so_far), len(questions),
                         sum(r["mode"] == "error" for r in so_far.values()))
                if on_progress is not None:
                    on_progress(so_far)
    done = by_position()
    log.info("bulk: %d questions answered (%d failed%s)", len(done), sum(r["mode"] == "error" for r in done.values()),
             f", {resumed} by an earlier attempt" if resumed else "")
    return [done[i] for i in range(len(questions))]


def _markdown(results: Sequence[dict]) -> str:
    out = ["# FlyteGPT answers", ""]
    for i, r in enumerate(results, start=1):
        out += [f"## {i}. {r['question']}", ""]
        if r.get("error"):
            out += [f"**Error:** {r['error']}", ""]
        else:
            out += [r.get("answer") or "", ""]
        if r.get("citations"):
            out += [f"{sources_heading(r.get('note') == UNCITED)}:", ""]
            out += [f"- [{c['n']}] [{c['title']}]({c['url']})" for c in r["citations"]]
            out.append("")
        note = f" ({r['note']})" if r.get("note") else ""
        out += [f"_mode: {r.get('mode')}{note}, index: {r.get('index_version')}_", ""]
    return "\n".join(out)


def write_report(
    results: Sequence[dict],
    path_or_fileobj: str | Path | IO[str],
    format: Literal["json", "markdown"] = "json",
) -> None:
    """Write bulk results as JSON (machine-readable) or Markdown (for people)."""
    if format == "json":
        text = json.dumps(list(results), indent=2, ensure_ascii=False) + "\n"
    elif format == "markdown":
        text = _markdown(results)
    else:
        raise ValueError(f"unknown report format {format!r}; use 'json' or 'markdown'")
    if isinstance(path_or_fileobj, (str, Path)):
        Path(path_or_fileobj).write_text(text, encoding="utf-8")
    else:
        path_or_fileobj.write(text)


__all__ = ["MAX_WORKERS", "answer_many", "write_report"]
