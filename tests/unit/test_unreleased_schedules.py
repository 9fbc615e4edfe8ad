"""The sweeper's release of scheduled batches whose schedule was never made (the api Lambda killed between storing
the batch and scheduling it), against in-memory fakes; the release path is the schedule's own."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from sms_gateway.adapters.scheduler import LambdaBatchRelease
from sms_gateway.domain.models import SCHEDULED_RELEASE_SWEEP_MARGIN, Batch, release_sweep_due
from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.sweep import (
    RELEASE_SWEEP_LEASE,
    SweepDependencies,
    SweepIncomplete,
    SweepOutcome,
    sweep_notifications,
)
from tests.fakes import InMemoryStore, RecordingQueue, RecordingScheduler, cinema_store
from tests.unit.test_logic import NOW, cancel, command, release, send

SEND_AT = NOW + timedelta(hours=2)
# When the sweeper may take a batch due at SEND_AT that its schedule has not released.
SWEEP_DUE = SEND_AT + SCHEDULED_RELEASE_SWEEP_MARGIN


class Killed(BaseException):
    """The api Lambda killed outright (out of memory, its timeout): no `except Exception` runs, nor the send's undo."""


class KilledBeforeScheduling(RecordingScheduler):
    def schedule(self, account_id: str, reference_id: int, at: datetime) -> None:
        raise Killed


class ScheduledDispatch:
    """The scheduled_dispatch function as the sweeper reaches it: each release handed on is run (as Lambda runs an
    asynchronous invocation) by `run`, through the schedule's own release."""

    def __init__(self, store: InMemoryStore, queue: RecordingQueue) -> None:
        self.store, self.queue = store, queue
        self.pending: list[tuple[str, int]] = []
        self.handed_on: list[tuple[str, int]] = []
        self.refuse = False

    def release(self, account_id: str, reference_id: int) -> None:
        if self.refuse:
            raise RuntimeError("Lambda refused the invocation: TooManyRequestsException")
        self.pending.append((account_id, reference_id))
        self.handed_on.append((account_id, reference_id))

    def run(self) -> list[bool]:
        ran, self.pending = self.pending, []
        return [fire(self.store, account_id, reference_id, self.queue) for account_id, reference_id in ran]


def fire(store: InMemoryStore, account_id: str, reference_id: int, queue: RecordingQueue) -> bool:
    """The schedule's release (schedules.release_schedule), as it runs in scheduled_dispatch."""
    return release(store, account_id, reference_id, queue, finish_cancels=True)


def sweep(
    store: InMemoryStore, at: datetime, releases: ScheduledDispatch, scheduler: RecordingScheduler | None = None
) -> SweepOutcome:
    return sweep_notifications(
        SweepDependencies(
            inbox=store,
            messages=store,
            publish=lambda notifications: None,
            clock=lambda: at,
            scheduler=scheduler or RecordingScheduler(),
            batch_release=releases,
        )
    )


def released(count: int) -> SweepOutcome:
    return SweepOutcome(0, 0, 0, 0, batches_released=count)


def orphan(store: InMemoryStore, recipients: int = 3) -> Batch:
    """A batch scheduled for SEND_AT, stored and charged, whose api Lambda was killed before it made the schedule."""
    with pytest.raises(Killed):
        send(store, command(recipients, send_at=SEND_AT), scheduler=KilledBeforeScheduling())
    [batch] = store.batches.values()
    assert batch.status == MessageStatus.SCHEDULED
    assert store.accounts["7"].credits == 1000 - recipients
    return batch


@pytest.fixture
def store() -> InMemoryStore:
    return cinema_store()


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def scheduled_dispatch(store: InMemoryStore, queue: RecordingQueue) -> ScheduledDispatch:
    return ScheduledDispatch(store, queue)


def test_only_a_scheduled_batch_has_a_sweep_time_and_it_is_the_margin_after_it_is_due(store):
    # Given a scheduled batch and one sent at once
    scheduled, _ = send(store, command(1, send_at=SEND_AT))
    now, _ = send(store, command(1))
    # Then the scheduled one may be released by the sweeper SCHEDULED_RELEASE_SWEEP_MARGIN after its send time, and
    # the other never
    assert release_sweep_due(scheduled) == SEND_AT + SCHEDULED_RELEASE_SWEEP_MARGIN
    assert release_sweep_due(now) is None
    # And that margin leaves a schedule that fires its turn (within a minute of its time, rounded up to the minute,
    # plus Lambda's two retries of a release that raised) and is well inside the hour Scheduler keeps retrying an
    # invoke (the schedule's MaximumEventAgeInSeconds: adapters/scheduler.py)
    assert timedelta(minutes=10) <= SCHEDULED_RELEASE_SWEEP_MARGIN < timedelta(seconds=3600)


