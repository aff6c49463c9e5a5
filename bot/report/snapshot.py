"""The bot's side of the weekly report: a copy of its feedback database where Flyte can read it.

The bot's SQLite file lives on the bot's own volume; the weekly_report task runs in another
pod. When `[bot] feedback_snapshot` names a place (an s3:// or gs:// URL, or a shared
folder), the running bot copies its database there every `feedback_snapshot_interval_h`
hours with SQLite's online backup (a consistent copy while answers keep being written).
A failed copy is logged and retried at the next interval; it never touches answering.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flytegpt.ingest.config import Config

log = logging.getLogger(__name__)

FIRST_COPY_AFTER_S = 60  # the first copy waits until the bot is up and answering


class SnapshotJob:
    def __init__(self, config: "Config") -> None:
        self.db = config.bot.feedback_db
        self.target = config.bot.feedback_snapshot
        self.interval_h = config.bot.feedback_snapshot_interval_h
        self._scheduler = None

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    def run_once(self) -> bool:
        """Copy the database now; False (logged) when it failed."""
        from flytegpt.bot.slack.feedback import export_snapshot

        try:
            size = export_snapshot(self.db, self.target or "")
        except Exception as e:  # noqa: BLE001 - a missing bucket or a full disk must not stop the bot
            log.error("feedback snapshot failed", extra={"target": self.target, "error": str(e)})
            return False
        log.info("feedback snapshot written", extra={"target": self.target, "bytes": size})
        return True

    def start(self) -> None:
        if not self.enabled:
            return
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self.run_once, "interval", hours=self.interval_h, id="flytegpt-feedback-snapshot",
                                max_instances=1, coalesce=True,
                                next_run_time=datetime.now() + timedelta(seconds=FIRST_COPY_AFTER_S))
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
