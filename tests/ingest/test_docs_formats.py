"""Docs sites other than Flyte's (such as a Docusaurus site adopting FlyteGPT): front-matter
titles, MDX/JSX and admonitions, .mdx pages, what is not read and why, dependency and build
folders, split code blocks, byte-order marks, front-matter-only pages and non-prose .txt files.

Each test looks at what a user sees: chunk titles and texts from the real loader and chunker,
and the text of `flytegpt ingest --dry-run`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.bot.slack.render import markdown_to_mrkdwn
from flytegpt.ingest.chunking import DOC_MAX, chunk_document, is_evidence
from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import FIXTURES

SITE = FIXTURES / "docs_formats" / "site"
HTML_ONLY = FIXTURES / "docs_formats" / "html-only"
ENV = {"FLYTEGPT_CONFIG": None, "COLUMNS": "300", "OPENAI_API_KEY": None}


def _load(path: Path = SITE, **kw) -> tuple[dict[str, Document], LoadReport]:
    report = LoadReport()
    docs = {d.locator: d for d in load_source(SourceConfig(name="site", kind="docs", path=path, **kw), report)}
    return docs, report


def _passages(doc: Document):
    return [c for c in chunk_document(doc) if not is_evidence(c)]


def _text(doc: Document) -> str:
    return "\n\n".join(c.text for c in _passages(doc))


def _page(text: str, locator: str = "page.md", title: str = "Page") -> Document:
    return Document("d", locator, "docs", title, "https://docs/page", text, {"format": locator.rsplit(".", 1)[1]})


def _dry_run(tmp_path: Path, body: str):
    config = tmp_path / "flytegpt.toml"
    config.write_text(body)
    result = CliRunner().invoke(main, ["ingest", "--config", str(config), "--dry-run"], env=ENV)
    assert "Traceback" not in result.output
    return result, " ".join(result.output.split())


@pytest.fixture()
def website(tmp_path: Path) -> Path:
    """The fixture site with what a Docusaurus `website/` or a Sphinx `docs/` also holds:
    dependencies, build output, Sphinx's copies of the page sources (made here: .gitignore
    keeps `build/` folders out of the repository)."""
    root = tmp_path / "website"
    shutil.copytree(SITE, root)
    for rel, text in {
        "node_modules/left-pad/README.md": "# left-pad\n\nA dependency's README.\n",
        "node_modules/@docusaurus/core/CHANGELOG.md": "# Changelog\n\n## 3.0.0\n\nMany changes.\n",
        "build/docs/getting-started.md": "# Built copy\n\nA duplicate of a page.\n",
        "_build/html/_sources/getting-started.md.txt": "Sphinx keeps a copy of every page here.\n",
        "_templates/autosummary/class.rst": "{{ fullname | escape | underline }}\n\n.. autoclass:: {{ objname }}\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --- front matter titles -------------------------------------------------------------------


def test_front_matter_title_names_a_page_without_an_h1_and_its_chunks():
    docs, _ = _load()
    page = docs["getting-started.md"]
    assert page.title == "Quickstart guide for Widgets"  # not "Prerequisites", its first heading (an h4)
    titles = [c.title for c in chunk_document(page)]
    assert titles[0] == "Quickstart guide for Widgets"
    assert "Quickstart guide for Widgets (title)" in titles
    assert all(t.startswith("Quickstart guide for Widgets") for t in titles)


def test_sidebar_label_is_the_title_when_there_is_no_title():
    docs, _ = _load()
    page = docs["sidebar-only.md"]
    assert page.title == "Rotating tokens"
    assert [c.title for c in _passages(page)] == ["Rotating tokens > Before you start"]


def test_a_page_that_opens_with_an_h1_keeps_it_as_its_title():
    """What the reader sees at the top (Docusaurus shows the H1, not the front matter title)."""
    docs, _ = _load()
    assert docs["with-h1.md"].title == "Shown heading"
    assert docs["webhooks.mdx"].title == "Receiving webhooks"  # no H1: the front matter


def test_myst_front_matter_without_a_title_keeps_the_first_heading(tmp_path: Path):
    """Flyte's MyST notebooks open with jupytext/kernelspec front matter: unchanged."""
    (tmp_path / "optimizing.md").write_text(
        "---\njupytext:\n  formats: md:myst\nkernelspec:\n  display_name: Python 3\n  name: python3\n---\n\n"
        "(getting_started_optimizing)=\n\n# Optimizing tasks\n\nThere are many ways to optimize tasks.\n"
    )
    docs, _ = _load(tmp_path)
    page = docs["optimizing.md"]
    assert page.title == "Optimizing tasks"
    text = _text(page)
    assert "kernelspec" not in text and "python3" not in text and "There are many ways" in text


