"""The int8 model (ingest/quantize.py): made once from the corpus's own chunks with NNCF, checked
against the fp32 vectors, and offered to precision "auto" only where that check passes."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.child_crash import make_children

from flytegpt.ingest import quantize
from flytegpt.ingest.config import DEFAULT_MODEL, EmbeddingsConfig
from flytegpt.ingest.embedding import Embedder, resolve_model_path
from flytegpt.ingest.onnx_export import MODEL_FILE, ensure_export
from flytegpt.ingest.openvino_trial import tried
from flytegpt.ingest.quantize import MODEL_XML, WEIGHTS_XML, check_file, ensure_int8, int8_dir, read_check, split_texts

PACKAGED = resolve_model_path(DEFAULT_MODEL)


def sample_texts() -> list[str]:
    """Texts of the bundled sample corpus: its chunks and their sentences (about 200)."""
    from flytegpt.ingest.chunking import chunk_documents
    from flytegpt.ingest.config import load_config, sample_config_path
    from flytegpt.ingest.pipeline import collect

    chunks = chunk_documents(collect(load_config(sample_config_path()), progress=False)[0])
    sentences = {s.strip() for c in chunks for s in re.split(r"(?<=[.!?])\s+|\n", c.text) if len(s.strip()) > 30}
    return [c.text for c in chunks] + sorted(sentences)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_export(DEFAULT_MODEL, PACKAGED, tmp_path_factory.mktemp("onnx"))


def test_calibration_and_check_texts_are_picked_by_hash_whatever_the_order() -> None:
    texts = [f"text number {i}" for i in range(300)]
    calibration, check = split_texts(texts)
    assert (calibration, check) == split_texts(list(reversed(texts)) + texts[:10])  # order, duplicates
    assert len(calibration) == quantize.CALIBRATION_TEXTS and len(check) == quantize.CHECK_TEXTS
    assert not set(calibration) & set(check)  # the check is on texts it was not calibrated on
    assert split_texts(texts[: quantize.CALIBRATION_TEXTS + quantize.CHECK_TEXTS - 1]) is None  # too few to judge
    assert split_texts(["the same text"] * 500) is None


def test_int8_candidates_follow_the_float_precisions_the_cpu_runs() -> None:
    # without bf16 the calibrated model runs its float layers in fp32 only; the dynamic one has none
    assert quantize.candidates(["fp32"]) == ["int8", "int8-dq"]
    assert quantize.candidates(["fp32", "bf16"]) == ["int8", "int8-bf16", "int8-dq"]
    assert set(quantize.KINDS) == {"int8", "int8-bf16", "int8-dq"}


@pytest.mark.slow
def test_the_int8_model_is_made_once_checked_against_fp32_and_reused(
    export: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder

    texts = sample_texts()
    assert len(set(texts)) >= quantize.CALIBRATION_TEXTS + quantize.CHECK_TEXTS
    check = ensure_int8(export, texts)
    out, err = capfd.readouterr()
    crashed = [label for label in ("int8", "int8-dq") if label not in check.mean_cosine
               and tried(export, label, model_file=int8_dir(export) / quantize.KINDS[label].model)]
    if crashed:  # the in-process encodes below would end the test run there
        pytest.skip(f"OpenVINO's {crashed} crashed in its trial on this CPU (openvinotoolkit/openvino#37577)")
    assert "INFO:nncf" not in out + err and "ignored nodes" not in out + err  # NNCF's per-layer chatter stays quiet
    assert check is not None and {"int8", "int8-dq"} <= set(check.mean_cosine)  # int8-bf16 where the CPU has bf16
    for label in check.mean_cosine:
        assert 0.0 < check.min_cosine[label] <= check.mean_cosine[label] <= 1.0
    for label in ("int8", "int8-dq"):  # int8-bf16 kept 0.982 of this corpus on an Intel Xeon with AMX: refused there
        assert check.mean_cosine[label] > 0.99, label
    assert all(check.passes(label) == (check.mean_cosine[label] >= quantize.MIN_COSINE) for label in check.mean_cosine)
    assert (check.calibration_texts, check.check_texts) == (64, 64) and check.recipe == quantize.RECIPE
    folder = int8_dir(export)
    assert (folder / MODEL_XML).is_file() and (folder / WEIGHTS_XML).is_file() and check_file(export).is_file()
    assert not [p for p in export.iterdir() if p.name.startswith(".int8-")]  # no temp folder left
    # the graphs really are quantised: the static model's linear layers hold int8 weights (layers
    # 1-5 x q, k, v, ffn in); the dynamic one's all of them (6 x 6) and the embeddings, as unsigned
    # int8 with a zero point (asymmetric)
    assert (folder / MODEL_XML).read_text().count('element_type="i8"') >= 20
    assert (folder / WEIGHTS_XML).read_text().count('element_type="u8"') >= 36

    # made once: the next ingest reads the check and never imports NNCF
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert ensure_int8(export, texts) == check == read_check(export)

    # their vectors are what the check says, in input order, through the encoder the embedder uses
    ref = OpenVinoEncoder(export, precision="fp32").encode(texts)
    for label in ("int8", "int8-dq"):
        ours = OpenVinoEncoder(export, precision=label).encode(texts)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        cosine = (ours * ref).sum(1)
        assert cosine.mean() > 0.99 and cosine.min() > 0.95, label


def _stand_in_int8(export: Path, mean_cosine: dict[str, float]) -> None:
    """An "int8 model" that is the fp32 graph saved as IR, with the check given: for the choice
    logic, which must follow the check whatever the model (the real one is made above)."""
    import openvino as ov

    folder = int8_dir(export)
    folder.mkdir()
    for name in (MODEL_XML, WEIGHTS_XML):
        ov.save_model(ov.Core().read_model(str(export / MODEL_FILE)), str(folder / name), compress_to_fp16=False)
    check_file(export).write_text(json.dumps({"mean_cosine": mean_cosine, "min_cosine": mean_cosine,
                                              "calibration_texts": 64, "check_texts": 64}))


def test_int8_models_copied_to_another_machine_are_checked_there_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same int8 model gives other vectors on another CPU (0.9993 with AVX-512 VNNI, 0.9973
    # with AVX2 only): a check travels with the export cache (an image, a volume) but holds only
    # for the machine that made it.
    export = ensure_export(DEFAULT_MODEL, PACKAGED, tmp_path / "onnx")
    _stand_in_int8(export, {"int8": 0.99, "int8-bf16": 0.99, "int8-dq": 0.99})  # refused on the first machine
    first = read_check(export)
    assert first is not None and not first.passes("int8-dq")

    monkeypatch.setattr(quantize, "machine_key", lambda: "another-cpu")
    monkeypatch.setitem(sys.modules, "nncf", None)  # checked, never quantised again
    assert read_check(export) is None
    assert ensure_int8(export, ["too few texts to judge"]) is None  # no int8 here until a large embedding
    texts = sample_texts()
    here = ensure_int8(export, texts)
    # the stand-in "int8" models are the fp32 graph: on this machine their vectors are fp32's
    assert here is not None and here.passes("int8") and here.passes("int8-dq") and here.check_texts == 64
    assert read_check(export) == here and len(list(int8_dir(export).glob("check-*.json"))) == 2

    monkeypatch.undo()  # the first machine keeps its own verdict
    assert read_check(export) == first


def test_auto_measures_int8_only_where_its_check_passes(tmp_path: Path) -> None:
    cache = tmp_path / "onnx"
    export = ensure_export(DEFAULT_MODEL, PACKAGED, cache)
    checked = {"int8": 0.9995, "int8-bf16": 0.998, "int8-dq": 0.9993}
    _stand_in_int8(export, checked)
    sentences = ["How do I cache a Flyte task?", "FlyteFile uploads a file to the blob store."]

    auto = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=str(cache)))
    auto.embed_documents(sentences)
    # measured beside fp32 (and bf16 where the CPU has it) ...
    assert {"openvino int8", "openvino int8-dq"} <= set(auto.autotune.rates)
    assert "openvino int8-bf16" not in auto.autotune.rates  # ... but not the one whose check failed
    assert auto.describe()["int8"]["mean_cosine"] == checked  # in the manifest

    off = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=str(cache), auto_int8=False))
    off.embed_documents(sentences)
    assert not [label for label in off.autotune.rates if "int8" in label] and "int8" not in off.describe()

    for label in ("int8", "int8-dq"):
        explicit = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=str(cache), precision=label))
        assert explicit.embed_documents(sentences).shape == (2, 384) and explicit.precision == label


def test_int8_that_passes_its_check_but_crashes_here_is_not_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A check kept before trials existed (or copied with the export) says nothing about crashes:
    OpenVINO reports int8 models segfaulting on Intel CPUs with AMX. The trial runs before use."""
    cache = tmp_path / "onnx"
    export = ensure_export(DEFAULT_MODEL, PACKAGED, cache)
    _stand_in_int8(export, {"int8": 0.9995, "int8-bf16": 0.9995, "int8-dq": 0.9993})
    make_children("segfault", tmp_path / "site", monkeypatch)
    sentences = ["How do I cache a Flyte task?", "FlyteFile uploads a file to the blob store."]
    with caplog.at_level(logging.WARNING):
        explicit = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=str(cache), precision="int8-dq"))
        assert explicit.embed_documents(sentences).shape == (2, 384)
    assert explicit.precision == "fp32" and "OpenVINO int8-dq crashed (SIGSEGV)" in caplog.text
    assert "int8-dq kept a mean cosine of 0.9993 but failed its trial" in caplog.text  # not "needs >= 0.999"
    auto = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=str(cache)))
    auto.embed_documents(sentences)
    assert auto.precision == "fp32" and not [label for label in auto.autotune.rates if "int8" in label]


