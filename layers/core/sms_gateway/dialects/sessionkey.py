"""The session-key dialect (seed 5): GET /login, POST /sms, GET and DELETE /sms/{order_id}, GET /status."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sms_gateway.bootstrap import gateway, price_book
from sms_gateway.dialects.common import (
    NOT_BLANK,
    Standing,
    accept,
    blank_is_none,
    cancel,
    client_address,
    error_headers,
    idempotent,
    int_as_text,
    invalid_entries,
    json_response,
    parse_json_body,
    parse_model,
    query_fields,
    request_text,
    send_time_schema,
)
from sms_gateway.domain.dates import InvalidClientDatetime, parse_client_datetime
from sms_gateway.domain.models import Account, Message, Recipient, SendCommand, utc_now
from sms_gateway.domain.pricing import ROUTE_TIERS
from sms_gateway.domain.status import MessageStatus
from sms_gateway.domain.zones import account_zone, chosen_zone, not_a_chosen_zone
from sms_gateway.errors import Conflict, GatewayError, InvalidRequest, InvalidSender, NotFound, Unauthorized
from sms_gateway.logic import batches, sessions
from sms_gateway.logic.idempotency import request_key
from sms_gateway.logic.send import (
    Accepted,
    InvalidNumbers,
    Rejection,
    balance_after,
    going_out,
    normalise_recipients,
    not_sent_to,
    require_valid,
)

router = APIGatewayHttpRouter()

DIALECT = "session-key"
MAX_RECIPIENTS = 1000
TEXT_PLAIN = "text/plain; charset=utf-8"
# The family's own clock format for dates it returns (delivery_date), in the account's time zone.
FAMILY_TIME = "%Y%m%d%H%M%S"

# HTTP status of each domain error code; the body is always {"result": "KO", "error": <what is wrong>}.
# The family documents 400 ("other errors, details are in the body"), 401 (keys invalid or not given) and
# 404 (order not found, or no longer removable). Keys are domain error codes; docs/dialects/session-key.md
# mirrors this table.
HTTP_STATUS: dict[str, int] = {
    "unauthorized": 401,
    "invalid_request": 400,
    "invalid_sender": 400,
    "invalid_recipient": 400,
    "insufficient_credits": 400,
    "not_found": 404,
    # A path of the family asked with a method it does not take (GET /sms), with Allow.
    "method_not_allowed": 405,
    # Too many failed logins for one username: HTTP's own word for it, with Retry-After.
    "too_many_attempts": 429,
    # A body over the API's 256 KB.
    "payload_too_large": 413,
    # Only an Idempotency-Key (our addition to the family) can conflict on a send.
    "conflict": 409,
    # Every recipient opted out (STOP): "other errors, details are in the body".
    "opted_out": 400,
    # The send could not be finished in time or queued, and was undone: nothing changed, try again.
    "unavailable": 503,
    # Something failed unexpectedly: the request may have been done in part.
    "internal_error": 500,
}
DEFAULT_STATUS = 400

# The seed's tiers, and the names Skebby's own edition of the same API gives them.
MESSAGE_TYPES = {"N": "N", "L": "L", "LL": "LL", "GP": "N", "TI": "L", "SI": "LL"}
# message_type as the model reads it, in the OpenAPI document: a name in any case, blanks around it allowed, or blank
# (ECMA 262 patterns have no flags, so each letter is spelt both ways).
MESSAGE_TYPE_IN_ANY_CASE = (
    r"^\s*(" + "|".join("".join(f"[{letter}{letter.lower()}]" for letter in name) for name in MESSAGE_TYPES) + r")?\s*$"
)

# Our message states in the family's recipient vocabulary (WAIT4DLVR: sent, waiting for the delivery report).
RECIPIENT_STATUS: dict[MessageStatus, str] = {
    MessageStatus.ACCEPTED: "WAITING",
    MessageStatus.SCHEDULED: "SCHEDULED",
    MessageStatus.QUEUED: "WAITING",
    MessageStatus.SUBMITTED: "WAIT4DLVR",
    MessageStatus.DELIVERED: "DLVRD",
    MessageStatus.FAILED: "ERROR",
    MessageStatus.EXPIRED: "TIMEOUT",
    MessageStatus.REJECTED: "KO",
    # The family deletes a removed order; we keep it readable, in a state of our own.
    MessageStatus.CANCELLED: "CANCELLED",
}


# /login's 401 challenges for HTTP Basic, which it takes: a client that sends Basic credentials only when asked
# (.NET's HttpClientHandler.Credentials, Java's Authenticator, curl --anyauth) sends them on this. The other 401s
# name no challenge: the session headers are no HTTP authentication scheme.
LOGIN_CHALLENGE = 'Basic realm="sms-gateway", charset="UTF-8"'


class LoginRefused(Unauthorized):
    """/login's 401: credentials missing or wrong."""


