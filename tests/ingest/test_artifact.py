"""The index artifact: round trip, verification errors, LATEST, concurrency, no pickle."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from flytegpt.ingest import artifact
from flytegpt.ingest.artifact import (
    ArtifactError,
    list_versions,
    open_version,
    prune,
    publish,
    read_latest,
    write_version,
)
from support.index_data import MODEL, edit_manifest, make_chunks, make_vectors

def build(store: str, n: int = 10, seed: int = 0, publish_it: bool = True, **kw) -> str:
    version = write_version(store, make_chunks(n, str(seed)), make_vectors(n, seed=seed), MODEL, **kw)
    if publish_it:
        publish(store, version)
    return version


@pytest.mark.parametrize("rows", [0, 1, 7, 70_000])
def test_the_flat_index_file_is_faiss_own_without_a_copy_of_the_vectors(tmp_path: Path, rows: int) -> None:
    import faiss

    vectors = np.random.default_rng(rows).standard_normal((rows, 24)).astype(np.float32)
    path = tmp_path / "dense.faiss"
    artifact.write_flat_index(vectors, str(path))
    reference = faiss.IndexFlatIP(24)
    if rows:
        reference.add(vectors)
    assert path.read_bytes() == faiss.serialize_index(reference).tobytes()
    index = faiss.read_index(str(path))
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == rows
    if rows:
        _, ids = index.search(vectors[:5], 1)
        assert (ids[:, 0] == np.arange(min(rows, 5))).all()


def test_round_trip(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    chunks, vectors = make_chunks(10), make_vectors(10)
    version = write_version(store, chunks, vectors, MODEL, stats={"computed": 10, "reused": 0})
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version)
    assert read_latest(store) is None  # written, not published
    publish(store, version)
    assert read_latest(store) == version
    assert (tmp_path / "store" / "LATEST").read_text().strip() == version
    assert list_versions(store) == [version]

    index = open_version(store, expect_model="test/model", expect_dimension=8)
    assert index.version == version and index.chunks == chunks
    assert index.model == MODEL and index.device == "cpu"
    m = index.manifest
    assert m["format_version"] == artifact.FORMAT_VERSION and m["version"] == version
    assert m["created_at"].endswith("+00:00")
    assert m["model"] == {"model_id": "test/model", "dimension": 8, "normalized": True}
    assert m["index"] == {"type": "flat", "metric": "inner_product", "ntotal": 10}
    assert m["chunk_count"] == 10
    assert m["counts"] == {"code": 2, "docs": 6, "slack": 2}
    assert m["stats"] == {"computed": 10, "reused": 0}
    on_disk = {p.relative_to(tmp_path / "store" / version).as_posix() for p in (tmp_path / "store" / version).rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    # every vector finds itself first
    _, ids = index.dense.search(vectors, 1)
    assert (ids[:, 0] == np.arange(10)).all()
    assert index.keyword.search("with_overrides", 1)[0][0] == 1


def test_same_content_same_second_is_one_version(tmp_path: Path) -> None:
    store = str(tmp_path)
    a = write_version(store, make_chunks(4), make_vectors(4), MODEL)
    b = write_version(store, make_chunks(4), make_vectors(4), MODEL)
    assert a[-8:] == b[-8:]  # content hash part
    assert write_version(store, make_chunks(4, "x"), make_vectors(4), MODEL)[-8:] != a[-8:]


def test_a_prebuilt_keyword_index_is_the_same_version(tmp_path: Path) -> None:
    """The pipeline builds BM25 before embedding (lower peak memory): same files, same version."""
    from flytegpt.ingest.keyword import KeywordIndex

    store = str(tmp_path)
    chunks = make_chunks(6)
    inside = write_version(store, chunks, make_vectors(6), MODEL)
    given = write_version(store, chunks, make_vectors(6), MODEL,
                          keyword=KeywordIndex.build([c.embed_text for c in chunks]))
    assert given[-8:] == inside[-8:]
    with pytest.raises(ValueError, match="5 documents for 6 chunks"):
        write_version(store, chunks, make_vectors(6), MODEL,
                      keyword=KeywordIndex.build([c.embed_text for c in chunks[:5]]))


def test_rejects_bad_vectors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected \(4, 8\)"):
        write_version(str(tmp_path), make_chunks(4), make_vectors(3), MODEL)
    bad = make_vectors(4)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_version(str(tmp_path), make_chunks(4), bad, MODEL)


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    store = str(tmp_path)
    version = build(store)
    path = tmp_path / version / "dense.faiss"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch in dense\.faiss: expected sha256 [0-9a-f]{64}, found"):
        open_version(store)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    store = str(tmp_path)
    version = build(store)
    chunks_file = tmp_path / version / "chunks.jsonl.gz"
    data = chunks_file.read_bytes()
    chunks_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=rf"chunks\.jsonl\.gz is truncated: expected {len(data)} bytes, found {len(data) // 2}"):
        open_version(store, version)
    chunks_file.unlink()
    with pytest.raises(ArtifactError, match=r"chunks\.jsonl\.gz is missing"):
        open_version(store, version)


def test_wrong_model_and_dimension(tmp_path: Path) -> None:
    store = str(tmp_path)
    build(store)
    with pytest.raises(ArtifactError, match="model mismatch: expected sentence-transformers/all-MiniLM-L6-v2, the index was built with test/model"):
        open_version(store, expect_model="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ArtifactError, match="dimension mismatch: expected 384, the index has 8"):
        open_version(store, expect_dimension=384)


def test_manifest_disagreeing_with_files(tmp_path: Path) -> None:
    version = build(str(tmp_path))
    edit_manifest(tmp_path, version, lambda m: m["model"].update(dimension=16))
    with pytest.raises(ArtifactError, match=r"dense\.faiss dimension: expected 16 \(manifest\), found 8"):
        open_version(str(tmp_path))
    edit_manifest(tmp_path, version, lambda m: (m["model"].update(dimension=8), m.update(chunk_count=11)))
    with pytest.raises(ArtifactError, match=r"dense\.faiss ntotal: expected 11 \(chunk_count\), found 10"):
        open_version(str(tmp_path))
    edit_manifest(tmp_path, version, lambda m: m.update(chunk_count=10, format_version=99))
    with pytest.raises(ArtifactError, match=r"format_version: expected 1, found 99 \(written by a newer FlyteGPT: upgrade this one\)"):
        open_version(str(tmp_path))


def test_slack_message_links_travel_beside_the_chunk_table_so_older_readers_still_serve(tmp_path: Path) -> None:
    """A Slack chunk's per-message links (offline quotes link the reply they quote) are kept in
    message-urls.json.gz, not in chunks.jsonl.gz's rows: a reader that predates them builds
    Chunk(**row) from the fields it knows, so a row with a new key would make a bot rolled back
    to an older release refuse every new index."""
    import dataclasses
    import gzip

    chunks = make_chunks(6)
    links = ("https://s/archives/C1/p1", "https://s/archives/C1/p2?thread_ts=1&cid=C1")
    chunks[2] = dataclasses.replace(chunks[2], kind="slack", message_urls=links)
    store = str(tmp_path / "store")
    version = write_version(store, chunks, make_vectors(6), MODEL)
    folder = tmp_path / "store" / version
    older_fields = {"source_id", "kind", "title", "url", "text", "embed_text", "start_line", "end_line"}
    with gzip.open(folder / "chunks.jsonl.gz", "rt") as f:
        assert all(set(json.loads(line)) == older_fields for line in f)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "message-urls.json.gz" in manifest["files"]
    opened = open_version(store, version)
    assert opened.chunks[2].message_urls == links and opened.chunks == chunks

    no_links = write_version(str(tmp_path / "plain"), make_chunks(6), make_vectors(6), MODEL)
    assert not (tmp_path / "plain" / no_links / "message-urls.json.gz").exists()

    (folder / "message-urls.json.gz").write_bytes(gzip.compress(b'{"99": ["x"]}', mtime=0))
    edit_manifest(tmp_path / "store", version, lambda m: m["files"]["message-urls.json.gz"].update(
        sha256=artifact._sha256((folder / "message-urls.json.gz").read_bytes()),
        bytes=(folder / "message-urls.json.gz").stat().st_size))
    with pytest.raises(ArtifactError, match="message-urls.json.gz cannot be read"):
        open_version(store, version)


def test_missing_latest(tmp_path: Path) -> None:
    assert read_latest(str(tmp_path / "nothing")) is None
    with pytest.raises(ArtifactError, match="LATEST not found"):
        open_version(str(tmp_path / "nothing"))
    with pytest.raises(ArtifactError, match="manifest.json not found"):
        open_version(str(tmp_path), "20260101T000000Z-00000000")


def test_bad_version_is_not_published(tmp_path: Path) -> None:
    store = str(tmp_path)
    good = build(store, seed=1)
    bad = build(store, n=12, seed=2, publish_it=False)
    (tmp_path / bad / "dense.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="dense.faiss"):
        publish(store, bad)
    assert read_latest(store) == good
    assert len(open_version(store).chunks) == 10


def test_concurrent_writer_and_reader(tmp_path: Path) -> None:
    """A reader following LATEST never sees a half-written version."""
    store = str(tmp_path)
    build(store, n=5, seed=0)
    done = threading.Event()
    errors: list[BaseException] = []
    opened: set[str] = set()

    def writer() -> None:
        try:
            for i in range(1, 25):
                build(store, n=5 + i, seed=i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                index = open_version(store, expect_model="test/model", expect_dimension=8)
                assert index.dense.ntotal == len(index.chunks) == index.manifest["chunk_count"]
                opened.add(index.version)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(opened) >= 2  # the reader really saw LATEST move
    # publishing prunes: the last keep_versions remain, plus LATEST and the one before it
    remaining = list_versions(store)
    assert artifact.DEFAULT_KEEP_VERSIONS <= len(remaining) <= artifact.DEFAULT_KEEP_VERSIONS + 2
    assert read_latest(store) in remaining


def test_no_pickle_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path)
    version = build(store)
    for path in (tmp_path / version).rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path.name} starts with pickle magic"
    real_load = np.load

    def no_pickle_load(*args, **kwargs):
        assert not kwargs.get("allow_pickle", False), "np.load called with allow_pickle=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", no_pickle_load)
    import pickle

    def refuse(*a, **k):
        raise AssertionError("pickle used while opening an index")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert len(open_version(store).chunks) == 10


def test_index_types(tmp_path: Path) -> None:
    store = str(tmp_path)
    flat = build(store, n=40, index_type="flat", publish_it=False)
    index = open_version(store, flat)
    assert index.manifest["index"]["type"] == "flat"
    _, ids = index.dense.search(make_vectors(40, seed=0), 1)
    assert (ids[:, 0] == np.arange(40)).all()
    auto = build(str(tmp_path / "auto"), n=40, seed=3, approximate_threshold=20, publish_it=False)
    assert open_version(str(tmp_path / "auto"), auto).manifest["index"]["type"] == "ivf"  # measured: bench_index.py
    for unknown in ("ivfpq", "hnsw"):  # measured and left out (tests/bench/RESULTS.md, bench_index.py)
        with pytest.raises(ValueError, match=f"unknown index_type '{unknown}'"):
            build(store, index_type=unknown)


def test_list_versions_and_prune_keep_latest(tmp_path: Path) -> None:
    store = str(tmp_path)
    versions = [build(store, seed=i, publish_it=False) for i in range(4)]
    assert list_versions(store) == versions  # in the order they were made
    oldest, newest = versions[0], versions[-1]
    publish(store, oldest)
    (tmp_path / "20990101T000000Z-0000000f").mkdir()  # a version being written: no manifest yet
    removed = prune(store, keep=1)
    assert set(list_versions(store)) == {oldest, newest}
    assert set(removed) == set(versions) - {oldest, newest}
    assert (tmp_path / "20990101T000000Z-0000000f").exists()
    assert read_latest(store) == oldest


def test_versions_made_within_one_second_are_kept_newest_first(tmp_path: Path, monkeypatch) -> None:
    """A version id names its second and then a content hash: within one second the hashes
    must not decide which version is "the newest" that pruning keeps."""
    from datetime import datetime, timezone

    ticks = iter(range(1, 100))

    class OneSecond(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 1, 12, 0, 0, next(ticks), tzinfo=timezone.utc)

    monkeypatch.setattr(artifact, "datetime", OneSecond)
    store = str(tmp_path)
    versions = [build(store, seed=i, publish_it=False) for i in range(6)]
    assert len({v[:16] for v in versions}) == 1 and versions != sorted(versions)  # hashes out of order
    assert list_versions(store) == versions
    publish(store, versions[-1], keep_versions=2)
    assert list_versions(store) == versions[-2:]


def test_chunks_file_is_gzip_compress_of_the_whole_text() -> None:
    """Compressing while serialising gives the very bytes of one gzip.compress: same content hash."""
    import gzip

    chunks = make_chunks(2 * artifact._CHUNKS_PER_WRITE + 3, tag="é ✓")
    whole = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in chunks).encode("utf-8")
    assert artifact._chunks_bytes(chunks) == gzip.compress(whole, compresslevel=artifact._GZIP_LEVEL, mtime=0)
    assert artifact._chunks_bytes([]) == gzip.compress(b"", compresslevel=artifact._GZIP_LEVEL, mtime=0)


def test_non_finite_vectors_found_in_any_block() -> None:
    vectors = make_vectors(10)
    assert artifact._all_finite(vectors, rows=3)
    vectors[9, 7] = np.inf  # in the last, partial block
    assert not artifact._all_finite(vectors, rows=3)


def test_an_unchanged_index_is_not_written_again_so_rollback_targets_survive_pruning(tmp_path: Path) -> None:
    """Nightly ingests of unchanged sources: each would be a new id for the same bytes, and a week
    of them would prune the last *different* version, the one a rollback needs."""
    store = str(tmp_path / "store")
    older = build(store, seed=1)
    current = build(store, seed=2)
    for _ in range(3):
        assert build(store, seed=2) == current  # the same content as LATEST: LATEST's version
    assert list_versions(store) == [older, current] and read_latest(store) == current
    changed = build(store, seed=3)
    assert changed not in (older, current) and read_latest(store) == changed


def test_a_damaged_latest_of_the_same_content_is_replaced_by_a_new_version(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    current = build(store, seed=2)
    dense = tmp_path / "store" / current / "dense.faiss"
    dense.write_bytes(dense.read_bytes()[:-8])  # a truncated upload
    repaired = build(store, seed=2)  # within the same second it is the same id, written again
    assert read_latest(store) == repaired
    assert open_version(store).version == repaired  # every file verifies


# ---- a source that broke quietly does not replace a good index ---------------------------------

def _version_of(store: str, counts: dict[str, int], seed: int, configured: tuple[str, ...] = ()) -> str:
    """A version whose chunks come from sources named like `counts` (source id "<name>:<i>"), with
    `configured` sources read without giving any chunk (the manifest's stats.sources)."""
    import time

    time.sleep(1.0)  # version ids and sources_read_at carry the time in seconds
    from dataclasses import replace

    chunks = [replace(c, source_id=f"{name}:{c.source_id}") for name, n in counts.items()
              for c in make_chunks(n, f"{name} {seed}")]
    stats = {"sources": {name: {"documents": 1, "chunks": counts.get(name, 0), "skipped": 0}
                         for name in (*counts, *configured)}}
    return write_version(store, chunks, make_vectors(len(chunks), seed=seed), MODEL, stats=stats)


def test_a_source_that_gives_nothing_is_not_published_over_one_that_gave_chunks(tmp_path: Path) -> None:
    store = str(tmp_path)
    good = _version_of(store, {"docs": 15, "code": 10, "slack": 6}, seed=1)
    publish(store, good)
    empty_docs = _version_of(store, {"code": 10, "slack": 6}, seed=2, configured=("docs",))
    with pytest.raises(artifact.ShrunkError) as e:
        publish(store, empty_docs)
    assert read_latest(store) == good  # the bots keep the good index
    message = str(e.value)
    assert "docs gave no chunks (it had 15)" in message and f"flytegpt publish {empty_docs}" in message
    assert "[index] max_shrink" in message
    publish(store, empty_docs, force=True)  # `flytegpt publish VERSION`: meant
    assert read_latest(store) == empty_docs


def test_an_index_that_lost_more_than_max_shrink_is_not_published(tmp_path: Path) -> None:
    store = str(tmp_path)
    publish(store, good := _version_of(store, {"docs": 100, "code": 100}, seed=1))
    smaller = _version_of(store, {"docs": 60, "code": 100}, seed=2)  # docs -40%, the index -20%
    with pytest.raises(artifact.ShrunkError, match=r"docs has 60 chunks \(it had 100\)"):
        publish(store, smaller)
    assert read_latest(store) == good
    publish(store, smaller, max_shrink=0.5)
    assert read_latest(store) == smaller
    much_smaller = _version_of(store, {"docs": 10, "code": 10}, seed=3)
    publish(store, much_smaller, max_shrink=1.0)  # 1 turns the guard off
    assert read_latest(store) == much_smaller


def test_a_source_taken_out_of_the_config_or_a_small_one_shrinking_is_no_loss(tmp_path: Path) -> None:
    store = str(tmp_path)
    publish(store, _version_of(store, {"docs": 100, "slack": 40, "old": 300}, seed=1))
    fewer_sources = _version_of(store, {"docs": 90, "slack": 20}, seed=2)  # "old" is no longer configured
    publish(store, fewer_sources)  # slack (< 50 chunks) halved: judged only on giving nothing
    assert read_latest(store) == fewer_sources


# ---- one channel or folder lost inside a source that still gives chunks -------------------------

def _part_version(store: str, parts: dict[str, int], seed: int, *, source: str = "community",
                  kind: str = "slack") -> str:
    """A version of one source whose chunks come from `parts`: Slack channels ("<id> <name>",
    permalinks as the Slack sources make them) or top-level folders of a docs source."""
    import time

    from flytegpt.ingest.models import Chunk
    from flytegpt.ingest.sources.slack_export import permalink

    time.sleep(1.0)  # version ids and sources_read_at carry the time in seconds
    chunks = []
    for part, n in parts.items():
        for i in range(n):
            if kind == "slack":
                channel_id, name = part.split()
                root = f"{1_700_000_000 + i}.000100"
                chunks.append(Chunk(f"{source}:{name}/{root}", "slack", f"thread {i}",
                                    permalink("https://flyte-org.slack.com", channel_id, root),
                                    f"{name} {i} {seed}", f"{name} {i} {seed}"))
            else:
                chunks.append(Chunk(f"{source}:{part}/page{i}.md", "docs", f"page {i}", f"https://docs/{part}/{i}",
                                    f"{part} {i} {seed}", f"{part} {i} {seed}"))
    stats = {"sources": {source: {"documents": len(chunks), "chunks": len(chunks), "skipped": 0}}}
    return write_version(store, chunks, make_vectors(len(chunks), seed=seed), MODEL, stats=stats)


def test_the_manifest_counts_chunks_per_slack_channel_by_id_and_per_top_level_folder(tmp_path: Path) -> None:
    from flytegpt.ingest.models import Chunk
    from flytegpt.ingest.sources.slack_export import permalink

    chunks = [
        Chunk("s:general/1.0", "slack", "t", permalink("https://x.slack.com", "C1", "1.0"), "a", "a"),
        Chunk("s:old-name/2.0", "slack", "t", permalink(None, "C1", "2.0", team="T1"), "b", "b"),
        Chunk("s:general/3.0", "slack", "t", permalink(None, "C1", "3.0"), "c", "c"),
        Chunk("s:lost/4.0", "slack", "t", permalink(None, None, "4.0"), "d", "d"),  # no channel id at all
        Chunk("d:guide/intro.md", "docs", "t", "u", "e", "e"),
        Chunk("d:guide/deep/more.md", "docs", "t", "u", "f", "f"),
        Chunk("d:README.md", "docs", "t", "u", "g", "g"),  # at the root: in no folder
    ]
    assert artifact.part_counts(chunks) == {
        "channels": {"s": {"#lost": {"name": "lost", "chunks": 1}, "C1": {"name": "general", "chunks": 3}}},
        "folders": {"d": {"guide": 2}},
    }
    manifest = artifact.read_manifest(str(tmp_path), write_version(str(tmp_path), chunks, make_vectors(7), MODEL))
    assert manifest["channels"]["s"]["C1"] == {"name": "general", "chunks": 3}
    assert manifest["folders"] == {"d": {"guide": 2}}


def test_a_slack_channel_that_gives_nothing_is_not_published(tmp_path: Path) -> None:
    """One renamed channel of three: 16% of the source, under max_shrink, published silently before."""
    store = str(tmp_path)
    publish(store, good := _part_version(store, {"C1 general": 30, "C2 deploy": 25, "C3 support": 100}, seed=1))
    renamed = _part_version(store, {"C1 general": 30, "C3 support": 100}, seed=2)
    with pytest.raises(artifact.ShrunkError) as e:
        publish(store, renamed)
    assert read_latest(store) == good  # the bots keep the good index
    message = str(e.value)
    assert ("community: channel #deploy (C2) gave no chunks (it had 25; renamed, archived, or the bot "
            "removed from it)") in message
    assert "general" not in message and "support" not in message
    assert f"`flytegpt publish {renamed}` publishes it" in message and "taken out on purpose" in message
    publish(store, renamed, force=True)  # `flytegpt publish VERSION`: meant
    assert read_latest(store) == renamed


def test_a_channel_renamed_but_read_by_id_or_a_small_one_gone_is_no_loss(tmp_path: Path) -> None:
    store = str(tmp_path)
    publish(store, _part_version(store, {"C1 general": 30, "C2 deploy": 25, "C4 tiny": 19, "C3 support": 100},
                                 seed=1))
    # C2 renamed (configured by id: still read, its threads under the new name), C4 (< 20 chunks) gone
    publish(store, later := _part_version(store, {"C1 general": 30, "C2 deployment": 25, "C3 support": 100},
                                          seed=2))
    assert read_latest(store) == later


def test_a_top_level_folder_that_gives_nothing_is_not_published_unless_it_moved(tmp_path: Path) -> None:
    store = str(tmp_path)
    parts = {"guide": 30, "api": 30, "tutorials": 100}
    publish(store, good := _part_version(store, parts, seed=1, source="docs", kind="docs"))
    # an include pattern that stopped matching api/ after an upstream restructure: -19%
    lost = _part_version(store, {"guide": 30, "tutorials": 100}, seed=2, source="docs", kind="docs")
    with pytest.raises(artifact.ShrunkError, match=r"docs: folder api/ gave no chunks \(it had 30\)"):
        publish(store, lost)
    assert read_latest(store) == good
    # the same pages moved to reference/: nothing was lost
    moved = _part_version(store, {"guide": 30, "reference": 31, "tutorials": 100}, seed=3, source="docs",
                          kind="docs")
    publish(store, moved)
    assert read_latest(store) == moved


def test_manifests_without_channel_and_folder_counts_still_load_and_publish(tmp_path: Path) -> None:
    """Versions written before the counts existed: LATEST's, and one published over a newer LATEST."""
    store = str(tmp_path)
    old = _part_version(store, {"C1 general": 30, "C2 deploy": 25, "C3 support": 100}, seed=1)
    edit_manifest(tmp_path, old, lambda m: (m.pop("channels"), m.pop("folders")))
    publish(store, old)
    assert len(open_version(store)) == 155  # loads and verifies as before
    newer = _part_version(store, {"C1 general": 30, "C3 support": 100}, seed=2)
    publish(store, newer)  # nothing to compare the channels with: judged per source only, as before
    assert read_latest(store) == newer
    # from then on, LATEST has the counts
    again = _part_version(store, {"C3 support": 100, "C5 new": 30}, seed=3)
    with pytest.raises(artifact.ShrunkError, match=r"channel #general \(C1\) gave no chunks \(it had 30;"):
        publish(store, again)
    # a version without them published over a LATEST with them (an old version, on purpose)
    edit_manifest(tmp_path, again, lambda m: (m.pop("channels"), m.pop("folders")))
    publish(store, again)
    assert read_latest(store) == again


@pytest.mark.parametrize("claim", ["floats", "vectors"])
def test_a_flat_index_file_that_claims_more_than_it_holds_is_refused_before_faiss_reads_it(
        tmp_path: Path, claim: str) -> None:
    """Before, a 109-byte dense.faiss (85 here) saying it holds 2^30 floats, with checksums to match
    (they are the store's own), made FAISS allocate 4 GiB: an OOM-killed bot, again at restart."""
    import hashlib
    import resource

    version = build(str(tmp_path))
    path = tmp_path / version / "dense.faiss"
    fields = list(artifact._FLAT_HEADER.unpack(path.read_bytes()[: artifact._FLAT_HEADER.size]))
    if claim == "floats":
        fields[7] = 1 << 30
    else:  # a manifest and a header agreeing on 2^27 vectors, over a short file
        fields[2], fields[7] = 1 << 27, (1 << 27) * 8
    hostile = artifact._FLAT_HEADER.pack(*fields) + b"\0" * 40
    path.write_bytes(hostile)
    edit_manifest(tmp_path, version, lambda m: (
        m["files"]["dense.faiss"].update(sha256=hashlib.sha256(hostile).hexdigest(), bytes=len(hostile)),
        m.update(chunk_count=fields[2])))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactError, match="dense.faiss holds 85 bytes and says it holds"):
        open_version(str(tmp_path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: nothing near 4 GiB


def test_a_build_killed_before_its_manifest_is_pruned_once_it_is_old(tmp_path: Path) -> None:
    """The manifest is written last; a folder without one was never listed, and so never pruned."""
    store = str(tmp_path)
    build(store, seed=1)
    old = "20200101T000000Z-0badf00d"
    (tmp_path / old).mkdir()
    (tmp_path / old / "dense.faiss").write_bytes(b"x" * 100)
    recent = artifact.datetime.now(artifact.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-0000beef"
    (tmp_path / recent).mkdir()  # a build still running: left alone
    (tmp_path / recent / "chunks.jsonl.gz").write_bytes(b"x")
    (tmp_path / "not-a-version").mkdir()
    build(store, seed=2)  # publishing prunes
    assert not (tmp_path / old).exists()
    assert (tmp_path / recent).exists() and (tmp_path / "not-a-version").exists()
