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
# [1]  [1, 2]  [1-3]  [1,3-4]  and the sometimes-seen [Source 1] / [source: 2]
_MARKER = re.compile(rf"\[(?:(?:source|src)s?\s*:?\s*)?({_NUM}(?:\s*[,;]\s*{_NUM})*)\](?![(:])", re.I)
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_TRAILING_SOURCES = re.compile(
    r"\n+(?:#+\s*|\*\*)?(?:sources|references|citations)(?:\*\*)?:?\s*\n(?:\s*(?:[-*]\s*)?\[?\d+[\].:)].*(?:\n|$))+\s*$",
    re.I,
)
_MAX_RANGE = 20


def _split_code(text: str) -> list[tuple[bool, str]]:
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


def process_citations(text: str, sources: Sequence[Source]) -> tuple[str, list[Citation]]:
    """Return (text with clean [n] markers, citations ordered by n)."""
    by_n = {s.n: s for s in sources}
    known_urls = {link_key(s.url) for s in sources if s.url}
    renumber: dict[int, int] = {}

    def replace(m: re.Match) -> str:
        new = []
        for n in _numbers(m.group(1)):
            if n in by_n:
                if n not in renumber:
                    renumber[n] = len(renumber) + 1
                if renumber[n] not in new:
                    new.append(renumber[n])
        return "".join(f"[{k}]" for k in sorted(new)) if new else "\x00"

    def unlink(m: re.Match) -> str:
        # A link the model made up is a broken link waiting to happen: keep only its words.
        return m.group(0) if link_key(m.group(2)) in known_urls else m.group(1)

    text = _TRAILING_SOURCES.sub("", text.rstrip())
    parts = []
    for is_code, seg in _split_code(text):
        if is_code:
            parts.append(seg)
            continue
        seg = _MD_LINK.sub(unlink, seg)
        seg = _MARKER.sub(replace, seg)
        seg = re.sub(r"[ \t]*\x00", "", seg)  # a dropped marker takes its leading space along
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
