"""Documents -> chunks: the unit that is embedded, retrieved and cited.

Chunk boundaries follow the structure a reader uses (headings for docs, functions and
classes for code, threads for Slack), because a retrieved chunk has to make sense on its
own and its title has to say where it comes from. The embedded text carries that context
(page title and heading path, module and class, channel) so short chunks still match the
words of a question.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from flytegpt.ingest.doc_sections import (
    detect_format, front_matter, github_anchors, parse_sections, strip_front_matter,
)
from flytegpt.ingest.models import Chunk, Document

# Sections of a page are merged up to ~1,500 characters (chosen on the dev sets:
# tests/bench/RESULTS.md), so a chunk carries a whole topic and its heading path; dense search
# reads the first ~256 tokens, BM25 reads all of it.
DOC_TARGET = 1500  # characters per docs chunk
DOC_MIN = 800  # smaller pieces are merged into a neighbour
DOC_MAX = 2 * DOC_TARGET  # a code block up to this size stays whole
SLACK_MAX = 4000  # longer threads are split on message boundaries
OUTLINE_MAX = 2000  # characters of a page's outline chunk
OUTLINE_INTRO = 300  # characters of the page's first paragraph in its outline
# A heading naming one setting of a generated configuration reference: "max-ttl-hours (int)"
_SETTING = re.compile(r"^([A-Za-z0-9_.\-]+) \((.+)\)$")
REFERENCE_MIN_SETTINGS = 20  # a page with at least this many setting headings is a reference
REFERENCE_TARGET = 800  # characters of settings of one parent per chunk

# Outline chunks (a page's or a module's table of contents) carry this title suffix: they are
# evidence that a source is about a topic, not a passage to quote (search.py).
OUTLINE_SUFFIX = " (outline)"


# Title chunks (a docs page's title alone) carry this one: a short how-to question is often
# the page's title in other words ("How do I get the outputs of a finished execution?" ->
# "Inspecting executions"), which the title's own vector says better than any chunk that
# also holds the page's text. Evidence too: search.py scores pages with it, never serves it.
TITLE_SUFFIX = " (title)"


def is_outline(chunk: Chunk) -> bool:
    return chunk.title.endswith(OUTLINE_SUFFIX)


def is_title(chunk: Chunk) -> bool:
    return chunk.kind == "docs" and chunk.title.endswith(TITLE_SUFFIX)


def is_evidence(chunk: Chunk) -> bool:
    """An outline or a title: evidence of what a source is about, not a passage to quote."""
    return is_outline(chunk) or is_title(chunk)


def chunk_documents(docs: Iterable[Document]) -> list[Chunk]:
    """All chunks of all documents, in document order."""
    out: list[Chunk] = []
    for doc in docs:
        out.extend(chunk_document(doc))
    return out


def chunk_document(doc: Document) -> list[Chunk]:
    """The chunks of one document; every chunk carries the document's source id."""
    if doc.kind == "slack":
        return _slack_chunks(doc)
    if doc.kind == "code":
        from flytegpt.ingest.code_chunking import chunk_code

        return chunk_code(doc)
    return _doc_chunks(doc)


# --- docs ---------------------------------------------------------------------------------


@dataclass
class _Piece:
    text: str
    path: tuple[str, ...]
    is_code: bool
    starts_section: bool
    section: int = 0  # index of its section in the page's sections


def _text_splitter(fmt: str, size: int):
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    language = Language.RST if fmt == "rst" else Language.MARKDOWN
    return RecursiveCharacterTextSplitter.from_language(language, chunk_size=size, chunk_overlap=0)


def _doc_pieces(doc: Document, sections, fmt: str) -> list[_Piece]:
    """Blocks of every section, long prose split, long code split, in page order."""
    pieces: list[_Piece] = []
    splitter = None
    for index, section in enumerate(sections):
        first = True
        for block in section.blocks:
            limit = DOC_MAX if block.is_code else DOC_TARGET
            if len(block.text) <= limit:
                parts = [block.text]
            elif block.is_code:
                parts = _split_code_block(block.text, DOC_TARGET)
            else:
                splitter = splitter or _text_splitter(fmt, DOC_TARGET)
                parts = splitter.split_text(block.text)
            for part in parts:
                pieces.append(_Piece(part, section.path, block.is_code, first, index))
                first = False
    return pieces


