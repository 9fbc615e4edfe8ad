"""A catalogue of bad requests over real HTTP, across the four dialects and the upstream callbacks: each gets a
clear error in its dialect's shape (the status, and a message naming what is wrong) and leaves every table item,
queue and schedule, and so every credit balance, exactly as it was."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.state_snapshot import (
    REFUSAL_BOOKKEEPING,
    StateClients,
    assert_unchanged,
    capture,
    clients_for_stack,
    wait_until_quiet,
)

pytestmark = pytest.mark.e2e

SENDER = "BRAND"
SHORTCODE = "20414"
NUMBER = "2348020000000"
OVERSIZE = "x" * (300 * 1024)
THOUSAND_AND_ONE = [f"23480{20000000 + n}" for n in range(1001)]
BEYOND_90_DAYS = (datetime.now(UTC) + timedelta(days=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
TEN_MINUTES_AGO = int(time.time()) - 600
NINEBITS_UPSTREAM_SECRET = "whsec_dXBzdHJlYW0tc2lnbmluZy1rZXk="


@dataclass(frozen=True)
class Bad:
    """One bad request. `{name}` placeholders in path, body, query and headers are filled from the world;
    `auth` says which credentials go with it ("own": the dialect's own, "none", or a kind of bad signature)."""

    dialect: str  # 9bits | shortcode | session | callback
    method: str
    path: str
    status: int  # the HTTP status; for the shortcode family, the `response-code` of its HTTP 200 answer
    says: str  # what the error message names, case-insensitive
    body: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    auth: str = "own"
    content_type: str | None = "application/json"


def send(**fields: Any) -> str:
    return json.dumps({"from": SENDER, "to": NUMBER, "message": "hello", **fields})


def session_send(**fields: Any) -> str:
    return json.dumps({"message": "hello", "recipient": [f"+{NUMBER}"], "sender": SENDER, **fields})


def shortcode_form(**fields: str) -> dict[str, str]:
    return {"apikey": "{apikey}", "partnerID": "{partner_id}", "shortcode": SHORTCODE, "message": "hi", **fields}


def dlr(**fields: Any) -> str:
    return json.dumps({"message_id": "sim-1", "client_ref": "{client_ref}", "status": "DELIVRD", **fields})


def inbound(**fields: Any) -> str:
    return json.dumps({"message_id": "sim-in-1", "from": NUMBER, "to": SHORTCODE, "text": "hi", **fields})


CATALOGUE: dict[str, Bad] = {
    # ---- 9bits: POST /ng/v1/sendsms
    "9bits-malformed-json": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "not valid JSON", '{"from": "BRAND", "to": '),
    "9bits-body-not-an-object": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "JSON object", "[1, 2, 3]"),
    "9bits-empty-body": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "empty", ""),
    "9bits-to-wrong-type": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "to", send(to={"number": NUMBER})),
    "9bits-delivery-report-maybe": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "delivery_report", send(delivery_report="maybe")
    ),
    "9bits-1001-recipients": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "at most 1000", send(to=THOUSAND_AND_ONE, message=None, body="hi")
    ),
    "9bits-oversize-body": Bad("9bits", "POST", "/ng/v1/sendsms", 413, "256 KB", send(message=OVERSIZE)),
    "9bits-send-at-unparseable": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "send_at", send(send_at="next tuesday")),
    "9bits-send-at-feb-30": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "send_at", send(send_at="2027-02-30T10:00:00Z")
    ),
    "9bits-send-at-beyond-90-days": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "90 days", send(send_at=BEYOND_90_DAYS)
    ),
    "9bits-unknown-sender": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "not registered", send(**{"from": "NOTMINE"})),
    "9bits-nosql-operator-as-sender": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "from", send(**{"from": {"$gt": ""}})
    ),
    "9bits-sql-injection-in-to": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "OR '1'='1", send(to=[f"{NUMBER}' OR '1'='1"])
    ),
    "9bits-script-tag-as-sender": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "from", send(**{"from": "<script>x</script>"})
    ),
    "9bits-crlf-in-sender": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "not registered", send(**{"from": "BRAND\r\nX-Evil: 1"})
    ),
    "9bits-nul-byte-in-sender": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "not registered", send(**{"from": "BR\u0000AND"})
    ),
    "9bits-control-characters-in-to": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "invalid recipient", send(to=["\u202e\u0007" + NUMBER])
    ),
    "9bits-very-long-ref-id": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "ref_id", send(ref_id="r" * 10_000)),
    "9bits-lone-surrogate-in-message": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "surrogate", send(message="hi \ud800 there")
    ),
    "9bits-blank-message": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "blank", send(message=" \t\n ")),
    "9bits-unknown-group": Bad("9bits", "POST", "/ng/v1/sendsms", 400, "grp_missing", send(to=["grp_missing"])),
    "9bits-callback-url-without-reports": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 400, "callback_url", send(callback_url="https://example.com/dlr")
    ),
    "9bits-wrong-content-type": Bad(
        "9bits", "POST", "/ng/v1/sendsms", 415, "application/json", send(), content_type="text/xml"
    ),
    "9bits-no-credits": Bad(
        "9bits",
        "POST",
        "/ng/v1/sendsms",
        402,
        "credit",
        send(**{"from": "POOR"}),
        headers={"Authorization": "Bearer {poor_token}"},
    ),
    "9bits-missing-auth": Bad("9bits", "POST", "/ng/v1/sendsms", 401, "token", send(), auth="none"),
    "9bits-wrong-token": Bad(
        "9bits",
        "POST",
        "/ng/v1/sendsms",
        401,
        "invalid credentials",
        send(),
        headers={"Authorization": "Bearer not-a-token"},
    ),
    "9bits-shortcode-apikey-as-bearer": Bad(
        "9bits",
        "POST",
        "/ng/v1/sendsms",
        401,
        "invalid credentials",
        send(),
        headers={"Authorization": "Bearer {apikey}"},
    ),
    # ---- batches and groups
    "batch-read-not-an-id": Bad("9bits", "GET", "/ng/v1/batches/1%20OR%201=1", 404, "batch"),
    "batch-read-unknown-id": Bad("9bits", "GET", "/ng/v1/batches/123456789", 404, "batch"),
    "batch-cancel-unknown-id": Bad("9bits", "DELETE", "/ng/v1/batches/123456789", 404, "batch"),
    "batch-cancel-another-accounts-batch": Bad(
        "9bits", "DELETE", "/ng/v1/batches/{scheduled}", 404, "batch", headers={"Authorization": "Bearer {poor_token}"}
    ),
    "batch-cancel-a-delivered-batch": Bad("9bits", "DELETE", "/ng/v1/batches/{delivered}", 409, "cancel"),
    "batch-reports-invalid-cursor": Bad(
        "9bits", "GET", "/ng/v1/batches/{scheduled}/delivery_report", 400, "cursor", query={"next": "not-a-cursor"}
    ),
    "batch-reports-page-size-zero": Bad(
        "9bits", "GET", "/ng/v1/batches/{scheduled}/delivery_report", 400, "page_size", query={"page_size": "0"}
    ),
    "batch-reports-status-maybe": Bad(
        "9bits", "GET", "/ng/v1/batches/{scheduled}/delivery_report", 400, "status", query={"status": "maybe"}
    ),
    "batch-read-superscript-id": Bad("9bits", "GET", "/ng/v1/batches/%C2%B2", 404, "batch"),
    "batch-reports-superscript-page-size": Bad(
        "9bits", "GET", "/ng/v1/batches/{scheduled}/delivery_report", 400, "page_size", query={"page_size": "\u00b2"}
    ),
    "batch-dry-run-1001-recipients": Bad(
        "9bits", "POST", "/ng/v1/batches/dry_run", 400, "at most 1000", send(to=THOUSAND_AND_ONE)
    ),
    "group-create-empty-name": Bad("9bits", "POST", "/ng/v1/groups", 400, "name", json.dumps({"name": ""})),
    "batch-dry-run-unknown-sender": Bad(
        "9bits", "POST", "/ng/v1/batches/dry_run", 400, "not registered", send(**{"from": "NOTMINE"})
    ),
    "group-create-very-long-name": Bad("9bits", "POST", "/ng/v1/groups", 400, "name", json.dumps({"name": "g" * 5000})),
    "group-create-members-an-object": Bad(
        "9bits", "POST", "/ng/v1/groups", 400, "members", json.dumps({"name": "team", "members": {"$ne": None}})
    ),
    "group-members-of-unknown-group": Bad(
        "9bits", "POST", "/ng/v1/groups/grp_missing/members", 404, "grp_missing", json.dumps({"members": [NUMBER]})
    ),
    # ---- shortcode: HTTP 200 with the family's response-code
    "shortcode-no-partner-id": Bad(
        "shortcode", "GET", "/api/services/sendsms", 4091, "Partner ID", query={"apikey": "{apikey}", "mobile": NUMBER}
    ),
    "shortcode-wrong-apikey": Bad(
        "shortcode",
        "GET",
        "/api/services/sendsms",
        1006,
        "Invalid credentials",
        query=shortcode_form(apikey="wrong", mobile=NUMBER),
    ),
    "shortcode-1001-mobiles": Bad(
        "shortcode",
        "POST",
        "/api/services/sendsms",
        1104,
        "at most 1000",
        json.dumps({**shortcode_form(), "mobile": ",".join(THOUSAND_AND_ONE)}),
    ),
    "shortcode-form-1001-mobiles": Bad(
        "shortcode",
        "POST",
        "/api/services/sendsms",
        1104,
        "at most 1000",
        "apikey={apikey}&partnerID={partner_id}&shortcode=20414&message=hi&mobile=" + "%2C".join(THOUSAND_AND_ONE),
        content_type="application/x-www-form-urlencoded",
    ),
    "shortcode-time-to-send-garbage": Bad(
        "shortcode",
        "GET",
        "/api/services/sendsms",
        4098,
        "timeToSend",
        query=shortcode_form(mobile=NUMBER, timeToSend="tomorrow-ish"),
    ),
    "shortcode-time-to-send-feb-30": Bad(
        "shortcode",
        "GET",
        "/api/services/sendsms",
        4098,
        "timeToSend",
        query=shortcode_form(mobile=NUMBER, timeToSend="2027-02-30 10:00"),
    ),
    "shortcode-unknown-shortcode": Bad(
        "shortcode",
        "GET",
        "/api/services/sendsms",
        1001,
        "not registered",
        query=shortcode_form(mobile=NUMBER, shortcode="99999"),
    ),
    "shortcode-malformed-json": Bad(
        "shortcode", "POST", "/api/services/sendsms", 1009, "not valid JSON", '{"apikey": "{apikey}", '
    ),
    "shortcode-lone-surrogate-in-json": Bad(
        "shortcode",
        "POST",
        "/api/services/sendsms",
        1009,
        "surrogate",
        json.dumps(shortcode_form(mobile=NUMBER, message="\udc00")),
    ),
    "shortcode-xml-content-type": Bad(
        "shortcode", "POST", "/api/services/sendsms", 1010, "content type", "<sms/>", content_type="application/xml"
    ),
    "shortcode-oversize-body": Bad(
        "shortcode",
        "POST",
        "/api/services/sendsms",
        1009,
        "256 KB",
        json.dumps({**shortcode_form(), "mobile": NUMBER, "message": OVERSIZE}),
    ),
    "shortcode-script-tag-as-mobile": Bad(
        "shortcode",
        "GET",
        "/api/services/sendsms",
        1003,
        "Invalid mobile",
        query=shortcode_form(mobile="<script>alert(1)</script>"),
    ),
    "shortcode-getdlr-sql-injection-id": Bad(
        "shortcode",
        "GET",
        "/api/services/getdlr",
        4093,
        "1 OR 1=1",
        query={"apikey": "{apikey}", "partnerID": "{partner_id}", "messageID": "1 OR 1=1"},
    ),
    "shortcode-getdlr-superscript-id": Bad(
        "shortcode",
        "GET",
        "/api/services/getdlr",
        4093,
        "Details Not Found",
        query={"apikey": "{apikey}", "partnerID": "{partner_id}", "messageID": "\u00b9\u00b2"},
    ),
    "shortcode-getbalance-9bits-token-as-apikey": Bad(
        "shortcode",
        "GET",
        "/api/services/getbalance",
        1006,
        "Invalid credentials",
        query={"apikey": "{token}", "partnerID": "x"},
    ),
    # ---- session key
    "session-login-wrong-password": Bad(
        "session",
        "GET",
        "/login",
        401,
        "invalid username or password",
        query={"username": "{username}", "password": "wrong"},
        auth="none",
    ),
    "session-login-nothing-given": Bad("session", "GET", "/login", 401, "username and password", auth="none"),
    "session-malformed-json": Bad("session", "POST", "/sms", 400, "not valid JSON", '{"message": "hi",'),
    "session-xml-body": Bad(
        "session", "POST", "/sms", 400, "not valid JSON", "<sms><message>hi</message></sms>", content_type="text/xml"
    ),
    "session-oversize-body": Bad("session", "POST", "/sms", 413, "256 KB", session_send(message=OVERSIZE)),
    "session-lone-surrogate-in-message": Bad(
        "session", "POST", "/sms", 400, "surrogate", session_send(message="\ud83d alone")
    ),
    "session-blank-message": Bad("session", "POST", "/sms", 400, "blank", session_send(message="   ")),
    "session-message-type-xx": Bad("session", "POST", "/sms", 400, "message_type", session_send(message_type="XX")),
    "session-scheduled-time-garbage": Bad(
        "session", "POST", "/sms", 400, "scheduled_delivery_time", session_send(scheduled_delivery_time="soonish")
    ),
    "session-scheduled-time-feb-30": Bad(
        "session",
        "POST",
        "/sms",
        400,
        "scheduled_delivery_time",
        session_send(scheduled_delivery_time="20270230101010"),
    ),
    "session-1001-recipients": Bad(
        "session", "POST", "/sms", 400, "recipient", session_send(recipient=THOUSAND_AND_ONE)
    ),
    "session-unknown-sender": Bad("session", "POST", "/sms", 400, "not registered", session_send(sender="NOTMINE")),
    "session-nosql-operator-as-recipient": Bad(
        "session", "POST", "/sms", 400, "recipient", session_send(recipient={"$gt": ""})
    ),
    "session-wrong-session-key": Bad(
        "session",
        "POST",
        "/sms",
        401,
        "invalid or expired session",
        session_send(),
        headers={"user_key": "{user_key}", "Session_key": "nope"},
    ),
    "session-9bits-bearer-instead": Bad(
        "session",
        "POST",
        "/sms",
        401,
        "user_key",
        session_send(),
        headers={"Authorization": "Bearer {token}"},
        auth="none",
    ),
    "session-order-unknown": Bad("session", "GET", "/sms/123456789", 404, "123456789"),
    "session-remove-order-not-an-id": Bad("session", "DELETE", "/sms/abc'--", 404, "order"),
    # ---- upstream callbacks (the simulator's HMAC over "<timestamp>.<body>", and providers not configured here)
    "callback-dlr-unsigned": Bad(
        "callback", "POST", "/callbacks/simulator/dlr", 401, "not verified", dlr(), auth="none"
    ),
    "callback-dlr-bad-signature": Bad(
        "callback", "POST", "/callbacks/simulator/dlr", 401, "not verified", dlr(), auth="bad-signature"
    ),
    "callback-dlr-replayed-old-timestamp": Bad(
        "callback", "POST", "/callbacks/simulator/dlr", 401, "not verified", dlr(status="UNDELIV"), auth="signed-old"
    ),
    "callback-dlr-superscript-timestamp": Bad(
        "callback", "POST", "/callbacks/simulator/dlr", 401, "not verified", dlr(), auth="signed-superscript"
    ),
    "callback-dlr-malformed-json": Bad("callback", "POST", "/callbacks/simulator/dlr", 400, "DLR", '{"status": '),
    "callback-dlr-status-maybe": Bad("callback", "POST", "/callbacks/simulator/dlr", 400, "DLR", dlr(status="maybe")),
    "callback-dlr-client-ref-a-number": Bad(
        "callback", "POST", "/callbacks/simulator/dlr", 400, "client_ref", dlr(client_ref=12345)
    ),
    "callback-dlr-oversize": Bad(
        "callback", "POST", "/callbacks/simulator/dlr", 413, "256 KB", dlr(error_code=OVERSIZE), auth="none"
    ),
    "callback-inbound-bad-signature": Bad(
        "callback", "POST", "/callbacks/simulator/inbound", 401, "not verified", inbound(), auth="bad-signature"
    ),
    "callback-inbound-replayed-old-timestamp": Bad(
        "callback", "POST", "/callbacks/simulator/inbound", 401, "not verified", inbound(), auth="signed-old"
    ),
    "callback-inbound-missing-to": Bad(
        "callback", "POST", "/callbacks/simulator/inbound", 400, "to", json.dumps({"from": NUMBER, "text": "hi"})
    ),
    "callback-9bits-upstream-bad-signature": Bad(
        "callback", "POST", "/callbacks/nb-up/dlr", 401, "not verified", dlr(), auth="sw-bad-signature"
    ),
    "callback-9bits-upstream-replayed-old-timestamp": Bad(
        "callback", "POST", "/callbacks/nb-up/dlr", 401, "not verified", dlr(), auth="sw-signed-old"
    ),
    "callback-9bits-upstream-superscript-timestamp": Bad(
        "callback", "POST", "/callbacks/nb-up/inbound", 401, "not verified", inbound(), auth="sw-signed-superscript"
    ),
    "callback-9bits-upstream-unsigned-dlr": Bad(
        "callback", "POST", "/callbacks/nb-up/dlr", 401, "not verified", dlr(), auth="none"
    ),
    "callback-twilio-bad-signature": Bad(
        "callback",
        "POST",
        "/callbacks/tw-up/dlr",
        401,
        "not verified",
        "MessageSid=SM1&MessageStatus=delivered",
        headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        content_type="application/x-www-form-urlencoded",
    ),
    "callback-unconfigured-provider": Bad(
        "callback",
        "POST",
        "/callbacks/nosuch/dlr",
        401,
        "not verified",
        "MessageSid=SM1&MessageStatus=delivered",
        content_type="application/x-www-form-urlencoded",
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.1, state_dir=Path(tmp_path_factory.mktemp("bad-requests"))) as running:
        yield running


