"""The shortcode dialect (seed 4): /api/services/sendsms, getdlr and getbalance, answered in the family's codes."""

from __future__ import annotations

import codecs
import contextlib
import hmac
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sms_gateway.bootstrap import gateway, send_dependencies
from sms_gateway.dialects.common import (
    Standing,
    accept,
    describe_validation_error,
    echoed,
    error_headers,
    idempotent,
    int_as_text,
    joined_fields,
    json_response,
    parse_json_body,
    query_fields,
    request_bytes,
    request_text,
    send_time_schema,
    urlencoded_fields,
)
from sms_gateway.domain.dates import basic_form_wall_clock
from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import Account, CredentialKind, Message, Recipient, SendCommand
from sms_gateway.domain.status import TERMINAL, MessageStatus
from sms_gateway.domain.zones import account_zone, in_zone
from sms_gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound, OptedOut, Unauthorized
from sms_gateway.logic.auth import account_for_credential
from sms_gateway.logic.idempotency import request_key
from sms_gateway.logic.send import (
    Accepted,
    Rejection,
    could_not_be_queued,
    normalise_recipients,
    refuse_opted_out,
    require_sender,
    require_valid,
    why_not_sent,
)

router = APIGatewayHttpRouter()

MAX_MOBILES = 1000
SERVICES = "/api/services"
# The methods every service of the family takes; a service asked with another is told these (Allow).
SERVICE_METHODS = ["GET", "POST"]
# The methods a service the family does not have is documented with (each answers 1010).
UNSUPPORTED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
SENDSMS, GETDLR, GETBALANCE = "sendsms", "getdlr", "getbalance"
# Every answer of this family is HTTP 200 with the outcome in `response-code`: the seed's axios sample prints
# `response.data` only on a 2xx, so an error with a 4xx status would never reach the client's log.
HTTP_STATUS = 200
# A digit string longer than this cannot be one of our 63-bit ids.
MAX_ID_DIGITS = 19


class NoPartnerId(Unauthorized):
    code = "no_partner_id"


class NoApiKey(Unauthorized):
    code = "no_api_key"


class NoMessage(InvalidRequest):
    code = "no_message"


class NoMobile(InvalidRequest):
    code = "no_mobile"


class NoShortcode(InvalidRequest):
    code = "no_shortcode"


class NoMessageId(InvalidRequest):
    code = "no_message_id"


class InvalidTimeToSend(InvalidRequest):
    code = "invalid_time_to_send"


class TooManyMobiles(InvalidRequest):
    code = "too_many_mobiles"


class UnsupportedRequest(InvalidRequest):
    code = "unsupported_request"


class OptedOutBesideInvalid(OptedOut):
    """Every valid number opted out and the others are invalid: nothing is sent. A refusal (so an idempotency key is
    let go, as for the flat 4100), answered with each number's own entry (4100 or 1003, in order)."""

    def __init__(self, message: str, responses: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.responses = responses


INTERNAL_ERROR = (4090, "Internal Error. Try again after 5 minutes")
# The family's codes (200-4093, as the vendor documents them) and ours (4094 up) for what the family leaves out.
# Keys are domain error codes; docs/dialects/shortcode.md mirrors this table.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_sender": (1001, "Invalid sender id"),
    "invalid_recipient": (1003, "Invalid mobile number"),
    "insufficient_credits": (1004, "Low bulk credits"),
    "upstream_error": (1005, "Failed. System error"),
    "unauthorized": (1006, "Invalid credentials"),
    "invalid_request": (1009, "Unsupported data type"),
    "payload_too_large": (1009, "Unsupported data type"),
    "unsupported_media_type": (1009, "Unsupported data type"),
    "unsupported_request": (1010, "Unsupported request type"),
    "method_not_allowed": (1010, "Unsupported request type"),
    "too_many_mobiles": (1104, "Too many comma separated contacts"),
    "no_partner_id": (4091, "No Partner ID is Set"),
    "no_api_key": (4092, "No API KEY Provided"),
    "not_found": (4093, "Details Not Found"),
    "no_message": (4094, "No message provided"),
    "no_mobile": (4095, "No mobile provided"),
    "no_shortcode": (4096, "No shortcode provided"),
    "no_message_id": (4097, "No messageID provided"),
    "invalid_time_to_send": (4098, "Invalid timeToSend"),
    "conflict": (4099, "Idempotency-Key conflict"),
    "opted_out": (4100, "Mobile number opted out"),
    # A send undone for want of time (or of a queue): the family's own "try again" error.
    "unavailable": INTERNAL_ERROR,
    "internal_error": INTERNAL_ERROR,
}
# Credential failures say no more than the family's words: nothing about which part was wrong or who exists.
_NO_DETAILS = frozenset({"unauthorized", "no_partner_id", "no_api_key"})

