"""Two paths that charge or refund one message (or one batch) at once, against moto: whatever the order their
requests reach DynamoDB in, each message is refunded at most once, and only when it ends in a refunded state, so an
account's credits are what it was charged for what was delivered or is still in flight.

Each path runs in a thread of its own; every DynamoDB request is atomic, as on AWS (moto applies a transaction's
conditions and its writes in steps that another thread could come between, which DynamoDB never does), and both
paths have made their reads before either writes: the interleaving in which a refund not conditional on the
message's status would be given twice."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from sms_gateway.adapters.dynamodb import DynamoStore
from sms_gateway.domain.ids import new_batch_id
from sms_gateway.domain.models import Account, Batch, DeliveryReport, KeyClaim, Message, Recipient, SendCommand, iso
from sms_gateway.domain.pricing import ANY_NETWORK, PriceTable
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import Conflict
from sms_gateway.logic.batches import cancel_batch
from sms_gateway.logic.delivery import DeliveryDependencies, DeliveryOutcome, apply_delivery_report
from sms_gateway.logic.scheduled import release_scheduled_batch
from sms_gateway.logic.send import SendDependencies, accept_send, going_out, undo_standing_send
from sms_gateway.logic.settle import SettleDependencies, settle, settle_checks
from tests.fakes import RecordingQueue, RecordingScheduler
from tests.integration.conftest import moto_table
from tests.integration.test_dynamodb_store import NOW, balance, new_account, new_batch

UPSTREAM = "sim"
PRICE = 3
CREDITS = 1000
WRITES = frozenset({"update_item", "put_item", "delete_item", "transact_write_items", "batch_write_item"})


@pytest.fixture(scope="module")
def table() -> Iterator[DynamoStore]:
    with moto_table("credit-races") as store:
        yield store


class InFrontOfClient:
    """Stands in front of the table's client: each request goes through `call` (the request's name, the real
    method, its arguments)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if not callable(real):
            return real
        return lambda **kwargs: self.call(name, real, kwargs)

    def call(self, name: str, real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        return real(**kwargs)


class ReadsBeforeWrites(InFrontOfClient):
    """The table's client, shared by the racing threads: one request at a time, and each thread's first request of
    `waits_before` held until every racer has reached its own (they have all read what they decide on)."""

    def __init__(self, client: Any, racers: int, waits_before: frozenset[str] = WRITES) -> None:
        super().__init__(client)
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(racers)
        self._waited = threading.local()
        self._waits_before = waits_before

    def call(self, name: str, real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if name in self._waits_before and not getattr(self._waited, "done", False):
            self._waited.done = True
            # Liveness only: a racer that ends without writing lets the others go on after the timeout.
            with contextlib.suppress(threading.BrokenBarrierError):
                self._barrier.wait(timeout=10)
        with self._lock:
            return real(**kwargs)


def race(table: DynamoStore, *paths: Callable[[DynamoStore], Any], waits_before: frozenset[str] = WRITES) -> list[Any]:
    """Runs each path in its own thread on the table, their reads before their writes; what each returned, or the
    exception it raised."""
    shared = DynamoStore(table.table_name, client=ReadsBeforeWrites(table.client, len(paths), waits_before))
    results: list[Any] = [None] * len(paths)

    def run(index: int, path: Callable[[DynamoStore], Any]) -> None:
        try:
            results[index] = path(shared)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, path)) for i, path in enumerate(paths)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def funded_batch(table: DynamoStore, count: int, status: MessageStatus) -> tuple[Batch, list[Message]]:
    """A batch of `count` messages of price PRICE (not stored), from an account of its own with CREDITS that holds
    its sender."""
    account, credentials = new_account(credits=CREDITS)
    # A sender of its own: one account holds each.
    account = account.model_copy(update={"senders": (account.account_id,)})
    table.create_account(account, credentials)
    batch, messages = new_batch(account.account_id, count, status=status)
    batch = batch.model_copy(update={"cost": PRICE * count, "sender": account.account_id})
    return batch, [m.model_copy(update={"price": PRICE, "sender": account.account_id}) for m in messages]


def submitted_message(table: DynamoStore, *, parts: int = 1, status: MessageStatus = MessageStatus.SUBMITTED):
    """One message that UPSTREAM carries (funded_batch's, stored), its account's credits CREDITS once it paid."""
    batch, [message] = funded_batch(table, 1, status)
    message = message.model_copy(
        update={
            "parts": parts,
            "upstream": UPSTREAM if status == MessageStatus.SUBMITTED else None,
            "status_at": {str(status): iso(NOW)},
        }
    )
    table.create_batch(batch, [message])
    return batch.account_id, message


