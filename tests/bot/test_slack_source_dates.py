"""A Slack thread source says when it was written, wherever a user sees the source.

An outside review found old Slack answers describing behaviour that later changed, shown as if
current. The model is told each thread's day (prompts.format_sources); these tests check that the
user is too: the sources under a Slack answer (blocks, and the plain text Slack falls back to),
`flytegpt ask` and `chat`, `--json`, and the offline answer's quotes. Docs and code have no date,
and a title that already holds the day ("#help thread, 2023-10-21") does not get it twice.

The Slack tests run the real app against the Slack emulator over the bundled sample corpus, whose
thread "What's the right way to give a task an API token?" was started on 2024-03-05.
"""

from __future__ import annotations

import html
import json
import re

import pytest
from click.testing import CliRunner
from support.openai_server import Page
from support.paths import FIXTURES
from support.slack_checks import assert_slack_accepts

from flytegpt.bot.answering import Answer
from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.citations import cite_source
from flytegpt.bot.cli import main
from flytegpt.bot.cli_answer import format_sources
from flytegpt.bot.slack.blocks import plain_text, render_answer
from flytegpt.ingest.chunking import chunk_document
from flytegpt.ingest.config import SourceConfig, sample_config_path
from flytegpt.ingest.models import Document
from flytegpt.ingest.sources.slack_export import Directory, thread_document

pytestmark = pytest.mark.timeout(180)

TOKEN_Q = "What's the right way to give a task an API token? I don't want it in the image."
THREAD_TITLE = "What's the right way to give a task an API token?"
THREAD_ID = "sample-slack:ask-the-community/1709632800.000300"
THREAD_URL = "https://example.slack.com/archives/C0SAMPLE01/p1709632800000300"
THREAD_DAY = "2024-03-05"
DATED_LINE = f"<{THREAD_URL}|{THREAD_TITLE}> ({THREAD_DAY})"  # how Slack gets the thread's source line
_SOURCE_TAG = re.compile(r'<source n="(\d+)" title="([^"]*)" kind="(\w+)"')
_DAY = re.compile(r"\(\d{4}-\d\d-\d\d\)")


def cite_the_thread_and_a_page(body: dict) -> str:
    """The stand-in model: cites the API-token thread and the first docs page it was given."""
    prompt = str(body["messages"][-1].get("content", ""))
    sources = [(n, html.unescape(title), kind) for n, title, kind in _SOURCE_TAG.findall(prompt)]
    thread = next((n for n, title, kind in sources if kind == "slack" and title == THREAD_TITLE), None)
    page = next((n for n, _, kind in sources if kind == "docs"), None)
    if thread is None or page is None:
        return "I don't know: the sources do not cover this."
    return f"Store the token as a secret [{thread}] and request it with `secret_requests` [{page}]."


def _sources_text(msg: dict) -> str:
    return "\n".join(el["text"] for b in msg.get("blocks", []) if b["type"] == "context" for el in b["elements"])


# --- Slack, through the emulator ------------------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True])
def test_a_slack_answer_lists_the_thread_it_cites_with_the_day_it_was_started(make_harness, streaming):
    harness = make_harness(bot={"streaming": streaming})
    harness.llm.reply = cite_the_thread_and_a_page
    d = harness.emu.mention(TOKEN_Q)
    [answer] = harness.emu.wait_for(lambda: (m := harness.answers(thread_ts=d.ts)) and not m[0].get("streaming")
                                    and _sources_text(m[0]) and m, timeout=30)
    heading, thread, page = _sources_text(answer).split("\n")
    assert thread == f"[1] {DATED_LINE}"
    assert page.startswith("[2] ") and not _DAY.search(page)  # a docs page has no date
    if not streaming:  # the fallback text (notifications, history) says it too
        assert f"[1] {DATED_LINE}" in answer["text"]
    harness.idle()
    [row] = harness.logged_questions()  # the question log keeps the day with the source
    assert [(s["source_id"], s["date"]) for s in row["sources"]][0] == (THREAD_ID, THREAD_DAY)
    assert row["sources"][1]["date"] is None


def test_an_answer_slack_refuses_in_blocks_keeps_the_threads_day_in_its_plain_text(make_harness):
    harness = make_harness(bot={"deferred_post_s": 30})
    harness.llm.reply = cite_the_thread_and_a_page
    harness.emu.script_error("chat.postMessage", status=200, error="invalid_blocks", retry_after=None, times=5,
                             match=lambda args: "secret_requests" in str(args.get("text")) and args.get("blocks"))
    d = harness.emu.mention(TOKEN_Q)
    [answer] = harness.wait_answers(thread_ts=d.ts, timeout=30)
    assert not answer.get("blocks") and f"[1] {DATED_LINE}" in answer["text"]


