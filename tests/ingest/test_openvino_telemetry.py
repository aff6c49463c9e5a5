"""FlyteGPT sends nothing anywhere: OpenVINO's usage reports are declined before OpenVINO loads.

OpenVINO's converter (which the query embedder's load runs) and NNCF start openvino-telemetry, which
counts a missing consent file as consent, writes a client id under ~/intel and forks a sender to
Google Analytics. In `flytegpt serve` that child once deadlocked on an OpenSSL lock and outlived
the bot, holding its files open.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino_telemetry")

ROOT = Path(__file__).resolve().parents[2]
_PROBE = """
import os, sys, time
if sys.argv[1] == "flytegpt":
    from flytegpt.ingest.openvino_runner import import_openvino
    import_openvino()
import openvino
from openvino.tools.ovc.telemetry_utils import init_ovc_telemetry, send_framework_info
init_ovc_telemetry()
send_framework_info("onnx")
time.sleep(0.5)
print(sorted(os.listdir(os.path.expanduser("~"))))
"""


def _probe(home: Path, how: str) -> str:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, how], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_openvino_loaded_through_flytegpt_reports_nothing(tmp_path: Path) -> None:
    plain, declined = tmp_path / "plain", tmp_path / "declined"
    plain.mkdir()
    declined.mkdir()
    assert "intel" in _probe(plain, "plain")  # the premise: OpenVINO alone records and reports usage
    assert _probe(declined, "flytegpt") == "[]"


def test_every_import_of_openvino_goes_through_import_openvino() -> None:
    """A new `import openvino` elsewhere would load it with the reports on."""
    found = []
    for folder in ("ingest", "bot", "flyte"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.match(r"\s*(?:import openvino\b|from openvino\b)", line) and "telemetry declined" not in line:
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    assert [f.split(":")[0] for f in found] == ["ingest/openvino_runner.py"], found  # import_openvino's own
