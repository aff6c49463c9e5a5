"""What the report reads: the question log (privacy-filtered) and the index store.

The bot's database is never written by the report: it is copied with SQLite's backup API
into a temporary file, and that copy is opened (and migrated, when an older bot wrote it). The copy
goes beside a local database when its volume has room, else in $TMPDIR (sqlite_files.scratch_place),
and a database left with an interrupted write is read as its committed rows.
A database may be a local file or an fsspec URL (the snapshot the bot exports).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from flytegpt.bot import sqlite_files
from flytegpt.bot.slack.feedback import FeedbackDatabaseError, FeedbackStore

log = logging.getLogger(__name__)

# <@U…>, <@W…|name>, <!subteam^S…>, and the "@U0ABC123" that older bots stored a mention as
_MENTION = re.compile(r"<[@!](?:[UW][A-Z0-9]+|subteam\^[A-Z0-9]+)(?:\|[^<>]*)?>|(?<![\w@])@[UW][A-Z0-9]{6,}\b")
PRIVATE_SURFACES = ("dm", "panel")  # the assistant panel is a DM with the app
# What the bot logs as a question's channel_type (bot/slack/history.py): only "channel" is public.
PRIVATE_CHANNEL_TYPES = ("group", "mpim", "im", "unknown")
SURFACE_NAMES = {"command": "slash", "assistant": "panel"}  # the bot's names for /flytegpt and the panel


def load_questions(db: str, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """The logged questions in [since, until) from a database file or URL (read only).

    A file the bot never wrote is refused (ValueError, naming `db`) rather than read as an
    empty log: opening the copy creates the bot's tables, so a half-written upload or some
    other SQLite file would otherwise become a "0 questions" report over the last good one.
    """
    with sqlite_files.scratch_folder(_copy_place(db)) as tmp:
        copy = os.path.join(tmp, "feedback.sqlite3")
        _copy_database(db, copy)
        _check_written_by_the_bot(copy, db)
        try:
            store = FeedbackStore(copy)
        except FeedbackDatabaseError as e:  # e.g. a newer schema: name the user's database, not the copy
            raise ValueError(str(e).replace(copy, db)) from None
        try:
            return store.questions(since, until)
        except sqlite3.DatabaseError as e:  # a damaged page past the header
            raise ValueError(f"{db} is not a usable feedback database: {e}") from None
        finally:
            store.close()


def _copy_place(db: str) -> Path:
    """Where the temporary copy of `db` goes: beside a local database when its volume has room, else
    in $TMPDIR (sqlite_files.scratch_place); a ValueError when neither has room."""
    try:
        if "://" in db and not db.startswith("file://"):
            from flytegpt.ingest.store import get_fs

            fs, path = get_fs(db)
            try:
                size = int(fs.size(path) or 0)
            except Exception:  # noqa: BLE001 - a missing object or bucket: said by _copy_database, naming `db`
                size = 0
            return sqlite_files.scratch_place(None, size)
        path = db.removeprefix("file://")
        return sqlite_files.scratch_place(path if Path(path).is_file() else None, sqlite_files.database_bytes(path))
    except sqlite_files.NoRoomForCopy as e:
        raise ValueError(str(e)) from None


def _copy_database(db: str, copy: str) -> None:
    """`db` (a path or an fsspec URL) copied to the local file `copy`. The bot's file is never opened
    for writing; a local one is copied with SQLite's backup API (consistent while the bot writes)."""
    if "://" in db and not db.startswith("file://"):
        from flytegpt.ingest.store import get_fs

        fs, path = get_fs(db)
        if not fs.exists(path):
            raise FileNotFoundError(f"feedback database not found: {db}")
        fs.get_file(path, copy)
        if os.path.getsize(copy) == 0:
            raise _empty(db)
        return
    path = db.removeprefix("file://")
    if not Path(path).is_file():
        raise FileNotFoundError(f"feedback database not found: {db}")
    if Path(path).stat().st_size == 0:
        raise _empty(db)
    try:
        sqlite_files.backup_read_only(path, copy)
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite_files.NotReadableAsIs):  # sound, but needs a writer first
            raise ValueError(str(e)) from None
        if sqlite_files.is_busy(e):  # a lock someone holds, not a damaged file
            raise ValueError(f"{db} is in use by another process that holds a lock on it: try again, or copy "
                             f"the file first; SQLite said: {e}") from None
        raise ValueError(f"{db} is not an SQLite database: {e}") from None


