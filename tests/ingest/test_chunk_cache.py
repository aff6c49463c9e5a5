"""The chunk cache: an unchanged document is not chunked again; a changed one is."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from flytegpt.ingest import chunk_cache, chunking
from flytegpt.ingest.config import load_config, sample_config_path
from flytegpt.ingest.pipeline import collect, collect_chunks


@pytest.fixture()
def corpus(tmp_path: Path):
    """A private copy of the sample corpus (so pages can be edited) and an empty store."""
    root = tmp_path / "sample"
    shutil.copytree(sample_config_path().parent, root)
    return load_config(root / "flytegpt.toml").with_store(str(tmp_path / "store")), root


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which documents chunking really ran for."""
    made: list[str] = []
    real = chunking.chunk_document

    def counted(doc):
        made.append(doc.source_id)
        return real(doc)

    monkeypatch.setattr(chunking, "chunk_document", counted)
    return made


def _cache_lines(store: str) -> list[dict]:
    files = [(Path(store) / chunk_cache.FOLDER / f"{chunk_cache.chunking_version()}.jsonl.gz")]
    return [json.loads(line) for line in gzip.decompress(files[0].read_bytes()).decode().splitlines()]


def test_unchanged_documents_are_not_chunked_again(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    config, root = corpus
    made = _counting(monkeypatch)
    first, _, counts, _ = collect_chunks(config, progress=False)
    assert len(made) == sum(counts.values())  # an empty cache: everything chunked

    made.clear()
    again, _, _, _ = collect_chunks(config, progress=False)
    assert made == [] and again == first  # same chunks, same order, nothing chunked

    page = root / "docs" / "caching.md"
    page.write_text(page.read_text() + "\n## Cache keys\n\nA brand-new section about salted cache keys.\n")
    made.clear()
    changed, _, _, _ = collect_chunks(config, progress=False)
    assert made == ["sample-docs:caching.md"]
    assert any("salted cache keys" in c.text for c in changed)
    assert [c for c in changed if c.source_id != "sample-docs:caching.md"] == [
        c for c in first if c.source_id != "sample-docs:caching.md"
    ]


def test_the_cache_holds_this_ingests_documents_only(corpus) -> None:
    config, root = corpus
    collect_chunks(config, progress=False)
    documents, _ = collect(config, progress=False)
    assert len(_cache_lines(config.index.store)) == len(documents)
    (root / "docs" / "secrets.md").unlink()
    collect_chunks(config, progress=False)
    assert len(_cache_lines(config.index.store)) == len(documents) - 1


def test_new_chunking_code_starts_afresh(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = corpus
    collect_chunks(config, progress=False)
    folder = Path(config.index.store) / chunk_cache.FOLDER
    [old] = [p.name for p in folder.iterdir()]
    monkeypatch.setattr(chunk_cache, "chunking_version", lambda: "0123456789abcdef")
    made = _counting(monkeypatch)
    collect_chunks(config, progress=False)
    assert made  # the old code's chunks are not trusted
    assert sorted(p.name for p in folder.iterdir()) == sorted([old, "0123456789abcdef.jsonl.gz"])
    os.utime(folder / old, (1, 1))  # the oldest of the three, below
    monkeypatch.setattr(chunk_cache, "chunking_version", lambda: "fedcba9876543210")
    collect_chunks(config, progress=False)
    # the newest other version's file stays, older ones go
    assert sorted(p.name for p in folder.iterdir()) == ["0123456789abcdef.jsonl.gz", "fedcba9876543210.jsonl.gz"]


def test_two_releases_ingesting_into_one_store_keep_each_others_cache(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """During an upgrade the old nightly and a new manual ingest share the store; each used to
    delete the other's file, so every run chunked the whole corpus again."""
    config, _ = corpus
    collect_chunks(config, progress=False)  # the new release
    release = chunk_cache.chunking_version
    monkeypatch.setattr(chunk_cache, "chunking_version", lambda: "0123456789abcdef")
    collect_chunks(config, progress=False)  # the old release's nightly
    monkeypatch.setattr(chunk_cache, "chunking_version", release)
    made = _counting(monkeypatch)
    collect_chunks(config, progress=False)  # the new release again: its own cache is still there
    assert made == []


def test_an_unreadable_cache_is_ignored(corpus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    config, _ = corpus
    first, _, _, _ = collect_chunks(config, progress=False)
    [path] = (Path(config.index.store) / chunk_cache.FOLDER).glob("*.jsonl.gz")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    made = _counting(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.chunk_cache"):
        again, _, _, _ = collect_chunks(config, progress=False)
    assert again == first and made  # chunked afresh, same result
    assert "unreadable" in caplog.text
    assert len(_cache_lines(config.index.store)) > 0  # and rewritten whole


def test_a_store_that_cannot_be_reached_costs_the_cache_not_the_documents(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store's client raises its own errors (botocore's EndpointConnectionError is no
    OSError): the cache is read once, found unusable, and every document is chunked afresh.
    Before, each document retried the read and was skipped as "could not be chunked"."""
    from flytegpt.ingest import line_cache

    config, _ = corpus
    first, _, _, _ = collect_chunks(config, progress=False, cached=False)
    calls: list[str] = []

    class EndpointConnectionError(Exception):
        pass

    def unreachable(fs, path):
        calls.append(path)
        raise EndpointConnectionError(f"Could not connect to the endpoint URL: {path}")

    def unwritable(*args, **kwargs):
        raise EndpointConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(line_cache, "read_bytes", unreachable)
    monkeypatch.setattr(line_cache, "atomic_writer", unwritable)
    chunks, reports, _, _ = collect_chunks(config, progress=False)
    assert chunks == first
    assert all(not r.skipped for r in reports.values())
    assert len(calls) == 1


def test_a_dry_run_neither_reads_nor_writes_the_store(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    from flytegpt.ingest.pipeline import dry_run

    config, _ = corpus

    def no_cache(store):
        raise AssertionError(f"a dry run opened the chunk cache of {store}")

    monkeypatch.setattr(chunk_cache, "ChunkCache", no_cache)
    sources, _ = dry_run(config, progress=False)
    assert sum(s.chunks for s in sources) > 0 and not Path(config.index.store).exists()


def test_document_key_of_a_name_that_is_not_utf8() -> None:
    from flytegpt.ingest.chunk_cache import document_key
    from flytegpt.ingest.models import Document

    name = os.fsdecode(b"caf\xe9.md")  # as os.walk gives a Latin-1 name: a lone surrogate
    key = document_key(Document("docs", name, "docs", "t", "u", "text"))
    assert len(key) == 64 and key != document_key(Document("docs", "caf.md", "docs", "t", "u", "text"))


def test_an_unchanged_run_writes_the_same_cache(corpus) -> None:
    config, root = corpus
    collect_chunks(config, progress=False)
    [path] = (Path(config.index.store) / chunk_cache.FOLDER).glob("*.jsonl.gz")
    before, written = gzip.decompress(path.read_bytes()), (path.stat().st_ino, path.stat().st_mtime_ns)
    again, _, _, _ = collect_chunks(config, progress=False)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == written  # nothing changed: nothing uploaded again
    assert again == collect_chunks(config, progress=False)[0]
    # a changed document rewrites it, every unchanged line as it was read
    page = root / "docs" / "caching.md"
    page.write_text(page.read_text() + "\nOne more line.\n")
    collect_chunks(config, progress=False)
    after = gzip.decompress(path.read_bytes()).splitlines()
    assert len(after) == len(before.splitlines()) and len(set(after) - set(before.splitlines())) == 1


def test_a_damaged_entry_costs_only_its_document(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = corpus
    first, _, _, _ = collect_chunks(config, progress=False)
    [path] = (Path(config.index.store) / chunk_cache.FOLDER).glob("*.jsonl.gz")
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    entry = json.loads(lines[0])
    damaged = lines[0][: lines[0].index('"chunks"')] + '"chunks": [{"not a chunk": 1}]}\n'
    path.write_bytes(gzip.compress("".join([damaged, *lines[1:]]).encode()))
    made = _counting(monkeypatch)
    again, _, _, _ = collect_chunks(config, progress=False)
    assert again == first
    assert len(made) == 1 and made[0] == entry["chunks"][0]["source_id"]
    assert _cache_lines(config.index.store)[0] == entry  # and written right
