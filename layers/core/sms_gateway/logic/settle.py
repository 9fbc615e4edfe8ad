"""Settle checks: a message recorded submitted that never gets a final delivery report is expired and refunded.

Every message a dispatcher records submitted, with the upstream's word or without it, is in a check: upstreams lose
delivery reports, and without the check such a message would stay `submitted` for good. The dispatcher puts all the
messages of one invocation in one check (records of single sends come ten to an invocation under load), and the
check waits out the DLR wait on the notify queue; messages settled by their DLR by then cost one read each."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sms_gateway.domain.models import Message, MessageKey, StatusChange, from_iso, iso, usable_upstream_id
from sms_gateway.domain.status import TERMINAL, MessageStatus
from sms_gateway.logic.delivery import DeliveryDependencies, link_upstream_id
from sms_gateway.observability import logger
from sms_gateway.ports import MAX_QUEUE_DELAY_SECONDS, AccountStore, MessageStore

# The kind of a notify-queue record that is a settle check rather than a client notification.
SETTLE = "settle"
NO_DELIVERY_REPORT = "no_delivery_report"
# SQS hides a received record for at most 12 hours: a longer wait takes several hops.
MAX_HOP_SECONDS = MAX_QUEUE_DELAY_SECONDS
# Message ids in one check: about 21 KB of JSON, well inside an SQS message (a dispatcher invocation holds at most
# 10 records of 100 messages).
CHECK_MESSAGES = 1_000
# Decisions a check makes on one message whose interim word changes under its writes (an ACCEPTD, then an UNKNOWN, ...)
# before it leaves the message to its next look.
DECISIONS = 3


def settle_checks(messages: Sequence[Message], *, now: datetime) -> list[dict[str, Any]]:
    """The notify-queue bodies asking to settle `messages` once the DLR wait is over: their ids by batch, at most
    CHECK_MESSAGES to a check (a message listed twice is checked once)."""
    keys = list(dict.fromkeys((m.account_id, m.reference_id, m.message_id) for m in messages))
    return [_check(keys[start : start + CHECK_MESSAGES], now) for start in range(0, len(keys), CHECK_MESSAGES)]


def is_settle_check(record_body: Mapping[str, Any]) -> bool:
    """Whether a notify-queue record's (decoded) body is a settle check rather than a client notification."""
    return record_body.get("kind") == SETTLE


def _check(keys: Sequence[tuple[str, int, int]], now: datetime) -> dict[str, Any]:
    by_batch: dict[tuple[str, int], list[int]] = {}
    for account_id, reference_id, message_id in keys:
        by_batch.setdefault((account_id, reference_id), []).append(message_id)
    batches = [{"account_id": a, "reference_id": r, "message_ids": ids} for (a, r), ids in by_batch.items()]
    return {"kind": SETTLE, "since": iso(now), "batches": batches}


def _keys_of(check: Mapping[str, Any]) -> Iterator[MessageKey]:
    """The messages a check lists; a check queued before checks held several batches holds one, at its top level."""
    for batch in check.get("batches") or [check]:
        for message_id in batch["message_ids"]:
            yield MessageKey(
                account_id=str(batch["account_id"]), reference_id=int(batch["reference_id"]), message_id=int(message_id)
            )


@dataclass(frozen=True)
class SettleDependencies:
    messages: MessageStore
    accounts: AccountStore
    clock: Callable[[], datetime]
    # How long a submitted message may wait for its final delivery report.
    dlr_wait: timedelta


