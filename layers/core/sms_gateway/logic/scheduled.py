"""Releases a scheduled batch into the dispatch queue when its schedule fires, unless it was cancelled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.batches import ONLY_SCHEDULED, all_messages, finish_cancel
from sms_gateway.logic.send import dispatch_commands
from sms_gateway.observability import logger
from sms_gateway.ports import DispatchQueue, MessageStore


def release_scheduled_batch(
    account_id: str,
    reference_id: int,
    *,
    messages: MessageStore,
    queue: DispatchQueue,
    clock: Callable[[], datetime],
    finish_cancels: bool = False,
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
    Returns True when this call released the batch."""
    batch = messages.get_batch(account_id, reference_id)
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
    queued: list[int] = []
    for message in all_messages(messages, account_id, reference_id):
        if message.status == MessageStatus.SCHEDULED:
            change = messages.transition(message.key, MessageStatus.QUEUED, now=clock())
            if change is None or change.message.status != MessageStatus.QUEUED:
                continue
        elif message.status != MessageStatus.QUEUED:
            continue
        queued.append(message.message_id)
    if queued:
        queue.enqueue(dispatch_commands(batch, queued))
    return released
