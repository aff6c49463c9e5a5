"""Whether a precision of the embedding model runs on this machine without taking the process down.

OpenVINO's CPU plugin writes its own kernels for the CPU it finds, and on some CPUs some of them
crash: on an Intel Xeon with AMX (family 6 model 207, OpenVINO 2026.4.1) a bf16 model compiled
through the compiled-model cache segfaulted, aborted or hung in 4 of 5 processes, and OpenVINO
reports int8 models with dynamic shapes segfaulting on Sapphire, Emerald and Granite Rapids
(openvinotoolkit/openvino#37577). A crash in native code cannot be caught: it ended the ingest
(or the bot) with "Segmentation fault", and measured again the next time, it crashed again.

So a precision other than fp32 is first run in a child process, as the ingest will run it: the
same model, the texts of the measurement, a batch through the queue and a single query. Only
if the child exits cleanly in time is the precision offered or used here; otherwise the embedding
runs in fp32 and says why. The verdict is kept per machine (CPU, flags, OpenVINO's version) beside
the export, `trials-<machine>.json`: a trial costs a process start (2-5 s), once per machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flytegpt.ingest.json_files import read_json_dict, write_json_atomic

log = logging.getLogger(__name__)

TIMEOUT_S = 180.0  # a trial's compile and two passes take seconds; a hung kernel never ends


def trials_file(export: Path) -> Path:
    from flytegpt.ingest.quantize import machine_key

    return Path(export) / f"trials-{machine_key()}.json"


def _trial_key(precision: str) -> str:
    from flytegpt.ingest.quantize import KINDS, RECIPE

    return f"{precision}@{RECIPE}" if precision in KINDS else precision


def survives(export: Path, precision: str, *, model_file: Path | None = None, timeout_s: float = TIMEOUT_S) -> bool:
    """Did `precision` of the export (or of `model_file`, an int8 model being checked) run in a child
    process here without crashing or hanging? fp32, what every other precision falls back to, is not
    tried. Known verdicts are read from the trials file; a file that cannot be written only means
    trying again next time."""
    if precision == "fp32":
        return True
    path, key = trials_file(export), _trial_key(precision)
    known = read_json_dict(path).get(key)
    if isinstance(known, dict) and isinstance(known.get("ok"), bool):
        return known["ok"]
    ok, why, seconds = _run_child(Path(export), precision, model_file, timeout_s)
    if not ok:
        log.warning("embedding: OpenVINO %s %s on this CPU (a trial in a child process); it is not used on this "
                    "machine, the embedding runs in fp32 or another precision that ran (the verdict is kept in %s: "
                    "delete it to try again)", precision, why, path)
    entries = read_json_dict(path)
    entries[key] = {"ok": ok, "why": why, "seconds": seconds,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        write_json_atomic(path, entries, indent=1, sort_keys=True)
    except OSError as e:
        log.warning("embedding: could not keep the trial of %s in %s (%s); it runs again next time", precision, path, e)
    return ok


def _run_child(export: Path, precision: str, model_file: Path | None, timeout_s: float) -> tuple[bool, str, float]:
    """(ran cleanly, what happened, seconds) of one child process running the trial."""
    argv = [sys.executable, "-m", __name__, str(export), precision, *([str(model_file)] if model_file else [])]
    # the child imports what this process imports, from where it imports it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    t = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"did not finish in {timeout_s:.0f} s (hung)", round(time.perf_counter() - t, 1)
    seconds = round(time.perf_counter() - t, 1)
    if done.returncode == 0:
        return True, "ran", seconds
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return False, f"crashed ({name})", seconds
    last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
    return False, f"failed (exit {done.returncode}: {last})", seconds


def _trial(export: Path, precision: str, model_file: Path | None) -> None:
    """The child: the model compiled as the ingest compiles it (through the compiled-model cache
    for the export's own models), a pass through the queue of infer requests, a single query."""
    import numpy as np

    from flytegpt.ingest.autotune import sample_texts
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder

    encoder = OpenVinoEncoder(export, precision=precision, model_file=model_file, keep_compiled=model_file is None)
    texts = sample_texts()
    vectors = np.concatenate([encoder.encode(texts, 8), encoder.encode(["how do I cache a task?"], 8)])
    if not np.isfinite(vectors).all():
        raise SystemExit("the vectors hold NaN or infinity")


if __name__ == "__main__":
    _trial(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]) if len(sys.argv) > 3 else None)
