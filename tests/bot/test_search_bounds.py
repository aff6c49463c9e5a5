"""What a question is searched with is bounded, and reading it is linear.

A paste in which nothing was recognised (no error line, no frame of the asker's own, no words of
theirs) was searched whole, up to Slack's 40,000 characters, and a thread's follow-up carried its
earlier turns whole, refused 40,000-character messages included: 2.9 s of CPU for one message and
6.0 s for "why?" (the keyword tokenizer's exact-name pattern was quadratic on one long run), a
logged `standalone_question` of 39,985 characters against `[answer] max_question_chars` 4,000, and
a 40,551-character rewrite request to the model. CPU time is measured by
tests/bench/bench_keyword.py; these tests assert what the time came from: sizes and outcomes.
"""

from __future__ import annotations

import random
import re

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Reply

from flytegpt.bot import messages
from flytegpt.bot.answering import Answerer, Turn, prompts
from flytegpt.bot.answering.chain import answered_turns, with_thread_subject
from flytegpt.bot.pasted import clip_ends, fit_pieces, fit_question, search_text
from flytegpt.ingest.config import AnswerConfig, Config, Settings
from flytegpt.ingest.keyword import names_exact_term, tokenize, words

pytestmark = pytest.mark.timeout(180)

N = 39_990
LIB_FRAME = ('  File "/usr/local/lib/python3.10/site-packages/flytekit/core/base_task.py", line 572, '
             'in dispatch_execute\n    native_outputs = self.execute(**native_inputs)\n')
# a bare trace whose end (the error) Slack cut off: library frames only, nothing to search by
CUT_TRACE = ("```\nTraceback (most recent call last):\n" + LIB_FRAME * 400)[:N]
ONE_LINE_TRACE = ("Traceback (most recent call last): " + "x" * N)[:N]  # 2.9 s of CPU before the fix
NOVEL = ("It was a bright cold day in April, and the clocks were striking thirteen.\n" * 600)[:N]


