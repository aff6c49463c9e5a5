"""A traceback or a log pasted into a question: what of it is searched, and what the model reads.

Pasting the error is how people ask in Flyte's support channels. A Python traceback
is mostly frames of flytekit's own code (`site-packages/flytekit/core/promise.py ... __call__`):
searched as written, those frames found the functions they name (`Task.sandbox_execute`,
`entrypoint._dispatch_execute`), not the error. And a 300-line trace is far over
`[answer] max_question_chars`, so it was refused outright.

So a question holding a pasted traceback (or a block of log lines) is read in two ways:

- searched (`search_text`): the asker's own words, the error at the trace's end (the exception
  line(s); of a chained trace also the first exception, its cause) and the frames of the
  asker's own code (not site-packages or the standard library), which name what failed; all of
  it within `[answer] max_question_chars`, and of a paste where none of that was found, its
  first and last lines (`clip_ends`), never the whole 40,000 characters;
- read by the model (`fit_question`): the question as typed when it fits the limit; else the
  asker's words as typed with each pasted block cut to its head and its last lines (the error),
  plus the asker's own frames, and a marker saying how many lines were cut.

Everything here is linear in the text: a message can hold Slack's 40,000 characters, and it is
read before anything else happens to it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Sequence

from flytegpt.ingest.config import AnswerConfig

# The longest paste read at all: Slack keeps at most this much of a message's text, so no asker can
# send more; a longer "question" (bulk Q&A, the CLI) is refused like any question over the limit.
PASTE_MAX_CHARS = 40_000
# What a question is searched with at most when the caller names no limit: `[answer] max_question_chars`'s
# default. The searched text is logged (`standalone_question`) and may go to the model (the rewrite).
SEARCH_MAX_CHARS: int = AnswerConfig.model_fields["max_question_chars"].default
# Room a pasted block needs at least: its error and a few lines. A question whose own words leave
# less is refused as too long (it needs the asker to shorten their words, not the trace).
_MIN_BLOCK_CHARS = 500
_HEAD_LINES = 3  # a trace's first lines: "Traceback (most recent call last):", the outermost frame
_LINE_CHARS = 400  # a kept line longer than this is cut (a DataFrame's repr in an error message)
_ERROR_LINES, _ERROR_CHARS = 8, 1200  # what of the error is searched
_OWN_FRAMES = 3  # the asker's innermost frames searched
_CUT = "[... {n} lines cut ...]"

_TRACEBACK = "Traceback (most recent call last)"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
_PY_FRAME = re.compile(r'\s*File "([^"\n]*)", line \d+(?:, in (\S+))?')
# rich's boxed traceback (pyflyte prints these): "│ /usr/lib/python3.10/site-packages/x.py:572 in call │"
_RICH_FRAME = re.compile(r"\s*[│|]\s*(\S+\.py):\d+ in (\S+)")
_BOX = ("│", "╭", "╰", "|")
# Paths of code that is not the asker's: installed packages and the standard library.
_LIBRARY = re.compile(r"site-packages|dist-packages|[/\\]lib[/\\]python\d|[/\\]lib64[/\\]python\d|"
                      r"[/\\]Lib[/\\]|^<frozen |^<string>$|^<stdin>$")
# One line of a log: a timestamp or a level first, a JSON log record, a Java/JS or Go stack frame.
_LOG_LINE = re.compile(
    r"\s*(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}"  # 2024-05-01 12:00:01, 2024-05-01T12:00:01Z
    r"|\[?\d{1,2}:\d{2}:\d{2}\b"  # 12:00:01
    r"|[IWEF]\d{4} \d{2}:\d{2}"  # glog (flytepropeller): E0501 12:00:01.123456
    r"|\[?(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL|PANIC)\b"
    r"|\{\s*\"(?:level|severity|ts|time|timestamp|msg|message)\""
    r"|at [\w$.<>/]+\("  # a Java or JavaScript frame
    r"|goroutine \d+ \["  # a Go panic
    r")")
_ERROR_WORD = re.compile(r"Error|Exception|ERROR|FATAL|CRITICAL|PANIC|panic:|[Ff]ail(?:ed|ure)|OOMKilled|[Ee]xit code")


@dataclass
class Block:
    """One pasted traceback or log: its lines, and which of them are its error and the asker's frames."""

    kind: str  # "traceback" or "log"
    lines: list[str]
    errors: list[int] = field(default_factory=list)  # line numbers of the error (searched, always kept)
    own: list[int] = field(default_factory=list)  # line numbers of the asker's frames (and their code)


