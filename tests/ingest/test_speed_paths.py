"""Speed paths: backend, device and precision choice, the OpenVINO path, GPU fallbacks, index type by size."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from flytegpt.ingest import artifact, embedding
from flytegpt.ingest.artifact import ModelInfo, build_dense_index, choose_index_type, open_version, write_version
from flytegpt.ingest.config import DEFAULT_MODEL, EmbeddingsConfig
from flytegpt.ingest.embedding import Embedder, resolve_backend, resolve_model_path, resolve_precision
from flytegpt.ingest.models import Chunk
from flytegpt.ingest.onnx_export import NotExportable, check_exportable

from support.paths import ROOT
PACKAGED = resolve_model_path(DEFAULT_MODEL)
SENTENCES = [
    "How do I cache a Flyte task between runs?",
    "FlyteFile uploads a local file to the blob store and passes a reference downstream.",
    "ok",
    "map_task runs a task over a list of inputs in parallel. " * 80,  # longer than 256 tokens
]


# ---------------------------------------------------------------- backend and device choice


def test_auto_backend_is_openvino_on_cpu_and_torch_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", "cpu", PACKAGED) == "openvino"
    assert resolve_backend("auto", "cuda", PACKAGED) == "torch"
    assert resolve_backend("auto", "mps", PACKAGED) == "torch"
    assert resolve_backend("torch", "cpu", PACKAGED) == "torch"  # explicit choices kept
    # without OpenVINO installed, PyTorch
    from flytegpt.ingest import openvino_runner

    monkeypatch.setattr(openvino_runner, "openvino_available", lambda: False)
    assert resolve_backend("auto", "cpu", PACKAGED) == "torch"


def test_auto_backend_falls_back_to_torch_for_other_pipelines(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}))
    with pytest.raises(NotExportable, match="Dense"):
        check_exportable(str(tmp_path))
    assert resolve_backend("auto", "cpu", str(tmp_path)) == "torch"
    assert check_exportable(PACKAGED) == {"max_seq_length": 256, "dimension": 384}


def test_every_backend_shares_the_model_id() -> None:
    # OpenVINO and PyTorch vectors agree to 4 decimals: one model id, one embedding cache
    auto = Embedder(DEFAULT_MODEL, device="cpu")
    assert auto.backend == "openvino" and auto.model_id == DEFAULT_MODEL and not auto.loaded
    assert Embedder(DEFAULT_MODEL, device="cpu", backend="torch").model_id == DEFAULT_MODEL
    # the bot's query embedder for an index: the configured backend, the index's model
    cfg = EmbeddingsConfig(backend="torch", device="auto")
    assert Embedder.for_model_id(DEFAULT_MODEL, cfg).backend == "torch"
    assert Embedder.for_model_id("acme/other", cfg).model_id == "acme/other"
    # an index embedded by the int8 onnxruntime backend of earlier releases: re-ingest
    with pytest.raises(ValueError, match="re-ingest"):
        Embedder.for_model_id(DEFAULT_MODEL + "#onnx-int8-v2", cfg)
    with pytest.raises(ValidationError):
        EmbeddingsConfig(backend="onnx")


def test_gpu_settings_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    e = Embedder(DEFAULT_MODEL, device="cuda", backend="auto", batch_size=32, gpu_batch_size=512)
    assert e.backend == "torch" and e.device == "cuda" and e.batch_size == 512  # fp16, large batches
    assert e.model_id == DEFAULT_MODEL and not e.loaded
    assert Embedder(DEFAULT_MODEL, device="cpu", backend="torch", batch_size=32).batch_size == 32
    with pytest.raises(ValueError, match="CPU only"):
        Embedder(DEFAULT_MODEL, device="cuda", backend="openvino").backend
    # 'auto' on a machine without a GPU driver: CPU, decided without asking torch
    monkeypatch.setattr(embedding, "accelerator_possible", lambda: False)
    monkeypatch.setattr(embedding, "select_device", lambda requested: pytest.fail("torch was asked"))
    assert Embedder(DEFAULT_MODEL, device="auto", backend="auto").device == "cpu"


def test_precision_auto_is_measured_on_a_cpu_and_fixed_elsewhere() -> None:
    assert resolve_precision("auto", "torch", "cpu") == "auto"  # measured when the model loads
    assert resolve_precision("auto", "openvino", "cpu") == "auto"
    assert resolve_precision("auto", "torch", "cuda") == "fp16"
    assert resolve_precision("auto", "torch", "mps") == "fp32"
    assert resolve_precision("bf16", "torch", "cpu") == "bf16"  # an explicit choice is kept
    assert resolve_precision("fp32", "torch", "cuda") == "fp32"
    assert resolve_precision("fp32", "openvino", "cpu") == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", "torch", "cpu")
    with pytest.raises(ValueError, match="'fp32', 'bf16' or 'int8', 'int8-bf16', 'int8-dq'"):
        resolve_precision("fp16", "openvino", "cpu")
    assert resolve_precision("int8", "openvino", "cpu") == "int8"
    assert resolve_precision("int8-dq", "openvino", "cpu") == "int8-dq"
    with pytest.raises(ValueError, match="runs on OpenVINO"):
        resolve_precision("int8-dq", "torch", "cpu")
    # half precision keeps the plain model id: its vectors are the fp32 vectors to 4 decimals
    cfg = EmbeddingsConfig(device="cpu", precision="bf16")
    assert Embedder.from_config(cfg).model_id == DEFAULT_MODEL
    assert Embedder.for_model_id(DEFAULT_MODEL, cfg).precision == "bf16"


@pytest.mark.slow
def test_bf16_vectors_match_fp32() -> None:
    fp32 = Embedder(DEFAULT_MODEL, device="cpu", backend="torch", precision="fp32")
    bf16 = Embedder(DEFAULT_MODEL, device="cpu", backend="torch", precision="bf16")
    ref, ours = fp32.embed_documents(SENTENCES), bf16.embed_documents(SENTENCES)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * ref).sum(1).min() > 0.999
    query = bf16.embed_query(SENTENCES[0])
    assert query.dtype == np.float32 and float(query @ ref[0]) > 0.999


def test_fully_cached_embed_never_imports_a_model_runtime(tmp_path: Path) -> None:
    """A re-ingest whose chunks are all cached must not pay for loading a model."""
    script = f"""
