"""Slack workspace exports (zip or folder) -> one Document per thread.

A thread is the unit people search for: the question and the answers that resolve it.
Indexing single messages (as LangChain's SlackDirectoryLoader does) separates answers
from their questions, so retrieval finds "yes, that fixed it" without the context.
"""

from __future__ import annotations

import html
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from flytegpt.ingest.config import ConfigError, SourceConfig
from flytegpt.ingest.models import Document, LoadReport, valid_document
from flytegpt.ingest.sources._files import glob_match, inside, is_utf8_name, printable_name

_DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.json$")
# Subtypes that carry what a person wrote; everything else (joins, leaves, topic changes,
# pins, bot posts, tombstones ...) is channel noise.
_KEPT_SUBTYPES = {None, "", "thread_broadcast", "file_share", "me_message"}
_TITLE_CHARS = 90
# What channels.json / groups.json must hold for a channel to be linked: Slack's ids are upper-case
# letters and digits (C…, G…); names are letters, digits, `-`, `_` and `.` (80 at most), never a
# path (`../../etc`) or markup. Entries of any other shape are left out and named.
_CHANNEL_ID = re.compile(r"[A-Z0-9]{2,40}")
_CHANNEL_NAME = re.compile(r"\w[\w.-]{0,79}")
LINKS_LOST = "thread links cannot be built, so their Slack citations will not open the thread"


class ExportError(ConfigError):
    """The export as a whole cannot be read (not a zip, truncated); the message names the file."""


