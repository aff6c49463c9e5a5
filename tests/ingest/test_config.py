from pathlib import Path

import pytest

from flytegpt.ingest.config import ConfigError, Settings, load_config, parse_config
from support.paths import SHARED

SHARED_EVAL = SHARED / "eval" / "flytegpt.eval.toml"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    path = tmp_path / "flytegpt.toml"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = load_config(write(tmp_path, '[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\n'))
    assert config.sources[0].path == (tmp_path / "docs").resolve()
    assert config.sources[0].root().is_dir()


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, '[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\nurl_template = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'sources\[d\]\.url_template'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'embeddings\.modle'"):
        load_config(write(tmp_path, '[embeddings]\nmodle = "x"\n'))


def test_missing_path_is_named(tmp_path):
    path = write(tmp_path, '[[sources]]\nname = "d"\nkind = "docs"\npath = "nowhere"\n')
    with pytest.raises(ConfigError, match="path does not exist: .*nowhere"):
        load_config(path)


def test_missing_package_and_bad_kind_are_named(tmp_path):
    with pytest.raises(ConfigError, match="package 'no_such_pkg_xyz' is not installed"):
        load_config(write(tmp_path, '[[sources]]\nname = "c"\nkind = "code"\npackage = "no_such_pkg_xyz"\n'))
    with pytest.raises(ConfigError, match=r"sources\[x\]\.kind"):
        load_config(write(tmp_path, '[[sources]]\nname = "x"\nkind = "wiki"\npath = "docs"\n'))


def test_duplicate_names_and_bad_toml(tmp_path):
    src = '[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\n'
    with pytest.raises(ConfigError, match="duplicate source names: d"):
        load_config(write(tmp_path, src + src))
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[[sources]\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_store_override_and_remote_store_untouched(tmp_path):
    config = parse_config({"index": {"store": "s3://bucket/prefix"}}, tmp_path)
    assert config.index.store == "s3://bucket/prefix"
    assert config.with_store("/tmp/x").index.store == "/tmp/x"


def test_every_path_written_in_the_file_is_relative_to_it_not_to_the_working_directory(tmp_path, monkeypatch):
    """`flytegpt serve --config deploy/flytegpt.toml` from another folder must open the same
    feedback database and cache as from beside the file, not new empty ones."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    path = write(folder, '[index]\nstore = "store"\ncache_dir = "cache"\n'
                         '[embeddings]\nonnx_cache_dir = "~/onnx"\n'
                         '[bot]\nfeedback_db = "data/fb.sqlite3"\nfeedback_snapshot = "s3://b/fb.sqlite3"\n'
                         'report_eval_questions = "eval.jsonl"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    root = folder.resolve()
    assert config.index.store == str(root / "store")
    assert config.index.cache_dir == str(root / "cache")
    assert config.embeddings.onnx_cache_dir == str(Path("~/onnx").expanduser().resolve())
    assert config.bot.feedback_db == str(root / "data" / "fb.sqlite3")
    assert config.bot.feedback_snapshot == "s3://b/fb.sqlite3"  # a URL is left as written
    assert config.bot.report_eval_questions == str(root / "eval.jsonl")
    defaults = load_config(write(folder, ""))
    assert (defaults.index.store, defaults.bot.feedback_db) == (".flytegpt/store", ".flytegpt/feedback.sqlite3")


def test_secrets_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:1/api/")
    settings = Settings()
    assert settings.openai_api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(settings)
    assert settings.slack_api_url == "http://127.0.0.1:1/api/"


@pytest.mark.skipif(not SHARED_EVAL.exists(), reason="../shared is not beside the checkout")
def test_the_shared_eval_config_loads_as_it_is():
    config = load_config(SHARED_EVAL)
    assert [s.name for s in config.sources] == ["flyte-docs", "flytesnacks-docs", "flyte-slack", "flytekit"]
    assert config.sources[3].root().name == "flytekit"


def test_an_index_type_that_is_not_built_is_a_config_error(tmp_path) -> None:
    from flytegpt.ingest.config import ConfigError, load_config

    path = tmp_path / "flytegpt.toml"
    path.write_text('[index]\nindex_type = "ivfpq"\n')
    with pytest.raises(ConfigError, match="index_type"):
        load_config(path)
    path.write_text('[index]\nindex_type = "ivf"\n')
    assert load_config(path).index.index_type == "ivf"
    path.write_text('[index]\nindex_type = "hnsw"\n')  # measured and removed: nothing chose it
    with pytest.raises(ConfigError, match="index_type"):
        load_config(path)


@pytest.mark.parametrize("body, message", [
    ('sources = "docs"\n', "sources: expected a list of tables"),
    ('sources = [1, 2]\n', "sources: expected a list of tables"),
    ('sources = ["docs"]\n', "sources: expected a list of tables"),
    ('[sources]\nname = "d"\n', "sources: expected a list of tables"),
])
def test_sources_that_are_not_a_list_of_tables(tmp_path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, body))


def test_a_config_saved_with_a_utf8_bom_loads(tmp_path) -> None:
    """Windows editors start UTF-8 files with a BOM: it was `invalid TOML: Invalid statement (at line 1)`."""
    path = write(tmp_path, "")
    path.write_bytes(b"\xef\xbb\xbf" + b'[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\n')
    assert load_config(path).sources[0].name == "d"


def test_config_file_that_is_not_utf8(tmp_path) -> None:
    path = tmp_path / "flytegpt.toml"
    path.write_bytes('[index]\nstore = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"flytegpt\.toml: not UTF-8 text \(byte 20\)"):
        load_config(path)


@pytest.mark.parametrize("table, key, value", [
    ("bot", "workers", 0), ("bot", "workers", 100_000), ("retrieval", "k", 0), ("retrieval", "k", -5),
    ("answer", "timeout_s", 0), ("answer", "timeout_s", "nan"), ("answer", "timeout_s", "inf"),
    ("bot", "http_port", 70000), ("bot", "http_port", -1), ("bot", "user_rate_limit", -1),
    ("bot", "queue_size", 0), ("bot", "reload_interval_s", 0), ("answer", "max_retries", -1),
    ("answer", "temperature", 3), ("embeddings", "batch_size", 0), ("index", "keep_versions", 0),
    ("retrieval", "dense_weight", 1.5), ("answer", "history_turns", -1),
])
def test_numeric_knobs_out_of_range_name_the_key(tmp_path, table: str, key: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"{table}\.{key}: Input should be"):  # nan, inf: TOML literals
        load_config(write(tmp_path, f"[{table}]\n{key} = {value}\n"))


def test_in_range_knobs_load(tmp_path) -> None:
    config = load_config(write(tmp_path, "[bot]\nworkers = 8\nhttp_port = 0\nuser_rate_limit = 0\n"
                                         "[index]\nkeep_versions = 3\n[retrieval]\nk = 20\n"))
    assert (config.bot.workers, config.bot.http_port, config.index.keep_versions, config.retrieval.k) == (8, 0, 3, 20)
