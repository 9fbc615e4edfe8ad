"""Jasmin upstream adapter: /send requests and answers as Jasmin's HTTP API documents them, DLR and MO callbacks,
token verification."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import pytest

from sms_gateway.adapters.providers import FACTORIES
from sms_gateway.adapters.providers.jasmin import CALLBACK_ACK, JasminProvider
from sms_gateway.domain.models import CallbackRequest, Message, SubmitRequest
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError
from sms_gateway_tools.upstream_check import callback_request, captured
from tests.fakes import dispatched_through

TOKEN = "jasmin-callback-token-0123456789"
REF = "1001.71800327346180097.71800327346180098"
MESSAGE_ID = "07033084-5cfd-4812-90a4-e4d24ffb6e3d"
DLR_BASE = "https://gw.example.com/callbacks/jasmin/dlr"
INBOUND_URL = f"https://gw.example.com/callbacks/jasmin/inbound?token={TOKEN}"
CONFIG = {
    "type": "jasmin",
    "url": "http://jasmin.example:1401",
    "username": "jasmin_user",
    "password": "jasmin_pass",
    "callback_token": TOKEN,
}


def provider(handler: Callable[[httpx.Request], httpx.Response], **overrides: Any) -> JasminProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return JasminProvider.from_config("jasmin", {**CONFIG, **overrides}, client=client)


def answer(status: int, body: str, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body, headers={"Content-Type": "text/plain", **headers})

    return handler


def submit_request(text: str = "Hello world !", dlr_url: str | None = DLR_BASE) -> SubmitRequest:
    return SubmitRequest(client_ref=REF, sender="48974", msisdn="+2348020000000", text=text, dlr_url=dlr_url)


def recorded_send(text: str = "Hello world !", dlr_url: str | None = DLR_BASE) -> tuple[str, httpx.Request]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=f'Success "{MESSAGE_ID}"', headers={"Content-Type": "text/plain"})

    result = asyncio.run(provider(handler).submit(submit_request(text, dlr_url)))
    return result.upstream_message_id, seen[0]


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


# --- submit -------------------------------------------------------------------------------------------------------


def test_submit_posts_the_documented_form_and_reads_the_message_id() -> None:
    upstream_id, request = recorded_send()

    assert upstream_id == MESSAGE_ID
    assert request.method == "POST"
    assert str(request.url) == "http://jasmin.example:1401/send"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form(request) == {
        "username": "jasmin_user",
        "password": "jasmin_pass",
        "to": "2348020000000",
        "from": "48974",
        "coding": "0",
        "content": "Hello world !",
        "dlr": "yes",
        "dlr-url": f"{DLR_BASE}?ref={REF}&token={TOKEN}",
        "dlr-level": "3",
        "dlr-method": "POST",
    }


def test_the_message_s_remaining_validity_goes_as_jasmin_s_validity_period_in_minutes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=f'Success "{MESSAGE_ID}"', headers={"Content-Type": "text/plain"})

    asyncio.run(provider(handler).submit(submit_request().model_copy(update={"validity_minutes": 90})))
    assert form(seen[0])["validity-period"] == "90"


def test_ucs2_text_goes_as_hex_content_with_coding_8() -> None:
    _, request = recorded_send(text="Hello ™ world")
    fields = form(request)
    assert fields["coding"] == "8"
    assert fields["hex-content"] == "Hello ™ world".encode("utf-16-be").hex()
    assert "content" not in fields


def test_without_a_dlr_url_no_receipt_is_asked_for() -> None:
    _, request = recorded_send(dlr_url=None)
    fields = form(request)
    assert fields["dlr"] == "no"
    assert not {"dlr-url", "dlr-level", "dlr-method"} & set(fields)


# Refusals of our setup at Jasmin, not of the message: its routing table, our password, our Jasmin user's permissions.
UPSTREAM_SIDE_REFUSALS = [
    (412, 'Error "No route found"'),
    (403, 'Error "Authentication failure for username:jasmin_user"'),
    (400, 'Error "Authorization failed for username [jasmin_user] (Setting validity period is not authorized)."'),
]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, 'Error "Mandatory arguments not found, please refer to the HTTPAPI specifications."'),
        (400, 'Error "Argument to has an invalid value: abc."'),
        (400, 'Error "Value filter failed for username [jasmin_user] (destination_address filter mismatch)."'),
    ],
)
def test_refusals_are_permanent(status: int, body: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    assert raised.value.permanent is True
    assert body.split('"')[1] in raised.value.message


@pytest.mark.parametrize(
    ("status", "body", "permanent"),
    [(*refusal, permanent) for refusal, permanent in zip(UPSTREAM_SIDE_REFUSALS, (True, False, False), strict=True)],
    ids=["no-route", "credentials", "permission"],
)
def test_refusals_of_our_setup_at_jasmin_are_offered_to_the_fallback(status: int, body: str, permanent: bool) -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    # No route: never sent there, and without a fallback failed at once. Our credentials or permissions: retried too
    assert (raised.value.unavailable, raised.value.permanent) == (True, permanent)
    assert body.split('"')[1] in raised.value.message


def test_a_failover_route_whose_connectors_are_all_unbound_sends_the_message_elsewhere() -> None:
    # Given Jasmin answers as jasmin/protocols/http/endpoints/send.py does when every connector of a failover route is
    # unbound (ConnectorNotFoundError, HTTP 412 in jasmin/protocols/http/errors.py): a passing outage of its SMSC binds
    jasmin = provider(answer(412, 'Error "Failover route has no bound connectors"'))

    # When a message is submitted
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(jasmin.submit(submit_request()))

    # Then it is not failed and refunded: it is offered to the fallback upstream and retried
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)
    assert "no bound connectors" in raised.value.message


def test_throughput_exceeded_is_a_short_throttle() -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(403, 'Error "User throughput exceeded"')).submit(submit_request()))
    assert (raised.value.permanent, raised.value.retry_after, raised.value.unavailable) == (False, 1.0, False)


def test_charging_failure_sends_the_message_elsewhere() -> None:
    body = 'Error "Cannot charge submit_sm, check RouterPB log file for details"'
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(403, body)).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, 'Error "Cannot send submit_sm, check SMPPClientManagerPB log file for details"'),
        (503, 'Error "InterceptorPB not connected !"'),
    ],
)
def test_server_errors_are_transient(status: int, body: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)


@pytest.mark.parametrize("status", [502, 504])
def test_a_proxys_bad_gateway_or_gateway_timeout_is_an_answer_jasmin_may_have_taken(status: int) -> None:
    # Given Jasmin behind a reverse proxy that forwards the submit and may lose Jasmin's answer (504 Gateway Timeout,
    # 502 Bad Gateway on a cut upstream connection), as its operator says in gateway_errors
    # When the message is submitted
    with pytest.raises(UpstreamError) as raised:
        handler = answer(status, "<html>Gateway Time-out</html>")
        asyncio.run(provider(handler, gateway_errors="maybe_taken").submit(submit_request()))
    # Then it is handled as no answer after the request left (never offered to the fallback), as for 9bits and
    # Twilio; instead it is "unavailable", and the dispatcher offers it to the fallback at once
    assert raised.value.maybe_taken is True


@pytest.mark.parametrize("status", [502, 504])
def test_by_default_a_proxys_bad_gateway_or_gateway_timeout_is_an_outage_and_goes_to_the_fallback(status: int) -> None:
    # Given Jasmin down behind a proxy that cannot connect to it (502) or whose connect times out (504)
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, "<html>Bad Gateway</html>")).submit(submit_request()))
    # Then nothing was sent: the fallback is offered the message at once, not left submitted-unconfirmed
    assert (raised.value.permanent, raised.value.unavailable, raised.value.maybe_taken) == (False, True, False)


@pytest.mark.parametrize("value", ["maybe", "Unavailable", 1])
def test_a_malformed_gateway_errors_is_refused_at_configuration(value: Any) -> None:
    with pytest.raises(ValueError, match="gateway_errors"):
        provider(answer(200, ""), gateway_errors=value)


def test_429_with_retry_after() -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(429, "Too many", **{"Retry-After": "3"})).submit(submit_request()))
    assert (raised.value.permanent, raised.value.retry_after, raised.value.unavailable) == (False, 3.0, False)


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
def test_timeouts_and_connection_errors_are_transient(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(handler).submit(submit_request()))
    assert raised.value.permanent is False


# --- delivery reports -------------------------------------------------------------------------------------------


def dlr(fields: dict[str, str], *, token: str | None = TOKEN, method: str = "POST") -> CallbackRequest:
    """A DLR as Jasmin's DLRThrower sends it to our dlr-url: form body with POST, appended query with GET."""
    query = {"ref": REF} | ({"token": token} if token is not None else {})
    if method == "GET":
        query |= fields
    return CallbackRequest(
        method=method,
        url=DLR_BASE,
        headers={"content-type": "application/x-www-form-urlencoded", "user-agent": "Jasmin gateway/1.0 DLRThrower"},
        query=query,
        body=urlencode(fields) if method == "POST" else "",
    )


