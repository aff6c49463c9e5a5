"""Citation post-processing, source de-duplication and packing sources into the token budget."""

from __future__ import annotations

import pytest
from support.answering_support import RAY_CODE, RAY_DOC, Hit, chunk

from flytegpt.bot.answering.budget import CharCounter, Source, dedupe_hits, pack_sources, token_counter
from flytegpt.bot.answering.citations import process_citations


def count_tokens(text: str) -> int:
    return token_counter().count(text)


def sources(n: int) -> list[Source]:
    return [Source(i, f"s:{i}", f"Title {i}", f"https://x.org/{i}", "text", 1.0, "docs") for i in range(1, n + 1)]


@pytest.mark.parametrize(
    "raw, text, order",
    [
        ("A [2]. B [1].", "A [1]. B [2].", [2, 1]),
        ("A [1, 3].", "A [1][2].", [1, 3]),
        ("A [3][1].", "A [1][2].", [3, 1]),
        ("A [1-3].", "A [1][2][3].", [1, 2, 3]),
        ("A [2–3].", "A [1][2].", [2, 3]),
        ("A [Source 2].", "A [1].", [2]),
        ("A [9]. B [2, 9]. C [2].", "A. B [2, 9]. C [1].", [2]),  # a list naming no source is data, not citations
        ("A [2] and [2] again.", "A [1] and [1] again.", [2]),
    ],
)
def test_markers_are_validated_and_renumbered(raw, text, order):
    out, cits = process_citations(raw, sources(3))
    assert out == text
    assert [c.source_id for c in cits] == [f"s:{i}" for i in order]
    assert [c.n for c in cits] == list(range(1, len(order) + 1))


def test_code_is_left_alone():
    raw = "Index with `xs[1]`:\n\n```python\nys = xs[2]\n```\n\nDone [3]."
    out, cits = process_citations(raw, sources(3))
    assert "`xs[1]`" in out and "ys = xs[2]" in out and out.endswith("Done [1].")
    assert [c.source_id for c in cits] == ["s:3"]


def test_made_up_links_lose_their_url_and_model_source_lists_are_removed():
    raw = "See [the docs](https://x.org/2#part) and [this](https://made.up/page) [2].\n\nSources:\n[1] Title 1\n[2] Title 2"
    out, cits = process_citations(raw, sources(2))
    assert out == "See [the docs](https://x.org/2#part) and this [1]."
    assert len(cits) == 1


def test_dedupe_keeps_best_and_merges_two_chunks_of_one_source():
    second = chunk(RAY_DOC.source_id, "docs", "Ray plugin > Setup", RAY_DOC.url, "Then enable KubeRay.")
    third = chunk(RAY_DOC.source_id, "docs", "Ray plugin > More", RAY_DOC.url, "Third chunk text.")
    hits = [Hit(RAY_DOC, 0.9, 1), Hit(RAY_CODE, 0.8, 2), Hit(second, 0.7, 3), Hit(third, 0.6, 4)]
    out = dedupe_hits(hits, max_sources=5)
    assert [s.source_id for s in out] == [RAY_DOC.source_id, RAY_CODE.source_id]
    assert RAY_DOC.text in out[0].text and "Then enable KubeRay." in out[0].text
    assert "Third chunk text." not in out[0].text
    assert [s.n for s in out] == [1, 2]
    assert out[1].language == "python"


def _filler(i: int, paragraphs: int = 6) -> str:
    return "\n\n".join(f"Paragraph {j} of source {i} talks about deployment notes and cluster sizing." * 3 for j in range(paragraphs))


def test_packing_fits_every_source_when_they_fit_whole():
    small = [Source(i, f"s:{i}", f"T{i}", "u", f"short text {i}", 1.0, "docs") for i in range(1, 4)]
    kept = pack_sources(small, "anything", 500)
    assert [s.text for s in kept] == [s.text for s in small] and [s.n for s in kept] == [1, 2, 3]


