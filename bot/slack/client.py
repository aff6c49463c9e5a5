"""The bot's Slack credentials (token checks that name the variable), its WebClient, and its
Socket Mode connection (a hand-over to a new connection that never leaves the app unreachable).

The hand-over is built on internals of slack_sdk's websocket-client Socket Mode client that no
release promises to keep. Each construction checks them (`handover_problems`); a slack_sdk that
moved them gets its own client instead, with one warning: the bot keeps working, without the
hand-over. Measured to work with slack_sdk 3.37.0 to 3.48.0 (the project needs 3.37 anyway: its
Block Kit and streaming calls), tests/bot/test_socket_sdk_versions.py checks the installed one.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import websocket
from slack_bolt.adapter.socket_mode.websocket_client import SocketModeHandler as _BoltSocketModeHandler
from slack_sdk import WebClient
from slack_sdk.socket_mode.websocket_client import SocketModeClient
from slack_sdk.version import __version__ as SLACK_SDK_VERSION
from websocket import WebSocketApp

from flytegpt.ingest.config import ConfigError
from flytegpt.ingest.slack_client import api_base_url, make_web_client

if TYPE_CHECKING:
    from flytegpt.ingest.config import Settings

__all__ = ["HandoverSocketModeClient", "HandoverUnsupported", "SlackTokenError", "SlackUnreachable", "api_base_url",
           "check_tokens", "handover_problems", "make_client", "socket_mode_handler"]

log = logging.getLogger(__name__)


class SlackTokenError(ConfigError):
    """A Slack token is missing or malformed; the message names the variable."""


class SlackUnreachable(ConfigError):
    """Slack's Web API could not be reached at start: nothing to serve, said in one line."""


def check_tokens(settings: "Settings", *, need_app_token: bool = True) -> tuple[str, str | None]:
    """The bot and app tokens from the environment, or an error naming what is wrong."""

    def get(name: str, value: Any, prefix: str, what: str) -> str:
        token = value.get_secret_value().strip() if value is not None else ""
        if not token:
            raise SlackTokenError(f"{name} is not set: export {what} (it starts with '{prefix}')")
        if not token.startswith(prefix):
            raise SlackTokenError(f"{name} is malformed: {what} starts with '{prefix}'")
        return token

    bot = get("SLACK_BOT_TOKEN", settings.slack_bot_token, "xoxb-", "the bot token (OAuth & Permissions)")
    app = (get("SLACK_APP_TOKEN", settings.slack_app_token, "xapp-", "the app-level token with connections:write")
           if need_app_token else None)
    return bot, app


def make_client(settings: "Settings", **kwargs: Any) -> WebClient:
    """The project's WebClient (retries, timeouts: ingest/slack_client.py) with the checked bot token."""
    token, _ = check_tokens(settings, need_app_token=False)
    return make_web_client(settings, token, **kwargs)


# --- Socket Mode -------------------------------------------------------------------------------------

# How long a new connection may take to open and receive Slack's `hello`.
HELLO_TIMEOUT_S = 10.0
# Least time between connection attempts after a close, so that a Slack that closes every new
# connection at once is not hammered (the SDK's runner thread also paused 0.5 s between them).
RECONNECT_SPACING_S = 0.5
# How long a replaced connection stays open after the new one is current: events Slack sent on
# it just before the new one said hello are still in flight (a network's round trip).
CLOSE_GRACE_S = 1.0
# How long a replaced connection may take to finish its closing handshake before it is cut.
CLOSE_TIMEOUT_S = 3.0


@dataclass(eq=False)
class _Connection:
    """One websocket connection and what the hand-over needs to know about it."""

    ws: WebSocketApp
    hello: threading.Event = field(default_factory=threading.Event)  # Slack said hello: it delivers here
    settled: threading.Event = field(default_factory=threading.Event)  # hello, or closed before it
    ended: threading.Event = field(default_factory=threading.Event)  # closed
    handing_over: bool = False  # a `disconnect` on it already started the move to a new connection
    socket: Any = None  # websocket-client's WebSocket, kept to close its TCP socket when reading ends


# --- what the hand-over relies on in slack_sdk --------------------------------------------------------


