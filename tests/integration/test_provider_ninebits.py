"""9bits-compatible upstream adapter: our own /ng/v1/sendsms dialect spoken to another gateway, its DLRs (our own
DLR callback body, Standard Webhooks signed) and its inbound SMS (the seeds' "Receive SMS", Bearer token)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from sms_gateway.adapters.providers import FACTORIES
from sms_gateway.adapters.providers.ninebits import NinebitsProvider
from sms_gateway.domain.models import (
    CallbackRequest,
    DeliveryReportMode,
    Message,
    StatusChange,
    StoredInbound,
    SubmitRequest,
)
from sms_gateway.domain.status import MessageStatus
from sms_gateway.domain.webhooks import sign
from sms_gateway.errors import CallbackRejected, UpstreamError
from sms_gateway.logic.inbound import inbound_notification
from sms_gateway.logic.notify import dlr_notification

API_TOKEN = "9bits-api-token"
WEBHOOK_TOKEN = "their-webhook-token-for-us"
SECRET = "whsec_" + base64.b64encode(b"a 32 byte signing key, exactly!!").decode()
REF = "1001.71800327346180097.71800327346180098"
THEIR_REFERENCE = "71800327346180555"
DLR_URL = "https://gw.example.com/callbacks/ninebits/dlr"
INBOUND_URL = "https://gw.example.com/callbacks/ninebits/inbound"
CONFIG = {
    "type": "ninebits",
    "url": "https://app.9bits.net:2081/",
    "token": API_TOKEN,
    "webhook_token": WEBHOOK_TOKEN,
    "webhook_secret": SECRET,
}


def provider(handler: Callable[[httpx.Request], httpx.Response] | None = None, **overrides: Any) -> NinebitsProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler or (lambda request: httpx.Response(500))))
    config = {key: value for key, value in {**CONFIG, **overrides}.items() if value is not None}
    return NinebitsProvider.from_config("ninebits", config, client=client)


def answer(status: int, body: dict[str, Any], **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def submit_request(dlr_url: str | None = DLR_URL) -> SubmitRequest:
    return SubmitRequest(
        client_ref=REF, sender="48974", msisdn="+2348020000000", text="Hello Buddy. Let's go!", dlr_url=dlr_url
    )


ACCEPTED = {
    "status_code": 200,
    "message": "request is being processed",
    "reference_id": THEIR_REFERENCE,
    "recipients_processed": 1,
}


# --- submit -------------------------------------------------------------------------------------------------------


def test_submit_speaks_the_9bits_dialect_and_keeps_their_reference_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ACCEPTED)

    result = asyncio.run(provider(handler).submit(submit_request()))

    assert result.upstream_message_id == THEIR_REFERENCE
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://app.9bits.net:2081/ng/v1/sendsms"
    assert request.headers["authorization"] == f"Bearer {API_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == REF
    assert json.loads(request.content) == {
        "from": "48974",
        "to": "2348020000000",
        "message": "Hello Buddy. Let's go!",
        "ref_id": REF,
        "delivery_report": "yes",
    }


def test_no_dlr_url_asks_for_no_delivery_reports() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ACCEPTED)

    asyncio.run(provider(handler).submit(submit_request(dlr_url=None)))
    assert json.loads(seen[0].content)["delivery_report"] == "none"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "invalid number '12': too short"),
        (400, "sender '48974' is not registered to this account"),
    ],
)
def test_refusals_are_permanent(status: int, message: str) -> None:
    body = {"status_code": status, "message": message}
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable) == (True, False)
    assert message in raised.value.message


@pytest.mark.parametrize(
    ("status", "message"), [(401, "missing or invalid bearer token"), (404, "not found")], ids=["token", "url"]
)
def test_a_refusal_of_our_token_or_url_goes_to_the_fallback(status: int, message: str) -> None:
    # Given an upstream that no longer knows our token (revoked, rotated there first), or a url that is not its API
    body = {"status_code": status, "message": message}
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    # Then it is our setup, not the message: the route's fallback is offered it, and without one it is retried (as
    # for Twilio's and Africa's Talking's 401/403) rather than failed and refunded at once
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)
    assert message in raised.value.message


def test_no_credit_upstream_is_transient_and_goes_elsewhere() -> None:
    body = {"status_code": 402, "message": "this send costs 1 credits, more than the balance"}
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(402, body)).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)


def test_a_conflict_on_our_ref_waits_for_the_same_upstream() -> None:
    body = {"status_code": 409, "message": "a request with this idempotency key is still in progress"}
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(409, body)).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable, raised.value.retry_after) == (False, False, 5.0)
    # The wait is for this reference alone: the dispatcher's other records go on submitting to 9bits meanwhile
    assert raised.value.per_message


def test_throttles_server_errors_and_timeouts_are_transient() -> None:
    with pytest.raises(UpstreamError) as throttled:
        asyncio.run(provider(answer(429, {"message": "slow down"}, **{"Retry-After": "2"})).submit(submit_request()))
    assert (throttled.value.permanent, throttled.value.retry_after, throttled.value.unavailable) == (False, 2.0, False)
    with pytest.raises(UpstreamError) as failed:
        asyncio.run(provider(answer(503, {"message": "busy"})).submit(submit_request()))
    # A 503 was not served: offered to the fallback, unlike a 500/502/504 they may have done
    assert (failed.value.permanent, failed.value.unavailable, failed.value.maybe_taken) == (False, True, False)

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(UpstreamError) as timed_out:
        asyncio.run(provider(timeout).submit(submit_request()))
    assert timed_out.value.permanent is False


def test_a_200_without_reference_id_is_not_a_take() -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(200, {"status_code": 200})).submit(submit_request()))
    assert raised.value.permanent is False


# --- delivery reports -------------------------------------------------------------------------------------------


def their_dlr_body(status: MessageStatus, error_code: str | None = None) -> str:
    """The body their notifier posts: our own logic/notify.py `dlr_notification` payload, compact JSON."""
    message = Message(
        message_id=71800327346180556,
        reference_id=int(THEIR_REFERENCE),
        account_id="77",
        msisdn="+2348020000000",
        telco="airtel",
        sender="48974",
        text="Hello Buddy. Let's go!",
        encoding="GSM-7",
        parts=1,
        status=status,
        status_at={str(status): "2026-11-22T01:05:00.000000Z"},
        sequence=3,
        ref_id=REF,
        delivery_report=DeliveryReportMode.YES,
        error_code=error_code,
        reported_at="2026-11-22T01:04:59.000000Z",
        created_at="2026-11-22T01:00:00.000000Z",
    )
    notification = dlr_notification(StatusChange(message=message, changed=True))
    assert notification is not None
    return json.dumps(notification["payload"], separators=(",", ":"))


def signed(
    body: str, *, url: str = DLR_URL, secret: str = SECRET, timestamp: int | None = None, webhook_id: str = "msg_2b"
) -> CallbackRequest:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return CallbackRequest(
        method="POST",
        url=url,
        headers={
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": stamp,
            "webhook-signature": sign(secret, webhook_id, stamp, body),
        },
        body=body,
    )


@pytest.mark.parametrize(
    ("their_status", "ours", "error_code"),
    [
        (MessageStatus.SUBMITTED, MessageStatus.SUBMITTED, None),
        (MessageStatus.QUEUED, MessageStatus.SUBMITTED, None),
        (MessageStatus.DELIVERED, MessageStatus.DELIVERED, None),
        (MessageStatus.FAILED, MessageStatus.FAILED, "upstream_rejected"),
        (MessageStatus.EXPIRED, MessageStatus.EXPIRED, None),
        (MessageStatus.REJECTED, MessageStatus.REJECTED, "opted_out"),
        (MessageStatus.CANCELLED, MessageStatus.FAILED, None),
    ],
)
def test_a_signed_dlr_maps_to_our_status_and_finds_our_message(
    their_status: MessageStatus, ours: MessageStatus, error_code: str | None
) -> None:
    request = signed(their_dlr_body(their_status, error_code))
    ninebits = provider()

    assert ninebits.verify_callback(request) is True
    (report,) = ninebits.parse_delivery_reports(request)

    assert report.status is ours
    assert report.client_ref == REF
    assert report.upstream_message_id == THEIR_REFERENCE
    assert report.error_code == error_code
    assert report.reported_at == "2026-11-22T01:04:59.000000Z"


def test_standard_webhooks_reference_signature() -> None:
    # The example from the Standard Webhooks specification's reference libraries
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body) == expected


def test_forged_tampered_stale_or_unsigned_dlrs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The provider's clock stands still at a whole second: a stamp 301 s ahead made from the real clock was accepted
    # when a second began between making it and checking it (300.x s ahead by then, within the tolerance)
    now = float(int(time.time()))
    monkeypatch.setattr("sms_gateway.adapters.providers.ninebits.time", SimpleNamespace(time=lambda: now))
    ninebits = provider()
    body = their_dlr_body(MessageStatus.DELIVERED)
    good = signed(body)
    assert ninebits.verify_callback(good) is True
    # tampered body
    assert ninebits.verify_callback(good.model_copy(update={"body": body.replace("delivered", "failed")})) is False
    # signed with another secret
    assert ninebits.verify_callback(signed(body, secret="whsec_" + base64.b64encode(b"x" * 32).decode())) is False
    # too old, or from the future
    assert ninebits.verify_callback(signed(body, timestamp=int(now) - 301)) is False
    assert ninebits.verify_callback(signed(body, timestamp=int(now) + 301)) is False
    # another id than the one signed
    assert ninebits.verify_callback(good.model_copy(update={"headers": {**good.headers, "webhook-id": "b"}})) is False
    # no signature at all, even with the right bearer token: a DLR must be signed once we know the secret
    unsigned = CallbackRequest(
        method="POST", url=DLR_URL, headers={"authorization": f"Bearer {WEBHOOK_TOKEN}"}, body=body
    )
    assert ninebits.verify_callback(unsigned) is False
    # a signature header with nothing in it, or only another scheme's signature
    for value in ("", "v1a,abc", "v2," + good.headers["webhook-signature"].partition(",")[2]):
        headers = {**good.headers, "webhook-signature": value}
        assert ninebits.verify_callback(good.model_copy(update={"headers": headers})) is False


def test_a_timestamp_too_long_for_int_is_refused_not_raised() -> None:
    # Given an unauthenticated DLR callback whose webhook-timestamp is digits, more than int() converts
    body = their_dlr_body(MessageStatus.DELIVERED)
    good = signed(body)
    forged = good.model_copy(update={"headers": {**good.headers, "webhook-timestamp": "9" * 5000}})
    # When it is verified, then it is refused like any stale timestamp (an exception is an unhandled 500 of the
    # webhook function, counted by WebhookErrorRateAlarm, which anyone can trigger without credentials)
    assert provider().verify_callback(forged) is False


def test_any_one_of_several_signatures_may_match() -> None:
    body = their_dlr_body(MessageStatus.DELIVERED)
    request = signed(body)
    both = f"v1,bm90IGl0 {request.headers['webhook-signature']}"
    assert provider().verify_callback(
        request.model_copy(update={"headers": {**request.headers, "webhook-signature": both}})
    )


def test_a_raw_secret_works_too_and_no_secret_means_signatures_cannot_verify() -> None:
    body = their_dlr_body(MessageStatus.DELIVERED)
    assert provider(webhook_secret="plain-shared-secret").verify_callback(signed(body, secret="plain-shared-secret"))
    assert provider(webhook_secret=None).verify_callback(signed(body)) is False


def test_without_a_secret_a_dlr_may_come_with_the_bearer_token() -> None:
    body = their_dlr_body(MessageStatus.DELIVERED)
    ninebits = provider(webhook_secret=None)
    bearer = CallbackRequest(
        method="POST", url=DLR_URL, headers={"authorization": f"Bearer {WEBHOOK_TOKEN}"}, body=body
    )
    assert ninebits.verify_callback(bearer) is True
    forged = bearer.model_copy(update={"headers": {"authorization": "Bearer guessed"}})
    assert ninebits.verify_callback(forged) is False


def test_a_gateway_upstream_that_signs_and_sends_the_bearer_is_verified_by_the_token_we_have() -> None:
    # Given a 9bits upstream configured with its webhook_token only, whose notifier (this gateway's own, for an
    # account there with a webhook secret) signs each callback and also sends the bearer token
    body = their_dlr_body(MessageStatus.DELIVERED)
    ninebits = provider(webhook_secret=None)
    request = signed(body, secret="whsec_" + base64.b64encode(b"theirs" * 6).decode())
    with_bearer = request.model_copy(
        update={"headers": {**request.headers, "authorization": f"Bearer {WEBHOOK_TOKEN}"}}
    )
    # Then the token verifies it (a signature we have no secret for is no reason to refuse every callback); a wrong
    # token still does not
    assert ninebits.verify_callback(with_bearer) is True
    wrong = {**request.headers, "authorization": "Bearer guessed"}
    assert ninebits.verify_callback(request.model_copy(update={"headers": wrong})) is False


@pytest.mark.parametrize("suffix", ["?x=1", "/?x=1", "?token=abc&ref=1", "/"])
def test_a_dlr_must_be_signed_once_we_know_the_secret_whatever_its_query(suffix: str) -> None:
    # Given the secret configured, an unsigned DLR with the right bearer token, at the DLR path with a query added
    body = their_dlr_body(MessageStatus.DELIVERED)
    unsigned = CallbackRequest(
        method="POST", url=DLR_URL + suffix, headers={"authorization": f"Bearer {WEBHOOK_TOKEN}"}, body=body
    )
    # Then it is refused like one without the query
    assert provider().verify_callback(unsigned) is False


def test_malformed_dlrs_are_rejected() -> None:
    ninebits = provider()
    for body in ("not json", "[]", json.dumps({"status": "teleported", "ref_id": REF}), json.dumps({"ref_id": REF})):
        with pytest.raises(CallbackRejected):
            ninebits.parse_delivery_reports(CallbackRequest(method="POST", url=DLR_URL, body=body))


# --- inbound ------------------------------------------------------------------------------------------------------


def their_inbound_body() -> str:
    """Their inbound forward: the seeds' "Receive SMS" body as our logic/inbound.py builds it."""
    stored = StoredInbound(
        inbound_id=71800327346190000,
        account_id="77",
        upstream="their-smsc",
        msisdn="+2348020000000",
        telco="mtn",
        to="48974",
        text="When was the last time you went to the cinema?",
        session_id="71800327346190000",
        received_at="2024-01-02T23:50:37.000000Z",
    )
    return json.dumps(inbound_notification(stored)["payload"], separators=(",", ":"))


