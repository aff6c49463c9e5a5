"""The ingest workflow on flytekit's local executor: CPU, the bundled sample corpus, a temp store.

- `python -m flytegpt.flyte ingest_wf` (a subprocess, as a maintainer runs it) publishes a version; the same inputs
  again are served from flytekit's local cache (per-test $HOME); a changed document misses the
  task cache but re-embeds only its own chunks (the store's embedding cache).
- Only what the store's embedding cache lacks goes to the GPU embed step, in shards cut by content:
  a page added at the front of the docs is one GPU task of its own chunks, a night with nothing
  new to embed starts none.
- A run whose build fails half-way (the disk fills up while the version is written) leaves
  LATEST on the previous, complete version.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flytegpt.ingest.artifact import list_versions, open_version, read_latest
from flytegpt.ingest.config import sample_config_path

pytestmark = pytest.mark.slow  # runs the workflow: embeds real text



def copy_sample(tmp_path: Path) -> Path:
    """The sample corpus copied, so a test may edit a document; returns its config path."""
    dest = tmp_path / "sample"
    shutil.copytree(sample_config_path().parent, dest)
    return dest / "flytegpt.toml"


def pyflyte_run(config: Path, store: Path, home: Path, *args: str) -> tuple[str, str]:
    """(the workflow's output, the full log) of `python -m flytegpt.flyte ingest_wf ...`.

    Its temporary files go to `home`/tmp, which must then hold no copy of the checkout: a local
    run never builds the task image, so it never stages its source."""
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "FLYTE_SDK_LOGGING_LEVEL": "20",  # INFO: flytekit logs "Cache hit" / "Cache miss" per task
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("FLYTE_LOCAL_CACHE_ENABLED", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flytegpt.flyte", "ingest_wf", *args, "--config_path", str(config), "--store", str(store)],
        cwd=home, env=env, capture_output=True, text=True, timeout=240,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not list(tmp.glob("flytegpt-image-src-*"))
    return proc.stdout.strip().splitlines()[-1].strip(), log


def gpu_embeds(log: str) -> list[int]:
    """The chunks each GPU `embed` task of a run embedded (one entry per task that ran)."""
    return [int(n) for n in re.findall(r"embedded (\d+) chunks", log)]


def test_local_run_publishes_then_caches_then_reembeds_only_changes(tmp_path: Path) -> None:
    config, store, home = copy_sample(tmp_path), tmp_path / "store", tmp_path / "home"
    home.mkdir()

    version, log = pyflyte_run(config, store, home)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version), version
    assert read_latest(str(store)) == version
    index = open_version(str(store))  # verifies checksums, model and dimension
    assert set(index.manifest["counts"]) == {"sample-docs", "sample-code", "sample-slack"}
    stats = index.manifest["stats"]
    assert stats["embeddings"]["computed"] > 0 and stats["embeddings"]["device"] == "cpu"
    # what "auto" measured and chose on this machine is in the manifest
    auto = stats["embeddings"]["autotune"]
    assert auto["choice"] == f"openvino {stats['embeddings']['precision']}" and auto["reason"]
    assert stats["sources"]["sample-docs"]["documents"] > 0
    # chunk, tune, plan, embed (mapped), merge, build
    assert log.count("Cache miss") == 6 and "Cache hit" not in log
    assert re.search(r"ingest_wf\.tune\b", log) and "ingest_wf.untuned" not in log  # "auto": the GPU pod decides
    assert (home / ".flyte" / "local-cache").is_dir()  # the per-test cache, not the developer's

    # Same inputs: chunk, tune, plan, embed, merge and build come from the local cache; collect and publish run.
    again, log = pyflyte_run(config, store, home)
    assert again == version and read_latest(str(store)) == version
    assert log.count("Cache hit") == 6 and "Cache miss" not in log and gpu_embeds(log) == []
    assert list_versions(str(store)) == [version]

    # A setting that changes no stage's output (how many versions to keep): still every cache hit.
    # The whole [index] table was in the stages' inputs: tune and embed ran again (GPU pods) for it.
    config.write_text(config.read_text() + "\n[index]\nkeep_versions = 2\n")
    again, log = pyflyte_run(config, store, home)
    assert again == version and log.count("Cache hit") == 6 and "Cache miss" not in log

    # One page changes: the task cache misses, the embedding cache re-embeds only that page.
    page = sorted((config.parent / "docs").rglob("*.md"))[0]
    page.write_text(page.read_text() + "\n\n## Added tonight\n\nA brand-new paragraph about retries.\n")
    changed, log = pyflyte_run(config, store, home)
    assert changed != version and read_latest(str(store)) == changed
    assert log.count("Cache miss") == 6
    embeddings = open_version(str(store)).manifest["stats"]["embeddings"]
    assert 0 < embeddings["computed"] <= 3 < embeddings["reused"], embeddings
    assert gpu_embeds(log) == [embeddings["computed"]]  # one GPU task, for the changed page's chunks only


def test_only_uncached_chunks_go_to_the_gpu_in_shards_cut_by_content(tmp_path: Path) -> None:
    """A small fan-out, a run, the same run again, one small page added at
    the front of the docs, a run. Shards were consecutive slices of the chunk table, so the page
    shifted every later shard and every shard's GPU task ran again (5 of 5, 4 embedding nothing
    new). Now a CPU step looks the chunks up in the store's embedding cache, and only what it
    lacks goes to the GPU: one task, for the page's chunks. A night with nothing new to embed
    starts no GPU embed task at all. Every index is the one a fresh build of its corpus makes."""
    import numpy as np

    home = tmp_path / "home"
    home.mkdir()
    whole = copy_sample(tmp_path)
    version, _ = pyflyte_run(whole, tmp_path / "store-whole", home)
    reference = open_version(str(tmp_path / "store-whole"), version)

    sharded = tmp_path / "sharded.toml"
    sharded.write_text(whole.read_text().replace('path = "', f'path = "{whole.parent}/')
                       + "\n[embeddings]\nfanout_above = 8\nfanout_shard_size = 8\n"
                       + '\n[tuning]\nenabled = "off"\n')

    def same_index(version: str, store: Path, expected) -> None:
        index = open_version(str(store), version)
        assert [c.to_dict() for c in index.chunks] == [c.to_dict() for c in expected.chunks]
        n = len(index.chunks)
        ours = np.stack([index.dense.reconstruct(i) for i in range(n)])
        theirs = np.stack([expected.dense.reconstruct(i) for i in range(n)])
        assert (ours * theirs).sum(1).min() >= 0.999  # row i is chunk i's vector in both

    # Run 1: nothing is cached; more than fanout_above chunks to embed: shards, one GPU task each.
    store = tmp_path / "store-sharded"
    version, log = pyflyte_run(sharded, store, home)
    # tuning off: the GPU tune task is skipped (the conditional takes the CPU branch)
    assert "ingest_wf.untuned" in log and not re.search(r"ingest_wf\.tune\b", log)
    index = open_version(str(store), version)
    n = len(index.chunks)
    tasks = gpu_embeds(log)
    assert n > 8 and len(tasks) >= 2 and sum(tasks) == n  # the sample has no repeated text
    assert len(list((store / "flyte-work" / "chunk-shards").iterdir())) == len(tasks)
    embeddings = index.manifest["stats"]["embeddings"]
    assert embeddings["shards"] == len(tasks) and (embeddings["computed"], embeddings["reused"]) == (n, 0)
    same_index(version, store, reference)

    # Run 2, unchanged: every cached task is a hit, no GPU task runs.
    again, log = pyflyte_run(sharded, store, home)
    assert again == version and "map_embed" in log and "Cache miss" not in log and gpu_embeds(log) == []

    # Run 3: one small page, first in the docs' order. One GPU task, embedding that page's chunks only.
    (whole.parent / "docs" / "aaa.md").write_text(
        "# Aaa\n\nA short new page about FlyteFile and FlyteDirectory inputs, added at the front of the docs.\n")
    changed, log = pyflyte_run(sharded, store, home)
    index = open_version(str(store), changed)
    new = [c for c in index.chunks if c.source_id.startswith("sample-docs:") and "aaa.md" in c.source_id]
    assert changed != version and new and len(index.chunks) == n + len(new)
    assert gpu_embeds(log) == [len(new)]
    embeddings = index.manifest["stats"]["embeddings"]
    assert (embeddings["computed"], embeddings["reused"], embeddings["shards"]) == (len(new), n, 1)
    fresh_store = tmp_path / "store-fresh"
    fresh, log = pyflyte_run(sharded, fresh_store, home)  # the same corpus into an empty store
    assert sum(gpu_embeds(log)) == n + len(new)
    same_index(changed, store, open_version(str(fresh_store), fresh))

    # Run 4: a page deleted; what is left was all embedded before. The plan finds every vector in
    # the store's cache: the conditional takes the CPU branch, no GPU embed task starts.
    gone = sorted((whole.parent / "docs").rglob("*.md"))[-1]
    gone.unlink()
    fewer, log = pyflyte_run(sharded, store, home)
    assert "ingest_wf.all_cached" in log and gpu_embeds(log) == [] and "map_embed" not in log
    index = open_version(str(store), fewer)
    assert fewer != changed and 0 < len(index.chunks) < n + len(new)
    embeddings = index.manifest["stats"]["embeddings"]
    assert (embeddings["computed"], embeddings["reused"], embeddings["shards"]) == (0, len(index.chunks), 0)
    fresh_store = tmp_path / "store-fresh-2"
    fresh, _ = pyflyte_run(sharded, fresh_store, home)
    same_index(fewer, store, open_version(str(fresh_store), fresh))


def test_the_workflow_tunes_the_model_then_embeds_with_it(tmp_path: Path) -> None:
    """[tuning] enabled: the tune task stores the tuned model, the embed task (another pod on a
    cluster) loads it from the store, and the bot serves the index with it."""
    from flytegpt.ingest.config import load_config
    from flytegpt.ingest.search import HybridSearcher

    home = tmp_path / "home"
    home.mkdir()
    sample = copy_sample(tmp_path)
    config = tmp_path / "tuned.toml"
    config.write_text(sample.read_text().replace('path = "', f'path = "{sample.parent}/')
                      + '\n[tuning]\nenabled = "on"\nbatch_size = 4\nmax_seq_length = 32\nmin_pairs = 5\n'
                      + "held_out = 0.0\n")
    store = tmp_path / "store"
    version, log = pyflyte_run(config, store, home)
    index = open_version(str(store), version)
    model_id = index.manifest["model"]["model_id"]
    assert model_id.startswith("flytegpt-tuned/all-MiniLM-L6-v2-"), model_id
    assert (store / "models" / model_id.removeprefix("flytegpt-tuned/") / "tune.json").is_file()
    searcher = HybridSearcher.open(load_config(config).with_store(str(store)))
    assert searcher.embedder.model_id == model_id and searcher.search("How do I cache a task?")


@pytest.fixture()
def no_local_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")  # read by flytekit on every task call
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_failed_build_leaves_latest_on_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_local_cache: None
) -> None:
    from flytegpt.flyte.ingest_wf import ingest_wf

    config, store = copy_sample(tmp_path), tmp_path / "store"
    first = ingest_wf(config_path=str(config), store=str(store))  # in-process, local executor
    assert read_latest(str(store)) == first

    # Tonight's corpus changed, and the disk fills up after the first file of the new version.
    page = sorted((config.parent / "docs").rglob("*.md"))[0]
    page.write_text(page.read_text() + "\n\n## Tonight\n\nSomething new.\n")
    real_replace = os.replace
    written: list[str] = []

    def replace_until_disk_full(src, dst, *a, **kw):
        rel = os.path.relpath(dst, store)
        if re.match(r"\d{8}T\d{6}Z-", rel):  # a file of a version folder
            if written:
                raise OSError(errno.ENOSPC, "No space left on device", dst)
            written.append(rel)
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace_until_disk_full)
    with pytest.raises(Exception, match="No space left on device"):
        ingest_wf(config_path=str(config), store=str(store))
    monkeypatch.setattr(os, "replace", real_replace)

    partial = written[0].split("/")[0]
    assert (store / partial).is_dir() and not (store / partial / "manifest.json").exists()
    assert read_latest(str(store)) == first  # the bot keeps serving the complete version
    assert list_versions(str(store)) == [first]
    assert open_version(str(store)).version == first

    # The next run (disk freed) publishes normally.
    fixed = ingest_wf(config_path=str(config), store=str(store))
    assert fixed != first and read_latest(str(store)) == fixed


def test_publish_task_refuses_a_version_that_does_not_verify(
    tmp_path: Path, no_local_cache: None
) -> None:
    from flytegpt.ingest.artifact import ArtifactError

    from flytegpt.flyte.ingest_wf import ingest_wf, publish

    config, store = copy_sample(tmp_path), tmp_path / "store"
    good = ingest_wf(config_path=str(config), store=str(store))
    bad = store / "20000101T000000Z-deadbeef"
    shutil.copytree(store / good, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "dense.faiss").write_bytes(b"truncated")  # a corrupted upload
    (bad / "manifest.json").write_text(json.dumps({**manifest, "version": bad.name}))
    with pytest.raises(ArtifactError):
        publish(version=bad.name, store=str(store))
    with pytest.raises(ArtifactError, match="not in"):
        publish(version="20000101T000000Z-00000000", store=str(store))
    assert read_latest(str(store)) == good


def test_nightly_sources_git_and_slack_api_through_the_workflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_local_cache: None
) -> None:
    """The fresh sources of the nightly run: a git repository (file://) and Slack's Web API."""
    from support.slack_emulator import SlackEmulator

    from flytegpt.flyte.ingest_wf import ingest_wf

    work, bare = tmp_path / "repo", tmp_path / "repo.git"
    (work / "docs").mkdir(parents=True)
    (work / "docs" / "retries.md").write_text("# Retries\n\nSet `retries=3` on a task to retry it.\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_GLOBAL": "/dev/null"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "docs"]):
        subprocess.run(["git", *cmd], cwd=work, env=git_env, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=git_env, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()

    config = tmp_path / "nightly.toml"
    config.write_text(
        f'[[sources]]\nname = "upstream-docs"\nkind = "git"\nrepo = "{bare.as_uri()}"\nref = "main"\n'
        'as_kind = "docs"\nurl = "https://github.com/example/repo/blob/{commit}/{path}"\n\n'
        '[[sources]]\nname = "community"\nkind = "slack_api"\nchannels = ["flyte-support"]\n'
        'workspace_url = "https://example.slack.com"\n'
    )
    store = tmp_path / "store"
    with SlackEmulator() as emu:
        emu.add_channel("C0SUP", "flyte-support")
        emu.seed_message("C0SUP", "How do I retry a task on failure?", user="U1", ts="1700000000.000100")
        emu.seed_message("C0SUP", "Use retries=3.", user="U2", ts="1700000060.000100", thread_ts="1700000000.000100")
        # the bot token arrives the way a Flyte secret does locally, never as an input
        monkeypatch.setenv("_FSEC_FLYTEGPT_SLACK_BOT_TOKEN", "xoxb-nightly")
        monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)

        first = ingest_wf(config_path=str(config), store=str(store))
        index = open_version(str(store))
        assert index.manifest["counts"] == {"community": 1, "upstream-docs": 3}  # the page, its outline and title
        git_chunk = next(c for c in index.chunks if c.source_id.startswith("upstream-docs:"))
        assert git_chunk.url.startswith(f"https://github.com/example/repo/blob/{commit}/docs/retries.md")
        assert "SLACK_BOT_TOKEN" not in os.environ  # the secret was only exposed during collect

        emu.seed_message("C0SUP", "Can I retry only on OOM?", user="U1", ts="1700000100.000100")
        second = ingest_wf(config_path=str(config), store=str(store))
        assert second != first and read_latest(str(store)) == second
        assert open_version(str(store)).manifest["counts"] == {"community": 2, "upstream-docs": 3}
        assert len(emu.calls_to("conversations.replies")) == 1  # the old thread was not re-read


