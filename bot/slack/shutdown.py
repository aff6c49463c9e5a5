"""Stopping without losing an asker: what SIGTERM does to questions in flight.

Kubernetes sends SIGTERM and kills the pod `terminationGracePeriodSeconds` later. In
that window the bot stops taking questions, lets running answers finish until a deadline
([bot] shutdown_grace_s), and then tells everyone still waiting (running past the
deadline, or queued) in their thread that the bot restarted and to ask again. A job that
finishes after its asker was told does not post (AnswerJob's claim), so nobody gets both.
Answers Slack had refused for a while (delivery's DeferredPosts) get one last try beside
those notices; the ones Slack still refuses are logged with their channels, not lost silently.
The feedback database stays open while any answer still runs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from flytegpt.bot import messages

if TYPE_CHECKING:
    from .app import FlyteGPTBot

log = logging.getLogger(__name__)

NOTICE_BUDGET_S = 4.0  # all "please ask again" notices together, after the deadline


def drain(bot: "FlyteGPTBot", deadline: float) -> bool:
    """Finish what can finish by `deadline` (time.monotonic()); True when every answer did."""
    bot.pool.close_intake()
    finished = bot.pool.wait_idle(max(0.0, deadline - time.monotonic()))
    bot.delivery.deferred.last_call()  # answers Slack refused for a while: one more try, beside the notices
    notices_end = time.monotonic() + NOTICE_BUDGET_S
    left = bot.answer_job.abandon_unfinished()
    if left:
        log.warning("shutting down with unfinished answers: asking them to ask again",
                    extra={"unfinished": len(left)})
        _notify(bot, left)
    bot.delivery.deferred.close(max(deadline, notices_end) - time.monotonic())
    bot.pool.shutdown(wait=False)  # cancels the queued ones (already told)
    return finished and not left


def _notify(bot: "FlyteGPTBot", questions: list) -> None:
    """One notice per asker, in parallel, bounded by NOTICE_BUDGET_S in total.

    An answer already half-shown in a stream gets the notice at its end, and the stream is
    stopped: one message, not a streaming one left open beside a second one."""
    threads = []
    for q in questions:
        bot.metrics.restart_notices.inc()
        stream = bot.answer_job.stream_of(q)
        if stream is not None and stream.started:
            target, args, kwargs = stream.fail, (messages.RESTARTED,), {}
        else:
            target, args, kwargs = bot.delivery.post, (q, [_restarted()]), {"tell_on_failure": False}
        t = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True, name="flytegpt-restart-notice")
        t.start()
        threads.append(t)
    end = time.monotonic() + NOTICE_BUDGET_S
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))


def _restarted():
    from .blocks import render_notice

    return render_notice(messages.RESTARTED)
