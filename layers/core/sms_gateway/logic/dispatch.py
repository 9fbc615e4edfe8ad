"""Dispatching: submit each queued message of a dispatch record to its upstream once; record the result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sms_gateway.domain.models import DispatchCommand, Message, SubmitRequest
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import UpstreamError
from sms_gateway.observability import logger, mask_msisdn
from sms_gateway.ports import AccountStore, MessageStore, Provider

# A claim outlives a normal submit by far; it only matters when a dispatcher dies mid-submit.
CLAIM_LEASE_SECONDS = 120


@dataclass(frozen=True)
class DispatchDependencies:
    messages: MessageStore
    accounts: AccountStore
    provider_for: Callable[[Message], Provider]
    callback_base_url: str
    clock: Callable[[], datetime]
    concurrency: int = 64


@dataclass
class DispatchOutcome:
    submitted: int = 0
    failed: int = 0
    skipped: int = 0
    retry: list[int] = field(default_factory=list)
    retry_after: float | None = None

    @property
    def needs_retry(self) -> bool:
        return bool(self.retry)


async def dispatch(command: DispatchCommand, deps: DispatchDependencies) -> DispatchOutcome:
    """Idempotent: messages no longer queued (already submitted, cancelled, ...) are skipped, and a message
    is only submitted under a claim, so a duplicate SQS delivery cannot submit it twice."""
    messages = await asyncio.to_thread(
        deps.messages.get_messages, command.account_id, command.reference_id, list(command.message_ids)
    )
    outcome = DispatchOutcome(skipped=len(command.message_ids) - len(messages))
    in_flight = asyncio.Semaphore(deps.concurrency)

    async def one(message: Message) -> None:
        async with in_flight:
            await _dispatch_one(message, deps, outcome)

    await asyncio.gather(*(one(m) for m in messages))
    return outcome


async def _dispatch_one(message: Message, deps: DispatchDependencies, outcome: DispatchOutcome) -> None:
    if message.status != MessageStatus.QUEUED:
        outcome.skipped += 1
        return
    claimed = await asyncio.to_thread(
        deps.messages.claim_for_dispatch, message.key, now=deps.clock(), lease_seconds=CLAIM_LEASE_SECONDS
    )
    if not claimed:
        outcome.skipped += 1
        return
    provider = deps.provider_for(message)
    request = SubmitRequest(
        client_ref=message.key.to_ref(),
        sender=message.sender,
        msisdn=message.msisdn,
        text=message.text,
        dlr_url=f"{deps.callback_base_url.rstrip('/')}/callbacks/{provider.name}/dlr",
    )
    try:
        result = await provider.submit(request)
    except UpstreamError as error:
        log = {
            "message_id": message.message_id,
            "msisdn": mask_msisdn(message.msisdn),
            "upstream": provider.name,
        }
        if not error.permanent:
            logger.warning("transient upstream failure; will retry", extra={**log, "error": error.message})
            await asyncio.to_thread(deps.messages.release_claim, message.key)
            outcome.retry.append(message.message_id)
            if error.retry_after is not None:
                outcome.retry_after = max(outcome.retry_after or 0.0, error.retry_after)
            return
        logger.warning("upstream refused the message", extra={**log, "error": error.message})
        change = await asyncio.to_thread(
            deps.messages.transition,
            message.key,
            MessageStatus.FAILED,
            now=deps.clock(),
            error_code="upstream_rejected",
        )
        if change is not None and change.changed:
            await asyncio.to_thread(deps.accounts.refund_credits, message.account_id, message.price)
        outcome.failed += 1
        return
    await asyncio.to_thread(
        deps.messages.transition,
        message.key,
        MessageStatus.SUBMITTED,
        now=deps.clock(),
        upstream=provider.name,
        upstream_message_id=result.upstream_message_id,
    )
    outcome.submitted += 1
