"""Client webhook retries: the schedule, the failure records and resending, against in-memory fakes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from sms_gateway.domain.models import iso
from sms_gateway.domain.webhook_urls import origin_of
from sms_gateway.errors import Conflict, InvalidRequest, NotFound
from sms_gateway.logic import webhook_retries
from sms_gateway.logic.notify import WebhookFailed, WebhookResponse
from sms_gateway.logic.webhook_breaker import (
    FAILURES_TO_OPEN,
    OPEN_SECONDS,
    Outcome,
    WebhookBreaker,
    WebhookNotTried,
)
from sms_gateway.ports import MAX_QUEUE_DELAY_SECONDS, PartlyQueued, WebhookFailure, WebhookFailureState
from sms_gateway.settings import MAX_NOTIFY_RETRY_DELAYS, NOTIFY_QUEUE_RETENTION_SECONDS, Settings
from sms_gateway_tools.template import load_template
from tests.fakes import Clock, InMemoryStore

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
DEFAULT = Settings().notify_retry_delays


class FailureStore(InMemoryStore):
    """InMemoryStore with the WebhookFailureStore port, with the DynamoDB adapter's conditions."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[tuple[str, str], WebhookFailure] = {}

    def save_webhook_failure(
        self,
        failure: WebhookFailure,
        *,
        only_from: frozenset[WebhookFailureState],
        attempts_before: int | None = None,
        owner_before: str | None = None,
    ) -> bool:
        key = (failure.account_id, failure.notification_id)
        current = self.failures.get(key)
        if current is not None and current.state not in only_from:
            return False
        if attempts_before is not None:
            counted = 0 if current is None or current.state == "resent" else current.attempts
            if counted != attempts_before:
                return False
            owner = owner_before or failure.owner
            if counted and owner is not None and current is not None and current.owner not in (None, owner):
                return False
        first = current.first_failed_at if current else failure.first_failed_at
        self.failures[key] = failure.model_copy(update={"first_failed_at": first})
        return True

    def get_webhook_failure(self, account_id: str, notification_id: str) -> WebhookFailure | None:
        return self.failures.get((account_id, notification_id))

    def set_webhook_failure_state(
        self,
        account_id: str,
        notification_id: str,
        target: WebhookFailureState,
        *,
        only_from: frozenset[WebhookFailureState],
        now: str,
        last_error: str | None = None,
        resent_before: str | None = None,
        url: str | None = None,
    ) -> bool:
        current = self.failures.get((account_id, notification_id))
        if current is None:
            return False
        stale_resend = (
            resent_before is not None
            and current.state == "resent"
            and (current.resent_at is None or current.resent_at < resent_before)
        )
        if current.state not in only_from and not stale_resend:
            return False
        stamp = {f"{target}_at": now} if target in ("resent", "delivered") else {}
        reason = {"last_error": last_error, "last_status_code": None} if last_error is not None else {}
        posted_to = {"url": url} if url is not None else {}
        self.failures[(account_id, notification_id)] = current.model_copy(
            update={"state": target, "next_attempt_at": None, **stamp, **reason, **posted_to}
        )
        return True

    def list_webhook_failures(
        self, account_id: str, *, state: WebhookFailureState | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[WebhookFailure], str | None]:
        mine = sorted(
            (f for (owner, _), f in self.failures.items() if owner == account_id and state in (None, f.state)),
            key=lambda f: (f.first_failed_at, f.notification_id),
            reverse=True,
        )
        # Like DynamoDB's cursor: a key to continue after, so records changed meanwhile are not skipped or repeated.
        if cursor:
            mine = [f for f in mine if f"{f.first_failed_at}#{f.notification_id}" < cursor]
        page = mine[:limit]
        return page, f"{page[-1].first_failed_at}#{page[-1].notification_id}" if len(mine) > limit else None


class RecordingNotifyQueue:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[dict[str, Any]] = []
        self.fail = fail

    def publish(self, notifications: Sequence[dict[str, Any]]) -> None:
        if self.fail:
            raise RuntimeError("SQS is down")
        self.published.extend(notifications)


def notification(n: int = 1, account_id: str = "7") -> dict[str, Any]:
    return {
        "kind": "dlr",
        "id": f"dlr_{n}_2",
        "account_id": account_id,
        "url": None,
        "payload": {"type": "delivery report", "message_id": str(n), "status": "delivered", "sequence": 2},
    }


def failed(status: int = 500, retry_after: float | None = None) -> WebhookFailed:
    return WebhookFailed(
        f"client webhook answered {status}", retry_after, status_code=status, url="https://client.example/dlr"
    )


# ---------------------------------------------------------------- the schedule


def test_the_default_schedule_is_eight_attempts_over_about_a_day():
    # Given the default delays
    # Then there are seven delays (eight attempts), the documented ones, about 24 hours in all
    assert DEFAULT == (5, 300, 1800, 7200, 18000, 36000, 23100)
    assert len(DEFAULT) + 1 == 8
    assert timedelta(hours=23, minutes=55) <= timedelta(seconds=sum(DEFAULT)) <= timedelta(hours=24, minutes=5)


