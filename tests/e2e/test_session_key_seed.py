"""End to end over real HTTP: the session-key seed's Python client, as written, logs in and sends; the order
is released at its scheduled time, dispatched to the simulator, and reads delivered after its DLR."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.e2e

MESSAGE_HIGH_QUALITY = "N"
RECIPIENT = "+2348020000000"  # "add a valid recipient list", as the seed says: its +349123456789 is a placeholder


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Session E2E", senders=["48974"], credits=50, api_url=stack.api_url)


def seed_client(baseurl: str) -> tuple[Any, Any]:
    """The seed's Python sample, unchanged but for BASEURL (the seed's text lost `requests.post(` and
    `headers=headers,` in extraction; they are restored here as the vendor's sample has them)."""
    BASEURL = baseurl

    def json_serial(obj):
        """JSON serializer for objects not serializable by default json code"""

        if isinstance(obj, datetime.datetime):
            serial = obj.isoformat()
            return serial

        raise TypeError("Type not serializable")

    def login(username, password):
        """Authenticates the user given it's username and password."""
        """ Returns a couple (user_key, session_key) """
        r = requests.get("%slogin?username=%s&password=%s" % (BASEURL, username, password))  # noqa: UP031

        if r.status_code != 200:
            return None

        user_key, session_key = r.text.split(";")
        return user_key, session_key

    def sendSMS(auth, sendsms):
        """Sends an SMS"""

        headers = {"user_key": auth[0], "Session_key": auth[1], "Content-type": "application/json"}

        r = requests.post("%ssms" % BASEURL, headers=headers, data=json.dumps(sendsms, default=json_serial))  # noqa: UP031

        if r.status_code != 201:
            return None

        return json.loads(r.text)

    return login, sendSMS


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_the_seeds_python_client_sends_and_the_order_reads_delivered(stack: Any, account: dict[str, Any]) -> None:
    login, sendSMS = seed_client(stack.api_url + "/")

    # Given the seed's main: log in, then send "Hello world!" postponed by 5 minutes
    auth = login(account["username"], account["password"])
    assert auth, "Unable to login.."
    assert auth[0] == account["account_id"]
    sentSMS = sendSMS(
        auth,
        {
            "message": "Hello world!",
            "message_type": MESSAGE_HIGH_QUALITY,
            "returnCredits": False,
            "recipient": [RECIPIENT],
            # Place here a custom sender if desired
            "sender": None,
            # Postpone the SMS sending by 5 minutes
            "scheduled_delivery_time": (datetime.datetime.now() + datetime.timedelta(minutes=5)),
        },
    )
    # Then the seed's check passes: 201 and result OK
    assert sentSMS is not None
    assert sentSMS["result"] == "OK"
    assert sentSMS["total_sent"] == 1
    order_id = sentSMS["order_id"]
    headers = {"user_key": auth[0], "Session_key": auth[1]}

    def order() -> dict[str, Any]:
        answer = requests.get(f"{stack.api_url}/sms/{order_id}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    # (The client's naive local time is read in the account's zone: unless this machine's clock runs well
    # behind Lagos, the order waits for its schedule.)
    first = order()
    assert first["recipient_number"] == 1
    assert first["recipients"][0]["destination"] == RECIPIENT
    assert first["recipients"][0]["status"] in {"SCHEDULED", "WAITING", "WAIT4DLVR", "DLVRD"}

    # When its time comes (the local scheduler's clock moved a day on), it is released and dispatched
    scheduler = stack.scheduler
    real_clock = scheduler.clock
    scheduler.clock = lambda: datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    try:

        def delivered() -> dict[str, Any] | None:
            state = order()
            return state if state["recipients"][0]["status"] == "DLVRD" else None

        final = wait_for(delivered)
    finally:
        scheduler.clock = real_clock
    # Then, after the simulator's DLR, the order reads delivered with the family's date format
    assert final, order()
    assert final["result"] == "OK"
    assert len(final["recipients"][0]["delivery_date"]) == 14
    # And one credit was charged
    status = requests.get(f"{stack.api_url}/status", headers=headers, params={"getMoney": "true"}, timeout=10)
    assert status.status_code == 200
    assert status.json()["money"] == 49


def test_bad_credentials_and_stale_sessions_are_refused_over_http(stack: Any, account: dict[str, Any]) -> None:
    login, _ = seed_client(stack.api_url + "/")
    assert login(account["username"], "wrong") is None
    refused = requests.post(
        f"{stack.api_url}/sms",
        headers={"user_key": account["account_id"], "Session_key": "stale", "Content-type": "application/json"},
        data=json.dumps({"message": "Hello world!", "message_type": "N", "recipient": [RECIPIENT]}),
        timeout=10,
    )
    assert refused.status_code == 401
    assert refused.json()["result"] == "KO"
