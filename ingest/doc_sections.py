"""Structure of documentation pages: headings, sections and blocks for Markdown/MyST and RST.

Both the docs loader (page title) and the chunker (heading paths, code blocks) need the
same reading of a page, so it lives here once. Line-based on purpose: MyST and Sphinx
directives are not CommonMark, and what we need is where headings and code blocks are,
which this gets right without a full parser for each dialect.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# --- shared -------------------------------------------------------------------------------

# Directives whose body is navigation or layout, not words anyone asks about.
DROP_DIRECTIVES = {
    "toctree", "raw", "image", "tags", "auto-examples-toc", "toc", "currentmodule",
    "youtube", "contents", "only", "meta", "rli", "mermaid", "div",
}
# Directives whose body is code: kept whole when they fit.
CODE_DIRECTIVES = {
    "code-block", "code", "sourcecode", "code-cell", "literalinclude", "prompt", "ipython",
    "testcode", "doctest", "jupyter-execute",
}
# Directive options worth keeping (they name what the block shows).
KEEP_OPTIONS = {"caption", "pyobject", "language"}

_ROLE_MYST = re.compile(r"\{[\w:+-]+\}`([^`<]*?)\s*(?:<([^`>]*)>)?`")
_ROLE_RST = re.compile(r"(?<![\w`]):[\w:+-]+:`([^`<]*?)\s*(?:<([^`>]*)>)?`")


def clean_roles(text: str) -> str:
    """`{ref}`label <target>`` / `:class:`flytekit.FlyteFile`` -> the words a reader sees."""

    def sub(m: re.Match) -> str:
        label, target = (m.group(1) or "").strip(), (m.group(2) or "").strip()
        word = label or target
        return f"`{word.lstrip('~!')}`" if not label or "." in word or "_" in word else word

    return _ROLE_RST.sub(sub, _ROLE_MYST.sub(sub, text))


@dataclass
class Block:
    text: str
    is_code: bool = False


@dataclass
class Section:
    path: tuple[str, ...]  # heading titles, outermost first (the page title included)
    heading: str | None = None  # the heading as a Markdown line ("## Custom hashing")
    lines: list[str] = field(default_factory=list)  # the section's body lines
    blocks: list[Block] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


def detect_format(name: str) -> str:
    """"rst" or "md" (MyST and plain text are read as Markdown)."""
    return "rst" if name.lower().endswith(".rst") else "md"


def page_title(text: str, fmt: str) -> str | None:
    """The page's first heading, or None.

    Read up to that heading only: the loader asks for every page's title on every ingest,
    unchanged pages included, and parsing whole pages for it was a fifth of a re-ingest."""
    return next((s.path[0] for s in _scan(text, fmt) if s.path), None)


def parse_sections(text: str, fmt: str) -> list[Section]:
    """The page cut at its headings, each section with its heading path and its blocks."""
    sections = list(_scan(text, fmt))  # the scan fills each section's lines as it goes
    blocks = _rst_blocks if fmt == "rst" else _md_blocks
    for s in sections:
        s.blocks = ([Block(s.heading)] if s.heading else []) + blocks(s.lines)
    return [s for s in sections if s.blocks]


def _scan(text: str, fmt: str) -> Iterator[Section]:
    """Each section as soon as its heading is read (the part before the first heading has path
    ()); a section's `lines` are complete once the next one is yielded."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return _rst_scan(lines) if fmt == "rst" else _md_scan(lines)


def _clean_title(title: str) -> str:
    title = re.sub(r"\s*\{#[^}]*\}\s*$", "", title)  # MyST/pandoc anchors
    title = clean_roles(title)
    return re.sub(r"\s+", " ", title.replace("`", "").replace("**", "")).strip()


def _push(stack: list[tuple[int, str]], level: int, title: str) -> tuple[str, ...]:
    while stack and stack[-1][0] >= level:
        stack.pop()
    stack.append((level, title))
    return tuple(t for _, t in stack)


# --- Markdown / MyST ----------------------------------------------------------------------

