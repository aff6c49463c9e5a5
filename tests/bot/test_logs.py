"""No secret reaches a log: the configured values themselves (any shape) and known token shapes,
in messages, structured extras, exception tracebacks, through the CLI and a model-backed answer."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Fail, OpenAIStandIn
from support.slack_harness import build_sample_index

from flytegpt.bot import logs
from flytegpt.bot.logs import setup_logging
from flytegpt.ingest.config import Settings, load_config, sample_config_path

# Keys an OpenAI-compatible server (vLLM, a gateway) may hand out: no "sk-" prefix to recognise.
API_KEY = "local-gateway-key-7f3a9c2e51b04d"
BOT_TOKEN = "xoxb-1111-2222-abcdefabcdef"
APP_TOKEN = "corp-app-token-0c9d8e7f6a5b"


@pytest.fixture()
def captured():
    """setup_logging at DEBUG into a buffer, with this test's secrets configured; undone after."""
    stream = io.StringIO()
    settings = Settings(OPENAI_API_KEY=API_KEY, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    handler = setup_logging(level=logging.DEBUG, stream=stream, settings=settings)
    try:
        yield stream, handler
    finally:
        root.removeHandler(handler)
        for old in before[0]:
            root.addHandler(old)
        root.setLevel(before[1])


def _assert_clean(text: str) -> None:
    for secret in (API_KEY, BOT_TOKEN, APP_TOKEN, "abcdefabcdef", "eyJhbGciOiJIUzI1NiJ9.payload"):
        assert secret not in text, f"{secret!r} leaked into: {text[:2000]}"


def test_configured_secrets_are_redacted_whatever_their_prefix(captured) -> None:
    stream, _ = captured
    logging.getLogger("flytegpt.t").warning("provider said: Incorrect API key provided: %s", API_KEY)
    logging.getLogger("flytegpt.t").info("app token %s", APP_TOKEN)
    out = stream.getvalue()
    _assert_clean(out)
    assert "Incorrect API key provided: ***" in out


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "text"])
def test_structured_extras_are_redacted(json_logs: bool) -> None:
    stream = io.StringIO()
    settings = Settings(OPENAI_API_KEY=API_KEY)
    handler = setup_logging(json_logs=json_logs, level=logging.DEBUG, stream=stream, settings=settings)
    try:
        headers = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload", "X-Api-Key": API_KEY}
        logging.getLogger("flytegpt.t").debug(
            "request sent", extra={"headers": headers, "tokens": [BOT_TOKEN], "url": f"https://x/?key={API_KEY}",
                                   "attempt": 2})
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    _assert_clean(out)
    if json_logs:
        line = json.loads(out.strip().splitlines()[-1])
        assert line["attempt"] == 2 and line["url"] == "https://x/?key=***"
        assert "Bearer ***" in line["headers"] and "***" in line["tokens"]


def test_exception_tracebacks_are_redacted(captured) -> None:
    stream, _ = captured

    def call_provider() -> None:
        raise PermissionError(f"401 Unauthorized: key {API_KEY} is invalid (token {BOT_TOKEN})")

    try:
        call_provider()
    except PermissionError:
        logging.getLogger("flytegpt.t").exception("the model call failed")
    logging.getLogger("flytegpt.t").warning("where", stack_info=True, extra={"error": ValueError(API_KEY)})
    out = stream.getvalue()
    _assert_clean(out)
    assert "Traceback (most recent call last)" in out and "call_provider" in out


def test_model_backed_answer_at_debug_with_the_key_echoed_in_a_401(captured) -> None:
    """The provider's 401 body names the key; the chain logs the body; the key stays out."""
    from flytegpt.bot.answering import Answerer, ModelUnavailable

    stream, _ = captured
    config = load_config(sample_config_path())
    config = config.model_copy(update={"answer": config.answer.model_copy(update={"max_retries": 0})})
    with OpenAIStandIn() as llm:
        llm.script(Fail(status=401, message=f"Incorrect API key provided: {API_KEY}. Find your key at ..."))
        settings = Settings(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=llm.base_url)
        answerer = Answerer(config, settings, lambda: WordSearcher(ALL))
        with pytest.raises(ModelUnavailable):
            answerer.answer("how do I use ray with flyte?")
        assert llm.requests and llm.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    out = stream.getvalue()
    assert "401" in out  # the failure is logged...
    _assert_clean(out)  # ...without the key


