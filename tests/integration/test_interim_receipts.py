"""SMSC receipts that are not the last word (ACCEPTD, UNKNOWN), through the real webhook handler and settle check on
moto, replaying what a real Kannel 1.4.5 and Jasmin 0.11.0 posted: a later final receipt decides; a message whose
last receipt was ACCEPTD when the DLR wait ends is delivered (charged, the client told `delivered`), one whose last
was UNKNOWN expires and is refunded (docs/delivery-reports.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import pytest

from sms_gateway_tools.upstream_check import captured
from tests.conftest import FakeContext, load_event, load_function
from tests.integration.test_operations_metrics import simulator_dlr
from tests.integration.test_send_path import balance
from tests.integration.test_settle_checks import (
    account,
    after_the_wait,
    drain_notify_queue,
    hook,
    message_now,
    notify_pass,
    stranded_message,
)

# Fixtures this module's tests take.
__all__ = ["account", "hook"]

FIXTURES = Path(__file__).parents[1] / "fixtures"
KANNEL = FIXTURES / "kannel-1.4.5-smpp.json"
JASMIN = FIXTURES / "jasmin-0.11.0-smpp.json"
# The callback tokens the captured runs gave Kannel and Jasmin: configured here, their requests verify unchanged.
UPSTREAMS = {
    "kannel": {
        "type": "kannel",
        "url": "http://127.0.0.1:13013",
        "callback_token": "kannel-check-token-0123456789abcdef",
    },
    "jasmin": {
        "type": "jasmin",
        "url": "http://127.0.0.1:1401",
        "callback_token": "jasmin-check-token-0123456789abcdef",
    },
}


def receipts(capture: Path, scenario: str, *statuses: str) -> list[dict[str, Any]]:
    """The callbacks a real upstream posted in `scenario` (all of them, or those naming one of `statuses`)."""
    callbacks = captured(capture, scenario)
    return [c for c in callbacks if not statuses or any(s in c["path"] + c["body"] for s in statuses)]


def webhook_event(recorded: dict[str, Any], ref: str) -> dict[str, Any]:
    """A captured callback as API Gateway hands it to the webhook function, our reference in place of the run's."""
    provider = urlsplit(recorded["path"]).path.split("/")[2]
    query = {**dict(parse_qsl(urlsplit(recorded["path"]).query, keep_blank_values=True)), "ref": ref}
    event = load_event("webhook-dlr-simulator.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/callbacks/{provider}/dlr"
    event["requestContext"]["http"]["method"] = recorded["method"]
    event["routeKey"] = event["requestContext"]["routeKey"] = f"{recorded['method']} /callbacks/{{provider}}/dlr"
    event["pathParameters"] = {"provider": provider}
    event["rawQueryString"] = urlencode(query)
    event["queryStringParameters"] = query
    event["headers"] = {key.lower(): value for key, value in recorded["headers"].items()}
    event["body"] = recorded["body"]
    return event


def carried_by(aws: dict[str, str], account: dict[str, Any], upstream: str) -> Any:
    """A sent message (delivery reports asked for, charged, its settle check queued) that `upstream` took."""
    from sms_gateway.adapters.dynamodb import _key_of
    from sms_gateway.bootstrap import gateway

    config = {**UPSTREAMS.get(upstream, {}), "type": upstream, "username": "u", "password": "p"}
    if upstream in UPSTREAMS:
        boto3.client("ssm").put_parameter(
            Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}{upstream}", Value=json.dumps(config), Type="SecureString"
        )
    message = stranded_message(aws, account)
    store = gateway().store
    # The same message, confirmed taken by `upstream` rather than left unconfirmed on the simulator.
    item = store.client.get_item(TableName=store.table_name, Key=_key_of(message.key), ConsistentRead=True)["Item"]
    item = {name: value for name, value in item.items() if name not in ("error_code", "maybe_taken_by")}
    store.client.put_item(TableName=store.table_name, Item={**item, "upstream": {"S": upstream}})
    return message_now(message)