LEVEL2 = {
    "id": MESSAGE_ID,
    "id_smsc": "2567",
    "level": "2",
    "subdate": "1311022338",
    "donedate": "1311022339",
    "sub": "001",
    "dlvrd": "001",
    "err": "000",
    "text": "Hello foo bar",
}


@pytest.mark.parametrize(
    ("fields", "status", "error_code"),
    [
        ({"id": MESSAGE_ID, "message_status": "ESME_ROK", "level": "1"}, MessageStatus.SUBMITTED, None),
        (
            {"id": MESSAGE_ID, "message_status": "ESME_RINVDSTADR", "level": "1"},
            MessageStatus.REJECTED,
            "ESME_RINVDSTADR",
        ),
        ({**LEVEL2, "message_status": "DELIVRD"}, MessageStatus.DELIVERED, None),
        ({**LEVEL2, "message_status": "ACCEPTD"}, MessageStatus.SUBMITTED, None),
        ({**LEVEL2, "message_status": "ENROUTE"}, MessageStatus.SUBMITTED, None),
        ({**LEVEL2, "message_status": "EXPIRED", "dlvrd": "000", "err": "027"}, MessageStatus.EXPIRED, "027"),
        ({**LEVEL2, "message_status": "UNDELIV", "dlvrd": "000", "err": "001"}, MessageStatus.FAILED, "001"),
        ({**LEVEL2, "message_status": "DELETED", "dlvrd": "000"}, MessageStatus.FAILED, None),
        ({**LEVEL2, "message_status": "REJECTD", "dlvrd": "000", "err": "011"}, MessageStatus.REJECTED, "011"),
        ({**LEVEL2, "message_status": "UNKNOWN", "dlvrd": "000", "err": "003"}, MessageStatus.SUBMITTED, None),
    ],
)
def test_dlrs_map_to_our_statuses(fields: dict[str, str], status: MessageStatus, error_code: str | None) -> None:
    jasmin = provider(answer(200, ""))
    for method in ("POST", "GET"):
        request = dlr(fields, method=method)
        assert jasmin.verify_callback(request) is True
        (report,) = jasmin.parse_delivery_reports(request)
        assert report.status is status
        assert report.client_ref == REF
        assert report.upstream_message_id == MESSAGE_ID
        assert report.error_code == error_code
        assert report.reported_at == ("2013-11-02T23:39:00.000000Z" if "donedate" in fields else None)


