"""The report's content: everything the page and the Flyte Deck show, computed once.

Aggregation is plain Python over the logged questions (a bot logs thousands a month, not
millions), so every figure can be checked by hand against the database.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from flytegpt.bot.report import gaps
from flytegpt.bot.report.data import (
    IndexHistory, PrivacyFilter, SourceInfo, load_questions, mask_mentions, read_index_history, surface_of,
)
from flytegpt.bot.slack.feedback import OUTCOMES, thread_permalink

if TYPE_CHECKING:
    from flytegpt.ingest.config import Config
    from flytegpt.ingest.embedding import Embedder

log = logging.getLogger(__name__)

SURFACES = ("mention", "followup", "dm", "slash", "panel")
PERCENTILES = (50, 90, 95, 99)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_GAP_QUESTIONS = 2000  # clustering is O(n^2) in memory; the newest are kept


def parse_since(text: str) -> float:
    """'30d', '12h', '2w', '90m' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--since must be a positive duration such as 30d, 2w or 12h, not {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class ReportOptions:
    since_s: float = 30 * 86400
    privacy: PrivacyFilter = field(default_factory=lambda: PrivacyFilter(None, False))
    topic_similarity: float = 0.4
    workspace_url: str | None = None  # links for rows logged without a permalink
    top_n: int = 15
    eval_questions: str | None = None  # a JSONL eval file: retrieval metrics per index version
    eval_versions: int = 5  # the newest versions evaluated

    @classmethod
    def from_config(cls, config: "Config", *, since: str = "30d", **overrides: Any) -> "ReportOptions":
        bot = config.bot
        eval_q = bot.report_eval_questions  # a path relative to the config file when written there
        workspace = next((s.workspace_url for s in config.sources if getattr(s, "workspace_url", None)), None)
        values: dict[str, Any] = dict(
            since_s=parse_since(since),
            privacy=PrivacyFilter.from_config(bot.report_channels, bot.allowed_channels, bot.report_dms),
            topic_similarity=bot.report_topic_similarity, workspace_url=workspace, eval_questions=eval_q)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Report:
    generated_at: str
    start: str
    end: str
    days: list[str]
    totals: dict[str, int]
    left_out: dict[str, int]
    per_day_outcome: dict[str, list[int]]
    per_day_votes: dict[str, list[int]]
    per_day_surface: dict[str, list[int]]
    latency: list[dict[str, Any]]
    topics: list[gaps.Topic]
    most_cited: list[dict[str, Any]]
    least_cited: list[dict[str, Any]]
    never_cited: dict[str, list[SourceInfo]]
    catalog_size: int
    versions: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # failed questions by kind (model_unavailable, busy ...)


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def day_range(start: float, end: float) -> list[str]:
    first = datetime.fromtimestamp(start, timezone.utc).date()
    last = datetime.fromtimestamp(end, timezone.utc).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def per_day(rows: Sequence[dict], days: list[str], key: Callable[[dict], str | None], names: Sequence[str]
            ) -> dict[str, list[int]]:
    """Counts per day for each name `key(row)` returns (rows whose key is None do not count)."""
    index = {d: i for i, d in enumerate(days)}
    out = {n: [0] * len(days) for n in names}
    for r in rows:
        k = key(r)
        i = index.get(_day(r["created_at"]))
        if k is None or i is None:
            continue
        out.setdefault(k, [0] * len(days))[i] += 1
    return out


def vote_of(row: dict) -> str | None:
    """An answer's net verdict: "down" when anyone voted down at least as often as up."""
    if row.get("down", 0) and row["down"] >= row.get("up", 0):
        return "down"
    if row.get("up", 0):
        return "up"
    return None


def latency_table(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Latency percentiles (seconds) overall, per surface and per outcome."""
    groups: dict[str, list[float]] = {"all questions": []}
    for r in rows:
        if r.get("latency_s") is None:
            continue
        v = float(r["latency_s"])
        for g in ("all questions", f"surface: {surface_of(r)}", f"outcome: {r.get('outcome') or 'answered'}"):
            groups.setdefault(g, []).append(v)
    out = []
    for name, values in groups.items():
        if not values:
            continue
        arr = np.asarray(values)
        row: dict[str, Any] = {"group": name, "n": len(values)}
        row.update({f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES})
        row["max"] = float(arr.max())
        out.append(row)
    return out


def citation_counts(rows: Sequence[dict]) -> Counter:
    """How many answered questions cited each source id (once per answer)."""
    counts: Counter = Counter()
    for r in rows:
        if (r.get("outcome") or "answered") != "answered":
            continue
        counts.update({s.get("source_id") for s in r.get("sources") or [] if s.get("source_id")})
    return counts


def cited_sources(rows: Sequence[dict], catalog: dict[str, SourceInfo], top_n: int
                  ) -> tuple[list[dict], list[dict], dict[str, list[SourceInfo]]]:
    """(most cited, least cited, never cited by source name) in the period."""
    counts = citation_counts(rows)
    seen: dict[str, dict] = {}
    for r in rows:
        for s in r.get("sources") or []:
            seen.setdefault(s.get("source_id"), s)

    def describe(sid: str, n: int) -> dict[str, Any]:
        info = catalog.get(sid)
        s = seen.get(sid, {})
        return {"source_id": sid, "count": n, "title": info.title if info else s.get("title", sid),
                "url": info.url if info else (s.get("url") or "").split("#", 1)[0],
                "kind": info.kind if info else "", "in_index": info is not None}

    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    most = [describe(sid, n) for sid, n in ranked[:top_n]]
    least = [describe(sid, n) for sid, n in sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:top_n]]
    never: dict[str, list[SourceInfo]] = {}
    for sid in sorted(catalog):
        if sid not in counts:
            never.setdefault(sid.split(":", 1)[0], []).append(catalog[sid])
    return most, least, never


def gap_rows(rows: Sequence[dict]) -> list[dict]:
    """The questions that show a gap: not found, or voted down."""
    return [r for r in rows if r.get("outcome") == "not_found" or vote_of(r) == "down"]


def knowledge_gaps(rows: Sequence[dict], embedder: "Embedder | None", similarity: float,
                   workspace_url: str | None) -> list[gaps.Topic]:
    """Gap questions as topics, each question with a link to its thread (when it has one)."""
    selected = gap_rows(rows)[-MAX_GAP_QUESTIONS:]
    if not selected:
        return []
    items = [{
        "question": mask_mentions(r["question"]),
        "day": _day(r["created_at"]),
        "outcome": r.get("outcome") or "answered",
        "vote": vote_of(r),
        "surface": surface_of(r),
        "link": r.get("permalink") or thread_permalink(workspace_url, r.get("channel"), r.get("thread_ts")),
    } for r in selected]
    if embedder is None:
        return [gaps.Topic(label=i["question"], questions=[i]) for i in items]
    texts = [r.get("standalone_question") or r["question"] for r in selected]
    vectors = embedder.embed_documents(texts)
    return gaps.topics(items, vectors, similarity)


def version_rows(history: IndexHistory | None, rows: Sequence[dict]) -> list[dict[str, Any]]:
    asked = Counter(r.get("index_version") for r in rows)
    out = []
    for m in history.versions if history else []:
        out.append({"version": m["version"], "created_at": m.get("created_at", ""),
                    "chunks": int(m.get("chunk_count", 0)), "counts": dict(m.get("counts", {})),
                    "model": m["model"]["model_id"], "questions": asked.get(m["version"], 0),
                    "latest": history.latest == m["version"], "eval": None})
    return out


def evaluate_versions(store: str, versions: list[dict], questions_file: str, config: "Config",
                      embedder_for: Callable[[str], "Embedder"], newest: int) -> list[str]:
    """Retrieval metrics of the newest versions on an eval question file, into versions[i]["eval"].

    A version that cannot be opened or searched (a damaged file, a model that won't load) is
    left out on its own: the others are still evaluated. Returns one note per version left out.
    An unreadable question file raises (no version can be evaluated)."""
    from flytegpt.ingest.evaluation import load_questions as load_eval

    qs = load_eval(questions_file)
    problems = []
    for v in versions[-newest:]:
        try:
            result = _evaluate_version(store, v["version"], qs, config, embedder_for)
        except Exception as e:  # noqa: BLE001 - whatever a damaged version raises: skip it, keep the rest
            log.warning("report: index version %s left out of the evaluation: %s", v["version"], e)
            problems.append(f"Index version {v['version']} left out of the evaluation: {e}")
            v["eval"] = {"left_out": True}
            continue
        v["eval"] = {k: result[k] for k in ("recall@5", "recall@10", "mrr@10") if k in result}
        v["eval"]["n"] = result.get("n", len(qs))
    return problems


def _evaluate_version(store: str, version: str, qs: list, config: "Config",
                      embedder_for: Callable[[str], "Embedder"]) -> dict:
    """One version's metrics; its index is freed on return, before the next version is opened."""
    from flytegpt.ingest.artifact import open_version
    from flytegpt.ingest.evaluation import evaluate
    from flytegpt.ingest.search import HybridSearcher

    from flytegpt.bot.question_text import search_as_asked

    index = open_version(store, version)
    searcher = HybridSearcher(index, embedder_for(index.model.model_id), config.retrieval)
    limit = config.answer.max_question_chars
    return evaluate(qs, lambda q: [h.chunk for h in search_as_asked(searcher, q, 10, limit)[1]])


def build_report(db: str, *, store: str | None = None, options: ReportOptions | None = None,
                 config: "Config | None" = None, embedder: "Embedder | None" = None,
                 now: float | None = None) -> Report:
    """Everything the report shows, for the questions of the last `options.since_s` seconds.

    `embedder`: the model that clusters the gap questions; by default the one the store's
    LATEST manifest names (the index's own model), else the configured one.
    """
    from flytegpt.ingest.config import Config

    options = options or ReportOptions()
    config = config or Config()
    now = time.time() if now is None else now
    start = now - options.since_s
    all_rows = load_questions(db, since=start, until=now)
    rows, left_out = options.privacy.split(all_rows)
    notes = []
    names_note = options.privacy.names_note()
    if names_note:
        notes.append(names_note)
    untyped_note = PrivacyFilter.untyped_note(left_out)
    if untyped_note:
        notes.append(untyped_note)

    history = read_index_history(store) if store else None
    if history is None:
        notes.append("No index store given: the sources and index sections are empty.")
    else:
        notes.extend(history.problems)
        if history.latest is None and not history.problems:
            notes.append(f"No published index in {store}.")

    embedders: dict[str, "Embedder"] = {}

    def embedder_for(model_id: str) -> "Embedder":
        from flytegpt.ingest.embedding import Embedder

        if embedder is not None and embedder.model_id == model_id:
            return embedder
        if model_id not in embedders:
            embedders[model_id] = Embedder.for_index(model_id, config)
        return embedders[model_id]

    gap_model = (history.model_id if history and history.model_id else None) or \
        (embedder.model_id if embedder is not None else config.embeddings.model)
    try:
        topics = knowledge_gaps(rows, embedder_for(gap_model) if gap_rows(rows) else None,
                                options.topic_similarity, options.workspace_url)
    except Exception as e:  # noqa: BLE001 - whatever the model library raises: list the questions ungrouped
        log.warning("report: embedding the gap questions failed: %s", e)
        notes.append(f"The gap questions are not grouped: the model {gap_model!r} could not embed them ({e}).")
        topics = knowledge_gaps(rows, None, options.topic_similarity, options.workspace_url)

    days = day_range(start, now)
    outcomes = list(OUTCOMES)
    most, least, never = cited_sources(rows, history.catalog if history else {}, options.top_n)
    versions = version_rows(history, rows)
    if options.eval_questions and store and versions:
        try:
            notes.extend(evaluate_versions(store, versions, options.eval_questions, config, embedder_for,
                                           options.eval_versions))
        except Exception as e:  # noqa: BLE001 - the metrics are optional; the rest of the report stands
            log.warning("report: evaluating index versions failed: %s", e)
            notes.append(f"Evaluating the index versions failed: {e}")
    by_outcome = Counter(r.get("outcome") or "answered" for r in rows)
    votes = Counter(vote_of(r) for r in rows)
    totals = {"questions": len(rows), **{o: by_outcome.get(o, 0) for o in outcomes},
              "up": votes.get("up", 0), "down": votes.get("down", 0),
              "askers": len({r.get("user") for r in rows if r.get("user")})}
    return Report(
        generated_at=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        start=_day(start), end=_day(now), days=days, totals=totals, left_out=left_out,
        per_day_outcome=per_day(rows, days, lambda r: r.get("outcome") or "answered", outcomes),
        per_day_votes=per_day(rows, days, vote_of, ("up", "down")),
        per_day_surface=per_day(rows, days, surface_of, SURFACES),
        latency=latency_table(rows), topics=topics, most_cited=most, least_cited=least, never_cited=never,
        catalog_size=len(history.catalog) if history else 0, versions=versions, notes=notes,
        failures=dict(Counter(r.get("failure") or "unknown" for r in rows
                              if r.get("outcome") in ("model_failed", "failed")).most_common()))
