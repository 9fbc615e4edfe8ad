"""Releases a scheduled batch into the dispatch queue when its schedule fires, unless it was cancelled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.batches import all_messages
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
) -> bool:
    """Safe to run twice: messages move scheduled -> queued with conditional writes, dispatch records carry
    deduplication ids, and the batch's own status is set last, so a crash part-way is finished by a retry.
    A cancelled batch is left alone. Returns True when this call released the batch."""
    batch = messages.get_batch(account_id, reference_id)
    if batch is None or batch.status != MessageStatus.SCHEDULED:
        logger.info(
            "schedule fired for a batch that is not scheduled; nothing to release",
            extra={"reference_id": reference_id, "status": batch.status if batch else None},
        )
        return False
    queued: list[int] = []
    for message in all_messages(messages, account_id, reference_id):
        change = messages.transition(message.key, MessageStatus.QUEUED, now=clock())
        if change is not None and change.message.status == MessageStatus.QUEUED:
            queued.append(message.message_id)
    if queued:
        queue.enqueue(dispatch_commands(batch, queued))
    return messages.set_batch_status(account_id, reference_id, MessageStatus.QUEUED)
