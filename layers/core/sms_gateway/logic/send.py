"""Accepting a send: price it, reserve credits, store the batch and its messages, queue or schedule it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sms_gateway import deadlines
from sms_gateway.deadlines import OutOfTime
from sms_gateway.domain.ids import MESSAGES_PER_BATCH, message_id_at, new_batch_id
from sms_gateway.domain.models import (
    Account,
    Batch,
    DispatchCommand,
    KeyClaim,
    Message,
    Recipient,
    SendCommand,
    StatusChange,
    from_iso,
    iso,
    swept_until_queued,
)
from sms_gateway.domain.msisdn import InvalidMsisdn, parse_msisdn
from sms_gateway.domain.optouts import refusal_reason
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.segments import Segmentation, segment
from sms_gateway.domain.senders import SENDER_REMOVED, holds_sender
from sms_gateway.domain.status import NOT_QUEUED, MessageStatus
from sms_gateway.domain.zones import account_zone, in_zone
from sms_gateway.errors import (
    Conflict,
    GatewayError,
    IdTaken,
    InsufficientCredits,
    InvalidRecipient,
    InvalidRequest,
    InvalidSender,
    NotDone,
    OptedOut,
    TransactionUndecided,
    Unavailable,
)
from sms_gateway.logic.batches import ONLY_QUEUED, ONLY_SCHEDULED, all_messages, move_and_refund
from sms_gateway.logic.idempotency import NEW_ID_TRIES
from sms_gateway.logic.optouts import opted_out_of
from sms_gateway.observability import logger, mask_typed_number
from sms_gateway.outcome_metrics import count_accepted, count_sends_undone, count_withdrawn
from sms_gateway.ports import AccountStore, BatchScheduler, DispatchQueue, MessageStore, OptOutStore, PriceBook

DISPATCH_CHUNK = 100
# Messages stored between two looks at the time left: four BatchWriteItem requests.
STORE_CHUNK = 100
# The clock-skew tolerance of a send_at: one at most this far ahead (a client's clock a little ahead of ours) is
# sent now; one further ahead is scheduled, even if only seconds ahead, so it never goes out before its time (seed 3:
# "delayed until send_at occurs"). EventBridge Scheduler fires to the minute, rounded up (adapters/scheduler.py): up
# to a minute or two late, never early. Until 2026-12-06 this was a minute, and a send_at 45 s ahead went out at once.
SCHEDULE_THRESHOLD = timedelta(seconds=10)
# Well inside the records' retention (180 days by default), so a batch is never expired before it is sent.
MAX_SCHEDULE_AHEAD = timedelta(days=90)
# Why a stored message is failed when its number opted out before it was released: the code a send to numbers that
# all opted out is refused with.
OPTED_OUT = OptedOut.code


@dataclass(frozen=True)
class Rejection:
    raw: str
    reason: str


class InvalidNumbers(InvalidRecipient):
    """A send refused for invalid numbers: the message names the first few (it stays readable for 1000), and
    `rejected` holds each, as typed, with its reason, for the dialects' answers to list."""

    def __init__(self, message: str, *, logged: str, rejected: Sequence[Rejection]) -> None:
        super().__init__(message, logged=logged)
        self.rejected = list(rejected)


def normalise_recipients(raw_numbers: Sequence[str], default_country: str) -> tuple[list[Recipient], list[Rejection]]:
    """Each number parsed on its own: invalid ones are reported with a reason, never dropped silently.
    A number given twice is sent once."""
    accepted: dict[str, Recipient] = {}
    rejected: list[Rejection] = []
    for raw in raw_numbers:
        try:
            parsed = parse_msisdn(str(raw), default_country)
        except InvalidMsisdn as error:
            rejected.append(Rejection(raw=str(raw), reason=error.reason))
            continue
        accepted.setdefault(
            parsed.e164,
            Recipient(msisdn=parsed.e164, telco=parsed.telco, network_id=parsed.network_id, country=parsed.country),
        )
    return list(accepted.values()), rejected


def listed(reasons: Sequence[str], shown: int = 10) -> str:
    """The first reasons, joined, and how many more there were: an error message stays readable for 1000."""
    more = f" (and {len(reasons) - shown} more)" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more


def require_valid(rejected: Sequence[Rejection]) -> None:
    """Refuses the send when a number is invalid (InvalidNumbers, which lists each): the answer quotes each as the
    client typed it, the log line only its digits, masked (a number in groups, "+234 802 000 0199 (Ada)", is still a
    whole number), and only the first few."""
    if rejected:

        def reasons(quoted: Callable[[str], str]) -> str:
            return f"invalid recipient number: {listed([f'{quoted(r.raw)}: {r.reason}' for r in rejected])}"

        raise InvalidNumbers(reasons(repr), logged=reasons(mask_typed_number), rejected=rejected)


@dataclass(frozen=True)
class SendDependencies:
    accounts: AccountStore
    messages: MessageStore
    dispatch_queue: DispatchQueue
    scheduler: BatchScheduler
    prices: PriceBook
    schedule_threshold: timedelta = SCHEDULE_THRESHOLD
    # None: nobody's opt-outs are checked (callers that predate opt-outs keep working).
    opt_outs: OptOutStore | None = None
    # Queues the client notifications of status changes the send makes after its answer was decided (the messages
    # withdrawn from a send that stands: logic.send.withdraw); None: not announced.
    announce: Callable[[Sequence[StatusChange]], None] | None = None


