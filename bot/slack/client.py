"""The bot's Slack credentials: token checks that name the variable, and its WebClient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient

from flytegpt.ingest.config import ConfigError
from flytegpt.ingest.slack_client import api_base_url, make_web_client

if TYPE_CHECKING:
    from flytegpt.ingest.config import Settings

__all__ = ["SlackTokenError", "SlackUnreachable", "api_base_url", "check_tokens", "make_client", "socket_mode_handler"]


class SlackTokenError(ConfigError):
    """A Slack token is missing or malformed; the message names the variable."""


class SlackUnreachable(ConfigError):
    """Slack's Web API could not be reached at start: nothing to serve, said in one line."""


def check_tokens(settings: "Settings", *, need_app_token: bool = True) -> tuple[str, str | None]:
    """The bot and app tokens from the environment, or an error naming what is wrong."""

    def get(name: str, value: Any, prefix: str, what: str) -> str:
        token = value.get_secret_value().strip() if value is not None else ""
        if not token:
            raise SlackTokenError(f"{name} is not set: export {what} (it starts with '{prefix}')")
        if not token.startswith(prefix):
            raise SlackTokenError(f"{name} is malformed: {what} starts with '{prefix}'")
        return token

    bot = get("SLACK_BOT_TOKEN", settings.slack_bot_token, "xoxb-", "the bot token (OAuth & Permissions)")
    app = (get("SLACK_APP_TOKEN", settings.slack_app_token, "xapp-", "the app-level token with connections:write")
           if need_app_token else None)
    return bot, app


def make_client(settings: "Settings", **kwargs: Any) -> WebClient:
    """The project's WebClient (retries, timeouts: ingest/slack_client.py) with the checked bot token."""
    token, _ = check_tokens(settings, need_app_token=False)
    return make_web_client(settings, token, **kwargs)


def socket_mode_handler(app: Any, app_token: str, client: WebClient, *, ping_interval: float = 5.0) -> Any:
    """The Socket Mode connection for a Bolt app: slack_sdk's websocket-client based client.

    When Slack moves the app to a new connection (`disconnect`, refresh_requested) the SDK's
    builtin client acks the first events on the new connection only once the old one has
    closed: ~3 s in tests/bench/bench_socket_handover.py, Slack's limit for an ack; this client
    acks at once (~5 ms).
    """
    from slack_bolt.adapter.socket_mode.websocket_client import SocketModeHandler

    return SocketModeHandler(app, app_token, web_client=client, ping_interval=ping_interval)
