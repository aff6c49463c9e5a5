"""Embedding throughput: the seed (plain sentence-transformers PyTorch, batch 32) vs FlyteGPT, same run.

    python tests/bench/bench_embed.py [--sample 512] [--backend auto] [--store .flytegpt/perf-store]
                                      [--end-to-end] [--skip-quality]

1. Throughput on a fixed random sample of the eval corpus's chunks (seed 0): the seed's
   `SentenceTransformer.encode(texts, batch_size=32)` and FlyteGPT's `Embedder` run in
   alternating halves (seed, ours, ours, seed) so a change of load on a shared machine hits
   both. Prints chunks/s, the ratio, and the cosine between the two sets of vectors.
2. Quality: `run_ingest` of the whole eval corpus with backend "torch" and with ours into
   --store (the content-addressed cache makes repeats cheap), then recall@5 / MRR@10 on
   dev.jsonl (hybrid and dense) for both; target: within 0.01 of torch.
3. --end-to-end: both full ingests again into empty stores (sources -> published index),
   timed; the honest end-to-end ratio (slow: the seed takes minutes).
Prints device, batch size and threads so a GPU node's run is comparable.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 2.0
TARGET_DELTA = 0.01


def with_backend(config, backend: str, store: str | None = None):
    emb = config.embeddings.model_copy(update={"backend": backend})
    return config.model_copy(update={"embeddings": emb}).with_store(store)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    ap.add_argument("--questions", default=str(SHARED / "eval" / "dev.jsonl"))
    ap.add_argument("--store", default=str(ROOT / ".flytegpt" / "perf-store"))
    ap.add_argument("--sample", type=int, default=512, help="chunks timed per pipeline")
    ap.add_argument("--backend", default="auto", help="ours: auto, onnx, torch")
    ap.add_argument("--end-to-end", action="store_true", help="also time both full ingests from empty stores")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()

    import torch

    from ingest.config import load_config
    from ingest.embedding import Embedder
    from ingest.pipeline import chunk_documents, collect

    config = load_config(args.config)
    documents, _ = collect(config, progress=False)
    texts = sorted({c.embed_text for c in chunk_documents(documents)})
    sample = random.Random(0).sample(texts, min(args.sample, len(texts)))
    halves = [sample[: len(sample) // 2], sample[len(sample) // 2 :]]
    print(f"corpus: {len(texts)} distinct chunks, mean {sum(map(len, texts)) / len(texts):.0f} chars; "
          f"timing {len(sample)} of them; cpu threads: torch {torch.get_num_threads()}, os {os.cpu_count()}")

    from sentence_transformers import SentenceTransformer

    from ingest.embedding import resolve_model_path

    model_path = resolve_model_path(config.embeddings.model)
    seed_model = SentenceTransformer(model_path, device="cpu" if not torch.cuda.is_available() else "cuda")
    ours = Embedder.from_config(with_backend(config, args.backend).embeddings)
    t = time.perf_counter()
    ours.embed_documents(sample[:4])  # load (and export once, if not cached)
    load_s = time.perf_counter() - t
    seed_model.encode(sample[:4], batch_size=32)

    import numpy as np

    seed_s = ours_s = 0.0
    seed_v, ours_v = {}, {}
    for step, (who, half) in enumerate([("seed", 0), ("ours", 0), ("ours", 1), ("seed", 1)]):
        part = halves[half]
        t = time.perf_counter()
        if who == "seed":
            seed_v[half] = seed_model.encode(part, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            seed_s += time.perf_counter() - t
        else:
            ours_v[half] = ours.embed_documents(part)
            ours_s += time.perf_counter() - t
    a = np.concatenate([seed_v[0], seed_v[1]])
    b = np.concatenate([ours_v[0], ours_v[1]])
    cos = (a * b).sum(1)
    seed_rate, ours_rate = len(sample) / seed_s, len(sample) / ours_s
    ratio = ours_rate / seed_rate
    print(f"\n{'pipeline':44}{'device':>8}{'batch':>7}{'chunks/s':>10}")
    print(f"{'seed: sentence-transformers torch fp32':44}{str(seed_model.device):>8}{32:>7}{seed_rate:>10.1f}")
    print(f"{'flytegpt: ' + ours.model_id.split('/')[-1]:44}{ours.device:>8}{ours.batch_size:>7}{ours_rate:>10.1f}")
    print(f"ratio {ratio:.2f}x (target >= {TARGET_RATIO}x): {'MET' if ratio >= TARGET_RATIO else 'MISSED'}; "
          f"cosine ours vs seed: min {cos.min():.4f}, mean {cos.mean():.4f}; model load/export {load_s:.1f}s (one-off)")
    ok = ratio >= TARGET_RATIO

    if not args.skip_quality:
        ok = quality(args, config, ours) and ok
    if args.end_to_end:
        end_to_end(args, config)
    return 0 if ok else 1


def quality(args, config, ours) -> bool:
    from ingest.evaluation import evaluate, load_questions
    from ingest.pipeline import run_ingest
    from ingest.search import HybridSearcher

    questions = load_questions(args.questions)
    results = {}
    for name, backend in (("torch", "torch"), ("ours", args.backend)):
        cfg = with_backend(config, backend, args.store)
        t = time.perf_counter()
        summary = run_ingest(cfg, progress=False)
        wall = time.perf_counter() - t
        print(f"ingest [{summary.model_id}]: {summary.chunks} chunks, embedded {summary.embeddings_computed}, "
              f"reused {summary.embeddings_reused}, {wall:.1f}s wall"
              + (f", {summary.embeddings_computed / summary.timings['embed']:.1f} chunks/s embedding"
                 if summary.embeddings_computed else ""))
        searcher = HybridSearcher.open(cfg)
        results[name] = {
            "hybrid": evaluate(questions, lambda q: [h.chunk for h in searcher.search(q, 10)]),
            "dense": evaluate(questions, lambda q: [h.chunk for h in searcher.dense_search(q, 10)]),
        }
    ok = True
    print(f"\n{len(questions)} questions; {'retriever':10}{'metric':>10}{'torch':>8}{'ours':>8}{'delta':>8}")
    for kind in ("hybrid", "dense"):
        for metric in ("recall@5", "mrr@10"):
            t, o = results["torch"][kind][metric], results["ours"][kind][metric]
            within = abs(o - t) <= TARGET_DELTA + 1e-9
            ok = ok and within
            print(f"{'':16}{kind:10}{metric:>10}{t:>8.3f}{o:>8.3f}{o - t:>+8.3f}{'' if within else '  OUTSIDE 0.01'}")
    print(f"quality within {TARGET_DELTA} of torch: {'MET' if ok else 'MISSED'}")
    return ok


def end_to_end(args, config) -> None:
    from ingest.pipeline import run_ingest

    rows = []
    for name, backend in (("seed torch", "torch"), ("flytegpt", args.backend)):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            s = run_ingest(with_backend(config, backend, tmp), progress=False)
            rows.append((name, s.chunks, time.perf_counter() - t))
    print("\nend to end, empty stores (sources -> published index):")
    for name, n, wall in rows:
        print(f"  {name:12} {n} chunks in {wall:.1f}s = {n / wall:.1f} chunks/s")
    print(f"  ratio {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
