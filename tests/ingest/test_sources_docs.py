"""Docs loader: formats, titles, URLs and include/exclude globs."""

from __future__ import annotations


from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import FIXTURES

FIXTURE = FIXTURES / "sources" / "docs"


def _load(**kw):
    source = SourceConfig(name="d", kind="docs", path=FIXTURE, **kw)
    report = LoadReport()
    return {d.locator: d for d in load_source(source, report)}, report


def test_prose_files_only_with_their_format():
    docs, report = _load()
    assert set(docs) == {"index.md", "guide/setup.rst", "nested/notes.txt", "nested/page.markdown",
                         "SOURCE.md", "nested/SOURCE.md"}
    assert docs["index.md"].meta["format"] == "md"
    assert docs["guide/setup.rst"].meta["format"] == "rst"
    assert docs["nested/notes.txt"].meta["format"] == "txt"
    assert docs["index.md"].kind == "docs"
    assert report.documents == len(docs)


def test_exclude_matches_basenames_at_any_depth():
    docs, _ = _load(exclude=["SOURCE.md", "LICENSE"])
    assert "SOURCE.md" not in docs and "nested/SOURCE.md" not in docs
    assert "index.md" in docs


def test_exclude_a_folder_and_include_globs():
    docs, _ = _load(exclude=["nested"])
    assert set(docs) == {"index.md", "guide/setup.rst", "SOURCE.md"}
    docs, _ = _load(include=["guide/*"])
    assert set(docs) == {"guide/setup.rst"}
    docs, _ = _load(include=["*.rst", "index.md"])
    assert set(docs) == {"guide/setup.rst", "index.md"}


def test_title_is_the_first_heading():
    docs, _ = _load()
    assert docs["index.md"].title == "Welcome"  # not the front matter
    assert docs["guide/setup.rst"].title == "Setup"  # overlined RST title
    assert docs["nested/notes.txt"].title == "notes"  # no heading: the file stem


def test_url_template_and_file_fallback():
    docs, _ = _load(url="https://docs.example.org/src/{path}")
    assert docs["guide/setup.rst"].url == "https://docs.example.org/src/guide/setup.rst"
    docs, _ = _load()
    assert docs["guide/setup.rst"].url == (FIXTURE / "guide" / "setup.rst").resolve().as_uri()
