"""The Bolt app: which Slack events become questions, and how answers get back.

Listeners do no I/O: they ack at once (Slack's 3 s), de-duplicate, filter and hand the
work to pools. Bolt runs listeners on a small executor and waits for the ack there, so a
listener that called Slack or the model would delay the acks of every other event.

- the answer pool (config.bot.workers, config.bot.queue_size) runs retrieval + model;
  when it is full the user is told the bot is busy instead of waiting in an endless queue;
- a small side pool does the cheap Slack calls (👀 reaction, busy and rate-limit
  notices, feedback thanks) and decides whether a thread reply is a follow-up for us
  (that needs the thread's history).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from flytegpt.bot import messages
from flytegpt.bot.messages import BUSY, COMMAND, FAILED, INDEX_NOT_READY, LOOKING, THANKS, USAGE
from flytegpt.ingest.config import ConfigError
from flytegpt.ingest.slack_client import api_base_url, make_web_client

from . import render
from .dedupe import Deduper
from .feedback import FeedbackStore
from .history import ThreadHistory, strip_mentions
from .ratelimit import RateLimiter
from .workers import WorkerPool

if TYPE_CHECKING:
    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config, Settings

log = logging.getLogger(__name__)

PICKED_UP_REACTION = "eyes"
RESPONSE_URL_POSTS = 4  # Slack allows 5 per response_url; keep one spare
_ANSWERABLE_SUBTYPES = (None, "file_share", "thread_broadcast")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


class SlackTokenError(ConfigError):
    """A Slack token is missing or malformed; the message names the variable."""


def check_tokens(settings: "Settings", *, need_app_token: bool = True) -> tuple[str, str | None]:
    """The bot and app tokens from the environment, or an error naming what is wrong."""

    def get(name: str, value: Any, prefix: str, what: str) -> str:
        token = value.get_secret_value().strip() if value is not None else ""
        if not token:
            raise SlackTokenError(f"{name} is not set: export the {what} (it starts with '{prefix}')")
        if not token.startswith(prefix):
            raise SlackTokenError(f"{name} is malformed: a {what} starts with '{prefix}'")
        return token

    bot = get("SLACK_BOT_TOKEN", settings.slack_bot_token, "xoxb-", "bot token (OAuth & Permissions)")
    app = (get("SLACK_APP_TOKEN", settings.slack_app_token, "xapp-", "app-level token with connections:write")
           if need_app_token else None)
    return bot, app


def make_client(settings: "Settings", **kwargs: Any) -> WebClient:
    """The project's WebClient (retries, timeouts: ingest/slack_client.py) with the checked bot token."""
    token, _ = check_tokens(settings, need_app_token=False)
    return make_web_client(settings, token, **kwargs)


@dataclass
class Question:
    """One question on its way through the pools."""

    surface: str  # "mention" | "dm" | "followup" | "command"
    text: str
    channel: str
    user: str
    ts: str | None = None  # the user's message
    thread_ts: str | None = None  # where the answer goes (None: top level, e.g. a DM)
    history_root: str | None = None  # the thread whose messages are the history
    response_url: str | None = None  # slash commands
    received: float = field(default_factory=time.monotonic)


