"""The Twilio adapter against Twilio's documented wire formats: Messages API submits, signed status callbacks and
incoming-message webhooks; then end to end through the dispatcher and the webhook function (moto)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import pytest

from sms_gateway.adapters.providers.twilio import TwilioProvider, twilio_signature
from sms_gateway.domain.models import CallbackRequest, SubmitRequest
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError
from tests.conftest import FakeContext, load_event, load_function
from tests.integration.test_send_path import as_lambda_sqs_event, queued_records

ACCOUNT_SID = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
# As long as a real one (32 characters): a rotation keeps it in previous_auth_tokens, which takes 16 or more.
AUTH_TOKEN = "your_auth_token_of_32_characters"
MESSAGE_SID = "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
DLR_URL = "https://abc123.execute-api.us-east-1.amazonaws.com/callbacks/twilio/dlr"
CLIENT_REF = "1042.7310293847561.7310293847562"


def created_message(**overrides: Any) -> dict[str, Any]:
    """The 201 body of "Create a Message" as Twilio documents it."""
    body = {
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": "When was the last time you went to the cinema?",
        "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
        "date_sent": None,
        "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": "+14155552345",
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": None,
        "sid": MESSAGE_SID,
        "status": "queued",
        "subresource_uris": {"media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}/Media.json"},
        "to": "+2348020000000",
        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}.json",
    }
    body.update(overrides)
    return body


def twilio_error(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class FakeTwilio:
    """A MockTransport handler that records requests and answers what it is told to."""

    def __init__(self, status: int = 201, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = created_message() if body is None else body
        self.headers = headers or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body, headers=self.headers)

    def form(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].content.decode(), keep_blank_values=True)


def provider(handler: Callable[[httpx.Request], httpx.Response], **config: Any) -> TwilioProvider:
    settings = {"type": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, **config}
    return TwilioProvider.from_config(
        "twilio", settings, client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )


def submit_request(**overrides: Any) -> SubmitRequest:
    fields = {
        "client_ref": CLIENT_REF,
        "sender": "48974",
        "msisdn": "+2348020000000",
        "text": "When was the last time you went to the cinema?",
        "dlr_url": DLR_URL,
    }
    fields.update(overrides)
    return SubmitRequest(**fields)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- submit -------------------------------------------------------------------------------------------------


def test_submit_posts_the_documented_form_with_basic_auth_and_returns_the_sid() -> None:
    # Given Twilio answering 201 with a Message resource
    twilio = FakeTwilio()
    # When a message is submitted
    result = asyncio.run(provider(twilio).submit(submit_request()))
    # Then it was one form POST to the account's Messages.json, authenticated with AccountSid:AuthToken
    [request] = twilio.requests
    assert request.method == "POST"
    assert str(request.url) == f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["authorization"] == basic(ACCOUNT_SID, AUTH_TOKEN)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    # With exactly To, From, Body and a StatusCallback carrying our client reference
    assert twilio.form() == {
        "To": ["+2348020000000"],
        "From": ["48974"],
        "Body": ["When was the last time you went to the cinema?"],
        "StatusCallback": [f"{DLR_URL}?ref={CLIENT_REF}"],
    }
    # And the upstream id is the Message sid
    assert result.upstream_message_id == MESSAGE_SID


def test_a_validity_under_twilio_s_ten_hour_limit_goes_as_validity_period_in_seconds() -> None:
    twilio = FakeTwilio()
    # Given one message with 90 minutes of validity left and one with 23 hours
    asyncio.run(provider(twilio).submit(submit_request(validity_minutes=90)))
    asyncio.run(provider(twilio).submit(submit_request(validity_minutes=23 * 60)))
    # Then the first waits in Twilio's queue at most 5400 s; the second gets Twilio's own (and maximum) 36000 s,
    # as Twilio refuses a ValidityPeriod above it
    assert twilio.form(0)["ValidityPeriod"] == ["5400"]
    assert "ValidityPeriod" not in twilio.form(1)


def test_a_messaging_service_and_an_api_key_replace_from_and_the_account_credentials() -> None:
    twilio = FakeTwilio(body=created_message(status="accepted", messaging_service_sid="MGaaaa"))
    configured = provider(twilio, messaging_service_sid="MGaaaa", api_key_sid="SKxxxxxxxx", api_key_secret="key-secret")
    asyncio.run(configured.submit(submit_request()))
    [request] = twilio.requests
    assert request.headers["authorization"] == basic("SKxxxxxxxx", "key-secret")
    form = twilio.form()
    assert form["MessagingServiceSid"] == ["MGaaaa"]
    assert "From" not in form
    # The URL still names the account, not the key
    assert request.url.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@pytest.mark.parametrize(
    ("sender", "sent_as"),
    [("48974", "48974"), ("2348020000001", "+2348020000001"), ("+14155552345", "+14155552345"), ("CINEMA", "CINEMA")],
)
def test_long_numbers_stored_as_digits_are_sent_in_e164(sender: str, sent_as: str) -> None:
    twilio = FakeTwilio()
    asyncio.run(provider(twilio).submit(submit_request(sender=sender)))
    assert twilio.form()["From"] == [sent_as]


@pytest.mark.parametrize("dlr_url", [None, "/callbacks/twilio/dlr"])
def test_no_status_callback_without_a_public_dlr_url(dlr_url: str | None) -> None:
    twilio = FakeTwilio()
    asyncio.run(provider(twilio).submit(submit_request(dlr_url=dlr_url)))
    assert "StatusCallback" not in twilio.form()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21211, "The 'To' number +2348020000000 is not a valid phone number."),
        (21614, "'To' number is not a valid mobile number"),
        (21610, "Attempt to send to unsubscribed recipient"),
        (21612, "The 'To' phone number is not currently reachable via SMS"),
        (21606, "The 'From' phone number provided is not a valid message-capable Twilio phone number."),
    ],
)
def test_twilio_refusing_the_number_or_sender_is_permanent(code: int, message: str) -> None:
    twilio = FakeTwilio(400, twilio_error(code, message, 400))
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(twilio).submit(submit_request()))
    assert raised.value.permanent is True
    assert str(code) in raised.value.message
    # The recipient's number never reaches our logs through the error text
    assert "2348020000000" not in raised.value.message


@pytest.mark.parametrize(
    ("status", "body", "headers", "retry_after", "unavailable"),
    [
        (429, twilio_error(20429, "Too Many Requests", 429), {"Retry-After": "7"}, 7.0, False),
        (429, twilio_error(20429, "Too Many Requests", 429), {}, None, False),
        (
            400,
            twilio_error(21611, "This 'From' number has exceeded the maximum number of queued messages", 400),
            {},
            None,
            False,
        ),
        (503, twilio_error(20503, "Service Unavailable", 503), {"Retry-After": "30"}, 30.0, True),
        (401, twilio_error(20003, "Authenticate", 401), {}, None, True),
        (404, twilio_error(20404, "The requested resource was not found", 404), {}, None, True),
    ],
)
def test_throttling_outages_and_our_own_setup_errors_are_transient(
    status: int, body: dict[str, Any], headers: dict[str, str], retry_after: float | None, unavailable: bool
) -> None:
    twilio = FakeTwilio(status, body, headers)
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(twilio).submit(submit_request()))
    assert raised.value.permanent is False
    assert raised.value.retry_after == retry_after
    assert raised.value.unavailable is unavailable
    assert raised.value.maybe_taken is False


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json=twilio_error(20500, "Internal Server Error", 500)),
        httpx.Response(502, text="<html><body>502 Bad Gateway</body></html>", headers={"Content-Type": "text/html"}),
        httpx.Response(
            504, text="<html><body>504 Gateway Time-out</body></html>", headers={"Content-Type": "text/html"}
        ),
    ],
    ids=["500", "502", "504"],
)
def test_a_server_error_to_create_a_message_may_have_sent_it_so_it_is_never_offered_again(
    answer: httpx.Response,
) -> None:
    # Given Twilio answers the Messages POST with its documented 500 (error 20500: "an error in the server handling
    # logic or a timeout in the API"; sending an SMS "is not idempotent ... it is possible for a customer to receive
    # multiple messages"), or its edge with a 502/504 (a proxy lost the backend's answer)
    twilio = provider(lambda request: answer)

    # When a message is submitted
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(twilio.submit(submit_request()))

    # Then the dispatcher is told Twilio may have the message: neither the fallback nor Twilio is asked again
    assert raised.value.permanent is False
    assert raised.value.maybe_taken is True
    assert f"answered {answer.status_code}" in raised.value.message


@pytest.mark.parametrize("failure", [httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")])
def test_timeouts_and_connection_errors_are_transient(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(handler).submit(submit_request()))
    assert raised.value.permanent is False
    assert raised.value.unavailable is True


@pytest.mark.parametrize("sid", [{}, {"sid": None}, {"sid": ""}, {"sid": 12345}, {"sid": ["SM1"]}])
def test_a_success_without_a_sid_is_not_retried(sid: dict[str, Any]) -> None:
    # Twilio took the request; a retry could send the text twice, a failure would refund a message it is sending:
    # one Twilio may have taken (never offered again, settled by its status callback). A sid that is not a non-empty
    # string is none: never the id "12345" or "['SM1']"
    twilio = FakeTwilio(201, {"status": "queued", **sid})
    with pytest.raises(UpstreamError, match="answered 201 without a sid") as raised:
        asyncio.run(provider(twilio).submit(submit_request()))
    assert (raised.value.maybe_taken, raised.value.unavailable) == (True, False)


def test_configuration_needs_the_account_sid_and_auth_token() -> None:
    with pytest.raises(KeyError):
        TwilioProvider.from_config("twilio", {"type": "twilio", "account_sid": ACCOUNT_SID})
    for token in (None, "", 12345):
        # Read with str(), null was the auth token "None": anyone could sign callbacks with it
        with pytest.raises(ValueError, match="auth_token"):
            TwilioProvider.from_config("twilio", {"account_sid": ACCOUNT_SID, "auth_token": token})
    with pytest.raises(ValueError, match="go together"):
        TwilioProvider.from_config(
            "twilio", {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "api_key_sid": "SKxxxxxxxx"}
        )


# --- callbacks ----------------------------------------------------------------------------------------------


def status_callback_body(status: str = "delivered", **extra: str) -> str:
    """A StatusCallback request body as Twilio documents it (form-encoded)."""
    fields = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": "+14155552345",
        "MessageSid": MESSAGE_SID,
        "MessageStatus": status,
        "SmsSid": MESSAGE_SID,
        "SmsStatus": status,
        "To": "+2348020000000",
        **extra,
    }
    return urlencode(fields)


def incoming_message_body(**extra: str) -> str:
    """An incoming-message webhook body as Twilio documents it."""
    fields = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": "SMbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "",
        "SmsSid": "SMbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": "STOP please, café",
        "FromCountry": "NG",
        "To": "+14155552345",
        "ToZip": "94105",
        "NumSegments": "1",
        "MessageSid": "SMbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "AccountSid": ACCOUNT_SID,
        "From": "+2348020000000",
        "ApiVersion": "2010-04-01",
        **extra,
    }
    return urlencode(fields)


def signed(url: str, body: str, token: str = AUTH_TOKEN, method: str = "POST") -> CallbackRequest:
    params = parse_qs(body, keep_blank_values=True) if method == "POST" else {}
    signature = twilio_signature(token, url, params)
    query = {key: values[-1] for key, values in parse_qs(url.partition("?")[2]).items()}
    return CallbackRequest(
        method=method,
        url=url,
        headers={"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature},
        query=query,
        body=body if method == "POST" else "",
    )


def test_the_signature_scheme_matches_twilios_published_example() -> None:
    # https://www.twilio.com/docs/usage/webhooks/webhooks-security: token 12345, this URL and these parameters
    body = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212"
    params = parse_qs(body)
    assert twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params) == (
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )


def test_a_signed_status_callback_is_verified_and_parsed_with_our_reference() -> None:
    # Given a delivered status callback on the URL we gave Twilio, signed with the auth token
    request = signed(f"{DLR_URL}?ref={CLIENT_REF}", status_callback_body("delivered"))
    twilio = provider(FakeTwilio())
    # Then it verifies, and reads as delivered, with the sid and our client reference
    assert twilio.verify_callback(request) is True
    [report] = twilio.parse_delivery_reports(request)
    assert report.upstream == "twilio"
    assert report.upstream_message_id == MESSAGE_SID
    assert report.client_ref == CLIENT_REF
    assert report.status == MessageStatus.DELIVERED
    assert report.error_code is None


def test_a_signature_over_the_url_with_the_default_port_is_accepted() -> None:
    request = signed(f"{DLR_URL}?ref={CLIENT_REF}", status_callback_body())
    with_port = signed(
        f"https://abc123.execute-api.us-east-1.amazonaws.com:443/callbacks/twilio/dlr?ref={CLIENT_REF}",
        status_callback_body(),
    )
    assert provider(FakeTwilio()).verify_callback(request.model_copy(update={"headers": with_port.headers})) is True


def tampered(request: CallbackRequest, **changes: Any) -> CallbackRequest:
    return request.model_copy(update=changes)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda r: tampered(r, headers={"content-type": r.headers["content-type"]}), id="missing"),
        pytest.param(lambda r: tampered(r, headers={**r.headers, "x-twilio-signature": ""}), id="empty"),
        pytest.param(
            lambda r: signed(r.url, r.body, token="not-the-auth-token"),
            id="wrong token",
        ),
        pytest.param(
            lambda r: tampered(r, body=r.body.replace("MessageStatus=undelivered", "MessageStatus=delivered")),
            id="tampered status",
        ),
        pytest.param(
            lambda r: tampered(r, url=r.url.replace(CLIENT_REF, "1042.1.1"), query={"ref": "1042.1.1"}),
            id="re-pointed reference",
        ),
        pytest.param(lambda r: tampered(r, headers={**r.headers, "x-twilio-signature": "é"}), id="non-ascii"),
    ],
)
def test_a_forged_missing_or_tampered_signature_is_refused(forge: Callable[[CallbackRequest], CallbackRequest]) -> None:
    genuine = signed(f"{DLR_URL}?ref={CLIENT_REF}", status_callback_body("undelivered", ErrorCode="30003"))
    twilio = provider(FakeTwilio())
    assert twilio.verify_callback(genuine) is True
    assert twilio.verify_callback(forge(genuine)) is False


def test_a_get_status_callback_is_signed_over_its_url_alone() -> None:
    url = f"{DLR_URL}?ref={CLIENT_REF}&{status_callback_body('sent')}"
    request = signed(url, "", method="GET")
    twilio = provider(FakeTwilio())
    assert twilio.verify_callback(request) is True
    [report] = twilio.parse_delivery_reports(request)
    assert (report.status, report.client_ref) == (MessageStatus.SUBMITTED, CLIENT_REF)


@pytest.mark.parametrize(
    ("status", "ours"),
    [
        ("queued", MessageStatus.SUBMITTED),
        ("sending", MessageStatus.SUBMITTED),
        ("sent", MessageStatus.SUBMITTED),
        ("accepted", MessageStatus.SUBMITTED),
        ("delivered", MessageStatus.DELIVERED),
        ("read", MessageStatus.DELIVERED),
        ("undelivered", MessageStatus.FAILED),
        ("failed", MessageStatus.REJECTED),
        ("canceled", MessageStatus.FAILED),
    ],
)
def test_twilio_statuses_map_to_ours(status: str, ours: MessageStatus) -> None:
    request = signed(f"{DLR_URL}?ref={CLIENT_REF}", status_callback_body(status))
    [report] = provider(FakeTwilio()).parse_delivery_reports(request)
    assert report.status == ours


def test_an_undelivered_callback_carries_the_error_code_and_the_carrier_done_date() -> None:
    body = status_callback_body("undelivered", ErrorCode="30003", RawDlrDoneDate="2401022350")
    [report] = provider(FakeTwilio()).parse_delivery_reports(signed(f"{DLR_URL}?ref={CLIENT_REF}", body))
    assert (report.status, report.error_code) == (MessageStatus.FAILED, "30003")
    assert report.reported_at == "2024-01-02T23:50:00.000000Z"


def test_an_unknown_status_is_rejected() -> None:
    request = signed(f"{DLR_URL}?ref={CLIENT_REF}", status_callback_body("teleported"))
    with pytest.raises(CallbackRejected):
        provider(FakeTwilio()).parse_delivery_reports(request)


def test_an_incoming_message_is_verified_and_parsed() -> None:
    url = "https://abc123.execute-api.us-east-1.amazonaws.com/callbacks/twilio/inbound"
    request = signed(url, incoming_message_body())
    twilio = provider(FakeTwilio())
    assert twilio.verify_callback(request) is True
    assert twilio.verify_callback(tampered(request, body=request.body.replace("please", "now"))) is False
    sms = twilio.parse_inbound(request)
    assert sms.upstream == "twilio"
    assert sms.upstream_message_id == "SMbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    assert sms.msisdn == "+2348020000000"
    assert sms.to == "14155552345"
    assert sms.text == "STOP please, café"
    assert sms.received_at.endswith("Z")


def test_an_incoming_message_without_from_is_rejected() -> None:
    body = urlencode({"MessageSid": "SMb", "To": "+14155552345", "Body": "hi"})
    with pytest.raises(CallbackRejected):
        provider(FakeTwilio()).parse_inbound(signed("https://x.example/callbacks/twilio/inbound", body))


# --- end to end: dispatcher and webhook functions over moto ---------------------------------------------------

API_DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"
# The webhook function's URL (template.yaml: CALLBACK_BASE_URL); its FunctionUrl attribute ends with "/".
FUNCTION_URL_DOMAIN = "q2w3e4r5t6y7u8i9o0p1a2s3d4f5g6h7.lambda-url.us-east-1.on.aws"


@pytest.fixture(params=[FUNCTION_URL_DOMAIN, API_DOMAIN], ids=["function-url", "http-api"])
def callback_domain(request: pytest.FixtureRequest) -> str:
    """Where callbacks arrive: the webhook's function URL, or the HttpApi's routes kept for older messages."""
    return str(request.param)


@pytest.fixture
def twilio_upstream(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, callback_domain: str) -> FakeTwilio:
    import boto3

    from sms_gateway import bootstrap

    boto3.client("ssm").put_parameter(
        Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}twilio",
        Type="SecureString",
        Value=json.dumps({"type": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}),
    )
    monkeypatch.setenv("DEFAULT_UPSTREAM", "twilio")
    monkeypatch.setenv("CALLBACK_BASE_URL", f"https://{callback_domain}/")
    bootstrap.reset()
    fake = FakeTwilio()
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    original = TwilioProvider.__init__

    def with_mock_client(self: TwilioProvider, **kwargs: Any) -> None:
        original(self, **{**kwargs, "client": client})

    monkeypatch.setattr(TwilioProvider, "__init__", with_mock_client)
    return fake


def webhook_event(path: str, query: str, body: str, signature: str, domain: str = API_DOMAIN) -> dict[str, Any]:
    """Twilio's callback as the webhook function gets it: through the HttpApi's route, or (`domain` a function
    URL's) through the function URL, whose events have route $default and no path parameters."""
    event = load_event("webhook-dlr-simulator.json")
    event["rawPath"] = path
    event["rawQueryString"] = query
    event["queryStringParameters"] = {key: values[-1] for key, values in parse_qs(query).items()}
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["domainName"] = domain
    event["requestContext"]["domainPrefix"] = event["requestContext"]["apiId"] = domain.split(".", 1)[0]
    if domain.endswith(".on.aws"):
        event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
        del event["pathParameters"]
    else:
        event["pathParameters"] = {"provider": "twilio"}
    event["headers"] = {
        "content-type": "application/x-www-form-urlencoded",
        "host": domain,
        "x-twilio-signature": signature,
    }
    event["body"] = body
    return event


def test_end_to_end_a_twilio_status_callback_finds_its_message_by_our_reference(
    aws, twilio_upstream, callback_domain
) -> None:
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Cinema Club", senders=["48974"], credits=100)
    api = load_function("api")
    # Given a send that the dispatcher submitted to Twilio
    event = load_event("api-sendsms-9bits.json", YOUR_API_Token=account["token"])
    reference_id = json.loads(api.handler(event, FakeContext())["body"])["reference_id"]
    sqs_event = as_lambda_sqs_event(queued_records(aws))
    assert load_function("dispatcher").handler(sqs_event, FakeContext()) == {"batchItemFailures": []}
    callback = twilio_upstream.form()["StatusCallback"][0]
    assert callback.startswith(f"https://{callback_domain}/callbacks/twilio/dlr?ref=")
    query = callback.partition("?")[2]
    webhook = load_function("webhook")

    # When a forged status callback arrives, it is refused and changes nothing
    body = status_callback_body("delivered")
    forged = webhook_event("/callbacks/twilio/dlr", query, body, "bm90IGEgc2lnbmF0dXJl", callback_domain)
    assert webhook.handler(forged, FakeContext())["statusCode"] == 401

    # When Twilio posts the delivered callback to the URL we gave it, signed over that full URL
    signature = twilio_signature(AUTH_TOKEN, callback, parse_qs(body))
    answer = webhook.handler(
        webhook_event("/callbacks/twilio/dlr", query, body, signature, callback_domain), FakeContext()
    )

    # Then it is applied to the message, which reads delivered
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["applied"] == 1
    report_event = load_event("api-batch-delivery-report.json", YOUR_API_Token=account["token"])
    report_event["rawPath"] = f"/ng/v1/batches/{reference_id}/delivery_report"
    report_event["requestContext"]["http"]["path"] = report_event["rawPath"]
    [entry] = json.loads(api.handler(report_event, FakeContext())["body"])["data"]
    assert entry["status"] == "delivered"


def test_an_acceptance_without_a_sid_leaves_the_message_to_its_status_callback_not_failed_and_refunded() -> None:
    from tests.fakes import cinema_store, dispatched_through

    # Given Twilio creates the message (201) but its answer carries no readable sid (a proxy rewrote the body, a
    # truncated JSON document)
    twilio = provider(lambda request: httpx.Response(201, text='{"status": "queued", "sid": '))
    # When the message is dispatched
    message, store = dispatched_through(twilio)
    # Then it is not failed and refunded: Twilio is sending it, and its status callback (which carries our reference)
    # settles it. Recorded like any submit Twilio may have taken: submitted, submit_unconfirmed, still charged
    assert (message.status, message.error_code) == (MessageStatus.SUBMITTED, "submit_unconfirmed")
    assert store.accounts["7"].credits == cinema_store().accounts["7"].credits - message.price


def test_review_a_region_twilio_is_not_enabled_for_leaves_the_route_fallback_free_to_take_it() -> None:
    twilio = FakeTwilio(
        400,
        twilio_error(
            21408, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number", 400
        ),
    )
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(twilio).submit(submit_request()))
    # Never sent there: the fallback is offered it, and without one it fails at once (Twilio would answer the same)
    assert (raised.value.unavailable, raised.value.permanent) == (True, True)


