"""The index store under attack and under accident: names from LATEST and manifests, two
ingests racing for LATEST, retention, reproducible files.

Every name read from the store is joined to a path, so each is validated first; a store
that is damaged gives a message naming the file and field, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.ingest import artifact
from flytegpt.ingest.artifact import (
    ArtifactError,
    list_versions,
    open_version,
    prune,
    prune_work_files,
    publish,
    read_latest,
    write_version,
)
from flytegpt.ingest.config import sample_config_path
from flytegpt.ingest.store import StoreLockError, get_fs, store_lock

from support.index_data import MODEL, edit_manifest, make_chunks, make_vectors


def _build(store: str, seed: int, *, sources_read_at: datetime | None = None) -> str:
    return write_version(store, make_chunks(6, str(seed)), make_vectors(6, seed=seed), MODEL,
                         sources_read_at=sources_read_at)


def _search(store: Path) -> object:
    return CliRunner().invoke(main, ["search", "cache", "--config", str(sample_config_path()), "--store", str(store)])


# ---------------------------------------------------------------- names from LATEST and manifests


@pytest.mark.parametrize("latest", ["../evil/20260101T000000Z-00000000", "/etc", "20260101T000000Z-0000000g",
                                    "..", "20260101T000000Z-00000000/../../x"])
def test_latest_naming_anything_but_a_version_is_refused(tmp_path: Path, latest: str) -> None:
    store = tmp_path / "store"
    evil = tmp_path / "evil" / "20260101T000000Z-00000000"
    evil.mkdir(parents=True)  # a plausible version outside the store
    store.mkdir()
    (store / "LATEST").write_text(latest + "\n")
    with pytest.raises(ArtifactError, match="is not an index version id"):
        read_latest(str(store))
    with pytest.raises(ArtifactError, match="is not an index version id"):
        open_version(str(store))


def test_latest_with_nul_bytes_is_a_clear_error_and_publish_repairs_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    version = _build(str(store), 1)
    (store / "LATEST").write_bytes(version.encode() + b"\0\0\n")
    with pytest.raises(ArtifactError, match="LATEST in .* contains NUL bytes"):
        read_latest(str(store))
    result = _search(store)
    assert result.exit_code == 1 and "contains NUL bytes" in result.output
    assert "Traceback" not in result.output
    publish(str(store), version)  # an unreadable LATEST does not block publishing a good version
    assert read_latest(str(store)) == version


def test_an_empty_latest_is_called_empty_not_missing(tmp_path: Path) -> None:
    """An empty LATEST (a hand edit, a failed copy) was reported as `LATEST not found`."""
    store = tmp_path / "store"
    _build(str(store), 1)
    (store / "LATEST").write_text("\n")
    with pytest.raises(ArtifactError, match="LATEST is empty"):
        open_version(str(store))
    result = _search(store)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"no published index in {store}: LATEST is empty" in result.output and "not found" not in result.output


def test_explicit_version_argument_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is not an index version id"):
        open_version(str(tmp_path), "../../etc")
    with pytest.raises(ArtifactError, match="is not an index version id"):
        publish(str(tmp_path), "../x")


@pytest.mark.parametrize("name", ["../../outside.txt", "/etc/passwd", "keyword/../../x", "sub/dir/file",
                                  "other/file", ".hidden", "keyword\\..\\x", ""])
def test_manifest_file_names_outside_the_version_layout_are_refused(tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    version = _build(str(store), 1)
    secret = tmp_path / "outside.txt"
    secret.write_text("secret")
    entry = {"sha256": hashlib.sha256(b"secret").hexdigest(), "bytes": 6}
    edit_manifest(store, version, lambda m: m["files"].update({name: entry}))
    with pytest.raises(ArtifactError, match="is not a file name of an index version"):
        open_version(str(store), version)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(chunk_count="six"), r"chunk_count: expected an integer >= 0, found 'six'"),
        (lambda m: m.update(chunk_count=6.5), r"chunk_count: expected an integer"),
        (lambda m: m.update(chunk_count=True), r"chunk_count: expected an integer"),
        (lambda m: m["model"].update(dimension="8"), r"model\.dimension: expected a positive integer"),
        (lambda m: m.update(model="test/model"), r"model\.model_id: expected a model id"),
        (lambda m: m["index"].update(type="hnsw"), r"index\.type: expected one of flat, ivf, found 'hnsw'"),
        (lambda m: m["index"].update(type="ivf"), r"dense\.faiss holds a IndexFlatIP, the manifest says index type 'ivf'"),
        (lambda m: m["files"]["dense.faiss"].update(bytes="12"), r"files\['dense\.faiss'\]: expected"),
        (lambda m: m["files"]["dense.faiss"].update(sha256="../x"), r"files\['dense\.faiss'\]: expected"),
        (lambda m: m.update(files=["dense.faiss"]), r"files: expected an object"),
    ],
    ids=["chunk_count-str", "chunk_count-float", "chunk_count-bool", "dimension-str", "model-not-object",
         "index-type-unknown", "index-type-vs-file", "bytes-str", "sha-path", "files-list"],
)
def test_malformed_manifest_fields_are_messages(tmp_path: Path, edit, message: str) -> None:
    store = tmp_path / "store"
    version = _build(str(store), 1)
    publish(str(store), version)
    edit_manifest(store, version, edit)
    with pytest.raises(ArtifactError, match=message):
        open_version(str(store), version)
    result = _search(store)  # the CLI: a message, exit 1, no traceback
    assert result.exit_code == 1 and version in result.output and "Traceback" not in result.output


def test_manifest_naming_a_model_that_cannot_be_loaded(tmp_path: Path) -> None:
    store = tmp_path / "store"
    version = _build(str(store), 1)  # built "with" test/model, which no hub or folder has
    publish(str(store), version)
    result = _search(store)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"index version {version} was embedded with 'test/model', which cannot be loaded" in result.output


def test_reloader_refuses_a_version_whose_model_cannot_be_loaded(tmp_path: Path) -> None:
    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.reload import Reloader
    from flytegpt.ingest.config import load_config

    store = tmp_path / "store"
    version = _build(str(store), 1)
    publish(str(store), version)
    config = load_config(sample_config_path()).with_store(str(store))
    reloader = Reloader(config, IndexHolder())
    assert reloader.check_once() is False
    assert "embedding model 'test/model' cannot be loaded" in reloader.refused[version]
    assert reloader.check_once() is False  # remembered: not loaded again on every poll


# ---------------------------------------------------------------- two ingests, one store


def test_publish_refuses_to_move_latest_back_to_older_sources(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    now = datetime.now(timezone.utc)
    older = _build(store, 1, sources_read_at=now - timedelta(minutes=10))  # read first, finished last
    newer = _build(store, 2, sources_read_at=now - timedelta(minutes=5))
    publish(store, newer)
    with pytest.raises(ArtifactError, match=f"not published: LATEST .* names {newer}.*{older} stays in the store"):
        publish(store, older)
    assert read_latest(store) == newer
    publish(store, newer)  # publishing the same version again is fine (a cached Flyte run)
    publish(store, older, force=True)  # a deliberate rollback
    assert read_latest(store) == older


def test_concurrent_publishers_are_serialised_and_latest_ends_on_the_newest(tmp_path: Path) -> None:
    """Two processes publish alternately; the lock keeps each read-compare-write whole."""
    store = tmp_path / "store"
    now = datetime.now(timezone.utc)
    versions = [_build(str(store), i, sources_read_at=now + timedelta(seconds=i)) for i in range(8)]
    script = textwrap.dedent("""
        import sys
        from flytegpt.ingest.artifact import ArtifactError, publish
        store, *versions = sys.argv[1:]
        for v in versions:
            try:
                publish(store, v, keep_versions=100)
            except ArtifactError as e:
                assert "not published" in str(e), e
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(store), *versions[i::2]]) for i in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert read_latest(str(store)) == versions[-1]
    assert not (store / "publish.lock").exists()


