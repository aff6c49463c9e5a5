"""Socket Mode hand-over: how long an event waits for its ack right after Slack's `disconnect`.

    python tests/bench/bench_socket_handover.py [--rounds 10]

Slack asks a Socket Mode client to move to a new connection now and then (`disconnect`,
reason `refresh_requested`) and delivers the next events on the new one. Slack's limit for
an ack is 3 s. For each candidate client the bench connects a minimal Bolt app (one
listener that acks) to the Slack emulator, then repeats: ask it to refresh, time until the
new connection is open, send an event on it and time the ack; ask it to refresh again and
send an event 0.2 s later without waiting (what an asker sees: the time from the refresh to
the ack, or "not delivered" when no connection came up within the emulator's 10 s); plus
the same event on a settled connection as the reference. It also counts, per refresh, the
connections the emulator saw opened and the `apps.connections.open` calls. Candidates run
interleaved, round by round, on one machine and emulator.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from slack_bolt import App  # noqa: E402
from slack_sdk import WebClient  # noqa: E402
from support.slack_emulator import SlackEmulator  # noqa: E402


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _builtin(app: App, client: WebClient) -> Any:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    return SocketModeHandler(app, "xapp-bench", web_client=client, ping_interval=1.0)


def _websocket_client(app: App, client: WebClient) -> Any:
    from slack_bolt.adapter.socket_mode.websocket_client import SocketModeHandler

    return SocketModeHandler(app, "xapp-bench", web_client=client, ping_interval=1.0)


def _flytegpt(app: App, client: WebClient) -> Any:
    from flytegpt.bot.slack.client import socket_mode_handler

    return socket_mode_handler(app, "xapp-bench", client, ping_interval=1.0)


CANDIDATES: dict[str, Callable[[App, WebClient], Any]] = {
    "builtin (slack_sdk default)": _builtin,
    "websocket_client (slack_sdk as it is)": _websocket_client,
    "websocket_client + hand-over (bot/slack/client.py, what the bot runs)": _flytegpt,
}


class Rig:
    """One emulator + Bolt app + Socket Mode handler."""

    def __init__(self, name: str, make: Callable[[App, WebClient], Any]) -> None:
        self.name = name
        self.emu = SlackEmulator().start()
        client = WebClient(token="xoxb-bench", base_url=self.emu.api_url)
        app = App(client=client, process_before_response=False, logger=logging.getLogger("bench.bolt"))
        app.event("app_mention")(lambda ack: ack())
        self.handler = make(app, client)
        self.handler.connect()
        self.emu.wait_connected(1, timeout=10)
        self.settled: list[float] = []
        self.handover: list[float] = []
        self.asked: list[float] = []  # refresh -> ack of an event sent 0.2 s after it
        self.connected: list[float] = []  # refresh -> the new connection open (and one live)
        self.undelivered = 0  # events sent 0.2 s after a refresh that found no connection
        self.refreshes = 0
        self.opened = 0  # connections opened for those refreshes
        self.urls = 0  # apps.connections.open calls for those refreshes

    def round(self) -> None:
        d = self.emu.mention("settled connection")
        self.settled.append(self.emu.wait_ack(d.envelope_id, timeout=30).latency)
        before, urls = self.emu.connects, len(self.emu.calls_to("apps.connections.open"))
        t0 = time.monotonic()
        self.emu.send_disconnect("refresh_requested")
        self.connected.append(self._wait_new_connection(before) - t0)
        d = self.emu.mention("right after the hand-over")
        self.handover.append(self.emu.wait_ack(d.envelope_id, timeout=30).latency)
        time.sleep(0.5)  # let the old connection finish closing
        self.opened += self.emu.connects - before
        self.urls += len(self.emu.calls_to("apps.connections.open")) - urls
        before, urls = self.emu.connects, len(self.emu.calls_to("apps.connections.open"))
        t0 = time.monotonic()
        self.emu.send_disconnect("refresh_requested")
        time.sleep(0.2)
        try:
            d = self.emu.mention("asked 0.2 s after the refresh")
            self.asked.append(self.emu.wait_ack(d.envelope_id, timeout=30).at - t0)
        except TimeoutError:  # the emulator waited 10 s for a live connection
            self.undelivered += 1
        self._wait_new_connection(before)
        time.sleep(0.5)  # let the old connection finish closing before the next round
        self.opened += self.emu.connects - before
        self.urls += len(self.emu.calls_to("apps.connections.open")) - urls
        self.refreshes += 2

    def _wait_new_connection(self, before: int) -> float:
        """When the emulator first had a connection opened after `before` and one live."""
        self.emu.wait_for(lambda: self.emu.connects > before and self.emu.live_connections() > 0,
                          timeout=30, interval=0.002)
        return time.monotonic()

    def close(self) -> None:
        try:
            self.handler.client.auto_reconnect_enabled = False
            self.handler.close()
        except Exception:  # noqa: BLE001 - benchmark teardown
            pass
        self.emu.stop()


def _fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return f"p50 {statistics.median(xs) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   max {xs[-1] * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rigs = []
    for name, make in CANDIDATES.items():
        try:
            rigs.append(Rig(name, make))
        except ImportError as e:
            print(f"{name}: not available ({e})")
    try:
        for _ in range(args.rounds):
            for rig in rigs:  # interleaved: every candidate sees the same machine load
                rig.round()
    finally:
        for rig in rigs:
            rig.close()
    print(f"Socket Mode ack latency, {args.rounds} rounds, CPU: {_cpu()}")
    for rig in rigs:
        print(f"  {rig.name}")
        print(f"    settled connection:   {_fmt(rig.settled)}")
        print(f"    after refresh_requested: {_fmt(rig.handover)}")
        print(f"    refresh -> new connection open: {_fmt(rig.connected)}")
        asked = _fmt(rig.asked) if rig.asked else "-"
        print(f"    refresh -> ack of an event sent 0.2 s after it: {asked}   "
              f"not delivered {rig.undelivered}/{args.rounds}")
        n = max(1, rig.refreshes)
        print(f"    per refresh: {rig.opened / n:.2f} connections opened, "
              f"{rig.urls / n:.2f} apps.connections.open calls")


if __name__ == "__main__":
    main()
