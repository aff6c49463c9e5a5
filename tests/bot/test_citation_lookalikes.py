"""Citation forms of other models where the same characters mean something else.

A model that is not OpenAI's may cite as 【1】, [#1], superscripts or (Source 1); those are read as [n].
The same forms also write a pull request's number ("PR [#5]"), number a Chinese list ("步骤：【1】安装
flytekit；【2】…"), a square ("width²"), or an everyday word ("by reference (ref 2)"). Read as citations,
each became a link to an unrelated source. What the asker reads is checked as the bot posts it (the
Slack blocks), whole and streamed, and once through the real Answerer against the OpenAI stand-in."""

from __future__ import annotations

import pytest
from support.answering_support import RAY_QUESTION, ask, given_titles, posted, standin_answerer
from support.openai_server import Reply

from flytegpt.bot import messages
from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.citations import process_citations
from flytegpt.bot.answering.live import LiveCitations, _stable_end, clean_answer


def sources(n: int = 6) -> list[Source]:
    return [Source(i, f"s:{i}", f"Title {i}", f"https://x.org/{i}", "text", 1.0, "docs") for i in range(1, n + 1)]



def streamed(raw: str, given: list[Source], step: int = 1) -> tuple[str, bool]:
    """What a stream shows, fed `step` characters at a time, and whether it had to take text back."""
    live = LiveCitations(given)
    out = "".join(live.feed(raw[i : i + step]) for i in range(0, len(raw), step)) + live.flush()
    return out, live.diverged


# Lookalikes: each is left exactly as written and cites nothing.
AS_WRITTEN = [
    # a pull request's or an issue's number, after the words that name one
    "The fix landed in flytekit [#5].",
    "See PR [#5] and issue [#3] for the details.",
    "This was fixed in pull request [#2].",
    "PRs [#5] and [#6] changed the cache key.",
    "PR [#4, #5] changed how the cache key is computed.",
    "It is tracked in [#4].",
    # a sentence that writes GitHub numbers another way: its [#n] are more of them
    "The regression came with #4512; see [#2] for the follow-up.",
    "It was reverted in flyteorg/flytekit#2345 and reapplied in [#3].",
    "GH-1234 describes it; the workaround is in [#1].",
    # fullwidth brackets that number a list: after a colon or semicolon, at a line's or item's start,
    # or continuing such a list after a sentence's end
    "安装步骤：【1】安装 flytekit；【2】配置 cache=True；【3】注册工作流。",
    "步骤如下：【1】安装 flytekit。【2】配置 cache=True。【3】注册工作流。",
    "Steps:\n【1】 Install flytekit\n【2】 Set cache=True\n【3】 Register the workflow",
    "- 【1】 Install flytekit\n- 【2】 Register the workflow",
    "【1】 Bump the version, 【2】 re-register.",
    # squares and cubes: after a measure or unit, after a sum in parentheses, or in a sentence with math
    "Area is width² pixels.",
    "The memory grows as size² and the time as n².",
    "The table takes 10⁶ rows, and the join grows as rows².",
    "The cost grows as (a + b)².",
    "It scales as O(n log n) while the buffer grows as length³.",
    "Allocate 4 meters³ of scratch space.",
    # "ref" and "reference" in parentheses are everyday words (a git ref, pass by reference)
    "Pass the object by reference (ref 2) rather than by value.",
    "Use the launch plan's reference (reference 3) to call it from another project.",
]


@pytest.mark.parametrize("raw", AS_WRITTEN)
def test_what_only_looks_like_a_citation_stays_as_written(raw):
    given = sources()
    out, cits = process_citations(raw, given)
    assert (out, cits) == (raw, [])
    body, tail = posted(raw, given)
    assert "x.org/5" not in body and "[1]" not in body
    assert tail.splitlines()[0] != f"*{messages.SOURCES_HEADING}*"  # "consulted", not "cited"


