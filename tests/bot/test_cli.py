"""`flytegpt ingest / search / eval / demo` as a user runs them, on a copy of the sample corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.ingest.config import sample_config_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A private copy of the bundled sample corpus (tests change files in it)."""
    root = tmp_path_factory.mktemp("corpus") / "sample"
    shutil.copytree(sample_config_path().parent, root)
    return root


@pytest.fixture(scope="module")
def store(corpus: Path, tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("store"))


def run(*args: str) -> "object":
    # wide enough that rich's tables don't wrap ids and URLs
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "300"})


def ingest_json(corpus: Path, store: str) -> dict:
    result = run("ingest", "--config", str(corpus / "flytegpt.toml"), "--store", store, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])  # --json: stdout is JSON only


def test_ingest_then_reingest_embeds_only_what_changed(corpus: Path, store: str):
    first = ingest_json(corpus, store)
    counts = {s["name"]: s for s in first["sources"]}
    assert set(counts) == {"sample-docs", "sample-code", "sample-slack"}
    assert all(s["documents"] > 0 and s["chunks"] > 0 for s in counts.values())
    assert first["embeddings_computed"] == first["chunks"] and first["embeddings_reused"] == 0
    assert (Path(store) / "LATEST").read_text().strip() == first["version"]

    again = ingest_json(corpus, store)
    assert again["embeddings_computed"] == 0 and again["embeddings_reused"] == first["chunks"]

    page = corpus / "docs" / "secrets.md"
    page.write_text(page.read_text() + "\n\n## Rotating secrets\n\nRotate a secret by updating it in the cluster; tasks read it at start.\n")
    changed = ingest_json(corpus, store)
    assert 0 < changed["embeddings_computed"] <= 3  # only chunks of the changed page
    assert changed["embeddings_reused"] >= first["chunks"] - 2


def test_ingest_summary_names_a_malformed_day_file_and_keeps_the_rest(corpus: Path, tmp_path: Path):
    bad = tmp_path / "sample"
    shutil.copytree(corpus, bad)
    (bad / "slack" / "flyte-support" / "2024-05-01.json").write_text("[{not json")
    result = run("ingest", "--config", str(bad / "flytegpt.toml"), "--store", str(tmp_path / "store"), "--quiet")
    assert result.exit_code == 0, result.output
    assert "2024-05-01.json" in result.output and "skipped" in result.output
    summary = ingest_json(bad, str(tmp_path / "store"))
    slack = next(s for s in summary["sources"] if s["name"] == "sample-slack")
    assert len(slack["skipped"]) == 1 and slack["documents"] > 0