@pytest.mark.parametrize("esme_status", ["ESME_RTHROTTLED", "ESME_RMSGQFUL", "ESME_RSYSERR", "ESME_RINVSCHED"])
def test_a_level1_dlr_for_a_submit_error_jasmin_retries_leaves_the_message_submitted(esme_status: str) -> None:
    # Given a level-1 DLR for a submit_sm_resp status that Jasmin's sm-listener requeues by default
    # (jasmin/managers/configs.py submit_error_retrial: ESME_RSYSERR, ESME_RTHROTTLED, ESME_RMSGQFUL, ESME_RINVSCHED)
    request = dlr({"id": MESSAGE_ID, "message_status": esme_status, "level": "1"})

    # When it is parsed
    (report,) = provider(answer(200, "")).parse_delivery_reports(request)

    # Then the message stays submitted (Jasmin submits it again; it may well be delivered), the status noted on it
    assert report.status is MessageStatus.SUBMITTED
    assert report.error_code == esme_status


def test_the_submit_errors_jasmin_retries_follow_the_upstream_s_retried_statuses() -> None:
    # Given a Jasmin whose submit_error_retrial retries ESME_RX_T_APPN and no longer ESME_RTHROTTLED
    jasmin = provider(answer(200, ""), retried_statuses=["esme_rx_t_appn"])

    # When level-1 DLRs for both statuses arrive
    retried = jasmin.parse_delivery_reports(dlr({"id": MESSAGE_ID, "message_status": "ESME_RX_T_APPN", "level": "1"}))
    final = jasmin.parse_delivery_reports(dlr({"id": MESSAGE_ID, "message_status": "ESME_RTHROTTLED", "level": "1"}))

    # Then the one it retries leaves the message submitted, the other refuses it
    assert (retried[0].status, retried[0].error_code) == (MessageStatus.SUBMITTED, "ESME_RX_T_APPN")
    assert (final[0].status, final[0].error_code) == (MessageStatus.REJECTED, "ESME_RTHROTTLED")


def test_an_unknown_or_incomplete_dlr_is_rejected() -> None:
    jasmin = provider(answer(200, ""))
    with pytest.raises(CallbackRejected):
        jasmin.parse_delivery_reports(dlr({**LEVEL2, "message_status": "WHATEVER"}))
    with pytest.raises(CallbackRejected):
        jasmin.parse_delivery_reports(dlr({"message_status": "DELIVRD"}))


@pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789abcdef", TOKEN.upper()])
def test_a_missing_or_wrong_token_is_refused(token: str | None) -> None:
    request = dlr({**LEVEL2, "message_status": "DELIVRD"}, token=token)
    assert provider(answer(200, "")).verify_callback(request) is False


def test_dlrs_of_messages_handed_to_jasmin_before_a_callback_token_rotation_are_still_verified() -> None:
    # Given a message handed to Jasmin before the rotation: Jasmin keeps the dlr-url it was given, old token included
    _, sent = recorded_send()
    dlr_url = urlsplit(form(sent)["dlr-url"])
    request = CallbackRequest(
        method="POST",
        url=f"https://gw.example.com{dlr_url.path}",
        headers={"content-type": "application/x-www-form-urlencoded"},
        query=dict(parse_qsl(dlr_url.query)),
        body=urlencode({**LEVEL2, "message_status": "DELIVRD"}),
    )
    # When the operator rotates the callback token as docs/runbook.md says (the old one kept for the DLR wait)
    rotated = {"callback_token": "rotated-callback-token-9876543210"}
    after = provider(answer(200, ""), **rotated, previous_callback_tokens=[TOKEN])
    # Then Jasmin's report of that message is still taken, and refused once the old token is removed
    assert after.verify_callback(request) is True
    assert provider(answer(200, ""), **rotated).verify_callback(request) is False
    # And a malformed list is refused when the upstream is configured
    with pytest.raises(ValueError, match="previous_callback_tokens"):
        provider(answer(200, ""), previous_callback_tokens=TOKEN)


def test_the_adapter_names_jasmins_acknowledgement_body() -> None:
    assert CALLBACK_ACK == "ACK/Jasmin"
    assert provider(answer(200, "")).callback_ack == "ACK/Jasmin"


# --- inbound (MO) -------------------------------------------------------------------------------------------------


def mo(fields: dict[str, str], *, url: str = INBOUND_URL) -> CallbackRequest:
    """An MO as deliverSmHttpThrower POSTs it to an HTTP client connector's baseurl."""
    parts = urlsplit(url)
    return CallbackRequest(
        method="POST",
        url=f"https://gw.example.com{parts.path}",
        headers={"content-type": "application/x-www-form-urlencoded"},
        query=dict(parse_qsl(parts.query)),
        # Jasmin form-encodes short_message's raw bytes: one latin-1 character per byte here.
        body=urlencode(fields, encoding="latin-1"),
    )


BASE_MO = {
    "id": "16fd2706-8baf-433b-82eb-8c7fada847da",
    "from": "+2348020000000",
    "to": "48974",
    "origin-connector": "mtn",
    "priority": "1",
}


def test_a_gsm_mo_is_parsed() -> None:
    # "Hi @ $5_" in GSM 03.38 septets: '@' is 0x00, '$' 0x02, '_' 0x11
    raw = bytes([0x48, 0x69, 0x20, 0x00, 0x20, 0x02, 0x35, 0x11])
    request = mo({**BASE_MO, "coding": "0", "validity": "2013-07-16 00-46:54", "content": raw.decode("latin-1")})
    request = request.model_copy(update={"body": request.body + "&binary=" + raw.hex()})
    jasmin = provider(answer(200, ""))

    assert jasmin.verify_callback(request) is True
    sms = jasmin.parse_inbound(request)

    assert sms.upstream == "jasmin"
    assert sms.upstream_message_id == "16fd2706-8baf-433b-82eb-8c7fada847da"
    assert (sms.msisdn, sms.to, sms.text) == ("+2348020000000", "48974", "Hi @ $5_")


