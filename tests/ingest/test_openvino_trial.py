"""A precision that crashes OpenVINO on this CPU is refused instead of ending the ingest (ingest/openvino_trial.py).

On an Intel Xeon with AMX a bf16 model loaded through OpenVINO's compiled-model cache segfaulted
in most processes: the ingest died with "Segmentation fault", and so did the next one. Each
precision other than fp32 now runs first in a child process. The children here crash or hang for
real (tests/support/child_crash.py), and the real model runs where they do not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support.child_crash import make_children

from flytegpt.ingest import openvino_runner
from flytegpt.ingest.config import DEFAULT_MODEL
from flytegpt.ingest.embedding import Embedder, resolve_model_path
from flytegpt.ingest.onnx_export import ensure_export
from flytegpt.ingest.openvino_trial import survives, trials_file, tried

@pytest.fixture()
def export(tmp_path: Path) -> Path:
    return ensure_export(DEFAULT_MODEL, resolve_model_path(DEFAULT_MODEL), tmp_path / "onnx")


@pytest.fixture()
def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make the next child processes crash or hang at start-up: child("segfault"), child("hang")."""
    return lambda what: make_children(what, tmp_path / "site", monkeypatch)


def test_a_precision_that_crashes_is_refused_and_remembered_on_this_machine(
    export: Path, child, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    child("segfault")
    with caplog.at_level(logging.WARNING):
        assert survives(export, "bf16") is False
    assert "OpenVINO bf16 crashed (SIGSEGV) on this CPU" in caplog.text
    verdict = json.loads(trials_file(export).read_text())["bf16"]
    assert verdict["ok"] is False and verdict["why"] == "crashed (SIGSEGV)"
    # the verdict is read back: a crash costs one child process per machine, not one per ingest
    monkeypatch.delenv("FLYTEGPT_TEST_CHILD")
    assert survives(export, "bf16") is False


def test_a_trial_that_hangs_is_stopped(export: Path, child) -> None:
    child("hang")
    assert survives(export, "int8-dq", timeout_s=3) is False
    assert "did not finish in 3 s" in json.loads(trials_file(export).read_text())["int8-dq@" + _recipe()]["why"]


def test_a_precision_that_runs_is_offered_and_fp32_is_never_tried(export: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # run from a folder holding a stray numpy.py: `python -m` would import it in the child (not here)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "numpy.py").write_text("raise ImportError('the wrong numpy')\n")
    monkeypatch.chdir(tmp_path / "work")
    assert survives(export, "bf16") is True  # the real model in a child (bf16 means fp32 on a CPU without it)
    assert json.loads(trials_file(export).read_text())["bf16"]["why"] == "ran"
    assert survives(export / "missing", "fp32") is True  # what everything falls back to: no child


@pytest.mark.parametrize("what, why", [("terminated", "stopped from outside (SIGTERM)"),
                                       ("no-op", "exited without embedding")])
def test_a_child_that_could_not_run_says_nothing_lasting_about_the_machine(
    export: Path, child, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, what: str, why: str
) -> None:
    """Ctrl-C or the OOM killer ending a trial, or a child that never embedded, is no verdict on the CPU:
    the precision is left out of this process only, and the next one tries again."""
    child(what)
    with caplog.at_level(logging.WARNING):
        assert survives(export, "bf16") is False
    assert f"OpenVINO bf16 could not be tried in a child process ({why})" in caplog.text
    assert "crashed" not in caplog.text and not tried(export, "bf16")
    monkeypatch.delenv("FLYTEGPT_TEST_CHILD")
    assert survives(export, "bf16") is True and tried(export, "bf16")


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_the_embedder_falls_back_to_fp32_where_bf16_crashes(
    tmp_path: Path, child, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, precision: str
) -> None:
    monkeypatch.setattr(openvino_runner, "openvino_bf16", lambda: True)  # a CPU that offers bf16
    child("segfault")
    embedder = Embedder(DEFAULT_MODEL, device="cpu", precision=precision, onnx_cache_dir=str(tmp_path / "onnx"))
    with caplog.at_level(logging.WARNING):
        assert embedder.embed_query("how do I cache a task?").shape == (384,)  # the embedding goes on
    assert embedder.precision == "fp32" and embedder.describe()["precision"] == "fp32"
    assert "OpenVINO bf16 crashed (SIGSEGV)" in caplog.text


def _recipe() -> str:
    from flytegpt.ingest.quantize import RECIPE

    return RECIPE


def test_a_model_computing_in_bf16_is_never_loaded_from_the_compiled_model_cache(export: Path) -> None:
    """The cache is what crashed bf16 (4 of 5 processes) and int8-bf16 (10 of 10); fp32 and the int8
    models computing the rest in fp32 keep using it."""
    import openvino as ov

    from flytegpt.ingest import quantize
    from flytegpt.ingest.onnx_export import MODEL_FILE
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder, compiled_dir

    OpenVinoEncoder(export, precision="bf16", keep_compiled=True).encode(["flyte"])
    # the fp32 graph as IR stands in for the calibrated int8 model: what is tested is whether it is kept
    model = quantize.int8_dir(export) / quantize.MODEL_XML
    model.parent.mkdir()
    ov.save_model(ov.Core().read_model(str(export / MODEL_FILE)), str(model), compress_to_fp16=False)
    OpenVinoEncoder(export, precision="int8-bf16", keep_compiled=True).encode(["flyte"])
    assert not any(compiled_dir(export).glob("*.blob"))
    OpenVinoEncoder(export, precision="int8", keep_compiled=True).encode(["flyte"])
    assert len(list(compiled_dir(export).glob("*.blob"))) == 1
    OpenVinoEncoder(export, precision="fp32", keep_compiled=True).encode(["flyte"])
    assert len(list(compiled_dir(export).glob("*.blob"))) == 2
