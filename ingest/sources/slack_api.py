"""`slack_api` sources: channels read live through the Web API, incrementally, one Document per thread.

The nightly re-ingest should cost what changed since yesterday, not a re-read of years of
history, yet every thread still in Slack must stay in the index, and none that is gone. So the
source keeps two files in the index store (fsspec, like everything else there):
    <store>/cursors/<source name>.json          per channel: the newest activity ts seen
    <store>/sources/<source name>/threads.jsonl  per thread: its document (none for noise), its
                                                 parent as last listed, when it was last read
A run lists thread parents (`conversations.history`) from the cursor minus
`reply_lookback_days` (history is ordered by a thread's *first* message, so recent replies to
older threads are only found by looking back). In that window:
  - a parent without replies is its whole thread: rebuilt from the listing, no further call;
  - a thread with replies is fetched (`conversations.replies`) when it is new, or when its parent
    differs from the snapshot's copy in any way: `reply_count` (fewer = a reply was deleted),
    `latest_reply` (back = the last reply was deleted), `edited`, `subtype` (`tombstone`: the
    parent was deleted and its replies kept);
  - a snapshot thread whose parent is no longer listed was deleted: it leaves the snapshot
    (only when the listing was read to its end).
What the listing cannot show (a reply edited, anything changed before the window) is caught by a
slow refresh: each run re-reads the `refresh_per_run` threads read longest ago, among those not
read for `refresh_after_days`; one whose parent is gone (`thread_not_found`) is dropped.
Then the cursor moves and every thread of the snapshot is emitted: unchanged threads without any
API call. The snapshot is written before the cursor, so a crash in between only re-fetches.

Two collects of one source on one store (a manual `flytegpt ingest` beside the nightly Flyte run)
take turns: the read of the snapshot and cursor, the Slack calls and the writes happen under
`<store>/sources/<source name>/collect.lock` (ingest.store.store_lock: local paths and object
stores alike). Unlocked, one run's snapshot could be saved with the other's cursor, a cursor past
threads that snapshot never had: never listed again, lost. The second run waits, saying so in
the log, and then reads what the first wrote (so it re-fetches nothing the first fetched); past
COLLECT_LOCK_WAIT_S it fails with a StoreLockError that names the holder. A holder that died
(a killed pod) does not block: its lock is broken once its process is gone (same host) or its
time is LOCK_STALE_AFTER_S old (the holder renews it while it runs, however long its crawl).

Rate limits and Slack's transient errors: the shared client's retry handlers (ingest/slack_client.py).
Needs SLACK_BOT_TOKEN (scopes channels:history, groups:history, channels:read, groups:read,
users:read) and optionally SLACK_API_URL (another Web API base URL), via ingest.config.Settings.
Without a store (`store=None`) nothing is remembered and all history is read.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flytegpt.ingest.config import ConfigError, Settings, SourceConfig
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources.slack_export import (
    Directory, clean_messages, is_noise, listed, thread_document, ts_key,
)
from flytegpt.ingest.store import LOCK_STALE_AFTER_S, atomic_write, get_fs, join, read_bytes, store_lock

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web import SlackResponse

log = logging.getLogger(__name__)

PAGE_LIMIT = 200  # Slack's recommended page size for history and lists
RATE_LIMIT_RETRIES = 8
CURSOR_FORMAT = 1
_GONE = ("thread_not_found", "message_not_found")  # conversations.replies of a deleted parent
COLLECT_LOCK = "collect.lock"  # in the source's folder of the store, beside its snapshot
# How long a second collect of a source waits for the first: an incremental nightly collect takes
# minutes, so this outwaits it; a first crawl of a big workspace (hours) is not waited out, the
# second run fails and says why. More than LOCK_STALE_AFTER_S: a lock left by a killed collect on
# another machine is broken within one wait.
COLLECT_LOCK_WAIT_S = 3 * LOCK_STALE_AFTER_S


def _now() -> float:
    return time.time()


def make_client(settings: Settings) -> "WebClient":
    """The project's WebClient (ingest/slack_client.py), waiting out long rate limits."""
    from flytegpt.ingest.slack_client import make_web_client

    if settings.slack_bot_token is None:
        raise ConfigError("slack_api sources need SLACK_BOT_TOKEN in the environment")
    return make_web_client(settings, settings.slack_bot_token.get_secret_value(),
                           rate_limit_retries=RATE_LIMIT_RETRIES)


