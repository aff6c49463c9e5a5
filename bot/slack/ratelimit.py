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
