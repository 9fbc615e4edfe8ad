"""The one Logger, Metrics and Tracer of the gateway, shared by every function."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

Handler = TypeVar("Handler", bound=Callable[..., Any])

logger = Logger(service="sms-gateway")
metrics = Metrics(namespace="SmsGateway", service="sms-gateway")


def tracing_enabled() -> bool:
    """Powertools' own switch; template.yaml turns the X-Ray SDK off (see docs/template.md, "Tracing")."""
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in {"1", "true", "yes", "on"}


@cache
def tracer() -> Tracer:
    """Made only when tracing is on: importing the X-Ray SDK creates its sampler's botocore clients, which
    costs more than the rest of a function's cold start."""
    from aws_lambda_powertools import Tracer

    return Tracer(service="sms-gateway")


def capture_lambda_handler(handler: Handler) -> Handler:
    """The Tracer's handler subsegment when tracing is on; the handler itself (no X-Ray SDK import) when off."""
    if not tracing_enabled():
        return handler
    return cast(Handler, tracer().capture_lambda_handler(handler))


def mask_msisdn(msisdn: str) -> str:
    """Logs keep the country code and the last three digits only: enough to debug, not enough to identify."""
    digits = msisdn.lstrip("+")
    if len(digits) <= 6:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 6)}{digits[-3:]}"
