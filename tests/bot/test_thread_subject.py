"""In the answerer: what a thread's message and a rewritten question are searched with.

Before, without a model, "what does the error mean?", "is the default 3?", "in the helm chart?" and
"ok and for map tasks" were searched alone in their thread and found pages about something else
(Troubleshooting Guide, propeller's default-cpus, the Roadmap). A thread's message now gets the
thread's subject unless it stands alone (`question_text.stands_alone`). A question in another
language was searched with the model's English terms alone, dropping the names of code it held.
"""

from __future__ import annotations

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Reply
from support.slack_harness import CACHE_Q

from flytegpt.bot.answering import Answerer, Turn, prompts
from flytegpt.ingest.config import AnswerConfig, Config, Settings

pytestmark = pytest.mark.timeout(120)

HISTORY = [Turn("user", CACHE_Q), Turn("assistant", "Bump cache_version [1].")]


def offline_search(question: str) -> list[str]:
    searcher = WordSearcher(list(ALL))
    Answerer(Config(answer=AnswerConfig(min_score=0.0)), Settings(), lambda: searcher).answer(question, HISTORY)
    return searcher.queries


@pytest.mark.parametrize("followup", [
    "what does the error mean?", "why does the error happen?", "what's the default value?", "is the default 3?",
    "in the helm chart?", "ok and for map tasks", "would overwrite_cache work here?",
    "tried your suggestion, the cache is still not hit", "didn't help, still a cache miss",
])
def test_without_a_model_a_thread_follow_up_is_searched_with_the_threads_subject(followup):
    assert offline_search(followup) == [f"{CACHE_Q} {followup}"]


@pytest.mark.parametrize("new", ["separate question: how do I use secrets in a task?",
                                 "how do I set GPU limits for a task?", "unrelated: what is a launch plan?"])
def test_without_a_model_a_new_question_in_a_thread_is_searched_alone(new):
    assert offline_search(new) == [new]


def test_offline_in_slack_a_follow_up_gets_the_subject_and_a_new_question_does_not(make_harness, sample):
    config, searcher = sample
    h = make_harness(answerer=Answerer(config, Settings(), lambda: searcher))
    first = h.emu.mention(CACHE_Q)
    h.wait_answers(thread_ts=first.ts)
    h.emu.mention("what's the default value?", thread_ts=first.ts)
    h.wait_answers(2, thread_ts=first.ts)
    h.emu.message("how do I set GPU limits for a task?", thread_ts=first.ts)
    h.wait_answers(3, thread_ts=first.ts)
    rows = h.emu.wait_for(lambda: (r := h.logged_questions()) and len(r) == 3 and r, timeout=30)
    searched = {r["question"]: r["standalone_question"] for r in rows}
    assert searched["what's the default value?"] == f"{CACHE_Q} what's the default value?"
    assert searched["how do I set GPU limits for a task?"] == "how do I set GPU limits for a task?"


def test_a_question_in_another_language_that_names_code_keeps_its_words_with_the_models_terms(server):
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    config = Config(answer=AnswerConfig(min_score=0.0, max_retries=0))
    server.script(Reply("map task gpu resources"), Reply("Set it [1]."))
    searcher = WordSearcher(list(ALL))
    spanish = "¿Cómo le doy una GPU a cada tarea de un map_task?"
    Answerer(config, settings, lambda: searcher).answer(spanish)
    assert server.requests[0].messages[0]["content"] == prompts.REWRITE_SYSTEM
    assert searcher.queries == [f"{spanish}\nmap task gpu resources"]

    server.reset()
    server.script(Reply("schedule workflow cron"), Reply("Use a launch plan [1]."))
    searcher = WordSearcher(list(ALL))
    Answerer(config, settings, lambda: searcher).answer("¿Cómo programo un workflow para que se ejecute cada día?")
    assert searcher.queries == ["schedule workflow cron"]  # no names of code: the model's terms alone
