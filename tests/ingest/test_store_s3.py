"""An s3:// index store against a real S3-compatible server (moto in server mode) on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from support.moto_s3 import moto_endpoint
from support.tools import missing_tool

try:
    import boto3
    import moto  # noqa: F401
    import s3fs  # noqa: F401
except ImportError as e:  # the dev extra installs them
    missing_tool(f"{e.name} is not installed")

from flytegpt.ingest.artifact import (  # noqa: E402
    ArtifactError,
    list_versions,
    open_version,
    prune,
    publish,
    read_latest,
    write_version,
)
from flytegpt.ingest.embedding_cache import EmbeddingCache  # noqa: E402
from flytegpt.ingest.models import Chunk  # noqa: E402

from support.index_data import MODEL, make_chunks, make_vectors  # noqa: E402

BUCKET = "flytegpt-test"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint(BUCKET) as url:
        yield url


@pytest.fixture
def s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_write_publish_open_on_s3(endpoint: str, s3, tmp_path: Path) -> None:
    store = f"s3://{BUCKET}/roundtrip/index"
    assert read_latest(store) is None
    version = write_version(store, make_chunks(9), make_vectors(9), MODEL, stats={"computed": 9})
    assert read_latest(store) is None
    publish(store, version)
    assert read_latest(store) == version
    assert list_versions(store) == [version]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="roundtrip/")["Contents"]}
    assert f"roundtrip/index/{version}/manifest.json" in keys and "roundtrip/index/LATEST" in keys

    index = open_version(store, expect_model="test/model", expect_dimension=8)
    assert index.chunks == make_chunks(9) and index.dense.ntotal == 9
    _, ids = index.dense.search(make_vectors(9), 1)
    assert (ids[:, 0] == np.arange(9)).all()

    # with a cache folder the files stay local for the next start
    cache = tmp_path / "cache"
    open_version(store, cache_dir=str(cache))
    cached = cache / version / "dense.faiss"
    assert cached.is_file()
    cached.write_bytes(b"stale partial download")  # a bad local copy is fetched again
    assert len(open_version(store, cache_dir=str(cache)).chunks) == 9
    assert cached.stat().st_size == index.manifest["files"]["dense.faiss"]["bytes"]


def test_s3_checksum_mismatch_and_bad_publish(endpoint: str, s3) -> None:
    store = f"s3://{BUCKET}/bad/index"
    good = write_version(store, make_chunks(4), make_vectors(4), MODEL)
    publish(store, good)
    bad = write_version(store, make_chunks(5, "b"), make_vectors(5, seed=1), MODEL)
    key = f"bad/index/{bad}/dense.faiss"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[-1] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch in dense\.faiss"):
        open_version(store, bad)
    with pytest.raises(ArtifactError, match=r"dense\.faiss"):
        publish(store, bad)
    assert read_latest(store) == good
    with pytest.raises(ArtifactError, match="model mismatch"):
        open_version(store, expect_model="another/model")


def test_prune_on_s3(endpoint: str) -> None:
    store = f"s3://{BUCKET}/prune/index"
    versions = [write_version(store, make_chunks(3, str(i)), make_vectors(3, seed=i), MODEL) for i in range(3)]
    publish(store, versions[1])
    assert prune(store, keep=1) == [versions[0]]
    assert list_versions(store) == versions[1:]  # the published one and the newest


def test_embedding_cache_on_s3(endpoint: str) -> None:
    store = f"s3://{BUCKET}/cache/index"
    keys = [f"{i:064x}" for i in range(5)]
    cache = EmbeddingCache(store, "test/model", 8)
    assert cache.lookup(keys) == {}
    cache.add(keys, make_vectors(5))
    cache.flush()
    found = EmbeddingCache(store, "test/model", 8).lookup(keys)
    assert set(found) == set(keys)
    np.testing.assert_array_equal(np.stack([found[k] for k in keys]), make_vectors(5))


def test_chunk_cache_on_s3(endpoint: str, s3, monkeypatch: pytest.MonkeyPatch) -> None:
    from flytegpt.ingest import chunk_cache
    from flytegpt.ingest.chunk_cache import ChunkCache
    from flytegpt.ingest.models import Document

    store = f"s3://{BUCKET}/chunks/index"
    docs = [Document("docs", f"p{i}.md", "docs", f"P{i}", "u", f"page {i}") for i in range(3)]

    def make(doc: Document) -> list[Chunk]:
        return [Chunk(doc.source_id, "docs", doc.title, doc.url, doc.text, doc.text)]

    first = ChunkCache(store)
    made = [first.chunks(d, make) for d in docs]
    first.save()
    again = ChunkCache(store)
    assert [again.chunks(d, lambda d: pytest.fail("chunked again")) for d in docs] == made
    assert again.hits == 3
    # a new chunker version writes its own object; of the others only the newest stays in the bucket
    for version in ("feedfacefeedface", "0123456789abcdef"):
        monkeypatch.setattr(chunk_cache, "chunking_version", lambda version=version: version)
        newer = ChunkCache(store)
        [newer.chunks(d, make) for d in docs]
        newer.save()
        assert newer.hits == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="chunks/index/")["Contents"]]
    assert len(keys) == 2 and "chunks/index/chunk-cache/0123456789abcdef.jsonl.gz" in keys


def test_endpoint_comes_from_environment(endpoint: str) -> None:
    from flytegpt.ingest.store import get_fs

    fs, root = get_fs(f"s3://{BUCKET}/x")
    assert root == f"{BUCKET}/x"
    assert os.environ["FLYTEGPT_S3_ENDPOINT_URL"] == endpoint
    assert fs.client_kwargs.get("endpoint_url") == endpoint


def test_s3_names_from_latest_and_manifests_are_validated(endpoint: str, s3, tmp_path: Path) -> None:
    """A manifest entry `../../x` must not make the reader write outside its cache folder."""
    import json

    store = f"s3://{BUCKET}/traversal/index"
    version = write_version(store, make_chunks(4), make_vectors(4), MODEL)
    publish(store, version)
    key = f"traversal/index/{version}/manifest.json"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    dense = manifest["files"]["dense.faiss"]
    manifest["files"]["../../../escaped.faiss"] = dense
    s3.put_object(Bucket=BUCKET, Key="traversal/escaped.faiss", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(manifest).encode())
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ArtifactError, match="is not a file name of an index version"):
        open_version(store, cache_dir=str(cache))
    assert not list(tmp_path.rglob("escaped.faiss"))

    s3.put_object(Bucket=BUCKET, Key="traversal/index/LATEST", Body=b"../evil/20260101T000000Z-00000000\n")
    with pytest.raises(ArtifactError, match="is not an index version id"):
        read_latest(store)


def test_s3_publish_lock_is_exclusive(endpoint: str) -> None:
    from flytegpt.ingest.store import StoreLockError, get_fs, store_lock

    fs, root = get_fs(f"s3://{BUCKET}/locking")
    lock = f"{root}/publish.lock"
    with store_lock(fs, lock):
        assert fs.exists(lock)
        with pytest.raises(StoreLockError, match="publish.lock is held by"):
            with store_lock(fs, lock, wait_s=0.5):
                pass
    fs.invalidate_cache()
    assert not fs.exists(lock)


def test_s3_old_work_files_are_pruned(endpoint: str) -> None:
    from datetime import datetime, timedelta, timezone

    from flytegpt.ingest.artifact import prune_work_files
    from flytegpt.ingest.store import get_fs

    store = f"s3://{BUCKET}/work/index"
    fs, root = get_fs(store)
    fs.pipe_file(f"{root}/flyte-work/chunks/a.jsonl", b"a")
    now = datetime.now(timezone.utc)
    assert prune_work_files(store, before=now - timedelta(hours=1)) == []
    assert prune_work_files(store, before=now + timedelta(minutes=5)) == [f"{root}/flyte-work/chunks/a.jsonl"]


def test_s3_work_file_read_by_a_run_is_marked_in_use(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store has no modification time to set: a work file read after REFRESH_AFTER_S
    is written back with the same bytes, so pruning does not delete it under the run reading it."""
    import time
    from datetime import datetime, timedelta, timezone

    from flytegpt.flyte import handoff
    from flytegpt.ingest.artifact import prune_work_files

    store = f"s3://{BUCKET}/inuse/index"
    uri = handoff.write_work_file(store, "vectors", b"unchanged shard", ".npy")
    time.sleep(2.1)  # S3's LastModified has whole seconds
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=1)
    monkeypatch.setattr(handoff, "REFRESH_AFTER_S", 0.5)
    assert handoff.read_work_file(uri) == b"unchanged shard"
    assert prune_work_files(store, before=cutoff) == []