def test_lock_waits_for_the_holder_and_breaks_a_stale_one(tmp_path: Path) -> None:
    fs, root = get_fs(str(tmp_path))
    lock = f"{root}/publish.lock"
    order: list[str] = []
    with store_lock(fs, lock):
        waiter = threading.Thread(target=lambda: _hold(fs, lock, order))
        waiter.start()
        time.sleep(0.5)
        order.append("first done")
    waiter.join(timeout=30)
    assert order == ["first done", "second"]
    with store_lock(fs, lock):
        with pytest.raises(StoreLockError, match=r"publish\.lock is held by .* pid"):
            with store_lock(fs, lock, wait_s=0.3):
                pass
    # a holder that died: its process is gone (same host) or its lock is old (any host)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Path(lock).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "at": time.time()}))
    with store_lock(fs, lock, wait_s=0.5):
        pass
    Path(lock).write_text(json.dumps({"host": "elsewhere", "pid": 1, "at": time.time() - 3600}))
    with store_lock(fs, lock, wait_s=0.5):
        pass
    assert not Path(lock).exists()


def test_a_long_publish_keeps_its_lock_past_the_stale_age(tmp_path: Path) -> None:
    """A publish that takes longer than the stale age (a large index verified on S3) renews its
    lock: a second publisher waits and gives up instead of breaking a lock whose holder is alive."""
    fs, root = get_fs(str(tmp_path))
    lock = f"{root}/publish.lock"
    with store_lock(fs, lock, stale_after_s=0.6):
        time.sleep(0.9)  # past the stale age already
        with pytest.raises(StoreLockError, match="is held by"):
            with store_lock(fs, lock, stale_after_s=0.6, wait_s=1.0):
                pass
    assert not Path(lock).exists()


