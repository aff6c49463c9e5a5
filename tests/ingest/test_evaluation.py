import pytest

from flytegpt.ingest.evaluation import (
    Question,
    QuestionFileError,
    evaluate,
    load_questions,
    mean_scores,
    score_question,
    unknown_gold,
)
from flytegpt.ingest.models import Chunk


def chunk(source_id: str, chars: int = 100) -> Chunk:
    return Chunk(source_id, "docs", source_id, "https://x", "x" * chars, "x")


def test_first_gold_at_rank_three():
    chunks = [chunk("a:1"), chunk("a:2"), chunk("g:1"), chunk("g:2")]
    row = score_question(chunks, ["g:1", "g:2", "g:3"])
    assert row["recall@5"] == 1 and row["recall@10"] == 1
    assert row["mrr@10"] == pytest.approx(1 / 3)
    assert row["coverage@10"] == pytest.approx(2 / 3)
    assert row["recall@8000c"] == 1


def test_gold_past_rank_five_and_ten():
    chunks = [chunk(f"a:{i}") for i in range(6)] + [chunk("g:1")] + [chunk(f"b:{i}") for i in range(5)]
    row = score_question(chunks, ["g:1"])
    assert (row["recall@5"], row["recall@10"], row["mrr@10"]) == (0, 1, pytest.approx(1 / 7))
    late = [chunk(f"a:{i}") for i in range(10)] + [chunk("g:1")]
    assert score_question(late, ["g:1"])["recall@10"] == 0


def test_context_recall_counts_characters_but_always_the_first_chunk():
    big_first = [chunk("g:1", 20_000)]
    assert score_question(big_first, ["g:1"])["recall@8000c"] == 1
    crowded = [chunk("a:1", 5000), chunk("a:2", 4000), chunk("g:1", 10)]
    assert score_question(crowded, ["g:1"])["recall@8000c"] == 0
    assert score_question(crowded, ["g:1"])["recall@5"] == 1


def test_evaluate_reports_by_kind(tmp_path):
    qs = [Question("q1", "one", ("g:1",), "docs"), Question("q2", "two", ("g:2",), "code")]
    report = evaluate(qs, lambda q: [chunk("g:1")] if q == "one" else [chunk("x:1")])
    assert report["n"] == 2 and report["recall@5"] == 0.5
    assert report["by_kind"]["docs"]["mrr@10"] == 1.0 and report["by_kind"]["code"]["mrr@10"] == 0.0
    assert [q["first_gold_rank"] for q in report["questions"]] == [1, None]


def test_the_first_gold_rank_is_where_a_reader_finds_it():
    report = evaluate([Question("q", "q", ("g:2", "g:3"))],
                      lambda q: [chunk(f"x:{i}") for i in range(4)] + [chunk("g:3"), chunk("g:2")])
    [row] = report["questions"]
    assert row["first_gold_rank"] == 5 and row["mrr@10"] == 0.2
    assert mean_scores([row, {**row, "mrr@10": 1.0}])["mrr@10"] == 0.6


def test_bad_question_file_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a", "gold": ["x:1"]}\n{"question": "b"}\n')
    with pytest.raises(QuestionFileError, match=r"q\.jsonl:2"):
        load_questions(path)


