"""The answer records and the errors a caller (CLI, Slack, Flyte) turns into replies.

Plain frozen dataclasses so the Slack layer, feedback store and bulk workflow can
serialise them without knowing anything about LangChain.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

from flytegpt.bot import messages

Mode = Literal["llm", "offline", "not_found"]
UNCITED = "uncited"  # Answer.note of a model answer that cited no source: `citations` are those it was given


def sources_heading(uncited: bool) -> str:
    """The label over an answer's sources: those it cites, or (uncited) those it was given."""
    return messages.CONSULTED_HEADING if uncited else messages.SOURCES_HEADING


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


def keep_turns(turns: Sequence[Turn], n: int) -> list[Turn]:
    """The newest `n` turns of a conversation, its first question kept in place of the oldest
    of them: a thread is about its first question, and a vague fifth follow-up ("and how do I
    test it?") has no subject once that has scrolled out."""
    turns = list(turns)
    if n <= 0:
        return []
    if len(turns) <= n:
        return turns
    if n >= 2 and turns[0].role == "user":
        return [turns[0], *turns[-(n - 1):]]
    return turns[-n:]


@dataclass(frozen=True)
class Citation:
    n: int
    title: str
    url: str
    source_id: str
    # The UTC day a Slack thread was started ("2023-10-21"), None for docs and code: an answer
    # resting on a 2021 thread may describe behaviour that changed since, so every place a user
    # sees the source shows it (citations.cite_source sets it; `--json` and the feedback store keep it).
    date: str | None = None

    @property
    def date_note(self) -> str:
        """What goes after the title wherever the source is listed: " (2023-10-21)"; "" for a source
        without a date and for a thread whose title holds the day already ("#help thread,
        2023-10-21", the title of a thread whose first message has no words), never shown twice."""
        if not self.date or self.date in (self.title or ""):
            return ""
        return f" ({self.date})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Answer:
    question: str
    standalone_question: str
    text: str  # Markdown with [n] markers that match `citations`
    citations: list[Citation]  # ordered by n, only cited sources
    mode: Mode
    index_version: str | None
    note: str | None = field(default=None)  # e.g. why a model answer fell back to quoting

    @property
    def uncited(self) -> bool:
        """The model cited nothing: an unsourced answer, or a "the sources do not say" in its words."""
        return self.note == UNCITED

    @property
    def sources_heading(self) -> str:
        return sources_heading(self.uncited)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "answer": self.text,
            "mode": self.mode,
            "citations": [c.to_dict() for c in self.citations],
            "index_version": self.index_version,
            "note": self.note,
        }


class QuestionRejected(ValueError):
    """The question is empty or too long; str(e) is safe to show to the user."""


class IndexNotReady(RuntimeError):
    """No index is loaded yet (first ingest not done, or still loading)."""

    def __init__(self, message: str = messages.INDEX_NOT_READY) -> None:
        super().__init__(message)


class ModelUnavailable(RuntimeError):
    """The chat model failed after bounded retries.

    `related` lets the caller still point the user at the best sources found, so an
    outage degrades to links instead of an error. str(e) never contains the
    provider's raw error text (it can echo keys or internal URLs); that is in `detail`.
    """

    def __init__(self, message: str, related: list[Citation] | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.related: list[Citation] = list(related or [])
        self.detail = detail
