"""BM25 keyword index (bm25s) with a tokenizer that understands code identifiers.

Questions about Flyte name identifiers (`with_overrides`, `FlyteFile`,
`flytekit.core.task`) that prose writes as words ("with overrides", "flyte file"),
so an identifier yields its parts *and* its joined form. Question words ("how do I
use ...") carry no topic, so the stopword list is much larger than bm25s' "en".

Saved with bm25s' own `save` (numpy .npy written with allow_pickle=False + JSON)
into files the artifact checksums; loaded with allow_pickle=False.

An ingest keeps every chunk's tokens in the store (`keyword-cache/`, TokenCache): a re-ingest
tokenises only the chunks it has not seen, where tokenising all of them took a sixth of a
re-ingest after a small change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

# Bump when the splitting rules or STOPWORDS change: an index built with other rules
# can't be queried with these.
TOKENIZER_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"

# Prose stopwords plus the words every question has ("how do I use ...", "is there a way
# to get ..."): they match everything and rank nothing. Topic words (task, file, run,
# version, default, type, cache, ...) stay.
STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any anyone anything are aren as at
    be because been before being below between both but by
    can cannot could couldn did didn do does doesn doing don done during each either else
    etc even ever every few for from further get gets getting got had hadn has hasn have
    haven having he hello help her here hers herself hey hi him himself his how however
    i ie if im in into is isn it its itself just know let like ll looking m may me might
    mightn mine more most much must mustn my myself need needed needs neither no nor not now
    of off on once one only or other others otherwise our ours ourselves out over own
    per perhaps please possible probably quite re really right s same seem seems shall
    shan she should shouldn so some someone something somehow still such sure t than thank
    thanks that the their theirs them themselves then there these they thing things this
    those though through thus to too tried try trying under until up us use used uses
    using ve very via want wanted wants was wasn way ways we were weren what whatever when
    whenever where whether which while who whom whose why will with within without won
    would wouldn y yes yet you your yours yourself yourselves
    """.split()
)

