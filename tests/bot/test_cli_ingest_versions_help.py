"""What `flytegpt` says and does when an ingest has no --config,
when nothing changed, when the served version is damaged, when a config has no sources, and
what its --help promises."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support.index_data import MODEL, make_chunks, make_vectors, published_versions

from flytegpt.bot.cli import main
from flytegpt.ingest.artifact import (CHUNKS_FILE, DENSE_FILE, list_versions, publish, read_latest, write_version)
from flytegpt.ingest.config import load_config, sample_config_path

SAMPLE = str(sample_config_path())
NO_CONFIG_ENV = {"FLYTEGPT_CONFIG": None, "COLUMNS": "300", "OPENAI_API_KEY": None}


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={**NO_CONFIG_ENV, **(env or {})})


def one_error_line(result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def store_state(store: Path) -> dict[str, bytes]:
    """Every file of the store and its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture
def production(tmp_path: Path) -> tuple[Path, list[str]]:
    """A store serving an index of other sources than the sample's (docs, slack, code), two versions."""
    store = tmp_path / "prod"
    return store, published_versions(store, (8, 6))


# ---- the implicit sample config never replaces another index ----------------------------------

def test_ingest_without_config_refuses_to_replace_another_index(production):
    """It published the bundled sample as the store's LATEST, exit 0, not a word."""
    store, (v1, v2) = production
    before = store_state(store)
    result = run("ingest", "--store", str(store), "--quiet")
    line = one_error_line(result, f"the index store {store} serves an index of code, docs, slack",
                          "without --config this would replace it with the bundled sample",
                          "pass --config FILE", f"--config {SAMPLE} to do it on purpose")
    assert v2 in line
    assert store_state(store) == before  # nothing read into it, nothing written
    assert read_latest(str(store)) == v2


def test_ingest_without_config_refuses_a_store_whose_latest_cannot_be_read(production):
    store, (v1, v2) = production
    (store / v2 / "manifest.json").write_text("{not json")
    one_error_line(run("ingest", "--store", str(store), "--quiet"), "sources cannot be read", "pass --config FILE")
    (store / "LATEST").write_bytes(b"\0garbage")
    one_error_line(run("ingest", "--store", str(store), "--quiet"), "sources cannot be read", "NUL bytes")


@pytest.mark.parametrize("how", ["--config", "FLYTEGPT_CONFIG"])
def test_the_sample_config_given_on_purpose_is_not_refused(production, monkeypatch, how):
    """--config <sample> (or $FLYTEGPT_CONFIG) says it is meant: the ingest goes ahead."""
    from flytegpt.ingest import pipeline

    def reached(config, **kwargs):
        raise ValueError("the ingest started")

    monkeypatch.setattr(pipeline, "run_ingest", reached)
    store, _ = production
    args, env = (["--config", SAMPLE], {}) if how == "--config" else ([], {"FLYTEGPT_CONFIG": SAMPLE})
    one_error_line(run("ingest", *args, "--store", str(store), "--quiet", env=env), "the ingest started")


def test_ingest_help_says_what_the_default_config_is():
    result = run("ingest", "--help")
    text = " ".join(result.output.split())
    assert "Without --config (and $FLYTEGPT_CONFIG unset) the configuration is the bundled sample corpus's" in text
    assert "ingest/sample/flytegpt.toml" in text


