"""Hybrid search on a tiny hand-written corpus with the real (packaged) embedding model.

One question needs keywords (a number the model blurs: "exit code 137"), one needs
semantics (no shared words: "protect credentials" vs "secrets"); fusion must do at
least as well as either retriever alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flytegpt.ingest.artifact import ArtifactError, ModelInfo, open_version, publish, write_version
from flytegpt.ingest.config import Config, IndexConfig, RetrievalConfig
from flytegpt.ingest.models import Chunk
from flytegpt.ingest.search import HybridSearcher

CORPUS = [
    ("docs:caching.md", "Caching", "Set cache=True and a cache_version on a task so Flyte reuses earlier outputs for identical inputs."),
    ("docs:caching.md", "Caching > Custom hash", "Use a HashMethod annotation to compute a custom cache key for DataFrame outputs."),
    ("docs:caching.md", "Caching > Offloaded", "Cached outputs of large dataframes are offloaded to blob storage."),
    ("docs:caching.md", "Caching > Serialization", "Cache serialization lets only one execution compute a cached task at a time."),
    ("docs:secrets.md", "Secrets", "Request secrets in the task decorator; Flyte mounts them as environment variables or files at runtime."),
    ("docs:resources.md", "Resources", "Give a task more memory and CPU with requests and limits in the Resources object."),
    ("code:flytekit/core/node.py", "Node.with_overrides", "def with_overrides(self, *args, **kwargs):\n    if 'requests' in kwargs:\n        self._resources = kwargs['requests']\n    return self"),
    ("docs:map.md", "Map tasks", "map_task runs a task over a list of inputs in parallel, one pod per element."),
    ("docs:files.md", "Files", "FlyteFile uploads a local file to the blob store and passes a reference downstream."),
    ("slack:general/2.0", "Thread: registration", "pyflyte register packages the code and registers workflows with the cluster."),
    ("docs:launchplans.md", "Launch plans", "A launch plan can run a workflow on a cron schedule with default inputs."),
    ("slack:help/5.0", "Thread: pod dies", "Our pods die a few minutes into the run and get restarted. Answer: the events show exit code 137 from the kernel, so it is the memory limit again; bump it and it passes."),
    ("docs:errors.md", "Errors > Failures", "Why did my task fail? A task fails when its process ends with a non-zero status, for example when user code raises an exception; the error is shown in the console."),
    ("docs:errors.md", "Errors > Retries", "A failed task is retried only for system errors unless retries are set."),
    ("slack:help/6.0", "Thread: s3 endpoint", "Uploads went to the wrong bucket endpoint. Answer: FLYTE_AWS_ENDPOINT was unset in the sandbox, export it and restart."),
    ("docs:storage.md", "Blob storage", "Flyte stores task inputs and outputs in S3, GCS or Azure blob storage; configure the bucket and the storage endpoint in the config file."),
]

QUESTIONS = [
    ("what does exit code 137 mean", "slack:help/5.0"),  # needs the keyword
    ("how do I protect credentials", "docs:secrets.md"),  # needs semantics
    ("where do I set FLYTE_AWS_ENDPOINT", "slack:help/6.0"),
    ("how do I run the same task on many inputs at once", "docs:map.md"),
]


def _chunk(source_id: str, title: str, text: str) -> Chunk:
    kind = {"docs": "docs", "code": "code", "slack": "slack"}[source_id.split(":")[0]]
    return Chunk(source_id=source_id, kind=kind, title=title, url=f"https://example.org/{source_id}", text=text, embed_text=f"{title}\n{text}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, embedder) -> str:
    store = str(tmp_path_factory.mktemp("search") / "store")
    chunks = [_chunk(*row) for row in CORPUS]
    vectors = embedder.embed_documents([c.dense_text for c in chunks])
    version = write_version(store, chunks, vectors, ModelInfo(embedder.model_id, embedder.dimension, True))
    publish(store, version)
    return store


@pytest.fixture(scope="module")
def searcher(store: str, embedder) -> HybridSearcher:
    return HybridSearcher(open_version(store), embedder, RetrievalConfig(max_per_source=0))


def _mrr(search, k: int = 5) -> float:
    total = 0.0
    for question, gold in QUESTIONS:
        ids = [h.chunk.source_id for h in search(question, k)]
        total += 1 / (ids.index(gold) + 1) if gold in ids else 0.0
    return total / len(QUESTIONS)


def test_hybrid_beats_or_equals_each_retriever(searcher: HybridSearcher) -> None:
    dense, keyword, hybrid = _mrr(searcher.dense_search), _mrr(searcher.keyword_search), _mrr(searcher.search)
    assert hybrid >= dense and hybrid >= keyword, (hybrid, dense, keyword)
    # the corpus really needs both: each single retriever misses something here
    assert dense < 1.0 and keyword < 1.0
    assert hybrid == 1.0


def test_hits_are_ranked_and_scored(searcher: HybridSearcher) -> None:
    hits = searcher.search("exit code 137", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert hits[0].dense_score is not None and hits[0].keyword_score is not None
    assert len(searcher.search("anything", k=100)) == len(CORPUS)  # k beyond the corpus
    assert searcher.keyword_search("how do I", k=5) == []


def test_max_per_source(searcher: HybridSearcher) -> None:
    uncapped = [h.chunk.source_id for h in searcher.search("how does caching of task outputs work", k=6)]
    assert uncapped.count("docs:caching.md") > 2
    capped_searcher = HybridSearcher(searcher.index, searcher.embedder, RetrievalConfig(max_per_source=2))
    capped = [h.chunk.source_id for h in capped_searcher.search("how does caching of task outputs work", k=6)]
    assert len(capped) == 6 and capped.count("docs:caching.md") == 2
    assert max(capped.count(s) for s in set(capped)) <= 2
    dense_capped = [h.chunk.source_id for h in searcher.dense_search("caching", k=6, max_per_source=1)]
    assert len(dense_capped) == len(set(dense_capped)) == 6


def test_open_from_config(store: str, embedder) -> None:
    config = Config(index=IndexConfig(store=store), retrieval=RetrievalConfig(k=3))
    searcher = HybridSearcher.open(config, embedder=embedder)
    assert searcher.version == open_version(store).version
    assert len(searcher.search("FlyteFile")) == 3
    assert searcher.search("FlyteFile")[0].chunk.source_id == "docs:files.md"


def test_open_picks_the_query_embedder_the_index_was_built_with(store: str) -> None:
    # an index embedded with PyTorch (e.g. on a GPU node) served by a bot configured for OpenVINO:
    # its queries are embedded in the index's vector space
    from flytegpt.ingest.config import EmbeddingsConfig

    config = Config(index=IndexConfig(store=store), embeddings=EmbeddingsConfig(backend="openvino", device="cpu"))
    searcher = HybridSearcher.open(config)
    assert searcher.embedder.model_id == open_version(store).model.model_id
    assert searcher.embedder.backend in ("openvino", "torch")
    assert searcher.search("FlyteFile")[0].chunk.source_id == "docs:files.md"


def test_open_refuses_another_model(tmp_path: Path, embedder) -> None:
    store = str(tmp_path)
    chunks = [_chunk(*row) for row in CORPUS[:3]]
    vectors = embedder.embed_documents([c.embed_text for c in chunks])
    publish(store, write_version(store, chunks, vectors, ModelInfo("other/model", embedder.dimension, True)))
    with pytest.raises(ArtifactError, match="model mismatch"):
        HybridSearcher.open(Config(index=IndexConfig(store=store)), embedder=embedder)
    with pytest.raises(ValueError, match="other/model"):
        HybridSearcher(open_version(store), embedder, RetrievalConfig())


def test_a_source_with_two_matching_passages_outranks_one_lucky_chunk() -> None:
    from flytegpt.ingest.search import _by_source

    chunks = [_chunk("docs:a.md", "A", "one"), _chunk("docs:a.md", "A2", "two"), _chunk("docs:b.md", "B", "three")]
    fused = {0: 0.80, 1: 0.75, 2: 0.82}
    order = [i for i, _ in _by_source([0, 1, 2], fused, chunks, bonus=0.1)]
    assert order == [0, 2, 1]  # a.md (0.80 + 0.075) beats b.md (0.82); a.md's second chunk stays behind
    assert [i for i, _ in _by_source([0, 1, 2], fused, chunks, bonus=0.0)] == [2, 0, 1]
    assert all(0.0 <= s <= 1.0 for _, s in _by_source([0, 1, 2], {0: 1.0, 1: 1.0, 2: 0.5}, chunks, bonus=0.1))


def test_a_source_scores_its_best_meaning_and_its_best_identifier_match_together() -> None:
    """A module whose docstring paraphrases the question and whose other function names its
    identifier beats a module with one chunk that is middling at both."""
    import numpy as np

    from flytegpt.ingest.search import _by_source, _source_fused

    chunks = [_chunk("code:a.py", "a.doc", "x"), _chunk("code:a.py", "a.fn", "y"), _chunk("code:b.py", "b", "z")]
    ids = [0, 1, 2]
    dense, keyword = np.array([0.9, 0.1, 0.6]), np.array([0.1, 0.9, 0.6])
    fused = {i: 0.5 * d + 0.5 * k for i, d, k in zip(ids, dense, keyword)}  # 0.5, 0.5, 0.6
    assert [i for i, _ in _by_source(ids, fused, chunks, bonus=0.0)][0] == 2  # chunk by chunk, b.py wins
    source = _source_fused(ids, dense, keyword, 0.5, chunks)
    assert source == pytest.approx({"code:a.py": 0.9, "code:b.py": 0.6})
    order = _by_source(ids, fused, chunks, bonus=0.0, source_score=source)
    assert [i for i, _ in order] == [0, 2, 1]  # a.py first, served by its best chunk
    assert all(0.0 <= s <= 1.0 for _, s in order)


# --- pages, configuration references and their passages, through the real chunker -------------

_SHELL_PAGE = """# Shell tasks

