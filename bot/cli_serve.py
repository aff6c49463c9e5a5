"""`flytegpt serve` and the `flytegpt feedback` group: questions, export, compact (the lead adds them
to the main group)."""

from __future__ import annotations

import logging
import os
import sys

import click

from flytegpt.bot.cli_options import config_option, file_errors, implicit_config, load, store_option


@click.command("serve")
@config_option
@store_option
@click.option("--port", type=int, default=None, help="Port of /healthz, /readyz, /metrics (default: [bot] http_port).")
def serve_cmd(config_path, store: str | None, port: int | None) -> None:
    """Run the Slack bot (Socket Mode) with hot index reload, health and metrics.

    Needs SLACK_BOT_TOKEN (xoxb-) and SLACK_APP_TOKEN (xapp-); OPENAI_API_KEY /
    OPENAI_BASE_URL for model answers (without them the bot quotes passages).

    flytegpt -vv serve logs at debug, but not the Slack libraries' debug lines: they quote
    every event and request, users' messages and DMs included. FLYTEGPT_DEBUG_SLACK=1 adds them.
    """
    # The bot runs many single-query searches at once on its worker pool: one OpenMP thread per
    # query beats intra-op parallelism fighting over the cores (p95 under a 50-question burst on
    # 2 cores: 2.7 s -> 2.0 s). Must be set before torch/faiss load; an explicit value wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from flytegpt.bot.logs import setup_logging
    from flytegpt.bot.serve import serve
    from flytegpt.bot.slack.retention import RetentionJob
    from flytegpt.ingest.config import ConfigError, Settings

    config = load(config_path, store)
    # [bot] retention_days: old question text leaves the feedback database at start, then daily
    retention = RetentionJob(config.bot.feedback_db, config.bot.retention_days)
    try:
        verbose = click.get_current_context().find_root().params.get("verbose") or 0
        setup_logging(json_logs=config.bot.json_logs, level=logging.DEBUG if verbose >= 2 else logging.INFO)
        retention.start()
        serve(config, Settings(), port=port)
    except ConfigError as e:  # includes missing/malformed Slack tokens
        raise click.ClickException(str(e)) from None
    finally:
        retention.stop()


@click.group("feedback")
def feedback_group() -> None:
    """Feedback collected from 👍/👎 in Slack."""


@feedback_group.command("questions")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False), metavar="PATH",
              help="The feedback SQLite database ([bot] feedback_db).")
@click.option("--out", "out_path", required=True, help="JSONL question file to write ('-' for stdout).")
@click.option("--include-private", is_flag=True,
              help="Also questions from DMs, the assistant panel, private channels and group DMs "
                   "(left out by default: the file is meant to be shared).")
def questions_cmd(db_path: str, out_path: str, include_private: bool) -> None:
    """Write the questions their askers confirmed (the asker's own 👍) as a question file for
    `flytegpt eval`, the sources their answer cited as gold: real questions a new index must keep
    answering. Only questions from public channels unless --include-private.

    The database is only read (through a temporary copy): it is not upgraded, so an older bot can
    still use it."""
    from flytegpt.bot.slack.feedback import export_confirmed

    left_out: dict[str, int] = {}
    with file_errors(out_path):
        n = export_confirmed(db_path, out_path, include_private=include_private, left_out=left_out)
    note = _left_out_note(left_out)
    if note:
        click.echo(f"note: {note}", err=True)
    if out_path != "-":
        click.echo(f"wrote {n} confirmed question(s) to {out_path}"
                   + ("" if n or left_out else " (none yet: no asker has 👍 an answer that cited sources)"), err=True)


def _left_out_note(left_out: dict[str, int]) -> str | None:
    """What `feedback questions` says of the confirmed answers its privacy rule left out."""
    why = {"dm": "from DMs or the assistant panel", "private": "from private channels or group DMs",
           "untyped": "from channels logged before the bot recorded whether a channel is private"}
    parts = [f"{left_out[k]} {text}" for k, text in why.items() if left_out.get(k)]
    if not parts:
        return None
    total = sum(left_out.get(k, 0) for k in why)
    return (f"left out {total} confirmed answer(s) asked in private or possibly private conversations "
            f"({'; '.join(parts)}); pass --include-private to include them (then check the file before sharing it)")


@feedback_group.command("export")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False), metavar="PATH",
              help="The feedback SQLite database ([bot] feedback_db).")
@click.option("--out", "out_path", required=True, help="JSONL file to write ('-' for stdout).")
def export_cmd(db_path: str, out_path: str) -> None:
    """Write every vote with its question, answer, sources and index version as JSONL.

    The database is only read (through a temporary copy): it is not upgraded, so an older bot can
    still use it."""
    from flytegpt.bot.slack.feedback import export_feedback

    with file_errors(out_path):
        n = export_feedback(db_path, out_path)
    if out_path != "-":
        click.echo(f"wrote {n} feedback record(s) to {out_path}", err=True)
    else:
        sys.stdout.flush()


@feedback_group.command("compact")
@click.option("--db", "db_path", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="The feedback SQLite database (default: [bot] feedback_db of --config).")
@config_option
def compact_cmd(db_path: str | None, config_path) -> None:
    """Shrink the feedback database to what it holds (one SQLite VACUUM) and switch it to
    incremental auto_vacuum, so that retention gives space back from then on.

    For a database of an earlier release too big for the bot to switch at start (over 512 MB:
    the bot's start-up warning names this command). Run it with the bot stopped: a VACUUM locks
    the file while it rewrites it, so it is refused while another process has the file open or
    holds a lock on it, and then nothing is changed. It needs free disk space for a copy of what
    the database holds. Prints the file's size before and after.
    """
    from flytegpt.bot.slack.feedback import FeedbackDatabaseError, compact_database

    if db_path is None:
        if implicit_config():
            raise click.ClickException("which database? pass --db PATH, or --config FILE to use its [bot] feedback_db")
        db_path = load(config_path, None).bot.feedback_db
    try:
        done = compact_database(db_path)
    except FeedbackDatabaseError as e:
        raise click.ClickException(str(e)) from None
    freed = done.bytes_before - done.bytes_after
    click.echo(f"compacted {done.path}: {_size(done.bytes_before)} before, {_size(done.bytes_after)} after "
               f"({_size(max(freed, 0))} given back)")
    if done.auto_vacuum_before != "incremental":
        click.echo(f"auto_vacuum: incremental (was {done.auto_vacuum_before}): retention now gives space back by itself")


def _size(n: int) -> str:
    """Bytes as an operator reads them (MB with one decimal; KB below 1 MB)."""
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 2**10:,.1f} KB"
