"""The glue between the non-HTTP triggers (SQS records, schedules) and the use cases."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sms_gateway.adapters import http
from sms_gateway.adapters.providers import get_provider, upstream_rate_limit
from sms_gateway.adapters.sqs import SqsDeadLetterQueue
from sms_gateway.bootstrap import gateway, route_table
from sms_gateway.caching import CachedAccountSettings
from sms_gateway.deadlines import out_of_time_after
from sms_gateway.domain.models import DispatchCommand, Message, StatusChange, utc_now
from sms_gateway.domain.routing import RouteTable
from sms_gateway.logic import inbound, settle, webhook_retries
from sms_gateway.logic.delivery import mark_unannounced_finals
from sms_gateway.logic.dispatch import (
    ANNOUNCE_BATCH,
    QUEUED_ANNOUNCEMENTS,
    QUEUED_CHECKS,
    DispatchDependencies,
    ReadAhead,
    SubmitSlots,
    dispatch,
    read_single_sends,
    route_asks,
)
from sms_gateway.logic.fifo import handle_in_group_order
from sms_gateway.logic.notify import WebhookFailed, WebhookResponse, deliver, notifications_of
from sms_gateway.logic.ratelimit import RateLimiter, account_scope, expected_grants
from sms_gateway.logic.webhook_breaker import WebhookNotTried
from sms_gateway.observability import logger, metrics
from sms_gateway.outcome_metrics import count_final_statuses, count_upstream_failures
from sms_gateway.ports import Provider

# Kept back from the invocation's time after a submit's worst case: the status write, the record's announcements
# and its return to the queue.
RECORDING_RESERVE_SECONDS = 3.0
# The notifier's records handled at once (its BatchSize in template.yaml): a batch of client webhook posts takes
# as long as the slowest, not as long as all of them one after another, and Lambda bills the wait.
NOTIFY_CONCURRENCY = 10
_notify_workers: list[ThreadPoolExecutor] = []


class RetryLater(Exception):
    """Raised for a record whose messages met a transient failure: the record goes back to the queue."""


def _account_settings() -> CachedAccountSettings:
    wiring = gateway()
    return CachedAccountSettings(wiring.store, wiring.settings_cache)


def _rate_limit(account_id: str) -> int | None:
    account = _account_settings().get_account(account_id)
    return account.rate_limit_per_second if account else None


def _routed(table: RouteTable, route_limit: Callable[[str], int | None]) -> Callable[[Message], list[Provider]]:
    """A message's upstreams in the order to try them: its route's primary, then the route's fallback. Each
    upstream is built once per record (its configuration is one for all the record's messages), not per message,
    and its rate limit is read with it: one that is not valid refuses the upstream before any of its messages is
    claimed (the record fails, and is dead-lettered with the reason)."""

    @functools.cache
    def provider(name: str) -> Provider:
        route_limit(name)
        return get_provider(name)

    # The table is the record's: a message's route is chosen once, though its dispatch asks for its upstreams three
    # times (counting its route token, waiting for it, claiming it).
    @functools.cache
    def route_of(account_id: str, telco: str | None, msisdn: str) -> tuple[str, ...]:
        return table.choose(account_id, telco, msisdn).upstreams

    def upstreams_for(message: Message) -> list[Provider]:
        return [provider(name) for name in route_of(message.account_id, message.telco, message.msisdn)]

    return upstreams_for


def _announce(changes: Sequence[StatusChange]) -> None:
    """Clients that asked for delivery reports hear of every change, including those the dispatcher makes."""
    notifications = notifications_of(changes)
    if notifications:
        gateway().notify_queue.publish(notifications)


class _InvocationAnnouncements:
    """The client notifications of a dispatcher invocation's records, sent ANNOUNCE_BATCH to a SendMessageBatch
    across records (ten single sends' `submitted` notifications in one request, not ten). What is left when the
    records are done goes with the invocation's settle check (_queue_the_rest). A batch that cannot be sent now
    waits for that last send too, whose failure hands every record back: their redelivery announces again what
    the dispatcher changed (logic.dispatch.changes_since_dispatch), under the same webhook ids."""

    def __init__(self) -> None:
        self._waiting: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, changes: Sequence[StatusChange]) -> None:
        """Called from the records' worker threads (logic.dispatch announces off the event loop)."""
        notifications = notifications_of(changes)
        with self._lock:
            self._waiting.extend(notifications)
            if len(self._waiting) < ANNOUNCE_BATCH:
                return
            ready, self._waiting = self._waiting[:ANNOUNCE_BATCH], self._waiting[ANNOUNCE_BATCH:]
        try:
            gateway().notify_queue.publish(ready)
        except Exception:
            logger.warning("could not queue client notifications; trying again at the end of the invocation")
            with self._lock:
                self._waiting[:0] = ready
        else:
            # A redelivery of the records to this container does not queue them again (logic.dispatch).
            QUEUED_ANNOUNCEMENTS.remember(n["id"] for n in ready)

    def take_the_rest(self) -> list[dict[str, Any]]:
        with self._lock:
            rest, self._waiting = self._waiting, []
        return rest


def dispatch_records(event: dict[str, Any], remaining_ms: Callable[[], int] | None = None) -> dict[str, Any]:
    """The dispatcher's invocation: its FIFO records handled concurrently across message groups (accounts and their
    priority lanes), in order within each, under one limit on submits in flight; the partial batch response.
    `remaining_ms` is the Lambda context's time left: no message is claimed once a submit could outlast it."""
    records = [SQSRecord(raw) for raw in event["Records"]]
    failed = http.run(_dispatch_all(records, _out_of_time(remaining_ms)))
    return {"batchItemFailures": [{"itemIdentifier": record.message_id} for record in failed]}


def _out_of_time(remaining_ms: Callable[[], int] | None) -> Callable[[], bool] | None:
    """True once no more messages may be claimed; None without a deadline (no Lambda context)."""
    if remaining_ms is None:
        return None
    settings = gateway().settings
    # A submit's worst case (connect and read timeouts), then its status write and the record's announcements.
    reserve = settings.upstream_connect_timeout + settings.upstream_read_timeout + RECORDING_RESERVE_SECONDS
    return out_of_time_after(remaining_ms, reserve_seconds=reserve)


@dataclass(frozen=True)
class _Invocation:
    """What a dispatcher invocation's records share: the limit on submits in flight, the rate limiter (its counter
    tokens taken for all of them), its single sends' messages (read together), the deadline for claims, where
    their settle checks and client notifications gather, and the waits of the records handed back."""

    in_flight: SubmitSlots
    limiter: RateLimiter
    read_ahead: ReadAhead
    # Each record's command, parsed once: None for a body that is not one.
    commands: Mapping[str, DispatchCommand | None]
    out_of_time: Callable[[], bool] | None
    awaiting_report: Callable[[Sequence[Message]], None]
    announce: Callable[[Sequence[StatusChange]], None]
    # The seconds each record handed back was hidden for (its backoff: an upstream's Retry-After, a held claim's
    # lease, a failure's retry), by its message id; None for one left to the queue's visibility timeout. A failed
    # settle-check publish hands the records back again, never sooner than this (_hand_back_to_queue_the_rest).
    handed_back: dict[str, int | None]


async def _dispatch_all(records: Sequence[SQSRecord], out_of_time: Callable[[], bool] | None) -> list[SQSRecord]:
    wiring = gateway()
    concurrency = wiring.settings.dispatch_concurrency
    command_of = {record.message_id: _command_of(record) for record in records}
    commands = [command for command in command_of.values() if command is not None]
    awaiting_report: list[Message] = []
    announcements = _InvocationAnnouncements()
    read_ahead = await asyncio.to_thread(_read_single_sends, commands)
    # A route's tokens are expected for the single sends read here, routed to it; each other record tells the
    # limiter of its own when it has read them (logic.dispatch).
    by_upstream = await asyncio.to_thread(_messages_by_upstream, read_ahead)
    invocation = _Invocation(
        in_flight=SubmitSlots(concurrency),
        # One counter write takes the tokens of several records (an account's single sends), up to the in-flight
        # limit: tokens are good for their second only, and more than that many cannot be submitted at once.
        limiter=RateLimiter(
            wiring.store,
            expected=expected_grants(_messages_by_account(commands), by_upstream),
            take_ahead=concurrency,
        ),
        read_ahead=read_ahead,
        commands=command_of,
        out_of_time=out_of_time,
        awaiting_report=awaiting_report.extend,
        announce=announcements.add,
        handed_back={},
    )
    started: set[str] = set()

    async def handle(record: SQSRecord) -> dict[str, Any]:
        started.add(record.message_id)
        return await dispatch_record(record, invocation)

    failed = await handle_in_group_order(
        records,
        group_of=lambda record: record.attributes.message_group_id or record.message_id,
        may_overlap=lambda before, record: _same_batch(command_of[before.message_id], command_of[record.message_id]),
        handle=handle,
    )
    # Tokens taken ahead and not used go back while their second lasts. If they cannot (or the invocation died
    # before), they only keep the rest of that second from other dispatchers (RateLimiter.release).
    await invocation.limiter.release()
    held_back = [record for record in failed if record.message_id not in started]
    if held_back:
        await asyncio.to_thread(_release_held_back, held_back)
    if not await _queue_the_rest(announcements.take_the_rest(), awaiting_report):
        await asyncio.to_thread(_hand_back_to_queue_the_rest, records, invocation.handed_back)
        return list(records)
    return failed


def _messages_by_account(commands: Sequence[DispatchCommand]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for command in commands:
        counts[command.account_id] += len(command.message_ids)
    return counts


def _messages_by_upstream(read_ahead: ReadAhead) -> Counter[str]:
    """The single sends read ahead, by the upstream each is offered first. Without the route table (it could not be
    read), none: their routes' tokens are then taken as asked, and their records fail on the table themselves."""
    if not read_ahead.found:
        return Counter()
    try:
        routes = route_table()
    except Exception:
        logger.warning("could not read the route table; the single sends' route tokens are taken one by one")
        return Counter()
    return route_asks(read_ahead.found.values(), _routed(routes, functools.cache(upstream_rate_limit)))


def _read_single_sends(commands: Sequence[DispatchCommand]) -> ReadAhead:
    """When the read fails, each record reads its own messages, as it would without it."""
    try:
        return read_single_sends(gateway().store, commands)
    except Exception:
        logger.warning("could not read the invocation's single sends together; each record reads its own")
        return ReadAhead()


# An invocation that could not queue its settle check or its last notifications hands its records back for this
# long (or for a record's own longer backoff): the notify queue's fault may pass in seconds, and the records hold
# their accounts' FIFO groups meanwhile.
SETTLE_RETRY_SECONDS = 20


async def _queue_the_rest(notifications: list[dict[str, Any]], submitted: Sequence[Message]) -> bool:
    """The invocation's last client notifications and one settle check for its submitted messages, queued in one go
    before any of its records is consumed, on the notify queue (a standard queue, so a check can wait hours without
    holding up the accounts' FIFO groups). When they cannot be queued, every record goes back to the queue: their
    redelivery finds the messages submitted, announces them again (under the same webhook ids) and asks again (a
    check asked twice settles once)."""
    checks = settle.settle_checks(submitted, now=utc_now()) if submitted else []
    if not notifications and not checks:
        return True
    try:
        await asyncio.to_thread(gateway().notify_queue.publish, [*notifications, *checks])
    except Exception:
        logger.exception(
            "could not queue the settle check and last notifications; the records come back",
            extra={"messages": len(submitted), "notifications": len(notifications)},
        )
        return False
    QUEUED_ANNOUNCEMENTS.remember(n["id"] for n in notifications)
    QUEUED_CHECKS.remember(m.key for m in submitted)
    return True


def _hand_back_to_queue_the_rest(records: Sequence[SQSRecord], handed_back: Mapping[str, int | None]) -> None:
    """Every record of an invocation whose settle check or last notifications could not be queued, visible again
    after SETTLE_RETRY_SECONDS, or after its own backoff when it was handed back for longer: a throttled record still
    waits out its upstream's Retry-After, and a record left to the queue's visibility timeout keeps it. Until
    2026-12-07 every record came back after 20 s, a throttled one before its upstream would take it, and each early
    return counted another throttle towards the message's failure (test
    `test_a_throttled_record_handed_back_because_its_settle_check_failed_still_waits_out_the_upstreams_retry_after`)."""
    for record in records:
        own = handed_back.get(record.message_id, 0)
        if own is not None:
            _return_records([record], max(own, SETTLE_RETRY_SECONDS), "to queue its notifications again")


def _release_held_back(records: Sequence[SQSRecord]) -> None:
    """Records never started because an earlier record of their group failed: visible again at once. SQS FIFO
    returns nothing of a group while a record of it is in flight, so they still come after the failed record, at
    its retry; left alone they would wait out the queue's visibility timeout (360 s) and hold the group that long."""
    _return_records(records, 0, "held back behind a failed record")


def _return_records(records: Sequence[SQSRecord], seconds: int, why: str) -> None:
    """Records handed back, made visible again after `seconds` rather than the queue's visibility timeout (360 s),
    for which they would hold their message groups; each on the queue it came from (bulk or priority)."""
    for record in records:
        _hand_back(record, seconds, why)


def _hand_back(record: SQSRecord, seconds: int, why: str) -> bool:
    """The record made visible again after `seconds`, on the queue it came from; False when SQS refused it (past
    botocore's retries): the record then comes back after the queue's visibility timeout, only later, not lost."""
    try:
        gateway().dispatch_queue.delay(record.receipt_handle, seconds, source_arn=record.get("eventSourceARN"))
    except Exception:
        logger.warning(f"could not return a dispatch record {why}", extra={"record": record.message_id})
        return False
    return True


def _same_batch(before: DispatchCommand | None, command: DispatchCommand | None) -> bool:
    """Records of one batch may overlap: their messages were never sent in any order among themselves (a record's
    own go out concurrently). A batch's first record waits until every record before it in the group is done."""
    if before is None or command is None:
        return False
    return (before.account_id, before.reference_id) == (command.account_id, command.reference_id)


def _command_of(record: SQSRecord) -> DispatchCommand | None:
    """The record's dispatch command; None for a body that is not one (its handling fails, and dead-letters it)."""
    try:
        return DispatchCommand.model_validate_json(record.body)
    except ValueError:
        return None


async def dispatch_record(record: SQSRecord, invocation: _Invocation) -> dict[str, Any]:
    """The record's submitted messages go to the invocation's settle check (`awaiting_report`), its client-visible
    status changes to its `announce`."""
    try:
        return await _dispatch_record(record, invocation)
    except RetryLater:
        raise
    except Exception as error:
        wiring = gateway()
        failures = await asyncio.to_thread(_count_failure, record)
        if failures is None or failures < wiring.settings.dispatch_max_attempts:
            retry_in = failed_record_retry_seconds(failures)
            logger.warning(
                "dispatch record failed; retried",
                extra={"failures": failures, "error": type(error).__name__, "retry_in": retry_in},
            )
            invocation.handed_back[record.message_id] = retry_in
            if retry_in is not None:
                await asyncio.to_thread(_return_records, [record], retry_in, "to retry it soon after a failure")
            raise
        # The record keeps failing for a reason that is not the upstream's: park it where the alarm sees it,
        # with the reason, instead of letting it cycle until the queue's redrive drops it without one.
        logger.exception("dispatch record dead-lettered", extra={"failures": failures})
        await asyncio.to_thread(
            wiring.dispatch_dead_letters.dead_letter,
            record.body,
            group_id=record.attributes.message_group_id or "dead-letter",
            dedup_id=record.message_id,
            reason=f"failed {failures} times: {type(error).__name__}",
            error=str(error),
        )
        metrics.add_metric(name="DispatchDeadLettered", unit="Count", value=1)
        return {"dead_lettered": True}


# A failed record's first retries come soon, as most failures are a moment's (a throttled write, a dropped
# connection) and the record holds its account's FIFO group until it is retried; later ones wait out the queue's
# visibility timeout (360 s), so dispatch_max_attempts failures span a longer outage (about 18 minutes) before the
# record is parked.
FAILED_RECORD_RETRY_SECONDS = (5, 30)


def failed_record_retry_seconds(failures: int | None) -> int | None:
    """When a record that failed `failures` times comes back; None: after the queue's visibility timeout (also when
    the store could not count the failure: it may be what is failing)."""
    if failures is None or not 1 <= failures <= len(FAILED_RECORD_RETRY_SECONDS):
        return None
    return FAILED_RECORD_RETRY_SECONDS[failures - 1]


def _count_failure(record: SQSRecord) -> int | None:
    """How often this record has failed, this time included. Counted in the store, because SQS's receive count
    also grows each time a record is handed back or held behind another of its group (neither a failure). None when
    the store cannot count (it may be what is failing): the record is retried, and the queue's own redrive
    (`maxReceiveCount`) is the backstop. The receive count does not stand in: a record held at the front of a
    backlog has been received many times without failing once, and would be dead-lettered on its first failure."""
    try:
        # SQS's receive count names the delivery that failed; a record without one (never from SQS) counts anew.
        delivery = record.attributes.get("ApproximateReceiveCount") or f"unnumbered-{secrets.token_hex(8)}"
        return gateway().store.count_record_failure(record.message_id, delivery=delivery, now=utc_now())
    except Exception:
        logger.warning("could not count a dispatch record's failure; retried", extra={"record": record.message_id})
        return None


async def _dispatch_record(record: SQSRecord, invocation: _Invocation) -> dict[str, Any]:
    # A body that is not a command is parsed again, to raise what is wrong with it: a failure like any other
    # (dispatch_record), retried, then dead-lettered with that reason.
    command = invocation.commands.get(record.message_id) or DispatchCommand.model_validate_json(record.body)
    wiring = gateway()
    # Cached settings: a store read at most once per SETTINGS_MAX_AGE_SECONDS, off the loop all the same.
    routes, rate_limit = await asyncio.gather(
        asyncio.to_thread(route_table), asyncio.to_thread(_rate_limit, command.account_id)
    )
    # Read once per upstream and record rather than per message, as the upstreams themselves are.
    route_limit = functools.cache(upstream_rate_limit)
    # As the rate limit's read left it in the cache: its opt-out count spares the opt-out read of most accounts.
    account = await asyncio.to_thread(_account_settings().get_account, command.account_id)
    deps = DispatchDependencies(
        messages=wiring.store,
        accounts=wiring.store,
        upstreams_for=_routed(routes, route_limit),
        callback_base_url=wiring.settings.callback_base_url,
        clock=utc_now,
        concurrency=wiring.settings.dispatch_concurrency,
        in_flight=invocation.in_flight,
        validity=timedelta(hours=wiring.settings.message_validity_hours),
        limiter=invocation.limiter,
        rate_scopes=[account_scope(command.account_id, rate_limit)],
        route_limit=route_limit,
        max_submit_attempts=wiring.settings.dispatch_max_attempts,
        claim_lease_seconds=wiring.settings.dispatch_claim_lease_seconds,
        announce=invocation.announce,
        awaiting_report=invocation.awaiting_report,
        out_of_time=invocation.out_of_time or (lambda: False),
        wait_out_the_rate_limit=invocation.out_of_time is not None,
        read_ahead=invocation.read_ahead.of(command),
        opt_outs=wiring.store,
        account=account,
    )
    outcome = await dispatch(command, deps)
    metrics.add_metric(name="MessagesSubmitted", unit="Count", value=outcome.submitted)
    metrics.add_metric(name="MessagesFailed", unit="Count", value=outcome.failed)
    count_final_statuses(outcome.changes)
    count_upstream_failures(outcome.upstream_failures)
    # A record whose every message was submitted is told by the metrics above: its line is DEBUG (about 450 bytes
    # of CloudWatch Logs per record, one per message for single sends; docs/benchmarks-floor.md). One with
    # failures, expiries, skips, retries or a dead dispatcher's messages is what an operator looks for: INFO.
    routine = not (
        outcome.failed
        or outcome.expired
        or outcome.skipped
        or outcome.retry
        or outcome.unconfirmed
        or outcome.taken_over
    )
    (logger.debug if routine else logger.info)(
        "dispatch record processed",
        extra={
            "reference_id": command.reference_id,
            "submitted": outcome.submitted,
            "failed": outcome.failed,
            "expired": outcome.expired,
            "skipped": outcome.skipped,
            "unconfirmed": outcome.unconfirmed,
            "taken_over": outcome.taken_over,
            "retry": len(outcome.retry),
        },
    )
    if outcome.needs_retry:
        delay = outcome.retry_delay(backoff_base=wiring.settings.dispatch_backoff_base_seconds)
        # A hand-back SQS refuses leaves the record to the queue's visibility timeout (360 s: longer than most
        # waits, an upstream's Retry-After among them), a retry like any other: never a failure of the record's.
        # Until 2026-12-07 it failed the record: back after 5 s whatever the upstream asked, its failure counted,
        # and at DISPATCH_MAX_ATTEMPTS such failures dead-lettered with its messages queued, charged and unsent.
        handed_back = await asyncio.to_thread(_hand_back, record, delay, "after a transient failure")
        invocation.handed_back[record.message_id] = delay if handed_back else None
        raise RetryLater(f"{len(outcome.retry)} messages of batch {command.reference_id} met transient failures")
    return {"submitted": outcome.submitted}


async def post_webhook(url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
    import httpx

    from sms_gateway.adapters.webhook_http import UnsafeWebhookTarget, webhook_client

    try:
        # The SSRF-guarded client (never the upstreams' one): it dials only addresses it has vetted.
        response = await webhook_client().post(url, headers=headers, content=body)
    except UnsafeWebhookTarget as error:
        raise WebhookFailed(str(error)) from error
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        # No connection: the host is down or blackholed, whatever the path (what the circuit breaker counts).
        raise WebhookFailed(f"client webhook unreachable: {error}", unreachable=True, host_down=True) from error
    except httpx.TimeoutException as error:
        # Connected but no answer in time: this URL is slow, not its host down (another account's path on a shared
        # host may answer at once); its retry schedule judges it.
        raise WebhookFailed(f"client webhook unreachable: {error}", unreachable=True) from error
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise WebhookFailed(f"client webhook unreachable: {error}") from error
    except UnicodeError as error:
        # A host httpx cannot read back (an xn-- label that is no valid A-label, stored before the set-time check
        # refused it): a failed delivery with its reason, not an error that crashed the record until the redrive
        # parked it with none (until session 34).
        raise WebhookFailed(f"client webhook URL has a host name that is not valid IDNA: {error}") from error
    try:
        return WebhookResponse(
            status_code=response.status_code,
            body=response.text,
            retry_after=http.retry_after_seconds(response.headers.get("retry-after")),
            location=response.headers.get("location"),
        )
    except Exception as error:
        # Whatever the client's answer makes fail here is a failed delivery on the retry schedule, not an error that
        # returns the record every 200 s until the redrive parks it without a reason.
        raise WebhookFailed(
            f"client webhook's answer could not be read: {error!r}"[:300], status_code=response.status_code
        ) from error


# The notify queue's maxReceiveCount (template.yaml NotifyQueue): SQS's redrive parks a record received this often in
# the notify DLQ, without a reason, whatever it was waiting for.
NOTIFY_MAX_RECEIVES = 12
# A notify-queue record received this often that must come back later is queued again as a fresh record (its receive
# count starts over: one SendMessage where a hand-back is one ChangeMessageVisibility) rather than handed back. The
# usual path stays below it: a settle check takes 6 receives for the 48 h DLR wait (7 for the longest, 72 h), and a
# notification is handed back after each of its attempts (7 with the default schedule). Every receive spent
# otherwise (a hand-back SQS refused brings the record back after the visibility timeout; an invocation that crashed
# or timed out) is a receive nearer the redrive: until 2026-12-07 seven refused hand-backs within the 48 h parked a
# settle check (its messages left `submitted` and charged), and a notification lost its attempts. From here a record
# has 4 receives to be queued afresh (a requeue that fails too hands it back as before).
NOTIFY_REQUEUE_FROM = NOTIFY_MAX_RECEIVES - 3


def _receives(record: SQSRecord) -> int:
    """How often SQS has handed the record out (1 when the event does not say)."""
    return int((record.get("attributes") or {}).get("ApproximateReceiveCount") or 1)


def _come_back_later(record: SQSRecord, body: dict[str, Any], seconds: int, later: Exception) -> dict[str, Any]:
    """Hands the notify-queue record back for `seconds` (raising `later`, so that it is kept) or, received
    NOTIFY_REQUEUE_FROM times already, queues `body` as a fresh record in its place (the record is then deleted)."""
    queue = gateway().notify_queue
    if _receives(record) >= NOTIFY_REQUEUE_FROM:
        try:
            queue.requeue(body, seconds)
        except Exception:
            logger.warning("could not requeue a notify-queue record near its receive limit; handing it back")
        else:
            metrics.add_metric(name="NotifyRecordsRequeued", unit="Count", value=1)
            return {"requeued": True}
    queue.delay(record.receipt_handle, seconds)
    raise later


class NotifyLater(Exception):
    """Raised for a notification the client's webhook failed: the record comes back after its retry delay."""


class SettleLater(Exception):
    """Raised for a settle check that is not due yet: the record comes back when it is (at most 12 h a hop)."""


async def notify_record_alongside_others(record: SQSRecord) -> dict[str, Any]:
    """notify_record on a worker thread of its own, so that a batch's records are posted concurrently (Powertools'
    AsyncBatchProcessor gathers them). A worker has its own event loop and webhook client (adapters/http.py,
    adapters/webhook_http.py); the workers live as long as the container, so their connections are reused."""
    if not _notify_workers:
        _notify_workers.append(ThreadPoolExecutor(NOTIFY_CONCURRENCY, thread_name_prefix="sms-gateway-notify"))
    in_context = functools.partial(contextvars.copy_context().run, notify_record, record)
    return await asyncio.get_running_loop().run_in_executor(_notify_workers[0], in_context)


def notify_record(record: SQSRecord) -> dict[str, Any]:
    notification = json.loads(record.body)
    if settle.is_settle_check(notification):
        return _settle_record(record, notification)
    # A requeued copy received before its next attempt is due waits again, posting nothing.
    wait = webhook_retries.seconds_until_due(notification, utc_now())
    if wait:
        return _come_back_later(record, notification, wait, NotifyLater(f"requeued notification due in {wait} s"))
    attempt = webhook_retries.attempt_of(notification, _receives(record))
    wiring = gateway()
    # Before the post, whatever the client's webhook does: a STOP is the law's, not the client's, to honour.
    if inbound.apply_keyword_still_pending(notification, wiring.store, wiring.store, utc_now()):
        metrics.add_metric(name="KeywordsAppliedByNotifier", unit="Count", value=1)
    try:
        settings = _account_settings()
        delivered = http.run(
            deliver(
                notification,
                settings,
                # An origin that failed FAILURES_TO_OPEN times in a row here is not posted to for a while.
                wiring.webhook_breaker.guard(post_webhook),
                wiring.webhook_credentials,
                recheck=settings.recheck,
            )
        )
    except WebhookFailed as failure:
        if isinstance(failure, WebhookNotTried):
            metrics.add_metric(name="WebhooksNotTriedHostFailing", unit="Count", value=1)
        return _notify_failed(record, notification, attempt, failure)
    if webhook_retries.may_have_failure_record(notification, attempt):
        if delivered:
            webhook_retries.record_delivered(wiring.store, notification, delivered, now=utc_now())
        elif webhook_retries.record_no_url(wiring.store, notification, now=utc_now()):
            logger.info(
                "notification dead: no webhook URL set",
                extra={"notification_id": webhook_retries.notification_id(notification), "attempt": attempt},
            )
    metrics.add_metric(name="WebhooksDelivered", unit="Count", value=1 if delivered else 0)
    return {"delivered": delivered is not None}


def _settle_record(record: SQSRecord, check: dict[str, Any]) -> dict[str, Any]:
    wiring = gateway()
    deps = settle.SettleDependencies(
        messages=wiring.store,
        accounts=wiring.store,
        clock=utc_now,
        dlr_wait=timedelta(seconds=wiring.settings.dlr_wait_seconds),
    )
    incomplete: settle.SettleIncomplete | None = None
    try:
        outcome = settle.settle(check, deps)
    except settle.SettleIncomplete as error:
        # What it did settle is announced (and marked if that fails) before the check fails for the rest.
        outcome, incomplete = error.outcome, error
    try:
        _announce([*outcome.made_before, *outcome.unannounced, *outcome.changes])
    except Exception:
        # The changes of reports held on an upstream id that this check applied: its redelivery finds them final
        # and, unmarked, passes over them (its expiries it finds by their error code).
        due = utc_now() + timedelta(seconds=wiring.settings.inbound_sweep_delay_seconds)
        mark_unannounced_finals(settle.held_report_changes(outcome), wiring.store, due=due)
        raise
    settle.announced_again(outcome, deps)
    count_final_statuses(outcome.changes)
    if incomplete is not None:
        raise incomplete
    if outcome.check_again_in is not None:
        later = SettleLater(f"settle check due in {outcome.check_again_in} s")
        return _come_back_later(record, check, outcome.check_again_in, later)
    # Only the expiries: the changes also hold what reports held on an upstream id settled (delivered, failed).
    if outcome.expired:
        metrics.add_metric(name="MessagesExpiredWithoutDlr", unit="Count", value=len(outcome.expired))
    return {"expired": len(outcome.expired)}


def _notify_failed(
    record: SQSRecord, notification: dict[str, Any], attempt: int, failure: WebhookFailed
) -> dict[str, Any]:
    wiring = gateway()
    now = utc_now()
    outcome = webhook_retries.record_failure(
        wiring.store,
        notification,
        failure,
        attempt=attempt,
        delays=wiring.settings.notify_retry_delays,
        now=now,
        copy=webhook_retries.copy_id(notification, record.message_id),
    )
    # The attempt the failure record counts, whatever the record's receives were.
    attempt = outcome.failure.attempts
    context = {"notification_id": outcome.failure.notification_id, "attempt": attempt, "reason": str(failure)}
    if outcome.delivered_already:
        # A copy of a notification the client has (its record reads delivered): SQS deletes it, nothing is owed.
        logger.info("client webhook failed a copy of a delivered notification; dropped", extra=context)
        metrics.add_metric(name="WebhookCopiesDropped", unit="Count", value=1)
        return {"delivered": False, "delivered_already": True}
    if outcome.gave_way:
        # Another copy of the notification (queued as another SQS message) carries its schedule: SQS deletes this one.
        logger.info("client webhook failed a copy of a notification another copy is retrying; dropped", extra=context)
        metrics.add_metric(name="WebhookCopiesDropped", unit="Count", value=1)
        return {"delivered": False, "gave_way": True}
    if outcome.retry_in is not None:
        logger.info("client webhook failed; retrying", extra={**context, "retry_in": outcome.retry_in})
        metrics.add_metric(name="WebhooksRetried", unit="Count", value=1)
        later = NotifyLater(f"client webhook failed (attempt {attempt}), next in {outcome.retry_in} s: {failure}")
        copy = webhook_retries.requeued(notification, outcome.failure, outcome.retry_in, now)
        return _come_back_later(record, copy, outcome.retry_in, later)
    if failure.gone:
        # The client's endpoint said it takes no more (410 Gone): dead, listed and resendable by the client, and not
        # parked in the notify DLQ, whose alarm pages the operator for a fault of ours or a client that is down.
        logger.info("client webhook answered 410 Gone; notification dead, not retried", extra=context)
        metrics.add_metric(name="WebhooksGone", unit="Count", value=1)
        return {"delivered": False, "gone": True}
    # Recorded dead before it is parked: if the send below fails, SQS brings the record back and this repeats. Parked
    # as it was queued, without a requeued copy's count and due time (replayed, it would be dead at once).
    parked = webhook_retries.parked_notification(notification)
    SqsDeadLetterQueue(wiring.settings.notify_dead_letter_queue_url).dead_letter(
        json.dumps(parked) if parked != notification else record.body,
        reason=f"client webhook failed {attempt} attempts",
        error=str(failure),
    )
    logger.warning("client webhook notification dead-lettered", extra=context)
    metrics.add_metric(name="WebhooksDeadLettered", unit="Count", value=1)
    return {"delivered": False, "dead_lettered": True}