To execute bash scripts within Flyte, use the ShellTask class: a task whose body is a script.

## Define a shell task

Give ShellTask a name, the script to run and the inputs it reads; the script's placeholders
are filled with the task's inputs when it runs.

## Outputs

A shell task can return files it writes; declare them with OutputLocation.
"""

_WORKFLOWS_PAGE = """# Workflows

Workflows connect tasks: the outputs of one task become the inputs of the next. A workflow
body is evaluated when it is registered, not when it runs.

## Running workflows

Run a workflow locally with pyflyte run, or on a cluster with pyflyte run --remote.
"""

_THREAD = (
    "Q: A task in my workflow runs a bash script that calls python, and the script fails with "
    "'python: command not found'. The same script runs fine on my laptop.\n\n"
    "A: The task's image has no python on its PATH; install it in the Dockerfile and push the image again."
)


def _reference_page(n: int = 24) -> str:
    """A generated configuration reference in the layout of Flyte's config docs."""
    rule = lambda ch: ch * 40  # noqa: E731
    out = ["#" * 30, "Flyte Propeller Configuration", "#" * 30, "", "Section: plugins", rule("="), ""]
    out += ["k8s (`config.K8sPluginConfig`_)", rule("-"), "", "Kubernetes plugin settings.", "", "config.K8sPluginConfig", rule("^"), ""]
    names = [f"setting-{i}" for i in range(n)] + ["image-pull-backoff-grace-period", "inject-finalizer"]
    for name in names:
        out += [f"{name} (int)", rule('"'), "", f"What {name} controls for task pods.", "",
                "**Default Value**: ", "", ".. code-block:: yaml", "", '  "3m0s"', ""]
    return "\n".join(out)


