"""Settle checks: a message recorded submitted that never gets a final delivery report is expired and refunded."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sms_gateway.domain.models import Message, StatusChange, from_iso, iso
from sms_gateway.domain.status import MessageStatus
from sms_gateway.observability import logger
from sms_gateway.ports import AccountStore, MessageStore

# The kind of a notify-queue record that is a settle check rather than a client notification.
SETTLE = "settle"
NO_DELIVERY_REPORT = "no_delivery_report"
# SQS hides a received record for at most 12 hours: a longer wait takes several hops.
MAX_HOP_SECONDS = 43_200


def settle_check(messages: Sequence[Message], *, now: datetime) -> dict[str, Any]:
    """The notify-queue body asking to settle `messages` (one batch of one account) once the DLR wait is over."""
    first = messages[0]
    return {
        "kind": SETTLE,
        "account_id": first.account_id,
        "reference_id": first.reference_id,
        "message_ids": [message.message_id for message in messages],
        "since": iso(now),
    }


@dataclass(frozen=True)
class SettleDependencies:
    messages: MessageStore
    accounts: AccountStore
    clock: Callable[[], datetime]
    # How long a submitted message may wait for its final delivery report.
    dlr_wait: timedelta


@dataclass
class SettleOutcome:
    # Changes this check made.
    changes: list[StatusChange] = field(default_factory=list)
    # Changes an earlier delivery of the check made: their announcements may have died with the notifier that made
    # them, so they go out again under the same webhook id (one per status change), which the client dedupes.
    made_before: list[StatusChange] = field(default_factory=list)
    # Seconds until the check must look again (None: nothing left for it to do).
    check_again_in: int | None = None


def settle(check: Mapping[str, Any], deps: SettleDependencies) -> SettleOutcome:
    """Idempotent: only a message still `submitted` once its wait is over is expired, by a conditional write that
    a final DLR arriving meanwhile wins; only the write that made the change refunds."""
    now = deps.clock()
    outcome = SettleOutcome()
    due = from_iso(str(check["since"])) + deps.dlr_wait
    if now < due:
        outcome.check_again_in = _hop(due - now)
        return outcome
    messages = deps.messages.get_messages(
        str(check["account_id"]), int(check["reference_id"]), [int(m) for m in check["message_ids"]]
    )
    later: list[datetime] = []
    for message in messages:
        if message.status == MessageStatus.EXPIRED and message.error_code == NO_DELIVERY_REPORT:
            outcome.made_before.append(StatusChange(message=message, changed=True))
            continue
        # Queued messages belong to their dispatch record still (it asks again if it records them unconfirmed).
        if message.status != MessageStatus.SUBMITTED:
            continue
        submitted_at = message.status_at.get(str(MessageStatus.SUBMITTED))
        message_due = from_iso(submitted_at) + deps.dlr_wait if submitted_at else due
        if now < message_due:
            later.append(message_due)
            continue
        change = deps.messages.transition(message.key, MessageStatus.EXPIRED, now=now, error_code=NO_DELIVERY_REPORT)
        if change is None or not change.changed:
            continue
        deps.accounts.refund_credits(message.account_id, message.price)
        outcome.changes.append(change)
        logger.warning(
            "no final delivery report within the wait; message expired and refunded",
            extra={"message_id": message.message_id, "upstream": message.upstream},
        )
    if later:
        outcome.check_again_in = _hop(max(later) - now)
    return outcome


def _hop(wait: timedelta) -> int:
    return max(1, min(MAX_HOP_SECONDS, int(wait.total_seconds()) + 1))
