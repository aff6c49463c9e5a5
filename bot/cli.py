"""`flytegpt`: the command line. Heavy libraries load inside commands, so `--help` is instant."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click

from flytegpt.bot.cli_options import (TerminalSafeGroup, config_option, implicit_config, load, open_searcher,
                                      store_option, terminal_text)
from flytegpt.ingest.config import ConfigError

if TYPE_CHECKING:
    from flytegpt.ingest.config import Config

MODE_HELP = ("hybrid: dense and keyword (BM25) results fused, as the bot searches; "
             "dense: embeddings only; keyword: BM25 only.")


@click.group(cls=TerminalSafeGroup)
@click.option("-v", "--verbose", count=True,
              help="More logging: -v info, -vv debug (without it: warnings; serve logs info, and with -vv debug, Slack's retries among it; Slack's event payloads only with FLYTEGPT_DEBUG_SLACK=1).")
@click.version_option(package_name="flytegpt", prog_name="flytegpt", message="%(prog)s %(version)s")
def main(verbose: int) -> None:
    """FlyteGPT: answers about an open-source project from its Slack history, docs and code.

    -v and --version are options of flytegpt itself: they come before the command
    (flytegpt -v ingest ..., not flytegpt ingest -v ...).
    """
    from flytegpt.bot.logs import setup_logging

    # redacting like the server's: a provider's error body can echo the API key
    setup_logging(level=logging.WARNING - 10 * min(verbose, 2), fmt="%(levelname)s %(name)s: %(message)s",
                  replace=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' per-tensor "Loading weights" bar says nothing useful; ours show real work.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@main.command()
@config_option
@store_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--dry-run", is_flag=True,
              help="Read and chunk the sources, show what would be indexed and skipped; embed and write nothing.")
def ingest(config_path: Path, store: str | None, quiet: bool, as_json: bool, dry_run: bool) -> None:
    """Build and publish a new index version from the configured sources.

    Without --config (and $FLYTEGPT_CONFIG unset) the configuration is the bundled sample
    corpus's (ingest/sample/flytegpt.toml in the installed package): it is refused for a store
    whose LATEST serves an index of other sources, which it would replace.
    An index the same as the one LATEST names is not published again (nothing is pruned).
    """
    config = load(config_path, store)
    with _report_once():
        _ingest(config, config_path, quiet, as_json, dry_run)


def _ingest(config: "Config", config_path: Path, quiet: bool, as_json: bool, dry_run: bool) -> None:
    from flytegpt.ingest.artifact import ArtifactError
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.store import StoreLockError, StoreWriteError
    from flytegpt.ingest.tuning import TuningError

    if dry_run:
        _dry_run(config, progress=not quiet and not as_json, as_json=as_json)
        return
    _refuse_sample_over_another_index(config_path, config)
    try:
        summary = run_ingest(config, progress=not quiet and not as_json)
    except (ConfigError, ValueError, ArtifactError, StoreLockError, StoreWriteError, TuningError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a disk that filled up, a volume gone: what and where, not a traceback
        raise click.ClickException(f"ingest into {config.index.store} failed: {e}") from None
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    _print_summary(summary)


@contextlib.contextmanager
def _report_once() -> Iterator[None]:
    """The summary lists every skipped file and note: their log lines (kept for Flyte tasks'
    logs) would print each twice. With -v they stay."""
    from flytegpt.ingest.pipeline import IN_REPORT

    def once(record: logging.LogRecord) -> bool:
        return not getattr(record, IN_REPORT, False)

    logger = logging.getLogger("flytegpt.ingest.pipeline")
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    if quiet:
        logger.addFilter(once)
    try:
        yield
    finally:
        logger.removeFilter(once)


def _refuse_sample_over_another_index(config_path: Path, config,
                                      would: str = "replace it with the bundled sample corpus") -> None:
    """`flytegpt ingest --store X` with the implicit sample config would publish the sample corpus
    as X's LATEST: refused, before anything is read, when LATEST serves an index of other sources.
    `flytegpt tune --store X` likewise (`would` says what it would do): it serves nothing, but it
    replaces X's chunk cache with the sample's (the next real ingest chunks every document again)
    and trains on a corpus that is not X's, which is never what was meant.

    A new or empty store, or one already serving the sample, is fine (`make demo`, the README's
    first command). A LATEST whose sources cannot be told is refused too: it may be anybody's."""
    if not implicit_config():
        return
    from flytegpt.ingest.artifact import ArtifactError, read_latest, read_manifest, source_names

    where = config.index.store
    sample = {s.name for s in config.sources}
    try:
        latest = read_latest(where)
        if latest is None:  # nothing published: the sample's index is the first
            return
        served = source_names(read_manifest(where, latest))
        if served <= sample:
            return
        what = f"an index of {', '.join(sorted(served))} (LATEST {latest})"
    except ArtifactError as e:  # garbage in LATEST, a manifest that cannot be read
        what = f"an index whose sources cannot be read ({e})"
    raise click.ClickException(
        f"the index store {where} serves {what}; without --config this would {would}: "
        f"pass --config FILE (or --config {config_path} to do it on purpose)")


