"""The answerer that needs no language model: quote the best passages, cite them.

Used when no chat endpoint is configured (`make demo`) and as the fallback when a model
returns nothing. It says plainly that it is quoting. Output is a pure function of the
question and the sources, so it is deterministic and testable.
"""

from __future__ import annotations

import re
import textwrap
from typing import Sequence

from flytegpt.ingest.keyword import words

from . import prompts
from .budget import Source
from .types import Citation

MAX_PASSAGES = 3
_PROSE_CHARS = 500  # per passage: a few sentences
_CODE_LINES = 12
_FENCE_BLOCK = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[^\n]*$", re.S | re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\[(*_])")
_RST_CODE = re.compile(
    r"^([ \t]*)\.\. (?:code-block|code|sourcecode)::[ \t]*([\w+-]*)[ \t]*\n"
    r"(?:\1[ \t]+:[\w-]+:.*\n)*"  # directive options
    r"((?:[ \t]*\n)*(?:(?:\1[ \t]+\S.*|[ \t]*)(?:\n|$))+)",
    re.M,
)


def _rst_code_to_fences(text: str) -> str:
    """reStructuredText code directives become Markdown fences, so they are quoted as code."""

    def fence(m: re.Match) -> str:
        body = textwrap.dedent(m.group(3).strip("\n"))
        return f"```{m.group(2)}\n{body}\n```\n\n"

    return _RST_CODE.sub(fence, text)


def query_terms(question: str) -> set[str]:
    """The question's topic words (the keyword index's stopwords and identifier splitting)."""
    return {w for w in words(question) if len(w) >= 3}


def _score(text: str, terms: set[str]) -> int:
    found = set(words(text))
    return sum(1 for t in terms if t in found or any(w.startswith(t) for w in found))


def _units(text: str) -> list[tuple[bool, str]]:
    """Prose paragraphs and fenced code blocks, in order."""
    units: list[tuple[bool, str]] = []
    text = _rst_code_to_fences(text)
    pos = 0
    for m in _FENCE_BLOCK.finditer(text):
        _prose_units(text[pos : m.start()], units)
        units.append((True, m.group(0)))
        pos = m.end()
    _prose_units(text[pos:], units)
    return units


def _prose_units(text: str, units: list[tuple[bool, str]]) -> None:
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para or para == "[...]":
            continue
        if len(para) <= _PROSE_CHARS:
            units.append((False, para))
            continue
        for sentence in _SENTENCE_END.split(para):
            if sentence.strip():
                units.append((False, sentence.strip()[:_PROSE_CHARS]))


def _trim_code(block: str, terms: set[str], fence: tuple[str, str] | None = None) -> str:
    lines = block.strip("\n").split("\n")
    if fence is None:
        opener, closer = lines[0], lines[-1]
        body = lines[1:-1]
    else:
        opener, closer = fence
        body = lines
    while body and not body[0].strip():
        body = body[1:]
    while body and not body[-1].strip():
        body = body[:-1]
    if len(body) > _CODE_LINES:
        best, best_score = 0, -1
        for i in range(0, len(body) - _CODE_LINES + 1):
            s = _score("\n".join(body[i : i + _CODE_LINES]), terms)
            if s > best_score:
                best, best_score = i, s
        body = body[best : best + _CODE_LINES]
    return "\n".join([opener, *body, closer])


def excerpt(source: Source, terms: set[str]) -> tuple[str, int]:
    """The few lines of a source that best match the question, as Markdown, and their overlap."""
    if source.kind == "code":
        code = _trim_code(source.text, terms, fence=(f"```{source.language}", "```"))
        return code, _score(code, terms)
    units = _units(source.text)
    if not units:
        return "", 0
    best: tuple[int, int, int] = (-1, 0, 1)  # (score, start, end)
    for i in range(len(units)):
        # a window: prose up to _PROSE_CHARS plus at most one code block (trimmed later)
        size, code, j = 0, 0, i
        while j < len(units):
            is_code, text = units[j]
            if j > i and (code if is_code else size + len(text) > _PROSE_CHARS):
                break
            code += is_code
            size += 0 if is_code else len(text)
            j += 1
        s = _score(" ".join(u[1] for u in units[i:j]), terms)
        if s > best[0]:
            best = (s, i, j)
    score, i, j = best
    while j - i > 1 and not units[j - 1][0] and re.fullmatch(r"#+\s.*", units[j - 1][1]):
        j -= 1  # a heading with nothing under it is noise
    out = []
    for is_code, text in units[i:j]:
        if is_code:
            out.append(_trim_code(text, terms))
        else:
            text = re.sub(r"^#+\s*(.*)$", r"**\1**", text, flags=re.M)  # headings read oddly in a quote
            out.append("\n".join("> " + line if line.strip() else ">" for line in text.split("\n")))
    return "\n\n".join(out), score


def offline_answer(question: str, sources: Sequence[Source], header: str = prompts.OFFLINE_HEADER) -> tuple[str, list[Citation]]:
    """Quote the best 2-3 sources. Returns (Markdown text, citations)."""
    terms = query_terms(question)
    parts = [header]
    citations = []
    bar = 0
    for s in list(sources)[:MAX_PASSAGES]:
        n = len(citations) + 1
        body, overlap = excerpt(s, terms)
        if not body or (citations and terms and overlap < bar):
            continue  # after the best source, only passages about as close to the question
        if not citations:
            bar = max(1, (overlap + 1) // 2)
        parts.append(f"**{s.title}** [{n}]\n\n{body}")
        citations.append(Citation(n=n, title=s.title, url=s.url, source_id=s.source_id))
    return "\n\n".join(parts), citations
