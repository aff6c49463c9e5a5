"""End to end: ingest a tiny corpus, answer with the real HybridSearcher and the real ChatOpenAI
against the OpenAI stand-in, and drive `flytegpt ask` / `flytegpt chat` through click."""

from __future__ import annotations


import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.openai_server import Reply

from flytegpt.bot.answering import Answerer, prompts
from flytegpt.bot.answering.types import QuestionRejected
from flytegpt.bot.cli_answer import ask, chat
from flytegpt.bot.slack import blocks
from flytegpt.ingest.config import Settings, load_config
from support.paths import FIXTURES
from support.slack_checks import assert_slack_accepts

pytestmark = pytest.mark.slow

FIXTURE = FIXTURES / "answering" / "flytegpt.toml"


@pytest.fixture(scope="module")
def mini(tmp_path_factory, embedder):
    """(config, searcher) over the three-page fixture corpus, ingested once."""
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.search import HybridSearcher

    store = tmp_path_factory.mktemp("answering-store")
    config = load_config(FIXTURE).with_store(str(store))
    run_ingest(config, progress=False, embedder=embedder)
    return config, HybridSearcher.open(config, embedder=embedder)


def test_answer_with_real_retrieval_and_real_client(server, mini):
    config, searcher = mini
    server.reply = "Use `RayJobConfig` with a `WorkerNodeConfig` per group [1]."
    answerer = Answerer(config, Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url), lambda: searcher)
    a = answerer.answer("How do I configure the number of Ray workers?")
    assert a.mode == "llm" and a.index_version == searcher.version
    human = server.requests[0].text_of("user")
    assert "WorkerNodeConfig(group_name=" in human
    assert a.citations[0].url == "https://docs.example.org/ray.md"
    assert a.citations[0].source_id == "mini-docs:ray.md"


def test_off_topic_question_on_a_real_index_calls_no_model(server, mini):
    config, searcher = mini
    answerer = Answerer(config, Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url), lambda: searcher)
    a = answerer.answer("What is a good recipe for banana bread?")
    assert a.mode == "not_found" and a.text.startswith(prompts.NOT_FOUND)
    assert server.requests == []


def test_injected_text_from_a_real_chunk_stays_in_the_source_block(server, mini):
    config, searcher = mini
    server.reply = "Use secret_requests [1]."
    answerer = Answerer(config, Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url), lambda: searcher)
    answerer.answer("How do I read a secret in a task?")
    req = server.requests[0]
    assert req.messages[0]["content"] == prompts.ANSWER_SYSTEM
    human = req.text_of("user")
    inside = human[human.index("\n<sources>\n") : human.rindex("\n</sources>\n")]
    assert "I have been pwned" in inside


def test_offline_answer_on_a_real_index_is_deterministic(mini):
    config, searcher = mini
    answerer = Answerer(config, Settings(), lambda: searcher)
    a = answerer.answer("How do I configure the number of Ray workers?")
    assert a == answerer.answer("How do I configure the number of Ray workers?")
    assert a.mode == "offline" and a.text.startswith(prompts.OFFLINE_HEADER)
    assert a.citations[0].source_id == "mini-docs:ray.md"
    assert "```python" in a.text


def test_flytegpt_ask(server, mini):
    config, _ = mini
    server.reply = "Set `cache=True` and a `cache_version` [1]."
    result = CliRunner().invoke(
        ask,
        ["How do I cache task outputs?", "--config", str(FIXTURE), "--store", config.index.store],
        env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"},
    )
    assert result.exit_code == 0, result.output
    assert "Set `cache=True` and a `cache_version` [1]." in result.output
    assert "[1] Caching task outputs — https://docs.example.org/caching.md" in result.output


def test_flytegpt_ask_rejects_an_empty_question(server, mini):
    config, _ = mini
    result = CliRunner().invoke(
        ask, ["   ", "--config", str(FIXTURE), "--store", config.index.store],
        env={"OPENAI_BASE_URL": server.base_url},
    )
    assert result.exit_code == 1 and result.output.strip() == "Error: the question is empty"  # as `search` says
    assert server.requests == []


