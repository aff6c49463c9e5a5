"""The ingest workflow's store: never the schedules' placeholder, never a bucket it creates, and a
record of every successful publish; a run superseded by an overlapping one succeeds.

Tasks run on flytekit's local executor (calling the registered task function), against a temp
folder or moto on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.index_data import MODEL, make_chunks, make_vectors
from support.moto_s3 import moto_endpoint

from flytegpt.ingest.artifact import LAST_RUN, read_latest, write_version
from flytegpt.ingest.config import sample_config_path


@pytest.fixture()
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")
    monkeypatch.setenv("HOME", str(tmp_path))


def test_the_schedules_placeholder_store_is_refused_naming_the_variable(local: None) -> None:
    from flytegpt.flyte.deploy import PLACEHOLDER_STORE
    from flytegpt.flyte.ingest_wf import collect

    with pytest.raises(Exception, match="FLYTEGPT_STORE was not set") as e:
        collect(config_path=str(sample_config_path()), store=PLACEHOLDER_STORE)
    assert PLACEHOLDER_STORE in str(e.value)


def test_a_run_into_a_missing_bucket_stops_before_reading_and_creates_no_bucket(local: None, tmp_path: Path) -> None:
    """A run with the example store (`my-flytegpt-bucket`, which anyone may own) created that bucket
    and wrote the corpus there; now the store is
    checked as `flytegpt ingest` checks it, before any source is read, without making a bucket."""
    import boto3

    from flytegpt.flyte.ingest_wf import ingest_wf

    # a git source on a closed port would fail with its own error had it been read: it was not
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "upstream"\nkind = "git"\nrepo = "http://127.0.0.1:9/x.git"\n'
                      'ref = "main"\nas_kind = "code"\n')
    with moto_endpoint("flytegpt-real") as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        with pytest.raises(Exception, match="cannot write to the index store s3://typo-bucket/flytegpt/store"):
            ingest_wf(config_path=str(config), store="s3://typo-bucket/flytegpt/store")
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"flytegpt-real"}
        assert "Contents" not in s3.list_objects_v2(Bucket="flytegpt-real")


def _version(store: Path, tag: str) -> str:
    version = write_version(str(store), make_chunks(8, tag=tag), make_vectors(8, seed=len(tag)), MODEL)
    time.sleep(1.0)  # version ids carry the time in seconds
    return version


def _last_run(store: Path) -> dict:
    return json.loads((store / LAST_RUN).read_text())


def test_publish_records_every_successful_run_changed_or_not(local: None, tmp_path: Path) -> None:
    from flytegpt.flyte.ingest_wf import publish

    store = tmp_path / "store"
    version = _version(store, "a")
    read_at = datetime.now(timezone.utc).isoformat()
    assert publish(version=version, store=str(store), sources_read_at=read_at, keep_versions=3) == version
    first = _last_run(store)
    assert first["version"] == version and first["changed"] is True and first["sources_read_at"] == read_at
    assert datetime.fromisoformat(first["finished_at"]).tzinfo is not None

    # an unchanged night: the same version again, a new record saying nothing changed
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert publish(version=version, store=str(store), sources_read_at=later, keep_versions=3) == version
    again = _last_run(store)
    assert again["changed"] is False and again["sources_read_at"] == later and again["version"] == version


def test_a_run_superseded_by_an_overlapping_one_succeeds_with_latest(local: None, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The run that read its sources first but publishes second is not a failure: LATEST already
    holds newer content. The task returns the version LATEST names and logs that it was superseded."""
    from flytegpt.flyte.ingest_wf import publish
    from flytegpt.ingest.artifact import ArtifactError
    from flytegpt.ingest.artifact import publish as publish_version

    store = tmp_path / "store"
    early, late = datetime.now(timezone.utc) - timedelta(minutes=5), datetime.now(timezone.utc)
    slow = _version(store, "slow")  # read its sources first
    fast = _version(store, "fast")
    publish_version(str(store), fast, sources_read_at=late)

    with caplog.at_level("WARNING"):
        result = publish(version=slow, store=str(store), sources_read_at=early.isoformat(), keep_versions=3)
    assert result == fast and read_latest(str(store)) == fast
    assert "superseded" in caplog.text and slow in caplog.text
    record = _last_run(store)
    assert record["version"] == fast and record["changed"] is False

    # the CLI's publish keeps the refusal
    with pytest.raises(ArtifactError, match="another ingest published meanwhile"):
        publish_version(str(store), slow, sources_read_at=early)


def test_a_run_whose_source_gave_nothing_fails_and_leaves_the_good_index(local: None, tmp_path: Path) -> None:
    """A source reachable but empty (an include that stopped matching) published a
    smaller index and the run went green; [index] max_shrink = 1 lets it through on purpose."""
    import shutil

    from flytegpt.flyte.ingest_wf import ingest_wf

    corpus = tmp_path / "corpus"
    shutil.copytree(sample_config_path().parent, corpus)
    store = tmp_path / "store"
    good = ingest_wf(config_path=str(corpus / "flytegpt.toml"), store=str(store))
    shutil.rmtree(corpus / "docs")
    (corpus / "docs").mkdir()
    with pytest.raises(Exception, match="sample-docs gave no chunks"):
        ingest_wf(config_path=str(corpus / "flytegpt.toml"), store=str(store))
    assert read_latest(str(store)) == good
    config = corpus / "flytegpt.toml"
    config.write_text(config.read_text() + "\n[index]\nmax_shrink = 1.0\n")
    assert ingest_wf(config_path=str(config), store=str(store)) != good
