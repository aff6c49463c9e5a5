"""`flytegpt tune --store X` without --config: the bundled sample config, as for `flytegpt ingest`
(tests/bot/test_cli_ingest_versions_help.py), is refused over a store whose LATEST serves another index. Before,
it replaced X's chunk cache with the sample's (so the next real ingest chunked everything again)
and then failed anyway: the sample has too few training pairs to tune on."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support.index_data import published_versions

from flytegpt.bot.cli import main
from flytegpt.ingest.config import sample_config_path

SAMPLE = str(sample_config_path())
NO_CONFIG_ENV = {"FLYTEGPT_CONFIG": None, "COLUMNS": "300", "OPENAI_API_KEY": None}


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={**NO_CONFIG_ENV, **(env or {})})


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def store_state(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture
def production(tmp_path: Path) -> Path:
    """A store serving an index of other sources than the sample's, with a chunk cache of its own."""
    store = tmp_path / "prod"
    published_versions(store, (8,))
    (store / "chunk-cache").mkdir()
    (store / "chunk-cache" / "abc.jsonl.gz").write_bytes(b"the production corpus's chunks")
    return store


def test_tune_without_config_refuses_a_store_serving_another_index(production: Path) -> None:
    before = store_state(production)
    line = error_line(run("tune", "--store", str(production), "--quiet"))
    assert f"the index store {production} serves an index of code, docs, slack" in line
    assert "without --config this would tune on the bundled sample corpus and replace the store's chunk cache" in line
    assert "pass --config FILE" in line and f"--config {SAMPLE} to do it on purpose" in line
    assert store_state(production) == before  # nothing read into it, nothing written


@pytest.mark.parametrize("how", ["--config", "FLYTEGPT_CONFIG", "a new store"])
def test_tune_goes_ahead_when_the_sample_is_meant_or_the_store_is_new(production: Path, tmp_path: Path,
                                                                      how: str) -> None:
    """It reaches the tuning itself, which says the sample is too small to tune on."""
    store = tmp_path / "new" if how == "a new store" else production
    args, env = {"--config": (["--config", SAMPLE], {}), "FLYTEGPT_CONFIG": ([], {"FLYTEGPT_CONFIG": SAMPLE}),
                 "a new store": ([], {})}[how]
    line = error_line(run("tune", *args, "--store", str(store), "--quiet", env=env))
    assert "training pairs in this corpus" in line


def test_tune_help_says_so() -> None:
    text = " ".join(run("tune", "--help").output.split())
    assert "Without --config (and $FLYTEGPT_CONFIG unset) it is refused, as `flytegpt ingest` is" in text
