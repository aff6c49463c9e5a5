"""A Slack stand-in on 127.0.0.1: the Web API over HTTP, Socket Mode over a websocket, response URLs.

The real slack_sdk / slack-bolt code talks to it through `WebClient(base_url=emu.api_url)`;
nothing here knows about FlyteGPT. It records every Web API call, every Socket Mode ack
(with its latency) and every response_url post, keeps channel messages so
`conversations.replies/history` return what was posted (with cursor pagination), can be
scripted to answer 429 + Retry-After, and can drop or refresh the websocket to test
reconnects. Like Slack, it sends an `events_api` envelope nobody acked within `redeliver_after`
seconds (e.g. one sent on a connection the client was just replacing) again, up to 3 times, with
`retry_attempt` 1..3, `retry_reason` "timeout" and a new envelope id (None: never). It also
checks Slack's message limits and records violations, and refuses, as Slack does, a message
whose blocks hold more than 12,000 characters of text in all (`msg_blocks_too_long`; not in
Slack's reference, reported in slackapi/bolt-js#2509 and #2867). A scripted failure can come
`after` the method did its work (Slack's "possibly succeeded": a message posted, then HTTP 5xx,
`fatal_error` or a dropped connection). Messages keep the `metadata` they were posted with;
`conversations.replies/history` return it only with `include_all_metadata`, as Slack does.
`scopes` (None: every scope) makes `conversations.list` answer `missing_scope` (with
`needed`/`provided`, as Slack does) for a channel type whose read scope the bot lacks;
`max_page` caps how many items a page holds whatever `limit` asks (Slack may return fewer
than asked), to make callers page.

Streaming (`chat.startStream` / `appendStream` / `stopStream`) follows Slack's documented
rules: both `recipient_*` ids outside a DM, 12,000 characters of markdown a call (and per
streamed message), no append or stop after stop, no `chat.update` while streaming, blocks
on stopStream parsed with slack_sdk's Block Kit models; `fail_streaming()` makes
startStream answer `not_allowed`, `method_deprecated` or `unknown_method`. The assistant
panel: `open_assistant_thread()`, `change_assistant_context()`, `assistant_message()` and
the `assistant.threads.setStatus/setSuggestedPrompts/setTitle` methods.

    with SlackEmulator() as emu:
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        ...
        d = emu.mention("how do I cache a task?")
        emu.wait_ack(d.envelope_id)
        emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts))
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_TEXT = 40000
MAX_BUTTON_VALUE = 2000
RESPONSE_URL_MAX_POSTS = 5
MAX_MARKDOWN_TEXT = 12000  # chat.*Stream: markdown_text per call (Slack's documented limit)
MAX_BLOCKS_TEXT = 12000  # characters of text in all the blocks of one message (msg_blocks_too_long)
MAX_STREAM_MESSAGE = 12000  # markdown characters one streamed message holds in total
MAX_SUGGESTED_PROMPTS = 4
# conversations.list `types` -> the bot token scope Slack wants for it
TYPE_SCOPES = {"public_channel": "channels:read", "private_channel": "groups:read", "im": "im:read",
               "mpim": "mpim:read"}


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float  # time.monotonic()


@dataclass
class Ack:
    envelope_id: str
    payload: Any
    at: float
    latency: float  # seconds from envelope sent to ack received


@dataclass
class Delivered:
    """What the emulator sent: the envelope id, the event (if any) and the message ts."""

    envelope_id: str
    body: dict[str, Any]
    ts: str | None = None
    channel: str | None = None
    response_url: str | None = None


@dataclass
class _Scripted:
    status: int
    error: str
    retry_after: int | None
    times: int
    match: Callable[[dict[str, Any]], bool] | None = None  # only calls whose args it accepts
    after: bool = False  # the method does its work first, then the failure is answered


@dataclass
class _Stream:
    """A message being streamed (chat.startStream ... chat.stopStream)."""

    channel: str
    ts: str
    message: dict[str, Any]
    state: str = "streaming"  # "streaming" | "stopped"
    calls: int = 0  # startStream + appendStream + stopStream calls that reached it


@dataclass
class _Channel:
    id: str
    name: str
    is_im: bool = False
    is_private: bool = False
    is_member: bool = True
    is_archived: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "is_channel": not self.is_im, "is_im": self.is_im,
            "is_private": self.is_private, "is_member": self.is_member,
            "is_archived": self.is_archived, "created": 1_600_000_000,
        }


class SlackEmulator:
    """Web API + Socket Mode + response_url stand-in. Use as a context manager."""

    def __init__(self, *, team_id: str = "T0EMU", bot_user_id: str = "UBOT", bot_id: str = "BBOT",
                 app_id: str = "AEMU", page_size: int = 100, redeliver_after: float | None = 5.0) -> None:
        self.team_id, self.bot_user_id, self.bot_id, self.app_id = team_id, bot_user_id, bot_id, app_id
        self.page_size = page_size
        self.max_page: int | None = None  # most items a page holds, whatever `limit` asks
        self.scopes: set[str] | None = None  # the bot token's scopes; None: every scope
        self.calls: list[Call] = []
        self.acks: dict[str, list[Ack]] = {}
        self.sent: dict[str, float] = {}
        self.response_posts: dict[str, list[dict[str, Any]]] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, _Channel] = {}
        self.connects = 0  # websocket connections ever opened
        self.redeliver_after = redeliver_after  # seconds without an ack before an event is sent again
        self.redeliveries: list[str] = []  # envelope ids of events sent again because nobody acked
        self._next_delivery: dict[str, str] = {}  # envelope id -> the envelope that re-sent its event
        self._timers: list[threading.Timer] = []
        self.lose_envelopes = 0  # the next n envelopes never reach the client (a connection dying under them)
        self.refuse_sockets = False  # close every new websocket at once (Slack's Socket Mode down)
        self.delays: dict[str, float] = {}  # method -> seconds to sleep before answering
        self.response_failures = 0  # response_url posts answered with a scripted error
        self.rejected_tokens: set[str] = set()  # well-formed tokens Slack would refuse (revoked)
        self.streams: dict[str, _Stream] = {}  # ts -> a message streamed with chat.startStream
        self.stream_failure: str | None = None  # set by fail_streaming(): chat.startStream's error
        self.stream_message_limit = MAX_STREAM_MESSAGE  # markdown characters in one streamed message
        self.assistant_calls: list[dict[str, Any]] = []  # assistant.threads.* calls, with "method"
        self._scripted: dict[str, list[_Scripted]] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._connections: list[ServerConnection] = []
        self._send_locks: dict[int, threading.Lock] = {}
        self._last_ts = 0.0
        self._ids = itertools.count(1)
        self._http: ThreadingHTTPServer | None = None
        self._ws = None
        self._threads: list[threading.Thread] = []
        self.add_channel("C0GENERAL", "general")

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> "SlackEmulator":
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                emu._http_request(self)

            def do_POST(self) -> None:
                emu._http_request(self)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._ws = serve(self._ws_handler, "127.0.0.1", 0, ping_interval=None, max_size=2**24)
        for target in (self._http.serve_forever, self._ws.serve_forever):
            t = threading.Thread(target=target, daemon=True, name="slack-emulator")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.drop_connections()
        if self._ws is not None:
            self._ws.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "SlackEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return self._http.server_address[1]

    @property
    def ws_port(self) -> int:
        assert self._ws is not None
        return self._ws.socket.getsockname()[1]

    @property
    def api_url(self) -> str:
        """The WebClient base_url (SLACK_API_URL)."""
        return f"http://127.0.0.1:{self.http_port}/api/"

    # --- seeding ---------------------------------------------------------------------

    def add_channel(self, channel_id: str, name: str, *, is_im: bool = False, is_private: bool = False,
                    is_member: bool = True, is_archived: bool = False) -> None:
        with self._lock:
            self.channels.setdefault(channel_id, _Channel(channel_id, name, is_im, is_private, is_member, is_archived))

    def add_user(self, user_id: str, name: str, real_name: str | None = None, *, is_bot: bool = False) -> None:
        with self._lock:
            self.users[user_id] = {
                "id": user_id, "name": name, "real_name": real_name or name, "is_bot": is_bot,
                "profile": {"display_name": name, "real_name": real_name or name},
            }

    def new_ts(self) -> str:
        """A unique, increasing Slack timestamp."""
        with self._lock:
            now = max(time.time(), self._last_ts + 0.000001)
            self._last_ts = now
            return f"{now:.6f}"

    def seed_message(self, channel: str, text: str, *, user: str = "U0USER", ts: str | None = None,
                     thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:
        """Put a message in a channel's history (no event is delivered)."""
        with self._lock:
            if channel not in self.channels:
                self.add_channel(channel, channel.lower())
            msg: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts or self.new_ts()}
            if thread_ts:
                msg["thread_ts"] = thread_ts
            msg.update(extra)
            msgs = self.channels[channel].messages
            msgs.append(msg)
            msgs.sort(key=lambda m: float(m["ts"]))
            self._changed.notify_all()
            return msg

    # --- scripting -------------------------------------------------------------------

    def script_error(self, method: str, *, status: int = 429, error: str = "ratelimited",
                     retry_after: int | None = 1, times: int = 1,
                     match: Callable[[dict[str, Any]], bool] | None = None, after: bool = False) -> None:
        """The next `times` calls of `method` fail (429 + Retry-After by default); with `match`,
        only the calls whose arguments it accepts (e.g. one answer's text), the others succeed.
        `status=0`: the connection is closed without an answer (the network, a proxy). `after`:
        the method is done first (a message is posted), then the failure answered, as Slack's
        `fatal_error`/`internal_error`/5xx may ("possibly succeeded")."""
        with self._lock:
            self._scripted.setdefault(method, []).append(_Scripted(status, error, retry_after, times, match, after))

    def fail_streaming(self, error: str | None = "not_allowed") -> None:
        """chat.startStream answers `{"ok": false, "error": error}` until called with None.

        Slack's answers where streaming is not available: `not_allowed` (workspace or
        surface), `method_deprecated`, `unknown_method` (an older Slack or GovSlack).
        """
        with self._lock:
            self.stream_failure = error

    # --- queries ---------------------------------------------------------------------

    def streamed(self, ts: str) -> "_Stream | None":
        with self._lock:
            return self.streams.get(ts)

    def stream_calls(self) -> list[Call]:
        """chat.startStream/appendStream/stopStream calls, in order."""
        with self._lock:
            return [c for c in self.calls if c.method in ("chat.startStream", "chat.appendStream", "chat.stopStream")]

    def assistant_calls_to(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c for c in self.assistant_calls if c["method"] == method]

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def bot_messages(self, channel: str | None = None, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Messages the app posted with chat.postMessage (current state, after updates)."""
        with self._lock:
            out = []
            for ch in self.channels.values():
                if channel and ch.id != channel:
                    continue
                for m in ch.messages:
                    if m.get("bot_id") == self.bot_id and (thread_ts is None or m.get("thread_ts") == thread_ts):
                        out.append(dict(m, channel=ch.id))
            return out

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
        """Poll until predicate() is truthy; return its value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        """The first ack of this envelope or of an envelope that re-sent its event."""
        def acked() -> Ack | None:
            with self._lock:
                current: str | None = envelope_id
                while current is not None:
                    if self.acks.get(current):
                        return self.acks[current][0]
                    current = self._next_delivery.get(current)
            return None

        return self.wait_for(acked, timeout)

    def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until `count` connections have been opened in total and one is live."""
        self.wait_for(lambda: self.connects >= count and self.live_connections() > 0, timeout)

    def live_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    # --- Socket Mode -----------------------------------------------------------------

    def _ws_handler(self, conn: ServerConnection) -> None:
        with self._lock:
            self.connects += 1
            refused = self.refuse_sockets
            if not refused:
                self._connections.append(conn)
                self._send_locks[id(conn)] = threading.Lock()
        if refused:  # outside the lock: closing waits for the client, and the Web API must not
            conn.close(code=1011, reason="socket mode unavailable")
            return
        try:
            self._ws_send(conn, {
                "type": "hello", "num_connections": len(self._connections),
                "debug_info": {"host": "emulator", "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            })
            for raw in conn:
                now = time.monotonic()
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self.violations.append(f"non-JSON websocket message: {raw!r:.200}")
                    continue
                envelope_id = msg.get("envelope_id")
                if envelope_id:
                    with self._lock:
                        sent = self.sent.get(envelope_id, now)
                        self.acks.setdefault(envelope_id, []).append(
                            Ack(envelope_id, msg.get("payload"), now, now - sent))
                        self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)

    def _ws_send(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        lock = self._send_locks.get(id(conn)) or threading.Lock()
        with lock:
            conn.send(json.dumps(message))

    def send_envelope(self, type_: str, payload: dict[str, Any], *, envelope_id: str | None = None,
                      retry_attempt: int = 0, retry_reason: str = "",
                      accepts_response_payload: bool = False, timeout: float = 10.0) -> str:
        """Deliver one envelope on the newest live connection; returns its envelope_id."""
        envelope_id = envelope_id or str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "type": type_, "payload": payload,
                    "accepts_response_payload": accepts_response_payload}
        if type_ == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        conn = self.wait_for(lambda: self._connections[-1] if self._connections else None, timeout)
        with self._lock:
            self.sent[envelope_id] = time.monotonic()
        if type_ == "events_api" and self.redeliver_after is not None and retry_attempt < 3:
            timer = threading.Timer(self.redeliver_after, self._redeliver_unacked,
                                    args=(envelope_id, payload, retry_attempt + 1))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        with self._lock:
            lost, self.lose_envelopes = self.lose_envelopes > 0, max(0, self.lose_envelopes - 1)
        try:
            if not lost:
                self._ws_send(conn, envelope)
        except ConnectionClosed:
            if self.redeliver_after is None:
                raise  # without redelivery a lost event is the caller's problem
        return envelope_id

    def _redeliver_unacked(self, envelope_id: str, payload: dict[str, Any], attempt: int) -> None:
        with self._lock:
            if self.acks.get(envelope_id):
                return
        try:
            again = self.send_envelope("events_api", payload, retry_attempt=attempt, retry_reason="timeout")
        except TimeoutError:  # no connection came back: Slack gives up on the event too
            return
        with self._lock:
            self._next_delivery[envelope_id] = again
            self.redeliveries.append(again)

    def drop_connections(self) -> None:
        """Close every websocket from the server side (a network drop as the client sees it).

        A dropped connection is no longer live at once, as for Slack: closing waits for the
        client's side of the closing handshake, which a client that already abandoned the
        connection (slack_sdk opens a second one when the first looks stale at start) never
        sends, and the connection would count as live for websockets' whole close timeout."""
        with self._lock:
            conns, self._connections = list(self._connections), []
        for conn in conns:
            threading.Thread(target=self._close, args=(conn,), daemon=True).start()

    @staticmethod
    def _close(conn: ServerConnection) -> None:
        try:
            conn.close(code=1001, reason="going away")
        except Exception:  # already closed
            pass

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's `disconnect` message: the client must open a new connection."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                self._ws_send(conn, {"type": "disconnect", "reason": reason,
                                     "debug_info": {"host": "emulator"}})
            except ConnectionClosed:  # the client was closing it meanwhile: it needs no notice
                pass

    # --- event helpers ---------------------------------------------------------------

    def event_body(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {
            "token": "verification-token", "team_id": self.team_id, "api_app_id": self.app_id,
            "event": event, "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):08d}", "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
        }

    def send_event(self, event: dict[str, Any], *, event_id: str | None = None, retry_attempt: int = 0,
                   retry_reason: str = "") -> Delivered:
        body = self.event_body(event, event_id)
        envelope_id = self.send_envelope("events_api", body, retry_attempt=retry_attempt, retry_reason=retry_reason)
        return Delivered(envelope_id, body, event.get("ts"), event.get("channel"))

    def post_user_message(self, text: str, *, channel: str = "C0GENERAL", user: str = "U0USER",
                          thread_ts: str | None = None, channel_type: str = "channel",
                          **extra: Any) -> dict[str, Any]:
        """Store a user's message in the channel and return the `message` event for it."""
        if channel not in self.channels:
            self.add_channel(channel, channel.lower(), is_im=channel_type == "im")
        msg = self.seed_message(channel, text, user=user, thread_ts=thread_ts,
                                client_msg_id=str(uuid.uuid4()), team=self.team_id, **extra)
        event = {k: v for k, v in msg.items()}
        event.update({"channel": channel, "event_ts": msg["ts"], "channel_type": channel_type})
        return event

    def mention(self, text: str, *, channel: str = "C0GENERAL", user: str = "U0USER",
                thread_ts: str | None = None, event_id: str | None = None,
                also_message: bool = False) -> Delivered:
        """A user writes `<@bot> text`: stores the message, delivers `app_mention`
        (and, with also_message, the `message` event Slack sends for the same message)."""
        msg = self.post_user_message(f"<@{self.bot_user_id}> {text}", channel=channel, user=user,
                                     thread_ts=thread_ts)
        event = {k: v for k, v in msg.items() if k != "channel_type"}
        event["type"] = "app_mention"
        delivered = self.send_event(event, event_id=event_id)
        if also_message:
            self.send_event(msg)
        return delivered

    def message(self, text: str, *, channel: str = "C0GENERAL", user: str = "U0USER",
                thread_ts: str | None = None, channel_type: str = "channel", event_id: str | None = None,
                **extra: Any) -> Delivered:
        """A plain `message` event (DMs: channel_type='im'; bots: bot_id=..., subtype='bot_message')."""
        event = self.post_user_message(text, channel=channel, user=user, thread_ts=thread_ts,
                                       channel_type=channel_type, **extra)
        return self.send_event(event, event_id=event_id)

    # --- the assistant panel (Agents & AI Apps) ----------------------------------------

    def open_assistant_thread(self, *, user: str = "U0USER", channel: str = "D0ASSIST",
                              context: dict[str, Any] | None = None) -> Delivered:
        """The user opens the app's side panel: Slack makes a DM thread and sends
        `assistant_thread_started`. Returns the delivery; `.ts` is the thread's ts."""
        if channel not in self.channels:
            self.add_channel(channel, channel.lower(), is_im=True)
        root = self.seed_message(channel, "", user=self.bot_user_id, bot_id=self.bot_id,
                                 subtype="assistant_app_thread")
        event = {"type": "assistant_thread_started",
                 "assistant_thread": {"user_id": user, "context": context or {}, "channel_id": channel,
                                      "thread_ts": root["ts"]},
                 "event_ts": self.new_ts()}
        delivered = self.send_event(event)
        delivered.ts, delivered.channel = root["ts"], channel
        return delivered

    def change_assistant_context(self, thread_ts: str, *, user: str = "U0USER", channel: str = "D0ASSIST",
                                 context: dict[str, Any] | None = None) -> Delivered:
        """The user switched channels with the panel open: `assistant_thread_context_changed`."""
        event = {"type": "assistant_thread_context_changed",
                 "assistant_thread": {"user_id": user, "context": context or {}, "channel_id": channel,
                                      "thread_ts": thread_ts},
                 "event_ts": self.new_ts()}
        delivered = self.send_event(event)
        delivered.ts, delivered.channel = thread_ts, channel
        return delivered

    def assistant_message(self, text: str, thread_ts: str, *, user: str = "U0USER",
                          channel: str = "D0ASSIST") -> Delivered:
        """The user writes in the panel: a `message` event in the assistant DM thread."""
        return self.message(text, channel=channel, user=user, thread_ts=thread_ts, channel_type="im")

    def response_url(self) -> str:
        rid = f"R{next(self._ids):08d}"
        with self._lock:
            self.response_posts[rid] = []
        return f"http://127.0.0.1:{self.http_port}/response/{rid}"

    @staticmethod
    def response_id(url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[-1]

    def slash_command(self, text: str, *, command: str = "/flytegpt", channel: str = "C0GENERAL",
                      user: str = "U0USER") -> Delivered:
        url = self.response_url()
        payload = {
            "token": "verification-token", "team_id": self.team_id, "team_domain": "emu",
            "channel_id": channel, "channel_name": self.channels.get(channel, _Channel(channel, channel)).name,
            "user_id": user, "user_name": user.lower(), "command": command, "text": text,
            "api_app_id": self.app_id, "is_enterprise_install": "false", "response_url": url,
            "trigger_id": f"{next(self._ids)}.trigger",
        }
        envelope_id = self.send_envelope("slash_commands", payload, accepts_response_payload=True)
        return Delivered(envelope_id, payload, None, channel, url)

    def block_action(self, action_id: str, value: str, *, channel: str = "C0GENERAL", user: str = "U0USER",
                     message: dict[str, Any] | None = None, response_url: str | None = None,
                     ephemeral: bool = False) -> Delivered:
        """A click on a button (block_actions) in `message` (a posted message) or an ephemeral one."""
        url = response_url or self.response_url()
        container: dict[str, Any] = {"type": "message", "channel_id": channel, "is_ephemeral": ephemeral}
        if message:
            container["message_ts"] = message["ts"]
        payload: dict[str, Any] = {
            "type": "block_actions", "team": {"id": self.team_id, "domain": "emu"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": self.app_id, "token": "verification-token", "container": container,
            "trigger_id": f"{next(self._ids)}.trigger", "channel": {"id": channel, "name": channel.lower()},
            "response_url": url,
            "actions": [{"action_id": action_id, "block_id": "b1", "value": value, "type": "button",
                         "action_ts": f"{time.time():.6f}", "text": {"type": "plain_text", "text": "x"}}],
        }
        if message:
            payload["message"] = message
        envelope_id = self.send_envelope("interactive", payload, accepts_response_payload=False)
        return Delivered(envelope_id, payload, message.get("ts") if message else None, channel, url)

    # --- HTTP ------------------------------------------------------------------------

    def _http_request(self, req: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        ctype = req.headers.get("Content-Type", "")
        if raw:
            if "json" in ctype:
                args.update(json.loads(raw))
            else:
                args.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
        for key in ("blocks", "attachments"):
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except ValueError:
                    pass
        auth = req.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else args.pop("token", None)

        if parsed.path.startswith("/response/"):
            failure = self._take_scripted("response_url", args)  # script_error("response_url", status=500)
            if failure is not None:
                with self._lock:
                    self.response_failures += 1
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                self._reply(req, failure.status, failure.error, "text/plain", headers)
                return
            status, body = self._response_url(self.response_id(parsed.path), args)
            self._reply(req, status, body, "text/plain")
            return
        if not parsed.path.startswith("/api/"):
            self._reply(req, 404, "not found", "text/plain")
            return
        method = parsed.path[len("/api/"):]
        with self._lock:
            self.calls.append(Call(method, args, token, time.monotonic()))
            self._changed.notify_all()
            script = self._take_scripted(method, args)
        if method in self.delays:
            time.sleep(self.delays[method])
        if script is not None and script.after:  # done, whatever the client is told
            handler = getattr(self, "_api_" + method.replace(".", "_"), None)
            if handler is not None:
                handler(args)
        if script is not None and script.status == 0:  # dropped: no status line, no body
            req.close_connection = True
            return
        if script is not None:
            headers = {"Retry-After": str(script.retry_after)} if script.retry_after is not None else {}
            self._reply(req, script.status, json.dumps({"ok": False, "error": script.error}),
                        "application/json", headers)
            return
        want = "xapp-" if method == "apps.connections.open" else "xoxb-"
        if not token or not token.startswith(want) or token in self.rejected_tokens:
            result: dict[str, Any] = {"ok": False, "error": "invalid_auth" if token else "not_authed"}
        else:
            handler = getattr(self, "_api_" + method.replace(".", "_"), None)
            result = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        self._reply(req, 200, json.dumps(result), "application/json")

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, body: str, ctype: str,
               headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        req.send_response(status)
        req.send_header("Content-Type", ctype + "; charset=utf-8")
        req.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)

    def _take_scripted(self, method: str, args: dict[str, Any]) -> _Scripted | None:
        """The first scripted failure of `method` that applies to this call (one use of it)."""
        with self._lock:
            scripted = self._scripted.get(method) or []
            script = next((s for s in scripted if s.match is None or s.match(args)), None)
            if script is None:
                return None
            script.times -= 1
            if script.times <= 0:
                scripted.remove(script)
            return script

    def _response_url(self, rid: str, args: dict[str, Any]) -> tuple[int, str]:
        with self._lock:
            posts = self.response_posts.get(rid)
            if posts is None:
                return 404, "no_such_url"
            if len(posts) >= RESPONSE_URL_MAX_POSTS:
                self.violations.append(f"response_url {rid} used more than {RESPONSE_URL_MAX_POSTS} times")
                return 404, "used_url"
            error = self._check_message(args, "response_url")
            if error:  # Slack answers a response_url it refuses with 400 and the error
                return 400, error
            posts.append(dict(args, _at=time.monotonic()))
            self._changed.notify_all()
            return 200, "ok"

    def _check_message(self, args: dict[str, Any], where: str) -> str | None:
        """Slack's size rules; returns an error code and records a violation when broken."""
        problems: list[str] = []
        if args.get("delete_original"):
            return None
        text = args.get("text")
        blocks = args.get("blocks") or []
        if not text:
            problems.append("no fallback text")
        elif len(text) > MAX_TEXT:
            problems.append(f"text of {len(text)} chars")
        if len(blocks) > MAX_BLOCKS:
            problems.append(f"{len(blocks)} blocks")
        in_blocks = self.block_text_size(blocks)
        if in_blocks > MAX_BLOCKS_TEXT:
            self.violations.append(f"{where}: {in_blocks} characters of text in the blocks")
            return "msg_blocks_too_long"
        for b in blocks:
            t = (b.get("text") or {}).get("text", "")
            if len(t) > MAX_SECTION_TEXT:
                problems.append(f"{b.get('type')} text of {len(t)} chars")
            for el in b.get("elements", []) or []:
                if len(str(el.get("value", ""))) > MAX_BUTTON_VALUE:
                    problems.append("button value over 2000 chars")
                if len((el.get("text") or "") if isinstance(el.get("text"), str) else "") > MAX_SECTION_TEXT:
                    problems.append("context element too long")
            problems += self._round_trip_problems(b)
        if problems:
            self.violations.append(f"{where}: " + "; ".join(problems))
            return "invalid_blocks" if blocks else "msg_too_long"
        return None

    @staticmethod
    def block_text_size(blocks: Any) -> int:
        """Every `text` string in a block tree, summed: what bolt-js#2867 measured Slack refusing."""
        if isinstance(blocks, dict):
            return sum(len(v) if k == "text" and isinstance(v, str) else SlackEmulator.block_text_size(v)
                       for k, v in blocks.items())
        if isinstance(blocks, list):
            return sum(SlackEmulator.block_text_size(v) for v in blocks)
        return 0

    @staticmethod
    def _round_trip_problems(block: Any) -> list[str]:
        """A posted block must be exactly what slack_sdk's Block Kit models make of it."""
        from slack_sdk.models.blocks import Block

        try:
            parsed = Block.parse(block)
            if parsed is None or parsed.to_dict() != block:
                return [f"{block.get('type')} block does not round-trip through slack_sdk's Block Kit models"]
        except Exception as e:  # slack_sdk raises SlackObjectFormationError and friends
            return [f"{block.get('type')} block: {e}"]
        return []

    # --- Web API methods -------------------------------------------------------------

    def _api_auth_test(self, args: dict) -> dict:
        return {"ok": True, "url": "https://emu.slack.com/", "team": "Emulator", "user": "flytegpt",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def _api_apps_connections_open(self, args: dict) -> dict:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.ws_port}/link/?ticket={uuid.uuid4()}"}

    def _api_chat_postMessage(self, args: dict) -> dict:
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        error = self._check_message(args, "chat.postMessage")
        if error:
            return {"ok": False, "error": error}
        extra = {k: args[k] for k in ("blocks", "unfurl_links", "unfurl_media", "reply_broadcast", "metadata")
                 if k in args}
        msg = self.seed_message(channel, args.get("text", ""), user=self.bot_user_id,
                                thread_ts=args.get("thread_ts"), bot_id=self.bot_id, app_id=self.app_id, **extra)
        return {"ok": True, "channel": channel, "ts": msg["ts"], "message": msg}

    def _api_chat_update(self, args: dict) -> dict:
        with self._lock:
            ch = self.channels.get(args.get("channel", ""))
            for m in ch.messages if ch else []:
                if m["ts"] == args.get("ts"):
                    if m.get("streaming"):
                        return {"ok": False, "error": "streaming_state_conflict"}
                    error = self._check_message(args, "chat.update")
                    if error:
                        return {"ok": False, "error": error}
                    m["text"] = args.get("text", m.get("text"))
                    if "blocks" in args:
                        m["blocks"] = args["blocks"]
                    m["edited"] = {"user": self.bot_user_id, "ts": self.new_ts()}
                    return {"ok": True, "channel": ch.id, "ts": m["ts"], "text": m["text"]}
        return {"ok": False, "error": "message_not_found"}

    def _api_chat_delete(self, args: dict) -> dict:
        """Only the app's own messages (a bot token deletes nothing else)."""
        with self._lock:
            ch = self.channels.get(args.get("channel", ""))
            for m in ch.messages if ch else []:
                if m["ts"] == args.get("ts"):
                    if m.get("bot_id") != self.bot_id:
                        return {"ok": False, "error": "cant_delete_message"}
                    ch.messages.remove(m)
                    return {"ok": True, "channel": ch.id, "ts": m["ts"]}
        return {"ok": False, "error": "message_not_found"}

    def _api_chat_postEphemeral(self, args: dict) -> dict:
        error = self._check_message(args, "chat.postEphemeral")
        if error:
            return {"ok": False, "error": error}
        with self._lock:
            self.ephemerals.append(dict(args, _at=time.monotonic()))
        return {"ok": True, "message_ts": self.new_ts()}

    def _api_chat_getPermalink(self, args: dict) -> dict:
        ts = str(args.get("message_ts", "")).replace(".", "")
        return {"ok": True, "channel": args.get("channel"),
                "permalink": f"https://emu.slack.com/archives/{args.get('channel')}/p{ts}"}

    def _api_reactions_add(self, args: dict) -> dict:
        with self._lock:
            key = (args.get("channel"), args.get("timestamp"), args.get("name"))
            if any((r["channel"], r["timestamp"], r["name"]) == key for r in self.reactions):
                return {"ok": False, "error": "already_reacted"}
            self.reactions.append({"channel": key[0], "timestamp": key[1], "name": key[2], "_at": time.monotonic()})
        return {"ok": True}

    # --- streaming (chat.startStream / appendStream / stopStream) --------------------------

    def _stream_text(self, args: dict) -> tuple[str, str | None]:
        """The markdown a stream call adds (markdown_text and markdown_text chunks), or an error."""
        parts: list[str] = []
        if args.get("markdown_text") is not None:
            parts.append(str(args["markdown_text"]))
        chunks = args.get("chunks")
        if isinstance(chunks, str):
            try:
                chunks = json.loads(chunks)
            except ValueError:
                return "", "invalid_chunks"
        for chunk in chunks or []:
            kind = chunk.get("type") if isinstance(chunk, dict) else None
            if kind == "markdown_text" and isinstance(chunk.get("text"), str):
                parts.append(chunk["text"])
            elif kind in ("task_update", "plan_update", "blocks"):
                if kind == "task_update" and not (chunk.get("id") and chunk.get("title") and chunk.get("status")):
                    return "", "invalid_chunks"
            else:
                return "", "invalid_chunks"
        if any(len(p) > MAX_MARKDOWN_TEXT for p in parts):
            self.violations.append(f"stream: markdown_text over {MAX_MARKDOWN_TEXT} chars")
            return "", "msg_too_long"
        return "".join(parts), None

    def _open_stream(self, args: dict) -> tuple["_Stream | None", str | None]:
        ts = str(args.get("ts") or "")
        stream = self.streams.get(ts)
        if stream is None:
            return None, "message_not_found"
        if stream.channel != args.get("channel"):
            return None, "channel_not_found"
        if stream.state != "streaming":
            return None, "message_not_in_streaming_state"
        return stream, None

    def _grow(self, stream: _Stream, text: str) -> str | None:
        if len(stream.message["text"]) + len(text) > self.stream_message_limit:
            self.violations.append(f"stream {stream.ts}: message over {self.stream_message_limit} chars")
            return "msg_too_long"
        stream.message["text"] += text
        stream.calls += 1
        self._changed.notify_all()
        return None

    def _api_chat_startStream(self, args: dict) -> dict:
        with self._lock:
            if self.stream_failure:
                return {"ok": False, "error": self.stream_failure}
            channel = self.channels.get(args.get("channel") or "")
            if channel is None:
                return {"ok": False, "error": "channel_not_found"}
            if not channel.is_im:  # Slack: both are required outside a DM
                for key in ("recipient_team_id", "recipient_user_id"):
                    if not args.get(key):
                        return {"ok": False, "error": f"missing_{key}"}
            text, error = self._stream_text(args)
            if error:
                return {"ok": False, "error": error}
            msg = self.seed_message(channel.id, "", user=self.bot_user_id, thread_ts=args.get("thread_ts"),
                                    bot_id=self.bot_id, app_id=self.app_id, streaming=True)
            stream = _Stream(channel.id, msg["ts"], msg)
            self.streams[msg["ts"]] = stream
            error = self._grow(stream, text)
            if error:
                return {"ok": False, "error": error}
            return {"ok": True, "channel": channel.id, "ts": msg["ts"]}

    def _api_chat_appendStream(self, args: dict) -> dict:
        with self._lock:
            stream, error = self._open_stream(args)
            if error or stream is None:
                return {"ok": False, "error": error}
            text, error = self._stream_text(args)
            if error:
                return {"ok": False, "error": error}
            if not text and not args.get("chunks"):
                return {"ok": False, "error": "no_text"}
            error = self._grow(stream, text)
            return {"ok": False, "error": error} if error else {"ok": True, "channel": stream.channel,
                                                                "ts": stream.ts}

    def _api_chat_stopStream(self, args: dict) -> dict:
        with self._lock:
            stream, error = self._open_stream(args)
            if error or stream is None:
                return {"ok": False, "error": error}
            text, error = self._stream_text(args)
            if error:
                return {"ok": False, "error": error}
            blocks = args.get("blocks")
            if blocks is not None:
                error = self._check_blocks(blocks, "chat.stopStream")
                if error:
                    return {"ok": False, "error": error}
            error = self._grow(stream, text)
            if error:
                return {"ok": False, "error": error}
            stream.state = "stopped"
            stream.message.pop("streaming", None)
            if blocks:
                stream.message["blocks"] = blocks
            if args.get("metadata"):
                stream.message["metadata"] = args["metadata"]
            return {"ok": True, "channel": stream.channel, "ts": stream.ts, "message": dict(stream.message)}

    def _check_blocks(self, blocks: Any, where: str) -> str | None:
        """Blocks as Slack's own SDK models parse them, and Slack's per-message limits."""
        from slack_sdk.models.blocks import Block

        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return "invalid_blocks_format"
        problems = []
        if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
            problems.append("not a list of at most 50 blocks")
        else:
            for b in blocks:
                try:
                    parsed = Block.parse(b)
                    if parsed is None or parsed.to_dict() is None:
                        problems.append(f"unknown block {b.get('type')}")
                except Exception as e:  # slack_sdk raises SlackObjectFormationError and friends
                    problems.append(f"{b.get('type')}: {e}")
        if problems:
            self.violations.append(f"{where}: " + "; ".join(problems))
            return "invalid_blocks"
        return None

    # --- assistant.threads.* ------------------------------------------------------------

    def _assistant_call(self, method: str, args: dict, *required: str) -> dict:
        for key in ("channel_id", "thread_ts", *required):
            if args.get(key) is None:
                return {"ok": False, "error": "invalid_arguments"}
        if args.get("channel_id") not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        with self._lock:
            self.assistant_calls.append(dict(args, method=method, _at=time.monotonic()))
            self._changed.notify_all()
        return {"ok": True}

    def _api_assistant_threads_setStatus(self, args: dict) -> dict:
        return self._assistant_call("setStatus", args, "status")  # "" clears the status

    def _api_assistant_threads_setTitle(self, args: dict) -> dict:
        return self._assistant_call("setTitle", args, "title")

    def _api_assistant_threads_setSuggestedPrompts(self, args: dict) -> dict:
        prompts = args.get("prompts")
        if isinstance(prompts, str):
            try:
                prompts = args["prompts"] = json.loads(prompts)
            except ValueError:
                return {"ok": False, "error": "invalid_arguments"}
        if (not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_SUGGESTED_PROMPTS
                or not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts)):
            self.violations.append(f"assistant.threads.setSuggestedPrompts: bad prompts {prompts!r:.200}")
            return {"ok": False, "error": "invalid_arguments"}
        return self._assistant_call("setSuggestedPrompts", args)

    def _api_users_info(self, args: dict) -> dict:
        uid = args.get("user", "")
        user = self.users.get(uid) or {"id": uid, "name": uid.lower(), "real_name": uid,
                                       "profile": {"display_name": uid.lower(), "real_name": uid}}
        return {"ok": True, "user": user}

    def _api_users_list(self, args: dict) -> dict:
        return self._page("members", list(self.users.values()), args)

    def _api_conversations_info(self, args: dict) -> dict:
        ch = self.channels.get(args.get("channel", ""))
        return {"ok": True, "channel": ch.info()} if ch else {"ok": False, "error": "channel_not_found"}

    def _api_conversations_list(self, args: dict) -> dict:
        types = set(str(args.get("types", "public_channel")).split(","))
        if self.scopes is not None:
            needed = sorted({TYPE_SCOPES[t] for t in types if t in TYPE_SCOPES} - self.scopes)
            if needed:
                return {"ok": False, "error": "missing_scope", "needed": ",".join(needed),
                        "provided": ",".join(sorted(self.scopes))}
        exclude_archived = str(args.get("exclude_archived", "false")).lower() in ("true", "1")
        with self._lock:
            chans = []
            for ch in self.channels.values():
                kind = "im" if ch.is_im else ("private_channel" if ch.is_private else "public_channel")
                if kind in types and not (exclude_archived and ch.is_archived):
                    chans.append(ch.info())
        return self._page("channels", chans, args)

    def _page(self, key: str, items: list, args: dict) -> dict:
        """Slack's cursor pagination: opaque `next_cursor`, empty on the last page."""
        limit = int(args.get("limit") or self.page_size) or self.page_size
        if self.max_page is not None:
            limit = min(limit, self.max_page)
        cursor = str(args.get("cursor") or "")
        start = int(cursor[len("dXNlcjo"):]) if cursor.startswith("dXNlcjo") else 0
        page = items[start:start + limit]
        more = start + limit < len(items)
        return {"ok": True, key: page, "has_more": more,
                "response_metadata": {"next_cursor": f"dXNlcjo{start + limit}" if more else ""}}

    def _api_conversations_history(self, args: dict) -> dict:
        with self._lock:
            ch = self.channels.get(args.get("channel", ""))
            if ch is None:
                return {"ok": False, "error": "channel_not_found"}
            oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or 1e12)
            inclusive = str(args.get("inclusive", "false")).lower() in ("true", "1")
            top = []
            for m in ch.messages:
                ts = float(m["ts"])
                in_range = (oldest <= ts <= latest) if inclusive else (oldest < ts < latest)
                if not in_range or (m.get("thread_ts") and m["thread_ts"] != m["ts"]):
                    continue
                item = dict(m)
                replies = [r for r in ch.messages if r.get("thread_ts") == m["ts"] and r["ts"] != m["ts"]]
                if replies:
                    item.update(thread_ts=m["ts"], reply_count=len(replies), latest_reply=replies[-1]["ts"],
                                reply_users=sorted({r.get("user", "") for r in replies}))
                top.append(item)
            top.reverse()  # newest first, as Slack returns them
        return self._page("messages", self._with_metadata(top, args), args)

    def _api_conversations_replies(self, args: dict) -> dict:
        with self._lock:
            ch = self.channels.get(args.get("channel", ""))
            if ch is None:
                return {"ok": False, "error": "channel_not_found"}
            root = str(args.get("ts", ""))
            thread = [dict(m) for m in ch.messages if m["ts"] == root or m.get("thread_ts") == root]
            if not thread:
                return {"ok": False, "error": "thread_not_found"}
            parent = thread[0]
            if len(thread) > 1 and parent["ts"] == root:
                parent.update(thread_ts=root, reply_count=len(thread) - 1, latest_reply=thread[-1]["ts"])
        return self._page("messages", self._with_metadata(thread, args), args)

    @staticmethod
    def _with_metadata(msgs: list[dict[str, Any]], args: dict) -> list[dict[str, Any]]:
        """Slack returns a message's `metadata` only to a read with `include_all_metadata`."""
        if str(args.get("include_all_metadata", "")).lower() in ("1", "true"):
            return msgs
        return [{k: v for k, v in m.items() if k != "metadata"} for m in msgs]