def test_s3_store_is_checked_writable_before_an_ingest(endpoint: str, s3) -> None:
    from flytegpt.ingest.store import StoreWriteError, check_writable

    check_writable(f"s3://{BUCKET}/probe/index")  # writable: passes and leaves nothing behind
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="probe/")
    with pytest.raises(StoreWriteError, match="cannot write to the index store s3://no-such-bucket/index"):
        check_writable("s3://no-such-bucket/index")
    assert "no-such-bucket" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}  # refused, not created


def test_no_write_to_a_missing_bucket_creates_it(endpoint: str, s3) -> None:
    """s3fs's makedirs/mkdir on a bucket path creates the bucket: a mistyped store must fail, not
    receive the corpus in a new bucket (or in somebody else's of that name)."""
    from flytegpt.flyte import handoff
    from flytegpt.ingest.store import get_fs, make_dirs

    fs, root = get_fs("s3://typo-bucket/flytegpt/store")
    make_dirs(fs, f"{root}/flyte-work/documents")  # nothing to make on an object store
    with pytest.raises(OSError):
        handoff.write_work_file("s3://typo-bucket/flytegpt/store", "documents", b"{}\n", ".jsonl")
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {BUCKET}
    # an existing bucket needs no folders either: the work file is written and read back
    uri = handoff.write_work_file(f"s3://{BUCKET}/nodirs/store", "documents", b"{}\n", ".jsonl")
    assert uri.startswith(f"s3://{BUCKET}/nodirs/store/flyte-work/documents/")
    assert handoff.read_work_file(uri) == b"{}\n"
