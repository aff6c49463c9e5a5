"""What a user sees when `--out` names the database, when the index
store cannot be read, and from `ask`/`eval --json`: one `Error:` line or one JSON document, never a
traceback, and the database untouched."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.ingest.config import sample_config_path

SAMPLE = str(sample_config_path())


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "300", **(env or {})})


def one_error_line(result, *needles: str, traceback: bool = False) -> str:
    """The command failed with exit 1 and said so in one `Error:` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert traceback or "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def feedback_db(tmp_path: Path) -> Path:
    from flytegpt.bot.answering.types import Answer, Citation
    from flytegpt.bot.slack.feedback import FeedbackStore

    db = tmp_path / "fb.sqlite3"
    fb = FeedbackStore(db)
    cited = [Citation(1, "Caching", "https://e.org/caching", "sample-docs:caching.md")]
    fid = fb.record_answer(Answer("how do i bust the cache", "How do I invalidate the cache?", "Bump it [1].",
                                  cited, "llm", "v1"), surface="mention")
    fb.record_vote(fid, "up", user="U1", channel="C1")
    fb.close()
    return db


# ---- --out naming --db ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["feedback", "export"], ["feedback", "questions"],
                                     ["report", "--config", SAMPLE, "--no-store"]])
def test_an_out_that_is_the_database_by_another_path_is_refused_and_the_database_kept(
        command, feedback_db: Path, tmp_path: Path, monkeypatch):
    """It was `wrote 0 feedback record(s)`, exit 0, and the database emptied (or replaced by the HTML report)."""
    monkeypatch.chdir(tmp_path)
    before = feedback_db.read_bytes()
    other_path = f"../{tmp_path.name}/./{feedback_db.name}"
    result = run(*command, "--db", feedback_db.name, "--out", other_path)
    one_error_line(result, "is the database")
    assert feedback_db.read_bytes() == before


