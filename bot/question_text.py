"""What of a user's text counts as the question: one rule for the Slack bot, its question log and
bulk Q&A, so a question the bot would answer is the question bulk Q&A asks."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from flytegpt.bot.pasted import fit_question, read_paste, search_text
from flytegpt.ingest.models import strip_controls

# Characters that show nothing. A question made of these and spaces is empty. They are only
# stripped at the ends: inside a word U+200D joins emoji (a family, a skin tone) and must stay.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def clean_question(text: str) -> str:
    """A user's question without what would hide or disguise it where it is searched, quoted back
    and stored: control characters (NUL, ESC, BEL; tab and newline stay) by the same rule as the
    model's answers, bidi overrides, and blank or invisible characters at either end ("" when
    nothing else is left, so a question of zero-width spaces is the empty question)."""
    text = strip_controls(text)
    while True:  # str.strip, not a regex: "a" + 40,000 spaces + "b" took a regex 5 s
        stripped = text.strip().strip(_INVISIBLE)
        if stripped == text:
            return text
        text = stripped


def clip_question(text: str, limit: int) -> str:
    """At most `limit` characters, a cut marked with "…": what the question log keeps of a question
    turned down as too long (stored whole, a user could write ~450 KB a minute into the database)."""
    return text if len(text) <= limit else text[:max(0, limit - 1)] + "\u2026"


def answerable_length(text: str, limit: int) -> bool:
    """Whether the answerer takes a question of this length rather than turning it down at once:
    not empty, and within `limit` ([answer] max_question_chars) or holding a pasted traceback or
    log that it cuts to fit (`pasted.fit_question`). What the Slack layer asks before
    it shows 👀 and counts the question against the asker's rate limit: a pasted trace is a question."""
    text = text.strip()
    return bool(text) and fit_question(text, limit) is not None


