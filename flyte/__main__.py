"""Run a FlyteGPT workflow on flytekit's local executor: `python -m flytegpt.flyte WORKFLOW --input value`.

`pyflyte run` names entities after the file's folder (`flyte.ingest_wf.collect`, Flyte's own
import name) and imports the repository's `flyte/` folder over the Flyte 2 SDK. Running the
installed module keeps the registered names (`flytegpt.flyte.ingest_wf.collect`) and the
local task cache the same as on a cluster.

    python -m flytegpt.flyte ingest_wf --config_path ingest/sample/flytegpt.toml --store /tmp/store
    python -m flytegpt.flyte bulk_qa_wf --config_path ingest/sample/flytegpt.toml --store /tmp/store \\
        --questions '["How do I cache a task?"]'
    python -m flytegpt.flyte ingest_wf --overwrite-cache ...   # re-run cached tasks
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import typing
from typing import Any

import click

WORKFLOWS = {
    "ingest_wf": "flytegpt.flyte.ingest_wf",
    "bulk_qa_wf": "flytegpt.flyte.bulk_qa_wf",
    "report_wf": "flytegpt.flyte.report_wf",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors `flytegpt ingest` reports as one message (flytekit's local executor re-raises a
    task's error as its own type, the task named in the message)."""
    from flytegpt.ingest.artifact import ArtifactError
    from flytegpt.ingest.config import ConfigError
    from flytegpt.ingest.store import StoreLockError, StoreWriteError
    from flytegpt.ingest.tuning import TuningError

    from flytekit.core.type_engine import TypeTransformerFailedError  # an input of the wrong type

    # ValueError: no chunks, no questions, a period that is none; OSError: a store path that is a
    # file or cannot be written, a database that is missing. flytekit names the task in the message.
    return (ConfigError, ArtifactError, StoreLockError, StoreWriteError, TuningError, TypeTransformerFailedError,
            ValueError, OSError)


def _parse(value: str, annotation: Any) -> Any:
    """A command-line string as the workflow input type: lists as JSON, files as paths."""
    from flytekit.types.file import FlyteFile

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    target = args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    if target is str:
        return value
    if target in (int, float, bool):
        return target(json.loads(value.lower() if target is bool else value))
    if typing.get_origin(target) in (list, dict):
        return json.loads(value)
    if isinstance(target, type) and issubclass(target, FlyteFile):
        if "://" not in value and not os.path.isfile(value):
            raise ValueError(f"file not found: {value}")
        return FlyteFile(value)
    return value


def _command(name: str) -> click.Command:
    workflow = getattr(importlib.import_module(WORKFLOWS[name]), name)
    inputs = workflow.python_interface.inputs

    def run(overwrite_cache: bool, **kwargs: str | None) -> None:
        if overwrite_cache:
            os.environ["FLYTE_LOCAL_CACHE_OVERWRITE"] = "true"
        try:
            values = {k: _parse(v, inputs[k]) for k, v in kwargs.items() if v is not None}
        except ValueError as e:  # JSON that does not parse, a number that is not one
            raise click.BadParameter(str(e)) from None
        try:
            result = workflow(**values)
        except _user_errors() as e:  # a config, store or index problem: what and where, not a traceback
            raise click.ClickException(str(e).strip()) from None
        if isinstance(result, tuple):
            for field in getattr(result, "_fields", range(len(result))):
                value = getattr(result, field) if isinstance(field, str) else result[field]
                click.echo(f"{field}: {getattr(value, 'path', value)}")
        else:
            click.echo(result)

    params: list[click.Parameter] = [
        click.Option(["--overwrite-cache"], is_flag=True, help="Re-run cached tasks and replace their cache entries.")
    ]
    params += [click.Option([f"--{k}"], type=str, default=None, help=f"{k} ({v})") for k, v in inputs.items()]
    return click.Command(name, params=params, callback=run, help=(workflow.__doc__ or "").strip().splitlines()[0])


class _Workflows(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(WORKFLOWS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _command(cmd_name) if cmd_name in WORKFLOWS else None


main = _Workflows(help="Run a FlyteGPT workflow locally (flytekit's local executor, local task cache).")

if __name__ == "__main__":
    sys.exit(main())