@dataclass(frozen=True)
class Accepted:
    batch: Batch
    messages: list[Message]
    # The credits left, when the send read them (a send that repriced another request's batch, or withdrew
    # messages); None: not read, since the write of the credits answers nothing (`balance_after`).
    balance: int | None
    # Recipients left out because they opted out of the sender: not stored, not charged.
    refused: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class Quote:
    """What a text costs before anything is stored: the dry run, and the first step of every send."""

    segmentation: Segmentation
    price_per_recipient: dict[str, int]

    @property
    def cost(self) -> int:
        return sum(self.price_per_recipient.values())


def quote(account: Account, text: str, recipients: Sequence[Recipient], route_tier: str, prices: PriceTable) -> Quote:
    segmentation = segment(text)
    if segmentation.parts > account.max_parts:
        raise InvalidRequest(
            f"the message is {segmentation.parts} parts long, over this account's limit of {account.max_parts}"
        )
    return Quote(
        segmentation=segmentation,
        price_per_recipient={
            r.msisdn: segmentation.parts * prices.per_part(route_tier, r.telco, r.country) for r in recipients
        },
    )


def require_sender(account: Account, sender: str) -> None:
    """A sender the account holds: as registered, or a number written with or without its '+' (the registry's one
    form). An ID in another case is refused: the handset would show it as written."""
    if not holds_sender(account.senders, sender):
        raise InvalidSender(f"sender {sender!r} is not registered for this account")


def refuse_opted_out(
    account: Account, sender: str, recipients: Sequence[Recipient], opt_outs: OptOutStore | None
) -> tuple[list[Recipient], list[Rejection]]:
    """The recipients that may be sent to, and a refusal (number without '+', reason) for each that opted out
    of `sender`. An account whose opt-out counter is zero costs no read at all."""
    found = opted_out_of(account, sender, [r.msisdn for r in recipients], opt_outs)
    refused = [
        Rejection(raw=r.msisdn.lstrip("+"), reason=refusal_reason(found[r.msisdn], sender))
        for r in recipients
        if r.msisdn in found
    ]
    return [r for r in recipients if r.msisdn not in found], refused


def accept_send(
    account: Account,
    command: SendCommand,
    deps: SendDependencies,
    *,
    now: datetime,
    claim: KeyClaim | None = None,
    out_of_time: OutOfTime | None = None,
) -> Accepted:
    """`out_of_time`: whether the invocation is about to run out; the send is refused (Unavailable) or undone
    before it does (store_messages).
    `claim`: the idempotency key's claim, when the request has a key; the batch gets the id it names (another batch's
    id: IdTaken, having written nothing, and run_once has the key name a new one and calls again). A resumed
    claim means an earlier request under the key died holding it: if it stored its batch, this finishes that batch
    (finish_stored_batch) instead of sending again; if not, nothing of it was stored and the send starts afresh (a
    batch under the id that does not carry the key's mark is another send's that took the id in the same millisecond:
    the write under the id is refused, IdTaken, and run_once claims the key again under a new id)."""
    if len(command.recipients) > MESSAGES_PER_BATCH:
        # The dialects refuse more in their own words first; a batch's message ids have room for no more.
        raise InvalidRequest(f"at most {MESSAGES_PER_BATCH} recipients per send, got {len(command.recipients)}")
    superseding: int | None = None
    if claim is not None and claim.resumed:
        earlier, finished = finish_standing_send(account, command, claim, deps, now=now)
        if finished is not None:
            return finished
        if earlier is not None:
            # It was undone (failed, refunded) before its request died: this is a send afresh, under a new id that
            # the undone batch links to in the same write as this one's credits, so a retry after this request dies
            # too finishes this send rather than making a third.
            superseding = earlier.reference_id
            claim = KeyClaim(reference_id=new_batch_id(), mark=claim.mark)
    require_sender(account, command.sender)
    command = command.model_copy(update={"send_at": send_time(command.send_at, account, now)})
    # Opted-out numbers go before pricing, so they are never charged; with none left, nothing happens at all.
    recipients, refused = refuse_opted_out(account, command.sender, command.recipients, deps.opt_outs)
    if not recipients:
        raise OptedOut(f"every recipient opted out, nothing was sent: {listed([r.reason for r in refused])}")
    priced = quote(account, command.text, recipients, command.route_tier, deps.prices.price_table())
    segmentation = priced.segmentation
    cost = priced.cost
    scheduled = command.send_at is not None and command.send_at - now > deps.schedule_threshold
    status = MessageStatus.SCHEDULED if scheduled else MessageStatus.QUEUED
    created_at = iso(now)
    batch = Batch(
        reference_id=claim.reference_id if claim is not None else new_batch_id(),
        account_id=account.account_id,
        sender=command.sender,
        text=command.text,
        encoding=str(segmentation.encoding),
        parts=segmentation.parts,
        recipients=len(recipients),
        cost=cost,
        status=status,
        delivery_report=command.delivery_report,
        callback_url=command.callback_url,
        session_id=command.session_id,
        ref_id=command.ref_id,
        sent_date=command.sent_date,
        route_tier=command.route_tier,
        dialect=command.dialect,
        created_at=created_at,
        send_at=iso(command.send_at) if command.send_at else None,
        key_mark=claim.mark if claim is not None else None,
    )
    messages = new_messages(batch, command, recipients, priced)
    if deadlines.ran_out(out_of_time):
        raise Unavailable("too little time was left to take this send: nothing was stored or charged; try again")
    # The batch and its credits are written together, both or neither: a retry under a key that finds the batch
    # knows they were taken, and one that does not knows they were not; a send killed after the write leaves a batch
    # that records what it took (docs/dispatch.md, "A send's credits").
    try:
        with deadlines.armed(out_of_time):
            # Inside the undo: a transaction whose answer was lost may have been applied.
            for tries_left in reversed(range(NEW_ID_TRIES)):
                try:
                    write_batch_and_reserve(batch, deps, superseding=superseding)
                    break
                except IdTaken:
                    # Refused, having written nothing. Without a key the send takes another id (this container's
                    # next block is another); a key names its id, and run_once moves the key to another first.
                    if claim is not None or not tries_left:
                        raise
                    batch = batch.model_copy(update={"reference_id": new_batch_id()})
                    messages = new_messages(batch, command, recipients, priced)
            store_messages(batch, messages, deps, out_of_time)
    except (InsufficientCredits, IdTaken, NotDone):
        # The transaction was refused, or neither applied nor refused (other writes of the account's credits kept
        # conflicting with it): it wrote nothing, and an undo would only meet the same conflicts (a 500 until
        # 2026-12-07, for a send that took nothing).
        raise
    except Exception as error:
        raise undo_unstored(batch, messages, deps, now=now) from error
    # Counted once all are stored, before the release: a request that dies in it has counted them (count_accepted).
    count_accepted(len(messages))
    try:
        with deadlines.armed(out_of_time):
            release(batch, messages, deps, in_order=account.single_sends_in_order)
    except Exception as error:
        log_undone(batch, "queued")
        with swept_if_the_undo_fails(batch, deps):
            return withdraw(Accepted(batch, messages, None, refused), deps, now=now, error=error)
    return Accepted(batch=batch, messages=messages, balance=None, refused=refused)


