"""The local stack's moto: a cancelled transaction is rolled back from copies of the items it names only
(moto_server.make_transactions_copy_only_their_items), and leaves the table exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import create_key_table


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    from sms_gateway_tools.localstack.moto_server import serialise_dynamodb_writes

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    serialise_dynamodb_writes()
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
