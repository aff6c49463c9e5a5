"""Citation numbers the model made up, ranges of them, and prose lists beside list citations.

Before, a made-up "[7]" (5 sources given) was dropped without a trace, so an operator could not tell
a model that ignores the prompt's numbering from one that follows it; a made-up range "[6-9]" stayed
in the answer as raw text while "[7]" went; and "Map over [1, 2, 3] inputs" became three citations
because another list in the answer closed a sentence. A range that starts among the sources and runs
past them ("a value in [1-10]." with 5 sources) is a value and stays as written, uncounted. Each case
is checked as the reader gets it (text and the sources listed), as a stream shows it at any cleaning
pass, and as the operator sees it (one warning per answer, `flytegpt_made_up_citations_total` in
/metrics).
"""

from __future__ import annotations

import logging
import re

import pytest

from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.citations import report_made_up
from flytegpt.bot.answering.live import LiveCitations, clean_answer
from flytegpt.bot.metrics import Metrics


def pages(n: int) -> list[Source]:
    return [Source(i, f"docs:p{i}.md", f"Page {i}", f"https://example.org/p{i}", "text", 1.0, "docs")
            for i in range(1, n + 1)]


def made_up_total(metrics: Metrics) -> float:
    """`flytegpt_made_up_citations_total` as /metrics shows it."""
    m = re.search(r"^flytegpt_made_up_citations_total (\S+)$", metrics.render().decode(), re.M)
    assert m, "flytegpt_made_up_citations_total is not in /metrics"
    return float(m.group(1))


CASES = [
    # a made-up number goes, the others are renumbered
    ("Use X [7]. Use Y [2].", "Use X. Use Y [1].", ["Page 2"]),
    # a made-up range goes like a made-up number, with either dash
    ("A [1–5]. B [6-9].", "A [1][2][3][4][5]. B.", ["Page 1", "Page 2", "Page 3", "Page 4", "Page 5"]),
    ("A [2]. B [6–9].", "A [1]. B.", ["Page 2"]),
    # separate markers, one made up: the given one stays (a range partly made up: see below)
    ("Cache it [4][7].", "Cache it [1].", ["Page 4"]),
    # a range mid-sentence cites in an answer that cites with lists, made up or not
    ("Caching [2-3] and versions [4-7] differ.", "Caching [2-3] and versions [4-7] differ.", []),
    ("Caching [2-3] and versions [4-5] differ [1, 2].", "Caching [1][2] and versions [3][4] differ [1][5].",
     ["Page 2", "Page 3", "Page 4", "Page 5", "Page 1"]),
    ("Caching [2-3] and versions [6-9] differ [1, 2].", "Caching [1][2] and versions differ [1][3].",
     ["Page 2", "Page 3", "Page 1"]),
    # a prose list after a preposition, followed by the words it goes with, stays as written
    ("Map over [1, 2, 3] inputs and cache each run. Also see [4-5].",
     "Map over [1, 2, 3] inputs and cache each run. Also see [1][2].", ["Page 4", "Page 5"]),
    ("Pick one of [2, 3] retries for each task [1, 4].", "Pick one of [2, 3] retries for each task [1][2].",
     ["Page 1", "Page 4"]),
    # ... while a list that a clause goes on after still cites in that style
    ("Caching is described in [1, 2] and tested in [3, 4].", "Caching is described in [1][2] and tested in [3][4].",
     ["Page 1", "Page 2", "Page 3", "Page 4"]),
    # values, not citations: left as written
    ("Match a digit with [0-9].", "Match a digit with [0-9].", []),
    ("Any of [1-30] works.", "Any of [1-30] works.", []),
    ("Valid values: [6-9].", "Valid values: [6-9].", []),
    ("Retries [2, 9].", "Retries [2, 9].", []),
]


@pytest.mark.parametrize("raw, shown, titles", CASES)
def test_what_the_reader_gets(raw, shown, titles):
    text, cits = clean_answer(raw, pages(5))
    assert text == shown
    assert [c.title for c in cits] == titles
    assert [c.n for c in cits] == list(range(1, len(cits) + 1))


# A range that starts among the given sources and runs past them: (what the model wrote, sources given)
RUNS_PAST = [
    ("Cache it [4-7].", 5),
    ("Set `priority` to a value in [1-10].", 5),
    ("Retries must be in the range [1-20].", 5),
    ("Versions [2-3] differ [3-8].", 5),
]


@pytest.mark.parametrize("raw, given", RUNS_PAST)
def test_a_range_running_past_the_sources_is_a_value_left_as_written(raw, given, caplog):
    """A bracketed range that starts among the sources and runs past them ("[1-10]", "[4-7]" with 5
    sources) is far more often a value's interval than a citation: read as one, "a value in [1-10]."
    cited every source for a claim none of them made and counted 6..10 as made up, noise in the
    metric that is meant to show a model ignoring the numbering. It stays as written and counts
    nothing; a range none of whose numbers is a source ("[6-9]") is still dropped like a "[7]"."""
    text, cits = clean_answer(raw, pages(given))
    assert (text, cits) == (raw, [])
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.answering.citations"):
        assert report_made_up(raw, pages(given)) == 0
    assert not caplog.records


