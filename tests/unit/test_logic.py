"""Use cases against in-memory fakes: sending, dispatching, delivery reports, scheduled release."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sms_gateway.domain.ids import message_id_at, new_id
from sms_gateway.domain.models import (
    Account,
    Batch,
    CallbackRequest,
    Claim,
    ClaimOutcome,
    DeliveryReport,
    DeliveryReportMode,
    DispatchCommand,
    InboundSms,
    KeyClaim,
    Message,
    MessageKey,
    Recipient,
    SendCommand,
    StatusChange,
    StoredInbound,
    SubmitRequest,
    SubmitResult,
    from_iso,
)
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import (
    Conflict,
    InsufficientCredits,
    InvalidRequest,
    InvalidSender,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from sms_gateway.logic.batches import AlreadyCancelled, BatchView, cancel_batch
from sms_gateway.logic.delivery import (
    DeliveryDependencies,
    DeliveryOutcome,
    apply_delivery_report,
    receive_delivery_reports,
)
from sms_gateway.logic.dispatch import DispatchDependencies, DispatchOutcome, backoff_seconds, dispatch
from sms_gateway.logic.inbound import InboundDependencies, inbound_notification, receive_inbound
from sms_gateway.logic.notify import dlr_notification, notifications_of
from sms_gateway.logic.ratelimit import Grant
from sms_gateway.logic.scheduled import release_scheduled_batch
from sms_gateway.logic.send import SCHEDULE_THRESHOLD, SendDependencies, accept_send, normalise_recipients
from sms_gateway.logic.settle import CHECK_MESSAGES, MAX_HOP_SECONDS, SettleDependencies, settle, settle_checks
from sms_gateway.logic.sweep import SweepDependencies, SweepIncomplete, SweepOutcome, sweep_notifications
from tests.fakes import FakeProvider, InMemoryStore, RecordingQueue, RecordingScheduler, cinema_store, fake_routes

NOW = datetime(2026, 1, 2, 23, 50, 37, tzinfo=UTC)


def clock() -> datetime:
    return NOW


@pytest.fixture
def store() -> InMemoryStore:
    return cinema_store()


def recipients(count: int) -> tuple[Recipient, ...]:
    return tuple(Recipient(msisdn=f"+2348020{i:06d}") for i in range(count))


def release(
    store: InMemoryStore,
    account_id: str,
    reference_id: int,
    queue: RecordingQueue,
    finish_cancels: bool = False,
    announce: Callable[[Sequence[StatusChange]], None] | None = None,
) -> bool:
    """The batch's schedule firing (no opt-out store: the in-memory one keeps none)."""
    return release_scheduled_batch(
        account_id,
        reference_id,
        messages=store,
        accounts=store,
        opt_outs=None,
        queue=queue,
        clock=clock,
        announce=announce,
        finish_cancels=finish_cancels,
    )


def cancel(store: InMemoryStore, batch: Batch) -> tuple[Batch, int]:
    return cancel_batch(
        messages=store, scheduler=RecordingScheduler(), account_id="7", reference_id=batch.reference_id, now=NOW
    )


def command(count: int = 1, text: str = "hello", **extra: object) -> SendCommand:
    return SendCommand(account_id="7", sender="48974", text=text, recipients=recipients(count), **extra)


def send(store: InMemoryStore, cmd: SendCommand, queue: RecordingQueue | None = None, scheduler=None, announce=None):
    deps = SendDependencies(
        accounts=store,
        messages=store,
        dispatch_queue=queue or RecordingQueue(),
        scheduler=scheduler or RecordingScheduler(),
        prices=store,
        announce=announce,
    )
    return accept_send(store.accounts["7"], cmd, deps, now=NOW).batch, deps


class TestAcceptSend:
    def test_a_batch_is_priced_per_part_and_recipient_and_queued_in_chunks_of_100(self, store):
        # Given 250 recipients of a two-part message
        batch, deps = send(store, command(250, text="x" * 161))
        # Then it costs 2 x 250 credits, and 3 dispatch records of <= 100 messages are queued in order
        assert (batch.parts, batch.cost) == (2, 500)
        assert store.accounts["7"].credits == 500
        assert [len(c.message_ids) for c in deps.dispatch_queue.commands] == [100, 100, 50]
        queued = [m for c in deps.dispatch_queue.commands for m in c.message_ids]
        assert queued == sorted(queued)
        assert all(m.status == MessageStatus.QUEUED for m in store.messages.values())

    def test_an_unregistered_sender_changes_nothing(self, store):
        with pytest.raises(InvalidSender):
            send(store, command().model_copy(update={"sender": "OTHER"}))
        assert store.accounts["7"].credits == 1000
        assert store.messages == {}

    @pytest.mark.parametrize("sender", ["++48974", "+++48974"])
    def test_a_number_with_more_than_one_plus_is_not_the_registered_sender(self, store, sender):
        # The account holds 48974; a number is accepted with or without its one '+', not with several
        with pytest.raises(InvalidSender):
            send(store, command().model_copy(update={"sender": sender}))
        assert store.accounts["7"].credits == 1000
        assert store.messages == {}

    def test_a_send_beyond_the_balance_changes_nothing(self, store):
        # 501 two-part messages: 1002 credits of the 1000
        with pytest.raises(InsufficientCredits):
            send(store, command(501, text="x" * 200))
        assert store.accounts["7"].credits == 1000
        assert store.batches == {}

    def test_a_send_to_more_recipients_than_a_batch_holds_is_refused_and_changes_nothing(self, store):
        # The dialects refuse over 1000 in their own words; the send itself refuses them too (a batch's message
        # ids have room for 1000)
        store.accounts["7"] = store.accounts["7"].model_copy(update={"credits": 10_000})
        with pytest.raises(InvalidRequest, match="at most 1000 recipients per send, got 1001"):
            send(store, command(1001))
        assert store.accounts["7"].credits == 10_000
        assert store.batches == {} and store.messages == {}

    def test_a_queue_failure_is_undone_refunded_and_answered_as_unavailable(self, store):
        # When the dispatch queue refuses the send's records (or answers nothing: SQS may have taken them)
        with pytest.raises(Unavailable, match="could not be queued in time and was undone: nothing was sent"):
            send(store, command(3), queue=RecordingQueue(fail=True))
        # Then the credits are back, the batch is failed, and so is each message, so no dispatcher sends it
        assert store.accounts["7"].credits == 1000
        [batch] = store.batches.values()
        assert batch.status == MessageStatus.FAILED
        assert [(m.status, m.error_code) for m in store.messages.values()] == [(MessageStatus.FAILED, "not_queued")] * 3

    def test_a_message_a_dispatcher_claimed_before_the_queue_failure_was_undone_goes_on_and_the_send_stands(
        self, store
    ):
        # Given a queue that took the records but answered an error, and a dispatcher that claimed one message at once
        class TookItButFailed(RecordingQueue):
            def enqueue(this, commands):
                super().enqueue(commands)
                key = next(iter(store.messages))
                assert store.claim_for_dispatch(key, now=NOW, lease_seconds=60).outcome == ClaimOutcome.CLAIMED
                raise TimeoutError("no answer from SQS")

        announced: list = []
        batch, _ = send(
            store,
            command(3, delivery_report=DeliveryReportMode.YES),
            queue=TookItButFailed(),
            announce=announced.extend,
        )
        # Then the claimed message goes on, charged; the two others are failed and refunded; the send stands
        statuses = [m.status for m in store.messages.values()]
        assert statuses == [MessageStatus.QUEUED, MessageStatus.FAILED, MessageStatus.FAILED]
        assert store.accounts["7"].credits == 1000 - 1
        assert store.batches[("7", batch.reference_id)].status == MessageStatus.QUEUED
        # And the client, which asked for delivery reports, hears of the two failures like any others
        reports = notifications_of(announced)
        withdrawn = [m for m in store.messages.values() if m.status == MessageStatus.FAILED]
        assert sorted(r["id"] for r in reports) == sorted(f"dlr_{m.message_id}_2" for m in withdrawn)
        assert {(r["payload"]["status"], r["payload"]["error_code"]) for r in reports} == {("failed", "not_queued")}

    def test_a_message_an_upstream_refused_before_the_queue_failure_was_undone_keeps_the_send_standing(self, store):
        # Given a queue that took the records but answered an error, and a dispatcher that got the first message at
        # once and failed it (the upstream refused it for good), announcing that failure to the client
        provider = FakeProvider()
        provider.failure = UpstreamError("bad number", permanent=True)
        announced: list = []

        class TookItAndOneFailed(RecordingQueue):
            def enqueue(this, commands):
                super().enqueue(commands)
                first = commands[0].model_copy(update={"message_ids": commands[0].message_ids[:1]})
                asyncio.run(dispatch(first, replace(dispatch_deps(store, provider), announce=announced.extend)))
                raise TimeoutError("no answer from SQS")

        batch, _ = send(
            store,
            command(3, delivery_report=DeliveryReportMode.YES),
            queue=TookItAndOneFailed(),
            announce=announced.extend,
        )
        # Then the send stands, for the client has a report of its first message: a send undone whole (a 503, no
        # message id given) must leave the client nothing to hear about
        failed = [m for m in store.messages.values()]
        assert [m.error_code for m in failed] == ["upstream_rejected", "not_queued", "not_queued"]
        assert store.batches[("7", batch.reference_id)].status == MessageStatus.QUEUED
        assert store.accounts["7"].credits == 1000
        # And each failure is reported once: the upstream's by the dispatcher, the two withdrawals by the send
        reports = notifications_of(announced)
        assert sorted(r["id"] for r in reports) == sorted(f"dlr_{m.message_id}_2" for m in failed)
        assert [r["payload"]["error_code"] for r in reports].count("not_queued") == 2

    def test_a_schedule_that_fails_is_undone_and_the_batch_can_never_be_released(self, store):
        class FailingScheduler(RecordingScheduler):
            def schedule(this, account_id, reference_id, at):
                super().schedule(account_id, reference_id, at)
                raise TimeoutError("no answer from EventBridge Scheduler")

        scheduler = FailingScheduler()
        with pytest.raises(Unavailable, match="could not be queued"):
            send(store, command(2, send_at=NOW + timedelta(hours=1)), scheduler=scheduler)
        assert store.accounts["7"].credits == 1000
        [(account_id, reference_id)] = scheduler.scheduled
        assert store.batches[(account_id, reference_id)].status == MessageStatus.FAILED
        assert {m.status for m in store.messages.values()} == {MessageStatus.FAILED}
        # And when the schedule that was created after all fires, it releases nothing
        queue = RecordingQueue()
        assert not release(store, account_id, reference_id, queue)
        assert queue.commands == []

    def test_a_scheduled_send_undone_is_refunded_whole_even_if_failing_its_messages_then_dies(self, store):
        class FailingScheduler(RecordingScheduler):
            def schedule(this, account_id, reference_id, at):
                raise TimeoutError("no answer from EventBridge Scheduler")

        class Died(BaseException):
            pass

        def dies(*args, **kwargs):
            raise Died()

        # Given a scheduled send whose schedule fails, and a request killed right after the batch's undo (before
        # any of its messages is moved, with or without a refund)
        store.move_messages = dies  # type: ignore[method-assign]
        store.move_and_refund = dies  # type: ignore[method-assign]
        with pytest.raises(Died):
            send(store, command(3, send_at=NOW + timedelta(hours=1)), scheduler=FailingScheduler())
        # Then the batch is failed and every credit is back (one write), its messages left scheduled under it
        [batch] = store.batches.values()
        assert batch.status == MessageStatus.FAILED
        assert store.accounts["7"].credits == 1000
        assert {m.status for m in store.messages.values()} == {MessageStatus.SCHEDULED}
        # And they are never released
        queue = RecordingQueue()
        assert not release(store, "7", batch.reference_id, queue)
        assert queue.commands == []

    def test_a_scheduled_send_released_before_its_undo_is_undone_message_by_message(self, store):
        # Given a schedule that fires (and releases the batch) before the scheduler's answer is lost
        queue = RecordingQueue()

        class FiredThenFailed(RecordingScheduler):
            def schedule(this, account_id, reference_id, at):
                assert release(store, account_id, reference_id, queue)
                raise TimeoutError("no answer from EventBridge Scheduler")

        with pytest.raises(Unavailable, match="could not be queued"):
            send(store, command(3, send_at=NOW + timedelta(hours=1)), scheduler=FiredThenFailed())
        # Then the released messages no dispatcher claimed yet are failed and refunded, and so is the batch
        [batch] = store.batches.values()
        assert batch.status == MessageStatus.FAILED
        assert [(m.status, m.error_code) for m in store.messages.values()] == [(MessageStatus.FAILED, "not_queued")] * 3
        assert store.accounts["7"].credits == 1000
        assert [len(c.message_ids) for c in queue.commands] == [3]

    def test_a_keyed_send_whose_batch_id_is_taken_is_unavailable_and_leaves_the_other_batch_alone(self, store):
        first, deps = send(store, command(2))
        with pytest.raises(Unavailable, match=r"exists already.*nothing was sent or charged; try again"):
            accept_send(store.accounts["7"], command(3), deps, now=NOW, claim=KeyClaim(reference_id=first.reference_id))
        assert store.batches[("7", first.reference_id)].status == MessageStatus.QUEUED
        assert store.accounts["7"].credits == 1000 - 2

    def test_a_conflict_after_the_batch_and_credits_write_undoes_the_send(self, store, monkeypatch):
        # Given a store that refuses a chunk of messages as a conflict, after the batch and its credits were written
        # (an add_messages that writes conditionally, or a store wrapped to do so)
        def refused(batch, messages):
            raise Conflict(f"message of batch {batch.reference_id} exists already")

        monkeypatch.setattr(store, "add_messages", refused)
        with pytest.raises(Unavailable, match="could not be stored"):
            send(store, command(3))
        # Then the send is undone as after any other failure: the batch failed and its credits back
        [batch] = store.batches.values()
        assert batch.status == MessageStatus.FAILED
        assert store.accounts["7"].credits == 1000

    def test_a_send_with_too_little_time_left_is_refused_before_anything_is_stored_or_charged(self, store):
        deps = SendDependencies(
            accounts=store,
            messages=store,
            dispatch_queue=RecordingQueue(),
            scheduler=RecordingScheduler(),
            prices=store,
        )
        with pytest.raises(Unavailable, match="nothing was stored or charged"):
            accept_send(store.accounts["7"], command(3), deps, now=NOW, out_of_time=lambda: True)
        assert (store.accounts["7"].credits, store.batches, store.messages) == (1000, {}, {})

    def test_a_send_that_runs_out_of_time_while_storing_is_undone_before_anything_is_queued(self, store):
        # Given an invocation that runs out of time after two chunks of 100 messages are stored
        looks = iter([False, False, False, True])
        queue = RecordingQueue()
        deps = SendDependencies(
            accounts=store, messages=store, dispatch_queue=queue, scheduler=RecordingScheduler(), prices=store
        )
        with pytest.raises(
            Unavailable, match="could not be stored in time and was undone: nothing was sent or charged"
        ):
            accept_send(store.accounts["7"], command(250), deps, now=NOW, out_of_time=lambda: next(looks))
        # Then nothing is queued, the credits are back and the batch is failed
        assert queue.commands == []
        assert store.accounts["7"].credits == 1000
        [batch] = store.batches.values()
        assert batch.status == MessageStatus.FAILED
        assert len(store.messages) == 200

    def test_send_at_in_the_future_schedules_instead_of_queueing(self, store):
        scheduler = RecordingScheduler()
        batch, deps = send(store, command(2, send_at=NOW + timedelta(hours=1)), scheduler=scheduler)
        assert batch.status == MessageStatus.SCHEDULED
        assert scheduler.scheduled == {("7", batch.reference_id): NOW + timedelta(hours=1)}
        assert deps.dispatch_queue.commands == []

    def test_a_send_time_beyond_ninety_days_is_refused_and_changes_nothing(self, store):
        with pytest.raises(InvalidRequest, match="90 days"):
            send(store, command(send_at=NOW + timedelta(days=91)))
        assert store.accounts["7"].credits == 1000
        assert store.batches == {}

    def test_prices_follow_the_route_tier_and_network(self, store):
        store.prices = PriceTable().with_price("N", "*", 3).with_price("N", "mtn", 5).with_price("LL", "*", 1)
        mtn, airtel = (
            Recipient(msisdn="+2348030000000", telco="mtn"),
            Recipient(msisdn="+2348020000000", telco="airtel"),
        )
        batch, _ = send(store, command().model_copy(update={"recipients": (mtn, airtel), "text": "x" * 200}))
        assert batch.cost == 2 * 5 + 2 * 3
        cheap, _ = send(store, command().model_copy(update={"recipients": (mtn,), "route_tier": "LL"}))
        assert cheap.cost == 1
        assert store.accounts["7"].credits == 1000 - 16 - 1

    def test_a_network_priced_for_one_country_is_charged_so_only_there(self, store):
        # Given MTN at 2 credits a part, and at 9 in Ghana
        store.prices = PriceTable().with_price("N", "mtn", 2).with_price("N", "mtn@GH", 9)
        # When the account sends to an MTN number in Nigeria and one in Ghana, as a client writes them
        recipients, _ = normalise_recipients(["08030000000", "+233241234567"], "NG")
        batch, _ = send(store, command().model_copy(update={"recipients": tuple(recipients)}))
        # Then each is charged its own country's price
        assert batch.cost == 2 + 9

    def test_a_message_over_the_part_limit_is_refused(self, store):
        with pytest.raises(InvalidRequest, match="over this account's limit of 10"):
            send(store, command(text="x" * (153 * 10 + 1)))
        assert store.accounts["7"].credits == 1000

    @pytest.mark.parametrize("offset", [SCHEDULE_THRESHOLD, timedelta(hours=-1)])
    def test_send_at_in_the_past_or_within_the_clock_skew_tolerance_sends_now(self, store, offset):
        batch, deps = send(store, command(send_at=NOW + offset))
        assert batch.status == MessageStatus.QUEUED
        assert len(deps.dispatch_queue.commands) == 1


