"""The records that flow through ingest: documents from sources, chunks for the index.

A document is what a person would open (a doc page, a Slack thread, a source file);
a chunk is the piece of it that is embedded, retrieved and cited. Both are plain,
JSON-serialisable dataclasses so that Flyte tasks and the index artifact can carry them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DocKind = Literal["docs", "code", "slack"]

# Code as the embedding model reads it: its words only, the first CODE_DENSE_WORDS of them.
# WordPiece makes a token of every ".", "(", ":" and "_" (a third of a Python chunk's tokens),
# which a sentence model trained on prose reads as noise and which pushed the words of long
# functions past its 256-token window. Measured on the dev sets (tests/bench/RESULTS.md,
# "Retrieval"): 128 words are ~20% fewer tokens for the whole eval corpus, dev MRR@10 and
# coverage@10 up, dev_howto coverage@10 -0.004, the rest equal; BM25 reads the whole embed_text.
CODE_DENSE_WORDS = 128
_WORD = re.compile(r"[^\W_]+")  # letters and digits: "_" and punctuation split identifiers
# The same split for ASCII text, as one str.translate: a third of the regex's time, which every
# ingest spends on every code chunk to find its embedding in the cache.
_ASCII_SPLIT = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum()})


def code_words(code: str, limit: int | None = None) -> str:
    """The words of `code` (identifiers split at punctuation and underscores), the first `limit`."""
    if code.isascii():
        return " ".join(code.translate(_ASCII_SPLIT).split()[:limit])
    return " ".join(_WORD.findall(code)[:limit])


def content_key(model_id: str, dense_text: str) -> str:
    """Content address of an embedding: same model + same text read = same vector."""
    h = hashlib.sha256()
    h.update(model_id.encode())
    h.update(b"\0")
    h.update(dense_text.encode())
    return h.hexdigest()


_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that act instead of showing: C0 and C1 controls but tab and newline (NUL, ESC, BEL,
# a carriage return that overwrites the line) and the bidi embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069) that make text read in another order than it is written
# ("Trojan Source"). One definition for answers, stored questions and the terminal.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# What a terminal obeys instead of showing: string sequences (OSC: window title, OSC 52 clipboard
# writes, hyperlinks; DCS, SOS, PM, APC) ended by BEL or ST, CSI sequences (colours, cursor moves,
# clearing the screen), the other ESC sequences (ESC c resets the terminal), each in its 7-bit
# (ESC-led) and 8-bit (C1) spelling. Removed whole, so no parameters are left behind as text.
TERMINAL_SEQUENCE = re.compile(
    "(?:\x1b[\\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\\\|\x9c)"
    "|(?:\x1b\\[|\x9b)[0-?]*[ -/]*[@-~]"
    "|\x1b[ -/]*[0-~]"
)


def strip_controls(text: str) -> str:
    """`text` as valid Unicode without CONTROL_CHARS: what community-written or model-written
    text may carry into Slack, the question log or a terminal."""
    return CONTROL_CHARS.sub("", valid_unicode(text))


def escape_controls(json_text: str) -> str:
    """JSON text with CONTROL_CHARS written as \\uXXXX: json.dumps escapes the C0 controls but,
    with ensure_ascii=False (which keeps other languages readable), leaves C1 controls and bidi
    overrides raw. The text means the same; no terminal or log viewer acts on it."""
    return CONTROL_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def strip_terminal(text: str) -> str:
    """`text` as a terminal or a log viewer shows it literally: TERMINAL_SEQUENCE removed whole,
    then strip_controls (a lone ESC, BEL, bidi overrides)."""
    return strip_controls(TERMINAL_SEQUENCE.sub("", valid_unicode(text)))


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD.

    JSON can spell half of an emoji's surrogate pair ("\\ud83d" alone: Slack exports and API
    payloads have held such cut-off text), and Python decodes it to a str that cannot be
    encoded as UTF-8: the tokenizer, SQLite and every HTTP body downstream fail on it."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def valid_document(doc: "Document") -> "Document":
    """The document with every text field valid Unicode (the same object when it already is)."""
    fields = {k: valid_unicode(v) for k in ("locator", "title", "url", "text") if isinstance(v := getattr(doc, k), str)}
    meta = {k: valid_unicode(v) if isinstance(v, str) else v for k, v in doc.meta.items()}
    if all(fields[k] is getattr(doc, k) for k in fields) and all(meta[k] is doc.meta[k] for k in meta):
        return doc
    return dataclasses.replace(doc, **fields, meta=meta)


@dataclass(frozen=True)
class Document:
    source: str  # the source's configured name
    locator: str  # path relative to the source root; Slack: "<channel name>/<thread_ts>"
    kind: DocKind
    title: str
    url: str  # a URL a person can open (code: without the line anchor; chunks add it)
    text: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. format="md", language="python"

    @property
    def source_id(self) -> str:
        return f"{self.source}:{self.locator}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Document":
        return cls(**d)


@dataclass(frozen=True, slots=True)  # slots: a corpus holds tens of thousands of these
class Chunk:
    source_id: str  # "<source name>:<locator>", the id eval gold lists use
    kind: DocKind
    title: str  # page title + heading path, "module.Class.method", thread title
    url: str  # code: with #Lstart-Lend
    text: str  # what is shown and cited
    embed_text: str  # what is keyword-indexed and, as dense_text, embedded (text plus its context)
    start_line: int | None = None
    end_line: int | None = None
    # Slack: each message's own permalink, in the order of `text`'s messages (the loader separates
    # them with a blank line), so a quote of one reply can link that reply, not only the thread.
    # None elsewhere, and for a thread whose links are not known (an older snapshot).
    message_urls: tuple[str, ...] | None = None

    @property
    def source(self) -> str:
        """The configured name of the source this chunk came from."""
        return self.source_id.split(":", 1)[0]

    @property
    def dense_text(self) -> str:
        """What the embedding model reads: the embed text, or a code chunk's first words."""
        if self.kind != "code":
            return self.embed_text
        return code_words(self.embed_text, CODE_DENSE_WORDS)

    def content_key(self, model_id: str) -> str:
        """Content address of this chunk's embedding (`content_key` of its dense text)."""
        return content_key(model_id, self.dense_text)

    def to_dict(self) -> dict[str, Any]:
        # every field is a scalar or a tuple of strings: asdict's deep copy cost a re-ingest ~0.3 s
        # per 10k chunks. message_urls only where there are some: the rows of docs and code chunks
        # are as before, so an index of them reads with a reader that predates the field.
        d = {name: getattr(self, name) for name in self.__slots__}  # the fields, in order
        if d["message_urls"] is None:
            del d["message_urls"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Chunk":
        urls = d.get("message_urls")
        if urls is not None:  # JSON gives a list: a tuple keeps chunks hashable and equal to the ones made
            d = {**d, "message_urls": tuple(urls)}
        return cls(**d)


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model an index was built with: what a reader checks before serving it."""

    model_id: str
    dimension: int
    normalized: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        return cls(str(d["model_id"]), int(d["dimension"]), bool(d["normalized"]))


@dataclass
class LoadReport:
    """What a loader read and what it had to skip, for the ingest summary."""

    documents: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    # (file name, what is wrong) for what was read and indexed but is not as it should be
    # (a Slack export whose threads cannot be linked): shown beside the skipped files
    notes: list[tuple[str, str]] = field(default_factory=list)
    # files the source's own rules left out (include, exclude, skip_tests): not problems, so not
    # listed one by one, but counted, so a dry run shows that a rule is taking effect
    left_out: int = 0

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))

    def note(self, name: str, what: str) -> None:
        """Something the user should fix, though nothing was left out because of it."""
        self.notes.append((name, what))

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "skipped": [list(s) for s in self.skipped],
                "notes": [list(n) for n in self.notes], "left_out": self.left_out}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoadReport":
        return cls(int(d["documents"]), [(str(n), str(r)) for n, r in d["skipped"]],
                   [(str(n), str(w)) for n, w in d.get("notes", [])], int(d.get("left_out", 0)))
