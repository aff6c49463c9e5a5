"""`flytegpt serve`: the Slack app over Socket Mode, hot reload, and a health/metrics endpoint.

Start-up order is chosen so that the bot is useful as early as possible and never blocks
on the index: tokens are checked first (a clear error naming the variable), the Socket
Mode connection opens, and the index loads in the background; /readyz says 503 until it is
loaded. A question asked meanwhile (after a restart: the questions asked or redelivered
during it) waits for that first load, within its answer's deadline, and is answered; only
when the deadline passes first, or the store has no index to load, is the asker told the
index is not ready (routing's `wait_for_index`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flytegpt.bot.slack.app import FlyteGPTBot
    from flytegpt.ingest.config import Config, Settings
    from flytegpt.ingest.embedding import Embedder

log = logging.getLogger(__name__)

SOCKET_CLOSE_BUDGET_S = 3.0  # waited for slack_sdk's socket close beyond the drain deadline
# What stop() takes beyond [bot] shutdown_grace_s: the "ask again" notices
# (shutdown.NOTICE_BUDGET_S), the socket close and the HTTP server. shutdown_grace_s plus this
# must fit in the pod's terminationGracePeriodSeconds (tests/bot/test_serve.py checks the manifest).
SHUTDOWN_OVERHEAD_S = 8.0
# The health/metrics port: a connection had a thread for as long as its client kept
# it open, sending nothing (500 idle connections: 517 threads, then none left for Socket Mode
# reconnects or the probes). A client that sends nothing for HTTP_TIMEOUT_S is dropped (a socket
# timeout per read: one that trickles a byte every few seconds keeps its one slot of the bound
# below), and past HTTP_MAX_CONNECTIONS the oldest connection is closed. The kubelet's probes and
# a Prometheus scrape are a few requests of milliseconds each: far below the bound.
HTTP_TIMEOUT_S = 5.0
HTTP_MAX_CONNECTIONS = 32
_FULL_WARNING_EVERY_S = 60.0  # a flood of connections is one warning a minute, not one line each


class BotServer:
    """Everything `serve` runs; `start()` returns once connected, `stop()` undoes it."""

    def __init__(self, config: "Config", settings: "Settings", *, port: int | None = None,
                 host: str = "0.0.0.0", ping_interval: float = 5.0, embedder: "Embedder | None" = None,
                 answerer: Any = None, reload_interval_s: float | None = None,
                 http_timeout_s: float = HTTP_TIMEOUT_S, http_max_connections: int = HTTP_MAX_CONNECTIONS) -> None:
        from flytegpt.bot.index_holder import IndexHolder
        from flytegpt.bot.metrics import Metrics
        from flytegpt.bot.slack.client import api_base_url, check_tokens

        self.config, self.settings = config, settings
        self.bot_token, self.app_token = check_tokens(settings)  # fail fast, before any connection
        api_base_url(settings)  # a malformed SLACK_API_URL: one line now, not a traceback from the first call
        self.port = config.bot.http_port if port is None else _checked_port(port)
        self.host, self.ping_interval = host, ping_interval
        self.http_timeout_s, self.http_max_connections = http_timeout_s, http_max_connections
        self.metrics = Metrics()
        self.holder = IndexHolder()
        self._embedder, self._answerer = embedder, answerer
        self._reload_interval = reload_interval_s
        self.bot: "FlyteGPTBot | None" = None
        self.handler: Any = None
        self.reloader: Any = None
        self.snapshots: Any = None  # copies of the feedback database for the weekly report
        self.http: HealthHTTPServer | None = None
        self._stopped = threading.Event()  # set when stop() has finished
        self._stop_lock = threading.Lock()
        self._stopping = False
        self.drained = True  # every answer finished before the stop deadline
        self._lost_at: float | None = None  # when /healthz first saw the Slack connection down
        self._was_connected = False  # the grace is for a lost connection, not for a first one
        self.model_check: threading.Thread | None = None  # the start-up check of the chat model, if one runs

    # --- health ---------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """Live: the Socket Mode connection is up, or was lost less than [bot] socket_grace_s ago
        (slack_sdk is reconnecting; a restart would not bring Slack back sooner). Before the first
        connection it is not: that is what the startup probe waits for."""
        connected = bool(self.handler is not None and self.handler.client.is_connected())
        self.metrics.socket_connected.set(1 if connected else 0)
        if connected:
            self._lost_at, self._was_connected = None, True
            return True, "ok"
        if not self._was_connected:  # the startup probe waits for the first connection
            return False, "connecting to Slack"
        now = time.monotonic()
        lost_at = self._lost_at = self._lost_at if self._lost_at is not None else now
        down = now - lost_at
        if down < self.config.bot.socket_grace_s:
            return True, f"ok: reconnecting to Slack for {down:.0f} s"
        return False, f"socket not connected for {down:.0f} s"

    def ready(self) -> bool:
        """An index is loaded: questions get real answers."""
        return self.holder.ready

    def readiness_note(self) -> str:
        """What /readyz adds after `ok VERSION` when the store disagrees with what is served: LATEST
        names another version (refused, loading), or the store has no LATEST. Readiness stays 200:
        the bot answers from the index it holds."""
        try:
            return self.reloader.status_note() if self.reloader is not None else ""
        except Exception:  # noqa: BLE001 - a probe must answer
            log.debug("readiness note failed", exc_info=True)
            return ""

    def start(self) -> "BotServer":
        from slack_sdk.errors import SlackApiError

        from flytegpt.bot.answering import Answerer
        from flytegpt.bot.reload import Reloader
        from flytegpt.bot.slack.app import build_app
        from flytegpt.bot.slack.client import SlackTokenError, make_client, socket_mode_handler

        client = make_client(self.settings)
        answerer = self._answerer or Answerer(self.config, self.settings, self.holder.get)
        self.bot = build_app(self.config, self.settings, answerer, self.holder, client=client, metrics=self.metrics)
        self.bot.router.wait_for_index(self.holder)
        self.reloader = Reloader(self.config, self.holder, metrics=self.metrics, embedder=self._embedder,
                                 interval_s=self._reload_interval)
        try:
            self.http = self._start_http()
        except OSError as e:  # the port is taken (another bot, a second `serve`) or not allowed
            from flytegpt.ingest.config import ConfigError

            self.stop()
            raise ConfigError(f"cannot serve /healthz and /metrics on {self.host}:{self.port}: "
                              f"{e.strerror or e} (choose another with --port or [bot] http_port)") from None
        self.handler = socket_mode_handler(self.bot.app, self.app_token, client, ping_interval=self.ping_interval)
        self.holder.expect_load()  # before the first event can arrive: it waits for the load started below
        try:
            self.handler.connect()
        except SlackApiError as e:
            self.stop()
            raise SlackTokenError(f"Slack rejected SLACK_APP_TOKEN: {e.response.get('error')} "
                                  "(an app-level token with connections:write, Socket Mode enabled)") from None
        self.reloader.start(run_now=True)
        from flytegpt.bot.report.snapshot import SnapshotJob

        self.snapshots = SnapshotJob(self.config)
        self.snapshots.start()
        # which chat model at which host ("gpt-4o-mini at api.openai.com"), never the key
        label = getattr(answerer, "model_label", None)
        llm = label() if callable(label) else getattr(answerer, "llm_enabled", None)
        log.info("FlyteGPT is running", extra={"http_port": self.http.server_address[1],
                                               "store": self.config.index.store, "llm": llm})
        self._check_model(answerer)
        return self

    def _check_model(self, answerer: Any) -> None:
        """[bot] check_model: ask the model endpoint once, in the background, whether it serves the chat
        model (Answerer.check_model logs one warning naming what is wrong): a wrong model name, key or
        base URL shows in the log at start instead of in the first askers' replies. Never
        waited for: the index load and the Slack connection go on whatever it finds. No model, no call."""
        check = getattr(answerer, "check_model", None)
        if not (self.config.bot.check_model and callable(check) and getattr(answerer, "llm_enabled", False)):
            return
        self.model_check = threading.Thread(target=check, daemon=True, name="flytegpt-model-check")
        self.model_check.start()

    def stop(self) -> None:
        """Graceful stop (SIGTERM): no new questions, running answers until [bot] shutdown_grace_s,
        unfinished askers told to ask again (bot/slack/shutdown.py). Returns within
        shutdown_grace_s + SHUTDOWN_OVERHEAD_S; `drained` says whether every answer finished."""
        from flytegpt.bot.slack.shutdown import drain

        with self._stop_lock:
            if self._stopping:
                first = False
            else:
                self._stopping = first = True
        if not first:
            self._stopped.wait(self.config.bot.shutdown_grace_s + SHUTDOWN_OVERHEAD_S)
            return
        deadline = time.monotonic() + self.config.bot.shutdown_grace_s
        log.info("stopping: finishing answers in flight", extra={"grace_s": self.config.bot.shutdown_grace_s})
        closing = threading.Thread(target=self._close_socket, daemon=True, name="flytegpt-socket-close")
        closing.start()  # no new events; slack_sdk's close can take seconds, so beside the drain
        if self.reloader is not None:
            self.reloader.stop()
        # questions still waiting for the first index go to the answer pool before its intake
        # closes: they are told (not ready, or the restart) like every question in flight
        self.holder.settle()
        if self.snapshots is not None:
            self.snapshots.stop()
        if self.bot is not None:
            self.drained = drain(self.bot, deadline)
            self.bot.close(wait=False)
        closing.join(max(0.0, deadline - time.monotonic()) + SOCKET_CLOSE_BUDGET_S)
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self._stopped.set()

    def _close_socket(self) -> None:
        if self.handler is None:
            return
        try:
            self.handler.client.auto_reconnect_enabled = False
            self.handler.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            log.debug("socket close failed", exc_info=True)

    def wait(self) -> None:
        """Block until stop() (SIGTERM/SIGINT call it when run from the CLI)."""
        self._stopped.wait()

    @property
    def http_port(self) -> int:
        assert self.http is not None
        return self.http.server_address[1]

    def _start_http(self) -> "HealthHTTPServer":
        server = self
        from flytegpt.bot.metrics import CONTENT_TYPE_LATEST

        class Handler(BaseHTTPRequestHandler):
            # Socket timeout of every read and write: an idle or slow client is dropped, its thread
            # freed. HTTP/1.0 (the default protocol_version): one request a connection, no keep-alive.
            timeout = server.http_timeout_s

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, why = server.health()
                    self._send(200 if ok else 503, f"{why}\n".encode())
                elif path == "/readyz":
                    ok = server.ready()
                    body = f"ok {server.holder.version}{server.readiness_note()}\n" if ok else "index not loaded\n"
                    self._send(200 if ok else 503, body.encode())
                elif path == "/metrics":
                    server.health()  # refresh the connection gauge
                    if server.bot is not None:
                        server.metrics.pending.set(server.bot.pool.pending)
                    self._send(200, server.metrics.render(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = HealthHTTPServer((self.host, self.port), Handler, max_connections=self.http_max_connections)
        threading.Thread(target=httpd.serve_forever, daemon=True, name="flytegpt-http").start()
        return httpd


class HealthHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that serves at most `max_connections` connections at once.

    One thread per connection, as before, but a connection past the bound makes the oldest one
    be closed (its read fails, its thread ends): a flood of idle connections cannot leave the
    process without threads for Slack and the workers, and cannot keep a probe out either, as
    refusing the new connection did: a probe is served in milliseconds,
    long before the flood's newer connections reach it.
    """

    daemon_threads = True  # a connection being served never holds up the process's exit
    # listen() backlog (socketserver's default is 5): in a burst of connections a probe's SYN past
    # the backlog is dropped and retried a second later
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 max_connections: int) -> None:
        self.max_connections = max_connections
        self.connections = 0  # being served now (read by tests and the "full" warning)
        self._open: OrderedDict[int, Any] = OrderedDict()  # the connections' sockets, oldest first
        self._count_lock = threading.Lock()
        self._warned_at: float | None = None
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """On serve_forever's thread: start the connection's thread, closing the oldest one first
        when the bound is reached."""
        oldest = None
        with self._count_lock:
            if len(self._open) >= self.max_connections:
                _, oldest = self._open.popitem(last=False)
            self.connections += 1
            self._open[id(request)] = request
        if oldest is not None:
            self._warn_full(client_address)
            try:
                oldest.shutdown(socket.SHUT_RDWR)  # its handler's read or write fails; its thread ends
            except OSError:
                pass
        try:
            threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             daemon=True, name="flytegpt-http-conn").start()
        except BaseException:  # no thread to be had: serve_forever closes the request
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._count_lock:
            self.connections -= 1
            self._open.pop(id(request), None)

    def _warn_full(self, client_address: Any) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= _FULL_WARNING_EVERY_S:
            self._warned_at = now
            log.warning("health/metrics port: the oldest connection closed, too many open at once",
                        extra={"max_connections": self.max_connections, "client": str(client_address[0])})

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or stalled mid-response: one debug line, not a traceback on stderr."""
        log.debug("health/metrics request failed", exc_info=True)


def _checked_port(port: int) -> int:
    """`port` if a TCP port can be bound to it, else a ConfigError. [bot] http_port is checked
    with the config; an out-of-range --port failed only at bind, after Slack was connected,
    as an OverflowError traceback."""
    if not 0 <= port <= 65535:
        from flytegpt.ingest.config import ConfigError

        raise ConfigError(f"--port {port} is not a TCP port: use 0-65535 (0 takes any free port)")
    return port


def serve(config: "Config", settings: "Settings", *, port: int | None = None) -> None:
    """Run until SIGTERM/SIGINT (Kubernetes stops pods with SIGTERM), then stop gracefully.

    An answer still running after the stop deadline (a hung model) would keep the process
    alive (the pool's threads are joined at exit) past the pod's grace period; its asker has
    been told to ask again, so the process ends without waiting for it.
    """
    server = BotServer(config, settings, port=port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=server.stop, daemon=True,
                                                       name="flytegpt-stop").start())
    server.start()
    try:
        server.wait()
    finally:
        server.stop()
    if not server.drained:
        log.warning("exiting with answers still running (their askers were told to ask again)")
        logging.shutdown()
        os._exit(0)
    log.info("stopped")