class _State:
    """The cursor and the thread snapshot of one source in the store (or in memory only)."""

    def __init__(self, store: str | None, name: str) -> None:
        self.store = store
        self.cursors: dict[str, dict[str, Any]] = {}  # channel id -> {"name", "latest"}
        # "<channel id>/<thread ts>" -> {"document": Document dict, or None for a thread of noise,
        #  "parent": _parent(...) as last listed (None in a snapshot written before it was kept),
        #  "read_at": when the thread was last read (None: never recorded, read first by the refresh)}
        self.threads: dict[str, dict[str, Any]] = {}
        if store is None:
            return
        self.fs, root = get_fs(store)
        self.cursor_path = join(root, "cursors", f"{name}.json")
        self.snapshot_path = join(root, "sources", name, "threads.jsonl")
        data = read_bytes(self.fs, self.cursor_path)
        if data:
            self.cursors = json.loads(data).get("channels", {})
        data = read_bytes(self.fs, self.snapshot_path)
        for line in (data or b"").decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                self.threads[row["key"]] = {"document": row.get("document"), "parent": row.get("parent"),
                                            "read_at": row.get("read_at")}
        if self.threads and not self.cursors:
            self.threads = {}  # a snapshot without its cursor cannot be trusted: read everything

    @classmethod
    def read_only(cls, store: str | None, name: str) -> "_State":
        """The store's state for a dry run: never saved, and, when the store cannot be read (no
        credentials for it where a config is checked), empty: every thread is read from Slack."""
        try:
            state = cls(store, name)
        except Exception as e:  # noqa: BLE001 - whatever the store's filesystem raises
            log.warning("%s: the store's thread snapshot cannot be read (%s): every thread is read from Slack",
                        name, str(e).splitlines()[0] if str(e) else type(e).__name__)
            state = cls(None, name)
        state.store = None  # save() writes nothing
        return state

    def put(self, key: str, doc: Document | None, parent: dict[str, Any], now: float) -> None:
        self.threads[key] = {"document": None if doc is None else doc.to_dict(), "parent": parent, "read_at": now}

    def save(self) -> None:
        if self.store is None:
            return
        rows = "".join(
            json.dumps({"key": k, **row}, ensure_ascii=False, sort_keys=True) + "\n"
            for k, row in sorted(self.threads.items())
        )
        atomic_write(self.fs, self.snapshot_path, rows.encode())  # snapshot first, then the cursor
        cursor = {"format": CURSOR_FORMAT, "channels": self.cursors,
                  "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(self.fs, self.cursor_path, json.dumps(cursor, indent=1, sort_keys=True).encode())


def _pages(first: "SlackResponse", method: str, report: LoadReport,
           cut: list[str] | None = None) -> Iterator["SlackResponse"]:
    """Every page; a repeated cursor ends the listing, is reported, and noted in `cut`."""
    from flytegpt.ingest.slack_client import pages

    def stopped(cursor: str) -> None:
        report.skip(method, f"stopped paging: the server repeated the cursor {cursor[:40]!r}")
        if cut is not None:
            cut.append(cursor)

    return pages(first, stopped)


def _directory(client: "WebClient", report: LoadReport) -> Directory:
    from slack_sdk.errors import SlackApiError

    d = Directory()
    try:
        for page in _pages(client.users_list(limit=PAGE_LIMIT), "users.list", report):
            for u in listed(page, "members"):
                d.add_user(u)
    except SlackApiError as e:  # e.g. missing users:read: messages keep user ids, nothing else breaks
        report.skip("users.list", f"user names unavailable: {e.response.get('error')}")
    return d


def _channels(client: "WebClient", source: SourceConfig, d: Directory, report: LoadReport) -> list[tuple[str, str]]:
    """(id, name) of the channels to read: the configured ones, or every channel the bot is in."""
    channels: list[dict] = []
    for page in _pages(client.conversations_list(types="public_channel,private_channel", exclude_archived=True,
                                                 limit=PAGE_LIMIT), "conversations.list", report):
        channels.extend(c for c in listed(page, "channels") if isinstance(c.get("id"), str))
    for c in channels:
        d.channel_names[c["id"]] = c.get("name", c["id"])
        d.channel_ids[c.get("name", c["id"])] = c["id"]
    if not source.channels:
        chosen = [c for c in channels if c.get("is_member") and _may_read(c, source, report, c.get("name", c["id"]))]
        return [(c["id"], c.get("name", c["id"])) for c in chosen]
    picked = []
    for wanted in source.channels:
        match = next((c for c in channels if wanted in (c["id"], c.get("name"), "#" + c.get("name", ""))), None)
        if match is None:
            report.skip(wanted, "channel not found (archived, or private without the bot)")
        elif not match.get("is_member"):
            report.skip(wanted, "the bot is not a member of this channel (invite it)")
        elif _may_read(match, source, report, wanted):
            picked.append((match["id"], match.get("name", match["id"])))
    return picked


def _may_read(channel: dict, source: SourceConfig, report: LoadReport, shown: str) -> bool:
    """A private channel the bot was invited to is indexed only when the config says so: the bot
    quotes what it indexed to anyone, in public channels too (as the export source)."""
    if channel.get("is_private") and not source.private_channels:
        report.skip(shown, "a private channel: indexed only with private_channels = true")
        return False
    return True


def _activity(msg: dict) -> float:
    """When a thread last changed, as far as its parent in the history tells."""
    edited = msg.get("edited") if isinstance(msg.get("edited"), dict) else {}
    stamps = [msg.get("ts"), msg.get("latest_reply"), edited.get("ts")]
    return max(float(s) for s in stamps if s and re.fullmatch(r"\d+(\.\d+)?", str(s)))


def _parent(msg: dict) -> dict[str, Any]:
    """What a thread's parent tells of the thread: any change in it means the thread changed."""
    count = msg.get("reply_count")
    edited = msg.get("edited") if isinstance(msg.get("edited"), dict) else {}
    return {"reply_count": count if isinstance(count, int) and not isinstance(count, bool) else 0,
            "latest_reply": str(msg.get("latest_reply") or ""), "edited": str(edited.get("ts") or ""),
            "subtype": str(msg.get("subtype") or "")}


def _stale(row: dict[str, Any], parent: dict[str, Any], activity: float, last: float) -> bool:
    """Whether a thread listed again (with replies) must be read again."""
    if row["parent"] is not None:
        return row["parent"] != parent or activity > last
    # a snapshot from before parents were kept: re-read what shows a change, take the rest as it
    # is (the refresh reads those rows first), so the first run after the upgrade costs no more
    doc = row["document"] or {}
    return (activity > last or parent["subtype"] == "tombstone"
            or (doc.get("meta") or {}).get("reply_count", 0) > parent["reply_count"])


def _thread_document(
    source: SourceConfig, channel_id: str, channel: str, root: str, messages: list[dict], d: Directory
) -> Document | None:
    msgs = [m for m in messages if not is_noise(m, d)]  # already cleaned (clean_messages)
    return thread_document(source, channel, channel_id, root, msgs, d) if msgs else None


def _replies(client: "WebClient", channel_id: str, root: str, report: LoadReport) -> list[dict] | None:
    """The thread's messages, or None when its parent is gone (deleted since it was listed)."""
    from slack_sdk.errors import SlackApiError

    messages: list[dict] = []
    try:
        for page in _pages(client.conversations_replies(channel=channel_id, ts=root, limit=PAGE_LIMIT),
                           "conversations.replies", report):
            messages.extend(clean_messages(page))
    except SlackApiError as e:
        if e.response.get("error") in _GONE:
            return None
        raise
    return messages if any(m["ts"] == root for m in messages) else None


def load_slack_api(
    source: SourceConfig,
    report: LoadReport,
    *,
    store: str | None = None,
    client: "WebClient | None" = None,
    save: bool = True,
) -> Iterator[Document]:
    """Every thread of the source's channels; only threads with new activity cost API calls.

    `save=False` (a dry run): the store's snapshot and cursor are read when they can be, and
    nothing is written or locked, so checking a config leaves the store as it was."""
    client = client or make_client(Settings())
    lock = _collect_lock(store, source.name) if save else nullcontext()
    with lock:  # read, fetch and save: one collect of this source at a time
        docs, fetched, refreshed, due, dropped = _collect(source, report, store, client, save)
    log.info("%s: %d threads, %d fetched since the last ingest, %d refreshed (%d more due), %d deleted in Slack",
             source.name, len(docs), fetched, refreshed, due, dropped)
    for doc in docs:
        report.documents += 1
        yield doc


def _collect_lock(store: str | None, name: str) -> AbstractContextManager[None]:
    """The store's lock of this source's snapshot and cursor (nothing to lock without a store)."""
    if store is None:
        return nullcontext()
    fs, root = get_fs(store)
    return store_lock(fs, join(root, "sources", name, COLLECT_LOCK), wait_s=COLLECT_LOCK_WAIT_S,
                      activity=f"collect of the slack_api source {name!r}")


def _collect(source: SourceConfig, report: LoadReport, store: str | None,
             client: "WebClient", save: bool = True) -> tuple[list[Document], int, int, int, int]:
    """Read the snapshot and cursor, bring them up to date from Slack, save them (unless `save`
    is False): (the source's documents, threads fetched, refreshed, still due for a refresh,
    deleted in Slack)."""
    state = _State(store, source.name) if save else _State.read_only(store, source.name)
    d = _directory(client, report)
    channels = _channels(client, source, d, report)
    names = dict(channels)
    now = _now()
    fetched = dropped = 0
    read_now: set[str] = set()
    for channel_id, channel in channels:
        seen = state.cursors.get(channel_id, {})
        last = float(seen["latest"]) if seen.get("latest") else None
        oldest = f"{max(0.0, last - source.reply_lookback_days * 86400) if last is not None else 0.0:.6f}"
        newest = last or 0.0
        listed_keys: set[str] = set()
        changed: list[dict] = []
        cut: list[str] = []
        history = client.conversations_history(channel=channel_id, oldest=oldest, limit=PAGE_LIMIT)
        for page in _pages(history, "conversations.history", report, cut):
            for msg in clean_messages(page):
                if msg.get("thread_ts") not in (None, msg.get("ts")):
                    continue  # a reply broadcast to the channel: its thread is read with the parent
                key = f"{channel_id}/{msg['ts']}"
                listed_keys.add(key)
                activity = _activity(msg)
                newest = max(newest, activity)
                parent = _parent(msg)
                row = state.threads.get(key)
                if not parent["reply_count"]:  # the parent is the whole thread: no call needed
                    state.put(key, _thread_document(source, channel_id, channel, msg["ts"], [msg], d), parent, now)
                    read_now.add(key)
                elif row is None or _stale(row, parent, activity, last or 0.0):
                    changed.append(msg)
                elif row["parent"] is None:
                    row["parent"] = parent  # an older snapshot's row, unchanged: compared from now on
        for msg in changed:
            root = msg["ts"]
            key = f"{channel_id}/{root}"
            thread = _replies(client, channel_id, root, report)
            fetched += 1
            read_now.add(key)
            if thread is None:
                dropped += state.threads.pop(key, None) is not None
            else:
                state.put(key, _thread_document(source, channel_id, channel, root, thread, d), _parent(msg), now)
        if not cut:  # the listing is complete: a thread it covers and does not list was deleted
            for key in [k for k in state.threads if k.split("/", 1)[0] == channel_id]:
                if key not in listed_keys and ts_key(key.split("/", 1)[1]) > ts_key(oldest):
                    del state.threads[key]
                    dropped += 1
        state.cursors[channel_id] = {"name": channel, "latest": f"{newest:.6f}"}

    # The slow refresh: threads not read for a while, longest unread first, a bounded number per run.
    after_days, per_run = source.refresh_after_days, source.refresh_per_run
    due = sorted(
        (row["read_at"] or 0.0, key) for key, row in state.threads.items()
        if key.split("/", 1)[0] in names and key not in read_now
        and (row["read_at"] or 0.0) <= now - after_days * 86400
    )
    for _, key in due[:max(0, per_run)]:
        channel_id, root = key.split("/", 1)
        thread = _replies(client, channel_id, root, report)
        if thread is None:
            del state.threads[key]
            dropped += 1
            continue
        parent = next(m for m in thread if m["ts"] == root)
        state.put(key, _thread_document(source, channel_id, names[channel_id], root, thread, d), _parent(parent), now)
    state.save()

    docs = [Document.from_dict(row["document"]) for k, row in state.threads.items()
            if row["document"] is not None and k.split("/", 1)[0] in names]
    docs.sort(key=lambda doc: (doc.meta.get("channel", ""), ts_key(doc.meta["thread_ts"])))
    return (docs, fetched, min(len(due), max(0, per_run)), max(0, len(due) - max(0, per_run)), dropped)
