"""Markdown -> mrkdwn and Block Kit within Slack's limits."""

from __future__ import annotations

import re

from flytegpt.bot import messages
from flytegpt.bot.answering import Answer, Citation
from flytegpt.bot.slack import blocks, render
from flytegpt.bot.slack.render import markdown_to_mrkdwn as mrkdwn
from support.slack_checks import assert_round_trips, assert_slack_accepts


def _answer(text: str, citations: list[Citation] | None = None) -> Answer:
    return Answer("q?", "q?", text, citations or [], "llm", "v1")


def test_inline_formatting():
    assert mrkdwn("**bold** and *it* and _it2_ and ~~gone~~") == "*bold* and _it_ and _it2_ and ~gone~"
    assert mrkdwn("`a*b*c` stays code") == "`a*b*c` stays code"
    given = ["https://docs.flyte.org/x?a=1&b=2", "https://flyte.org/"]
    assert mrkdwn("see [the docs](https://docs.flyte.org/x?a=1&b=2)", given) == \
        "see <https://docs.flyte.org/x?a=1&amp;b=2|the docs>"
    assert mrkdwn("<https://flyte.org>", given) == "<https://flyte.org>"


def test_escaping_blocks_mentions_and_html():
    out = mrkdwn("a < b && c > d <!channel> <@U123> <b>x</b>")
    assert "<!channel>" not in out and "<@U123>" not in out and "<b>" not in out
    assert out == "a &lt; b &amp;&amp; c &gt; d &lt;!channel&gt; &lt;@U123&gt; &lt;b&gt;x&lt;/b&gt;"


def test_unsafe_or_odd_links():
    assert "<javascript" not in mrkdwn("[x](javascript:alert(1))")
    assert mrkdwn("[x](ftp://files.example.org/a)") == "x"  # only web and mail links become links
    out = mrkdwn("[a|b](https://e.org/p|q>r)", ["https://e.org/p|q>r"])
    assert out == "<https://e.org/p%7Cq%3Er|a¦b>"


def test_headings_lists_quotes_code_tables():
    md = """# Caching *tasks*

Intro

- one **x**
  - nested
- two

3. three
4. four

> quoted
> more

```python
@task(cache=True)
def f(x: int) -> int:  # a < b
    return x
```

| a | bb |
|---|----|
| 1 | 2 |

---
"""
    out = mrkdwn(md)
    assert out.startswith("*Caching tasks*\n\nIntro")
    assert "• one *x*\n  ◦ nested\n• two" in out
    assert "3. three\n4. four" in out
    assert "> quoted\n> more" in out
    assert "```\n@task(cache=True)\ndef f(x: int) -&gt; int:  # a &lt; b\n    return x\n```" in out
    assert "```\na | bb\n--+---\n1 | 2\n```" in out
    assert "#" not in out.replace("# a", "")  # no Markdown heading syntax left


def test_citation_markers_stay_plain():
    assert mrkdwn("Use `cache_version` [1][2].") == "Use `cache_version` [1][2]."


def test_answer_blocks_sources_and_buttons():
    cites = [Citation(1, "Caching | Flyte docs", "https://docs.flyte.org/caching", "docs:caching.md"),
             Citation(2, "flytekit/core/task.py", "https://github.com/f/f/blob/m/task.py#L1-L9", "code:task.py")]
    [msg] = blocks.render_answer(_answer("Use **cache=True** [1] [2].", cites), feedback_id="fb123")
    assert msg.text.startswith("Use *cache=True* [1] [2].")
    assert "[1] <https://docs.flyte.org/caching|Caching ¦ Flyte docs>" in msg.text
    kinds = [b["type"] for b in msg.blocks]
    assert kinds == ["section", "context", "actions"]
    actions = msg.blocks[-1]["elements"]
    assert [a["action_id"] for a in actions] == [blocks.ACTION_FEEDBACK_UP, blocks.ACTION_FEEDBACK_DOWN]
    assert all(a["value"] == "fb123" for a in actions)


