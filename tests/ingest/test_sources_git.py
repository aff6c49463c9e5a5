"""The `git` source against a real bare repository served over file:// (git's own transport)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from flytegpt.ingest.config import parse_config
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source
from flytegpt.ingest.sources.git import GitSourceError, default_url_template, load_git

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    import os

    out = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture()
def bare_repo(tmp_path: Path) -> dict:
    """A bare repository with two commits on `main`, a tag on the first, and a `dev` branch."""
    work = tmp_path / "work"
    (work / "docs").mkdir(parents=True)
    (work / "pkg").mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    (work / "docs" / "intro.md").write_text("# Intro\n\nFlyte tasks are cached with `cache=True`.\n")
    (work / "pkg" / "__init__.py").write_text("")
    (work / "pkg" / "tasks.py").write_text("def run_task(x):\n    \"\"\"Run it.\"\"\"\n    return x + 1\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "first", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    git("tag", "v1", cwd=work)
    (work / "docs" / "intro.md").write_text("# Intro\n\nNow with map tasks.\n")
    (work / "docs" / "new.md").write_text("# New page\n\nAdded in the second commit.\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "second", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    git("branch", "dev", first, cwd=work)
    bare = tmp_path / "remote.git"
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=tmp_path)
    return {"url": bare.as_uri(), "first": first, "second": second, "path": bare}


def _config(tmp_path: Path, body: str):
    return parse_config(tomllib.loads(body), tmp_path)


def _source(tmp_path: Path, repo: str, **kw) -> object:
    extra = "".join(f'{k} = {v!r}\n'.replace("'", '"') for k, v in kw.items())
    cfg = _config(tmp_path, f'[[sources]]\nname = "upstream"\nkind = "git"\nrepo = "{repo}"\n{extra}')
    return cfg.sources[0]


def test_docs_at_a_branch_are_pinned_to_the_resolved_commit(tmp_path: Path, bare_repo: dict) -> None:
    source = _source(tmp_path, bare_repo["url"], ref="main", as_kind="docs", include=["docs/*"],
                     url="https://git.example.com/r/blob/{commit}/{path}?ref={ref}")
    report = LoadReport()
    docs = list(load_source(source, report))  # through the dispatcher, as the pipeline calls it
    by_locator = {d.locator: d for d in docs}
    assert set(by_locator) == {"docs/intro.md", "docs/new.md"}
    intro = by_locator["docs/intro.md"]
    assert "map tasks" in intro.text
    assert intro.kind == "docs" and intro.source_id == "upstream:docs/intro.md"
    assert intro.url == f"https://git.example.com/r/blob/{bare_repo['second']}/docs/intro.md?ref=main"
    assert all(d.meta["commit"] == bare_repo["second"] for d in docs)
    assert intro.meta["repo"] == bare_repo["url"] and intro.meta["format"] == "md"
    assert report.skipped == []


@pytest.mark.parametrize("ref_key", ["tag", "branch", "sha"])
def test_tag_branch_or_commit_sha_checks_out_the_old_tree(tmp_path: Path, bare_repo: dict, ref_key: str) -> None:
    ref = {"tag": "v1", "branch": "dev", "sha": bare_repo["first"]}[ref_key]
    source = _source(tmp_path, bare_repo["url"], ref=ref, as_kind="docs")
    docs = list(load_git(source, LoadReport()))
    assert [d.locator for d in docs] == ["docs/intro.md"]  # new.md only exists in the second commit
    assert "cache=True" in docs[0].text
    assert docs[0].meta["commit"] == bare_repo["first"]
    assert bare_repo["first"] in docs[0].url  # the default template pins non-web repositories too


def test_code_chunks_get_commit_pinned_line_urls(tmp_path: Path, bare_repo: dict) -> None:
    from flytegpt.ingest.chunking import chunk_documents

    source = _source(tmp_path, bare_repo["url"], as_kind="code", include=["pkg/*"],
                     url="https://github.com/o/r/blob/{commit}/{path}#L{start}-L{end}")
    docs = list(load_git(source, LoadReport()))
    assert [d.locator for d in docs] == ["pkg/tasks.py"]
    assert docs[0].meta["module"] == "pkg.tasks"
    chunks = chunk_documents(docs)
    assert chunks and all(c.url.startswith(f"https://github.com/o/r/blob/{bare_repo['second']}/pkg/tasks.py#L")
                          for c in chunks)


def test_clone_is_shallow_in_a_kept_workdir_and_temporary_otherwise(tmp_path: Path, bare_repo: dict) -> None:
    source = _source(tmp_path, bare_repo["url"], as_kind="docs")
    workdir = tmp_path / "wd"
    list(load_git(source, LoadReport(), workdir=workdir))
    checkout = workdir / "upstream" / "remote"
    assert git("rev-parse", "--is-shallow-repository", cwd=checkout) == "true"
    assert git("rev-list", "--count", "HEAD", cwd=checkout) == "1"
    list(load_git(source, LoadReport(), workdir=workdir))  # a second run into the same workdir works

    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("flytegpt-git-upstream-*"))
    list(load_git(source, LoadReport()))
    assert set(Path(tempfile.gettempdir()).glob("flytegpt-git-upstream-*")) == before  # cleaned up


def test_unknown_ref_or_repo_fails_loudly_with_gits_reason(tmp_path: Path, bare_repo: dict) -> None:
    source = _source(tmp_path, bare_repo["url"], ref="no-such-branch", as_kind="docs")
    with pytest.raises(GitSourceError, match="upstream.*no-such-branch"):
        list(load_git(source, LoadReport()))
    source = _source(tmp_path, (tmp_path / "missing.git").as_uri(), as_kind="docs")
    with pytest.raises(GitSourceError, match="cannot fetch"):
        list(load_git(source, LoadReport()))
    source = _source(tmp_path, bare_repo["url"], ref="--upload-pack=evil", as_kind="docs")
    with pytest.raises(GitSourceError, match="invalid ref"):
        list(load_git(source, LoadReport()))


@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ("https://github.com/flyteorg/flytekit.git", "https://github.com/flyteorg/flytekit/blob/{commit}/{path}"),
        ("https://github.com/flyteorg/flytekit", "https://github.com/flyteorg/flytekit/blob/{commit}/{path}"),
        ("git@github.com:flyteorg/flyte.git", "https://github.com/flyteorg/flyte/blob/{commit}/{path}"),
        ("file:///srv/repo.git", "file:///srv/repo.git@{commit}/{path}"),
    ],
)
def test_default_url_template(repo: str, expected: str) -> None:
    assert default_url_template(repo) == expected


# ---- a token in the clone URL is used to fetch, and shown nowhere -------------------------------

TOKEN_REPO = "https://x-access-token:ghp_SECRET123@github.example/acme/private.git"


def test_a_token_in_the_repo_url_fetches_but_never_reaches_citations_or_the_index(
        tmp_path: Path, bare_repo: dict, monkeypatch) -> None:
    # git's own url.<base>.insteadOf sends the credentialed https URL to the local bare repository
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.{bare_repo['url']}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", TOKEN_REPO)
    source = _source(tmp_path, TOKEN_REPO, as_kind="docs")
    docs = list(load_git(source, LoadReport()))
    assert docs and all("ghp_SECRET123" not in d.url and "x-access-token" not in d.url for d in docs)
    assert docs[0].url.startswith(f"https://github.example/acme/private/blob/{bare_repo['second']}/")
    assert all(d.meta["repo"] == "https://github.example/acme/private.git" for d in docs)


def test_a_failed_fetch_with_a_token_in_the_url_does_not_say_the_token(tmp_path: Path) -> None:
    source = _source(tmp_path, "https://user:ghp_SECRET123@127.0.0.1:9/acme/private.git", as_kind="docs")
    with pytest.raises(GitSourceError) as e:
        list(load_git(source, LoadReport()))
    assert "ghp_SECRET123" not in str(e.value) and "https://127.0.0.1:9/acme/private.git" in str(e.value)