@pytest.fixture(scope="module")
def state(stack: Any) -> StateClients:
    return clients_for_stack(stack)


@pytest.fixture(scope="module")
def world(stack: Any, state: StateClients) -> dict[str, str]:
    """Two accounts (one with no credits), a live session, a scheduled batch and a delivered one; then quiet."""
    from sms_gateway_tools.admin import create_account

    configure_upstreams(stack)
    rich = create_account(name="Bad input", senders=[SENDER, SHORTCODE], credits=100_000, api_url=stack.api_url)
    poor = create_account(name="No credits", senders=["POOR"], credits=0, api_url=stack.api_url)
    bearer = {"Authorization": f"Bearer {rich['token']}"}
    login = requests.get(
        f"{stack.api_url}/login", params={"username": rich["username"], "password": rich["password"]}, timeout=10
    )
    user_key, session_key = login.text.split(";")
    scheduled = requests.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={
            "from": SENDER,
            "to": NUMBER,
            "message": "later",
            "send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
        headers=bearer,
        timeout=10,
    )
    assert scheduled.status_code == 200, scheduled.text
    delivered = requests.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={"from": SENDER, "to": NUMBER, "message": "now", "delivery_report": "yes"},
        headers=bearer,
        timeout=10,
    )
    assert delivered.status_code == 200, delivered.text
    delivered_id = delivered.json()["reference_id"]
    message = _wait_for_delivery(stack.api_url, delivered_id, bearer)
    wait_until_quiet(state)
    return {
        "token": rich["token"],
        "apikey": rich["apikey"],
        "partner_id": rich["partner_id"],
        "username": rich["username"],
        "user_key": user_key,
        "session_key": session_key,
        "poor_token": poor["token"],
        "scheduled": scheduled.json()["reference_id"],
        "delivered": delivered_id,
        "client_ref": f"{rich['account_id']}.{delivered_id}.{message['message_id']}",
    }


