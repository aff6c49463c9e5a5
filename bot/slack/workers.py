"""A bounded worker pool: answering never runs on the socket thread and never queues forever.

`ThreadPoolExecutor` alone has an unbounded queue; under a burst that means answers
minutes late and memory growing. Here at most `workers` tasks run and `queue_size` wait;
beyond that `submit` says no at once, so the caller can tell the user the bot is busy.
Whoever holds something for a task (routing's per-user slots) is told when it ends, however it
ends (`on_task_end`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, workers: int, queue_size: int, name: str = "flytegpt-worker") -> None:
        self.workers, self.queue_size = max(1, workers), max(0, queue_size)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(self.workers + self.queue_size)
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._on_end: list[Callable[[tuple[Any, ...]], None]] = []

    @property
    def pending(self) -> int:
        """Tasks running or waiting."""
        return self._pending

    def on_task_end(self, callback: Callable[[tuple[Any, ...]], None]) -> None:
        """Call `callback(args)` when a task submitted with `args` ends: returned, raised, or
        cancelled by `shutdown` before it ran. Exactly once per task that `submit` took (a
        refused submit calls nothing: its caller knows). It runs before the task stops counting
        as pending, so after `wait_idle` every callback has run."""
        self._on_end.append(callback)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Run fn(*args, **kwargs) on a worker; False (and nothing queued) when full or closed."""
        if self._closed or not self._slots.acquire(blocking=False):
            return False
        with self._lock:
            self._pending += 1

        def run() -> None:
            try:
                fn(*args, **kwargs)
            except Exception:  # a task's failure must not kill the worker or go unseen
                log.exception("worker task failed")
            finally:
                self._finished(args)

        try:
            future = self._executor.submit(run)
        except RuntimeError:  # shut down between the check and the submit
            with self._lock:
                self._pending -= 1
            self._slots.release()
            return False
        # a queued task cancelled by shutdown never runs `run`: it ends here instead
        future.add_done_callback(lambda f: self._finished(args) if f.cancelled() else None)
        return True

    def _finished(self, args: tuple[Any, ...]) -> None:
        """A task ended (ran, or was cancelled before it could): tell the `on_task_end` callbacks
        (one that fails must not stop the others or the worker), then it is no longer pending."""
        for callback in self._on_end:
            try:
                callback(args)
            except Exception:
                log.exception("task end callback failed")
        with self._lock:
            self._pending -= 1
            self._idle.notify_all()
        self._slots.release()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no task is running or waiting (tests, graceful shutdown)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    @property
    def closed(self) -> bool:
        """No new tasks are taken (shutting down)."""
        return self._closed

    def close_intake(self) -> None:
        """Refuse new tasks from now on; queued and running ones go on."""
        self._closed = True

    def shutdown(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        self._closed = True
        if wait:
            self.wait_idle(timeout)
        self._executor.shutdown(wait=False, cancel_futures=not wait)