def _dry_run(config, *, progress: bool, as_json: bool) -> None:
    from rich.console import Console

    from flytegpt.ingest.pipeline import dry_run, no_chunks_reason

    try:
        sources, timings = dry_run(config, progress=progress)
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"reading the sources failed: {e}") from None
    total = sum(s.chunks for s in sources)
    if as_json:
        click.echo(json.dumps({"dry_run": True, "chunks": total, "sources": [s.__dict__ for s in sources],
                               "timings": timings}))
    else:
        console = Console()
        _print_sources(console, "Dry run: what an ingest would index (nothing embedded or written)", sources)
        console.print(f"{total:,} chunks in {sum(timings.values()):.1f}s")
    if not total:  # the ingest would fail here: so does its dry run
        raise click.ClickException(f"no chunks: {no_chunks_reason(config)}; an ingest would stop here")


def _print_sources(console, title: str, sources) -> None:
    from rich.markup import escape
    from rich.table import Table

    def text(value: str) -> str:  # names and reasons come from the corpus: text, never markup or escapes
        return escape(terminal_text(value))

    table = Table(title=title)
    by_rules = any(s.left_out for s in sources)  # a column only when include/exclude/skip_tests left files out
    columns = ("source", "kind", "documents", "chunks", "skipped") + (("left out by rules",) if by_rules else ())
    for col in columns:
        table.add_column(col, justify="right" if col not in ("source", "kind") else "left")
    for s in sources:
        row = [text(s.name), s.kind, str(s.documents), str(s.chunks), str(len(s.skipped))]
        table.add_row(*row, *([str(s.left_out)] if by_rules else []))
    console.print(table)
    for s in sources:
        for name, reason in s.skipped:
            console.print(f"[yellow]skipped[/] {text(s.name)}: {text(name)}: {text(reason)}")
        for name, reason in s.notes:  # read and indexed, but something the user should fix
            console.print(f"[yellow]note[/] {text(s.name)}: {text(name)}: {text(reason)}")


def _print_summary(summary) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    title = (f"Unchanged: LATEST already names {summary.version} (no new version written)" if summary.unchanged
             else f"Published index version {summary.version}")
    _print_sources(console, title, summary.sources)
    total = summary.total_seconds
    embed = summary.timings.get("embed", 0.0)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.timings.items())
    console.print(
        f"embeddings: {summary.embeddings_computed} computed, {summary.embeddings_reused} reused "
        f"({summary.model_id} on {summary.device}"
        f"{f', {summary.backend} {summary.precision}' if summary.backend else ''})"
    )
    if summary.autotune:
        console.print(f"precision auto: {summary.autotune['reason']}")
    if summary.tuning:
        from flytegpt.ingest.tuning import TuneReport

        console.print(f"tuned model: {escape(terminal_text(TuneReport.from_dict(summary.tuning).describe()))}")
    console.print(f"time: {total:.1f}s ({stages}); {summary.chunks / max(total, 1e-9):.0f} chunks/s, "
                  f"embedding {100 * embed / max(total, 1e-9):.0f}% of it")
    if summary.unchanged:
        console.print(f"store: {summary.store}  LATEST still names {summary.version} (unchanged: nothing "
                      "published or pruned)")
    else:
        console.print(f"store: {summary.store}  LATEST -> {summary.version}")


