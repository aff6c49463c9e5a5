"""The chat model's setup, checked where an operator sees it.

A wrong FLYTEGPT_CHAT_MODEL, key or base URL showed only when the first users asked, and the
"FlyteGPT is running" line said `llm=True`. Now the line names the model and the endpoint's host, and
`flytegpt serve` asks the endpoint once, in the background (its model list, else a 1-token
completion), logging one warning that names the problem; the start goes on whatever it finds.

Small context windows: `[answer] context_window` bounds the sources so that the prompt plus
max_tokens fits; a question that fills the window alone gets the passages, with no model call. Without
the setting, a prompt the model refuses as too long is tried once more with half the sources.

Azure OpenAI's classic deployment URL (and any base URL with a query string) is a configuration
error at start that says what to write instead: Azure's v1 endpoint, which the plain client calls
with the key as a Bearer token.

The model is the OpenAI-compatible stand-in on 127.0.0.1 (tests/support/openai_server.py) with the
real ChatOpenAI and openai client; the Slack side is the repo's emulator with the real Bolt app."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest
from support.answering_support import ALL, WordSearcher, chunk
from support.openai_server import Fail, OpenAIStandIn, Page
from support.slack_emulator import SlackEmulator
from support.slack_harness import ANSWER, CACHE_Q

from flytegpt.bot.answering import Answerer, ModelUnavailable
from flytegpt.bot.answering import prompts
from flytegpt.bot.answering.budget import token_counter
from flytegpt.bot.serve import BotServer
from flytegpt.ingest.config import (AnswerConfig, Config, ConfigError, ProjectConfig, Settings, load_config,
                                    parse_config, sample_config_path)

pytestmark = pytest.mark.timeout(120)

KEY = "sk-setup-secret-value-4242"


def make(base_url: str | None, model: str = "gpt-4o-mini", key: str | None = KEY, chunks: list | None = None,
         **answer: Any) -> Answerer:
    # the windows and token counts below are sized for sources of 2,000 tokens (the default is larger)
    opts: dict[str, Any] = dict(timeout_s=5.0, max_retries=0, retry_backoff_s=0.01, min_score=0.0, token_budget=2000)
    opts.update(answer)
    config = Config(answer=AnswerConfig(**opts), project=ProjectConfig())
    env: dict[str, Any] = {"FLYTEGPT_CHAT_MODEL": model, "OPENAI_BASE_URL": base_url or ""}
    env["OPENAI_API_KEY"] = key or ""
    searcher = WordSearcher(list(chunks if chunks is not None else ALL))
    return Answerer(config, Settings(**env), lambda: searcher)


def lines(caplog, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("flytegpt") and r.levelno >= level]


def check(answerer: Answerer, caplog) -> tuple[bool, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flytegpt"):
        ok = answerer.check_model()
    return ok, lines(caplog)


# ---- the running line --------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url, model, said", [
    (None, "gpt-4o-mini", "gpt-4o-mini at api.openai.com"),
    ("http://ollama:11434/v1", "qwen3:8b", "qwen3:8b at ollama:11434"),
    ("https://proxy.example.org/llm/v1", "llama3.1:8b", "llama3.1:8b at proxy.example.org"),
    ("http://[::1]:8000/v1", "r1", "r1 at [::1]:8000"),
])
def test_the_model_and_its_host_are_named_never_the_key_or_the_path(base_url, model, said):
    answerer = make(base_url, model=model)
    assert answerer.model_label() == said
    assert KEY not in said


def test_without_a_model_the_label_says_passages():
    assert make(None, key=None).model_label() == "none (quoting passages)"


# ---- the check, against each kind of server ------------------------------------------------------------


def test_a_listed_model_is_checked_with_one_free_request(server, caplog):
    """OpenAI, vLLM, LiteLLM, Ollama: GET /models lists the model; no completion is asked for."""
    server.models = ["text-embedding-3-small", "gpt-4o-mini"]
    ok, said = check(make(server.base_url), caplog)
    assert ok and said == []
    assert len(server.listings) == 1 and server.requests == []
    assert server.listings[0].headers["authorization"] == f"Bearer {KEY}"
    assert any(f"chat model check at start: 'gpt-4o-mini' is served at {server.base_url}" in line
               for line in lines(caplog, logging.INFO))


def test_ollama_lists_latest_for_a_model_asked_without_a_tag(server, caplog):
    server.models = ["qwen3:latest", "llama3.1:8b"]
    ok, said = check(make(server.base_url, model="qwen3"), caplog)
    assert ok and said == [] and server.requests == []


def test_a_model_the_list_lacks_is_asked_once_for_one_token(server, caplog):
    """llama.cpp lists one name and answers to any; Azure's v1 lists base models, not deployments: the
    model missing from the list is no finding until a 1-token completion fails."""
    server.models = ["some-other-name"]
    ok, said = check(make(server.base_url, model="my-deployment"), caplog)
    assert ok and said == []
    [probe] = server.requests
    assert probe.body["model"] == "my-deployment" and probe.body["max_tokens"] == 1
    assert "temperature" not in probe.body


def test_a_server_without_a_model_list_is_asked_for_one_token(server, caplog):
    server.models_step = Fail(404, message="no route /v1/models")
    ok, said = check(make(server.base_url, model="m", max_tokens_field="max_completion_tokens"), caplog)
    assert ok and said == []
    [probe] = server.requests
    assert probe.body["max_completion_tokens"] == 1 and "max_tokens" not in probe.body


def test_a_model_ollama_does_not_have_is_one_warning_naming_it(server, caplog):
    server.models = ["llama3.1:8b"]
    server.script(Fail(404, type="api_error", message='model "qwen3:8b" not found, try pulling it first'))
    ok, said = check(make(server.base_url, model="qwen3:8b"), caplog)
    assert not ok and len(server.requests) == 1
    [line] = said
    assert line.startswith(f"chat model check at start: model 'qwen3:8b' not found at {server.base_url} (HTTP 404): "
                           "check FLYTEGPT_CHAT_MODEL and OPENAI_BASE_URL; until this is fixed, askers get the best "
                           "passages and a note that the model is misconfigured")
    assert line.endswith('| model "qwen3:8b" not found, try pulling it first')


def test_a_rejected_key_is_one_warning_and_no_completion(server, caplog):
    server.models_step = Fail(401, type="invalid_request_error", code="invalid_api_key",
                              message=f"Incorrect API key provided: {KEY}.")
    ok, said = check(make(server.base_url), caplog)
    assert not ok and server.requests == [] and len(server.listings) == 1
    [line] = said
    assert f"chat model check at start: API key rejected at {server.base_url} (HTTP 401): check OPENAI_API_KEY" in line


def test_an_endpoint_that_is_no_openai_api_is_one_warning(server, caplog):
    """A sign-in page from a proxy in front of the model, for the list and the completion alike."""
    server.models_step = Page()
    server.script(Page())
    ok, said = check(make(server.base_url, model="m"), caplog)
    assert not ok and len(server.requests) == 1
    [line] = said
    assert line == ("chat model check at start: the endpoint did not answer like an OpenAI-compatible API (an HTML "
                    f"page from a proxy or login?): check OPENAI_BASE_URL (model 'm' at {server.base_url}); until "
                    "this is fixed, askers get the best passages and a note that the model is misconfigured")
    assert "Sign in" not in line


def test_an_endpoint_nobody_listens_on_is_one_warning(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    base = f"http://127.0.0.1:{port}/v1"
    ok, said = check(make(base, model="m"), caplog)
    assert not ok
    [line] = said
    assert line == (f"chat model check at start: connection failed (model 'm' at {base}); while it lasts, askers get "
                    "the best passages instead of answers")


def test_without_a_model_nothing_is_checked(server, caplog):
    ok, said = check(make(None, key=None), caplog)
    assert not ok and said == [] and server.listings == [] and server.requests == []


# ---- `flytegpt serve` runs the check beside its start ----------------------------------------------------


def _serve_config(store, tmp_path, **bot: Any) -> Config:
    base = load_config(sample_config_path()).with_store(str(store))
    return base.model_copy(update={
        "bot": base.bot.model_copy(update={"feedback_db": str(tmp_path / "fb.sqlite3"), "streaming": False, **bot}),
        "answer": base.answer.model_copy(update={"max_retries": 0, "timeout_s": 10.0})})


def _running(caplog) -> logging.LogRecord:
    [record] = [r for r in caplog.records if r.getMessage() == "FlyteGPT is running"]
    return record


def test_serve_names_the_model_and_warns_once_without_holding_up_the_start(built_store, embedder, tmp_path, caplog):
    """The model name is wrong: the running line names it, one warning says so, and the bot still
    connects, loads its index and answers (with the passages and the setup note)."""
    config = _serve_config(built_store, tmp_path)
    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        llm.models = ["llama3.1:8b"]
        llm.script(Fail(404, type="api_error", message='model "qwen3:8b" not found, try pulling it first',
                        delay=3.0))  # the check's completion: answered after the start is over
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                            SLACK_API_URL=emu.api_url, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=KEY,
                            FLYTEGPT_CHAT_MODEL="qwen3:8b")
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
        with caplog.at_level(logging.INFO):
            server.start()
            try:
                assert server.model_check.is_alive()  # start() returned without waiting for it
                host = llm.base_url.split("//")[1].split("/")[0]
                assert _running(caplog).llm == f"qwen3:8b at {host}"
                emu.wait_connected()
                server.model_check.join(20)
                assert not server.model_check.is_alive()
                warnings = [m for m in lines(caplog) if "chat model check" in m]
                assert warnings == [f"chat model check at start: model 'qwen3:8b' not found at {llm.base_url} "
                                    "(HTTP 404): check FLYTEGPT_CHAT_MODEL and OPENAI_BASE_URL; until this is fixed, "
                                    "askers get the best passages and a note that the model is misconfigured | "
                                    'model "qwen3:8b" not found, try pulling it first']
                assert len(llm.listings) == 1 and len(llm.requests) == 1
                # the bot runs: the index loads and a question gets its reply
                emu.wait_for(server.ready, timeout=30)
                llm.script(Fail(404, type="api_error", message='model "qwen3:8b" not found, try pulling it first'))
                d = emu.mention(CACHE_Q)
                [reply] = emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=30)
                assert "setup problem" in reply["text"]
            finally:
                server.stop()
        assert all(KEY not in r.getMessage() for r in caplog.records)
        assert emu.violations == []


def test_serve_with_a_served_model_checks_with_the_list_alone(built_store, embedder, tmp_path, caplog):
    """The stand-in lists the default model: the check costs no completion, and the first answer is the
    first chat request the model sees."""
    config = _serve_config(built_store, tmp_path)
    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        llm.reply = ANSWER
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                            SLACK_API_URL=emu.api_url, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=KEY,
                            FLYTEGPT_CHAT_MODEL="gpt-4o-mini")
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
        with caplog.at_level(logging.INFO):
            server.start()
            try:
                emu.wait_connected()
                server.model_check.join(20)
                emu.wait_for(server.ready, timeout=30)
                d = emu.mention(CACHE_Q)
                [reply] = emu.wait_for(lambda: emu.bot_messages(thread_ts=d.ts), timeout=30)
                assert "cache_version" in reply["text"]
            finally:
                server.stop()
        assert len(llm.listings) == 1 and len(llm.requests) == 1
        assert [m for m in lines(caplog) if "chat model check" in m] == []


@pytest.mark.parametrize("with_model", [True, False], ids=["check_model-false", "no-model"])
def test_serve_skips_the_check_when_told_or_without_a_model(built_store, embedder, tmp_path, caplog, with_model):
    config = _serve_config(built_store, tmp_path, check_model=not with_model)
    with SlackEmulator() as emu, OpenAIStandIn() as llm:
        env = dict(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=KEY) if with_model else {}
        settings = Settings(SLACK_BOT_TOKEN="xoxb-test-token-1234", SLACK_APP_TOKEN="xapp-test-token-5678",
                            SLACK_API_URL=emu.api_url, **env)
        server = BotServer(config, settings, port=0, host="127.0.0.1", ping_interval=1.0, embedder=embedder)
        with caplog.at_level(logging.INFO):
            server.start()
            try:
                emu.wait_connected()
                assert server.model_check is None
                if not with_model:
                    assert _running(caplog).llm == "none (quoting passages)"
            finally:
                server.stop()
        assert llm.listings == [] and llm.requests == []


def test_check_model_is_a_bot_setting_that_defaults_on(tmp_path):
    assert parse_config({}, tmp_path).bot.check_model is True
    assert parse_config({"bot": {"check_model": False}}, tmp_path).bot.check_model is False


# ---- [answer] context_window ------------------------------------------------------------------------------

# eight pages about Ray workers, ~1,300 characters each: more than the 2,000 tokens of token_budget together
PAGES = [chunk(f"docs:ray/page{i}.md", "docs", f"Ray workers, part {i}", f"https://docs.example.org/ray/{i}",
               "\n\n".join(f"Ray workers part {i}, paragraph {j}: the worker_node_config of a RayJobConfig sets "
                           f"replicas, min and max replicas and the resources of each worker group; the head "
                           f"node takes ray_start_params and the runtime_env installs packages. ({i}.{j})"
                           for j in range(5)))
         for i in range(8)]
# a long question (~2,500 characters, within max_question_chars): what a pasted config makes of one
LONG_Q = ("How do I configure ray workers for this job? My RayJobConfig is below and the workers never start.\n"
          + "\n".join(f"  worker_group_{n}: replicas={n}, min_replicas=1, max_replicas={n + 4}, "
                      f"requests=cpu:{n},mem:{n}Gi" for n in range(28)))
MID_Q = "\n".join(LONG_Q.splitlines()[:12])  # ~1,000 characters, ~420 tokens


def prompt_tokens(body: dict) -> int:
    count = token_counter().count
    return sum(count(str(m.get("content") or "")) for m in body["messages"])


def window_server(server: OpenAIStandIn, window: int) -> OpenAIStandIn:
    """A model with a `window`-token context whose tokenizer counts as the bot's does (vLLM's 400 past it)."""
    server.context_window = window
    server.count_tokens = token_counter().count
    server.reply = "Set replicas in the worker_node_config [1]."
    return server


def test_context_window_is_off_by_default_and_must_hold_more_than_max_tokens(tmp_path):
    assert AnswerConfig().context_window == 0
    assert parse_config({"answer": {"context_window": 4096}}, tmp_path).answer.context_window == 4096
    with pytest.raises(ConfigError, match=r"answer: context_window \(1536\) leaves less than 1024 tokens for the "
                                          r"prompt after max_tokens \(1024\): write the model's window .* or lower "
                                          r"max_tokens to 512 or less"):
        parse_config({"answer": {"context_window": 1536}}, tmp_path)
    # lowering max_tokens cannot help a window this small: it says so
    with pytest.raises(ConfigError, match=r"context_window \(512\) is too small for a prompt and an answer"):
        parse_config({"answer": {"context_window": 512, "max_tokens": 16}}, tmp_path)


@pytest.mark.parametrize("window, max_tokens", [(1280, 256), (1536, 512), (2048, 1024)])
def test_the_smallest_windows_allowed_still_answer_a_short_question_with_a_source(server, window, max_tokens):
    """Before, the sources' room was split over all ten, each share under a useful excerpt was
    dropped, and below ~370 tokens of room no source was sent: every question got the passages. A
    question of a few lines gets a source too (at a floor of 768 tokens, 36 tokens got none)."""
    window_server(server, window)
    answer = make(server.base_url, chunks=PAGES, context_window=window, max_tokens=max_tokens).answer(
        "how do I configure ray workers? We run a Flyte task with a RayJobConfig and want to choose the number "
        "of worker replicas, their resources and the head node's settings, on a cluster with KubeRay installed.")
    assert answer.mode == "llm", answer.text[:200]
    [request] = server.requests
    assert prompt_tokens(request.body) + max_tokens <= window
    assert "<source n=\"1\"" in request.text_of("user")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_with_the_window_set_a_long_question_on_a_2k_model_is_answered_in_one_call(server, stream):
    window_server(server, 2000)
    answerer = make(server.base_url, chunks=PAGES, context_window=2000, max_tokens=512)
    answer = list(answerer.stream(MID_Q))[-1] if stream else answerer.answer(MID_Q)
    assert answer.mode == "llm" and answer.text == "Set replicas in the worker_node_config [1]."
    [request] = server.requests
    assert prompt_tokens(request.body) + 512 <= 2000
    assert "<source n=\"1\"" in request.text_of("user")  # sources still went, cut to fit


def test_without_the_window_the_same_question_fails_as_too_long_after_one_smaller_try(server, caplog):
    window_server(server, 2000)
    answerer = make(server.base_url, chunks=PAGES, max_tokens=512)
    with caplog.at_level(logging.INFO, logger="flytegpt"), pytest.raises(ModelUnavailable) as err:
        answerer.answer(MID_Q)
    assert str(err.value) == prompts.MODEL_PROMPT_TOO_LONG and err.value.related
    first, second = server.requests
    assert prompt_tokens(second.body) < prompt_tokens(first.body) - 700  # about half the sources' 2,000 tokens
    [line] = lines(caplog)
    assert line.startswith("chat model unavailable after 1 attempt: prompt too long for the model's context window: "
                           "lower [answer] token_budget or max_question_chars (or max_tokens, which the window also "
                           "holds), or set [answer] context_window to the model's window (HTTP 400)")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_prompt_refused_as_too_long_is_answered_with_half_the_sources(server, caplog, stream):
    """No window set: the first call is refused (vLLM's 400), the second, with about half the sources'
    budget, fits; the operator is told which setting would spare the refused call."""
    window_server(server, 3500)
    answerer = make(server.base_url, chunks=PAGES, max_tokens=1024)
    with caplog.at_level(logging.INFO, logger="flytegpt"):
        answer = list(answerer.stream(LONG_Q))[-1] if stream else answerer.answer(LONG_Q)
    assert answer.mode == "llm" and answer.text == "Set replicas in the worker_node_config [1]."
    first, second = server.requests
    assert prompt_tokens(first.body) + 1024 > 3500 >= prompt_tokens(second.body) + 1024
    assert lines(caplog) == ["answered with half the sources' tokens (1000) after the prompt was too long for the "
                             "chat model's context window: set [answer] context_window to the model's window (or "
                             "lower token_budget or max_tokens)"]


def test_the_smaller_try_keeps_to_the_deadline(server):
    """A server that reads the whole prompt before refusing it: the second try gets what the deadline
    leaves, and past it the asker gets the passages, not a wait."""
    too_long = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."
    server.script(Fail(400, message=too_long, delay=0.8), Fail(400, message=too_long, delay=0.8))
    answerer = make(server.base_url, chunks=PAGES, deadline_s=1.0, timeout_s=5.0)
    started = time.monotonic()
    answer = answerer.answer(LONG_Q)
    assert time.monotonic() - started < 1.6
    assert answer.mode == "offline" and answer.note == "deadline"
    assert len(server.requests) <= 2


def test_a_question_that_fills_the_window_alone_gets_the_passages_without_a_call(server, caplog):
    window_server(server, 1280)
    answerer = make(server.base_url, chunks=PAGES, context_window=1280, max_tokens=256, max_question_chars=6000)
    question = LONG_Q + "\n" + LONG_Q[100:]  # ~4,900 characters: more tokens than the window has
    with caplog.at_level(logging.INFO, logger="flytegpt"):
        answer = answerer.answer(question)
    assert server.requests == []
    assert answer.mode == "offline" and answer.note == "context" and answer.citations
    assert answer.text.startswith(prompts.MODEL_QUESTION_TOO_LONG_NOTE)
    [line] = lines(caplog)
    assert "leaves no room for sources in [answer] context_window (1280) after max_tokens (256)" in line
    assert "lower [answer] max_question_chars or max_tokens" in line


@pytest.mark.parametrize("rewrite_query", [False, True])
def test_a_question_that_leaves_room_for_no_source_is_not_sent_without_sources(server, rewrite_query):
    """A 2k window, max_tokens 512 and a ~1,000-token question: a few dozen tokens are left, less than any
    source takes with its tags. The model is not asked to answer from nothing, nor to rewrite the
    question first (a call that could only be refused)."""
    window_server(server, 2048)
    answer = make(server.base_url, chunks=PAGES, context_window=2048, max_tokens=512,
                  rewrite_query=rewrite_query).answer(LONG_Q)
    assert server.requests == [] and answer.mode == "offline" and answer.note == "context"


def test_a_thread_too_long_for_the_window_is_condensed_from_its_latest_turns(server):
    from flytegpt.bot.answering import Turn

    window_server(server, 1280)
    server.reply = "How do I configure ray workers?"
    answerer = make(server.base_url, chunks=PAGES, context_window=1280, max_tokens=256)
    history = [Turn("user", f"question {i} about ray workers " + "x " * 400) if i % 2 == 0
               else Turn("assistant", f"answer {i} [1] " + "y " * 400) for i in range(6)]
    answerer.answer("and the head node?", history)
    condense = server.requests[0]
    assert prompt_tokens(condense.body) + 256 <= 1280
    assert "answer 5" in condense.text_of("user") and "question 0" not in condense.text_of("user")


# ---- Azure OpenAI's URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://myres.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21",
    "https://myres.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
    "https://myres.openai.azure.com/openai/deployments/gpt4o",
])
def test_azure_s_deployment_url_is_refused_with_the_v1_url_to_use(url):
    with pytest.raises(ConfigError) as err:
        Settings(OPENAI_BASE_URL=url).checked_openai_base_url()
    assert str(err.value) == (
        "OPENAI_BASE_URL 'https://myres.openai.azure.com/openai/deployments/gpt4o"
        + ("/chat/completions" if "chat" in url else "") + "' is an Azure OpenAI deployment URL, which the OpenAI "
        "client cannot call: use Azure's v1 endpoint, OPENAI_BASE_URL=https://myres.openai.azure.com/openai/v1/ "
        "with FLYTEGPT_CHAT_MODEL=gpt4o (the deployment's name) and the resource's key as OPENAI_API_KEY; no "
        "api-version is needed")


@pytest.mark.parametrize("url", ["http://litellm.internal:4000/openai/deployments/gpt-4o",
                                 "https://apim.corp.example/openai/deployments/gpt4o", "http://[::1]:8000/v1"])
def test_a_deployment_path_off_azures_hosts_is_accepted(url):
    """LiteLLM serves an Azure-compatible /openai/deployments/<model> route the plain client calls well,
    and so may a gateway in front of Azure."""
    assert Settings(OPENAI_BASE_URL=url).checked_openai_base_url() == url


def test_a_base_url_with_a_query_is_refused_without_repeating_it():
    with pytest.raises(ConfigError) as err:
        Settings(OPENAI_BASE_URL="https://gateway.example.org/v1?key=secret-in-query").checked_openai_base_url()
    assert "has a query string" in str(err.value) and "secret-in-query" not in str(err.value)
    assert "https://gateway.example.org/v1" in str(err.value)


def test_serve_refuses_the_deployment_url_before_connecting(tmp_path):
    """One line at start (serve's ConfigError), not a 404 on every question."""
    config = _serve_config(tmp_path, tmp_path)
    settings = Settings(SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1", OPENAI_API_KEY=KEY,
                        OPENAI_BASE_URL="https://myres.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21")
    server = BotServer(config, settings, port=0, host="127.0.0.1")
    with pytest.raises(ConfigError, match="use Azure's v1 endpoint"):
        server.start()
    server.stop()


def test_azure_s_v1_endpoint_is_called_with_the_plain_client(server):
    """What the error tells the operator to write works: /openai/v1/chat/completions, the deployment as
    the model, the key as a Bearer token (no api-version, no api-key header needed)."""
    base = server.base_url.removesuffix("/v1") + "/openai/v1/"
    assert Settings(OPENAI_BASE_URL=base).checked_openai_base_url() == base
    server.reply = "Install the plugin [1]."
    answer = make(base, model="gpt4o").answer("how do I use ray workers?")
    assert answer.mode == "llm"
    [request] = server.requests
    assert request.body["model"] == "gpt4o" and request.headers["authorization"] == f"Bearer {KEY}"
