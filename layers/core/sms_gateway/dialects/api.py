"""The `api` function's resolver: every client dialect's router; errors rendered in the caller's dialect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from sms_gateway.dialects import ninebits, ninebits_inbox, portal, sessionkey, shortcode
from sms_gateway.dialects.ninebits_webhooks import router as ninebits_webhooks_router
from sms_gateway.dialects.openapi import DOCS_PATH, TITLE, DocumentedResolver
from sms_gateway.errors import GatewayError, InvalidRequest, NotFound
from sms_gateway.observability import logger

app = DocumentedResolver(enable_validation=True)
app.enable_swagger(path=DOCS_PATH, title=TITLE, version="1.0.0")
app.include_router(ninebits.router)
app.include_router(ninebits_inbox.router)
app.include_router(shortcode.router)
app.include_router(sessionkey.router)
app.include_router(ninebits_webhooks_router)
app.include_router(portal.router)

# Which dialect a path belongs to, so every error reaches the client in the shape its code expects.
ERROR_RENDERERS: list[tuple[str, Callable[[GatewayError], Response]]] = [
    ("/api/services/", shortcode.render_error),
    ("/login", sessionkey.render_error),
    ("/sms", sessionkey.render_error),
    ("/status", sessionkey.render_error),
    ("/portal/", portal.render_error),
]


def render_error(path: str, error: GatewayError) -> Response[Any]:
    for prefix, render in ERROR_RENDERERS:
        root = prefix.rstrip("/")
        if path == root or path.startswith(f"{root}/"):
            return render(error)
    return ninebits.render_error(error)


@app.get("/v1/openapi.json")
def openapi_document() -> Response[Any]:
    return Response(200, content_types.APPLICATION_JSON, app.get_openapi_json_schema(title=TITLE, version="1.0.0"))


@app.exception_handler(GatewayError)
def gateway_error(error: GatewayError) -> Response[Any]:
    path = app.current_event.path
    logger.info("request refused", extra={"code": error.code, "reason": error.message, "path": path})
    return render_error(path, error)


@app.exception_handler(RequestValidationError)
def invalid_parameters(error: RequestValidationError) -> Response[Any]:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
        for item in error.errors()
    )
    return gateway_error(InvalidRequest(problems or "invalid request"))


@app.not_found
def not_found(_: Exception) -> Response[Any]:
    path = app.current_event.path
    return render_error(path, NotFound(f"no route for {app.current_event.http_method} {path}"))