def test_a_ucs2_mo_is_decoded_from_its_bytes() -> None:
    raw = "سلام Olá ™".encode("utf-16-be")
    fields = {**BASE_MO, "coding": "8", "content": raw.decode("latin-1"), "binary": raw.hex()}
    assert provider(answer(200, "")).parse_inbound(mo(fields)).text == "سلام Olá ™"
    # Without `binary` (older Jasmin) the percent-encoded bytes of `content` are enough
    del fields["binary"]
    assert "%E1" in mo(fields).body
    assert provider(answer(200, "")).parse_inbound(mo(fields)).text == "سلام Olá ™"


def test_coding_as_the_raw_byte_and_a_latin1_smsc_are_understood() -> None:
    raw = "Olá".encode("latin-1")
    fields = {**BASE_MO, "coding": "\x08", "binary": "Olá".encode("utf-16-be").hex(), "content": ""}
    assert provider(answer(200, "")).parse_inbound(mo(fields)).text == "Olá"
    latin = {**BASE_MO, "coding": "0", "binary": raw.hex(), "content": raw.decode("latin-1")}
    assert provider(answer(200, ""), mo_charset="latin-1").parse_inbound(mo(latin)).text == "Olá"
    # A coding too long for a byte (and for int(), past 4300 digits) is read as the default, not a 500
    odd = {**BASE_MO, "coding": "9" * 5000, "content": "Hello"}
    assert provider(answer(200, "")).parse_inbound(mo(odd)).text == "Hello"


def test_an_mo_without_a_token_or_its_fields() -> None:
    jasmin = provider(answer(200, ""))
    assert jasmin.verify_callback(mo(BASE_MO, url="https://gw.example.com/callbacks/jasmin/inbound")) is False
    with pytest.raises(CallbackRejected):
        jasmin.parse_inbound(mo({"id": "x", "from": "+2348020000000", "to": "48974"}))


def test_configuration_is_checked() -> None:
    assert isinstance(FACTORIES["jasmin"]("jasmin", dict(CONFIG)), JasminProvider)
    with pytest.raises(ValueError, match="callback_token"):
        JasminProvider.from_config("jasmin", {**CONFIG, "callback_token": "short"})
    for level in (4, 0, 1, 2):
        # 1: the SMSC's acceptance only, never a final report: every message expired and refunded, delivered or not.
        # 2: no report at all for a submit the SMSC refuses (Jasmin throws level 1 only to a level asked of 1 or 3)
        with pytest.raises(ValueError, match="dlr_level is 3"):
            JasminProvider.from_config("jasmin", {**CONFIG, "dlr_level": level})
    assert JasminProvider.from_config("jasmin", {**CONFIG, "dlr_level": 3})
    with pytest.raises(LookupError):
        JasminProvider.from_config("jasmin", {**CONFIG, "mo_charset": "no-such-codec"})
    for retried in ("ESME_RTHROTTLED", 7, ["ESME_ROK"], ["DELIVRD"], [7]):
        with pytest.raises(ValueError, match="retried_statuses"):
            JasminProvider.from_config("jasmin", {**CONFIG, "retried_statuses": retried})


def test_the_dlr_url_keeps_our_query_when_jasmin_posts() -> None:
    # With dlr-method POST Jasmin calls the dlr-url as given and sends the fields in the body
    jasmin = provider(answer(200, ""))
    url = jasmin.dlr_url(DLR_BASE, REF)
    parts = urlsplit(url)
    request = CallbackRequest(
        method="POST",
        url=f"https://gw.example.com{parts.path}",
        query=dict(parse_qsl(parts.query)),
        body=urlencode({**LEVEL2, "message_status": "DELIVRD"}),
    )
    assert jasmin.verify_callback(request) is True
    assert jasmin.parse_delivery_reports(request)[0].client_ref == REF
    assert quote(REF, safe="") in url


@pytest.mark.parametrize(
    "body", ["Success 07033084-5cfd-4812-90a4-e4d24ffb6e3d", "<html><body>OK</body></html>", ""], ids=str
)
def test_a_200_we_cannot_read_is_one_jasmin_may_have_taken_not_a_plain_retry(body: str) -> None:
    # Given Jasmin (or the proxy in front of it) answering 200 with a body that is not `Success "<id>"`
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(200, body)).submit(submit_request()))
    # Then the dispatcher is told Jasmin may have the message (recorded submitted-unconfirmed, never asked again),
    # not a transient failure that submits it to Jasmin again on the record's next attempt
    assert raised.value.maybe_taken is True


# Jasmin's [http-api] long_content_max_parts (default 5): SMPPOperationFactory.SubmitSM clamps the number of parts it
# builds to it and drops the rest of the text (jasmin/protocols/smpp/operations.py, "Obey to configured
# longContentMaxParts"), while still answering `Success "<id>"`.
JASMIN_DEFAULT_MAX_PARTS = 5


