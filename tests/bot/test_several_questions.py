"""A message that asks several questions gets a source for each of them.

"How do I cache a task? Also, how do I set GPU resources? And can I run a workflow on a
schedule?" was searched as one query: the GPU question's many matching chunks filled the results
and the caching and scheduling questions got few or none. Now each question is looked up too, and
its best source joins the first results; a question that points back at the one before ("Does it
also work locally?") is part of it and changes nothing.
"""

from __future__ import annotations

import pytest

from flytegpt.bot.answering import Answerer
from flytegpt.bot.question_text import separate_questions
from flytegpt.ingest.artifact import ModelInfo, open_version, publish, write_version
from flytegpt.ingest.config import AnswerConfig, Config, IndexConfig, RetrievalConfig, Settings
from flytegpt.ingest.models import Chunk
from flytegpt.ingest.search import HybridSearcher

# Four sources about GPUs and resources, three about caching, one about schedules, and a
# scheduler configuration page that shares the word "schedule" and GPU resource settings.
CORPUS = [
    ("docs:gpus.md", "Configuring access to GPUs",
     "Request a GPU for a task with Resources(gpu=1) in requests and limits; the pod is scheduled on a GPU node."),
    ("docs:gpu-types.md", "Requesting a GPU type",
     "Pick an accelerator such as an A100 for a task; the GPU node pool is selected by a toleration."),
    ("slack:help/1.0", "Thread: GPU task pending",
     "My GPU task stays pending. Answer: no node with a free GPU; the scheduler waits until one is free."),
    ("docs:resources.md", "Customizing task resources",
     "Set CPU, memory and GPU requests and limits on a task with the Resources object."),
    ("docs:caching.md", "Caching",
     "Set cache=True and a cache_version on a task so Flyte reuses task outputs for identical inputs."),
    ("slack:help/2.0", "Thread: cache miss",
     "Why is my task cache not hit? Answer: the cache_version changed, so the task outputs were computed again."),
    ("docs:cache-serialize.md", "Cache serializing",
     "Cache serialization lets one execution compute a cached task output at a time."),
    ("docs:schedules.md", "Launch plan schedules",
     "A launch plan runs a workflow on a cron schedule or a fixed rate, with default inputs."),
    ("docs:scheduler-config.md", "Flyte Scheduler Configuration",
     "The scheduler service config: profiler port, task resources defaults and limits for GPU and CPU."),
    ("docs:secrets.md", "Secrets", "Request secrets in the task decorator."),
]
THREE = ("How do I request a GPU for my task and set its resources? How do I cache the task outputs? "
         "Can a workflow run on a schedule?")
CACHE_GPU_SCHEDULE = "How do I cache a task? Also, how do I set GPU resources? And can I run a workflow on a schedule?"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, embedder) -> str:
    store = str(tmp_path_factory.mktemp("several") / "store")
    chunks = [Chunk(source_id=s, kind=s.split(":")[0], title=t, url=f"https://example.org/{s}", text=x,
                    embed_text=f"{t}\n{x}") for s, t, x in CORPUS]
    vectors = embedder.embed_documents([c.dense_text for c in chunks])
    publish(store, write_version(store, chunks, vectors, ModelInfo(embedder.model_id, embedder.dimension, True)))
    return store


def _searcher(store: str, embedder, **retrieval) -> HybridSearcher:
    return HybridSearcher(open_version(store), embedder, RetrievalConfig(**retrieval))


def _top(hits, n: int = 5) -> list[str]:
    return [h.chunk.source_id for h in hits[:n]]


