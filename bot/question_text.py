"""What of a user's text counts as the question: one rule for the Slack bot, its question log and
bulk Q&A, so a question the bot would answer is the question bulk Q&A asks."""

from __future__ import annotations

import re
import unicodedata

from flytegpt.bot.pasted import fit_question
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
    while True:  # str.strip, not a regex: "a" + 40,000 spaces + "b" took a regex 5 s (audit 23 F3)
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
    log that it cuts to fit (`pasted.fit_question`, audit 29 F4). What the Slack layer asks before
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
    """Whether a message continues the conversation before it rather than asking anew, judged from
    its words alone (no model): a DM's top-level message with the last exchange, and, without a
    model to condense it, a thread's message with the thread's subject.

    Reading a new question with the last one mixes two subjects into its search ("separate
    question: how do I run a workflow on a schedule?" in a caching thread found caching pages,
    audit 29 F3); so only a short message that starts by continuing or points back at what was
    said, names no subject of its own ("can you show code?"), or is a fragment of a few words
    ("why?", "for map tasks?"), is read with what came before."""
    words = re.findall(r"[\w']+", text.lower())
    if not words or len(words) > _FOLLOWUP_MAX_WORDS:
        return False
    head = " ".join(words[:2])
    return (len(words) <= _FRAGMENT_WORDS or words[0] in _CONTINUES or head in _CONTINUES
            or bool(_POINTS_BACK & set(words)) or set(words) <= _NO_SUBJECT)


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
    merci bonjour qu à
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
""".split())
_LETTERS = re.compile(r"[^\W\d_]+")
_NOT_PROSE = re.compile(r"[/\\@<>=_|]|\w\.\w")


def reads_as_another_language(text: str) -> bool:
    """Is the question written in another language than English, in Latin script (Spanish, German,
    Portuguese, French, Italian, Dutch)? The packaged embedding model and BM25 read English, and
    "¿Cómo programo un workflow para que se ejecute cada día?" found no schedule page, German
    "plane" (schedule) found "Component Architecture > Planes" (audit 29 F2).

    Decided by the words every sentence has, whatever it is about: at least two function words of
    those languages and more of them than English ones, outside code (fences and `inline code`). No
    download, and no topic word decides it, so a Flyte term unknown to the docs does not make a
    question foreign. Measured (audit 29): the 299 English eval questions and the 141 questions of
    the Slack corpus: none reads as another language; the audit's 9 Spanish, German, Portuguese and
    French questions: all do."""
    prose = "".join(text.split("```")[::2])  # outside fenced code (split: linear in the text)
    prose = "".join(prose.split("`")[::2])  # and outside inline code
    foreign = english = 0
    for token in prose.lower().split():
        if _NOT_PROSE.search(token):
            continue  # a link, a path, a domain ("amd.com/gpu"), an identifier: no word of a sentence
        for word in _LETTERS.findall(token):
            foreign += word in _FOREIGN_FUNCTION_WORDS
            english += word in _ENGLISH_FUNCTION_WORDS
    return foreign >= 2 and foreign > english
