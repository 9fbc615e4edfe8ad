"""The `api` function's resolver: every client dialect's router, each registered on the first request that needs it;
errors rendered in the caller's dialect."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from sms_gateway import deadlines
from sms_gateway.dialects.openapi import DOCS_PATH, TITLE, DocumentedResolver
from sms_gateway.errors import GatewayError, InternalError, InvalidRequest, MethodNotAllowed, NotFound
from sms_gateway.observability import logger, metrics

# Which dialect a path belongs to: the modules whose routers serve it (imported, and their routes registered, on the
# first request under the prefix: a client of one dialect never pays for importing the others at cold start) and
# the module that renders its errors, so every error reaches the client in the shape its code expects. Prefixes
# never overlap: no route of one dialect can match a path of another.
DIALECTS: list[tuple[str, tuple[str, ...], str]] = [
    ("/ng/v1/inbounds", ("ninebits_inbox",), "ninebits"),
    ("/ng/v1/settings/webhooks", ("ninebits_inbox",), "ninebits"),
    ("/ng/v1/webhooks", ("ninebits_webhooks",), "ninebits"),
    ("/ng/v1", ("ninebits",), "ninebits"),
    ("/api/services", ("shortcode",), "shortcode"),
    ("/login", ("sessionkey",), "sessionkey"),
    ("/sms", ("sessionkey",), "sessionkey"),
    ("/status", ("sessionkey",), "sessionkey"),
    ("/portal", ("portal",), "portal"),
]
# Anything else (the documentation under /v1, unknown paths) answers in the 9bits shape.
DEFAULT_DIALECT = "ninebits"
# A send stops storing once less than this is left of its invocation: time to undo what it stored (the batch
# marked failed, the credits refunded) and to answer, before Lambda's timeout kills it half-way (logic/send.py).
SEND_RESERVE_SECONDS = 5.0
DOCUMENT_PATH = "/v1/openapi.json"


def _dialect(name: str) -> Any:
    return importlib.import_module(f"sms_gateway.dialects.{name}")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(f"{prefix}/")


# What the documentation's paths register (every route), in the order of the time all were registered at import:
# the Swagger page, the dialects, the document. A router DIALECTS serves and this list lacks comes after it
# (every_step).
DOCUMENTATION_UI = "swagger"
DOCUMENT = "document"
EVERYTHING = (
    DOCUMENTATION_UI,
    "ninebits",
    "ninebits_inbox",
    "shortcode",
    "sessionkey",
    "ninebits_webhooks",
    "portal",
    DOCUMENT,
)


def every_step() -> tuple[str, ...]:
    """Every step the function may register: EVERYTHING, then any router DIALECTS serves that EVERYTHING lacks. A
    dialect wired in by its prefix alone is served all the same, so it is documented, and enumerated by the
    security tests, with the rest (until 2026-12-05 only EVERYTHING was)."""
    served = (router for _, routers, _ in DIALECTS for router in routers)
    return (*EVERYTHING, *dict.fromkeys(router for router in served if router not in EVERYTHING))


def steps_for(path: str) -> tuple[str, ...]:
    """What must be registered before a request for `path` is resolved."""
    for prefix, routers, _ in DIALECTS:
        if _under(path, prefix):
            return routers
    return every_step() if _under(path, "/v1") else ()


def _order(step: str) -> int:
    # A router registered outside EVERYTHING comes after it.
    return EVERYTHING.index(step) if step in EVERYTHING else len(EVERYTHING)


class ApiResolver(DocumentedResolver):
    """Registers a dialect's routes when a request first needs them, and every route before the OpenAPI document
    is made (so the document is the same whatever the container served before)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._registered: set[str] = set()
        self._registering = threading.Lock()
        self._step_of_route: dict[int, int] = {}

    def register(self, *steps: str) -> None:
        """Runs each step once: DOCUMENTATION_UI, DOCUMENT, or a dialect module's name (its router)."""
        with self._registering:
            for step in steps:
                if step in self._registered:
                    continue
                if step == DOCUMENTATION_UI:
                    # Imports Powertools' OpenAPI models (over 100 ms): only for the documentation's paths.
                    self.enable_swagger(path=DOCS_PATH, title=TITLE, version="1.0.0")
                elif step == DOCUMENT:
                    self.get(DOCUMENT_PATH)(openapi_document)
                else:
                    self.include_router(_dialect(step).router)
                self._registered.add(step)
                for route in self._routes():
                    self._step_of_route.setdefault(id(route), _order(step))

    def _routes(self) -> list[Any]:
        return [*self._static_routes, *self._dynamic_routes]

    def methods_for(self, path: str) -> list[str]:
        """The methods the registered routes take for `path` (those of its dialect: the request registered them). A
        path a route names as it is (`/api/services/sendsms`) takes only that route's methods, as Powertools tries
        such routes first: not those of a route with a parameter that also matches it (`/api/services/<action>`,
        there to refuse an unknown service)."""
        for routes in (self._static_routes, self._dynamic_routes):
            methods = sorted({route.method for route in routes if route.rule.match(path)})
            if methods:
                return methods
        return []

    def answers_head_as_get(self, path: str) -> bool:
        """Whether a HEAD of `path` is answered as its GET without the body: a read (HEAD_AS_GET_PREFIXES) that a
        route takes with GET."""
        return _answers_head_as_get(path) and "GET" in self.methods_for(path)

    def allowed(self, path: str) -> list[str]:
        """The methods `path` takes, as a 405's Allow names them: its routes', and HEAD where it is answered as GET."""
        methods = self.methods_for(path)
        return sorted({*methods, "HEAD"}) if self.answers_head_as_get(path) else methods

    def register_everything(self) -> None:
        self.register(*every_step())

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        # The path as Powertools routes it (a named stage's prefix removed).
        path = APIGatewayProxyEventV2(dict(event)).path
        self.register(*steps_for(path))
        head = _http_method(event) == "HEAD" and self.answers_head_as_get(path)
        if head:
            event = _as_get(event)
        # A send stops, and undoes what it stored, while there is still time to answer (logic/send.py).
        with deadlines.invocation(
            getattr(context, "get_remaining_time_in_millis", None), reserve_seconds=SEND_RESERVE_SECONDS
        ):
            answer = super().resolve(event, context)
        # HEAD: GET's status and headers, no body (RFC 9110 section 9.3.2).
        return {**answer, "body": "", "isBase64Encoded": False} if head else answer

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        self.register_everything()
        # The document lists paths in the order their routes were registered: put the routes back in the order of
        # EVERYTHING, so the document is the same byte for byte whichever dialect this container served first.
        # Matching does not depend on this order: no route of one dialect matches another's paths.
        with self._registering:
            self._static_routes.sort(key=lambda route: self._step_of_route[id(route)])
            self._dynamic_routes.sort(key=lambda route: self._step_of_route[id(route)])
        return super().get_openapi_schema(*args, **kwargs)


