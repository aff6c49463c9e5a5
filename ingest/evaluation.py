"""Retrieval metrics for a question set with gold source ids.

The definitions follow the shared evaluation README: hit@k, MRR@10, coverage@10 (share of a
question's gold sources in the top 10) and recall@8000c (a gold source among the chunks that
fit into ~8,000 characters of prompt, the first chunk always counting) — the last one because
a bot answers only from what fits into its prompt.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from flytegpt.ingest.models import Chunk, valid_unicode

log = logging.getLogger(__name__)

METRICS = ("recall@5", "recall@10", "mrr@10", "coverage@10", "recall@8000c")
CONTEXT_CHARS = 8000


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    gold: tuple[str, ...]
    kind: str = "all"


class QuestionFileError(ValueError):
    pass


# What a question line is read for, and what the shared dev sets and `flytegpt feedback questions`
# write beside them. Other keys (a question set's own notes, urls, difficulty) are left aside with
# one warning per file; a key that looks like a misspelt one of these ("golds", "Question") is an
# error naming it, since the line would be scored without what it meant.
QUESTION_KEYS = frozenset({"id", "question", "gold", "kind", "answer_facts", "origin", "up", "down"})


def load_questions(path: str | Path) -> list[Question]:
    """Read a JSONL question file; a bad line is an error naming the line, not a silent skip.

    `gold` is a list of source ids; one id written as a plain string is taken as that one id
    (iterating it would score the question against its characters, always 0).
    """
    try:
        # utf-8-sig: a file saved by a Windows editor starts with a BOM, which is no JSON
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise QuestionFileError(f"{path}: cannot read the question file: {e}") from None
    questions = []
    ignored: Counter[str] = Counter()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            questions.append(_question(json.loads(line), n, ignored))
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{path}:{n}: not JSON: {e}") from None
        except RecursionError:
            raise QuestionFileError(f"{path}:{n}: not a question: JSON nested too deeply") from None
        except ValueError as e:
            raise QuestionFileError(f"{path}:{n}: {e}") from None
    if not questions:
        raise QuestionFileError(f"{path}: no questions")
    if ignored:
        shown = ", ".join(f"{valid_unicode(k)!r}" for k, _ in ignored.most_common(8))
        log.warning("%s: key(s) %s%s left aside (a question is scored by its id, question, gold and kind)",
                    path, shown, f" and {len(ignored) - 8} more" if len(ignored) > 8 else "")
    return questions


def _question(d: object, n: int, ignored: Counter[str] | None = None) -> Question:
    if not isinstance(d, dict):
        raise ValueError(f"expected an object with 'question' and 'gold', got {type(d).__name__}")
    unknown = [str(k) for k in d if k not in QUESTION_KEYS]
    for key in unknown:
        close = difflib.get_close_matches(key.casefold(), sorted(QUESTION_KEYS), n=1, cutoff=0.8)
        if close:  # "golds", "Question": a typo would score the line without what it meant
            raise ValueError(f"unknown key {key!r}: is it meant to be {close[0]!r}?")
    if ignored is not None:
        ignored.update(unknown)
    question, gold = d.get("question"), d.get("gold")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    if isinstance(gold, str):
        gold = [gold]
    if not isinstance(gold, list) or not gold or not all(isinstance(g, str) and g.strip() for g in gold):
        raise ValueError("'gold' must be a list of source ids (\"<source name>:<locator>\"), at least one")
    # valid Unicode like every document (a lone surrogate cannot even be printed)
    return Question(id=valid_unicode(str(d.get("id", n))), question=valid_unicode(question),
                    gold=tuple(valid_unicode(g) for g in gold), kind=valid_unicode(str(d.get("kind") or "all")))


def unknown_gold(questions: Sequence[Question], source_ids: Iterable[str]) -> list[str]:
    """Gold ids no chunk of the index carries: a typo or a source not ingested, never findable."""
    known = set(source_ids)
    return sorted({g for q in questions for g in q.gold if g not in known})


def first_gold_rank(source_ids: Sequence[str], gold: Iterable[str]) -> int | None:
    """The 1-based rank of the first gold source among the top 10, None when none is there."""
    gold = set(gold)
    return next((i for i, s in enumerate(source_ids[:10], 1) if s in gold), None)


def score_question(chunks: Sequence[Chunk], gold: Iterable[str]) -> dict[str, float]:
    """The five metrics for one question's ranked chunks."""
    gold = set(gold)
    ids = [c.source_id for c in chunks[:10]]
    first = first_gold_rank(ids, gold)
    used, in_context = 0, False
    for i, chunk in enumerate(chunks[:10]):
        if i > 0 and used + len(chunk.text) > CONTEXT_CHARS:
            break
        used += len(chunk.text)
        if chunk.source_id in gold:
            in_context = True
            break
    return {
        "recall@5": float(first is not None and first <= 5),
        "recall@10": float(first is not None),
        "mrr@10": 1.0 / first if first else 0.0,
        "coverage@10": len(gold & set(ids)) / len(gold) if gold else 0.0,
        "recall@8000c": float(in_context),
    }


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over per-question rows (score_question's, or evaluate's "questions")."""
    return {m: round(sum(r[m] for r in rows) / len(rows), 4) for m in METRICS}


def evaluate(
    questions: Sequence[Question], retrieve: Callable[[str], Sequence[Chunk]]
) -> dict:
    """Score `retrieve` on every question; report overall, per kind and per question."""
    per_question = []
    by_kind: dict[str, list[dict[str, float]]] = defaultdict(list)
    for q in questions:
        chunks = list(retrieve(q.question))
        row = score_question(chunks, q.gold)
        by_kind[q.kind].append(row)
        top = [c.source_id for c in chunks[:10]]
        per_question.append({"id": q.id, "kind": q.kind, **row, "first_gold_rank": first_gold_rank(top, q.gold),
                             "top": top, "gold": list(q.gold)})
    rows = [r for rs in by_kind.values() for r in rs]
    return {
        "n": len(rows),
        **mean_scores(rows),
        "by_kind": {k: {"n": len(v), **mean_scores(v)} for k, v in sorted(by_kind.items())},
        "questions": per_question,
    }
