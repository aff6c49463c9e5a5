"""[bot] allowed_channels -> the channel ids the bot answers in, resolved once at start.

Entries are channel ids (C0123ABCD: taken as they are, no Slack call) or channel names (with or
without '#'), looked up with conversations.list. The lookup fails closed: a name Slack does not
know (a typo, a private channel the bot is not in) or a lookup Slack refuses (missing_scope,
still ratelimited after the client's retries, no network) stops the start with one line that
says what to do. An allow list that could not be resolved never becomes "every channel".

Public channels are looked up first (scope channels:read); only names not found there are
looked for among private channels (groups:read), so an app installed without groups:read still
resolves public channel names.

The result also says which channels are known to be public: the "only in these channels" notice
links those only, as anyone who mentions the bot elsewhere reads it (a private channel's link
tells a non-member it exists). A name found among public channels is public; a
name found among private ones is not, nor is an id given as it is (nothing was asked about it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError, SlackClientError

from flytegpt.ingest.config import ConfigError, channel_id
from flytegpt.ingest.slack_client import RATE_LIMIT_RETRIES, SERVER_ERROR_RETRIES, TRANSIENT_ERRORS, pages

from .client import SlackUnreachable

if TYPE_CHECKING:
    from slack_sdk import WebClient

__all__ = ["AllowedChannels", "AllowedChannelsError", "resolve_allowlist"]

log = logging.getLogger(__name__)

# conversations.list `types`, in lookup order, with the bot scope each needs
_KINDS = (("public_channel", "channels:read"), ("private_channel", "groups:read"))
_IDS_HINT = "give channel ids such as C0123ABCD instead of names (they need no lookup)"


class AllowedChannelsError(ConfigError):
    """[bot] allowed_channels could not be resolved to channel ids: the bot does not start."""


class AllowedChannels(frozenset):
    """The channel ids the bot answers in (a frozenset of them), plus `public`: those of them known
    to be public channels, the only ones a notice to anyone may name."""

    public: frozenset[str]

    def __new__(cls, ids: "frozenset[str] | set[str]", public: "frozenset[str] | set[str]" = frozenset()
                ) -> "AllowedChannels":
        self = super().__new__(cls, ids)
        self.public = frozenset(public) & frozenset(ids)
        return self


def resolve_allowlist(client: "WebClient", entries: list[str]) -> AllowedChannels | None:
    """The channel ids the bot may answer in; None when `entries` is empty (every channel).

    Raises AllowedChannelsError (or SlackUnreachable) when a name cannot be resolved: never an
    empty or partial set standing for names that were configured."""
    if not entries:
        return None
    ids: set[str] = set()
    wanted: dict[str, str] = {}  # name as Slack writes it (lower case) -> the entry as configured
    for e in entries:
        if (cid := channel_id(e)) is not None:
            ids.add(cid)
        else:
            wanted.setdefault(e.strip().lstrip("#").strip().lower(), e)
    if not wanted:
        return AllowedChannels(ids)  # no lookup: nothing is known to be public
    found: dict[str, dict] = {}
    public: set[str] = set()
    for kind, scope in _KINDS:
        missing = set(wanted) - set(found)
        if not missing:
            break
        got = _look_up(client, kind, scope, missing, [wanted[n] for n in wanted if n in missing])
        found.update(got)
        if kind == "public_channel":
            public.update(c["id"] for c in got.values() if c.get("is_private") is not True)
    unresolved = [wanted[n] for n in wanted if n not in found]
    if unresolved:
        raise AllowedChannelsError(
            f"[bot] allowed_channels: no channel named {', '.join(unresolved)} in this Slack workspace "
            "(a typo? a private channel is found only when the bot is a member of it and the app has the "
            f"groups:read scope); fix the name, or {_IDS_HINT}")
    outside = sorted(f"#{n}" for n, c in found.items() if c.get("is_member") is False)
    if outside:
        log.warning("the bot is not a member of allowed channels: it gets no questions there until invited "
                    "(/invite @FlyteGPT)", extra={"channels": outside})
    resolved = {n: c["id"] for n, c in found.items()}
    log.info("allowed channels resolved", extra={"channels": resolved})
    return AllowedChannels(ids | set(resolved.values()), public)


def _look_up(client: "WebClient", kind: str, scope: str, names: set[str], as_given: list[str]) -> dict[str, dict]:
    """name -> channel for the `names` among channels of `kind`, paging until all are found."""
    found: dict[str, dict] = {}
    what = f"the channel name(s) {', '.join(as_given)}"
    try:
        first = client.conversations_list(types=kind, limit=1000)
        for page in pages(first, on_repeat=lambda c: log.warning("conversations.list repeated a cursor: "
                                                                  "stopped paging", extra={"cursor": c})):
            for channel in page.get("channels") or []:
                name = channel.get("name") if isinstance(channel, dict) else None
                if isinstance(name, str) and name.lower() in names and isinstance(channel.get("id"), str):
                    found.setdefault(name.lower(), channel)
            if len(found) == len(names):
                break
    except SlackApiError as e:
        raise AllowedChannelsError(f"[bot] allowed_channels: cannot look up {what}: "
                                   f"{_refusal(e, kind, scope)}") from None
    except OSError as e:  # no network, a proxy (after the client's retries)
        reason = getattr(e, "reason", None) or e.strerror or e
        raise SlackUnreachable(f"[bot] allowed_channels: cannot look up {what}: cannot reach Slack's Web API "
                               f"at {client.base_url}: {reason}; start again when it is reachable, "
                               f"or {_IDS_HINT}") from None
    except SlackClientError as e:
        raise AllowedChannelsError(f"[bot] allowed_channels: cannot look up {what}: {type(e).__name__}: {e}; "
                                   f"{_IDS_HINT}") from None
    return found


def _refusal(e: SlackApiError, kind: str, scope: str) -> str:
    """Slack's answer to conversations.list and what to do about it, for the error line."""
    resp = e.response
    data = resp.data if isinstance(resp.data, dict) else {}  # a body that was no JSON object: its status
    error = str(data.get("error") or f"HTTP {resp.status_code}")
    said = f"Slack's conversations.list (types={kind}) answered {error}"
    if error == "missing_scope":
        needed = data.get("needed") or scope
        return (f"{said} (needed: {needed}); add the bot token scope {needed} to the Slack app (OAuth & "
                "Permissions: channels:read finds public channels, groups:read private ones) and reinstall it, "
                f"or {_IDS_HINT}")
    if error == "ratelimited" or resp.status_code == 429:
        return f"{said} after {RATE_LIMIT_RETRIES} retries; start again in a minute, or {_IDS_HINT}"
    if error in TRANSIENT_ERRORS or resp.status_code >= 500:
        return f"{said} after {SERVER_ERROR_RETRIES} retries; start again later, or {_IDS_HINT}"
    if error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"):
        return f"{said}; check SLACK_BOT_TOKEN, or {_IDS_HINT}"
    return f"{said}; {_IDS_HINT}"
