"""Button clicks under an answer: 👍/👎 votes and "Share in channel" (slash-command answers)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flytegpt.bot import messages
from flytegpt.ingest.models import valid_unicode

from . import blocks
from .delivery import RESPONSE_URL_POSTS

if TYPE_CHECKING:
    from flytegpt.bot.metrics import Metrics

    from .delivery import Delivery
    from .feedback import Vote
    from .recording import AnswerRecorder

log = logging.getLogger(__name__)


def _part(body: dict, key: str) -> dict:
    value = body.get(key)
    return value if isinstance(value, dict) else {}


def _who_and_where(body: dict) -> tuple[str, str | None]:
    """(user, channel) of a click; a field of the wrong type reads as absent."""
    user = _part(body, "user").get("id")
    channel = _part(body, "channel").get("id") or _part(body, "container").get("channel_id")
    return (user if isinstance(user, str) else ""), (channel if isinstance(channel, str) else None)


def _answer_id(value: object) -> str:
    """A button's value as an answer id to look up (one that is not ours is simply unknown)."""
    return valid_unicode(value) if isinstance(value, str) else ""


class Interactions:
    def __init__(self, recorder: "AnswerRecorder", delivery: "Delivery", metrics: "Metrics") -> None:
        self.recorder, self.delivery, self.metrics = recorder, delivery, metrics

    def vote(self, body: dict, answer_id: str, vote: "Vote") -> None:
        """Store a vote and tell the voter whether it counted."""
        user, channel = _who_and_where(body)
        result = self.recorder.record_vote(_answer_id(answer_id), vote, user=user, channel=channel)
        if result == "stored":
            self.metrics.feedback.labels(vote).inc()
        reply = {"stored": messages.THANKS, "unknown": messages.VOTE_UNKNOWN_ANSWER}.get(result,
                                                                                        messages.VOTE_NOT_STORED)
        self.delivery.respond(body, reply, channel, user)

    def unknown_vote(self, body: dict) -> None:
        """A feedback click whose value names no vote or no answer (not one the bot sent): the
        clicker is told, as for any answer the bot does not know, instead of hearing nothing."""
        user, channel = _who_and_where(body)
        self.delivery.respond(body, messages.VOTE_UNKNOWN_ANSWER, channel, user)

    def share(self, body: dict, answer_id: str) -> None:
        """Post a /flytegpt answer (ephemeral so far) for everyone in the channel.

        Only its asker may: the button is on their private answer, and an answer id that reached
        someone else (a DM answer's, a leaked one) must not put that answer in the clicker's channel."""
        user, channel = _who_and_where(body)
        answer_id = _answer_id(answer_id)
        stored = self.recorder.get_answer(answer_id)
        if stored is None:
            self.delivery.respond(body, messages.SHARE_GONE, channel, user)
            return
        if not user or stored.get("user") != user:
            log.warning("share refused: not the asker's answer", extra={"answer_id": answer_id})
            self.delivery.respond(body, messages.SHARE_NOT_YOURS, channel, user)
            return
        replies = blocks.render_answer(_StoredAnswer.from_row(stored), feedback_id=answer_id, share=False,
                                       question=stored["question"], shared_by=user or None)
        url = body.get("response_url")
        try:
            if url:
                # one post of the response_url is kept for removing the ephemeral original
                self.delivery.send(replies, channel=channel or "", response_url=url, response_type="in_channel",
                                   max_url_posts=RESPONSE_URL_POSTS - 1)
                self.delivery.delete_original(url)
            elif channel:
                self.delivery.send(replies, channel=channel)
        except Exception:  # noqa: BLE001
            log.exception("sharing an answer failed")
            self.delivery.respond(body, messages.SHARE_FAILED, channel, user)


@dataclass(frozen=True)
class _StoredAnswer:
    """An answer read back from the feedback store (for sharing), shaped like Answer."""

    question: str
    text: str
    citations: list
    mode: str
    index_version: str | None
    uncited: bool = False  # a model answer that cited none of its sources (stored as not found)

    @property
    def sources_heading(self) -> str:
        from flytegpt.bot.answering.types import sources_heading

        return sources_heading(self.uncited)

    @classmethod
    def from_row(cls, row: dict) -> "_StoredAnswer":
        from flytegpt.bot.answering import Citation

        cites = [Citation(int(s["n"]), s.get("title", ""), s.get("url", ""), s.get("source_id", ""), s.get("date"))
                 for s in row["sources"]]
        mode = row.get("mode") or ""
        return cls(row["question"], row["answer"], cites, mode, row.get("index_version"),
                   uncited=mode == "llm" and row.get("outcome") == "not_found")
