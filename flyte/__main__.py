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
import inspect
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
    from flytekit.exceptions.user import FlyteRecoverableException  # a transient failure (flyte/retry.py)

    # ValueError: no chunks, no questions, a period that is none; OSError: a store path that is a
    # file or cannot be written, a database that is missing. flytekit names the task in the message.
    return (ConfigError, ArtifactError, StoreLockError, StoreWriteError, TuningError, TypeTransformerFailedError,
            FlyteRecoverableException, ValueError, OSError)


def _target(annotation: Any) -> Any:
    """The input's type, Optional[...] unwrapped."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def _parse(value: str, annotation: Any) -> Any:
    """A command-line string as the workflow input type: lists as JSON, files as paths.

    Strict: `int(json.loads("1.5"))` and `int(True)` ran `--workers 1.5` as 1 and `--workers true`
    as 1 at a time. ValueError says what was expected."""
    from flytekit.types.file import FlyteFile

    target = _target(annotation)
    if target is str:
        return value
    if target is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, not {value!r}")
        return value.lower() == "true"
    if target in (int, float):
        try:
            number = json.loads(value)
        except ValueError:
            number = None
        kinds = (int,) if target is int else (int, float)
        if isinstance(number, bool) or not isinstance(number, kinds):
            raise ValueError(f"expected {'a whole number' if target is int else 'a number'}, not {value!r}")
        return target(number)
    origin = typing.get_origin(target)
    if origin in (list, dict):
        kind = "list, such as '[\"How do I cache a task?\"]'" if origin is list else "object"
        try:
            parsed = json.loads(value)
        except ValueError as e:
            raise ValueError(f"expected a JSON {kind} ({e})") from None
        if not isinstance(parsed, origin):
            raise ValueError(f"expected a JSON {kind}, not {type(parsed).__name__}")
        return parsed
    if isinstance(target, type) and issubclass(target, FlyteFile):
        if "://" not in value and not os.path.isfile(value):
            raise ValueError(f"file not found: {value}")
        return FlyteFile(value)
    return value


class _Input(click.ParamType):
    """A workflow input on the command line: parsed by `_parse`, its errors reported by click with
    the option's name ("Invalid value for '--workers': expected a whole number, not '1.5'")."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        target = _target(annotation)
        origin = typing.get_origin(target)
        if origin is list:
            self.name = "json_list"
        elif origin is dict:
            self.name = "json_object"
        elif target in (str, int, float, bool):
            self.name = {str: "text", int: "integer", float: "number", bool: "true|false"}[target]
        else:
            self.name = "path"  # FlyteFile: a local path or a URI

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return _parse(value, self.annotation)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _local_config() -> str:
    """The workflows' default config for a local run. On a cluster the sample's path is relative
    to the image's working directory; here, outside the checkout's root, it names the installed
    package's copy (as `flytegpt`'s commands do), so a run works from any folder."""
    from flytegpt.flyte import deploy
    from flytegpt.ingest.config import sample_config_path

    if deploy.CONFIG == deploy.SAMPLE_CONFIG and not os.path.isfile(deploy.CONFIG):
        return str(sample_config_path())
    return deploy.CONFIG


def _summary(doc: str | None) -> str:
    """The docstring's first paragraph as one line (its first line alone stopped mid-sentence)."""
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def _command(name: str) -> click.Command:
    workflow = getattr(importlib.import_module(WORKFLOWS[name]), name)
    inputs = workflow.python_interface.inputs_with_defaults

    def run(overwrite_cache: bool, **values: Any) -> None:
        if overwrite_cache:
            os.environ["FLYTE_LOCAL_CACHE_OVERWRITE"] = "true"
        given = {k: v for k, v in values.items() if v is not None}
        if "config_path" in inputs and "config_path" not in given:
            given["config_path"] = _local_config()
        try:
            result = workflow(**given)
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
    # --config_path as the workflow names its input, and --config-path as every other CLI spells it
    params += [click.Option([k, *dict.fromkeys((f"--{k}", f"--{k.replace('_', '-')}"))], type=_Input(t), default=None,
                            help=f"default: {d!r}" if d not in (None, "") else None) for k, (t, d) in inputs.items()]
    return click.Command(name, params=params, callback=run, help=_summary(workflow.__doc__))


class _Workflows(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(WORKFLOWS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _command(cmd_name) if cmd_name in WORKFLOWS else None


main = _Workflows(help="Run a FlyteGPT workflow locally (flytekit's local executor, local task cache).")

if __name__ == "__main__":
    sys.exit(main())
