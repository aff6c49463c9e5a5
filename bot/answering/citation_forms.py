"""The citation forms other models write, and what only looks like them.

The prompt asks for [n], but models cite as they were trained to: 【1】 and 【1†source】, [doc1],
[S1], [#1], [^1^], (Source 1), bare superscripts ("cache¹"), [1: Caching]. `normalize_markers` and
`superscripts` read those as plain [n] markers (`MARKER`), which citations.py then reads, renumbers
and links. The same forms also mean other things: a 【1】 that numbers a list, a [#5] that names a
pull request, a ² that squares. Those rules are about how other models and people write, not about
what a citation is, and they grow with every model met: apart, they are read and tested on their
own, and citations.py keeps to reading [n].

Also here, because these rules need them as well as citations.py: the plain marker (`ONE_MARKER`,
`MARKER`), where sentences end (`SENTENCE_END`, `by_sentence`), code blanked out (`blank_code`,
`Kind`) and a marker's numbers (`numbers`, `MAX_RANGE`). This module imports nothing from
citations.py.
"""

from __future__ import annotations

import bisect
import re
from typing import Callable, Literal, Sequence

from .budget import Source

Kind = Literal["prose", "code", "definition"]

_NUM = r"\d{1,3}(?:\s*[-–]\s*\d{1,3})?"
# [1]  [1, 2]  [1-3]  [1,3-4], the footnote form [^1], and the sometimes-seen [Source 1] / [source: 2]
# Not before "(": "[1](https://…)" is a link. A "[1]:" that Markdown reads as a reference definition
# is never looked at (citations.py's `_segments`); any other "[1]:" is a citation followed by a colon
# ("Here is an example [3]:", audit 27 F1).
ONE_MARKER = rf"\[(\^|(?:source|src)s?\s*:?\s*)?({_NUM}(?:\s*[,;]\s*{_NUM})*)\](?!\()"
MARKER = re.compile(ONE_MARKER, re.I)
# looks like a citation but names no source: [1a], [^2b]
# (?<![ \t]): a match starts where a run of spaces starts, so a long run is scanned once, not once
# per space (audit 23 F3: 40,000 spaces took 2.7 s)
_ODD_MARKER = re.compile(r"(?<![ \t])[ \t]*\[\^?\d{1,3}[a-z]\](?!\()", re.I)
_SUPERSCRIPT_MARKER = re.compile(r"\[\^?([⁰¹²³⁴-⁹]{1,3})\](?!\()")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
# Other models' citation habits, read as [n] where they cannot mean anything else:
# 【1】 and 【1†source】 (DeepSeek, Qwen, models trained on ChatGPT's browsing format), [doc1] (Azure
# "on your data"), [S1], [#1], [^1^], [1†source], [1: Caching], [ref 1], (Source 1), [Source 1, Source 2],
# each also as a list ("【1, 2】", "[doc1][doc2]", "(Sources 1 and 3)"). A list becomes markers side
# by side ("[1][3]"), which always cite: these forms say they cite, unlike "[1, 2]" (see citations.py's `_reading`).
# Bare "(1)" is left as written: it is as often a list item ("(1) bump the version, (2) re-register"),
# a call or a tuple. Bare superscripts ("cache¹") only in an answer with no bracket citation
# (`superscripts`): "n²", "km²" and "10⁶" are powers.
# Where the same forms mean something else, they stay as written:
# - 【1】 that numbers a list ("步骤：【1】安装 flytekit；【2】配置 cache=True"; `_is_numbering`);
# - [#5] that names a pull request or an issue ("PR [#5]", "fixed in flytekit [#5]", or any [#n] in a
#   sentence that writes GitHub numbers another way: "#1234", "PR 1234", ".../pull/1234"; `names_github`).
#   Its own sentence decides, never another one: one "issue #4512" in the last sentence made every [#n]
#   of the answer plain text, an answer citing nothing, and a stream took back the citations it showed;
# - "(ref 2)" and "(reference 2)": in prose "ref" and "reference" are everyday words here (a git ref,
#   pass by reference, Flyte's reference tasks), while the prompt calls the passages sources, so only
#   "(source 2)" / "(src 2)" in parentheses, in any case, cites; "[ref 2]" in square brackets still does.
_ITEM_NUM = r"\d{1,3}(?:[ \t]*[-–][ \t]*\d{1,3})?"