def test_without_jitter_each_failed_attempt_waits_its_delay_and_the_last_gets_none():
    # Given the middle of the jitter range (rand() = 0.5 moves a delay by nothing)
    # When each attempt fails
    delays = [webhook_retries.retry_delay(n, DEFAULT, rand=lambda: 0.5) for n in range(1, 9)]
    # Then attempts 1-7 wait their delay and attempt 8 was the last
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 23100, None]


@pytest.mark.parametrize("attempt", range(1, 8))
def test_jitter_stays_within_ten_percent(attempt):
    base = DEFAULT[attempt - 1]
    # When the random source gives its extremes
    low = webhook_retries.retry_delay(attempt, DEFAULT, rand=lambda: 0.0)
    high = webhook_retries.retry_delay(attempt, DEFAULT, rand=lambda: 0.999999)
    # Then the delay moves by at most 10% either way (rounded to whole seconds)
    assert low is not None and high is not None
    assert round(base * 0.9) == low <= base <= high <= round(base * 1.1)
    assert low < high if base >= 10 else True


def test_jitter_spreads_retries_with_the_real_random_source():
    # Given many clients failing at once on the 5-minute step
    seen = {webhook_retries.retry_delay(2, DEFAULT) for _ in range(200)}
    # Then they do not all come back in the same second, and none leaves the +-10% band
    assert len(seen) > 5
    assert all(s is not None and 270 <= s <= 330 for s in seen)


def test_a_retry_after_raises_the_delay_but_never_lowers_it_and_is_capped_at_twelve_hours():
    no_jitter = {"rand": lambda: 0.5}
    # A Retry-After longer than the delay wins (rounded up)
    assert webhook_retries.retry_delay(1, DEFAULT, retry_after=120.2, **no_jitter) == 121
    # A shorter one does not shorten the schedule
    assert webhook_retries.retry_delay(3, DEFAULT, retry_after=10, **no_jitter) == 1800
    # SQS cannot hide a record for more than 12 hours
    assert webhook_retries.retry_delay(1, DEFAULT, retry_after=3 * 86400, **no_jitter) == MAX_QUEUE_DELAY_SECONDS
    # After the last attempt there is no retry, whatever the client asks
    assert webhook_retries.retry_delay(8, DEFAULT, retry_after=5) is None


