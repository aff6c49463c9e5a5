"""Corner cases of answering: several questions in one message, reasoning models' thinking, other
models' citation forms, offline follow-ups, other servers' early stops, and counting tokens."""

from __future__ import annotations

import pytest

from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.citations import process_citations
from flytegpt.bot.answering.reasoning import ReasoningFilter, strip_reasoning
from flytegpt.bot.question_text import separate_questions

SOURCES = [Source(i, f"docs:{i}.md", f"Page {i}", f"https://example.org/{i}", "text", 1.0, "docs")
           for i in range(1, 5)]


@pytest.mark.parametrize("text, expected", [
    # a "?" in pasted code, a log, inline code or a quote ends no question
    ("my log says:\n```\nWARNING: is the path correct? retrying\n```\nHow do I fix the upload path?", []),
    ("Why does `re.compile(r'(\\w+)?')` fail in my task? How do I register a workflow remotely?",
     ["Why does `re.compile(r'(\\w+)')` fail in my task?", "How do I register a workflow remotely?"]),
    ('The error says "is the bucket public?" How do I set the bucket policy?', []),
    ("> is the bucket public?\nHow do I set the bucket policy?", []),
    ("Traceback (most recent call last):\n  File \"wf.py\", line 3, in <module>\nValueError: is x set?\n"
     "How do I cache a task?", []),
    # other ways a question ends
    ("How do I cache a task?How do I set GPU resources?", ["How do I cache a task?", "How do I set GPU resources?"]),
    ("How do I cache a task?! And how do I set GPU resources?",
     ["How do I cache a task?", "And how do I set GPU resources?"]),
    ("How do I cache a task\uff1fHow do I set GPU resources\uff1f",
     ["How do I cache a task\uff1f", "How do I set GPU resources\uff1f"]),
    # a "?" in a link ends nothing
    ("See https://example.org/docs?page=2 for caching", []),
])
def test_only_the_askers_own_sentences_end_a_question(text: str, expected: list[str]) -> None:
    assert separate_questions(text) == expected


ABOUT_THE_TAG = [
    'Use `answer = reply.split("</think>")[-1]` to drop the reasoning [1].',
    "Drop the reasoning [1]:\n\n    answer = reply.split('</think>')[-1]\n",
    "Everything before the closing </think> tag is reasoning; drop it [1].",
    "See `x` </think> then the answer [1].",
]


@pytest.mark.parametrize("reply", ABOUT_THE_TAG)
def test_an_answer_about_the_closing_tag_comes_out_whole(reply: str) -> None:
    """A closing tag mid-sentence or in code is the answer's subject, not the end of thinking;
    read as the end, it cost the answer its first half, and the bot held back every later stream."""
    assert strip_reasoning(reply) == reply
    for size in (1, 3, 7):
        f = ReasoningFilter()
        shown = "".join(f.feed(reply[i:i + size]) for i in range(0, len(reply), size)) + f.flush()
        assert shown == reply and not f.restarted


def test_thinking_that_ends_with_the_tag_on_its_own_line_is_still_removed() -> None:
    reply = "Okay, the user wants caching; the sources say cache=True.\n</think>\n\nSet `cache=True` [1]."
    assert strip_reasoning(reply) == "Set `cache=True` [1]."
    f = ReasoningFilter()
    for i in range(0, len(reply), 4):
        f.feed(reply[i:i + 4])
    f.flush()
    assert f.restarted and f.answer == "Set `cache=True` [1]."


def test_an_s3_bucket_in_brackets_is_no_citation_but_a_list_of_s_markers_is() -> None:
    assert process_citations("Store it in an [S3] bucket [1].", SOURCES)[0] == "Store it in an [S3] bucket [1]."
    text, cited = process_citations("Cache it [S1], retry it [S1, S3].", SOURCES)
    assert text == "Cache it [1], retry it [1][2]." and [c.source_id for c in cited] == ["docs:1.md", "docs:3.md"]


# ---- in the answerer --------------------------------------------------------------------------

