"""`flytegpt serve`: start-up checks, health/readiness/metrics, index arriving after start, clean logs."""

from __future__ import annotations

import io
import os
import logging
import shutil
import urllib.error
import threading
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.openai_server import Hang, OpenAIStandIn
from support.paths import ROOT
from support.slack_emulator import SlackEmulator
from support.slack_harness import ANSWER, CACHE_Q

from flytegpt.bot import messages
from flytegpt.bot.cli_serve import serve_cmd
from flytegpt.bot.logs import setup_logging
from flytegpt.bot.serve import SHUTDOWN_OVERHEAD_S, BotServer
from flytegpt.bot.slack.client import SlackTokenError
from flytegpt.ingest.config import Config, ConfigError, Settings, load_config, sample_config_path

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _ready(port: int) -> bool:
    try:
        return _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    except OSError:  # not listening yet
        return False


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


def test_slack_out_of_reach_prints_only_the_error_line_unless_asked_for_debug(tmp_path):
    """As a process: slack_sdk's ERROR/INFO line for every failed try and retry came before the
    one Error line; -vv still shows them (with everything else at debug)."""
    import socket
    import subprocess
    import sys

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # a port nobody listens on
    url = f"http://127.0.0.1:{dead.getsockname()[1]}/api/"
    env = dict(os.environ, SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1", SLACK_API_URL=url,
               HF_HUB_OFFLINE="1")
    try:
        for verbose in ([], ["-vv"]):
            out = subprocess.run([sys.executable, "-m", "flytegpt.bot.cli", *verbose, "serve", "--config",
                                  str(sample_config_path()), "--store", str(tmp_path), "--port", "0"],
                                 env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            assert lines[-1].startswith(f"Error: cannot reach Slack's Web API at {url}: "), out.stderr
            retries = [line for line in lines if "retry" in line.lower() or "Failed to send a request" in line]
            if verbose:
                assert retries, out.stderr
            else:
                assert lines == lines[-1:], out.stderr
    finally:
        dead.close()


def test_slack_out_of_reach_or_a_taken_port_is_one_line_at_start(tmp_path):
    """A wrong SLACK_API_URL (or no network) printed ~100 lines of chained traceback after the
    retries, and a health port already in use `OSError: [Errno 98]` with its traceback."""
    import socket

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # a port nobody listens on
    url = f"http://127.0.0.1:{dead.getsockname()[1]}/api/"
    env = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1", "SLACK_API_URL": url}
    result = CliRunner().invoke(serve_cmd, ["--config", str(sample_config_path()), "--store", str(tmp_path),
                                            "--port", "0"], env=env)
    dead.close()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot reach Slack's Web API at {url}: " in result.output and "Connection refused" in result.output

    config = load_config(sample_config_path()).with_store(str(tmp_path / "store"))
    config = config.model_copy(update={"bot": config.bot.model_copy(update={"feedback_db": str(tmp_path / "f.db")})})
    with SlackEmulator() as emu, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = BotServer(config, Settings(SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1",
                                            SLACK_API_URL=emu.api_url), port=port, host="127.0.0.1")
        with pytest.raises(ConfigError, match=f"cannot serve /healthz and /metrics on 127.0.0.1:{port}: "
                                              "Address already in use"):
            server.start()


@pytest.mark.parametrize("args, env, message", [
    (["--port", "-1"], {}, "Error: --port -1 is not a TCP port: use 0-65535 (0 takes any free port)"),
    (["--port", "70000"], {}, "Error: --port 70000 is not a TCP port: use 0-65535 (0 takes any free port)"),
    ([], {"SLACK_API_URL": "not a url"}, "Error: SLACK_API_URL 'not a url' is not an http(s) URL: unset it for "
                                         "Slack's own (https://slack.com/api/) or give a base URL such as "
                                         "https://slack-gov.com/api/"),
], ids=["port -1", "port 70000", "malformed SLACK_API_URL"])
def test_a_port_out_of_range_or_a_malformed_slack_api_url_is_one_line_before_connecting(tmp_path, args, env, message):
    """`--port -1` ended in `OverflowError: bind(): port must be 0-65535` after Slack was connected,
    `SLACK_API_URL="not a url"` in `ValueError: unknown url type`, each with a full traceback."""
    with SlackEmulator() as emu:
        env = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1", "SLACK_API_URL": emu.api_url, **env}
        result = CliRunner().invoke(serve_cmd, ["--config", str(sample_config_path()), "--store", str(tmp_path),
                                                *args], env=env)
        assert result.exit_code == 1
        assert result.output.splitlines() == [message]
        assert emu.calls == [], "Slack was called before the settings were checked"


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

                # a streamed answer shows before it is complete (and counted): wait for the count
                emu.wait_for(lambda: 'flytegpt_answers_total{mode="offline"} 1.0' in _get(url + "/metrics")[1])
                status, metrics = _get(url + "/metrics")
                assert status == 200
                assert f'flytegpt_index_info{{version="{version}"}} 1.0' in metrics
                assert "flytegpt_index_reloads_total 1.0" in metrics
                assert 'flytegpt_questions_total{surface="mention"} 2.0' in metrics
                assert 'flytegpt_failures_total{reason="index_not_ready"} 1.0' in metrics
                assert 'flytegpt_answers_total{mode="offline"} 1.0' in metrics
                assert "flytegpt_answer_seconds_count 1.0" in metrics
                assert "flytegpt_socket_connected 1.0" in metrics
                assert "process_resident_memory_bytes " in metrics and "process_open_fds " in metrics
                assert "flytegpt_index_latest_served 1.0" in metrics and "flytegpt_store_latest_ok 1.0" in metrics
                assert _get(url + "/readyz") == (200, f"ok {version}\n")
                assert _get(url + "/nope")[0] == 404

                # LATEST names a version the bot cannot load: still ready (it answers), and it says so
                missing = "20990101T000000Z-0000abcd"
                (store / "LATEST").write_text(missing + "\n")
                emu.wait_for(lambda: "not served" in _get(url + "/readyz")[1], timeout=20)
                status, body = _get(url + "/readyz")
                assert status == 200 and body.startswith(f"ok {version}; LATEST names {missing}, which is not served")
                metrics = _get(url + "/metrics")[1]
                assert "flytegpt_index_latest_served 0.0" in metrics
                assert f'flytegpt_index_latest_info{{version="{missing}"}} 1.0' in metrics
                # the store loses LATEST: still ready, serving from memory, and it says so
                (store / "LATEST").unlink()
                emu.wait_for(lambda: "LATEST not found" in _get(url + "/readyz")[1], timeout=20)
                assert _get(url + "/readyz")[0] == 200
                assert "flytegpt_store_latest_ok 0.0" in _get(url + "/metrics")[1]
            finally:
                server.stop()
            assert emu.violations == []
    finally:
        logging.getLogger().removeHandler(handler)
    logs = log_stream.getvalue()
    assert "index version swapped in" in logs
    assert logs.count("LATEST not found in") == 2  # once before the first index, once when it went
    assert "test-token" not in logs  # tokens never reach the logs, even at DEBUG


def test_healthz_gives_slack_time_to_come_back_before_the_pod_is_restarted(built_store, embedder, tmp_path):
    """/healthz is the pod's liveness: while slack_sdk reconnects after a lost connection it
    stays ok for [bot] socket_grace_s (a restart would not bring Slack back sooner, and repeated
    it ends in a crash-loop back-off), then fails so a client that stopped trying is restarted."""
    base = load_config(sample_config_path()).with_store(str(built_store))
    config = base.model_copy(update={"bot": base.bot.model_copy(update={
        "feedback_db": str(tmp_path / "fb.sqlite3"), "socket_grace_s": 2.0})})
    with SlackEmulator() as emu:
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                            SLACK_API_URL=emu.api_url)
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
        # Not yet connected: not live, so the startup probe keeps waiting (no grace for a first connection)
        assert server.health() == (False, "connecting to Slack")
        server.start()
        try:
            url = f"http://127.0.0.1:{server.http_port}"
            emu.wait_connected()
            assert _get(url + "/healthz") == (200, "ok\n")
            emu.refuse_sockets = True  # Socket Mode is down: every reconnect is closed at once
            emu.drop_connections()
            emu.wait_for(lambda: emu.live_connections() == 0)
            status, body = emu.wait_for(lambda: (r := _get(url + "/healthz"))[1] != "ok\n" and r)
            assert status == 200 and body.startswith("ok: reconnecting to Slack"), body
            assert "flytegpt_socket_connected 0.0" in _get(url + "/metrics")[1]
            status, body = emu.wait_for(lambda: (r := _get(url + "/healthz"))[0] == 503 and r, timeout=10)
            assert body.startswith("socket not connected for"), body
            emu.refuse_sockets = False  # Slack is back: the client's own reconnect, no restart
            emu.wait_for(lambda: _get(url + "/healthz") == (200, "ok\n"), timeout=30)
            d = emu.mention(CACHE_Q)
            assert emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=20)
        finally:
            server.stop()