_TROUBLESHOOT_PAGE = """# Troubleshooting

## ImagePullBackOff

A task pod in ImagePullBackOff cannot pull its image: check the image name and the registry
credentials of the pod's service account. Pods wait in this state until the image can be pulled.
"""


def _page_docs() -> list:
    from flytegpt.ingest.models import Document

    def page(locator: str, title: str, text: str) -> Document:
        fmt = "rst" if locator.endswith(".rst") else "md"
        return Document("docs", locator, "docs", title, f"https://docs/{locator}", text, {"format": fmt})

    return [
        page("shell_tasks.md", "Shell tasks", _SHELL_PAGE),
        page("workflows.md", "Workflows", _WORKFLOWS_PAGE),
        page("troubleshoot.md", "Troubleshooting", _TROUBLESHOOT_PAGE),
        page("generated/propeller_config.rst", "Flyte Propeller Configuration", _reference_page()),
        Document("slack", "help/7.0", "slack", "bash script fails in a task", "https://slack/7", _THREAD, {"channel": "help"}),
    ]


def _searcher_over(chunks: list[Chunk], folder: Path, embedder, retrieval: RetrievalConfig | None = None) -> HybridSearcher:
    store = str(folder / "store")
    vectors = embedder.embed_documents([c.embed_text for c in chunks])
    publish(store, write_version(store, chunks, vectors, ModelInfo(embedder.model_id, embedder.dimension, True)))
    return HybridSearcher(open_version(store), embedder, retrieval or RetrievalConfig())


