"""A refused index version is tried again, LATEST that differs from what is
served or that disappeared is shown in the metrics and /readyz, and logged once."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from flytegpt.bot.index_holder import IndexHolder
from flytegpt.bot.metrics import Metrics
from flytegpt.bot.reload import RETRY_FIRST_POLLS, Reloader

pytestmark = pytest.mark.timeout(120)

INTERVAL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(reload_config):
    return reload_config()


@pytest.fixture
def bot(config, embedder):
    """A Reloader serving the store's version (v1), with metrics and a fake clock."""
    holder, metrics, clock = IndexHolder(), Metrics(), Clock()
    reloader = Reloader(config, holder, metrics=metrics, embedder=embedder, interval_s=INTERVAL, clock=clock)
    assert reloader.check_once()
    return reloader, holder, metrics, clock


def unpublished_variant(store: str, base: str) -> str:
    """A new complete version (`base` minus a chunk), written but not published."""
    from flytegpt.ingest.artifact import open_version, write_version

    current = open_version(store, base)
    n = len(current.chunks) - 1
    time.sleep(1.0)  # version ids carry the time in seconds
    return write_version(store, current.chunks[:n], current.dense.reconstruct_n(0, n), current.model)


def metric(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name)


def refused_logs(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flytegpt.bot.reload" and r.levelno >= logging.ERROR]


def test_a_version_whose_files_arrive_after_latest_is_loaded_when_they_do(bot, config, caplog):
    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    v1 = holder.version
    assert metric(metrics, "flytegpt_index_latest_served") == 1
    assert metric(metrics, "flytegpt_store_latest_ok") == 1
    assert reloader.status_note() == ""
    v2 = unpublished_variant(str(store), v1)
    held = store.parent / "held"
    shutil.move(store / v2, held)
    (store / "LATEST").write_text(v2 + "\n")  # a copy or sync that lands LATEST first

    caplog.set_level(logging.DEBUG, logger="flytegpt.bot.reload")
    assert not reloader.check_once() and holder.version == v1
    assert "manifest.json not found" in reloader.refused[v2]
    assert metric(metrics, "flytegpt_index_latest_served") == 0
    assert metrics.registry.get_sample_value("flytegpt_index_latest_info", {"version": v2}) == 1
    assert metric(metrics, "flytegpt_store_latest_ok") == 1  # LATEST is readable: the version is what is wrong
    note = reloader.status_note()
    assert f"LATEST names {v2}, which is not served" in note and "manifest.json not found" in note
    for _ in range(3):  # nothing changed, the backoff has not elapsed: not tried again
        assert not reloader.check_once()
    assert metric(metrics, "flytegpt_index_reloads_refused_total") == 1
    assert len(refused_logs(caplog)) == 1

    shutil.move(held, store / v2)  # the files arrive; LATEST unchanged, no time passes
    assert reloader.check_once() and holder.version == v2
    assert v2 not in reloader.refused
    assert metric(metrics, "flytegpt_index_latest_served") == 1
    assert reloader.status_note() == ""


def test_a_checksum_failure_is_tried_again_after_a_growing_backoff(bot, config, caplog):
    from flytegpt.ingest.artifact import DENSE_FILE

    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    v1 = holder.version
    v2 = unpublished_variant(str(store), v1)
    dense = store / v2 / DENSE_FILE
    good = dense.read_bytes()
    dense.write_bytes(good[:-16] + bytes(16))  # a download cut short / a bad copy: manifest unchanged
    (store / "LATEST").write_text(v2 + "\n")

    caplog.set_level(logging.DEBUG, logger="flytegpt.bot.reload")
    assert not reloader.check_once() and "dense.faiss" in reloader.refused[v2]
    first = RETRY_FIRST_POLLS * INTERVAL
    clock.now += first - 1
    assert not reloader.check_once() and metric(metrics, "flytegpt_index_reloads_refused_total") == 1
    clock.now += 1  # the backoff elapsed: tried again, still broken, same reason: not logged again
    assert not reloader.check_once() and metric(metrics, "flytegpt_index_reloads_refused_total") == 2
    assert len(refused_logs(caplog)) == 1
    assert any("refused again" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    clock.now += first  # the second wait is twice as long
    assert not reloader.check_once() and metric(metrics, "flytegpt_index_reloads_refused_total") == 2

    dense.write_bytes(good)  # fixed in place, nothing the poll could see changed
    assert not reloader.check_once() and holder.version == v1
    clock.now += first
    assert reloader.check_once() and holder.version == v2
    assert metric(metrics, "flytegpt_index_latest_served") == 1


def test_the_backoff_is_capped(bot, config, caplog):
    from flytegpt.ingest.artifact import DENSE_FILE
    from flytegpt.bot.reload import RETRY_CAP_S, RETRY_MAX_UNCHANGED

    reloader, holder, metrics, clock = bot
    caplog.set_level(logging.INFO, logger="flytegpt.bot.reload")
    store = Path(config.index.store)
    v2 = unpublished_variant(str(store), holder.version)
    (store / v2 / DENSE_FILE).write_bytes(b"broken")
    (store / "LATEST").write_text(v2 + "\n")
    for _ in range(12):
        assert not reloader.check_once()
        clock.now += RETRY_CAP_S
    # tried at every cap interval, RETRY_MAX_UNCHANGED times in all: each try re-hashes (on S3
    # re-downloads) the version's files, and nothing said it changed
    assert metric(metrics, "flytegpt_index_reloads_refused_total") == RETRY_MAX_UNCHANGED
    assert f"refused {RETRY_MAX_UNCHANGED} times" in reloader.status_note()
    # the log says once that the tries stopped (it used to stop silently)
    stopped = [r for r in caplog.records if "no more tries" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].levelno == logging.WARNING
    (store / "LATEST").write_text(v2 + "\n\n")  # written again (flytegpt publish): tried at once
    assert not reloader.check_once()
    assert metric(metrics, "flytegpt_index_reloads_refused_total") == RETRY_MAX_UNCHANGED + 1


def test_publish_of_the_refused_latest_rewrites_it_and_the_bot_retries_at_once(bot, config):
    from click.testing import CliRunner

    from flytegpt.bot.cli import main
    from flytegpt.ingest.artifact import DENSE_FILE, read_latest
    from flytegpt.ingest.config import sample_config_path

    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    v1 = holder.version
    v2 = unpublished_variant(str(store), v1)
    dense = store / v2 / DENSE_FILE
    good = dense.read_bytes()
    dense.write_bytes(good[:-16] + bytes(16))
    (store / "LATEST").write_text(v2 + "\n")
    assert not reloader.check_once()
    dense.write_bytes(good)
    assert not reloader.check_once()  # backoff: not yet
    before = (store / "LATEST").stat()

    result = CliRunner().invoke(main, ["publish", v2, "--store", str(store),
                                       "--config", str(sample_config_path())])
    assert result.exit_code == 0, result.output
    assert "already served" not in result.output
    assert f"LATEST already names {v2}" in result.output and "re-published so running bots retry it" in result.output
    after = (store / "LATEST").stat()
    assert read_latest(str(store)) == v2 and (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)
    assert reloader.check_once() and holder.version == v2  # no clock advance: LATEST changed


def test_publish_of_a_damaged_latest_says_so(bot, config):
    from click.testing import CliRunner

    from flytegpt.bot.cli import main
    from flytegpt.ingest.artifact import DENSE_FILE
    from flytegpt.ingest.config import sample_config_path

    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    v1 = holder.version
    (store / v1 / DENSE_FILE).write_bytes(b"broken")
    result = CliRunner().invoke(main, ["publish", v1, "--store", str(store),
                                       "--config", str(sample_config_path())])
    assert result.exit_code == 1 and "not published" in result.output
    assert "already" not in result.output


def test_latest_gone_warns_once_keeps_serving_and_shows_in_metrics_and_readyz(bot, config, caplog):
    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    v1 = holder.version
    caplog.set_level(logging.DEBUG, logger="flytegpt.bot.reload")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "flytegpt.bot.reload" and r.levelno == logging.WARNING]

    latest = (store / "LATEST").read_bytes()
    (store / "LATEST").unlink()
    for _ in range(4):
        assert not reloader.check_once()
    assert holder.version == v1 and holder.ready
    [w] = warnings()
    assert "LATEST not found in" in w and str(store) in w and f"still serving {v1}" in w
    assert metric(metrics, "flytegpt_store_latest_ok") == 0
    assert metric(metrics, "flytegpt_index_latest_served") == 0
    assert "LATEST not found" in reloader.status_note()

    (store / "LATEST").write_bytes(latest)  # back: one info line, the gauges recover
    assert not reloader.check_once()
    assert metric(metrics, "flytegpt_store_latest_ok") == 1 and metric(metrics, "flytegpt_index_latest_served") == 1
    assert reloader.status_note() == "" and len(warnings()) == 1

    shutil.rmtree(store / v1)  # the served version deleted, LATEST still names it
    for _ in range(3):
        assert not reloader.check_once()
    assert len(warnings()) == 2 and f"version {v1} named by LATEST is gone" in warnings()[-1]
    assert metric(metrics, "flytegpt_store_latest_ok") == 0
    assert "is gone" in reloader.status_note()

    shutil.rmtree(store)  # the whole store
    for _ in range(3):
        assert not reloader.check_once()
    assert len(warnings()) == 3 and "LATEST not found" in warnings()[-1]
    assert holder.version == v1 and metric(metrics, "flytegpt_store_latest_ok") == 0


def test_a_store_that_cannot_be_asked_about_the_manifest_says_nothing_is_gone(bot, config, caplog, monkeypatch):
    """A flaky remote store: a look-up that fails (not "no such file") neither warns that the
    served version is gone nor makes a refused version count as changed."""
    from fsspec.implementations.local import LocalFileSystem

    from flytegpt.ingest.artifact import DENSE_FILE, MANIFEST

    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    v1 = holder.version
    caplog.set_level(logging.DEBUG, logger="flytegpt.bot.reload")
    real_info = LocalFileSystem.info

    def flaky_info(self, path, **kwargs):
        if str(path).endswith(MANIFEST):
            raise ConnectionError("Could not connect to the endpoint URL (stand-in)")
        return real_info(self, path, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "info", flaky_info)
    for _ in range(3):
        assert not reloader.check_once()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert metric(metrics, "flytegpt_store_latest_ok") == 1 and reloader.status_note() == ""

    monkeypatch.undo()  # a damaged v2 is refused; flaky look-ups afterwards are not "a change"
    v2 = unpublished_variant(str(store), v1)
    (store / v2 / DENSE_FILE).write_bytes(b"broken")
    (store / "LATEST").write_text(v2 + "\n")
    assert not reloader.check_once() and reloader.refused.keys() == {v2}
    tries = len([r for r in caplog.records if "trying a refused index version again" in r.getMessage()])
    monkeypatch.setattr(LocalFileSystem, "info", flaky_info)
    for _ in range(3):
        assert not reloader.check_once()
    assert len([r for r in caplog.records if "trying a refused index version again" in r.getMessage()]) == tries
    monkeypatch.undo()
    clock.now += RETRY_FIRST_POLLS * INTERVAL + 1  # the backoff still brings it back
    assert not reloader.check_once() and holder.version == v1
    retried = [r for r in caplog.records if "trying a refused index version again" in r.getMessage()]
    assert len(retried) == tries + 1 and retried[-1].why == "backoff elapsed"


def test_an_unreadable_latest_is_logged_once_per_reason(bot, config, caplog):
    reloader, holder, metrics, clock = bot
    store = Path(config.index.store)
    caplog.set_level(logging.DEBUG, logger="flytegpt.bot.reload")
    (store / "LATEST").write_text("garbage!\n")
    for _ in range(4):
        assert not reloader.check_once()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "flytegpt.bot.reload"]
    assert len(warned) == 1 and "reading LATEST" in warned[0]
    assert metric(metrics, "flytegpt_store_latest_ok") == 0
    assert "reading LATEST" in reloader.status_note()


def test_a_store_outage_while_loading_logs_its_traceback_once(bot, config, caplog, monkeypatch):
    """S3 unreachable while a new version loads: retried every poll, but one traceback, not one a poll."""
    import flytegpt.ingest.artifact as artifact
    from flytegpt.ingest.artifact import publish

    reloader, holder, metrics, clock = bot
    v1 = holder.version
    v2 = unpublished_variant(config.index.store, v1)
    publish(config.index.store, v2)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Could not connect to the endpoint URL (stand-in)")

    monkeypatch.setattr(artifact, "open_version", unreachable)
    caplog.set_level(logging.INFO, logger="flytegpt.bot.reload")
    for _ in range(3):
        assert not reloader.check_once() and holder.version == v1
    failed = [r for r in caplog.records if "loading index version failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.ERROR, logging.WARNING, logging.WARNING]  # the traceback once
    monkeypatch.undo()
    assert reloader.check_once() and holder.version == v2  # the store is back
