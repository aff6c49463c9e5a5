"""/metrics shows how long questions wait for a worker (`flytegpt_queue_wait_seconds`), beside
`flytegpt_answer_seconds`: with a slow model the wait is where the minutes went.

The real `serve` path (BotServer: the Bolt app over Socket Mode, the worker pool, the answerer with
ChatOpenAI, the health and metrics server), scraped over HTTP as Prometheus does, against the
Slack emulator and the OpenAI-compatible stand-in on 127.0.0.1.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from support.openai_server import OpenAIStandIn
from support.slack_emulator import SlackEmulator
from support.slack_harness import ANSWER, CACHE_Q

from flytegpt.bot import messages
from flytegpt.bot.serve import BotServer
from flytegpt.ingest.config import Settings, load_config, sample_config_path

pytestmark = pytest.mark.timeout(120)

DEADLINE_S, GAP_S = 3.0, 2.0  # the model writes a piece every GAP_S: a question taken holds the worker ~5 s


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        assert r.status == 200
        return r.read().decode()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:  # 503: the index is still loading
        return False


def _value(metrics: str, sample: str) -> float:
    """One sample's value, e.g. `flytegpt_queue_wait_seconds_bucket{le="1.0"}`."""
    m = re.search(rf"^{re.escape(sample)} (\S+)$", metrics, re.M)
    assert m, f"{sample} is not in /metrics"
    return float(m.group(1))


def _finished(emu: SlackEmulator, ts: str, timeout: float = 30.0) -> dict:
    [msg] = emu.wait_for(lambda: (m := emu.bot_messages(thread_ts=ts)) and not any(x.get("streaming") for x in m)
                         and m, timeout)
    return msg


def test_every_question_a_worker_takes_counts_its_wait_also_when_its_deadline_passed_in_the_queue(
        built_store, embedder, tmp_path):
    base = load_config(sample_config_path()).with_store(str(built_store))
    config = base.model_copy(update={
        "bot": base.bot.model_copy(update={"feedback_db": str(tmp_path / "fb.sqlite3"), "workers": 1,
                                           "streaming": True}),
        "answer": base.answer.model_copy(update={"deadline_s": DEADLINE_S, "max_retries": 0, "timeout_s": 10.0})})
    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        llm.reply = lambda body: ANSWER
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                            SLACK_API_URL=emu.api_url, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="sk-test")
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
        server.start()
        try:
            url = f"http://127.0.0.1:{server.http_port}"
            emu.wait_connected()
            emu.wait_for(lambda: _ready(url), timeout=30)  # the index is loaded in the background
            metrics = _metrics(url)
            assert "# HELP flytegpt_queue_wait_seconds From the event arriving to a worker starting to answer it" \
                in metrics
            assert _value(metrics, "flytegpt_queue_wait_seconds_count") == 0
            buckets = re.findall(r'^flytegpt_queue_wait_seconds_bucket\{le="([^"]+)"\}', metrics, re.M)
            assert buckets[0] == "0.01" and "45.0" in buckets and buckets[-2:] == ["120.0", "+Inf"]

            # a question answered: counted once, and with a free worker it hardly waited
            d = emu.mention(CACHE_Q, user="U0FIRST")
            assert _finished(emu, d.ts)["text"] == ANSWER
            metrics = _metrics(url)
            assert _value(metrics, "flytegpt_queue_wait_seconds_count") == 1
            assert _value(metrics, 'flytegpt_queue_wait_seconds_bucket{le="1.0"}') == 1
            assert _value(metrics, "flytegpt_queue_wait_seconds_sum") <= _value(metrics, "flytegpt_answer_seconds_sum")

            # a slow model and one worker: the first of three takes it; the two behind wait past their
            # deadline in the queue and get the busy notice at once. All three are counted, the two with
            # the seconds they waited
            llm.token_delay, llm.stream_tokens = GAP_S, 40
            asked = [emu.mention(CACHE_Q, user=f"U0SLOW{i}") for i in range(3)]
            replies = [_finished(emu, a.ts)["text"] for a in asked]
            assert replies.count(messages.BUSY) == 2
            metrics = _metrics(url)
            assert _value(metrics, "flytegpt_queue_wait_seconds_count") == 4
            assert _value(metrics, 'flytegpt_failures_total{reason="queue_timeout"}') == 2
            waited_long = (_value(metrics, "flytegpt_queue_wait_seconds_count")
                           - _value(metrics, 'flytegpt_queue_wait_seconds_bucket{le="2.5"}'))
            assert waited_long == 2  # the two turned away waited longer than most of their deadline
            assert _value(metrics, "flytegpt_queue_wait_seconds_sum") >= 2 * DEADLINE_S
        finally:
            server.stop()
        assert emu.violations == []
