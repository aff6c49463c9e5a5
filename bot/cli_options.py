"""What every `flytegpt` command shares: the --config/--store options and friendly loading errors."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click

from flytegpt.ingest.config import Config, ConfigError, load_config, sample_config_path

if TYPE_CHECKING:
    from flytegpt.ingest.search import HybridSearcher

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("FLYTEGPT_CONFIG") or str(sample_config_path()),
    show_default="$FLYTEGPT_CONFIG or the bundled sample corpus",
    help="FlyteGPT TOML configuration.",
)


def implicit_config() -> bool:
    """--config was not given and $FLYTEGPT_CONFIG is not set: the bundled sample is the config,
    whose store settings ([index] keep_versions, ...) are not the store's own."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return ctx.get_parameter_source("config_path") is ParameterSource.DEFAULT and not os.environ.get("FLYTEGPT_CONFIG")


store_option = click.option(
    "--store",
    default=None,
    help="Index store (folder or fsspec URL). Default: [index] store of the config, else .flytegpt/store in "
         "the working directory.",
)

def terminal_text(text: Any) -> str:
    """`text` as a terminal shows it literally: every control sequence and control character
    removed, lone surrogates as U+FFFD.

    The one filter for whatever the CLI prints that it did not write itself: Slack threads,
    docs and file names from the corpus, model answers, question files, store contents. A
    community-written Slack message could otherwise retitle the operator's terminal, write its
    clipboard (OSC 52) or clear the screen; click only strips colour codes, and only when the
    output is not a terminal.
    """
    from flytegpt.ingest.models import strip_terminal

    return strip_terminal(str(text))


def terminal_json(value: Any) -> str:
    """`value` as one line of JSON that is safe on a terminal and keeps every character."""
    from flytegpt.ingest.models import escape_controls

    return escape_controls(json.dumps(value, ensure_ascii=False))


STORE_META = "flytegpt.store"


class TerminalSafeGroup(click.Group):
    """The `flytegpt` group: an error message (which often quotes a file name, a LATEST or a
    provider's reply) is made terminal-safe before click prints it as `Error: ...`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            e.message = terminal_text(e.message)
            raise
        except Exception as e:  # noqa: BLE001 - only storage errors are turned into a message
            message = storage_error_message(e)
            if message is None:
                raise
            if ctx.params.get("verbose"):  # `flytegpt -v ...`: the traceback too, for a bug report
                import traceback

                traceback.print_exc()
            store = ctx.meta.get(STORE_META)  # set by `load`: the store the command was working on
            if store:
                message = f"cannot read the index store {store}: {message}"
            raise click.ClickException(terminal_text(message)) from None


def _botocore_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # botocore is only there with s3fs
        return ()
    return (BotoCoreError, ClientError)


def storage_error_message(e: BaseException) -> str | None:
    """One line for an error reading or writing a file or a store (a folder that is a file, an
    S3 endpoint that cannot be reached, missing credentials), None for any other exception.

    Every command's last resort: `flytegpt versions`, `publish`, `ask`, `report` ... print
    `Error: ...` instead of a traceback when the index store cannot be read."""
    import errno

    if isinstance(e, OSError) and e.errno == errno.EPIPE:  # `| head`: click handles it
        return None
    if isinstance(e, NotADirectoryError) and e.filename:
        path = Path(os.fsdecode(e.filename))
        parent = next((p for p in path.parents if p.is_file()), None)
        if parent is not None:
            return f"{parent} is a file, not a folder ({type(e).__name__}: {e})"
    if isinstance(e, IsADirectoryError) and e.filename:
        return f"{os.fsdecode(e.filename)} is a folder, not a file ({type(e).__name__}: {e})"
    if isinstance(e, OSError) or isinstance(e, _botocore_errors()):
        return f"{type(e).__name__}: {e}"
    return None


def refuse_same_file(db: object, out: object) -> None:
    """Refuse an output that is the database being read (`--out` naming `--db`, perhaps by another
    relative path or a link): writing it would destroy every vote and question."""
    if db is None or out is None or str(out) == "-" or "://" in str(db) or "://" in str(out):
        return
    try:
        same = os.path.samefile(db, out)
    except (OSError, ValueError):  # one of them does not exist (yet): not the same file
        return
    if same:
        raise click.ClickException(f"--out {out} is the database --db {db}: choose another output file "
                                   "(writing it would destroy the database)")


def load(config_path: Path, store: str | None) -> Config:
    """Load the configuration, turning its errors into a clean CLI message. The store it names is
    noted in the command's context, so a storage error anywhere later can name it."""
    try:
        config = load_config(config_path).with_store(store)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[STORE_META] = config.index.store  # meta is shared by every context of one command line
    return config


