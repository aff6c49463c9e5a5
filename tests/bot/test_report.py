"""The maintainers' report on a synthetic question log: figures, topics, privacy, the CLI."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flytegpt.bot.answering import Citation
from flytegpt.bot.answering.types import Answer
from flytegpt.bot.report import ReportOptions, build_report, parse_since, render_page
from flytegpt.bot.report.build import cited_sources, latency_table
from flytegpt.bot.report.data import PrivacyFilter, SourceInfo, load_questions
from flytegpt.bot.report.gaps import cluster, topics
from flytegpt.bot.slack.feedback import FeedbackStore

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc).timestamp()
DAY = 86400.0

# (days ago, surface, channel, question, mode/outcome, cited source ids, latency, votes)
QUESTIONS = [
    (0.1, "mention", "C01ASK001", "How do I cache a task?", "llm", ["docs:caching.md"], 1.0, ["up"]),
    (0.2, "mention", "C01ASK001", "How do I invalidate the cache of a task?", "llm", ["docs:caching.md", "code:cache.py"],
     2.0, ["down", "down", "up"]),
    (1.1, "command", "C01ASK001", "How do I configure a private docker registry?", "not_found", [], 3.0, []),
    (1.2, "mention", "C01ASK001", "Can I pull task images from a private container registry?", "not_found", [], 4.0, []),
    (2.1, "followup", "C01ASK001", "How do I set up a private registry for my images <@U0SECRET1>?", "not_found", [], 5.0, []),
    (2.2, "mention", "C02OFF002", "What is the weather like in Paris today?", "not_found", [], 6.0, []),
    (3.5, "mention", "C01ASK001", "Why does my map task fail with OOM?", "model_failed", [], 30.0, []),
    (4.0, "dm", "D01DM0001", "A private question about secrets", "llm", ["docs:secrets.md"], 1.5, []),
    (4.5, "command", "D02DM0002", "Another private one, typed as /flytegpt in a DM", "llm", ["docs:secrets.md"], 1.5, []),
    (5.0, "mention", "C09OUT009", "A question in a channel outside the report", "llm", ["docs:secrets.md"], 1.5, []),
    (40.0, "mention", "C01ASK001", "An old question, before the period", "not_found", [], 1.0, []),
]


def make_db(path: Path) -> Path:
    store = FeedbackStore(path)
    ids = []
    for ago, surface, channel, question, mode, cited, latency, votes in QUESTIONS:
        kind = "im" if channel.startswith("D") else "channel"  # as the bot logs them
        if mode == "model_failed":
            qid = store.record_question(question, outcome="model_failed", surface=surface, channel=channel,
                                        thread_ts="1764500000.000100", user="U0ASKER1", latency_s=latency,
                                        failure="model_unavailable", channel_type=kind)
        else:
            cites = [Citation(i + 1, sid.split(":")[1], f"https://d/{sid}#L1-L2", sid) for i, sid in enumerate(cited)]
            answer = Answer(question, question, "text", cites, mode, "20261101T000000Z-00000001")  # type: ignore[arg-type]
            qid = store.record_answer(answer, surface=surface, channel=channel, thread_ts=f"17645{len(ids)}.000200",
                                      user=f"U0ASKER{len(ids) % 3}", latency_s=latency, channel_type=kind)
        for n, vote in enumerate(votes):
            store.record_vote(qid, vote, user=f"U0VOTER{n}", channel=channel)
        ids.append((qid, NOW - ago * DAY))
    store.close()
    conn = sqlite3.connect(path)  # the log's own clock is time.time(); the test sets the dates
    conn.executemany("UPDATE answers SET created_at = ? WHERE id = ?", [(t, i) for i, t in ids])
    conn.commit()
    conn.close()
    return path


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "feedback.sqlite3")


class FixedVectors:
    """Stands in for the embedder where a test needs exact, hand-made vectors."""

    model_id = "test/fixed"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed_documents(self, texts):
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_parse_since() -> None:
    assert parse_since("30d") == 30 * DAY and parse_since("2w") == 14 * DAY and parse_since("12h") == 12 * 3600
    for bad in ("", "30", "-1d", "0d", "thirty days"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


def test_figures_per_day_outcome_surface_and_vote(db: Path) -> None:
    privacy = PrivacyFilter.from_config(["C01ASK001", "C02OFF002"], [], dms=False)
    r = build_report(str(db), options=ReportOptions(since_s=7 * DAY, privacy=privacy), now=NOW)
    assert r.days[0] == "2026-11-23" and r.days[-1] == "2026-11-30" and len(r.days) == 8
    assert r.totals == {"questions": 7, "answered": 2, "not_found": 4, "model_failed": 1, "failed": 0,
                        "up": 1, "down": 1, "askers": 3}
    assert r.left_out == {"dm": 2, "private": 0, "untyped": 0, "channel": 1}  # the 40-day-old question is outside the period
    assert r.failures == {"model_unavailable": 1}
    assert "by cause: 1 model unavailable" in render_page(r)
    day = {d: i for i, d in enumerate(r.days)}
    assert r.per_day_outcome["answered"][day["2026-11-30"]] == 2
    assert r.per_day_outcome["not_found"][day["2026-11-29"]] == 2
    assert r.per_day_outcome["not_found"][day["2026-11-28"]] == 2
    assert r.per_day_outcome["model_failed"][day["2026-11-27"]] == 1
    assert sum(r.per_day_outcome["failed"]) == 0
    assert r.per_day_votes["up"][day["2026-11-30"]] == 1 and r.per_day_votes["down"][day["2026-11-30"]] == 1
    assert r.per_day_surface["slash"][day["2026-11-29"]] == 1  # "command" is shown as /flytegpt
    assert r.per_day_surface["followup"][day["2026-11-28"]] == 1
    assert sum(r.per_day_surface["mention"]) == 5 and sum(r.per_day_surface["dm"]) == 0
    # latency percentiles of the 7 shown questions: 1, 2, 3, 4, 5, 6, 30 s
    overall = r.latency[0]
    assert overall["group"] == "all questions" and overall["n"] == 7
    assert overall["p50"] == pytest.approx(4.0) and overall["max"] == 30.0
    assert overall["p90"] == pytest.approx(15.6)  # linear interpolation between 6 and 30
    groups = {row["group"]: row for row in r.latency}
    assert groups["outcome: not_found"]["n"] == 4 and groups["surface: slash"]["p50"] == 3.0


def test_dms_and_other_channels_are_shown_only_when_configured(db: Path) -> None:
    everything = PrivacyFilter.from_config(None, [], dms=True)
    r = build_report(str(db), options=ReportOptions(since_s=7 * DAY, privacy=everything), now=NOW)
    assert r.totals["questions"] == 10 and r.left_out == {"dm": 0, "private": 0, "untyped": 0, "channel": 0}
    assert sum(r.per_day_surface["dm"]) == 1
    # report_channels defaults to the allowed channels; names cannot be resolved offline: left out
    allowed = PrivacyFilter.from_config(None, ["C02OFF002", "#flyte-support"], dms=False)
    r = build_report(str(db), options=ReportOptions(since_s=7 * DAY, privacy=allowed), now=NOW)
    assert r.totals["questions"] == 1 and any("#flyte-support" in n for n in r.notes)


def test_no_user_id_reaches_the_page_and_mentions_are_masked(db: Path) -> None:
    embed = FixedVectors({q[3]: [1.0, float(i)] for i, q in enumerate(QUESTIONS)})
    r = build_report(str(db), options=ReportOptions(since_s=7 * DAY, privacy=PrivacyFilter(None, True)),
                     embedder=embed, now=NOW)  # type: ignore[arg-type]
    page = render_page(r)
    assert "U0ASKER" not in page and "U0VOTER" not in page and "U0SECRET1" not in page
    assert "private registry for my images @someone?" in page


def test_a_question_as_the_bot_stores_it_keeps_no_user_id_or_name(tmp_path: Path) -> None:
    """The bot stores a question after reading Slack's markup: `<@U0ALICE99>` was kept as
    "@U0ALICE99" and `<@W0BOBBY77|bob>` as "@bob", which the report's mask (written for the
    raw markup) let through to the page."""
    from flytegpt.bot.answering import Answer
    from flytegpt.bot.report.data import mask_mentions
    from flytegpt.bot.slack.feedback import FeedbackStore
    from flytegpt.bot.slack.history import question_text

    asked = question_text("<@UBOT> <@U0ALICE99> says caching is broken, ask <@W0BOBBY77|bob>. "
                          "Is `@task(cache=True)` enough? cc @here", "UBOT")
    assert asked == "@someone says caching is broken, ask @someone. Is `@task(cache=True)` enough? cc @here"
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.record_answer(Answer(asked, asked, "text", [], "not_found", "v1"), surface="mention", channel="C1",
                        user="U0ASKER", channel_type="channel")
    store.close()
    page = render_page(build_report(str(tmp_path / "fb.sqlite3"),
                                    options=ReportOptions(since_s=7 * DAY, privacy=PrivacyFilter(None, True))))
    assert "says caching is broken" in page
    assert "U0ALICE99" not in page and "bob" not in page and "U0ASKER" not in page
    # questions stored by earlier releases, in the rendered form
    assert mask_mentions("ask @U0ALICE99 or @W0BOBBY77 about @task") == "ask @someone or @someone about @task"


def test_cited_most_least_and_never(db: Path) -> None:
    rows = load_questions(str(db))
    catalog = {sid: SourceInfo(sid, "docs", sid.split(":")[1], f"https://d/{sid}")
               for sid in ("docs:caching.md", "docs:secrets.md", "docs:registry.md", "docs:retries.md")}
    catalog["code:cache.py"] = SourceInfo("code:cache.py", "code", "cache.py", "https://c/cache.py")
    most, least, never = cited_sources(rows, catalog, top_n=2)
    assert [(s["source_id"], s["count"]) for s in most] == [("docs:secrets.md", 3), ("docs:caching.md", 2)]
    assert [(s["source_id"], s["count"]) for s in least] == [("code:cache.py", 1), ("docs:caching.md", 2)]
    assert most[0]["url"] == "https://d/docs:secrets.md" and most[0]["in_index"]
    assert {k: [s.source_id for s in v] for k, v in never.items()} == {"docs": ["docs:registry.md", "docs:retries.md"]}


def test_latency_table_skips_rows_without_latency() -> None:
    assert latency_table([{"latency_s": None, "surface": "mention"}]) == []


def test_clustering_is_deterministic_and_labels_the_most_central_question() -> None:
    rng = np.random.default_rng(7)
    centres = np.eye(3, 16)
    vectors = np.vstack([centres[i] + 0.15 * rng.standard_normal(16) for i in (0, 1, 0, 2, 0, 1)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = cluster(vectors, 0.5)
    assert groups == [[0, 2, 4], [1, 5], [3]]
    assert cluster(vectors, 0.5) == groups  # same input, same topics
    rows = [{"question": f"q{i}"} for i in range(6)]
    found = topics(rows, vectors, 0.5)
    sub = vectors[[0, 2, 4]]
    central = [0, 2, 4][int(np.argmax((sub @ sub.T).mean(axis=1)))]
    assert found[0].label == f"q{central}" and found[0].questions[0]["question"] == f"q{central}"
    assert [t.size for t in found] == [3, 2, 1]
    assert cluster(vectors[:1], 0.5) == [[0]] and cluster(vectors[:0], 0.5) == []
    assert len(cluster(vectors, 0.99)) == 6  # nothing is that alike: every question alone
    with pytest.raises(ValueError, match="6 questions but 5 vectors"):
        topics(rows, vectors[:5], 0.5)


@pytest.mark.slow
def test_gap_topics_with_the_real_model(db: Path, embedder) -> None:
    r = build_report(str(db), options=ReportOptions(since_s=7 * DAY, privacy=PrivacyFilter(None, False)),
                     embedder=embedder, now=NOW)
    labels = [t.label for t in r.topics]
    sizes = {t.label: [q["question"] for q in t.questions] for t in r.topics}
    # three registry questions are one topic; the weather and the voted-down cache question stand alone
    registry = next(t for t in r.topics if t.size == 3)
    assert all("registry" in q["question"] for q in registry.questions)
    assert r.topics[0] is registry and len(r.topics) == 3
    assert "How do I invalidate the cache of a task?" in labels and "What is the weather like in Paris today?" in labels
    assert sizes[registry.label][0] == registry.label
    link = registry.questions[0]["link"]
    assert link is None or link.startswith("https://")


def _store_with_two_versions(tmp: Path, embedder) -> str:
    from flytegpt.ingest.artifact import ModelInfo, publish, write_version
    from flytegpt.ingest.models import Chunk

    store = str(tmp / "store")
    texts = {"docs:caching.md": "Caching: cache=True and cache_version on a task",
             "docs:secrets.md": "Secrets: request a secret in the task decorator",
             "docs:registry.md": "Container registries: push the image to a registry",
             "code:cache.py": "def cache_key(inputs): return a hash of the inputs"}
    versions = []
    for ids in (list(texts)[:3], list(texts)):
        chunks = [Chunk(sid, sid.split(":")[0], sid.split(":")[1], f"https://d/{sid}", texts[sid], texts[sid])
                  for sid in ids]
        vectors = embedder.embed_documents([c.embed_text for c in chunks])
        version = write_version(store, chunks, vectors, ModelInfo(embedder.model_id, embedder.dimension))
        publish(store, version)
        versions.append(version)
        import time
        time.sleep(1.1)  # version ids are per second
    return store


@pytest.mark.slow
def test_cli_writes_a_page_with_every_section(db: Path, embedder, tmp_path: Path, monkeypatch) -> None:
    from flytegpt.bot.cli import main

    store = _store_with_two_versions(tmp_path, embedder)
    monkeypatch.setenv("FLYTEGPT_ONNX_CACHE", str(tmp_path / "onnx"))
    config = tmp_path / "flytegpt.toml"
    config.write_text('[bot]\nreport_channels = ["C01ASK001"]\n[embeddings]\nbackend = "torch"\nprecision = "fp32"\n'
                      'device = "cpu"\n')
    out = tmp_path / "out" / "report.html"
    questions = tmp_path / "eval.jsonl"
    questions.write_text('{"question": "How do I push my image to a container registry?", "gold": ["docs:registry.md"]}\n'
                         '{"question": "hash of the inputs for the cache key", "gold": ["code:cache.py"]}\n')
    result = CliRunner().invoke(main, ["report", "--db", str(db), "--config", str(config), "--store", store,
                                       "--since", "3650d", "--out", str(out), "--eval", str(questions)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for chart in ("outcomes-per-day", "votes-per-day", "surfaces-per-day", "gap-topics", "most-cited",
                  "chunks-per-version", "latency-percentiles"):
        assert f'data-chart="{chart}"' in page
    assert "2 of the 4 sources in the published index were never cited" in page
    assert "registry.md" in page and "(LATEST)" in page
    # metrics per version: the first version has no code chunk, so it misses the code question
    rows = re.findall(r"<tr><td[^>]*>(\d{8}T\d{6}Z-[0-9a-f]{8}).*?</tr>", page)
    cells = re.findall(r"<tr><td[^>]*>\d{8}T\d{6}Z-[0-9a-f]{8}.*?</tr>", page)
    assert len(rows) == 2 and "MRR@10" in page
    recall10 = [re.findall(r'<td class="n">([01]\.\d{3})</td>', c)[1] for c in cells]
    assert recall10 == ["1.000", "0.500"]  # newest first
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")

    bad = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "missing.sqlite3"), "--config", str(config),
                                    "--no-store", "--out", str(out)])
    assert bad.exit_code != 0 and "feedback database not found" in bad.output
    bad = CliRunner().invoke(main, ["report", "--db", str(db), "--config", str(config), "--no-store",
                                    "--since", "soon", "--out", str(out)])
    assert bad.exit_code != 0 and "--since must be a positive duration" in bad.output


def test_the_assistant_panel_is_private_like_a_dm() -> None:
    from flytegpt.bot.report.data import is_private, surface_of

    panel = {"surface": "assistant", "channel": "D01DM0001"}
    assert surface_of(panel) == "panel" and is_private(panel)
    shown, left_out = PrivacyFilter(None, False).split([panel, {"surface": "mention", "channel": "C01ASK001",
                                                                               "channel_type": "channel"}])
    assert len(shown) == 1 and left_out == {"dm": 1, "private": 0, "untyped": 0, "channel": 0}


@pytest.mark.parametrize(("bot", "expected"), [
    ('allowed_channels = ["#general"]',
     "[bot] allowed_channels (the default for report_channels, which is not set) names channels: #general. "
     "Channel names cannot be matched offline, so no channel question is shown; give channel ids such as "
     "C0123ABCD in allowed_channels, or set report_channels to channel ids."),
    ('allowed_channels = ["C01ASK001", "general"]',
     "[bot] allowed_channels (the default for report_channels, which is not set) names channels: general. "
     "Channel names cannot be matched offline, so questions from those channels are left out; give channel ids "
     "such as C0123ABCD in allowed_channels, or set report_channels to channel ids."),
    ('allowed_channels = ["C01ASK001"]\nreport_channels = ["general"]',
     "[bot] report_channels names channels: general. Channel names cannot be matched offline, so no channel "
     "question is shown; give channel ids such as C0123ABCD instead."),
])
def test_channel_names_in_the_config_are_named_in_a_note_with_where_they_came_from(db: Path, tmp_path: Path,
                                                                                   bot: str, expected: str) -> None:
    """Before, with `allowed_channels` given by name and report_channels not set, the report
    showed no question and its note blamed report_channels, which the user never set ("...were
    ignored: general"): the names had left every channel question out."""
    from html import escape

    from flytegpt.bot.cli import main

    config = tmp_path / "flytegpt.toml"
    config.write_text(f"[bot]\n{bot}\n")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", str(db), "--config", str(config), "--no-store",
                                       "--since", "3650d", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"note: {expected}" in result.output.splitlines()
    assert escape(expected) in out.read_text()
    from_ids = "C01ASK001" in bot and "report_channels" not in bot
    shown = sum(q[2] == "C01ASK001" for q in QUESTIONS) if from_ids else 0  # DMs are left out too
    assert f"wrote {out}: {shown} questions" in result.output


class BrokenModel:
    model_id = "test/broken"

    def embed_documents(self, texts):
        raise RuntimeError("the model's weights are missing")


def test_a_model_that_cannot_embed_leaves_the_gaps_ungrouped_with_a_note(db: Path) -> None:
    r = build_report(str(db), options=ReportOptions(since_s=7 * DAY), embedder=BrokenModel(), now=NOW)  # type: ignore[arg-type]
    assert len(r.topics) == 5 and all(t.size == 1 for t in r.topics)  # 4 not found + 1 voted down
    assert any("could not embed them (the model's weights are missing)" in n for n in r.notes)
    assert "the model&#x27;s weights are missing" in render_page(r)


@pytest.mark.slow
def test_a_damaged_index_version_is_a_note_not_a_failed_report(db: Path, embedder, tmp_path: Path) -> None:
    from flytegpt.ingest.artifact import read_latest

    store = _store_with_two_versions(tmp_path, embedder)
    chunks = Path(store) / read_latest(store) / "chunks.jsonl.gz"
    chunks.write_bytes(chunks.read_bytes()[:-8])  # truncated
    r = build_report(str(db), store=store, options=ReportOptions(since_s=7 * DAY), embedder=embedder, now=NOW)
    assert any("the published index cannot be read" in n and "chunks.jsonl.gz" in n for n in r.notes)
    assert r.catalog_size == 0 and len(r.versions) == 2 and r.totals["questions"] == 8
    assert r.topics  # still clustered, with the configured model


@pytest.mark.slow
def test_a_damaged_old_version_is_left_out_and_the_others_are_still_evaluated(db: Path, embedder,
                                                                                tmp_path: Path) -> None:
    from flytegpt.ingest.artifact import read_latest

    store = _store_with_two_versions(tmp_path, embedder)
    latest = read_latest(store)
    old = next(p.name for p in Path(store).iterdir() if p.is_dir() and p.name[:8].isdigit() and p.name != latest)
    chunks = Path(store) / old / "chunks.jsonl.gz"
    chunks.write_bytes(chunks.read_bytes()[:100])  # truncated, as a failed copy leaves it
    questions = tmp_path / "eval.jsonl"
    questions.write_text('{"question": "How do I push my image to a container registry?", "gold": ["docs:registry.md"]}\n'
                         '{"question": "hash of the inputs for the cache key", "gold": ["code:cache.py"]}\n')
    r = build_report(str(db), store=store, options=ReportOptions(since_s=7 * DAY, eval_questions=str(questions)),
                     embedder=embedder, now=NOW)
    by_id = {v["version"]: v for v in r.versions}
    assert by_id[old]["eval"] == {"left_out": True}
    assert by_id[latest]["eval"] is not None and by_id[latest]["eval"]["recall@10"] == 1.0
    assert [n for n in r.notes if "left out of the evaluation" in n and old in n and "chunks.jsonl.gz" in n]
    assert not any("Evaluating the index versions failed" in n for n in r.notes)
    page = render_page(r)
    assert "MRR@10" in page and f"{old} left out of the evaluation" in page
    row = next(tr for tr in page.split("<tr>") if old in tr and "left out (see notes)" in tr)
    assert "1.000" not in row  # its row says why it has no figures; the served version's has them
