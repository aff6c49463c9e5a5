"""Feedback retention: the text of old questions removed from the question log, as [bot] retention_days says.

Why a module of its own: feedback.py is the database (its schema, what the bot writes, what the
commands read); this is the policy the running bot applies to it, when and how far, and what it
tells the operator. The store's own steps (`FeedbackStore.prune`, `give_back_space`, `compact`) run
on its connection under its lock and stay there; this module decides when they run.

Retention ([bot] retention_days): the text of a question older than that (what was
asked, the question as searched, the answer) is blanked by `FeedbackStore.prune`, which the running
bot applies at start and then daily (`RetentionJob`). What the report counts and charts stays: time,
surface, channel and its type, outcome, latency, index version, cited sources and votes. The file is
only readable by the bot's user (bot/sqlite_files.py).

Retention on an upgrade: a database from a release without retention holds history
its operator never agreed to lose. The first time the retention job finds text to remove in a
database that retention has never pruned (and that this release did not create: all of such a
database's rows were logged under retention), it removes nothing: it logs a WARNING saying how many
questions, since when, the setting and how to keep them, records the moment in `meta`, and prunes
only after RETENTION_GRACE_S (7 days) from then, warning at every run meanwhile (`retention_hold`).
Later prunes run as before. A clock that was wrong when the moment was recorded does not use the
wait up: a moment later than now, or a last warning run more than the whole wait ago,
starts it again.

Retention on a large backlog: the prune walks the old rows once, in time order,
in short transactions with a pause after each, so the bot's own writes get the lock in between;
and it gives the space back. A new database is created with SQLite's incremental auto_vacuum,
and after a prune that left many free pages they are returned to the filesystem in small steps.
A database from an earlier release (auto_vacuum off) is switched by one VACUUM when the bot
starts, before it serves, if it is small enough to be rewritten in seconds (`RetentionJob.start`);
a bigger one by `flytegpt feedback compact` with the bot stopped (`feedback.compact_database`).
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

# The module, not its names: COMPACT_AT_START_MAX_BYTES is read from its owner when the job starts.
from . import feedback

# feedback's logger, as before these lines moved here: log filters, levels and the tests that read
# the retention job's lines keep the name they know
log = logging.getLogger("flytegpt.bot.slack.feedback")

# How long retention's own connection waits for the lock: longer than the bot's writers (5 s), so
# that when both wait it is the prune that gives way, and a busy moment does not abort it.
PRUNE_TIMEOUT_S = 30.0
# How long the first prune of a database retention has never pruned waits after the job first found
# text to remove in it: the warning's time to be read, and retention_days set to 0.
RETENTION_GRACE_S = 7 * feedback.DAY_S
# `meta` keys: when the retention job first found text to remove in a database it had never pruned;
# the last run of the job that held that first prune back (and warned), so a wrong clock cannot
# use the wait up.
META_RETENTION_PENDING_SINCE = "retention_pending_since"
META_RETENTION_CHECKED_AT = "retention_checked_at"


@dataclass(frozen=True)
class RetentionHold:
    """Text retention would remove from a database it never pruned, kept until `prune_after`:
    what the retention job's warning says."""

    rows: int  # questions older than retention_days that still have their text
    oldest: float  # when the oldest of them was logged
    newest: float  # and the newest
    retention_days: float
    pending_since: float  # when the job first found them
    prune_after: float  # pending_since + the grace period


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def _day(t: float) -> str:
    """A moment as an operator reads it in a log line: 2026-12-12 11:05 UTC."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _float_or_none(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:  # not a number: as if unset
        return None


def retention_hold(store: "feedback.FeedbackStore", retention_days: float, *, now: float | None = None,
                   grace_s: float = RETENTION_GRACE_S) -> RetentionHold | None:
    """Whether the first prune of `store`'s database must wait; None: prune as usual.

    It waits when retention has never removed text there, this release did not create the
    database (an earlier release's history, logged before retention existed), and there is text
    to remove: from the first time that is found (recorded in `meta`, so a restart does not
    start the wait again) until `grace_s` later. A database this release created, or one
    retention already pruned, never waits; nor does one with nothing old enough yet, until it has.

    A wrong clock must not use the wait up. Each run that waits records its time.
    The wait starts again from now when the moment recorded is later than now (the clock was
    ahead then, or was set back since), and when the last run that waited is more than `grace_s`
    ago: a clock that was behind and has been corrected, or a bot that was stopped for longer than
    the whole wait; either way no one has been warned for the grace period since that run, so the
    first run after such a jump never prunes. A clock behind by less than `grace_s` shortens the
    wait by at most its error.
    """
    if not retention_days or retention_days <= 0:
        return None
    now = time.time() if now is None else now
    if store.meta(feedback.META_CREATED_AT) or store.meta(feedback.META_RETENTION_FIRST_PRUNED_AT):
        return None
    rows, oldest, newest = store.text_older_than(now - retention_days * feedback.DAY_S)
    if not rows:
        return None
    since = _float_or_none(store.meta(META_RETENTION_PENDING_SINCE))
    # a database a release of 26e9b24 held has no record of its runs: its first is the last
    checked = _float_or_none(store.meta(META_RETENTION_CHECKED_AT))
    checked = since if checked is None else checked
    if since is None or since > now or (checked is not None and now - checked > grace_s):
        since = now
    store.set_meta({META_RETENTION_PENDING_SINCE: since, META_RETENTION_CHECKED_AT: now})
    if now >= since + grace_s:
        return None
    return RetentionHold(int(rows), float(oldest), float(newest), retention_days, since, since + grace_s)


def prune_database(db_path: str | Path, retention_days: float, *, now: float | None = None,
                   progress: feedback.PruneProgress | None = None, stop: threading.Event | None = None,
                   grace_s: float | None = None) -> int:
    """`FeedbackStore.prune` on an existing database file, then the freed space given back
    (`give_back_space`); how many rows lost their text, 0 when there is no file (yet) or retention
    is off. Its own connection, more patient for the lock than the bot's (PRUNE_TIMEOUT_S);
    `progress` resumes a walk and records the work; `stop` ends it between two steps.

    `grace_s` (the retention job's): a database retention never pruned is left alone until that long
    after its old text was first found (`retention_hold`); then `progress.held` says what waits,
    and 0 rows lost their text. None: prune now (a caller that chose to)."""
    if not retention_days or str(db_path) == ":memory:" or not Path(db_path).is_file():
        return 0
    progress = progress if progress is not None else feedback.PruneProgress()
    store = feedback.FeedbackStore(db_path, timeout_s=PRUNE_TIMEOUT_S)
    try:
        if grace_s is not None:
            progress.held = retention_hold(store, retention_days, now=now, grace_s=grace_s)
            if progress.held is not None:
                return 0
        n = store.prune(retention_days, now=now, progress=progress, stop=stop)
        if not (stop is not None and stop.is_set()):
            progress.given_back += store.give_back_space(stop=stop)
        return n
    finally:
        store.close()


class RetentionJob:
    """The running bot's retention: `prune_database` at start, then every `interval_s` (a day),
    on an apscheduler job as the index reloader polls (bot/reload.py).

    Its own connection: the bot's writes get the lock between its short transactions, and a
    failure (a locked or damaged file) is logged and tried again at the next run, never raised.
    It remembers how far the walk got (PruneProgress.cursor) while the file stays the same file,
    so a daily run reads only the rows that aged past retention since the last one. `stop()`
    ends a run in progress between two steps (a shutdown does not wait for a long prune).

    A database from a release without retention is not pruned at once: the first run
    that finds text to remove in it logs a WARNING and the job waits `grace_s` (RETENTION_GRACE_S)
    before its first prune (`retention_hold`). `clock`: the time the job runs at.
    """

    def __init__(self, db_path: str | Path, retention_days: float, *, interval_s: float = feedback.DAY_S,
                 grace_s: float = RETENTION_GRACE_S, clock: Callable[[], float] = time.time) -> None:
        self.db_path, self.retention_days, self.interval_s = str(db_path), retention_days, interval_s
        self.grace_s, self._clock = grace_s, clock
        self._scheduler: Any = None
        self._stop = threading.Event()
        self._cursor: tuple[float, int] | None = None
        self._file: tuple[int, int] | None = None
        self.last_run: feedback.PruneProgress | None = None  # the work the last run did

    @property
    def enabled(self) -> bool:
        return bool(self.retention_days) and self.db_path != ":memory:"

    def run_once(self) -> int | None:
        """Prune now: how many rows lost their text, None (logged) when it failed."""
        progress = feedback.PruneProgress(cursor=self._resume_from())
        try:
            n = prune_database(self.db_path, self.retention_days, now=self._clock(), progress=progress,
                               stop=self._stop, grace_s=self.grace_s)
        except Exception as e:  # noqa: BLE001 - retention must never stop the bot
            log.error("feedback retention failed", extra={"path": self.db_path, "error": str(e)})
            return None
        finally:  # rows up to the cursor have no text, even when a later step failed
            self._cursor, self.last_run = progress.cursor, progress
        if progress.held is not None:
            self._warn_held(progress.held)
        if n or progress.given_back:
            log.info("feedback retention: question text removed",
                     extra={"rows": n, "retention_days": self.retention_days, "rows_read": progress.visited,
                            "transactions": progress.writes, "mb_given_back": round(progress.given_back / 2**20, 1)})
        return n

    def _warn_held(self, held: RetentionHold) -> None:
        """The warning of a first prune that waits: before anything is removed, at every run until then."""
        days = f"{held.retention_days:g}"
        log.warning(
            f"feedback retention: {held.rows:,} question(s) in {self.db_path}, logged from {_day(held.oldest)} to "
            f"{_day(held.newest)}, are older than [bot] retention_days = {days}, and retention has never pruned this "
            "database (its history comes from a release without retention). Nothing is removed before "
            f"{_day(held.prune_after)}; from then on their text is. Set [bot] retention_days = 0 to keep them "
            "(a backup first: flytegpt feedback snapshot)",
            extra={"path": self.db_path, "rows": held.rows, "oldest": _iso(held.oldest), "newest": _iso(held.newest),
                   "retention_days": held.retention_days, "pending_since": _iso(held.pending_since),
                   "prune_after": _iso(held.prune_after)})

    def _resume_from(self) -> tuple[float, int] | None:
        """Where the last walk ended, if the path still names the file it walked (a file deleted,
        replaced or restored from a backup is walked from the start)."""
        try:
            st = os.stat(self.db_path)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            identity = None
        if identity != self._file:
            self._file, self._cursor = identity, None
        return self._cursor

    def compact_at_start(self) -> bool:
        """Switch a database of an earlier release (auto_vacuum off: its file never shrinks) to
        incremental auto_vacuum with one VACUUM, when the file is at most feedback.COMPACT_AT_START_MAX_BYTES;
        True when it did. Runs in `start()`, before the bot serves: a VACUUM locks the file for as
        long as it takes, and nothing of the bot writes yet. A bigger file is left as it is (its
        freed pages are reused by later rows), with a warning saying how to switch it with the bot
        stopped. A failure (another process holding the file, no room for the copy) is logged."""
        if not self.enabled or not Path(self.db_path).is_file():
            return False
        try:
            store = feedback.FeedbackStore(self.db_path)
            try:
                if store.auto_vacuum != "none":
                    return False
                size = os.path.getsize(self.db_path)
                if size > feedback.COMPACT_AT_START_MAX_BYTES:
                    log.warning(
                        "the feedback database file never gives space back (made by an earlier release) and is "
                        "too big to switch at start; with the bot stopped, run: flytegpt feedback compact --db "
                        f"{shlex.quote(self.db_path)}", extra={"path": self.db_path, "mb": round(size / 2**20, 1)})
                    return False
                t0 = time.monotonic()
                before, after = store.compact()
            finally:
                store.close()
        except Exception as e:  # noqa: BLE001 - the bot starts all the same
            log.warning("feedback database not switched to incremental auto_vacuum",
                        extra={"path": self.db_path, "error": str(e)})
            return False
        log.info("feedback database switched to incremental auto_vacuum (one VACUUM at start)",
                 extra={"path": self.db_path, "mb_before": round(before / 2**20, 1),
                        "mb_after": round(after / 2**20, 1), "seconds": round(time.monotonic() - t0, 2)})
        return True

    def start(self) -> None:
        """Compact an earlier release's file (`compact_at_start`, before returning: call it before
        the bot serves), then prune now and every `interval_s` in the background."""
        if not self.enabled or self._scheduler is not None:
            return
        from apscheduler.schedulers.background import BackgroundScheduler

        self.compact_at_start()
        self._stop.clear()
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self.run_once, "interval", seconds=self.interval_s, id="flytegpt-retention",
                                max_instances=1, coalesce=True, next_run_time=datetime.now())
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._stop.set()  # a run in progress ends after its current step
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
