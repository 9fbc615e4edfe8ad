"""A cookie-keeping client for the portal that drives the real `api` handler with payload v2.0 events (no browser)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import urlencode, urlsplit

HOST = "abc123.execute-api.us-east-1.amazonaws.com"
ORIGIN = f"https://{HOST}"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM = re.compile(r"<form\b.*?</form>", re.DOTALL)
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class PortalResponse:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: str

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def csrf_token(self) -> str:
        found = CSRF.search(self.body)
        assert found, f"no CSRF field in the page:\n{self.body[:2000]}"
        return unescape(found.group(1))

    def hidden_fields(self, action: str) -> dict[str, str]:
        """The hidden fields of the page's form for `action` (its CSRF token, once-per-form key, ...), as the browser
        would post them; empty when the page has no such form."""
        for form in FORM.findall(self.body):
            fields = {name: unescape(value) for name, value in HIDDEN.findall(form)}
            if fields.get("action") == action:
                return fields
        return {}

    def text(self) -> str:
        """The page without its tags, for asserting what a user reads."""
        return unescape(re.sub(r"<[^>]+>", " ", self.body))


def portal_event(
    method: str,
    path: str,
    *,
    cookies: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    origin: str | None = ORIGIN,
) -> dict[str, Any]:
    """The event API Gateway sends for a browser request: a form arrives URL-encoded and base64-encoded."""
    all_headers = {
        "host": HOST,
        "user-agent": "Mozilla/5.0 (portal tests)",
        "x-forwarded-for": "203.0.113.10",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if method == "POST":
        all_headers["content-type"] = "application/x-www-form-urlencoded"
        if origin is not None:
            all_headers["origin"] = origin
    all_headers.update(headers or {})
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"ANY {'/portal/{proxy+}' if path != '/portal' else '/portal'}",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": all_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": HOST,
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "Mozilla/5.0",
            },
            "requestId": "portal-test",
            "routeKey": "ANY /portal/{proxy+}",
            "stage": "$default",
            "time": "02/Jan/2024:23:50:37 +0000",
            "timeEpoch": 1704239437000,
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = dict(query)
    if cookies:
        event["cookies"] = [f"{name}={value}" for name, value in cookies.items()]
    if form is not None:
        event["body"] = base64.b64encode(urlencode(form).encode()).decode()
        event["isBase64Encoded"] = True
    return event


@dataclass
class PortalClient:
    """Keeps the cookies the portal sets (as a browser does, ignoring Path for simplicity)."""

    handler: Handler
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, **kwargs: Any) -> PortalResponse:
        split = urlsplit(path)
        query = dict(part.split("=", 1) for part in split.query.split("&") if "=" in part) or kwargs.pop("query", None)
        result = self.handler(portal_event(method, split.path, cookies=self.cookies, query=query, **kwargs))
        response = PortalResponse(
            status=result["statusCode"],
            headers={**(result.get("headers") or {})},
            cookies=list(result.get("cookies") or []),
            body=result.get("body") or "",
        )
        for set_cookie in response.cookies:
            name, _, rest = set_cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value and "Max-Age=0" not in set_cookie:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def get(self, path: str, **kwargs: Any) -> PortalResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: Mapping[str, str], **kwargs: Any) -> PortalResponse:
        return self.request("POST", path, form=form, **kwargs)

    def sign_in(self, username: str, password: str) -> PortalResponse:
        page = self.get("/portal/login")
        return self.post("/portal/login", {"csrf_token": page.csrf_token(), "username": username, "password": password})

    def submit(
        self, path: str, action: str, fields: Mapping[str, str] | None = None, *, from_page: str | None = None
    ) -> PortalResponse:
        """Loads the page (or `from_page`) and posts one of its forms to `path`, with the page's CSRF token (and the
        form's other hidden fields, when the page has a form for `action`)."""
        page = self.get(from_page or path)
        hidden = page.hidden_fields(action)
        return self.post(path, {"csrf_token": page.csrf_token(), "action": action, **hidden, **(fields or {})})