@dataclass
class SettleOutcome:
    # Changes this check made: its expiries, and the changes of reports held on an upstream id it applied.
    changes: list[StatusChange] = field(default_factory=list)
    # Of those, the messages it expired for want of a final report (MessagesExpiredWithoutDlr counts these).
    expired: list[StatusChange] = field(default_factory=list)
    # Changes an earlier delivery of the check made: their announcements may have died with the notifier that made
    # them, so they go out again under the same webhook id (one per status change), which the client dedupes.
    made_before: list[StatusChange] = field(default_factory=list)
    # Final changes of delivery reports whose announcement the notify queue refused (`announce_pending`): the
    # upstream may never post the callback again, so they go out under their webhook id, then their marks are
    # cleared (announced_again).
    unannounced: list[StatusChange] = field(default_factory=list)
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
    # One read for the check's batches together (BatchGetItem takes 100 keys of any partitions), eventually
    # consistent: the wait is hours, and the expiry below is a conditional write that a newer status wins.
    messages = deps.messages.get_messages_by_key(list(_keys_of(check)), consistent=False)
    later: list[datetime] = []
    failed = 0
    for message in messages:
        try:
            _settle_one(message, now=now, due=due, deps=deps, outcome=outcome, later=later)
        except Exception:
            # The others are settled all the same, and what was settled is announced before the check fails: a
            # held report applied here would be final and unmarked on the redelivery, which passes over it.
            failed += 1
            logger.exception("could not settle a message; the check's redelivery tries again", extra=_ids(message))
    if later:
        outcome.check_again_in = _hop(max(later) - now)
    if failed:
        raise SettleIncomplete(outcome, failed)
    return outcome


def _settle_one(
    message: Message,
    *,
    now: datetime,
    due: datetime,
    deps: SettleDependencies,
    outcome: SettleOutcome,
    later: list[datetime],
) -> None:
    """Settles one message of a check whose wait is over (settle), adding what it did to `outcome`."""
    if message.announce_pending is not None and message.status in TERMINAL:
        outcome.unannounced.append(StatusChange(message=message, changed=True))
        return
    if message.status == MessageStatus.EXPIRED and message.error_code == NO_DELIVERY_REPORT:
        outcome.made_before.append(StatusChange(message=message, changed=True))
        return
    if _accepted_and_unannounced(message):
        # Delivered by an earlier delivery of this check, which may have died before announcing it.
        outcome.made_before.append(StatusChange(message=message, changed=True))
        return
    # Queued messages belong to their dispatch record still: its next delivery checks them once it submits them.
    if message.status != MessageStatus.SUBMITTED:
        return
    submitted_at = message.status_at.get(str(MessageStatus.SUBMITTED))
    message_due = from_iso(submitted_at) + deps.dlr_wait if submitted_at else due
    if now < message_due:
        later.append(message_due)
        return
    # An id too long to be a key (stored by dispatchers before 2026-12-07) holds no reports: none naming it is taken.
    linkable = bool(message.upstream_message_id) and usable_upstream_id(message.upstream_message_id or "")
    if message.upstream and linkable and _reported_while_unlinked(message, deps, outcome):
        return
    # Each write is conditional on the word the check read (Message.settles_as): an interim receipt landing between
    # the read and the write makes it find the message so, and the check decides again on what it found.
    for _ in range(DECISIONS):
        if message.settles_as == MessageStatus.DELIVERED:
            unsettled = _deliver_accepted(message, now=now, deps=deps, outcome=outcome)
        else:
            unsettled = _expire(message, now=now, deps=deps, outcome=outcome)
        if unsettled is None:
            return
        message = unsettled
    # Its word changed under every write (receipts landing one upon another): the check looks again in a moment.
    later.append(now)


def _expire(message: Message, *, now: datetime, deps: SettleDependencies, outcome: SettleOutcome) -> Message | None:
    """A message no final report reached within the wait, with no ACCEPTD last (Message.settles_as): expired and
    refunded, by a conditional write that a final report, or an ACCEPTD, arriving meanwhile wins. The message as that
    write found it when it is still submitted with an ACCEPTD last (one that landed after the check's read, which is
    eventually consistent, or just before the write): the caller settles it by that word, delivered; until
    2026-12-07 it was expired and refunded though the SMSC had just accepted it. None otherwise."""
    change = deps.messages.transition(
        message.key,
        MessageStatus.EXPIRED,
        now=now,
        error_code=NO_DELIVERY_REPORT,
        refund=True,
        unless_settles_as=MessageStatus.DELIVERED,
    )
    if change is None:
        return None
    if not change.changed:
        found = change.message
        accepted = found.status == MessageStatus.SUBMITTED and found.settles_as == MessageStatus.DELIVERED
        return found if accepted else None
    outcome.changes.append(change)
    outcome.expired.append(change)
    logger.warning(
        "no final delivery report within the wait; message expired and refunded",
        extra={"message_id": message.message_id, "upstream": message.upstream},
    )
    return None


