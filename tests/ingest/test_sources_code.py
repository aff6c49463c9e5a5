"""Code loader: which files are read, language and module metadata, URLs."""

from __future__ import annotations

import shutil
from pathlib import Path

from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import FIXTURES

FIXTURE = FIXTURES / "sources" / "code"


def _load(path: Path = FIXTURE, **kw):
    source = SourceConfig(name="c", kind="code", path=path, **kw)
    report = LoadReport()
    return {d.locator: d for d in load_source(source, report)}, report


def test_tests_and_vendored_files_are_skipped():
    docs, _ = _load()
    assert set(docs) == {"pkg/__init__.py", "pkg/core.py", "pkg/broken.py", "pkg/sub/util.go"}


def test_skip_tests_off_reads_them():
    docs, _ = _load(skip_tests=False)
    assert {"pkg/tests/test_core.py", "pkg/test_thing.py", "pkg/thing_test.py", "pkg/vendor/lib/v.py"} <= set(docs)


def test_language_module_and_url():
    docs, _ = _load(url="https://git.example.org/blob/main/{path}#L{start}-L{end}")
    core = docs["pkg/core.py"]
    assert core.kind == "code"
    assert core.meta["language"] == "python"
    assert core.meta["module"] == "pkg.core"
    assert core.url == "https://git.example.org/blob/main/pkg/core.py#L{start}-L{end}"
    assert docs["pkg/sub/util.go"].meta["language"] == "go"
    assert docs["pkg/__init__.py"].meta["module"] == "pkg"


def test_binary_large_and_cache_files_are_skipped(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(FIXTURE, root)
    (root / "pkg" / "blob.py").write_bytes(b"\x00\x01\x02binary")
    (root / "pkg" / "huge.py").write_text("x = 1\n" * 200_000)  # > 1 MB
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "junk.py").write_text("def junk():\n    return 1\n")
    (root / "pkg" / "node_modules").mkdir()
    (root / "pkg" / "node_modules" / "x.js").write_text("module.exports = 1;\n")
    docs, report = _load(root)
    assert set(docs) == {"pkg/__init__.py", "pkg/core.py", "pkg/broken.py", "pkg/sub/util.go"}
    reasons = dict(report.skipped)
    assert "binary" in reasons["pkg/blob.py"]
    assert "larger" in reasons["pkg/huge.py"]


def test_package_source_names_modules_after_the_package():
    source = SourceConfig(name="ik", kind="code", package="flytegpt.ingest", include=["sources/*"])
    docs = {d.locator: d for d in load_source(source, LoadReport())}
    assert docs["sources/docs.py"].meta["module"] == "flytegpt.ingest.sources.docs"
    assert docs["sources/__init__.py"].meta["module"] == "flytegpt.ingest.sources"
