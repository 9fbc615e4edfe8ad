"""Every route refuses missing and wrong credentials, in its dialect's words, and the refusal changes nothing.

The routes are enumerated twice, from template.yaml's HttpApi events and from the Powertools resolvers' registered
routes, and the two lists must agree; so a route added to either one is checked here without being named. A route
is refused by default: the only exceptions are the commented allow-lists below. Requests go through API Gateway's
routing (from the template), a real payload v2.0 event, and the real `api` and `webhook` handlers on moto."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.security_stack import (
    FORM,
    PORTAL_ORIGIN,
    Answer,
    Gateway,
    Tenant,
    create_account,
    log_in,
    module_fixtures,
    populate,
    portal_sign_in,
    random_secret,
    simulator_headers,
    stored_state,
)
from tests.state_snapshot import REFUSAL_BOOKKEEPING

# Public by design: the API's own documentation, the portal's sign-in form and its static assets (CSS and JS), none
# of which carries account data.
PUBLIC_ROUTES = {
    ("GET", "/v1/docs"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/portal/login"),
    ("GET", "/portal/assets/<name>"),
}
# Resolver routes that never read credentials because every request gets the same error: the shortcode family's
# answer to a service it does not have (1010 Unsupported request type). Checked below to answer only that.
ERROR_ONLY_ROUTES = {
    (method, path)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
    for path in ("/api/services/<action>", "/api/services/<action>/")
}


HTTP_FUNCTION_OF_RESOLVER = {"api": "ApiFunction", "callbacks": "WebhookFunction"}
AIRTEL = "2348020000000"


def resolver_routes() -> list[tuple[str, str, str]]:
    """(template function, method, path with <params>) of every route the two resolvers registered."""
    from sms_gateway.dialects import api, callbacks

    # The api resolver registers a dialect's routes on its first request there: all of them, for this list. That is
    # every router it may serve (every_step: the documented ones and any DIALECTS names), not only the documented.
    api.app.register_everything()
    found = []
    for module, resolver in (("api", api.app), ("callbacks", callbacks.app)):
        for route in [*resolver._static_routes, *resolver._dynamic_routes]:
            found.append((HTTP_FUNCTION_OF_RESOLVER[module], route.method, route.path))
    return sorted(set(found))


@functools.cache
def template_routes() -> list[tuple[str, str, str]]:
    from sms_gateway_tools.template import function_definitions, function_routes, load_template

    return function_routes(function_definitions(load_template()))


def path_parameter(victim: Tenant, name: str) -> str:
    """A real id of the victim's for each path parameter, so a missing check would reach real data."""
    return {
        "reference_id": victim.scheduled_reference_id,
        "order_id": victim.order_id,
        "group_id": victim.group_id,
        # Not a real record: making one needs the notifier; the cross-account tests resend a real one.
        "notification_id": f"dlr_{victim.message_id}_3",
        "provider": "simulator",
        # A service the family does not have (the real ones are their own routes).
        "action": "sendsmsnow",
        "name": "portal.css",
    }[name]


def concrete_path(path: str, victim: Tenant | None = None) -> str:
    return re.sub(r"<(\w+)>", lambda m: path_parameter(victim, m.group(1)) if victim else f"p{len(m.group(1))}", path)


# One stack for the module: every test here only reads, or asserts that nothing changed.
aws, gateway = module_fixtures()


@pytest.fixture(scope="module")
def intruder(gateway: Gateway) -> dict[str, Any]:
    account = create_account("Intruder", "55555")
    return {**account, "session": log_in(gateway, account)}


@pytest.fixture(scope="module")
def victim(gateway: Gateway) -> Tenant:
    tenant = populate(gateway, "Victim", "48974")
    # Signed in to the portal too, so a forged form can carry the victim's real session cookie.
    tenant.account["portal"] = portal_sign_in(gateway, tenant.account)
    return tenant


# ---------------------------------------------------------------- the two route lists agree


def test_every_resolver_route_is_reachable_through_the_template_and_lands_on_its_function():
    from sms_gateway_tools.template import match_route

    unreachable = []
    for function, method, path in resolver_routes():
        found = match_route(template_routes(), method, concrete_path(path))
        if found is None or found[0] != function:
            unreachable.append((function, method, path, found))
    assert unreachable == []


