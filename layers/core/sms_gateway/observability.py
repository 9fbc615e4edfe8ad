"""The one Logger, Metrics and Tracer of the gateway, shared by every function."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="sms-gateway")
metrics = Metrics(namespace="SmsGateway", service="sms-gateway")
tracer = Tracer(service="sms-gateway")


def mask_msisdn(msisdn: str) -> str:
    """Logs keep the country code and the last three digits only: enough to debug, not enough to identify."""
    digits = msisdn.lstrip("+")
    if len(digits) <= 6:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 6)}{digits[-3:]}"
