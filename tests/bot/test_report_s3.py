"""The deployment path of the question log: the bot copies its database to an s3:// URL and the
report (the weekly_report task) reads it from there. S3 is moto's server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from support.moto_s3 import moto_endpoint
from support.tools import missing_tool

try:
    import boto3
    import s3fs  # noqa: F401
except ImportError as e:  # the dev extra installs them
    missing_tool(f"{e.name} is not installed")

from flytegpt.bot.answering import Citation  # noqa: E402
from flytegpt.bot.answering.types import Answer  # noqa: E402
from flytegpt.bot.report import ReportOptions, build_report  # noqa: E402
from flytegpt.bot.report.snapshot import SnapshotJob  # noqa: E402
from flytegpt.bot.slack.feedback import FeedbackStore  # noqa: E402
from flytegpt.ingest.config import Config  # noqa: E402

BUCKET = "flytegpt-report"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint(BUCKET) as url:
        yield url


def test_the_snapshot_travels_through_s3_to_the_report(endpoint: str, tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)  # the bot's live database
    try:
        for i in range(3):
            answer = Answer(f"question {i}", f"question {i}", "text", [Citation(1, "Caching", "u", "docs:caching.md")],
                            "llm", "v1")
            store.record_answer(answer, surface="mention", channel="C01ASK001", user=f"U0ASKER{i}", latency_s=1.0 + i,
                                channel_type="channel")
        url = f"s3://{BUCKET}/flytegpt/feedback.sqlite3"
        job = SnapshotJob(Config.model_validate({"bot": {"feedback_db": str(db), "feedback_snapshot": url}}))
        assert job.run_once()
        store.record_question("after the copy", outcome="failed", surface="mention", channel="C01ASK001",
                              channel_type="channel")
    finally:
        store.close()

    report = build_report(url, options=ReportOptions(since_s=86400))
    assert report.totals["questions"] == 3 and report.totals["answered"] == 3 and report.totals["askers"] == 3
    assert report.latency[0]["p50"] == 2.0
    assert [s["source_id"] for s in report.most_cited] == ["docs:caching.md"]

    with pytest.raises(FileNotFoundError, match="feedback database not found: s3://"):
        build_report(f"s3://{BUCKET}/nothing/here.sqlite3")


def test_a_half_written_or_foreign_snapshot_in_s3_is_refused_naming_the_url(endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.put_object(Bucket=BUCKET, Key="flytegpt/empty.sqlite3", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="flytegpt/junk.sqlite3", Body=b"not sqlite " * 400)
    with pytest.raises(ValueError, match=f"s3://{BUCKET}/flytegpt/empty.sqlite3 is empty \\(0 bytes\\)"):
        build_report(f"s3://{BUCKET}/flytegpt/empty.sqlite3")
    with pytest.raises(ValueError, match=f"s3://{BUCKET}/flytegpt/junk.sqlite3 is not an SQLite database"):
        build_report(f"s3://{BUCKET}/flytegpt/junk.sqlite3")
