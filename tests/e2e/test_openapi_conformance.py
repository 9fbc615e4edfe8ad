"""Schemathesis against the local stack's own OpenAPI document, every operation, authenticated in each dialect:
no 5xx, every answer matches the documented schema of its status, and data that breaks the schema is refused."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

pytestmark = pytest.mark.e2e

SENDERS = ["BRAND", "20414"]
SENDER, SHORTCODE = SENDERS
NUMBER = "2348020000000"
# Small and fixed, so the whole document runs in a minute or two on a 2-core machine, the same way every time.
EXAMPLES_PER_OPERATION = 12
SEED = 20260601
SHORTCODE_FAMILY = "/api/services/"
UNSUPPORTED_SERVICES = "/api/services/{action}"
# The shortcode family's response-codes, as the HTTP statuses the other dialects answer: success; invalid
# credentials, no partnerID, no apikey; not found; an unsupported request (a method or content type the service does
# not take); an Idempotency-Key conflict; an internal error. Any other is 400.
SHORTCODE_STATUSES = {200: 200, 1006: 401, 4091: 401, 4092: 401, 4093: 404, 1010: 405, 4099: 409, 4090: 500}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.1, state_dir=Path(tmp_path_factory.mktemp("openapi"))) as running:
        yield running


@pytest.fixture(scope="module")
def credentials(stack: Any) -> dict[str, str]:
    """One account with every dialect's credentials and credits for every send the fuzzing makes."""
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Schemathesis", senders=SENDERS, credits=10_000_000, api_url=stack.api_url)
    login = requests.get(
        f"{stack.api_url}/login",
        params={"username": account["username"], "password": account["password"]},
        timeout=10,
    )
    user_key, session_key = login.text.split(";")
    return {
        **{k: str(v) for k, v in account.items() if isinstance(v, str)},
        "user_key": user_key,
        "session_key": session_key,
    }


@pytest.fixture(scope="module")
def existing(stack: Any, credentials: dict[str, str]) -> dict[str, Any]:
    """What the run's path parameters and message ids name in positive cases (a random id only ever finds nothing):
    for each operation, ids of its own, so that one that cancels or deletes leaves the others theirs."""
    url = stack.api_url
    bearer = {"Authorization": f"Bearer {credentials['token']}"}
    session = {"user_key": credentials["user_key"], "Session_key": credentials["session_key"]}
    tomorrow = datetime.now(UTC) + timedelta(days=1)

    def batch(**scheduled: str) -> str:
        send = {"from": SENDER, "to": NUMBER, "message": "conformance", **scheduled}
        return str(requests.post(f"{url}/ng/v1/sendsms", json=send, headers=bearer, timeout=30).json()["reference_id"])

    def group(name: str) -> str:
        made = requests.post(
            f"{url}/ng/v1/groups", json={"name": name, "members": [NUMBER]}, headers=bearer, timeout=30
        )
        return str(made.json()["group_id"])

    def order(**scheduled: str) -> str:
        send = {"message": "conformance", "recipient": [NUMBER], "sender": SENDER, **scheduled}
        return str(requests.post(f"{url}/sms", json=send, headers=session, timeout=30).json()["order_id"])

    shortcode_send = {
        "apikey": credentials["apikey"],
        "partnerID": credentials["partner_id"],
        "message": "conformance",
        "shortcode": SHORTCODE,
        "mobile": NUMBER,
    }
    sent = requests.get(f"{url}/api/services/sendsms", params=shortcode_send, timeout=30).json()
    read_batch, read_group, read_order = batch(), group("read"), order()
    return {
        "path": {
            "GET /ng/v1/batches/{reference_id}": {"reference_id": read_batch},
            "GET /ng/v1/batches/{reference_id}/delivery_report": {"reference_id": read_batch},
            "DELETE /ng/v1/batches/{reference_id}": {"reference_id": batch(send_at=tomorrow.isoformat())},
            "GET /ng/v1/groups/{group_id}": {"group_id": read_group},
            "POST /ng/v1/groups/{group_id}/members": {"group_id": read_group},
            "DELETE /ng/v1/groups/{group_id}/members": {"group_id": read_group},
            "DELETE /ng/v1/groups/{group_id}": {"group_id": group("deleted")},
            "GET /sms/{order_id}": {"order_id": read_order},
            "DELETE /sms/{order_id}": {"order_id": order(scheduled_delivery_time=tomorrow.strftime("%Y%m%d%H%M%S"))},
        },
        "messageID": sent["responses"][0]["messageid"],
        "scheduled": {
            "/ng/v1/sendsms": {"send_at": tomorrow.isoformat()},
            "/sms": {"scheduled_delivery_time": tomorrow.strftime("%Y%m%d%H%M%S")},
            "/api/services/sendsms": {"timeToSend": int(tomorrow.timestamp())},
            "/api/services/sendsms/": {"timeToSend": int(tomorrow.timestamp())},
        },
    }


