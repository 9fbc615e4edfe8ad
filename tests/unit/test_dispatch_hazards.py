"""Dispatch hazards found in review, each a way a message could be sent twice, lost or wrongly settled."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from sms_gateway.domain.models import DeliveryReportMode
from sms_gateway.errors import UpstreamError
from sms_gateway.logic.dispatch import dispatch
from tests.fakes import FakeProvider, InMemoryStore, cinema_store
from tests.unit.test_logic import (
    NOW,
    Crash,
    RememberingUpstream,
    RouteFullLimiter,
    command,
    dispatch_deps,
    send,
)


@pytest.fixture
def store() -> InMemoryStore:
    return cinema_store()


def test_a_taken_over_message_held_back_by_its_route_limit_is_never_offered_to_another_upstream(store):
    # Given a deduplicating fallback that took a message (the primary answered 503) just before its dispatcher died
    primary, fallback = FakeProvider("primary"), RememberingUpstream("fallback", dies_after_submit=True)
    primary.failure = UpstreamError("503", permanent=False, unavailable=True)
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    route = replace(dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback])
    with pytest.raises(Crash):
        asyncio.run(dispatch(record, route))
    [message] = store.messages.values()
    assert fallback.delivered_refs == [message.key.to_ref()]  # the fallback has it: it is on its way to the phone
    # When the record comes back after the claim lapsed, while the fallback is at its own rate limit: the claim is
    # taken over and the message is to be asked again of the fallback alone, which is held back by the route limit
    fallback.dies_after_submit = False
    later = NOW + timedelta(minutes=5)
    limited = replace(
        route,
        clock=lambda: later,
        limiter=RouteFullLimiter(),
        route_limit=lambda name: 10 if name == "fallback" else None,
    )
    outcome = asyncio.run(dispatch(record, limited))
    assert outcome.taken_over == 1 and outcome.needs_retry
    # And it comes back a second later, the primary healthy again and the fallback's second not full
    primary.failure = None
    asyncio.run(dispatch(record, replace(route, clock=lambda: later + timedelta(seconds=2))))
    # Then the primary must not be offered it: the fallback may already have delivered it (sent twice otherwise)
    assert primary.submits[1:] == [], "the message went out a second time, through the primary"
    assert store.messages[message.key].maybe_taken_by == "fallback"
