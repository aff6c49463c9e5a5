"""An int8 OpenVINO model of an fp32 export that keeps the vectors, made on the machine by NNCF.

Post-training quantisation (NNCF, `ModelType.TRANSFORMER`) of the fp32 ONNX export, with:
- SmoothQuant at alpha 0.7 on the MatMuls (NNCF's default, 0.95, moves so much of the
  activations' outliers into the weights that the int8 weights lose more than it saves);
- the FFN output and attention output MatMuls of every layer, and all of the first layer, left
  out of int8: their inputs hold the first token's huge activations (every linear layer in int8:
  mean cosine 0.9955; FFN output left out: 0.9991, but single texts down to 0.995; FFN and
  attention output: 0.9992, but one dev question crossed the top-5 cut; the first layer too:
  dev retrieval as fp32's);
- calibration on 64 of the corpus's own chunks, one text per sample.
On all-MiniLM-L6-v2 and the Flyte corpus that keeps a mean cosine of 0.9993 to the fp32 vectors
and the dev retrieval figures within 0.005 of fp32's (tests/bench/RESULTS.md "Performance"). Whether
it does for this model and corpus is checked when it is made, on 64 other chunks: only a model
whose vectors keep a mean cosine of MIN_COSINE or more, in the precision it would run in, is
ever used; it then shares the model id and the embedding cache. A refusal is remembered too, so
the quantisation (both models: 15-35 s on 2 cores) runs once per export and recipe, not once per ingest.
The check is kept per machine (CPU, its flags, OpenVINO's version): the same int8 model gives
other vectors on another CPU (mean cosine 0.9993 with AVX-512 VNNI, 0.9973 with AVX2 only), so an
export cache copied to another machine (an image, a shared volume) is checked again there, on
the corpus's chunks, without being made again.

A second int8 model needs no calibration: every weight in int8 (NNCF weight compression,
asymmetric, per output channel) with the activations quantised at run time by OpenVINO's CPU
plugin, per token in groups of DYNAMIC_GROUP values ("int8-dq"). Its vectors keep a mean cosine
of 0.9993 too, and it leaves no linear layer in float, so it is the int8 that helps where bf16 does not
(the static model's float layers then run in fp32). It is made and checked with the other.

Stored beside the export, `<export>/int8-<RECIPE>/`: model.xml/.bin, weights.xml/.bin (the folder
is renamed into place whole) and one `check-<machine>.json` per machine that checked them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Sequence

from flytegpt.ingest.json_files import write_json_atomic

log = logging.getLogger(__name__)

RECIPE = "sq0.7-ffo-att-l0-v3+w8a-dq64"  # bump when a recipe changes
MODEL_XML = "model.xml"  # static int8 (calibrated)
WEIGHTS_XML = "weights.xml"  # int8 weights, activations quantised at run time
DYNAMIC_GROUP = 64  # activation values per quantisation group (32, OpenVINO's default: 8% slower, same retrieval)
MIN_COSINE = 0.999
CALIBRATION_TEXTS = 64
CHECK_TEXTS = 64
SMOOTH_QUANT_ALPHA = 0.7
# The FFN output and attention output projections of every layer and all of layer 0 (BERT-style
# export names, onnx_export.py).
KEEP_PATTERNS = [r".*layer\.\d+/output/dense/MatMul", r".*layer\.\d+/attention/output/dense/MatMul", r".*layer\.0/.*"]


@dataclass(frozen=True)
class Int8Kind:
    """How one int8 precision label runs: which model file, what the layers not in int8 compute in."""

    model: str
    rest: str  # "fp32" or "bf16"
    dynamic_group: int = 0  # OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE (0: off)


KINDS = {
    "int8": Int8Kind(MODEL_XML, "fp32"),
    "int8-bf16": Int8Kind(MODEL_XML, "bf16"),
    "int8-dq": Int8Kind(WEIGHTS_XML, "fp32", DYNAMIC_GROUP),
}


def candidates(rests: Sequence[str]) -> list[str]:
    """The int8 labels worth measuring where "auto" measures these float precisions: the static
    model with its float layers in each of them, and the dynamic one (its rest is always fp32)."""
    return [label for label, kind in KINDS.items() if kind.rest in rests]


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def import_nncf() -> ModuleType:
    """NNCF, with its usage reports to Google Analytics declined for this process.

    On import NNCF starts openvino-telemetry, which counts a missing consent file as consent
    (it asks no one outside a terminal) and writes a client id under ~/intel. FlyteGPT runs
    unattended on maintainers' machines and pods and sends nothing anywhere: decline here,
    without writing the machine-wide consent file that `opt_in_out --opt_out` would."""
    from flytegpt.ingest.openvino_runner import decline_telemetry

    decline_telemetry()
    import nncf

    return nncf


@dataclass(frozen=True)
class Int8Check:
    """How close the int8 models' vectors are to the fp32 export's, per precision label (KINDS)."""

    mean_cosine: dict[str, float] = field(default_factory=dict)  # precision label -> mean over the check texts
    min_cosine: dict[str, float] = field(default_factory=dict)
    calibration_texts: int = 0
    check_texts: int = 0
    seconds: float = 0.0
    recipe: str = RECIPE

    def passes(self, precision: str) -> bool:
        return self.mean_cosine.get(precision, 0.0) >= MIN_COSINE

    def to_dict(self) -> dict:
        return asdict(self)


def int8_dir(export: Path) -> Path:
    return Path(export) / f"int8-{RECIPE}"


@functools.lru_cache(maxsize=1)
def machine_key() -> str:
    """Whose check a check file is: the vectors of one int8 model depend on the CPU's kernels."""
    from flytegpt.ingest.autotune import cache_key, machine_facts
    from flytegpt.ingest.openvino_runner import import_openvino

    ov = import_openvino()

    return cache_key({**machine_facts(), "openvino": ov.get_version()})