_FENCE = re.compile(r"^(\s{0,3})(`{3,}|~{3,}|:{3,})\s*(.*)$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_MYST_TARGET = re.compile(r"^\s*\(\s*[^()\s]+\s*\)=\s*$")
_OPTION = re.compile(r"^\s*:([\w-]+):(\s.*)?$")
_DIRECTIVE_INFO = re.compile(r"^\{([\w:-]+)\}")


def _front_matter_end(lines: list[str]) -> int:
    if lines and lines[0].strip() == "---":
        for i in range(1, min(len(lines), 200)):
            if lines[i].strip() in ("---", "..."):
                return i + 1
    return 0


def _md_scan(lines: list[str]) -> Iterator[Section]:
    start = _front_matter_end(lines)
    current = Section(path=())
    yield current
    stack: list[tuple[int, str]] = []
    i = start
    n = len(lines)
    while i < n:
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            end = _fence_end(lines, i, fence.group(2))
            current.lines.extend(lines[i : end + 1])
            i = end + 1
            continue
        atx = _ATX.match(line)
        if atx and (atx.group(2) or "").strip():
            path = _push(stack, len(atx.group(1)), _clean_title(atx.group(2)))
            current = Section(path=path, heading=f"{atx.group(1)} {path[-1]}")
            yield current
            i += 1
            continue
        if (
            i + 1 < n
            and line.strip()
            and _SETEXT.match(lines[i + 1])
            and (i == start or not lines[i - 1].strip())
            and not re.match(r"^\s*([-*+>|]|\d+[.)]\s|:)", line)
            and len(lines[i + 1].strip()) >= 3
        ):
            level = 1 if lines[i + 1].strip()[0] == "=" else 2
            path = _push(stack, level, _clean_title(line))
            current = Section(path=path, heading=f"{'#' * level} {path[-1]}")
            yield current
            i += 2
            continue
        current.lines.append(line)
        i += 1


def _fence_end(lines: list[str], i: int, opener: str) -> int:
    char, count = opener[0], len(opener)
    closing = re.compile(rf"^\s{{0,3}}{re.escape(char)}{{{count},}}\s*$")
    for j in range(i + 1, len(lines)):
        if closing.match(lines[j]):
            return j
    return len(lines) - 1


def _flush(para: list[str], blocks: list[Block]) -> None:
    """Close the paragraph being collected (if it holds any text) as a prose block."""
    text = "\n".join(para).strip("\n")
    if text.strip():
        blocks.append(Block(clean_roles(text)))
    para.clear()


def _md_blocks(lines: list[str]) -> list[Block]:
    """Paragraphs and fenced blocks, noise directives removed, code fences marked as code."""
    blocks: list[Block] = []
    para: list[str] = []

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            end = _fence_end(lines, i, fence.group(2))
            _flush(para, blocks)
            info = fence.group(3).strip()
            directive = _DIRECTIVE_INFO.match(info)
            name = directive.group(1) if directive else None
            body = lines[i + 1 : end]
            if name in DROP_DIRECTIVES:
                i = end + 1
                continue
            if name == "eval-rst":  # reStructuredText inside MyST: read as such (`.. tags::` is dropped)
                blocks.extend(_rst_blocks(body))
                i = end + 1
                continue
            if name is not None:
                body = _strip_options(body)
            if fence.group(2)[0] == ":" or (name is not None and name not in CODE_DIRECTIVES):
                # admonitions, notes, cards: their body is prose
                inner = _md_blocks(body)
                head = info if name is None else re.sub(r"^\{[\w:-]+\}\s*", "", info)
                if head and name in (None, "admonition", "note", "tip", "important", "warning", "seealso"):
                    inner.insert(0, Block(clean_roles(head)))
                blocks.extend(inner)
            else:
                closing = lines[end] if end > i and _FENCE.match(lines[end]) else fence.group(2)
                blocks.append(Block("\n".join([line, *body, closing]), is_code=True))
            i = end + 1
            continue
        if _MYST_TARGET.match(line) or re.match(r"^\s*<!--.*-->\s*$", line):
            i += 1
            continue
        if not line.strip():
            _flush(para, blocks)
        else:
            para.append(line)
        i += 1
    _flush(para, blocks)
    return blocks


def _strip_options(body: list[str]) -> list[str]:
    out: list[str] = []
    leading = True
    for ln in body:
        m = _OPTION.match(ln)
        if leading and m:
            if m.group(1) in KEEP_OPTIONS:
                out.append(ln)
            continue
        if leading and ln.strip() == "---":  # MyST YAML option block delimiter
            continue
        leading = False
        out.append(ln)
    return out


# --- reStructuredText ---------------------------------------------------------------------

_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.!$%&(),/;?@\[\]\\{|}])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(.*)$")
_RST_TARGET = re.compile(r"^\s*\.\.\s+_[^:]*:.*$|^\s*__\s+\S+$")
_RST_COMMENT = re.compile(r"^(\s*)\.\.(\s.*)?$")


