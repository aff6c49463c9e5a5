"""The weekly maintainers' report as a Flyte task: a Deck in the Flyte UI and an HTML page in the store.

`weekly_report` reads the bot's question log and the index store and renders the same
content as `flytegpt report`: questions per day by outcome and surface, knowledge-gap
topics, most/least/never cited sources, the index over time, answer latency.

How the database reaches the task: the bot's SQLite file lives on the bot's volume, which
a Flyte pod cannot mount. The bot's side exports a consistent copy with
`flytegpt feedback snapshot --db <feedback_db>` (SQLite's online backup; e.g. a daily
cron in the bot's pod) to `[bot] feedback_snapshot` (an s3:// or gs:// URL), and this task
reads that URL, or the `db` input when it is given.

Run locally:
    python -m flytegpt.flyte report_wf --config_path ingest/sample/flytegpt.toml \\
        --store /tmp/store --db .flytegpt/feedback.sqlite3 --since 7d
"""

from __future__ import annotations

import logging
import os

from flytekit import CronSchedule, Deck, LaunchPlan, task, workflow

from flytegpt.flyte import deploy, resources
from flytegpt.flyte.handoff import load_task_config
from flytegpt.flyte.image import IMAGE
from flytegpt.flyte.task_logs import task_logging

log = logging.getLogger(__name__)

REPORTS_DIR = "reports"  # <store>/reports/<end date>.html and latest.html, beside the index versions
DECK_NAME = "FlyteGPT report"
# The launch plan's fixed inputs, set when the workflow is registered (see README); the config and
# the store are flyte/deploy.py's.
REPORT_DB = os.environ.get("FLYTEGPT_REPORT_DB", "")  # empty: [bot] feedback_snapshot of the config
REPORT_CRON = os.environ.get("FLYTEGPT_REPORT_CRON", "0 6 * * 1")  # Mondays, 06:00 UTC


def write_to_store(store: str, html: str, end_day: str) -> str:
    """The page as `<store>/reports/<end day>.html` and `latest.html`; returns the dated one."""
    from flytegpt.ingest.store import atomic_write, get_fs, join

    fs, root = get_fs(store)
    data = html.encode("utf-8")
    dated = join(root, REPORTS_DIR, f"{end_day}.html")
    atomic_write(fs, dated, data)
    atomic_write(fs, join(root, REPORTS_DIR, "latest.html"), data)
    return dated if "://" not in store else f"{store.rstrip('/')}/{REPORTS_DIR}/{end_day}.html"


@task(container_image=IMAGE, requests=resources.ANSWER, enable_deck=True, retries=1,
      timeout=resources.REPORT_TIMEOUT)
def weekly_report(config_path: str, store: str, db: str, since: str) -> str:
    """Render the report for the last `since` (7d, 30d ...) as a Deck and into the store; returns its path."""
    task_logging()
    from flytegpt.bot.report import ReportOptions, build_report, render_body, render_page

    config = load_task_config(config_path, store)
    deploy.check_store(config.index.store)  # the schedules' placeholder: refused, never written to
    from_config = not db
    db = db or (config.bot.feedback_snapshot or "")
    if not db:
        raise ValueError("no feedback database: pass `db` or set [bot] feedback_snapshot in the config "
                         "(where `flytegpt feedback snapshot` writes the bot's database)")
    try:
        report = build_report(db, store=config.index.store, options=ReportOptions.from_config(config, since=since),
                              config=config)
    except FileNotFoundError as e:
        if not from_config:
            raise
        # The bot copies its database to [bot] feedback_snapshot of *its* config (the ConfigMap);
        # this task reads the setting from the registered config: two files that must agree.
        raise FileNotFoundError(f"{e}. It is [bot] feedback_snapshot of {config_path}; the bot writes its "
                                "snapshot to [bot] feedback_snapshot of its own config (its ConfigMap): both must "
                                "name the same place, and the bot must have run for feedback_snapshot_interval_h "
                                "since it was set") from None
    Deck(DECK_NAME, render_body(report))
    path = write_to_store(config.index.store, render_page(report), report.end)
    log.info("report of %d questions (%s to %s) written to %s", report.totals["questions"], report.start,
             report.end, path)
    return path


@workflow
def report_wf(config_path: str = deploy.CONFIG, store: str = deploy.STORE, db: str = REPORT_DB, since: str = "7d") -> str:
    """The maintainers' report of the last `since`, as a Flyte Deck and an HTML page in the store."""
    return weekly_report(config_path=config_path, store=store, db=db, since=since)


weekly_report_lp = LaunchPlan.get_or_create(
    workflow=report_wf,
    name="weekly_report",
    schedule=CronSchedule(schedule=REPORT_CRON),
    fixed_inputs={"config_path": deploy.CONFIG, "store": deploy.SCHEDULE_STORE, "db": REPORT_DB, "since": "7d"},
    notifications=deploy.notifications(),  # FLYTEGPT_NOTIFY, as the nightly ingest
)
