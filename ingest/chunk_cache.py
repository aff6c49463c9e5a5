"""The chunks of documents that did not change since the last ingest, reused instead of re-made.

With the embedding cache, a re-ingest after a small change embeds only the new chunks; what
was left was chunking everything again (a Python parse per code file, section parsing per
page: 0.8 of the 2.7 s an unchanged re-ingest of the eval corpus took). A document is keyed
by everything chunking reads (its fields) and by the chunking code's version
(ingest/code_version.py), so an edited page or an edited chunker is chunked afresh.

Stored in the index store as `chunk-cache/<code version>.jsonl.gz`: one line per document,
`{"key": ..., "chunks": [...]}`. Each ingest replaces the file atomically with the documents
it saw, so deleted documents drop out, and files of other code versions are removed. It is
only a cache: an unreadable file is logged and ignored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging

from flytegpt.ingest.code_version import chunking_version
from flytegpt.ingest.models import Chunk, Document
from flytegpt.ingest.store import atomic_writer, get_fs, join, list_dir, read_bytes

log = logging.getLogger(__name__)

FOLDER = "chunk-cache"


def document_key(doc: Document) -> str:
    """sha256 of everything a document's chunks are made from."""
    body = json.dumps(doc.to_dict(), sort_keys=True, ensure_ascii=False, default=str)
    # surrogatepass: a name os.walk decoded with surrogate escapes (not UTF-8) still has a key;
    # the sources report and skip such files, and the key must not be what fails first
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


class ChunkCache:
    """Chunks by document key, for one store and the current chunking code."""

    def __init__(self, store: str) -> None:
        self.fs, root = get_fs(store)
        self.folder = join(root, FOLDER)
        self.path = join(self.folder, f"{chunking_version()}.jsonl.gz")
        self._known: dict[str, list[dict]] | None = None  # the last ingest's, consumed as matched
        # This ingest's documents, what save() writes: references to the chunks the caller
        # keeps anyway, so the cache adds no copy of the corpus to an ingest's memory.
        self._seen: dict[str, list[Chunk]] = {}
        self.hits = 0

    def _load(self) -> dict[str, list[dict]]:
        if self._known is None:
            self._known = {}
            data = read_bytes(self.fs, self.path)
            if data is not None:
                try:
                    with gzip.open(io.BytesIO(data), "rt", encoding="utf-8") as lines:
                        for line in lines:
                            entry = json.loads(line)
                            self._known[entry["key"]] = entry["chunks"]
                except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
                    log.warning("chunk cache %s is unreadable (%s): chunking every document", self.path, e)
                    self._known = {}
        return self._known

    def chunks(self, doc: Document, make) -> list[Chunk]:
        """`doc`'s chunks: the cached ones if it is unchanged, else `make(doc)` (and remembered)."""
        key = document_key(doc)
        cached = self._load().pop(key, None)
        chunks = None
        if cached is not None:
            try:
                chunks = [Chunk.from_dict(c) for c in cached]
                self.hits += 1
            except TypeError:  # an entry of another shape: make it again
                chunks = None
        if chunks is None:
            chunks = make(doc)
        self._seen[key] = chunks
        return chunks

    def save(self) -> None:
        """Write this ingest's documents (only), then drop other code versions' files."""
        try:
            with atomic_writer(self.fs, self.path) as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                    text = io.TextIOWrapper(gz, encoding="utf-8")
                    for key, chunks in self._seen.items():
                        entry = {"key": key, "chunks": [c.to_dict() for c in chunks]}
                        text.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    text.flush()
                    text.detach()
            for entry in list_dir(self.fs, self.folder):
                if entry["name"].rstrip("/") != self.path and entry["name"].endswith(".jsonl.gz"):
                    self.fs.rm(entry["name"])
        except OSError as e:  # a cache that cannot be written costs time next run, nothing else
            log.warning("could not write the chunk cache %s: %s", self.path, e)
