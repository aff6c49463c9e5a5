"""A reasoning model's thinking, told apart from its answer.

Reasoning models served without a reasoning parser (DeepSeek-R1 and its distills, QwQ, Qwen3 on
vLLM without `--reasoning-parser`, older Ollama and llama.cpp) write their thinking into the reply's
`content`, between `<think>` and `</think>` (some `<thinking>` or `<reasoning>`), before the answer.
Shown, the thinking is a monologue the asker never asked for, its `[n]`s become citations, and in the
condense and rewrite steps it replaces the question that is searched. R1's newer chat
templates open the block in the prompt, so the reply starts inside it and holds only `</think>`.

The rule, owned here and used wherever model text enters (chain.py):

- blocks at the start of the reply (after white space) are thinking, one or several;
- an opening tag at the start that is never closed: the whole reply is thinking (a model cut by
  `max_tokens` while still thinking): the answer is empty;
- a closing tag with no opening tag before it, at the start of a line and outside code: everything
  up to it was thinking (mid-sentence or in code it is an answer about the tag);
- tags later in the text (an answer explaining a prompt format, code) are left as written: models
  think first, and an answer may well be about these tags.

`strip_reasoning` applies it to a whole reply; `ReasoningFilter` to a reply as it streams in,
holding text back while it may still be thinking and releasing the answer once thinking ends.
"""

from __future__ import annotations

import re

_NAMES = r"(?:think|thinking|reasoning)"
_OPEN = re.compile(rf"<\s*({_NAMES})\s*>", re.I)
_CLOSE = re.compile(rf"<\s*/\s*({_NAMES})\s*>", re.I)
_FENCE_LINE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})", re.M)
_LONGEST_TAG = 24  # characters a tag may take with spaces in it: what a stream holds back at its end


def _close_of(text: str, name: str, start: int = 0) -> re.Match | None:
    """The closing tag of an opened `name` block (any of the names when that one never comes: a
    model that opens <think> and closes </thinking> still meant one block)."""
    for m in _CLOSE.finditer(text, start):
        if m.group(1).lower() == name.lower():
            return m
    return _CLOSE.search(text, start)


def _in_code(text: str, at: int) -> bool:
    """Is position `at` inside a fenced block or right after a backtick (an inline code span)?"""
    before = text[:at]
    return len(_FENCE_LINE.findall(before)) % 2 == 1 or before.endswith("`")


def _starts_line(text: str, at: int) -> bool:
    """Does position `at` start its line (after at most three spaces: four make indented code)?"""
    line = text[text.rfind("\n", 0, at) + 1:at]
    return not line.strip() and len(line.expandtabs(4)) < 4


def _stray_close(text: str) -> re.Match | None:
    """The first closing tag of a reply that did not open one (R1 templates open it in the prompt),
    when it is thinking's: at the start of a line, outside code. R1 ends its thinking with the tag on
    a line of its own; an answer that is about the tag writes it mid-sentence or in code ("split the
    reply at `</think>`"), and cutting there lost the answer's first half."""
    close = _CLOSE.search(text)
    if close is None or _OPEN.search(text, 0, close.start()) or _in_code(text, close.start()) \
            or not _starts_line(text, close.start()):
        return None
    return close


def strip_reasoning(text: str) -> str:
    """The answer part of a model reply: `text` without its thinking (see the module's rule).

    A reply without thinking comes back unchanged; one with thinking comes back from the first
    character after it, leading white space removed. "" when the reply is nothing but thinking."""
    rest, found = text, False
    while True:
        lead = len(rest) - len(rest.lstrip())
        opened = _OPEN.match(rest, lead)
        if opened is None:
            break
        close = _close_of(rest, opened.group(1), opened.end())
        if close is None:
            return ""
        rest, found = rest[close.end():], True
    if not found:
        close = _stray_close(rest)
        if close is None:
            return text
        rest = rest[close.end():]
    return rest.lstrip()


def _could_become(pattern: re.Pattern, tail: str) -> bool:
    """Could `tail` (the end of a growing text, from a "<") still grow into a match of `pattern`?"""
    probe = tail
    for name in ("think>", "thinking>", "reasoning>"):
        for i in range(len(name) + 1):
            if pattern.fullmatch(probe + name[i:]) or pattern.fullmatch(probe + "/" + name[i:]):
                return True
    return False


def _partial_tag_start(text: str) -> int:
    """Where a tag that may still be being written starts at the end of `text` (len(text): none)."""
    lt = text.rfind("<", max(0, len(text) - _LONGEST_TAG))
    if lt == -1 or ">" in text[lt:]:
        return len(text)
    tail = text[lt:]
    return lt if _could_become(_OPEN, tail) or _could_become(_CLOSE, tail) else len(text)


