"""Upstreams that want their own acknowledgement get it: Jasmin's `ACK/Jasmin`, Twilio's empty TwiML."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tests.conftest import load_event
from tests.integration.test_send_path import FakeContext, load_function

TOKEN = "a-callback-token-0123456789"


def configure(aws: dict[str, str], name: str, config: dict[str, str]) -> None:
    boto3.client("ssm").put_parameter(
        Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}{name}", Value=json.dumps(config), Type="SecureString"
    )


def jasmin_dlr(token: str) -> dict:
    event = load_event("webhook-dlr-simulator.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/callbacks/jasmin/dlr"
    event["pathParameters"] = {"provider": "jasmin"}
    event["rawQueryString"] = f"ref=1.2.3&token={token}"
    event["queryStringParameters"] = {"ref": "1.2.3", "token": token}
    event["headers"]["content-type"] = "application/x-www-form-urlencoded"
    event["body"] = "id=7e3b2f1a-0000-4000-8000-000000000001&message_status=DELIVRD&level=2&err=000"
    return event


def kannel_inbound_event(query: dict[str, str], content_type: str, body: str, *, encoded: bool) -> dict[str, Any]:
    """Kannel's MO post to /callbacks/kannel/inbound, as docs/providers-smsc.md configures its post-url."""
    event = load_event("webhook-dlr-simulator.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/callbacks/kannel/inbound"
    event["pathParameters"] = {"provider": "kannel"}
    event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    event["queryStringParameters"] = query
    event["headers"] = {"content-type": content_type}
    event["body"] = body
    event["isBase64Encoded"] = encoded
    return event


def kannel_delivering_inbound_for(aws: dict[str, str], account: dict[str, Any]) -> None:
    """A Kannel upstream whose callbacks carry TOKEN, the one upstream that delivers the short code 48974's SMS."""
    from sms_gateway_tools.admin import set_sender

    configure(
        aws,
        "kannel",
        {"type": "kannel", "url": "http://127.0.0.1:13013", "username": "u", "password": "p", "callback_token": TOKEN},
    )
    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=["kannel"])


def test_a_verified_jasmin_dlr_is_answered_with_its_ack_and_a_forged_one_is_not(aws):
    configure(
        aws,
        "jasmin",
        {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "callback_token": TOKEN},
    )
    webhook = load_function("webhook")
    good = webhook.handler(jasmin_dlr(TOKEN), FakeContext())
    assert (good["statusCode"], good["body"]) == (200, "ACK/Jasmin")
    assert good["headers"]["Content-Type"].startswith("text/plain")
    forged = webhook.handler(jasmin_dlr("wrong-token-0123456789"), FakeContext())
    assert forged["statusCode"] == 401
    assert forged["body"] != "ACK/Jasmin"


def test_a_dlr_that_arrives_while_parameter_store_fails_is_refused_for_a_retry_not_as_forged(aws, monkeypatch):
    # Given a configured Jasmin, and Parameter Store (or the KMS key of its SecureStrings) failing for a moment
    configure(
        aws,
        "jasmin",
        {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "callback_token": TOKEN},
    )
    from botocore.exceptions import ClientError

    from sms_gateway.adapters import aws as aws_clients

    real_client = aws_clients.client

    class FailingSsm:
        def get_parameter(self, **_: object) -> None:
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "GetParameter")

        def get_parameters_by_path(self, **_: object) -> None:
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "GetParametersByPath"
            )

    monkeypatch.setattr(
        aws_clients, "client", lambda service: FailingSsm() if service == "ssm" else real_client(service)
    )
    webhook = load_function("webhook")
    # When Jasmin posts a genuine delivery report
    answer = webhook.handler(jasmin_dlr(TOKEN), FakeContext())
    # Then it is answered with a 5xx (Jasmin posts it again later), not the 401 of a forged or unknown callback
    assert answer["statusCode"] == 503, answer
    assert "try again" in json.loads(answer["body"])["message"]


def test_a_kannel_mo_in_ucs2_whose_body_is_utf16_is_stored_with_its_text(aws, account):
    # Given Kannel configured as the docs say (post-url with text_hex), without mo-recode: an MO in UCS-2 is posted
    # with its body in UTF-16BE (API Gateway base64-encodes it) and the same bytes in text_hex
    import base64

    # ... taking the shortcode's inbound SMS (no route names Kannel: it carries only these)
    kannel_delivering_inbound_for(aws, account)
    text = "Hé™ 😀 yes"
    raw = text.encode("utf-16-be")
    query = {
        "token": TOKEN,
        "from": "+2348020000000",
        "to": "48974",
        "ts": "1767398400",
        "id": "7e3b2f1a-0000-4000-8000-0000000000aa",
        "coding": "2",
        "charset": "UTF-16BE",
        "text_hex": raw.hex(),
    }
    event = kannel_inbound_event(query, "text/plain; charset=UTF-16BE", base64.b64encode(raw).decode(), encoded=True)
    # When it reaches the webhook
    answer = load_function("webhook").handler(event, FakeContext())
    # Then it is taken (not refused as a body that is not UTF-8), and stored with its text
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert stored.text == text


