"""The Socket Mode hand-over (bot/slack/client.py) leans on internals of slack_sdk's websocket-client
client that no slack_sdk release promises. Measured: it works with every slack_sdk the project can
run on (3.37.0 to 3.48.0, each with the newest slack-bolt pip pairs with it; older ones lack the
Block Kit elements and streaming calls the bot uses). These tests keep it honest for the next ones:

- the installed slack_sdk has every internal the hand-over relies on: if a release moves one, the
  first test fails and says which, before any user sees a half-working client;
- a slack_sdk that moved one (simulated by subclasses of the real client that move it as a later
  release might) gets its own client, with one warning naming the version, and the bot still
  connects and acks events: it keeps working, without the seamless hand-over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.socket_mode.interval_runner import IntervalRunner
from slack_sdk.socket_mode.websocket_client import SocketModeClient
from support.slack_emulator import SlackEmulator
from support.slack_harness import CACHE_Q

from flytegpt.bot.slack.client import (
    SLACK_SDK_VERSION,
    HandoverSocketModeClient,
    HandoverUnsupported,
    handover_problems,
    socket_mode_handler,
)

pytestmark = pytest.mark.timeout(60)

LOGGER = "flytegpt.bot.slack.client"


# --- slack_sdk releases that moved an internal, as subclasses of the real client ----------------------


class RunnerReadsElsewhere(SocketModeClient):
    """A slack_sdk whose runner thread reads connections through a renamed method: the hand-over's
    no-op `_run_current_session` would no longer silence it, and two threads would read each socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current_session_runner.shutdown()
        self.current_session_runner = IntervalRunner(self._read_current_session, 0.5).start()

    def _read_current_session(self) -> None:
        SocketModeClient._run_current_session(self)


class LockRenamed(SocketModeClient):
    """A slack_sdk whose reconnects take a lock under another name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connect_lock = self.connect_operation_lock
        del self.connect_operation_lock

    def connect_to_new_endpoint(self, force: bool = False) -> None:
        with self._connect_lock:
            if force or not self.is_connected():
                self.wss_uri = self.issue_new_wss_url()
                self.connect()


MOVED = {
    RunnerReadsElsewhere: "current_session_runner does not run _run_current_session()",
    LockRenamed: "no connect_operation_lock",
}


# --- the check on the installed slack_sdk ------------------------------------------------------------


@pytest.fixture
def web_client() -> Iterator[WebClient]:
    emu = SlackEmulator().start()
    try:
        yield WebClient(token="xoxb-test", base_url=emu.api_url)
    finally:
        emu.stop()


def test_the_installed_slack_sdk_has_everything_the_hand_over_relies_on(web_client):
    client = SocketModeClient(app_token="xapp-test", web_client=web_client, ping_interval=1.0)
    try:
        problems = handover_problems(client)
    finally:
        client.close()
    assert problems == [], (
        f"slack_sdk {SLACK_SDK_VERSION} moved internals that HandoverSocketModeClient (bot/slack/client.py) relies "
        f"on: {problems}. The bot falls back to slack_sdk's own Socket Mode client (no seamless hand-over after "
        "Slack's `disconnect`): adapt the hand-over to this release, or cap slack-sdk below it in pyproject.toml")


def test_on_the_installed_slack_sdk_the_bot_gets_the_hand_over_without_a_warning(web_client, caplog):
    app = App(client=web_client, process_before_response=False, logger=logging.getLogger("test.bolt"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        handler = socket_mode_handler(app, "xapp-test", web_client, ping_interval=1.0)
    try:
        assert isinstance(handler.client, HandoverSocketModeClient)
        assert [r for r in caplog.records if r.name == LOGGER] == []
    finally:
        handler.client.close()


@pytest.mark.parametrize("moved", list(MOVED), ids=lambda c: c.__name__)
def test_the_check_names_what_a_release_moved(moved, web_client):
    client = moved(app_token="xapp-test", web_client=web_client, ping_interval=1.0)
    try:
        assert handover_problems(client) == [MOVED[moved]]
    finally:
        client.close()


# --- the fallback: the SDK's own client, one warning, a bot that works ----------------------------------


def _runner_threads() -> set[threading.Thread]:
    """slack_sdk's IntervalRunner threads (the runner, the message processor, the monitor)."""
    return {t for t in threading.enumerate() if t.name.endswith("(_run)")}


@pytest.mark.parametrize("moved", list(MOVED), ids=lambda c: c.__name__)
def test_a_slack_sdk_that_moved_an_internal_gets_its_own_client_with_one_warning_and_the_bot_works(moved, caplog):
    emu = SlackEmulator().start()
    web_client = WebClient(token="xoxb-test", base_url=emu.api_url)
    app = App(client=web_client, process_before_response=False, logger=logging.getLogger("test.bolt"))
    app.event("app_mention")(lambda ack: ack())
    before = _runner_threads()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        handler = socket_mode_handler(app, "xapp-test", web_client, ping_interval=1.0, sdk_client=moved)
    try:
        assert type(handler.client) is moved and not isinstance(handler.client, HandoverSocketModeClient)
        [warning] = [r for r in caplog.records if r.name == LOGGER]
        text = warning.getMessage()
        assert warning.levelno == logging.WARNING
        assert f"slack_sdk {SLACK_SDK_VERSION} " in text and MOVED[moved] in text
        assert "using slack_sdk's own Socket Mode client" in text and "The bot answers as usual" in text
        # the hand-over client that was built and checked left no thread behind: only the SDK
        # client's runner and message processor are new
        emu.wait_for(lambda: len(_runner_threads() - before) == 2, timeout=5)

        handler.connect()
        emu.wait_connected(1)
        # slack_sdk's own client can replace its first connection while it starts to read it (its
        # monitor runs at once and sees no socket yet): an event sent then is acked when Slack sends
        # it again (every 5 s here), as the SDK's client does without the hand-over; once it has
        # settled, events are acked at once
        d = emu.mention(CACHE_Q)
        emu.wait_ack(d.envelope_id, timeout=20.0)
        d = emu.mention(CACHE_Q + " (again)")
        assert emu.wait_ack(d.envelope_id, timeout=3.0).latency < 3.0
    finally:
        handler.client.auto_reconnect_enabled = False
        threading.Thread(target=handler.close, daemon=True).start()
        emu.stop()


def test_the_hand_over_refuses_to_run_on_a_moved_internal_rather_than_half_work(web_client):
    """What socket_mode_handler catches: constructing the hand-over on such a release raises."""
    handover_on_moved = type("HandoverOnMoved", (HandoverSocketModeClient, RunnerReadsElsewhere), {})
    with pytest.raises(HandoverUnsupported) as raised:
        handover_on_moved(app_token="xapp-test", web_client=web_client, ping_interval=1.0)
    assert raised.value.problems == [MOVED[RunnerReadsElsewhere]]
