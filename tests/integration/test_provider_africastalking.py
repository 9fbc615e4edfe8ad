"""The Africa's Talking adapter against AT's documented wire formats: bulk SMS submits, delivery-report and
incoming-message notifications; then end to end through the dispatcher and the webhook function (moto)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import pytest

from sms_gateway.adapters.providers.africastalking import AfricasTalkingProvider
from sms_gateway.domain.models import CallbackRequest, SubmitRequest, iso
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError
from tests.conftest import FakeContext, load_event, load_function
from tests.integration.test_send_path import as_lambda_sqs_event, queued_records

USERNAME = "cinemaclub"
API_KEY = "atsk_0123456789abcdef"
# 16 characters or more, as a callback_token must be.
CALLBACK_TOKEN = "cb-7f3a9d2e41-0b8c5e"
MESSAGE_ID = "ATXid_4f1c2a9e0b7d4c53a1"
CLIENT_REF = "1042.7310293847561.7310293847562"
TEXT = "When was the last time you went to the cinema?"


def sent(*recipients: dict[str, Any], summary: str = "Sent to 1/1 Total Cost: NGN 2.2000") -> dict[str, Any]:
    """The submit answer as AT documents it."""
    return {"SMSMessageData": {"Message": summary, "Recipients": list(recipients)}}


def recipient(status_code: int = 101, status: str = "Success", message_id: str = MESSAGE_ID) -> dict[str, Any]:
    return {
        "statusCode": status_code,
        "number": "+2348020000000",
        "status": status,
        "cost": "NGN 2.2000" if status_code < 200 else "0",
        "messageId": message_id,
    }


class FakeAT:
    def __init__(self, status: int = 201, body: Any = None, text: str | None = None) -> None:
        self.status = status
        self.body = sent(recipient()) if body is None else body
        self.text = text
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.text is not None:
            return httpx.Response(self.status, text=self.text)
        return httpx.Response(self.status, json=self.body)

    def form(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].content.decode(), keep_blank_values=True)


def provider(handler: Callable[[httpx.Request], httpx.Response], **config: Any) -> AfricasTalkingProvider:
    settings = {
        "type": "africastalking",
        "username": USERNAME,
        "api_key": API_KEY,
        "callback_token": CALLBACK_TOKEN,
        **config,
    }
    return AfricasTalkingProvider.from_config(
        "africastalking", settings, client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )


def submit_request(**overrides: Any) -> SubmitRequest:
    fields = {
        "client_ref": CLIENT_REF,
        "sender": "48974",
        "msisdn": "+2348020000000",
        "text": TEXT,
        "dlr_url": "https://abc123.execute-api.us-east-1.amazonaws.com/callbacks/africastalking/dlr",
    }
    fields.update(overrides)
    return SubmitRequest(**fields)


def submit(fake: FakeAT, **config: Any) -> str:
    return asyncio.run(provider(fake, **config).submit(submit_request())).upstream_message_id


def refusal(fake: FakeAT) -> UpstreamError:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(fake).submit(submit_request()))
    return raised.value


# --- submit -------------------------------------------------------------------------------------------------


def test_submit_posts_the_documented_form_with_the_api_key_header() -> None:
    # Given AT answering 201 with one successful recipient
    at = FakeAT()
    # When a message is submitted
    message_id = submit(at)
    # Then it was one form POST to /version1/messaging with the apiKey and Accept headers
    [request] = at.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.africastalking.com/version1/messaging"
    assert request.headers["apikey"] == API_KEY
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in request.headers
    # With exactly the documented fields (bulkSMSMode=1 as the official SDK sends it)
    assert at.form() == {
        "username": [USERNAME],
        "to": ["+2348020000000"],
        "message": [TEXT],
        "from": ["48974"],
        "bulkSMSMode": ["1"],
    }
    # And the upstream id is the recipient's messageId
    assert message_id == MESSAGE_ID


def test_the_sandbox_username_and_options_pick_the_sandbox_and_enqueue() -> None:
    at = FakeAT()
    asyncio.run(
        AfricasTalkingProvider.from_config(
            "at-sandbox",
            {"username": "sandbox", "api_key": API_KEY, "callback_token": CALLBACK_TOKEN, "enqueue": True},
            client=httpx.AsyncClient(transport=httpx.MockTransport(at)),
        ).submit(submit_request())
    )
    assert str(at.requests[0].url) == "https://api.sandbox.africastalking.com/version1/messaging"
    assert at.form()["enqueue"] == ["1"]
    assert at.form()["username"] == ["sandbox"]


def test_sandbox_flag_and_bulk_mode_come_from_the_configuration() -> None:
    at = FakeAT()
    submit(at, sandbox=True, bulk_sms_mode=None)
    assert at.requests[0].url.host == "api.sandbox.africastalking.com"
    assert "bulkSMSMode" not in at.form()


@pytest.mark.parametrize(
    ("sandbox", "host"), [("false", "api.africastalking.com"), ("TRUE", "api.sandbox.africastalking.com")]
)
def test_a_sandbox_flag_written_as_text_is_read_as_what_it_says(sandbox: str, host: str) -> None:
    # A configuration written by hand or a script ("sandbox": "false"): until 2026-12-06 any text was truthy, and a
    # live upstream sent every message to the sandbox, where nothing reaches a handset
    at = FakeAT()
    submit(at, sandbox=sandbox)
    assert at.requests[0].url.host == host


def test_a_sandbox_flag_that_is_neither_true_nor_false_is_refused() -> None:
    with pytest.raises(ValueError, match="sandbox"):
        provider(FakeAT(), sandbox="no")


@pytest.mark.parametrize(("code", "status"), [(100, "Processed"), (101, "Success"), (102, "Queued")])
def test_accepted_status_codes_return_the_message_id(code: int, status: str) -> None:
    assert submit(FakeAT(body=sent(recipient(code, status)))) == MESSAGE_ID


@pytest.mark.parametrize(
    ("code", "status", "permanent", "unavailable"),
    [
        (401, "RiskHold", True, False),
        (402, "InvalidSenderId", True, False),
        (403, "InvalidPhoneNumber", True, False),
        (404, "UnsupportedNumberType", True, False),
        (405, "InsufficientBalance", False, True),
        (406, "UserInBlacklist", True, False),
        # No route for the number there: the fallback is offered it at once, and without one it fails at once
        (407, "CouldNotRoute", True, True),
        (409, "DoNotDisturbRejection", True, False),
        (500, "InternalServerError", False, True),
        (501, "GatewayError", False, True),
        (502, "RejectedByGateway", True, False),
        (408, "SomethingNew", True, False),
        (503, "SomethingElse", False, True),
    ],
)
def test_each_refusal_code_is_permanent_or_transient(
    code: int, status: str, permanent: bool, unavailable: bool
) -> None:
    body = sent(recipient(code, status, message_id="None"), summary="Sent to 0/1 Total Cost: 0")
    error = refusal(FakeAT(body=body))
    assert error.permanent is permanent
    assert str(code) in error.message
    # A transient refusal, or one of our setup there, is offered to the fallback upstream at once
    assert bool(error.unavailable) is unavailable


@pytest.mark.parametrize("body", [sent(recipient(407, "CouldNotRoute", "None")), sent(summary="CouldNotRoute")])
def test_could_not_route_goes_to_the_fallback_and_without_one_fails_at_once_refunded(body: dict[str, Any]) -> None:
    from tests.fakes import FakeProvider, dispatched_through

    # Given AT that has no route for the number (CouldNotRoute), and a route fallback: the fallback sends it
    fallback = FakeProvider("fallback")
    message, _ = dispatched_through(provider(FakeAT(body=body)), fallback)
    assert [request.text for request in fallback.submits] == ["Hello"]
    assert (message.status, message.upstream) == (MessageStatus.SUBMITTED, "fallback")
    # Given AT alone on the route: the message fails at once and is refunded, as Jasmin's and Kannel's no route
    # (asked again, AT would answer the same), rather than come back on AT's retry schedule
    alone, store = dispatched_through(provider(FakeAT(body=body)))
    assert (alone.status, alone.error_code) == (MessageStatus.FAILED, "upstream_rejected")
    assert store.accounts["7"].credits == 1000


def test_nothing_sent_for_an_invalid_sender_is_permanent() -> None:
    error = refusal(FakeAT(body=sent(summary="InvalidSenderId")))
    assert error.permanent is True
    assert "InvalidSenderId" in error.message


def test_nothing_sent_for_an_empty_balance_is_transient() -> None:
    assert refusal(FakeAT(body=sent(summary="InsufficientBalance"))).permanent is False


def test_the_recipient_matching_our_number_is_the_one_read() -> None:
    other = {**recipient(403, "InvalidPhoneNumber", "None"), "number": "+2348020000001"}
    assert submit(FakeAT(body=sent(other, recipient()))) == MESSAGE_ID


@pytest.mark.parametrize(
    ("status", "text", "permanent", "unavailable"),
    [
        (401, "The supplied authentication is invalid", False, True),
        (400, "Request is missing required form field 'to'", True, False),
        (429, "Too many requests", False, False),
        (500, "Internal Server Error", False, True),
        (502, "Bad Gateway", False, True),
    ],
)
def test_http_errors(status: int, text: str, permanent: bool, unavailable: bool) -> None:
    error = refusal(FakeAT(status, text=text))
    assert (error.permanent, error.unavailable) == (permanent, unavailable)


def test_a_throttle_honours_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text="Too many requests", headers={"Retry-After": "12"})

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(handler).submit(submit_request()))
    assert (raised.value.permanent, raised.value.retry_after) == (False, 12.0)


@pytest.mark.parametrize("failure", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
def test_timeouts_and_connection_errors_are_transient(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(handler).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)


SEED_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"


@pytest.mark.parametrize(
    ("date", "expected"),
    [("0001-01-01 00:00:00", "0001-01-01T00:00:00.000000Z"), ("0999-12-31T23:59:59Z", "0999-12-31T23:59:59.000000Z")],
)
def test_an_incoming_date_of_an_early_year_reaches_the_client_in_the_seed_s_form(date: str, expected: str) -> None:
    # Until session 36 its year was not padded ("1-01-01T00:00:00.000000Z"), and a client parsing sent_date with the
    # seed's format (yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z') failed on it
    sms = provider(FakeAT()).parse_inbound(callback("inbound", incoming_body(date=date)))
    assert sms.received_at == expected


@pytest.mark.parametrize("date", ["yesterday", "2024-13-45 10:00:00", "x" * 100_000])
def test_end_to_end_an_incoming_message_with_a_date_that_names_no_time_is_taken_as_sent_when_it_came_and_logged(
    aws, at_upstream, date: str
) -> None:
    from sms_gateway_tools.admin import create_account
    from tests.integration.test_operations_metrics import log_lines_at

    # Given an account owning the short code AT delivers
    account = create_account(name="Cinema Club", senders=["48974"], credits=100)
    webhook = load_function("webhook")
    before = iso(datetime.now(UTC))
    # When AT posts an SMS whose date names no time
    with log_lines_at("INFO") as lines:
        answer = webhook.handler(webhook_event("inbound", incoming_body(date=date), CALLBACK_TOKEN), FakeContext())
    # Then AT's post is taken, the SMS stored as sent when it came, in the seed's form
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert before <= stored.received_at <= iso(datetime.now(UTC))
    # And the operator reads why, with (the start of) what AT wrote
    [warning] = [line for line in lines if "names no time" in line["message"]]
    assert warning["level"] == "WARNING"
    assert (warning["upstream"], warning["date"]) == ("africastalking", date[:64])


@pytest.mark.parametrize("body", [{"unexpected": True}, sent(recipient(101, "Success", message_id="None"))])
def test_an_acceptance_we_cannot_read_is_not_retried(body: dict[str, Any]) -> None:
    # AT took the request; a retry could send the text twice, and the fallback too
    error = refusal(FakeAT(body=body))
    assert (error.maybe_taken, error.unavailable) == (True, False)


def test_configuration_needs_credentials_and_a_callback_token() -> None:
    with pytest.raises(KeyError):
        AfricasTalkingProvider.from_config("at", {"username": USERNAME, "api_key": API_KEY})
    with pytest.raises(ValueError, match="callback_token"):
        AfricasTalkingProvider.from_config("at", {"username": USERNAME, "api_key": API_KEY, "callback_token": ""})


# --- callbacks ----------------------------------------------------------------------------------------------


def delivery_report_body(status: str = "Success", **extra: str) -> str:
    """A delivery-report notification as AT documents it (form-encoded)."""
    fields = {
        "id": MESSAGE_ID,
        "status": status,
        "phoneNumber": "+2348020000000",
        "networkCode": "62130",
        "retryCount": "0",
        **extra,
    }
    return urlencode(fields)


def incoming_body(**extra: str) -> str:
    """An incoming-message notification as AT documents it."""
    fields = {
        "date": "2024-01-02 23:50:37",
        "from": "+2348020000000",
        "to": "48974",
        "text": "STOP",
        "id": "b2f4a1e0-5c4e-4a8b-9d57-0e3f6f3f1a11",
        "linkId": "SampleLinkId123",
        "networkCode": "62130",
        **extra,
    }
    return urlencode(fields)


def callback(path: str, body: str, token: str | None = CALLBACK_TOKEN) -> CallbackRequest:
    query = {} if token is None else {"token": token}
    suffix = f"?{urlencode(query)}" if query else ""
    return CallbackRequest(
        method="POST",
        url=f"https://abc123.execute-api.us-east-1.amazonaws.com/callbacks/africastalking/{path}{suffix}",
        headers={"content-type": "application/x-www-form-urlencoded"},
        query=query,
        body=body,
    )


def test_a_tokened_delivery_report_is_verified_and_parsed() -> None:
    at = provider(FakeAT())
    request = callback("dlr", delivery_report_body("Success"))
    assert at.verify_callback(request) is True
    [report] = at.parse_delivery_reports(request)
    assert report.upstream == "africastalking"
    assert report.upstream_message_id == MESSAGE_ID
    # AT echoes nothing of ours: the message is found by its id through the upstream index
    assert report.client_ref is None
    assert report.status == MessageStatus.DELIVERED


@pytest.mark.parametrize("token", [None, "", "cb-wrong", CALLBACK_TOKEN.upper(), CALLBACK_TOKEN + "x", "é"], ids=repr)
def test_a_missing_or_wrong_token_is_refused(token: str | None) -> None:
    assert provider(FakeAT()).verify_callback(callback("dlr", delivery_report_body(), token=token)) is False


def test_callbacks_with_the_token_a_rotation_replaced_are_taken_until_it_is_removed() -> None:
    # Given an upstream whose callback_token was rotated as docs/runbook.md says: the new token set, the old one kept
    # in previous_callback_tokens while the callback URLs at AT still carry it
    old = "cb-old-token-0123456789"
    rotated = provider(FakeAT(), callback_token="cb-new-token-9876543210", previous_callback_tokens=[old])
    # Then callbacks with either token are taken, any other refused
    assert rotated.verify_callback(callback("dlr", delivery_report_body(), token=old)) is True
    assert rotated.verify_callback(callback("inbound", incoming_body(), token="cb-new-token-9876543210")) is True
    assert rotated.verify_callback(callback("dlr", delivery_report_body(), token=CALLBACK_TOKEN)) is False
    # And once the old token is removed, it is refused
    done = provider(FakeAT(), callback_token="cb-new-token-9876543210")
    assert done.verify_callback(callback("dlr", delivery_report_body(), token=old)) is False


@pytest.mark.parametrize("previous", ["cb-old-token-0123456789", ["short"], [7]], ids=repr)
def test_previous_callback_tokens_that_are_not_a_list_of_tokens_are_refused_at_configuration(previous: Any) -> None:
    with pytest.raises(ValueError, match="previous_callback_tokens"):
        provider(FakeAT(), previous_callback_tokens=previous)


def test_the_token_in_the_body_does_not_count() -> None:
    request = callback("dlr", delivery_report_body(token=CALLBACK_TOKEN), token=None)
    assert provider(FakeAT()).verify_callback(request) is False


@pytest.mark.parametrize(
    ("status", "ours"),
    [
        ("Sent", MessageStatus.SUBMITTED),
        ("Submitted", MessageStatus.SUBMITTED),
        ("Buffered", MessageStatus.SUBMITTED),
        ("Success", MessageStatus.DELIVERED),
        ("Rejected", MessageStatus.REJECTED),
        ("Failed", MessageStatus.FAILED),
        ("AbsentSubscriber", MessageStatus.FAILED),
        ("Expired", MessageStatus.EXPIRED),
    ],
)
def test_at_statuses_map_to_ours(status: str, ours: MessageStatus) -> None:
    [report] = provider(FakeAT()).parse_delivery_reports(callback("dlr", delivery_report_body(status)))
    assert report.status == ours


def test_a_failure_carries_its_reason() -> None:
    body = delivery_report_body("Failed", failureReason="UserInBlacklist")
    [report] = provider(FakeAT()).parse_delivery_reports(callback("dlr", body))
    assert (report.status, report.error_code) == (MessageStatus.FAILED, "UserInBlacklist")


@pytest.mark.parametrize("body", [delivery_report_body("Teleported"), urlencode({"status": "Success"}), ""])
def test_an_unreadable_delivery_report_is_rejected(body: str) -> None:
    with pytest.raises(CallbackRejected):
        provider(FakeAT()).parse_delivery_reports(callback("dlr", body))


def test_an_incoming_message_is_parsed() -> None:
    at = provider(FakeAT())
    request = callback("inbound", incoming_body())
    assert at.verify_callback(request) is True
    sms = at.parse_inbound(request)
    assert sms.upstream == "africastalking"
    assert sms.upstream_message_id == "b2f4a1e0-5c4e-4a8b-9d57-0e3f6f3f1a11"
    assert (sms.msisdn, sms.to, sms.text) == ("+2348020000000", "48974", "STOP")
    assert sms.received_at == "2024-01-02T23:50:37.000000Z"


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2024-01-02T23:50:37.123Z", "2024-01-02T23:50:37.123000Z"),
        ("2024-01-03 02:50:37+03:00", "2024-01-02T23:50:37.000000Z"),
        ("2024-01-02 23:50:37", "2024-01-02T23:50:37.000000Z"),
    ],
)
def test_incoming_dates_become_iso_utc(date: str, expected: str) -> None:
    sms = provider(FakeAT()).parse_inbound(callback("inbound", incoming_body(date=date)))
    assert sms.received_at == expected


def test_an_incoming_date_that_is_no_date_is_when_it_came() -> None:
    # Until session 35 it reached the client's sent_date as written ("yesterday")
    before = iso(datetime.now(UTC))
    sms = provider(FakeAT()).parse_inbound(callback("inbound", incoming_body(date="yesterday")))
    assert before <= sms.received_at <= iso(datetime.now(UTC))


def test_an_incoming_message_without_a_sender_is_rejected() -> None:
    with pytest.raises(CallbackRejected):
        provider(FakeAT()).parse_inbound(callback("inbound", urlencode({"to": "48974", "text": "hi"})))


# --- end to end: dispatcher and webhook functions over moto ---------------------------------------------------

API_DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"


@pytest.fixture
def at_upstream(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> FakeAT:
    import boto3

    from sms_gateway import bootstrap

    boto3.client("ssm").put_parameter(
        Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}africastalking",
        Type="SecureString",
        Value=json.dumps(
            {"type": "africastalking", "username": USERNAME, "api_key": API_KEY, "callback_token": CALLBACK_TOKEN}
        ),
    )
    monkeypatch.setenv("DEFAULT_UPSTREAM", "africastalking")
    bootstrap.reset()
    fake = FakeAT()
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    original = AfricasTalkingProvider.__init__

    def with_mock_client(self: AfricasTalkingProvider, **kwargs: Any) -> None:
        original(self, **{**kwargs, "client": client})

    monkeypatch.setattr(AfricasTalkingProvider, "__init__", with_mock_client)
    return fake


def webhook_event(kind: str, body: str, token: str) -> dict[str, Any]:
    event = load_event("webhook-dlr-simulator.json")
    path = f"/callbacks/africastalking/{kind}"
    event["routeKey"] = f"POST /callbacks/{{provider}}/{kind}"
    event["rawPath"] = path
    event["rawQueryString"] = urlencode({"token": token})
    event["queryStringParameters"] = {"token": token}
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["routeKey"] = event["routeKey"]
    event["pathParameters"] = {"provider": "africastalking"}
    event["headers"] = {"content-type": "application/x-www-form-urlencoded", "host": API_DOMAIN}
    event["body"] = body
    return event


def dispatch_queued(aws: dict[str, str]) -> dict[str, Any]:
    return dict(load_function("dispatcher").handler(as_lambda_sqs_event(queued_records(aws)), FakeContext()))


def test_end_to_end_an_at_delivery_report_finds_its_message_by_the_upstream_id(aws, at_upstream) -> None:
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Cinema Club", senders=["48974"], credits=100)
    api = load_function("api")
    # Given a send that the dispatcher submitted to AT, which answered our messageId
    event = load_event("api-sendsms-9bits.json", YOUR_API_Token=account["token"])
    reference_id = json.loads(api.handler(event, FakeContext())["body"])["reference_id"]
    assert dispatch_queued(aws) == {"batchItemFailures": []}
    assert at_upstream.form()["to"] == ["+2348020000000"]
    webhook = load_function("webhook")

    # When a delivery report comes with the wrong token, it is refused
    refused = webhook.handler(webhook_event("dlr", delivery_report_body("Success"), "guess"), FakeContext())
    assert refused["statusCode"] == 401

    # When AT posts the delivery report to the dashboard URL with our token
    answer = webhook.handler(webhook_event("dlr", delivery_report_body("Success"), CALLBACK_TOKEN), FakeContext())

    # Then the upstream index finds the message, which reads delivered
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["applied"] == 1
    report_event = load_event("api-batch-delivery-report.json", YOUR_API_Token=account["token"])
    report_event["rawPath"] = f"/ng/v1/batches/{reference_id}/delivery_report"
    report_event["requestContext"]["http"]["path"] = report_event["rawPath"]
    [entry] = json.loads(api.handler(report_event, FakeContext())["body"])["data"]
    assert entry["status"] == "delivered"


# The longest error_code stored and forwarded (docs/delivery-reports.md): an upstream's longer one is cut to it.
ERROR_CODE_MOST = 64


@pytest.mark.parametrize("length", [100_000, 250_000])
def test_end_to_end_a_failure_reason_of_any_length_is_stored_and_forwarded_cut_to_the_documented_length(
    aws, at_upstream, length: int
) -> None:
    from sms_gateway_tools.admin import create_account
    from tests.integration.test_notifications_and_inbound_edges import queued_notifications

    # Given a message AT took
    account = create_account(name="Cinema Club", senders=["48974"], credits=100)
    event = load_event("api-sendsms-9bits.json", YOUR_API_Token=account["token"])
    event["body"] = json.dumps({**json.loads(event["body"]), "delivery_report": "yes"})
    reference_id = json.loads(load_function("api").handler(event, FakeContext())["body"])["reference_id"]
    assert dispatch_queued(aws) == {"batchItemFailures": []}
    # When AT reports it failed, with a failure reason of `length` characters (a broken or hostile upstream)
    reason = "DeliveryFailure" + "x" * length
    body = delivery_report_body("Failed", failureReason=reason)
    answer = load_function("webhook").handler(webhook_event("dlr", body, CALLBACK_TOKEN), FakeContext())
    # Then the report is taken (never a 5xx the upstream would post again for ever): the message is failed and
    # refunded, its error_code the reason's first ERROR_CODE_MOST characters, stored and forwarded so
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [message] = gateway().store.list_messages(account["account_id"], int(reference_id))[0]
    assert (message.status, message.error_code) == (MessageStatus.FAILED, reason[:ERROR_CODE_MOST])
    forwarded = [n["payload"] for n in queued_notifications(aws) if n.get("kind") == "dlr"]
    assert [entry["error_code"] for entry in forwarded if entry["status"] == "failed"] == [reason[:ERROR_CODE_MOST]]


def test_end_to_end_an_at_incoming_message_reaches_the_account_that_owns_the_shortcode(aws, at_upstream) -> None:
    from sms_gateway_tools.admin import create_account

    create_account(name="Cinema Club", senders=["48974"], credits=100)
    webhook = load_function("webhook")
    answer = webhook.handler(webhook_event("inbound", incoming_body(), CALLBACK_TOKEN), FakeContext())
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["routed"] is True


@pytest.mark.parametrize("body", [{"unexpected": True}, sent(recipient(101, "Success", message_id="None"))])
def test_an_acceptance_we_cannot_read_is_left_to_its_dlr_as_one_at_may_have(body: dict[str, Any]) -> None:
    # AT took the request (2xx, or statusCode 101 Sent): the dispatcher must record the message submitted-unconfirmed
    # (maybe_taken), not fail and refund a message AT is delivering
    error = refusal(FakeAT(body=body))
    assert error.maybe_taken is True


def without_status_code(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "statusCode"}


@pytest.mark.parametrize(
    "entry",
    [
        recipient(103, "Delivered"),
        recipient(600, "SomethingNew"),
        recipient(418, "SomethingNew"),
        without_status_code(recipient()),
        {**recipient(), "statusCode": "Success"},
    ],
    ids=["a new success code", "a code outside AT's ranges", "an unknown 4xx", "no statusCode", "an unreadable code"],
)
def test_review_an_entry_carrying_ats_message_id_with_a_code_we_do_not_know_is_never_offered_elsewhere(
    entry: dict[str, Any],
) -> None:
    from tests.fakes import FakeProvider, dispatched_through

    # Given AT answering 201 with a recipient entry that carries a real messageId (AT names refused entries "None")
    # but a statusCode AT's documentation does not list (100-102, 401-409, 500-502), or none at all, and a fallback
    fallback = FakeProvider("fallback")
    # When the message is dispatched
    message, store = dispatched_through(provider(FakeAT(body=sent(entry))), fallback)
    # Then AT has the message: the fallback is never offered it (it would go out twice), and the message reads
    # submitted at AT, linked to AT's messageId, so that AT's delivery report settles it (or, without one, the DLR wait)
    assert fallback.submits == []
    assert (message.status, message.upstream, message.upstream_message_id) == (
        MessageStatus.SUBMITTED,
        "africastalking",
        MESSAGE_ID,
    )
    assert store.find_by_upstream_id("africastalking", MESSAGE_ID) == message.key
    assert store.accounts["7"].credits < 1000


@pytest.mark.parametrize(
    "entry",
    [without_status_code(recipient(message_id="None")), {**without_status_code(recipient()), "messageId": None}],
    ids=["messageId None", "messageId null"],
)
def test_an_entry_without_a_code_nor_a_message_id_is_still_offered_to_the_fallback(entry: dict[str, Any]) -> None:
    # Given an entry AT gave no id (nothing of ours there) and no statusCode: AT's trouble, as before
    error = refusal(FakeAT(body=sent(entry)))
    assert (error.permanent, error.unavailable, error.maybe_taken) == (False, True, False)


@pytest.mark.parametrize("token", [None, "1234"], ids=repr)
def test_review_a_null_or_short_callback_token_is_refused_at_configuration(token: str | None) -> None:
    # Given an AT upstream whose parameter holds "callback_token": null (a template's unset value) or a short one.
    # The token is the only check on AT's callbacks, posted to a public function URL without throttling: null is
    # read as the text "None" (anyone's ?token=None verifies) and 4 digits are 10,000 guesses; a forged DLR fails and
    # refunds a delivered message, a forged inbound STOP opts a number out. Jasmin and Kannel refuse a token under 16
    # characters, as AT's own previous_callback_tokens are
    config = {"username": USERNAME, "api_key": API_KEY, "callback_token": token}
    # Then the configuration is refused, as an empty token is, rather than callbacks carrying it being taken
    with pytest.raises(ValueError, match="callback_token"):
        AfricasTalkingProvider.from_config("at", config)


def test_review_the_runbooks_upgrade_notes_warn_that_a_short_at_callback_token_stops_the_upstream() -> None:
    from pathlib import Path

    # Given a stack whose Africa's Talking callback_token is 12 characters: taken until 2026-12-07, refused since
    with pytest.raises(ValueError, match="callback_token"):
        AfricasTalkingProvider.from_config("at", {"username": USERNAME, "api_key": API_KEY, "callback_token": "x" * 12})
    # (after the deploy nothing goes out through that upstream, the fallback not asked, and every DLR and STOP AT posts
    # crashes the webhook) so the runbook's Deploy section, where upgrades are described, must say to check it first
    runbook = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
    deploy = runbook.read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    assert "callback_token" in deploy


def test_a_report_for_an_id_we_never_got_is_held_never_matched_to_the_unconfirmed_message_of_its_number() -> None:
    from datetime import UTC, datetime

    from sms_gateway.domain.status import SUBMIT_UNCONFIRMED
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from tests.fakes import dispatched_through

    # Given a message whose submit to AT got no answer after the request left: AT may be sending it, under an id we
    # never learnt (AT's bulk SMS takes no reference of ours, and has no API to look a sent message up)
    def read_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    at = provider(read_timeout)
    message, store = dispatched_through(at)
    assert (message.status, message.error_code) == (MessageStatus.SUBMITTED, SUBMIT_UNCONFIRMED)
    # When AT reports "Success" for an id no message is linked to, to that message's number: it may as well be another
    # message to that number whose link is still being written, or one sent from AT's dashboard by the same app
    report = delivery_report_body("Success", id="ATXid_unknown", phoneNumber=message.msisdn)
    deps = DeliveryDependencies(store, store, lambda: datetime(2026, 1, 3, tzinfo=UTC))
    outcome = receive_delivery_reports(at, callback("dlr", report), deps)
    # Then the report is held on AT's id (a link written later applies it), and the unconfirmed message is left to the
    # DLR wait: never settled by a report that may be another message's
    assert (outcome.applied, outcome.held) == (0, 1)
    after = store.messages[message.key]
    assert (after.status, after.upstream_message_id) == (MessageStatus.SUBMITTED, None)
