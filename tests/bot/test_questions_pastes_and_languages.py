"""How questions are read and searched, as the asker sees it.

Before, pasted YAML and Python kept their words but lost their indentation before search, the model
and the question log; a follow-up's words reached the model on one line. Spanish, German and
Portuguese questions were searched as written and found false friends ("plane" -> Planes); with a
model they are now searched with its English search terms, and no English question is. Without
a model, every message of a thread was searched with the thread's first question, so a new
question asked there found the old subject's pages. A pasted traceback over
`[answer] max_question_chars` was refused, and a shorter one was searched by its library frames.

End to end where the asker is in Slack: the real Bolt app over Socket Mode with the Slack emulator,
real retrieval over the sample corpus, the OpenAI-compatible stand-in as the model (or no model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Reply
from support.slack_harness import ANSWER, CACHE_Q, STANDALONE, llm_reply

from flytegpt.bot import messages
from flytegpt.bot.answering import Answerer, Turn, prompts
from flytegpt.bot.pasted import PASTE_MAX_CHARS, fit_question, read_paste, search_text
from flytegpt.bot.question_text import (answerable_length, code_identifiers, reads_as_another_language,
                                         reads_as_followup, stands_alone)
from flytegpt.bot.slack.history import question_text, strip_mentions
from flytegpt.ingest.config import AnswerConfig, Config, Settings

pytestmark = pytest.mark.timeout(180)

EVAL = Path(__file__).resolve().parents[1] / "eval"

YAML_Q = """my tasks still get the default 500m cpu, what's wrong with this?
```
configuration:
  inline:
    task_resources:
      defaults:
        cpu: 2
        memory: 4Gi
```"""
PY_FOLLOWUP = """and when the task is written like this?
```
@task(cache=True, cache_version="1")
def t(x: int) -> int:
    if x:
        return x
    return 0
```"""
ERROR = "ValueError: task 'train': caching needs a non-empty cache version"
PROSE = "getting this when I run my workflow, any idea?"


def trace(frames: int) -> str:
    """A traceback as people paste it: library frames (all about secrets, to tell a search by the
    frames from one by the error), one frame of the asker's own code, the error at the end."""
    lines = ["Traceback (most recent call last):"]
    for i in range(frames):
        lines += [f'  File "/usr/local/lib/python3.11/site-packages/minikit/secrets.py", line {100 + i}, '
                  f"in read_secret_from_env_{i % 7}",
                  "    return current_context().secrets.get(group=group, key=key)"]
    lines += ['  File "/home/me/project/workflows/train.py", line 12, in train',
              "    return cached_train(data, version=cache_version)",
              ERROR]
    return "\n".join(lines)


def offline_answerer(sample) -> Answerer:
    config, searcher = sample
    return Answerer(config, Settings(), lambda: searcher)  # no OPENAI_* set: no model


def wait_logged(h, n: int) -> list[dict]:
    return h.emu.wait_for(lambda: (rows := h.logged_questions()) and len(rows) >= n and rows, timeout=30)


def human(request) -> str:
    return request.text_of("user")


def question_part(request) -> str:
    """What the model is told the question is: the human message after the sources."""
    return human(request).split("</sources>", 1)[1].split("Question: ", 1)[1]


# --- the snippet as pasted --------------------------------------------------------------------------

def test_pasted_yaml_reaches_the_model_and_the_question_log_with_its_indentation(make_harness):
    h = make_harness()
    d = h.emu.mention(YAML_Q)
    [answer] = h.wait_answers(thread_ts=d.ts)
    assert "cache_version" in answer["text"]
    [request] = h.llm.requests
    assert question_part(request) == YAML_Q  # `defaults:` under `task_resources:`, `cpu:` under `defaults:`
    [row] = wait_logged(h, 1)
    assert row["question"] == YAML_Q


def test_a_follow_ups_pasted_code_reaches_the_model_as_pasted(make_harness):
    h = make_harness()
    first = h.emu.mention(CACHE_Q)
    h.wait_answers(thread_ts=first.ts)
    h.emu.mention(PY_FOLLOWUP, thread_ts=first.ts)
    h.wait_answers(2, thread_ts=first.ts)
    condense, answer = h.llm.requests[-2:]
    assert PY_FOLLOWUP in human(condense)
    # the condensed question, then the asker's own words: newlines and indentation kept
    assert question_part(answer) == (f"{STANDALONE}\n(A follow-up in a conversation; the user's own words: "
                                     f"\"{PY_FOLLOWUP}\")")
    assert "\n    if x:\n        return x\n" in question_part(answer)