def post(callbacks: list[dict[str, Any]], message: Any) -> None:
    webhook = load_function("webhook")
    for recorded in callbacks:
        assert webhook.handler(webhook_event(recorded, message.key.to_ref()), FakeContext())["statusCode"] == 200


def settled_after_the_wait(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, message: Any) -> Any:
    hidden = notify_pass(aws)
    after_the_wait(monkeypatch, aws, hidden)
    drain_notify_queue(aws)
    return message_now(message)


def client_heard(hook: Any) -> list[str]:
    return [p["body"]["status"] for p in sorted(hook.posts, key=lambda post: post["body"]["sequence"])]


KANNEL_ACCEPTD = receipts(KANNEL, "one part, accepted (ACCEPTD)")
JASMIN_ACCEPTD = receipts(JASMIN, "one part, accepted (ACCEPTD)")


@pytest.mark.parametrize("upstream", ["kannel", "jasmin", "simulator"])
def test_a_message_whose_last_receipt_is_acceptd_is_delivered_and_charged_when_the_wait_ends(
    aws, account, hook, monkeypatch, upstream
):
    # Given a message the upstream took, charged, whose SMSC sent the receipt ACCEPTD and nothing after (SMPP 3.4: a
    # final state, read on behalf of the subscriber): a real Kannel's DLRs (type 8, then type 4 with the receipt), a
    # real Jasmin's, or the simulator's
    message = carried_by(aws, account, upstream)
    charged = balance(account["account_id"])
    if upstream in ("kannel", "jasmin"):
        post(KANNEL_ACCEPTD if upstream == "kannel" else JASMIN_ACCEPTD, message)
    else:
        event = simulator_dlr(aws, message.key.to_ref(), "ACCEPTD", "2026-01-02T23:50:40Z")
        assert load_function("webhook").handler(event, FakeContext())["statusCode"] == 200
    # Then it waits for a later receipt, submitted
    assert message_now(message).status == "submitted"
    # When the DLR wait ends with no other receipt
    settled = settled_after_the_wait(aws, monkeypatch, message)
    # Then the message is delivered and stays charged, and the client hears `delivered`: not expired and refunded
    assert (settled.status, settled.error_code) == ("delivered", None)
    assert balance(account["account_id"]) == charged
    assert client_heard(hook) == ["submitted", "delivered"]


def test_a_message_whose_last_receipt_is_unknown_expires_and_is_refunded_when_the_wait_ends(
    aws, account, hook, monkeypatch
):
    # Given a message through a real Jasmin whose SMSC sent ACCEPTD, then UNKNOWN, and nothing after
    message = carried_by(aws, account, "jasmin")
    unknown = receipts(JASMIN, "one part, unknown (UNKNOWN) then delivered", "UNKNOWN")
    post(JASMIN_ACCEPTD + unknown, message)
    assert message_now(message).status == "submitted"
    # When the DLR wait ends with no other receipt
    settled = settled_after_the_wait(aws, monkeypatch, message)
    # Then the last word was UNKNOWN: the message is expired for want of a final report and refunded
    assert (settled.status, settled.error_code) == ("expired", "no_delivery_report")
    assert balance(account["account_id"]) == 100
    assert client_heard(hook) == ["submitted", "expired"]


