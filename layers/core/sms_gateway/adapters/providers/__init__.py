"""Upstream SMS providers: the registry that builds an adapter from its Parameter Store configuration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sms_gateway.errors import NotFound
from sms_gateway.ports import Provider
from sms_gateway.settings import get_settings

# Seconds a provider's configuration (and secret) is cached before Parameter Store is read again.
CONFIG_MAX_AGE = 300


def _simulator(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.simulator import SimulatorProvider

    return SimulatorProvider(name=name, url=config["url"], secret=config["secret"])


FACTORIES: dict[str, Callable[[str, dict[str, Any]], Provider]] = {"simulator": _simulator}


def provider_config(name: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters

    from sms_gateway.adapters import aws

    settings = get_settings()
    ssm = parameters.SSMProvider(boto3_client=aws.client("ssm"))
    try:
        config = ssm.get(
            f"{settings.upstream_parameter_prefix}{name}",
            decrypt=True,
            transform="json",
            max_age=CONFIG_MAX_AGE,
        )
    except parameters.exceptions.GetParameterError as error:
        raise NotFound(f"no upstream named {name!r} is configured") from error
    if not isinstance(config, dict):
        raise NotFound(f"upstream {name!r} has no valid configuration")
    return config


def get_provider(name: str) -> Provider:
    config = provider_config(name)
    kind = str(config.get("type", name))
    factory = FACTORIES.get(kind)
    if factory is None:
        raise NotFound(f"upstream {name!r} has an unknown type {kind!r}")
    return factory(name, config)