def report(message: Message, status: MessageStatus, part: int | None = None) -> DeliveryReport:
    return DeliveryReport(upstream=UPSTREAM, client_ref=message.key.to_ref(), status=status, part=part)


def delivering(report: DeliveryReport) -> Callable[[DynamoStore], DeliveryOutcome]:
    def path(store: DynamoStore) -> DeliveryOutcome:
        outcome = DeliveryOutcome()
        apply_delivery_report(report, DeliveryDependencies(messages=store, accounts=store, clock=lambda: NOW), outcome)
        return outcome

    return path


def status_of(table: DynamoStore, message: Message) -> MessageStatus:
    [now] = table.get_messages_by_key([message.key])
    return now.status


@pytest.mark.parametrize("final", [MessageStatus.DELIVERED, MessageStatus.FAILED])
def test_an_expiry_for_want_of_a_report_racing_the_final_report_refunds_only_if_it_wins(table, final):
    # Given a message submitted past its DLR wait, whose settle check runs as its final report comes in
    account_id, message = submitted_message(table)
    [check] = settle_checks([message], now=NOW)
    wait = timedelta(hours=1)
    deps = SettleDependencies(messages=table, accounts=table, clock=lambda: NOW + 2 * wait, dlr_wait=wait)
    # When both read it submitted, then write
    settled, reported = race(
        table,
        lambda store: settle(check, SettleDependencies(**{**deps.__dict__, "messages": store, "accounts": store})),
        delivering(report(message, final)),
    )
    # Then one of them moved it, and the price came back once if it ended expired or failed, never if delivered
    status = status_of(table, message)
    assert status in (MessageStatus.EXPIRED, final)
    assert len(settled.expired) == (status == MessageStatus.EXPIRED)
    assert reported.applied == (status == final)
    refunded = status != MessageStatus.DELIVERED
    assert balance(table, account_id) == CREDITS + (PRICE if refunded else 0)


def test_a_dispatchers_failure_racing_its_upstreams_failure_report_refunds_once(table):
    # Given a queued message a dispatcher claimed for UPSTREAM, which refused it (the dispatcher fails it) and also
    # posted a failure report for it (the report overtakes the dispatcher's write)
    account_id, message = submitted_message(table, status=MessageStatus.QUEUED)
    assert table.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream=UPSTREAM).claim_id
    # When both read it queued, then fail it with its refund
    failed, reported = race(
        table,
        lambda store: store.transition(
            message.key, MessageStatus.FAILED, now=NOW, error_code="upstream_rejected", refund=True
        ),
        delivering(report(message, MessageStatus.REJECTED)),
    )
    # Then exactly one moved it, and its price came back once
    assert failed.changed != bool(reported.applied)
    assert status_of(table, message) == (MessageStatus.FAILED if failed.changed else MessageStatus.REJECTED)
    assert balance(table, account_id) == CREDITS + PRICE


def test_two_failed_parts_of_a_long_message_reported_at_once_refund_it_once(table):
    # Given a two-part message whose upstream reports both parts failed at the same moment
    account_id, message = submitted_message(table, parts=2)
    # When each report records its part, both read the message failed by its parts, then fail it with its refund
    first, second = race(
        table,
        delivering(report(message, MessageStatus.FAILED, part=1)),
        delivering(report(message, MessageStatus.FAILED, part=2)),
        waits_before=frozenset({"transact_write_items"}),
    )
    # Then the message failed once, and its price (both parts') came back once
    assert status_of(table, message) == MessageStatus.FAILED
    assert first.applied + second.applied == 1
    assert balance(table, account_id) == CREDITS + PRICE