def test_only_the_gap_a_removed_mention_leaves_is_tidied():
    assert strip_mentions("<@UBOT>  hi <@U2>", "UBOT") == "hi <@U2>"
    assert strip_mentions("ask<@UBOT|flytegpt>now", "UBOT") == "ask now"
    assert strip_mentions("hi <@UBOT>   how\n  indented\tand\ttabbed", "UBOT") == "hi how\n  indented\tand\ttabbed"
    assert question_text(f"<@UBOT> {YAML_Q}", "UBOT") == YAML_Q
    for empty in ("<@UBOT>", "<@UBOT>   ", "<@UBOT>\n\n", " <@UBOT|x> \t"):
        assert question_text(empty, "UBOT") == ""  # still the empty question


# --- Latin-script questions in another language ------------------------------------------------------

NOT_ENGLISH = [  # questions askers wrote in Spanish, German, Portuguese and French
    "¿Cómo programo un workflow para que se ejecute cada día?",
    "Wie plane ich einen Workflow, der jeden Tag läuft?",
    "Como faço para reexecutar uma tarefa que falhou automaticamente?",
    "¿Cómo puedo cachear la salida de una tarea en Flyte?",
    "Comment définir des ressources GPU pour une tâche ?",
    "Wie kann ich die Ausgabe eines Tasks cachen?",
    "Wie starte ich einen Workflow mit pyflyte run auf einem entfernten Cluster?",
    "¿Cómo configuro los recursos de GPU para una tarea?",
]


