"""Splitters: heading paths, code blocks, Python structure and line ranges, Slack threads,
and the bundled sample corpus (its config loads, its sample questions point at real chunks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flytegpt.ingest.chunking import (
    DOC_MAX,
    OUTLINE_MAX,
    REFERENCE_TARGET,
    SLACK_MAX,
    chunk_document,
    chunk_documents,
    is_evidence,
    is_outline,
    is_title,
)
from flytegpt.ingest.config import SourceConfig, load_config, sample_config_path
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import FIXTURES as FIXTURE_ROOT, SHARED

FIXTURES = FIXTURE_ROOT / "sources"


def _docs(kind: str, path: Path, **kw) -> dict[str, Document]:
    source = SourceConfig(name="x", kind=kind, path=path, **kw)
    return {d.locator: d for d in load_source(source, LoadReport())}


def _passages(chunks):
    """The chunks to quote: a docs page's outline and title are evidence for search, not passages."""
    return [c for c in chunks if not is_evidence(c)]


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
        assert c.embed_text.startswith(c.title + "\n\n") or is_title(c)
        assert c.title.startswith("Welcome")


def test_myst_eval_rst_blocks_are_read_as_restructured_text():
    """Flyte's MyST pages open with an `{eval-rst}` block of `.. tags::`: it was kept as a code
    block, so a page's first passage (what the offline answer quotes first) was its tag list."""
    text = ("# Customizing task resources\n\n```{eval-rst}\n.. tags:: Deployment, Infrastructure, Basic\n```\n\n"
            "Flytekit lets you declare CPU and memory requests close to the task.\n\n"
            "```{eval-rst}\n.. note::\n\n   Limits are enforced by Kubernetes.\n\n"
            ".. code-block:: python\n\n   @task(requests=Resources(cpu=\"1\"))\n   def t(): ...\n```\n")
    chunks = _passages(chunk_document(_page(text, title="Customizing task resources")))
    body = "\n".join(c.text for c in chunks)
    assert "tags" not in body and "Infrastructure" not in body and "eval-rst" not in body
    assert "Limits are enforced by Kubernetes." in body and ".. note::" not in body
    assert "@task(requests=Resources(cpu=\"1\"))" in body


def test_markdown_sections_become_separate_chunks_when_large():
    body = "word " * 200
    text = f"# Caching\n\nIntro {body}\n\n## Custom hashing\n\n{body}\n\n### Deep\n\n{body}\n\nSetext\n------\n\n{body}\n"
    chunks = _passages(chunk_document(_page(text, title="Caching")))
    assert [c.title for c in chunks] == [
        "Caching",  # the page title is not repeated in the heading path
        "Caching > Custom hashing",
        "Caching > Custom hashing > Deep",
        "Caching > Setext",
    ]
    assert chunks[1].embed_text.startswith("Caching > Custom hashing\n\n## Custom hashing\n")


def test_small_sections_are_merged_and_long_ones_split():
    small = "# T\n\n" + "".join(f"## S{i}\n\nshort text {i}.\n\n" for i in range(5))
    assert len(_passages(chunk_document(_page(small)))) == 1
    long = "# T\n\n## Long\n\n" + "\n\n".join("A sentence about caching and versions. " * 8 for _ in range(12))
    chunks = _passages(chunk_document(_page(long, title="T")))
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
    titles = [c.title for c in _passages(chunk_document(_page(text, "page.rst", title="Top")))]
    assert titles == ["Top", "Top > Sub", "Top > Sub > Subsub", "Top > Other"]


def test_a_page_gets_an_outline_of_its_title_first_paragraph_and_headings():
    body = "word " * 200
    text = (f"# Shell tasks\n\nRun bash scripts in a workflow with ShellTask.\n\n{body}\n\n"
            f"## Define a task\n\n{body}\n\n### Outputs\n\n{body}\n")
    chunks = chunk_document(_page(text, title="Shell tasks"))
    outlines = [c for c in chunks if is_outline(c)]
    assert len(outlines) == 1 and chunks[-2] is outlines[0]
    assert outlines[0].title == "Shell tasks (outline)"
    assert outlines[0].text.split("\n") == [
        "Shell tasks", "Run bash scripts in a workflow with ShellTask.", "Define a task", "Define a task > Outputs"]
    assert outlines[0].source_id == chunks[0].source_id
    assert not any(is_outline(c) for c in chunks[:-2])


def test_a_page_of_fifty_thousand_headings_gets_an_outline_of_bounded_size():
    """A generated page with a heading per entry: the outline is cut at its size (it once looked
    every heading up in a list, 24 s for such a page), and every section is still a passage."""
    text = "# Huge\n\nA generated reference of every entry and its value.\n\n" + "".join(f"## entry{i}\n\nvalue {i}\n\n" for i in range(50_000))
    chunks = chunk_document(_page(text, title="Huge"))
    outlines = [c for c in chunks if is_outline(c)]
    assert len(outlines) == 1 and len(outlines[0].text) <= OUTLINE_MAX
    assert outlines[0].text.startswith("Huge\nA generated reference of every entry and its value.\nentry0\nentry1\n")
    passages = "\n".join(c.text for c in _passages(chunks))
    assert "entry49999" in passages and "value 49999" in passages


