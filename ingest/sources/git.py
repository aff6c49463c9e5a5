"""`git` sources: a repository at a ref, read as `docs` or `code`, every URL pinned to the commit.

The nightly re-ingest needs fresh material; a repository at a branch gives it. The clone is
shallow (one commit, no history: a docs or code tree is all we read), and the ref is resolved
to a commit sha *before* reading, so every citation points at the exact text that was indexed
even after the branch moves on.

Configuration (a [[sources]] table):
    kind = "git"
    repo = "https://github.com/flyteorg/flytekit.git"   # any URL `git` can fetch (https, ssh, file://)
    ref = "master"                                       # branch, tag or full commit sha; default HEAD
    as_kind = "code"                                     # read the checkout as "docs" or "code"
    include = ["flytekit/**"]                            # globs relative to the repository root
    url = "https://github.com/flyteorg/flytekit/blob/{commit}/{path}#L{start}-L{end}"

URL template placeholders: {commit} (the resolved full sha), {ref} (the configured ref),
{path}, and for code {start}/{end}. Without a template, GitHub/GitLab-style https and
`git@host:owner/name` repositories get `<https repo>/blob/{commit}/{path}`; other repositories
(file://, bare paths) get `<repo>@{commit}/{path}`, still pinned but not a web page, so set a
template for them. Private repositories authenticate through git itself (credential helper,
SSH key, GIT_ASKPASS); git never prompts (GIT_TERMINAL_PROMPT=0).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from flytegpt.ingest.config import ConfigError, SourceConfig
from flytegpt.ingest.models import Document, LoadReport

GIT_TIMEOUT_S = 900  # a large repository over a slow link, but never a hung nightly run


class GitSourceError(ConfigError):
    """The repository could not be fetched at the ref (the message carries git's own error)."""


_USERINFO = re.compile(r"^(https?://)[^/@\s]*@", re.I)  # ssh's "git@" is a user name, no secret


def public_repo(repo: str) -> str:
    """`repo` without the credentials a clone URL may carry (https://x-access-token:ghp_…@host/…):
    what citations, the index and messages show. The clone alone uses the URL as written
    (a credential helper or GIT_ASKPASS keeps the token out of the config altogether)."""
    return _USERINFO.sub(r"\1", repo)


def default_url_template(repo: str) -> str:
    """A commit-pinned web URL for well-known hosts, else a pinned pseudo-URL."""
    repo = public_repo(repo)
    m = re.match(r"^(?:ssh://)?git@([^:/]+)[:/](.+?)(?:\.git)?/?$", repo)
    if m:
        base = f"https://{m.group(1)}/{m.group(2)}"
    elif repo.startswith(("https://", "http://")):
        base = re.sub(r"(?:\.git)?/?$", "", repo)
    else:
        return repo.rstrip("/") + "@{commit}/{path}"
    return base + "/blob/{commit}/{path}"


def run_git(args: list[str], cwd: Path) -> str:
    """git's output (stripped); GitSourceError naming what failed: git missing, a timeout, git's own error."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": os.environ.get("GIT_ASKPASS", "true")}
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
    except FileNotFoundError:
        raise GitSourceError("the `git` command is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitSourceError(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from None
    except subprocess.CalledProcessError as e:
        raise GitSourceError((e.stderr or e.stdout or "").strip() or f"git {args[0]} failed") from None
    return out.stdout.strip()


def shallow_checkout(repo: str, ref: str, dest: Path) -> str:
    """Fetch one commit of `repo` at `ref` into the empty folder `dest`; return its full sha.

    init + fetch (rather than clone --branch) so that a commit sha works as well as a branch
    or tag; servers that refuse unadvertised shas (rare today) need a branch or tag instead.
    """
    if ref.startswith("-"):
        raise GitSourceError(f"invalid ref {ref!r}")
    dest.mkdir(parents=True, exist_ok=True)
    run_git(["init", "--quiet"], dest)
    run_git(["remote", "add", "origin", repo], dest)
    run_git(["fetch", "--quiet", "--depth", "1", "--no-tags", "origin", ref], dest)
    run_git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "FETCH_HEAD"], dest)
    return run_git(["rev-parse", "HEAD"], dest)


def _repo_dir_name(repo: str) -> str:
    name = re.sub(r"(?:\.git)?/*$", "", repo).rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "repo"


def load_git(
    source: SourceConfig,
    report: LoadReport,
    *,
    store: str | None = None,
    workdir: str | Path | None = None,
) -> Iterator[Document]:
    """Documents of `source.repo` at `source.ref`, read by the docs or code loader.

    The checkout goes to a temporary folder removed once the documents are read, or into
    `workdir` (kept) when the caller wants it, e.g. a Flyte task's working directory.
    """
    assert source.repo is not None and source.as_kind is not None  # the config validator ensures it
    if source.as_kind == "docs":
        from flytegpt.ingest.sources.docs import load_docs as loader
    else:
        from flytegpt.ingest.sources.code import load_code as loader

    with ExitStack() as stack:
        if workdir is None:
            parent = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"flytegpt-git-{source.name}-")))
        else:
            parent = Path(workdir) / source.name
        checkout = parent / _repo_dir_name(source.repo)
        if checkout.exists():  # a kept workdir from an earlier run: start clean
            shutil.rmtree(checkout)
        try:
            commit = shallow_checkout(source.repo, source.ref, checkout)
        except GitSourceError as e:
            shown = public_repo(source.repo)
            raise GitSourceError(f"source {source.name!r}: cannot fetch {shown} at {source.ref!r}: "
                                 f"{str(e).replace(source.repo, shown)}") from None

        template = source.url or default_url_template(source.repo)
        template = template.replace("{commit}", commit).replace("{ref}", source.ref)
        as_source = source.model_copy(update={"kind": source.as_kind, "path": checkout, "url": template})
        for doc in loader(as_source, report, store=store):
            meta = {**doc.meta, "repo": public_repo(source.repo), "ref": source.ref, "commit": commit}
            yield dataclasses.replace(doc, meta=meta)
