"""End to end: a batch scheduled a few seconds ahead is sent when its schedule fires; a cancelled one never is."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

# How far ahead the two batches are scheduled: the first lead the machine beats. A schedule that fires before the
# test got its sends answered or its cancel in (a loaded machine, a process held back) is no fault of the gateway's:
# the test tells it by the clock (the gateway never releases a batch before its time) and schedules again, twice as
# far ahead, so a quick machine waits 4 s as before and a slow one as long as it needs.
LEADS_SECONDS = (4.0, 8.0, 16.0, 32.0)
# The stack's clock-skew tolerance (SCHEDULE_THRESHOLD_SECONDS below): a send_at closer than this when the send
# arrives is sent at once.
THRESHOLD_SECONDS = 1
# Long enough for the first schedule to fire (to the second, rounded up, within the stack's 0.5 s loop) and its
# release to finish before the held-back cancel comes.
STALL_PAST_THE_FIRST_SCHEDULE = LEADS_SECONDS[0] + 3
# Each attempt's account: a sender id belongs to one account.
SENDERS = itertools.count(48976)


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    # Schedule anything more than a second ahead (the tolerance is 10 s), to the second rather than Scheduler's minute,
    # so the test need not wait a minute or two for its schedules to fire.
    os.environ["SCHEDULE_THRESHOLD_SECONDS"] = str(THRESHOLD_SECONDS)
    os.environ["SCHEDULER_PRECISION_SECONDS"] = "1"
    try:
        with LocalStack(port=0, dlr_delay=0.2) as running:
            yield running
    finally:
        os.environ.pop("SCHEDULE_THRESHOLD_SECONDS", None)
        os.environ.pop("SCHEDULER_PRECISION_SECONDS", None)


@pytest.fixture
def accounts_made_in_the_stack(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test makes its accounts as it goes (one per attempt), in the stack (as `make dev`'s operator commands)."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)


def stalling_before_the_cancel(seconds: float) -> dict[str, list[Any]]:
    """httpx event hooks that hold the test's first DELETE back `seconds`, as a loaded machine holds a process back
    (descheduled, swapped out): the test's requests then take longer than their schedule's lead."""
    stalls = [seconds]

    def stall(request: httpx.Request) -> None:
        if request.method == "DELETE" and stalls:
            time.sleep(stalls.pop())

    return {"request": [stall]}


@dataclass(frozen=True)
class Scheduled:
    """Two batches of one account (10 credits to start with) scheduled for `send_at`, one of them cancelled."""

    account: dict[str, Any]
    send_at: datetime
    # Reference ids and the number each was sent to.
    kept: str
    kept_number: str
    cancelled: str
    cancelled_number: str


def schedule_two_and_cancel_one(stack: Any, hooks: dict[str, list[Any]], lead: float) -> Scheduled | None:
    """Two batches of a new account scheduled `lead` seconds ahead, the second cancelled before its time; None when
    the machine was too slow for the lead (the sends answered too close to the time to be scheduled, or the cancel
    answered 409 after it)."""
    from sms_gateway_tools.admin import create_account

    sender = str(next(SENDERS))
    account = create_account(name=f"Scheduler {sender}", senders=[sender], credits=10, api_url=stack.api_url)
    kept_number, cancelled_number = (f"2348030{sender}{n}" for n in (1, 2))
    send_at = datetime.now(UTC) + timedelta(seconds=lead)
    headers = {"Authorization": f"Bearer {account['token']}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10, event_hooks=hooks) as client:
        # Given two batches scheduled `lead` seconds ahead
        kept, cancelled = (
            client.post(
                "/ng/v1/sendsms",
                json={"from": sender, "to": [number], "body": "see you at eight", "send_at": send_at.isoformat()},
            ).json()["reference_id"]
            for number in (kept_number, cancelled_number)
        )
        if datetime.now(UTC) >= send_at - timedelta(seconds=THRESHOLD_SECONDS):
            return None  # they may have arrived within the tolerance, and gone out at once
        read = client.get(f"/ng/v1/batches/{kept}").json()
        if datetime.now(UTC) < send_at:
            assert read["status"] == "scheduled", read  # read before its time: still held
        # When one is cancelled before its time
        answer = client.delete(f"/ng/v1/batches/{cancelled}")
        if answer.status_code == 409:
            # Its schedule fired first, which it does only once its time has come: a batch released before it is
            # the gateway's fault
            assert datetime.now(UTC) >= send_at, answer.text
            return None
        assert answer.status_code == 200, answer.text
    return Scheduled(account, send_at, kept, kept_number, cancelled, cancelled_number)


@pytest.mark.usefixtures("accounts_made_in_the_stack")
@pytest.mark.parametrize("stall", [0.0, STALL_PAST_THE_FIRST_SCHEDULE], ids=["quick", "held-back-past-the-schedule"])
def test_a_scheduled_batch_is_delivered_at_its_time_and_a_cancelled_one_never(stack: Any, stall: float) -> None:
    # (held back: the first cancel comes after the first schedule fired, as on a machine slower than the first lead)
    hooks = stalling_before_the_cancel(stall)
    scheduled = next(filter(None, (schedule_two_and_cancel_one(stack, hooks, lead) for lead in LEADS_SECONDS)), None)
    assert scheduled is not None, f"every lead ({LEADS_SECONDS} s) ran out before the test could cancel"
    headers = {"Authorization": f"Bearer {scheduled.account['token']}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as client:
        # Then the other is delivered once its schedule fires
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = client.get(f"/ng/v1/batches/{scheduled.kept}").json()
            if batch["counts"] == {"delivered": 1}:
                break
            time.sleep(0.3)
        assert batch["counts"] == {"delivered": 1}, batch
        assert batch["status"] == "completed"
        # And the cancelled one stays cancelled, refunded, and never reached the upstream
        time.sleep(1)
        gone = client.get(f"/ng/v1/batches/{scheduled.cancelled}").json()
        assert (gone["status"], gone["counts"]) == ("cancelled", {"cancelled": 1})
    submitted = httpx.get(f"{stack.simulator_url}/messages", timeout=5).json()
    [reached] = [message for message in submitted if message["to"] == scheduled.kept_number]
    assert datetime.fromisoformat(reached["submitted_at"]) >= scheduled.send_at  # not before its time
    assert scheduled.cancelled_number not in [message["to"] for message in submitted]
    balance = httpx.post(
        f"{stack.api_url}/api/services/getbalance",
        json={"apikey": scheduled.account["apikey"], "partnerID": scheduled.account["partner_id"]},
        timeout=5,
    ).json()
    assert float(balance["credit"]) == 9  # one charged, the cancelled one refunded
