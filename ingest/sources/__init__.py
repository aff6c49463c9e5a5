"""Loaders: each turns one configured source into Documents (see ingest.models).

`load_source` is the one entry point the pipeline calls; it dispatches on the source's kind
and imports each loader only when it is used, so a docs-only config never imports slack_sdk
or git tooling.
"""

from __future__ import annotations

from collections.abc import Iterator

from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import Document, LoadReport


def load_source(source: SourceConfig, report: LoadReport, *, store: str | None = None,
                save: bool = True) -> Iterator[Document]:
    """The documents of one source; problems with single files go to `report`, not exceptions.

    `store` holds what a source keeps between ingests (slack_api's cursor and thread snapshot);
    `save=False` reads it without writing it back (a dry run)."""
    if source.kind == "docs":
        from flytegpt.ingest.sources.docs import load_docs as loader
    elif source.kind == "code":
        from flytegpt.ingest.sources.code import load_code as loader
    elif source.kind == "slack_export":
        from flytegpt.ingest.sources.slack_export import load_slack_export as loader
    elif source.kind == "git":
        from flytegpt.ingest.sources.git import load_git as loader
    elif source.kind == "slack_api":
        from flytegpt.ingest.sources.slack_api import load_slack_api

        return load_slack_api(source, report, store=store, save=save)
    else:  # pragma: no cover - the config's Literal type rejects other kinds
        raise ValueError(f"source {source.name!r}: unknown kind {source.kind!r}")
    return loader(source, report, store=store)