def test_a_batch_whose_schedule_was_never_made_is_released_once_by_the_sweeper_after_the_margin(
    store, queue, scheduled_dispatch
):
    # Given a batch of three whose api Lambda was killed before it made the schedule (no undo ran)
    batch = orphan(store)
    # When the sweeper runs at its send time and just before the margin, then nothing is released: a schedule that
    # exists still has its turn
    assert sweep(store, SEND_AT, scheduled_dispatch) == released(0)
    assert sweep(store, SWEEP_DUE - timedelta(seconds=1), scheduled_dispatch) == released(0)
    assert scheduled_dispatch.handed_on == []
    # Then the first run after the margin hands it to the schedule's release, which queues its three messages
    assert sweep(store, SWEEP_DUE, scheduled_dispatch) == released(1)
    assert scheduled_dispatch.run() == [True]
    assert [len(c.message_ids) for c in queue.commands] == [3]
    assert {m.status for m in store.messages.values()} == {MessageStatus.QUEUED}
    assert store.batches[("7", batch.reference_id)].status == MessageStatus.QUEUED
    # And no later run hands it on again, nor refunds the credits it is being sent for
    assert sweep(store, SWEEP_DUE + timedelta(hours=1), scheduled_dispatch) == released(0)
    assert scheduled_dispatch.handed_on == [("7", batch.reference_id)]
    assert store.accounts["7"].credits == 997


def test_a_batch_its_schedule_released_is_left_alone_by_the_sweeper(store, queue, scheduled_dispatch):
    # Given a batch scheduled as usual, whose schedule fires at its time
    batch, _ = send(store, command(3, send_at=SEND_AT))
    assert fire(store, "7", batch.reference_id, queue)
    # When the sweeper runs after the margin, then it has nothing to release
    assert sweep(store, SWEEP_DUE + timedelta(minutes=5), scheduled_dispatch) == released(0)
    assert scheduled_dispatch.handed_on == []
    assert [len(c.message_ids) for c in queue.commands] == [3]


def test_a_late_firing_after_the_sweeper_s_release_changes_nothing(store, queue, scheduled_dispatch):
    # Given a scheduled batch whose schedule is made but has not fired after the margin (Scheduler still retrying an
    # invoke Lambda refuses), which the sweeper releases
    batch, _ = send(store, command(3, send_at=SEND_AT))
    scheduler = RecordingScheduler()
    scheduler.schedule("7", batch.reference_id, SEND_AT)
    assert sweep(store, SWEEP_DUE, scheduled_dispatch, scheduler) == released(1)
    # Then its schedule is deleted, so it does not fire later
    assert scheduler.scheduled == {}
    assert scheduled_dispatch.run() == [True]
    # And a firing already under way when it was deleted releases nothing more: the messages it queues again are the
    # same records (dropped by the FIFO queue's deduplication; the dispatcher claims each message once)
    assert fire(store, "7", batch.reference_id, queue) is False
    assert queue.commands[0] == queue.commands[-1]
    assert {m.status for m in store.messages.values()} == {MessageStatus.QUEUED}
    assert store.accounts["7"].credits == 997


def test_a_cancelled_batch_is_never_released_by_the_sweeper(store, queue, scheduled_dispatch):
    # Given a batch whose schedule was never made, cancelled by the client (refunded)
    batch = orphan(store)
    cancel(store, batch)
    assert store.accounts["7"].credits == 1000
    # When the sweeper runs after the margin, then it releases nothing and the credits stay refunded
    assert sweep(store, SWEEP_DUE, scheduled_dispatch) == released(0)
    assert scheduled_dispatch.handed_on == []
    assert queue.commands == []
    assert {m.status for m in store.messages.values()} == {MessageStatus.CANCELLED}


def test_a_batch_cancelled_after_the_sweeper_handed_it_on_is_not_sent(store, queue, scheduled_dispatch):
    # Given a batch the sweeper handed to its release, which Lambda has not run yet
    batch = orphan(store)
    assert sweep(store, SWEEP_DUE, scheduled_dispatch) == released(1)
    # When the client cancels it first
    cancel(store, batch)
    # Then the release finds it cancelled (the batch's conditional write decides): nothing is queued, all refunded
    assert scheduled_dispatch.run() == [False]
    assert queue.commands == []
    assert store.accounts["7"].credits == 1000


def test_two_sweeps_at_once_hand_a_batch_on_once(store, queue, scheduled_dispatch):
    # Given a batch whose schedule was never made
    orphan(store)
    # When two sweeper runs find it due at the same moment, the second's claim made while the first's is held
    claim = store.claim_unreleased_batches
    second: list[SweepOutcome] = []

    def the_other_run_claims_first(**kwargs: Any) -> Any:
        store.claim_unreleased_batches = claim  # type: ignore[method-assign]
        second.append(sweep(store, SWEEP_DUE, scheduled_dispatch))
        return claim(**kwargs)

    store.claim_unreleased_batches = the_other_run_claims_first  # type: ignore[method-assign]
    first = sweep(store, SWEEP_DUE, scheduled_dispatch)
    # Then one of them hands it on, once, and it is queued once
    assert sorted([first.batches_released, second[0].batches_released]) == [0, 1]
    assert scheduled_dispatch.run() == [True]
    assert [len(c.message_ids) for c in queue.commands] == [3]


