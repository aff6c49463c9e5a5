"""A 429 that says how long to wait only in its text ("Please try again in 40s", OpenAI's rate-limit
message) and sends no Retry-After header (a proxy in front of the model may drop it) was retried after
the short default backoff and refused again. The wait in the text now counts as a Retry-After: past
`[answer] retry_max_wait_s` or past what `deadline_s` leaves, the asker is told at once that the model
is "rate limited for 40 s"; a short one is waited for, not the backoff.

Driven through the real Answerer and ChatOpenAI against the OpenAI stand-in on 127.0.0.1."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Fail

from flytegpt.bot import messages
from flytegpt.bot.answering import Answerer, ModelUnavailable
from flytegpt.ingest.config import AnswerConfig, Config, ProjectConfig, Settings

QUESTION = "how do I use ray workers?"


def openai_429(wait: str) -> Fail:
    """OpenAI's rate-limit reply, without its Retry-After header."""
    return Fail(429, message=f"Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
                             f"Limit 30000, Used 29800, Requested 900. Please try again in {wait}. Visit "
                             "https://platform.openai.com/account/rate-limits to learn more.",
                type="tokens", code="rate_limit_exceeded")


def make(server, **answer: Any) -> Answerer:
    opts = dict(timeout_s=2.0, max_retries=2, retry_backoff_s=0.05, retry_max_wait_s=5.0, min_score=0.2)
    opts.update(answer)
    config = Config(answer=AnswerConfig(**opts), project=ProjectConfig())
    settings = Settings(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=server.base_url, FLYTEGPT_CHAT_MODEL="stand-in-model")
    searcher = WordSearcher(list(ALL))
    return Answerer(config, settings, lambda: searcher)


def ask(answerer: Answerer, stream: bool):
    if stream:
        return list(answerer.stream(QUESTION))[-1]
    return answerer.answer(QUESTION)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("flytegpt") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("wait, said", [("40s", "40"), ("1m30s", "90"), ("6.5s", "7")])
def test_a_wait_in_the_text_past_the_cap_gives_up_at_once(server, caplog, stream, wait, said):
    server.script(openai_429(wait), openai_429(wait), openai_429(wait))
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="flytegpt"), pytest.raises(ModelUnavailable) as err:
        ask(make(server), stream)
    # no retry that fails again, and no wait at the 5 s cap
    assert len(server.requests) == 1 and time.monotonic() - start < 4
    assert str(err.value) == messages.MODEL_UNAVAILABLE.format(reason=f"rate limited for {said} s")
    assert err.value.related  # the best sources, as with any failure
    [line] = error_lines(caplog)
    assert f"chat model unavailable after 1 attempt: rate limited for {said} s" in line


def test_a_wait_in_the_text_past_what_the_deadline_leaves_gives_up_at_once(server):
    server.script(openai_429("3s"))
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        make(server, retry_max_wait_s=5.0, deadline_s=2.0).answer(QUESTION)
    assert time.monotonic() - start < 1.5 and len(server.requests) == 1
    assert "rate limited for 3 s" in str(err.value) and err.value.related


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_short_wait_in_the_text_is_waited_for_instead_of_the_backoff(server, stream):
    """The default backoff here is 3 s; the server asks for 0.3 s, then 20 ms, and then answers."""
    server.script(openai_429("300ms"), openai_429("20ms"))
    server.reply = "Install the plugin [1]."
    start = time.monotonic()
    a = ask(make(server, retry_backoff_s=3.0), stream)
    took = time.monotonic() - start
    assert a.mode == "llm" and a.text == "Install the plugin [1]." and len(server.requests) == 3
    first, second, _ = (r.at for r in server.requests)
    assert second - first >= 0.3  # the wait it asked for ...
    assert took < 2.5  # ... not the 3 s (and then 6 s) backoff


def test_a_wait_of_a_second_and_a_half_is_read_as_such(server):
    server.script(openai_429("1.5s"))
    server.reply = "Install the plugin [1]."
    a = make(server, retry_backoff_s=0.05).answer(QUESTION)
    assert a.text == "Install the plugin [1]." and len(server.requests) == 2
    assert server.requests[1].at - server.requests[0].at >= 1.5


def test_the_retry_after_header_wins_over_the_text(server):
    """The header is the protocol's word; the text is read only when there is none."""
    step = openai_429("40s")
    step.retry_after = 0.2
    server.script(step)
    server.reply = "Install the plugin [1]."
    a = make(server).answer(QUESTION)
    assert a.text == "Install the plugin [1]." and len(server.requests) == 2


def test_a_429_that_names_no_wait_keeps_the_backoff(server):
    server.script(Fail(429, message="Too many requests. Please try again later."))
    server.reply = "Install the plugin [1]."
    a = make(server).answer(QUESTION)
    assert a.text == "Install the plugin [1]." and len(server.requests) == 2


def test_other_providers_ways_of_saying_it(server):
    """Azure's "retry after 6 seconds" and a 503 that asks for minutes: told, not retried at the cap."""
    server.script(Fail(429, message="Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                                    "2024-02-01 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
                                    "Please retry after 6 seconds."))
    with pytest.raises(ModelUnavailable) as err:
        make(server).answer(QUESTION)
    assert "rate limited for 6 s" in str(err.value) and len(server.requests) == 1
    server.reset()
    server.script(Fail(503, message="The server is overloaded. Please try again in 2 minutes."))
    with pytest.raises(ModelUnavailable) as err:
        make(server).answer(QUESTION)
    assert "HTTP 503, busy for 120 s" in str(err.value) and len(server.requests) == 1


def test_the_asker_in_slack_is_told_the_wait_with_the_sources(make_harness):
    h = make_harness()
    h.llm.script(openai_429("40s"), openai_429("40s"), openai_429("40s"))
    d = h.emu.mention("I changed my task's code but the cached result is still returned. How do I invalidate it?")
    [reply] = h.wait_answers(thread_ts=d.ts)
    assert "(rate limited for 40 s)" in reply["text"] and "Rate limit reached" not in reply["text"]
    sources = [b["elements"][0]["text"] for b in reply["blocks"] if b["type"] == "context"]
    assert sources and sources[0].startswith(f"*{messages.BEST_SOURCES_HEADING}*") and "<http" in sources[0]
    assert len(h.llm.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("header", [float("inf"), 1e300, 10_000_000.0])
def test_a_wait_no_one_could_keep_is_told_as_a_day_with_the_sources(server, stream, header):
    """A Retry-After of "inf" crashed the answer (the asker read "something went wrong" without the
    sources), and one of 1e300 was printed to the asker with its 301 digits."""
    step = openai_429("40s")
    step.retry_after = header
    server.script(step)
    with pytest.raises(ModelUnavailable) as err:
        ask(make(server), stream)
    assert str(err.value) == messages.MODEL_UNAVAILABLE.format(reason="rate limited for 86400 s")
    assert err.value.related and len(server.requests) == 1
