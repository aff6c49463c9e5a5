"""Hot reload: serve a newly published index version without a restart.

An APScheduler job polls the store's LATEST. A new version is opened and verified in the
background (checksums, model id, dimension: `ingest.artifact.open_version`), wrapped in a
HybridSearcher and swapped into the IndexHolder in one assignment. Answers already
running keep the searcher they took, and the old one is freed when they finish. A version
that fails verification is refused, logged and counted, and the current index keeps serving.

A refusal is not final: LATEST may have been written before the version's files arrived (a
copy or sync in the wrong order), or a download may have been cut short. The version is
tried again as soon as its manifest or LATEST changes (`flytegpt publish V` re-writes LATEST),
and otherwise after a backoff (RETRY_FIRST_POLLS poll intervals, doubling up to RETRY_CAP_S),
so that it is not re-downloaded on every poll, RETRY_MAX_UNCHANGED times in all: a version still
refused then is damaged for good, and each try re-hashes (on S3 re-downloads) its files, 144 times
a day at the cap for a version nobody fixes. A refusal is logged once per distinct reason.

What the store says is kept for /readyz and the metrics: the version LATEST names (and
whether it is the one served), and whether LATEST can be read at all. A store whose LATEST
disappeared (the store or the served version deleted) keeps the bot serving from memory, with
one warning, since the next restart could not load an index.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from flytegpt.ingest.heap import trim_heap

if TYPE_CHECKING:
    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config
    from flytegpt.ingest.embedding import Embedder

log = logging.getLogger(__name__)

RETRY_FIRST_POLLS = 2  # a refused version is tried again after this many poll intervals...
RETRY_CAP_S = 600.0  # ...doubling each time up to this (or one poll interval, if longer)
RETRY_MAX_UNCHANGED = 6  # tries of a version whose LATEST and manifest never changed (about 30 min at a 60 s poll)
_STAMP_KEYS = ("size", "mtime", "ino", "LastModified", "ETag", "etag", "updated", "md5Hash", "generation")
UNKNOWN = "unknown"  # a stamp the store could not give (out of reach): neither "gone" nor "changed"


def stamps_differ(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    """Whether the store describes LATEST or the manifest differently; a part it could not
    describe either time is no evidence of a change (a flaky store must not trigger reloads)."""
    return any(x != y for x, y in zip(a, b) if UNKNOWN not in (x, y))


@dataclass
class _Refusal:
    reason: str
    stamp: Any  # (LATEST, manifest) as the store described them when the version was refused
    attempts: int
    retry_at: float


class Reloader:
    def __init__(self, config: "Config", holder: "IndexHolder", *, metrics: "Metrics | None" = None,
                 embedder: "Embedder | None" = None,
                 interval_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.holder, self.metrics = config, holder, metrics
        self.interval_s = config.bot.reload_interval_s if interval_s is None else interval_s
        self._embedder = embedder
        self._clock = clock
        self._lock = threading.Lock()  # one load at a time (poll job, manual calls)
        self._refusals: dict[str, _Refusal] = {}
        self.latest: str | None = None  # what LATEST named at the last check
        self.store_problem: str | None = None  # why the store has no usable LATEST, None when it has
        self._warned: tuple[str, str | None] | None = None  # the store problem last logged
        self._load_failure: tuple[str, str] | None = None  # (version, error type) last logged with a traceback
        self._scheduler = None

    @property
    def refused(self) -> dict[str, str]:
        """Each refused version and why (its last refusal)."""
        return {version: r.reason for version, r in self._refusals.items()}

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
        """Load and swap in LATEST if it is new; True when a new version is now served.

        However it ends, the holder's first load is then over (`IndexHolder.settle`): questions
        waiting for the first index are answered, or told there is none, at once."""
        try:
            return self._check()
        finally:
            self.holder.settle()

    def _check(self) -> bool:
        from flytegpt.ingest.artifact import ArtifactError, content_time, open_version, read_latest, unpublished_reason

        with self._lock:
            self._read_last_run()
            try:
                latest = read_latest(self.store)
            except Exception as e:  # noqa: BLE001 - a store hiccup or a garbage LATEST: try again next poll
                self._store_state(None, f"reading LATEST in {self.store} failed: {e}")
                return False
            if latest is None:
                try:
                    why = unpublished_reason(self.store)
                except Exception as e:  # noqa: BLE001
                    why = f"LATEST cannot be read ({e})"
                self._store_state(None, f"{why} in {self.store}")
                return False
            if latest == self.holder.version:
                manifest = self._stamp(latest)[1]
                if manifest == UNKNOWN:  # the look-up failed, not the version: what was said stands
                    return False
                self._store_state(latest, f"version {latest} named by LATEST is gone from {self.store}"
                                  if manifest is None else None)
                return False
            self._store_state(latest, None)
            refusal = self._refusals.get(latest)
            stamp = self._stamp(latest)  # before opening: a change while it loads is seen next time
            if refusal is not None:
                changed = stamps_differ(stamp, refusal.stamp)
                if not changed and (self._clock() < refusal.retry_at or refusal.attempts >= RETRY_MAX_UNCHANGED):
                    return False
                why = "its manifest or LATEST changed" if changed else "backoff elapsed"
                log.info("trying a refused index version again", extra={"version": latest, "why": why,
                                                                         "attempt": refusal.attempts + 1})
            else:
                log.info("new index version found, loading", extra={"version": latest})
            try:
                index = open_version(self.store, latest, cache_dir=self.config.index.cache_dir)
                from flytegpt.ingest.search import HybridSearcher

                embedder = self._embedder_for(index)
                # raises ValueError when the model's dimension does not match the index
                searcher = HybridSearcher(index, embedder, self.config.retrieval)
            except (ArtifactError, ValueError) as e:
                self._refuse(latest, str(e), stamp)
                return False
            except Exception as e:  # noqa: BLE001 - e.g. a network error: count it, retry next poll
                if self.metrics:
                    self.metrics.reloads_refused.inc()
                failure = (latest, type(e).__name__)
                if failure != self._load_failure:  # the traceback once; a store outage is not one per poll
                    log.exception("loading index version failed", extra={"version": latest, "error": str(e)})
                else:
                    log.warning("loading index version failed again; retrying at the next poll",
                                extra={"version": latest, "error": str(e)})
                self._load_failure = failure
                return False
            old = self.holder.swap(searcher)
            self._load_failure = None
            self._refusals.pop(latest, None)
            if self.metrics:
                self.metrics.reloads.inc()
                self.metrics.set_index(latest, content_time(index.manifest))
            self._publish_state()
            log.info("index version swapped in", extra={"version": latest,
                                                        "previous": getattr(old, "version", None),
                                                        "chunks": len(index.chunks)})
            models = {index.model.model_id} | ({old.index.model.model_id} if old is not None else set())
            self._prune_cache(latest, getattr(old, "version", None), models)
            del old, index, searcher
            gc.collect()  # the old FAISS index and chunk table go as soon as no answer holds them
            trim_heap()  # so RSS shows the swap
            return True

    def _refuse(self, version: str, reason: str, stamp: Any) -> None:
        """Remember why `version` was refused and when to try it again; log a reason once."""
        previous = self._refusals.get(version)
        attempts = previous.attempts + 1 if previous else 1
        base = max(self.interval_s, 1.0) * RETRY_FIRST_POLLS
        delay = min(base * 2 ** (attempts - 1), max(RETRY_CAP_S, self.interval_s))
        self._refusals[version] = _Refusal(reason, stamp, attempts, self._clock() + delay)
        if self.metrics:
            self.metrics.reloads_refused.inc()
        extra = {"version": version, "serving": self.holder.version, "reason": reason,
                 "attempt": attempts, "retry_in_s": round(delay)}
        if previous is None or previous.reason != reason:
            log.error("index version refused; still serving the previous one "
                      "(tried again when it changes, or later)", extra=extra)
        elif attempts >= RETRY_MAX_UNCHANGED:  # said once: the log must not go quiet for good without a word
            log.warning("index version refused %d times for the same reason; no more tries until LATEST or its "
                        "manifest changes (flytegpt publish)", attempts, extra=extra)
        else:
            log.debug("index version refused again, same reason", extra=extra)
        self._publish_state()

    def _stamp(self, version: str) -> tuple[Any, Any]:
        """How the store describes LATEST and `version`'s manifest (size, mtime, etag...), None
        for a missing file, UNKNOWN when the store could not be asked: a change means the
        version is worth another try."""
        from flytegpt.ingest.artifact import LATEST, MANIFEST
        from flytegpt.ingest.store import get_fs, join

        try:
            fs, root = get_fs(self.store)
        except Exception:  # noqa: BLE001 - read_latest worked, so this hardly fails
            return (UNKNOWN, UNKNOWN)

        def one(path: str) -> Any:
            try:
                fs.invalidate_cache(path.rsplit("/", 1)[0])
                info = fs.info(path)
            except FileNotFoundError:
                return None
            except Exception:  # noqa: BLE001 - out of reach, refused, timed out: nothing known
                return UNKNOWN
            return tuple((k, str(info[k])) for k in _STAMP_KEYS if info.get(k) is not None)

        return one(join(root, LATEST)), one(join(root, version, MANIFEST))

    def _read_last_run(self) -> None:
        """The store's last-run.json for the freshness gauge: one small read per poll."""
        if not self.metrics:
            return
        from flytegpt.ingest.artifact import last_run_time

        try:
            self.metrics.set_last_run(last_run_time(self.store))
        except Exception as e:  # noqa: BLE001 - a store hiccup: the gauge keeps its value
            log.debug("reading last-run.json failed: %s", e)

    def _store_state(self, latest: str | None, problem: str | None) -> None:
        """Record what LATEST says; warn once (again only when it changes) when it is unusable."""
        self.latest, self.store_problem = latest, problem
        serving = self.holder.version
        key = None if problem is None else (problem, serving)
        if key != self._warned:
            if problem is not None and serving is not None:
                log.warning(f"{problem}; still serving {serving} from memory (a restart could not load it)",
                            extra={"store": self.store, "serving": serving})
            elif problem is not None:
                log.warning(f"{problem}; no index to serve", extra={"store": self.store})
            elif self._warned is not None:
                log.info("LATEST in the index store is readable again", extra={"store": self.store,
                                                                               "latest": latest})
            self._warned = key
        self._publish_state()

    def _publish_state(self) -> None:
        if self.metrics:
            self.metrics.set_latest(self.latest, served=self.latest is not None and self.latest == self.holder.version,
                                    ok=self.store_problem is None)

    def status_note(self) -> str:
        """What /readyz adds after `ok VERSION`: empty when LATEST names the version served."""
        serving = self.holder.version
        if self.store_problem is not None:
            return f"; {self.store_problem} (serving from memory; a restart could not load an index)"
        if self.latest is None or self.latest == serving:
            return ""
        refusal = self._refusals.get(self.latest)
        if refusal is None:
            return f"; LATEST names {self.latest}, not served yet (loading)"
        if refusal.attempts >= RETRY_MAX_UNCHANGED:
            return (f"; LATEST names {self.latest}, which is not served: refused {refusal.attempts} times "
                    f"({refusal.reason}); tried again when LATEST or its manifest changes (flytegpt publish)")
        wait = max(0, round(refusal.retry_at - self._clock()))
        return (f"; LATEST names {self.latest}, which is not served: refused ({refusal.reason}); "
                f"tried again when it changes or in {wait} s")

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
        """Poll in the background every interval (and once right away: the holder then expects
        that first load, and questions asked meanwhile wait for it)."""
        from datetime import datetime

        from apscheduler.schedulers.background import BackgroundScheduler

        if run_now:
            self.holder.expect_load()
        self._scheduler = BackgroundScheduler(daemon=True)
        first: dict[str, Any] = {"next_run_time": datetime.now()} if run_now else {}
        self._scheduler.add_job(self.check_once, "interval", seconds=self.interval_s, id="flytegpt-reload",
                                max_instances=1, coalesce=True, **first)
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