# Tries at finishing a send under its key, each after another writer changed its batch meanwhile (the sweeper's
# release gave back what it held for messages never stored, a cancel).
FINISH_TRIES = 3


def finish_standing_send(
    account: Account, command: SendCommand, claim: KeyClaim, deps: SendDependencies, *, now: datetime
) -> tuple[Batch | None, Accepted | None]:
    """For a resumed claim: the batch the key's send stands as, and, when it is not failed, that send finished
    (finish_stored_batch), read again and finished again when its batch changed between the read and the finish's
    writes (Conflict: the sweeper's release or a cancel gave back what it held for messages never stored). NotDone
    when DynamoDB left one of its transactions undecided: the retry goes on from what it wrote."""
    for attempt in range(FINISH_TRIES):
        earlier, stored = send_standing_under_key(deps.messages, account.account_id, claim.reference_id, claim.mark)
        if earlier is None or earlier.status == MessageStatus.FAILED:
            return earlier, None
        # A sender the operator removed meanwhile is refused as a fresh send would be, and run_once undoes the
        # stored batch (undo_standing_send: credits back, key free) rather than queue it for the dispatcher to
        # fail `sender_removed`. Both: the one asked for, and the batch's (an account-default sender is now
        # another, which the account may still hold).
        require_sender(account, command.sender)
        require_sender(account, earlier.sender)
        try:
            return earlier, finish_stored_batch(account, command, earlier, stored, deps, now=now)
        except Conflict:
            if attempt == FINISH_TRIES - 1:
                raise
            logger.info("the batch of a send being finished changed meanwhile; read again", extra={"attempt": attempt})
        except TransactionUndecided as error:
            # Not a failure that may have done the request in part: what it wrote stands, each write conditional, and
            # the retry the 503 asks for finishes the rest (until 2026-12-07 the failing and refund of a message to a
            # number that opted out meanwhile, withhold_opted_out, answered 500 and held the key for the lease).
            raise NotDone(f"finishing send {earlier.reference_id}: not finished ({error}); try again") from error
    raise AssertionError("unreachable")


def balance_after(accepted: Accepted, accounts: AccountStore) -> int | None:
    """The credits left after a send, for a dialect that answers with them: read now (one consistent read) unless
    the send read them already. None when they cannot be read: the send stands (stored, charged, queued), and
    failing its answer for a figure would have the client send it again."""
    if accepted.balance is not None:
        return accepted.balance
    return balance_if_read(accounts, accepted.batch.account_id)


def balance_if_read(accounts: AccountStore, account_id: str) -> int | None:
    """The account's credits, or None (logged) when the read fails: for an answer that carries them beside what
    happened, which stands either way."""
    try:
        return accounts.balance(account_id)
    except Exception:
        logger.exception("could not read the credits left after a send; its answer goes without them")
        return None


def send_time(requested: datetime | None, account: Account, now: datetime) -> datetime | None:
    """When a send is due: a time written without an offset (or a date alone) is the account's wall-clock time, and
    one in the past is now (also one in the year 1, past which no date arithmetic stays in range). InvalidRequest
    when it is further ahead than a schedule may be."""
    if requested is None:
        return None
    due = max(in_zone(requested, account_zone(account.timezone)), now)
    if due - now > MAX_SCHEDULE_AHEAD:
        raise InvalidRequest(f"the send time is more than {MAX_SCHEDULE_AHEAD.days} days ahead")
    return due


