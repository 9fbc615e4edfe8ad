"""The dispatcher follows the operator's route table and fails over to the route's fallback upstream."""

from __future__ import annotations

import json
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import route_simulator_upstreams_to
from tests.integration.test_send_path import (
    FakeContext,
    as_lambda_sqs_event,
    load_function,
    queued_records,
    read_delivery_report,
    send_event,
)


class Upstreams:
    """Two simulator-protocol upstreams told apart by host; the primary can be made to fail."""

    def __init__(self) -> None:
        self.primary_status = 200
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append(host)
        if host == "primary.test" and self.primary_status != 200:
            return httpx.Response(self.primary_status, json={"error": "down"})
        payload = json.loads(request.content)
        return httpx.Response(200, json={"message_id": f"{host}-{payload['client_ref']}"})


@pytest.fixture
def upstreams(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Upstreams:
    ssm = boto3.client("ssm")
    for name in ("primary", "backup"):
        ssm.put_parameter(
            Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}{name}",
            Value=json.dumps({"type": "simulator", "url": f"http://{name}.test", "secret": "s"}),
            Type="SecureString",
        )
    recorder = Upstreams()
    route_simulator_upstreams_to(monkeypatch, recorder)
    return recorder


@pytest.fixture
def api(aws: dict[str, str]):
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def route_mtn(account_id: str) -> None:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.routing import Route

    store = gateway().store
    table = store.route_table("simulator")
    store.put_route(
        Route(route_id="mtn", account_id=account_id, network="mtn", upstream="primary", fallback="backup"),
        table.version,
    )


def dispatch_all(aws: dict[str, str]) -> dict[str, Any]:
    return load_function("dispatcher").handler(as_lambda_sqs_event(queued_records(aws)), FakeContext())


def test_a_routed_message_goes_to_its_route_and_fails_over_when_the_primary_is_down(aws, api, upstreams):
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Routed", senders=["48974"], credits=10)
    route_mtn(account["account_id"])
    upstreams.primary_status = 503
    # Given an MTN number (0803) routed to `primary` with `backup` as fallback, and `primary` answering 503
    body = {"from": "48974", "to": "2348030000000", "message": "routed"}
    reference_id = json.loads(api(send_event(account["token"], body))["body"])["reference_id"]
    # When the dispatcher takes the record
    assert dispatch_all(aws) == {"batchItemFailures": []}
    # Then the primary was tried first and the backup took the message
    assert upstreams.seen == ["primary.test", "backup.test"]
    [entry] = read_delivery_report(api, account["token"], reference_id)
    assert entry["status"] == "submitted"


def test_an_unrouted_network_uses_the_default_upstream(aws, api, upstreams):
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Default", senders=["48974"], credits=10)
    route_mtn(account["account_id"])
    # An Airtel number (0802) matches no route: the default upstream (the local simulator's URL) takes it
    api(send_event(account["token"], {"from": "48974", "to": "2348020000000", "message": "default"}))
    dispatch_all(aws)
    assert upstreams.seen == ["127.0.0.1"]


def test_a_route_to_an_upstream_whose_rate_limit_is_not_a_whole_number_sends_nothing_and_fails_loudly(
    aws, api, upstreams
):
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Slow", senders=["48974"], credits=10)
    route_mtn(account["account_id"])
    # Given MTN routed to `primary`, whose configuration says rate_limit_per_second: 0.5 (one every two seconds)
    boto3.client("ssm").put_parameter(
        Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}primary",
        Value=json.dumps(
            {"type": "simulator", "url": "http://primary.test", "secret": "s", "rate_limit_per_second": 0.5}
        ),
        Type="SecureString",
        Overwrite=True,
    )
    body = {"from": "48974", "to": "2348030000000", "message": "slow"}
    reference_id = json.loads(api(send_event(account["token"], body))["body"])["reference_id"]
    # When the dispatcher takes the record
    failures = dispatch_all(aws)["batchItemFailures"]
    # Then the record fails (retried, then dead-lettered with the reason), no upstream saw the message, and it is
    # still queued, not claimed (until 2026-12-05 0.5 was read as unlimited and everything went at once)
    assert len(failures) == 1
    assert upstreams.seen == []
    [entry] = read_delivery_report(api, account["token"], reference_id)
    assert entry["status"] == "queued"