@pytest.fixture(scope="module")
def locked_out_username(stack: Any) -> str:
    """An account's username after more failed logins than /login takes (logic/sessions.py MAX_FAILED_LOGINS)."""
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS
    from sms_gateway_tools.admin import create_account

    username = create_account(name="Locked out", senders=["LOCKED"], credits=0, api_url=stack.api_url)["username"]
    for _ in range(MAX_FAILED_LOGINS):
        requests.get(f"{stack.api_url}/login", params={"username": username, "password": "wrong"}, timeout=10)
    return str(username)


def openapi_document() -> dict[str, Any]:
    """The document the api function serves at /v1/openapi.json (a test below checks the stack serves exactly
    this). Loaded at collection, since schemathesis' fixture-based loading does not run on pytest 9.2."""
    from sms_gateway.dialects.api import app
    from sms_gateway.dialects.openapi import TITLE

    return json.loads(app.get_openapi_json_schema(title=TITLE, version="1.0.0"))


schema = schemathesis.openapi.from_dict(
    openapi_document(),
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES_PER_OPERATION,
                "deterministic": True,
                # authorise() sends each dialect's real credentials: none generated (nor left out, as negative data).
                "with-security-parameters": False,
            },
            # The coverage phase adds each schema's boundary values, missing fields and an unexpected method.
            "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": True, "unexpected-methods": ["TRACE"]}},
            # ... but for the two sends it is most of the run (each accepted send is stored, queued, dispatched and
            # reported): their fuzzing phase covers them, and tests/e2e/test_bad_requests.py their bad input.
            # The same goes for the shortcode family's sends, and for the trailing-slash twins, which run the handler
            # of the path without the slash: the fuzzing phase covers them.
            "operations": [
                {
                    "include-path-regex": "^/(ng/v1/sendsms|sms|api/services/sendsms/?|api/services/[a-z]+/)$",
                    "phases": {"coverage": {"enabled": False}},
                },
            ],
        }
    ),
).exclude(path_regex="^/v1/")


