"""Dispatching: submit each queued message of a dispatch record to its upstream once; record the result."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sms_gateway.domain.models import (
    DEFAULT_VALIDITY,
    MAX_UPSTREAM_ID_BYTES,
    Account,
    Claim,
    ClaimOutcome,
    DeliveryReport,
    DeliveryReportMode,
    DispatchCommand,
    Message,
    MessageKey,
    StatusChange,
    SubmitRequest,
    SubmitResult,
    usable_upstream_id,
    validity_ends,
)
from sms_gateway.domain.senders import SENDER_REMOVED, holds_sender
from sms_gateway.domain.status import (
    NOT_QUEUED,
    SUBMIT_UNCONFIRMED,
    TERMINAL,
    VALIDITY_PERIOD_ENDED,
    MessageStatus,
    reached_in_order,
)
from sms_gateway.errors import OptedOut, UpstreamError
from sms_gateway.logic.delivery import DeliveryDependencies, apply_held_reports
from sms_gateway.logic.notify import dlr_notification
from sms_gateway.logic.optouts import opted_out_of
from sms_gateway.logic.ratelimit import MAX_HELD_SECONDS, Grant, RateLimiter, Scope, route_scope
from sms_gateway.observability import logger, mask_msisdn
from sms_gateway.ports import ConsistentAccountStore, MessageStore, OptOutStore, Provider, RecordedHold, ScopeHeld

# A claim outlives a normal submit by far; it only matters when a dispatcher dies mid-submit.
CLAIM_LEASE_SECONDS = 120
# Retry delays grow 5 s, 10 s, 20 s ... up to 5 minutes, with "equal jitter" (half of each step fixed, half random),
# so retries from a burst spread out and none comes back at once.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 300.0
# A message an upstream keeps throttling waits the same growing backoff (its record holds the account's FIFO lane
# meanwhile, so never more than BACKOFF_CAP_SECONDS a time), and is failed `upstream_throttled` and refunded at this
# many throttles (about an hour and a half of them), or expired at the end of its validity if that comes first: its
# record's returns stay well within the dispatch queue's maxReceiveCount (100), which also counts the deliveries a
# backlog holds it behind others. Only deliveries in which the upstream took none of the record's messages count.
MAX_SUBMIT_THROTTLES = 24
UPSTREAM_THROTTLED = "upstream_throttled"
# Why a queued message is failed before it is claimed: its number opted out of its sender since it was queued (the
# code a send to numbers that all opted out is refused with).
OPTED_OUT = OptedOut.code
# Status changes announced in one go: one SQS SendMessageBatch carries ten.
ANNOUNCE_BATCH = 10
# The states a dispatcher moves a queued message to.
DISPATCHED = frozenset({MessageStatus.SUBMITTED, MessageStatus.FAILED, MessageStatus.EXPIRED})
# A claim given back after its message was not taken is written again this many times, this long apart, before the
# release is left to the record's return (UNRELEASED_CLAIMS): a claim left held reads, once its lease lapses, as one
# whose holder died mid-submit.
RELEASE_ATTEMPTS = 3
RELEASE_RETRY_SECONDS = 0.2


def backoff_seconds(
    attempt: int,
    retry_after: float | None,
    rand: Callable[[], float] = random.random,
    *,
    base: float = BACKOFF_BASE_SECONDS,
) -> int:
    """How long a record waits before its next attempt (`attempt` counts from 1): up to `base` seconds, doubling
    per attempt up to 5 minutes. An upstream's Retry-After is a floor: we never come back sooner than it asked."""
    ceiling = min(BACKOFF_CAP_SECONDS, base * 2 ** max(attempt - 1, 0))
    delay = ceiling / 2 + rand() * ceiling / 2
    return int(max(delay, retry_after or 0.0, 1.0))


@dataclass(frozen=True)
class DispatchDependencies:
    messages: MessageStore
    accounts: ConsistentAccountStore
    # The upstreams for a message in the order to try them: the route's primary, then its fallback if any.
    upstreams_for: Callable[[Message], Sequence[Provider]]
    callback_base_url: str
    clock: Callable[[], datetime]
    concurrency: int = 64
    # The invocation's limit on submits in flight, shared by the records it handles at once; None: this record's
    # own, of `concurrency`.
    in_flight: SubmitSlots | None = None
    # A message not submitted within this time of being queued expires instead of arriving late.
    validity: timedelta = DEFAULT_VALIDITY
    limiter: RateLimiter | None = None
    rate_scopes: Sequence[Scope] = ()
    # An upstream's own messages-per-second limit (None: unlimited), taken one message at a time.
    route_limit: Callable[[str], int | None] = lambda _: None
    # Submit attempts a message gets: a transient failure on its last is final (failed and refunded). Counted per
    # message in the store, not by the record's deliveries, which grow whenever a record is handed back or held
    # behind another of its group.
    max_submit_attempts: int = 6
    claim_lease_seconds: int = CLAIM_LEASE_SECONDS
    # Told of the record's status changes for the client's delivery-report callbacks, ten at a time and the rest
    # at the end of the record. Changes a dead dispatcher made but never announced are announced again by the
    # record's redelivery (same webhook id per change, which the client deduplicates).
    announce: Callable[[Sequence[StatusChange]], None] | None = None
    # Told, at the end of the record, of its messages recorded submitted (by this dispatch or by an earlier delivery
    # of the record that may have died before its own telling): each needs a settle check, for if no final DLR
    # ever comes nothing else would end it (logic/settle.py). The record must not be consumed before they are asked.
    awaiting_report: Callable[[Sequence[Message]], None] | None = None
    # True once too little of the invocation is left to submit one more message and record the answer. Lambda
    # stops a function at its timeout like a crash: a message claimed then would wait out the DLR wait and expire
    # unsent. So no claim is made after it; the messages not yet claimed go back to the queue for the next one.
    out_of_time: Callable[[], bool] = lambda: False
    # Whether a record the rate limit starves keeps waiting in the invocation (until `out_of_time`) rather than going
    # back to the queue at once: the handler's choice, since it knows the invocation's deadline.
    wait_out_the_rate_limit: bool = False
    # The record's messages as its invocation read them with its other records' (ReadAhead), and whose route tokens
    # its limiter expects already (`route_asks`); None: read here, and the route tokens they will ask told to it.
    read_ahead: Sequence[Message] | None = None
    # The account's opt-outs: a message to a number that opted out of its sender since it was queued is failed
    # `opted_out` and refunded before any of the record's messages is claimed. None: not looked at.
    opt_outs: OptOutStore | None = None
    # The record's account as its invocation read it (cached settings: its opt-out count), for that look; None: read
    # from `accounts` when it is needed.
    account: Account | None = None


@dataclass(frozen=True)
class ReadAhead:
    """The messages of an invocation's single sends, read in one request rather than one per record (ten single
    sends in an account's lane: one read, not ten, and no read between one send's answer and the next one's claim).
    A message read this way may have moved on before its record comes to claim it (cancelled, or sent by a
    duplicate delivery of its record): the claim, conditional on the message still being queued, decides, as it does
    for a read made a moment before; a message moved on meanwhile is announced as one another dispatcher moved on."""

    keys: frozenset[MessageKey] = frozenset()
    found: dict[MessageKey, Message] = field(default_factory=dict)

    def of(self, command: DispatchCommand) -> list[Message] | None:
        """The record's messages found by the read, or None when the read did not cover the record."""
        keys = _keys_of(command)
        if not keys or not all(key in self.keys for key in keys):
            return None
        return [self.found[key] for key in keys if key in self.found]


def read_single_sends(messages: MessageStore, commands: Sequence[DispatchCommand]) -> ReadAhead:
    """The messages of the records of one message (single sends), read together: BatchGetItem takes 100 keys."""
    keys = [key for command in commands if len(command.message_ids) == 1 for key in _keys_of(command)][:100]
    if len(keys) < 2:
        return ReadAhead()
    found = messages.get_messages_by_key(keys)
    return ReadAhead(keys=frozenset(keys), found={message.key: message for message in found})


def _keys_of(command: DispatchCommand) -> list[MessageKey]:
    return MessageKey.of_batch(command.account_id, command.reference_id, command.message_ids)


class SubmitsInFlight:
    """A dispatch's submits awaiting their upstream's answer, by upstream, and the upstreams that took one: whether
    an upstream that throttles some of a record's messages took others in the same delivery is known once every
    submit to it has been answered."""

    def __init__(self) -> None:
        self.waiting: Counter[str] = Counter()
        self.took: set[str] = set()
        self._answered = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def submitting(self, upstream: str) -> AsyncIterator[None]:
        """Around one submit: the upstream took the message when the block ends without an exception."""
        self.waiting[upstream] += 1
        try:
            yield
            self.took.add(upstream)
        finally:
            self.waiting[upstream] -= 1
            async with self._answered:
                self._answered.notify_all()

    async def took_some(self, upstream: str) -> bool:
        """Whether the upstream took a message of this dispatch, once every submit to it so far has been answered."""
        async with self._answered:
            await self._answered.wait_for(lambda: not self.waiting[upstream])
        return upstream in self.took