def english_eval_questions() -> list[str]:
    return [json.loads(line)["question"] for f in sorted(EVAL.glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_no_english_eval_question_reads_as_another_language_and_the_foreign_ones_all_do():
    english = english_eval_questions()
    assert len(english) >= 200
    assert [q for q in english if reads_as_another_language(q)] == []
    assert [q for q in NOT_ENGLISH if not reads_as_another_language(q)] == []
    # English with a foreign word or a link in it, or foreign words in code, stays English
    for q in ("How do I set la_liga=True in `el un de la config`?", "Our nodes expose amd.com/gpu, how do I use it?",
              "see https://docs.flyte.org/en/latest/de/la/index.html, how do I cache?",
              "what does 'de la' mean in this error: no module named de_la?"):
        assert not reads_as_another_language(q), q


def test_a_spanish_question_is_searched_with_the_models_english_terms(make_harness):
    """With a model: one rewrite call, the search with its terms alone (the Spanish words found
    false friends), and the model answers the question as asked."""
    h = make_harness()
    spanish = "¿Cómo invalido el resultado guardado de una tarea cuando cambio su código?"

    def reply(body: dict) -> str:
        if body["messages"][0]["content"] == prompts.REWRITE_SYSTEM:
            return "invalidate task cache cache_version"
        return llm_reply(body)

    h.llm.reply = reply
    d = h.emu.mention(spanish)
    [answer] = h.wait_answers(thread_ts=d.ts)
    rewrite, written = h.llm.requests
    assert rewrite.messages[0]["content"] == prompts.REWRITE_SYSTEM and spanish in human(rewrite)
    assert question_part(written) == spanish
    titles = [line for line in human(written).splitlines() if line.startswith("<source n=")]
    assert "cach" in titles[0].lower()  # what the English terms find
    assert "cache_version" in answer["text"]


def test_an_english_question_gets_no_rewrite_and_without_a_model_nothing_changes(server):
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    searcher = WordSearcher(list(ALL))
    config = Config(answer=AnswerConfig(min_score=0.2, max_retries=0))
    server.reply = "Install it [1]."
    Answerer(config, settings, lambda: searcher).answer("how do I use ray workers on flyte?")
    assert len(server.requests) == 1 and searcher.queries == ["how do I use ray workers on flyte?"]
    offline = Answerer(config, Settings(), lambda: searcher)
    offline.answer("¿Cómo uso los workers de ray en Flyte?")
    assert searcher.queries[-1] == "¿Cómo uso los workers de ray en Flyte?" and len(server.requests) == 1


# --- a new question in a thread, without a model ------------------------------------------------------

def test_without_a_model_a_new_question_in_a_thread_is_searched_alone(make_harness, sample):
    h = make_harness(answerer=offline_answerer(sample))
    first = h.emu.mention(CACHE_Q)
    h.wait_answers(thread_ts=first.ts)
    new = "separate question: how do I use secrets in a task?"
    h.emu.mention(new, thread_ts=first.ts)
    replies = h.wait_answers(2, thread_ts=first.ts)
    assert "secret" in replies[1]["text"].lower()
    sources = str([b for b in replies[1]["blocks"] if b["type"] == "context"]).lower()
    # searched with the thread's question, the cache thread and cache_key came first, Secrets fourth
    assert "[1] secrets" in sources and "cached task" not in sources and "minikit.cache" not in sources
    h.emu.message("can you show code?", thread_ts=first.ts)  # a follow-up: the thread gives the subject
    h.wait_answers(3, thread_ts=first.ts)
    rows = {r["question"]: r["standalone_question"] for r in wait_logged(h, 3)}
    assert rows[new] == new
    assert rows["can you show code?"].startswith(CACHE_Q) and rows["can you show code?"].endswith("can you show code?")


@pytest.mark.parametrize("text", ["separate question: how do I run a workflow on a schedule?",
                                  "how do I use secrets in a task?"])
def test_a_self_contained_question_stands_alone_in_a_thread(text):
    assert stands_alone(text)  # in a thread (a shorter one would be read with the subject)
    assert not reads_as_followup(text)  # and at the top of a DM


@pytest.mark.parametrize("text", ["can you show code?", "what about for map tasks?", "any idea?",
                                  "and in a workflow?", "how do I fix this?", "could you explain more please"])
def test_a_message_that_leans_on_the_thread_reads_as_a_follow_up(text):
    assert not stands_alone(text)
    assert reads_as_followup(text)


# --- a pasted traceback ---------------------------------------------------------------------------

def test_a_pasted_traceback_over_the_limit_is_answered_from_its_error(make_harness):
    long_trace = f"{PROSE}\n```\n{trace(200)}\n```"
    assert 4000 * 5 < len(long_trace) < PASTE_MAX_CHARS
    h = make_harness()
    d = h.emu.mention(long_trace)
    [answer] = h.wait_answers(thread_ts=d.ts)
    assert answer["text"].startswith(ANSWER.split("**")[0]) and "too long" not in answer["text"]
    [request] = h.llm.requests
    told = question_part(request)
    assert len(told) <= h.config.answer.max_question_chars
    assert told.startswith(f"{PROSE}\n```\nTraceback (most recent call last):\n")
    assert told.endswith(f"    return cached_train(data, version=cache_version)\n{ERROR}\n```")
    assert "lines cut ...]" in told
    titles = [line for line in human(request).splitlines() if line.startswith("<source n=")]
    assert "cach" in titles[0].lower() and not any("secret" in t.lower() for t in titles[:2])
    [row] = wait_logged(h, 1)
    assert row["question"] == told  # the log keeps what was answered, within the limit
    # searched: the asker's words, the error, the asker's own frame (not the 200 library frames)
    assert row["standalone_question"] == (f"{PROSE}\n{ERROR}\n"
                                          "train.py train\nreturn cached_train(data, version=cache_version)")


def test_without_a_model_a_short_traceback_is_searched_by_its_error_not_its_frames(make_harness, sample):
    h = make_harness(answerer=offline_answerer(sample))
    d = h.emu.mention(f"{PROSE}\n{trace(20)}")
    [answer] = h.wait_answers(thread_ts=d.ts)
    assert answer["text"].startswith(prompts.OFFLINE_HEADER)
    sources = str([b for b in answer["blocks"] if b["type"] == "context"]).lower()
    assert "cache" in sources and "secret" not in sources
    [row] = wait_logged(h, 1)
    assert "secrets.py" not in row["standalone_question"] and ERROR in row["standalone_question"]


def test_a_long_message_that_is_no_traceback_is_refused_with_what_to_keep(make_harness):
    h = make_harness()
    d = h.emu.mention("why " * 1200)
    [notice] = h.wait_answers(thread_ts=d.ts)
    assert notice["text"] == messages.TOO_LONG_QUESTION.format(length=4799, limit=4000)
    assert "paste the error message (the last lines of the traceback or log)" in notice["text"]
    assert h.llm.requests == []


def test_a_trimmed_trace_keeps_its_head_its_error_and_the_askers_frames_and_says_what_was_cut():
    text = f"{PROSE}\n{trace(200)}\n\nthanks!"
    fitted = fit_question(text, 4000)
    assert fitted is not None and len(fitted) <= 4000
    lines = fitted.splitlines()
    assert lines[:3] == [PROSE, "Traceback (most recent call last):", trace(1).splitlines()[1]]
    assert '  File "/home/me/project/workflows/train.py", line 12, in train' in lines
    assert lines[-3:] == [ERROR, "", "thanks!"]  # the asker's words after the trace, as typed
    cut = sum(int(line.split()[1]) for line in lines if line.startswith("[... ") and line.endswith("lines cut ...]"))
    kept = len(lines) - 3 - sum(line.startswith("[... ") for line in lines)
    assert cut + kept == len(trace(200).splitlines())  # every line kept or counted as cut
    assert answerable_length(text, 4000) and not answerable_length("why " * 1200, 4000)
    assert not answerable_length(" \n ", 4000)


def test_a_log_block_is_searched_by_its_error_lines():
    log = "\n".join(f"2024-05-01T12:00:{i:02d}Z INFO step {i} done" for i in range(40))
    text = (f"the pod keeps failing:\n```\n{log}\n"
            "2024-05-01T12:01:00Z ERROR failed to download s3://bucket/x: AccessDenied\n```")
    assert search_text(text) == ("the pod keeps failing:\n"
                                 "2024-05-01T12:01:00Z ERROR failed to download s3://bucket/x: AccessDenied")
    # code or YAML in a fence is the asker's question, not a paste to cut
    assert read_paste(YAML_Q) is None and search_text(YAML_Q) == YAML_Q


@pytest.mark.parametrize("text", [
    "Traceback (most recent call last):\n" + "x\n" * 19_000,
    "Traceback (most recent call last):\n" + "\n" * 39_000,
    '  File "' * 4_900,
    ('  File "/a/b.py", line 1, in f\n    x\n') * 1_000,
    "2024-01-01 12:00:00 ERROR x\n" * 1_400,
    "```" * 13_000,
    " " * 39_000,
    "│ " + "a" * 39_000,
])
def test_reading_a_paste_is_linear_in_a_messages_length(text):
    """A message can hold Slack's 40,000 characters, read before anything else happens to it."""
    start = time.perf_counter()
    search_text(text)
    fit_question(text, 4000)
    reads_as_another_language(text)
    reads_as_followup(text)
    stands_alone(text)
    code_identifiers(text)
    assert time.perf_counter() - start < 2.0


def test_a_follow_up_with_a_pasted_trace_is_told_to_the_model_whole_within_the_limit(server):
    """The asker's own words of a follow-up were cut at 1,200 characters: a trace's error, at its
    end, was the part lost."""
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    searcher = WordSearcher(list(ALL))
    config = Config(answer=AnswerConfig(min_score=0.0, max_retries=0))
    server.script(Reply(STANDALONE), Reply("Set it [1]."))
    history = [Turn("user", "how do I use ray on flyte?"), Turn("assistant", "Install flytekitplugins-ray [1].")]
    followup = f"still getting this:\n{trace(60)}"
    Answerer(config, settings, lambda: searcher).answer(followup, history)
    told = question_part(server.requests[-1])
    assert told.endswith(f"{ERROR}\")") and "lines cut ...]" in told


def test_without_a_model_a_follow_up_to_a_pasted_trace_is_searched_with_its_error_not_its_frames():
    searcher = WordSearcher(list(ALL))
    offline = Answerer(Config(answer=AnswerConfig(min_score=0.0)), Settings(), lambda: searcher)
    history = [Turn("user", f"{PROSE}\n{trace(200)}"), Turn("assistant", "Set a cache version [1].")]
    offline.answer("why though?", history)
    assert searcher.queries == [f"{PROSE}\n{ERROR}\ntrain.py train\n"
                                "return cached_train(data, version=cache_version) why though?"]
