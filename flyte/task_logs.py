"""Our log lines in a task's log.

`pyflyte-execute` (a task's container entrypoint) sets up flytekit's own logger only, so every
INFO line of ours (documents collected, chunks embedded, questions answered, a checkpoint
resumed) was dropped: on a cluster the task log is all its user sees of a long run. Each task
calls `task_logging()` first; where logging is set up already (the local executor under a test
runner, a host application) only the secrets' redaction is added.
"""

from __future__ import annotations


def task_logging() -> None:
    """INFO lines of ours on stderr, with secrets redacted (flytegpt.bot.logs)."""
    from flytegpt.bot.logs import setup_logging

    setup_logging(replace=False, fmt="%(levelname)s %(name)s: %(message)s")
