"""Slack export loader: threads, names, noise, permalinks, malformed day files, zip layouts."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source
from support.paths import FIXTURES

FIXTURE = FIXTURES / "sources" / "slack"
T1 = "1672567200.000100"
T2 = "1675245600.000100"


def _load(path: Path, workspace_url: str | None = "https://acme.slack.com"):
    source = SourceConfig(name="s", kind="slack_export", path=path, workspace_url=workspace_url)
    report = LoadReport()
    return {d.locator: d for d in load_source(source, report)}, report


def _zip(folder: Path, target: Path, top: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, top + f.relative_to(folder).as_posix())
    return target


def test_one_document_per_thread_with_replies_across_day_files():
    docs, report = _load(FIXTURE)
    assert set(docs) == {
        f"general/{T1}",
        "general/1672620000.000600",
        "general/1672620100.000700",
        f"help/{T2}",
    }
    thread = docs[f"general/{T1}"]
    assert thread.source_id == f"s:general/{T1}"
    assert thread.kind == "slack"
    messages = thread.text.split("\n\n")
    assert [m.split(":", 1)[0] for m in messages] == ["alice", "Bob B", "alice"]
    assert messages[-1] == "alice: Thanks, that worked!"  # from the next day's file
    assert thread.meta["reply_count"] == 2
    assert thread.meta["channel"] == "general"
    assert thread.meta["thread_ts"] == T1
    assert thread.meta["date"] == "2023-01-01"
    assert report.documents == 4


def test_mentions_and_markup_become_readable():
    docs, _ = _load(FIXTURE)
    text = docs[f"general/{T1}"].text
    assert "<@" not in text and "&amp;" not in text and "&lt;" not in text
    assert "cc @Bob B" in text and ", @alice." in text
    assert "the docs (https://example.org/docs)" in text
    assert "#help" in text and "@here" in text
    assert "second line & more" in text and "<and>" in text
    assert "https://example.org/caching" in text


def test_authors_fall_back_to_profile_then_id():
    docs, _ = _load(FIXTURE)
    assert docs["general/1672620000.000600"].text.startswith("carol: ")
    assert docs["general/1672620100.000700"].text.startswith("U9: ")


def test_noise_and_bots_are_dropped():
    docs, _ = _load(FIXTURE)
    everything = "\n".join(d.text for d in docs.values())
    for noise in ("has joined", "has left", "build passed", "I am a bot user"):
        assert noise not in everything


def test_title_is_the_first_line_of_the_parent():
    docs, _ = _load(FIXTURE)
    assert docs[f"general/{T1}"].title == "How do I cache a task?"  # first sentence of the first line
    assert docs[f"help/{T2}"].title == "Pods fail with OOMKilled"


def test_permalinks():
    docs, _ = _load(FIXTURE)
    assert docs[f"general/{T1}"].url == "https://acme.slack.com/archives/C100/p1672567200000100"
    # a message without replies is its own thread and gets a permalink too
    assert docs["general/1672620000.000600"].url == "https://acme.slack.com/archives/C100/p1672620000000600"
    assert docs[f"help/{T2}"].url == "https://acme.slack.com/archives/C200/p1675245600000100"


def test_without_workspace_url_the_url_still_opens_the_channel():
    docs, _ = _load(FIXTURE, workspace_url=None)
    url = docs[f"general/{T1}"].url
    assert url.startswith("https://") and "C100" in url


def test_malformed_day_files_are_reported_and_skipped():
    docs, report = _load(FIXTURE)
    skipped = dict(report.skipped)
    assert "invalid JSON" in skipped["general/2023-01-03.json"]
    assert "list" in skipped["help/2023-02-02.json"]
    assert "ts" in skipped["help/2023-02-03.json"]
    assert "help/notes.txt" not in skipped  # not JSON: not part of the export, silently ignored
    assert f"help/{T2}" in docs  # the rest of the channel is ingested


def test_messages_without_a_timestamp_are_left_out_and_the_rest_of_their_day_kept(tmp_path):
    export = tmp_path / "export"
    shutil.copytree(FIXTURE, export)
    day = export / "help" / "2023-02-04.json"
    day.write_text(
        '[{"type": "message", "user": "U1", "text": "Why does my map task retry forever?", "ts": "1675500000.000100"},'
        ' "not a message", {"type": "message", "user": "U2", "text": "lost ts", "ts": {"n": 1}},'
        ' {"type": "message", "user": "U2", "text": "Set retries=0 on the task.", "ts": "1675500060.000100",'
        ' "thread_ts": "1675500000.000100"}]'
    )
    docs, report = _load(export)
    thread = docs["help/1675500000.000100"]
    assert "map task retry forever" in thread.text and "retries=0" in thread.text
    assert "lost ts" not in thread.text
    assert "2 of 4 messages left out" in dict(report.skipped)["help/2023-02-04.json"]


def test_zip_and_folder_give_the_same_documents(tmp_path):
    folder_docs, folder_report = _load(FIXTURE)
    zip_docs, zip_report = _load(_zip(FIXTURE, tmp_path / "export.zip"))
    assert zip_docs == folder_docs
    assert sorted(zip_report.skipped) == sorted(folder_report.skipped)


def test_zip_with_everything_under_one_top_folder(tmp_path):
    path = _zip(FIXTURE, tmp_path / "export.zip", top="Acme Slack export Jan 1 2023/")
    docs, _ = _load(path)
    folder_docs, _ = _load(FIXTURE)
    assert docs == folder_docs


def test_zip_with_a_top_folder_and_no_metadata_files(tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(FIXTURE / "help", bare / "help")
    docs, _ = _load(_zip(bare, tmp_path / "bare.zip", top="export/"))
    assert set(docs) == {f"help/{T2}"}
    assert docs[f"help/{T2}"].text.startswith("U2: ")  # no users.json: ids stay


@pytest.mark.parametrize("zipped", [False, True])
def test_macos_junk_is_ignored(tmp_path, zipped):
    folder = tmp_path / "export"
    shutil.copytree(FIXTURE, folder)
    (folder / "__MACOSX" / "general").mkdir(parents=True)
    (folder / "__MACOSX" / "general" / "2023-01-01.json").write_bytes(b"\x00\x05junk")
    path = _zip(folder, tmp_path / "export.zip") if zipped else folder
    docs, report = _load(path)
    assert len(docs) == 4
    assert not any("__MACOSX" in name for name, _ in report.skipped)


@pytest.mark.parametrize("channels", [None, '{"a": 1}', "[{not json", '"general"'],
                         ids=["missing", "an object", "not JSON", "a string"])
def test_an_export_without_a_usable_channels_json_keeps_its_threads_and_says_they_cannot_be_linked(
        tmp_path, channels):
    """Every thread's URL became a dead `slack:<ts>` with no word in the ingest report."""
    export = tmp_path / "export"
    shutil.copytree(FIXTURE, export)
    if channels is None:
        (export / "channels.json").unlink()
    else:
        (export / "channels.json").write_text(channels)
    docs, report = _load(export)
    assert len(docs) == 4 and docs[f"general/{T1}"].url == f"slack:{T1}"  # indexed all the same
    notes = dict(report.notes)
    assert notes["channels.json"].startswith("missing or not a list of channels: thread links cannot be built")
    assert not any(name.endswith("/") for name in notes)  # said once, not once per channel
    assert [name for name, _ in report.skipped].count("channels.json") <= 1  # a broken file read once


