"""What the security tests share: an in-process HTTP API (template routing, API Gateway events, the real handlers
on moto), accounts holding every kind of credential, every upstream type configured, and a snapshot of everything
stored so a refused request can be shown to change nothing."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from tests.conftest import FakeContext, load_function, template_stack
from tests.state_snapshot import State, capture, clients_for_moto

# The functions the HTTP API invokes, by template logical id, and the module each is loaded from.
HTTP_FUNCTIONS = {"ApiFunction": "api", "WebhookFunction": "webhook"}
SIMULATOR_SECRET = "security-simulator-secret"


@contextmanager
def shared_stack() -> Iterator[dict[str, str]]:
    """The conftest `aws` stack for a whole test module: building it costs seconds, and the security tests that
    share one only read, or assert that nothing changed."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
            patch.setenv(key, value)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_REGION", "us-east-1")
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        with template_stack(patch.setenv) as env:
            yield env


def module_fixtures() -> tuple[Any, Any]:
    """`aws, gateway = module_fixtures()` in a test module: one stack and one HTTP API, every upstream configured."""

    @pytest.fixture(scope="module")
    def aws() -> Iterator[dict[str, str]]:
        with shared_stack() as env:
            yield env

    @pytest.fixture(scope="module")
    def gateway(aws: dict[str, str]) -> Gateway:
        configure_upstreams(aws)
        return Gateway.start()

    return aws, gateway


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str
    cookies: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Gateway:
    """Requests routed as API Gateway would route them from template.yaml, delivered to the real handlers."""

    routes: list[tuple[str, str, str]] = field(default_factory=list)
    handlers: dict[str, Any] = field(default_factory=dict)
    # Functions with a FunctionUrlConfig in the template: `request(..., function_url=...)` reaches them directly.
    function_urls: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> Gateway:
        from sms_gateway_tools.template import function_definitions, function_routes, load_template

        definitions = function_definitions(load_template())
        handlers = {logical_id: load_function(name).handler for logical_id, name in HTTP_FUNCTIONS.items()}
        with_url = [fn.logical_id for fn in definitions if fn.function_url_auth is not None]
        return cls(function_routes(definitions), handlers, with_url)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
        function_url: str | None = None,
        source_ip: str = "203.0.113.7",
    ) -> Answer:
        """Through the HttpApi's routes, or with `function_url` (a function's logical id) through that function's
        URL: every path reaches it, as a `$default` event without path parameters. `source_ip`: the client's address,
        as API Gateway puts it in the event (requestContext.http.sourceIp)."""
        from sms_gateway_tools.localstack.http_bridge import HttpRequest, build_event, function_url_route
        from sms_gateway_tools.template import match_route

        if function_url is not None:
            assert function_url in self.function_urls, f"{function_url} has no function URL in the template"
            found = function_url_route(function_url)(method, path)
        else:
            found = match_route(self.routes, method, path)
        assert found is not None, f"API Gateway has no route for {method} {path}"
        logical_id, route_key, path_parameters = found
        headers = dict(headers or {})
        if body is not None and not isinstance(body, str | bytes):
            body = json.dumps(body)
            headers.setdefault("content-type", "application/json")
        raw = body.encode() if isinstance(body, str) else (body or b"")
        target = path + (f"?{urlencode(query)}" if query else "")
        request = HttpRequest(method, target, [("host", "gw.example"), *headers.items()], raw, source_ip)
        event = build_event(request, route_key, path_parameters, server_port=443)
        result = self.handlers[logical_id](event, FakeContext())
        body_text = result.get("body") or ""
        if result.get("isBase64Encoded"):
            body_text = base64.b64decode(body_text).decode()
        cookies = list(result.get("cookies") or [])
        return Answer(int(result["statusCode"]), dict(result.get("headers") or {}), body_text, cookies)