def test_a_report_that_fails_half_way_leaves_the_old_output_whole(feedback_db: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    out.write_text("last week's report")
    def full_disk(fd):  # the disk fills up while the page is flushed to it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    result = run("report", "--db", str(feedback_db), "--config", SAMPLE, "--no-store", "--out", str(out))
    monkeypatch.undo()
    one_error_line(result, "No space left")
    assert out.read_text() == "last week's report"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left


def test_a_report_is_still_written(feedback_db: Path, tmp_path: Path):
    out = tmp_path / "new" / "report.html"
    result = run("report", "--db", str(feedback_db), "--config", SAMPLE, "--no-store", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


# ---- store read errors are one line ------------------------------------------------------------

@pytest.mark.parametrize("command", [["versions"], ["publish", "20990101T000000Z-00000000"], ["ask", "hi"],
                                     ["search", "hi"], ["chat"]])
def test_a_store_that_is_a_file_is_one_error_line(command, tmp_path: Path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run(*command, "--config", SAMPLE, "--store", str(afile))
    one_error_line(result, "is a file, not a folder", str(afile))
    assert afile.read_text() == "x"


def test_eval_and_report_with_a_store_that_is_a_file(tmp_path: Path, feedback_db: Path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    questions = Path(SAMPLE).parent / "QUESTIONS.jsonl"
    one_error_line(run("eval", str(questions), "--config", SAMPLE, "--store", str(afile)), "is a file, not a folder")
    result = run("report", "--db", str(feedback_db), "--config", SAMPLE, "--store", str(afile),
                 "--out", str(tmp_path / "r.html"))
    one_error_line(result, "cannot read the index store", "is a file, not a folder")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("command", [["versions"], ["publish", "20990101T000000Z-00000000"], ["ask", "hi"]])
def test_a_latest_that_is_a_folder_is_one_error_line(command, tmp_path: Path):
    (tmp_path / "LATEST").mkdir()
    one_error_line(run(*command, "--config", SAMPLE, "--store", str(tmp_path)), "LATEST")


def test_verbose_still_shows_the_traceback(tmp_path: Path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("-v", "versions", "--store", str(afile))
    one_error_line(result, "is a file, not a folder", traceback=True)
    assert "Traceback" in result.stderr and "NotADirectoryError" in result.stderr


def test_ingest_into_a_store_that_is_a_file_says_so(tmp_path: Path):
    """It was `cannot write to the index store afile: [Errno 17] File exists`."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_error_line(run("ingest", "--config", SAMPLE, "--store", str(afile)),
                          "cannot write to the index store", "is a file, not a folder")
    assert "File exists" not in line
    line = one_error_line(run("ingest", "--config", SAMPLE, "--store", str(afile / "sub")),
                          "cannot write to the index store", "which is a file, not a folder")


S3_OFFLINE = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}


def test_missing_s3_credentials_are_one_error_line():
    env = {**S3_OFFLINE, "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
           "AWS_PROFILE": None, "FLYTEGPT_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
    for command in (["versions"], ["ask", "hi", "--config", SAMPLE]):
        result = run(*command, "--store", "s3://fgbucket/fg", env=env)
        one_error_line(result, "cannot read the index store s3://fgbucket/fg")


def test_an_unreachable_s3_endpoint_is_one_error_line():
    env = {**S3_OFFLINE, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "FLYTEGPT_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
    result = run("versions", "--store", "s3://fgbucket/fg", env=env)
    one_error_line(result, "cannot read the index store s3://fgbucket/fg")


def test_botocore_errors_become_a_message_and_other_errors_stay_errors():
    botocore = pytest.importorskip("botocore.exceptions")
    from flytegpt.bot.cli_options import storage_error_message

    message = storage_error_message(botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b"))
    assert message.startswith("EndpointConnectionError:") and "http://127.0.0.1:1/b" in message
    assert storage_error_message(botocore.NoCredentialsError()).startswith("NoCredentialsError:")
    assert storage_error_message(KeyError("x")) is None
    assert storage_error_message(BrokenPipeError(errno.EPIPE, "Broken pipe")) is None


# ---- odd input: a --since past the calendar, a missing bucket, unknown keys in eval questions ----

def test_report_since_beyond_the_calendar_gets_the_since_message(feedback_db: Path, tmp_path: Path):
    """It was `Error: year -271764 is out of range`."""
    result = run("report", "--db", str(feedback_db), "--config", SAMPLE, "--no-store", "--since", "99999999d",
                 "--out", str(tmp_path / "r.html"))
    one_error_line(result, "--since must be a positive duration", "99999999d")
    assert not (tmp_path / "r.html").exists()


def test_snapshot_to_a_missing_bucket_names_the_url(feedback_db: Path):
    from support.moto_s3 import moto_endpoint

    with moto_endpoint("flytegpt-snap"):
        result = run("feedback", "snapshot", "--db", str(feedback_db), "--to", "s3://no-such-bucket-a19/fb.sqlite3")
    one_error_line(result, "s3://no-such-bucket-a19/fb.sqlite3")


def test_eval_question_lines_with_unknown_keys_are_an_error_naming_line_and_key(tmp_path: Path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "How do I cache?", "gold": ["sample-docs:caching.md"]}) + "\n"
                         + json.dumps({"question": "How do I cache?", "gold": ["a:b"], "golds": ["a:c"]}) + "\n")
    one_error_line(run("eval", str(questions), "--config", SAMPLE, "--store", str(tmp_path / "none")),
                   "q.jsonl:2", "'golds'")


def test_eval_question_files_in_the_repository_still_load():
    from flytegpt.ingest.evaluation import load_questions

    root = Path(__file__).resolve().parents[2]
    for path in [Path(SAMPLE).parent / "QUESTIONS.jsonl", *sorted((root / "tests" / "eval").glob("*.jsonl"))]:
        assert load_questions(path)


def test_the_readme_lists_the_s3_endpoint_variable():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert any(line.startswith("|") and "FLYTEGPT_S3_ENDPOINT_URL" in line for line in readme.splitlines())


# ---- with an index ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[str, str]:
    corpus = tmp_path_factory.mktemp("corpus") / "sample"
    shutil.copytree(Path(SAMPLE).parent, corpus)
    store = str(tmp_path_factory.mktemp("store"))
    result = run("ingest", "--config", str(corpus / "flytegpt.toml"), "--store", store, "--quiet")
    assert result.exit_code == 0, result.output
    return str(corpus / "flytegpt.toml"), store


@pytest.mark.slow
@pytest.mark.parametrize("question", ["\u200b", "\u200b\u2060 \ufeff"])
def test_ask_a_question_of_zero_width_characters_is_the_empty_question(question, indexed):
    """It searched and printed "I couldn't find this" with the closest sources."""
    config, store = indexed
    empty = run("ask", "", "--config", config, "--store", store, env={"OPENAI_API_KEY": None})
    result = run("ask", question, "--config", config, "--store", store, env={"OPENAI_API_KEY": None})
    assert result.exit_code == empty.exit_code == 1
    assert result.output == empty.output and "empty" in result.output
    assert "Sources" not in result.output


@pytest.mark.slow
def test_ask_json_refusing_a_too_long_question_prints_one_json_object(indexed):
    """stdout was empty and the refusal went to stderr."""
    config, store = indexed
    result = run("ask", "x" * 200_000, "--config", config, "--store", store, "--json", env={"OPENAI_API_KEY": None})
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["error"] == "question_rejected" and data["message"]
    empty = run("ask", "\u200b", "--config", config, "--store", store, "--json", env={"OPENAI_API_KEY": None})
    assert empty.exit_code == 1 and json.loads(empty.stdout)["error"] == "question_rejected"


@pytest.mark.slow
def test_eval_json_stdout_is_one_json_document(indexed):
    config, store = indexed
    questions = Path(config).parent / "QUESTIONS.jsonl"
    result = run("eval", str(questions), "--config", config, "--store", store, "--json", "--misses", "--ranks")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] >= 3 and "recall@5" in report
    assert "retrieval, index" in result.stderr and "overall" in result.stderr  # the table, for a human
    plain = run("eval", str(questions), "--config", config, "--store", store)
    assert plain.exit_code == 0 and "overall" in plain.stdout

