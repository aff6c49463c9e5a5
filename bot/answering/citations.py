"""Make a model's citations trustworthy before anyone sees them.

Models cite sources that don't exist, cite ranges ("[1-3]"), lists ("[1, 2]"), and
sometimes add their own link lists. We keep only markers that point at a source that
was in the prompt, renumber them by first use, and build the citation list from our
own records, so every number shown resolves to a real title and URL. The forms other models
cite in (【1】, [doc1], (Source 1), superscripts, ...) are first made [n] by citation_forms.py.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
from typing import Callable, Literal, Sequence

from flytegpt.bot.metrics import MADE_UP_CITATIONS
from flytegpt.ingest.models import strip_controls
from flytegpt.ingest.sources.slack_export import thread_date

from .budget import Source
from .citation_forms import (CITE_FORM_BEING_WRITTEN, MARKER, MAX_RANGE, ONE_MARKER, SENTENCE_END, Kind,
                             blank_code, by_sentence, names_github, normalize_markers, numbers, superscripts)
from .types import Citation

log = logging.getLogger(__name__)

# markers side by side ("[1][1]", "[2] [3]") are read as one, so a repeat shows once
_MARKER_RUN = re.compile(rf"{ONE_MARKER}(?:[ \t]*{ONE_MARKER})*", re.I)
_DROPPED = re.compile(r"(?<![ \t])[ \t]*\x00")
# A stream holds a marker its sentence may still change back at most this far: a sentence that never
# ends (a paragraph of clauses, a list in inline code) is shown, at the risk of a rewrite, not stalled
_HOLD_MAX_CHARS = 400
_SENTENCE_END_MARGIN = 200
# What a sentence still being written holds that its end may change (see sources_list_start)
_READ_BY_SENTENCE = re.compile(r"\[#|[²³]")


# [label](url), [label](<url>), [label](url "title"), any case of the scheme, or //host. The label
# holds no bracket and the URL none either: "[[[[..." or "[x](http://[x](http://..." is scanned
# once, not once per bracket (audit 23 F3). What this misses, clean_answer's last pass defuses.
_MD_LINK = re.compile(
    r"\[([^\[\]\n]+)\]\(\s*<?((?:https?:)?//[^\s()<>\[\]]+)>?(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)", re.I)
# A model's own list of sources at the end, under a Sources/References heading: numbered
# items, bullets (a link or a bare title) or lines that are only a link. Our list replaces it.
_EOL = r"[ \t]*(?=\n|\Z)"
_LIST_ITEM = rf"[ \t]*(?:(?:\[?\^?\d{{1,3}}[\].:)]|\[(?:doc|s|\#)\d{{1,3}}\]|【[^】\n]{{1,40}}】|[-*+•](?=\s|\Z)).*|\[[^\]\n]+\]\([^)\s]*\){_EOL}|<?https?://\S+>?{_EOL})"
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


# Line breaks as markdown-it counts lines (its "normalize" rule): its line maps index these lines.
_LINE_BREAK = re.compile(r"\r\n?|\n")
_BACKTICKS = re.compile(r"`+")
# what code and reference definitions cannot do without; an answer without any is not parsed
_MAY_HOLD_CODE = re.compile(r"`|~~~|\]:|^(?: {4}| {0,3}\t)", re.M)


def answer_reader(**options: object):
    """markdown-it as the posted answer is read (bot/slack/render.py's settings: CommonMark,
    tables, strikethrough, no HTML), with `options` on top: what the answering code checks an
    answer with must read it as the renderer will."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, **options}).enable(["table", "strikethrough"])


@functools.cache
def _block_reader():
    """answer_reader for the block structure only: fenced and indented code blocks wherever
    CommonMark puts them (in list items, in quotes), reference definitions (`inline_definitions`
    makes tokens of them), and the lines of each paragraph, heading and table row. Inline parsing
    is off: its tokens carry no positions, and code spans are found by CommonMark's own rule
    (`_code_spans`)."""
    return answer_reader(inline_definitions=True).disable("inline")


