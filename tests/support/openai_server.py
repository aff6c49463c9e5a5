"""An OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

Real HTTP, so the real `ChatOpenAI` (and the real openai client underneath) is what gets
tested. It records every request body it receives, and can be scripted per request:
a fixed reply, a reply computed from the request, HTTP errors (500, 429 + Retry-After),
or hanging past the client's timeout. Plain and streaming (SSE) responses; `Slow` streams a
reply token by token with a delay (and can hang half-way), as a real model writes.

`GET /v1/models` lists `models` (by default the model a Settings() without FLYTEGPT_CHAT_MODEL
asks for), or answers with `models_step` (a Fail, a Page); those requests are kept apart in
`listings`, so `requests` stays the chat completions. `context_window` (tokens, counted by
`count_tokens`) makes it refuse a prompt plus max_tokens over it as vLLM does (HTTP 400).

    with OpenAIStandIn() as server:
        server.reply = "Use RayJobConfig [1]."
        server.script(Fail(500), Reply("ok"))     # next two requests, then `reply` again
        ChatOpenAI(base_url=server.base_url, api_key="x", ...)
        server.requests[-1]["messages"]
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    text: str | Callable[[dict], str]
    # the reply's finish_reason ("length", "content_filter"); None: a stream that ends without one
    # (and without `data: [DONE]`), as a proxy that cut its upstream sends; whole replies say "stop" then
    finish: str | None = "stop"


@dataclass
class Page:
    """A reply that is not the API's: `body` with `content_type` (an SSO sign-in page from a proxy)."""

    body: str = "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>Sign in</form></body></html>"
    status: int = 200
    content_type: str = "text/html"


@dataclass
class Fail:
    status: int = 500
    retry_after: float | None = None
    message: str = "stand-in failure"
    type: str = "server_error"  # the error's "type" ("invalid_request_error", "model_not_found")
    code: str | None = None  # the error's "code" ("context_length_exceeded"); None: left out
    delay: float = 0.0  # seconds before the error is sent (a server that read the whole prompt first)


@dataclass
class Hang:
    seconds: float = 30.0  # longer than the client's timeout; released early on close()


@dataclass
class Slow:
    """A reply that takes its time: `tokens` pieces, `delay` seconds apart.

    Streamed, every piece is one SSE event (the first after `delay` too, as a model's
    time to first token); not streamed, the whole reply comes after tokens x delay.
    `hang_after` stops the stream after that many pieces and hangs (until close()).
    """

    text: str | Callable[[dict], str]
    tokens: int = 40
    delay: float = 0.1
    hang_after: int | None = None
    finish: str | None = "stop"  # as Reply.finish


@dataclass
class Recorded:
    body: dict
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None  # streamed replies: when the first piece was sent
    done_at: float | None = None  # when the reply was complete

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages", [])

    def text_of(self, role: str) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == role)