def test_dry_run_shows_what_an_ingest_would_index_and_writes_nothing(corpus: Path, tmp_path: Path):
    bad = tmp_path / "sample"
    shutil.copytree(corpus, bad)
    (bad / "slack" / "flyte-support" / "2024-05-01.json").write_text("[{not json")
    fresh = tmp_path / "store"
    result = run("ingest", "--config", str(bad / "flytegpt.toml"), "--store", str(fresh), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    dry = json.loads(result.stdout.strip().splitlines()[-1])
    assert not fresh.exists()  # no chunk cache, no embeddings, no version, no LATEST

    table = run("ingest", "--config", str(bad / "flytegpt.toml"), "--store", str(fresh), "--dry-run")
    assert table.exit_code == 0 and "Dry run" in table.output and "2024-05-01.json" in table.output
    assert f"{dry['chunks']:,} chunks" in table.output

    real = ingest_json(bad, str(fresh))
    assert dry["chunks"] == real["chunks"]
    assert [(s["name"], s["documents"], s["chunks"], s["skipped"]) for s in dry["sources"]] == [
        (s["name"], s["documents"], s["chunks"], s["skipped"]) for s in real["sources"]]


def test_a_source_that_finds_nothing_is_named_with_the_likely_reason(corpus: Path, tmp_path: Path, caplog):
    """A docs source pointed at a file, or an include that matches nothing, read 0 documents with
    no word in the dry run or the ingest summary, which then published without it."""
    bad = tmp_path / "sample"
    shutil.copytree(corpus, bad)
    (bad / "notes.md").write_text("# Notes\n\nA page.\n")
    config = (bad / "flytegpt.toml").read_text() + (
        '\n[[sources]]\nname = "a-file"\nkind = "docs"\npath = "notes.md"\n'
        '\n[[sources]]\nname = "no-match"\nkind = "docs"\npath = "docs"\ninclude = ["*.txt"]\n')
    (bad / "flytegpt.toml").write_text(config)
    dry = run("ingest", "--config", str(bad / "flytegpt.toml"), "--store", str(tmp_path / "s"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    text = " ".join(dry.output.split())
    assert f"a-file: {bad / 'notes.md'}: no documents: {bad / 'notes.md'} is a file; a docs source reads a folder" in text
    assert "no-match:" in text and "no documents: no file matches include ['*.txt']" in text
    # in the summary, not also as a log line before it (every skip used to print twice)
    assert not [r for r in caplog.records if "no file matches include" in r.getMessage()]
    summary = ingest_json(bad, str(tmp_path / "s"))
    empty = {s["name"]: s for s in summary["sources"] if not s["documents"]}
    assert set(empty) == {"a-file", "no-match"} and all(len(s["skipped"]) == 1 for s in empty.values())


def test_search_shows_ranked_chunks_with_source_ids_and_urls(corpus: Path, store: str):
    ingest_json(corpus, store)
    result = run("search", "how do I invalidate the cache", "--config", str(corpus / "flytegpt.toml"),
                 "--store", store, "--k", "3")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.strip("│ ")[:1].isdigit()]
    assert [row.strip("│ ").split()[0] for row in rows] == ["1", "2", "3"]
    caching = next(row for row in rows if "sample-docs:caching.md" in row)  # id, then its URL
    assert "caching.md" in caching.split("sample-docs:caching.md")[1]
    for column in ("rank", "score", "source id", "title", "url"):
        assert column in result.output


def test_search_json_gives_whole_urls_a_line_per_chunk(corpus: Path, store: str):
    """The table folds long URLs, so a citation's URL could not be checked there."""
    ingest_json(corpus, store)
    result = run("search", "how do I invalidate the cache", "--config", str(corpus / "flytegpt.toml"),
                 "--store", store, "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    caching = next(h for h in hits if h["source_id"] == "sample-docs:caching.md")
    assert caching["url"].endswith("caching.md") and "cache_version" in caching["text"]


def test_eval_json_last_line(corpus: Path, store: str):
    ingest_json(corpus, store)
    result = run("eval", str(corpus / "QUESTIONS.jsonl"), "--config", str(corpus / "flytegpt.toml"),
                 "--store", store, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {"n", "recall@5", "recall@10", "mrr@10", "coverage@10", "recall@8000c", "by_kind"}
    assert report["n"] >= 3 and report["recall@5"] >= 0.75  # the sample questions are answerable


def test_eval_names_gold_ids_the_index_does_not_have(corpus: Path, store: str, tmp_path: Path):
    """A typo in a gold id would score 0 in silence; a gold id written as one string counts as that id."""
    ingest_json(corpus, store)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "How do I invalidate the cache?", "gold": "sample-docs:caching.md"}) + "\n"
        + json.dumps({"question": "How do I invalidate the cache?", "gold": ["sample-docs:cachng.md"]}) + "\n")
    result = run("eval", str(questions), "--config", str(corpus / "flytegpt.toml"), "--store", store, "--json")
    assert result.exit_code == 0, result.output
    assert "1 gold source id(s) are in no chunk" in result.stderr and "sample-docs:cachng.md" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["recall@5"] == 0.5  # the string gold is found; the typo cannot be


def test_eval_question_file_errors_name_the_line(corpus: Path, tmp_path: Path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "fine", "gold": ["a:b"]}\n[1, 2]\n')
    result = run("eval", str(questions), "--config", str(corpus / "flytegpt.toml"))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "q.jsonl:2: expected an object" in result.output


def test_demo_answers_the_sample_questions_offline(corpus: Path, store: str):
    ingest_json(corpus, store)
    result = run("demo", "--config", str(corpus / "flytegpt.toml"), "--store", store)
    assert result.exit_code == 0, result.output
    assert result.output.count("> ") >= 3
    assert "No language model is configured" in result.output
    assert "[1] " in result.output


def test_config_errors_are_messages_not_tracebacks(tmp_path: Path):
    config = tmp_path / "flytegpt.toml"
    config.write_text('[[sources]]\nname = "d"\nkind = "docs"\npath = "docs"\nurl_tmpl = "x"\n')
    result = CliRunner().invoke(main, ["ingest", "--config", str(config)])
    assert result.exit_code != 0
    assert "unknown key 'sources[d].url_tmpl'" in result.output
    assert "Traceback" not in result.output


def test_search_refuses_an_empty_question_and_a_k_out_of_range(corpus: Path, store: str):
    ingest_json(corpus, store)
    config = ["--config", str(corpus / "flytegpt.toml"), "--store", store]
    empty = CliRunner().invoke(main, ["search", "   ", *config])  # `ask`'s error: exit 1, one Error line, no table
    assert empty.exit_code == 1 and empty.output == "Error: the question is empty\n", empty.output
    for args in (["search", "cache", "--k", "-5", *config], ["search", "cache", "--k", "0", *config]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, args  # a usage error, no table
        assert "--k" in result.output, result.output


def test_search_without_an_index_says_how_to_build_one(corpus: Path, tmp_path: Path):
    result = CliRunner().invoke(main, ["search", "anything", "--config", str(corpus / "flytegpt.toml"),
                                       "--store", str(tmp_path / "empty")])
    assert result.exit_code != 0
    assert "flytegpt ingest" in result.output and "Traceback" not in result.output


def test_search_on_a_damaged_index_says_what_is_wrong_and_how_to_repair_it(corpus: Path, tmp_path: Path):
    store = tmp_path / "store"
    ingest_json(corpus, str(store))
    version = (store / "LATEST").read_text().strip()
    dense = store / version / "dense.faiss"
    dense.write_bytes(dense.read_bytes()[:-100])  # a truncated upload, a disk error
    result = CliRunner().invoke(main, ["search", "anything", "--config", str(corpus / "flytegpt.toml"),
                                       "--store", str(store)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"version {version}" in result.output and "dense.faiss" in result.output
    assert "Publish a sound version over it: flytegpt ingest" in result.output
    assert "Build an index first" not in result.output  # there is one; it is damaged


def test_ingest_into_a_store_that_cannot_be_written_stops_before_reading(corpus: Path, tmp_path: Path):
    """A store path under a file (or a read-only mount, a missing bucket) is reported at the start,
    with what and where, before an hour of embedding, and nothing is written."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    result = CliRunner().invoke(main, ["ingest", "--config", str(corpus / "flytegpt.toml"),
                                       "--store", str(blocker / "store")])
    assert result.exit_code == 1
    assert "cannot write to the index store" in result.output and str(blocker / "store") in result.output
    assert "Traceback" not in result.output and "embedding" not in result.output
    assert blocker.read_text() == "a file"


def test_ingest_that_fails_writing_midway_reports_it_without_a_traceback(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A disk that fills up while the version is written: one line naming the store, exit 1,
    and LATEST (none yet here) untouched."""
    from flytegpt.ingest import artifact

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "write_version", full_disk)
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["ingest", "--config", str(corpus / "flytegpt.toml"),
                                       "--store", str(store), "--quiet"])
    assert result.exit_code == 1, result.output
    assert f"ingest into {store} failed" in result.output and "No space left on device" in result.output
    assert not (store / "LATEST").exists()


def test_eval_ranks_lists_where_mrr_is_lost(corpus: Path, store: str, tmp_path: Path):
    """--ranks: every question whose first gold source is not first, its rank and what stands above it."""
    ingest_json(corpus, store)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"id": "first", "question": "How do I invalidate the cache?", "gold": ["sample-docs:caching.md"]}) + "\n"
        + json.dumps({"id": "nowhere", "question": "How do I invalidate the cache?", "gold": ["sample-docs:none.md"]}) + "\n"
        + json.dumps({"id": "lower", "question": "How do I invalidate the cache?",
                      "gold": ["sample-docs:secrets.md"]}) + "\n")
    result = run("eval", str(questions), "--config", str(corpus / "flytegpt.toml"), "--store", store, "--ranks")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("rank ")]
    assert [line.split()[2] for line in lines] == ["nowhere", "lower"]  # the question answered first is not listed
    assert lines[0].startswith("rank >10 nowhere") and "sample-docs:caching.md" in lines[0]
    rank = int(lines[1].split()[1])
    assert rank > 1 and lines[1].count("sample-") - 1 == min(rank - 1, 3)  # the sources above the gold one


