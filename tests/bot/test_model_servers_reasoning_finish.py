"""OpenAI-compatible servers that are not OpenAI: a reasoning model's <think> block in the reply,
finish reasons ("length", "content_filter", a stream that ends without one), a 200 reply that is not
JSON, and the field the answer-length cap goes out as. The real ChatOpenAI over HTTP against the stand-in; Slack through the emulator; the CLI through
click. What is asserted is what the asker sees (text, sources, notes) and what the operator reads.
"""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Page, Reply, Slow
from support.slack_harness import ANSWER, CACHE_Q, STANDALONE, harness_factory, llm_reply

from flytegpt.bot.answering import Answerer, ModelUnavailable, Turn, prompts
from flytegpt.bot.answering.chain import close_fence
from flytegpt.bot.answering.model import max_tokens_field
from flytegpt.bot.answering.live import Delta
from flytegpt.bot.answering.reasoning import ReasoningFilter, closes_unopened, strip_reasoning
from flytegpt.ingest.config import AnswerConfig, Config, Settings

# what vLLM serves for DeepSeek-R1 / QwQ without --reasoning-parser: thinking that cites sources
# and recalls a URL from training data, then the answer
THOUGHT = ("Okay, the user asks about ray. Source [3] talks about something else. Source [2] maybe. "
           "Hmm, I recall from training data that https://internal.example.com/wiki says so; consider [1].")
REPLY = "Install the plugin and use `RayJobConfig` [2]."
THINK = f"<think>\n{THOUGHT}\n</think>\n\n{REPLY}"
THINK_NO_OPEN = f"{THOUGHT}\n</think>\n\n{REPLY}"  # R1's newer template opens <think> in the prompt
ABOUT_TAGS_IN_CODE = "Strip it:\n\n```python\ntext.split('</think>')[-1]\n```"


def make(server, **answer):
    opts = dict(timeout_s=3.0, max_retries=1, retry_backoff_s=0.01, retry_max_wait_s=0.1, min_score=0.2)
    opts.update(answer)
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url, FLYTEGPT_CHAT_MODEL="r1")
    searcher = WordSearcher(list(ALL))
    return Answerer(Config(answer=AnswerConfig(**opts)), settings, lambda: searcher), searcher


def streamed(answerer, question, history=()):
    events = list(answerer.stream(question, history))
    return "".join(e.text for e in events if isinstance(e, Delta)), events[-1]


def no_thinking(text: str) -> None:
    for word in ("Okay", "Hmm", "think>", "training data", "internal.example.com"):
        assert word not in text


# ---- the rule itself -----------------------------------------------------------------------------

@pytest.mark.parametrize("reply,answer", [
    (THINK, REPLY),
    (f"<thinking>{THOUGHT}</thinking>{REPLY}", REPLY),
    (f"  <REASONING>\n{THOUGHT}</reasoning>\n{REPLY}", REPLY),
    (f"<think></think>\n\n<think>{THOUGHT}</think>\n{REPLY}", REPLY),  # empty block, then one more
    (THINK_NO_OPEN, REPLY),
    (f"<think>\n{THOUGHT}", ""),  # cut by max_tokens while thinking: no answer at all
    (REPLY, REPLY),  # no thinking: unchanged, white space too
    ("\n  " + REPLY, "\n  " + REPLY),
    # an answer about the tags themselves, later in the text or in code, is left as written
    ("Qwen3 writes its reasoning between `<think>` and `</think>` [1].",
     "Qwen3 writes its reasoning between `<think>` and `</think>` [1]."),
    (ABOUT_TAGS_IN_CODE, ABOUT_TAGS_IN_CODE),
])
def test_thinking_is_told_apart_from_the_answer(reply, answer):
    assert strip_reasoning(reply) == answer
    for size in (1, 2, 5, 13, len(reply) or 1):  # the stream gives the same answer in any pieces
        f = ReasoningFilter()
        out = "".join(f.feed(reply[i:i + size]) for i in range(0, len(reply), size)) + f.flush()
        if f.restarted:  # shown before its closing tag came: the caller replaces it with f.answer
            assert closes_unopened(reply) and f.answer == answer
        else:
            assert out == answer == f.answer