@pytest.fixture(scope="module")
def page_searcher(tmp_path_factory: pytest.TempPathFactory, embedder) -> HybridSearcher:
    from flytegpt.ingest.chunking import chunk_documents

    return _searcher_over(chunk_documents(_page_docs()), tmp_path_factory.mktemp("pages"), embedder)


def test_a_short_how_to_question_finds_the_page_about_it_before_a_thread_sharing_its_words(
    page_searcher: HybridSearcher, tmp_path: Path, embedder
) -> None:
    from flytegpt.ingest.chunking import chunk_documents, is_evidence, is_outline, is_title

    question = "How do I run a bash script as a task?"
    hits = page_searcher.search(question, 5)
    assert [h.chunk.source_id for h in hits[:2]] == ["docs:shell_tasks.md", "slack:help/7.0"]
    # the page is served by a passage to quote, never by its outline or its title
    assert not any(is_evidence(h.chunk) for h in hits)
    assert "ShellTask" in hits[0].chunk.text
    # page-level evidence puts it first: without outlines, titles and the docs bonus the thread wins
    chunks = chunk_documents(_page_docs())
    passages = [c for c in chunks if not is_evidence(c)]
    plain = _searcher_over(passages, tmp_path / "plain", embedder, RetrievalConfig(short_question_docs_bonus=0.0))
    assert plain.search(question, 5)[0].chunk.source_id == "slack:help/7.0"
    # ... and any one of them alone is enough
    bonus_only = HybridSearcher(plain.index, embedder, RetrievalConfig())
    assert bonus_only.search(question, 5)[0].chunk.source_id == "docs:shell_tasks.md"
    outline_only = HybridSearcher(page_searcher.index, embedder,
                                  RetrievalConfig(short_question_docs_bonus=0.0, title_weight=0.0))
    assert outline_only.search(question, 5)[0].chunk.source_id == "docs:shell_tasks.md"
    with_titles = _searcher_over([c for c in chunks if not is_outline(c)], tmp_path / "titles", embedder,
                                 RetrievalConfig(short_question_docs_bonus=0.0))
    assert with_titles.search(question, 5)[0].chunk.source_id == "docs:shell_tasks.md"
    assert not any(is_title(h.chunk) for h in with_titles.search(question, 10) + with_titles.dense_search(question, 10)
                   + with_titles.keyword_search(question, 10))