# --- the rendering, for titles the sample corpus has none of --------------------------------------

SLACK = SourceConfig(name="slack", kind="slack_export", path=FIXTURES / "sources" / "slack",
                     workspace_url="https://acme.slack.com")
NAMES = Directory(users={"U1": "asker", "U2": "helper"})
ROOT = "1697889600.000100"  # 2023-10-21 12:00 UTC
ROOT_URL = "https://acme.slack.com/archives/C2/p1697889600000100"
REPLY_URL = "https://acme.slack.com/archives/C2/p1697889700000001"


def _source(doc: Document, n: int) -> Source:
    first = chunk_document(doc)[0]
    return Source(n, first.source_id, first.title, first.url, first.text, 1.0, first.kind)


def _thread(n: int, *texts: str, reply_first: bool = False) -> Source:
    """A thread started at ROOT (`reply_first`: its parent is gone, its first reply comes first)."""
    stamps = [ROOT] * (not reply_first) + [f"1697889700.{i:06d}" for i in range(1, len(texts) + 1)]
    msgs = [{"ts": ts, "user": "U1" if ts == ROOT else "U2", "text": t} for ts, t in zip(stamps, texts)]
    return _source(thread_document(SLACK, "help", "C2", ROOT, msgs, NAMES), n)


def _shown(sources: list[Source]) -> tuple[str, str, str]:
    """(the Slack sources block, the plain-text fallback, the CLI's source lines) of an answer citing them."""
    citations = [cite_source(s.n, s) for s in sources]
    answer = Answer("q", "q", " ".join(f"See [{s.n}]." for s in sources), citations, "llm", "v1")
    replies = render_answer(answer, feedback_id="a1")
    assert_slack_accepts(replies)
    return _sources_text({"blocks": replies[-1].blocks}), "\n".join(m.text for m in plain_text(replies)), format_sources(citations)


def test_a_threads_day_is_shown_once_when_its_title_already_holds_it():
    asked = _thread(1, "How can I cap parallel nodes? The map task starts them all.", "Use concurrency=4.")
    untitled = _thread(2, "", "Use concurrency=4.")  # a question with no words: "#help thread, 2023-10-21"
    reply = _thread(3, "Set concurrency on the map task.", reply_first=True)  # its parent is gone
    assert untitled.title == "#help thread, 2023-10-21"
    assert reply.title == "#help thread, 2023-10-21: Set concurrency on the map task."
    page = _source(Document(source="docs", locator="releases/1.10", kind="docs", title="Flyte 1.10",
                            url="https://docs.example.org/releases/1.10", text="Flyte 1.10 adds things."), 4)
    slack, fallback, cli = _shown([asked, untitled, reply, page])
    root, first_reply = ROOT_URL, f"{REPLY_URL}?thread_ts={ROOT}&cid=C2"
    assert slack.split("\n")[1:] == [
        f"[1] <{root}|How can I cap parallel nodes?> (2023-10-21)",
        f"[2] <{root}|#help thread, 2023-10-21>",
        f"[3] <{first_reply.replace('&', '&amp;')}|#help thread, 2023-10-21: Set concurrency on the map task.>",
        "[4] <https://docs.example.org/releases/1.10|Flyte 1.10>",  # a docs path shaped like a thread: no date
    ]
    assert slack in fallback
    assert cli.split("\n") == [
        f"[1] How can I cap parallel nodes? (2023-10-21) — {root}",
        f"[2] #help thread, 2023-10-21 — {root}",
        f"[3] #help thread, 2023-10-21: Set concurrency on the map task. — {first_reply}",
        "[4] Flyte 1.10 — https://docs.example.org/releases/1.10",
    ]


def test_a_long_thread_title_is_cut_and_keeps_its_day_after_the_link():
    long = _thread(1, "Why " + "does my workflow fail " * 20 + "?", "Because.")
    slack, _, _ = _shown([long])
    line = slack.split("\n")[1]
    assert line.endswith(" ...> (2023-10-21)") and len(line) < 400  # cut by the loader, the day kept


# --- the CLI --------------------------------------------------------------------------------------

