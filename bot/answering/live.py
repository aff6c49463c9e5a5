"""What an answer looks like while the model is still writing it.

A streamed answer is shown to people before it is finished, so the text shown must follow
the same citation rules as the final text (`process_citations`: only markers of given
sources, renumbered by first use, made-up links reduced to their words). Cleaning every
growing prefix with that one function keeps the two consistent: what was shown is, in all
but rare cases, the start of the final text, and the caller can tell when it is not.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

from .budget import Source
from .citations import answer_reader, link_key, process_citations, sources_list_start, split_code
from .types import Citation

from flytegpt.ingest.models import strip_controls

Stage = Literal["searching", "writing"]
# Slack's link forms <url> and <url|label> (a label may hold spaces), and bare URLs, which
# Slack's Markdown makes live by itself; a bare URL starts after a space or punctuation that
# is not part of a Markdown link, and does not end with the sentence's punctuation.
_AUTOLINK = re.compile(r"<([a-z][a-z0-9+.-]{1,31}:[^<>\s|]+|[^<>\s@|!#]+@[^<>\s|]+)(?:\|([^<>]*))?>", re.I)
_BARE_URL = re.compile(r"(?<![\w`<\[/@.:|-])(?<!\]\()(?:https?://|www\.)[^\s<>`()\[\]]*[^\s<>`()\[\].,;:!?'\"*_~]", re.I)
# the end of a growing text that may still become a bare URL: "ht", "https:/", "www", "https://x.o"
_URL_BEING_WRITTEN = re.compile(r"(?:^|[^\w])((?:h(?:t(?:t(?:p(?:s?(?::(?:/(?:/\S*)?)?)?)?)?)?)?|w(?:w(?:w(?:\.\S*)?)?)?))$", re.I)
# what may still become one: "<", "<https:", "<security@evil"
_AUTOLINK_START = re.compile(r"<(?:[A-Za-z][A-Za-z0-9+.-]*(?::[^<>]*)?|[^<>\s@|!#]+(?:@[^<>\s|]*)?)?")
# Markdown link syntax left after the rules above ([x](HTTPS://…) over two lines, [[x]](…), a
# reference definition "[x]: https://…"): "](" and "]:" get a zero-width space between them, so no
# Markdown reader makes a link of it, unless the "](" leads to a given source's URL.
_LINK_TARGET = re.compile(r"\]\(\s*<?([^\s()<>]*)")
_LINK_DEFINITION = re.compile(r"\](?=:)")
_ZWSP = "\u200b"
# Control characters (but tab and newline) and the C1 set: a model echoing binary or terminal
# escapes shows nothing useful with them, and an answer of nothing else is an empty answer.


def clean_answer(raw: str, sources: Sequence[Source]) -> tuple[str, list[Citation]]:
    """The model's Markdown made safe to show: valid Unicode without control characters,
    `process_citations`, and links (`<https://…>`, `<https://…|label>`, `<mailto:…>`, bare
    `https://…` and `www.…`) live only when they point at a given source; any other is shown
    as code (after its label), which Slack never turns into a link. Code is left as written.
    """
    text, citations = process_citations(strip_controls(raw), sources)
    known = {link_key(s.url) for s in sources if s.url}

    def unlink(m: re.Match) -> str:
        url, label = m.group(1), (m.group(2) or "").strip()
        if link_key(url) in known:
            return m.group(0)
        return f"{label} (`{url}`)" if label else f"`{url}`"

    def unlink_bare(m: re.Match) -> str:
        return m.group(0) if link_key(m.group(0)) in known else f"`{m.group(0)}`"

    def defuse(m: re.Match) -> str:
        target = m.group(1)
        return m.group(0) if target and link_key(target) in known else "]" + _ZWSP + m.group(0)[1:]

    def safe(seg: str) -> str:
        # "https&#58;//x" is a URL to a Markdown reader, not to the rules below: entities decoded first
        seg = html.unescape(seg) if "&" in seg else seg
        seg = _LINK_DEFINITION.sub("]" + _ZWSP, _LINK_TARGET.sub(defuse, _AUTOLINK.sub(unlink, seg)))
        return _BARE_URL.sub(unlink_bare, seg)

    parts = split_code(text)
    shown = "".join(seg if code else safe(seg) for code, seg in parts)
    # What was taken for code is left as written. Where it holds link syntax, a CommonMark reader
    # has the last word: text that only looked like code to split_code (an escaped backtick, a
    # fence closed by an indented line) must not carry a live link.
    if any(code and _LINK_SYNTAX.search(seg) for code, seg in parts) and _foreign_links(shown, known):
        shown = _defuse_everywhere(shown, known)
    return shown, citations


# What a link needs: "](" (inline), "]:" (a reference definition), "<scheme:" or "<x@y" (autolink),
# a bare "://" or "www." (GFM's autolinks)
_LINK_SYNTAX = re.compile(r"\]\(|\]:|<[A-Za-z]|<[^<>\s@]+@|://|www\.", re.I)
_ANY_URL = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>()\[\]`]*", re.I)
_AUTOLINK_OPEN = re.compile(r"<(?=[A-Za-z][A-Za-z0-9+.-]{1,31}:|[^<>\s@]+@)")


def _foreign_links(markdown: str, known: set[str]) -> bool:
    """Does a CommonMark reader (plus GFM's bare-URL autolinks, in its text) find a link that is
    not a given source's? markdown-it, as the posted path renders (bot/slack/render.py)."""
    def targets(tokens) -> Iterator[str]:
        for tok in tokens:
            if tok.type in ("link_open", "image"):
                yield str(tok.attrs.get("href") or tok.attrs.get("src") or "")
            elif tok.type == "text":
                yield from (m.group(0) for m in _ANY_URL.finditer(tok.content))
            if tok.children:
                yield from targets(tok.children)

    return any(link_key(t) not in known for t in targets(_markdown_reader().parse(markdown)))


@functools.cache
def _markdown_reader():
    """The answer's reader (citations.answer_reader), made once, not per check."""
    return answer_reader()


def _defuse_everywhere(markdown: str, known: set[str]) -> str:
    """Every link form split by a zero-width space, code included, but the sources' own links: the
    last resort for text whose code a CommonMark reader reads otherwise than split_code."""
    def target(m: re.Match) -> str:
        return m.group(0) if m.group(1) and link_key(m.group(1)) in known else "]" + _ZWSP + m.group(0)[1:]

    def url(m: re.Match) -> str:
        if link_key(m.group(0)) in known:
            return m.group(0)
        return m.group(0).replace("://", ":" + _ZWSP + "//", 1).replace("www.", "www" + _ZWSP + ".", 1)

    markdown = _LINK_DEFINITION.sub("]" + _ZWSP, _LINK_TARGET.sub(target, markdown))
    return _ANY_URL.sub(url, _AUTOLINK_OPEN.sub("<" + _ZWSP, markdown))


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
    turn out to be a link label; an open `<` may become an autolink, and a last word that
    starts like a URL may become a bare one; a source list of the model's own waits for the
    end. They wait for the next piece.
    """
    raw = raw[: sources_list_start(raw)]
    lt = raw.rfind("<")
    if lt != -1 and _AUTOLINK_START.fullmatch(raw[lt:]):
        raw = raw[:lt]
    url = _URL_BEING_WRITTEN.search(raw)
    if url:
        raw = raw[: url.start(1)]
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


CLEAN_EVERY = 64  # characters of model text between two cleaning passes of a streamed answer ...
CLEAN_FRACTION = 48  # ... or a 48th of the text so far, when that is more (each pass reads it all)


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
        self._cleaned = 0  # len(raw) when it was last cleaned
        self.passes = 0  # cleaning passes so far

    def feed(self, piece: str) -> str:
        self.raw += piece
        if self.diverged:
            return ""
        # Each pass cleans the whole text so far: once per model token, a 12,000-character answer
        # took 4 s of CPU when measured. The first text goes out at once; then a pass per
        # CLEAN_EVERY characters, or per 48th of the text (250 characters at 12,000), both at most
        # what the stream sends per Slack call (stream.MIN_CHARS, 256): the passes' cost grows
        # with the text's length, not its square (1.05 -> 0.48 s of CPU at 12,000 characters, AMD EPYC).
        # Nothing shown yet (an answer that opens with a marker its sentence's end decides, "[#2] ...",
        # held back until then): a pass per piece only for the first CLEAN_EVERY characters, so a
        # long first sentence is not cleaned once per token.
        if ((self.shown or len(self.raw) > CLEAN_EVERY)
                and len(self.raw) - self._cleaned < max(CLEAN_EVERY, len(self.raw) // CLEAN_FRACTION)):
            return ""
        self._cleaned = len(self.raw)
        return self._advance(self.raw[: _stable_end(self.raw)])

    def flush(self) -> str:
        """At the end of the stream: the rest of the final text, held back so far because it
        might still have grown into a link or a citation ("" once diverged)."""
        return "" if self.diverged else self._advance(self.raw)

    def _advance(self, raw: str) -> str:
        self.passes += 1
        text, _ = clean_answer(raw, self.sources)
        if not text.startswith(self.shown):
            self.diverged = True
            return ""
        new, self.shown = text[len(self.shown):], text
        return new