def bearer(body: str, token: str | None = WEBHOOK_TOKEN) -> CallbackRequest:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return CallbackRequest(method="POST", url=INBOUND_URL, headers=headers, body=body)


def test_their_receive_sms_callback_verifies_by_bearer_and_parses() -> None:
    ninebits = provider()
    request = bearer(their_inbound_body())

    assert ninebits.verify_callback(request) is True
    sms = ninebits.parse_inbound(request)

    assert sms.upstream == "ninebits"
    assert (sms.msisdn, sms.to) == ("2348020000000", "48974")
    assert sms.text == "When was the last time you went to the cinema?"
    assert sms.received_at == "2024-01-02T23:50:37.000000Z"
    # the same callback again gets the same id, so it is stored once
    assert sms.upstream_message_id == ninebits.parse_inbound(bearer(their_inbound_body())).upstream_message_id


# Seed 2's "Receive SMS" body.
SEED_INBOUND = {
    "type": "two-way sms",
    "telco": "mtn",
    "from": "2348020000000",
    "to": "48974",
    "message": "When was the last time you went to the cinema?",
    "session_id": "67543uhn3",
    "sent_date": "2024-01-02T23:50:37.000000Z",
    "ref_id": "873ghf8749956778gf5",
}


def test_the_seed_example_parses() -> None:
    sms = provider().parse_inbound(bearer(json.dumps(SEED_INBOUND)))
    assert (sms.msisdn, sms.to, sms.text) == ("2348020000000", "48974", SEED_INBOUND["message"])