@pytest.mark.parametrize("text, expected", [
    (CACHE_GPU_SCHEDULE, ["How do I cache a task?", "Also, how do I set GPU resources?",
             "And can I run a workflow on a schedule?"]),
    (THREE, ["How do I request a GPU for my task and set its resources?", "How do I cache the task outputs?",
             "Can a workflow run on a schedule?"]),
    # a question that points back at the one before is part of it
    ("Can one Flyte control plane send executions to several clusters? Does that work with the binary chart?", []),
    ("If I put @vscode on a task, how long does code-server keep the pod? Does it also start locally?", []),
    ("Which plugin setting gives the Spark history link? How do I get it in the console?", []),
    ("How do I cache a task with a custom hash? Is there a doc page for it?", []),
    ("How does map_task handle failures? Can I require an absolute number of successes instead?", []),
    # past its first words, "that" and "it" are a question's own, not a pointer back
    ("How do I cache a task? How do I run a launch plan that lives in another project?",
     ["How do I cache a task?", "How do I run a launch plan that lives in another project?"]),
    ("How do I cache a task? When would I use eager workflows instead of @dynamic?",
     ["How do I cache a task?", "When would I use eager workflows instead of @dynamic?"]),
    # too few words to look up on their own
    ("How do I cache a task? Why?", []),
    ("Is that a bug? Any workaround?", []),
    ("How do I cache a task?", []),
    ("how do I cache a task", []),
])
def test_a_message_is_split_into_the_questions_it_asks_of_its_own(text: str, expected: list[str]) -> None:
    assert separate_questions(text) == expected


def test_the_first_sources_hold_the_best_one_of_each_question(store: str, embedder) -> None:
    searcher = _searcher(store, embedder)
    whole = searcher.search(THREE)
    assert "docs:caching.md" not in _top(whole)  # the premise: GPU sources crowd caching out
    hits = searcher.search(THREE, questions=separate_questions(THREE))
    best = [_top(searcher.search(q), 1)[0] for q in separate_questions(THREE)]
    assert best[1:] == ["docs:caching.md", "docs:schedules.md"]
    assert _top(hits, 1) == _top(whole, 1) and set(best) <= set(_top(hits, 4)), _top(hits)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert len(hits) == len(whole) and len({h.chunk.source_id for h in hits}) == len(hits)
    # the answerer orders its sources by score: a question's source keeps its place
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_questions_about_one_topic_keep_the_whole_messages_sources(store: str, embedder) -> None:
    searcher = _searcher(store, embedder)
    text = "How do I cache the task outputs? How do I let only one execution compute a cached task?"
    assert len(separate_questions(text)) == 2
    whole, split = searcher.search(text), searcher.search(text, questions=separate_questions(text))
    assert _top(split, 1) == _top(whole, 1) and set(_top(split, 10)) == set(_top(whole, 10))


def test_splitting_is_off_at_zero_and_bounded_by_the_configured_count(store: str, embedder) -> None:
    off = _searcher(store, embedder, split_questions=0)
    assert _top(off.search(THREE, questions=separate_questions(THREE))) == _top(off.search(THREE))
    one = _searcher(store, embedder, split_questions=1)  # one question alone is no split
    assert _top(one.search(THREE, questions=separate_questions(THREE))) == _top(one.search(THREE))
    # a message of a hundred questions is searched at most split_questions + 1 times
    many = " ".join(f"How do I configure setting number {i} of the scheduler?" for i in range(100))
    calls = []
    searcher = _searcher(store, embedder)
    original = searcher._search
    searcher._search = lambda *a, **kw: calls.append(a[0]) or original(*a, **kw)
    searcher.search(many, questions=separate_questions(many))
    assert len(calls) == 1 + searcher.retrieval.split_questions


def test_offline_the_answer_quotes_a_source_for_each_question(store: str, embedder) -> None:
    config = Config(index=IndexConfig(store=store), answer=AnswerConfig(max_sources=3))
    searcher = _searcher(store, embedder)
    answerer = Answerer(config, Settings(OPENAI_API_KEY="", OPENAI_BASE_URL=""), lambda: searcher)
    answer = answerer.answer(CACHE_GPU_SCHEDULE)
    cited = {c.source_id for c in answer.citations}
    assert answer.mode == "offline"
    assert "docs:caching.md" in cited and "docs:schedules.md" in cited, cited
