"""Retention on a large backlog: how long `prune_database` (what the bot's
RetentionJob runs at start and daily) takes, what happens to the bot's own writes meanwhile, and
whether the file gives its space back.

    python tests/bench/bench_retention.py [--rows 40000,160000] [--new 1000] [--dir /tmp]

For each size: a fresh feedback database with that many questions older than a year (~2 KB of
text each: a long question and its answer) plus `--new` recent ones; then the prune with a writer beside
it that stores a question every 0.2 s through its own FeedbackStore (the running bot's 5 s busy
timeout), as the bot's `record_answer`. Prints one JSON line per size: the prune's seconds, the
writer's inserts, failures ("database is locked") and longest wait, the file's MB before and
after, and the next day's prune (nothing left to blank).

It only uses what every release has (FeedbackStore, prune_database), so the same file measures an
older checkout: run it with that checkout's interpreter (e.g. a clone at e4f519a, before the prune was batched) for
the "before" figures. Takes minutes at 160,000 rows on the old code (and ~650 MB of disk).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from flytegpt.bot.slack.feedback import DAY_S, FeedbackStore

try:
    from flytegpt.bot.slack.retention import prune_database
except ImportError:  # an older checkout (the "before" figures): prune_database was in feedback.py
    from flytegpt.bot.slack.feedback import prune_database

QUESTION = "How do I cache a task? " * 20
ANSWER = "Bump cache_version in the task decorator [1]. " * 25


class _Answer:
    question, text, citations, mode, index_version = "q", "a", [], "llm", "v"


def _make(path: Path, n_old: int, n_new: int) -> None:
    for suffix in ("", "-journal"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
    FeedbackStore(path).close()  # created as this release creates it
    conn = sqlite3.connect(path)
    now = time.time()
    conn.executemany(
        "INSERT INTO answers (id, created_at, surface, channel, thread_ts, user, question, standalone_question, "
        "answer, sources, index_version, mode, outcome) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(f"id{i}", now - (400 if i < n_old else 10) * DAY_S + i, "mention", "C1", "1.1", "U1", QUESTION, QUESTION,
          ANSWER, "[]", "v1", "llm", "answered") for i in range(n_old + n_new)])
    conn.commit()
    conn.close()


def run(path: Path, n_old: int, n_new: int) -> dict[str, object]:
    """One size: the figures as a dict."""
    _make(path, n_old, n_new)
    size0 = os.path.getsize(path)
    writer_store = FeedbackStore(path)  # open before the prune starts, as the running bot's is
    waits: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                writer_store.record_answer(_Answer(), surface="mention")
                waits.append(time.monotonic() - t0)
            except sqlite3.Error as e:
                errors.append(str(e))
            stop.wait(0.2)

    thread = threading.Thread(target=writer)
    thread.start()
    t0 = time.monotonic()
    blanked = prune_database(path, 365)
    took = time.monotonic() - t0
    stop.set()
    thread.join()
    writer_store.close()
    t1 = time.monotonic()
    prune_database(path, 365)
    next_day = time.monotonic() - t1
    return {"old_rows": n_old, "new_rows": n_new, "blanked": blanked, "prune_s": round(took, 1),
            "next_day_prune_s": round(next_day, 2), "db_mb_before": round(size0 / 2**20, 1),
            "db_mb_after": round(os.path.getsize(path) / 2**20, 1), "writer_inserts": len(waits),
            "writer_errors": len(errors), "writer_max_wait_s": round(max(waits), 2) if waits else None,
            "first_error": errors[0] if errors else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="40000,160000", help="old rows per run, comma-separated")
    ap.add_argument("--new", type=int, default=1000, help="recent rows (kept) per run")
    ap.add_argument("--dir", default=None, help="folder for the database (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-retention-", dir=args.dir) as tmp:
        for n in (int(x) for x in args.rows.split(",") if x.strip()):
            print(json.dumps(run(Path(tmp) / "feedback.sqlite3", n, args.new)), flush=True)


if __name__ == "__main__":
    main()
