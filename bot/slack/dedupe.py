"""Exactly one answer per user message.

Socket Mode re-sends an event when an ack is late, Slack may deliver it on any of the
app's open connections (or to another replica's), and one message can arrive both as
`app_mention` and as `message`. Bolt does not filter any of that, so we remember what we
have seen: event ids, and the (channel, ts) of every message we decided to answer.
The memory is bounded in size and time (Slack stops retrying after minutes).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Hashable


class SeenCache:
    """A bounded, time-limited set with an atomic "first time?" check."""

    def __init__(self, max_items: int = 10_000, ttl_s: float = 3600.0) -> None:
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


class Deduper:
    """The two checks the bot needs: per delivery (event_id) and per message (channel, ts)."""

    def __init__(self, max_items: int = 10_000, ttl_s: float = 3600.0) -> None:
        self.events = SeenCache(max_items, ttl_s)
        self.messages = SeenCache(max_items, ttl_s)

    def new_event(self, event_id: str | None) -> bool:
        """False when this event id was already delivered (a retry or a second connection)."""
        return True if not event_id else self.events.first(event_id)

    def claim_message(self, channel: str, ts: str) -> bool:
        """True for the one handler that gets to answer this message."""
        return self.messages.first((channel, ts))