class _Tree:
    """Read-only view over the export, a folder or a zip, rooted at the folder holding channels.json.

    Nothing outside the export is read: in a folder, links that leave it are skipped and
    reported (`self.skipped`); a zip is only read member by member, never extracted.
    """

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self.prefix = ""
        self.skipped: list[tuple[str, str]] = []
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise ExportError(f"{path} is not a readable zip file ({e})") from None
            names = [n for n in self._zip.namelist() if not _junk(n)]
            self._names = names
            if "channels.json" not in names:
                # Exports re-zipped by hand often put everything under one top folder.
                tops = {n.split("/", 1)[0] for n in names if "/" in n}
                for top in sorted(tops):
                    if f"{top}/channels.json" in names or f"{top}/users.json" in names:
                        self.prefix = top + "/"
                        break
                else:
                    if len(tops) == 1 and all("/" in n for n in names):
                        self.prefix = next(iter(tops)) + "/"
        else:
            self._names = self._folder_names(path)

    def _folder_names(self, path: Path) -> list[str]:
        real_root = path.resolve()
        names = []
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path).as_posix()
            if _junk(rel) or not p.is_file():
                continue
            if not is_utf8_name(rel):
                self.skipped.append((printable_name(rel), "file name is not valid UTF-8"))
            elif not inside(p, real_root):
                self.skipped.append((rel, "symbolic link to a file outside the export"))
            else:
                names.append(rel)
        return names

    def files(self) -> list[str]:
        """Paths relative to the export root."""
        n = len(self.prefix)
        return sorted(name[n:] for name in self._names if name.startswith(self.prefix) and not name.endswith("/"))

    def read(self, rel: str) -> bytes:
        """A member's bytes; KeyError when missing, CorruptMember when its data is damaged or
        larger than MAX_MEMBER_BYTES (a zip bomb's 10 GB of zeros is refused before inflating)."""
        if self._zip is None:
            path = self.path / rel
            if path.stat().st_size > MAX_MEMBER_BYTES:
                raise CorruptMember(_too_large())
            return path.read_bytes()
        try:
            if self._zip.getinfo(self.prefix + rel).file_size > MAX_MEMBER_BYTES:
                raise CorruptMember(_too_large())
            # zipfile inflates at most the declared size (more fails its CRC check)
            return self._zip.read(self.prefix + rel)
        except (KeyError, CorruptMember):
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            # bad CRC, a corrupt deflate stream, a truncated member, an unsupported method
            # or an encrypted member: this file is lost, the others are still good
            raise CorruptMember(f"corrupt zip member: {e}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


class CorruptMember(Exception):
    """One file of an export cannot be used (damaged, or too large); the rest of it is fine."""


# One JSON file of an export: a channel's day, or users.json (~1.5 KB a member: a 100k-member
# workspace's is ~150 MB). Larger is not a file Slack writes, and it would be held in memory whole.
MAX_MEMBER_BYTES = 512 * 2**20


def _too_large() -> str:
    return f"larger than {MAX_MEMBER_BYTES // 2**20} MiB uncompressed: not a file of a Slack export"


def _junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def display_name(user: dict) -> str | None:
    """The name Slack shows for a person: display name, else real name, else account name.

    `user` is a users.list / users.json member or a message's `user_profile`; both the export
    and the Web API source name authors with this one rule.
    """
    profile = user.get("profile")
    profile = profile if isinstance(profile, dict) else {}
    for value in (profile.get("display_name"), profile.get("real_name"),
                  user.get("display_name"), user.get("real_name"), user.get("name")):
        if value and isinstance(value, str):
            return value
    return None


@dataclass
class Directory:
    """Names needed to render messages: users and channels by id."""

    users: dict[str, str] = field(default_factory=dict)
    channel_names: dict[str, str] = field(default_factory=dict)  # id -> name
    channel_ids: dict[str, str] = field(default_factory=dict)  # name -> id
    bots: set[str] = field(default_factory=set)  # user ids of bot users

    def add_user(self, member: Any) -> None:
        """Remember a users.list / users.json member (entries without an id are ignored)."""
        if not isinstance(member, dict) or not _nonempty_str(member.get("id")):
            return
        uid = member["id"]
        self.users[uid] = display_name(member) or uid
        if member.get("is_bot") or member.get("is_app_user"):
            self.bots.add(uid)

    def user(self, uid: str, profile: dict | None = None) -> str:
        if uid in self.users:
            return self.users[uid]
        return (display_name(profile) if profile else None) or uid


def _load_json(tree: _Tree, rel: str, report: LoadReport) -> Any:
    try:
        return json.loads(tree.read(rel).decode("utf-8-sig"))  # -sig: a channels.json edited on Windows
    except KeyError:
        return None
    except CorruptMember as e:
        report.skip(rel, str(e))
        return None
    except (ValueError, UnicodeDecodeError) as e:
        report.skip(rel, f"invalid JSON: {e}")
        return None
    except RecursionError:  # `[[[[…]]]]` thousands deep: no export nests like that
        report.skip(rel, "invalid JSON: nested too deeply")
        return None


@dataclass
class _Kinds:
    """Which channel folders of the export are public channels (channels.json; None: it is
    missing or unusable), private channels and direct messages (groups.json, dms.json and
    mpims.json: Business+ and Enterprise exports have them)."""

    public: set[str] | None = None
    private: set[str] = field(default_factory=set)
    direct: set[str] = field(default_factory=set)
    # An export of private conversations too (it has groups.json, dms.json or mpims.json): there,
    # a folder channels.json does not list may be one of them whose listing was lost.
    has_private: bool = False


# A folder named like a DM (its id) or a group DM ("mpdm-a--b-1"), whether or not dms.json lists it.
_DM_FOLDER = re.compile(r"D[A-Z0-9]{6,}|mpdm-.*")


_META_FILES = ("users.json", "channels.json", "groups.json", "dms.json", "mpims.json")


def _metadata(tree: _Tree, files: list[str], report: LoadReport) -> dict[str, Any]:
    """The export's metadata files, each read once (a broken one is reported once)."""
    return {name: _load_json(tree, name, report) for name in _META_FILES if name in files}


def _channel_kinds(meta: dict[str, Any]) -> _Kinds:
    kinds = _Kinds()
    kinds.has_private = any(f in meta for f in ("groups.json", "dms.json", "mpims.json"))
    listed = meta.get("channels.json")
    if isinstance(listed, list):
        kinds.public = {c["name"] for c in listed if isinstance(c, dict) and _nonempty_str(c.get("name"))}
    for meta_file, key, into in (("groups.json", "name", kinds.private), ("dms.json", "id", kinds.direct),
                                 ("mpims.json", "name", kinds.direct)):
        entries = meta.get(meta_file)
        for e in entries if isinstance(entries, list) else ():
            if isinstance(e, dict) and _nonempty_str(e.get(key)):
                into.add(e[key])
    return kinds


def _readable_channels(source: SourceConfig, report: LoadReport, d: Directory, kinds: _Kinds,
                       folders: list[str]) -> set[str]:
    """The channel folders this source may index: never a direct message, a private channel only
    with `private_channels = true`, and of those only the `channels` named, when any are.

    The bot quotes what it indexed to anyone who asks in a public channel; an export made by a
    workspace owner holds every private channel and DM, and none of that is the community's."""
    wanted = {c.strip().lstrip("#") for c in source.channels}
    readable = set()
    for folder in folders:
        if folder in kinds.direct or _DM_FOLDER.fullmatch(folder):
            report.skip(f"{folder}/", "a direct message: never indexed")
        elif folder in kinds.private and not source.private_channels:
            report.skip(f"{folder}/", "a private channel (groups.json): indexed only with private_channels = true")
        elif wanted and folder not in wanted and d.channel_ids.get(folder) not in wanted:
            report.left_out += 1
        elif kinds.has_private and kinds.public is not None and folder not in kinds.public | kinds.private \
                and not wanted:
            # such an export lists every public channel; one it does not list may be private (groups.json lost)
            report.skip(f"{folder}/", "not in channels.json, so not known to be public: name it in channels "
                                      "to index it")
        else:
            readable.add(folder)
    for name in sorted(wanted - set(folders) - {d.channel_ids.get(f) for f in folders}):
        report.skip(name, "in `channels` but not a channel folder of the export")
    return readable


def _directory(meta: dict[str, Any], report: LoadReport) -> tuple[Directory, bool]:
    """The export's users and channels, and whether any channel list was usable.

    Without one every thread's URL is a bare `slack:<ts>`: the documents are still indexed
    (their text is what is searched), and the report says why their links are dead.
    """
    d = Directory()
    users = meta.get("users.json")
    if isinstance(users, list):
        for u in users:
            d.add_user(u)
    else:
        report.note("users.json", "missing or not a list of users: authors are shown by their user ids")
    listed = False
    for meta_file in ("channels.json", "groups.json"):
        channels = meta.get(meta_file)
        if isinstance(channels, list):
            listed = True
            _add_channels(d, meta_file, channels, report)
    if not listed:
        report.note("channels.json", f"missing or not a list of channels: {LINKS_LOST}")
    return d, listed


def _add_channels(d: Directory, meta_file: str, channels: list, report: LoadReport) -> None:
    """Remember the entries that are a channel id and a plain channel name; name the others
    (their id would go into a URL, their name into the text)."""
    bad = []
    for c in channels:
        if not isinstance(c, dict) or not (_nonempty_str(c.get("id")) and _nonempty_str(c.get("name"))):
            continue  # a fragment of a channel: nothing to link it by
        cid, name = c["id"], c["name"]
        if _CHANNEL_ID.fullmatch(cid) and _CHANNEL_NAME.fullmatch(name):
            d.channel_names[cid] = name
            d.channel_ids[name] = cid
        else:
            bad.append(f"{name[:40]!r} (id {cid[:20]!r})")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        report.note(meta_file, f"left out {shown}: not a channel name and id")


_MARKUP = re.compile(r"<([^<>\n]+)>")


def render_markup(text: str, d: Directory) -> str:
    """Slack's `<...>` markup and entity escapes as readable text."""

    def sub(m: re.Match) -> str:
        inner = m.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "@" + (label or d.user(target[1:]))
        if target.startswith("#"):
            return "#" + (label or d.channel_names.get(target[1:], target[1:]))
        if target.startswith("!"):
            if label:
                return label
            word = target[1:].split("^", 1)[0]
            return "@" + word if word in ("here", "channel", "everyone") else ""
        if target.startswith("mailto:"):
            return label or target[len("mailto:") :]
        if label and label != target:
            return f"{label} ({target})"
        return target

    return html.unescape(_MARKUP.sub(sub, text))


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


_STR_FIELDS = ("text", "user", "thread_ts", "type", "subtype", "team", "bot_id")


def clean_message(msg: dict) -> dict:
    """The message with every field it is read by of the type Slack gives it: a number as text,
    a list as user or a string as user_profile (a hand-edited or corrupt export) is dropped,
    so the message reads as if the field were absent."""
    out = {k: v for k, v in msg.items() if k not in _STR_FIELDS or isinstance(v, str)}
    if not isinstance(out.get("user_profile"), dict):
        out.pop("user_profile", None)
    return out


def listed(response: Any, key: str) -> list[dict]:
    """The objects of a Web API response's list field (`members`, `channels`, `messages`):
    anything else in it (a number, a string) is skipped, as a field of the wrong type is."""
    items = response.get(key)
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def clean_messages(response: Any) -> list[dict]:
    """A Web API page's messages, each with its fields of Slack's types and a usable `ts`."""
    return [m for m in map(clean_message, listed(response, "messages")) if valid_ts(m.get("ts"))]


def ts_key(ts: str) -> tuple[int, int]:
    sec, _, frac = ts.partition(".")
    return int(sec or 0), int((frac or "0").ljust(6, "0")[:6])


_MAX_TS = 2**33  # seconds: past the year 2200, and still a date on every platform


def valid_ts(ts: Any) -> bool:
    return isinstance(ts, str) and re.fullmatch(r"\d+(\.\d+)?", ts) is not None and ts_key(ts)[0] < _MAX_TS


def is_noise(msg: dict, d: Directory) -> bool:
    if msg.get("type", "message") != "message":
        return True
    if msg.get("subtype") not in _KEPT_SUBTYPES:
        return True
    if msg.get("bot_id") or msg.get("bot_profile") or msg.get("user") in d.bots:
        return True
    return not (msg.get("text") or "").strip()


def permalink(workspace_url: str | None, channel_id: str | None, ts: str, team: str | None = None,
              thread_ts: str | None = None) -> str:
    """The URL that opens a message in Slack: a thread's parent, or, with the parent's `thread_ts`,
    a reply, in the form chat.getPermalink gives a reply (`.../p<reply ts>?thread_ts=<parent
    ts>&cid=<channel id>`), which opens the thread at that reply. Without a workspace URL, the
    thread (app.slack.com) or the channel is the nearest a link can get."""
    # ids come from the export or the API: escaped, so an odd one can never change the URL's path
    channel_id = quote(channel_id, safe="") if channel_id else None
    root = thread_ts or ts
    if workspace_url and channel_id:
        url = f"{workspace_url.rstrip('/')}/archives/{channel_id}/p{ts.replace('.', '')}"
        return url if root == ts else f"{url}?thread_ts={root}&cid={channel_id}"
    if team and channel_id:
        return f"https://app.slack.com/client/{quote(team, safe='')}/{channel_id}/thread/{channel_id}-{root}"
    if channel_id:
        return f"https://slack.com/app_redirect?channel={channel_id}"
    return f"slack:{root}"


def _title(first_text: str, channel: str, date: str) -> str:
    line = next((ln.strip() for ln in first_text.splitlines() if ln.strip()), "")
    if not line:
        return f"#{channel} thread, {date}"
    first_sentence = re.split(r"(?<=[.?!])\s+", line, maxsplit=1)[0]
    if 20 <= len(first_sentence) <= _TITLE_CHARS:
        return first_sentence
    if len(line) <= _TITLE_CHARS:
        return line
    cut = line[:_TITLE_CHARS].rsplit(" ", 1)[0]
    return (cut or line[:_TITLE_CHARS]).rstrip(" ,;:") + " ..."


def load_slack_export(source: SourceConfig, report: LoadReport, *, store: str | None = None) -> Iterator[Document]:
    """Documents for every thread of every channel the source may read (`_readable_channels`),
    in channel and time order; `include`/`exclude` globs match `<channel>/<date>.json`."""
    try:
        tree = _Tree(source.root())
    except ExportError as e:
        raise ExportError(f"source {source.name!r}: {e}") from None
    for name, why in tree.skipped:
        report.skip(name, why)
    try:
        files = tree.files()
        meta = _metadata(tree, files, report)
        d, listed = _directory(meta, report)
        folders = sorted({rel.split("/")[0] for rel in files if rel.count("/") == 1})
        readable = _readable_channels(source, report, d, _channel_kinds(meta), folders)
        by_channel: dict[str, list[str]] = {}
        for rel in files:
            parts = rel.split("/")
            if len(parts) != 2 or not parts[1].endswith(".json") or parts[0] not in readable:
                continue
            if not _DAY_FILE.match(parts[1]):
                report.skip(rel, "not a day file (<channel>/<YYYY-MM-DD>.json)")
                continue
            if (source.include and not glob_match(rel, source.include)) or \
                    (source.exclude and glob_match(rel, source.exclude)):
                report.left_out += 1
                continue
            by_channel.setdefault(parts[0], []).append(rel)
        if listed:  # else channels.json's own note says it for every channel
            for channel in sorted(set(by_channel) - set(d.channel_ids)):
                report.note(f"{channel}/", f"not in channels.json or groups.json: {LINKS_LOST}")
        for channel in sorted(by_channel):
            yield from _channel_documents(source, report, tree, d, channel, by_channel[channel])
    finally:
        tree.close()


def _read_day(tree: _Tree, rel: str, report: LoadReport) -> list[dict] | None:
    data = _load_json(tree, rel, report)
    if data is None:
        return None
    if not isinstance(data, list):
        report.skip(rel, f"expected a list of messages, got {type(data).__name__}")
        return None
    # A message without a timestamp can't be placed in a thread or linked to; the others of
    # the day still can, so only the odd ones are left out (and counted in the report).
    good = [m for m in data if isinstance(m, dict) and valid_ts(m.get("ts"))]
    if len(good) < len(data):
        report.skip(rel, f"{len(data) - len(good)} of {len(data)} messages left out: no valid 'ts'")
    return [clean_message(m) for m in good]


def _channel_documents(
    source: SourceConfig, report: LoadReport, tree: _Tree, d: Directory, channel: str, day_files: list[str]
) -> Iterator[Document]:
    # Replies can sit in later day files than their parent: group across the whole channel.
    messages: dict[str, dict] = {}
    for rel in sorted(day_files):
        day = _read_day(tree, rel, report)
        for msg in day or []:
            if not is_noise(msg, d):
                messages.setdefault(msg["ts"], msg)
    threads: dict[str, list[dict]] = {}
    for msg in messages.values():
        root = msg.get("thread_ts") if valid_ts(msg.get("thread_ts")) else msg["ts"]
        threads.setdefault(root, []).append(msg)
    channel_id = d.channel_ids.get(channel)
    for root in sorted(threads, key=ts_key):
        report.documents += 1
        yield thread_document(source, channel, channel_id, root, threads[root], d)


def thread_date(source_id: str) -> str | None:
    """The UTC day a Slack thread was started ("2023-10-21"), read from its source id
    (`<source name>:<channel>/<root ts>`, as thread_document makes it for the slack_export and the
    slack_api sources alike); None for an id of another shape.

    The answer prompt dates each Slack source with it, so the model can weigh a 2020 answer against
    the current docs; the id is enough, so an index built before needs no re-ingest. The shape alone
    cannot tell a docs page `releases/1.10` from a thread: ask only for a source of kind "slack"."""
    _, sep, locator = source_id.partition(":")
    channel, slash, root = locator.rpartition("/")
    if not (sep and slash and channel) or "/" in channel or not valid_ts(root):
        return None
    return datetime.fromtimestamp(ts_key(root)[0], tz=timezone.utc).strftime("%Y-%m-%d")


def thread_document(
    source: SourceConfig, channel: str, channel_id: str | None, root: str, messages: list[dict], d: "Directory"
) -> Document:
    """One thread (parent + replies, noise already dropped) as one Document.

    The slack_api source renders threads with this too, so an exported thread and the same
    thread read through the Web API give the same text, title and URL.
    """
    msgs = sorted(messages, key=lambda m: ts_key(m["ts"]))
    lines = []
    for m in msgs:
        author = d.user(m.get("user", ""), m.get("user_profile")) or "unknown"
        # blank lines separate messages in the document text (the chunker splits there)
        body = re.sub(r"\n\s*\n", "\n", render_markup(m.get("text", ""), d).strip())
        lines.append(f"{author}: {body}")
    date = datetime.fromtimestamp(ts_key(root)[0], tz=timezone.utc).strftime("%Y-%m-%d")
    # Each message's own link, in text order: a chunk of a long thread links the message it starts
    # with, and a thread whose parent is deleted (a tombstone) or missing links its first reply,
    # never a message that is gone. The chunker reads them (ingest/chunking.py).
    urls = [permalink(source.workspace_url, channel_id, m["ts"], msgs[0].get("team"), root) for m in msgs]
    title = _title(render_markup(msgs[0].get("text", ""), d), channel, date)
    thread = f"#{channel} thread, {date}"
    if msgs[0]["ts"] != root and title != thread:  # a reply is first: not the question, nor its title
        title = f"{thread}: {title}"
    # valid Unicode: Slack's JSON can spell half an emoji ("\\ud83d" alone), which no UTF-8
    # writer (the slack_api snapshot, the chunk cache, the tokenizer) accepts
    return valid_document(Document(
        source=source.name,
        locator=f"{channel}/{root}",
        kind="slack",
        title=title,
        url=urls[0],
        text="\n\n".join(lines),
        meta={"channel": channel, "channel_id": channel_id, "thread_ts": root,
              "reply_count": len(msgs) - 1, "date": date, "message_urls": urls},
    ))
