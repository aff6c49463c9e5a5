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

from .types import ModelUnavailable, QuestionRejected

if TYPE_CHECKING:  # pragma: no cover
    from .chain import Answerer

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0


def answer_one(answerer: "Answerer", question: str) -> dict:
    """One question as a JSON-ready dict; a failure is an entry with `error`, never an exception."""
    try:
        a = answerer.answer(question)
    except Exception as e:  # noqa: BLE001 - isolate every question
        if not isinstance(e, (QuestionRejected, ModelUnavailable)):
            log.exception("bulk: question failed: %r", question[:200])
        return {
            "question": question,
            "answer": None,
            "mode": "error",
            "citations": [c.to_dict() for c in getattr(e, "related", [])],
            "index_version": None,
            "error": str(e) or type(e).__name__,
        }
    return {
        "question": question,
        "answer": a.text,
        "mode": a.mode,
        "citations": [c.to_dict() for c in a.citations],
        "index_version": a.index_version,
    }


def answer_many(answerer: "Answerer", questions: Sequence[str], *, workers: int = 1,
                answered: Mapping[int, dict] | None = None,
                on_progress: Callable[[Mapping[int, dict]], None] | None = None) -> list[dict]:
    """JSON-ready dicts, in the order asked: question, answer, mode, citations [{n,title,url,
    source_id}], index_version[, error].

    `workers` questions are answered at once: the chat model is a remote service, so a backlog
    of hundreds takes hours one by one. Progress is logged every PROGRESS_EVERY_S seconds (and
    at the end): the task's log is all a Flyte user sees of a long run. At the same moments
    `on_progress` gets every result so far by position, and `answered` (results a killed
    earlier attempt saved that way, by position) is not asked again: a retried run resumes.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    results: list[dict | None] = [None] * len(questions)
    for i, r in (answered or {}).items():
        if 0 <= i < len(questions) and r.get("question") == questions[i]:
            results[i] = r
    done = resumed = sum(r is not None for r in results)
    if resumed:
        log.info("bulk: %d of %d questions answered by an earlier attempt", resumed, len(questions))
    failed = 0
    last = time.monotonic()
    asked = ((i, q) for i, q in enumerate(questions) if results[i] is None)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flytegpt-bulk") as pool:
        pending: dict = {}

        def refill() -> None:  # a few per worker in flight: waiting on 100k futures at once is quadratic
            for i, q in islice(asked, max(0, 2 * workers - len(pending))):
                pending[pool.submit(answer_one, answerer, q)] = i

        refill()
        while pending:
            finished, _ = wait(pending, timeout=PROGRESS_EVERY_S or None, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = r = future.result()
                done += 1
                failed += r["mode"] == "error"
            refill()
            if time.monotonic() - last >= PROGRESS_EVERY_S and pending:
                last = time.monotonic()
                log.info("bulk: %d of %d questions answered (%d failed)", done, len(questions), failed)
                if on_progress is not None:
                    on_progress({i: r for i, r in enumerate(results) if r is not None})
    log.info("bulk: %d questions answered (%d failed%s)", done, failed,
             f", {resumed} by an earlier attempt" if resumed else "")
    return [r for r in results if r is not None]


def _markdown(results: Sequence[dict]) -> str:
    out = ["# FlyteGPT answers", ""]
    for i, r in enumerate(results, start=1):
        out += [f"## {i}. {r['question']}", ""]
        if r.get("error"):
            out += [f"**Error:** {r['error']}", ""]
        else:
            out += [r.get("answer") or "", ""]
        if r.get("citations"):
            out += ["Sources:", ""]
            out += [f"- [{c['n']}] [{c['title']}]({c['url']})" for c in r["citations"]]
            out.append("")
        out += [f"_mode: {r.get('mode')}, index: {r.get('index_version')}_", ""]
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


__all__ = ["answer_many", "write_report"]
