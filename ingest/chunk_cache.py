"""The chunks of documents that did not change since the last ingest, reused instead of re-made.

With the embedding cache, a re-ingest after a small change embeds only the new chunks; what
was left was chunking everything again (a Python parse per code file, section parsing per
page: 0.8 of the 2.7 s an unchanged re-ingest of the eval corpus took). A document is keyed
by everything chunking reads (its fields) and by the chunking code's version
(ingest/code_version.py), so an edited page or an edited chunker is chunked afresh.

Stored in the index store as `chunk-cache/<code version>.jsonl.gz` (ingest/line_cache.py):
one line per document, `{"key": ..., "chunks": [...]}`, holding the documents the last ingest
saw. It is only a cache: an unreadable file or entry is logged and chunked afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging

from flytegpt.ingest.code_version import chunking_version
from flytegpt.ingest.line_cache import LineFile
from flytegpt.ingest.models import Chunk, Document

log = logging.getLogger(__name__)

FOLDER = "chunk-cache"
_KEY_PREFIX = '{"key": "'  # every line starts so: the key is read without decoding the line
_KEY_LENGTH = 64


def document_key(doc: Document) -> str:
    """sha256 of everything a document's chunks are made from."""
    body = json.dumps(doc.to_dict(), sort_keys=True, ensure_ascii=False, default=str)
    # surrogatepass: a name os.walk decoded with surrogate escapes (not UTF-8) still has a key;
    # the sources report and skip such files, and the key must not be what fails first
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


class ChunkCache:
    """Chunks by document key, for one store and the current chunking code."""

    def __init__(self, store: str) -> None:
        self._file = LineFile(store, FOLDER, chunking_version(), ".jsonl.gz", _line_key)
        # The last ingest's lines by key, consumed as matched; a line is decoded when its
        # document comes, and an unchanged document's line is written back as it was read
        # (encoding every chunk again took a tenth of a small re-ingest).
        self._known: dict[str, str] | None = None
        # This ingest's documents, what save() writes: a line read, or references to the chunks
        # the caller keeps anyway, so the cache adds no copy of the corpus to an ingest's memory.
        self._seen: dict[str, str | list[Chunk]] = {}
        self.hits = 0

    def chunks(self, doc: Document, make) -> list[Chunk]:
        """`doc`'s chunks: the cached ones if it is unchanged, else `make(doc)` (and remembered)."""
        key = document_key(doc)
        if self._known is None:
            self._known = self._file.read()
        line = self._known.pop(key, None)
        if line is not None:
            try:
                chunks = [Chunk.from_dict(c) for c in json.loads(line)["chunks"]]
            except (ValueError, KeyError, TypeError) as e:  # a damaged line, or chunks of another shape
                log.debug("chunk cache entry of %s unusable (%s): chunking it", doc.locator, e)
            else:
                self.hits += 1
                self._seen[key] = line
                return chunks
        chunks = make(doc)
        self._seen[key] = chunks
        return chunks

    def save(self) -> None:
        """Write this ingest's documents (only), then drop other code versions' files; nothing
        when the file holds exactly them already."""
        self._file.save(
            self._seen.keys(),
            (entry if isinstance(entry, str)
             else json.dumps({"key": key, "chunks": [c.to_dict() for c in entry]}, ensure_ascii=False) + "\n"
             for key, entry in self._seen.items()),
            fresh=not all(isinstance(e, str) for e in self._seen.values()),
        )


def _line_key(line: str) -> str:
    """The document key of a cache line: sliced when the line starts as save() writes it."""
    end = len(_KEY_PREFIX) + _KEY_LENGTH
    if line.startswith(_KEY_PREFIX) and line[end : end + 1] == '"':
        return line[len(_KEY_PREFIX) : end]
    return json.loads(line)["key"]
