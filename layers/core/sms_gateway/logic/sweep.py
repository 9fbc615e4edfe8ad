"""The sweeper: on a schedule, finishes what a function that failed or died part-way left undone, and nobody
else would (an upstream that never posts a failed callback again, a client that never retries a send)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sms_gateway.domain.models import Message, StatusChange, StoredInbound, UnreleasedBatch
from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.inbound import inbound_notification
from sms_gateway.logic.notify import notifications_of
from sms_gateway.observability import logger
from sms_gateway.ports import BatchRelease, BatchScheduler, InboxStore, MessageStore

# Items of each kind one claim takes (inbound SMS, delivery reports): a run claims page after page, oldest first,
# until none is left or its invocation nears its end (`out_of_time`), and the next run, minutes later, takes the
# rest. Until 2026-12-06 a run stopped after one page: a notify queue outage of seconds during a bulk send
# left more than that, which went out 200 a run, hours late.
SWEEP_LIMIT = 200
# Notifications to one publish: one SQS SendMessageBatch carries ten.
PUBLISH_BATCH = 10
# How long an item a run took stays its own: a run that dies before queueing it leaves it to a run after that.
SWEEP_LEASE = timedelta(minutes=5)
# How long a batch the sweep handed to its release stays its own. The release runs in the scheduled_dispatch
# function, invoked asynchronously: Lambda may start it a little later, and tries it twice more when it raises (about
# 1 and 2 minutes apart, each run up to 120 s), about 10 minutes in all. A claim shorter than that would hand a
# release still in Lambda's hands on again; one that ran out after Lambda gave up (the release in the schedule DLQ,
# its alarm raised) is handed on again, so a release that failed for a passing reason is retried by the sweep.
RELEASE_SWEEP_LEASE = timedelta(minutes=15)

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class SweepDependencies:
    inbox: InboxStore
    messages: MessageStore
    # Queues notifications, in order (up to PUBLISH_BATCH to a call: one SendMessageBatch).
    publish: Callable[[Sequence[dict[str, Any]]], None]
    clock: Callable[[], datetime]
    # True once too little of the invocation is left to claim and queue another page (None: outside Lambda).
    out_of_time: Callable[[], bool] | None = None
    # Both given: unreleased batches are released: scheduled ones still scheduled well after their send time (their
    # schedule was never made: the api Lambda killed between storing the batch and scheduling it), any schedule left
    # deleted; and sends of 100 recipients or more to go out at once whose records were not known to be queued a few
    # minutes after they were accepted (the api Lambda killed between storing the batch and queueing them).
    scheduler: BatchScheduler | None = None
    batch_release: BatchRelease | None = None


@dataclass(frozen=True)
class SweepOutcome:
    inbound_queued: int
    inbound_failed: int
    reports_queued: int = 0
    reports_failed: int = 0
    batches_released: int = 0
    batches_failed: int = 0


class SweepIncomplete(RuntimeError):
    """Some notifications could not be queued, or scheduled batches handed to their release: they stay marked for a
    later run, and the run fails (its alarm)."""


def sweep_notifications(deps: SweepDependencies, *, limit: int = SWEEP_LIMIT) -> SweepOutcome:
    """Queues the client notifications callbacks left unqueued, past their due time, `limit` of each kind to a claim,
    until none is left or the run is out of time (`deps.out_of_time`):

    - an inbound SMS stored and still marked as not queued (its callback's publish failed, or the function died
      between storing and queueing, and the upstream did not post it again), under its own webhook id (`in_<id>`);
      a STOP / START still pending in it is applied by the notifier (apply_keyword_still_pending);
    - a final delivery report whose announcement the notify queue refused (`announce_pending`, logic/delivery.py
      announce_change), as the message's settle check would announce it (`dlr_<id>_<sequence>`), days earlier, and
      also when that check already ran (it read the message just before the report came).

    Then clears each one's mark. A client that got one after all drops the copy by its webhook id. Each is claimed by
    a conditional write first, so a concurrent run does not queue it too; a callback retry (or a settle check) that
    queues it meanwhile clears the mark, and it is not claimed again.

    With a scheduler and a batch release (`deps`), also releases the unreleased batches (release_unreleased): those
    still `scheduled` SCHEDULED_RELEASE_SWEEP_MARGIN after their send time, and sends of 100 recipients or more to go
    out at once still not known to be queued UNQUEUED_RELEASE_SWEEP_MARGIN after they were accepted.
    Raises SweepIncomplete, once every kind
    had its turn, when some could not be queued or released (they are taken again once their claim runs out)."""
    kinds: list[tuple[_Claim, _Queue]] = [
        (
            lambda now, until: deps.inbox.claim_inbound_notifications(now=now, until=until, limit=limit),
            lambda claimed: _queue_inbound(claimed, deps),
        ),
        (
            lambda now, until: deps.messages.claim_unannounced_reports(now=now, until=until, limit=limit),
            lambda claimed: _announce_reports(claimed, deps),
        ),
    ]
    if deps.scheduler is not None and deps.batch_release is not None:
        scheduler, batch_release = deps.scheduler, deps.batch_release
        kinds.append(
            (
                lambda now, _until: deps.messages.claim_unreleased_batches(
                    now=now, until=now + RELEASE_SWEEP_LEASE, limit=limit
                ),
                lambda claimed: release_unreleased(claimed, scheduler, batch_release),
            )
        )
    (inbound_queued, inbound_failed), (reports_queued, reports_failed), *batches = _pages_in_turn(kinds, deps)
    batches_released, batches_failed = batches[0] if batches else (0, 0)
    outcome = SweepOutcome(
        inbound_queued, inbound_failed, reports_queued, reports_failed, batches_released, batches_failed
    )
    if inbound_failed or reports_failed or batches_failed:
        raise SweepIncomplete(
            f"{inbound_failed} of {inbound_queued + inbound_failed} inbound notifications and {reports_failed} of "
            f"{reports_queued + reports_failed} delivery reports not queued, {batches_failed} of "
            f"{batches_released + batches_failed} unreleased batches not handed to their release"
        )
    return outcome


_Claim = Callable[[datetime, datetime], Sequence[Any]]
_Queue = Callable[[Sequence[Any]], tuple[int, int]]


def _pages_in_turn(kinds: Sequence[tuple[_Claim, _Queue]], deps: SweepDependencies) -> list[tuple[int, int]]:
    """Claims and queues a page of each kind in turn, until a claim of every kind has taken none or the run is out of
    time; how many of each kind were queued, how many failed. In turn, so that a backlog of one kind longer than a
    run leaves the other its share of every run (until 2026-12-06 the inbound SMS of a long notify queue outage took
    whole runs and delivery reports waited behind them). The first page of each kind is claimed however late the run
    is (as every run did before runs paged). An item that failed stays claimed (SWEEP_LEASE), so no page of this run
    takes it again. Not "until a page comes back short": a claim passes over the items the sweep index still lists
    after they were cleared or claimed (it is eventually consistent), so a short page may have more behind it."""
    totals = [(0, 0) for _ in kinds]
    left = list(range(len(kinds)))
    first_round = True
    while left:
        for kind in list(left):
            if not first_round and deps.out_of_time is not None and deps.out_of_time():
                return totals
            claim, queue = kinds[kind]
            now = deps.clock()
            claimed = claim(now, now + SWEEP_LEASE)
            if not claimed:
                left.remove(kind)
                continue
            done, not_done = queue(claimed)
            queued, failed = totals[kind]
            totals[kind] = (queued + done, failed + not_done)
        first_round = False
    return totals


def _queue_each(
    claimed: Sequence[_Item],
    queue: Callable[[_Item], None],
    kind: str,
    failure: str = "notification not queued by the sweep; a later run retries it",
) -> tuple[int, int]:
    """Does `queue` to each claimed item (one failure does not stop the others, and is logged as `failure`); how many
    were done, how many failed."""
    queued = failed = 0
    for item in claimed:
        try:
            queue(item)
        except Exception:
            failed += 1
            logger.exception(failure, extra={"kind": kind})
        else:
            queued += 1
    return queued, failed


def _publish_then_clear(
    claimed: Sequence[_Item],
    notifications_of_batch: Callable[[Sequence[_Item]], list[dict[str, Any]]],
    clear: Callable[[_Item], None],
    deps: SweepDependencies,
    kind: str,
) -> tuple[int, int]:
    """Publishes the claimed items' notifications PUBLISH_BATCH to a publish (one SendMessageBatch; until 2026-12-06
    inbound SMS went one to a call, ten times the requests and time of a backlog), then clears each one's mark; how
    many were queued, how many failed (a refused batch fails its items, and the others go on)."""
    queued = failed = 0
    for start in range(0, len(claimed), PUBLISH_BATCH):
        batch = claimed[start : start + PUBLISH_BATCH]
        try:
            deps.publish(notifications_of_batch(batch))
        except Exception:
            failed += len(batch)
            logger.exception("notifications not queued by the sweep; a later run retries them", extra={"kind": kind})
            continue
        done, not_done = _queue_each(batch, clear, kind)
        queued, failed = queued + done, failed + not_done
    return queued, failed


def _queue_inbound(claimed: Sequence[StoredInbound], deps: SweepDependencies) -> tuple[int, int]:
    """Queues the claimed inbound SMS's notifications under their own webhook ids, then clears their not-queued
    marks (a run that dies first queues them again, under the same ids)."""
    return _publish_then_clear(
        claimed,
        lambda batch: [inbound_notification(inbound) for inbound in batch],
        lambda inbound: _inbound_cleared(inbound, deps),
        deps,
        "inbound notification",
    )


def _inbound_cleared(inbound: StoredInbound, deps: SweepDependencies) -> None:
    deps.inbox.inbound_notified(inbound)
    logger.warning(
        "inbound SMS queued for the client by the sweep: its callback did not queue it",
        extra={"inbound_id": inbound.inbound_id, "account_id": inbound.account_id},
    )


def _announce_reports(claimed: Sequence[Message], deps: SweepDependencies) -> tuple[int, int]:
    """Announces the claimed reports as the settle check would (logic/settle.py, `unannounced`: the same webhook
    ids, so the client keeps one of each), then clears their marks."""
    return _publish_then_clear(
        claimed,
        lambda batch: notifications_of([StatusChange(message=message, changed=True) for message in batch]),
        lambda message: _cleared(message, deps),
        deps,
        "delivery report",
    )


def _cleared(message: Message, deps: SweepDependencies) -> None:
    """A report the sweep queued: its mark goes (a run that dies first queues it again, under the same id)."""
    if message.announce_pending is not None:
        deps.messages.clear_unannounced(message.key, message.announce_pending)
    logger.warning(
        "delivery report announced by the sweep: the notify queue had refused its announcement",
        extra={"message_id": message.message_id, "sequence": message.sequence},
    )


def release_unreleased(
    claimed: Sequence[UnreleasedBatch], scheduler: BatchScheduler, batch_release: BatchRelease
) -> tuple[int, int]:
    """Has each claimed batch (still scheduled well after its send time, or to go out at once and not known to be
    queued) released as a schedule's release would: how many were handed to their release, how many could not be
    (taken again once their claim runs out)."""
    return _queue_each(
        claimed,
        lambda batch: _release(batch, scheduler, batch_release),
        "unreleased batch",
        "unreleased batch not handed to its release by the sweep; a later run retries it",
    )


def _release(batch: UnreleasedBatch, scheduler: BatchScheduler, batch_release: BatchRelease) -> None:
    """Hands the batch to scheduled_dispatch's release, after deleting the schedule a scheduled batch may have left.
    A send to go out at once has none: its release queues its messages still `queued` under the deduplication ids
    its send used, and the dispatcher's claim keeps any a dispatcher took from going out twice."""
    if batch.status == MessageStatus.SCHEDULED:
        _release_scheduled(batch, scheduler, batch_release)
        return
    batch_release.release(batch.account_id, batch.reference_id)
    logger.warning(
        "send to go out at once released by the sweep: its records were not known to be queued minutes after it was "
        "accepted (its api Lambda died between storing and queueing it, or its write after queueing failed)",
        extra={"account_id": batch.account_id, "reference_id": batch.reference_id},
    )


def _release_scheduled(batch: UnreleasedBatch, scheduler: BatchScheduler, batch_release: BatchRelease) -> None:
    """Deletes the batch's schedule if one is left, then hands the batch to the release its schedule would have made.
    The schedule goes first: a retry of the send under its idempotency key may make one meanwhile for messages it adds
    (logic.send.finish_stored_batch), and deleted after the release that schedule would leave those unsent. A schedule
    that fires anyway (Scheduler had invoked it already, or its deletion failed) finds the batch released and changes
    nothing; the sweep's release after a firing's finds it the same way."""
    try:
        deleted: bool | None = scheduler.cancel(batch.account_id, batch.reference_id)
    except Exception:
        deleted = None
        logger.exception(
            "could not delete the schedule of a batch the sweep releases; if it fires, it finds the batch released",
            extra={"reference_id": batch.reference_id},
        )
    batch_release.release(batch.account_id, batch.reference_id)
    logger.warning(
        "scheduled batch released by the sweep: still scheduled well after its send time, its schedule never "
        "released it",
        extra={
            "account_id": batch.account_id,
            "reference_id": batch.reference_id,
            "schedule": scheduler.schedule_name(batch.account_id, batch.reference_id),
            "schedule_deleted": deleted,
        },
    )
