"""`flytegpt ask` and `flytegpt chat`: the answering path from a terminal.

Standalone click commands (the lead registers them on the `flytegpt` group). Heavy
libraries load inside the commands so `flytegpt --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from flytegpt.bot.cli_options import config_option, load, open_searcher, store_option, terminal_json, terminal_text
from flytegpt.ingest.config import Config

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.bot.answering import Answer, Answerer, Citation

EMPTY_QUESTION = "the question is empty"  # `flytegpt search` says the same


def make_answerer(config: Config) -> "Answerer":
    """An Answerer over the store's LATEST index, with the environment's model settings."""
    from flytegpt.bot.answering import Answerer
    from flytegpt.ingest.config import Settings

    from flytegpt.ingest.config import ConfigError

    searcher = open_searcher(config)
    try:
        return Answerer(config, Settings(), lambda: searcher)
    except ConfigError as e:  # e.g. a malformed OPENAI_BASE_URL: one line, not a traceback
        raise click.ClickException(str(e)) from None


def format_sources(citations: "list[Citation]") -> str:
    """One line per source, a Slack thread's with the day it was started
    (`[2] How can I cap parallel nodes? (2023-10-21) — <url>`: an old thread reads as dated);
    titles and URLs come from the corpus, so terminal-safe."""
    return "\n".join(terminal_text(f"[{c.n}] {c.title}{c.date_note} — {c.url}") for c in citations)


def print_answer(answer: "Answer", echo: Callable[[str], None] | None = None) -> None:
    """The answer as Markdown (rendered with rich on a terminal), then its sources, one per line.

    The text quotes Slack threads and the model's words: printed without terminal escapes."""
    text = terminal_text(answer.text)
    if echo is None and sys.stdout.isatty():
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(text))
    else:
        (echo or click.echo)(text)
    if answer.citations:
        (echo or click.echo)(f"\n{answer.sources_heading}:\n" + format_sources(answer.citations))


def _answer_or_explain(answerer: "Answerer", question: str, history=(), *, as_json: bool = False) -> "Answer | None":
    """One question; a user-facing message instead of a traceback for the expected failures.

    With `as_json` the message is one JSON object on stdout ({"error": ..., "message": ...}), so
    `ask --json | jq` sees a refusal as JSON too."""
    from flytegpt.bot.answering import IndexNotReady, ModelUnavailable, QuestionRejected
    from flytegpt.bot.question_text import clean_question

    try:
        # the Slack bot's rule: a question of zero-width characters is the empty question
        return answerer.answer(clean_question(question), history)
    except QuestionRejected as e:
        _explain("question_rejected", e, as_json)
    except IndexNotReady as e:
        _explain("index_not_ready", e, as_json)
    except ModelUnavailable as e:  # may quote the provider's reply
        _explain("model_unavailable", e, as_json, e.related)
        if e.related and not as_json:
            click.echo("\nThe most relevant sources I found:\n" + format_sources(e.related))
    return None


def _explain(kind: str, e: Exception, as_json: bool, related=()) -> None:
    if not as_json:
        click.echo(terminal_text(e), err=True)
        return
    out: dict = {"error": kind, "message": str(e)}
    if related:
        out["related"] = [c.to_dict() for c in related]
    click.echo(terminal_json(out))


@click.command()
@click.argument("question")
@config_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the answer as one JSON object.")
def ask(question: str, config_path: Path, store: str | None, as_json: bool) -> None:
    """Answer one question with numbered citations (offline quoting when no model is configured).

    With OPENAI_API_KEY (and OPENAI_BASE_URL for another provider) a model writes the answer.
    """
    from flytegpt.bot.question_text import clean_question

    if not clean_question(question):  # `search ""`'s error, before the index and model load
        if as_json:  # --json: a refusal is one JSON object on stdout, as the answerer's are
            click.echo(terminal_json({"error": "question_rejected", "message": EMPTY_QUESTION}))
            sys.exit(1)
        raise click.ClickException(EMPTY_QUESTION)
    answerer = make_answerer(load(config_path, store))
    answer = _answer_or_explain(answerer, question, as_json=as_json)
    if answer is None:
        sys.exit(1)
    if as_json:
        click.echo(terminal_json(answer.to_dict()))
    else:
        print_answer(answer)


@click.command()
@config_option
@store_option
def chat(config_path: Path, store: str | None) -> None:
    """An interactive conversation: follow-up questions are read in the context of earlier ones.

    With OPENAI_API_KEY (and OPENAI_BASE_URL for another provider) a model writes the answers.
    """
    from flytegpt.bot.answering import Turn

    config = load(config_path, store)
    answerer = make_answerer(config)
    mode = "model" if answerer.llm_enabled else "offline quoting (no model configured)"
    click.echo(f"FlyteGPT chat, {mode}. Type 'exit' or press Ctrl-D to quit.")
    history: list[Turn] = []
    while True:
        try:
            question = input("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            break
        if question.strip().lower() in ("exit", "quit", ":q"):
            break
        if not question.strip():
            continue
        answer = _answer_or_explain(answerer, question, history)
        if answer is None:
            continue
        click.echo()
        print_answer(answer)
        history += [Turn("user", question), Turn("assistant", answer.text)]
        history = history[-2 * max(1, config.answer.history_turns) :]
