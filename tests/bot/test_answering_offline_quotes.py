"""What the offline answerer (no chat model) quotes, as a person reads it in Slack.

Slack threads are quoted for their answer, not their question (audit21 M5), and the docs'
reStructuredText/MyST markup does not show raw in a quote (audit21 L4). Sources are built
with the real loaders and chunker, so their text is laid out as in an index.
"""

from __future__ import annotations

from support.paths import FIXTURES

from flytegpt.bot.answering import Answer
from flytegpt.bot.answering.budget import Source
from flytegpt.bot.answering.offline import offline_answer
from flytegpt.bot.slack.blocks import render_answer
from flytegpt.ingest.chunking import chunk_document
from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources import load_source
from flytegpt.ingest.sources.slack_export import Directory, thread_document

SLACK = SourceConfig(name="slack", kind="slack_export", path=FIXTURES / "sources" / "slack", workspace_url="https://acme.slack.com")


def _source(doc: Document, n: int = 1) -> Source:
    first = chunk_document(doc)[0]
    return Source(n, first.source_id, first.title, first.url, first.text, 1.0, first.kind)


def _fixture_thread(locator: str) -> Source:
    docs = {d.locator: d for d in load_source(SLACK, LoadReport())}
    return _source(docs[locator])


def _thread(*messages: tuple[str, str]) -> Source:
    """A thread as the Slack loader renders it: (user id, text), the first is the question."""
    names = Directory(users={"U1": "asker", "U2": "helper", "U3": "other"})
    msgs = [{"ts": f"1700000000.{i:06d}", "user": u, "text": t} for i, (u, t) in enumerate(messages, 1)]
    return _source(thread_document(SLACK, "help", "C2", msgs[0]["ts"], msgs, names))


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
    """Audit 22 L7: "**Caching** [1]" was followed by "> **Caching**", the chunk's own heading."""
    text = "# Caching\n\nSet cache_version on the task to invalidate its cached outputs.\n"
    doc = Document("docs", "caching.md", "docs", "Caching", "https://docs.example.org/caching", text, {"format": "md"})
    out, _ = offline_answer("How do I invalidate cached outputs?", [_source(doc)])
    assert "**Caching** [1]\n\n> Set cache_version on the task" in out and out.count("Caching**") == 1