def _segments(text: str) -> list[tuple[Kind, str]]:
    """The text cut into prose, code (blocks and spans) and reference definitions, in order.

    What a CommonMark reader shows as code is code, so a subscript in it (`x = data[2]`) is
    never read as a citation (audit 27 F2: a fence indented in a list item, a 4-space block); a
    reference definition ("[1]: https://…", at a line's start where Markdown reads one) is not
    a citation followed by a colon (audit 27 F1)."""
    if not text:
        return []
    if not _MAY_HOLD_CODE.search(text):  # no backtick, tilde fence, indented line or "]:": all prose
        return [("prose", text)]
    starts = [0] + [m.end() for m in _LINE_BREAK.finditer(text)]
    starts.append(len(text) + 1)  # past the last line, as if it ended with a line break

    def span(lines: list[int]) -> tuple[int, int]:  # a token's map [first, last) as offsets
        return starts[lines[0]], min(len(text), max(starts[lines[0]], starts[lines[1]] - 1))

    marked: list[tuple[int, int, Kind]] = []
    units: dict[tuple[int, int], None] = {}  # the lines of each paragraph, heading, table row
    for tok in _block_reader().parse(text):
        if not tok.map:
            continue
        if tok.type in ("fence", "code_block"):
            marked.append((*span(tok.map), "code"))
        elif tok.type == "definition":
            marked.append((*span(tok.map), "definition"))
        elif tok.type == "inline":
            units[span(tok.map)] = None
    for a, b in units:
        marked.extend((x, y, "code") for x, y in _code_spans(text, a, b))
    marked.sort()
    out: list[tuple[Kind, str]] = []
    pos = 0
    for a, b, kind in marked:
        if a < pos:  # inside what is already marked (never, but a map is the parser's word)
            continue
        if a > pos:
            out.append(("prose", text[pos:a]))
        out.append((kind, text[a:b]))
        pos = b
    if pos < len(text):
        out.append(("prose", text[pos:]))
    return out


def _code_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """CommonMark code spans in text[start:end] (one paragraph, heading or table row): a run of
    n backticks up to the next run of exactly n; a run without its match is literal text.
    Linear: each run is looked up once among the later runs of its length.

    One departure: a backslash-escaped backtick ("\\`") still opens a span. What lies between
    escaped backticks is then left as written, and clean_answer's CommonMark check has the last
    word on its links (bot/answering/live.py, audit 23 N1); read as prose, a URL right after a
    literal backtick would pass live.py's bare-URL rule, which takes that backtick for code."""
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text, start, end)]
    by_length: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(runs):
        by_length.setdefault(b - a, []).append(i)
    spans = []
    i = 0
    while i < len(runs):
        a, b = runs[i]
        later = by_length[b - a]
        k = bisect.bisect_right(later, i)
        if k < len(later):
            j = later[k]
            spans.append((a, runs[j][1]))
            i = j + 1
        else:
            i += 1
    return spans


def split_code(text: str) -> list[tuple[bool, str]]:
    """Segments of (is_code, text): citations inside code are code, not citations. Code is what
    markdown-it (as the Slack renderer reads the answer) shows as code: fenced and indented
    blocks, also inside list items and quotes, and inline code spans."""
    return [(kind == "code", seg) for kind, seg in _segments(text)]


