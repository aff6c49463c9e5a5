"""A docs chunk's title (what the model reads and the user's citation shows) and its link name the
section that holds the chunk's text, not only the section its first lines come from.

Packing fills chunks to ~1,500 characters, so a chunk can open with the last lines of one section
and then hold the whole next one; it used to be titled and linked by the first."""

from __future__ import annotations

import pytest

from flytegpt.ingest.chunking import chunk_document, is_evidence
from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import SHARED

URL = "https://github.com/org/repo/blob/0123abc/docs/page.md"  # GitHub renders it: sections get anchors


def _paragraph(word: str, size: int) -> str:
    text = " ".join(f"{word}{i}" for i in range(size))
    return text[:size].rsplit(" ", 1)[0] + "."


def _chunks(text: str) -> list:
    doc = Document("d", "page.md", "docs", "Page", URL, text, {"format": "md"})
    return [c for c in chunk_document(doc) if not is_evidence(c)]


def _holding(chunks, words: str):
    (chunk,) = [c for c in chunks if words in c.text]
    return chunk


def test_a_chunk_holding_mostly_a_second_section_is_titled_and_linked_by_it():
    tail = _paragraph("denied", 120)
    text = "\n\n".join([
        "# Page", "## Access denied",
        _paragraph("alpha", 480), _paragraph("beta", 480), _paragraph("gamma", 480), tail,
        "## Fake certificate", _paragraph("tls", 600), _paragraph("insecure", 400),
    ])
    chunks = _chunks(text)
    chunk = _holding(chunks, "tls0")
    assert chunk.text.startswith(tail)  # it opens with the other section's last lines ...
    assert chunk.title == "Page > Fake certificate"  # ... but is named by the one it mostly holds
    assert chunk.url == URL + "#fake-certificate"  # and links to it
    assert "Access denied" not in chunk.title


def test_a_chunk_of_one_section_keeps_its_title_and_link():
    text = "\n\n".join([
        "# Page", "## Install", _paragraph("pip", 1000), "## Use", _paragraph("run", 1000),
    ])
    chunk = _holding(_chunks(text), "run0")
    assert chunk.title == "Page > Use" and chunk.url == URL + "#use"
    assert chunk.embed_text == f"Page > Use\n\n{chunk.text}"


def test_a_chunk_of_a_sections_intro_and_mostly_its_subsection_is_named_by_the_subsection():
    """Its first heading opens the chunk, but the text is about the subsection (a page's intro and 96%
    "Error: Cannot connect to the Docker daemon" was titled "Debugging common execution errors")."""
    text = "\n\n".join([
        "# Page", "## Install", _paragraph("pip", 1500),
        "## Setup", _paragraph("intro", 300), "### Requirements", _paragraph("python", 900),
    ])
    chunk = _holding(_chunks(text), "python0")
    assert chunk.text.startswith("## Setup")
    assert chunk.title == "Page > Setup > Requirements" and chunk.url == URL + "#requirements"


def test_a_chunk_mostly_of_its_sections_own_text_keeps_that_heading():
    text = "\n\n".join([
        "# Page", "## Install", _paragraph("pip", 1500),
        "## Setup", _paragraph("intro", 900), "### Requirements", _paragraph("python", 300),
    ])
    chunk = _holding(_chunks(text), "python0")
    assert chunk.text.startswith("## Setup")
    assert chunk.title == "Page > Setup" and chunk.url == URL + "#setup"


def test_a_chunk_spread_over_sibling_sections_is_named_by_their_parent():
    text = "\n\n".join([
        "# Page", "## Steps", _paragraph("intro", 200),
        "### One", _paragraph("first", 600), _paragraph("second", 600), _paragraph("last", 300),
        "### Two", _paragraph("deux", 300), "### Three", _paragraph("trois", 300),
    ])
    chunk = _holding(_chunks(text), "deux0")
    assert chunk.text.startswith("last0")  # the tail of "One", then all of "Two" and "Three"
    assert chunk.title == "Page > Steps"  # none of the three holds most of it; their parent does
    assert chunk.url == URL + "#steps"  # its heading is in the chunk before: the link still reaches it


def test_the_chunk_is_embedded_under_the_title_it_is_cited_by():
    """What is searched names the section the text is about, as the citation does."""
    text = "\n\n".join([
        "# Page", "## Access denied",
        _paragraph("alpha", 480), _paragraph("beta", 480), _paragraph("gamma", 480), _paragraph("denied", 120),
        "## Fake certificate", _paragraph("tls", 1000),
    ])
    chunk = _holding(_chunks(text), "tls0")
    assert chunk.title == "Page > Fake certificate"
    assert chunk.embed_text == f"Page > Fake certificate\n\n{chunk.text}"


@pytest.mark.skipif(not (SHARED / "corpus" / "flyte-docs" / "community" / "troubleshoot.rst").exists(),
                    reason="../shared is not present")
def test_the_x509_fix_in_the_troubleshooting_guide_is_cited_as_the_x509_section():
    base = "https://github.com/flyteorg/flyte/blob/89cf9cc73611406a7659177054eb09696d766578/docs/community/"
    source = SourceConfig(name="flyte-docs", kind="docs", path=SHARED / "corpus" / "flyte-docs" / "community",
                          include=["troubleshoot.rst"], url=base + "{path}")
    (doc,) = list(load_source(source, LoadReport()))
    chunk = _holding([c for c in chunk_document(doc) if not is_evidence(c)], "separateGrpcIngress")
    assert "flyte-the-hard-way" in chunk.text.split("\n\n", 1)[0]  # it opens with the AccessDenied section's tail
    assert "AccessDenied" not in chunk.title and chunk.embed_text.startswith(chunk.title)
    assert chunk.title.endswith('x509: "Kubernetes Ingress Controller Fake Certificate" certificate is not trusted" '
                                "when deploying flyte-core to your own kubernetes cluster")
    assert chunk.url.startswith(base + "troubleshoot.rst#authentication-handshake-failed-x509-")