@pytest.mark.parametrize("what", ["segfault", "terminated"])
def test_int8_models_are_tried_in_a_child_before_they_are_checked_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """The check runs each int8 model in this process: one that crashes the CPU's kernels would end
    the ingest there. A crash in the trial leaves it out of the check; a trial that could not run
    (stopped from outside) keeps no check at all, so the next ingest checks again."""
    export = ensure_export(DEFAULT_MODEL, PACKAGED, tmp_path / "onnx")
    _stand_in_int8(export, {"int8": 0.9995, "int8-bf16": 0.9995, "int8-dq": 0.9993})
    monkeypatch.setattr(quantize, "machine_key", lambda: "another-cpu")  # made elsewhere: checked here
    make_children(what, tmp_path / "site", monkeypatch)
    texts = sample_texts()
    if what == "segfault":
        check = ensure_int8(export, texts)
        assert check is not None and check.mean_cosine == {} and not check.passes("int8-dq")
        assert read_check(export) == check
    else:
        with pytest.raises(RuntimeError, match="could not be tried in a child process"):
            ensure_int8(export, texts)
        assert read_check(export) is None
        monkeypatch.delenv("FLYTEGPT_TEST_CHILD")
        assert ensure_int8(export, texts).passes("int8-dq")


def test_int8_that_cannot_be_made_means_fp32_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = str(tmp_path / "onnx")
    few = ["How do I cache a Flyte task?", "FlyteFile uploads a file to the blob store."]
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding"):
        e = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=cache, precision="int8"))
        assert e.embed_documents(few).shape == (2, 384)
    assert e.precision == "fp32" and "at least 128 of the corpus's chunks" in caplog.text
    # "auto" makes it only for an embedding of int8_min_texts or more: a small one never waits
    texts = [f"Flyte task number {i} caches its outputs in the blob store." for i in range(200)]
    small = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=cache, int8_min_texts=201))
    small.embed_documents(texts)
    assert "int8" not in small.describe() and not list(Path(cache).glob("*/int8-*"))

    # NNCF failing (or a read-only export cache) costs the int8 candidate, not the ingest
    def broken(*args, **kwargs):
        raise RuntimeError("nncf: unsupported graph")

    monkeypatch.setattr(quantize, "_quantize", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding"):
        auto = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=cache, int8_min_texts=200))
        assert auto.embed_documents(texts).shape == (200, 384)
    assert "could not make an int8 model" in caplog.text and "unsupported graph" in caplog.text
    assert auto.precision in ("fp32", "bf16") and not list(Path(cache).glob("*/int8-*"))  # nothing half-made

    monkeypatch.setattr(quantize, "nncf_available", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding"):
        e = Embedder.from_config(EmbeddingsConfig(device="cpu", onnx_cache_dir=str(tmp_path / "other"), precision="int8"))
        e.embed_documents(texts)
    assert e.precision == "fp32" and "NNCF is not installed" in caplog.text


@pytest.mark.skipif(not quantize.nncf_available(), reason="nncf is not installed")
def test_nncf_sends_no_usage_reports_and_writes_nothing_under_home(tmp_path: Path) -> None:
    """NNCF's openvino-telemetry takes a missing consent file as consent: an ingest that makes
    the int8 model must not report to Google Analytics nor leave a client id in ~/intel."""
    script = ("from flytegpt.ingest.quantize import import_nncf\n"
              "import_nncf()\n"
              "from nncf.telemetry.wrapper import telemetry\n"
              "impl = getattr(telemetry, '_impl', None)\n"
              "print('consent', getattr(impl, 'consent', None))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # as on a user's machine
    env["HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "consent True" not in out.stdout, out.stdout
    assert not (tmp_path / "intel").exists()
