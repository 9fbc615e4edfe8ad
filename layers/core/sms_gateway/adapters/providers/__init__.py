"""Upstream SMS providers: the registry that builds an adapter from its Parameter Store configuration."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sms_gateway.domain.msisdn import region_code
from sms_gateway.errors import NotFound, Unavailable
from sms_gateway.observability import logger
from sms_gateway.ports import Provider
from sms_gateway.settings import get_settings

# Seconds a provider's configuration (and secret) is cached before Parameter Store is read again.
CONFIG_MAX_AGE = 300
# Seconds the list of configured upstream names is kept before a callback naming an upstream not in it lists them
# again: a newly configured upstream's callbacks are taken within this long (docs/providers.md).
NEW_UPSTREAM_WAIT = 30


def _simulator(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.simulator import SimulatorProvider

    return SimulatorProvider.from_config(name, config)


def _twilio(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.twilio import TwilioProvider

    return TwilioProvider.from_config(name, config)


def _africastalking(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.africastalking import AfricasTalkingProvider

    return AfricasTalkingProvider.from_config(name, config)


def _kannel(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.kannel import KannelProvider

    return KannelProvider.from_config(name, config)


def _jasmin(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.jasmin import JasminProvider

    return JasminProvider.from_config(name, config)


def _ninebits(name: str, config: dict[str, Any]) -> Provider:
    from sms_gateway.adapters.providers.ninebits import NinebitsProvider

    return NinebitsProvider.from_config(name, config)


FACTORIES: dict[str, Callable[[str, dict[str, Any]], Provider]] = {
    "simulator": _simulator,
    "twilio": _twilio,
    "africastalking": _africastalking,
    "kannel": _kannel,
    "jasmin": _jasmin,
    "ninebits": _ninebits,
}


_parameter_store_for: list[Any] = [None, None]  # [the SSM client, its SSMProvider]


def _parameter_store(parameters: Any, client: Any) -> Any:
    """One Powertools SSMProvider per SSM client, so its cache (CONFIG_MAX_AGE) lives across messages and
    invocations instead of costing a Parameter Store call per submit."""
    if _parameter_store_for[0] is not client:
        _parameter_store_for[:] = [client, parameters.SSMProvider(boto3_client=client)]
    return _parameter_store_for[1]


def parameter_name(name: str) -> str:
    """The Parameter Store name of upstream `name`'s configuration."""
    return f"{get_settings().upstream_parameter_prefix}{name}"


