"""Feedback and question log: which answers helped, and what the bot was asked.

Every question the bot handles is one row of `answers`, whatever became of it: answered
(with its text, cited sources and index version), not found, or failed (the model or
anything else). The row's short random id is what the 👍/👎 buttons carry (button values
are capped at 2,000 characters, and a payload in a button would be visible to any
client). A click records the vote with user, channel and time. One vote per user per
answer: a second click replaces the first, so changing your mind does not count twice.

The maintainers' report (flytegpt.bot.report) reads this database: outcome, surface,
latency, index version and cited sources of every question.

The schema is versioned with SQLite's `PRAGMA user_version`. Version 0 is the first
release's schema (no version set); opening a database applies the missing migrations in
one transaction, so an existing database keeps every row and gains the new columns.
A database written by a newer FlyteGPT is refused rather than guessed at. The migration is one
way: a release of an older schema refuses the file afterwards. So only the bot (and
`flytegpt feedback compact`, which changes the layout, not the schema) opens the original; the
commands that read it (`feedback export`, `questions`, `snapshot`, and the report) leave it exactly
as it was: the snapshot copies it as it is, from a read-only connection, and the
exports read a migrated temporary copy (`read_copy`).

A small `meta` table (key, value) keeps what the database must remember about itself: when this
release created it, and retention's state (retention.py). It is not counted in `user_version`: a
release of the same schema without it only checks the version and names its columns, so it still
opens the file; a release of an older schema refuses a version-2 file whatever its tables.

Retention ([bot] retention_days): the text of old questions is blanked by `prune`,
which the running bot's retention job applies (retention.py: when, and the grace period of an
earlier release's database). What the report counts and charts stays. A new database is created
with SQLite's incremental auto_vacuum, so that the space a prune frees can be given back
(`give_back_space`); an earlier release's file is switched by one VACUUM (`compact`: at start when
it is small, else `flytegpt feedback compact` with the bot stopped). The file is only readable by
the bot's user (bot/sqlite_files.py).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal

from flytegpt.bot import sqlite_files
from flytegpt.bot.question_text import clean_question
from flytegpt.ingest.models import valid_unicode

if TYPE_CHECKING:
    from .retention import RetentionHold

log = logging.getLogger(__name__)

Vote = Literal["up", "down"]
# What became of a question. "answered" includes the offline answerer's quoted passages.
Outcome = Literal["answered", "not_found", "model_failed", "failed"]
OUTCOMES: tuple[str, ...] = ("answered", "not_found", "model_failed", "failed")

SCHEMA_VERSION = 2

DAY_S = 86400.0
PRUNE_BATCH = 500  # rows read per step, and at most blanked per write transaction (~25 ms of work)
# The pause after each write transaction: at least as long as the transaction took, so the bot's
# writers, polling in SQLite's busy handler (sleeps of 1 ms growing to 100 ms, 5 s in all), find
# the lock free about half of the time instead of almost never (before the pause, 9 of 10 of the
# bot's question-log writes failed while a 160,000-row prune ran).
PRUNE_PAUSE_S = 0.01
# After a prune, free pages are returned to the filesystem when they are at least this share of
# the file and at least GIVE_BACK_MIN_BYTES: a day's prune frees about a day of text, which the
# next day's rows reuse; a backlog or a lowered retention_days frees much more.
GIVE_BACK_MIN_SHARE = 0.10
GIVE_BACK_MIN_BYTES = 1 << 20
# A database of an earlier release (auto_vacuum off) is switched to incremental by one VACUUM at
# start, before the bot serves, when its file is at most this big. A VACUUM reads the file and
# rewrites what it holds (a 636 MB file of pruned rows: 0.4 s here; a full one a few seconds on a
# local disk); a bigger one is left as it is, with a log line saying how to do it with the bot stopped.
COMPACT_AT_START_MAX_BYTES = 512 << 20
# How long `flytegpt feedback compact` waits for another connection's lock before it gives up with
# a clear error: nothing should hold one (the bot is stopped), so a lock means someone writes.
COMPACT_LOCK_TIMEOUT_S = 2.0
# How long the read-only commands (export, questions, snapshot) wait for another connection's write
# lock before they say the database is in use.
READ_LOCK_TIMEOUT_S = 5.0
# `meta` keys: when this release created the database; when retention first removed text (the
# retention job's own keys are in retention.py).
META_CREATED_AT = "created_at"
META_RETENTION_FIRST_PRUNED_AT = "retention_first_pruned_at"
_TEXT_COLUMNS = ("question", "standalone_question", "answer")
_HAS_TEXT = "(question != '' OR answer != '' OR standalone_question IS NOT NULL)"

# Version 0: the schema of the first release, created as it was then; migrations take it on.
_SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    surface TEXT,
    channel TEXT,
    thread_ts TEXT,
    user TEXT,
    question TEXT NOT NULL,
    standalone_question TEXT,
    answer TEXT NOT NULL,
    sources TEXT NOT NULL,
    index_version TEXT,
    mode TEXT
);
CREATE TABLE IF NOT EXISTS votes (
    answer_id TEXT NOT NULL REFERENCES answers(id),
    user TEXT NOT NULL,
    vote TEXT NOT NULL CHECK (vote IN ('up', 'down')),
    channel TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (answer_id, user)
);
"""

