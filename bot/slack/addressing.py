"""Which messages in a conversation are for the bot: one rule for answering thread replies
(routing) and for the thread history a follow-up is understood with (history); and which of
those are small talk (help, a greeting, a thank-you) that gets no search."""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

# Someone else is addressed: a person (<@U…>), a user group (<!subteam^…>), or everyone here.
_ADDRESSED = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^<>]*)?>|<!subteam\^[^<>]*>|<!(?:here|channel|everyone)(?:\|[^<>]*)?>")
# A thank-you is a message made only of these words (and the bot's name, and approving emoji):
# thanks in a few languages, what comes with them ("thank you so much", "many thanks", "appreciate
# it") and the ways to say it worked ("that fixed it", "awesome", "all good now"). Narrow on purpose:
# any other word ("didn't", "still", "but", "same", "error", "1.12", "retries") makes
# the message a question, as does a question mark or code; a question not answered is the worse mistake.
_THANKS = {"thanks", "thank", "thankyou", "thanx", "thnx", "thks", "thx", "tx", "ty", "tysm", "tyvm", "cheers",
           "kudos", "appreciate", "appreciated", "merci", "danke", "dank", "gracias", "grazie", "obrigado",
           "obrigada", "bedankt", "dankjewel", "tack"}
_APPROVAL = {"ok", "okay", "k", "kk", "alright", "great", "perfect", "awesome", "cool", "nice", "excellent",
             "amazing", "brilliant", "wonderful", "fantastic", "sweet", "neat", "super", "superb", "lovely",
             "wow", "worked", "works", "working", "fixed", "solved", "resolved", "lgtm", "yes", "yep", "yeah",
             "yup", "sure", "+1", "good", "fine", "helped", "helpful", "useful", "exactly", "understood",
             "sense", "trick", "did", "got", "clear"}
_CLOSING_FILLER = {"you", "u", "so", "much", "very", "many", "a", "lot", "lots", "ton", "tons", "again", "all",
                   "it", "that", "this", "that's", "thats", "it's", "its", "the", "for", "your", "help", "i",
                   "we", "really", "truly", "indeed", "just", "now", "sounds", "makes", "man", "mate", "dude",
                   "buddy", "bot", "folks", "everyone", "team", "guys", "beaucoup", "schön", "schoen", "sehr",
                   "vielen", "muchas", "mil", "mille", "muito", "hartelijk", "totally", "definitely", "oh"}
_CLOSING_MAX_CHARS = 400  # 20 words of thanks and their emoji; past this it is something else
_SUCCESS = {"works", "worked", "working", "fixed", "solved", "resolved", "good", "fine", "runs", "running"}
# Slack's emoji names (":pray:", ":+1::skin-tone-2:") and the emoji themselves that say thanks or
# approve; an emoji of distress or doubt (😭, 🤔, 😕) is no thank-you.
_APPROVING_NAMES = {
    "+1", "thumbsup", "thumbs_up", "pray", "folded_hands", "tada", "heart", "hearts", "heart_eyes", "blue_heart",
    "green_heart", "purple_heart", "yellow_heart", "orange_heart", "sparkling_heart", "heart_hands", "smile",
    "smiley", "grinning", "grin", "slightly_smiling_face", "blush", "hugging_face", "hugs", "raised_hands",
    "ok_hand", "clap", "100", "white_check_mark", "heavy_check_mark", "ballot_box_with_check", "partying_face",
    "sparkles", "rocket", "muscle", "star", "star2", "star-struck", "sunglasses", "bow", "handshake",
    "confetti_ball", "relieved", "innocent", "ok", "joy", "laughing", "wink", "relaxed", "fire", "raised_hand",
}
_APPROVING_EMOJI = set("👍🙏🎉❤♥💙💚💛💜🧡🤍🖤💖💗💕😊🙂😀😃😄😁😆😍🥰🤩😎🤗🙌👌👏💯✅✔☑🥳✨🚀💪⭐🌟🆗🫶🤝🙇🎊😌😇😂🤣😉☺🔥✋")
_EMOJI_NAME = re.compile(r":([a-z0-9_+'-]+):")
_MENTIONED = re.compile(r"<[@!#][^<>]*>|(?<!\w)@[\w.-]+")  # <@U…>, <!here>, <#C…>, or a typed @name


def for_the_bot(text: str, bot_user_id: str | None) -> bool:
    """Whether a message in a thread is a question said to the bot: it mentions the bot, or it is
    not addressed to somebody else; and either way it is no small talk (`small_talk`: a thank-you,
    "that worked", a greeting, a call for help). Answering those made the bot talk over people
    talking to each other, and they are not what a follow-up is about (the thread history).
    Without the bot's name at hand, a greeting may name anyone ("Hi FlyteGPT!!", "hey Sam")."""
    if bot_user_id and f"<@{bot_user_id}" in text:
        return _small_talk(_without_mention(text, bot_user_id), set(), any_name=True) is None
    return not _ADDRESSED.search(text) and _small_talk(text, set(), any_name=True) is None


def _emoji(text: str) -> tuple[list[str], str]:
    """The emoji in `text` (Slack's names and the characters, skin tones and joiners left out),
    and the text without them."""
    found = [m for m in _EMOJI_NAME.findall(text) if not m.startswith("skin-tone")]
    text = _EMOJI_NAME.sub(" ", text)
    chars = [c for c in text if unicodedata.category(c) == "So"]
    return found + chars, "".join(" " if unicodedata.category(c) in ("So", "Sk") else c for c in text)