# Our message states in the family's delivery vocabulary; 32 DeliveredToTerminal is the vendor's own number.
DELIVERY_STATUS: dict[MessageStatus, tuple[int, str]] = {
    MessageStatus.ACCEPTED: (11, "Scheduled"),
    MessageStatus.SCHEDULED: (11, "Scheduled"),
    MessageStatus.QUEUED: (11, "Scheduled"),
    MessageStatus.SUBMITTED: (21, "SentToNetwork"),
    MessageStatus.DELIVERED: (32, "DeliveredToTerminal"),
    MessageStatus.FAILED: (33, "DeliveryImpossible"),
    MessageStatus.REJECTED: (34, "Rejected"),
    MessageStatus.EXPIRED: (35, "AbsentSubscriber"),
    MessageStatus.CANCELLED: (36, "Cancelled"),
}


def render_error(error: GatewayError) -> Response[Any]:
    if isinstance(error, OptedOutBesideInvalid):
        return json_response(HTTP_STATUS, {"responses": error.responses}, headers=error_headers(error))
    code, description = ERROR_CODES.get(error.code, INTERNAL_ERROR)
    body: dict[str, Any] = {"response-code": code, "response-description": description}
    if error.code not in _NO_DETAILS and error.message and error.message != description:
        body["response-details"] = error.message
    return json_response(HTTP_STATUS, body, headers=error_headers(error))


# ------------------------------------------------------------------ request parameters


def _document_numbers_as_text(schema: dict[str, Any]) -> None:
    """In the OpenAPI document too: the numbers the validators below read as text."""
    integer, null = {"type": "integer"}, {"type": "null"}
    properties = schema["properties"]
    for name in ("apikey", "partnerID", "shortcode", "messageID"):
        properties[name]["anyOf"] = [{"type": "string"}, integer, null]
    properties["message"]["anyOf"] = [{"type": "string"}, {"type": "number"}, null]
    one = {"anyOf": [{"type": "string"}, integer]}
    properties["mobile"]["anyOf"] = [{"type": "string"}, integer, {"type": "array", "items": one}, null]


