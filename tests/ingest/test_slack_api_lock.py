"""Two collects of one `slack_api` source on one store (a manual `flytegpt ingest`
beside the nightly Flyte run) take turns, so neither saves its snapshot under the other's cursor
and loses threads; a lock left by a killed collect does not block the next one.

Real slack_sdk against the Slack emulator on 127.0.0.1; a local store and an s3:// store (moto).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner
from support.slack_emulator import SlackEmulator

from flytegpt.ingest.config import parse_config
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources import load_source, slack_api
from flytegpt.ingest.store import StoreLockError, get_fs, join, read_bytes

T0 = 1_700_000_000
BUCKET = "flytegpt-slack-lock"


def ts(seconds: int) -> str:
    return f"{T0 + seconds}.000100"


def config_text(channels: list[str]) -> str:
    return ('[[sources]]\nname = "live"\nkind = "slack_api"\nworkspace_url = "https://flyte-org.slack.com"\n'
            f"channels = {json.dumps(channels)}\n")


def source(tmp_path: Path, channels: list[str]):
    return parse_config(tomllib.loads(config_text(channels)), tmp_path).sources[0]


def collect(src, store: str) -> list:
    return list(load_source(src, LoadReport(), store=store))


# Threads with replies (each costs one conversations.replies call when it is new): three in
# #flyte-support, and three in #deploy, a channel a year older, added to the config of one run only.
SUPPORT = [ts(400 * 86400 + i * 60) for i in range(3)]
DEPLOY = [ts(i * 60) for i in range(3)]


@pytest.fixture()
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackEmulator]:
    with SlackEmulator() as emu:
        emu.add_channel("C0SUP", "flyte-support")
        emu.add_channel("C0DEP", "deploy")
        emu.add_user("U1", "ana")
        emu.add_user("U2", "dara")
        for channel, roots in (("C0SUP", SUPPORT), ("C0DEP", DEPLOY)):
            for n, root in enumerate(roots):
                emu.seed_message(channel, f"question {n} in {channel}", user="U1", ts=root)
                emu.seed_message(channel, f"answer {n} in {channel}", user="U2", ts=f"{float(root) + 5:.6f}",
                                 thread_ts=root)
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        yield emu


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from support.moto_s3 import moto_endpoint

    with moto_endpoint(BUCKET) as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{tmp_path.name}/store"


def lock_path(store: str) -> str:
    fs, root = get_fs(store)
    return join(root, "sources", "live", slack_api.COLLECT_LOCK)


def test_two_collects_of_one_source_take_turns_and_keep_every_thread(
        emu: SlackEmulator, store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A manual run that added #deploy to the config and the nightly run without it, overlapping.
    The nightly run waits for the manual one, says so, and then starts from what that one saved:
    it fetches none of its threads again, and the snapshot and cursor both keep #deploy's."""
    manual, nightly = source(tmp_path, ["flyte-support", "deploy"]), source(tmp_path, ["flyte-support"])
    emu.delays["conversations.replies"] = 0.3  # the manual run is mid-crawl when the nightly one starts
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(name: str, src) -> None:
        try:
            results[name] = collect(src, store)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    caplog.set_level(logging.INFO)
    first = threading.Thread(target=run, args=("manual", manual))
    first.start()
    emu.wait_for(lambda: emu.calls_to("conversations.replies"))
    second = threading.Thread(target=run, args=("nightly", nightly))
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)
    assert not errors, errors

    waits = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1 and "for another collect of the slack_api source 'live'" in waits[0], waits
    assert len(emu.calls_to("users.list")) == 2
    # each thread was fetched once: the nightly run read the manual run's snapshot and cursor
    assert sorted(c.args["ts"] for c in emu.calls_to("conversations.replies")) == sorted(SUPPORT + DEPLOY)
    assert {d.meta["thread_ts"] for d in results["manual"]} == set(SUPPORT + DEPLOY)
    assert {d.meta["thread_ts"] for d in results["nightly"]} == set(SUPPORT)

    fs, _ = get_fs(store)
    fs.invalidate_cache()
    assert read_bytes(fs, lock_path(store)) is None  # released by both
    # the next run with #deploy in its config has every thread, and fetches nothing again
    emu.delays.clear()
    again = collect(manual, store)
    assert {d.meta["thread_ts"] for d in again} == set(SUPPORT + DEPLOY)
    assert len(emu.calls_to("conversations.replies")) == len(SUPPORT + DEPLOY)


def test_a_collect_that_cannot_get_the_lock_fails_naming_the_holder(
        emu: SlackEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collect running on another machine: the second waits COLLECT_LOCK_WAIT_S, then stops with
    an error that says what holds the lock, before any Slack call or write; `flytegpt ingest` shows it."""
    from flytegpt.bot.cli import main

    store = tmp_path / "store"
    lock = Path(lock_path(str(store)))
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "flyte-pod-7", "pid": 42, "token": "x", "at": time.time()}))
    monkeypatch.setattr(slack_api, "COLLECT_LOCK_WAIT_S", 0.5)
    with pytest.raises(StoreLockError, match=r"collect\.lock is held by flyte-pod-7 pid 42 since .*: another "
                                             r"collect of the slack_api source 'live' is running"):
        collect(source(tmp_path, ["flyte-support"]), str(store))
    assert emu.calls == []
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == ["collect.lock"]

    config = tmp_path / "flytegpt.toml"
    config.write_text(config_text(["flyte-support"]))
    result = CliRunner().invoke(main, ["ingest", "--config", str(config), "--store", str(store), "--quiet"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "another collect of the slack_api source 'live' is running" in errors[0], errors
    assert "Traceback" not in result.output


def test_a_lock_left_by_a_killed_collect_does_not_block(emu: SlackEmulator, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A collect SIGKILLed mid-crawl (an OOM-killed pod, Ctrl-\\) leaves its lock; the next collect
    breaks it at once (its process is gone) instead of waiting, and so does one on another host
    once the lock is older than LOCK_STALE_AFTER_S."""
    store = str(tmp_path / "store")
    src = source(tmp_path, ["flyte-support"])
    emu.delays["conversations.history"] = 60  # the killed run never gets past its first listing
    script = textwrap.dedent("""
        import sys, tomllib
        from pathlib import Path
        from flytegpt.ingest.config import parse_config
        from flytegpt.ingest.models import LoadReport
        from flytegpt.ingest.sources import load_source
        src = parse_config(tomllib.loads(sys.argv[1]), Path(sys.argv[2])).sources[0]
        list(load_source(src, LoadReport(), store=sys.argv[3]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, config_text(["flyte-support"]), str(tmp_path), store],
                            env=os.environ.copy())
    try:
        emu.wait_for(lambda: emu.calls_to("conversations.history"), timeout=60)
        assert Path(lock_path(store)).is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert Path(lock_path(store)).is_file()  # left behind
    emu.delays.clear()

    caplog.set_level(logging.INFO)
    started = time.monotonic()
    docs = collect(src, store)
    assert time.monotonic() - started < 30
    assert {d.meta["thread_ts"] for d in docs} == set(SUPPORT)
    assert any("breaking a stale lock" in r.getMessage() for r in caplog.records)
    assert not any("waiting up to" in r.getMessage() for r in caplog.records)
    assert not Path(lock_path(store)).exists()

    # another host's lock, renewed last an hour ago: its holder is gone too
    Path(lock_path(store)).write_text(json.dumps({"host": "flyte-pod-7", "pid": 42, "at": time.time() - 3600}))
    assert {d.meta["thread_ts"] for d in collect(src, store)} == set(SUPPORT)
    assert not Path(lock_path(store)).exists()