_CODE_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,}|:{3,})")


def _split_code_block(text: str, size: int) -> list[str]:
    """A code block too long for one chunk, cut between lines into pieces of about `size`
    characters, each a block of its own: a fenced block's pieces are each opened with its opening
    line (language and all) and closed, so a quoted piece never leaves a fence open; a directive's
    pieces (`.. code-block:: python`) each start with the directive line.

    Cut at a blank line where there is one in the second half of a piece.
    """
    lines = text.split("\n")
    opener = lines[0]
    fence = _CODE_FENCE.match(opener)
    closer = None
    if fence:
        closer = lines[-1] if len(lines) > 1 and lines[-1].strip().startswith(fence.group(1)) else fence.group(1)
        body = lines[1:-1] if len(lines) > 1 and lines[-1] == closer else lines[1:]
    elif re.match(r"^\s*\.\.\s+[\w:-]+::", opener):
        body = lines[1:]
    else:  # a literal block after "::": no line to repeat
        opener, body = None, lines
    frame = (len(opener) + 1 if opener is not None else 0) + (len(closer) + 1 if closer is not None else 0)
    budget = max(size - frame, 200)
    pieces: list[list[str]] = []
    cur: list[str] = []
    used = 0
    for line in _cut_long_lines(body, budget):
        if cur and used + len(line) + 1 > budget:
            blank = max((k for k, ln in enumerate(cur) if not ln.strip() and k >= len(cur) // 2), default=None)
            if blank is not None and blank > 0:
                pieces.append(cur[:blank])
                cur = cur[blank + 1 :]
            else:
                pieces.append(cur)
                cur = []
            used = sum(len(ln) + 1 for ln in cur)
        cur.append(line)
        used += len(line) + 1
    if cur:
        pieces.append(cur)
    out: list[str] = []
    for piece in pieces:
        if out:  # a later piece starts at its first line of code
            while piece and not piece[0].strip():
                piece = piece[1:]
        while piece and not piece[-1].strip():
            piece = piece[:-1]
        if not piece:
            continue
        if opener is None:
            framed = piece
        elif closer is not None:
            framed = [opener, *piece, closer]
        else:  # a directive: a later piece's code starts after a blank line, as the directive's did
            framed = [opener, *piece] if not out else [opener, "", *piece]
        out.append("\n".join(framed))
    return out or [text]


def _cut_long_lines(lines: list[str], width: int) -> Iterable[str]:
    """Lines, one longer than `width` cut into pieces of `width` (a minified line)."""
    for line in lines:
        while len(line) > width:
            yield line[:width]
            line = line[width:]
        yield line


def _pack(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Greedy packing to ~DOC_TARGET characters, preferring to break at section starts."""
    groups: list[list[_Piece]] = []
    cur: list[_Piece] = []
    size = 0
    for p in pieces:
        n = len(p.text) + 2
        if cur:
            fits = size + n <= DOC_TARGET
            tiny = size < DOC_MIN and size + n <= DOC_MAX
            code_fits = p.is_code and not p.starts_section and size + n <= DOC_MAX
            new_section = p.starts_section and size >= DOC_MIN
            if new_section or not (fits or tiny or code_fits):
                groups.append(cur)
                cur, size = [], 0
        cur.append(p)
        size += n
    if cur:
        last = sum(len(p.text) + 2 for p in cur)
        if groups and last < DOC_MIN and sum(len(p.text) + 2 for p in groups[-1]) + last <= DOC_MAX:
            groups[-1].extend(cur)
        else:
            groups.append(cur)
    return groups


def _group_heading(sections, group: list[_Piece]) -> tuple[tuple[str, ...], int | None]:
    """The heading path that names a packed chunk to the model and in the user's citation, and
    the index of that heading's section (its link): the deepest heading whose section (its
    subsections included) holds more than half of the chunk's characters. Not the first piece's
    because it opens the chunk: a chunk of a page's intro and then almost all of one of its
    sections ("Debugging common execution errors" and 96% "Error: Cannot connect to the Docker
    daemon") is about that section. A chunk that opens the page is named by the page: a short
    page is one chunk, whatever its longest section.

    Packing starts a chunk wherever the previous one filled up, so its first piece can be the
    tail of a section whose heading says nothing about the rest: a chunk holding the last line
    of "An error occurred (AccessDenied) ..." and then the whole Spark and x509 sections was
    shown and cited as "AccessDenied ...". One spread evenly over sibling sections is named by
    their parent.

    The chunk is embedded with that title too (209 of the eval corpus's 1,320 docs passages changed):
    MRR@10 dev 0.836 either way, dev_howto +0.003 (the files tuned on), and on the blind ones
    check_chat +0.017, check_heldout +0.010, check_faq -0.002 (one question from rank 4 to 5).
    Naming the other sections' headings, in the title or in the embedded text only, lowered dev
    MRR@10.
    """
    weight: dict[tuple[str, ...], int] = {}
    for p in group:
        for depth in range(len(p.path) + 1):
            weight[p.path[:depth]] = weight.get(p.path[:depth], 0) + len(p.text)
    total = sum(len(p.text) for p in group)
    if group[0].section == 0 and group[0].starts_section:  # the page's start: the page names it
        return group[0].path, group[0].section
    # nested sections only: two sections that are not nested cannot both hold more than half
    path = max((k for k, w in weight.items() if 2 * w > total), key=len, default=group[0].path)
    first = next(p for p in group if p.path[: len(path)] == path)
    if first.path == path:
        return path, first.section
    # a parent whose own text is in an earlier chunk (or has none): its heading is further up the page
    for index in range(first.section, -1, -1):
        if sections[index].path == path:
            return path, index
    return path, None


def _doc_title(doc: Document, path: tuple[str, ...]) -> str:
    if path and path[0] == doc.title:
        path = path[1:]
    return " > ".join([doc.title, *path])


def _doc_chunks(doc: Document) -> list[Chunk]:
    fmt = detect_format(doc.locator) if doc.meta.get("format") != "rst" else "rst"
    sections = parse_sections(doc.text, fmt)
    title = _title_chunk(doc)
    if _is_reference(sections):
        return _reference_chunks(doc, sections) + ([title] if title else [])
    anchors = _anchors(doc, sections)
    chunks = []
    for group in _pack(_doc_pieces(doc, sections, fmt)):
        text = "\n\n".join(p.text for p in group).strip()
        if text:
            path, section = _group_heading(sections, group)
            named = _doc_title(doc, path)  # "Page > Section": linked to that section
            url = _section_url(doc, anchors, section, named)
            # named and embedded under the section holding most of its text: see _group_heading
            chunks.append(_docs_chunk(doc, named, text, url))
    if not chunks:  # a page that is all directives: keep its words anyway (not its front matter)
        body = doc.text.strip() if fmt == "rst" else strip_front_matter(doc.text).strip()
        if not body and fmt != "rst":  # only front matter: its description is what the page says
            body = front_matter(doc.text).get("description", "")
        if body:
            chunks.append(_docs_chunk(doc, doc.title, body[:DOC_MAX]))
    evidence = [_outline_chunk(doc, sections), title if chunks else None]  # no title for an empty page
    return chunks + [c for c in evidence if c is not None]


def _title_chunk(doc: Document) -> Chunk | None:
    title = " ".join(doc.title.split())
    return Chunk(doc.source_id, doc.kind, title + TITLE_SUFFIX, doc.url, title, title) if title else None


def _docs_chunk(doc: Document, title: str, text: str, url: str | None = None) -> Chunk:
    """A docs chunk, embedded with its title as context."""
    return Chunk(doc.source_id, doc.kind, title, url or doc.url, text, f"{title}\n\n{text}")


# GitHub renders these page formats (the loader's meta "format"): .md/.markdown and .rst. Not
# .mdx, .myst or .txt, which it shows as text.
_GITHUB_RENDERED = ("md", "rst")


def _section_url(doc: Document, anchors: list[str | None] | None, section: int | None, title: str) -> str:
    """The doc's URL, at the section a chunk's title names where known."""
    anchor = anchors[section] if anchors and section is not None and title != doc.title else None
    return f"{doc.url}#{quote(anchor, safe='-_')}" if anchor else doc.url


def _anchors(doc: Document, sections) -> list[str | None] | None:
    """The anchor of each section on the page the doc's URL opens, where the renderer is known:
    a file on github.com (doc_sections.github_anchors). None elsewhere: a docs site's ids depend
    on its generator (Sphinx, MkDocs, Docusaurus ...), which the URL template does not say, and a
    wrong anchor is worse than none (the page opens at its top either way, but a title promising
    a section that the link does not reach misleads)."""
    parts = urlsplit(doc.url)
    if parts.hostname != "github.com" or "/blob/" not in parts.path or parts.fragment or parts.query:
        return None
    if doc.meta.get("format") not in _GITHUB_RENDERED:
        return None
    return github_anchors(sections, detect_format(doc.locator))


def _outline_chunk(doc: Document, sections) -> Chunk | None:
    """The page as its title and the heading path of every section.

    A short how-to question ("how do I run a bash script in a workflow?") names what a page
    is about, which its title and headings say better than any one of its sections; a Slack
    thread or a function that shares a few words must not outrank it.
    """
    if not doc.title:
        return None
    lines: list[str] = []
    seen: set[str] = set()
    size = len(doc.title)
    for section in sections:
        if size > OUTLINE_MAX:  # what follows is cut anyway (a page of thousands of headings)
            break
        path = section.path[1:] if section.path and section.path[0] == doc.title else section.path
        line = " > ".join(path)
        if line and line not in seen:
            seen.add(line)
            lines.append(line)
            size += len(line) + 1
    intro = _intro(sections)
    text = "\n".join([doc.title, *([intro] if intro else []), *lines])[:OUTLINE_MAX]
    return _docs_chunk(doc, doc.title + OUTLINE_SUFFIX, text)


def _intro(sections) -> str:
    """The page's first paragraph of prose (what the page is for), cut at OUTLINE_INTRO characters."""
    for section in sections:
        for block in section.blocks:
            if block.is_code or block.text == section.heading or block.text.lstrip().startswith((":", "..", "{")):
                continue
            text = " ".join(block.text.split())
            if len(text) >= 40:
                return text if len(text) <= OUTLINE_INTRO else text[:OUTLINE_INTRO].rsplit(" ", 1)[0] + " ..."
    return ""


# --- configuration references --------------------------------------------------------------


def _is_reference(sections) -> bool:
    """A generated configuration reference: most headings name a setting and its type."""
    settings = sum(1 for s in sections if s.path and _SETTING.match(s.path[-1]))
    return settings >= REFERENCE_MIN_SETTINGS and 2 * settings >= len(sections)


def _reference_chunks(doc: Document, sections) -> list[Chunk]:
    """Settings grouped by their parent (a section or a type), up to REFERENCE_TARGET characters,
    each chunk titled with the key paths it holds ("plugins.k8s: inject-finalizer, ...").

    A pasted setting or error names one entry; packed ~1,500 characters at a time by page
    order, the chunk's heading path names only its first entry and unrelated entries dilute
    it. The key path is built from the headings: a field "k8s (config.K8sPluginConfig)" under
    "Section: plugins" is "plugins.k8s", and the type section "config.K8sPluginConfig" that
    lists its fields further down continues that path.
    """
    type_path: dict[str, str] = {}
    chunks: list[Chunk] = []
    group: list[tuple[str, str, int]] = []  # (key path, entry text, section index) of one parent
    parent = None
    # linked to the first entry's heading, where the page's renderer gives it an id for sure (a
    # generated reference repeats "type (string)" under every parent: those get none)
    anchors = _anchors(doc, sections)

    def flush() -> None:
        if not group:
            return
        keys = [k for k, _, _ in group]
        head = keys[0].rsplit(".", 1)[0] if "." in keys[0] else ""
        names = ", ".join(k.rsplit(".", 1)[-1] for k in keys)
        title = f"{doc.title} > {head}: {names}" if head else f"{doc.title} > {names}"
        text = "\n\n".join(t for _, t, _ in group)
        url = _section_url(doc, anchors, group[0][2], title)
        chunks.append(Chunk(doc.source_id, doc.kind, title, url, text, f"{title}\n{' '.join(keys)}\n\n{text}"))
        group.clear()

    size = 0
    for index, section in enumerate(sections):
        path = section.path[1:] if section.path and section.path[0] == doc.title else section.path
        key = _key_path(path, type_path)
        body = section.text if not section.heading else "\n\n".join(b.text for b in section.blocks[1:])
        if not body.strip():
            continue  # a section or type heading with nothing of its own
        if key is None:
            flush()
            named = _doc_title(doc, section.path)
            chunks.append(_docs_chunk(doc, named, section.text[:DOC_MAX], _section_url(doc, anchors, index, named)))
            continue
        name = key[0]
        this_parent = name.rsplit(".", 1)[0] if "." in name else ""
        text = section.text[:DOC_MAX]
        if group and (this_parent != parent or size + len(text) > REFERENCE_TARGET):
            flush()
            size = 0
        parent = this_parent
        group.append((name, text, index))
        size += len(text) + 2
    flush()
    return chunks


def _key_path(path: tuple[str, ...], type_path: dict[str, str]) -> tuple[str, str] | None:
    """(dotted key path, type) of a setting heading path; records where each type is used."""
    if not path or not (m := _SETTING.match(path[-1])):
        return None
    name, kind = m.group(1), m.group(2).rstrip("_")
    prefix: list[str] = []
    for part in path[:-1]:
        if part.startswith("Section: "):
            prefix = [part.removeprefix("Section: ").strip()]
        elif (field := _SETTING.match(part)) is not None:
            prefix.append(field.group(1))
        elif part in type_path:  # a type's field list: continue from where the type is used
            prefix = [type_path[part]]
    key = ".".join([*prefix, name])
    type_path.setdefault(kind, key)
    return key, kind


# --- slack --------------------------------------------------------------------------------


def _slack_chunks(doc: Document) -> list[Chunk]:
    channel = doc.meta.get("channel", "")
    prefix = f"{channel}: {doc.title}" if channel else doc.title
    if not doc.text.strip():  # a thread of file uploads or deleted messages: nothing to cite
        return []
    merged = doc.text.split("\n\n")  # the loader separates messages with one blank line
    # each message's own link (the loader's meta, in text order): a later part links the message it
    # starts with, in the thread, and a chunk keeps the links of its messages, so a quote of a reply
    # links the reply; a document without them (an older slack_api snapshot) links
    # the thread
    urls = doc.meta.get("message_urls")
    known = isinstance(urls, list) and len(urls) == len(merged) and all(isinstance(u, str) for u in urls)
    if len(doc.text) <= SLACK_MAX:
        return [Chunk(doc.source_id, "slack", doc.title, doc.url, doc.text, f"{prefix}\n\n{doc.text}",
                      message_urls=tuple(urls) if known else None)]
    if not known:
        urls = [doc.url] * len(merged)
    question = merged[0]
    context = question if len(question) <= 600 else question[:600].rsplit(" ", 1)[0] + " ..."
    pieces: list[list[str]] = [[]]
    links: list[list[str]] = [[]]  # the link of each piece's messages
    size = 0
    for m, url in zip(merged, urls):
        if not m.strip():
            continue
        if pieces[-1] and size + len(m) + 2 > SLACK_MAX:
            pieces.append([])
            links.append([])
            size = 0
        pieces[-1].append(m)
        links[-1].append(url)
        size += len(m) + 2
    chunks = []
    for i, (part, own) in enumerate(zip(pieces, links)):
        text = "\n\n".join(part)
        if len(text) > 2 * SLACK_MAX:  # one enormous message: cut it, it is still one thread
            text = text[: 2 * SLACK_MAX]
        embed = f"{prefix}\n\n{text}" if i == 0 else f"{prefix}\n\n{context}\n\n...\n\n{text}"
        title = doc.title if i == 0 else f"{doc.title} (part {i + 1})"
        own_urls = tuple(own[: text.count("\n\n") + 1]) if known else None  # a cut text: its messages'
        chunks.append(Chunk(doc.source_id, "slack", title, own[0], text, embed, message_urls=own_urls))
    return chunks
