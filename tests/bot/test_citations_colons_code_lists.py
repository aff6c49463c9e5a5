"""What a reader sees of citations next to colons, code and lists of numbers.

Before, "Here is an example [3]:" was read as a reference definition and posted with the model's
own number while the other markers were renumbered. Code that the citation parser did not
see as code (a fence indented in a list item, a 4-space block) had its subscripts rewritten as
citations. A list written in prose ("the inputs [1, 2, 3]") became citations. Every case is
checked as posted to Slack (body and sources line), streamed piece by piece, and, end to end,
through the answerer against the OpenAI stand-in on the sample index.
"""

from __future__ import annotations

import re

import pytest

from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.live import LiveCitations, clean_answer
from flytegpt.bot.answering.types import Answer
from flytegpt.bot.slack.blocks import render_answer

ZWSP = "\u200b"


def pages(n: int) -> list[Source]:
    return [Source(i, f"docs:p{i}.md", f"Page {i}", f"https://example.org/p{i}", "text", 1.0, "docs")
            for i in range(1, n + 1)]


def posted(raw: str, given: list[Source]) -> tuple[str, list[str]]:
    """(the answer body as Slack shows it, without zero-width spaces; the titles listed under it
    in order), the way the bot posts an answer."""
    text, cits = clean_answer(raw, given)
    body, listed = [], []
    for m in render_answer(Answer("q", "q", text, cits, "llm", "v1")):
        for b in m.blocks:
            if b["type"] == "section":
                body.append(b["text"]["text"])
            elif b["type"] == "context":
                listed += re.findall(r"^\[(\d+)\] <[^|>]+\|([^>]+)>", b["elements"][0]["text"], re.M)
    assert [int(n) for n, _ in listed] == list(range(1, len(listed) + 1))
    return "\n".join(body).replace(ZWSP, ""), [title for _, title in listed]


def streamed(raw: str, given: list[Source], step: int) -> str:
    """What a streamed answer showed, fed `step` characters at a time (it must never take back)."""
    live = LiveCitations(given)
    shown = "".join(live.feed(raw[i : i + step]) for i in range(0, len(raw), step)) + live.flush()
    assert not live.diverged
    return shown


def test_a_citation_before_a_colon_is_renumbered_like_the_others():
    raw = ("Cache a task with `cache=True` [1]. Here is an example [3]:\n\n"
           "```python\n@task(cache=True)\ndef f(): ...\n```")
    body, titles = posted(raw, pages(4))
    assert body.startswith("Cache a task with `cache=True` [1]. Here is an example [2]:")
    assert titles == ["Page 1", "Page 3"]  # the [2] the reader sees is the page the model meant
    assert streamed(raw, pages(4), 5) == clean_answer(raw, pages(4))[0]


def test_a_citation_before_a_colon_mid_sentence_and_first_in_the_answer():
    body, titles = posted("The key setting [2]: `cache_version` must change [1].", pages(4))
    assert body == "The key setting [1]: `cache_version` must change [2]."
    assert titles == ["Page 2", "Page 1"]


def test_a_numbered_step_citing_before_a_colon_and_its_indented_code():
    raw = "1. Enable caching [1]:\n   ```python\n   x = data[2]\n   y = rows[3]\n   ```\n2. Bump the version [4]."
    body, titles = posted(raw, pages(4))
    assert "1. Enable caching [1]:" in body
    assert "x = data[2]\n   y = rows[3]" in body  # the code as the model wrote it
    assert body.rstrip().endswith("Bump the version [2].")
    assert titles == ["Page 1", "Page 4"]  # no page for data[2] or rows[3]
    for step in (1, 7):
        assert "x = data[2]" in streamed(raw, pages(4), step)


@pytest.mark.parametrize(
    "raw, code",
    [
        ("- Use:\n  ```python\n  first = items[1]\n  ```\n- Done [2].", "first = items[1]"),
        ("Example [2]:\n\n    x = inputs[1]\n    y = x[3]\n\nDone [2].", "x = inputs[1]\n    y = x[3]"),
        ("> Quoted:\n> ```\n> v = a[3]\n> ```\n\nDone [2].", "v = a[3]"),
        ("1. Step:\n\n       z = cells[1][3]\n\n2. Done [2].", "z = cells[1][3]"),
        ("Run ``values[1]`` or ```pairs[3]``` [2].", "values[1]"),
        ("  ~~~\n  w = b[1]\n  ~~~\nDone [2].", "w = b[1]"),
    ],
    ids=["fence in a bullet", "4-space block", "fence in a quote", "indented block in a list item",
         "double and triple backtick spans", "indented tilde fence"],
)
def test_code_wherever_markdown_puts_it_keeps_its_subscripts(raw, code):
    text, cits = clean_answer(raw, pages(3))
    assert code in text
    assert [c.title for c in cits] == ["Page 2"]  # only the real citation, renumbered [1]
    assert "[1]." in text and "[2]." not in text