def test_the_delays_can_be_overridden_comma_separated():
    # Given the environment of a local stack or a test
    settings = Settings.from_environ({"NOTIFY_RETRY_DELAYS": "1, 1,2"})
    # Then the schedule is those delays: four attempts
    assert settings.notify_retry_delays == (1, 1, 2)
    assert [webhook_retries.retry_delay(n, settings.notify_retry_delays, rand=lambda: 0.5) for n in (1, 3, 4)] == [
        1,
        2,
        None,
    ]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [("1,x", "whole seconds"), (",".join(["1"] * (MAX_NOTIFY_RETRY_DELAYS + 1)), "at most"), ("43000", "42900")],
)
def test_a_bad_delay_override_is_refused(raw, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Settings.from_environ({"NOTIFY_RETRY_DELAYS": raw})


def test_the_notify_queue_redrive_leaves_room_for_every_attempt():
    # Given the notify queue's redrive
    queue = load_template()["Resources"]["NotifyQueue"]["Properties"]
    max_receive = int(queue["RedrivePolicy"]["maxReceiveCount"])
    # Then SQS only dead-letters a record after the longest allowed schedule is spent: the handler decides
    assert max_receive > MAX_NOTIFY_RETRY_DELAYS + 1 >= len(DEFAULT) + 1
    # And the settings check schedules against the queue's own retention
    assert int(queue["MessageRetentionPeriod"]) == NOTIFY_QUEUE_RETENTION_SECONDS


def test_a_schedule_that_could_outlive_the_notify_queues_retention_is_refused(monkeypatch):
    # Given a notify queue that kept records 4 days, as it did until 2026-12-06
    monkeypatch.setattr("sms_gateway.settings.NOTIFY_QUEUE_RETENTION_SECONDS", 345_600)
    # Then 6 delays fit (each at most 12 h however a client's Retry-After stretches it, and a day to spare) ...
    assert len(Settings.from_environ({"NOTIFY_RETRY_DELAYS": ",".join(["5"] * 6)}).notify_retry_delays) == 6
    # ... and 7 short ones do not, the default schedule's count: Retry-After could stretch each to 12 h, 83 h in all
    with pytest.raises(ValidationError, match="more than the notify queue keeps a record"):
        Settings.from_environ({"NOTIFY_RETRY_DELAYS": ",".join(["5"] * 7)})


# ---------------------------------------------------------------- failure records


def test_a_failure_is_recorded_retrying_with_its_reason_and_next_attempt():
    store = FailureStore()
    # When the first attempt fails with a 500
    outcome = webhook_retries.record_failure(
        store, notification(), failed(500), attempt=1, delays=(60, 60), now=NOW, rand=lambda: 0.5
    )
    # Then it is retried in 60 s and the record says so
    assert outcome.retry_in == 60
    record = store.get_webhook_failure("7", "dlr_1_2")
    assert record is not None
    assert (record.state, record.attempts, record.last_status_code) == ("retrying", 1, 500)
    assert record.last_error == "client webhook answered 500"
    assert record.url == "https://client.example/dlr"
    assert record.next_attempt_at == "2026-01-02T12:01:00.000000Z"
    assert record.notification == notification()


def test_the_last_failed_attempt_marks_it_dead_and_keeps_the_first_failure_time():
    store = FailureStore()
    webhook_retries.record_failure(store, notification(), failed(), attempt=1, delays=(60,), now=NOW)
    # When the second (last) attempt fails an hour later
    later = NOW + timedelta(hours=1)
    outcome = webhook_retries.record_failure(store, notification(), failed(503), attempt=2, delays=(60,), now=later)
    # Then there is no retry and the record is dead, first failure unchanged
    assert outcome.retry_in is None
    record = store.get_webhook_failure("7", "dlr_1_2")
    assert record is not None
    assert (record.state, record.attempts, record.last_status_code) == ("dead", 2, 503)
    assert record.first_failed_at == "2026-01-02T12:00:00.000000Z"
    assert record.next_attempt_at is None


def test_a_delivered_notification_is_not_reopened_by_a_failing_duplicate():
    store = FailureStore()
    webhook_retries.record_failure(store, notification(), failed(), attempt=1, delays=(60,), now=NOW)
    assert webhook_retries.record_delivered(store, notification(), "https://client.example/dlr", now=NOW)
    # When a duplicate record of the same notification fails
    outcome = webhook_retries.record_failure(store, notification(), failed(), attempt=1, delays=(60,), now=NOW)
    # Then the record stays delivered, and the copy is known to be one of a notification the client has
    assert not outcome.recorded
    assert outcome.delivered_already
    record = store.get_webhook_failure("7", "dlr_1_2")
    assert record is not None and record.state == "delivered"


def test_a_failing_copy_of_a_dead_or_new_notification_is_not_taken_for_delivered():
    store = FailureStore()
    first = webhook_retries.record_failure(store, notification(), failed(), attempt=1, delays=(), now=NOW)
    assert first.recorded and not first.delivered_already
    # When a copy of the dead notification fails its first attempt
    copy = webhook_retries.record_failure(store, notification(), failed(), attempt=1, delays=(60,), now=NOW)
    # Then the dead record is left alone, but the copy is not dropped: the client never had it
    assert not copy.recorded and not copy.delivered_already
    assert copy.retry_in is not None


def test_a_second_copy_of_a_failing_notification_does_not_cut_its_retry_schedule_short():
    # Given a notification queued twice (two SQS messages, A and B, two minutes apart) while the client's webhook is
    # down, each copy failing on its own receives, and SQS delivering A's first receive twice (the same MessageId)
    store, delays = FailureStore(), DEFAULT
    # (when, which copy, its receives, whether it is a second delivery: the one message comes back once)
    copies = [(NOW, "A", 1, False), (NOW, "A", 1, True), (NOW + timedelta(minutes=2), "B", 1, False)]
    dead_at, posts, dropped = None, 0, []
    while copies:
        copies.sort()
        at, copy, receives, second_delivery = copies.pop(0)
        posts += 1
        outcome = webhook_retries.record_failure(
            store, notification(), failed(), attempt=receives, delays=delays, now=at, rand=lambda: 0.5, copy=copy
        )
        if outcome.gave_way:
            dropped.append(copy)
        elif outcome.retry_in is None:
            dead_at = dead_at or at
        elif not second_delivery:
            copies.append((at + timedelta(seconds=outcome.retry_in), copy, receives + 1, False))
    # Then A carries the whole schedule (about a day; its second delivery was the same copy, an attempt counted on as
    # a post the client saw, not dropped for another) and B gave way after its first post: 8 attempts and B's post
    assert dropped == ["B"]
    # (dead after about 12 h when each failure of either copy stepped the one count)
    assert dead_at is not None and dead_at - NOW > timedelta(hours=23)
    assert posts == len(delays) + 1 + 1
    assert store.get_webhook_failure("7", "dlr_1_2").owner == "A"  # type: ignore[union-attr]


def test_a_copy_takes_the_schedule_over_from_an_owner_silent_past_its_lease():
    # Given a notification whose carrying copy A failed once and is due again in a minute
    store = FailureStore()
    webhook_retries.record_failure(
        store, notification(), failed(), attempt=1, delays=(60, 60), now=NOW, rand=lambda: 0.5, copy="A"
    )
    # When another copy B fails while A may still come (within OWNER_LEASE of its due time)
    due = NOW + timedelta(seconds=60)
    within = webhook_retries.record_failure(
        store, notification(), failed(), attempt=1, delays=(60, 60), now=due + webhook_retries.OWNER_LEASE, copy="B"
    )
    # Then B gives way, and A's record is as it was
    assert within.gave_way and not within.recorded
    assert store.get_webhook_failure("7", "dlr_1_2").owner == "A"  # type: ignore[union-attr]
    # When B fails after A stayed silent past the lease (parked by the queue's redrive, say)
    later = due + webhook_retries.OWNER_LEASE + timedelta(seconds=1)
    taken = webhook_retries.record_failure(
        store, notification(), failed(), attempt=1, delays=(60, 60), now=later, copy="B"
    )
    # Then B takes the schedule over from where A left it, and A, should it come after all, gives way
    assert taken.recorded and not taken.gave_way and taken.failure.attempts == 2
    assert store.get_webhook_failure("7", "dlr_1_2").owner == "B"  # type: ignore[union-attr]
    late = webhook_retries.record_failure(
        store, notification(), failed(), attempt=2, delays=(60, 60), now=later, copy="A"
    )
    assert late.gave_way


def test_a_requeued_record_goes_on_as_the_copy_it_replaces_and_a_resend_as_a_new_one():
    # Given copy A's failure recorded, and A requeued as a fresh SQS message (received NOTIFY_REQUEUE_FROM times)
    store = FailureStore()
    outcome = webhook_retries.record_failure(
        store, notification(), failed(), attempt=1, delays=(60, 60), now=NOW, copy="A"
    )
    assert outcome.retry_in is not None
    body = webhook_retries.requeued(notification(), outcome.failure, outcome.retry_in, NOW)
    # Then the fresh message (MessageId A2) is copy A, not another copy
    assert webhook_retries.copy_id(body, "A2") == "A"
    assert webhook_retries.copy_id(notification(), "B") == "B"
    # And what is stored for a resend, or parked, is the notification without it: a resend is a copy of its own
    assert webhook_retries.stored_notification(body) == notification()
    assert webhook_retries.QUEUED_AS not in webhook_retries.parked_notification(body)


def test_only_a_notification_that_failed_before_can_have_a_failure_record_to_close():
    assert not webhook_retries.may_have_failure_record(notification(), 1)
    assert webhook_retries.may_have_failure_record(notification(), 2)
    assert webhook_retries.may_have_failure_record({**notification(), "resent": True}, 1)
    # And marking one that never failed writes nothing
    store = FailureStore()
    assert not webhook_retries.record_delivered(store, notification(), "https://client.example/dlr", now=NOW)
    assert store.failures == {}


def test_a_failed_notification_that_finds_no_url_is_dead_saying_so_once():
    # Given a notification that failed once (retrying) and one that was resent
    store = FailureStore()
    webhook_retries.record_failure(store, notification(1), failed(), attempt=1, delays=DEFAULT, now=NOW)
    webhook_retries.record_failure(store, notification(2), failed(), attempt=1, delays=(), now=NOW)
    webhook_retries.resend_failure(store, RecordingNotifyQueue(), "7", "dlr_2_2", now=NOW)
    # When each comes back and finds no URL set
    later = NOW + timedelta(minutes=5)
    marked = [webhook_retries.record_no_url(store, notification(n), now=later) for n in (1, 2)]
    # Then both are dead with that reason (no stale status code, no next attempt), so they can be resent
    assert marked == [True, True]
    for n in (1, 2):
        record = store.failures[("7", f"dlr_{n}_2")]
        assert (record.state, record.last_error, record.last_status_code, record.next_attempt_at) == (
            "dead",
            "no webhook URL set",
            None,
            None,
        )
    # And a duplicate of the record changes nothing, nor does one for a delivered or never-failed notification
    assert not webhook_retries.record_no_url(store, notification(1), now=later)
    webhook_retries.record_failure(store, notification(3), failed(), attempt=1, delays=DEFAULT, now=NOW)
    webhook_retries.record_delivered(store, notification(3), "https://client.example/dlr", now=NOW)
    assert not webhook_retries.record_no_url(store, notification(3), now=later)
    assert store.failures[("7", "dlr_3_2")].state == "delivered"
    assert not webhook_retries.record_no_url(store, notification(4), now=later)


def test_a_notification_without_an_id_is_recorded_under_its_signed_webhook_id():
    store = FailureStore()
    anonymous = {k: v for k, v in notification().items() if k != "id"}
    webhook_retries.record_failure(store, anonymous, failed(), attempt=1, delays=(60,), now=NOW)
    [(_, notification_id)] = store.failures
    assert notification_id.startswith("dlr_") and len(notification_id) == len("dlr_") + 32


# ---------------------------------------------------------------- resending


def dead_store(count: int = 1, account_id: str = "7") -> FailureStore:
    store = FailureStore()
    for n in range(1, count + 1):
        webhook_retries.record_failure(
            store,
            notification(n, account_id),
            failed(),
            attempt=1,
            delays=(),
            now=NOW + timedelta(minutes=n),
        )
    return store


def test_resending_a_dead_notification_queues_it_fresh_and_marks_it_resent():
    store, queue = dead_store(), RecordingNotifyQueue()
    # When the client resends it
    answer = webhook_retries.resend_failure(store, queue, "7", "dlr_1_2", now=NOW)
    # Then the notification is queued as it was, marked as a resend, and the record says resent
    assert queue.published == [{**notification(), "resent": True}]
    assert answer.state == "resent"
    record = store.get_webhook_failure("7", "dlr_1_2")
    assert record is not None and record.state == "resent"
    # And resending it again is a conflict that queues nothing more
    with pytest.raises(Conflict, match="resent"):
        webhook_retries.resend_failure(store, queue, "7", "dlr_1_2", now=NOW)
    assert len(queue.published) == 1


def test_a_retrying_or_unknown_or_other_accounts_notification_is_not_resent():
    store, queue = dead_store(), RecordingNotifyQueue()
    webhook_retries.record_failure(store, notification(9), failed(), attempt=1, delays=(60,), now=NOW)
    with pytest.raises(Conflict, match="retrying"):
        webhook_retries.resend_failure(store, queue, "7", "dlr_9_2", now=NOW)
    with pytest.raises(NotFound):
        webhook_retries.resend_failure(store, queue, "7", "dlr_404_2", now=NOW)
    with pytest.raises(NotFound):
        webhook_retries.resend_failure(store, queue, "8", "dlr_1_2", now=NOW)
    with pytest.raises(InvalidRequest):
        webhook_retries.resend_failure(store, queue, "7", "dlr 1/2", now=NOW)
    # Nothing was queued and nothing changed
    assert queue.published == []
    assert store.failures[("7", "dlr_1_2")].state == "dead"


def test_a_resend_that_cannot_be_queued_leaves_it_dead():
    store = dead_store()
    with pytest.raises(RuntimeError):
        webhook_retries.resend_failure(store, RecordingNotifyQueue(fail=True), "7", "dlr_1_2", now=NOW)
    assert store.failures[("7", "dlr_1_2")].state == "dead"


class FlakyNotifyQueue(RecordingNotifyQueue):
    """Takes the first SendMessageBatch call, refuses the second (a throttle, a moment's outage), then takes all."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def publish(self, notifications: Sequence[dict[str, Any]]) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("SQS refused 10 entries: ThrottlingException")
        super().publish(notifications)


def test_a_resend_all_whose_queueing_fails_midway_leaves_no_notification_claimed_and_unqueued():
    # Given 30 dead notifications, and a notify queue that refuses one SendMessageBatch call (of ten entries)
    store, queue = dead_store(30), FlakyNotifyQueue()
    # When the client resends all of them and the second call of the page is refused
    with pytest.raises(RuntimeError):
        webhook_retries.resend_dead(store, queue, "7", now=NOW)
    # Then every notification is either on the queue or dead again (resendable): none is claimed "resent" without
    # having been queued. Today the ten after the refused call read "resent" (queued again), are on no queue, are
    # refused by a resend ("only a dead one can be resent") and missed by resend-all: lost until their record
    # expires, 30 days later.
    queued = {n["id"] for n in queue.published}
    stranded = sorted(
        f.notification_id for f in store.failures.values() if f.state == "resent" and f.notification_id not in queued
    )
    assert stranded == []
    # And resending all again brings every one that is not queued
    assert webhook_retries.resend_dead(store, queue, "7", now=NOW + timedelta(minutes=1))[0] == 30 - len(queued)


class RefusesOneEntry(RecordingNotifyQueue):
    """SendMessageBatch takes every entry but the last of its first call (SqsNotifyQueue._send then raises
    PartlyQueued naming it), and all of them afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def publish(self, notifications: Sequence[dict[str, Any]]) -> None:
        self.calls += 1
        if self.calls == 1:
            super().publish(notifications[:-1])
            raise PartlyQueued("SQS refused 1 entries: 9: InternalError", [len(notifications) - 1])
        super().publish(notifications)


def test_a_resend_all_whose_queueing_refuses_one_entry_leaves_the_queued_ones_resent_and_queues_each_once():
    # Given 10 dead notifications, and a notify queue that takes nine of them and refuses the tenth
    store, queue = dead_store(10), RefusesOneEntry()
    # When the client resends all of them, is answered an error, and calls again as the docs say
    with pytest.raises(RuntimeError):
        webhook_retries.resend_dead(store, queue, "7", now=NOW)
    webhook_retries.resend_dead(store, queue, "7", now=NOW + timedelta(minutes=1))
    # Then each notification went on the queue once: the nine queued read resent and were not taken again
    ids = [n["id"] for n in queue.published]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 10, ids


class ClaimsThenFails(FailureStore):
    """A store whose claim writes start failing after `good` of them (DynamoDB throttling the resend midway)."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def set_webhook_failure_state(self, *args: Any, **kwargs: Any) -> bool:
        if args[2] == "resent":
            if self.good == 0:
                raise RuntimeError("ProvisionedThroughputExceededException")
            self.good -= 1
        return super().set_webhook_failure_state(*args, **kwargs)


def test_a_resend_all_whose_claims_fail_midway_puts_the_claimed_unqueued_ones_back_to_dead():
    # Given 30 dead notifications, and a store that takes 14 claims and then refuses them
    store, queue = ClaimsThenFails(good=14), RecordingNotifyQueue()
    store.failures.update(dead_store(30).failures)
    # When the client resends all of them
    with pytest.raises(RuntimeError):
        webhook_retries.resend_dead(store, queue, "7", now=NOW)
    # Then the first ten are queued, and the four claimed after them (not queued yet) are dead again
    assert len(queue.published) == 10
    assert sum(f.state == "resent" for f in store.failures.values()) == 10
    assert sum(f.state == "dead" for f in store.failures.values()) == 20


def test_a_resend_claimed_but_never_queued_can_be_resent_once_its_lease_is_over():
    # Given dead notifications a resend claimed and then died (a Lambda timeout) before it queued them
    store, queue = dead_store(3), RecordingNotifyQueue()
    for n in (1, 2):
        assert store.set_webhook_failure_state("7", f"dlr_{n}_2", "resent", only_from=frozenset({"dead"}), now=iso(NOW))
    # When the client resends before the lease is over, then they read resent (maybe queued): only the dead one goes
    assert webhook_retries.resend_dead(store, queue, "7", now=NOW + timedelta(minutes=14)) == (1, False)
    with pytest.raises(Conflict, match="resent"):
        webhook_retries.resend_failure(store, queue, "7", "dlr_1_2", now=NOW + timedelta(minutes=14))
    # When it resends them after the lease (15 minutes), then they are queued again, claimed afresh
    later = NOW + webhook_retries.RESEND_LEASE + timedelta(seconds=1)
    assert webhook_retries.resend_failure(store, queue, "7", "dlr_1_2", now=later).resent_at == iso(later)
    assert webhook_retries.resend_dead(store, queue, "7", now=later) == (1, False)
    assert sorted(n["id"] for n in queue.published) == ["dlr_1_2", "dlr_2_2", "dlr_3_2"]
    # And the one resent just now is not taken again by another resend-all
    assert webhook_retries.resend_dead(store, queue, "7", now=later) == (0, False)


def test_resend_all_is_bounded_and_says_whether_more_are_left():
    store, queue = dead_store(5), RecordingNotifyQueue()
    store.failures.update(dead_store(2, account_id="8").failures)
    # When the client resends its dead notifications, three per call
    first = webhook_retries.resend_dead(store, queue, "7", now=NOW, limit=3)
    # Then three of its own go, newest first, and it hears more are left
    assert first == (3, True)
    assert [n["id"] for n in queue.published] == ["dlr_5_2", "dlr_4_2", "dlr_3_2"]
    # And the next call takes the rest; the other account's are untouched
    assert webhook_retries.resend_dead(store, queue, "7", now=NOW, limit=3) == (2, False)
    assert {n["account_id"] for n in queue.published} == {"7"}
    assert [f.state for (owner, _), f in store.failures.items() if owner == "8"] == ["dead", "dead"]
    assert webhook_retries.resend_dead(store, queue, "7", now=NOW, limit=3) == (0, False)


@pytest.mark.parametrize("raw", ["bogus", "DEAD!"])
def test_an_unknown_state_filter_is_refused(raw):
    with pytest.raises(InvalidRequest, match="state must be one of"):
        webhook_retries.parse_state(raw)


# ---------------------------------------------------------------- the circuit breaker per webhook origin


class ScriptedPost:
    """A client webhook post answering each URL's scripted statuses in turn (0: unreachable), then 200."""

    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.posted: list[str] = []

    def answer(self, url: str, *statuses: int) -> None:
        self.script.setdefault(url, []).extend(statuses)

    async def __call__(self, url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        self.posted.append(url)
        status = self.script.get(url, []).pop(0) if self.script.get(url) else 200
        if status == 0:
            raise WebhookFailed("client webhook unreachable: connect timed out", unreachable=True, host_down=True)
        return WebhookResponse(status_code=status, body='{"ok":true}')


def post_through(breaker: WebhookBreaker, post: ScriptedPost, url: str) -> int | str:
    """The status a guarded post came to, "not tried" when the breaker refused it, "unreachable" when it failed."""
    try:
        return asyncio.run(breaker.guard(post)(url, {}, b"{}")).status_code
    except WebhookNotTried:
        return "not tried"
    except WebhookFailed:
        return "unreachable"


BLACKHOLE = "https://hooks.example:8443/dlr"
OTHER = "https://other.example/dlr"


def test_an_origin_failing_five_times_in_a_row_is_not_posted_to_for_30_seconds():
    # Given an origin whose connections time out
    clock, post = Clock(1_800_000_000.0), ScriptedPost()
    breaker = WebhookBreaker(clock=clock)
    post.answer(BLACKHOLE, 0, 0, 0, 0, 0)
    # When five notifications fail against it in a row
    assert [post_through(breaker, post, BLACKHOLE) for _ in range(5)] == ["unreachable"] * 5
    # Then the sixth fails at once without a post, saying why and until when, and asks to come back then
    clock.now += 12
    with pytest.raises(WebhookNotTried) as refused:
        asyncio.run(breaker.guard(post)(BLACKHOLE, {}, b"{}"))
    assert len(post.posted) == 5
    until = datetime.fromtimestamp(clock.now - 12 + OPEN_SECONDS, UTC).isoformat(timespec="seconds")
    assert str(refused.value) == (
        "client webhook not tried: https://hooks.example:8443 failed 5 times in a row in this container; "
        f"next try after {until}"
    )
    assert refused.value.retry_after == pytest.approx(OPEN_SECONDS - 12)
    # And no other path of that origin is posted to either
    assert FAILURES_TO_OPEN == 5 and post_through(breaker, post, "https://hooks.example:8443/inbound") == "not tried"


def opened(*failures: int) -> tuple[Clock, ScriptedPost, WebhookBreaker]:
    """A breaker whose BLACKHOLE origin just failed 5 times in a row, its clock, and the post that failed them
    (scripted to answer `failures` after those five)."""
    clock, post = Clock(1_800_000_000.0), ScriptedPost()
    breaker = WebhookBreaker(clock=clock)
    post.answer(BLACKHOLE, *[0] * 5, *failures)
    for _ in range(5):
        post_through(breaker, post, BLACKHOLE)
    return clock, post, breaker


def test_after_the_cool_down_one_trial_post_goes_and_its_success_closes_the_origin():
    clock, post, breaker = opened()
    # Given the cool-down over, and a trial post on its way
    clock.now += OPEN_SECONDS
    assert breaker.admit("https://hooks.example:8443") is True
    # Then every other post waits for its outcome (not tried, on the normal schedule)
    with pytest.raises(WebhookNotTried, match="a trial post is on its way") as refused:
        breaker.admit("https://hooks.example:8443")
    assert refused.value.retry_after is None
    # When the trial succeeds, the origin is closed and its count starts again
    breaker.record("https://hooks.example:8443", Outcome.SUCCESS, trial=True)
    post.answer(BLACKHOLE, *[0] * 4)
    assert [post_through(breaker, post, BLACKHOLE) for _ in range(5)] == ["unreachable"] * 4 + [200]


def test_a_failed_trial_post_opens_the_origin_for_another_30_seconds():
    clock, post, breaker = opened(0)
    clock.now += OPEN_SECONDS + 1
    # When the one post let through after the cool-down fails too
    assert post_through(breaker, post, BLACKHOLE) == "unreachable"
    # Then nothing is posted for another 30 s, and then one post again
    clock.now += OPEN_SECONDS - 1
    assert post_through(breaker, post, BLACKHOLE) == "not tried"
    clock.now += 1
    assert post_through(breaker, post, BLACKHOLE) == 200
    assert len(post.posted) == 7 and not breaker.is_open("https://hooks.example:8443")


@pytest.mark.parametrize("answer", [500, 503, 429, 404])
def test_a_host_that_answers_however_it_answers_is_reachable_and_never_opened(answer):
    post = ScriptedPost()
    breaker = WebhookBreaker(clock=Clock(1_800_000_000.0))
    # Given a flaky but reachable client: its endpoint answers an error twenty times in a row
    post.answer(BLACKHOLE, *[answer] * 20)
    # Then every notification is posted (its answers are the retry schedule's to judge): a breaker counting them
    # would open the origin now and then and spend notifications' attempts without a post
    assert [post_through(breaker, post, BLACKHOLE) for _ in range(21)] == [answer] * 20 + [200]
    # And an answer between timeouts starts their count again
    post.answer(BLACKHOLE, 0, 0, 0, 0, answer, 0, 0, 0, 0)
    outcomes = [post_through(breaker, post, BLACKHOLE) for _ in range(9)]
    assert outcomes == ["unreachable"] * 4 + [answer] + ["unreachable"] * 4
    assert not breaker.is_open("https://hooks.example:8443")


def test_a_success_resets_the_count_and_origins_are_counted_apart():
    post = ScriptedPost()
    breaker = WebhookBreaker(clock=Clock(1_800_000_000.0))
    # Given four failures, a success, four failures: never five in a row
    post.answer(BLACKHOLE, *[0] * 4, 200, *[0] * 4)
    assert [post_through(breaker, post, BLACKHOLE) for _ in range(9)] == ["unreachable"] * 4 + [200] + [
        "unreachable"
    ] * 4
    # And another origin of the same host (another port) and another host failing in between
    post.answer("https://hooks.example/dlr", *[0] * 5)
    post.answer(OTHER, *[0] * 4)
    for url in ["https://hooks.example/dlr"] * 5 + [OTHER] * 4:
        post_through(breaker, post, url)
    # Then only the origin that failed five times in a row is open; the others are still posted to
    assert post_through(breaker, post, "https://HOOKS.example:443/x") == "not tried"
    assert post_through(breaker, post, OTHER) == 200
    assert post_through(breaker, post, BLACKHOLE) == 200


def test_concurrent_posts_keep_the_count_and_let_one_trial_through():
    # Given 16 threads failing against one origin at once, 25 times each
    breaker = WebhookBreaker(clock=Clock(), failures_to_open=10**9)
    origin = "https://hooks.example:8443"

    def fail() -> None:
        for _ in range(25):
            breaker.record(origin, Outcome.FAILURE)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: fail(), range(16)))
    # Then no failure was lost
    assert breaker._origins[origin].failures == 400
    # And once open and cooled down, of 16 threads asking at once exactly one gets the trial post
    breaker.failures_to_open = 1
    breaker.record(origin, Outcome.FAILURE)
    breaker.clock.now += OPEN_SECONDS  # type: ignore[attr-defined]
    start = threading.Barrier(16)

    def ask() -> bool:
        start.wait()
        try:
            return breaker.admit(origin)
        except WebhookNotTried:
            return False

    with ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(lambda _: ask(), range(16))) == [False] * 15 + [True]


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Hooks.Example/dlr?x=1", "https://hooks.example:443"),
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8080"),
        ("https://[::1]:9/", "https://[::1]:9"),
        ("not a url", None),
        ("https://host:99999/", None),
    ],
)
def test_the_origin_is_scheme_host_and_port(url, origin):
    assert origin_of(url) == origin


