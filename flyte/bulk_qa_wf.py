"""Bulk Q&A: many questions -> a JSON and a Markdown report of answers with their sources.

The seed's "bulk inference", on the published index: useful to review answer quality after
a re-ingest, or to answer a backlog of questions at once. Answering is flytegpt.bot.answering's, the
same code the Slack bot runs; one failing question becomes an `error` entry, not a failed run.

The chat model's key is a Flyte Secret, never an input (flyte/credentials.py). Locally, export
OPENAI_API_KEY; without a key the report is written by the offline answerer (quoted sources,
labelled mode "offline").

Run locally:
    python -m flytegpt.flyte bulk_qa_wf --config_path ingest/sample/flytegpt.toml \
        --store /tmp/store --questions '["How do I cache a task?"]'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, List, NamedTuple, Optional

from flytekit import current_context, task, workflow
from flytekit.types.file import FlyteFile

from flytegpt.flyte import credentials, deploy, resources
from flytegpt.flyte.bulk_checkpoint import BulkCheckpoint, task_checkpoint
from flytegpt.flyte.handoff import load_task_config
from flytegpt.flyte.image import IMAGE
from flytegpt.flyte.retry import recoverable_errors
from flytegpt.flyte.task_logs import task_logging

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.ingest.config import Config
    from flytegpt.ingest.search import HybridSearcher

log = logging.getLogger(__name__)


class Reports(NamedTuple):
    json_report: FlyteFile
    markdown_report: FlyteFile


def parse_questions(text: str) -> list[str]:
    """One question per line; JSONL lines with a "question" field (the eval format) work too."""
    questions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line)["question"]).strip()
            except (ValueError, KeyError, TypeError):
                pass
        if line:
            questions.append(line)
    return questions


def _open_index(config: "Config", version: str, answered: dict[int, dict]) -> "HybridSearcher":
    """`version`, else the version the previous attempt answered on (a retry must not mix two
    indexes in one report), else LATEST."""
    from flytegpt.ingest.artifact import ArtifactError
    from flytegpt.ingest.search import HybridSearcher

    earlier = next((r.get("index_version") for r in answered.values() if r.get("index_version")), None)
    if not version and earlier:
        try:
            return HybridSearcher.open(config, earlier)
        except ArtifactError as e:
            log.warning("bulk: index %s of the previous attempt is gone (%s); answering again on LATEST", earlier, e)
    return HybridSearcher.open(config, version or None)


@task(container_image=IMAGE, requests=resources.ANSWER, secret_requests=[credentials.OPENAI_API_KEY], retries=2,
      timeout=resources.ANSWER_TIMEOUT, interruptible=resources.INTERRUPTIBLE)
def answer_questions(
    config_path: str,
    store: str,
    version: str,
    questions: Optional[List[str]],
    questions_file: Optional[FlyteFile],
    openai_base_url: str,
    chat_model: str,
    workers: int,
) -> Reports:
    """Answer every question on one index version (LATEST unless `version` is given), `workers`
    at a time (the chat model is remote: the task mostly waits for it).

    A retried attempt (a preempted node, a killed pod) resumes from its predecessor's checkpoint
    (flyte/bulk_checkpoint.py) on the index version that one used, when it is still there; so does
    one after a transient failure (the store unreachable for a moment), which Flyte retries."""
    task_logging()
    with recoverable_errors():
        return _answer_questions(config_path, store, version, questions, questions_file, openai_base_url,
                                 chat_model, workers)


def _answer_questions(config_path: str, store: str, version: str, questions: Optional[List[str]],
                      questions_file: Optional[FlyteFile], openai_base_url: str, chat_model: str,
                      workers: int) -> Reports:
    from flytegpt.bot.answering import Answerer, write_report
    from flytegpt.bot.answering.bulk import check_workers
    from flytegpt.ingest.config import Settings
    from flytegpt.ingest.models import valid_unicode

    # Checked here, not only by `python -m flytegpt.flyte`: a launch on a cluster does not pass through it.
    check_workers(workers, "--workers")
    asked = [q.strip() for q in questions or [] if q.strip()]
    if questions_file is not None:
        asked += parse_questions(Path(questions_file.download()).read_text(encoding="utf-8"))
    asked = [valid_unicode(q) for q in asked]  # half an emoji from a JSON escape: the reports are UTF-8
    if not asked:
        raise ValueError("no questions: pass --questions and/or --questions_file")

    # Explicit values over the environment: nothing leaks into the process (local runs share it).
    overrides: dict[str, str | None] = {"OPENAI_API_KEY": credentials.secret_value(credentials.OPENAI_API_KEY)}
    if openai_base_url:
        overrides["OPENAI_BASE_URL"] = openai_base_url
    if chat_model:
        overrides["FLYTEGPT_CHAT_MODEL"] = chat_model
    settings = Settings(**overrides)
    config = load_task_config(config_path, store)
    checkpoint = BulkCheckpoint(task_checkpoint(), asked)
    answered = checkpoint.restore()
    searcher = _open_index(config, version, answered)
    answered = {i: r for i, r in answered.items() if r.get("index_version") == searcher.version}
    if answered:  # each attempt reads only its predecessor's checkpoint: carry the answers on at once
        checkpoint.save(answered, force=True)
    answerer = Answerer(config, settings, lambda: searcher)
    log.info("answering %d questions on index %s (%s, %d at a time)", len(asked) - len(answered),
             searcher.version, "chat model" if answerer.llm_enabled else "offline", workers)
    results = answerer.answer_many(asked, workers=workers, answered=answered, on_progress=checkpoint.save)
    # Saved once more now: a failure writing or uploading the reports (retried by Flyte) must not
    # ask again what was answered since the last periodic save, for a short backlog all of it.
    checkpoint.save(dict(enumerate(results)), force=True)

    out = Path(current_context().working_directory) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    write_report(results, out / "answers.json", format="json")
    write_report(results, out / "answers.md", format="markdown")
    return Reports(FlyteFile(str(out / "answers.json")), FlyteFile(str(out / "answers.md")))


@workflow
def bulk_qa_wf(
    config_path: str = deploy.CONFIG,
    store: str = deploy.STORE,
    questions: Optional[List[str]] = None,
    questions_file: Optional[FlyteFile] = None,
    version: str = "",
    openai_base_url: str = "",
    chat_model: str = "",
    workers: int = 4,
) -> Reports:
    """Answer a list of questions and/or a file of them (one per line, or JSONL with "question"),
    `workers` at a time (1 to 32, bot/answering/bulk.py MAX_WORKERS; mind the chat model's rate limit).

    A question asked twice is asked of the model once; one with no letter or digit is not asked
    (an error entry says so)."""
    return answer_questions(
        config_path=config_path,
        store=store,
        version=version,
        questions=questions,
        questions_file=questions_file,
        openai_base_url=openai_base_url,
        chat_model=chat_model,
        workers=workers,
    )
