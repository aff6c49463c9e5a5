"""Model Markdown -> Slack mrkdwn, cut into sections that fit Slack's per-section limit.

The model writes Markdown (it is good at it); Slack speaks mrkdwn, which differs in the
details that matter (`*bold*`, `<url|label>`, `& < >` escaped, no headings or tables).
The conversion walks markdown-it-py's syntax tree, so nested emphasis, code spans with
asterisks or links with brackets cannot confuse it the way regexes would. Escaping every
piece of model text also means the model cannot produce `<!channel>` or a user mention.

A section holds at most 3,000 characters; longer answers are cut between blocks, and a
code block that is too long is cut into complete fenced blocks. blocks.py packs the
sections into messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode
MAX_SECTION_CHARS = 3000
# Headroom under the hard limit: the fallback text joins sections with separators.
SECTION_BUDGET = 2900

_md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])  # bot/answering/citations.py answer_reader reads answers the same way
_SAFE_SCHEMES = ("http://", "https://", "mailto:")


@dataclass
class _Piece:
    """One top-level Markdown block rendered to mrkdwn; `code` keeps a code block's body."""

    text: str
    code: str | None = None


def escape(text: str) -> str:
    """Slack's three control characters; everything else is literal in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe_url(url: str) -> str | None:
    url = url.strip()
    if not url.lower().startswith(_SAFE_SCHEMES):
        return None
    # `|` and `>` end the link in mrkdwn; spaces and `<` are not valid in a URL anyway;
    # `&` is written as `&amp;`, the form Slack itself uses inside links.
    return quote(url, safe=":/?#[]@!$&'()*+,;=%~-._").replace("&", "&amp;")


def link(url: str, label: str | None = None) -> str:
    """`<url|label>`, or just the escaped label when the URL is not a web/mail link."""
    safe = _safe_url(url)
    label_text = escape(label) if label else None
    if safe is None:
        return label_text or escape(url)
    if not label_text or label == url:
        return f"<{safe}>"
    return f"<{safe}|{label_text.replace('|', '¦')}>"


def _code_fence(body: str) -> str:
    body = escape(body.rstrip("\n").replace("```", "ˋˋˋ"))
    return f"```\n{body}\n```"


def link_key(url: str) -> str:
    """The form in which a model-written link is compared with the given sources' URLs."""
    # markdown-it percent-encodes a link's href; the sources' URLs get the same treatment
    return _md.normalizeLink(url.strip()).split("#", 1)[0].rstrip("/")


def _model_link(url: str, label: str, links: frozenset[str]) -> str:
    """A link the model wrote: live only when it points at a given source, else its words.

    Made-up links (`[x](https://…)`, `<https://…>`, `mailto:`) are broken links or phishing
    waiting to happen; as text (in `verbatim` blocks) Slack does not make them live either.
    """
    if link_key(url) in links:
        return link(url, label)
    return escape(label or url)


def _inline(node: SyntaxTreeNode, *, plain: bool = False, links: frozenset[str] = frozenset()) -> str:
    """Render inline children; `plain` drops emphasis (headings are bold already); `links`: the
    link_key of every URL that may stay a live link."""
    out: list[str] = []
    for child in node.children:
        t = child.type
        if t == "text":
            out.append(escape(child.content))
        elif t in ("softbreak", "hardbreak"):
            out.append("\n")
        elif t == "code_inline":
            out.append(f"`{escape(child.content.replace('`', chr(39)))}`")
        elif t in ("em", "strong", "s"):
            inner = _inline(child, plain=plain, links=links)
            mark = {"em": "_", "strong": "*", "s": "~"}[t]
            out.append(inner if plain or not inner.strip() else f"{mark}{inner}{mark}")
        elif t == "link":
            out.append(_model_link(str(child.attrs.get("href", "")), _text_of(child), links))
        elif t == "image":
            label = _text_of(child) or str(child.attrs.get("alt", "")) or "image"
            out.append(_model_link(str(child.attrs.get("src", "")), label, links))
        else:  # html_inline cannot occur with html disabled; keep any unknown node's text
            out.append(escape(child.content or _text_of(child)))
    return "".join(out)


def _text_of(node: SyntaxTreeNode) -> str:
    """The plain text under a node (link labels, table cells)."""
    if node.type in ("text", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_text_of(c) for c in node.children)


def _indent(text: str, first: str, rest: str) -> str:
    lines = text.split("\n")
    return "\n".join([first + lines[0]] + [(rest + ln) if ln else ln for ln in lines[1:]])