def send_standing_under_key(
    store: MessageStore, account_id: str, reference_id: int, mark: str | None = None
) -> tuple[Batch | None, list[Message]]:
    """The batch an idempotency key's send stands as, and the messages stored under it (none read for a failed
    one): the batch the key names or, when that one was undone and sent afresh, the last of the batches sent in its
    place (each undone one links to the next: `superseded_by`). One whose undo withdrew every message but never got
    to fail the batch is failed now: the answer its request owed was the undo's.
    `mark`: the key's (KeyClaim.mark). A batch under the id the key names that does not carry it is another send's,
    which took the id in the millisecond the key's request made it and wrote it first (two ids met): the key's send
    wrote nothing, since a keyed send writes only under its id (None, []). None: a key claimed by an earlier build."""
    batch = store.get_batch(account_id, reference_id)
    if batch is not None and mark is not None and batch.key_mark != mark:
        return None, []
    while batch is not None and batch.superseded_by is not None:
        batch = store.get_batch(account_id, batch.superseded_by)
    if batch is None or batch.status == MessageStatus.FAILED:
        return batch, []
    stored = list(all_messages(store, account_id, batch.reference_id))
    if withdrawn_whole(batch, stored):
        store.set_batch_status(account_id, batch.reference_id, MessageStatus.FAILED, only_from=ONLY_QUEUED)
        return batch.model_copy(update={"status": MessageStatus.FAILED}), []
    return batch, stored


def undo_standing_send(
    account_id: str, reference_id: int, deps: SendDependencies, *, now: datetime, mark: str | None = None
) -> Accepted | None:
    """Undoes the send an idempotency key's request left standing when it died, for a retry under the key that is
    refused (too few credits for what its messages cost now, ...): such a retry never finishes the stored batch, and
    every later one would be refused the same way while the credits stay taken. The credits of the messages never
    stored go back with the batch's `cost` (reprice_batch), then each stored message no dispatcher ever claimed is
    failed (`not_queued`) and refunded by its conditional write, then the batch is failed. None when nothing of the
    send stands now (none was stored, it was undone before, or now), so the key may go and the refusal is true: a
    send afresh under it sends nothing twice. Otherwise what stands, which the retry answers with instead of its
    refusal (a 4xx says nothing was sent): a dispatcher took a message (it goes on, charged; the rest are withdrawn,
    listed as not sent), or the batch was cancelled (the cancel gave back what it took). Each step is conditional,
    so an undo that dies part-way is finished by the next refused retry. `mark`: the key's (send_standing_under_key);
    another send's batch under the id is never undone. NotDone when DynamoDB left one of its transactions undecided
    (other writes of the account's credits kept cancelling it): the steps before it stand, and the retry finishes
    the undo."""
    try:
        return _undo_standing_send(account_id, reference_id, deps, now=now, mark=mark)
    except TransactionUndecided as error:
        # Until 2026-12-07 a 500, and the key was held for the lease's 90 s while the send stayed charged.
        raise NotDone(
            f"the send {reference_id} under this key, which this request may not finish, is not undone yet ({error}); "
            "try again"
        ) from error


def _undo_standing_send(
    account_id: str, reference_id: int, deps: SendDependencies, *, now: datetime, mark: str | None
) -> Accepted | None:
    batch, stored = send_standing_under_key(deps.messages, account_id, reference_id, mark)
    if batch is None or batch.status == MessageStatus.FAILED:
        return None
    if batch.status not in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
        return Accepted(batch=batch, messages=stored, balance=None)
    stored_cost = sum(message.price for message in stored)
    if stored_cost < batch.cost:
        # First, so that a crash after it leaves a batch whose cost is what its messages took.
        deps.messages.reprice_batch(batch, stored_cost, recipients=len(stored))
        batch = batch.model_copy(update={"cost": stored_cost, "recipients": len(stored)})
    messages, refunded = move_and_refund(
        deps.messages, stored, MessageStatus.FAILED, now=now, error_code=NOT_QUEUED, unclaimed_only=True
    )
    if not all(map(never_taken, messages)):
        logger.warning(
            "a dispatcher took part of a send whose retry was refused: the send stands",
            extra={"reference_id": batch.reference_id, "refunded_credits": refunded},
        )
        announce_withdrawn([m for m in messages if could_not_be_queued(m)], deps)
        return Accepted(batch=batch, messages=messages, balance=None)
    deps.messages.set_batch_status(
        account_id, batch.reference_id, MessageStatus.FAILED, only_from=ONLY_QUEUED | ONLY_SCHEDULED
    )
    logger.warning(
        "undid a send whose request died, since its retry was refused",
        extra={"reference_id": batch.reference_id, "undone_credits": batch.cost - stored_cost + refunded},
    )
    count_sends_undone()
    return None


def with_opted_out(
    account: Account, standing: Accepted, recipients: Sequence[Recipient], opt_outs: OptOutStore | None
) -> Accepted:
    """A send that stands under a key (undo_standing_send), with the refusals its first answer gave: each of the
    request's `recipients` that has no stored message and opted out of the send's sender (refuse_opted_out, as
    accept_send left it out, unstored and uncharged), so that it is answered as opted out, not as not sent."""
    stored = {message.msisdn for message in standing.messages}
    unstored = [recipient for recipient in recipients if recipient.msisdn not in stored]
    _, refused = refuse_opted_out(account, standing.batch.sender, unstored, opt_outs)
    return replace(standing, refused=refused)


def stored_recipients(stored: Sequence[Message]) -> list[Recipient]:
    """The recipients of a send's stored messages, each number once, in their order."""
    recipients = {m.msisdn: Recipient(msisdn=m.msisdn, telco=m.telco, network_id=m.network_id) for m in stored}
    return list(recipients.values())


def never_taken(message: Message) -> bool:
    """Failed and refunded before any upstream had it, by the send's own checks (WITHHELD_BY_THE_SEND): withdrawn
    (`not_queued`), its number opted out, or its sender removed (a dispatcher checks that before it claims)."""
    return message.status == MessageStatus.FAILED and message.error_code in WITHHELD_BY_THE_SEND