@pytest.mark.parametrize("line, error", [
    ('{"question": 42, "gold": ["x:1"]}', "'question' must be a non-empty string"),
    ('{"question": "  ", "gold": ["x:1"]}', "'question' must be a non-empty string"),
    ('{"question": "a", "gold": []}', "'gold' must be a list of source ids"),
    ('{"question": "a", "gold": [1]}', "'gold' must be a list of source ids"),
    ('["a", "b"]', "expected an object"),
    ("{not json", "not JSON"),
    ('{"question": "a", "gold": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_malformed_questions_are_errors_naming_the_line(tmp_path, line: str, error: str):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a", "gold": ["x:1"]}\n' + line + "\n")
    with pytest.raises(QuestionFileError, match=r"q\.jsonl:2: ") as e:
        load_questions(path)
    assert error in str(e.value)


def test_a_gold_id_written_as_a_string_is_one_id_and_unknown_ids_are_named(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "q", "gold": "docs:page.md"}\n')
    (q,) = load_questions(path)
    assert q.gold == ("docs:page.md",)
    assert unknown_gold([q], ["docs:other.md"]) == ["docs:page.md"] and unknown_gold([q], ["docs:page.md"]) == []


def test_a_question_file_with_half_an_emoji_loads_as_valid_text(tmp_path):
    """JSON escapes can spell a lone surrogate; `flytegpt eval --misses` then failed to print it."""
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a\\ud800", "question": "cache \\ud83d", "gold": ["docs:p\\udfff.md"]}\n')
    (q,) = load_questions(path)
    assert (q.id, q.question, q.gold) == ("a\ufffd", "cache \ufffd", ("docs:p\ufffd.md",))
    "".join((q.id, q.question, *q.gold)).encode("utf-8")  # printable


def test_an_unreadable_question_file_is_an_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(QuestionFileError, match="cannot read"):
        load_questions(path)


@pytest.mark.parametrize("name, at_least", [("dev_howto.jsonl", 40), ("check_faq.jsonl", 30),
                                              ("check_chat.jsonl", 36), ("check_issues.jsonl", 40),
                                              ("check_heldout.jsonl", 50)])
def test_the_project_question_files_are_well_formed(name: str, at_least: int):
    """tests/eval/*.jsonl: the format of ../shared/eval/dev.jsonl, ids unique, kinds matching the
    gold ids' sources, and (when the eval corpus is beside the checkout) every gold document
    present in it."""
    import json
    import zipfile

    from support.paths import ROOT, SHARED

    path = ROOT / "tests" / "eval" / name
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) >= at_least and len({r["id"] for r in rows}) == len(rows)
    assert len(load_questions(path)) == len(rows)
    sources = {"flyte-docs": "docs", "flytesnacks-docs": "docs", "flyte-slack": "slack", "flytekit": "code"}
    for r in rows:
        assert r["question"].strip() and r["gold"] and 1 <= len(r["answer_facts"]) <= 4, r["id"]
        kinds = {sources[g.split(":", 1)[0]] for g in r["gold"]}
        assert r["kind"] == (kinds.pop() if len(kinds) == 1 else "mixed"), r["id"]
    corpus = SHARED / "corpus"
    if not corpus.is_dir():
        pytest.skip("../shared/corpus is not present")
    with zipfile.ZipFile(corpus / "flyte-slack-export.zip") as z:
        threads = {
            f"{name.split('/')[0]}/{m.get('thread_ts', m['ts'])}"
            for name in z.namelist() if name.count("/") == 1 and name.endswith(".json")
            for m in json.loads(z.read(name))
        }
    from pathlib import Path

    import flytekit

    folders = {"flytekit": Path(flytekit.__file__).parent}  # the code source: the installed package
    for r in rows:
        for gold in r["gold"]:
            source, locator = gold.split(":", 1)
            assert (locator in threads) if source == "flyte-slack" else \
                (folders.get(source, corpus / source) / locator).is_file(), gold


def test_a_question_sets_own_keys_are_left_aside_and_a_misspelt_gold_is_named(tmp_path, caplog):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "h1", "question": "a", "gold": ["x:1"], "notes": "from issue #12", "url": "u"}\n'
                    '{"id": "h2", "question": "b", "gold": "x:2", "difficulty": 3}\n')
    with caplog.at_level("WARNING"):
        questions = load_questions(path)
    assert [(q.id, q.gold) for q in questions] == [("h1", ("x:1",)), ("h2", ("x:2",))]
    warned = [r.getMessage() for r in caplog.records if "left aside" in r.getMessage()]
    assert len(warned) == 1 and all(k in warned[0] for k in ("'notes'", "'url'", "'difficulty'"))

    path.write_text('{"question": "a", "gold": ["x:1"]}\n{"question": "b", "golds": ["x:2"]}\n')
    with pytest.raises(QuestionFileError, match=r"q\.jsonl:2: unknown key 'golds': is it meant to be 'gold'\?"):
        load_questions(path)
    path.write_text('{"Question": "a", "gold": ["x:1"], "answer": "use cache=True"}\n')
    with pytest.raises(QuestionFileError, match=r"q\.jsonl:1: unknown key 'Question': is it meant to be 'question'"):
        load_questions(path)
    path.write_text('{"question": "a", "gold": ["x:1"], "answer": "use cache=True", "sources": ["u"]}\n')
    assert load_questions(path)[0].gold == ("x:1",)  # an answer text is no misspelt answer_facts
