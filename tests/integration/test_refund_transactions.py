"""Refunds against moto: a message's move to a refunded final state and its account's credits are one transaction,
so a crash, a lost answer or a conflicting write never leaves one done without the other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError

from sms_gateway.adapters.dynamodb import REFUND_CHUNK, DynamoStore
from sms_gateway.adapters.dynamodb_transactions import MAX_TRANSACTION_ATTEMPTS
from sms_gateway.domain.ids import new_id
from sms_gateway.domain.status import MessageStatus, allowed_previous
from tests.integration.conftest import moto_table
from tests.integration.test_dynamodb_store import NOW, balance, new_account, new_batch, raw_item, raw_message

REFUNDED_TARGETS = [MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.REJECTED, MessageStatus.CANCELLED]


@pytest.fixture(scope="module")
def table() -> Iterator[DynamoStore]:
    with moto_table("refunds") as store:
        yield store


def funded_messages(store: DynamoStore, count: int, status: MessageStatus, *, credits: int = 1000, price: int = 2):
    account, credentials = new_account(credits=credits)
    store.create_account(account, credentials)
    batch, messages = new_batch(account.account_id, count, status=status)
    messages = [m.model_copy(update={"price": price}) for m in messages]
    store.create_batch(batch, messages)
    return account.account_id, messages


class ClientThat:
    """The table's client, with one of its calls replaced (`call`: name -> function of the real client's method)."""

    def __init__(self, client: Any, **calls: Any) -> None:
        self._client = client
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name in self._calls:
            return lambda **kwargs: self._calls[name](real, **kwargs)
        return real


def with_client(store: DynamoStore, client: Any) -> DynamoStore:
    return DynamoStore(store.table_name, client=client)


@pytest.mark.parametrize("current", list(MessageStatus))
@pytest.mark.parametrize("target", REFUNDED_TARGETS)
def test_a_refunding_move_gives_the_price_back_exactly_when_it_moves_the_message(table, current, target):
    # Given a message of price 2 in state `current`, from an account with 1000 credits
    account_id, [message] = funded_messages(table, 1, current)
    # When it is moved to a refunded final state, twice (a duplicate report, a redelivered record)
    first = table.transition(message.key, target, now=NOW, error_code="E1", refund=True)
    second = table.transition(message.key, target, now=NOW, error_code="E1", refund=True)
    # Then it moved exactly when allowed, and its price came back once, only then
    moved = current in allowed_previous(target)
    assert first is not None and second is not None
    assert (first.changed, second.changed) == (moved, False)
    assert first.message.status == (target if moved else current)
    assert second.message == first.message
    assert balance(table, account_id) == 1000 + (2 if moved else 0)
    if moved:
        assert first.message.error_code == "E1" and first.message.sequence == message.sequence + 1


def test_when_the_refund_cannot_be_written_the_message_does_not_move_either(table):
    # Given a submitted message whose account item is gone (the refund's half of the write cannot succeed)
    account_id, [message] = funded_messages(table, 1, MessageStatus.SUBMITTED)
    table.client.delete_item(TableName=table.table_name, Key={"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": "ACCOUNT"}})
    before = raw_message(table, message.key)
    # When its failure report is applied, the write is refused as a whole
    with pytest.raises(RuntimeError, match="refund of 1 messages was refused"):
        table.transition(message.key, MessageStatus.FAILED, now=NOW, refund=True)
    # Then the message is still submitted: the report's redelivery can still apply it and refund it
    assert raw_message(table, message.key) == before
    assert raw_item(table, f"ACC#{account_id}", "ACCOUNT") is None


@pytest.mark.parametrize("applied", [False, True], ids=["lost-before-applying", "answer-lost-after-applying"])
def test_a_refund_whose_call_failed_is_applied_once_by_the_retry(table, applied):
    # Given a submitted message, and a table whose first transaction fails on the wire, before or after DynamoDB
    # applied it (a container killed there behaves the same: the retry is the record's or the report's redelivery)
    account_id, [message] = funded_messages(table, 1, MessageStatus.SUBMITTED)
    failures = [1]

    def transact_write_items(real, **kwargs):
        if failures:
            failures.pop()
            if applied:
                real(**kwargs)
            raise ConnectionClosedError(endpoint_url="http://dynamodb")
        return real(**kwargs)

    flaky = with_client(table, ClientThat(table.client, transact_write_items=transact_write_items))
    with pytest.raises(ConnectionClosedError):
        flaky.transition(message.key, MessageStatus.EXPIRED, now=NOW, refund=True)
    # When the same move is tried again
    retry = flaky.transition(message.key, MessageStatus.EXPIRED, now=NOW, refund=True)
    # Then the message is expired and its price came back exactly once
    assert retry is not None and retry.message.status == MessageStatus.EXPIRED
    assert retry.changed is not applied
    assert balance(table, account_id) == 1000 + 2


@pytest.mark.parametrize("refund", [True, False])
def test_a_batch_is_moved_and_refunded_a_transaction_per_chunk_and_only_for_what_moved(table, refund):
    # (without `refund`: move_messages, the same moves for messages whose credits went back another way)
    move = table.move_and_refund if refund else table.move_messages
    account = 1 if refund else 0  # the account's write in each transaction
    given_back = 147 * 2 if refund else 0
    # Given 150 scheduled messages of one account, of which three were queued and submitted meanwhile (and so
    # cannot be cancelled), and the key of one that is not there
    account_id, messages = funded_messages(table, 150, MessageStatus.SCHEDULED)
    for gone_on in messages[:3]:
        table.transition(gone_on.key, MessageStatus.QUEUED, now=NOW)
        table.transition(gone_on.key, MessageStatus.SUBMITTED, now=NOW)
    ghost = messages[3].model_copy(update={"message_id": new_id()})
    transactions: list[int] = []
    table.client.meta.events.register(
        "provide-client-params.dynamodb.TransactWriteItems",
        lambda params, **_: transactions.append(len(params["TransactItems"])),
        unique_id="count-refund-transactions",
    )
    try:
        # When the batch is cancelled
        changes = move([*messages, ghost], MessageStatus.CANCELLED, now=NOW)
    finally:
        table.client.meta.events.unregister(
            "provide-client-params.dynamodb.TransactWriteItems", unique_id="count-refund-transactions"
        )
    # Then every answer lines up with its message: 147 cancelled by this call, 3 left submitted, the ghost None
    assert [c.changed for c in changes[:3]] == [False] * 3
    assert all(c.message.status == MessageStatus.SUBMITTED for c in changes[:3])
    assert all(c is not None and c.changed and c.message.status == MessageStatus.CANCELLED for c in changes[3:150])
    assert changes[150] is None
    # And the account got back exactly the price of what moved (nothing without `refund`)
    assert balance(table, account_id) == 1000 + given_back
    # And it took a transaction per chunk of up to REFUND_CHUNK messages (plus the account), each sent once more
    # without what it could not move (the first chunk held the submitted three, the second the ghost)
    second_chunk = 150 + 1 - REFUND_CHUNK
    assert transactions == [
        REFUND_CHUNK + account,
        REFUND_CHUNK + account - 3,
        second_chunk + account,
        second_chunk - 1 + account,
    ]
    # And a second cancel moves and refunds nothing
    again = move(messages, MessageStatus.CANCELLED, now=NOW)
    assert not any(c is not None and c.changed for c in again)
    assert balance(table, account_id) == 1000 + given_back


def conflicting_once(table: DynamoStore, conflicts: list[int], codes: list[str]) -> DynamoStore:
    """The table, whose next transactions (one per entry of `conflicts`, popped) are cancelled with `codes`."""

    def transact_write_items(real, **kwargs):
        if conflicts:
            conflicts.pop()
            raise table.client.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                    "CancellationReasons": [{"Code": code} for code in codes],
                },
                "TransactWriteItems",
            )
        return real(**kwargs)

    return with_client(table, ClientThat(table.client, transact_write_items=transact_write_items))


def test_a_transaction_that_conflicts_with_another_write_is_tried_again(table):
    # Given a submitted message, and a table whose first transaction is cancelled for a conflict on the account
    account_id, [message] = funded_messages(table, 1, MessageStatus.SUBMITTED)
    conflicts = [1]
    conflicting = conflicting_once(table, conflicts, ["None", "TransactionConflict"])
    # When the message is failed and refunded
    change = conflicting.transition(message.key, MessageStatus.FAILED, now=NOW, refund=True)
    # Then the second try moved it and refunded it, once
    assert change is not None and change.changed and not conflicts
    assert balance(table, account_id) == 1000 + 2


@pytest.mark.parametrize(
    "codes",
    [
        pytest.param(["None", "ThrottlingError"], id="the-account-throttled"),
        pytest.param(["ProvisionedThroughputExceeded", "None"], id="the-message-throttled"),
    ],
)
def test_a_refund_dynamodb_throttles_once_is_applied_at_its_next_try(table, codes):
    # Given a submitted message, and a table whose first transaction DynamoDB cancels as throttled (one item's
    # capacity, for a moment: botocore retries a throttled request, never a cancelled transaction)
    account_id, [message] = funded_messages(table, 1, MessageStatus.SUBMITTED)
    throttles = [1]
    throttled = conflicting_once(table, throttles, codes)
    # When its failure report fails it and refunds it
    change = throttled.transition(message.key, MessageStatus.FAILED, now=NOW, refund=True)
    # Then the next try moved it and refunded it, once, not an error that fails the report's callback
    assert change is not None and change.changed and not throttles
    assert balance(table, account_id) == 1000 + 2


def test_a_send_reserving_credits_while_a_refund_holds_the_account_is_tried_again(table):
    # Given an account, and a table that refuses the first write to it: a refund's transaction holds the item
    account, credentials = new_account(credits=100)
    table.create_account(account, credentials)
    held = [1]
    busy = conflicting_once(table, held, ["TransactionConflict"])
    # When a send reserves credits
    busy.reserve_credits(account.account_id, 30)
    # Then the write went through on its second try, once
    assert not held and balance(table, account.account_id) == 70


def test_messages_of_two_accounts_are_never_refunded_in_one_call(table):
    _, [one] = funded_messages(table, 1, MessageStatus.QUEUED)
    _, [other] = funded_messages(table, 1, MessageStatus.QUEUED)
    with pytest.raises(ValueError, match="one account's messages"):
        table.move_and_refund([one, other], MessageStatus.CANCELLED, now=NOW)
    assert [raw_message(table, m.key)["status"]["S"] for m in (one, other)] == ["queued", "queued"]  # type: ignore[index]


# ---------------------------------------------------------------- a send's batch and its credits


def funded_account(store: DynamoStore, credits: int) -> str:
    account, credentials = new_account(credits=credits)
    store.create_account(account, credentials)
    return account.account_id


def test_a_batch_and_its_reservation_are_written_together(table):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30)
    # When a keyed send writes its batch
    table.create_batch_and_reserve(batch)
    assert balance(table, batch.account_id) == 70
    # Then the batch is there and its cost was taken
    assert table.get_batch(account_id, batch.reference_id) == batch
    assert balance(table, account_id) == 70


def test_a_batch_the_balance_cannot_pay_for_is_not_written_and_nothing_is_taken(table):
    from sms_gateway.errors import InsufficientCredits

    account_id = funded_account(table, 29)
    batch, _ = new_batch(account_id, 30)
    with pytest.raises(InsufficientCredits, match="costs 30 credits"):
        table.create_batch_and_reserve(batch)
    assert table.get_batch(account_id, batch.reference_id) is None
    assert balance(table, account_id) == 29


def test_a_batch_that_exists_is_refused_and_nothing_is_taken(table):
    from sms_gateway.errors import Conflict

    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30)
    table.create_batch_and_reserve(batch)
    # When another request under the same key writes the same batch
    with pytest.raises(Conflict, match="exists already"):
        table.create_batch_and_reserve(batch.model_copy(update={"text": "another"}))
    # Then the first stands and was charged once
    assert table.get_batch(account_id, batch.reference_id) == batch
    assert balance(table, account_id) == 70


def test_a_batch_written_while_a_refund_holds_the_account_is_tried_again(table):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30)
    conflicts = [1]
    busy = conflicting_once(table, conflicts, ["TransactionConflict", "None"])
    busy.create_batch_and_reserve(batch)
    assert balance(table, batch.account_id) == 70
    assert not conflicts and table.get_batch(account_id, batch.reference_id) == batch


def test_a_send_afresh_links_the_undone_batch_it_replaces_in_the_same_write(table):
    account_id = funded_account(table, 100)
    undone, _ = new_batch(account_id, 30)
    table.create_batch_and_reserve(undone)
    table.fail_batch_and_refund(undone)
    afresh, _ = new_batch(account_id, 30)
    # When a retry under the key sends afresh in place of the undone batch
    table.create_batch_and_reserve(afresh, superseding=undone.reference_id)
    assert balance(table, afresh.account_id) == 70
    # Then the undone batch links to the new one, which was charged once
    replaced = table.get_batch(account_id, undone.reference_id)
    assert replaced is not None and replaced.superseded_by == afresh.reference_id
    assert table.get_batch(account_id, afresh.reference_id) == afresh


@pytest.mark.parametrize("replaced", ["queued", "superseded", "missing"])
def test_a_send_afresh_in_place_of_a_batch_that_is_not_waiting_for_one_writes_nothing(table, replaced):
    from sms_gateway.errors import Conflict

    account_id = funded_account(table, 100)
    earlier, _ = new_batch(account_id, 30)
    if replaced != "missing":
        table.create_batch_and_reserve(earlier)
    if replaced == "superseded":
        table.fail_batch_and_refund(earlier)
        table.create_batch_and_reserve(new_batch(account_id, 1)[0], superseding=earlier.reference_id)
    before = (balance(table, account_id), table.get_batch(account_id, earlier.reference_id))
    afresh, _ = new_batch(account_id, 30)
    # When a send afresh names a batch that is still queued, was replaced already, or is not there
    with pytest.raises(Conflict, match="not a failed batch waiting to be sent afresh"):
        table.create_batch_and_reserve(afresh, superseding=earlier.reference_id)
    # Then nothing was written: no new batch, no credits taken, the earlier batch as it was
    assert table.get_batch(account_id, afresh.reference_id) is None
    assert (balance(table, account_id), table.get_batch(account_id, earlier.reference_id)) == before


@pytest.mark.parametrize(
    ("status", "undone"),
    [
        (MessageStatus.QUEUED, True),
        (MessageStatus.SCHEDULED, True),
        (MessageStatus.CANCELLED, False),
        (MessageStatus.FAILED, False),
    ],
)
def test_only_an_unsent_batch_is_failed_and_its_cost_given_back_once(table, status, undone):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30, status=status)
    table.create_batch_and_reserve(batch)
    # When the send's undo runs, and runs again (a retried undo)
    assert table.fail_batch_and_refund(batch) is undone
    assert table.fail_batch_and_refund(batch) is False
    # Then an unsent batch is failed and its cost came back once; one that moved on is left as it was
    found = table.get_batch(account_id, batch.reference_id)
    assert found is not None and found.status == (MessageStatus.FAILED if undone else status)
    assert balance(table, account_id) == (100 if undone else 70)


def test_a_scheduled_batch_released_meanwhile_is_not_failed(table):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30, status=MessageStatus.SCHEDULED)
    table.create_batch_and_reserve(batch)
    # When its schedule fires and releases it before the undo of its send runs
    assert table.set_batch_status(account_id, batch.reference_id, MessageStatus.QUEUED)
    # Then the undo, which knew it scheduled, leaves it released and charged
    assert table.fail_batch_and_refund(batch) is False
    found = table.get_batch(account_id, batch.reference_id)
    assert found is not None and found.status == MessageStatus.QUEUED
    assert balance(table, account_id) == 70


def test_failing_a_batch_that_was_never_written_changes_nothing(table):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30)
    assert table.fail_batch_and_refund(batch) is None
    assert table.get_batch(account_id, batch.reference_id) is None
    assert balance(table, account_id) == 100


def test_a_batch_whose_account_is_gone_is_not_failed_either(table):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30)
    table.create_batch_and_reserve(batch)
    table.client.delete_item(TableName=table.table_name, Key={"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": "ACCOUNT"}})
    with pytest.raises(RuntimeError, match="is gone"):
        table.fail_batch_and_refund(batch)
    found = table.get_batch(account_id, batch.reference_id)
    assert found is not None and found.status == MessageStatus.QUEUED


@pytest.mark.parametrize(("cost", "credits_left"), [(35, 65), (25, 75), (30, 70)])
def test_a_batch_repriced_moves_its_cost_and_the_difference_together(table, cost, credits_left):
    account_id = funded_account(table, 100)
    batch, _ = new_batch(account_id, 30)
    table.create_batch_and_reserve(batch)
    # When a finishing send finds the messages cost something else now
    assert table.reprice_batch(batch, cost) == credits_left
    # Then the batch says what was taken, and a second try with the batch as first read changes nothing
    found = table.get_batch(account_id, batch.reference_id)
    assert found is not None and found.cost == cost
    if cost != batch.cost:
        from sms_gateway.errors import Conflict

        with pytest.raises(Conflict, match="changed meanwhile"):
            table.reprice_batch(batch, cost)
    assert balance(table, account_id) == credits_left


def test_a_batch_repriced_beyond_the_balance_changes_nothing(table):
    from sms_gateway.errors import InsufficientCredits

    account_id = funded_account(table, 32)
    batch, _ = new_batch(account_id, 30)
    table.create_batch_and_reserve(batch)
    with pytest.raises(InsufficientCredits):
        table.reprice_batch(batch, 33)
    assert table.get_batch(account_id, batch.reference_id) == batch
    assert balance(table, account_id) == 2


class AnswersLost:
    """Stands in front of moto on a client: the first `times` requests (of operation `of`, when given) reach
    DynamoDB (moto) and then their answers are lost on the wire, so botocore sends the same request again (or gives
    up, after its attempts). Like DynamoDB, it answers a transaction whose ClientRequestToken it has already applied
    without applying it again (the tests' moto does too since remember_transaction_tokens; this one answers first)."""

    def __init__(self, client: Any, times: int = 1, of: str | None = None) -> None:
        from moto.core.models import botocore_stubber

        self.sent = 0
        self._lost = times
        self._of = of
        self._moto = botocore_stubber
        self._applied_tokens: set[str] = set()
        client.meta.events.unregister("before-send", botocore_stubber)
        client.meta.events.register("before-send", self._before_send)

    def _before_send(self, request: Any, event_name: str, **_: Any) -> Any:
        import json

        from botocore.awsrequest import AWSResponse

        target = request.headers.get("X-Amz-Target", b"")
        if self._of is not None and not (target.decode() if isinstance(target, bytes) else target).endswith(self._of):
            return self._moto(event_name=event_name, request=request)
        self.sent += 1
        token = json.loads(request.body or b"{}").get("ClientRequestToken")
        if token in self._applied_tokens:
            answer = AWSResponse(request.url, 200, {}, _RawBody(b"{}"))
        else:
            answer = self._moto(event_name=event_name, request=request)
            if token and answer.status_code == 200:
                self._applied_tokens.add(token)
        if self.sent > self._lost:
            return answer
        raise ConnectionClosedError(endpoint_url=request.url)


class _RawBody:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


@pytest.mark.parametrize(
    ("move", "left"),
    [
        (lambda store, account_id: store.reserve_credits(account_id, 30), 70),
        (lambda store, account_id: store.refund_credits(account_id, 30), 130),
        (lambda store, account_id: store.top_up(account_id, 30), 130),
    ],
    ids=["reserve", "refund", "top-up"],
)
def test_a_credit_move_whose_answer_is_lost_is_applied_once_when_botocore_sends_it_again(table, move, left):
    # Given an account with 100 credits, and a client (the gateway's own retry settings) whose first write to the
    # account is applied by DynamoDB and its answer then lost, so botocore sends the same request again
    from sms_gateway.adapters import aws

    account, credentials = new_account(credits=100)
    table.create_account(account, credentials)
    aws.reset_clients()
    client = aws.client("dynamodb")
    lost = AnswersLost(client)
    try:
        # When credits are reserved, given back or topped up through it
        move(with_client(table, client), account.account_id)
    finally:
        aws.reset_clients()
    # Then botocore sent the write again, and the credits moved once
    assert lost.sent >= 2
    assert balance(table, account.account_id) == left


def test_a_refund_whose_last_try_finds_the_message_settled_by_another_writer_is_no_error(table):
    # Given a submitted message whose refunding transactions conflict with other writes to its account (a busy
    # account: sends, refunds and top-ups all write it) on every try but the last, and whose delivered report is
    # applied just before that last try
    account_id, [message] = funded_messages(table, 1, MessageStatus.SUBMITTED)
    conflicts = list(range(MAX_TRANSACTION_ATTEMPTS - 1))

    def transact_write_items(real, **kwargs):
        if conflicts:
            conflicts.pop()
            if not conflicts:
                table.transition(message.key, MessageStatus.DELIVERED, now=NOW)
            raise table.client.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                    "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}],
                },
                "TransactWriteItems",
            )
        return real(**kwargs)

    busy = with_client(table, ClientThat(table.client, transact_write_items=transact_write_items))
    # When its failure report is applied
    change = busy.transition(message.key, MessageStatus.FAILED, now=NOW, refund=True)
    # Then the last try found it delivered: nothing moved, nothing refunded, and nothing left to do (no error for
    # the report's caller to answer 5xx to, or the dispatcher's record to count as a failure)
    assert change is not None and not change.changed and change.message.status == MessageStatus.DELIVERED
    assert balance(table, account_id) == 1000


