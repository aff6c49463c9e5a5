"""Bulk Q&A on flytekit's local executor, against an index the ingest workflow published.

Offline (no key: the offline answerer, labelled as such) and with the chat model's key coming
through flytekit's secret mechanism to the OpenAI-compatible stand-in on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from support.openai_server import OpenAIStandIn

from flytegpt.ingest.artifact import read_latest
from flytegpt.ingest.config import sample_config_path

pytestmark = pytest.mark.slow  # runs the workflow: embeds real text


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The sample corpus ingested once by the workflow (in-process, task cache off)."""
    tmp = tmp_path_factory.mktemp("bulk")
    shutil.copytree(sample_config_path().parent, tmp / "sample")
    config, store = tmp / "sample" / "flytegpt.toml", tmp / "store"
    saved = {k: os.environ.get(k) for k in ("FLYTE_LOCAL_CACHE_ENABLED", "HOME")}
    os.environ.update(FLYTE_LOCAL_CACHE_ENABLED="false", HOME=str(tmp))
    try:
        from flytegpt.flyte.ingest_wf import ingest_wf

        version = ingest_wf(config_path=str(config), store=str(store))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"config": str(config), "store": str(store), "version": version, "tmp": tmp}


SETTINGS_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FLYTEGPT_CHAT_MODEL")


