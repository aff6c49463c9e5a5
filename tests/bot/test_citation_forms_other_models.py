"""Models that are not OpenAI's cite in other forms than [n] (【1】, 【1†source】, [doc1],
[S1], [^1^], [1: Caching], [#1], (Source 1), superscripts). They were left as written and the answer
was labelled "Sources consulted (the answer cites none of them)"; now each unambiguous form is read as
[n]: renumbered, linked to the source it names, and listed under "Sources". What the asker sees is
checked as the bot posts it (the Slack blocks), streamed and whole, and through the real Answerer
against the OpenAI stand-in."""

from __future__ import annotations

import time

import pytest
from support.answering_support import ALL, RAY_CODE, RAY_DOC, RAY_QUESTION, ask, given_titles, posted, standin_answerer
from support.openai_server import Reply

from flytegpt.bot import messages
from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.citations import process_citations
from flytegpt.bot.answering.live import LiveCitations, _stable_end, clean_answer


def sources(n: int) -> list[Source]:
    return [Source(i, f"s:{i}", f"Title {i}", f"https://x.org/{i}", "text", 1.0, "docs") for i in range(1, n + 1)]



def shown_while_streaming(raw: str, given: list[Source]) -> list[str]:
    """What a stream shows after every character the model writes (the cleaned settled part)."""
    return [clean_answer(raw[: _stable_end(raw[:i])], given)[0] for i in range(1, len(raw) + 1)]


FORMS = [
    # (what the model wrote, what the asker reads, the sources listed in order)
    ("Bump `cache_version` to invalidate the cache 【1】. Secrets come from `secret_requests`【2】.",
     "Bump `cache_version` to invalidate the cache [1]. Secrets come from `secret_requests`[2].", [1, 2]),
    ("Bump `cache_version` to invalidate the cache【1†source】.", "Bump `cache_version` to invalidate the cache[1].", [1]),
    ("Bump it 【2†L10-L20】 and re-register 【1, 3】.", "Bump it [1] and re-register [2][3].", [2, 1, 3]),
    ("Bump `cache_version` to invalidate the cache (Source 1).", "Bump `cache_version` to invalidate the cache [1].", [1]),
    ("Bump it (Sources 2 and 3). Then run it (source: 1).", "Bump it [1][2]. Then run it [3].", [2, 3, 1]),
    ("Bump `cache_version` to invalidate the cache [doc1]. See also [doc2].",
     "Bump `cache_version` to invalidate the cache [1]. See also [2].", [1, 2]),
    ("Bump it [doc2][doc1] or [doc1, doc3].", "Bump it [1][2] or [2][3].", [2, 1, 3]),
    ("Bump `cache_version` to invalidate the cache [S1].", "Bump `cache_version` to invalidate the cache [1].", [1]),
    ("Bump it [S2, S1].", "Bump it [1][2].", [2, 1]),
    ("Bump `cache_version` to invalidate the cache [^1^].", "Bump `cache_version` to invalidate the cache [1].", [1]),
    ("Bump `cache_version` to invalidate the cache [1: Caching].",
     "Bump `cache_version` to invalidate the cache [1].", [1]),
    ("Bump `cache_version` to invalidate the cache [#1].", "Bump `cache_version` to invalidate the cache [1].", [1]),
    ("Bump it [Source 2, Source 1].", "Bump it [1][2].", [2, 1]),
    ("Bump it [2†source].", "Bump it [1].", [2]),
    # superscripts, in an answer that cites no other way
    ("Bump the cache version¹. Secrets come from requests²³.", "Bump the cache version[1]. Secrets come from requests[2][3].",
     [1, 2, 3]),
    ("Bump `cache_version`¹.", "Bump `cache_version`[1].", [1]),
    # a number no source has goes, as [42] does
    ("Bump it 【1】. Also see 【42】.", "Bump it [1]. Also see.", [1]),
    ("Bump it [doc9] and [S1].", "Bump it and [1].", [1]),
    # ChatGPT's browsing form "【3:1†source】" numbers search results, not the sources: it goes
    ("Bump it 【3:1†source】 [2].", "Bump it [1].", [2]),
]


