"""Opt-outs: applying STOP / START keywords from inbound SMS, and the operator's own opt-outs and opt-ins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sms_gateway.domain.models import Account, StoredInbound, iso
from sms_gateway.domain.msisdn import InvalidMsisdn, parse_msisdn
from sms_gateway.domain.optouts import (
    ALL_SENDERS,
    OPERATOR,
    KeywordAction,
    KeywordRequest,
    OptOut,
    keyword_request,
    sender_key,
)
from sms_gateway.errors import InvalidRequest, NotFound
from sms_gateway.observability import logger, mask_msisdn
from sms_gateway.ports import AccountStore, OptOutStore


def opted_out_of(
    account: Account, sender: str, msisdns: Sequence[str], opt_outs: OptOutStore | None
) -> dict[str, OptOut]:
    """The numbers among `msisdns` that opted out of `sender` (or of every sender of the account), each with its
    opt-out. An account whose opt-out counter is zero costs no read at all."""
    if opt_outs is None or account.opt_outs <= 0 or not msisdns:
        return {}
    return opt_outs.opted_out(account.account_id, sender, msisdns, known_count=account.opt_outs)


def records_of(request: KeywordRequest) -> frozenset[str]:
    """The opt-out records (by sender key) a keyword writes: a STOP its sender's, a STOPALL the every-sender one
    (ALL_SENDERS), a START both (it takes back the number's STOPALL too)."""
    if request.action == KeywordAction.OPT_IN:
        return frozenset({request.sender, ALL_SENDERS})
    return frozenset({request.sender})


def apply_keyword(
    opt_outs: OptOutStore, inbound: StoredInbound, now: datetime, *, only: frozenset[str] | None = None
) -> KeywordAction | None:
    """STOP (and its kin) opts the number out of the sender it was sent to, STOPALL out of all the account's
    senders, START or UNSTOP back in. `only`: the records (records_of) it may still write, when a later keyword of
    the number decided the others. Returns what the SMS did, None when it is not a keyword."""
    request = keyword_request(inbound.text, inbound.to)
    if request is None:
        return None
    _apply(
        opt_outs,
        request,
        account_id=inbound.account_id,
        msisdn=inbound.msisdn,
        to=inbound.to,
        now=now,
        inbound_id=inbound.inbound_id,
        only=only,
    )
    return request.action


def apply_keyword_to_released_sender(
    opt_outs: OptOutStore, released_by: str, request: KeywordRequest, *, msisdn: str, to: str, now: datetime
) -> KeywordAction:
    """A STOP / START texted to a sender no account holds (between an operator's remove-sender and add-sender)
    changes the opt-out of it kept by the account that released it, which add-sender carries to the sender's next
    owner (docs/opt-outs.md, "A sender that moves"). Of that sender only: a STOPALL opts the number out of it (the
    releasing account's other senders are not what the number texted), a START takes back that opt-out alone. Made
    only while `released_by` still released it last; Unavailable (nothing changed) once an account was given it.
    `request`: the SMS's keyword (keyword_request). Returns what the SMS did."""
    sender = sender_key(to)
    _apply(
        opt_outs,
        replace(request, sender=sender),
        account_id=released_by,
        msisdn=msisdn,
        to=to,
        now=now,
        only=frozenset({sender}),
        while_released=True,
    )
    return request.action


def _apply(
    opt_outs: OptOutStore,
    request: KeywordRequest,
    *,
    account_id: str,
    msisdn: str,
    to: str,
    now: datetime,
    inbound_id: int | None = None,
    only: frozenset[str] | None = None,
    while_released: bool = False,
) -> None:
    who = {"from": mask_msisdn(msisdn), "to": to, "keyword": request.keyword, "account_id": account_id}
    if request.action == KeywordAction.OPT_OUT and (only is None or request.sender in only):
        opt_out = OptOut(
            account_id=account_id,
            sender=request.sender,
            msisdn=msisdn,
            keyword=request.keyword,
            at=iso(now),
            inbound_id=inbound_id,
        )
        logger.info("opt-out keyword", extra={**who, "new": opt_outs.opt_out(opt_out, while_released=while_released)})
    elif request.action == KeywordAction.OPT_IN:
        removed = opt_outs.opt_in(account_id, msisdn, request.sender, only=only, while_released=while_released)
        logger.info("opt-in keyword", extra={**who, "removed": removed})


def _account(accounts: AccountStore, account_id: str) -> Account:
    account = accounts.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    return account


def _number(account: Account, number: str) -> str:
    try:
        return parse_msisdn(number, account.default_country).e164
    except InvalidMsisdn as error:
        raise InvalidRequest(f"{number!r} is not a valid number: {error.reason}") from error


def _sender(account: Account, sender: str | None) -> str:
    """The account's own sender (as registered), or ALL_SENDERS when none is named."""
    if sender is None or sender == ALL_SENDERS:
        return ALL_SENDERS
    for registered in account.senders:
        if sender_key(registered) == sender_key(sender):
            return sender_key(registered)
    raise InvalidRequest(f"sender {sender!r} is not registered for account {account.account_id}")


def record_opt_out(
    accounts: AccountStore, opt_outs: OptOutStore, account_id: str, number: str, sender: str | None, *, now: datetime
) -> tuple[OptOut, bool]:
    """An operator's opt-out (a request by phone or email): of one sender, or of all of them without one.
    Returns the record and whether it is new (False: the number had opted out of that sender already)."""
    account = _account(accounts, account_id)
    opt_out = OptOut(
        account_id=account.account_id,
        sender=_sender(account, sender),
        msisdn=_number(account, number),
        keyword=OPERATOR,
        at=iso(now),
    )
    return opt_out, opt_outs.opt_out(opt_out)


def remove_opt_out(
    accounts: AccountStore, opt_outs: OptOutStore, account_id: str, number: str, sender: str | None
) -> tuple[str, int]:
    """An operator's opt-in: of one sender (and a STOPALL, as START does), or every opt-out of the number
    without one. Returns the number (E.164) and how many opt-outs were removed."""
    account = _account(accounts, account_id)
    msisdn = _number(account, number)
    chosen = None if sender is None else _sender(account, sender)
    return msisdn, opt_outs.opt_in(account.account_id, msisdn, chosen)


def list_opt_outs(accounts: AccountStore, opt_outs: OptOutStore, account_id: str) -> list[OptOut]:
    account = _account(accounts, account_id)
    return sorted(opt_outs.list_opt_outs(account.account_id), key=lambda o: (o.msisdn, o.sender))
