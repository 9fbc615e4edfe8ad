"""End to end over real HTTP: the shortcode seed's Python clients, run as written against the local stack,
send messages that the simulator delivers and that `getdlr` then reads delivered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests  # the seed's clients use it; it comes with moto, a dev dependency

from sms_gateway_tools.localstack.console import is_emf_document

pytestmark = pytest.mark.e2e

# The seed's "Code Examples (GET Request)" and "(POST Request)" Python tabs, copied verbatim.
SEED_GET_CLIENT = """
import requests
response = requests.get("https://{{url}}/api/services/sendsms", params={
    "apikey": "{{apikey}}",
    "partnerID": "{{partnerID}}",
    "message": "{{message}}",
    "shortcode": "{{shortcode}}",
    "mobile": "{{mobile}}"
})
print(response.text)
"""

SEED_POST_CLIENT = """
import requests
url = "https://{{url}}/api/services/sendsms"
payload = {
    "apikey": "{{apikey}}",
    "partnerID": "{{partnerID}}",
    "message": "{{message}}",
    "shortcode": "{{shortcode}}",
    "mobile": "{{mobile}}"
}
response = requests.post(url, json=payload, headers={'Content-Type': 'application/json'})
print(response.text)
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Shortcode E2E", senders=["48974"], credits=50, api_url=stack.api_url)


def run_seed_client(
    code: str, stack: Any, account: dict[str, Any], capsys: pytest.CaptureFixture[str], **values: str
) -> Any:
    """Fills the seed's {{placeholders}} (our base URL for `https://{{url}}`), runs it, reads what it printed."""
    filled = code.replace("https://{{url}}", stack.api_url)
    for name, value in {"apikey": account["apikey"], "partnerID": account["partner_id"], **values}.items():
        filled = filled.replace("{{" + name + "}}", value)
    assert "{{" not in filled
    capsys.readouterr()
    # The seed's own sample code, run as a client would run it.
    exec(compile(filled, "<seed client>", "exec"), {})
    # The functions run in this process: metrics they flush while pytest holds stdout land beside the client's output.
    printed = [line for line in capsys.readouterr().out.splitlines() if not is_emf_document(line)]
    return json.loads("\n".join(printed))


def delivery_report(stack: Any, account: dict[str, Any], message_id: str) -> dict[str, Any]:
    payload = {"apikey": account["apikey"], "partnerID": account["partner_id"], "messageID": message_id}
    response = requests.post(f"{stack.api_url}/api/services/getdlr", json=payload, timeout=10)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def credit(stack: Any, account: dict[str, Any]) -> float:
    params = {"apikey": account["apikey"], "partnerID": account["partner_id"]}
    balance = requests.get(f"{stack.api_url}/api/services/getbalance", params=params, timeout=10).json()
    assert balance["response-code"] == 200, balance
    assert balance["partner-id"] == account["partner_id"]
    return float(balance["credit"])


def wait_for_delivered(stack: Any, account: dict[str, Any], message_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report = delivery_report(stack, account, message_id)
        if report.get("delivery-description") == "DeliveredToTerminal" or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def test_seed_get_client_sends_a_message_that_is_delivered(
    stack: Any, account: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the seed's GET client, as written, pointed at our URL
    # When it runs
    printed = run_seed_client(
        SEED_GET_CLIENT,
        stack,
        account,
        capsys,
        message="Hello from the seed",
        shortcode="48974",
        mobile="2348020000000",
    )
    # Then it prints the seed's success shape
    [entry] = printed["responses"]
    assert entry["response-code"] == 200
    assert entry["response-description"] == "Success"
    assert entry["mobile"] == 2348020000000
    assert isinstance(entry["messageid"], str) and entry["messageid"].isdigit()
    assert entry["networkid"] == 2
    # And the simulator delivers it, as getdlr shows
    report = wait_for_delivered(stack, account, entry["messageid"])
    assert report["delivery-description"] == "DeliveredToTerminal", report
    assert report["delivery-status"] == 32
    assert report["message-id"] == entry["messageid"]
    assert report["delivery-networkid"] == 2


def test_seed_post_client_sends_to_each_number_and_each_is_delivered(
    stack: Any, account: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the seed's POST client with two comma-separated numbers and one invalid one
    before = credit(stack, account)
    printed = run_seed_client(
        SEED_POST_CLIENT,
        stack,
        account,
        capsys,
        message="Hello again",
        shortcode="48974",
        mobile="2348020000001,2348030000001,12",
    )
    # Then each number has its entry: two sent, one refused
    entries = printed["responses"]
    assert [e["response-code"] for e in entries] == [200, 200, 1003]
    assert entries[2] == {"response-code": 1003, "response-description": "Invalid mobile number", "mobile": "12"}
    # And both valid ones are delivered
    for entry in entries[:2]:
        report = wait_for_delivered(stack, account, entry["messageid"])
        assert report["delivery-status"] == 32, report
    # And getbalance shows only the two valid ones charged
    assert credit(stack, account) == before - 2


def test_seed_client_with_wrong_credentials_prints_the_seed_error(
    stack: Any, account: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    printed = run_seed_client(
        SEED_POST_CLIENT,
        stack,
        {**account, "apikey": "wrong"},
        capsys,
        message="Hi",
        shortcode="48974",
        mobile="2348020000000",
    )
    assert printed == {"response-code": 1006, "response-description": "Invalid credentials"}


def _stored_texts(stack: Any) -> list[str]:
    dynamodb = stack.client("dynamodb")
    texts: list[str] = []
    for table in dynamodb.list_tables()["TableNames"]:
        for item in dynamodb.scan(TableName=table)["Items"]:
            if "text" in item and item.get("sk", {}).get("S", "").startswith("MSG"):
                texts.append(item["text"]["S"])
    return texts


def test_a_get_whose_text_is_not_utf8_is_refused_not_sent_garbled(stack: Any, account: dict[str, Any]) -> None:
    # Given the seed's GET request whose message is PHP's urlencode() of an ISO-8859-1 "Café" (Caf%E9)
    before = credit(stack, account)
    params = {
        "apikey": account["apikey"],
        "partnerID": account["partner_id"],
        "message": "Café".encode("latin-1"),
        "shortcode": "48974",
        "mobile": "2348020000009",
    }
    # When it is sent
    answered = requests.get(f"{stack.api_url}/api/services/sendsms", params=params, timeout=10).json()
    # Then it is refused like a form POST of the same text (1009), nothing is charged, and no "Caf\ufffd" is stored
    assert answered.get("response-code") == 1009, (answered, _stored_texts(stack))
    assert credit(stack, account) == before
    assert "Caf\ufffd" not in _stored_texts(stack)
