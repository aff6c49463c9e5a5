"""Model errors that asking again cannot fix.

A wrong model name, key or base URL, a used-up quota, a prompt over the model's context window, a
provider's prompt filter: each reached the asker as "The language model is not available right now
(HTTP 4xx). Please try again in a few minutes." Now the asker reads that it is a setup problem the
bot's maintainers need to fix (still with the best sources, never the provider's text), and the log
line names the cause. A 429 whose Retry-After is past `[answer] retry_max_wait_s` is not retried at
the cap; `insufficient_quota` is not retried; a second timeout is not retried.

The provider's replies are the real ones' bodies (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM, Azure),
served over HTTP on 127.0.0.1 to the real ChatOpenAI."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Fail, Hang

from flytegpt.bot import messages
from flytegpt.bot.answering import Answerer, ModelUnavailable
from flytegpt.bot.answering.model_calls import Deadline, Retries
from flytegpt.ingest.config import AnswerConfig, Config, ProjectConfig, Settings

KEY = "sk-test-secret-value-123"
MODEL = "qwen3:8b"
TRY_AGAIN = "Please try again in a few minutes"
SETUP = "This is a setup problem the bot's maintainers need to fix"


class ProviderErrors:
    """An endpoint that answers every chat completion with one scripted reply: (status, body, headers,
    content type). Each request's body is recorded."""

    def __init__(self) -> None:
        self.reply: tuple[int, Any, dict[str, str], str] = (500, {}, {}, "application/json")
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(json.loads(raw or b"{}"))
                status, body, headers, ctype = outer.reply
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def provider():
    p = ProviderErrors()
    yield p
    p.close()


def make(base_url: str, **answer: Any) -> Answerer:
    opts = dict(timeout_s=2.0, max_retries=2, retry_backoff_s=0.05, retry_max_wait_s=3.0, min_score=0.2)
    opts.update(answer)
    config = Config(answer=AnswerConfig(**opts), project=ProjectConfig())
    settings = Settings(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=base_url, FLYTEGPT_CHAT_MODEL=MODEL)
    searcher = WordSearcher(list(ALL))
    return Answerer(config, settings, lambda: searcher)


def ask(answerer: Answerer, stream: bool) -> None:
    if stream:
        list(answerer.stream("how do I use ray workers?"))
    else:
        answerer.answer("how do I use ray workers?")


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("flytegpt") and r.levelno >= logging.WARNING]


