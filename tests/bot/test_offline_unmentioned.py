"""Offline, an answer says which names in the question no passage found mentions.

Without a model, "Is there a flytekit Haskell SDK?" got passages about the Python SDK under "here are
the most relevant passages", and nothing told the asker they might not answer.
"""

from __future__ import annotations

import json

import pytest

from flytegpt.bot.answering import Answerer, prompts
from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.offline import offline_answer, unmentioned_names
from flytegpt.ingest.config import Settings

PYTHON_SDK = Source(1, "docs:sdk.md", "Flytekit", "https://example.org/sdk",
                    "flytekit is the Python SDK for Flyte. Deploy on AWS EKS or GCP GKE.", 0.9, "docs")
CACHING = Source(2, "docs:caching.md", "Caching", "https://example.org/caching",
                 "Set cache=True and a cache_version on a task to reuse outputs.", 0.8, "docs")


@pytest.mark.parametrize("question, expected", [
    ("Is there a flytekit Haskell SDK?", ["Haskell"]),
    ("Can I deploy Flyte on IBM Cloud or in Cosmos DB, like on EKS?", ["IBM Cloud", "Cosmos DB"]),
    # named in a source (any case, any form): not missing
    ("Does the Python SDK run on EKS and GKE?", []),
    ("Can I use Caching?", []),
    # the first word of a sentence or a line is capitalised whatever it is
    ("Haskell aside, how do I cache a task? Rust too?", []),
    ("how do I cache a task?\nWindows is what I use.", []),
    ("how do i cache a task", []),
    ("What does fetch_workflow pick when version is None or False?", []),
    # a name of several words: the words no source has, together ("Haskell" of "Haskell SDK")
    ("Does it run on Apple Silicon or in Cosmos DB?", ["Apple Silicon", "Cosmos DB"]),
    # at most three, in the order asked; a list's names after commas start clauses as far as this
    # rule can tell ("Sorry, Weirdly ..."): only the one after "or" is read
    ("Is there a Go, Haskell, Rust, Scala or Julia SDK?", ["Julia"]),
    ("Is there a Haskell SDK or a Rust SDK or a Scala SDK or a Julia SDK?", ["Haskell", "Rust", "Scala"]),
    # clause starts, chat acronyms, days: no names
    ("Sorry, Weirdly the cache misses (Newbie here) - Apologies ASAP on Monday", []),
    ("> Why does the cache miss?\n* Newbie question", []),
    # another language capitalises its nouns
    ("Wie kann ich eine Aufgabe mit der Tarea zwischenspeichern und die Daten im Speicher behalten?", []),
])
def test_names_no_source_mentions(question: str, expected: list[str]) -> None:
    assert unmentioned_names(question, [PYTHON_SDK, CACHING]) == expected


def test_the_offline_answer_says_so_under_its_header_and_only_then() -> None:
    text, citations = offline_answer("Is there a flytekit Haskell SDK?", [PYTHON_SDK, CACHING])
    header, _, rest = text.partition("\n\n")
    assert header == prompts.OFFLINE_HEADER + "\n_None of the passages found mention Haskell._"
    assert citations and "Python SDK" in rest  # the passages are still quoted
    text, _ = offline_answer("How do I cache a task with Caching?", [PYTHON_SDK, CACHING])
    assert "None of the passages" not in text
    text, _ = offline_answer("Is there a Haskell SDK or a Rust SDK?", [PYTHON_SDK])
    assert "_None of the passages found mention Haskell or Rust._" in text


def test_on_the_sample_corpus_its_questions_get_no_such_note_and_an_outside_name_does(sample) -> None:
    config, searcher = sample
    answerer = Answerer(config, Settings(OPENAI_API_KEY="", OPENAI_BASE_URL=""), lambda: searcher)
    with open("ingest/sample/QUESTIONS.jsonl", encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for line in f if line.strip()]
    for q in questions:
        a = answerer.answer(q)
        assert a.mode == "offline" and "None of the passages" not in a.text, (q, a.text[:300])
    a = answerer.answer("How do I cache a task's outputs in Cosmos DB?")
    assert a.mode == "offline" and "_None of the passages found mention Cosmos DB._" in a.text
