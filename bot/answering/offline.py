"""The answerer that needs no language model: quote the best passages, cite them.

Used when no chat endpoint is configured (`make demo`) and as the fallback when a model
returns nothing. It says plainly that it is quoting. Output is a pure function of the
question and the sources, so it is deterministic and testable.
"""

from __future__ import annotations

import re
import textwrap
from typing import Sequence

from flytegpt.ingest.keyword import tokenize, words

from . import prompts
from .budget import Source, slack_messages
from .citations import cite_source, split_code
from .types import Citation

MAX_PASSAGES = 3
_PROSE_CHARS = 500  # per passage: a few sentences
_CODE_LINES = 12
_FENCE_BLOCK = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[^\n]*$", re.S | re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\[(*_])")
# reStructuredText's inline link `label <https://…>`_ (or __): the label is what a reader wants;
# a link to a page that is not one of the sources would not stay live in Slack anyway
_RST_LINK = re.compile(r"`([^`<\n]*?)[ \t]*<([^<>`\s]+)>`__?")
# Markdown reference links [label][name] / [label][]: their definitions are rarely in the quote
_REF_LINK = re.compile(r"\[([^\[\]\n]*[^\[\]\n\d][^\[\]\n]*)\]\[[^\[\]\n]*\]")
_REF_DEFINITION = re.compile(r"^[ \t]*\[[^\]\n]+\]:[ \t]*<?(?:https?://|\.{0,2}/)\S*.*(?:\n|$)", re.M)
_DIRECTIVE_OPTION = re.compile(r"[ \t]*:[\w-]+:.*")  # MyST/RST directive options (":caption: x.py")
_MAX_CONTEXT = 160  # a Slack thread's question, shown as one line above the reply quoted
_RST_CODE = re.compile(
    r"^([ \t]*)\.\. (?:code-block|code|sourcecode)::[ \t]*([\w+-]*)[ \t]*\n"
    r"(?:\1[ \t]+:[\w-]+:.*\n)*"  # directive options
    r"((?:[ \t]*\n)*(?:(?:\1[ \t]+\S.*|[ \t]*)(?:\n|$))+)",
    re.M,
)


def _rst_code_to_fences(text: str) -> str:
    """reStructuredText code directives become Markdown fences, so they are quoted as code."""

    def fence(m: re.Match) -> str:
        body = textwrap.dedent(m.group(3).strip("\n"))
        return f"```{m.group(2)}\n{body}\n```\n\n"

    return _RST_CODE.sub(fence, text)


def _plain_markup(prose: str) -> str:
    """Prose as a reader wants it: RST inline links and Markdown reference links become their
    labels, reference definitions go; inline code is left as written."""
    prose = _RST_LINK.sub(lambda m: m.group(1).strip() or f"`{m.group(2)}`", prose)
    prose = _REF_DEFINITION.sub("", prose)
    return "".join(seg if code else _REF_LINK.sub(r"\1", seg) for code, seg in split_code(prose)).strip()


def _code_lines(block: str) -> tuple[str, list[str], str]:
    """A fenced block as (opener, body, closer), without a MyST directive's option lines,
    which say how the docs build renders the block, not what it holds."""
    lines = block.strip("\n").split("\n")
    opener, body, closer = lines[0], lines[1:-1], lines[-1]
    if opener.lstrip("`~").startswith("{"):
        while body and _DIRECTIVE_OPTION.fullmatch(body[0]):
            body = body[1:]
    return opener, body, closer


def _is_stub(block: str) -> bool:
    """A `{literalinclude}` or a block of nothing but options: the code lives elsewhere, and
    quoting the stub would show only a `:caption:` line."""
    opener, body, _ = _code_lines(block)
    return opener.lstrip("`~").startswith("{literalinclude}") or not any(line.strip() for line in body)


# A name the asker capitalised mid-sentence ("on IBM Cloud", "a Haskell SDK", "in Cosmos DB"): a product,
# a language, a place. Only after a word and one space: the first word of a sentence, of a clause after
# a comma, a dash or a bracket, of a bullet or a quote is capitalised whatever it is ("Sorry, Weirdly").
# Names written one after another are one name ("Apple Silicon", "Google Dataflow").
_NAME = re.compile(r"(?<=[A-Za-z0-9] )(?:[A-Z][A-Za-z]{2,}|[A-Z]{3,})(?: (?:[A-Z][A-Za-z]+|[A-Z]{2,}))*\b")
_MAX_UNMENTIONED = 3
# capitalised, and no names of anything the corpus could hold: Python's constants ("when version is
# None"), chat's acronyms ("need this ASAP"), days and months
_NOT_NAMES = frozenset("""None True False ASAP URGENT IMO IMHO PTAL FYI TIA BTW TLDR LGTM WIP ETA EOD AFAIK
    IIRC TBH PLS THX OOO Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April
    June July August September October November December""".split())
