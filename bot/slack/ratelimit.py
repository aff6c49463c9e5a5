"""Per-user question rate limit: one person cannot monopolise the model or the workers."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class RateLimiter:
    """Sliding window: at most `limit` questions per user per `window_s` seconds.

    `limit <= 0` disables the limit. Memory is bounded by `max_users` (least recently
    active users are forgotten first).
    """

    def __init__(self, limit: int, window_s: float = 60.0, max_users: int = 10_000) -> None:
        self.limit, self.window_s, self.max_users = limit, window_s, max_users
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, user: str) -> float:
        """0.0 when allowed (and counted); otherwise seconds until the user may ask again."""
        if self.limit <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            hits = self._hits.pop(user, None) or deque()
            while hits and now - hits[0] >= self.window_s:
                hits.popleft()
            self._hits[user] = hits
            while len(self._hits) > self.max_users:
                self._hits.popitem(last=False)
            if len(hits) >= self.limit:
                return max(0.1, self.window_s - (now - hits[0]))
            hits.append(now)
            return 0.0

    def release(self, user: str) -> None:
        """Give back the question `check` just counted: it was not taken after all (the answer
        pool was full), and a refusal the user did not cause must not cost them a question."""
        with self._lock:
            hits = self._hits.get(user)
            if hits:
                hits.pop()


class InFlightLimit:
    """At most `limit` questions per user in flight (running or queued on the answer pool).

    The per-minute limit counts questions but not how many wait at once: one user's burst of
    [bot] user_rate_limit questions sat in the shared FIFO queue ahead of everyone else's, and a
    few accounts filled it. Each question taken holds a slot, keyed by the question
    (its `id`), until its answer job ends however it ends; `release` of a key not held is a no-op,
    so a slot is given back exactly once. Memory is bounded by the questions in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._held: dict[int, str] = {}  # question key -> its user
        self._per_user: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, user: str, key: int) -> bool:
        """True when the user had fewer than `limit` in flight (the slot is now held under `key`)."""
        with self._lock:
            if key in self._held:
                return True
            n = self._per_user.get(user, 0)
            if n >= self.limit:
                return False
            self._held[key] = user
            self._per_user[user] = n + 1
            return True

    def release(self, key: int) -> None:
        """Give back the slot held under `key` (the job ended, or the question was not queued)."""
        with self._lock:
            user = self._held.pop(key, None)
            if user is None:
                return
            n = self._per_user.get(user, 1) - 1
            if n > 0:
                self._per_user[user] = n
            else:
                self._per_user.pop(user, None)

    def in_flight(self, user: str) -> int:
        """The user's questions running or queued now."""
        with self._lock:
            return self._per_user.get(user, 0)
