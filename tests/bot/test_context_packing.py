"""What the chat model is given of each source: whole by default, and, where a small budget or
window cuts a source to excerpts, the excerpt keeps what answers: a Slack thread's reply rather
than its question, an RST directive with its body, a function's docstring whole.

The real Answerer and ChatOpenAI against the loopback stand-in; the prompt is read at the server."""

from __future__ import annotations

import pytest
from support.answering_support import WordSearcher, chunk

from flytegpt.bot.answering import Answerer
from flytegpt.bot.answering.budget import Source, pack_sources, token_counter
from flytegpt.ingest.config import AnswerConfig, Config, Settings


def make(server, chunks, **answer):
    config = Config(answer=AnswerConfig(timeout_s=2.0, max_retries=0, min_score=0.0, **answer))
    settings = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url, FLYTEGPT_CHAT_MODEL="stand-in")
    searcher = WordSearcher(list(chunks))
    return Answerer(config, settings, lambda: searcher), searcher


def _paragraphs(topic: str, n: int) -> str:
    return "\n\n".join(f"Paragraph {i} on {topic}: the defaults, how they are read, and when they "
                       f"change between releases of the platform." for i in range(n))


# Ten sources of ~350 tokens each: ~3,500 tokens, more than the old default budget of 2,000 tokens
CI_AUTH = chunk(
    "docs:deployment/auth_setup.rst", "docs", "Authenticating in CI", "https://docs.example.org/auth",
    "Continuous integration pipelines authenticate with OAuth2 client credentials.\n\n"
    + _paragraphs("OAuth2 scopes", 8)
    + "\n\nIn the CI job set:\n\n.. code-block:: bash\n\n"
      "   export FLYTE_CREDENTIALS_CLIENT_ID=<client_id>\n\n"
      "   export FLYTE_CREDENTIALS_CLIENT_SECRET=<client_secret>\n\n"
    + _paragraphs("token lifetimes", 6))
OTHERS = [chunk(f"docs:other{i}.md", "docs", f"Other page {i}", f"https://docs.example.org/other{i}",
                f"CI pipelines and OAuth2 in setting {i}.\n\n" + _paragraphs(f"setting {i}", 12)) for i in range(9)]


def test_by_default_every_source_reaches_the_model_whole(server):
    """At the old budget (2,000 tokens) this page was cut to the passages sharing the question's
    words, and the two lines a CI job needs became "[...]"."""
    assert AnswerConfig().token_budget >= 6000
    server.reply = "Set the client id and secret [1]."
    answerer, _ = make(server, chunks=[CI_AUTH, *OTHERS])
    answerer.answer("How should CI pipelines authenticate with OAuth2?")
    prompt = server.requests[-1].text_of("user")
    assert "FLYTE_CREDENTIALS_CLIENT_ID=<client_id>" in prompt
    assert "FLYTE_CREDENTIALS_CLIENT_SECRET=<client_secret>" in prompt
    assert prompt.count("<source n=") == 10 and "[...]" not in prompt


def test_a_directives_body_stays_with_it_in_an_excerpt(server):
    """Cut to a small budget, the excerpt keeps ".. code-block:: bash" with its commands and the
    sentence introducing them: passages split at every blank line kept the sentence and the
    directive line, and "[...]" where the commands were."""
    server.reply = "Export both [1]."
    answerer, _ = make(server, chunks=[CI_AUTH], token_budget=150)
    answerer.answer("What do I set in the CI job?")
    prompt = server.requests[-1].text_of("user")
    assert ("In the CI job set:\n\n.. code-block:: bash\n\n   export FLYTE_CREDENTIALS_CLIENT_ID=<client_id>\n\n"
            "   export FLYTE_CREDENTIALS_CLIENT_SECRET=<client_secret>") in prompt


@pytest.mark.parametrize("budget", range(70, 220, 10))
def test_an_excerpt_that_keeps_a_directive_keeps_its_body(budget: int):
    source = Source(1, "docs:auth.rst", "Auth", "https://docs.example.org/auth", CI_AUTH.text, 1.0, "docs")
    [packed] = pack_sources([source], "What do I set in the CI job?", budget, token_counter())
    if ".. code-block:: bash" in packed.text:
        assert "CLIENT_ID=<client_id>" in packed.text and "CLIENT_SECRET=<client_secret>" in packed.text


THREAD = chunk(
    "slack:ask-the-community/1697846400.000100", "slack", "capping parallel nodes",
    "https://example.slack.com/archives/C1/p1697846400000100",
    "user018: Our big workflows launch too many task pods at once. How can I cap how many nodes run in "
    "parallel? We run many big workflows with many task pods at once and the cluster is overwhelmed.\n\n"
    + "\n\n".join(f"user0{20 + i}: +1, we see the same on our cluster ({i})." for i in range(6))
    + "\n\nuser012: Set max_parallelism on the launch plan: LaunchPlan.get_or_create(..., max_parallelism=10).\n\n"
    + "\n\n".join(f"user0{30 + i}: thanks, trying it ({i})." for i in range(6)))


def test_an_excerpt_of_a_slack_thread_keeps_the_reply_that_answers(server):
    """The thread's question shares the most words with the asker's (it is the same question in
    other words): ranked like any passage it was kept and the reply dropped."""
    server.reply = "Set max_parallelism [1]."
    answerer, _ = make(server, chunks=[THREAD], token_budget=100)
    answerer.answer("How can I cap how many nodes of my big workflows run in parallel at once?")
    prompt = server.requests[-1].text_of("user")
    assert "max_parallelism=10" in prompt
    assert "user018: Our big workflows" in prompt  # what was asked, at least its beginning


@pytest.mark.parametrize("kind", ["docs", "slack"])
def test_an_excerpt_stays_within_its_budget(kind: str):
    counter = token_counter()
    text = THREAD.text if kind == "slack" else CI_AUTH.text
    source = Source(1, "x:1", "t", "u", text, 1.0, kind)
    for budget in (60, 90, 150, 400):
        packed = pack_sources([source], "how do I cap parallel nodes with client id", budget, counter)
        assert all(counter.count(s.text) <= budget for s in packed)
