"""What an answer looks like while the model is still writing it.

A streamed answer is shown to people before it is finished, so the text shown must follow
the same citation rules as the final text (`process_citations`: only markers of given
sources, renumbered by first use, made-up links reduced to their words). Cleaning every
growing prefix with that one function keeps the two consistent: what was shown is, in all
but rare cases, the start of the final text, and the caller can tell when it is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from .budget import Source
from .citations import _split_code, process_citations
from .types import Citation

Stage = Literal["searching", "writing"]
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^<>\s]+)>", re.I)
_AUTOLINK_START = re.compile(r"<[A-Za-z][A-Za-z0-9+.-]*(?::[^<>\s]*)?")  # what may still become one


def clean_answer(raw: str, sources: Sequence[Source]) -> tuple[str, list[Citation]]:
    """The model's Markdown made safe to show: `process_citations`, and autolinks
    (`<https://…>`, `<mailto:…>`) live only when they point at a given source; any other
    is shown as code, which Slack never turns into a link. Code is left as written.
    """
    text, citations = process_citations(raw, sources)
    known = {s.url.split("#", 1)[0].rstrip("/") for s in sources if s.url}

    def unlink(m: re.Match) -> str:
        url = m.group(1)
        return m.group(0) if url.split("#", 1)[0].rstrip("/") in known else f"`{url}`"

    return "".join(seg if code else _AUTOLINK.sub(unlink, seg) for code, seg in _split_code(text)), citations


@dataclass(frozen=True)
class Progress:
    """A step of the answer a user may want to see (a status line, a task chunk)."""

    stage: Stage
    sources: int = 0  # sources the model is reading ("writing")


@dataclass(frozen=True)
class Delta:
    """More answer text, Markdown, to append to what was shown so far."""

    text: str


def _stable_end(raw: str) -> int:
    """Where the settled part of a growing text ends.

    A trailing `[` that is not closed yet may become a citation (`[1]`), a citation
    range (`[1-3]`) or a link (`[x](url)`); a closed `[..]` at the very end may still
    turn out to be a link label; an open `<` may become an autolink. They wait for the
    next piece.
    """
    lt = raw.rfind("<")
    if lt != -1 and _AUTOLINK_START.fullmatch(raw[lt:]):
        raw = raw[:lt]
    start = raw.rfind("[")
    if start == -1:
        return len(raw)
    tail = raw[start:]
    close = tail.find("]")
    if close == -1 or close == len(tail) - 1:
        return start
    if tail[close + 1] == "(" and ")" not in tail[close + 1:]:
        return start
    return len(raw)


class LiveCitations:
    """Feeds model pieces in, gives back the text to append (already cleaned).

    `shown` is everything handed out; once a cleaned prefix no longer starts with it
    (a later piece changed the meaning of an earlier one, e.g. a code span closing
    around a marker), `diverged` is set and nothing more is handed out: the caller
    replaces the shown text with the final one.
    """

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        self.raw = ""
        self.shown = ""
        self.diverged = False

    def feed(self, piece: str) -> str:
        self.raw += piece
        if self.diverged:
            return ""
        text, _ = clean_answer(self.raw[: _stable_end(self.raw)], self.sources)
        if not text.startswith(self.shown):
            self.diverged = True
            return ""
        new, self.shown = text[len(self.shown):], text
        return new
