"""What counts as a thank-you, as the asker sees it.

Before, a mention, `/flytegpt` command, DM or thread reply that *started* with a thank-you was taken
for one whatever followed: "@FlyteGPT thanks, that didn't work", "ty, same error on 1.12" and
"thanks, now I get this error: ```ValueError…```" got a 🤗 and no answer. Now a message is a
thank-you only when all of it is thanks and closing words ("awesome, thanks", "that worked, thank
you", "🙏"); a negation, "still", "but", "now", an error, a version, code or a question mark makes
it a question. "awesome, thanks" and "many thanks!" were answered with passages, a lone 😭 or
🤔 got the 🤗, and "Hi FlyteGPT!!" as a thread reply without the mention was searched.

End to end: the real Bolt app over Socket Mode against the Slack emulator (`make_harness`), with
the OpenAI-compatible stand-in as the model.
"""

from __future__ import annotations

import pytest
from support.slack_emulator import SlackEmulator
from support.slack_harness import CACHE_Q

from flytegpt.bot import messages
from flytegpt.bot.slack.addressing import closes_the_thread, for_the_bot, small_talk

pytestmark = pytest.mark.timeout(120)

DM = "D0DIRECT01"

# Each of these starts with a thank-you and goes on to say or ask more: a question.
THANKS_THEN_MORE = [
    "thanks, that didn't work",
    "thanks that does not work",
    "ty, same error on 1.12",
    "thanks. now pyflyte run fails with exit code 137",
    "thanks, now I get this error:\n```\nValueError: Unsupported type <class 'pandas.DataFrame'>\n```",
    "thanks\n```\nValueError: bad input\n```",
    "thanks, that didn't work: still getting ValueError",
    "thanks for nothing it's broken",
    "thanks! one more: retries for map tasks",
    "thanks. one more thing: retries",
    "ty! also the retries",
    "thanks but it still fails with OOMKilled",
    "thanks, but it still fails",
    "thanks! it still fails though",
    "thank you, but the pod is still pending",
    "thanks it works locally but not remotely",
    "thanks, fixed. but now a new error",
    "thanks again, it still fails though",
    "thanks :sob: it still fails",
    "cheers, and the retries?",
    "thanks, works now?",
    "gracias pero no funciona",
    "danke, aber es klappt nicht",
    "merci mais ça ne marche pas",
]
# All of these are thanks and closing words (or approving emoji): a 🤗, no answer.
WHOLE_THANKS = [
    "thanks!", "thank you!", "thx", "ty", "thanks a lot!", "thank you very much", "many thanks!",
    "thank you so much, that fixed it 🎉", "awesome, thanks", "perfect, thanks!", "that worked, thank you",
    "cool, thx!", "appreciate it!", "ok thanks", "great, that did it", "thanks, it works now",
    "thanks, that worked!", "thanks :pray:", "thanks FlyteGPT!", "hello, thanks!", "Thanks @U012ABC!",
    "merci beaucoup", "danke schön", "gracias!", "🙏", "👍", ":+1::skin-tone-2:", ":pray:", "it works",
    "all good now, thanks 🙌",
]
# Neither a question nor a thank-you: an emoji of distress or doubt gets the usage, not a 🤗.
NO_THANKS_EMOJI = ["😭", ":sob:", "🤔", ":thinking_face:", "😕"]


@pytest.mark.parametrize("text", THANKS_THEN_MORE)
def test_a_thank_you_followed_by_anything_more_is_a_question(text):
    assert small_talk(text, "FlyteGPT") is None
    assert not closes_the_thread(text)
    assert for_the_bot(text, "UBOT")  # a thread reply without a mention is answered
    assert for_the_bot(f"<@UBOT> {text}", "UBOT")


@pytest.mark.parametrize("text", WHOLE_THANKS)
def test_a_message_that_is_all_thanks_is_a_thank_you(text):
    assert small_talk(text, "FlyteGPT") == "thanks"
    assert not for_the_bot(text, "UBOT")  # a thank-you in a thread is between people


@pytest.mark.parametrize("text", NO_THANKS_EMOJI)
def test_an_emoji_of_distress_or_doubt_is_no_thank_you(text):
    assert small_talk(text, "FlyteGPT") == "help"
    assert not closes_the_thread(text)
    assert not for_the_bot(text, "UBOT")  # nothing to search in a thread reply either