def test_every_template_route_serves_some_resolver_route():
    from sms_gateway.dialects.api import DIALECTS
    from sms_gateway_tools.template import match_route

    resolver = resolver_routes()
    # A dialect prefix's catch-all may serve no route: it is there so that a path under the prefix no route takes
    # (/status/credits) is answered 404 in the dialect's shape, not API Gateway's bare {"message":"Not Found"}.
    catch_alls = {("ApiFunction", "ANY", f"{prefix}/{{proxy+}}") for prefix, _, _ in DIALECTS}
    unserved = []
    for function, method, path in template_routes():
        if (function, method, path) in catch_alls:
            continue
        served = [
            (m, p)
            for f, m, p in resolver
            if f == function and match_route([(function, method, path)], m, concrete_path(p)) is not None
        ]
        if not served:
            unserved.append((function, method, path))
    assert unserved == []
    # And the enumeration really found both lists
    assert len(resolver) > 30 and len(template_routes()) >= 12


def test_a_router_served_by_its_prefix_alone_is_enumerated(monkeypatch):
    import sys
    import types

    from aws_lambda_powertools.event_handler.api_gateway import Router

    from sms_gateway.dialects import api
    from sms_gateway_tools.template import match_route

    # Given a new dialect module whose route reads no credentials, wired up by its prefix in DIALECTS (which decides
    # what is served) but left out of EVERYTHING (the documentation's list)
    unlisted = types.ModuleType("sms_gateway.dialects.unlisted_reports")
    unlisted.router = Router()  # type: ignore[attr-defined]
    unlisted.router.get("/ng/v1/reports")(lambda: {"everyone's": "data"})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, unlisted.__name__, unlisted)
    monkeypatch.setattr(api, "DIALECTS", [("/ng/v1/reports", ("unlisted_reports",), "ninebits"), *api.DIALECTS])
    # on a resolver of its own, so the process's stays as it was
    monkeypatch.setattr(api, "app", api.ApiResolver())
    # and reachable: API Gateway sends it to the api function, whose first request there serves it
    assert match_route(template_routes(), "GET", "/ng/v1/reports")[0] == "ApiFunction"
    # When the routes are enumerated
    routes = resolver_routes()
    # Then it is among them, so the credentials tests run on it
    assert ("ApiFunction", "GET", "/ng/v1/reports") in routes


# ---------------------------------------------------------------- credentials, per dialect


@dataclass
class Attempt:
    """One request without valid credentials for the route: what to send, and whether its answer is a refusal."""

    label: str
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    # Only meaningful for a POST (a forged form with a real session); a GET with a real session is the owner's.
    post_only: bool = False


def _ninebits_attempts(victim: Tenant, intruder: dict[str, Any]) -> Iterator[Attempt]:
    yield Attempt("no Authorization header")
    yield Attempt("an unknown token", headers={"authorization": f"Bearer {random_secret()}"})
    yield Attempt("an empty Bearer", headers={"authorization": "Bearer "})
    yield Attempt("the token in another scheme", headers={"authorization": f"Token {victim.account['token']}"})
    # Other credentials of the same account are not API tokens.
    yield Attempt("the account's API key", headers={"authorization": f"Bearer {victim.account['apikey']}"})
    yield Attempt("the account's password", headers={"authorization": f"Bearer {victim.account['password']}"})
    webhook_token = victim.account["webhook_token"]
    yield Attempt("the token our webhooks carry", headers={"authorization": f"Bearer {webhook_token}"})
    yield Attempt("a session key", headers={"authorization": f"Bearer {victim.session['Session_key']}"})


def _shortcode_attempts(victim: Tenant, intruder: dict[str, Any]) -> Iterator[Attempt]:
    partner = victim.account["partner_id"]
    yield Attempt("no apikey or partnerID")
    yield Attempt("a partnerID without apikey", body={"partnerID": partner})
    yield Attempt("an apikey without partnerID", body={"apikey": victim.account["apikey"]})
    yield Attempt("an unknown apikey", body={"apikey": random_secret(), "partnerID": partner})
    yield Attempt("another account's apikey", body={"apikey": intruder["apikey"], "partnerID": partner})
    yield Attempt("the account's API token as apikey", body={"apikey": victim.account["token"], "partnerID": partner})


def _login_attempts(victim: Tenant, intruder: dict[str, Any]) -> Iterator[Attempt]:
    username = victim.account["username"]
    yield Attempt("no username or password")
    yield Attempt("a wrong password", query={"username": username, "password": random_secret()})
    yield Attempt("no password", query={"username": username})
    yield Attempt("an unknown username", query={"username": random_secret(), "password": victim.account["password"]})
    yield Attempt("another account's password", query={"username": username, "password": intruder["password"]})
    yield Attempt("the API key as password", query={"username": username, "password": victim.account["apikey"]})
    wrong_basic = base64.b64encode(f"{username}:{random_secret()}".encode()).decode()
    yield Attempt("a wrong HTTP Basic password", headers={"authorization": f"Basic {wrong_basic}"})


