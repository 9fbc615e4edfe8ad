"""The `api` function's resolver: every client dialect's router; errors rendered in the caller's dialect."""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from sms_gateway.dialects import ninebits, sessionkey, shortcode
from sms_gateway.errors import GatewayError, NotFound
from sms_gateway.observability import logger

app = APIGatewayHttpResolver()
app.include_router(ninebits.router)
app.include_router(shortcode.router)
app.include_router(sessionkey.router)

# Which dialect a path belongs to, so every error reaches the client in the shape its code expects.
ERROR_RENDERERS: list[tuple[str, Callable[[GatewayError], Response]]] = [
    ("/api/services/", shortcode.render_error),
    ("/login", sessionkey.render_error),
    ("/sms", sessionkey.render_error),
    ("/status", sessionkey.render_error),
]


def render_error(path: str, error: GatewayError) -> Response:
    for prefix, render in ERROR_RENDERERS:
        root = prefix.rstrip("/")
        if path == root or path.startswith(f"{root}/"):
            return render(error)
    return ninebits.render_error(error)


@app.exception_handler(GatewayError)
def gateway_error(error: GatewayError) -> Response:
    path = app.current_event.path
    logger.info("request refused", extra={"code": error.code, "reason": error.message, "path": path})
    return render_error(path, error)


@app.not_found
def not_found(_: Exception) -> Response:
    path = app.current_event.path
    return render_error(path, NotFound(f"no route for {app.current_event.http_method} {path}"))
