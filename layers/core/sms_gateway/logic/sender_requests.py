"""Sender ID and shortcode requests: an account asks (the portal), an operator approves or rejects (the CLI)."""

from __future__ import annotations

from datetime import datetime

from sms_gateway.domain.models import Account, SenderRequest, SenderRequestStatus, iso
from sms_gateway.domain.senders import same_sender
from sms_gateway.errors import Conflict, InvalidRequest, NotFound
from sms_gateway.logic.accounts import add_sender, check_sender, require_account
from sms_gateway.ports import AccountAdmin, SenderRequestStore

MAX_REASON_LENGTH = 500
# What the account is shown for an approved request whose sender it no longer has (not a stored status).
RELEASED = "released"


def request_sender(store: SenderRequestStore, account: Account, sender: str, *, now: datetime) -> SenderRequest:
    """A new pending request; InvalidRequest for a malformed sender, Conflict when it is the account's already or
    asked for and pending. It replaces a rejected request, and an approved one: the account not having the sender
    (checked here, on the account read for this request) means the operator released it since (remove-sender)."""
    sender = check_sender(sender.strip())
    if _owns(account, sender):
        raise Conflict(f"sender {sender!r} is registered to your account already")
    request = SenderRequest(account_id=account.account_id, sender=sender, requested_at=iso(now))
    store.add_sender_request(request)
    return request


def shown_status(request: SenderRequest, account: Account) -> str:
    """The request's status as the account should read it: an approved request whose sender the account no longer
    has is `released` (the operator removed the sender; it may be asked for again), not approved; a pending or
    rejected one whose sender the account has is `approved` (the operator registered it with add-sender rather than
    approve-sender: the account sends from it, so it is neither waiting nor refused)."""
    owned = _owns(account, request.sender)
    if request.status == SenderRequestStatus.APPROVED and not owned:
        return RELEASED
    if request.status != SenderRequestStatus.APPROVED and owned:
        return str(SenderRequestStatus.APPROVED)
    return str(request.status)


def _owns(account: Account, sender: str) -> bool:
    return any(same_sender(sender, own) for own in account.senders)


def list_requests(store: SenderRequestStore, account_id: str) -> list[SenderRequest]:
    """One account's requests, as stored (the caller has the account to give each its shown_status)."""
    return store.sender_requests(account_id)


def list_requests_as_shown(
    store: SenderRequestAdmin, account_id: str | None = None, status: str | None = None
) -> list[tuple[SenderRequest, str]]:
    """The operator's listing: each request with the status its account reads (shown_status, so `released` for an
    approved sender removed since, `approved` for a pending or rejected one registered since with add-sender: no
    decision is asked for on a sender the account has), filtered on that status. Reads each account listed once."""
    wanted = _shown_status(status) if status is not None else None
    owners: dict[str, Account | None] = {}
    listed = []
    for request in store.sender_requests(account_id):
        if request.account_id not in owners:
            owners[request.account_id] = store.get_account(request.account_id)
        owner = owners[request.account_id]
        if owner is not None:
            shown = shown_status(request, owner)
        else:
            shown = RELEASED if request.status == SenderRequestStatus.APPROVED else str(request.status)
        if wanted is None or shown == wanted:
            listed.append((request, shown))
    return listed


def _shown_status(value: str) -> str:
    statuses = [*(str(s) for s in SenderRequestStatus), RELEASED]
    if value not in statuses:
        raise InvalidRequest(f"status {value!r} must be one of {', '.join(statuses)}")
    return value


def _pending(store: SenderRequestStore, account_id: str, sender: str) -> SenderRequest:
    request = store.sender_request(account_id, sender)
    if request is None:
        raise NotFound(f"account {account_id} has no request for sender {sender!r} (see list-sender-requests)")
    if request.status != SenderRequestStatus.PENDING:
        raise Conflict(f"the request for sender {sender!r} is {request.status} already")
    return request


class SenderRequestAdmin(AccountAdmin, SenderRequestStore):
    """The operator's store: accounts (to register the sender) and the requests."""


def approve(store: SenderRequestAdmin, account_id: str, sender: str, *, now: datetime) -> SenderRequest:
    """Registers the sender to the account (accounts.add_sender: Conflict when another account owns it, and the
    request stays pending), then marks the request approved. Run again after a failure between the two, it
    completes: adding a sender the account has already changes nothing."""
    request = _pending(store, account_id, sender)
    add_sender(store, account_id, request.sender)
    return store.decide_sender_request(
        account_id, request.sender, SenderRequestStatus.APPROVED, decided_at=iso(now), reason=None
    )


def reject(store: SenderRequestAdmin, account_id: str, sender: str, reason: str, *, now: datetime) -> SenderRequest:
    reason = reason.strip()
    if not reason:
        raise InvalidRequest("give a reason: the account sees it next to the rejected request")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"the reason is {len(reason)} characters, over {MAX_REASON_LENGTH}")
    require_account(store, account_id)
    request = _pending(store, account_id, sender)
    return store.decide_sender_request(
        account_id, request.sender, SenderRequestStatus.REJECTED, decided_at=iso(now), reason=reason
    )