class SubmitSlots(asyncio.Semaphore):
    """An invocation's submits in flight, at most `size` at once (DISPATCH_CONCURRENCY) across its records: a message
    holds a slot from its claim to its upstream's answer. A slot given back as the invocation dies (a BaseException
    that is not an Exception, its container dying, or the cancellation that death sends its other tasks) is handed to
    a message waiting for one all the same, before the death reaches that message's task: such a slot claims nothing.
    Until 2026-12-07 it claimed: each message that got one was left claimed and never sent, and its claim, once
    lapsed, taken for one its upstream may have (for an upstream that cannot tell repeats: never sent, expired for
    want of a DLR and refunded)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.dying = False

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        """A slot, and whether a message may be claimed in it: not once the invocation is dying."""
        async with self:
            try:
                yield not self.dying
            except BaseException as error:
                if not isinstance(error, Exception):
                    # Noted before the slot is given back, so the message it goes to knows.
                    self.dying = True
                raise


@dataclass
class DispatchOutcome:
    submitted: int = 0
    failed: int = 0
    expired: int = 0
    unconfirmed: int = 0
    # Messages whose lapsed claim (its dispatcher died mid-submit) this dispatch took over and offered again to the
    # deduplicating upstream the claim named (`resumable`).
    taken_over: int = 0
    skipped: int = 0
    retry: list[int] = field(default_factory=list)
    retry_after: float | None = None
    # The highest attempt number among the retried messages an upstream did not take (0: every retry is a hand-back
    # for want of time, rate or a free claim, which waits no backoff): what the record's backoff grows with.
    failed_attempts: int = 0
    # The most throttles among the retried messages an upstream throttled (no attempt counted), and the seconds
    # until the first of them is no longer valid (it comes back then, to be expired).
    throttles: int = 0
    throttled_valid_for: float | None = None
    # Upstreams that throttled a message of this dispatch: the record's messages not yet offered to them wait with it
    # rather than being sent into the throttle.
    throttled_by: set[str] = field(default_factory=set)
    submits: SubmitsInFlight = field(default_factory=SubmitsInFlight, repr=False, compare=False)
    # Claimed messages our limiter held back for an upstream at its limit (released unclaimed), by id: the upstream.
    held_for: dict[int, str] = field(default_factory=dict)
    # Every status change this dispatch made, for the client's delivery-report callbacks.
    changes: list[StatusChange] = field(default_factory=list)
    # Messages found queued but moved on by the time this dispatch came to claim them (by a concurrent delivery of
    # the record, mostly): their change is the other dispatcher's to announce, and is announced here too.
    moved_on: list[Message] = field(default_factory=list)
    # Submit attempts an upstream did not take, by (upstream, "transient" | "permanent"), failovers included.
    upstream_failures: Counter[tuple[str, str]] = field(default_factory=Counter)

    # Messages this dispatch's submitted write found submitted already: an interim report (enroute, accepted) of
    # the upstream overtook the write. Unchanged, so not among `changes`, they still await a final report.
    found_submitted: list[Message] = field(default_factory=list)

    def record(self, change: StatusChange | None) -> None:
        if change is None:
            return
        if change.changed:
            self.changes.append(change)
        elif change.message.status == MessageStatus.SUBMITTED or change.message.announce_pending is not None:
            # Also a message a final report settled first, whose announcement the notify queue refused: its settle
            # check announces it (logic/settle.py), as no upstream may post that report again.
            self.found_submitted.append(change.message)

    @property
    def needs_retry(self) -> bool:
        return bool(self.retry)

    def retry_delay(self, *, backoff_base: float) -> int:
        """Seconds until the record comes back: a backoff growing with its messages' failed attempts when an
        upstream did not take one, or with their throttles when an upstream throttled one (never sooner than its
        Retry-After, nor later than the validity of the first of them), else the hand-back's own wait (a second, or
        a held claim's lease)."""
        delays = [math.ceil(max(self.retry_after or 0.0, 1.0))]
        if self.failed_attempts:
            delays.append(backoff_seconds(self.failed_attempts, self.retry_after, base=backoff_base))
        if self.throttles:
            backoff = backoff_seconds(self.throttles, self.retry_after, base=backoff_base)
            if self.throttled_valid_for is not None:
                backoff = min(backoff, max(math.ceil(self.throttled_valid_for) + 1, 1))
            delays.append(backoff)
        return max(delays)


async def dispatch(command: DispatchCommand, deps: DispatchDependencies) -> DispatchOutcome:
    """Idempotent: messages no longer queued (already submitted, cancelled, ...) are skipped, and a message
    is only submitted under a claim, so a duplicate SQS delivery cannot submit it twice."""
    messages = deps.read_ahead
    if messages is None:
        messages = await asyncio.to_thread(
            deps.messages.get_messages, command.account_id, command.reference_id, list(command.message_ids)
        )
    if UNRELEASED_CLAIMS and UNRELEASED_CLAIMS.of(command):
        # The messages are read again once their claims are given back: what was read still shows them claimed.
        await _release_remembered(command, deps)
        messages = await asyncio.to_thread(
            deps.messages.get_messages, command.account_id, command.reference_id, list(command.message_ids)
        )
    outcome = DispatchOutcome(skipped=len(command.message_ids) - len(messages))
    in_flight = deps.in_flight or SubmitSlots(deps.concurrency)
    announcer = _Announcer(deps.announce)

    async def one(message: Message, account_tokens: Mapping[str, int]) -> None:
        await _dispatch_at_its_routes_pace(message, deps, outcome, in_flight, account_tokens)
        # A message's changes are made by its own task only, so these are exactly this message's.
        await announcer.add([c for c in outcome.changes if c.message.message_id == message.message_id])

    pending = [m for m in messages if m.status == MessageStatus.QUEUED]
    outcome.skipped += len(messages) - len(pending)
    if deps.read_ahead is None:
        _expect_route_tokens(pending, deps)
    try:
        # An earlier delivery of this record may have died between a status write and its announcement; what this
        # container saw queued is on the notify queue already (QUEUED_ANNOUNCEMENTS).
        await announcer.add(unannounced_here([c for m in messages for c in changes_since_dispatch(m)]))
        pending, left, withdrawn = await _withdraw_refused(command, pending, deps, outcome)
        await announcer.add(withdrawn)
        if left:
            await _all_to_their_end([_left_to_its_upstream(m, deps, outcome) for m in left])
            await announcer.add([c for c in outcome.changes if c.message.message_id in {m.message_id for m in left}])
        while pending:
            if deps.out_of_time():
                _come_back_soon(pending, outcome)
                break
            # The account's rate limit is shared by every dispatcher container: each grant is one counted write.
            grant = await deps.limiter.grant(deps.rate_scopes, len(pending)) if deps.limiter else Grant(len(pending))
            granted = grant.count
            if granted == 0:
                # Other records took the second's tokens: wait on while the invocation has time. Handing the record
                # back instead would bring it, and the records held behind it, back within seconds, each delivery
                # counted by SQS towards the queue's maxReceiveCount.
                if deps.wait_out_the_rate_limit:
                    continue
                _come_back_soon(pending, outcome)
                break
            now_sending, pending = pending[:granted], pending[granted:]
            await _all_to_their_end([one(m, grant.seconds) for m in now_sending])
        await announcer.add(await _changes_made_meanwhile(command, outcome.moved_on, deps))
    finally:
        # Also when a message's task raised: what was done is announced now, not only by the redelivery.
        await announcer.flush()
        if deps.awaiting_report is not None:
            deps.awaiting_report(_recorded_submitted(messages, outcome))
    return outcome


def route_asks(messages: Iterable[Message], upstreams_for: Callable[[Message], Sequence[Provider]]) -> Counter[str]:
    """How many route tokens these messages will ask, by upstream: one of the upstream each queued one is offered
    first. A message whose upstreams cannot be built now is left out (its own dispatch fails on it)."""
    asks: Counter[str] = Counter()
    for message in messages:
        if message.status != MessageStatus.QUEUED:
            continue
        try:
            upstreams = offered_upstreams(message, upstreams_for)
        except Exception:
            # Its own dispatch meets the failure (an upstream not configured, or not validly) and fails on it.
            upstreams = []
        if upstreams:
            asks[upstreams[0].name] += 1
    return asks


def _expect_route_tokens(pending: Sequence[Message], deps: DispatchDependencies) -> None:
    """Tells the invocation's limiter the route tokens this record's messages will ask, so that it takes a route's
    tokens ahead only for the messages offered to that upstream."""
    if deps.limiter is None:
        return
    asks = route_asks(pending, deps.upstreams_for)
    if asks:
        deps.limiter.expect({route_scope(upstream, None)[0]: count for upstream, count in asks.items()})


