"""Splitters: heading paths, code blocks, Python structure and line ranges, Slack threads,
and the bundled sample corpus (its config loads, its sample questions point at real chunks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flytegpt.ingest.chunking import DOC_MAX, SLACK_MAX, chunk_document, chunk_documents
from flytegpt.ingest.config import SourceConfig, load_config, sample_config_path
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import FIXTURES as FIXTURE_ROOT, SHARED

FIXTURES = FIXTURE_ROOT / "sources"


def _docs(kind: str, path: Path, **kw) -> dict[str, Document]:
    source = SourceConfig(name="x", kind=kind, path=path, **kw)
    return {d.locator: d for d in load_source(source, LoadReport())}


def _page(text: str, locator: str = "page.md", title: str = "Page") -> Document:
    """A docs Document the way the loader makes it: its title is the page's first heading."""
    return Document("d", locator, "docs", title, "https://docs/page", text, {"format": locator.rsplit(".", 1)[1]})


# --- docs ---------------------------------------------------------------------------------


def test_markdown_heading_paths_and_noise():
    doc = _docs("docs", FIXTURES / "docs")["index.md"]
    chunks = chunk_document(doc)
    assert all(c.source_id == "x:index.md" for c in chunks)
    text = "\n".join(c.text for c in chunks)
    assert "toctree" not in text and ":maxdepth:" not in text and "(home)=" not in text
    assert "front matter" not in text
    assert "the setup guide" in text and "{ref}" not in text
    assert "# not a heading inside code" in text
    for c in chunks:
        assert c.embed_text.startswith(c.title + "\n\n")
        assert c.title.startswith("Welcome")


def test_markdown_sections_become_separate_chunks_when_large():
    body = "word " * 200
    text = f"# Caching\n\nIntro {body}\n\n## Custom hashing\n\n{body}\n\n### Deep\n\n{body}\n\nSetext\n------\n\n{body}\n"
    chunks = chunk_document(_page(text, title="Caching"))
    assert [c.title for c in chunks] == [
        "Caching",  # the page title is not repeated in the heading path
        "Caching > Custom hashing",
        "Caching > Custom hashing > Deep",
        "Caching > Setext",
    ]
    assert chunks[1].embed_text.startswith("Caching > Custom hashing\n\n## Custom hashing\n")


def test_small_sections_are_merged_and_long_ones_split():
    small = "# T\n\n" + "".join(f"## S{i}\n\nshort text {i}.\n\n" for i in range(5))
    assert len(chunk_document(_page(small))) == 1
    long = "# T\n\n## Long\n\n" + "\n\n".join("A sentence about caching and versions. " * 8 for _ in range(12))
    chunks = chunk_document(_page(long, title="T"))
    assert len(chunks) > 2
    assert all(len(c.text) <= DOC_MAX for c in chunks)
    assert all(c.title == "T > Long" for c in chunks[1:])


def test_code_blocks_are_kept_whole():
    code = "```python\n" + "\n".join(f"value_{i} = compute({i})  # step {i}" for i in range(45)) + "\n```"
    assert 1200 < len(code) < DOC_MAX
    text = "# T\n\n## Example\n\n" + "Some intro. " * 40 + "\n\n" + code + "\n\nAfter the code. " * 3
    chunks = chunk_document(_page(text))
    holders = [c for c in chunks if "value_0 =" in c.text]
    assert len(holders) == 1 and "value_44 =" in holders[0].text and holders[0].text.count("```") == 2


def test_rst_heading_paths_code_blocks_and_noise():
    doc = _docs("docs", FIXTURES / "docs")["guide/setup.rst"]
    chunks = chunk_document(doc)
    text = "\n".join(c.text for c in chunks)
    assert "raw html noise" not in text and ".. _setup:" not in text
    assert "`flytekit.FlyteFile`" in text and "a label" in text and ":ref:" not in text
    block = ".. code-block:: python\n\n   def configured():\n       return True"
    assert block in text
    assert "setup --run" in text
    # tiny sections merge; the merged chunk is titled by its first section
    assert chunks[0].title == "Setup"


