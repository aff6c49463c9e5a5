"""Bulk Q&A's checkpoint through flytekit's own SyncCheckpoint: what a retried attempt gets back
from the attempt before it (the killed-and-resumed run itself: tests/flyte/test_bulk_qa_wf.py)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest
from flytekit.core.checkpointer import SyncCheckpoint

from flytegpt.flyte.bulk_checkpoint import BulkCheckpoint

QUESTIONS = ["How do I cache a task?", "What is a launch plan?", "Why is my pod pending?"]


def _answer(q: str, mode: str = "llm") -> dict:
    return {"question": q, "answer": f"About {q}", "mode": mode, "citations": [], "index_version": "v1"}


def _retry(tmp_path: Path, attempt: int) -> SyncCheckpoint:
    """Attempt `attempt`'s checkpoint, as flytekit's entrypoint makes it: its own destination and
    the previous attempt's as the source."""
    prev = tmp_path / f"cp{attempt - 1}" if attempt > 1 else None
    return SyncCheckpoint(checkpoint_dest=str(tmp_path / f"cp{attempt}"), checkpoint_src=str(prev) if prev else None)


def test_the_answers_of_a_killed_attempt_come_back_and_failures_are_asked_again(tmp_path: Path) -> None:
    first = BulkCheckpoint(_retry(tmp_path, 1), QUESTIONS, every_s=0)
    assert first.restore() == {}  # the first attempt has no predecessor
    assert first.save({0: _answer(QUESTIONS[0]), 2: _answer(QUESTIONS[2], mode="error")})
    assert not first.save({0: _answer(QUESTIONS[0])})  # nothing new: no upload
    second = BulkCheckpoint(_retry(tmp_path, 2), QUESTIONS, every_s=0)
    assert second.restore() == {0: _answer(QUESTIONS[0])}


def test_saves_are_spaced_out(tmp_path: Path) -> None:
    cp = BulkCheckpoint(_retry(tmp_path, 1), QUESTIONS, every_s=3600)
    assert not cp.save({0: _answer(QUESTIONS[0])})  # an hour has not passed
    assert cp.save({0: _answer(QUESTIONS[0])}, force=True)


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"{not json"), gzip.compress(b"[]"),
                                     gzip.compress(b'{"format": "flytegpt-bulk-checkpoint/1", "questions": "x", '
                                                   b'"answered": []}')])
def test_a_checkpoint_that_does_not_fit_starts_over(tmp_path: Path, content: bytes, caplog) -> None:
    (tmp_path / "cp1").mkdir()
    (tmp_path / "cp1" / "_cp").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="flytegpt.flyte.bulk_checkpoint"):
        assert BulkCheckpoint(_retry(tmp_path, 2), QUESTIONS, every_s=0).restore() == {}
    assert "starting over" in caplog.text


def test_other_questions_do_not_inherit_the_answers(tmp_path: Path) -> None:
    BulkCheckpoint(_retry(tmp_path, 1), QUESTIONS, every_s=0).save({0: _answer(QUESTIONS[0])})
    assert BulkCheckpoint(_retry(tmp_path, 2), QUESTIONS[::-1], every_s=0).restore() == {}


def test_outside_a_task_there_is_nothing_to_read_or_write() -> None:
    cp = BulkCheckpoint(None, QUESTIONS, every_s=0)
    assert cp.restore() == {} and not cp.save({0: _answer(QUESTIONS[0])})


def test_a_store_that_refuses_the_write_does_not_stop_the_run(tmp_path: Path, caplog) -> None:
    (tmp_path / "cp1").write_text("a file where the checkpoint directory should be")
    cp = BulkCheckpoint(_retry(tmp_path, 1), QUESTIONS, every_s=0)
    with caplog.at_level(logging.WARNING, logger="flytegpt.flyte.bulk_checkpoint"):
        assert not cp.save({0: _answer(QUESTIONS[0])})
    assert "could not save the checkpoint" in caplog.text


def test_answers_are_carried_on_through_every_retry(tmp_path: Path) -> None:
    """Flyte hands each attempt only its predecessor's checkpoint: an attempt that restored
    answers and died before saving anything new left its successor with nothing."""
    first = BulkCheckpoint(_retry(tmp_path, 1), QUESTIONS, every_s=3600)
    assert first.save({0: _answer(QUESTIONS[0]), 1: _answer(QUESTIONS[1])}, force=True)
    second = BulkCheckpoint(_retry(tmp_path, 2), QUESTIONS, every_s=3600)
    restored = second.restore()
    assert second.save(restored, force=True)  # what the task does at once, before asking anything
    third = BulkCheckpoint(_retry(tmp_path, 3), QUESTIONS, every_s=3600)
    assert set(third.restore()) == {0, 1}


def _fallback(q: str, note: str) -> dict:
    """What the answerer gives when the chat model missed the deadline or wrote nothing: quoted
    passages, mode "offline", with a note (bot/answering/chain.py)."""
    return {**_answer(q, mode="offline"), "note": note}


def test_fallback_passages_are_asked_again_but_offline_answers_without_a_model_are_kept(tmp_path: Path) -> None:
    """With a chat model configured, a model that timed out or answered nothing must be asked
    again by the retry; without one (no note) the offline answer is all a retry could give."""
    first = BulkCheckpoint(_retry(tmp_path, 1), QUESTIONS, every_s=0)
    assert first.save({0: _fallback(QUESTIONS[0], "deadline"), 1: _answer(QUESTIONS[1], mode="offline"),
                       2: _fallback(QUESTIONS[2], "empty model output")})
    assert BulkCheckpoint(_retry(tmp_path, 2), QUESTIONS, every_s=0).restore() == {
        1: _answer(QUESTIONS[1], mode="offline")}


def test_fallback_passages_in_an_older_checkpoint_are_asked_again(tmp_path: Path) -> None:
    import json

    from flytegpt.flyte.bulk_checkpoint import FORMAT, _fingerprint

    doc = {"format": FORMAT, "questions": _fingerprint(QUESTIONS),
           "answered": [[0, _fallback(QUESTIONS[0], "deadline")], [1, _answer(QUESTIONS[1])]]}
    (tmp_path / "cp1").mkdir()
    (tmp_path / "cp1" / "_cp").write_bytes(gzip.compress(json.dumps(doc).encode()))
    assert BulkCheckpoint(_retry(tmp_path, 2), QUESTIONS, every_s=0).restore() == {1: _answer(QUESTIONS[1])}