class HandoverUnsupported(Exception):
    """The installed slack_sdk's Socket Mode client lacks what HandoverSocketModeClient relies on."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _accepts(fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether `fn` can be called with these arguments (its signature, not a call)."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def handover_problems(client: SocketModeClient) -> list[str]:
    """What a constructed slack_sdk websocket-client SocketModeClient (and websocket-client's
    WebSocketApp) lacks of what HandoverSocketModeClient relies on; [] when the hand-over can run.

    Why a check: the hand-over replaces the SDK's connection handling but keeps its acks,
    listeners, monitor and close, so it leans on internals no slack_sdk release promises. Above
    all, the SDK's runner thread must call `_run_current_session` (the hand-over makes it a
    no-op): a runner that read connections through another method would read each socket beside
    the hand-over's own reader. Everything else named here is read or called by the hand-over or
    by the SDK methods it keeps. Checked at each construction (cheap: attribute and signature
    look-ups), so a slack_sdk that moved any of it falls back to its own client."""
    problems: list[str] = []

    def runner(name: str, runs: str, *, needs: tuple[str, ...]) -> None:
        r = getattr(client, name, None)
        if r is None:
            problems.append(f"no {name}")
            return
        missing = [m for m in needs if not callable(getattr(r, m, None))]
        if missing:
            problems.append(f"{name} has no {', '.join(missing)}()")
        method = getattr(client, runs, None)
        if method is None:
            problems.append(f"no {runs}()")
        elif getattr(r, "target", None) != method:
            problems.append(f"{name} does not run {runs}()")

    runner("current_session_runner", "_run_current_session", needs=("shutdown",))
    runner("current_app_monitor", "_monitor_current_session", needs=("start", "shutdown"))
    lock = getattr(client, "connect_operation_lock", None)
    if not all(callable(getattr(lock, m, None)) for m in ("acquire", "release", "__enter__", "__exit__")):
        problems.append("no connect_operation_lock")
    for name in ("auto_reconnect_enabled", "default_auto_reconnect_enabled", "current_app_monitor_started", "closed"):
        if not isinstance(getattr(client, name, None), bool):
            problems.append(f"no {name} (a bool)")
    for name in ("current_session", "wss_uri"):
        if not hasattr(client, name):
            problems.append(f"no {name}")
    for name in ("on_open_listeners", "on_message_listeners", "on_error_listeners", "on_close_listeners",
                 "socket_mode_request_listeners"):
        if not isinstance(getattr(client, name, None), list):
            problems.append(f"no {name} (a list)")
    for name in ("ping_interval", "http_proxy_host", "http_proxy_port", "http_proxy_auth", "proxy_type", "logger",
                 "message_processor", "message_workers"):
        if not hasattr(client, name):
            problems.append(f"no {name}")
    calls: dict[str, tuple[Any, ...]] = {"issue_new_wss_url": (), "connect_to_new_endpoint": (), "is_connected": (),
                                         "enqueue_message": ("{}",), "send_message": ("{}",), "close": ()}
    for name, args in calls.items():
        method = getattr(client, name, None)
        if not callable(method) or not _accepts(method, *args):
            problems.append(f"no {name}({', '.join('message' for _ in args)})")
    if not _accepts(WebSocketApp, "ws://x", on_open=None, on_message=None, on_error=None, on_close=None):
        problems.append("websocket-client's WebSocketApp takes other callbacks")
    if not _accepts(WebSocketApp.run_forever, None, ping_interval=1, http_proxy_host=None, http_proxy_port=None,
                    http_proxy_auth=None, proxy_type=None):
        problems.append("websocket-client's WebSocketApp.run_forever takes other options")
    return problems


def _message_type(raw: str) -> str | None:
    """The `type` of a Socket Mode message, or None if it is not a JSON object."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message.get("type") if isinstance(message, dict) else None