def test_the_schedule_left_is_deleted_before_the_release_and_a_failed_deletion_does_not_hold_the_release(
    store, scheduled_dispatch
):
    # Given a batch whose schedule was never made, and a scheduler that records the order of calls
    batch = orphan(store)
    calls: list[str] = []

    class Scheduler(RecordingScheduler):
        def cancel(self, account_id: str, reference_id: int) -> bool:
            calls.append("delete schedule")
            raise RuntimeError("ThrottlingException")

    real_release = scheduled_dispatch.release

    def release(account_id: str, reference_id: int) -> None:
        calls.append("release")
        real_release(account_id, reference_id)

    scheduled_dispatch.release = release  # type: ignore[method-assign]
    # When the sweeper takes it and Scheduler refuses the deletion
    assert sweep(store, SWEEP_DUE, scheduled_dispatch, Scheduler()) == released(1)
    # Then the deletion came first (a schedule a retry of the send makes meanwhile is not deleted after the release),
    # and the release went ahead: a schedule left fires, finds the batch released and changes nothing
    assert calls == ["delete schedule", "release"]
    assert scheduled_dispatch.handed_on == [("7", batch.reference_id)]


def test_a_release_lambda_refused_fails_the_run_and_is_handed_on_by_a_run_after_its_claim(store, scheduled_dispatch):
    # Given a batch whose schedule was never made, and Lambda refusing the sweeper's invocation
    orphan(store)
    scheduled_dispatch.refuse = True
    # When the sweeper runs, then the run fails (its alarm), keeping the batch claimed
    with pytest.raises(SweepIncomplete, match="1 of 1 unreleased batches"):
        sweep(store, SWEEP_DUE, scheduled_dispatch)
    scheduled_dispatch.refuse = False
    # Then runs while its claim lasts leave it, and the first after hands it on
    assert sweep(store, SWEEP_DUE + RELEASE_SWEEP_LEASE - timedelta(seconds=1), scheduled_dispatch) == released(0)
    assert sweep(store, SWEEP_DUE + RELEASE_SWEEP_LEASE, scheduled_dispatch) == released(1)
    assert scheduled_dispatch.run() == [True]


class RecordingLambda:
    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.invocations: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.invocations.append(kwargs)
        return {"StatusCode": self.status, "Payload": io.BytesIO(b"")}


def test_the_lambda_release_invokes_scheduled_dispatch_asynchronously_with_the_schedule_s_input():
    lambda_client = RecordingLambda()
    arn = "arn:aws:lambda:us-east-1:123456789012:function:gw-scheduled-dispatch"
    # When a batch is released through Lambda
    LambdaBatchRelease(function_arn=arn, client=lambda_client).release("7", 7269458935623581697)
    # Then scheduled_dispatch is invoked as its schedule invokes it: asynchronously (Lambda's retries and its
    # on-failure destination, the schedule DLQ, then cover the release), the id a string as in the schedule's Input
    [invocation] = lambda_client.invocations
    assert (invocation["FunctionName"], invocation["InvocationType"]) == (arn, "Event")
    assert json.loads(invocation["Payload"]) == {"account_id": "7", "reference_id": "7269458935623581697"}


def test_a_lambda_release_that_was_not_queued_raises():
    with pytest.raises(RuntimeError, match="did not queue"):
        LambdaBatchRelease(function_arn="arn", client=RecordingLambda(status=500)).release("7", 1)


def test_a_batch_killed_while_storing_its_messages_sends_those_stored_and_gives_back_the_others_credits(
    store, queue, scheduled_dispatch, monkeypatch
):
    # Given a scheduled send to 150 numbers whose api Lambda was killed after storing its first 100 messages (its
    # batch written with the cost of all 150), so before making its schedule
    add_messages = store.add_messages
    chunks: list[int] = []

    def killed_at_the_second_chunk(batch: Batch, messages: Any) -> None:
        chunks.append(len(messages))
        if len(chunks) == 2:
            raise Killed
        add_messages(batch, messages)

    monkeypatch.setattr(store, "add_messages", killed_at_the_second_chunk)
    with pytest.raises(Killed):
        send(store, command(150, send_at=SEND_AT), scheduler=KilledBeforeScheduling())
    assert len(store.messages) == 100
    assert store.accounts["7"].credits == 850
    # When the sweeper releases it after the margin (twice: a release Lambda retried)
    assert sweep(store, SWEEP_DUE, scheduled_dispatch) == released(1)
    assert scheduled_dispatch.run() == [True]
    assert fire(store, "7", next(iter(store.batches.values())).reference_id, queue) is False
    # Then the 100 messages stored go out, and the 50 never stored are not charged: refunded once
    assert len(queue.commands[0].message_ids) == 100
    assert {m.status for m in store.messages.values()} == {MessageStatus.QUEUED}
    assert store.accounts["7"].credits == 900
    [batch] = store.batches.values()
    assert (batch.cost, batch.recipients) == (100, 100)
