"""Text a user or a model writes is cleaned in time proportional to its length.

A regex that backtracks over a run of spaces, brackets or zero-width characters took seconds
for Slack's 40,000-character limit on a Bolt listener thread (one user stalled every answer),
and the streamed answer is cleaned again for every piece. Each input here is five times that
limit: quadratic work would take many minutes and fail the timeout; linear work takes well
under a second each. No timing is asserted: the timeout is the guard.
"""

from __future__ import annotations

import pytest

from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.citations import process_citations, sources_list_start
from flytegpt.bot.answering.live import LiveCitations, clean_answer
from flytegpt.bot.question_text import clean_question
from flytegpt.bot.slack import render
from flytegpt.bot.question_text import code_identifiers, reads_as_another_language, reads_as_followup, stands_alone
from flytegpt.bot.slack.addressing import closes_the_thread, for_the_bot, small_talk
from flytegpt.bot.slack.history import question_text
from flytegpt.bot.slack.stream import neutralize

N = 200_000
SOURCES = [Source(1, "docs:caching.md", "Caching", "https://docs.example.org/caching", "text", 1.0, "docs")]
HOSTILE = {
    "spaces inside": "a" + " " * N + "b",
    "zero-width spaces inside": "a" + "\u200b" * N + "b",
    "newlines inside": "a" + "\n" * N + "b",
    "tabs before a bracket": "a" + "\t" * N + "[",
    "spaces before a marker": "x" + " " * N + "[1",
    "open brackets": "[" * N,
    "open citations": "[1" * (N // 2),
    "open links": "[x](http://" * (N // 11),
    "link labels": "[a](" * (N // 4),
    "angle brackets": "<" * N,
    "list under a heading": "\nSources:\n" + "\n- a" * (N // 4) + "\nx",
    "indented lines": (" " * 100 + "\n") * (N // 101),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_question_and_answer_cleaning_is_linear_in_the_text(name):
    text = HOSTILE[name]
    assert clean_question(text) == text.strip().strip("\u200b")
    clean, _ = process_citations(text, SOURCES)
    assert len(clean) <= len(text)
    shown, _ = clean_answer(text, SOURCES)
    assert sources_list_start(text) <= len(text)
    assert all(len(s) <= render.SECTION_BUDGET for s in render.markdown_sections(neutralize(shown)))


@pytest.mark.timeout(60)
def test_a_streamed_answer_of_long_whitespace_runs_is_cleaned_piece_by_piece_in_time():
    """The whole growing answer is cleaned again for every piece: each pass must stay linear."""
    live = LiveCitations(SOURCES)
    for _ in range(200):
        live.feed(" " * 200 + "[1a]" + "\t" * 200)
    assert live.flush() is not None


SLACK_HOSTILE = {
    "open mentions": "<@U1|" * (N // 5),
    "open bot mentions": "<@UBOT|" * (N // 7),
    "open user groups": "<!subteam^" * (N // 10),
    "open here": "<!here|" * (N // 7),
    "open links": "<http://x|" * (N // 10),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(SLACK_HOSTILE))
def test_a_message_is_read_and_triaged_in_time_linear_in_its_length(name):
    """What the listener does with a message before anything else: who it is for, its question."""
    text = SLACK_HOSTILE[name]
    assert question_text(text, "UBOT")
    for_the_bot(text, "UBOT")
    closes_the_thread(text)
    small_talk(text, "FlyteGPT")
    reads_as_followup(text)
    stands_alone(text)
    reads_as_another_language(text)
    code_identifiers(text)


def test_a_streamed_answer_is_cleaned_once_per_stretch_of_text_not_per_token():
    """Before, the whole answer so far was cleaned again for every model token (a 12,000-
    character answer: 3,000 passes, 4 s of CPU); now the first text at once, then one pass per
    CLEAN_EVERY characters, and the same text in the end."""
    from flytegpt.bot.answering.live import CLEAN_EVERY

    text = ("Set `cache=True` [1] and bump `cache_version` when the code changes. " * 180)[:12_000]
    live = LiveCitations(SOURCES)
    shown = "".join(live.feed(text[i:i + 4]) for i in range(0, len(text), 4)) + live.flush()
    assert shown == clean_answer(text, SOURCES)[0]
    assert live.passes <= len(text) // CLEAN_EVERY + 2
    assert live.passes <= 130  # a pass per 48th of the text once that is more than CLEAN_EVERY: ~114 here
