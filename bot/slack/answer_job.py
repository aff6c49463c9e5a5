"""The answer job: one question in, one reply out, whatever happens in between.

Runs on the answer pool. It reads the thread's history, asks the answerer, turns every
way that can fail into a reply the user understands (rejected, index not ready, model
down, anything else), stores the answer for feedback, and hands the rendered messages to
delivery.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from flytegpt.bot import messages

from . import blocks

if TYPE_CHECKING:
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config

    from .delivery import Delivery
    from .feedback import FeedbackStore
    from .history import ThreadHistory
    from .question import Question
    from .workers import WorkerPool

log = logging.getLogger(__name__)


class AnswerJob:
    def __init__(self, config: "Config", answerer: Any, *, history: "ThreadHistory", delivery: "Delivery",
                 feedback: "FeedbackStore", metrics: "Metrics", pool: "WorkerPool",
                 bot_user_id: str, bot_id: str | None) -> None:
        self.config, self.answerer = config, answerer
        self.history, self.delivery, self.feedback = history, delivery, feedback
        self.metrics, self.pool = metrics, pool
        self.bot_user_id, self.bot_id = bot_user_id, bot_id

    def __call__(self, q: "Question") -> None:
        from flytegpt.bot.answering import IndexNotReady, ModelUnavailable, QuestionRejected

        self.metrics.pending.set(self.pool.pending)
        try:
            answer = self.answerer.answer(q.text, self._history(q))
        except QuestionRejected as e:
            self.metrics.failures.labels("rejected").inc()
            self.delivery.notice(q, str(e))
            return
        except IndexNotReady as e:
            self.metrics.failures.labels("index_not_ready").inc()
            self.delivery.notice(q, str(e) or messages.INDEX_NOT_READY)
            return
        except ModelUnavailable as e:
            self.metrics.failures.labels("model_unavailable").inc()
            log.warning("model unavailable: apology with sources", extra={"related": len(e.related)})
            reason = messages.NO_ANSWER_WRITTEN.format(reason=e)
            if e.related:
                reason += messages.MEANWHILE_SOURCES
            self.delivery.post(q, blocks.render_apology(e.related, reason))
            return
        except Exception:  # noqa: BLE001 - the user must hear back, whatever broke
            self.metrics.failures.labels("error").inc()
            log.exception("answering failed")
            self.delivery.notice(q, messages.FAILED)
            return
        answer_id = self.feedback.record_answer(answer, surface=q.surface, channel=q.channel,
                                                thread_ts=q.thread_ts, user=q.user)
        command = q.surface == "command"
        replies = blocks.render_answer(answer, feedback_id=answer_id, share=command,
                                       question=q.text if command else None)
        if self.delivery.post(q, replies):
            seconds = time.monotonic() - q.received
            self.metrics.answers.labels(answer.mode).inc()
            self.metrics.latency.observe(seconds)
            log.info("answered", extra={"surface": q.surface, "mode": answer.mode, "answer_id": answer_id,
                                        "index_version": answer.index_version, "seconds": round(seconds, 3)})

    def _history(self, q: "Question") -> list:
        if not (q.history_root and q.ts):
            return []
        return self.history.turns(q.channel, q.history_root, before_ts=q.ts, bot_user_id=self.bot_user_id,
                                  bot_id=self.bot_id, max_turns=self.config.answer.history_turns)
