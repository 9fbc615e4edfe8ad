"""The simulator upstream's callback checks: a malformed timestamp or field is refused, never a server error."""

from __future__ import annotations

import json
import time

import pytest

from sms_gateway.adapters.providers.simulator import SimulatorProvider, signature
from sms_gateway.domain.models import CallbackRequest
from sms_gateway.errors import CallbackRejected

SECRET = "s3cret"


def signed(body: str, timestamp: str | None = None) -> CallbackRequest:
    stamp = timestamp or str(int(time.time()))
    return CallbackRequest(
        method="POST",
        url="https://gateway.example/callbacks/simulator/dlr",
        headers={"x-simulator-timestamp": stamp, "x-simulator-signature": signature(SECRET, stamp, body)},
        query={},
        body=body,
    )


def provider() -> SimulatorProvider:
    return SimulatorProvider(name="simulator", url="http://127.0.0.1:9", secret=SECRET)


def test_a_timestamp_of_non_ascii_digits_is_not_verified():
    # '²' passes str.isdigit() but not int(): it used to raise, a 500 instead of a refusal.
    assert not provider().verify_callback(signed("{}", timestamp="\u00b2"))


def test_a_timestamp_too_long_for_int_is_not_verified():
    # An exception was a 500 of the webhook function, which anyone could trigger without the secret
    assert not provider().verify_callback(signed("{}", timestamp="9" * 5000))


def test_a_timestamp_older_than_five_minutes_is_not_verified():
    assert not provider().verify_callback(signed("{}", timestamp=str(int(time.time()) - 301)))
    assert provider().verify_callback(signed("{}"))


def test_a_dlr_field_of_the_wrong_type_is_a_rejected_callback():
    body = json.dumps({"message_id": "sim-1", "client_ref": 12345, "status": "DELIVRD"})
    with pytest.raises(CallbackRejected, match="client_ref"):
        provider().parse_delivery_reports(signed(body))
