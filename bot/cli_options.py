"""What every `flytegpt` command shares: the --config/--store options and friendly loading errors."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

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