def test_packed_context_includes_the_source_at_rank_seven_within_the_budget():
    budget = 2000
    answer = "To enable the KubeRay operator, set enabled-plugins to include ray in the propeller config."
    texts = [_filler(i, 9) for i in range(1, 11)]
    parts = texts[6].split("\n\n")
    texts[6] = "\n\n".join(parts[:3] + [answer] + parts[3:])  # in the middle of rank 7
    ranked = [Source(i, f"s:{i}", f"T{i}", "u", t, 1.0 - i / 100, "docs") for i, t in enumerate(texts, 1)]
    # whole chunks best-first would spend the budget before rank 7
    assert sum(count_tokens(s.text) for s in ranked[:6]) > budget
    kept = pack_sources(ranked, "How do I enable the KubeRay operator (ray plugin)?", budget)
    assert [s.source_id for s in kept] == [f"s:{i}" for i in range(1, 11)]
    assert sum(count_tokens(s.text) for s in kept) <= budget
    assert answer in kept[6].text
    assert "[...]" in kept[6].text  # cut to an excerpt, marked as such
    # better ranks get at least as much of the budget
    assert count_tokens(kept[0].text) >= count_tokens(kept[9].text)


def test_packing_a_character_budget_for_the_eval():
    ranked = [Source(i, f"s:{i}", f"T{i}", "u", _filler(i, 12), 1.0, "docs") for i in range(1, 11)]
    kept = pack_sources(ranked, "cluster sizing", 2000, CharCounter())
    assert len(kept) == 10 and sum(len(s.text) for s in kept) <= 8000


def test_one_source_longer_than_the_budget_keeps_its_best_passage():
    text = "\n\n".join(["unrelated words here " * 40] * 5 + ["the secret key is mounted under /etc/secrets"] + ["more filler " * 40] * 5)
    kept = pack_sources([Source(1, "a:1", "A", "u", text, 1.0, "docs")], "where is the secret mounted?", 100)
    assert "/etc/secrets" in kept[0].text and count_tokens(kept[0].text) <= 100


def test_a_real_tokenizer_is_used_offline():
    assert token_counter().name != "chars/4"
    assert count_tokens("RayJobConfig worker_node_config") > 4


def test_the_offline_answerer_uses_the_keyword_index_stopwords_and_identifier_splitting():
    from flytegpt.bot.answering.offline import query_terms
    from flytegpt.ingest.keyword import STOPWORDS

    assert query_terms("Is there a way to use with_overrides on my FlyteFile?") == {"overrides", "flyte", "file"}
    assert not query_terms("how would I do that, is there anything?") & STOPWORDS


def test_code_sources_are_fenced_with_the_language_table_names():
    def lang(path: str) -> str:
        return Source(1, f"code:{path}", "t", "u", "x", 1.0, "code").language

    assert (lang("web/app.js"), lang("web/app.TS"), lang("deploy.sh"), lang("api.proto")) == (
        "javascript", "typescript", "bash", "protobuf")
    assert lang("notes.txt") == ""


# --- what a person sees of odd model endings and markers ---------------------------------

def _posted(raw: str, given: list[Source]) -> tuple[str, str]:
    """(the answer body as Slack shows it, the sources list under it), the way the bot posts."""
    from flytegpt.bot.answering.live import clean_answer
    from flytegpt.bot.answering.types import Answer
    from flytegpt.bot.slack.blocks import render_answer

    text, cits = clean_answer(raw, given)
    body, tail = [], []
    for m in render_answer(Answer("q", "q", text, cits, "llm", "v1")):
        for b in m.blocks:
            if b["type"] == "section":
                body.append(b["text"]["text"])
            elif b["type"] == "context":
                tail.append(b["elements"][0]["text"])
    return "\n".join(body), "\n".join(tail)


def _streamed(raw: str, given: list[Source], step: int) -> tuple[str, bool]:
    """What a streamed answer showed, fed `step` characters at a time, and whether it diverged."""
    from flytegpt.bot.answering.live import LiveCitations

    live = LiveCitations(given)
    shown = "".join(live.feed(raw[i : i + step]) for i in range(0, len(raw), step)) + live.flush()
    return shown, live.diverged


@pytest.mark.parametrize("url", ["https://made.up/caching.html", "https://x.org/1"])
def test_reference_definitions_at_the_end_do_not_turn_the_citation_into_a_link(url):
    raw = f"Bump `cache_version` [1].\n\n[1]: {url}\n[2]: https://x.org/2"
    body, tail = _posted(raw, sources(2))
    assert body == "Bump `cache_version` [1]."  # brackets kept, no link, no definition line
    assert "[1] <https://x.org/1|Title 1>" in tail
    for step in (1, 4, 9):
        shown, diverged = _streamed(raw, sources(2), step)
        assert (shown, diverged) == ("Bump `cache_version` [1].", False)