class HandoverSocketModeClient(SocketModeClient):
    """slack_sdk's websocket-client Socket Mode client, with a hand-over that keeps the app reachable.

    Why not the SDK's client as it is (slack_sdk 3.48, websocket-client 1.9): it reads every
    connection on one runner thread, one connection after the other. On Slack's `disconnect`
    (refresh_requested, warning) it makes a new connection current and closes the old one from
    another thread. The old connection's reader can then sit in `select()` on the closed socket
    until websocket-client's 10 s read timeout, and the new connection cannot start before it
    returns, while the SDK's monitor (every ping_interval) replaces the idle new connection by
    others that cannot start either: about one refresh in three left the app with no connection
    for ~10.5 s (measured in a soak test), and events could not be delivered. The other refreshes cost 0.5 s
    (the runner's pause) and a second `apps.connections.open` (the old connection's on_close
    replaced the new one once more).

    Here each connection is read on its own thread. A new connection becomes current once Slack
    said `hello` on it; the old one still reads for CLOSE_GRACE_S, then gets a close frame and its
    own reader ends it (no thread closes a socket another one waits on). A `disconnect` on the
    current connection starts one move; on a connection already replaced it is ignored. A closed
    connection reconnects only if it was the current one. Acks (`send_message` on the current
    connection), listeners and the monitor are the SDK's, so acks stay immediate
    (tests/bench/bench_socket_handover.py). For a moment Slack may deliver on both connections;
    the bot de-duplicates events on event_id.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The SDK's client, checked (`handover_problems`): HandoverUnsupported, with the threads
        the SDK started stopped again, when the installed slack_sdk moved what the hand-over needs."""
        super().__init__(*args, **kwargs)
        problems = handover_problems(self)
        if problems:
            self._stop_sdk_threads()
            raise HandoverUnsupported(problems)
        self._connections: dict[WebSocketApp, _Connection] = {}
        self._lock = threading.Lock()
        self._last_attempt = 0.0
        self.current_session_runner.shutdown()  # connections are read on their own threads (_read)

    def _stop_sdk_threads(self) -> None:
        """Stop what the SDK's __init__ started (as far as it can be found): a client that is not
        used must not leave threads behind. Not waited for: its message processor's loop only
        notices `closed` after its queue's 1 s wait."""
        self.closed = True
        self.auto_reconnect_enabled = False
        stoppers: list[Callable[[], Any] | None] = [
            getattr(getattr(self, name, None), "shutdown", None)
            for name in ("current_session_runner", "message_processor", "current_app_monitor")]
        workers = getattr(self, "message_workers", None)

        def stop() -> None:
            for shutdown in stoppers:
                try:
                    if callable(shutdown):
                        shutdown()
                except Exception:  # noqa: BLE001 - best effort on a client that is thrown away
                    pass
            if workers is not None:
                workers.shutdown(wait=False)

        threading.Thread(target=stop, daemon=True, name="socket-mode-discarded").start()

    def _run_current_session(self) -> None:
        """The SDK's single runner thread is not used: see _read."""

    # --- opening and moving ----------------------------------------------------------------------

    def connect(self) -> None:
        """Open a connection; make it current once Slack says hello, then close the old one.

        A connection that does not come up is given up: the current one (if any) stays, and the
        SDK's monitor tries again within ping_interval, as with the SDK's own client."""
        if self.closed:
            return
        self._last_attempt = time.monotonic()
        uri = self.wss_uri or self.issue_new_wss_url()
        self.wss_uri = None  # the URL carries a ticket for one connection
        conn = self._open(uri)
        conn.settled.wait(HELLO_TIMEOUT_S)
        sock = conn.ws.sock
        if not conn.hello.is_set():
            if conn.ended.is_set() or sock is None or not sock.connected:
                self.logger.warning("A new Socket Mode connection closed before Slack's hello; "
                                    "trying again within %s s", self.ping_interval)
                self._close_later(conn.ws)
                self._start_monitor()
                return
            self.logger.warning("No hello on a new Socket Mode connection within %s s; using it all the same",
                                HELLO_TIMEOUT_S)
        if self.closed:  # close() ran while this connection opened
            self._close_later(conn.ws)
            return
        old, self.current_session = self.current_session, conn.ws
        self.auto_reconnect_enabled = self.default_auto_reconnect_enabled
        self._start_monitor()
        if old is not None:  # what Slack sent on it just before the move is still read and acked
            self._close_later(old, CLOSE_GRACE_S)
        self.logger.info("A new session has been established")

    def _open(self, uri: str) -> _Connection:
        conn = _Connection(WebSocketApp(uri, on_open=self._on_open, on_message=self._on_message,
                                        on_error=self._on_error, on_close=self._on_close))
        with self._lock:
            self._connections[conn.ws] = conn
        threading.Thread(target=self._read, args=(conn,), daemon=True, name="socket-mode-connection").start()
        return conn

    def _read(self, conn: _Connection) -> None:
        """Receive on one connection until it closes (the callbacks below run on this thread)."""
        try:
            self.logger.info("Starting to receive messages from a new connection")
            conn.ws.run_forever(ping_interval=self.ping_interval, http_proxy_host=self.http_proxy_host,
                                http_proxy_port=self.http_proxy_port, http_proxy_auth=self.http_proxy_auth,
                                proxy_type=self.proxy_type)
            self.logger.info("Stopped receiving messages from a connection")
        except Exception as e:  # noqa: BLE001 - the monitor notices a current connection that is gone
            self.logger.exception("Failed to start or stop a connection: %s", e)
        finally:
            conn.ended.set()
            conn.settled.set()
            with self._lock:
                self._connections.pop(conn.ws, None)
            if conn.socket is not None:
                # after a close Slack started, websocket-client leaves the TCP socket open until the
                # garbage collector finds it (a reference cycle): close it now
                try:
                    conn.socket.shutdown()
                except Exception:  # noqa: BLE001 - already closed
                    pass

    def _hand_over(self, ws: WebSocketApp) -> None:
        """Slack asked `ws` to go: open the new connection while `ws` still delivers."""
        with self.connect_operation_lock:
            if self.closed or self.current_session is not ws:
                return  # it closed and was replaced meanwhile
            try:
                self.logger.info("Connecting to a new endpoint...")
                self.wss_uri = self.issue_new_wss_url()
                self.connect()
            except Exception as e:  # noqa: BLE001 - the current connection serves until Slack closes it
                self.logger.error("Failed to open a new Socket Mode connection (error: %s, message: %s); "
                                  "the current one serves until Slack closes it", type(e).__name__, str(e))
            if self.current_session is ws:  # not moved: a later `disconnect` may try again
                conn = self._connections.get(ws)
                if conn is not None:
                    conn.handing_over = False
            else:
                self.logger.info("Connected to a new endpoint...")

    def _close_later(self, ws: WebSocketApp, grace: float = 0.0) -> None:
        """Close `ws` after `grace` seconds, on a timer thread (nobody waits for it)."""
        timer = threading.Timer(grace, self._retire, args=(ws,))
        timer.daemon = True
        timer.start()

    def _retire(self, ws: WebSocketApp) -> None:
        """Send the close frame and let the connection's own reader end when the answer comes.

        Not `ws.close()` from here: it waits for the server's close frame on this thread while
        the reader waits on the same socket, and whichever loses waits out its timeout (3 s here;
        10 s in the reader's `select()` once the socket is closed under it: the stall behind F2).
        The reader, told to stop, tears the connection down quietly on the answer; one that has
        not ended CLOSE_TIMEOUT_S later is closed hard."""
        ws.keep_running = False  # first: the answer may come back before the next line runs
        sock = ws.sock
        try:
            if sock is not None and sock.connected:
                sock.send_close()
        except Exception:  # noqa: BLE001 - it is going away either way
            self.logger.debug("closing a replaced Socket Mode connection failed", exc_info=True)
        timer = threading.Timer(CLOSE_TIMEOUT_S, self._close_hard, args=(ws,))
        timer.daemon = True
        timer.start()

    def _close_hard(self, ws: WebSocketApp) -> None:
        conn = self._connections.get(ws)
        if conn is None or conn.ended.is_set():
            return
        try:
            ws.close(timeout=0)
            if conn.socket is not None:
                conn.socket.shutdown()
        except Exception:  # noqa: BLE001 - it is going away either way
            self.logger.debug("closing a replaced Socket Mode connection failed", exc_info=True)

    def _start_monitor(self) -> None:
        with self._lock:
            if not self.current_app_monitor_started:
                self.current_app_monitor_started = True
                self.current_app_monitor.start()

    # --- websocket callbacks (on the connection's own thread) ------------------------------------

    def _on_open(self, ws: WebSocketApp) -> None:
        conn = self._connections.get(ws)
        if conn is not None:
            conn.socket = ws.sock
        for listener in self.on_open_listeners:
            listener(ws)

    def _on_message(self, ws: WebSocketApp, message: str) -> None:
        conn = self._connections.get(ws)
        # both are short messages; events are only parsed once, by the SDK's message processor
        kind = _message_type(message) if '"hello"' in message or '"disconnect"' in message else None
        if kind == "hello" and conn is not None:
            conn.hello.set()
            conn.settled.set()
        if kind == "disconnect":
            self._on_disconnect(ws, conn, message)
        else:
            self.enqueue_message(message)
        for listener in self.on_message_listeners:
            listener(ws, message)

    def _on_disconnect(self, ws: WebSocketApp, conn: _Connection | None, message: str) -> None:
        reason = json.loads(message).get("reason")
        with self._lock:
            first = (conn is not None and not conn.handing_over and ws is self.current_session
                     and not self.closed)
            if first and conn is not None:
                conn.handing_over = True
        if not first:
            self.logger.debug("`disconnect` (%s) on a connection already being replaced: ignored", reason)
            return
        self.logger.info("Slack asked for a new connection (reason: %s): opening it before closing this one", reason)
        threading.Thread(target=self._hand_over, args=(ws,), daemon=True, name="socket-mode-handover").start()

    def _on_error(self, ws: WebSocketApp, error: Exception) -> None:
        if ws is self.current_session:
            self.logger.error("on_error invoked (error: %s, message: %s)", type(error).__name__, str(error))
        else:
            self.logger.debug("error on a replaced or opening connection: %s: %s", type(error).__name__, str(error))
        for listener in self.on_error_listeners:
            listener(ws, error)

    def _on_close(self, ws: WebSocketApp, code: int | None = None, reason: str | None = None) -> None:
        conn = self._connections.get(ws)
        if conn is not None:
            conn.ended.set()
            conn.settled.set()
        if ws is self.current_session and self.auto_reconnect_enabled and not self.closed:
            self.logger.info("Received CLOSE event. Reconnecting...")
            time.sleep(max(0.0, RECONNECT_SPACING_S - (time.monotonic() - self._last_attempt)))
            self.connect_to_new_endpoint()
        for listener in self.on_close_listeners:
            listener(ws)

    # --- stopping --------------------------------------------------------------------------------

    def disconnect(self) -> None:
        """Close the current connection (its on_close reconnects unless the client is closed)."""
        if self.current_session is not None:
            self._retire(self.current_session)

    def close(self) -> None:
        """Close every connection, the opening and the replaced ones too, then the SDK's threads."""
        self.closed = True
        self.auto_reconnect_enabled = False
        with self._lock:
            others = [ws for ws in self._connections if ws is not self.current_session]
        for ws in others:
            self._retire(ws)
        super().close()


