"""Sends and cancels through the real `api` handler on moto while DynamoDB keeps cancelling their transactions for
conflicts with other writes (TransactionConflict), as it does on AWS when many requests of one account write its
credits item at once (moto never does): each answers what it did, nothing is charged for what was not done."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.integration.test_batches_dialect import Api, send, stored_batches
from tests.integration.test_send_path import FakeContext, balance, load_function

AIRTEL = "2348020000000"
MTN = "2348030000000"


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


@contextmanager
def transactions_conflicting(when: Callable[[list[dict[str, Any]]], bool] = lambda writes: True) -> Iterator[None]:
    """Every TransactWriteItems whose writes `when` picks cancelled for a conflict on each of its items, as while
    other requests keep writing them (the account's credits item, on AWS, under many sends at once)."""
    from sms_gateway.adapters import dynamodb_transactions
    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    real = client.transact_write_items

    def conflicting(**request: Any) -> Any:
        writes = request["TransactItems"]
        if not when(writes):
            return real(**request)
        raise client.exceptions.TransactionCanceledException(
            {
                "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                "CancellationReasons": [{"Code": "TransactionConflict"} for _ in writes],
            },
            "TransactWriteItems",
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "transact_write_items", conflicting)
        patch.setattr(dynamodb_transactions, "back_off", lambda attempt: None)
        yield


def test_a_send_whose_transactions_dynamodb_keeps_cancelling_answers_503_and_charges_nothing(aws, account, api):
    # Given an account with 100 credits, and DynamoDB cancelling every transaction for conflicts with other writes
    account_id, token = account["account_id"], account["token"]
    with transactions_conflicting():
        # When it sends
        status, body = send(api, token, [AIRTEL, MTN])
    # Then it is told to send again (503: nothing was sent, nothing charged), not that it may be done in part (500)
    assert status == 503, body
    assert "try again" in body["message"], body
    # And nothing is charged, and no batch waits to go out
    assert balance(account_id) == 100
    assert [item["status"]["S"] for item in stored_batches(account_id)] in ([], ["failed"])
    # And once the conflicts pass, the same send goes out
    status, body = send(api, token, [AIRTEL, MTN])
    assert (status, body.get("recipients_processed")) == (200, 2), body
    assert balance(account_id) == 98