@pytest.mark.parametrize("raw, text, order", FORMS)
def test_other_citation_forms_are_read_as_numbered_citations(raw, text, order):
    given = sources(3)
    out, cits = process_citations(raw, given)
    assert out == text
    assert [c.source_id for c in cits] == [f"s:{i}" for i in order]
    body, tail = posted(raw, given)
    assert body == text
    assert tail.splitlines()[0] == f"*{messages.SOURCES_HEADING}*"  # not "consulted (the answer cites none)"
    for new, old in enumerate(order, start=1):
        assert f"[{new}] <https://x.org/{old}|Title {old}>" in tail


@pytest.mark.parametrize("raw, text, order", FORMS)
def test_a_streamed_answer_never_shows_a_form_it_later_takes_back(raw, text, order):
    """Each growing text is cleaned as the final one is: an unfinished "【1" or "(Source 2" waits for
    its closing bracket, so what was shown is always the start of the final answer."""
    given = sources(3)
    for shown in shown_while_streaming(raw, given):
        assert text.startswith(shown.rstrip()) or shown.rstrip() == text, (shown, text)
    live = LiveCitations(given)
    out = "".join(live.feed(raw[i : i + 3]) for i in range(0, len(raw), 3)) + live.flush()
    assert (out, live.diverged) == (text, False)


@pytest.mark.parametrize(
    "raw",
    [
        # (1) is as often a list item, an inline enumeration, a call or a tuple: left as written
        "There are two ways: (1) bump `cache_version`, (2) re-register.",
        "Call f(1) and g(2).",
        "The default is (1, 2).",
        # powers and units: no citation
        "The cost is O(n²) for n tasks; a 10⁶ rows table; 3 km² of data.",
        "x² + y² = r²",
        # slices and Markdown links are not [n: Title]
        "Take a[1:3] and xs[1: end].",
        # made-up links keep their words, not a citation
        "See [doc1](https://made.up/doc1).",
    ],
)
def test_what_only_looks_like_a_citation_is_left_as_written(raw):
    given = sources(3)
    out, cits = process_citations(raw, given)
    expected = raw.replace("[doc1](https://made.up/doc1)", "doc1")
    assert out == expected and cits == []


def test_superscripts_beside_bracket_citations_are_left_alone():
    """Beside [n] markers a superscript is a power or a footnote of the model's own: not a citation."""
    out, cits = process_citations("The table has 10⁶ rows² [2].", sources(3))
    assert out == "The table has 10⁶ rows² [1]." and [c.source_id for c in cits] == ["s:2"]


def test_a_model_list_of_sources_in_another_form_is_dropped_like_a_numbered_one():
    raw = "Bump it 【1】.\n\nSources:\n【1】 Caching docs\n【2】 Secrets"
    body, tail = posted(raw, sources(2))
    assert body == "Bump it [1]."
    assert "Caching docs" not in body and "[1] <https://x.org/1|Title 1>" in tail


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    "【" * 200_000, "【1†" * 66_000, "(" * 200_000, "(Source 1, " * 18_000, "[doc1," + " " * 200_000 + "x",
    "abc¹ " * 40_000, "[1: a" * 40_000, "(Source" + " " * 200_000, "a" + "\t" * 200_000 + "【",
    "x (Source 1" + " " * 100 + "y", "x (Source:" + " " * 100, "[Source 1," + " " * 200_000 + "x",
])
def test_reading_other_forms_stays_linear_in_the_text(text):
    start = time.monotonic()
    clean_answer(text, sources(1))
    _stable_end(text)
    assert time.monotonic() - start < 10


# ---- through the real Answerer and ChatOpenAI, against the OpenAI stand-in ------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_citing_in_fullwidth_brackets_lists_what_it_cites(server, stream):
    server.script(Reply("Install the plugin 【2】 and set the workers with `RayJobConfig`【1†source】."))
    a = ask(standin_answerer(server.base_url), RAY_QUESTION, stream)
    titles = given_titles(server.requests[-1])
    assert a.mode == "llm" and not a.uncited
    assert a.text == "Install the plugin [1] and set the workers with `RayJobConfig`[2]."
    assert [c.title for c in a.citations] == [titles[1], titles[0]]
    assert {c.url for c in a.citations} <= {RAY_DOC.url, RAY_CODE.url} | {s.url for s in ALL}