def test_a_cancel_racing_its_batchs_schedule_either_refunds_it_all_or_sends_it_all(table):
    # Given a scheduled batch of 5 messages, paid for, whose schedule fires as its sender cancels it
    batch, messages = funded_batch(table, 5, MessageStatus.SCHEDULED)
    table.create_batch_and_reserve(batch)
    table.add_messages(batch, messages)
    queue = RecordingQueue()

    def cancelling(store: DynamoStore) -> tuple[Any, int]:
        return cancel_batch(
            messages=store,
            scheduler=RecordingScheduler(),
            account_id=batch.account_id,
            reference_id=batch.reference_id,
            now=NOW,
        )

    def releasing(store: DynamoStore) -> bool:
        return release_scheduled_batch(
            batch.account_id,
            batch.reference_id,
            messages=store,
            accounts=store,
            opt_outs=None,
            queue=queue,
            clock=lambda: NOW + timedelta(minutes=1),
            finish_cancels=True,
        )

    # When both read it scheduled, then move it
    cancelled, released = race(table, cancelling, releasing)
    # Then one of them won it whole: cancelled and every credit back (answered to the cancel), or released and every
    # message queued once with its credits kept (the cancel refused)
    statuses = {status_of(table, message) for message in messages}
    if released is True:
        assert isinstance(cancelled, Conflict)
        assert statuses == {MessageStatus.QUEUED}
        assert sorted(id for command in queue.commands for id in command.message_ids) == sorted(
            m.message_id for m in messages
        )
        assert balance(table, batch.account_id) == CREDITS - batch.cost
    else:
        assert released is False and not queue.commands
        assert statuses == {MessageStatus.CANCELLED}
        assert cancelled[1] == batch.cost
        assert balance(table, batch.account_id) == CREDITS