def _session_attempts(victim: Tenant, intruder: dict[str, Any]) -> Iterator[Attempt]:
    user_key, session_key = victim.session["user_key"], victim.session["Session_key"]
    intruder_session = intruder["session"]
    yield Attempt("no user_key or Session_key")
    yield Attempt("a user_key alone", headers={"user_key": user_key})
    yield Attempt("a Session_key alone", headers={"Session_key": session_key})
    yield Attempt("an unknown session key", headers={"user_key": user_key, "Session_key": random_secret()})
    yield Attempt(
        "another account's session for this user_key",
        headers={"user_key": user_key, "Session_key": intruder_session["Session_key"]},
    )
    for name in ("token", "password"):
        yield Attempt(f"the {name} as session key", headers={"user_key": user_key, "Session_key": victim.account[name]})


def _portal_attempts(victim: Tenant, intruder: dict[str, Any]) -> Iterator[Attempt]:
    """The portal's cookie session, and on a POST its CSRF token and origin (the attempt's method decides)."""
    origin = {"origin": PORTAL_ORIGIN}
    real = victim.account["portal"]
    yield Attempt("no session cookie", headers=origin, body={"csrf_token": real["csrf_token"]})
    for label, value in (
        ("an unknown session token", random_secret()),
        ("a session-key dialect's session key", victim.session["Session_key"]),
        ("the account's API token", victim.account["token"]),
        ("the account's password", victim.account["password"]),
    ):
        yield Attempt(label, headers={**origin, "cookie": f"portal_session={value}"}, body={"csrf_token": "x"})
    session = {"cookie": real["cookie"]}
    yield Attempt(
        "the real session with a wrong CSRF token",
        headers={**session, **origin},
        body={"csrf_token": random_secret()},
        post_only=True,
    )
    yield Attempt("the real session without a CSRF token", headers={**session, **origin}, post_only=True)
    yield Attempt(
        "the real session and token from another site",
        headers={**session, "origin": "https://attacker.example"},
        body={"csrf_token": real["csrf_token"]},
        post_only=True,
    )
    yield Attempt(
        "the real session and token with no Origin or Referer",
        headers=session,
        body={"csrf_token": real["csrf_token"]},
        post_only=True,
    )


def _portal_refusal(answer: Answer) -> bool:
    # A page sends the visitor to sign in (303); a form is refused with 401 (no session) or 403 (CSRF, origin).
    return answer.status in (401, 403) or (
        answer.status == 303 and answer.headers.get("Location", "").startswith("/portal/login")
    )


# A signature or token of the right shape, made with the wrong secret, for each upstream type.
def _callback_attempts(provider: str, body: str) -> Iterator[Attempt]:
    yield Attempt("no signature or token")
    if provider == "simulator":
        yield Attempt("a signature with the wrong secret", headers=simulator_headers(body, secret=random_secret()))
    elif provider in ("kannel", "jasmin", "africastalking"):
        yield Attempt("a wrong token", query={"token": random_secret()})
    elif provider == "twilio":
        yield Attempt("a wrong signature", headers={"x-twilio-signature": base64.b64encode(b"x" * 20).decode()})
    elif provider == "ninebits":
        yield Attempt("a wrong bearer token", headers={"authorization": f"Bearer {random_secret()}"})
        yield Attempt(
            "a wrong webhook signature",
            headers={"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
        )
    else:
        # An unknown upstream name with some upstream's valid-looking credentials.
        yield Attempt("an unknown upstream", headers=simulator_headers(body), query={"token": random_secret()})


Refused = Callable[[Answer], bool]


def _status(*allowed: int) -> Refused:
    return lambda answer: answer.status in allowed


def _shortcode_refusal(answer: Answer) -> bool:
    # The family answers in HTTP 200 with its own codes: 4091 no partner id, 4092 no API key, 1006 invalid.
    return answer.status == 200 and answer.json.get("response-code") in (1006, 4091, 4092)


# Which credentials each part of the API takes, by path prefix; a route under none of them fails the test.
SCHEMES: list[tuple[str, Callable[..., Iterator[Attempt]], Refused]] = [
    ("/ng/v1/", _ninebits_attempts, _status(401)),
    ("/api/services/", _shortcode_attempts, _shortcode_refusal),
    ("/login", _login_attempts, _status(401)),
    ("/sms", _session_attempts, _status(401)),
    ("/status", _session_attempts, _status(401)),
    ("/portal", _portal_attempts, _portal_refusal),
]


def _plausible(method: str, path: str, victim: Tenant) -> dict[str, Any]:
    """A request that would do something real if the credentials were accepted (sent, cancelled, changed)."""
    sender = victim.account["senders"][0]
    members = {"members": ["2348020000111"]}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/ng/v1/sendsms"): {"from": sender, "to": [AIRTEL], "body": "hello"},
        ("POST", "/ng/v1/batches/dry_run"): {"from": sender, "to": [AIRTEL], "body": "hello"},
        ("POST", "/ng/v1/groups"): {"name": "Stolen", "members": [AIRTEL]},
        ("POST", "/ng/v1/groups/<group_id>/members"): members,
        ("DELETE", "/ng/v1/groups/<group_id>/members"): members,
        ("PUT", "/ng/v1/settings/webhooks"): {"dlr_url": "https://attacker.example/dlr", "rotate_secret": True},
        ("POST", "/ng/v1/webhooks/failures/resend"): {"state": "dead"},
        ("POST", "/sms"): {"message": "hello", "recipient": [AIRTEL], "sender": sender, "message_type": "N"},
    }
    if path.startswith("/api/services/"):
        return {"message": "hello", "shortcode": sender, "mobile": AIRTEL, "messageID": str(victim.message_id)}
    return bodies.get((method, path), {})


