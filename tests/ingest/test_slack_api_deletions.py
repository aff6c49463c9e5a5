"""The `slack_api` source forgets what was deleted or edited in Slack, at a bounded API cost.

Against the Slack emulator (real slack_sdk over HTTP on 127.0.0.1). Deleting and editing are done
on the emulator's channel state, as Slack's own clients would (a bot token deletes nothing else).
The source's clock is a fixed stand-in (`_now`), so the refresh is deterministic.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from support.slack_emulator import SlackEmulator

from flytegpt.ingest.config import parse_config
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source, slack_api

T0 = 1_700_000_000
DAY = 86400
NOW = T0 + 400 * DAY  # the first ingest's clock; each test moves it


def ts(seconds: int) -> str:
    return f"{T0 + seconds}.000100"


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(slack_api, "_now", c)
    return c


@pytest.fixture()
def emu(monkeypatch: pytest.MonkeyPatch):
    with SlackEmulator() as emu:
        emu.add_channel("C0SUP", "flyte-support")
        emu.add_user("U1", "ana")
        emu.add_user("U2", "dara")
        # a thread whose middle reply holds a secret, and one more thread with a reply
        emu.seed_message("C0SUP", "My S3 upload fails with 403, why?", user="U1", ts=ts(0))
        emu.seed_message("C0SUP", "my config: AWS_SECRET_ACCESS_KEY=SECRETMARKER", user="U1", ts=ts(60), thread_ts=ts(0))
        emu.seed_message("C0SUP", "Check the bucket policy, and please delete that key!", user="U2", ts=ts(120),
                         thread_ts=ts(0))
        emu.seed_message("C0SUP", "How do map tasks handle failures?", user="U2", ts=ts(1800))
        emu.seed_message("C0SUP", "Set min_success_ratio on the map task.", user="U1", ts=ts(1860), thread_ts=ts(1800))
        # a question nobody answered, with personal data in it
        emu.seed_message("C0SUP", "my home address is 1 Private Lane PRIVATEMARKER (oops)", user="U2", ts=ts(3600))
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        yield emu


def source(tmp_path: Path, extra: str = ""):
    body = ('[[sources]]\nname = "live"\nkind = "slack_api"\nworkspace_url = "https://flyte-org.slack.com"\n'
            f'channels = ["flyte-support"]\n{extra}')
    return parse_config(tomllib.loads(body), tmp_path).sources[0]


def ingest(tmp_path: Path, extra: str = "") -> tuple[dict[str, str], LoadReport]:
    """thread ts -> document text, after one run over the store in tmp_path."""
    report = LoadReport()
    docs = list(load_source(source(tmp_path, extra), report, store=str(tmp_path / "store")))
    return {d.meta["thread_ts"]: d.text for d in docs}, report


def snapshot(tmp_path: Path) -> str:
    return (tmp_path / "store" / "sources" / "live" / "threads.jsonl").read_text()


def delete(emu: SlackEmulator, *stamps: str) -> None:
    with emu._lock:
        msgs = emu.channels["C0SUP"].messages
        msgs[:] = [m for m in msgs if m["ts"] not in stamps]


def edit(emu: SlackEmulator, stamp: str, text: str) -> None:
    with emu._lock:
        for m in emu.channels["C0SUP"].messages:
            if m["ts"] == stamp:
                m["text"] = text
                m["edited"] = {"user": m["user"], "ts": ts(5000)}


def replies_calls(emu: SlackEmulator) -> list[str]:
    return [c.args["ts"] for c in emu.calls_to("conversations.replies")]


def test_an_unchanged_channel_makes_no_replies_call(emu: SlackEmulator, tmp_path: Path, clock: Clock) -> None:
    """Nor a thread of bot posts alone: it is no document, but the snapshot remembers it (it was
    read again on every run while in the lookback window)."""
    emu.add_user("UB", "somebot", is_bot=True)
    emu.seed_message("C0SUP", "Deploy finished", user="UB", ts=ts(2400), bot_id="B9")
    emu.seed_message("C0SUP", "Logs attached", user="UB", ts=ts(2460), thread_ts=ts(2400), bot_id="B9")
    first, _ = ingest(tmp_path)
    assert ts(2400) not in first
    assert sorted(replies_calls(emu)) == [ts(0), ts(1800), ts(2400)]  # the three threads with replies
    clock.now += DAY
    again, _ = ingest(tmp_path)
    assert again == first
    assert len(emu.calls_to("conversations.replies")) == 3  # none more
    assert len(emu.calls_to("conversations.history")) == 2  # one listing per run


@pytest.mark.parametrize("deleted", [ts(60), ts(120)], ids=["a-middle-reply", "the-last-reply"])
def test_a_reply_deleted_after_an_ingest_is_gone_after_the_next(emu: SlackEmulator, tmp_path: Path, clock: Clock,
                                                                deleted: str) -> None:
    """A middle reply: `reply_count` falls, `latest_reply` stays; the last one: `latest_reply`
    moves back. Neither is activity after the cursor; both are a difference."""
    first, _ = ingest(tmp_path)
    assert "SECRETMARKER" in first[ts(0)]
    delete(emu, deleted)
    clock.now += DAY
    second, _ = ingest(tmp_path)
    assert replies_calls(emu)[2:] == [ts(0)]  # that thread alone is read again
    kept = {ts(60): "delete that key", ts(120): "SECRETMARKER"}[deleted]
    assert kept in second[ts(0)] and second[ts(0)].count("\n\n") == 1
    gone = {ts(60): "SECRETMARKER", ts(120): "delete that key"}[deleted]
    assert gone not in second[ts(0)] and gone not in snapshot(tmp_path)
    assert second[ts(1800)] == first[ts(1800)]
    clock.now += DAY
    ingest(tmp_path)
    assert len(replies_calls(emu)) == 3  # and not again


def test_every_reply_deleted_leaves_the_parent_alone_without_a_call(emu: SlackEmulator, tmp_path: Path,
                                                                    clock: Clock) -> None:
    ingest(tmp_path)
    delete(emu, ts(60), ts(120))
    second, _ = ingest(tmp_path)
    assert second[ts(0)] == "ana: My S3 upload fails with 403, why?"
    assert len(replies_calls(emu)) == 2  # the listing shows the whole thread now
    assert "SECRETMARKER" not in snapshot(tmp_path)


def test_a_deleted_parent_takes_its_thread_out(emu: SlackEmulator, tmp_path: Path, clock: Clock) -> None:
    first, _ = ingest(tmp_path)
    assert "PRIVATEMARKER" in first[ts(3600)]
    delete(emu, ts(3600))  # a lone message
    delete(emu, ts(0), ts(60), ts(120))  # a parent with its replies
    second, _ = ingest(tmp_path)
    assert set(second) == {ts(1800)}
    assert "PRIVATEMARKER" not in snapshot(tmp_path) and "SECRETMARKER" not in snapshot(tmp_path)
    assert len(replies_calls(emu)) == 2  # the listing's absence is enough


def test_a_parent_deleted_under_its_replies_leaves_the_replies(emu: SlackEmulator, tmp_path: Path,
                                                               clock: Clock) -> None:
    """Slack keeps a thread whose parent is deleted as a `tombstone` parent with its replies."""
    ingest(tmp_path)
    with emu._lock:
        parent = next(m for m in emu.channels["C0SUP"].messages if m["ts"] == ts(0))
        parent.update(subtype="tombstone", text="This message was deleted.", user="USLACKBOT")
    second, _ = ingest(tmp_path)
    assert replies_calls(emu)[2:] == [ts(0)]
    assert "403" not in second[ts(0)] and second[ts(0)].startswith("ana: my config")


def test_an_edited_reply_is_replaced_by_the_refresh(emu: SlackEmulator, tmp_path: Path, clock: Clock) -> None:
    """An edited reply changes nothing its parent shows: the slow refresh reads the thread again
    once its copy is `refresh_after_days` old."""
    ingest(tmp_path)
    edit(emu, ts(60), "my config: AWS_SECRET_ACCESS_KEY=(removed)")
    clock.now += DAY
    soon, _ = ingest(tmp_path)
    assert "SECRETMARKER" in soon[ts(0)] and len(replies_calls(emu)) == 2  # not seen yet: no call
    clock.now = NOW + source(tmp_path).refresh_after_days * DAY
    later, _ = ingest(tmp_path)
    assert sorted(replies_calls(emu)[2:]) == [ts(0), ts(1800)]
    assert "SECRETMARKER" not in later[ts(0)] and "=(removed)" in later[ts(0)]
    assert "SECRETMARKER" not in snapshot(tmp_path)
    # a parent edited: the listing shows it (and a lone message is rebuilt from it, no call)
    edit(emu, ts(3600), "where do I set my home address?")
    clock.now += DAY
    last, _ = ingest(tmp_path)
    assert last[ts(3600)] == "dara: where do I set my home address?" and len(replies_calls(emu)) == 4


def test_the_refresh_is_bounded_and_reads_the_longest_unread_first(emu: SlackEmulator, tmp_path: Path,
                                                                   clock: Clock,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    emu.seed_message("C0SUP", "Does caching work with map tasks?", user="U1", ts=ts(7200))
    emu.seed_message("C0SUP", "Yes, per item.", user="U2", ts=ts(7260), thread_ts=ts(7200))
    two = "refresh_per_run = 2\n"
    ingest(tmp_path, two)
    assert len(replies_calls(emu)) == 3
    clock.now += 31 * DAY
    ingest(tmp_path, two)
    assert replies_calls(emu)[3:] == [ts(0), ts(1800)]  # all due: two of them, in key order
    clock.now += 1
    ingest(tmp_path, two)
    assert replies_calls(emu)[5:] == [ts(7200)]  # the third, read longest ago
    clock.now += 1
    ingest(tmp_path, two)
    assert len(replies_calls(emu)) == 6  # nothing due


def test_the_refresh_reaches_threads_older_than_the_lookback(emu: SlackEmulator, tmp_path: Path,
                                                             clock: Clock) -> None:
    """Once the cursor has moved past `reply_lookback_days`, the listing no longer covers a thread:
    its deletion (or a deleted reply) is found by the refresh."""
    ingest(tmp_path)
    emu.seed_message("C0SUP", "Any news on the 1.14 release?", user="U1", ts=ts(60 * DAY))
    ingest(tmp_path)
    history = emu.calls_to("conversations.history")[-1].args
    delete(emu, ts(3600), ts(60))
    clock.now += DAY
    third, _ = ingest(tmp_path)
    assert float(emu.calls_to("conversations.history")[-1].args["oldest"]) > T0 + 3600
    assert float(history["oldest"]) < T0  # (the second run still covered them)
    assert "PRIVATEMARKER" in third[ts(3600)] and "SECRETMARKER" in third[ts(0)]  # not listed: unknown
    clock.now = NOW + 31 * DAY
    fourth, _ = ingest(tmp_path)
    assert ts(3600) not in fourth and "SECRETMARKER" not in fourth[ts(0)]
    assert "PRIVATEMARKER" not in snapshot(tmp_path) and "SECRETMARKER" not in snapshot(tmp_path)
    assert set(fourth) == {ts(0), ts(1800), ts(60 * DAY)}


def test_a_listing_cut_short_deletes_nothing(emu: SlackEmulator, tmp_path: Path, clock: Clock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A history listing that stopped early (a repeated cursor) cannot tell a deleted parent from
    one it did not reach: the snapshot keeps everything until a complete listing."""
    emu.max_page = 2
    ingest(tmp_path)
    delete(emu, ts(0), ts(60), ts(120))
    real_page = emu._page

    def stuck(key: str, items: list, args: dict) -> dict:
        page = real_page(key, items, args)
        if key == "messages" and "oldest" in args:
            page["response_metadata"] = {"next_cursor": "dXNlcjo2"}
            page["has_more"] = True
        return page

    monkeypatch.setattr(emu, "_page", stuck)
    kept, report = ingest(tmp_path)
    assert "repeated the cursor" in dict(report.skipped)["conversations.history"]
    assert ts(0) in kept
    monkeypatch.setattr(emu, "_page", real_page)
    gone, _ = ingest(tmp_path)
    assert ts(0) not in gone and set(gone) == {ts(1800), ts(3600)}


