"""Upstreams that want their own acknowledgement get it: Jasmin's `ACK/Jasmin`, Twilio's empty TwiML."""

from __future__ import annotations

import json

import boto3

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

    monkeypatch.setattr(
        aws_clients, "client", lambda service: FailingSsm() if service == "ssm" else real_client(service)
    )
    webhook = load_function("webhook")
    # When Jasmin posts a genuine delivery report
    answer = webhook.handler(jasmin_dlr(TOKEN), FakeContext())
    # Then it is answered with a 5xx (Jasmin posts it again later), not the 401 of a forged or unknown callback
    assert answer["statusCode"] == 503, answer
    assert "try again" in json.loads(answer["body"])["message"]
