"""End to end: a batch scheduled a few seconds ahead is sent when its schedule fires; a cancelled one never is."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    # Schedule anything more than a second ahead (the tolerance is 10 s), to the second rather than Scheduler's minute,
    # so the test need not wait a minute or two for its schedules to fire.
    os.environ["SCHEDULE_THRESHOLD_SECONDS"] = "1"
    os.environ["SCHEDULER_PRECISION_SECONDS"] = "1"
    try:
        with LocalStack(port=0, dlr_delay=0.2) as running:
            yield running
    finally:
        os.environ.pop("SCHEDULE_THRESHOLD_SECONDS", None)
        os.environ.pop("SCHEDULER_PRECISION_SECONDS", None)


@pytest.fixture(scope="module")
def account(stack: Any) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Scheduler", senders=["48976"], credits=10, api_url=stack.api_url)


def stalling_before_the_cancel(seconds: float) -> dict[str, list[Any]]:
    """httpx event hooks that hold the test's first DELETE back `seconds`, as a loaded machine holds a process back
    (descheduled, swapped out): the test's requests then take longer than their schedule's lead."""
    stalls = [seconds]

    def stall(request: httpx.Request) -> None:
        if request.method == "DELETE" and stalls:
            time.sleep(stalls.pop())

    return {"request": [stall]}


@pytest.mark.parametrize(
    "stall",
    [
        0.0,
        pytest.param(
            7.0,
            marks=pytest.mark.xfail(
                strict=True, reason="a machine slower than the 4 s lead fails the test: its cancel is answered 409"
            ),
        ),
    ],
    ids=["quick", "held-back-past-the-schedule"],
)
def test_a_scheduled_batch_is_delivered_at_its_time_and_a_cancelled_one_never(
    stack: Any, account: dict, stall: float
) -> None:
    headers = {"Authorization": f"Bearer {account['token']}"}
    send_at = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    hooks = stalling_before_the_cancel(stall)
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10, event_hooks=hooks) as client:
        # Given two batches scheduled four seconds ahead
        kept, cancelled = (
            client.post(
                "/ng/v1/sendsms",
                json={"from": "48976", "to": [number], "body": "see you at eight", "send_at": send_at},
            ).json()["reference_id"]
            for number in ("2348030000001", "2348030000002")
        )
        assert client.get(f"/ng/v1/batches/{kept}").json()["status"] == "scheduled"
        # When one is cancelled before its time
        answer = client.delete(f"/ng/v1/batches/{cancelled}")
        assert answer.status_code == 200, answer.text
        # Then the other is delivered once its schedule fires
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = client.get(f"/ng/v1/batches/{kept}").json()
            if batch["counts"] == {"delivered": 1}:
                break
            time.sleep(0.3)
        assert batch["counts"] == {"delivered": 1}, batch
        assert batch["status"] == "completed"
        # And the cancelled one stays cancelled, refunded, and never reached the upstream
        time.sleep(1)
        gone = client.get(f"/ng/v1/batches/{cancelled}").json()
        assert (gone["status"], gone["counts"]) == ("cancelled", {"cancelled": 1})
    submitted = [m["to"] for m in httpx.get(f"{stack.simulator_url}/messages", timeout=5).json()]
    assert submitted.count("2348030000001") == 1
    assert "2348030000002" not in submitted
    balance = httpx.post(
        f"{stack.api_url}/api/services/getbalance",
        json={"apikey": account["apikey"], "partnerID": account["partner_id"]},
        timeout=5,
    ).json()
    assert float(balance["credit"]) == 9  # one charged, the cancelled one refunded