# --- MDX, JSX and admonitions -----------------------------------------------------------


def test_mdx_imports_jsx_tags_and_comments_are_not_in_the_indexed_text():
    docs, _ = _load()
    text = _text(docs["getting-started.md"])
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for noise in ("import Tabs", "import TabItem", "<Tabs", "</Tabs>", "<TabItem value=\"cli\"", "</TabItem>",
                  "<details>", "<summary>", "</details>", "<div className", "{/*", "a note for the docs authors"):
        assert noise not in prose, noise
    # the words inside the components stay, a tab's label as a line of its own
    assert "Widgets CLI:\n\nScaffold a project with the starter template:" in text
    assert "Terminal:\n\nClone the template repository instead:" in text
    assert "Why a virtual environment?" in text and "It keeps the app's packages apart" in text
    assert "Tokens are per app, not per workspace." in text


def test_code_fences_and_inline_code_are_never_touched():
    docs, _ = _load()
    text = _text(docs["getting-started.md"])
    assert ("```jsx\nimport Tabs from '@theme/Tabs';\nexport const answer = 42;\n"
            "<div className=\"kept\">{/* code is never touched */}</div>\n```") in text
    assert "`<TabItem value=\"x\">` and `List<String>`; a placeholder <your-app-id> stays." in text


def test_docusaurus_admonitions_read_as_their_kind_and_title():
    docs, _ = _load()
    text = _text(docs["getting-started.md"])
    assert "Tip: Reference for readers\n\nLooking for the long version?" in text
    assert "Note: The CLI reads `WIDGETS_TOKEN` from the environment." in text
    assert "tip[" not in text and ":::" not in text
    assert "Warning: Rotating the secret\n\nRestart the app" in _text(docs["webhooks.mdx"])


def test_nested_admonitions_and_titles_with_links():
    text = _text(_page(
        "# T\n\n::::tip[Outer with [a link](https://e.org/x) in it]\nOuter body.\n:::danger\nInner body.\n:::\n::::\n"
    ))
    assert "Tip: Outer with [a link](https://e.org/x) in it\n\nOuter body.\n\nDanger: Inner body." in text


def test_myst_colon_fences_read_as_before():
    text = _text(_page(
        "# T\n\n:::{note}\nMyST note body.\n:::\n\n:::{admonition} Custom title\n:class: tip\nBody.\n:::\n\n"
        ":::{figure} img.png\n:alt: x\nA caption.\n:::\n"
    ))
    assert text == "# T\n\nMyST note body.\n\nCustom title\n\nBody.\n\nA caption."


def test_slack_shows_no_escaped_jsx_in_a_quoted_passage():
    docs, _ = _load()
    shown = markdown_to_mrkdwn("\n\n".join(c.text for c in _passages(docs["getting-started.md"])))
    for markup in ("&lt;Tabs", "&lt;TabItem value=\"cli\"", "&lt;/TabItem", "&lt;details", "&lt;div className=\"alert"):
        assert markup not in shown, markup
    assert "Widgets CLI:" in shown


def test_a_jsx_component_with_nested_props_goes_whole():
    text = _text(_page(
        "# T\n\nBefore.\n\n<Guide\n  steps={[\n    {title: 'Install', commands: {macos: 'a > b'}},\n  ]}\n"
        "  buttonText=\"View sample\"\n/>\n\nAfter.\n"
    ))
    assert text == "# T\n\nBefore.\n\nAfter."


def test_generic_types_and_placeholders_in_prose_stay():
    text = _text(_page("# T\n\nIt returns a Promise<Response> and takes <project> and <YOUR_TOKEN>.\n"))
    assert "Promise<Response>" in text and "<project>" in text and "<YOUR_TOKEN>" in text