async def _withdraw_refused(
    command: DispatchCommand, pending: Sequence[Message], deps: DispatchDependencies, outcome: DispatchOutcome
) -> tuple[list[Message], list[Message], list[StatusChange]]:
    """The record's queued messages still to be offered, those the account may no longer send that were left, and
    the changes made, once those the account may no longer send are failed and refunded, before any is claimed: from
    a sender the account no longer holds (the operator removed it; `sender_removed`), or to a number that opted out
    of the message's sender since it was queued (STOP, STOPALL or an operator's opt-out; `opted_out`). Each by its
    conditional write with its refund, which moves only a message no dispatcher holds and no upstream may have
    (`unheld_only`); the others are left, never to be offered again (`_left_to_its_upstream`): one a duplicate
    delivery of the record is submitting goes on as it would have, its claim deciding. An account with no opt-outs
    costs no read at all."""
    account = deps.account
    if pending and account is None:
        account = await asyncio.to_thread(deps.accounts.get_account, command.account_id)
    senders = dict.fromkeys(m.sender for m in pending)
    if account is not None and not all(holds_sender(account.senders, sender) for sender in senders):
        # The account read may be older than the send: the invocation's is cached settings (up to
        # SETTINGS_MAX_AGE_SECONDS old), and either may come from a replica that lags. A sender added since, whose
        # send the api accepted on the account read fresh, is not a removed one: only a consistent read, which sees
        # every write made before it, tells that the account no longer holds it. Made only then, so the sends of the
        # account's senders cost no read.
        account = await asyncio.to_thread(deps.accounts.get_account, command.account_id, consistent=True)
    if account is None:
        return list(pending), [], []
    refused: dict[str, list[Message]] = {SENDER_REMOVED: [], OPTED_OUT: []}
    for sender in senders:
        of_sender = [m for m in pending if m.sender == sender]
        if not holds_sender(account.senders, sender):
            refused[SENDER_REMOVED] += of_sender
            continue
        numbers = [m.msisdn for m in of_sender]
        found = await asyncio.to_thread(opted_out_of, account, sender, numbers, deps.opt_outs)
        refused[OPTED_OUT] += [m for m in of_sender if m.msisdn in found]
    made: list[StatusChange] = []
    left: list[Message] = []
    for reason, messages in refused.items():
        if not messages:
            continue
        changes = await asyncio.to_thread(
            deps.messages.move_and_refund,
            messages,
            MessageStatus.FAILED,
            now=deps.clock(),
            error_code=reason,
            unheld_only=True,
        )
        moved = [c for c in changes if c is not None and c.changed]
        left += [m for m, c in zip(messages, changes, strict=True) if c is not None and not c.changed]
        if moved:
            logger.info(
                "queued messages the account may no longer send were failed before dispatch",
                extra={"reference_id": command.reference_id, "error_code": reason, "failed": len(moved)},
            )
        made += moved
    for change in made:
        outcome.record(change)
    outcome.failed += len(made)
    withdrawn = {c.message.message_id for c in made} | {m.message_id for m in left}
    return [m for m in pending if m.message_id not in withdrawn], left, made


def _recorded_submitted(read: Sequence[Message], outcome: DispatchOutcome) -> list[Message]:
    """The record's messages found submitted when it was read (but those whose settle check this container saw
    queued, QUEUED_CHECKS), those this dispatch recorded submitted, and those its write found submitted by an interim
    report that overtook it."""
    made = [c.message for c in outcome.changes if c.message.status == MessageStatus.SUBMITTED]
    found = [m for m in read if m.status == MessageStatus.SUBMITTED and m.key not in QUEUED_CHECKS]
    return found + made + outcome.found_submitted


async def _all_to_their_end(coroutines: Sequence[Coroutine[object, object, None]]) -> None:
    """Runs the messages' tasks at once and, when one raises, still lets the others finish their submits and
    writes before raising its exception: a task left running would sit on the container's loop, which outlives
    the invocation, and resume mid-submit in a later one, after the record's retry has claimed its message.
    A dying container's BaseException is raised at once, as itself, and the other tasks are cancelled: nothing of
    it would run on (and none is left to end later with an exception nobody reads)."""
    pending = {asyncio.ensure_future(coroutine) for coroutine in coroutines}
    failures: list[BaseException] = []
    while pending:
        try:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            # The invocation is going down (another record's container death): these go with it, as gather's would.
            for task in pending:
                task.cancel()
            raise
        found = [failure for failure in (task.exception() for task in done) if failure is not None]
        dying = [failure for failure in found if not isinstance(failure, Exception)]
        if dying:
            for task in pending:
                task.cancel()
            raise dying[0]
        failures += found
    if failures:
        raise failures[0]


class _Announcer:
    """Collects the record's client-visible status changes and hands them on ANNOUNCE_BATCH at a time: one hop off
    the event loop per ten changes, not one per message (`announce` may block on an SQS request). The dispatcher
    invocation's announcer (consumers._InvocationAnnouncements) batches again across records, so a record's
    remainder is sent with other records' changes."""

    def __init__(self, announce: Callable[[Sequence[StatusChange]], None] | None) -> None:
        self.announce = announce
        self.waiting: list[StatusChange] = []

    async def add(self, changes: Sequence[StatusChange]) -> None:
        if self.announce is None:
            return
        self.waiting.extend(c for c in changes if dlr_notification(c) is not None)
        while len(self.waiting) >= ANNOUNCE_BATCH:
            ready, self.waiting = self.waiting[:ANNOUNCE_BATCH], self.waiting[ANNOUNCE_BATCH:]
            await asyncio.to_thread(self.announce, ready)

    async def flush(self) -> None:
        if self.announce is not None and self.waiting:
            ready, self.waiting = self.waiting, []
            await asyncio.to_thread(self.announce, ready)


async def _changes_made_meanwhile(
    command: DispatchCommand, moved_on: Sequence[Message], deps: DispatchDependencies
) -> list[StatusChange]:
    """The dispatch changes of messages another dispatcher moved on between this one's read and its claim. That one
    announces them, unless it dies first; this record is then consumed here, and no redelivery of it would come back
    to announce them. So they are announced here as well, under the same webhook ids (the client deduplicates)."""
    wanted = [m.message_id for m in moved_on if m.delivery_report == DeliveryReportMode.YES]
    if deps.announce is None or not wanted:
        return []
    current = await asyncio.to_thread(deps.messages.get_messages, command.account_id, command.reference_id, wanted)
    return unannounced_here([c for m in current for c in changes_since_dispatch(m)])


def changes_since_dispatch(message: Message) -> list[StatusChange]:
    """What an earlier delivery of a record announced, or failed to, for a message no longer queued: the dispatcher's
    change (change_made_by_dispatch) and, for a message a report has since settled, its final change. That one may
    be the change of reports held on the upstream's id that the dispatcher applied as it linked the id, announced
    with the record's changes and lost with them; nothing else would tell the client (the message is final, and
    unmarked). One a webhook applied went out from there: the client drops the repeat by its webhook id."""
    made = change_made_by_dispatch(message)
    if made is None:
        return []
    if message.status not in TERMINAL or made.message.sequence == message.sequence:
        return [made]
    return [made, StatusChange(message=message, changed=True)]


def change_made_by_dispatch(message: Message) -> StatusChange | None:
    """The status change a dispatcher made to a message no longer queued, rebuilt from the statuses its status times
    record, in the order reached (by rank: `accepted` and `queued` share a time, and the store keeps no order): the
    status that followed `queued`, with the sequence number it had then (each later change added one). None for
    a message still queued or never dispatched (cancelled, settled by a DLR that overtook the dispatcher, or
    withdrawn by the undo of its send: `not_queued`)."""
    statuses = reached_in_order(message.status_at)
    if MessageStatus.QUEUED not in statuses or statuses[-1] == MessageStatus.QUEUED:
        return None
    after_queued = statuses.index(MessageStatus.QUEUED) + 1
    if after_queued >= len(statuses) or statuses[after_queued] not in DISPATCHED:
        return None
    made = statuses[after_queued]
    if made == MessageStatus.FAILED and message.error_code == NOT_QUEUED:
        # The send's undo made it, and a failure is final. The send reports it when it stands (logic.send,
        # announce_withdrawn); one undone whole answered 5xx and gave the client no message id to place a report by.
        return None
    if made == message.status:
        return StatusChange(message=message, changed=True)
    later = len(statuses) - after_queued - 1
    # Fields a later change rewrote (a DLR's error code and time) are not the dispatcher's: leave them out.
    then = message.model_copy(
        update={"status": made, "sequence": message.sequence - later, "error_code": None, "reported_at": None}
    )
    return StatusChange(message=then, changed=True)


