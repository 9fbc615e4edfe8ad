"""The sweeper: on a schedule, finishes what a function that failed or died part-way left undone, and nobody
else would (an upstream that never posts a failed callback again)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sms_gateway.domain.models import Message, StatusChange, StoredInbound
from sms_gateway.logic.inbound import queue_inbound_notification
from sms_gateway.logic.notify import notifications_of
from sms_gateway.observability import logger
from sms_gateway.ports import InboxStore, MessageStore

# Items of each kind one run queues at most (inbound SMS, delivery reports): bounded work, whatever a long outage of
# the notify queue left behind (the next run, minutes later, takes the next ones, oldest first).
SWEEP_LIMIT = 200
# How long an item a run took stays its own: a run that dies before queueing it leaves it to a run after that.
SWEEP_LEASE = timedelta(minutes=5)

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class SweepDependencies:
    inbox: InboxStore
    messages: MessageStore
    publish: Callable[[dict[str, Any]], None]
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class SweepOutcome:
    inbound_queued: int
    inbound_failed: int
    reports_queued: int = 0
    reports_failed: int = 0


class SweepIncomplete(RuntimeError):
    """Some notifications could not be queued: they stay marked for a later run, and the run fails (its alarm)."""


def sweep_notifications(deps: SweepDependencies, *, limit: int = SWEEP_LIMIT) -> SweepOutcome:
    """Queues the client notifications callbacks left unqueued, past their due time, at most `limit` of each kind:

    - an inbound SMS stored and still marked as not queued (its callback's publish failed, or the function died
      between storing and queueing, and the upstream did not post it again), under its own webhook id (`in_<id>`);
      a STOP / START still pending in it is applied by the notifier (apply_keyword_still_pending);
    - a final delivery report whose announcement the notify queue refused (`announce_pending`, logic/delivery.py
      announce_change), as the message's settle check would announce it (`dlr_<id>_<sequence>`), days earlier, and
      also when that check already ran (it read the message just before the report came).

    Then clears each one's mark. A client that got one after all drops the copy by its webhook id. Each is claimed by
    a conditional write first, so a concurrent run does not queue it too; a callback retry (or a settle check) that
    queues it meanwhile clears the mark, and it is not claimed again. Raises SweepIncomplete, once both kinds had
    their turn, when some could not be queued (they are taken again once their claim runs out)."""
    now = deps.clock()
    until = now + SWEEP_LEASE
    inbound_queued, inbound_failed = _queue_each(
        deps.inbox.claim_inbound_notifications(now=now, until=until, limit=limit),
        lambda inbound: _queue_inbound(inbound, deps),
        "inbound notification",
    )
    reports_queued, reports_failed = _queue_each(
        deps.messages.claim_unannounced_reports(now=now, until=until, limit=limit),
        lambda message: _announce_report(message, deps),
        "delivery report",
    )
    outcome = SweepOutcome(inbound_queued, inbound_failed, reports_queued, reports_failed)
    if inbound_failed or reports_failed:
        raise SweepIncomplete(
            f"{inbound_failed} of {inbound_queued + inbound_failed} inbound notifications and {reports_failed} of "
            f"{reports_queued + reports_failed} delivery reports not queued"
        )
    return outcome


def _queue_each(claimed: Sequence[_Item], queue: Callable[[_Item], None], kind: str) -> tuple[int, int]:
    """Queues each claimed item (one failure does not stop the others); how many were queued, how many failed."""
    queued = failed = 0
    for item in claimed:
        try:
            queue(item)
        except Exception:
            failed += 1
            logger.exception("notification not queued by the sweep; a later run retries it", extra={"kind": kind})
        else:
            queued += 1
    return queued, failed


def _queue_inbound(inbound: StoredInbound, deps: SweepDependencies) -> None:
    queue_inbound_notification(inbound, deps.inbox, deps.publish)
    logger.warning(
        "inbound SMS queued for the client by the sweep: its callback did not queue it",
        extra={"inbound_id": inbound.inbound_id, "account_id": inbound.account_id},
    )


def _announce_report(message: Message, deps: SweepDependencies) -> None:
    # The settle check's notification (logic/settle.py, `unannounced`): the same webhook id, so the client keeps one.
    for notification in notifications_of([StatusChange(message=message, changed=True)]):
        deps.publish(notification)
    if message.announce_pending is not None:
        deps.messages.clear_unannounced(message.key, message.announce_pending)
    logger.warning(
        "delivery report announced by the sweep: the notify queue had refused its announcement",
        extra={"message_id": message.message_id, "sequence": message.sequence},
    )
