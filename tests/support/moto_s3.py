"""An S3-compatible server (moto in server mode) on 127.0.0.1, for tests of s3:// stores.

`moto_endpoint(bucket)` starts it, points the AWS variables and FLYTEGPT_S3_ENDPOINT_URL at it,
creates the bucket (with boto3: s3fs's mkdir sends a location constraint moto rejects) and
yields its URL. A missing moto fails in CI and skips elsewhere (support.tools.missing_tool).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import Iterator

import pytest

from support.tools import find_executable, missing_tool

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_listening(proc: subprocess.Popen, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                missing_tool("moto_server did not start")
            time.sleep(0.2)


@contextlib.contextmanager
def moto_endpoint(bucket: str) -> Iterator[str]:
    try:
        import boto3
    except ImportError as e:  # the dev extra installs it
        missing_tool(f"{e.name} is not installed")
    server = find_executable("moto_server")
    if server is None:
        missing_tool("moto_server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(proc, port)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", REGION)
            mp.setenv("FLYTEGPT_S3_ENDPOINT_URL", url)
            for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(var, raising=False)
            boto3.client("s3", endpoint_url=url, region_name=REGION).create_bucket(Bucket=bucket)
            yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
