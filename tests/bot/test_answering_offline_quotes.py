"""What the offline answerer (no chat model) quotes, as a person reads it in Slack.

Slack threads are quoted for their answer, not their question, and the docs'
reStructuredText/MyST markup does not show raw in a quote. Sources are built
with the real loaders and chunker, so their text is laid out as in an index.
"""

from __future__ import annotations

import json

from support.paths import FIXTURES

from flytegpt.bot.answering import Answer
from flytegpt.bot.answering.budget import Source, dedupe_hits
from flytegpt.bot.answering.offline import offline_answer
from flytegpt.bot.slack.blocks import render_answer
from flytegpt.ingest.chunking import chunk_document
from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import Chunk, Document, LoadReport
from flytegpt.ingest.search import Hit
from flytegpt.ingest.sources import load_source
from flytegpt.ingest.sources.slack_export import Directory, thread_document

SLACK = SourceConfig(name="slack", kind="slack_export", path=FIXTURES / "sources" / "slack", workspace_url="https://acme.slack.com")


def _source(doc: Document, n: int = 1) -> Source:
    first = chunk_document(doc)[0]
    return Source(n, first.source_id, first.title, first.url, first.text, 1.0, first.kind)


def _fixture_thread(locator: str) -> Source:
    docs = {d.locator: d for d in load_source(SLACK, LoadReport())}
    return _source(docs[locator])


def _thread_document(*messages: tuple[str, str]) -> Document:
    """A thread as the Slack loader renders it: (user id, text), the first is the question; message
    i (from 1) has ts 1700000000.00000i."""
    names = Directory(users={"U1": "asker", "U2": "helper", "U3": "other"})
    msgs = [{"ts": f"1700000000.{i:06d}", "user": u, "text": t} for i, (u, t) in enumerate(messages, 1)]
    return thread_document(SLACK, "help", "C2", msgs[0]["ts"], msgs, names)


def _thread(*messages: tuple[str, str]) -> Source:
    return _source(_thread_document(*messages))


def _retrieved(doc: Document) -> Source:
    """A document as the answerer gets it from a search: its chunks as the index stores them
    (through Chunk.to_dict/from_dict and JSON), its best two merged into one numbered source."""
    chunks = [Chunk.from_dict(json.loads(json.dumps(c.to_dict()))) for c in chunk_document(doc)]
    [source] = dedupe_hits([Hit(c, 1.0 - i / 100, i + 1) for i, c in enumerate(chunks)], 5)
    return source


def _shown(question: str, sources: list[Source]) -> str:
    """The offline answer's text as Slack shows it (sections only)."""
    text, cits = offline_answer(question, sources)
    answer = Answer(question, question, text, cits, "offline", "v1")
    return "\n".join(b["text"]["text"] for m in render_answer(answer) for b in m.blocks if b["type"] == "section")


LONG_QUESTION = (
    "I changed my task's code and re-registered, but the cached task keeps returning the old cached output. "
    "The task has cache=True and I run it with pyflyte run --remote. Is the cache not keyed on the task's code? "
    "How do I force the cached task to rerun after I change the code? I tried clearing my local cache folder and "
    "restarting the sandbox, and the task still comes back from the cache with the old output every time I run it."
)
ANSWER = (
    "Bump cache_version on the decorator. The cache key is the task's name, its interface, the cache_version and "
    "the inputs, never the function body, so a code change alone keeps hitting the old entry."
)


def test_a_thread_is_quoted_for_the_reply_that_answers_it():
    thread = _thread(("U1", LONG_QUESTION), ("U2", ANSWER), ("U1", "Got it, thanks!"))
    shown = _shown("How do I force a cached task to rerun after I change its code?", [thread])
    assert "> helper: Bump cache_version on the decorator." in shown
    assert "> asker: I changed my task's code and re-registered" in shown  # the question, for context
    assert "restarting the sandbox" not in shown  # ... its first line only
    assert "Got it, thanks!" not in shown
    assert shown.index("asker:") < shown.index("helper:")


def test_the_shipped_fixture_thread_shows_the_answer_not_the_thank_you():
    thread = _fixture_thread("general/1672567200.000100")
    text, cits = offline_answer("How do I cache a task?", [thread])
    assert "> alice: How do I cache a task? @here …" in text
    assert "> Bob B: Use cache=True <and> a cache_version" in text
    assert "Thanks, that worked!" not in text
    assert [c.source_id for c in cits] == ["slack:general/1672567200.000100"]


def test_the_first_reply_is_shown_when_no_reply_matches_better():
    thread = _fixture_thread("help/1675245600.000100")
    text, _ = offline_answer("my pods are killed, what now?", [thread])
    assert text.endswith('> Bob B: Pods fail with OOMKilled\n\n> alice: Give the memory a unit: mem="2Gi"')
    tied = _thread(("U1", "Why does my task fail?"), ("U2", "Look at the pod logs first."), ("U3", "Check the events too."))
    text, _ = offline_answer("zebra migration", [tied])
    assert "> helper: Look at the pod logs first." in text and "Check the events" not in text


# --- a quoted reply links that reply, not the thread's first message ------------------------

def _reply_url(ts: str, channel: str = "C2", root: str = "1700000000.000001") -> str:
    return f"https://acme.slack.com/archives/{channel}/p{ts.replace('.', '')}?thread_ts={root}&cid={channel}"


def _sources_line(question: str, sources: list[Source]) -> str:
    """The sources the Slack bot lists under the offline answer (context blocks)."""
    text, cits = offline_answer(question, sources)
    answer = Answer(question, question, text, cits, "offline", "v1")
    return "\n".join(e["text"] for m in render_answer(answer) for b in m.blocks if b["type"] == "context"
                     for e in b["elements"])