class FlyteGPTBot:
    """The Bolt app plus the parts it uses; `app` is what a Socket Mode handler runs."""

    def __init__(self, config: "Config", settings: "Settings", answerer: Any,
                 holder: "IndexHolder | None" = None, *, client: WebClient | None = None,
                 metrics: "Metrics | None" = None, feedback: FeedbackStore | None = None,
                 side_workers: int = 2) -> None:
        from flytegpt.bot.metrics import Metrics

        self.config, self.settings = config, settings
        self.answerer, self.holder = answerer, holder
        self.client = client or make_client(settings)
        try:
            auth = self.client.auth_test()
        except SlackApiError as e:
            raise SlackTokenError(f"Slack rejected SLACK_BOT_TOKEN: {e.response.get('error')}") from None
        self.metrics = metrics or Metrics()
        self.feedback = feedback or FeedbackStore(config.bot.feedback_db)
        self.pool = WorkerPool(config.bot.workers, config.bot.queue_size)
        self.side = WorkerPool(side_workers, 512, name="flytegpt-side")
        self.deduper = Deduper()
        self.limiter = RateLimiter(config.bot.user_rate_limit, 60.0)
        self.history = ThreadHistory(self.client)
        self.bot_user_id: str = auth["user_id"]
        self.bot_id: str | None = auth.get("bot_id")
        self.allowed = self._resolve_allowlist(config.bot.allowed_channels)
        self.app = App(client=self.client, process_before_response=False, logger=logging.getLogger("slack_bolt"))
        self._register()

    # --- setup ----------------------------------------------------------------------

    def _resolve_allowlist(self, entries: list[str]) -> set[str]:
        """Channel ids as given; names (with or without '#') looked up once at start."""
        ids = {e for e in entries if _CHANNEL_ID.match(e)}
        names = {e.lstrip("#") for e in entries if not _CHANNEL_ID.match(e)}
        if names:
            try:
                cursor = None
                while True:
                    resp = self.client.conversations_list(types="public_channel,private_channel",
                                                          limit=1000, cursor=cursor)
                    ids |= {c["id"] for c in resp.get("channels", []) if c.get("name") in names}
                    cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                    if not cursor:
                        break
            except SlackApiError as e:
                log.warning("could not resolve allowed channel names", extra={"error": e.response.get("error")})
        return ids

    def _register(self) -> None:
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.command(COMMAND)(self._on_command)
        self.app.action(render.ACTION_FEEDBACK_UP)(self._on_feedback)
        self.app.action(render.ACTION_FEEDBACK_DOWN)(self._on_feedback)
        self.app.action(render.ACTION_SHARE)(self._on_share)

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait)
        self.side.shutdown(wait=wait)
        self.feedback.close()

    # --- listeners (no I/O here) ----------------------------------------------------

    def _new_event(self, body: dict) -> bool:
        if self.deduper.new_event(body.get("event_id")):
            return True
        self.metrics.duplicates.labels("event").inc()
        log.info("duplicate event dropped", extra={"event_id": body.get("event_id")})
        return False

    def _from_bot(self, event: dict) -> bool:
        return bool(event.get("bot_id") or event.get("subtype") == "bot_message"
                    or event.get("user") in (None, self.bot_user_id))

    def _mentions_me(self, event: dict) -> bool:
        return f"<@{self.bot_user_id}" in (event.get("text") or "")

    def _on_mention(self, ack: Callable, body: dict, event: dict) -> None:
        ack()
        if not self._new_event(body) or self._from_bot(event):
            return
        if event.get("subtype") not in _ANSWERABLE_SUBTYPES:
            return
        self._accept_channel_message(event, mentioned=True)

    def _on_message(self, ack: Callable, body: dict, event: dict) -> None:
        ack()
        if not self._new_event(body) or self._from_bot(event):
            return
        if event.get("subtype") not in _ANSWERABLE_SUBTYPES:
            return  # edits, deletions, joins ...
        if event.get("channel_type") == "im":
            if not self._claim(event):
                return
            text = strip_mentions(event.get("text", ""), self.bot_user_id)
            thread = event.get("thread_ts")
            self._dispatch(Question("dm", text, event["channel"], event["user"], event["ts"],
                                    thread_ts=thread, history_root=thread))
            return
        if self._mentions_me(event):
            self._accept_channel_message(event, mentioned=True)  # the app_mention twin; first one wins
            return
        thread = event.get("thread_ts")
        if self.config.bot.thread_followups and thread and thread != event.get("ts"):
            self._accept_channel_message(event, mentioned=False)

    def _accept_channel_message(self, event: dict, *, mentioned: bool) -> None:
        channel = event["channel"]
        if self.allowed and channel not in self.allowed:
            if mentioned and self._claim(event):
                self._side(self._ephemeral, channel, event["user"], messages.only_in_channels(list(self.allowed)),
                           event.get("thread_ts"), True)
            return
        if not self._claim(event):
            return
        thread = event.get("thread_ts") or event["ts"]
        q = Question("mention" if mentioned else "followup", strip_mentions(event.get("text", ""), self.bot_user_id),
                     channel, event["user"], event["ts"], thread_ts=thread,
                     history_root=event.get("thread_ts"))
        if mentioned:
            self._dispatch(q)
        elif not self._side(self._triage_followup, q):
            log.warning("side pool full: thread reply not checked", extra={"channel": channel})

    def _claim(self, event: dict) -> bool:
        if self.deduper.claim_message(event["channel"], event["ts"]):
            return True
        self.metrics.duplicates.labels("message").inc()
        return False

    def _on_command(self, ack: Callable, command: dict) -> None:
        text = (command.get("text") or "").strip()
        if not text or text.lower() in ("help", "-h", "--help", "?"):
            ack(text=render.render_markdown_notice(USAGE).text, response_type="ephemeral")
            return
        channel, user = command.get("channel_id", ""), command.get("user_id", "")
        if self.allowed and channel not in self.allowed and not channel.startswith("D"):
            ack(text=messages.only_in_channels(list(self.allowed)), response_type="ephemeral")
            return
        wait = self.limiter.check(user)
        if wait:
            self.metrics.rate_limited.inc()
            ack(text=messages.rate_limited(wait), response_type="ephemeral")
            return
        q = Question("command", text, channel, user, response_url=command.get("response_url"))
        if not self.pool.submit(self._answer, q):
            self.metrics.busy.inc()
            ack(text=BUSY, response_type="ephemeral")
            return
        self.metrics.questions.labels("command").inc()
        ack(text=LOOKING, response_type="ephemeral")

    def _on_feedback(self, ack: Callable, body: dict, action: dict) -> None:
        ack()
        vote = "up" if action.get("action_id") == render.ACTION_FEEDBACK_UP else "down"
        self._side(self._record_feedback, body, action.get("value", ""), vote)

    def _on_share(self, ack: Callable, body: dict, action: dict) -> None:
        ack()
        self._side(self._share, body, action.get("value", ""))

    # --- dispatch ---------------------------------------------------------------------

    def _side(self, fn: Callable, *args: Any) -> bool:
        return self.side.submit(fn, *args)

    def _dispatch(self, q: Question) -> None:
        """Rate limit, then the answer pool (or a busy notice); the 👀 shows it was picked up."""
        wait = self.limiter.check(q.user)
        if wait:
            self.metrics.rate_limited.inc()
            self._side(self._ephemeral, q.channel, q.user, messages.rate_limited(wait), q.thread_ts)
            return
        if not self.pool.submit(self._answer, q):
            self.metrics.busy.inc()
            log.warning("worker queue full: busy reply", extra={"channel": q.channel})
            self._side(self._post_notice, q, BUSY)
            return
        self.metrics.questions.labels(q.surface).inc()
        self.metrics.pending.set(self.pool.pending)
        if q.ts:
            self._side(self._react, q.channel, q.ts)

    def _triage_followup(self, q: Question) -> None:
        """A thread reply without a mention is for us only where we already answered."""
        assert q.history_root is not None
        if self.history.bot_participated(q.channel, q.history_root, self.bot_user_id, self.bot_id,
                                         current_ts=q.ts):
            self._dispatch(q)

    # --- side tasks (cheap Slack calls) -----------------------------------------------

    def _react(self, channel: str, ts: str) -> None:
        try:
            self.client.reactions_add(channel=channel, timestamp=ts, name=PICKED_UP_REACTION)
        except SlackApiError as e:
            if e.response.get("error") != "already_reacted":
                log.info("reaction failed", extra={"error": e.response.get("error")})

    def _ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None,
                   mrkdwn: bool = False) -> None:
        msg = render.render_notice(text, mrkdwn=mrkdwn)
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, **msg.kwargs())
        except SlackApiError as e:
            log.warning("ephemeral notice failed", extra={"error": e.response.get("error")})

    def _record_feedback(self, body: dict, answer_id: str, vote: str) -> None:
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        known = self.feedback.record_vote(answer_id, vote, user=user, channel=channel)  # type: ignore[arg-type]
        if known:
            self.metrics.feedback.labels(vote).inc()
        text = THANKS if known else messages.VOTE_UNKNOWN_ANSWER
        self._respond(body, text, channel, user)

    def _respond(self, body: dict, text: str, channel: str | None, user: str) -> None:
        """An ephemeral reply to an interaction: via its response_url, else chat.postEphemeral."""
        url = body.get("response_url")
        msg = render.render_notice(text)
        if url:
            try:
                WebhookClient(url, timeout=15).send(text=msg.text, blocks=msg.blocks, response_type="ephemeral",
                                                    replace_original=False)
                return
            except Exception as e:  # noqa: BLE001 - fall back to the Web API
                log.info("response_url failed, using chat.postEphemeral", extra={"error": str(e)})
        if channel:
            self._ephemeral(channel, user, text)

    def _share(self, body: dict, answer_id: str) -> None:
        """Post a /flytegpt answer (ephemeral so far) for everyone in the channel."""
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        stored = self.feedback.get_answer(answer_id)
        if stored is None:
            self._respond(body, messages.SHARE_GONE, channel, user)
            return
        answer = _StoredAnswer.from_row(stored)
        posts = render.render_answer(answer, feedback_id=answer_id, share=False,
                                        question=stored["question"], shared_by=user or None)
        url = body.get("response_url")
        try:
            if url:
                hook = WebhookClient(url, timeout=15)
                for m in posts[:RESPONSE_URL_POSTS - 1]:
                    resp = hook.send(text=m.text, blocks=m.blocks, response_type="in_channel",
                                     replace_original=False)
                    if resp.status_code != 200:
                        raise RuntimeError(f"response_url answered {resp.status_code}: {resp.body}")
                hook.send(delete_original=True)
            elif channel:
                for m in posts:
                    self.client.chat_postMessage(channel=channel, unfurl_links=False, unfurl_media=False,
                                                 **m.kwargs())
        except Exception:  # noqa: BLE001
            log.exception("sharing an answer failed")
            self._respond(body, messages.SHARE_FAILED, channel, user)

    # --- answering (answer pool) ----------------------------------------------------

    def _answer(self, q: Question) -> None:
        from flytegpt.bot.answering import IndexNotReady, ModelUnavailable, QuestionRejected

        self.metrics.pending.set(self.pool.pending)
        try:
            history = []
            if q.history_root and q.ts:
                history = self.history.turns(q.channel, q.history_root, before_ts=q.ts,
                                             bot_user_id=self.bot_user_id, bot_id=self.bot_id,
                                             max_turns=self.config.answer.history_turns)
            answer = self.answerer.answer(q.text, history)
        except QuestionRejected as e:
            self.metrics.failures.labels("rejected").inc()
            self._deliver(q, [render.render_notice(str(e))])
            return
        except IndexNotReady as e:
            self.metrics.failures.labels("index_not_ready").inc()
            self._deliver(q, [render.render_notice(str(e) or INDEX_NOT_READY)])
            return
        except ModelUnavailable as e:
            self.metrics.failures.labels("model_unavailable").inc()
            log.warning("model unavailable: apology with sources", extra={"related": len(e.related)})
            reason = messages.NO_ANSWER_WRITTEN.format(reason=e)
            if e.related:
                reason += messages.MEANWHILE_SOURCES
            self._deliver(q, render.render_apology(e.related, reason))
            return
        except Exception:  # noqa: BLE001 - the user must hear back, whatever broke
            self.metrics.failures.labels("error").inc()
            log.exception("answering failed")
            self._deliver(q, [render.render_notice(FAILED)])
            return
        answer_id = self.feedback.record_answer(answer, surface=q.surface, channel=q.channel,
                                                thread_ts=q.thread_ts, user=q.user)
        posts = render.render_answer(answer, feedback_id=answer_id, share=q.surface == "command",
                                        question=q.text if q.surface == "command" else None)
        if self._deliver(q, posts):
            self.metrics.answers.labels(answer.mode).inc()
            self.metrics.latency.observe(time.monotonic() - q.received)
            log.info("answered", extra={"surface": q.surface, "mode": answer.mode, "answer_id": answer_id,
                                        "index_version": answer.index_version,
                                        "seconds": round(time.monotonic() - q.received, 3)})

    def _deliver(self, q: Question, posts: list[render.SlackMessage]) -> bool:
        """Post the messages where the question came from; False when Slack refused them."""
        try:
            if q.response_url:
                hook = WebhookClient(q.response_url, timeout=15)
                if len(posts) > RESPONSE_URL_POSTS:
                    posts = posts[:RESPONSE_URL_POSTS - 1] + [
                        render.render_notice(messages.TRUNCATED)]
                for m in posts:
                    resp = hook.send(text=m.text, blocks=m.blocks, response_type="ephemeral",
                                     replace_original=False)
                    if resp.status_code != 200:
                        raise RuntimeError(f"response_url answered {resp.status_code}: {resp.body}")
            else:
                for m in posts:
                    extra: dict[str, Any] = {"thread_ts": q.thread_ts, "reply_broadcast": False} if q.thread_ts else {}
                    self.client.chat_postMessage(channel=q.channel, unfurl_links=False, unfurl_media=False,
                                                 **extra, **m.kwargs())
                if q.thread_ts:
                    self.history.invalidate(q.channel, q.thread_ts)
            return True
        except Exception:  # noqa: BLE001
            self.metrics.failures.labels("post_failed").inc()
            log.exception("posting the answer failed", extra={"channel": q.channel})
            return False

    def _post_notice(self, q: Question, text: str) -> None:
        self._deliver(q, [render.render_notice(text)])


@dataclass(frozen=True)
class _StoredAnswer:
    """An answer read back from the feedback store (for sharing), shaped like Answer."""

    question: str
    text: str
    citations: list
    mode: str
    index_version: str | None

    @classmethod
    def from_row(cls, row: dict) -> "_StoredAnswer":
        from flytegpt.bot.answering import Citation

        cites = [Citation(int(s["n"]), s.get("title", ""), s.get("url", ""), s.get("source_id", ""))
                 for s in row["sources"]]
        return cls(row["question"], row["answer"], cites, row.get("mode") or "", row.get("index_version"))


def build_app(config: "Config", settings: "Settings", answerer: Any, holder: "IndexHolder | None" = None,
              **kwargs: Any) -> FlyteGPTBot:
    """The FlyteGPT Slack app. `answerer` is anything with `.answer(question, history) -> Answer`."""
    return FlyteGPTBot(config, settings, answerer, holder, **kwargs)