def test_review_a_text_longer_than_twilio_sends_is_offered_to_the_route_fallback() -> None:
    from sms_gateway.domain.segments import segment

    # Given an account whose max_parts the operator raised to 11 (admin takes up to 255), and an 11-part GSM-7 text
    text = "x" * 1650
    assert segment(text).parts == 11
    # When Twilio answers its documented refusal of a Body over 1,600 characters
    twilio = FakeTwilio(400, twilio_error(21617, "The concatenated message body exceeds the 1600 character limit", 400))
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(twilio).submit(submit_request(text=text)))
    # Then it is a message of more parts than this upstream sends: never sent there, offered to the fallback at once
    # (docs/providers.md), as Kannel's and Jasmin's max_parts do, not failed with the fallback never asked
    assert (raised.value.unavailable, raised.value.permanent) == (True, True)


def test_a_text_longer_than_twilio_sends_is_never_posted_and_its_refusal_by_twilio_is_taken_alike() -> None:
    # Given Twilio, which refuses a Body over 1,600 characters with 21617
    twilio = FakeTwilio(400, twilio_error(21617, "The concatenated message body exceeds the 1600 character limit", 400))
    # When a text of 1,601 characters is submitted, and one of 1,600 that Twilio refuses all the same
    refused: list[UpstreamError] = []
    for text in ("x" * 1601, "x" * 1600):
        with pytest.raises(UpstreamError) as raised:
            asyncio.run(provider(twilio).submit(submit_request(text=text)))
        refused.append(raised.value)
    # Then the first never reaches Twilio, the second is asked; both are too long there: not sent there, offered to
    # the route's fallback, and without one failed too_many_parts
    assert len(twilio.requests) == 1 and twilio.form()["Body"] == ["x" * 1600]
    assert [(e.unavailable, e.permanent, e.error_code) for e in refused] == [(True, True, "too_many_parts")] * 2


