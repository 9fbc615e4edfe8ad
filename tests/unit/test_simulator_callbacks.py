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


def test_a_signature_in_non_ascii_characters_is_not_verified():
    # Given a forged callback with a fresh timestamp and a signature that is not ASCII
    forged = signed("{}").model_copy(update={"headers": {**signed("{}").headers, "x-simulator-signature": "\u00e9"}})
    # Then it is refused like any wrong signature, not an exception (docs/security.md: a forged callback gets 401)
    assert not provider().verify_callback(forged)


def test_a_timestamp_older_than_five_minutes_is_not_verified():
    assert not provider().verify_callback(signed("{}", timestamp=str(int(time.time()) - 301)))
    assert provider().verify_callback(signed("{}"))


def test_a_dlr_field_of_the_wrong_type_is_a_rejected_callback():
    body = json.dumps({"message_id": "sim-1", "client_ref": 12345, "status": "DELIVRD"})
    with pytest.raises(CallbackRejected, match="client_ref"):
        provider().parse_delivery_reports(signed(body))


@pytest.mark.parametrize(
    ("value", "deduplicates"),
    [(None, True), (True, True), (False, False), ("false", False), ("False", False), ("true", True), (" TRUE ", True)],
)
def test_deduplicates_is_read_as_true_or_false(value: object, deduplicates: bool) -> None:
    # Given the simulator's configuration with deduplicates as JSON true/false, as text, or absent
    config = {"url": "http://127.0.0.1:9", "secret": SECRET} | ({} if value is None else {"deduplicates": value})
    # Then the text "false" is false: read with bool() it was true, and the dispatcher asked the simulator again
    # after a lost answer as if it could tell repeats (and chaos runs counted no repeat as a fault)
    assert SimulatorProvider.from_config("simulator", config).deduplicates_submits is deduplicates


@pytest.mark.parametrize("value", ["no", "0", "", 0, 1, [], "yes"])
def test_a_deduplicates_that_is_not_true_or_false_is_refused(value: object) -> None:
    config = {"url": "http://127.0.0.1:9", "secret": SECRET, "deduplicates": value}
    with pytest.raises(ValueError, match="deduplicates is true or false"):
        SimulatorProvider.from_config("simulator", config)


@pytest.mark.parametrize("secret", [None, "", 12345], ids=repr)
def test_a_secret_that_is_not_a_string_is_refused_at_configuration(secret: object) -> None:
    # Read with str(), null was the secret "None": anyone could sign the simulator's callbacks with it
    with pytest.raises(ValueError, match="secret"):
        SimulatorProvider.from_config("simulator", {"url": "http://127.0.0.1:9", "secret": secret})
