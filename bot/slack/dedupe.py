"""Exactly one answer per user message, across restarts and replicas.

Socket Mode re-sends an event when an ack is late, Slack may deliver it on any of the
app's open connections (or to another replica's), and one message can arrive both as
`app_mention` and as `message`. Bolt does not filter any of that, so we remember what we
have seen: event ids, and the (channel, ts) of every message we decided to answer.

Memory alone forgets at a restart, and Slack keeps retrying an event for minutes, so a
retry reaching the restarted process (or a second replica on the same volume) would be
answered again. The ids are therefore also kept in a small SQLite file next to the
feedback database, for an hour (Slack stops retrying after minutes); the first process
to insert a key wins. If that file cannot be used, the in-memory check still works and
the failure is logged: de-duplication never stops the bot from answering.

The same file keeps the threads the bot answered in (`threads`, for THREAD_TTL_S after its
last answer there). A thread reply without a mention is a follow-up only in such a thread;
without the record, every reply by people talking to each other would cost a read of the
thread from Slack, and a restart would forget which threads are the bot's.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Hashable

from flytegpt.bot import sqlite_files

log = logging.getLogger(__name__)

SEEN_TTL_S = 3600.0
_PRUNE_EVERY = 500  # inserts between deletions of expired keys
# A thread the bot answered in stays its own this long after its last answer there; at most
# MAX_THREADS are kept (the oldest go first): ~100 bytes a row, a few MB at most.
THREAD_TTL_S = 90 * 86400.0
MAX_THREADS = 50_000


class SeenCache:
    """A bounded, time-limited set with an atomic "first time?" check."""

    def __init__(self, max_items: int = 10_000, ttl_s: float = SEEN_TTL_S) -> None:
        self.max_items, self.ttl_s = max_items, ttl_s
        self._items: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """True the first time `key` is offered (within the TTL); False for repeats."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if key in self._items:
                return False
            self._items[key] = now
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            self._expire(time.monotonic())
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self, now: float) -> None:
        while self._items:
            key, at = next(iter(self._items.items()))
            if now - at <= self.ttl_s:
                break
            self._items.popitem(last=False)