# --- stopping: SIGTERM while answers are in flight -------------------------------------------------------------


def _stop_config(store: Path, tmp_path: Path, grace_s: float, streaming: bool = False) -> Config:
    base = load_config(sample_config_path()).with_store(str(store))
    return base.model_copy(update={
        "bot": base.bot.model_copy(update={"feedback_db": str(tmp_path / "fb.sqlite3"), "shutdown_grace_s": grace_s,
                                           "streaming": streaming}),
        "answer": base.answer.model_copy(update={"max_retries": 0, "timeout_s": 60.0}),
    })


@pytest.mark.parametrize("streaming", [False, True])
def test_stop_finishes_answers_in_time_and_tells_the_others(built_store, embedder, tmp_path, streaming):
    config = _stop_config(built_store, tmp_path, grace_s=10.0, streaming=streaming)  # room on a loaded machine
    quick, hung = threading.Event(), threading.Event()

    def model(body: dict) -> str:
        asked = "\n".join(str(m.get("content", "")) for m in body["messages"] if m.get("role") == "user")
        (hung if "QUESTION-THAT-HANGS" in asked else quick).wait(60)
        return ANSWER

    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        llm.reply = model
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test", SLACK_APP_TOKEN="xapp-test", SLACK_API_URL=emu.api_url,
                            OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="sk-test-key")
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
        server.start()
        try:
            emu.wait_connected()
            emu.wait_for(server.ready, timeout=30)
            finishing = emu.mention(CACHE_Q)
            hanging = emu.mention("QUESTION-THAT-HANGS: how do I use secrets?", user="U0OTHER")
            emu.wait_for(lambda: len(llm.requests) == 2, timeout=30)  # both answers are with the model
            stopper = threading.Thread(target=server.stop)
            stopper.start()  # what SIGTERM does
            emu.wait_for(lambda: server._stopping)
            quick.set()  # this answer finishes within the grace period ...
            emu.wait_for(lambda: "cache_version" in _thread_text(emu, finishing.ts), timeout=20)
            [answer] = emu.bot_messages(thread_ts=finishing.ts)
            # ... this one does not: its asker is told, in the thread, to ask again
            [notice] = emu.wait_for(lambda: emu.bot_messages(thread_ts=hanging.ts), timeout=30)
            stopper.join(30)
            assert not stopper.is_alive()
            assert "cache_version" in answer["text"] and notice["text"] == messages.RESTARTED
            assert server.drained is False and server.metrics.restart_notices._value.get() == 1
            # the database stays open for the answer still running; when it ends, it posts nothing
            assert server.bot.feedback.store is not None
            hung.set()
            assert server.bot.pool.wait_idle(30)
            assert len(emu.bot_messages(thread_ts=hanging.ts)) == 1
            assert server.bot.metrics.feedback_store_errors.labels("answer")._value.get() == 0
        finally:
            hung.set()
            quick.set()
            server.stop()
        assert emu.violations == []


