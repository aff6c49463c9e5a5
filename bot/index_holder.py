"""The searcher currently served, swapped atomically by the reloader.

Readers take a reference once per question (the Answerer calls `get()` once and keeps
the searcher for the whole answer), so a swap never changes the index under an answer
in flight; the previous searcher is freed when the last answer using it finishes.

It also says whether the first index is still on its way (`loading`): `flytegpt serve`
connects to Slack before the index is loaded (bot/serve.py), and a question asked in that
window waits for it (routing) instead of being told to come back in a minute.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from flytegpt.ingest.search import HybridSearcher

log = logging.getLogger(__name__)


class IndexHolder:
    def __init__(self, searcher: "HybridSearcher | None" = None) -> None:
        self._searcher = searcher
        self._lock = threading.Lock()
        self._settled = threading.Event()  # set: no first load under way (nothing to wait for)
        self._settled.set()
        self._on_settled: list[Callable[[], None]] = []

    def get(self) -> "HybridSearcher | None":
        return self._searcher

    __call__ = get

    @property
    def version(self) -> str | None:
        s = self._searcher
        return None if s is None else s.version

    @property
    def ready(self) -> bool:
        return self._searcher is not None

    @property
    def loading(self) -> bool:
        """No index yet, and the first load is under way: it may be served in moments."""
        return not self._settled.is_set()

    def expect_load(self) -> None:
        """A first load has begun (serve, before it connects to Slack): until `settle`, questions
        may wait for it. A holder that serves an index already has nothing to wait for."""
        with self._lock:
            if self._searcher is None:
                self._settled.clear()

    def settle(self) -> None:
        """The load is over, with an index (`swap` calls this) or without one (the store has none,
        or it was refused): whoever waits for it (`when_settled`) is told now."""
        with self._lock:
            self._settled.set()
            callbacks, self._on_settled = self._on_settled, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one waiter's failure must not stop the others or the reload
                log.exception("a callback waiting for the index failed")

    def when_settled(self, callback: Callable[[], None]) -> bool:
        """Call `callback` (on the loading thread) once the first load is over; False, and not
        called, when it is over already."""
        with self._lock:
            if self._settled.is_set():
                return False
            self._on_settled.append(callback)
            return True

    def swap(self, searcher: "HybridSearcher") -> "HybridSearcher | None":
        """Serve `searcher` from now on; returns the previous one (callers drop it)."""
        with self._lock:
            old, self._searcher = self._searcher, searcher
        self.settle()
        return old