def _cite_form(opening: str, prefix: str, closing: str, tail: str = "") -> re.Pattern:
    """`opening` `prefix` 1 [, `prefix` 2 ...] `tail` `closing`, its numbers in group "body". No two
    optional spaces side by side (a long run of spaces is scanned once per start, not squared)."""
    lead = rf"[ \t]*{prefix}[ \t]*" if prefix else r"[ \t]*"
    item = rf"(?:{prefix}[ \t]*)?{_ITEM_NUM}" if prefix else _ITEM_NUM
    body = rf"(?P<body>{_ITEM_NUM}(?:[ \t]*(?:[,;&]|and\b)[ \t]*{item})*)"
    return re.compile(rf"{opening}{lead}{body}[ \t]*{tail}{closing}(?!\()", re.I)


_SOURCE_WORD = r"(?:sources?|src)(?:[ \t]*:)?"
_BRACKET_SOURCE_WORD = r"(?:sources?|src|ref(?:erence)?s?)(?:[ \t]*:)?"
_FULLWIDTH_FORM = _cite_form("【", "", "】", tail=r"(?P<tail>†[^【】\n]{0,80})?")
_HASH_FORM = _cite_form(r"\[", r"\#", r"\]")
_CITE_FORMS = (
    _cite_form(r"\[", r"doc(?:ument)?s?", r"\]"),
    _cite_form(r"\[(?!S3\])", r"s", r"\]"),  # "[S3]" alone is Amazon's storage, "[S1, S3]" cites
    _cite_form(r"\[\^", "", r"\^\]"),
    _cite_form(r"\[", "", r"\]", tail=r"†[^\]\n]{0,80}"),
    _cite_form(r"\[", _BRACKET_SOURCE_WORD, r"\]"),
    _cite_form(r"\(", _SOURCE_WORD, r"\)"),
)
# A 【n】 numbers a list where a list item starts: at the start of a line (after spaces, a quote's ">"
# or a bullet), or after a colon, semicolon or comma (full or half width, or "、"); and a 【n+1】 after
# a sentence's end continues such a list. It is followed by the item's words, where a citation is
# followed by punctuation, the line's end or more of the sentence.
_ITEM_START_BEFORE = frozenset(":;,：；，、")
_SENTENCE_END_BEFORE = frozenset(".!?。！？")
_LINE_LEAD = re.compile(r"[ \t]*(?:>[ \t]*)*(?:[-*+•][ \t]+)?")
# [#n] after the words that name a pull request or an issue ("PR [#5]", "pull requests [#5]",
# "issue no. [#5]"), or after "fixed/landed/merged ... in/by" and at most one name ("landed in
# flytekit [#5]"): that is the number of a PR or issue, not a source's. Read on a bounded window
# before the marker, so a long text costs no more than a short one.
_GITHUB_BEFORE = re.compile(
    r"(?:\b(?:PRs?|pull[ \t]+requests?|issues?|tickets?|MRs?|merge[ \t]+requests?)(?:[ \t]+(?:no\.?|number))?"
    r"|\b(?:fixed|landed|merged|closed|resolved|reverted|tracked)[ \t]+(?:in|by|via|with)(?:[ \t]+[\w./-]{1,60})?)"
    r"[ \t]*\Z", re.I)
_GITHUB_JOIN = re.compile(r"[ \t]*(?:[,/&]|and\b|or\b)?[ \t]*\Z", re.I)  # "PRs [#5] and [#6]"
# GitHub numbers written another way than [#n]: "#1234" (not "[#1]", "&#39;", "page#2"),
# "flyteorg/flytekit#1234", "PR 1234", "issue #56", "github.com/.../pull/1234", "GH-1234". A sentence
# that writes them is about PRs and issues, and its [#n] are more of them. A web page's fragment
# ("https://docs.flyte.org/page#2", ".../index.html#3") is no GitHub number: "owner/repo#n" counts only
# where no URL's host or path runs into it (GitHub's owner names hold no dot).
_GITHUB_NUMBER = re.compile(
    r"(?<![\w\[&#/])#\d{1,6}\b|(?<![\w./:@%~-])[A-Za-z0-9][A-Za-z0-9-]{0,38}/[\w.-]{1,100}#\d{1,6}\b"
    r"|\b(?:PRs?|pull[ \t]+requests?|issues?|tickets?|MRs?)[ \t]*(?:#|no\.?[ \t]*)?\d{1,6}\b"
    r"|/(?:pull|issues)/\d{1,6}\b|\bGH-\d{1,6}\b", re.I)
