"""Sources never read outside their root, and one broken file never stops an ingest.

Each case here was an attack or an accident that got through before: a symlink to
/etc/passwd in a docs tree, a zip export with one damaged member, a file name that is not
UTF-8. The rule for all of them: the file is skipped and named in the report; only a source
that cannot be read at all is an error, and that error names the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.ingest.config import ConfigError, SourceConfig
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources import load_source
from flytegpt.ingest.sources.slack_export import Directory, display_name
from support.paths import FIXTURES

SECRET = "root:x:0:0:the secret outside the source root\n"


def _load(kind: str, path: Path, **kw) -> tuple[dict[str, Document], LoadReport]:
    source = SourceConfig(name="s", kind=kind, path=path, **kw)
    report = LoadReport()
    return {d.locator: d for d in load_source(source, report)}, report


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the source root holding a file nobody configured."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "passwd.md").write_text(SECRET)
    (folder / "secret.py").write_text("TOKEN = 'outside'\n")
    return folder


# ---------------------------------------------------------------- symbolic links


def test_docs_symlinks_out_of_the_root_are_skipped_and_reported(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "index.md").write_text("# Index\n\nThe real page.\n")
    (root / "inner.md").symlink_to(root / "index.md")  # stays inside: still read
    (root / "leak.md").symlink_to(outside / "passwd.md")
    (root / "absolute.md").symlink_to("/etc/passwd")
    (root / "more").symlink_to(outside, target_is_directory=True)
    docs, report = _load("docs", root)
    assert set(docs) == {"index.md", "inner.md"}
    assert all(SECRET.strip() not in d.text and "root:x:0" not in d.text for d in docs.values())
    assert all(not d.url.startswith("file:///etc") for d in docs.values())
    skipped = dict(report.skipped)
    assert "outside the source root" in skipped["leak.md"]
    assert "outside the source root" in skipped["absolute.md"]
    assert "outside the source root" in skipped["more"]


def test_a_broken_symlink_is_reported_as_broken(tmp_path: Path) -> None:
    """A link to nothing was reported as a "link to a file outside the source root"."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "page.md").write_text("# Page\n\nText.\n")
    (root / "gone.md").symlink_to(root / "deleted.md")
    docs, report = _load("docs", root)
    assert set(docs) == {"page.md"}
    assert dict(report.skipped) == {"gone.md": "broken symbolic link (its target does not exist)"}


def test_code_symlinks_out_of_the_root_are_skipped_and_reported(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "core.py").write_text("def run():\n    return 1\n")
    (root / "pkg" / "leak.py").symlink_to(outside / "secret.py")
    docs, report = _load("code", root)
    assert set(docs) == {"pkg/core.py"}
    assert "outside the source root" in dict(report.skipped)["pkg/leak.py"]


def test_git_checkout_with_a_symlink_out_of_the_repository(tmp_path: Path, outside: Path) -> None:
    work = tmp_path / "work"
    (work / "docs").mkdir(parents=True)
    (work / "docs" / "intro.md").write_text("# Intro\n\nCommitted page.\n")
    os.symlink(outside / "passwd.md", work / "docs" / "leak.md")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "--quiet", "--initial-branch=main"], ["add", "-A"], ["commit", "--quiet", "-m", "x"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)
    source = SourceConfig(name="g", kind="git", repo=work.as_uri(), ref="main", as_kind="docs")
    report = LoadReport()
    docs = {d.locator: d for d in load_source(source, report)}
    assert set(docs) == {"docs/intro.md"}
    assert "outside the source root" in dict(report.skipped)["docs/leak.md"]