def test_rst_titles_in_nested_paths():
    body = "text " * 200  # each section is bigger than DOC_MIN, so none is merged
    text = f"Top\n===\n\n{body}\n\nSub\n---\n\n{body}\n\nSubsub\n~~~~~~\n\n{body}\n\nOther\n=====\n\n{body}\n"
    titles = [c.title for c in chunk_document(_page(text, "page.rst", title="Top"))]
    assert titles == ["Top", "Top > Sub", "Top > Sub > Subsub", "Top > Other"]


# --- code ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def core_chunks():
    doc = _docs("code", FIXTURES / "code", url="https://git/{path}#L{start}-L{end}")["pkg/core.py"]
    return doc, chunk_document(doc)


def _code_parts(chunks):
    return [c for c in chunks if not c.title.endswith("(outline)")]


def test_python_split_by_function_and_class_with_exact_lines(core_chunks):
    doc, chunks = core_chunks
    lines = doc.text.split("\n")
    for c in _code_parts(chunks):
        assert c.source_id == "x:pkg/core.py"
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line])
        assert c.url == f"https://git/pkg/core.py#L{c.start_line}-L{c.end_line}"
    # the big class is split into its methods (small neighbours share a chunk), titled module.Class.method
    assert len([c for c in chunks if c.title.startswith("pkg.core.Registry.")]) >= 3
    assert any(c.title == "pkg.core.Registry.summary" for c in chunks)
    for name in ("load", "save", "merge", "summary"):
        holder = next(c for c in chunks if f"def {name}(self" in c.text)
        assert holder.title.startswith("pkg.core.Registry.")
        assert "class Registry:" in holder.embed_text
        assert f'"""{name.title()} the registry' in holder.text  # docstring stays with its def


def test_a_module_of_several_chunks_gets_an_outline_of_what_it_defines(core_chunks):
    doc, chunks = core_chunks
    outline = chunks[0]
    assert outline.title == "pkg.core (outline)"
    assert (outline.start_line, outline.end_line) == (1, len(doc.text.split("\n")))
    assert outline.url == f"https://git/pkg/core.py#L1-L{outline.end_line}"
    assert outline.text.startswith("Core helpers: decorators and a registry")
    assert "def cached_value: Square a number, remembering earlier answers." in outline.text
    assert "class Small: A small class stays in one chunk. (double)" in outline.text
    registry = next(ln for ln in outline.text.split("\n") if ln.startswith("class Registry"))
    assert "load, save, merge" in registry and "__init__" not in registry
    assert [c for c in chunks if c.title.endswith("(outline)")] == [outline]


def test_a_module_of_one_chunk_has_no_outline():
    text = '"""Tiny."""\n\n\ndef one():\n    return 1\n\n\ndef two():\n    return 2\n'
    doc = Document("c", "t.py", "code", "t", "file:///t.py", text, {"language": "python", "module": "t"})
    chunks = chunk_document(doc)
    assert len(chunks) == 1 and chunks[0].title == "t.one, two"


def test_decorators_comments_and_docstrings_stay_with_their_def(core_chunks):
    doc, chunks = core_chunks
    holder = next(c for c in _code_parts(chunks) if "def cached_value" in c.text)
    assert "# A comment that belongs to the decorator below." in holder.text
    assert "@functools.lru_cache(maxsize=None)" in holder.text
    lines = doc.text.split("\n")
    span = lines[holder.start_line - 1 : holder.end_line]
    assert any(ln.startswith("def cached_value") for ln in span)


def test_code_embed_text_has_path_module_and_docstring(core_chunks):
    _, chunks = core_chunks
    for c in chunks:
        assert "pkg/core.py" in c.embed_text
        assert "module pkg.core: Core helpers: decorators and a registry" in c.embed_text
        assert c.embed_text.endswith(c.text)


def test_every_line_of_code_is_in_some_chunk(core_chunks):
    doc, chunks = core_chunks
    covered = set()
    for c in chunks:
        covered.update(range(c.start_line, c.end_line + 1))
    lines = doc.text.split("\n")
    missing = [i for i, ln in enumerate(lines, 1) if ln.strip() and i not in covered]
    assert missing == []


