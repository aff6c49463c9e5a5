"""Hot reload: new index versions are picked up while the bot answers; bad ones are refused."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
import weakref
from datetime import datetime
from pathlib import Path

import pytest
from support.slack_harness import ANSWER, CACHE_Q, BotHarness

from flytegpt.bot.index_holder import IndexHolder
from flytegpt.bot.metrics import Metrics
from flytegpt.bot.reload import Reloader

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(reload_config):
    return reload_config(workers=4)


def publish_variant(store: str, base: str, drop: int = 1) -> str:
    """Publish a new, different version (`base`'s chunks minus `drop`), as a re-ingest would."""
    from flytegpt.ingest.artifact import open_version, publish, write_version

    current = open_version(store, base)
    n = len(current.chunks) - drop
    vectors = current.dense.reconstruct_n(0, n)
    time.sleep(1.0)  # version ids carry the time in seconds
    version = write_version(store, current.chunks[:n], vectors, current.model)
    publish(store, version)
    return version


def publish_corrupt(store: str) -> str:
    """A version whose FAISS file does not match its manifest checksum, made LATEST by force
    (as a broken upload or a bad disk would leave it; `publish` itself refuses such versions)."""
    from flytegpt.ingest.artifact import DENSE_FILE, read_latest

    good = read_latest(store)
    bad = "20990101T000000Z-0badc0de"
    shutil.copytree(Path(store) / good, Path(store) / bad)
    manifest = json.loads((Path(store) / bad / "manifest.json").read_text())
    manifest["version"] = bad
    (Path(store) / bad / "manifest.json").write_text(json.dumps(manifest))
    dense = Path(store) / bad / DENSE_FILE
    data = bytearray(dense.read_bytes())
    data[-16:] = bytes(16)
    dense.write_bytes(bytes(data))
    (Path(store) / "LATEST").write_text(bad + "\n")
    return bad


def test_reloader_swaps_and_refuses(config, embedder):
    holder, metrics = IndexHolder(), Metrics()
    reloader = Reloader(config, holder, metrics=metrics, embedder=embedder)
    assert reloader.check_once() and holder.ready
    v1 = holder.version
    assert not reloader.check_once()  # same version: nothing to do

    bad = publish_corrupt(config.index.store)
    assert not reloader.check_once()
    assert holder.version == v1  # the old one keeps serving
    assert metrics.reloads_refused._value.get() == 1
    assert bad in reloader.refused and "dense.faiss" in reloader.refused[bad]
    assert not reloader.check_once() and metrics.reloads_refused._value.get() == 1  # not retried each poll

    v2 = publish_variant(config.index.store, v1)
    assert reloader.check_once() and holder.version == v2 != v1
    assert metrics.reloads._value.get() == 2
    assert b'flytegpt_index_info{version="%s"} 1.0' % v2.encode() in metrics.render()


def test_a_rollback_with_flytegpt_publish_is_served_at_the_next_check(config, embedder):
    from click.testing import CliRunner

    from flytegpt.bot.cli import main
    from flytegpt.ingest.config import sample_config_path

    holder = IndexHolder()
    reloader = Reloader(config, holder, embedder=embedder)
    assert reloader.check_once()
    v1 = holder.version
    v2 = publish_variant(config.index.store, v1)
    assert reloader.check_once() and holder.version == v2
    n2 = len(holder.get().chunks)

    result = CliRunner().invoke(main, ["publish", v1, "--store", config.index.store,
                                       "--config", str(sample_config_path())])
    assert result.exit_code == 0, result.output
    assert reloader.check_once() and holder.version == v1  # an older version is swapped in like a new one
    assert len(holder.get().chunks) == n2 + 1


def test_new_version_published_while_questions_are_in_flight(config, embedder):
    holder, metrics = IndexHolder(), Metrics()
    reloader = Reloader(config, holder, metrics=metrics, embedder=embedder, interval_s=0.2)
    assert reloader.check_once()
    v1 = holder.version
    old_ref = weakref.ref(holder.get())
    started = threading.Semaphore(0)

    def slow_reply(body: dict) -> str:
        started.release()
        time.sleep(0.4)
        return ANSWER

    with BotHarness(config, holder) as h:
        h.llm.reply = slow_reply
        reloader.start(run_now=False)
        try:
            sent = [h.emu.mention(f"{CACHE_Q} ({i})", user=f"U0USER{i}") for i in range(8)]
            for d in sent:
                assert h.emu.wait_ack(d.envelope_id).latency < 3.0
            assert started.acquire(timeout=10) and started.acquire(timeout=10)  # answers under way
            v2 = publish_variant(config.index.store, v1)
            for d in sent:
                [answer] = h.wait_answers(thread_ts=d.ts, timeout=30)
                assert "cache_version" in answer["text"], answer["text"]  # no failed answer
            h.emu.wait_for(lambda: holder.version == v2, timeout=10)
            after = h.emu.mention(CACHE_Q, user="U0LATE")
            [late] = h.wait_answers(thread_ts=after.ts)
            h.idle()
        finally:
            reloader.stop()
        versions = [h.bot.feedback.get_answer(_answer_id(m))["index_version"] for m in h.answers()]
        by_ts = {m["thread_ts"]: v for m, v in zip(h.answers(), versions)}
        assert by_ts[after.ts] == v2  # the new version is served afterwards
        assert v1 in [by_ts[d.ts] for d in sent]  # the ones in flight finished on the old index
        assert set(versions) <= {v1, v2}
        failures = sum(s.value for m in h.bot.metrics.failures.collect() for s in m.samples
                       if s.name.endswith("_total"))
        assert failures == 0
        assert h.emu.violations == []
    gc.collect()
    assert old_ref() is None  # the old index was released


def _answer_id(message: dict) -> str:
    actions = [b for b in message["blocks"] if b["type"] == "actions"][0]
    return actions["elements"][0]["value"]


def test_swapping_in_a_version_drops_other_cached_copies(config, embedder, tmp_path):
    """A bot on a remote store keeps local copies in [index] cache_dir: after a swap only the
    served version and the previous one remain, so nightly versions do not fill its volume."""
    cache = tmp_path / "index-cache"
    stale = ["20240101T000000Z-0000000a", "20240102T000000Z-0000000b"]
    for name in (*stale, "not-a-version"):
        (cache / name).mkdir(parents=True)
    config = config.model_copy(update={"index": config.index.model_copy(update={"cache_dir": str(cache)})})
    holder = IndexHolder()
    reloader = Reloader(config, holder, embedder=embedder)
    assert reloader.check_once()
    v1 = holder.version
    (cache / v1).mkdir()
    v2 = publish_variant(config.index.store, v1)
    (cache / v2).mkdir()
    assert reloader.check_once() and holder.version == v2
    assert sorted(p.name for p in cache.iterdir()) == sorted([v1, v2, "not-a-version"])


def test_the_query_model_is_loaded_before_a_version_serves_not_at_the_first_question(config):
    """Loading the model (and precision "auto" measuring) took 45 s of a first answer on a slow CPU."""
    from flytegpt.ingest.config import EmbeddingsConfig
    from flytegpt.ingest.embedding import Embedder

    holder = IndexHolder()
    cfg = config.model_copy(update={"embeddings": EmbeddingsConfig(device="cpu", backend="torch", precision="fp32")})
    reloader = Reloader(cfg, holder)
    assert reloader.check_once() and holder.ready
    assert reloader.embedder().loaded

    class Unusable(Embedder):
        """A model that loads but cannot embed (a broken export, a runtime the CPU refuses)."""

        def embed_query(self, text):
            raise RuntimeError("illegal instruction in the model runtime")

    v1 = holder.version
    broken = Reloader(cfg, IndexHolder(), embedder=Unusable.from_config(cfg.embeddings))
    assert not broken.check_once()
    assert "cannot be loaded" in broken.refused[v1] and "illegal instruction" in broken.refused[v1]


def test_the_index_age_and_the_last_ingest_are_metrics(config, embedder, monkeypatch):
    """A quiet night writes no new version, so only <store>/last-run.json tells a
    quiet week from a week of failed nightly runs; the served index's sources have an age too."""
    from flytegpt.ingest.artifact import LAST_RUN, content_time, open_version, record_last_run

    holder, metrics = IndexHolder(), Metrics()
    reloader = Reloader(config, holder, metrics=metrics, embedder=embedder)
    store = Path(config.index.store)
    (store / LAST_RUN).unlink(missing_ok=True)
    assert reloader.check_once()
    read_at = content_time(open_version(str(store)).manifest)
    assert metrics.index_sources_read._value.get() == read_at.timestamp() > 0
    assert metrics.store_last_run._value.get() == 0  # none recorded
    record_last_run(str(store), holder.version, read_at.isoformat(), changed=False)  # an unchanged night
    reloader.check_once()
    finished = json.loads((store / LAST_RUN).read_text())["finished_at"]
    assert metrics.store_last_run._value.get() == datetime.fromisoformat(finished).timestamp()
    assert b"flytegpt_store_last_run_timestamp_seconds" in metrics.render()
    import flytegpt.ingest.artifact as artifact

    def slow_down(fs, path):  # the store's hiccup: the gauge keeps what it knew (a 0 would page someone)
        raise OSError("503 Slow Down")

    with monkeypatch.context() as m:
        m.setattr(artifact, "read_bytes", slow_down)
        reloader._read_last_run()
    assert metrics.store_last_run._value.get() == datetime.fromisoformat(finished).timestamp()
    (store / LAST_RUN).write_text("{not json")  # damaged: unknown, not an error
    reloader.check_once()
    assert metrics.store_last_run._value.get() == 0 and holder.version
