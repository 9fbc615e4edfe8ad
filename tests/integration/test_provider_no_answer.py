"""Every upstream adapter tells a submit that never left us from one the upstream may have taken without answering."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sms_gateway.adapters.providers.simulator import SimulatorProvider
from sms_gateway.errors import UpstreamError
from tests.integration import (
    test_provider_africastalking,
    test_provider_jasmin,
    test_provider_kannel,
    test_provider_ninebits,
    test_provider_twilio,
)


def simulator(handler: Callable[[httpx.Request], httpx.Response]) -> SimulatorProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return SimulatorProvider(name="simulator", url="http://127.0.0.1:9/", secret="s", client=client)


# Each adapter, how its tests build it, and whether the upstream answers a repeat of our reference with its first
# answer instead of sending the text again (the simulator by client_ref, 9bits by Idempotency-Key).
ADAPTERS: dict[str, tuple[Callable[..., Any], Any, bool]] = {
    "kannel": (test_provider_kannel.provider, test_provider_kannel.submit_request, False),
    "jasmin": (test_provider_jasmin.provider, test_provider_jasmin.submit_request, False),
    "twilio": (test_provider_twilio.provider, test_provider_twilio.submit_request, False),
    "africastalking": (test_provider_africastalking.provider, test_provider_africastalking.submit_request, False),
    "ninebits": (test_provider_ninebits.provider, test_provider_ninebits.submit_request, True),
    "simulator": (simulator, test_provider_kannel.submit_request, True),
}

NEVER_LEFT = [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("busy")]
MAYBE_TAKEN = [
    httpx.ReadTimeout("slow"),
    httpx.ReadError("reset"),
    httpx.WriteTimeout("slow"),
    httpx.WriteError("reset"),
    httpx.RemoteProtocolError("cut"),
]


def failure_of(adapter: str, error: Exception) -> UpstreamError:
    build, request, _ = ADAPTERS[adapter]

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(build(handler).submit(request()))
    return raised.value


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize("error", NEVER_LEFT, ids=lambda e: type(e).__name__)
def test_a_request_that_never_left_is_unavailable_and_may_go_to_the_fallback(adapter: str, error: Exception) -> None:
    failure = failure_of(adapter, error)
    assert (failure.permanent, failure.unavailable, failure.maybe_taken) == (False, True, False)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize("error", MAYBE_TAKEN, ids=lambda e: type(e).__name__)
def test_no_answer_after_the_request_left_says_the_upstream_may_have_the_message(
    adapter: str, error: Exception
) -> None:
    failure = failure_of(adapter, error)
    assert (failure.permanent, failure.maybe_taken) == (False, True)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_only_upstreams_that_answer_a_repeat_with_their_first_answer_say_they_deduplicate(adapter: str) -> None:
    build, _, deduplicates = ADAPTERS[adapter]
    assert getattr(build(lambda request: httpx.Response(500)), "deduplicates_submits", False) is deduplicates
