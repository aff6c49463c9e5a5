"""Source trees -> one Document per source file, tests, vendored and binary files left out.

Tests and vendored copies would answer "how does X work" with a mock or somebody else's
code; binaries and huge generated files carry no words to retrieve.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator
from pathlib import Path

from flytegpt.ingest.config import ConfigError, SourceConfig
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


_PIN_HELP = ("write the version into the url (.../blob/v1.2.3/{path}#L{start}-L{end}), or read the code "
             "with a git source, whose {commit} pins every link to the commit read")
# A URL naming a branch ("/blob/master/", "/tree/main/"): it moves, the indexed lines do not
_BRANCH_URL = re.compile(r"/(?:blob|tree|-/blob)/(master|main|develop|trunk|HEAD)/")


def source_version(source: SourceConfig) -> str:
    """What `{version}` in a code source's url stands for: the version of the installed
    distribution that holds `package` (flytekit -> "1.16.31", importlib.metadata), or, for a
    `path`, the commit of the git checkout that holds it.

    Line ranges come from the copy read; a link at a branch (`blob/master`) shows other lines
    as soon as the branch moves on, a link at the copy's version shows the lines
    read. A ConfigError that says what to write instead when neither can be known."""
    if source.path is None:
        assert source.package is not None  # the config validator ensures one of them
        version = _distribution_version(source.package, source.root())
        if version is None:
            raise ConfigError(f"source {source.name!r}: url uses {{version}}, but no installed distribution "
                              f"says it provides package {source.package!r}, so its version is unknown: {_PIN_HELP}")
        return version
    commit = _checkout_commit(source.root())
    if commit is None:
        raise ConfigError(f"source {source.name!r}: url uses {{version}}, which for a path is the commit of the git "
                          f"checkout holding it, and {source.path} is not in a git checkout (or git is not "
                          f"installed): {_PIN_HELP}")
    return commit


def _distribution_version(package: str, folder: Path) -> str | None:
    """The version of the distribution that installed `package` (its top-level name, as pip
    names it: flytekit; a namespace package's part: the distribution with files in `folder`)."""
    top = package.split(".", 1)[0]
    try:  # the common case, cheaply: the distribution is named like the package and says it has it
        dist = importlib.metadata.distribution(top)
        if _provides(dist, top):
            return dist.version
    except importlib.metadata.PackageNotFoundError:
        pass
    names = list(dict.fromkeys(importlib.metadata.packages_distributions().get(top, [])))
    dists = [importlib.metadata.distribution(n) for n in names]
    if len(dists) > 1:  # a namespace package (google.cloud.storage): the one whose files are in the folder
        dists = [d for d in dists if any(_under(d, f, folder) for f in d.files or [])]
    versions = {d.version for d in dists}
    return versions.pop() if len(versions) == 1 else None


def _provides(dist: importlib.metadata.Distribution, top: str) -> bool:
    """The distribution installs the top-level package `top` (its top_level.txt, else its files)."""
    listed = dist.read_text("top_level.txt")
    if listed is not None:
        return top in listed.split()
    return any(str(f).split("/", 1)[0] == top for f in dist.files or [])


def _under(dist: importlib.metadata.Distribution, file: importlib.metadata.PackagePath, folder: Path) -> bool:
    try:
        return Path(str(dist.locate_file(file))).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _git(args: list[str], cwd: Path) -> str | None:
    """git's output, or None when git is missing or says no (not a checkout)."""
    from flytegpt.ingest.sources.git import GitSourceError, run_git

    try:
        return run_git(args, cwd)
    except GitSourceError:
        return None


def _checkout_commit(folder: Path) -> str | None:
    """The full sha of HEAD of the git work tree that holds `folder`, None outside one."""
    folder = folder if folder.is_dir() else folder.parent
    sha = _git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], folder)
    return sha if sha and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def _version_notes(source: SourceConfig, version: str | None, report: LoadReport) -> None:
    """What a reader of the links should know: a link at a branch drifts from the lines read; a
    development build's version has no tag; a checkout with local edits is not its commit."""
    where = f"package {source.package!r}" if source.path is None else str(source.path)
    branch = _BRANCH_URL.search(source.url or "")
    if branch and version is None:
        report.note("url", f"links name the branch {branch.group(1)!r}, line ranges come from "
                    f"{where} as read now: once the branch moves on they show other lines; use {{version}} "
                    f"(the {'installed version' if source.path is None else 'checkout commit'}; a git source: "
                    f"{{commit}}) in the url")
    if version is None:
        return
    if source.path is None and re.search(r"\.dev|\+", version):
        report.note("url", f"{{version}} is {version!r}, a development build of {where}: no "
                    f"release tag has that name, so its links may not open; pin a release or use a git source")
    if source.path is not None and _git(["status", "--porcelain", "--untracked-files=no", "--", "."], source.root()):
        report.note("url", f"{source.path} has uncommitted changes: links at commit "
                    f"{version[:12]} may show other lines than the ones indexed")


def load_code(source: SourceConfig, report: LoadReport, *, store: str | None = None) -> Iterator[Document]:
    """Every source file under the root (a folder or an installed package's folder)."""
    root = source.root()
    version = source_version(source) if source.url and "{version}" in source.url else None
    _version_notes(source, version, report)
    template = source.url.replace("{version}", version) if source.url and version else source.url
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
            url=render_url(template, rel, path),
            text=text,
            meta=meta,
        )