def _run(sample, *args: str, env: dict | None = None):
    config, _ = sample
    return CliRunner().invoke(main, [*args, "--config", str(sample_config_path()), "--store", config.index.store],
                              env={"COLUMNS": "300", "OPENAI_API_KEY": None, **(env or {})})


def test_ask_offline_dates_the_thread_it_quotes_and_lists(sample):
    result = _run(sample, "ask", TOKEN_Q)
    assert result.exit_code == 0, result.output
    n = re.search(rf"\*\*{re.escape(THREAD_TITLE)}\*\* \({THREAD_DAY}\) \[(\d)\]", result.output)
    assert n, result.output  # the quote's heading
    lines = result.output.split("\n")
    # the link is the quoted reply's own, in the thread (thread_document's message_urls)
    listed = f"[{n[1]}] {THREAD_TITLE} ({THREAD_DAY}) — https://example.slack.com/archives/C0SAMPLE01/p"
    assert any(ln.startswith(listed) and "thread_ts=1709632800.000300" in ln for ln in lines), lines
    docs = [ln for ln in lines if re.match(r"\[\d\] .* — file://", ln)]
    assert docs and not any(_DAY.search(ln) for ln in docs)

    as_json = _run(sample, "ask", TOKEN_Q, "--json")
    assert as_json.exit_code == 0, as_json.output
    cites = {c["source_id"]: c for c in json.loads(as_json.output)["citations"]}
    assert cites[THREAD_ID]["date"] == THREAD_DAY and cites[THREAD_ID]["title"] == THREAD_TITLE
    assert all(c["date"] is None for sid, c in cites.items() if not sid.startswith("sample-slack:"))


def test_ask_and_chat_with_a_model_date_the_thread_in_their_sources(sample, server):
    server.reply = cite_the_thread_and_a_page
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
    ask = _run(sample, "ask", TOKEN_Q, env=env)
    chat = CliRunner().invoke(main, ["chat", "--config", str(sample_config_path()), "--store", sample[0].index.store],
                              input=f"{TOKEN_Q}\nexit\n", env={"COLUMNS": "300", **env})
    for result in (ask, chat):
        assert result.exit_code == 0, result.output
        assert f"[1] {THREAD_TITLE} ({THREAD_DAY}) — {THREAD_URL}\n" in result.output, result.output
    page_line = re.search(r"^\[2\] .*$", ask.output, re.M)
    assert page_line and not _DAY.search(page_line[0])
    as_json = _run(sample, "ask", TOKEN_Q, "--json", env=env)
    first, second = json.loads(as_json.output)["citations"]
    assert (first["source_id"], first["date"], second["date"]) == (THREAD_ID, THREAD_DAY, None)


def test_the_sources_offered_when_the_model_fails_are_dated_too(sample, server):
    server.script(*[Page()] * 5)  # an SSO sign-in page instead of the API
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
    result = _run(sample, "ask", TOKEN_Q, env=env)
    assert result.exit_code == 1 and "most relevant sources" in result.output
    assert re.search(rf"^\[\d\] {re.escape(THREAD_TITLE)} \({THREAD_DAY}\) — {THREAD_URL}$", result.output, re.M), \
        result.output
    server.script(*[Page()] * 5)
    as_json = _run(sample, "ask", TOKEN_Q, "--json", env=env)
    related = {c["source_id"]: c["date"] for c in json.loads(as_json.output)["related"]}
    assert related[THREAD_ID] == THREAD_DAY


def test_the_closest_matches_of_a_question_not_found_date_their_threads():
    """"I couldn't find this" lists the closest sources: a thread among them is dated there too."""
    from support.answering_support import RAY_DOC, RAY_SLACK, WordSearcher

    from flytegpt.bot.answering import Answerer
    from flytegpt.ingest.config import AnswerConfig, Config, Settings

    searcher = WordSearcher([RAY_SLACK, RAY_DOC])
    answerer = Answerer(Config(answer=AnswerConfig(min_score=0.9)), Settings(), lambda: searcher)
    answer = answerer.answer("ray workers zebra giraffe elephant")
    assert answer.mode == "not_found"
    thread = next(c for c in answer.citations if c.source_id == RAY_SLACK.source_id)
    assert thread.date == "2022-07-05" and f"- {thread.title} (2022-07-05) [{thread.n}]" in answer.text
    assert "(20" not in next(line for line in answer.text.splitlines() if RAY_DOC.title in line)
