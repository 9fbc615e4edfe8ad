"""Ports: the small interfaces logic depends on. Adapters implement them; tests give in-memory fakes."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from sms_gateway.domain.groups import Group, GroupMove, GroupSummary, StoredGroup
from sms_gateway.domain.models import (
    Account,
    Batch,
    CallbackRequest,
    Claim,
    Credentials,
    DeliveryReport,
    DispatchCommand,
    FoundInbound,
    InboundSms,
    KeyClaim,
    Message,
    MessageKey,
    SealedSecret,
    SenderRegistration,
    SenderRequest,
    SenderRequestStatus,
    SentMessage,
    StatusChange,
    StoredAnswer,
    StoredInbound,
    SubmitRequest,
    SubmitResult,
    UnreleasedBatch,
)
from sms_gateway.domain.optouts import OptOut
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.routing import Route, RouteTable
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import Conflict

# The longest a handler may hide a queue record it received (a retry's delay, a settle check's wait): SQS refuses a
# visibility timeout that would keep the record hidden past 12 hours from its receipt, and a handler asks within its
# Timeout (at most 120 s in template.yaml) of the receipt, so 12 hours less 5 minutes is always taken.
MAX_QUEUE_DELAY_SECONDS = 42_900


class SecretBox(Protocol):
    """Seals the secrets we must present rather than check (webhook tokens and signing secrets), so no stored item
    holds them in plain text, and opens them where they are used. A secret is sealed for one account and one
    purpose: opened for another, it fails."""

    def seal(self, account_id: str, purpose: str, secret: str) -> SealedSecret: ...

    def open(self, account_id: str, purpose: str, sealed: SealedSecret) -> str: ...


class AccountLookup(Protocol):
    def get_account(self, account_id: str) -> Account | None: ...


class ConsistentAccountLookup(Protocol):
    def get_account(self, account_id: str, *, consistent: bool = False) -> Account | None:
        """`consistent`: a strongly consistent read (twice an eventually consistent one's cost), which sees every
        write made before it; else one a replica that lags may answer with the account as it was."""
        ...


class AccountStore(Protocol):
    def get_account(self, account_id: str) -> Account | None: ...

    def account_id_for_credential(self, kind: str, secret: str) -> str | None:
        """The account a credential (a bearer token, an API key, ...) belongs to, or None."""
        ...

    def create_account(self, account: Account, credentials: Credentials) -> None:
        """Stores the account and its credentials, with its senders (at most MOST_SENDERS_AT_CREATION), in one write;
        secrets are stored only as hashes."""
        ...

    def balance(self, account_id: str) -> int:
        """The account's credits now, read consistently (with every write made before it); 0 for no account."""
        ...

    def account_id_for_sender(self, sender: str) -> str | None:
        """The account that registered a sender ID, shortcode or long number (each belongs to one account)."""
        ...

    def sender_registration(self, sender: str) -> SenderRegistration | None:
        """A sender's account and the upstreams that may deliver its inbound SMS, or None when no account has it."""
        ...


class ConsistentAccountStore(AccountStore, Protocol):
    def get_account(self, account_id: str, *, consistent: bool = False) -> Account | None:
        """`consistent`: as ConsistentAccountLookup's."""
        ...


Listed = TypeVar("Listed")


@dataclass(frozen=True)
class PageBudget(Generic[Listed]):
    """How much of an answer a listing's page may fill: each entry takes `size_of` it (as the answer writes it), and a
    page ends before the entry that would take it over `max_bytes`, with a cursor to that entry, however few it then
    holds (never none: its first entry is always in it). A page of big entries (long SMS texts) is cut so, within
    what Lambda returns (dialects.common.LISTED_BUDGET)."""

    size_of: Callable[[Listed], int]
    max_bytes: int


class InboxStore(Protocol):
    def save_inbound(self, inbound: StoredInbound, *, notify_due: datetime | None = None) -> bool:
        """Stores an inbound SMS once: False when the same upstream message was stored already. `notify_due`: the
        SMS is stored marked as not yet queued for the client, in the same write, and from that moment on a sweep
        (`claim_inbound_notifications`) finds it until `inbound_notified` clears the mark."""
        ...

    def inbound_notified(self, inbound: StoredInbound) -> None:
        """Clears the SMS's not-yet-queued mark (a conditional write: an SMS without it, or gone, is left alone)."""
        ...

    def claim_inbound_notifications(self, *, now: datetime, until: datetime, limit: int) -> list[StoredInbound]:
        """Up to `limit` inbound SMS whose mark fell due by `now`, each claimed until `until` (its due time moved
        there by a conditional write on it being due still): a concurrent sweep, or one before `until`, does not
        get it again, and one after `until` does if the mark is still there. Oldest due first, as stored now."""
        ...

    def find_inbound(self, upstream: str, upstream_message_id: str, account_id: str, to: str) -> FoundInbound | None:
        """The inbound SMS stored for an upstream's message id sent to the account's number `to` (read
        consistently), with whether its not-queued mark is still there; None when there is none."""
        ...

    def get_inbound(self, account_id: str, inbound_id: int) -> StoredInbound | None:
        """The account's inbound SMS of that id, read consistently, or None."""
        ...

    def keyword_applied(self, inbound: StoredInbound) -> None:
        """Records that the inbound SMS's STOP / START changed the opt-outs (clears `keyword_pending`)."""
        ...

    def list_inbounds(
        self,
        account_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        msisdn: str | None = None,
        budget: PageBudget[StoredInbound] | None = None,
    ) -> tuple[list[StoredInbound], str | None]:
        """A page of the account's inbound SMS, newest first: received from `since` to `until` (inclusive, aware
        datetimes), only those from `msisdn` (E.164) if given, cut short by `budget` if given; the cursor continues
        it. Raises InvalidRequest for a cursor this store did not issue for this listing."""
        ...


class Holding(StrEnum):
    """What MessageStore.hold_report did with a report for an upstream id no message is linked to yet."""

    # Kept on the link: linking the id applies it (DeliveryReportsHeld counts it).
    HELD = "held"
    # Nothing new to keep: a repeat of a report held already, or an interim report after the final one held past
    # the link's bound, which would change nothing applied after it. Not counted held again.
    NOTHING_NEW = "nothing_new"


class MessageStore(Protocol):
    def add_messages(self, batch: Batch, messages: Sequence[Message]) -> None:
        """Writes messages of a batch that exists (a send that died part-way is finished this way)."""
        ...

    def create_batch_and_reserve(self, batch: Batch, *, superseding: int | None = None) -> None:
        """Writes the batch (no messages yet) and takes its cost from its account's credits, both or neither.
        Raises Conflict when the batch exists, InsufficientCredits when the balance is short (and then did
        neither). `superseding`: a failed batch of the account that this one replaces (a send afresh under the same
        idempotency key), linked to it (`superseded_by`) in the same write; Conflict when
        it is not failed or already superseded. NotDone when the store could neither apply nor refuse the write
        (other writes of the account kept conflicting with it): nothing was written."""
        ...

    def reprice_batch(self, batch: Batch, cost: int, recipients: int | None = None, *, by_cancel: bool = False) -> int:
        """Sets the batch's cost (and its count of recipients, when given) and moves the difference from what it
        reserved (`batch.cost`) between it and the account's credits, both or neither, only while the batch's cost
        and revision are still `batch`'s (no other write repriced it or added messages to it); returns the balance.
        `by_cancel`: the batch's cancel gives the difference back, and adds it to its `cancel_unstored_refund` in the
        same write, and takes back what it must (messages stored after an earlier give-back of theirs, which it
        refunds next) whatever the balance. Raises InsufficientCredits (never for a cancel) or Conflict (it changed
        meanwhile) having changed nothing."""
        ...

    def store_and_charge(self, batch: Batch, messages: Sequence[Message], *, stored_cost: int, stored: int) -> Batch:
        """Adds `messages` to a batch still queued or scheduled, whose `stored` messages stored now cost `stored_cost`,
        and makes its cost theirs and these (all of it, with the first part) and its count of recipients theirs and
        these (with every part: a batch left part-way has fewer messages than recipients, as one whose send died storing
        has, until 2026-12-07 the count of those stored), moving the difference from what it holds (`batch.cost`)
        between it and the account's credits: a part at a time, each part's messages (the first part's also the cost and
        the credits) in one write, conditional on the batch being as read (cost and revision) and on none of the
        messages being stored already; with no messages, one write of the cost and count all the same. So at every
        moment the batch's cost covers its stored messages and holds what the rest cost (never let go of between parts,
        where another send could take it), and a release's give-back of what a killed send held for messages it never
        stored (logic.batches.cost_to_stored) either comes before a part, which then fails, or finds its messages. The
        batch as written.
        Raises InsufficientCredits (at the first part, having stored nothing), Conflict (it changed meanwhile: read
        it again) or NotDone (other writes kept conflicting with it: nothing of it written) at the part it reached;
        the parts before stand, paid for."""
        ...

    def fail_batch_and_refund(self, batch: Batch) -> bool | None:
        """Moves a batch that is still in the status it was written with (`batch.status`: queued or scheduled, a
        send not released yet) to failed and gives its cost back, both or neither. True: done by this call; False:
        the batch moved on (undone already, released, cancelled; nothing changed); None: there is no such batch."""
        ...

    def get_batch(self, account_id: str, reference_id: int) -> Batch | None: ...

    def set_batch_status(
        self,
        account_id: str,
        reference_id: int,
        target: MessageStatus,
        *,
        only_from: frozenset[MessageStatus] | None = None,
    ) -> bool:
        """Conditional: only from a state `target` may follow (narrowed to `only_from` if given).
        True when this call moved it."""
        ...

    def claim_cancel_answer(self, account_id: str, reference_id: int, *, mark: str | None = None) -> Batch | None:
        """Marks a cancelled batch's refund as answered (its `cancel_answered`), by a conditional write that only one
        call wins: the batch as that write left it, for that call. None when another call marked it first, or the
        batch is not cancelled. `mark`: the mark of the idempotency key the cancel holds (KeyClaim.mark), written
        with it (`cancel_answer_mark`): a later call under the same key wins the claim again (the key's request died
        after it claimed the answer, before the answer was kept under the key or sent), no other call. The winning
        write sent again (its answer lost on the wire) is still that call's win, not another call's claim."""
        ...

    def list_messages(
        self,
        account_id: str,
        reference_id: int,
        *,
        limit: int = 100,
        cursor: str | None = None,
        status: MessageStatus | None = None,
    ) -> tuple[list[Message], str | None]:
        """A page of a batch's messages in id order, only those in `status` if given; the cursor continues it.
        Raises InvalidRequest for a cursor this store did not issue."""
        ...

    def get_messages(self, account_id: str, reference_id: int, message_ids: Sequence[int]) -> list[Message]: ...

    def get_messages_by_key(self, keys: Sequence[MessageKey], *, consistent: bool = True) -> list[Message]:
        """The messages found of `keys`, which may belong to several batches; `consistent=False` reads at half
        the price where a write seconds old need not show (the status writes it may lead to are conditional)."""
        ...

    def find_message(self, account_id: str, message_id: int) -> Message | None:
        """A message by its id alone, only if it belongs to `account_id`."""
        ...

    def claim_for_dispatch(
        self,
        key: MessageKey,
        *,
        now: datetime,
        lease_seconds: int,
        upstream: str | None = None,
        attempts_read: int | None = None,
    ) -> Claim:
        """Takes a lease on a queued message so that two dispatchers never submit it at once; tells apart a
        lease that lapsed (its holder died, maybe mid-submit) from one that is live. `upstream`: the one the
        holder submits to first, kept with the lease so that whoever takes a lapsed lease over knows where the
        message may be (`Claim.lapsed_upstream`). `attempts_read`: the message's submit attempts as the claimer
        read them; a message attempted since (handed back, maybe naming an upstream that may have it) is not
        claimed but found STALE, so the claimer reads it again rather than act on what it read. A lease it holds
        (CLAIMED, ABANDONED) comes with its `Claim.claim_id`, which the holder's later writes on it name; a claim
        write applied whose answer was lost is still the claimer's own, never another's live lease (HELD)."""
        ...

    def move_claim(self, key: MessageKey, *, from_upstream: str, to_upstream: str, claim_id: str | None = None) -> bool:
        """Names another upstream in a live lease, before the holder fails over to it: False (nothing written)
        when the lease no longer names `from_upstream`, is not the one `claim_id` names (when given), or the message
        is no longer queued. True also when this very move was applied before (its answer lost)."""
        ...

    def release_claim(
        self,
        key: MessageKey,
        *,
        claim_id: str | None = None,
        attempted: bool = True,
        maybe_taken_by: str | None = None,
        throttled: bool = False,
    ) -> None:
        """Gives a lease back after a transient failure, so the retry need not wait for it to lapse, and counts the
        attempt (`Message.submit_attempts`) unless the message was never offered upstream. `maybe_taken_by` records
        the upstream that may have it (`Message.maybe_taken_by`) in the same write; `throttled` counts an upstream's
        throttle (`Message.submit_throttles`). With `claim_id`, only the lease it names: once, and never another
        dispatcher's."""
        ...

    def transition(
        self,
        key: MessageKey,
        target: MessageStatus,
        *,
        now: datetime,
        upstream: str | None = None,
        upstream_message_id: str | None = None,
        error_code: str | None = None,
        reported_at: str | None = None,
        unclaimed_only: bool = False,
        unheld_only: bool = False,
        refund: bool = False,
        reported_by: str | None = None,
        settles_as: MessageStatus | None = None,
        if_settles_as: MessageStatus | None = None,
        unless_settles_as: MessageStatus | None = None,
    ) -> StatusChange | None:
        """Moves a message forward with a conditional write. None when there is no such message.
        `upstream`: the upstream that carries it, recorded unless one is already (the first wins).
        `unclaimed_only`: only a message no dispatcher ever claimed (none is submitting it, none submitted it).
        `unheld_only`: only a queued message no dispatcher holds a claim on (live or lapsed) and no upstream may have
        (`Message.maybe_taken_by`): one handed back after a failure or a throttle may move, none that may be out.
        `reported_by`: a DLR's upstream, which must carry the message (the one recorded, the one a dispatcher is
        submitting it to, or the one that may have it); another's report changes nothing.
        `refund`: the write that moves it also gives its price back to its account, atomically (move_and_refund).
        `settles_as`: an interim report's Message.settles_as, written with the move; `if_settles_as`: only a message
        whose settles_as is that (the settle check's delivery of one left at ACCEPTD, which a later receipt wins);
        `unless_settles_as`: only a message whose settles_as is not that (the settle check's expiry of one it read
        with no ACCEPTD, which an ACCEPTD landing meanwhile wins)."""
        ...

    def move_and_refund(
        self, messages: Sequence[Message], target: MessageStatus, *, now: datetime, **options: Any
    ) -> list[StatusChange | None]:
        """Moves each of `messages` (one account's) to `target` by its conditional write and gives the price of each
        one moved back to the account, both or neither: a crash between them cannot lose or double a refund.
        `options`: transition's. Aligned with `messages`: each as it is now, None where there is no such message."""
        ...

    def move_messages(
        self, messages: Sequence[Message], target: MessageStatus, *, now: datetime, **options: Any
    ) -> list[StatusChange | None]:
        """move_and_refund's conditional moves without the refund, as few requests as it takes: for messages whose
        credits went back another way (their batch's whole cost, fail_batch_and_refund). Aligned likewise."""
        ...

    def find_by_upstream_id(self, upstream: str, upstream_message_id: str) -> MessageKey | None:
        """The message an upstream's own id names, once the dispatcher linked it (link_upstream_id)."""
        ...

    def link_upstream_id(
        self, upstream: str, upstream_message_id: str, key: MessageKey, *, now: datetime
    ) -> list[DeliveryReport]:
        """Links an upstream's id to our message; returns the DLRs held for that id because they came first."""
        ...

    def hold_report(self, report: DeliveryReport, *, now: datetime) -> MessageKey | Holding:
        """Keeps a DLR for an upstream id not linked yet: HELD, or NOTHING_NEW when a report held already says all it
        says. Returns the message's key instead when the link appeared meanwhile (then the report is not kept and the
        caller applies it)."""
        ...

    def record_part_status(
        self, key: MessageKey, part: int | str, status: MessageStatus, *, now: datetime, reported_by: str | None = None
    ) -> StatusChange | None:
        """Moves one part of a multi-part message (`part`: its number, or the upstream's own id for it) forward
        only, and only on a report of an upstream that carries the message (`reported_by`, as transition's): the
        message as it is now and whether this write moved the part (not, for a repeat of the part's report), None
        if unknown."""
        ...

    def mark_unannounced(self, key: MessageKey, sequence: int, *, due: datetime) -> bool:
        """Marks a message whose change `sequence` could not be announced (`Message.announce_pending`), while the
        message is still at that change, and in the same write puts it where a sweep finds it from `due` on
        (`claim_unannounced_reports`); whether it wrote."""
        ...

    def clear_unannounced(self, key: MessageKey, sequence: int) -> bool:
        """Clears that mark (a sweep no longer finds the message) once the change went out, when it still names
        `sequence`, and records the change announced (`Message.announced`); whether it wrote."""
        ...

    def claim_announcement(self, key: MessageKey, sequence: int) -> bool:
        """Claims the announcement of an upstream's repeat of the report that made the message's change `sequence`
        (`Message.announced` set to it), while the message is still at that change and no repeat claimed it yet;
        whether it wrote (only the repeat that did queues the report again)."""
        ...

    def claim_unreleased_batches(self, *, now: datetime, until: datetime, limit: int) -> list[UnreleasedBatch]:
        """Up to `limit` batches still unreleased (scheduled, or a send of 100 recipients or more to go out at once
        whose records are not known to be queued) whose sweep time (domain.models.release_sweep_due) has come by
        `now`, each claimed until `until`, as claim_inbound_notifications claims inbound SMS: a concurrent sweep, or
        one before `until`, does not get it again. A batch stored before batches carried a sweep time is never
        found."""
        ...

    def leave_to_release_sweep(self, batch: Batch) -> None:
        """Puts a batch to go out at once, still `queued`, in the sweeper's reach as a send of 100 recipients or more
        is written (domain.models.unqueued_release_sweep_due), whatever its size: for a send whose undo failed. One
        write; nothing for a batch no longer queued."""
        ...

    def clear_release_sweep(self, account_id: str, reference_id: int) -> None:
        """The batch, to go out at once, has its dispatch records queued: the sweeper no longer releases it. One
        write; nothing for a batch the sweeper would not release anyway."""
        ...

    def claim_unannounced_reports(self, *, now: datetime, until: datetime, limit: int) -> list[Message]:
        """Up to `limit` marked messages due by `now`, each claimed until `until`, as claim_inbound_notifications
        claims inbound SMS: a concurrent sweep, or one before `until`, does not get it again. As stored now."""
        ...

    def note_settles_as(self, key: MessageKey, settles_as: MessageStatus, *, reported_by: str) -> Message | None:
        """Writes an interim report's Message.settles_as on a message already submitted that `reported_by` carries
        (as transition's): no status change, no `sequence` step, nothing to announce. One conditional write, in
        place of the transition such a report would try (and find the message past). The message as written; None
        when the condition did not hold (still queued, or final, or another upstream's)."""
        ...

    def note_error_code(
        self, key: MessageKey, status: MessageStatus, error_code: str, *, reported_by: str, absent_only: bool = False
    ) -> bool:
        """Writes an upstream's error code on a message still in `status` that `reported_by` carries (as
        transition's), a report that does not move it (a submit error the upstream retries itself): no status
        change, no `sequence` step, nothing to announce. Leaves a `submit_unconfirmed` mark; `absent_only`: writes
        only on a message with no error code (a final one's, which another report's write settled). Whether it
        wrote."""
        ...


class BatchHistory(Protocol):
    """An account's batches in time order, for the portal's listings and its delivery figures."""

    def list_batches(
        self,
        account_id: str,
        *,
        limit: int = 25,
        cursor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[Batch], str | None]:
        """A page of the account's batches, newest first: created from `since` to `until` (inclusive, aware
        datetimes) if given; the cursor continues it. Raises InvalidRequest for a cursor this store did not issue
        for this listing."""
        ...

    def scheduled_batch_ids(
        self, account_id: str, *, limit: int, since: datetime | None = None, until: datetime | None = None
    ) -> tuple[list[int], bool]:
        """The reference ids of up to `limit` of the account's scheduled batches (those with a `send_at`) that go
        out from `since` to `until` (inclusive, aware datetimes) if given, whenever they were made, the latest to go
        out first; and whether those are all there are."""
        ...

    def get_batches(self, account_id: str, reference_ids: Sequence[int]) -> list[Batch]:
        """The account's batches of these reference ids, in no particular order; ids of none are skipped."""
        ...


class SendTimeEntries(Protocol):
    """The scheduled batches' entries by send time (`GOES_OUT#`, docs/data-model.md), for the backfill of those made
    before the entries existed (`logic.history.backfill_send_times`)."""

    def scheduled_batches(self, account_id: str | None = None) -> Iterator[tuple[Batch, int | None]]:
        """Every scheduled batch (one with a `send_at`), of one account or of all, with its TTL (None without one)."""
        ...

    def add_send_time_entry(self, batch: Batch, expires_at: int | None) -> bool:
        """Writes the batch's entry by send time, expiring at `expires_at`, unless it has one: True when written."""
        ...

    def has_send_time_entry(self, batch: Batch) -> bool:
        """Whether the batch has its entry by send time."""
        ...


class ConversationLookup(Protocol):
    def last_sent_to(self, account_id: str, msisdn: str, sender: str | None = None) -> SentMessage | None:
        """The newest message the account sent to the number (from `sender`, in any of its forms, when given), or
        None."""
        ...


class PriceBook(Protocol):
    def price_table(self) -> PriceTable: ...


class IdempotencyStore(Protocol):
    def begin(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        now: datetime,
        reference_id: int,
        lease: timedelta | None = None,
        unversioned_fingerprint: str | None = None,
    ) -> StoredAnswer | KeyClaim:
        """Claims a key for the batch `reference_id`: a KeyClaim when this call owns it. The stored answer when the
        same request was answered already. Raises KeyReused (a Conflict) for a different request under the same key,
        KeyInProgress (a Conflict naming the batch it plans) for the same one still in progress. With a `lease`, a
        request that held the key longer than that without answering is taken to have died: the key is taken over
        (a conditional write, so only one retry wins) and the claim names the batch the dead request planned,
        `resumed`. Without one, the key is held until it expires.
        A record is stored with FINGERPRINT_VERSION, and one stored with it is compared with `fingerprint`; one
        stored without it (by a build before versions) with `unversioned_fingerprint`, the same request's fingerprint
        made as that build made it (by default `fingerprint`)."""
        ...

    def complete(self, scope: str, key: str, answer: StoredAnswer) -> None: ...

    def abandon(self, scope: str, key: str) -> None:
        """Forgets a claimed key whose request failed, so the client may retry it."""
        ...

    def lapse(self, scope: str, key: str) -> None:
        """Ends the lease of a key this request holds (resumed) and keeps it in progress: the request stopped with
        what the key's send had written as it found it, so the next retry under the key resumes it at once instead
        of meeting it in progress until the lease runs out."""
        ...

    def renumber(self, scope: str, key: str, claim: KeyClaim, reference_id: int) -> KeyClaim | None:
        """Has a key this request claimed first (`claim`, not resumed) name batch `reference_id` instead of the one
        the claim names, by a write conditional on the key being still in progress, naming that batch, and held by
        this claim: the claim on the new batch, with the key's mark; None when the key is not so (nothing changed)."""
        ...


class DispatchQueue(Protocol):
    def enqueue(self, commands: Sequence[DispatchCommand]) -> None: ...


class BatchScheduler(Protocol):
    def schedule(self, account_id: str, reference_id: int, at: datetime) -> None: ...

    def cancel(self, account_id: str, reference_id: int) -> bool:
        """Deletes the batch's schedule: False when there is none. Raises when the scheduler refuses."""
        ...

    def schedule_name(self, account_id: str, reference_id: int) -> str:
        """The name an operator finds the batch's schedule by."""
        ...


class BatchRelease(Protocol):
    def release(self, account_id: str, reference_id: int) -> None:
        """Has the batch released as its schedule would (logic.scheduled.release_scheduled_batch, in the
        scheduled_dispatch function): asynchronously, idempotently. Raises when the release could not be handed on."""
        ...


class Provider(Protocol):
    """An upstream SMS provider: submits messages and understands its own callbacks."""

    name: str

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        """Raises UpstreamError(permanent=...) when the upstream refuses or fails."""
        ...

    def verify_callback(self, request: CallbackRequest) -> bool: ...

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]: ...

    def parse_inbound(self, request: CallbackRequest) -> InboundSms: ...