def test_recipients_are_normalised_deduplicated_and_invalid_ones_reported():
    accepted, rejected = normalise_recipients(["+2348030000000", "2348030000000", "08030000000", "12", "abc"], "NG")
    assert [r.msisdn for r in accepted] == ["+2348030000000"]
    assert [r.raw for r in rejected] == ["12", "abc"]
    assert all(r.reason for r in rejected)


class Killed(BaseException):
    """A container dying mid-invocation: no `except Exception` of ours catches it."""


class DyingProvider(FakeProvider):
    """Once three submits are under way, the first dies at once, the second a moment later, and the third is
    answered after 30 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[SubmitRequest] = []
        self.all_started = asyncio.Event()

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        self.submits.append(request)
        order = len(self.submits)
        if order == 3:
            self.all_started.set()
        await asyncio.wait_for(self.all_started.wait(), 5)
        if order == 1:
            raise Killed("first submit")
        if order == 2:
            await asyncio.sleep(0.01)
            raise Killed("second submit")
        await asyncio.sleep(0.03)
        self.answered.append(request)
        return SubmitResult(upstream_message_id="up-late")


def dispatch_deps(store: InMemoryStore, provider: FakeProvider) -> DispatchDependencies:
    return DispatchDependencies(
        messages=store,
        accounts=store,
        upstreams_for=lambda _: [provider],
        callback_base_url="https://gw.example/",
        clock=clock,
    )


class TestDispatch:
    def test_the_upstream_is_told_what_is_left_of_the_message_s_validity(self, store):
        # Given a message queued at NOW with the default 24 h validity, dispatched 61 minutes later
        _, deps = send(store, command(1))
        provider = FakeProvider()
        later = replace(dispatch_deps(store, provider), clock=lambda: NOW + timedelta(minutes=61, seconds=30))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], later))
        # Then the submit asks the upstream to keep trying for the 1378 whole minutes left, not the full day
        [request] = provider.submits
        assert request.validity_minutes == 24 * 60 - 62

    def test_each_message_is_submitted_once_even_when_the_record_is_delivered_twice(self, store):
        _, deps = send(store, command(5))
        provider = FakeProvider()
        [record] = deps.dispatch_queue.commands
        first = asyncio.run(dispatch(record, dispatch_deps(store, provider)))
        second = asyncio.run(dispatch(record, dispatch_deps(store, provider)))
        assert (first.submitted, second.submitted, second.skipped) == (5, 0, 5)
        assert len(provider.submits) == 5
        assert provider.submits[0].dlr_url == "https://gw.example/callbacks/fake/dlr"
        assert all(m.status == MessageStatus.SUBMITTED for m in store.messages.values())
        assert {m.upstream for m in store.messages.values()} == {"fake"}

    def test_a_dying_container_runs_none_of_its_other_messages_on(self, store, caplog):
        # Given three messages whose submits start together: the first dies at once, the second a moment later,
        # and the third would be answered after both (a container killed mid-record, as the chaos run kills it)
        _, deps = send(store, command(3))
        provider = DyingProvider()
        loop = asyncio.new_event_loop()
        try:
            # When the record is dispatched on a loop that outlives the invocation (as a warm container's does)
            with pytest.raises(Killed):
                loop.run_until_complete(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
            loop.run_until_complete(asyncio.sleep(0.1))
        finally:
            loop.close()
        del loop
        gc.collect()
        # Then nothing of that invocation ran on: the third submit never finished, nothing was written after it
        assert len(provider.submits) == 3 and provider.answered == []
        assert {m.status for m in store.messages.values()} == {MessageStatus.QUEUED}
        # And no task was left to end with an exception nobody read (asyncio logs those as errors)
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]

    def test_messages_queued_from_a_sender_the_operator_removed_since_are_not_sent_from_it(self, store):
        # Given two messages from 48974 queued with delivery reports, waiting in the account's lane
        announced: list = []
        _, deps = send(store, command(2, delivery_report=DeliveryReportMode.YES))
        # When the operator removes 48974 from the account before the dispatcher reaches them
        store.accounts["7"] = store.accounts["7"].model_copy(update={"senders": ()})
        provider = FakeProvider()
        record = deps.dispatch_queue.commands[0]
        outcome = asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), announce=announced.extend)))
        # Then none goes out from it: each is failed sender_removed, refunded and reported to the client
        assert provider.submits == [] and outcome.failed == 2
        assert {(m.status, m.error_code) for m in store.messages.values()} == {(MessageStatus.FAILED, "sender_removed")}
        assert store.accounts["7"].credits == 1000
        assert [n["payload"]["error_code"] for n in notifications_of(announced)] == ["sender_removed"] * 2

    def test_a_dispatcher_whose_account_holds_the_sender_makes_no_account_read(self, store, monkeypatch):
        # Given a queued message from 48974, and the invocation's (cached) account, which holds 48974
        _, deps = send(store, command(1))
        reads: list[str] = []
        monkeypatch.setattr(store, "get_account", lambda account_id, **_: reads.append(account_id))
        provider = FakeProvider()
        cached = replace(dispatch_deps(store, provider), account=store.accounts["7"])
        # When it is dispatched
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], cached))
        # Then it is sent without reading the account again: only a sender the cached account lacks costs a read
        assert len(provider.submits) == 1 and reads == []

    def test_a_transient_failure_asks_for_a_retry_and_leaves_the_message_queued(self, store):
        _, deps = send(store, command(2))
        provider = FakeProvider()
        provider.failure = UpstreamError("503", permanent=False, retry_after=7)
        outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
        assert outcome.needs_retry and outcome.retry_after == 7
        assert all(m.status == MessageStatus.QUEUED for m in store.messages.values())
        assert store.claims == {}
        assert store.accounts["7"].credits == 998

    def test_a_permanent_refusal_fails_the_message_and_refunds_it(self, store):
        _, deps = send(store, command(2))
        provider = FakeProvider()
        provider.failure = UpstreamError("bad number", permanent=True)
        outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
        assert (outcome.failed, outcome.needs_retry) == (2, False)
        assert all(m.status == MessageStatus.FAILED for m in store.messages.values())
        assert store.accounts["7"].credits == 1000

    def test_a_transient_failure_on_the_last_attempt_fails_the_message_and_refunds_it(self, store):
        # Given two messages and an upstream that keeps timing out, and three submit attempts per message
        _, deps = send(store, command(2))
        provider = FakeProvider()
        provider.failure = UpstreamError("timeout", permanent=False)
        three = replace(dispatch_deps(store, provider), max_submit_attempts=3)
        record = deps.dispatch_queue.commands[0]
        # When the record is delivered again and again: each failed attempt is counted on the message, and the
        # record's backoff grows with it
        first = asyncio.run(dispatch(record, three))
        second = asyncio.run(dispatch(record, three))
        assert (first.failed_attempts, second.failed_attempts) == (1, 2)
        assert {m.submit_attempts for m in store.messages.values()} == {2}
        # Then the third attempt's failure is final: failed and refunded
        last = asyncio.run(dispatch(record, three))
        assert (last.failed, last.needs_retry) == (2, False)
        assert {m.error_code for m in store.messages.values()} == {"upstream_unavailable"}
        assert store.accounts["7"].credits == 1000

    def test_hand_backs_count_no_attempt_and_wait_no_backoff(self, store):
        # Given a record of three and invocations that are each already at their end
        _, deps = send(store, command(3))
        provider = FakeProvider()
        record = deps.dispatch_queue.commands[0]
        ending = replace(dispatch_deps(store, provider), out_of_time=lambda: True)
        for _ in range(8):
            # When it is handed back for want of time, more times than a message has attempts
            outcome = asyncio.run(dispatch(record, ending))
            assert (outcome.failed, len(outcome.retry)) == (0, 3)
            # Then each hand-back waits a second, not a growing backoff
            assert (outcome.failed_attempts, outcome.retry_delay(backoff_base=5)) == (0, 1)
        # And nothing was counted against the messages, which all go out once time allows
        assert {m.submit_attempts for m in store.messages.values()} == {0}
        done = asyncio.run(dispatch(record, dispatch_deps(store, provider)))
        assert (done.submitted, done.needs_retry) == (3, False)

    def test_near_the_end_of_the_invocation_no_message_is_claimed_and_the_rest_come_back(self, store):
        # Given a record of five and an invocation whose time runs short after two submits
        _, deps = send(store, command(5))
        provider = FakeProvider()
        short = replace(dispatch_deps(store, provider), concurrency=1, out_of_time=lambda: len(provider.submits) >= 2)
        # When it dispatches the record
        outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], short))
        # Then two went out and the other three go back to the queue unclaimed (a claim the timeout cut short
        # would keep them from ever being sent), charged still, with no failure reported to the client
        assert (outcome.submitted, len(outcome.retry), outcome.failed) == (2, 3, 0)
        assert outcome.needs_retry and outcome.retry_after == 1.0
        statuses = sorted(str(m.status) for m in store.messages.values())
        assert statuses == ["queued"] * 3 + ["submitted"] * 2
        assert store.claims == {}
        assert store.accounts["7"].credits == 995
        # And the next invocation, with its whole time, sends exactly those three
        again = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
        assert (again.submitted, again.skipped) == (3, 2)
        assert len({r.client_ref for r in provider.submits}) == len(provider.submits) == 5

    def test_a_message_past_its_validity_expires_unsent_and_is_refunded(self, store):
        _, deps = send(store, command(1))
        provider = FakeProvider()
        late = replace(dispatch_deps(store, provider), clock=lambda: NOW + timedelta(hours=25))
        outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], late))
        assert (outcome.expired, outcome.submitted) == (1, 0)
        assert provider.submits == []
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.EXPIRED, "validity_period_ended")
        assert store.accounts["7"].credits == 1000
        assert store.claims == {}

    def test_a_message_another_dispatcher_is_submitting_is_not_expired_under_it(self, store):
        # Given a message just past its validity, which another dispatcher claimed a moment ago and is submitting
        _, deps = send(store, command(1))
        [message] = store.messages.values()
        at = NOW + timedelta(hours=24, seconds=1)
        assert store.claim_for_dispatch(message.key, now=at, lease_seconds=120).outcome == ClaimOutcome.CLAIMED
        charged = store.accounts["7"].credits
        # When a duplicate delivery of its record comes meanwhile
        late = replace(dispatch_deps(store, FakeProvider()), clock=lambda: at)
        outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], late))
        # Then it leaves the message to its holder (and comes back after the lease) instead of expiring and refunding
        # a message the upstream is taking
        assert (outcome.expired, outcome.retry, outcome.retry_after) == (0, [message.message_id], 120.0)
        assert store.messages[message.key].status == MessageStatus.QUEUED
        assert store.accounts["7"].credits == charged
        # And the holder's answer is recorded
        change = store.transition(
            message.key, MessageStatus.SUBMITTED, now=at, upstream="fake", upstream_message_id="u1"
        )
        assert change is not None and change.changed


class TestFailover:
    def run(self, store, primary: FakeProvider, fallback: FakeProvider):
        _, deps = send(store, command(1))
        routed = replace(dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback])
        return asyncio.run(dispatch(deps.dispatch_queue.commands[0], routed))

    def test_an_unavailable_primary_sends_the_message_through_the_fallback(self, store):
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("503", permanent=False, unavailable=True)
        outcome = self.run(store, primary, fallback)
        assert outcome.submitted == 1
        assert len(fallback.submits) == 1
        assert fallback.submits[0].dlr_url.endswith("/callbacks/fallback/dlr")
        [message] = store.messages.values()
        assert (message.status, message.upstream) == (MessageStatus.SUBMITTED, "fallback")

    def test_a_throttled_primary_is_retried_later_not_failed_over(self, store):
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("429", permanent=False, retry_after=30)
        outcome = self.run(store, primary, fallback)
        assert outcome.needs_retry and outcome.retry_after == 30
        assert fallback.submits == []

    def test_a_refusal_is_final_and_does_not_try_the_fallback(self, store):
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("invalid number", permanent=True)
        outcome = self.run(store, primary, fallback)
        assert outcome.failed == 1
        assert fallback.submits == []
        assert store.accounts["7"].credits == 1000

    def test_an_upstream_that_only_asks_us_to_slow_down_never_gets_the_message_failed(self, store):
        # Given an upstream that is up but throttles a burst (Twilio 429 / 20429, Jasmin 403 "User throughput
        # exceeded", 9bits 429), each time with Retry-After: the message is fine and would be taken a little later
        primary = FakeProvider("primary")
        primary.failure = UpstreamError("429 too many requests", permanent=False, retry_after=2.0)
        _, sent = send(store, command(1))
        record = sent.dispatch_queue.commands[0]
        deps = dispatch_deps(store, primary)
        # When the record comes back after each Retry-After, as often as DISPATCH_MAX_ATTEMPTS
        for _ in range(deps.max_submit_attempts):
            asyncio.run(dispatch(record, deps))
        # Then the message still waits for the upstream (within its validity) instead of being failed and refunded as
        # "upstream_unavailable" for an upstream that answered every time
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.QUEUED, None)

    def test_a_throttled_message_waits_longer_each_time_and_expires_with_its_validity(self, store):
        # Given an upstream that throttles every submit, without a Retry-After (a 429: not unavailable, so no failover)
        primary = FakeProvider("primary")
        primary.failure = UpstreamError("429 too many requests", permanent=False, unavailable=False)
        _, sent = send(store, command(1))
        record = sent.dispatch_queue.commands[0]
        deps = dispatch_deps(store, primary)
        # When the record comes back twelve times in the first hour
        delays = []
        for minute in range(12):
            at = replace(deps, clock=lambda minute=minute: NOW + timedelta(minutes=5 * minute))
            outcome = asyncio.run(dispatch(record, at))
            delays.append(outcome.retry_delay(backoff_base=5))
        # Then no attempt is counted, and its record waits longer each time (about 2.5-5 s at first), up to the
        # usual 5 minutes (it holds the account's FIFO lane meanwhile): no hot loop, no lane held for long
        [message] = store.messages.values()
        assert (message.status, message.submit_attempts, message.submit_throttles) == (MessageStatus.QUEUED, 0, 12)
        assert 2 <= delays[0] <= 5 and delays[-1] >= 300 / 2
        assert all(delay <= 300 for delay in delays)
        # And a record back a minute before the message's validity ends waits no longer than that minute
        at = replace(deps, clock=lambda: NOW + timedelta(hours=23, minutes=59))
        assert asyncio.run(dispatch(record, at)).retry_delay(backoff_base=5) <= 61
        # Then, back after it, the message is expired and refunded like any other
        at = replace(deps, clock=lambda: NOW + timedelta(hours=24, seconds=1))
        assert asyncio.run(dispatch(record, at)).expired == 1
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.EXPIRED, "validity_period_ended")
        assert store.accounts["7"].credits == 1000

    def test_a_throttle_holds_back_the_rest_of_the_record_for_that_upstream_without_a_request(self, store):
        # Given a bulk record of 5 messages and an upstream that throttles (429, up but asking us to slow down)
        primary = FakeProvider("primary")
        primary.failure = UpstreamError("429 too many requests", permanent=False, retry_after=2.0)
        _, sent = send(store, command(5))
        record = sent.dispatch_queue.commands[0]
        deps = replace(dispatch_deps(store, primary), concurrency=1)
        # When the record is dispatched, one message at a time
        outcome = asyncio.run(dispatch(record, deps))
        # Then only the first is offered: the others are not sent into the throttle (each would be another 429)
        assert len(primary.submits) == 1
        messages = list(store.messages.values())
        assert {m.status for m in messages} == {MessageStatus.QUEUED}
        # And each counts the throttle it met without a request, so a record an upstream throttles whole is done
        # within MAX_SUBMIT_THROTTLES returns, as when each was offered
        assert [m.submit_throttles for m in messages] == [1] * 5
        assert not any(m.submit_attempts for m in messages)
        assert store.claims == {}
        # And the whole record comes back after the throttle's wait, every message in it
        assert sorted(outcome.retry) == sorted(m.message_id for m in messages)
        assert outcome.retry_delay(backoff_base=5) >= 2

    def test_a_throttle_holds_back_only_the_messages_routed_to_that_upstream(self, store):
        # Given a bulk record whose first message is routed to a throttling upstream and the rest to another
        throttling, other = FakeProvider("throttling"), FakeProvider("other")
        throttling.failure = UpstreamError("429 too many requests", permanent=False, retry_after=2.0)
        _, sent = send(store, command(5))
        record = sent.dispatch_queue.commands[0]
        first = min(store.messages.values(), key=lambda m: m.message_id)
        routed = replace(
            dispatch_deps(store, other),
            concurrency=1,
            upstreams_for=lambda m: [throttling] if m.msisdn == first.msisdn else [other],
        )
        # When it is dispatched
        outcome = asyncio.run(dispatch(record, routed))
        # Then the other upstream's messages go out; only the throttled one waits
        assert (len(throttling.submits), len(other.submits), outcome.submitted) == (1, 4, 4)
        assert outcome.retry == [first.message_id]

    def test_a_message_throttled_max_times_is_failed_and_refunded_so_its_lane_moves_on(self, store):
        from sms_gateway.logic.dispatch import MAX_SUBMIT_THROTTLES

        # Given an upstream that throttles a message every time, asking to come back in a second
        primary = FakeProvider("primary")
        primary.failure = UpstreamError("throttled: User throughput exceeded", permanent=False, retry_after=1.0)
        _, sent = send(store, command(1))
        record = sent.dispatch_queue.commands[0]
        deps = dispatch_deps(store, primary)
        # When its record comes back MAX_SUBMIT_THROTTLES times
        outcomes = [asyncio.run(dispatch(record, deps)) for _ in range(MAX_SUBMIT_THROTTLES)]
        # Then it waited without an attempt counted until the last, which fails it `upstream_throttled`, refunded:
        # the account's FIFO lane moves on, and the record never nears the queue's maxReceiveCount (100)
        assert [o.needs_retry for o in outcomes] == [True] * (MAX_SUBMIT_THROTTLES - 1) + [False]
        [message] = store.messages.values()
        assert (message.status, message.error_code, message.submit_attempts) == (
            MessageStatus.FAILED,
            "upstream_throttled",
            0,
        )
        assert store.accounts["7"].credits == 1000

    def test_an_upstream_that_throttles_every_message_releases_a_full_record_within_its_throttle_bound(self, store):
        from sms_gateway.logic.dispatch import MAX_SUBMIT_THROTTLES
        from sms_gateway.logic.send import DISPATCH_CHUNK

        # Given a full bulk record (100 messages) and an upstream that throttles every submit, in an invocation
        # whose 64 in-flight slots four accounts' records share (16 each)
        primary = FakeProvider("primary")
        primary.failure = UpstreamError("429 too many requests", permanent=False, retry_after=1.0)
        _, sent = send(store, command(DISPATCH_CHUNK))
        record = sent.dispatch_queue.commands[0]
        deps = replace(dispatch_deps(store, primary), concurrency=16)
        # When the record comes back until nothing in it is left to retry
        returns, held_for = 0, 0
        while returns < 200:
            outcome = asyncio.run(dispatch(record, deps))
            if not outcome.needs_retry:
                break
            returns += 1
            held_for += outcome.retry_delay(backoff_base=5)
        # Then every message is failed `upstream_throttled` after its MAX_SUBMIT_THROTTLES, as docs/dispatch.md says
        assert {(m.status, m.error_code) for m in store.messages.values()} == {
            (MessageStatus.FAILED, "upstream_throttled")
        }
        # ... and, as before the hold-back (24 returns, about an hour of backoff), the record's returns stay well
        # within the dispatch queue's maxReceiveCount (100: SQS moves it to the DLQ, its messages still queued, on
        # the 101st) and the account's FIFO lane is not held for many hours behind it
        assert returns < MAX_SUBMIT_THROTTLES + 1, f"{returns} returns, the lane held {held_for / 3600:.1f} h"

    # answered_in: how long the upstream takes to accept a submit; 429s come back at once, so with 0.01 every throttle
    # of a delivery is answered before the submits it takes
    @pytest.mark.parametrize("answered_in", [0.0, 0.01])
    def test_an_upstream_that_takes_a_few_messages_each_time_and_throttles_the_rest_never_gets_one_failed(
        self, store, answered_in
    ):
        from collections import Counter

        from sms_gateway.logic.send import DISPATCH_CHUNK

        # Given a full bulk record (100 messages) and an upstream (no route limit configured) that takes three
        # submits each time the record comes back and answers 429 to the rest: about three messages a second
        class TakesThreeAtATime(FakeProvider):
            taken_this_time = 0

            async def submit(self, request):
                if self.taken_this_time >= 3:
                    raise UpstreamError("429 too many requests", permanent=False, unavailable=False)
                self.taken_this_time += 1
                await asyncio.sleep(answered_in)
                return await super().submit(request)

        primary = TakesThreeAtATime("primary")
        _, sent = send(store, command(DISPATCH_CHUNK))
        record = sent.dispatch_queue.commands[0]
        deps = dispatch_deps(store, primary)
        # When the record comes back until nothing in it is left to retry
        backoffs = set()
        for _ in range(200):
            primary.taken_this_time = 0
            outcome = asyncio.run(dispatch(record, deps))
            if not outcome.needs_retry:
                break
            backoffs.add(outcome.throttles)
        # Then every message went out: the upstream took some on every delivery, so it was slowing us down, not
        # refusing. Until 2026-12-06 the tail of the record (about 28 messages) was failed `upstream_throttled` and
        # refunded on its 24th delivery, each delivery having counted a throttle on every message still queued
        statuses = Counter((m.status, m.error_code) for m in store.messages.values())
        assert statuses == {(MessageStatus.SUBMITTED, None): DISPATCH_CHUNK}, statuses
        # And none counted a throttle, and the record came back each time after a first throttle's wait
        assert {m.submit_throttles for m in store.messages.values()} == {0} and backoffs == {1}

    def test_a_throttled_message_released_after_the_upstream_took_another_never_drops_another_dispatchers_lease(
        self, store
    ):
        # Given a two-message record: the upstream is slow to take the first and throttles the second (429)
        _, second_to = (r.msisdn.lstrip("+") for r in recipients(2))
        _, sent = send(store, command(2))
        record = sent.dispatch_queue.commands[0]
        second_key = next(m.key for m in store.messages.values() if m.msisdn.lstrip("+") == second_to)
        taken_over: list[str | None] = []

        class SlowThenThrottles(FakeProvider):
            first_started = False
            second_throttled = False

            async def submit(self, request):
                if request.msisdn.lstrip("+") == second_to:
                    while not self.first_started:
                        await asyncio.sleep(0.001)
                    self.second_throttled = True
                    raise UpstreamError("429 too many requests", permanent=False, unavailable=False)
                self.first_started = True
                while not self.second_throttled:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.05)  # the throttled one waits meanwhile, its lease held (SubmitsInFlight)
                # And meanwhile its lease is no longer its own: another dispatcher holds the message now (a lease that
                # lapsed and was taken over; or a claim between a release applied and botocore's repeat of it)
                other = store.claim_for_dispatch(
                    second_key, now=NOW + timedelta(seconds=300), lease_seconds=120, upstream="primary"
                )
                taken_over.append(other.claim_id)
                return await super().submit(request)

        primary = SlowThenThrottles("primary")
        # When the dispatcher offers both
        asyncio.run(dispatch(record, dispatch_deps(store, primary)))
        # Then the throttled message's release changed nothing of the other dispatcher's lease
        assert taken_over and taken_over[0] is not None
        assert store.claim_ids.get(second_key) == taken_over[0]
        assert second_key in store.claims

    def test_a_throttled_record_holds_its_accounts_lane_no_longer_than_the_usual_backoff(self, store):
        # Given an upstream that throttles a message again and again, asking each time to come back in 1 s (Jasmin's
        # 403 "User throughput exceeded", Twilio 21611 while the sender's queue drains)
        primary = FakeProvider("primary")
        primary.failure = UpstreamError("throttled: User throughput exceeded", permanent=False, retry_after=1.0)
        _, sent = send(store, command(1))
        record = sent.dispatch_queue.commands[0]
        deps = dispatch_deps(store, primary)
        # When its record has come back a dozen times
        for _ in range(12):
            outcome = asyncio.run(dispatch(record, deps))
        # Then the record (in flight meanwhile: SQS FIFO gives out nothing else of the account's group, whatever its
        # route) is not held longer than a transient failure's backoff (5 minutes), nor far past what was asked
        delay = outcome.retry_delay(backoff_base=5)
        assert delay <= 300, f"the account's lane is held {delay} s behind one throttled message"

    def test_a_throttle_never_brings_the_record_back_before_its_retry_after(self, store):
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("429 too many requests", permanent=False, retry_after=40.0)
        outcome = self.run(store, primary, fallback)
        [message] = store.messages.values()
        assert (message.submit_attempts, fallback.submits, outcome.retry_delay(backoff_base=5)) == (0, [], 40)

    def test_a_fallbacks_throttle_after_an_unavailable_primary_counts_the_attempt(self, store):
        # Given a primary that is down and a fallback that throttles
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("503", permanent=False, unavailable=True)
        fallback.failure = UpstreamError("429", permanent=False, retry_after=3.0)
        outcome = self.run(store, primary, fallback)
        # Then the primary's failure is an attempt: the fallback's own throttle is no pacing of ours (when our route
        # limit holds the fallback back, nothing is counted: tests/unit/test_dispatch_hazards.py)
        [message] = store.messages.values()
        assert (message.status, message.submit_attempts, message.submit_throttles) == (MessageStatus.QUEUED, 1, 0)
        assert outcome.failed_attempts == 1 and outcome.retry_delay(backoff_base=5) >= 3

    def test_a_fallback_refusing_what_only_the_primary_can_send_does_not_fail_the_message(self, store):
        # Given a primary that is down for a moment (503) and a fallback that refuses the message's sender (the
        # sender ID is registered with the primary only: Africa's Talking 402 InvalidSenderId, Twilio 21606)
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("503", permanent=False, unavailable=True)
        fallback.failure = UpstreamError("fallback refused the recipient: 402 InvalidSenderId", permanent=True)
        outcome = self.run(store, primary, fallback)
        # Then the message waits for the primary (a transient failure, retried with backoff) instead of being
        # failed and refunded for good: the primary would take it once it is back
        [message] = store.messages.values()
        assert (outcome.failed, outcome.needs_retry) == (0, True)
        assert message.status == MessageStatus.QUEUED
        # And the primary does take it on the record's next delivery
        primary.failure = None
        again = asyncio.run(
            dispatch(
                DispatchCommand(account_id="7", reference_id=message.reference_id, message_ids=(message.message_id,)),
                replace(dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback]),
            )
        )
        assert again.submitted == 1 and store.messages[message.key].upstream == "primary"

    def test_a_fallbacks_refusal_after_a_primary_that_can_never_send_it_fails_the_message(self, store):
        # Given a primary that can never take the message (more parts than it sends: unavailable to it for good)
        # and a fallback that refuses it too
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError(
            "4 parts, primary sends 1", permanent=True, unavailable=True, error_code="too_many_parts"
        )
        fallback.failure = UpstreamError("fallback refused the sender", permanent=True)
        outcome = self.run(store, primary, fallback)
        # Then it fails now and is refunded: waiting for the primary could not help, and six attempts would only
        # delay the same end
        [message] = store.messages.values()
        assert (outcome.failed, outcome.needs_retry) == (1, False)
        assert message.status == MessageStatus.FAILED

    def test_a_fallbacks_throttle_after_a_primary_that_can_never_send_it_never_fails_the_message(self, store):
        # Given a primary that can never take the message (more parts than it sends) and a fallback that throttles
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError(
            "4 parts, primary sends 1", permanent=True, unavailable=True, error_code="too_many_parts"
        )
        fallback.failure = UpstreamError("429 too many requests", permanent=False, retry_after=2.0)
        _, sent = send(store, command(1))
        record = sent.dispatch_queue.commands[0]
        routed = replace(dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback])
        # When the record comes back as often as DISPATCH_MAX_ATTEMPTS
        for _ in range(routed.max_submit_attempts):
            asyncio.run(dispatch(record, routed))
        # Then the message waits for the fallback within its validity, as it would with the fallback as its primary
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.QUEUED, None)

    def test_both_unavailable_means_a_retry_of_the_record(self, store):
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = fallback.failure = UpstreamError("timeout", permanent=False, unavailable=True)
        outcome = self.run(store, primary, fallback)
        assert outcome.needs_retry
        assert (len(primary.submits), len(fallback.submits)) == (1, 1)


class DeduplicatingProvider(FakeProvider):
    """An upstream that answers a repeat of our reference with its first answer (the simulator, 9bits)."""

    deduplicates_submits = True


def no_answer_after_the_request() -> UpstreamError:
    return UpstreamError("primary timed out", permanent=False, unavailable=True, maybe_taken=True)


class TestNoAnswerFromTheUpstream:
    """A submit whose request reached the upstream but got no answer: the upstream may have taken the message."""

    def deps(self, store, primary: FakeProvider, fallback: FakeProvider, checks: list, **changes):
        return replace(
            dispatch_deps(store, primary),
            upstreams_for=lambda _: [primary, fallback],
            awaiting_report=checks.extend,
            **changes,
        )

    def record(self, store) -> DispatchCommand:
        _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
        return deps.dispatch_queue.commands[0]

    def first_submit_unanswered(
        self, store
    ) -> tuple[FakeProvider, FakeProvider, DispatchCommand, list, DispatchOutcome]:
        """A message whose first submit, to a primary that deduplicates by our reference, got no answer: the
        primary (still failing so), a fallback, the message's record, the settle checks asked for and the outcome
        of that first dispatch."""
        primary, fallback = DeduplicatingProvider("primary"), FakeProvider("fallback")
        primary.failure = no_answer_after_the_request()
        record, checks = self.record(store), []
        outcome = asyncio.run(dispatch(record, self.deps(store, primary, fallback, checks)))
        return primary, fallback, record, checks, outcome

    def test_an_upstream_that_cannot_tell_repeats_is_never_offered_the_message_again(self, store):
        # Given an upstream without deduplication (Kannel, Jasmin, Twilio, Africa's Talking) whose answer never came
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = no_answer_after_the_request()
        checks: list = []
        outcome = asyncio.run(dispatch(self.record(store), self.deps(store, primary, fallback, checks)))
        # Then neither it nor the fallback gets the message again (that could put it on the phone twice)
        assert (len(primary.submits), fallback.submits, outcome.retry) == (1, [], [])
        # And it is recorded submitted-unconfirmed, charged, and left to its DLR, with a settle check if none comes
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
        assert [m.message_id for m in checks] == [message.message_id]
        assert (outcome.unconfirmed, outcome.failed) == (1, 0)
        assert store.accounts["7"].credits == 1000 - message.price
        # And the client hears of it as submitted (change 2), not as failed
        assert [(c.message.status, c.message.sequence) for c in outcome.changes] == [(MessageStatus.SUBMITTED, 2)]

    def test_an_upstream_that_deduplicates_is_asked_again_later_but_the_fallback_never(self, store):
        # Given an upstream that answers a repeat of our reference with its first answer, whose answer never came
        primary, fallback, record, checks, outcome = self.first_submit_unanswered(store)
        # Then the record comes back for the same upstream, and the fallback is not offered the message
        [message] = store.messages.values()
        assert (outcome.retry, fallback.submits, checks) == ([message.message_id], [], [])
        assert message.status == MessageStatus.QUEUED and store.claims == {}
        # And when that upstream answers the next attempt, the message is submitted through it
        primary.failure = None
        again = asyncio.run(dispatch(record, self.deps(store, primary, fallback, checks)))
        assert again.submitted == 1 and store.messages[message.key].upstream == "primary"
        assert (len(primary.submits), fallback.submits) == (2, [])

    def test_once_a_deduplicating_upstream_may_have_it_no_later_failure_sends_it_elsewhere_or_fails_it(self, store):
        # Given a message whose first submit to a deduplicating primary got no answer
        primary, fallback, record, checks, _ = self.first_submit_unanswered(store)
        [message] = store.messages.values()
        assert store.messages[message.key].maybe_taken_by == "primary"
        # When the primary then answers 503, which would normally send the message to the fallback at once
        primary.failure = UpstreamError("503", permanent=False, unavailable=True)
        again = asyncio.run(dispatch(record, self.deps(store, primary, fallback, checks)))
        # Then the fallback is still never offered it: the record comes back for the primary alone
        assert (again.retry, fallback.submits, len(primary.submits)) == ([message.message_id], [], 2)
        # And when the 503 comes on its last attempt, the message is left to its DLR, not failed and refunded
        last = asyncio.run(dispatch(record, self.deps(store, primary, fallback, checks, max_submit_attempts=3)))
        assert (last.failed, last.unconfirmed, fallback.submits) == (0, 1, [])
        assert store.messages[message.key].error_code == "submit_unconfirmed"
        assert store.accounts["7"].credits == 1000 - message.price

    def test_one_a_deduplicating_upstream_may_have_is_left_to_its_dlr_once_too_late_not_expired(self, store):
        # Given a message whose submit to a deduplicating primary got no answer, whose record comes back only after
        # the message's validity ended (held behind its group)
        primary, fallback, record, checks, _ = self.first_submit_unanswered(store)
        [message] = store.messages.values()
        a_day_later = lambda: NOW + timedelta(hours=25)  # noqa: E731
        outcome = asyncio.run(dispatch(record, self.deps(store, primary, fallback, checks, clock=a_day_later)))
        # Then it is not asked again, nor expired and refunded: the primary may be delivering it
        assert (len(primary.submits), fallback.submits, outcome.expired, outcome.unconfirmed) == (1, [], 0, 1)
        assert store.messages[message.key].error_code == "submit_unconfirmed"
        assert store.accounts["7"].credits == 1000 - message.price

    def test_a_message_a_deduplicating_upstream_may_have_is_never_failed_for_its_throttles(self, store):
        from sms_gateway.logic.dispatch import MAX_SUBMIT_THROTTLES

        # Given a message whose first submit to a deduplicating primary got no answer (9bits' 502: it may have it)
        primary, fallback, record, checks, _ = self.first_submit_unanswered(store)
        [message] = store.messages.values()
        # When the primary, overloaded, answers each ask again under our reference with a 429
        primary.failure = UpstreamError("429 too many requests", permanent=False, retry_after=1.0)
        for _ in range(MAX_SUBMIT_THROTTLES):
            asyncio.run(dispatch(record, self.deps(store, primary, fallback, checks)))
        # Then it is not failed and refunded while the primary may be delivering it: left to its DLR
        found = store.messages[message.key]
        assert (found.status, found.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
        assert store.accounts["7"].credits == 1000 - message.price

    def test_an_upstream_that_may_have_it_and_left_the_route_is_not_replaced_by_another(self, store):
        primary, fallback, record, checks, _ = self.first_submit_unanswered(store)
        # When the route now names the fallback only
        rerouted = replace(self.deps(store, primary, fallback, checks), upstreams_for=lambda _: [fallback])
        outcome = asyncio.run(dispatch(record, rerouted))
        # Then the message is left to the DLR of the upstream that may have it
        assert (outcome.unconfirmed, fallback.submits) == (1, [])

    def test_on_its_last_attempt_a_message_an_upstream_may_have_is_unconfirmed_not_failed(self, store):
        primary, fallback = DeduplicatingProvider("primary"), FakeProvider("fallback")
        primary.failure = no_answer_after_the_request()
        checks: list = []
        last = self.deps(store, primary, fallback, checks, max_submit_attempts=1)
        outcome = asyncio.run(dispatch(self.record(store), last))
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
        assert (outcome.failed, outcome.unconfirmed, len(checks), fallback.submits) == (0, 1, 1, [])

    def test_a_request_that_never_left_still_goes_to_the_fallback(self, store):
        primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
        primary.failure = UpstreamError("primary unreachable", permanent=False, unavailable=True)
        outcome = asyncio.run(dispatch(self.record(store), self.deps(store, primary, fallback, [])))
        assert (outcome.submitted, len(fallback.submits)) == (1, 1)


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20])
def test_backoff_grows_with_jitter_up_to_a_cap(attempt):
    low = backoff_seconds(attempt, None, rand=lambda: 0.0)
    high = backoff_seconds(attempt, None, rand=lambda: 1.0)
    assert 1 <= low <= high <= 300
    assert high == min(300, 5 * 2 ** (attempt - 1))
    if attempt > 1:
        assert high >= backoff_seconds(attempt - 1, None, rand=lambda: 1.0)


def test_backoff_never_comes_back_before_retry_after():
    assert backoff_seconds(1, 120.0, rand=lambda: 0.0) == 120


def test_backoff_starts_from_the_configured_base():
    assert [backoff_seconds(attempt, None, rand=lambda: 1.0, base=1.0) for attempt in (1, 2, 3)] == [1, 2, 4]
    assert backoff_seconds(1, 10.0, rand=lambda: 1.0, base=1.0) == 10


def submitted_message(store: InMemoryStore, **extra: object):
    _, deps = send(store, command(1, **extra))
    asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
    [message] = store.messages.values()
    return message


def _refuse() -> None:
    raise RuntimeError("SQS unavailable")


def _stored_inbound(sms: InboundSms) -> StoredInbound:
    return StoredInbound(
        inbound_id=new_id(),
        account_id="7",
        upstream=sms.upstream,
        upstream_message_id=sms.upstream_message_id,
        msisdn="+2348030000000",
        to=sms.to,
        text=sms.text,
        session_id="s",
        received_at=sms.received_at,
    )


def callback(token: str = "s3cret") -> CallbackRequest:
    return CallbackRequest(method="POST", url="https://gw/callbacks/fake/dlr", headers={"x-token": token})


def report(message, status: MessageStatus, by_ref: bool = True) -> DeliveryReport:
    return DeliveryReport(
        upstream="fake",
        upstream_message_id=None if by_ref else message.upstream_message_id,
        client_ref=message.key.to_ref() if by_ref else None,
        status=status,
        reported_at="2026-01-02T23:50:40.000000Z",
    )


class TestDeliveryReports:
    def test_a_dlr_moves_the_message_forward_and_a_late_or_duplicate_one_changes_nothing(self, store):
        message = submitted_message(store, delivery_report=DeliveryReportMode.YES)
        provider, changes = FakeProvider(), []
        deps = DeliveryDependencies(messages=store, accounts=store, clock=clock, on_change=changes.append)
        provider.reports = [report(message, MessageStatus.DELIVERED, by_ref=False)]
        assert receive_delivery_reports(provider, callback(), deps).applied == 1
        # A duplicate DLR, and a late "submitted", are both kept out
        provider.reports = [
            report(message, MessageStatus.DELIVERED),
            report(message, MessageStatus.SUBMITTED),
        ]
        outcome = receive_delivery_reports(provider, callback(), deps)
        assert (outcome.applied, outcome.unchanged) == (0, 2)
        current = store.messages[message.key]
        assert current.status == MessageStatus.DELIVERED
        assert current.reported_at == "2026-01-02T23:50:40.000000Z"
        assert [c.message.status for c in changes] == [MessageStatus.DELIVERED]

    def test_a_retried_final_report_announces_again_what_the_first_died_before_announcing(self, store):
        # Given a final DLR whose status write succeeded but whose announcement failed (the notify queue refused it,
        # or the function died), so the upstream, which got no answer, retries the callback
        message = submitted_message(store, delivery_report=DeliveryReportMode.YES)
        provider = FakeProvider()
        provider.reports = [report(message, MessageStatus.DELIVERED)]

        def queue_down(change):
            raise RuntimeError("the notify queue did not take it")

        with pytest.raises(RuntimeError):
            receive_delivery_reports(
                provider, callback(), DeliveryDependencies(store, store, clock, on_change=queue_down)
            )
        # When the retry comes (and with it an older intermediate report, and a conflicting final one)
        changes, repeats = [], []
        deps = DeliveryDependencies(store, store, clock, on_change=changes.append, on_repeat=repeats.append)
        provider.reports = [
            report(message, MessageStatus.DELIVERED),
            report(message, MessageStatus.SUBMITTED),
            report(message, MessageStatus.FAILED),
        ]
        outcome = receive_delivery_reports(provider, callback(), deps)
        # Then nothing changes, and the repeat of the settling report alone is announced again, under the webhook id
        # the lost announcement had (`delivered` is change 3)
        assert (outcome.applied, outcome.unchanged, changes) == (0, 3, [])
        assert [dlr_notification(change)["id"] for change in repeats] == [f"dlr_{message.message_id}_3"]
        assert [dlr_notification(change)["payload"]["status"] for change in repeats] == ["delivered"]
        assert store.messages[message.key].status == MessageStatus.DELIVERED

    @staticmethod
    def final_report(store: InMemoryStore) -> tuple[Message, FakeProvider]:
        """A submitted message that asked for delivery reports, and an upstream that reports it delivered."""
        message = submitted_message(store, delivery_report=DeliveryReportMode.YES)
        provider = FakeProvider()
        provider.reports = [report(message, MessageStatus.DELIVERED)]
        return message, provider

    @staticmethod
    def announcing(store: InMemoryStore, queued: list[dict], publish=None) -> DeliveryDependencies:
        """The webhook function's wiring: each change, and each repeat of a settling report, through announce_change
        into `queued` (or `publish`)."""
        from sms_gateway.logic.delivery import announce_change

        def announce(change):
            announce_change(change, publish or queued.extend, store, clock=clock)

        return DeliveryDependencies(store, store, clock, on_change=announce, on_repeat=announce)

    def test_a_first_post_that_died_before_queueing_its_report_is_announced_by_the_upstream_s_retry(self, store):
        # Given a final DLR whose function died between its status write and its announcement (nothing marked)
        message, provider = self.final_report(store)
        receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
        queued: list[dict] = []
        deps = self.announcing(store, queued)
        # When the upstream, which got no answer, posts it again, and then again (its second answer lost too)
        receive_delivery_reports(provider, callback(), deps)
        receive_delivery_reports(provider, callback(), deps)
        # Then the first repeat queues the report the first post never did, and the second queues nothing more
        assert [(n["id"], n["payload"]["status"]) for n in queued] == [(f"dlr_{message.message_id}_3", "delivered")]
        assert store.messages[message.key].announced == 3

    def test_a_final_report_queued_writes_nothing_more_and_only_its_first_repeat_queues_it_again(self, store):
        # Given a message that asked for delivery reports
        message, provider = self.final_report(store)
        queued: list[dict] = []
        deps = self.announcing(store, queued)
        # When its final DLR comes: queued, and nothing written but its status (the repeat pays, not every report)
        receive_delivery_reports(provider, callback(), deps)
        settled = store.messages[message.key]
        assert (settled.status, settled.announced, settled.announce_pending) == (MessageStatus.DELIVERED, None, None)
        assert len(queued) == 1
        # When the upstream posts it again (its answer lost), and again, and again
        for _ in range(3):
            receive_delivery_reports(provider, callback(), deps)
        # Then the first repeat claims it and queues it once more, under the same webhook id (the client drops it),
        # and the later ones find it claimed and queue nothing
        assert [(n["id"], n["payload"]["status"]) for n in queued] == [(f"dlr_{message.message_id}_3", "delivered")] * 2
        assert store.messages[message.key].announced == 3

    def test_a_repeat_whose_queueing_fails_after_its_claim_is_left_for_the_sweeper_and_the_next_retry(self, store):
        # Given a final DLR announced at once
        message, provider = self.final_report(store)
        queued: list[dict] = []
        receive_delivery_reports(provider, callback(), self.announcing(store, queued))

        def refused(notifications):
            raise RuntimeError("the notify queue did not take it")

        # When its repeat claims the announcement but the notify queue refuses it
        with pytest.raises(RuntimeError):
            receive_delivery_reports(provider, callback(), self.announcing(store, queued, publish=refused))
        # Then the callback fails, and the message is marked for the sweeper (due in minutes), claim or no claim
        assert store.messages[message.key].announce_pending == 3
        assert message.key in store.report_sweep_at
        # And the upstream's retry of the failed callback queues it, and clears the mark: no sweep repeats it
        receive_delivery_reports(provider, callback(), self.announcing(store, queued))
        assert [n["id"] for n in queued] == [f"dlr_{message.message_id}_3"] * 2
        assert store.messages[message.key].announce_pending is None
        assert message.key not in store.report_sweep_at
        # And a repeat after that queues nothing
        receive_delivery_reports(provider, callback(), self.announcing(store, queued))
        assert len(queued) == 2

    def test_a_final_failure_refunds_the_message(self, store):
        message = submitted_message(store)
        provider = FakeProvider()
        provider.reports = [report(message, MessageStatus.FAILED)]
        deps = DeliveryDependencies(messages=store, accounts=store, clock=clock)
        receive_delivery_reports(provider, callback(), deps)
        assert store.accounts["7"].credits == 1000
        # A second FAILED for the same message does not refund twice
        receive_delivery_reports(provider, callback(), deps)
        assert store.accounts["7"].credits == 1000

    def test_a_report_from_an_upstream_that_did_not_carry_the_message_changes_nothing(self, store):
        # Given a message the upstream "fake" took
        message = submitted_message(store, delivery_report=DeliveryReportMode.YES)
        credits = store.accounts["7"].credits
        # When another upstream's callback (its own token: valid for its own reports) names it by our reference
        other, changes = FakeProvider(), []
        forged = report(message, MessageStatus.FAILED).model_copy(update={"upstream": "other"})
        other.reports = [forged, forged.model_copy(update={"status": MessageStatus.DELIVERED})]
        outcome = receive_delivery_reports(other, callback(), DeliveryDependencies(store, store, clock, changes.append))
        # Then neither report applies: the message stays submitted, its credits stay spent, nothing is announced
        assert (outcome.applied, outcome.unmatched, changes) == (0, 2, [])
        assert store.messages[message.key].status == MessageStatus.SUBMITTED
        assert store.accounts["7"].credits == credits
        # And the upstream that carried it still settles it
        provider = FakeProvider()
        provider.reports = [report(message, MessageStatus.DELIVERED)]
        assert receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock)).applied == 1

    def test_an_unverified_callback_is_refused_and_changes_nothing(self, store):
        message = submitted_message(store)
        provider = FakeProvider()
        provider.reports = [report(message, MessageStatus.DELIVERED)]
        with pytest.raises(Unauthorized):
            receive_delivery_reports(provider, callback("forged"), DeliveryDependencies(store, store, clock))
        assert store.messages[message.key].status == MessageStatus.SUBMITTED


class TestFinishingASendThatDied:
    """A send whose request died after storing its batch (and reserving its credits) is finished by a retry that
    takes its idempotency key over: accept_send with a resumed claim."""

    def died_after_storing(self, store: InMemoryStore, count: int, kept: int) -> tuple[Batch, SendCommand]:
        cmd = command(count)
        batch, _ = send(store, cmd)
        for key in [k for k, m in store.messages.items() if m.reference_id == batch.reference_id][kept:]:
            del store.messages[key]  # never written
        return batch, cmd

    def resume(self, store: InMemoryStore, cmd: SendCommand, batch: Batch, queue: RecordingQueue):
        deps = SendDependencies(
            accounts=store, messages=store, dispatch_queue=queue, scheduler=RecordingScheduler(), prices=store
        )
        claim = KeyClaim(reference_id=batch.reference_id, resumed=True)
        return accept_send(store.accounts["7"], cmd, deps, now=NOW, claim=claim)

    def test_the_messages_it_did_not_store_are_added_and_every_message_is_queued_charged_once(self, store):
        batch, cmd = self.died_after_storing(store, 3, kept=2)
        credits = store.accounts["7"].credits
        queue = RecordingQueue()
        accepted = self.resume(store, cmd, batch, queue)
        assert accepted.batch.reference_id == batch.reference_id
        mine = [m for m in store.messages.values() if m.reference_id == batch.reference_id]
        assert sorted(m.msisdn for m in mine) == sorted(r.msisdn for r in cmd.recipients)
        assert sorted(i for c in queue.commands for i in c.message_ids) == sorted(m.message_id for m in mine)
        assert store.accounts["7"].credits == credits
        assert len(store.batches) == 1

    def test_the_messages_it_adds_get_the_ids_the_first_request_would_have_given_them(self, store):
        # Given a send of three that died after storing its first message
        batch, cmd = self.died_after_storing(store, 3, kept=1)
        # When a retry finishes it
        self.resume(store, cmd, batch, RecordingQueue())
        # Then every message has the id of its recipient's place in the request, after the batch's own
        mine = {m.msisdn: m.message_id for m in store.messages.values() if m.reference_id == batch.reference_id}
        assert mine == {r.msisdn: batch.reference_id + 1 + i for i, r in enumerate(cmd.recipients)}

    def test_a_price_change_meanwhile_moves_only_the_difference_for_the_messages_added(self, store):
        batch, cmd = self.died_after_storing(store, 3, kept=2)
        credits = store.accounts["7"].credits
        price = store.prices.per_part(cmd.route_tier, None)
        store.prices = store.prices.with_price(cmd.route_tier, "*", price + 4)
        self.resume(store, cmd, batch, RecordingQueue())
        assert store.accounts["7"].credits == credits - 4

    def test_a_retry_of_a_send_that_failed_and_was_refunded_is_a_new_send(self, store):
        batch, cmd = self.died_after_storing(store, 1, kept=1)
        assert store.set_batch_status("7", batch.reference_id, MessageStatus.FAILED)
        accepted = self.resume(store, cmd, batch, RecordingQueue())
        assert accepted.batch.reference_id != batch.reference_id
        assert len(store.batches) == 2
        # And the undone batch links to the new one, so a further retry under the key finishes that send
        assert store.batches[("7", batch.reference_id)].superseded_by == accepted.batch.reference_id
        again = self.resume(store, cmd, batch, RecordingQueue())
        assert again.batch.reference_id == accepted.batch.reference_id
        assert len(store.batches) == 2


class TestScheduledRelease:
    @pytest.mark.parametrize("ahead", [SCHEDULE_THRESHOLD + timedelta(seconds=1), timedelta(seconds=45)])
    def test_a_send_at_seconds_ahead_past_the_clock_skew_tolerance_is_scheduled(self, store, ahead):
        # When a send's send_at is `ahead` of our clock, past the tolerance of a client's clock a little ahead of ours
        scheduler = RecordingScheduler()
        batch, deps = send(store, command(1, send_at=NOW + ahead), scheduler=scheduler)
        # Then it is scheduled, not queued (Scheduler fires it up to a minute or two late, never before its time)
        assert batch.status == MessageStatus.SCHEDULED
        assert len(scheduler.scheduled) == 1
        assert deps.dispatch_queue.commands == []

    def test_a_schedule_that_fires_twice_releases_once(self, store):
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        queue = RecordingQueue()
        first = release(store, "7", batch.reference_id, queue)
        second = release(store, "7", batch.reference_id, queue)
        assert (first, second) == (True, False)
        # The second cannot tell a finished release from one that died before queueing, so it queues the messages
        # still queued again: the same records, which the FIFO queue drops by deduplication id (and which the
        # dispatcher's claims would make harmless).
        assert [len(c.message_ids) for c in queue.commands] == [3, 3]
        assert queue.commands[0] == queue.commands[1]
        assert all(m.status == MessageStatus.QUEUED for m in store.messages.values())

    @pytest.mark.parametrize("in_order", [True, False])
    def test_a_scheduled_single_send_takes_the_lane_the_account_s_setting_gives_a_single_send(self, store, in_order):
        # Given an account whose single sends keep their order (the default) or need none
        store.accounts["7"] = store.accounts["7"].model_copy(update={"single_sends_in_order": in_order})
        # And the lane a single send sent now takes
        now_queue = RecordingQueue()
        send(store, command(1), queue=now_queue)
        # When the same single send is scheduled and its schedule fires
        batch, _ = send(store, command(1, send_at=NOW + timedelta(hours=2)))
        queue = RecordingQueue()
        assert release(store, "7", batch.reference_id, queue)
        # Then it is queued in the same kind of lane
        assert [c.in_order for c in queue.commands] == [c.in_order for c in now_queue.commands] == [in_order]

    def test_a_batch_scheduled_from_a_sender_the_operator_removed_since_is_failed_and_refunded_not_queued(self, store):
        # Given a batch from 48974 to three numbers scheduled two hours ahead, with delivery reports
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2), delivery_report=DeliveryReportMode.YES))
        assert store.accounts["7"].credits == 997
        # When the operator removes 48974 from the account, and then the schedule fires (twice)
        store.accounts["7"] = store.accounts["7"].model_copy(update={"senders": ("CINEMA",)})
        queue, announced = RecordingQueue(), []
        assert release(store, "7", batch.reference_id, queue, announce=announced.extend)
        release(store, "7", batch.reference_id, queue, announce=announced.extend)
        # Then nothing is queued: each message is failed sender_removed, refunded once, and reported to the client
        assert queue.commands == []
        assert {(m.status, m.error_code) for m in store.messages.values()} == {(MessageStatus.FAILED, "sender_removed")}
        assert store.accounts["7"].credits == 1000
        assert {n["payload"]["error_code"] for n in notifications_of(announced)} == {"sender_removed"}

    def test_a_duplicate_firing_never_fails_or_refunds_a_message_the_first_firing_let_out(self, store, monkeypatch):
        from sms_gateway.logic import scheduled
        from sms_gateway.logic.batches import all_messages

        # Given a batch of two from 48974 scheduled two hours ahead, with delivery reports
        batch, _ = send(store, command(2, send_at=NOW + timedelta(hours=2), delivery_report=DeliveryReportMode.YES))
        paid = store.accounts["7"].credits
        # And Scheduler invokes the release twice at once (at-least-once): the second invocation reads the messages
        # (still scheduled) while the first, which read the account before the operator removed 48974, releases them
        read_by_second = list(all_messages(store, "7", batch.reference_id))
        assert release(store, "7", batch.reference_id, RecordingQueue())
        # And a dispatcher submits one of them to its upstream
        [first, second] = sorted(store.messages.values(), key=lambda m: m.message_id)
        store.claim_for_dispatch(first.key, now=NOW, lease_seconds=120, upstream="simulator")
        assert store.transition(first.key, MessageStatus.SUBMITTED, now=NOW, upstream="simulator").changed
        # And the operator removes 48974 from the account, which the second invocation's account read sees
        store.accounts["7"] = store.accounts["7"].model_copy(update={"senders": ("CINEMA",)})
        monkeypatch.setattr(scheduled, "all_messages", lambda *args: iter(read_by_second))
        # When the second invocation goes on with what it read
        announced: list[StatusChange] = []
        release(store, "7", batch.reference_id, RecordingQueue(), announce=announced.extend)
        # Then the message that went out stays submitted and charged, and the client is not told it failed
        assert store.messages[first.key].status == MessageStatus.SUBMITTED
        assert first.message_id not in {change.message.message_id for change in announced}
        assert store.accounts["7"].credits - paid <= second.price, "the submitted message was refunded"

    def test_a_batch_scheduled_from_a_sender_just_added_is_queued_when_a_lagging_replica_lacks_it(self, store):
        # Given the operator adds CINEMA to the account, and a batch from it is scheduled (the api read it fresh)
        before = store.accounts["7"]
        store.accounts["7"] = before.model_copy(update={"senders": (*before.senders, "CINEMA")})
        batch, _ = send(store, command(2, send_at=NOW + timedelta(hours=2)).model_copy(update={"sender": "CINEMA"}))
        # And a replica that lags still answers with the account as it was before (an eventually consistent read)
        fresh = store.get_account

        def lagging(account_id: str, *, consistent: bool = False) -> Account | None:
            return fresh(account_id) if consistent else before

        store.get_account = lagging  # type: ignore[method-assign]
        # When the schedule fires
        queue = RecordingQueue()
        assert release(store, "7", batch.reference_id, queue)
        # Then its messages are queued, not failed sender_removed and refunded
        assert {m.status for m in store.messages.values()} == {MessageStatus.QUEUED}
        assert sum(len(c.message_ids) for c in queue.commands) == 2

    def test_a_cancelled_batch_stays_cancelled(self, store):
        batch, _ = send(store, command(1, send_at=NOW + timedelta(hours=2)))
        assert store.set_batch_status("7", batch.reference_id, MessageStatus.CANCELLED)
        queue = RecordingQueue()
        assert not release(store, "7", batch.reference_id, queue)
        assert queue.commands == []

    def cancel(self, store: InMemoryStore, reference_id: int) -> int:
        _, refunded = cancel_batch(
            messages=store,
            scheduler=RecordingScheduler(),
            account_id="7",
            reference_id=reference_id,
            now=NOW,
        )
        return refunded

    def test_a_cancel_while_the_release_queues_the_messages_is_refused_and_cancels_nothing(self, store):
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        credits = store.accounts["7"].credits
        refused: list[Exception] = []

        class CancelledWhileQueueing(RecordingQueue):
            def enqueue(this, commands):
                # A dispatcher may claim these messages from now on: a cancel must not refund them under it.
                try:
                    self.cancel(store, batch.reference_id)
                except Conflict as error:
                    refused.append(error)
                super().enqueue(commands)

        queue = CancelledWhileQueueing()
        assert release(store, "7", batch.reference_id, queue)
        assert "this one is queued" in str(refused[0])
        assert [len(c.message_ids) for c in queue.commands] == [3]
        assert all(m.status == MessageStatus.QUEUED for m in store.messages.values())
        assert store.batches[("7", batch.reference_id)].status == MessageStatus.QUEUED
        assert store.accounts["7"].credits == credits

    def test_a_cancel_between_the_releases_read_and_its_write_wins_and_nothing_is_released(self, store):
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        paid = store.accounts["7"].credits
        read = store.get_batch

        def read_then_cancelled(account_id, reference_id):
            found = read(account_id, reference_id)
            if store.get_batch is read_then_cancelled:
                store.get_batch = read  # the cancel reads the batch too
                self.cancel(store, reference_id)
            return found

        store.get_batch = read_then_cancelled
        queue = RecordingQueue()
        assert not release(store, "7", batch.reference_id, queue)
        assert queue.commands == []
        assert all(m.status == MessageStatus.CANCELLED for m in store.messages.values())
        assert store.batches[("7", batch.reference_id)].status == MessageStatus.CANCELLED
        assert store.accounts["7"].credits > paid

    def test_of_two_cancels_racing_the_one_that_loses_the_batch_write_answers_as_a_repeated_cancel(self, store):
        # Given a scheduled batch of three, and a cancel that reads it scheduled while another cancel moves it
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        charged = store.accounts["7"].credits
        read = store.get_batch
        winner: list[int] = []

        def read_then_cancelled_by_another(account_id, reference_id):
            found = read(account_id, reference_id)
            if not winner:
                store.get_batch = read
                winner.append(self.cancel(store, reference_id))
                store.get_batch = read_then_cancelled_by_another
            return found

        store.get_batch = read_then_cancelled_by_another
        # When the losing cancel goes on
        with pytest.raises(AlreadyCancelled):
            self.cancel(store, batch.reference_id)
        # Then it is told what a repeated cancel is told (each dialect answers it as cancelled), not 409, and the
        # credits came back once
        assert winner == [3]
        assert store.accounts["7"].credits == charged + 3

    def test_of_two_cancels_racing_only_one_answers_the_refund(self, store):
        # Given a scheduled batch of three, and a second cancel that comes in while the first, having moved the batch,
        # has not yet cancelled its messages (the second finds the batch cancelled and finishes the cancel itself)
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        charged = store.accounts["7"].credits
        moved = store.set_batch_status
        second: list[int] = []

        def moved_then_cancelled_again(*args, **kwargs):
            changed = moved(*args, **kwargs)
            if changed and not second:
                try:
                    second.append(self.cancel(store, batch.reference_id))
                except AlreadyCancelled:
                    second.append(0)
            return changed

        store.set_batch_status = moved_then_cancelled_again  # type: ignore[method-assign]
        # When the first cancel goes on
        first = self.cancel(store, batch.reference_id)
        store.set_batch_status = moved  # type: ignore[method-assign]
        # Then the credits came back once, and the two answers together say so: one answers 3, the other 0
        assert store.accounts["7"].credits == charged + 3
        assert sorted([first, *second]) == [0, 3]

    def cancel_as_the_schedule_fires(self, store: InMemoryStore, batch: Batch) -> int:
        """The client's cancel, with the batch's schedule firing right after the cancel's batch write: the firing
        finds the batch cancelled and finishes the cancel itself (finish_cancels) before the cancel goes on."""
        moved = store.set_batch_status
        fired: list[bool] = []

        def cancelled_then_fired(*args, **kwargs):
            changed = moved(*args, **kwargs)
            if changed and not fired:
                fired.append(release(store, "7", batch.reference_id, RecordingQueue(), finish_cancels=True))
            return changed

        store.set_batch_status = cancelled_then_fired  # type: ignore[method-assign]
        refunded = self.cancel(store, batch.reference_id)
        store.set_batch_status = moved  # type: ignore[method-assign]
        assert fired == [False]
        return refunded

    def test_a_cancel_that_wins_the_race_answers_what_the_schedule_refunded_for_it_and_nothing_moves_twice(self, store):
        # Given a scheduled batch of three, one of whose messages was failed (opted out) and refunded before
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        first = min(store.messages.values(), key=lambda m: m.message_id)
        store.move_and_refund([first], MessageStatus.FAILED, now=NOW, error_code="opted_out")
        refunded_before = store.accounts["7"].credits
        # When the client cancels it as its schedule fires
        refunded = self.cancel_as_the_schedule_fires(store, batch)
        # Then the cancel answers the two it cancelled, refunded by the firing, and those came back once
        assert refunded == 2
        assert store.accounts["7"].credits == refunded_before + 2
        assert sorted(str(m.status) for m in store.messages.values()) == ["cancelled", "cancelled", "failed"]
        # And a repeated cancel refunds and answers nothing more
        with pytest.raises(AlreadyCancelled):
            self.cancel(store, batch.reference_id)
        assert store.accounts["7"].credits == refunded_before + 2

    def test_a_cancel_that_wins_the_race_answers_all_a_send_that_died_while_storing_took(self, store):
        # Given a scheduled send to 150 killed after storing 100 (150 credits taken)
        batch = self.scheduled_send_killed_while_storing(store)
        # When the client cancels it as its schedule fires
        refunded = self.cancel_as_the_schedule_fires(store, batch)
        # Then it answers all 150 given back (50 never stored, 100 cancelled), each credit once
        assert refunded == 150
        assert store.accounts["7"].credits == 1000

    def test_a_cancel_that_died_after_the_batch_write_is_finished_by_the_next_and_refunds_once(self, store):
        # Given a scheduled batch of three whose cancel died once the batch was written (refunding its messages)
        scheduler = RecordingScheduler()
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)), scheduler=scheduler)
        charged = store.accounts["7"].credits
        refund = store.move_and_refund

        def dies_refunding(*args, **kwargs):
            raise RuntimeError("the container died here")

        store.move_and_refund = dies_refunding
        with pytest.raises(RuntimeError):
            cancel_batch(messages=store, scheduler=scheduler, account_id="7", reference_id=batch.reference_id, now=NOW)
        store.move_and_refund = refund
        assert store.batches[("7", batch.reference_id)].status == MessageStatus.CANCELLED
        assert all(m.status == MessageStatus.SCHEDULED for m in store.messages.values())
        # (its schedule is left, deleted only once the refund is done: its firing would finish the cancel too)
        assert scheduler.scheduled != {}
        # When the client cancels again
        again, refunded = cancel_batch(
            messages=store,
            scheduler=scheduler,
            account_id="7",
            reference_id=batch.reference_id,
            now=NOW,
        )
        # Then the cancel is finished, as the first would have: schedule gone, messages cancelled, credits back
        assert (again.status, refunded) == (MessageStatus.CANCELLED, 3)
        assert scheduler.scheduled == {}
        assert all(m.status == MessageStatus.CANCELLED for m in store.messages.values())
        assert store.accounts["7"].credits == charged + 3
        # And once it is finished, another cancel finds nothing left to do and refunds nothing more
        with pytest.raises(AlreadyCancelled):
            self.cancel(store, batch.reference_id)
        assert store.accounts["7"].credits == charged + 3

    def test_a_schedule_firing_for_a_batch_whose_cancel_died_finishes_the_cancel_and_releases_nothing(self, store):
        # Given a scheduled batch moved to cancelled by a cancel that died before anything else (schedule left)
        batch, _ = send(store, command(2, send_at=NOW + timedelta(hours=2)))
        charged = store.accounts["7"].credits
        assert store.set_batch_status("7", batch.reference_id, MessageStatus.CANCELLED)
        # When its schedule fires
        queue = RecordingQueue()
        released = release(store, "7", batch.reference_id, queue, finish_cancels=True)
        # Then nothing is released, and the messages are cancelled and refunded once
        assert not released and queue.commands == []
        assert all(m.status == MessageStatus.CANCELLED for m in store.messages.values())
        assert store.accounts["7"].credits == charged + 2
        release(store, "7", batch.reference_id, queue, finish_cancels=True)
        assert store.accounts["7"].credits == charged + 2

    def test_a_schedule_released_days_after_its_time_does_not_send_the_message_days_late(self, store):
        # Given a single send scheduled for NOW + 2 h, whose schedule could not invoke scheduled_dispatch (its release
        # went to the schedule DLQ: docs/runbook.md), replayed by the operator three days later
        batch, _ = send(store, command(1, send_at=NOW + timedelta(hours=2)))
        paid = store.accounts["7"].credits
        days_late = NOW + timedelta(hours=2, days=3)
        queue = RecordingQueue()
        assert release_scheduled_batch(
            "7", batch.reference_id, messages=store, accounts=store, opt_outs=None, queue=queue,
            clock=lambda: days_late,
        )  # fmt: skip
        # When a dispatcher gets its record at once
        provider = FakeProvider()
        late = replace(dispatch_deps(store, provider), clock=lambda: days_late + timedelta(seconds=5))
        for record in queue.commands:
            asyncio.run(dispatch(record, late))
        # Then it is not sent three days after its time (a queued message is never sent more than its 24 h
        # validity late: docs/dispatch.md "Expire what is too late"): expired validity_period_ended and refunded
        assert provider.submits == []
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.EXPIRED, "validity_period_ended")
        assert store.accounts["7"].credits == paid + 1

    def test_a_schedule_released_late_within_its_validity_expires_when_the_validity_from_its_send_time_ends(
        self, store
    ):
        # Given a single send scheduled for NOW + 2 h (its delivery reports asked for), released 23 hours late
        batch, _ = send(store, command(1, send_at=NOW + timedelta(hours=2), delivery_report=DeliveryReportMode.YES))
        paid = store.accounts["7"].credits
        released_at = NOW + timedelta(hours=25)
        queue, announced = RecordingQueue(), []
        assert release_scheduled_batch(
            "7", batch.reference_id, messages=store, accounts=store, opt_outs=None, queue=queue,
            clock=lambda: released_at, announce=announced.extend,
        )  # fmt: skip
        assert len(queue.commands) == 1 and announced == []
        # When its record reaches a dispatcher two hours later: 25 h after its send time, 2 h after it was queued
        provider = FakeProvider()
        late = replace(dispatch_deps(store, provider), clock=lambda: released_at + timedelta(hours=2))
        asyncio.run(dispatch(queue.commands[0], late))
        # Then its validity counted from its send time, not from its release: expired and refunded, not sent
        assert provider.submits == []
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.EXPIRED, "validity_period_ended")
        assert store.accounts["7"].credits == paid + 1

    def test_a_schedule_released_after_its_validity_reports_its_messages_expired(self, store):
        # Given a scheduled send that asked for delivery reports, released three days after its send time
        batch, _ = send(store, command(2, send_at=NOW + timedelta(hours=2), delivery_report=DeliveryReportMode.YES))
        announced: list[StatusChange] = []
        release_scheduled_batch(
            "7", batch.reference_id, messages=store, accounts=store, opt_outs=None, queue=RecordingQueue(),
            clock=lambda: NOW + timedelta(days=3), announce=announced.extend,
        )  # fmt: skip
        # Then the client is told each message expired, as for any expiry
        assert (
            sorted((str(c.message.status), c.message.error_code) for c in announced)
            == [("expired", "validity_period_ended")] * 2
        )

    def test_a_cancel_gives_back_all_a_scheduled_send_took_even_when_its_send_died_while_storing(self, store):
        # Given a scheduled send to 150 whose api container was killed outright (out of memory) after storing its
        # first 100 messages: the batch was written with its 150 credits taken (docs/dispatch.md, "A send's
        # credits": "the batch now says what it took")
        batch = self.scheduled_send_killed_while_storing(store)
        assert (batch.status, batch.cost, len(store.messages)) == (MessageStatus.SCHEDULED, 150, 100)
        assert store.accounts["7"].credits == 850
        # When the account cancels the batch it sees scheduled (the portal's Messages page lists it)
        _, refunded = cancel_batch(
            messages=store, scheduler=RecordingScheduler(), account_id="7", reference_id=batch.reference_id, now=NOW
        )
        # Then nothing of it is sent, and everything it took comes back, as the cancel promises
        assert refunded == 150
        assert store.accounts["7"].credits == 1000

    def scheduled_send_killed_while_storing(self, store: InMemoryStore) -> Batch:
        """A scheduled send to 150 whose container died after storing its first 100 messages (150 credits taken)."""
        stored = store.add_messages

        def killed_after_the_first_chunk(batch, messages):
            if len(store.messages) >= 100:
                raise KeyboardInterrupt
            stored(batch, messages)

        store.add_messages = killed_after_the_first_chunk
        with pytest.raises(KeyboardInterrupt):
            send(store, command(150, send_at=NOW + timedelta(hours=2)))
        store.add_messages = stored
        [batch] = store.batches.values()
        return batch

    def test_a_cancel_repeated_or_finished_by_the_schedule_gives_back_a_died_send_s_cost_once(self, store):
        # Given a scheduled send killed while storing, whose first cancel died after giving back the unstored
        # messages' credits, before cancelling the stored ones
        batch = self.scheduled_send_killed_while_storing(store)
        moves = store.move_and_refund

        def died(*args, **kwargs):
            raise RuntimeError("the cancel's container died")

        store.move_and_refund = died
        with pytest.raises(RuntimeError):
            cancel(store, batch)
        store.move_and_refund = moves
        assert store.accounts["7"].credits == 900
        # When the client cancels again, the schedule fires, and the client cancels once more
        _, refunded = cancel_batch(
            messages=store, scheduler=RecordingScheduler(), account_id="7", reference_id=batch.reference_id, now=NOW
        )
        assert not release(store, "7", batch.reference_id, RecordingQueue(), finish_cancels=True)
        with pytest.raises(AlreadyCancelled):
            cancel(store, batch)
        # Then what the send took came back once: the rest by the second cancel, nothing after; and the second
        # cancel, the first answered, answers all the cancel gave back (the dead one's 50 too)
        assert refunded == 150
        assert store.accounts["7"].credits == 1000

    def test_messages_a_retried_send_stores_after_a_cancel_gave_their_credits_back_are_not_refunded_twice(self, store):
        # Given a scheduled send killed while storing, cancelled (all 150 credits back), after which the send's
        # retry under its key, which read the batch still scheduled a moment before, stores its last 50 messages
        batch = self.scheduled_send_killed_while_storing(store)
        cancel(store, batch)
        assert store.accounts["7"].credits == 1000
        first = next(iter(store.messages.values())).model_copy(update={"status": MessageStatus.SCHEDULED})
        late = [
            first.model_copy(update={"message_id": message_id_at(batch.reference_id, at), "msisdn": f"+2547{at:08d}"})
            for at in range(100, 150)
        ]
        store.add_messages(batch, late)
        # When the schedule the retry made fires
        assert not release(store, "7", batch.reference_id, RecordingQueue(), finish_cancels=True)
        # Then those 50 are cancelled, and the account has what it had: not 50 credits more
        assert {m.status for m in store.messages.values()} == {MessageStatus.CANCELLED}
        assert store.accounts["7"].credits == 1000

    def test_a_retry_after_a_release_died_before_queueing_queues_the_messages(self, store):
        batch, _ = send(store, command(3, send_at=NOW + timedelta(hours=2)))
        with pytest.raises(RuntimeError):
            release(store, "7", batch.reference_id, RecordingQueue(fail=True))
        queue = RecordingQueue()
        release(store, "7", batch.reference_id, queue)
        assert sorted(i for c in queue.commands for i in c.message_ids) == sorted(
            m.message_id for m in store.messages.values()
        )
        assert all(m.status == MessageStatus.QUEUED for m in store.messages.values())


class TestInbound:
    def sms(self, to: str = "48974", upstream_id: str | None = "in-1") -> InboundSms:
        return InboundSms(
            upstream="fake",
            upstream_message_id=upstream_id,
            msisdn="2348030000000",
            to=to,
            text="STOP",
            received_at="2026-01-02T23:50:37.000000Z",
        )

    def deps(self, store: InMemoryStore, published: list) -> InboundDependencies:
        return InboundDependencies(
            accounts=store, inbox=store, publish=published.append, clock=clock, routes=fake_routes
        )

    def test_an_inbound_sms_is_routed_to_the_owner_of_the_number_stored_and_forwarded_in_the_seed_format(self, store):
        provider, published = FakeProvider(), []
        provider.inbound = self.sms()
        outcome = receive_inbound(provider, callback(), self.deps(store, published))
        assert outcome.routed and outcome.stored
        [notification] = published
        assert notification["account_id"] == "7"
        assert notification["kind"] == "inbound"
        payload = notification["payload"]
        assert list(payload) == ["type", "telco", "from", "to", "message", "session_id", "sent_date", "ref_id"]
        assert payload["type"] == "two-way sms"
        assert payload["telco"] == "mtn"
        assert (payload["from"], payload["to"], payload["message"]) == ("2348030000000", "48974", "STOP")
        assert payload["sent_date"] == "2026-01-02T23:50:37.000000Z"

    def test_a_repeated_callback_whose_first_queueing_failed_is_stored_once_and_requeued_under_the_same_webhook_id(
        self, store
    ):
        # Given an inbound SMS whose first callback stored it but could not queue its notification (the notify
        # queue refused it: the callback failed, the not-queued mark stayed)
        provider, published = FakeProvider(), []
        provider.inbound = self.sms()

        def refused(_notification: dict) -> None:
            raise RuntimeError("notify queue unavailable")

        failing = InboundDependencies(accounts=store, inbox=store, publish=refused, clock=clock, routes=fake_routes)
        with pytest.raises(RuntimeError):
            receive_inbound(provider, callback(), failing)
        [first] = store.inbox.values()
        assert store.inbound_sweep_at
        # When its upstream posts the callback again
        again = receive_inbound(provider, callback(), self.deps(store, published))
        # Then it is stored once, the stored notification is queued now, unchanged (its webhook-id too), and the
        # mark is cleared so a third repeat, or the sweeper, does not queue it again
        assert again.routed and not again.stored
        assert len(store.inbox) == 1
        assert again.inbound == first
        assert published == [inbound_notification(first)]
        assert store.inbound_sweep_at == {}
        receive_inbound(provider, callback(), self.deps(store, published))
        assert len(published) == 1

    def test_a_repeated_callback_of_an_sms_already_queued_is_not_forwarded_again(self, store):
        # Given an inbound SMS whose callback stored it and queued its notification (the not-queued mark cleared)
        provider, published = FakeProvider(), []
        provider.inbound = self.sms()
        receive_inbound(provider, callback(), self.deps(store, published))
        assert len(published) == 1 and store.inbound_sweep_at == {}
        # When the upstream posts the same callback again (its answer timed out on a cold start, say)
        receive_inbound(provider, callback(), self.deps(store, published))
        # Then it is stored, listed and forwarded once (docs/dialects/9bits.md, "Inbox"): the client built on the
        # seeds' "Receive SMS" (which has no id) does not get the same reply twice
        assert len(store.inbox) == 1
        assert len(published) == 1

    def test_an_sms_to_a_number_nobody_owns_is_acknowledged_but_not_forwarded(self, store):
        provider, published = FakeProvider(), []
        provider.inbound = self.sms(to="99999")
        outcome = receive_inbound(provider, callback(), self.deps(store, published))
        assert not outcome.routed
        assert published == []

    def test_an_sms_from_an_upstream_the_number_is_not_bound_to_is_acknowledged_and_dropped(self, store):
        # Given 48974, whose account's routes name only the fake upstream, and another upstream whose callbacks verify
        provider, published = FakeProvider(name="partner-kannel"), []
        provider.inbound = self.sms()
        # When it posts a STOP to 48974, even again
        outcomes = [receive_inbound(provider, callback(), self.deps(store, published)) for _ in range(2)]
        # Then it is acknowledged but not taken: nothing stored, nothing forwarded
        assert all(outcome.not_allowed and not outcome.routed and not outcome.stored for outcome in outcomes)
        assert published == []
        assert store.inbox == {}

    def test_a_numbers_inbound_upstreams_are_exactly_the_ones_set(self, store):
        # Given 48974 set to take inbound SMS from the partner's Kannel only
        store.inbound_upstreams["48974"] = ("partner-kannel",)
        partner, routed, published = FakeProvider(name="partner-kannel"), FakeProvider(), []
        partner.inbound = routed.inbound = self.sms()
        # Then the partner's SMS is taken and the routes' upstream's is not
        assert receive_inbound(partner, callback(), self.deps(store, published)).stored
        assert receive_inbound(routed, callback(), self.deps(store, published)).not_allowed
        assert len(published) == 1

    def test_an_unverified_inbound_callback_is_refused(self, store):
        provider, published = FakeProvider(), []
        provider.inbound = self.sms()
        with pytest.raises(Unauthorized):
            receive_inbound(provider, callback("forged"), self.deps(store, published))
        assert published == []
        assert store.inbox == {}

    def sweep(self, store: InMemoryStore, published: list, at: datetime) -> SweepOutcome:
        return sweep_notifications(
            SweepDependencies(inbox=store, messages=store, publish=published.extend, clock=lambda: at)
        )

    def test_an_sms_whose_notification_the_queue_refused_is_queued_by_a_sweep_once_it_is_due(self, store):
        # Given an inbound SMS whose notification the notify queue refuses: the callback fails, and its upstream
        # never posts it again (Twilio; Kannel by default)
        provider = FakeProvider()
        provider.inbound = self.sms()

        def refused(notification: dict) -> None:
            raise RuntimeError("SQS unavailable")

        deps = InboundDependencies(accounts=store, inbox=store, publish=refused, clock=clock, routes=fake_routes)
        with pytest.raises(RuntimeError, match="SQS"):
            receive_inbound(provider, callback(), deps)
        [stored] = store.inbox.values()
        # When a sweep runs before it is due (a callback may still be running), nothing is queued
        published: list = []
        assert self.sweep(store, published, NOW + timedelta(minutes=1)) == SweepOutcome(0, 0)
        assert published == []
        # Then a sweep after it is due queues its notification, as its callback would have, and clears the mark
        assert self.sweep(store, published, NOW + timedelta(minutes=3)) == SweepOutcome(1, 0)
        assert published == [inbound_notification(stored)]
        assert published[0]["id"] == f"in_{stored.inbound_id}"
        # And a later sweep queues nothing again
        assert self.sweep(store, published, NOW + timedelta(hours=1)) == SweepOutcome(0, 0)
        assert len(published) == 1

    def test_an_sms_queued_by_its_callback_is_left_alone_by_the_sweep(self, store):
        provider, published = FakeProvider(), []
        provider.inbound = self.sms()
        receive_inbound(provider, callback(), self.deps(store, published))
        assert self.sweep(store, published, NOW + timedelta(hours=1)) == SweepOutcome(0, 0)
        assert len(published) == 1

    def test_a_sweep_whose_publish_fails_keeps_the_sms_for_a_run_after_its_claim(self, store):
        # Given an SMS left unqueued by its callback
        provider = FakeProvider()
        provider.inbound = self.sms()
        store.save_inbound(_stored_inbound(provider.inbound), notify_due=NOW)
        # When a sweep's publish fails too
        with pytest.raises(SweepIncomplete):
            sweep_notifications(
                SweepDependencies(
                    inbox=store, messages=store, publish=lambda n: _refuse(), clock=lambda: NOW + timedelta(minutes=1)
                )
            )
        # Then a run while its claim lasts leaves it, and one after the claim queues it
        published: list = []
        assert self.sweep(store, published, NOW + timedelta(minutes=2)) == SweepOutcome(0, 0)
        assert self.sweep(store, published, NOW + timedelta(minutes=7)) == SweepOutcome(1, 0)

    def test_a_sweep_queues_unqueued_sms_ten_to_a_publish(self, store):
        # Given 23 inbound SMS a notify queue outage left unqueued
        for n in range(23):
            store.save_inbound(_stored_inbound(self.sms(upstream_id=f"in-{n}")), notify_due=NOW)
        # When a sweep runs
        publishes: list = []
        outcome = sweep_notifications(
            SweepDependencies(
                inbox=store, messages=store, publish=publishes.append, clock=lambda: NOW + timedelta(minutes=1)
            )
        )
        # Then it queued each once, ten to a publish (one SendMessageBatch), not one SendMessageBatch each
        assert outcome == SweepOutcome(23, 0)
        assert [len(batch) for batch in publishes] == [10, 10, 3]
        assert len({notification["id"] for batch in publishes for notification in batch}) == 23
        assert self.sweep(store, [], NOW + timedelta(hours=1)) == SweepOutcome(0, 0)


@pytest.mark.parametrize(
    ("stored", "counts", "expected"),
    [
        (MessageStatus.QUEUED, {"queued": 3}, "queued"),
        # Released, its messages not moved yet (the release moves the batch first, then each message)
        (MessageStatus.QUEUED, {"scheduled": 3}, "queued"),
        (MessageStatus.QUEUED, {"scheduled": 1, "queued": 2}, "queued"),
        (MessageStatus.QUEUED, {"scheduled": 1, "submitted": 2}, "processing"),
        (MessageStatus.QUEUED, {"queued": 1, "submitted": 2}, "processing"),
        (MessageStatus.QUEUED, {"delivered": 2, "submitted": 1}, "processing"),
        (MessageStatus.QUEUED, {"delivered": 2, "failed": 1}, "completed"),
        (MessageStatus.SCHEDULED, {"scheduled": 2}, "scheduled"),
        (MessageStatus.CANCELLED, {"cancelled": 2}, "cancelled"),
    ],
)
def test_a_batch_reads_as_the_progress_of_its_messages(store, stored, counts, expected):
    batch, _ = send(store, command(1))
    view = BatchView(batch=batch.model_copy(update={"status": stored}), counts=counts)
    assert view.status == expected


class Crash(BaseException):
    """Stands for the Lambda container being killed: nothing after it runs, no handler catches it."""


class SubmitsThenDies(FakeProvider):
    async def submit(self, request):
        await super().submit(request)
        raise Crash


def test_a_dispatcher_killed_between_submit_and_write_never_causes_a_second_submit(store):
    # Given a queued message whose dispatcher is killed right after the upstream accepted it
    _, deps = send(store, command(1))
    [record] = deps.dispatch_queue.commands
    dying = SubmitsThenDies()
    with pytest.raises(Crash):
        asyncio.run(dispatch(record, dispatch_deps(store, dying)))
    # When SQS redelivers the record, first while the dead dispatcher's claim still runs, then after it lapsed
    healthy = FakeProvider()
    soon = asyncio.run(dispatch(record, dispatch_deps(store, healthy)))
    later = replace(dispatch_deps(store, healthy), clock=lambda: NOW + timedelta(minutes=5))
    after = asyncio.run(dispatch(record, later))
    # Then the early redelivery comes back once the lease can have lapsed, rather than being consumed
    assert (soon.retry, soon.retry_after) == ([record.message_ids[0]], 120.0)
    # And the message was submitted exactly once, and is recorded as submitted, unconfirmed
    assert after.unconfirmed == 1
    assert len(dying.submits) == 1 and healthy.submits == []
    [message] = store.messages.values()
    assert (message.status, message.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
    # And the upstream's DLR, which carries our reference, still settles it
    provider = FakeProvider()
    provider.reports = [report(message, MessageStatus.DELIVERED)]
    receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
    assert store.messages[message.key].status == MessageStatus.DELIVERED


def test_a_dispatcher_that_outlived_its_lease_leaves_the_new_holders_claim_alone(store):
    # Given a queued message whose upstream is so slow that the claim's lease lapses during the submit, and a
    # redelivery of the record takes the lapsed claim over meanwhile; then the slow submit fails for now
    _, deps = send(store, command(1))
    [record] = deps.dispatch_queue.commands
    taken: list[Claim] = []

    class SlowThenDown(FakeProvider):
        async def submit(self, request):
            [key] = store.messages
            taken.append(store.claim_for_dispatch(key, now=NOW + timedelta(minutes=5), lease_seconds=120))
            raise UpstreamError("down", permanent=False)

    asyncio.run(dispatch(record, dispatch_deps(store, SlowThenDown())))
    # Then the slow dispatcher's release changes nothing of the new holder's lease (dropped, a third dispatcher could
    # claim the message while the new holder submits it: sent twice), nor counts its attempt on it
    [key] = store.messages
    assert taken[0].outcome == ClaimOutcome.ABANDONED
    assert key in store.claims and store.claim_ids[key] == taken[0].claim_id
    assert store.messages[key].submit_attempts == 1  # the takeover's count of the lapsed holder's submit


class RememberingUpstream(DeduplicatingProvider):
    """An upstream that really deduplicates: a repeat of our reference gets the first answer and puts nothing more
    on the phone (`delivered_refs` holds each reference it took once). `dies_after_submit`: the dispatcher is
    killed once this upstream has taken the message, before its answer is recorded."""

    def __init__(self, name: str, *, dies_after_submit: bool = False) -> None:
        super().__init__(name)
        self.dies_after_submit = dies_after_submit
        self.answers: dict[str, SubmitResult] = {}
        self.delivered_refs: list[str] = []

    async def submit(self, request):
        self.submits.append(request)
        if self.failure is not None:
            raise self.failure
        if request.client_ref not in self.answers:
            self.answers[request.client_ref] = SubmitResult(upstream_message_id=f"{self.name}-{len(self.answers) + 1}")
            self.delivered_refs.append(request.client_ref)
        if self.dies_after_submit:
            raise Crash
        return self.answers[request.client_ref]


class TestAMessageAbandonedMidSubmit:
    """A dispatcher killed after claiming a message, before recording the upstream's answer: whoever takes the
    lapsed claim over may ask the upstream the claim names again only if that upstream deduplicates by our
    reference (it answers a repeat with its first answer), so the message is sent, and sent once."""

    later = NOW + timedelta(minutes=5)

    def killed_mid_submit(self, store, *route: FakeProvider) -> tuple[DispatchCommand, Message]:
        _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
        [record] = deps.dispatch_queue.commands
        with pytest.raises(Crash):
            asyncio.run(dispatch(record, replace(dispatch_deps(store, route[0]), upstreams_for=lambda _: list(route))))
        [message] = store.messages.values()
        return record, message

    def redelivered(self, store, record, *route: FakeProvider, **changes) -> DispatchOutcome:
        deps = replace(dispatch_deps(store, route[0]), upstreams_for=lambda _: list(route), clock=lambda: self.later)
        return asyncio.run(dispatch(record, replace(deps, **changes)))

    def test_it_is_asked_again_of_the_deduplicating_upstream_and_goes_out_once(self, store):
        # Given a message the primary (which deduplicates) took, whose dispatcher died before recording it
        primary, fallback = RememberingUpstream("primary", dies_after_submit=True), FakeProvider("fallback")
        record, message = self.killed_mid_submit(store, primary, fallback)
        # When the record comes back after the claim lapsed
        primary.dies_after_submit = False
        outcome = self.redelivered(store, record, primary, fallback)
        # Then the primary alone is asked again, with the same reference, and answers with its first answer
        assert [s.client_ref for s in primary.submits] == [message.key.to_ref()] * 2 and fallback.submits == []
        assert primary.delivered_refs == [message.key.to_ref()]
        stored = store.messages[message.key]
        assert (outcome.submitted, outcome.unconfirmed, outcome.taken_over) == (1, 0, 1)
        assert (stored.status, stored.upstream, stored.upstream_message_id, stored.error_code) == (
            MessageStatus.SUBMITTED,
            "primary",
            "primary-1",
            None,
        )
        # And it is charged once, its dead holder's submit counted as an attempt, and no claim is left
        assert store.accounts["7"].credits == 1000 - message.price
        assert stored.submit_attempts == 1 and store.claims == {} and store.claim_upstreams == {}

    def test_one_the_dead_holder_never_reached_is_sent_by_the_next(self, store):
        # Given a dispatcher killed after claiming a message and before its submit reached the upstream
        primary = RememberingUpstream("primary")
        primary.failure = Crash()
        record, message = self.killed_mid_submit(store, primary)
        # When the record comes back after the claim lapsed
        primary.failure = None
        outcome = self.redelivered(store, record, primary)
        # Then the message goes out (once), rather than waiting out the DLR wait to be expired unsent
        assert outcome.submitted == 1 and primary.delivered_refs == [message.key.to_ref()]
        assert store.messages[message.key].upstream_message_id == "primary-1"

    def test_after_a_failover_the_claim_names_the_fallback_and_the_primary_is_never_asked_again(self, store):
        # Given a deduplicating primary that answered 503, and a fallback that cannot tell repeats, which took the
        # message just before its dispatcher died
        primary, fallback = RememberingUpstream("primary"), RememberingUpstream("fallback", dies_after_submit=True)
        fallback.deduplicates_submits = False
        primary.failure = UpstreamError("503", permanent=False, unavailable=True)
        record, message = self.killed_mid_submit(store, primary, fallback)
        assert store.claim_upstreams == {message.key: "fallback"}
        # When the record comes back after the claim lapsed, the primary healthy again
        primary.failure, fallback.dies_after_submit = None, False
        outcome = self.redelivered(store, record, primary, fallback)
        # Then neither upstream is asked again (the fallback may have it): submitted, unconfirmed, left to its DLR
        assert (len(primary.submits), len(fallback.submits), outcome.unconfirmed) == (1, 1, 1)
        assert store.messages[message.key].error_code == "submit_unconfirmed"

    def test_a_failover_whose_claim_is_no_longer_ours_is_not_made(self, store):
        # Given a message whose primary answers 503, and whose claim names another upstream by the time this
        # dispatcher would fail over (it is no longer this dispatcher's claim)
        primary, fallback = RememberingUpstream("primary"), RememberingUpstream("fallback")
        primary.failure = UpstreamError("503", permanent=False, unavailable=True)
        _, deps = send(store, command(1))
        [record] = deps.dispatch_queue.commands

        async def taken_away(request):
            store.claim_upstreams[next(iter(store.messages))] = "elsewhere"
            raise UpstreamError("503", permanent=False, unavailable=True)

        primary.submit = taken_away  # type: ignore[method-assign,assignment]
        outcome = asyncio.run(
            dispatch(record, replace(dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback]))
        )
        # Then the fallback is not offered it, and the record comes back
        assert fallback.submits == [] and outcome.needs_retry

    @pytest.mark.parametrize(
        "why",
        ["the upstream cannot tell repeats", "the upstream left the route", "no attempt left", "too late"],
    )
    def test_otherwise_it_is_recorded_submitted_unconfirmed(self, store, why):
        # Given a message the primary took, whose dispatcher died before recording it
        primary = RememberingUpstream("primary", dies_after_submit=True)
        other = FakeProvider("other")
        if why == "the upstream cannot tell repeats":
            primary.deduplicates_submits = False
        record, message = self.killed_mid_submit(store, primary)
        primary.dies_after_submit = False
        changes: dict = {}
        route: tuple[FakeProvider, ...] = (primary,)
        if why == "the upstream left the route":
            route = (other,)
        elif why == "no attempt left":
            changes["max_submit_attempts"] = 1
        elif why == "too late":
            changes["validity"] = timedelta(minutes=4)
        # When the record comes back after the claim lapsed
        outcome = self.redelivered(store, record, *route, **changes)
        # Then it is not submitted again anywhere, nor expired and refunded: it is left to its DLR
        assert (len(primary.submits), other.submits, outcome.unconfirmed, outcome.taken_over) == (1, [], 1, 0)
        stored = store.messages[message.key]
        assert (stored.status, stored.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
        assert store.accounts["7"].credits == 1000 - message.price


def stranded_unconfirmed(store: InMemoryStore) -> tuple[list, int]:
    """A message that asked for delivery reports, whose dispatcher died mid-submit: the record's redelivery
    records it submitted-unconfirmed and asks for a settle check. Returns the checks and the credits before."""
    before = store.accounts["7"].credits
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    with pytest.raises(Crash):
        asyncio.run(dispatch(record, dispatch_deps(store, SubmitsThenDies())))
    checks: list = []
    later = replace(
        dispatch_deps(store, FakeProvider()),
        clock=lambda: NOW + timedelta(minutes=5),
        awaiting_report=lambda messages: checks.extend(settle_checks(messages, now=NOW + timedelta(minutes=5))),
    )
    assert asyncio.run(dispatch(record, later)).unconfirmed == 1
    return checks, before


def settle_deps(store: InMemoryStore, at: datetime) -> SettleDependencies:
    return SettleDependencies(messages=store, accounts=store, clock=lambda: at, dlr_wait=timedelta(hours=48))


class TestSettleChecks:
    def test_a_stranded_message_with_no_dlr_is_expired_refunded_and_announced_once_the_wait_is_over(self, store):
        # Given a message stranded submitted-unconfirmed, and the settle check its dispatch asked for
        [check], credits_before = stranded_unconfirmed(store)
        [message] = store.messages.values()
        assert message.price > 0 and store.accounts["7"].credits == credits_before - message.price
        assert (message.status, message.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
        # When the check is looked at before the DLR wait is over
        early = settle(check, settle_deps(store, NOW + timedelta(hours=1)))
        # Then nothing changes and it asks to come back, at most 12 h later (SQS's visibility limit)
        assert (early.changes, early.check_again_in) == ([], MAX_HOP_SECONDS)
        assert store.messages[message.key].status == MessageStatus.SUBMITTED
        assert settle(check, settle_deps(store, NOW + timedelta(hours=40))).check_again_in == 8 * 3600 + 5 * 60 + 1
        # When it is looked at once the wait is over, and again (SQS delivers at least once)
        due = settle(check, settle_deps(store, NOW + timedelta(hours=49)))
        again = settle(check, settle_deps(store, NOW + timedelta(hours=50)))
        # Then the message is expired for want of a DLR, refunded once, and the change is there to announce
        settled = store.messages[message.key]
        assert (settled.status, settled.error_code) == (MessageStatus.EXPIRED, "no_delivery_report")
        assert store.accounts["7"].credits == credits_before
        assert [(c.message.status, c.message.sequence) for c in due.changes] == [(MessageStatus.EXPIRED, 3)]
        assert due.check_again_in is None
        # And the repeat changes nothing and refunds nothing, but announces the same change (same webhook id)
        assert again.changes == [] and [c.message.sequence for c in again.made_before] == [3]
        assert store.accounts["7"].credits == credits_before

    def test_a_dlr_that_arrives_before_the_check_is_due_wins(self, store):
        # Given a stranded message whose upstream did have it: its final DLR arrives within the wait
        [check], _ = stranded_unconfirmed(store)
        [message] = store.messages.values()
        provider = FakeProvider()
        provider.reports = [report(message, MessageStatus.DELIVERED)]
        receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
        credits = store.accounts["7"].credits
        # When the settle check comes due
        outcome = settle(check, settle_deps(store, NOW + timedelta(hours=49)))
        # Then it changes nothing: the message stays delivered and charged, and nothing is announced
        assert store.messages[message.key].status == MessageStatus.DELIVERED
        assert store.accounts["7"].credits == credits
        assert (outcome.changes, outcome.made_before, outcome.check_again_in) == ([], [], None)

    def test_a_message_the_upstream_took_but_never_reported_on_is_expired_and_refunded_after_the_wait(self, store):
        # Given three messages the upstream took (with its ids), and the settle check their dispatch asked for
        credits_before = store.accounts["7"].credits
        _, deps = send(store, command(3, delivery_report=DeliveryReportMode.YES))
        [record] = deps.dispatch_queue.commands
        told: list = []
        deps_told = replace(dispatch_deps(store, FakeProvider()), awaiting_report=told.extend)
        outcome = asyncio.run(dispatch(record, deps_told))
        assert outcome.submitted == 3 and sorted(m.message_id for m in told) == sorted(record.message_ids)
        [check] = settle_checks(told, now=NOW)
        # And the final DLR of one of them only
        first = next(m for m in store.messages.values() if m.message_id == record.message_ids[0])
        provider = FakeProvider()
        provider.reports = [report(first, MessageStatus.DELIVERED)]
        receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
        # When the check comes due
        due = settle(check, settle_deps(store, NOW + timedelta(hours=48, seconds=1)))
        # Then the two the upstream never reported on are expired for want of a DLR and refunded; the one it
        # reported on stays delivered and charged
        statuses = sorted((m.status, m.error_code) for m in store.messages.values())
        assert statuses == [
            (MessageStatus.DELIVERED, None),
            (MessageStatus.EXPIRED, "no_delivery_report"),
            (MessageStatus.EXPIRED, "no_delivery_report"),
        ]
        assert store.accounts["7"].credits == credits_before - first.price
        assert len(due.changes) == 2 and due.check_again_in is None

    def test_a_record_redelivered_after_its_dispatcher_died_asks_for_the_messages_already_submitted(self, store):
        # Given a record whose dispatcher recorded two of its three messages submitted and died before it could
        # ask for their settle check
        _, deps = send(store, command(3))
        [record] = deps.dispatch_queue.commands
        killed = replace(dispatch_deps(store, DiesOnTheLastSubmit(last=3, store=store)), concurrency=1)
        with pytest.raises(Crash):
            asyncio.run(dispatch(record, killed))
        # When the record is redelivered once the claims lapsed
        told: list = []
        later = replace(
            dispatch_deps(store, FakeProvider()),
            clock=lambda: NOW + timedelta(minutes=5),
            awaiting_report=told.extend,
        )
        asyncio.run(dispatch(record, later))
        # Then the check it asks for covers every message of the record: the two found submitted, and the one it
        # recorded submitted-unconfirmed
        assert sorted(m.message_id for m in told) == sorted(record.message_ids)
        assert {m.status for m in store.messages.values()} == {MessageStatus.SUBMITTED}

    def test_a_message_whose_interim_report_overtook_its_dispatcher_still_gets_its_settle_check(self, store):
        # Given a message whose upstream sends an interim report (enroute: submitted) that is applied before the
        # dispatcher writes the submit down, so the dispatcher's write finds it submitted already
        _, deps = send(store, command(1))
        [record] = deps.dispatch_queue.commands
        provider = ReportsWhileSubmitting(store, MessageStatus.SUBMITTED)
        told: list = []
        # When it is dispatched
        asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), awaiting_report=told.extend)))
        # Then it is submitted, and the dispatch still asks for its settle check: without one, a message whose final
        # report never comes would stay submitted (and charged) for ever
        [message] = store.messages.values()
        assert message.status == MessageStatus.SUBMITTED and provider.applied == 1
        assert [m.message_id for m in told] == list(record.message_ids)

    def test_a_final_report_that_overtook_its_dispatcher_and_was_not_announced_is_announced_by_a_settle_check(
        self, store
    ):
        from sms_gateway.logic.delivery import announce_change

        # Given a message whose upstream's final report (delivered) is applied before the dispatcher writes the
        # submit down, and whose announcement the notify queue refuses (the callback fails, an upstream that posts
        # it once never posts it again)
        _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
        [record] = deps.dispatch_queue.commands

        def refused(notifications):
            raise RuntimeError("SQS SendMessage failed")

        class DeliveredWhileSubmitting(ReportsWhileSubmitting):
            async def submit(self, request):
                result = await FakeProvider.submit(self, request)
                key = MessageKey.from_ref(request.client_ref)
                self.reports = [report(self.store.messages[key], self.status)]
                on_change = lambda change: announce_change(change, refused, self.store, clock=clock)  # noqa: E731
                with contextlib.suppress(RuntimeError):
                    receive_delivery_reports(
                        self, callback(), DeliveryDependencies(self.store, self.store, clock, on_change=on_change)
                    )
                return result

        provider = DeliveredWhileSubmitting(store, MessageStatus.DELIVERED)
        told: list = []
        # When it is dispatched
        asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), awaiting_report=told.extend)))
        [message] = store.messages.values()
        assert message.status == MessageStatus.DELIVERED and message.announce_pending == message.sequence
        # Then a settle check covers it, and announces the delivered report the client never got
        announced = [
            change.message.message_id
            for check in settle_checks(told, now=NOW)
            for change in settle(check, settle_deps(store, NOW + timedelta(hours=49))).unannounced
        ]
        assert announced == [message.message_id]

    def test_checks_group_message_ids_by_batch_once_each_and_split_past_the_limit(self, store):
        # Given messages of two batches, one listed twice, more than one check holds
        send(store, command(2))
        send(store, command(1))
        messages = list(store.messages.values())
        many = [messages[0].model_copy(update={"message_id": i}) for i in range(CHECK_MESSAGES)]
        # When they are put into checks
        checks = settle_checks([*messages, messages[0], *many], now=NOW)
        # Then each batch's ids are listed once, and no check holds more than CHECK_MESSAGES ids
        listed = [(b["reference_id"], m) for c in checks for b in c["batches"] for m in b["message_ids"]]
        assert len(listed) == len(set(listed)) == len(messages) + CHECK_MESSAGES
        assert [sum(len(b["message_ids"]) for b in c["batches"]) for c in checks] == [CHECK_MESSAGES, len(messages)]
        assert all(c["kind"] == "settle" and from_iso(c["since"]) == NOW for c in checks)

    def test_a_check_queued_before_checks_held_several_batches_still_settles(self, store):
        # Given a check in the old form (one batch, no `batches`), queued before the upgrade
        [check], _ = stranded_unconfirmed(store)
        [batch] = check.pop("batches")
        old_form = {**check, **batch}
        # When it comes due
        settle(old_form, settle_deps(store, NOW + timedelta(hours=49)))
        # Then it settles its message as a new one would
        [message] = store.messages.values()
        assert (message.status, message.error_code) == (MessageStatus.EXPIRED, "no_delivery_report")

    def test_an_unknown_that_lands_between_the_checks_read_and_its_write_still_expires_and_refunds(self, store):
        # Given a message the upstream took, charged, whose SMSC's last receipt was ACCEPTD (it settles as delivered)
        message = submitted_message(store, delivery_report=DeliveryReportMode.YES)
        accepted = report(message, MessageStatus.SUBMITTED).model_copy(update={"settles_as": MessageStatus.DELIVERED})
        apply_delivery_report(accepted, DeliveryDependencies(store, store, clock), DeliveryOutcome())
        assert store.messages[message.key].settles_as == MessageStatus.DELIVERED
        credits = store.accounts["7"].credits
        [check] = settle_checks([message], now=NOW)
        # And the SMSC's UNKNOWN, which says it ends as if no report came, lands just after the check read the message
        # (its read is eventually consistent, and the receipt may arrive in between)
        unknown = report(message, MessageStatus.SUBMITTED).model_copy(update={"settles_as": MessageStatus.EXPIRED})
        read = store.get_messages_by_key

        def read_then_unknown(keys, *, consistent=True):
            found = read(keys, consistent=consistent)
            apply_delivery_report(unknown, DeliveryDependencies(store, store, clock), DeliveryOutcome())
            return found

        store.get_messages_by_key = read_then_unknown  # type: ignore[method-assign]
        # When the check comes due
        outcome = settle(check, settle_deps(store, NOW + timedelta(hours=49)))
        # Then the last word was UNKNOWN: the message is expired and refunded, not left submitted and charged for good
        settled = store.messages[message.key]
        assert (settled.status, settled.error_code) == (MessageStatus.EXPIRED, "no_delivery_report")
        assert store.accounts["7"].credits == credits + message.price
        assert [c.message.status for c in outcome.changes] == [MessageStatus.EXPIRED]


class ReportsWhileSubmitting(FakeProvider):
    """An upstream whose report on a message reaches the gateway (and is applied) before its answer to the submit."""

    def __init__(self, store: InMemoryStore, status: MessageStatus) -> None:
        super().__init__()
        self.store = store
        self.status = status
        self.applied = 0

    async def submit(self, request):
        result = await super().submit(request)
        key = MessageKey.from_ref(request.client_ref)
        self.reports = [report(self.store.messages[key], self.status)]
        delivered = receive_delivery_reports(self, callback(), DeliveryDependencies(self.store, self.store, clock))
        self.applied += delivered.applied
        return result


class DiesOnTheLastSubmit(FakeProvider):
    """Dies once the upstream accepted the `last`-th submit and the messages submitted before it are written (their
    status writes run after their submit slot is given back, so they may still be under way)."""

    def __init__(self, last: int, store: InMemoryStore) -> None:
        super().__init__()
        self.last = last
        self.store = store

    def written(self) -> int:
        return sum(message.status == MessageStatus.SUBMITTED for message in self.store.messages.values())

    async def submit(self, request):
        result = await super().submit(request)
        if len(self.submits) == self.last:
            # Once those are written and their tasks have taken the write's answer back from its worker thread and
            # finished (a fixed sleep was not always enough on a loaded machine).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (self.written() == self.last - 1 and self.others_done()):
                await asyncio.sleep(0.001)
            raise Crash
        return result

    @staticmethod
    def others_done() -> bool:
        """Every other message's task of the record (logic.dispatch's `one`) has finished."""
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current and t.get_coro().__qualname__.endswith(".one")]
        return all(task.done() for task in others)


def test_changes_made_before_the_dispatcher_dies_still_reach_the_client(store):
    # Given a record of three messages that asked for delivery reports, and a dispatcher that dies right
    # after the upstream accepted the third (one message at a time, so the first two are done by then)
    _, deps = send(store, command(3, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    announced: list = []
    dying = replace(
        dispatch_deps(store, DiesOnTheLastSubmit(last=3, store=store)), concurrency=1, announce=announced.extend
    )
    # When it is killed mid-record
    with pytest.raises(Crash):
        asyncio.run(dispatch(record, dying))
    # Then the first two messages' changes were announced as each was done, not lost with the invocation (in the
    # order their status writes came back, which their worker threads decide: clients order by `sequence`)
    assert sorted((c.message.message_id, c.message.status) for c in announced) == [
        (message_id, MessageStatus.SUBMITTED) for message_id in sorted(record.message_ids[:2])
    ]


def test_changes_whose_announcement_died_with_the_dispatcher_are_announced_by_the_redelivery(store):
    # Given a record of three messages that asked for delivery reports, whose dispatcher is killed outright after
    # writing the first two (its announcements lost with it) while the upstream had the third
    _, deps = send(store, command(3, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    killed = replace(dispatch_deps(store, DiesOnTheLastSubmit(last=3, store=store)), concurrency=1, announce=None)
    with pytest.raises(Crash):
        asyncio.run(dispatch(record, killed))
    # And the first message's DLR moving it on before the record comes back
    first = store.messages[next(m.key for m in store.messages.values() if m.message_id == record.message_ids[0])]
    provider = FakeProvider()
    provider.reports = [report(first, MessageStatus.DELIVERED)]
    receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
    # When the record is redelivered once the claims lapsed
    announced: list = []
    later = replace(
        dispatch_deps(store, FakeProvider()), clock=lambda: NOW + timedelta(minutes=5), announce=announced.extend
    )
    asyncio.run(dispatch(record, later))
    # Then every change the dispatchers made reaches the client, under the webhook id it had when it was made
    # (`submitted` is change 2 of each), the first message's included although a DLR has moved it on since; and that
    # DLR's final change again, under its own id (a repeat the client drops: the redelivery cannot tell it from one
    # held on the upstream's id that the dead dispatcher applied and never announced)
    ids = {notification["id"]: notification["payload"]["status"] for notification in map(dlr_notification, announced)}
    submitted = {f"dlr_{message_id}_2": "submitted" for message_id in record.message_ids}
    assert ids == {**submitted, f"dlr_{first.message_id}_3": "delivered"}
    assert store.messages[first.key].status == MessageStatus.DELIVERED


class DispatchedByAnotherJustBeforeTheClaim:
    """The store, where a concurrent delivery of the same record claims, submits and records each message of
    `taken` just before this dispatcher's claim reaches it, and then dies without announcing the change."""

    def __init__(self, store: InMemoryStore, taken: set[int]) -> None:
        self.store = store
        self.taken = taken

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def claim_for_dispatch(self, key, *, now, lease_seconds, **claim):
        if key.message_id in self.taken:
            assert (
                self.store.claim_for_dispatch(key, now=now, lease_seconds=lease_seconds).outcome == ClaimOutcome.CLAIMED
            )
            self.store.transition(
                key, MessageStatus.SUBMITTED, now=now, upstream="other", upstream_message_id=f"up-{key.message_id}"
            )
        return self.store.claim_for_dispatch(key, now=now, lease_seconds=lease_seconds, **claim)


