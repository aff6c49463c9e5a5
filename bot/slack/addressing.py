"""Which messages in a conversation are for the bot: one rule for answering thread replies
(routing) and for the thread history a follow-up is understood with (history)."""

from __future__ import annotations

import re

# Someone else is addressed: a person (<@U…>), a user group (<!subteam^…>), or everyone here.
_ADDRESSED = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^<>]*)?>|<!subteam\^[^<>]*>|<!(?:here|channel|everyone)(?:\|[^<>]*)?>")
_THANKS = {"thanks", "thank", "thx", "ty", "tysm", "cheers", "merci", "danke", "gracias", "kudos"}
_ACK_ONLY = {"ok", "okay", "k", "great", "perfect", "awesome", "cool", "nice", "got", "it", "that", "this",
             "worked", "works", "working", "lgtm", "yes", "yep", "yeah", "sure", "sounds", "good", "makes",
             "sense", "+1", "all", "now", "fixed", "solved", "much", "so", "a", "lot", "you", "again"}
_QUESTION_WORDS = {"how", "what", "why", "where", "when", "which", "who", "can", "could", "does", "do", "is",
                   "are", "should", "would", "will", "but", "however", "though", "still"}


def for_the_bot(text: str, bot_user_id: str | None) -> bool:
    """Whether a message in a thread is said to the bot: it mentions the bot, or it is neither
    addressed to somebody else nor a thank-you or "that worked" closing the thread. Answering
    those made the bot talk over people talking to each other."""
    if bot_user_id and f"<@{bot_user_id}" in text:
        return True
    return not _ADDRESSED.search(text) and not closes_the_thread(text)


def closes_the_thread(text: str) -> bool:
    """A thank-you, "ok", "that worked" or an emoji: nothing to answer (the bot answered it with
    quoted passages or "I couldn't find this"). A question mark or a question word keeps it a question."""
    if "?" in text:
        return False
    words = re.findall(r"[+\w']+", re.sub(r":[a-z0-9_+-]+:", " ", text.lower()))  # :pray: and friends go
    if not words:  # emoji or punctuation alone: a reaction in words
        return bool(text.strip())
    if len(words) > 12 or _QUESTION_WORDS & set(words):
        return False
    return words[0] in _THANKS or set(words) <= _ACK_ONLY


# A message that leans on what was said before: it starts by continuing ("and for map tasks?",
# "what about ...") or points back at it ("how do I do that remotely?", "does it work with spark?").
_CONTINUES = ("and", "also", "but", "or", "so", "then", "same", "instead", "what about", "how about",
              "what if", "why not", "and if", "ok so", "okay so")
_POINTS_BACK = {"it", "its", "it's", "that", "this", "these", "those", "them", "they", "there", "above",
                "previous", "earlier", "same", "instead", "else", "one", "ones", "example", "more"}
_FOLLOWUP_MAX_WORDS, _FRAGMENT_WORDS = 12, 3


def reads_as_followup(text: str) -> bool:
    """Whether a message at the top of a DM continues the last exchange rather than asking anew.

    A DM has no thread to tell the two apart, and reading a new question with the last one
    mixes two subjects into its search; so only a short message that starts by continuing or
    points back at what was said, or is a fragment of a few words ("why?", "for map tasks?"),
    is read with the exchange before it."""
    words = re.findall(r"[\w']+", text.lower())
    if not words or len(words) > _FOLLOWUP_MAX_WORDS:
        return False
    head = " ".join(words[:2])
    return (len(words) <= _FRAGMENT_WORDS or words[0] in _CONTINUES or head in _CONTINUES
            or bool(_POINTS_BACK & set(words)))
