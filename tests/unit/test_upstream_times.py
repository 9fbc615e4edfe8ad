"""Upstream times reach clients in the seed's one form (`2024-01-02T23:50:37.000000Z`), whatever the upstream wrote.

A client parsing `sent_date` or `reported_at` with the seed's format (Java `yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'`, Go
`2006-01-02T15:04:05.000000Z`) needs exactly six fraction digits, UTC and a Z: Kannel, Jasmin, Twilio and Africa's
Talking times were converted, the 9bits upstream's and the simulator's were passed on as written.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest

from sms_gateway.adapters.providers.ninebits import NinebitsProvider
from sms_gateway.adapters.providers.simulator import SimulatorProvider, signature
from sms_gateway.domain.models import CallbackRequest

SEED_FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
WEBHOOK_TOKEN = "their-webhook-token-for-us"
SIM_SECRET = "s3cret"


def ninebits() -> NinebitsProvider:
    return NinebitsProvider(name="ninebits", url="https://app.9bits.net:2081", token="t", webhook_token=WEBHOOK_TOKEN)


def ninebits_callback(path: str, payload: dict[str, object]) -> CallbackRequest:
    return CallbackRequest(
        method="POST",
        url=f"https://gw.example.com/callbacks/ninebits/{path}",
        headers={"authorization": f"Bearer {WEBHOOK_TOKEN}"},
        body=json.dumps(payload),
    )


def simulator_callback(path: str, payload: dict[str, object]) -> CallbackRequest:
    body = json.dumps(payload)
    stamp = str(int(time.time()))
    return CallbackRequest(
        method="POST",
        url=f"https://gw.example.com/callbacks/simulator/{path}",
        headers={"x-simulator-timestamp": stamp, "x-simulator-signature": signature(SIM_SECRET, stamp, body)},
        body=body,
    )


def simulator() -> SimulatorProvider:
    return SimulatorProvider(name="simulator", url="http://127.0.0.1:9", secret=SIM_SECRET)


# What an upstream may write, and the seed's form of the same moment.
WRITTEN = [
    ("2026-12-07T07:51:51.651Z", "2026-12-07T07:51:51.651000Z"),  # the simulator's own: milliseconds
    ("2026-12-07T07:51:51Z", "2026-12-07T07:51:51.000000Z"),
    ("2026-12-07T08:51:51.651+01:00", "2026-12-07T07:51:51.651000Z"),  # an offset: moved to UTC
    ("2026-12-07 07:51:51", "2026-12-07T07:51:51.000000Z"),  # no zone: UTC, as for the other upstreams
    ("1796629911", "2026-12-07T07:51:51.000000Z"),  # Unix seconds (PHP's time())
    ("1796629911651", "2026-12-07T07:51:51.651000Z"),  # Unix milliseconds (a Java Date as plain Jackson writes it)
]


@pytest.mark.parametrize(("written", "seed_form"), WRITTEN)
def test_a_9bits_upstream_dlr_time_reaches_clients_in_the_seed_form(written: str, seed_form: str) -> None:
    request = ninebits_callback("dlr", {"status": "delivered", "ref_id": "1.2.3", "reported_at": written})
    (report,) = ninebits().parse_delivery_reports(request)
    assert report.reported_at == seed_form


@pytest.mark.parametrize(("written", "seed_form"), WRITTEN)
def test_a_9bits_upstream_inbound_time_reaches_clients_in_the_seed_form(written: str, seed_form: str) -> None:
    request = ninebits_callback(
        "inbound", {"from": "2348020000000", "to": "48974", "message": "hi", "sent_date": written}
    )
    assert ninebits().parse_inbound(request).received_at == seed_form


@pytest.mark.parametrize(("written", "seed_form"), WRITTEN)
def test_simulator_times_reach_clients_in_the_seed_form(written: str, seed_form: str) -> None:
    dlr = {"message_id": "m1", "client_ref": "1.2.3", "status": "DELIVRD", "done_at": written}
    (report,) = simulator().parse_delivery_reports(simulator_callback("dlr", dlr))
    inbound = {"message_id": "m2", "from": "2348020000000", "to": "48974", "text": "hi", "received_at": written}
    sms = simulator().parse_inbound(simulator_callback("inbound", inbound))
    assert (report.reported_at, sms.received_at) == (seed_form, seed_form)


def test_a_time_in_the_seed_form_is_passed_on_unchanged() -> None:
    stamp = "2026-12-07T07:51:51.000000Z"
    request = ninebits_callback("dlr", {"status": "delivered", "ref_id": "1.2.3", "reported_at": stamp})
    (report,) = ninebits().parse_delivery_reports(request)
    assert report.reported_at == stamp


@pytest.mark.parametrize("written", ["yesterday", "2026-13-45T99:00:00Z", "1796716800x"])
def test_an_upstream_time_that_is_no_time_is_not_passed_on(written: str) -> None:
    # Given a 9bits upstream that writes something that names no moment
    dlr = ninebits_callback("dlr", {"status": "delivered", "ref_id": "1.2.3", "reported_at": written})
    inbound = ninebits_callback(
        "inbound", {"from": "2348020000000", "to": "48974", "message": "x", "sent_date": written}
    )
    before = datetime.now(UTC)
    (report,) = ninebits().parse_delivery_reports(dlr)
    sms = ninebits().parse_inbound(inbound)
    # Then the report's time is unknown (a client reads the status time), and the SMS's is when it came
    assert report.reported_at is None
    assert SEED_FORM.fullmatch(sms.received_at)
    assert datetime.fromisoformat(sms.received_at) >= before.replace(microsecond=0)