def test_a_twilio_incoming_message_is_answered_with_empty_twiml(aws):
    # Given Twilio configured, and an incoming message it posts, signed with the auth token over our URL
    from urllib.parse import parse_qs

    from sms_gateway.adapters.providers.twilio import twilio_signature
    from tests.integration.test_provider_twilio import ACCOUNT_SID, AUTH_TOKEN, incoming_message_body

    configure(aws, "twilio", {"type": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN})
    event = load_event("webhook-dlr-simulator.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/callbacks/twilio/inbound"
    event["pathParameters"] = {"provider": "twilio"}
    event["rawQueryString"] = ""
    event.pop("queryStringParameters", None)
    body = incoming_message_body()
    url = f"https://{event['requestContext']['domainName']}/callbacks/twilio/inbound"
    event["headers"] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": twilio_signature(AUTH_TOKEN, url, parse_qs(body, keep_blank_values=True)),
    }
    event["body"] = body
    event["isBase64Encoded"] = False
    # When it reaches the webhook
    answer = load_function("webhook").handler(event, FakeContext())
    # Then the answer is the TwiML Twilio expects (nothing sent back to the phone), not JSON
    assert (answer["statusCode"], answer["body"]) == (200, "<Response/>"), answer
    assert answer["headers"]["Content-Type"].startswith("text/xml")


def test_callbacks_for_upstream_names_nobody_configured_do_not_each_read_parameter_store(aws, monkeypatch):
    # Given one configured upstream, and Parameter Store reads counted
    configure(
        aws,
        "jasmin",
        {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "callback_token": TOKEN},
    )
    from sms_gateway.adapters import aws as aws_clients

    real_client = aws_clients.client
    reads: list[str] = []

    class CountingSsm:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def get_parameter(self, **request: Any) -> Any:
            reads.append(request["Name"])
            return self.inner.get_parameter(**request)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    ssm = CountingSsm(real_client("ssm"))
    monkeypatch.setattr(aws_clients, "client", lambda service: ssm if service == "ssm" else real_client(service))
    webhook = load_function("webhook")
    # When anyone posts 20 "delivery reports", each for a made-up upstream name
    for number in range(20):
        event = jasmin_dlr("guessed-token-0123456789")
        event["rawPath"] = event["requestContext"]["http"]["path"] = f"/callbacks/nobody-{number}/dlr"
        event["pathParameters"] = {"provider": f"nobody-{number}"}
        assert webhook.handler(event, FakeContext())["statusCode"] == 401
    # Then they are refused without a Parameter Store read each (the configured names are known already, or cheaply)
    assert len(reads) <= 1, f"{len(reads)} GetParameter calls for 20 refused callbacks"


def test_an_upstream_configured_while_the_webhook_runs_has_its_callbacks_taken_within_half_a_minute(aws, monkeypatch):
    # Given a webhook that has listed the configured upstreams (none named jasmin yet), on a clock we move
    from sms_gateway.adapters import providers

    now = [1000.0]
    monkeypatch.setattr(providers, "_clock", lambda: now[0])
    webhook = load_function("webhook")
    assert webhook.handler(jasmin_dlr(TOKEN), FakeContext())["statusCode"] == 401
    # When the operator configures Jasmin (docs/providers-smsc.md)
    configure(
        aws,
        "jasmin",
        {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "callback_token": TOKEN},
    )
    # Then its callbacks are refused until the listing is NEW_UPSTREAM_WAIT old, and taken from then on
    now[0] += providers.NEW_UPSTREAM_WAIT - 1
    assert webhook.handler(jasmin_dlr(TOKEN), FakeContext())["statusCode"] == 401
    now[0] += 1
    answer = webhook.handler(jasmin_dlr(TOKEN), FakeContext())
    assert (answer["statusCode"], answer["body"]) == (200, "ACK/Jasmin"), answer


@pytest.mark.parametrize("token", [TOKEN, "forged-token-0123456789"])
def test_review_a_body_in_a_charset_python_cannot_decode_gets_an_answer_not_an_invocation_error(aws, token):
    # Given a callback whose body API Gateway or the function URL base64-encoded, with a Content-Type naming a charset
    # Python knows but cannot decode with ("undefined" raises UnicodeError, not UnicodeDecodeError or LookupError).
    # Anyone may post it to the public function URL, before any token or signature is looked at
    import base64

    configure(
        aws,
        "jasmin",
        {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "callback_token": TOKEN},
    )
    event = jasmin_dlr(token)
    event["headers"]["content-type"] = "application/x-www-form-urlencoded; charset=undefined"
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    # When it reaches the webhook
    answer = load_function("webhook").handler(event, FakeContext())
    # Then it is answered like any body read as UTF-8 (verified, then taken or refused), not an unhandled error: the
    # function URL's 502 for every such post counts toward WebhookErrorRateAlarm and pages the operator
    assert answer["statusCode"] in (200, 401), answer


def test_the_mo_sms_a_real_kannel_posted_over_smpp_are_stored_with_their_numbers_and_text(aws, account):
    # Given the MO posts a real Kannel 1.4.5 made for SMS from an SMPP SMSC (mo-recode on): `from` and `to` with the
    # `+` Kannel adds for an international TON, short code included, the text in UTF-8 whatever the SMSC's coding
    from urllib.parse import parse_qsl, urlsplit

    from sms_gateway.bootstrap import gateway
    from tests.integration.test_provider_kannel import kannel_captured

    kannel_delivering_inbound_for(aws, account)
    webhook = load_function("webhook")
    for recorded in kannel_captured():
        query = {**dict(parse_qsl(urlsplit(recorded["path"]).query, keep_blank_values=True)), "token": TOKEN}
        event = kannel_inbound_event(query, recorded["headers"]["Content-Type"], recorded["body"], encoded=False)
        # When each reaches the webhook
        answer = webhook.handler(event, FakeContext())
        assert answer["statusCode"] == 200, answer
    # Then each is stored for the short code's account, from the handset, with its text
    stored = gateway().store.list_inbounds(account["account_id"])[0]
    assert sorted((sms.msisdn, sms.to, sms.text) for sms in stored) == sorted(
        [
            ("+2348020000000", "48974", "Hello from the phone"),
            ("+2348020000000", "48974", "Hé ™ я😀"),
            ("+2348020000000", "48974", "Grüße"),
            ("+2348020000000", "48974", "я" * 67 + "end😀"),
        ]
    )