@pytest.mark.parametrize(
    ("text", "per_part"),
    [("x" * (6 * 153), 153), ("\u0627" * (7 * 67), 67)],
    ids=["gsm-6-parts", "ucs2-7-parts"],
)
def test_a_message_longer_than_jasmin_sends_is_never_handed_over_to_be_cut(text: str, per_part: int) -> None:
    # Given a message the gateway accepted and charged for in full (an account may send up to 10 parts), and a Jasmin
    # with its default long_content_max_parts
    delivered: list[str] = []

    def jasmin(request: httpx.Request) -> httpx.Response:
        fields = form(request)
        content = (
            bytes.fromhex(fields["hex-content"]).decode("utf-16-be") if "hex-content" in fields else fields["content"]
        )
        # What Jasmin puts on the phone: at most long_content_max_parts parts of the text
        delivered.append(content[: per_part * JASMIN_DEFAULT_MAX_PARTS])
        return httpx.Response(200, text=f'Success "{MESSAGE_ID}"', headers={"Content-Type": "text/plain"})

    # When it is submitted
    try:
        asyncio.run(provider(jasmin).submit(submit_request(text=text)))
    except UpstreamError:
        return  # refused before Jasmin cut it (the dispatcher can fail it over or fail and refund it): fine
    # Then, if Jasmin took it, the recipient got the whole text the client paid for, not its first five parts
    assert delivered == [text]


def jasmin_cuts(fields: dict[str, str]) -> list[bytes]:
    """The short messages Jasmin makes of a /send: `content` encoded to GSM 03.38 (endpoints/send.py:
    .encode('gsm0338')) or `hex-content` as it is, then sliced blind to characters (smpp/operations.py SubmitSM:
    longMessage[slicedMaxSmLength * i:slicedMaxSmLength * (i + 1)], 153 octets, 134 for UCS-2)."""
    from sms_gateway.adapters.providers.jasmin import _GSM7, _GSM7_EXTENSION

    if "hex-content" in fields:
        octets, single, sliced = bytes.fromhex(fields["hex-content"]), 140, 134
    else:
        escape = {character: code for code, character in _GSM7_EXTENSION.items()}
        octets = b"".join(
            bytes([0x1B, escape[c]]) if c in escape else bytes([_GSM7.index(c)]) for c in fields["content"]
        )
        single, sliced = 160, 153
    return [octets[i : i + sliced] for i in range(0, len(octets), sliced)] if len(octets) > single else [octets]


def jasmin_answers(sent: list[dict[str, str]]) -> Callable[[httpx.Request], httpx.Response]:
    def jasmin(request: httpx.Request) -> httpx.Response:
        sent.append(form(request))
        return httpx.Response(200, text=f'Success "{MESSAGE_ID}"', headers={"Content-Type": "text/plain"})

    return jasmin


def test_jasmin_s_part_limit_counts_the_parts_jasmin_cuts() -> None:
    from sms_gateway.domain.segments import segment

    # Given a GSM-7 text Jasmin cuts into its 5 parts (long_content_max_parts), through the euro's escape pair on
    # septet 153, which the gateway counts as 6 (it would move the pair whole into the next part)
    text = "a" * 152 + "€" + "a" * (5 * 153 - 154)
    sent: list[dict[str, str]] = []
    jasmin = jasmin_answers(sent)
    assert segment(text).parts == 6
    # When it is submitted to a Jasmin that sends 5 parts of a message
    asyncio.run(provider(jasmin).submit(submit_request(text=text)))
    # Then it is handed over, and Jasmin sends it whole in the 5 parts the adapter counted: the limit is Jasmin's
    # count (Jasmin's HTTP API takes no UDH, so the gateway cannot cut it; docs/providers-smsc.md), where before it
    # was refused (too_many_parts) for 6 parts Jasmin would never send
    [fields] = sent
    assert len(jasmin_cuts(fields)) == segment(text).blind_parts == 5
    # And one more unit is a sixth part for Jasmin too: refused before it is handed over
    with pytest.raises(UpstreamError, match="at most 5 parts"):
        asyncio.run(provider(jasmin).submit(submit_request(text=text + "a")))
    assert len(sent) == 1


def test_a_ucs2_text_jasmin_would_cut_through_an_emoji_goes_padded_so_jasmin_cuts_it_as_it_was_counted() -> None:
    from sms_gateway.domain.segments import padded_for_blind_cut, split

    # Given a UCS-2 text whose emojis straddle Jasmin's 67-unit cuts: charged 3 parts, each emoji whole in a part
    text = "я" * 66 + "😀" + "я" * 64 + "🎉" + "я" * 10
    sent: list[dict[str, str]] = []
    # When it is submitted
    asyncio.run(provider(jasmin_answers(sent), max_parts=3).submit(submit_request(text=text)))
    # Then its hex-content is the text padded with a zero width space before each such emoji, so Jasmin's blind cut
    # gives the 3 parts charged, each emoji whole at the start of its part
    [fields] = sent
    assert bytes.fromhex(fields["hex-content"]).decode("utf-16-be") == padded_for_blind_cut(text)
    cuts = [cut.decode("utf-16-be") for cut in jasmin_cuts(fields)]
    assert cuts == [part + "\u200b" for part in split(text)[:-1]] + split(text)[-1:]
    assert [cut[0] for cut in cuts[1:]] == ["😀", "🎉"]
    # And a text Jasmin would so send in more parts than its limit is refused before it is handed over
    with pytest.raises(UpstreamError, match="at most 2 parts"):
        asyncio.run(provider(jasmin_answers(sent), max_parts=2).submit(submit_request(text=text)))
    assert len(sent) == 1