async def _dispatch_at_its_routes_pace(
    message: Message,
    deps: DispatchDependencies,
    outcome: DispatchOutcome,
    in_flight: SubmitSlots,
    account_tokens: Mapping[str, int],
) -> None:
    """A message dispatched once the route token of the upstream it is offered first is ours. The token is taken
    before the claim: the limiter may wait for it, and its counter write or the upstream's limit may fail; under the
    claim, either left a message that reads as maybe submitted and was never sent. Failing here, the message is simply
    unclaimed (the record fails and comes back, as when the claim's own write fails). And before the submit slot: a
    record waiting for a slow route's tokens would hold the slots the invocation's other records submit in. A message
    held back for a throttle takes none, and gives back the account's it was granted: it is not submitted. One our
    limiter held back under its claim, for a failover at its limit, waits for that upstream's token the same way and
    goes again."""
    upstreams = offered_upstreams(message, deps.upstreams_for) if message.status == MessageStatus.QUEUED else []
    first = upstreams[0].name if upstreams else None
    token = None
    held_back = _held_back_for_a_throttle(first, outcome, deps)
    if held_back is not None:
        # Not offered: the account's tokens taken for it are its other sends' while the upstream's wait lasts (until
        # 2026-12-07 each message held back spent one, and a record held back took seconds of the account's rate).
        if deps.limiter is not None:
            await deps.limiter.give_back_unused(account_tokens)
        await _shut_more_of_the_hold(held_back.upstream, deps)
    elif first is not None:
        try:
            token = await _wait_for_route_token(first, deps, account_tokens)
        except ScopeHeld as hold:
            # Another dispatcher's Retry-After from the upstream: the message is held back as for one of ours.
            held_back = Throttled(first, _note_shared_hold(first, hold, deps))
        else:
            if token is None:
                _come_back_soon([message], outcome)
                return
    await _dispatch_one(message, deps, outcome, in_flight, token, held_back=held_back)
    while (held_by := outcome.held_for.pop(message.message_id, None)) and _waits_on(deps):
        # Its claim was released when our limiter held it back for a failover (its primary down): instead of going
        # back to the queue it waits, unclaimed and without a slot, for that upstream's token (and an account token
        # with it), and is offered to its route again with it, as long as the invocation lasts.
        outcome.retry.remove(message.message_id)
        try:
            token = await _wait_for_route_token(held_by, deps, None)
        except ScopeHeld as hold:
            _note_shared_hold(held_by, hold, deps)
            token = None
        if token is None:
            _come_back_soon([message], outcome)
            return
        await _dispatch_one(message, deps, outcome, in_flight, token)


async def _dispatch_one(
    message: Message,
    deps: DispatchDependencies,
    outcome: DispatchOutcome,
    in_flight: SubmitSlots,
    token: RouteToken | None = None,
    *,
    held_back: Throttled | None = None,
) -> None:
    """`held_back`: the throttle the message was held back for before it waited for its slot (its account's tokens
    given back): it stays held back, even if the throttle ends while it waits."""
    if message.status != MessageStatus.QUEUED:
        outcome.skipped += 1
        return
    async with in_flight.held() as may_claim:
        if not may_claim:
            # The invocation is dying: this slot is one a dying submit gave back. Claimed now, the message would be
            # left claimed as the death reaches it, and taken for one its upstream may have: never sent.
            _come_back_soon([message], outcome)
            return
        if deps.out_of_time():
            # The slot came too late to submit and record the answer before the invocation ends.
            await _route_token_used(token, [], deps)
            _come_back_soon([message], outcome)
            return
        # Claimed only once a submit slot is ours, and submitted at once: a message claimed and left waiting for a
        # slot would, if the dispatcher died meanwhile, be taken for one the upstream may have, and never be sent.
        # The claim names the upstream tried first, so that whoever takes it over after this dispatcher died knows
        # where the message may be.
        upstreams = offered_upstreams(message, deps.upstreams_for)
        throttled_a_moment_ago = held_back or _held_back_for_a_throttle(
            upstreams[0].name if upstreams else None, outcome, deps
        )
        claim = await asyncio.to_thread(
            deps.messages.claim_for_dispatch,
            message.key,
            now=deps.clock(),
            lease_seconds=deps.claim_lease_seconds,
            upstream=upstreams[0].name if upstreams else None,
            attempts_read=message.submit_attempts,
        )
        resumed = resumable(message, claim, deps)
        if resumed is not None:
            message, upstreams = resumed
            outcome.taken_over += 1
        ours = claim.outcome == ClaimOutcome.CLAIMED or resumed is not None
        # Expired only under the claim: without it, a message another dispatcher is submitting right now could be
        # recorded expired and refunded while the upstream takes it.
        too_late = claim.outcome == ClaimOutcome.CLAIMED and deps.clock() > valid_until(message, deps.validity)
        submitting = ours and not too_late
        # A message its upstream's throttle now holds back (another message was throttled while it waited for its
        # slot) gives its token back.
        token_for = await _route_token_used(token, upstreams if submitting and not throttled_a_moment_ago else [], deps)
        sent = (
            (
                throttled_a_moment_ago
                or await _submit(message, upstreams, deps, outcome, token_for=token_for, claim_id=claim.claim_id)
            )
            if submitting
            else None
        )
    if too_late and message.maybe_taken_by is not None:
        # An earlier submit there got no answer: the upstream may be delivering it, so it is left to its DLR rather
        # than expired and refunded.
        await _record_unconfirmed(message, message.maybe_taken_by, deps, outcome)
        return
    if too_late:
        await _finish(message, MessageStatus.EXPIRED, VALIDITY_PERIOD_ENDED, deps, outcome, claim_id=claim.claim_id)
        outcome.expired += 1
        return
    # The status writes come after the slot is given back: the limit is on submits in flight, not store requests.
    if _held_elsewhere(message, claim, deps, outcome):
        return
    if claim.outcome == ClaimOutcome.ABANDONED and sent is None:
        logger.warning("dispatcher died mid-submit before; not resubmitting", extra={"message_id": message.message_id})
        await _record_unconfirmed(message, claim.lapsed_upstream, deps, outcome)
        return
    if isinstance(sent, UpstreamError) or sent is None:
        assert sent is not None, "a claimed message was offered to its upstreams"
        await _not_taken(message, sent, deps, outcome, claim_id=claim.claim_id)
        return
    provider, result = sent
    upstream_message_id = _kept_upstream_id(message, provider.name, result)
    held: list[DeliveryReport] = []
    if upstream_message_id is not None and not getattr(provider, "echoes_client_ref", False):
        # Linked first: a dispatcher that dies before the status write leaves the link (the message, taken over
        # later, is recorded submitted and its DLRs find it). Written after, the link was lost with it, and the DLRs
        # held for good. Reports held on the id are applied once the message reads submitted, in order.
        held = await asyncio.to_thread(_link_upstream_id, message, provider.name, upstream_message_id, deps)
    change = await asyncio.to_thread(
        deps.messages.transition,
        message.key,
        MessageStatus.SUBMITTED,
        now=deps.clock(),
        upstream=provider.name,
        upstream_message_id=upstream_message_id,
    )
    outcome.record(change)
    outcome.submitted += 1
    if held:
        delivery = DeliveryDependencies(
            messages=deps.messages, accounts=deps.accounts, clock=deps.clock, on_change=outcome.record
        )
        await asyncio.to_thread(apply_held_reports, message, held, delivery)


def _held_elsewhere(message: Message, claim: Claim, deps: DispatchDependencies, outcome: DispatchOutcome) -> bool:
    """Whether the claim found the message not ours to take now (moved on, handed back since it was read, or held by
    another dispatcher), the outcome told what comes of it."""
    if claim.outcome == ClaimOutcome.BUSY:
        outcome.skipped += 1
        outcome.moved_on.append(message)
        return True
    if claim.outcome == ClaimOutcome.STALE:
        # Handed back by another dispatcher since it was read, maybe naming an upstream that may have it: offered
        # on what was read, it could go to another upstream too. The record comes back and reads it again.
        _come_back_soon([message], outcome)
        return True
    if claim.outcome == ClaimOutcome.HELD:
        # Its holder may die before the lease lapses; only a later look can then find the lease lapsed, so this
        # record comes back once it has (a duplicate delivery of the holder's own record must not consume it).
        outcome.retry.append(message.message_id)
        outcome.retry_after = max(outcome.retry_after or 0.0, float(deps.claim_lease_seconds))
        return True
    return False


async def _left_to_its_upstream(message: Message, deps: DispatchDependencies, outcome: DispatchOutcome) -> None:
    """A queued message the account may no longer send (`_withdraw_refused`) that its withdrawal left, as one an
    upstream may have: an earlier submit there got no answer (`maybe_taken_by`), or its holder died mid-submit (a
    lapsed claim). It is never offered again, not even to an upstream that deduplicates by our reference: one that
    never got it would send a new SMS from a sender the account no longer holds, or to a number that texted STOP.
    Under a claim, it is recorded submitted-unconfirmed at that upstream, without a refund, and its DLR (or its
    settle check) settles it. One a live claim holds comes back once the lease has lapsed; one handed back without
    an upstream that may have it since it was read, at once, to be failed and refunded."""
    claim = await asyncio.to_thread(
        deps.messages.claim_for_dispatch,
        message.key,
        now=deps.clock(),
        lease_seconds=deps.claim_lease_seconds,
        upstream=message.maybe_taken_by,
        attempts_read=message.submit_attempts,
    )
    if _held_elsewhere(message, claim, deps, outcome):
        return
    if claim.outcome == ClaimOutcome.ABANDONED:
        await _record_unconfirmed(message, claim.lapsed_upstream, deps, outcome)
    elif message.maybe_taken_by is not None:
        await _record_unconfirmed(message, message.maybe_taken_by, deps, outcome)
    else:
        await _release(message, deps, claim_id=claim.claim_id, attempted=False)
        _come_back_soon([message], outcome)


