"""A bot over another project's index (slackapi/bolt-python) names that
project, never Flyte: in every prompt the model is sent (answer, condense, query rewrite), in
the slash command it answers and in its usage text, and in the assistant panel's prompts."""

from __future__ import annotations

import itertools
from contextlib import ExitStack

import pytest
from support.answering_support import ALL, WordSearcher
from support.openai_server import Reply
from support.slack_harness import CACHE_Q, harness_factory

from flytegpt.bot.answering import Answerer, Turn, prompts
from flytegpt.ingest.config import Config, ProjectConfig, Settings, parse_config

BOLT = {"name": "Bolt for Python", "description": "slack_bolt, its adapters and listeners", "assistant_name": "BoltBot"}


def answerer(server, tmp_path, raw: dict) -> tuple[Answerer, WordSearcher]:
    """An Answerer over a config read as a user's file is (parse_config), talking to the stand-in."""
    raw = {**raw, "answer": {"min_score": 0.2, "timeout_s": 2.0, "max_retries": 0, **raw.get("answer", {})}}
    config = parse_config(raw, tmp_path)
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url, FLYTEGPT_CHAT_MODEL="stand-in")
    searcher = WordSearcher(list(ALL))
    return Answerer(config, settings, lambda: searcher), searcher


def systems(server) -> list[str]:
    return [str(r.messages[0]["content"]) for r in server.requests]


def test_every_prompt_names_the_configured_project_and_never_flyte(server, tmp_path):
    """Two runs that reach every prompt: `ask` with a rewrite, then a follow-up that is condensed."""
    bot, _ = answerer(server, tmp_path, {"project": BOLT, "answer": {"rewrite_query": True}})
    server.script(Reply("Socket Mode app token"), Reply("Use SocketModeHandler [1]."))
    bot.answer("How do I use ray workers?")
    server.script(Reply("How do I use ray workers on AWS Lambda?"), Reply("Use the Lambda adapter [1]."))
    bot.answer("and on AWS Lambda?", [Turn("user", "How do I use ray workers?"), Turn("assistant", "Use it [1].")])

    rewrite, answer, condense, follow_up = systems(server)
    assert rewrite.startswith("You turn a question about Bolt for Python (slack_bolt, its adapters and listeners, "
                              "the Bolt for Python docs) into a search query")
    assert "Name the Bolt for Python features" in rewrite
    assert answer.startswith("You are BoltBot, an assistant that answers questions about Bolt for Python "
                             "(slack_bolt, its adapters and listeners).")
    assert condense.startswith("You rewrite a follow-up question from a conversation about Bolt for Python into")
    assert follow_up == answer
    for text in (rewrite, answer, condense):
        assert "flyte" not in text.lower()


def test_a_project_with_only_a_name_gets_neutral_prompts(server, tmp_path):
    bot, _ = answerer(server, tmp_path, {"project": {"name": "Bolt for Python"}, "answer": {"rewrite_query": True}})
    server.script(Reply("ray workers"), Reply("Set replicas [1]."))
    bot.answer("How do I use ray workers?")
    rewrite, answer = systems(server)
    assert answer.startswith("You are an assistant that answers questions about Bolt for Python.\n")
    assert rewrite.startswith("You turn a question about Bolt for Python into a search query for its documentation")
    assert "flyte" not in (rewrite + answer).lower()


def test_the_flyte_project_keeps_its_prompts(server, tmp_path):
    """No [project] table: what a Flyte config sent before (condense and rewrite word for word)."""
    bot, _ = answerer(server, tmp_path, {"answer": {"rewrite_query": True}})
    server.script(Reply("RayJobConfig replicas"), Reply("Set replicas [1]."))
    bot.answer("How do I use ray workers?")
    assert systems(server) == [prompts.REWRITE_SYSTEM, prompts.ANSWER_SYSTEM]
    assert prompts.ANSWER_SYSTEM.startswith(
        "You are FlyteGPT, an assistant that answers questions about Flyte (flytekit, flytectl, FlytePropeller, "
        "FlyteAdmin). The sources describe Flyte 1.x and flytekit, not the Flyte 2 SDK (`import flyte`, "
        "`TaskEnvironment`, `flyte.run`).\n\nRules:\n1. Answer only from the numbered sources")
    assert prompts.REWRITE_SYSTEM.startswith(
        "You turn a question about Flyte (flytekit, flytectl, FlytePropeller, FlyteAdmin, the Flyte docs) into a "
        "search query for its documentation, source code and Slack history. Name the Flyte features, ")
    assert prompts.CONDENSE_SYSTEM.startswith(
        "You rewrite a follow-up question from a conversation about Flyte into one standalone question that")