class TopUpOutcome(BaseModel):
    """What a top-up did: added its credits now, or found its request id's top-up applied by an earlier run."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    # An earlier run under the same request id applied this top-up: nothing was added now.
    already_applied: bool = False
    # When that earlier run applied it (None for a top-up applied now).
    applied_at: datetime | None = None


class CredentialInfo(BaseModel):
    """An issued credential as an operator may see it: never the secret, only its first characters."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    kind: str
    prefix: str
    created_at: str = ""
    revoked: bool = False
    revoked_at: str | None = None
    # Who made it: "portal" (a signed-in customer, or whoever holds their password) or "operator" (the admin CLI);
    # None: made before credentials recorded it (2026-12-06), origin unknown.
    created_by: str | None = None
    # For one made in the portal: the epoch of the password its session was signed in with (Account.password_epoch),
    # so a reset of that password revokes it. Not shown: it says nothing to an operator.
    password_epoch: str | None = Field(default=None, exclude=True)
    # The SHA-256 of the secret, which keys the credential's own item (to revoke it): not shown either.
    secret_hash: str = Field(default="", exclude=True)


# The most credentials AccountAdmin.reset_password revokes in its write (DynamoDB's transaction holds 100 writes: 3
# and 2 per credential); a reset that has more revokes the rest right after it (logic/accounts.reset_password).
MOST_REVOKED_BY_A_RESET = 48
# The most senders AccountStore.create_account registers in the account's one write: DynamoDB's transaction holds 100
# items, 7 of them the account, its two credentials and their listings, its login and the login's listing, and 2 each
# sender (its registry item and the check that no account released it). More are added with add-sender.
MOST_SENDERS_AT_CREATION = 46
# A credential is listed, and named, by the first characters of its secret.
PREFIX_LENGTH = 8