def _portal_forms(path: str, victim: Tenant) -> list[dict[str, str]]:
    """A form for each action a portal route takes, with values that would change something if accepted."""
    from sms_gateway.dialects.portal.framework import LOGIN_PATH, LOGOUT_PATH, PAGES

    if path == LOGIN_PATH:
        return [{"username": victim.account["username"], "password": victim.account["password"]}]
    if path == LOGOUT_PATH:
        return [{"action": "sign-out"}]
    values = {
        "dlr_url": "https://attacker.example/dlr",
        "inbound_url": "https://attacker.example/in",
        "kind": "token",
        "prefix": victim.account["token"][:8],
        "sender": "STOLEN",
        "country": "KE",
        "timezone": "Africa/Nairobi",
        "text": "hello",
        "numbers": AIRTEL,
        "send_key": "forged-send",
    }
    # Routes that are no page (the Compose page's JSON preview) take the values as they are.
    actions = PAGES[path].actions if path in PAGES else {}
    return [{"action": action, **values} for action in actions] or [values]


def _send(gateway: Gateway, method: str, path: str, victim: Tenant, attempt: Attempt) -> Answer:
    if path.startswith("/portal"):
        return _send_portal(gateway, method, path, victim, attempt)
    fields = {**_plausible(method, path, victim), **attempt.body}
    query = dict(attempt.query)
    body: Any = None
    if path.startswith("/api/services/") and method == "GET":
        query.update({key: str(value) for key, value in fields.items()})
    elif fields:
        body = fields
    return gateway.request(method, concrete_path(path, victim), query=query, headers=attempt.headers, body=body)


def _send_portal(gateway: Gateway, method: str, path: str, victim: Tenant, attempt: Attempt) -> Answer:
    """A GET, or a POST of every form the route takes (the first answer that is not a refusal, else the last)."""
    headers = dict(attempt.headers)
    target = concrete_path(path, victim)
    if method != "POST":
        headers.pop("origin", None)
        return gateway.request(method, target, query=attempt.query, headers=headers)
    answer = None
    # The Messages page's forms act on the batch its query names: the victim's scheduled one, which a cancel changes.
    query = {"batch": victim.scheduled_reference_id} if path == "/portal/messages" else {}
    for form in _portal_forms(path, victim):
        fields = {**form, **attempt.body}
        if path.endswith("/login"):
            # Sign-in takes no session: its own CSRF token (a cookie and a field) and origin are what is checked.
            fields["csrf_token"] = attempt.body.get("csrf_token", "")
        body = urlencode(fields)
        answer = gateway.request(method, target, query=query, headers={**headers, "content-type": FORM}, body=body)
        if not _portal_refusal(answer):
            return answer
    assert answer is not None
    return answer


