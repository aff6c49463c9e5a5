"""Hybrid retrieval over one index version: dense (FAISS) + keyword (BM25), fused.

Dense search finds paraphrases ("API token" ~ "secret"); BM25 finds the exact
identifiers a question names (`with_overrides`, `FlyteFile`) that a small embedding
model blurs. Each retriever proposes `candidates`; every candidate gets both scores,
the scores are fused, and at most `max_per_source` chunks of one source id are kept
so one long page or file can't crowd out the other sources. Sources (a page, a thread, a
module) are ranked, not chunks: a source scores its best dense and best keyword match, its
second best chunk, and for a short question its outline (chunking.py) and, for a docs page, a
fixed bonus and how close its title alone is to the question; outlines and titles are evidence,
never returned as passages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from flytegpt.ingest.artifact import IndexVersion, open_version
from flytegpt.ingest.chunking import is_evidence, is_outline, is_title
from flytegpt.ingest.config import Config, RetrievalConfig
from flytegpt.ingest.keyword import names_exact_term, words
from flytegpt.ingest.models import Chunk

if TYPE_CHECKING:
    from flytegpt.ingest.embedding import Embedder


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # the fused score (or the single retriever's score); higher is better
    rank: int  # 1-based
    dense_score: float | None = None  # cosine similarity of question and chunk, when computed
    keyword_score: float | None = None  # raw BM25 score, when computed


def _minmax(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _cap(order: list[int], chunks: list[Chunk], k: int, max_per_source: int) -> list[int]:
    """The first `k` ids of `order` with at most `max_per_source` per source id (0: no cap)."""
    picked: list[int] = []
    per_source: dict[str, int] = {}
    for i in order:
        sid = chunks[i].source_id
        if max_per_source > 0 and per_source.get(sid, 0) >= max_per_source:
            continue
        per_source[sid] = per_source.get(sid, 0) + 1
        picked.append(i)
        if len(picked) == k:
            break
    return picked


def _source_fused(
    ids: list[int],
    dense: np.ndarray,
    keyword: np.ndarray,
    w: float,
    chunks: list[Chunk],
    outline_weight: float = 0.0,
    docs_bonus: float = 0.0,
) -> dict[str, float]:
    """Each source's fused score from its best dense and its best keyword match.

    The two need not be the same chunk: a module whose docstring paraphrases the question
    and whose other function names its identifiers is a good source even if no single chunk
    is good at both; a page whose outline (title, first paragraph, headings) matches the
    question's meaning and whose section names its words likewise. A source's outline also
    adds `outline_weight` x its own fused score, and a docs page `docs_bonus` (search() sets both
    for short questions). `dense` and `keyword` are normalised scores, aligned with `ids`.
    """
    best_d: dict[str, float] = {}
    best_k: dict[str, float] = {}
    outline: dict[str, float] = {}
    for i, d, k in zip(ids, dense, keyword):
        sid = chunks[i].source_id
        best_d[sid] = max(best_d.get(sid, 0.0), float(d))
        best_k[sid] = max(best_k.get(sid, 0.0), float(k))
        if outline_weight and is_outline(chunks[i]):
            outline[sid] = w * float(d) + (1 - w) * float(k)
    docs = {chunks[i].source_id for i in ids if chunks[i].kind == "docs"} if docs_bonus else set()
    return {sid: w * best_d[sid] + (1 - w) * best_k[sid] + outline_weight * outline.get(sid, 0.0)
            + (docs_bonus if sid in docs else 0.0) for sid in best_d}


def _by_source(
    ids: list[int],
    fused: dict[int, float],
    chunks: list[Chunk],
    bonus: float,
    source_score: dict[str, float] | None = None,
) -> list[tuple[int, float]]:
    """Order chunks with each source's best chunk scored for the whole source.

    Users (and the eval) are served sources — a page, a thread, a module. A source with two
    matching passages is more likely to answer than a source with one lucky chunk, so a
    source's best chunk scores (its `source_score`, else its own fused score) + bonus x its
    second best. Every score is divided by (1 + bonus), which keeps them in [0, 1] and the
    order inside a source unchanged (an outline bonus can lift a score above 1; the order is
    what counts). Returns (chunk id, score), best first.
    """
    position = {i: p for p, i in enumerate(ids)}  # ties: dense order first
    seen: dict[str, int] = {}
    score = {i: fused[i] / (1 + bonus) for i in ids}
    for i in sorted(ids, key=lambda i: (-fused[i], position[i])):
        sid = chunks[i].source_id
        if sid not in seen:
            seen[sid] = i
            if source_score is not None:
                score[i] = max(source_score[sid], fused[i]) / (1 + bonus)
        elif seen[sid] >= 0:
            best = seen[sid]
            base = fused[best] if source_score is None else max(source_score[sid], fused[best])
            score[best] = (base + bonus * fused[i]) / (1 + bonus)
            seen[sid] = -1  # only the second best counts
    return sorted(((i, score[i]) for i in ids), key=lambda t: (-t[1], position[t[0]]))


class HybridSearcher:
    """Searches one opened index version; safe to share between threads."""

    def __init__(self, index: IndexVersion, embedder: "Embedder", retrieval: RetrievalConfig) -> None:
        model = index.model
        if embedder.model_id != model.model_id:
            raise ValueError(
                f"index {index.version} was built with {model.model_id}, the embedder is {embedder.model_id}"
            )
        if embedder.dimension != model.dimension:
            raise ValueError(
                f"index {index.version} has dimension {model.dimension}, the embedder gives {embedder.dimension}"
            )
        self.index = index
        self.embedder = embedder
        self.retrieval = retrieval
        self._first: dict[str, int] | None = None  # source id -> its first passage, built on demand
        self._title_rows: dict[str, int] | None = None  # docs source id -> its title chunk, on demand
        self._title_mask: np.ndarray | None = None  # True for title chunks

    @property
    def version(self) -> str:
        return self.index.version

    @property
    def chunks(self) -> list[Chunk]:
        return self.index.chunks

    @classmethod
    def open(cls, config: Config, version: str | None = None, embedder: "Embedder | None" = None) -> "HybridSearcher":
        """Open `version` (LATEST by default) of the configured store with a query embedder that matches it."""
        if embedder is not None:
            index = open_version(
                config.index.store,
                version,
                expect_model=embedder.model_id,
                expect_dimension=embedder.dimension,
                cache_dir=config.index.cache_dir,
            )
            return cls(index, embedder, config.retrieval)
        from flytegpt.ingest.embedding import Embedder

        # The manifest names the model (and backend) the vectors came from; queries must match it.
        index = open_version(config.index.store, version, cache_dir=config.index.cache_dir)
        return cls(index, Embedder.for_index(index.model.model_id, config), config.retrieval)

    # ------------------------------------------------------------ retrievers

    def _dense(self, qv: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        n = min(n, self.index.dense.ntotal)
        if n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # One OpenMP thread is faster for a single query; restore so index builds in
        # the same thread stay parallel.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.index.dense.search(qv.reshape(1, -1).astype(np.float32, copy=False), n)
        finally:
            faiss.omp_set_num_threads(threads)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep]

    def _titles(self) -> tuple[dict[str, int], np.ndarray | None]:
        """Each docs page's title chunk and a mask of them (None: the index has none)."""
        if self._title_rows is None:
            rows = {c.source_id: i for i, c in enumerate(self.index.chunks) if is_title(c)}
            mask = None
            if rows:
                mask = np.zeros(len(self.index.chunks), dtype=bool)
                mask[list(rows.values())] = True
            self._title_mask, self._title_rows = mask, rows
        return self._title_rows, self._title_mask

    def _dense_passages(self, qv: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `n` chunks by cosine that are not titles: titles only score their pages."""
        rows, mask = self._titles()
        if mask is None:
            return self._dense(qv, n)
        ids, scores = self._dense(qv, n + min(len(rows), 3 * n))
        keep = ~mask[ids]
        return ids[keep][:n], scores[keep][:n]

    def _keyword_scores(self, query: str) -> np.ndarray:
        """BM25 of every chunk, 0 for titles (their words are in their page's chunks too)."""
        scores = self.index.keyword.scores(query)
        mask = self._titles()[1]
        return scores if mask is None else np.where(mask, 0.0, scores)

    def _title_scores(self, sources, qv: np.ndarray) -> dict[str, float]:
        """Min-max normalised cosine of the question and each candidate page's title."""
        rows = self._titles()[0]
        pairs = [(sid, rows[sid]) for sid in sources if sid in rows]
        if not pairs:
            return {}
        sims = self._dense_scores_for(np.array([r for _, r in pairs], dtype=np.int64), qv)
        if sims is None:
            return {}
        return {sid: float(v) for (sid, _), v in zip(pairs, _minmax(np.asarray(sims, dtype=np.float64)))}

    def _dense_scores_for(self, ids: np.ndarray, qv: np.ndarray) -> np.ndarray | None:
        """Exact cosine for chunks the dense search did not propose (None if the index can't tell)."""
        if ids.size == 0:
            return np.zeros(0, dtype=np.float32)
        try:
            vectors = self.index.dense.reconstruct_batch(ids)
        except (RuntimeError, AttributeError):
            return None
        return vectors @ qv

    def _keyword_top(self, all_scores: np.ndarray, n: int) -> np.ndarray:
        n = min(n, all_scores.size)
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-all_scores, n - 1)[:n]
        top = top[np.argsort(-all_scores[top], kind="stable")]
        return top[all_scores[top] > 0].astype(np.int64)

    def _hits(self, ids: list[int], scores: dict[int, float], dense: dict[int, float], kw: dict[int, float]) -> list[Hit]:
        chunks = self.index.chunks
        return [
            Hit(chunk=chunks[i], score=float(scores[i]), rank=r, dense_score=dense.get(i), keyword_score=kw.get(i))
            for r, i in enumerate(ids, start=1)
        ]

    def _first_chunk(self, source_id: str) -> int | None:
        """The first passage (not the outline) of a source in the chunk table."""
        if self._first is None:
            first: dict[str, int] = {}
            for i, c in enumerate(self.index.chunks):
                if not is_evidence(c):
                    first.setdefault(c.source_id, i)
            self._first = first
        return self._first.get(source_id)

    def _passages(self, picked: list[int], order: list[int], scores: dict[int, float]) -> list[int]:
        """`picked` with every outline replaced by a passage of its source, at the outline's score.

        An outline is evidence that a source answers, not something to quote: the answerer
        gets the source's best-scoring passage among the candidates, else its first one.
        """
        taken = set(picked)
        out: list[int] = []
        for i in picked:
            chunk = self.index.chunks[i]
            if not is_evidence(chunk):
                out.append(i)
                continue
            sid = chunk.source_id
            best = next(
                (j for j in order if j not in taken and self.index.chunks[j].source_id == sid
                 and not is_evidence(self.index.chunks[j])),
                None,
            )
            if best is None:
                first = self._first_chunk(sid)
                best = first if first is not None and first not in taken else None
            if best is None:
                out.append(i)  # a source that is all outline: the outline is all there is
                continue
            taken.add(best)
            scores[best] = scores[i]
            out.append(best)
        return out

    def _pool(self, k: int, cap: int) -> int:
        # with a per-source cap, look further down the list so k results remain
        return max(self.retrieval.candidates, k) if cap > 0 else k

    def dense_search(self, query: str, k: int | None = None, *, max_per_source: int = 0) -> list[Hit]:
        """Dense retrieval alone (no per-source cap unless asked): the baseline for comparisons."""
        k = k or self.retrieval.k
        ids, scores = self._dense_passages(self.embedder.embed_query(query), self._pool(k, max_per_source))
        by_id = {int(i): float(s) for i, s in zip(ids, scores)}
        picked = _cap([int(i) for i in ids], self.index.chunks, k, max_per_source)
        return self._hits(picked, by_id, by_id, {})

    def keyword_search(self, query: str, k: int | None = None, *, max_per_source: int = 0) -> list[Hit]:
        """BM25 alone (no per-source cap unless asked)."""
        k = k or self.retrieval.k
        all_scores = self._keyword_scores(query)
        ids = self._keyword_top(all_scores, self._pool(k, max_per_source))
        by_id = {int(i): float(all_scores[i]) for i in ids}
        picked = _cap([int(i) for i in ids], self.index.chunks, k, max_per_source)
        return self._hits(picked, by_id, {}, by_id)

    def search(self, query: str, k: int | None = None, *, max_per_source: int | None = None,
               questions: Sequence[str] = ()) -> list[Hit]:
        """Hybrid retrieval: the answerer's and the eval's entry point.

        A message that asks several questions (`questions`, bot/question_text.separate_questions)
        is searched whole, then each question alone: in one search the questions compete, and the
        one whose words are rarer or whose topic has fewer chunks can lose all its sources to the
        others (searched whole, "cache? GPU? schedule?" had no scheduling source in the top 10). So the
        results start with the whole message's best source and then each question's best source,
        in the order asked, then the rest of the whole message's results: the first few sources,
        which the offline answer quotes and the model reads first, hold one for each question.
        """
        hits = self._search(query, k, max_per_source)
        parts = list(questions)[: self.retrieval.split_questions]
        if len(parts) < 2 or not hits:
            return hits
        lead = [hits[0]]
        for part in parts:
            best = self._search(part, 1, max_per_source)
            if not best or any(h.chunk.source_id == best[0].chunk.source_id for h in lead):
                continue
            sid = best[0].chunk.source_id
            # the whole message's passage of that source where it has one, else the question's
            lead.append(next((h for h in hits if h.chunk.source_id == sid), best[0]))
        rest = [h for h in hits if all(h is not x for x in lead)]
        floor = rest[0].score if rest else 0.0
        top = [lead[0]]
        for h in lead[1:]:  # scored between its neighbours: the answerer orders sources by score, then rank
            top.append(replace(h, score=min(top[-1].score, max(h.score, floor))))
        merged = (top + rest)[: k or self.retrieval.k]
        return [replace(h, rank=r) for r, h in enumerate(merged, start=1)]

    def _search(self, query: str, k: int | None, max_per_source: int | None) -> list[Hit]:
        cfg = self.retrieval
        k = k or cfg.k
        cap = cfg.max_per_source if max_per_source is None else max_per_source
        n = max(cfg.candidates, k)
        qv = self.embedder.embed_query(query)

        d_ids, d_scores = self._dense_passages(qv, n)
        kw_all = self._keyword_scores(query)
        k_ids = self._keyword_top(kw_all, n)

        dense = {int(i): float(s) for i, s in zip(d_ids, d_scores)}
        extra = np.array([i for i in k_ids if int(i) not in dense], dtype=np.int64)
        extra_scores = self._dense_scores_for(extra, qv)
        union = [int(i) for i in d_ids] + [int(i) for i in extra]
        if not union:
            return []
        if extra_scores is not None:
            dense.update({int(i): float(s) for i, s in zip(extra, extra_scores)})
        floor = min(dense.values()) if dense else 0.0
        kw = {i: float(kw_all[i]) for i in union}

        w = cfg.dense_weight
        dn = _minmax(np.array([dense.get(i, floor) for i in union], dtype=np.float64))
        kn = _minmax(np.array([kw[i] for i in union], dtype=np.float64))
        fused = {i: float(w * a + (1 - w) * b) for i, a, b in zip(union, dn, kn)}
        # A short question names a topic ("how do I run a bash script?"): the page or module
        # that is about it, as its outline says, counts for more than one passage sharing words.
        # ... and a page about a topic is its canonical answer, unless the question names an exact term.
        n_words = len(words(query))
        short = n_words <= cfg.short_question_words
        topic = short and not names_exact_term(query)
        source_score = _source_fused(union, dn, kn, w, self.index.chunks, cfg.outline_weight if short else 0.0,
                                     cfg.short_question_docs_bonus if topic else 0.0)
        if cfg.title_weight and n_words <= cfg.title_question_words:
            for sid, v in self._title_scores(source_score, qv).items():
                source_score[sid] += cfg.title_weight * v
        order = _by_source(union, fused, self.index.chunks, cfg.source_bonus, source_score)
        scores = dict(order)
        picked = self._passages(_cap([i for i, _ in order], self.index.chunks, k, cap), [i for i, _ in order], scores)
        return self._hits(picked, scores, dense, kw)
