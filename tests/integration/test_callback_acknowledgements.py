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
