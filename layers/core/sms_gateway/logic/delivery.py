"""Delivery reports from upstreams: find the message, move its status forward only, refund final failures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sms_gateway.domain.models import CallbackRequest, DeliveryReport, MessageKey, StatusChange
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, Unauthorized
from sms_gateway.observability import logger
from sms_gateway.ports import AccountStore, MessageStore, Provider

REFUNDED = frozenset({MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.REJECTED})


@dataclass(frozen=True)
class DeliveryDependencies:
    messages: MessageStore
    accounts: AccountStore
    clock: Callable[[], datetime]
    on_change: Callable[[StatusChange], None] | None = None


@dataclass
class DeliveryOutcome:
    applied: int = 0
    unchanged: int = 0
    unmatched: int = 0


def receive_delivery_reports(
    provider: Provider, request: CallbackRequest, deps: DeliveryDependencies
) -> DeliveryOutcome:
    if not provider.verify_callback(request):
        raise Unauthorized(f"callback not verified for upstream {provider.name!r}")
    reports = provider.parse_delivery_reports(request)
    if not reports:
        raise CallbackRejected("no delivery report in the callback")
    outcome = DeliveryOutcome()
    for report in reports:
        apply_delivery_report(report, deps, outcome)
    return outcome


def _locate(report: DeliveryReport, messages: MessageStore) -> MessageKey | None:
    # Our own client reference is a direct key; the upstream id needs the index.
    key = MessageKey.from_ref(report.client_ref)
    if key is None and report.upstream_message_id:
        key = messages.find_by_upstream_id(report.upstream, report.upstream_message_id)
    return key


def apply_delivery_report(report: DeliveryReport, deps: DeliveryDependencies, outcome: DeliveryOutcome) -> None:
    key = _locate(report, deps.messages)
    change = None
    if key is not None:
        change = deps.messages.transition(
            key,
            report.status,
            now=deps.clock(),
            upstream=report.upstream,
            upstream_message_id=report.upstream_message_id,
            error_code=report.error_code,
            reported_at=report.reported_at,
        )
    if change is None:
        outcome.unmatched += 1
        logger.warning(
            "delivery report for an unknown message",
            extra={"upstream": report.upstream, "upstream_message_id": report.upstream_message_id},
        )
        return
    if not change.changed:
        # A duplicate, late or out-of-order report: the conditional write kept the message where it was.
        outcome.unchanged += 1
        return
    outcome.applied += 1
    if change.message.status in REFUNDED:
        deps.accounts.refund_credits(change.message.account_id, change.message.price)
    if deps.on_change is not None:
        deps.on_change(change)
