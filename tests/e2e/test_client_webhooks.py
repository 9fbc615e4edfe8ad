"""End to end over real HTTP: delivery reports and inbound SMS reach the client's own webhook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.client_webhook import ClientWebhook

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def webhook() -> Iterator[ClientWebhook]:
    with ClientWebhook() as hook:
        yield hook


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any, webhook: ClientWebhook) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(
        name="Two Way",
        senders=["48975"],
        credits=50,
        api_url=stack.api_url,
        dlr_url=f"{webhook.url}/dlr",
        inbound_url=f"{webhook.url}/inbound",
    )


def documented_verify() -> Any:
    """The verification snippet exactly as docs/webhooks.md gives it to clients."""
    from tests.conftest import REPO

    text = (REPO / "docs" / "webhooks.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # our own documentation, run as a client would
    return namespace["verify"]


def assert_signed(request: dict[str, Any], secret: str) -> None:
    import time

    from sms_gateway.domain.webhooks import verify

    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(secret, headers, request["raw"], now=time.time())
    assert not verify(secret, headers, request["raw"] + " ", now=time.time())
    assert not verify(secret, headers, request["raw"], now=time.time() + 3600)
    client_side = documented_verify()
    assert client_side(secret, headers, request["raw"])
    assert not client_side(secret, headers, request["raw"].replace("2348030000000", "2348030000009"))


def test_a_batch_asking_for_delivery_reports_gets_them_on_the_client_webhook(stack, account, webhook):
    # Given a batch (seed 3's shape) that asks for delivery reports
    answer = httpx.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={"from": "48975", "to": ["2348030000000"], "body": "Hello Buddy. Let's go!", "delivery_report": "yes"},
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["recipients_processed"] == 1
    # When the upstream reports it delivered
    reports = [webhook.next("/dlr")]
    while {"submitted", "delivered"} - {r["body"]["status"] for r in reports}:
        reports.append(webhook.next("/dlr"))
    # Then the client's webhook hears of each change, the dispatcher's `submitted` and the upstream's
    # `delivered`, in sequence order (they may arrive in either order: `sequence` orders them)
    by_sequence = sorted(reports, key=lambda r: r["body"]["sequence"])
    assert [r["body"]["status"] for r in by_sequence] == ["submitted", "delivered"]
    for request in reports:
        # Authenticated with the account's webhook token, and signed the Standard Webhooks way
        assert request["headers"]["Authorization"] == f"Bearer {account['webhook_token']}"
        assert_signed(request, account["signing_secret"])
    report = by_sequence[-1]["body"]
    assert report["reference_id"] == answer.json()["reference_id"]
    assert report["to"] == "2348030000000"
    assert report["telco"] == "mtn"
    assert report["reported_at"]


def test_an_inbound_sms_reaches_the_client_in_the_seed_receive_format(stack, account, webhook):
    # Given a subscriber texting the account's shortcode through the upstream
    result = httpx.post(
        f"{stack.simulator_url}/control/inbound",
        json={"from": "2348030000000", "to": "48975", "message": "When was the last time you went to the cinema?"},
        timeout=10,
    ).json()
    assert result["delivered"] is True
    # Then the client's inbound URL gets the seed's "Receive SMS" body with the webhook token
    request = webhook.next("/inbound")
    assert request["headers"]["Authorization"] == f"Bearer {account['webhook_token']}"
    assert_signed(request, account["signing_secret"])
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["type"] == "two-way sms"
    assert body["telco"] == "mtn"
    assert body["from"] == "2348030000000"
    assert body["to"] == "48975"
    assert body["message"] == "When was the last time you went to the cinema?"
    assert body["session_id"]
    assert body["sent_date"]
    assert "ref_id" in body


def test_the_documented_verifier_refuses_forged_headers_instead_of_raising() -> None:
    import time

    from sms_gateway.domain.webhooks import new_signing_secret, signed_headers

    # Given the verifier a client copies from docs/webhooks.md, and a genuine signed request
    client_side = documented_verify()
    secret, body = new_signing_secret(), '{"type":"two-way sms"}'
    genuine = signed_headers(secret, "in_1", int(time.time()), body)
    assert client_side(secret, genuine, body)
    # When anyone posts to the client's webhook with a non-ASCII signature, a timestamp int() will not read, or no
    # signature headers at all, then each is refused (an exception is a 500 in the client's endpoint, and some
    # frameworks log the request, or answer with the stack trace)
    forged = [
        {**genuine, "webhook-signature": "v1,\u00e9"},
        {**genuine, "webhook-timestamp": "9" * 5000},
        {**genuine, "webhook-timestamp": "soon"},
        {},
    ]
    for headers in forged:
        try:
            accepted = client_side(secret, headers, body)
        except Exception as error:
            raise AssertionError(f"the documented verifier raised {error!r} for {list(headers)}") from error
        assert accepted is False