async def _record_unconfirmed(
    message: Message, upstream: str | None, deps: DispatchDependencies, outcome: DispatchOutcome
) -> None:
    """At most once: `upstream` may already have the message (its DLR will find it by our reference), so it is
    recorded as submitted there without an upstream id rather than submitted again, and settled if no DLR comes.
    The upstream is recorded: only its reports may settle the message."""
    change = await asyncio.to_thread(
        deps.messages.transition,
        message.key,
        MessageStatus.SUBMITTED,
        now=deps.clock(),
        upstream=upstream,
        error_code=SUBMIT_UNCONFIRMED,
    )
    outcome.record(change)
    outcome.unconfirmed += 1


def _come_back_soon(messages: Sequence[Message], outcome: DispatchOutcome) -> None:
    """Unclaimed messages back to the queue for a second or so: out of rate-limit grants, or of invocation time
    (the next invocation has its whole time for them)."""
    outcome.retry.extend(m.message_id for m in messages)
    outcome.retry_after = max(outcome.retry_after or 0.0, 1.0)


def offered_upstreams(message: Message, upstreams_for: Callable[[Message], Sequence[Provider]]) -> list[Provider]:
    """The upstreams a message is offered to, in order: its route's; or, when an earlier submit got no answer from
    one, only that one (it answers a repeat of our reference with its first answer), and none if the route no
    longer names it."""
    upstreams = list(upstreams_for(message))
    if message.maybe_taken_by is None:
        return upstreams
    return [provider for provider in upstreams if provider.name == message.maybe_taken_by]


def resumable(message: Message, claim: Claim, deps: DispatchDependencies) -> tuple[Message, list[Provider]] | None:
    """A message whose lapsed claim this dispatcher took over, if it may be submitted again, and the one upstream it
    is offered to: the dead holder was submitting it to an upstream that deduplicates by our reference, still on its
    route, and attempts remain (the holder's counts, and the takeover counted it). It is then offered to that
    upstream alone, exactly as after a submit there that got no answer. None otherwise: the message is recorded
    submitted, unconfirmed."""
    if claim.outcome != ClaimOutcome.ABANDONED or claim.lapsed_upstream is None:
        return None
    attempts = message.submit_attempts + 1
    resumed = message.model_copy(update={"maybe_taken_by": claim.lapsed_upstream, "submit_attempts": attempts})
    there = offered_upstreams(resumed, deps.upstreams_for)
    if not there or not getattr(there[0], "deduplicates_submits", False) or attempts >= deps.max_submit_attempts:
        return None
    if deps.clock() > valid_until(message, deps.validity):
        # Too late to send, and maybe sent: left to its DLR rather than expired and refunded.
        return None
    logger.warning(
        "dispatcher died mid-submit before; asking its upstream again, which deduplicates by our reference",
        extra={"message_id": message.message_id, "upstream": claim.lapsed_upstream},
    )
    return resumed, there


async def _submit(
    message: Message,
    upstreams: Sequence[Provider],
    deps: DispatchDependencies,
    outcome: DispatchOutcome,
    *,
    token_for: str | None = None,
    claim_id: str | None = None,
) -> tuple[Provider, SubmitResult] | UpstreamError:
    """The upstream that took the claimed message and its answer, trying `upstreams` in order; or why none took
    it. `token_for` names the upstream whose route token was taken before the claim; `claim_id`, the claim."""
    failure: UpstreamError | None = None
    if not upstreams and message.maybe_taken_by is not None:
        return MaybeSent(
            message.maybe_taken_by, f"{message.maybe_taken_by} may have the message and is no longer on its route"
        )
    for tried, provider in enumerate(upstreams):
        if tried and deps.out_of_time():
            # A failover is a second submit under the claim: begun this late, it could still be waiting for its
            # answer when the invocation ends, and the message be taken over later for one that may have gone out.
            # Counted as the attempt the upstream before it failed; the next delivery has its whole time for both.
            return UpstreamError(f"no time left in the invocation to offer it to {provider.name}", permanent=False)
        shared: UpstreamError | None = None
        try:
            held = None if provider.name == token_for else await _route_refuses_under_claim(message, provider, deps)
        except ScopeHeld as hold:
            # Its Retry-After, met by another dispatcher: what its own 429 would be, without the request.
            held, shared = None, _note_shared_hold(provider.name, hold, deps)
        if held is not None and failure is not None and held.counter_failed:
            # A token that cannot be taken at all counts the failure of the upstream before it as an attempt.
            return UpstreamError(held.message, permanent=False, retry_after=1.0)
        if held is not None:
            # A route at its limit is a throttle: wait for it rather than fail over, and not an attempt, also when an
            # upstream before it failed this one (a primary down, its fallback at the limit we set for it).
            return held
        try:
            moved = not tried or await asyncio.to_thread(
                deps.messages.move_claim,
                message.key,
                from_upstream=upstreams[tried - 1].name,
                to_upstream=provider.name,
                claim_id=claim_id,
            )
        except Exception as error:
            # Not offered to it, the upstream before it having refused it: a transient failure, the claim released
            # (left held, it would read as one the upstream it names may have once its lease lapsed).
            logger.exception("could not name the failover on the claim", extra={"message_id": message.message_id})
            return UpstreamError(f"could not name {provider.name} on the claim: {error!r}"[:300], permanent=False)
        if not moved:
            # The claim names where the message may be before it goes there; a claim no longer ours stops here.
            break
        try:
            if shared is not None:
                raise shared
            async with outcome.submits.submitting(provider.name):
                sent_at = deps.clock()
                result = await provider.submit(_submit_request(message, provider, deps))
            UPSTREAM_RETRY_AFTER.note_accepted(provider.name, sent_at)
            return provider, result
        except UpstreamError as error:
            unavailable_before, failure = failure, error
            if error is not shared:
                # Only a request that failed is an upstream failure (the failure-rate alarm's): a hold met without one
                # counted one until session 36, and a fallback's Retry-After met on every failover raised the alarm.
                outcome.upstream_failures[(provider.name, error.kind)] += 1
            logger.warning(
                "upstream did not take the message",
                extra={
                    "message_id": message.message_id,
                    "msisdn": mask_msisdn(message.msisdn),
                    "upstream": provider.name,
                    "error": error.message,
                    "permanent": error.permanent,
                },
            )
            if error.maybe_taken:
                # The upstream may have it: no other upstream is offered it, which could send it twice. One that
                # answers a repeat of our reference with its first answer is asked again later; any other never.
                if getattr(provider, "deduplicates_submits", False):
                    return MaybeTakenBy(provider.name, error)
                return MaybeSent(provider.name, error.message)
            if (unavailable_before is None or unavailable_before.permanent) and error.throttled:
                # The upstream is up and asks us to slow down: no failover, no attempt (an upstream before it that
                # was unavailable for now makes it one, as for our own route limit; one that can never take the
                # message does not: this upstream is the message's only way out). Noted at once, before the slot
                # is given back: the record's next message must not be offered to it meanwhile.
                outcome.throttled_by.add(provider.name)
                if not error.per_message and error is not shared:
                    await _hold_upstream(provider.name, error.retry_after, deps)
                return Throttled(provider.name, error)
            if unavailable_before is not None and not unavailable_before.permanent and error.permanent:
                # A fallback's refusal says nothing of the primary, which was only unavailable for now: the sender
                # ID, the number range or the content may be registered with the primary alone. The message waits for
                # the primary, a transient failure counted as an attempt; only the primary's own refusal fails it.
                # (A primary that can never take it, too many parts for it, leaves the fallback's refusal final.)
                return UpstreamError(
                    f"{unavailable_before.message}; {provider.name} refused it: {error.message}",
                    permanent=False,
                    unavailable=True,
                    retry_after=unavailable_before.retry_after,
                )
            if not error.unavailable:
                break
    assert failure is not None, "a route names at least one upstream"
    return failure


class RouteAtItsLimit(UpstreamError):
    """Our own limiter held a claimed message back for its upstream's messages-per-second: not an attempt."""

    def __init__(self, upstream: str, *, counter_failed: bool = False) -> None:
        why = "its rate-limit token could not be taken" if counter_failed else "it is at its rate limit"
        super().__init__(f"{upstream}: {why}", permanent=False, retry_after=1.0)
        self.upstream = upstream
        self.counter_failed = counter_failed


