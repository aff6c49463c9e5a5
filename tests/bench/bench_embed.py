"""Embedding throughput and quality: the seed (sentence-transformers PyTorch fp32) vs FlyteGPT, same run.

    python tests/bench/bench_embed.py [--sample 256] [--backend torch] [--precision auto]
                                      [--store .flytegpt/perf-store] [--end-to-end] [--skip-quality]

1. Throughput on a fixed random sample of the eval corpus's chunks (seed 0): the seed's
   `SentenceTransformer.encode(texts, batch_size=32)` in fp32 and FlyteGPT's `Embedder` (the
   configured backend and precision; by default OpenVINO, bf16 on a CPU that has it) run in
   alternating halves (seed, ours, ours, seed) so a change of load on a shared machine hits
   both. Prints chunks/s, the ratio, and the cosine between the two sets of vectors.
2. Quality: full ingests of the eval corpus with the fp32 reference and with ours, each in its
   own store under --store (vectors of one model id share the embedding cache, so they must
   not share a store), then every retrieval metric on dev.jsonl, hybrid and dense, for both.
   Target: recall@5 and MRR@10 no more than 0.01 below the fp32 reference.
3. --end-to-end: three full ingests from empty stores, sources to a published index: the seed
   pipeline as it was (LangChain loaders and splitters, sentence-transformers fp32, FAISS),
   FlyteGPT in fp32, and FlyteGPT as configured. Chunk sizes differ (the seed's are up to 4,000
   characters, cut by the model at 256 tokens), so throughput is also given in model tokens
   per second (tokens the model actually reads): the like-for-like figure.
Prints device, precision, batch size and threads so a GPU node's run is comparable.
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_RATIO = 2.0
TARGET_DELTA = 0.01


def variant(config, backend: str, precision: str, store: str | None = None):
    emb = config.embeddings.model_copy(update={"backend": backend, "precision": precision})
    return config.model_copy(update={"embeddings": emb}).with_store(store)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    ap.add_argument("--questions", default=str(SHARED / "eval" / "dev.jsonl"))
    ap.add_argument("--store", default=str(ROOT / ".flytegpt" / "perf-store"))
    ap.add_argument("--sample", type=int, default=256, help="chunks timed per pipeline")
    ap.add_argument("--backend", default=None, help="ours: auto, openvino, torch (default: the config's)")
    ap.add_argument("--precision", default=None, help="ours: auto, fp32, bf16, fp16 (default: the config's)")
    ap.add_argument("--end-to-end", action="store_true", help="also time the full ingests from empty stores")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from flytegpt.ingest.config import load_config
    from flytegpt.ingest.embedding import Embedder, resolve_model_path
    from flytegpt.ingest.chunking import chunk_documents
    from flytegpt.ingest.pipeline import collect

    config = load_config(args.config)
    args.backend = args.backend or config.embeddings.backend
    args.precision = args.precision or config.embeddings.precision
    documents, _ = collect(config, progress=False)
    texts = sorted({c.embed_text for c in chunk_documents(documents)})
    sample = random.Random(0).sample(texts, min(args.sample, len(texts)))
    halves = [sample[: len(sample) // 2], sample[len(sample) // 2 :]]
    print(f"corpus: {len(texts)} distinct chunks, mean {sum(map(len, texts)) / len(texts):.0f} chars; "
          f"timing {len(sample)} of them; cpu threads: torch {torch.get_num_threads()}, os {os.cpu_count()}")

    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_model = SentenceTransformer(resolve_model_path(config.embeddings.model), device=device)
    ours = Embedder.from_config(variant(config, args.backend, args.precision).embeddings)
    t = time.perf_counter()
    ours.embed_documents(sample[:4])  # load (and export once, if not cached)
    load_s = time.perf_counter() - t
    seed_model.encode(sample[:4], batch_size=32)

    seed_s = ours_s = 0.0
    seed_v, ours_v = {}, {}
    for who, half in [("seed", 0), ("ours", 0), ("ours", 1), ("seed", 1)]:
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
    print(f"\n{'pipeline':40}{'device':>8}{'precision':>10}{'batch':>7}{'chunks/s':>10}")
    print(f"{'seed: sentence-transformers':40}{device:>8}{'fp32':>10}{32:>7}{seed_rate:>10.1f}")
    print(f"{'flytegpt: ' + ours.backend + ' ' + ours.model_id.split('/')[-1]:40}{ours.device:>8}{ours.precision:>10}"
          f"{ours.batch_size:>7}{ours_rate:>10.1f}")
    print(f"ratio {ratio:.2f}x (target >= {TARGET_RATIO}x): {'MET' if ratio >= TARGET_RATIO else 'MISSED'}; "
          f"cosine ours vs seed: min {cos.min():.5f}, mean {cos.mean():.5f}; model load/export {load_s:.1f}s (one-off)")
    ok = ratio >= TARGET_RATIO

    if not args.skip_quality:
        ok = quality(args, config) and ok
    if args.end_to_end:
        ok = end_to_end(args, config, seed_model) and ok
    return 0 if ok else 1


def quality(args, config) -> bool:
    from flytegpt.ingest.evaluation import METRICS, evaluate, load_questions
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.search import HybridSearcher

    questions = load_questions(args.questions)
    results = {}
    for name, backend, precision in (("fp32", "torch", "fp32"), ("ours", args.backend, args.precision)):
        cfg = variant(config, backend, precision, str(Path(args.store) / f"{backend}-{precision}"))
        t = time.perf_counter()
        summary = run_ingest(cfg, progress=False)
        wall = time.perf_counter() - t
        print(f"ingest {name} [{summary.model_id}, {summary.backend or 'cached'} {summary.precision}]: "
              f"{summary.chunks} chunks, "
              f"embedded {summary.embeddings_computed}, reused {summary.embeddings_reused}, {wall:.1f}s wall"
              + (f", {summary.embeddings_computed / summary.timings['embed']:.1f} chunks/s embedding"
                 if summary.embeddings_computed else ""))
        searcher = HybridSearcher.open(cfg)
        results[name] = {
            "hybrid": evaluate(questions, lambda q: [h.chunk for h in searcher.search(q, 10)]),
            "dense": evaluate(questions, lambda q: [h.chunk for h in searcher.dense_search(q, 10)]),
        }
    ok = True
    print(f"\n{len(questions)} questions; {'retriever':10}{'metric':>14}{'fp32':>8}{'ours':>8}{'delta':>8}")
    for kind in ("hybrid", "dense"):
        for metric in METRICS:
            t, o = results["fp32"][kind][metric], results["ours"][kind][metric]
            gated = metric in ("recall@5", "mrr@10")
            below = gated and o < t - TARGET_DELTA - 1e-9
            ok = ok and not below
            print(f"{'':16}{kind:10}{metric:>14}{t:>8.3f}{o:>8.3f}{o - t:>+8.3f}"
                  f"{'  MORE THAN 0.01 BELOW' if below else ''}")
    print(f"recall@5 and MRR@10 within {TARGET_DELTA} of fp32: {'MET' if ok else 'MISSED'}")
    return ok


def model_tokens(texts: list[str], tokenizer, max_len: int) -> int:
    """Tokens the model reads: each text's tokens, cut at the model's maximum sequence length."""
    return sum(min(len(ids), max_len) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])


def seed_ingest(config, model, out: str) -> tuple[int, int, float]:
    """The seed pipeline end to end into `out`: (chunks, model tokens, seconds)."""
    import faiss
    import numpy as np
    from bench_retrieval import seed_chunks

    t = time.perf_counter()
    chunks = seed_chunks(config)
    texts = [c.embed_text for c in chunks]
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, os.path.join(out, "index.faiss"))
    with open(os.path.join(out, "docs.json"), "w") as f:
        json.dump([c.to_dict() for c in chunks], f)
    wall = time.perf_counter() - t
    return len(chunks), model_tokens(texts, model.tokenizer, model.max_seq_length), wall


def end_to_end(args, config, seed_model) -> bool:
    from flytegpt.ingest.artifact import open_version
    from flytegpt.ingest.pipeline import run_ingest

    tokenizer, max_len = seed_model.tokenizer, seed_model.max_seq_length
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        n, tokens, wall = seed_ingest(config, seed_model, tmp)
        rows.append(("seed (LangChain, fp32)", n, tokens, wall))
    for name, backend, precision in (("flytegpt fp32", "torch", "fp32"),
                                     (f"flytegpt {args.backend} {args.precision}", args.backend, args.precision)):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = variant(config, backend, precision, tmp)
            t = time.perf_counter()
            summary = run_ingest(cfg, progress=False)
            wall = time.perf_counter() - t
            texts = [c.embed_text for c in open_version(tmp).chunks]
            rows.append((f"{name} [{summary.backend} {summary.precision}]", summary.chunks,
                         model_tokens(texts, tokenizer, max_len), wall))
    print("\nend to end, empty stores (sources -> published index):")
    print(f"  {'pipeline':34}{'chunks':>8}{'tokens':>10}{'seconds':>9}{'chunks/s':>10}{'tokens/s':>10}"
          f"{'x seed (chunks/s)':>19}{'x seed (tokens/s)':>19}")
    base_c, base_t = rows[0][1] / rows[0][3], rows[0][2] / rows[0][3]
    for name, n, tokens, wall in rows:
        print(f"  {name:34}{n:>8}{tokens:>10}{wall:>9.1f}{n / wall:>10.1f}{tokens / wall:>10.0f}"
              f"{n / wall / base_c:>18.2f}x{tokens / wall / base_t:>18.2f}x")
    ratio = rows[-1][2] / rows[-1][3] / base_t
    print(f"ours vs seed, model tokens/s: {ratio:.2f}x (target >= {TARGET_RATIO}x): "
          f"{'MET' if ratio >= TARGET_RATIO else 'MISSED'}")
    return ratio >= TARGET_RATIO


if __name__ == "__main__":
    sys.exit(main())