class OpenAIStandIn:
    LISTED = ("gpt-4o-mini",)  # Settings' default chat model, as OpenAI lists it

    def __init__(self) -> None:
        self.reply: str | Callable[[dict], str] = "OK"
        self.requests: list[Recorded] = []
        self._script: deque = deque()
        # every reply without a scripted step: streamed as `stream_tokens` pieces `token_delay` apart
        self.token_delay: float = 0.0
        self.stream_tokens: int | None = None
        self._lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0  # requests being answered now / at most at once
        # GET /models: the ids it lists, or what answers instead; every such request is in `listings`
        self.models: list[str] = list(self.LISTED)
        self.models_step: Fail | Page | None = None
        self.listings: list[Recorded] = []
        # a server-side context window: a prompt (its messages' text, counted by `count_tokens`) plus
        # the request's max_tokens over it is refused with vLLM's HTTP 400 (not a scripted step)
        self.context_window: int | None = None
        self.count_tokens: Callable[[str], int] = lambda text: (len(text) + 3) // 4
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # ---- control --------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *steps: Reply | Fail | Hang | Slow | Page) -> None:
        """Behaviours for the next requests, in order; afterwards `reply` answers."""
        with self._lock:
            self._script.extend(steps)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.reply = "OK"
            self.token_delay, self.stream_tokens = 0.0, None
            self.most_in_flight = 0
            self.models, self.models_step = list(self.LISTED), None
            self.listings.clear()
            self.context_window = None

    def start(self) -> "OpenAIStandIn":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "OpenAIStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _next(self, body: dict, headers: dict[str, str]) -> tuple[Recorded, Reply | Fail | Hang | Slow | Page]:
        with self._lock:
            rec = Recorded(body, headers)
            self.requests.append(rec)
            too_long = self._over_window(body)
            return rec, too_long if too_long is not None else self._step()

    def _over_window(self, body: dict) -> Fail | None:
        """vLLM's refusal of a prompt that, with the completion's max_tokens, exceeds the window."""
        if self.context_window is None:
            return None
        prompt = sum(self.count_tokens(str(m.get("content") or "")) for m in body.get("messages", []))
        completion = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        if prompt + completion <= self.context_window:
            return None
        return Fail(400, type="BadRequestError", message=(
            f"This model's maximum context length is {self.context_window} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
            "Please reduce the length of the messages or completion."))

    def _step(self) -> Reply | Fail | Hang | Slow | Page:
        """The next behaviour (called with the lock held)."""
        if self._script:
            return self._script.popleft()
        if self.token_delay or self.stream_tokens:
            return Slow(self.reply, tokens=self.stream_tokens or 40, delay=self.token_delay)
        return Reply(self.reply)

    # ---- HTTP -----------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _json(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if not self.path.split("?", 1)[0].rstrip("/").endswith("/models"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                with server._lock:
                    server.listings.append(Recorded({}, {k.lower(): v for k, v in self.headers.items()}))
                    step, models = server.models_step, list(server.models)
                if isinstance(step, Page):
                    self._page(step)
                elif isinstance(step, Fail):
                    self._fail(step)
                else:
                    self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "stand-in"} for m in models]})

            def _page(self, step: Page) -> None:
                data = step.body.encode()
                self.send_response(step.status)
                self.send_header("Content-Type", step.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _fail(self, step: Fail) -> None:
                extra = {}
                if step.retry_after is not None:
                    extra["Retry-After"] = f"{step.retry_after:g}"
                error: dict[str, Any] = {"message": step.message, "type": step.type}
                if step.code is not None:
                    error["code"] = step.code
                self._json(step.status, {"error": error}, extra)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    self._answer(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict) -> None:
                rec, step = server._next(body, {k.lower(): v for k, v in self.headers.items()})
                if isinstance(step, Hang):
                    server._closing.wait(step.seconds)
                    try:
                        self._json(500, {"error": {"message": "hung", "type": "server_error"}})
                    except OSError:
                        pass
                    return
                if isinstance(step, Page):
                    self._page(step)
                    return
                if isinstance(step, Fail):
                    if step.delay:
                        server._closing.wait(step.delay)
                    self._fail(step)
                    return
                text = step.text(body) if callable(step.text) else step.text
                model = body.get("model", "stand-in")
                if isinstance(step, Slow) and body.get("stream"):
                    self._stream(text, model, step, rec, finish=step.finish)
                    return
                if isinstance(step, Slow):
                    server._closing.wait(step.tokens * step.delay)
                if body.get("stream"):
                    self._stream(text, model, finish=step.finish)
                else:
                    self._json(
                        200,
                        {
                            "id": "chatcmpl-standin",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": step.finish or "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )

            def _stream(self, text: str, model: str, slow: Slow | None = None, rec: Recorded | None = None,
                        finish: str | None = "stop") -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                if slow is None:
                    pieces = [text[i : i + 8] for i in range(0, len(text), 8)] or [""]
                else:
                    size = -(-len(text) // max(1, slow.tokens)) or 1
                    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
                for i, piece in enumerate(pieces):
                    if slow is not None:
                        if slow.hang_after is not None and i >= slow.hang_after:
                            server._closing.wait(3600)
                            self.close_connection = True
                            return
                        if server._closing.wait(slow.delay):
                            return
                    delta: dict[str, Any] = {"content": piece}
                    if i == 0:
                        delta["role"] = "assistant"
                    chunk = {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    if slow is not None:
                        self.wfile.flush()
                    if rec is not None and rec.first_token_at is None:
                        rec.first_token_at = time.monotonic()
                end = {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                }
                if finish is not None:
                    self.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                if rec is not None:
                    rec.done_at = time.monotonic()
                self.close_connection = True

        return Handler