def test_the_docs_bonus_is_for_short_questions_about_a_topic_not_an_exact_term(store: str, embedder) -> None:
    # a number or an identifier is looked up where it is written (here: Slack threads), bonus or not
    with_bonus = HybridSearcher(open_version(store), embedder, RetrievalConfig(short_question_docs_bonus=1.0))
    assert with_bonus.search("what does exit code 137 mean", 3)[0].chunk.source_id == "slack:help/5.0"
    assert with_bonus.search("where do I set FLYTE_AWS_ENDPOINT", 3)[0].chunk.source_id == "slack:help/6.0"
    # the same question without its exact term is about a topic: the docs page wins
    assert with_bonus.search("what does the exit code mean", 3)[0].chunk.source_id == "docs:errors.md"
    # a long question gets no bonus
    long = "our pods keep dying a few minutes into the run with exit code 137 and get restarted, what is killing them"
    assert with_bonus.search(long, 3)[0].chunk.source_id == "slack:help/5.0"


def test_a_pasted_setting_finds_its_configuration_reference_entry(page_searcher: HybridSearcher) -> None:
    hits = page_searcher.search("image-pull-backoff-grace-period: 3m0s  what does this do?", 3)
    assert hits[0].chunk.source_id == "docs:generated/propeller_config.rst"
    assert "plugins.k8s" in hits[0].chunk.title and "image-pull-backoff-grace-period" in hits[0].chunk.title
    assert "What image-pull-backoff-grace-period controls" in hits[0].chunk.text


def test_a_source_found_only_by_its_outline_is_served_by_its_first_passage(page_searcher: HybridSearcher) -> None:
    from flytegpt.ingest.chunking import is_outline

    outline = next(i for i, c in enumerate(page_searcher.chunks) if is_outline(c) and c.source_id == "docs:workflows.md")
    picked = page_searcher._passages([outline], [outline], {outline: 0.5})
    chunk = page_searcher.chunks[picked[0]]
    assert chunk.source_id == "docs:workflows.md" and not is_outline(chunk)
    assert chunk.text.startswith("# Workflows")


def test_a_short_question_weighs_a_sources_outline_a_long_one_does_not(page_searcher: HybridSearcher) -> None:
    plain = HybridSearcher(page_searcher.index, page_searcher.embedder, RetrievalConfig(outline_weight=0.0))

    def page_score(searcher: HybridSearcher, question: str) -> float:
        return next(h.score for h in searcher.search(question, 5) if h.chunk.source_id == "docs:shell_tasks.md")

    short = "How do I run a bash script as a task?"  # 4 topic words
    assert page_score(page_searcher, short) > page_score(plain, short)
    long = "My bash script task fails on the cluster but the same script runs locally, why is that?"
    assert page_score(page_searcher, long) == pytest.approx(page_score(plain, long))


def test_a_short_question_weighs_a_pages_title_a_long_one_does_not(page_searcher: HybridSearcher) -> None:
    no_titles = HybridSearcher(page_searcher.index, page_searcher.embedder, RetrievalConfig(title_weight=0.0))

    def page_score(searcher: HybridSearcher, question: str) -> float:
        return next(h.score for h in searcher.search(question, 5) if h.chunk.source_id == "docs:shell_tasks.md")

    short = "How do I run a bash script as a task?"
    assert page_score(page_searcher, short) > page_score(no_titles, short)
    long = "My bash script task fails on the cluster but the same script runs locally, why is that?"
    assert page_score(page_searcher, long) == pytest.approx(page_score(no_titles, long))


def test_an_outline_adds_its_weighted_score_to_its_source() -> None:
    import numpy as np

    from flytegpt.ingest.search import _source_fused

    chunks = [_chunk("docs:a.md", "A", "x"), _chunk("docs:a.md", "A (outline)", "A\nB"), _chunk("slack:t/1.0", "T", "y")]
    dense, keyword = np.array([0.6, 0.8, 0.9]), np.array([0.4, 0.2, 0.5])
    plain = _source_fused([0, 1, 2], dense, keyword, 0.5, chunks)
    assert plain == pytest.approx({"docs:a.md": 0.5 * 0.8 + 0.5 * 0.4, "slack:t/1.0": 0.7})
    weighted = _source_fused([0, 1, 2], dense, keyword, 0.5, chunks, outline_weight=0.2)
    assert weighted["docs:a.md"] == pytest.approx(plain["docs:a.md"] + 0.2 * 0.5)
    assert weighted["slack:t/1.0"] == pytest.approx(0.7)