def render_error(error: GatewayError) -> Response[Any]:
    body: dict[str, Any] = {"result": "KO", "error": error.message}
    if isinstance(error, InvalidNumbers):
        # `error` names the first ten; the list names each, as an order with allowInvalidRecipients lists them.
        body["invalid_recipients"] = invalid_entries(error.rejected, "recipient")
    challenge = LOGIN_CHALLENGE if isinstance(error, LoginRefused) else None
    return json_response(
        HTTP_STATUS.get(error.code, DEFAULT_STATUS), body, headers=error_headers(error, challenge=challenge)
    )


# ------------------------------------------------------------------ requests


def _document_send_rules(schema: dict[str, Any]) -> None:
    """The rules the validators below apply, in the OpenAPI document too: a text that is not blank, one of the
    family's message types in any case (null or "" is N), and no order_id of the client's own; the text, the sender
    and each recipient may be whole JSON numbers (read as their digits), and one recipient may be given alone."""
    properties = schema["properties"]
    properties["message"] = {
        "anyOf": [{"type": "string", "minLength": 1, "pattern": NOT_BLANK}, {"type": "integer"}],
        "title": "Message",
    }
    properties["sender"]["anyOf"].insert(1, {"type": "integer"})
    # One number or a list of them, each a string or a JSON number (a whole float is an integer to JSON Schema).
    number = {"anyOf": [{"type": "string", "minLength": 1, "pattern": NOT_BLANK}, {"type": "integer"}]}
    many = {**properties["recipient"], "items": number}
    properties["recipient"] = {"anyOf": [many, number], "title": "Recipient"}
    properties["message_type"] = {
        "anyOf": [{"enum": [*MESSAGE_TYPES, "", None]}, {"type": "string", "pattern": MESSAGE_TYPE_IN_ANY_CASE}],
        "default": "N",
        "title": "Message Type",
    }
    properties["order_id"] = {"type": "null", "description": "custom order ids are not supported: leave it out"}


