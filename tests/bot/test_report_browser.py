"""The report page in a real headless Chromium: the charts render, nothing errs, nothing is fetched.

Chromium comes from the distribution's packages (`apt-get install chromium`; `make test`
installs it where apt is available) and is driven over the DevTools protocol with
`websockets`. Set FLYTEGPT_REPORT_SCREENSHOT=tests/report_screenshot.png to refresh the
README's screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.tools import missing_tool

from flytegpt.bot.answering import Citation
from flytegpt.bot.answering.types import Answer
from flytegpt.bot.slack.feedback import FeedbackStore

pytestmark = pytest.mark.slow


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """The few DevTools protocol calls the test needs, over one browser-level websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=64 * 1024 * 1024, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            event = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        self.ws.close()


@pytest.fixture()
def browser(tmp_path: Path):
    binary = chromium_binary()
    if binary is None:
        missing_tool("Chromium is not installed (apt-get install chromium; `make test` does it where apt exists)")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1000,1400", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "Chromium did not open its DevTools port"
        tools = DevTools(url)
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _page(tmp: Path, embedder) -> Path:
    from flytegpt.bot.report import ReportOptions, build_report, render_page
    from flytegpt.bot.report.data import PrivacyFilter
    from flytegpt.ingest.artifact import ModelInfo, publish, write_version
    from flytegpt.ingest.models import Chunk

    store = str(tmp / "store")
    texts = {"docs:caching.md": "Caching: cache=True and cache_version on a task",
             "docs:secrets.md": "Secrets: request a secret in the task decorator",
             "docs:registry.md": "Container registries: push the image to a registry",
             "code:flytekit/core/task.py": "def task(cache: bool = False, retries: int = 0): ..."}
    for ids in (list(texts)[:3], list(texts)):
        chunks = [Chunk(s, s.split(":")[0], s.split(":")[1], f"https://d/{s}", texts[s], texts[s]) for s in ids]
        publish(store, write_version(store, chunks, embedder.embed_documents([c.text for c in chunks]),
                                     ModelInfo(embedder.model_id, embedder.dimension)))
        time.sleep(1.1)  # version ids are per second
    db = FeedbackStore(tmp / "feedback.sqlite3")
    now = time.time()
    asked = [("How do I cache a task?", "llm", ["docs:caching.md"], "mention", ["up"]),
             ("How do I retry a task <script>alert(1)</script>?", "llm", ["code:flytekit/core/task.py"], "slash", []),
             ("How do I pass a secret to a task?", "llm", ["docs:secrets.md", "docs:caching.md"], "followup", ["down"]),
             ("How do I configure a private docker registry?", "not_found", [], "mention", []),
             ("Can I pull images from a private registry?", "not_found", [], "mention", []),
             ("What is the weather in Paris?", "not_found", [], "mention", [])]
    ids = []
    for i, (q, mode, cited, surface, votes) in enumerate(asked * 3):
        cites = [Citation(n + 1, s, f"https://d/{s}", s) for n, s in enumerate(cited)]
        qid = db.record_answer(Answer(q, q, "text", cites, mode, "v"), surface=surface,  # type: ignore[arg-type]
                               channel="C01ASK001", thread_ts=f"1764500000.{i:06d}", user=f"U0ASKER{i % 4}",
                               latency_s=0.5 + i * 0.3, channel_type="channel")
        for n, v in enumerate(votes):
            db.record_vote(qid, v, user=f"U0VOTER{n}", channel="C01ASK001")
        ids.append((qid, now - (i % 6) * 86400 - 60))
    db.record_question("Why is my workflow stuck?", outcome="model_failed", surface="mention", channel="C01ASK001",
                       latency_s=30.0, failure="model_unavailable", channel_type="channel")
    db._conn.executemany("UPDATE answers SET created_at = ? WHERE id = ?", [(t, i) for i, t in ids])
    db.close()
    report = build_report(str(tmp / "feedback.sqlite3"), store=store,
                          options=ReportOptions(since_s=14 * 86400, privacy=PrivacyFilter(None, False),
                                                workspace_url="https://example.slack.com"), embedder=embedder)
    out = tmp / "report.html"
    out.write_text(render_page(report), encoding="utf-8")
    return out


CHARTS_JS = """
(() => {
  const charts = {};
  for (const svg of document.querySelectorAll('svg[data-chart]')) {
    const marks = [...svg.querySelectorAll('[data-value]')];
    const drawn = marks.filter(m => { const b = m.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
    charts[svg.dataset.chart] = {
      marks: marks.length,
      drawn: drawn.length,
      total: marks.reduce((s, m) => s + parseFloat(m.dataset.value), 0),
      width: svg.getBoundingClientRect().width,
    };
  }
  return JSON.stringify({charts, scripts: document.scripts.length, title: document.title,
                         topics: document.querySelectorAll('details ol.topic li').length,
                         threadLinks: [...document.querySelectorAll('a[href*="slack.com/archives/"]')].length});
})()
"""


def test_the_page_renders_its_charts_without_errors_or_network(browser: DevTools, tmp_path: Path, embedder) -> None:
    page = _page(tmp_path, embedder)
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": 1000, "height": 1400, "deviceScaleFactor": 1, "mobile": False}, session=session)
    browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
    browser.wait_for("Page.loadEventFired")
    result = browser.send("Runtime.evaluate", {"expression": CHARTS_JS, "returnByValue": True}, session=session)
    info = json.loads(result["result"]["value"])

    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    fetched = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file://", "data:", "about:")) for u in fetched), fetched  # self-contained

    charts = info["charts"]
    assert set(charts) == {"outcomes-per-day", "votes-per-day", "surfaces-per-day", "gap-topics", "most-cited",
                           "chunks-per-version", "latency-percentiles"}
    for name, c in charts.items():
        assert c["marks"] > 0 and c["drawn"] == c["marks"] and c["width"] > 300, (name, c)
    assert charts["outcomes-per-day"]["total"] == 19  # 18 questions + the failed one
    assert charts["votes-per-day"]["total"] == 6
    assert charts["gap-topics"]["total"] == 12  # 9 not found + 3 voted down
    assert info["scripts"] == 0  # the question with a <script> tag stayed text
    assert info["threadLinks"] > 0 and info["topics"] == 12

    shot = base64.b64decode(browser.send("Page.captureScreenshot", {
        "format": "png", "clip": {"x": 0, "y": 0, "width": 1000, "height": 1400, "scale": 0.6}}, session=session)["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    (tmp_path / "report.png").write_bytes(shot)
    target_file = os.environ.get("FLYTEGPT_REPORT_SCREENSHOT")
    if target_file:
        Path(target_file).write_bytes(shot)