class RunsFirst(InFrontOfClient):
    """The table's client for one path: just before that path's first request of `before` (a write), `meanwhile`
    runs in full (another path, on the table's own client). So the other path comes between the reads the first
    path decides on and its writes."""

    def __init__(self, client: Any, meanwhile: Callable[[], Any], before: frozenset[str] = WRITES) -> None:
        super().__init__(client)
        self._meanwhile: Callable[[], Any] | None = meanwhile
        self._before = before

    def call(self, name: str, real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if name in self._before and self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return real(**kwargs)


class Killed(BaseException):
    """The api Lambda killed outright: nothing of its undo runs."""


def send_killed_while_storing(
    table: DynamoStore, count: int, send_at: datetime | None
) -> tuple[Account, SendCommand, int]:
    """A send of `count` (more than STORE_CHUNK) at PRICE each, whose api Lambda was killed after storing its first
    STORE_CHUNK messages (the batch written with its whole cost): the account, the request its retry repeats, and
    its batch's reference id."""
    account, credentials = new_account(credits=CREDITS)
    account = account.model_copy(update={"senders": (account.account_id,)})
    table.create_account(account, credentials)
    command = SendCommand(
        account_id=account.account_id,
        sender=account.account_id,
        text="Hello",
        recipients=tuple(Recipient(msisdn=f"+2348020{i:06d}") for i in range(count)),
        send_at=send_at,
    )
    stored, chunks = table.add_messages, []

    def killed_after_the_first_chunk(batch: Batch, messages: Any) -> None:
        if chunks:
            raise Killed
        chunks.append(messages)
        stored(batch, messages)

    reference_id = new_batch_id()
    table.add_messages = killed_after_the_first_chunk  # type: ignore[method-assign]
    try:
        with pytest.raises(Killed):
            accept_send(account, command, send_deps(table), now=NOW, claim=KeyClaim(reference_id=reference_id))
    finally:
        del table.add_messages
    return account, command, reference_id


def send_deps(store: DynamoStore) -> SendDependencies:
    prices = PriceTable(prices={"N": {ANY_NETWORK: PRICE}})
    return SendDependencies(
        accounts=store,
        messages=store,
        dispatch_queue=RecordingQueue(),
        scheduler=RecordingScheduler(),
        prices=type("Prices", (), {"price_table": staticmethod(lambda: prices)})(),
    )


@pytest.mark.parametrize("send_at", [None, NOW + timedelta(hours=1)], ids=["to-go-out-at-once", "scheduled"])
@pytest.mark.parametrize("first", ["retry-reads-first", "sweeper-reads-first"])
def test_a_keyed_retry_finishing_a_killed_send_as_the_sweeper_releases_it_leaves_no_message_uncharged(
    table, send_at, first
):
    # Given a send to 150 (3 credits each) whose api Lambda was killed after storing its first 100 messages: the
    # batch holds its 450 credits, and the sweeper releases it (QUEUED#n or SCHEDULED#n) as the client's retry
    # under its Idempotency-Key finishes it
    account, command, reference_id = send_killed_while_storing(table, 150, send_at)
    batch = table.get_batch(account.account_id, reference_id)
    assert batch is not None
    assert (batch.cost, table.balance(account.account_id)) == (450, CREDITS - 450)

    def sweeper(store: DynamoStore) -> bool:
        return release_scheduled_batch(
            account.account_id, batch.reference_id, messages=store, accounts=store, opt_outs=None,
            queue=RecordingQueue(), clock=lambda: NOW + timedelta(hours=2),
        )  # fmt: skip

    def retry(store: DynamoStore) -> Any:
        claim = KeyClaim(reference_id=batch.reference_id, resumed=True)
        return accept_send(account, command, send_deps(store), now=NOW + timedelta(minutes=3), claim=claim)

    # When one of them reads the batch and its messages, and the other runs in full before the first one writes
    # what it decided on them (the retry: its first write; the sweeper's release: its give-back, a transaction)
    if first == "retry-reads-first":
        retry(DynamoStore(table.table_name, client=RunsFirst(table.client, lambda: sweeper(table))))
    else:
        gives_back = frozenset({"transact_write_items"})
        sweeper(DynamoStore(table.table_name, client=RunsFirst(table.client, lambda: retry(table), gives_back)))
    # Then every message stored that may go out is paid for, and the batch's cost says what it took
    stored, _ = table.list_messages(account.account_id, batch.reference_id, limit=1000)
    going = [m for m in stored if m.status in (MessageStatus.QUEUED, MessageStatus.SCHEDULED)]
    assert len(stored) == 150
    assert table.balance(account.account_id) == CREDITS - sum(m.price for m in going)
    assert table.get_batch(account.account_id, batch.reference_id).cost == sum(m.price for m in stored)


@pytest.mark.parametrize("first", ["cancel-reads-first", "other-reads-first"])
@pytest.mark.parametrize("other", ["sweeper", "keyed-retry"])
def test_a_cancel_of_a_send_killed_while_storing_racing_its_finisher_gives_back_exactly_what_does_not_go(
    table, other, first
):
    # Given a send to 150 (3 credits each) scheduled an hour ahead, whose api Lambda was killed after storing its
    # first 100 messages (the batch holds its 450 credits, no schedule made), cancelled from the portal as the
    # sweeper releases it, or as the client's retry under its Idempotency-Key finishes it
    send_at = NOW + timedelta(hours=1)
    account, command, reference_id = send_killed_while_storing(table, 150, send_at)
    charged = CREDITS - table.balance(account.account_id)

    def cancelling(store: DynamoStore) -> tuple[Batch, int]:
        return cancel_batch(
            messages=store, scheduler=RecordingScheduler(), account_id=account.account_id,
            reference_id=reference_id, now=NOW,
        )  # fmt: skip

    def sweeper(store: DynamoStore) -> bool:
        return release_scheduled_batch(
            account.account_id, reference_id, messages=store, accounts=store, opt_outs=None,
            queue=RecordingQueue(), clock=lambda: send_at + timedelta(minutes=20), finish_cancels=True,
        )  # fmt: skip

    def retry(store: DynamoStore) -> Any:
        claim = KeyClaim(reference_id=reference_id, resumed=True)
        return accept_send(account, command, send_deps(store), now=NOW + timedelta(minutes=3), claim=claim)

    finisher = sweeper if other == "sweeper" else retry
    # When both read the batch and its messages, then write
    paths = (cancelling, finisher) if first == "cancel-reads-first" else (finisher, cancelling)
    results = race(table, *paths)
    cancelled = results[paths.index(cancelling)]
    # Then every message that may still go out is paid for and nothing else is, and a cancel that was done answers
    # with every credit that came back
    stored, _ = table.list_messages(account.account_id, reference_id, limit=1000)
    going = [m for m in stored if m.status in (MessageStatus.QUEUED, MessageStatus.SCHEDULED)]
    balance = table.balance(account.account_id)
    assert balance == CREDITS - sum(m.price for m in going)
    if isinstance(cancelled, Exception):
        assert isinstance(cancelled, Conflict) and other == "sweeper"
        assert {m.status for m in stored} == {MessageStatus.QUEUED}
    else:
        assert not going
        assert cancelled[1] == balance - (CREDITS - charged) == charged


def cancel_of(account: Account, reference_id: int) -> Callable[[DynamoStore], tuple[Batch, int]]:
    def cancelling(store: DynamoStore) -> tuple[Batch, int]:
        return cancel_batch(
            messages=store, scheduler=RecordingScheduler(), account_id=account.account_id,
            reference_id=reference_id, now=NOW,
        )  # fmt: skip

    return cancelling


# How long a paused path waits for the other before going on regardless: the test then fails by its assertions.
LIVENESS_SECONDS = 300


class PausesAfterFirstWrite(InFrontOfClient):
    """The table's client for one path run in a thread: once its first write is done, it tells `written` and waits
    for `go_on` before its next request."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.written, self.go_on = threading.Event(), threading.Event()

    def call(self, name: str, real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if self.written.is_set():
            # Liveness only (no timed assertion): a path that never lets it go on ends it after the timeout.
            self.go_on.wait(timeout=LIVENESS_SECONDS)
        answer = real(**kwargs)
        if name in WRITES:
            self.written.set()
        return answer


def test_a_cancel_racing_the_undo_of_a_refused_keyed_retry_answers_only_what_the_cancel_gave_back(table):
    # Given a send to 150 (3 credits each) scheduled an hour ahead, whose api Lambda was killed after storing its
    # first 100 messages (the batch holds its 450 credits), whose retry under its Idempotency-Key is refused (the
    # operator removed its sender meanwhile), so the retry undoes the send as the portal cancels it
    account, _, reference_id = send_killed_while_storing(table, 150, NOW + timedelta(hours=1))
    undo_client = PausesAfterFirstWrite(table.client)
    undone: list[Any] = []
    undo = threading.Thread(
        target=lambda: undone.append(
            undo_standing_send(
                account.account_id, reference_id, send_deps(DynamoStore(table.table_name, client=undo_client)),
                now=NOW + timedelta(minutes=3),
            )
        )
    )  # fmt: skip

    def undo_gives_back_the_unstored() -> None:
        undo.start()
        undo_client.written.wait(timeout=LIVENESS_SECONDS)

    # When the cancel has read the batch, the undo gives back the 150 credits it held for the 50 messages never
    # stored; then the cancel cancels the 100 stored ones before the undo gets to them
    try:
        _, refunded = cancel_of(account, reference_id)(
            DynamoStore(table.table_name, client=RunsFirst(table.client, undo_gives_back_the_unstored))
        )
    finally:
        undo_client.go_on.set()
        undo.join()
    # Then every credit is back, and the cancel answers the 300 it gave back, not the undo's 150 too: a client adding
    # up its answers would count those twice (the retry's answer says the 50 were not sent, not charged)
    assert table.balance(account.account_id) == CREDITS
    assert refunded == 300
    [standing] = undone
    assert standing is not None and {m.status for m in standing.messages} == {MessageStatus.CANCELLED}


def test_a_cancel_finishing_one_killed_after_its_give_back_answers_all_the_cancel_gave_back(table):
    # Given a send to 150 (3 credits each) scheduled an hour ahead, whose api Lambda was killed after storing its
    # first 100 messages (the batch holds its 450 credits), and a cancel of it killed once it had given back the 150
    # credits held for the 50 messages never stored, before it cancelled the others (the client got no answer)
    account, _, reference_id = send_killed_while_storing(table, 150, NOW + timedelta(hours=1))

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    table.move_and_refund = killed  # type: ignore[method-assign]
    try:
        with pytest.raises(Killed):
            cancel_of(account, reference_id)(table)
    finally:
        del table.move_and_refund
    assert table.balance(account.account_id) == CREDITS - 300
    # When the client cancels again
    batch, refunded = cancel_of(account, reference_id)(table)
    # Then that cancel answers every credit the cancel gave back, as its first answer would have
    assert batch.status == MessageStatus.CANCELLED
    assert table.balance(account.account_id) == CREDITS
    assert refunded == 450


def test_a_keyed_retry_that_finished_its_send_just_before_a_cancel_and_the_cancel_add_up_to_the_credits(table):
    # Given a send to 150 (3 credits each) scheduled an hour ahead, whose api Lambda was killed after storing its
    # first 100 messages, finished by the client's retry under its Idempotency-Key (it stores the last 50), and
    # cancelled from the portal right after those are stored, before the retry answers
    account, command, reference_id = send_killed_while_storing(table, 150, NOW + timedelta(hours=1))
    cancelled: list[tuple[Batch, int]] = []

    class CancelledOnceScheduled(RecordingScheduler):
        def schedule(self, account_id: str, reference_id: int, at: datetime) -> None:
            super().schedule(account_id, reference_id, at)
            cancelled.append(cancel_of(account, reference_id)(table))

    deps = dataclasses.replace(send_deps(table), scheduler=CancelledOnceScheduled())
    # When the retry answers
    claim = KeyClaim(reference_id=reference_id, resumed=True)
    answered = accept_send(account, command, deps, now=NOW + timedelta(minutes=3), claim=claim)
    # Then it answers the send as finished (every message scheduled, charged: the cancel came after it, and a read
    # again would not close the window), the cancel answers every credit back, and the two add up to the balance
    [(_, refunded)] = cancelled
    charged = sum(message.price for message in going_out(answered))
    assert (charged, refunded) == (450, 450)
    assert table.balance(account.account_id) == CREDITS - charged + refunded == CREDITS