@pytest.mark.parametrize(
    ("url", "gets_token"),
    [
        ("https://client.example/dlr", True),  # the account's DLR URL
        ("https://client.example:8443/in", True),  # its inbound URL
        ("https://CLIENT.example:443/dlr?batch=7", True),  # the DLR URL written another way, its own query
        ("https://client.example:8443/in?campaign=7", True),
        ("https://client.example/dlr/", False),  # another path on the DLR URL's origin
        ("https://client.example/campaigns/7/dlr", False),
        ("https://client.example:8443/dlr-for-batch-7", False),
        ("http://client.example/dlr", False),  # another scheme
        ("https://client.example:444/dlr", False),  # another port
        ("https://client.example.attacker.example/dlr", False),
        ("https://sub.client.example/dlr", False),
        ("https://collector.attacker.example/dlr", False),
        ("not a url", False),
    ],
)
def test_the_webhook_token_goes_only_to_the_accounts_own_webhook_urls(url, gets_token):
    from sms_gateway.domain.models import Account
    from sms_gateway.logic.notify import gets_webhook_token

    # Given an account whose webhooks are its DLR URL and its inbound URL (on another port)
    account = Account(
        account_id="7",
        name="Cinema Club",
        credits=0,
        dlr_url="https://client.example/dlr",
        inbound_url="https://client.example:8443/in",
    )
    # Then a post carries its webhook token only to one of them (scheme, host, port and path; any query)
    assert gets_webhook_token(account, url) is gets_token


