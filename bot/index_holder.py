"""The searcher currently served, swapped atomically by the reloader.

Readers take a reference once per question (the Answerer calls `get()` once and keeps
the searcher for the whole answer), so a swap never changes the index under an answer
in flight; the previous searcher is freed when the last answer using it finishes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flytegpt.ingest.search import HybridSearcher


class IndexHolder:
    def __init__(self, searcher: "HybridSearcher | None" = None) -> None:
        self._searcher = searcher
        self._lock = threading.Lock()

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

    def swap(self, searcher: "HybridSearcher") -> "HybridSearcher | None":
        """Serve `searcher` from now on; returns the previous one (callers drop it)."""
        with self._lock:
            old, self._searcher = self._searcher, searcher
        return old
