"""Ingest speed and memory on the eval corpus: a full ingest, then a re-ingest of unchanged sources.

    python tests/bench/bench_ingest.py [--config ../shared/eval/flytegpt.eval.toml]

Each ingest runs as `flytegpt ingest --json` in its own process, so peak RSS is that process's.
Prints chunks/s end to end, the share of time spent embedding, the share outside the model
(target: at most 25%), and the re-ingest time as a share of the first (target: under 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from eval_corpus import SHARED, require  # noqa: E402  (the evaluation corpus beside the checkout)


def run_ingest(config: str, store: str) -> tuple[dict, float, float]:
    """One ingest in a child process: (summary, wall seconds, peak RSS MiB of that child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "flytegpt.bot.cli", "ingest", "--config", config, "--store", store, "--json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # ru_maxrss of children is the max over all children so far; a fresh max means this child.
    return summary, wall, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    args = parser.parse_args()
    require(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        first, wall1, rss1 = run_ingest(args.config, store)
        second, wall2, _ = run_ingest(args.config, store)

    def describe(name: str, s: dict, wall: float) -> None:
        t = s["timings"]
        total = sum(t.values())
        model = t.get("embed", 0) + t.get("load model", 0)
        print(f"{name}: {s['chunks']} chunks in {wall:.1f}s wall ({total:.1f}s in stages), "
              f"{s['chunks'] / wall:.1f} chunks/s end to end; embedded {s['embeddings_computed']}, "
              f"reused {s['embeddings_reused']}; stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
        print(f"  embedding {100 * t.get('embed', 0) / total:.0f}% of stage time; "
              f"outside the model {100 * (total - model) / total:.0f}% (target <= 25%)")

    describe("full ingest", first, wall1)
    print(f"  peak RSS {rss1:.0f} MiB ({first['model_id']} on {first['device']})")
    describe("re-ingest, unchanged", second, wall2)
    print(f"re-ingest / full ingest: {100 * wall2 / wall1:.1f}% of wall time (target < 10%)")


if __name__ == "__main__":
    main()