# The webhook credentials a settings change may rotate (AccountChanges.replacing).
RotatedCredential = Literal["webhook_token", "webhook_secret"]
WebhookUrl = Literal["dlr_url", "inbound_url"]


class AccountChanges(BaseModel):
    """Settings an operator changes on an account: a field left None is kept, a name in `clear` is removed."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    default_country: str | None = None
    timezone: str | None = None
    rate_limit_per_second: int | None = None
    max_parts: int | None = None
    single_sends_in_order: bool | None = None
    dlr_url: str | None = None
    inbound_url: str | None = None
    webhook_token: SealedSecret | None = None
    webhook_secret: SealedSecret | None = None
    # When the webhooks (a URL, the token or the signing secret) last changed, and by what (Account): an operator
    # acting on a leaked password checks them (admin reset-password shows it).
    webhooks_changed_at: str | None = None
    webhooks_changed_by: str | None = None
    clear: frozenset[Literal["dlr_url", "inbound_url"]] = frozenset()
    # Not a setting: changes made in a portal session are written only while the account's password is still the
    # session's (this epoch, as add_credential's password_epoch); Unauthorized when a reset replaced it.
    under_password_epoch: str | None = None
    # Not a setting either: what a rotation replaces, the `sealed` value of each webhook credential it rotates as it
    # read it (None: the account had none). Written only while the account still holds that value; Conflict when
    # another rotation replaced it meanwhile, whose answer showed the value now in use (so a rotation never answers
    # a value that another one overwrote, shown once and kept nowhere: until session 34 both answered 200).
    replacing: dict[RotatedCredential, str | None] = Field(default_factory=dict)
    # Nor this: the URL each webhook it changes had when the change was asked for (None: no URL), a portal form's
    # as the page showed it. Written only while the account still has it; Conflict when another change (the API, a
    # second tab) replaced it meanwhile, which this one would otherwise undo unseen.
    expecting: dict[WebhookUrl, str | None] = Field(default_factory=dict)


_URL_NAMES: dict[str, str] = {"dlr_url": "delivery report (DLR) URL", "inbound_url": "inbound SMS URL"}


def urls_changed_meanwhile(account: Account, changes: AccountChanges) -> Conflict | None:
    """The refusal of a change whose webhook URLs are no longer those it expected (`account`: as it is now), or None
    when they still are."""
    changed = [
        f"{_URL_NAMES[name]} (now {getattr(account, name) or 'empty'})"
        for name, expected in sorted(changes.expecting.items())
        if getattr(account, name) != expected
    ]
    if not changed:
        return None
    return Conflict(
        f"the {' and the '.join(changed)} changed elsewhere while this form was open, so nothing was saved: "
        "save again to replace it with what you typed"
    )


_ROTATED_NAMES: dict[str, str] = {"webhook_token": "webhook token", "webhook_secret": "signing secret"}


def rotated_meanwhile(account: Account, changes: AccountChanges) -> Conflict:
    """The refusal of a change whose rotation found the credential replaced meanwhile (`account`: as it is now)."""
    replaced = [
        _ROTATED_NAMES[name]
        for name, sealed in sorted(changes.replacing.items())
        if (getattr(account, name).sealed if getattr(account, name) is not None else None) != sealed
    ]
    what = " and ".join(replaced) or "account"
    return Conflict(
        f"the {what} was rotated by another request while this one ran, so nothing changed: that request's answer "
        "holds the one in use now; send this again to rotate once more"
    )


class SenderAdded(BaseModel):
    """A sender registered to an account, with the opt-outs it kept: those of the account that released it last
    (`released_by`, None when no account did since releases were recorded), now the new owner's."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    account: Account
    released_by: str | None = None
    opt_outs_carried_over: int = 0


