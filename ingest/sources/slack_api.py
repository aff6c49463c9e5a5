"""`slack_api` sources: channels read live through the Web API, incrementally, one Document per thread.

The nightly re-ingest should cost what changed since yesterday, not a re-read of years of
history, yet every thread ever seen must stay in the index. So the source keeps two files in
the index store (fsspec, like everything else there):
    <store>/cursors/<source name>.json          per channel: the newest activity ts seen
    <store>/sources/<source name>/threads.jsonl  the thread documents built so far
A run lists thread parents (`conversations.history`) from the cursor minus
`reply_lookback_days` (history is ordered by a thread's *first* message, so recent replies to
older threads are only found by looking back), fetches `conversations.replies` only for
threads with activity after the cursor (or never seen), updates the snapshot, moves the
cursor, and emits every thread of the snapshot: unchanged threads without any API call.
The snapshot is written before the cursor, so a crash in between only re-fetches.

Rate limits and Slack's transient errors: the shared client's retry handlers (ingest/slack_client.py).
Needs SLACK_BOT_TOKEN (scopes channels:history, groups:history, channels:read, groups:read,
users:read) and optionally SLACK_API_URL (another Web API base URL), via ingest.config.Settings.
Without a store (`store=None`) nothing is remembered and all history is read.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flytegpt.ingest.config import ConfigError, Settings, SourceConfig
from flytegpt.ingest.models import Document, LoadReport
from flytegpt.ingest.sources.slack_export import (
    Directory, clean_messages, is_noise, listed, thread_document, ts_key,
)
from flytegpt.ingest.store import atomic_write, get_fs, join, read_bytes

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web import SlackResponse

log = logging.getLogger(__name__)

PAGE_LIMIT = 200  # Slack's recommended page size for history and lists
RATE_LIMIT_RETRIES = 8
CURSOR_FORMAT = 1


def make_client(settings: Settings) -> "WebClient":
    """The project's WebClient (ingest/slack_client.py), waiting out long rate limits."""
    from flytegpt.ingest.slack_client import make_web_client

    if settings.slack_bot_token is None:
        raise ConfigError("slack_api sources need SLACK_BOT_TOKEN in the environment")
    return make_web_client(settings, settings.slack_bot_token.get_secret_value(),
                           rate_limit_retries=RATE_LIMIT_RETRIES)