def test_flytegpt_ask_redacts_like_the_server(tmp_path: Path, embedder) -> None:
    """`flytegpt -vv ask` (DEBUG) against a provider that echoes the key in its 401."""
    store = tmp_path / "store"
    build_sample_index(store, embedder)
    with OpenAIStandIn() as llm:
        llm.script(*[Fail(status=401, message=f"Incorrect API key provided: {API_KEY}")] * 3)
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": llm.base_url,
               "SLACK_BOT_TOKEN": BOT_TOKEN}
        out = subprocess.run(
            [sys.executable, "-m", "flytegpt.bot.cli", "-vv", "ask", "how do I cache a task?",
             "--config", str(sample_config_path()), "--store", str(store)],
            capture_output=True, text=True, env=env, timeout=300,
        )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "DEBUG" in out.stderr and "401" in out.stderr  # verbose, and the failure is there
    _assert_clean(out.stdout + out.stderr)


def test_short_values_are_not_treated_as_secrets() -> None:
    logs.register_secrets(["x", "", None])
    assert logs.redact("a fix for x and y") == "a fix for x and y"


def test_cli_inside_a_host_keeps_its_handlers_and_redacts_them(monkeypatch) -> None:
    """Run in-process (a host application, a test runner), the CLI adds redaction to the
    handlers it finds instead of replacing them."""
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    stream = io.StringIO()
    host = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(host)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    try:
        result = CliRunner().invoke(main, ["-vv", "ask", "--help"])
        assert result.exit_code == 0
        assert host in root.handlers
        root.warning("key is %s", API_KEY)
    finally:
        root.removeHandler(host)
    assert "key is ***" in stream.getvalue()


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "text"])
def test_log_lines_quoting_corpus_text_carry_no_terminal_sequences(json_logs: bool) -> None:
    """A skipped file's name or a question from Slack is quoted in log lines: a window title
    (OSC), a clipboard write (OSC 52), a screen clear or a bidi override in it reached the
    operator's terminal or log viewer as it was."""
    stream = io.StringIO()
    handler = setup_logging(json_logs=json_logs, level=logging.INFO, stream=stream, settings=Settings())
    hostile = "docs/\x1b]0;PWNED\x07a\x1b[2J\x9b31m.md \u202eevil"
    try:
        logging.getLogger("flytegpt.t").warning("skipped %s", hostile, extra={"path": hostile})
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in out
    if json_logs:
        line = json.loads(out.strip().splitlines()[-1])
        assert line["message"] == f"skipped {hostile}"  # escaped, nothing lost
    else:
        assert "skipped docs/a.md evil" in out and "PWNED" not in out