def _table_text(node: SyntaxTreeNode) -> str:
    """A Markdown table as aligned plain-text rows (Slack has no tables; shown as code)."""
    rows: list[list[str]] = []
    for section in node.children:
        for tr in section.children:
            rows.append([_text_of(cell).strip() for cell in tr.children])
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    rows = [r + [""] * (ncols - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(ncols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _block(node: SyntaxTreeNode, depth: int = 0, links: frozenset[str] = frozenset()) -> str:
    t = node.type
    if t == "paragraph":
        return _inline(node.children[0], links=links) if node.children else ""
    if t == "inline":
        return _inline(node, links=links)
    if t == "heading":
        inner = _inline(node.children[0], plain=True, links=links) if node.children else ""
        return f"*{inner}*" if inner.strip() else ""
    if t in ("bullet_list", "ordered_list"):
        items = []
        number = int(node.attrs.get("start", 1) or 1)
        for i, item in enumerate(node.children):
            body = "\n".join(b for b in (_block(c, depth + 1, links) for c in item.children) if b)
            if t == "bullet_list":
                marker = "•" if depth % 2 == 0 else "◦"
            else:
                marker = f"{number + i}."
            items.append(_indent(body, f"{marker} ", " " * (len(marker) + 1)))
        return "\n".join(items)
    if t == "blockquote":
        body = "\n".join(b for b in (_block(c, depth, links) for c in node.children) if b)
        return "\n".join("> " + ln for ln in body.split("\n"))
    if t in ("fence", "code_block"):
        return _code_fence(node.content)
    if t == "hr":
        return "───────"
    if t == "table":
        return _code_fence(_table_text(node))
    # html_block and anything unknown: keep the text, escaped
    return escape(node.content or _text_of(node))


def _pieces(markdown: str, links: frozenset[str] = frozenset()) -> list[_Piece]:
    root = SyntaxTreeNode(_md.parse(markdown or ""))
    pieces = []
    for node in root.children:
        text = _block(node, links=links)
        if not text.strip():
            continue
        code = None  # what a code block holds, so a long one is cut into complete fenced blocks
        if node.type in ("fence", "code_block"):
            code = node.content
        elif node.type == "table":
            code = _table_text(node)
        pieces.append(_Piece(text, code))
    return pieces


def markdown_to_mrkdwn(markdown: str, links: Iterable[str] = ()) -> str:
    """Convert Markdown (as models write it) to Slack mrkdwn; only links to `links` stay live."""
    return "\n\n".join(p.text for p in _pieces(markdown, _keys(links)))


def _keys(urls: Iterable[str]) -> frozenset[str]:
    return frozenset(link_key(u) for u in urls if u)


# --- splitting to Slack's limits -------------------------------------------------------


def _safe_cut(text: str, limit: int) -> int:
    """A cut position <= limit that does not split a `<link>` or an `&entity;`."""
    cut = limit
    for sep in ("\n", " "):
        pos = text.rfind(sep, 0, limit)
        if pos > limit // 2:
            cut = pos
            break
    open_lt, close_gt = text.rfind("<", 0, cut), text.rfind(">", 0, cut)
    if open_lt > close_gt and open_lt > 0:
        end = text.find(">", open_lt)
        if end == -1 or end - open_lt < limit // 2:  # a link that fits the next part moves there whole
            cut = open_lt
    amp = text.rfind("&", max(0, cut - 6), cut)
    if amp != -1 and ";" not in text[amp:cut]:
        cut = amp if amp > 0 else cut
    return max(cut, 1)


def _open_code(text: str) -> str | None:
    """The code mark `text` ends inside of: "```" (a fenced block), "`" (a code span) or None."""
    if text.count("```") % 2:
        return "```"
    if text.replace("```", "").count("`") % 2:
        return "`"
    return None


def split_text(text: str, limit: int, *, balance_code: bool = True) -> list[str]:
    """Cut text into parts of at most `limit` characters, between words where possible.

    A cut inside a code span or a fenced block closes it at the end of the part and opens it
    again at the start of the next, so no part has an unmatched backtick or fence.
    """
    out = []
    while len(text) > limit:
        # room to close a code mark; without progress (a reopened mark in front of an unbreakable
        # run, a tiny limit) the cut is made hard, and at last without balancing the code marks
        hard = max(1, limit - 8)
        for cut, balance in ((_safe_cut(text, max(1, limit - 4)), balance_code), (hard, balance_code), (hard, False)):
            part, rest = text[:cut].rstrip(), text[cut:].lstrip("\n ")
            mark = _open_code(part) if balance else None
            if mark == "```":
                part, rest = part + "\n```", "```\n" + rest
            elif mark == "`":
                part, rest = part + "`", "`" + rest
            if len(rest) < len(text):
                break
        if part:
            out.append(part)
        text = rest
    if text:
        out.append(text)
    return out


def _split_code(code: str, limit: int) -> list[str]:
    """Split a code block by lines, each part a complete fenced block."""
    overhead = len(_code_fence(""))
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for line in code.rstrip("\n").split("\n"):
        for seg in split_text(line, limit - overhead - 1, balance_code=False) or [""]:
            escaped = len(escape(seg)) + 1
            if current and size + escaped > limit - overhead:
                parts.append(_code_fence("\n".join(current)))
                current, size = [], 0
            current.append(seg)
            size += escaped
    if current:
        parts.append(_code_fence("\n".join(current)))
    # escaping can grow a part past the limit in pathological cases; cut those as text
    return [q for p in parts for q in (split_text(p, limit) if len(p) > limit else [p])]


def split_sections(mrkdwn_pieces: Iterable[_Piece], limit: int = SECTION_BUDGET) -> list[str]:
    """Pack rendered blocks into section texts of at most `limit` characters."""
    sections: list[str] = []
    current = ""
    for piece in mrkdwn_pieces:
        parts = [piece.text]
        if len(piece.text) > limit:
            parts = _split_code(piece.code, limit) if piece.code is not None else split_text(piece.text, limit)
        for part in parts:
            if current and len(current) + 2 + len(part) <= limit:
                current = f"{current}\n\n{part}"
            else:
                if current:
                    sections.append(current)
                current = part
    if current:
        sections.append(current)
    return sections


def markdown_sections(markdown: str, limit: int = SECTION_BUDGET, links: Iterable[str] = ()) -> list[str]:
    """Markdown -> mrkdwn section texts, each within Slack's per-section limit; only links to
    `links` (the given sources' URLs) stay live."""
    return split_sections(_pieces(markdown, _keys(links)), limit)