class AccountAdmin(ConsistentAccountStore, Protocol):
    """Operator changes to accounts, credentials, senders and prices; each is a conditional write that raises
    NotFound when the account does not exist."""

    def add_credential(
        self,
        account_id: str,
        kind: str,
        secret: str,
        *,
        created_at: str,
        created_by: str | None = None,
        password_epoch: str | None = None,
    ) -> CredentialInfo:
        """Stores a new credential (its hash) for the account, recording who made it. Conflict when its prefix is in
        use there. With `password_epoch` (one made in the portal), only while the account's password is still that
        one: Unauthorized when it was reset meanwhile (the session that asked is ended)."""
        ...

    def list_credentials(self, account_id: str) -> list[CredentialInfo]: ...

    def revoke_credential(self, account_id: str, kind: str, prefix: str, *, revoked_at: str) -> CredentialInfo:
        """Marks one of the account's credentials revoked; NotFound when the account has no such credential."""
        ...

    def add_sender(
        self, account_id: str, sender: str, *, inbound_upstreams: tuple[str, ...] | None = None
    ) -> SenderAdded:
        """Registers a sender to the account (with the upstreams that may deliver its inbound SMS, if given: None
        follows the account's routes); Conflict when another account owns it. A sender another account released
        keeps the opt-outs of it that account had: they are the new owner's before the sender is (run again after
        a failure, it finishes the copy)."""
        ...

    def set_inbound_upstreams(
        self, account_id: str, sender: str, inbound_upstreams: tuple[str, ...] | None
    ) -> SenderRegistration:
        """Sets the upstreams that may deliver the sender's inbound SMS (None: those the account's routes name);
        NotFound when the sender is not the account's."""
        ...

    def remove_sender(self, account_id: str, sender: str) -> Account:
        """Releases one of the account's senders, recording that this account released it (its opt-outs of it go
        to the account given it next); NotFound when it is not the account's."""
        ...

    def top_up(self, account_id: str, credits: int, *, request_id: str | None = None) -> TopUpOutcome:
        """Adds credits atomically (NotFound for no account). Run again with the same `request_id` within 10
        minutes, it adds them once: a caller that does not know whether a top-up went through can repeat it, and is
        told it was applied before (TopUpOutcome.already_applied). Conflict when the id was used for another top-up
        (another account or amount) in those 10 minutes."""
        ...

    def update_account(self, account_id: str, changes: AccountChanges) -> Account: ...

    def reset_password(
        self,
        account_id: str,
        password: str,
        *,
        sessions_valid_from: datetime,
        replacing_epoch: str,
        revoke: Sequence[CredentialInfo] = (),
    ) -> Account:
        """Replaces the account's /login password (stored hashed) and, in the same write, gives the login and the
        account a new random `password_epoch` (which ends every session of the old password), sets the account's
        `sessions_valid_from` (which ends those opened before sessions carried an epoch) and revokes the credentials
        `revoke` (at most MOST_REVOKED_BY_A_RESET; ValueError for more, nothing done). Only while the account's
        password is the one of `replacing_epoch`; NotFound when the account does not exist or its password changed
        meanwhile (nothing done: read it again and retry)."""
        ...

    def login_username(self, account_id: str) -> str:
        """The account's /login (and portal) username; NotFound when it has none."""
        ...

    def clear_login_failures(self, username: str) -> int:
        """Forgets the username's failed logins, from every source, and its logins in flight (they end uncounted):
        answers how many windows had failures."""
        ...

    def accounts_with_plain_webhook_credentials(self) -> Iterator[Account]:
        """Accounts whose webhook token or signing secret was stored before sealing (scheme "plain")."""
        ...

    def seal_plain_credential(self, account_id: str, name: str, plain: str, sealed: SealedSecret) -> bool:
        """Replaces a plain-text webhook credential with `sealed` while it is still `plain`; False otherwise."""
        ...

    def set_price(self, tier: str, network: str, credits: int) -> PriceTable:
        """Sets one cell of the price table atomically; returns the whole table."""
        ...