def _empty(db: str) -> ValueError:
    """SQLite takes a zero-byte file for an empty database; for the report it is a failed copy."""
    return ValueError(f"{db} is empty (0 bytes), not a FlyteGPT feedback database "
                      "(a snapshot that was not written completely?)")


def _check_written_by_the_bot(copy: str, db: str) -> None:
    """Refuse a copy that is not SQLite or has no `answers` table (the bot creates it on its first
    start), with errors that name `db`, the database the user gave, not the temporary copy."""
    try:
        conn = sqlite3.connect(copy)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'answers'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{db} is not an SQLite database: {e}") from None
    if not found:
        raise ValueError(f"{db} is not a FlyteGPT feedback database (no answers table): "
                         "give the bot's [bot] feedback_db or a snapshot of it")


def mask_mentions(text: str) -> str:
    """Slack user and group mentions in a question become "@someone": ids are never shown."""
    return _MENTION.sub("@someone", text or "")


def surface_of(row: dict[str, Any]) -> str:
    s = row.get("surface") or "unknown"
    return SURFACE_NAMES.get(s, s)


def is_private(row: dict[str, Any]) -> bool:
    """A DM, the assistant panel, or /flytegpt typed in a DM (channel ids of DMs start with D)."""
    return surface_of(row) in PRIVATE_SURFACES or (row.get("channel") or "").startswith("D")


def privacy_of(row: dict[str, Any]) -> str:
    """Where a question was asked, as the report's privacy rules see it:

    - "dm": a 1:1 DM, the assistant panel, /flytegpt in a DM;
    - "private": a private channel or a group DM (mpim), as logged with the question, or a channel
      Slack would not describe ("unknown"); rows logged before channel types were recorded with a
      G id too (legacy private channels and group DMs);
    - "untyped": a C id logged before channel types were recorded. Private channels and group
      DMs have C ids nowadays, so such a row cannot be told apart from a public channel's;
    - "public": a public channel.
    """
    if is_private(row):
        return "dm"
    kind = row.get("channel_type")
    if kind:
        return "public" if kind == "channel" else "private"
    channel = row.get("channel") or ""
    if channel.startswith("G"):
        return "private"
    return "untyped" if channel else "public"  # no channel at all: nothing to hide (a hand-made row)


