"""Peak RSS of an ingest against corpus size and embedding batch size.

    python tests/bench/bench_memory.py [--sizes 2000,4000,8000] [--batch 8] [--other-batch 64]
                                       [--backend auto] [--config F]

Generates a synthetic Slack export (one short thread = one chunk, ~200 characters, seeded
vocabulary) of each size in a temporary folder, runs `flytegpt ingest --json` on it into an
empty store in a fresh child process, and reads that child's own peak RSS from `os.wait4`.
The same corpus sizes run with one embeddings batch size; the smallest size also runs with a
second batch size. Prints peak RSS per run, the growth in MiB per 10k chunks (least squares
over the sizes) next to the bytes the index itself must hold per 10k chunks (float32 vectors,
chunk text + embedded text, keyword files), and a verdict: the ingest "grows with the batch,
not with the corpus" when the growth is at most VERDICT_FACTOR x the index's own bytes.

glibc's dynamic mmap threshold lets the model's freed activations fragment the heap, so
peak RSS creeps up with every embedding call; `--env MALLOC_MMAP_THRESHOLD_=131072` shows
the flat alternative (it costs ~20-35% more wall time embedding on CPU: fresh pages per batch).

With `--config`, the sources of that config are ingested once per batch size instead (no
size series), to see a real corpus's peak.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
# An ingest must hold the index it builds, as a reader holds it once opened (FAISS vectors, the
# chunk table as Python objects, BM25 arrays), plus one transient copy of the vectors (the
# embedder's output next to FAISS's own); growth beyond that per chunk is a copy it should not keep.
THREADS_PER_CHANNEL = 500
_WORDS = (
    "task workflow cache map launch plan register execution node pod image container version file "
    "schema type default input output python decorator resource memory cpu gpu retry timeout secret "
    "config project domain remote local cluster kubernetes agent plugin spark dataset model train "
    "serve deploy error failed works fix upgrade release branch commit test run logs console admin "
    "propeller storage bucket artifact hash signature interface literal dataclass pandas dataframe "
    "structured dynamic subworkflow conditional approve gate sensor notification schedule cron fast "
    "serialize package pyflyte flytectl sandbox demo helm chart ingress auth oauth token service "
    "account role policy quota limit request priority queue worker scale autoscale spot preempt"
).split()


@dataclass
class Run:
    label: str
    chunks: int
    batch: int
    wall_s: float
    peak_mib: float
    index_bytes: dict[str, int]  # vectors, text, keyword: what the published index holds
    reader_mib: float  # RSS a fresh process adds by opening the published version (what the bot holds)


def write_slack_export(folder: Path, threads: int, seed: int = 0) -> None:
    """A Slack export with `threads` short threads (a question and 1-2 replies, ~200 characters) over a few channels."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    users = [{"id": f"U{i:04d}", "name": f"user{i}", "profile": {"display_name": f"user{i}"}} for i in range(50)]
    channels = [{"id": f"C{c:04d}", "name": f"chan-{c}"} for c in range((threads - 1) // THREADS_PER_CHANNEL + 1)]
    (folder / "users.json").write_text(json.dumps(users))
    (folder / "channels.json").write_text(json.dumps(channels))

    def sentence(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."

    for c, channel in enumerate(channels):
        count = min(THREADS_PER_CHANNEL, threads - c * THREADS_PER_CHANNEL)
        messages = []
        for t in range(count):
            root = f"{1_600_000_000 + c * 1_000_000 + t * 60}.000100"
            messages.append({"type": "message", "user": rng.choice(users)["id"], "ts": root,
                             "thread_ts": root, "text": f"How do I {sentence(12)}"})
            for r in range(rng.randint(1, 2)):
                messages.append({"type": "message", "user": rng.choice(users)["id"], "thread_ts": root,
                                 "ts": f"{1_600_000_000 + c * 1_000_000 + t * 60 + r + 1}.000200",
                                 "text": sentence(10)})
        (folder / channel["name"]).mkdir()
        (folder / channel["name"] / "2024-01-01.json").write_text(json.dumps(messages))


def write_config(path: Path, export: Path, batch: int, backend: str) -> None:
    path.write_text(
        "[[sources]]\nname = \"slack\"\nkind = \"slack_export\"\n"
        f"path = {json.dumps(str(export))}\nworkspace_url = \"https://example.slack.com\"\n\n"
        f"[embeddings]\nbatch_size = {batch}\nbackend = {json.dumps(backend)}\ndevice = \"cpu\"\n"
    )


def with_batch(config: Path, batch: int, out: Path) -> None:
    """A copy of a real config with `[embeddings] batch_size` set (paths made absolute)."""
    from flytegpt.ingest.config import load_config

    cfg = load_config(config)
    lines = []
    for source in cfg.sources:  # the keys the config wrote: one a source's kind does not read is an error
        lines.append("[[sources]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in source.model_dump(mode="json", exclude_unset=True).items()]
        lines.append("")
    embeddings = {**cfg.embeddings.model_dump(mode="json"), "batch_size": batch}
    lines.append("[embeddings]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in embeddings.items() if v is not None]
    out.write_text("\n".join(lines))


EXTRA_ENV: dict[str, str] = {}  # --env KEY=VALUE, for every child (e.g. MALLOC_MMAP_THRESHOLD_)


def ingest(config: Path, store: Path) -> tuple[dict, float, float]:
    """`flytegpt ingest --json` in a fresh child: (summary, wall seconds, the child's peak RSS MiB)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **EXTRA_ENV}
    cmd = [sys.executable, "-m", "flytegpt.bot.cli", "ingest", "--config", str(config), "--store", str(store), "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the max over all runs.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"ingest failed ({proc.returncode}):\n{err.read().decode()[-3000:]}")
        summary = json.loads(out.read().decode().strip().splitlines()[-1])
    return summary, wall, usage.ru_maxrss / 1024  # Linux reports KiB


def index_bytes(store: Path, version: str) -> dict[str, int]:
    """What the published index must hold: vectors, chunk text + embedded text, keyword files."""
    folder = store / version
    manifest = json.loads((folder / "manifest.json").read_text())
    text = 0
    with gzip.open(folder / "chunks.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text += len(row["text"].encode()) + len(row["embed_text"].encode())
    keyword = sum(e["bytes"] for name, e in manifest["files"].items() if name.startswith("keyword/"))
    vectors = manifest["chunk_count"] * manifest["model"]["dimension"] * 4
    return {"vectors": vectors, "text": text, "keyword": keyword}


def reader_mib(store: Path, version: str) -> float:
    """RSS that opening `version` adds to a fresh process with the libraries already imported."""
    from bench_index import open_in_fresh_process

    before, after, _ = open_in_fresh_process(str(store), version)
    return after - before


def run_one(tmp: Path, label: str, config: Path, batch: int) -> Run:
    store = tmp / f"store-{label}-b{batch}".replace(" ", "-")  # an empty store: nothing cached
    summary, wall, peak = ingest(config, store)
    run = Run(label, summary["chunks"], batch, wall, peak, index_bytes(store, summary["version"]),
              reader_mib(store, summary["version"]))
    total = sum(run.index_bytes.values()) / 2**20
    print(f"{label:>16}: {run.chunks:>6} chunks, batch {batch:>3}: peak RSS {peak:7.1f} MiB, "
          f"{wall:6.1f}s wall, index holds {total:6.1f} MiB "
          f"({summary['model_id']} on {summary['device']}, {summary.get('backend')} {summary.get('precision')})",
          flush=True)
    return run


def synthetic_runs(tmp: Path, sizes: list[int], batch: int, other_batch: int, backend: str) -> list[Run]:
    runs = []
    for n in sizes:
        export = tmp / f"slack-{n}"
        write_slack_export(export, n)
        config = tmp / f"flytegpt-{n}-{batch}.toml"
        write_config(config, export, batch, backend)
        runs.append(run_one(tmp, f"{n} threads", config, batch))
    config = tmp / f"flytegpt-{sizes[0]}-{other_batch}.toml"
    write_config(config, tmp / f"slack-{sizes[0]}", other_batch, backend)
    runs.append(run_one(tmp, f"{sizes[0]} threads", config, other_batch))
    return runs


def report(runs: list[Run], batch: int) -> None:
    """Growth per 10k chunks (least squares) against the index's own bytes, and the verdict."""
    series = [r for r in runs if r.batch == batch]
    x = np.array([r.chunks for r in series], dtype=float)
    slope = float(np.polyfit(x, np.array([r.peak_mib for r in series]), 1)[0]) * 10_000
    reader = float(np.polyfit(x, np.array([r.reader_mib for r in series]), 1)[0]) * 10_000
    per_10k = {k: v / series[-1].chunks * 10_000 / 2**20 for k, v in series[-1].index_bytes.items()}
    own = sum(per_10k.values())
    print(f"\ngrowth: {slope:.1f} MiB of peak RSS per 10k chunks (batch {batch}, "
          f"{int(x[0])}..{int(x[-1])} chunks)")
    print("index's own bytes per 10k chunks: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in per_10k.items())
          + f"; total {own:.1f} MiB")
    others = [r for r in runs if r.batch != batch]
    for r in others:
        same = next(s for s in series if s.chunks == r.chunks)
        print(f"batch {r.batch} vs {batch} at {r.chunks} chunks: {r.peak_mib - same.peak_mib:+.1f} MiB")
    print(f"a reader (the bot) holds {reader:.1f} MiB per 10k chunks of the opened index "
          f"({reader / own:.2f}x its bytes: Python objects for the chunk table)")
    allowed = reader + per_10k["vectors"]
    ok = slope <= allowed
    print(f"VERDICT: {'PASS' if ok else 'FAIL'}: the ingest's peak grows {slope:.1f} MiB per 10k chunks, "
          f"{slope / own:.2f}x the index's bytes; allowed: what a reader holds plus one copy of the vectors, "
          f"{allowed:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,4000,8000", help="threads (= chunks) per synthetic corpus")
    parser.add_argument("--batch", type=int, default=8, help="embeddings batch size of the size series")
    parser.add_argument("--other-batch", type=int, default=64, help="second batch size, at the smallest size")
    parser.add_argument("--backend", default="auto", choices=["auto", "openvino", "torch"])
    parser.add_argument("--config", type=Path, help="ingest this config's sources (per batch size) instead")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the ingests, e.g. MALLOC_MMAP_THRESHOLD_=131072")
    args = parser.parse_args()
    EXTRA_ENV.update(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="flytegpt-bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        if args.config:
            for batch in (args.batch, args.other_batch):
                config = tmp / f"config-{batch}.toml"
                with_batch(args.config.resolve(), batch, config)
                run_one(tmp, f"config b{batch}", config, batch)
            return
        sizes = sorted(int(s) for s in args.sizes.split(","))
        if len(sizes) < 2:
            parser.error("--sizes needs at least two sizes to measure growth")
        report(synthetic_runs(tmp, sizes, args.batch, args.other_batch, args.backend), args.batch)


if __name__ == "__main__":
    main()