def withdrawn_whole(batch: Batch, stored: Sequence[Message]) -> bool:
    """A batch still `queued` whose messages were all withdrawn (`failed`, `not_queued`, refunded) by the undo of a
    send whose queueing failed: the undo's last write, the batch's, never happened."""
    return batch.status == MessageStatus.QUEUED and bool(stored) and all(map(could_not_be_queued, stored))


def could_not_be_queued(message: Message | None) -> bool:
    """Withdrawn (failed, refunded) because its send's queueing failed: sending to its number again is safe."""
    return message is not None and message.status == MessageStatus.FAILED and message.error_code == NOT_QUEUED


# Why a send itself leaves a stored message out: withdrawn when its queueing failed (`withdraw`), or to a number that
# opted out, or from a sender removed, since it was stored (`withhold_opted_out`; a scheduled batch's release, or a
# dispatcher before it claims the message, fail it the same way). Each is failed before any upstream had it, and
# refunded. A message failed for any other reason was offered to an upstream: the send took it, whatever came after.
WITHHELD_BY_THE_SEND = frozenset({NOT_QUEUED, OPTED_OUT, SENDER_REMOVED})


def withheld(message: Message | None) -> bool:
    """Whether a message of a send that stands is left out of it (not sent, not charged): none was stored for it (its
    batch was cancelled before a retry under its key finished it), it was cancelled with its batch, or the send's own
    checks failed it (WITHHELD_BY_THE_SEND). One a dispatcher took goes out, whatever its status now: failed,
    rejected or expired by its upstream, it is the send's to report (a delivery report), not its answer's to
    withhold, and a retry that finishes the send after it answers as the send did."""
    return message is None or message.status == MessageStatus.CANCELLED or never_taken(message)


def why_not_sent(message: Message | None) -> str | None:
    """Why a recipient of a send that stands is not sent to, in words for its answer; None when its message goes
    out (withheld). `message` None: none was stored for it. Either way it is not charged."""
    if not withheld(message):
        return None
    if could_not_be_queued(message):
        return "not sent (it could not be queued in time) and not charged: send to it again"
    status = message.status if message is not None else MessageStatus.CANCELLED
    return f"not sent ({status}) and not charged"


def going_out(accepted: Accepted) -> list[Message]:
    """The messages of an accepted send that are sent (and charged): all, unless the send stands without some."""
    return [message for message in accepted.messages if why_not_sent(message) is None]


def not_sent_to(accepted: Accepted, recipients: Sequence[Recipient]) -> list[Rejection]:
    """Each of the send's `recipients` it stands without (number without '+', why), in their order; opted-out ones
    are `accepted.refused` already."""
    by_msisdn = {message.msisdn: message for message in accepted.messages}
    opted_out = {rejection.raw for rejection in accepted.refused}
    withheld = []
    for recipient in recipients:
        digits = recipient.msisdn.lstrip("+")
        reason = None if digits in opted_out else why_not_sent(by_msisdn.get(recipient.msisdn))
        if reason is not None:
            withheld.append(Rejection(raw=digits, reason=reason))
    return withheld


def store_messages(
    batch: Batch, messages: Sequence[Message], deps: SendDependencies, out_of_time: OutOfTime | None
) -> None:
    """Writes the stored batch's messages a chunk at a time; gives up (Unavailable) between chunks, and before the
    release, once the invocation is out of time. The caller undoes what was written."""
    for start in range(0, len(messages), STORE_CHUNK):
        if deadlines.ran_out(out_of_time):
            raise Unavailable("the invocation ran out of time while storing the send")
        deps.messages.add_messages(batch, messages[start : start + STORE_CHUNK])
    if deadlines.ran_out(out_of_time):
        raise Unavailable("the invocation ran out of time before queueing the send")


def write_batch_and_reserve(batch: Batch, deps: SendDependencies, *, superseding: int | None) -> None:
    """The send's batch written with its credits taken (create_batch_and_reserve); IdTaken when that was refused
    for the id."""
    try:
        deps.messages.create_batch_and_reserve(batch, superseding=superseding)
    except Conflict as error:
        raise IdTaken(
            f"the send could not be stored ({error.message}): nothing was sent or charged; try again"
        ) from error


def give_back(batch: Batch, messages: Sequence[Message], deps: SendDependencies, *, now: datetime) -> None:
    """Undoes the reservation of a send that could not be stored, whatever failed after its batch and credits
    transaction was sent (a refused one, IdTaken or InsufficientCredits, never gets here: it wrote nothing). Nothing
    is queued yet, so nothing half-done stays charged: the batch is failed and its cost given back in one write (a
    crash cannot leave it failed but kept, and a retry under the key then finds it failed and sends afresh), then
    the messages it stored are failed too. A batch that was never written took nothing (it was written with its
    credits), and is left as it is. It tells the two apart by the step that failed, not by the error: any failure
    after the transaction leaves a batch charged, whatever it raised."""
    undone_now = deps.messages.fail_batch_and_refund(batch)
    if undone_now:
        fail_unsent_messages(batch, messages, deps, now=now)