# The paths whose GETs only read, so HEAD is answered as their GET without its body: the 9bits family's and the
# session-key family's reads, and the documentation. Not /login (its GET makes a session, and counts a failed login,
# whose keys HEAD could never show), nor the shortcode family (GET sendsms sends, and every answer of the family is in
# its body: HEAD is 1010 with Allow there), nor the portal (its pages are for a browser, which does not ask HEAD).
HEAD_AS_GET_PREFIXES = ("/ng/v1", "/sms", "/status", "/v1")


def _answers_head_as_get(path: str) -> bool:
    return any(_under(path, prefix) for prefix in HEAD_AS_GET_PREFIXES)


def _http_method(event: Mapping[str, Any]) -> str:
    return str(event.get("requestContext", {}).get("http", {}).get("method", "")).upper()


def _as_get(event: Mapping[str, Any]) -> dict[str, Any]:
    """The HEAD request `event` as the GET it stands for."""
    context = event["requestContext"]
    return {**event, "requestContext": {**context, "http": {**context["http"], "method": "GET"}}}


def render_error(path: str, error: GatewayError) -> Response[Any]:
    renderer = next((module for prefix, _, module in DIALECTS if _under(path, prefix)), DEFAULT_DIALECT)
    return _dialect(renderer).render_error(error)


app = ApiResolver(enable_validation=True)


def openapi_document() -> Response[Any]:
    return Response(200, content_types.APPLICATION_JSON, app.get_openapi_json_schema(title=TITLE, version="1.0.0"))


@app.exception_handler(GatewayError)
def gateway_error(error: GatewayError) -> Response[Any]:
    path = app.current_event.path
    logger.info("request refused", extra={"code": error.code, "reason": error.logged, "path": path})
    return render_error(path, error)


@app.exception_handler(RequestValidationError)
def invalid_parameters(error: RequestValidationError) -> Response[Any]:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
        for item in error.errors()
    )
    return gateway_error(InvalidRequest(problems or "invalid request"))


@app.exception_handler(Exception)
def unexpected_error(error: Exception) -> Response[Any]:
    """Whatever no route expected (an AWS error a route does not handle, a bug) still answers in the caller's dialect,
    where it would otherwise be the HTTP API's bare 500 that no vendor's client can read: the family's internal
    error, naming the Lambda request id under which it is logged (at ERROR, with the traceback) and counted
    (`RequestsFailed`, in the api function's error-rate alarm)."""
    from sms_gateway.logic.idempotency import SEND_LEASE  # here: the models it imports are not needed at cold start

    path = app.current_event.path
    request_id = getattr(app.lambda_context, "aws_request_id", None) or "unknown"
    logger.exception("request failed unexpectedly", extra={"path": path, "error_type": type(error).__name__})
    metrics.add_metric(name="RequestsFailed", unit="Count", value=1)
    return render_error(
        path,
        InternalError(
            f"the gateway failed while answering this request (request id {request_id}); it may have been done in "
            f"part: send it again under the same Idempotency-Key (a send is held as in progress for "
            f"{SEND_LEASE.seconds} seconds, then finished by the retry), or look it up before sending it again"
        ),
    )


@app.not_found
def not_found(_: Exception) -> Response[Any]:
    """No route for the method and path: 405 with Allow where the path takes another method (HTTP's answer, in the
    dialect's shape; HEAD named where it is answered), else 404."""
    path, method = app.current_event.path, app.current_event.http_method.upper()
    allowed = app.allowed(path)
    if allowed:
        return render_error(path, MethodNotAllowed.asked(path, method, allowed))
    return render_error(path, NotFound(f"no route for {method} {path}"))
