"""What every `flytegpt` command shares: the --config/--store options and friendly loading errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

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
    """The store's LATEST index, or a message that says how to build one."""
    from flytegpt.ingest.artifact import ArtifactError
    from flytegpt.ingest.search import HybridSearcher

    try:
        return HybridSearcher.open(config)
    except (ArtifactError, FileNotFoundError) as e:
        raise click.ClickException(
            f"{e}\nBuild an index first: flytegpt ingest --config ... --store {config.index.store}"
        ) from None