class SendRequest(BaseModel):
    """POST /sms as the seed's clients write it (Gson leaves null fields out, JSON.NET writes them as null)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, json_schema_extra=_document_send_rules)

    message: str = Field(min_length=1)
    message_type: str = "N"
    recipient: list[str] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    sender: str | None = None
    scheduled_delivery_time: Annotated[
        str | None,
        send_time_schema(
            "a date and time (2017-12-23 10:10:10, ISO 8601) or digits yyyyMMddHHmmss, yyyyMMddHHmm, yyyyMMdd, "
            "ddMMyyHHmm or ddMMyy, in a string or a JSON number; read in scheduled_delivery_timezone, else the "
            "account's time zone, when it has no offset"
        ),
    ] = None
    scheduled_delivery_timezone: str | None = None
    return_credits: bool = Field(default=False, alias="returnCredits")
    return_remaining: bool = Field(default=False, alias="returnRemaining")
    allow_invalid_recipients: bool = Field(default=False, alias="allowInvalidRecipients")
    order_id: str | None = None

    @field_validator("message", "sender", mode="before")
    @classmethod
    def numbers_as_text(cls, value: Any) -> Any:
        """A one-time code or shortcode written as a JSON number (PHP's json_encode of an int, Perl's JSON of a scalar
        last used as a number, JSON.NET's double) is its digits, as 9bits and shortcode read the same values."""
        return int_as_text(value)

    @field_validator("message")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is blank: nothing to send")
        return value

    @field_validator("message_type", mode="before")
    @classmethod
    def known_type(cls, value: Any) -> Any:
        value = blank_is_none(value)
        if value is None:
            return "N"
        # In any case: an enum converter with a camelCase policy (JSON.NET's, System.Text.Json's) writes N and LL as
        # "n" and "ll" (until session 35 refused 400, "must be N, L or LL").
        tier = MESSAGE_TYPES.get(value.upper()) if isinstance(value, str) else None
        if tier is None:
            raise ValueError(f"must be N, L or LL, got {value!r}")
        return tier

    @field_validator("recipient", mode="before")
    @classmethod
    def numbers(cls, value: Any) -> Any:
        """Each number as text: one given alone is a list of one, and a JSON number is its digits, a whole float
        (2348020000000.0, as json.dumps writes a pandas float64 column and json_encode a PhpSpreadsheet numeric cell)
        too, as 9bits reads them. A fraction or a boolean is left to be refused."""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list):
            return [int_as_text(item) for item in value]
        return value

    @field_validator("sender", "scheduled_delivery_timezone", "order_id", mode="before")
    @classmethod
    def optional_text(cls, value: Any) -> Any:
        return blank_is_none(value)

    @field_validator("scheduled_delivery_time", mode="before")
    @classmethod
    def time_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # 20171223101010 written as a JSON number
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # ... and as a JavaScript client's 20171223101010.0
        return blank_is_none(value)

    @field_validator("return_credits", "return_remaining", "allow_invalid_recipients", mode="before")
    @classmethod
    def null_is_false(cls, value: Any) -> Any:
        return False if value is None else value

    @field_validator("order_id")
    @classmethod
    def no_custom_order_id(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("custom order ids are not supported: leave order_id out and use the one we answer")
        return value


def _header(name: str) -> str | None:
    """Header names are case-insensitive (API Gateway lowercases them); `user-key` is read as `user_key` too."""
    wanted = {name.lower(), name.lower().replace("_", "-")}
    for key, value in (router.current_event.headers or {}).items():
        if key.lower() in wanted:
            return value.strip() or None
    return None


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    """The family also accepts /login with HTTP Basic authentication instead of the query string."""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, separator, password = decoded.partition(":")
    return (username, password) if separator else (None, None)


def _caller() -> Account:
    store = gateway().store
    return sessions.account_for_session(store, store, _header("user_key"), _header("session_key"), now=utc_now())


def scheduled_time(request: SendRequest, account: Account) -> datetime | None:
    """`scheduled_delivery_time` as an aware datetime; a value without an offset is read in
    `scheduled_delivery_timezone` when given, else in the account's time zone. A zone that is not one is refused
    even without a time (the time may have been lost on the client's side: sent now, it could not be cancelled)."""
    zone = account_zone(account.timezone)
    if request.scheduled_delivery_timezone is not None:
        # The rule an account's zone follows: not the host's `localtime` nor a copy under posix/ or right/.
        given = chosen_zone(request.scheduled_delivery_timezone)
        if given is None:
            raise InvalidRequest(
                f"scheduled_delivery_timezone: {not_a_chosen_zone(request.scheduled_delivery_timezone)}"
            )
        zone = given
    if request.scheduled_delivery_time is None:
        return None
    try:
        return parse_client_datetime(request.scheduled_delivery_time, zone)
    except InvalidClientDatetime as error:
        raise InvalidRequest(f"scheduled_delivery_time: {error}") from error


def _reference_id(order_id: str) -> int:
    try:
        return batches.parse_reference_id(order_id)
    except NotFound as error:
        raise NotFound(f"no order with order_id {order_id!r}") from error


# ------------------------------------------------------------------ routes


@router.get("/login")
def login() -> Response[Any]:
    # The query as sent (common.query_fields): a password that is not UTF-8 is refused, not counted as a failed login.
    query = query_fields(router.current_event)
    username, password = query.get("username"), query.get("password")
    if username is None and password is None:
        username, password = _basic_credentials(_header("authorization"))
    try:
        keys = sessions.log_in(
            gateway().store, username, password, now=utc_now(), address=client_address(router.current_event)
        )
    except Unauthorized as error:
        raise LoginRefused(error.message, logged=error.logged) from error
    # No trailing newline: the seed's clients split the body on ';' and send the second part as a header.
    return Response(status_code=200, content_type=TEXT_PLAIN, body=keys.render(), headers={"Cache-Control": "no-store"})


@router.post("/sms")
def send_sms() -> Response[Any]:
    account = _caller()
    event = router.current_event
    request = parse_model(SendRequest, parse_json_body(request_text(event)))
    key = request_key(_header("idempotency-key"), None)
    return idempotent(
        event,
        account.account_id,
        key,
        lambda: _send(account, request),
        standing=Standing(
            account,
            recipients=lambda: normalise_recipients(request.recipient, account.default_country)[0],
            answer=lambda accepted: _sent(
                request, *normalise_recipients(request.recipient, account.default_country), accepted
            ),
        ),
    )


def _send(account: Account, request: SendRequest) -> Response[Any]:
    recipients, rejected = normalise_recipients(request.recipient, account.default_country)
    # allowInvalidRecipients sends to the valid ones and lists the others in the answer; never none at all.
    if rejected and (not request.allow_invalid_recipients or not recipients):
        require_valid(rejected)
    sender = request.sender or account.default_sender
    if sender is None:
        raise InvalidSender("no sender given and the account has no registered sender to use instead")
    command = SendCommand(
        account_id=account.account_id,
        sender=sender,
        text=request.message,
        recipients=tuple(recipients),
        send_at=scheduled_time(request, account),
        route_tier=request.message_type,
        # The seed has no delivery-report flag: reports go to the account's DLR URL when it has one.
        delivery_report=account.default_delivery_report,
        dialect=DIALECT,
    )
    return _sent(request, recipients, rejected, accept(account, command))


def _sent(
    request: SendRequest, recipients: Sequence[Recipient], rejected: Sequence[Rejection], accepted: Accepted
) -> Response[Any]:
    """The answer to a send that stands: `recipients` (and the invalid `rejected`), those it was asked to send to."""
    batch = accepted.batch
    # Only what goes out: a send that stands after its queueing failed part-way was refunded the rest.
    sent = going_out(accepted)
    body: dict[str, Any] = {
        "result": "OK",
        "order_id": str(batch.reference_id),
        # The family's returnCredits counts credits used instead of messages (one per recipient).
        "total_sent": sum(message.price for message in sent) if request.return_credits else len(sent),
    }
    # The seed's clients ask for remaining_credits with returnCredits; the family names it returnRemaining.
    if request.return_credits or request.return_remaining:
        remaining = balance_after(accepted, gateway().store)
        # Left out when it cannot be read: the order stands, and a 500 for want of it would have it sent again.
        if remaining is not None:
            body["remaining_credits"] = remaining
    body["internal_order_id"] = str(batch.reference_id)
    # Opted-out numbers (STOP) are listed here too, whatever allowInvalidRecipients says: they are not invalid,
    # so the others are sent to, and only a send in which every recipient opted out is refused. So are the numbers
    # a send that stands does not send to (not queued in time): the client is to send to them again.
    left_out = [*rejected, *accepted.refused, *not_sent_to(accepted, recipients)]
    if left_out:
        body["invalid_recipients"] = invalid_entries(left_out, "recipient")
    return json_response(201, body)


def _messages(account_id: str, reference_id: int) -> list[Message]:
    store = gateway().store
    batches.get_batch(store, account_id, reference_id)
    return list(batches.all_messages(store, account_id, reference_id))


def _family_time(stamp: str | None, zone: ZoneInfo) -> str | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).astimezone(zone).strftime(FAMILY_TIME)
    except (ValueError, OverflowError):
        # An upstream's time that is no date, or one that cannot be moved into the zone (year 1 or 9999): the
        # caller falls back to when the message got its state.
        return None


