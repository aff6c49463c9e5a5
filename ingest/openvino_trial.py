"""Whether a precision of the embedding model runs on this machine without taking the process down.

OpenVINO's CPU plugin writes its own kernels for the CPU it finds, and on some CPUs some of them
crash: on an Intel Xeon with AMX (family 6 model 207, OpenVINO 2026.4.1) a bf16 model compiled
through the compiled-model cache segfaulted, aborted or hung in 4 of 5 processes, and OpenVINO
reports int8 models with dynamic shapes segfaulting on Sapphire, Emerald and Granite Rapids
(openvinotoolkit/openvino#37577). A crash in native code cannot be caught: it ended the ingest
(or the bot) with "Segmentation fault", and measured again the next time, it crashed again.

So a precision other than fp32 is first run in child processes, as the ingest will run it: the
same model, the texts of the measurement, a batch through the queue and a single query; twice, so
a model kept compiled is also loaded from the cache as the next process loads it. Only if both
children run it and exit cleanly in time is the precision offered or used here; otherwise the
embedding runs in fp32 or another precision that ran, and says why. A crash (a fatal signal) or a
hang is kept per machine (CPU, flags, OpenVINO's version) beside the export, `trials-<machine>.json`,
as is a clean run: trials cost two process starts (about a second each), once per machine. A child
that could not run for another reason (stopped by Ctrl-C or the OOM killer, a Python error, no
process to start) refuses the precision for this process only.
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

TIMEOUT_S = 90.0  # a child's compile and two passes take about a second; a hung kernel never ends
RUNS = 2  # the first compiles (and keeps the compiled model), the second loads what it kept
# signals that say the CPU's kernels failed; others (SIGINT, SIGTERM, SIGKILL) came from outside
_CRASHES = {signal.SIGSEGV, signal.SIGABRT, signal.SIGILL, signal.SIGBUS, signal.SIGFPE}
_RAN = "ran"  # the child's last line of output when it embedded
_PATH_ENV = "FLYTEGPT_TRIAL_PATH"  # the parent's import path, for the child


def trials_file(export: Path) -> Path:
    from flytegpt.ingest.quantize import machine_key

    return Path(export) / f"trials-{machine_key()}.json"


def _trial_key(precision: str, model_file: Path | None) -> str:
    """An int8 model being checked (`model_file`, not kept compiled) and the one in place (kept
    compiled, loaded from the cache by later processes) are run differently: each is tried."""
    from flytegpt.ingest.quantize import KINDS, RECIPE

    key = f"{precision}@{RECIPE}" if precision in KINDS else precision
    return f"{key} (checked)" if model_file is not None else key


def tried(export: Path, precision: str, *, model_file: Path | None = None) -> bool:
    """Is a verdict on `precision` kept for this machine (False: never tried, or it could not be)?"""
    return isinstance(read_json_dict(trials_file(export)).get(_trial_key(precision, model_file)), dict)


def survives(export: Path, precision: str, *, model_file: Path | None = None, timeout_s: float = TIMEOUT_S) -> bool:
    """Did `precision` of the export (or of `model_file`, an int8 model being checked) run in child
    processes here without crashing or hanging? fp32, what every other precision falls back to, is not
    tried. Known verdicts are read from the trials file; a file that cannot be written only means
    trying again next time."""
    if precision == "fp32":
        return True
    path, key = trials_file(export), _trial_key(precision, model_file)
    known = read_json_dict(path).get(key)
    if isinstance(known, dict) and isinstance(known.get("ok"), bool):
        return known["ok"]
    log.info("embedding: trying OpenVINO %s in a child process (once per machine, at most %d x %.0f s)",
             precision, RUNS, timeout_s)
    t = time.perf_counter()
    ok, why, lasting = True, _RAN, True
    for _ in range(RUNS):
        ok, why, lasting = _run_child(Path(export), precision, model_file, timeout_s)
        if not ok:
            break
    if not ok and lasting:
        log.warning("embedding: OpenVINO %s %s on this CPU (a trial in a child process); it is not used on this "
                    "machine, the embedding runs in fp32 or another precision that ran (the verdict is kept in %s: "
                    "delete it to try again)", precision, why, path)
    elif not ok:
        log.warning("embedding: OpenVINO %s could not be tried in a child process (%s); not used by this process, "
                    "tried again next time", precision, why)
        return False
    entries = read_json_dict(path)
    entries[key] = {"ok": ok, "why": why, "seconds": round(time.perf_counter() - t, 1),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        write_json_atomic(path, entries, indent=1, sort_keys=True)
    except OSError as e:
        log.warning("embedding: could not keep the trial of %s in %s (%s); it runs again next time", precision, path, e)
    return ok


def _run_child(export: Path, precision: str, model_file: Path | None, timeout_s: float) -> tuple[bool, str, bool]:
    """(ran cleanly, what happened, whether that says something lasting about this machine) of one
    child process running the trial."""
    argv = [sys.executable, "-m", __name__, str(export), precision, *([str(model_file)] if model_file else [])]
    # The child imports what this process imports, from where it imports it, and not from the
    # working directory, which `-m` would put first (PYTHONSAFEPATH, Python 3.11+; _trial resets
    # its path too): a stray numpy.py there would fail every trial.
    path = os.pathsep.join(p for p in sys.path if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONSAFEPATH": "1", _PATH_ENV: path}
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"did not finish in {timeout_s:.0f} s (hung)", True
    except OSError as e:  # no process could be started: says nothing about the CPU
        return False, f"no child process: {e}", False
    if done.returncode < 0:
        try:
            sig = signal.Signals(-done.returncode)
        except ValueError:
            return False, f"ended by signal {-done.returncode}", False
        if sig in _CRASHES:
            return False, f"crashed ({sig.name})", True
        return False, f"stopped from outside ({sig.name})", False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        return False, f"failed (exit {done.returncode}: {last})", False
    if (done.stdout.strip().splitlines() or [""])[-1] != f"{_RAN} {precision}":
        return False, "exited without embedding", False
    return True, _RAN, True


def _trial(export: Path, precision: str, model_file: Path | None) -> None:
    """The child: the model compiled as the ingest compiles it (through the compiled-model cache
    for the export's own models), a pass through the queue of infer requests, a single query."""
    import numpy as np

    from flytegpt.ingest.autotune import sample_texts
    from flytegpt.ingest.openvino_runner import OpenVinoEncoder

    encoder = OpenVinoEncoder(export, precision=precision, model_file=model_file, keep_compiled=model_file is None)
    texts = sample_texts()
    vectors = np.concatenate([encoder.encode(texts, 8), encoder.encode(["how do I cache a task?"], 8)])
    if vectors.shape != (len(texts) + 1, encoder.dimension) or not np.isfinite(vectors).all():
        raise SystemExit(f"the vectors are not what the model makes ({vectors.shape}, NaN or infinity)")
    print(f"{_RAN} {encoder.precision}", flush=True)


if __name__ == "__main__":
    if os.environ.get(_PATH_ENV):
        sys.path[:] = os.environ[_PATH_ENV].split(os.pathsep)
    _trial(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]) if len(sys.argv) > 3 else None)