def test_channel_entries_that_are_no_channel_name_and_id_are_left_out_and_named(tmp_path):
    """A name like `../../etc` (or an id like `../x`) never reaches a URL, a title or a path."""
    export = tmp_path / "export"
    shutil.copytree(FIXTURE, export)
    (export / "channels.json").write_text(
        '[{"id": "C100", "name": "../../etc"}, {"id": "../x", "name": "help"}, {"id": "C300", "name": "ok-name"}]')
    docs, report = _load(export)
    assert len(docs) == 4
    assert all(d.url.startswith("slack:") for d in docs.values())
    assert not any("etc" in d.text + d.title or "../" in d.url for d in docs.values())
    notes = dict(report.notes)
    assert "'../../etc' (id 'C100')" in notes["channels.json"] and "'help' (id '../x')" in notes["channels.json"]
    assert "not a channel name and id" in notes["channels.json"]
    assert notes["general/"].startswith("not in channels.json or groups.json: thread links cannot be built")
    assert "help/" in notes


def test_metadata_files_saved_with_a_utf8_bom_are_read(tmp_path):
    """A channels.json re-saved by a Windows editor was `invalid JSON: Unexpected UTF-8 BOM`."""
    export = tmp_path / "export"
    shutil.copytree(FIXTURE, export)
    for name in ("channels.json", "users.json"):
        (export / name).write_bytes(b"\xef\xbb\xbf" + (FIXTURE / name).read_bytes())
    docs, report = _load(export)
    assert docs[f"general/{T1}"].url == "https://acme.slack.com/archives/C100/p1672567200000100"
    assert report.notes == [] and "channels.json" not in dict(report.skipped)


