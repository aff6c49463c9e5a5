"""Pipeline stages: reading and chunking in one pass gives what the separate stages give."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from flytegpt.ingest.config import load_config, sample_config_path
from flytegpt.ingest.chunking import chunk_documents
from flytegpt.ingest.pipeline import collect, collect_chunks


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