# Real citations in the same forms still cite: (what the model wrote, what the asker reads, sources in order)
STILL_CITES = [
    ("Bump `cache_version` to invalidate the cache [#1]. Secrets come from `secret_requests` [#2].",
     "Bump `cache_version` to invalidate the cache [1]. Secrets come from `secret_requests` [2].", [1, 2]),
    ("PRs [#5] and [#6] changed the cache key [#1].", "PRs [#5] and [#6] changed the cache key [1].", [1]),
    ("缓存由 `cache_version` 控制【1】。要使其失效，请更改版本【2】。",
     "缓存由 `cache_version` 控制[1]。要使其失效，请更改版本[2]。", [1, 2]),
    # a list's numbers and citations side by side
    ("步骤：【1】安装 flytekit【2】；【2】注册工作流【1】。",
     "步骤：【1】安装 flytekit[1]；【2】注册工作流[2]。", [2, 1]),
    ("Install the plugin 【2】 and re-register 【1】.", "Install the plugin [1] and re-register [2].", [2, 1]),
    ("Bump the cache version¹. Secrets come from requests².",
     "Bump the cache version[1]. Secrets come from requests[2].", [1, 2]),
    ("Bump the cache version¹ and set the retries³.", "Bump the cache version[1] and set the retries[2].", [1, 3]),
    ("Bump the version (source 2) and re-register (Source 1).", "Bump the version [1] and re-register [2].", [2, 1]),
    ("Bump the version [ref 3].", "Bump the version [1].", [3]),
]


@pytest.mark.parametrize("raw, text, order", STILL_CITES)
def test_real_citations_in_those_forms_still_cite(raw, text, order):
    given = sources()
    out, cits = process_citations(raw, given)
    assert out == text and [c.source_id for c in cits] == [f"s:{i}" for i in order]
    body, tail = posted(raw, given)
    assert body == text and tail.splitlines()[0] == f"*{messages.SOURCES_HEADING}*"
    for new, old in enumerate(order, start=1):
        assert f"[{new}] <https://x.org/{old}|Title {old}>" in tail


# Each streams without taking anything back. What decides a [#n] or a lone ² or ³ lies in its own
# sentence, before or after it ("size²" is read with the "n²" that follows it): a stream holds the marker
# back until its sentence ends.
LOCAL = AS_WRITTEN + [raw for raw, _, _ in STILL_CITES]


@pytest.mark.parametrize("raw", LOCAL)
@pytest.mark.parametrize("step", [1, 3])
def test_a_stream_shows_the_final_reading_from_the_start(raw, step):
    given = sources()
    final = clean_answer(raw, given)[0]
    for i in range(1, len(raw) + 1):
        shown = clean_answer(raw[: _stable_end(raw[:i])], given)[0].rstrip()
        assert final.startswith(shown), (raw[:i], shown, final)
    assert streamed(raw, given, step) == (final, False)


# ---- through the real Answerer and ChatOpenAI, against the OpenAI stand-in ------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_numbered_list_and_a_pr_number_beside_real_citations(server, stream):
    raw = "步骤：【1】安装插件【2】；【2】用 `RayJobConfig` 设置 workers【1】。This changed in PR [#2]."
    server.script(Reply(raw))
    a = ask(standin_answerer(server.base_url), RAY_QUESTION, stream)
    assert a.mode == "llm" and not a.uncited
    assert a.text == "步骤：【1】安装插件[1]；【2】用 `RayJobConfig` 设置 workers[2]。This changed in PR [#2]."
    titles = given_titles(server.requests[-1])
    assert [c.title for c in a.citations] == [titles[1], titles[0]]


def test_a_square_that_later_math_decides_is_not_a_citation_in_the_posted_answer(server):
    """"size²" comes before the "n²" that shows its sentence writes math: streamed, the answer posted
    leaves both as written and cites nothing."""
    raw = "The memory grows as size² and the time as n²."
    server.script(Reply(raw))
    a = list(standin_answerer(server.base_url).stream(RAY_QUESTION))[-1]
    assert a.mode == "llm" and a.text == raw and a.uncited
