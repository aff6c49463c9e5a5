"""Documentation trees (Markdown, MyST, reStructuredText) -> one Document per page."""

from __future__ import annotations

from collections.abc import Iterator

from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.doc_sections import detect_format, page_title
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources._files import read_text, render_url, walk_files

DOC_EXTENSIONS = {".md": "md", ".markdown": "md", ".myst": "myst", ".rst": "rst", ".txt": "txt"}
MAX_BYTES = 2_000_000  # bigger "pages" are generated dumps, not documentation


def load_docs(source: SourceConfig, report: LoadReport, *, store: str | None = None) -> Iterator[Document]:
    """Every prose page under the source root that the include/exclude globs admit."""
    root = source.root()
    for path, rel in walk_files(root, source.include, source.exclude, report):
        fmt = DOC_EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            continue
        text = read_text(path, rel, report, max_bytes=MAX_BYTES)
        if text is None:
            continue
        title = page_title(text, detect_format(rel)) or path.stem.replace("_", " ")
        report.documents += 1
        yield Document(
            source=source.name,
            locator=rel,
            kind="docs",
            title=title,
            url=render_url(source.url, rel, path),
            text=text,
            meta={"format": fmt},
        )
