"""Answering latency without the model: retrieval + prompt building + post-processing.

    python tests/bench/bench_answer.py --store DIR [--config ../shared/eval/flytegpt.eval.toml]
                                       [--questions ../shared/eval/dev.jsonl]

Builds the eval index into --store with `run_ingest` when the store has no LATEST yet,
then answers every dev question through the real Answerer and the real ChatOpenAI against
the OpenAI stand-in (which replies instantly). The time spent inside model calls (HTTP to
the stand-in and the client's own overhead) is measured separately and subtracted, so the
reported number is what FlyteGPT itself adds on top of a model. Target: p95 < 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
from eval_corpus import SHARED, require  # noqa: E402  (the evaluation corpus beside the checkout)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TARGET_P95_MS = 150.0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="index store; built here if it has no LATEST")
    ap.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    ap.add_argument("--questions", default=str(SHARED / "eval" / "dev.jsonl"))
    ap.add_argument("--repeat", type=int, default=1, help="passes over the questions")
    args = ap.parse_args()
    require(args.config, args.questions)

    from support.openai_server import OpenAIStandIn

    from flytegpt.bot.answering import Answerer
    from flytegpt.ingest.artifact import read_latest
    from flytegpt.ingest.config import Settings, load_config
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.search import HybridSearcher

    config = load_config(args.config).with_store(args.store)
    if read_latest(config.index.store) is None:
        print(f"building the index into {args.store} ...", flush=True)
        summary = run_ingest(config, progress=True)
        print(f"published {summary.version}: {summary.chunks} chunks in {summary.total_seconds:.0f}s")
    searcher = HybridSearcher.open(config)
    questions = [json.loads(line)["question"] for line in Path(args.questions).read_text().splitlines() if line.strip()]

    with OpenAIStandIn() as server:
        server.reply = "Per the docs [1], and see [2] and [3]. Also [9]."
        answerer = Answerer(config, Settings(OPENAI_API_KEY="bench", OPENAI_BASE_URL=server.base_url), lambda: searcher)

        model_s = 0.0
        real_invoke = answerer.model.invoke

        def timed_invoke(*a, **kw):  # the bench's only hook: measure the model call to subtract it
            nonlocal model_s
            t = time.perf_counter()
            try:
                return real_invoke(*a, **kw)
            finally:
                model_s += time.perf_counter() - t

        answerer.model.invoke = timed_invoke  # type: ignore[method-assign]
        answerer.answer(questions[0])  # warm-up: tokenizer, client, first query

        totals, without_model, retrieval, modes = [], [], [], {}
        for _ in range(args.repeat):
            for q in questions:
                t = time.perf_counter()
                searcher.search(q, config.retrieval.k)
                retrieval.append((time.perf_counter() - t) * 1000)

                model_s = 0.0
                t = time.perf_counter()
                a = answerer.answer(q)
                total = (time.perf_counter() - t) * 1000
                totals.append(total)
                without_model.append(total - model_s * 1000)
                modes[a.mode] = modes.get(a.mode, 0) + 1

    print(f"index {searcher.version}: {len(searcher.chunks)} chunks; {len(questions)} questions x {args.repeat}; modes {modes}")
    print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for name, vals in (
        ("retrieval alone", retrieval),
        ("answer excluding the model", without_model),
        ("answer incl. stand-in model call", totals),
    ):
        print(f"{name:34}{statistics.median(vals):>10.1f}{pct(vals, 95):>10.1f}{max(vals):>10.1f}")
    p95 = pct(without_model, 95)
    ok = p95 < TARGET_P95_MS
    print(f"target p95 < {TARGET_P95_MS:.0f} ms excluding the model: {'MET' if ok else 'MISSED'} ({p95:.1f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