def test_share_button_and_question_context():
    [msg] = blocks.render_answer(_answer("ok"), feedback_id="id1", share=True, question="how <do> I?")
    assert msg.blocks[0]["type"] == "context"
    assert msg.blocks[0]["elements"][0]["text"] == "> how &lt;do&gt; I?"
    assert msg.blocks[-1]["elements"][-1]["action_id"] == blocks.ACTION_SHARE


def test_long_answer_is_split_within_limits():
    para = ("Flyte caches task outputs keyed by inputs & cache_version. " * 40).strip()
    code = "\n".join(f"line_{i} = {i}  # <comment>" for i in range(600))
    md = "\n\n".join([para] * 60) + f"\n\n```python\n{code}\n```\n\n" + ("word " * 5000)
    cites = [Citation(i, f"Source {i} " + "t" * 300, f"https://e.org/{i}", f"s:{i}") for i in range(1, 40)]
    messages = blocks.render_answer(_answer(md, cites), feedback_id="abc")
    assert len(messages) > 1
    assert_slack_accepts(messages)
    assert messages[-1].blocks[-1]["type"] == "actions"  # buttons under the end of the answer
    assert all(m.blocks[-1]["type"] != "actions" for m in messages[:-1])
    # split code blocks stay fenced
    for m in messages:
        for b in m.blocks:
            if b["type"] == "section":
                assert b["text"]["text"].count("```") % 2 == 0
    # nothing lost: every code line is somewhere
    joined = "\n".join(m.text for m in messages)
    assert "line_599 = 599" in joined and "line_0 = 0" in joined


def test_hundreds_of_sources_with_long_urls_fit_one_message_with_the_buttons():
    """399 sources with 600-character URLs made 96 context blocks in one message: Slack refused
    it (and the streamed answer's stopStream), so the asker got no sources and no buttons."""
    cites = [Citation(i, f"Source {i}", f"https://e.org/{i}/" + "p" * 600, f"s:{i}") for i in range(1, 400)]
    cites.append(Citation(400, "One huge URL", "https://e.org/" + "q" * 5000, "s:400"))
    posted = blocks.render_answer(_answer("Short answer [1].", cites), feedback_id="abc")
    assert_slack_accepts(posted)
    assert len(posted) == 1 and posted[-1].blocks[-1]["type"] == "actions"
    listed = "\n".join(b["elements"][0]["text"] for b in posted[0].blocks if b["type"] == "context")
    assert "<https://e.org/1/" in listed and "more sources (too many to list here)" in listed
    for b in posted[0].blocks:  # no link cut in two
        if b["type"] == "context":
            text = b["elements"][0]["text"]
            assert text.count("<") == text.count(">")
    tail = blocks.streamed_answer_tail(cites, "abc")
    assert len(tail) <= blocks.MAX_SOURCE_BLOCKS + 1
    assert_slack_accepts([blocks.SlackMessage("answer", tail)])
    few = blocks.render_answer(_answer("x [1]", cites[-1:]), feedback_id="abc")
    assert "One huge URL" in few[0].text and "qqqq" not in few[0].text  # a title instead of a 5,000-character link


def test_one_huge_line_is_cut_without_breaking_entities():
    text = "a&b<c>" * 2000
    sections = render.markdown_sections(text)
    assert len(sections) > 1
    for s in sections:
        assert len(s) <= render.SECTION_BUDGET
        assert not s.endswith("&") and not s.endswith("&amp")


def test_apology_and_notices():
    msgs = blocks.render_apology([Citation(1, "Ray", "https://e.org/ray", "d:ray")], "Sorry, no model.")
    assert msgs[0].blocks[0]["text"]["text"] == "Sorry, no model."
    assert "Best sources" in msgs[0].text and "<https://e.org/ray|Ray>" in msgs[0].text
    notice = blocks.render_notice("busy <now>")
    assert notice.text == "busy &lt;now&gt;" and notice.blocks[0]["type"] == "section"


