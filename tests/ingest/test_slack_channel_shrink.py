"""End to end: one renamed channel among several of a `slack_api` source, a loss under
`[index] max_shrink`, used to make `flytegpt ingest` publish a smaller index with exit 0. Now
the publish is refused, naming the channel, until `flytegpt publish VERSION` says it is meant.

The real CLI, the real embedding model, real slack_sdk against the Slack emulator on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.slack_emulator import SlackEmulator

from flytegpt.bot.cli import main
from flytegpt.ingest.artifact import list_versions, read_latest, read_manifest

T0 = 1_700_000_000
CHANNELS = {"C0SUP": ("flyte-support", 30), "C0DEP": ("deploy", 20), "C0BIG": ("community", 100)}


@pytest.fixture()
def emu(monkeypatch: pytest.MonkeyPatch):
    with SlackEmulator() as emu:
        emu.add_user("U1", "ana")
        for n, (channel_id, (name, threads)) in enumerate(CHANNELS.items()):
            emu.add_channel(channel_id, name)
            for i in range(threads):
                emu.seed_message(channel_id, f"In #{name}, how do I set up case {i} of the {name} workflow?",
                                 user="U1", ts=f"{T0 + n * 10_000 + i * 60}.000100")
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        yield emu


def ingest(config: Path, store: Path):
    return CliRunner().invoke(main, ["ingest", "--config", str(config), "--store", str(store), "--quiet"],
                              env={"FLYTEGPT_CONFIG": None, "OPENAI_API_KEY": None, "COLUMNS": "400"})


def test_a_renamed_channel_is_not_published_away(emu: SlackEmulator, tmp_path: Path) -> None:
    config, store = tmp_path / "flytegpt.toml", tmp_path / "store"
    config.write_text('[[sources]]\nname = "live"\nkind = "slack_api"\nworkspace_url = "https://flyte-org.slack.com"\n'
                      f'channels = {json.dumps([name for name, _ in CHANNELS.values()])}\n')
    first = ingest(config, store)
    assert first.exit_code == 0, first.output
    good = read_latest(str(store))
    assert read_manifest(str(store), good)["channels"]["live"]["C0DEP"] == {"name": "deploy", "chunks": 20}

    emu.channels["C0DEP"].name = "deploy-help"  # renamed in Slack; the config still says "deploy"
    second = ingest(config, store)
    assert second.exit_code == 1, second.output
    error = " ".join(line for line in second.stderr.splitlines() if line.startswith("Error:"))
    assert "live: channel #deploy (C0DEP) gave no chunks (it had 20; renamed, archived, or the bot removed" in error
    smaller = list_versions(str(store))[-1]
    assert f"flytegpt publish {smaller}" in error
    assert read_latest(str(store)) == good  # the bots keep every channel's threads

    forced = CliRunner().invoke(main, ["publish", smaller, "--config", str(config), "--store", str(store)])
    assert forced.exit_code == 0, forced.output
    assert read_latest(str(store)) == smaller


def test_a_channel_taken_out_of_the_config_is_published(emu: SlackEmulator, tmp_path: Path) -> None:
    config, store = tmp_path / "flytegpt.toml", tmp_path / "store"
    head = '[[sources]]\nname = "live"\nkind = "slack_api"\nworkspace_url = "https://flyte-org.slack.com"\n'
    config.write_text(head + f'channels = {json.dumps([name for name, _ in CHANNELS.values()])}\n')
    assert ingest(config, store).exit_code == 0
    good = read_latest(str(store))

    config.write_text(head + 'channels = ["flyte-support", "community"]\n')  # #deploy is no longer wanted
    second = ingest(config, store)
    assert second.exit_code == 0, second.output
    latest = read_latest(str(store))
    assert latest != good and "C0DEP" not in read_manifest(str(store), latest)["channels"]["live"]
    assert read_manifest(str(store), latest)["configured_channels"] == {"live": ["flyte-support", "community"]}