import sys, numpy as np
sys.path.insert(0, {str(ROOT)!r})
from flytegpt.ingest.config import Config, EmbeddingsConfig, IndexConfig
from flytegpt.ingest.embedding import Embedder
from flytegpt.ingest.embedding_cache import EmbeddingCache
from flytegpt.ingest.models import Chunk
from flytegpt.ingest.pipeline import embed_chunks
config = Config(index=IndexConfig(store={str(tmp_path / 'store')!r}), embeddings=EmbeddingsConfig(backend="auto"))
chunks = [Chunk(f"docs:{{i}}.md", "docs", "t", "u", f"text {{i}}", f"text {{i}}") for i in range(5)]
e = Embedder.from_config(config.embeddings)
cache = EmbeddingCache(config.index.store, e.model_id, e.dimension)
cache.add([c.content_key(e.model_id) for c in chunks], np.eye(5, e.dimension, dtype=np.float32))
cache.flush()
vectors, stats = embed_chunks(chunks, config, embedder=Embedder.from_config(config.embeddings), progress=False)
assert stats == {{"computed": 0, "reused": 5}}, stats
print(sorted(m for m in ("torch", "onnxruntime", "openvino", "sentence_transformers", "transformers") if m in sys.modules))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- OpenVINO (the default on a CPU)


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("ov-cache"))


@pytest.mark.slow
@pytest.mark.parametrize("precision, floor", [("fp32", 0.9999), ("bf16", 0.999)])
def test_openvino_vectors_are_the_pytorch_vectors(ov_cache: str, embedder: Embedder, precision: str, floor: float) -> None:
    ov = Embedder(DEFAULT_MODEL, device="cpu", backend="openvino", precision=precision, onnx_cache_dir=ov_cache)
    ours, ref = ov.embed_documents(SENTENCES), embedder.embed_documents(SENTENCES)
    assert ov.backend == "openvino" and ov.precision == precision and ov.model_id == embedder.model_id
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * ref).sum(1).min() >= floor  # the long text is cut at 256 tokens, as PyTorch does
    # a query alone (one request) and the same text in a batch (the async queue) agree
    assert float(ov.embed_query(SENTENCES[1]) @ ours[1]) >= floor
    many = ov.embed_documents(SENTENCES * 5)  # several batches in flight, answers in input order
    assert (many * np.tile(ours, (5, 1))).sum(1).min() >= floor
    folder = next(p for p in Path(ov_cache).iterdir() if p.name.endswith("-fp32-v1"))
    assert json.loads((folder / "meta.json").read_text())["quantization"] == "none"
    # padded to a few widths (OpenVINO keeps state per input shape), never by a whole multiple
    encoder = ov._load()
    for _, ids, mask in encoder.batches(SENTENCES, 2):
        assert ids.shape[1] % encoder.WIDTH_MULTIPLE == 0
        assert 0 <= ids.shape[1] - mask.sum(1).max() < encoder.WIDTH_MULTIPLE


