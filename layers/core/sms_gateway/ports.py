"""Ports: the small interfaces logic depends on. Adapters implement them; tests give in-memory fakes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from sms_gateway.domain.models import (
    Account,
    Batch,
    CallbackRequest,
    Credentials,
    DeliveryReport,
    DispatchCommand,
    InboundSms,
    Message,
    MessageKey,
    StatusChange,
    StoredAnswer,
    StoredInbound,
    SubmitRequest,
    SubmitResult,
)
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.status import MessageStatus


class AccountStore(Protocol):
    def get_account(self, account_id: str) -> Account | None: ...

    def account_id_for_credential(self, kind: str, secret: str) -> str | None:
        """The account a credential (a bearer token, an API key, ...) belongs to, or None."""
        ...

    def create_account(self, account: Account, credentials: Credentials) -> None:
        """Stores the account and its credentials; secrets are stored only as hashes."""
        ...

    def reserve_credits(self, account_id: str, amount: int) -> int:
        """Takes `amount` credits if the balance allows (never below zero); returns the new balance.
        Raises InsufficientCredits otherwise."""
        ...

    def refund_credits(self, account_id: str, amount: int) -> int: ...

    def account_id_for_sender(self, sender: str) -> str | None:
        """The account that registered a sender ID, shortcode or long number (each belongs to one account)."""
        ...


class InboxStore(Protocol):
    def save_inbound(self, inbound: StoredInbound) -> bool:
        """Stores an inbound SMS once: False when the same upstream message was stored already."""
        ...


class MessageStore(Protocol):
    def create_batch(self, batch: Batch, messages: Sequence[Message]) -> None: ...

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

    def list_messages(
        self, account_id: str, reference_id: int, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Message], str | None]: ...

    def get_messages(self, account_id: str, reference_id: int, message_ids: Sequence[int]) -> list[Message]: ...

    def find_message(self, account_id: str, message_id: int) -> Message | None:
        """A message by its id alone, only if it belongs to `account_id`."""
        ...

    def claim_for_dispatch(self, key: MessageKey, *, now: datetime, lease_seconds: int) -> bool:
        """Takes a lease on a queued message so that two dispatchers never submit it at once."""
        ...

    def release_claim(self, key: MessageKey) -> None:
        """Gives a lease back after a transient failure, so the retry need not wait for it to lapse."""
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
    ) -> StatusChange | None:
        """Moves a message forward with a conditional write. None when there is no such message."""
        ...

    def find_by_upstream_id(self, upstream: str, upstream_message_id: str) -> MessageKey | None: ...


class PriceBook(Protocol):
    def price_table(self) -> PriceTable: ...


class IdempotencyStore(Protocol):
    def begin(self, scope: str, key: str, fingerprint: str, *, now: datetime) -> StoredAnswer | None:
        """Claims a key: None when this call owns it. The stored answer when the same request was answered
        already. Raises Conflict for a different request under the same key, or one still in progress."""
        ...

    def complete(self, scope: str, key: str, answer: StoredAnswer) -> None: ...

    def abandon(self, scope: str, key: str) -> None:
        """Forgets a claimed key whose request failed, so the client may retry it."""
        ...


class DispatchQueue(Protocol):
    def enqueue(self, commands: Sequence[DispatchCommand]) -> None: ...


class BatchScheduler(Protocol):
    def schedule(self, account_id: str, reference_id: int, at: datetime) -> None: ...

    def cancel(self, account_id: str, reference_id: int) -> bool: ...


class Provider(Protocol):
    """An upstream SMS provider: submits messages and understands its own callbacks."""

    name: str

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        """Raises UpstreamError(permanent=...) when the upstream refuses or fails."""
        ...

    def verify_callback(self, request: CallbackRequest) -> bool: ...

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]: ...

    def parse_inbound(self, request: CallbackRequest) -> InboundSms: ...