class InboundPins(AccountStore, Protocol):
    """What a route edit needs to pin, before it is written, the inbound upstreams of the numbers it would take an
    upstream away from (logic/accounts.pin_inbound_before_route_change)."""

    def accounts_following_routes(self) -> Iterator[str]:
        """The accounts with a number whose inbound SMS follow the routes (no `inbound_upstreams` set): a Scan of
        the whole table, for an edit of a general route or the default upstream only."""
        ...

    def pin_inbound_upstreams(self, account_id: str, sender: str, inbound_upstreams: tuple[str, ...]) -> bool:
        """Sets the upstreams that may deliver the sender's inbound SMS only while none are set and it is still the
        account's; False (nothing written) otherwise."""
        ...


class GroupStore(Protocol):
    """Recipient groups, keyed by account and the number in their `grp_<number>` id."""

    def create_group(self, group: Group) -> bool:
        """Stores a new group; False (nothing written) when a group with its id exists already."""
        ...

    def get_group(self, account_id: str, group_number: int) -> Group | None: ...

    def list_groups(
        self, account_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[GroupSummary], str | None]: ...

    def add_group_members(
        self,
        account_id: str,
        group_number: int,
        members: Sequence[str],
        *,
        expected_version: int,
        member_count: int,
        now: str,
    ) -> bool:
        """Conditional on the group's version: False when the group changed (or went) since it was read."""
        ...

    def remove_group_members(
        self,
        account_id: str,
        group_number: int,
        members: Sequence[str],
        *,
        expected_version: int,
        member_count: int,
        now: str,
    ) -> bool:
        """Conditional on the group's version, like add_group_members."""
        ...

    def delete_group(self, account_id: str, group_number: int) -> bool:
        """False when there was no such group."""
        ...

    def stored_groups(self, account_id: str | None = None) -> Iterator[StoredGroup]:
        """Every stored group (of one account, or of all), with whether its summary holds members."""
        ...

    def move_group_members(self, account_id: str, group_number: int) -> GroupMove:
        """Moves the members a group's summary holds to its members item (as its next member change would), in one
        transaction conditional on the version read. Unavailable when DynamoDB decided nothing (conflicts past the
        retries, throttling): nothing was written."""
        ...