def fail_unsent_messages(batch: Batch, messages: Sequence[Message], deps: SendDependencies, *, now: datetime) -> None:
    """The messages of a batch failed and refunded whole (fail_batch_and_refund), failed too (`not_queued`), so
    that none reads as waiting to be sent: each by its conditional write, which finds nothing to move for one that
    was never stored. Their credits went back with the batch, so these moves give nothing back. Best effort: a
    crash or an error here leaves them as they were under the failed batch, which nothing releases, and the
    caller's answer (the send undone) stands."""
    try:
        deps.messages.move_messages(messages, MessageStatus.FAILED, now=now, error_code=NOT_QUEUED)
    except Exception:
        logger.exception("could not fail the messages of an undone send", extra={"reference_id": batch.reference_id})


def undo_unstored(batch: Batch, messages: Sequence[Message], deps: SendDependencies, *, now: datetime) -> Unavailable:
    """Undoes a send that could not be stored (give_back), left to the sweeper if the undo fails: what the caller is
    told once it is undone."""
    log_undone(batch, "stored")
    with swept_if_the_undo_fails(batch, deps):
        give_back(batch, messages, deps, now=now)
    return undone("could not be stored")


@contextmanager
def swept_if_the_undo_fails(batch: Batch, deps: SendDependencies) -> Iterator[None]:
    """Around a send's undo: one that fails (DynamoDB cancelling its transactions for conflicts with other writes of
    the account's credits past their tries, or throttling them) leaves the batch charged, and a batch to go out at
    once under 100 recipients is in no sweep index (docs/decisions.md, A100): nothing would ever send or refund it.
    It is put there (leave_to_release_sweep; a scheduled one, or one of 100 or more, is there already), so the
    sweeper's release sends what stands of it once and gives back what it took for messages never stored; the
    client is answered 500, "may have been done in part". A request more only when the undo failed. The undo's own
    answer (a GatewayError: the send undone) goes up as it is."""
    try:
        yield
    except GatewayError:
        raise
    except Exception:
        if batch.status == MessageStatus.QUEUED and not swept_until_queued(batch):
            try:
                deps.messages.leave_to_release_sweep(batch)
            except Exception:
                logger.exception(
                    "could not leave a send whose undo failed to the sweeper: it stays charged until released by hand",
                    extra={"reference_id": batch.reference_id},
                )
            else:
                logger.warning(
                    "a send whose undo failed is left to the sweeper's release",
                    extra={"reference_id": batch.reference_id},
                )
        raise


def log_undone(batch: Batch, step: str) -> None:
    logger.exception(f"send could not be {step}; undoing it", extra={"reference_id": batch.reference_id})
    count_sends_undone()


def undone(step: str) -> Unavailable:
    """What the caller is told of a send undone, whatever failed: nothing of it stands, so it may send again. (A
    refusal of the request comes before its batch is written, and one of the write itself wrote nothing: neither
    is undone.)"""
    return Unavailable(f"the send {step} in time and was undone: nothing was sent or charged; try again")


def withdraw(accepted: Accepted, deps: SendDependencies, *, now: datetime, error: Exception) -> Accepted:
    """Undoes a send whose release failed with its outcome unknown (SQS may have taken some of the records, the
    scheduler the schedule). A batch still scheduled is failed and refunded whole, with its messages after (no
    schedule has released any of it). Otherwise each message no dispatcher has claimed is failed (`not_queued`) by
    a conditional write and refunded; a message a dispatcher claimed meanwhile goes on, charged (or failed by its
    upstream, refunded, and reported by that dispatcher), and then the send stands (returned, its messages as they
    are now). Otherwise the batch is failed and the caller told (Unavailable): nothing of the send was reported to
    the client, which never learns its message ids."""
    batch = accepted.batch
    if batch.status == MessageStatus.SCHEDULED and deps.messages.fail_batch_and_refund(batch):
        # Nothing of a batch still scheduled was released (a release moves the batch first), so the batch fails and
        # its whole cost goes back in one write; a schedule created after all then finds it failed and releases
        # nothing. Failing it first and refunding its messages after would leave them charged after a crash between.
        fail_unsent_messages(batch, accepted.messages, deps, now=now)
        count_withdrawn(len(accepted.messages))  # all of them: the client is told none was sent (503)
        raise undone("could not be queued") from error
    messages, refund = move_and_refund(
        deps.messages, accepted.messages, MessageStatus.FAILED, now=now, error_code=NOT_QUEUED, unclaimed_only=True
    )
    # Taken back out of MessagesAccepted: the client is told they were not sent, and sends them again.
    count_withdrawn(sum(map(could_not_be_queued, messages)))
    # Read consistently: right after the refund, an eventually consistent read may not show it yet.
    balance = balance_if_read(deps.accounts, batch.account_id) if refund else accepted.balance
    # Any message this undo did not withdraw was dispatched: the client may hear of it, so it must have its id.
    if not all(map(could_not_be_queued, messages)):
        withdrawn = [m for m in messages if could_not_be_queued(m)]
        logger.warning(
            "a dispatcher took part of a send whose queueing failed: the send stands",
            extra={"reference_id": batch.reference_id, "withdrawn": len(withdrawn)},
        )
        announce_withdrawn(withdrawn, deps)
        return replace(accepted, messages=messages, balance=balance)
    deps.messages.set_batch_status(batch.account_id, batch.reference_id, MessageStatus.FAILED)
    raise undone("could not be queued") from error


def announce_withdrawn(withdrawn: Sequence[Message], deps: SendDependencies) -> None:
    """A send that stands answers with its withdrawn messages `failed` (`not_queued`), and a client that asked for
    delivery reports gets that change as a report too, like any other failure. Best effort: the send's answer says
    it already, and failing the request now would make the client send again what a dispatcher is sending."""
    if deps.announce is None or not withdrawn:
        return
    try:
        deps.announce([StatusChange(message=message, changed=True) for message in withdrawn])
    except Exception:
        logger.exception("could not queue the reports of a standing send's withdrawn messages")


