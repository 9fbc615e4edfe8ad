"""The dispatcher benchmark's stand-in for DynamoDB: the conditional semantics it must keep, and its cap arithmetic."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from bench.bench_dispatcher_throughput import LATENCY, _slot_cap
from bench.remote_store import RemoteStore
from sms_gateway.domain.models import ClaimOutcome, Message
from sms_gateway.domain.status import MessageStatus
from sms_gateway.ports import ScopeHeld

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _queued(store: RemoteStore) -> Message:
    message = Message(
        message_id=1,
        reference_id=2,
        account_id="7",
        msisdn="+2348020000001",
        sender="BENCH",
        text="hi",
        encoding="GSM-7",
        parts=1,
        status=MessageStatus.QUEUED,
        created_at="2026-01-01T00:00:00Z",
    )
    store.messages[message.key] = message
    return message


def test_rate_limit_counters_never_grant_past_the_limit_and_take_back_what_is_given_back() -> None:
    store = RemoteStore("simulator", latency=0)
    assert store.take_tokens("account:7", 100, 30, 50) == 30
    assert store.take_tokens("account:7", 100, 30, 50) == 20
    assert store.take_tokens("account:7", 100, 1, 50) == 0
    assert store.take_tokens("account:7", 101, 5, 50) == 5
    store.give_back_tokens("account:7", 100, 10)
    assert store.take_tokens("account:7", 100, 30, 50) == 10


def test_a_held_scope_grants_nothing_in_its_seconds_and_says_until_when() -> None:
    # A benchmark upstream answering 429 with Retry-After makes the dispatcher hold its route's counters.
    store = RemoteStore("simulator", latency=0)
    store.hold_scope("route:mtn", 1003.5, first_second=1000, seconds=3)
    for second in (1000, 1002):
        with pytest.raises(ScopeHeld) as held:
            store.take_tokens("route:mtn", second, 5, 50)
        assert held.value.until == 1003.5
    assert store.take_tokens("route:mtn", 1003, 5, 50) == 5
    assert store.take_tokens("account:7", 1000, 5, 50) == 5
    assert store.requests["BatchWriteItem"] == 1


def test_a_message_is_claimed_once_and_each_request_is_counted_after_its_latency() -> None:
    store = RemoteStore("simulator", latency=0.01)
    message = _queued(store)
    started = time.perf_counter()
    first = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120)
    second = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120)
    assert time.perf_counter() - started >= 0.02
    assert (first.outcome, second.outcome) == (ClaimOutcome.CLAIMED, ClaimOutcome.HELD)
    change = store.transition(message.key, MessageStatus.SUBMITTED, now=NOW, upstream="simulator")
    assert change is not None and change.changed
    assert store.requests == {"UpdateItem": 3}


def test_the_route_table_sends_everything_to_the_default_upstream() -> None:
    table = RemoteStore("simulator", latency=0).route_table("simulator")
    assert table.choose("7", "mtn", "+2348020000001").upstreams == ("simulator",)


@pytest.mark.parametrize("in_flight", [8, 16, 32, 64, 128])
def test_a_full_in_flight_limit_caps_the_rate_as_the_notes_say(in_flight: int) -> None:
    # Each message holds its slot for the claim (one 5 ms store request) and the 50 ms submit: 90.9% of the bound
    bound = in_flight / LATENCY
    assert _slot_cap(in_flight, 0.005) / bound == pytest.approx(0.909, abs=0.0005)
