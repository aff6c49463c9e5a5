"""`flytegpt serve`: start-up checks, health/readiness/metrics, index arriving after start, clean logs."""

from __future__ import annotations

import io
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.slack_emulator import SlackEmulator
from support.slack_harness import CACHE_Q, build_sample_index

from flytegpt.bot.cli_serve import serve_cmd
from flytegpt.bot.logs import setup_logging
from flytegpt.bot.serve import BotServer
from flytegpt.bot.slack.client import SlackTokenError
from flytegpt.ingest.config import Settings, load_config, sample_config_path

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def built_store(tmp_path_factory, embedder) -> Path:
    store = tmp_path_factory.mktemp("store-built")
    build_sample_index(store, embedder)
    return store


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_missing_or_malformed_tokens_fail_at_start(tmp_path, monkeypatch):
    config = load_config(sample_config_path()).with_store(str(tmp_path))
    with pytest.raises(SlackTokenError, match="SLACK_APP_TOKEN"):
        BotServer(config, Settings(SLACK_BOT_TOKEN="xoxb-1"))
    result = CliRunner().invoke(serve_cmd, ["--config", str(sample_config_path()), "--store", str(tmp_path)],
                                env={"SLACK_BOT_TOKEN": None, "SLACK_APP_TOKEN": None})
    assert result.exit_code != 0 and "SLACK_BOT_TOKEN is not set" in result.output
    result = CliRunner().invoke(serve_cmd, ["--config", str(sample_config_path())],
                                env={"SLACK_BOT_TOKEN": "xoxp-user", "SLACK_APP_TOKEN": "xapp-1"})
    assert result.exit_code != 0 and "SLACK_BOT_TOKEN is malformed" in result.output


def test_tokens_slack_rejects_fail_at_start(tmp_path):
    config = load_config(sample_config_path()).with_store(str(tmp_path / "store"))
    config = config.model_copy(update={"bot": config.bot.model_copy(update={"feedback_db": str(tmp_path / "f.db")})})
    with SlackEmulator() as emu:
        emu.rejected_tokens = {"xoxb-revoked", "xapp-revoked"}
        for bot, app, var in (("xoxb-revoked", "xapp-ok", "SLACK_BOT_TOKEN"), ("xoxb-ok", "xapp-revoked", "SLACK_APP_TOKEN")):
            server = BotServer(config, Settings(SLACK_BOT_TOKEN=bot, SLACK_APP_TOKEN=app, SLACK_API_URL=emu.api_url),
                               port=0, host="127.0.0.1")
            with pytest.raises(SlackTokenError, match=f"Slack rejected {var}: invalid_auth"):
                server.start()
            server.stop()


def test_serve_health_ready_metrics_and_late_index(built_store, embedder, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    base = load_config(sample_config_path()).with_store(str(store))
    config = base.model_copy(update={"bot": base.bot.model_copy(update={
        "feedback_db": str(tmp_path / "fb.sqlite3"), "reload_interval_s": 0.2})})
    log_stream = io.StringIO()
    handler = setup_logging(level=logging.DEBUG, stream=log_stream)
    try:
        with SlackEmulator() as emu:
            settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                                SLACK_API_URL=emu.api_url)
            server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
            server.start()
            try:
                url = f"http://127.0.0.1:{server.http_port}"
                emu.wait_connected()
                assert _get(url + "/healthz") == (200, "ok\n")
                assert _get(url + "/readyz")[0] == 503
                # no index yet: a clear reply, not silence
                d = emu.mention(CACHE_Q)
                [reply] = emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts))
                assert "not ready" in reply["text"]

                # the first index is published after start: picked up without a restart
                version = (built_store / "LATEST").read_text().strip()
                shutil.copytree(built_store / version, store / version)
                (store / "LATEST").write_text(version + "\n")
                emu.wait_for(lambda: _get(url + "/readyz")[0] == 200, timeout=20)
                assert version in _get(url + "/readyz")[1]

                d = emu.mention(CACHE_Q)
                [answer] = emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=20)
                assert "cache" in answer["text"].lower()  # offline mode: no model configured, passages quoted

                status, metrics = _get(url + "/metrics")
                assert status == 200
                assert f'flytegpt_index_info{{version="{version}"}} 1.0' in metrics
                assert "flytegpt_index_reloads_total 1.0" in metrics
                assert 'flytegpt_questions_total{surface="mention"} 2.0' in metrics
                assert 'flytegpt_failures_total{reason="index_not_ready"} 1.0' in metrics
                assert 'flytegpt_answers_total{mode="offline"} 1.0' in metrics
                assert "flytegpt_answer_seconds_count 1.0" in metrics
                assert "flytegpt_socket_connected 1.0" in metrics
                assert _get(url + "/nope")[0] == 404
            finally:
                server.stop()
            assert emu.violations == []
    finally:
        logging.getLogger().removeHandler(handler)
    logs = log_stream.getvalue()
    assert "index version swapped in" in logs
    assert "test-token" not in logs  # tokens never reach the logs, even at DEBUG