class ShortcodeParams(BaseModel):
    """The family's parameters, named as in the seed, from a query string, a JSON body or a form."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, json_schema_extra=_document_numbers_as_text
    )

    apikey: str | None = None
    partner_id: str | None = Field(default=None, alias="partnerID")
    message: str | None = None
    shortcode: str | None = None
    mobile: str | None = None
    time_to_send: Annotated[
        str | int | float | None,
        send_time_schema(
            "a Unix timestamp in seconds (a number or digits), a date such as 2019-09-01 18:00 read in the account's "
            "time zone, or yyyyMMdd, yyyyMMddHHmm, yyyyMMddHHmmss digits (a date, in a string or a JSON number)"
        ),
    ] = Field(default=None, alias="timeToSend")
    message_id: str | None = Field(default=None, alias="messageID")

    @field_validator("apikey", "partner_id", "shortcode", "message_id", mode="before")
    @classmethod
    def scalar_text(cls, value: Any) -> Any:
        value = int_as_text(value)
        if isinstance(value, str):
            return value.strip() or None
        if value is None:
            return None
        raise ValueError("must be a string")

    @field_validator("message", mode="before")
    @classmethod
    def message_text(cls, value: Any) -> Any:
        # A number is sent as its digits, a whole float's as its integer's (JSON.NET's 482913.0 is the code 482913, as
        # session-key and 9bits read it: until session 35 it was sent as "482913.0"); NaN, Infinity and an
        # overflowing 1e400 have none (they were sent as "nan" and "inf"): refused, as any other value that is no text.
        value = int_as_text(value)
        if isinstance(value, float) and math.isfinite(value):
            return str(value)  # a fraction, as written: 12.5
        if value is None or isinstance(value, str):
            return value
        raise ValueError("must be a string")

    @field_validator("mobile", mode="before")
    @classmethod
    def comma_separated(cls, value: Any) -> Any:
        """The numbers as one comma-separated text: a JSON number is its digits, a whole float (2348020000000.0, as
        json.dumps writes a pandas float64 column and json_encode a PhpSpreadsheet numeric cell) too; a list is its
        entries joined. A fraction or a boolean is no number to send to: refused."""
        value = int_as_text(value)
        if isinstance(value, list):
            items = [int_as_text(item) for item in value]
            if all(isinstance(item, str) for item in items):
                return ",".join(items)
        if value is None or isinstance(value, str):
            return value
        raise ValueError("must be a comma-separated string of numbers")

    @field_validator("time_to_send", mode="before")
    @classmethod
    def time_value(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a date string or a Unix timestamp")
        if isinstance(value, str):
            # PHP clients send an unset optional field as "".
            return value.strip() or None
        return value


def _media_type(headers: dict[str, str]) -> str:
    return (headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def _json_object(body: str) -> dict[str, Any]:
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return payload


def _multipart_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """PHP's curl sends `CURLOPT_POSTFIELDS => $array` as multipart/form-data. Read from its bytes: each field is
    text in its own charset (_field_text), so the body as a whole need not be UTF-8."""
    from email.parser import BytesParser
    from email.policy import HTTP

    envelope = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    message = BytesParser(policy=HTTP).parsebytes(envelope)
    if not message.is_multipart():
        raise InvalidRequest("the multipart/form-data body could not be read")
    fields: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields.append((name, _field_text(name, part)))
    return joined_fields(fields)


# Python's codecs that are text codecs but no charset a form is written in: escape syntaxes, a domain name's
# encodings, and the one that refuses everything. Any other charset Python knows is read; one it does not know, or a
# bytes-to-bytes codec (base64, zlib), is refused by the decode. docs/dialects/shortcode.md says the same.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined", "charmap"})


def _field_text(name: str, part: Any) -> str:
    """A form field's value, decoded in the part's own charset: UTF-8 when it names none, as curl and browsers send
    a plain field (the email package's default, US-ASCII with replacement, garbled every other character)."""
    if part.is_multipart() or part.get_content_maintype() in ("multipart", "message"):
        raise InvalidRequest(f"form field {name!r} is not text")
    raw = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        if codecs.lookup(charset).name in _NOT_CHARSETS:
            raise LookupError(f"{charset!r} is no charset")
        text = bytes(raw).decode(charset)
        # A lone surrogate (UTF-7's "+2AA-") is no character: DynamoDB and every webhook would refuse it.
        text.encode()
    except (LookupError, UnicodeError) as error:
        raise InvalidRequest(f"form field {name!r} is not text in its charset: {error}") from error
    return text


def _body_fields(event: Any) -> dict[str, Any]:
    headers = {key.lower(): value for key, value in (event.headers or {}).items()}
    media = _media_type(headers)
    if media == "multipart/form-data":
        data = request_bytes(event)
        return _multipart_fields(headers["content-type"], data) if data.strip() else {}
    body = request_text(event)
    if not body.strip():
        return {}
    looks_like_json = body.lstrip().startswith("{")
    if media == "application/json" or media.endswith("+json"):
        return _json_object(body)
    if media in ("", "application/x-www-form-urlencoded", "text/plain"):
        # curl labels a json_encode()d string as a form unless the client sets the header; read it as what it is.
        return _json_object(body) if looks_like_json else urlencoded_fields(body, "the form")
    raise UnsupportedRequest(
        f"content type {media!r} is not supported: send application/json, a form or query parameters"
    )


def _params() -> ShortcodeParams:
    """GET reads the query string; POST reads its body, over any query parameters it also carries. The query string
    as sent, read as a form is (common.query_fields)."""
    event = router.current_event
    fields: dict[str, Any] = dict(query_fields(event))
    if event.http_method.upper() == "POST":
        fields.update(_body_fields(event))
    try:
        return ShortcodeParams.model_validate(fields)
    except ValidationError as error:
        raise InvalidRequest(describe_validation_error(error)) from error


def _authenticate(params: ShortcodeParams) -> Account:
    if not params.partner_id:
        raise NoPartnerId("partnerID is missing")
    if not params.apikey:
        raise NoApiKey("apikey is missing")
    account = account_for_credential(gateway().store, CredentialKind.APIKEY, params.apikey)
    # Same answer for an unknown key and a wrong partner: a caller learns nothing about which accounts exist.
    if not hmac.compare_digest(params.partner_id.encode(), account.partner_id.encode()):
        raise Unauthorized("invalid credentials")
    return account


# ------------------------------------------------------------------ sendsms


class ShortcodeSend(BaseModel):
    """A validated sendsms request: the numbers exactly as given, in order."""

    model_config = ConfigDict(frozen=True)

    shortcode: str
    message: str
    mobiles: tuple[str, ...]
    send_at: datetime | None = None


# Date strings the vendor's PHP clients write (strtotime reads them) besides ISO 8601: slashes, unpadded fields
# (strptime takes `2026-12-7 7:05`), a 12-hour clock.
_TIME_TO_SEND_FORMATS = tuple(
    f"{day}{clock}"
    for day in ("%Y-%m-%d", "%Y/%m/%d")
    for clock in ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p", " %I:%M%p", " %I:%M:%S%p")
)


def parse_time_to_send(value: str | int | float | None, zone: ZoneInfo) -> datetime | None:
    """A Unix timestamp (number or digits), or a date such as `2019-09-01 18:00` read in the account's zone. Digits
    in ISO 8601's basic form (yyyyMMdd[HHmm[ss]], as strtotime reads them too), in a string or a JSON number (a whole
    float too), are such a date, not Unix time."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        if (wall_clock := basic_form_wall_clock(text if isinstance(value, str) else value)) is not None:
            return in_zone(wall_clock, zone)
        if isinstance(value, int | float) or text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), tz=UTC)
        moment = _date_string(text)
    except (ValueError, OverflowError, OSError) as error:
        raise InvalidTimeToSend(
            f"timeToSend {text!r} is not a time: give a Unix timestamp or a date such as '2019-09-01 18:00'"
        ) from error
    return in_zone(moment, zone)


def _date_string(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        for form in _TIME_TO_SEND_FORMATS:
            with contextlib.suppress(ValueError):
                return datetime.strptime(text, form)
        raise


def _send_request(params: ShortcodeParams, account: Account, *, many: bool) -> ShortcodeSend:
    if not params.shortcode:
        raise NoShortcode("shortcode is missing")
    if params.message is None or not params.message.strip():
        raise NoMessage("message is missing or empty")
    mobiles = tuple(part.strip() for part in (params.mobile or "").split(",") if part.strip())
    if not mobiles:
        raise NoMobile("mobile is missing or empty")
    if not many and len(mobiles) > 1:
        raise TooManyMobiles(
            f"GET sends to one mobile number, got {len(mobiles)}: POST up to {MAX_MOBILES} comma separated"
        )
    if len(mobiles) > MAX_MOBILES:
        raise TooManyMobiles(f"at most {MAX_MOBILES} mobile numbers per request, got {len(mobiles)}")
    return ShortcodeSend(
        shortcode=params.shortcode,
        message=params.message,
        mobiles=mobiles,
        send_at=parse_time_to_send(params.time_to_send, account_zone(account.timezone)),
    )


@router.route(f"{SERVICES}/{SENDSMS}", method=SERVICE_METHODS)
@router.route(f"{SERVICES}/{SENDSMS}/", method=SERVICE_METHODS)
def send_sms() -> Response[Any]:
    event = router.current_event
    params = _params()
    account = _authenticate(params)
    request = _send_request(params, account, many=event.http_method.upper() == "POST")
    key = request_key(event.headers.get("idempotency-key"), None)
    return idempotent(
        event,
        account.account_id,
        key,
        lambda: _send(account, request),
        query=query_fields(event),
        standing=Standing(
            account,
            recipients=lambda: [r for _, r in _readings(account, request)[0] if r is not None],
            answer=lambda accepted: _sent(_readings(account, request)[0], accepted),
        ),
    )


def _readings(account: Account, request: ShortcodeSend) -> tuple[list[tuple[str, Recipient | None]], list[Rejection]]:
    """Each number on its own, so that the answer lists them in the client's order: as given, and its recipient
    (None: invalid); and the invalid ones' refusals. An invalid number typed twice is read once, as a valid one given
    twice is sent and listed once (send_entries)."""
    readings: list[tuple[str, Recipient | None]] = []
    rejected: list[Rejection] = []
    invalid: set[str] = set()
    for raw in request.mobiles:
        if raw in invalid:
            continue
        valid, refused = normalise_recipients([raw], account.default_country)
        if not valid:
            invalid.add(raw)
        readings.append((raw, valid[0] if valid else None))
        rejected.extend(refused)
    return readings, rejected


def _send(account: Account, request: ShortcodeSend) -> Response[Any]:
    require_sender(account, request.shortcode)
    readings, rejected = _readings(account, request)
    recipients = list({r.msisdn: r for _, r in readings if r is not None}.values())
    if not recipients:
        require_valid(rejected)
    command = SendCommand(
        account_id=account.account_id,
        sender=request.shortcode,
        text=request.message,
        recipients=tuple(recipients),
        send_at=request.send_at,
        # The seed has no delivery-report flag: reports go to the account's DLR URL when it has one.
        delivery_report=account.default_delivery_report,
        dialect="shortcode",
    )
    try:
        accepted = accept(account, command)
    except OptedOut as error:
        if not rejected:
            raise
        # Every valid number opted out beside invalid ones: nothing is sent, and each number still gets its own
        # entry (4100 or 1003, in order), where the flat 4100 would call the invalid ones opted out. Still a
        # refusal, so a key is not kept for it.
        _, refused = refuse_opted_out(account, command.sender, command.recipients, send_dependencies().opt_outs)
        raise OptedOutBesideInvalid(error.message, send_entries(readings, [], refused)) from error
    return _sent(readings, accepted)


def _sent(readings: Sequence[tuple[str, Recipient | None]], accepted: Accepted) -> Response[Any]:
    return json_response(HTTP_STATUS, {"responses": send_entries(readings, accepted.messages, accepted.refused)})


def send_entries(
    readings: Sequence[tuple[str, Recipient | None]],
    messages: Sequence[Message],
    refused: Sequence[Rejection] = (),
) -> list[dict[str, Any]]:
    """One entry per number given; a number given twice is sent once and listed once. A number that opted out
    (STOP) gets the opt-out code, with the reason in `response-details`."""
    by_msisdn = {message.msisdn: message for message in messages}
    opted_out = {f"+{rejection.raw}": rejection.reason for rejection in refused}
    invalid_code, invalid_description = ERROR_CODES["invalid_recipient"]
    opted_out_code, opted_out_description = ERROR_CODES["opted_out"]
    entries: list[dict[str, Any]] = []
    listed: set[str] = set()
    for raw, recipient in readings:
        if recipient is None:
            entries.append(
                {"response-code": invalid_code, "response-description": invalid_description, "mobile": echoed(raw)}
            )
            continue
        if recipient.msisdn in listed:
            continue
        listed.add(recipient.msisdn)
        if recipient.msisdn in opted_out:
            entries.append(
                {
                    "response-code": opted_out_code,
                    "response-description": opted_out_description,
                    "mobile": int(recipient.msisdn.lstrip("+")),
                    "response-details": opted_out[recipient.msisdn],
                }
            )
            continue
        message = by_msisdn.get(recipient.msisdn)
        reason = why_not_sent(message)
        if reason is not None:
            entries.append(_not_sent_entry(recipient, message, reason))
            continue
        assert message is not None  # why_not_sent names every number without a message
        entries.append(
            {
                "response-code": 200,
                "response-description": "Success",
                "mobile": int(message.msisdn.lstrip("+")),
                "messageid": message_id_text(message),
                "networkid": message.network_id,
            }
        )
    return entries


def message_id_text(message: Message) -> str:
    """A message id as the family's answers carry it: a string of digits, as the seed's sample shows it. Our ids are
    63-bit (above 2^53), which a JSON number would not keep exactly in JavaScript (the seed's Node sample): it would
    read a neighbouring message's id, and getdlr would answer that message's report."""
    return str(message.message_id)


def _not_sent_entry(recipient: Recipient, message: Message | None, reason: str) -> dict[str, Any]:
    """A number the send stands without: 4090 (try again) when its message could not be queued, with its credits
    given back; 1005 otherwise (cancelled, refused). With the message id when there is a message to look up."""
    code, description = INTERNAL_ERROR if could_not_be_queued(message) else ERROR_CODES["upstream_error"]
    entry: dict[str, Any] = {
        "response-code": code,
        "response-description": description,
        "mobile": int(recipient.msisdn.lstrip("+")),
        "response-details": reason,
    }
    if message is not None:
        entry["messageid"] = message_id_text(message)
        entry["networkid"] = message.network_id
    return entry


# ------------------------------------------------------------------ getdlr, getbalance


def _local_time(stamp: str | None, zone: ZoneInfo) -> str | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _turnaround(message: Message) -> str | None:
    """From release to the final status, as the family's `delivery-tat` (HH:MM:SS)."""
    if message.status not in TERMINAL:
        return None
    started = message.status_at.get(str(MessageStatus.QUEUED)) or message.created_at
    ended = message.status_at.get(str(message.status))
    if not started or not ended:
        return None
    seconds = max(0, int((datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def delivery_report(message: Message, zone: ZoneInfo) -> dict[str, Any]:
    code, description = DELIVERY_STATUS[message.status]
    return {
        "response-code": 200,
        "message-id": message_id_text(message),
        "response-description": "Success",
        "delivery-status": code,
        "delivery-description": description,
        "delivery-tat": _turnaround(message),
        "delivery-networkid": message.network_id,
        "delivery-time": _local_time(message.status_at.get(str(message.status)) or message.created_at, zone),
    }


@router.route(f"{SERVICES}/{GETDLR}", method=SERVICE_METHODS)
@router.route(f"{SERVICES}/{GETDLR}/", method=SERVICE_METHODS)
def get_dlr() -> Response[Any]:
    params = _params()
    account = _authenticate(params)
    if not params.message_id:
        raise NoMessageId("messageID is missing")
    # An id that cannot be one of ours is answered like another account's id: not found.
    if not ascii_digits(params.message_id) or len(params.message_id) > MAX_ID_DIGITS:
        raise NotFound(f"no message {params.message_id!r}")
    message = gateway().store.find_message(account.account_id, int(params.message_id))
    if message is None:
        raise NotFound(f"no message {params.message_id}")
    return json_response(HTTP_STATUS, delivery_report(message, account_zone(account.timezone)))


@router.route(f"{SERVICES}/{GETBALANCE}", method=SERVICE_METHODS)
@router.route(f"{SERVICES}/{GETBALANCE}/", method=SERVICE_METHODS)
def get_balance() -> Response[Any]:
    account = _authenticate(_params())
    # Read consistently: a balance asked right after a send includes its charge.
    credits = gateway().store.balance(account.account_id)
    return json_response(
        HTTP_STATUS,
        {"response-code": 200, "credit": f"{credits:.2f}", "partner-id": account.partner_id},
    )


@router.route(f"{SERVICES}/<action>", method=UNSUPPORTED_METHODS)
# OPTIONS and HEAD too (left out of the document, which states no such operation): else the resolver's not_found
# answered them with this route's methods as Allow, "use DELETE or GET or PATCH or POST or PUT", each of which
# answers that the service does not exist (until session 34).
@router.route(f"{SERVICES}/<action>", method=["OPTIONS", "HEAD"], include_in_schema=False)
# And with a trailing slash, as the services take one: else it was 4093 "Details Not Found", the family's answer for a
# message that does not exist (until session 35). Left out of the document, which states the service without it.
@router.route(f"{SERVICES}/<action>/", method=[*UNSUPPORTED_METHODS, "OPTIONS", "HEAD"], include_in_schema=False)
def unsupported(action: str) -> Response[Any]:
    """An unknown service, whatever the method; or a service asked with a method it does not take, which reaches
    this route too (Powertools tries the service's own route, finds the method does not match, and goes on): told
    the methods it takes."""
    method = router.current_event.http_method
    if action in (SENDSMS, GETDLR, GETBALANCE):
        raise MethodNotAllowed.asked(f"{SERVICES}/{action}", method, SERVICE_METHODS)
    raise UnsupportedRequest(f"{method} {SERVICES}/{action} is not a service of this API")
