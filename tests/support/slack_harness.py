"""The real FlyteGPT Slack app wired to stand-ins on 127.0.0.1, for the test_slack_* files.

Real pieces: slack-bolt + slack_sdk (the Socket Mode client the bot uses, WebClient with its retry
handlers), the Answerer with ChatOpenAI, HybridSearcher over an index of the bundled
sample corpus. Stand-ins: the Slack emulator and the OpenAI-compatible server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.openai_server import OpenAIStandIn
from support.slack_emulator import SlackEmulator

from flytegpt.ingest.config import Config, Settings, load_config, sample_config_path

CACHE_Q = "I changed my task's code but the cached result is still returned. How do I invalidate the cache?"
ANSWER = "Bump **`cache_version`** in the task decorator to invalidate the cache [1]."
STANDALONE = "How do I invalidate the cache of a map task?"
CLIENT_TRIES = 4  # the WebClient's first try and its 3 retries (ingest/slack_client.py)


def build_sample_index(store: Path, embedder: Any) -> Config:
    """Ingest the bundled sample corpus into `store` (publishes LATEST)."""
    from flytegpt.ingest.pipeline import run_ingest

    config = load_config(sample_config_path()).with_store(str(store))
    run_ingest(config, progress=False, embedder=embedder)
    return config


def open_sample(store: Path, embedder: Any) -> tuple[Config, Any]:
    """(config, searcher) over a fresh index of the sample corpus in `store`."""
    from flytegpt.ingest.search import HybridSearcher

    config = build_sample_index(store, embedder)
    return config, HybridSearcher.open(config, embedder=embedder)


def tuned(config: Config, *, feedback_db: Path, bot: dict | None = None, answer: dict | None = None) -> Config:
    """The config with [bot]/[answer] keys overridden (fast retries for tests).

    Answers are posted whole (`streaming` off) unless a test asks for streaming: the routing
    and delivery tests read posted messages; test_streaming.py covers streamed answers.
    """
    answer_defaults = {"max_retries": 0, "retry_backoff_s": 0.01, "timeout_s": 10.0}
    bot_defaults = {"feedback_db": str(feedback_db), "streaming": False}
    return config.model_copy(update={
        "bot": config.bot.model_copy(update={**bot_defaults, **(bot or {})}),
        "answer": config.answer.model_copy(update={**answer_defaults, **(answer or {})}),
    })


def llm_reply(body: dict) -> str:
    """The stand-in model: condenses follow-ups, answers with a citation otherwise."""
    system = str(body["messages"][0].get("content", ""))
    return STANDALONE if "standalone question" in system else ANSWER


def held_reply(gate: threading.Event, timeout_s: float = 60.0) -> Callable[[dict], str]:
    """The stand-in model answering only once `gate` is set (condensing follow-ups at once): a
    model that is slow exactly as long as a test needs."""
    def reply(body: dict) -> str:
        if "standalone question" in str(body["messages"][0].get("content", "")):
            return STANDALONE
        gate.wait(timeout_s)
        return ANSWER
    return reply


class BotHarness:
    """Emulator + model stand-in + the bot connected over Socket Mode."""

    def __init__(self, config: Config, holder: Any, *, ping_interval: float = 1.0,
                 answerer: Any = None) -> None:
        self.config, self.holder = config, holder
        self.ping_interval = ping_interval
        self.emu = SlackEmulator()
        self.llm = OpenAIStandIn()
        self.llm.reply = llm_reply
        self._answerer = answerer
        self.bot: Any = None
        self.handler: Any = None

    def settings(self) -> Settings:
        return Settings(OPENAI_BASE_URL=self.llm.base_url, OPENAI_API_KEY="sk-test-key",
                        SLACK_BOT_TOKEN="xoxb-test-token", SLACK_APP_TOKEN="xapp-test-token",
                        SLACK_API_URL=self.emu.api_url)

    def start(self) -> "BotHarness":

        from flytegpt.bot.answering import Answerer
        from flytegpt.bot.slack.app import build_app
        from flytegpt.bot.slack.client import make_client, socket_mode_handler

        self.emu.start()
        self.llm.start()
        settings = self.settings()
        answerer = self._answerer or Answerer(self.config, settings, self.holder.get)
        # Slack's transient errors are retried as in production, with short waits
        client = make_client(settings, backoff_factor_s=0.05)
        self.bot = build_app(self.config, settings, answerer, self.holder, client=client)
        self.handler = socket_mode_handler(self.bot.app, "xapp-test-token", self.bot.client,
                                         ping_interval=self.ping_interval)
        self.handler.connect()
        self.emu.wait_connected(1, timeout=10)
        return self

    def stop(self) -> None:
        if self.handler is not None:
            # slack_sdk's close joins its polling threads (seconds); nothing waits on it here
            self.handler.client.auto_reconnect_enabled = False
            threading.Thread(target=self.handler.close, daemon=True).start()
        if self.bot is not None:
            self.bot.close(wait=False)
        self.llm.close()
        self.emu.stop()

    def __enter__(self) -> "BotHarness":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def idle(self, timeout: float = 15.0) -> None:
        """Wait until the side pool and the answer pool have nothing left to do."""
        for _ in range(2):  # side tasks can submit answers and answers can submit side tasks
            assert self.bot.side.wait_idle(timeout) and self.bot.pool.wait_idle(timeout)

    def answers(self, **kw: Any) -> list[dict]:
        return self.emu.bot_messages(**kw)

    def wait_answers(self, n: int = 1, timeout: float = 15.0, **kw: Any) -> list[dict]:
        return self.emu.wait_for(lambda: (a := self.answers(**kw)) and len(a) >= n and a, timeout)

    def deferred(self, outcome: str) -> float:
        """flytegpt_deferred_posts_total{outcome}: answers Slack refused for a while, and their fate."""
        return self.bot.metrics.deferred_posts.labels(outcome)._value.get()

    def post_failed(self) -> float:
        """flytegpt_failures_total{reason="post_failed"}: answers Slack never took."""
        return self.bot.metrics.failures.labels("post_failed")._value.get()

    def logged_questions(self) -> list[dict]:
        """The question log's rows (what the maintainers' report reads), from the database itself."""
        from flytegpt.bot.slack.feedback import FeedbackStore

        store = FeedbackStore(self.config.bot.feedback_db)
        try:
            return store.questions()
        finally:
            store.close()


@contextmanager
def harness_factory(sample: tuple[Config, Any], feedback_db: Path, *,
                    bot_defaults: dict | None = None) -> Iterator[Callable[..., BotHarness]]:
    """Yields make(bot=, answer=, empty=, answerer=, setup=) that starts a tuned bot; stops them all on exit
    and checks the emulator saw no Slack API violations."""
    from flytegpt.bot.index_holder import IndexHolder

    running: list[BotHarness] = []

    def make(*, bot: dict | None = None, answer: dict | None = None, empty: bool = False,
             answerer: Any = None, setup: Callable[[SlackEmulator], None] | None = None) -> BotHarness:
        """`setup(emu)` runs before the bot starts (channels, scopes it must find at start)."""
        config, searcher = sample
        config = tuned(config, feedback_db=feedback_db, bot={**(bot_defaults or {}), **(bot or {})}, answer=answer)
        h = BotHarness(config, IndexHolder(None if empty else searcher), answerer=answerer)
        if setup is not None:
            setup(h.emu)
        try:
            h.start()
        except BaseException:  # a bot that refuses to start: its stand-ins are stopped all the same
            h.stop()
            raise
        running.append(h)
        return h

    try:
        yield make
    finally:
        for h in running:
            h.stop()
    for h in running:
        assert h.emu.violations == []