def test_review_callbacks_signed_with_either_token_verify_while_the_auth_token_is_rotated() -> None:
    # Given an auth token being rotated, configured as the other upstreams' callback tokens are: the new one (Twilio's
    # secondary, which also authenticates submits) and the one it replaces, still taken until the operator removes it
    # (every container reads the parameter at its own time within CONFIG_MAX_AGE, and Twilio switches signing from the
    # old token to the new one the moment the secondary is promoted)
    old_token, new_token = AUTH_TOKEN, "the_promoted_secondary_token"
    twilio = TwilioProvider.from_config(
        "twilio", {"account_sid": ACCOUNT_SID, "auth_token": new_token, "previous_auth_tokens": [old_token]}
    )
    url = f"{DLR_URL}?ref={CLIENT_REF}"
    # When Twilio posts status callbacks signed before and after the promotion
    # Then both verify: Twilio posts a refused status callback or incoming message only once (no retry), so a refusal
    # loses the delivery report (the delivered message is later expired and refunded) or the SMS, STOPs included
    assert twilio.verify_callback(signed(url, status_callback_body("delivered"), token=new_token)) is True
    assert twilio.verify_callback(signed(url, status_callback_body("delivered"), token=old_token)) is True


def test_during_a_rotation_submits_authenticate_with_the_new_token_and_other_signatures_are_refused() -> None:
    # Given an auth token being rotated: the new one set, the old one in previous_auth_tokens
    old_token, new_token = AUTH_TOKEN, "the_promoted_secondary_token"
    twilio = FakeTwilio()
    rotated = provider(twilio, auth_token=new_token, previous_auth_tokens=[old_token])
    # When a message is submitted
    asyncio.run(rotated.submit(submit_request()))
    # Then it authenticates with the new token only: the old one only verifies callbacks
    assert twilio.requests[0].headers["authorization"] == basic(ACCOUNT_SID, new_token)
    # And a callback signed with a token that is neither is refused, as once the old one is removed is a callback
    # signed with it
    url = f"{DLR_URL}?ref={CLIENT_REF}"
    assert rotated.verify_callback(signed(url, status_callback_body(), token="another_accounts_token_0")) is False
    done = provider(FakeTwilio(), auth_token=new_token)
    assert done.verify_callback(signed(url, status_callback_body(), token=old_token)) is False


