"""transact_until_decided against a client whose transactions DynamoDB cancels (a fake: moto never cancels for
conflicts or throttling): what it tries again, and how long it may wait in all, a Lambda's time being short."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sms_gateway.adapters import dynamodb_transactions
from sms_gateway.adapters.dynamodb_transactions import MAX_TRANSACTION_ATTEMPTS, transact_until_decided
from sms_gateway.errors import TransactionUndecided

WRITES: list[dict[str, Any]] = [{"Update": {"Key": "the account"}}, {"Put": {"Item": "an opt-out"}}]
# What a backoff waits at most, jitter included, in all: a webhook function stops at 10 s.
MOST_WAITED_WHEN_THROTTLED = 0.3


class Cancelled(Exception):
    """botocore's TransactionCanceledException, as far as transact reads it."""

    def __init__(self, codes: list[str]) -> None:
        super().__init__("Transaction cancelled")
        self.response = {"CancellationReasons": [{"Code": code} for code in codes]}


class CancellingClient:
    """Cancels its transactions with `cancellations` in turn (each the code of every write), then applies them."""

    exceptions = SimpleNamespace(TransactionCanceledException=Cancelled)

    def __init__(self, *cancellations: list[str]) -> None:
        self.cancellations = list(cancellations)
        self.calls = 0

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        assert request["TransactItems"] == WRITES
        self.calls += 1
        if self.cancellations:
            raise Cancelled(self.cancellations.pop(0))
        return {}


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(dynamodb_transactions, "time", SimpleNamespace(sleep=waits.append))
    return waits


@pytest.mark.parametrize(
    "throttled",
    [["ThrottlingError", "None"], ["None", "ProvisionedThroughputExceeded"]],
    ids=["ThrottlingError", "ProvisionedThroughputExceeded"],
)
def test_a_transaction_throttled_twice_is_applied_at_its_third_try_after_a_short_backoff(slept, throttled):
    # Given DynamoDB throttling a transaction twice (its table's or index's capacity, for a moment)
    client = CancellingClient(throttled, throttled)
    # When it is written
    refused = transact_until_decided(client, WRITES)
    # Then it is applied at its third try, not given up at once, after waiting a little between tries
    assert refused == [None, None]
    assert client.calls == 3
    assert len(slept) == 2
    assert 0 < sum(slept) <= MOST_WAITED_WHEN_THROTTLED


def test_a_transaction_throttled_on_every_try_gives_up_within_a_few_hundred_ms(slept):
    # Given DynamoDB throttling every transaction
    client = CancellingClient(*[["ThrottlingError", "None"]] * 100)
    # When one is written, it is given up, undecided (its caller answers 503: nothing was written)
    with pytest.raises(TransactionUndecided, match="throttled"):
        transact_until_decided(client, WRITES)
    # Then after a few tries and a few hundred milliseconds of waiting at most, not the caller's whole timeout
    assert 1 < client.calls < MAX_TRANSACTION_ATTEMPTS
    assert sum(slept) <= MOST_WAITED_WHEN_THROTTLED


def test_a_transaction_refused_for_another_reason_is_not_tried_again(slept):
    # Given DynamoDB refusing a transaction for a reason no retry changes (an item collection full)
    client = CancellingClient(["None", "ItemCollectionSizeLimitExceeded"])
    # When it is written, it is given up at once, without waiting
    with pytest.raises(TransactionUndecided, match="ItemCollectionSizeLimitExceeded"):
        transact_until_decided(client, WRITES)
    assert (client.calls, slept) == (1, [])


def test_a_transaction_conflicting_on_every_try_waits_only_between_its_tries(slept):
    # Given DynamoDB cancelling every transaction for conflicts with other writes of its items
    client = CancellingClient(*[["TransactionConflict", "TransactionConflict"]] * 100)
    # When one is written, it is given up after its tries
    with pytest.raises(TransactionUndecided, match="cancelled 6 times for conflicts"):
        transact_until_decided(client, WRITES)
    assert client.calls == MAX_TRANSACTION_ATTEMPTS
    # Then it waited between its tries only, not once more after the last (the longest wait of all, up to ~1 s of a
    # short Lambda's time spent before its caller could answer "try again")
    assert len(slept) == MAX_TRANSACTION_ATTEMPTS - 1
