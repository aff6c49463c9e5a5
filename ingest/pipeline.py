"""The ingest pipeline: sources -> documents -> chunks -> embeddings -> a published index version.

Each stage is a plain function so the Flyte workflow can run them as separate (cached) tasks
and `flytegpt ingest` can run them in one process. Only `publish` moves `LATEST`, and it
runs last: a failure anywhere before it leaves the served version untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Iterator

from flytegpt.ingest.config import Config, SourceConfig
from flytegpt.ingest.heap import trim_heap
from flytegpt.ingest.models import Chunk, Document, LoadReport, ModelInfo, content_key

if TYPE_CHECKING:
    import numpy as np

    from flytegpt.ingest.keyword import KeywordIndex
    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.tuning import TuneReport

log = logging.getLogger(__name__)


@dataclass
class SourceSummary:
    name: str
    kind: str
    documents: int = 0
    chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # indexed, but to be fixed (LoadReport.notes)
    left_out: int = 0  # files its include / exclude / skip_tests rules left out (LoadReport.left_out)


@dataclass
class IngestSummary:
    """What an ingest did, for the closing summary and for benchmarks."""

    version: str
    store: str
    sources: list[SourceSummary]
    embeddings_computed: int
    embeddings_reused: int
    timings: dict[str, float]  # seconds per stage
    model_id: str
    device: str
    precision: str = ""  # what the model computed in ("" when nothing was embedded)
    backend: str = ""  # what ran the model: openvino or torch ("" when nothing was embedded)
    autotune: dict | None = None  # what "auto" measured and chose (ingest/autotune.py), if it did
    tuning: dict | None = None  # ingest/tuning.py's TuneReport, when the model was tuned (or reused)
    # the index is the one LATEST already named: no new version written, nothing published or pruned
    unchanged: bool = False

    @property
    def chunks(self) -> int:
        return sum(s.chunks for s in self.sources)

    @property
    def total_seconds(self) -> float:
        return sum(self.timings.values())

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "store": self.store,
            "chunks": self.chunks,
            "sources": [s.__dict__ for s in self.sources],
            "embeddings_computed": self.embeddings_computed,
            "embeddings_reused": self.embeddings_reused,
            "timings": self.timings,
            "model_id": self.model_id,
            "device": self.device,
            "precision": self.precision,
            "backend": self.backend,
            "autotune": self.autotune,
            "tuning": self.tuning,
            "unchanged": self.unchanged,
        }


def iter_documents(
    config: Config, reports: dict[str, LoadReport], *, progress: bool = True, save: bool = True
) -> Iterator[Document]:
    """Every configured source's documents, one at a time; `reports` gets one entry per source.

    A broken file is reported and skipped, never fatal. `save=False`: a source's state in the
    store (slack_api's cursor) is read but not moved (a dry run).
    """
    from flytegpt.ingest.sources import load_source

    for source in config.sources:
        report = LoadReport()
        reports[source.name] = report
        count = 0
        docs = load_source(source, report, store=config.index.store, save=save)
        for doc in _progress(docs, enabled=progress, desc=f"reading {source.name}", unit="doc"):
            count += 1
            yield doc
        report.documents = count
        if not count and not report.skipped:  # a wrong path or include: said, not silently published
            report.skip(str(source.path or source.package or source.name), _nothing_found(source))
        for name, reason in report.skipped:  # for a Flyte task's log; the CLI prints its own summary
            log.warning("%s: skipped %s: %s", source.name, name, reason, extra={IN_REPORT: True})
        for name, what in report.notes:
            log.warning("%s: %s: %s", source.name, name, what, extra={IN_REPORT: True})


# A log record whose content is also in the sources' LoadReport (what was skipped and why).
IN_REPORT = "in_load_report"


def _nothing_found(source: SourceConfig) -> str:
    """Why a source gave no document, as far as its settings tell."""
    path = source.path
    if path is not None and path.is_file() and source.kind != "slack_export":
        return f"no documents: {path} is a file; a {source.kind} source reads a folder"
    if source.kind == "docs" and (found := _docs_found(source)):
        return found
    if source.include:
        return f"no documents: no file matches include {source.include}" + (
            f" (exclude {source.exclude})" if source.exclude else "")
    return f"no documents found (kind {source.kind}): check its path and settings"


def _docs_found(source: SourceConfig) -> str | None:
    """What a docs folder holds when none of it is a page: the file types it found (a folder of
    `.html` or `.ipynb` files is not a wrong path), or that every file was left out by default."""
    from flytegpt.ingest.sources.docs import SKIPPED_DIRS, describe_types, readable_types, unread_files

    try:
        other, left_out = unread_files(source)
    except (OSError, ValueError):
        return None
    if other:
        n = sum(other.values())
        return (f"no documents: found {n} file{'s' if n != 1 else ''}, none of a page type "
                f"({describe_types(other)}); a docs source reads {readable_types()}")
    if left_out:
        return (f"no documents: its {left_out} file{'s are' if left_out != 1 else ' is'} in folders a docs "
                f"source leaves out ({', '.join(SKIPPED_DIRS)}) or not prose (requirements.txt, robots.txt, "
                "...); name the folder in include to read it")
    return None


def collect(config: Config, *, progress: bool = True) -> tuple[list[Document], dict[str, LoadReport]]:
    """Read every configured source. A broken file is reported and skipped, never fatal."""
    reports: dict[str, LoadReport] = {}
    documents = list(iter_documents(config, reports, progress=progress))
    return documents, reports


def chunk_all(
    documents: Iterable[Document], store: str | None, reports: dict[str, LoadReport] | None = None
) -> tuple[list[Chunk], float]:
    """Every document's chunks, in order: (chunks, seconds spent chunking).

    A document that did not change since the last ingest into this store gets its chunks
    from the store's chunk cache (ingest/chunk_cache.py) instead of being chunked again.
    `documents` may be a stream that reads the sources: that time is not counted.
    A document the chunkers fail on is skipped and listed in its source's report, like a
    broken file: one pathological file never costs the whole ingest. `store=None`: no chunk
    cache at all (a dry run neither reads nor writes the store).
    """
    from flytegpt.ingest.chunk_cache import ChunkCache
    from flytegpt.ingest.chunking import chunk_document

    cache = ChunkCache(store) if store is not None else None
    chunks: list[Chunk] = []
    chunking = 0.0
    count = 0
    for doc in documents:
        count += 1
        t = time.perf_counter()
        try:
            chunks.extend(cache.chunks(doc, chunk_document) if cache is not None else chunk_document(doc))
        except Exception as e:  # noqa: BLE001 - whatever a parser raises on one file
            reason = f"could not be chunked ({type(e).__name__}: {str(e)[:200]})"
            if reports is not None and doc.source in reports:  # logged with the source's other skips
                reports[doc.source].skip(doc.locator, reason)
            else:
                log.warning("%s: skipped %s: %s", doc.source, doc.locator, reason)
        chunking += time.perf_counter() - t
    if cache is None:
        return chunks, chunking
    t = time.perf_counter()
    cache.save()
    chunking += time.perf_counter() - t
    log.info("chunked %d documents, %d unchanged ones from the chunk cache", count - cache.hits, cache.hits)
    return chunks, chunking


def collect_chunks(
    config: Config, *, progress: bool = True, cached: bool = True
) -> tuple[list[Chunk], dict[str, LoadReport], Counter, dict[str, float]]:
    """Read and chunk in one pass: (chunks, reports, documents per source, timings).

    Each document is dropped as soon as it is chunked, so the whole corpus never sits in
    memory twice (documents and chunks); the timings still split reading from chunking.
    """
    reports: dict[str, LoadReport] = {}
    t = time.perf_counter()
    store = config.index.store if cached else None  # cached=False: the store is not written
    chunks, chunking = chunk_all(iter_documents(config, reports, progress=progress, save=cached), store, reports)
    total = time.perf_counter() - t
    doc_counts = Counter({name: r.documents for name, r in reports.items()})
    hint = project_hint(config, chunks)
    if hint:
        log.warning(hint)
    return chunks, reports, doc_counts, {"collect": total - chunking, "chunk": chunking}


_HINT_SAMPLE = 2000


def project_hint(config: Config, chunks: list[Chunk]) -> str | None:
    """A config without [project] says "these are Flyte's docs": the prompts frame every question
    as Flyte's. When the corpus hardly names Flyte, that default was likely not meant (another
    project's docs with a copied sample config), and the answers would say "Flyte" about Bolt."""
    if "project" in config.model_fields_set or not config.project.is_flyte or not chunks:
        return None
    sample = chunks[:: max(1, len(chunks) // _HINT_SAMPLE)]
    name = config.project.name.casefold()
    naming = sum(name in c.text.casefold() for c in sample)
    if naming * 50 >= len(sample):  # 2% or more of the passages name it
        return None
    return (f"the config has no [project] table, so questions are framed as {config.project.name}'s, "
            f"but {naming} of {len(sample):,} sampled passages name {config.project.name}: if these are "
            "another project's sources, set [project] name = \"...\" (README \"Another project than Flyte\")")


def source_stats(reports: dict[str, LoadReport], chunks: Iterable[Chunk]) -> dict[str, dict[str, int]]:
    """Per source, in configuration order: documents read, chunks made, files skipped."""
    per_source = Counter(c.source for c in chunks)
    return {
        name: {"documents": r.documents, "chunks": per_source.get(name, 0), "skipped": len(r.skipped)}
        for name, r in reports.items()
    }


def embed_chunks(
    chunks: list[Chunk],
    config: Config,
    *,
    embedder: "Embedder | None" = None,
    progress: bool = True,
    whole_corpus: bool = True,
) -> tuple["np.ndarray", dict]:
    """Embed chunks, reusing every vector the store's content-addressed cache already holds.

    `whole_corpus`: `chunks` are every chunk of the index being built, so the cache may drop
    old vectors of text that is no longer among them (EmbeddingCache.compact); False for a
    part of it, such as one of the Flyte workflow's embed shards.

    New vectors go to the cache while embedding goes, a shard every `cache_shard_size` of
    them: a killed ingest keeps what it embedded (but one shard) and the next run continues.
    Memory: the vectors exist once. A full ingest (nothing cached, no repeated text) returns
    the embedder's own output array; otherwise one array is filled row by row from the cache
    and the new vectors.
    """
    import numpy as np

    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.embedding_cache import EmbeddingCache

    embedder = embedder or Embedder.from_config(config.embeddings)
    texts = [c.dense_text for c in chunks]  # made once: a code chunk's words are split from its text
    keys = [content_key(embedder.model_id, t) for t in texts]
    cache = EmbeddingCache(config.index.store, embedder.model_id, embedder.dimension)
    found = dict(zip(*cache.gather(keys)))  # this corpus's vectors only, one shard at a time
    # One text may occur in several chunks (same boilerplate in two files): embed it once.
    missing: dict[str, int] = {}  # content key -> its first row
    for i, key in enumerate(keys):
        if key not in found and key not in missing:
            missing[key] = i
    missing_keys = list(missing)
    shard_size = config.embeddings.cache_shard_size

    def keep(rows: list[int], vectors: "np.ndarray") -> None:
        cache.add([missing_keys[r] for r in rows], vectors)  # `fresh` holds them: the cache keeps no copy
        if cache.pending >= shard_size:
            cache.flush(compact=False)
            trim_heap()  # writing the shard copied its vectors once; don't keep that copy's pages

    try:
        fresh = embedder.embed_documents(
            [texts[i] for i in missing.values()], progress=progress, on_block=keep, max_block=shard_size
        )
    except BaseException:  # Ctrl-C, a failing batch: what was embedded is kept for the next run
        try:
            cache.flush(compact=False)
        except Exception as e:  # noqa: BLE001 - the first error is the one to report
            log.warning("could not keep the vectors embedded so far: %s", e)
        raise
    cache.flush(keep=keys if whole_corpus else None)
    stats = {"computed": len(missing), "reused": len(chunks) - len(missing)}
    if len(missing) == len(chunks):
        return fresh, stats
    position = {key: j for j, key in enumerate(missing)}
    vectors = np.empty((len(chunks), embedder.dimension), dtype=np.float32)
    for i, key in enumerate(keys):
        vectors[i] = found[key] if key in found else fresh[position[key]]
    return vectors, stats


def tune(chunks: list[Chunk], config: Config, *, progress: bool = True) -> "TuneReport | None":
    """The domain-tuned model for these chunks when `[tuning] enabled` asks for one (else None)."""
    from flytegpt.ingest import tuning

    if not tuning.should_tune(config):
        return None
    try:
        return tuning.ensure_tuned(chunks, config, progress=progress)
    except tuning.TooFewPairs as e:
        if config.tuning.enabled == "on":
            raise
        log.warning("not tuning: %s", e)  # "auto" on a GPU with a small corpus: the base model
        return None


def embedder_for(config: Config, tuned: "TuneReport | None") -> "Embedder":
    """The configured embedder, or the tuned model's when there is one (a refused tuning: the base).

    The tuned model is loaded from the store, where `tune` put it: the Flyte embed task runs in
    another pod than the tune task."""
    from flytegpt.ingest.embedding import Embedder

    if tuned is None or tuned.refused:
        return Embedder.from_config(config.embeddings)
    return Embedder.for_index(tuned.model_id, config)


def model_info(embedder: "Embedder") -> ModelInfo:
    return ModelInfo(model_id=embedder.model_id, dimension=embedder.dimension, normalized=embedder.normalized)


def build_version(
    chunks: list[Chunk],
    vectors: "np.ndarray",
    config: Config,
    *,
    embedder_info: ModelInfo,
    stats: dict,
    keyword: "KeywordIndex | None" = None,
    sources_read_at: "datetime | None" = None,
) -> str:
    """Write a complete version folder (not yet served: `publish` moves LATEST).

    `sources_read_at`: when reading the sources began; publish never moves LATEST back to
    a version made of older sources than the one it names.
    """
    from flytegpt.ingest.artifact import write_version

    return write_version(
        config.index.store,
        chunks,
        vectors,
        embedder_info,
        index_type=config.index.index_type,
        approximate_threshold=config.index.approximate_threshold,
        stats=stats,
        keyword=keyword,
        sources_read_at=sources_read_at,
        configured_channels={s.name: list(s.channels) for s in config.sources
                             if s.kind in ("slack_api", "slack_export") and s.channels},
    )


def publish(config: Config, version: str) -> None:
    """Move LATEST (guarded against a concurrent ingest), then keep `[index] keep_versions`."""
    from flytegpt.ingest.artifact import publish as _publish

    _publish(config.index.store, version, keep_versions=config.index.keep_versions,
             max_shrink=config.index.max_shrink)


def run_ingest(
    config: Config, *, progress: bool = True, embedder: "Embedder | None" = None
) -> IngestSummary:
    """Run every stage in this process and publish the new version: none when the index is the
    one LATEST already names (`unchanged`: no new version written, published or pruned)."""
    from flytegpt.ingest.artifact import latest_or_none, record_last_run
    from flytegpt.ingest.store import check_writable

    if not config.sources:  # before the store is touched
        raise no_chunks_error(config)
    check_writable(config.index.store)
    sources_read_at = datetime.now(timezone.utc)
    chunks, reports, _, timings = collect_chunks(config, progress=progress)
    if not chunks:
        raise no_chunks_error(config)
    per_source = source_stats(reports, chunks)
    sources = _source_summaries(config, reports, per_source)

    # BM25 is built on a thread while the model loads and embeds: tokenising is Python that
    # takes the GIL in short slices, the model runs outside it, so a re-ingest's second of
    # BM25 hides behind loading the model and embedding the changed chunks. It is waited for
    # before the FAISS index is built, so its transient token lists are never on top of
    # FAISS's copy of the vectors.
    keyword_build = _Background(_build_keyword, [c.embed_text for c in chunks], config.index.store)
    tuned = None
    if embedder is None:
        t = time.perf_counter()
        tuned = tune(chunks, config, progress=progress)
        if tuned is not None:
            timings["tune"] = time.perf_counter() - t
    t = time.perf_counter()
    embedder = embedder or embedder_for(config, tuned)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    loaded_before = embedder.load_seconds
    vectors, embed_stats = embed_chunks(chunks, config, embedder=embedder, progress=progress)
    # the model loads at its first embedding (an unchanged re-ingest never loads it): its load counts as loading
    loading = embedder.load_seconds - loaded_before
    timings["load model"] += loading
    timings["embed"] = time.perf_counter() - t - loading

    t = time.perf_counter()
    keyword = keyword_build.result()
    timings["build"] = time.perf_counter() - t  # only the wait: the rest overlapped

    stats = {
        "embeddings": {**embed_stats, **embedder.describe()},
        "sources": per_source,
    }
    t = time.perf_counter()
    latest = latest_or_none(config.index.store)
    version = build_version(chunks, vectors, config, embedder_info=model_info(embedder), stats=stats,
                            keyword=keyword, sources_read_at=sources_read_at)
    # write_version returns LATEST's own id only for the same content: nothing was written
    unchanged = version == latest
    timings["build"] += time.perf_counter() - t
    # publish opens and verifies the whole version: free the build's copy of it first.
    del chunks, vectors, keyword

    if not unchanged:  # LATEST already names this content: nothing to publish, nothing to prune
        t = time.perf_counter()
        publish(config, version)
        timings["publish"] = time.perf_counter() - t
    record_last_run(config.index.store, version, sources_read_at.isoformat(), changed=not unchanged)

    return IngestSummary(
        version=version,
        store=config.index.store,
        sources=sources,
        embeddings_computed=embed_stats["computed"],
        embeddings_reused=embed_stats["reused"],
        timings=timings,
        model_id=embedder.model_id,
        device=embedder.device,
        precision=embedder.precision if embedder.loaded else "",
        backend=embedder.backend if embedder.loaded else "",
        autotune=embedder.autotune.to_dict() if embedder.autotune else None,
        tuning=tuned.to_dict() if tuned is not None else None,
        unchanged=unchanged,
    )


def no_chunks_reason(config: Config) -> str:
    """Why an ingest of `config` found nothing to index."""
    return "the config has no [[sources]]" if not config.sources else "every source was empty or skipped"


def no_chunks_error(config: Config) -> ValueError:
    return ValueError(f"no chunks: {no_chunks_reason(config)}; nothing to publish")


def _source_summaries(config: Config, reports: dict[str, LoadReport],
                      per_source: dict[str, dict[str, int]]) -> list[SourceSummary]:
    kinds = {s.name: s.kind for s in config.sources}
    return [SourceSummary(name, kinds[name], s["documents"], s["chunks"], list(reports[name].skipped),
                          list(reports[name].notes), reports[name].left_out)
            for name, s in per_source.items()]


def dry_run(config: Config, *, progress: bool = True) -> tuple[list[SourceSummary], dict[str, float]]:
    """Read and chunk every source as an ingest would, and stop there: what would be indexed
    and what would be skipped, per source, without loading the model or touching the store
    (no chunk cache either: checking a config needs no store credentials).

    Checking a new configuration (paths, excludes, a Slack export) takes seconds this way,
    where a first ingest spends minutes embedding before its summary says a folder was wrong.
    """
    chunks, reports, _, timings = collect_chunks(config, progress=progress, cached=False)
    return _source_summaries(config, reports, source_stats(reports, chunks)), timings


class _Background:
    """`fn(*args)` on a daemon thread. Not a ThreadPoolExecutor: its threads are joined at exit,
    so an ingest that fails or is interrupted while embedding would wait for the build first
    (minutes of BM25 for a million chunks) before it could report the error."""

    def __init__(self, fn, *args) -> None:
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="flytegpt-bm25", daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            self._error = e

    def result(self):
        """The value, handed over: the caller's `del` then frees it (publish runs after)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        value, self._value = self._value, None
        return value


def _build_keyword(texts: list[str], store: str) -> "KeywordIndex":
    from flytegpt.ingest.keyword import KeywordIndex

    keyword = KeywordIndex.build(texts, store=store)
    trim_heap()
    return keyword


def _progress(items: Iterable, *, enabled: bool, desc: str, unit: str) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False)