def _deliver_accepted(
    message: Message, *, now: datetime, deps: SettleDependencies, outcome: SettleOutcome
) -> Message | None:
    """A message whose last receipt was the SMSC's ACCEPTD (Message.settles_as) when the wait ends: delivered, as
    SMPP 3.4 reads ACCEPTED (a final state, taken on behalf of the subscriber), and charged; no refund. A conditional
    write that a final report, or an UNKNOWN (which clears the word), arriving meanwhile wins. The message as that
    write found it when it is still submitted under another word (an UNKNOWN after the check's read, which is
    eventually consistent): the caller settles it by that word; until 2026-12-07 it was left submitted and charged
    for good. None otherwise."""
    change = deps.messages.transition(
        message.key, MessageStatus.DELIVERED, now=now, if_settles_as=MessageStatus.DELIVERED
    )
    if change is None:
        return None
    if not change.changed:
        found = change.message
        reworded = found.status == MessageStatus.SUBMITTED and found.settles_as != MessageStatus.DELIVERED
        return found if reworded else None
    outcome.changes.append(change)
    logger.info(
        "no final delivery report within the wait after the SMSC accepted the message; delivered",
        extra=_ids(message),
    )
    return None


def _accepted_and_unannounced(message: Message) -> bool:
    """Delivered at the end of its wait for an ACCEPTD left last (_deliver_accepted), whose write keeps `settles_as`
    (a final report's write removes it: its change the webhook announced), and not announced since by an upstream's
    repeat of a DELIVRD that claimed it (`announced`): a delivery of the check that made it may have died before
    announcing it, so it goes out again under the same webhook id, which the client dedupes."""
    return (
        message.status == MessageStatus.DELIVERED
        and message.settles_as == MessageStatus.DELIVERED
        and message.announced != message.sequence
    )


def _ids(message: Message) -> dict[str, Any]:
    return {"message_id": message.message_id, "upstream": message.upstream}


class SettleIncomplete(RuntimeError):
    """A check that could not settle some of its messages (the store failing): `outcome` holds what it did settle,
    to be announced before the check fails and SQS brings it back for the others."""

    def __init__(self, outcome: SettleOutcome, failed: int) -> None:
        super().__init__(f"{failed} message(s) of the settle check not settled")
        self.outcome = outcome


def announced_again(outcome: SettleOutcome, deps: SettleDependencies) -> None:
    """Clears the marks of the changes in `outcome.unannounced` once they are queued again (a conditional write
    each, on the sequence announced): a check that dies before this announces them once more, and the client drops
    the repeat by its webhook id."""
    for change in outcome.unannounced:
        message = change.message
        if message.announce_pending is not None:
            deps.messages.clear_unannounced(message.key, message.announce_pending)
        logger.warning(
            "announced a delivery report whose announcement had failed",
            extra={"message_id": message.message_id, "sequence": message.sequence},
        )


def held_report_changes(outcome: SettleOutcome) -> list[StatusChange]:
    """The changes of reports held on an upstream id that the check applied (its changes other than its expiries)."""
    expired = {id(change) for change in outcome.expired}
    return [change for change in outcome.changes if id(change) not in expired]


def _reported_while_unlinked(message: Message, deps: SettleDependencies, outcome: SettleOutcome) -> bool:
    """Before a message is expired for want of a report: links the upstream's id stored on it, in case the
    dispatcher's link write failed (its reports are then held on the id) or the dispatcher died before applying
    what the link handed it (the reports stay on the link), and applies what was held. Whether that
    settled the message. One write, for the few messages no report reached (an upstream that reports by our
    reference never holds any)."""
    assert message.upstream and message.upstream_message_id
    delivery = DeliveryDependencies(
        messages=deps.messages, accounts=deps.accounts, clock=deps.clock, on_change=outcome.changes.append
    )
    before = len(outcome.changes)
    if not link_upstream_id(message, message.upstream, message.upstream_message_id, delivery):
        return False
    logger.warning(
        "applied the delivery reports held on the upstream id before expiring the message",
        extra={"message_id": message.message_id, "upstream": message.upstream},
    )
    return any(change.message.status in TERMINAL for change in outcome.changes[before:])


def _hop(wait: timedelta) -> int:
    return max(1, min(MAX_HOP_SECONDS, int(wait.total_seconds()) + 1))