def test_a_password_jasmin_refuses_as_malformed_is_never_quoted_in_our_errors() -> None:
    # Given a password longer than the 16 characters Jasmin's /send takes (its pattern ^.{1,16}$): Jasmin answers
    # 400 and quotes the value (jasmin/protocols/http/validation.py, UrlArgsValidator)
    password = "generated-secret-that-is-too-long"

    def jasmin(request: httpx.Request) -> httpx.Response:
        value = form(request)["password"]
        return httpx.Response(400, text=f"Error \"Argument [b'password'] has an invalid value: [b'{value}'].\"")

    try:
        upstream = provider(jasmin, password=password)
    except ValueError:
        return  # refused when the configuration is read: fine, nothing is sent or logged
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(upstream.submit(submit_request()))
    # Then the error the dispatcher logs ("upstream did not take the message", error=...) does not carry the secret
    assert password not in raised.value.message


def test_an_upstream_that_sends_more_parts_says_so_in_max_parts() -> None:
    # Given a Jasmin whose long_content_max_parts was raised to 10, and said so in max_parts
    seen: list[httpx.Request] = []

    def jasmin(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=f'Success "{MESSAGE_ID}"', headers={"Content-Type": "text/plain"})

    text = "x" * (10 * 153)
    # When a 10-part message is submitted, Then it is handed over whole
    asyncio.run(provider(jasmin, max_parts=10).submit(submit_request(text=text)))
    assert form(seen[0])["content"] == text


def test_a_message_over_max_parts_is_never_sent_and_leaves_the_fallback_free_to_take_it() -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(200, f'Success "{MESSAGE_ID}"')).submit(submit_request(text="x" * (6 * 153))))
    error = raised.value
    assert (error.unavailable, error.permanent, error.maybe_taken, error.error_code) == (
        True,
        True,
        False,
        "too_many_parts",
    )
    assert "at most 5 parts" in error.message


@pytest.mark.parametrize("value", [0, 256, 2.5, "10", True])
def test_a_max_parts_that_is_not_1_to_255_is_refused_at_configuration(value: Any) -> None:
    with pytest.raises(ValueError, match="max_parts"):
        provider(answer(200, ""), max_parts=value)


@pytest.mark.parametrize("with_fallback", [True, False], ids=["fallback", "no-fallback"])
def test_a_message_jasmin_would_cut_goes_to_the_fallback_or_fails_refunded_never_lost(with_fallback: bool) -> None:
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
    before = store.accounts["7"].credits
    command = SendCommand(
        account_id="7", sender="48974", text="x" * (6 * 153), recipients=(Recipient(msisdn="+2348020000000"),)
    )
    accept_send(store.accounts["7"], command, send_deps, now=now)
    # Given a 6-part message, a Jasmin that sends 5 at most (never asked), and maybe a fallback
    asked: list[httpx.Request] = []
    jasmin = provider(lambda request: asked.append(request) or httpx.Response(200, text=f'Success "{MESSAGE_ID}"'))
    fallback = FakeProvider("fallback")
    deps = DispatchDependencies(
        messages=store,
        accounts=store,
        upstreams_for=lambda _: [jasmin, fallback] if with_fallback else [jasmin],
        callback_base_url="https://gw.example",
        clock=lambda: now,
    )
    # When it is dispatched
    outcome = asyncio.run(dispatch(queue.commands[0], deps))
    [message] = store.messages.values()
    assert asked == []
    if with_fallback:
        # Then the fallback took the whole text
        assert [request.text for request in fallback.submits] == [command.text]
        assert (message.status, message.upstream) == (MessageStatus.SUBMITTED, "fallback")
    else:
        # Then it fails at once with an error that says why, and the client gets its credits back
        assert (outcome.failed, outcome.retry) == (1, [])
        assert (message.status, message.error_code) == (MessageStatus.FAILED, "too_many_parts")
        assert store.accounts["7"].credits == before


@pytest.mark.parametrize("field", ["username", "password"])
@pytest.mark.parametrize("value", ["", "x" * 17])
def test_a_username_or_password_jasmin_would_refuse_is_refused_at_configuration_without_quoting_it(
    field: str, value: str
) -> None:
    with pytest.raises(ValueError, match=f"{field} is 1 to 16 characters") as raised:
        provider(answer(200, f'Success "{MESSAGE_ID}"'), **{field: value})
    assert value not in str(raised.value) or not value


def test_a_submit_error_jasmin_retries_is_noted_on_the_submitted_message(aws) -> None:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from tests.integration.test_dynamodb_store import one_message

    # Given a message Jasmin took (answered Success "<id>"), recorded submitted there as the dispatcher does
    store = gateway().store
    message = one_message(store, MessageStatus.QUEUED)
    submitted = store.transition(
        message.key, MessageStatus.SUBMITTED, now=utc_now(), upstream="jasmin", upstream_message_id=MESSAGE_ID
    )
    assert submitted is not None
    told: list[object] = []
    deps = DeliveryDependencies(store, store, utc_now, on_change=told.append, on_repeat=told.append)
    # When Jasmin throws the level-1 DLR of the SMSC's first answer, a throttle it will submit again itself (the
    # DLR comes after Jasmin's HTTP answer, so after the dispatcher's write, the usual order)
    fields = {"id": MESSAGE_ID, "message_status": "ESME_RTHROTTLED", "level": "1"}
    request = dlr(fields).model_copy(update={"query": {"ref": message.key.to_ref(), "token": TOKEN}})
    receive_delivery_reports(provider(answer(200, "")), request, deps)
    # Then the message stays submitted, "the ESME status noted as its error_code" (docs/providers-smsc.md): the
    # operator can see why no terminal report will come, before the settle check expires it
    [now] = store.get_messages_by_key([message.key])
    assert (now.status, now.error_code) == (MessageStatus.SUBMITTED, "ESME_RTHROTTLED")
    # And it is no change: the client is not told, the sequence does not step
    assert told == [] and now.sequence == submitted.message.sequence
    # And another upstream's report of the same status, its token its own, notes nothing on Jasmin's message
    other_token = "other-jasmin-token-0123456789"
    other = JasminProvider.from_config(
        "jasmin-b",
        {**CONFIG, "callback_token": other_token},
        client=httpx.AsyncClient(transport=httpx.MockTransport(answer(200, ""))),
    )
    fields = {"id": MESSAGE_ID, "message_status": "ESME_RMSGQFUL", "level": "1"}
    request = dlr(fields).model_copy(update={"query": {"ref": message.key.to_ref(), "token": other_token}})
    receive_delivery_reports(other, request, deps)
    [now] = store.get_messages_by_key([message.key])
    assert now.error_code == "ESME_RTHROTTLED" and told == []


