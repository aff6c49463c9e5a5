"""The answer job: one question in, exactly one reply out, whatever happens in between.

Runs on the answer pool. It reads the thread's history, asks the answerer, turns every
way that can fail into a reply the user understands (rejected, index not ready, model
down, anything else), hands the rendered messages to delivery and then stores the answer
for feedback (best-effort: the database never costs a user their answer). An answer Slack
refuses for a while is posted later by delivery's queue, and stored when it lands there,
so its 👍/👎 count like any other's; the worker has moved on to the next question. The
same holds for a streamed answer that broke half-way: its rewrite into the final ordinary
rendering goes through delivery, and it counts as answered once that is done.

Every question between `submit` and its reply is tracked, so a shutdown can tell the
askers it could not finish (`abandon_unfinished`); whichever of the job and the shutdown
claims a question first is the one that replies, so nobody gets both.

The answer's deadline (`[answer] deadline_s`) counts from the question's arrival, not from
when a worker took it: the answerer gets what is left of it, and a question
whose deadline passed while it waited in the queue gets the busy notice ("ask again in a
minute") at once, without a search or a model call, instead of an answer minutes late. That
is also what lets the bot catch up after a slow model recovers: the stale part of the queue
is cleared in moments, not answered one by one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from flytegpt.bot import messages
from flytegpt.bot.question_text import reads_as_followup

from . import blocks
from .feedback import thread_permalink

if TYPE_CHECKING:
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config

    from .delivery import Delivery
    from .history import ThreadHistory
    from .question import Question
    from .recording import AnswerRecorder
    from .stream import StreamedReply
    from .workers import WorkerPool

log = logging.getLogger(__name__)


class _WaitedTooLong(Exception):
    """The question's deadline passed before answering could start (it waited in the queue)."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"waited {waited_s:.1f} s")
        self.waited_s = waited_s