class SessionStore(Protocol):
    """Session keys of the session-key dialect: issued by /login, kept only as a hash, valid until they expire."""

    def password_login(self, username: str, password: str, *, source: str | None = None) -> PasswordLogin | None:
        """The login whose username and password these are, or None; the same time is spent whether the username
        exists or not. Read strongly consistent: a password reset a moment ago is seen. With `source`, the login says
        when that source last logged in as the username (remember_login_source)."""
        ...

    def save_session(
        self, session_key: str, account_id: str, *, created_at: datetime, expires_at: datetime, password_epoch: str
    ) -> None: ...

    def key_session(self, session_key: str, *, now: datetime) -> KeySession | None:
        """The live session of a key, or None when the key is unknown or expired at `now`."""
        ...

    def begin_login_attempt(
        self,
        username: str,
        window: int,
        *,
        source: str,
        known_source: bool,
        max_failures: int,
        max_in_flight: int,
        started_at: datetime,
        stale_before: datetime,
        expires_at: datetime,
    ) -> LoginAttempt | LoginRefusal:
        """Counts one attempt at `username` from `source` in `window` as in flight since `started_at`, in one of
        `max_in_flight` places, unless `max_failures` failed from `source` already (LOCKED_OUT), or, from every
        source, unless `known_source` (LOCKED_OUT_TO_UNKNOWN_SOURCES), or every place holds an attempt that began at
        or after `stale_before` (BUSY); nothing is counted then. A place whose attempt began before is free: that
        attempt's invocation ended without giving it back."""
        ...

    def end_login_attempt(
        self, username: str, window: int, attempt: LoginAttempt, *, source: str, failed: bool
    ) -> None:
        """An attempt begun in `window` is over: its place given back (unless another attempt took it over as
        stale), and counted a failure of the username and of `source` when it `failed`."""
        ...

    def login_source_known(self, username: str, source: str, *, since: datetime) -> bool:
        """Whether `source` logged in as `username` at or after `since` with its password of now."""
        ...

    def remember_login_source(
        self, username: str, source: str, *, password_epoch: str, at: datetime, forget_before: datetime, most: int
    ) -> None:
        """Records that `source` logged in as `username` `at`, with the password of `password_epoch` (nothing is
        written once a reset replaced it), keeping the `most` latest sources and none older than `forget_before`."""
        ...


@dataclass(frozen=True)
class PasswordLogin:
    """A username and password that matched: the account, and the epoch of the password they matched, read from the
    same item as its hash (the sessions it opens carry it: a password reset gives the account a new one)."""

    account_id: str
    password_epoch: str
    # When the source the login came from last logged in as this username (remember_login_source); None: not known.
    source_seen_at: datetime | None = None


class KeySession(BaseModel):
    """A session-key session as stored (its key only as a hash): whose it is, when /login opened it, and the epoch of
    the password it was opened with (None: opened before sessions carried it, 2026-12-06)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    account_id: str
    created_at: datetime
    password_epoch: str | None = None


class LoginRefusal(StrEnum):
    """Why a login was not let in to be checked."""

    # The window's failed logins from this source reached the limit: it is locked out until the window ends.
    LOCKED_OUT = "locked_out"
    # The window's failed logins from every source reached the limit: only a source the username knows (one that
    # logged in as it lately) may still try, until the window ends.
    LOCKED_OUT_TO_UNKNOWN_SOURCES = "locked_out_to_unknown_sources"
    # The limit of logins being checked at once is reached: a place frees within a password check.
    BUSY = "busy"


@dataclass(frozen=True)
class LoginAttempt:
    """A login being checked: its place among the username's logins in flight, and when it took it."""

    place: int
    started_ms: int


class PortalSession(BaseModel):
    """A signed-in portal session as stored (its token only as a hash): good until both expiries are ahead."""

    # Built on first use: only portal requests need it, not the api's cold start.
    model_config = ConfigDict(frozen=True, defer_build=True)

    account_id: str
    created_at: datetime
    # Absolute: the session ends then however busy it is. Idle: pushed forward while the session is used.
    expires_at: datetime
    idle_until: datetime
    # The epoch of the password it was signed in with, as KeySession's (None: signed in before 2026-12-06).
    password_epoch: str | None = None


class PortalSessionStore(Protocol):
    """Portal sessions: a random token in the browser's cookie, stored only as a hash."""

    def save_portal_session(self, token: str, session: PortalSession) -> None: ...

    def portal_session(self, token: str) -> PortalSession | None:
        """The stored session of a token, expired or not (the caller judges expiry), or None."""
        ...

    def extend_portal_session(self, token: str, idle_until: datetime) -> None:
        """Moves the idle expiry forward to `idle_until`, only while the stored one is earlier and the stored absolute
        expiry is not: a write from a stale read never moves it back (a renewing sign-in's written meanwhile stays)
        nor past the session's end; a session deleted meanwhile stays deleted."""
        ...

    def renew_portal_session(self, token: str, session: PortalSession) -> bool:
        """Moves a session's expiries to `session`'s, only while it is stored for that account and password epoch:
        False when it is not (signed out meanwhile), and nothing is written."""
        ...

    def delete_portal_session(self, token: str) -> None: ...