def check_file(export: Path) -> Path:
    """This machine's check of the export's int8 models."""
    return int8_dir(export) / f"check-{machine_key()}.json"


def read_check(export: Path) -> Int8Check | None:
    """This machine's check of int8 models made earlier (None: not made, or not checked here)."""
    try:
        data = json.loads(check_file(export).read_text())
        return Int8Check(**{k: data[k] for k in Int8Check.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def split_texts(texts: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(calibration, check) texts: distinct, picked by hash so the same corpus picks the same
    ones whatever its order; None when there are too few to judge the result."""
    distinct = sorted({t for t in texts if t.strip()}, key=lambda t: hashlib.sha256(t.encode()).digest())
    if len(distinct) < CALIBRATION_TEXTS + CHECK_TEXTS:
        return None
    return distinct[:CALIBRATION_TEXTS], distinct[CALIBRATION_TEXTS : CALIBRATION_TEXTS + CHECK_TEXTS]


def ensure_int8(export: Path, texts: Sequence[str] = ()) -> Int8Check | None:
    """The check of the export's int8 model, quantising it now from `texts` when it was never made.

    None when it cannot be made here: NNCF missing, or too few texts to calibrate and check it
    (then a later, larger call tries again). A made model whose check fails stays unused.
    """
    done = read_check(export)
    if done is not None:
        return done
    made = (int8_dir(export) / MODEL_XML).is_file() and (int8_dir(export) / WEIGHTS_XML).is_file()
    if not made and not nncf_available():
        return None
    split = split_texts(texts)
    if split is None:
        return None
    if made:  # on another machine: check them here, on texts picked the same way
        log.info("checking the int8 models of %s on this machine (made on another one)", export.name)
        return _save_check(export, _check(Path(export), int8_dir(export), split[1], time.perf_counter(), 0))
    return _make(Path(export), *split)


def _make(export: Path, calibration: list[str], check: list[str]) -> Int8Check:
    """Quantise and save into a temp folder, then rename it into place whole (a crash or a
    concurrent ingest never leaves half a model), then check it on this machine."""
    import_nncf()  # imported first: importing it sets its logger to INFO
    import openvino as ov  # telemetry declined by import_nncf

    from flytegpt.ingest.onnx_export import MODEL_FILE
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder

    t = time.perf_counter()
    log.info("quantising %s to int8 (NNCF, %d of the corpus's chunks; once per model)",
             export.name, len(calibration))
    logging.getLogger("nncf").setLevel(logging.WARNING)  # a line per layer it leaves in float otherwise
    reference = OpenVinoEncoder(export, precision="fp32")
    core = ov.Core()
    tmp = Path(tempfile.mkdtemp(prefix=".int8-", dir=export))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared (an image, a volume)
    try:
        # each from its own read of the fp32 graph: NNCF may change the model it is given
        static = _quantize(core.read_model(str(export / MODEL_FILE)), reference, calibration)
        ov.save_model(static, str(tmp / MODEL_XML), compress_to_fp16=False)
        dynamic = _compress_weights(core.read_model(str(export / MODEL_FILE)))
        ov.save_model(dynamic, str(tmp / WEIGHTS_XML), compress_to_fp16=False)
        result = _check(export, tmp, check, t, len(calibration), reference)
        try:
            os.rename(tmp, int8_dir(export))
        except OSError:
            if not (int8_dir(export) / WEIGHTS_XML).is_file():  # a concurrent maker won only if it finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _save_check(export, result)


def _check(export: Path, folder: Path, check: list[str], started: float, calibration_texts: int,
           reference=None) -> Int8Check:
    """How close each int8 precision's vectors in `folder` are to the fp32 export's, here."""
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder, float_precisions
    from flytegpt.ingest.openvino_trial import survives, tried

    reference = reference or OpenVinoEncoder(export, precision="fp32")
    expected = reference.encode(check)
    means, mins = {}, {}
    for label in candidates(float_precisions()):  # what can run here
        kind = KINDS[label]
        if not survives(export, label, model_file=folder / kind.model):  # a crash here would end the ingest
            if not tried(export, label, model_file=folder / kind.model):  # not a verdict: keep no check either
                raise RuntimeError(f"OpenVINO {label} could not be tried in a child process here (see above)")
            continue
        try:
            int8 = OpenVinoEncoder(export, precision=label, model_file=folder / kind.model)
            cos = (int8.encode(check) * expected).sum(1)
        except Exception as e:  # noqa: BLE001 - a precision this CPU plugin refuses is simply not offered
            log.info("%s could not run here (%s)", label, e)
            continue
        means[label], mins[label] = round(float(cos.mean()), 6), round(float(cos.min()), 6)
    return Int8Check(means, mins, calibration_texts, len(check), round(time.perf_counter() - started, 1))


def _save_check(export: Path, result: Int8Check) -> Int8Check:
    """Write this machine's check beside the models (atomically: a reader sees all of it or none)."""
    path = check_file(export)
    try:
        write_json_atomic(path, result.to_dict(), indent=1)
    except OSError as e:  # a read-only cache (an image): the check holds for this process
        log.warning("could not save the int8 check in %s (%s): it is checked again next time", path.parent, e)
    verdict = {r: ("kept" if result.passes(r) else "refused") for r in result.mean_cosine}
    log.info("int8 models of %s on this machine: mean cosine to fp32 %s (needs >= %s): %s (%.0fs)",
             export.name, result.mean_cosine, MIN_COSINE, verdict, result.seconds)
    return result


def _quantize(model, graph, calibration: list[str]):
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    samples = [{"input_ids": ids, "attention_mask": mask} for _, ids, mask in graph.batches(calibration, 1)]
    return nncf.quantize(
        model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(patterns=KEEP_PATTERNS, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=SMOOTH_QUANT_ALPHA)
        ),
    )


def _compress_weights(model):
    nncf = import_nncf()

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
