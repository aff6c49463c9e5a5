"""`flytegpt versions` and `flytegpt publish` as an operator runs them on a store of real versions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.index_data import MODEL, edit_manifest, make_chunks, make_vectors, published_versions

from flytegpt.bot.cli import main
from flytegpt.ingest.artifact import CHUNKS_FILE, publish, read_latest, write_version


def run(store: "Path | str", *args: str):
    return CliRunner().invoke(main, [*args, "--store", str(store)], env={"COLUMNS": "300"})


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three published versions, oldest first; the last is LATEST."""
    return tmp_path, published_versions(tmp_path, (8, 12, 6))


def test_versions_lists_newest_first_and_marks_latest(store):
    path, (v1, v2, v3) = store
    result = run(path, "versions")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [line for line in lines if any(v in line for v in (v1, v2, v3))]
    assert [next(v for v in (v1, v2, v3) if v in r) for r in rows] == [v3, v2, v1]
    assert "*" in rows[0] and "*" not in rows[1] + rows[2]
    assert "test/model" in rows[0] and "12" in rows[1]

    data = json.loads(run(path, "versions", "--json").output)
    assert data["latest"] == v3
    assert [(r["version"], r["chunks"], r["latest"]) for r in data["versions"]] == [(v3, 6, True), (v2, 12, False), (v1, 8, False)]
    assert data["versions"][1]["counts"] == {"code": 3, "docs": 6, "slack": 3}


def test_publish_rolls_back_and_forward(store):
    path, (v1, v2, v3) = store
    result = run(path, "publish", v1)
    assert result.exit_code == 0, result.output
    assert read_latest(str(path)) == v1
    assert f"was {v3}" in result.output
    again = run(path, "publish", v1)  # LATEST already names it: re-written so bots retry, never "served"
    assert again.exit_code == 0 and f"LATEST already names {v1}" in again.output and "served" not in again.output
    assert run(path, "publish", v3).exit_code == 0 and read_latest(str(path)) == v3

    (path / "LATEST").write_bytes(b"\0garbage")  # a damaged LATEST: publishing repairs it
    assert "NUL bytes" in json.loads(run(path, "versions", "--json").output)["latest_problem"]
    result = run(path, "publish", v2)
    assert result.exit_code == 0 and "(was unreadable)" in result.output and read_latest(str(path)) == v2
    assert set(json.loads(run(path, "versions", "--json").output)["versions"][i]["version"] for i in range(3)) == {v1, v2, v3}


def test_publish_refuses_what_cannot_serve(store):
    path, (v1, v2, v3) = store
    (path / v2 / CHUNKS_FILE).write_bytes(b"not gzip")
    result = run(path, "publish", v2)
    assert result.exit_code == 1
    assert f"not published, LATEST still names {v3}" in result.output and CHUNKS_FILE in result.output
    assert read_latest(str(path)) == v3

    unknown = "20200101T000000Z-00000000"
    result = run(path, "publish", unknown)
    assert result.exit_code == 1 and f"{unknown} is not a complete version" in result.output and v3 in result.output
    result = run(path, "publish", "../LATEST")
    assert result.exit_code == 2 and "not an index version id" in result.output
    assert read_latest(str(path)) == v3


def test_versions_shows_a_damaged_manifest_and_an_empty_store(store, tmp_path_factory):
    path, (v1, v2, v3) = store
    edit_manifest(path, v1, lambda m: m.update(chunk_count="many"))
    data = json.loads(run(path, "versions", "--json").output)
    assert "chunk_count" in data["versions"][2]["problem"]
    result = run(path, "versions")
    assert result.exit_code == 0 and "chunk_count" in result.output

    empty = tmp_path_factory.mktemp("empty")
    result = run(empty, "versions")
    assert result.exit_code == 1 and "no index versions" in result.output and "flytegpt ingest" in result.output
    assert json.loads(run(empty, "versions", "--json").output)["versions"] == []