@pytest.mark.parametrize(
    ("function", "method", "path"),
    [route for route in resolver_routes() if not route[2].startswith("/callbacks/")],
    ids=str,
)
def test_every_client_route_refuses_missing_and_wrong_credentials_and_changes_nothing(
    aws, gateway, victim, intruder, function, method, path
):
    if (method, path) in PUBLIC_ROUTES:
        answer = gateway.request(method, concrete_path(path, victim))
        assert answer.status == 200 and victim.account["account_id"] not in answer.text
        return
    before = stored_state(aws)
    if (method, path) in ERROR_ONLY_ROUTES:
        answer = _send(gateway, method, path, victim, Attempt("the owner's own credentials", body=_owner(victim)))
        # Even with the owner's valid credentials: the route does nothing but refuse
        assert answer.status == 200 and answer.json["response-code"] == 1010, answer
        assert stored_state(aws) == before
        return
    schemes = [(attempts, refused) for prefix, attempts, refused in SCHEMES if _under(path, prefix)]
    assert schemes, f"{method} {path} is under no known credential scheme: add it to SCHEMES or an allow-list"
    attempts, refused = schemes[0]
    before = stored_state(aws, ignoring=REFUSAL_BOOKKEEPING)
    accepted = []
    for attempt in attempts(victim, intruder):
        if attempt.post_only and method != "POST":
            continue
        answer = _send(gateway, method, path, victim, attempt)
        if not refused(answer):
            accepted.append((attempt.label, answer.status, answer.text[:200]))
    assert accepted == []
    assert stored_state(aws, ignoring=REFUSAL_BOOKKEEPING) == before


def _owner(victim: Tenant) -> dict[str, str]:
    return {"apikey": victim.account["apikey"], "partnerID": victim.account["partner_id"]}


def _under(path: str, prefix: str) -> bool:
    root = prefix.rstrip("/")
    return path == root or path.startswith(f"{root}/")


CALLBACK_BODY = '{"message_id": "1", "status": "DELIVRD", "from": "2348020000000", "to": "48974", "text": "hi"}'
# The webhook function's public URL (template.yaml FunctionUrlConfig, AuthType NONE): upstream callbacks arrive
# there; the HttpApi keeps the same routes for callbacks set up before.
CALLBACK_ENTRIES = {"http-api": None, "function-url": "WebhookFunction"}


def test_only_the_webhook_function_has_a_public_url(gateway):
    # A function URL bypasses the HttpApi's routing: every path reaches the function, so only the function whose
    # every route verifies its caller's signature may have one
    assert gateway.function_urls == ["WebhookFunction"]
    assert {function for function, _, _ in resolver_routes() if function in gateway.function_urls} == {
        "WebhookFunction"
    }
    assert all(
        path.startswith("/callbacks/") for function, _, path in resolver_routes() if function == "WebhookFunction"
    )


@pytest.mark.parametrize(
    ("function", "method", "path"),
    [route for route in resolver_routes() if not route[2].startswith("/callbacks/")],
    ids=str,
)
def test_no_client_route_is_reachable_through_the_webhook_function_url(aws, gateway, victim, function, method, path):
    # When a client route's path, with the owner's valid credentials, is sent to the webhook's function URL
    before = stored_state(aws)
    answer = gateway.request(
        method, concrete_path(path, victim), headers=victim.bearer, body=_owner(victim), function_url="WebhookFunction"
    )
    # Then it is not found and nothing changes
    assert answer.status == 404, answer
    assert stored_state(aws) == before


@pytest.mark.parametrize("entry", CALLBACK_ENTRIES)
@pytest.mark.parametrize(
    ("function", "method", "path"),
    [route for route in resolver_routes() if route[2].startswith("/callbacks/")],
    ids=str,
)
@pytest.mark.parametrize("provider", ["simulator", "kannel", "jasmin", "twilio", "africastalking", "ninebits", "nope"])
def test_every_upstream_callback_refuses_missing_and_wrong_signatures_and_changes_nothing(
    aws, gateway, victim, function, method, path, provider, entry
):
    before = stored_state(aws)
    accepted = []
    for attempt in _callback_attempts(provider, CALLBACK_BODY):
        answer = gateway.request(
            method,
            path.replace("<provider>", provider),
            query=attempt.query,
            headers={"content-type": "application/json", **attempt.headers},
            body=CALLBACK_BODY if method == "POST" else None,
            function_url=CALLBACK_ENTRIES[entry],
        )
        if answer.status not in (401, 403):
            accepted.append((attempt.label, answer.status, answer.text[:200]))
    assert accepted == []
    assert stored_state(aws) == before