# --- .mdx pages, files that are not read ----------------------------------------------------


def test_mdx_pages_are_read_as_markdown():
    docs, _ = _load()
    assert docs["webhooks.mdx"].meta["format"] == "mdx"
    assert "Every incoming webhook is verified" in _text(docs["webhooks.mdx"])
    docs, _ = _load(include=["*.mdx"])
    assert set(docs) == {"webhooks.mdx"}


def test_the_dry_run_names_the_file_types_it_did_not_read(tmp_path: Path):
    result, out = _dry_run(tmp_path, f'[[sources]]\nname = "site"\nkind = "docs"\npath = "{SITE}"\n')
    assert result.exit_code == 0, result.output
    assert "note site: 3 files of other types: not read: 2 .html, 1 .png" in out


def test_no_documents_names_the_types_it_found(tmp_path: Path):
    result, out = _dry_run(tmp_path, f'[[sources]]\nname = "h"\nkind = "docs"\npath = "{HTML_ONLY}"\n')
    assert result.exit_code == 1
    assert ("no documents: found 3 files, none of a page type (2 .html, 1 .ipynb); "
            "a docs source reads .md, .mdx, .markdown, .myst, .rst, .txt") in out
    assert "check its path" not in out


# --- dependency and build folders --------------------------------------------------------


def test_dependency_and_build_folders_are_left_out_and_counted(website: Path, tmp_path: Path):
    docs, report = _load(website)
    assert not [d for d in docs if d.split("/")[0] in ("node_modules", "build", "_build", "_templates")]
    assert "guides/build-a-widget.md" in docs  # "build" in a file name is no build folder
    assert report.left_out == 5 + 3  # the five above, and requirements, constraints and robots.txt
    # and which default says so (a bare "left out by rules: 8" named no rule)
    note = dict(report.notes)["8 files left out by default"]
    assert "2 in non-prose .txt files" in note and "2 in node_modules/" in note and "1 in build/" in note
    result, out = _dry_run(tmp_path, f'[[sources]]\nname = "w"\nkind = "docs"\npath = "{website}"\n')
    assert result.exit_code == 0
    assert "left out by rules" in out and re.search(r"│ w │ docs │ 8 │ \d+ │ 1 │ 8 │", out), out


def test_a_docs_section_named_build_below_the_top_is_read(website: Path):
    """Deeper down, "build" and "dist" are as likely sections of the docs as output."""
    page = website / "deployment" / "build" / "images.md"
    page.parent.mkdir(parents=True)
    page.write_text("# Building images\n\nBuild the task image with ImageSpec.\n")
    assert "deployment/build/images.md" in _load(website)[0]


def test_an_include_that_names_a_build_folder_reads_it(website: Path):
    docs, _ = _load(website, include=["build/*"])
    assert set(docs) == {"build/docs/getting-started.md"}


def test_a_folder_of_only_dependencies_says_so(tmp_path: Path):
    (tmp_path / "site" / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "site" / "node_modules" / "x" / "README.md").write_text("# x\n\ntext\n")
    result, out = _dry_run(tmp_path, f'[[sources]]\nname = "n"\nkind = "docs"\npath = "{tmp_path / "site"}"\n')
    assert result.exit_code == 1
    assert "no documents: its 1 file is in folders a docs source leaves out (node_modules" in out


# --- long code blocks ----------------------------------------------------------------------


@pytest.mark.parametrize("fence", ["```", "~~~~"])
def test_a_long_code_block_is_split_into_closed_fences(fence: str):
    lines = [f"app.step_{i}(handler=lambda ack: ack(), retries={i})  # step {i}" for i in range(120)]
    text = "# T\n\n## Example\n\nThe app:\n\n" + f"{fence}python\n" + "\n".join(lines) + f"\n{fence}\n\nAfter.\n"
    chunks = _passages(_page(text))
    holders = [c for c in chunks if "app.step_" in c.text]
    assert len(holders) >= 2
    for c in holders:
        assert len(c.text) <= DOC_MAX
        bodies = re.findall(rf"^{fence}python\n(.*?)\n{fence}$", c.text, flags=re.S | re.M)
        assert bodies, c.text
        assert c.text.count(fence) == 2 * len(bodies)  # every opened fence is closed
    shown = [ln for c in holders for b in re.findall(rf"^{fence}python\n(.*?)\n{fence}$", c.text, re.S | re.M)
             for ln in b.split("\n")]
    assert shown == lines  # every line once, in order


