"""Reading batches and their delivery reports, scoped to the caller's account."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import Batch, Message
from sms_gateway.domain.status import TERMINAL, MessageStatus
from sms_gateway.errors import Conflict, NotDone, NotFound, TransactionUndecided, Unavailable
from sms_gateway.observability import logger
from sms_gateway.ports import BatchScheduler, MessageStore


@dataclass(frozen=True)
class BatchView:
    batch: Batch
    counts: dict[str, int]
    # The numbers its messages go to (one message per distinct number, groups expanded), in message order, without
    # their `+`; left empty by readers that count a batch's messages without listing them (logic.history).
    numbers: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """Stored states (scheduled, cancelled, failed) as they are; a released batch reads `queued` until a
        message moves, `processing` while any message is on its way, `completed` when every one is final. A message
        still `scheduled` under a released batch has not moved either: the release moves the batch first, then its
        messages one write at a time, so for a moment they read scheduled (and, after a release that died part-way,
        until its retry), and the batch reads `queued` as it will once they are queued, not `processing` and then
        back."""
        if self.batch.status != MessageStatus.QUEUED or not self.counts:
            return str(self.batch.status)
        if set(self.counts) <= {str(s) for s in TERMINAL}:
            return "completed"
        if set(self.counts) <= NOT_MOVED_YET:
            return str(MessageStatus.QUEUED)
        return "processing"


# The messages of a released (`queued`) batch that no dispatcher has taken and nothing has ended (BatchView.status).
NOT_MOVED_YET = frozenset({str(MessageStatus.SCHEDULED), str(MessageStatus.QUEUED)})


def parse_reference_id(raw: str) -> int:
    if not ascii_digits(raw) or len(raw) > 19:
        raise NotFound(f"no batch with reference_id {raw!r}")
    return int(raw)


def get_batch(store: MessageStore, account_id: str, reference_id: int) -> Batch:
    # The account is part of the key: another account's reference_id is simply not found.
    batch = store.get_batch(account_id, reference_id)
    if batch is None:
        raise NotFound(f"no batch with reference_id {reference_id}")
    return batch


def batch_view(store: MessageStore, account_id: str, reference_id: int) -> BatchView:
    """The batch, its messages counted by status and the numbers they go to, from one read of its messages (at most
    1000, the recipients a send takes)."""
    batch = get_batch(store, account_id, reference_id)
    messages = list(all_messages(store, account_id, reference_id))
    counts = Counter(str(message.status) for message in messages)
    numbers = tuple(message.msisdn.lstrip("+") for message in messages)
    return BatchView(batch=batch, counts=dict(counts), numbers=numbers)


def all_messages(store: MessageStore, account_id: str, reference_id: int) -> Iterator[Message]:
    """Every message of a batch, read a thousand at a time."""
    cursor: str | None = None
    while True:
        page, cursor = store.list_messages(account_id, reference_id, limit=1000, cursor=cursor)
        yield from page
        if cursor is None:
            return


def delivery_reports(
    store: MessageStore,
    account_id: str,
    reference_id: int,
    *,
    status: MessageStatus | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Message], str | None]:
    get_batch(store, account_id, reference_id)
    return store.list_messages(account_id, reference_id, limit=limit, cursor=cursor, status=status)


def move_and_refund(
    store: MessageStore, messages: Iterable[Message], target: MessageStatus, *, now: datetime, **options: Any
) -> tuple[list[Message], int]:
    """Moves each of one account's messages to `target` by its conditional write (`options`: transition's) and
    gives back what each one moved had cost, in the same transactions (MessageStore.move_and_refund). The messages
    as they are now, and the credits given back."""
    given = list(messages)
    current: list[Message] = []
    refunded = 0
    for message, change in zip(given, store.move_and_refund(given, target, now=now, **options), strict=True):
        if change is not None and change.changed:
            refunded += change.message.price
        current.append(change.message if change is not None else message)
    return current, refunded


class AlreadyCancelled(Conflict):
    """A cancel of a batch whose cancel was already done (all its messages cancelled and refunded)."""

    def __init__(self, batch: Batch) -> None:
        super().__init__("only a scheduled batch can be cancelled; this one is cancelled")
        self.batch = batch


# A scheduled batch is released or cancelled by moving it from here first (logic.scheduled, cancel_batch).
ONLY_SCHEDULED = frozenset({MessageStatus.SCHEDULED})
# A send's batch that its undo withdrew whole is failed from here (logic.send.send_standing_under_key).
ONLY_QUEUED = frozenset({MessageStatus.QUEUED})


def cancel_batch(
    *,
    messages: MessageStore,
    scheduler: BatchScheduler,
    account_id: str,
    reference_id: int,
    now: datetime,
    key_mark: str | None = None,
) -> tuple[Batch, int]:
    """Cancels a scheduled batch: deletes its schedule, cancels its messages, refunds them.
    Returns the batch and the credits refunded. The batch's own conditional write decides a race with
    the schedule firing: whichever moves the batch first wins, and the other releases nothing.

    One cancel answers the refund, with all the cancel gave back (cancel_refund), whichever call of it moved the
    credits: the one that marks the batch's cancel answered first (claim_cancel_answer), once the cancel is finished.
    What another writer gave back (the undo of a refused retry under the send's key, racing the cancel) is not
    answered: that writer's answer says so (its messages not sent, not charged). That is
    the cancel that moved the batch, unless another cancel, come in meanwhile, finished first (it gave back the
    messages the first had not reached yet): then that one answers the refund, and the first answers 0. Two cancels
    of one batch never answer more than came back between them. The schedule, firing just after the batch's write,
    finishes the cancel itself (logic.scheduled) and can refund the messages before this call gets to them; it
    answers no one, and the cancel still answers what it gave back.
    A cancel that died after the batch's write (messages still scheduled, and charged) is finished by the next one,
    which answers with all the cancel gave back; so is one killed once it was done, before it claimed its answer (the
    client never got one): its retry answers what it did. A cancel of a batch whose cancel was answered already
    raises AlreadyCancelled (a Conflict): each dialect says what a repeated cancel answers.
    `key_mark`: the mark of the idempotency key the cancel holds (KeyClaim.mark), None without one. A cancel under a
    key answers the refund again when the key's request that claimed it died before its answer was kept under the
    key (claim_cancel_answer): a retry once the key's lease ran out is answered as that request would have been."""
    batch = get_batch(messages, account_id, reference_id)
    if batch.status in ONLY_SCHEDULED:
        if messages.set_batch_status(account_id, reference_id, MessageStatus.CANCELLED, only_from=ONLY_SCHEDULED):
            batch_messages = _finish_cancel_or_retry(messages, scheduler, account_id, reference_id, now=now)
            answered = messages.claim_cancel_answer(account_id, reference_id, mark=key_mark)
            if answered is None:
                return get_batch(messages, account_id, reference_id), 0
            return answered, cancel_refund(answered, batch_messages)
        # Moved since it was read: released, or cancelled by another request (then this one is a repeat of it).
        batch = get_batch(messages, account_id, reference_id)
    if batch.status != MessageStatus.CANCELLED:
        # Named as the client reads it (a released batch is stored queued for good, but reads completed once sent).
        status = batch_view(messages, account_id, reference_id).status
        raise Conflict(f"only a scheduled batch can be cancelled; this one is {status}")
    batch_messages = _finish_cancel_or_retry(messages, scheduler, account_id, reference_id, now=now)
    # It finished a cancel that died or is still under way, or one that was done: it answers the refund unless another
    # cancel did, whether or not it gave any of it back itself. The one that did it all may have been killed after its
    # last write, before it claimed the answer: no cancel answered then, and the client's retry is this one.
    answered = messages.claim_cancel_answer(account_id, reference_id, mark=key_mark)
    if answered is None:
        raise AlreadyCancelled(batch)
    return answered, cancel_refund(answered, batch_messages)


def finish_cancel(
    messages: MessageStore,
    scheduler: BatchScheduler | None,
    account_id: str,
    reference_id: int,
    *,
    now: datetime,
) -> int:
    """For a batch already moved to cancelled: gives back what it took for messages never stored (cost_to_stored),
    cancels its messages still scheduled (each by a conditional write), refunds those this call moved in the same
    transactions, then deletes its schedule (None: the schedule is the caller, firing, and deletes itself). Safe to
    run again, or alongside another, or after a crash part-way: the batch's cost moves once, and a message is moved,
    and refunded, once. The schedule goes last: a cancel that fails part-way leaves it, and its firing finishes the
    cancel (logic.scheduled) even if the client never cancels again. The credits refunded.
    A schedule the scheduler refuses to delete once all that is done (throttled past the client's retries) is
    logged and left, and the cancel stands: the batch is cancelled and refunded, and the schedule's firing finds it
    so and releases nothing (then Scheduler deletes it, ActionAfterCompletion). Raising would answer the client that
    the cancel failed, and the session-key family's retry 404 ("order cannot be removed")."""
    refund, _ = _finish_cancel(messages, scheduler, account_id, reference_id, now=now)
    return refund


def _finish_cancel_or_retry(
    messages: MessageStore,
    scheduler: BatchScheduler | None,
    account_id: str,
    reference_id: int,
    *,
    now: datetime,
) -> list[Message]:
    """_finish_cancel for a client's cancel, the batch moved to cancelled already: its messages as they are now. A
    refund or give-back DynamoDB left undecided (other writes of the account's credits cancelled its transaction on
    every try) wrote nothing of itself, and the cancel sent again goes on from there and answers all the cancel gave
    back (cancel_refund): NotDone, a 503 to retry (under an idempotency key that resumed a died request, run_once
    keeps the key, lease ended, with the mark that request's claim of the answer carries; until 2026-12-07 it let
    the key go, and the next retry was answered 0 refunded), as when other writers kept moving the cost
    (cost_to_stored); until 2026-12-07 a 500, "may be done in part, look before trying again". The schedule is
    left, and its firing finishes the cancel too if the client never sends it again."""
    try:
        return _finish_cancel(messages, scheduler, account_id, reference_id, now=now)[1]
    except TransactionUndecided as error:
        raise NotDone(
            f"batch {reference_id} is cancelled, but other writes of the account's credits kept refusing its refunds "
            f"({error}); send the cancel again to finish it: try again"
        ) from error


def _finish_cancel(
    messages: MessageStore,
    scheduler: BatchScheduler | None,
    account_id: str,
    reference_id: int,
    *,
    now: datetime,
) -> tuple[int, list[Message]]:
    """finish_cancel's work: the credits this call gave back, and the batch's messages as they are now."""
    given_back, batch_messages = cost_to_stored(messages, account_id, reference_id, by_cancel=True)
    current, refund = move_and_refund(messages, batch_messages, MessageStatus.CANCELLED, now=now)
    if scheduler is not None:
        try:
            scheduler.cancel(account_id, reference_id)
        except Exception:
            logger.warning(
                "cancelled batch's schedule could not be deleted; its firing will release nothing",
                exc_info=True,
                extra={
                    "reference_id": reference_id,
                    "account_id": account_id,
                    "schedule": scheduler.schedule_name(account_id, reference_id),
                },
            )
    return given_back + refund, current


def cancel_refund(cancelled: Batch, batch_messages: Iterable[Message]) -> int:
    """All a batch's cancel gave back, by whichever calls of it moved it (finish_cancel, a cancel killed part-way
    too): what the batch took for messages never stored, as its cancel's give-backs counted it in the same writes
    (`cancelled.cancel_unstored_refund`, read once the cancel is finished; a give-back by another writer, read by a
    cancel as a lower cost, is not the cancel's), and what each cancelled message cost (a message is cancelled only
    with its refund). `batch_messages`: all of them, as they are once the cancel is finished. A message that is not
    cancelled was not refunded by the cancel: failed before it (refunded then) or taken by a dispatcher, it is not
    counted."""
    cancelled_messages = (message for message in batch_messages if message.status == MessageStatus.CANCELLED)
    return cancelled.cancel_unstored_refund + sum(message.price for message in cancelled_messages)


# Tries at making a batch's cost what its stored messages cost, each after another writer changed it meanwhile.
COST_WRITE_TRIES = 3


def cost_to_stored(
    store: MessageStore, account_id: str, reference_id: int, *, by_cancel: bool = False
) -> tuple[int, list[Message]]:
    """Makes a batch's cost what its stored messages cost, moving the difference between the account's credits and
    the batch in the same transaction (reprice_batch: only while the cost is still the one read, so a repeated or
    raced call moves it once): a send killed while storing wrote its batch with the whole cost (docs/dispatch.md,
    "A send's credits"), and refunding its messages one by one gives back only what the stored ones cost. Also
    the other way, for messages a send finished by a retry stored after a cancel gave their credits back, so their
    refunds do not give them back twice. `by_cancel`: the batch's cancel, whose answer counts what it moves here
    (reprice_batch, cancel_refund). The credits given back (negative: taken), and the batch's messages. Unavailable
    when other writers moved the cost on every try (COST_WRITE_TRIES): nothing changed here, and a call again goes
    on."""
    for _ in range(COST_WRITE_TRIES):
        batch = get_batch(store, account_id, reference_id)
        stored = list(all_messages(store, account_id, reference_id))
        stored_cost = sum(message.price for message in stored)
        if stored_cost == batch.cost:
            return 0, stored
        try:
            # InsufficientCredits (the other way, the credits spent meanwhile; never for a cancel, which refunds the
            # messages it takes back for right after) changes nothing and goes up.
            store.reprice_batch(batch, stored_cost, recipients=len(stored), by_cancel=by_cancel)
        except Conflict:
            continue  # another cancel (or a send's finisher) moved it meanwhile: read it again
        return batch.cost - stored_cost, stored
    # Unavailable, not Conflict: a cancel that gets here moved the batch to cancelled already, and a 409 reads as not
    # cancelled (until 2026-12-07: "only a scheduled batch can be cancelled" in the session-key family, a 404); its
    # retry finishes the give-back and answers it.
    raise Unavailable(f"the cost of batch {reference_id} kept changing while it was given back; try again")