@pytest.mark.slow
def test_export_is_cached_and_reused(ov_cache: str) -> None:
    from flytegpt.ingest.onnx_export import ensure_export

    folder = ensure_export(DEFAULT_MODEL, PACKAGED, ov_cache)
    before = (folder / "model.onnx").stat().st_mtime_ns
    again = ensure_export(DEFAULT_MODEL, PACKAGED, ov_cache)
    assert again == folder and (folder / "model.onnx").stat().st_mtime_ns == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".export-")]  # no temp folder left
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source_model"] == DEFAULT_MODEL and meta["max_seq_length"] == 256


def _export_copy(ov_cache: str, where: Path) -> Path:
    """A private copy of the export (without compiled models), as ensure_export names it."""
    import shutil

    from flytegpt.ingest.onnx_export import ensure_export
    from flytegpt.ingest.openvino_runner import COMPILED_DIR

    export = ensure_export(DEFAULT_MODEL, PACKAGED, ov_cache)
    shutil.copytree(export, where / export.name, ignore=shutil.ignore_patterns(COMPILED_DIR))
    return where / export.name


@pytest.mark.slow
def test_the_model_a_process_runs_is_kept_compiled(ov_cache: str, tmp_path: Path) -> None:
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder, compiled_dir

    folder = _export_copy(ov_cache, tmp_path)
    plain = OpenVinoEncoder(folder).encode(SENTENCES)
    assert not compiled_dir(folder).exists()  # a candidate only measured costs no disk
    kept = OpenVinoEncoder(folder, keep_compiled=True).encode(SENTENCES)
    blobs = sorted(compiled_dir(folder).iterdir())
    assert len(blobs) == 1 and blobs[0].stat().st_size > 1_000_000
    again = OpenVinoEncoder(folder, keep_compiled=True).encode(SENTENCES)  # loaded from the kept one
    assert sorted(compiled_dir(folder).iterdir()) == blobs
    np.testing.assert_allclose(kept, plain, atol=1e-6)
    np.testing.assert_allclose(again, plain, atol=1e-6)
    # the Embedder keeps the model it runs
    ov = Embedder(DEFAULT_MODEL, device="cpu", backend="openvino", precision="fp32", onnx_cache_dir=str(tmp_path))
    np.testing.assert_allclose(ov.embed_documents(SENTENCES), plain, atol=1e-6)
    assert ov._load().folder == folder and sorted(compiled_dir(folder).iterdir()) == blobs
    # a damaged file (a full disk, a crash while writing) is compiled and written again
    blobs[0].chmod(0o644)
    blobs[0].write_bytes(b"not a compiled model")
    np.testing.assert_allclose(OpenVinoEncoder(folder, keep_compiled=True).encode(SENTENCES), plain, atol=1e-6)
    assert blobs[0].stat().st_size > 1_000_000


@pytest.mark.slow
def test_a_compiled_model_folder_that_cannot_be_written_only_means_compiling(
    tmp_path: Path, ov_cache: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flytegpt.ingest.openvino_runner import COMPILED_DIR, OpenVinoEncoder

    folder = _export_copy(ov_cache, tmp_path)
    (folder / COMPILED_DIR).write_text("a file where the folder would be")
    with caplog.at_level(logging.INFO, logger="flytegpt.ingest.openvino_runner"):
        vectors = OpenVinoEncoder(folder, keep_compiled=True).encode(SENTENCES)
    np.testing.assert_allclose(vectors, OpenVinoEncoder(folder).encode(SENTENCES), atol=1e-6)
    assert "not keeping the compiled model" in caplog.text


def test_openvino_failure_falls_back_to_pytorch(
    ov_cache: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flytegpt.ingest import openvino_runner

    def broken(folder, **_):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: unsupported CPU")

    monkeypatch.setattr(openvino_runner, "OpenVinoEncoder", broken)
    e = Embedder(DEFAULT_MODEL, device="cpu", precision="fp32", onnx_cache_dir=ov_cache)
    assert e.backend == "openvino"
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding"):
        vector = e.embed_query("how do I cache a task?")
    assert e.backend == "torch" and e.model_id == DEFAULT_MODEL and vector.shape == (384,)
    assert "OpenVINO could not load" in caplog.text and "unsupported CPU" in caplog.text


# ---------------------------------------------------------------- FAISS: GPU fallback, index type by size


def _vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _chunks(n: int) -> list[Chunk]:
    return [Chunk(f"docs:{i}.md", "docs", f"t{i}", f"u{i}", f"text number {i}", f"text number {i}") for i in range(n)]


def test_gpu_build_failure_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import faiss

    def broken(index):
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", broken)
    with caplog.at_level(logging.INFO, logger="flytegpt.ingest.artifact"):
        index, info = build_dense_index(_vectors(200), "ivf", 0)
        _, device = artifact._to_search_device(index)
    assert info["built_on"] == "cpu" and index.ntotal == 200 and device == "cpu"
    assert "building on GPU failed (CUDA driver version is insufficient); building on CPU" in caplog.text
    assert "moving the index to GPU failed" in caplog.text

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: (_ for _ in ()).throw(RuntimeError("no driver")))
    assert artifact.gpu_count() == 0
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="flytegpt.ingest.artifact"):
        caplog.clear()
        build_dense_index(_vectors(200), "ivf", 0)
    assert "building the index on CPU (no GPU)" in caplog.text


