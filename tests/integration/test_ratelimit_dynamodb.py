"""The DynamoDB rate-limit counters (DynamoStore.take_tokens / give_back_tokens) on moto."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sms_gateway.adapters import aws as clients
from sms_gateway.logic.ratelimit import RateLimiter, account_scope

SECOND = 1_767_398_400


@pytest.fixture
def store(aws: dict[str, str]) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store


def counter(aws: dict[str, str], scope: str, second: int) -> dict[str, Any] | None:
    found = clients.client("dynamodb").get_item(
        TableName=aws["TABLE_NAME"],
        Key={"pk": {"S": f"RATE#{scope}"}, "sk": {"S": str(second)}},
        ConsistentRead=True,
    )
    return found.get("Item")


def used(aws: dict[str, str], scope: str, second: int) -> int:
    item = counter(aws, scope, second)
    return int(item["used"]["N"]) if item else 0


def test_a_grant_within_the_limit_is_whole(aws, store):
    # Given a fresh second
    # When 10 tokens are asked of a limit of 50
    # Then all 10 are granted and counted
    assert store.take_tokens("account:a", SECOND, 10, 50) == 10
    assert used(aws, "account:a", SECOND) == 10


def test_the_counter_expires_a_minute_after_its_second(aws, store):
    store.take_tokens("account:a", SECOND, 1, 50)
    item = counter(aws, "account:a", SECOND)
    assert item is not None
    assert int(item["expires_at"]["N"]) == SECOND + 60


def test_near_the_limit_the_grant_is_what_is_left(aws, store):
    # Given 45 of 50 counted this second
    assert store.take_tokens("account:a", SECOND, 45, 50) == 45
    # When 10 more are asked
    # Then the 5 left are granted and the second is exactly full
    assert store.take_tokens("account:a", SECOND, 10, 50) == 5
    assert used(aws, "account:a", SECOND) == 50


def test_a_full_second_grants_nothing_and_changes_nothing(aws, store):
    # Given a full second
    store.take_tokens("account:a", SECOND, 50, 50)
    # When more is asked
    # Then nothing is granted and the counter stays at the limit
    assert store.take_tokens("account:a", SECOND, 1, 50) == 0
    assert used(aws, "account:a", SECOND) == 50


def test_asking_for_more_than_the_limit_on_a_fresh_second_gets_the_limit(aws, store):
    assert store.take_tokens("account:a", SECOND, 500, 50) == 50
    assert used(aws, "account:a", SECOND) == 50


def test_a_new_second_starts_fresh_and_scopes_are_separate(aws, store):
    # Given a full second for one account
    store.take_tokens("account:a", SECOND, 50, 50)
    # When the next second comes, or another scope asks in the same second
    # Then each gets its whole grant
    assert store.take_tokens("account:a", SECOND + 1, 50, 50) == 50
    assert store.take_tokens("account:b", SECOND, 50, 50) == 50
    assert used(aws, "account:a", SECOND) == 50


def test_given_back_tokens_can_be_taken_again(aws, store):
    # Given a full second, 20 of whose tokens are given back
    store.take_tokens("route:sim", SECOND, 200, 200)
    store.give_back_tokens("route:sim", SECOND, 20)
    # Then exactly those 20 can be taken again
    assert store.take_tokens("route:sim", SECOND, 50, 200) == 20
    assert used(aws, "route:sim", SECOND) == 200


def test_a_give_back_never_creates_a_counter(aws, store):
    store.give_back_tokens("route:sim", SECOND, 20)
    assert counter(aws, "route:sim", SECOND) is None


@pytest.mark.parametrize("wanted", [10, 7])
def test_threads_racing_for_one_second_get_exactly_the_limit(aws, store, wanted):
    # Given 20 dispatchers asking `wanted` tokens each of a limit of 50, all at once (7 leaves a partial grant)
    granted: list[int] = []
    start = threading.Barrier(20)

    def ask() -> None:
        start.wait()
        granted.append(store.take_tokens("account:a", SECOND, wanted, 50))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then exactly 50 were granted in total, and the counter says so
    assert len(granted) == 20
    assert sum(granted) == 50
    assert used(aws, "account:a", SECOND) == 50


def test_the_limiter_over_dynamodb_waits_for_the_next_second(aws, store):
    # Given an account whose current second is full
    store.take_tokens("account:a", SECOND, 50, 50)
    now = [SECOND + 0.5]

    async def sleep(delay: float) -> None:
        now[0] += delay

    rate = RateLimiter(store, clock=lambda: now[0], sleep=sleep)
    # When a dispatcher asks for 10
    granted = asyncio.run(rate.acquire([account_scope("a", 50)], 10))
    # Then it got them in the next second
    assert granted == 10
    assert used(aws, "account:a", SECOND + 1) == 10