def test_an_invocations_single_sends_are_read_together_and_a_bulk_record_reads_its_own(store):
    from sms_gateway.logic.dispatch import read_single_sends

    # Given an invocation with two single sends and a bulk record of three
    singles = [send(store, command(1, text=f"code {n}"))[1].dispatch_queue.commands[0] for n in range(2)]
    [bulk] = send(store, command(3))[1].dispatch_queue.commands
    # When its single sends are read together
    read = read_single_sends(store, [*singles, bulk])
    # Then each single send's record gets its message from that read, and the bulk record none (it reads its own)
    for record in singles:
        [message] = read.of(record) or []
        assert message.message_id == record.message_ids[0]
    assert read.of(bulk) is None
    # And a single send alone is not read ahead: it would be the same one request
    assert read_single_sends(store, singles[:1]).of(singles[0]) is None


def test_a_single_send_read_ahead_and_sent_meanwhile_by_a_duplicate_delivery_is_not_sent_twice(store):
    from sms_gateway.logic.dispatch import read_single_sends

    # Given two single sends read together at the start of an invocation
    records = [send(store, command(1, text=f"code {n}"))[1].dispatch_queue.commands[0] for n in range(2)]
    read = read_single_sends(store, records)
    provider = FakeProvider()
    deps = dispatch_deps(store, provider)
    # When a duplicate delivery of the second record sends it before this invocation comes to it
    asyncio.run(dispatch(records[1], deps))
    outcomes = [asyncio.run(dispatch(record, replace(deps, read_ahead=read.of(record)))) for record in records]
    # Then this invocation sent only the first: its read of the second (still queued then) lost to the claim
    sent = [request.text for request in provider.submits]
    assert sent == ["code 1", "code 0"]
    assert [(o.submitted, o.skipped) for o in outcomes] == [(1, 0), (0, 1)]


