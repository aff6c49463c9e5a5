"""Bulk Q&A bookkeeping: does answering N questions with W workers take N x (answer time) / W?

    python tests/bench/bench_bulk.py [--sizes 1000,8000,32000] [--workers 4] [--answer-ms 1]

`answer_many` (flyte/bulk_qa_wf.py's engine) runs each question through a stand-in answerer that
sleeps `--answer-ms` (a chat model is remote: the task mostly waits). The baseline, in the same
run, is the ideal N x answer time / W; the target is to stay within 1.25x of it at every size, so
the pool's own bookkeeping never grows faster than the work (submitting every question at once
and waiting on all their futures did not: 5.7x the ideal at 8,000 questions, 11.9x at 32,000).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from types import SimpleNamespace

from flytegpt.bot.answering.bulk import answer_many

TARGET_RATIO = 1.25


class SleepingAnswerer:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def answer(self, question: str) -> SimpleNamespace:
        time.sleep(self.seconds)
        return SimpleNamespace(text=f"answer to {question}", mode="llm", citations=[], index_version="bench")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,8000,32000")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--answer-ms", type=float, default=1.0)
    args = ap.parse_args()
    answerer = SleepingAnswerer(args.answer_ms / 1000)
    print(f"CPU: {cpu_name()}; workers={args.workers}; stand-in answer {args.answer_ms:g} ms")
    ok = True
    for n in (int(s) for s in args.sizes.split(",")):
        questions = [f"question {i}" for i in range(n)]
        start = time.perf_counter()
        results = answer_many(answerer, questions, workers=args.workers)
        took = time.perf_counter() - start
        assert [r["question"] for r in results] == questions
        ideal = n * answerer.seconds / args.workers
        ratio = took / ideal
        met = ratio <= TARGET_RATIO
        ok &= met
        print(f"{n:>7} questions: {took:7.2f} s; ideal {ideal:6.2f} s; {ratio:.2f}x "
              f"(target <= {TARGET_RATIO}x) -> {'OK' if met else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
