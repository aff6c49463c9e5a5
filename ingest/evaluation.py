"""Retrieval metrics for a question set with gold source ids.

The definitions follow the shared evaluation README: hit@k, MRR@10, coverage@10 (share of a
question's gold sources in the top 10) and recall@8000c (a gold source among the chunks that
fit into ~8,000 characters of prompt, the first chunk always counting) — the last one because
a bot answers only from what fits into its prompt.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from flytegpt.ingest.models import Chunk

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


def load_questions(path: str | Path) -> list[Question]:
    """Read a JSONL question file; a bad line is an error naming the line, not a silent skip."""
    questions = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            questions.append(
                Question(id=str(d.get("id", n)), question=d["question"], gold=tuple(d["gold"]), kind=d.get("kind", "all"))
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise QuestionFileError(f"{path}:{n}: not a question with 'question' and 'gold': {e}") from None
    if not questions:
        raise QuestionFileError(f"{path}: no questions")
    return questions


def score_question(chunks: Sequence[Chunk], gold: Iterable[str]) -> dict[str, float]:
    """The five metrics for one question's ranked chunks."""
    gold = set(gold)
    ids = [c.source_id for c in chunks[:10]]
    first = next((i for i, s in enumerate(ids, 1) if s in gold), None)
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


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
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
        per_question.append(
            {"id": q.id, "kind": q.kind, **row, "top": [c.source_id for c in chunks[:10]], "gold": list(q.gold)}
        )
    rows = [r for rs in by_kind.values() for r in rs]
    return {
        "n": len(rows),
        **_mean(rows),
        "by_kind": {k: {"n": len(v), **_mean(v)} for k, v in sorted(by_kind.items())},
        "questions": per_question,
    }
