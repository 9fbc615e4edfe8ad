"""Releases a scheduled batch into the dispatch queue when its schedule fires, unless it was cancelled, and fails
its messages to numbers that opted out since it was accepted, or all of them when its sender was removed from the
account since."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sms_gateway.domain.models import (
    DEFAULT_VALIDITY,
    Account,
    Batch,
    Message,
    StatusChange,
    validity_ends,
)
from sms_gateway.domain.senders import SENDER_REMOVED, holds_sender
from sms_gateway.domain.status import VALIDITY_PERIOD_ENDED, MessageStatus
from sms_gateway.errors import NotFound
from sms_gateway.logic.batches import ONLY_SCHEDULED, all_messages, cost_to_stored, finish_cancel
from sms_gateway.logic.optouts import opted_out_of
from sms_gateway.logic.send import OPTED_OUT, dispatch_commands, fail_opted_out
from sms_gateway.observability import logger
from sms_gateway.outcome_metrics import count_accepted, count_final_statuses
from sms_gateway.ports import ConsistentAccountLookup, DispatchQueue, MessageStore, OptOutStore

# Why a release fails a scheduled message rather than queue it.
REFUSED_AT_RELEASE = frozenset({OPTED_OUT, SENDER_REMOVED})


def release_scheduled_batch(
    account_id: str,
    reference_id: int,
    *,
    messages: MessageStore,
    accounts: ConsistentAccountLookup,
    opt_outs: OptOutStore | None,
    queue: DispatchQueue,
    clock: Callable[[], datetime],
    announce: Callable[[Sequence[StatusChange]], None] | None = None,
    finish_cancels: bool = False,
    validity: timedelta = DEFAULT_VALIDITY,
) -> bool:
    """Safe to run twice: the batch moves scheduled -> queued first, with a conditional write, then its messages
    (conditional writes too), then their dispatch records are queued (deduplication ids; the dispatcher claims each
    message, so a record queued twice submits nothing twice). A retry after a crash part-way finds the batch
    queued and finishes: it moves the messages still scheduled and queues every message still queued.

    The batch's write decides a race with a cancel (logic.batches.cancel_batch, which moves a scheduled batch to
    cancelled with the same kind of write): whichever moves the batch first wins. A cancel that came first leaves
    nothing to release (and a cancel that died after its batch write is finished here, with `finish_cancels`); a release
    that came first makes the cancel a conflict, so a message this call queued (and a dispatcher may be submitting)
    is never cancelled and refunded under it.
    A message to a number that opted out of the batch's sender since the send was accepted (STOP, STOPALL or an
    operator's opt-out) is failed instead (`error_code` opted_out) and refunded in the same write, and announced to
    `announce` (a report, when the batch asked for them): again by a retry, under the same webhook id. So is every
    message of a batch whose sender the account no longer holds (the operator removed it: `sender_removed`).
    A single send is queued in the lane the account's `single_sends_in_order` gives it at the release.
    A batch released after its send time's `validity` ended (its release replayed from the schedule DLQ days late)
    is not sent that late: its messages are expired (`validity_period_ended`) and refunded, each by its conditional
    write, and announced, as the dispatcher expires a message queued too long (domain.models.validity_ends).
    A batch found `queued` that this call did not move (a schedule that fired twice, or a send to go out at once that
    the sweeper hands here because its api Lambda died before queueing its records: logic/sweep.py) has its messages
    still `queued` queued again, under the deduplication ids the first queueing used, and is then taken out of the
    sweep index (a write that fails fails the release, for Lambda to retry).
    Returns True when this call released the batch (moved it out of `scheduled`).
    Raises NotFound for a batch that does not exist: a schedule is
    made only for a stored batch, so its release names one unless something changed the id on the way (a replay
    through a tool that rounds 63-bit numbers); it must fail loudly, not read as "no longer scheduled"."""
    batch = messages.get_batch(account_id, reference_id)
    if batch is None:
        raise NotFound(f"no batch {reference_id} of account {account_id}: nothing to release")
    released = (
        batch is not None
        and batch.status == MessageStatus.SCHEDULED
        and messages.set_batch_status(account_id, reference_id, MessageStatus.QUEUED, only_from=ONLY_SCHEDULED)
    )
    if not released:
        batch = messages.get_batch(account_id, reference_id)
        if batch is not None and batch.status == MessageStatus.CANCELLED and finish_cancels:
            # A cancel that died after the batch's write left its schedule, which is what fired: finish it.
            refunded = finish_cancel(messages, None, account_id, reference_id, now=clock())
            if refunded:
                logger.warning(
                    "schedule fired for a batch whose cancel did not finish; finished it",
                    extra={"reference_id": reference_id, "refunded_credits": refunded},
                )
            return False
        if batch is None or batch.status != MessageStatus.QUEUED:
            logger.info(
                "schedule fired for a batch that is not scheduled; nothing to release",
                extra={"reference_id": reference_id, "status": batch.status if batch else None},
            )
            return False
    assert batch is not None
    # Read consistently (one read a release): a replica that lags could answer with the account as it was before a
    # sender added a moment ago, and the batch the api accepted from it be failed `sender_removed` and refunded.
    account = accounts.get_account(account_id, consistent=True)
    stored = list(all_messages(messages, account_id, reference_id))
    if len(stored) < batch.recipients:
        stored = _give_back_unstored(batch, messages)
    current = _expire_late(batch, stored, messages=messages, clock=clock, validity=validity)
    current = _fail_refused(
        batch,
        current,
        account=account,
        messages=messages,
        opt_outs=opt_outs,
        clock=clock,
    )
    queued: list[int] = []
    for message in current:
        if message.status == MessageStatus.SCHEDULED:
            change = messages.transition(message.key, MessageStatus.QUEUED, now=clock())
            if change is None or change.message.status != MessageStatus.QUEUED:
                continue
        elif message.status != MessageStatus.QUEUED:
            continue
        queued.append(message.message_id)
    if queued:
        # The lane the account's single sends take now, as a send accepted now would (its order kept by default).
        in_order = account.single_sends_in_order if account is not None else True
        queue.enqueue(dispatch_commands(batch, queued, in_order=in_order))
    failed = [
        m
        for m in current
        if (m.status, m.error_code) == (MessageStatus.EXPIRED, VALIDITY_PERIOD_ENDED)
        or (m.status == MessageStatus.FAILED and m.error_code in REFUSED_AT_RELEASE)
    ]
    if failed and announce is not None:
        announce([StatusChange(message=message, changed=True) for message in failed])
    if not released and batch.status == MessageStatus.QUEUED:
        # A send to go out at once the sweeper released (its api Lambda died before queueing it, its write after
        # queueing failed, or its undo failed, whatever its size: logic.send.swept_if_the_undo_fails), or a schedule
        # that fired twice (a write that finds nothing to take out): queued now, and taken out of the sweep index. Part
        # of the release: a write that fails raises, and Lambda runs the release again a minute or two later (its
        # retries: the records it queues again repeat this run's deduplication ids, which the FIFO queue drops). Until
        # 2026-12-07 the release ended as done without it (the api's write had failed too), and every later sweep, each
        # claim's lease after the one before, released the send again: its messages still queued (a backlog at the
        # account's rate, or waiting for an upstream's Retry-After) were queued once more in new records, past the
        # deduplication window.
        messages.clear_release_sweep(batch.account_id, batch.reference_id)
    return released


def _give_back_unstored(batch: Batch, messages: MessageStore) -> list[Message]:
    """A batch with fewer messages than recipients: its send was killed while storing them, after its batch was
    written with the whole cost, and before it made the schedule or queued the records (this release is the
    sweeper's, logic/sweep.py). The
    messages stored go out; what the batch took for the others is given back (cost_to_stored, conditional on the cost
    read: once, however many releases run). A retry of the send under its key that comes later stores the rest and
    pays for them (logic.send.finish_stored_batch). The batch's messages as stored.
    MessagesAccepted: the messages stored are counted here, by the release that gives back (once, however many run):
    no request counted them (one counts a send's messages once it stored all of them), and the retry that finishes
    the send counts only those it adds, as the batch then has all its recipients' messages (until 2026-12-07 they
    were never counted)."""
    given_back, stored = cost_to_stored(messages, batch.account_id, batch.reference_id)
    if given_back > 0:
        count_accepted(len(stored))
    logger.warning(
        "released a batch whose send was killed while storing its messages; the others' credits given back",
        extra={
            "reference_id": batch.reference_id,
            "recipients": batch.recipients,
            "stored": len(stored),
            "refunded_credits": given_back,
        },
    )
    return stored


def _fail_refused(
    batch: Batch,
    batch_messages: list[Message],
    *,
    account: Account | None,
    messages: MessageStore,
    opt_outs: OptOutStore | None,
    clock: Callable[[], datetime],
) -> list[Message]:
    """The batch's messages as they are once those still scheduled that the account may no longer send are failed and
    refunded (each by its conditional write, with its refund): every one when the account no longer holds the
    batch's sender, else those to numbers that opted out of it.
    Only a message no dispatcher ever claimed moves (`unclaimed_only`): Scheduler may fire a release twice at once,
    and the firing that read the messages scheduled may write after the other queued them and a dispatcher submitted
    one. A message a dispatcher holds or submitted is left to it: the dispatcher checks the sender and the number's
    opt-out itself before it submits."""
    scheduled = [m for m in batch_messages if m.status == MessageStatus.SCHEDULED]
    if account is None or not scheduled:
        return batch_messages
    if not holds_sender(account.senders, batch.sender):
        refused, reason = scheduled, SENDER_REMOVED
    else:
        found = opted_out_of(account, batch.sender, [m.msisdn for m in scheduled], opt_outs)
        refused, reason = [m for m in scheduled if m.msisdn in found], OPTED_OUT
    if not refused:
        return batch_messages
    current, refunded = fail_opted_out(
        messages, batch_messages, refused, now=clock(), error_code=reason, unclaimed_only=True
    )
    refused_ids = {m.message_id for m in refused}
    logger.info(
        "scheduled messages the account may no longer send were failed at release",
        extra={
            "reference_id": batch.reference_id,
            "error_code": reason,
            "failed": sum(m.message_id in refused_ids and m.status == MessageStatus.FAILED for m in current),
            "refunded_credits": refunded,
        },
    )
    return current


def _expire_late(
    batch: Batch,
    batch_messages: list[Message],
    *,
    messages: MessageStore,
    clock: Callable[[], datetime],
    validity: timedelta,
) -> list[Message]:
    """The batch's messages as they are once, if its send time's validity has ended, those waiting (scheduled, or
    queued by an earlier try and claimed by no dispatcher) are expired and refunded, each by its conditional write
    with its refund."""
    now = clock()
    if now <= validity_ends(created_at=batch.created_at, send_at=batch.send_at, queued_at=None, validity=validity):
        return batch_messages
    waiting = [m for m in batch_messages if m.status in (MessageStatus.SCHEDULED, MessageStatus.QUEUED)]
    if not waiting:
        return batch_messages
    changes = messages.move_and_refund(
        waiting, MessageStatus.EXPIRED, now=now, error_code=VALIDITY_PERIOD_ENDED, unclaimed_only=True
    )
    moved = {change.message.message_id: change for change in changes if change is not None}
    count_final_statuses(change for change in moved.values() if change.changed)
    logger.warning(
        "scheduled batch released after its validity ended; its messages were expired, not sent",
        extra={
            "reference_id": batch.reference_id,
            "send_at": batch.send_at,
            "expired": sum(change.changed for change in moved.values()),
            "refunded_credits": sum(change.message.price for change in moved.values() if change.changed),
        },
    )
    return [moved[m.message_id].message if m.message_id in moved else m for m in batch_messages]
