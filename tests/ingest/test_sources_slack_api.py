"""The `slack_api` source against the Slack emulator (real slack_sdk over HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from support.slack_emulator import SlackEmulator

from flytegpt.ingest.config import ConfigError, parse_config
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source

T0 = 1_700_000_000  # threads seeded at fixed times, long before "now"


def ts(seconds: int) -> str:
    return f"{T0 + seconds}.000100"


@pytest.fixture()
def emu(monkeypatch: pytest.MonkeyPatch):
    with SlackEmulator() as emu:
        emu.add_channel("C0SUP", "flyte-support")
        emu.add_channel("C0RND", "random", is_member=False)
        emu.add_user("U1", "ana")
        emu.add_user("U2", "dara")
        emu.add_user("UB", "somebot", is_bot=True)
        # a thread with replies (and a bot reply that must not be indexed)
        emu.seed_message("C0SUP", "How do I cache a task with a custom hash?", user="U1", ts=ts(0))
        emu.seed_message("C0SUP", "Use `HashMethod` in an Annotated type, <@U1>.", user="U2", ts=ts(60), thread_ts=ts(0))
        emu.seed_message("C0SUP", "beep", user="UB", ts=ts(90), thread_ts=ts(0), bot_id="B9")
        # a question nobody answered yet, and channel noise
        emu.seed_message("C0SUP", "Is there a way to retry only on OOM?", user="U2", ts=ts(3600))
        emu.seed_message("C0SUP", "", user="U2", ts=ts(3700), subtype="channel_join")
        emu.seed_message("C0GENERAL", "Welcome to the Flyte community!", user="U1", ts=ts(10))
        emu.seed_message("C0RND", "not readable: the bot is not here", user="U1", ts=ts(20))
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        yield emu


def source(tmp_path: Path, channels: list[str] | None = None):
    body = '[[sources]]\nname = "live"\nkind = "slack_api"\nworkspace_url = "https://flyte-org.slack.com"\n'
    if channels is not None:
        body += f"channels = {json.dumps(channels)}\n"
    return parse_config(tomllib.loads(body), tmp_path).sources[0]


def read(src, store: Path | None) -> tuple[list, LoadReport]:
    report = LoadReport()
    docs = list(load_source(src, report, store=None if store is None else str(store)))
    return docs, report


def test_one_document_per_thread_rendered_like_the_export(emu: SlackEmulator, tmp_path: Path) -> None:
    docs, report = read(source(tmp_path, ["flyte-support", "C0GENERAL"]), tmp_path / "store")
    by_id = {d.source_id: d for d in docs}
    assert set(by_id) == {f"live:flyte-support/{ts(0)}", f"live:flyte-support/{ts(3600)}", f"live:general/{ts(10)}"}
    thread = by_id[f"live:flyte-support/{ts(0)}"]
    assert thread.kind == "slack"
    assert thread.text == (
        "ana: How do I cache a task with a custom hash?\n\ndara: Use `HashMethod` in an Annotated type, @ana."
    )
    assert thread.title == "How do I cache a task with a custom hash?"
    assert thread.url == f"https://flyte-org.slack.com/archives/C0SUP/p{ts(0).replace('.', '')}"
    assert thread.meta["reply_count"] == 1 and thread.meta["channel_id"] == "C0SUP"
    assert report.documents == 3


def test_only_threads_with_new_activity_are_fetched_again(emu: SlackEmulator, tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = source(tmp_path, ["flyte-support"])
    first, _ = read(src, store)
    assert len(emu.calls_to("conversations.replies")) == 1  # only the thread that has replies
    cursor = json.loads((store / "cursors" / "live.json").read_text())
    assert cursor["channels"]["C0SUP"]["latest"] == f"{T0 + 3700}.000100"
    assert (store / "sources" / "live" / "threads.jsonl").is_file()

    # Nothing new: no replies fetched, the same documents (from the snapshot).
    again, _ = read(src, store)
    assert [d.to_dict() for d in again] == [d.to_dict() for d in first]
    assert len(emu.calls_to("conversations.replies")) == 1
    history = emu.calls_to("conversations.history")[-1].args
    assert float(history["oldest"]) == pytest.approx(T0 + 3700 - 30 * 86400, abs=1)  # cursor - lookback

    # A late reply to the old thread and a brand-new thread.
    emu.seed_message("C0SUP", "Thanks, that fixed it!", user="U1", ts=ts(7200), thread_ts=ts(0))
    emu.seed_message("C0SUP", "How do map tasks handle failures?", user="U1", ts=ts(7300))
    third, _ = read(src, store)
    replies = emu.calls_to("conversations.replies")
    assert len(replies) == 2 and replies[-1].args["ts"] == ts(0)
    texts = {d.locator: d.text for d in third}
    assert texts[f"flyte-support/{ts(0)}"].endswith("ana: Thanks, that fixed it!")
    assert f"flyte-support/{ts(7300)}" in texts
    assert f"flyte-support/{ts(3600)}" in texts  # unchanged, still indexed, not fetched


def test_without_configured_channels_reads_every_channel_the_bot_is_in(emu: SlackEmulator, tmp_path: Path) -> None:
    docs, report = read(source(tmp_path), None)
    assert {d.meta["channel"] for d in docs} == {"general", "flyte-support"}
    assert report.skipped == []


def test_unknown_or_unjoined_channels_are_reported(emu: SlackEmulator, tmp_path: Path) -> None:
    docs, report = read(source(tmp_path, ["random", "no-such-channel", "general"]), None)
    assert {d.meta["channel"] for d in docs} == {"general"}
    assert [name for name, _ in report.skipped] == ["random", "no-such-channel"]


def test_a_private_channel_the_bot_is_in_is_read_only_when_the_config_says_so(emu: SlackEmulator,
                                                                             tmp_path: Path) -> None:
    """Before, invited to a private channel, the bot indexed it and quoted it in public."""
    emu.add_channel("G0SEC", "security-incidents", is_private=True)
    emu.seed_message("G0SEC", "our prod signing secret leaked", user="U1", ts=ts(30))
    for channels in (None, ["security-incidents"]):
        docs, report = read(source(tmp_path, channels), None)
        assert "security-incidents" not in {d.meta["channel"] for d in docs}
        assert dict(report.skipped)["security-incidents"].endswith("private_channels = true")
    src = source(tmp_path).model_copy(update={"private_channels": True})
    assert "security-incidents" in {d.meta["channel"] for d in read(src, None)[0]}


def test_rate_limits_are_waited_out(emu: SlackEmulator, tmp_path: Path) -> None:
    emu.script_error("conversations.history", status=429, error="ratelimited", retry_after=1, times=1)
    emu.script_error("conversations.replies", status=429, error="ratelimited", retry_after=1, times=1)
    docs, _ = read(source(tmp_path, ["flyte-support"]), None)
    assert len(docs) == 2
    history = emu.calls_to("conversations.history")
    assert len(history) == 2 and history[1].at - history[0].at >= 0.9  # Retry-After honoured


def test_missing_token_is_a_configuration_error(emu: SlackEmulator, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN"):
        read(source(tmp_path), None)


def test_the_pipeline_collects_it_with_the_index_store(emu: SlackEmulator, tmp_path: Path) -> None:
    from flytegpt.ingest.pipeline import collect

    body = ('[index]\nstore = "store"\n[[sources]]\nname = "live"\nkind = "slack_api"\n'
            'channels = ["flyte-support"]\n')
    config = parse_config(tomllib.loads(body), tmp_path)
    docs, reports = collect(config, progress=False)
    assert len(docs) == 2 and reports["live"].documents == 2
    assert (tmp_path / "store" / "cursors" / "live.json").is_file()


def test_a_server_that_repeats_its_cursor_does_not_page_forever(
    emu: SlackEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in, proxy or bug that answers every page with the same `next_cursor`: slack_sdk
    would follow it forever; the read stops at the repeat, says so, and keeps what it got."""
    real_page = emu._page

    def stuck(key: str, items: list, args: dict) -> dict:
        page = real_page(key, items, args)
        if key == "channels":
            page["response_metadata"] = {"next_cursor": "dXNlcjo100"}
        return page

    monkeypatch.setattr(emu, "_page", stuck)
    docs, report = read(source(tmp_path, ["flyte-support"]), tmp_path / "store")
    assert "repeated the cursor" in dict(report.skipped)["conversations.list"]
    assert len(emu.calls_to("conversations.list")) == 2  # the first page and the one repeat
    assert {d.source_id for d in docs} == {f"live:flyte-support/{ts(0)}", f"live:flyte-support/{ts(3600)}"}