def recipient_state(message: Message, zone: ZoneInfo) -> dict[str, Any]:
    status = MessageStatus(message.status)
    # For a delivered message, the handset's time as the upstream reported it; otherwise when it got its state.
    reported = message.reported_at if status == MessageStatus.DELIVERED else None
    return {
        "status": RECIPIENT_STATUS[status],
        "destination": message.msisdn,
        "delivery_date": _family_time(reported, zone) or _family_time(message.status_at.get(str(status)), zone),
    }


@router.get("/sms/<order_id>")
def order_state(order_id: str) -> Response[Any]:
    account = _caller()
    reference_id = _reference_id(order_id)
    try:
        messages = _messages(account.account_id, reference_id)
    except NotFound as error:
        raise NotFound(f"no order with order_id {order_id!r}") from error
    zone = account_zone(account.timezone)
    return json_response(
        200,
        {
            "recipient_number": len(messages),
            "result": "OK",
            "recipients": [recipient_state(message, zone) for message in messages],
        },
    )


@router.delete("/sms/<order_id>")
def remove_order(order_id: str) -> Response[Any]:
    account = _caller()
    reference_id = _reference_id(order_id)
    # Under a key (our addition, as on a send) a retry gets the first answer: OK for the order that removal removed.
    key = request_key(_header("idempotency-key"), None)
    return idempotent(
        router.current_event,
        account.account_id,
        key,
        lambda: _remove_order(account, order_id, reference_id),
        retry_failed_at_once=True,
    )


