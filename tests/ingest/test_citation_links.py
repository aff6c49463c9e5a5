"""Where a citation's link goes, and what its title says.

Before, code links named a branch (`blob/master`) while their line ranges came from the installed
package; `{version}` pins them to the copy read. A Slack citation opened the thread's first
message, also when the text cited is a later part of a long thread or when the parent is gone.
Docs citations titled "Page > Section" opened the page's top. A README whose heading
is HTML was titled "README"; a chunk of many small functions was titled after its first few.
Asserted on the chunks a citation is made of (title and URL), on the dry run's notes, and, end
to end, on the citations of an answer as the Slack bot lists them.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.ingest.chunking import chunk_documents
from flytegpt.ingest.config import ConfigError, SourceConfig, load_config
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source


def chunks_of(source: SourceConfig, report: LoadReport | None = None):
    return chunk_documents(load_source(source, report or LoadReport()))


def write_config(folder: Path, body: str) -> Path:
    path = folder / "flytegpt.toml"
    path.write_text(textwrap.dedent(body))
    return path


# --- {version} -----------------------------------------------------------------------------

def test_a_package_source_links_the_installed_version_at_the_lines_read(tmp_path):
    config = load_config(write_config(tmp_path, """
        [[sources]]
        name = "flytekit"
        kind = "code"
        package = "flytekit"
        include = ["core/resources.py"]
        url = "https://github.com/flyteorg/flytekit/blob/v{version}/flytekit/{path}#L{start}-L{end}"
    """))
    version = importlib.metadata.version("flytekit")
    chunk = next(c for c in chunks_of(config.sources[0]) if c.title == "flytekit.core.resources.Resources")
    m = re.fullmatch(rf"https://github\.com/flyteorg/flytekit/blob/v{re.escape(version)}/flytekit/"
                     r"core/resources\.py#L(\d+)-L(\d+)", chunk.url)
    assert m, chunk.url
    installed = Path(config.sources[0].root(), "core", "resources.py").read_text().split("\n")
    assert "class Resources" in "\n".join(installed[int(m.group(1)) - 1 : int(m.group(2))])


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}).stdout.strip()


def test_a_path_source_in_a_git_checkout_links_its_commit_and_says_when_it_has_local_edits(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "tasks.py").write_text("def cached_task():\n    return 1\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    commit = _git(repo, "rev-parse", "HEAD")
    source = SourceConfig(name="pkg", kind="code", path=repo / "pkg",
                          url="https://git.example.org/r/blob/{version}/pkg/{path}#L{start}-L{end}")
    report = LoadReport()
    [chunk] = chunks_of(source, report)
    assert chunk.url == f"https://git.example.org/r/blob/{commit}/pkg/tasks.py#L1-L2"
    assert report.notes == []
    (repo / "pkg" / "tasks.py").write_text("# edited\ndef cached_task():\n    return 1\n")
    report = LoadReport()
    chunks_of(source, report)
    assert any("uncommitted changes" in what for _, what in report.notes)


def test_version_that_cannot_be_known_is_a_config_error_that_says_what_to_write(tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("def f():\n    pass\n")
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, """
            [[sources]]
            name = "loose"
            kind = "code"
            path = "code"
            url = "https://github.com/o/r/blob/{version}/{path}#L{start}-L{end}"
        """))
    message = str(err.value)
    assert "'loose'" in message and "{version}" in message and "not in a git checkout" in message
    assert "blob/v1.2.3" in message and "{commit}" in message

    # a package on sys.path that no installed distribution provides (vendored, copied in)
    (tmp_path / "vendored" / "loosepkg").mkdir(parents=True)
    (tmp_path / "vendored" / "loosepkg" / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "vendored"))
    with pytest.raises(ConfigError, match=r"no installed distribution says it provides package 'loosepkg'"):
        load_config(write_config(tmp_path, """
            [[sources]]
            name = "loose"
            kind = "code"
            package = "loosepkg"
            url = "https://github.com/o/r/blob/v{version}/loosepkg/{path}#L{start}-L{end}"
        """))


def test_version_is_a_code_placeholder_only(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\ntext\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder \{version\}.*\{commit\}"):
        load_config(write_config(tmp_path, """
            [[sources]]
            name = "g"
            kind = "git"
            repo = "https://github.com/o/r"
            as_kind = "code"
            url = "https://github.com/o/r/blob/{version}/{path}"
        """))
    with pytest.raises(ConfigError, match=r"unknown placeholder \{version\}"):
        load_config(write_config(tmp_path, """
            [[sources]]
            name = "d"
            kind = "docs"
            path = "docs"
            url = "https://github.com/o/r/blob/{version}/{path}"
        """))


def test_the_dry_run_says_when_code_links_name_a_branch(tmp_path):
    from flytegpt.bot.cli import main

    path = write_config(tmp_path, """
        [[sources]]
        name = "flytekit"
        kind = "code"
        package = "flytekit"
        include = ["core/resources.py"]
        url = "https://github.com/flyteorg/flytekit/blob/master/flytekit/{path}#L{start}-L{end}"
    """)
    result = CliRunner().invoke(main, ["ingest", "--config", str(path), "--store", str(tmp_path / "s"), "--dry-run"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "links name the branch 'master'" in result.output and "use {version}" in result.output


def test_the_sample_config_shows_a_pinned_code_source():
    from flytegpt.ingest.config import sample_config_path

    text = sample_config_path().read_text()
    assert 'url = "https://github.com/flyteorg/flytekit/blob/v{version}/flytekit/{path}#L{start}-L{end}"' in text
    assert not re.search(r'url = ".*/blob/(master|main)/', text)


# --- Slack links ---------------------------------------------------------------------------

ROOT = "1700000000.000100"


def _export(folder: Path, messages: list[dict]) -> Path:
    (folder / "help").mkdir(parents=True)
    (folder / "channels.json").write_text(json.dumps([{"id": "C0HELP0001", "name": "help"}]))
    (folder / "users.json").write_text(json.dumps([{"id": "U1", "name": "ana"}, {"id": "U2", "name": "ben"}]))
    (folder / "help" / "2023-11-14.json").write_text(json.dumps(messages))
    return folder


def _slack(folder: Path) -> SourceConfig:
    return SourceConfig(name="s", kind="slack_export", path=folder, workspace_url="https://acme.slack.com")


def _reply(i: int, text: str) -> dict:
    return {"type": "message", "user": "U2", "ts": f"1700000000.{200 + i:06d}", "thread_ts": ROOT, "text": text}


def test_a_short_thread_links_its_parent(tmp_path):
    folder = _export(tmp_path / "x", [
        {"type": "message", "user": "U1", "ts": ROOT, "thread_ts": ROOT, "text": "How do I cache a task output?"},
        _reply(1, "Set cache=True and a cache_version."),
    ])
    [chunk] = chunks_of(_slack(folder))
    assert chunk.url == "https://acme.slack.com/archives/C0HELP0001/p1700000000000100"
    assert chunk.title == "How do I cache a task output?"


def test_a_later_part_of_a_long_thread_links_the_reply_it_starts_with(tmp_path):
    replies = [_reply(i, f"Reply {i}: " + "the map task retries each failed element again. " * 20) for i in range(12)]
    folder = _export(tmp_path / "x", [
        {"type": "message", "user": "U1", "ts": ROOT, "thread_ts": ROOT, "text": "Why do my map tasks retry?"},
        *replies,
    ])
    chunks = chunks_of(_slack(folder))
    assert len(chunks) >= 2
    assert chunks[0].url == "https://acme.slack.com/archives/C0HELP0001/p1700000000000100"
    for chunk in chunks[1:]:
        first = int(re.match(r"ben: Reply (\d+):", chunk.text).group(1))
        ts = replies[first]["ts"]
        assert chunk.url == (f"https://acme.slack.com/archives/C0HELP0001/p{ts.replace('.', '')}"
                             f"?thread_ts={ROOT}&cid=C0HELP0001")


@pytest.mark.parametrize("parent", [
    {"type": "message", "subtype": "tombstone", "user": "USLACKBOT", "ts": ROOT, "thread_ts": ROOT,
     "text": "This message was deleted."},
    None,  # not in the export at all
], ids=["tombstone", "missing"])
def test_a_thread_without_its_question_links_its_first_reply_and_says_so_in_its_title(tmp_path, parent):
    folder = _export(tmp_path / "x", [*([parent] if parent else []),
                                      _reply(1, "Try the platypus flag: set platypus_mode=strict in the config."),
                                      _reply(2, "That fixed it, thanks.")])
    [chunk] = chunks_of(_slack(folder))
    assert chunk.url == ("https://acme.slack.com/archives/C0HELP0001/p1700000000000201"
                         "?thread_ts=1700000000.000100&cid=C0HELP0001")
    assert chunk.title == "#help thread, 2023-11-14: Try the platypus flag: set platypus_mode=strict in the config."


# --- anchors ---------------------------------------------------------------------------------

def _para(topic: str) -> str:
    return " ".join([f"This paragraph explains {topic} in enough words to stand as a chunk of its own."] * 12)


def _docs(folder: Path, name: str, text: str, url: str | None) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return chunks_of(SourceConfig(name="d", kind="docs", path=folder, url=url))


def _linked(chunks) -> dict[str, str]:
    return {c.title: c.url for c in chunks if not c.title.endswith((" (outline)", " (title)"))}


GITHUB = "https://github.com/flyteorg/flyte/blob/89cf9cc73611406a7659177054eb09696d766578/docs/{path}"


def test_markdown_sections_on_github_link_to_their_heading(tmp_path):
    page = (f"# Contributing code\n\n{_para('the page')}\n\n"
            f"## 🔮 Development Environment Setup Guide\n\n{_para('setup')}\n\n"
            f"## The `cache_version` flag\n\n{_para('versions')}\n\n"
            f"## Setup\n\n{_para('setup again')}\n\n### Setup\n\n{_para('more setup')}\n")
    linked = _linked(_docs(tmp_path / "docs", "contribute.md", page, GITHUB))
    base = GITHUB.replace("{path}", "contribute.md")
    assert linked["Contributing code"] == base  # the page's own text: its top
    assert linked["Contributing code > 🔮 Development Environment Setup Guide"] == \
        base + "#-development-environment-setup-guide"
    assert linked["Contributing code > The cache_version flag"] == base + "#the-cache_version-flag"
    assert linked["Contributing code > Setup"] == base + "#setup"
    assert linked["Contributing code > Setup > Setup"] == base + "#setup-1"  # GitHub numbers repeats


def test_rst_sections_on_github_link_to_their_label_or_docutils_id(tmp_path):
    page = (f"Authenticating in Flyte\n=======================\n\n{_para('auth')}\n\n"
            f".. _custom-auth-server:\n\nCustom Authorization Server\n---------------------------\n\n"
            f"{_para('custom')}\n\n"
            f"Apply the ``flyte-admin`` config\n--------------------------------\n\n{_para('applying')}\n\n"
            f"Set up :ref:`the CLI <cli>`\n--------------------------\n\n{_para('the cli')}\n\n"
            f"Apply the ``flyte-admin`` config\n--------------------------------\n\n{_para('again')}\n")
    chunks = _docs(tmp_path / "docs", "auth_setup.rst", page, GITHUB)
    urls = [c.url for c in chunks if not c.title.endswith((" (outline)", " (title)"))]
    base = GITHUB.replace("{path}", "auth_setup.rst")
    assert urls == [base, base + "#custom-auth-server", base + "#apply-the-flyte-admin-config",
                    base, base]  # a role in the title, a repeated title: not known for sure, no anchor


def test_a_generated_reference_links_each_chunk_to_its_first_setting_where_that_id_is_sure(tmp_path):
    def setting(name: str) -> str:
        return f"{name}\n{'^' * len(name)}\n\nDefault value: ``{name.split()[0]}``. Used when it is set.\n\n"

    page = "Flyte Admin Configuration\n=========================\n\n"
    for parent, names in (("admin", [f"setting{i} (int)" for i in range(22)]), ("a", ["type (string)"]),
                          ("b", ["type (string)"])):
        page += f"Section: {parent}\n{'-' * (9 + len(parent))}\n\n" + "".join(setting(n) for n in names)
    chunks = _docs(tmp_path / "docs", "flyteadmin_config.rst", page, GITHUB)
    linked = {c.title.split(" > ", 1)[1].split(",")[0]: c.url.partition("#")[2] for c in chunks if " > " in c.title}
    assert linked["admin: setting0"] == "setting0-int"
    assert linked["a: type"] == "type-string"
    assert linked["b: type"] == ""  # docutils numbers the repeat ("id1", ...): no anchor


@pytest.mark.parametrize("name, url", [
    ("page.md", "https://docs.flyte.org/en/latest/{path_noext}.html"),  # a docs site: its generator decides
    ("page.mdx", GITHUB),  # GitHub shows MDX as text
    ("page.md", None),  # a file:// link
])
def test_no_anchor_where_the_renderer_is_not_known(tmp_path, name, url):
    page = f"# Page\n\n{_para('the page')}\n\n## Section\n\n{_para('the section')}\n"
    chunks = _docs(tmp_path / "docs", name, page, url)
    assert not any("#" in c.url for c in chunks)


# --- titles ----------------------------------------------------------------------------------

def test_a_readme_headed_in_html_is_titled_by_its_h1(tmp_path):
    readme = ('<html>\n    <p align="center">\n        <img src="logo.png" alt="Flyte Logo">\n    </p>\n'
              '    <h1 align="center">\n        Flyte tutorials and integrations examples\n    </h1>\n</html>\n\n'
              f"{_para('the examples')}\n")
    chunks = _docs(tmp_path / "docs", "README.md", readme, GITHUB)
    assert {c.title for c in chunks} == {"Flyte tutorials and integrations examples",
                                         "Flyte tutorials and integrations examples (outline)",
                                         "Flyte tutorials and integrations examples (title)"}


def test_a_heading_with_a_link_is_titled_by_the_links_label(tmp_path):
    """Before, a citation read "Abide by the LF's Code of Conduct <https://...>__"."""
    rst = ("Community\n=========\n\n" + _para("the community") + "\n\n"
           "Abide by the `LF's Code of Conduct <https://lfprojects.org/policies/code-of-conduct/>`__\n"
           "-------------------------------------------------------------------------------------\n\n"
           + _para("conduct") + "\n")
    md = f"# Files\n\n{_para('files')}\n\n## Reading a [FlyteFile](https://docs.flyte.org/x) in a task\n\n{_para('reading')}\n"
    titles = {c.title for c in _docs(tmp_path / "a", "index.rst", rst, GITHUB)}
    titles |= {c.title for c in _docs(tmp_path / "b", "files.md", md, GITHUB)}
    assert "Community > Abide by the LF's Code of Conduct" in titles
    assert "Files > Reading a FlyteFile in a task" in titles
    assert not any("http" in t or "](" in t for t in titles)


def test_a_readme_without_any_heading_is_named_after_its_folder(tmp_path):
    (tmp_path / "docs" / "examples" / "basics").mkdir(parents=True)
    (tmp_path / "docs" / "examples" / "basics" / "README.md").write_text(_para("the basics") + "\n")
    chunks = chunks_of(SourceConfig(name="d", kind="docs", path=tmp_path / "docs"))
    assert chunks[0].title == "basics"


def test_a_chunk_of_many_small_functions_names_the_first_ones_the_last_and_the_count(tmp_path):
    code = tmp_path / "edgepkg"
    code.mkdir()
    (code / "__init__.py").write_text("")
    body = "".join(f"def filler_{i}():\n    return {i}\n\n\n" for i in range(9))
    (code / "ends.py").write_text(body + "def narwhal_endpoint(token):\n    return f'narwhal {token}'\n")
    chunks = chunks_of(SourceConfig(name="c", kind="code", path=code))
    [chunk] = [c for c in chunks if not c.title.endswith("(outline)")]
    assert chunk.title == "edgepkg.ends.filler_0, filler_1, filler_2 ... narwhal_endpoint (10 definitions)"


# --- end to end: the citations of an answer as the Slack bot lists them ---------------------

@pytest.mark.slow
def test_an_answer_cites_the_section_the_reply_and_the_pinned_code(tmp_path, embedder):
    from flytegpt.bot.answering import Answerer
    from flytegpt.bot.answering.types import Answer
    from flytegpt.bot.slack.blocks import render_answer
    from flytegpt.ingest.config import Settings
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.search import HybridSearcher

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "caching.md").write_text(
        f"# Caching\n\n{_para('caching in general')}\n\n## Zebracorn cache versions\n\n"
        + " ".join(["Bump the zebracorn cache version whenever the zebracorn task body changes."] * 12) + "\n")
    asked = "1700000500.000100"  # a thread with its question: the offline answer quotes its reply
    folder = _export(tmp_path / "slack", [
        {"type": "message", "subtype": "tombstone", "user": "USLACKBOT", "ts": ROOT, "thread_ts": ROOT,
         "text": "This message was deleted."},
        _reply(1, "For platypus retries set platypus_mode=strict in the platypus config."),
        {"type": "message", "user": "U1", "ts": asked, "thread_ts": asked,
         "text": "How do I make the wombat executor keep its pods?"},
        {"type": "message", "user": "U2", "ts": "1700000600.000100", "thread_ts": asked,
         "text": "Set wombat_keep_pods=true on the wombat executor."},
        {"type": "message", "user": "U1", "ts": "1700000700.000100", "thread_ts": asked, "text": "Thanks!"},
    ])
    config = load_config(write_config(tmp_path, f"""
        [[sources]]
        name = "docs"
        kind = "docs"
        path = "docs"
        url = "{GITHUB}"

        [[sources]]
        name = "slack"
        kind = "slack_export"
        path = "{folder}"
        workspace_url = "https://acme.slack.com"

        [[sources]]
        name = "flytekit"
        kind = "code"
        package = "flytekit"
        include = ["core/resources.py"]
        url = "https://github.com/flyteorg/flytekit/blob/v{{version}}/flytekit/{{path}}#L{{start}}-L{{end}}"

        [index]
        store = "store"
    """))
    run_ingest(config, progress=False, embedder=embedder)
    searcher = HybridSearcher.open(config, embedder=embedder)
    answerer = Answerer(config, Settings(), lambda: searcher)

    def listed(question: str) -> str:
        answer = answerer.answer(question)
        assert isinstance(answer, Answer) and answer.mode == "offline"
        blocks = [b for m in render_answer(answer) for b in m.blocks if b["type"] == "context"]
        return "\n".join(e["text"] for b in blocks for e in b["elements"])

    assert ("/docs/caching.md#zebracorn-cache-versions|Caching &gt; Zebracorn cache versions>"
            in listed("How do I bump the zebracorn cache version?"))
    assert ("https://acme.slack.com/archives/C0HELP0001/p1700000000000201"
            "?thread_ts=1700000000.000100&amp;cid=C0HELP0001"
            "|#help thread, 2023-11-14: For platypus retries set platypus_mode=strict in the platypus config.>"
            in listed("How do I fix platypus retries with platypus_mode?"))
    assert ("https://acme.slack.com/archives/C0HELP0001/p1700000600000100"  # the reply quoted, in its thread
            f"?thread_ts={asked}&amp;cid=C0HELP0001|How do I make the wombat executor keep its pods?>"
            in listed("How do I keep the pods of the wombat executor?"))
    version = importlib.metadata.version("flytekit")
    assert f"https://github.com/flyteorg/flytekit/blob/v{version}/flytekit/core/resources.py#L" in \
        listed("How do I set Resources for cpu and memory in flytekit?")
