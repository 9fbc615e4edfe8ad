"""A local stand-in for the HTTP API: requests become API Gateway HTTP API payload v2.0 events."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sms_gateway_tools.localstack.httpserver import RequestHandler, ServerThread, TrackingHTTPServer
from sms_gateway_tools.localstack.lambdas import ACCOUNT_ID, LocalFunction

logger = logging.getLogger("sms_gateway_tools.localstack.http_bridge")

# (function logical id, routeKey, pathParameters) for a method and a raw path, or None.
RouteMatcher = Callable[[str, str], "tuple[str, str, Mapping[str, str]] | None"]

API_ID = "local"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Bodies of these content types reach the function as text; any other body is base64-encoded,
# as API Gateway and Lambda function URLs do (a form post arrives base64-encoded).
_TEXT_TYPES = ("application/json", "application/javascript", "application/xml", "application/ecmascript")
NOT_FOUND = (404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
SERVER_ERROR = (500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # the request target as sent: path and query string, still percent-encoded
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"


def is_text_content(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


def _request_time(epoch: float) -> str:
    t = time.gmtime(epoch)
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{clock} +0000"


def _request_id() -> str:
    return base64.b64encode(secrets.token_bytes(10)).decode()


def build_event(
    request: HttpRequest,
    route_key: str,
    path_parameters: Mapping[str, str] | None,
    *,
    server_port: int,
    request_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The payload v2.0 event API Gateway would send for this request and route."""
    now = time.time() if now is None else now
    split = urlsplit(request.target)
    raw_path = split.path or "/"
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    headers.setdefault("x-forwarded-for", request.source_ip)
    headers.setdefault("x-forwarded-port", str(server_port))
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-amzn-trace-id", f"Root=1-{int(now):08x}-{secrets.token_hex(12)}")
    domain_name = headers.get("host", f"127.0.0.1:{server_port}")
    request_id = request_id or _request_id()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": split.query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if split.query:
        query: dict[str, str] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            query[name] = f"{query[name]},{value}" if name in query else value
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".", 1)[0].split(":", 1)[0],
        "http": {
            "method": request.method,
            "path": unquote(raw_path),
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": _request_time(now),
        "timeEpoch": int(now * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if request.body:
        text: str | None = None
        if is_text_content(headers.get("content-type")):
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is None:
            event["body"] = base64.b64encode(request.body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
            event["isBase64Encoded"] = False
    else:
        event["isBase64Encoded"] = False
    return event


def to_http_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """What API Gateway makes of a function's result with payload v2.0."""
    if isinstance(result, dict) and "statusCode" in result:
        status = int(result["statusCode"])
        if not 100 <= status <= 599:
            raise ValueError(f"invalid statusCode {status}")
        headers: list[tuple[str, str]] = [(str(k), _header_value(v)) for k, v in (result.get("headers") or {}).items()]
        for name, values in (result.get("multiValueHeaders") or {}).items():
            existing = {k.lower() for k, _ in headers}
            if str(name).lower() in existing:
                continue
            headers.extend((str(name), _header_value(v)) for v in values)
        headers.extend(("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or [])
        body = result.get("body")
        if body is None:
            raw = b""
        elif result.get("isBase64Encoded"):
            raw = base64.b64decode(body)
        else:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return status, headers, raw
    return 200, [("Content-Type", "application/json")], json.dumps(result).encode()


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def function_url_route(logical_id: str) -> RouteMatcher:
    """A Lambda function URL's routing: every method and path reaches the one function, as a payload v2.0 event
    with routeKey `$default` and no path parameters (the function's resolver routes by its raw path)."""

    def match(method: str, path: str) -> tuple[str, str, Mapping[str, str]]:
        return logical_id, "$default", {}

    return match


class HttpBridge:
    """The HTTP API (or a function URL) on 127.0.0.1:`port`: routes with `match`, invokes
    `functions[logical_id]`."""

    def __init__(
        self,
        match: RouteMatcher,
        functions: Mapping[str, LocalFunction],
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
    ) -> None:
        self.match = match
        self.functions = functions
        server = TrackingHTTPServer((host, port), _BridgeHandler)
        server.bridge = self  # type: ignore[attr-defined]
        self._host = host
        self._server = ServerThread(server, name="localstack-http-bridge")

    @property
    def port(self) -> int:
        return self._server.server.port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def handle(self, request: HttpRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        started = time.monotonic()
        # The matcher splits the path as sent (percent-encoded) and decodes the parameters itself.
        path = urlsplit(request.target).path or "/"
        found = self.match(request.method, path)
        function = self.functions.get(found[0]) if found else None
        if found is None or function is None:
            status, headers, body = NOT_FOUND
            request_id = _request_id()
        else:
            logical_id, route_key, path_parameters = found
            event = build_event(request, route_key, path_parameters, server_port=self.port)
            request_id = event["requestContext"]["requestId"]
            try:
                result = function.invoke(event)
            except Exception:
                logger.exception("%s failed on %s %s", logical_id, request.method, path)
                status, headers, body = SERVER_ERROR
            else:
                try:
                    status, headers, body = to_http_response(result)
                except (TypeError, ValueError) as error:
                    logger.error("%s returned a malformed response (%s): %r", logical_id, error, result)
                    status, headers, body = SERVER_ERROR
        logger.info("%s %s -> %s (%.0f ms)", request.method, path, status, (time.monotonic() - started) * 1000)
        return status, [*headers, ("Apigw-Requestid", request_id)], body


class _BridgeHandler(RequestHandler):
    server_version = "sms-gateway-local"

    def _dispatch(self) -> None:
        bridge: HttpBridge = self.server.bridge  # type: ignore[attr-defined]
        try:
            body = self.read_body()
        except ValueError:
            self.send(413, b'{"message":"Request Entity Too Large"}', [("Content-Type", "application/json")])
            self.close_connection = True
            return
        request = HttpRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        started = time.monotonic()
        status, headers, payload = bridge.handle(request)
        try:
            self.send(status, payload, headers)
        except (BrokenPipeError, ConnectionResetError):
            # As API Gateway does once its caller has gone: the function ran, its answer goes nowhere.
            logger.warning(
                "the caller of %s %s had gone when its answer (%s) was ready, %.1f s later; answer dropped",
                self.command,
                urlsplit(self.path).path,
                status,
                time.monotonic() - started,
            )
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch
    do_OPTIONS = _dispatch

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) gets API Gateway's answer (404: no route takes it), not
        # http.server's 501, which made a client's odd method look like a server error.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)
