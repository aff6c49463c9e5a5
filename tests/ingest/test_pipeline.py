"""Pipeline stages: reading and chunking in one pass gives what the separate stages give."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from flytegpt.ingest.config import load_config, sample_config_path
from flytegpt.ingest.chunking import chunk_documents
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.pipeline import chunk_all, collect, collect_chunks


def test_collect_chunks_equals_collect_then_chunk(tmp_path: Path) -> None:
    config = load_config(sample_config_path()).with_store(str(tmp_path / "store"))
    documents, reports = collect(config, progress=False)
    chunks, streamed_reports, doc_counts, timings = collect_chunks(config, progress=True)
    assert chunks and chunks == chunk_documents(documents)  # same chunks, same order
    assert doc_counts == Counter(d.source for d in documents)
    assert {n: (r.documents, r.skipped) for n, r in streamed_reports.items()} == {
        n: (r.documents, r.skipped) for n, r in reports.items()
    }
    assert set(timings) == {"collect", "chunk"} and min(timings.values()) >= 0


def test_a_document_the_chunkers_fail_on_is_skipped_and_reported(tmp_path: Path) -> None:
    """A malformed document (here one read back from a broken documents file: no text) is listed
    as skipped in its source's report; the others are chunked."""
    good = Document("d", "good.md", "docs", "Good", "", "# Good\n\nSome text about caching.", {"format": "md"})
    bad = Document("d", "bad.md", "docs", "Bad", "", None, {"format": "md"})  # type: ignore[arg-type]
    reports = {"d": LoadReport()}
    chunks, _ = chunk_all([bad, good], str(tmp_path / "store"), reports)
    assert chunks and {c.source_id for c in chunks} == {"d:good.md"}
    ((name, reason),) = reports["d"].skipped
    assert name == "bad.md" and reason.startswith("could not be chunked (")


class _FailingEmbedder:
    """The session's embedder, but its model stops half-way (out of memory, a killed GPU)."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def embed_documents(self, texts, **kwargs):
        raise RuntimeError("CUDA out of memory (stand-in)")


def test_an_ingest_that_fails_while_embedding_reports_it_and_leaves_latest_alone(tmp_path: Path, embedder) -> None:
    from flytegpt.ingest.artifact import list_versions, read_latest
    from flytegpt.ingest.pipeline import run_ingest

    config = load_config(sample_config_path()).with_store(str(tmp_path / "store"))
    first = run_ingest(config, progress=False, embedder=embedder).version
    with pytest.raises(RuntimeError, match="out of memory"):  # BM25, building meanwhile, is not waited on
        run_ingest(config, progress=False, embedder=_FailingEmbedder(embedder))
    assert read_latest(config.index.store) == first and list_versions(config.index.store) == [first]


def test_loading_the_model_is_told_and_timed_apart_from_embedding(tmp_path: Path, capsys) -> None:
    """On a new machine preparing the model took a minute of an ingest, untold, and the summary
    put that minute under "embed"."""
    from flytegpt.ingest.config import EmbeddingsConfig
    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.pipeline import run_ingest

    config = load_config(sample_config_path()).with_store(str(tmp_path / "store"))
    fresh = Embedder.from_config(EmbeddingsConfig(device="cpu", backend="torch", precision="fp32"))
    summary = run_ingest(config, progress=True, embedder=fresh)
    err = capsys.readouterr().err
    assert "loading sentence-transformers/all-MiniLM-L6-v2" in err
    assert err.index("loading sentence-transformers") < err.index("embedding")  # told before the bar starts
    assert 0 < fresh.load_seconds <= summary.timings["load model"] < fresh.load_seconds + 1.0
    # an unchanged re-ingest embeds nothing, so it loads nothing
    unloaded = Embedder.from_config(EmbeddingsConfig(device="cpu", backend="torch", precision="fp32"))
    again = run_ingest(config, progress=False, embedder=unloaded)
    assert again.embeddings_computed == 0 and not unloaded.loaded and again.timings["load model"] < 0.01