def test_make_demo_and_the_readme_first_ingest_pass_the_config():
    """The implicit config is refused only over another index; the documented commands give --config anyway."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    ingest_lines = [line for line in makefile.splitlines() if "flytegpt ingest" in line]
    assert ingest_lines and all("--config" in line for line in ingest_lines)


# ---- the sample into a new store, then again (unchanged) ----------------------------------------

@pytest.fixture(scope="module")
def sample_store(tmp_path_factory) -> Path:
    """A new store, ingested without --config: the bundled sample is its first index."""
    store = tmp_path_factory.mktemp("fresh") / "store"
    result = CliRunner().invoke(main, ["ingest", "--store", str(store), "--quiet"], env=NO_CONFIG_ENV)
    assert result.exit_code == 0, result.output
    assert "Published index version" in result.output
    return store


@pytest.mark.slow
def test_an_unchanged_ingest_says_so_and_publishes_nothing(sample_store: Path):
    """The second run said "Published index version X" (the existing one) and its --json had no sign of it."""
    version = read_latest(str(sample_store))
    latest = sample_store / "LATEST"
    before = latest.stat()
    result = run("ingest", "--store", str(sample_store), "--quiet")  # a store serving the sample: fine
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"Unchanged: LATEST already names {version} (no new version written)" in text
    assert f"LATEST still names {version} (unchanged: nothing published or pruned)" in text
    assert "Published" not in text and f"LATEST -> {version}" not in text
    after = latest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even re-written

    data = json.loads(run("ingest", "--store", str(sample_store), "--json").stdout)
    assert data["unchanged"] is True and data["version"] == version
    assert {"version", "store", "chunks", "sources", "embeddings_computed", "embeddings_reused", "timings",
            "model_id", "device", "precision", "backend", "autotune", "tuning"} <= set(data)
    assert "publish" not in data["timings"]
    assert list_versions(str(sample_store)) == [version]


# ---- a no-op never prunes the rollback target ---------------------------------------------------

def test_an_unchanged_ingest_with_keep_versions_1_keeps_the_rollback_target(tmp_path: Path, embedder):
    """With keep_versions = 1 the unchanged ingest deleted the previous, different version."""
    from flytegpt.ingest.pipeline import run_ingest

    corpus = tmp_path / "sample"
    shutil.copytree(sample_config_path().parent, corpus)
    (corpus / "flytegpt.toml").write_text((corpus / "flytegpt.toml").read_text() + "\n[index]\nkeep_versions = 1\n")
    config = load_config(corpus / "flytegpt.toml").with_store(str(tmp_path / "store"))
    first = run_ingest(config, progress=False, embedder=embedder)
    page = corpus / "docs" / "secrets.md"
    page.write_text(page.read_text() + "\n\n## Rotating secrets\n\nRotate a secret by updating it in the cluster.\n")
    second = run_ingest(config, progress=False, embedder=embedder)
    assert not first.unchanged and not second.unchanged and second.version != first.version
    assert list_versions(config.index.store) == [first.version, second.version]

    again = run_ingest(config, progress=False, embedder=embedder)
    assert again.unchanged and again.version == second.version and "publish" not in again.timings
    assert list_versions(config.index.store) == [first.version, second.version]  # the rollback target stays
    assert read_latest(config.index.store) == second.version


def test_publishing_the_version_latest_names_rewrites_latest_and_prunes_nothing(production):
    """`flytegpt publish V` of LATEST (and the Flyte publish task of an unchanged corpus) re-writes
    LATEST so bots retry it, but a no-op must not prune the version before it."""
    store, (v1, v2) = production
    latest = store / "LATEST"
    before = latest.stat()
    time.sleep(0.01)
    publish(str(store), v2, keep_versions=1)
    after = latest.stat()
    assert (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)
    assert list_versions(str(store)) == [v1, v2]

    result = CliRunner().invoke(main, ["publish", v2, "--store", str(store), "--config", SAMPLE])
    assert result.exit_code == 0 and "re-published so running bots retry it" in result.output
    assert list_versions(str(store)) == [v1, v2]
    time.sleep(1.0)
    v3 = write_version(str(store), make_chunks(5, tag="3"), make_vectors(5, seed=3), MODEL)
    publish(str(store), v3, keep_versions=1)  # a real publish prunes: keeps LATEST and the one before
    assert list_versions(str(store)) == [v2, v3]


# ---- a damaged served version -------------------------------------------------------------------

def test_versions_exits_1_when_the_served_version_is_damaged_and_still_lists(production):
    store, (v1, v2) = production
    dense = store / v2 / DENSE_FILE
    dense.write_bytes(dense.read_bytes()[:100])
    result = run("versions", "--store", str(store))
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert v1 in text and v2 in text and f"cannot serve {v2}: damaged" in text
    assert "flytegpt publish VERSION" in text
    data = run("versions", "--store", str(store), "--json")
    assert data.exit_code == 1 and json.loads(data.stdout)["versions"][0]["problem"].startswith("damaged")

    publish(str(store), v1, force=True)  # rolled back: served again, exit 0
    assert run("versions", "--store", str(store)).exit_code == 0


def test_versions_exits_1_when_latest_is_unreadable_or_gone(production):
    store, (v1, v2) = production
    (store / "LATEST").write_bytes(b"\0x")
    assert run("versions", "--store", str(store)).exit_code == 1
    (store / "LATEST").write_text("20200101T000000Z-00000000\n")
    result = run("versions", "--store", str(store))
    assert result.exit_code == 1 and "which is not in the store" in result.output
    (store / "LATEST").write_text("")  # nothing published: not a failure
    assert run("versions", "--store", str(store)).exit_code == 0


def test_a_refused_publish_with_an_empty_latest_does_not_say_none(production):
    store, (v1, v2) = production
    (store / v1 / CHUNKS_FILE).write_bytes(b"not gzip")
    (store / "LATEST").write_text("")
    line = one_error_line(run("publish", v1, "--store", str(store)), "not published, LATEST still names no version",
                          CHUNKS_FILE)
    assert "None" not in line


@pytest.mark.parametrize("command", ["search", "ask"])
def test_a_damaged_served_version_suggests_the_rollback(production, command):
    """The hint was only a fresh ingest; the documented remedy is `flytegpt publish <older version>`."""
    store, (v1, v2) = production
    dense = store / v2 / DENSE_FILE
    dense.write_bytes(dense.read_bytes()[:-16])
    result = run(command, "anything", "--config", SAMPLE, "--store", str(store))
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert f"Roll back to an older version: flytegpt publish {v1} --store {store}" in text
    assert f"or publish a sound version over it: flytegpt ingest --config ... --store {store}" in text


def test_the_rollback_hint_never_names_a_version_that_cannot_serve_either(production):
    store, (v1, v2) = production
    for v in (v1, v2):
        dense = store / v / DENSE_FILE
        dense.write_bytes(dense.read_bytes()[:-16])
    result = run("search", "anything", "--config", SAMPLE, "--store", str(store))
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "flytegpt publish" not in text
    assert f"Publish a sound version over it: flytegpt ingest --config ... --store {store}" in text


# ---- a config without sources --------------------------------------------------------------------

@pytest.fixture
def no_sources(tmp_path: Path) -> Path:
    config = tmp_path / "d.toml"
    config.write_text("[retrieval]\nk = 5\n")
    return config


def test_a_config_without_sources_says_so_and_its_dry_run_fails(no_sources: Path, tmp_path: Path):
    """It was "every source is empty or skipped" and the dry run exited 0."""
    store = tmp_path / "st"
    dry = run("ingest", "--config", str(no_sources), "--store", str(store), "--dry-run")
    one_error_line(dry, "no chunks: the config has no [[sources]]", "an ingest would stop here")
    assert "0 chunks" in dry.stdout and "every source" not in dry.output
    as_json = run("ingest", "--config", str(no_sources), "--store", str(store), "--dry-run", "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["chunks"] == 0
    one_error_line(run("ingest", "--config", str(no_sources), "--store", str(store)),
                   "no chunks: the config has no [[sources]]")
    assert not store.exists()


def test_a_dry_run_whose_sources_give_nothing_exits_1(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    config = tmp_path / "c.toml"
    config.write_text('[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\n')
    result = run("ingest", "--config", str(config), "--dry-run")
    one_error_line(result, "no chunks: every source was empty or skipped", "an ingest would stop here")
    assert "no documents found" in " ".join(result.output.split())


# ---- --version, where -v goes, what the log level is --------------------------------------------

def test_version_option_prints_the_installed_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output == f"flytegpt {importlib.metadata.version('flytegpt')}\n"


def test_top_level_help_says_options_come_first_and_what_serve_logs():
    text = " ".join(run("--help").output.split())
    assert "they come before the command (flytegpt -v ingest ..., not flytegpt ingest -v ...)" in text
    assert ("-v info, -vv debug (without it: warnings; serve logs info, and with -vv debug, Slack's retries "
            "among it; Slack's event payloads only with FLYTEGPT_DEBUG_SLACK=1)") in text
    assert run("ask", "-v", "x").exit_code == 2  # after the command it is not an option


# ---- --help consistency, the empty question -----------------------------------------------------

def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_help_spells_config_keys_one_way_and_documents_its_options():
    for path, command in _commands(main):
        output = run(*path, "--help").output
        assert "[bot]." not in output and "[index]." not in output, path
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            assert param.help, (path, param.name)  # --mode had none
            if "--db" in param.opts:
                assert "--db PATH" in output, path
            if "--store" in param.opts:
                assert ".flytegpt/store in the working directory" in " ".join(output.split()), path


@pytest.mark.parametrize("question", ["", "  ", "\u200b"])
def test_ask_and_search_refuse_an_empty_question_alike(question: str, tmp_path: Path):
    """`ask ""` printed the Slack wording without `Error:`; `search ""` a usage error."""
    for command in ("ask", "search"):
        one_error_line(run(command, question, "--config", SAMPLE, "--store", str(tmp_path / "none")),
                       "the question is empty")
    result = run("ask", question, "--json", "--config", SAMPLE, "--store", str(tmp_path / "none"))
    assert result.exit_code == 1 and json.loads(result.stdout) == {"error": "question_rejected",
                                                                   "message": "the question is empty"}


# ---- eval --k -----------------------------------------------------------------------------------

def test_eval_refuses_a_k_below_10_and_says_why(tmp_path: Path):
    """--k 1 gave the k=10 metrics."""
    questions = Path(SAMPLE).parent / "QUESTIONS.jsonl"
    result = run("eval", str(questions), "--config", SAMPLE, "--store", str(tmp_path / "none"), "--k", "5")
    assert result.exit_code == 2 and "--k" in result.output and "10<=x<=1000" in result.output
    text = " ".join(run("eval", "--help").output.split())
    assert "at least 10. Recall, MRR and coverage score the top 10" in text


def test_demo_without_a_question_file_beside_the_config_says_what_it_needs(tmp_path: Path) -> None:
    config = tmp_path / "flytegpt.toml"
    config.write_text("")
    line = one_error_line(run("demo", "--config", str(config), "--store", str(tmp_path / "store")),
                          str(tmp_path / "QUESTIONS.jsonl"), "beside the config")
    assert "question" in line
    assert "QUESTIONS.jsonl beside the config file" in " ".join(run("demo", "--help").output.split())


def test_the_dry_run_counts_the_files_a_sources_rules_leave_out(tmp_path: Path) -> None:
    """skip_tests, include and exclude used to leave files out silently; the dry run counts them per
    source (not listed one by one: they are rules taking effect, not problems)."""
    result = run("ingest", "--config", SAMPLE, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    left_out = {s["name"]: s["left_out"] for s in json.loads(result.stdout)["sources"]}
    assert left_out["sample-code"] == 1  # code/tests/test_cache.py, by skip_tests
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.md", "b.md", "CHANGELOG.md"):
        (docs / name).write_text(f"# {name}\n\nSome text about {name}.\n")
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\nexclude = ["CHANGELOG.md"]\n')
    result = run("ingest", "--config", str(config), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "left out by rules" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("d "))
    cells = [c.strip() for c in row.split("│")[1:-1]]  # source, kind, documents, chunks, skipped, left out
    assert (cells[2], cells[4], cells[5]) == ("2", "0", "1"), row