class Throttled(UpstreamError):
    """The first upstream offered the message throttled it (429, or any answer that asks us to slow down): it is up
    and would take the message later. Not an attempt; the message waits within its validity."""

    def __init__(self, upstream: str, error: UpstreamError) -> None:
        super().__init__(
            error.message, permanent=False, retry_after=error.retry_after, unavailable=False, throttled=True
        )
        self.upstream = upstream


class MaybeTakenBy(UpstreamError):
    """No answer came from an upstream that deduplicates by our reference: it may have the message, and is the only
    upstream that may be asked again (a transient failure)."""

    def __init__(self, upstream: str, error: UpstreamError) -> None:
        super().__init__(error.message, permanent=False, retry_after=error.retry_after, maybe_taken=True)
        self.upstream = upstream


class MaybeSent(UpstreamError):
    """No answer came from an upstream that cannot tell a repeated submit from a new one, after the request
    reached it: it may have taken the message, so the message is never offered again."""

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(message, permanent=True, maybe_taken=True)
        self.upstream = upstream


async def _not_taken(
    message: Message,
    failure: UpstreamError,
    deps: DispatchDependencies,
    outcome: DispatchOutcome,
    *,
    claim_id: str | None,
) -> None:
    """A claimed message no upstream took: back to the queue, its claim released, after a transient failure while
    attempts remain; otherwise failed and refunded. One our route limit held back comes back without an attempt
    counted, and so does one its upstream throttled, after a backoff that grows with its throttles. One an upstream
    may have taken (no answer) is recorded submitted-unconfirmed instead of being offered again, unless that
    upstream deduplicates by our reference and attempts remain."""
    if isinstance(failure, RouteAtItsLimit):
        # A message taken over from a dead holder keeps the name of the upstream that may have it: released without
        # it, the next delivery would offer it to the whole route, and another upstream could send it a second time.
        await _release_unattempted(message, deps, claim_id)
        _come_back_soon([message], outcome)
        outcome.held_for[message.message_id] = failure.upstream
        return
    if isinstance(failure, Throttled):
        await _throttled(message, failure, deps, outcome, claim_id=claim_id)
        return
    attempt = message.submit_attempts + 1
    taken_by = failure.upstream if isinstance(failure, MaybeTakenBy) else message.maybe_taken_by
    final = failure.permanent or attempt >= deps.max_submit_attempts
    if isinstance(failure, MaybeSent) or (taken_by is not None and final):
        # Failing and refunding a message an upstream may be delivering would be a wrong report: its DLR settles it.
        logger.warning(
            "upstream may have taken the message; not resubmitting",
            extra={"message_id": message.message_id, "upstream": taken_by, "error": failure.message},
        )
        carrier = failure.upstream if isinstance(failure, MaybeSent | MaybeTakenBy) else taken_by
        await _record_unconfirmed(message, carrier, deps, outcome)
        return
    if not final:
        await _release(message, deps, claim_id=claim_id, maybe_taken_by=taken_by)
        outcome.retry.append(message.message_id)
        outcome.failed_attempts = max(outcome.failed_attempts, attempt)
        if failure.retry_after is not None:
            outcome.retry_after = max(outcome.retry_after or 0.0, failure.retry_after)
        return
    reason = failure.error_code or ("upstream_rejected" if failure.permanent else "upstream_unavailable")
    await _finish(message, MessageStatus.FAILED, reason, deps, outcome, claim_id=claim_id)
    outcome.failed += 1


async def _throttled(
    message: Message, failure: Throttled, deps: DispatchDependencies, outcome: DispatchOutcome, *, claim_id: str | None
) -> None:
    """A throttled message back to the queue, no attempt counted: its record waits a backoff growing with the
    message's throttles (at least the Retry-After, at most BACKOFF_CAP_SECONDS unless the Retry-After asks more), and
    comes back by the end of the message's validity, when the message is expired and refunded like any other. At
    MAX_SUBMIT_THROTTLES it is failed `upstream_throttled` and refunded, or, when an upstream may have it, left to its
    DLR (submitted-unconfirmed). Its throttle counts only when the upstream took none of the record's messages in
    this delivery: one that took some is slowing us down, not refusing, and the record comes back after a first
    throttle's wait. Until 2026-12-06 every delivery counted a throttle on each message left, and an upstream taking
    three messages a delivery had the tail of a 100-message record failed on its 24th."""
    if await outcome.submits.took_some(failure.upstream):
        await _release_unattempted(message, deps, claim_id)
        _back_after_a_throttle(message, failure, 1, deps, outcome)
        return
    if message.submit_throttles + 1 >= MAX_SUBMIT_THROTTLES:
        if message.maybe_taken_by is not None:
            # An earlier submit with no answer may have reached that upstream: its DLR settles the message, never a
            # failure and refund while it may be delivered.
            await _record_unconfirmed(message, message.maybe_taken_by, deps, outcome)
            return
        await _finish(message, MessageStatus.FAILED, UPSTREAM_THROTTLED, deps, outcome, claim_id=claim_id)
        outcome.failed += 1
        return
    await _release_unattempted(message, deps, claim_id, throttled=True)
    _back_after_a_throttle(message, failure, message.submit_throttles + 1, deps, outcome)


async def _release_unattempted(
    message: Message, deps: DispatchDependencies, claim_id: str | None, *, throttled: bool = False
) -> None:
    """The claim `claim_id` names given back with no attempt counted (the message was held back, not refused),
    keeping the upstream that may have the message; `throttled` counts an upstream's throttle."""
    await _release(
        message, deps, claim_id=claim_id, attempted=False, maybe_taken_by=message.maybe_taken_by, throttled=throttled
    )


class UnreleasedClaims:
    """The claims this container could not give back after their messages were not taken (the store failing past
    RELEASE_ATTEMPTS), with how each was to be released, by message; at most `limit`, the oldest forgotten first.
    Left held, a claim reads, once its lease lapses, as one whose holder died mid-submit: its message, which no
    upstream has, would be recorded submitted-unconfirmed and never sent. When the record comes back to this
    container (the failed release failed the record), the claim is given back before anything else is done."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._releases: OrderedDict[MessageKey, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._releases)

    def remember(self, key: MessageKey, release: dict[str, Any]) -> None:
        self._releases[key] = release
        self._releases.move_to_end(key)
        while len(self._releases) > self.limit:
            self._releases.popitem(last=False)

    def of(self, command: DispatchCommand) -> dict[MessageKey, dict[str, Any]]:
        return {key: self._releases[key] for key in _keys_of(command) if key in self._releases}

    def forget(self, key: MessageKey, release: dict[str, Any]) -> None:
        if self._releases.get(key) == release:
            del self._releases[key]

    def clear(self) -> None:
        self._releases.clear()


UNRELEASED_CLAIMS = UnreleasedClaims()


class RecentlyQueued:
    """What this container saw the notify queue take for its dispatches, the latest `limit` keys. A record comes back
    after a delivery that died, and also after one that handed it back on purpose (an upstream's 5xx or throttle
    for one of its messages, a route's limit, the invocation's time), having queued every change it made and its
    settle check first. For the one that died, a redelivery announces again what the dispatcher changed
    (changes_since_dispatch) and asks again to settle the messages it finds submitted; what this container saw
    queued is on the queue, and is not queued again. Another container, or a fresh one, knows nothing of it and
    queues it all as before. Until 2026-12-06 each delivery queued it all again: a bulk record retried after three
    5xx told the client of each submit three or four times, and each of the checks asking again for an expired
    message announced its expiry again (repeats the client drops by webhook id, but posts, and notify-queue depth)."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        # remember() is called from the records' worker threads (consumers._InvocationAnnouncements).
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def remember(self, keys: Iterable[Hashable]) -> None:
        """Called once the notify queue took what `keys` name."""
        with self._lock:
            for key in keys:
                self._keys[key] = None
                self._keys.move_to_end(key)
            while len(self._keys) > self.limit:
                self._keys.popitem(last=False)

    def clear(self) -> None:
        self._keys.clear()


# The webhook ids of the client notifications queued (consumers._InvocationAnnouncements, _queue_the_rest).
QUEUED_ANNOUNCEMENTS = RecentlyQueued()
# The keys of the messages a settle check was queued for (consumers._queue_the_rest).
QUEUED_CHECKS = RecentlyQueued()


def unannounced_here(changes: Iterable[StatusChange]) -> list[StatusChange]:
    """`changes` but those whose client notification this container saw queued (QUEUED_ANNOUNCEMENTS)."""
    return [c for c in changes if (n := dlr_notification(c)) is None or str(n["id"]) not in QUEUED_ANNOUNCEMENTS]


async def _release(message: Message, deps: DispatchDependencies, **release: Any) -> None:
    """Gives back the claim on a message no upstream took (`release`: MessageStore.release_claim's arguments, the
    claim's id among them, so a repeat never counts twice nor drops another's lease), trying RELEASE_ATTEMPTS times;
    then remembered in UNRELEASED_CLAIMS, and the store's error raised: the record comes back."""
    await _give_back(message.key, release, deps)


