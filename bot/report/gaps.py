"""Knowledge gaps: questions the bot could not answer well, grouped into topics.

The questions are embedded with the index's own model (the one its manifest names), so
"similar" means what it means for retrieval. Topics are average-linkage clusters on
cosine distance, cut at a similarity threshold: deterministic (no random start, unlike
k-means) and no number of topics to guess. A topic is labelled by its most central
question, the one with the highest mean similarity to the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class Topic:
    label: str  # the most central question
    questions: list[dict[str, Any]] = field(default_factory=list)  # the rows, most central first

    @property
    def size(self) -> int:
        return len(self.questions)


def cluster(vectors: np.ndarray, min_similarity: float) -> list[list[int]]:
    """Indices of `vectors` (L2-normalised rows) grouped so that, on average, members of a
    group are at least `min_similarity` alike; groups ordered by size, then first member."""
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [[0]]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    distances = np.clip(pdist(np.asarray(vectors, dtype=np.float64), metric="cosine"), 0.0, 2.0)
    labels = fcluster(linkage(distances, method="average"), t=1.0 - min_similarity, criterion="distance")
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def central_order(vectors: np.ndarray, members: Sequence[int]) -> list[int]:
    """`members` ordered by mean similarity to the group, most central first (ties: input order)."""
    sub = vectors[list(members)]
    centrality = (sub @ sub.T).mean(axis=1)
    return [members[i] for i in sorted(range(len(members)), key=lambda i: (-round(float(centrality[i]), 6), i))]


def topics(rows: Sequence[dict[str, Any]], vectors: np.ndarray, min_similarity: float,
           text_of=lambda r: r["question"]) -> list[Topic]:
    """Group `rows` (one vector each, same order) into labelled topics, largest first."""
    if len(rows) != len(vectors):
        raise ValueError(f"{len(rows)} questions but {len(vectors)} vectors")
    out = []
    for members in cluster(vectors, min_similarity):
        ordered = central_order(vectors, members)
        out.append(Topic(label=text_of(rows[ordered[0]]), questions=[rows[i] for i in ordered]))
    return out