def test_a_stream_shows_nothing_while_thinking_and_the_answer_as_it_comes():
    f = ReasoningFilter()
    shown = [f.feed(THINK[i:i + 4]) for i in range(0, len(THINK), 4)]
    first = next(i for i, s in enumerate(shown) if s)
    assert "".join(shown[:first]) == "" and first * 4 > THINK.index("</think>")  # nothing while thinking
    assert len([s for s in shown if s]) > 3  # the answer came piece by piece, not at the end
    assert "".join(shown) + f.flush() == REPLY and f.thinking_chars > len(THOUGHT)
    # a model known to open its block in the prompt: nothing of it is shown either
    f = ReasoningFilter(starts_inside=True)
    shown = [f.feed(THINK_NO_OPEN[i:i + 4]) for i in range(0, len(THINK_NO_OPEN), 4)]
    assert "".join(shown) + f.flush() == REPLY and not f.restarted
    # ... and one that then replies without thinking is shown whole at the end
    f = ReasoningFilter(starts_inside=True)
    assert f.feed(REPLY) == "" and f.flush() == REPLY


# ---- thinking: the answer, its citations, the condensed and rewritten question -------------------

def test_thinking_is_not_shown_cited_or_searched(server, caplog):
    server.reply = THINK
    answerer, searcher = make(server)
    a = answerer.answer("how do I use ray?")
    assert a.mode == "llm" and a.text == "Install the plugin and use `RayJobConfig` [1]."
    assert len(a.citations) == 1  # only the answer's [2]; the thinking's [3] and [1] cite nothing

    text, final = streamed(answerer, "how do I use ray?")
    no_thinking(text)
    assert final.text == a.text and text == final.text and final.citations == a.citations

    # a follow-up: the condense step's thinking is not the question searched, and the earlier
    # answer in the thread (posted before this fix, with its thinking) is read without it
    server.reset()
    server.reply = lambda body: (f"<think>{THOUGHT}</think>\nHow do I configure ray workers?"
                                 if "standalone question" in str(body["messages"][0]["content"]) else THINK)
    history = [Turn("user", "how do I use ray?"), Turn("assistant", THINK)]
    a = answerer.answer("and the workers?", history)
    assert searcher.queries[-1] == "How do I configure ray workers?" == a.standalone_question
    condense, answer = server.requests
    no_thinking(condense.text_of("user"))
    assert REPLY in condense.text_of("user")
    no_thinking(answer.text_of("user").split("Question:")[-1])

    # the rewrite step's search terms are not its thinking either
    server.reset()
    server.reply = lambda body: (f"<think>{THOUGHT}</think>\nRayJobConfig workers replicas"
                                 if "search query" in str(body["messages"][0]["content"]) else REPLY)
    rewriting, searcher = make(server, rewrite_query=True)
    rewriting.answer("how do I use ray?")
    assert searcher.queries == ["how do I use ray?\nRayJobConfig workers replicas"]


def test_a_model_that_opens_its_thinking_in_the_prompt(server, caplog):
    """R1's template: the reply holds only the closing tag. A streamed answer shows its first words
    of thinking, so the final one replaces it; after two such replies in a row nothing of it is shown,
    and a reply with no tag at all ends that (one reply never decides for the process)."""
    server.reply = THINK_NO_OPEN
    server.stream_tokens, server.token_delay = 30, 0.0
    answerer, _ = make(server)
    caplog.set_level(logging.INFO, logger="flytegpt.bot.answering.model")
    for _ in range(2):
        shown, final = streamed(answerer, "how do I use ray?")
        assert final.text == "Install the plugin and use `RayJobConfig` [1]." and not final.text.startswith(shown)
    assert "replies start inside a thinking block" in caplog.text
    shown, final = streamed(answerer, "how do I use ray?")
    no_thinking(shown)
    assert shown == final.text == "Install the plugin and use `RayJobConfig` [1]."
    server.reply = REPLY  # the model (or its template) changed: answers stream again
    streamed(answerer, "how do I use ray?")
    assert "no longer start inside a thinking block" in caplog.text
    shown, final = streamed(answerer, "how do I use ray?")
    assert shown == final.text