UNMENTIONED_NOTE = "_None of the passages found mention {names}._"


def unmentioned_names(question: str, sources: Sequence[Source]) -> list[str]:
    """The names in a question that no source found mentions, as the asker wrote them.

    Without a model nothing else tells the asker that the passages quoted may not answer: "Is there a
    Haskell SDK?" got passages about the Python SDK and "What's the weather in Berlin?" a weather
    tutorial, each under "the most relevant passages". A capitalised name the corpus has
    nowhere near the question is the plainest sign; every-day words ("huge", "went") would say it about
    a quarter of good answers, capitalised names about one in twenty, and then truthfully ("EKS" when
    the passages are about GPU nodes in general). Of a name of several words, the words nowhere in the
    sources are named ("Haskell" of "Haskell SDK", "Apple Silicon" whole). Not for a question in another language, whose nouns
    German and Spanish capitalise or start sentences with."""
    from flytegpt.bot.question_text import reads_as_another_language

    named = list(dict.fromkeys(" ".join(w for w in m.group().split() if w not in _NOT_NAMES)
                               for m in _NAME.finditer(question)))
    named = [n for n in named if n]
    if not named or not sources or reads_as_another_language(question):
        return []
    found: set[str] = set()
    for s in sources:
        found.update(tokenize(f"{s.title}\n{s.text}"))
    missing: list[str] = []
    for name in named:  # of a name of several words, the runs of words the sources lack ("Cosmos" of "Cosmos DB")
        run: list[str] = []
        for word in [*name.split(), ""]:
            if word and (t := tokenize(word)) and not any(x in found for x in t):
                run.append(word)
            elif run:
                missing.append(" ".join(run))
                run = []
    return list(dict.fromkeys(missing))[:_MAX_UNMENTIONED]


def _or_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def query_terms(question: str) -> set[str]:
    """The question's topic words (the keyword index's stopwords and identifier splitting)."""
    return {w for w in words(question) if len(w) >= 3}


def _score(text: str, terms: set[str]) -> int:
    found = set(words(text))
    return sum(1 for t in terms if t in found or any(w.startswith(t) for w in found))


def _units(text: str) -> list[tuple[bool, str]]:
    """Prose paragraphs and fenced code blocks, in order."""
    units: list[tuple[bool, str]] = []
    text = _rst_code_to_fences(text)
    pos = 0
    for m in _FENCE_BLOCK.finditer(text):
        _prose_units(text[pos : m.start()], units)
        if not _is_stub(m.group(0)):
            units.append((True, m.group(0)))
        pos = m.end()
    _prose_units(text[pos:], units)
    return units


def _prose_units(text: str, units: list[tuple[bool, str]]) -> None:
    for para in re.split(r"\n\s*\n", text):
        para = _plain_markup(para)
        if not para or para == "[...]":
            continue
        if len(para) <= _PROSE_CHARS:
            units.append((False, para))
            continue
        for sentence in _SENTENCE_END.split(para):
            if sentence.strip():
                units.append((False, sentence.strip()[:_PROSE_CHARS]))


def _trim_code(block: str, terms: set[str], fence: tuple[str, str] | None = None) -> str:
    if fence is None:
        opener, body, closer = _code_lines(block)
    else:
        opener, closer = fence
        body = block.strip("\n").split("\n")
    while body and not body[0].strip():
        body = body[1:]
    while body and not body[-1].strip():
        body = body[:-1]
    if len(body) > _CODE_LINES:
        best, best_score = 0, -1
        for i in range(0, len(body) - _CODE_LINES + 1):
            s = _score("\n".join(body[i : i + _CODE_LINES]), terms)
            if s > best_score:
                best, best_score = i, s
        body = body[best : best + _CODE_LINES]
    return "\n".join([opener, *body, closer])


def excerpt(source: Source, terms: set[str]) -> tuple[str, int, str]:
    """The few lines of a source that best match the question, as Markdown, their overlap, and
    the link to what they quote: a Slack reply's own permalink where the index has it (the
    thread's link opens its first message, and the reply may be one of dozens),
    else the source's."""
    if source.kind == "code":
        code = _trim_code(source.text, terms, fence=(f"```{source.language}", "```"))
        return code, _score(code, terms), source.url
    if source.kind == "slack":
        thread = _thread_excerpt(source.text, terms, source.message_urls)
        if thread is not None:
            shown, score, url = thread
            return shown, score, url or source.url
    return *_passage(_without_title(_units(source.text), source.title), terms), source.url


def _without_title(units: list[tuple[bool, str]], title: str) -> list[tuple[bool, str]]:
    """A page's chunk opens with its heading, which the answer already shows in bold above the
    quote ("**Caching** [1]" then "> **Caching**"): the quote starts under it."""
    if len(units) > 1 and not units[0][0]:
        heading = re.fullmatch(r"#+\s*(.+?)\s*#*", units[0][1].strip())
        names = {title.strip(), title.rsplit(" > ", 1)[-1].strip()}
        if heading and heading.group(1).strip("*_ ") in names:
            return units[1:]
    return units