@dataclass
class PrivacyFilter:
    """Which questions the report may show: channels in `channels` (None: all), DMs if `dms`.

    Questions from private channels and group DMs, and channel questions logged before the bot
    recorded channel types (which cannot be told apart from them), are shown only when their
    channel is listed in [bot] report_channels: a report is read by people who are not members of
    those channels (the weekly task publishes it as a Flyte Deck and in the store). Listing a
    channel in allowed_channels lets the bot answer there; it does not publish its questions.
    """

    channels: set[str] | None
    dms: bool = False
    ignored_names: list[str] = field(default_factory=list)  # entries that are not channel ids
    # the setting the channel entries came from: report_channels, or allowed_channels (its default)
    names_from: str = "report_channels"

    @classmethod
    def from_config(cls, report_channels: list[str] | None, allowed_channels: list[str], dms: bool) -> "PrivacyFilter":
        entries = allowed_channels if report_channels is None else report_channels
        names_from = "allowed_channels" if report_channels is None else "report_channels"
        if not entries:
            return cls(None, dms, names_from=names_from)
        from flytegpt.ingest.config import channel_id

        ids = {channel_id(e) for e in entries} - {None}
        # names need Slack to resolve; the report runs offline, so they match nothing (safe side)
        return cls(ids, dms, sorted(e for e in entries if channel_id(e) is None), names_from)

    def names_note(self) -> str | None:
        """What the report says about channel names it was given: they match no question."""
        if not self.ignored_names:
            return None
        names = ", ".join(self.ignored_names)
        if self.names_from == "allowed_channels":
            where = "[bot] allowed_channels (the default for report_channels, which is not set)"
            fix = "give channel ids such as C0123ABCD in allowed_channels, or set report_channels to channel ids"
        else:
            where, fix = "[bot] report_channels", "give channel ids such as C0123ABCD instead"
        shown = ("no channel question is shown" if not self.channels
                 else "questions from those channels are left out")
        return f"{where} names channels: {names}. Channel names cannot be matched offline, so {shown}; {fix}."

    @property
    def listed(self) -> set[str]:
        """The channels named in report_channels itself: the private ones the report may show."""
        return set(self.channels or ()) if self.names_from == "report_channels" else set()

    def split(self, rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """(rows to show, how many were left out and why: "dm", "private", "untyped", "channel")."""
        shown, left_out = [], {"dm": 0, "private": 0, "untyped": 0, "channel": 0}
        listed = self.listed
        for r in rows:
            where = privacy_of(r)
            if where == "dm":
                if not self.dms:
                    left_out["dm"] += 1
                    continue
            elif self.channels is not None and r.get("channel") not in self.channels:
                left_out["channel"] += 1
                continue
            elif where in ("private", "untyped") and r.get("channel") not in listed:
                left_out[where] += 1
                continue
            shown.append(r)
        return shown, left_out

    @staticmethod
    def untyped_note(left_out: dict[str, int]) -> str | None:
        """What the report says of the channel questions it left out for being logged without a
        channel type (by an older FlyteGPT): it cannot tell whether their channels are private."""
        n = left_out.get("untyped", 0)
        if not n:
            return None
        return (f"{n:,} channel question{'s' if n != 1 else ''} logged before the bot recorded whether a channel "
                "is private (private channels and group DMs have C ids like public channels) "
                f"{'were' if n != 1 else 'was'} left out; list a channel in [bot] report_channels to show its questions.")


@dataclass
class SourceInfo:
    source_id: str
    kind: str
    title: str
    url: str


@dataclass
class IndexHistory:
    versions: list[dict[str, Any]]  # manifests, oldest first
    latest: str | None
    model_id: str | None
    catalog: dict[str, SourceInfo]  # every source id of the latest version
    problems: list[str] = field(default_factory=list)  # what could not be read, for the page


def read_index_history(store: str, *, max_versions: int = 50) -> IndexHistory:
    """Manifests of the store's versions and the source catalog of LATEST (its chunk table)."""
    from flytegpt.ingest.artifact import ArtifactError, list_versions, open_version, read_latest, read_manifest

    problems: list[str] = []
    versions = []
    for v in list_versions(store)[-max_versions:]:
        try:
            versions.append(read_manifest(store, v))
        except ArtifactError as e:
            problems.append(f"index version {v} left out: {e}")
    catalog: dict[str, SourceInfo] = {}
    model_id = None
    try:
        latest = read_latest(store)
        if latest:
            index = open_version(store, latest)
            model_id = index.model.model_id
            for c in index.chunks:
                if c.source_id not in catalog:
                    catalog[c.source_id] = SourceInfo(c.source_id, c.kind, _source_title(c), c.url.split("#", 1)[0])
            del index
    except ArtifactError as e:  # a damaged LATEST: the rest of the report still stands
        latest = None
        problems.append(f"the published index cannot be read, so the source sections are empty: {e}")
    for p in problems:
        log.warning("report: %s", p)
    return IndexHistory(versions, latest, model_id, catalog, problems)


def _source_title(chunk: Any) -> str:
    """What a person calls the whole source: the page title, the file path, the thread title."""
    if chunk.kind == "docs":
        return chunk.title.split(" > ")[0]
    if chunk.kind == "code":
        return chunk.source_id.split(":", 1)[-1]
    return chunk.title
