"""Prometheus metrics of the bot, on their own registry (tests can run several bots)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "MADE_UP_CITATIONS"]

# Counted where answers are written (bot/answering/citations.report_made_up), which holds no Metrics:
# one counter for the process, registered on every Metrics registry, as the process figures are. A high
# rate against flytegpt_answers_total{mode="llm"} means the model does not follow the prompt's numbering
# (a weak model, or a prompt it does not follow), not a bad answer now and then.
MADE_UP_CITATIONS = Counter(
    "flytegpt_made_up_citations", "Citation markers in the model's answers that named a source number it was "
    "not given ([7] with 5 sources; [6-9]; the 6-7 of [4-7]): dropped from the text, counted once per answer",
    registry=None)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, open fds, CPU: what an alert on memory growth (a hot reload
        # was measured to leave a few MB behind) or an fd leak needs, without a sidecar
        ProcessCollector(registry=r)
        r.register(MADE_UP_CITATIONS)
        self.made_up_citations = MADE_UP_CITATIONS
        self.questions = Counter("flytegpt_questions", "Questions accepted for answering", ["surface"], registry=r)
        self.answers = Counter("flytegpt_answers", "Answers posted", ["mode"], registry=r)
        self.failures = Counter("flytegpt_failures", "Questions that got no regular answer", ["reason"], registry=r)
        self.latency = Histogram(
            "flytegpt_answer_seconds", "From the event arriving to the answer posted", registry=r,
            buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120),
        )
        # From the event arriving to a worker starting on it, for every question a worker took (also
        # those whose deadline passed in the queue: they get the busy notice): how long askers wait
        # for a free worker. [answer] deadline_s (45 s) counts from the arrival, so
        # the 30, 45 and 60 s buckets show how many waited through most or all of it.
        self.queue_wait = Histogram(
            "flytegpt_queue_wait_seconds", "From the event arriving to a worker starting to answer it",
            registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120),
        )
        self.duplicates = Counter("flytegpt_duplicate_events", "Events dropped as duplicates", ["kind"], registry=r)
        self.busy = Counter("flytegpt_busy", "Questions refused because the worker queue was full", registry=r)
        self.rate_limited = Counter("flytegpt_rate_limited", "Questions refused by the per-user limit", registry=r)
        self.feedback = Counter("flytegpt_feedback", "Feedback votes", ["vote"], registry=r)
        self.feedback_store_errors = Counter(
            "flytegpt_feedback_store_errors", "Feedback database operations that failed (answers were still posted)",
            ["op"], registry=r)
        self.malformed_events = Counter("flytegpt_malformed_events", "Slack events ignored as malformed",
                                        ["type"], registry=r)
        self.restart_notices = Counter("flytegpt_restart_notices",
                                       "Unfinished questions told to ask again at shutdown", registry=r)
        self.streamed = Counter(
            "flytegpt_streamed_answers", "Answers meant to stream, by outcome: streamed; replaced (the final text "
            "rewrote the streamed one); refused (Slack refused streaming, the answer was posted whole)",
            ["outcome"], registry=r)
        self.deferred_posts = Counter(
            "flytegpt_deferred_posts", "Answers Slack refused for a while (bot/slack/delivery.py), by outcome: "
            "kept (to be posted later); landed (posted later); given_up (the window ran out or Slack refused for "
            "good); dropped (still waiting at shutdown)", ["outcome"], registry=r)
        self.deferred_waiting = Gauge("flytegpt_deferred_waiting", "Answers waiting to be posted again", registry=r)
        self.pending = Gauge("flytegpt_worker_pending", "Answers running or queued", registry=r)
        self.index = Info("flytegpt_index", "The index version being served", registry=r)
        self.index_loaded = Gauge("flytegpt_index_loaded", "1 when an index is loaded", registry=r)
        self.reloads = Counter("flytegpt_index_reloads", "Index versions swapped in", registry=r)
        self.reloads_refused = Counter("flytegpt_index_reloads_refused",
                                       "Attempts to load an index version that were refused (failed verification "
                                       "or loading; a refused version is tried again later)", registry=r)
        self.latest = Info("flytegpt_index_latest", "The index version the store's LATEST names (empty when none)",
                           registry=r)
        self.latest_served = Gauge(
            "flytegpt_index_latest_served", "1 when the version the store's LATEST names is the one served; 0 when "
            "it differs (refused, still loading) or LATEST cannot be read", registry=r)
        self.store_latest_ok = Gauge(
            "flytegpt_store_latest_ok", "1 when the store's LATEST was read and names a version; 0 when it is "
            "missing, empty or unreadable, or the version it names is gone from the store (the bot serves from "
            "memory; a restart could not load an index)", registry=r)
        self.index_sources_read = Gauge(
            "flytegpt_index_sources_read_timestamp_seconds", "When the sources of the index served were read "
            "(Unix time; 0 when unknown): how old the answers' knowledge is", registry=r)
        self.store_last_run = Gauge(
            "flytegpt_store_last_run_timestamp_seconds", "When an ingest last finished a publish into the store, "
            "changed or not (<store>/last-run.json; 0 when none is recorded): alert when it is over a day or two "
            "old, as a quiet night writes no new version", registry=r)
        self.socket_connected = Gauge("flytegpt_socket_connected", "1 while the Socket Mode connection is up",
                                      registry=r)

    def set_index(self, version: str | None, sources_read_at: datetime | None = None) -> None:
        self.index.info({"version": version or ""})
        self.index_loaded.set(1 if version else 0)
        self.index_sources_read.set(sources_read_at.timestamp() if sources_read_at else 0)

    def set_last_run(self, finished_at: datetime | None) -> None:
        self.store_last_run.set(finished_at.timestamp() if finished_at else 0)

    def set_latest(self, latest: str | None, *, served: bool, ok: bool) -> None:
        self.latest.info({"version": latest or ""})
        self.latest_served.set(1 if served else 0)
        self.store_latest_ok.set(1 if ok else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