class SenderRequestStore(Protocol):
    """Sender ID and shortcode requests, listed per account (the portal) and all together (the operator)."""

    def add_sender_request(self, request: SenderRequest) -> None:
        """Stores a new pending request over none, a rejected one or an approved one (the caller has checked that the
        account does not have the sender, so an approved one was released since); Conflict over a pending one."""
        ...

    def sender_request(self, account_id: str, sender: str) -> SenderRequest | None: ...

    def sender_requests(self, account_id: str | None = None) -> list[SenderRequest]:
        """One account's requests, or every account's (None), oldest first."""
        ...

    def decide_sender_request(
        self, account_id: str, sender: str, status: SenderRequestStatus, *, decided_at: str, reason: str | None
    ) -> SenderRequest:
        """Moves a pending request to approved or rejected; Conflict when it is no longer pending."""
        ...


class ScopeHeld(Exception):
    """A scope's counter is held shut until `until` (Unix seconds): an upstream asked a dispatcher to come back no
    sooner (a 429's Retry-After), and that dispatcher held its route's counters for the others (`hold_scope`).
    `through`: the last second whose counter the hold shut (-1 when not known)."""

    def __init__(self, scope: str, until: float, *, through: int = -1) -> None:
        super().__init__(f"{scope} is held until {until}")
        self.scope = scope
        self.until = until
        self.through = through


@dataclass(frozen=True)
class AskedHold:
    """A hold an upstream asked for (its 429's Retry-After): when it ends (`until`) and when it asked for it
    (`asked_at`), Unix seconds by the clock of the holder that met the 429."""

    until: float
    asked_at: float


@dataclass(frozen=True)
class RecordedHold:
    """A scope's hold as its hold item records it (`RateLimitStore.hold_scope`): when the longest hold running on it
    ends (`until`, Unix seconds), the last second of the scope's counters held shut (`through`; -1 when not known: an
    item written before session 38), and each hold running (`running`, longest first, at most MAX_RUNNING_HOLDS: when
    it ends and when the upstream last asked for it; none in a holder's own note of a hold it learnt of)."""

    until: float
    through: int
    running: tuple[AskedHold, ...] = ()

    @classmethod
    def of(cls, running: Iterable[AskedHold], through: int) -> RecordedHold:
        """The hold of the holds `running` (at least one): the longest MAX_RUNNING_HOLDS of them kept."""
        kept = tuple(sorted(running, key=lambda hold: (hold.until, hold.asked_at), reverse=True)[:MAX_RUNNING_HOLDS])
        return cls(kept[0].until, through, kept)

    @property
    def since(self) -> float:
        """When the upstream last asked for a hold reaching `until` (within RESTATED_WITHIN_SECONDS); 0 when not known.
        The hold item's `held_since`, which is all a dispatcher of the release before session 38's list reads."""
        reaching = [hold.asked_at for hold in self.running if hold.until >= self.until - RESTATED_WITHIN_SECONDS]
        return max(reaching, default=0.0)

    def with_hold(self, asked: AskedHold, through: int, resumed_at: float | None) -> RecordedHold:
        """This hold with another the upstream `asked` for written over it, by a holder whose message the upstream last
        accepted in a request sent at `resumed_at` (None: none since it started). Each running hold the upstream asked
        for before then (with RESUMED_MARGIN_SECONDS for the clocks) is over: it took messages again after it asked, so
        it is dropped, shorter than the new one or not. So is each that ended by the time the new one was asked for.
        The others stay, and the new one joins them: it restates one ending about as late (RESTATED_WITHIN_SECONDS, a
        Retry-After in whole seconds counted from another moment), which then reaches the farther of the two and was
        asked for at the later. Until session 38 only the longest hold and its last ask were recorded, and a hold asked
        for after the request the upstream accepted, but ending before the longest (an hour's under a day's), was
        dropped with it."""
        running = [
            hold
            for hold in self.running or (AskedHold(self.until, 0.0),)
            if hold.until > asked.asked_at
            and (resumed_at is None or resumed_at <= hold.asked_at + RESUMED_MARGIN_SECONDS)
        ]
        others = []
        for hold in running:
            if abs(hold.until - asked.until) <= RESTATED_WITHIN_SECONDS:
                asked = AskedHold(max(hold.until, asked.until), max(hold.asked_at, asked.asked_at))
            else:
                others.append(hold)
        return RecordedHold.of([*others, asked], max(self.through, through))

    def shut_further(self, until: float, through: int) -> RecordedHold:
        """This hold with its counters shut up to `through` by a holder that knows it ends at `until`: only while a
        hold at least as long is recorded (a shorter one, or none, is a hold that changed since it learnt of it)."""
        if round(self.until, 3) < round(until, 3):
            return self
        return RecordedHold(self.until, max(self.through, through), self.running)


# A hold written ending this close to a running one says the upstream still asks for it (its Retry-After, in whole
# seconds, counted from another moment).
RESTATED_WITHIN_SECONDS = 1.0
# How much later than the upstream last asked for a hold a request it accepted must have been sent to end that hold:
# the dispatchers' clocks differ by milliseconds.
RESUMED_MARGIN_SECONDS = 1.0
# The most holds a scope's hold item records running (the longest): an upstream asks for a few at once (its
# per-second limit's, its hourly quota's, its daily quota's), each restated by every holder that meets it.
MAX_RUNNING_HOLDS = 16


def hold_written(
    before: RecordedHold | None,
    until: float,
    *,
    first_second: int,
    seconds: int,
    asked_at: float | None = None,
    resumed_at: float | None = None,
) -> RecordedHold:
    """The scope's hold once a hold of `seconds` counters from `first_second`, until `until`, asked for at `asked_at`
    (the start of `first_second` when not given) by a holder whose message the upstream last accepted in a request
    sent at `resumed_at`, is written over `before` (None: no hold recorded): `RecordedHold.with_hold`."""
    through = first_second + seconds - 1
    asked = AskedHold(until, float(first_second) if asked_at is None else asked_at)
    return RecordedHold.of([asked], through) if before is None else before.with_hold(asked, through, resumed_at)


def hold_shut_further(
    before: RecordedHold | None, until: float, *, first_second: int, seconds: int
) -> RecordedHold | None:
    """The scope's hold once a holder that knows it ends at `until` shuts `seconds` more of its counters from
    `first_second` (`RecordedHold.shut_further`); None when no hold is recorded (nothing to shut further)."""
    return None if before is None else before.shut_further(until, first_second + seconds - 1)


def seconds_to_shut(before: RecordedHold | None, after: RecordedHold, first_second: int) -> range:
    """The counters a hold from `first_second` writes: those no hold recorded before it shut (`before`), up to the
    last the recorded hold now reaches."""
    already = -1 if before is None else before.through
    return range(max(first_second, already + 1), after.through + 1)


