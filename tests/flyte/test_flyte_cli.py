"""`python -m flytegpt.flyte WORKFLOW --input value`: inputs that are not what the workflow takes are
refused by name, before anything runs, and `--help` reads as a sentence with readable types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flytegpt.ingest.config import sample_config_path


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flytegpt.flyte", *args], cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "FLYTE_LOCAL_CACHE_ENABLED": "false"},
        capture_output=True, text=True, timeout=240,
    )


def bulk(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run(tmp_path, "bulk_qa_wf", "--config_path", str(sample_config_path()), "--store",
               str(tmp_path / "store"), *args)


@pytest.mark.parametrize("workers", ["1.5", "true", "1e3", "4.0", "four", "[4]"])
def test_workers_that_are_not_a_whole_number_are_refused_by_name(tmp_path: Path, workers: str) -> None:
    proc = bulk(tmp_path, "--questions", '["How do I cache a task?"]', "--workers", workers)
    assert proc.returncode == 2, proc.stderr  # click's usage error: nothing ran
    assert f"Error: Invalid value for '--workers': expected a whole number, not '{workers}'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_more_workers_than_the_maximum_are_refused(tmp_path: Path) -> None:
    proc = bulk(tmp_path, "--questions", '["How do I cache a task?", "what is map_task"]', "--workers", "1000")
    assert proc.returncode == 1
    assert "--workers must be at least 1 and at most 32 (a whole number), not 1000" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "store").exists()  # refused before the index is opened


@pytest.mark.parametrize("questions, said", [
    ("How do I cache a task?", "expected a JSON list, such as '[\"How do I cache a task?\"]'"),
    ('"How do I cache a task?"', "expected a JSON list, such as '[\"How do I cache a task?\"]', not str"),
    ('{"question": "How do I cache a task?"}', "not dict"),
])
def test_questions_that_are_not_a_json_list_name_the_option(tmp_path: Path, questions: str, said: str) -> None:
    proc = bulk(tmp_path, "--questions", questions)
    assert proc.returncode == 2
    assert "Error: Invalid value for '--questions': " in proc.stderr and said in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_inputs_take_the_dashed_spelling_of_every_other_cli_too(tmp_path: Path) -> None:
    proc = run(tmp_path, "bulk_qa_wf", "--config-path", str(sample_config_path()), "--store", str(tmp_path / "store"),
               "--questions", '["How do I cache a task?"]', "--workers", "1000")
    assert proc.returncode == 1, proc.stderr  # --config-path was taken: the run got as far as checking workers
    assert "--workers must be at least 1 and at most 32" in proc.stderr


def test_a_local_run_without_a_config_reads_the_installed_sample_from_any_folder(tmp_path: Path) -> None:
    """The workflows' default config path is relative to the image's working directory; a local
    run outside the checkout reads the installed package's sample, as `flytegpt` does."""
    proc = run(tmp_path, "bulk_qa_wf", "--store", str(tmp_path / "store"), "--questions", '["How do I cache a task?"]')
    assert proc.returncode == 1
    assert "config file not found" not in proc.stderr
    assert f"no published index in {tmp_path / 'store'}" in proc.stderr  # the config was read: the store is next


def test_help_has_the_whole_summary_and_readable_types(tmp_path: Path) -> None:
    proc = run(tmp_path, "bulk_qa_wf", "--help")
    assert proc.returncode == 0, proc.stderr
    summary = " ".join(proc.stdout.split("Options:")[0].split())
    assert ('Answer a list of questions and/or a file of them (one per line, or JSONL with "question"), '
            "`workers` at a time (1 to 32,") in summary
    assert summary.endswith("mind the chat model's rate limit).")
    options = " ".join(proc.stdout.split("Options:")[1].split())
    assert "--workers INTEGER default: 4" in options
    assert "--questions JSON_LIST" in options and "--questions_file, --questions-file PATH" in options
    assert "<class" not in proc.stdout and "typing." not in proc.stdout


def test_true_or_false_only_for_a_yes_no_input() -> None:
    """No workflow takes one today; `bool(json.loads("1"))` would have made "1" and "0" true/false."""
    from flytegpt.flyte.__main__ import _parse

    assert _parse("true", bool) is True and _parse("False", bool) is False
    for value in ("1", "yes", "", "null"):
        with pytest.raises(ValueError, match="expected true or false"):
            _parse(value, bool)
    assert _parse("3", int) == 3 and _parse("2.5", float) == 2.5 and _parse("2", float) == 2.0
    for value in ("true", "2.5", "NaN"):
        with pytest.raises(ValueError, match="expected a whole number"):
            _parse(value, int)