def test_their_session_and_telco_are_kept_and_their_ref_id_is_not_taken_for_the_clients() -> None:
    # Given their forward of a reply to a message we sent through them, which they echo our ref_id in
    seed = {**SEED_INBOUND, "ref_id": REF}
    sms = provider().parse_inbound(bearer(json.dumps(seed)))
    assert (sms.session_id, sms.telco) == ("67543uhn3", "mtn")
    # Their ref_id is the one we submitted (our message's reference), never a client's: a reply's ref_id is the
    # client's own, of the message the reply answers (docs/dialects/9bits.md)
    assert REF not in sms.model_dump_json()


def test_submit_names_the_session_so_a_reply_continues_theirs() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ACCEPTED)

    request = submit_request().model_copy(update={"session_id": "67543uhn3"})
    asyncio.run(provider(handler).submit(request))
    asyncio.run(provider(handler).submit(submit_request()))
    assert [json.loads(sent.content).get("session_id") for sent in seen] == ["67543uhn3", None]


def test_a_signed_inbound_uses_the_webhook_id() -> None:
    body = their_inbound_body()
    request = signed(body, url=INBOUND_URL, webhook_id="msg_inbound_1")
    ninebits = provider()
    assert ninebits.verify_callback(request) is True
    assert ninebits.parse_inbound(request).upstream_message_id == "msg_inbound_1"


