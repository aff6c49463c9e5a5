"""A bounded worker pool: answering never runs on the socket thread and never queues forever.

`ThreadPoolExecutor` alone has an unbounded queue; under a burst that means answers
minutes late and memory growing. Here at most `workers` tasks run and `queue_size` wait;
beyond that `submit` says no at once, so the caller can tell the user the bot is busy.
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

    @property
    def pending(self) -> int:
        """Tasks running or waiting."""
        return self._pending

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
                with self._lock:
                    self._pending -= 1
                    self._idle.notify_all()
                self._slots.release()

        try:
            self._executor.submit(run)
        except RuntimeError:  # shut down between the check and the submit
            with self._lock:
                self._pending -= 1
            self._slots.release()
            return False
        return True

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