# MIGRATIONS[n] takes a database from version n to n + 1.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: every question is logged, not only answers. Rows of version 0 were all answers;
    # their outcome follows from the answering mode.
    """
    ALTER TABLE answers ADD COLUMN outcome TEXT NOT NULL DEFAULT 'answered';
    ALTER TABLE answers ADD COLUMN latency_s REAL;
    ALTER TABLE answers ADD COLUMN permalink TEXT;
    ALTER TABLE answers ADD COLUMN failure TEXT;
    UPDATE answers SET outcome = 'not_found' WHERE mode = 'not_found';
    CREATE INDEX IF NOT EXISTS answers_created_at ON answers(created_at);
    """,
    # 1 -> 2: the kind of conversation a question was asked in (Slack's channel_type: channel, group,
    # mpim, im; "unknown"), so the report can leave out private channels and group DMs. Older rows
    # keep NULL: the report cannot tell their private channels from public ones (report/data.py).
    """
    ALTER TABLE answers ADD COLUMN channel_type TEXT;
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# Not a migration: `user_version` stays, so releases of the same schema that do not know the table
# still open the file (see the module's docstring). Created when a key is first written.
_META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class FeedbackDatabaseError(RuntimeError):
    """The database cannot be used: not SQLite, or written by a newer FlyteGPT."""


class FeedbackDatabaseBusy(FeedbackDatabaseError):
    """Another process has the database open, or holds a lock on it: nothing was read or changed.
    Not a damaged file: the message says who may hold it and what to do."""


@dataclass
class PruneProgress:
    """How far a prune got, and the work it did (what the retention job logs and tests check).

    `cursor` is the (created_at, rowid) of the last old row the prune read: every row up to it has
    no text left. A later prune given this progress starts after it, so the daily run reads only
    the rows that aged past retention since the day before, not the whole old log again.
    """

    cursor: tuple[float, int] | None = None
    visited: int = 0  # old rows read (each once per walk)
    blanked: int = 0  # rows whose text was removed
    writes: int = 0  # write transactions
    given_back: int = 0  # bytes returned to the filesystem afterwards (retention.prune_database)
    held: "RetentionHold | None" = None  # a first prune waiting for its grace period: nothing was blanked


def new_answer_id() -> str:
    """A short random id for an answer row (what the feedback buttons carry)."""
    return secrets.token_urlsafe(9)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def thread_permalink(workspace_url: str | None, channel: str | None, thread_ts: str | None) -> str | None:
    """The Slack link to a thread (`https://<team>.slack.com/archives/<channel>/p<ts>`), or None."""
    if not workspace_url or not channel or not thread_ts:
        return None
    return f"{workspace_url.rstrip('/')}/archives/{channel}/p{thread_ts.replace('.', '')}"


def _source_dicts(citations: Iterable[Any]) -> list[dict[str, Any]]:
    return [asdict(c) if is_dataclass(c) else dict(c) for c in citations]


def migrate(conn: sqlite3.Connection, path: str = "") -> int:
    """Bring the database on `conn` to SCHEMA_VERSION; returns the version it had before.

    One IMMEDIATE transaction: two processes opening the same old database migrate it once,
    and a failure leaves it as it was.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = int(conn.execute("PRAGMA user_version").fetchone()[0])
        created = before == 0 and not _has_table(conn, "answers")
        if before > SCHEMA_VERSION:
            raise FeedbackDatabaseError(
                f"{path or 'the feedback database'} has schema version {before}, newer than this FlyteGPT "
                f"understands ({SCHEMA_VERSION}); upgrade FlyteGPT or use another database file")
        if before < SCHEMA_VERSION:
            for statement in _statements(_SCHEMA_V0):  # no-op on an existing version-0 database
                conn.execute(statement)
            for step in MIGRATIONS[before:]:
                for statement in _statements(step):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if created:  # every row this database will hold is logged under retention (retention.py)
            _set_meta(conn, META_CREATED_AT, time.time())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A `meta` value, None when unset (or the table is not there yet: an earlier release's file)."""
    if not _has_table(conn, "meta"):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(conn: sqlite3.Connection, key: str, value: object, *, replace: bool = False) -> None:
    """Write a `meta` value, kept when already set (the first time something happened is what counts)
    unless `replace`; the table is created on first use."""
    conn.execute(_META_TABLE)
    conn.execute(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO meta (key, value) VALUES (?, ?)",
                 (key, repr(value) if isinstance(value, float) else str(value)))


def _unusable(path: str, e: sqlite3.DatabaseError) -> FeedbackDatabaseError:
    """SQLite's error on opening or reading a feedback database, said as what it means for the user:
    a lock someone holds (an older bot keeps its WAL database open, and switching the
    journal mode needs it alone) is not a damaged file."""
    if isinstance(e, sqlite_files.NotReadableAsIs):  # a sound file that needs a writer first
        return FeedbackDatabaseError(str(e))
    if sqlite_files.is_busy(e):
        holders = sqlite_files.processes_with_open(path) if path != ":memory:" else []
        who = f" ({'; '.join(f'pid {pid}: {cmd}' for pid, cmd in holders[:3])})" if holders else ""
        return FeedbackDatabaseBusy(
            f"{path} is in use by another process{who} (an older FlyteGPT bot in WAL mode?): stop it, or copy the "
            f"file first; SQLite said: {e}")
    return FeedbackDatabaseError(f"{path} is not a usable feedback database: {e}")


def _statements(script: str) -> list[str]:
    """A script's statements, for running one by one inside an explicit transaction
    (executescript would commit it)."""
    return [s.strip() for s in script.split(";") if s.strip()]


class FeedbackStore:
    """SQLite-backed; safe to share between worker threads."""

    def __init__(self, path: str | Path, *, timeout_s: float = 5.0) -> None:
        """Open (creating it if needed, with incremental auto_vacuum) and migrate the database;
        `timeout_s`: how long a statement waits for another connection's write lock."""
        self.path = str(path)
        try:
            self._conn = sqlite_files.connect(self.path, timeout_s=timeout_s, incremental=True)
        except sqlite3.DatabaseError as e:
            raise _unusable(self.path, e) from None
        self._lock = threading.Lock()
        try:
            with self._lock:
                self.migrated_from = migrate(self._conn, self.path)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise _unusable(self.path, e) from None
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # --- writing ----------------------------------------------------------------------

    def _insert(self, row: dict[str, Any], answer_id: str | None = None) -> str:
        answer_id = answer_id or new_answer_id()
        # half an emoji (a model's or Slack's cut-off text) cannot be stored as UTF-8
        row = {"id": answer_id, "created_at": time.time(),
               **{k: valid_unicode(v) if isinstance(v, str) else v for k, v in row.items()}}
        cols = ", ".join(row)
        with self._lock:
            self._conn.execute(f"INSERT INTO answers ({cols}) VALUES ({', '.join('?' * len(row))})",
                               tuple(row.values()))
        return answer_id

    def record_answer(self, answer: Any, *, surface: str, channel: str | None = None,
                      thread_ts: str | None = None, user: str | None = None,
                      latency_s: float | None = None, permalink: str | None = None,
                      answer_id: str | None = None, channel_type: str | None = None) -> str:
        """Store an answer; returns the id its buttons carry (`answer_id` when the caller chose it,
        e.g. to post the answer before storing it).

        A "not found" answer is logged with outcome not_found, and so is a model answer that cites
        no source (often "the sources do not say" in the model's words: a knowledge gap for the
        report); any other as answered.
        """
        mode = getattr(answer, "mode", None)
        gap = mode == "not_found" or bool(getattr(answer, "uncited", False))
        return self._insert({
            "surface": surface, "channel": channel, "thread_ts": thread_ts, "user": user,
            "question": answer.question, "standalone_question": getattr(answer, "standalone_question", None),
            "answer": answer.text, "sources": json.dumps(_source_dicts(getattr(answer, "citations", []))),
            "index_version": getattr(answer, "index_version", None), "mode": mode,
            "outcome": "not_found" if gap else "answered",
            "latency_s": latency_s, "permalink": permalink, "channel_type": channel_type,
        }, answer_id)

    def record_question(self, question: str, *, outcome: Outcome, surface: str, channel: str | None = None,
                        thread_ts: str | None = None, user: str | None = None, latency_s: float | None = None,
                        index_version: str | None = None, related: Iterable[Any] = (),
                        failure: str | None = None, reply: str = "", permalink: str | None = None,
                        channel_type: str | None = None) -> str:
        """Log a question that got no answer (the model or something else failed).

        `related`: sources offered instead of an answer (not citations); `failure`: a short
        kind such as "model_unavailable" or "index_not_ready", never an exception's text.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        return self._insert({
            "surface": surface, "channel": channel, "thread_ts": thread_ts, "user": user,
            "question": question, "answer": reply, "sources": json.dumps(_source_dicts(related)),
            "index_version": index_version, "outcome": outcome, "latency_s": latency_s,
            "failure": failure, "permalink": permalink, "channel_type": channel_type,
        })

    def record_vote(self, answer_id: str, vote: Vote, *, user: str, channel: str | None) -> bool:
        """False when the answer id is unknown (e.g. an old message from another database)."""
        if vote not in ("up", "down"):
            raise ValueError(f"vote must be 'up' or 'down', not {vote!r}")
        with self._lock:
            known = self._conn.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if not known:
                return False
            self._conn.execute(
                "INSERT INTO votes VALUES (?,?,?,?,?) ON CONFLICT(answer_id, user) DO UPDATE SET "
                "vote = excluded.vote, channel = excluded.channel, created_at = excluded.created_at",
                (answer_id, user, vote, channel, time.time()),
            )
        return True

    # --- reading ----------------------------------------------------------------------

    def get_answer(self, answer_id: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,))
            row = cur.fetchone()
            cols = [d[0] for d in cur.description]
        if row is None:
            return None
        d = dict(zip(cols, row))
        d["sources"] = json.loads(d["sources"])
        return d

    def questions(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Every logged question in [since, until), oldest first, with its 👍/👎 counts.

        The rows the report aggregates; `sources` is decoded, `user` is included for
        counting distinct askers and must never be shown.
        """
        where, args = [], []
        if since is not None:
            where.append("a.created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("a.created_at < ?")
            args.append(until)
        sql = ("SELECT a.id, a.created_at, a.surface, a.channel, a.thread_ts, a.user, a.question, "
               "a.standalone_question, a.sources, a.index_version, a.mode, a.outcome, a.latency_s, "
               "a.permalink, a.failure, a.channel_type, "
               "(SELECT COUNT(*) FROM votes v WHERE v.answer_id = a.id AND v.vote = 'up'), "
               "(SELECT COUNT(*) FROM votes v WHERE v.answer_id = a.id AND v.vote = 'down') "
               "FROM answers a" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY a.created_at, a.id")
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        keys = ("id", "created_at", "surface", "channel", "thread_ts", "user", "question", "standalone_question",
                "sources", "index_version", "mode", "outcome", "latency_s", "permalink", "failure", "channel_type",
                "up", "down")
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            try:
                d["sources"] = json.loads(d["sources"] or "[]")
            except ValueError:
                d["sources"] = []
            out.append(d)
        return out

    def votes(self) -> list[dict[str, Any]]:
        """Every vote joined with its answer, oldest first (the export rows)."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT v.answer_id, v.vote, v.user, v.channel, v.created_at, a.question, "
                "a.standalone_question, a.answer, a.sources, a.index_version, a.mode, a.surface, "
                "a.created_at, a.thread_ts FROM votes v JOIN answers a ON a.id = v.answer_id "
                "ORDER BY v.created_at, v.answer_id")
            rows = cur.fetchall()
        return [
            {"answer_id": r[0], "vote": r[1], "user": r[2], "channel": r[3], "voted_at": _iso(r[4]),
             "question": r[5], "standalone_question": r[6], "answer": r[7], "sources": json.loads(r[8]),
             "index_version": r[9], "mode": r[10], "surface": r[11], "answered_at": _iso(r[12]),
             "thread_ts": r[13]}
            for r in rows
        ]

    def confirmed_questions(self, *, include_private: bool = False,
                            left_out: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Questions whose asker confirmed the answer with 👍, as an eval question file's rows
        (`flytegpt eval`): the question as it was searched (a follow-up rewritten to stand
        alone) and, as its gold, the sources that answer cited (a "not found" answer's closest
        matches are no gold). Real users' questions with answers they confirmed: what a new
        index, model or setting must keep finding. One row per distinct question text, oldest
        answer first; the gold of its confirmed answers merged; `up`/`down` count every voter.

        Only the asker's vote confirms. The asker is the one person who knows whether
        the answer answered the question; anyone else's 👍 says only that it looked right to them.
        Votes are one per user but anyone may vote on any answer, so with "more 👍 than 👎" a single
        person (or "two distinct voters": one person with a second account, which an open community
        workspace hands out freely) could put someone else's question into a file meant to be
        committed. With the asker's 👍 no one can add a question they did not ask themselves.
        Another user's 👍 or 👎 does not change the asker's verdict; the asker's own 👎 (a second
        click replaces the first) takes the question out. Rows without a logged asker never count.

        Privacy: by default only questions asked in public channels are kept, by the report's rule
        (bot/report/data.py `PrivacyFilter`, nothing listed): DMs, the assistant panel, private
        channels, group DMs, and channel questions an older bot logged without a channel type are
        left out. [bot] report_channels and report_dms are not consulted: they let the maintainers'
        report show those questions, and this file is meant for a repository. `include_private`
        keeps them all. `left_out`, when given, receives how many confirmed answers were left out
        and why ("dm", "private", "untyped").
        """
        from flytegpt.bot.report.data import PrivacyFilter  # imports this module: not at the top

        with self._lock:
            rows = self._conn.execute(
                "SELECT a.id, COALESCE(NULLIF(a.standalone_question, ''), a.question), a.sources, "
                "a.surface, a.channel, a.channel_type, SUM(v.vote = 'up'), SUM(v.vote = 'down') "
                "FROM answers a JOIN votes v ON v.answer_id = a.id "
                "WHERE a.outcome = 'answered' AND a.user IS NOT NULL AND a.user != '' AND EXISTS "
                "(SELECT 1 FROM votes w WHERE w.answer_id = a.id AND w.user = a.user AND w.vote = 'up') "
                "GROUP BY a.id ORDER BY a.created_at, a.id"
            ).fetchall()
        keys = ("id", "question", "sources", "surface", "channel", "channel_type", "up", "down")
        confirmed = [dict(zip(keys, r)) for r in rows]
        if not include_private:
            confirmed, dropped = PrivacyFilter(None, dms=False).split(confirmed)
            if left_out is not None:
                left_out.update({k: n for k, n in dropped.items() if n})
        out: dict[str, dict[str, Any]] = {}
        for r in confirmed:
            try:
                cited = [s["source_id"] for s in json.loads(r["sources"])
                         if isinstance(s, dict) and s.get("source_id")]
            except (ValueError, TypeError):
                cited = []
            # cleaned again: rows of releases before 2026-12-04 kept NUL, ESC and bidi overrides
            question = " ".join(clean_question(str(r["question"] or "")).split())
            if not question or not cited:
                continue  # nothing to search for (or its text was pruned), or no gold to check
            row = out.setdefault(question.casefold(), {"id": r["id"], "question": question, "gold": [],
                                                       "up": 0, "down": 0})
            row["gold"] += [c for c in cited if c not in row["gold"]]
            row["up"] += int(r["up"])
            row["down"] += int(r["down"])
        return list(out.values())

    # --- retention --------------------------------------------------------------------

    def prune(self, retention_days: float, *, now: float | None = None,
              progress: PruneProgress | None = None, pause_s: float = PRUNE_PAUSE_S,
              stop: threading.Event | None = None) -> int:
        """Blank the text of questions logged more than `retention_days` ago (0: keep everything);
        returns how many rows lost their text.

        The question, the question as searched and the answer become empty; everything the
        report counts stays (time, surface, channel, outcome, latency, index version, cited
        sources, votes). With SQLite's secure_delete the old text is overwritten in the file,
        not only unlinked from its rows (a snapshot copies free pages too).

        Linear in the old rows, and the bot keeps writing meanwhile. The rows are
        read in (created_at, rowid) order along the created_at index, PRUNE_BATCH at a time, each
        read starting after the last row of the one before: no row is read twice (the first
        release re-read every blanked row at every batch: 160,000 rows took 54 s). Reads take no
        write lock. The rows of a batch that still have text are blanked in one short write
        transaction, then the prune pauses at least as long as that took, so a writer waiting in
        SQLite's busy handler gets the lock. `progress` (updated as it goes) resumes a previous
        walk and records the work done; `stop`, when set, ends the walk after the current step.

        A row is blanked by deleting it and inserting it again without its text (same rowid, id
        and columns), not by an UPDATE: SQLite does not rebalance a page whose rows shrink, so
        updated rows leave every page they were on mostly empty and nothing is freed (160,000
        pruned rows: 161,000 pages, 615 MB of them unused), while a delete that leaves a page
        mostly empty merges it with its neighbours and frees pages, which the file can give back
        (`retention.prune_database`) or later rows reuse.
        """
        if not retention_days or retention_days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - retention_days * DAY_S
        progress = progress if progress is not None else PruneProgress()
        after = progress.cursor or (float("-inf"), -(1 << 63))
        with self._lock:
            self._conn.execute("PRAGMA secure_delete = ON")
            kept = [r[1] for r in self._conn.execute("PRAGMA table_info(answers)") if r[1] not in _TEXT_COLUMNS]
        blanked = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT created_at, rowid, {_HAS_TEXT} FROM answers WHERE created_at < ? "
                    "AND (created_at, rowid) > (?, ?) ORDER BY created_at, rowid LIMIT ?",
                    (cutoff, *after, PRUNE_BATCH)).fetchall()
            progress.visited += len(rows)
            todo = [rowid for _, rowid, has_text in rows if has_text]
            took = 0.0
            if todo:
                t0 = time.monotonic()
                with self._lock:
                    n = self._blank(todo, kept)
                took = time.monotonic() - t0
                blanked += n
                progress.blanked += n
                progress.writes += 1
            if rows:
                after = progress.cursor = (float(rows[-1][0]), int(rows[-1][1]))
            if len(rows) < PRUNE_BATCH or (stop is not None and stop.is_set()):
                break
            if todo:
                pause = max(pause_s, took)
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
        if blanked:  # from now on retention has pruned this database: no grace (retention.retention_hold)
            with self._lock:
                _set_meta(self._conn, META_RETENTION_FIRST_PRUNED_AT, time.time() if now is None else now)
        return blanked

    def meta(self, key: str) -> str | None:
        """A value of the database's `meta` table (META_* keys), None when unset."""
        with self._lock:
            return _get_meta(self._conn, key)

    def set_meta(self, values: dict[str, object]) -> None:
        """Write `meta` values (META_* keys), replacing what they were, in one transaction: the
        retention job's record of its grace period (retention.retention_hold)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for key, value in values.items():
                    _set_meta(self._conn, key, value, replace=True)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def text_older_than(self, cutoff: float) -> tuple[int, float | None, float | None]:
        """How many questions logged before `cutoff` still have their text, and when the oldest and
        the newest of them were logged (None, None when there are none): what a prune would blank."""
        with self._lock:
            rows, oldest, newest = self._conn.execute(
                "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM answers "
                f"WHERE created_at < ? AND {_HAS_TEXT}", (cutoff,)).fetchone()
        return int(rows), oldest, newest

    def _blank(self, rowids: list[int], kept: list[str]) -> int:
        """One write transaction: the rows among `rowids` that still have text, inserted again
        without it (see prune). Called with the store's lock held."""
        cols = ", ".join(f'"{c}"' for c in kept)
        marks = ", ".join("?" * len(rowids))
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            rows = self._conn.execute(
                f"SELECT rowid, {cols} FROM answers WHERE rowid IN ({marks}) AND {_HAS_TEXT}", rowids).fetchall()
            if rows:
                self._conn.execute(f"DELETE FROM answers WHERE rowid IN ({', '.join('?' * len(rows))})",
                                   [r[0] for r in rows])
                self._conn.executemany(
                    f"INSERT INTO answers (rowid, {cols}, question, standalone_question, answer) "
                    f"VALUES (?, {', '.join('?' * len(kept))}, '', NULL, '')", rows)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return len(rows)

    def give_back_space(self, *, min_share: float = GIVE_BACK_MIN_SHARE, min_bytes: int = GIVE_BACK_MIN_BYTES,
                        pause_s: float = sqlite_files.GIVE_BACK_PAUSE_S, stop: threading.Event | None = None) -> int:
        """Return free pages to the filesystem when they are at least `min_share` of the file and
        `min_bytes` (after a prune that removed much text); returns the bytes the file shrank by.
        In small steps the bot's writes get in between (sqlite_files.give_back_free_pages); 0 for a
        database without incremental auto_vacuum (an earlier release's: retention.RetentionJob.start)."""
        with self._lock:
            free, total = sqlite_files.free_bytes(self._conn)
        if free < min_bytes or free < min_share * total:
            return 0
        return sqlite_files.give_back_free_pages(self._conn, pause_s=pause_s, lock=self._lock, stop=stop)

    @property
    def auto_vacuum(self) -> str:
        """"incremental" (a database this release created), "none" (an earlier release's) or "full"."""
        with self._lock:
            return sqlite_files.auto_vacuum_mode(self._conn)

    def compact(self) -> tuple[int, int]:
        """One VACUUM that switches the file to incremental auto_vacuum and drops its free and
        half-empty pages; (bytes before, bytes after). Locks the file for as long as it takes:
        only before the bot serves (retention.RetentionJob.compact_at_start) or with the bot stopped."""
        with self._lock:
            return sqlite_files.compact(self._conn, self.path)


def export_feedback(db_path: str | Path, out_path: str | Path) -> int:
    """`flytegpt feedback export`: the votes in `db_path` as JSONL in `out_path` ("-" = stdout)."""
    return _export_rows(db_path, out_path, FeedbackStore.votes)


def export_confirmed(db_path: str | Path, out_path: str | Path, *, include_private: bool = False,
                     left_out: dict[str, int] | None = None) -> int:
    """`flytegpt feedback questions`: the confirmed questions of `db_path` as an eval question
    file in `out_path` ("-" = stdout); returns how many. Public channels' questions only unless
    `include_private`; `left_out` receives what the privacy rule left out (confirmed_questions)."""
    return _export_rows(db_path, out_path, lambda store: store.confirmed_questions(
        include_private=include_private, left_out=left_out))


def _export_rows(db_path: str | Path, out_path: str | Path,
                 rows_of: Callable[["FeedbackStore"], list[dict[str, Any]]]) -> int:
    """Rows read from an existing database (through `read_copy`: the original is not changed), one
    JSON object a line; returns how many."""
    with read_copy(db_path) as store:
        try:
            rows = rows_of(store)
        except sqlite3.DatabaseError as e:  # a damaged page past the header
            raise _unusable(str(db_path), e) from None
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if str(out_path) == "-":
        sys.stdout.write(text)
    else:  # through a temporary file: a failure half-way never leaves a truncated export
        from flytegpt.ingest.store import atomic_write, get_fs

        fs, path = get_fs(str(out_path))
        atomic_write(fs, path, text.encode("utf-8"))
    return len(rows)


@contextmanager
def read_copy(db_path: str | Path, *, timeout_s: float = READ_LOCK_TIMEOUT_S) -> Iterator[FeedbackStore]:
    """The feedback database at `db_path`, opened as a store over a temporary copy, migrated there:
    what the commands that only read it use (`feedback export`, `feedback questions`), so that the
    original keeps its schema version, journal mode, mode bits and bytes (migrated in
    place, an older release refuses it). The copy is consistent while a bot writes, and reading it
    waits for no WAL writer (an older bot); a database left with an interrupted write
    (a hot journal) is read as its committed rows; see sqlite_files.backup_read_only.

    The copy goes beside the database when that volume has room, else in $TMPDIR
    (sqlite_files.scratch_place), and is removed afterwards.

    Errors name `db_path`, never the copy: FileNotFoundError when there is no file;
    FeedbackDatabaseBusy when another process holds a lock past `timeout_s`; FeedbackDatabaseError
    when it is not a FlyteGPT feedback database, was written by a newer release, or there is no
    room for the copy.
    """
    path = str(db_path)
    _check_exists(path)
    with _scratch(path) as folder:
        copy = str(folder / "feedback.sqlite3")
        _copy_read_only(path, copy, timeout_s)
        try:
            store = FeedbackStore(copy)
        except FeedbackDatabaseError as e:  # e.g. a newer schema: name the user's database, not the copy
            raise type(e)(str(e).replace(copy, path)) from None
        try:
            yield store
        finally:
            store.close()


def _check_exists(path: str) -> None:
    if path == ":memory:" or not Path(path).is_file():
        raise FileNotFoundError(f"feedback database not found: {path}")


@contextmanager
def _scratch(path: str) -> Iterator[Path]:
    """A temporary folder with room for a copy of the database at `path` (sqlite_files.scratch_place)."""
    try:
        place = sqlite_files.scratch_place(path, sqlite_files.database_bytes(path))
    except sqlite_files.NoRoomForCopy as e:
        raise FeedbackDatabaseError(str(e)) from None
    with sqlite_files.scratch_folder(place) as folder:
        yield folder


def _copy_read_only(path: str, copy: str, timeout_s: float) -> None:
    """The database at `path` copied as it is into the new file `copy` (sqlite_files.backup_read_only),
    refused when it is not a FlyteGPT feedback database: the errors of `read_copy` and `export_snapshot`."""
    _check_exists(path)
    try:
        sqlite_files.backup_read_only(path, copy, timeout_s=timeout_s)
        conn = sqlite3.connect(copy)
        try:
            found = _has_table(conn, "answers")
        finally:
            conn.close()
    except (sqlite3.DatabaseError, OSError) as e:
        if _is_full(e):  # the folder of the copy, not the database
            scratch = Path(copy).parent.name.startswith(sqlite_files.SCRATCH_PREFIX)
            raise FeedbackDatabaseError(
                f"no room to copy {path} into {os.path.dirname(copy)} ({e}): free some space"
                + (", or set TMPDIR to a folder with room" if scratch else "")) from None
        if isinstance(e, OSError):
            raise
        raise _unusable(path, e) from None
    if not found:  # another program's SQLite file, or an empty one: not read as an empty log
        raise FeedbackDatabaseError(f"{path} is not a FlyteGPT feedback database (no answers table): "
                                    "give the bot's [bot] feedback_db or a snapshot of it")


def _is_full(e: BaseException) -> bool:
    """A full disk, as an OSError or as SQLite's SQLITE_FULL."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(e, "sqlite_errorcode", None)
    return code == 13 if isinstance(code, int) else "database or disk is full" in str(e)


def export_snapshot(db_path: str | Path, target: str, *, timeout_s: float = READ_LOCK_TIMEOUT_S) -> int:
    """Copy the live database to `target` (a local path or an fsspec URL such as
    s3://bucket/flytegpt/feedback.sqlite3), atomically; returns the bytes written.

    This is how the database reaches the weekly report task, which cannot open the bot's
    volume: the bot (or a cron job beside it) exports a snapshot, the task reads it. It is also the
    operator's backup before an upgrade, so the copy is the database as it is: its
    schema version and journal mode are the original's, which an older release can still open, and
    the original is only read (a read-only connection: not migrated, its journal mode and mode bits
    untouched). Consistent while a bot writes, an older one in WAL mode included; a
    database a writer was killed in the middle of is copied as its committed rows.

    Never held in memory (when it was, a 200 MB database took 238 MB of RSS, inside the bot for its
    periodic snapshot): a local target is written by SQLite into a temporary file beside it, renamed
    into place; an object store gets the file uploaded from a temporary copy (fsspec's put_file,
    streamed; the object appears when the upload completes), made beside the database or in $TMPDIR
    (sqlite_files.scratch_place).
    """
    from flytegpt.ingest.store import create_temp, get_fs, is_local

    path = str(db_path)
    _check_exists(path)
    fs, dest = get_fs(target)
    if is_local(fs):
        folder = os.path.dirname(dest)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = create_temp(folder, ".tmp-", "." + os.path.basename(dest))
        os.close(fd)
        try:
            _copy_read_only(path, tmp, timeout_s)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            size = os.path.getsize(tmp)
            os.replace(tmp, dest)
        except BaseException:
            for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
            raise
        return size
    with _scratch(path) as scratch:
        copy = str(scratch / "feedback.sqlite3")
        _copy_read_only(path, copy, timeout_s)
        size = os.path.getsize(copy)
        fs.put_file(copy, dest)
    return size


@dataclass(frozen=True)
class CompactResult:
    """What `compact_database` did: the file's size before and after, and its auto_vacuum mode before."""

    path: str
    bytes_before: int
    bytes_after: int
    auto_vacuum_before: str  # "none" (an earlier release's file), "full" or "incremental"


def compact_database(db_path: str | Path, *, lock_timeout_s: float = COMPACT_LOCK_TIMEOUT_S) -> CompactResult:
    """`flytegpt feedback compact`: one VACUUM that rewrites the file without its free and
    half-empty pages and switches it to incremental auto_vacuum (retention then gives space back
    by itself). For a file too big for the bot to switch at start (COMPACT_AT_START_MAX_BYTES).

    A VACUUM locks the whole file for as long as it takes, so it is refused while another process
    has the file open (the bot, between two questions, holds no lock SQLite could see: its open
    file is what tells, sqlite_files.processes_with_open), and a lock someone holds makes it give
    up after `lock_timeout_s`: FeedbackDatabaseBusy, and the file is as it was (SQLite's VACUUM is
    one transaction). The schema is not migrated: only the file's layout changes."""
    path = str(db_path)
    if path == ":memory:" or not Path(path).is_file():  # never creates one
        raise FeedbackDatabaseError(f"no feedback database at {path}")
    holders = sqlite_files.processes_with_open(path)
    if holders:
        who = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in holders[:3])
        raise FeedbackDatabaseBusy(
            f"{path} is open in another process right now ({who}): stop the bot first. A VACUUM locks "
            "the file for as long as it takes and the bot's writes would fail meanwhile; nothing was changed")
    try:
        conn = sqlite_files.connect(path, timeout_s=lock_timeout_s)
    except sqlite3.DatabaseError as e:
        raise _compact_error(path, e) from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "answers" not in tables:
            raise FeedbackDatabaseError(f"{path} is not a feedback database (it has no answers table)")
        was = sqlite_files.auto_vacuum_mode(conn)
        before, after = sqlite_files.compact(conn, path)
    except sqlite3.DatabaseError as e:
        raise _compact_error(path, e) from None
    finally:
        conn.close()
    return CompactResult(path, before, after, was)


def _compact_error(path: str, e: sqlite3.DatabaseError) -> FeedbackDatabaseError:
    """SQLite's error of a VACUUM said as what to do about it."""
    text = str(e)
    if "locked" in text or "busy" in text:
        return FeedbackDatabaseBusy(
            f"{path} is locked by another connection ({text}): is the bot, or another command, writing to it? "
            "Stop it and try again; nothing was changed")
    if "full" in text:
        return FeedbackDatabaseError(
            f"not enough disk space to compact {path} ({text}): a VACUUM needs room for a copy of what the "
            "database holds (in SQLite's temporary folder, $SQLITE_TMPDIR or /tmp) and for its journal beside "
            "the file; nothing was changed")
    return FeedbackDatabaseError(f"{path} is not a usable feedback database: {text}")
