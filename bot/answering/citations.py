"""Make a model's citations trustworthy before anyone sees them.

Models cite sources that don't exist, cite ranges ("[1-3]"), lists ("[1, 2]"), and
sometimes add their own link lists. We keep only markers that point at a source that
was in the prompt, renumber them by first use, and build the citation list from our
own records, so every number shown resolves to a real title and URL.
"""

from __future__ import annotations

import re
from typing import Sequence

from .budget import Source
from .types import Citation

_FENCE = re.compile(r"(^|\n)(```|~~~)[^\n]*\n.*?(\n\2[^\n]*(?=\n|$)|$)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_NUM = r"\d{1,3}(?:\s*[-–]\s*\d{1,3})?"
# [1]  [1, 2]  [1-3]  [1,3-4], the footnote form [^1], and the sometimes-seen [Source 1] / [source: 2]
_ONE_MARKER = rf"\[\^?(?:(?:source|src)s?\s*:?\s*)?({_NUM}(?:\s*[,;]\s*{_NUM})*)\](?![(:])"
_MARKER = re.compile(_ONE_MARKER, re.I)
# markers side by side ("[1][1]", "[2] [3]") are read as one, so a repeat shows once
_MARKER_RUN = re.compile(rf"{_ONE_MARKER}(?:[ \t]*{_ONE_MARKER})*", re.I)
# looks like a citation but names no source: [1a], [^2b]
# (?<![ \t]): a match starts where a run of spaces starts, so a long run is scanned once, not once
# per space (audit 23 F3: 40,000 spaces took 2.7 s)
_ODD_MARKER = re.compile(r"(?<![ \t])[ \t]*\[\^?\d{1,3}[a-z]\](?![(:])", re.I)
_DROPPED = re.compile(r"(?<![ \t])[ \t]*\x00")
_SUPERSCRIPT_MARKER = re.compile(r"\[\^?([⁰¹²³⁴-⁹]{1,3})\](?![(:])")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
# [label](url), [label](<url>), [label](url "title"), any case of the scheme, or //host. The label
# holds no bracket and the URL none either: "[[[[..." or "[x](http://[x](http://..." is scanned
# once, not once per bracket (audit 23 F3). What this misses, clean_answer's last pass defuses.
_MD_LINK = re.compile(
    r"\[([^\[\]\n]+)\]\(\s*<?((?:https?:)?//[^\s()<>\[\]]+)>?(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)", re.I)
# A model's own list of sources at the end, under a Sources/References heading: numbered
# items, bullets (a link or a bare title) or lines that are only a link. Our list replaces it.
_EOL = r"[ \t]*(?=\n|\Z)"
_LIST_ITEM = rf"[ \t]*(?:(?:\[?\^?\d{{1,3}}[\].:)]|[-*+•](?=\s|\Z)).*|\[[^\]\n]+\]\([^)\s]*\){_EOL}|<?https?://\S+>?{_EOL})"
_HEADING_WORDS = ("sources", "references", "citations")
_HEAD_START = r"\n[ \t]*(?:#{1,6}[ \t]*)?"
_SOURCES_HEADING = rf"{_HEAD_START}(?:\*\*|__)?[ \t]*(?:{'|'.join(_HEADING_WORDS)})[ \t]*:?[ \t]*(?:\*\*|__)?:?"
_TRAILING_SOURCES = re.compile(
    rf"{_SOURCES_HEADING}{_EOL}(?=(?:\n[ \t]*)*\n{_LIST_ITEM})(?:\n(?:{_LIST_ITEM}|[ \t]*))*\Z",
    re.I,
)
# While streaming: such a list being written (its heading, maybe half its bold, then only list
# items so far, the last line maybe unfinished), or a last line that may still become its heading
# ("\n**Sour"). Held back until it is done or turns out to be text, it is never shown and taken back.
_WORD_BEING_WRITTEN = "|".join("".join(f"{c}(?:" for c in w) + ")?" * len(w) for w in _HEADING_WORDS)
_SOURCES_BEING_WRITTEN = re.compile(
    rf"{_HEAD_START}(?:\*\*?|__?)?[ \t]*(?:{'|'.join(_HEADING_WORDS)})[ \t]*:?[ \t]*(?:\*\*?|__?)?:?[ \t]*"
    rf"(?:\n(?:{_LIST_ITEM}|[ \t]*))*(?:\n[^\n]*)?\Z"
    rf"|{_HEAD_START}(?:\*\*?|__?)?[ \t]*(?:{_WORD_BEING_WRITTEN})?\Z",
    re.I,
)
# Reference-style definitions ("[1]: https://…") and footnotes ("[^1]: …") at the end: left in,
# Markdown would resolve "[1]" against them and show a link without its brackets.
_DEFINITION_LINE = re.compile(r"\[\^?\d{1,3}\]:.*|\s*")
_MAX_RANGE = 20


def split_code(text: str) -> list[tuple[bool, str]]:
    """Segments of (is_code, text): citations inside code are code, not citations."""
    out: list[tuple[bool, str]] = []
    pos = 0
    spans = []
    for m in _FENCE.finditer(text):
        start = m.start() + len(m.group(1))
        spans.append((start, m.end()))
    for start, end in spans:
        _split_inline(text[pos:start], out)
        out.append((True, text[start:end]))
        pos = end
    _split_inline(text[pos:], out)
    return out


def sources_list_start(text: str) -> int:
    """Where a source list of the model's own may be being written at the end of a growing
    answer (len(text): none). A streamed answer holds it back: the final answer drops the list
    (`_drop_model_endings`), so showing it would mean taking it back."""
    m = _SOURCES_BEING_WRITTEN.search(text)
    return m.start() if m else len(text)


def _split_inline(text: str, out: list[tuple[bool, str]]) -> None:
    pos = 0
    for m in _INLINE_CODE.finditer(text):
        out.append((False, text[pos : m.start()]))
        out.append((True, m.group(0)))
        pos = m.end()
    out.append((False, text[pos:]))


def _numbers(body: str) -> list[int]:
    nums: list[int] = []
    for part in re.split(r"\s*[,;]\s*", body.strip()):
        m = re.fullmatch(r"(\d+)\s*[-–]\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a <= b and b - a <= _MAX_RANGE:
                nums.extend(range(a, b + 1))
        elif part.isdigit():
            nums.append(int(part))
    return nums


def link_key(url: str) -> str:
    """The form in which a model-written URL is compared with the given sources' URLs."""
    return url.split("#", 1)[0].rstrip("/")


def _drop_model_endings(text: str) -> str:
    """Without the model's own source list and reference/footnote definitions at the end.

    Our citation list replaces the model's; a definition left in would make Markdown turn
    the matching "[1]" into a link and hide its brackets (and it streams as a raw line).
    """
    while True:
        lines = text.rstrip().split("\n")
        while len(lines) > 1 and _DEFINITION_LINE.fullmatch(lines[-1]):
            lines.pop()
        shorter = _TRAILING_SOURCES.sub("", "\n".join(lines)).rstrip()
        if shorter == text:
            return text
        text = shorter


def _normalize_markers(seg: str) -> str:
    """Odd citation forms made plain: [¹] is [1]; [1a] names no source and goes."""
    seg = _SUPERSCRIPT_MARKER.sub(lambda m: f"[{m.group(1).translate(_SUPERSCRIPT_DIGITS)}]", seg)
    return _ODD_MARKER.sub("", seg)


def process_citations(text: str, sources: Sequence[Source]) -> tuple[str, list[Citation]]:
    """Return (text with clean [n] markers, citations ordered by n)."""
    by_n = {s.n: s for s in sources}
    known_urls = {link_key(s.url) for s in sources if s.url}
    renumber: dict[int, int] = {}

    def replace(run: re.Match) -> str:
        new = []
        for n in (n for m in _MARKER.finditer(run.group(0)) for n in _numbers(m.group(1))):
            if n in by_n:
                if n not in renumber:
                    renumber[n] = len(renumber) + 1
                if renumber[n] not in new:
                    new.append(renumber[n])
        return "".join(f"[{k}]" for k in sorted(new)) if new else "\x00"

    def unlink(m: re.Match) -> str:
        # A link the model made up is a broken link waiting to happen: keep only its words.
        return m.group(0) if link_key(m.group(2)) in known_urls else m.group(1)

    text = _drop_model_endings(text)
    parts = []
    for is_code, seg in split_code(text):
        if is_code:
            parts.append(seg)
            continue
        seg = _MD_LINK.sub(unlink, seg)
        seg = _MARKER_RUN.sub(replace, _normalize_markers(seg))
        seg = _DROPPED.sub("", seg)  # a dropped marker takes its leading space along
        parts.append(seg)
    clean = "".join(parts).strip()
    old_by_new = {v: k for k, v in renumber.items()}
    citations = [
        Citation(n=new, title=by_n[old].title, url=by_n[old].url, source_id=by_n[old].source_id)
        for new, old in sorted(old_by_new.items())
    ]
    return clean, citations


def source_citations(sources: Sequence[Source]) -> list[Citation]:
    return [Citation(n=s.n, title=s.title, url=s.url, source_id=s.source_id) for s in sources]