class HandedBackByAnotherJustBeforeTheClaim:
    """The store, where a concurrent delivery of the same record claims the message just before this dispatcher's
    claim reaches it, gets no answer from the deduplicating upstream `maybe_taken_by`, and hands it back naming
    that upstream (an attempt counted)."""

    def __init__(self, store: InMemoryStore, maybe_taken_by: str) -> None:
        self.store = store
        self.maybe_taken_by = maybe_taken_by
        self.done = False

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def claim_for_dispatch(self, key, *, now, lease_seconds, **claim):
        if not self.done:
            self.done = True
            assert (
                self.store.claim_for_dispatch(key, now=now, lease_seconds=lease_seconds).outcome == ClaimOutcome.CLAIMED
            )
            self.store.release_claim(key, maybe_taken_by=self.maybe_taken_by)
        return self.store.claim_for_dispatch(key, now=now, lease_seconds=lease_seconds, **claim)


def test_a_message_handed_back_between_the_read_and_the_claim_is_read_again_not_offered_elsewhere(store):
    # Given a message whose route is a primary upstream, then a fallback, and which another delivery of its record
    # offered to the primary (no answer: the primary may have it) and handed back after this dispatcher read it
    _, deps = send(store, command(1))
    [record] = deps.dispatch_queue.commands
    primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
    primary.failure = UpstreamError("primary is down", permanent=False, unavailable=True)
    racing = HandedBackByAnotherJustBeforeTheClaim(store, maybe_taken_by="primary")
    route = replace(dispatch_deps(store, primary), messages=racing, upstreams_for=lambda _: [primary, fallback])
    # When this dispatcher handles the record on what it read
    outcome = asyncio.run(dispatch(record, route))
    # Then it offered the message to no upstream (on its read, it would have failed over to the fallback while the
    # primary may be delivering it), and the record comes back to read it again
    assert primary.submits == [] and fallback.submits == []
    assert outcome.retry == list(record.message_ids)
    [message] = store.messages.values()
    assert (message.status, message.maybe_taken_by, message.submit_attempts) == (MessageStatus.QUEUED, "primary", 1)
    assert message.key not in store.claims
    # And its next delivery, reading afresh, offers it to the primary alone
    primary.failure = None
    again = asyncio.run(dispatch(record, replace(route, messages=store)))
    assert again.submitted == 1
    assert len(primary.submits) == 1 and fallback.submits == []