class ReasoningFilter:
    """A streamed reply in, its answer out: `feed` each piece, then `flush` at the end.

    What `feed` and `flush` hand out, joined, is `strip_reasoning` of the whole reply, with one
    exception: a reply that did not open a block but closes one later (R1's templates) has shown its
    thinking as answer by then. `restarted` is set, and from then on `answer` is the answer after the
    closing tag (handed out as usual): the caller replaces what it showed. `starts_inside=True` (a
    model known to reply that way) holds everything back until a closing tag instead, so none of it
    is shown; with no closing tag at all, it is released at the end (`strip_reasoning` keeps such a
    reply whole).

    While thinking, nothing is handed out: the caller shows its progress meanwhile. The thinking is
    not kept (only `thinking_chars` counted), so a 20,000-character thought costs no memory.
    """

    def __init__(self, *, starts_inside: bool = False) -> None:
        self.answer = ""  # everything handed out so far (after a restart: since the closing tag)
        self.thinking_chars = 0
        self.restarted = False
        self.closed_unopened = False  # a closing tag with no opening one ended thinking (R1's templates)
        self._held = ""  # text not handed out yet
        self._state = "presumed" if starts_inside else "start"
        self._found = False  # a block was removed: a later closing tag is the answer's, not thinking's
        self._open = ""  # the name of the block we are in
        self._scanned = 0  # how much of the held text was searched for a closing tag ("presumed")

    def feed(self, piece: str) -> str:
        self._held += piece
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end of the reply: what was held back (nothing of an unclosed block)."""
        return self._advance(final=True)

    def _release(self, text: str) -> str:
        self.answer += text
        return text

    def _advance(self, *, final: bool) -> str:
        out = ""
        while True:
            if self._state == "start":
                lead = len(self._held) - len(self._held.lstrip())
                body = self._held[lead:]
                opened = _OPEN.match(self._held, lead)
                if opened is not None:
                    self._state, self._open = "inside", opened.group(1)
                    self.thinking_chars += opened.end()
                    self._held = self._held[opened.end():]
                    continue
                if not final and (not body or (len(body) < _LONGEST_TAG and _could_become(_OPEN, body))):
                    return out  # only white space so far, or what may still be an opening tag
                if self._found:
                    self._held = body  # the answer starts after the thinking's white space
                self._state = "answer"
                continue
            if self._state == "inside":
                close = _close_of(self._held, self._open)
                if close is None:
                    cut = len(self._held) if final else max(0, len(self._held) - _LONGEST_TAG)
                    self.thinking_chars += cut
                    self._held = self._held[cut:]
                    return out
                self.thinking_chars += close.end()
                self._held, self._found, self._state = self._held[close.end():], True, "start"
                continue
            if self._state == "presumed":
                lead = len(self._held) - len(self._held.lstrip())
                if _OPEN.match(self._held, lead):  # it opened the block itself after all
                    self._state = "start"
                    continue
                close = _CLOSE.search(self._held, max(0, self._scanned - _LONGEST_TAG))
                self._scanned = len(self._held)
                if close is not None and close is _first(_stray_close(self._held), close):
                    self.closed_unopened = True
                    self.thinking_chars += close.end()
                    self._held, self._found, self._state = self._held[close.end():], True, "start"
                    continue
                if close is not None or final:  # a closing tag that is not thinking's: all of it is answer
                    self._state = "answer"
                    continue
                return out
            # "answer": a reply that opened no block may still close one (R1 templates); the text
            # handed out never ends in half a tag, so only the held text needs searching
            if not self._found and _CLOSE.search(self._held):
                seen = self.answer + self._held
                close = _stray_close(seen)
                self._found = True  # the first closing tag decides, as in strip_reasoning
                if close is not None:
                    self.thinking_chars += close.end()
                    self.restarted = self.closed_unopened = True
                    self.answer, self._held, self._state = "", seen[close.end():], "start"
                    out = ""
                    continue
            end = len(self._held) if final or self._found else _partial_tag_start(self._held)
            text, self._held = self._held[:end], self._held[end:]
            return out + self._release(text)


def _first(a: re.Match | None, b: re.Match) -> re.Match | None:
    """`a` when it is the same tag as `b` (same place), else None."""
    return b if a is not None and a.start() == b.start() else None


def closes_unopened(text: str) -> bool:
    """Does this reply close a thinking block it never opened (it began inside one the prompt opened)?"""
    lead = len(text) - len(text.lstrip())
    return _OPEN.match(text, lead) is None and _stray_close(text) is not None
