"""Structure of documentation pages: headings, sections and blocks for Markdown/MyST and RST.

Both the docs loader (page title) and the chunker (heading paths, code blocks) need the
same reading of a page, so it lives here once. Line-based on purpose: MyST and Sphinx
directives are not CommonMark, and what we need is where headings and code blocks are,
which this gets right without a full parser for each dialect.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
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
    raw: str | None = None  # the heading's text as written (markup and all): what renderers slug
    labels: tuple[str, ...] = ()  # RST targets right above it (".. _caching:"): ids of the section

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


def detect_format(name: str) -> str:
    """"rst" or "md" (MyST and plain text are read as Markdown)."""
    return "rst" if name.lower().endswith(".rst") else "md"


def page_title(text: str, fmt: str) -> str | None:
    """The page's title: its H1 when the page opens with one, else the front matter's `title`
    (or `sidebar_label`), else its first heading at any level; None without any of them.

    Docusaurus, MkDocs, Hugo and Jekyll take a page's title from its front matter and show it
    above a page that has no H1 of its own: a page that opens with `#### Prerequisites` is the
    "Quickstart guide", not "Prerequisites". A page whose first heading is an H1 shows that H1
    (Docusaurus adds the front matter title only "if it does not contain any Markdown title").
    MyST front matter (jupytext, kernelspec) has no title: those pages keep their first heading.

    A Markdown page without a Markdown H1 whose top is HTML (`<h1 align="center">Flyte tutorials
    ...</h1>`, as GitHub READMEs often are) is titled by that `<h1>`: GitHub shows it as the
    page's title, and the file's name ("README") names nothing.

    Read up to the first heading only: the loader asks for every page's title on every ingest,
    unchanged pages included, and parsing whole pages for it was a fifth of a re-ingest."""
    sections = _scan(text, fmt)
    preamble = next(sections)  # the text before the first heading, complete once that is read
    first = next((s for s in sections if s.path), None)
    if fmt != "rst" and not (first is not None and (first.heading or "").startswith("# ")):
        meta = front_matter(text)
        for key in ("title", "sidebar_label"):
            title = _clean_title(meta.get(key, ""))
            if title:
                return title
        title = _html_h1(preamble.lines)
        if title:
            return title
    return first.path[0] if first is not None else None


_HTML_H1 = re.compile(r"<h1\b[^>]*>(.*?)</h1\s*>", re.S | re.I)


def _html_h1(lines: list[str]) -> str | None:
    """The text of the first HTML `<h1>` in lines before any Markdown heading, if it has any."""
    m = _HTML_H1.search("\n".join(lines))
    return (_clean_title(html.unescape(m.group(1))) or None) if m else None


def front_matter(text: str) -> dict[str, str]:
    """The top-level scalar keys of a Markdown page's YAML front matter (`title`, `description`).

    Nested keys (MyST's `kernelspec:` block) and lists are not read; quoted values are unquoted
    and folded (`>`) or literal (`|`) block values are joined into one line. {} without any.
    """
    if not text.startswith("---"):
        return {}
    lines = _lines(text)
    end = _front_matter_end(lines)
    meta: dict[str, str] = {}
    i = 1
    while i < end - 1:
        m = _FM_KEY.match(lines[i])
        i += 1
        if not m:
            continue
        key, value = m.group(1), (m.group(2) or "").strip()
        if value[:1] in ("|", ">"):  # a block scalar: the indented lines that follow
            parts = []
            while i < end - 1 and (not lines[i].strip() or lines[i][:1].isspace()):
                parts.append(lines[i].strip())
                i += 1
            value = " ".join(p for p in parts if p)
        elif len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1].replace('\\"', '"')
        else:
            value = re.sub(r"(^|\s+)#.*$", "", value)  # a YAML comment
        meta.setdefault(key, value)
    return meta


def strip_front_matter(text: str) -> str:
    """The page without its YAML front matter."""
    if not text.startswith("---"):
        return text
    lines = _lines(text)
    return "\n".join(lines[_front_matter_end(lines):])


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
    lines = _lines(text)
    return _rst_scan(lines) if fmt == "rst" else _md_scan(lines)


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


# A link in a heading reads as its label in a citation: RST's `label <url>`_ (or __), Markdown's [label](url).
_RST_TITLE_LINK = re.compile(r"`([^`<\n]*?)\s*<[^<>`\s]+>`__?")
_MD_TITLE_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\([^)\s]+(?:\s+\"[^\"]*\")?\)")


def _clean_title(title: str) -> str:
    title = re.sub(r"\s*\{#[^}]*\}\s*$", "", title)  # MyST/pandoc anchors
    title = _MD_TITLE_LINK.sub(r"\1", _RST_TITLE_LINK.sub(r"\1", title))
    title = clean_roles(strip_tags(title))
    return re.sub(r"\s+", " ", title.replace("`", "").replace("**", "")).strip()


def _push(stack: list[tuple[int, str]], level: int, title: str) -> tuple[str, ...]:
    while stack and stack[-1][0] >= level:
        stack.pop()
    stack.append((level, title))
    return tuple(t for _, t in stack)


# --- where a section is on the rendered page -------------------------------------------------
# Only where the renderer is known and its rule is documented: a page on github.com (a `blob`
# URL) as GitHub renders Markdown and reStructuredText. A docs site ({page} templates) may be
# Sphinx, MkDocs or Docusaurus, each with its own ids: no anchor is guessed there.


def github_anchors(sections: list[Section], fmt: str) -> list[str | None]:
    """Each section's anchor on GitHub's rendering of the page (None: the page's top, or not
    known for sure), for sections in page order as parse_sections gives them.

    Markdown: GitHub's rule for heading ids (docs.github.com "Section links", as github-slugger
    emulates it): the heading's rendered text, lowercased, every character that is not a letter,
    digit, "_", "-" or space dropped, spaces made "-"; a repeated id gets "-1", "-2", ... in page
    order. reStructuredText: GitHub renders it with docutils (github/markup's rest2html, which
    writes an `<a name>` for every id of a section): a section's explicit target (".. _caching:")
    is its id for sure; else the id docutils makes of the title (`_docutils_id`), unless the title
    holds roles or substitutions (rendered otherwise outside Sphinx) or an earlier title made the
    same id (docutils numbers the later one "id1", "id2", ... by its own count)."""
    return _markdown_anchors(sections) if fmt != "rst" else _rst_anchors(sections)


def _markdown_anchors(sections: list[Section]) -> list[str | None]:
    seen: dict[str, int] = {}
    out: list[str | None] = []
    for s in sections:
        if s.raw is None:
            out.append(None)
            continue
        slug = re.sub(r"[^\w\- ]", "", _rendered_heading(s.raw).strip().lower()).replace(" ", "-")
        n = seen.get(slug)
        seen[slug] = 0 if n is None else n + 1
        out.append((slug if n is None else f"{slug}-{n + 1}") or None)
    return out


def _rendered_heading(raw: str) -> str:
    """A Markdown heading's text as GitHub shows it: emphasis and link syntax gone, code spans'
    text kept, inline HTML dropped (markdown-it's inline tokens of the heading)."""

    def text(tokens) -> str:
        out = []
        for t in tokens:
            if t.type in ("text", "code_inline"):
                out.append(t.content)
            elif t.type in ("softbreak", "hardbreak"):
                out.append(" ")
            elif t.children and t.type != "image":
                out.append(text(t.children))
        return "".join(out)

    return text(_inline_reader().parseInline(raw)[0].children or [])


@functools.cache
def _inline_reader():
    """CommonMark with inline HTML, made once (imported only when a page is anchored)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True})


_RST_MARKUP = re.compile(r"(?<![\w`]):[\w:+.-]+:`|\|[^|\s][^|]*\||\[[#*\d][^\]]*\]_")


def _rst_anchors(sections: list[Section]) -> list[str | None]:
    taken: set[str] = set()
    out: list[str | None] = []
    for s in sections:
        label_ids = [i for i in (_docutils_id(" ".join(label.strip("`").lower().split())) for label in s.labels) if i]
        title_id = None
        if s.raw is not None and not _RST_MARKUP.search(s.raw):
            title_id = _docutils_id(_rst_text(s.raw)) or None
        if label_ids:
            out.append(label_ids[0])
        elif title_id and title_id not in taken:
            out.append(title_id)
        else:
            out.append(None)
        taken.update(label_ids)
        if title_id:
            taken.add(title_id)
    return out


def _rst_text(raw: str) -> str:
    """An RST title's text as docutils reads it: ``literals``, *emphasis*, `links <url>`_ and
    `references`_ reduced to their words."""
    text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", raw)  # `label <target>`_
    text = re.sub(r"`([^`]+)`__?", r"\1", text)  # `reference`_
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"(\*\*?)([^*]+)\1", r"\2", text).replace("`", "")


# docutils.nodes.make_id's tables (public domain): letters NFKD does not reduce to ASCII
_ID_DIGRAPHS = {0x00DF: "sz", 0x00E6: "ae", 0x0153: "oe", 0x0238: "db", 0x0239: "qp"}
_ID_LETTERS = {0x00F8: "o", 0x0111: "d", 0x0127: "h", 0x0131: "i", 0x0142: "l", 0x0167: "t", 0x0180: "b",
               0x0183: "b", 0x0188: "c", 0x018C: "d", 0x0192: "f", 0x0199: "k", 0x019A: "l", 0x019E: "n",
               0x01A5: "p", 0x01AB: "t", 0x01AD: "t", 0x01B4: "y", 0x01B6: "z", 0x01E5: "g", 0x0225: "z",
               0x0234: "l", 0x0235: "n", 0x0236: "t", 0x0237: "j", 0x023C: "c", 0x023F: "s", 0x0240: "z",
               0x0247: "e", 0x0249: "j", 0x024B: "q", 0x024D: "r", 0x024F: "y"}


def _docutils_id(text: str) -> str:
    """docutils.nodes.make_id: lowercase, letters made ASCII, every run of other characters one
    "-", no leading digits or hyphens and no trailing hyphen ("" when nothing is left)."""
    text = text.lower().translate(_ID_DIGRAPHS).translate(_ID_LETTERS)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-z0-9]+", "-", " ".join(text.split()))
    return re.sub(r"^[-0-9]+|-+$", "", text)


# --- Markdown / MyST ----------------------------------------------------------------------

_FENCE = re.compile(r"^(\s{0,3})(`{3,}|~{3,}|:{3,})\s*(.*)$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_MYST_TARGET = re.compile(r"^\s*\(\s*[^()\s]+\s*\)=\s*$")
_OPTION = re.compile(r"^\s*:([\w-]+):(\s.*)?$")
_DIRECTIVE_INFO = re.compile(r"^\{([\w:-]+)\}")
_DOCUSAURUS_ADMONITION = re.compile(r"^([A-Za-z]+)(?:\[(.*)\]|\s+(.*))?$")
_FM_KEY = re.compile(r"^([A-Za-z_][\w-]*):(?:\s+(.*))?$")


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
            current = Section(path=path, heading=f"{atx.group(1)} {path[-1]}", raw=atx.group(2))
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
            current = Section(path=path, heading=f"{'#' * level} {path[-1]}", raw=line)
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


def _flush(para: list[str], blocks: list[Block], *, markdown: bool = False) -> None:
    """Close the paragraph being collected (if it holds any text) as a prose block.

    `markdown`: its HTML/JSX tags and comments go too (their text stays)."""
    text = "\n".join(para).strip("\n")
    if markdown and text.strip():
        text = strip_tags(text)
    if text.strip():
        blocks.append(Block(clean_roles(text)))
    para.clear()


# --- MDX and HTML in Markdown ---------------------------------------------------------------
# Docusaurus pages are MDX, also when they are named .md: ES imports and exports, JSX
# components (<Tabs>, <TabItem label="...">), {/* comments */} and HTML (<details>, <div
# className=...>) sit between the paragraphs. None of it is words a reader sees (Slack shows
# it as "&lt;Tabs ...&gt;"); the text inside the components is. Code is never touched: fenced
# blocks are not paragraphs, and inline code spans are skipped.

_MDX_IMPORT = re.compile(r"""^import\s+(?:[\w$*{}\s,]+?\s+from\s+)?(['"])[^'"\n]+\1\s*;?\s*$""")
_MDX_IMPORT_OPEN = re.compile(r"^import\s+(?:[\w$]+\s*,\s*)?\{[^}]*$")  # import {\n  A,\n} from "x"
_MDX_IMPORT_CLOSE = re.compile(r"""\}\s*from\s+(['"])[^'"]+\1\s*;?\s*$""")
_MDX_EXPORT = re.compile(r"^export\s+(?:default\b|const\b|let\b|var\b|function\b|async\b|class\b|\{|\*)")
_COMMENT_OPEN = re.compile(r"\{/\*|<!--")  # MDX's and HTML's comments
_COMMENT_CLOSE = {"{/*": "*/}", "<!--": "-->"}
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# HTML elements written in Markdown pages. A lowercase name that is none of them is a
# placeholder (`--project <project>`, `<your-app-id>`) unless it has attributes.
HTML_TAGS = frozenset(
    "a abbr b big blockquote br center cite code dd del details div dl dt em figcaption figure font "
    "footer h1 h2 h3 h4 h5 h6 header hr html i iframe img ins kbd li mark nav ol p picture pre q s "
    "samp small span strong sub summary sup svg table tbody td tfoot th thead tr tt u ul video".split()
)
_TAG_START = re.compile(r"(?<!\\)<(/?)([A-Za-z][\w.-]*)(?=[\s/>])")
_TAG_MAX = 10_000  # characters of one tag with its attributes (a JSX component's props)
_ATTRIBUTE = re.compile(r"""[\w-]+\s*=""")
_LABEL = re.compile(r"""(?<![\w-])label\s*=\s*(?:"([^"]*)"|'([^']*)'|\{\s*["'`]([^"'`]*)["'`]\s*\})""")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
_MARK = "\x01"  # where a tag was: spaces around it are settled once all tags are gone


def strip_tags(text: str) -> str:
    """Markdown prose without its HTML/JSX tags and MDX/HTML comments, their text kept.

    A tab's label stays as a line of its own ("Slack CLI:"). Inline code is left as it is.
    """
    if "<" not in text and "{/*" not in text:
        return text
    out: list[str] = []
    last = 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_strip_tags_outside_code(text[last : m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_strip_tags_outside_code(text[last:]))
    joined = "".join(out)
    if _MARK not in joined:
        return joined
    joined = re.sub(rf"[ \t]*(?:{_MARK}[ \t]*)+", _join_around_tag, joined)
    lines = [ln for ln in joined.replace(_MARK, "").split("\n") if ln.strip()]
    if not any(_LIST_ITEM.match(ln) for ln in lines):  # the indentation was the markup's nesting
        lines = [ln.strip() for ln in lines]
    return "\n".join(lines)


def _strip_comments(text: str) -> str:
    """Text without its {/* MDX */} and <!-- HTML --> comments (one left open stays)."""
    out: list[str] = []
    last = 0
    while (m := _COMMENT_OPEN.search(text, last)) is not None:
        close = text.find(_COMMENT_CLOSE[m.group(0)], m.end())
        if close < 0:
            break
        out.append(text[last : m.start()])
        out.append(_MARK)
        last = close + len(_COMMENT_CLOSE[m.group(0)])
    out.append(text[last:])
    return "".join(out)


def _strip_tags_outside_code(text: str) -> str:
    text = _strip_comments(text)
    out: list[str] = []
    last = 0
    budget = 4 * len(text) + _TAG_MAX  # characters scanned for tag ends: linear, whatever the text
    for m in _TAG_START.finditer(text):
        if m.start() < last:  # inside a tag just removed (a prop holding "<b>")
            continue
        if budget <= 0:
            break
        stop = min(len(text), m.end() + _TAG_MAX, m.end() + budget)
        end = _tag_end(text, m.end(), stop)
        budget -= (end or stop) - m.end()
        if end is None:
            continue
        replacement = _tag_replacement(text, m.start(), m.group(1), m.group(2), text[m.end() : end - 1])
        if replacement is not None:
            out.append(text[last : m.start()])
            out.append(replacement)
            last = end
    out.append(text[last:])
    return "".join(out)


def _tag_end(text: str, i: int, stop: int) -> int | None:
    """The index after the `>` closing a tag whose attributes start at `i` (before `stop`), or
    None when what follows is no tag's attributes. Quoted values and JSX {expressions}, nested
    to any depth (`steps={[{title: 'a > b'}]}`), are skipped whole."""
    depth = 0
    quote = None
    for k in range(i, stop):
        ch = text[k]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" or (ch == "`" and depth):
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and ch == ">":
            return k + 1
        elif depth == 0 and ch == "<":
            return None
    return None


def _tag_replacement(text: str, start: int, closing: str, name: str, attrs: str) -> str | None:
    """What a tag becomes (a mark where it was, a tab's label), None for what is no markup."""
    html = name in HTML_TAGS
    if not closing and not html and start and (text[start - 1].isalnum() or text[start - 1] == "_"):
        return None  # a generic type in prose: List<String>, Promise<Response>
    markup = (
        bool(closing)
        or html
        or bool(re.match(r"[A-Z][a-z]", name))  # a JSX component: <Tabs>, <TabItem>, <QuickstartGuide />
        or bool(_ATTRIBUTE.search(attrs))
    )
    if not markup:
        return None
    label = _LABEL.search(attrs) if name == "TabItem" and not closing else None
    if label:
        value = next(g for g in label.groups() if g is not None).strip()
        if value:
            return f"{_MARK}\n{value}:\n{_MARK}"
    return _MARK


def _join_around_tag(m: re.Match) -> str:
    """A space where tags stood between two words ("foo<br>bar"), nothing next to punctuation,
    a line's start or end."""
    before = m.string[m.start() - 1] if m.start() else "\n"
    after = m.string[m.end()] if m.end() < len(m.string) else "\n"
    space = not before.isspace() and not after.isspace() and before not in "([{" and after not in ".,;:!?)]}"
    return " " if space else ""


def _mdx_statement(lines: list[str], i: int) -> tuple[int, str]:
    """(how many lines from `i` are an MDX import/export statement or a comment opened on its
    own line that runs over several lines ({/* ... */}, <!-- ... -->), the text after the
    comment on its closing line); (0, "") when none starts at `i`."""
    line = lines[i]
    if _MDX_IMPORT.match(line):
        return 1, ""
    if _MDX_IMPORT_OPEN.match(line):
        for j in range(i + 1, min(len(lines), i + 60)):
            if _MDX_IMPORT_CLOSE.search(lines[j]):
                return j - i + 1, ""
        return 0, ""
    if _MDX_EXPORT.match(line):
        depth = 0
        for j in range(i, len(lines)):
            depth += sum(lines[j].count(c) for c in "{[(") - sum(lines[j].count(c) for c in "}])")
            if depth <= 0:
                return j - i + 1, ""
        return len(lines) - i, ""
    stripped = line.lstrip()
    for opener, closer in (("{/*", "*/}"), ("<!--", "-->")):
        if stripped.startswith(opener) and closer not in stripped:
            for j in range(i + 1, len(lines)):
                if closer in lines[j]:
                    return j - i + 1, lines[j].split(closer, 1)[1]
            return len(lines) - i, ""
    return 0, ""


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
            _flush(para, blocks, markdown=True)
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
                admonition = _DOCUSAURUS_ADMONITION.match(info) if name is None and fence.group(2)[0] == ":" else None
                if admonition:  # Docusaurus: ":::tip[Title]" / ":::warning Title" / ":::note"
                    label = admonition.group(1).capitalize()
                    title = strip_tags((admonition.group(2) or admonition.group(3) or "").strip())
                    if title:
                        inner.insert(0, Block(clean_roles(f"{label}: {title}")))
                    elif inner and not inner[0].is_code:
                        inner[0] = Block(f"{label}: {inner[0].text}")
                    else:
                        inner.insert(0, Block(f"{label}:"))
                elif head and name in (None, "admonition", "note", "tip", "important", "warning", "seealso"):
                    inner.insert(0, Block(clean_roles(head)))
                blocks.extend(inner)
            else:
                closed = end > i and _FENCE.match(lines[end]) is not None
                closing = lines[end] if closed else fence.group(2)
                if end > i and not closed:  # never closed: its last line is code too
                    body = lines[i + 1 : end + 1]
                blocks.append(Block("\n".join([line, *body, closing]), is_code=True))
            i = end + 1
            continue
        if _MYST_TARGET.match(line) or re.match(r"^\s*<!--.*-->\s*$", line):
            i += 1
            continue
        mdx = line.startswith(("import", "export")) or "{/*" in line or "<!--" in line
        skip, rest = _mdx_statement(lines, i) if mdx else (0, "")
        if skip:
            if rest.strip():  # text after a comment, on the comment's closing line
                para.append(rest)
            i += skip
            continue
        if not line.strip():
            _flush(para, blocks, markdown=True)
        else:
            para.append(line)
        i += 1
    _flush(para, blocks, markdown=True)
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
# an internal target (".. _caching:", nothing after the colon): docutils gives its id to what follows
_RST_SECTION_TARGET = re.compile(r"^\.\.\s+_((?:[^:`\\]|\\.)+|`[^`]+`):\s*$")


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

    labels: list[str] = []  # ".. _name:" targets since the last text: they name the next section
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
            current = Section(path=path, heading=f"{'#' * min(lvl, 6)} {path[-1]}", raw=lines[i + 1].strip(),
                              labels=tuple(labels))
            labels = []
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
            current = Section(path=path, heading=f"{'#' * min(lvl, 6)} {path[-1]}", raw=line.strip(),
                              labels=tuple(labels))
            labels = []
            yield current
            i += 2
            continue
        target = _RST_SECTION_TARGET.match(line)
        if target:
            labels.append(target.group(1))
        elif line.strip():
            labels = []
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