def test_changes_another_delivery_made_between_the_read_and_the_claim_are_announced_by_this_one(store):
    # Given a record of three messages that asked for delivery reports, two of which a concurrent delivery of the
    # record submits and records after this dispatcher read them queued, and which dies before announcing them
    _, deps = send(store, command(3, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    racing = DispatchedByAnotherJustBeforeTheClaim(store, taken=set(record.message_ids[:2]))
    provider = FakeProvider()
    announced: list = []
    # When this dispatcher handles the record (which is then consumed: nothing of it is left to retry)
    outcome = asyncio.run(
        dispatch(record, replace(dispatch_deps(store, provider), messages=racing, announce=announced.extend))
    )
    assert (outcome.submitted, outcome.skipped, outcome.retry) == (1, 2, [])
    # Then every message was submitted once, and the client hears of all three changes, the two the other
    # dispatcher made included, under the webhook ids they had when they were made
    assert [r.client_ref for r in provider.submits] == [m.key.to_ref() for m in store.messages.values()][2:]
    ids = {notification["id"]: notification["payload"]["status"] for notification in map(dlr_notification, announced)}
    assert ids == {f"dlr_{message_id}_2": "submitted" for message_id in record.message_ids}


class TakesTheRecordsThenFails(RecordingQueue):
    """A dispatch queue that takes the send's records but answers an error (SQS's answer lost): the send is undone.
    `read`: the messages as a dispatcher that got the records at once read them, before the undo."""

    def __init__(self, store: InMemoryStore) -> None:
        super().__init__()
        self.store = store
        self.read: list[Message] = []

    def enqueue(self, commands):
        super().enqueue(commands)
        self.read = self.store.get_messages(commands[0].account_id, commands[0].reference_id, commands[0].message_ids)
        raise TimeoutError("no answer from SQS")


def test_a_dispatcher_that_gets_the_records_of_a_send_undone_whole_reports_nothing_to_the_client(store):
    # Given a send of three that asked for delivery reports, undone whole (answered 503: the client never learnt its
    # message ids) after SQS took its record after all
    queue = TakesTheRecordsThenFails(store)
    with pytest.raises(Unavailable, match="undone"):
        send(store, command(3, delivery_report=DeliveryReportMode.YES), queue=queue)
    [record] = queue.commands
    provider = FakeProvider()
    announced: list = []
    # When a dispatcher gets that record, reading the messages afresh or as it read them before the undo failed them
    # (its claims then find them moved on, as it finds those another dispatcher took)
    deps = replace(dispatch_deps(store, provider), announce=announced.extend)
    asyncio.run(dispatch(record, deps))
    asyncio.run(dispatch(record, replace(deps, read_ahead=queue.read)))
    # Then it submits nothing and announces nothing: the undo's `not_queued` is not a change a dispatcher made, and
    # a report of a message whose id the client never got is one it cannot place
    assert [(m.status, m.error_code) for m in queue.read] == [(MessageStatus.QUEUED, None)] * 3
    assert provider.submits == []
    assert announced == []


class SlowAfterTheFirst(FakeProvider):
    """Answers the first submit at once and the others after a moment."""

    async def submit(self, request):
        result = await super().submit(request)
        if len(self.submits) > 1:
            await asyncio.sleep(0.05)
        return result


class FailsToRecord:
    """The store, whose status write for one message raises (a throttled or failing table)."""

    def __init__(self, store: InMemoryStore, message_id: int) -> None:
        self.store = store
        self.message_id = message_id

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def transition(self, key, target, **kwargs):
        if key.message_id == self.message_id:
            raise RuntimeError("the table did not take the write")
        return self.store.transition(key, target, **kwargs)


def test_when_one_message_cannot_be_recorded_the_others_in_flight_finish_before_the_record_fails(store):
    # Given a record of three messages that asked for delivery reports, and a table that fails the first one's
    # status write while the upstream is still answering the other two
    _, deps = send(store, command(3, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    announced: list = []
    failing = replace(
        dispatch_deps(store, SlowAfterTheFirst()),
        messages=FailsToRecord(store, record.message_ids[0]),
        announce=announced.extend,
    )
    left_running: list = []

    async def invocation():
        try:
            await dispatch(record, failing)
        finally:
            left_running.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())

    # When the record is dispatched, it fails (SQS brings it back)
    with pytest.raises(RuntimeError, match="did not take the write"):
        asyncio.run(invocation())
    # Then no task of it is left to resume in a later invocation on the container's loop: the other two messages
    # were recorded submitted and announced before the record failed
    assert left_running == []
    statuses = {m.message_id: m.status for m in store.messages.values()}
    assert [statuses[i] for i in record.message_ids] == [MessageStatus.QUEUED] + [MessageStatus.SUBMITTED] * 2
    assert sorted(c.message.message_id for c in announced) == sorted(record.message_ids[1:])


def test_status_changes_are_announced_ten_at_a_time_and_the_rest_at_the_end(store):
    # Given a record of 25 messages that asked for delivery reports
    _, deps = send(store, command(25, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    calls: list = []
    # When it is dispatched
    asyncio.run(dispatch(record, replace(dispatch_deps(store, FakeProvider()), announce=calls.append)))
    # Then its 25 changes go out in three announcements (one SQS request each), each change once
    assert [len(call) for call in calls] == [10, 10, 5]
    assert sorted(c.message.message_id for call in calls for c in call) == sorted(record.message_ids)


def test_a_record_that_finds_a_live_claim_comes_back_instead_of_being_consumed(store):
    # Given a message another dispatcher has claimed (and may yet die holding)
    _, deps = send(store, command(1))
    [record] = deps.dispatch_queue.commands
    [message] = store.messages.values()
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=30).outcome == ClaimOutcome.CLAIMED
    # When a duplicate delivery of its record is dispatched meanwhile
    provider = FakeProvider()
    outcome = asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), claim_lease_seconds=30)))
    # Then nothing is submitted, and the record is to come back once the lease can have lapsed
    assert provider.submits == []
    assert (outcome.retry, outcome.retry_after, outcome.skipped) == ([message.message_id], 30.0, 0)


