"""Event routing: which Slack events become questions, and which pool runs them.

Listeners make no network calls: they ack at once (Slack's 3 s), filter, de-duplicate what
may be answered (memory, then a local SQLite insert: not for every join, edit or chatter in a
channel) and hand the work to pools. Bolt runs listeners on a small executor and waits for the
ack there, so a listener that called Slack or the model would delay the acks of every other event.

- the answer pool (config.bot.workers, config.bot.queue_size) runs the answer job; when
  it is full the user is told the bot is busy instead of waiting in an endless queue; one user
  has at most config.bot.user_in_flight questions in it at once (running or queued), so a burst
  from a few accounts cannot fill the shared queue ahead of everyone;
- a small side pool does the cheap Slack calls (👀 reaction, busy and rate-limit notices,
  button clicks) and decides whether a thread reply is a follow-up for us: only in a thread
  the bot answered in, which the bot records (Deduper.remember_thread, kept across restarts)
  when it takes a question there; a thread it has no record of costs one read of its parent
  message an hour (ThreadHistory.bot_replied), never a read of the whole thread.

A thread reply without a mention is recorded as seen (event id and claim) only once its thread
is known to be the bot's: people talking to each other write nothing to the seen-events file.

Because the filters run first, a Slack retry of a malformed event reaches the filters again; it
is de-duplicated there (`malformed_delivery`), so the malformed count is one per event.

Small talk said to the bot gets no search (addressing.small_talk): "help" or a
bare mention gets the usage, as `/flytegpt help` does; a message that only greets gets a hello and
the usage; a thank-you gets a 🤗 reaction and no message. None of them is logged as a question.

A question asked while the first index loads (`flytegpt serve` connects before it loads: after
every restart) waits for it in the parking line (parking.py, `wait_for_index`), then goes to the
answer pool in the order asked; what it holds meanwhile and what it is told when it waits too long
or the bot stops is decided here (`_parked_too_late`, `_parked_at_stop`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from flytegpt.bot import messages
from flytegpt.bot.question_text import answerable_length
from flytegpt.ingest.sources.slack_export import valid_ts

from . import blocks
from .addressing import SmallTalk, closes_the_thread, for_the_bot, small_talk
from .history import question_text
from .parking import ParkingLine
from .question import Question
from .ratelimit import InFlightLimit, RateLimiter

if TYPE_CHECKING:
    from slack_bolt import App

    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.metrics import Metrics
    from flytegpt.ingest.config import Config

    from .allowlist import AllowedChannels
    from .dedupe import Deduper
    from .delivery import Delivery
    from .history import ThreadHistory
    from .interactions import Interactions
    from .workers import WorkerPool

log = logging.getLogger(__name__)

_ANSWERABLE_SUBTYPES = (None, "file_share", "thread_broadcast")


class EventRouter:
    def __init__(self, config: "Config", *, bot_user_id: str, allowed: "AllowedChannels | frozenset[str] | None",
                 deduper: "Deduper", limiter: "RateLimiter", pool: "WorkerPool", side: "WorkerPool",
                 history: "ThreadHistory", delivery: "Delivery", interactions: "Interactions", metrics: "Metrics",
                 submit: Callable[[Question], bool], turned_away: Callable[[Question, str], None],
                 bot_id: str | None = None) -> None:
        self.config, self.bot_user_id, self.bot_id = config, bot_user_id, bot_id
        # The channel ids questions are answered in (allowlist.py); None, and only None: every channel.
        # An empty set allows none: names that did not resolve can never mean "everywhere".
        self.allowed = None if allowed is None else frozenset(allowed)
        # The ones the "only in these channels" notice may name: known to be public (allowlist.py).
        self.public_allowed: frozenset[str] = frozenset(getattr(allowed, "public", ()))
        self.deduper, self.limiter, self.pool, self.side = deduper, limiter, pool, side
        # Questions turned down at once (empty, too long) are counted apart, in the same window and
        # with the same limit: they cannot use up a user's real questions, nor be replied to without end.
        self.turn_downs = RateLimiter(limiter.limit, limiter.window_s)
        # A question holds one of its user's slots from dispatch until its answer job ends.
        self.in_flight = InFlightLimit(config.bot.user_in_flight)
        pool.on_task_end(self._job_ended)
        self.history, self.delivery, self.interactions = history, delivery, interactions
        self.metrics, self.submit = metrics, submit
        self.turned_away = turned_away  # logs a refused question for the report
        self.index: "IndexHolder | None" = None  # set by wait_for_index; None: questions never wait for one
        # Questions waiting for the first index, then for room in the answer pool (parking.py).
        self.parked: ParkingLine | None = None

    def wait_for_index(self, holder: "IndexHolder") -> None:
        """Questions asked while `holder` loads its first index wait for it, in the
        parking line (parking.py says why), for at most their answer's deadline ([answer]
        deadline_s from their arrival, as everywhere); then they go to the answer pool in the order
        asked, each as soon as it has room. Only when the deadline passes, or the load
        ends without an index, is the asker told it is not ready; the 👀 goes only on questions
        that will be answered."""
        self.index = holder
        self.parked = ParkingLine(holder, deadline_s=self.config.answer.deadline_s, pool=self.pool,
                                  submit=self._submitted, too_late=self._parked_too_late,
                                  at_stop=self._parked_at_stop)

    def register(self, app: "App") -> None:
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)
        app.command(self.config.bot.command)(self.on_command)  # [bot] command, as in the app's manifest
        app.action(blocks.ACTION_FEEDBACK_UP)(self.on_feedback)
        app.action(blocks.ACTION_FEEDBACK_DOWN)(self.on_feedback)
        app.action(blocks.ACTION_SHARE)(self.on_share)
        app.action(blocks.ACTION_FEEDBACK)(self.on_feedback_buttons)

    # --- listeners (no I/O here) ----------------------------------------------------

    def on_mention(self, ack: Callable, body: dict, event: dict) -> None:
        ack()
        if self._from_bot(event) or event.get("subtype") not in _ANSWERABLE_SUBTYPES:
            return
        if not self._well_formed(body, event) or not self._new_event(body):
            return
        self._accept_channel_message(event, mentioned=True)

    def on_message(self, ack: Callable, body: dict, event: dict) -> None:
        """Every message in the bot's channels arrives here; only those that may be for us are
        recorded as seen (a SQLite write on this listener thread), after the cheap filters."""
        ack()
        if self._from_bot(event) or event.get("subtype") not in _ANSWERABLE_SUBTYPES:
            return  # other bots, edits, deletions, joins ...
        if not self._well_formed(body, event):
            return
        if event.get("subtype") == "file_share" and not self._mentions_me(event) \
                and not question_text(event.get("text"), self.bot_user_id):
            return  # a screenshot or a log file without words is no question (a mention still is)
        if not self._may_be_for_us(event):
            return
        if event.get("channel_type") != "im" and not self._mentions_me(event):
            # a thread reply: triaged on the side pool, recorded as seen only if the thread is ours
            if self._valid_event_id(body):
                self._accept_channel_message(event, mentioned=False, event_id=body.get("event_id"))
            return
        if not self._new_event(body):
            return
        if event.get("channel_type") == "im":
            if closes_the_thread(event.get("text") or "") or not self._claim(event):
                return
            text = question_text(event.get("text"), self.bot_user_id)
            thread = event.get("thread_ts")
            self._dispatch(Question("dm", text, event["channel"], event["user"], event["ts"],
                                    thread_ts=self._dm_reply_thread(event), history_root=thread,
                                    channel_type="im"))
            return
        self._accept_channel_message(event, mentioned=True)  # the app_mention twin; first one wins

    def on_command(self, ack: Callable, command: dict) -> None:
        text = question_text(command.get("text"), self.bot_user_id)  # "/flytegpt @FlyteGPT" is no question
        talk = small_talk(text, self.config.project.assistant_name)
        if talk == "thanks":
            ack(text=messages.WELCOME, response_type="ephemeral")
            return
        if talk is not None:  # "", "help", "hi": the usage (with a hello)
            ack(text=blocks.render_markdown_notice(self._small_talk_reply(talk)).text, response_type="ephemeral")
            return
        channel, user = command.get("channel_id", ""), command.get("user_id", "")
        if not self._allowed(channel) and not channel.startswith("D"):
            ack(text=self._where_to_ask(), response_type="ephemeral")
            return
        q = Question("command", text, channel, user, response_url=command.get("response_url"))
        limiter = self._limiter_for(q)
        wait = limiter.check(user)
        if wait:
            self.metrics.rate_limited.inc()
            ack(text=messages.rate_limited(wait), response_type="ephemeral")
            self.side.submit(self.turned_away, q, "rate_limited")
            return
        if not self._take_slot(q, limiter):
            ack(text=messages.IN_FLIGHT, response_type="ephemeral")
            return
        parking = self._parking_for(q)
        if parking is not None:
            parking.park(q)
            ack(text=messages.LOOKING, response_type="ephemeral")
            return
        if not self.submit(q):
            limiter.release(user)
            self.in_flight.release(id(q))
            self.metrics.busy.inc()
            ack(text=self._refusal(), response_type="ephemeral")
            self.side.submit(self.turned_away, q, "busy")
            return
        self.metrics.questions.labels("command").inc()
        ack(text=messages.LOOKING, response_type="ephemeral")

    def on_feedback(self, ack: Callable, body: dict, action: dict) -> None:
        ack()
        vote = "up" if action.get("action_id") == blocks.ACTION_FEEDBACK_UP else "down"
        self.side.submit(self.interactions.vote, body, action.get("value", ""), vote)

    def on_feedback_buttons(self, ack: Callable, body: dict, action: dict) -> None:
        """Block Kit feedback_buttons under a streamed answer: the value is "up:<id>" or "down:<id>"."""
        ack()
        vote, _, answer_id = str(action.get("value", "")).partition(":")
        if vote in ("up", "down") and answer_id:
            self.side.submit(self.interactions.vote, body, answer_id, vote)
        else:  # "sideways:<id>", "up:": a value we never sent, told like any answer we do not know
            self.side.submit(self.interactions.unknown_vote, body)

    def accept_question(self, body: dict, event: dict, q: Question) -> None:
        """A question another listener built (the assistant panel): de-duplicated and dispatched like the rest."""
        if self._new_event(body) and self._claim(event):
            self._dispatch(q)

    def on_share(self, ack: Callable, body: dict, action: dict) -> None:
        ack()
        self.side.submit(self.interactions.share, body, action.get("value", ""))

    # --- filters ------------------------------------------------------------------------

    def _new_event(self, body: dict) -> bool:
        return self._valid_event_id(body) and self._first_delivery(body.get("event_id"))

    def _valid_event_id(self, body: dict) -> bool:
        """Slack's event ids are strings: any other is not from Slack (counted as malformed)."""
        event_id = body.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            self.malformed(body.get("event"))
            return False
        return True

    def _first_delivery(self, event_id: str | None) -> bool:
        if self.deduper.new_event(event_id):
            return True
        self.metrics.duplicates.labels("event").inc()
        log.info("duplicate event dropped", extra={"event_id": event_id})
        return False

    def _from_bot(self, event: dict) -> bool:
        return bool(event.get("bot_id") or event.get("subtype") == "bot_message"
                    or event.get("user") == self.bot_user_id)

    def _dm_reply_thread(self, event: dict) -> str | None:
        """Where every reply to a DM goes: its thread; for a message at the DM's top level, a thread
        under it when answers stream ([bot] streaming, the default: Slack streams only replies), else
        the top level, where an answer posted whole goes.

        The notices (busy, rate limit, apology, restart) go with the answer: posted at the top of
        the DM beside a streamed answer's thread, they showed no reply under the 👀'd question and a
        stray message below it, which a later top-level follow-up read as an earlier answer."""
        thread = event.get("thread_ts")
        if thread:
            return thread
        return event["ts"] if self.config.bot.streaming else None

    def _well_formed(self, body: dict, event: dict) -> bool:
        """A message we could answer has a channel, a user, a ts that is a Slack timestamp ("abc" or
        "1e30" would be posted to as a thread), and text (or none): else ignore and count."""
        ids_ok = all(isinstance(event.get(k), str) and event.get(k) for k in ("channel", "user"))
        text_ok = isinstance(event.get("text", ""), str)
        ts_ok = valid_ts(event.get("ts")) and (event.get("thread_ts") is None or valid_ts(event["thread_ts"]))
        if ids_ok and text_ok and ts_ok:
            return True
        self.malformed_delivery(body, event)
        return False

    def malformed_delivery(self, body: dict, event: object) -> None:
        """A delivery of a malformed event: counted once per event, however often Slack delivers it.

        The cheap filters run before de-duplication, so that channel chatter costs no seen-events
        write; a retry of a malformed event (same event_id) therefore gets here again, and is
        de-duplicated here: counted as a duplicate, not as a second bad event. Of the events the
        filters drop only malformed ones are recorded as seen (Slack sends none): chatter writes nothing."""
        if self._new_event(body):  # a non-string event_id is counted as malformed in there
            self.malformed(event)

    def malformed(self, event: object) -> None:
        """Count and log an event of a shape Slack does not send; it is ignored, never answered."""
        kind = str(event.get("type") or "unknown")[:40] if isinstance(event, dict) else "unknown"
        keys = sorted(map(str, event))[:20] if isinstance(event, dict) else [type(event).__name__]
        self.metrics.malformed_events.labels(kind).inc()
        log.warning("malformed event ignored", extra={"event_type": kind, "keys": keys})

    def _may_be_for_us(self, event: dict) -> bool:
        """A DM, a mention, or (with thread follow-ups on) a thread reply; any other channel message
        is not ours to answer, so it is not even recorded as seen."""
        thread = event.get("thread_ts")
        return (event.get("channel_type") == "im" or self._mentions_me(event)
                or bool(self.config.bot.thread_followups and thread and thread != event.get("ts")))

    def _allowed(self, channel: str) -> bool:
        return self.allowed is None or channel in self.allowed

    def _mentions_me(self, event: dict) -> bool:
        return f"<@{self.bot_user_id}" in (event.get("text") or "")

    def _claim(self, event: dict) -> bool:
        return self._claim_message(event["channel"], event["ts"])

    def _claim_message(self, channel: str, ts: str) -> bool:
        if self.deduper.claim_message(channel, ts):
            return True
        self.metrics.duplicates.labels("message").inc()
        return False

    def _accept_channel_message(self, event: dict, *, mentioned: bool, event_id: str | None = None) -> None:
        """A mention (claimed and dispatched here), or a thread reply without one (`event_id` is
        its delivery's, de-duplicated by the triage once the thread is known to be ours)."""
        channel = event["channel"]
        if not self._allowed(channel):
            if mentioned and self._claim(event):
                self.side.submit(self.delivery.ephemeral, channel, event["user"],
                                 self._where_to_ask(), event.get("thread_ts"), True)
            return
        if not mentioned and not for_the_bot(event.get("text") or "", self.bot_user_id):
            return  # people talking to each other in a thread the bot answered in, a thank-you
        if mentioned and not self._claim(event):
            return
        thread = event.get("thread_ts") or event["ts"]
        kind = event.get("channel_type")  # an app_mention has none: the answer job asks Slack
        q = Question("mention" if mentioned else "followup", question_text(event.get("text"), self.bot_user_id),
                     channel, event["user"], event["ts"], thread_ts=thread, history_root=event.get("thread_ts"),
                     team=event.get("user_team") or event.get("team"),
                     channel_type=kind if isinstance(kind, str) else None)
        if mentioned:
            self._dispatch(q)
        elif not self.side.submit(self._triage_followup, q, event_id):
            log.warning("side pool full: thread reply not checked", extra={"channel": channel})

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, q: Question) -> None:
        """Rate limit, then the answer pool (or a busy notice); the 👀 shows it was picked up.

        Only a question the answerer will take uses up one of the user's questions: one turned down
        at once (empty, too long) costs no search or model call, and a busy refusal is given back,
        as is one refused because the user already has their share in flight (`_take_slot`).
        Turned-down questions have a count of their own (`_limiter_for`). Small talk is replied to
        here (`_small_talk`); a question asked while the first index loads waits for it (`ParkingLine.park`)."""
        talk = small_talk(q.text, self.config.project.assistant_name) if q.surface != "followup" else None
        if talk is not None:  # a thread reply without a mention is small talk only to people (for_the_bot)
            self._small_talk(q, talk)
            return
        limiter = self._limiter_for(q)
        wait = limiter.check(q.user)
        if wait:
            self.metrics.rate_limited.inc()
            self.side.submit(self.delivery.ephemeral, q.channel, q.user, messages.rate_limited(wait), q.thread_ts)
            self.side.submit(self.turned_away, q, "rate_limited")
            return
        if not self._take_slot(q, limiter):
            self.side.submit(self.delivery.ephemeral, q.channel, q.user, messages.IN_FLIGHT, q.thread_ts)
            return
        self._remember_thread(q)  # the answer or the busy notice goes there
        parking = self._parking_for(q)
        if parking is not None:
            parking.park(q)
            return
        self._enqueue(q)

    def _enqueue(self, q: Question) -> None:
        """Onto the answer pool, with its 👀 (or the busy notice, its question given back)."""
        if not self._submitted(q):
            self._limiter_for(q).release(q.user)
            self.in_flight.release(id(q))
            self.metrics.busy.inc()
            log.warning("worker queue full: busy reply", extra={"channel": q.channel})
            self.side.submit(self.delivery.notice, q, self._refusal())
            self.side.submit(self.turned_away, q, "busy")

    def _submitted(self, q: Question) -> bool:
        """Onto the answer pool, with its 👀; False, and nothing done, when the pool is full or closed."""
        if not self.submit(q):
            return False
        self.metrics.questions.labels(q.surface).inc()
        self.metrics.pending.set(self.pool.pending)
        # the panel shows a status instead; no 👀 on a question the answerer turns down (empty, too
        # long) or that has no index to be answered from (it is told it is not ready)
        if q.ts and q.surface != "assistant" and self._answerable_length(q) and self._index_ready():
            self.side.submit(self.delivery.react, q.channel, q.ts)
        return True

    # --- small talk ---------------------------------------------------------------------

    def _small_talk(self, q: Question, talk: SmallTalk) -> None:
        """Help, a greeting or a thank-you: replied to without a search or a 👀, and not logged as a
        question (each was a "knowledge gap" in the maintainers' report). A thank-you gets a 🤗 and
        no message. The usage replies are messages in the channel, so they count against the
        user's turn-downs a minute (`turn_downs`), like the empty and too-long notices."""
        log.info("small talk: replied without a search", extra={"surface": q.surface, "kind": talk})
        if talk == "thanks":
            if q.ts:
                self.side.submit(self.delivery.react, q.channel, q.ts, messages.THANKS_REACTION)
            return
        wait = self.turn_downs.check(q.user)
        if wait:
            self.metrics.rate_limited.inc()
            self.side.submit(self.delivery.ephemeral, q.channel, q.user, messages.rate_limited(wait), q.thread_ts)
            return
        self.side.submit(self.delivery.post, q, [blocks.render_markdown_notice(self._small_talk_reply(talk))])

    def _small_talk_reply(self, talk: SmallTalk) -> str:
        """The usage, as the project and the command are configured; after a hello for a greeting."""
        say = messages.greeting if talk == "greeting" else messages.usage
        return say(self.config.project, self.config.bot.command)

    # --- waiting for the first index ----------------------------------------------------

    def _index_ready(self) -> bool:
        return self.index is None or self.index.ready

    def _parking_for(self, q: Question) -> ParkingLine | None:
        """The parking line, for a question the answerer would take asked while the first index is
        loading, or while questions that waited for it still wait for room in the answer pool
        (`ParkingLine.must_wait`); None: it goes to the answer pool now."""
        if self.parked is None or not self._answerable_length(q) or not self.parked.must_wait():
            return None
        return self.parked

    def _parked_too_late(self, q: Question) -> None:
        """`q`'s deadline passed while it was parked: before the first index was served, the
        not-ready notice; after, behind a full answer pool, the busy notice a question that waited
        too long in the queue gets (its question given back, as there). No 👀 either way; its slot
        is given back, and it is logged for the report (index_not_ready, queue_timeout)."""
        if self.pool.closed:
            self._parked_at_stop(q)
            return
        self.in_flight.release(id(q))
        self.metrics.questions.labels(q.surface).inc()
        if self._index_ready():
            self._limiter_for(q).release(q.user)
            self.metrics.failures.labels("queue_timeout").inc()
            log.warning("no room in the answer queue within the answer's deadline: busy reply",
                        extra={"surface": q.surface, "deadline_s": self.config.answer.deadline_s})
            self.side.submit(self.delivery.notice, q, messages.BUSY)
            self.side.submit(self.turned_away, q, "queue_timeout")
            return
        self.metrics.failures.labels("index_not_ready").inc()
        log.warning("no index within the answer's deadline: not-ready notice",
                    extra={"surface": q.surface, "deadline_s": self.config.answer.deadline_s})
        self.side.submit(self.delivery.notice, q, messages.INDEX_NOT_READY)
        self.side.submit(self.turned_away, q, "index_not_ready")

    def _parked_at_stop(self, q: Question) -> None:
        """The bot is stopping and `q` never reached the answer pool: told the bot restarted, as the
        questions in the pool are (shutdown.drain), and logged as failed/shutdown. Posted here, not
        on the side pool, which a stop closes with what it still holds."""
        self.in_flight.release(id(q))
        self._limiter_for(q).release(q.user)
        self.metrics.questions.labels(q.surface).inc()
        self.metrics.restart_notices.inc()
        log.warning("stopping: a parked question is asked to ask again", extra={"surface": q.surface})
        try:
            self.delivery.notice(q, messages.RESTARTED)
        except Exception:  # noqa: BLE001 - the others parked must still be told
            log.exception("restart notice failed")
        self.turned_away(q, "shutdown")

    def _take_slot(self, q: Question, limiter: RateLimiter) -> bool:
        """One of the user's [bot] user_in_flight slots for `q`, held until its answer job ends.

        Without a free slot the question is refused, not queued: the rate limit counts questions
        a minute, not how many one user has waiting at once, and a burst queued in the shared FIFO
        made everyone else wait behind it (or read "busy"). The refusal gives back the question
        `limiter` counted, as a busy one does: the user did nothing wrong but ask early. Counted as
        failures{reason="in_flight"} and logged for the report."""
        if self.in_flight.take(q.user, id(q)):
            return True
        limiter.release(q.user)
        self.metrics.failures.labels("in_flight").inc()
        log.info("user has questions in flight: refused", extra={"channel": q.channel,
                                                                  "in_flight": self.in_flight.limit})
        self.side.submit(self.turned_away, q, "in_flight")
        return False

    def _job_ended(self, args: tuple) -> None:
        """The answer pool ended a task (answered, failed, timed out, cancelled at shutdown): its
        question's slot is free again. Other tasks hold no slot (release is a no-op for them).

        A question that waited in the queue past its deadline and got the busy notice instead of an
        answer (`refused_late`) also gives back the question it counted a minute, as one refused at
        the door does: the asker did nothing wrong but ask while the bot was behind."""
        if args and isinstance(args[0], Question):
            q = args[0]
            self.in_flight.release(id(q))
            if q.refused_late:
                self._limiter_for(q).release(q.user)
        if self.parked is not None:
            self.parked.room_made()  # a question waiting for room may take its place

    def _where_to_ask(self) -> str:
        """The "only in these channels" notice: it goes to anyone who mentions the bot elsewhere,
        so it links only the allowed channels known to be public; a private one's link would tell
        a non-member it exists. None known: the sentence without links."""
        return messages.only_in_channels(sorted(self.public_allowed))

    def _refusal(self) -> str:
        """Why the answer pool said no: full, or closed because the bot is stopping."""
        return messages.RESTARTED if self.pool.closed else messages.BUSY

    def _limiter_for(self, q: Question) -> RateLimiter:
        """The count a question is checked against: the user's questions, or their turn-downs.

        A question turned down at once (empty, too long) must not use up the user's real questions,
        yet its reply is a message in the channel: uncounted, one user could make the bot post
        "too long" without end. So turn-downs have their own per-user count, with the same limit
        and window ([bot] user_rate_limit a minute); past it the user gets the rate-limit notice
        (ephemeral) like any question over the limit, and the question is logged as rate_limited."""
        return self.limiter if self._answerable_length(q) else self.turn_downs

    def _answerable_length(self, q: Question) -> bool:
        """No 👀 on a question the answerer will turn down as empty or too long (it says why)."""
        return answerable_length(q.text, self.config.answer.max_question_chars)  # a pasted trace is cut to fit

    def _remember_thread(self, q: Question) -> None:
        """Record a channel thread the bot is about to reply in: later replies there without a
        mention are then triaged without reading anything from Slack, after a restart too."""
        if q.surface in ("mention", "followup") and q.thread_ts:
            self.deduper.remember_thread(q.channel, q.thread_ts)

    def _triage_followup(self, q: Question, event_id: str | None) -> None:
        """A thread reply without a mention is for us only where we already answered. Only then is
        the delivery de-duplicated and the message claimed (both written to the seen-events file)."""
        assert q.history_root is not None and q.ts is not None
        if not self._bot_thread(q.channel, q.history_root):
            return
        if self._first_delivery(event_id) and self._claim_message(q.channel, q.ts):
            self._dispatch(q)

    def _bot_thread(self, channel: str, thread_ts: str) -> bool:
        """The bot's record of the threads it answered in first; for a thread not in it (answered
        before the record was kept, or by a process on another volume), one read of its parent."""
        if self.deduper.bot_thread(channel, thread_ts):
            return True
        if self.history.bot_replied(channel, thread_ts, self.bot_user_id, self.bot_id):
            self.deduper.remember_thread(channel, thread_ts)
            return True
        return False