# The portal's origin as Gateway.request's events give it (Host gw.example; the local bridge's X-Forwarded-Proto).
PORTAL_ORIGIN = "http://gw.example"
FORM = "application/x-www-form-urlencoded"


def portal_sign_in(gateway: Gateway, account: dict[str, Any]) -> dict[str, str]:
    """A real portal session: the session cookie and the CSRF token its pages carry."""
    page = gateway.request("GET", "/portal/login")
    login_cookie = next(c.split(";", 1)[0] for c in page.cookies if c.startswith("portal_login="))
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    fields = {"csrf_token": token, "username": account["username"], "password": account["password"]}
    headers = {"cookie": login_cookie, "origin": PORTAL_ORIGIN, "content-type": FORM}
    answer = gateway.request("POST", "/portal/login", headers=headers, body=urlencode(fields))
    assert answer.status == 303, answer
    cookie = next(c.split(";", 1)[0] for c in answer.cookies if c.startswith("portal_session="))
    settings = gateway.request("GET", "/portal/settings", headers={"cookie": cookie})
    csrf = settings.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    return {"cookie": cookie, "csrf_token": csrf}


def create_account(name: str, sender: str, credits: int = 100, **webhooks: str) -> dict[str, Any]:
    """An account with a token, an API key and partner id, a username and password, and webhook credentials."""
    from sms_gateway_tools.admin import create_account as admin_create_account

    return admin_create_account(name=name, senders=[sender], credits=credits, **webhooks)


def log_in(gateway: Gateway, account: dict[str, Any]) -> dict[str, str]:
    """The session-key dialect's headers after a real /login."""
    answer = gateway.request("GET", "/login", query={"username": account["username"], "password": account["password"]})
    assert answer.status == 200, answer
    user_key, session_key = answer.text.split(";")
    return {"user_key": user_key, "Session_key": session_key}


@dataclass
class Tenant:
    """An account with something of every kind made through the API: what another account must not reach."""

    account: dict[str, Any]
    session: dict[str, str]
    reference_id: str  # a 9bits batch sent now
    scheduled_reference_id: str  # a 9bits batch scheduled 10 days ahead
    order_id: str  # a session-key order scheduled 10 days ahead
    message_id: int  # a shortcode message
    group_id: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.account['token']}"}


def populate(gateway: Gateway, name: str, sender: str, number: str = "2348020000000") -> Tenant:
    account = create_account(name, sender, dlr_url=f"https://{name.lower()}.example/dlr")
    bearer = {"authorization": f"Bearer {account['token']}"}
    later = datetime.now(UTC) + timedelta(days=10)

    def ok(answer: Answer, status: int = 200) -> Any:
        assert answer.status == status, answer
        return answer.json

    sent = ok(
        gateway.request("POST", "/ng/v1/sendsms", headers=bearer, body={"from": sender, "to": number, "message": "a"})
    )
    scheduled = ok(
        gateway.request(
            "POST",
            "/ng/v1/sendsms",
            headers=bearer,
            body={"from": sender, "to": [number], "body": "b", "send_at": later.strftime("%Y-%m-%dT%H:%M:%SZ")},
        )
    )
    group = ok(
        gateway.request("POST", "/ng/v1/groups", headers=bearer, body={"name": "Regulars", "members": [number]}), 201
    )
    shortcode = ok(
        gateway.request(
            "POST",
            "/api/services/sendsms",
            body={
                "apikey": account["apikey"],
                "partnerID": account["partner_id"],
                "message": "c",
                "shortcode": sender,
                "mobile": number,
            },
        )
    )
    session = log_in(gateway, account)
    order = ok(
        gateway.request(
            "POST",
            "/sms",
            headers=session,
            body={
                "message": "d",
                "message_type": "N",
                "recipient": [number],
                "sender": sender,
                "scheduled_delivery_time": later.strftime("%Y%m%d%H%M%S"),
            },
        ),
        201,
    )
    return Tenant(
        account=account,
        session=session,
        reference_id=str(sent["reference_id"]),
        scheduled_reference_id=str(scheduled["reference_id"]),
        order_id=str(order["order_id"]),
        message_id=int(shortcode["responses"][0]["messageid"]),
        group_id=str(group["group_id"]),
    )