def _rst_scan(lines: list[str]) -> Iterator[Section]:
    current = Section(path=())
    yield current
    stack: list[tuple[int, str]] = []
    styles: list[tuple[str, bool]] = []
    n = len(lines)
    i = 0

    def level(style: tuple[str, bool]) -> int:
        if style not in styles:
            styles.append(style)
        return styles.index(style) + 1

    while i < n:
        line = lines[i]
        prev_blank = i == 0 or not lines[i - 1].strip()
        # overline + title + underline
        if (
            prev_blank
            and _ADORN.match(line)
            and i + 2 < n
            and lines[i + 1].strip()
            and not _ADORN.match(lines[i + 1])
            and _ADORN.match(lines[i + 2])
            and lines[i + 2].strip()[0] == line.strip()[0]
        ):
            lvl = level((line.strip()[0], True))
            path = _push(stack, lvl, _clean_title(lines[i + 1]))
            current = Section(path=path, heading=f"{'#' * min(lvl, 6)} {path[-1]}")
            yield current
            i += 3
            continue
        # title + underline
        if (
            prev_blank
            and line.strip()
            and not line[0].isspace()
            and not _ADORN.match(line)
            and not _RST_COMMENT.match(line)
            and i + 1 < n
            and _ADORN.match(lines[i + 1])
            and len(lines[i + 1].strip()) >= min(len(line.strip()), 3)
        ):
            lvl = level((lines[i + 1].strip()[0], False))
            path = _push(stack, lvl, _clean_title(line))
            current = Section(path=path, heading=f"{'#' * min(lvl, 6)} {path[-1]}")
            yield current
            i += 2
            continue
        current.lines.append(line)
        i += 1


def _indented_end(lines: list[str], i: int, indent: int) -> int:
    """Index after the block of lines that are blank or indented deeper than `indent`."""
    j = i + 1
    last = i
    while j < len(lines):
        ln = lines[j]
        if ln.strip():
            if len(ln) - len(ln.lstrip()) <= indent:
                break
            last = j
        j += 1
    return last + 1


def _rst_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    para: list[str] = []

    i = 0
    while i < len(lines):
        line = lines[i]
        d = _RST_DIRECTIVE.match(line)
        if d:
            indent = len(d.group(1))
            end = _indented_end(lines, i, indent)
            name = d.group(2)
            _flush(para, blocks)
            if name in DROP_DIRECTIVES:
                i = end
                continue
            body = _strip_options(lines[i + 1 : end])
            if name in CODE_DIRECTIVES:
                blocks.append(Block("\n".join([line, *body]).rstrip(), is_code=True))
            else:
                head = d.group(3).strip()
                inner = _rst_blocks(_dedent(body))
                if head:
                    inner.insert(0, Block(clean_roles(head)))
                blocks.extend(inner)
            i = end
            continue
        if _RST_TARGET.match(line):
            i += 1
            continue
        c = _RST_COMMENT.match(line)
        if c and not line.strip().startswith(".. |"):
            i = _indented_end(lines, i, len(c.group(1)))
            continue
        if not line.strip():
            # a paragraph ending in "::" owns the literal block that follows
            if para and para[-1].rstrip().endswith("::"):
                indent = len(para[0]) - len(para[0].lstrip())
                end = _indented_end(lines, i - 1, indent)
                literal = lines[i:end]
                if any(ln.strip() for ln in literal):
                    text = "\n".join(para + literal).strip("\n")
                    para.clear()
                    blocks.append(Block(clean_roles(text), is_code=True))
                    i = end
                    continue
            _flush(para, blocks)
        else:
            para.append(line)
        i += 1
    _flush(para, blocks)
    return blocks


def _dedent(body: list[str]) -> list[str]:
    widths = [len(ln) - len(ln.lstrip()) for ln in body if ln.strip()]
    cut = min(widths) if widths else 0
    return [ln[cut:] for ln in body]
