"""`[bot] allowed_channels` by name: a misspelt name, or a name lookup Slack refused, left the allow list empty, and an empty
allow list meant "every channel". Now a name that does not resolve, or a lookup that fails, stops
`flytegpt serve` with one `Error:` line; and the shipped manifest's scopes resolve public and
private channel names.

Real pieces: `flytegpt serve` (its click command), slack-bolt, slack_sdk's WebClient with the
project's retry policy. Stand-in: the Slack emulator, which answers `missing_scope` for a channel
type whose read scope the app lacks, as Slack does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.paths import ROOT
from support.slack_emulator import SlackEmulator
from support.slack_harness import CACHE_Q

from flytegpt.bot import messages
from flytegpt.ingest.config import sample_config_path

pytestmark = pytest.mark.timeout(120)

MANIFEST_SCOPES = set(json.loads((ROOT / "manifests" / "slack-app-manifest.json").read_text())
                      ["oauth_config"]["scopes"]["bot"])
IDS_HINT = "or give channel ids such as C0123ABCD instead of names (they need no lookup)"


def _workspace(emu: SlackEmulator) -> None:
    """A workspace with more channels than fit on one conversations.list page."""
    emu.add_channel("C0SUPPORT", "flyte-support")
    emu.add_channel("G0INTERNAL", "flyte-internal", is_private=True)
    for i in range(5):
        emu.add_channel(f"C0FILLER{i}", f"random-{i}")
    emu.max_page = 2


def _serve(tmp_path: Path, emu: SlackEmulator, allowed: list[str]):
    """`flytegpt serve` with `[bot] allowed_channels = allowed`, against the emulator."""
    from flytegpt.bot.cli_serve import serve_cmd

    config_file = tmp_path / "flytegpt.toml"
    config_file.write_text(f'[[sources]]\nname = "docs"\nkind = "docs"\npath = '
                           f'{json.dumps(str(sample_config_path().parent / "docs"))}\n\n'
                           f'[bot]\nfeedback_db = {json.dumps(str(tmp_path / "feedback.sqlite3"))}\n'
                           f'allowed_channels = {json.dumps(allowed)}\n', encoding="utf-8")
    env = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1", "SLACK_API_URL": emu.api_url,
           "OPENAI_API_KEY": ""}
    return CliRunner().invoke(serve_cmd, ["--config", str(config_file), "--store", str(tmp_path / "store"),
                                          "--port", "0"], env=env)


def _refused_at_start(result, tmp_path: Path, emu: SlackEmulator) -> str:
    """The one line `serve` printed; it exited 1, never connected, and wrote nothing."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    # one Error line, nothing before it (slack_sdk's lines for each retry are shown with -vv only)
    assert lines == lines[-1:] and lines[-1].startswith("Error: "), result.output
    assert emu.calls_to("apps.connections.open") == []  # never connected: answers nowhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flytegpt.toml"]  # no feedback or seen-events file
    return lines[-1]


def test_a_misspelt_channel_name_stops_serve_with_one_error_line(tmp_path):
    """Before, `allowed_channels = ["flyte-suport"]` started a bot that answered in every
    channel, and logged nothing."""
    with SlackEmulator() as emu:
        _workspace(emu)
        result = _serve(tmp_path, emu, ["C0ALLOWED1", "flyte-suport", "#flyte-support"])
    line = _refused_at_start(result, tmp_path, emu)
    assert line == ("Error: [bot] allowed_channels: no channel named flyte-suport in this Slack workspace "
                    "(a typo? a private channel is found only when the bot is a member of it and the app has "
                    f"the groups:read scope); fix the name, {IDS_HINT}")
    # looked for among public channels, page after page, then among private ones
    assert [c.args.get("types") for c in emu.calls_to("conversations.list")] == ["public_channel"] * 4 + [
        "private_channel"]