def _approving(emoji: str) -> bool:
    return emoji in _APPROVING_NAMES or emoji in _APPROVING_EMOJI


def closes_the_thread(text: str, name: str | None = None) -> bool:
    """A thank-you or "that worked" (or an approving emoji) and nothing else: nothing to answer
    (the bot answered it with quoted passages or "I couldn't find this"). Only the whole message
    counts: "thanks, that didn't work", "ty, same error on 1.12" or "thanks, now I get
    this error: ```…```" are questions, as is anything with a question mark or code; so is an emoji
    of distress or doubt alone (😭, 🤔). `name`: the bot's, which a thank-you may carry ("thanks FlyteGPT")."""
    return _closes(text, set(re.findall(r"[\w']+", name.lower())) if name else set())


def _closes(text: str, extra: set[str], *, any_name: bool = False) -> bool:
    """`closes_the_thread`, `extra` words allowed besides the closing ones (the bot's name, a
    greeting); `any_name`: one other word right after a thank-you is a name ("thanks Sam")."""
    if "?" in text or "`" in text or len(text) > _CLOSING_MAX_CHARS:
        return False
    emoji, rest = _emoji(_MENTIONED.sub(" ", text.lower().replace("\u2019", "'")))
    if not all(_approving(e) for e in emoji):
        return False
    words = re.findall(r"[+\w']+", rest)
    if not words:  # emoji alone: a reaction in words, if it approves
        return bool(emoji)
    known = _THANKS | _APPROVAL | _CLOSING_FILLER | extra
    unknown = [i for i, w in enumerate(words) if w not in known]
    if any_name and len(unknown) == 1 and unknown[0] > 0 and words[unknown[0] - 1] in _THANKS:
        unknown = []
    if len(words) > 20 or unknown:
        return False
    if "now" in words and not _SUCCESS & set(words):  # "thanks, it works now"; not "thanks, now …"
        return False
    return bool((_THANKS | _APPROVAL) & set(words))


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

    "help" (nothing at all, "help", "?", "what can you do?", an emoji that is no thank-you): the
    usage, as `/flytegpt help` shows it; "greeting" ("hi", "hello there!", "hey, how are you?"): a
    short hello and the usage; "thanks" (`closes_the_thread`: all of it thanks or "that worked"):
    acknowledged, not answered. Searching these found Spark and MPI pages for "hi", and logged each
    as a knowledge gap. Narrow on purpose: only the whole message counts, so "hi, how
    do I cache a task?" and "thanks, that didn't work" are questions. `name` is the
    bot's (the assistant name), which a greeting or a thank-you may carry in words ("hello FlyteGPT")."""
    return _small_talk(text, set(re.findall(r"[\w']+", name.lower())) if name else set())


def _small_talk(text: str, names: set[str], *, any_name: bool = False) -> SmallTalk | None:
    """`small_talk` with the name's words; `any_name`: the name is not known, and a bot's name right
    after a greeting ("Hi FlyteGPT!!") or a name after a thank-you ("thanks Sam") is taken for it."""
    stripped = text.strip()
    if not stripped:
        return "help"
    chatter = names | _GREETINGS | _GREETING_EXTRAS  # a thank-you may greet too: "hello, thanks!"
    if len(stripped) > _SMALL_TALK_MAX_CHARS:
        return "thanks" if _closes(stripped, chatter, any_name=any_name) else None
    lowered = _MENTIONED.sub(" ", stripped.lower())  # "Hello @FlyteGPT", "thanks <@U012ABC>!"
    if lowered.strip() in ("?", "-h", "--help"):
        return "help"
    lowered = _EMOJI_NAME.sub(" ", re.sub(r"👋|:wave:", " wave ", lowered))  # the emoji is a greeting too
    words = re.findall(r"[\w']+", lowered)
    greeted, i = False, 0
    while i < len(words) and (words[i] in _GREETINGS or words[i] in _GREETING_EXTRAS or words[i] in names):
        greeted = greeted or words[i] in _GREETINGS or " ".join(words[i:i + 2]) in (
            "good morning", "good afternoon", "good evening", "good day")
        i += 1
    # the bot's name in a thread reply without its mention: "Hi FlyteGPT!!" (a word naming a bot, so
    # "hi all, OOMKilled" stays a question)
    named = any_name and greeted and i < len(words) and words[i].endswith(("gpt", "bot"))
    rests = [words[i:]] + ([words[i + 1:]] if named else [])
    for rest in ([w for w in r if w not in names] for r in rests):
        phrase = " ".join(rest)
        if phrase in _HELP:
            return "help"
        if (greeted and not rest) or phrase in _HOW_ARE_YOU:
            return "greeting"
    if _closes(stripped, chatter, any_name=any_name):
        return "thanks"
    if not words and "`" not in stripped:  # 😭, 🤔, "...": no question, and no thank-you
        return "help"
    return None


def _without_mention(text: str, bot_user_id: str) -> str:
    """`text` without the bot's own mention(s), `<@UBOT>` or `<@UBOT|name>`."""
    return re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^<>]*)?>", " ", text)

