"""The bot's building blocks: de-dup, rate limit, bounded pool, feedback store, history, logs, tokens."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
from click.testing import CliRunner
from slack_sdk import WebClient

from flytegpt.bot.answering import Answer, Citation, Turn
from flytegpt.bot.cli_serve import feedback_group
from flytegpt.bot.logs import RedactingFilter, redact, setup_logging
from flytegpt.bot.slack.client import SlackTokenError, api_base_url, check_tokens, make_client
from flytegpt.bot.slack.dedupe import Deduper, SeenCache
from flytegpt.bot.slack.feedback import FeedbackStore
from flytegpt.bot.question_text import reads_as_followup
from flytegpt.bot.slack.history import ThreadHistory, strip_mentions
from flytegpt.bot.slack.ratelimit import RateLimiter
from flytegpt.bot.slack.workers import WorkerPool
from flytegpt.ingest.config import Settings
from support.slack_emulator import SlackEmulator


def test_seen_cache_is_bounded_and_expires():
    cache = SeenCache(max_items=3, ttl_s=0.2)
    assert cache.first("a") and not cache.first("a")
    for k in "bcd":
        cache.first(k)
    assert len(cache) == 3 and "a" not in cache  # evicted, oldest first
    time.sleep(0.25)
    assert cache.first("b")  # expired


def test_deduper_events_and_messages():
    d = Deduper()
    assert d.new_event("Ev1") and not d.new_event("Ev1") and d.new_event(None)
    assert d.claim_message("C1", "1.0") and not d.claim_message("C1", "1.0") and d.claim_message("C2", "1.0")


def test_rate_limiter_window():
    rl = RateLimiter(limit=2, window_s=0.3)
    assert rl.check("u") == 0 and rl.check("u") == 0
    wait = rl.check("u")
    assert 0 < wait <= 0.3
    assert rl.check("v") == 0
    time.sleep(0.32)
    assert rl.check("u") == 0
    assert RateLimiter(limit=0).check("anyone") == 0


def test_worker_pool_is_bounded():
    pool = WorkerPool(workers=1, queue_size=1)
    gate = threading.Event()
    ran = []
    assert pool.submit(lambda: (gate.wait(5), ran.append(1)))
    assert pool.submit(lambda: ran.append(2))
    assert not pool.submit(lambda: ran.append(3))  # full: refused at once
    assert pool.pending == 2
    gate.set()
    assert pool.wait_idle(5)
    assert ran == [1, 2]
    assert pool.submit(lambda: ran.append(4)) and pool.wait_idle(5)
    pool.submit(lambda: 1 / 0)  # a failing task does not kill the pool
    assert pool.wait_idle(5) and pool.submit(lambda: ran.append(5)) and pool.wait_idle(5)
    assert ran[-1] == 5
    pool.shutdown()
    assert not pool.submit(lambda: None)


def test_feedback_store_and_export(tmp_path):
    db = tmp_path / "fb" / "feedback.sqlite3"
    store = FeedbackStore(db)
    ans = Answer("how to cache?", "how to cache?", "Use cache=True [1].",
                 [Citation(1, "Caching", "https://e.org/c", "docs:c.md")], "llm", "v7")
    fid = store.record_answer(ans, surface="mention", channel="C1", thread_ts="1.0", user="U1")
    assert len(fid) <= 16
    assert store.get_answer(fid)["sources"][0]["url"] == "https://e.org/c"
    assert store.record_vote(fid, "up", user="U2", channel="C1")
    assert store.record_vote(fid, "down", user="U2", channel="C1")  # changed mind: replaces
    assert store.record_vote(fid, "up", user="U3", channel="C1")
    assert not store.record_vote("nope", "up", user="U2", channel="C1")
    rows = store.votes()
    assert [(r["user"], r["vote"]) for r in rows] == [("U2", "down"), ("U3", "up")]
    assert rows[0]["index_version"] == "v7" and rows[0]["question"] == "how to cache?"
    store.close()

    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(feedback_group, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["sources"][0]["n"] == 1 and lines[0]["voted_at"].endswith("+00:00")
    missing = CliRunner().invoke(feedback_group, ["export", "--db", str(tmp_path / "x.db"), "--out", str(out)])
    assert missing.exit_code != 0 and "not found" in missing.output


def test_feedback_and_report_commands_say_in_one_line_what_they_cannot_read_or_write(tmp_path):
    """An --out that is a folder or under a file, a --db that is no database, a --store that holds
    nothing: tracebacks (IsADirectoryError, FeedbackDatabaseError, OSError) or silence before."""
    from flytegpt.bot.cli_report import report_cmd, snapshot_cmd

    db = tmp_path / "feedback.sqlite3"
    FeedbackStore(db).close()
    (tmp_path / "file").write_text("x")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_text("this is not a database" * 100)
    runner = CliRunner()
    for cmd in ("export", "questions"):
        for out, said in ((tmp_path, f"cannot write {tmp_path}: Is a directory"),
                          (tmp_path / "file" / "o.jsonl", f"cannot write {tmp_path / 'file' / 'o.jsonl'}: ")):
            r = runner.invoke(feedback_group, [cmd, "--db", str(db), "--out", str(out)])
            assert r.exit_code == 1 and said in r.output and "Traceback" not in r.output, r.output
        r = runner.invoke(feedback_group, [cmd, "--db", str(garbage), "--out", str(tmp_path / "o.jsonl")])
        assert r.exit_code == 1 and "is not a usable feedback database" in r.output, r.output
    r = runner.invoke(snapshot_cmd, ["--db", str(db), "--to", str(tmp_path / "file" / "s.sqlite3")])
    assert r.exit_code == 1 and "cannot write" in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(report_cmd, ["--db", str(db), "--out", str(tmp_path / "file" / "r.html")])
    assert r.exit_code == 1 and f"cannot write {tmp_path / 'file' / 'r.html'}: " in r.output, r.output
    r = runner.invoke(report_cmd, ["--db", str(db), "--out", str(tmp_path / "r.html"),
                                   "--store", str(tmp_path / "no-such-store")])
    assert r.exit_code == 0 and f"note: No published index in {tmp_path / 'no-such-store'}" in r.output, r.output


def test_an_answer_with_half_an_emoji_is_stored_and_can_be_voted_on(tmp_path):
    """A model's text cut mid-emoji (a lone surrogate) failed the insert: the answer was not
    stored and its 👍/👎 got "I couldn't find that answer"."""
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    cites = [Citation(1, "t\ud83d", "https://e.org/1", "docs:c.md")]
    fid = store.record_answer(Answer("q \ud83d?", "q \ud83d?", "half \ud83d an emoji", cites, "llm", "v1"),
                              surface="mention")
    assert store.record_vote(fid, "up", user="U1", channel="C1")
    rows = store.votes()
    store.close()
    assert rows[0]["answer"] == "half \ufffd an emoji" and rows[0]["question"] == "q \ufffd?"


def test_confirmed_questions_become_an_eval_question_file(tmp_path):
    """`flytegpt feedback questions`: answers their asker (U1 unless said) 👍, cited sources as gold."""
    from flytegpt.ingest.evaluation import load_questions

    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)

    def answered(question, standalone, *source_ids, votes=(), mode="llm", asker="U1"):
        cites = [Citation(n, f"t{n}", f"https://e.org/{n}", sid) for n, sid in enumerate(source_ids, 1)]
        fid = store.record_answer(Answer(question, standalone, "text", cites, mode, "v1"), surface="mention",
                                  user=asker)
        for user, vote in votes:
            store.record_vote(fid, vote, user=user, channel="C1")
        return fid

    first = answered("how to cache?", "how to cache?", "docs:c.md", votes=[("U1", "up"), ("U2", "up")])
    answered("and for map tasks?", "How do I cache map tasks?", "docs:m.md", "slack:C1/1.0",
             votes=[("U1", "up"), ("U2", "up"), ("U3", "down")])
    answered("  How TO  cache? ", "", "docs:c2.md", "docs:c.md", votes=[("U4", "up")],
             asker="U4")  # the same question again
    answered("tie?", "tie?", "docs:t.md", votes=[("U1", "up"), ("U2", "down")], asker="U2")  # the asker's 👎
    answered("disliked?", "disliked?", "docs:d.md", votes=[("U1", "down")])
    answered("others liked?", "others liked?", "docs:o.md", votes=[("U2", "up"), ("U3", "up")])  # not the asker
    answered("no sources?", "no sources?", votes=[("U1", "up")])
    answered("never voted on?", "never voted on?", "docs:n.md")
    # "I couldn't find this" with its closest matches: a 👍 thanks the honesty, the matches are no gold
    answered("capital of France?", "capital of France?", "docs:c.md", votes=[("U1", "up")], mode="not_found")
    store.close()

    out = tmp_path / "confirmed.jsonl"
    result = CliRunner().invoke(feedback_group, ["questions", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 2 confirmed question(s)" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["question"], r["gold"], r["up"], r["down"]) for r in rows] == [
        ("how to cache?", ["docs:c.md", "docs:c2.md"], 3, 0),
        ("How do I cache map tasks?", ["docs:m.md", "slack:C1/1.0"], 2, 1),  # as it was searched
    ]
    assert rows[0]["id"] == first
    questions = load_questions(out)  # what `flytegpt eval` reads
    assert [q.gold for q in questions] == [("docs:c.md", "docs:c2.md"), ("docs:m.md", "slack:C1/1.0")]

    empty = FeedbackStore(tmp_path / "empty.sqlite3")
    empty.close()
    none = CliRunner().invoke(feedback_group, ["questions", "--db", str(tmp_path / "empty.sqlite3"), "--out", str(out)])
    assert none.exit_code == 0 and "none yet" in none.output and out.read_text() == ""
    missing = CliRunner().invoke(feedback_group, ["questions", "--db", str(tmp_path / "x.db"), "--out", str(out)])
    assert missing.exit_code != 0 and "not found" in missing.output


def test_tokens_are_checked_by_name(monkeypatch):
    with pytest.raises(SlackTokenError, match="SLACK_BOT_TOKEN is not set"):
        check_tokens(Settings())
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxp-user-token")
    with pytest.raises(SlackTokenError, match="SLACK_BOT_TOKEN is malformed.*xoxb-"):
        check_tokens(Settings())
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    with pytest.raises(SlackTokenError, match="SLACK_APP_TOKEN is not set"):
        check_tokens(Settings())
    monkeypatch.setenv("SLACK_APP_TOKEN", "xoxb-wrong")
    with pytest.raises(SlackTokenError, match="SLACK_APP_TOKEN is malformed.*xapp-"):
        check_tokens(Settings())
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1")
    assert check_tokens(Settings()) == ("xoxb-1", "xapp-1")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api")
    assert api_base_url(Settings()) == "http://127.0.0.1:9/api/"


def test_web_client_honours_retry_after(monkeypatch):
    with SlackEmulator() as emu:
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        client = make_client(Settings())
        emu.script_error("chat.postMessage", status=429, retry_after=1, times=1)
        t0 = time.monotonic()
        resp = client.chat_postMessage(channel="C0GENERAL", text="hi")
        assert resp["ok"] and time.monotonic() - t0 >= 0.9
        assert len(emu.calls_to("chat.postMessage")) == 2


def test_thread_history_cache_and_turns():
    with SlackEmulator() as emu:
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        root = emu.seed_message("C0GENERAL", "<@UBOT> how do I cache?", user="U1")["ts"]
        emu.seed_message("C0GENERAL", "Use cache=True [1].", user="UBOT", thread_ts=root, bot_id="BBOT",
                         blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "Use cache=True [1]."}},
                                 {"type": "context", "elements": [{"type": "mrkdwn", "text": "*Sources*"}]}])
        emu.seed_message("C0GENERAL", "noise from a bot", user="UOTHER", thread_ts=root, bot_id="BOTHER")
        follow = emu.seed_message("C0GENERAL", "<@UBOT> and for map tasks?", user="U1", thread_ts=root)["ts"]
        hist = ThreadHistory(client, ttl_s=60)
        turns = hist.turns("C0GENERAL", root, before_ts=follow, bot_user_id="UBOT", bot_id="BBOT", max_turns=6)
        assert turns == [Turn("user", "how do I cache?"), Turn("assistant", "Use cache=True [1].")]
        assert len(hist.messages("C0GENERAL", root, must_include=follow)) == 4
        assert hist.fetches == 1  # cached
        later = emu.seed_message("C0GENERAL", "one more", user="U1", thread_ts=root)["ts"]
        hist.turns("C0GENERAL", root, before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=6)
        assert hist.fetches == 2  # the cached copy did not have the new message
        assert hist.turns("C0GENERAL", root, before_ts=later, bot_user_id="UBOT", bot_id="BBOT",
                          max_turns=1) == [Turn("user", "and for map tasks?")]
        assert strip_mentions("<@UBOT>  hi <@U2>", "UBOT") == "hi <@U2>"


@pytest.mark.parametrize("text", ["and for map tasks?", "what about map tasks", "how do I do that remotely?",
                                  "does it work with spark?", "why?", "can you show an example", "also on GCP?"])
def test_a_short_message_that_continues_reads_as_a_follow_up(text):
    assert reads_as_followup(text)


@pytest.mark.parametrize("text", ["how do I cache a task?", "what is a launch plan in flyte",
                                  "and " + "word " * 12, ""])
def test_a_new_question_or_a_long_message_does_not_read_as_a_follow_up(text):
    assert not reads_as_followup(text)


def _dm_exchange(emu: SlackEmulator, *, streamed: bool, at: float) -> tuple[str, str]:
    """A DM question and the bot's answer: in the question's thread (streamed) or at the top."""
    asked = emu.seed_message("D0DM", "how do I cache?", user="U1", ts=f"{at:.6f}")["ts"]
    emu.seed_message("D0DM", "Use cache=True [1].", user="UBOT", bot_id="BBOT", ts=f"{at + 5:.6f}",
                     **({"thread_ts": asked} if streamed else {}))
    return asked, f"{at + 60:.6f}"


@pytest.mark.parametrize("streamed", [True, False])
def test_a_follow_up_at_the_top_of_a_dm_is_read_with_the_exchange_before_it(streamed):
    """A DM's top level is no thread, so "and for map tasks?" written there used to be
    answered as if nothing had been asked before."""
    with SlackEmulator() as emu:
        emu.add_channel("D0DM", "dm", is_im=True)
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        now = time.time() - 120
        emu.seed_message("D0DM", "what is a launch plan?", user="U1", ts=f"{now - 5:.6f}")  # the one before
        _, later = _dm_exchange(emu, streamed=streamed, at=now)
        emu.seed_message("D0DM", "thanks!", user="U1", ts=f"{now + 30:.6f}")  # not a question: passed over
        hist = ThreadHistory(client)
        turns = hist.dm_turns("D0DM", before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=6)
        assert turns == [Turn("user", "how do I cache?"), Turn("assistant", "Use cache=True [1].")]
        assert hist.dm_turns("D0DM", before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=1) == \
            [Turn("assistant", "Use cache=True [1].")]


def test_a_dm_exchange_of_long_ago_or_an_unreadable_history_gives_no_context(caplog):
    with SlackEmulator() as emu:
        emu.add_channel("D0DM", "dm", is_im=True)
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        _, later = _dm_exchange(emu, streamed=False, at=time.time() - 3600)
        hist = ThreadHistory(client)
        long_after = f"{float(later) + 1800:.6f}"
        assert hist.dm_turns("D0DM", before_ts=long_after, bot_user_id="UBOT", bot_id="BBOT", max_turns=6) == []
        assert hist.dm_turns("D0DM", before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=6)
        emu.script_error("conversations.history", status=200, error="missing_scope", retry_after=None)
        with caplog.at_level(logging.WARNING):
            assert hist.dm_turns("D0DM", before_ts=later, bot_user_id="UBOT", bot_id="BBOT", max_turns=6) == []
        assert "conversations.history failed" in caplog.text


def test_thread_history_stops_when_the_server_repeats_its_cursor(monkeypatch: pytest.MonkeyPatch):
    """An empty page that always points to the same next cursor: the history read stops at the
    repeat instead of asking forever, and the question is still answered with what came back."""
    with SlackEmulator() as emu:
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        root = emu.seed_message("C0GENERAL", "<@UBOT> how do I cache?", user="U1")["ts"]
        real_page = emu._page

        def stuck(key: str, items: list, args: dict) -> dict:
            page = real_page(key, items, args)
            page["response_metadata"] = {"next_cursor": "dXNlcjo100"}
            return page

        monkeypatch.setattr(emu, "_page", stuck)
        hist = ThreadHistory(client, ttl_s=60)
        assert [m["text"] for m in hist.messages("C0GENERAL", root)] == ["<@UBOT> how do I cache?"]
        assert len(emu.calls_to("conversations.replies")) == 2  # the first page, then the one that repeats its cursor


def test_emulator_pagination_for_loaders():
    """conversations.list/history/replies page with cursors (helper E's slack_api source uses them)."""
    with SlackEmulator(page_size=2) as emu:
        for i in range(3):
            emu.add_channel(f"C{i}XXXXXX", f"chan{i}")
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        names = []
        for page in client.conversations_list(types="public_channel", limit=2):
            names += [c["name"] for c in page["channels"]]
        assert names == ["general", "chan0", "chan1", "chan2"]
        root = emu.seed_message("C0XXXXXX", "q", user="U1")["ts"]
        for i in range(3):
            emu.seed_message("C0XXXXXX", f"r{i}", user="U2", thread_ts=root)
        emu.seed_message("C0XXXXXX", "later", user="U1")
        hist = [m for page in client.conversations_history(channel="C0XXXXXX", limit=1) for m in page["messages"]]
        assert [m["text"] for m in hist] == ["later", "q"] and hist[1]["reply_count"] == 3
        replies = [m["text"] for page in client.conversations_replies(channel="C0XXXXXX", ts=root, limit=2)
                   for m in page["messages"]]
        assert replies == ["q", "r0", "r1", "r2"]


def test_logs_redact_tokens():
    assert redact("token xoxb-123-456-abcdef and xapp-1-A0-xyz1 and sk-proj-abcdefgh") == \
        "token xoxb-*** and xapp-*** and sk-***"
    stream = io.StringIO()
    handler = setup_logging(json_logs=True, stream=stream)
    try:
        logging.getLogger("flytegpt.test").warning("using %s", "xoxb-1111-2222-secret", extra={"t": "xapp-1-2-3456"})
        line = json.loads(stream.getvalue().strip().splitlines()[-1])
        assert line["message"] == "using xoxb-***" and line["t"] == "xapp-***" and line["level"] == "warning"
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        logging.getLogger().removeHandler(handler)


def test_web_client_retries_slack_server_trouble_then_gives_up(monkeypatch):
    """5xx and transient `ok: false` errors are retried with backoff; a caller's error is not."""
    from slack_sdk.errors import SlackApiError

    from flytegpt.ingest.sources.slack_api import make_client as ingest_client

    with SlackEmulator() as emu:
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        client = make_client(Settings(), backoff_factor_s=0.01)
        emu.script_error("conversations.history", status=503, error="service_unavailable", retry_after=None, times=1)
        emu.script_error("conversations.history", status=200, error="internal_error", retry_after=None, times=1)
        assert client.conversations_history(channel="C0GENERAL")["ok"]
        assert len(emu.calls_to("conversations.history")) == 3
        emu.script_error("chat.update", status=200, error="fatal_error", retry_after=None, times=4)
        with pytest.raises(SlackApiError, match="fatal_error"):
            client.chat_update(channel="C0GENERAL", ts="1.0", text="hi")
        assert len(emu.calls_to("chat.update")) == 4  # the first try and 3 retries
        with pytest.raises(SlackApiError, match="channel_not_found"):
            client.chat_postMessage(channel="", text="hi")
        assert len(emu.calls_to("chat.postMessage")) == 1  # not retried
        # the ingest source gets the same client (base URL, retry policy)
        ingested = ingest_client(Settings())
        assert ingested.base_url == client.base_url
        assert [type(h) for h in ingested.retry_handlers] == [type(h) for h in client.retry_handlers]


@pytest.mark.parametrize("status,error,retried", [
    (503, "service_unavailable", False), (500, "internal_error", False), (200, "internal_error", False),
    (200, "fatal_error", False), (0, "", False),  # "possibly succeeded": the message may be there
    (200, "service_unavailable", True), (200, "request_timeout", True), (429, "ratelimited", True)])
def test_web_client_does_not_retry_a_post_slack_may_have_made(monkeypatch, status, error, retried):
    """chat.postMessage and chat.startStream are not retried blindly after an outcome
    Slack documents as possibly done; each retry was one more copy of the answer in the thread.
    Slack's "not done" answers and 429 are still retried; reads and idempotent writes keep theirs."""
    from slack_sdk.errors import SlackApiError

    with SlackEmulator() as emu:
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_API_URL", emu.api_url)
        client = make_client(Settings(), backoff_factor_s=0.01)
        for method in ("chat.postMessage", "chat.startStream", "conversations.replies"):
            emu.script_error(method, status=status, error=error, retry_after=0, times=1, after=not retried)
        root = emu.seed_message("C0GENERAL", "q?")["ts"]
        calls = [
            ("chat.postMessage", lambda: client.chat_postMessage(channel="C0GENERAL", text="hi", thread_ts=root)),
            ("chat.startStream", lambda: client.chat_startStream(channel="C0GENERAL", thread_ts=root,
                                                                 markdown_text="hi", recipient_team_id="T0EMU",
                                                                 recipient_user_id="U0USER")),
        ]
        for method, call in calls:
            if retried:
                assert call()["ok"]
            else:
                with pytest.raises((SlackApiError, OSError)):
                    call()
            assert len(emu.calls_to(method)) == (2 if retried else 1)
        # a read is retried whatever happened (nothing to show twice)
        assert client.conversations_replies(channel="C0GENERAL", ts=root)["ok"]
        assert len(emu.calls_to("conversations.replies")) == 2


def test_deduper_remembers_across_processes_and_expires(tmp_path):
    path = str(tmp_path / "fb.seen-events.sqlite3")
    first, second = Deduper(path=path), Deduper(path=path)  # two processes on one volume
    assert first.new_event("Ev1") and not second.new_event("Ev1")
    assert second.claim_message("C1", "1.0") and not first.claim_message("C1", "1.0")
    first.close()
    restarted = Deduper(path=path)
    assert not restarted.new_event("Ev1") and restarted.new_event("Ev2")
    expired = Deduper(path=path, ttl_s=0.0)  # past the retry window a key counts as new again
    time.sleep(0.01)
    assert expired.new_event("Ev2")
    for d in (second, restarted, expired):
        d.close()


def test_deduper_without_a_usable_file_uses_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    d = Deduper(path=str(blocker / "seen.sqlite3"))  # its folder cannot be created
    assert d.store is None
    assert d.new_event("Ev1") and not d.new_event("Ev1")


def test_the_threads_the_bot_answered_in_are_kept_across_restarts_and_bounded(tmp_path, monkeypatch):
    """Which threads are the bot's is read from its own record, not from Slack."""
    from flytegpt.bot.slack import dedupe

    path = str(tmp_path / "fb.seen-events.sqlite3")
    first = Deduper(path=path)
    assert not first.bot_thread("C1", "1.0")
    first.remember_thread("C1", "1.0")
    first.remember_thread("C1", "1.0")  # once per process: no second write
    assert first.bot_thread("C1", "1.0") and not first.bot_thread("C1", "2.0") and not first.bot_thread("C2", "1.0")
    first.close()
    restarted = Deduper(path=path)
    assert restarted.bot_thread("C1", "1.0")
    assert restarted.new_event("Ev1")  # the seen keys are a table of their own
    monkeypatch.setattr(dedupe, "MAX_THREADS", 3)
    for i in range(5):
        restarted.store.add_thread("C9", f"{i}.0")
        time.sleep(0.002)  # distinct times: the oldest go first
    restarted.store._prune()
    kept = [ts for ts in ("0.0", "1.0", "2.0", "3.0", "4.0") if restarted.store.has_thread("C9", ts)]
    assert kept == ["2.0", "3.0", "4.0"] and not restarted.store.has_thread("C1", "1.0")
    restarted.close()
    memory_only = Deduper()  # an in-memory feedback database: the record lives as long as the process
    memory_only.remember_thread("C1", "1.0")
    assert memory_only.bot_thread("C1", "1.0")


def test_whether_the_bot_replied_in_a_thread_is_read_from_its_parent_alone():
    with SlackEmulator() as emu:
        client = WebClient(token="xoxb-test", base_url=emu.api_url)
        ours = emu.seed_message("C0GENERAL", "how do I cache?", user="U1")["ts"]
        emu.seed_message("C0GENERAL", "Use cache=True [1].", user="UBOT", bot_id="BBOT", thread_ts=ours)
        theirs = emu.seed_message("C0GENERAL", "lunch?", user="U1")["ts"]
        for i in range(30):
            emu.seed_message("C0GENERAL", f"reply {i}", user=f"U{i % 4}", thread_ts=theirs)
        posted = emu.seed_message("C0GENERAL", "an answer shared in the channel", user="UBOT", bot_id="BBOT")["ts"]
        emu.seed_message("C0GENERAL", "thanks", user="U1", thread_ts=posted)
        hist = ThreadHistory(client)
        assert hist.bot_replied("C0GENERAL", ours, "UBOT", "BBOT")
        assert hist.bot_replied("C0GENERAL", posted, "UBOT", "BBOT")  # the bot wrote the parent
        for _ in range(5):
            assert not hist.bot_replied("C0GENERAL", theirs, "UBOT", "BBOT")  # "no" is remembered
        assert not hist.bot_replied("C0GONE", theirs, "UBOT", "BBOT")  # unreadable: not known to be ours
        calls = emu.calls_to("conversations.history")
        assert len(calls) == 4 and all(c.args["limit"] in (1, "1") for c in calls)
        assert emu.calls_to("conversations.replies") == []


def test_a_channel_type_is_read_once_per_channel():
    from flytegpt.bot.slack.history import channel_type_of

    assert [channel_type_of(info) for info in (
        {"is_channel": True, "is_private": False}, {"is_channel": True, "is_private": True},
        {"is_group": True}, {"is_mpim": True, "is_private": True}, {"is_im": True})] == [
        "channel", "group", "group", "mpim", "im"]
    with SlackEmulator() as emu:
        emu.add_channel("C0PUBLIC", "general")
        emu.add_channel("C0SECRET", "secret", is_private=True)
        hist = ThreadHistory(WebClient(token="xoxb-test", base_url=emu.api_url))
        assert [hist.channel_type(c) for c in ("C0PUBLIC", "C0SECRET", "C0PUBLIC", "D0DM", "C0MISSING")] == [
            "channel", "group", "channel", "im", "unknown"]
        assert [c.args["channel"] for c in emu.calls_to("conversations.info")] == ["C0PUBLIC", "C0SECRET", "C0MISSING"]