def test_the_stack_serves_the_document_under_test(stack: Any) -> None:
    served = requests.get(f"{stack.api_url}/v1/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == openapi_document()


def authorise(case: Any, credentials: dict[str, str]) -> dict[str, str]:
    """The dialect's own credentials for the operation: a Bearer token, apikey + partnerID parameters, or the
    session-key headers (and /login's username and password)."""
    path = case.path
    if path.startswith("/ng/v1/"):
        return {"Authorization": f"Bearer {credentials['token']}"}
    if path.startswith(SHORTCODE_FAMILY):
        family = {"apikey": credentials["apikey"], "partnerID": credentials["partner_id"]}
        if case.method.upper() == "GET":
            case.query = case.query or {}
        # Where the document puts them (a GET's query, a POST's body): in a negative case only over those left as
        # the strings they should be (one the case leaves out or breaks is what the server must refuse).
        given = case.query if case.method.upper() == "GET" else case.body
        if isinstance(given, dict):
            negative = case.meta.generation.mode.is_negative
            given.update({k: v for k, v in family.items() if not negative or isinstance(given.get(k), str)})
        return {}
    if path == "/login":
        case.query = {**(case.query or {}), "username": credentials["username"], "password": credentials["password"]}
        return {}
    return {"user_key": credentials["user_key"], "Session_key": credentials["session_key"]}


# In positive cases, the fields a random value almost never gets right (a registered sender, a real number, a
# webhook host name that IDNA can encode) are set, where given, so that sends succeed and their answers are checked
# too; negative cases keep what was generated.
WEBHOOK = "https://hooks.example.com/sms"
KNOWN_GOOD: dict[str, dict[str, Any]] = {
    "/ng/v1/sendsms": {"from": SENDER, "to": NUMBER, "callback_url": WEBHOOK},
    "/ng/v1/batches/dry_run": {"from": SENDER, "to": NUMBER, "callback_url": WEBHOOK},
    "/sms": {"sender": SENDER, "recipient": [NUMBER]},
    "/api/services/sendsms": {"shortcode": SHORTCODE, "mobile": NUMBER},
    "/api/services/sendsms/": {"shortcode": SHORTCODE, "mobile": NUMBER},
    "/ng/v1/inbounds": {"number": NUMBER},
    "/ng/v1/settings/webhooks": {"inbound_url": WEBHOOK, "dlr_url": WEBHOOK},
}
# ... and those whose validity no schema can state are left out: the cursors are the server's own tokens, and a
# send time may be at most logic/send.py's MAX_SCHEDULE_AHEAD from now (a time zone, any IANA name).
UNSTATABLE = ("next", "cursor", "send_at", "timeToSend", "scheduled_delivery_time", "scheduled_delivery_timezone")


def make_acceptable(case: Any, existing: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or meta.generation.mode.is_negative:
        return
    known = {**KNOWN_GOOD.get(case.path, {}), "messageID": existing["messageID"]}
    for container in (case.body, case.query):
        if isinstance(container, dict):
            container.update({name: value for name, value in known.items() if container.get(name) not in (None, "")})
            for name in UNSTATABLE:
                container.pop(name, None)
            if case.path in existing["scheduled"]:
                # Scheduled a day ahead: each send dispatched and reported costs the local stack about a second
                # (the sends the fixture made are dispatched), and the answer is the same.
                container.update(existing["scheduled"][case.path])
    if case.path == "/ng/v1/inbounds" and isinstance(case.query, dict) and case.query.get("from"):
        case.query.pop("to", None)  # a `from` after `to` is refused: a relation between two values no schema states
    ids = existing["path"].get(operation_of(case), {})
    if ids and case.path_parameters:
        case.path_parameters = {**case.path_parameters, **ids}


def operation_of(case: Any) -> str:
    return f"{case.method.upper()} {case.operation.path}"


def in_the_dialect(response: Any, case: Any) -> Any:
    """The response with the status it stands for: the shortcode family answers every outcome as HTTP 200 with a
    `response-code` in the body (documented as such), so its success counts as 200 and its errors as the HTTP
    status the other dialects give the same error (400 for anything not listed)."""
    if not case.path.startswith(SHORTCODE_FAMILY):
        return response
    try:
        body = response.json()
    except ValueError:
        body = None
    code = body.get("response-code", 200) if isinstance(body, dict) else 200
    standing_for = copy.copy(response)
    standing_for.status_code = SHORTCODE_STATUSES.get(code, 400)
    return standing_for


@schemathesis.check
def negative_data_refused_in_the_dialect(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' negative-data check, reading the shortcode family's HTTP 200 errors as the refusals they are."""
    return negative_data_rejection(ctx, in_the_dialect(response, case), case)


@schemathesis.check
def unsupported_method_refused_in_the_dialect(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' check that a method the path does not take is answered 405 with Allow, reading the shortcode
    family's HTTP 200 (with Allow) as the refusal it is."""
    return unsupported_method(ctx, in_the_dialect(response, case), case)


@schemathesis.check
def positive_data_accepted_in_the_dialect(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' positive-data check (what the document calls valid is not refused as invalid), reading the
    shortcode family's HTTP 200 errors as the refusals they are."""
    if case.operation.path == UNSUPPORTED_SERVICES:
        return None  # there to answer "not a service of this API" (1010), whatever it is sent
    return positive_data_acceptance(ctx, in_the_dialect(response, case), case)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(
    case: Any, stack: Any, credentials: dict[str, str], existing: dict[str, Any]
) -> None:
    make_acceptable(case, existing)
    headers = authorise(case, credentials)
    response = case.call_and_validate(
        base_url=stack.api_url,
        headers=headers,
        timeout=30,
        checks=[
            not_a_server_error,
            status_code_conformance,
            response_schema_conformance,
            negative_data_refused_in_the_dialect,
            positive_data_accepted_in_the_dialect,
            unsupported_method_refused_in_the_dialect,
        ],
    )
    if 200 <= in_the_dialect(response, case).status_code < 300:
        SUCCEEDED.add(operation_of(case))
    CALLED.add(operation_of(case))


# What the run above reached: each operation's success is checked against its schema only if some request got it.
SUCCEEDED: set[str] = set()
CALLED: set[str] = set()
# Operations no request of the run can make succeed: the catch-all is there to answer "not a service" (1010), and a
# notification is resent only after its webhook died (tests/e2e/test_webhook_retries.py resends one).
NEVER_SUCCEED = {f"{method} /api/services/{{action}}" for method in ("GET", "POST", "PUT", "PATCH", "DELETE")} | {
    "POST /ng/v1/webhooks/failures/{notification_id}/resend"
}


def test_the_run_reaches_each_operations_success() -> None:
    """Every documented success answer was checked against its schema by some request of the run (until 2026-12-06
    the batch, group and order operations and getdlr only ever got 404s and their errors were all that was checked)."""
    if not CALLED:
        pytest.skip("the conformance run above did not run in this session")
    operations = {
        f"{method.upper()} {path}"
        for path, methods in openapi_document()["paths"].items()
        if not path.startswith("/v1/")
        for method in methods
    }
    never = sorted(operations - NEVER_SUCCEED - SUCCEEDED)
    assert not never, f"no request of the run got these operations' success: {never}"


def test_a_locked_out_login_answers_as_documented(stack: Any, locked_out_username: str) -> None:
    # authorise() gives every generated /login the right credentials: the lock-out is checked here.
    case = schema["/login"]["GET"].Case(query={"username": locked_out_username, "password": "wrong"})
    response = case.call_and_validate(
        base_url=stack.api_url,
        timeout=30,
        checks=[status_code_conformance, response_headers_conformance, response_schema_conformance],
    )
    assert response.status_code == 429 and int(response.headers["retry-after"][0]) > 0


@pytest.mark.parametrize("method", ["TRACE", "QUERY", "BREW"])
def test_a_method_no_route_takes_is_refused_rather_than_a_server_error(stack: Any, method: str) -> None:
    # The local bridge used to leave these to http.server, whose 501 reads as a server error.
    response = requests.request(method, f"{stack.api_url}/ng/v1/sendsms", timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert method in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed", "body_keys"),
    [
        ("GET", "/ng/v1/sendsms", {"POST"}, {"status_code", "message"}),
        ("PUT", "/ng/v1/groups/{group_id}", {"GET", "DELETE", "HEAD"}, {"status_code", "message"}),
        ("GET", "/sms", {"POST"}, {"result", "error"}),
        ("POST", "/login", {"GET"}, {"result", "error"}),
        ("PUT", "/status", {"GET", "HEAD"}, {"result", "error"}),
    ],
)
def test_a_method_the_path_does_not_take_is_405_with_allow_in_the_dialects_shape(
    stack: Any,
    credentials: dict[str, str],
    existing: dict[str, Any],
    method: str,
    path: str,
    allowed: set[str],
    body_keys: set[str],
) -> None:
    """A client that used the wrong method is told so (405, and the methods the path takes), in its dialect's shape:
    until 2026-12-06 it was told the resource did not exist (404), or for /sms, /login and /status got API Gateway's
    bare {"message": "Not Found"}, which no session-key client can read."""
    headers = {
        "Authorization": f"Bearer {credentials['token']}",
        "user_key": credentials["user_key"],
        "Session_key": credentials["session_key"],
    }
    group_id = existing["path"]["GET /ng/v1/groups/{group_id}"]["group_id"]
    url = f"{stack.api_url}{path.replace('{group_id}', group_id)}"
    answer = requests.request(method, url, headers=headers, timeout=10)
    assert answer.status_code == 405, answer.text
    assert {name.strip() for name in answer.headers["Allow"].split(",")} == allowed
    assert set(answer.json()) == body_keys
