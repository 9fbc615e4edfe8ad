"""The sweeper: on a schedule, finishes what a function that failed or died part-way left undone, and nobody
else would (an upstream that never posts a failed callback again)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sms_gateway.logic.inbound import inbound_notification
from sms_gateway.observability import logger
from sms_gateway.ports import InboxStore

# Inbound SMS one run queues at most: bounded work, whatever a long outage of the notify queue left behind (the
# next run, minutes later, takes the next ones, oldest first).
SWEEP_LIMIT = 200
# How long an SMS a run took stays its own: a run that dies before queueing it leaves it to a run after that.
SWEEP_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class SweepDependencies:
    inbox: InboxStore
    publish: Callable[[dict[str, Any]], None]
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class SweepOutcome:
    inbound_queued: int
    inbound_failed: int


class SweepIncomplete(RuntimeError):
    """Some notifications could not be queued: they stay marked for a later run, and the run fails (its alarm)."""


def sweep_inbound_notifications(deps: SweepDependencies, *, limit: int = SWEEP_LIMIT) -> SweepOutcome:
    """Queues the notification of each inbound SMS stored and still marked as not queued past its due time (its
    callback's publish failed, or the function died between storing and queueing, and the upstream did not post
    it again), then clears its mark. Under the SMS's own webhook id (`in_<id>`): a client that got it after all
    drops the copy; a STOP / START still pending in it is applied by the notifier (apply_keyword_still_pending).
    Each SMS is claimed by a conditional write first, so a concurrent run does not queue it too; a callback retry
    that queues it meanwhile clears the mark, and it is not claimed again. Raises SweepIncomplete when some could not
    be queued (they are taken again once their claim runs out)."""
    now = deps.clock()
    claimed = deps.inbox.claim_inbound_notifications(now=now, until=now + SWEEP_LEASE, limit=limit)
    queued = failed = 0
    for inbound in claimed:
        try:
            deps.publish(inbound_notification(inbound))
        except Exception:
            failed += 1
            logger.exception("inbound notification not queued by the sweep; a later run retries it")
            continue
        deps.inbox.inbound_notified(inbound)
        queued += 1
        logger.warning(
            "inbound SMS queued for the client by the sweep: its callback did not queue it",
            extra={"inbound_id": inbound.inbound_id, "account_id": inbound.account_id},
        )
    outcome = SweepOutcome(inbound_queued=queued, inbound_failed=failed)
    if failed:
        raise SweepIncomplete(f"{failed} of {len(claimed)} inbound notifications not queued")
    return outcome