# [1: Caching]: a number, a colon, then a title's word (not "a[1:3]" or "xs[1:end]", which are slices)
_TITLED_MARKER = re.compile(r"(?<![\w\])])\[[ \t]*(\d{1,3})[ \t]*:[ \t]*(?=[^\W\d_])[^\[\]\n]{1,100}\](?!\()")
# what is left of ChatGPT's browsing form ("【3:1†source】": a message index, not a source's number)
_ODD_FULLWIDTH = re.compile(r"【[^【】\n†]{0,80}†[^【】\n]{0,80}】")
# A bare superscript after a word of three letters or more, or after closing punctuation or code
_BARE_SUPERSCRIPT = re.compile(r"(?:(?<=[^\W\d_]{3})|(?<=[.,;:!?)\]\"'’”*_`]))([⁰¹²³⁴-⁹]{1,3})(?![\w⁰¹²³⁴-⁹])")
_SUPERSCRIPT_AT_START = re.compile(r"([⁰¹²³⁴-⁹]{1,3})(?![\w⁰¹²³⁴-⁹])")
# A square or cube (a lone ² or ³) is a power, not a citation, after a measure or a unit ("width²",
# "size²", "meters²"), after a parenthesis around a sum or product ("(a + b)²"), and anywhere in a
# sentence that writes math: a superscript after a digit or a one- or two-letter name ("n²", "10⁶",
# "km²"), a caret power ("n^2") or big-O ("O(n log n)"). Its own sentence, not the answer: an "O(n)"
# at the end must not turn an earlier "requests²" (a citation the stream already showed) into a power.
# Other digits stay citations ("cache¹"): they are rarely powers in prose.
_MEASURE_BEFORE = re.compile(
    r"(?<![^\W\d_])(?:size|width|height|length|depth|area|side|edge|radius|diameter|distance|dimension|volume"
    r"|time|speed|velocity|acceleration|frequency|pixel|meter|metre|kilometer|kilometre|centimeter|centimetre"
    r"|millimeter|millimetre|inch|foot|feet|yard|mile|second|unit)(?:s|es)?\Z", re.I)
_SUM_IN_PARENTHESES = re.compile(r"\([^()\n]{0,80}[-+*/^×·−][^()\n]{0,80}\)\Z")
_MATH = re.compile(r"(?:\d|(?<![^\W\d_])[^\W\d_]{1,2})[⁰¹²³⁴-⁹]|[\w)]\^[ \t]*\(?\d|\bO\([^()\n]{0,40}\)")
# While streaming, the start of one of those forms at the very end: held back until it is closed
# ("【1", "(Sour", "(Source 1, Sou", "(Sources 2 a"). One character class after the word, so a run of
# spaces is not split many ways: "(source code of the …" waits at most 60 characters.
def _prefixes(*words: str) -> str:
    """A regex for any non-empty start of any of `words` ("s", "so", … "sources")."""
    return "|".join("".join(f"{c}(?:" for c in w) + ")?" * len(w) for w in words)


CITE_FORM_BEING_WRITTEN = re.compile(
    rf"【[^【】\n]{{0,80}}(?:】[ \t]*)?\Z|\((?:{_prefixes('sources', 'src')})?\Z"
    r"|\((?:sources?|src)[\d \t,;:&a-z–-]{0,60}\Z",
    re.I)

