"""A send's writes stay within DynamoDB's limits on a transaction, and a send being finished keeps its credits.

DynamoDB refuses a TransactWriteItems whose items add up to more than 4 MB (docs: TransactWriteItems, "The aggregate
size of the items in the transaction cannot exceed 4 MB") with a ValidationException, and writes none of it. moto
checks the number of items (100) and each item's size (400 KB), not the aggregate: `transactions_limited_as_dynamodb`
makes the gateway's client refuse as DynamoDB does, sizing each item by DynamoDB's rules (docs: "DynamoDB item sizes
and formats"). An Update, Delete or ConditionCheck counts the whole item it touches, as stored, not only its request:
the documents speak of "the items in the transaction", and TransactGetItems' limit says the same of requests that
carry only keys (adapters/dynamodb.py, REFUND_CHUNK_BYTES)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_batches_dialect import call
from tests.integration.test_idempotency_and_credits import (
    Killed,
    batches_of,
    die_once,
    leases_run_out,
    make_account,
    queued_message_ids,
    with_key,
)
from tests.integration.test_send_path import balance, send_event


@pytest.fixture
def api(aws: dict[str, str]) -> Any:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


# DynamoDB's "4 MB" (its KB is 1024 bytes: moto finds the 400 KB item limit between 409 and 410 thousand bytes).
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024


def attribute_value_bytes(value: dict[str, Any]) -> int:
    """The size DynamoDB counts for one typed attribute value (without its name)."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        digits = inner.lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + attribute_value_bytes(element) for element in inner)
    if kind == "M":
        return 3 + sum(len(name.encode()) + 1 + attribute_value_bytes(element) for name, element in inner.items())
    if kind == "SS":
        return sum(len(element.encode()) for element in inner)
    if kind == "NS":
        return sum(attribute_value_bytes({"N": element}) for element in inner)
    raise AssertionError(f"no size rule for {kind}")


