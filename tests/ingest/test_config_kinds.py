"""A [[sources]] key its kind never reads, and a docs/code `url` that is no
http(s) URL, are errors naming the key; the [project] table and `[bot] command` are checked and
defaulted as the README says. Everything through load_config, as a user's file is read."""

from __future__ import annotations

import pytest

from flytegpt.ingest.config import ConfigError, load_config

DOCS = 'kind = "docs"\npath = "docs"'
CODE = 'kind = "code"\npath = "code"'
EXPORT = 'kind = "slack_export"\npath = "export"'
API = 'kind = "slack_api"'
GIT_DOCS = 'kind = "git"\nrepo = "https://github.com/o/r"\nas_kind = "docs"'
GIT_CODE = 'kind = "git"\nrepo = "https://github.com/o/r"\nas_kind = "code"'


def write(tmp_path, body: str):
    for folder in ("docs", "code", "export"):
        (tmp_path / folder).mkdir(exist_ok=True)
    path = tmp_path / "flytegpt.toml"
    path.write_text(body)
    return path


def source(tmp_path, kind: str, extra: str):
    return write(tmp_path, f'[[sources]]\nname = "s"\n{kind}\n{extra}\n')


def error(path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def test_irrelevant_keys_on_a_docs_source_are_each_named(tmp_path):
    """bad/irrelevant.toml: a docs source with channels, workspace_url, repo and skip_tests = false
    had a clean dry run; now each key is named with the kinds that read it."""
    message = error(source(tmp_path, DOCS, 'channels = ["general"]\nworkspace_url = "https://x.slack.com"\n'
                                           'repo = "https://github.com/o/r"\nskip_tests = false'))
    assert "sources[s]: these keys have no effect on a docs source, remove them: " in message
    assert "'channels' (only slack_export and slack_api sources read it)" in message
    assert "'workspace_url' (only slack_export and slack_api sources read it; a page's link comes from url)" in message
    assert "'repo' (only git sources read it)" in message
    assert "'skip_tests' (only code and git (as_kind = \"code\") sources read it)" in message


@pytest.mark.parametrize(("kind", "extra", "key", "readers"), [
    (DOCS, 'package = "flytekit"', "package", "only code sources"),
    (DOCS, "reply_lookback_days = 7", "reply_lookback_days", "only slack_api sources"),
    (CODE, 'workspace_url = "https://x.slack.com"', "workspace_url", "slack_export and slack_api"),
    (CODE, 'channels = ["general"]', "channels", "slack_export and slack_api"),
    (CODE, 'ref = "main"', "ref", "only git sources"),
    (EXPORT, "skip_tests = false", "skip_tests", "code and git"),
    (EXPORT, 'url = "https://x/{path}"', "url", "docs, code and git"),
    (EXPORT, 'as_kind = "docs"', "as_kind", "only git sources"),
    (API, 'path = "export"', "path", "docs, code and slack_export"),
    (API, 'include = ["general"]', "include", "docs, code, git and slack_export"),
    (DOCS, "private_channels = true", "private_channels", "slack_export and slack_api"),
    (EXPORT, "reply_lookback_days = 7", "reply_lookback_days", "only slack_api sources"),
    (GIT_DOCS, "skip_tests = true", "skip_tests", "code and git (as_kind"),
    (GIT_DOCS, 'path = "docs"', "path", "docs, code and slack_export"),
    (GIT_CODE, 'package = "flytekit"', "package", "only code sources"),
])
def test_a_key_the_kind_never_reads_is_an_error(tmp_path, kind, extra, key, readers):
    message = error(source(tmp_path, kind, extra))
    assert f"sources[s]: '{key}' has no effect on a" in message and readers in message
    assert message.endswith("; remove it")


def test_a_slack_source_given_a_url_is_told_where_its_links_come_from(tmp_path):
    message = error(source(tmp_path, API, 'url = "https://x/{path}"'))
    assert "'url' has no effect on a slack_api source" in message
    assert "a Slack thread's link comes from workspace_url" in message


@pytest.mark.parametrize(("kind", "extra"), [
    (DOCS, 'include = ["*.md"]\nexclude = ["drafts"]\nurl = "https://docs.example.org/{page}"'),
    (CODE, 'package = "flytegpt.ingest"\nskip_tests = false\ninclude = ["*.py"]'),
    (EXPORT, 'workspace_url = "https://x.slack.com"\nchannels = ["general"]\nexclude = ["random"]'),
    (API, 'workspace_url = "https://x.slack.com"\nchannels = ["general"]\nreply_lookback_days = 7'),
    (GIT_CODE, 'ref = "main"\nskip_tests = false\ninclude = ["src/**"]\nurl = "https://x/{commit}/{path}#L{start}"'),
    (GIT_DOCS, 'ref = "v1"\nexclude = ["drafts"]\nurl = "https://x/{ref}/{path_noext}.html"'),
])
def test_every_key_a_kind_reads_is_accepted(tmp_path, kind, extra):
    body = f'[[sources]]\nname = "s"\n{kind}\n{extra}\n'
    if "package" in extra:
        body = body.replace('path = "code"\n', "")
    load_config(write(tmp_path, body))


@pytest.mark.parametrize(("kind", "url"), [
    (DOCS, "docs/{path}"),            # a relative path: every citation would be a bare label
    (DOCS, "file:///srv/docs/{path}"),
    (DOCS, "{path}"),
    (DOCS, "https:///{path}"),
    (CODE, "github.com/o/r/blob/main/{path}#L{start}-L{end}"),
    (GIT_DOCS, "/{commit}/{path}"),
])
def test_a_url_that_is_no_http_url_template_is_an_error(tmp_path, kind, url):
    message = error(source(tmp_path, kind, f'url = "{url}"'))
    assert "sources[s]: url must be an http(s) URL template" in message and repr(url) in message


# --- [project] and [bot] command ----------------------------------------------------------------

def test_a_config_without_project_is_flyte_as_before(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.project.name == "Flyte" and config.project.assistant_name == "FlyteGPT"
    assert config.project.description == "flytekit, flytectl, FlytePropeller, FlyteAdmin"
    assert config.bot.command == "/flytegpt"
    assert config.bot.suggested_prompts[0] == "How do I cache a task's outputs?"


def test_another_project_gets_no_flyte_defaults(tmp_path):
    config = load_config(write(tmp_path, '[project]\nname = "Bolt for Python"\n[bot]\ncommand = "/boltbot"\n'))
    assert config.project.name == "Bolt for Python"
    assert config.project.description is None and config.project.assistant_name is None
    assert config.bot.command == "/boltbot"
    assert config.bot.suggested_prompts == []  # the Flyte questions would find unrelated passages


def test_another_project_keeps_the_prompts_it_writes(tmp_path):
    config = load_config(write(tmp_path, '[project]\nname = "Bolt for Python"\nassistant_name = "BoltBot"\n'
                                         '[bot]\nsuggested_prompts = ["How do I use Socket Mode?"]\n'))
    assert config.bot.suggested_prompts == ["How do I use Socket Mode?"]
    assert config.project.assistant_name == "BoltBot"


def test_flyte_written_out_keeps_its_defaults_and_a_blank_description_drops_them(tmp_path):
    config = load_config(write(tmp_path, '[project]\nname = "flyte"\ndescription = ""\n'))
    assert config.project.is_flyte and config.project.description is None
    assert config.project.assistant_name == "FlyteGPT" and len(config.bot.suggested_prompts) == 3


@pytest.mark.parametrize(("body", "expected"), [
    ('[project]\nname = "  "', "project.name: is empty"),
    ('[project]\nname = "Bolt\\nfor Python"', "project.name: must be one line"),
    ('[project]\nnmae = "Bolt"', "unknown key 'project.nmae'"),
    ('[bot]\ncommand = "boltbot"', "bot.command: 'boltbot' is not a Slack slash command"),
    ('[bot]\ncommand = "/BoltBot"', "bot.command: '/BoltBot' is not a Slack slash command"),
    ('[bot]\ncommand = "/bolt bot"', "is not a Slack slash command"),
    (f'[bot]\ncommand = "/{"a" * 32}"', "is not a Slack slash command"),
])
def test_project_and_command_mistakes_name_the_key(tmp_path, body, expected):
    assert expected in error(write(tmp_path, body + "\n"))


def test_the_longest_slash_command_slack_takes_loads(tmp_path):
    command = "/" + "a" * 31
    assert load_config(write(tmp_path, f'[bot]\ncommand = "{command}"\n')).bot.command == command
