"""Which messages in a conversation are for the bot: one rule for answering thread replies
(routing) and for the thread history a follow-up is understood with (history); and which of
those are small talk (help, a greeting, a thank-you) that gets no search (audit 29 F5, F6)."""

from __future__ import annotations

import re
from typing import Literal

# Someone else is addressed: a person (<@U…>), a user group (<!subteam^…>), or everyone here.
_ADDRESSED = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^<>]*)?>|<!subteam\^[^<>]*>|<!(?:here|channel|everyone)(?:\|[^<>]*)?>")
_THANKS = {"thanks", "thank", "thx", "ty", "tysm", "cheers", "merci", "danke", "gracias", "kudos"}
_ACK_ONLY = {"ok", "okay", "k", "great", "perfect", "awesome", "cool", "nice", "got", "it", "that", "this",
             "worked", "works", "working", "lgtm", "yes", "yep", "yeah", "sure", "sounds", "good", "makes",
             "sense", "+1", "all", "now", "fixed", "solved", "much", "so", "a", "lot", "you", "again"}
_QUESTION_WORDS = {"how", "what", "why", "where", "when", "which", "who", "can", "could", "does", "do", "is",
                   "are", "should", "would", "will", "but", "however", "though", "still"}


def for_the_bot(text: str, bot_user_id: str | None) -> bool:
    """Whether a message in a thread is a question said to the bot: it mentions the bot, or it is
    not addressed to somebody else; and either way it is no small talk (`small_talk`: a thank-you,
    "that worked", a greeting, a call for help). Answering those made the bot talk over people
    talking to each other, and they are not what a follow-up is about (the thread history)."""
    if bot_user_id and f"<@{bot_user_id}" in text:
        return small_talk(_without_mention(text, bot_user_id)) is None
    return not _ADDRESSED.search(text) and small_talk(text) is None


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


SmallTalk = Literal["help", "greeting", "thanks"]
# Small talk: greetings (and what may come with one), the ways to ask what the bot does.
_GREETINGS = {"hi", "hii", "hiya", "hello", "hey", "heya", "hay", "howdy", "yo", "greetings", "hallo", "hola",
              "bonjour", "salut", "ciao", "hej", "moin", "servus", "gm", "wave"}
_GREETING_EXTRAS = {"there", "all", "everyone", "everybody", "folks", "team", "guys", "yall", "y'all", "friend",
                    "bot", "again", "good", "morning", "afternoon", "evening", "day", "oh"}
_HOW_ARE_YOU = {"how are you", "how are you doing", "how's it going", "hows it going", "what's up", "whats up",
                "sup", "how do you do"}
_HELP = {"help", "help me", "help please", "please help", "usage", "what can you do", "what do you do",
         "what are you", "who are you", "who are you and what can you do", "what can i ask",
         "what can i ask you", "how do i use you", "how can you help", "how can you help me"}
_SMALL_TALK_MAX_CHARS = 200  # past this it is a question (and the checks stay cheap on any input)


def small_talk(text: str, name: str | None = None) -> SmallTalk | None:
    """What a message addressed to the bot is when it is no question, None when it is one.

    "help" (nothing at all, "help", "?", "what can you do?"): the usage, as `/flytegpt help`
    shows it; "greeting" ("hi", "hello there!", "hey, how are you?"): a short hello and the usage;
    "thanks" (`closes_the_thread`): acknowledged, not answered. Searching these found Spark and
    MPI pages for "hi", and logged each as a knowledge gap (audit 29 F5). Narrow on purpose: only
    the whole message counts, so "hi, how do I cache a task?" is a question. `name` is the bot's
    (the assistant name), which a greeting may carry in words ("hello FlyteGPT")."""
    stripped = text.strip()
    if not stripped:
        return "help"
    if len(stripped) > _SMALL_TALK_MAX_CHARS:
        return "thanks" if closes_the_thread(stripped) else None
    lowered = stripped.lower()
    if lowered in ("?", "-h", "--help"):
        return "help"
    words = re.findall(r"[\w']+", re.sub(r"👋|:wave:", " wave ", lowered))  # the emoji is a greeting too
    names = set(re.findall(r"[\w']+", name.lower())) if name else set()
    greeted, i = False, 0
    while i < len(words) and (words[i] in _GREETINGS or words[i] in _GREETING_EXTRAS or words[i] in names):
        greeted = greeted or words[i] in _GREETINGS or " ".join(words[i:i + 2]) in (
            "good morning", "good afternoon", "good evening", "good day")
        i += 1
    rest = [w for w in words[i:] if w not in names]
    phrase = " ".join(rest)
    if phrase in _HELP:
        return "help"
    if greeted and (not rest or phrase in _HOW_ARE_YOU):
        return "greeting"
    if closes_the_thread(stripped) or (greeted and rest and closes_the_thread(phrase)):
        return "thanks"
    return None


def _without_mention(text: str, bot_user_id: str) -> str:
    """`text` without the bot's own mention(s), `<@UBOT>` or `<@UBOT|name>`."""
    return re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^<>]*)?>", " ", text)

