"""Inbound (two-way) SMS: route to the account that owns the number it was sent to, store, forward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import CallbackRequest, InboundSms, StoredInbound
from sms_gateway.domain.msisdn import InvalidMsisdn, parse_msisdn
from sms_gateway.errors import CallbackRejected, Unauthorized
from sms_gateway.observability import logger, mask_msisdn
from sms_gateway.ports import AccountStore, InboxStore, Provider

INBOUND = "inbound"


@dataclass(frozen=True)
class InboundDependencies:
    accounts: AccountStore
    inbox: InboxStore
    publish: Callable[[dict[str, Any]], None]
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class InboundOutcome:
    routed: bool
    stored: bool
    inbound: StoredInbound | None = None


def inbound_notification(inbound: StoredInbound) -> dict[str, Any]:
    """The seeds' "Receive SMS" body, exactly: numbers in international format without '+'."""
    return {
        "kind": INBOUND,
        "id": f"in_{inbound.inbound_id}",
        "account_id": inbound.account_id,
        "url": None,
        "payload": {
            "type": "two-way sms",
            "telco": inbound.telco,
            "from": inbound.msisdn.lstrip("+"),
            "to": inbound.to,
            "message": inbound.text,
            "session_id": inbound.session_id,
            "sent_date": inbound.received_at,
            "ref_id": inbound.ref_id,
        },
    }


def receive_inbound(provider: Provider, request: CallbackRequest, deps: InboundDependencies) -> InboundOutcome:
    if not provider.verify_callback(request):
        raise Unauthorized(f"callback not verified for upstream {provider.name!r}")
    sms = provider.parse_inbound(request)
    account_id = deps.accounts.account_id_for_sender(sms.to)
    if account_id is None:
        # Acknowledged so the upstream stops retrying; nobody here owns that number.
        logger.warning("inbound SMS to a number no account owns", extra={"to": sms.to, "upstream": sms.upstream})
        return InboundOutcome(routed=False, stored=False)
    stored = _stored(sms, account_id)
    is_new = deps.inbox.save_inbound(stored)
    if is_new:
        deps.publish(inbound_notification(stored))
    else:
        logger.info("duplicate inbound callback ignored", extra={"upstream_message_id": sms.upstream_message_id})
    return InboundOutcome(routed=True, stored=is_new, inbound=stored)


def _stored(sms: InboundSms, account_id: str) -> StoredInbound:
    try:
        number = parse_msisdn(sms.msisdn if sms.msisdn.startswith("+") else f"+{sms.msisdn}")
    except InvalidMsisdn as error:
        raise CallbackRejected(f"inbound SMS from an invalid number: {error.reason}") from error
    logger.info("inbound SMS", extra={"from": mask_msisdn(number.e164), "to": sms.to})
    inbound_id = new_id()
    return StoredInbound(
        inbound_id=inbound_id,
        account_id=account_id,
        upstream=sms.upstream,
        upstream_message_id=sms.upstream_message_id,
        msisdn=number.e164,
        telco=number.telco,
        to=sms.to,
        text=sms.text,
        # A conversation gets its own session id; threading replies onto earlier sends comes with opt-outs.
        session_id=str(inbound_id),
        received_at=sms.received_at,
    )
