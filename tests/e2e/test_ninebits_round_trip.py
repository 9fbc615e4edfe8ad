"""End to end over real HTTP: the 9bits seed send is accepted, dispatched to the simulator, and its DLR
comes back through `webhook` until the message reads delivered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

SEED_ONE = {
    "from": "48974",
    "to": "2348020000000",
    "message": "When was the last time you went to the cinema?",
    "session_id": "67543uhn3",
    "sent_date": "2024-01-02T23:50:37.000000Z",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="E2E", senders=["48974"], credits=50, api_url=stack.api_url)


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_seed_send_is_delivered_and_reads_delivered(stack: Any, account: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {account['token']}", "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as client:
        # Given the seed's request, as its sample client sends it
        response = client.post("/ng/v1/sendsms", json=SEED_ONE)
        assert response.status_code == 200, response.text
        reference_id = response.json()["reference_id"]

        # When the dispatcher submits it and the simulator reports it delivered
        def delivered() -> dict[str, Any] | None:
            batch = client.get(f"/ng/v1/batches/{reference_id}").json()
            return batch if batch.get("counts") == {"delivered": 1} else None

        batch = wait_for(delivered)
        # Then the batch reads delivered
        assert batch, client.get(f"/ng/v1/batches/{reference_id}").text
        assert batch["reference_id"] == reference_id
        assert batch["status"] == "completed"
        assert batch["parts"] == 1
        assert batch["encoding"] == "GSM-7"
        assert batch["session_id"] == "67543uhn3"
        # And its delivery report shows the message delivered, with the client's references
        report = client.get(f"/ng/v1/batches/{reference_id}/delivery_report").json()
        [entry] = report["data"]
        assert entry["status"] == "delivered"
        assert entry["to"] == "2348020000000"
        assert entry["session_id"] == "67543uhn3"
        assert entry["telco"] == "airtel"  # 0802 is an Airtel Nigeria range
        assert entry["reported_at"]

    # And the simulator saw exactly one submit
    stats = httpx.get(f"{stack.simulator_url}/stats", timeout=5).json()
    assert stats["unique"] >= 1
    assert stats["duplicates"] == 0


def test_unknown_route_is_404_and_bad_token_is_401(stack: Any) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=10) as client:
        assert client.get("/nowhere").status_code == 404
        answer = client.post("/ng/v1/sendsms", json=SEED_ONE, headers={"Authorization": "Bearer nope"})
        assert answer.status_code == 401
        assert answer.json() == {"status_code": 401, "message": "invalid credentials"}


def test_a_forged_dlr_is_refused(stack: Any) -> None:
    answer = httpx.post(
        f"{stack.api_url}/callbacks/simulator/dlr",
        json={"message_id": "sim-x", "client_ref": "1.2.3", "status": "DELIVRD"},
        headers={"X-Simulator-Timestamp": str(int(time.time())), "X-Simulator-Signature": "00"},
        timeout=10,
    )
    assert answer.status_code == 401
