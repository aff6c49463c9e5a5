"""Re-ingest cost after a 1% change of the corpus, vs a full ingest; peak RSS of both.

    python tests/bench/bench_reingest.py [--config ../shared/eval/flytegpt.eval.toml] [--change 0.01]

The docs sources are copied to a temporary folder (Slack and code are read in place), a full
ingest runs into an empty store, then `--change` of all documents (picked among the docs
files, seed 0) get a new paragraph and the ingest runs again into the same store. Each
ingest is `flytegpt ingest --json` in its own process (as a user runs it: imports, model
load and all), so wall time and peak RSS are that process's. Target: re-ingest < 5% of full.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from eval_corpus import SHARED, require  # noqa: E402  (the evaluation corpus beside the checkout)
TARGET = 0.05


def toml_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def write_config(config, docs_copies: dict[str, Path], path: Path, backend: str) -> None:
    lines = []
    for s in config.sources:
        lines.append("[[sources]]")
        for key in ("name", "kind", "package", "include", "exclude", "url", "workspace_url"):
            value = getattr(s, key)
            if value not in (None, [], ""):
                lines.append(f"{key} = {toml_value(value)}")
        where = docs_copies.get(s.name, s.path)
        if where is not None:
            lines.append(f"path = {toml_value(where)}")
        lines.append("")
    lines += ["[embeddings]", f"backend = {toml_value(backend)}", ""]
    path.write_text("\n".join(lines))


def ingest(config: Path, store: Path) -> tuple[dict, float, float]:
    """One ingest in a child process: (summary, wall seconds, that child's peak RSS in MiB)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flytegpt.bot.cli", "ingest", "--config", str(config), "--store", str(store), "--json"],
            cwd=ROOT, stdout=out, stderr=err,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.exit(f"ingest failed:\n{err.read().decode()[-3000:]}")
        summary = json.loads(out.read().decode().strip().splitlines()[-1])
    return summary, wall, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    ap.add_argument("--change", type=float, default=0.01, help="share of documents changed")
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    require(args.config)

    sys.path.insert(0, str(ROOT))
    from flytegpt.ingest.config import load_config

    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        copies = {s.name: tmp / s.name for s in config.sources if s.kind == "docs"}
        for s in config.sources:
            if s.name in copies:
                shutil.copytree(s.path, copies[s.name])
        cfg_path, store = tmp / "flytegpt.toml", tmp / "store"
        write_config(config, copies, cfg_path, args.backend)

        first, wall1, rss1 = ingest(cfg_path, store)
        documents = sum(s["documents"] for s in first["sources"])
        files = sorted(p for d in copies.values() for p in d.rglob("*.md") if p.name != "SOURCE.md")
        changed = random.Random(0).sample(files, min(len(files), math.ceil(args.change * documents)))
        for i, p in enumerate(changed):
            p.write_text(p.read_text() + f"\n\n## Added in the re-ingest benchmark\n\nNew paragraph number {i}.\n")
        second, wall2, rss2 = ingest(cfg_path, store)
        third, wall3, _ = ingest(cfg_path, store)

    def row(name: str, s: dict, wall: float) -> None:
        t = s["timings"]
        print(f"{name:26}{s['chunks']:>7}{s['embeddings_computed']:>9}{s['embeddings_reused']:>8}{wall:>8.1f}  "
              + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))

    print(f"model {first['model_id']} on {first['device']}; {documents} documents; "
          f"changed {len(changed)} docs files ({100 * len(changed) / documents:.1f}% of documents)")
    print(f"{'run':26}{'chunks':>7}{'embedded':>9}{'reused':>8}{'wall s':>8}  stages (s)")
    row("full ingest, empty store", first, wall1)
    row(f"after a {100 * args.change:.0f}% change", second, wall2)
    row("unchanged re-run", third, wall3)
    ratio = wall2 / wall1
    print(f"re-ingest after the change / full ingest: {100 * ratio:.1f}% of wall time "
          f"(target < {100 * TARGET:.0f}%): {'MET' if ratio < TARGET else 'MISSED'}")
    print(f"peak RSS: full ingest {rss1:.0f} MiB, re-ingest after the change {rss2:.0f} MiB")
    return 0 if ratio < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
