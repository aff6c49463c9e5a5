"""Whatever a source holds, chunking finishes, keeps the text and cites real lines.

Property tests (hypothesis, derandomized): documents built from the sharp edges of Markdown,
reStructuredText and Python (fences left open, headings without text, underlines of any
length, directives, decorators, unbalanced brackets, tabs, CRLF, NUL, emoji, very long lines).
One odd file must never stop an ingest or cite lines its file does not have.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flytegpt.ingest.chunking import chunk_document
from flytegpt.ingest.keyword import tokenize
from flytegpt.ingest.models import Document

PROPERTY = settings(derandomize=True, deadline=None, max_examples=120,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DOC_FRAGMENTS = [
    "\n", "\n\n", "# ", "## ", "###### ", "#", "Title\n=====\n", "Sub\n---\n", "===\n", "-" * 80 + "\n",
    "```\n", "```python\n", "~~~\n", ":::{note}\n", ":::\n", ".. code-block:: python\n\n", ".. note::\n",
    "    indented\n", "\t", "(label)=\n", "{#anchor}", "* item\n", "1. item\n", "| a | b |\n|---|---|\n",
    "name (string)\n", "  default: x\n", "---\ntitle: Front matter\n---\n", "\r\n", "\x00", "😀", "é",
    "`code`", "**bold**", "[link](https://e.org)", "<div>", "x" * 3000, " " * 50,
]
CODE_FRAGMENTS = [
    "\n", "def f(x):\n", "    return x\n", "class A(B):\n", "    '''doc'''\n", '"""module doc"""\n',
    "@task(cache=True)\n", "async def g():\n", "    pass\n", "import os\n", "x = (\n", ")\n", "if True:\n",
    "        deep = 1\n", "\t", "# comment\n", "lambda: 0\n", "print('", "'''", "\\\n", "\x00", "😀",
    "y = 1  # " + "z" * 3000 + "\n",
]


def _text(fragments: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(fragments), st.text(max_size=60)), max_size=120).map("".join)


def _check(doc: Document) -> None:
    chunks = chunk_document(doc)
    lines = doc.text.split("\n")
    for c in chunks:
        assert c.source_id == doc.source_id and c.text.strip() and c.embed_text.strip()
        if c.start_line is not None:
            assert 1 <= c.start_line <= (c.end_line or c.start_line) <= len(lines) + 1, (c.start_line, c.end_line)
        tokenize(c.embed_text)  # the keyword index reads every chunk


@PROPERTY
@given(_text(DOC_FRAGMENTS), st.sampled_from(["md", "rst", "myst", "txt"]))
def test_any_docs_page_chunks(text: str, fmt: str) -> None:
    _check(Document("docs", f"page.{fmt}", "docs", "Page", "https://e.org/page", text, {"format": fmt}))


@PROPERTY
@given(_text(CODE_FRAGMENTS), st.sampled_from(["python", "go", "javascript", ""]))
# found by this test: one statement longer than a chunk, cut in parts, got an outline chunk
# with no text (no docstring, nothing defined)
@example("y = 1  # " + "z" * 3000 + "\n", "python")
def test_any_source_file_chunks_with_real_line_ranges(text: str, language: str) -> None:
    _check(Document("code", "pkg/mod.py", "code", "pkg/mod.py", "https://e.org/mod.py", text,
                    {"language": language}))


@PROPERTY
@given(_text(DOC_FRAGMENTS))
@example("")  # found by this test: a thread of file uploads only became a chunk with no text
@example("question\n\n\n\n\n\n" + "answer " * 2000)
def test_any_slack_thread_chunks(text: str) -> None:
    _check(Document("slack", "general/1.2", "slack", "A thread", "https://e.slack.com/p12", text))


SETTING = st.builds(
    lambda name, typ, underline, body: f"{name} ({typ})\n{underline * max(1, len(name) + len(typ) + 3)}\n\n{body}\n\n",
    st.from_regex(r"[a-z][a-z0-9_.\-]{0,30}", fullmatch=True), st.sampled_from(["string", "int", "bool", "config.Duration",
                                                                               "[]string", "map[string]string", ""]),
    st.sampled_from(["-", "=", "^", "~", '"']), st.one_of(_text(DOC_FRAGMENTS), st.just("Default Value: ``x``")),
)


@PROPERTY
@given(st.lists(SETTING, min_size=15, max_size=60).map("".join), st.sampled_from(["rst", "md"]))
def test_any_generated_configuration_reference_chunks(text: str, fmt: str) -> None:
    # a page of `name (type)` headings is cut per parent setting with key paths (chunking.py)
    _check(Document("docs", f"config.{fmt}", "docs", "Flyte Propeller Configuration", "https://e.org/c", text,
                    {"format": fmt}))
