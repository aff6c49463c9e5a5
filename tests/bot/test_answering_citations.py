"""Citation post-processing, source de-duplication and the token budget."""

from __future__ import annotations

import pytest
from support.answering_support import RAY_CODE, RAY_DOC, Hit, chunk

from flytegpt.bot.answering.budget import Source, count_tokens, dedupe_hits, fit_sources, token_counter
from flytegpt.bot.answering.citations import process_citations


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
        ("A [9]. B [2, 9].", "A. B [1].", [2]),
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


def test_fit_sources_respects_the_budget():
    long = Source(1, "a:1", "A", "u", "word " * 3000, 1.0, "docs")
    short = Source(2, "b:1", "B", "u", "short answer text here", 0.9, "slack")
    kept = fit_sources([long, short], 500)
    assert [s.source_id for s in kept] == ["a:1"]
    assert count_tokens(kept[0].text) <= 510
    kept = fit_sources([short, long], 500)
    assert [s.source_id for s in kept] == ["b:1", "a:1"]
    assert sum(count_tokens(s.text) for s in kept) <= 520
    assert [s.n for s in kept] == [1, 2]


def test_a_real_tokenizer_is_used_offline():
    assert token_counter().name != "chars/4"
    assert count_tokens("RayJobConfig worker_node_config") > 4