def item_bytes(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB counts it: its attribute names and values."""
    return sum(len(name.encode()) + attribute_value_bytes(value) for name, value in item.items())


def transaction_bytes(client: Any, writes: list[dict[str, Any]]) -> int:
    """What a transaction's writes add up to: each item put, and each item another write touches as it is stored
    (its key alone when there is none)."""
    total = 0
    for write in writes:
        ((action, request),) = write.items()
        if action == "Put":
            total += item_bytes(request["Item"])
            continue
        stored = client.get_item(TableName=request["TableName"], Key=request["Key"], ConsistentRead=True).get("Item")
        total += item_bytes(stored or request["Key"])
    return total


def transactions_limited_as_dynamodb(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The gateway's DynamoDB client refuses a TransactWriteItems over 4 MB, as DynamoDB does. The size of each
    transaction it was asked to write, in order."""
    from botocore.exceptions import ClientError

    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    real_transact = client.transact_write_items
    sizes: list[int] = []

    def transact_write_items(**kwargs: Any) -> Any:
        size = transaction_bytes(client, kwargs["TransactItems"])
        sizes.append(size)
        if size > MAX_TRANSACTION_BYTES:
            message = "Transaction request cannot exceed 4 MB"
            raise ClientError({"Error": {"Code": "ValidationException", "Message": message}}, "TransactWriteItems")
        return real_transact(**kwargs)

    monkeypatch.setattr(client, "transact_write_items", transact_write_items)
    return sizes


def messages_of(account_id: str, reference_id: int) -> list[Any]:
    """Every message of the batch (long ones fill DynamoDB's 1 MB page well before a thousand)."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages

    return list(all_messages(gateway().store, account_id, reference_id))


def died_after_storing_25(
    api: Any, monkeypatch: pytest.MonkeyPatch, account: dict[str, Any], body: dict[str, Any], *, key: str
) -> Any:
    """Sends `body` under `key`, a request that dies after it stored the first 25 of its messages: the batch."""
    from sms_gateway.adapters.dynamodb import DynamoStore

    die_once(monkeypatch, DynamoStore, "_batch_write", on_call=2)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), key))
    (stored,) = batches_of(account["account_id"])
    return stored


def retried_after_the_lease(api: Any, account: dict[str, Any], body: dict[str, Any], *, key: str) -> dict[str, Any]:
    """The client's retry of the send under `key`, once the lease of the request that died ran out: its answer."""
    leases_run_out()
    return api(with_key(send_event(account["token"], body), key))


def test_the_size_rules_count_names_and_values():
    # Given DynamoDB's documented examples of its size rules (a string, a number, a list, a map)
    item = {
        "pk": {"S": "ACCT#1"},
        "credits": {"N": "12300"},
        "tags": {"L": [{"S": "ab"}]},
        "parts": {"M": {"1": {"S": "delivered"}}},
    }
    # Then each attribute is its name and its value, with the overheads of lists and maps
    assert item_bytes(item) == (2 + 6) + (7 + 3) + (4 + 3 + 1 + 2) + (5 + 3 + 1 + 1 + 9)


# The most parts an operator may allow an account (logic/accounts.MAX_PARTS_LIMIT), each of 67 UCS-2 characters; an
# Ethiopic letter (Amharic) is one of them and 3 bytes in UTF-8, as are Devanagari, Thai and CJK.
LONGEST_TEXT = "ሰ" * (255 * 67)
RECIPIENTS = [f"23480300{n:05d}" for n in range(200)]


def test_a_keyed_send_of_long_messages_that_died_while_storing_is_finished_by_its_retry(aws, api, monkeypatch):
    from sms_gateway_tools.admin import set_account

    # Given an account allowed the longest messages, with credits for 200 of them, and DynamoDB's transaction limit
    account = make_account(200 * 255)
    set_account(account_id=account["account_id"], max_parts=255)
    sizes = transactions_limited_as_dynamodb(monkeypatch)
    # And a keyed send of the longest Amharic text to 200 numbers whose request died after storing 25 of them
    body = {"from": "48974", "to": RECIPIENTS, "body": LONGEST_TEXT}
    stored = died_after_storing_25(api, monkeypatch, account, body, key="long-one")
    assert len(messages_of(account["account_id"], stored.reference_id)) == 25
    # When its client retries after the lease ran out
    retried = retried_after_the_lease(api, account, body, key="long-one")
    # Then the send is finished: all 200 stored and queued once, charged once, each write within DynamoDB's limit
    assert retried["statusCode"] == 200, retried
    assert json.loads(retried["body"])["reference_id"] == str(stored.reference_id)
    messages = messages_of(account["account_id"], stored.reference_id)
    assert sorted(m.msisdn for m in messages) == sorted(f"+{n}" for n in RECIPIENTS)
    assert sorted(queued_message_ids(aws)) == sorted(m.message_id for m in messages)
    assert balance(account["account_id"]) == 0
    assert max(sizes) <= MAX_TRANSACTION_BYTES


def test_a_cancel_of_a_scheduled_batch_of_the_longest_messages_refunds_them_all(aws, api, monkeypatch):
    from sms_gateway_tools.admin import set_account

    # Given an account allowed the longest messages, and DynamoDB's transaction limit
    account = make_account(120 * 255)
    set_account(account_id=account["account_id"], max_parts=255)
    sizes = transactions_limited_as_dynamodb(monkeypatch)
    # And a send of the longest Amharic text to 120 numbers, scheduled an hour ahead (about 52 KB an item)
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = {"from": "48974", "to": RECIPIENTS[:120], "body": LONGEST_TEXT, "send_at": send_at}
    status, sent = call(api, account["token"], "POST", "/ng/v1/sendsms", body)
    assert status == 200, sent
    assert balance(account["account_id"]) == 0
    # When the client cancels it
    status, cancelled = call(api, account["token"], "DELETE", f"/ng/v1/batches/{sent['reference_id']}")
    # Then every message is cancelled and refunded, each transaction within DynamoDB's limit (until 2026-12-07 99
    # of them went in one: over 5 MB of items, which DynamoDB refuses whole, and the cancel answered 500)
    assert (status, cancelled.get("refunded_credits")) == (200, 120 * 255), cancelled
    messages = messages_of(account["account_id"], int(sent["reference_id"]))
    assert {str(m.status) for m in messages} == {"cancelled"}
    assert balance(account["account_id"]) == 120 * 255
    assert max(sizes) <= MAX_TRANSACTION_BYTES


def test_a_finishing_retry_does_not_let_go_of_credits_its_send_holds_while_it_stores_the_rest(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.bootstrap import gateway
    from sms_gateway.errors import InsufficientCredits

    # Given a keyed send to 200 numbers, with exactly the credits for it, whose request died after storing 25
    account = make_account(200)
    body = {"from": "48974", "to": RECIPIENTS, "body": "Sale ends tonight"}
    stored = died_after_storing_25(api, monkeypatch, account, body, key="sale")
    assert balance(account["account_id"]) == 0
    # And another send of the account takes whatever credits it finds while the retry stores the rest
    real_reprice = DynamoStore._reprice
    taken: list[int] = []

    def another_send_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        written = real_reprice(self, *args, **kwargs)
        if found := balance(account["account_id"]):
            try:
                gateway().store.reserve_credits(account["account_id"], found)
                taken.append(found)
            except InsufficientCredits:
                pass
        return written

    monkeypatch.setattr(DynamoStore, "_reprice", another_send_meanwhile)
    # When its client retries after the lease ran out
    retried = retried_after_the_lease(api, account, body, key="sale")
    # Then the send is finished with the credits it held: the other send found none to take
    assert retried["statusCode"] == 200, retried
    assert json.loads(retried["body"])["reference_id"] == str(stored.reference_id)
    messages = messages_of(account["account_id"], stored.reference_id)
    assert sorted(queued_message_ids(aws)) == sorted(m.message_id for m in messages)
    assert len(messages) == 200
    assert taken == []
    assert balance(account["account_id"]) == 0


def test_a_finishing_retry_with_nothing_left_to_store_gives_back_what_its_send_no_longer_sends(aws, api, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import groups

    # Given a keyed send to a group of 30, whose request died after storing 25 of them
    account = make_account(100)
    members = RECIPIENTS[:30]
    group = groups.create_group(
        gateway().store,
        account_id=account["account_id"],
        default_country="NG",
        name="Thirty",
        members=members,
        now=utc_now(),
    ).group
    body = {"from": "48974", "to": [group.group_id], "body": "Doors open at 7"}
    stored = died_after_storing_25(api, monkeypatch, account, body, key="doors")
    assert balance(account["account_id"]) == 70
    # And the 5 members it did not store left the group meanwhile
    have = {m.msisdn.lstrip("+") for m in messages_of(account["account_id"], stored.reference_id)}
    gone = [number for number in members if number not in have]
    assert len(gone) == 5
    groups.remove_members(
        gateway().store,
        account_id=account["account_id"],
        default_country="NG",
        group_id=group.group_id,
        members=gone,
        now=utc_now(),
    )
    # When its client retries after the lease ran out
    retried = retried_after_the_lease(api, account, body, key="doors")
    # Then the 25 go out, and the 5 credits held for the members who left are given back
    assert retried["statusCode"] == 200, retried
    assert json.loads(retried["body"])["recipients_processed"] == 25
    assert len(queued_message_ids(aws)) == 25
    (batch,) = batches_of(account["account_id"])
    assert (batch.cost, batch.recipients) == (25, 25)
    assert balance(account["account_id"]) == 75
