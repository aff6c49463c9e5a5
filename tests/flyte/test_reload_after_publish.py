"""End to end: the Flyte ingest workflow publishes, the running bot hot-reloads, without a restart.

The bot is the real `flytegpt serve` server (BotServer: Socket Mode to the Slack emulator,
hot reload, the health endpoint the Kubernetes probes use). The workflow runs on flytekit's
local executor into the store the bot polls; /readyz goes from 503 to the new version, and a
second run with a changed page is swapped in while the bot keeps running.
"""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.slack_emulator import SlackEmulator

from flytegpt.ingest.config import Settings, load_config, sample_config_path

pytestmark = pytest.mark.slow  # runs the workflow: embeds real text


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_bot_hot_reloads_versions_the_workflow_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder
) -> None:
    from flytegpt.bot.serve import BotServer
    from flytegpt.flyte.ingest_wf import ingest_wf

    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shutil.copytree(sample_config_path().parent, tmp_path / "sample")
    config_path, store = tmp_path / "sample" / "flytegpt.toml", tmp_path / "store"
    # The bot's own configuration: the same store, its feedback DB, a fast poll, a free port.
    config = load_config(config_path).with_store(str(store))
    config = config.model_copy(update={"bot": config.bot.model_copy(update={
        "feedback_db": str(tmp_path / "feedback.sqlite3"), "reload_interval_s": 0.2, "http_port": 0})})

    with SlackEmulator() as emu:
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test", SLACK_APP_TOKEN="xapp-test", SLACK_API_URL=emu.api_url)
        server = BotServer(config, settings, host="127.0.0.1", embedder=embedder, ping_interval=1.0).start()
        try:
            base = f"http://127.0.0.1:{server.http_port}"
            wait_for(lambda: get(base + "/healthz")[0] == 200)
            assert get(base + "/readyz")[0] == 503  # nothing published yet

            first = ingest_wf(config_path=str(config_path), store=str(store))
            status, body = wait_for(lambda: (r := get(base + "/readyz"))[0] == 200 and r)
            assert body.strip() == f"ok {first}"

            page = sorted((config_path.parent / "docs").rglob("*.md"))[0]
            page.write_text(page.read_text() + "\n\n## Zebra scheduling\n\nQuokkas schedule zebras nightly.\n")
            second = ingest_wf(config_path=str(config_path), store=str(store))
            assert second != first
            wait_for(lambda: get(base + "/readyz")[1].strip() == f"ok {second}")
            hits = server.holder.get().keyword_search("quokkas zebras", k=1)
            assert "Quokkas schedule zebras" in hits[0].chunk.text
            assert "flytegpt_index_reloads_total 2.0" in get(base + "/metrics")[1]
        finally:
            server.handler.client.auto_reconnect_enabled = False
            server.stop()
