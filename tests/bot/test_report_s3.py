"""The deployment path of the question log: the bot copies its database to an s3:// URL and the
report (the weekly_report task) reads it from there. S3 is moto's server on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from support.tools import find_executable, missing_tool

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
    server = find_executable("moto_server")
    if server is None:
        missing_tool("moto_server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    missing_tool("moto_server did not start")
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("FLYTEGPT_S3_ENDPOINT_URL", url)
            for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(var, raising=False)
            boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_snapshot_travels_through_s3_to_the_report(endpoint: str, tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)  # the bot's live database
    try:
        for i in range(3):
            answer = Answer(f"question {i}", f"question {i}", "text", [Citation(1, "Caching", "u", "docs:caching.md")],
                            "llm", "v1")
            store.record_answer(answer, surface="mention", channel="C01ASK001", user=f"U0ASKER{i}", latency_s=1.0 + i)
        url = f"s3://{BUCKET}/flytegpt/feedback.sqlite3"
        job = SnapshotJob(Config.model_validate({"bot": {"feedback_db": str(db), "feedback_snapshot": url}}))
        assert job.run_once()
        store.record_question("after the copy", outcome="failed", surface="mention", channel="C01ASK001")
    finally:
        store.close()

    report = build_report(url, options=ReportOptions(since_s=86400))
    assert report.totals["questions"] == 3 and report.totals["answered"] == 3 and report.totals["askers"] == 3
    assert report.latency[0]["p50"] == 2.0
    assert [s["source_id"] for s in report.most_cited] == ["docs:caching.md"]

    with pytest.raises(FileNotFoundError, match="feedback database not found: s3://"):
        build_report(f"s3://{BUCKET}/nothing/here.sqlite3")
