"""Many questions at once (the Flyte bulk workflow), and a report writer for the results.

One bad question (rejected, model outage, anything) becomes an entry with `error`, never
a failed batch: a nightly job over hundreds of questions must not lose them all to one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Sequence

from .types import ModelUnavailable, QuestionRejected

if TYPE_CHECKING:  # pragma: no cover
    from .chain import Answerer

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0


def answer_many(answerer: "Answerer", questions: Sequence[str]) -> list[dict]:
    """JSON-ready dicts: question, answer, mode, citations [{n,title,url,source_id}], index_version[, error].

    Progress is logged every PROGRESS_EVERY_S seconds (and at the end): a run of thousands of
    questions takes hours with a chat model, and the task's log is all a Flyte user sees of it.
    """
    results = []
    failed = 0
    last = time.monotonic()
    for i, q in enumerate(questions, start=1):
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info("bulk: %d of %d questions answered (%d failed)", i - 1, len(questions), failed)
        try:
            a = answerer.answer(q)
            results.append(
                {
                    "question": q,
                    "answer": a.text,
                    "mode": a.mode,
                    "citations": [c.to_dict() for c in a.citations],
                    "index_version": a.index_version,
                }
            )
        except Exception as e:  # noqa: BLE001 - isolate every question
            if not isinstance(e, (QuestionRejected, ModelUnavailable)):
                log.exception("bulk: question failed: %r", q[:200])
            failed += 1
            related = getattr(e, "related", [])
            results.append(
                {
                    "question": q,
                    "answer": None,
                    "mode": "error",
                    "citations": [c.to_dict() for c in related],
                    "index_version": None,
                    "error": str(e) or type(e).__name__,
                }
            )
    log.info("bulk: %d questions answered (%d failed)", len(results), failed)
    return results


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