def _debug_lines_from_slack_libraries(monkeypatch, opt_in: str | None) -> str:
    """setup_logging at DEBUG (`flytegpt -vv serve`), then the debug lines slack_bolt and slack_sdk
    write for an incoming DM: what reaches the log."""
    if opt_in is None:
        monkeypatch.delenv(logs.SLACK_DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(logs.SLACK_DEBUG_ENV, opt_in)
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    handler = setup_logging(level=logging.DEBUG, stream=stream, settings=Settings())
    # Bolt copies the root's level onto the loggers it makes (get_bolt_logger): DEBUG here
    from slack_bolt.logger import get_bolt_logger

    class Listener:
        pass

    try:
        dm = '{"type": "message", "channel_type": "im", "text": "my private DM: PRIVATE-MARKER"}'
        logging.getLogger("slack_bolt").debug("on_message invoked: (message: %s)", dm)
        get_bolt_logger(Listener).debug("Running listener with %s", dm)
        logging.getLogger("slack_sdk.socket_mode.websocket_client").debug("on_message invoked: %s", dm)
        logging.getLogger("slack_sdk.web.base_client").debug("Sending a request - body_params: %s", dm)
        logging.getLogger("slack_sdk.web.base_client").info("Going to retry the same request: POST x")
        logging.getLogger("flytegpt.bot.t").debug("our own debug line")
    finally:
        root.removeHandler(handler)
        for old in before[0]:
            root.addHandler(old)
        root.setLevel(before[1])
        for name in ("slack_bolt", "slack_sdk"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    return stream.getvalue()


@pytest.mark.parametrize("opt_in", [None, "", "0"], ids=["unset", "empty", "zero"])
def test_debug_logging_leaves_out_slack_payloads_with_users_messages(monkeypatch, opt_in) -> None:
    """`flytegpt -vv serve` logged every Slack event's text, DMs included, through slack_bolt's and
    slack_sdk's debug lines: they stay out; Slack's retries and our debug stay in."""
    out = _debug_lines_from_slack_libraries(monkeypatch, opt_in)
    assert "PRIVATE-MARKER" not in out, out
    assert "our own debug line" in out
    assert "Going to retry the same request" in out


def test_slack_payload_debug_lines_are_logged_when_asked_for(monkeypatch) -> None:
    out = _debug_lines_from_slack_libraries(monkeypatch, "1")
    assert out.count("PRIVATE-MARKER") == 4, out


def test_serve_help_says_what_debug_logging_leaves_out() -> None:
    from click.testing import CliRunner

    from flytegpt.bot.cli_serve import serve_cmd

    text = " ".join(CliRunner().invoke(serve_cmd, ["--help"]).output.split())
    assert ("flytegpt -vv serve logs at debug, but not the Slack libraries' debug lines: they quote every "
            "event and request, users' messages and DMs included. FLYTEGPT_DEBUG_SLACK=1 adds them.") in text


@pytest.mark.parametrize("line, kept", [
    ("cannot fetch https://x-access-token:ghp_SECRET1234@github.com/a/b.git", "https://***@github.com/a/b.git"),
    ("cannot fetch https://ghp_SECRET1234@github.com/a/b.git", "https://ghp_***@github.com/a/b.git"),
    ("a token github_pat_11SECRET1234_abc in a message", "github_pat_***"),
    ("GitLab glpat-SECRET1234 too", "glpat-***"),
    ("a store s3://key:SECRET1234@bucket/x", "s3://***@bucket/x"),
])
def test_access_tokens_and_url_credentials_are_redacted(line, kept):
    """Before, a git source's clone URL with a token was logged as written."""
    from flytegpt.bot.logs import redact

    out = redact(line)
    assert "SECRET1234" not in out and kept in out
    assert redact("ssh://git@github.com/a/b and https://docs.flyte.org/x") == \
        "ssh://git@github.com/a/b and https://docs.flyte.org/x"


def test_a_model_answer_at_info_logs_no_line_per_http_request() -> None:
    """The OpenAI client logged "HTTP Request: POST .../chat/completions" at INFO for every model
    call (openai 3.x through httpx2): 45% of a soak's log lines."""
    from flytegpt.bot.answering import Answerer

    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    handler = setup_logging(level=logging.INFO, stream=stream, settings=Settings())
    try:
        with OpenAIStandIn() as llm:
            answerer = Answerer(load_config(sample_config_path()),
                                Settings(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=llm.base_url),
                                lambda: WordSearcher(ALL))
            answerer.answer("how do I use ray with flyte?")
            assert llm.requests
    finally:
        root.removeHandler(handler)
        for old in before[0]:
            root.addHandler(old)
        root.setLevel(before[1])
    assert "HTTP Request" not in stream.getvalue()