@pytest.mark.parametrize("token", [None, "", "guessed", WEBHOOK_TOKEN + "x"])
def test_inbound_without_the_right_bearer_is_refused(token: str | None) -> None:
    assert provider().verify_callback(bearer(their_inbound_body(), token=token)) is False


def test_inbound_missing_fields_is_rejected() -> None:
    with pytest.raises(CallbackRejected):
        provider().parse_inbound(bearer(json.dumps({"type": "two-way sms", "from": "2348020000000"})))


@pytest.mark.parametrize("field", ["from", "to", "message"])
@pytest.mark.parametrize("value", [None, True, ["2348020000000"], {"number": "2348020000000"}], ids=repr)
def test_inbound_whose_numbers_or_text_are_null_or_no_text_is_refused_not_taken_as_the_word_none(
    field: str, value: Any
) -> None:
    # Given their forward of an SMS whose sender (or number, or text) is JSON null, or not text at all
    body = json.dumps({**SEED_INBOUND, field: value})
    # Then it is refused (the webhook's 400), naming the field, never stored from the sender "None"
    with pytest.raises(CallbackRejected, match=f"`{field}`"):
        provider().parse_inbound(bearer(body))


def test_inbound_numbers_written_as_json_numbers_are_read_as_their_digits() -> None:
    body = json.dumps({**SEED_INBOUND, "from": 2348020000000, "to": 48974})
    sms = provider().parse_inbound(bearer(body))
    assert (sms.msisdn, sms.to) == ("2348020000000", "48974")