def test_a_snapshot_written_before_parents_were_kept(emu: SlackEmulator, tmp_path: Path, clock: Clock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run after the upgrade re-reads only threads that show a change (here fewer
    replies than the document has), takes the rest as they are, and compares from then on. Rows
    of the old format have no read time: the refresh reads them first (off here)."""
    off = "refresh_per_run = 0\n"
    emu.seed_message("C0SUP", "Or retries=3 on the task.", user="U2", ts=ts(1900), thread_ts=ts(1800))
    ingest(tmp_path, off)
    path = tmp_path / "store" / "sources" / "live" / "threads.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({"key": r["key"], "document": r["document"]}) + "\n"
                            for r in rows if r["document"] is not None))  # the old format
    delete(emu, ts(60))
    second, _ = ingest(tmp_path, off)
    assert replies_calls(emu)[2:] == [ts(0)] and "SECRETMARKER" not in second[ts(0)]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["parent"] is not None for r in rows)
    assert {r["key"] for r in rows if r["read_at"] is None} == {f"C0SUP/{ts(1800)}"}  # due for the refresh
    # from now on compared like any other: one reply deleted and one added, the count unchanged,
    # `latest_reply` still before the cursor
    delete(emu, ts(1860))
    emu.seed_message("C0SUP", "Or use a failure policy.", user="U1", ts=ts(1950), thread_ts=ts(1800))
    third, _ = ingest(tmp_path, off)
    assert replies_calls(emu)[3:] == [ts(1800)]
    assert "min_success_ratio" not in third[ts(1800)] and third[ts(1800)].endswith("ana: Or use a failure policy.")
