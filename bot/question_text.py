"""What of a user's text counts as the question: one rule for the Slack bot, its question log and
bulk Q&A, so a question the bot would answer is the question bulk Q&A asks."""

from __future__ import annotations

import unicodedata

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


def mostly_another_script(text: str) -> bool:
    """Is a third or more of the question's letters in a script other than Latin (Chinese,
    Japanese, Cyrillic, ...)? The packaged embedding model and BM25 read English: such a question
    finds nothing it means, so it is searched with the model's English search terms instead. A
    question in Spanish or German shares enough words with the docs ("caché", "Tasks") to be
    searched as written."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 2:
        return False
    other = sum(not unicodedata.name(c, "LATIN").startswith("LATIN") for c in letters)
    return other * 3 >= len(letters)
