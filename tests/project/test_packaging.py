"""What `pip install flytegpt` puts into site-packages, and that it lives beside the Flyte 2 SDK.

The Flyte 2 SDK is imported as `flyte`; a distribution that also ships a top-level `flyte`
(or `bot`, `ingest`) package overwrites it. The wheel must hold exactly one top-level name,
and imports must run one way: flyte -> bot -> ingest.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from support.paths import ROOT

PARTS = ("bot", "ingest", "flyte")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("flytegpt-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_has_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert wheel.read(top_level).decode().split() == ["flytegpt"]
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"flytegpt"}


def test_every_module_and_the_sample_are_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            assert f"flytegpt/{rel}" in names, f"{rel} is missing from the wheel"
    assert "flytegpt/ingest/sample/flytegpt.toml" in names


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("part", PARTS)
def test_imports_use_the_package_name_and_run_one_way(part: str) -> None:
    allowed = {"flyte": {"bot", "ingest", "flyte"}, "bot": {"bot", "ingest"}, "ingest": {"ingest"}}[part]
    for path in (ROOT / part).rglob("*.py"):
        if "sample" in path.relative_to(ROOT).parts:  # the sample corpus is data, not our code
            continue
        for module in _imports(path):
            top, _, rest = module.partition(".")
            where = path.relative_to(ROOT)
            assert top not in ("bot", "ingest", "flyte"), f"{where} imports {module}: use flytegpt.{module}"
            if top == "flytegpt":
                assert rest.split(".")[0] in allowed, f"{where} imports {module} against the one-way flow"


def test_flyte2_sdk_and_flytegpt_import_and_run_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("flyte", reason="the Flyte 2 SDK is part of the dev extra")
    script = textwrap.dedent("""
        import flyte
        import flytegpt.flyte.ingest_wf as wf

        env = flyte.TaskEnvironment(name="side_by_side")

        @env.task
        def double(x: int) -> int:
            return 2 * x

        flyte.init()
        run = flyte.with_runcontext(mode="local").run(double, x=21)
        print("sdk", flyte.__file__)
        print("ours", wf.ingest_wf.name)
        print("result", run.outputs()[0])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert "site-packages" in lines["sdk"] and not lines["sdk"].startswith(str(ROOT / "flyte"))
    assert lines["ours"] == "flytegpt.flyte.ingest_wf.ingest_wf"
    assert lines["result"] == "42"