def test_a_page_gets_a_title_chunk_that_is_its_title_alone():
    """The title's own vector scores the page for short questions (search.py); it is evidence, never quoted."""
    chunks = chunk_document(_page("# Raw  containers\n\nRun any image as a task.\n", title="Raw  containers"))
    (title,) = [c for c in chunks if is_title(c)]
    assert chunks[-1] is title and is_evidence(title) and not is_outline(title)
    assert title.title == "Raw containers (title)" and title.text == title.embed_text == "Raw containers"
    assert title.source_id == chunks[0].source_id and len(_passages(chunks)) == 1
    assert not [c for c in chunk_document(_page("", title="Empty")) if is_title(c)]  # no text: nothing to title


def _reference_page(n: int = 24) -> str:
    """A generated configuration reference in the layout Flyte's config docs use."""
    rule = lambda ch: ch * 40  # noqa: E731
    out = ["#" * 30, "Flyte Propeller Configuration", "#" * 30, "", "- `propeller <#section-propeller>`_", ""]
    out += ["Section: propeller", rule("="), ""]
    for i in range(n):
        out += [f"setting-{i} (int)", rule("-"), "", f"Description of setting {i}.", "",
                "**Default Value**: ", "", ".. code-block:: yaml", "", f'  "{i}"', ""]
    out += ["kube-client-config (`config.KubeClientConfig`_)", rule("-"), "", "Configuration to control the Kubernetes client", ""]
    out += ["config.KubeClientConfig", rule("^"), "", "qps (float32)", rule('"'), "", "Max queries per second to the kube apiserver.", "",
            "**Default Value**: ", "", ".. code-block:: yaml", "", '  "100"', ""]
    return "\n".join(out)


def test_a_configuration_reference_is_split_by_setting_with_key_paths():
    doc = _page(_reference_page(), "generated/flytepropeller_config.rst", title="Flyte Propeller Configuration")
    chunks = chunk_document(doc)
    entries = [c for c in chunks if "propeller: " in c.title]
    # settings of one parent share a chunk up to a small size, each named in its title
    assert len(entries) > 3 and all(len(c.text) <= 2 * REFERENCE_TARGET for c in entries)
    holder = next(c for c in entries if "setting-7," in c.title + ",")
    assert holder.title.startswith("Flyte Propeller Configuration > propeller: ")
    assert "Description of setting 7." in holder.text and '"7"' in holder.text
    assert "propeller.setting-7" in holder.embed_text
    assert not any("Description of setting 7." in c.text for c in chunks if c is not holder)
    # a type's field list continues the key path of the field that uses the type
    qps = next(c for c in chunks if "Max queries per second" in c.text)
    assert qps.title == "Flyte Propeller Configuration > propeller.kube-client-config: qps"
    assert "propeller.kube-client-config.qps" in qps.embed_text
    assert all(c.source_id == doc.source_id for c in chunks)
    assert not any(is_outline(c) for c in chunks)


def test_a_page_with_a_few_setting_like_headings_is_prose():
    text = "# Tuning\n\n" + "".join(f"## workers (int)\n\nabout workers {i}.\n\n" for i in range(3))
    chunks = chunk_document(_page(text, title="Tuning"))
    assert [c.title for c in chunks] == ["Tuning", "Tuning (outline)", "Tuning (title)"]


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


def test_python_nested_deeper_than_the_parser_falls_back_to_line_ranges():
    """ast.parse raises RecursionError on deeply nested generated code: one file must not end an ingest."""
    text = "def ok():\n    return 1\n\nx = " + "(" * 5000 + "1" + ")" * 5000 + "\n"
    doc = Document("c", "gen.py", "code", "gen.py", "", text, {"language": "python"})
    chunks = chunk_document(doc)
    assert chunks and "def ok():" in chunks[0].text
    assert sum(len(c.text) for c in chunks) < 2 * len(text)


def test_one_long_line_is_cut_into_pieces_not_repeated_in_each():
    """A minified or generated file is one long line: each piece grown back to its whole line
    held the whole file, 400 times for 400 KB (160 MB of chunk text)."""
    text = "x = " + "+".join(["a"] * 100_000) + "\n"
    for language, locator in (("python", "chain.py"), ("javascript", "bundle.min.js")):
        chunks = chunk_document(Document("c", locator, "code", locator, "", text, {"language": language}))
        assert len(chunks) > 10
        assert sum(len(c.text) for c in chunks) <= len(text) + len(chunks)
        assert max(len(c.embed_text) for c in chunks) < 2000


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


def test_one_language_table_for_loading_and_splitting_code():
    from langchain_text_splitters import Language as SplitterLanguage

    from flytegpt.ingest.languages import LANGUAGES, language_of_path

    for lang in LANGUAGES:
        assert lang.splitter is None or SplitterLanguage[lang.splitter]
    assert language_of_path("src/app.JSX").name == "javascript" and language_of_path("README.md") is None
    text = "function a() {\n  return 1;\n}\n\n" * 120
    doc = Document("c", "web/app.js", "code", "app.js", "https://git/{path}#L{start}-L{end}", text, {"language": "javascript"})
    chunks = chunk_document(doc)
    assert len(chunks) > 1 and all(c.text.startswith("function a()") for c in chunks)
