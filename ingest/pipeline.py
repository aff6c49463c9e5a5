"""The ingest pipeline: sources -> documents -> chunks -> embeddings -> a published index version.

Each stage is a plain function so the Flyte workflow can run them as separate (cached) tasks
and `flytegpt ingest` can run them in one process. Only `publish` moves `LATEST`, and it
runs last: a failure anywhere before it leaves the served version untouched.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from flytegpt.ingest.config import Config
from flytegpt.ingest.heap import trim_heap
from flytegpt.ingest.models import Chunk, Document, LoadReport

if TYPE_CHECKING:
    import numpy as np

    from flytegpt.ingest.artifact import ModelInfo
    from flytegpt.ingest.keyword import KeywordIndex
    from flytegpt.ingest.embedding import Embedder

log = logging.getLogger(__name__)


@dataclass
class SourceSummary:
    name: str
    kind: str
    documents: int = 0
    chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


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
    backend: str = ""  # what ran the model: openvino, torch, onnx ("" when nothing was embedded)

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
        }


def iter_documents(
    config: Config, reports: dict[str, LoadReport], *, progress: bool = True
) -> Iterator[Document]:
    """Every configured source's documents, one at a time; `reports` gets one entry per source.

    A broken file is reported and skipped, never fatal.
    """
    from flytegpt.ingest.sources import load_source

    for source in config.sources:
        report = LoadReport()
        reports[source.name] = report
        count = 0
        docs = load_source(source, report, store=config.index.store)
        for doc in _progress(docs, enabled=progress, desc=f"reading {source.name}", unit="doc"):
            count += 1
            yield doc
        report.documents = count
        for name, reason in report.skipped:
            log.warning("%s: skipped %s: %s", source.name, name, reason)


def collect(config: Config, *, progress: bool = True) -> tuple[list[Document], dict[str, LoadReport]]:
    """Read every configured source. A broken file is reported and skipped, never fatal."""
    reports: dict[str, LoadReport] = {}
    documents = list(iter_documents(config, reports, progress=progress))
    return documents, reports


def chunk_documents(documents: list[Document]) -> list[Chunk]:
    from flytegpt.ingest.chunking import chunk_documents as _chunk

    return _chunk(documents)


def collect_chunks(
    config: Config, *, progress: bool = True
) -> tuple[list[Chunk], dict[str, LoadReport], Counter, dict[str, float]]:
    """Read and chunk in one pass: (chunks, reports, documents per source, timings).

    Each document is dropped as soon as it is chunked, so the whole corpus never sits in
    memory twice (documents and chunks); the timings still split reading from chunking.
    A document that did not change since the last ingest into this store gets its chunks
    from the store's chunk cache (ingest/chunk_cache.py) instead of being chunked again.
    """
    from flytegpt.ingest.chunk_cache import ChunkCache
    from flytegpt.ingest.chunking import chunk_document

    reports: dict[str, LoadReport] = {}
    doc_counts: Counter = Counter()
    chunks: list[Chunk] = []
    cache = ChunkCache(config.index.store)
    chunking = 0.0
    t = time.perf_counter()
    for doc in iter_documents(config, reports, progress=progress):
        doc_counts[doc.source] += 1
        c = time.perf_counter()
        chunks.extend(cache.chunks(doc, chunk_document))
        chunking += time.perf_counter() - c
    c = time.perf_counter()
    cache.save()
    chunking += time.perf_counter() - c
    total = time.perf_counter() - t
    log.info("chunked %d documents, %d unchanged ones from the chunk cache",
             sum(doc_counts.values()) - cache.hits, cache.hits)
    return chunks, reports, doc_counts, {"collect": total - chunking, "chunk": chunking}


def embed_chunks(
    chunks: list[Chunk],
    config: Config,
    *,
    embedder: "Embedder | None" = None,
    progress: bool = True,
) -> tuple["np.ndarray", dict]:
    """Embed chunks, reusing every vector the store's content-addressed cache already holds.

    Memory: the vectors exist once. A full ingest (nothing cached, no repeated text) returns
    the embedder's own output array; otherwise one array is filled row by row from the cache
    and the new vectors. The new vectors go to the cache as one block, streamed to its shard.
    """
    import numpy as np

    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.embedding_cache import EmbeddingCache

    embedder = embedder or Embedder.from_config(config.embeddings)
    keys = [c.content_key(embedder.model_id) for c in chunks]
    cache = EmbeddingCache(config.index.store, embedder.model_id, embedder.dimension)
    found = cache.lookup(keys)
    # One text may occur in several chunks (same boilerplate in two files): embed it once.
    missing: dict[str, int] = {}  # content key -> its first row
    for i, key in enumerate(keys):
        if key not in found and key not in missing:
            missing[key] = i
    fresh = embedder.embed_documents([chunks[i].embed_text for i in missing.values()], progress=progress)
    if missing:
        cache.add(list(missing), fresh)
        cache.flush()
        trim_heap()  # writing the shard copied the new vectors once; don't keep that copy's pages
    stats = {"computed": len(missing), "reused": len(chunks) - len(missing)}
    if len(missing) == len(chunks):
        return fresh, stats
    position = {key: j for j, key in enumerate(missing)}
    vectors = np.empty((len(chunks), embedder.dimension), dtype=np.float32)
    for i, key in enumerate(keys):
        vectors[i] = found[key] if key in found else fresh[position[key]]
    return vectors, stats


def model_info(embedder: "Embedder") -> "ModelInfo":
    from flytegpt.ingest.artifact import ModelInfo

    return ModelInfo(model_id=embedder.model_id, dimension=embedder.dimension, normalized=embedder.normalized)


def build_version(
    chunks: list[Chunk],
    vectors: "np.ndarray",
    config: Config,
    *,
    embedder_info: "ModelInfo",
    stats: dict,
    keyword: "KeywordIndex | None" = None,
) -> str:
    """Write a complete version folder (not yet served: `publish` moves LATEST)."""
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
    )


def publish(config: Config, version: str) -> None:
    from flytegpt.ingest.artifact import publish as _publish

    _publish(config.index.store, version)


def run_ingest(
    config: Config, *, progress: bool = True, embedder: "Embedder | None" = None
) -> IngestSummary:
    """Run every stage in this process and publish the new version."""
    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.keyword import KeywordIndex

    chunks, reports, doc_counts, timings = collect_chunks(config, progress=progress)
    if not chunks:
        raise ValueError("no chunks: every source was empty or skipped; nothing to publish")
    sources = _source_summaries(config, doc_counts, chunks, reports)

    # BM25 first: its build's transient token lists then come and go while memory holds only
    # the chunks, instead of on top of the vectors and FAISS's copy of them.
    t = time.perf_counter()
    keyword = KeywordIndex.build([c.embed_text for c in chunks])
    trim_heap()
    timings["build"] = time.perf_counter() - t

    t = time.perf_counter()
    embedder = embedder or Embedder.from_config(config.embeddings)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    vectors, embed_stats = embed_chunks(chunks, config, embedder=embedder, progress=progress)
    timings["embed"] = time.perf_counter() - t

    stats = {
        "embeddings": embed_stats,
        "sources": {s.name: {"documents": s.documents, "chunks": s.chunks, "skipped": len(s.skipped)} for s in sources},
    }
    t = time.perf_counter()
    version = build_version(chunks, vectors, config, embedder_info=model_info(embedder), stats=stats,
                            keyword=keyword)
    timings["build"] += time.perf_counter() - t
    # publish opens and verifies the whole version: free the build's copy of it first.
    del chunks, vectors, keyword

    t = time.perf_counter()
    publish(config, version)
    timings["publish"] = time.perf_counter() - t

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
    )


def _source_summaries(
    config: Config, doc_counts: Counter, chunks: list[Chunk], reports: dict[str, LoadReport]
) -> list[SourceSummary]:
    chunk_counts = Counter(c.source_id.split(":", 1)[0] for c in chunks)
    return [
        SourceSummary(
            name=s.name,
            kind=s.kind,
            documents=doc_counts[s.name],
            chunks=chunk_counts[s.name],
            skipped=list(reports.get(s.name, LoadReport()).skipped),
        )
        for s in config.sources
    ]


def _progress(items: Iterable, *, enabled: bool, desc: str, unit: str) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False)