def new_messages(
    batch: Batch,
    command: SendCommand,
    recipients: Sequence[Recipient],
    priced: Quote,
    position: Mapping[str, int] | None = None,
) -> list[Message]:
    """The batch's messages to `recipients` (some or all of the command's), in the batch's status since it was
    created. Each message's id follows from the batch's and the recipient's place in the request (message_id_at),
    so the id names the batch (found without an index) and a send finished by a retry gives the same ids;
    `position` overrides that place (finish_stored_batch: where the request's place is another message's)."""
    status_at = {str(MessageStatus.ACCEPTED): batch.created_at, str(batch.status): batch.created_at}
    if position is None:
        position = {recipient.msisdn: index for index, recipient in enumerate(command.recipients)}
    return [
        Message(
            message_id=message_id_at(batch.reference_id, position[recipient.msisdn]),
            reference_id=batch.reference_id,
            account_id=batch.account_id,
            msisdn=recipient.msisdn,
            telco=recipient.telco,
            network_id=recipient.network_id,
            sender=batch.sender,
            text=batch.text,
            encoding=batch.encoding,
            parts=batch.parts,
            price=priced.price_per_recipient[recipient.msisdn],
            status=batch.status,
            status_at=status_at,
            sequence=1,
            session_id=batch.session_id,
            ref_id=batch.ref_id,
            sent_date=command.sent_date,
            delivery_report=batch.delivery_report,
            callback_url=batch.callback_url,
            created_at=batch.created_at,
            send_at=batch.send_at,
        )
        for recipient in recipients
    ]


def release(batch: Batch, messages: Sequence[Message], deps: SendDependencies, *, in_order: bool = True) -> None:
    """Schedules the batch, or queues those of `messages` still queued (both idempotent: a schedule is named by
    the batch, a dispatch record deduplicated by its messages, and the dispatcher claims each message), and then
    takes a send of 100 recipients or more out of the sweep index (clear_release_sweep).
    `in_order`: the account's `single_sends_in_order`."""
    if batch.status == MessageStatus.SCHEDULED:
        assert batch.send_at is not None
        deps.scheduler.schedule(batch.account_id, batch.reference_id, from_iso(batch.send_at))
        return
    queued = [m.message_id for m in messages if m.status == MessageStatus.QUEUED]
    if queued:
        deps.dispatch_queue.enqueue(dispatch_commands(batch, queued, in_order=in_order))
    if swept_until_queued(batch):
        clear_release_sweep(batch, deps.messages)


def clear_release_sweep(batch: Batch, store: MessageStore) -> None:
    """Takes a send of 100 recipients or more to go out at once, its records queued, out of the sweeper's reach
    (domain.models.swept_until_queued): one write. Best effort: the send stands either way, and the sweeper's release
    of a batch left in the index (UNQUEUED_RELEASE_SWEEP_MARGIN on) queues only its messages still `queued`, under
    the deduplication ids the send used, which the dispatcher's claim submits once: nothing goes out twice."""
    try:
        store.clear_release_sweep(batch.account_id, batch.reference_id)
    except Exception:
        logger.exception(
            "could not take a queued send out of the sweep index; the sweeper's release of it will send nothing twice",
            extra={"reference_id": batch.reference_id},
        )


def finish_stored_batch(
    account: Account,
    command: SendCommand,
    batch: Batch,
    stored: Sequence[Message],
    deps: SendDependencies,
    *,
    now: datetime,
) -> Accepted:
    """Finishes a send whose request died after storing its batch (with its credits' reservation; `stored`: the
    messages it got to, as read): writes the ones it did not, from the same request, and queues or schedules the
    batch again. The answer is the one the send would have given. A stored message to a number that opted out
    meanwhile is failed (`opted_out`) and refunded first, as a scheduled one is at its release, so it is neither
    sent nor charged, as the answer says. Credits move only by the difference between what the first request
    reserved and what the messages cost (nothing, unless the price table changed meanwhile or a group read again
    gained or lost members, or a release gave back what the batch held for the messages never stored), with the
    batch's cost and the messages added (store_and_charge), so a finisher that dies part-way leaves nothing owed to
    the next one. Conflict when the batch changed since it was read (finish_standing_send reads it again).
    MessagesAccepted: the request that stored the batch counted its messages once it had stored all of them
    (accept_send), as does a finisher; one that died before then counted none (its batch has fewer messages than
    recipients: store_and_charge counts them all with every part), and its messages are counted now with those
    added, unless a release gave back what the batch held for the rest, counting them (logic.scheduled)."""
    counted = len(stored) >= batch.recipients
    recipients, refused = refuse_opted_out(account, command.sender, command.recipients, deps.opt_outs)
    stored, refused = withhold_opted_out(batch, stored, refused, deps, now=now)
    have = Counter(m.msisdn for m in stored)
    missing: list[Recipient] = []
    for recipient in recipients:
        if have[recipient.msisdn] > 0:
            have[recipient.msisdn] -= 1
        else:
            missing.append(recipient)
    still_sending = batch.status in (MessageStatus.QUEUED, MessageStatus.SCHEDULED)
    if not still_sending:
        missing = []  # cancelled meanwhile: nothing more is sent or charged (the cancel settled its cost)
    priced = quote(account, command.text, missing, command.route_tier, deps.prices.price_table())
    added = new_messages(batch, command, missing, priced, free_positions(batch, command, missing, stored))
    messages = [*stored, *added]
    stored_cost = sum(m.price for m in stored)
    owed = stored_cost + priced.cost - batch.cost
    if still_sending and (added or owed or len(messages) != batch.recipients):
        # The messages it adds are stored with their cost, and the batch's cost and count made its messages', in
        # writes conditional on the batch as read: a finisher that dies part-way leaves nothing owed, and a release
        # that gives back what the batch held for messages never stored (the sweeper's: the send's api Lambda died)
        # either comes first, and the finish reads the batch again (Conflict), or finds them stored and paid for.
        # With none to add (the recipients it had not reached left its group, or opted out) the write still makes
        # the cost and count its stored messages', giving back what the batch held for the rest.
        batch = deps.messages.store_and_charge(batch, added, stored_cost=stored_cost, stored=len(stored))
    count_accepted(len(added) if counted else len(messages))
    release(batch, messages, deps, in_order=account.single_sends_in_order)
    logger.warning(
        "finished a send whose request died part-way",
        extra={"reference_id": batch.reference_id, "stored": len(stored), "added": len(added), "owed": owed},
    )
    # None: a dialect that answers the balance reads it (balance_after), after any refund of a number that opted out
    # meanwhile (withhold_opted_out). The batch and messages as this call wrote them, not read again: a cancel that
    # lands after its writes (the portal's) comes after the send it answers, and its refund answers every credit
    # back, so the two answers add up; a read again would cost a request and still leave the same window after it.
    return Accepted(batch=batch, messages=messages, balance=None, refused=refused)