@pytest.mark.parametrize("password", ["4812", "S"])
def test_a_short_password_never_changes_the_message_id_jasmin_answers(password: str) -> None:
    # Given a Jasmin user whose password is short (Jasmin takes 1 to 16 characters) and happens to occur in the
    # UUID Jasmin answers (or in its 'Success')
    def jasmin(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=f'Success "{MESSAGE_ID}"', headers={"Content-Type": "text/plain"})

    # When a message is submitted
    result = asyncio.run(provider(jasmin, password=password).submit(submit_request()))
    # Then the id recorded is Jasmin's, the one its DLRs name
    assert result.upstream_message_id == MESSAGE_ID


@pytest.mark.parametrize(("status", "body"), UPSTREAM_SIDE_REFUSALS, ids=["no-route", "credentials", "permission"])
def test_review_an_upstream_side_refusal_at_jasmin_leaves_the_route_fallback_free_to_take_it(
    status: int, body: str
) -> None:
    from tests.fakes import FakeProvider

    # Given a Jasmin that has no MT route for the number (or no longer takes our password, or our Jasmin user lacks a
    # permission), and a route fallback
    fallback = FakeProvider("fallback")
    # When the message is dispatched
    message, _ = dispatched_through(provider(answer(status, body)), fallback)
    # Then the fallback, which may well route that number, is offered it (as for Africa's Talking's 407 CouldNotRoute
    # and Twilio's 401/403), rather than the message failing and being refunded with the fallback never asked
    assert [request.text for request in fallback.submits] == ["Hello"]
    assert (message.status, message.upstream) == (MessageStatus.SUBMITTED, "fallback")


def test_without_a_fallback_no_route_fails_at_once_and_a_refusal_of_our_account_comes_back() -> None:
    # Given Jasmin alone on the route
    # When it has no route for the number: the message fails at once and is refunded (asked again, Jasmin's routing
    # table would answer the same)
    no_route, store = dispatched_through(provider(answer(412, 'Error "No route found"')))
    assert (no_route.status, no_route.error_code) == (MessageStatus.FAILED, "upstream_rejected")
    assert store.accounts["7"].credits == 1000
    # When it refuses our password: the message comes back for another attempt while the operator fixes it
    refused, _ = dispatched_through(provider(answer(403, 'Error "Authentication failure for username:jasmin_user"')))
    assert (refused.status, refused.submit_attempts) == (MessageStatus.QUEUED, 1)


def test_review_a_level2_acceptd_is_not_jasmin_s_last_word_and_the_message_waits_for_the_next() -> None:
    # Given Jasmin's level-2 DLR with the SMSC receipt stat ACCEPTD: one of Jasmin's success states but not of its
    # final_states (jasmin/managers/dlr.py), so Jasmin keeps `dlr:<msgid>` and throws the SMSC's next receipt
    (report,) = provider(answer(200, "")).parse_delivery_reports(dlr({**LEVEL2, "message_status": "ACCEPTD"}))

    # Then the message stays submitted for that receipt (the DLR wait settles it if none comes)
    assert report.status is MessageStatus.SUBMITTED


@pytest.mark.parametrize("field", ["username", "password"])
@pytest.mark.parametrize("value", ["pässwörd-ünd-äß", "Zugangsdaten€12"])
def test_review_a_credential_of_16_characters_but_more_bytes_is_refused_at_configuration(
    field: str, value: str
) -> None:
    # Given a credential Jasmin's /send refuses: its pattern ^.{1,16}$ is matched against the form value's bytes, so
    # 15 characters with umlauts or a euro are 17 or more bytes, and every submit would be answered 400 (permanent:
    # every message failed and refunded, the fallback never asked)
    assert len(value) <= 16 < len(value.encode())
    # When the upstream is configured with it / Then it is refused there, where nothing is sent, its value unnamed
    with pytest.raises(ValueError, match=f"{field} is 1 to 16") as raised:
        provider(answer(200, f'Success "{MESSAGE_ID}"'), **{field: value})
    assert value not in str(raised.value)


# --- what a real Jasmin sent ----------------------------------------------------------------------------------------

# What a real Jasmin 0.11.0 (PyPI) sent over SMPP, through its HTTP API as the adapter submits:
# tools/sms_gateway_tools/jasmin_check.py
JASMIN_CAPTURE = Path(__file__).parents[1] / "fixtures" / "jasmin-0.11.0-smpp.json"


def jasmin_captured(scenario: str | None = None) -> list[dict[str, Any]]:
    return captured(JASMIN_CAPTURE, scenario)


def replayed(recorded: dict[str, Any], **query: str) -> CallbackRequest:
    """A captured request as the webhook hands it to the adapter, `query` values replaced (our ref, our token)."""
    request = callback_request({**recorded, "body": recorded["body"].encode()})
    return request.model_copy(update={"query": {**request.query, "token": TOKEN, **query}})