def _offline(chunks=None):
    from support.answering_support import ALL, WordSearcher

    from flytegpt.bot.answering import Answerer
    from flytegpt.ingest.config import AnswerConfig, Config, Settings

    searcher = WordSearcher(list(chunks or ALL))
    answerer = Answerer(Config(answer=AnswerConfig(min_score=0.0)), Settings(OPENAI_API_KEY="", OPENAI_BASE_URL=""),
                        lambda: searcher)
    return answerer, searcher


def test_offline_a_follow_up_joined_with_the_threads_subject_is_not_split_again() -> None:
    """Before, "How do I use ray on Flyte? in the helm chart?" was split back into the old question and the
    bare follow-up, each searched alone: "in the helm chart?" brought the Roadmap."""
    from flytegpt.bot.answering import Turn

    answerer, searcher = _offline()
    history = [Turn("user", "How do I use ray on Flyte workers?"), Turn("assistant", "Install the plugin [1].")]
    answerer.answer("what about the ray head node?", history)
    assert searcher.queries[-1] == "How do I use ray on Flyte workers? what about the ray head node?"
    assert searcher.questions[-1] == []
    answerer.answer("How do I use ray on Flyte workers? And how do I cache a task output?")  # no thread: split
    assert len(searcher.questions[-1]) == 2


def test_offline_a_follow_ups_note_names_only_what_its_asker_wrote() -> None:
    """Before, the thread's first question's names were said again under every follow-up."""
    from flytegpt.bot.answering import Turn

    answerer, _ = _offline()
    first = answerer.answer("How do I run ray on Flyte from Haskell?")
    assert "mention Haskell" in first.text
    history = [Turn("user", "How do I run ray on Flyte from Haskell?"), Turn("assistant", first.text)]
    follow_up = answerer.answer("and the ray workers?", history)
    assert "None of the passages" not in follow_up.text


@pytest.mark.parametrize("finish, note", [("MAX_TOKENS", "length"), ("max_tokens", "length"), ("LENGTH", "length"),
                                          ("SAFETY", "content_filter"), ("recitation", "content_filter")])
def test_other_servers_names_for_the_two_early_stops_carry_their_notes(finish: str, note: str) -> None:
    """Before, only "length" and "content_filter" were read; Gemini's and others' names left a cut answer
    without its note and its code block open."""
    from support.answering_support import ALL, WordSearcher
    from support.openai_server import OpenAIStandIn, Reply

    from flytegpt.bot.answering import Answerer
    from flytegpt.ingest.config import AnswerConfig, Config, Settings

    with OpenAIStandIn() as server:
        server.script(Reply("Use `RayJobConfig` [1]. For example\n\n```python\n@task(", finish=finish))
        settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
        searcher = WordSearcher(list(ALL))
        answer = Answerer(Config(answer=AnswerConfig(min_score=0.0, timeout_s=3.0)), settings,
                          lambda: searcher).answer("how do I use ray?")
    assert answer.note == note and answer.text.count("```") == 2


def test_a_long_link_or_base64_counts_as_a_chat_models_tokenizer_would_at_least() -> None:
    """WordPiece reads a run of over 100 characters as one [UNK], so a prompt with a
    1,074-character link fitted [answer] context_window by the bot's count (26 tokens) and the model
    (211-699 tokens in BPE) refused it."""
    import base64

    from flytegpt.bot.answering.budget import token_counter

    counter = token_counter()
    if not counter.name.startswith("wordpiece"):
        pytest.skip("the packaged WordPiece tokenizer is not the counter here")
    link = "https://mermaid.live/edit#pako:" + "eNqVkU1PwzAMhv9K5HM3tBYG" * 42
    blob = base64.b64encode(bytes(range(256)) * 3).decode()
    assert counter.count(link) >= (len(link) - 40) / 1.5 and counter.count(blob) >= len(blob) / 1.5
    assert counter.count("a\nb\nc") == counter.count("a b c") + 2  # a line break is a token
    cut = counter.truncate(f"see {link} for the diagram", 100)
    assert cut.startswith("see https://mermaid.live") and counter.count(cut) <= 100