def test_configuration() -> None:
    assert isinstance(FACTORIES["ninebits"]("ninebits", dict(CONFIG)), NinebitsProvider)
    with pytest.raises(ValueError, match="webhook_token or webhook_secret"):
        NinebitsProvider.from_config("ninebits", {"url": "https://x", "token": API_TOKEN})


def test_signature_matches_an_independent_computation() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, b"id.1700000000.{}", hashlib.sha256).digest()
    assert sign(SECRET, "id", "1700000000", "{}") == "v1," + base64.b64encode(digest).decode()


def test_a_500_that_may_have_been_done_in_part_is_asked_again_of_the_same_upstream_never_the_fallback() -> None:
    from datetime import UTC, datetime

    from sms_gateway.domain.models import Recipient, SendCommand
    from sms_gateway.logic.dispatch import DispatchDependencies, dispatch
    from sms_gateway.logic.send import SendDependencies, accept_send
    from tests.fakes import FakeProvider, RecordingQueue, RecordingScheduler, cinema_store

    now = datetime(2026, 1, 2, 23, 50, 37, tzinfo=UTC)
    store, queue = cinema_store(), RecordingQueue()
    send_deps = SendDependencies(
        accounts=store, messages=store, dispatch_queue=queue, scheduler=RecordingScheduler(), prices=store
    )
    recipients = (Recipient(msisdn="+2348020000000"),)
    accept_send(
        store.accounts["7"],
        SendCommand(account_id="7", sender="48974", text="hi", recipients=recipients),
        send_deps,
        now=now,
    )
    # Given a 9bits-compatible primary answering its documented 500: "something failed that no route expected ...
    # the request may have been done in part, so send it again under the same Idempotency-Key"
    # (docs/dialects/9bits.md), and a fallback upstream
    body = {"status_code": 500, "message": "internal error (request id 3f2c...): it may have been done in part"}
    ninebits, fallback = provider(answer(500, body)), FakeProvider("fallback")
    deps = DispatchDependencies(
        messages=store,
        accounts=store,
        upstreams_for=lambda _: [ninebits, fallback],
        callback_base_url="https://gw.example",
        clock=lambda: now,
    )
    # When the message is dispatched
    outcome = asyncio.run(dispatch(queue.commands[0], deps))
    # Then the fallback is not offered it (9bits may be sending it: two copies on the phone); the record comes back
    # for 9bits alone, which answers the repeat of our Idempotency-Key with its first answer
    [message] = store.messages.values()
    assert fallback.submits == []
    assert outcome.retry == [message.message_id]
    assert store.messages[message.key].maybe_taken_by == "ninebits"


