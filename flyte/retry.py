"""Which task failures Flyte should retry: transient ones, raised as flytekit's FlyteRecoverableException.

flytekit marks every other exception a task raises NON_RECOVERABLE, and FlytePropeller does not
retry those whatever `retries=` says: a git server that hung up, Slack answering 503 after the
client's own retries, an S3 hiccup or a publish lock left by a killed pod failed the whole run.
Tasks with retries run their body inside `recoverable_errors()`, which re-raises the transient
classes as FlyteRecoverableException (chained from the original, whose message it keeps) and lets
configuration errors (a missing file, a bad ref, a revoked token, a missing bucket) through
unchanged: retrying those only delays the same failure.
"""

from __future__ import annotations

import errno
import re
from contextlib import contextmanager
from typing import Iterator

from flytekit.exceptions.user import FlyteRecoverableException

# git's own words for a network failure (ingest/sources/git.py carries its stderr in GitSourceError);
# anything else git says (no such ref, repository not found, authentication failed) is configuration.
_GIT_NETWORK = re.compile(
    r"could not resolve host|couldn't connect to server|failed to connect|connection (?:timed out|reset|refused)"
    r"|operation timed out|timed out after|took longer than|the remote end hung up unexpectedly|early eof"
    r"|rpc failed|transfer closed|unexpected disconnect|gnutls|ssl_read|ssl_connect|tls connection"
    r"|the requested url returned error: (?:429|5\d\d)|temporary failure in name resolution"
    r"|network is unreachable|broken pipe",
    re.IGNORECASE,
)
# OSErrors that say the store or a path is wrong, not that it was unreachable for a moment.
_OS_CONFIG = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_OS_CONFIG_ERRNOS = {errno.EROFS, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM}
# S3 error codes that mean "try again" (botocore ClientError).
_S3_TRANSIENT = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                 "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "500", "502", "503", "504"}


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it was raised from (StoreWriteError wraps the store's own error)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _transient_one(error: BaseException) -> bool:
    from flytegpt.ingest.sources.git import GitSourceError
    from flytegpt.ingest.store import StoreLockError

    if isinstance(error, StoreLockError):
        return True  # a holder killed mid-publish: a retry waits again, past the stale time (ingest_wf.publish)
    if isinstance(error, GitSourceError):
        return bool(_GIT_NETWORK.search(str(error)))
    if _slack_transient(error) or _botocore_transient(error):
        return True
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError):
        return not isinstance(error, _OS_CONFIG) and error.errno not in _OS_CONFIG_ERRNOS
    return False


def _slack_transient(error: BaseException) -> bool:
    """Slack's 429/5xx or a documented "try again" error, still failing after the client's retries."""
    try:
        from slack_sdk.errors import SlackApiError
    except ImportError:  # pragma: no cover - a dependency of the project
        return False
    if not isinstance(error, SlackApiError):
        return False
    from flytegpt.ingest.slack_client import server_trouble

    response = error.response
    status = getattr(response, "status_code", 0) or 0
    code = response.get("error") if hasattr(response, "get") else None
    return status == 429 or server_trouble(status, code)


def _botocore_transient(error: BaseException) -> bool:
    """botocore's connection and timeout errors and S3's throttling and 5xx codes; not missing credentials."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # no S3 support installed: no botocore errors either
        return False
    if isinstance(error, boto.ClientError):
        err = error.response.get("Error", {}) if isinstance(error.response, dict) else {}
        status = (error.response.get("ResponseMetadata", {}) if isinstance(error.response, dict) else {}).get(
            "HTTPStatusCode", 0)
        return str(err.get("Code", "")) in _S3_TRANSIENT or (isinstance(status, int) and status >= 500)
    transient = tuple(getattr(boto, name) for name in (
        "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
        "HTTPClientError") if hasattr(boto, name))
    return isinstance(error, transient)


def is_transient(error: BaseException) -> bool:
    """Would a new attempt of the task likely succeed? Judged on `error` and the errors it was raised from."""
    from flytegpt.ingest.config import ConfigError

    for cause in _causes(error):
        if _transient_one(cause):
            return True
        if isinstance(cause, ConfigError):
            return False  # a configuration error wrapping a network one (git) was judged above
    return False


@contextmanager
def recoverable_errors() -> Iterator[None]:
    """Re-raise a transient error of the block as FlyteRecoverableException, which Flyte retries."""
    try:
        yield
    except FlyteRecoverableException:
        raise
    except Exception as e:  # noqa: BLE001 - judged, then re-raised either way
        if not is_transient(e):
            raise
        raise FlyteRecoverableException(f"{type(e).__name__}: {e} (transient: Flyte retries the task)") from e