def open_searcher(config: Config) -> "HybridSearcher":
    """The store's LATEST index with its query embedder, or a message that says what is wrong."""
    from flytegpt.ingest.artifact import ArtifactError, open_version, read_latest
    from flytegpt.ingest.embedding import Embedder
    from flytegpt.ingest.search import HybridSearcher

    store = config.index.store
    try:
        index = open_version(store, cache_dir=config.index.cache_dir)
    except (ArtifactError, FileNotFoundError) as e:
        try:
            published = read_latest(store) is not None
        except ArtifactError:  # a LATEST that is not a version id: publishing repairs it
            published = True
        except Exception as read_error:  # noqa: BLE001
            _raise_unreadable(store, read_error)
        todo = "Publish a sound version over it" if published else "Build an index first"
        hint = f"{todo}: flytegpt ingest --config ... --store {store}"
        target = _rollback_target(store) if published else None
        if target:  # the README's remedy: back to the version before, in seconds, no rebuild
            other, older = target
            hint = (f"{'Roll back to an older version' if older else 'Serve another version'}: flytegpt publish "
                    f"{other} --store {store} (flytegpt versions --store {store} lists them), "
                    f"or {hint[0].lower()}{hint[1:]}")
        raise click.ClickException(f"{e}\n{hint}") from None
    except Exception as e:  # noqa: BLE001 - an S3 endpoint down, no credentials, a file for a folder
        _raise_unreadable(store, e)
    model_id = index.model.model_id
    try:
        embedder = Embedder.for_index(model_id, config)
        return HybridSearcher(index, embedder, config.retrieval)
    except Exception as e:  # noqa: BLE001 - whatever the model library raises, the user needs the model named
        raise click.ClickException(
            f"index version {index.version} was embedded with {model_id!r}, which cannot be loaded here "
            f"({type(e).__name__}: {e}).\nInstall or cache that model, or re-ingest with [embeddings] model set "
            "to one that is available."
        ) from None


def _rollback_target(store: str, tries: int = 5) -> tuple[str, bool] | None:
    """(version, made before LATEST's) for `flytegpt publish` to serve instead of the version LATEST
    names: the newest one made before it whose files list as sound (else the newest other one)."""
    from flytegpt.ingest.artifact import ArtifactError, file_problems, latest_or_none, list_versions, read_manifest

    try:
        latest = latest_or_none(store)
        versions = list_versions(store)  # oldest first
        cut = versions.index(latest) if latest in versions else len(versions)
        candidates = ([(v, True) for v in reversed(versions[:cut])]
                      + [(v, False) for v in reversed(versions[cut + 1:])])
    except (ArtifactError, OSError, ValueError):  # the hint is a courtesy: never a second error
        return None
    for version, older in candidates[:tries]:
        try:
            if not file_problems(store, version, read_manifest(store, version)):
                return version, older
        except (ArtifactError, OSError, ValueError):  # that one cannot serve either: the next
            continue
    return None


def _raise_unreadable(store: str, e: Exception) -> None:
    message = storage_error_message(e)
    if message is None:
        raise e
    raise click.ClickException(f"cannot read the index store {store}: {message}") from None


@contextmanager
def file_errors(target: object, db: object = None) -> Iterator[None]:
    """A feedback database that is missing or is none, or a `target` that cannot be written:
    one line and exit 1, not a traceback (the feedback and report commands).

    A `target` that is the database (`db`, by default the command's --db) is refused first."""
    from flytegpt.bot.slack.feedback import FeedbackDatabaseError

    if db is None:
        ctx = click.get_current_context(silent=True)
        params = ctx.params if ctx is not None else {}
        db = params.get("db_path", params.get("db"))
    refuse_same_file(db, target)
    try:
        yield
    except FeedbackDatabaseError as e:
        raise click.ClickException(str(e)) from None
    except FileNotFoundError as e:  # the database (its message names it), or the target's bucket or folder
        named = any(str(p) in str(e) for p in (db, target) if p)
        raise click.ClickException(str(e) if named else f"cannot write {target}: {e}") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror or e}") from None