def test_a_long_rst_code_block_repeats_its_directive():
    body = "\n".join(f"   key_{i}: value_{i}  # setting number {i} of the long example" for i in range(90))
    text = "Title\n=====\n\n.. code-block:: yaml\n\n" + body + "\n\nAfter.\n"
    holders = [c for c in _passages(_page(text, "page.rst", "Title")) if "key_" in c.text]
    assert len(holders) >= 2
    for c in holders:
        assert c.text.count(".. code-block:: yaml") >= 1
        assert all(ln.startswith("   key_") for ln in c.text.split("\n") if "key_" in ln)  # indentation kept


# --- byte-order mark --------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_page():
    assert (SITE / "bom.md").read_bytes().startswith(b"\xef\xbb\xbf")
    docs, _ = _load()
    page = docs["bom.md"]
    assert page.title == "Page with a byte order mark"
    assert not page.text.startswith("\ufeff")
    assert all("\ufeff" not in c.text for c in chunk_document(page))


# --- pages of only front matter ----------------------------------------------------------


def test_a_page_of_only_front_matter_is_skipped_with_a_reason():
    docs, report = _load()
    assert "only-front-matter.md" not in docs
    assert ("only-front-matter.md", "only front matter, no text") in report.skipped


def test_a_page_of_only_front_matter_with_a_description_is_its_description():
    docs, _ = _load()
    chunks = _passages(docs["described.md"])
    assert [(c.title, c.text) for c in chunks] == [
        ("Widget recipes", "Short recipes for common widget tasks: retries, timeouts and logging.")]
    assert all("---" not in c.text and "description:" not in c.text for c in chunk_document(docs["described.md"]))


# --- .txt files that are not prose ----------------------------------------------------------


def test_txt_files_that_are_not_prose_are_not_pages_but_prose_txt_is():
    docs, _ = _load()
    assert "requirements.txt" not in docs and "_static/robots.txt" not in docs and "constraints-docs.txt" not in docs
    assert docs["notes.txt"].meta["format"] == "txt"
    assert "Version 2 renames the `spin` command" in _text(docs["notes.txt"])


# --- whatever MDX a page holds, chunking finishes and keeps its code ------------------------

MDX_FRAGMENTS = [
    "\n", "\n\n", "# ", "## ", "import Tabs from '@theme/Tabs';\n", "import {\n", "} from 'x';\n",
    "export const meta = {\n", "}\n", "<Tabs>", "</Tabs>", '<TabItem value="a" label="A">', "</TabItem>",
    "<details>", "<summary>", "</summary>", "{/*", "*/}", "<!--", "-->", ":::tip[T]\n", ":::note\n",
    "::::warning Title\n", ":::\n", "::::\n", ":::{note}\n", "```js\n", "```\n", "`", "<", ">", "{", "}",
    "<Guide steps={[{a: '>'}]} />", "<div className={{a: 1}}>", "</div>", "<your-id>", "List<String>",
    "---\ntitle: T\n---\n", "'", '"', "\\<", "x" * 3000,
]


@settings(derandomize=True, deadline=None, max_examples=150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(st.sampled_from(MDX_FRAGMENTS), st.text(max_size=40)), max_size=80).map("".join),
       st.sampled_from(["md", "mdx"]))
def test_any_mdx_page_chunks(text: str, fmt: str) -> None:
    doc = _page(text, f"page.{fmt}")
    for c in chunk_document(doc):
        assert c.text.strip() and c.embed_text.strip()


def test_code_inside_a_page_full_of_jsx_is_kept_verbatim():
    code = "```tsx\nimport Tabs from '@theme/Tabs';\n<Tabs>{/* x */}<TabItem label=\"L\">y</TabItem></Tabs>\n```"
    text = f"# T\n\nimport A from 'a';\n\n<Tabs>\n<TabItem value=\"a\" label=\"A\">\n\n{code}\n\n</TabItem>\n</Tabs>\n"
    assert _text(_page(text)) == f"# T\n\nA:\n\n{code}"