def test_a_local_run_with_a_missing_config_says_so_in_one_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flytegpt.flyte", "ingest_wf", "--config_path", str(tmp_path / "missing.toml"),
         "--store", str(tmp_path / "store")],
        cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 1
    assert "config file not found" in proc.stderr and str(tmp_path / "missing.toml") in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_document_the_chunkers_fail_on_is_counted_as_flytegpt_ingest_counts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_local_cache: None, embedder
) -> None:
    """One page the chunkers cannot split (a parser bug on one file): the workflow publishes the
    rest, and its manifest counts the page as skipped, as `flytegpt ingest` does."""
    import flytegpt.ingest.chunking as chunking
    from flytegpt.ingest.artifact import read_manifest
    from flytegpt.ingest.config import load_config
    from flytegpt.ingest.pipeline import run_ingest

    from flytegpt.flyte.ingest_wf import ingest_wf

    config = copy_sample(tmp_path)
    page = sorted((config.parent / "docs").rglob("*.md"))[0]
    real = chunking.chunk_document

    def fails_on_one_page(doc, *args, **kwargs):
        if doc.locator.endswith(page.name):
            raise RecursionError("maximum recursion depth exceeded (stand-in)")
        return real(doc, *args, **kwargs)

    monkeypatch.setattr(chunking, "chunk_document", fails_on_one_page)
    flyte_store, cli_store = tmp_path / "flyte-store", tmp_path / "cli-store"
    version = ingest_wf(config_path=str(config), store=str(flyte_store))
    cli = run_ingest(load_config(config).with_store(str(cli_store)), progress=False, embedder=embedder)

    flyte_sources = read_manifest(str(flyte_store), version)["stats"]["sources"]
    cli_sources = read_manifest(str(cli_store), cli.version)["stats"]["sources"]
    assert flyte_sources == cli_sources
    assert sum(s["skipped"] for s in flyte_sources.values()) >= 1
    chunks = open_version(str(flyte_store), version).chunks
    assert chunks and not any(c.source_id.endswith(page.name) for c in chunks)