def test_a_waiter_says_once_what_it_waits_for_and_the_error_names_the_activity(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A second publish (or slack_api collect) that waits looked hung: it logs what it waits for,
    once, and its error after the wait names what holds the lock (`activity`)."""
    fs, root = get_fs(str(tmp_path))
    lock = f"{root}/sources/live/collect.lock"
    with store_lock(fs, lock, activity="collect of the slack_api source 'live'"):
        with pytest.raises(StoreLockError, match=r"collect\.lock is held by .* pid \d+ since \S+Z: another "
                                                 r"collect of the slack_api source 'live' is running"):
            with store_lock(fs, lock, wait_s=0.5, activity="collect of the slack_api source 'live'"):
                pass
    waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1 and waits[0].levelname == "WARNING"
    assert "waiting up to 0.5 s for another collect of the slack_api source 'live'" in waits[0].getMessage()
    caplog.clear()
    with store_lock(fs, lock):  # free: no wait, no log line
        pass
    assert not [r for r in caplog.records if "waiting up to" in r.getMessage()]


def _hold(fs, lock: str, order: list[str]) -> None:
    with store_lock(fs, lock, wait_s=20):
        order.append("second")


def test_same_inputs_give_byte_identical_index_files_whatever_the_hash_seed(tmp_path: Path) -> None:
    """Built twice in fresh interpreters with different PYTHONHASHSEED: the same bytes."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[2])
        from support.index_data import MODEL, make_chunks, make_vectors
        from flytegpt.ingest.artifact import write_version
        from flytegpt.ingest.models import Chunk
        words = "cache task workflow map_task with_overrides FlyteFile launch plan schedule secret".split()
        chunks = [Chunk(c.source_id, c.kind, c.title, c.url, c.text, c.embed_text + " " + " ".join(words[i % 7:]))
                  for i, c in enumerate(make_chunks(60))]
        print(write_version(sys.argv[1], chunks, make_vectors(60), MODEL))
    """)
    tests_dir = str(Path(__file__).parents[1])  # the folder that holds `support`
    files = []
    for seed in ("1", "2"):
        store = tmp_path / f"store{seed}"
        out = subprocess.run([sys.executable, "-c", script, str(store), tests_dir], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120)
        assert out.returncode == 0, out.stderr
        folder = store / out.stdout.strip()
        files.append({p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"})
    assert set(files[0]) == set(files[1]) and "keyword/vocab.index.json" in files[0]
    different = [name for name in files[0] if files[0][name] != files[1][name]]
    assert different == []


# ---------------------------------------------------------------- retention


def test_publish_keeps_the_last_versions_latest_and_the_previous_one(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    base = datetime.now(timezone.utc)
    versions = [_build(store, i, sources_read_at=base + timedelta(seconds=i)) for i in range(6)]
    # publish an older version first: it is "the previous one" when the newest is published
    publish(store, versions[1], keep_versions=100)
    previous = versions[1]
    publish(store, versions[5], keep_versions=2)
    remaining = set(list_versions(store))
    assert remaining == set(versions[-2:]) | {previous}  # the newest two in the order made
    assert read_latest(store) == versions[5]


def test_prune_deletes_oldest_first_never_latest_nor_protected(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    versions = [_build(store, i) for i in range(6)]  # oldest first
    publish(store, versions[4], keep_versions=100)
    removed = prune(store, 1, protect={versions[1]})
    assert removed == [versions[0], versions[2], versions[3]]  # oldest first
    assert set(list_versions(store)) == {versions[1], versions[4], versions[5]}
    with pytest.raises(ValueError, match="keep must be at least 1"):
        prune(store, 0)


def test_a_version_another_ingest_has_not_published_yet_survives_a_publish(tmp_path: Path) -> None:
    """Two ingests at once: A read its sources last but finished first, B published: A's
    version is newer than LATEST and publishable, so B's pruning must leave it."""
    store = str(tmp_path / "store")
    now = datetime.now(timezone.utc)
    old = _build(store, 0, sources_read_at=now - timedelta(days=1))
    publish(store, old)
    newest_sources = _build(store, 1, sources_read_at=now)  # ingest A, not published yet
    older_sources = _build(store, 2, sources_read_at=now - timedelta(hours=1))  # ingest B
    publish(store, older_sources, keep_versions=1)
    assert set(list_versions(store)) == {newest_sources, older_sources, old}  # old: the previous LATEST
    publish(store, newest_sources, keep_versions=1)  # A publishes: its version is there
    assert read_latest(store) == newest_sources
    assert set(list_versions(store)) == {newest_sources, older_sources}


def test_a_rollback_keeps_the_newer_versions_until_latest_moves_past_them(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    now = datetime.now(timezone.utc)
    versions = [_build(store, i, sources_read_at=now - timedelta(days=3 - i)) for i in range(3)]
    publish(store, versions[2])
    publish(store, versions[0], keep_versions=1, force=True)
    assert set(list_versions(store)) == set(versions)  # a roll forward is still possible
    newer = _build(store, 3, sources_read_at=now)
    publish(store, newer, keep_versions=1)
    assert set(list_versions(store)) == {versions[0], newer}


def test_old_flyte_work_files_are_pruned_after_publish(tmp_path: Path) -> None:
    store = tmp_path / "store"
    work = store / artifact.WORK_DIR
    (work / "documents").mkdir(parents=True)
    old_file, new_file = work / "documents" / "old.jsonl", work / "documents" / "new.jsonl"
    old_file.write_text("old")
    week_ago = time.time() - 7 * 86400
    os.utime(old_file, (week_ago, week_ago))
    version = _build(str(store), 1)
    new_file.write_text("new")
    publish(str(store), version)
    assert not old_file.exists() and new_file.exists()
    assert prune_work_files(str(tmp_path / "no-such-store"), before=datetime.now(timezone.utc)) == []


def test_a_cached_older_version_published_by_a_run_that_read_its_sources_now(tmp_path: Path) -> None:
    """The sources went back to an earlier state and the Flyte build was a cache hit: the old
    version is what tonight's run read, so the run's own read time is what counts."""
    store = str(tmp_path / "store")
    now = datetime.now(timezone.utc)
    cached = _build(store, 1, sources_read_at=now - timedelta(days=2))
    newer = _build(store, 2, sources_read_at=now - timedelta(days=1))
    publish(store, newer)
    with pytest.raises(ArtifactError, match="not published"):
        publish(store, cached)
    publish(store, cached, sources_read_at=now)
    assert read_latest(store) == cached


def test_lock_on_a_filesystem_without_exclusive_create() -> None:
    """Some fsspec backends refuse mode "xb": the lock falls back to check-then-write."""
    from fsspec.implementations.memory import MemoryFileSystem

    class NoExclusiveCreate(MemoryFileSystem):
        protocol = "noexcl"

        def _open(self, path, mode="rb", **kwargs):
            if "x" in mode:
                raise NotImplementedError("File mode not supported")
            return super()._open(path, mode, **kwargs)

    fs = NoExclusiveCreate()
    with store_lock(fs, "/store/publish.lock"):
        with pytest.raises(StoreLockError, match="is held by"):
            with store_lock(fs, "/store/publish.lock", wait_s=0.3):
                pass
    assert not fs.exists("/store/publish.lock")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_store_files_are_created_as_the_umask_says(tmp_path: Path, umask: int, mode: int) -> None:
    """Every file of a store was 0600 whatever the umask (tempfile.mkstemp), so a bot running as
    another user could not read a version an ingest job wrote to a local or NFS store."""
    from flytegpt.ingest.store import atomic_writer

    store = tmp_path / "store"
    old = os.umask(umask)
    try:
        publish(str(store), _build(str(store), 1))
        fs, root = get_fs(str(store))
        with atomic_writer(fs, f"{root}/chunk-cache/x.jsonl.gz") as f:  # the streaming writer of the caches
            f.write(b"x")
        with store_lock(fs, f"{root}/publish.lock"):
            lock_mode = (store / "publish.lock").stat().st_mode & 0o777
    finally:
        os.umask(old)
    files = {p.relative_to(store).as_posix(): p.stat().st_mode & 0o777 for p in store.rglob("*") if p.is_file()}
    assert {"LATEST", "chunk-cache/x.jsonl.gz"} <= set(files) and any(n.endswith("/dense.faiss") for n in files)
    assert any(n.endswith("/manifest.json") for n in files) and any(n.endswith("/chunks.jsonl.gz") for n in files)
    assert files == {name: mode for name in files}
    assert lock_mode == mode
    assert not [n for n in files if ".tmp-" in n]  # no temporary file left behind