@dataclass
class Pasted:
    """A question holding pasted blocks: its parts in order, each the asker's text or a Block."""

    parts: list[str | Block]

    @property
    def blocks(self) -> list[Block]:
        return [p for p in self.parts if isinstance(p, Block)]

    @property
    def prose(self) -> str:
        """The asker's own words, the pasted blocks left out."""
        text = "".join(p for p in self.parts if isinstance(p, str))
        return "\n".join(line for line in text.replace("```", "\n").split("\n") if line.strip()).strip()


def read_paste(text: str) -> Pasted | None:
    """The question's pasted tracebacks and logs; None when it holds none (or is over PASTE_MAX_CHARS).

    A fenced block (```) is pasted when it holds a traceback or is mostly log lines; outside
    fences, a traceback runs from its "Traceback (most recent call last):" to the first blank line
    that no chained traceback follows, and a log is a run of three or more log lines."""
    if len(text) > PASTE_MAX_CHARS:
        return None
    parts: list[str | Block] = []
    segments = text.split("```")  # odd ones are inside a fence (an unclosed fence runs to the end)
    for i, segment in enumerate(segments):
        fence = "```" if i < len(segments) - 1 else ""
        if i % 2:
            body = segment.lstrip("\n")
            lead, body = segment[:len(segment) - len(body)], body.rstrip("\n")
            block = _fenced_block(body)
            if block is not None:  # the newlines after and before the fences stay the asker's
                parts.extend([lead, block, segment[len(lead) + len(body):] + fence])
                continue
            parts.append(segment + fence)
        else:
            parts.extend(_unfenced(segment))
            if fence:
                parts.append(fence)
    pasted = Pasted(_merged(parts))
    return pasted if pasted.blocks else None


def search_text(text: str, limit: int = SEARCH_MAX_CHARS) -> str:
    """What a question is searched with, within `limit` characters (`[answer] max_question_chars`): its
    own words, and of each pasted traceback or log its error and the asker's frames (`def train(...)`
    in `/home/me/wf.py`), not the library frames that fill most of a trace. The question itself when it
    holds no paste. A paste where nothing of that is found (Slack cut the trace's error off, a one-line
    "Traceback ... xxxx") is searched by its first and last lines, not whole: 40,000 characters cost
    seconds to search and were logged as the question.

    Over `limit`, each part keeps what a fair share leaves it (a short error or frame stays whole, the
    longest part is cut to its first and last lines): the asker's words, the error and the frames all
    stay searched."""
    pasted = read_paste(text)
    if pasted is None:
        return clip_ends(text, limit)
    pieces = [pasted.prose] if pasted.prose else []
    for block in pasted.blocks:
        pieces.append(_clip("\n".join(_short(block.lines[i]).strip() for i in block.errors), _ERROR_CHARS))
        pieces.extend(_frame_words(block.lines[i]) for i in block.own)
    found = list(dict.fromkeys(p for p in pieces if p))
    return fit_pieces(found, limit) if found else clip_ends(text, limit)


def clip_ends(text: str, limit: int, gap: str = "\n") -> str:
    """`text` within `limit` characters: as it is when it fits, else its first and its last lines with
    `gap` between them (a line too long for its half is cut to its start or its end). What a paste
    nothing in which was recognised most likely says sits at its ends: the command, the error."""
    if len(text) <= limit:
        return text
    room = limit - len(gap)
    if room < 2:
        return text[:max(limit, 0)]
    end = room // 2
    if text[end:end + 1] != "\n":  # the first half ends mid-line: back to its last line end, if any
        cut = text.rfind("\n", 0, end)
        end = cut if cut > 0 else end
    start = len(text) - (room - end)  # > end: the text is longer than the room
    if text[start - 1] != "\n":  # the second half starts mid-line: on to the next line, if any
        cut = text.find("\n", start, len(text) - 1)
        start = cut + 1 if cut >= 0 else start
    head, tail = text[:end].strip(), text[start:].strip()
    return f"{head}{gap}{tail}" if head and tail else head or tail