def test_versions_shows_a_truncated_file_even_in_the_served_version(store):
    """A truncated dense.faiss in LATEST was listed with its `*` like a good version; only `ask`
    and `search` found out."""
    path, (v1, v2, v3) = store
    dense = path / v3 / "dense.faiss"
    dense.write_bytes(dense.read_bytes()[:100])
    (path / v2 / "chunks.jsonl.gz").unlink()
    data = json.loads(run(path, "versions", "--json").output)
    rows = {r["version"]: r for r in data["versions"]}
    assert rows[v3]["problem"].startswith("damaged: dense.faiss has 100 bytes, its manifest says ")
    assert rows[v2]["problem"] == "damaged: chunks.jsonl.gz is missing" and "problem" not in rows[v1]
    result = run(path, "versions")  # listed all the same, and exit 1: the served version cannot serve
    assert result.exit_code == 1 and "damaged" in result.output
    assert f"cannot serve {v3}: damaged: dense.faiss has 100 bytes" in " ".join(result.output.split())


def test_versions_and_rollback_on_an_s3_store():
    from support.moto_s3 import moto_endpoint

    with moto_endpoint("flytegpt-rollback"):
        store = "s3://flytegpt-rollback/index"
        v1 = write_version(store, make_chunks(5), make_vectors(5), MODEL)
        publish(store, v1)
        time.sleep(1.0)
        v2 = write_version(store, make_chunks(7, tag="b"), make_vectors(7, seed=1), MODEL)
        publish(store, v2)
        data = json.loads(run(store, "versions", "--json").output)
        assert [(r["version"], r["chunks"], r["latest"]) for r in data["versions"]] == [(v2, 7, True), (v1, 5, False)]
        result = run(store, "publish", v1)
        assert result.exit_code == 0, result.output
        assert read_latest(store) == v1


def test_versions_says_when_latest_names_a_version_that_is_gone_or_is_empty(tmp_path: Path):
    """Both were `no index versions in STORE` or `no LATEST`, which sent the operator looking for
    a file that is there."""
    import shutil

    v = write_version(str(tmp_path), make_chunks(4), make_vectors(4), MODEL)
    publish(str(tmp_path), v)
    (tmp_path / "LATEST").write_text("")
    result = run(tmp_path, "versions")
    assert result.exit_code == 0 and "Nothing is published yet (LATEST is empty)" in result.output

    shutil.rmtree(tmp_path / v)
    result = run(tmp_path, "versions")
    assert result.exit_code == 1 and "no index versions in" in result.output and "(LATEST is empty)" in result.output

    (tmp_path / "LATEST").write_text(v + "\n")
    result = run(tmp_path, "versions")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        f"Error: no index versions in {tmp_path}, though LATEST names {v}: that version's folder is gone or has "
        f"no manifest: build one with flytegpt ingest --store {tmp_path}"]


def test_publish_without_config_prunes_nothing_and_with_config_as_it_says(tmp_path: Path, monkeypatch) -> None:
    # the bundled sample's keep_versions (7) is not the store's own: a rollback typed without
    # --config must not delete versions that the store's config (here 20) keeps
    monkeypatch.delenv("FLYTEGPT_CONFIG", raising=False)
    versions = []
    for i in range(10):
        time.sleep(1.0 if i else 0)  # version ids carry the time in seconds
        versions.append(write_version(str(tmp_path), make_chunks(6, tag=str(i)), make_vectors(6, seed=i), MODEL))
        publish(str(tmp_path), versions[-1], keep_versions=20)
    listed = lambda: {r["version"] for r in json.loads(run(tmp_path, "versions", "--json").output)["versions"]}  # noqa: E731
    assert listed() == set(versions)
    result = run(tmp_path, "publish", versions[-2])  # 8 older versions: the sample's 7 would prune one
    assert result.exit_code == 0, result.output
    assert listed() == set(versions)

    config = tmp_path / "keep1.toml"
    config.write_text('[index]\nkeep_versions = 1\n\n[[sources]]\nname = "docs"\nkind = "docs"\npath = "."\n')
    result = run(tmp_path, "publish", versions[-3], "--config", str(config))
    assert result.exit_code == 0, result.output
    # kept: LATEST (the one version kept_versions = 1 asks for), the one it named before and the
    # newer one rolled back from; the 7 older ones pruned
    assert listed() == set(versions[-3:])