def sources_list_start(text: str) -> int:
    """Where a growing answer's end must wait for more text (len(text): nowhere): a source list of
    the model's own may be being written there, which the final answer drops (`_drop_model_endings`),
    a citation in another form than [n] that is not closed yet ("【1", "(Source 2"), which the
    final answer reads as [n] (`normalize_markers`), or a bracket of several numbers followed by
    nothing yet but spaces and maybe an unfinished word ("[1, 2] an"): whether it cites depends on
    what follows it (`_reading`: punctuation or "and" cite, "answers" after "over" does not), or,
    in a sentence not ended yet, a [#n], a lone ² or ³ or a bracket of several numbers: the rest of
    its sentence may write a GitHub number ("[#3] came with #4512") or math ("requests² at O(n)"),
    which makes it no citation, or a list that closes it ("described in [1, 2] and tested in [3, 4]."),
    which makes the lists before it citations. A streamed answer holds them back, so what it showed
    never has to be taken back. (An open "[" the stream holds back by itself.)"""
    m = _SOURCES_BEING_WRITTEN.search(text)
    end = m.start() if m else len(text)
    if "[" in text or "²" in text or "³" in text:
        # only the last sentence end within the hold's reach counts: scanning from there (less a
        # margin for an end whose citations straddle it) keeps each stream pass short
        sentence = max(0, end - _HOLD_MAX_CHARS)
        for sentence_end in SENTENCE_END.finditer(text, max(0, sentence - _SENTENCE_END_MARGIN), end):
            sentence = max(sentence, sentence_end.end())
        open_reading = _READ_BY_SENTENCE.search(text, sentence, end)
        end = open_reading.start() if open_reading else end
        first_list = next((mk for mk in MARKER.finditer(text, sentence, end) if _is_list(mk)), None)
        end = first_list.start() if first_list else end
    cite = CITE_FORM_BEING_WRITTEN.search(text, max(0, end - 120), end) if end else None
    if cite:
        return cite.start()
    run = _LIST_BEING_READ.search(text, max(0, end - 200), end) if end else None
    if run and any(map(_is_list, MARKER.finditer(run.group("run")))):
        return run.start()
    return end


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


# A bracket of several numbers ("[1, 2]", "[1-3]") is also how a list is written ("map over the
# inputs [1, 2, 3]", audit 27 F5), and the prompt asks for "[2][3]". Such a bracket is read as
# citations only when it names given sources only (or is a range of made-up numbers only:
# `_cites_as_range`), does not stand where a value stands (after "=", ":", "(", "[", "{", ",", or a
# verb that takes a value: "returns [1, 2, 3].", "The default is [1, 2]."; `_VALUE_VERB_BEFORE`), and
# closes what it supports: what follows it is the end of a line or of the answer, punctuation, or
# another marker.
# One that is followed by more words ("[1, 2] and ...") is a citation only in an answer whose other
# lists are (the model's own style), and not as a preposition's object ("over [1, 2, 3] inputs":
# `_written_as_value`); else it is left as written. "[^1, 2]" and "[Source 1, 2]" say they cite and are
# always read so.
_VALUE_BEFORE = frozenset("=:([{,")
_CLOSES = frozenset(".,;:!?)]}\"'*_~|\u2019\u201d\n。，；：！？）」』、")
_LIST_BODY = re.compile(r"[,;\-–]")
Reading = Literal["cite", "data", "cite_in_style"]


_RANGE_BODY = re.compile(r"(\d+)\s*[-–]\s*(\d+)")
# "Map over [1, 2, 3] inputs": a list after a preposition and before a word that goes on with the
# phrase is that preposition's object, a value, even in an answer that cites with lists elsewhere;
# before "and", "but", "which", ... it may still cite ("described in [1, 2] and tested in [3, 4].").
_OBJECT_BEFORE = re.compile(r"(?<![\w-])(?:over|of|with|as|in|into|from|like|between|across)[ \t]*\Z", re.I)
# "`my_task` returns [1, 2, 3].", "The default is [1, 2].", "Indices are [1-3].", "retries defaults to
# [1, 2]": after a verb that takes a value, a bracket of several numbers is that value. "is" and "are"
# only after a word naming a value ("The recommended approach is [1, 2].", "Yes, it is [1, 2]." cite),
# and not "returned" ("... is returned [2, 3]." cites). A bare "to" is not one of them ("refer to
# [1, 2]", "according to [1, 2]" cite); "set/defaults/equal ... to" is.
_VALUE_VERB_BEFORE = re.compile(
    r"(?<![\w-])(?:(?:defaults?|values?|results?|outputs?|inputs?|indices|indexes|index|ids|sizes?|shapes?"
    r"|ranges?|lists?|arrays?|elements?|items?)[ \t]+(?:is|are|was|were)|equals?|becomes?|became|returns?|yields?"
    r"|(?:set|sets|defaults?|defaulted|equal|evaluates?|evaluated|changes?|changed|resolves?|resolved)[ \t]+to)"
    r"[ \t]*\Z", re.I)
