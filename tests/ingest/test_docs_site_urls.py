"""A docs source's citations can point at the published docs site, not only at the
Markdown file on GitHub: {path_noext} (the path without its extension) and {page} (that, with
an index or README page at its folder's address), beside {path} as before."""

from __future__ import annotations

import pytest

from flytegpt.ingest.config import ConfigError, load_config
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source

PAGES = {
    "index.md": "# Bolt for Python\n\nA framework for Slack apps.\n",
    "concepts/acknowledge.md": "# Acknowledging requests\n\nCall ack() within 3 seconds.\n",
    "concepts/index.md": "# Concepts\n\nThe building blocks.\n",
    "tutorial/README.md": "# Tutorials\n\nStep by step.\n",
    "reference/app.rst": "App\n===\n\nThe App class.\n",
    "guides/socket mode.md": "# Socket Mode\n\nNo public URL needed.\n",
}


def urls(tmp_path, url: str) -> dict[str, str]:
    """The citation URL of each page of a docs source with this `url` template, loaded as a user's config is."""
    docs = tmp_path / "docs" / "english"
    for rel, text in PAGES.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(text)
    config_file = tmp_path / "flytegpt.toml"
    config_file.write_text(f'[[sources]]\nname = "bolt-docs"\nkind = "docs"\npath = "docs/english"\nurl = "{url}"\n')
    [source] = load_config(config_file).sources
    return {d.locator: d.url for d in load_source(source, LoadReport())}


def test_page_gives_the_published_sites_addresses(tmp_path):
    site = "https://docs.slack.dev/tools/bolt-python"
    assert urls(tmp_path, site + "/{page}") == {
        "index.md": f"{site}/",
        "concepts/acknowledge.md": f"{site}/concepts/acknowledge",
        "concepts/index.md": f"{site}/concepts",
        "tutorial/README.md": f"{site}/tutorial",
        "reference/app.rst": f"{site}/reference/app",
        "guides/socket mode.md": f"{site}/guides/socket%20mode",
    }


def test_page_follows_a_front_matter_slug_or_id(tmp_path):
    """Docusaurus moves a page with its front matter: `slug: /x` from the docs' root, `slug: x`
    beside the page, `id: x` renames the page; {path} and {path_noext} stay the file's."""
    PAGES.update({
        "concepts/ack-long-name.md": "---\nslug: /acknowledge\n---\n# Acknowledging\n\nack() it.\n",
        "concepts/listeners.md": "---\nslug: event-listening\n---\n# Listening\n\nUse app.event.\n",
        "concepts/03-errors.md": "---\nid: errors\ntitle: Errors\n---\nHandle them.\n",
    })
    try:
        got = urls(tmp_path, "https://docs.example.org/{page}")
        noext = urls(tmp_path, "https://github.example.org/{path_noext}")
    finally:
        for rel in ("concepts/ack-long-name.md", "concepts/listeners.md", "concepts/03-errors.md"):
            PAGES.pop(rel)
    assert got["concepts/ack-long-name.md"] == "https://docs.example.org/acknowledge"
    assert got["concepts/listeners.md"] == "https://docs.example.org/concepts/event-listening"
    assert got["concepts/03-errors.md"] == "https://docs.example.org/concepts/errors"
    assert noext["concepts/ack-long-name.md"] == "https://github.example.org/concepts/ack-long-name"


def test_a_page_named_like_its_folder_is_the_folders_page(tmp_path):
    """Docusaurus serves `tutorial/ai-chatbot/ai-chatbot.md` at `tutorial/ai-chatbot`."""
    PAGES["tutorial/ai-chatbot/ai-chatbot.md"] = "# AI chatbot\n\nBuild one.\n"
    try:
        got = urls(tmp_path, "https://docs.example.org/{page}")
    finally:
        PAGES.pop("tutorial/ai-chatbot/ai-chatbot.md")
    assert got["tutorial/ai-chatbot/ai-chatbot.md"] == "https://docs.example.org/tutorial/ai-chatbot"
    assert got["concepts/acknowledge.md"] == "https://docs.example.org/concepts/acknowledge"


def test_a_trailing_slash_site_has_no_double_slash_at_its_top_page(tmp_path):
    """MkDocs' directory URLs: `https://site/{page}/` is `https://site/` for the top index.md."""
    got = urls(tmp_path, "https://bolt.example.org/{page}/")
    assert got["index.md"] == "https://bolt.example.org/"
    assert got["concepts/acknowledge.md"] == "https://bolt.example.org/concepts/acknowledge/"
    assert got["concepts/index.md"] == "https://bolt.example.org/concepts/"


def test_path_noext_gives_a_sphinx_sites_html_pages(tmp_path):
    got = urls(tmp_path, "https://bolt.readthedocs.io/en/latest/{path_noext}.html")
    assert got["index.md"] == "https://bolt.readthedocs.io/en/latest/index.html"
    assert got["concepts/index.md"] == "https://bolt.readthedocs.io/en/latest/concepts/index.html"
    assert got["reference/app.rst"] == "https://bolt.readthedocs.io/en/latest/reference/app.html"


def test_path_is_unchanged(tmp_path):
    got = urls(tmp_path, "https://github.com/slackapi/bolt-python/blob/main/docs/english/{path}")
    assert got["concepts/acknowledge.md"] == \
        "https://github.com/slackapi/bolt-python/blob/main/docs/english/concepts/acknowledge.md"
    assert got["guides/socket mode.md"].endswith("/guides/socket%20mode.md")


@pytest.mark.parametrize(("kind", "placeholder"), [
    ('kind = "code"\npath = "code"', "{page}"),
    ('kind = "code"\npath = "code"', "{path_noext}"),
    ('kind = "docs"\npath = "code"', "{slug}"),  # a natural guess: a front-matter slug is not read
])
def test_the_new_placeholders_are_for_docs_pages_only(tmp_path, kind, placeholder):
    (tmp_path / "code").mkdir()
    path = tmp_path / "flytegpt.toml"
    path.write_text(f'[[sources]]\nname = "s"\n{kind}\nurl = "https://x/{placeholder}"\n')
    with pytest.raises(ConfigError, match=r"unknown placeholder .*\{path\}"):
        load_config(path)