def remembering_cancelled_tokens(table: DynamoStore, conflicts: int) -> DynamoStore:
    """The table, whose next `conflicts` transactions are cancelled by a conflicting write (TransactionConflict: a
    send writing the account's credits at the same moment), and which, as DynamoDB may for 10 minutes, answers a
    transaction sent again under a token it cancelled with the same cancellation."""
    cancelled: set[str] = set()
    left = [conflicts]

    def transact_write_items(real, **kwargs):
        token = kwargs.get("ClientRequestToken")
        if left[0] or token in cancelled:
            left[0] = max(0, left[0] - 1)
            cancelled.add(token)
            raise table.client.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                    "CancellationReasons": [{"Code": "TransactionConflict"} for _ in kwargs["TransactItems"]],
                },
                "TransactWriteItems",
            )
        return real(**kwargs)

    return with_client(table, ClientThat(table.client, transact_write_items=transact_write_items))


def test_a_top_up_whose_first_try_conflicts_with_a_send_adds_its_credits_once_and_says_so(table):
    # Given an account with 100 credits, and a top-up under a request id whose first try a send's write to the
    # account's credits cancels (TransactionConflict)
    account, credentials = new_account(credits=100)
    table.create_account(account, credentials)
    busy = remembering_cancelled_tokens(table, conflicts=1)
    # When the operator tops it up, and runs the same top-up again (as docs/operators.md says is safe)
    busy.top_up(account.account_id, 30, request_id="invoice-2291")
    busy.top_up(account.account_id, 30, request_id="invoice-2291")
    # Then the top-up is done at its next try, not answered "not done" for the 10 minutes DynamoDB may remember the
    # cancelled token, and the credits were added once
    assert balance(table, account.account_id) == 130