@pytest.mark.parametrize(("case", "expected"), [
    ("no channels:read", "Error: [bot] allowed_channels: cannot look up the channel name(s) flyte-support: "
                         "Slack's conversations.list (types=public_channel) answered missing_scope (needed: "
                         "channels:read); add the bot token scope channels:read to the Slack app (OAuth & "
                         "Permissions: channels:read finds public channels, groups:read private ones) and "
                         f"reinstall it, {IDS_HINT}"),
    ("no groups:read", "Error: [bot] allowed_channels: cannot look up the channel name(s) flyte-internal: "
                       "Slack's conversations.list (types=private_channel) answered missing_scope (needed: "
                       "groups:read); add the bot token scope groups:read to the Slack app (OAuth & "
                       "Permissions: channels:read finds public channels, groups:read private ones) and "
                       f"reinstall it, {IDS_HINT}"),
    ("ratelimited", "Error: [bot] allowed_channels: cannot look up the channel name(s) flyte-support: "
                    "Slack's conversations.list (types=public_channel) answered ratelimited after 3 retries; "
                    f"start again in a minute, {IDS_HINT}"),
    ("connection dropped", "Error: [bot] allowed_channels: cannot look up the channel name(s) flyte-support: "
                           "cannot reach Slack's Web API at {api_url}: Remote end closed connection without "
                           f"response; start again when it is reachable, {IDS_HINT}"),
    ("internal_error", "Error: [bot] allowed_channels: cannot look up the channel name(s) flyte-support: "
                       "Slack's conversations.list (types=public_channel) answered internal_error after 3 "
                       f"retries; start again later, {IDS_HINT}"),
])
def test_a_failed_channel_name_lookup_stops_serve_with_one_error_line(tmp_path, case, expected):
    """Before, conversations.list answering missing_scope (the shipped manifest had no
    groups:read, the lookup asked for private channels too) started a bot that answered in every
    channel, with one warning in its log."""
    with SlackEmulator() as emu:
        _workspace(emu)
        allowed = ["C0ALLOWED1", "flyte-support"]
        if case == "no channels:read":
            emu.scopes = MANIFEST_SCOPES - {"channels:read"}
        elif case == "no groups:read":  # an app installed from the manifest before groups:read was added
            emu.scopes = MANIFEST_SCOPES - {"groups:read"}
            allowed = ["C0ALLOWED1", "flyte-support", "flyte-internal"]
        elif case == "ratelimited":  # still 429 after the client's 3 retries
            emu.script_error("conversations.list", status=429, error="ratelimited", retry_after=0, times=4)
        elif case == "connection dropped":  # auth.test went through; the network fails after it
            emu.script_error("conversations.list", status=0, times=4)
        else:  # Slack's own trouble, still there after the client's retries
            emu.script_error("conversations.list", status=500, error="internal_error", retry_after=None, times=4)
        result = _serve(tmp_path, emu, allowed)
        expected = expected.replace("{api_url}", emu.api_url)
    assert _refused_at_start(result, tmp_path, emu) == expected


def _manifest_workspace(scopes: set[str]):
    def setup(emu: SlackEmulator) -> None:
        _workspace(emu)
        emu.scopes = scopes

    return setup


def _refused_in_general(harness) -> dict:
    """A mention in #general (not allowed): told where to ask, not answered."""
    emu = harness.emu
    d = emu.mention(CACHE_Q)  # in #general
    emu.wait_for(lambda: emu.ephemerals)
    harness.idle()
    assert harness.answers(channel="C0GENERAL") == [] and emu.calls_to("chat.startStream") == []
    assert not [r for r in emu.reactions if r["timestamp"] == d.ts]
    [notice] = emu.ephemerals
    return notice


def test_with_the_shipped_manifests_scopes_public_and_private_names_resolve(make_harness):
    """With the manifest's scopes, names of public and private channels resolve (over several
    pages) and the bot answers there and nowhere else."""
    harness = make_harness(bot={"allowed_channels": ["#flyte-support", "Flyte-Internal"]},
                           setup=_manifest_workspace(MANIFEST_SCOPES))
    notice = _refused_in_general(harness)
    # the notice goes to anyone, so it names the public channel only
    assert notice["text"] == messages.only_in_channels(["C0SUPPORT"])
    assert "G0INTERNAL" not in notice["text"] and "internal" not in notice["text"]
    d = harness.emu.mention(CACHE_Q, channel="G0INTERNAL")
    harness.wait_answers(channel="G0INTERNAL", thread_ts=d.ts)
    assert harness.bot.router.allowed == {"C0SUPPORT", "G0INTERNAL"}


def test_an_app_without_groups_read_still_resolves_public_names(make_harness):
    """An app installed from the manifest before groups:read was added: public channel names are
    looked up among public channels only, which channels:read covers."""
    harness = make_harness(bot={"allowed_channels": ["flyte-support", "C0ALLOWED1"]},
                           setup=_manifest_workspace(MANIFEST_SCOPES - {"groups:read"}))
    notice = _refused_in_general(harness)
    # an id is taken as it is, so nothing says it is public: only the name looked up is linked
    assert notice["text"] == messages.only_in_channels(["C0SUPPORT"])
    assert {c.args.get("types") for c in harness.emu.calls_to("conversations.list")} == {"public_channel"}
    d = harness.emu.mention(CACHE_Q, channel="C0SUPPORT")
    harness.wait_answers(channel="C0SUPPORT", thread_ts=d.ts)


def test_with_no_public_channel_known_the_notice_names_none(make_harness):
    """Before, the "only in these channels" notice reached anyone who mentioned the bot
    elsewhere with links to every allowed channel, private ones included. With a private channel
    by name and a channel id (nothing says it is public), it names none, for a mention and for
    /flytegpt alike."""
    harness = make_harness(bot={"allowed_channels": ["flyte-internal", "C0ALLOWED1"]},
                           setup=_manifest_workspace(MANIFEST_SCOPES))
    assert harness.bot.router.allowed == {"G0INTERNAL", "C0ALLOWED1"}
    notice = _refused_in_general(harness)
    assert notice["text"] == messages.ONLY_IN_SOME_CHANNELS and "<#" not in notice["text"]
    c = harness.emu.slash_command(CACHE_Q)  # in #general
    ack = harness.emu.wait_ack(c.envelope_id)
    assert ack.payload == {"text": messages.ONLY_IN_SOME_CHANNELS, "response_type": "ephemeral"}