# Where a sentence ends, for the readings that look at a marker's own sentence ([#n], a lone ² or ³):
# ".", "!" or "?" before a space or a line break, also with the sentence's citations right after it
# ("... the cache.[1, 2] Then", "requests.² Then": else no sentence ended until the next line break and
# a stream held a paragraph back), "。", "！", "？", or a line break. Each is decided by the
# characters after it, so an end found in a stream's text is an end in the final text.
SENTENCE_END = re.compile(r"[.!?](?:\[[^\[\]\n]{1,40}\]|[⁰¹²³⁴-⁹]{1,3})*(?=[ \t\r\n])|[。！？\r\n]")


def by_sentence(text: str, shown: str, test: Callable[[str], bool]) -> Callable[[int], bool]:
    """`test` of the sentence holding position i of `text`, as a function of i. The sentences are
    cut where `text` ends one (`SENTENCE_END`, code included: a stream reads the same ends before
    it knows what is code); `test` reads the same stretch of `shown`, a text as long as `text` (with
    its code blanked out). Each sentence is tested once, when first asked: linear in the text."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    tested: dict[int, bool] = {}

    def at(i: int) -> bool:
        k = bisect.bisect_right(ends, i)
        if k not in tested:
            tested[k] = test(shown[ends[k - 1] if k else 0:ends[k] if k < len(ends) else len(shown)])
        return tested[k]

    return at


def blank_code(parts: Sequence[tuple[Kind, str]]) -> str:
    """The parts joined, code replaced by spaces (but its line breaks): what only code writes ("#12"
    in `gh pr view #12`, "O(n)" in a snippet) says nothing about the prose around it."""
    return "".join(seg if kind == "prose" else re.sub(r"[^\r\n]", " ", seg) for kind, seg in parts)


MAX_RANGE = 20


def numbers(body: str) -> list[int]:
    """The numbers a marker's body names ("1, 3-4" is [1, 3, 4]); a range wider than MAX_RANGE names none."""
    nums: list[int] = []
    for part in re.split(r"\s*[,;]\s*", body.strip()):
        m = re.fullmatch(r"(\d+)\s*[-–]\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a <= b and b - a <= MAX_RANGE:
                nums.extend(range(a, b + 1))
        elif part.isdigit():
            nums.append(int(part))
    return nums


def _as_markers(body: str) -> str:
    """"1, 3-4" as "[1][3][4]"; a mark to drop ("\x00") when it names no number."""
    nums = numbers(",".join(re.findall(_ITEM_NUM, body)))
    return "".join(f"[{n}]" for n in dict.fromkeys(nums)) if nums else "\x00"


def _is_numbering(m: re.Match, line_start: bool, last_item: int | None) -> bool:
    """Does the 【n】 at `m` number a list item rather than cite (see _ITEM_START_BEFORE)? Only a
    single number without "†" can; `line_start`: the text searched starts a line; `last_item`: the
    number of the list item before it in this text, if any."""
    seg = m.string
    if m.group("tail") or not m.group("body").isdigit():
        return False
    nxt = seg[m.end():m.end() + 40].lstrip(" \t")[:1]
    if not (nxt.isalnum() or nxt in "`*_\"'“‘(（"):
        return False  # punctuation, the line's end or another marker: what follows a citation
    window_start = max(0, m.start() - 40)  # a list item's lead is short: a bounded look back stays linear
    line_begin = seg.rfind("\n", window_start, m.start()) + 1
    if ((line_begin or (line_start and window_start == 0))
            and _LINE_LEAD.fullmatch(seg, line_begin, m.start())):
        return True
    before = seg[window_start:m.start()].rstrip(" \t")[-1:]
    if before in _ITEM_START_BEFORE:
        return True
    return before in _SENTENCE_END_BEFORE and last_item is not None and int(m.group("body")) == last_item + 1


def names_github(prose: str) -> bool:
    """Does this prose write PR or issue numbers the way GitHub does (see _GITHUB_NUMBER), besides
    any [#n]? Then its [#n] are read as more of them, not as citations."""
    return _GITHUB_NUMBER.search(_HASH_FORM.sub(" ", prose)) is not None


def normalize_markers(seg: str, *, line_start: bool = True,
                      github: Callable[[int], bool] | None = None) -> str:
    """Odd citation forms made plain: [¹] is [1], 【1】, [doc1], (Source 1) and the other forms of
    _CITE_FORMS are [1]; [1a] and 【3:1†source】 name no source and go. What only looks like one
    of them stays as written: a 【1】 that numbers a list item (`line_start`: `seg` starts a line),
    a [#5] that names a PR or issue (`github(i)`: the sentence at position i of `seg` writes
    GitHub numbers another way)."""
    if "[#" in seg:  # first, while positions in `seg` are still those `github` is asked about
        kept_end = -1  # where the last [#n] left as a PR or issue number ends

        def hashed(m: re.Match) -> str:
            nonlocal kept_end
            window = m.string[max(0, m.start() - 80):m.start()]
            if ((github is not None and github(m.start())) or _GITHUB_BEFORE.search(window)
                    or (kept_end >= 0 and _GITHUB_JOIN.fullmatch(m.string, kept_end, m.start()))):
                kept_end = m.end()
                return m.group(0)
            return _as_markers(m.group("body"))

        seg = _HASH_FORM.sub(hashed, seg)
    seg = _SUPERSCRIPT_MARKER.sub(lambda m: f"[{m.group(1).translate(_SUPERSCRIPT_DIGITS)}]", seg)
    if "【" in seg:
        last_item: int | None = None

        def fullwidth(m: re.Match) -> str:
            nonlocal last_item
            if _is_numbering(m, line_start, last_item):
                last_item = int(m.group("body"))
                return m.group(0)
            return _as_markers(m.group("body"))

        seg = _FULLWIDTH_FORM.sub(fullwidth, seg)
    if "[" in seg or "(" in seg:
        for form in _CITE_FORMS:
            seg = form.sub(lambda m: _as_markers(m.group("body")), seg)
        seg = _TITLED_MARKER.sub(lambda m: f"[{m.group(1)}]", seg)
    if "【" in seg:
        seg = _ODD_FULLWIDTH.sub("\x00", seg)
    return _ODD_MARKER.sub("", seg)


def superscripts(parts: list[tuple[Kind, str]], by_n: dict[int, Source]) -> list[tuple[Kind, str]]:
    """Bare superscripts read as citations ("the cache¹." is "the cache[1]."), in an answer that
    cites no other way: beside [n] markers a superscript is a power or a footnote of its own. Only
    after a word of three letters or more, closing punctuation or code ("n²", "km²" and "10⁶" stay),
    not a square or cube where it reads as a power (see _MEASURE_BEFORE; math in its own sentence),
    and only when its number (or each of its digits: "¹²" is [1][2] with fewer than 12 sources) names
    a given source; else it is left as written."""
    if any(MARKER.search(seg) for kind, seg in parts if kind == "prose"):
        return parts
    if not any(c in seg for kind, seg in parts if kind == "prose" for c in "⁰¹²³⁴⁵⁶⁷⁸⁹"):
        return parts
    math = by_sentence("".join(seg for _, seg in parts), blank_code(parts), lambda s: _MATH.search(s) is not None)
    offset = 0  # where the part being read starts in the whole text

    def power(m: re.Match) -> bool:
        if m.group(1) not in ("²", "³"):
            return False
        before = m.string[max(0, m.start() - 200):m.start()]
        return (math(offset + m.start())
                or bool(_MEASURE_BEFORE.search(before[-20:]) or _SUM_IN_PARENTHESES.search(before)))

    def cite(m: re.Match) -> str:
        if power(m):
            return m.group(0)
        digits = m.group(1).translate(_SUPERSCRIPT_DIGITS)
        if int(digits) in by_n:
            return f"[{int(digits)}]"
        if all(int(d) in by_n for d in digits):
            return "".join(f"[{d}]" for d in digits)
        return m.group(0)

    out = []
    for i, (kind, seg) in enumerate(parts):
        if kind == "prose":
            new = _BARE_SUPERSCRIPT.sub(cite, seg)
            if i and parts[i - 1][0] == "code":  # right after a code span: "`cache_version`¹"
                new = _SUPERSCRIPT_AT_START.sub(cite, new, count=1) if _SUPERSCRIPT_AT_START.match(new) else new
        else:
            new = seg
        offset += len(seg)
        out.append((kind, new))
    return out
