"""`flytegpt report` (the maintainers' HTML report) and `flytegpt feedback snapshot`."""

from __future__ import annotations

from pathlib import Path

import click

from flytegpt.bot.cli_options import config_option, file_errors, load, refuse_same_file, store_option, terminal_text
from flytegpt.ingest.store import atomic_write, get_fs


@click.command("report")
@click.option("--db", "db", required=True, metavar="PATH",
              help="The bot's feedback database ([bot] feedback_db), or a snapshot of it (a path or an fsspec URL).")
@config_option
@store_option
@click.option("--since", default="30d", show_default=True, help="The period: 30d, 2w, 12h ...")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write.")
@click.option("--no-store", is_flag=True, help="Only the question log: no sources or index sections.")
@click.option("--eval", "eval_questions", default=None, type=click.Path(exists=True, dir_okay=False),
              help="An eval question file (JSONL): retrieval metrics per index version ([bot] report_eval_questions).")
def report_cmd(db: str, config_path: Path, store: str | None, since: str, out_path: Path, no_store: bool,
               eval_questions: str | None) -> None:
    """Write the maintainers' report: questions per day, knowledge gaps, cited and never-cited
    sources, the index over time and answer latency, as one self-contained HTML page.

    Privacy follows [bot] report_channels and report_dms; Slack user ids are never shown.
    """
    from flytegpt.bot.report import ReportOptions, build_report, render_page
    from flytegpt.bot.slack.feedback import FeedbackDatabaseError

    refuse_same_file(db, out_path)  # before anything is read or written: the database stays whole
    config = load(config_path, store)
    try:
        _check_since(since)
        options = ReportOptions.from_config(config, since=since, eval_questions=eval_questions)
        report = build_report(db, store=None if no_store else config.index.store, options=options, config=config)
    except (ValueError, FileNotFoundError, FeedbackDatabaseError) as e:
        raise click.ClickException(str(e)) from None
    page = render_page(report)
    with file_errors(out_path, db):  # through a temporary file: never a half-written report
        fs, path = get_fs(str(out_path))
        atomic_write(fs, path, page.encode("utf-8"))
    for note in report.notes:  # a wrong --store, channels left out: said here too, not only on the page
        click.echo(f"note: {terminal_text(note)}", err=True)
    t = report.totals
    click.echo(f"wrote {out_path}: {t['questions']} questions ({t['answered']} answered, {t['not_found']} not found, "
               f"{t['model_failed'] + t['failed']} failed), {len(report.topics)} gap topics", err=True)


_MAX_SINCE_S = 100 * 365 * 86400


def _check_since(since: str) -> None:
    """A period the report can count back (`99999999d` reached before the year 1)."""
    from flytegpt.bot.report import parse_since

    try:
        too_long = parse_since(since) > _MAX_SINCE_S
    except OverflowError:
        too_long = True
    if too_long:
        raise ValueError(f"--since must be a positive duration such as 30d, 2w or 12h (at most 100 years), "
                         f"not {since!r}")


@click.command("snapshot")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False), metavar="PATH",
              help="The feedback SQLite database ([bot] feedback_db).")
@click.option("--to", "target", default=None,
              help="Where the copy goes (a path or an fsspec URL); default [bot] feedback_snapshot.")
@config_option
def snapshot_cmd(db_path: str, target: str | None, config_path: Path) -> None:
    """Copy the feedback database as it is (consistent, while the bot runs) to where the weekly report
    reads it, or as a backup before an upgrade.

    The database is only read: its schema, journal mode and file mode stay as they are, and the copy
    has the same schema version, so the release that wrote it can still open the copy. A database the
    bot was killed in the middle of writing is copied as its committed rows, from a read-only place too.
    A URL is uploaded from a temporary copy, made beside the database when its folder has room, else in
    $TMPDIR (a TMPDIR that is set comes first).
    """
    from flytegpt.bot.slack.feedback import export_snapshot

    target = target or load(config_path, None).bot.feedback_snapshot
    if not target:
        raise click.ClickException("no target: pass --to or set [bot] feedback_snapshot")
    with file_errors(target):
        n = export_snapshot(db_path, target)
    click.echo(f"wrote {n:,} bytes to {target}", err=True)
