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
store_option = click.option("--store", default=None, help="Index store (folder or fsspec URL); overrides [index] store.")

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


class TerminalSafeGroup(click.Group):
    """The `flytegpt` group: an error message (which often quotes a file name, a LATEST or a
    provider's reply) is made terminal-safe before click prints it as `Error: ...`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            e.message = terminal_text(e.message)
            raise


def load(config_path: Path, store: str | None) -> Config:
    """Load the configuration, turning its errors into a clean CLI message."""
    try:
        return load_config(config_path).with_store(store)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


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
        todo = "Publish a sound version over it" if published else "Build an index first"
        raise click.ClickException(f"{e}\n{todo}: flytegpt ingest --config ... --store {store}") from None
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


@contextmanager
def file_errors(target: object) -> Iterator[None]:
    """A feedback database that is missing or is none, or a `target` that cannot be written:
    one line and exit 1, not a traceback (the feedback and report commands)."""
    from flytegpt.bot.slack.feedback import FeedbackDatabaseError

    try:
        yield
    except (FileNotFoundError, FeedbackDatabaseError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror or e}") from None
