"""HEAD on the read-only GET routes: the same status and headers as GET, and no body (RFC 9110 section 9.3.2).

Uptime monitors, link checkers and HTTP libraries' existence checks ask HEAD; a 405 reads to them as the route being
down. The routes whose GET changes something do not take HEAD: /login (it makes a session, and counts a failed
login, whose keys HEAD could never show) and the shortcode family's services (GET sendsms sends; every answer of the
family is in its body), which answer HEAD as before."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.security_stack import Answer, Gateway, create_account, log_in, module_fixtures

aws, gateway = module_fixtures()
UNKNOWN_ID = "999999999"


@pytest.fixture(scope="module")
def account(gateway: Gateway) -> dict[str, Any]:
    made = create_account("Monitored", "MONITOR")
    return {**made, "session": log_in(gateway, made)}


def read_routes(gateway: Gateway) -> list[str]:
    """Every documented GET but /login and the shortcode family's, and the document itself."""
    document = gateway.request("GET", "/v1/openapi.json").json
    paths = [
        path
        for path, methods in document["paths"].items()
        if "get" in methods and path != "/login" and not path.startswith("/api/services/")
    ]
    return [re.sub(r"\{\w+\}", UNKNOWN_ID, path) for path in paths]


def ask(gateway: Gateway, method: str, path: str, account: dict[str, Any]) -> Answer:
    headers = {"authorization": f"Bearer {account['token']}", **account["session"]}
    return gateway.request(method, path, headers=headers)


def test_head_on_a_read_answers_as_get_without_a_body(gateway, account):
    paths = read_routes(gateway)
    assert {"/ng/v1/groups", "/status", "/v1/openapi.json", f"/sms/{UNKNOWN_ID}"} <= set(paths)
    wrong = []
    for path in paths:
        get, head = ask(gateway, "GET", path, account), ask(gateway, "HEAD", path, account)
        if (head.status, head.headers, head.text) != (get.status, get.headers, ""):
            wrong.append(f"{path}: GET {get.status} {get.headers}, HEAD {head.status} {head.headers} {head.text[:80]}")
    assert not wrong, "\n".join(wrong)


def test_head_on_login_is_refused_and_makes_no_session(gateway, account):
    answer = gateway.request("HEAD", "/login", query={"username": account["username"], "password": account["password"]})
    assert answer.status == 405 and answer.headers["Allow"] == "GET"
    assert ";" not in answer.text


def test_a_405_on_a_read_names_head_among_the_methods_allowed(gateway, account):
    """RFC 9110 section 10.2.1: Allow lists the methods the resource supports. A client (or a proxy) that reads it
    after a 405 is told of HEAD wherever HEAD is answered, and of no HEAD where it is refused."""
    wrong = []
    for path in read_routes(gateway):
        answer = ask(gateway, "PATCH", path, account)
        allowed = {name.strip() for name in answer.headers.get("Allow", "").split(",")}
        if answer.status != 405 or "GET" not in allowed or "HEAD" not in allowed:
            wrong.append(f"{path}: {answer.status} Allow {answer.headers.get('Allow')}")
    assert not wrong, "\n".join(wrong)
    # HEAD is refused there: not named.
    login = gateway.request("PUT", "/login")
    assert (login.status, login.headers["Allow"]) == (405, "GET")
