"""Best-effort use of the feedback database: the bot answers whatever the database does.

The database is for learning from answers, not for answering, so nothing in it may cost
a user their answer: the answer is posted first and stored afterwards, and a store that
cannot be opened, is locked, full or deleted under the running bot is logged and counted
(`flytegpt_feedback_store_errors_total{op}` in /metrics), never raised. A vote that cannot
be stored says so to the voter instead of thanking them.

A database file deleted (or replaced) while the bot runs would otherwise swallow every
later write silently (SQLite keeps writing to the unlinked file), so each write first checks
that the path still names the file that was opened, and opens a fresh one when it does not.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flytegpt.bot.question_text import clip_question
from flytegpt.ingest.config import AnswerConfig

from .feedback import FeedbackDatabaseError, FeedbackStore, new_answer_id

if TYPE_CHECKING:
    from flytegpt.bot.metrics import Metrics

    from .feedback import Vote

log = logging.getLogger(__name__)

VoteResult = Literal["stored", "unknown", "failed"]
_FAILURES = (sqlite3.Error, OSError, UnicodeError, FeedbackDatabaseError)
MAX_UNSTORED = 10_000  # ids of answers that could not be stored, remembered to answer their votes
REOPEN_EVERY_S = 60.0  # a database that could not be opened is tried again this often
PENDING_WAIT_S = 15.0  # a vote waits at most this long for its answer to be stored
# what is kept of a logged question: the bot's [answer] max_question_chars (its default here)
MAX_QUESTION_CHARS: int = AnswerConfig.model_fields["max_question_chars"].default


class AnswerRecorder:
    """The bot's view of the feedback store: every method returns, none raises."""

    def __init__(self, path: str | Path, metrics: "Metrics", store: FeedbackStore | None = None, *,
                 max_question_chars: int = MAX_QUESTION_CHARS) -> None:
        self.path, self.metrics = str(path), metrics
        self.max_question_chars = max_question_chars  # a longer question is turned down, and logged cut
        self._lock = threading.Lock()
        self._closed = False
        self.store: FeedbackStore | None = store
        self._identity: tuple[int, int] | None = None
        self._retry_at = 0.0
        self._unstored: OrderedDict[str, None] = OrderedDict()  # answers posted but not stored
        self._pending: dict[str, threading.Event] = {}  # ids handed out, answer not stored yet
        if store is None:
            self._open("open")
        else:
            self._identity = self._file_identity()

    def new_id(self) -> str:
        """The id an answer's buttons carry, chosen before the answer is posted and stored.

        Until record_answer (or forget) settles it, a vote for it waits for the outcome: a
        click can arrive between the post and the store.
        """
        answer_id = new_answer_id()
        with self._lock:
            self._pending[answer_id] = threading.Event()
        return answer_id

    def forget(self, answer_id: str) -> None:
        """The answer was not posted: nothing will be stored under this id."""
        self._settle(answer_id)

    # --- operations -----------------------------------------------------------------------

    def record_answer(self, answer_id: str, answer: Any, **where: Any) -> bool:
        """Store a posted answer under `answer_id`; False (logged, counted) when that failed."""
        try:
            store = self._current("answer")
            if store is None:
                self._remember_unstored(answer_id)
                return False
            try:
                store.record_answer(answer, answer_id=answer_id, **where)
                return True
            except _FAILURES as e:
                self._failed("answer", e)
                self._remember_unstored(answer_id)
                return False
        finally:
            self._settle(answer_id)

    def record_question(self, question: str, **fields: Any) -> bool:
        """Log a question that got no answer (for the maintainers' report); False when that failed.

        A question longer than the bot accepts is kept cut to that length: it was turned down, and
        whole it would let one user write ~450 KB a minute into the database."""
        store = self._current("question")
        if store is None:
            return False
        try:
            store.record_question(clip_question(question, self.max_question_chars), **fields)
            return True
        except _FAILURES as e:
            self._failed("question", e)
            return False

    def record_vote(self, answer_id: str, vote: "Vote", *, user: str, channel: str | None) -> VoteResult:
        """"stored", "unknown" (no such answer in this database) or "failed" (not stored)."""
        with self._lock:
            pending = self._pending.get(answer_id)
        if pending is not None:
            pending.wait(PENDING_WAIT_S)
        with self._lock:
            unstored = answer_id in self._unstored
        if unstored:  # its answer could not be stored, so neither can the vote
            self._count("vote")
            return "failed"
        moved = self._file_moved()
        store = self._current("vote")
        if store is None or moved:
            return "failed"  # the answer was in the file that is gone
        try:
            return "stored" if store.record_vote(answer_id, vote, user=user, channel=channel) else "unknown"
        except _FAILURES as e:
            self._failed("vote", e)
            return "failed"

    def get_answer(self, answer_id: str) -> dict[str, Any] | None:
        """The stored answer (for sharing), or None when it is unknown or cannot be read."""
        store = self._current("read")
        if store is None:
            return None
        try:
            return store.get_answer(answer_id)
        except _FAILURES as e:
            self._failed("read", e)
            return None

    def close(self) -> None:
        """Close the store; later calls fail softly (counted) instead of raising."""
        with self._lock:
            self._closed = True
            store, self.store = self.store, None
        if store is not None:
            try:
                store.close()
            except _FAILURES as e:
                log.warning("closing the feedback database failed", extra={"error": str(e)})

    # --- keeping a usable store -------------------------------------------------------------

    def _current(self, op: str) -> FeedbackStore | None:
        with self._lock:
            if self._closed:
                self._count(op)
                return None
        if self._file_moved():
            log.error("the feedback database file was deleted or replaced: opening a new one",
                      extra={"path": self.path})
            self._count(op)
            self._reopen(op)
        elif self.store is None and time.monotonic() >= self._retry_at:
            self._open(op)  # it could not be opened before: the disk may be back
        with self._lock:
            if self.store is None:
                self._count(op)
            return self.store

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _file_moved(self) -> bool:
        return self.path != ":memory:" and self.store is not None and self._file_identity() != self._identity

    def _open(self, op: str) -> None:
        try:
            store = FeedbackStore(self.path)
        except _FAILURES as e:
            log.error("the feedback database cannot be used: answers are posted but not stored",
                      extra={"path": self.path, "error": str(e)})
            if op == "open":
                self._count(op)  # later ops count their own failure
            store = None
            self._retry_at = time.monotonic() + REOPEN_EVERY_S
        with self._lock:
            self.store = store
            self._identity = self._file_identity() if store is not None else None

    def _reopen(self, op: str) -> None:
        with self._lock:
            old, self.store = self.store, None
        if old is not None:
            try:
                old.close()
            except _FAILURES:
                pass
        self._open(op)

    def _settle(self, answer_id: str) -> None:
        with self._lock:
            done = self._pending.pop(answer_id, None)
        if done is not None:
            done.set()

    def _remember_unstored(self, answer_id: str) -> None:
        with self._lock:
            self._unstored[answer_id] = None
            while len(self._unstored) > MAX_UNSTORED:
                self._unstored.popitem(last=False)

    def _failed(self, op: str, error: BaseException) -> None:
        self._count(op)
        log.error("feedback database write failed", extra={"op": op, "error": str(error)})

    def _count(self, op: str) -> None:
        self.metrics.feedback_store_errors.labels(op).inc()