class SeenStore:
    """The persistent half: keys in SQLite with their wall-clock time, shared by processes."""

    def __init__(self, path: str | Path, ttl_s: float = SEEN_TTL_S) -> None:
        self.path, self.ttl_s = str(path), ttl_s
        # Short lock wait: this runs on Bolt's listener threads; on timeout memory decides.
        self._conn = sqlite_files.connect(self.path, timeout_s=0.5)
        self._lock = threading.Lock()
        self._inserts = 0
        with self._lock:
            self._conn.execute("PRAGMA synchronous=NORMAL")  # fewer syncs per event; survives a process crash
            self._conn.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS threads (channel TEXT NOT NULL, thread_ts TEXT NOT NULL, "
                               "at REAL NOT NULL, PRIMARY KEY (channel, thread_ts))")
            self._prune()

    def first(self, key: str) -> bool:
        """True when this process is the first to record `key` within the TTL."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO seen VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET at = excluded.at "
                "WHERE seen.at < ?", (key, now, now - self.ttl_s))
            self._inserts += 1
            if self._inserts % _PRUNE_EVERY == 0:
                self._prune()
            return cur.rowcount == 1

    def add_thread(self, channel: str, thread_ts: str) -> None:
        """Record that the bot answers in this thread (again: its time is renewed)."""
        with self._lock:
            self._conn.execute("INSERT INTO threads VALUES (?, ?, ?) ON CONFLICT(channel, thread_ts) "
                               "DO UPDATE SET at = excluded.at", (channel, thread_ts, time.time()))
            self._inserts += 1
            if self._inserts % _PRUNE_EVERY == 0:
                self._prune()

    def has_thread(self, channel: str, thread_ts: str) -> bool:
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM threads WHERE channel = ? AND thread_ts = ? AND at >= ?",
                (channel, thread_ts, time.time() - THREAD_TTL_S)).fetchone() is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _prune(self) -> None:
        now = time.time()
        self._conn.execute("DELETE FROM seen WHERE at < ?", (now - self.ttl_s,))
        self._conn.execute("DELETE FROM threads WHERE at < ?", (now - THREAD_TTL_S,))
        self._conn.execute("DELETE FROM threads WHERE rowid IN "
                           "(SELECT rowid FROM threads ORDER BY at DESC LIMIT -1 OFFSET ?)", (MAX_THREADS,))


def seen_path_for(feedback_db: str) -> str | None:
    """The de-dup file beside the feedback database, in its folder (None for an in-memory database,
    and for a path naming a folder: `/tmp` would have put `/tmp.seen-events.sqlite3` at the root;
    the bot refuses such a feedback_db at start, see app.check_feedback_db)."""
    if feedback_db == ":memory:" or sqlite_files.names_a_folder(feedback_db):
        return None
    db = Path(feedback_db)
    return str(db.with_name(db.stem + ".seen-events.sqlite3"))


class Deduper:
    """The two checks the bot needs: per delivery (event_id) and per message (channel, ts);
    and the threads the bot answered in (`remember_thread`, `bot_thread`)."""

    def __init__(self, max_items: int = 10_000, ttl_s: float = SEEN_TTL_S, *, path: str | None = None) -> None:
        self.events = SeenCache(max_items, ttl_s)
        self.messages = SeenCache(max_items, ttl_s)
        self.threads = SeenCache(max_items, THREAD_TTL_S)  # the file's most recent threads, in memory
        self.store: SeenStore | None = None
        if path:
            try:
                self.store = SeenStore(path, ttl_s)
            except (sqlite3.Error, OSError) as e:
                log.error("seen-events database unusable: de-duplicating in memory only",
                          extra={"path": path, "error": str(e)})

    def new_event(self, event_id: str | None) -> bool:
        """False when this event id was already delivered (a retry or a second connection)."""
        if not event_id:
            return True
        return self.events.first(event_id) and self._first_stored(f"event:{event_id}")

    def claim_message(self, channel: str, ts: str) -> bool:
        """True for the one handler (in any process sharing the file) that gets to answer this message."""
        return self.messages.first((channel, ts)) and self._first_stored(f"message:{channel}:{ts}")

    def remember_thread(self, channel: str, thread_ts: str) -> None:
        """The bot answers in this thread: a later reply there without a mention may be for it.
        Written to the file once per process and thread (a listener-thread write, like a claim)."""
        if not self.threads.first((channel, thread_ts)) or self.store is None:
            return
        try:
            self.store.add_thread(channel, thread_ts)
        except sqlite3.Error as e:  # memory still knows it until the next restart
            log.warning("seen-events database failed: thread kept in memory only", extra={"error": str(e)})

    def bot_thread(self, channel: str, thread_ts: str) -> bool:
        """Whether the bot answered in this thread: in this process, or in any process sharing
        the file (a restart, another replica), within THREAD_TTL_S. Reads no Slack API."""
        if (channel, thread_ts) in self.threads:
            return True
        if self.store is None:
            return False
        try:
            known = self.store.has_thread(channel, thread_ts)
        except sqlite3.Error as e:
            log.warning("seen-events database failed: thread looked up in memory only", extra={"error": str(e)})
            return False
        if known:
            self.threads.first((channel, thread_ts))
        return known

    def close(self) -> None:
        if self.store is not None:
            try:
                self.store.close()
            except sqlite3.Error:
                pass

    def _first_stored(self, key: str) -> bool:
        if self.store is None:
            return True
        try:
            return self.store.first(key)
        except sqlite3.Error as e:  # locked for too long, disk gone: answer rather than drop
            log.warning("seen-events database failed: relying on memory", extra={"error": str(e)})
            return True
