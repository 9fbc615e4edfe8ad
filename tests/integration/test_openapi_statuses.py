"""The OpenAPI document lists exactly the errors each operation answers, with the headers they carry.

A generated client (or a schemathesis run) trusts the document: a status it lists that the operation can never
answer is dead code and a false promise in every client, and a header it leaves out (WWW-Authenticate on a 401) is
one the client cannot read. Each operation of the document is asked here, through API Gateway's routing and the real
`api` handler on moto, the requests that draw each of these answers where the operation has one (no credentials, a
body over the limit, a body that is not JSON, a send from an account without credits); so an operation added to the
document, or a dialect whose answers change, is checked without being named."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.security_stack import Answer, Gateway, create_account, log_in, module_fixtures

AIRTEL = "2348020000000"
SENDER = "BROKE"
# An id no record has (each path parameter's checks take it), so a request that changes something changes nothing.
UNKNOWN_ID = "999999999"
NOTIFICATION_ID = "dlr_999999999_0"
# Over dialects/common.MAX_BODY_BYTES (256 KB).
OVERSIZE = '{"padding": "' + "x" * (300 * 1024) + '"}'

aws, gateway = module_fixtures()


@pytest.fixture(scope="module")
def document(gateway: Gateway) -> dict[str, Any]:
    answer = gateway.request("GET", "/v1/openapi.json")
    assert answer.status == 200
    return dict(answer.json)


@pytest.fixture(scope="module")
def broke(gateway: Gateway) -> dict[str, Any]:
    """An account without credits: a send it asks for cannot be paid."""
    account = create_account("Broke", SENDER, credits=0)
    return {**account, "session": log_in(gateway, account)}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every operation of the HTTP dialects (the shortcode family answers every outcome as HTTP 200)."""
    for path, methods in document["paths"].items():
        if path.startswith(("/v1/", "/api/services/")):
            continue
        for method, operation in methods.items():
            yield method.upper(), path, operation


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: NOTIFICATION_ID if m.group(1) == "notification_id" else UNKNOWN_ID, path)


def credentials(path: str, account: dict[str, Any]) -> dict[str, Any]:
    """The request's credentials in its family's way: a Bearer token, the session headers, /login's own."""
    if path.startswith("/ng/v1/"):
        return {"headers": {"authorization": f"Bearer {account['token']}"}}
    if path == "/login":
        return {"query": {"username": account["username"], "password": account["password"]}}
    return {"headers": dict(account["session"])}


def ask(gateway: Gateway, method: str, path: str, account: dict[str, Any] | None, **request: Any) -> Answer:
    given = credentials(path, account) if account is not None else {}
    headers = {**given.get("headers", {}), **request.pop("headers", {})}
    return gateway.request(method, concrete(path), query=given.get("query"), headers=headers, **request)


def header_names(answer: Answer) -> set[str]:
    return {name.lower() for name in answer.headers}


def documented_headers(operation: dict[str, Any], status: int) -> set[str]:
    return {name.lower() for name in operation["responses"].get(str(status), {}).get("headers", {})}


def test_every_refusal_of_credentials_is_documented_with_its_challenge(gateway, document):
    """A 401 that carries WWW-Authenticate (9bits' Bearer, /login's Basic) says so in the document, and one that
    does not (the session headers are no HTTP scheme) does not."""
    wrong = []
    for method, path, operation in operations(document):
        answer = ask(gateway, method, path, None)
        assert answer.status == 401, f"{method} {path}: {answer}"
        if "401" not in operation["responses"]:
            wrong.append(f"{method} {path}: 401 not documented")
        elif ("www-authenticate" in header_names(answer)) != ("www-authenticate" in documented_headers(operation, 401)):
            documented = sorted(documented_headers(operation, 401))
            wrong.append(f"{method} {path}: answers with {sorted(header_names(answer))}, documents {documented}")
    assert not wrong, "\n".join(wrong)


def refusals(gateway: Gateway, document: dict[str, Any], account: dict[str, Any], status: int, **request: Any):
    """Each operation whose answer to `request` and whose document disagree on `status`."""
    wrong = []
    for method, path, operation in operations(document):
        answer = ask(gateway, method, path, account, **dict(request))
        if (answer.status == status) != (str(status) in operation["responses"]):
            wrong.append(f"{method} {path}: answered {answer.status}, documents {sorted(operation['responses'])}")
    return wrong


def test_only_the_operations_that_read_a_body_document_413(gateway, document, broke):
    headers = {"content-type": "application/json"}
    wrong = refusals(gateway, document, broke, 413, headers=headers, body=OVERSIZE)
    assert not wrong, "\n".join(wrong)


def test_only_the_operations_that_refuse_a_content_type_document_415(gateway, document, broke):
    headers = {"content-type": "text/plain"}
    wrong = refusals(gateway, document, broke, 415, headers=headers, body="hello")
    assert not wrong, "\n".join(wrong)


# A request each operation would act on, were its account able to pay: a send, a group and its members.
PLAUSIBLE = {
    "from": SENDER,
    "to": [AIRTEL],
    "message": "hello",
    "sender": SENDER,
    "recipient": [AIRTEL],
    "message_type": "N",
    "name": "Regulars",
    "members": [AIRTEL],
}


def test_only_the_operations_that_charge_credits_document_402(gateway, document, broke):
    """A send the account cannot pay is 402 in 9bits (the session-key family says 400, as its seed does)."""
    wrong = refusals(gateway, document, broke, 402, body=PLAUSIBLE)
    assert not wrong, "\n".join(wrong)


def test_only_the_operations_that_name_a_record_document_404(gateway, document, broke):
    """An id the account has no record under is 404; an operation that names no record has nothing to miss (an
    unknown group in a send's `to` is a 400 naming it)."""
    wrong = refusals(gateway, document, broke, 404, body=PLAUSIBLE)
    assert not wrong, "\n".join(wrong)


def test_a_read_documents_no_answer_only_a_change_gives(document):
    """A GET stores nothing, so it conflicts with nothing (409) and has nothing to undo for want of time (503)."""
    wrong = [
        f"{method} {path}: {status}"
        for method, path, operation in operations(document)
        for status in ("409", "503")
        if method == "GET" and status in operation["responses"]
    ]
    assert not wrong, "\n".join(wrong)
