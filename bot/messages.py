"""Every sentence FlyteGPT says to a user, in one place.

Wording is product, not plumbing: keeping it here means one voice, one spelling of each
notice, and a reviewer can read everything a user may see in a minute. Plain strings are
plain text (the Slack layer escapes them); those marked mrkdwn/Markdown are sent as such.
"""

from __future__ import annotations

from flytegpt.ingest.config import BotConfig, ProjectConfig

COMMAND = BotConfig().command  # the default; the bot answers [bot] command

# --- the usage text (Markdown: rendered with the answer converter, so **bold** is bold) ---
_USAGE = """{who} questions about {project} from the docs, the code and Slack history, with sources.

• `{command} {example}` (only you see the answer; you can share it)
• {mention} (I answer in the thread; follow-ups there keep the context)
• or send me a direct message.

Use 👍/👎 under an answer to tell us whether it helped."""
_FLYTE_EXAMPLE = "how do I cache a task with a custom hash?"


def usage(project: ProjectConfig, command: str) -> str:
    """The help `[bot] command` gives alone or with "help": the project's name and the command as
    configured, so another project's bot never says it answers about Flyte or shows /flytegpt."""
    name = project.assistant_name
    return _USAGE.format(
        who=f"**{name}** answers" if name else "I answer", project=project.name, command=command,
        example=_FLYTE_EXAMPLE if project.is_flyte else "your question",
        mention=f"mention me in a channel: `@{name} your question`" if name else "mention me in a channel with your question")


USAGE = usage(ProjectConfig(), COMMAND)  # Flyte's


def greeting(project: ProjectConfig, command: str) -> str:
    """The reply to a message that only greets the bot ("hi", "hello @FlyteGPT"): a hello and the
    usage, instead of passages about whatever "hi" matched (searched, "hi" found Spark and MPI)."""
    return f"Hi! 👋 {usage(project, command)}"


# A thank-you (or "ok", "that worked") said to the bot: acknowledged with this reaction on it, no
# message: another set of passages in the thread was the bot not listening.
THANKS_REACTION = "hugging_face"  # 🤗
WELCOME = "You're welcome! 🤗"  # the same, said to the slash command (its reply is only the asker's)

# --- while and instead of answering ---------------------------------------------------
LOOKING = "Looking into it…"
BUSY = "I'm answering a lot of questions right now. Please ask again in a minute."
INDEX_NOT_READY = "The knowledge base (index) is not ready yet. Please try again in a minute."
FAILED = "Sorry, something went wrong while answering. Please try again."
RESTARTED = ("Sorry, I was restarted before I could finish answering your question. "
             "Please ask it again.")
POST_FAILED = "Sorry, Slack did not accept my answer just now. Please ask again in a minute."
# Slack refused the answer for what it holds (too long, or blocks it would not take), also as plain
# text: asking the same again gets the same refusal, so this does not suggest it.
POST_REFUSED = ("Sorry, Slack refused my answer as too long or malformed to show here, also as plain text. "
                "A narrower question may get an answer Slack takes.")
TRUNCATED = "(The answer was too long to show completely here.)"
EMPTY_ANSWER = "(empty answer)"

# --- questions the answerer refuses ------------------------------------------------------
EMPTY_QUESTION = "Please ask a question: the message was empty."
# Says what to keep: a pasted traceback or log is read up to Slack's 40,000 characters
# (its first lines and its error, bot/pasted.py), so what is too long here is the asker's own text.
TOO_LONG_QUESTION = ("That question is too long ({length} characters; the limit is {limit}). Please ask it again "
                     "shorter: your question in a few sentences, with only the code or config it is about. "
                     "For an error, paste the error message (the last lines of the traceback or log).")

# --- when the model cannot answer -------------------------------------------------------
MODEL_UNAVAILABLE = "The language model is not available right now ({reason}). Please try again in a few minutes."
NO_ANSWER_WRITTEN = "Sorry, I couldn't write an answer: {reason}"
MEANWHILE_SOURCES = " Meanwhile, these sources look most relevant:"
MODEL_UNREACHABLE_WITH_SOURCES = ("Sorry, I couldn't reach the language model to write an answer just now. "
                                  "These sources look most relevant to your question:")
MODEL_UNREACHABLE = ("Sorry, I couldn't reach the language model to write an answer just now. "
                     "Please try again in a minute.")

# --- limits ------------------------------------------------------------------------------
ONLY_IN_CHANNELS = "I only answer questions in {channels}, or in a direct message."  # mrkdwn: <#C…> links
ONLY_IN_SOME_CHANNELS = "I only answer questions in certain channels, or in a direct message."
IN_FLIGHT = "I'm still answering your earlier questions; ask this one again when they're done."


def rate_limited(wait_s: float) -> str:
    """The per-user limit was hit; `wait_s` until the next question is accepted."""
    return f"You're asking questions faster than I can answer them. Please wait {int(wait_s) + 1} s and ask again."


def only_in_channels(channel_ids: list[str]) -> str:
    """mrkdwn: the allowed channels as Slack channel links. The caller passes public channels only:
    anyone who mentions the bot anywhere reads this, and a private channel's link tells them it
    exists. None to show: the sentence without links."""
    if not channel_ids:
        return ONLY_IN_SOME_CHANNELS
    return ONLY_IN_CHANNELS.format(channels=", ".join(f"<#{c}>" for c in sorted(channel_ids)))


# --- feedback and sharing ------------------------------------------------------------------
THANKS = "Thanks for the feedback!"
VOTE_UNKNOWN_ANSWER = "Sorry, I couldn't find that answer any more, so the vote was not recorded."
VOTE_NOT_STORED = "Sorry, I couldn't save your vote just now. Please try again later."
SHARE_GONE = "Sorry, that answer is no longer available to share."
SHARE_FAILED = "Sorry, I couldn't share that answer."
SHARE_NOT_YOURS = "Only the person who asked can share this answer."

# --- labels in an answer's blocks ----------------------------------------------------------
SOURCES_HEADING = "Sources"
BEST_SOURCES_HEADING = "Best sources"
# a model answer that cites none of its sources: the ones it was given, so the reader can check it
CONSULTED_HEADING = "Sources consulted (the answer cites none of them)"


def more_sources(n: int) -> str:
    """The last line of a sources list cut to fit one Slack message."""
    return f"… and {n} more source{'s' if n != 1 else ''} (too many to list here)"


BUTTON_HELPFUL = "👍 Helpful"
BUTTON_NOT_HELPFUL = "👎 Not helpful"
BUTTON_SHARE = "Share in channel"
SHARED_BY = "shared by {user}"  # {user}: a <@U…> mention

# --- the assistant panel's status line (Slack shows "FlyteGPT <status>") ---------------------
STATUS_SEARCHING = "is searching the docs, code and Slack history…"
STATUS_WRITING = "is reading {sources} sources and writing…"