def provider_config(name: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters

    from sms_gateway.adapters import aws

    try:
        config = _parameter_store(parameters, aws.client("ssm")).get(
            parameter_name(name),
            decrypt=True,
            transform="json",
            max_age=CONFIG_MAX_AGE,
        )
    except parameters.exceptions.GetParameterError as error:
        if _parameter_not_found(error):
            raise NotFound(f"no upstream named {name!r} is configured") from error
        # Throttled, or the KMS key of the SecureString refused for a moment: not the same as no such upstream (a
        # callback would be refused as forged, and its upstream would not post it again).
        raise Unavailable(f"the configuration of upstream {name!r} could not be read; try again") from error
    if not isinstance(config, dict):
        raise NotFound(f"upstream {name!r} has no valid configuration")
    return config


def _parameter_not_found(error: Exception) -> bool:
    """Powertools wraps every error of the read in GetParameterError, raised while handling the SDK's own."""
    from botocore.exceptions import ClientError

    cause = error.__cause__ or error.__context__
    return isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "ParameterNotFound"


def get_provider(name: str) -> Provider:
    """The adapter of upstream `name`, from its configuration (read from Parameter Store, cached CONFIG_MAX_AGE)."""
    config = provider_config(name)
    return _factory(name, config)(name, config)


def _factory(name: str, config: dict[str, Any]) -> Callable[[str, dict[str, Any]], Provider]:
    kind = str(config.get("type", name))
    factory = FACTORIES.get(kind)
    if factory is None:
        raise NotFound(f"upstream {name!r} has an unknown type {kind!r}")
    return factory


def check_configuration(name: str, stored: str) -> None:
    """InvalidUpstreamConfig saying what in `stored` (the text of an upstream's parameter) the dispatcher could not
    use: not a JSON object, an unknown type, a setting missing or not valid, a rate limit that is not one. A route to
    such an upstream would fail every message it matched (`admin set-route` refuses it)."""
    try:
        config = json.loads(stored)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise InvalidUpstreamConfig(f"upstream {name!r}: its configuration is not a JSON object")
    try:
        _factory(name, config)(name, config)
        _rate_limit_in(name, config)
        _country_in(name, config)
    except NotFound as error:
        raise InvalidUpstreamConfig(error.message) from error
    except KeyError as error:
        raise InvalidUpstreamConfig(f"upstream {name!r}: its configuration has no {error.args[0]!r}") from error
    except (ValueError, TypeError) as error:
        detail = str(error).removeprefix(f"upstream {name!r}: ")
        raise InvalidUpstreamConfig(f"upstream {name!r}: {detail}") from error


def callback_provider(name: str) -> Provider:
    """The adapter for a callback naming upstream `name`. Anyone may post one (the webhook's function URL has no
    authentication), so a name that is not configured is refused (NotFound) from the list of configured names, not by
    a Parameter Store read each: those are not cached when they fail, and they spend the account's GetParameter
    quota that the dispatchers share (until 2026-12-06, 20 invented names cost 20 reads)."""
    if not _configured(name):
        raise NotFound(f"no upstream named {name!r} is configured")
    return get_provider(name)


_clock = time.monotonic  # replaced by tests
# [the SSM client, monotonic time of the last listing (attempted), the names it found or None when it failed]
_listing: list[Any] = [None, 0.0, None]


def _configured(name: str) -> bool:
    """Whether `name` is among the configured upstreams, listed (one GetParametersByPath a page of 10, no value
    decrypted) at most every CONFIG_MAX_AGE, or every NEW_UPSTREAM_WAIT while a callback names one not listed. A
    listing that fails keeps the one before; without one, each name is read as before rather than refused."""
    from sms_gateway.adapters import aws

    client = aws.client("ssm")
    cached, listed_at, names = _listing
    if cached is not client:
        names = None
    age = _clock() - listed_at
    if (
        cached is not client
        or age >= CONFIG_MAX_AGE
        or (age >= NEW_UPSTREAM_WAIT and (names is None or name not in names))
    ):
        listed = _list_upstreams(client)
        names = listed if listed is not None else names
        _listing[:] = [client, _clock(), names]
    return names is None or name in names


def _list_upstreams(client: Any) -> frozenset[str] | None:
    """The names of the parameters under the upstream prefix, or None when Parameter Store could not list them."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = get_settings().upstream_parameter_prefix
    names: set[str] = set()
    request: dict[str, Any] = {"Path": prefix.rstrip("/"), "Recursive": False, "WithDecryption": False}
    try:
        while True:
            page = client.get_parameters_by_path(**request, MaxResults=10)
            names.update(p["Name"][len(prefix) :] for p in page.get("Parameters", []) if p["Name"].startswith(prefix))
            if not page.get("NextToken"):
                return frozenset(names)
            request["NextToken"] = page["NextToken"]
    except (BotoCoreError, ClientError) as error:
        logger.warning("the configured upstreams could not be listed", extra={"reason": str(error)})
        return None


class InvalidUpstreamConfig(ValueError):
    """An upstream's configuration holds a value the gateway cannot use: nothing is sent to it until it is fixed."""


def upstream_rate_limit(name: str) -> int | None:
    """The messages per second an upstream accepts (`rate_limit_per_second` in its configuration): a whole number
    from 1; absent or 0 means unlimited (None). Anything else (0.5, -5, "30/s", true) is refused with an error that
    names the parameter, and the dispatcher sends nothing to the upstream meanwhile: until 2026-12-05 it was read
    with a bare int(), so 0.5 meant unlimited, 1.5 meant 1, and a negative limit held every message back until it
    expired."""
    try:
        return _rate_limit_in(name, provider_config(name))
    except InvalidUpstreamConfig as error:
        logger.error(str(error), extra={"upstream": name, "parameter": parameter_name(name)})
        raise


def _rate_limit_in(name: str, config: dict[str, Any]) -> int | None:
    value = config.get("rate_limit_per_second")
    limit = _whole_number(value)
    if limit is None:
        raise InvalidUpstreamConfig(
            f"upstream {name!r}: rate_limit_per_second must be a whole number of messages a second, at least 1 "
            f"(absent or 0: unlimited), not {value!r}; fix the parameter {parameter_name(name)}"
        )
    return limit or None


def upstream_country(name: str) -> str | None:
    """The country whose national forms upstream `name` writes numbers in (`country` in its configuration, an ISO
    3166 code: `NG`), for reading the numbers of its inbound SMS (`08020000011`); None when not set. One not valid is
    logged and not used, so its SMS in international form are still taken (`admin set-route` refuses it)."""
    try:
        return _country_in(name, provider_config(name))
    except InvalidUpstreamConfig as error:
        logger.error(str(error), extra={"upstream": name, "parameter": parameter_name(name)})
        return None


def _country_in(name: str, config: dict[str, Any]) -> str | None:
    value = config.get("country")
    if value is None:
        return None
    country = region_code(value) if isinstance(value, str) else None
    if country is None:
        raise InvalidUpstreamConfig(
            f"upstream {name!r}: country must be the ISO 3166 code of the country whose national forms it writes "
            f"numbers in (NG, KE, GH), not {value!r}; fix the parameter {parameter_name(name)}"
        )
    return country


def _whole_number(value: Any) -> int | None:
    """`value` as a whole number from 0 (absent: 0), or None when it is not one. JSON may carry it as 30, 30.0 or
    "30"; a fraction, a negative number, a boolean or any other text is not one."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        number = int(value.strip())
    else:
        return None
    return number if number >= 0 else None
