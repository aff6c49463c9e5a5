"""Runs the fp32 ONNX export with OpenVINO on a CPU: the fast, faithful CPU path.

Why OpenVINO: it fuses the graph (attention, GELU, layer norms) and can compute in bf16 on
CPUs that have it, with vectors within cosine 0.9999 of PyTorch's. Whether bf16 is faster
than fp32 depends on the CPU, not on its flags alone: "auto" measures (ingest/autotune.py).

Documents go through an async queue of infer requests (THROUGHPUT hint: one stream per
couple of cores), so tokenising and padding the next batch overlaps the running one and
both cores stay busy; a single query is one synchronous request. The model is read from
the ONNX file directly, not converted with OpenVINO's conversion tools.

The model an ingest or the bot runs is compiled once per machine: OpenVINO keeps the compiled
graph in the export's `compiled/<machine>` folder (its CACHE_DIR; 20-90 MiB a model) and
later processes load it in 0.1 s instead of compiling for 0.4-0.7 s, a tenth of a small
re-ingest. A changed model file (a new export, a remade int8 model) is compiled again.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from flytegpt.ingest.onnx_export import MODEL_FILE, ExportedGraph
from flytegpt.ingest.quantize import KINDS, int8_dir, machine_key

log = logging.getLogger(__name__)

# float precision -> OpenVINO's INFERENCE_PRECISION_HINT; the int8 labels (ingest/quantize.py)
# run an int8 model of the export with its other layers in one of these
_HINTS = {"fp32": "f32", "bf16": "bf16"}
PRECISIONS = (*_HINTS, *KINDS)
RUNTIME_CACHE_SHAPES = 32
COMPILED_DIR = "compiled"


def decline_telemetry() -> None:
    """OpenVINO's usage reports to Google Analytics declined for this process, before anything of
    OpenVINO loads (its converter and NNCF start openvino-telemetry, which counts a missing consent
    file as consent and forks a sender: in `flytegpt serve` that child once deadlocked on an
    OpenSSL lock another thread held at the fork, and outlived the bot). FlyteGPT runs
    unattended and sends nothing anywhere; the machine-wide consent file (`opt_in_out
    --opt_out`) is left alone."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no telemetry package: nothing to decline
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


def import_openvino() -> ModuleType:
    """`openvino`, its telemetry declined first (`decline_telemetry`): every use of OpenVINO here
    imports it through this."""
    decline_telemetry()
    import openvino

    return openvino


def openvino_available() -> bool:
    """OpenVINO and the tokenizers library are installed (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "tokenizers"))


def openvino_bf16() -> bool:
    """True when OpenVINO's CPU plugin computes in bf16 here (it says so in its capabilities)."""
    ov = import_openvino()

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - an unreadable capability means fp32, not a failed ingest
        return False


def float_precisions() -> list[str]:
    """The float precisions the CPU plugin computes here: bf16 only where it offers it (elsewhere
    a bf16 hint means fp32)."""
    return ["fp32", "bf16"] if openvino_bf16() else ["fp32"]


class OpenVinoEncoder(ExportedGraph):
    """Texts -> L2-normalised float32 vectors with an export (fp32, or its int8 model) compiled for the CPU."""

    def __init__(
        self, folder: str | Path, *, precision: str = "fp32", model_file: str | Path | None = None,
        keep_compiled: bool = False,
    ) -> None:
        """`model_file`: another graph of the same export (ingest/quantize.py checks an int8 model
        with it before it is in place); by default the export's own, or its int8 model.
        `keep_compiled`: load the compiled model from the export's `compiled/` folder, compiling
        and saving it there the first time (for the model a process runs, not for candidates
        that are only measured: each saved model costs disk)."""
        ov = import_openvino()

        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO runs {', '.join(PRECISIONS)}, not {precision!r}")
        super().__init__(folder)
        self.precision = precision
        kind = KINDS.get(precision)
        model = model_file or (int8_dir(self.folder) / kind.model if kind else self.folder / MODEL_FILE)
        # int8 weights ("int8-dq"): the activations are quantised at run time in groups of this many
        dynamic = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": kind.dynamic_group} if kind and kind.dynamic_group else {}
        config = {
            "INFERENCE_PRECISION_HINT": _HINTS[kind.rest if kind else precision], "PERFORMANCE_HINT": "THROUGHPUT",
            **dynamic,
            # The plugin keeps the kernels it made for each input shape (5,000 by default); every
            # batch has its own padded width, so an ingest's RSS crept up with the corpus.
            # Batches come longest first, so neighbours share shapes: 32 keeps RSS flat at the
            # same speed (tests/bench/bench_memory.py).
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES,
        }
        # A graph that computes in bf16 (bf16, int8-bf16) is compiled afresh each time: loaded through
        # the compiled-model cache on an Intel Xeon with AMX (OpenVINO 2026.4.1), bf16 crashed 4 of 5
        # processes and int8-bf16 10 of 10 (segfault, abort, bus error or a hang); none of 21 without
        # it, nor fp32, int8 or int8-dq with it in 38 (ingest/openvino_trial.py). It costs 0.4-0.7 s.
        keep = keep_compiled and config["INFERENCE_PRECISION_HINT"] != "bf16"
        self.compiled = _compile(ov.Core(), Path(model), config, self.folder if keep else None)
        requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(self.compiled, max(1, requests))
        self._single = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one encode() at a time: the queue's callback owns `out`

    def encode(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """Vectors in input order."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        batches = self.batches(texts, batch_size)
        with self._lock:
            if len(texts) <= batch_size:  # one batch (a query): no queue round trip
                idx, ids, mask = next(batches)
                out[idx] = self._single.infer({"input_ids": ids, "attention_mask": mask})[0]
            else:
                def done(request, idx) -> None:
                    out[idx] = request.get_output_tensor(0).data

                self._queue.set_callback(done)
                for idx, ids, mask in batches:
                    self._queue.start_async({"input_ids": ids, "attention_mask": mask}, idx)
                self._queue.wait_all()
        # OpenVINO normalised in bf16 on bf16 CPUs: make the norm exact in fp32
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def compiled_dir(export: Path) -> Path:
    """This machine's compiled models of an export: the compiled graph depends on the CPU and
    the OpenVINO release (an export folder may be baked into an image that other machines run)."""
    return Path(export) / COMPILED_DIR / machine_key()


def _compile(core, model: Path, config: dict, keep_in: Path | None):
    """`core.compile_model`, through OpenVINO's cache of compiled models in `keep_in`'s
    compiled_dir when given. OpenVINO finds a compiled model by the model file (its path and
    modification time) and the config. A cache that cannot be written or read (a read-only
    image, a full disk, a damaged file) only means compiling as before."""
    if keep_in is not None:
        where = compiled_dir(keep_in)
        try:
            where.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(where)})
            return core.compile_model(str(model), "CPU", config)
        except Exception as e:  # noqa: BLE001 - the plain compile below is the same model
            log.info("not keeping the compiled model in %s (%s)", where, e)
            core.set_property({"CACHE_DIR": ""})
    return core.compile_model(core.read_model(str(model)), "CPU", config)
