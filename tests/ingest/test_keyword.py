"""BM25 keyword index: identifier-aware tokenizer, stopwords, safe save/load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flytegpt.ingest.keyword import STOPWORDS, TOKENIZER_FILE, KeywordIndex, tokenize

CORPUS = [
    "Use `task.with_overrides(cache=True)` to change a node's resources.",
    "class FlyteFile: a file that is uploaded to the blob store.",
    "from flytekit.core.map_task import map_task",
    "Secrets are mounted as environment variables.",
    "Configure the Kubernetes k8sPod spec for the task.",
]


def test_identifiers_give_parts_and_joined_form() -> None:
    tokens = tokenize("with_overrides")
    assert "with_overrides" in tokens and "overrid" in tokens  # "with" is a stopword
    assert set(tokenize("FlyteFile")) >= {"flyte", "file", "flytefil"}
    assert set(tokenize("map_task")) >= {"map", "task", "map_task"}
    # dotted path: every part and the whole path
    assert set(tokenize("flytekit.core.base_task")) >= {"flytekit", "core", "base", "task", "flytekit.core.base_task"}
    assert set(tokenize("HTTPServer k8sPod S3Path")) >= {"http", "server", "k8s", "pod", "s3", "path"}


def test_prose_and_identifier_forms_meet() -> None:
    assert set(tokenize("with overrides")) <= set(tokenize("with_overrides"))
    assert set(tokenize("flyte file")) <= set(tokenize("FlyteFile"))
    assert tokenize("Tasks") == tokenize("task")  # stemmed, lowercased


def test_question_words_are_stopwords() -> None:
    assert tokenize("How do I use it? What is the way to get this, why does it") == []
    assert tokenize("how can I cache my task") == ["cach", "task"]
    from bm25s.stopwords import STOPWORDS_EN

    assert set(STOPWORDS_EN) <= STOPWORDS and len(STOPWORDS) > 3 * len(STOPWORDS_EN)


def test_search_finds_identifiers_from_prose() -> None:
    index = KeywordIndex.build(CORPUS)
    ids, scores = index.search("how do I use with overrides?", 3)
    assert ids[0] == 0 and scores[0] > 0
    assert index.search("flyte file", 1)[0][0] == 1
    assert index.search("map_task", 1)[0][0] == 2
    assert index.search("how do I do it?", 3)[0].size == 0  # only stopwords: no hits
    assert index.search("zzzunknownword", 3)[0].size == 0
    assert index.scores("secrets").shape == (len(CORPUS),)


def test_save_load_round_trip_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = KeywordIndex.build(CORPUS)
    files = index.to_files()
    assert TOKENIZER_FILE in files and any(n.endswith(".npy") for n in files)
    for name, data in files.items():
        assert not data.startswith(b"\x80"), f"{name} looks like a pickle"
        (tmp_path / name).write_bytes(data)

    real_load = np.load

    def no_pickle_load(*args, **kwargs):
        assert not kwargs.get("allow_pickle", False), "np.load called with allow_pickle=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", no_pickle_load)
    loaded = KeywordIndex.load(tmp_path)
    assert loaded.num_docs == len(CORPUS)
    for q in ("with_overrides", "flyte file", "secrets kubernetes"):
        np.testing.assert_allclose(loaded.scores(q), index.scores(q))


def test_tokenizer_version_mismatch_is_refused(tmp_path: Path) -> None:
    for name, data in KeywordIndex.build(CORPUS).to_files().items():
        (tmp_path / name).write_bytes(data)
    info = json.loads((tmp_path / TOKENIZER_FILE).read_text())
    info["version"] = 999
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="tokenizer version 999"):
        KeywordIndex.load(tmp_path)


def test_empty_and_stopword_only_corpus() -> None:
    index = KeywordIndex.build(["how do I", "what is it"])
    assert index.num_docs == 2
    assert index.search("anything", 5)[0].size == 0


def test_tokenize_many_shares_one_string_per_distinct_token() -> None:
    from flytegpt.ingest.keyword import tokenize, tokenize_many

    texts = ["Caching tasks with cache_version", "cache_version and caching again"]
    lists = tokenize_many(texts)
    assert lists == [tokenize(t) for t in texts]
    first = {t: t for t in lists[0]}
    assert all(t is first[t] for t in lists[1] if t in first)  # one object, not one per occurrence


def test_words_are_the_unstemmed_topic_words_the_offline_answerer_matches() -> None:
    from flytegpt.ingest.keyword import words

    assert words("How do I use with_overrides on a FlyteFile?") == ["overrides", "flyte", "file"]
    assert words("Is there a way to get the flytekit.core.task module?") == ["flytekit", "core", "task", "module"]
    assert not set(words("how can I do it, is there anything?")) & STOPWORDS


def test_a_question_names_an_exact_term_when_it_holds_an_identifier_or_a_number() -> None:
    from flytegpt.ingest.keyword import names_exact_term

    for question in ("where do I set FLYTE_AWS_ENDPOINT", "How do I use map_task?", "what is flytekit.core.task",
                     "what does exit code 137 mean", "Received message larger than max (4194304)",
                     "pyflyte run --resource-requests", "what does --copy all do"):
        assert names_exact_term(question), question
    # product names and abbreviations are words, not exact terms
    for question in ("How do I query Google BigQuery?", "How do I wrap my tasks, e.g. to log?", "what is flytekit?",
                     "How do I use FlyteFile", "How do I get 1 GPU", "a built-in type -- or not?",
                     "multi-node training"):
        assert not names_exact_term(question), question


def _token_files(store: Path) -> list[Path]:
    from flytegpt.ingest.keyword import TOKENS_FOLDER

    return sorted((store / TOKENS_FOLDER).glob("*.tsv.gz"))


def test_a_rebuild_tokenises_only_new_texts_and_builds_the_same_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flytegpt.ingest import keyword

    store = str(tmp_path / "store")
    plain = KeywordIndex.build(CORPUS).to_files()
    assert KeywordIndex.build(CORPUS, store=store).to_files() == plain
    [cache] = _token_files(tmp_path / "store")
    written = (cache.stat().st_ino, cache.stat().st_mtime_ns)
    assert KeywordIndex.build(CORPUS, store=store).to_files() == plain
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == written  # the same texts: the file is not written again

    tokenized: list[str] = []
    real = keyword.tokenize
    monkeypatch.setattr(keyword, "tokenize", lambda text: tokenized.append(text) or real(text))
    changed = CORPUS[1:] + ["A new page about FlyteDirectory uploads."]
    assert KeywordIndex.build(changed, store=store).to_files() == KeywordIndex.build(changed).to_files()
    assert tokenized[0] == changed[-1]  # the build with the store tokenised the new text only
    assert len(tokenized) == 1 + len(changed)
    # the cache now holds this build's texts only: the dropped text is tokenised again
    tokenized.clear()
    KeywordIndex.build(CORPUS[:1], store=store)
    assert tokenized == CORPUS[:1]
    # a text repeated in several chunks is one entry, and every chunk gets its tokens
    repeated = CORPUS + CORPUS[:2]
    monkeypatch.setattr(keyword, "tokenize", real)
    assert KeywordIndex.build(repeated, store=store).to_files() == KeywordIndex.build(repeated).to_files()
    import gzip

    assert len(gzip.decompress(_token_files(tmp_path / "store")[0].read_bytes()).splitlines()) == len(CORPUS)


def test_a_damaged_token_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    KeywordIndex.build(CORPUS, store=str(store))
    [path] = _token_files(store)
    path.write_bytes(b"not gzip at all")
    assert KeywordIndex.build(CORPUS, store=str(store)).to_files() == KeywordIndex.build(CORPUS).to_files()
    assert "unreadable" in caplog.text
    import gzip

    assert len(gzip.decompress(path.read_bytes()).splitlines()) == len(CORPUS)


def test_new_tokenizer_code_starts_a_new_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flytegpt.ingest import code_version

    store = tmp_path / "store"
    KeywordIndex.build(CORPUS, store=str(store))
    [first] = _token_files(store)
    monkeypatch.setattr(code_version, "code_version", lambda modules, **_: "feedfacefeedface")
    KeywordIndex.build(CORPUS, store=str(store))
    # the newest other version's file is kept (an older release ingesting into the same store)
    assert sorted(p.name for p in _token_files(store)) == sorted([first.name, "feedfacefeedface.tsv.gz"])
    os.utime(first, (1, 1))
    monkeypatch.setattr(code_version, "code_version", lambda modules, **_: "0123456789abcdef")
    KeywordIndex.build(CORPUS, store=str(store))
    assert sorted(p.name for p in _token_files(store)) == ["0123456789abcdef.tsv.gz", "feedfacefeedface.tsv.gz"]


def test_long_identifier_runs_are_tokenised_without_growing_the_cache() -> None:
    """A running bot tokenises every question: a pasted 4,000-character dotted run must not stay
    in memory for good (it did: ~70 KB an entry, 200,000 entries allowed)."""
    from flytegpt.ingest import keyword

    keyword.tokenize("why does fail")  # the short words are cached, as every corpus word is
    before = keyword._expand_cached.cache_info().currsize
    for n in range(1000):
        run = ".".join(f"part{n}x{i}" for i in range(400))[:4000]
        tokens = keyword.tokenize(f"why does {run} fail")
        assert f"part{n}x1" in tokens and run.lower() in tokens  # its parts and its whole, as before
    assert keyword._expand_cached.cache_info().currsize == before
    assert keyword.tokenize("with_overrides") == keyword.tokenize("with_overrides")  # short runs still cached
    assert keyword._expand_cached.cache_info().currsize >= 1


def test_distinct_runs_sent_on_purpose_hold_a_bounded_amount_of_memory() -> None:
    """Questions made of ever new 64-character runs (pasted logs, or on purpose) fill the cache;
    what it holds must stay tens of MB, not grow with the number of questions (unbounded, it
    grew by 176 MB at 200,000 entries)."""
    import tracemalloc

    from flytegpt.ingest import keyword

    keyword._expand_cached.cache_clear()
    tracemalloc.start()
    try:
        for n in range(3 * keyword.EXPAND_CACHE_ENTRIES // 2):
            keyword.tokenize(f"{n:08d}_" + "ab_cd." * 9)  # 63 characters, new every time
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        keyword._expand_cached.cache_clear()
    assert keyword._expand_cached.cache_info().currsize <= keyword.EXPAND_CACHE_ENTRIES
    assert held < 40_000_000, f"{held / 1e6:.0f} MB held"
