"""The FlyteGPT Slack app: the Bolt app wired to its parts.

Who does what (each its own module):
- client.py: token checks, the WebClient and the Socket Mode handler;
- routing.py: events -> questions (ack, de-duplicate, filter, allow-list, rate limit, pools);
  parking.py: questions asked while the first index loads, held until it is served;
  allowlist.py: [bot] allowed_channels resolved to channel ids at start (fail closed);
  dedupe.py: which events and messages were already seen (memory and a SQLite file);
- answer_job.py: one question -> one reply, every failure turned into something the user reads;
- delivery.py: every Slack write (answers via chat.postMessage or response_url, notices, 👀);
  stream.py: answers streamed as the model writes them; assistant.py: the assistant panel;
- interactions.py: 👍/👎 votes and "Share in channel";
- recording.py: the feedback database, best-effort (feedback.py is the database itself,
  retention.py its daily prune);
- shutdown.py: what SIGTERM does to questions in flight;
- blocks.py / render.py: how replies look (Block Kit layout, Markdown -> mrkdwn).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from flytegpt.bot.sqlite_files import names_a_folder
from flytegpt.ingest.config import ConfigError

from .allowlist import resolve_allowlist
from .answer_job import AnswerJob
from .assistant import AssistantPanel
from .client import SlackTokenError, SlackUnreachable, api_base_url, check_tokens, make_client
from .dedupe import Deduper, seen_path_for
from .delivery import Delivery
from .feedback import FeedbackStore
from .history import ThreadHistory
from .interactions import Interactions
from .recording import AnswerRecorder
from .question import Question
from .ratelimit import RateLimiter
from .routing import EventRouter
from .workers import WorkerPool

if TYPE_CHECKING:
    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config, Settings

__all__ = ["FlyteGPTBot", "Question", "SlackTokenError", "api_base_url", "build_app", "check_tokens",
           "make_client"]

log = logging.getLogger(__name__)


class _ClientTokenNotice(logging.Filter):
    """Drops Bolt's start-up warning that SLACK_BOT_TOKEN "will be unused": Bolt reads that
    variable itself, and we give it the client made from the same token, so the warning would
    greet every operator with a problem that is not there."""

    def filter(self, record: logging.LogRecord) -> bool:
        from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped

        return record.getMessage() != warning_client_prioritized_and_token_skipped()


class _App(App):
    """Bolt's App, acking and ignoring (counted as malformed, once per event_id) an Events API
    envelope whose `event` is not an object before Bolt's own middleware reads it: its authorization
    step calls `event.get(...)`, so each such envelope (Slack never sends one) logged a traceback."""

    def __init__(self, *, on_malformed: Callable[[dict, object], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_malformed = on_malformed

    def dispatch(self, req: BoltRequest) -> BoltResponse:
        body = req.body
        if isinstance(body, dict) and body.get("type") == "event_callback" and not isinstance(body.get("event"), dict):
            self._on_malformed(body, body.get("event"))
            return BoltResponse(status=200, body="")
        return super().dispatch(req)


def check_feedback_db(path: str) -> None:
    """[bot] feedback_db must name a file. A directory can never hold the database: the bot would
    run with 👍/👎 buttons whose every click fails, "try again later", for as long as it runs."""
    if names_a_folder(path):
        raise ConfigError(f"[bot] feedback_db {path} is a directory, not a database file; "
                          f"name a file, e.g. {Path(path) / 'feedback.sqlite3'}")


class FlyteGPTBot:
    """The Bolt app plus the parts it uses; `app` is what a Socket Mode handler runs."""

    def __init__(self, config: "Config", settings: "Settings", answerer: Any,
                 holder: "IndexHolder | None" = None, *, client: WebClient | None = None,
                 metrics: "Metrics | None" = None, feedback: FeedbackStore | None = None,
                 side_workers: int = 2) -> None:
        from flytegpt.bot.metrics import Metrics

        self.config, self.settings = config, settings
        self.answerer, self.holder = answerer, holder
        check_feedback_db(config.bot.feedback_db)  # before any call to Slack: a config error is one line
        self.client = client or make_client(settings)
        try:
            auth = self.client.auth_test()
        except SlackApiError as e:
            raise SlackTokenError(f"Slack rejected SLACK_BOT_TOKEN: {e.response.get('error')}") from None
        except OSError as e:  # no network, a proxy, a wrong SLACK_API_URL (after the client's retries)
            reason = getattr(e, "reason", None) or e.strerror or e
            raise SlackUnreachable(f"cannot reach Slack's Web API at {self.client.base_url}: {reason}") from None
        self.bot_user_id: str = auth["user_id"]
        self.bot_id: str | None = auth.get("bot_id")
        # before any pool, thread or file exists: a name that does not resolve stops the start in one line
        self.allowed = resolve_allowlist(self.client, config.bot.allowed_channels)
        self.metrics = metrics or Metrics()
        self.feedback = AnswerRecorder(config.bot.feedback_db, self.metrics, store=feedback,
                                       max_question_chars=config.answer.max_question_chars)
        self.pool = WorkerPool(config.bot.workers, config.bot.queue_size)
        self.side = WorkerPool(side_workers, 512, name="flytegpt-side")
        self.history = ThreadHistory(self.client)
        self.deduper = Deduper(path=seen_path_for(config.bot.feedback_db))
        self.delivery = Delivery(self.client, self.history, self.metrics, deferred_post_s=config.bot.deferred_post_s)
        self.answer_job = AnswerJob(config, answerer, history=self.history, delivery=self.delivery,
                                    recorder=self.feedback, metrics=self.metrics, pool=self.pool,
                                    bot_user_id=self.bot_user_id, bot_id=self.bot_id,
                                    workspace_url=auth.get("url"),
                                    index_version=lambda: holder.version if holder is not None else None)
        self.interactions = Interactions(self.feedback, self.delivery, self.metrics)
        self.router = EventRouter(config, bot_user_id=self.bot_user_id, bot_id=self.bot_id,
                                  allowed=self.allowed,
                                  deduper=self.deduper, limiter=RateLimiter(config.bot.user_rate_limit, 60.0),
                                  pool=self.pool, side=self.side, history=self.history, delivery=self.delivery,
                                  interactions=self.interactions, metrics=self.metrics, submit=self.answer_job.submit,
                                  turned_away=self.answer_job.turned_away)
        bolt_log = logging.getLogger("slack_bolt")
        if not any(isinstance(f, _ClientTokenNotice) for f in bolt_log.filters):
            bolt_log.addFilter(_ClientTokenNotice())
        self.app = _App(client=self.client, process_before_response=False, logger=bolt_log,
                        on_malformed=self.router.malformed_delivery)
        self.router.register(self.app)
        self.panel = AssistantPanel(config, self.router, self.side, bot_user_id=self.bot_user_id)
        self.app.use(self.panel.assistant)

    def close(self, wait: bool = True) -> None:
        """Stop the pools; the databases are closed only when no answer still runs. Answers
        still waiting for Slack (a shutdown's drain gave them their last try) are dropped, logged."""
        self.pool.shutdown(wait=wait)
        self.delivery.deferred.close()
        self.side.shutdown(wait=wait)
        if self.pool.pending == 0:
            self.feedback.close()
            self.deduper.close()
        else:
            log.warning("answers still running: databases left open for them", extra={"running": self.pool.pending})


def build_app(config: "Config", settings: "Settings", answerer: Any, holder: "IndexHolder | None" = None,
              **kwargs: Any) -> FlyteGPTBot:
    """The FlyteGPT Slack app. `answerer` is anything with `.answer(question, history, *, asked_at=None) -> Answer`
    (and `.stream(...)` alike, when answers stream): `asked_at` is the event's arrival, where the deadline starts."""
    return FlyteGPTBot(config, settings, answerer, holder, **kwargs)