@main.command()
@config_option
@store_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def tune(config_path: Path, store: str | None, quiet: bool, as_json: bool) -> None:
    """Fine-tune the embedding model on pairs from the corpus and store it (no index is built).

    `flytegpt ingest` with `[tuning] enabled = "on"` (or "auto" on a GPU) does this itself and
    embeds with the result; run this to see the held-out figures first.
    Without --config (and $FLYTEGPT_CONFIG unset) it is refused, as `flytegpt ingest` is, for a
    store whose LATEST serves an index of other sources than the bundled sample corpus's.
    """
    from flytegpt.ingest.pipeline import collect_chunks
    from flytegpt.ingest.store import StoreWriteError, check_writable
    from flytegpt.ingest.tuning import TuningError, ensure_tuned

    config = load(config_path, store)
    _refuse_sample_over_another_index(
        config_path, config, would="tune on the bundled sample corpus and replace the store's chunk cache with "
                                   "the sample's")
    try:
        check_writable(config.index.store)  # the tuned model is stored there: know before training
        chunks, *_ = collect_chunks(config, progress=not quiet and not as_json)
        report = ensure_tuned(chunks, config, progress=not quiet and not as_json)
    except (ConfigError, ValueError, TuningError, StoreWriteError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    click.echo(report.describe())
    if not report.refused:
        click.echo(f"stored in {config.index.store}; set [tuning] enabled = \"on\" so `flytegpt ingest` embeds with it")


@main.command()
@click.argument("question")
@config_option
@store_option
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000), help="How many chunks to show.")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "keyword"]), default="hybrid", show_default=True,
              help=MODE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a line per chunk (rank, score, source_id, title, url, text), for scripts.")
