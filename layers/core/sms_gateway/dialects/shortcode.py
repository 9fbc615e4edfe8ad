"""The shortcode dialect (being written): its router and its error shape."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from sms_gateway.dialects.common import json_response, status_for
from sms_gateway.errors import GatewayError

router = APIGatewayHttpRouter()


def render_error(error: GatewayError) -> Response:
    status = status_for(error)
    return json_response(status, {"error": error.message})