def test_questions_users_confirmed_are_a_question_set_for_eval(corpus: Path, store: str, tmp_path: Path):
    """The 👍 of real users as a regression set: `flytegpt feedback questions`, then `flytegpt eval`."""
    from flytegpt.bot.answering.types import Answer, Citation
    from flytegpt.bot.slack.feedback import FeedbackStore

    ingest_json(corpus, store)
    db = tmp_path / "feedback.sqlite3"
    fb = FeedbackStore(db)
    cited = [Citation(1, "Caching", "https://e.org/caching", "sample-docs:caching.md")]
    fid = fb.record_answer(Answer("how do i bust the cache", "How do I invalidate the cache?", "Bump the version [1].",
                                  cited, "llm", "v1"), surface="mention", user="U1")
    fb.record_vote(fid, "up", user="U1", channel="C1")  # the asker's 👍 confirms
    fb.close()
    questions = tmp_path / "confirmed.jsonl"
    result = run("feedback", "questions", "--db", str(db), "--out", str(questions))
    assert result.exit_code == 0, result.output
    result = run("eval", str(questions), "--config", str(corpus / "flytegpt.toml"), "--store", store, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n"] == 1 and report["recall@5"] == 1.0


def test_eval_accepts_a_question_file_saved_with_a_utf8_bom(corpus: Path, store: str, tmp_path: Path):
    """Windows editors start UTF-8 files with a BOM: it was `q.jsonl:1: not JSON: Unexpected UTF-8 BOM`."""
    ingest_json(corpus, store)
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(b"\xef\xbb\xbf" + (corpus / "QUESTIONS.jsonl").read_bytes())
    result = run("eval", str(questions), "--config", str(corpus / "flytegpt.toml"), "--store", store, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] >= 3


def test_eval_searches_a_pasted_traceback_as_the_bot_does(corpus: Path, store: str, tmp_path: Path):
    """A question file of pasted errors (issue 13's style) is measured as the bot searches it: the
    asker's words, the error and their own frames, not the library frames that fill the trace."""
    ingest_json(corpus, store)
    frames = "".join(f'  File "/usr/lib/python3.11/site-packages/minikit/secrets.py", line {100 + i}, in read_{i}\n'
                     "    return current_context().secrets.get(group=group, key=key)\n" for i in range(20))
    # searched whole, the 20 library frames about secrets put the secrets page first (MRR@10 0.25)
    trace = ("my workflow fails:\nTraceback (most recent call last):\n" + frames
             + '  File "/home/me/wf.py", line 12, in train\n    return cached_train(data, version=cache_version)\n'
             "ValueError: task 'train': caching needs a non-empty cache version")
    questions = tmp_path / "q.jsonl"
    gold = ["sample-docs:caching.md", "sample-code:minikit/cache.py"]  # the page, the code raising it
    questions.write_text(json.dumps({"id": "t1", "question": trace, "gold": gold}) + "\n")
    result = run("eval", str(questions), "--config", str(corpus / "flytegpt.toml"), "--store", store, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["mrr@10"] == 1.0


def test_a_slack_export_without_channels_json_is_indexed_with_a_note_that_its_threads_cannot_be_linked(
        corpus: Path, tmp_path: Path):
    """Every Slack citation of such an index was a dead `slack:<ts>`, and the dry run and the
    summary said `skipped 0` and nothing else."""
    bad = tmp_path / "sample"
    shutil.copytree(corpus, bad)
    (bad / "slack" / "channels.json").unlink()
    args = ["ingest", "--config", str(bad / "flytegpt.toml"), "--store", str(tmp_path / "s"), "--dry-run"]
    table = run(*args)
    assert table.exit_code == 0, table.output
    assert ("note sample-slack: channels.json: missing or not a list of channels: thread links cannot be built"
            in " ".join(table.output.split()))
    sources = {s["name"]: s for s in json.loads(run(*args, "--json").stdout.strip().splitlines()[-1])["sources"]}
    assert sources["sample-slack"]["documents"] > 0 and sources["sample-slack"]["skipped"] == []  # kept
    assert [n for n, _ in sources["sample-slack"]["notes"]] == ["channels.json"]
    assert sources["sample-docs"]["notes"] == []


HOSTILE = "How do I configure zebra caching? \u001b[2J\u001b]0;PWNED\u0007\u001b[31mRED\u001b[0m zebra \u202eevil"


def test_ask_chat_and_search_print_slack_text_without_terminal_control_sequences(corpus: Path, tmp_path: Path):
    """CSI colour codes were removed (by click, off a terminal), but an OSC sequence (window
    title; OSC 52 writes the clipboard) and a right-to-left override reached the terminal."""
    hostile = tmp_path / "sample"
    shutil.copytree(corpus, hostile)
    (hostile / "slack" / "flyte-support" / "2024-06-01.json").write_text(json.dumps([
        {"type": "message", "user": "U02", "text": HOSTILE, "ts": "1717200000.000100"},
        {"type": "message", "user": "U03", "text": "\u001b]0;PWNED\u0007\u202eZebra caching notes\u001b[0m\u0007",
         "ts": "1717200100.000100"}]))
    store = str(tmp_path / "store")
    ingest_json(hostile, store)
    config = ["--config", str(hostile / "flytegpt.toml"), "--store", store]
    outputs = {
        "ask": run("ask", "zebra caching", *config),
        "ask --json": run("ask", "zebra caching", "--json", *config),
        "search": run("search", "zebra caching", *config),
        "chat": CliRunner().invoke(main, ["chat", *config], input="zebra caching\nexit\n", env={"COLUMNS": "300"}),
    }
    for name, result in outputs.items():
        assert result.exit_code == 0, (name, result.output)
        for control in ("\x1b", "\x07", "\u202e", "\x9b"):
            assert control not in result.output, (name, control, result.output)
    for name in ("ask", "chat"):
        assert "How do I configure zebra caching? RED zebra evil" in outputs[name].output and "PWNED" not in outputs[name].output
    assert "Zebra caching notes" in outputs["search"].output and "PWNED" not in outputs["search"].output
    answer = json.loads(outputs["ask --json"].output)  # --json keeps the text, every control escaped
    assert HOSTILE in answer["answer"]


def test_error_lines_are_printed_without_terminal_control_sequences(tmp_path: Path):
    """An `Error:` line quotes file names and store contents: filtered like the rest."""
    result = run("search", "x", "--config", str(tmp_path / "a\u001b]0;PWNED\u0007\u202eb.toml"))
    assert result.exit_code == 1
    assert result.output == f"Error: config file not found: {tmp_path / 'ab.toml'}\n"