def test_unparsable_python_and_other_languages_use_line_ranges():
    docs = _docs("code", FIXTURES / "code")
    for locator in ("pkg/broken.py", "pkg/sub/util.go"):
        doc = docs[locator]
        lines = doc.text.split("\n")
        chunks = chunk_document(doc)
        assert chunks
        for c in chunks:
            assert c.start_line >= 1 and c.end_line >= c.start_line
            assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line])
        assert "def broken(:" in "".join(c.text for c in chunks) or locator.endswith(".go")


def test_a_large_function_is_split_into_parts_with_its_signature():
    body = "\n".join(f"    total += step_{i}(x)  # a fairly long comment for step number {i}" for i in range(80))
    text = f'"""Mod."""\n\n\ndef big(x):\n    """Docstring."""\n    total = 0\n{body}\n    return total\n'
    doc = Document("c", "m.py", "code", "m", "file:///m.py", text, {"language": "python", "module": "m"})
    chunks = [c for c in _code_parts(chunk_document(doc)) if "step_" in c.text]
    assert len(chunks) > 1
    assert all(c.title.startswith("m.big (part") for c in chunks)
    assert all("def big(x):" in c.embed_text for c in chunks)
    lines = text.split("\n")
    for c in chunks:
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line])


# --- slack --------------------------------------------------------------------------------


def _thread(n: int, size: int) -> Document:
    text = "\n\n".join(f"user{i:03d}: " + ("message words " * (size // 14)) for i in range(n))
    return Document("s", "help/1.0", "slack", "Pods fail", "https://x", text, {"channel": "help"})


def test_a_thread_is_one_chunk():
    [chunk] = chunk_document(_thread(3, 300))
    assert chunk.source_id == "s:help/1.0"
    assert chunk.title == "Pods fail"
    assert chunk.embed_text.startswith("help: Pods fail\n\n")


def test_a_long_thread_is_split_on_message_boundaries():
    doc = _thread(12, 900)
    chunks = chunk_document(doc)
    assert len(chunks) > 1
    assert all(len(c.text) <= SLACK_MAX for c in chunks)
    assert all(c.source_id == "s:help/1.0" for c in chunks)
    question = doc.text.split("\n\n")[0]
    for c in chunks:
        assert c.text.startswith("user")
        assert question[:200] in c.embed_text  # later pieces keep the question as context
    assert "\n\n".join(c.text for c in chunks) == doc.text


# --- the bundled sample corpus --------------------------------------------------------------


def test_sample_config_loads_and_questions_point_at_sample_chunks():
    config = load_config(sample_config_path())
    assert [s.name for s in config.sources] == ["sample-docs", "sample-code", "sample-slack"]
    documents = []
    for source in config.sources:
        report = LoadReport()
        documents.extend(load_source(source, report))
        assert report.skipped == []
    chunks = chunk_documents(documents)
    ids = {c.source_id for c in chunks}
    assert "sample-code:tests/test_cache.py" not in ids
    questions = [json.loads(line) for line in (sample_config_path().parent / "QUESTIONS.jsonl").read_text().splitlines()]
    assert len(questions) >= 3
    for q in questions:
        assert set(q) >= {"id", "question", "gold", "kind"}
        assert set(q["gold"]) <= ids, q["id"]
    everything = "\n".join(c.text for c in chunks)
    assert "has joined the channel" not in everything and "Deployment v1.2.3" not in everything


@pytest.mark.skipif(not (SHARED / "eval" / "flytegpt.eval.toml").exists(), reason="../shared is not present")
def test_eval_config_loads_and_every_source_yields_documents():
    config = load_config(SHARED / "eval" / "flytegpt.eval.toml")
    for source in config.sources:
        report = LoadReport()
        n = 0
        for doc in load_source(source, report):
            n += 1
            assert doc.source_id.startswith(source.name + ":")
            assert not doc.locator.endswith(("SOURCE.md", "LICENSE"))
            if n >= 20:
                break
        assert n > 0, source.name
