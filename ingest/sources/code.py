"""Source trees -> one Document per source file, tests, vendored and binary files left out.

Tests and vendored copies would answer "how does X work" with a mock or somebody else's
code; binaries and huge generated files carry no words to retrieve.
"""

from __future__ import annotations

from collections.abc import Iterator

from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.languages import language_of_path
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources._files import glob_match, read_text, render_url, walk_files

MAX_BYTES = 1_000_000
SKIPPED_DIRS = ["tests", "test", "__tests__", "vendor", "third_party", "node_modules",
                "site-packages", "__pycache__", "dist", "build", "*.egg-info"]
SKIPPED_FILES = ["test_*.py", "*_test.py", "*_test.go", "conftest.py", "*.test.ts", "*.spec.ts",
                 "*.test.js", "*.spec.js", "*.min.js", "*_pb2.py", "*_pb2_grpc.py"]


def _skipped(rel: str) -> str | None:
    parts = rel.split("/")
    if any(glob_match(p, SKIPPED_DIRS) for p in parts[:-1]):
        return "test or vendored folder"
    if glob_match(parts[-1], SKIPPED_FILES):
        return "test or generated file"
    return None


def module_name(rel: str, package: str | None) -> str:
    """Dotted module name of a Python file: "core/task.py" in flytekit -> "flytekit.core.task"."""
    parts = rel.removesuffix(".pyi").removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if package:
        parts = [*package.split("."), *parts]
    return ".".join(p for p in parts if p)


def load_code(source: SourceConfig, report: LoadReport, *, store: str | None = None) -> Iterator[Document]:
    """Every source file under the root (a folder or an installed package's folder)."""
    root = source.root()
    # a folder that is itself a Python package names its modules after itself
    package = source.package if source.path is None else (root.name if (root / "__init__.py").exists() else None)
    for path, rel in walk_files(root, source.include, source.exclude, report):
        known = language_of_path(rel)
        if known is None:
            continue
        language = known.name
        if source.skip_tests and _skipped(rel):
            report.left_out += 1
            continue
        text = read_text(path, rel, report, max_bytes=MAX_BYTES)
        if text is None:
            continue
        meta = {"language": language, "path": rel}
        if language == "python":
            meta["module"] = module_name(rel, package)
        report.documents += 1
        yield Document(
            source=source.name,
            locator=rel,
            kind="code",
            title=meta.get("module") or rel,
            url=render_url(source.url, rel, path),
            text=text,
            meta=meta,
        )
