"""Where the benchmarks find the evaluation corpus, and one clear line when it is not there.

The corpus (real Flyte docs, a Slack-format export of public Flyte Q&A, `eval/dev.jsonl` and
`eval/flytegpt.eval.toml`) is not part of this repository: the maintainers keep it beside the
checkout as `../shared`. Without it a benchmark is pointed at another corpus with `--config`
(and `--questions`), or it stops here instead of in a traceback from deep inside an ingest.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def require(*paths: str | Path) -> None:
    """Exit with one line naming the first of `paths` that does not exist."""
    for path in paths:
        if not Path(path).exists():
            hint = (" (the evaluation corpus is not part of this repository: it is kept beside the checkout "
                    "as ../shared; pass --config YOUR.toml, and --questions YOUR.jsonl where the benchmark "
                    "takes questions, to measure your own corpus)") if SHARED in Path(path).resolve().parents else ""
            sys.exit(f"Error: {path} not found{hint}")