def settled_by_captured_reports(scenario: str) -> Message:
    """A message Jasmin took, recorded submitted there, after each DLR Jasmin threw in `scenario`, in its order."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from tests.integration.test_dynamodb_store import new_account, one_message

    store = gateway().store
    account, credentials = new_account()
    store.create_account(account, credentials)
    message = one_message(store, MessageStatus.QUEUED, account.account_id)
    callbacks = jasmin_captured(scenario)
    upstream_id = dict(parse_qsl(callbacks[0]["body"]))["id"]
    store.transition(
        message.key, MessageStatus.SUBMITTED, now=utc_now(), upstream="jasmin", upstream_message_id=upstream_id
    )
    deps = DeliveryDependencies(store, store, utc_now, on_change=lambda _: None, on_repeat=lambda _: None)
    adapter = provider(answer(200, ""))
    for recorded in callbacks:
        receive_delivery_reports(adapter, replayed(recorded, ref=message.key.to_ref()), deps)
    [now] = store.get_messages_by_key([message.key])
    return now


@pytest.mark.parametrize(
    ("scenario", "statuses"),
    [
        ("one part, delivered", ["submitted", "delivered"]),
        ("one part, en route then delivered", ["submitted", "delivered"]),  # Jasmin throws no ENROUTE
        ("one part, undelivered", ["submitted", "failed 001"]),
        ("one part, expired", ["submitted", "expired 002"]),
        ("one part, rejected (REJECTD)", ["submitted", "rejected"]),
        # ACCEPTD and UNKNOWN are not Jasmin's last word: it throws the SMSC's next receipt too
        ("one part, accepted (ACCEPTD)", ["submitted", "submitted"]),
        ("one part, accepted (ACCEPTD) then undelivered", ["submitted", "submitted", "failed 001"]),
        ("one part, unknown (UNKNOWN) then delivered", ["submitted", "submitted", "delivered"]),
        ("one part, en route then undelivered", ["submitted", "failed 001"]),
        ("one part, refused by the SMSC", ["rejected ESME_RINVDSTADR"]),
        # The retry the SMSC took and delivered is never reported: Jasmin dropped the DLR request
        ("one part, throttled by the SMSC once, then delivered", ["submitted ESME_RTHROTTLED"]),
        ("UCS-2, one part, delivered", ["submitted", "delivered"]),
        # A long message is reported by its last part, the only one Jasmin asks a receipt of
        ("3 GSM parts, each delivered", ["submitted", "delivered"]),
        ("3 GSM parts, part 1 undelivered", ["submitted", "delivered"]),
        ("3 GSM parts, part 3 undelivered", ["submitted", "failed 001"]),
        ("3 GSM parts, part 1 refused by the SMSC", ["submitted", "delivered"]),
        ("3 GSM parts, part 3 refused by the SMSC", ["rejected ESME_RINVDSTADR"]),
        ("3 UCS-2 parts, emoji on the boundary, part 2 refused by the SMSC", ["submitted", "delivered"]),
    ],
)
def test_the_dlrs_a_real_jasmin_posted_read_as_the_docs_say(scenario: str, statuses: list[str]) -> None:
    # Given the DLRs a real Jasmin 0.11.0 posted to the dlr-url the adapter gave it (dlr-level 3, dlr-method POST)
    callbacks = jasmin_captured(scenario)
    adapter = provider(answer(200, ""))
    read: list[str] = []
    for recorded in callbacks:
        # Then each is verified by the token in our URL, which Jasmin kept with its query string, and read
        request = replayed(recorded)
        assert recorded["method"] == "POST" and adapter.verify_callback(request)
        (report,) = adapter.parse_delivery_reports(request)
        assert report.upstream_message_id == dict(parse_qsl(recorded["body"]))["id"]
        read.append(" ".join(filter(None, (report.status.value, report.error_code))))
    assert read == statuses


def test_the_mo_a_real_jasmin_posted_is_read_whole() -> None:
    # Given the MO SMS a real Jasmin 0.11.0 posted through an HTTP client connector (coding as the raw byte)
    adapter = provider(answer(200, ""))
    texts = []
    for recorded in jasmin_captured():
        request = replayed(recorded)
        assert adapter.verify_callback(request)
        sms = adapter.parse_inbound(request)
        assert (sms.msisdn, sms.to) == ("2348020000000", "48974")
        texts.append(sms.text)
    # Then every text is read as the handset wrote it, the two UCS-2 parts joined by Jasmin into one
    assert sorted(texts) == sorted(["Hello from the phone", "Price 5€", "Hé ™ я😀", "Grüße", "я" * 67 + "end😀"])


def test_review_an_unknown_receipt_jasmin_follows_with_delivered_leaves_the_message_delivered(aws) -> None:
    # Given a message through a real Jasmin 0.11.0 whose SMSC sent the receipt UNKNOWN and then DELIVRD: Jasmin threw
    # both (UNKNOWN is not in its final_states, jasmin/managers/dlr.py, so it kept the DLR request)
    # When the gateway takes Jasmin's DLRs in the order they came
    message = settled_by_captured_reports("one part, unknown (UNKNOWN) then delivered")
    # Then the message is delivered, as the handset got it: not failed and refunded with the DELIVRD thrown away
    assert (message.status, message.error_code) == (MessageStatus.DELIVERED, None)


def test_review_an_accepted_receipt_jasmin_follows_with_undelivered_leaves_the_message_failed(aws) -> None:
    # Given a message through a real Jasmin 0.11.0 whose SMSC sent the receipt ACCEPTD and then UNDELIV: Jasmin threw
    # both (ACCEPTD is one of its success states but not of its final_states, jasmin/managers/dlr.py)
    # When the gateway takes Jasmin's DLRs in the order they came
    message = settled_by_captured_reports("one part, accepted (ACCEPTD) then undelivered")
    # Then the message failed, with the SMSC's error, and is refunded: not delivered and charged, the UNDELIV
    # thrown away
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "001")
