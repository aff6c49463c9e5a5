"""The Slack bot under a burst: 50 mentions at once, acks, answer latency, memory across a reload.

    python tests/bench/bench_bot.py [--store DIR] [--mentions 50] [--config ../shared/eval/flytegpt.eval.toml]

Runs the real `flytegpt serve` stack (BotServer: Bolt over Socket Mode, worker pool, hot
reload, Answerer with ChatOpenAI, HybridSearcher over the eval corpus index) against the
Slack emulator and the OpenAI-compatible stand-in answering instantly. The index is built
into --store with `run_ingest` when the store has none (the embedding cache in the store
makes a rebuild cheap). Reports: ack latency (Slack's limit is 3 s), event -> answer posted
p50/p95 (target p95 < 2 s), and RSS before and after a new version is hot-reloaded (the old
index must be freed, so RSS should not grow by the index's size).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as `flytegpt serve` sets it

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.openai_server import OpenAIStandIn  # noqa: E402
from support.slack_emulator import SlackEmulator  # noqa: E402

from flytegpt.ingest.config import Settings, load_config  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def publish_new_version(store: str, base: str) -> str:
    """What a nightly re-ingest does to the store: a new version (here: one chunk fewer), published."""
    from flytegpt.ingest.artifact import open_version, publish, write_version

    current = open_version(store, base)
    n = len(current.chunks) - 1
    vectors = current.dense.reconstruct_n(0, n)
    time.sleep(1.0)  # version ids carry the time in seconds
    version = write_version(store, current.chunks[:n], vectors, current.model)
    del current
    publish(store, version)
    return version


def publish_in_subprocess(store: str, base: str) -> str:
    """Publish from another process, as the Flyte workflow would: the bot's RSS stays the bot's."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--publish-from", base, "--store", store],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(SHARED / "eval" / "flytegpt.eval.toml"))
    parser.add_argument("--questions", default=str(SHARED / "eval" / "dev.jsonl"))
    parser.add_argument("--store", default=str(ROOT / ".flytegpt" / "bench-store"))
    parser.add_argument("--mentions", type=int, default=50)
    parser.add_argument("--workers", type=int, default=None, help="[bot].workers (default: the config's)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    parser.add_argument("--publish-from", help=argparse.SUPPRESS)  # internal: the publishing subprocess
    args = parser.parse_args()
    if args.publish_from:
        print(publish_new_version(args.store, args.publish_from))
        return

    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: already running" during a load
    from flytegpt.bot.serve import BotServer
    from flytegpt.ingest.artifact import prune, read_latest
    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.pipeline import run_ingest

    config = load_config(args.config).with_store(args.store)
    # Every mention of the burst must be queued, not refused as busy: queue >= burst.
    bot = {"queue_size": max(config.bot.queue_size, args.mentions), "user_rate_limit": 0,
           "feedback_db": str(Path(args.store) / "bench-feedback.sqlite3"), "reload_interval_s": 0.5}
    if args.workers:
        bot["workers"] = args.workers
    config = config.model_copy(update={"bot": config.bot.model_copy(update=bot)})
    embedder = Embedder.from_config(config.embeddings)
    if read_latest(args.store) is None:
        t = time.perf_counter()
        summary = run_ingest(config, progress=True, embedder=embedder)
        print(f"ingest: {summary.version} in {time.perf_counter() - t:.1f}s")
    questions = [json.loads(line)["question"] for line in open(args.questions, encoding="utf-8") if line.strip()]
    questions = (questions * (args.mentions // max(1, len(questions)) + 1))[: args.mentions]

    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        llm.reply = "Use `@task(cache=True, cache_version=\"2\")` to cache outputs [1]."
        settings = Settings(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="sk-bench",
                            SLACK_BOT_TOKEN="xoxb-bench", SLACK_APP_TOKEN="xapp-bench", SLACK_API_URL=emu.api_url)
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=5.0, embedder=embedder)
        t = time.perf_counter()
        server.start()
        emu.wait_connected(timeout=30)
        emu.wait_for(server.ready, timeout=300)
        v1 = server.holder.version
        print(f"bot up and index {v1} loaded in {time.perf_counter() - t:.1f}s "
              f"({len(server.holder.get().chunks)} chunks); workers={config.bot.workers}, "
              f"queue={config.bot.queue_size}")
        # one warm-up question (first model call builds the LangChain chain)
        d = emu.mention("warm up: what is flytekit?", user="U0WARM")
        emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=60)

        t0 = time.perf_counter()
        sent = [emu.mention(q, user=f"U{i:06d}") for i, q in enumerate(questions)]
        burst_s = time.perf_counter() - t0
        acks = [emu.wait_ack(s.envelope_id, timeout=10).latency for s in sent]
        emu.wait_for(lambda: all(emu.bot_messages(thread_ts=s.ts) for s in sent), timeout=300)
        posted = {c.args.get("thread_ts"): c.at for c in emu.calls_to("chat.postMessage")}
        latencies = [posted[s.ts] - emu.sent[s.envelope_id] for s in sent]
        texts = [emu.bot_messages(thread_ts=s.ts)[0]["text"] for s in sent]
        answered = sum("cache_version" in x for x in texts)

        gc.collect()
        rss_before = rss_mib()
        t = time.perf_counter()
        v2 = publish_in_subprocess(args.store, v1)
        emu.wait_for(lambda: server.holder.version == v2, timeout=300)
        reload_s = time.perf_counter() - t
        gc.collect()
        time.sleep(0.5)
        rss_after = rss_mib()
        d = emu.mention(questions[0], user="U0AFTER")
        emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=60)
        server.stop()
        prune(args.store, keep=2)

    figures = {
        "mentions": len(sent), "burst_send_s": round(burst_s, 3),
        "acked": len(acks), "ack_max_s": round(max(acks), 3), "ack_p95_s": round(pct(acks, 95), 3),
        "answered": answered, "busy_or_failed": len(sent) - answered,
        "answer_p50_s": round(statistics.median(latencies), 3), "answer_p95_s": round(pct(latencies, 95), 3),
        "answer_max_s": round(max(latencies), 3),
        "reload_s": round(reload_s, 2), "rss_before_reload_mib": round(rss_before, 1),
        "rss_after_reload_mib": round(rss_after, 1), "index_before": v1, "index_after": v2,
        "violations": len(emu.violations),
    }
    print(f"{len(sent)} mentions sent in {burst_s:.3f}s; acked {len(acks)}/{len(sent)}, "
          f"max ack {max(acks) * 1000:.0f} ms (limit 3000 ms) -> {'OK' if max(acks) < 3 else 'FAIL'}")
    print(f"answered {answered}/{len(sent)}; event -> answer posted: p50 {figures['answer_p50_s']:.2f}s, "
          f"p95 {figures['answer_p95_s']:.2f}s (target < 2 s) -> {'OK' if figures['answer_p95_s'] < 2 else 'MISS'}, "
          f"max {figures['answer_max_s']:.2f}s")
    print(f"reload {v1} -> {v2} in {reload_s:.1f}s; RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
          f"({rss_after - rss_before:+.0f} MiB)")
    if emu.violations:
        print("Slack limit violations:", emu.violations[:5])
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