@pytest.mark.parametrize("upstream", ["kannel", "jasmin"])
def test_an_acceptd_the_smsc_follows_with_undeliv_fails_the_message_and_refunds_it(aws, account, hook, upstream):
    # Given a message the upstream took, charged, whose SMSC sent ACCEPTD and then UNDELIV: Kannel keeps its DLR entry
    # after a buffered report (type 4) and fetches the next one, Jasmin keeps its DLR request after ACCEPTD; their
    # real requests (Kannel's UNDELIV of another run, our reference in each)
    message = carried_by(aws, account, upstream)
    if upstream == "kannel":
        callbacks = KANNEL_ACCEPTD + receipts(KANNEL, "one part, undelivered", "UNDELIV")
    else:
        callbacks = receipts(JASMIN, "one part, accepted (ACCEPTD) then undelivered")
    # When each is posted to the webhook in the order they came
    post(callbacks, message)
    notify_pass(aws)
    # Then the message failed with the SMSC's error and is refunded: not delivered and charged, the UNDELIV lost
    failed = message_now(message)
    assert (failed.status, failed.error_code) == ("failed", "001")
    assert balance(account["account_id"]) == 100
    assert client_heard(hook) == ["submitted", "failed"]


@pytest.mark.parametrize("upstream", ["kannel", "simulator"])
def test_an_acceptd_the_smsc_follows_with_delivrd_is_announced_delivered_once(
    aws, account, hook, monkeypatch, upstream
):
    # Given a message the upstream took whose SMSC sent ACCEPTD and then DELIVRD, each announced as it came: a real
    # Kannel's DLRs (its DELIVRD of another run, our reference in each), or the simulator's
    message = carried_by(aws, account, upstream)
    if upstream == "kannel":
        post(KANNEL_ACCEPTD + receipts(KANNEL, "one part, en route then delivered", "DELIVRD"), message)
    else:
        webhook = load_function("webhook")
        for status, done_at in (("ACCEPTD", "2026-01-02T23:50:40Z"), ("DELIVRD", "2026-01-02T23:52:10Z")):
            event = simulator_dlr(aws, message.key.to_ref(), status, done_at)
            assert webhook.handler(event, FakeContext())["statusCode"] == 200
    assert message_now(message).status == "delivered"
    # When the DLR wait ends and the message's settle check runs
    settled = settled_after_the_wait(aws, monkeypatch, message)
    # Then it stays delivered, and the client heard `delivered` once: the check does not take the DELIVRD's change
    # for one it made itself after the ACCEPTD (whose announcement its own earlier delivery may have lost)
    assert settled.status == "delivered"
    assert client_heard(hook) == ["submitted", "delivered"]


@pytest.mark.parametrize("lands", ["after the check's read", "just before the expiry's write"])
def test_an_acceptd_landing_while_the_settle_check_expires_the_message_delivers_it(
    aws, account, hook, monkeypatch, lands
):
    # Given a message the simulator took, charged, with no receipt yet, whose DLR wait is over: its settle check reads
    # it submitted with no word on how it ends, and decides to expire it
    from sms_gateway.bootstrap import gateway

    message = carried_by(aws, account, "simulator")
    charged = balance(account["account_id"])
    hidden = notify_pass(aws)
    store = gateway().store
    acceptd = simulator_dlr(aws, message.key.to_ref(), "ACCEPTD", "2026-01-02T23:50:40Z")
    name = "get_messages_by_key" if lands == "after the check's read" else "move_and_refund"
    original = getattr(store, name)

    def then_acceptd(*args: Any, **kwargs: Any) -> Any:
        # When the SMSC's ACCEPTD lands then: after the check's read, or just before its expiry's write
        monkeypatch.setattr(store, name, original)
        found = original(*args, **kwargs) if name == "get_messages_by_key" else None
        assert load_function("webhook").handler(acceptd, FakeContext())["statusCode"] == 200
        return found if name == "get_messages_by_key" else original(*args, **kwargs)

    monkeypatch.setattr(store, name, then_acceptd)
    after_the_wait(monkeypatch, aws, hidden)
    drain_notify_queue(aws)
    settled = message_now(message)
    # Then the check decides again on what the ACCEPTD says: delivered and charged, the client told `delivered`; not
    # expired and refunded for want of a report the SMSC had just given
    assert (settled.status, settled.error_code) == ("delivered", None)
    assert balance(account["account_id"]) == charged
    assert client_heard(hook) == ["submitted", "delivered"]