def _thread_text(emu: SlackEmulator, ts: str) -> str:
    return "\n".join(m.get("text") or "" for m in emu.bot_messages(thread_ts=ts))


def test_shutdown_fits_in_the_pods_grace_period():
    """[bot] shutdown_grace_s (default and the manifest's config) plus the bot's own steps < the pod's grace."""
    import tomllib

    import yaml

    from flytegpt.bot.serve import SHUTDOWN_OVERHEAD_S, SOCKET_CLOSE_BUDGET_S
    from flytegpt.bot.slack.shutdown import NOTICE_BUDGET_S
    from flytegpt.ingest.config import BotConfig

    base = ROOT / "manifests" / "base"
    deployment = yaml.safe_load((base / "deployment.yaml").read_text())
    pod_grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    configured = tomllib.loads((base / "flytegpt.toml").read_text())["bot"].get("shutdown_grace_s")
    assert SHUTDOWN_OVERHEAD_S >= NOTICE_BUDGET_S + SOCKET_CLOSE_BUDGET_S
    for grace in (BotConfig().shutdown_grace_s, configured):
        assert grace is not None and grace + SHUTDOWN_OVERHEAD_S <= pod_grace


def test_sigterm_with_a_hung_model_exits_within_the_grace_period(built_store, tmp_path):
    """The real `flytegpt serve` process: SIGTERM with an answer stuck in the model."""
    import os
    import signal
    import subprocess
    import sys

    import socket

    grace = 2.0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "flytegpt.toml"
    config.write_text(f"""
[index]
store = "{built_store}"
[embeddings]
backend = "torch"
device = "cpu"
[answer]
max_retries = 0
timeout_s = 120
[bot]
feedback_db = "{tmp_path / 'fb.sqlite3'}"
http_port = {port}
shutdown_grace_s = {grace}
streaming = false
""")
    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        llm.script(Hang(seconds=120))
        env = dict(os.environ, SLACK_BOT_TOKEN="xoxb-test", SLACK_APP_TOKEN="xapp-test", SLACK_API_URL=emu.api_url,
                   OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="sk-test-key", HF_HUB_OFFLINE="1")
        proc = subprocess.Popen([sys.executable, "-m", "flytegpt.bot.cli", "serve", "--config", str(config)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            emu.wait_connected(timeout=60)
            emu.wait_for(lambda: _ready(port), timeout=60)
            d = emu.mention(CACHE_Q)
            try:
                emu.wait_for(lambda: llm.requests, timeout=90)  # the answer is stuck with the model
            except TimeoutError:
                proc.kill()
                raise AssertionError(proc.communicate()[0].decode(errors="replace")[-3000:]) from None
            proc.send_signal(signal.SIGTERM)
            # Kubernetes would kill it at shutdown_grace_s + the bot's own steps: it must be gone by then
            rc = proc.wait(timeout=grace + SHUTDOWN_OVERHEAD_S)
            output = proc.stdout.read().decode(errors="replace")
            assert rc == 0, output
            # Bolt reads SLACK_BOT_TOKEN itself and warned on every start that it "will be unused"
            assert "will be unused" not in output, output
            [notice] = emu.bot_messages(thread_ts=d.ts)
            assert notice["text"] == messages.RESTARTED
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- the health/metrics port under idle connections ------------------------------------------------------------


def _http_only(tmp_path: Path, **kwargs) -> BotServer:
    """A BotServer with only its health/metrics server started (no Slack): /healthz says 503
    "connecting to Slack", which is an answer all the same."""
    config = load_config(sample_config_path()).with_store(str(tmp_path))
    server = BotServer(config, Settings(SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1"), port=0,
                       host="127.0.0.1", **kwargs)
    server.http = server._start_http()
    return server


def _until(condition, guard_s: float = 30.0) -> None:
    """Poll `condition` (a guard against hanging, not a timing assertion)."""
    import time

    deadline = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def _idle(port: int, n: int) -> list:
    """`n` connections that never send a byte (recv waits up to 20 s for the server to close them)."""
    import socket

    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        socks.append(sock)
    return socks


def _closed_by_server(sock) -> bool:
    """True when the server closed the connection (EOF or reset); waits up to the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _connection_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "flytegpt-http-conn")


def _served_at_once(server: BotServer) -> int:
    assert server.http is not None
    return server.http.connections


def test_idle_connections_are_dropped_after_the_timeout_and_probes_still_answer(tmp_path):
    """50 clients that connect and send nothing held 50 threads forever (500 held 517 threads,
    then a pod out of threads): each is now closed by the server after the handler's timeout,
    and /healthz and /metrics answer while they are open."""
    server = _http_only(tmp_path, http_timeout_s=0.5, http_max_connections=64)
    socks = _idle(server.http_port, 50)
    try:
        url = f"http://127.0.0.1:{server.http_port}"
        assert _get(url + "/healthz") == (503, "connecting to Slack\n")
        assert _get(url + "/metrics")[0] == 200
        assert all(_closed_by_server(s) for s in socks), "an idle connection stayed open"
        _until(lambda: _served_at_once(server) == 0)  # their threads have ended too
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_past_the_bound_the_oldest_connections_are_closed_and_probes_are_answered(tmp_path):
    """With max_connections held by idle clients (and a timeout far away), a new connection closes
    the oldest one instead of getting no answer: closing the new one instead let
    a few idle connections keep every probe out, and the kubelet restart a healthy pod."""
    server = _http_only(tmp_path, http_timeout_s=600, http_max_connections=4)
    threads_before = _connection_threads()
    held = _idle(server.http_port, 4)
    extra: list = []
    try:
        _until(lambda: _served_at_once(server) == 4)
        url = f"http://127.0.0.1:{server.http_port}"
        assert _get(url + "/healthz") == (503, "connecting to Slack\n")  # the flood is no obstacle
        assert _get(url + "/metrics")[0] == 200
        assert _closed_by_server(held[0]), "the oldest connection stayed open"
        extra = _idle(server.http_port, 46)
        assert all(_closed_by_server(s) for s in held + extra[:42])
        _until(lambda: _served_at_once(server) <= 4)
        assert _connection_threads() <= threads_before + 5  # not one thread per connection
        assert _get(url + "/healthz") == (503, "connecting to Slack\n")
    finally:
        for s in held + extra:
            s.close()
        server.stop()


def test_the_default_timeout_and_bound_protect_the_port():
    """The defaults the pod runs with: a timeout of seconds, a bound well above what probes and a
    scrape need and well below a pod's thread limit."""
    from flytegpt.bot.serve import HTTP_MAX_CONNECTIONS, HTTP_TIMEOUT_S

    assert 1 <= HTTP_TIMEOUT_S <= 10
    assert 8 <= HTTP_MAX_CONNECTIONS <= 100