def test_a_sound_export_has_no_notes():
    _, report = _load(FIXTURE)
    assert report.notes == []


def test_ids_in_permalinks_are_escaped():
    from flytegpt.ingest.sources.slack_export import permalink

    assert permalink("https://acme.slack.com", "../../x", "1.2") == "https://acme.slack.com/archives/..%2F..%2Fx/p12"
    assert permalink(None, "C1", "1.2", team="../T?x") == "https://app.slack.com/client/..%2FT%3Fx/C1/thread/C1-1.2"


def _with_private_parts(tmp_path: Path) -> Path:
    """The fixture export as a Business+ export has it: a private channel, a DM and a group DM."""
    import json

    root = tmp_path / "export"
    shutil.copytree(FIXTURE, root)
    day = [{"type": "message", "user": "U1", "text": "our prod signing secret leaked, rotate it", "ts": T1}]
    for folder in ("security-incidents", "D0PRIVATE1", "mpdm-alice--bob-1"):
        (root / folder).mkdir()
        (root / folder / "2023-01-01.json").write_text(json.dumps(day))
    (root / "groups.json").write_text(json.dumps([{"id": "G0SEC", "name": "security-incidents"}]))
    (root / "dms.json").write_text(json.dumps([{"id": "D0PRIVATE1", "members": ["U1", "U2"]}]))
    (root / "mpims.json").write_text(json.dumps([{"id": "G0MP", "name": "mpdm-alice--bob-1"}]))
    return root


def _channels_of(root: Path, **settings) -> tuple[set[str], LoadReport]:
    source = SourceConfig(name="s", kind="slack_export", path=root, **settings)
    report = LoadReport()
    return {d.meta["channel"] for d in load_source(source, report)}, report


def test_private_channels_and_direct_messages_are_not_indexed(tmp_path):
    """An owner's export holds private channels and DMs; before, they were indexed and quoted to
    anyone, and `channels`, `include` and `exclude` were accepted and did nothing."""
    root = _with_private_parts(tmp_path)
    channels, report = _channels_of(root)
    assert channels == {"general", "help"}
    skipped = dict(report.skipped)
    assert skipped["D0PRIVATE1/"] == skipped["mpdm-alice--bob-1/"] == "a direct message: never indexed"
    assert "private_channels = true" in skipped["security-incidents/"]

    channels, _ = _channels_of(root, private_channels=True)
    assert channels == {"general", "help", "security-incidents"}  # DMs still never

    channels, report = _channels_of(root, channels=["help", "#nope"])
    assert channels == {"help"} and "not a channel folder" in dict(report.skipped)["nope"]
    assert _channels_of(root, channels=["C100"])[0] == {"general"}  # by id too
    assert _channels_of(root, exclude=["help"])[0] == {"general"}
    channels, report = _channels_of(root, include=["general/2023-01-0[12].json"])
    assert channels == {"general"} and report.left_out >= 3


def test_a_dm_folder_without_dms_json_is_still_never_indexed(tmp_path):
    root = _with_private_parts(tmp_path)
    (root / "dms.json").unlink()
    (root / "mpims.json").unlink()
    assert _channels_of(root)[0] == {"general", "help"}


def test_a_channel_folder_channels_json_does_not_list_is_not_indexed_unless_named(tmp_path):
    """Before, with groups.json gone, a private channel's folder was indexed. In an
    export of private conversations (dms.json, mpims.json or groups.json beside channels.json) an
    unlisted folder is left out unless named; an export of public channels alone reads it."""
    root = _with_private_parts(tmp_path)
    (root / "groups.json").unlink()
    channels, report = _channels_of(root)
    assert channels == {"general", "help"}
    assert "not known to be public" in dict(report.skipped)["security-incidents/"]
    assert _channels_of(root, channels=["security-incidents"])[0] == {"security-incidents"}
    for meta in ("dms.json", "mpims.json"):
        (root / meta).unlink()
    assert "security-incidents" in _channels_of(root)[0]
