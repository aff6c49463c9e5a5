"""Bulk Q&A's answer_many with the real Answerer and ChatOpenAI over HTTP against the OpenAI
stand-in: what the model is asked, and what the report says, for the backlogs a user really sends
(the same question pasted twice, stray emoji lines, a pasted log file as a "question")."""

from __future__ import annotations

import json
import logging

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Reply

from flytegpt.bot.answering import Answerer, answer_many, prompts, write_report
from flytegpt.ingest.config import AnswerConfig, Config, Settings

RAY = "how do I use ray?"


def make(server, **answer) -> Answerer:
    opts = dict(timeout_s=2.0, max_retries=0, retry_backoff_s=0.05, min_score=0.2)
    opts.update(answer)
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url, FLYTEGPT_CHAT_MODEL="m")
    searcher = WordSearcher(list(ALL))
    return Answerer(Config(answer=AnswerConfig(**opts)), settings, lambda: searcher)


def asked_of_model(server) -> list[str]:
    return [r.text_of("user") for r in server.requests]


def test_the_same_question_is_asked_once_and_its_answer_is_in_every_position(server, caplog) -> None:
    server.reply = lambda body: "Use RayJobConfig [1]." if "kubernetes?" in str(body) else "Install the plugin [1]."
    asked = [RAY, "ray on kubernetes?", f"  {RAY} ", "how do I\n use   ray?", f"{RAY}\u200b"]
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.answering.bulk"):
        results = answer_many(make(server), asked, workers=2)
    assert len(server.requests) == 2  # one per distinct question
    assert sum(RAY in text for text in asked_of_model(server)) == 1
    assert [r["question"] for r in results] == asked  # each position keeps the question as it was written
    assert [r["answer"] for r in results] == ["Install the plugin [1]."] + ["Use RayJobConfig [1]."] + [
        "Install the plugin [1]."] * 3
    assert all(r["mode"] == "llm" and r["citations"] for r in results)
    assert "bulk: 3 duplicate questions folded: each is asked once, its answer copied" in caplog.messages


@pytest.mark.parametrize("nothing", ["\u200b", "\u200b\u200d\ufeff", "\ufffd", "\U0001f600", "\U0001f914\U0001f914",
                                     "?!", "...", " ", "", "\u3000", "\x1b[\x07"])
def test_a_question_with_no_letter_or_digit_is_not_asked_and_says_why(server, caplog, nothing: str) -> None:
    server.reply = "Install the plugin [1]."
    with caplog.at_level(logging.WARNING, logger="flytegpt.bot.answering.bulk"):
        results = answer_many(make(server), [nothing, RAY, nothing])
    assert len(server.requests) == 1 and RAY in asked_of_model(server)[0]
    assert [r["question"] for r in results] == [nothing, RAY, nothing]  # one entry per question, in place
    assert [r["mode"] for r in results] == ["error", "llm", "error"]
    assert results[0]["error"] == results[2]["error"] == (
        "Not asked: the question has no letters or digits (only spaces, invisible characters, emoji or punctuation).")
    assert "bulk: 2 questions not asked: no letters or digits" in caplog.messages


def test_letters_and_digits_of_any_script_are_asked(server) -> None:
    server.reply = "Install the plugin [1]."
    asked = ["ray \u3067\u3059\u304b\uff1f", "\u0440\u0435\u0439?", "42"]
    results = answer_many(make(server, min_score=0.0), asked)
    # (a question mostly in another script is searched with the model's search terms first)
    answered = [r for r in server.requests if r.messages[0]["content"] == prompts.ANSWER_SYSTEM]
    assert len(answered) + sum(r["mode"] == "not_found" for r in results) == 3
    assert not any(r["mode"] == "error" for r in results)


def test_a_question_over_the_limit_is_clipped_in_the_reports(server, tmp_path) -> None:
    """A 5 MB one-line "question" was written whole into answers.json and answers.md."""
    huge = "how do I use ray? " + "x" * 5_000_000
    results = answer_many(make(server, max_question_chars=4000), [huge, RAY, huge + " "])
    assert server.requests and all(huge[:100] not in text for text in asked_of_model(server))
    for r in (results[0], results[2]):
        assert r["mode"] == "error" and len(r["question"]) == 4000 and r["question"].endswith("\u2026")
        assert r["question"].startswith("how do I use ray? xxx")
        assert "5000018 characters; the limit is 4000" in r["error"]  # the original length
    write_report(results, tmp_path / "answers.json")
    write_report(results, tmp_path / "answers.md", format="markdown")
    assert (tmp_path / "answers.json").stat().st_size < 20_000
    assert (tmp_path / "answers.md").stat().st_size < 20_000
    assert json.loads((tmp_path / "answers.json").read_text())[1]["question"] == RAY


@pytest.mark.parametrize("workers", [0, 33, 1000, 1.5, True, "4"])
def test_workers_are_a_whole_number_up_to_the_maximum(server, workers) -> None:
    with pytest.raises(ValueError, match=r"workers must be at least 1 and at most 32 \(a whole number\)"):
        answer_many(make(server), [RAY], workers=workers)
    assert server.requests == []
    assert answer_many(make(server), [RAY], workers=32)[0]["mode"] == "llm"


def test_an_answer_that_fell_back_to_passages_says_so(server, tmp_path) -> None:
    """The model wrote nothing (twice): quoted passages, labelled offline, with the reason, so a
    reviewer (and the checkpoint, flyte/bulk_checkpoint.py) can tell them from an answer."""
    server.script(Reply(""), Reply(""))
    server.reply = "Install the plugin [1]."
    results = answer_many(make(server), [RAY, "ray on kubernetes?"])
    assert [r["mode"] for r in results] == ["offline", "llm"]
    assert results[0]["note"] == "empty model output" and "note" not in results[1]
    write_report(results, tmp_path / "answers.md", format="markdown")
    assert "_mode: offline (empty model output), index: v-test_" in (tmp_path / "answers.md").read_text()


def test_a_resumed_answer_covers_its_duplicates(server) -> None:
    server.reply = "New [1]."
    asked = ["ray on kubernetes?", RAY, f" {RAY}"]
    earlier = {2: {"question": f" {RAY}", "answer": "From before.", "mode": "llm", "citations": [],
                   "index_version": "v-test"}}
    results = answer_many(make(server), asked, answered=earlier)
    assert len(server.requests) == 1 and "kubernetes" in asked_of_model(server)[0]
    assert [r["answer"] for r in results] == ["New [1].", "From before.", "From before."]
    assert [r["question"] for r in results] == asked