def mostly_another_script(text: str) -> bool:
    """Is a third or more of the question's letters in a script other than Latin (Chinese,
    Japanese, Cyrillic, ...)? The packaged embedding model and BM25 read English: such a question
    finds nothing it means, so it is searched with the model's English search terms instead. A
    question in Spanish or German is in Latin script: `reads_as_another_language` tells it."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 2:
        return False
    other = sum(not unicodedata.name(c, "LATIN").startswith("LATIN") for c in letters)
    return other * 3 >= len(letters)


# --- a follow-up, or a question of its own --------------------------------------------------------
# A message that leans on what was said before: it starts by continuing ("and for map tasks?",
# "what about ...") or points back at it ("how do I do that remotely?", "does it work with spark?").
_CONTINUES = ("and", "also", "but", "or", "so", "then", "same", "instead", "what about", "how about",
              "what if", "why not", "and if", "ok so", "okay so")
_POINTS_BACK = {"it", "its", "it's", "that", "this", "these", "those", "them", "they", "there", "above",
                "previous", "earlier", "same", "instead", "else", "one", "ones", "example", "more"}
# Words that name no subject: a message made only of these ("can you show code?", "how do I fix
# this?", "could you explain more please") asks about whatever the conversation is about.
_NO_SUBJECT = {
    "a", "an", "the", "i", "me", "my", "you", "your", "we", "our", "us", "can", "could", "would", "will",
    "should", "do", "does", "did", "is", "are", "was", "how", "what", "why", "where", "when", "which", "who",
    "please", "pls", "plz", "show", "give", "share", "send", "post", "explain", "elaborate", "clarify",
    "code", "snippet", "sample", "samples", "examples", "detail", "details", "link", "links", "doc", "docs",
    "documentation", "source", "sources", "mean", "means", "work", "works", "happen", "happens", "fix",
    "solve", "idea", "ideas", "help", "again", "to", "of", "for", "in", "on", "with", "any", "some", "all",
    "just", "also", "too", "still", "not", "no", "yes", "now", "then", "there", "here", "exactly", "sure",
    "really", "right", "ok", "okay", "hmm", "hm", "wait", "sorry", "thanks", "have", "has", "get", "see",
    "know", "tell", "try", "use", "need", "want", "like", "be", "way", "other", "another", "else",
}
_FOLLOWUP_MAX_WORDS, _FRAGMENT_WORDS = 12, 3


def reads_as_followup(text: str) -> bool:
    """Whether a message at the top of a DM continues the last exchange rather than asking anew,
    judged from its words alone (no model). A DM's top level is no thread: most of what is written
    there is a new question, and reading one with the last exchange mixes two subjects into its
    search; so only a short message that starts by continuing or points back at what was said,
    names no subject of its own ("can you show code?"), or is a fragment of a few words ("why?",
    "for map tasks?"), is read with the exchange before it. In a thread the default is the other
    way round (`stands_alone`)."""
    words = re.findall(r"[\w']+", text.lower())
    if not words or len(words) > _FOLLOWUP_MAX_WORDS:
        return False
    head = " ".join(words[:2])
    return (len(words) <= _FRAGMENT_WORDS or words[0] in _CONTINUES or head in _CONTINUES
            or bool(_POINTS_BACK & set(words)) or set(words) <= _NO_SUBJECT)


# A thread's message that says it starts something new ("separate question: ...", "unrelated, but ...").
_NEW_TOPIC = re.compile(
    r"\b(?:(?:separate|another|different|new|unrelated|other|side)\s+(?:question|q|topic|subject)"
    r"|unrelated|off[- ]?topic|on another note|(?:change|changing|switching)\s+(?:of\s+|the\s+)?"
    r"(?:topics?|subjects?|gears))\b")
_NEW_TOPIC_WORDS = 12  # where the marker is looked for: the message's start
# What points back at the thread in a message that is otherwise a question of its own: a pronoun
# ("does it ...", "is that ..."), "still", "now", "instead", "your suggestion", or "the" before what
# was already named ("the error", "the default").
_REFERS_BACK = {"it", "its", "it's", "itself", "that", "that's", "this", "these", "those", "them", "they",
                "their", "there", "here", "above", "previous", "previously", "earlier", "same", "instead",
                "else", "again", "still", "anymore", "either", "too", "also", "now", "your", "you've", "tried",
                "suggested", "mentioned", "said", "suggestion"}
_THE_NAMED = {"error", "errors", "exception", "issue", "problem", "default", "defaults", "same", "above",
              "link", "example", "snippet", "fix", "suggestion", "answer", "command", "one", "other", "last",
              "previous", "result"}
_CONTINUES_THREAD = (*_CONTINUES, "hmm", "ok and", "okay and")
_EXISTS = {"is", "are", "was", "were", "be", "a", "an", "any", "some"}  # "is there a way", not "there"
# A thread's message of fewer words than this is read with the thread's subject, even when it
# names nothing from before. Measured on 49 follow-ups written as users write them: 45 continue or
# point back; the other 4 have 2 to 5 words ("any workaround?", "in the helm chart?", "could you
# give an example?"), and a 6-word one is easy to write ("what version of flytekit is needed?"). The
# 9 new questions written beside them have 5 to 9 words. At 7, all 49 follow-ups get the subject
# and 7 of the 9 new questions are searched alone (not "how do I cache a task?", 6 words, nor "what
# is a launch plan?", 5); at 6, 49 and 8; at 5, 48 and 9; at 8, 49 and 5.
_STANDS_ALONE_WORDS = 7


def stands_alone(text: str) -> bool:
    """Whether a message in a thread asks a question of its own rather than following up, judged
    from its words alone (no model): what decides, without a model to condense it, whether it is
    searched with the thread's subject (its first and last questions) or alone.

    In a thread most messages to the bot are follow-ups, and one searched alone loses its subject
    silently ("what does the error mean?" under a trace found the Troubleshooting Guide, "in the
    helm chart?" the Roadmap); so only a message that says it is new ("separate
    question: ...", "unrelated: ...") or a question of `_STANDS_ALONE_WORDS` words or more that does
    not continue ("and ...", "what about ...") and points back at nothing ("it", "that", "the
    error", "still", "your suggestion") stands alone. Code in fences is not counted."""
    prose = "".join(text.split("```")[::2])  # outside fenced code (split: linear in the text)
    words = re.findall(r"[\w']+", prose.lower().replace("\u2019", "'"))
    if not words:
        return False
    if _NEW_TOPIC.search(" ".join(words[:_NEW_TOPIC_WORDS])):
        return True
    return len(words) >= _STANDS_ALONE_WORDS and not _leans_back(words)


def _leans_back(words: list[str]) -> bool:
    """Whether words (lowercased) continue what was said before ("and ...", "what about ...") or
    point back at it ("it", "that", "the error", "still", "your suggestion")."""
    if words[0] in _CONTINUES_THREAD or " ".join(words[:2]) in _CONTINUES_THREAD:
        return True
    return _points_back(words, _REFERS_BACK)


def _points_back(words: list[str], refers: set[str]) -> bool:
    for i, word in enumerate(words):
        if word == "there" and ((i and words[i - 1] in _EXISTS) or words[i + 1:i + 2] and words[i + 1] in _EXISTS):
            continue
        if word in refers or (word == "the" and words[i + 1:i + 2] and words[i + 1] in _THE_NAMED):
            return True
    return False


# The end of a question: "?" (or the full-width "？"), with any "!" or "?" after it ("really?!"), then
# white space or the capital letter of the next ("cache?How do I ...").
_AFTER_QUESTION_MARK = re.compile(r"(?<=[?\uff1f])[!?\uff1f]*(?:\s+|(?=[A-Z]))")
_QUESTION_TOPIC_WORDS = 2  # "How do I cache a task?" has two (cache, task); "Is that a bug?" none
# Inside one message "And ..." or "Also, ..." starts the next question ("Also, how do I set GPU
# resources?"); what makes a question part of the one before is a word pointing back at it, among its
# first five or last two words ("Does that work with ...", "How does flytekit serialize it, ...", "is
# there a doc page for it?"): between them, "it", "that" and "them" are the question's own ("a launch
# plan that lives in another project", "... cache it across executions?"); "instead"
# (not "instead of"), "previous" and "earlier" wherever they are. Two eval questions joined into one
# message, 60 pairs, each question's gold in the top 3 (of 120, two seeds): 76 / 89 with the words
# anywhere, 86 / 95 now; of the 49 thread follow-ups above written after a question in one message,
# 7 are split either way (the first five words alone: 12); the six eval files' figures do not move.
_PART_REFERS_BACK = _REFERS_BACK - {"also", "too", "again", "still", "now", "either", "anymore"}
_PART_REFERS_BACK_WORDS = 5
_PART_REFERS_BACK_ANYWHERE = {"instead", "previous", "previously", "earlier"}


_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _asked(text: str) -> str:
    r"""`text` where only the asker's own sentences can end a question: a "?" in pasted code or a
    log, in a quoted line or a quote, goes with it ("is the path correct?" in a warning), and one in
    inline code is dropped while the code stays, for the question to be searched with (a regex's
    "(\w+)?", SQL's placeholders)."""
    pasted = read_paste(text)
    return "\n".join(_own_lines(pasted.prose if pasted is not None else text, keep_inline_code=True))


def _without_instead_of(words: list[str]) -> list[str]:
    """"instead of X" names its own X; "... instead?" points back at what was said."""
    return [w for i, w in enumerate(words) if not (w == "instead" and words[i + 1:i + 2] == ["of"])]


def separate_questions(text: str) -> list[str]:
    """The questions of a message that asks several of its own ("How do I cache a task? Also, how do
    I set GPU resources? And can I run a workflow on a schedule?"), for the searcher to look each up
    too (ingest/search.py). A question that points back at the one before ("Does it also
    work locally?", "Which plugin setting is it?", "Does that work with the flyte-binary chart?") is
    part of it, not a question of its own, and one of fewer than two topic words ("Why?", "Any
    workaround?") names nothing to look up. Fewer than two such questions: none (the message is
    searched whole)."""
    from flytegpt.ingest.keyword import words as topic_words

    own = _asked(text)
    questions = []
    for n, part in enumerate(p.strip() for p in _AFTER_QUESTION_MARK.split(own)):
        said = re.findall(r"[\w']+", part.lower().replace("\u2019", "'"))
        if not part.endswith(("?", "\uff1f")) or len(topic_words(part)) < _QUESTION_TOPIC_WORDS \
                or (n and (_points_back(said[:_PART_REFERS_BACK_WORDS] + said[-2:], _PART_REFERS_BACK)
                           or _points_back(_without_instead_of(said), _PART_REFERS_BACK_ANYWHERE))):
            continue
        questions.append(part)
    return questions if len(questions) > 1 else []


# --- written in another language ---------------------------------------------------------------
# The commonest function words of the main Latin-script European languages (Spanish, Portuguese,
# French, German, Italian, Dutch): articles, pronouns, prepositions, conjunctions, question words
# and auxiliaries, which every sentence has whatever it is about. Left out: those that are also
# English words or what an English question about code may hold ("a", "in", "do", "die", "was",
# "will", "also", "per", "come", "comment", "non", "del", "mit", "hat", "mon", "sin", "su", "du", "et",
# "eu", "os", "dos", "na", "um", "te", "op", "dat", "met", "van", "im", "mi", "er", "ha", "ton", "al").
_FOREIGN_FUNCTION_WORDS = frozenset("""
    el la los las un una unos unas que qué es está están estoy estas estos esto este esta ese esa se lo le
    les por para con como cómo cuál cuáles cuándo cuando dónde donde pero porque también cada muy mis sus
    tengo tiene tienen hay hacer puedo puede pueden ya según hola gracias usted ustedes nuestro algún alguna
    uma umas uns da das em é não com pelo pela eu meu minha isso isto esse essa quando onde qual quais
    mais mas ou ao aos faço fazer posso pode podem estou tenho tem há você vocês obrigado
    de des et sont pour dans avec sur sous je tu il elle nous vous ils elles ce cette ces cet qui quoi
    pourquoi où quand ma mes ne pas peut puis peux faire être au aux en quel quelle quels quelles sans très
    merci bonjour qu à une chaque votre notre leur
    der das den dem ein eine einen einem einer eines und ist sind ich sie wir ihr wie warum wo wann
    welche welcher welches nicht kein keine für auf zu von bei aus nach über auch oder aber es sich mein
    meine meinen mir mich habe haben wird werden kann können muss müssen soll dass noch nur schon jeden
    jede jedes wenn dann gibt bitte danke hallo
    il lo gli di della dello dei degli delle che è sono posso può puoi questo questa quello quella nel
    nella mio mia perché dove anche ma ho fare essere ogni grazie ciao
    het een en ik hoe wat niet voor deze kan zijn wordt mijn waarom welke ook maar naar heb hebben jij
""".split())
# The same kinds of words in English: a question holding more of these is English with a few words of
# another language in it (a name, a quoted message), searched as written.
_ENGLISH_FUNCTION_WORDS = frozenset("""
    the a an is are was were be been do does did how what why when where which who can could should would
    will i my me we our you your it its this that these those to of in on at for with from by and or but
    not if there have has get any some way about into after before am so
    they them their he she his than then just only because while need needs want wants got getting using
    being had each every both still here must might says said don doesn didn isn aren wasn won
""".split())
_LETTERS = re.compile(r"[^\W\d_]+")
_NOT_PROSE = re.compile(r"[/\\@<>=_|]|\w\.\w")
# What an English question quotes rather than says: "…" and '…' (not an apostrophe:
# "l'option", "don't"), a quoted line (Slack's "> " arrives as "&gt; "), and a log line (a time stamp, a
# level, "Error:" or an exception's name at its start).
_QUOTED = re.compile(r"\"[^\"\n]{1,400}\"|\u201c[^\u201d\n]{1,400}\u201d|\u201e[^\u201c\u201d\n]{1,400}[\u201c\u201d]"
                     r"|\u00ab[^\u00bb\n]{1,400}\u00bb|\u2018[^\u2019\n]{1,400}\u2019|(?<![\w'])'[^'\n]{1,400}'(?!\w)")
_NOT_SAID = re.compile(r"^\s*(?:>|&gt;|\d{4}-\d\d-\d\d|\d\d?:\d\d:\d\d|\[?(?:ERROR|WARN(?:ING)?|INFO|DEBUG|FATAL"
                       r"|CRITICAL|TRACE)\b|[EWIF]\d{4} |(?:Error|Exception|Warning):|\w+(?:Error|Exception)\b"
                       r"|Traceback\b|File \")")
# "Our log says: El pod no tiene …." or "my code: para cada dia …": after such a colon comes what
# was quoted, to the end of its sentence, when the words before it are not of another language.
_QUOTE_INTRO = re.compile(r"\b(?:error|exception|warning|message|msg|log|logs|says|said|saying|output|stderr"
                          r"|stdout|code|snippet|reads|shows|prints|returns|got|get|getting|see|seeing)\s*:\s",
                          re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def _own_lines(text: str, keep_inline_code: bool) -> list[str]:
    """The lines of `text` the asker wrote themself: without fenced code, quotes ("…", '…'), quoted
    lines and log lines. Inline code is dropped, or kept without its "?" (`keep_inline_code`): a
    name in it is worth searching for, but no "?" in it ends the asker's question."""
    prose = "".join(text.split("```")[::2])  # outside fenced code (split: linear in the text)
    if keep_inline_code:
        prose = _INLINE_CODE.sub(lambda m: m.group().replace("?", "").replace("\uff1f", ""), prose)
    else:
        prose = "".join(prose.split("`")[::2])
    prose = _QUOTED.sub(" ", prose)
    return [line for line in prose.splitlines() if not _NOT_SAID.match(line)]


def _said(text: str) -> str:
    """The asker's own sentences of `text`: `_own_lines` without inline code, and without what
    follows "log says:" or "my code:" to the end of its sentence."""
    said = []
    for line in _own_lines(text, keep_inline_code=False):
        intro = _QUOTE_INTRO.search(line)
        if intro and not _count(line[:intro.start()])[0]:
            end = _SENTENCE_END.search(line, intro.end())
            line = line[:intro.end()] + (line[end.end():] if end else "")
        said.append(line)
    return "\n".join(said)


def _count(text: str) -> tuple[int, int]:
    """The function words of those languages, and English ones, in `text`'s words of a sentence."""
    foreign = english = 0
    for token in text.lower().split():
        if _NOT_PROSE.search(token):
            continue  # a link, a path, a domain ("amd.com/gpu"), an identifier: no word of a sentence
        for word in _LETTERS.findall(token):
            foreign += word in _FOREIGN_FUNCTION_WORDS
            english += word in _ENGLISH_FUNCTION_WORDS
    return foreign, english


def reads_as_another_language(text: str) -> bool:
    """Is the question written in another language than English, in Latin script (Spanish, German,
    Portuguese, French, Italian, Dutch)? The packaged embedding model and BM25 read English, and
    "¿Cómo programo un workflow para que se ejecute cada día?" found no schedule page, German
    "plane" (schedule) found "Component Architecture > Planes".

    Decided by the words every sentence has, whatever it is about: at least two function words of
    those languages, and more than twice as many as English ones, in what the asker says: not in
    code (fences and `inline code`), quotes, quoted or log lines, nor what "the log says:" (an
    English question quoting a Spanish log line read as Spanish, and with a model it was searched
    without its words). No download, and no topic word decides it, so a Flyte term
    unknown to the docs does not make a question foreign. Measured: none of the
    299 English eval questions, the 298 messages of the eval Slack export and the 16 English
    questions with foreign words, quotes or log lines written to test it reads as another
    language; all 21 Spanish, German, Portuguese, French, Italian and Dutch questions written to
    test it do."""
    foreign, english = _count(_said(text))
    return foreign >= 2 and foreign > 2 * english


# What names code in a question: snake_case, CamelCase, dotted.names, paths, --flags, calls(), `code`.
_IDENTIFIER = re.compile(r"--?[A-Za-z][\w-]+|[\w.-]*/[\w./-]+|[A-Za-z]\w*_\w+|[A-Za-z]*[a-z][A-Z]\w*"
                         r"|[A-Z]{2,}[a-z]\w*|[A-Za-z_]\w+(?:\.[A-Za-z_]\w+)+|[A-Za-z_]\w*\(\)")
_TOKEN_MAX = 200  # longer "words" are no names (and each token is matched alone: linear in the text)


def code_identifiers(text: str) -> list[str]:
    """The names of code in a question, in order, once each: `inline code`, snake_case
    (`map_task`), CamelCase (`ContainerTask`, `OOMKilled`), dotted names (`values.yaml`), paths,
    --flags and calls (`open()`). Words the docs and the code hold as written whatever language
    the question is in: a question rewritten into English search terms (`reads_as_another_language`)
    keeps its own words too when it names any."""
    found: list[str] = []
    prose = "".join(text.split("```")[::2])
    for i, part in enumerate(prose.split("`")):
        if i % 2:  # inline code
            found.extend(part.split()[:20] if len(part) <= _TOKEN_MAX else [])
            continue
        for token in part.split():
            if len(token) > _TOKEN_MAX + 2:
                continue
            token = token.strip(".,;:!?¿¡'\"[]{}<>*")
            while token.startswith("(") and token.count("(") > token.count(")"):  # "(see map_task)"
                token = token[1:]
            while token.endswith(")") and token.count(")") > token.count("("):  # "(see open())"
                token = token[:-1].rstrip(".,;:!?")
            if len(token) > 2 and _IDENTIFIER.fullmatch(token) and "://" not in token:
                found.append(token)
    return list(dict.fromkeys(found))


def search_as_asked(searcher: Any, question: str, k: int, limit: int) -> tuple[str, list]:
    """(what is searched, the hits) for a question asked on its own, as the bot searches it: a pasted
    traceback by its error (bot/pasted.py), a message of several questions each of them too. What
    `flytegpt eval`, the maintainers' report and bench_retrieval measure, so their figures are the
    bot's."""
    query = search_text(question.strip(), limit)
    return query, searcher.search(query, k, questions=separate_questions(query))