@pytest.mark.parametrize(
    ("own", "theirs"),
    [
        ("https://script.google.com/macros/s/AKfycbClient/exec", "https://script.google.com/macros/s/AKfycbOther/exec"),
        ("https://hooks.zapier.com/hooks/catch/111/aaa/", "https://hooks.zapier.com/hooks/catch/999/zzz/"),
        ("https://hook.eu1.make.com/clientclientclient", "https://hook.eu1.make.com/otherotherother"),
    ],
    ids=["apps-script", "zapier", "make"],
)
def test_a_callback_url_of_another_tenant_of_a_shared_webhook_host_gets_no_token(own, theirs):
    from sms_gateway.domain.models import Account
    from sms_gateway.logic.notify import gets_webhook_token

    # Given an account whose DLR URL is a hook on a host many customers share
    account = Account(account_id="7", name="Cinema Club", credits=0, dlr_url=own)
    # Then a batch's callback_url naming someone else's hook on that host gets no webhook token
    assert gets_webhook_token(account, theirs) is False


def test_an_account_without_webhook_urls_sends_its_token_to_no_batch_callback_url():
    from sms_gateway.domain.models import Account
    from sms_gateway.logic.notify import gets_webhook_token

    account = Account(account_id="7", name="Cinema Club", credits=0)
    assert gets_webhook_token(account, "https://client.example/dlr") is False