_CLAUSE_AFTER = re.compile(
    r"[ \t]*(?:and|or|but|so|then|also|which|while|whereas|where|when|because|since|although|though|if|unless)\b",
    re.I)
# While streaming: a run of markers at the end, followed by spaces and maybe a word not finished yet
_LIST_BEING_READ = re.compile(rf"(?P<run>{ONE_MARKER}(?:[ \t]*{ONE_MARKER})*)[ \t]*\w*\Z", re.I)


def _written_as_value(text: str, start: int, end: int, reading: Reading) -> bool:
    """Do the words around the run of markers text[start:end], which holds a list, make it a value:
    it follows a verb that takes one ("returns [1, 2, 3].": `_VALUE_VERB_BEFORE`) or, read as a
    citation only in the answer's style, it is a preposition's object ("over [1, 2, 3] inputs":
    `_OBJECT_BEFORE`, no `_CLAUSE_AFTER`)? Read on bounded windows, so a long text costs no more
    than a short one."""
    if _VALUE_VERB_BEFORE.search(text, max(0, start - 40), start) is not None:
        return True
    return (reading == "cite_in_style" and _OBJECT_BEFORE.search(text, max(0, start - 40), start) is not None
            and _CLAUSE_AFTER.match(text, end, end + 40) is None)


def _cites_as_range(body: str, by_n: dict[int, Source]) -> bool:
    """A lone range from 1 up ("6-9", "6–9"), at most MAX_RANGE wide, none of whose numbers is a
    given source, is a citation range where a citation stands: the model made up its numbers, which
    are dropped and counted ("[6-9]" with 5 sources goes like "[7]"). A range that starts among the
    sources and runs past them ("[1-10]", "[4-7]" with 5) is far more often a value's interval ("set
    `priority` to a value in [1-10]."): read as citations, it cited every source for a claim none
    made and counted numbers the model never meant as sources; it stays as written. "[0-9]" (a digit
    class) starts at 0. A list with commas naming no source ("[2, 9]") stays as written too: that is
    how prose writes values."""
    m = _RANGE_BODY.fullmatch(body.strip())
    if m is None:
        return False
    a, b = int(m.group(1)), int(m.group(2))
    return 1 <= a <= b <= a + MAX_RANGE and not any(n in by_n for n in range(a, b + 1))