def fit_pieces(pieces: Sequence[str], limit: int, sep: str = "\n") -> str:
    """`pieces` joined with `sep`, within `limit` characters: a piece shorter than its fair share of the
    room stays whole, the longer ones share what is left, each cut to its first and last lines
    (`clip_ends`). A search query made of parts (the asker's words, an error, frames; a thread's
    questions and a follow-up) keeps all of them rather than the first ones alone."""
    pieces = [p for p in pieces if p]
    joined = sep.join(pieces)
    if len(joined) <= limit:
        return joined
    while pieces and limit - len(sep) * (len(pieces) - 1) < len(pieces):
        pieces.pop()  # a limit of a few characters: fewer parts
    left, count, share = limit - len(sep) * (len(pieces) - 1), len(pieces), {}
    for i in sorted(range(len(pieces)), key=lambda i: len(pieces[i])):
        share[i] = min(len(pieces[i]), left // count)
        left, count = left - share[i], count - 1
    return sep.join(c for c in (clip_ends(p, share[i]) for i, p in enumerate(pieces)) if c)


def _frame_words(line: str) -> str:
    """A frame of the asker's code as searched: its file's name and its function ("wf.py train"),
    not the path to it; the frame's code line as written."""
    m = _PY_FRAME.match(line) or _RICH_FRAME.match(line)
    if m is None:
        return _short(line).strip()
    name = re.split(r"[/\\]", m.group(1))[-1]
    return f"{name} {m.group(2) or ''}".strip()


def fit_question(text: str, limit: int) -> str | None:
    """`text` within `limit` characters for the model to read: as typed when it fits; else, when
    it holds a pasted traceback or log, the asker's words as typed with each block cut to its
    first lines, the asker's own frames and its last lines (the error), a marker where lines were
    cut. None when neither: no paste, the asker's own words alone too long, or over PASTE_MAX_CHARS."""
    if len(text) <= limit:
        return text
    pasted = read_paste(text)
    if pasted is None:
        return None
    blocks = pasted.blocks
    prose_chars = sum(len(p) for p in pasted.parts if isinstance(p, str))
    room = limit - prose_chars
    if room < _MIN_BLOCK_CHARS * len(blocks):
        return None
    sizes = [sum(len(line) + 1 for line in b.lines) for b in blocks]
    shares = iter(_shares(sizes, room))
    out = "".join(p if isinstance(p, str) else _trimmed(p, next(shares)) for p in pasted.parts)
    return out if len(out) <= limit else None


# --- reading ---------------------------------------------------------------------------------------

def _is_frame(line: str) -> bool:
    return bool(_PY_FRAME.match(line) or _RICH_FRAME.match(line))


def _fenced_block(segment: str) -> Block | None:
    lines = segment.split("\n")
    if _TRACEBACK in segment or sum(map(_is_frame, lines)) >= 2:
        return _traceback(lines)
    filled = [line for line in lines if line.strip()]
    logged = sum(bool(_LOG_LINE.match(line)) for line in filled)
    if logged >= 3 and logged * 2 >= len(filled):
        return _log(lines)
    return None  # the asker's code, YAML or output: their question, kept as typed


def _unfenced(segment: str) -> list[str | Block]:
    """A segment outside fences as the asker's text and the blocks pasted into it."""
    lines = segment.split("\n")
    spans: list[tuple[int, int, str]] = []
    i, n = 0, len(lines)
    while i < n:
        if _TRACEBACK in lines[i] or _is_frame(lines[i]):
            end = _traceback_end(lines, i)
            spans.append((i, end, "traceback"))
            i = end
        elif _LOG_LINE.match(lines[i]):
            end, logged = i, 0
            while end < n and (_LOG_LINE.match(lines[end]) or (end > i and lines[end][:1] in (" ", "\t")
                                                                and lines[end].strip())):
                logged += bool(_LOG_LINE.match(lines[end]))
                end += 1
            if logged >= 3:
                spans.append((i, end, "log"))
            i = max(end, i + 1)
        else:
            i += 1
    parts: list[str | Block] = []
    at = 0
    for start, end, kind in spans:
        if start > at:
            parts.append("\n".join(lines[at:start]) + "\n")
        block_lines = lines[start:end]
        parts.append(_traceback(block_lines) if kind == "traceback" else _log(block_lines))
        parts.append("\n" if end < n else "")
        at = end
    if at < n:
        parts.append("\n".join(lines[at:]))
    return parts


def _traceback_end(lines: list[str], start: int) -> int:
    """Where an unfenced traceback ends: at the first blank line that no chained traceback follows."""
    j, n = start, len(lines)
    while j < n:
        if lines[j].strip():
            j += 1
            continue
        k = j
        while k < n and not lines[k].strip():
            k += 1
        if k < n and (_TRACEBACK in lines[k] or lines[k].lstrip().startswith(_CHAINED)):
            j = k
            continue
        break
    return j


def _traceback(lines: list[str]) -> Block:
    """A Python traceback (plain or rich's boxes): its exception(s) and the asker's own frames."""
    block = Block("traceback", lines)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(_CHAINED)]
    sections = list(zip([0, *starts], [*starts, len(lines)]))
    errors: list[int] = []
    for k, (a, b) in enumerate(sections):
        if k in (0, len(sections) - 1):  # the cause and the final error of a chain; nothing between
            errors.extend(_exception(lines, a, b))
    block.errors = list(dict.fromkeys(errors))
    for i, line in enumerate(lines):
        m = _PY_FRAME.match(line) or _RICH_FRAME.match(line)
        if m and not _LIBRARY.search(m.group(1)):
            block.own.append(i)
            if _PY_FRAME.match(line) and i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t") \
                    and not _is_frame(lines[i + 1]) and lines[i + 1].strip():
                block.own.append(i + 1)  # the line of code that failed
    block.own = block.own[-2 * _OWN_FRAMES:]
    return block