# Every upstream type, with the secrets its callbacks are verified with. The names are the {provider} of
# /callbacks/{provider}/...; `simulator` is the local stack's default upstream.
def upstream_configurations(
    simulator_url: str = "http://127.0.0.1:9", kannel_url: str = "http://127.0.0.1:9"
) -> dict[str, dict[str, Any]]:
    return {
        "simulator": {"type": "simulator", "url": simulator_url, "secret": SIMULATOR_SECRET},
        "kannel": {
            "type": "kannel",
            "url": kannel_url,
            "username": "kannel-user",
            "password": "kannel-password-0001",
            "callback_token": "kannel-callback-token-0001",
        },
        "jasmin": {
            "type": "jasmin",
            "url": "http://127.0.0.1:9/secure/send",
            "username": "jasmin-user",
            "password": "jasmin-pass-0001",
            "callback_token": "jasmin-callback-token-0001",
        },
        "twilio": {
            "type": "twilio",
            "account_sid": "AC" + "0" * 32,
            "auth_token": "twilio-auth-token-0001",
            "base_url": "http://127.0.0.1:9",
        },
        "africastalking": {
            "type": "africastalking",
            "username": "sandbox",
            "api_key": "at-api-key-0001",
            "callback_token": "at-callback-token-0001",
            "base_url": "http://127.0.0.1:9",
        },
        "ninebits": {
            "type": "ninebits",
            "url": "http://127.0.0.1:9/ng/v1/sendsms",
            "token": "ninebits-upstream-token-0001",
            "webhook_token": "ninebits-webhook-token-0001",
            "webhook_secret": "whsec_" + base64.b64encode(b"ninebits-webhook-secret-0001").decode(),
        },
    }


def configure_upstreams(env: dict[str, str], **urls: str) -> dict[str, dict[str, Any]]:
    """Every upstream type in Parameter Store, as an operator stores them (SecureString JSON)."""
    configurations = upstream_configurations(**urls)
    ssm = boto3.client("ssm")
    for name, config in configurations.items():
        ssm.put_parameter(
            Name=f"{env['UPSTREAM_PARAMETER_PREFIX']}{name}",
            Type="SecureString",
            Value=json.dumps(config),
            Overwrite=True,
        )
    return configurations


def simulator_headers(body: str, secret: str = SIMULATOR_SECRET) -> dict[str, str]:
    from sms_gateway.adapters.providers.simulator import signature

    timestamp = str(int(time.time()))
    return {"x-simulator-timestamp": timestamp, "x-simulator-signature": signature(secret, timestamp, body)}


def simulator_callback(gateway: Gateway, kind: str, payload: dict[str, Any]) -> Answer:
    """A DLR (`dlr`) or inbound SMS (`inbound`) from the simulator upstream, signed as it signs them."""
    body = json.dumps(payload)
    headers = {"content-type": "application/json", **simulator_headers(body)}
    return gateway.request("POST", f"/callbacks/simulator/{kind}", headers=headers, body=body)


def random_secret() -> str:
    return secrets.token_urlsafe(24)


# ---------------------------------------------------------------- what is stored


def stored_state(env: dict[str, str], *, ignoring: tuple[str, ...] = ()) -> State:
    """Every table item (but those whose pk starts with one of `ignoring`), every queue's counts and every schedule
    (tests/state_snapshot.py): equal before and after means nothing changed."""
    return capture(clients_for_moto()).without(ignoring)


def scan_items(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every item of the table, as DynamoDB holds it (typed attribute values)."""
    client = boto3.client("dynamodb")
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=env["TABLE_NAME"]):
        items.extend(page["Items"])
    return items
