"""A second Slack Web API stand-in: every method answers `{"ok": true}` and nothing more.

The emulator (slack_emulator.py) answers like Slack; this one answers the way Bolt's and
slack_sdk's own test servers do: `auth.test` with a bot identity, every other method a bare
`{"ok": true}` (no `ts`, no `messages`, no `channel`). A bot that reads a field Slack usually
sends, without a default, fails here and nowhere else. Records each call as (method, arguments);
`responses` sets a method's whole response (e.g. a thread of malformed messages).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

AUTH_TEST = {"ok": True, "url": "https://canned.slack.com/", "team": "Canned", "user": "bot",
             "team_id": "T0CANNED", "user_id": "U0CANNEDBOT", "bot_id": "B0CANNED"}


class CannedSlack:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.responses: dict[str, dict] = {}  # method -> its whole response, instead of {"ok": true}
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
                if raw.startswith("{"):
                    args = json.loads(raw)
                else:
                    args = {k: v[0] for k, v in parse_qs(raw).items()}
                method = self.path.strip("/")
                with stand_in._lock:
                    stand_in.calls.append((method, args))
                reply = AUTH_TEST if method == "auth.test" else stand_in.responses.get(method, {"ok": True})
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def called(self, method: str) -> list[dict]:
        with self._lock:
            return [args for m, args in self.calls if m == method]

    def __enter__(self) -> "CannedSlack":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
