"""In-memory fakes of the ports, with the same conditional semantics as the DynamoDB adapter."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sms_gateway.domain.ids import id_time_ms
from sms_gateway.domain.models import (
    Account,
    Batch,
    CallbackRequest,
    Claim,
    ClaimOutcome,
    Credentials,
    DeliveryReport,
    DispatchCommand,
    FoundInbound,
    InboundSms,
    Message,
    MessageKey,
    SealedSecret,
    SenderRegistration,
    SentMessage,
    StatusChange,
    StoredInbound,
    SubmitRequest,
    SubmitResult,
    UnreleasedBatch,
    iso,
    release_sweep_due,
    reply_order,
    shown_prefix,
    unqueued_release_sweep_due,
)
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.routing import RouteTable
from sms_gateway.domain.senders import registry_form
from sms_gateway.domain.status import (
    SUBMIT_UNCONFIRMED,
    TERMINAL,
    MessageStatus,
    allowed_previous,
    may_have_reached_the_handset,
)
from sms_gateway.errors import Conflict, InsufficientCredits, UpstreamError
from sms_gateway.ports import (
    Holding,
    PageBudget,
    RecordedHold,
    ScopeHeld,
    hold_shut_further,
    hold_written,
    seconds_to_shut,
)


class HeldScopes:
    """Rate-limit holds with the DynamoDB adapter's semantics (adapters/dynamodb_ratelimit.py): each scope's recorded
    hold, and the counters shut (the hold's end each was written with). Not thread-safe: its store locks."""

    def __init__(self) -> None:
        self.holds: dict[tuple[str, int], float] = {}
        self.recorded: dict[str, RecordedHold] = {}

    def check(self, scope: str, second: int) -> None:
        """Raises ScopeHeld when the second's counter is shut (a take's condition fails on it)."""
        if (scope, second) in self.holds:
            recorded = self.recorded[scope]
            raise ScopeHeld(scope, recorded.until, through=recorded.through)

    def hold(self, scope: str, until: float, **when: Any) -> RecordedHold:
        before = self.recorded.get(scope)
        after = hold_written(before, until, **when)
        return self._record(scope, before, after, when["first_second"])

    def shut_further(self, scope: str, until: float, *, first_second: int, seconds: int) -> RecordedHold | None:
        before = self.recorded.get(scope)
        after = hold_shut_further(before, until, first_second=first_second, seconds=seconds)
        return None if after is None else self._record(scope, before, after, first_second)

    def _record(self, scope: str, before: RecordedHold | None, after: RecordedHold, first_second: int) -> RecordedHold:
        self.recorded[scope] = after
        self.holds.update({(scope, second): after.until for second in seconds_to_shut(before, after, first_second)})
        return after


def fake_routes() -> RouteTable:
    """No routes: every account's messages go to the fake upstream, which may then deliver its numbers' inbound SMS."""
    return RouteTable(default_upstream="fake")


def inbox_key(inbound: StoredInbound) -> tuple[str, str, str, str]:
    """What stores an SMS once, as DynamoStore's marker: the upstream's id, for the account and the number it was
    sent to (an SMS without an upstream id is its own)."""
    return (inbound.upstream, inbound.upstream_message_id or str(inbound.inbound_id), inbound.account_id, inbound.to)


class InMemoryStore:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.credentials: dict[tuple[str, str], str] = {}
        self.batches: dict[tuple[str, int], Batch] = {}
        # The cancelled batches whose refund a cancel has answered (the table's cancel_answered), each with the mark of
        # the idempotency key that cancel held (cancel_answer_mark; None without a key).
        self.cancels_answered: dict[tuple[str, int], str | None] = {}
        self.messages: dict[MessageKey, Message] = {}
        self.claims: dict[MessageKey, float] = {}
        # Every message a dispatcher ever claimed (the table's dispatch_attempts): never withdrawn as unsent.
        self.ever_claimed: set[MessageKey] = set()
        self.claim_upstreams: dict[MessageKey, str] = {}
        # The id written with each lease (the table's claim_id): the holder's later writes name it.
        self.claim_ids: dict[MessageKey, str] = {}
        self._claims_made = 0
        self.inbox: dict[tuple[str, str, str, str], StoredInbound] = {}
        # The inbound SMS marked as not queued for the client yet: when a sweep may queue each.
        self.inbound_sweep_at: dict[tuple[str, str, str, str], datetime] = {}
        # The messages marked as holding a final report not announced yet (announce_pending): when a sweep may.
        self.report_sweep_at: dict[MessageKey, datetime] = {}
        # The unreleased batches in the sweep index (scheduled, or 100 recipients or more not known to be queued):
        # when a sweep may release each.
        self.batch_sweep_at: dict[tuple[str, int], datetime] = {}
        self.links: dict[tuple[str, str], MessageKey] = {}
        self.held: dict[tuple[str, str], list[DeliveryReport]] = {}
        self.prices = PriceTable()
        # Sender (registry form) -> the upstreams that may deliver its inbound SMS; absent: the account's routes'.
        self.inbound_upstreams: dict[str, tuple[str, ...]] = {}
        self._lock = threading.RLock()

    # accounts
    def create_account(self, account: Account, credentials: Credentials) -> None:
        self.accounts[account.account_id] = account
        self.credentials[("token", credentials.token)] = account.account_id
        self.credentials[("apikey", credentials.apikey)] = account.account_id

    def account_id_for_sender(self, sender: str) -> str | None:
        for account in self.accounts.values():
            if registry_form(sender) in {registry_form(s) for s in account.senders}:
                return account.account_id
        return None

    def sender_registration(self, sender: str) -> SenderRegistration | None:
        account_id = self.account_id_for_sender(sender)
        if account_id is None:
            return None
        return SenderRegistration(
            account_id=account_id, inbound_upstreams=self.inbound_upstreams.get(registry_form(sender))
        )

    def save_inbound(self, inbound: StoredInbound, *, notify_due: datetime | None = None) -> bool:
        key = inbox_key(inbound)
        if key in self.inbox:
            return False
        self.inbox[key] = inbound
        if notify_due is not None:
            self.inbound_sweep_at[key] = notify_due
        return True

    def inbound_notified(self, inbound: StoredInbound) -> None:
        self.inbound_sweep_at.pop(inbox_key(inbound), None)

    def claim_inbound_notifications(self, *, now: datetime, until: datetime, limit: int) -> list[StoredInbound]:
        with self._lock:
            due = sorted((at, key) for key, at in self.inbound_sweep_at.items() if at <= now)[:limit]
            for _, key in due:
                self.inbound_sweep_at[key] = until
            return [self.inbox[key] for _, key in due]

    def find_inbound(self, upstream: str, upstream_message_id: str, account_id: str, to: str) -> FoundInbound | None:
        key = (upstream, upstream_message_id, account_id, to)
        found = self.inbox.get(key)
        return FoundInbound(found, not_queued=key in self.inbound_sweep_at) if found is not None else None

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
        found = sorted(
            (
                i
                for i in self.inbox.values()
                if i.account_id == account_id
                and (msisdn is None or i.msisdn == msisdn)
                and (since is None or id_time_ms(i.inbound_id) >= since.timestamp() * 1000)
            ),
            key=lambda i: -i.inbound_id,
        )
        return found[:limit], None

    def get_inbound(self, account_id: str, inbound_id: int) -> StoredInbound | None:
        found = [i for i in self.inbox.values() if (i.account_id, i.inbound_id) == (account_id, inbound_id)]
        return found[0] if found else None

    def keyword_applied(self, inbound: StoredInbound) -> None:
        key = inbox_key(inbound)
        if key in self.inbox:
            self.inbox[key] = self.inbox[key].model_copy(update={"keyword_pending": False})

    def get_account(self, account_id: str, *, consistent: bool = False) -> Account | None:
        return self.accounts.get(account_id)

    def account_id_for_credential(self, kind: str, secret: str) -> str | None:
        return self.credentials.get((kind, secret))

    def reserve_credits(self, account_id: str, amount: int) -> None:
        with self._lock:
            account = self.accounts[account_id]
            if account.credits < amount:
                raise InsufficientCredits("not enough credits")
            self.accounts[account_id] = account.model_copy(update={"credits": account.credits - amount})

    def refund_credits(self, account_id: str, amount: int) -> None:
        with self._lock:
            account = self.accounts[account_id]
            self.accounts[account_id] = account.model_copy(update={"credits": account.credits + amount})

    def balance(self, account_id: str) -> int:
        account = self.accounts.get(account_id)
        return account.credits if account is not None else 0

    # batches and messages
    def create_batch(self, batch: Batch, messages: Sequence[Message]) -> None:
        if (batch.account_id, batch.reference_id) in self.batches:
            raise Conflict(f"batch {batch.reference_id} exists already")
        self.batches[(batch.account_id, batch.reference_id)] = batch
        self.add_messages(batch, messages)

    def claim_unreleased_batches(self, *, now: datetime, until: datetime, limit: int) -> list[UnreleasedBatch]:
        with self._lock:
            due = sorted((at, key) for key, at in self.batch_sweep_at.items() if at <= now)[:limit]
            for _, key in due:
                self.batch_sweep_at[key] = until
            return [UnreleasedBatch(account_id=k[0], reference_id=k[1], status=self.batches[k].status) for _, k in due]

    def leave_to_release_sweep(self, batch: Batch) -> None:
        with self._lock:
            key = (batch.account_id, batch.reference_id)
            if key in self.batches and self.batches[key].status == MessageStatus.QUEUED:
                self.batch_sweep_at[key] = unqueued_release_sweep_due(batch)

    def clear_release_sweep(self, account_id: str, reference_id: int) -> None:
        with self._lock:
            self.batch_sweep_at.pop((account_id, reference_id), None)

    def add_messages(self, batch: Batch, messages: Sequence[Message]) -> None:
        for message in messages:
            self.messages[message.key] = message

    def create_batch_and_reserve(self, batch: Batch, *, superseding: int | None = None) -> None:
        with self._lock:
            if (batch.account_id, batch.reference_id) in self.batches:
                raise Conflict(f"batch {batch.reference_id} exists already")
            replaced = self.batches.get((batch.account_id, superseding)) if superseding is not None else None
            if superseding is not None and (
                replaced is None or replaced.status != MessageStatus.FAILED or replaced.superseded_by is not None
            ):
                raise Conflict(f"batch {superseding} is not a failed batch waiting to be sent afresh")
            self.reserve_credits(batch.account_id, batch.cost)
            self.batches[(batch.account_id, batch.reference_id)] = batch
            sweep_due = release_sweep_due(batch)
            if sweep_due is not None:
                self.batch_sweep_at[(batch.account_id, batch.reference_id)] = sweep_due
            if replaced is not None:
                self.batches[(batch.account_id, replaced.reference_id)] = replaced.model_copy(
                    update={"superseded_by": batch.reference_id}
                )

    def reprice_batch(self, batch: Batch, cost: int, recipients: int | None = None, *, by_cancel: bool = False) -> int:
        self._reprice(batch, (), cost=cost, recipients=recipients, by_cancel=by_cancel)
        return self.balance(batch.account_id)

    def store_and_charge(self, batch: Batch, messages: Sequence[Message], *, stored_cost: int, stored: int) -> Batch:
        cost, count = stored_cost + sum(message.price for message in messages), stored + len(messages)
        for start in range(0, max(len(messages), 1), 98):
            part = messages[start : start + 98]
            batch = self._reprice(batch, part, cost=cost, recipients=count, storing=True)
        return batch

    def _reprice(
        self,
        batch: Batch,
        messages: Sequence[Message],
        *,
        cost: int,
        recipients: int | None,
        by_cancel: bool = False,
        storing: bool = False,
    ) -> Batch:
        with self._lock:
            key = (batch.account_id, batch.reference_id)
            now = self.batches[key]
            if (now.cost, now.revision) != (batch.cost, batch.revision) or any(
                m.key in self.messages for m in messages
            ):
                raise Conflict(f"batch {batch.reference_id} changed meanwhile")
            if storing and now.status not in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
                raise Conflict(f"batch {batch.reference_id} changed meanwhile")
            owed = cost - batch.cost
            if owed > 0 and not by_cancel:
                self.reserve_credits(batch.account_id, owed)
            else:
                # A cancel's take-back is never refused for the balance (DynamoStore._reprice).
                self.refund_credits(batch.account_id, -owed)
            counted = {"recipients": recipients} if recipients is not None else {}
            update = {"cost": cost, "revision": batch.revision + 1, **counted}
            given = {"cancel_unstored_refund": now.cancel_unstored_refund - owed} if by_cancel else {}
            self.batches[key] = now.model_copy(update={**update, **given})
            for message in messages:
                self.messages[message.key] = message
            return batch.model_copy(update=update)

    def fail_batch_and_refund(self, batch: Batch) -> bool | None:
        with self._lock:
            if (batch.account_id, batch.reference_id) not in self.batches:
                return None
            as_written = frozenset({batch.status})
            if not self.set_batch_status(
                batch.account_id, batch.reference_id, MessageStatus.FAILED, only_from=as_written
            ):
                return False
            self.refund_credits(batch.account_id, batch.cost)
            return True

    def get_batch(self, account_id: str, reference_id: int) -> Batch | None:
        return self.batches.get((account_id, reference_id))

    def set_batch_status(
        self,
        account_id: str,
        reference_id: int,
        target: MessageStatus,
        *,
        only_from: frozenset[MessageStatus] | None = None,
    ) -> bool:
        batch = self.batches.get((account_id, reference_id))
        allowed = allowed_previous(target) & (only_from or allowed_previous(target))
        if batch is None or batch.status not in allowed:
            return False
        self.batches[(account_id, reference_id)] = batch.model_copy(update={"status": target})
        if target != MessageStatus.SCHEDULED:
            self.batch_sweep_at.pop((account_id, reference_id), None)  # its status write takes it out of the index
        return True

    def claim_cancel_answer(self, account_id: str, reference_id: int, *, mark: str | None = None) -> Batch | None:
        key = (account_id, reference_id)
        batch = self.batches.get(key)
        if batch is None or batch.status != MessageStatus.CANCELLED:
            return None
        if key in self.cancels_answered and (mark is None or self.cancels_answered[key] != mark):
            return None
        self.cancels_answered[key] = mark
        return batch

    def list_messages(
        self,
        account_id: str,
        reference_id: int,
        *,
        limit: int = 100,
        cursor: str | None = None,
        status: MessageStatus | None = None,
    ) -> tuple[list[Message], str | None]:
        found = sorted(
            (
                m
                for k, m in self.messages.items()
                if (k.account_id, k.reference_id) == (account_id, reference_id) and status in (None, m.status)
            ),
            key=lambda m: m.message_id,
        )
        start = int(cursor or 0)
        page = found[start : start + limit]
        return page, (str(start + limit) if start + limit < len(found) else None)

    def get_messages(self, account_id: str, reference_id: int, message_ids: Sequence[int]) -> list[Message]:
        return self.get_messages_by_key(MessageKey.of_batch(account_id, reference_id, message_ids))

    def get_messages_by_key(self, keys: Sequence[MessageKey], *, consistent: bool = True) -> list[Message]:
        return [self.messages[k] for k in keys if k in self.messages]

    def find_message(self, account_id: str, message_id: int) -> Message | None:
        for key, message in self.messages.items():
            if key.message_id == message_id and key.account_id == account_id:
                return message
        return None

    def price_table(self) -> PriceTable:
        return self.prices

    def claim_for_dispatch(
        self,
        key: MessageKey,
        *,
        now: datetime,
        lease_seconds: int,
        upstream: str | None = None,
        attempts_read: int | None = None,
    ) -> Claim:
        with self._lock:
            message = self.messages.get(key)
            if message is None or message.status != MessageStatus.QUEUED:
                return Claim(ClaimOutcome.BUSY)
            lapsed = self.claims.get(key)
            if lapsed is None and attempts_read is not None and message.submit_attempts != attempts_read:
                return Claim(ClaimOutcome.STALE)
            if lapsed is not None and lapsed >= now.timestamp():
                return Claim(ClaimOutcome.HELD)
            self.claims[key] = now.timestamp() + lease_seconds
            self.ever_claimed.add(key)
            self._claims_made += 1
            claim_id = self.claim_ids[key] = f"claim-{self._claims_made}"
            if lapsed is None:
                if upstream is not None:
                    self.claim_upstreams[key] = upstream
                return Claim(ClaimOutcome.CLAIMED, claim_id=claim_id)
            # Taken over: the dead holder's submit counts as an attempt; the lease keeps naming its upstream.
            self.messages[key] = message.model_copy(update={"submit_attempts": message.submit_attempts + 1})
            return Claim(ClaimOutcome.ABANDONED, lapsed_upstream=self.claim_upstreams.get(key), claim_id=claim_id)

    def _not_holding(self, key: MessageKey, claim_id: str | None) -> bool:
        return claim_id is not None and self.claim_ids.get(key) != claim_id

    def move_claim(self, key: MessageKey, *, from_upstream: str, to_upstream: str, claim_id: str | None = None) -> bool:
        with self._lock:
            message = self.messages.get(key)
            if message is None or message.status != MessageStatus.QUEUED or key not in self.claims:
                return False
            if self.claim_upstreams.get(key) != from_upstream or self._not_holding(key, claim_id):
                return False
            self.claim_upstreams[key] = to_upstream
            return True

    def release_claim(
        self,
        key: MessageKey,
        *,
        claim_id: str | None = None,
        attempted: bool = True,
        maybe_taken_by: str | None = None,
        throttled: bool = False,
    ) -> None:
        with self._lock:
            if self._not_holding(key, claim_id):
                return
            self.claim_ids.pop(key, None)
            self.claims.pop(key, None)
            self.claim_upstreams.pop(key, None)
            message = self.messages.get(key)
            if message is None or message.status != MessageStatus.QUEUED:
                return
            if attempted:
                message = message.model_copy(update={"submit_attempts": message.submit_attempts + 1})
            if throttled:
                message = message.model_copy(update={"submit_throttles": message.submit_throttles + 1})
            if maybe_taken_by is not None:
                message = message.model_copy(update={"maybe_taken_by": maybe_taken_by})
            self.messages[key] = message

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
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                return None
            unheld = message.status == MessageStatus.QUEUED and key not in self.claims and not message.maybe_taken_by
            if (
                message.status not in allowed_previous(target)
                or (unclaimed_only and key in self.ever_claimed)
                or (unheld_only and not unheld)
                or not self._carries(key, message, reported_by)
                or (if_settles_as is not None and message.settles_as != if_settles_as)
                or (unless_settles_as is not None and message.settles_as == unless_settles_as)
            ):
                return StatusChange(message=message, changed=False)
            if refund:
                self.refund_credits(message.account_id, message.price)
            update: dict[str, Any] = {
                "status": target,
                "status_at": {**message.status_at, str(target): iso(now)},
                "sequence": message.sequence + 1,
            }
            if upstream and not message.upstream:
                update["upstream"] = upstream
            if upstream and upstream_message_id and not message.upstream_message_id:
                update["upstream_message_id"] = upstream_message_id
            # Each change says its own error code and handset time, or none (a stale one is not carried over).
            update |= {"error_code": error_code, "reported_at": reported_at}
            if settles_as is not None:
                update["settles_as"] = settles_as
            elif target in TERMINAL and if_settles_as is None:
                update["settles_as"] = None
            self.messages[key] = message.model_copy(update=update)
            self.claims.pop(key, None)
            self.claim_upstreams.pop(key, None)
            self.claim_ids.pop(key, None)
            return StatusChange(message=self.messages[key], changed=True)

    def move_and_refund(
        self, messages: Sequence[Message], target: MessageStatus, *, now: datetime, **options: Any
    ) -> list[StatusChange | None]:
        return [self.transition(message.key, target, now=now, refund=True, **options) for message in messages]

    def move_messages(
        self, messages: Sequence[Message], target: MessageStatus, *, now: datetime, **options: Any
    ) -> list[StatusChange | None]:
        return [self.transition(message.key, target, now=now, **options) for message in messages]

    def link_upstream_id(
        self, upstream: str, upstream_message_id: str, key: MessageKey, *, now: datetime
    ) -> list[DeliveryReport]:
        with self._lock:
            self.links[(upstream, upstream_message_id)] = key
            return list(self.held.get((upstream, upstream_message_id), []))

    def find_by_upstream_id(self, upstream: str, upstream_message_id: str) -> MessageKey | None:
        return self.links.get((upstream, upstream_message_id))

    def hold_report(self, report: DeliveryReport, *, now: datetime) -> MessageKey | Holding:
        assert report.upstream_message_id
        with self._lock:
            link = (report.upstream, report.upstream_message_id)
            if link in self.links:
                return self.links[link]
            held = self.held.setdefault(link, [])
            if report in held:
                return Holding.NOTHING_NEW
            held.append(report)
            return Holding.HELD

    def _carries(self, key: MessageKey, message: Message, reported_by: str | None) -> bool:
        """The store's REPORTER_CARRIES_IT: a report's upstream took the message, is being given it, or may have it."""
        carriers = (message.upstream, message.maybe_taken_by, self.claim_upstreams.get(key))
        left_unnamed = message.upstream is None and message.error_code == SUBMIT_UNCONFIRMED
        return reported_by is None or left_unnamed or reported_by in carriers

    def mark_unannounced(self, key: MessageKey, sequence: int, *, due: datetime) -> bool:
        with self._lock:
            message = self.messages.get(key)
            if message is None or message.sequence != sequence:
                return False
            self.messages[key] = message.model_copy(update={"announce_pending": sequence})
            self.report_sweep_at[key] = due
            return True

    def clear_unannounced(self, key: MessageKey, sequence: int) -> bool:
        with self._lock:
            message = self.messages.get(key)
            if message is None or message.announce_pending != sequence:
                return False
            self.messages[key] = message.model_copy(update={"announce_pending": None, "announced": sequence})
            self.report_sweep_at.pop(key, None)
            return True

    def claim_announcement(self, key: MessageKey, sequence: int) -> bool:
        with self._lock:
            message = self.messages.get(key)
            if message is None or message.sequence != sequence or message.announced == sequence:
                return False
            self.messages[key] = message.model_copy(update={"announced": sequence})
            return True

    def claim_unannounced_reports(self, *, now: datetime, until: datetime, limit: int) -> list[Message]:
        with self._lock:
            due = sorted((at, key.message_id, key) for key, at in self.report_sweep_at.items() if at <= now)[:limit]
            for _, _, key in due:
                self.report_sweep_at[key] = until
            return [self.messages[key] for _, _, key in due]

    def note_settles_as(self, key: MessageKey, settles_as: MessageStatus, *, reported_by: str) -> Message | None:
        with self._lock:
            message = self.messages.get(key)
            if message is None or message.status != MessageStatus.SUBMITTED:
                return None
            if not self._carries(key, message, reported_by):
                return None
            self.messages[key] = message.model_copy(update={"settles_as": settles_as})
            return self.messages[key]

    def note_error_code(
        self, key: MessageKey, status: MessageStatus, error_code: str, *, reported_by: str, absent_only: bool = False
    ) -> bool:
        with self._lock:
            message = self.messages.get(key)
            if (
                message is None
                or message.status != status
                or message.error_code == SUBMIT_UNCONFIRMED
                or (absent_only and message.error_code is not None)
                or not self._carries(key, message, reported_by)
            ):
                return False
            self.messages[key] = message.model_copy(update={"error_code": error_code})
            return True

    def record_part_status(
        self, key: MessageKey, part: int | str, status: MessageStatus, *, now: datetime, reported_by: str | None = None
    ) -> StatusChange | None:
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                return None
            current = message.part_status.get(str(part))
            if current is not None and MessageStatus(current) not in allowed_previous(status):
                return StatusChange(message=message, changed=False)
            if not self._carries(key, message, reported_by):
                return StatusChange(message=message, changed=False)
            update: dict[str, Any] = {"part_status": {**message.part_status, str(part): status}}
            if reported_by and not message.upstream:
                update["upstream"] = reported_by
            self.messages[key] = message.model_copy(update=update)
            return StatusChange(message=self.messages[key], changed=True)

    def last_sent_to(self, account_id: str, msisdn: str, sender: str | None = None) -> SentMessage | None:
        sent = [
            m
            for m in self.messages.values()
            if (m.account_id, m.msisdn) == (account_id, msisdn)
            and (sender is None or registry_form(m.sender) == registry_form(sender))
            and m.can_be_replied_to
            and may_have_reached_the_handset(m.status, m.status_at)
        ]
        if not sent:
            return None
        last = max(sent, key=lambda m: reply_order(m.status_at, m.message_id))
        return SentMessage(key=last.key, sender=last.sender, session_id=last.session_id, ref_id=last.ref_id)


class Clock:
    """A clock of seconds (time.time's or time.monotonic's kind) that moves only when a test sets `now`."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSecretBox:
    """Seals like the KMS box (bound to an account and a purpose; opened for another, it fails), reversibly and
    without AWS: the sealed text is not the secret, so a test can tell a sealed attribute from a plain one."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, str]] = []

    def seal(self, account_id: str, purpose: str, secret: str) -> SealedSecret:
        sealed = base64.b64encode(json.dumps([account_id, purpose, secret]).encode()).decode()
        return SealedSecret(sealed=sealed, prefix=shown_prefix(secret))

    def open(self, account_id: str, purpose: str, sealed: SealedSecret) -> str:
        if sealed.scheme == "plain":
            return sealed.sealed
        bound_account, bound_purpose, secret = json.loads(base64.b64decode(sealed.sealed))
        if (bound_account, bound_purpose) != (account_id, purpose):
            raise ValueError(f"sealed for {bound_account}/{bound_purpose}, not {account_id}/{purpose}")
        self.opened.append((account_id, purpose))
        return str(secret)


class RecordingQueue:
    def __init__(self, fail: bool = False) -> None:
        self.commands: list[DispatchCommand] = []
        self.fail = fail

    def enqueue(self, commands: Sequence[DispatchCommand]) -> None:
        if self.fail:
            raise RuntimeError("queue unavailable")
        self.commands.extend(commands)


class RecordingScheduler:
    def __init__(self) -> None:
        self.scheduled: dict[tuple[str, int], datetime] = {}

    def schedule(self, account_id: str, reference_id: int, at: datetime) -> None:
        self.scheduled[(account_id, reference_id)] = at

    def cancel(self, account_id: str, reference_id: int) -> bool:
        return self.scheduled.pop((account_id, reference_id), None) is not None

    def schedule_name(self, account_id: str, reference_id: int) -> str:
        return f"batch-{account_id}-{reference_id}"


class FakeProvider:
    """Accepts submits (or fails them as told); verifies callbacks by a shared token header."""

    def __init__(self, name: str = "fake", token: str = "s3cret") -> None:
        self.name = name
        self.token = token
        self.submits: list[SubmitRequest] = []
        self.failure: UpstreamError | None = None
        self.reports: list[DeliveryReport] = []
        self.inbound: InboundSms | None = None

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        self.submits.append(request)
        if self.failure is not None:
            raise self.failure
        return SubmitResult(upstream_message_id=f"up-{len(self.submits)}")

    def verify_callback(self, request: CallbackRequest) -> bool:
        return request.headers.get("x-token") == self.token

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        return list(self.reports)

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        assert self.inbound is not None
        return self.inbound


def cinema_store() -> InMemoryStore:
    """A store holding one account, "7", with 1000 credits and the shortcode 48974."""
    store = InMemoryStore()
    store.create_account(
        Account(account_id="7", name="Cinema", credits=1000, senders=("48974",)),
        Credentials(token="t", apikey="k", partner_id="1", username="u", password="p"),
    )
    return store


def dispatched_through(*upstreams: Any) -> tuple[Any, Any]:
    """One message accepted for account 7 and dispatched once through `upstreams`, in order: the message after it and
    the store (for the account's credits)."""
    import asyncio
    from datetime import UTC, datetime

    from sms_gateway.domain.models import Recipient, SendCommand
    from sms_gateway.logic.dispatch import DispatchDependencies, dispatch
    from sms_gateway.logic.send import SendDependencies, accept_send

    now = datetime(2026, 1, 2, 23, 50, 37, tzinfo=UTC)
    store, queue = cinema_store(), RecordingQueue()
    send_deps = SendDependencies(
        accounts=store, messages=store, dispatch_queue=queue, scheduler=RecordingScheduler(), prices=store
    )
    command = SendCommand(
        account_id="7", sender="48974", text="Hello", recipients=(Recipient(msisdn="+2348020000000"),)
    )
    accept_send(store.accounts["7"], command, send_deps, now=now)
    deps = DispatchDependencies(
        messages=store,
        accounts=store,
        upstreams_for=lambda _: list(upstreams),
        callback_base_url="https://gw.example",
        clock=lambda: now,
    )
    asyncio.run(dispatch(queue.commands[0], deps))
    [message] = store.messages.values()
    return message, store
