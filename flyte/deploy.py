"""What registration fixes: the config and the store every workflow defaults to and the schedules use.

Read from the environment when `pyflyte ... package` (or `register`) imports the workflows; see
README "Run it on Flyte":
  FLYTEGPT_CONFIG  the FlyteGPT TOML the tasks read: a path relative to the checkout's root (the
                   checkout is copied into the image, to the tasks' working directory) or an fsspec
                   URL. Default: the bundled sample.
  FLYTEGPT_STORE   the index store, a bucket URL on a cluster. Default: the config's [index] store
                   for a launch by hand, a placeholder bucket in the schedules.

One place for all three workflows, so a launch by hand with the defaults (the UI's "Launch",
`flytectl get launchplan ... --execFile`) reads the same config and store as the nightly run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flytegpt.flyte.image import KEPT_SAMPLE, REMOVED_AFTER_INSTALL, REPO_ROOT, is_checkout

SAMPLE_CONFIG = f"{KEPT_SAMPLE}/flytegpt.toml"
PLACEHOLDER_STORE = "s3://my-flytegpt-bucket/flytegpt/store"

CONFIG = os.environ.get("FLYTEGPT_CONFIG") or SAMPLE_CONFIG
STORE = os.environ.get("FLYTEGPT_STORE", "")
SCHEDULE_STORE = STORE or PLACEHOLDER_STORE


def config_problem(config: str, root: Path | None = None) -> str | None:
    """Why the tasks would not find `config` in the image, or None.

    Registration succeeds whatever the path says; without this the first sign of a typo is a
    failed `collect` at 03:00. A relative path must be a file of the checkout and must survive the
    image's clean-up (flyte/image.py removes the source folders but ingest/sample after install).
    """
    if "://" in config or Path(config).is_absolute():
        return None  # a bucket URL, or a file the operator put into the image: not ours to check
    root = root or (REPO_ROOT if is_checkout() else Path.cwd())
    parts = Path(config).parts
    if parts and (parts[0] in REMOVED_AFTER_INSTALL
                  or (parts[0] == "ingest" and Path(*parts[:2]) != Path(KEPT_SAMPLE))):
        return (f"FLYTEGPT_CONFIG={config}: the task image removes {parts[0]}/ after installing the project "
                f"(flyte/image.py), so the tasks would not find it; put the config in a folder of its own "
                f"(e.g. deploy/flytegpt.toml) or in the bucket (an s3:// URL)")
    if not (root / config).is_file():
        return (f"FLYTEGPT_CONFIG={config} is not a file in {root}: the tasks read it from the image's copy "
                f"of this checkout, so the scheduled runs would fail with 'config file not found'")
    return None


def warn_about_config() -> None:
    """Say so on stderr at registration (a warning, not an error: importing must still work)."""
    if "FLYTEGPT_CONFIG" in os.environ and (problem := config_problem(CONFIG)):
        print(f"warning: {problem}", file=sys.stderr)


warn_about_config()
