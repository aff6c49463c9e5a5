"""The re-ingest workflow: collect -> chunk -> tune (GPU) -> plan -> embed (GPU, one task per shard of what
is not embedded yet; none when nothing is new) -> merge -> build -> publish, and its nightly schedule.
With `[tuning] enabled = "off"` the tune task is skipped (a workflow conditional), so no GPU pod is
held for it.

Each task calls one stage of ingest.pipeline, so `flytegpt ingest` and this workflow build
the same index. Caching works in two layers:
- Flyte's task cache: chunk, tune, plan, embed, merge and build are `cache=True`, their inputs are
  content-addressed files (flyte/handoff.py), and their cache versions hash the code and model
  they depend on (flyte/cache.py). An unchanged corpus skips all of them.
- the store's embedding cache, read by `plan` on a CPU: only the chunks whose text has no vector
  yet go to the GPU. A changed night that only removed or moved text starts no GPU embed task at
  all (a workflow conditional), one that added a page embeds that page's chunks.
What is to embed is cut into shards by content (handoff.content_shards): one shard up to
`[embeddings] fanout_above` chunks, else shards of about `fanout_shard_size`, each its own GPU
task (`map_task`) cached by its content, so a new page changes one shard, not every later one,
and a re-run after a failed shard finds the others in Flyte's cache. `merge` puts the cached and
the new vectors together in chunk order.
`collect` is never cached: reading the sources is how the nightly run sees new material.
`publish` is never cached either and runs last: if anything before it fails, LATEST still
names the previous, complete version.

Run locally (CPU):
    python -m flytegpt.flyte ingest_wf --config_path ingest/sample/flytegpt.toml --store /tmp/store
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import NamedTuple

from flytekit import CronSchedule, LaunchPlan, conditional, map_task, task, workflow
from flytekit.types.file import FlyteFile

from flytegpt.flyte import cache, credentials, deploy, resources
from flytegpt.flyte.image import IMAGE
from flytegpt.flyte.retry import recoverable_errors
from flytegpt.flyte.task_logs import task_logging
from flytegpt.flyte.handoff import (
    assemble,
    config_from_settings,
    content_shards,
    from_jsonl,
    layout_rows,
    load_task_config,
    npy_bytes,
    npy_load,
    npz_bytes,
    npz_load,
    read_work_file,
    settings_json,
    to_jsonl,
    write_work_file,
)

log = logging.getLogger(__name__)

# The schedule, set when the workflow is registered (see README "Run it on Flyte"); its config and
# store are flyte/deploy.py's.
NIGHTLY_CRON = os.environ.get("FLYTEGPT_CRON", "0 3 * * *")  # daily, 03:00 UTC


# The GPU tasks (tune, embed): a GPU of the chosen type (flyte/resources.py), cached by content.
gpu_task = functools.partial(
    task, container_image=IMAGE, requests=resources.EMBED, limits=resources.EMBED_LIMITS,
    accelerator=resources.embed_accelerator(), cache=True, timeout=resources.GPU_TIMEOUT,
    retries=resources.GPU_RETRIES, interruptible=resources.INTERRUPTIBLE,
)


class Collected(NamedTuple):
    documents: FlyteFile
    settings: str  # JSON: [index] + [embeddings] of the config, for the later stages
    store: str  # the resolved index store
    source_stats: str  # JSON: per source, its LoadReport (documents read, files skipped)
    read_at: str  # ISO time the sources were read: publish never moves LATEST back to older sources
    tuning: bool  # [tuning] enabled is not "off": the tune task runs (and decides "auto" on its GPU pod)
    keep_versions: int  # [index] keep_versions, for publish (not in `settings`: no cache key depends on it)
    max_shrink: float  # [index] max_shrink, for publish, likewise


class Chunked(NamedTuple):
    chunks: FlyteFile
    skipped: str  # JSON: per source, [[document, reason], ...] the chunkers failed on


class Planned(NamedTuple):
    layout: FlyteFile  # .npz: the cached vectors, and where each chunk's vector is (handoff.layout_rows)
    shards: list[FlyteFile]  # the chunks to embed, one JSON-lines file per shard (none: all cached)
    model: str  # JSON: ingest.models.ModelInfo of the model the vectors are for
    to_embed: int  # chunks (distinct texts) the GPU embeds: 0 skips the embed step


class Embedded(NamedTuple):
    vectors: FlyteFile
    model: str  # JSON: ingest.models.ModelInfo of the embedder
    embed_stats: str  # JSON: embeddings computed / reused


@task(
    container_image=IMAGE,
    requests=resources.COLLECT,
    retries=2,
    timeout=resources.COLLECT_TIMEOUT,
    secret_requests=[credentials.SLACK_BOT_TOKEN],
)
def collect(config_path: str, store: str) -> Collected:
    """Read every source (git clones, Slack API since the last cursor, docs, code) into documents.

    The store is checked first, as `flytegpt ingest` does: the schedules' placeholder is refused,
    and a store that cannot be written (a missing or mistyped bucket, no credentials) stops the run
    before any source is read, and without creating a bucket (ingest.store.check_writable).
    Transient failures (a git server that hung up, Slack's 5xx, a store hiccup) are retried by Flyte.
    """
    task_logging()
    with recoverable_errors():
        return _collect(config_path, store)


def _collect(config_path: str, store: str) -> Collected:
    from datetime import datetime, timezone

    from flytegpt.ingest import pipeline
    from flytegpt.ingest.store import check_writable

    read_at = datetime.now(timezone.utc).isoformat()
    config = load_task_config(config_path, store)
    deploy.check_store(config.index.store)
    if not config.sources:
        raise pipeline.no_chunks_error(config)
    check_writable(config.index.store)
    with credentials.secrets_in_env(credentials.SLACK_BOT_TOKEN):  # for slack_api sources
        documents, reports = pipeline.collect(config, progress=False)
    stats = {name: r.to_dict() for name, r in reports.items()}
    log.info("collected %d documents: %s", len(documents),
             {name: r.documents for name, r in reports.items()})
    path = write_work_file(
        config.index.store, "documents", to_jsonl(d.to_dict() for d in documents), ".jsonl"
    )
    return Collected(FlyteFile(path), settings_json(config), config.index.store, json.dumps(stats), read_at,
                     config.tuning.enabled != "off", config.index.keep_versions, config.index.max_shrink)


@task(
    container_image=IMAGE,
    requests=resources.CHUNK,
    cache=True,
    cache_version=cache.CHUNK_VERSION,
    timeout=resources.CHUNK_TIMEOUT,
)
def chunk(documents: FlyteFile, store: str) -> Chunked:
    """Split documents into chunks (headings for prose, functions/classes for code, whole threads).

    Unchanged documents take their chunks from the store's chunk cache, as `flytegpt ingest` does.
    A document the chunkers fail on is left out and returned in `skipped`, for the manifest's
    per-source counts (as `flytegpt ingest` records it beside the files its sources skipped).
    """
    task_logging()
    from flytegpt.ingest import pipeline
    from flytegpt.ingest.models import Document, LoadReport

    docs = [Document.from_dict(d) for d in from_jsonl(read_work_file(documents))]
    reports = {d.source: LoadReport(0) for d in docs}
    chunks, _ = pipeline.chunk_all(docs, store, reports)
    skipped = {name: [list(s) for s in r.skipped] for name, r in reports.items() if r.skipped}
    for name, items in skipped.items():
        log.warning("%s: %d documents could not be chunked: %s", name, len(items),
                    "; ".join(f"{n}: {why}" for n, why in items[:10]))
    if not chunks:
        raise ValueError("no chunks: every source was empty or skipped; nothing to publish")
    log.info("%d chunks", len(chunks))
    path = write_work_file(store, "chunks", to_jsonl(c.to_dict() for c in chunks), ".jsonl")
    return Chunked(FlyteFile(path), json.dumps(skipped))


@gpu_task(cache_version=cache.TUNE_VERSION)
def tune(chunks: FlyteFile, settings: str) -> str:
    """Fine-tune the embedding model on the corpus's own pairs when `[tuning] enabled` asks ("auto":
    on a GPU, i.e. on this task's pod), store it, and return ingest.tuning's report as JSON ("" when
    not tuning). A stored model that still covers the corpus is reused (ingest/tuning.py)."""
    task_logging()
    with recoverable_errors():  # a store hiccup reading the chunks or saving the model: retried
        return _tune(chunks, settings)


def _tune(chunks: FlyteFile, settings: str) -> str:
    from flytegpt.ingest import pipeline
    from flytegpt.ingest.models import Chunk

    config = config_from_settings(settings)
    items = [Chunk.from_dict(c) for c in from_jsonl(read_work_file(chunks))]
    report = pipeline.tune(items, config, progress=False)
    if report is None:
        return ""
    log.info("tuning: %s", report.describe())
    return json.dumps(report.to_dict())


@task(container_image=IMAGE, requests=resources.NOOP, timeout=resources.PUBLISH_TIMEOUT)
def untuned() -> str:
    """The tune step's output when tuning is off: no report, the base model embeds."""
    task_logging()
    return ""


@task(
    container_image=IMAGE,
    requests=resources.BUILD,
    cache=True,
    cache_version=cache.PLAN_VERSION,
    retries=2,
    timeout=resources.BUILD_TIMEOUT,
)
def plan(chunks: FlyteFile, settings: str, tuned: str = "") -> Planned:
    """On a CPU: which chunks the store's embedding cache has vectors for (with the tuned model when
    `tuned` names one), and the rest cut into shards by content for the GPU embed step.

    The cached vectors are copied into the plan's layout file: merge takes them from there, so a plan
    served from Flyte's cache stays whole even if the embedding cache changes meanwhile. A text that
    occurs in several chunks is embedded once.
    """
    task_logging()
    with recoverable_errors():  # a store hiccup (work files, the embedding cache): retried
        return _plan(chunks, settings, tuned)


def _plan(chunks: FlyteFile, settings: str, tuned: str) -> Planned:
    import numpy as np

    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.embedding_cache import EmbeddingCache
    from flytegpt.ingest.models import Chunk, ModelInfo
    from flytegpt.ingest.tuning import TuneReport

    config = config_from_settings(settings)
    items = [Chunk.from_dict(c) for c in from_jsonl(read_work_file(chunks))]
    # The model the embed task will load (pipeline.embedder_for), without loading it here. A tuned
    # model is the base model trained in place (ingest/tuning.py): the same dimension, which the base
    # model's folder says. merge checks it against what the GPU tasks report.
    base = Embedder.from_config(config.embeddings)
    report = TuneReport.from_dict(json.loads(tuned)) if tuned else None
    model = ModelInfo(model_id=report.model_id if report and not report.refused else base.model_id,
                      dimension=base.dimension, normalized=base.normalized)
    keys = [c.content_key(model.model_id) for c in items]
    cache = EmbeddingCache(config.index.store, model.model_id, model.dimension)
    found, vectors = cache.gather(keys)
    # This task sees the whole corpus (the embed tasks one shard each): past COMPACT_ABOVE shards it
    # merges them, leaving out month-old vectors of text no longer in it.
    cache.flush(keep=keys)
    cached = set(found)
    first: dict[str, Chunk] = {}  # content key -> the first chunk with that text, for what is not cached
    for key, item in zip(keys, items):
        if key not in cached:
            first.setdefault(key, item)
    embeddings = config.embeddings
    groups = content_shards(first, embeddings.fanout_above, embeddings.fanout_shard_size)
    shards = [FlyteFile(write_work_file(config.index.store, "chunk-shards",
                                        to_jsonl(first[key].to_dict() for key in group), ".jsonl"))
              for group in groups]
    rows = layout_rows(keys, found, groups)
    sizes = np.array([len(found), *map(len, groups)], dtype=np.int64)
    layout = write_work_file(config.index.store, "embed-plans", npz_bytes(found=vectors, rows=rows, sizes=sizes),
                             ".npz")
    log.info("%d chunks: %d distinct texts cached, %d to embed in %d shard(s)", len(items), len(found),
             len(first), len(groups))
    return Planned(FlyteFile(layout), shards, json.dumps(model.to_dict()), len(first))


@task(container_image=IMAGE, requests=resources.NOOP, timeout=resources.PUBLISH_TIMEOUT)
def all_cached() -> list[str]:
    """The embed step's output when the plan found every vector cached: no shard, no GPU pod."""
    task_logging()
    return []


@gpu_task(cache_version=cache.EMBED_VERSION)
def embed(chunks: FlyteFile, settings: str, tuned: str = "") -> str:
    """Embed one shard (chunks `plan` found no vector for) on the GPU when the pod has one (device
    "auto"), with the tuned model when `tuned` (the tune task's report) names one. The new vectors
    go to the store's embedding cache as they are made (pipeline.embed_chunks).

    Returns JSON (a mapped task has one output): the vectors' file, the model, the counts.
    """
    task_logging()
    with recoverable_errors():  # a store hiccup (work files, the embedding cache): retried
        return _embed(chunks, settings, tuned)


def _embed(chunks: FlyteFile, settings: str, tuned: str) -> str:
    from flytegpt.ingest import pipeline
    from flytegpt.ingest.models import Chunk
    from flytegpt.ingest.tuning import TuneReport

    config = config_from_settings(settings)
    items = [Chunk.from_dict(c) for c in from_jsonl(read_work_file(chunks))]
    embedder = pipeline.embedder_for(config, TuneReport.from_dict(json.loads(tuned)) if tuned else None)
    vectors, stats = pipeline.embed_chunks(items, config, embedder=embedder, progress=False, whole_corpus=False)
    how = {"device": embedder.device, **embedder.describe()}
    log.info("embedded %d chunks: %s, %s", len(items), stats, how)
    path = write_work_file(config.index.store, "vectors", npy_bytes(vectors), ".npy")
    return json.dumps({"vectors": path, "model": pipeline.model_info(embedder).to_dict(), "stats": {**stats, **how}})


@task(
    container_image=IMAGE,
    requests=resources.BUILD,
    cache=True,
    cache_version=cache.PLAN_VERSION,
    timeout=resources.BUILD_TIMEOUT,
)
def merge(layout: FlyteFile, parts: list[str], model: str, store: str) -> Embedded:
    """The vectors of every chunk in chunk order: the cached ones from the plan, the new ones from the
    shards' embed tasks (`parts`, in shard order; none when all were cached). Counts: `computed` is
    what the GPU tasks embedded, `reused` the rest."""
    task_logging()
    planned = npz_load(read_work_file(layout))
    sizes = planned["sizes"].tolist()
    shards = [json.loads(p) for p in parts]
    if len(shards) != len(sizes) - 1:
        raise ValueError(f"{len(shards)} embedded shards for a plan of {len(sizes) - 1}")
    for shard in shards:
        if shard["model"] != json.loads(model):
            raise ValueError(f"a shard was embedded with {shard['model']}, the plan is for {model}")
    blocks = [planned.pop("found")]
    for size, shard in zip(sizes[1:], shards):
        block = npy_load(read_work_file(shard["vectors"]))
        if len(block) != size:
            raise ValueError(f"a shard of {size} chunks came back with {len(block)} vectors")
        blocks.append(block)
    rows = planned["rows"]
    matrix = assemble(rows, blocks)
    del blocks
    vectors = FlyteFile(write_work_file(store, "vectors", npy_bytes(matrix), ".npy"))
    computed = sum(s["stats"]["computed"] for s in shards)
    stats = {**(shards[0]["stats"] if shards else {}), "computed": computed, "reused": len(rows) - computed,
             "shards": len(shards), "cached": sizes[0], "to_embed": sum(sizes[1:])}
    return Embedded(vectors, model, json.dumps(stats))


@task(
    container_image=IMAGE,
    requests=resources.BUILD,
    cache=True,
    cache_version=cache.BUILD_VERSION,
    timeout=resources.BUILD_TIMEOUT,
    # Counters describe how the inputs were made, not what they are: they must not break a cache hit.
    cache_ignore_input_vars=("source_stats", "embed_stats", "sources_read_at", "chunk_skips"),
)
def build(
    chunks: FlyteFile, vectors: FlyteFile, model: str, settings: str, source_stats: str, embed_stats: str,
    sources_read_at: str, chunk_skips: str = "{}",
) -> str:
    """Write a complete index version (dense + keyword + chunk table + manifest). Not yet served."""
    task_logging()
    from datetime import datetime

    from flytegpt.ingest import pipeline
    from flytegpt.ingest.models import Chunk, LoadReport, ModelInfo

    config = config_from_settings(settings)
    items = [Chunk.from_dict(c) for c in from_jsonl(read_work_file(chunks))]
    matrix = npy_load(read_work_file(vectors))
    reports = {name: LoadReport.from_dict(r) for name, r in json.loads(source_stats).items()}
    for name, failed in json.loads(chunk_skips).items():  # the documents the chunk task could not split
        if name in reports:
            for document, reason in failed:
                reports[name].skip(document, reason)
    stats = {"embeddings": json.loads(embed_stats), "sources": pipeline.source_stats(reports, items)}
    version = pipeline.build_version(
        items, matrix, config, embedder_info=ModelInfo.from_dict(json.loads(model)), stats=stats,
        sources_read_at=datetime.fromisoformat(sources_read_at),
    )
    log.info("built index version %s in %s", version, config.index.store)
    return version


@task(container_image=IMAGE, requests=resources.PUBLISH, retries=resources.PUBLISH_RETRIES,
      timeout=resources.PUBLISH_TIMEOUT)
def publish(version: str, store: str, sources_read_at: str = "", keep_versions: int = 0,
            max_shrink: float = -1.0) -> str:
    """Move LATEST to `version` after verifying it, then prune old versions ([index] keep_versions);
    the bots polling LATEST then hot-reload it. Returns the version LATEST names.

    `sources_read_at`: when this run read its sources. A cached `build` returns the version an
    earlier run made of the same content; it is as new as tonight's sources. When LATEST already
    names `version` (an unchanged corpus), LATEST is written again and nothing is pruned
    (ingest.artifact.publish): a no-op run never deletes the rollback target.

    A run overlapping another (the schedule and a manual launch) whose sources are older than those
    LATEST names was superseded: it succeeds, returning LATEST's version, rather than failing a run
    nothing is wrong with (`flytegpt ingest` keeps the error). Every successful publish, changed or
    not, writes `<store>/last-run.json` (ingest.artifact.LAST_RUN), so a stale index can be told from a
    quiet week. A publish lock left by a killed pod is retried by Flyte: see PUBLISH_RETRIES.
    """
    task_logging()
    with recoverable_errors():
        return _publish(version, store, sources_read_at, keep_versions, max_shrink)


def _publish(version: str, store: str, sources_read_at: str, keep_versions: int, max_shrink: float) -> str:
    from datetime import datetime

    from flytegpt.ingest.artifact import (ArtifactError, SupersededError, latest_or_none, list_versions,
                                          record_last_run)
    from flytegpt.ingest.artifact import publish as publish_version
    from flytegpt.ingest.config import IndexConfig

    if version not in list_versions(store):
        # A cached `build` can return a version that was pruned since; say how to recover.
        raise ArtifactError(
            f"index version {version} is not in {store} (pruned or deleted after it was built); "
            "re-run with the cache overwritten (python -m flytegpt.flyte ingest_wf --overwrite-cache, or `overwrite cache` in the UI)"
        )
    keep = keep_versions or IndexConfig().keep_versions
    read_at = datetime.fromisoformat(sources_read_at) if sources_read_at else None
    before = latest_or_none(store)
    try:
        publish_version(store, version, keep_versions=keep, sources_read_at=read_at,
                        max_shrink=max_shrink if max_shrink >= 0 else IndexConfig().max_shrink)
    except SupersededError as e:
        latest = latest_or_none(store)
        if latest is None:  # LATEST vanished meanwhile: nothing to hand on, the refusal stands
            raise
        log.warning("superseded: another run published %s from newer sources while this one ran; %s stays "
                    "unpublished and the run returns %s (%s)", latest, version, latest, e)
        record_last_run(store, latest, sources_read_at, changed=False)
        return latest
    log.info("published %s in %s", version, store)
    record_last_run(store, version, sources_read_at, changed=before != version)
    return version


@workflow
def ingest_wf(config_path: str = deploy.CONFIG, store: str = deploy.STORE) -> str:
    """Rebuild the index from the configured sources and publish it; returns the version id.

    `config_path`: a FlyteGPT TOML file in the image (or an fsspec URL); `store`: the index
    store (a bucket URL on a cluster), overriding the config's [index] store when not empty.
    """
    collected = collect(config_path=config_path, store=store)
    chunked = chunk(documents=collected.documents, store=collected.store)
    chunks = chunked.chunks
    tuned = (
        conditional("tuning")
        .if_(collected.tuning.is_true())
        .then(tune(chunks=chunks, settings=collected.settings))
        .else_()
        .then(untuned())
    )
    planned = plan(chunks=chunks, settings=collected.settings, tuned=tuned)
    # Only what the embedding cache lacks goes to the GPU; with nothing to embed no GPU pod starts.
    parts = (
        conditional("embedding")
        .if_(planned.to_embed > 0)
        .then(map_task(functools.partial(embed, settings=collected.settings, tuned=tuned))(chunks=planned.shards))
        .else_()
        .then(all_cached())
    )
    embedded = merge(layout=planned.layout, parts=parts, model=planned.model, store=collected.store)
    version = build(
        chunks=chunks,
        vectors=embedded.vectors,
        model=embedded.model,
        settings=collected.settings,
        source_stats=collected.source_stats,
        embed_stats=embedded.embed_stats,
        sources_read_at=collected.read_at,
        chunk_skips=chunked.skipped,
    )
    return publish(version=version, store=collected.store, sources_read_at=collected.read_at,
                   keep_versions=collected.keep_versions, max_shrink=collected.max_shrink)


nightly_reingest = LaunchPlan.get_or_create(
    workflow=ingest_wf,
    name="nightly_reingest",
    schedule=CronSchedule(schedule=NIGHTLY_CRON),
    fixed_inputs={"config_path": deploy.CONFIG, "store": deploy.SCHEDULE_STORE},
    notifications=deploy.notifications(),  # FLYTEGPT_NOTIFY: a failed night is heard of
)