# An identifier-ish run: words, numbers, snake_case, dotted.paths, kebab-case.
_TOKEN = re.compile(r"[A-Za-z0-9_]+(?:[.\-/][A-Za-z0-9_]+)*")
_SEPARATORS = re.compile(r"[._\-/]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def identifier_parts(raw: str) -> list[str]:
    """`with_overrides` -> with, overrides; `FlyteFile` -> Flyte, File; `core.task` -> core, task."""
    return [p for piece in _SEPARATORS.split(raw) if piece for p in _CAMEL.split(piece)]


def words(text: str) -> list[str]:
    """The topic words of `text`, lowercased and unstemmed: identifiers split into their parts,
    stopwords and single letters dropped. What the offline answerer matches passages with."""
    return [
        w
        for match in _TOKEN.finditer(text)
        for w in (p.lower() for p in identifier_parts(match.group()))
        if len(w) > 1 and w not in STOPWORDS
    ]


# Matched against one _TOKEN run (word pieces joined by `.`, `-` or `/`): a snake_case name, a dotted
# name (a piece with a letter or `_` before its last character, a dot, then a letter or `_` and another
# word character: `flytekit.core`, `v1.types`, not `1.12` or `e.g`), or a number of two digits or more.
# The dotted name is tried only where a piece starts (the run's start or just after a separator), so a
# 40,000-character run without a dot is read once: `[A-Za-z_]\w+\.` tried at every character of it was
# quadratic (2.9 s for a pasted one-line "Traceback … xxxx"). Same matches as that pattern.
_EXACT_NAME = re.compile(r"\w_\w|(?:^|[.\-/])(?=\d*[A-Za-z_]\w)\w+\.[A-Za-z_]\w|^\d{2,}$")
# A command-line flag (`--resource-requests`): _TOKEN drops the dashes, so it is found in the text.
_CLI_FLAG = re.compile(r"(?<![\w-])--[A-Za-z]\w*(?:-\w+)*")


def names_exact_term(text: str) -> bool:
    """Whether `text` names a snake_case or dotted identifier, a command-line flag or a number
    (`map_task`, `FLYTE_AWS_ENDPOINT`, `flytekit.core`, `--resource-requests`, exit code `137`):
    such a question asks about that exact term, wherever it is written, more than about a topic."""
    return bool(_CLI_FLAG.search(text)) or any(_EXACT_NAME.search(m.group()) for m in _TOKEN.finditer(text))


# A run longer than this is expanded without the cache: the cache holds the corpus's identifiers
# (few, short, repeated), and a pasted log or a 4,000-character dotted run would otherwise stay in a
# running bot for good, ~70 KB an entry.
CACHED_RUN_CHARS = 64


def _expand(raw: str) -> tuple[str, ...]:
    """Tokens of one identifier-ish run: its parts, then its joined form; stemmed once per
    distinct short run (an ingest tokenises ~100 runs per chunk, few of them distinct)."""
    return _expand_cached(raw) if len(raw) <= CACHED_RUN_CHARS else _expand_run(raw)


# Entries, not bytes: at most ~900 bytes each (a 64-character run and its tokens), so a bot fed
# distinct runs on purpose holds at most ~30 MB (measured with 200,000 entries: +176 MB). The
# eval corpus (4,498 chunks) has 29,218 distinct short runs; tokenising it all takes 0.32 s with a
# 20,000-entry cache and 0.34 s with 200,000 (AMD EPYC family 25 model 17): hits come from the
# same few identifiers, so a smaller cache costs an ingest nothing measurable.
EXPAND_CACHE_ENTRIES = 32_768


@lru_cache(maxsize=EXPAND_CACHE_ENTRIES)
def _expand_cached(raw: str) -> tuple[str, ...]:
    return _expand_run(raw)


def _expand_run(raw: str) -> tuple[str, ...]:
    parts = identifier_parts(raw)
    words = [p.lower() for p in parts if len(p) > 1 and p.lower() not in STOPWORDS]
    if len(parts) > 1:
        joined = raw.lower().strip("._-/")
        # FlyteFile -> "flytefile" (camel joins with nothing), map_task -> "map_task"
        words.append(joined)
    if not words:
        return ()
    stemmer = _stemmer()
    # Stem plain words (and camel-case joins, consistently on both sides); snake_case and
    # dotted identifiers keep their separators and stay exactly as written.
    return tuple(stemmer.stemWord(w) if w.isalpha() else w for w in words)


def tokenize(text: str) -> list[str]:
    """Lowercased, stemmed tokens of `text`; identifiers give their parts and their whole."""
    out: list[str] = []
    for raw in _TOKEN.findall(text):
        out.extend(_expand(raw))
    return out


def tokenize_many(texts: Sequence[str], *, progress: bool = False) -> list[list[str]]:
    """Tokens of every text, each distinct token one shared string object.

    The stemmer returns a new string per occurrence; a corpus has ~100 tokens per chunk but
    few distinct ones, so sharing them keeps the build's token lists at a pointer per token
    instead of ~50 bytes (tests/bench/bench_memory.py).
    """
    if progress:
        from tqdm.auto import tqdm

        texts = tqdm(texts, desc="keyword index", unit="chunk")
    vocab: dict[str, str] = {}
    return [[vocab.setdefault(t, t) for t in tokenize(text)] for text in texts]


TOKENS_FOLDER = "keyword-cache"


class TokenCache:
    """Token lists by text, for one store and this module's code (its tokenizing rules).

    One line per distinct text: `<sha256 of the text>\t<tokens, space-separated>` (tokens
    never hold whitespace), holding the texts of the last build only.
    """

    def __init__(self, store: str) -> None:
        from flytegpt.ingest.code_version import code_version
        from flytegpt.ingest.line_cache import LineFile

        self._file = LineFile(store, TOKENS_FOLDER, code_version(["keyword.py"]), ".tsv.gz",
                              lambda line: line.partition("\t")[0])

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        """`tokenize_many(texts)`, reading the tokens of texts seen before from the cache, which
        is then replaced by this call's texts."""
        known = self._file.read()
        vocab: dict[str, str] = {}
        out: list[list[str]] = []
        rows: dict[str, int] = {}  # key -> the first row of its text
        fresh = False  # a text the cache did not hold
        for text in texts:
            key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            if key in rows:
                out.append(out[rows[key]])
                continue
            line = known.pop(key, None)  # popped: the lines read are freed as the token lists grow
            tokens = line[len(key) + 1 :].split() if line is not None else tokenize(text)
            fresh = fresh or line is None
            rows[key] = len(out)
            out.append([vocab.setdefault(t, t) for t in tokens])
        self._file.save(rows.keys(), (f"{key}\t{' '.join(out[row])}\n" for key, row in rows.items()), fresh=fresh)
        return out


def _bm25s():
    """bm25s, imported on first use; it sets its own logger to DEBUG on import, which would
    print a line per index build whatever the application's log level is."""
    import bm25s

    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class KeywordIndex:
    """BM25 over chunk texts; document ids are row numbers, like the FAISS index."""

    def __init__(self, bm25, num_docs: int) -> None:
        self._bm25 = bm25
        self.num_docs = num_docs

    @classmethod
    def build(cls, texts: Sequence[str], *, progress: bool = False, store: str | None = None) -> "KeywordIndex":
        """BM25 over `texts`; with `store`, tokens of texts seen by the last build there are reused."""
        bm25s = _bm25s()
        corpus = TokenCache(store).tokenize_many(texts) if store else tokenize_many(texts, progress=progress)
        bm25 = bm25s.BM25()
        if any(corpus):
            # Token ids in sorted token order: bm25s numbers tokens in set order, which
            # changes with PYTHONHASHSEED, so the same chunks gave different index files.
            vocab = {t: i for i, t in enumerate(sorted({t for doc in corpus for t in doc}))}
            ids = [[vocab[t] for t in doc] for doc in corpus]
            del corpus
            bm25.index((ids, vocab), show_progress=False)
        else:  # bm25s can't index an empty vocabulary; one placeholder token scores nothing
            bm25.index([["\x00"]] * max(len(corpus), 1), show_progress=False)
        return cls(bm25, len(texts))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query` (zeros when no query word is indexed)."""
        ids = self._bm25.get_tokens_ids([t for t in tokenize(query)])
        if not ids or self.num_docs == 0:
            return np.zeros(self.num_docs, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(ids), dtype=np.float32)[: self.num_docs]

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores), best first, documents with a zero score left out."""
        scores = self.scores(query)
        k = min(k, len(scores))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[scores[top] > 0]
        return top.astype(np.int64), scores[top]

    def to_files(self) -> dict[str, bytes]:
        """The index as named files (relative names), for the artifact to checksum and store."""
        with tempfile.TemporaryDirectory(prefix="flytegpt-bm25-") as tmp:
            self._bm25.save(tmp, allow_pickle=False, show_progress=False)
            files = {
                name: (Path(tmp) / name).read_bytes()
                for name in sorted(os.listdir(tmp))
                if (Path(tmp) / name).is_file()
            }
        files[TOKENIZER_FILE] = json.dumps(
            {
                "tokenizer": "flytegpt-identifiers",
                "version": TOKENIZER_VERSION,
                "stemmer": "english",
                "num_docs": self.num_docs,
                "stopwords": sorted(STOPWORDS),
            },
            indent=1,
        ).encode()
        return files

    @classmethod
    def load(cls, folder: str | Path) -> "KeywordIndex":
        """Load files written by `to_files` from a local folder (never unpickles)."""
        bm25s = _bm25s()
        folder = Path(folder)
        info = json.loads((folder / TOKENIZER_FILE).read_text())
        if info.get("version") != TOKENIZER_VERSION:
            raise ValueError(
                f"keyword index tokenizer version {info.get('version')}, this code uses "
                f"{TOKENIZER_VERSION}: re-ingest to rebuild the index"
            )
        bm25 = bm25s.BM25.load(str(folder), allow_pickle=False, mmap=False, show_progress=False)
        return cls(bm25, int(info["num_docs"]))
