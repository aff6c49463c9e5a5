"""Hot reload: serve a newly published index version without a restart.

An APScheduler job polls the store's LATEST. A new version is opened and verified in the
background (checksums, model id, dimension: `ingest.artifact.open_version`), wrapped in a
HybridSearcher and swapped into the IndexHolder in one assignment. Answers already
running keep the searcher they took, and the old one is freed when they finish. A version
that fails verification is refused, logged and counted, remembered so that it is not
re-downloaded on every poll, and the current index keeps serving.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import TYPE_CHECKING, Any

from flytegpt.ingest.heap import trim_heap

if TYPE_CHECKING:
    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config
    from flytegpt.ingest.embedding import Embedder

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, config: "Config", holder: "IndexHolder", *, metrics: "Metrics | None" = None,
                 embedder: "Embedder | None" = None,
                 interval_s: float | None = None) -> None:
        self.config, self.holder, self.metrics = config, holder, metrics
        self.interval_s = config.bot.reload_interval_s if interval_s is None else interval_s
        self._embedder = embedder
        self._lock = threading.Lock()  # one load at a time (poll job, manual calls)
        self.refused: dict[str, str] = {}  # version -> why
        self._scheduler = None

    @property
    def store(self) -> str:
        return self.config.index.store

    def embedder(self, model_id: str | None = None) -> "Embedder":
        """The query embedder for an index built with `model_id`, loaded once per model.

        The id comes from the version's manifest, not from the config: an index embedded on a
        GPU node with PyTorch gets the matching query embedder here.
        """
        from flytegpt.ingest.embedding import Embedder

        if self._embedder is None or (model_id is not None and self._embedder.model_id != model_id):
            candidate = (Embedder.for_index(model_id, self.config) if model_id
                         else Embedder.from_config(self.config.embeddings))
            candidate.dimension  # loads the model (unless its folder says the dimension): fails here, not later
            self._embedder = candidate
        return self._embedder

    def _embedder_for(self, index) -> "Embedder":
        """The query embedder for `index`; a model that cannot be loaded refuses the version."""
        from flytegpt.ingest.artifact import ArtifactError

        model_id = index.model.model_id
        try:
            embedder = self.embedder(model_id)
            # Load it (and let precision "auto" measure) now, while the previous version still
            # answers: not at the first question, which waited 45 s for it on a slow CPU.
            embedder.embed_query("warm-up")
            return embedder
        except Exception as e:  # noqa: BLE001 - whatever the model library raises
            raise ArtifactError(
                f"version {index.version}: its embedding model {model_id!r} cannot be loaded "
                f"({type(e).__name__}: {e})"
            ) from None

    def check_once(self) -> bool:
        """Load and swap in LATEST if it is new; True when a new version is now served."""
        from flytegpt.ingest.artifact import ArtifactError, open_version, read_latest

        with self._lock:
            try:
                latest = read_latest(self.store)
            except Exception as e:  # noqa: BLE001 - a store hiccup: try again next poll
                log.warning("reading LATEST failed", extra={"store": self.store, "error": str(e)})
                return False
            if latest is None or latest == self.holder.version or latest in self.refused:
                return False
            log.info("new index version found, loading", extra={"version": latest})
            try:
                index = open_version(self.store, latest, cache_dir=self.config.index.cache_dir)
                from flytegpt.ingest.search import HybridSearcher

                embedder = self._embedder_for(index)
                # raises ValueError when the model's dimension does not match the index
                searcher = HybridSearcher(index, embedder, self.config.retrieval)
            except (ArtifactError, ValueError) as e:
                self.refused[latest] = str(e)
                if self.metrics:
                    self.metrics.reloads_refused.inc()
                log.error("index version refused; still serving the previous one",
                          extra={"version": latest, "serving": self.holder.version, "reason": str(e)})
                return False
            except Exception as e:  # noqa: BLE001 - e.g. a network error: count it, retry next poll
                if self.metrics:
                    self.metrics.reloads_refused.inc()
                log.exception("loading index version failed", extra={"version": latest, "error": str(e)})
                return False
            old = self.holder.swap(searcher)
            if self.metrics:
                self.metrics.reloads.inc()
                self.metrics.set_index(latest)
            log.info("index version swapped in", extra={"version": latest,
                                                        "previous": getattr(old, "version", None),
                                                        "chunks": len(index.chunks)})
            models = {index.model.model_id} | ({old.index.model.model_id} if old is not None else set())
            self._prune_cache(latest, getattr(old, "version", None), models)
            del old, index, searcher
            gc.collect()  # the old FAISS index and chunk table go as soon as no answer holds them
            trim_heap()  # so RSS shows the swap
            return True

    def _prune_cache(self, serving: str, previous: str | None, models: set[str]) -> None:
        """Local copies of other versions, and of tuned models they alone used, go once a new
        version serves (what serves is loaded in memory)."""
        from flytegpt.ingest.artifact import prune_cache
        from flytegpt.ingest.store import get_fs, is_local
        from flytegpt.ingest.tuning import prune_local_models

        try:
            if self.config.index.cache_dir:
                prune_cache(self.config.index.cache_dir, {serving, previous} - {None})
            if not is_local(get_fs(self.store)[0]):  # only a remote store's models are copied (local_model)
                prune_local_models(self.config.index.cache_dir, models)
        except OSError as e:  # a full or read-only volume must not stop the reload
            log.warning("pruning the index cache failed", extra={"error": str(e)})

    def start(self, *, run_now: bool = True) -> None:
        """Poll in the background every interval (and once right away)."""
        from datetime import datetime

        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(daemon=True)
        first: dict[str, Any] = {"next_run_time": datetime.now()} if run_now else {}
        self._scheduler.add_job(self.check_once, "interval", seconds=self.interval_s, id="flytegpt-reload",
                                max_instances=1, coalesce=True, **first)
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