def test_responses_of_the_wrong_shape_read_as_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second stand-in that answers with what Slack never sends: numbers and strings among
    members, channels and messages, a channel id that is a number, a ts that is no number, a
    cursor that is a number (and repeats), half an emoji in a name and a message. The ingest
    read the whole source or nothing: it now keeps the one real thread."""
    from support.canned_slack import CannedSlack

    root = ts(0)
    with CannedSlack() as slack:
        slack.responses.update({
            "users.list": {"ok": True, "members": [5, {"id": ["U"]}, {"id": "U1", "name": "ana\ud83d", "profile": "p"}]},
            "conversations.list": {"ok": True, "channels": ["c", {"id": 5}, {"id": "C1", "name": "gen\ud83d",
                                                                             "is_member": True}]},
            "conversations.history": {"ok": True, "response_metadata": {"next_cursor": 5}, "messages": [
                7, {"ts": "soon"}, {"ts": root, "user": "U1", "text": "How do I cache a task \ud83d?", "reply_count": 2}]},
            "conversations.replies": {"ok": True, "messages": [
                {"ts": root, "user": "U1", "text": "How do I cache a task \ud83d?"},
                {"ts": ts(30), "user": "U1", "text": {"not": "text"}}, "x",
                {"ts": ts(60), "user": "U1", "text": "Set cache=True and a cache_version."}]},
        })
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", slack.url)
        docs, report = read(source(tmp_path), tmp_path / "store")
    [doc] = docs
    assert "How do I cache a task \ufffd?" in doc.text and "cache_version" in doc.text
    assert any("repeated the cursor '5'" in reason for _, reason in report.skipped)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_dry_run_reads_the_snapshot_and_writes_nothing(emu: SlackEmulator, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    store = tmp_path / "store"
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "live"\nkind = "slack_api"\nchannels = ["flyte-support"]\n')
    args = ["ingest", "--config", str(config), "--store", str(store), "--dry-run", "--json"]

    fresh = CliRunner().invoke(main, args)  # nothing in the store yet: every thread read from Slack
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout.strip().splitlines()[-1])["chunks"] >= 2
    assert not store.exists() or not _tree(store)

    read(source(tmp_path, ["flyte-support"]), store)  # a real collect: snapshot and cursor
    before = _tree(store)
    replies_before = len(emu.calls_to("conversations.replies"))
    emu.seed_message("C0SUP", "Can a launch plan take a default for a nested dataclass?", user="U1", ts=ts(7200))
    dry = CliRunner().invoke(main, args)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout.strip().splitlines()[-1])["sources"][0]["documents"] == 3  # the new thread too
    assert _tree(store) == before  # no cursor moved, no snapshot or lock written
    assert len(emu.calls_to("conversations.replies")) == replies_before  # the snapshot's threads were not re-read
