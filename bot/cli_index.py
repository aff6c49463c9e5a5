"""`flytegpt versions` and `flytegpt publish`: what an index store holds, and a deliberate rollback.

A nightly ingest that publishes a worse index (a source that lost half its pages, a model
change that answers badly) should be undone in one command, without a rebuild: every version
the store keeps is complete and verified before LATEST moves to it, and a running bot swaps it
in at its next reload check, as it does a new one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from flytegpt.bot.cli_options import config_option, implicit_config, load, store_option, terminal_text


def _row(store: str, version: str, latest: str | None) -> dict[str, Any]:
    from flytegpt.ingest.artifact import ArtifactError, file_problems, read_manifest

    row: dict[str, Any] = {"version": version, "latest": version == latest}
    try:
        m = read_manifest(store, version)
    except ArtifactError as e:  # listed, with why it cannot serve: it is what a rollback would meet
        return {**row, "problem": str(e)}
    damaged = file_problems(store, version, m)  # a truncated file was listed as fine, even as LATEST
    if damaged:
        row["problem"] = "damaged: " + "; ".join(damaged)
    return {**row, "created_at": m.get("created_at"), "sources_read_at": m.get("sources_read_at"),
            "chunks": m["chunk_count"], "counts": m.get("counts", {}), "model": m["model"]["model_id"],
            "index": m["index"]["type"]}


def _store_state(store: str) -> tuple[list[str], str | None, str | None]:
    """(versions oldest first, LATEST, why LATEST is unreadable), or a ClickException."""
    from flytegpt.ingest.artifact import ArtifactError, list_versions, read_latest

    try:
        versions = list_versions(store)
    except (OSError, ValueError) as e:  # a missing bucket, a refused listing
        raise click.ClickException(f"cannot list the index store {store}: {e}") from None
    try:
        return versions, read_latest(store), None
    except ArtifactError as e:
        return versions, None, str(e)


@click.command("versions")
@config_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the store, LATEST and every version.")
def versions_cmd(config_path: Path, store: str | None, as_json: bool) -> None:
    """List the index versions in the store, newest first; * marks the one served (LATEST).

    Exits 1 when LATEST cannot be served (unreadable, a version that is gone or damaged),
    after the listing: the versions a rollback (flytegpt publish VERSION) can choose from.
    """
    config = load(config_path, store)
    where = config.index.store
    versions, latest, latest_problem = _store_state(where)
    rows = [_row(where, v, latest) for v in reversed(versions)]
    broken = _latest_broken(rows, versions, latest, latest_problem)
    if as_json:
        click.echo(json.dumps({"store": where, "latest": latest, "latest_problem": latest_problem, "versions": rows}))
        if broken:
            sys.exit(1)
        return
    if not rows:
        raise click.ClickException(f"no index versions in {where}{_latest_note(where, latest, latest_problem)}: "
                                   f"build one with flytegpt ingest --store {where}")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def text(value: Any) -> str:  # manifests and LATEST are files anyone with store access wrote
        return escape(terminal_text(value))

    table = Table(title=f"index versions in {text(where)}")
    table.add_column("", min_width=1)
    for col in ("version", "created (UTC)", "chunks"):
        table.add_column(col, no_wrap=True)  # ids and times stay whole; the rest is in --json
    table.add_column("model", overflow="fold")
    problems: list[str] = []
    for r in rows:
        mark = "*" if r["latest"] else ""
        if "problem" in r:
            problems.append(f"{r['version']}: {r['problem']}")
            if "created_at" not in r:
                table.add_row(mark, r["version"], "[red]unreadable[/red]", "", "")
                continue
        table_row = (mark, r["version"], text(_minutes(r["created_at"])), f"{r['chunks']:,}", text(r["model"]))
        if "problem" in r:
            table.add_row(*table_row[:2], "[red]damaged[/red]", *table_row[3:])
            continue
        table.add_row(*table_row)
    console = Console()
    console.print(table)
    for p in problems:
        console.print(f"[red]cannot serve[/red] {text(p)}")
    if latest_problem:
        console.print(f"[red]LATEST is unreadable[/red]: {text(latest_problem)}")
    elif latest is None:
        console.print(f"Nothing is published yet ({text(_unpublished(where))}): flytegpt publish VERSION serves one.")
    elif latest not in versions:
        console.print(f"[red]LATEST names {latest}, which is not in the store[/red]: publish one of the above.")
    elif broken:
        console.print(f"[red]LATEST names {latest}, which cannot be served[/red]: roll back with flytegpt publish "
                      "VERSION (one of the above), or ingest a new one.")
    if broken:
        sys.exit(1)


def _latest_broken(rows: list[dict[str, Any]], versions: list[str], latest: str | None,
                   latest_problem: str | None) -> bool:
    """LATEST is unreadable or names a version that is gone or cannot serve: a bot starting now
    would serve nothing (nothing published at all is not broken: a new store)."""
    if latest_problem:
        return True
    if latest is None:
        return False
    return latest not in versions or any(r["latest"] and "problem" in r for r in rows)


def _unpublished(store: str) -> str:
    """`no LATEST` or `LATEST is empty`: the operator looks for the file either way."""
    from flytegpt.ingest.artifact import unpublished_reason

    reason = unpublished_reason(store)
    return "no LATEST" if reason.endswith("not found") else reason


def _latest_note(store: str, latest: str | None, latest_problem: str | None) -> str:
    """What LATEST says in a store without a version: it may name one that was deleted (a
    prune by hand, a half-copied store), which is why nothing serves."""
    if latest_problem:
        return f" and LATEST is unreadable ({latest_problem})"
    if latest is not None:
        return f", though LATEST names {latest}: that version's folder is gone or has no manifest"
    return f" ({_unpublished(store)})"


def _minutes(stamp: Any) -> str:
    """`2026-12-03T17:41:17.123456+00:00` -> `2026-12-03 17:41`: the listing is read by people."""
    return str(stamp or "")[:16].replace("T", " ")


@click.command("publish")
@click.argument("version")
@config_option
@store_option
def publish_cmd(version: str, config_path: Path, store: str | None) -> None:
    """Serve VERSION: verify it and point LATEST at it (a rollback, or back again).

    VERSION is an id that `flytegpt versions` lists (YYYYMMDDTHHMMSSZ-xxxxxxxx).

    Older versions are pruned as the config's [index] keep_versions says; without --config (and
    $FLYTEGPT_CONFIG unset) nothing is pruned. A running bot swaps it in at its next reload check. The next scheduled ingest publishes a
    new version as usual: pause its launch plan while the cause is fixed.
    """
    from flytegpt.ingest.artifact import ArtifactError, check_version_id, publish
    from flytegpt.ingest.config import MAX_KEEP_VERSIONS
    from flytegpt.ingest.store import StoreLockError, StoreWriteError

    config = load(config_path, store)
    where = config.index.store
    version = version.strip()
    try:
        check_version_id(version, "flytegpt publish")
    except ArtifactError as e:
        raise click.UsageError(f"{e}; flytegpt versions lists them") from None
    versions, latest, latest_problem = _store_state(where)
    if version not in versions:
        recent = ", ".join(reversed(versions[-5:])) or "none"
        raise click.ClickException(f"{version} is not a complete version in {where} (newest: {recent})")
    try:
        # force: moving LATEST to a version made from older sources is the point of a rollback.
        # When LATEST already names it, it is verified and written again all the same: a bot that
        # refused it (its files arrived after LATEST, a download cut short) retries it when LATEST changes.
        # Without --config the bundled sample's keep_versions is not the store's own: a rollback
        # must not prune versions the store's config keeps, so nothing is pruned.
        keep = MAX_KEEP_VERSIONS if implicit_config() else config.index.keep_versions
        publish(where, version, keep_versions=keep, force=True)
    except (ArtifactError, StoreLockError, StoreWriteError, OSError) as e:
        still = (f"LATEST still names {latest}" if latest else
                 "LATEST is still unreadable" if latest_problem else "LATEST still names no version")
        raise click.ClickException(f"not published, {still}: {e}") from None
    if version == latest:
        click.echo(f"LATEST already names {version} in {where}; re-published so running bots retry it "
                   "(a bot that refused it loads it at its next reload check; /readyz says what a bot serves)")
        return
    was = latest or ("unreadable" if latest_problem else "nothing published")
    click.echo(f"LATEST -> {version} in {where} (was {was}); a running bot serves it after its next reload check")