@pytest.fixture()
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in (*SETTINGS_ENV, "_FSEC_FLYTEGPT_OPENAI_API_KEY", "FLYTEGPT_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    yield
    leaked = [v for v in SETTINGS_ENV if v in os.environ]
    assert not leaked, f"the task left {leaked} in the test process"


def test_questions_and_a_question_file_give_json_and_markdown_reports(
    published: dict, local: None, tmp_path: Path
) -> None:
    from flytekit.types.file import FlyteFile

    from flytegpt.flyte.bulk_qa_wf import bulk_qa_wf

    qfile = tmp_path / "questions.jsonl"
    qfile.write_text('{"question": "How do I make a task retry?", "gold": []}\n# a comment\n'
                     "How can a task read an API token?\n")
    reports = bulk_qa_wf(config_path=published["config"], store=published["store"],
                         questions=["How do I cache a task?"], questions_file=FlyteFile(str(qfile)))
    results = json.loads(Path(reports.json_report.path).read_text())
    assert [r["question"] for r in results] == [
        "How do I cache a task?", "How do I make a task retry?", "How can a task read an API token?"
    ]
    assert all(r["mode"] == "offline" for r in results)  # no key: offline, and it says so
    assert all(r["index_version"] == published["version"] == read_latest(published["store"]) for r in results)
    assert results[0]["citations"] and all(c["url"] for c in results[0]["citations"])
    markdown = Path(reports.markdown_report.path).read_text()
    assert "How do I cache a task?" in markdown and results[0]["citations"][0]["url"] in markdown


def test_the_chat_model_key_arrives_as_a_flyte_secret(
    published: dict, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flytegpt.flyte.bulk_qa_wf import bulk_qa_wf

    # flytekit's local form of the `flytegpt/openai_api_key` secret (never a workflow input).
    monkeypatch.setenv("_FSEC_FLYTEGPT_OPENAI_API_KEY", "sk-from-the-secret")
    with OpenAIStandIn() as server:
        server.reply = "Set `cache=True` and a `cache_version` [1]."
        reports = bulk_qa_wf(config_path=published["config"], store=published["store"],
                             questions=["How do I cache a task?"], openai_base_url=server.base_url)
        (result,) = json.loads(Path(reports.json_report.path).read_text())
        assert result["mode"] == "llm" and result["answer"].startswith("Set `cache=True`")
        assert result["citations"][0]["n"] == 1
        assert server.requests[-1].headers.get("authorization") == "Bearer sk-from-the-secret"


def test_the_same_question_twice_and_questions_of_nothing_cost_one_model_call(
    published: dict, local: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from flytekit.types.file import FlyteFile

    from flytegpt.flyte.bulk_qa_wf import bulk_qa_wf

    monkeypatch.setenv("_FSEC_FLYTEGPT_OPENAI_API_KEY", "sk-from-the-secret")
    qfile = tmp_path / "questions.txt"
    qfile.write_text("How do I cache a task?\n\U0001f600\n\u200b\n?!\n", encoding="utf-8")
    asked = ["How do I cache a task?", " How do I  cache a task? ", "\u200b", "\ud83d", "   "]
    with OpenAIStandIn() as server:
        server.reply = "Set `cache=True` [1]."
        reports = bulk_qa_wf(config_path=published["config"], store=published["store"], questions=asked,
                             questions_file=FlyteFile(str(qfile)), openai_base_url=server.base_url)
        assert len(server.requests) == 1
    results = json.loads(Path(reports.json_report.path).read_text(encoding="utf-8"))
    assert [r["question"] for r in results] == [  # a blank entry is no question; the rest keep their place
        "How do I cache a task?", "How do I  cache a task?", "\u200b", "\ufffd",
        "How do I cache a task?", "\U0001f600", "\u200b", "?!"]
    assert [r["mode"] for r in results] == ["llm", "llm", "error", "error", "llm", "error", "error", "error"]
    assert {r["answer"] for r in results if r["mode"] == "llm"} == {"Set `cache=True` [1]."}
    assert all("no letters or digits" in r["error"] for r in results if r["mode"] == "error")
    markdown = Path(reports.markdown_report.path).read_text(encoding="utf-8")
    assert markdown.count("Not asked: the question has no letters or digits") == 5


def test_no_questions_is_an_error(published: dict, local: None) -> None:
    from flytegpt.flyte.bulk_qa_wf import bulk_qa_wf

    with pytest.raises(Exception, match="no questions"):
        bulk_qa_wf(config_path=published["config"], store=published["store"], questions=["  "])
    for workers in (0, 33, 1000):  # a launch on a cluster does not pass through `python -m flytegpt.flyte`
        with pytest.raises(Exception, match=r"--workers must be at least 1 and at most 32 \(a whole number\), not"):
            bulk_qa_wf(config_path=published["config"], store=published["store"], questions=["Why?"],
                       workers=workers)


def test_a_question_with_half_an_emoji_is_answered_in_utf8_reports(published: dict, local: None) -> None:
    """A lone surrogate (a JSON "\\ud83d" cut from its pair) failed writing the UTF-8 reports."""
    from flytegpt.flyte.bulk_qa_wf import bulk_qa_wf

    reports = bulk_qa_wf(config_path=published["config"], store=published["store"],
                         questions=["How do I cache a task \ud83d?"])
    (result,) = json.loads(Path(reports.json_report.path).read_text(encoding="utf-8"))
    assert result["question"] == "How do I cache a task \ufffd?" and result["citations"]


@pytest.mark.parametrize("args, error", [(["--questions", "[not json"], "Invalid value"),
                                         (["--questions", "[5, null]"], "Failed argument 'questions'"),
                                         # a ValueError and a missing file: 98-line tracebacks before
                                         (["--questions", "[]"], "no questions"),
                                         (["--questions_file", "/no/such/questions.txt"],
                                          "file not found: /no/such/questions.txt")])
def test_a_local_run_with_questions_that_do_not_parse_says_so(tmp_path: Path, args: list[str], error: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flytegpt.flyte", "bulk_qa_wf", "--config_path", str(sample_config_path()),
         "--store", str(tmp_path / "store"), *args],
        cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode != 0 and error in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# --- a killed attempt and its retry, through flytekit's container entrypoint -----------------

ENTRYPOINT = """\
import sys

from flytegpt.bot.answering import bulk
from flytegpt.flyte import bulk_checkpoint

bulk.PROGRESS_EVERY_S = 0.0  # a progress tick (and a checkpoint) after every answer
bulk_checkpoint.EVERY_S = 0.0
from flytekit.bin.entrypoint import execute_task_cmd

execute_task_cmd.main(sys.argv[1:])
"""


def _attempt(published: dict, tmp: Path, n: int, server: OpenAIStandIn, prev: Path | None,
             raw: Path | None = None) -> subprocess.Popen:
    """Attempt `n` of the answer task as Flyte runs it in its container: `pyflyte-execute` with
    the task's own command line, its checkpoint directory and the previous attempt's (`raw`: where
    the reports are uploaded)."""
    from flytekit.configuration import ImageConfig, SerializationSettings

    from flytegpt.flyte.bulk_qa_wf import answer_questions

    command = answer_questions.get_default_command(SerializationSettings(image_config=ImageConfig.auto_default_image()))
    values = {"{{.input}}": str(tmp / "inputs.pb"), "{{.outputPrefix}}": str(tmp / f"out{n}"),
              "{{.rawOutputDataPrefix}}": str(raw or tmp / f"raw{n}"),
              "{{.checkpointOutputPrefix}}": str(tmp / f"cp{n}"), "{{.prevCheckpointPrefix}}": str(prev) if prev else ""}
    args = [values.get(a, a) for a in command[1:]]
    (tmp / "entrypoint.py").write_text(ENTRYPOINT)
    env = {**os.environ, "HOME": str(tmp), "HF_HUB_OFFLINE": "1", "_FSEC_FLYTEGPT_OPENAI_API_KEY": "sk-test"}
    return subprocess.Popen([sys.executable, str(tmp / "entrypoint.py"), *args], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _inputs(published: dict, path: Path, questions: list[str], base_url: str) -> None:
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine
    from flytekit.types.file import FlyteFile

    from flytegpt.flyte.bulk_qa_wf import answer_questions

    values = {"config_path": published["config"], "store": published["store"], "version": "",
              "questions": questions, "questions_file": None, "openai_base_url": base_url,
              "chat_model": "", "workers": 1}
    types = {k: v for k, v in answer_questions.python_interface.inputs.items()}
    types["questions_file"] = typing.Optional[FlyteFile]
    lm = TypeEngine.dict_to_literal_map(FlyteContextManager.current_context(), values, types)
    path.write_bytes(lm.to_flyte_idl().SerializeToString())


def _saved(cp: Path) -> int:
    import gzip

    files = list(cp.glob("*")) if cp.is_dir() else []
    if not files:
        return 0
    try:
        return len(json.loads(gzip.decompress(files[0].read_bytes()))["answered"])
    except (OSError, ValueError, EOFError):
        return 0  # caught half-written


def test_a_killed_attempt_is_resumed_by_its_retry_from_the_checkpoint(published: dict, local: None,
                                                                       tmp_path: Path) -> None:
    """A preempted node or a killed pod must not lose the answers the run already paid for: the
    retry asks the model only what is still unanswered, and the report has every question, in
    order, on one index version."""
    import signal
    import time

    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.models.literals import LiteralMap
    from flyteidl.core import literals_pb2

    questions = [f"How do I cache task number {i}?" for i in range(12)]
    with OpenAIStandIn() as server:
        _inputs(published, tmp_path / "inputs.pb", questions, server.base_url)
        server.reply, server.token_delay, server.stream_tokens = "First attempt [1].", 0.15, 4
        first = _attempt(published, tmp_path, 1, server, None)
        deadline = time.monotonic() + 180
        while _saved(tmp_path / "cp1") < 3:
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # no clean-up, no exit handler: a node that is gone
        first.wait()
        kept = _saved(tmp_path / "cp1")
        assert 3 <= kept < len(questions)

        server.reset()
        server.reply = "Second attempt [1]."
        second = _attempt(published, tmp_path, 2, server, tmp_path / "cp1")
        output = second.communicate(timeout=240)[0]
        assert second.returncode == 0 and not (tmp_path / "out2" / "error.pb").exists(), output
        assert len(server.requests) == len(questions) - kept  # only the unanswered ones

    pb = literals_pb2.LiteralMap()
    pb.ParseFromString((tmp_path / "out2" / "outputs.pb").read_bytes())
    outputs = LiteralMap.from_flyte_idl(pb)
    uri = outputs.literals["json_report"].scalar.blob.uri
    local_copy = tmp_path / "answers.json"
    FlyteContextManager.current_context().file_access.get_data(uri, str(local_copy))
    results = json.loads(local_copy.read_text())
    assert [r["question"] for r in results] == questions
    assert [r["answer"].split(" [")[0] for r in results] == ["First attempt"] * kept + ["Second attempt"] * (
        len(questions) - kept)
    assert {r["index_version"] for r in results} == {published["version"]}
    assert f"{kept} of {len(questions)} questions answered by an earlier attempt" in output


def _report(tmp: Path, out: str) -> list[dict]:
    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.models.literals import LiteralMap
    from flyteidl.core import literals_pb2

    pb = literals_pb2.LiteralMap()
    pb.ParseFromString((tmp / out / "outputs.pb").read_bytes())
    uri = LiteralMap.from_flyte_idl(pb).literals["json_report"].scalar.blob.uri
    FlyteContextManager.current_context().file_access.get_data(uri, str(tmp / "answers.json"))
    return json.loads((tmp / "answers.json").read_text())


def test_a_retry_after_a_failed_upload_asks_only_what_the_model_did_not_answer(published: dict, local: None,
                                                                               tmp_path: Path) -> None:
    """The reports cannot be uploaded (a blob-store error, which Flyte retries): the retry must not
    ask again what was answered (the last answers were saved only by the periodic tick, i.e. never
    for the last question), but must ask the model again where it wrote nothing and the answer fell
    back to quoted passages."""
    from flyteidl.core import errors_pb2

    questions = ["How do I cache a task?", "How do I make a task retry?", "How can a task read an API token?"]
    with OpenAIStandIn() as server:
        _inputs(published, tmp_path / "inputs.pb", questions, server.base_url)
        server.reply = lambda body: "" if questions[1] in json.dumps(body) else "First attempt [1]."
        (tmp_path / "blob-store").write_text("a file, so nothing can be uploaded under it")
        first = _attempt(published, tmp_path, 1, server, None, raw=tmp_path / "blob-store" / "raw")
        output = first.communicate(timeout=240)[0]
        assert not (tmp_path / "out1" / "outputs.pb").exists()
        error = errors_pb2.ErrorDocument()
        error.ParseFromString((tmp_path / "out1" / "error.pb").read_bytes())
        assert "blob-store" in error.error.message, output  # the upload failed, after every answer
        assert len(server.requests) == 4  # the second question twice (an empty answer is retried once)

        server.reset()
        server.reply = "Second attempt [1]."
        second = _attempt(published, tmp_path, 2, server, tmp_path / "cp1")
        output = second.communicate(timeout=240)[0]
        assert second.returncode == 0 and not (tmp_path / "out2" / "error.pb").exists(), output
        assert len(server.requests) == 1 and questions[1] in json.dumps(server.requests[0].body)

    results = _report(tmp_path, "out2")
    assert [r["question"] for r in results] == questions
    assert [(r["mode"], r["answer"].split(" [")[0]) for r in results] == [
        ("llm", "First attempt"), ("llm", "Second attempt"), ("llm", "First attempt")]
    assert "2 of 3 questions answered by an earlier attempt" in output