def test_a_reply_of_nothing_but_thinking_cut_at_max_tokens_is_not_retried(server, caplog):
    """A reasoning model that spent [answer] max_tokens thinking: the passages, one call, and a
    log line that says what to change (not "empty answer; retrying once")."""
    answerer, _ = make(server, max_tokens=256)
    for stream in (False, True):
        server.reset()
        server.script(Reply(f"<think>\n{THOUGHT} and more", finish="length"))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            a = streamed(answerer, "how do I use ray?")[1] if stream else answerer.answer("how do I use ray?")
        assert len(server.requests) == 1
        assert a.mode == "offline" and a.note == "length" and a.citations
        assert a.text.startswith(prompts.MODEL_LENGTH_EMPTY_NOTE)
        no_thinking(a.text)
        assert "used all max_tokens (256) before answering: raise [answer] max_tokens" in caplog.text
        assert "retrying once" not in caplog.text


# ---- finish reasons ------------------------------------------------------------------------------

CUT = "Use `RayJobConfig` [2]. For example\n\n```python\n@task(task_config=RayJobConfig("


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_at_max_tokens_says_so_with_its_code_closed(server, caplog, stream):
    server.script(Reply(CUT, finish="length"))
    answerer, _ = make(server)
    with caplog.at_level(logging.WARNING):
        a = streamed(answerer, "how do I use ray?")[1] if stream else answerer.answer("how do I use ray?")
    assert a.mode == "llm" and a.note == "length" and len(a.citations) == 1
    assert a.text == ("Use `RayJobConfig` [1]. For example\n\n```python\n@task(task_config=RayJobConfig(\n```\n\n"
                      + prompts.MODEL_LENGTH_NOTE)
    assert "cut at [answer] max_tokens (1024)" in caplog.text
    assert a.to_dict()["note"] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_a_content_filter_stopped_says_so(server, stream):
    server.script(Reply("Use `RayJobConfig` [2] and", finish="content_filter"))
    answerer, _ = make(server)
    a = streamed(answerer, "how do I use ray?")[1] if stream else answerer.answer("how do I use ray?")
    assert a.text == f"Use `RayJobConfig` [1] and\n\n{prompts.MODEL_FILTERED_NOTE}" and a.note == "content_filter"
    server.reset()
    server.script(Reply("", finish="content_filter"))
    a = streamed(answerer, "how do I use ray?")[1] if stream else answerer.answer("how do I use ray?")
    assert a.text.startswith(prompts.MODEL_FILTERED_EMPTY_NOTE) and a.citations and len(server.requests) == 1


def test_a_stream_that_ends_without_a_finish_reason_was_cut(server):
    server.script(Reply("Use `RayJobConfig` [2]. Then re-register the workflow and", finish=None))
    answerer, _ = make(server)
    shown, a = streamed(answerer, "how do I use ray?")
    assert a.text == f"Use `RayJobConfig` [1]. Then re-register the workflow and\n\n{prompts.MODEL_STOPPED_NOTE}"
    assert a.note == "stopped" and a.text.startswith(shown) and len(server.requests) == 1


def test_close_fence():
    assert close_fence("a\n```py\nx") == "a\n```py\nx\n```"
    assert close_fence("a\n~~~~\nx\n```\n") == "a\n~~~~\nx\n```\n~~~~"
    assert close_fence("a\n```\nx\n```\nb") == "a\n```\nx\n```\nb"


# ---- a reply that is not JSON --------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_an_html_page_with_status_200_is_a_model_failure_with_sources(server, stream):
    server.script(Page(), Page(), Page())
    answerer, _ = make(server, max_retries=0)
    with pytest.raises(ModelUnavailable) as e:
        streamed(answerer, "how do I use ray?") if stream else answerer.answer("how do I use ray?")
    assert e.value.related and "<html" not in str(e.value).lower()


def test_cli_ask_against_a_sign_in_page_prints_the_sources_not_a_traceback(server, built_store):
    from click.testing import CliRunner

    from flytegpt.bot.cli import main
    from flytegpt.ingest.config import sample_config_path

    server.script(*[Page()] * 5)
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test", "COLUMNS": "300"}
    result = CliRunner().invoke(main, ["ask", CACHE_Q, "--config", str(sample_config_path()),
                                       "--store", str(built_store)], env=env)
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
    assert "[1]" in result.output and "Sign in" not in result.output


# ---- the answer-length cap reaches servers that read only max_tokens -----------------------------