class AnswerJob:
    def __init__(self, config: "Config", answerer: Any, *, history: "ThreadHistory", delivery: "Delivery",
                 recorder: "AnswerRecorder", metrics: "Metrics", pool: "WorkerPool",
                 bot_user_id: str, bot_id: str | None, workspace_url: str | None = None,
                 index_version: Callable[[], str | None] = lambda: None) -> None:
        self.config, self.answerer = config, answerer
        self.workspace_url = workspace_url  # auth.test's team URL: thread links in the question log
        self.index_version = index_version  # the version served now, for questions without an answer
        self.history, self.delivery, self.recorder = history, delivery, recorder
        self.metrics, self.pool = metrics, pool
        self.bot_user_id, self.bot_id = bot_user_id, bot_id
        self._lock = threading.Lock()
        self._open: dict[int, "Question"] = {}  # submitted, not yet replied to
        self._claimed: set[int] = set()
        self._abandoned: set[int] = set()  # claimed by a shutdown, already logged
        self._streams: dict[int, "StreamedReply"] = {}  # the answers being streamed, by question

    # --- the question's life ----------------------------------------------------------------

    def submit(self, q: "Question") -> bool:
        """Queue the question on the answer pool; False when the pool is full or closed."""
        with self._lock:
            self._open[id(q)] = q
        if self.pool.submit(self, q):
            return True
        self._forget(q)
        return False

    def abandon_unfinished(self) -> list["Question"]:
        """Claim every question not replied to yet (shutdown): their jobs will not reply.

        They are logged as failed ("shutdown"), so the report counts what restarts cost."""
        with self._lock:
            left = [q for k, q in self._open.items() if k not in self._claimed]
            self._claimed.update(id(q) for q in left)
            self._abandoned.update(id(q) for q in left)
        for q in left:
            self._log_unanswered(q, "failed", "shutdown")
        return left

    def stream_of(self, q: "Question") -> "StreamedReply | None":
        """The reply streaming this question's answer, if one is (a shutdown ends it with its notice)."""
        with self._lock:
            return self._streams.get(id(q))

    def __call__(self, q: "Question") -> None:
        try:
            self._answer(q)
        finally:
            self._forget(q)

    # --- answering ------------------------------------------------------------------------------

    def _answer(self, q: "Question") -> None:
        from flytegpt.bot.answering import IndexNotReady, ModelUnavailable, QuestionRejected

        self.metrics.pending.set(self.pool.pending)
        queued_s = time.monotonic() - q.received  # waiting for a worker: part of the answer's deadline
        self.metrics.queue_wait.observe(queued_s)
        streamed = self._streamed_reply(q)
        if streamed is not None:
            with self._lock:
                self._streams[id(q)] = streamed
        try:
            answer = self._get_answer(q, streamed)
        except _WaitedTooLong as e:
            q.refused_late = True  # routing gives the asker's question back when this job ends
            self.metrics.failures.labels("queue_timeout").inc()
            log.warning("waited past the answer's deadline: busy reply",
                        extra={"surface": q.surface, "waited_s": round(e.waited_s, 3),
                               "deadline_s": self.config.answer.deadline_s})
            self._reply(q, [blocks.render_notice(messages.BUSY)])
            self._log_unanswered(q, "failed", "queue_timeout")
            return
        except QuestionRejected as e:
            self.metrics.failures.labels("rejected").inc()
            self._reply(q, [blocks.render_notice(str(e))])
            self._log_unanswered(q, "failed", "rejected")
            return
        except IndexNotReady as e:
            self.metrics.failures.labels("index_not_ready").inc()
            self._reply(q, [blocks.render_notice(str(e) or messages.INDEX_NOT_READY)])
            self._log_unanswered(q, "failed", "index_not_ready")
            return
        except ModelUnavailable as e:
            self.metrics.failures.labels("model_unavailable").inc()
            # debug: the chain's "chat model unavailable" error line already says so, once a question
            log.debug("model unavailable: apology with sources", extra={"related": len(e.related)})
            reason = messages.NO_ANSWER_WRITTEN.format(reason=e)
            if e.related:
                reason += messages.MEANWHILE_SOURCES
            self._reply(q, blocks.render_apology(e.related, reason))
            self._log_unanswered(q, "model_failed", "model_unavailable", related=e.related)
            return
        except Exception:  # noqa: BLE001 - the user must hear back, whatever broke
            self.metrics.failures.labels("error").inc()
            log.exception("answering failed")
            if streamed is not None and streamed.started:
                streamed.fail(messages.FAILED)  # the notice ends the half-shown answer: one reply
            else:
                self._reply(q, [blocks.render_notice(messages.FAILED)])
            self._log_unanswered(q, "failed", "error")
            return
        answer_id = self.recorder.new_id()
        command = q.surface == "command"
        replies = blocks.render_answer(answer, feedback_id=answer_id, share=command,
                                       question=q.text if command else None)
        tail = (blocks.streamed_answer_tail(answer.citations, answer_id, answer.sources_heading)
                if streamed is not None else None)
        self._reply(q, replies, streamed=streamed, final_text=answer.text, tail=tail,
                    landed=lambda: self._answered(q, answer, answer_id, queued_s),
                    lost=lambda failure: self._not_posted(q, answer, answer_id, failure))

    def _answered(self, q: "Question", answer: Any, answer_id: str, queued_s: float = 0.0) -> None:
        """The answer is in Slack (now, or later from delivery's deferred queue): count it and
        store it under the id its buttons carry, so votes on it are recorded. The log line says how
        much of the time was spent waiting for a worker (`queued_s`)."""
        seconds = time.monotonic() - q.received
        self.metrics.answers.labels(answer.mode).inc()
        self.metrics.latency.observe(seconds)
        log.info("answered", extra={"surface": q.surface, "mode": answer.mode, "answer_id": answer_id,
                                    "index_version": answer.index_version, "seconds": round(seconds, 3),
                                    "queued_s": round(queued_s, 3)})
        self.recorder.record_answer(answer_id, answer, **self._where(q, seconds))

    def _not_posted(self, q: "Question", answer: Any, answer_id: str, failure: str) -> None:
        """Slack never took the answer: its id is released (its buttons were never shown) and the
        question is logged as failed, so the report counts what Slack refused, not only what landed.
        `failure` is what delivery counted: post_refused (refused for what the answer holds, also as
        plain text: asking again gets the same refusal) or post_failed (refused where it was going)."""
        self.recorder.forget(answer_id)
        self._log_unanswered(q, "failed", failure, related=answer.citations)

    # --- the question log (the maintainers' report reads it) ------------------------------

    def _where(self, q: "Question", seconds: float) -> dict[str, Any]:
        """Where and how fast a question was handled: the columns every logged question has.
        The channel's type tells the report which questions are private (an app_mention or a slash
        command does not carry it: asked of Slack, cached per channel)."""
        return {"surface": q.surface, "channel": q.channel, "thread_ts": q.thread_ts, "user": q.user,
                "channel_type": q.channel_type or self.history.channel_type(q.channel),
                "latency_s": round(seconds, 3),
                "permalink": thread_permalink(self.workspace_url, q.channel, q.thread_ts or q.ts)}

    def turned_away(self, q: "Question", failure: str) -> None:
        """Log a question refused before answering (rate limit, full queue), so the report counts it."""
        self._log_unanswered(q, "failed", failure)

    def _log_unanswered(self, q: "Question", outcome: str, failure: str, related: Sequence[Any] = ()) -> None:
        """Log a question the bot could not answer (best-effort, like every feedback write).

        Once a shutdown has logged a question, its job's own late failure is not logged again."""
        with self._lock:
            if id(q) in self._abandoned and failure != "shutdown":
                return
        self.recorder.record_question(q.text, outcome=outcome, failure=failure, related=related,
                                      index_version=self.index_version(),
                                      **self._where(q, time.monotonic() - q.received))

    def _reply(self, q: "Question", replies: Sequence[blocks.SlackMessage], *, streamed: "StreamedReply | None" = None,
               final_text: str = "", tail: list[dict] | None = None, landed: Callable[[], None] | None = None,
               lost: Callable[[str], None] | None = None) -> None:
        """Post unless a shutdown already told the asker to ask again. Exactly one of `landed`
        (the reply is in Slack) and `lost` runs, now or, when Slack refused the reply for a
        while, once delivery's deferred post of it is settled.

        A streamed answer is finished in its stream; only when Slack refused streaming
        before anything was shown is it posted the ordinary way (one answer, never two).
        When the streamed messages have to be replaced (the stream broke, or the final text
        differs), delivery rewrites them in place, later if Slack refuses for a while.
        """
        with self._lock:
            claimed_before = id(q) in self._claimed
            self._claimed.add(id(q))
        if claimed_before:
            log.info("finished after shutdown gave up on it: not posted", extra={"channel": q.channel})
            if lost is not None:
                lost("post_failed")  # not logged again: the shutdown logged the question
            return
        if streamed is not None:
            finished = streamed.finish(final_text, tail or [], replies)
            self.metrics.streamed.labels(streamed.outcome).inc()
            if finished:
                self.history.invalidate(q.channel, streamed.thread_ts)
                if streamed.edits:  # rewritten in place, in the stream's thread (a DM's answer starts one)
                    self.delivery.post(replace(q, thread_ts=streamed.thread_ts), streamed.posts,
                                       edits=streamed.edits, defer=True, landed=landed, lost=lost)
                    return
                if landed is not None:
                    landed()
                return
        self.delivery.post(q, replies, defer=True, landed=landed, lost=lost)

    # --- streaming ------------------------------------------------------------------------------

    def _streamed_reply(self, q: "Question") -> "StreamedReply | None":
        """A stream for this question's answer; None where answers are posted whole.

        The slash command keeps its response_url (ephemeral, with "Share in channel"); a
        DM question without a thread gets its answer as a thread reply, because Slack
        streams only replies.
        """
        if not self.config.bot.streaming or q.response_url or not hasattr(self.answerer, "stream"):
            return None
        thread = q.thread_ts or q.ts
        if not thread:
            return None
        from .stream import StreamedReply

        return StreamedReply(self.delivery.client, channel=q.channel, thread_ts=thread, user=q.user, team=q.team,
                             is_dm=q.surface in ("dm", "assistant"))

    def _get_answer(self, q: "Question", streamed: "StreamedReply | None") -> Any:
        """The answer; while it is written, its text goes into the stream and the panel shows a status.

        The answerer's deadline counts from the question's arrival (`q.received`); _WaitedTooLong
        when nothing of it is left once the thread's history is read (a busy notice, no answer)."""
        self._check_waited(q)
        history = self._history(q)
        self._check_waited(q)
        panel = q.surface == "assistant" and q.thread_ts is not None
        if streamed is None and not (panel and hasattr(self.answerer, "stream")):
            return self.answerer.answer(q.text, history, asked_at=q.received)
        from flytegpt.bot.answering.live import Delta, Progress

        from .stream import assistant_status

        answer = None
        for event in self.answerer.stream(q.text, history, asked_at=q.received):
            if isinstance(event, Delta):
                if streamed is not None and not self._given_up(q):  # told to ask again: show no more
                    streamed.append(event.text)
            elif isinstance(event, Progress):
                if panel:
                    assistant_status(self.delivery.client, q.channel, q.thread_ts, event)
            else:
                answer = event
        return answer

    def _check_waited(self, q: "Question") -> None:
        """_WaitedTooLong when the question's deadline ([answer] deadline_s from its arrival) has passed."""
        waited = time.monotonic() - q.received
        if waited >= self.config.answer.deadline_s:
            raise _WaitedTooLong(waited)

    def _given_up(self, q: "Question") -> bool:
        """A shutdown has told this asker to ask again (before the job replied)."""
        with self._lock:
            return id(q) in self._abandoned

    def _forget(self, q: "Question") -> None:
        with self._lock:
            self._open.pop(id(q), None)
            self._claimed.discard(id(q))
            self._abandoned.discard(id(q))
            self._streams.pop(id(q), None)

    def _history(self, q: "Question") -> list:
        """What the question is read with: its thread so far, or for a follow-up written at the top
        of a DM ("and for map tasks?"), the exchange before it (a DM's top level is no thread)."""
        turns = self.config.answer.history_turns
        if q.surface == "dm" and q.history_root is None and q.ts and turns and reads_as_followup(q.text):
            return self.history.dm_turns(q.channel, before_ts=q.ts, bot_user_id=self.bot_user_id,
                                         bot_id=self.bot_id, max_turns=turns)
        if not (q.history_root and q.ts):
            return []
        return self.history.turns(q.channel, q.history_root, before_ts=q.ts, bot_user_id=self.bot_user_id,
                                  bot_id=self.bot_id, max_turns=turns)