def _remove_order(account: Account, order_id: str, reference_id: int) -> Response[Any]:
    try:
        cancel(account.account_id, reference_id)
    except NotFound as error:
        raise NotFound(f"no order with order_id {order_id!r}") from error
    except Conflict as error:
        # The family answers 404 for an order that exists but can no longer be removed (not SCHEDULED).
        raise NotFound(f"order {order_id} cannot be removed: {error.message}") from error
    return json_response(200, {"result": "OK"})


def _flag(name: str, raw: str | None) -> bool:
    if raw is None or raw.strip().lower() == "false":
        return False
    if raw.strip().lower() == "true":
        return True
    raise InvalidRequest(f"{name} must be 'true' or 'false', got {raw!r}")


@router.get("/status")
def user_status() -> Response[Any]:
    account = _caller()
    query = query_fields(router.current_event)
    get_money = _flag("getMoney", query.get("getMoney"))
    _flag("typeAliases", query.get("typeAliases"))  # we always answer the names (N, L, LL), as typeAliases=true
    prices = price_book().price_table()
    # Read consistently: a status asked right after a send includes its charge.
    credits = gateway().store.balance(account.account_id)
    sms = [
        {"type": tier, "quantity": sms_quantity(credits, prices.per_part(tier, None, account.default_country))}
        for tier in ROUTE_TIERS
    ]
    return json_response(200, {"money": credits if get_money else None, "sms": sms, "email": None})


def sms_quantity(credits: int, price_per_part: int) -> int:
    """How many one-part messages the balance buys at the tier's price for any network of the account's country
    (a free tier: one per credit)."""
    return credits // price_per_part if price_per_part > 0 else credits
