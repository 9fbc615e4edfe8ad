"""The `api` function's resolver: every client dialect's router; errors rendered in the caller's dialect."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from sms_gateway.dialects import ninebits
from sms_gateway.dialects.common import json_response
from sms_gateway.errors import GatewayError
from sms_gateway.observability import logger

app = APIGatewayHttpResolver()
app.include_router(ninebits.router)


@app.exception_handler(GatewayError)
def gateway_error(error: GatewayError) -> Response:
    logger.info("request refused", extra={"code": error.code, "reason": error.message, "path": app.current_event.path})
    return ninebits.render_error(error)


@app.not_found
def not_found(_: Exception) -> Response:
    return json_response(404, {"status_code": 404, "message": f"no route for {app.current_event.path}"})
