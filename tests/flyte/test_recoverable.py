"""Transient failures are marked RECOVERABLE, so Flyte retries them; configuration errors are not.

flytekit's container entrypoint writes the failure's kind into `error.pb`; FlytePropeller retries
only RECOVERABLE user errors, whatever `retries=` says. One test runs a task the way its pod
does (pyflyte-execute with the task's own command line) and decodes that document.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flytegpt.flyte.retry import is_transient, recoverable_errors


def _slack_error(status: int, error: str):
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.slack_response import SlackResponse

    response = SlackResponse(client=None, http_verb="POST", api_url="https://slack.com/api/conversations.history",
                             req_args={}, data={"ok": False, "error": error}, headers={}, status_code=status)
    return SlackApiError("failed", response)


def _chained(outer: Exception, cause: Exception) -> Exception:
    outer.__cause__ = cause
    return outer


def test_transient_failures_and_configuration_errors_are_told_apart() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from flytegpt.ingest.config import ConfigError
    from flytegpt.ingest.sources.git import GitSourceError
    from flytegpt.ingest.store import StoreLockError, StoreWriteError

    transient = [
        GitSourceError("source 'flytekit': cannot fetch http://127.0.0.1:9/x.git at 'master': fatal: unable to "
                       "access 'http://127.0.0.1:9/x.git/': Failed to connect to 127.0.0.1 port 9: Couldn't connect "
                       "to server"),
        GitSourceError("source 'flytekit': cannot fetch ... : fatal: the remote end hung up unexpectedly"),
        _slack_error(503, "service_unavailable"),
        _slack_error(429, "ratelimited"),
        StoreLockError("publish.lock is held by pod-x pid 1"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "PutObject"),
        ConnectionResetError("reset by peer"),
        OSError("[Errno 5] I/O error"),
        _chained(StoreWriteError("cannot write to the index store s3://b/x: timed out"), TimeoutError("timed out")),
    ]
    configuration = [
        GitSourceError("source 'flytekit': cannot fetch ... : fatal: couldn't find remote ref refs/heads/nope"),
        GitSourceError("source 'x': cannot fetch ...: remote: Repository not found."),
        _slack_error(200, "invalid_auth"),
        ConfigError("config file not found: x.toml"),
        NoCredentialsError(),
        ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "PutObject"),
        FileNotFoundError("missing from the index store"),
        PermissionError("read-only"),
        _chained(StoreWriteError("cannot write to the index store s3://typo/x: bucket does not exist"),
                 FileNotFoundError("The specified bucket does not exist")),
        ValueError("no chunks: every source was empty or skipped"),
    ]
    assert [e for e in transient if not is_transient(e)] == []
    assert [e for e in configuration if is_transient(e)] == []


def test_a_transient_error_is_raised_as_recoverable_chained_from_the_original() -> None:
    from flytekit.exceptions.user import FlyteRecoverableException

    from flytegpt.ingest.config import ConfigError
    from flytegpt.ingest.store import StoreLockError

    lock = StoreLockError("publish.lock is held by pod-x")
    with pytest.raises(FlyteRecoverableException, match="StoreLockError: publish.lock is held by pod-x") as e:
        with recoverable_errors():
            raise lock
    assert e.value.__cause__ is lock
    with pytest.raises(ConfigError):  # unchanged: retrying a configuration error only repeats it
        with recoverable_errors():
            raise ConfigError("config file not found")


def test_publish_retries_outwait_a_stale_lock() -> None:
    """A publish pod killed while holding the lock: only after LOCK_STALE_AFTER_S is the lock broken,
    and each attempt waits LOCK_WAIT_S before its (recoverable) StoreLockError."""
    from flytegpt.flyte import resources
    from flytegpt.flyte.ingest_wf import publish
    from flytegpt.ingest.store import LOCK_STALE_AFTER_S, LOCK_WAIT_S

    assert publish.metadata.retries == resources.PUBLISH_RETRIES
    assert (resources.PUBLISH_RETRIES + 1) * LOCK_WAIT_S > LOCK_STALE_AFTER_S


def _error_kind(task, values: dict, where: Path) -> str:
    """Run `task` as its container does and return the kind of failure flytekit recorded."""
    from flyteidl.core import errors_pb2
    from flytekit import FlyteContextManager
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.core.type_engine import TypeEngine

    where.mkdir(parents=True)
    literals = TypeEngine.dict_to_literal_map(FlyteContextManager.current_context(), values,
                                              dict(task.python_interface.inputs))
    (where / "inputs.pb").write_bytes(literals.to_flyte_idl().SerializeToString())
    command = task.get_default_command(SerializationSettings(image_config=ImageConfig.auto_default_image()))
    fill = {"{{.input}}": str(where / "inputs.pb"), "{{.outputPrefix}}": str(where / "out"),
            "{{.rawOutputDataPrefix}}": str(where / "raw"), "{{.checkpointOutputPrefix}}": str(where / "cp"),
            "{{.prevCheckpointPrefix}}": ""}
    env = {**os.environ, "HOME": str(where), "_FSEC_FLYTEGPT_SLACK_BOT_TOKEN": "xoxb-placeholder"}
    subprocess.run([sys.executable, "-c", "import sys; from flytekit.bin.entrypoint import execute_task_cmd; "
                    "execute_task_cmd.main(sys.argv[1:])", *[fill.get(a, a) for a in command[1:]]],
                   cwd=where, env=env, capture_output=True, text=True, timeout=240)
    doc = errors_pb2.ErrorDocument.FromString((where / "out" / "error.pb").read_bytes())
    return errors_pb2.ContainerError.Kind.Name(doc.error.kind)


def test_collect_marks_an_unreachable_git_server_recoverable_and_a_missing_config_not(tmp_path: Path) -> None:
    from flytegpt.flyte.ingest_wf import collect

    config = tmp_path / "git.toml"
    config.write_text('[[sources]]\nname = "flytekit"\nkind = "git"\nrepo = "http://127.0.0.1:9/flytekit.git"\n'
                      'ref = "master"\nas_kind = "code"\n')
    store = str(tmp_path / "store")
    assert _error_kind(collect, {"config_path": str(config), "store": store}, tmp_path / "git") == "RECOVERABLE"
    missing = {"config_path": str(tmp_path / "no-such.toml"), "store": store}
    assert _error_kind(collect, missing, tmp_path / "config") == "NON_RECOVERABLE"