def test_a_reference_definition_mid_answer_is_not_a_citation():
    """Where Markdown reads "[2]: url" as a definition (after a blank line), it stays as written;
    the same "[2]:" inside a sentence is a citation."""
    raw = "See the page [2].\n\n[2]: https://example.org/p2\n\nMore [2]: and [1]."
    text, cits = clean_answer(raw, pages(2))
    assert text.startswith("See the page [1].")
    assert "[2]" + ZWSP + ": https://example.org/p2" in text  # defused, not renumbered
    assert text.endswith("More [1]" + ZWSP + ": and [2].")
    assert [c.title for c in cits] == ["Page 2", "Page 1"]


# --- lists of numbers ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, shown, titles",
    [
        # data: followed by more words, after a value sign, or naming no source
        ("Map the task over the inputs [1, 2, 3] and cache each run [1].",
         "Map the task over the inputs [1, 2, 3] and cache each run [1].", ["Page 1"]),
        ("Pass the list [4, 5, 6, 7, 8] as inputs [1].", "Pass the list [4, 5, 6, 7, 8] as inputs [1].", ["Page 1"]),
        ("Set xs = [1, 2] first [3].", "Set xs = [1, 2] first [1].", ["Page 3"]),
        ("Valid values: [2, 3].", "Valid values: [2, 3].", []),
        ("Use [10, 20, 30] as sizes [2].", "Use [10, 20, 30] as sizes [1].", ["Page 2"]),
        ("The default is [0, 1].", "The default is [0, 1].", []),
        # citations: they close a statement
        ("Caching is per task [3, 1]. Versions too [2].", "Caching is per task [1][2]. Versions too [3].",
         ["Page 3", "Page 1", "Page 2"]),
        ("Caching works [1-3]:", "Caching works [1][2][3]:", ["Page 1", "Page 2", "Page 3"]),
        ("It is cached [2, 3], and versioned [1].", "It is cached [1][2], and versioned [3].",
         ["Page 2", "Page 3", "Page 1"]),
        ("**Cached [1, 2]**", "*Cached [1][2]*", ["Page 1", "Page 2"]),  # Slack's bold
        # mid-sentence: a citation in an answer that cites with lists elsewhere, else data
        ("Caching [1, 2] and versioning [3, 4] are separate [1, 3].",
         "Caching [1][2] and versioning [3][4] are separate [1][3].", ["Page 1", "Page 2", "Page 3", "Page 4"]),
        # said to be a citation: always read as one
        ("Caching [Source 2, 3] and more.", "Caching [1][2] and more.", ["Page 2", "Page 3"]),
    ],
)
def test_a_bracket_of_numbers_is_a_citation_only_where_it_reads_as_one(raw, shown, titles):
    body, listed = posted(raw, pages(8))
    assert body == shown
    assert listed == titles or (not titles and listed == [f"Page {i}" for i in range(1, 9)])


def test_a_list_with_a_number_that_is_no_source_is_left_as_written():
    body, listed = posted("A [9]. B [2, 9].", pages(3))
    assert body.startswith("A. B [2, 9].")


# --- end to end: the answerer, streamed and not, against the stand-in model -------------------

@pytest.mark.slow
def test_through_the_answerer_streamed_and_not(server, sample):
    from flytegpt.bot.answering import Answerer
    from flytegpt.bot.answering.live import Delta
    from flytegpt.ingest.config import Settings

    config, searcher = sample

    def reply(body: dict) -> str:
        prompt = "\n".join(str(m.get("content")) for m in body["messages"])
        n = len(re.findall(r'<source n="\d+"', prompt))
        assert n >= 2
        return (f"Cache it [{n}]. Here is an example [1]:\n\n"
                "1. Step one:\n   ```python\n   x = data[2]\n   ```\n"
                f"2. Map over the inputs [1, 2] and cache each run [{n}].")

    server.reply = reply
    answerer = Answerer(config, Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url), lambda: searcher)
    question = "How do I cache the output of a task?"
    whole = answerer.answer(question)
    events = list(answerer.stream(question))
    final = next(e for e in events if isinstance(e, Answer))
    shown = "".join(e.text for e in events if isinstance(e, Delta))
    for a in (whole, final):
        assert a.mode == "llm"
        assert a.text.replace(ZWSP, "").startswith("Cache it [1]. Here is an example [2]:")
        assert "x = data[2]" in a.text and "the inputs [1, 2] and cache each run [1]." in a.text
        assert len(a.citations) == 2 and a.citations[0].n == 1 and a.citations[1].n == 2
    assert whole.citations == final.citations
    assert shown == final.text
