"""The keyword tokenizer's time on a corpus and on 40,000-character pasted messages, and what such a
message is searched with.

    python tests/bench/bench_keyword.py [--store DIR] [--limit 4000]

Tokenises every chunk text of the store's LATEST version (`chunks.jsonl.gz`; the default is the eval
store a `flytegpt ingest --config ../shared/eval/flytegpt.eval.toml` wrote to /tmp/eval-store), best
of five with the expansion cache cleared each time: the cost of a keyword index build without its
token cache. Then, for pathological messages of Slack's 40,000 characters (one long run, dotted and
underscored runs, a trace whose error was cut off), the CPU time of `tokenize`, `names_exact_term`
(what a search reads a query with) and `search_text`, and the length of what is searched (before
that was bounded, one run took 2.9 s in `names_exact_term`, and a paste with nothing recognisable was searched whole).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flytegpt.bot.pasted import search_text  # noqa: E402
from flytegpt.ingest import keyword  # noqa: E402

N = 40_000


def fill(unit: str, n: int = N) -> str:
    return (unit * (n // len(unit) + 1))[:n]


FRAME = ('  File "/usr/local/lib/python3.10/site-packages/flytekit/core/base_task.py", line 572, '
         'in dispatch_execute\n    native_outputs = self.execute(**native_inputs)\n')
MESSAGES = {
    "Traceback + one 40k run": ("Traceback (most recent call last): " + "x" * N)[:N],
    "40k camelCase run": fill("aB"),
    "40k dotted run a.a.": fill("a."),
    "40k dotted run ab.ab.": fill("ab."),
    "40k snake run a_a_": fill("a_"),
    "40k kebab/path run": fill("aa-bb/"),
    "40k digits then a.": "1" * (N - 2) + "a.",
    "40k --a--a flags": fill("--a"),
    "40k words": fill("cache task "),
    "trace, error cut off": ("```\nTraceback (most recent call last):\n" + fill(FRAME, 2 * N))[:N],
}


def cpu(fn, *args) -> tuple[float, object]:
    start = time.process_time()
    out = fn(*args)
    return time.process_time() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="/tmp/eval-store", help="an index store with a LATEST version")
    ap.add_argument("--limit", type=int, default=4000, help="[answer] max_question_chars")
    args = ap.parse_args()

    store = Path(args.store)
    if (store / "LATEST").exists():
        version = (store / "LATEST").read_text().strip()
        with gzip.open(store / version / "chunks.jsonl.gz", "rt", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        best = float("inf")
        for _ in range(5):
            keyword._expand_cached.cache_clear()
            best = min(best, cpu(keyword.tokenize_many, texts)[0])
        exact = min(cpu(lambda: [keyword.names_exact_term(t) for t in texts])[0] for _ in range(3))
        print(f"corpus {version}: {len(texts)} chunks, {sum(map(len, texts)):,} chars; tokenize_many "
              f"{best:.3f} s, names_exact_term over every chunk {exact:.3f} s (CPU, best of 5 / 3)")
    else:
        print(f"no LATEST in {store}: corpus timing skipped")

    print(f"{'message (40,000 chars)':26} {'tokenize':>9} {'exact':>9} {'search_text':>12} {'searched':>9}")
    for name, text in MESSAGES.items():
        t_tok, _ = cpu(keyword.tokenize, text)
        t_exact, _ = cpu(keyword.names_exact_term, text)
        t_search, searched = cpu(search_text, text.strip(), args.limit)
        print(f"{name:26} {t_tok:8.3f}s {t_exact:8.3f}s {t_search:11.3f}s {len(searched):9,}")


if __name__ == "__main__":
    main()
