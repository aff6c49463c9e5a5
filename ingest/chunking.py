"""Documents -> chunks: the unit that is embedded, retrieved and cited.

Chunk boundaries follow the structure a reader uses (headings for docs, functions and
classes for code, threads for Slack), because a retrieved chunk has to make sense on its
own and its title has to say where it comes from. The embedded text carries that context
(page title and heading path, module and class, channel) so short chunks still match the
words of a question.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flytegpt.ingest.doc_sections import detect_format, parse_sections
from flytegpt.ingest.models import Chunk, Document

# Measured on ../shared/eval/dev.jsonl (MRR@10 0.789 -> 0.804 from 1200/450): sections of a
# page are merged up to ~1,500 characters, so a chunk carries a whole topic and its heading
# path; dense search reads the first ~256 tokens, BM25 reads all of it.
DOC_TARGET = 1500  # characters per docs chunk
DOC_MIN = 800  # smaller pieces are merged into a neighbour
DOC_MAX = 2 * DOC_TARGET  # a code block up to this size stays whole
SLACK_MAX = 4000  # longer threads are split on message boundaries


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


def _text_splitter(fmt: str, size: int):
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    language = Language.RST if fmt == "rst" else Language.MARKDOWN
    return RecursiveCharacterTextSplitter.from_language(language, chunk_size=size, chunk_overlap=0)


def _doc_pieces(doc: Document, fmt: str) -> list[_Piece]:
    """Blocks of every section, long prose split, long code split, in page order."""
    pieces: list[_Piece] = []
    splitter = None
    for section in parse_sections(doc.text, fmt):
        first = True
        for block in section.blocks:
            limit = DOC_MAX if block.is_code else DOC_TARGET
            if len(block.text) <= limit:
                parts = [block.text]
            else:
                splitter = splitter or _text_splitter(fmt, DOC_TARGET)
                parts = splitter.split_text(block.text)
            for part in parts:
                pieces.append(_Piece(part, section.path, block.is_code, first))
                first = False
    return pieces


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


def _doc_title(doc: Document, path: tuple[str, ...]) -> str:
    if path and path[0] == doc.title:
        path = path[1:]
    return " > ".join([doc.title, *path])


def _doc_chunks(doc: Document) -> list[Chunk]:
    fmt = detect_format(doc.locator) if doc.meta.get("format") != "rst" else "rst"
    chunks = []
    for group in _pack(_doc_pieces(doc, fmt)):
        text = "\n\n".join(p.text for p in group).strip()
        if not text:
            continue
        title = _doc_title(doc, group[0].path)
        chunks.append(
            Chunk(
                source_id=doc.source_id,
                kind=doc.kind,
                title=title,
                url=doc.url,
                text=text,
                embed_text=f"{title}\n\n{text}",
            )
        )
    if not chunks and doc.text.strip():  # a page that is all directives: keep its words anyway
        text = doc.text.strip()[:DOC_MAX]
        chunks.append(Chunk(doc.source_id, doc.kind, doc.title, doc.url, text, f"{doc.title}\n\n{text}"))
    return chunks


# --- slack --------------------------------------------------------------------------------


def _slack_chunks(doc: Document) -> list[Chunk]:
    channel = doc.meta.get("channel", "")
    prefix = f"{channel}: {doc.title}" if channel else doc.title
    if len(doc.text) <= SLACK_MAX:
        return [Chunk(doc.source_id, "slack", doc.title, doc.url, doc.text, f"{prefix}\n\n{doc.text}")]
    merged = doc.text.split("\n\n")  # the loader separates messages with one blank line
    question = merged[0]
    context = question if len(question) <= 600 else question[:600].rsplit(" ", 1)[0] + " ..."
    pieces: list[list[str]] = [[]]
    size = 0
    for m in merged:
        if pieces[-1] and size + len(m) + 2 > SLACK_MAX:
            pieces.append([])
            size = 0
        pieces[-1].append(m)
        size += len(m) + 2
    chunks = []
    for i, part in enumerate(pieces):
        text = "\n\n".join(part)
        if len(text) > 2 * SLACK_MAX:  # one enormous message: cut it, it is still one thread
            text = text[: 2 * SLACK_MAX]
        embed = f"{prefix}\n\n{text}" if i == 0 else f"{prefix}\n\n{context}\n\n...\n\n{text}"
        title = doc.title if i == 0 else f"{doc.title} (part {i + 1})"
        chunks.append(Chunk(doc.source_id, "slack", title, doc.url, text, embed))
    return chunks