def _exception(lines: list[str], a: int, b: int) -> list[int]:
    """Line numbers of the exception that ends lines[a:b]: the lines after its last frame and that
    frame's code (and carets), up to its end; after the header when it has no frame."""
    last = max((i for i in range(a, b) if _is_frame(lines[i]) or _TRACEBACK in lines[i]), default=None)
    if last is None:
        start = a
    else:
        start = last + 1
        while start < b and lines[start].strip() and (lines[start][:1] in (" ", "\t") or
                                                       lines[start].lstrip().startswith(_BOX)):
            start += 1  # the frame's code line, carets, rich's box
    out = [i for i in range(start, b) if lines[i].strip() and not lines[i].lstrip().startswith(_CHAINED)
           and not set(lines[i].strip()) <= set("─━═-^~╰╯│ ")]
    return out[:_ERROR_LINES]


def _log(lines: list[str]) -> Block:
    """A block of log lines: its error lines (the last few), else its last two lines."""
    errors = [i for i, line in enumerate(lines) if _ERROR_WORD.search(line)]
    if not errors:
        errors = [i for i, line in enumerate(lines) if line.strip()][-2:]
    return Block("log", lines, errors=errors[-_ERROR_LINES:])


def _merged(parts: list[str | Block]) -> list[str | Block]:
    out: list[str | Block] = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        elif not (isinstance(p, str) and not p):
            out.append(p)
    return out


# --- trimming --------------------------------------------------------------------------------------

def _short(line: str) -> str:
    return line if len(line) <= _LINE_CHARS else line[:_LINE_CHARS - 1] + "…"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _shares(sizes: list[int], room: int) -> list[int]:
    """`room` split over blocks in proportion to their sizes (a block needs no more than its size)."""
    total = sum(sizes) or 1
    return [min(s, room * s // total) for s in sizes]


def _trimmed(block: Block, budget: int) -> str:
    """The block within `budget` characters: the error, the first lines, the asker's frames, then as
    many of the last lines as fit, in their order, with a marker for each run of lines left out."""
    lines = [_short(line) for line in block.lines]
    n = len(lines)
    if sum(len(line) + 1 for line in lines) <= budget:
        return "\n".join(lines)
    head = [i for i, line in enumerate(lines) if line.strip()][:_HEAD_LINES]
    first = list(dict.fromkeys([*block.errors, *head, *block.own]))
    kept: list[int] = []  # sorted
    size = _gap_cost(n)  # everything cut: one marker
    for tail, i in [*((False, i) for i in first), *((True, i) for i in range(n - 1, -1, -1))]:
        at = bisect.bisect_left(kept, i)
        if at < len(kept) and kept[at] == i:
            continue
        left = i - (kept[at - 1] + 1 if at else 0)  # the cut lines either side of i, once i is kept
        right = (kept[at] if at < len(kept) else n) - i - 1
        grown = size + len(lines[i]) + 1 + _gap_cost(left) + _gap_cost(right) - _gap_cost(left + right + 1)
        if grown <= budget:
            kept.insert(at, i)
            size = grown
        elif tail:
            break  # the last lines are kept from the end without holes: the first that does not fit ends them
    return _render(lines, set(kept))


def _gap_cost(gap: int) -> int:
    return len(_CUT.format(n=gap)) + 1 if gap else 0


def _render(lines: list[str], kept: set[int]) -> str:
    out: list[str] = []
    gap = 0
    for i, line in enumerate(lines):
        if i in kept:
            if gap:
                out.append(_CUT.format(n=gap))
                gap = 0
            out.append(line)
        else:
            gap += 1
    if gap:
        out.append(_CUT.format(n=gap))
    return "\n".join(out)