@pytest.mark.parametrize("previous", [AUTH_TOKEN, ["short"], [7]], ids=repr)
def test_previous_auth_tokens_that_are_not_a_list_of_tokens_are_refused_at_configuration(previous: Any) -> None:
    with pytest.raises(ValueError, match="previous_auth_tokens"):
        provider(FakeTwilio(), previous_auth_tokens=previous)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            21606,
            "The 'From' phone number provided is not a valid message-capable Twilio phone number for this "
            "destination/account",
        ),
        (21608, "The number +234802XXXXXXX is unverified. Trial accounts cannot send messages to unverified numbers"),
        (21612, "Message cannot be sent with the current combination of 'To' and/or 'From' parameters"),
        (21659, "'From' 48974 is not a Twilio phone number or Short Code country mismatch"),
    ],
    ids=["21606", "21608", "21612", "21659"],
)
def test_review_a_sender_or_destination_our_twilio_account_cannot_send_is_offered_to_the_route_fallback(
    code: int, message: str
) -> None:
    from tests.fakes import FakeProvider, dispatched_through

    # Given a route of Twilio then a fallback, and Twilio refusing the message for what our Twilio account may send:
    # a From it does not hold for that destination, a trial account's unverified recipient, a sender the destination
    # country or network does not take from Twilio, a short code of another country
    twilio = provider(FakeTwilio(400, twilio_error(code, message, 400)))
    fallback = FakeProvider("fallback")
    # When the message is dispatched
    dispatched, _ = dispatched_through(twilio, fallback)
    # Then the fallback, which may hold that sender and reach that number, is offered it and takes it
    assert [request.msisdn for request in fallback.submits] == ["+2348020000000"]
    assert (dispatched.status, dispatched.upstream) == (MessageStatus.SUBMITTED, "fallback")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21701, "The Messaging Service does not exist"),
        (21705, "The Messaging Service is invalid"),
    ],
    ids=["21701", "21705"],
)
def test_review_a_messaging_service_twilio_does_not_know_is_our_setup_not_the_message(code: int, message: str) -> None:
    from tests.fakes import FakeProvider, cinema_store, dispatched_through

    # Given a Twilio upstream whose messaging_service_sid names no service of our Twilio account (a typo in the
    # parameter, a service deleted at Twilio): every message is refused alike
    twilio = provider(FakeTwilio(400, twilio_error(code, message, 400)), messaging_service_sid="MGtypo")
    # When a message is dispatched through it alone
    alone, store = dispatched_through(twilio)
    # Then it is not failed and refunded, as a message Twilio refused would be: it waits (a transient failure) while
    # the operator fixes the parameter, as on Twilio's 401 for wrong credentials
    assert alone.status == MessageStatus.QUEUED
    assert store.accounts["7"].credits == cinema_store().accounts["7"].credits - alone.price
    # And with a fallback on the route, the fallback takes it at once
    fallback = FakeProvider("fallback")
    dispatched, _ = dispatched_through(twilio, fallback)
    assert (dispatched.status, dispatched.upstream) == (MessageStatus.SUBMITTED, "fallback")