@pytest.mark.parametrize("raw", [raw for raw, _, _ in CASES] + [raw for raw, _ in RUNS_PAST] + [
    "It is cached [1, 2]. Loop over [1, 2] someday.",  # "so" is a clause's word, "someday" is not
    "It is cached [1, 2]. Loop over [1, 2] items.",
    "It is cached [1, 2]. Caching [3, 4] and more.",
])
def test_a_stream_never_shows_what_the_final_answer_takes_back(raw):
    """At whichever point of the model's text a streamed answer is cleaned, what it shows is the start
    of the final answer. A mid-sentence list whose reading a later list of the same sentence decides
    ("described in [1, 2] and tested in [3, 4].") is held back until its sentence ends."""
    final, _ = clean_answer(raw, pages(5))
    for i in range(1, len(raw) + 1):
        live = LiveCitations(pages(5))
        shown = live.feed(raw[:i])  # the first piece is cleaned at once
        assert final.startswith(shown), (raw[:i], shown)
    live = LiveCitations(pages(5))
    assert "".join(live.feed(c) for c in raw) + live.flush() == final and not live.diverged


def test_made_up_numbers_are_one_warning_per_answer_and_counted_in_metrics(caplog):
    metrics = Metrics()
    before = made_up_total(metrics)
    # "[4-7]" runs past the 5 sources from inside them: a value, not counted (see RUNS_PAST)
    raw = "Use the secret store [7]. Cache it [4-7]. Data [0-9] stays. See [2] and [6–9]. Use [5][8]."
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.answering.citations"):
        assert report_made_up(raw, pages(5)) == 3
    [record] = [r for r in caplog.records if r.name == "flytegpt.bot.answering.citations"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith("3 citation marker(s) in the model's answer named a source number it was not given")
    assert "given 5 sources" in message and message.endswith("dropped from the answer: 6, 7, 8, 9")
    assert record.made_up_citations == 3 and record.made_up_numbers == "6, 7, 8, 9"
    assert "secret store" not in message and "Cache it" not in message  # never the answer's words
    assert made_up_total(metrics) == before + 3
    assert made_up_total(Metrics()) == before + 3  # one count per process, whichever bot's /metrics shows it


@pytest.mark.parametrize("raw", ["Cache it [1][2]. Versions [3-5].", "Values [2, 9] and [0-9].", "No citation.",
                                 "Set `priority` to a value in [1-10]."])
def test_an_answer_without_made_up_numbers_logs_and_counts_nothing(raw, caplog):
    metrics = Metrics()
    before = made_up_total(metrics)
    with caplog.at_level(logging.INFO, logger="flytegpt.bot.answering.citations"):
        assert report_made_up(raw, pages(5)) == 0
    assert not [r for r in caplog.records if r.name == "flytegpt.bot.answering.citations"]
    assert made_up_total(metrics) == before


def test_many_made_up_numbers_are_named_within_one_line(caplog):
    raw = " ".join(f"Claim [{n}]." for n in range(6, 60))
    with caplog.at_level(logging.WARNING, logger="flytegpt.bot.answering.citations"):
        assert report_made_up(raw, pages(5)) == 54
    [record] = caplog.records
    assert record.made_up_numbers == ", ".join(map(str, range(6, 26))) + ", …"


# --- through the answerer (needs bot/answering/chain.py to call report_made_up) --------------

@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_the_answerer_warns_and_counts_once_per_answer(server, sample, caplog, streamed):
    """Streamed or not, one warning and one count per made-up marker, however many cleaning passes the
    stream made; the answer shows none of them."""
    from flytegpt.bot.answering import Answer, Answerer
    from flytegpt.bot.answering.live import Delta
    from flytegpt.ingest.config import Settings

    config, searcher = sample

    def reply(body: dict) -> str:
        prompt = "\n".join(str(m.get("content")) for m in body["messages"])
        n = len(re.findall(r'<source n="\d+"', prompt))
        return (f"Cache it with `cache=True` [1]. Bump `cache_version` to refresh it [{n + 1}]. "
                + "The cache is keyed by the task's signature and inputs. " * 20
                + f"Versions are kept apart [{n + 3}-{n + 5}].")

    server.reply = reply
    answerer = Answerer(config, Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url), lambda: searcher)
    metrics = Metrics()
    before = made_up_total(metrics)
    with caplog.at_level(logging.INFO):
        if streamed:
            events = list(answerer.stream("How do I cache the output of a task?"))
            answer = next(e for e in events if isinstance(e, Answer))
            assert "".join(e.text for e in events if isinstance(e, Delta)) == answer.text
        else:
            answer = answerer.answer("How do I cache the output of a task?")
    assert answer.mode == "llm" and "[1]" in answer.text and "[2]" not in answer.text and "[" not in answer.text[-40:]
    warnings = [r for r in caplog.records if "named a source number it was not given" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].made_up_citations == 2
    assert made_up_total(metrics) == before + 2