@pytest.mark.parametrize("text, kind", [
    ("Hi FlyteGPT!!", "greeting"), ("hey FlyteGPT", "greeting"), ("hi flytegpt, how are you?", "greeting"),
    ("sup", "greeting"), ("Hi FlyteGPT, what can you do?", "help"),
    ("hi all, OOMKilled", None), ("hello world", None), ("hello FlyteGPT, where are the logs", None),
])
def test_a_greeting_naming_the_bot_is_small_talk_with_or_without_the_mention(text, kind):
    assert small_talk(text, "FlyteGPT") == kind
    # a thread reply without the mention: the bot's name is not known there, a word naming a bot is
    assert for_the_bot(text, "UBOT") == (kind is None)


def test_people_thanking_each_other_in_a_thread_are_left_alone():
    for text in ("thanks Sam!", "ty Alex, that worked", "thanks <@U0OTHER>!", "ok", "yes", "👍"):
        assert not for_the_bot(text, "UBOT"), text


# --- end to end ---------------------------------------------------------------------------------------


def _reactions(emu: SlackEmulator, ts: str) -> list[str]:
    return [r["name"] for r in emu.reactions if r["timestamp"] == ts]


def test_a_mention_that_thanks_and_reports_a_failure_is_answered_and_a_thank_you_gets_the_hug(make_harness):
    h = make_harness()
    emu = h.emu
    first = emu.mention(CACHE_Q)
    h.wait_answers(thread_ts=first.ts)

    failed = "thanks, that didn't work: still getting ValueError"
    d = emu.mention(failed, thread_ts=first.ts, also_message=True)  # app_mention and message both
    replies = h.wait_answers(2, thread_ts=first.ts)
    assert "cache_version" in replies[1]["text"]  # an answer, not a reaction
    assert emu.wait_for(lambda: "eyes" in _reactions(emu, d.ts))
    assert messages.THANKS_REACTION not in _reactions(emu, d.ts)

    thanks = emu.mention("thanks!", thread_ts=first.ts, also_message=True)
    emu.wait_for(lambda: _reactions(emu, thanks.ts))
    h.idle()
    assert _reactions(emu, thanks.ts) == [messages.THANKS_REACTION]  # only the 🤗
    assert len(h.answers(thread_ts=first.ts)) == 2

    # without the mention too: the asker's "thanks, but it still fails" in the bot's thread is answered
    emu.message("thanks, but it still fails", thread_ts=first.ts)
    h.wait_answers(3, thread_ts=first.ts)
    h.idle()
    assert [row["question"] for row in h.logged_questions()] == [CACHE_Q, failed, "thanks, but it still fails"]


def test_the_command_and_a_dm_that_thank_and_report_a_failure_are_answered(make_harness):
    h = make_harness()
    emu = h.emu
    emu.add_channel(DM, "dm", is_im=True)
    cmd = emu.slash_command("thanks, that didn't work")
    assert emu.wait_ack(cmd.envelope_id).payload["text"] == messages.LOOKING  # not "You're welcome! 🤗"
    [post] = emu.wait_for(lambda: emu.response_posts[emu.response_id(cmd.response_url)], timeout=15)
    assert post["text"].startswith("> thanks, that didn't work")  # searched and answered (here: not found)
    welcome = emu.slash_command("perfect, thanks!")
    assert emu.wait_ack(welcome.envelope_id).payload["text"] == messages.WELCOME

    emu.message(CACHE_Q, channel=DM, channel_type="im")
    h.wait_answers(channel=DM)
    emu.message("ty, same error on 1.12", channel=DM, channel_type="im")
    answers = h.wait_answers(2, channel=DM)
    assert "cache_version" in answers[1]["text"]  # read with the exchange before it, and answered
    d = emu.message("that worked, thank you", channel=DM, channel_type="im")
    emu.wait_ack(d.envelope_id)
    h.idle()
    assert len(h.answers(channel=DM)) == 2  # a thank-you in a DM: nothing to answer


def test_a_crying_emoji_gets_the_usage_and_a_greeting_to_the_bot_in_its_thread_is_left_alone(make_harness):
    h = make_harness()
    emu = h.emu
    sob = emu.mention("😭")
    [reply] = h.wait_answers(thread_ts=sob.ts)
    assert "/flytegpt" in reply["text"]  # the usage: what to ask and how
    first = emu.mention(CACHE_Q)
    h.wait_answers(thread_ts=first.ts)
    hi = emu.message("Hi FlyteGPT!!", thread_ts=first.ts)
    emu.wait_ack(hi.envelope_id)
    h.idle()
    assert len(h.answers(thread_ts=first.ts)) == 1 and _reactions(emu, hi.ts) == []
    assert messages.THANKS_REACTION not in _reactions(emu, sob.ts)
    assert [row["question"] for row in h.logged_questions()] == [CACHE_Q]