def test_slack_export_folder_symlink_out_of_the_export(tmp_path: Path, outside: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(FIXTURES / "sources" / "slack", export)
    (outside / "2023-05-05.json").write_text('[{"ts": "1683244800.000100", "user": "U1", "text": "leaked"}]')
    (export / "general" / "2023-05-05.json").symlink_to(outside / "2023-05-05.json")
    docs, report = _load("slack_export", export)
    assert not any("leaked" in d.text for d in docs.values())
    assert "outside the export" in dict(report.skipped)["general/2023-05-05.json"]
    assert len(docs) == 4  # the fixture's own threads are all there


# ---------------------------------------------------------------- file names that are not UTF-8


def _bad_name(folder: Path, suffix: str, text: str) -> str:
    name = b"caf\xe9-latin1" + suffix.encode()  # Latin-1, not UTF-8
    try:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(text.encode())
    except OSError:  # pragma: no cover - a filesystem that refuses such names
        pytest.skip("this filesystem refuses non-UTF-8 file names")
    return os.fsdecode(name)


def test_non_utf8_file_name_is_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nA page.\n")
    _bad_name(root, ".md", "# Bad name\n\nIts content is fine.\n")
    docs, report = _load("docs", root)
    assert set(docs) == {"good.md"}
    ((name, why),) = report.skipped
    assert name == "caf\ufffd-latin1.md" and "not valid UTF-8" in why


def test_ingest_with_a_non_utf8_file_name_completes(tmp_path: Path) -> None:
    """Through the whole ingest (chunk cache keys, chunk table): the file is named, the rest indexed."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Caching\n\nTasks are cached with cache=True and a cache version.\n")
    _bad_name(root, ".md", "# Bad name\n\nIts content is fine.\n")
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\n')
    result = CliRunner().invoke(main, ["ingest", "--config", str(config), "--store", str(tmp_path / "store")],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "caf\ufffd-latin1.md" in result.output and "not valid UTF-8" in result.output


# ---------------------------------------------------------------- damaged zip exports


def _export_zip(target: Path, method: int = zipfile.ZIP_DEFLATED) -> Path:
    folder = FIXTURES / "sources" / "slack"
    with zipfile.ZipFile(target, "w", compression=method) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
    return target


def _damage_member(path: Path, member: str, at: int = 5) -> None:
    """Flip bytes inside one member's stored data (not its headers)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    for i in range(at, min(at + 4, info.compress_size)):
        data[start + i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["bad-crc", "corrupt-deflate"])
def test_corrupt_zip_member_is_reported_and_skipped(tmp_path: Path, method: int) -> None:
    target = _export_zip(tmp_path / "export.zip", method)
    damaged = "general/2023-01-02.json"
    _damage_member(target, damaged)
    docs, report = _load("slack_export", target)
    skipped = dict(report.skipped)
    assert "corrupt zip member" in skipped[damaged]
    assert "help/1675245600.000100" in docs  # the other channel is whole
    assert "general/1672567200.000100" in docs  # and the undamaged day of this one


def test_json_nested_thousands_deep_is_one_skipped_file(tmp_path: Path) -> None:
    """`[[[[…]]]]` 100,000 deep in one day file (or users.json) ended the whole ingest with a
    RecursionError traceback; now that file is skipped and listed, the rest indexed."""
    export = tmp_path / "export"
    shutil.copytree(FIXTURES / "sources" / "slack", export)
    (export / "general" / "2023-01-02.json").write_text("[" * 100_000 + "]" * 100_000)
    (export / "users.json").write_text("[" * 5_000 + "]" * 5_000)
    docs, report = _load("slack_export", export)
    skipped = dict(report.skipped)
    assert skipped["general/2023-01-02.json"] == skipped["users.json"] == "invalid JSON: nested too deeply"
    assert "help/1675245600.000100" in docs and "general/1672567200.000100" in docs


def test_not_a_zip_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "export.zip"
    bogus.write_bytes(b"this is not a zip archive\n" * 10)
    with pytest.raises(ConfigError, match=r"export\.zip is not a readable zip file"):
        _load("slack_export", bogus)


def test_truncated_zip_through_the_cli_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    target = _export_zip(tmp_path / "export.zip")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "slack"\nkind = "slack_export"\npath = "export.zip"\n')
    result = CliRunner().invoke(main, ["ingest", "--config", str(config), "--store", str(tmp_path / "store"),
                                       "--quiet"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert "source 'slack'" in result.output and "export.zip is not a readable zip file" in result.output


# ---------------------------------------------------------------- one display-name rule


def test_one_display_name_rule_for_exports_and_the_web_api() -> None:
    d = Directory()
    d.add_user({"id": "U1", "name": "acct", "real_name": "Top Real", "profile": {"display_name": "", "real_name": "Prof Real"}})
    d.add_user({"id": "U2", "name": "acct2", "profile": {}})
    d.add_user({"id": "U3"})
    d.add_user({"id": "B1", "name": "bot", "is_bot": True})
    d.add_user({"name": "no id"})
    assert d.users == {"U1": "Prof Real", "U2": "acct2", "U3": "U3", "B1": "bot"}
    assert d.bots == {"B1"}
    # a message's user_profile (a user unknown to the directory) follows the same rule
    assert d.user("U9", {"display_name": "", "real_name": "Ann", "name": "ann"}) == "Ann"
    assert display_name({"profile": {"display_name": "Dee"}, "real_name": "D"}) == "Dee"


def test_names_and_titles_from_the_corpus_are_printed_as_text(tmp_path: Path) -> None:
    """A skipped file named `a[/b]c.md` and a page titled with `[/b]` once crashed rich's markup."""
    root = tmp_path / "docs"
    (root / "a[").mkdir(parents=True)
    (root / "a[" / "b]c.md").write_bytes(b"\0binary")
    (root / "page.md").write_text("# Closing [/b] tags\n\nRich markup in a heading about tasks and caching.\n")
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\n')
    store = str(tmp_path / "store")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", "--config", str(config), "--store", store, "--quiet"],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "a[/b]c.md: binary file" in result.output
    result = runner.invoke(main, ["search", "closing tags", "--config", str(config), "--store", store],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "Closing [/b] tags" in result.output


@pytest.mark.parametrize("packed", [True, False], ids=["zip", "folder"])
def test_an_oversized_export_file_is_skipped_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packed: bool
) -> None:
    """A zip bomb (a member that inflates to gigabytes) or a huge file in an export folder is
    refused by its size before it is read into memory; the rest of the export is indexed."""
    from flytegpt.ingest.sources import slack_export

    folder = tmp_path / "export"
    shutil.copytree(FIXTURES / "sources" / "slack", folder)
    big = folder / "general" / "2023-01-02.json"
    big.write_text("[" + ",".join(['{"type": "message", "text": "x", "ts": "1672653600.000100"}'] * 2000) + "]")
    monkeypatch.setattr(slack_export, "MAX_MEMBER_BYTES", 50_000)  # the file is ~120 KB, 1 KB zipped
    source = folder
    if packed:
        source = tmp_path / "export.zip"
        with zipfile.ZipFile(source, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(folder).as_posix())
        assert zipfile.ZipFile(source).getinfo("general/2023-01-02.json").compress_size < 50_000

    # never inflated or read whole: its size alone refuses it
    real_zip_read, real_read_bytes = zipfile.ZipFile.read, Path.read_bytes

    def zip_read(self, name, *args, **kwargs):
        assert not str(name).endswith("general/2023-01-02.json"), "the oversized member was inflated"
        return real_zip_read(self, name, *args, **kwargs)

    def read_bytes(self):
        assert self != big, "the oversized file was read"
        return real_read_bytes(self)

    monkeypatch.setattr(zipfile.ZipFile, "read", zip_read)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    docs, report = _load("slack_export", source)
    assert "larger than" in dict(report.skipped)["general/2023-01-02.json"]
    assert "help/1675245600.000100" in docs and "general/1672567200.000100" in docs


def test_a_slack_export_with_half_an_emoji_is_ingested_and_searchable(tmp_path: Path) -> None:
    """JSON can spell one half of a surrogate pair ("\\ud83d" alone, text cut mid-emoji); Python
    reads it as a str no UTF-8 encoder accepts. It ended the whole ingest ("surrogates not
    allowed") from the tokenizer; now it reads as U+FFFD, here and in a search of it."""
    export = tmp_path / "export"
    (export / "gen\\ud83d").mkdir(parents=True)
    (export / "users.json").write_text('[{"id": "U1", "name": "ann\\udfff"}]')
    (export / "channels.json").write_text('[{"id": "C1", "name": "gen\\ud83d"}]')
    (export / "gen\\ud83d" / "2024-01-01.json").write_text(
        '[{"type": "message", "user": "U1", "ts": "1700000000.000100", "thread_ts": "1700000000.000100",'
        ' "text": "How do I cache a task \\ud83d?"},'
        ' {"type": "message", "user": "U1", "ts": "1700000001.000100", "thread_ts": "1700000000.000100",'
        ' "text": "Set cache=True and a cache_version \\udc00"}]')
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "s"\nkind = "slack_export"\npath = "export"\n')
    store = str(tmp_path / "store")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", "--config", str(config), "--store", store, "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["search", "cache a task \udcff", "--config", str(config), "--store", store],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "How do I cache a task \ufffd?" in result.output