def search(question: str, config_path: Path, store: str | None, k: int, mode: str, as_json: bool) -> None:
    """Show the ranked chunks for a question: rank, score, source id, title, URL."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from flytegpt.bot.question_text import clean_question, separate_questions

    question = clean_question(question)  # the bot's rule: zero-width characters alone are the empty question
    if not question:  # every chunk would "match" an empty query: its ranking means nothing
        from flytegpt.bot.cli_answer import EMPTY_QUESTION

        raise click.ClickException(EMPTY_QUESTION)
    searcher = open_searcher(load(config_path, store))

    def hybrid(q: str, k: int) -> list:  # as the bot searches: each of several questions too
        return searcher.search(q, k, questions=separate_questions(q))

    fn = {"hybrid": hybrid, "dense": searcher.dense_search, "keyword": searcher.keyword_search}[mode]
    if as_json:  # whole URLs and texts, which a terminal table folds
        for hit in fn(question, k):
            c = hit.chunk
            click.echo(json.dumps({"rank": hit.rank, "score": round(hit.score, 6), "source_id": c.source_id,
                                   "title": c.title, "url": c.url, "text": c.text}, ensure_ascii=False))
        return
    table = Table(title=f"{mode} search, index {searcher.version}")
    for col in ("rank", "score", "source id", "title", "url"):
        table.add_column(col, overflow="fold")
    for hit in fn(question, k):
        shown = (escape(terminal_text(v)) for v in (hit.chunk.source_id, hit.chunk.title, hit.chunk.url))
        table.add_row(str(hit.rank), f"{hit.score:.3f}", *shown)
    Console().print(table)


@main.command(name="eval")
@click.argument("questions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
@store_option
@click.option("--k", default=10, show_default=True, type=click.IntRange(10, 1000),
              help="Chunks retrieved per question, at least 10. Recall, MRR and coverage score the top 10; "
                   "in hybrid mode a larger k also widens what the recall@8000c context is packed from (and, "
                   "above [retrieval] candidates, the pool the top 10 are fused from).")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "keyword"]), default="hybrid", show_default=True,
              help=MODE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print the metrics as one JSON object on stdout (the table goes to stderr).")
@click.option("--misses", is_flag=True, help="List the questions whose gold is not in the top 10.")
@click.option("--ranks", is_flag=True,
              help="List every question whose first gold source is not first, with its rank: where MRR@10 is lost.")
def eval_(questions: Path, config_path: Path, store: str | None, k: int, mode: str, as_json: bool, misses: bool,
          ranks: bool) -> None:
    """Retrieval metrics (recall@5/10, MRR@10, coverage@10, recall@8000c) on a JSONL question set."""
    from flytegpt.ingest.evaluation import CONTEXT_CHARS, METRICS, QuestionFileError, evaluate, load_questions, unknown_gold

    try:
        qs = load_questions(questions)
    except QuestionFileError as e:
        raise click.ClickException(str(e)) from None
    config = load(config_path, store)
    searcher = open_searcher(config)
    missing = unknown_gold(qs, (c.source_id for c in searcher.chunks))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        click.echo(terminal_text(f"warning: {len(missing)} gold source id(s) are in no chunk of index "
                                 f"{searcher.version}, so they can never be found (a typo, or a source not "
                                 f"ingested): {shown}"), err=True)
    fn = {"hybrid": searcher.search, "dense": searcher.dense_search, "keyword": searcher.keyword_search}[mode]
    from flytegpt.bot.pasted import search_text
    from flytegpt.bot.question_text import search_as_asked

    def retrieve(q: str) -> list:
        if mode != "hybrid":  # what the bot searches: a pasted traceback by its error (bot/pasted.py)
            return [h.chunk for h in fn(search_text(q.strip(), config.answer.max_question_chars), k)]
        q, hits = search_as_asked(searcher, q, k, config.answer.max_question_chars)
        # recall@8000c counts what a prompt of 8,000 characters of sources holds of each source, packed
        # as the answerer packs (a metric of a fixed size: not [answer] token_budget, which is larger)
        from flytegpt.bot.answering.budget import CharCounter, context_chunks

        return context_chunks(hits, q, CONTEXT_CHARS // 4, CharCounter())

    report = evaluate(qs, retrieve)

    def echo(line: str) -> None:  # with --json, stdout is the one JSON document: the table goes to stderr
        click.echo(line, err=as_json)

    header = f"{'':12}{'n':>4}" + "".join(f"{m:>14}" for m in METRICS)
    echo(f"{mode} retrieval, index {searcher.version}")
    echo(header)
    rows = [("overall", report)] + list(report["by_kind"].items())
    for name, r in rows:  # `kind` is the question file's: printed as text
        echo(terminal_text(f"{name:12}{r['n']:>4}" + "".join(f"{r[m]:>14.3f}" for m in METRICS)))
    for q in report["questions"]:
        rank = q["first_gold_rank"]
        if ranks and rank != 1:
            # a tuning loop reads where each first gold source sits and what stands above it
            above = list(dict.fromkeys(q["top"][: (rank or 11) - 1]))[:3]
            echo(terminal_text(f"rank {rank or '>10'} {q['id']} ({q['kind']}): gold {q['gold']} above it {above}"))
        elif misses and not rank:
            echo(terminal_text(f"miss {q['id']} ({q['kind']}): gold {q['gold']} top {q['top'][:5]}"))
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "questions"}))


@main.command()
@config_option
@store_option
def demo(config_path: Path, store: str | None) -> None:
    """Answer the questions in QUESTIONS.jsonl beside the config file (the sample corpus ships
    some), from the store's index, with the configured or the offline answerer."""
    from flytegpt.ingest.evaluation import QuestionFileError, load_questions

    config = load(config_path, store)
    questions_file = config_path.parent / "QUESTIONS.jsonl"
    try:
        questions = [q.question for q in load_questions(questions_file)] if questions_file.exists() else []
    except QuestionFileError as e:
        raise click.ClickException(str(e)) from None
    if not questions:
        raise click.ClickException(f"no questions in {questions_file}: demo answers the questions of a "
                                   "QUESTIONS.jsonl beside the config (one JSON object a line with a \"question\")")
    from flytegpt.bot.cli_answer import make_answerer, print_answer

    answerer = make_answerer(config)
    for q in questions:
        click.echo(f"\n> {terminal_text(q)}\n")
        print_answer(answerer.answer(q))


from flytegpt.bot.cli_answer import ask, chat  # noqa: E402  (commands that live beside their feature)
from flytegpt.bot.cli_serve import feedback_group, serve_cmd  # noqa: E402
from flytegpt.bot.cli_report import report_cmd, snapshot_cmd  # noqa: E402
from flytegpt.bot.cli_index import publish_cmd, versions_cmd  # noqa: E402

feedback_group.add_command(snapshot_cmd)  # `flytegpt feedback snapshot`
for _command in (ask, chat, serve_cmd, feedback_group, report_cmd, versions_cmd, publish_cmd):
    main.add_command(_command)

if __name__ == "__main__":
    sys.exit(main())