class _SocketModeHandler(_BoltSocketModeHandler):
    """Bolt's websocket-client adapter (its `handle` runs the app and acks) on a client built here."""

    def __init__(self, app: Any, app_token: str, client: SocketModeClient) -> None:
        # not Bolt's __init__: it would build, and start the threads of, the SDK's client; this sets what it sets
        self.app, self.app_token = app, app_token
        self.client = client
        self.client.socket_mode_request_listeners.append(self.handle)  # type: ignore[arg-type]


def _handover_on(sdk_client: type[SocketModeClient]) -> type[HandoverSocketModeClient]:
    """HandoverSocketModeClient over a subclass of the SDK's client (its methods between ours and the SDK's)."""
    if sdk_client is SocketModeClient:
        return HandoverSocketModeClient
    return type(f"Handover{sdk_client.__name__}", (HandoverSocketModeClient, sdk_client), {})


def socket_mode_handler(app: Any, app_token: str, client: WebClient, *, ping_interval: float = 5.0,
                        sdk_client: type[SocketModeClient] = SocketModeClient) -> _BoltSocketModeHandler:
    """The Socket Mode connection for a Bolt app: slack_sdk's websocket-client based client, with
    HandoverSocketModeClient's hand-over.

    Why this client: when Slack moves the app to a new connection (`disconnect`,
    refresh_requested) the SDK's builtin client acks the first events on the new connection
    only once the old one has closed (~3 s in tests/bench/bench_socket_handover.py, Slack's limit
    for an ack); this one acks at once (a few ms). Why the hand-over: the SDK's own version of
    this client left the app without a connection for ~10.5 s after one refresh in three.

    A slack_sdk whose client lacks what the hand-over relies on (`handover_problems`) gets its
    own client, with one warning naming the version: the bot answers, without the hand-over.
    `sdk_client` is the SDK's client class to build on: slack_sdk's, or in tests a subclass that
    moves an internal as a later release might.
    """
    options: dict[str, Any] = {"app_token": app_token, "logger": app.logger, "web_client": client,
                               "ping_interval": ping_interval}
    try:
        socket_client: SocketModeClient = _handover_on(sdk_client)(**options)
    except HandoverUnsupported as e:
        log.warning(
            "slack_sdk %s (websocket-client %s) lacks what FlyteGPT's Socket Mode hand-over relies on (%s): using "
            "slack_sdk's own Socket Mode client. The bot answers as usual, but after Slack's `disconnect` "
            "(refresh_requested, every few hours) it can be unreachable for ~10 s. The hand-over was measured with "
            "slack_sdk 3.37.0 to 3.48.0: pin slack-sdk to one of those to get it back",
            SLACK_SDK_VERSION, websocket.__version__, "; ".join(e.problems))
        socket_client = sdk_client(**options)
    return _SocketModeHandler(app, app_token, socket_client)