def test_a_project_name_with_braces_reaches_the_model_as_written(server, tmp_path):
    """The system text is no template: "{question}" in a name is text, not the question."""
    bot, _ = answerer(server, tmp_path, {"project": {"name": "{question} kit", "description": "{sources}"}})
    server.reply = "Set replicas [1]."
    bot.answer("How do I use ray workers?")
    [answer] = systems(server)
    assert "answers questions about {question} kit ({sources})." in answer


# --- Slack: the command and the panel --------------------------------------------------------------

@pytest.fixture
def make_bolt_bot(sample, tmp_path):
    """make(**bot): a bot for Bolt for Python (as load_config reads `[project]` and `[bot]`) on the
    sample index."""
    base, searcher = sample

    def bolt_config(**bot) -> Config:
        checked = Config.model_validate({"project": BOLT, "bot": bot})
        return base.model_copy(update={"project": checked.project, "bot": checked.bot})

    dbs = (tmp_path / f"feedback-{i}.sqlite3" for i in itertools.count())
    with ExitStack() as stack:
        def make(**bot):
            return stack.enter_context(harness_factory((bolt_config(**bot), searcher), next(dbs)))()

        yield make


@pytest.mark.timeout(120)
def test_the_configured_command_is_answered_and_its_usage_names_the_project(make_bolt_bot):
    """A maintainer who renamed the command in the manifest (/boltbot) got no answer at all."""
    harness = make_bolt_bot(command="/boltbot")
    emu = harness.emu
    usage = emu.slash_command("help", command="/boltbot")
    ack = emu.wait_ack(usage.envelope_id)
    text = ack.payload["text"]
    assert ack.payload["response_type"] == "ephemeral"
    assert "*BoltBot* answers questions about Bolt for Python" in text and "`/boltbot your question`" in text
    assert "`@BoltBot your question`" in text
    assert "flyte" not in text.lower()

    asked = emu.slash_command(CACHE_Q, command="/boltbot")
    assert emu.wait_ack(asked.envelope_id).payload["response_type"] == "ephemeral"
    [post] = emu.wait_for(lambda: emu.response_posts[emu.response_id(asked.response_url)], timeout=30)
    assert "cache_version" in post["text"]
    harness.idle()
    [system] = {str(r.messages[0]["content"]) for r in harness.llm.requests}
    assert "Bolt for Python" in system and "flyte" not in system.lower()

    old = emu.slash_command(CACHE_Q)  # /flytegpt: not this app's command any more, so not handled
    with pytest.raises(TimeoutError):
        emu.wait_ack(old.envelope_id, timeout=1.0)


@pytest.mark.timeout(120)
def test_another_projects_panel_offers_no_flyte_prompts(make_bolt_bot):
    harness = make_bolt_bot()
    emu = harness.emu
    opened = emu.open_assistant_thread()
    emu.wait_ack(opened.envelope_id)
    harness.idle()
    assert emu.assistant_calls_to("setSuggestedPrompts") == []

    harness = make_bolt_bot(suggested_prompts=["How do I use Socket Mode?"])
    opened = harness.emu.open_assistant_thread()
    [offered] = harness.emu.wait_for(lambda: harness.emu.assistant_calls_to("setSuggestedPrompts"))
    assert [p["message"] for p in offered["prompts"]] == ["How do I use Socket Mode?"]


def test_the_default_project_is_flyte():
    assert ProjectConfig().is_flyte and Config().bot.command == "/flytegpt"


def _docs_config(tmp_path, page: str, project: str = "") -> str:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "socket-mode.md").write_text(page)
    config = tmp_path / "flytegpt.toml"
    config.write_text(f'{project}[[sources]]\nname = "docs"\nkind = "docs"\npath = "docs"\n')
    return str(config)


BOLT_PAGE = "# Socket Mode\n\nUse SocketModeHandler with an app-level token to receive events over a WebSocket.\n"


@pytest.mark.parametrize("project, page, warned", [
    ("", BOLT_PAGE, True),  # another project's docs under the default: said
    ('[project]\nname = "Bolt for Python"\n\n', BOLT_PAGE, False),
    ('[project]\nname = "Flyte"\n\n', BOLT_PAGE, False),  # written on purpose
    ("", "# Caching\n\nFlyte caches a task's outputs when `cache=True`.\n", False),
])
def test_a_config_without_project_over_another_projects_sources_is_told_so(tmp_path, caplog, project, page, warned):
    """Without [project] every question is framed as Flyte's; a copied sample config
    over Bolt's docs gave Bolt answers that called it Flyte, without a word at ingest time."""
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    config = _docs_config(tmp_path, page, project)
    result = CliRunner().invoke(main, ["ingest", "--config", config, "--dry-run"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "[project]" in r.getMessage()]
    assert bool(said) is warned
    if warned:
        assert said[0].startswith("the config has no [project] table, so questions are framed as Flyte's, "
                                  "but 0 of 3 sampled passages name Flyte")
        assert 'set [project] name = "..."' in said[0]
