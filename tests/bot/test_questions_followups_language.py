"""How a thread's message and a question quoting another language are read.

Before, without a model, a thread's message was searched with the thread's subject only when it
matched a few word lists, so 11 of 49 real follow-ups ("what does the error mean?", "is the
default 3?", "in the helm chart?", "ok and for map tasks") were searched alone and lost their
subject. In a thread most messages to the bot follow up: now a thread's message is read with the
subject unless it stands alone (`stands_alone`: "separate question: …", or a question of 7 words
or more that points back at nothing). A DM's top level keeps its own rule (`reads_as_followup`).

An English question quoting a Spanish log line ("Our log says: El pod no tiene recursos…")
read as Spanish, so with a model it was searched by the model's terms without the asker's words;
"Comment planifier un workflow chaque jour?" was missed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.slack_harness import llm_reply

from flytegpt.bot.answering import prompts
from flytegpt.bot.question_text import code_identifiers, reads_as_another_language, reads_as_followup, stands_alone

pytestmark = pytest.mark.timeout(120)

EVAL = Path(__file__).resolve().parents[1] / "eval"

# --- a thread's message: a follow-up, or a new question ----------------------------------------------

# 49 real follow-ups, asked in a thread after a question about caching,
# resources or a pasted trace: each is searched with the thread's subject.
REAL_FOLLOW_UPS = [
    "does that work for map tasks too?", "what if I use a launch plan?", "same error on 1.12",
    "could you give an example?", "does this also apply to dynamic workflows?", "how about with a launch plan?",
    "and with pyflyte run --remote?", "can I do the same with ImageSpec?", "is that possible with the flytectl CLI?",
    "what about on GKE?", "still getting the same error after upgrading to flytekit 1.12",
    "I tried that, now I get ImagePullBackOff", "where do I put this config?", "where do I put that in values.yaml?",
    "which version added it?", "is it the same for spark tasks?", "is there a doc page for it?",
    "which file is this in?", "how do I test it locally?", "can you show the yaml for that?",
    "what's the default value?", "what's the default?", "is the default 3?", "does caching work with it?",
    "and on the sandbox?", "in the helm chart?", "for flyte-binary?", "with the flyte-core chart instead?",
    "what does the error mean?", "why does the error happen?", "what causes this?", "any workaround?",
    "do I need to restart propeller after changing it?",
    "do I need to re-register the workflow after this change?", "will it also cache outputs of map tasks?",
    "would overwrite_cache work here?", "and if the task is a ContainerTask?", "ok and for map tasks",
    "hmm, I get a 403 from S3 now", "now I get a 403 from S3", "getting a 403 from S3 now",
    "how do I do it with pyflyte?", "how to do it for a whole project instead of a task?",
    "is there an env var for this?", "Same question but for GCS", "same but for GCS",
    "that gives me KeyError: 'cache_version'", "tried your suggestion, the cache is still not hit",
    "didn't help, still a cache miss",
]
# New questions asked in a thread, from trial runs and the tests: searched alone.
SELF_CONTAINED = [
    "separate question: how do I run a workflow on a schedule?", "how do I run a workflow on a schedule?",
    "how do I set GPU limits for a task?", "how do I install flytectl on mac?", "how do I use secrets in a task?",
    "what is a launch plan in flyte", "how do I invalidate the cache of a task?",
    "separate question: how do I use secrets in a task?",
]
# A message that says it starts something new stands alone whatever its length.
MARKED_NEW = [
    "unrelated: how do I cache a task?", "another question: what is a launch plan?",
    "different question, how do I set retries?", "new question - what is flytectl?",
    "also, unrelated: does flyte run on GKE?", "different topic: map tasks", "Unrelated, but what is a launch plan?",
]
# Short new questions (6 words or fewer) read with the thread's subject: measured, the real short
# follow-ups are as short and name nothing from before either ("in the helm chart?", "is the default 3?").
SHORT_NEW = ["what is a launch plan?", "how do I cache a task?"]


def test_every_real_follow_up_gets_the_threads_subject():
    assert len(REAL_FOLLOW_UPS) == 49
    assert [q for q in REAL_FOLLOW_UPS if stands_alone(q)] == []


@pytest.mark.parametrize("text", SELF_CONTAINED + MARKED_NEW)
def test_a_new_question_in_a_thread_stands_alone(text):
    assert stands_alone(text)


@pytest.mark.parametrize("text", SHORT_NEW + [
    "", "why?", "and for map tasks?", "can you show code?", "how do I set it for a whole project?",
    "is there a way to set the default for every task in the project?",  # "the default": named before
    "what if the task that reads the file runs on a GPU node?", "my task still fails after setting retries to 3",
    "still getting this:\n```\nTraceback (most recent call last):\nValueError: x\n```",
])
def test_a_message_that_leans_on_the_thread_or_is_short_is_read_with_its_subject(text):
    assert not stands_alone(text)


def test_is_there_a_way_is_no_pointer_back_to_the_thread():
    assert stands_alone("is there a way to run a task on a GPU node pool?")
    assert not stands_alone("is there a way to run it on a GPU node pool?")


def test_a_dms_top_level_keeps_its_own_rule():
    """A DM's top-level message is read with the exchange before it only when it reads as a
    follow-up (short, continuing or pointing back): at the top of a DM most messages are new."""
    assert [q for q in SELF_CONTAINED + SHORT_NEW if reads_as_followup(q)] == []
    assert reads_as_followup("and for map tasks?") and reads_as_followup("can you show code?")


# --- a question quoting another language -------------------------------------------------------------

ENGLISH_QUOTING = [  # English questions with foreign words, quotes or logs
    "Our log says: El pod no tiene recursos suficientes para ejecutar la tarea. Why?",
    "Our log says: El pod no tiene recursos suficientes para ejecutar la tarea, en el nodo. How do I fix it?",
    "Error: 'no se puede encontrar el archivo de configuración' when running pyflyte",
    "my code: para cada dia en la lista de tareas: run(task) -- why does it fail?",
    "para cada dia en la lista, the task fails with an error",
    "I get 'Die Datei ist nicht vorhanden und kann nicht gelesen werden' from my pod, what does it mean?",
    "the pod logs:\n2024-05-01T12:00:00Z ERROR no se puede encontrar el archivo de la tarea\nhow do I fix this?",
    "> El pod no tiene recursos para la tarea\nwhy do I get this?",
    "How does de-serialization of a dataclass work in flytekit?",
    "Can I order resources à la carte per task, or only per workflow?",
    "Die Hard fans: how do I make a task retry forever?", "my variable `para_cada_dia = True` is ignored, why?",
    "Does Flyte support la plateforme de Google (GCP) and des GPUs A100?",
    "Hola! How do I cache tasks in Flyte? Gracias!",
    "Can a task use more than one GPU, e.g. with torch DDP? que es mejor",
    "What is the difference between el map_task and ArrayNode?",
]
ANOTHER_LANGUAGE = [
    "Comment planifier un workflow chaque jour?", "Bonjour, comment je peux utiliser map_task avec des ressources GPU?",
    "Was ist der Unterschied zwischen map_task und dynamic?",
    "¿Cómo programo un workflow para que se ejecute cada día?",
    "Wie plane ich einen Workflow jeden Tag?", "Come posso usare la cache per un task?",
    "Hoe kan ik een taak cachen in Flyte?", "Como faço para agendar um workflow?",
    # the asker's words are the other language; what they quote is English
    "Cuando ejecuto pyflyte run me da este error: No module named flytekit, ¿qué hago?",
    "Tengo este error: 'task failed with exit code 137' ¿qué hago?",
    "Me sale este error: no se puede encontrar el archivo de configuración",
    "Wie kann ich den Fehler 'No module named flytekit' beheben?", "¿Por qué no funciona mi workflow?",
]


@pytest.mark.parametrize("text", ENGLISH_QUOTING)
def test_an_english_question_quoting_another_language_reads_as_english(text):
    assert not reads_as_another_language(text)


@pytest.mark.parametrize("text", ANOTHER_LANGUAGE)
def test_a_question_in_another_language_reads_as_one(text):
    assert reads_as_another_language(text)


def test_no_english_eval_question_reads_as_another_language():
    english = [json.loads(line)["question"] for f in sorted(EVAL.glob("*.jsonl"))
               for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(english) >= 200
    assert [q for q in english if reads_as_another_language(q)] == []


@pytest.mark.parametrize("text, names", [
    ("¿Cómo uso map_task con recursos de GPU?", ["map_task"]),
    ("¿Por qué falla mi ContainerTask con OOMKilled?", ["ContainerTask", "OOMKilled"]),
    ("Wie setze ich --remote bei pyflyte run?", ["--remote"]),
    ("Mi task lee /data/input.csv y falla (ver open()), e.g. con `cache_version`", ["/data/input.csv", "open()",
                                                                                 "cache_version"]),
    ("¿Cómo programo un workflow para que se ejecute cada día?", []),
    ("see https://docs.flyte.org/en/latest", []),
])
def test_the_names_of_code_in_a_question(text, names):
    assert code_identifiers(text) == names


def test_an_english_question_quoting_a_spanish_log_gets_no_rewrite(make_harness):
    """With a model: searched with the asker's words as any English question, no rewrite call."""
    h = make_harness()
    asked = []

    def reply(body: dict) -> str:
        asked.append(body["messages"][0]["content"])
        return llm_reply(body)

    h.llm.reply = reply
    d = h.emu.mention("my cached task reruns, our log says: La tarea no tiene una versión de caché. Why?")
    h.wait_answers(thread_ts=d.ts)
    assert prompts.REWRITE_SYSTEM not in asked and len(asked) == 1
