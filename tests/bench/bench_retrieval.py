"""Retrieval quality on both dev sets and a check set: the seed pipeline vs FlyteGPT, in one run.

    python tests/bench/bench_retrieval.py [--store DIR] [--questions FILE ...]

The question files are ../shared/eval/dev.jsonl (the shared dev set), tests/eval/dev_howto.jsonl
(short how-to questions answered by a whole docs page, pasted errors and settings answered by a
configuration reference entry or a Slack thread), and two check sets written blind after the
retriever was tuned and never tuned on, which say whether a change tuned on the first two
generalises: tests/eval/check_faq.jsonl (FAQ headings and issue titles), tests/eval/check_chat.jsonl
(questions as people post them in Slack: context first, lowercase and abbreviations, a pasted
error or snippet, a concept described without its name) and tests/eval/check_issues.jsonl (GitHub
issues with a body, a version, a snippet or a traceback; terse search-box keywords) and
tests/eval/check_heldout.jsonl (50 questions in dev.jsonl's own style and mix of kinds, about other
documents: an estimate for a private held-out set written like dev.jsonl); every figure is
printed for each, overall, per kind and (where the file says) per origin.

The seed pipeline is rebuilt as it was: LangChain's SlackDirectoryLoader (one document per
message), CharacterTextSplitter() defaults for docs, PythonCodeTextSplitter for code, the same
embedding model and FAISS similarity top-k. FlyteGPT is measured hybrid, dense-only and
keyword-only over an index built with `flytegpt ingest` of the same corpus (reused from --store
when it is already there; the embedding cache makes a rebuild cheap). recall@8000c of "FlyteGPT
hybrid" counts what the answerer puts into the prompt: every retrieved source packed into a
2,000-token (8,000-character) budget by bot/answering/budget.py; "hybrid, whole chunks" counts
the retrieved chunks as they are, as the seed's prompt would hold them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
from eval_corpus import SHARED, require  # noqa: E402  (the evaluation corpus beside the checkout)
sys.path.insert(0, str(ROOT))

from flytegpt.ingest.config import load_config  # noqa: E402
from flytegpt.ingest.evaluation import CONTEXT_CHARS, METRICS, evaluate, load_questions  # noqa: E402
from flytegpt.ingest.models import Chunk  # noqa: E402

TARGETS = {"recall@5": 0.90, "mrr@10": 0.80, "coverage@10": 0.80, "recall@8000c": 0.92}
DEFAULT_QUESTIONS = [
    str(SHARED / "eval" / "dev.jsonl"),
    str(ROOT / "tests" / "eval" / "dev_howto.jsonl"),
    str(ROOT / "tests" / "eval" / "check_faq.jsonl"),
    str(ROOT / "tests" / "eval" / "check_chat.jsonl"),
    str(ROOT / "tests" / "eval" / "check_issues.jsonl"),
    str(ROOT / "tests" / "eval" / "check_heldout.jsonl"),
]


def seed_chunks(config) -> list[Chunk]:
    """The seed's documents and chunks, each mapped to the source id the gold lists use."""
    import warnings

    warnings.filterwarnings("ignore")
    from langchain_community.document_loaders import SlackDirectoryLoader
    from langchain_text_splitters import CharacterTextSplitter, PythonCodeTextSplitter

    chunks: list[Chunk] = []
    text_splitter = CharacterTextSplitter()
    code_splitter = PythonCodeTextSplitter()
    for source in config.sources:
        root = source.root()
        if source.kind == "slack_export":
            thread_of = _thread_of_message(root)
            for doc in SlackDirectoryLoader(str(root), workspace_url=source.workspace_url).load():
                channel, ts = doc.metadata["channel"], doc.metadata["timestamp"]
                sid = f"{source.name}:{channel}/{thread_of.get((channel, ts), ts)}"
                for piece in text_splitter.split_text(doc.page_content) or [doc.page_content]:
                    chunks.append(Chunk(sid, "slack", channel, doc.metadata["source"], piece, piece))
        elif source.kind == "docs":
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.name not in ("SOURCE.md", "LICENSE") and path.suffix in (".md", ".rst", ".txt"):
                    rel = path.relative_to(root).as_posix()
                    for piece in text_splitter.split_text(path.read_text(errors="ignore")):
                        chunks.append(Chunk(f"{source.name}:{rel}", "docs", rel, rel, piece, piece))
        elif source.kind == "code":
            for path in sorted(root.rglob("*.py")):
                rel = path.relative_to(root).as_posix()
                for piece in code_splitter.split_text(path.read_text(errors="ignore")):
                    chunks.append(Chunk(f"{source.name}:{rel}", "code", rel, rel, piece, piece))
    return chunks


def _thread_of_message(export: Path) -> dict[tuple[str, str], str]:
    """(channel, message ts) -> thread ts, read from the export for scoring only."""
    import zipfile

    out: dict[tuple[str, str], str] = {}
    with zipfile.ZipFile(export) as z:
        for name in z.namelist():
            if name.count("/") == 1 and name.endswith(".json"):
                channel = name.split("/")[0]
                for m in json.loads(z.read(name)):
                    out[(channel, m["ts"])] = m.get("thread_ts", m["ts"])
    return out


