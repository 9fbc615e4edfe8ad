"""Client webhook retries: the schedule, the record of each failed notification, and resending dead ones."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sms_gateway.domain.models import from_iso, iso
from sms_gateway.errors import Conflict, InvalidRequest, NotFound
from sms_gateway.logic.notify import WebhookFailed, hash_of
from sms_gateway.ports import (
    MAX_QUEUE_DELAY_SECONDS,
    NotificationQueue,
    PartlyQueued,
    WebhookFailure,
    WebhookFailureState,
    WebhookFailureStore,
)

# SQS keeps a received record invisible for at most 12 hours from its receipt: no delay can be longer.
MAX_DELAY_SECONDS = MAX_QUEUE_DELAY_SECONDS
JITTER = 0.10
RESEND_ALL_LIMIT = 500
MAX_PAGE_SIZE = 500
NOTIFICATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# The states a failure may be recorded over: a notification delivered meanwhile (by a duplicate record) stays
# delivered; a dead one is dead again when its record comes back (the dead-letter send failed and SQS retried).
_RETRYING_FROM: frozenset[WebhookFailureState] = frozenset({"retrying", "resent"})
_DEAD_FROM: frozenset[WebhookFailureState] = frozenset({"retrying", "resent", "dead"})
_DELIVERED_FROM: frozenset[WebhookFailureState] = frozenset({"retrying", "resent", "dead"})
_RESENDABLE: frozenset[WebhookFailureState] = frozenset({"dead"})
# How long a notification may read `resent` before it can be resent again. A resend claims it (dead -> resent) and
# then queues it; a function that dies in between (a Lambda timeout) leaves it claimed and on no queue. A resent
# notification is tried within seconds of its queueing and then reads retrying, delivered or dead: one that still
# reads resent after this long was never queued, or waited behind a backlog this long and goes twice (the same
# webhook-id, which the client drops).
RESEND_LEASE = timedelta(minutes=15)
# How long past its next attempt's due time a retrying notification's owner (the queued copy carrying its schedule)
# may stay silent before another copy takes the schedule over. An owner is on the queue until the record reads
# delivered or dead (handed back, requeued under its own copy id, or back after its visibility timeout when its
# invocation died); one silent this long was parked by the queue's redrive or removed by hand, and a copy giving way to
# it would leave the notification undelivered. Taking over from an owner that is only late costs nothing: it meets a
# record owned by another live copy on its next failure and gives way in turn.
OWNER_LEASE = timedelta(hours=1)
# Entries in one SendMessageBatch call.
QUEUE_BATCH = 10


def retry_delay(
    attempt: int,
    delays: Sequence[int],
    *,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> int | None:
    """Seconds to wait after failed attempt `attempt` (1 for the first), or None when it was the last one
    (there are len(delays) + 1 attempts). Each delay moves by up to 10% either way, so clients that failed
    together are not retried together; a client's Retry-After makes it at least that long."""
    if attempt < 1 or attempt > len(delays):
        return None
    seconds = delays[attempt - 1] * (1 + JITTER * (2 * rand() - 1))
    if retry_after is not None:
        seconds = max(seconds, math.ceil(retry_after))
    return max(0, min(round(seconds), MAX_DELAY_SECONDS))


def notification_id(notification: dict[str, Any]) -> str:
    """The notification's id, or the one deliver() signs it with when it has none (its `webhook-id`)."""
    given = notification.get("id")
    if given:
        return str(given)
    body = json.dumps(notification["payload"], separators=(",", ":"))
    return f"{notification['kind']}_{hash_of(body)}"


@dataclass(frozen=True)
class FailureOutcome:
    # Seconds until the next attempt; None: that was the last attempt and the notification is dead.
    retry_in: int | None
    failure: WebhookFailure
    # False when the record was in a state this failure may not overwrite (delivered, or dead for a retry).
    recorded: bool
    # The record says the client got this notification already: this is a copy of it (SQS delivers at least once),
    # and its failure is nothing to retry, dead-letter or count.
    delivered_already: bool = False
    # Another queued copy of the notification (another SQS message) carries its schedule: this one is dropped, and
    # its failure is nothing to retry, dead-letter or count.
    gave_way: bool = False


