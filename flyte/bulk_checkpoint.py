"""Bulk Q&A's answers so far, kept in flytekit's intra-task checkpoint.

A backlog of thousands of questions runs for hours; a node that is preempted or a pod that is
killed half-way would otherwise lose every answer (and the chat model's bill for them). Flyte
hands a retried attempt the checkpoint its previous attempt wrote (`--prev-checkpoint`), so the
retry asks only what is still unanswered, on the same index version.

The checkpoint is one gzipped JSON file: the questions' fingerprint (a checkpoint of other
questions is ignored) and every answered question by position. Failed questions are not kept:
a retry asks them again; nor are answers that fell back to quoted passages because the chat model
did not answer in time or answered nothing (`final`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from flytekit.core.checkpointer import Checkpoint

log = logging.getLogger(__name__)

FORMAT = "flytegpt-bulk-checkpoint/1"
EVERY_S = 60.0  # at most this often; a slow store (a big backlog) stretches it, see `save`


def final(result: Mapping) -> bool:
    """Is this answer worth keeping, or should a retry ask the model again? Errors are asked again,
    and so are the offline passages the answerer quotes when the model missed the deadline or
    wrote nothing: mode "offline" with a `note` (bot/answering/chain.py). Offline answers without
    a note (no chat model configured) are as good as a retry would give."""
    return result.get("mode") != "error" and not (result.get("mode") == "offline" and result.get("note"))


def _fingerprint(questions: Sequence[str]) -> str:
    h = hashlib.sha256()
    for q in questions:
        h.update(q.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


class BulkCheckpoint:
    """Reads the previous attempt's answers and saves this attempt's, through one flytekit
    Checkpoint (None outside a Flyte task: then nothing is read or written)."""

    def __init__(self, checkpoint: "Checkpoint | None", questions: Sequence[str], *,
                 every_s: float | None = None) -> None:
        self.checkpoint = checkpoint
        self.every_s = EVERY_S if every_s is None else every_s
        self.fingerprint = _fingerprint(questions)
        self.count = len(questions)
        self._last_write = time.monotonic()
        self._write_cost = 0.0
        self._saved = 0

    def restore(self) -> dict[int, dict]:
        """The previous attempt's answers by position ({} when there is none, or it does not fit)."""
        if self.checkpoint is None:
            return {}
        try:
            raw = self.checkpoint.read()
            if raw is None:
                return {}
            doc = json.loads(gzip.decompress(raw))
            if doc.get("format") != FORMAT or doc.get("questions") != self.fingerprint:
                log.warning("bulk: the previous attempt's checkpoint is for other questions; starting over")
                return {}
            # `final` again: a checkpoint an earlier release wrote may hold fallback answers
            answered = {int(i): r for i, r in doc["answered"]
                        if isinstance(r, dict) and final(r) and 0 <= int(i) < self.count}
        except Exception as e:  # noqa: BLE001 - a bad checkpoint costs time, never the run
            log.warning("bulk: the previous attempt's checkpoint is unreadable (%s); starting over", e)
            return {}
        return answered

    def save(self, results: Mapping[int, dict], *, force: bool = False) -> bool:
        """Write the answered questions (`final` ones only) when EVERY_S has passed and at least
        ten times the last write's time (uploading a big backlog must not be most of the work)."""
        if self.checkpoint is None:
            return False
        since = time.monotonic() - self._last_write
        if not force and (since < self.every_s or since < 10 * self._write_cost):
            return False
        answered = [[i, r] for i, r in sorted(results.items()) if final(r)]
        if len(answered) == self._saved and not force:
            return False
        started = time.monotonic()
        doc = {"format": FORMAT, "questions": self.fingerprint, "answered": answered}
        try:
            self.checkpoint.write(gzip.compress(json.dumps(doc).encode("ascii")))
        except Exception as e:  # noqa: BLE001 - the run goes on; the next tick tries again
            log.warning("bulk: could not save the checkpoint (%s)", e)
            return False
        finally:
            self._last_write = time.monotonic()
            self._write_cost = self._last_write - started
        self._saved = len(answered)
        log.info("bulk: checkpoint saved (%d of %d answered)", len(answered), self.count)
        return True


def task_checkpoint() -> "Checkpoint | None":
    """This task's flytekit checkpoint, or None where flytekit has none to give."""
    from flytekit import current_context

    try:
        return current_context().checkpoint
    except Exception:  # noqa: BLE001 - not in a task: no checkpoint
        return None