def fill(unit: str, n: int = N) -> str:
    return (unit * (n // len(unit) + 1))[:n]


# --- the keyword tokenizer: linear, and the same tokens ------------------------------------------------

# The pattern names_exact_term used before: the oracle its linear form must agree with.
OLD_EXACT_NAME = re.compile(r"\w_\w|[A-Za-z_]\w+\.[A-Za-z_]\w+|^\d{2,}$")
OLD_TOKEN = re.compile(r"[A-Za-z0-9_]+(?:[.\-/][A-Za-z0-9_]+)*")
OLD_CLI_FLAG = re.compile(r"(?<![\w-])--[A-Za-z]\w*(?:-\w+)*")


def old_names_exact_term(text: str) -> bool:
    return bool(OLD_CLI_FLAG.search(text)) or any(OLD_EXACT_NAME.search(m.group()) for m in OLD_TOKEN.finditer(text))


FIXTURE = """How do I use `with_overrides` on a FlyteFile in flytekit.core.task? pyflyte run --resource-requests cpu=2
exit code 137 (OOMKilled) from map_task; FLYTE_AWS_ENDPOINT=http://localhost:30080, v1.12.0 vs 1.11
Traceback (most recent call last): File "/home/me/wf.py", line 12, in train -> TypeTransformerFailedError
HTTPServerError kebab-case-name a.b.c/d-e_f XMLHttpRequest getHTTPResponseCode __init__ e.g. 4194304
"""


def test_the_tokens_of_a_text_are_the_ones_the_keyword_index_was_built_with():
    """The keyword index and its token cache hold these tokens: written by the tokenizer before its exact-name
    pattern was made linear.
    (All 4,498 chunks of the eval corpus gave the same tokens, words and exact terms before and after that
    change, and tokenising them took as long: tests/bench/bench_keyword.py times it.)"""
    assert tokenize(FIXTURE) == [
        'overrid', 'with_overrides', 'flyte', 'file', 'flytefil', 'flytekit', 'core', 'task', 'flytekit.core.task',
        'pyflyt', 'run', 'resourc', 'request', 'resource-requests', 'cpu', 'exit', 'code', '137', 'oom', 'kill',
        'oomkil', 'map', 'task', 'map_task', 'flyte', 'aw', 'endpoint', 'flyte_aws_endpoint', 'http', 'localhost',
        '30080', 'v1', '12', 'v1.12.0', 'vs', '11', '1.11', 'traceback', 'recent', 'call', 'last', 'file', 'home',
        'wf', 'py', 'home/me/wf.py', 'line', '12', 'train', 'type', 'transform', 'fail', 'error',
        'typetransformerfailederror', 'http', 'server', 'error', 'httpservererror', 'kebab', 'case', 'name',
        'kebab-case-name', 'a.b.c/d-e_f', 'xml', 'http', 'request', 'xmlhttprequest', 'http', 'respons', 'code',
        'gethttpresponsecod', 'init', 'e.g', '4194304']
    assert words(FIXTURE)[:12] == ['overrides', 'flyte', 'file', 'flytekit', 'core', 'task', 'pyflyte', 'run',
                                   'resource', 'requests', 'cpu', 'exit']


def test_an_exact_term_is_found_as_before_on_any_short_text():
    rng = random.Random(31)
    alphabet = "aZ_19.-/ x"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(40_000)]
    texts += FIXTURE.splitlines() + ["1a.b", "ab.c1", "a1.bc", "1.12", "e.g", "v1.types", "_a.b_", "x-1.ab",
                                     "12", "1x", "a__b", "--a-b", "a--b"]
    assert [names_exact_term(t) for t in texts] == [old_names_exact_term(t) for t in texts]


@pytest.mark.parametrize("unit, tail", [
    ("x", ""), ("x", ".ab"), ("1", "a_b"), ("1", "a.b"), ("1", "ab.cd"), ("aB", ""), ("ABc", ""), ("1a", ""),
    ("a1-", ""), ("ab.", ""), ("a_", ""), ("--a", ""), ("1.", ""), ("x", "."),
])
def test_a_long_run_names_an_exact_term_as_a_short_one_of_its_kind(unit, tail):
    """One 40,000-character run took 2.9 s: the dotted-name pattern was tried at every character of it.
    The old pattern, too slow for the long run, answers for the same run 500 characters long."""
    assert names_exact_term(fill(unit) + tail) == old_names_exact_term(fill(unit, 500) + tail)


# --- the searched text is bounded --------------------------------------------------------------------

@pytest.mark.parametrize("limit", [4000, 1000, 120, 10, 1])
@pytest.mark.parametrize("text", [
    CUT_TRACE, ONE_LINE_TRACE, NOVEL, "x" * N, fill("```Traceback (most recent call last)\n"),
    fill("Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nValueError: x\n\n"),
    fill("2024-05-01 12:00:01 ERROR failed to pull image\n"), fill("a```"),
])
def test_what_a_question_is_searched_with_is_never_over_the_limit(text, limit):
    assert len(search_text(text.strip(), limit)) <= limit
    assert len(fit_pieces([text, "why?", text], limit, sep=" ")) <= limit


def test_a_paste_with_nothing_recognisable_is_searched_by_its_first_and_last_lines():
    searched = search_text(CUT_TRACE, 4000)
    assert len(searched) <= 4000 and fit_question(CUT_TRACE, 4000) is not None  # answered, not refused
    lines = searched.splitlines()
    assert lines[:2] == ["```", "Traceback (most recent call last):"]
    assert lines[-1] == CUT_TRACE.splitlines()[-1]  # the last line: where the error would be
    assert searched.count("dispatch_execute") < 40  # of the 400 frames, those at its ends
    one_line = search_text(ONE_LINE_TRACE, 4000)
    assert one_line.startswith("Traceback (most recent call last): xxx") and len(one_line) == 4000


def test_over_the_limit_the_askers_words_the_error_and_the_frames_are_all_searched():
    error = "ValueError: task 'train': caching needs a non-empty cache version"
    words_ = "my workflow fails, here is what I ran:\n" + "\n".join(f"step {i}: ok" for i in range(400)) + \
        "\nwhat does this error mean?"
    text = (f"{words_}\n```\nTraceback (most recent call last):\n"
            '  File "/home/me/project/wf.py", line 12, in train\n    return cached_train(data)\n'
            f"{error}\n```")
    searched = search_text(text, 1000)
    assert len(searched) <= 1000
    assert searched.startswith("my workflow fails, here is what I ran:")
    assert "what does this error mean?" in searched  # the asker's first and last lines
    assert searched.endswith(f"{error}\nwf.py train\nreturn cached_train(data)")  # error and frame whole
    assert search_text(text) == search_text(text, 4000)  # the default: [answer] max_question_chars' default


def test_a_short_question_and_a_fitting_paste_are_searched_as_before():
    q = "how do I cache a task?"
    assert search_text(q, 4000) == q and with_thread_subject(q, [], 4000) == q
    assert clip_ends(q, 4000) == q and clip_ends("a\nb\nc\nd", 5) == "a\nc\nd"


def test_a_thread_follow_up_is_searched_within_the_limit_and_without_a_refused_message():
    refused = [Turn("user", "a" * N), Turn("user", "b" * N)]  # notices are not part of history
    assert fit_question("a" * N, 4000) is None
    assert answered_turns(refused, 4000) == []
    assert with_thread_subject("why?", answered_turns(refused, 4000), 4000) == "why?"  # was 79,986 characters
    answered = [Turn("user", CUT_TRACE), Turn("assistant", "answer"), Turn("user", NOVEL[:3000] + "\nwhy?")]
    searched = with_thread_subject("and then?", answered, 4000)
    assert len(searched) <= 4000 and searched.endswith(" and then?")
    assert searched.startswith("```\nTraceback (most recent call last):")  # the thread's first question
    assert "why?" in searched  # and the last one's end


def config(**answer) -> Config:
    return Config(answer=AnswerConfig(**{"min_score": 0.2, "max_retries": 0, **answer}))


def test_offline_what_is_searched_and_logged_stays_within_max_question_chars():
    searcher = WordSearcher(list(ALL))
    answerer = Answerer(config(), Settings(), lambda: searcher)
    a = answerer.answer(ONE_LINE_TRACE)
    assert len(a.standalone_question) <= 4000 and len(searcher.queries[-1]) <= 4000  # was 39,990
    a = answerer.answer(CUT_TRACE)
    assert len(a.standalone_question) <= 4000 and a.standalone_question.startswith("```\nTraceback")
    # "why?" after two refused 40,000-character messages: searched alone, not with 80,000 characters
    history = [Turn("user", "a" * N), Turn("user", "b" * N)]
    a = answerer.answer("why?", history)
    assert a.standalone_question == "why?" and searcher.queries[-1] == "why?"
    # after an answered bare trace, "why?" gets its subject, within the limit (was 40,005 characters)
    a = answerer.answer("why?", [Turn("user", CUT_TRACE), Turn("assistant", "Use cache_version [1].")])
    assert len(a.standalone_question) <= 4000 and a.standalone_question.endswith(" why?")
    assert a.standalone_question.startswith("```\nTraceback (most recent call last):")
    small = Answerer(config(max_question_chars=300), Settings(), lambda: searcher)
    first = ("how do I use ray workers? " * 11).strip()  # within the limit: answered
    a = small.answer("can you show code?", [Turn("user", first), Turn("assistant", "Install it [1].")])
    assert len(first) <= 300 < len(first) + len(" can you show code?")
    assert len(a.standalone_question) <= 300 and a.standalone_question.endswith(" can you show code?")
    assert a.standalone_question.startswith("how do I use ray workers?")


def test_the_rewrite_request_holds_the_question_within_the_limit(server):
    """With [answer] rewrite_query, a bare 40,000-character trace made a 40,551-character rewrite request."""
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    searcher = WordSearcher(list(ALL))
    answerer = Answerer(config(rewrite_query=True), settings, lambda: searcher)
    server.script(Reply("ray workers cache_version"), Reply("Install it [1]."))
    a = answerer.answer(CUT_TRACE)
    rewrite, *answer = server.requests
    assert rewrite.messages[0]["content"] == prompts.REWRITE_SYSTEM
    asked = rewrite.text_of("user")
    assert asked.startswith("Question: ```\nTraceback (most recent call last):")
    assert len(asked) <= 4000 + len(prompts.REWRITE_HUMAN)
    assert sum(len(str(m["content"])) for m in rewrite.messages) <= 4000 + len(prompts.REWRITE_SYSTEM) + 100
    assert len(a.standalone_question) <= 4000 and len(a.question) <= 4000
    assert len(searcher.queries[-1]) <= 4000 + 1 + len("ray workers cache_version")
    for request in answer:  # the question as the model reads it, when something relevant was found
        assert len(request.text_of("user").split("Question: ", 1)[1]) <= 4000


def test_a_refused_message_is_not_in_a_later_follow_ups_condense_prompt(server):
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    searcher = WordSearcher(list(ALL))
    answerer = Answerer(config(), settings, lambda: searcher)
    server.script(Reply("How many Ray workers can a Flyte task use?"), Reply("Set replicas [1]."))
    history = [Turn("user", NOVEL), Turn("user", "how do I use ray on flyte?"),
               Turn("assistant", "Install flytekitplugins-ray [1].")]
    a = answerer.answer("and how many workers?", history)
    condense, _ = server.requests
    assert condense.messages[0]["content"] == prompts.CONDENSE_SYSTEM
    told = condense.text_of("user")
    assert "bright cold day" not in told and "how do I use ray on flyte?" in told and len(told) < 500
    assert a.standalone_question == "How many Ray workers can a Flyte task use?"
    # only a message refused: the follow-up is the thread's first question (no condense call)
    server.reset()
    server.reply = "Install it [1]."
    answerer.answer("how do I use ray workers?", [Turn("user", NOVEL)])
    assert [r.messages[0]["content"] for r in server.requests] == [prompts.ANSWER_SYSTEM]


def test_a_long_question_in_the_condense_prompt_keeps_its_first_and_last_lines():
    asked = "here is my config:\n" + "\n".join(f"  key_{i}: value" for i in range(200)) + "\nwhy is key_3 ignored?"
    assert len(asked) < 4000
    told = prompts.format_history([Turn("user", asked), Turn("assistant", "It is [1].")])
    assert told.startswith("User: here is my config:\n  key_0: value")
    assert "\n[...]\n" in told and "why is key_3 ignored?\nAssistant: It is [1]." in told
    assert len(told.split("\nAssistant:")[0]) <= len("User: ") + 1200


# --- through Slack -----------------------------------------------------------------------------------

def test_through_slack_the_logged_question_searched_stays_within_the_limit(make_harness, sample):
    config_, index = sample
    h = make_harness(answerer=Answerer(config_, Settings(), lambda: index))
    d = h.emu.mention(ONE_LINE_TRACE)  # answered: a traceback, cut to fit
    h.wait_answers(thread_ts=d.ts)
    refused = h.emu.mention("a" * N)
    [notice] = h.wait_answers(thread_ts=refused.ts)
    assert notice["text"] == messages.TOO_LONG_QUESTION.format(length=N, limit=4000)
    h.emu.mention("why?", thread_ts=refused.ts)
    h.wait_answers(2, thread_ts=refused.ts)
    rows = h.emu.wait_for(lambda: (r := h.logged_questions()) and len(r) >= 3 and r, timeout=30)
    by_question = {r["question"][:40]: r for r in rows}
    assert all(len(r["standalone_question"] or "") <= 4000 for r in rows)
    assert by_question["why?"]["standalone_question"] == "why?"  # not the refused 39,990 characters
    assert len(by_question[ONE_LINE_TRACE[:40]]["standalone_question"]) <= 4000  # was 39,990