def dense_retriever(chunks: list[Chunk], embedder):
    import faiss
    import numpy as np

    vectors = embedder.embed_documents([c.embed_text for c in chunks], progress=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def retrieve(question: str) -> list[Chunk]:
        _, ids = index.search(embedder.embed_query(question)[None, :], 10)
        return [chunks[i] for i in ids[0] if i >= 0]

    return retrieve


def packed_retriever(searcher, token_budget: int = CONTEXT_CHARS // 4, limit: int = 4000):
    """Hybrid retrieval of what the bot searches (a pasted traceback by its error: bot/pasted.py),
    each hit's text replaced by what the prompt holds of its source."""
    from flytegpt.bot.answering.budget import CharCounter, context_chunks
    from flytegpt.bot.question_text import search_as_asked

    def retrieve(question: str) -> list:
        query, hits = search_as_asked(searcher, question, 10, limit)
        return context_chunks(hits, query, token_budget, CharCounter())

    return retrieve


def _origins(path: str) -> dict[str, str]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {str(r.get("id")): r.get("origin", "") for r in rows}


def _by_origin(result: dict, origins: dict[str, str]) -> dict[str, dict]:
    """Per-origin figures for files whose origins are a few styles (dev_howto), not URLs."""
    groups: dict[str, list[dict]] = {}
    for q in result["questions"]:
        origin = origins.get(q["id"], "")
        if origin and "://" not in origin and origin != "seed":
            groups.setdefault(origin, []).append(q)
    return {o: {"n": len(qs), **{m: sum(q[m] for q in qs) / len(qs) for m in METRICS}} for o, qs in sorted(groups.items())}


def _print(path: str, n: int, results: dict[str, dict]) -> None:
    origins = _origins(path)
    print(f"\n{n} questions, {path}")
    print(f"{'retriever':30}{'group':>18}{'n':>4}" + "".join(f"{m:>14}" for m in METRICS))
    for name, r in results.items():
        groups = [("all", r)] + list(r["by_kind"].items()) + list(_by_origin(r, origins).items())
        for group, row in groups:
            print(f"{name:30}{group:>18}{row['n']:>4}" + "".join(f"{row[m]:>14.3f}" for m in METRICS))


def _ingest(config):
    """`flytegpt ingest` of the corpus into the config's store (cached vectors and models reused),
    and a searcher over it as the bot opens one: the query model named by the manifest."""
    from flytegpt.ingest.artifact import read_latest
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.search import HybridSearcher

    t = time.perf_counter()
    summary = run_ingest(config, progress=True)
    tuned = f", model {summary.model_id}" if summary.tuning else ""
    print(f"ingest: {summary.chunks} chunks, {summary.embeddings_computed} embedded, "
          f"{summary.embeddings_reused} reused{tuned}, {time.perf_counter() - t:.1f}s -> "
          f"{read_latest(config.index.store)}")
    return HybridSearcher.open(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    parser.add_argument("--questions", nargs="+", default=DEFAULT_QUESTIONS)
    parser.add_argument("--store", default=str(ROOT / ".flytegpt" / "bench-store"))
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--no-tuned", dest="tuned", action="store_false",
                        help="skip the domain-tuned model's rows (ingest/tuning.py; minutes on a CPU the first time)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args()
    require(args.config, *args.questions)

    from flytegpt.ingest.embedding import Embedder

    config = load_config(args.config).with_store(args.store)
    question_sets = {path: load_questions(path) for path in args.questions}
    base = config.model_copy(update={"tuning": config.tuning.model_copy(update={"enabled": "off"})})
    searchers = {"flytegpt": _ingest(base)}
    if args.tuned:
        # its own store: the base index above stays as it is
        tuned = config.with_store(args.store.rstrip("/") + "-tuned")
        tuned = tuned.model_copy(update={"tuning": config.tuning.model_copy(update={"enabled": "on"})})
        searchers["flytegpt tuned"] = _ingest(tuned)

    seed = None
    if not args.skip_seed:
        t = time.perf_counter()
        chunks = seed_chunks(config)
        print(f"seed: {len(chunks)} chunks")
        # the seed embedded in fp32 with PyTorch, whatever this machine's default precision is
        seed_embedder = Embedder.from_config(
            config.embeddings.model_copy(update={"backend": "torch", "precision": "fp32"}))
        seed = dense_retriever(chunks, seed_embedder)
        print(f"seed built in {time.perf_counter() - t:.1f}s")

    everything = {}
    for path, questions in question_sets.items():
        results = {}
        if seed is not None:
            results["seed (LangChain, dense)"] = evaluate(questions, seed)
        for name, searcher in searchers.items():
            results[f"{name} dense"] = evaluate(questions, lambda q: [h.chunk for h in searcher.dense_search(q, 10)])
            if name == "flytegpt":  # the keyword index is the same for every model
                results["flytegpt keyword"] = evaluate(
                    questions, lambda q: [h.chunk for h in searcher.keyword_search(q, 10)])
            results[f"{name} hybrid, whole chunks"] = evaluate(
                questions, lambda q: [h.chunk for h in searcher.search(q, 10)])
            results[f"{name} hybrid"] = evaluate(questions, packed_retriever(searcher, CONTEXT_CHARS // 4,
                                                                                   config.answer.max_question_chars))
        _print(path, len(questions), results)
        ours = results["flytegpt tuned hybrid" if args.tuned else "flytegpt hybrid"]
        print("targets (overall): " + ", ".join(
            f"{m} {ours[m]:.3f} {'>=' if ours[m] >= t else '<'} {t}" for m, t in TARGETS.items()))
        everything[path] = {k: {m: v for m, v in r.items() if m != "questions"} for k, r in results.items()}
    if args.json:
        print(json.dumps(everything))


if __name__ == "__main__":
    main()
