"""Domain tuning (ingest/tuning.py): the pairs, the stored model, and an index served with it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.ingest import artifact, tuning
from flytegpt.ingest.config import Config, TuningConfig, load_config, sample_config_path
from flytegpt.ingest.embedding import Embedder
from flytegpt.ingest.models import Chunk, code_words
from flytegpt.ingest.pipeline import collect_chunks, run_ingest
from flytegpt.ingest.search import HybridSearcher

from support.index_data import make_chunks, make_vectors

# A few steps on the sample corpus: seconds, not the minutes a real corpus takes.
FAST = {"enabled": "on", "batch_size": 4, "max_seq_length": 32, "min_pairs": 5, "held_out": 0.0}


def sample(store: Path, **tuning_settings) -> Config:
    config = load_config(sample_config_path()).with_store(str(store))
    return config.model_copy(update={"tuning": TuningConfig(**{**FAST, **tuning_settings})})


@pytest.fixture(scope="module")
def sample_chunks(tmp_path_factory: pytest.TempPathFactory) -> list[Chunk]:
    chunks, *_ = collect_chunks(sample(tmp_path_factory.mktemp("chunks")), progress=False)
    return chunks


def test_the_corpus_gives_question_like_pairs_of_every_kind(sample_chunks: list[Chunk]) -> None:
    pairs = tuning.training_pairs(sample_chunks)
    by_kind = {kind: [p for p in pairs if p.kind == kind] for kind in ("docs", "slack", "code")}
    assert all(by_kind.values()), {k: len(v) for k, v in by_kind.items()}
    for p in by_kind["docs"]:
        # a section's heading path asks, its text answers; the text no longer starts with the heading
        assert not p.positive.startswith("#") and "(outline)" not in p.anchor
    for p in by_kind["slack"]:
        assert p.anchor.endswith(("?", ".", "!")) or len(p.anchor) > 15
        assert not p.anchor.split()[0].endswith(":"), p.anchor  # the speaker is not part of the question
    for p in by_kind["code"]:
        assert p.anchor not in p.positive  # the docstring is the question, the code without it the answer
        assert p.positive == code_words(p.positive) and "(" not in p.positive  # as the index embeds code
    assert len({p.key for p in pairs}) == len(pairs)


def test_held_out_pairs_are_the_same_every_run(sample_chunks: list[Chunk]) -> None:
    pairs = tuning.training_pairs(sample_chunks) * 20  # keys repeat: only the split rule matters here
    train, held = tuning.split_held_out(pairs, 0.3)
    assert len(train) + len(held) == len(pairs) and held
    assert tuning.split_held_out(list(reversed(pairs)), 0.3)[1] == list(reversed(held))
    assert tuning.split_held_out(pairs, 0.0) == (pairs, [])


def test_a_capped_sample_stays_the_same_as_the_corpus_grows() -> None:
    pairs = [tuning.Pair(f"question {i}", f"answer {i}", "docs") for i in range(1000)]
    today = tuning.sample_pairs(pairs, 100)
    grown = tuning.sample_pairs(pairs + [tuning.Pair(f"new {i}", f"new answer {i}", "slack") for i in range(50)], 100)
    assert len(today) == len(grown) == 100
    assert len({p.key for p in today} & {p.key for p in grown}) >= 90  # the reuse check still finds the model
    assert tuning.sample_pairs(pairs, 0) == pairs


def test_the_model_id_names_the_base_the_settings_and_the_pairs(sample_chunks: list[Chunk]) -> None:
    pairs = tuning.training_pairs(sample_chunks)
    cfg = TuningConfig()
    one = tuning.tuned_model_id("sentence-transformers/all-MiniLM-L6-v2", cfg, pairs)
    assert one.startswith("flytegpt-tuned/all-MiniLM-L6-v2-") and tuning.is_tuned(one)
    assert one == tuning.tuned_model_id("sentence-transformers/all-MiniLM-L6-v2", cfg, pairs)
    assert one != tuning.tuned_model_id("sentence-transformers/all-MiniLM-L6-v2", cfg, pairs[1:])
    assert one != tuning.tuned_model_id("sentence-transformers/all-MiniLM-L6-v2", TuningConfig(epochs=2), pairs)
    # whether and when to tune does not change the model
    assert one == tuning.tuned_model_id("sentence-transformers/all-MiniLM-L6-v2", TuningConfig(enabled="on"), pairs)


def test_an_index_built_with_a_tuned_model_is_served_with_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = sample(store)
    first = run_ingest(config, progress=False)

    report = tuning.TuneReport.from_dict(first.tuning)
    assert first.model_id == report.model_id and tuning.is_tuned(first.model_id)
    assert not report.reused and sum(report.pairs.values()) >= 5
    assert report.held_out == 0 and report.held_out_mrr_base is None and "held-out" not in report.describe()
    info = json.loads((store / "models" / report.model_id.removeprefix("flytegpt-tuned/") / "tune.json").read_text())
    assert info["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and info["settings"]["batch_size"] == 4
    assert artifact.read_manifest(str(store), first.version)["model"]["model_id"] == report.model_id
    # a model saved by sentence-transformers 6 runs on OpenVINO like the packaged one
    assert first.backend == "openvino"

    # The bot opens the index from the store alone: the query model comes from the store too.
    searcher = HybridSearcher.open(load_config(sample_config_path()).with_store(str(store)))
    assert searcher.embedder.model_id == report.model_id
    hits = searcher.search("How do I cache a task's outputs?")
    assert hits and hits[0].chunk.source_id.startswith("sample-")
    base = Embedder.from_config(config.embeddings)
    question = "How do I run one task over every element of a list?"
    assert float(searcher.embedder.embed_query(question) @ base.embed_query(question)) < 0.99999

    # Same corpus again: the stored model is reused, and with it every cached vector.
    second = run_ingest(config, progress=False)
    assert second.model_id == first.model_id and second.tuning["reused"]
    assert second.embeddings_computed == 0


def test_a_tuned_model_that_ranks_the_held_out_pairs_worse_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Training that wrecks the model (here: weights scrambled instead of trained): the held-out
    # pairs say so, and the index is embedded with the base model.
    import torch

    def wreck(model, pairs, cfg, *, device, progress=True):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.02)
        return "fp32"

    monkeypatch.setattr(tuning, "train", wreck)
    config = sample(tmp_path / "store", held_out=0.5)
    summary = run_ingest(config, progress=False)
    report = tuning.TuneReport.from_dict(summary.tuning)
    assert report.refused and report.held_out_mrr_tuned < report.held_out_mrr_base
    assert summary.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert not (tmp_path / "store" / "models").exists()
    assert "refused" in report.describe()


def test_too_small_a_corpus_is_an_error_when_asked_for_and_skipped_on_auto(
    tmp_path: Path, sample_chunks: list[Chunk], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flytegpt.bot.cli import main
    from flytegpt.ingest import pipeline

    with pytest.raises(tuning.TuningError, match=r"only \d+ training pairs.*too few to tune on.*min_pairs"):
        tuning.ensure_tuned(sample_chunks, sample(tmp_path, min_pairs=10_000), progress=False)
    # `flytegpt ingest` with tuning "on": the message, no traceback, nothing published
    config = tmp_path / "flytegpt.toml"
    config.write_text(sample_config_path().read_text().replace('path = "', f'path = "{sample_config_path().parent}/')
                      + '\n[tuning]\nenabled = "on"\nmin_pairs = 10000\n')
    result = CliRunner().invoke(main, ["ingest", "--config", str(config), "--store", str(tmp_path / "s"), "--quiet"])
    assert result.exit_code == 1 and "training pairs" in result.output and "Traceback" not in result.output
    assert not artifact.list_versions(str(tmp_path / "s"))
    # "auto" on a GPU machine (pretended) with the sample corpus: the base model, and a warning
    monkeypatch.setattr(tuning, "should_tune", lambda config: True)
    with caplog.at_level("WARNING", logger="flytegpt.ingest.pipeline"):
        assert pipeline.tune(sample_chunks, sample(tmp_path, enabled="auto", min_pairs=10_000), progress=False) is None
    assert "not tuning: only" in caplog.text


def test_auto_tunes_only_where_a_gpu_embeds(tmp_path: Path) -> None:
    assert not tuning.should_tune(sample(tmp_path, enabled="auto"))  # this machine has no GPU
    assert tuning.should_tune(sample(tmp_path, enabled="on"))
    assert not tuning.should_tune(sample(tmp_path, enabled="off"))


def _fake_model(fs_root: str, model_id: str, created_at: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(fs_root)
    folder = f"{root}/models/{model_id.removeprefix('flytegpt-tuned/')}"
    fs.makedirs(f"{folder}/1_Pooling", exist_ok=True)
    fs.pipe_file(f"{folder}/config.json", b"{}")
    fs.pipe_file(f"{folder}/1_Pooling/config.json", b"{}")
    fs.pipe_file(f"{folder}/tune.json", json.dumps({"model_id": model_id, "created_at": created_at}).encode())


def test_a_remote_store_s_model_is_copied_to_the_cache_once(tmp_path: Path) -> None:
    store = "memory://tuning-test/store"
    _fake_model(store, "flytegpt-tuned/m-1", "2026-01-01T00:00:00Z")
    folder = tuning.local_model(store, "flytegpt-tuned/m-1", str(tmp_path / "cache"))
    assert folder == tmp_path / "cache" / "models" / "m-1"
    assert (folder / "1_Pooling" / "config.json").is_file() and (folder / "tune.json").is_file()
    os.remove(folder / "config.json")  # a second call does not download again
    assert tuning.local_model(store, "flytegpt-tuned/m-1", str(tmp_path / "cache")) == folder
    with pytest.raises(tuning.TuningError, match="flytegpt-tuned/m-2 is not in memory://.*re-ingest"):
        tuning.local_model(store, "flytegpt-tuned/m-2", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="tuned model"):
        Embedder.for_model_id("flytegpt-tuned/m-1")  # no store to load it from
    # a bot that serves another model now drops the copy (a half-finished download too)
    (tmp_path / "cache" / "models" / ".download-x").mkdir()
    assert tuning.prune_local_models(str(tmp_path / "cache"), {"flytegpt-tuned/m-1"}) == [".download-x"]
    assert tuning.prune_local_models(str(tmp_path / "cache"), {"sentence-transformers/all-MiniLM-L6-v2"}) == ["m-1"]
    assert tuning.prune_local_models(str(tmp_path / "nothing-here"), set()) == []


def test_a_model_tuned_for_a_remote_store_is_uploaded_from_its_local_copy(tmp_path: Path) -> None:
    store = "memory://tuning-test/remote-store"
    config = sample(tmp_path / "unused")
    config = config.model_copy(update={"index": config.index.model_copy(
        update={"store": store, "cache_dir": str(tmp_path / "cache")})})
    chunks, *_ = collect_chunks(sample(tmp_path / "chunks"), progress=False)
    report = tuning.ensure_tuned(chunks, config, progress=False)
    local = tmp_path / "cache" / "models" / report.model_id.removeprefix("flytegpt-tuned/")
    assert Path(report.path) == local and (local / "tune.json").is_file()
    [stored] = tuning.stored_models(store)  # complete in the store: every file, tune.json last
    assert stored["model_id"] == report.model_id
    import fsspec

    fs = fsspec.filesystem("memory")
    remote = {p.rsplit("/", 1)[-1] for p in fs.find(f"/tuning-test/remote-store/models/{local.name}")}
    assert {p.name for p in local.rglob("*") if p.is_file()} == remote
    # the next ingest reuses it, from the local copy
    again = tuning.ensure_tuned(chunks, config, progress=False)
    assert again.reused and again.path == report.path


def test_pruning_versions_prunes_the_models_only_they_used(tmp_path: Path) -> None:
    from flytegpt.ingest.embedding_cache import EmbeddingCache

    store = str(tmp_path / "store")
    chunks, vectors = make_chunks(4), make_vectors(4)
    for i, model_id in enumerate(["flytegpt-tuned/m-old", "flytegpt-tuned/m-kept"]):
        _fake_model(store, model_id, f"2026-01-0{i + 1}T00:00:00Z")
        cache = EmbeddingCache(store, model_id, 8)  # what an ingest with the model cached
        cache.add([c.content_key(model_id) for c in chunks], vectors)
        cache.flush()
        version = artifact.write_version(store, chunks, vectors, artifact.ModelInfo(model_id, 8, True))
        artifact.publish(store, version, keep_versions=5)
    _fake_model(store, "flytegpt-tuned/m-newest", "2026-01-03T00:00:00Z")  # tuned, not yet published
    version = artifact.write_version(store, chunks, vectors, artifact.ModelInfo("test/model", 8, True))
    artifact.publish(store, version, keep_versions=1)
    left = sorted(p.name for p in (tmp_path / "store" / "models").iterdir())
    # m-old's version is gone; m-kept's is the one LATEST named before (kept for running bots)
    assert left == ["m-kept", "m-newest"]
    # and so are m-old's cached vectors: a retrained model never reads them (each is the corpus's size)
    assert sorted(p.name for p in (tmp_path / "store" / "embeddings").iterdir()) == ["flytegpt-tuned__m-kept"]


def test_flytegpt_tune_prints_the_held_out_figures(tmp_path: Path) -> None:
    from flytegpt.bot.cli import main

    config = tmp_path / "flytegpt.toml"
    sample_dir = sample_config_path().parent
    config.write_text(
        sample_config_path().read_text().replace('path = "', f'path = "{sample_dir}/')
        + '\n[tuning]\nbatch_size = 4\nmax_seq_length = 32\nmin_pairs = 5\nheld_out = 0.3\n'
    )
    result = CliRunner().invoke(main, ["tune", "--config", str(config), "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])  # stdout: bars go to stderr
    assert report["held_out"] > 0 and report["held_out_mrr_base"] is not None
    assert (tmp_path / "store" / "models").is_dir() or report["refused"]

    config.write_text(config.read_text().replace("min_pairs = 5", "min_pairs = 10000"))
    small = CliRunner().invoke(main, ["tune", "--config", str(config), "--store", str(tmp_path / "s2")])
    assert small.exit_code == 1 and "training pairs" in small.output and "Traceback" not in small.output


# ---- a store's names never place a file outside the model's folder -----------------------------

@pytest.mark.parametrize("model_id", ["flytegpt-tuned/../../elsewhere/m", "flytegpt-tuned//tmp/x",
                                      "flytegpt-tuned/", "flytegpt-tuned/m/../../x", "flytegpt-tuned/.."])
def test_a_tuned_model_id_that_leaves_the_models_folder_is_refused(tmp_path: Path, model_id: str) -> None:
    with pytest.raises(tuning.TuningError, match="is not a tuned model id"):
        tuning.local_model(str(tmp_path / "store"), model_id, str(tmp_path / "cache"))
    assert not (tmp_path / "elsewhere").exists()


def test_a_model_file_whose_key_climbs_out_of_the_folder_is_not_written(tmp_path: Path) -> None:
    """S3 keys are opaque strings: models/m-1/../../../x is a key like any other."""
    import fsspec

    store = "memory://tuning-traversal/store"
    _fake_model(store, "flytegpt-tuned/m-1", "2026-01-01T00:00:00Z")
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/tuning-traversal/store/models/m-1/../../../../planted", b"x")
    if not any(".." in p for p in fs.find("/tuning-traversal/store/models/m-1")):
        pytest.skip("this fsspec normalises '..' in keys (nothing to refuse)")
    with pytest.raises(tuning.TuningError, match="refused"):
        tuning.local_model(store, "flytegpt-tuned/m-1", str(tmp_path / "cache"))
    assert not list(tmp_path.rglob("planted"))
    assert not (tmp_path / "cache" / "models" / "m-1").exists()


def test_a_tune_json_naming_another_folder_is_neither_reused_nor_pruned_by_that_name(tmp_path: Path) -> None:
    store = f"memory://tuning-names/{tmp_path.name}"
    _fake_model(store, "flytegpt-tuned/m-1", "2026-01-01T00:00:00Z")
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"/tuning-names/{tmp_path.name}/models/evil/tune.json",
                 json.dumps({"model_id": "flytegpt-tuned/../../victim", "created_at": "2026-02-01"}).encode())
    assert [i["model_id"] for i in tuning.stored_models(store)] == ["flytegpt-tuned/m-1"]
    assert tuning.prune_models(store, set()) == []  # the newest valid model stays; "evil" is left alone
