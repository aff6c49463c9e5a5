"""Documentation trees (Markdown, MDX, MyST, reStructuredText) -> one Document per page.

What is not a page is not read, and the report says so: files of other types are counted by
type (a docs folder's 234 `.html` API pages are "not read", not silently gone), and build
output, dependencies and Sphinx's theme folders are left out like an exclude rule would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from fnmatch import fnmatch

from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.doc_sections import detect_format, front_matter, page_title, strip_front_matter
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources._files import glob_match, read_text, render_url, walk_files

DOC_EXTENSIONS = {".md": "md", ".mdx": "mdx", ".markdown": "md", ".myst": "myst", ".rst": "rst", ".txt": "txt"}
MAX_BYTES = 2_000_000  # bigger "pages" are generated dumps, not documentation

# Folders that hold no page of the project's own: dependencies (a Docusaurus `website/` keeps
# thousands of package READMEs in node_modules), build output (Docusaurus `build/`, Sphinx
# `_build/`, whose `_sources/*.txt` copy every page) and Sphinx's `_static` (CSS, robots.txt) and
# `_templates` (Jinja `.rst` templates). Left out and counted; an `include` that names such a
# folder reads it anyway.
SKIPPED_DIRS = ["node_modules", "bower_components", "site-packages", "__pycache__", "*.egg-info",
                "build", "_build", "dist", "_static", "_templates"]
# Only at the top of the source: deeper down, "build" and "dist" are as likely a section of the
# docs ("deployment/build/...") as output.
_TOP_ONLY = {"build", "dist"}
# `.txt` files that are not prose: dependency lists, crawler rules, build files, licences.
# Other `.txt` files are pages (a plain-text docs page is read as Markdown).
NOT_PROSE_TXT = ["requirements*.txt", "*-requirements.txt", "*_requirements.txt", "constraints*.txt",
                 "robots.txt", "humans.txt", "security.txt", "ads.txt", "cmakelists.txt",
                 "runtime.txt", "license*", "licence*", "copying*", "notice*", "third_party*", "third-party*"]
_TYPES_SHOWN = 8  # file types named in a report, the most frequent first


def load_docs(source: SourceConfig, report: LoadReport, *, store: str | None = None) -> Iterator[Document]:
    """Every prose page under the source root that the include/exclude globs admit."""
    root = source.root()
    other: Counter[str] = Counter()
    by_default: Counter[str] = Counter()
    for path, rel in walk_files(root, source.include, source.exclude, report):
        why = _left_out(rel, source.include)
        if why:
            report.left_out += 1
            by_default[why] += 1
            continue
        fmt = DOC_EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            other[_file_type(rel)] += 1
            continue
        text = read_text(path, rel, report, max_bytes=MAX_BYTES)
        if text is None:
            continue
        page_format = detect_format(rel)  # (read_text drops a byte-order mark)
        meta = front_matter(text) if page_format != "rst" else {}
        if page_format != "rst" and not strip_front_matter(text).strip() and not meta.get("description"):
            report.skip(rel, "only front matter, no text")
            continue
        title = page_title(text, page_format) or _name_of(rel)
        report.documents += 1
        yield Document(
            source=source.name,
            locator=rel,
            kind="docs",
            title=title,
            url=render_url(source.url, rel, path, meta),
            text=text,
            meta={"format": fmt},
        )
    if by_default:  # "left out by rules" counts them with the config's own excludes: say which
        shown = ", ".join(f"{n} in {why}" for why, n in by_default.most_common(_TYPES_SHOWN))
        report.note(f"{sum(by_default.values())} files left out by default",
                    f"{shown} (an include naming the folder reads it)")
    if other and report.documents:  # without any page, the "no documents" message names them
        report.note(f"{sum(other.values())} files of other types", f"not read: {describe_types(other)} "
                    f"(a docs source reads {readable_types()})")


# pages a folder is served by: without a heading, such a page is named after its folder
_FOLDER_PAGE_STEMS = ("readme", "index", "_index")


def _name_of(rel: str) -> str:
    """A title for a page with no heading: its file's name ("setup_guide.md" -> "setup guide"),
    or for a README/index page its folder's ("examples/basics/README.md" -> "basics"), which says
    what the page is about where "README" does not."""
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    if stem.lower() in _FOLDER_PAGE_STEMS and folder:
        stem = folder.rsplit("/", 1)[-1]
    return stem.replace("_", " ")


def _left_out(rel: str, include: list[str]) -> str | None:
    """Why a file is left out by default ("node_modules/", "non-prose .txt files"): a file in a
    dependency or build folder, or a `.txt` that is not prose. None: read it."""
    parts = rel.split("/")
    for depth, folder in enumerate(parts[:-1]):
        if depth and folder in _TOP_ONLY:
            continue
        if glob_match(folder, SKIPPED_DIRS) and not any(folder in pattern for pattern in include):
            return f"{folder}/"
    name = parts[-1].lower()
    if name.endswith(".txt") and any(fnmatch(name, pattern) for pattern in NOT_PROSE_TXT):
        return "non-prose .txt files"
    return None


def _file_type(rel: str) -> str:
    """A file's extension (".html"), or its name when it has none ("Makefile")."""
    name = rel.rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return f".{ext.lower()}" if dot and stem else name


def describe_types(counts: Counter[str]) -> str:
    """"234 .html, 49 .png, 2 more types" for file counts by type."""
    shown = [f"{n} {kind}" for kind, n in counts.most_common(_TYPES_SHOWN)]
    rest = len(counts) - _TYPES_SHOWN
    return ", ".join(shown + ([f"{rest} more types"] if rest > 0 else []))


def readable_types() -> str:
    return ", ".join(DOC_EXTENSIONS)


def unread_files(source: SourceConfig) -> tuple[Counter[str], int]:
    """(files by type that the source's include/exclude admit but that are not pages, files in
    folders or of names a docs source leaves out by default): why a docs source found no
    document, for its "no documents" message."""
    other: Counter[str] = Counter()
    left_out = 0
    for path, rel in walk_files(source.root(), source.include, source.exclude, LoadReport()):
        if _left_out(rel, source.include):
            left_out += 1
        elif path.suffix.lower() not in DOC_EXTENSIONS:
            other[_file_type(rel)] += 1
    return other, left_out
