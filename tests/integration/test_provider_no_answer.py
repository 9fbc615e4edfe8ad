"""Every upstream adapter tells a submit that never left us from one the upstream may have taken without answering,
and keeps our credentials out of the upstream error texts it quotes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from sms_gateway.adapters.providers.simulator import SimulatorProvider
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import UpstreamError
from tests.integration import (
    test_provider_africastalking,
    test_provider_jasmin,
    test_provider_kannel,
    test_provider_ninebits,
    test_provider_twilio,
)

SIMULATOR_SECRET = "simulator-shared-secret"


def simulator(handler: Callable[[httpx.Request], httpx.Response], **overrides: Any) -> SimulatorProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = {"type": "simulator", "url": "http://127.0.0.1:9/", "secret": SIMULATOR_SECRET, **overrides}
    return SimulatorProvider.from_config("simulator", config, client=client)


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


def failure_answered(adapter: str, status: int, **config: Any) -> UpstreamError:
    build, request, _ = ADAPTERS[adapter]
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(build(lambda _: httpx.Response(status, text="<html>proxy page</html>"), **config).submit(request()))
    return raised.value


# Hosted APIs whose own edge answers 502/504 after taking our request; the self-hosted SMSCs (and the simulator) never
# answer so themselves: only a proxy the operator put in front of them does, which may or may not have passed it on.
HOSTED = ["africastalking", "ninebits", "twilio"]
SELF_HOSTED = ["jasmin", "kannel", "simulator"]


@pytest.mark.parametrize("adapter", HOSTED)
@pytest.mark.parametrize("status", [502, 504])
def test_a_hosted_apis_bad_gateway_or_gateway_timeout_says_it_may_have_the_message(adapter: str, status: int) -> None:
    # Given a hosted API whose edge passed the submit on and lost its answer
    # When it answers 502 Bad Gateway or 504 Gateway Timeout
    failure = failure_answered(adapter, status)
    # Then the upstream may have the message: never offered to the fallback (until 2026-12-06 Africa's Talking's was
    # offered there at once, and the text could go out twice)
    assert (failure.permanent, failure.maybe_taken) == (False, True)


@pytest.mark.parametrize("adapter", SELF_HOSTED)
@pytest.mark.parametrize("status", [502, 504])
def test_a_proxys_bad_gateway_or_gateway_timeout_in_front_of_an_smsc_goes_to_the_fallback_by_default(
    adapter: str, status: int
) -> None:
    # Given Kannel, Jasmin or the simulator behind a proxy that could not reach it (connection refused: 502; connect
    # timed out: 504), nothing sent, as during an outage of the SMSC
    # When the proxy answers so
    failure = failure_answered(adapter, status)
    # Then the message goes to the fallback at once (between 2026-12-06's two changes it was recorded
    # submitted-unconfirmed and never sent: every message of an outage lost)
    assert (failure.permanent, failure.unavailable, failure.maybe_taken) == (False, True, False)


@pytest.mark.parametrize("adapter", SELF_HOSTED)
@pytest.mark.parametrize("status", [502, 504])
def test_an_operator_whose_proxy_answers_so_after_passing_the_request_on_says_gateway_errors_maybe_taken(
    adapter: str, status: int
) -> None:
    failure = failure_answered(adapter, status, gateway_errors="maybe_taken")
    assert (failure.permanent, failure.maybe_taken) == (False, True)


@pytest.mark.parametrize("adapter", SELF_HOSTED)
@pytest.mark.parametrize("value", ["maybe-taken", "", True, ["maybe_taken"]])
def test_a_gateway_errors_that_is_not_unavailable_or_maybe_taken_is_refused_at_configuration(
    adapter: str, value: Any
) -> None:
    build, _, _ = ADAPTERS[adapter]
    with pytest.raises(ValueError, match="gateway_errors"):
        build(lambda _: httpx.Response(200), gateway_errors=value)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_a_503_was_not_served_and_goes_to_the_fallback(adapter: str) -> None:
    failure = failure_answered(adapter, 503)
    assert (failure.permanent, failure.unavailable, failure.maybe_taken) == (False, True, False)


# The credential each adapter sends, which an upstream's error answer must never carry into our errors and logs.
SECRETS = {
    "kannel": test_provider_kannel.CONFIG["password"],
    "jasmin": test_provider_jasmin.CONFIG["password"],
    "twilio": test_provider_twilio.AUTH_TOKEN,
    "africastalking": test_provider_africastalking.API_KEY,
    "ninebits": test_provider_ninebits.API_TOKEN,
    "simulator": SIMULATOR_SECRET,
}


def quoting_what_it_was_sent(request: httpx.Request) -> httpx.Response:
    """An upstream that refuses the request and quotes the credentials it was given (Jasmin does, for a password
    over 16 characters), in its own words and percent-encoded."""
    fields = dict(parse_qsl(request.url.query.decode())) | dict(parse_qsl(request.content.decode(errors="replace")))
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = base64.b64decode(value).decode().partition(":")[2] if scheme == "Basic" else value
    quoted = [fields.get("password", ""), request.headers.get("apikey", ""), given]
    text = "invalid credentials: " + " ".join(quoted) + " " + str(request.url.copy_with(path="/x"))
    return httpx.Response(400, json={"message": text, "code": 20003})


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_an_upstream_error_that_quotes_our_credentials_never_carries_them_into_our_errors(adapter: str) -> None:
    build, request, _ = ADAPTERS[adapter]
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(build(quoting_what_it_was_sent).submit(request()))
    assert "***" in raised.value.message
    assert SECRETS[adapter] not in raised.value.message


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize("status", [401, 404, 405, 407, 408])
def test_review_a_4xx_about_our_setup_never_fails_the_message(adapter: str, status: int) -> None:
    # Given an answer no upstream gives about a message: credentials a proxy in front asks for (401, 407), a url that
    # does not serve the upstream's API (404 Not Found, 405 Method Not Allowed: a wrong path, a port that is not
    # smsbox's sendsms port), or our request timed out before it was read (408)
    # When a message is submitted and gets it
    failure = failure_answered(adapter, status)
    # Then it is our setup, as a wrong password is: the route's fallback is offered the message at once, and without
    # one it is retried while the operator fixes it, never failed and refunded as if the number had been refused
    assert (failure.permanent, failure.unavailable, failure.maybe_taken) == (False, True, False)


def test_review_a_403_kannel_never_gives_is_a_proxy_refusing_our_setup() -> None:
    # Given a proxy or firewall in front of smsbox refusing our address: a 403 without Kannel's own words
    # (Kannel's 403s are "Authorization failed for sendsms" and "Not routable. Do not try again.")
    failure = failure_answered("kannel", 403)
    # Then the message is offered to the fallback or retried, as for Kannel's Authorization failed
    assert (failure.permanent, failure.unavailable, failure.maybe_taken) == (False, True, False)


# Kannel answers no id of its own (its DLRs carry our reference): any 2xx is its acceptance.
ANSWERING_AN_ID = sorted(set(ADAPTERS) - {"kannel"})
UNREADABLE_TAKES = {
    "no id": httpx.Response(200, json={}),
    "a proxy's page": httpx.Response(200, text="<html>proxy page</html>"),
}


@pytest.mark.parametrize("adapter", ANSWERING_AN_ID)
@pytest.mark.parametrize("answer", list(UNREADABLE_TAKES), ids=str)
def test_review_a_2xx_without_a_readable_id_says_the_upstream_may_have_the_message(adapter: str, answer: str) -> None:
    # Given an upstream (or a proxy in front of it) answering 2xx to a submit, without the id its answer carries
    # When the message is submitted
    failure = failure_answered_with(adapter, UNREADABLE_TAKES[answer])
    # Then the upstream took the request and may be sending it: never offered to the fallback, nor failed and refunded
    # (until 2026-12-07 the simulator's raised a KeyError or a JSON error that crashed the dispatch of its record, and
    # its null id was recorded as the id "None")
    assert (failure.permanent, failure.unavailable, failure.maybe_taken) == (False, False, True)


def failure_answered_with(adapter: str, answer: httpx.Response) -> UpstreamError:
    build, request, _ = ADAPTERS[adapter]
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(build(lambda _: answer).submit(request()))
    return raised.value


@pytest.mark.parametrize(
    "body", [{}, {"message_id": None}, {"message_id": ""}, ["7"], "<html>proxy page</html>"], ids=repr
)
def test_review_a_simulator_2xx_without_a_message_id_leaves_the_message_to_the_simulator(body: Any) -> None:
    from tests.fakes import FakeProvider, dispatched_through

    # Given the simulator (which answers a repeat of our client_ref with its first answer) answering 200 without a
    # message_id (or with a null or empty one), and a fallback on the route
    fallback = FakeProvider("fallback")
    answer = httpx.Response(200, text=body) if isinstance(body, str) else httpx.Response(200, json=body)
    # When the message is dispatched
    message, store = dispatched_through(simulator(lambda _: answer), fallback)
    # Then the dispatch ends without a crash, the fallback is never offered the message, and it waits for the
    # simulator alone, still charged
    assert fallback.submits == []
    assert (message.status, message.maybe_taken_by, message.submit_attempts) == (MessageStatus.QUEUED, "simulator", 1)
    assert store.accounts["7"].credits < 1000
