"""Configuration a user can get wrong: blank settings, the store, url templates, blank list entries,
a model endpoint over plain http. Each is refused naming what to fix, warned about, or read as meant."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.paths import FIXTURES, ROOT, SHARED

from flytegpt.ingest.config import Config, ConfigError, Settings, load_config, sample_config_path


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "code").mkdir(exist_ok=True)
    path = tmp_path / "flytegpt.toml"
    path.write_text(text)
    return path


# ---- an empty OPENAI_API_KEY (and friends) is unset ----------------------------------------

@pytest.mark.parametrize("value", ["", "  ", "\t\n"])
def test_blank_openai_settings_are_unset(value):
    s = Settings(OPENAI_API_KEY=value, OPENAI_BASE_URL=value, FLYTEGPT_CHAT_MODEL=value)
    assert s.openai_api_key is None and s.openai_base_url is None
    assert s.chat_model == "gpt-4o-mini"


def test_a_blank_key_from_the_environment_is_unset(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "   ")
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    assert Settings().openai_api_key is None and Settings().openai_base_url is None
    monkeypatch.setenv("OPENAI_API_KEY", " sk-real \n")  # a key pasted with a newline still works
    assert Settings().openai_api_key.get_secret_value() == "sk-real"


# ---- OPENAI_BASE_URL must be an http(s) URL with a host ---------------------------------------

@pytest.mark.parametrize("url", ["not a url", "localhost:8000/v1", "https://", "file:///tmp/x"])
def test_a_malformed_openai_base_url_names_the_variable(url):
    with pytest.raises(ConfigError, match=r"OPENAI_BASE_URL .* is not an http\(s\) URL"):
        Settings(OPENAI_BASE_URL=url).checked_openai_base_url()


@pytest.mark.parametrize("url", [None, "http://localhost:11434/v1", "https://api.openai.com/v1"])
def test_good_openai_base_urls_pass(url):
    assert Settings(OPENAI_BASE_URL=url).checked_openai_base_url() == url


# ---- the index store --------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["", "   "])
def test_an_empty_store_in_the_file_is_an_error_naming_index_store(tmp_path, store):
    path = write(tmp_path, f'[index]\nstore = "{store}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "index.store" in str(err.value) and "empty" in str(err.value)


def test_a_store_under_home_is_expanded_not_a_folder_named_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_config(write(tmp_path, '[index]\nstore = "~/fgstore"\n'))
    assert config.index.store == str((tmp_path / "home" / "fgstore").resolve())
    assert "~" not in config.index.store


@pytest.mark.parametrize("store", ["", "  "])
def test_an_empty_store_flag_is_refused_naming_the_flag(store):
    with pytest.raises(ConfigError, match="--store is empty"):
        Config().with_store(store)
    assert Config().with_store(None).index.store == ".flytegpt/store"


def test_the_cli_refuses_an_empty_store_flag(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from flytegpt.bot.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ingest", "--config", str(sample_config_path()), "--store", "", "--dry-run"])
    assert result.exit_code == 1 and "--store is empty" in result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


# ---- url templates and workspace_url ----------------------------------------------------------

@pytest.mark.parametrize(("source", "bad", "allowed"), [
    ('kind = "docs"\npath = "docs"', "{pth}", "{path}"),
    ('kind = "docs"\npath = "docs"', "{start}", "{path}"),
    ('kind = "code"\npath = "code"', "{line}", "{path}, {start}, {end}"),
    ('kind = "git"\nrepo = "https://github.com/o/r"\nas_kind = "docs"', "{sha}", "{commit}, {ref}, {path}"),
    ('kind = "git"\nrepo = "https://github.com/o/r"\nas_kind = "code"', "{}", "{commit}, {ref}, {path}, {start}, {end}"),
])
def test_an_unknown_url_placeholder_names_the_source_and_the_allowed_ones(tmp_path, source, bad, allowed):
    path = write(tmp_path, f'[[sources]]\nname = "d"\n{source}\nurl = "https://x/{bad}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "sources[d]" in message and f"unknown placeholder {bad}" in message and allowed in message


@pytest.mark.parametrize(("source", "url"), [
    ('kind = "docs"\npath = "docs"', "https://docs.example.org/{path}"),
    ('kind = "docs"\npath = "docs"', "https://docs.example.org/static"),
    ('kind = "code"\npath = "code"', "https://github.com/o/r/blob/main/{path}#L{start}-L{end}"),
    ('kind = "git"\nrepo = "https://github.com/o/r"\nas_kind = "code"',
     "https://github.com/o/r/blob/{commit}/{path}#L{start}-L{end}"),
    ('kind = "git"\nrepo = "https://github.com/o/r"\nas_kind = "docs"', "https://x/{ref}/{path}"),
])
def test_valid_url_templates_load(tmp_path, source, url):
    load_config(write(tmp_path, f'[[sources]]\nname = "d"\n{source}\nurl = "{url}"\n'))


@pytest.mark.parametrize("ws", ["example.slack.com", "ftp://example.slack.com", "https://", ""])
def test_workspace_url_must_be_an_http_url(tmp_path, ws):
    (tmp_path / "export").mkdir()
    path = write(tmp_path, f'[[sources]]\nname = "s"\nkind = "slack_export"\npath = "export"\nworkspace_url = "{ws}"\n')
    with pytest.raises(ConfigError, match=r"sources\[s\]: workspace_url must be an http\(s\) URL"):
        load_config(path)


def test_every_shipped_config_still_loads():
    paths = [sample_config_path(), *FIXTURES.glob("**/*.toml"), *(ROOT / "manifests").glob("**/flytegpt.toml")]
    shared = SHARED / "eval" / "flytegpt.eval.toml"
    if shared.is_file():
        paths.append(shared)
    assert len(paths) >= 4
    for path in paths:
        load_config(path)


# ---- blank entries in [bot] lists --------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("suggested_prompts", '["", " "]'),
    ("suggested_prompts", '["How do I cache?", "  "]'),
    ("allowed_channels", '["", "#general"]'),
    ("report_channels", '["C0123ABCD", " "]'),
])
def test_blank_bot_list_entries_name_the_key(tmp_path, key, value):
    path = write(tmp_path, f"[bot]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"bot\.{key}: entry \d is empty"):
        load_config(path)


def test_non_blank_bot_lists_load(tmp_path):
    config = load_config(write(tmp_path, '[bot]\nsuggested_prompts = ["How do I cache?"]\n'
                                         'allowed_channels = ["C0123ABCD", "general"]\n'))
    assert config.bot.allowed_channels == ["C0123ABCD", "general"]


@pytest.mark.parametrize("url, warned", [("http://llm.internal:8000/v1", True), ("https://llm.example/v1", False),
                                         ("http://127.0.0.1:8000/v1", False), ("http://localhost:11434/v1", False),
                                         ("http://[::1]:8000/v1", False)])
def test_a_model_endpoint_over_plain_http_to_another_host_is_warned_about(caplog, url, warned):
    """Before, the API key went over plain http to any host without a word."""
    from flytegpt.ingest import config as config_module
    from flytegpt.ingest.config import Settings

    config_module._WARNED_PLAIN_HTTP.clear()
    settings = Settings(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=url)
    with caplog.at_level("WARNING"):
        assert settings.checked_openai_base_url() == url
        settings.checked_openai_base_url()  # once per URL
    said = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(said) == int(warned)
    if warned:
        assert said[0].startswith("OPENAI_BASE_URL is plain http to llm.internal") and "sk-x" not in said[0]