async def _give_back(key: MessageKey, release: dict[str, Any], deps: DispatchDependencies) -> None:
    for attempt in range(1, RELEASE_ATTEMPTS + 1):
        try:
            await asyncio.to_thread(deps.messages.release_claim, key, **release)
        except Exception:
            if attempt < RELEASE_ATTEMPTS:
                await asyncio.sleep(RELEASE_RETRY_SECONDS * attempt)
                continue
            logger.exception(
                "could not give the claim back; it is given back when the record comes back",
                extra={"message_id": key.message_id},
            )
            UNRELEASED_CLAIMS.remember(key, release)
            raise
        UNRELEASED_CLAIMS.forget(key, release)
        return


async def _release_remembered(command: DispatchCommand, deps: DispatchDependencies) -> None:
    """Gives back the record's claims an earlier delivery could not (UnreleasedClaims); raises while it cannot."""
    for key, release in UNRELEASED_CLAIMS.of(command).items():
        logger.info("giving back a claim an earlier delivery could not", extra={"message_id": key.message_id})
        await _give_back(key, release, deps)


def _back_after_a_throttle(
    message: Message, failure: Throttled, throttles: int, deps: DispatchDependencies, outcome: DispatchOutcome
) -> None:
    """A released message's record comes back after a backoff grown with `throttles`, by its validity's end."""
    outcome.retry.append(message.message_id)
    outcome.throttles = max(outcome.throttles, throttles)
    valid_for = (valid_until(message, deps.validity) - deps.clock()).total_seconds()
    if outcome.throttled_valid_for is None or valid_for < outcome.throttled_valid_for:
        outcome.throttled_valid_for = valid_for
    if failure.retry_after is not None:
        outcome.retry_after = max(outcome.retry_after or 0.0, failure.retry_after)


def _held_back_for_a_throttle(
    upstream: str | None, outcome: DispatchOutcome, deps: DispatchDependencies
) -> Throttled | None:
    """The throttle a message meets without a request when its upstream throttled another message of this dispatch a
    moment ago, or asked this container to come back no sooner than a time still to come (UPSTREAM_RETRY_AFTER: any
    record's 429 with a Retry-After, or another dispatcher's hold on its route): offered now, it would be another
    429. It is claimed and released like a throttled one, its throttle counted, so that a record an upstream
    throttles whole is done within MAX_SUBMIT_THROTTLES returns (each message failed `upstream_throttled` at its
    last), as when every message was offered, and its record waits out what is left of the Retry-After; None when it
    may be offered."""
    if upstream is None:
        return None
    wait = UPSTREAM_RETRY_AFTER.seconds_left(upstream, deps.clock())
    if upstream not in outcome.throttled_by and wait is None:
        return None
    why = f"{upstream} throttled a moment ago: not offered"
    return Throttled(upstream, UpstreamError(why, permanent=False, throttled=True, retry_after=wait))


class UpstreamRetryAfter:
    """When each upstream that throttled this container with a Retry-After may be asked again (a wait for one message
    alone, `UpstreamError.per_message`, is not noted). Every record of the container's invocations holds its messages
    for that upstream back until then, not only the record the 429 answered: until 2026-12-07 each record offered the
    upstream a message of its own within the time it had asked for, one more 429 each. Other containers learn of it
    through the route's rate-limit counters for an upstream with a route limit (`_hold_upstream`, `_note_shared_hold`,
    which notes it here as theirs); for any other upstream each meets one 429 of its own."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}
        # By upstream: its route's hold as this container last learnt it recorded (its end, its last second shut).
        self._recorded: dict[str, RecordedHold] = {}
        # By upstream: when this container sent the last request the upstream accepted.
        self._accepted: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def note_accepted(self, upstream: str, sent_at: datetime) -> None:
        with self._lock:
            if upstream not in self._accepted or sent_at > self._accepted[upstream]:
                self._accepted[upstream] = sent_at

    def accepted_at(self, upstream: str) -> float | None:
        """When this container sent the last request `upstream` accepted (Unix seconds; None: none yet)."""
        sent_at = self._accepted.get(upstream)
        return None if sent_at is None else sent_at.timestamp()

    def cut(self, upstream: str, recorded: RecordedHold) -> None:
        """The route's hold recorded shorter than the one noted here: cut by a container the upstream accepted
        messages from after it last asked for it (RecordedHold.with_hold). Held here no longer than that either."""
        with self._lock:
            noted = self._until.get(upstream)
            until = datetime.fromtimestamp(recorded.until, tz=UTC)
            if noted is not None and until < noted:
                self._until[upstream] = until
            self._recorded[upstream] = recorded

    def note_recorded(self, upstream: str, recorded: RecordedHold) -> None:
        with self._lock:
            self._recorded[upstream] = recorded

    def hold_to_shut_further(self, upstream: str, now: float) -> float | None:
        """When the route's hold this container learnt of ends, when it lasts past the counters it shut and those end
        within SHUT_AHEAD_SECONDS: its counters are to be shut further. Noted as if done (up to MAX_HELD_SECONDS
        ahead), so that the container's other messages held back meanwhile do not write it again."""
        with self._lock:
            recorded = self._recorded.get(upstream)
            if (
                recorded is None
                or recorded.until <= recorded.through + 1
                or now < recorded.through + 1 - SHUT_AHEAD_SECONDS
            ):
                return None
            self._recorded[upstream] = RecordedHold(recorded.until, math.floor(now) + MAX_HELD_SECONDS - 1)
            return recorded.until

    def note(self, upstream: str, retry_after: float | None, now: datetime) -> None:
        if not retry_after:
            return
        until = now + timedelta(seconds=retry_after)
        with self._lock:
            noted = self._until.get(upstream)
            if noted is None or until > noted:
                self._until[upstream] = until

    def seconds_left(self, upstream: str, now: datetime) -> float | None:
        """Seconds until `upstream` may be asked again; None when it may be now."""
        until = self._until.get(upstream)
        return None if until is None or until <= now else (until - now).total_seconds()

    def clear(self) -> None:
        with self._lock:
            self._until.clear()
            self._recorded.clear()
            self._accepted.clear()


# How long before the counters a hold shut end a container that holds a message back for it (the hold lasting longer:
# a Retry-After of an hour or a day) shuts more of them, up to MAX_HELD_SECONDS ahead: about one write of the hold item
# a container and 300 counter puts in all every 5 minutes, while the fleet has messages for the upstream.
SHUT_AHEAD_SECONDS = 300
UPSTREAM_RETRY_AFTER = UpstreamRetryAfter()
# How much later than the hold this container runs on an upstream a Retry-After must end to be shared again: the 429s
# of the submits in flight with the first, answered a moment after it with the same wait, write nothing.
LONGER_HOLD_SECONDS = 1.0


async def _hold_upstream(upstream: str, retry_after: float | None, deps: DispatchDependencies) -> None:
    """An upstream's Retry-After, held in this container (UPSTREAM_RETRY_AFTER) and, for an upstream with a rate
    limit, in its route's counters, which every dispatcher takes a token from before it offers the upstream a
    message: they learn of it there, without a request more (`_note_shared_hold`). Written when no hold runs here,
    and again when it ends LONGER_HOLD_SECONDS or more after the one that runs (its own or another dispatcher's):
    until 2026-12-07 a later, longer wait (the upstream's daily quota spent after its per-second limit) was kept here
    alone, and every other container met a 429 of its own when the shorter one ended."""
    now = deps.clock()
    left = UPSTREAM_RETRY_AFTER.seconds_left(upstream, now)
    UPSTREAM_RETRY_AFTER.note(upstream, retry_after, now)
    limit = deps.route_limit(upstream)
    if not retry_after or not limit or deps.limiter is None:
        return
    if left is not None and retry_after < left + LONGER_HOLD_SECONDS:
        return
    resumed_at = UPSTREAM_RETRY_AFTER.accepted_at(upstream)
    recorded = await deps.limiter.hold(route_scope(upstream, limit)[0], retry_after, resumed_at=resumed_at)
    if recorded is not None:
        UPSTREAM_RETRY_AFTER.note_recorded(upstream, recorded)


async def _shut_more_of_the_hold(upstream: str, deps: DispatchDependencies) -> None:
    """A hold on the upstream's route longer than the counters it shut (MAX_HELD_SECONDS: a Retry-After of an hour or
    a day), kept shut ahead by the containers that hold messages back for it (`hold_to_shut_further`): a container
    that never learnt of it (a new one) still meets it at its route token, as within the first counters.
    Until session 38 past them it offered the upstream its messages and met a 429 of its own, and so did a new
    container every 10 minutes all day. Only on a message held back, never on the normal path."""
    limit = deps.route_limit(upstream)
    if not limit or deps.limiter is None:
        return
    until = UPSTREAM_RETRY_AFTER.hold_to_shut_further(upstream, deps.clock().timestamp())
    if until is None:
        return
    recorded = await deps.limiter.shut_more_of_hold(route_scope(upstream, limit)[0], until)
    if recorded is not None:
        # Recorded shorter than it learnt, the hold was replaced (the upstream accepted messages again): no longer held
        # here past the recorded end either.
        UPSTREAM_RETRY_AFTER.cut(upstream, recorded)