def test_index_type_by_size_is_recorded(tmp_path: Path) -> None:
    assert choose_index_type(99, "auto", 100) == "flat"
    assert choose_index_type(100, "auto", 100) == "ivf"
    assert choose_index_type(10, "flat", 100) == "flat"  # an explicit type is kept
    with pytest.raises(ValueError, match="unknown index_type"):
        choose_index_type(10, "annoy", 100)

    store = str(tmp_path / "store")
    model = ModelInfo("test/model", 16)
    small = write_version(store, _chunks(50), _vectors(50), model, approximate_threshold=100)
    vectors = _vectors(400, seed=1)
    big = write_version(store, _chunks(400), vectors, model, approximate_threshold=100)
    assert open_version(store, small).manifest["index"]["type"] == "flat"
    opened = open_version(store, big)
    info = opened.manifest["index"]
    assert info["type"] == "ivf" and info["ntotal"] == 400 and info["built_on"] == "cpu"
    assert info["nlist"] == artifact.ivf_nlist(400) and info["nprobe"] >= 1
    np.testing.assert_allclose(opened.dense.reconstruct(7), vectors[7])  # exact scores for keyword hits
    _, ids = opened.dense.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp-")]  # temp file moved
    with pytest.raises(ValueError, match="unknown index_type"):
        write_version(store, _chunks(50), _vectors(50), model, index_type="ivfpq")


def _weights_folder(tmp_path: Path, content: bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    return folder


def _sha(name: str, content: bytes) -> str:
    import hashlib

    return hashlib.sha256(name.encode() + content).hexdigest()


def test_weights_fingerprint_is_remembered_until_the_weights_change(tmp_path: Path) -> None:
    """The export folder is named by the weights' sha256; hashing them on every model load cost
    ~0.25 s, so the digest is remembered by file stat, and a rewritten file is hashed again."""
    from flytegpt.ingest.onnx_export import FINGERPRINTS_FILE, weights_fingerprint

    cache = tmp_path / "cache"
    folder = _weights_folder(tmp_path, b"weights v1")
    assert weights_fingerprint(str(folder), cache) == _sha("model.safetensors", b"weights v1")
    memo = json.loads((cache / FINGERPRINTS_FILE).read_text())
    assert list(memo.values()) == [_sha("model.safetensors", b"weights v1")]

    # the remembered digest is what a second load uses (no re-hash): a planted one comes back
    key = next(iter(memo))
    (cache / FINGERPRINTS_FILE).write_text(json.dumps({key: "f" * 64}))
    assert weights_fingerprint(str(folder), cache) == "f" * 64

    # new weights (new size, mtime): hashed again
    (folder / "model.safetensors").write_bytes(b"weights version 2")
    assert weights_fingerprint(str(folder), cache) == _sha("model.safetensors", b"weights version 2")


@pytest.mark.parametrize("damage", ["garbage", "list", "unwritable"])
def test_weights_fingerprint_survives_a_bad_memo(tmp_path: Path, damage: str) -> None:
    from flytegpt.ingest.onnx_export import FINGERPRINTS_FILE, weights_fingerprint

    folder = _weights_folder(tmp_path, b"weights")
    cache = tmp_path / "cache"
    if damage == "unwritable":
        cache.write_text("a file where the cache folder should be")
    else:
        cache.mkdir()
        (cache / FINGERPRINTS_FILE).write_text("{not json" if damage == "garbage" else "[1, 2]")
    assert weights_fingerprint(str(folder), cache) == _sha("model.safetensors", b"weights")
    if damage != "unwritable":  # repaired
        assert list(json.loads((cache / FINGERPRINTS_FILE).read_text()).values()) == [_sha("model.safetensors", b"weights")]