JSON = "application/json"
# (scenario, status, body, what the asker's message says, what the log line says)
PERMANENT = [
    ("context, OpenAI", 400, {"error": {
        "message": "This model's maximum context length is 4096 tokens. However, your messages resulted in 5210 tokens.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
     "The question and its sources are longer than the language model can read at once",
     "prompt too long for the model's context window: lower [answer] token_budget or max_question_chars"),
    ("context, vLLM", 400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, "
                            "you requested 5100 tokens (4076 in the messages, 1024 in the completion).",
                            "type": "BadRequestError", "param": None, "code": 400},
     "The question and its sources are longer than the language model can read at once",
     "prompt too long for the model's context window: lower [answer] token_budget or max_question_chars"),
    ("context, llama.cpp", 400, {"error": {"code": 400, "message": "the request exceeds the available context size, "
                                           "try increasing it", "type": "exceed_context_size_error",
                                           "n_prompt_tokens": 5210, "n_ctx": 4096}},
     "The question and its sources are longer than the language model can read at once",
     "prompt too long for the model's context window: lower [answer] token_budget or max_question_chars"),
    ("model, OpenAI", 404, {"error": {"message": f"The model `{MODEL}` does not exist or you do not have access to it.",
                                      "type": "invalid_request_error", "param": None, "code": "model_not_found"}},
     "model not found, HTTP 404", f"model '{MODEL}' not found at {{base}} (HTTP 404)"),
    ("model, Ollama", 404, {"error": {"message": f'model "{MODEL}" not found, try pulling it first',
                                      "type": "api_error", "param": None, "code": None}},
     "model not found, HTTP 404", f"model '{MODEL}' not found at {{base}} (HTTP 404)"),
    ("model, LiteLLM", 400, {"error": {"message": "{'error': '/chat/completions: Invalid model name passed in "
                                                  f"model={MODEL}. Call `/v1/models` to view available models.'}}",
                                       "type": "None", "param": "None", "code": "400"}},
     "model not found, HTTP 400", f"model '{MODEL}' not found at {{base}} (HTTP 400)"),
    ("key, OpenAI", 401, {"error": {"message": "Incorrect API key provided: sk-te****. You can find your API key at "
                                               "https://platform.openai.com/account/api-keys.",
                                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
     "API key rejected, HTTP 401", "API key rejected at {base} (HTTP 401): check OPENAI_API_KEY"),
    ("key, forbidden", 403, {"error": {"message": "Access denied", "type": "permission_error"}},
     "access denied, HTTP 403", "access denied at {base} (HTTP 403): check OPENAI_API_KEY"),
    ("max_tokens field", 400, {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                                         "model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error"}},
     "request refused, HTTP 400", "set [answer] max_tokens_field"),
    ("quota, OpenAI", 429, {"error": {"message": "You exceeded your current quota, please check your plan and billing "
                                                 "details.", "type": "insufficient_quota", "code": "insufficient_quota"}},
     "quota used up, HTTP 429", "quota exhausted at {base} (HTTP 429)"),
    ("prompt filter, Azure", 400, {"error": {"message": "The response was filtered due to the prompt triggering Azure "
                                                        "OpenAI's content management policy.",
                                             "type": None, "param": "prompt", "code": "content_filter", "status": 400}},
     "content filter refused this question", "the provider's content filter refused the prompt (HTTP 400"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("scenario, status, body, told, logged", PERMANENT, ids=[p[0] for p in PERMANENT])
def test_an_error_asking_again_cannot_fix_is_told_as_a_setup_problem(provider, caplog, scenario, status, body, told,
                                                                     logged, stream):
    provider.reply = (status, body, {}, JSON)
    provider.requests.clear()
    answerer = make(provider.base_url)
    with caplog.at_level(logging.INFO, logger="flytegpt"), pytest.raises(ModelUnavailable) as err:
        ask(answerer, stream)
    said = str(err.value)
    # not retried; a prompt too long is tried once more with half the sources' budget only when that makes
    # it shorter: these sources are short and fit half the budget too, so no second, identical call
    assert len(provider.requests) == 1
    # the asker: what kind of failure, that the maintainers must fix it; no "try again", no provider text
    assert told in said and TRY_AGAIN not in said
    if "filter" not in scenario:
        assert SETUP in said
    provider_text = body.get("error", body)["message"]
    assert provider_text not in said and KEY not in said and "sk-te" not in said and "127.0.0.1" not in said
    assert err.value.related  # still the best sources
    # the operator: one line that names the cause plainly
    [line] = error_lines(caplog)
    assert "chat model unavailable after 1 attempt: " in line
    assert logged.format(base=provider.base_url) in line, line
    assert KEY not in line


def test_the_asker_in_slack_reads_the_setup_problem_with_the_sources(make_harness):
    """The reply as Slack shows it: the apology says the maintainers must fix it, the sources follow."""
    h = make_harness()
    h.llm.script(Fail(404, message='model "stand-in" not found, try pulling it first'))
    d = h.emu.mention("I changed my task's code but the cached result is still returned. How do I invalidate it?")
    [reply] = h.wait_answers(thread_ts=d.ts)
    text = reply["text"]
    assert text.startswith("Sorry, I couldn't write an answer: The language model cannot answer with its current "
                           "setup (model not found, HTTP 404).")
    assert SETUP in text and TRY_AGAIN not in text and "pulling" not in text
    sources = [b["elements"][0]["text"] for b in reply["blocks"] if b["type"] == "context"]
    assert sources and sources[0].startswith(f"*{messages.BEST_SOURCES_HEADING}*") and "<http" in sources[0]
    assert len(h.llm.requests) == 1


def test_a_page_that_is_not_the_api_is_named_and_not_retried(provider, caplog):
    """A 200 sign-in page from a proxy in front of the model. The real
    ChatOpenAI raises a ValueError for it (chain.py hands that to Retries.failed)."""
    from langchain_openai import ChatOpenAI

    page = "<!DOCTYPE html><html><head><title>Sign in - Corp SSO</title></head><body><form>Sign in</form></body></html>"
    provider.reply = (200, page, {}, "text/html")
    chat = ChatOpenAI(model=MODEL, base_url=provider.base_url, api_key=KEY, max_retries=0, timeout=2)
    caught = []
    for call in (lambda: chat.invoke("hi"), lambda: "".join(c.text for c in chat.stream("hi"))):
        with pytest.raises(Exception) as e:
            call()
        caught.append(e.value)
    cfg = AnswerConfig(max_retries=2, retry_backoff_s=0.05)
    for e in caught:
        retries = Retries(cfg, Deadline(10))
        assert retries.failed(e) is False  # not retried
        with caplog.at_level(logging.INFO, logger="flytegpt"):
            caplog.clear()
            err = retries.unavailable([])
        said = str(err)
        assert "did not answer like an OpenAI-compatible API" in said and SETUP in said
        assert TRY_AGAIN not in said and "Sign in" not in said
        [line] = error_lines(caplog)
        assert "the endpoint did not answer like an OpenAI-compatible API (an HTML page from a proxy or login?)" in line


def test_a_sign_in_page_through_the_answerer_gives_the_sources_and_one_line(provider, caplog):
    """End to end (needs chain.py to pass the ValueError to Retries.failed)."""
    provider.reply = (200, "<!DOCTYPE html><html><body>Sign in</body></html>", {}, "text/html")
    provider.requests.clear()
    for stream in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flytegpt"), pytest.raises(ModelUnavailable) as err:
            ask(make(provider.base_url), stream)
        assert "did not answer like an OpenAI-compatible API" in str(err.value) and err.value.related
        assert any("an HTML page from a proxy or login?" in line for line in error_lines(caplog))
    assert len(provider.requests) == 2  # one call a question


# ---- retries that cannot succeed ---------------------------------------------------------------------


def test_a_rate_limit_longer_than_the_wait_cap_gives_up_at_once(provider, caplog):
    provider.reply = (429, {"error": {"message": "Rate limit reached for model on tokens per min (TPM): Limit 30000. "
                                                 "Please try again in 40s.", "type": "rate_limit_error",
                                      "code": "rate_limit_exceeded"}}, {"Retry-After": "40"}, JSON)
    provider.requests.clear()
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="flytegpt"), pytest.raises(ModelUnavailable) as err:
        ask(make(provider.base_url, retry_max_wait_s=5.0), stream=True)
    assert time.monotonic() - start < 2 and len(provider.requests) == 1
    assert str(err.value) == messages.MODEL_UNAVAILABLE.format(reason="rate limited for 40 s")
    [line] = error_lines(caplog)
    assert "chat model unavailable after 1 attempt: rate limited for 40 s" in line


def test_a_rate_limit_longer_than_the_deadline_leaves_gives_up_at_once(server):
    server.script(Fail(429, retry_after=3, message="Rate limit reached"))
    answerer = make(server.base_url, retry_max_wait_s=5.0, deadline_s=2.0)
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        answerer.answer("how do I use ray workers?")
    assert time.monotonic() - start < 1.5 and len(server.requests) == 1
    assert "rate limited for 3 s" in str(err.value) and err.value.related


def test_a_short_rate_limit_is_still_waited_for(server):
    server.script(Fail(429, retry_after=0.2), Fail(429, retry_after=0.2))
    server.reply = "Install the plugin [1]."
    a = make(server.base_url, retry_max_wait_s=1.0).answer("how do I use ray workers?")
    assert a.mode == "llm" and a.text == "Install the plugin [1]." and len(server.requests) == 3


def test_a_model_slower_than_the_timeout_is_asked_twice_not_three_times(server, caplog):
    """A single local GPU server may not cancel an abandoned request: each retry queued behind the last."""
    server.script(Hang(10), Hang(10), Hang(10))
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="flytegpt"), pytest.raises(ModelUnavailable) as err:
        list(make(server.base_url, timeout_s=0.4, max_retries=2, deadline_s=10).stream("how do I use ray workers?"))
    assert len(server.requests) == 2 and time.monotonic() - start < 3
    assert str(err.value) == messages.MODEL_UNAVAILABLE.format(reason="timed out") and err.value.related
    [line] = error_lines(caplog)
    assert "after 2 attempts: timed out (before: timed out)" in line


def test_a_passing_failure_still_says_try_again(server):
    server.script(Fail(503), Fail(503), Fail(503))
    with pytest.raises(ModelUnavailable) as err:
        make(server.base_url).answer("how do I use ray workers?")
    assert str(err.value) == messages.MODEL_UNAVAILABLE.format(reason="HTTP 503") and len(server.requests) == 3
    server.script(Fail(500))
    server.reply = "Install it [1]."
    assert make(server.base_url).answer("how do I use ray workers?").text == "Install it [1]."