def _best_window(units: list[tuple[bool, str]], terms: set[str]) -> tuple[int, int, int]:
    """(score, start, end) of the units that match the question best; a tie keeps the earlier."""
    best: tuple[int, int, int] = (-1, 0, 1)
    for i in range(len(units)):
        # a window: prose up to _PROSE_CHARS plus at most one code block (trimmed later)
        size, code, j = 0, 0, i
        while j < len(units):
            is_code, text = units[j]
            if j > i and (code if is_code else size + len(text) > _PROSE_CHARS):
                break
            code += is_code
            size += 0 if is_code else len(text)
            j += 1
        s = _score(" ".join(u[1] for u in units[i:j]), terms)
        if s > best[0]:
            best = (s, i, j)
    return best


def _passage(units: list[tuple[bool, str]], terms: set[str]) -> tuple[str, int]:
    """The best window of a document's units, rendered, and its overlap."""
    if not units:
        return "", 0
    score, i, j = _best_window(units, terms)
    while j - i > 1 and not units[j - 1][0] and re.fullmatch(r"#+\s.*", units[j - 1][1]):
        j -= 1  # a heading with nothing under it is noise
    return _render(units[i:j], terms), score


def _render(units: list[tuple[bool, str]], terms: set[str]) -> str:
    """Prose as a quote, code as (trimmed) code."""
    out = []
    for is_code, text in units:
        if is_code:
            out.append(_trim_code(text, terms))
        else:
            text = re.sub(r"^#+\s*(.*)$", r"**\1**", text, flags=re.M)  # headings read oddly in a quote
            out.append("\n".join("> " + line if line.strip() else ">" for line in text.split("\n")))
    return "\n\n".join(out)


def _thread_excerpt(text: str, terms: set[str], urls: Sequence[str] = ()) -> tuple[str, int, str] | None:
    """A Slack thread quoted for its answer: the question's first line for context, then the
    best-matching reply (the first when none matches better), and that reply's link ("" when
    `urls`, one per message of `text`, does not say). None when there is no reply.

    The question repeats the asker's words, so it would win a plain overlap window and leave
    out the reply that answers it. The loader separates messages with a blank line; the
    first is the question, and each starts with its author's name.
    """
    parts = [p.strip() for p in slack_messages(text)]
    links = urls if len(urls) == len(parts) else [""] * len(parts)
    messages = [(m, url) for m, url in zip(parts, links) if m and m != "[...]"]
    replies = [(_units(m), url) for m, url in messages[1:]]
    replies = [(units, url) for units, url in replies if units]
    if not replies:
        return None
    best, url = max(replies, key=lambda r: _score(" ".join(u[1] for u in r[0]), terms))  # first of equals
    reply, _ = _passage(best, terms)
    context = _render([(False, _first_line(messages[0][0]))], terms)
    shown = f"{context}\n\n{reply}"
    return shown, _score(shown, terms), url


def _first_line(message: str) -> str:
    """A message's first line, cut at a word near _MAX_CONTEXT; "…" marks that it goes on."""
    message = _plain_markup(message)
    line = message.split("\n", 1)[0].strip()
    cut = line if len(line) <= _MAX_CONTEXT else line[:_MAX_CONTEXT].rsplit(" ", 1)[0]
    return cut if cut == message else f"{cut} …"


def offline_answer(question: str, sources: Sequence[Source], header: str = prompts.OFFLINE_HEADER,
                   asked: str | None = None) -> tuple[str, list[Citation]]:
    """Quote the best 2-3 sources. Returns (Markdown text, citations).

    `question` is what was searched (in a thread, with the thread's subject); `asked` the asker's own
    message, whose names the note reads (a thread's first question's names said again under every
    follow-up)."""
    terms = query_terms(question)
    parts = [header]
    unmentioned = unmentioned_names(question if asked is None else asked, sources)
    if unmentioned:
        parts[0] += "\n" + UNMENTIONED_NOTE.format(names=_or_list(unmentioned))
    citations = []
    bar = 0
    for s in list(sources)[:MAX_PASSAGES]:
        n = len(citations) + 1
        body, overlap, url = excerpt(s, terms)
        if not body or (citations and terms and overlap < bar):
            continue  # after the best source, only passages about as close to the question
        if not citations:
            bar = max(1, (overlap + 1) // 2)
        citation = cite_source(n, s, url)
        # a Slack thread's day beside its title: a 2021 answer quoted as is may be out of date
        parts.append(f"**{s.title}**{citation.date_note} [{n}]\n\n{body}")
        citations.append(citation)
    return "\n\n".join(parts), citations
