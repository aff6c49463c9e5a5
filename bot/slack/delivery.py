"""Delivery: the one way replies reach Slack.

A question came either from a conversation (mention, thread follow-up, DM: the answer is
posted with chat.postMessage, in the thread when there is one) or from the slash command
(the answer goes to its response_url, which Slack accepts at most 5 times). `send` is the
one helper that knows both; `post` is what the answer job calls with a question and the
rendered answer. The small notices around an answer (👀, ephemeral notices, replies to
button clicks) are here too, so every Slack write of the bot is in this module.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal, Sequence

from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from flytegpt.bot import messages
from flytegpt.ingest.slack_client import retry_handlers

from .blocks import SlackMessage, render_notice

if TYPE_CHECKING:
    from slack_sdk import WebClient

    from flytegpt.bot.metrics import Metrics

    from .history import ThreadHistory
    from .question import Question

log = logging.getLogger(__name__)

PICKED_UP_REACTION = "eyes"
RESPONSE_URL_POSTS = 4  # Slack allows 5 per response_url; keep one spare
WEBHOOK_TIMEOUT_S = 15
LANDED_CHECKS, LANDED_CHECK_S = 3, 1.0  # after a timed-out post: look for it this often, this far apart
LANDED_LOOKBACK_S = 600  # ... among the thread's messages of the last ten minutes


def _webhook(url: str) -> WebhookClient:
    """A response_url client with the same retries as the Web API client."""
    return WebhookClient(url, timeout=WEBHOOK_TIMEOUT_S, retry_handlers=retry_handlers())


def _slack_error(e: Exception) -> str:
    if isinstance(e, SlackApiError):
        return str(e.response.get("error"))
    return f"{type(e).__name__}: {e}"


class DeliveryError(RuntimeError):
    """Slack did not accept a reply (after the client's retries)."""


class Delivery:
    def __init__(self, client: "WebClient", history: "ThreadHistory", metrics: "Metrics") -> None:
        self.client, self.history, self.metrics = client, history, metrics

    # --- answers ----------------------------------------------------------------------

    def post(self, q: "Question", replies: Sequence[SlackMessage], *, tell_on_failure: bool = True) -> bool:
        """Post replies where the question came from; False (logged, counted) when Slack refused.

        The client has already retried Slack's transient errors; when the post still fails the
        asker gets a short notice instead of silence (if Slack takes that one).
        """
        try:
            self.send(replies, channel=q.channel, thread_ts=q.thread_ts, response_url=q.response_url)
            return True
        except Exception as e:  # noqa: BLE001 - reported to the caller as False
            self.metrics.failures.labels("post_failed").inc()
            log.error("posting the answer failed", extra={"channel": q.channel, "error": _slack_error(e)})
        if tell_on_failure:
            self.post(q, [render_notice(messages.POST_FAILED)], tell_on_failure=False)
        return False

    def notice(self, q: "Question", text: str) -> bool:
        """A short plain-text notice where the answer would have gone."""
        return self.post(q, [render_notice(text)])

    def send(self, replies: Sequence[SlackMessage], *, channel: str, thread_ts: str | None = None,
             response_url: str | None = None, response_type: Literal["ephemeral", "in_channel"] = "ephemeral",
             max_url_posts: int = RESPONSE_URL_POSTS) -> None:
        """Post to a response_url (at most `max_url_posts` posts) or with chat.postMessage; raises on refusal."""
        if response_url:
            replies = list(replies)
            if len(replies) > max_url_posts:
                replies = replies[:max_url_posts - 1] + [render_notice(messages.TRUNCATED)]
            hook = _webhook(response_url)
            for m in replies:
                resp = hook.send(text=m.text, blocks=m.blocks, response_type=response_type, replace_original=False)
                if resp.status_code != 200:
                    raise DeliveryError(f"response_url answered {resp.status_code}: {resp.body}")
            return
        for m in replies:
            where: dict[str, Any] = {"thread_ts": thread_ts, "reply_broadcast": False} if thread_ts else {}
            try:
                self.client.chat_postMessage(channel=channel, unfurl_links=False, unfurl_media=False, **where,
                                             **m.kwargs())
            except TimeoutError:  # sent, but no answer in time: Slack may well have posted it
                if not (thread_ts and self._landed(channel, thread_ts, m.text)):
                    raise
                log.warning("chat.postMessage timed out, but the message is in the thread",
                            extra={"channel": channel})
        if thread_ts:
            self.history.invalidate(channel, thread_ts)

    def _landed(self, channel: str, thread_ts: str, text: str) -> bool:
        """Whether a message with this text reached the thread after all (a slow Slack posts it
        late: looked for a few times, LANDED_CHECK_S apart), so a timeout does not make the asker
        read the answer and "Slack did not accept my answer" under it."""
        since = f"{time.time() - LANDED_LOOKBACK_S:.6f}"
        for _ in range(LANDED_CHECKS):
            time.sleep(LANDED_CHECK_S)
            try:
                resp = self.client.conversations_replies(channel=channel, ts=thread_ts, oldest=since, limit=200)
            except Exception as e:  # noqa: BLE001 - unknown stays a failure
                log.info("could not check the thread after a timeout", extra={"error": _slack_error(e)})
                return False
            if any(isinstance(msg, dict) and msg.get("text") == text for msg in resp.get("messages") or []):
                return True
        return False

    def delete_original(self, response_url: str) -> None:
        """Remove the ephemeral message a button was clicked in (after sharing it)."""
        _webhook(response_url).send(delete_original=True)

    # --- small notices ----------------------------------------------------------------

    def react(self, channel: str, ts: str) -> None:
        """👀 on the question: it was picked up."""
        try:
            self.client.reactions_add(channel=channel, timestamp=ts, name=PICKED_UP_REACTION)
        except SlackApiError as e:
            if e.response.get("error") != "already_reacted":
                log.info("reaction failed", extra={"error": e.response.get("error")})

    def ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None,
                  mrkdwn: bool = False) -> None:
        """A notice only `user` sees."""
        msg = render_notice(text, mrkdwn=mrkdwn)
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, **msg.kwargs())
        except SlackApiError as e:
            log.warning("ephemeral notice failed", extra={"error": e.response.get("error")})

    def respond(self, body: dict, text: str, channel: str | None, user: str) -> None:
        """An ephemeral reply to a button click: via its response_url, else chat.postEphemeral."""
        url = body.get("response_url")
        if url:
            try:
                self.send([render_notice(text)], channel=channel or "", response_url=url)
                return
            except Exception as e:  # noqa: BLE001 - fall back to the Web API
                log.info("response_url failed, using chat.postEphemeral", extra={"error": str(e)})
        if channel:
            self.ephemeral(channel, user, text)
