"""Slack moves the bot to a new Socket Mode connection (`disconnect`: refresh_requested, warning)
and nobody asking right then waits: the real bot over the real slack_sdk client against the Slack
emulator on 127.0.0.1.

slack_sdk's websocket-client client as it is left the app without any connection for ~10.5 s after
about one refresh in three in a soak test; bot/slack/client.py opens the new connection, waits for
Slack's hello on it, and only then closes the old one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.slack_emulator import SlackEmulator
from support.slack_harness import CACHE_Q

from slack_bolt import App
from slack_sdk import WebClient

from flytegpt.bot.slack.client import socket_mode_handler

pytestmark = pytest.mark.timeout(120)

REFRESHES = 20


class _LiveCount:
    """The fewest live connections the emulator had while it watched (every 2 ms, on a thread)."""

    def __init__(self, emu: SlackEmulator) -> None:
        self.emu, self.fewest = emu, emu.live_connections()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.fewest = min(self.fewest, self.emu.live_connections())

    def __enter__(self) -> "_LiveCount":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _answered_at(emu: SlackEmulator, ts: str) -> float | None:
    posts = [c.at for c in emu.calls_to("chat.postMessage") if c.args.get("thread_ts") == ts]
    return min(posts) if posts else None


def test_twenty_refreshes_in_a_row_every_question_answered_within_2_s_once(make_harness):
    harness = make_harness()
    emu = harness.emu
    emu.wait_for(lambda: emu.live_connections() == 1)
    before = emu.connects
    asked: list[tuple[str, float]] = []
    with _LiveCount(emu) as live:
        for i in range(REFRESHES):
            emu.send_disconnect("warning" if i % 5 == 4 else "refresh_requested")
            time.sleep(0.2)
            sent = time.monotonic()
            # different people in different channels: one person's questions wait for each other
            # ([bot] user_in_flight) and a channel's answers are paced, which is not what this measures
            d = emu.mention(f"{CACHE_Q} (asked {i})", user=f"U0ASK{i:04d}", channel=f"C0ASK{i:04d}")
            emu.wait_ack(d.envelope_id, timeout=3.0)  # within Slack's limit for an ack
            asked.append((d.ts, sent))
        for ts, _ in asked:
            harness.wait_answers(thread_ts=ts, timeout=10)
        harness.idle()
    slow = {ts: round(_answered_at(emu, ts) - sent, 2) for ts, sent in asked if _answered_at(emu, ts) - sent > 2.0}
    assert slow == {}, f"answered more than 2 s after the question: {slow}"
    assert all(len(harness.answers(thread_ts=ts)) == 1 for ts, _ in asked)  # never twice
    assert emu.redeliveries == []  # no question waited for Slack to send it again
    assert live.fewest >= 1  # the new connection was up before the old one closed, every time
    assert emu.connects - before == REFRESHES  # one new connection per refresh, no second replacement
    emu.wait_for(lambda: emu.live_connections() == 1)  # the replaced ones are closed


def test_a_dropped_connection_still_reconnects_also_right_after_a_refresh(make_harness):
    harness = make_harness()
    emu = harness.emu
    for i, refresh_first in enumerate((False, True)):
        before = emu.connects
        if refresh_first:  # the network goes while the bot is moving to a new connection
            emu.send_disconnect("refresh_requested")
            time.sleep(0.05)
        emu.drop_connections()
        emu.wait_for(lambda: emu.connects > before and emu.live_connections() == 1, timeout=5)
        d = emu.mention(f"{CACHE_Q} (after drop {i})")
        assert emu.wait_ack(d.envelope_id, timeout=3.0).latency < 3.0
        harness.wait_answers(thread_ts=d.ts)


# --- the client alone: a minimal Bolt app that acks ------------------------------------------------------


@pytest.fixture
def rig() -> Iterator[tuple[SlackEmulator, Any]]:
    emu = SlackEmulator().start()
    client = WebClient(token="xoxb-test", base_url=emu.api_url)
    app = App(client=client, process_before_response=False, logger=logging.getLogger("test.bolt"))
    app.event("app_mention")(lambda ack: ack())
    handler = socket_mode_handler(app, "xapp-test", client, ping_interval=1.0)
    handler.connect()
    emu.wait_connected(1)
    try:
        yield emu, handler
    finally:
        handler.client.auto_reconnect_enabled = False
        threading.Thread(target=handler.close, daemon=True).start()
        emu.stop()


def test_socket_mode_down_is_retried_calmly_and_the_bot_comes_back(rig):
    emu, handler = rig
    emu.refuse_sockets = True  # Slack accepts the websocket and closes it at once, without hello
    before = emu.connects
    emu.drop_connections()
    time.sleep(2.0)
    assert not handler.client.is_connected()
    assert emu.connects - before <= 6  # about one try a ping_interval (1 s), not a loop
    emu.refuse_sockets = False
    emu.wait_for(lambda: emu.live_connections() == 1, timeout=5)
    d = emu.mention(CACHE_Q)
    assert emu.wait_ack(d.envelope_id, timeout=3.0).latency < 3.0


def test_close_during_a_refresh_leaves_no_connection_behind(rig):
    emu, handler = rig
    emu.send_disconnect("refresh_requested")
    handler.client.close()
    emu.wait_for(lambda: emu.live_connections() == 0, timeout=5)
    opened = emu.connects
    time.sleep(1.5)  # longer than ping_interval: nothing reconnects after close
    assert emu.live_connections() == 0 and emu.connects == opened