# --- issue 14's rendering defects ------------------------------------------------------------------


def _code_marks_balanced(text: str) -> None:
    assert text.count("```") % 2 == 0, text[:80]
    assert text.replace("```", "").count("`") % 2 == 0, text[:80]


def test_long_table_splits_into_complete_code_blocks():
    rows = "\n".join(f"| `task_{i}` | cache version {i} with a longer description |" for i in range(200))
    md = "Here is the table:\n\n| task | notes |\n|---|---|\n" + rows + "\n\nAnd after it."
    sections = render.markdown_sections(md)
    assert len(sections) > 2
    for sec in sections:
        _code_marks_balanced(sec)
        assert len(sec) <= render.SECTION_BUDGET
    table_rows = [ln for sec in sections for ln in sec.split("\n") if ln.startswith("task_")]
    assert len(table_rows) == 200  # every row, inside a fence (no Markdown pipes, no backticks)
    msgs = blocks.render_answer(_answer(md), feedback_id="fb")
    assert_round_trips(msgs)


def test_huge_inline_code_span_never_leaves_a_backtick_open():
    span = " ".join(f"arg{i}=value{i}" for i in range(400))  # ~5,000 characters in one code span
    md = f"Call it like `{span}` and you are done."
    sections = render.markdown_sections(md)
    assert len(sections) >= 2
    for sec in sections:
        _code_marks_balanced(sec)
        assert len(sec) <= render.SECTION_BUDGET
    assert "arg399=value399" in sections[-1] or any("arg399=value399" in s for s in sections)


def test_long_fenced_block_in_a_list_item_stays_balanced():
    code = "\n".join(f"    x_{i} = compute({i})  # step" for i in range(400))
    md = "1. First do this:\n\n    ```python\n" + code + "\n    ```\n2. Then that."
    for sec in render.markdown_sections(md):
        _code_marks_balanced(sec)


def test_only_links_to_given_sources_are_live():
    cites = [Citation(1, "Caching", "https://docs.flyte.org/caching", "docs:caching.md")]
    md = ("See [the docs](https://docs.flyte.org/caching#versions) [1], <https://evil.example/login>, "
          "[mail us](mailto:help@evil.example), <mailto:x@evil.example>, [made up](https://made.up/x) "
          "and ![img](https://evil.example/i.png).")
    [msg] = blocks.render_answer(_answer(md, cites), feedback_id="fb")
    text = msg.blocks[0]["text"]["text"]
    assert "<https://docs.flyte.org/caching#versions|the docs>" in text  # a given source: live
    live = [m for m in re.findall(r"<([^>]*)>", text)]
    assert live == ["https://docs.flyte.org/caching#versions|the docs"]
    for words in ("https://evil.example/login", "mail us", "x@evil.example", "made up", "img"):
        assert words in text
    assert_round_trips([msg])


def test_usage_text_is_bold_not_italic():
    notice = blocks.render_markdown_notice(messages.USAGE)
    assert notice.text.startswith("*FlyteGPT* answers")
    assert_round_trips([notice])


def test_an_indexed_passages_control_characters_and_bidi_overrides_are_not_shown():
    """Before, a Slack thread whose first line is "run \\u202etxt.exe\\u202c installer" showed
    as "run exe.txt installer" in an offline quote and its source title; a BEL or an OSC too."""
    hostile = "run \u202etxt.exe\u202c \x1b]0;PWNED\x07 installer"
    answer = Answer("q", "q", f"> {hostile} [1]", [Citation(1, hostile, "https://x.org/t", "slack:t")],
                    "offline", "v1")
    msgs = blocks.render_answer(answer)
    assert_slack_accepts(msgs)
    shown = str([m.blocks for m in msgs]) + msgs[0].text
    for c in ("\u202e", "\u202c", "\x1b", "\x07"):
        assert c not in shown
    assert "run txt.exe" in shown