class StingyLimiter:
    """Grants two sends, then nothing more before its deadline."""

    def __init__(self) -> None:
        self.asked: list[tuple[list, int]] = []

    def expect(self, asks):
        pass

    async def grant(self, scopes, wanted):
        self.asked.append((list(scopes), wanted))
        return Grant(min(2, wanted) if len(self.asked) == 1 else 0)


def test_the_rate_limit_holds_back_what_it_does_not_grant(store):
    # Given five queued messages and a limiter that grants only two sends now
    _, deps = send(store, command(5))
    provider, limiter = FakeProvider(), StingyLimiter()
    limited = replace(dispatch_deps(store, provider), limiter=limiter, rate_scopes=[("account:7", 2)])
    # When the record is dispatched
    outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], limited))
    # Then two are submitted and three wait for a later attempt, unclaimed
    assert (outcome.submitted, len(outcome.retry), outcome.retry_after) == (2, 3, 1.0)
    assert len(provider.submits) == 2
    assert limiter.asked == [([("account:7", 2)], 5), ([("account:7", 2)], 3)]
    assert store.claims == {}


class BusyThenFreeLimiter:
    """Refuses (other records took the second's tokens) `busy` times, then grants what is asked."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.asked = 0

    def expect(self, asks):
        pass

    async def grant(self, scopes, wanted):
        self.asked += 1
        return Grant(0 if self.asked <= self.busy else wanted)


def test_a_handler_with_a_deadline_waits_out_the_rate_limit_instead_of_handing_the_record_back(store):
    # Given five queued messages and a limiter whose tokens other records hold for a while
    _, deps = send(store, command(5))
    provider, limiter = FakeProvider(), BusyThenFreeLimiter(busy=3)
    waiting = replace(
        dispatch_deps(store, provider), limiter=limiter, rate_scopes=[("account:7", 5)], wait_out_the_rate_limit=True
    )
    # When the record is dispatched by an invocation that still has time
    outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], waiting))
    # Then it waited and sent them all, rather than coming back (each delivery counts towards maxReceiveCount)
    assert (outcome.submitted, outcome.needs_retry, limiter.asked) == (5, False, 4)


def test_waiting_out_the_rate_limit_stops_at_the_end_of_the_invocation(store):
    _, deps = send(store, command(5))
    provider, limiter = FakeProvider(), BusyThenFreeLimiter(busy=1_000)
    ending = replace(
        dispatch_deps(store, provider),
        limiter=limiter,
        rate_scopes=[("account:7", 5)],
        wait_out_the_rate_limit=True,
        out_of_time=lambda: limiter.asked >= 3,
    )
    outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], ending))
    assert (outcome.submitted, len(outcome.retry), outcome.retry_delay(backoff_base=5)) == (0, 5, 1)
    assert store.claims == {}


class RouteFullLimiter:
    def expect(self, asks):
        pass

    async def grant(self, scopes, wanted, *, max_wait_seconds=None, lend_while_waiting=()):
        return Grant(0 if any(name.startswith("route:") for name, _ in scopes) else wanted)

    async def acquire_one(self, scope, *, max_wait_seconds=None):
        return None if scope[0].startswith("route:") else 0

    async def give_back_unused(self, seconds, count=1):
        pass


def test_an_upstream_at_its_own_rate_limit_is_waited_for_not_failed_over(store):
    _, deps = send(store, command(1))
    primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
    limited = replace(
        dispatch_deps(store, primary),
        upstreams_for=lambda _: [primary, fallback],
        limiter=RouteFullLimiter(),
        route_limit=lambda name: 10 if name == "primary" else None,
    )
    outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], limited))
    assert outcome.needs_retry and outcome.retry_after == 1.0
    assert primary.submits == fallback.submits == []
    assert store.claims == {}
    # Held back by our own limiter, it was never offered upstream: no attempt counted, no backoff
    assert [m.submit_attempts for m in store.messages.values()] == [0]
    assert (outcome.failed_attempts, outcome.retry_delay(backoff_base=5)) == (0, 1)


def test_a_record_takes_a_limited_routes_tokens_ahead_only_for_its_messages_routed_there(store):
    from sms_gateway.logic.ratelimit import RateLimiter, expected_grants
    from tests.unit.test_ratelimit import SECOND, CountingStore, VirtualClock

    # Given a record of five messages of which one is routed to "slow" (ten a second) and four to an unlimited
    # upstream, and the invocation's limiter as consumers builds it (its records' messages, take-ahead 64)
    _, deps = send(store, command(5))
    [record] = deps.dispatch_queue.commands
    slow, fast = FakeProvider("slow"), FakeProvider("fast")
    first = min(m.msisdn for m in store.messages.values())
    counters, vclock = CountingStore(), VirtualClock()
    routed = replace(
        dispatch_deps(store, fast),
        upstreams_for=lambda message: [slow if message.msisdn == first else fast],
        limiter=RateLimiter(
            counters, clock=vclock, sleep=vclock.sleep, expected=expected_grants({"7": 5}), take_ahead=64
        ),
        route_limit=lambda name: 10 if name == "slow" else None,
    )
    # When the record is dispatched
    outcome = asyncio.run(dispatch(record, routed))
    # Then "slow" counted the one token its message used, and kept none from other dispatchers (until 2026-12-05 a
    # route expected every message of the invocation: five tokens taken, four kept unused until the invocation end)
    assert (outcome.submitted, len(slow.submits), len(fast.submits)) == (5, 1, 4)
    assert counters.per_second("route:slow") == {SECOND: 1}


def test_every_change_the_dispatcher_makes_is_reported_for_client_callbacks(store):
    # Given a batch of two that asked for delivery reports, submitted by the dispatcher
    _, deps = send(store, command(2, delivery_report=DeliveryReportMode.YES))
    provider = FakeProvider()
    outcome = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
    # Then each change made here is in the outcome, ready for the DLR callbacks
    assert [c.message.status for c in outcome.changes] == [MessageStatus.SUBMITTED, MessageStatus.SUBMITTED]
    # And a record delivered again changes nothing and reports nothing
    again = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
    assert again.changes == []


@pytest.mark.parametrize("sender", ["WhatsApp", "MTN", "131"])
def test_an_sms_from_an_alphanumeric_or_short_sender_to_the_accounts_long_number_is_stored_and_forwarded(store, sender):
    # Given the account's long number, and a service texting it a sign-up code from its sender ID (or the carrier
    # from its short code), as services and carriers do to any number
    store.accounts["7"] = store.accounts["7"].model_copy(update={"senders": ("48974", "2348090000001")})
    provider, published = FakeProvider(), []
    provider.inbound = InboundSms(
        upstream="fake",
        upstream_message_id="in-alpha",
        msisdn=sender,
        to="2348090000001",
        text="Your code is 123-456",
        received_at="2026-01-02T23:50:37.000000Z",
    )
    deps = InboundDependencies(accounts=store, inbox=store, publish=published.append, clock=clock, routes=fake_routes)
    # When the upstream delivers it
    outcome = receive_inbound(provider, callback(), deps)
    # Then it is stored and forwarded like any inbound SMS (the client asked for every SMS to its numbers), not
    # refused with a 400 that the upstream drops and the client never learns of
    assert outcome.stored
    [notification] = published
    assert (notification["payload"]["from"], notification["payload"]["message"]) == (sender, "Your code is 123-456")