def record_failure(
    store: WebhookFailureStore,
    notification: dict[str, Any],
    error: WebhookFailed,
    *,
    attempt: int,
    delays: Sequence[int],
    now: datetime,
    rand: Callable[[], float] = random.random,
    copy: str | None = None,
) -> FailureOutcome:
    """Records a failed attempt (retrying, or dead after the last one or a 410 Gone) and says when to try again.
    `attempt` is what the caller takes this attempt to be (attempt_of: its record's receives); the number recorded
    is the record's count of failed attempts plus one, by a write conditional on that count. A receive that posted
    nothing (the notifier crashed or timed out before the post, a requeued copy waited out its delay) is thus no
    attempt: until 2026-12-07 each was one, and the notification went dead posted fewer times than its schedule
    says (and a record received 12 times was parked by SQS's redrive, its record left `retrying`). When the count is
    not the one guessed, it is read and the write made again: one read and one write more, off the usual path.

    `copy` is which queued copy of the notification failed (copy_id: its SQS MessageId). A notification can be on the
    queue as two messages (queued twice: a final report and the upstream's first repeat of it, a resend
    while a copy was queued); until 2026-12-07 both stepped the one count, and one queued twice while its webhook was
    down was dead after about half its schedule. The record now names the copy that carries the schedule (its
    owner, by the same conditional write): another copy meeting it retrying gives way (gave_way: dropped, nothing
    more posted), unless the owner went silent over OWNER_LEASE. A receive of the same message (SQS delivered it
    twice: the same MessageId) is the same copy, and counts on: deleting it dropped the retry the other delivery
    handed back (f9a60fa, reverted in 002ef73)."""

    def record(attempt: int, owner_before: str | None = None) -> FailureOutcome:
        """Records failed attempt `attempt`, if the record counts attempt - 1 failed attempts before it (or, for the
        first, there is none yet or it was resent), owned by `owner_before` (by default this copy) or by no one."""
        # A 410 Gone is the client saying the endpoint takes no more: dead after this attempt, whatever is left.
        retry_in = None if error.gone else retry_delay(attempt, delays, retry_after=error.retry_after, rand=rand)
        failure = WebhookFailure(
            account_id=str(notification["account_id"]),
            notification_id=notification_id(notification),
            kind=str(notification.get("kind", "")),
            url=error.url or notification.get("url"),
            state="retrying" if retry_in is not None else "dead",
            attempts=attempt,
            last_error=str(error)[:1024],
            last_status_code=error.status_code,
            first_failed_at=iso(now),
            last_attempt_at=iso(now),
            next_attempt_at=iso(now + timedelta(seconds=retry_in)) if retry_in is not None else None,
            # What the queue adds (the resend marker, a requeued copy's count and due time) is not part of what is
            # stored for the next resend.
            notification=stored_notification(notification),
            owner=copy,
        )
        recorded = store.save_webhook_failure(
            failure,
            only_from=_RETRYING_FROM if retry_in is not None else _DEAD_FROM,
            attempts_before=attempt - 1,
            owner_before=owner_before,
        )
        return FailureOutcome(retry_in=retry_in, failure=failure, recorded=recorded)

    outcome = record(attempt)
    if outcome.recorded:
        return outcome
    # Left alone: delivered, dead, or counted otherwise than guessed. One read, and only here.
    found = store.get_webhook_failure(outcome.failure.account_id, outcome.failure.notification_id)
    if found is not None and _carried_by_another(found, copy, now):
        return replace(outcome, gave_way=True)
    if found is None or found.state in _COUNTED:
        counted = 0 if found is None or found.state == "resent" else found.attempts
        # A retrying record owned by another copy here is one whose owner went silent: taken over from that owner.
        outcome = record(counted + 1, owner_before=found.owner if found is not None else None)
        if outcome.recorded:
            return outcome
    # Delivered: the client has it. A copy of a dead notification is as undelivered as the first one was and keeps
    # its schedule (by its own receives).
    return replace(outcome, delivered_already=found is not None and found.state == "delivered")