def test_a_2xx_without_a_reference_id_is_handled_as_no_answer_not_offered_to_the_fallback() -> None:
    # Given 9bits (or a proxy in front of it) answering 200 to our submit, with a body we cannot read the id from
    with pytest.raises(UpstreamError) as unreadable:
        asyncio.run(provider(answer(200, {"status_code": 200, "message": "ok"})).submit(submit_request()))
    # Then it may have taken the message: like no answer after the request left, never offered to the fallback
    assert (unreadable.value.maybe_taken, unreadable.value.unavailable) == (True, False)


@pytest.mark.parametrize("reference_id", [None, ""], ids=repr)
def test_review_a_2xx_with_a_null_or_empty_reference_id_is_no_id_not_the_id_none(reference_id: str | None) -> None:
    # Given 9bits answering 200 with a reference_id of JSON null or an empty text
    body = {**ACCEPTED, "reference_id": reference_id}
    # When the message is submitted
    with pytest.raises(UpstreamError) as unreadable:
        asyncio.run(provider(answer(200, body)).submit(submit_request()))
    # Then it is a take without an id (asked again of 9bits alone), as the simulator's null message_id is, not a
    # message linked to the upstream id "None" (or "") that every other such message shares
    assert (unreadable.value.permanent, unreadable.value.unavailable, unreadable.value.maybe_taken) == (
        False,
        False,
        True,
    )