@pytest.mark.parametrize(
    "ending",
    [
        "**Sources:**\n- [Title 1](https://docs.made.up/1)\n- [Title 2](https://x.org/2)",
        "Sources:\n\n* Title 1\n* Title 2",
        "### References\n- Title 1 (docs)\n- https://x.org/2",
        "References:\n[Title 1](https://x.org/1)\n1. Title 2",
    ],
)
def test_a_model_written_sources_list_of_links_or_titles_is_removed(ending):
    body, tail = _posted(f"Use `cache_version` [1].\n\n{ending}\n", sources(2))
    assert body == "Use `cache_version` [1]."
    assert tail.count("Title 1") == 1 and "Title 2" not in tail
    for step in (1, 3, 7):  # streamed, it is held back and never shown: nothing to take back
        assert _streamed(f"Use `cache_version` [1].\n\n{ending}\n", sources(2), step) == \
            ("Use `cache_version` [1].", False)


@pytest.mark.parametrize(
    "raw",
    [
        "Steps:\n\n- install it [1]\n- [Title 1](https://x.org/1)\n- read more",  # an ordinary list at the end
        "See the references below.\n\nReferences:\n- Title 1\n\nThen run it [1].",  # not at the end
    ],
)
def test_ordinary_bullet_lists_survive(raw):
    out, _ = process_citations(raw, sources(2))
    assert out == raw
    for step in (1, 5):  # streamed whole, never taken back
        assert _streamed(raw, sources(2), step) == (raw, False)


@pytest.mark.parametrize(
    "raw, text, order",
    [
        ("Use cache_version[^1].\n\n[^1]: Title 1 docs", "Use cache_version[1].", [1]),
        ("A [^2] and [^1].\n\n[^1]: one\n[^2]: two", "A [1] and [2].", [2, 1]),
        ("See [¹] and [²³].", "See [1] and.", [1]),
        ("Bump it [1a] or [2b] [2].", "Bump it or [1].", [2]),
        ("C [1][1]. D [2] [2][1].", "C [1]. D [1][2].", [1, 2]),
        ("E [2][^2] and [9][2].", "E [1] and [1].", [2]),
    ],
)
def test_footnotes_superscripts_odd_and_repeated_markers(raw, text, order):
    out, cits = process_citations(raw, sources(3))
    assert out == text
    assert [c.source_id for c in cits] == [f"s:{i}" for i in order]
    body, _ = _posted(raw, sources(3))
    assert body == text


def test_code_optional_words_and_links_are_not_taken_for_odd_markers():
    raw = "Use `xs[1a]` or [optional] args, [the docs](https://x.org/1) [1][1].\n\n```python\nys = xs[1][1]\nzs[^2]\n```"
    out, cits = process_citations(raw, sources(2))
    assert out == raw.replace("[1][1].", "[1].")
    assert [c.source_id for c in cits] == ["s:1"]


def test_sources_that_share_a_title_are_told_apart():
    """Two projects' docs share page titles: "[1] Basics, [2] Basics" says nothing."""
    guide = chunk("flyte-docs:user_guide/basics/index.md", "docs", "Basics", "https://a/1", "The user guide's basics.")
    readme = chunk("flytesnacks-docs:examples/basics/README.md", "docs", "Basics", "https://a/2", "The example's basics.")
    tasks = chunk("flyte-docs:user_guide/basics/tasks.md", "docs", "Tasks", "https://a/3", "Tasks.")
    tasks_too = chunk("flyte-docs:concepts/tasks.rst", "docs", "tasks", "https://a/4", "More tasks.")
    out = dedupe_hits([Hit(guide, 0.9, 1), Hit(readme, 0.8, 2), Hit(tasks, 0.7, 3), Hit(tasks_too, 0.6, 4), Hit(RAY_DOC, 0.5, 5)],
                      max_sources=5)
    assert [s.title for s in out] == [
        "Basics (flyte-docs)", "Basics (flytesnacks-docs)",
        "Tasks (flyte-docs:user_guide/basics/tasks.md)", "tasks (flyte-docs:concepts/tasks.rst)",
        RAY_DOC.title,
    ]
