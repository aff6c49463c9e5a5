"""Questions from private channels and group DMs stay out of the maintainers' report.

End to end: the real Bolt app over Socket Mode against the Slack emulator logs the questions it is
asked (with the kind of conversation each was asked in), and the report built from that database
shows a private channel's or a group DM's questions only when [bot] report_channels names it.
Also: a database written before channel types were logged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support.slack_harness import BotHarness, build_sample_index, tuned

from flytegpt.bot.index_holder import IndexHolder
from flytegpt.bot.report import ReportOptions, build_report, render_page
from flytegpt.bot.report.data import PrivacyFilter
from flytegpt.bot.slack import feedback

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

PUBLIC_Q = "How do I pin the flytekit version in the public-marker image?"
SECRET_Q = "Our acme-corp signing key leaked, how do I rotate secrets in flyte?"
GROUP_Q = "Can flyte read the PAYROLL_DB_PASSWORD secret of another team?"
TWIN_Q = "Does the private-twin-marker channel need its own project?"


@pytest.fixture()
def harness(tmp_path, embedder):
    from flytegpt.ingest.search import HybridSearcher

    config = build_sample_index(tmp_path / "store", embedder)
    searcher = HybridSearcher.open(config, embedder=embedder)
    h = BotHarness(tuned(config, feedback_db=tmp_path / "feedback.sqlite3"), IndexHolder(searcher))
    h.emu.add_channel("C0SECRET", "security-incidents", is_private=True)
    h.emu.add_channel("C0MPIM01", "mpdm-alice--bob--flytegpt-1", is_private=True)
    h.emu.add_channel("C0TWIN01", "private-twin", is_private=True)
    h.start()
    h.llm.reply = lambda body: "The sources do not say how to do that."  # not found: a knowledge gap
    yield h
    h.stop()
    assert h.emu.violations == []


def test_private_channel_and_group_dm_questions_are_left_out_unless_report_channels_names_them(harness, embedder):
    emu = harness.emu
    asked = [emu.mention(PUBLIC_Q, user="U0ALICE"),
             emu.mention(SECRET_Q, channel="C0SECRET", user="U0ALICE"),  # app_mention: no channel_type
             emu.message(f"<@{emu.bot_user_id}> {GROUP_Q}", channel="C0MPIM01", channel_type="mpim", user="U0BOB"),
             emu.message(f"<@{emu.bot_user_id}> {TWIN_Q}", channel="C0TWIN01", channel_type="group", user="U0BOB")]
    for d in asked:
        harness.wait_answers(thread_ts=d.ts)
    harness.idle()
    logged = {r["question"]: r["channel_type"] for r in harness.logged_questions()}
    assert logged == {PUBLIC_Q: "channel", SECRET_Q: "group", GROUP_Q: "mpim", TWIN_Q: "group"}
    # Slack was asked only for the channels whose event did not say
    assert sorted(c.args["channel"] for c in emu.calls_to("conversations.info")) == ["C0GENERAL", "C0SECRET"]

    db, store = harness.config.bot.feedback_db, harness.config.index.store

    def page(report_channels: list[str] | None) -> tuple[str, dict[str, int]]:
        privacy = PrivacyFilter.from_config(report_channels, [], dms=False)
        report = build_report(db, store=store, options=ReportOptions(privacy=privacy), embedder=embedder)
        return render_page(report), report.left_out

    html, left_out = page(None)  # the default: no [bot] report_channels
    assert "public-marker" in html
    for private in ("acme-corp", "PAYROLL_DB_PASSWORD", "private-twin-marker", "C0SECRET", "C0MPIM01", "C0TWIN01"):
        assert private not in html
    assert left_out == {"dm": 0, "private": 3, "untyped": 0, "channel": 0}
    assert "3 from private channels and group DMs" in html

    html, left_out = page(["C0GENERAL", "C0SECRET"])  # named: shown, with its link
    assert "public-marker" in html and "acme-corp" in html and "archives/C0SECRET/" in html
    assert "PAYROLL_DB_PASSWORD" not in html and "private-twin-marker" not in html
    assert left_out == {"dm": 0, "private": 0, "untyped": 0, "channel": 2}


def _version_1_database(path: Path) -> None:
    """The question log as a bot before channel types wrote it (schema version 1)."""
    conn = sqlite3.connect(path)
    conn.executescript(feedback._SCHEMA_V0 + feedback.MIGRATIONS[0] + "PRAGMA user_version = 1;")
    rows = [("q1", "mention", "C0PUBLIC1", "old public-or-not marker-c question"),
            ("q2", "mention", "G0LEGACY1", "old legacy-group marker-g question"),
            ("q3", "dm", "D0DIRECT1", "old direct marker-d question")]
    import time

    for rid, surface, channel, question in rows:
        conn.execute("INSERT INTO answers (id, created_at, surface, channel, thread_ts, user, question, answer, "
                     "sources, mode, outcome) VALUES (?, ?, ?, ?, '1.0', 'U1', ?, 'no', '[]', 'not_found', "
                     "'not_found')", (rid, time.time() - 60, surface, channel, question))
    conn.commit()
    conn.close()


def test_questions_logged_before_channel_types_are_left_out_where_they_cannot_be_told_apart(tmp_path):
    db = tmp_path / "feedback.sqlite3"
    _version_1_database(db)
    report = build_report(str(db), options=ReportOptions(privacy=PrivacyFilter.from_config(None, [], False)))
    html = render_page(report)
    assert "marker-c" not in html and "marker-g" not in html and "marker-d" not in html
    assert report.left_out == {"dm": 1, "private": 1, "untyped": 1, "channel": 0}
    assert any(n.startswith("1 channel question logged before the bot recorded whether a channel is private")
               for n in report.notes)
    named = build_report(str(db), options=ReportOptions(
        privacy=PrivacyFilter.from_config(["C0PUBLIC1", "G0LEGACY1"], [], False)))
    assert {q["question"] for t in named.topics for q in t.questions} >= {
        "old public-or-not marker-c question", "old legacy-group marker-g question"}
    assert named.left_out == {"dm": 1, "private": 0, "untyped": 0, "channel": 0}
    # the report read a copy: the bot's own file is still at version 1, its rows untouched
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    store = feedback.FeedbackStore(db)  # the bot opening it migrates it; old rows have no type
    try:
        assert store.schema_version == feedback.SCHEMA_VERSION == 2
        assert {r["channel"]: r["channel_type"] for r in store.questions()} == {
            "C0PUBLIC1": None, "G0LEGACY1": None, "D0DIRECT1": None}
    finally:
        store.close()
