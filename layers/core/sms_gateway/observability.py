"""The one Logger, Metrics and Tracer of the gateway, shared by every function; phone numbers never reach a log."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics

from sms_gateway.snapstart import register_restore_hooks

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

Handler = TypeVar("Handler", bound=Callable[..., Any])

logger = Logger(service="sms-gateway")
metrics = Metrics(namespace="SmsGateway", service="sms-gateway")
# Every function imports this module: the place to give SnapStart's restored environments their own random state.
register_restore_hooks()


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


# A phone number in any form (+E.164, digits, local): 7 to 15 digits standing alone. Our ids are longer (17+).
_PHONE_NUMBER = re.compile(r"(?<!\d)\+?(\d{7,15})(?!\d)")
# The same, written in groups joined by what the number parser takes between them (msisdn._SEPARATORS: spaces,
# '-', '.', '(' and ')'), as people type numbers: "+234 802 000 0199", "(0802) 000-0199", "0802.000.0199". A date
# (2026-01-02, with its time) is a run of groups too: it is matched first, to be left as it is. A run that touches
# a letter, or a '-' or '.' outside it, is part of an id (a UUID's "7-2351-483"), not a number someone typed.
_GROUPED_DIGITS = re.compile(
    r"(?P<date>(?<!\d)\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:[.,]\d+)?)?(?!\d))"
    r"|(?P<groups>(?<![\w.\-])\d+(?:[ \t\-.()]{1,3}\d+)+(?![\w\-]))"
)
# Dotted digits that are not a phone number: a decimal (two groups) or an IPv4 address (four of at most three).
_NOT_A_DOTTED_NUMBER = re.compile(r"\d+\.\d+|\d{1,3}(?:\.\d{1,3}){3}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A URL's query string: upstreams such as Kannel take the number, and their password, in a GET query.
_QUERY_STRING = re.compile(r"(\bhttps?://[^\s?\"']+)\?[^\s\"']*")
# Every attribute a plain LogRecord has; anything else on a record came in as `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask_msisdn(msisdn: str) -> str:
    """Logs keep the country code and the last three digits only: enough to debug, not enough to identify. An
    inbound SMS's sender that is no number (a sender ID, `WhatsApp`) is kept, with any phone number in it masked.
    Digits are what the patterns above take for digits (`\\d`: any script's, such as Arabic-Indic): until
    2026-12-07 only ASCII ones were, and a number in another script went back to mask_numbers, which found it and
    came here again until RecursionError, raised from the log call (a sender typed so crashed the api function)."""
    digits = msisdn.lstrip("+")
    if not digits.isdecimal():
        return mask_numbers(msisdn)
    if len(digits) <= 6:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 6)}{digits[-3:]}"


def mask_numbers(text: str) -> str:
    """Free text (an error from a client, an upstream or a library) with every phone number in it masked and
    every URL's query string dropped."""
    text = _QUERY_STRING.sub(r"\1?<query hidden>", text)
    return _PHONE_NUMBER.sub(lambda match: _mask_digits(match.group(1)), _GROUPED_DIGITS.sub(_mask_groups, text))


def mask_typed_number(raw: str) -> str:
    """What a client typed as a phone number and the gateway refused, as a log may quote it: its digits only,
    masked. Its separators, letters or name stay out, whatever characters it was written with."""
    digits = "".join(character for character in raw if character in "0123456789")
    return _mask_digits(digits) if digits else "(no digits)"


def _mask_digits(digits: str) -> str:
    # Short numbers (local forms) would show most of their digits under the E.164 rule: hide all but the last two.
    return mask_msisdn(digits) if len(digits) >= 10 else "*" * max(len(digits) - 2, 0) + digits[-2:]


def _mask_groups(match: re.Match[str]) -> str:
    """A number written in groups, masked as its digits would be, in its own shape ("+234 802 *** *199")."""
    text = match.group(0)
    digits = [character for character in text if character.isdigit()]
    if match.group("date") is not None or not 7 <= len(digits) <= 15:
        # A date, or more digits than any phone number (ids side by side): each run is masked on its own.
        return text
    if _NOT_A_DOTTED_NUMBER.fullmatch(text) or _DATE.search(text):
        return text  # a decimal, an IP address, or a short number before a date
    masked = iter(_mask_digits("".join(digits)))
    return "".join(next(masked) if character.isdigit() else character for character in text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_numbers(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


class NumberMaskingFilter(logging.Filter):
    """Masks the message, every string `extra` and the exception text of a record before any handler sees it.

    The fields the gateway logs on purpose are masked where they are logged (mask_msisdn); this catches what
    travels inside free text: a client's invalid number quoted in an error, an upstream's refusal that echoes the
    number, an exception message, a library's request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, dict) else record.getMessage()
        record.msg, record.args = _masked(message), None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRIBUTES and isinstance(value, str | dict | list | tuple):
                setattr(record, key, _masked(value))
        if record.exc_info and record.exc_info[0] is not None:
            # Formatted once and masked; Powertools prints an `exception` extra as given, other formatters reuse
            # exc_text. (Powertools' structured stack_trace is then left out: it would repeat the raw message.)
            text = mask_numbers(logging.Formatter().formatException(record.exc_info))
            record.exception, record.exception_name = text, record.exc_info[0].__name__
            record.exc_text, record.exc_info = text, None
        return True


def _mask_numbers_in_logs() -> None:
    masking = NumberMaskingFilter()
    logger.addFilter(masking)
    # httpx logs every request's full URL at INFO; a GET upstream (Kannel) carries the number and password in it.
    logging.getLogger("httpx").addFilter(masking)
    # botocore's DEBUG lines are whole request and response bodies (every DynamoDB item, numbers and all): they are
    # never wanted in the gateway's logs, whatever the root level. An operator can still set the level explicitly.
    botocore = logging.getLogger("botocore")
    if botocore.level == logging.NOTSET:
        botocore.setLevel(logging.INFO)


_mask_numbers_in_logs()