def configure_upstreams(stack: Any) -> None:
    """A 9bits upstream (Standard Webhooks signatures) and a Twilio one beside the simulator, as an operator adds
    them: their callback routes verify for real."""
    from sms_gateway_tools.localstack.resources import UPSTREAM_PARAMETER_PREFIX

    for name, config in {
        "nb-up": {
            "type": "ninebits",
            "url": "http://127.0.0.1:9",
            "token": "t",
            "webhook_secret": NINEBITS_UPSTREAM_SECRET,
        },
        "tw-up": {"type": "twilio", "account_sid": "AC1", "auth_token": "twilio-auth-token"},
    }.items():
        stack.client("ssm").put_parameter(
            Name=f"{UPSTREAM_PARAMETER_PREFIX}{name}", Type="SecureString", Value=json.dumps(config), Overwrite=True
        )


def _wait_for_delivery(api_url: str, reference_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        reports = requests.get(
            f"{api_url}/ng/v1/batches/{reference_id}/delivery_report", headers=headers, timeout=10
        ).json()["data"]
        if reports and reports[0]["status"] == "delivered":
            return reports[0]
        assert time.monotonic() < deadline, f"batch {reference_id} was not delivered: {reports}"
        time.sleep(0.1)


def fill(text: str, world: dict[str, str]) -> str:
    for name, value in world.items():
        text = text.replace("{" + name + "}", value)
    return text


def request_for(case: Bad, world: dict[str, str], stack: Any) -> requests.PreparedRequest:
    headers = {name: fill(value, world) for name, value in case.headers.items()}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    body = fill(case.body, world).encode() if case.body is not None else None
    if case.auth == "own" and not case.headers:
        if case.dialect == "9bits":
            headers["Authorization"] = f"Bearer {world['token']}"
        elif case.dialect == "session":
            headers.update({"user_key": world["user_key"], "Session_key": world["session_key"]})
        elif case.dialect == "callback":
            headers.update(simulator_signature(stack.simulator.secret, int(time.time()), body or b""))
    elif case.auth == "bad-signature":
        headers.update(simulator_signature("not-the-secret", int(time.time()), body or b""))
    elif case.auth == "signed-old":
        headers.update(simulator_signature(stack.simulator.secret, TEN_MINUTES_AGO, body or b""))
    elif case.auth.startswith("sw-"):
        headers.update(standard_webhook_signature(case.auth, body or b""))
    elif case.auth == "signed-superscript":
        headers.update(simulator_signature(stack.simulator.secret, int(time.time()), body or b""))
        headers["X-Simulator-Timestamp"] = "\u00b2"
    query = {name: fill(value, world) for name, value in case.query.items()}
    return requests.Request(
        case.method, f"{stack.api_url}{fill(case.path, world)}", headers=headers, params=query, data=body
    ).prepare()


def standard_webhook_signature(kind: str, body: bytes) -> dict[str, str]:
    """Headers of a 9bits upstream's signed callback (Standard Webhooks), signed wrong in the way `kind` says."""
    from sms_gateway.domain.webhooks import signed_headers

    secret = "whsec_bm90LXRoZS1yaWdodC1rZXk=" if kind == "sw-bad-signature" else NINEBITS_UPSTREAM_SECRET
    stamp = TEN_MINUTES_AGO if kind == "sw-signed-old" else int(time.time())
    headers = signed_headers(secret, "msg_1", stamp, body.decode())
    if kind == "sw-signed-superscript":
        headers["webhook-timestamp"] = "\u00b2"
    return headers


def simulator_signature(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    from sms_gateway_tools.simulator import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def assert_dialect_error(case: Bad, response: requests.Response) -> None:
    body = response.json()
    if case.dialect == "shortcode":
        assert response.status_code == 200, response.text
        assert body["response-code"] == case.status, body
        message = f"{body['response-description']} {body.get('response-details', '')}"
    else:
        assert response.status_code == case.status, response.text
        if case.dialect == "9bits":
            assert body["status_code"] == case.status, body
            message = body["message"]
        elif case.dialect == "session":
            assert body["result"] == "KO", body
            message = body["error"]
        else:
            assert body["status"] == "error", body
            message = body["message"]
    assert case.says.lower() in message.lower(), f"{message!r} does not name {case.says!r}"


def test_the_catalogue_is_large_and_covers_every_dialect() -> None:
    assert len(CATALOGUE) >= 40
    assert {case.dialect for case in CATALOGUE.values()} == {"9bits", "shortcode", "session", "callback"}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_a_bad_request_is_refused_and_changes_nothing(
    name: str, stack: Any, state: StateClients, world: dict[str, str]
) -> None:
    case = CATALOGUE[name]
    # Given the stack at rest
    before = capture(state)
    # When the bad request arrives
    with requests.Session() as session:
        response = session.send(request_for(case, world, stack), timeout=15)
    # Then it gets a clear error in its dialect, and nothing changed
    assert_dialect_error(case, response)
    assert_unchanged(state, before)


def test_an_exact_replay_of_an_applied_dlr_changes_nothing(
    stack: Any, state: StateClients, world: dict[str, str]
) -> None:
    # Given a message already delivered, and its DLR as the simulator signs it
    body = fill(dlr(), world).encode()
    before = capture(state)
    # When the same DLR arrives again, freshly signed (within the timestamp tolerance)
    for _ in range(2):
        response = requests.post(
            f"{stack.api_url}/callbacks/simulator/dlr",
            data=body,
            headers={
                "Content-Type": "application/json",
                **simulator_signature(stack.simulator.secret, int(time.time()), body),
            },
            timeout=10,
        )
        # Then it is acknowledged (so the upstream stops retrying) but applies nothing
        assert response.status_code == 200, response.text
        assert response.json()["applied"] == 0
    # And once the stack is quiet nothing was written, moved or left queued but the announcement's claim. (The first
    # repeat of the report that settled a message claims its announcement, `announced`, one attribute on the message,
    # and announces that final report again, same webhook-id, in case the first was never queued: it passes through
    # the notify queue to the client, here an account with no DLR URL, and leaves nothing behind; the second repeat
    # finds it claimed and announces nothing (docs/delivery-reports.md).)
    after = wait_until_quiet(state)
    claimed = before.without(REFUSAL_BOOKKEEPING).differences(after.without(REFUSAL_BOOKKEEPING))
    assert len(claimed) <= 1 and all("'announced'" in change for change in claimed), claimed
    unclaimed = before.without(REFUSAL_BOOKKEEPING).without_attribute("announced")
    assert unclaimed.differences(after.without(REFUSAL_BOOKKEEPING).without_attribute("announced")) == []