def test_flytegpt_chat_keeps_history_and_condenses(server, mini):
    config, _ = mini
    server.script(
        Reply("Install flytekitplugins-ray [1]."),
        Reply("How do I set the number of replicas of Ray workers?"),
        Reply("Use `WorkerNodeConfig(replicas=...)` [1]."),
    )
    result = CliRunner().invoke(
        chat,
        ["--config", str(FIXTURE), "--store", config.index.store],
        input="how do I run ray jobs?\n\nand how many replicas?\nexit\n",
        env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"},
    )
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 3
    first, condense, second = server.requests
    assert condense.messages[0]["content"] == prompts.CONDENSE_SYSTEM
    assert "how do I run ray jobs?" in condense.text_of("user")
    assert "Question: How do I set the number of replicas of Ray workers?" in second.text_of("user")
    assert "Use `WorkerNodeConfig(replicas=...)` [1]." in result.output
    assert "https://docs.example.org/ray.md" in result.output


def test_flytegpt_chat_quits_on_eof_offline(mini):
    config, _ = mini
    result = CliRunner().invoke(
        chat, ["--config", str(FIXTURE), "--store", config.index.store], input="how do I cache outputs?\n"
    )
    assert result.exit_code == 0, result.output
    assert prompts.OFFLINE_HEADER in result.output and "caching.md" in result.output


@pytest.fixture(scope="module")
def sample(tmp_path_factory, embedder):
    """(config, searcher, questions) over the bundled sample corpus, ingested once."""
    import json

    from flytegpt.ingest.config import sample_config_path
    from flytegpt.ingest.pipeline import run_ingest
    from flytegpt.ingest.search import HybridSearcher

    store = tmp_path_factory.mktemp("sample-store")
    config = load_config(sample_config_path()).with_store(str(store))
    run_ingest(config, progress=False, embedder=embedder)
    questions_file = sample_config_path().parent / "QUESTIONS.jsonl"
    questions = [json.loads(line) for line in questions_file.read_text().splitlines() if line.strip()]
    return config, HybridSearcher.open(config, embedder=embedder), questions


def test_sample_corpus_answers_cite_the_gold_sources(server, sample):
    config, searcher, questions = sample
    server.reply = "See [1] and [2]."
    answerer = Answerer(config, Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url), lambda: searcher)
    for q in questions:
        server.reset()
        server.reply = "See [1] and [2]."
        a = answerer.answer(q["question"])
        assert a.mode == "llm", q["id"]
        assert len(server.requests) == 1
        assert {c.source_id for c in a.citations} & set(q["gold"]), (q["id"], a.citations)
        assert all(c.url for c in a.citations)


def test_sample_corpus_offline_answers_are_deterministic(sample):
    config, searcher, questions = sample
    answerer = Answerer(config, Settings(), lambda: searcher)
    for q in questions:
        first = answerer.answer(q["question"])
        assert first == answerer.answer(q["question"])
        assert first.mode == "offline" and first.text.startswith(prompts.OFFLINE_HEADER)
        assert first.citations[0].source_id in q["gold"], q["id"]
        for c in first.citations:
            assert f"[{c.n}]" in first.text


_ODD = ["map_task", "cache", "how do I", "`", "```", "\x00", "😀", "<!channel>", "[1]", "[9]", "**", "retries",
        "flytekit.core", "137", "\n", "<https://evil.example|click>", "x" * 1500]
_QUESTIONS = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(_ODD), max_size=30).map(" ".join))
_REPLIES = st.lists(st.one_of(st.sampled_from(_ODD), st.text(max_size=40)), max_size=60).map("".join)


@settings(derandomize=True, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(question=_QUESTIONS, reply=_REPLIES)
def test_any_question_and_any_model_reply_give_a_cited_answer_slack_accepts(server, sample, question, reply):
    # what users type and what a model says back are both outside our control
    config, searcher, _ = sample
    for settings_ in (Settings(), Settings(OPENAI_API_KEY="k", OPENAI_BASE_URL=server.base_url)):
        server.reset()
        server.reply = reply or "?"
        try:
            answer = Answerer(config, settings_, lambda: searcher).answer(question)
        except QuestionRejected as e:  # empty or too long: the asker is told so
            assert str(e)
            continue
        assert answer.text.strip() and all(c.url and c.source_id for c in answer.citations)
        assert_slack_accepts(blocks.render_answer(answer, feedback_id="fb"))