def _names_sources_only(body: str, by_n: dict[int, Source]) -> bool:
    """Every number of a list or range ("1, 3-4") is a given source's."""
    for part in re.split(r"\s*[,;]\s*", body.strip()):
        m = re.fullmatch(r"(\d+)\s*[-–]\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            nums = range(a, b + 1) if a <= b and b - a <= MAX_RANGE else range(0)
        else:
            nums = range(int(part), int(part) + 1) if part.isdigit() else range(0)
        if not nums or any(n not in by_n for n in nums):
            return False
    return True


def _is_list(m: re.Match) -> bool:
    """A marker of several numbers that does not say it cites ("[1, 2]", "[1-3]"; not "[^1, 2]")."""
    return not m.group(1) and _LIST_BODY.search(m.group(2)) is not None


def _reading(run: str, before: str, after: str, by_n: dict[int, Source]) -> Reading:
    """How a run of markers is read (see _VALUE_BEFORE): `before` is the last character before
    it but spaces ("" at the start), `after` the first after it but spaces ("" at the end)."""
    lists = [m for m in MARKER.finditer(run) if _is_list(m)]
    if not lists:
        return "cite"
    if before in _VALUE_BEFORE or not all(_names_sources_only(m.group(2), by_n) or _cites_as_range(m.group(2), by_n)
                                          for m in lists):
        return "data"
    return "cite" if after == "" or after in _CLOSES else "cite_in_style"


def _char_before(text: str, i: int) -> str:
    """The last character of text[:i] that is no space or tab ("" if none). Each run of spaces is
    walked by the one marker run after it: linear in the text, however many markers."""
    while i > 0 and text[i - 1] in " \t":
        i -= 1
    return text[i - 1] if i > 0 else ""


def _char_after(text: str, i: int) -> str:
    """The first character of text[i:] that is no space or tab ("" if none)."""
    while i < len(text) and text[i] in " \t":
        i += 1
    return text[i] if i < len(text) else ""


def process_citations(text: str, sources: Sequence[Source], *,
                      made_up: list[list[int]] | None = None) -> tuple[str, list[Citation]]:
    """Return (text with clean [n] markers, citations ordered by n). `made_up`, when given, gets
    the numbers that name no given source of each marker read as a citation ([7] -> [7], [4-7]
    with 5 sources -> [6, 7]): they are dropped from the text (`report_made_up`)."""
    by_n = {s.n: s for s in sources}
    known_urls = {link_key(s.url) for s in sources if s.url}
    renumber: dict[int, int] = {}

    def cite(markers: str) -> str:
        new = []
        for m in MARKER.finditer(markers):
            nums = numbers(m.group(2))
            if made_up is not None and any(n not in by_n for n in nums):
                made_up.append([n for n in nums if n not in by_n])
            for n in nums:
                if n in by_n:
                    if n not in renumber:
                        renumber[n] = len(renumber) + 1
                    if renumber[n] not in new:
                        new.append(renumber[n])
        return "".join(f"[{k}]" for k in sorted(new)) if new else "\x00"

    def as_data(run: str) -> str:
        # its lists stay as written; a single marker beside one is still a citation
        return MARKER.sub(lambda m: m.group(0) if _is_list(m) else cite(m.group(0)), run)

    def unlink(m: re.Match) -> str:
        # A link the model made up is a broken link waiting to happen: keep only its words.
        return m.group(0) if link_key(m.group(2)) in known_urls else m.group(1)

    def unlinked(seg: str, at: int) -> tuple[str, Callable[[int], int]]:
        """`seg` (at offset `at` of the text) without made-up links, and where a position of the
        result was in the text: a [#n]'s sentence is read as the model wrote it, links and all."""
        shifts = [(0, at)]  # (a position in the result, what to add to it from there on)

        def repl(m: re.Match) -> str:
            new = unlink(m)
            dropped = shifts[-1][1] - at + len(m.group(0)) - len(new)  # characters dropped so far
            shifts.append((m.end() - dropped, at + dropped))
            return new

        out = _MD_LINK.sub(repl, seg)
        starts = [p for p, _ in shifts]
        return out, lambda i: i + shifts[bisect.bisect_right(starts, i) - 1][1]

    text = _drop_model_endings(text)
    segments = _segments(text)
    # A [#n] stays as written where its own sentence writes GitHub numbers another way (`names_github`)
    github = by_sentence(text, blank_code(segments), names_github) if "[#" in text else None
    parts: list[tuple[Kind, str]] = []
    at = 0
    for i, (kind, seg) in enumerate(segments):
        if kind == "prose":
            plain, where = unlinked(seg, at)
            seg_github = None if github is None else (lambda j, where=where: github(where(j)))
            parts.append((kind, normalize_markers(plain, line_start=i == 0 or segments[i - 1][1].endswith("\n"),
                                                  github=seg_github)))
        else:
            parts.append((kind, seg))
        at += len(segments[i][1])
    parts = superscripts(parts, by_n)
    # every run's reading first: whether a list inside a sentence cites depends on the others
    readings: dict[int, list[Reading]] = {}
    in_style = False  # a list that closes a statement was read as citations
    for i, (kind, seg) in enumerate(parts):
        if kind != "prose":
            continue
        before_seg = parts[i - 1][1] if i else ""
        after_seg = parts[i + 1][1] if i + 1 < len(parts) else ""
        readings[i] = []
        for m in _MARKER_RUN.finditer(seg):
            reading = _reading(m.group(0), _char_before(seg, m.start()) or _char_before(before_seg, len(before_seg)),
                               _char_after(seg, m.end()) or _char_after(after_seg, 0), by_n)
            if (reading != "data" and _LIST_BODY.search(m.group(0)) and any(map(_is_list, MARKER.finditer(m.group(0))))
                    and _written_as_value(seg, m.start(), m.end(), reading)):
                reading = "data"
            in_style = in_style or (reading == "cite" and any(map(_is_list, MARKER.finditer(m.group(0)))))
            readings[i].append(reading)
    out = []
    for i, (kind, seg) in enumerate(parts):
        if kind != "prose":
            out.append(seg)
            continue
        order = iter(readings[i])

        def replace(run: re.Match) -> str:
            reading = next(order)
            if reading == "cite" or (reading == "cite_in_style" and in_style):
                return cite(run.group(0))
            return as_data(run.group(0))

        seg = _MARKER_RUN.sub(replace, seg)
        out.append(_DROPPED.sub("", seg))  # a dropped marker takes its leading space along
    clean = "".join(out).strip()
    old_by_new = {v: k for k, v in renumber.items()}
    citations = [
        cite_source(new, by_n[old])
        for new, old in sorted(old_by_new.items())
    ]
    return clean, citations


def report_made_up(raw: str, sources: Sequence[Source]) -> int:
    """How many citation markers of the model's answer `raw` named a source number it was not given
    (`process_citations` drops those numbers), logged and counted in /metrics
    (`flytegpt_made_up_citations_total`). Call it once per answer, on the whole text the answer was
    cleaned from, never on a streamed piece: a marker counts once.

    A warning, with the numbers but never the answer's text: one made-up number costs the asker
    a citation, not the answer; many, answer after answer, mean the model does not follow the
    prompt's numbering (a weak model, a prompt it does not follow, or sources numbered otherwise
    than the prompt shows them), which only the operator can fix."""
    made_up: list[list[int]] = []
    process_citations(strip_controls(raw), sources, made_up=made_up)
    if made_up:
        invented = sorted({n for nums in made_up for n in nums})
        shown = ", ".join(map(str, invented[:20])) + (", …" if len(invented) > 20 else "")
        log.warning("%d citation marker(s) in the model's answer named a source number it was not given (it was "
                    "given %d sources); dropped from the answer: %s", len(made_up), len(sources), shown,
                    extra={"made_up_citations": len(made_up), "made_up_numbers": shown, "sources": len(sources)})
        MADE_UP_CITATIONS.inc(len(made_up))
    return len(made_up)


def source_date(source: Source) -> str | None:
    """The day a Slack thread source was started ("2023-10-21"), read from its id; None for docs and
    code, whose ids can look like a thread's (a docs page `releases/1.10`)."""
    return thread_date(source.source_id) if source.kind == "slack" else None


def cite_source(n: int, source: Source, url: str | None = None) -> Citation:
    """The citation `[n]` of a source, dated when it is a Slack thread (`Citation.date`), so every
    list of sources (Slack, the CLI, `--json`, the feedback store) can say how old a thread is.
    `url`: a more precise link than the source's own (the offline answer's quoted reply)."""
    return Citation(n=n, title=source.title, url=source.url if url is None else url,
                    source_id=source.source_id, date=source_date(source))


def source_citations(sources: Sequence[Source]) -> list[Citation]:
    return [cite_source(s.n, s) for s in sources]