def _note_shared_hold(upstream: str, hold: ScopeHeld, deps: DispatchDependencies) -> UpstreamError:
    """A hold another dispatcher put on the upstream's route (its Retry-After), held in this container too; and the
    throttle it stands for."""
    left = max(hold.until - deps.clock().timestamp(), 1.0)
    UPSTREAM_RETRY_AFTER.note(upstream, left, deps.clock())
    UPSTREAM_RETRY_AFTER.note_recorded(upstream, RecordedHold(hold.until, hold.through))
    why = f"{upstream} asked another dispatcher to come back in {math.ceil(left)} s: not offered"
    return UpstreamError(why, permanent=False, throttled=True, retry_after=left)


def _kept_upstream_id(message: Message, upstream: str, result: SubmitResult) -> str | None:
    """The id the upstream took the message under, or None when it is too long to keep (usable_upstream_id): the
    message is then recorded submitted without it, as after a submit that got no answer. Kept, it would be a key
    DynamoDB refuses (the link, the settle check's link), and no report naming it is ever matched (logic/delivery):
    an upstream that reports by our reference still settles the message, and the settle check any other."""
    if usable_upstream_id(result.upstream_message_id):
        return result.upstream_message_id
    logger.warning(
        f"upstream took the message under an id over {MAX_UPSTREAM_ID_BYTES} bytes; recorded submitted without it",
        extra={
            "message_id": message.message_id,
            "upstream": upstream,
            "upstream_message_id": result.upstream_message_id[:64],
        },
    )
    return None


def _link_upstream_id(
    message: Message, upstream: str, upstream_message_id: str, deps: DispatchDependencies
) -> list[DeliveryReport]:
    """Links the id of an upstream that reports by its own id alone to the message: the reports held on it before.
    A link that cannot be written is logged and left to the settle check, which links the id the status write
    stores on the message (and applies what was held on it) before it would expire the message."""
    try:
        return deps.messages.link_upstream_id(upstream, upstream_message_id, message.key, now=deps.clock())
    except Exception:
        logger.exception(
            "could not link the upstream's id to the message; its settle check will",
            extra={"message_id": message.message_id, "upstream": upstream, "upstream_message_id": upstream_message_id},
        )
        return []


async def _route_refuses_under_claim(
    message: Message, provider: Provider, deps: DispatchDependencies
) -> RouteAtItsLimit | None:
    """None once the route token is taken while the message is claimed (a failover, or the upstream a taken-over claim
    named); else the route stayed at its limit for a second, or its token could not be taken at all (`counter_failed`).
    Either way the claim is released and the message comes back soon. Until 2026-12-05 a failure left the claim held,
    and the record's redelivery took the message for one the upstream may have: recorded submitted-unconfirmed, and
    never sent."""
    try:
        if await _take_route_token(provider.name, deps) is not None:
            return None
    except ScopeHeld:
        raise
    except Exception:
        logger.exception(
            "could not take the upstream's rate-limit token; the message comes back",
            extra={"message_id": message.message_id, "upstream": provider.name},
        )
        return RouteAtItsLimit(provider.name, counter_failed=True)
    return RouteAtItsLimit(provider.name)


@dataclass(frozen=True)
class RouteToken:
    """A route's token taken before the claim: its upstream, and the second each scope counted it in: the route's,
    and the account's when they were taken together (none: no limit)."""

    upstream: str
    seconds: Mapping[str, int] = field(default_factory=dict)


async def _wait_for_route_token(
    upstream: str, deps: DispatchDependencies, account_tokens: Mapping[str, int] | None
) -> RouteToken | None:
    """The route token of the upstream a message is offered first, or of a failover that held it back (no
    `account_tokens`: its account token was spent on the upstream before). When the route is at its limit this second,
    the account's tokens taken for the message go back (for the account's other messages this second, its priority lane
    among them) and are taken again with the route's. The message waits for them up to a second, or, when the handler
    waits out the rate limit, until the invocation's end (`out_of_time`), as for the account's limit. Until 2026-12-06
    it waited a second whatever the handler chose, and the record went back to the queue with the route's held-back
    messages: at 2 a second, 6 of a record's 100 a delivery, each one more receive of the records behind it in the
    account's FIFO group, which passed maxReceiveCount and were dead-lettered unsent. None: it comes back."""
    limit = deps.route_limit(upstream)
    if not limit or deps.limiter is None:
        return RouteToken(upstream)
    route = route_scope(upstream, limit)
    if account_tokens is not None:
        try:
            second = await deps.limiter.acquire_one(route, max_wait_seconds=0.0)
        except ScopeHeld:
            # Held back for the upstream's wait: the account's tokens go back as below (the grant gives back its own).
            await deps.limiter.give_back_unused(account_tokens)
            raise
        if second is not None:
            return RouteToken(upstream, {route[0]: second})
        await deps.limiter.give_back_unused(account_tokens)
    # The account's tokens this invocation keeps for the second go back to the store while the route holds its
    # messages back: the account's priority lane, another invocation, may send with them.
    accounts = [name for name, limit in deps.rate_scopes if limit]
    while True:
        grant = await deps.limiter.grant(
            [*deps.rate_scopes, route], 1, max_wait_seconds=1.0, lend_while_waiting=accounts
        )
        if grant.count:
            return RouteToken(upstream, grant.seconds)
        if not _waits_on(deps):
            return None


def _waits_on(deps: DispatchDependencies) -> bool:
    """Whether a message the rate limit holds back waits on in the invocation rather than going back to the queue."""
    return deps.wait_out_the_rate_limit and not deps.out_of_time()


async def _take_route_token(upstream: str, deps: DispatchDependencies) -> RouteToken | None:
    """The upstream's route token, or None when its route stayed at its limit for a second."""
    limit = deps.route_limit(upstream)
    if not limit or deps.limiter is None:
        return RouteToken(upstream)
    second = await deps.limiter.acquire_one(route_scope(upstream, limit), max_wait_seconds=1.0)
    return None if second is None else RouteToken(upstream, {route_scope(upstream, None)[0]: second})


async def _route_token_used(
    token: RouteToken | None, submitted_to: Sequence[Provider], deps: DispatchDependencies
) -> str | None:
    """The upstream whose token, taken before the claim, a submit to `submitted_to` uses: the first, or the failover a
    moment ago held back at its limit (when an upstream before it takes the message after all, that token stays counted:
    fewer sends that second, never more). None, and the token given back for the route's other messages this second
    (with the account's taken with it), when the message is not submitted there after all (the claim is another's, the
    message too late, or a takeover resumed it at another upstream). Until 2026-12-05 it was kept: a duplicate delivery
    of a record took its route's tokens for nothing."""
    if token is None:
        return None
    if any(provider.name == token.upstream for provider in submitted_to):
        return token.upstream
    if deps.limiter is not None:
        await deps.limiter.give_back_unused(token.seconds)
    return None


def _submit_request(message: Message, provider: Provider, deps: DispatchDependencies) -> SubmitRequest:
    left = valid_until(message, deps.validity) - deps.clock()
    return SubmitRequest(
        client_ref=message.key.to_ref(),
        sender=message.sender,
        msisdn=message.msisdn,
        text=message.text,
        session_id=message.session_id,
        dlr_url=f"{deps.callback_base_url.rstrip('/')}/callbacks/{provider.name}/dlr",
        validity_minutes=max(1, int(left.total_seconds() // 60)),
    )


def valid_until(message: Message, validity: timedelta) -> datetime:
    """By the rule the release expires a late scheduled batch with (domain.models.validity_ends)."""
    return validity_ends(
        created_at=message.created_at,
        send_at=message.send_at,
        queued_at=message.status_at.get(str(MessageStatus.QUEUED)),
        validity=validity,
    )


async def _finish(
    message: Message,
    status: MessageStatus,
    error_code: str,
    deps: DispatchDependencies,
    outcome: DispatchOutcome,
    *,
    claim_id: str | None = None,
) -> None:
    """A final state reached before delivery: the conditional write decides, and the write that made the change
    refunds in the same transaction, so a retried record never refunds twice and a crash never loses the refund.
    A write that fails gives the claim `claim_id` back, so that the record's return decides the message again rather
    than take it for one its dead holder may have sent."""
    try:
        change = await asyncio.to_thread(
            deps.messages.transition, message.key, status, now=deps.clock(), error_code=error_code, refund=True
        )
    except Exception:
        if claim_id is not None:
            await _release(message, deps, claim_id=claim_id, attempted=False, maybe_taken_by=message.maybe_taken_by)
        raise
    outcome.record(change)