# The states whose count of failed attempts a failure goes on from (a resent notification's starts over).
_COUNTED: frozenset[WebhookFailureState] = frozenset({"retrying", "resent"})


def _carried_by_another(found: WebhookFailure, copy: str | None, now: datetime) -> bool:
    """The record is retrying on another queued copy's schedule, and that copy has not gone silent (OWNER_LEASE past
    its next attempt's due time). A resent record belongs to no copy yet: the resend's message takes it over."""
    if found.state != "retrying" or copy is None or found.owner is None or found.owner == copy:
        return False
    due = found.next_attempt_at
    return due is not None and from_iso(due) + OWNER_LEASE >= now


# What the notify queue adds to a notification: the resend marker, and a requeued copy's attempts, due time and the
# copy it goes on as.
RESENT = "resent"
ATTEMPTS = "attempts"
NOT_BEFORE = "not_before"
QUEUED_AS = "queued_as"
# A copy queued while another may be on the queue (an upstream's repeat of the report that settled the message):
# delivered on its first try, it closes the failure record the other copy may be retrying (queued_again).
AGAIN = "again"


def stored_notification(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification as it was first queued, without what the queue added to it."""
    return {k: v for k, v in notification.items() if k not in (RESENT, ATTEMPTS, NOT_BEFORE, QUEUED_AS, AGAIN)}


def queued_again(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification as a copy queued while another copy of it may be on the queue (its webhook failing: that
    copy retrying it). Delivered on its first try, the copy closes the failure record (may_have_failure_record: one
    conditional write, on this path only), so the other copy, on its next receive, finds it delivered: a failed post
    of it is dropped, not counted on to dead and parked (until 2026-12-07 the record read `retrying` and the other
    copy's schedule ran on, to the notify dead-letter queue, for a notification the client had)."""
    return {**notification, AGAIN: True}


def parked_notification(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification as the notify DLQ keeps it: without a requeued copy's count, due time and copy."""
    return {k: v for k, v in notification.items() if k not in (ATTEMPTS, NOT_BEFORE, QUEUED_AS)}


def copy_id(notification: dict[str, Any], message_id: str) -> str:
    """Which queued copy of the notification the SQS message `message_id` is: the message itself, or, for a record
    queued afresh in place of a message received NOTIFY_REQUEUE_FROM times (requeued), that message: the same copy,
    going on with its schedule, not another one to give way."""
    return str(notification.get(QUEUED_AS) or message_id)


def attempt_of(notification: dict[str, Any], receives: int) -> int:
    """What a receive of the notification is taken to be as an attempt: the failed attempts a requeued copy carries,
    plus its record's receives. Only a guess, which record_failure corrects from the failure record's count."""
    return int(notification.get(ATTEMPTS) or 0) + max(receives, 1)


def requeued(notification: dict[str, Any], failure: WebhookFailure, retry_in: int, now: datetime) -> dict[str, Any]:
    """The notification as a fresh record of the notify queue after failed attempt `failure.attempts`: its count,
    when its next attempt is due (a record is delayed 15 minutes at most; one received earlier waits again), and the
    copy it goes on as (the failure's owner: a new MessageId, the same copy)."""
    carried = {QUEUED_AS: failure.owner} if failure.owner else {}
    return {**notification, ATTEMPTS: failure.attempts, NOT_BEFORE: iso(now + timedelta(seconds=retry_in)), **carried}


def seconds_until_due(notification: dict[str, Any], now: datetime) -> int:
    """Seconds before a requeued copy's next attempt is due; 0 when it is due (or was never requeued)."""
    due = notification.get(NOT_BEFORE)
    if not due:
        return 0
    return max(0, math.ceil((from_iso(str(due)) - now).total_seconds()))


def may_have_failure_record(notification: dict[str, Any], attempt: int) -> bool:
    """Only a notification that failed before can have a record to close (delivered, or dead for want of a URL):
    the first try of a new one costs no extra write. A resent one starts again at attempt 1, so it says so itself,
    as does a copy queued again while another copy may be retrying it (queued_again)."""
    return attempt > 1 or bool(notification.get(RESENT) or notification.get(ATTEMPTS) or notification.get(AGAIN))


def record_delivered(store: WebhookFailureStore, notification: dict[str, Any], url: str, *, now: datetime) -> bool:
    """Closes the record of a notification that failed before and reached the client now, at `url`: its `url` says
    where it went (the client may have changed its webhook since it failed: until 2026-12-07 the record named the
    URL of the failed attempts)."""
    return _move(store, notification, "delivered", only_from=_DELIVERED_FROM, now=now, url=url)


NO_URL_ERROR = "no webhook URL set"


def record_no_url(store: WebhookFailureStore, notification: dict[str, Any], *, now: datetime) -> bool:
    """A notification that failed before and, on its retry (or resend), finds no URL set: its record dead with that
    reason, as it will not be tried again, so it is listed truthfully and can be resent once a URL is set. Left
    retrying, it was neither tried again nor resendable. Only from retrying or resent: a duplicate finds it dead
    (or delivered) already and changes nothing."""
    return _move(store, notification, "dead", only_from=_RETRYING_FROM, now=now, last_error=NO_URL_ERROR)


def _move(
    store: WebhookFailureStore,
    notification: dict[str, Any],
    target: WebhookFailureState,
    *,
    only_from: frozenset[WebhookFailureState],
    now: datetime,
    last_error: str | None = None,
    url: str | None = None,
) -> bool:
    return store.set_webhook_failure_state(
        str(notification["account_id"]),
        notification_id(notification),
        target,
        only_from=only_from,
        now=iso(now),
        last_error=last_error,
        url=url,
    )


def parse_state(raw: str | None) -> WebhookFailureState | None:
    if raw is None or raw == "":
        return None
    value = raw.strip().lower()
    if value not in ("retrying", "dead", "delivered", "resent"):
        raise InvalidRequest(f"state must be one of retrying, dead, delivered, resent; got {raw!r}")
    return value  # type: ignore[return-value]


def parse_notification_id(raw: str) -> str:
    if not NOTIFICATION_ID.match(raw):
        raise InvalidRequest(
            "the notification id is letters, digits and _ . : - (at most 128), such as dlr_<message_id>_<sequence>"
        )
    return raw


def get_failure(store: WebhookFailureStore, account_id: str, raw_id: str) -> WebhookFailure:
    found = store.get_webhook_failure(account_id, parse_notification_id(raw_id))
    if found is None:
        raise NotFound(f"no failed notification {raw_id!r}")
    return found


def resendable(failure: WebhookFailure, now: datetime) -> bool:
    """Dead, or claimed `resent` over RESEND_LEASE ago and not tried since (the resend never queued it)."""
    if failure.state in _RESENDABLE:
        return True
    return failure.state == "resent" and (failure.resent_at is None or from_iso(failure.resent_at) < now - RESEND_LEASE)


def resend_failure(
    store: WebhookFailureStore, queue: NotificationQueue, account_id: str, raw_id: str, *, now: datetime
) -> WebhookFailure:
    """Queues a dead notification again, as a fresh record with the whole schedule ahead of it."""
    failure = get_failure(store, account_id, raw_id)
    if not resendable(failure, now):
        raise Conflict(
            f"notification {failure.notification_id} is {failure.state}: only a dead one (or one resent over "
            f"{RESEND_LEASE.seconds // 60} minutes ago and not tried since) can be resent"
        )
    if not _claim(store, failure, now):
        raise Conflict(f"notification {failure.notification_id} changed meanwhile; read it again")
    claimed = [failure]
    try:
        _queue(queue, claimed)
        claimed = []
    finally:
        _release(store, claimed, now)
    return failure.model_copy(update={"state": "resent", "resent_at": iso(now), "next_attempt_at": None})


def resend_dead(
    store: WebhookFailureStore,
    queue: NotificationQueue,
    account_id: str,
    *,
    now: datetime,
    limit: int = RESEND_ALL_LIMIT,
) -> tuple[int, bool]:
    """Queues up to `limit` of the account's dead notifications again (and any a resend claimed over RESEND_LEASE
        ago but never queued); how many, and whether more are left.
        Claimed one by one (another resend may be running), and each ten claimed are queued (one SendMessageBatch call)
        before the next are claimed: a queueing that fails leaves only those ten claimed, and puts them back to dead
    (only those it did not take when SQS took some: until 2026-12-06 all ten, and the next resend-all queued the
    others a second time).
        Until 2026-12-06 a whole page was claimed first, and a failed call stranded the rest of it `resent`, on no queue
        and not resendable."""
    candidates = _resendable(store, account_id, now, page_size=min(100, max(limit, 1)))
    resent = 0
    claimed: list[WebhookFailure] = []  # claimed `resent`, not on the queue yet
    try:
        for failure in candidates:
            if resent + len(claimed) == limit:
                return resent, True
            if _claim(store, failure, now):
                claimed.append(failure)
            if len(claimed) == QUEUE_BATCH or resent + len(claimed) == limit:
                _queue(queue, claimed)
                resent, claimed = resent + len(claimed), []
        _queue(queue, claimed)
        resent, claimed = resent + len(claimed), []
        return resent, False
    finally:
        _release(store, claimed, now)


def _resendable(
    store: WebhookFailureStore, account_id: str, now: datetime, *, page_size: int
) -> Iterator[WebhookFailure]:
    """The account's resendable notifications, newest first, read page by page as they are taken: the dead ones and
    those claimed `resent` over RESEND_LEASE ago. One unfiltered listing: a listing filtered by state reads every
    record anyway (the filter is applied to the records read), so one per state would read them all twice."""
    cursor: str | None = None
    while True:
        page, cursor = store.list_webhook_failures(account_id, limit=page_size, cursor=cursor)
        yield from (failure for failure in page if resendable(failure, now))
        if cursor is None:
            return


def _claim(store: WebhookFailureStore, failure: WebhookFailure, now: datetime) -> bool:
    return store.set_webhook_failure_state(
        failure.account_id,
        failure.notification_id,
        "resent",
        only_from=_RESENDABLE,
        now=iso(now),
        resent_before=iso(now - RESEND_LEASE),
    )


def _queue(queue: NotificationQueue, failures: list[WebhookFailure]) -> None:
    """Queues `failures`. When the queue took only some of them, `failures` keeps only those it did not take (the
    caller releases them: the others are on the queue, `resent`, and a resend-all called again does not queue them
    twice) and the error is raised."""
    if not failures:
        return
    try:
        queue.publish([{**failure.notification, RESENT: True} for failure in failures])
    except PartlyQueued as error:
        failures[:] = [failures[i] for i in error.failed if 0 <= i < len(failures)]
        raise


def _release(store: WebhookFailureStore, failures: Sequence[WebhookFailure], now: datetime) -> None:
    """Claimed and not queued: dead again, so a later resend finds them. Best effort, as it runs while an error
    propagates: one left `resent` is resendable once RESEND_LEASE has passed."""
    for failure in failures:
        with contextlib.suppress(Exception):
            store.set_webhook_failure_state(
                failure.account_id, failure.notification_id, "dead", only_from=frozenset({"resent"}), now=iso(now)
            )