def test_a_quoted_reply_of_the_fixture_thread_links_that_reply():
    docs = {d.locator: d for d in load_source(SLACK, LoadReport())}
    thread = _retrieved(docs["general/1672567200.000100"])
    assert thread.url == "https://acme.slack.com/archives/C100/p1672567200000100"  # the thread: its question
    text, [cit] = offline_answer("How do I cache a task?", [thread])
    assert "> Bob B: Use cache=True <and> a cache_version" in text  # the reply quoted ...
    reply = _reply_url("1672567300.000200", "C100", "1672567200.000100")
    assert cit.url == reply  # ... is the message the link opens, in its thread
    assert cit.source_id == "slack:general/1672567200.000100" and cit.title == thread.title
    assert f"<{reply.replace('&', '&amp;')}|" in _sources_line("How do I cache a task?", [thread])


def test_a_quoted_reply_in_a_later_part_of_a_long_thread_links_that_reply():
    filler = "the map task retries each failed element again after a pause. " * 15
    doc = _thread_document(("U1", "Why do my map tasks retry so often?"),
                           *[("U3", f"Reply {i}: {filler}") for i in range(6)],
                           ("U2", "Set the zebracorn retry budget to 2 in the task decorator."),
                           *[("U3", f"Later {i}: {filler}") for i in range(3)])
    thread = _retrieved(doc)
    assert "[...]" in thread.text and len(thread.message_urls) == thread.text.count("\n\n") + 1  # two chunks
    text, [cit] = offline_answer("how do I set the zebracorn retry budget?", [thread])
    assert "> helper: Set the zebracorn retry budget to 2" in text
    assert cit.url == _reply_url("1700000000.000008")  # the 8th message: the reply quoted


def test_a_quote_links_the_thread_where_the_reply_links_are_not_known():
    answered = _thread_document(("U1", "How do I pin a cache version?"), ("U2", "Set cache_version='1.0'."))
    assert offline_answer("pin a cache version", [_retrieved(answered)])[1][0].url == _reply_url("1700000000.000002")
    older = Document(**{**answered.to_dict(), "meta": {k: v for k, v in answered.meta.items() if k != "message_urls"}})
    [cit] = offline_answer("pin a cache version", [_retrieved(older)])[1]  # an index from before the links
    assert cit.url == answered.url == "https://acme.slack.com/archives/C2/p1700000000000001"
    lone = _thread_document(("U1", "Is there a way to cache a map task?"))  # no reply: the question is quoted
    assert offline_answer("cache a map task", [_retrieved(lone)])[1][0].url == lone.url


def test_a_thread_without_replies_is_still_quoted_whole():
    lone = _thread(("U1", "Is there a way to cache a map task?"))
    text, _ = offline_answer("cache a map task", [lone])
    assert "> asker: Is there a way to cache a map task?" in text


MYST_DOC = """# Mocking tasks

Hive tasks are a common example: you can mock a task in a unit test with `task_mock`.

```{note}
To clone and run the example code on this page, see the [Flytesnacks repo][flytesnacks].
```

```{literalinclude} /examples/testing/testing/mocking.py
:caption: testing/mocking.py
:lines: 1-6
```

The timeout of a mocked task can be set in the `TaskMetadata <https://docs.flyte.org/en/latest/TaskMetadata.html>`__ of the task.
Index the mocked outputs as `outs[i][j]` in the unit test.

[flytesnacks]: https://github.com/flyteorg/flytesnacks/tree/master/examples/testing/
"""


def test_rst_and_myst_markup_is_shown_as_a_reader_wants_it():
    doc = Document("docs", "testing/mocking_tasks.md", "docs", "Mocking tasks", "https://docs.example.org/mocking", MYST_DOC, {"format": "md"})
    source = _source(doc)
    assert "{literalinclude}" in source.text and "`__" in source.text  # the index keeps the markup
    shown = _shown("How do I mock a task in a unit test, and set the timeout of a mocked task?", [source])
    assert "see the Flytesnacks repo." in shown  # a reference link shows its label
    assert "[flytesnacks]" not in shown and "flytesnacks/tree" not in shown
    assert "set in the TaskMetadata of the task." in shown  # an RST link shows its label, not code
    assert "caption" not in shown and "literalinclude" not in shown and "```" not in shown  # the stub is gone
    assert "`outs[i][j]`" in shown  # inline code is left as written


def test_a_myst_code_block_keeps_its_code_without_its_options():
    text = "# Caching\n\nSet cache_version on the task.\n\n```{code-block} python\n:caption: cache.py\n:linenos:\n@task(cache=True, cache_version=\"1\")\ndef f() -> int: ...\n```\n"
    doc = Document("docs", "caching.md", "docs", "Caching", "https://docs.example.org/caching", text, {"format": "md"})
    out, _ = offline_answer("How do I set cache_version on a task?", [_source(doc)])
    assert '@task(cache=True, cache_version="1")' in out
    assert ":caption:" not in out and ":linenos:" not in out


def test_a_quote_does_not_repeat_the_title_shown_above_it():
    """Before, "**Caching** [1]" was followed by "> **Caching**", the chunk's own heading."""
    text = "# Caching\n\nSet cache_version on the task to invalidate its cached outputs.\n"
    doc = Document("docs", "caching.md", "docs", "Caching", "https://docs.example.org/caching", text, {"format": "md"})
    out, _ = offline_answer("How do I invalidate cached outputs?", [_source(doc)])
    assert "**Caching** [1]\n\n> Set cache_version on the task" in out and out.count("Caching**") == 1