class _State:
    """The cursor and the thread snapshot of one source in the store (or in memory only)."""

    def __init__(self, store: str | None, name: str) -> None:
        self.store = store
        self.cursors: dict[str, dict[str, Any]] = {}  # channel id -> {"name", "latest"}
        self.threads: dict[str, dict[str, Any]] = {}  # "<channel id>/<thread ts>" -> Document dict
        if store is None:
            return
        self.fs, root = get_fs(store)
        self.cursor_path = join(root, "cursors", f"{name}.json")
        self.snapshot_path = join(root, "sources", name, "threads.jsonl")
        data = read_bytes(self.fs, self.cursor_path)
        if data:
            self.cursors = json.loads(data).get("channels", {})
        data = read_bytes(self.fs, self.snapshot_path)
        for line in (data or b"").decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                self.threads[row["key"]] = row["document"]
        if self.threads and not self.cursors:
            self.threads = {}  # a snapshot without its cursor cannot be trusted: read everything

    def save(self) -> None:
        if self.store is None:
            return
        rows = "".join(
            json.dumps({"key": k, "document": d}, ensure_ascii=False, sort_keys=True) + "\n"
            for k, d in sorted(self.threads.items())
        )
        atomic_write(self.fs, self.snapshot_path, rows.encode())  # snapshot first, then the cursor
        cursor = {"format": CURSOR_FORMAT, "channels": self.cursors,
                  "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(self.fs, self.cursor_path, json.dumps(cursor, indent=1, sort_keys=True).encode())


def _pages(first: "SlackResponse", method: str, report: LoadReport) -> Iterator["SlackResponse"]:
    """Every page; a repeated cursor ends the listing and is reported."""
    from flytegpt.ingest.slack_client import pages

    return pages(first, lambda cursor: report.skip(method, f"stopped paging: the server repeated the cursor {cursor[:40]!r}"))


def _directory(client: "WebClient", report: LoadReport) -> Directory:
    from slack_sdk.errors import SlackApiError

    d = Directory()
    try:
        for page in _pages(client.users_list(limit=PAGE_LIMIT), "users.list", report):
            for u in listed(page, "members"):
                d.add_user(u)
    except SlackApiError as e:  # e.g. missing users:read: messages keep user ids, nothing else breaks
        report.skip("users.list", f"user names unavailable: {e.response.get('error')}")
    return d


def _channels(client: "WebClient", source: SourceConfig, d: Directory, report: LoadReport) -> list[tuple[str, str]]:
    """(id, name) of the channels to read: the configured ones, or every channel the bot is in."""
    channels: list[dict] = []
    for page in _pages(client.conversations_list(types="public_channel,private_channel", exclude_archived=True,
                                                 limit=PAGE_LIMIT), "conversations.list", report):
        channels.extend(c for c in listed(page, "channels") if isinstance(c.get("id"), str))
    for c in channels:
        d.channel_names[c["id"]] = c.get("name", c["id"])
        d.channel_ids[c.get("name", c["id"])] = c["id"]
    if not source.channels:
        chosen = [c for c in channels if c.get("is_member") and _may_read(c, source, report, c.get("name", c["id"]))]
        return [(c["id"], c.get("name", c["id"])) for c in chosen]
    picked = []
    for wanted in source.channels:
        match = next((c for c in channels if wanted in (c["id"], c.get("name"), "#" + c.get("name", ""))), None)
        if match is None:
            report.skip(wanted, "channel not found (archived, or private without the bot)")
        elif not match.get("is_member"):
            report.skip(wanted, "the bot is not a member of this channel (invite it)")
        elif _may_read(match, source, report, wanted):
            picked.append((match["id"], match.get("name", match["id"])))
    return picked


def _may_read(channel: dict, source: SourceConfig, report: LoadReport, shown: str) -> bool:
    """A private channel the bot was invited to is indexed only when the config says so: the bot
    quotes what it indexed to anyone, in public channels too (as the export source)."""
    if channel.get("is_private") and not source.private_channels:
        report.skip(shown, "a private channel: indexed only with private_channels = true")
        return False
    return True


def _activity(msg: dict) -> float:
    """When a thread last changed, as far as its parent in the history tells."""
    stamps = [msg.get("ts"), msg.get("latest_reply"), (msg.get("edited") or {}).get("ts")]
    return max(float(s) for s in stamps if s and re.fullmatch(r"\d+(\.\d+)?", str(s)))


def _thread_document(
    source: SourceConfig, channel_id: str, channel: str, root: str, messages: list[dict], d: Directory
) -> Document | None:
    msgs = [m for m in messages if not is_noise(m, d)]  # already cleaned (clean_messages)
    return thread_document(source, channel, channel_id, root, msgs, d) if msgs else None


def _replies(client: "WebClient", channel_id: str, root: str, report: LoadReport) -> list[dict]:
    messages: list[dict] = []
    for page in _pages(client.conversations_replies(channel=channel_id, ts=root, limit=PAGE_LIMIT),
                       "conversations.replies", report):
        messages.extend(clean_messages(page))
    return messages


def load_slack_api(
    source: SourceConfig,
    report: LoadReport,
    *,
    store: str | None = None,
    client: "WebClient | None" = None,
) -> Iterator[Document]:
    """Every thread of the source's channels; only threads with new activity cost API calls."""
    client = client or make_client(Settings())
    state = _State(store, source.name)
    d = _directory(client, report)
    channels = _channels(client, source, d, report)
    fetched = 0
    for channel_id, channel in channels:
        seen = state.cursors.get(channel_id, {})
        last = float(seen["latest"]) if seen.get("latest") else None
        oldest = max(0.0, last - source.reply_lookback_days * 86400) if last is not None else 0.0
        newest = last or 0.0
        changed: list[dict] = []
        history = client.conversations_history(channel=channel_id, oldest=f"{oldest:.6f}", limit=PAGE_LIMIT)
        for page in _pages(history, "conversations.history", report):
            for msg in clean_messages(page):
                if msg.get("thread_ts") not in (None, msg.get("ts")):
                    continue  # a reply broadcast to the channel: its thread is read with the parent
                activity = _activity(msg)
                newest = max(newest, activity)
                if last is None or activity > last or f"{channel_id}/{msg['ts']}" not in state.threads:
                    changed.append(msg)
        for msg in changed:
            root = msg["ts"]
            thread = _replies(client, channel_id, root, report) if msg.get("reply_count") else [msg]
            doc = _thread_document(source, channel_id, channel, root, thread, d)
            key = f"{channel_id}/{root}"
            if doc is None:
                state.threads.pop(key, None)  # only noise (joins, bot posts): not a document
            else:
                state.threads[key] = doc.to_dict()
            fetched += 1
        state.cursors[channel_id] = {"name": channel, "latest": f"{newest:.6f}"}
    state.save()

    wanted = {cid for cid, _ in channels}
    docs = [Document.from_dict(v) for k, v in state.threads.items() if k.split("/", 1)[0] in wanted]
    docs.sort(key=lambda doc: (doc.meta.get("channel", ""), ts_key(doc.meta["thread_ts"])))
    log.info("%s: %d threads, %d fetched since the last ingest", source.name, len(docs), fetched)
    for doc in docs:
        report.documents += 1
        yield doc