def test_the_cap_goes_out_as_max_tokens_to_other_servers_and_max_completion_tokens_to_openai(server):
    answerer, _ = make(server, max_tokens=300)
    server.reply = REPLY
    answerer.answer("how do I use ray?")
    streamed(answerer, "how do I use ray?")
    for r in server.requests:  # Ollama's /v1 reads only max_tokens
        assert r.body["max_tokens"] == 300 and "max_completion_tokens" not in r.body
    server.reset()
    server.reply = REPLY
    answerer, _ = make(server, max_tokens=300, max_tokens_field="max_completion_tokens")  # a proxy to OpenAI
    answerer.answer("how do I use ray?")
    assert server.requests[0].body["max_completion_tokens"] == 300 and "max_tokens" not in server.requests[0].body
    assert [max_tokens_field("auto", url) for url in (None, "https://api.openai.com/v1",
                                                      "https://corp.openai.azure.com/openai/v1/",
                                                      "http://ollama:11434/v1", "http://127.0.0.1:8000/v1")] == \
        ["max_completion_tokens"] * 3 + ["max_tokens"] * 2
    assert max_tokens_field("max_tokens", None) == "max_tokens"


# ---- Slack: what the asker sees, and what the question log keeps ---------------------------------

@pytest.fixture
def make_bot(sample, tmp_path):
    with harness_factory(sample, tmp_path / "feedback.sqlite3", bot_defaults={"streaming": True}) as make:
        yield make


def finished(h, thread_ts, n=1):
    return h.emu.wait_for(lambda: (m := h.answers(thread_ts=thread_ts)) and len(m) >= n
                          and not any(x.get("streaming") for x in m) and m, 30.0)


def test_slack_streams_the_answer_without_the_thinking_and_logs_it_clean(make_bot):
    h = make_bot()

    def model(body: dict) -> str:
        reply = llm_reply(body)
        return f"<think>\n{THOUGHT}\n</think>\n\n{reply}"

    h.llm.reply = model
    h.llm.stream_tokens, h.llm.token_delay = 40, 0.01
    d = h.emu.mention(CACHE_Q)
    [msg] = finished(h, d.ts)
    assert msg["text"] == ANSWER
    for call in h.emu.stream_calls():
        no_thinking(json.dumps(call.args))
    sources = msg["blocks"][0]["elements"][0]["text"]
    assert sources.startswith("*Sources*\n[1] ") and "[2]" not in sources
    # the follow-up: condensed from the thread without thinking, searched and answered clean
    h.emu.message("and for map tasks?", thread_ts=d.ts)
    answers = finished(h, d.ts, n=2)
    assert answers[1]["text"] == ANSWER
    condense = [r for r in h.llm.requests if "standalone question" in str(r.messages[0]["content"])]
    no_thinking(condense[-1].text_of("user"))
    assert STANDALONE in h.llm.requests[-1].text_of("user")
    h.idle()
    rows = sqlite3.connect(h.config.bot.feedback_db).execute(
        "SELECT answer, standalone_question FROM answers").fetchall()
    assert len(rows) == 2 and rows[1][1] == STANDALONE
    for answer, standalone in rows:
        no_thinking(answer + (standalone or ""))


def test_slack_answer_cut_at_the_length_limit_carries_the_note(make_bot):
    h = make_bot()
    h.llm.script(Slow("Bump `cache_version` [1]. For example\n\n```python\n@task(cache=True", tokens=6, delay=0.01,
                      finish="length"))
    d = h.emu.mention(CACHE_Q)
    [msg] = finished(h, d.ts)
    assert msg["text"].endswith("```\n\n" + prompts.MODEL_LENGTH_NOTE) and msg["text"].count("```") == 2
    assert msg["blocks"][0]["elements"][0]["text"].startswith("*Sources*\n[1] ")


def test_slack_asker_gets_the_sources_when_the_model_url_serves_a_sign_in_page(make_bot):
    h = make_bot(answer={"max_retries": 0})
    h.llm.script(Page(), Page())
    d = h.emu.mention(CACHE_Q)
    [msg] = finished(h, d.ts)
    assert "went wrong" not in msg["text"] and "[1]" in json.dumps(msg)
    assert "Sign in" not in json.dumps(msg)
