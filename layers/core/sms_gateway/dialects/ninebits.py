"""The 9bits dialect (seeds 1-3): sends to numbers and groups, batch reads, dry runs, cancels, and groups."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticUseDefault

from sms_gateway.bootstrap import gateway, price_book, send_dependencies
from sms_gateway.dialects.common import (
    NOT_BLANK,
    Standing,
    accept,
    blank_is_none,
    cancel,
    error_headers,
    idempotent,
    int_as_text,
    invalid_entries,
    json_request,
    json_response,
    key_claim,
    page_size_parameter,
    send_time_schema,
    status_for,
)
from sms_gateway.domain.dates import basic_form_wall_clock
from sms_gateway.domain.models import (
    MAX_SESSION_ID_LENGTH,
    Account,
    CredentialKind,
    DeliveryReportMode,
    Message,
    Recipient,
    SendCommand,
    utc_now,
)
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed
from sms_gateway.logic import accounts, batches, groups
from sms_gateway.logic.accounts import check_webhook_url
from sms_gateway.logic.auth import account_for_credential, bearer_token
from sms_gateway.logic.idempotency import request_key
from sms_gateway.logic.send import (
    Accepted,
    InvalidNumbers,
    Rejection,
    going_out,
    not_sent_to,
    send_time,
    stored_recipients,
)

router = APIGatewayHttpRouter()
# The same limit as logic/compose.py's (a test keeps them equal); that module is imported on the first send only.
MAX_RECIPIENTS = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Every 9bits send is priced on the standard route; the tier is named once so a dry run quotes what a send charges.
ROUTE_TIER = "N"


def _as_list(value: Any) -> Any:
    """One number (string or whole JSON number) or a list of them; whole numbers become their digits (int_as_text),
    a whole float too: json.dumps writes a pandas float64 column's 2348020000000.0 so, and json_encode a
    PhpSpreadsheet numeric cell (until session 35 refused 400, "Input should be a valid string"). A boolean or a
    fraction is no number: it is left for validation to refuse, not turned into the text "True"."""
    if isinstance(value, list):
        return [int_as_text(item) for item in value]
    text = int_as_text(value)
    return [text] if isinstance(text, str) else value


TEXT_FIELDS = ("message", "body", "content")
# delivery_report as the model reads it, blanks around it and letters in any case (ECMA 262 patterns have no flags).
YES_IN_ANY_CASE = r"^\s*[Yy][Ee][Ss]\s*$"
REPORT_MODE_IN_ANY_CASE = r"^\s*([Nn][Oo][Nn][Ee]|[Yy][Ee][Ss])\s*$"
# A webhook URL as the OpenAPI document states it: https, a host without user:pass@, no spaces, backslashes or
# control characters (domain/webhook_urls.py, which also refuses local and private hosts: the description says so).
WEBHOOK_URL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^https://[^/?#@\\\s\x00-\x1f\x7f]+([/?#][^\\\s\x00-\x1f\x7f]*)?$",
    "maxLength": accounts.MAX_URL_LENGTH,
    "description": "an https URL of a public host (not localhost, a private address or *.internal)",
}


def _document_numbers(schema: dict[str, Any], name: str, *, min_items: int = 0, max_items: int | None = None) -> None:
    """What `_as_list` reads, in the OpenAPI document: one number (string or integer) or a list of them (a whole
    float, 2348020000000.0, is an integer to JSON Schema)."""
    number = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    many: dict[str, Any] = {"type": "array", "items": number, "minItems": min_items}
    if max_items is not None:
        many["maxItems"] = max_items
    schema["properties"][name] = {"anyOf": [number, many], "title": name.capitalize()}


def _document_integer_as_text(field: dict[str, Any]) -> None:
    """A text field the model also takes as a whole JSON number, read as its digits: the integers whose digits fit."""
    longest = next(kind["maxLength"] for kind in field.get("anyOf", [field]) if kind.get("type") == "string")
    integer = {"type": "integer", "minimum": 1 - 10 ** (longest - 1), "maximum": 10**longest - 1}
    if "anyOf" in field:
        field["anyOf"].insert(1, integer)
    else:
        string = {key: field.pop(key) for key in ("type", "minLength", "maxLength") if key in field}
        field["anyOf"] = [string, integer]


def _document_send_rules(schema: dict[str, Any]) -> None:
    """The rules the validators below apply, in the OpenAPI document too: `to` is one number (string or integer)
    or a list of them; the text is in exactly one of message, body or content (the others absent or null); the text,
    from, session_id, ref_id and sent_date may be whole numbers; callback_url is a webhook URL, and needs
    delivery_report "yes"; either written null or "" is left out."""
    _document_numbers(schema, "to", min_items=1)
    text = {"anyOf": [{"type": "string", "minLength": 1, "pattern": NOT_BLANK}, {"type": "integer"}]}
    schema["oneOf"] = [
        {
            "required": [given],
            "properties": {name: text if name == given else {"type": "null"} for name in TEXT_FIELDS},
        }
        for given in TEXT_FIELDS
    ]
    properties = schema["properties"]
    for name in TEXT_FIELDS:
        properties[name]["anyOf"].insert(1, {"type": "integer"})
    for name in ("from", "session_id", "ref_id", "sent_date"):
        _document_integer_as_text(properties[name])
    unset = [{"type": "null"}, {"const": ""}]
    properties["callback_url"] = {"anyOf": [WEBHOOK_URL_SCHEMA, *unset], "title": "Callback Url"}
    report = properties["delivery_report"]
    properties["delivery_report"] = {
        "anyOf": [{"$ref": report["$ref"]}, {"type": "string", "pattern": REPORT_MODE_IN_ANY_CASE}, *unset],
        "default": report["default"],
    }
    schema["if"] = {
        "required": ["callback_url"],
        "properties": {"callback_url": {"type": "string", "pattern": NOT_BLANK}},
    }
    schema["then"] = {
        "required": ["delivery_report"],
        "properties": {"delivery_report": {"type": "string", "pattern": YES_IN_ANY_CASE}},
    }


class SendRequest(BaseModel):
    """Seed 1/2 (`message`, one `to`) and seed 3 (`body` or `content`, `to` a list) in one model."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, json_schema_extra=_document_send_rules)

    sender: str = Field(alias="from", min_length=1, max_length=16)
    to: list[str] = Field(min_length=1)
    message: str | None = None
    body: str | None = None
    content: str | None = None
    session_id: str | None = Field(default=None, max_length=MAX_SESSION_ID_LENGTH)
    ref_id: str | None = Field(default=None, max_length=128)
    sent_date: str | None = Field(default=None, max_length=64)
    delivery_report: DeliveryReportMode = DeliveryReportMode.NONE
    # This batch's delivery reports go here instead of the account's DLR URL.
    callback_url: str | None = Field(default=None, max_length=2048)
    send_at: Annotated[
        datetime | None,
        send_time_schema(
            "ISO 8601: extended (2026-12-08T10:00, with or without an offset) or basic in digits alone "
            "(yyyyMMdd, yyyyMMddHHmm, yyyyMMddHHmmss, in a string or a JSON number), read in the account's time zone "
            "when it has no offset; any other digits are Unix time (seconds, or milliseconds); empty sends now"
        ),
    ] = None

    @field_validator("to", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("send_at", mode="before")
    @classmethod
    def send_at_as_every_dialect_reads_it(cls, value: Any) -> Any:
        """Blank is now (PHP clients send an unset field as ""), and yyyyMMdd[HHmm[ss]] (ISO 8601's basic form, in a
        string or a JSON number) a wall-clock time, as in every dialect; pydantic would refuse the one and read the
        other as Unix time (it still reads any other digits, string or number, so)."""
        if isinstance(value, str) and not value.strip():
            return None
        if not isinstance(value, str | int | float):
            return value
        wall_clock = basic_form_wall_clock(value)
        return wall_clock if wall_clock is not None else value

    @field_validator("sender", "session_id", "ref_id", "sent_date", *TEXT_FIELDS, mode="before")
    @classmethod
    def numbers_as_text(cls, value: Any) -> Any:
        """A shortcode, order id or one-time code written as a JSON number (PHP's json_encode of an int) is its
        digits, as `to` is and as the shortcode dialect reads the same values; so is a sent_date written as one
        (plain Jackson writes a java.util.Date as epoch milliseconds, PHP clients send time()): it is the client's
        own reference, echoed back as given (until session 35 refused 400, "Input should be a valid string")."""
        return int_as_text(value)

    @field_validator("delivery_report", "callback_url", mode="before")
    @classmethod
    def unset_takes_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        """null or blank is the field left out, as for send_at: JSON.NET and Jackson models write an unset field as
        null, PHP clients as "". delivery_report is read in any case: a .NET enum converter writes the member's
        name, "Yes" or "None" (until session 35 refused 400, "Input should be 'none' or 'yes'")."""
        if blank_is_none(value) is None:
            raise PydanticUseDefault
        if info.field_name == "delivery_report" and isinstance(value, str):
            return value.strip().lower()
        return value

    @field_validator("to")
    @classmethod
    def at_most_a_thousand(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients per request, got {len(value)}")
        return value

    @model_validator(mode="after")
    def exactly_one_text(self) -> SendRequest:
        given = [name for name in TEXT_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give the text in exactly one of 'message', 'body' or 'content'")
        if not self.text.strip():
            raise ValueError("the message text is empty or blank")
        if self.callback_url is not None and self.delivery_report != DeliveryReportMode.YES:
            raise ValueError("'callback_url' receives delivery reports: it needs 'delivery_report': 'yes'")
        return self

    @property
    def text(self) -> str:
        return (
            self.message if self.message is not None else (self.body if self.body is not None else self.content or "")
        )


# Every 401 of the family names the scheme it takes (RFC 6750 section 3).
CHALLENGE = "Bearer"


def render_error(error: GatewayError) -> Response[Any]:
    status = status_for(error)
    body: dict[str, Any] = {"status_code": status, "message": error.message}
    if isinstance(error, InvalidNumbers):
        # The message names the first ten; the list names each, as the dry run lists them.
        body |= listed_invalid(error.rejected, "to")
    return json_response(status, body, headers=error_headers(error, challenge=CHALLENGE))


def listed_invalid(rejected: Sequence[Rejection], field: str) -> dict[str, Any]:
    """The family's list of refused entries: how many there were, and each (up to 1000) with its reason, `field`
    naming it as given."""
    return {"invalid_count": len(rejected), "invalid": invalid_entries(rejected, field)}


def _caller() -> Account:
    event = router.current_event
    token = bearer_token(event.headers.get("authorization"))
    return account_for_credential(gateway().store, CredentialKind.TOKEN, token)


def caller() -> Account:
    """The account of the request's Bearer token, for the other modules of the 9bits family."""
    return _caller()


def caller_credential() -> str:
    """The request's Bearer token as a change it makes records it (its kind and prefix, not the secret)."""
    return accounts.changed_with(
        str(CredentialKind.TOKEN), bearer_token(router.current_event.headers.get("authorization"))
    )


@router.post("/ng/v1/sendsms")
def send_sms() -> Response[Any]:
    account = _caller()
    event = router.current_event
    request = json_request(event, SendRequest)
    key = request_key(event.headers.get("idempotency-key"), request.ref_id)
    return idempotent(
        event,
        account.account_id,
        key,
        lambda: _send(account, request),
        standing=Standing(
            account,
            recipients=lambda: _still_named(account, request.to),
            answer=lambda accepted: _sent(accepted, stored_recipients(accepted.messages)),
        ),
    )


def _still_named(account: Account, to: Sequence[str]) -> list[Recipient]:
    from sms_gateway.logic import compose

    return compose.recipients_still_named(gateway().store, account, to)


def _check_send_options(account: Account, request: SendRequest) -> None:
    """What a send refuses before it reads its recipients, which a dry run refuses the same way."""
    if request.callback_url is not None:
        check_webhook_url(request.callback_url, allow_http=gateway().settings.allow_http_webhooks)
    send_time(request.send_at, account, utc_now())


def _send(account: Account, request: SendRequest) -> Response[Any]:
    _check_send_options(account, request)
    from sms_gateway.logic import compose

    recipients = compose.resolve_recipients(gateway().store, account, request.to, strict=True).recipients
    command = SendCommand(
        account_id=account.account_id,
        sender=request.sender,
        text=request.text,
        recipients=tuple(recipients),
        session_id=request.session_id,
        ref_id=request.ref_id,
        sent_date=request.sent_date,
        delivery_report=request.delivery_report,
        callback_url=request.callback_url,
        send_at=request.send_at,
        route_tier=ROUTE_TIER,
        dialect="9bits",
    )
    return _sent(accept(account, command), recipients)


def _sent(accepted: Accepted, recipients: Sequence[Recipient]) -> Response[Any]:
    """The answer to a send that stands: `recipients`, those it was asked to send to."""
    batch = accepted.batch
    body: dict[str, Any] = {
        "status_code": 200,
        "message": "request is being processed",
        "reference_id": str(batch.reference_id),
        # Only what goes out: a send that stands after its queueing failed part-way was refunded the rest.
        "recipients_processed": len(going_out(accepted)),
    }
    # Only when some recipient opted out (STOP), or the send stands without some (not queued in time: the client is
    # to send to them again), so the seeds' answer stays exactly as they show it otherwise.
    left_out = [*accepted.refused, *not_sent_to(accepted, recipients)]
    if left_out:
        body["refused"] = invalid_entries(left_out, "to")
    return json_response(200, body)


DRY_RUN_PATH = "/ng/v1/batches/dry_run"


@router.post(DRY_RUN_PATH)
def dry_run() -> Response[Any]:
    """The send's answer without the send: parts, encoding, cost and balance; nothing stored, charged or queued."""
    account = _caller()
    request = json_request(router.current_event, SendRequest)
    _check_send_options(account, request)
    from sms_gateway.logic import compose

    dry = compose.dry_run(
        account,
        request.sender,
        request.text,
        request.to,
        groups_store=gateway().store,
        accounts=gateway().store,
        opt_outs=send_dependencies().opt_outs,
        prices=price_book().price_table(),
        route_tier=ROUTE_TIER,
    )
    segmentation = dry.priced.segmentation
    return json_response(
        200,
        {
            "status_code": 200,
            "message": "dry run: nothing was sent or charged",
            "parts": segmentation.parts,
            "encoding": str(segmentation.encoding),
            "ucs2_characters": list(segmentation.ucs2_characters),
            "characters_per_part": segmentation.per_part,
            "recipients": len(dry.recipients),
            "cost_per_recipient": [
                _priced_recipient(r, dry.priced.price_per_recipient[r.msisdn]) for r in dry.recipients
            ],
            "total_cost": dry.priced.cost,
            "balance": dry.balance,
            "balance_sufficient": dry.sufficient,
            **listed_invalid(dry.invalid + dry.opted_out, "to"),
            "would_be_accepted": dry.would_be_accepted,
        },
    )


def _priced_recipient(recipient: Recipient, cost: int) -> dict[str, Any]:
    return {"to": recipient.msisdn.lstrip("+"), "telco": recipient.telco, "cost": cost}


def _refuse_the_dry_run_path(reference_id: str) -> None:
    """The dry run's path matches the /ng/v1/batches/<reference_id> routes too, for the methods it does not take
    (Powertools tries its POST route first, then these): asked so, it is the 405 that any path asked with a method it
    does not take answers, before credentials are looked at (api.not_found), not a batch that is not found."""
    if reference_id == DRY_RUN_PATH.rsplit("/", 1)[1]:
        method = router.current_event.http_method.upper()
        raise MethodNotAllowed.asked(DRY_RUN_PATH, method, allowed=["POST"])


@router.delete("/ng/v1/batches/<reference_id>")
def cancel_batch(reference_id: str) -> Response[Any]:
    _refuse_the_dry_run_path(reference_id)
    account = _caller()
    event = router.current_event
    number = batches.parse_reference_id(reference_id)
    # Under a key a retry gets the first answer, with the credits that cancel refunded (docs/dialects/9bits.md).
    key = request_key(event.headers.get("idempotency-key"), None)
    return idempotent(event, account.account_id, key, lambda: _cancel_batch(account, number), retry_failed_at_once=True)


def _cancel_batch(account: Account, reference_id: int) -> Response[Any]:
    try:
        batch, refunded = cancel(account.account_id, reference_id)
    except batches.AlreadyCancelled as done:
        # A repeated cancel (the client did not get the first answer) gets the same answer, refunding nothing more.
        batch, refunded = done.batch, 0
    # Read consistently: an eventually consistent read right after the refund may show the balance before it.
    after = gateway().store.get_account(account.account_id, consistent=True)
    return json_response(
        200,
        {
            "status_code": 200,
            "message": "batch cancelled",
            "reference_id": str(batch.reference_id),
            "status": str(batch.status),
            "refunded_credits": refunded,
            "balance": after.credits if after else None,
        },
    )


@router.get("/ng/v1/batches/<reference_id>")
def read_batch(reference_id: str) -> Response[Any]:
    _refuse_the_dry_run_path(reference_id)
    account = _caller()
    view = batches.batch_view(gateway().store, account.account_id, batches.parse_reference_id(reference_id))
    batch = view.batch
    return json_response(
        200,
        {
            "status_code": 200,
            "message": "ok",
            "reference_id": str(batch.reference_id),
            "status": view.status,
            "from": batch.sender,
            "to": list(view.numbers),
            "body": batch.text,
            "recipients": batch.recipients,
            "counts": view.counts,
            "parts": batch.parts,
            "encoding": batch.encoding,
            "cost": batch.cost,
            "delivery_report": str(batch.delivery_report),
            "session_id": batch.session_id,
            "ref_id": batch.ref_id,
            "sent_date": batch.sent_date,
            "created_at": batch.created_at,
            "send_at": batch.send_at,
        },
    )


def delivery_report_entry(message: Message) -> dict[str, Any]:
    return {
        "message_id": str(message.message_id),
        "reference_id": str(message.reference_id),
        "from": message.sender,
        "to": message.msisdn.lstrip("+"),
        "telco": message.telco,
        "status": str(message.status),
        "error_code": message.error_code,
        "parts": message.parts,
        "session_id": message.session_id,
        "ref_id": message.ref_id,
        "sent_date": message.sent_date,
        "sequence": message.sequence,
        "created_at": message.created_at,
        "updated_at": message.status_at.get(str(message.status), message.created_at),
        "reported_at": message.reported_at,
    }


def _page_size(raw: str | None) -> int:
    return page_size_parameter(raw, "page_size", default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def _status_filter(raw: str | None) -> MessageStatus | None:
    if not raw:
        return None
    try:
        return MessageStatus(raw.strip().lower())
    except ValueError:
        allowed = ", ".join(str(status) for status in MessageStatus)
        raise InvalidRequest(f"status must be one of {allowed}; got {raw!r}") from None


@router.get("/ng/v1/batches/<reference_id>/delivery_report")
def read_delivery_reports(reference_id: str) -> Response[Any]:
    account = _caller()
    query = router.current_event.query_string_parameters or {}
    status = _status_filter(query.get("status"))
    limit = _page_size(query.get("page_size"))
    batch_id = batches.parse_reference_id(reference_id)
    page, cursor = batches.delivery_reports(
        gateway().store,
        account.account_id,
        batch_id,
        status=status,
        limit=limit,
        cursor=query.get("next"),
    )
    return json_response(
        200,
        {
            "status_code": 200,
            "message": "ok",
            # The batch's id as the send answered it, however the path wrote it (a leading zero), as read_batch does.
            "reference_id": str(batch_id),
            "data": [delivery_report_entry(m) for m in page],
            "next": cursor,
        },
    )


# ---------------------------------------------------------------- groups


def _document_group_rules(schema: dict[str, Any]) -> None:
    """`members`: one number (a string, or "" for none) or a list of them, or null for none."""
    _document_numbers(schema, "members", max_items=groups.MAX_GROUP_MEMBERS)
    schema["properties"]["members"]["anyOf"].append({"type": "null"})


class GroupRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_document_group_rules)

    name: str = Field(min_length=1, max_length=groups.MAX_NAME_LENGTH)
    members: list[str] = Field(default_factory=list, max_length=groups.MAX_GROUP_MEMBERS)

    @field_validator("members", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        """null or blank is the list left out (JSON.NET and Jackson models write an unset field as null, PHP clients
        as ""), as a send reads its unset fields: a group with no members yet."""
        if blank_is_none(value) is None:
            raise PydanticUseDefault
        return _as_list(value)


class MembersRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=lambda schema: _document_numbers(
            schema, "members", min_items=1, max_items=groups.MAX_GROUP_MEMBERS
        ),
    )

    members: list[str] = Field(min_length=1, max_length=groups.MAX_GROUP_MEMBERS)

    @field_validator("members", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        return _as_list(value)


def _group_summary(group: groups.Group | groups.GroupSummary) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "name": group.name,
        "member_count": group.member_count,
        "created_at": group.created_at,
        "updated_at": group.updated_at,
    }


def _group_body(group: groups.Group) -> dict[str, Any]:
    return {**_group_summary(group), "members": [member.lstrip("+") for member in group.members]}


@router.post("/ng/v1/groups")
def create_group() -> Response[Any]:
    account = _caller()
    event = router.current_event
    request = json_request(event, GroupRequest)
    key = request_key(event.headers.get("idempotency-key"), None)
    # Under a key the group's id is the one the key names: a retry after an attempt that stored it and died, or
    # lost its answer, answers with that group (after the lease, when the attempt died), never makes a second.
    return idempotent(event, account.account_id, key, lambda: _create_group(account, request))


def _create_group(account: Account, request: GroupRequest) -> Response[Any]:
    claim = key_claim()
    change = groups.create_group(
        gateway().store,
        account_id=account.account_id,
        default_country=account.default_country,
        name=request.name,
        members=request.members,
        now=utc_now(),
        number=claim.reference_id if claim is not None else None,
    )
    return json_response(
        201,
        {
            "status_code": 201,
            "message": "group created",
            **_group_body(change.group),
            **listed_invalid(change.rejected, "member"),
        },
    )


@router.get("/ng/v1/groups")
def list_groups() -> Response[Any]:
    account = _caller()
    query = router.current_event.query_string_parameters or {}
    page, cursor = groups.list_groups(
        gateway().store, account.account_id, limit=_page_size(query.get("page_size")), cursor=query.get("next")
    )
    return json_response(
        200, {"status_code": 200, "message": "ok", "data": [_group_summary(g) for g in page], "next": cursor}
    )


@router.get("/ng/v1/groups/<group_id>")
def read_group(group_id: str) -> Response[Any]:
    account = _caller()
    group = groups.get_group(gateway().store, account.account_id, group_id)
    return json_response(200, {"status_code": 200, "message": "ok", **_group_body(group)})


@router.post("/ng/v1/groups/<group_id>/members")
def add_members(group_id: str) -> Response[Any]:
    return _change_members(group_id, groups.add_members, "members added", ("added", "already_members"))


@router.delete("/ng/v1/groups/<group_id>/members")
def remove_members(group_id: str) -> Response[Any]:
    return _change_members(group_id, groups.remove_members, "members removed", ("removed", "not_members"))


def _change_members(group_id: str, change_members: Any, message: str, counts: tuple[str, str]) -> Response[Any]:
    account = _caller()
    request = json_request(router.current_event, MembersRequest)
    change = change_members(
        gateway().store,
        account_id=account.account_id,
        default_country=account.default_country,
        group_id=group_id,
        members=request.members,
        now=utc_now(),
    )
    changed, unchanged = counts
    return json_response(
        200,
        {
            "status_code": 200,
            "message": message,
            **_group_summary(change.group),
            changed: change.changed,
            unchanged: change.unchanged,
            **listed_invalid(change.rejected, "member"),
        },
    )


@router.delete("/ng/v1/groups/<group_id>")
def delete_group(group_id: str) -> Response[Any]:
    account = _caller()
    deleted = groups.delete_group(gateway().store, account.account_id, group_id)
    return json_response(200, {"status_code": 200, "message": "group deleted", "group_id": deleted})
