"""End to end over real HTTP: a client webhook that fails twice still gets its notification, on the retry schedule."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.client_webhook import ClientWebhook

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def webhook() -> Iterator[ClientWebhook]:
    with ClientWebhook(failures=2) as hook:
        yield hook


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    # One second between attempts, so the whole schedule takes seconds.
    with LocalStack(port=0, dlr_delay=0.2, notify_retry_delays="1,1,1") as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any, webhook: ClientWebhook) -> dict[str, Any]:
    # Module-scoped, like the stack: it runs before the per-test fixture that clears AWS_ENDPOINT_URL.
    from sms_gateway_tools.admin import create_account

    return create_account(
        name="Flaky Client", senders=["48976"], credits=10, api_url=stack.api_url, inbound_url=f"{webhook.url}/in"
    )


def test_a_webhook_that_fails_twice_gets_the_inbound_sms_on_the_third_attempt(stack, webhook, account):
    # Given an account whose inbound webhook answers 500 twice
    # When a subscriber texts the account's shortcode
    result = httpx.post(
        f"{stack.simulator_url}/control/inbound",
        json={"from": "2348030000000", "to": "48976", "message": "Are you open tonight?"},
        timeout=10,
    ).json()
    assert result["delivered"] is True
    # Then the webhook is called three times, about a second apart, with the same notification
    attempts = [webhook.received.get(timeout=60) for _ in range(3)]
    assert [a["status"] for a in attempts] == [500, 500, 200]
    assert len({a["headers"]["webhook-id"] for a in attempts}) == 1
    assert all(a["body"]["message"] == "Are you open tonight?" for a in attempts)
    assert attempts[2]["at"] - attempts[0]["at"] >= 1.5
    # And the account's failed notifications show it delivered
    headers = {"Authorization": f"Bearer {account['token']}"}
    deadline = time.monotonic() + 60
    while True:
        listing = httpx.get(f"{stack.api_url}/ng/v1/webhooks/failures", headers=headers, timeout=10)
        assert listing.status_code == 200, listing.text
        entries = listing.json()["data"]
        if (entries and entries[0]["state"] == "delivered") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [entry] = entries
    assert entry["id"] == attempts[0]["headers"]["webhook-id"]
    assert (entry["state"], entry["attempts"], entry["last_status_code"]) == ("delivered", 2, 500)
    assert entry["url"] == f"{webhook.url}/in"
    # And nothing more arrives
    with pytest.raises(queue.Empty):
        webhook.received.get(timeout=2.5)
