"""A question on its way from a Slack event to its answer: who asked, where, and where to reply.
What of a user's text counts as the question is flytegpt.bot.question_text's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Surface = Literal["mention", "dm", "followup", "command", "assistant"]


@dataclass
class Question:
    """What routing hands to the answer job, and delivery needs to reply in the right place."""

    surface: Surface
    text: str
    channel: str
    user: str
    ts: str | None = None  # the user's message
    # where the answer and every notice about it go (None: the top level, e.g. a DM whose answer is
    # posted whole; a DM's streamed answer is a thread reply under the question, and so are its notices)
    thread_ts: str | None = None
    history_root: str | None = None  # the thread whose messages are the history
    response_url: str | None = None  # slash commands
    team: str | None = None  # the asker's workspace (a streamed reply in a channel names its recipient)
    # Slack's channel_type ("channel", "group", "mpim", "im") when the event told it; None: the answer
    # job asks Slack (ThreadHistory.channel_type). The report leaves out questions of private ones.
    channel_type: str | None = None
    received: float = field(default_factory=time.monotonic)  # the event's arrival: the answer's deadline counts from it
    # set by the answer job when the question waited past its deadline and got the busy notice instead of an
    # answer: like a question refused at the door, it gives its asker's question a minute back when its job ends
    refused_late: bool = False
