"""The local stack's moto: a cancelled transaction is rolled back from copies of the items it names only
(moto_server.make_transactions_copy_only_their_items), and leaves the table exactly as it was; a transaction sent
again under its ClientRequestToken is applied once (moto_server.remember_transaction_tokens)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import create_key_table


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    from sms_gateway_tools.localstack.moto_server import remember_transaction_tokens, serialise_dynamodb_writes

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    serialise_dynamodb_writes()
    remember_transaction_tokens()
    with mock_aws():
        client = boto3.client("dynamodb")
        create_key_table(client)
        for pk, sk in (("P1", "a"), ("P1", "b"), ("P2", "c"), ("P3", "d")):
            client.put_item(TableName="t", Item={"pk": {"S": pk}, "sk": {"S": sk}, "n": {"N": "1"}})
        yield client


def key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def everything(client: Any) -> list[dict[str, Any]]:
    return sorted(client.scan(TableName="t")["Items"], key=lambda item: (item["pk"]["S"], item["sk"]["S"]))


def writes(*, last_condition: str) -> list[dict[str, Any]]:
    return [
        {"Update": {"TableName": "t", "Key": key("P1", "a"), "UpdateExpression": "SET n = n + :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Put": {"TableName": "t", "Item": {**key("P1", "new"), "n": {"N": "7"}}}},
        {"Delete": {"TableName": "t", "Key": key("P2", "c")}},
        {"Update": {"TableName": "t", "Key": key("P1", "b"), "UpdateExpression": "SET n = n + :one",
                    "ConditionExpression": last_condition, "ExpressionAttributeValues": {":one": {"N": "1"}}}},
    ]  # fmt: skip


def test_a_cancelled_transaction_leaves_every_item_as_it_was(dynamodb):
    # Given four items in three partitions
    before = everything(dynamodb)
    # When a transaction that updates one, creates one and deletes one fails its last condition
    with pytest.raises(dynamodb.exceptions.TransactionCanceledException) as cancelled:
        dynamodb.transact_write_items(TransactItems=writes(last_condition="n = :one AND n > :one"))
    # Then it says which write failed, and the table is exactly as it was, the untouched partition included
    codes = [reason["Code"] for reason in cancelled.value.response["CancellationReasons"]]
    assert codes == ["None", "None", "None", "ConditionalCheckFailed"]
    assert everything(dynamodb) == before
    # And the items it named can still be written as usual afterwards
    dynamodb.update_item(TableName="t", Key=key("P1", "a"), UpdateExpression="SET n = :five",
                         ExpressionAttributeValues={":five": {"N": "5"}})  # fmt: skip
    assert dynamodb.get_item(TableName="t", Key=key("P1", "a"))["Item"]["n"] == {"N": "5"}


def test_a_transaction_that_goes_through_applies_all_its_writes(dynamodb):
    dynamodb.transact_write_items(TransactItems=writes(last_condition="n = :one"))
    assert [(i["pk"]["S"], i["sk"]["S"], i["n"]["N"]) for i in everything(dynamodb)] == [
        ("P1", "a", "2"),
        ("P1", "b", "2"),
        ("P1", "new", "7"),
        ("P3", "d", "1"),
    ]


def add_one(sk: str, condition: str = "attribute_exists(pk)") -> list[dict[str, Any]]:
    return [
        {"Update": {"TableName": "t", "Key": key("P1", sk), "UpdateExpression": "SET n = n + :one",
                    "ConditionExpression": condition, "ExpressionAttributeValues": {":one": {"N": "1"}}}},
    ]  # fmt: skip


def n(client: Any, sk: str) -> str:
    return str(client.get_item(TableName="t", Key=key("P1", sk))["Item"]["n"]["N"])


def test_a_transaction_sent_again_under_its_token_is_applied_once(dynamodb):
    # When the same transaction is sent twice under one token, as botocore does when an answer is lost
    first = dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="top-up-1")
    again = dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="top-up-1")
    # Then both succeed, answered alike, and it was applied once
    assert {k: v for k, v in again.items() if k != "ResponseMetadata"} == {
        k: v for k, v in first.items() if k != "ResponseMetadata"
    }
    assert n(dynamodb, "a") == "2"
    # And another token is another transaction
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="top-up-2")
    assert n(dynamodb, "a") == "3"


def test_other_writes_under_a_token_are_refused_and_change_nothing(dynamodb):
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="top-up-1")
    with pytest.raises(dynamodb.exceptions.IdempotentParameterMismatchException) as refused:
        dynamodb.transact_write_items(TransactItems=add_one("b"), ClientRequestToken="top-up-1")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert (n(dynamodb, "a"), n(dynamodb, "b")) == ("2", "1")


def test_a_cancelled_transaction_s_token_is_not_remembered(dynamodb):
    # Given a transaction under a token that its condition cancelled
    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(TransactItems=add_one("a", "n = :one AND n > :one"), ClientRequestToken="t-1")
    # When other writes are sent under the token, then the same ones
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="t-1")
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="t-1")
    # Then they are applied, once
    assert n(dynamodb, "a") == "2"


def test_a_token_is_forgotten_once_its_window_passed(dynamodb, monkeypatch):
    from sms_gateway_tools.localstack import moto_server

    monkeypatch.setattr(moto_server, "_TRANSACTION_TOKEN_SECONDS", 0)
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="top-up-1")
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="top-up-1")
    assert n(dynamodb, "a") == "3"


def test_the_oldest_tokens_are_dropped_past_the_tokens_held(dynamodb, monkeypatch):
    from sms_gateway_tools.localstack import moto_server

    monkeypatch.setattr(moto_server, "_TRANSACTION_TOKENS_HELD", 1)
    # Given a token held, then another: the only one now held
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="first")
    dynamodb.transact_write_items(TransactItems=add_one("b"), ClientRequestToken="second")
    # When both are sent again
    dynamodb.transact_write_items(TransactItems=add_one("b"), ClientRequestToken="second")
    dynamodb.transact_write_items(TransactItems=add_one("a"), ClientRequestToken="first")
    # Then the latest was applied once, the dropped one again
    assert (n(dynamodb, "a"), n(dynamodb, "b")) == ("3", "2")


def test_a_query_reading_an_item_while_an_update_of_it_lands_is_answered(dynamodb, monkeypatch):
    import threading

    from moto.dynamodb.models.dynamo_type import DynamoType

    # Given a Query that is part way through reading item P1/a (moto sums its attributes' sizes, Table.query), and an
    # UpdateItem that adds an attribute to that item landing just then (as a release queues a message that a cancel
    # raced by it is counting: logic/batches.py cancel_batch -> batch_view, logic/scheduled.py's transition)
    reader, armed, landed = threading.get_ident(), threading.Event(), threading.Event()
    size = DynamoType.size

    def size_while_the_update_lands(self):
        if threading.get_ident() == reader and armed.is_set():
            armed.clear()
            writer.start()
            landed.wait(timeout=1)  # the update lands here, unless it waits for the read's turn to end
        return size(self)

    def update():
        dynamodb.update_item(TableName="t", Key=key("P1", "a"), UpdateExpression="SET queued_at = :now",
                             ExpressionAttributeValues={":now": {"S": "2026-12-07T00:00:00Z"}})  # fmt: skip
        landed.set()

    writer = threading.Thread(target=update)
    monkeypatch.setattr(DynamoType, "size", size_while_the_update_lands)
    armed.set()
    # When the Query goes on, then it answers (DynamoDB reads an item whole, before or after a write of it), and the
    # update is applied too
    items = dynamodb.query(TableName="t", KeyConditionExpression="pk = :pk",
                           ExpressionAttributeValues={":pk": {"S": "P1"}})["Items"]  # fmt: skip
    writer.join()
    assert [item["sk"]["S"] for item in items] == ["a", "b"]
    assert dynamodb.get_item(TableName="t", Key=key("P1", "a"))["Item"]["queued_at"] == {"S": "2026-12-07T00:00:00Z"}