def withhold_opted_out(
    batch: Batch, stored: Sequence[Message], refused: Sequence[Rejection], deps: SendDependencies, *, now: datetime
) -> tuple[list[Message], list[Rejection]]:
    """The stored messages of a send being finished, once those still waiting (queued or scheduled, never claimed by
    a dispatcher) to the `refused` numbers (opted out since they were stored) are failed and refunded; and the
    refusals of the numbers none of whose messages goes out after all (one a dispatcher took before the first request
    died is sent, and charged: its number is not answered as refused)."""
    numbers = {f"+{rejection.raw}" for rejection in refused}
    stopped = [m for m in stored if m.msisdn in numbers and m.status in (MessageStatus.QUEUED, MessageStatus.SCHEDULED)]
    current = list(stored)
    if stopped:
        current, refunded = fail_opted_out(deps.messages, current, stopped, now=now, unclaimed_only=True)
        logger.info(
            "stored messages to numbers that opted out since were failed before the send was finished",
            extra={"reference_id": batch.reference_id, "failed": len(stopped), "refunded_credits": refunded},
        )
    going = {m.msisdn for m in current if why_not_sent(m) is None}
    return current, [rejection for rejection in refused if f"+{rejection.raw}" not in going]


def fail_opted_out(
    store: MessageStore,
    batch_messages: Sequence[Message],
    stopped: Sequence[Message],
    *,
    now: datetime,
    error_code: str = OPTED_OUT,
    **options: Any,
) -> tuple[list[Message], int]:
    """`batch_messages` as they are once `stopped` (those of them to numbers that opted out of the sender since they
    were stored, or all of them when the sender was removed: `error_code`) are failed and refunded, each by its
    conditional write with its refund (`options`: transition's); and the credits given back."""
    moved, refunded = move_and_refund(store, stopped, MessageStatus.FAILED, now=now, error_code=error_code, **options)
    now_as = {m.message_id: m for m in moved}
    return [now_as.get(m.message_id, m) for m in batch_messages], refunded


def free_positions(
    batch: Batch, command: SendCommand, missing: Sequence[Recipient], stored: Sequence[Message]
) -> dict[str, int]:
    """Places for the recipients a finished send adds, none of them a stored message's: each its place in this
    request where that is free, else the lowest free one. A retry reads its groups again, and a member added or
    removed meanwhile shifts every place after it: the place of a recipient not stored yet can be a stored
    message's, which writing there would replace (a message charged, and never sent)."""
    taken = {message.message_id - batch.reference_id - 1 for message in stored}
    natural = {recipient.msisdn: index for index, recipient in enumerate(command.recipients)}
    places: dict[str, int] = {}
    for recipient in missing:
        if natural[recipient.msisdn] not in taken:
            places[recipient.msisdn] = natural[recipient.msisdn]
            taken.add(natural[recipient.msisdn])
    free = (place for place in range(MESSAGES_PER_BATCH) if place not in taken)
    for recipient in missing:
        if recipient.msisdn not in places:
            place = next(free, None)
            if place is None:
                raise InvalidRequest(f"this send would have more than {MESSAGES_PER_BATCH} messages")
            places[recipient.msisdn] = place
    return places


def dispatch_commands(batch: Batch, message_ids: Sequence[int], *, in_order: bool = True) -> list[DispatchCommand]:
    """The batch's dispatch records. `in_order=False` (the account's `single_sends_in_order`): a single send gets a
    lane of its own instead of the account's priority lane; a bulk batch keeps the account's lane either way."""
    single = batch.recipients == 1
    return [
        DispatchCommand(
            account_id=batch.account_id,
            reference_id=batch.reference_id,
            message_ids=tuple(message_ids[start : start + DISPATCH_CHUNK]),
            # One recipient is an OTP or a notification: it goes in the priority lane, ahead of bulk batches.
            priority=single,
            in_order=in_order or not single,
        )
        for start in range(0, len(message_ids), DISPATCH_CHUNK)
    ]
