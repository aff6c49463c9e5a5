"""Runs the fp32 ONNX export with OpenVINO on a CPU: the fast, faithful CPU path.

Why OpenVINO: it fuses the graph (attention, GELU, layer norms) and can compute in bf16 on
CPUs that have it, with vectors within cosine 0.9999 of PyTorch's. Whether bf16 is faster
than fp32 depends on the CPU, not on its flags alone: "auto" measures (ingest/autotune.py).

Documents go through an async queue of infer requests (THROUGHPUT hint: one stream per
couple of cores), so tokenising and padding the next batch overlaps the running one and
both cores stay busy; a single query is one synchronous request. The model is read from
the ONNX file directly (`Core.read_model`), not converted with OpenVINO's conversion tools.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from flytegpt.ingest.onnx_export import MODEL_FILE, ExportedGraph
from flytegpt.ingest.quantize import KINDS, int8_dir

log = logging.getLogger(__name__)

# float precision -> OpenVINO's INFERENCE_PRECISION_HINT; the int8 labels (ingest/quantize.py)
# run an int8 model of the export with its other layers in one of these
_HINTS = {"fp32": "f32", "bf16": "bf16"}
PRECISIONS = (*_HINTS, *KINDS)
RUNTIME_CACHE_SHAPES = 32


def openvino_available() -> bool:
    """OpenVINO and the tokenizers library are installed (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "tokenizers"))


def openvino_bf16() -> bool:
    """True when OpenVINO's CPU plugin computes in bf16 here (it says so in its capabilities)."""
    import openvino as ov

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

    def __init__(self, folder: str | Path, *, precision: str = "fp32", model_file: str | Path | None = None) -> None:
        """`model_file`: another graph of the same export (ingest/quantize.py checks an int8 model
        with it before it is in place); by default the export's own, or its int8 model."""
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO runs {', '.join(PRECISIONS)}, not {precision!r}")
        super().__init__(folder)
        self.precision = precision
        kind = KINDS.get(precision)
        model = model_file or (int8_dir(self.folder) / kind.model if kind else self.folder / MODEL_FILE)
        # int8 weights ("int8-dq"): the activations are quantised at run time in groups of this many
        dynamic = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": kind.dynamic_group} if kind and kind.dynamic_group else {}
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(model)), "CPU",
            {"INFERENCE_PRECISION_HINT": _HINTS[kind.rest if kind else precision], "PERFORMANCE_HINT": "THROUGHPUT",
             **dynamic,
             # The plugin keeps the kernels it made for each input shape (5,000 by default); every
             # batch has its own padded width, so an ingest's RSS crept up with the corpus.
             # Batches come longest first, so neighbours share shapes: 32 keeps RSS flat at the
             # same speed (tests/bench/bench_memory.py).
             "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES},
        )
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