class RateLimitStore(Protocol):
    """Per-second token counters shared by every dispatcher: one counter per scope and Unix second."""

    def take_tokens(self, scope: str, second: int, wanted: int, limit: int) -> int:
        """Counts up to `wanted` tokens in `scope`'s `second` without passing `limit`; returns how many it counted
        (fewer when the second is nearly full, 0 when it is full). Raises ScopeHeld when the second is held."""
        ...

    def give_back_tokens(self, scope: str, second: int, count: int) -> None:
        """Uncounts tokens taken in `second` that will not be used."""
        ...

    def hold_scope(
        self,
        scope: str,
        until: float,
        *,
        first_second: int,
        seconds: int,
        asked_at: float | None = None,
        resumed_at: float | None = None,
    ) -> RecordedHold:
        """Holds `seconds` of `scope`'s counters from `first_second` shut until `until`: they grant nothing, and a
        take of one raises ScopeHeld. Only the seconds no hold recorded before shut are written. The hold joins those
        recorded running, and drops each the upstream asked for before it accepted a message sent at `resumed_at`
        (`hold_written`). Returns the scope's hold as recorded after the write."""
        ...

    def shut_more_of_hold(self, scope: str, until: float, *, first_second: int, seconds: int) -> RecordedHold | None:
        """Shuts more counters of the hold recorded on `scope` (`seconds` from `first_second`, those it has not shut
        yet), only while the recorded hold lasts until `until` at least: a holder that learnt of a hold longer than
        its counters keeps them shut ahead of it. Returns the hold as recorded (None when none is)."""
        ...


class RouteStore(Protocol):
    """The operator's route table: one versioned record; each edit is conditional on the version it read."""

    def route_table(self, default_upstream: str) -> RouteTable:
        """The routes and their version, with `default_upstream` for messages no route matches."""
        ...

    def put_route(self, route: Route, expected_version: int) -> int:
        """Adds the route, or replaces the one with its id; returns the new version. Conflict when the table is
        no longer at `expected_version` or another route has the same match; NotFound when its account is unknown."""
        ...

    def remove_route(self, route_id: str, expected_version: int) -> int:
        """Removes a route; returns the new version. Conflict as put_route; NotFound when there is no such route."""
        ...


class OptOutStore(Protocol):
    """Numbers that opted out of an account's senders (STOP), counted exactly on the account item."""

    def opt_out(self, opt_out: OptOut, *, while_released: bool = False) -> bool:
        """Records the opt-out and counts it on the account, in one transaction. False when the number had opted
        out of that sender already (then nothing changes); NotFound when there is no such account. `while_released`:
        only while no account holds the sender and the opt-out's account is the one that released it last
        (sender_released_by); Unavailable, nothing changed, once an account has been given it."""
        ...

    def opt_in(
        self,
        account_id: str,
        msisdn: str,
        sender: str | None,
        *,
        only: Collection[str] | None = None,
        while_released: bool = False,
    ) -> int:
        """Removes the number's opt-outs of `sender` and of every sender (STOPALL), or all of its opt-outs when
        `sender` is None, uncounting each; `only`: just those of these sender keys (ALL_SENDERS for STOPALL's).
        `while_released`: as opt_out's, for `sender`. Returns how many it removed."""
        ...

    def sender_released_by(self, sender: str) -> str | None:
        """The account that released `sender` (remove-sender), read consistently, while no account holds it: its
        opt-outs of the sender go to the account given it next (add-sender). None when an account holds it, or
        none released it since releases were recorded."""
        ...

    def opted_out(
        self, account_id: str, sender: str, msisdns: Sequence[str], *, known_count: int | None = None
    ) -> dict[str, OptOut]:
        """The numbers among `msisdns` that opted out of `sender` or of every sender, each with its opt-out.
        `known_count` (the account's counter) lets the store pick the cheaper read; the answer is the same."""
        ...

    def list_opt_outs(self, account_id: str) -> list[OptOut]: ...


WebhookFailureState = Literal["retrying", "dead", "delivered", "resent"]


class WebhookFailure(BaseModel):
    """A client notification that failed at least once: where it stands, why, and the notification itself."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    account_id: str
    notification_id: str
    kind: str
    url: str | None = None
    state: WebhookFailureState
    attempts: int
    last_error: str
    last_status_code: int | None = None
    first_failed_at: str
    last_attempt_at: str
    next_attempt_at: str | None = None
    resent_at: str | None = None
    delivered_at: str | None = None
    # Exactly as it was queued, so it can be queued again after the dead-letter queue has it.
    notification: dict[str, object]
    # Which queued copy of the notification carries its retry schedule (webhook_retries.copy_id: the SQS MessageId
    # it was queued as): a copy queued as another message gives way to it. None in a record written before
    # 2026-12-07, which any copy goes on with.
    owner: str | None = None


class WebhookFailureStore(Protocol):
    """Failed client notifications, one record per notification id (writes are upserts: SQS redelivers)."""

    def save_webhook_failure(
        self,
        failure: WebhookFailure,
        *,
        only_from: frozenset[WebhookFailureState],
        attempts_before: int | None = None,
        owner_before: str | None = None,
    ) -> bool:
        """Creates or overwrites the record (its first_failed_at is kept) if there is none yet or its state is
        in `only_from`; False when the record is in another state and was left alone. With `attempts_before`, only
        if the record counts that many failed attempts: none for a record not there yet or `resent` (a resend's
        count starts over, whoever owned it), its `attempts` otherwise, and then only if it has no owner or is
        owned by `owner_before` (by default `failure.owner`; neither given: any owner)."""
        ...

    def get_webhook_failure(self, account_id: str, notification_id: str) -> WebhookFailure | None: ...

    def set_webhook_failure_state(
        self,
        account_id: str,
        notification_id: str,
        target: WebhookFailureState,
        *,
        only_from: frozenset[WebhookFailureState],
        now: str,
        last_error: str | None = None,
        resent_before: str | None = None,
        url: str | None = None,
    ) -> bool:
        """Conditional: moves an existing record to `target` only from a state in `only_from`, stamping
        `<target>_at`; with `last_error`, that is its reason now (and the last failed answer's status code is
        dropped); with `url`, that is where it was posted now. With `resent_before`, also from `resent` when its
        `resent_at` is earlier than that (a resend's claim whose notification never reached the queue). True when
        this call moved it."""
        ...

    def list_webhook_failures(
        self,
        account_id: str,
        *,
        state: WebhookFailureState | None = None,
        limit: int = 100,
        cursor: str | None = None,
        budget: PageBudget[WebhookFailure] | None = None,
    ) -> tuple[list[WebhookFailure], str | None]:
        """A page of the account's failures, the newest first failure first, only those in `state` if given, cut
        short by `budget` if given; the cursor continues it. Raises InvalidRequest for a cursor this store did not
        issue."""
        ...


class PartlyQueued(RuntimeError):
    """A queueing the queue took only in part: `failed` are the indexes (in what was queued) of the entries it did
    not take, refused or never sent after a refusal; the others are on the queue. A RuntimeError, so a caller that
    cannot tell them apart treats it as the whole queueing failing, as before."""

    def __init__(self, message: str, failed: Sequence[int]) -> None:
        super().__init__(message)
        self.failed = tuple(failed)


class NotificationQueue(Protocol):
    def publish(self, notifications: Sequence[dict[str, object]]) -> None: ...