def test_no_accepted_retry_schedule_outlives_the_notify_queues_retention():
    # Given the notify queue's retention (SQS deletes a record this long after it was sent, hidden or not)
    queue = load_template()["Resources"]["NotifyQueue"]["Properties"]
    retention = int(queue["MessageRetentionPeriod"])
    # When an operator sets the longest schedule the settings accept (10 delays, each at the 42900 s limit)
    try:
        settings = Settings.from_environ({"NOTIFY_RETRY_DELAYS": ",".join(["42900"] * MAX_NOTIFY_RETRY_DELAYS)})
    except ValidationError:
        return  # refused: fine
    delays = settings.notify_retry_delays
    # Then every attempt still happens while the record exists: the last one, after every delay at its longest
    # (jitter's +10%, or a client's Retry-After, both capped at 12 h), comes before SQS drops the record
    longest = sum(
        webhook_retries.retry_delay(n, delays, retry_after=43_200, rand=lambda: 0.999999) or 0
        for n in range(1, len(delays) + 1)
    )
    assert longest < retention, (
        f"the last attempt is due {longest} s after the first, the record is gone at {retention}"
    )


def test_one_accounts_slow_path_does_not_stop_posts_to_another_accounts_path_on_the_same_host(monkeypatch):
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sms_gateway import consumers
    from sms_gateway.adapters import http, webhook_http
    from sms_gateway.settings import get_settings

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/slow"):
                time.sleep(0.6)  # one account's endpoint: up, but slower than the notifier's read timeout
            answer = b'{"ok":true}'
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:
                pass  # the notifier gave up on the slow answer and closed the connection

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("ALLOW_HTTP_WEBHOOKS", "true")
    monkeypatch.setattr(webhook_http, "READ_TIMEOUT", 0.2)
    get_settings.cache_clear()
    webhook_http.close()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        breaker = WebhookBreaker()
        guarded = breaker.guard(consumers.post_webhook)

        def outcome(url: str) -> int | str:
            try:
                return http.run(guarded(url, {}, b"{}")).status_code
            except WebhookNotTried:
                return "not tried"
            except WebhookFailed as failure:
                return "unreachable" if failure.unreachable else str(failure)

        # Given account A's webhook on a shared host, a path that answers after the read timeout, five times
        assert [outcome(f"{host}/slow-account-a") for _ in range(5)] == ["unreachable"] * 5
        # When account B's notification goes to its own path on that host, which answers at once
        # Then it is posted and delivered: the host is up, only A's endpoint is slow
        assert outcome(f"{host}/account-b") == 200
    finally:
        webhook_http.close()
        get_settings.cache_clear()
        server.shutdown()
        server.server_close()
