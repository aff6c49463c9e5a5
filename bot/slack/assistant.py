"""The assistant side panel (Slack's "Agents & AI Apps"): one more surface over the same answers.

Bolt's `Assistant` middleware recognises the panel's events and hands them here:

- `assistant_thread_started`: the user opened the panel; it offers the suggested prompts
  of `[bot] suggested_prompts` (none by default for a project other than Flyte);
- a user message in the panel's thread (a DM thread): a question like any other
  (de-duplicated, rate limited, answered on the answer pool, streamed), with a status line
  ("is searching the docs…") instead of the 👀 reaction and the first question as the
  thread's title;
- `assistant_thread_context_changed`: the channel the user is looking at; kept in memory
  per thread (Bolt's default would write it into a message's metadata with chat.update,
  a Slack write inside the listener and a conflict with a message still streaming).

Like every listener here, these do no I/O themselves: Slack calls go to the side pool.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from slack_bolt import Assistant

from .history import question_text
from .question import Question

if TYPE_CHECKING:
    from flytegpt.ingest.config import Config

    from .routing import EventRouter
    from .workers import WorkerPool

log = logging.getLogger(__name__)

TITLE_CHARS = 80
_KEEP_THREADS = 1000  # contexts and titles remembered (oldest forgotten first)


class _Recent(OrderedDict):
    """A small LRU: what the panel told us about its most recent threads."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _KEEP_THREADS:
            self.popitem(last=False)


def _title(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


class AssistantPanel:
    """The panel's listeners; `assistant` is the Bolt middleware to `app.use`."""

    def __init__(self, config: "Config", router: "EventRouter", side: "WorkerPool", *, bot_user_id: str) -> None:
        self.config, self.router, self.side, self.bot_user_id = config, router, side, bot_user_id
        self.contexts: _Recent = _Recent()  # thread_ts -> {"channel_id", "team_id", ...}
        self._titled: _Recent = _Recent()
        self.assistant = Assistant(logger=logging.getLogger("slack_bolt.assistant"))
        self.assistant.thread_started(self.on_thread_started)
        self.assistant.thread_context_changed(self.on_context_changed)
        self.assistant.user_message(self.on_user_message)

    def on_thread_started(self, payload: dict, set_suggested_prompts: Callable[..., Any]) -> None:
        self._remember_context(payload)
        prompts = [{"title": p, "message": p} for p in self.config.bot.suggested_prompts]
        if prompts:
            self.side.submit(self._quietly, set_suggested_prompts, "suggested prompts", prompts=prompts)

    def on_context_changed(self, payload: dict) -> None:
        self._remember_context(payload)

    def _remember_context(self, payload: dict) -> None:
        """The channel the user is looking at, per panel thread (a field of the wrong type: ignored)."""
        thread = payload.get("assistant_thread")
        if isinstance(thread, dict) and isinstance(thread.get("thread_ts"), str):
            context = thread.get("context")
            self.contexts.remember(thread["thread_ts"], context if isinstance(context, dict) else {})

    def on_user_message(self, body: dict, payload: dict, set_title: Callable[..., Any]) -> None:
        event = payload
        channel, ts, thread = event.get("channel"), event.get("ts"), event.get("thread_ts")
        user = event.get("user")
        if not (isinstance(channel, str) and isinstance(ts, str) and isinstance(thread, str) and user) \
                or user == self.bot_user_id or event.get("subtype") not in (None, "file_share"):
            return
        text = question_text(event.get("text"), self.bot_user_id)
        q = Question("assistant", text, channel, user, ts, thread_ts=thread, history_root=thread,
                     team=event.get("user_team") or event.get("team"))
        if thread not in self._titled and text.strip():
            self._titled.remember(thread, True)
            self.side.submit(self._quietly, set_title, "title", _title(text))
        self.router.accept_question(body, event, q)

    @staticmethod
    def _quietly(call: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> None:
        """A courtesy call (prompts, title): a failure is logged, never raised."""
        try:
            call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            log.info("assistant %s failed", what, extra={"error": str(e)})
