"""What registration fixes: the config and the store every workflow defaults to and the schedules use.

Read from the environment when `pyflyte ... package` (or `register`) imports the workflows; see
README "Run it on Flyte":
  FLYTEGPT_CONFIG  the FlyteGPT TOML the tasks read: a path relative to the checkout's root (the
                   checkout is copied into the image, to the tasks' working directory) or an fsspec
                   URL. Default: the bundled sample.
  FLYTEGPT_STORE   the index store, a bucket URL on a cluster. Default: the config's [index] store
                   for a launch by hand; in the schedules a placeholder bucket, which the tasks refuse
                   to run against (`check_store`), and packaging warns that it is unset.
  FLYTEGPT_NOTIFY  who hears of a scheduled run that FAILED, TIMED_OUT or was ABORTED: entries
                   `kind:address,address` separated by ";", kind one of email, slack, pagerduty
                   (Flyte sends all three as e-mail: Slack's and PagerDuty's are their integration
                   addresses), e.g. "email:oncall@example.org;slack:alerts-x1y2@myorg.slack.com".
                   Default: no notifications. Needs notifications set up in FlyteAdmin.

One place for all three workflows, so a launch by hand with the defaults (the UI's "Launch",
`flytectl get launchplan ... --execFile`) reads the same config and store as the nightly run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flytekit.core.notification import Email, Notification, PagerDuty, Slack
from flytekit.models.core.execution import WorkflowExecutionPhase

from flytegpt.flyte.image import KEPT_SAMPLE, REMOVED_AFTER_INSTALL, REPO_ROOT, git_tracked, is_checkout

SAMPLE_CONFIG = f"{KEPT_SAMPLE}/flytegpt.toml"
PLACEHOLDER_STORE = "s3://my-flytegpt-bucket/flytegpt/store"

CONFIG = os.environ.get("FLYTEGPT_CONFIG") or SAMPLE_CONFIG
STORE = os.environ.get("FLYTEGPT_STORE", "")
SCHEDULE_STORE = STORE or PLACEHOLDER_STORE
NOTIFY = os.environ.get("FLYTEGPT_NOTIFY", "")
NOTIFY_PHASES = [WorkflowExecutionPhase.FAILED, WorkflowExecutionPhase.TIMED_OUT, WorkflowExecutionPhase.ABORTED]
_NOTIFICATION_KINDS: dict[str, type[Notification]] = {"email": Email, "slack": Slack, "pagerduty": PagerDuty}


def check_store(store: str) -> None:
    """Refuse the schedules' placeholder store: a task must never write the corpus to a bucket that
    is only an example (anyone may own `my-flytegpt-bucket`). ConfigError, so Flyte does not retry."""
    from flytegpt.ingest.config import ConfigError

    if store.rstrip("/") == PLACEHOLDER_STORE:
        raise ConfigError(f"the index store is the placeholder {PLACEHOLDER_STORE}: FLYTEGPT_STORE was not set when "
                          "the workflows were registered. Set FLYTEGPT_STORE to your bucket (s3://.../flytegpt/store) "
                          "and register again, or launch with the `store` input set")


def notifications(spec: str | None = None) -> list[Notification]:
    """The scheduled launch plans' notifications from FLYTEGPT_NOTIFY (see above); [] when unset.

    A malformed value is a ValueError when the workflows are imported: a typo must fail the
    registration, not silence the alerts it was meant to set up.
    """
    spec = NOTIFY if spec is None else spec
    found: list[Notification] = []
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        kind, _, addresses = entry.partition(":")
        recipients = [a.strip() for a in addresses.split(",") if a.strip()]
        cls = _NOTIFICATION_KINDS.get(kind.strip().lower())
        if cls is None or not recipients or not all("@" in a for a in recipients):
            raise ValueError(f"FLYTEGPT_NOTIFY entry {entry!r}: expected kind:address[,address...] with kind one of "
                             f"{', '.join(_NOTIFICATION_KINDS)} and e-mail addresses, entries separated by ';'")
        found.append(cls(phases=NOTIFY_PHASES, recipients_email=recipients))
    return found


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
    tracked = git_tracked(root)
    if tracked is not None and Path(config).as_posix() not in tracked:
        return (f"FLYTEGPT_CONFIG={config} is not committed: the task image copies the checkout's tracked files "
                f"only (flyte/image.py), so the scheduled runs would not find it; `git add` it")
    return None


def registering() -> bool:
    """Are the workflows being imported by `pyflyte package` or `register`? flytekit loads them
    inside a context with serialization settings; a task's container has those too, but runs a task."""
    from flytekit import FlyteContextManager

    ctx = FlyteContextManager.current_context()
    state = ctx.execution_state
    return ctx.serialization_settings is not None and (state is None or state.mode is None)


def registration_warnings() -> list[str]:
    """What the registered entities would get wrong because a registration-time variable is unset."""
    problems = []
    if not STORE:
        problems.append(f"FLYTEGPT_STORE is not set: the schedules get the placeholder store {PLACEHOLDER_STORE}, "
                        "which their runs refuse; set it to your bucket (s3://.../flytegpt/store)")
    if not os.environ.get("FLYTEGPT_IMAGE_REGISTRY"):
        from flytegpt.flyte.image import REGISTRY

        problems.append(f"FLYTEGPT_IMAGE_REGISTRY is not set: the tasks' image is {REGISTRY}/..., the Flyte "
                        "sandbox's registry; a cluster elsewhere cannot pull it")
    if not os.environ.get("FLYTEGPT_NOTIFY", "").strip():
        problems.append("FLYTEGPT_NOTIFY is not set: a failed scheduled run is seen only in the Flyte console; "
                        "set it (e.g. email:oncall@example.org) for failure notifications")
    from flytegpt.flyte.image import IMAGE, built_images_file, untracked_code, was_built

    # pyflyte package never builds an image: it registers the tag the committed code gives, built or
    # not. One never pushed fails the 03:00 run with ImagePullBackOff, hours after the deploy.
    if not was_built(name := IMAGE.image_name()):
        problems.append(f"the task image {name} was not built from this code on this machine "
                        "(python -m flytegpt.flyte.image, which records it in "
                        f"{built_images_file()}): unless CI built and pushed it, the scheduled runs "
                        "will fail to pull it")

    if untracked := untracked_code():
        problems.append(f"not in the task image (the image copies tracked files only): {', '.join(untracked[:10])}"
                        + (f" and {len(untracked) - 10} more" if len(untracked) > 10 else "")
                        + "; `git add` what the tasks need")
    return problems


def warn_about_config() -> None:
    """Say so on stderr at registration (a warning, not an error: importing must still work).

    The store and the registry only when packaging or registering: a local run needs neither.
    """
    problems = [problem] if "FLYTEGPT_CONFIG" in os.environ and (problem := config_problem(CONFIG)) else []
    if registering():
        problems += registration_warnings()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)


warn_about_config()
