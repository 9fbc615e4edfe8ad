"""Wires the real adapters once per container; handlers and logic receive them, tests pass fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING

from sms_gateway.adapters.dynamodb import DynamoStore
from sms_gateway.adapters.kms import KmsSecretBox
from sms_gateway.adapters.scheduler import EventBridgeBatchScheduler, LambdaBatchRelease
from sms_gateway.adapters.sqs import SqsDeadLetterQueue, SqsDispatchQueue, SqsNotifyQueue
from sms_gateway.caching import CachedPriceBook, TtlCache
from sms_gateway.settings import Settings, get_settings

if TYPE_CHECKING:
    from sms_gateway.domain.routing import RouteTable
    from sms_gateway.logic.send import SendDependencies
    from sms_gateway.logic.webhook_breaker import WebhookBreaker


def _webhook_breaker() -> WebhookBreaker:
    # Imported here: only the notifier posts to client webhooks.
    from sms_gateway.logic.webhook_breaker import WebhookBreaker

    return WebhookBreaker()


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: DynamoStore
    # The same table through a client that gives up within seconds (aws.client's `prompt`): the webhook function's,
    # which stops at 10 s, so a callback DynamoDB throttles is told to come back (503) before Lambda kills it; the
    # usual client backs off for up to 15 s.
    prompt_store: DynamoStore
    dispatch_queue: SqsDispatchQueue
    notify_queue: SqsNotifyQueue
    # The same queue through a client that gives up within seconds (aws.client's `prompt`): the webhook function's,
    # which stops at 10 s, so a queue that does not answer still leaves it the time to mark a final report for the
    # sweeper (logic.delivery.announce_change) instead of dying in the usual client's minute of retries.
    prompt_notify_queue: SqsNotifyQueue
    scheduler: EventBridgeBatchScheduler
    # Releases a scheduled batch as its schedule would (the sweeper's, for a batch whose schedule was never made).
    batch_release: LambdaBatchRelease
    dispatch_dead_letters: SqsDeadLetterQueue
    webhook_credentials: KmsSecretBox
    # Rarely changing settings the consumers read per record (accounts' webhook and rate-limit settings, routes).
    settings_cache: TtlCache = field(default_factory=TtlCache)
    # The notifier's count of each client webhook origin's failures in a row, shared by its worker threads.
    webhook_breaker: WebhookBreaker = field(default_factory=_webhook_breaker)


@cache
def gateway() -> Gateway:
    """Nothing here talks to AWS: clients are made on first use."""
    settings = get_settings()
    return Gateway(
        settings=settings,
        store=DynamoStore(settings.table_name, retention_days=settings.message_retention_days),
        prompt_store=DynamoStore(settings.table_name, retention_days=settings.message_retention_days, prompt=True),
        dispatch_queue=SqsDispatchQueue(
            settings.dispatch_queue_url, priority_queue_url=settings.priority_dispatch_queue_url
        ),
        dispatch_dead_letters=SqsDeadLetterQueue(settings.dispatch_dead_letter_queue_url),
        notify_queue=SqsNotifyQueue(settings.notify_queue_url),
        prompt_notify_queue=SqsNotifyQueue(settings.notify_queue_url, prompt=True),
        webhook_credentials=KmsSecretBox(settings.webhook_credentials_key_id),
        scheduler=EventBridgeBatchScheduler(
            group_name=settings.schedule_group_name,
            target_arn=settings.scheduled_dispatch_function_arn,
            role_arn=settings.scheduler_role_arn,
            dead_letter_arn=settings.schedule_dlq_arn or None,
            precision_seconds=settings.scheduler_precision_seconds,
        ),
        batch_release=LambdaBatchRelease(function_arn=settings.scheduled_dispatch_function_arn),
    )


def reset() -> None:
    """For tests and the local stack: forget wiring made under another environment."""
    from sms_gateway.adapters import aws

    gateway.cache_clear()
    get_settings.cache_clear()
    aws.reset_clients()


def price_book() -> CachedPriceBook:
    """The price table the api prices sends and quotes with (cached: docs/operators.md, "Prices")."""
    wiring = gateway()
    return CachedPriceBook(wiring.store, wiring.settings_cache)


def route_table(*, prompt: bool = False) -> RouteTable:
    """The route table (one item), read at most once per SETTINGS_MAX_AGE_SECONDS per container: the dispatcher's
    choice of upstream per message, and the webhook's upstreams allowed to deliver a number's inbound SMS (read
    through the `prompt` store)."""
    wiring = gateway()
    store = wiring.prompt_store if prompt else wiring.store
    table: RouteTable = wiring.settings_cache.get("routes", lambda: store.route_table(wiring.settings.default_upstream))
    return table


def send_dependencies() -> SendDependencies:
    # Imported here: only the functions that accept sends need the send logic (and the number parsing under it).
    from sms_gateway.logic.notify import notifications_of
    from sms_gateway.logic.send import SendDependencies

    wiring = gateway()
    return SendDependencies(
        accounts=wiring.store,
        messages=wiring.store,
        dispatch_queue=wiring.dispatch_queue,
        scheduler=wiring.scheduler,
        prices=price_book(),
        schedule_threshold=timedelta(seconds=wiring.settings.schedule_threshold_seconds),
        opt_outs=wiring.store,
        announce=lambda changes: wiring.notify_queue.publish(notifications_of(changes)),
    )
