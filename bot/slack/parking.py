"""Questions asked while the first index loads: held until it is served, then queued in the order asked.

Why this exists: `flytegpt serve` connects to Slack before it loads the index (after every
restart: 0.6 s warm, 10 s or more on a cold model cache), so the questions asked or redelivered
meanwhile would otherwise be told "not ready, try again in a minute". Such a
question waits here, not on a worker, until the index is served (then it is queued, with its 👀)
or until its answer's deadline passes (then the not-ready notice, no 👀). Once the index is served
the waiting questions go to the answer pool in the order asked, each as soon as the pool has room:
a cold start's backlog is answered, not told the bot is busy (without it, 50 questions queued in
one burst got 14 busy notices although an answer took 40 ms). One thread watches all of them
(`ParkingLine._watch`): a timer each held one thread per question (74 at a cold start with 50).

What a parked question holds (its rate-limit count, its in-flight slot) and what it is told when it
waits too long or the bot stops is the router's (routing.py): it hands those in as callbacks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from .question import Question

if TYPE_CHECKING:
    from flytegpt.bot.index_holder import IndexHolder

    from .workers import WorkerPool

# routing's logger, as before these lines moved here: log filters, levels and the tests that read
# "question waits for the first index" keep the name they know
log = logging.getLogger("flytegpt.bot.slack.routing")

# How often the parked questions' thread looks for room in a full answer pool, besides being woken
# when an answer ends (the pool tells its task's end just before the task's place is free).
_ROOM_POLL_S = 0.05
# How long an ending answer waits for the parked questions' mover, at shutdown, to tell them itself.
_MOVER_WAIT_S = 1.0


class ParkingLine:
    """The questions waiting for the first index, then for room in the answer pool.

    `submit` puts a question onto the answer pool with its 👀 (False, nothing done, when the pool is
    full or closed); `too_late` tells one whose deadline passed while it waited; `at_stop` tells one
    that never reached the pool before the bot stopped. Each is called once per parked question.
    """

    def __init__(self, holder: "IndexHolder", *, deadline_s: float, pool: "WorkerPool",
                 submit: Callable[[Question], bool], too_late: Callable[[Question], None],
                 at_stop: Callable[[Question], None]) -> None:
        self.index, self.deadline_s, self.pool = holder, deadline_s, pool
        self._submit, self._too_late, self._at_stop = submit, too_late, at_stop
        # A heap by arrival (q.received, a tie-breaker, q), so its head is both the next to queue and
        # the next whose deadline passes. One thread (`_watch`) waits for all of them; it runs only
        # while the line is not empty.
        self._line: list[tuple[float, int, Question]] = []
        self._line_seq = itertools.count()
        self._parked_lock = threading.Lock()
        self._line_changed = threading.Condition(self._parked_lock)
        self._watcher: threading.Thread | None = None
        self._hooked = False  # _index_settled is registered with the holder's load under way
        self._moving = threading.Lock()  # one mover out of the line at a time: the order asked is kept

    def must_wait(self) -> bool:
        """Whether a question the answerer would take must wait here: the first index is loading,
        or questions that waited for it still wait for room in the answer pool (it queues behind
        them: the order asked is kept, and a newcomer cannot take the place one of them waits for)."""
        return (not self.index.ready and self.index.loading) or bool(self._line)

    def park(self, q: Question) -> None:
        """Hold `q` (it keeps its rate-limit count and in-flight slot) until the first index is
        served and the answer pool has room for it (`_move`), or until its deadline passes
        (`too_late`). Parked here, not on a worker: no worker is held, and the 👀 goes on only once
        it is queued."""
        left = max(0.0, self.deadline_s - (time.monotonic() - q.received))
        with self._line_changed:
            heapq.heappush(self._line, (q.received, next(self._line_seq), q))
            hook = not self._hooked and self.index.loading  # told once when the load is over
            self._hooked = self._hooked or hook
            watcher = None
            if self._watcher is None:
                watcher = self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                           name="flytegpt-parked")
            self._line_changed.notify()
        if watcher is not None:
            watcher.start()
        log.info("question waits for the first index" if self.index.loading
                 else "question waits for room in the answer queue",
                 extra={"surface": q.surface, "wait_s": round(left, 1)})
        # Otherwise the parked questions' thread (woken above) queues it: a listener thread never
        # waits for a mover (which, when the bot stops, posts the restart notices itself).
        if hook and not self.index.when_settled(self._index_settled):
            with self._line_changed:  # loaded (or given up) meanwhile: nothing will tell the thread
                self._hooked = False
                self._line_changed.notify()

    def room_made(self) -> None:
        """An answer ended (on its thread): with questions in the line, wake their thread to queue the
        next. When the pool is closed (stopping), they are told here, on the ending answer's thread:
        shutdown.drain waits for it, so the notices are posted before the bot exits."""
        if not self._line:
            return
        if not self.pool.closed:
            with self._line_changed:
                self._line_changed.notify()
            return
        # a mover under way tells them itself; waiting for it is bounded, as the pool's shutdown
        # may call this while a mover waits on the pool
        self._move(wait_s=_MOVER_WAIT_S)

    def _index_settled(self) -> None:
        """The first load is over (on the loading thread): the parked questions are queued in the
        order asked, as many as the answer pool takes now, before this returns (a stop settles the
        load and then closes the pool: every one queued meanwhile is told, as every question in
        flight). The rest wait for room on the parked questions' thread. With an index they are
        answered (the answer job's deadline still counts from their arrival); without one the answer
        job tells them it is not ready, with no 👀."""
        with self._parked_lock:
            self._hooked = False  # a later first load (expect_load) is waited for again
        self._move()
        with self._line_changed:
            self._line_changed.notify()

    def _watch(self) -> None:
        """The one thread for all parked questions: it sleeps until the earliest deadline (the
        line's head: deadlines pass in the order of arrival), or until woken (a question parked,
        an answer ended), and then moves what it can (`_move`). While questions wait for room it
        also looks every _ROOM_POLL_S. It ends when no question is parked."""
        while True:
            with self._line_changed:
                if not self._line:
                    self._watcher = None
                    return
                left = self._line[0][0] + self.deadline_s - time.monotonic()
                if left > 0:
                    loading = self.index.loading
                    self._line_changed.wait(left if loading else min(left, _ROOM_POLL_S))
            self._move()

    def _move(self, *, wait_s: float = -1) -> None:
        """Out of the line, in the order asked: a question whose deadline passed is told so
        (`too_late`); once the first load is over, the others are queued while the pool takes
        them. One the pool refuses as full stays first in line; once the pool is closed (stopping),
        each is told the bot restarted (`at_stop`). `wait_s`: how long to wait for another mover
        (-1: as long as it takes); past it, that mover is left to do it."""
        if not self._moving.acquire(timeout=wait_s):
            return
        try:
            while True:
                with self._parked_lock:
                    if not self._line:
                        return
                    entry = self._line[0]
                    q = entry[2]
                    expired = time.monotonic() - q.received >= self.deadline_s
                    if not expired and self.index.loading:
                        return
                    heapq.heappop(self._line)
                if expired:
                    self._too_late(q)
                elif self._submit(q):
                    continue
                elif self.pool.closed:
                    self._at_stop(q)
                else:
                    with self._parked_lock:
                        heapq.heappush(self._line, entry)  # still the first: its place is kept
                    return
        finally:
            self._moving.release()
