"""The 9bits family's pull side: the inbox of inbound SMS, and the account's own webhook settings."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict, Field

from sms_gateway.bootstrap import gateway
from sms_gateway.dialects.common import json_request, json_response, page_budget, page_size_parameter
from sms_gateway.dialects.ninebits import WEBHOOK_URL_SCHEMA, _caller, caller_credential
from sms_gateway.domain.ids import id_time_ms
from sms_gateway.domain.models import Account, StoredInbound, iso
from sms_gateway.domain.msisdn import InvalidMsisdn, parse_msisdn
from sms_gateway.domain.senders import inbound_sender
from sms_gateway.domain.zones import account_zone
from sms_gateway.errors import InvalidRequest
from sms_gateway.logic import accounts
from sms_gateway.logic.inbound import inbound_notification
from sms_gateway.observability import mask_typed_number

router = APIGatewayHttpRouter()
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
# Secrets in an answer must not be kept by a cache on the way.
_NO_STORE = {"Cache-Control": "no-store"}


# ---------------------------------------------------------------- inbox


class InboundEntry(BaseModel):
    """One inbound SMS: the seeds' "Receive SMS" body, plus our id and the time the gateway received it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(description="in_<inbound id>")
    type: str = "two-way sms"
    telco: str | None = None
    sender: str = Field(
        alias="from",
        description="the number the SMS came from, international, without '+'; a sender that is no number (a "
        "sender ID, a short code) as the upstream gave it",
    )
    to: str = Field(description="the account's shortcode or number it was sent to")
    message: str
    session_id: str
    sent_date: str = Field(description="when the upstream says it was sent")
    ref_id: str | None = None
    received_at: str = Field(description="when the gateway received it: what `from` and `to` filter on")


class InboxPage(BaseModel):
    status_code: int = 200
    message: str = "ok"
    data: list[InboundEntry]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next (older) page; null at the end. A page of long SMS may hold fewer "
        "than `limit` (an answer is at most 5 MB), with a next_cursor to the rest"
    )


def received_at(inbound: StoredInbound) -> datetime:
    """When the gateway received it: inbound ids are made on arrival and carry their millisecond."""
    return datetime.fromtimestamp(id_time_ms(inbound.inbound_id) / 1000, UTC)


def inbound_entry(inbound: StoredInbound) -> InboundEntry:
    notification = inbound_notification(inbound)
    return InboundEntry.model_validate(
        {"id": notification["id"], **notification["payload"], "received_at": iso(received_at(inbound))}
    )


@router.get(
    "/ng/v1/inbounds",
    summary="List inbound SMS, newest first",
    responses={200: {"description": "a page of inbound SMS", "content": {"application/json": {"model": InboxPage}}}},
)
def list_inbounds(
    limit: Annotated[str | None, Query(description=f"1 to {MAX_LIMIT}, default {DEFAULT_LIMIT}")] = None,
    cursor: Annotated[str | None, Query(description="the previous page's next_cursor")] = None,
    since: Annotated[
        str | None, Query(alias="from", description="ISO 8601 date or date-time: received at or after")
    ] = None,
    until: Annotated[
        str | None, Query(alias="to", description="ISO 8601 date or date-time: received at or before")
    ] = None,
    number: Annotated[
        str | None, Query(description="only SMS from this number (any form the account accepts) or sender ID")
    ] = None,
) -> Response[Any]:
    account = _caller()
    page_size = page_size_parameter(limit, "limit", default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    zone = account_zone(account.timezone)
    start = _moment("from", since, zone, end_of_day=False) if since else None
    end = _moment("to", until, zone, end_of_day=True) if until else None
    if start is not None and end is not None and start > end:
        raise InvalidRequest(f"`from` ({since}) is after `to` ({until})")
    page, next_cursor = gateway().store.list_inbounds(
        account.account_id,
        limit=page_size,
        cursor=cursor or None,
        since=start,
        until=end,
        msisdn=_number(number, account) if number else None,
        # A page of long SMS may hold fewer than `limit`, with a next_cursor to the rest.
        budget=page_budget(_listed),
    )
    body = InboxPage(data=[inbound_entry(inbound) for inbound in page], next_cursor=next_cursor)
    return json_response(200, body.model_dump(mode="json", by_alias=True))


def _listed(inbound: StoredInbound) -> dict[str, Any]:
    """An inbound SMS as the inbox's answer writes it."""
    return inbound_entry(inbound).model_dump(mode="json", by_alias=True)


def _moment(name: str, raw: str, zone: tzinfo, *, end_of_day: bool) -> datetime:
    """A date means the whole day in the account's time zone (`to` includes it); a date-time without an offset
    is the account's wall-clock time too."""
    text = raw.strip()
    day = _date_only(text)
    if day is not None:
        if end_of_day and day == date.max:
            return datetime.max.replace(tzinfo=UTC)
        moment = datetime.combine(day + timedelta(days=1) if end_of_day else day, time(), tzinfo=zone)
        return _utc(moment) - (timedelta(microseconds=1) if end_of_day else timedelta())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        hint = " (send a '+' offset as %2B)" if " " in text else ""
        raise InvalidRequest(
            f"`{name}` must be an ISO 8601 date (2026-01-02) or date-time (2026-01-02T10:30:00Z), not {raw!r}{hint}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return _utc(moment)


def _date_only(text: str) -> date | None:
    """The day `text` names when it is a date alone, in any form `date.fromisoformat` reads (`2026-01-02`, and the
    basic and week forms `20260102`, `2026-W01-5`); `datetime.fromisoformat` reads those too, as their midnight, so
    a `to=20260102` read by it ended at the start of its day."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _utc(moment: datetime) -> datetime:
    """In UTC; a moment at either end of the calendar (`0001-01-01` in a zone east of UTC, `9999-12-31` west of
    it) that UTC cannot hold is its first or last moment: no id is older or newer."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def _number(raw: str, account: Account) -> str:
    """The sender the filter matches: a phone number, in any form a send accepts, as stored (E.164); anything
    else as the inbox stores a sender that is no number (a sender ID, `WhatsApp`; a short code, `131`): exactly as
    given, trimmed (logic/inbound._sender). Refused only when it cannot be a sender at all."""
    try:
        return parse_msisdn(raw, account.default_country).e164
    except InvalidMsisdn:
        pass
    try:
        return inbound_sender(raw)
    except ValueError as error:
        # The answer quotes the value as typed, the log line only its digits, masked
        refusal = "`number` {} is neither a phone number nor a sender: " + str(error)
        raise InvalidRequest(refusal.format(repr(raw)), logged=refusal.format(mask_typed_number(raw))) from None


# ---------------------------------------------------------------- webhook settings


def _document_webhook_urls(schema: dict[str, Any]) -> None:
    """What a change takes, as the OpenAPI document states it: each URL a webhook URL, "" (remove it) or null (keep
    it); and something to change, a URL or a rotation (logic/accounts.set_webhooks)."""
    for name in ("inbound_url", "dlr_url"):
        schema["properties"][name] = {"anyOf": [WEBHOOK_URL_SCHEMA, {"const": ""}, {"type": "null"}]}
    schema["anyOf"] = [
        *({"required": [name], "properties": {name: {"type": "string"}}} for name in ("inbound_url", "dlr_url")),
        *({"required": [name], "properties": {name: {"const": True}}} for name in ("rotate_token", "rotate_secret")),
    ]


class WebhookSettingsRequest(BaseModel):
    """A URL given as "" removes that webhook; null or absent keeps it."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_document_webhook_urls)

    inbound_url: str | None = Field(default=None, max_length=accounts.MAX_URL_LENGTH)
    dlr_url: str | None = Field(default=None, max_length=accounts.MAX_URL_LENGTH)
    rotate_token: bool = False
    rotate_secret: bool = False


class WebhookSettings(BaseModel):
    status_code: int = 200
    message: str = "ok"
    inbound_url: str | None
    dlr_url: str | None
    webhook_token_prefix: str | None = Field(description="the start of the Bearer token our webhook calls carry")
    signing_secret_prefix: str | None = Field(description="the start of the key of the webhook-signature header")
    webhook_token: str | None = Field(default=None, description="in full, only in the answer that rotated it")
    signing_secret: str | None = Field(default=None, description="in full, only in the answer that rotated it")


def _settings(account: Account, message: str, *, token: str | None = None, secret: str | None = None) -> Response[Any]:
    view = WebhookSettings(
        message=message,
        inbound_url=account.inbound_url,
        dlr_url=account.dlr_url,
        webhook_token_prefix=account.webhook_token.prefix if account.webhook_token else None,
        signing_secret_prefix=account.webhook_secret.prefix if account.webhook_secret else None,
        webhook_token=token,
        signing_secret=secret,
    )
    body = view.model_dump(mode="json")
    # The full secrets appear only when this request rotated them.
    for name in ("webhook_token", "signing_secret"):
        if body[name] is None:
            del body[name]
    return json_response(200, body, headers=_NO_STORE)


_SETTINGS_RESPONSES: Any = {
    200: {"description": "the webhook settings", "content": {"application/json": {"model": WebhookSettings}}}
}


@router.get("/ng/v1/settings/webhooks", summary="Read the account's webhook settings", responses=_SETTINGS_RESPONSES)
def read_webhook_settings() -> Response[Any]:
    # The settings as they are now (read consistently), not as an eventually consistent read may still show them:
    # a GET right after a PUT shows the change.
    account = _caller()
    return _settings(gateway().store.get_account(account.account_id, consistent=True) or account, "ok")


@router.put("/ng/v1/settings/webhooks", summary="Change the account's webhooks", responses=_SETTINGS_RESPONSES)
def change_webhook_settings() -> Response[Any]:
    account = _caller()
    request = json_request(router.current_event, WebhookSettingsRequest)
    updated, rotated = accounts.set_webhooks(
        gateway().store,
        gateway().webhook_credentials,
        account.account_id,
        dlr_url=request.dlr_url,
        inbound_url=request.inbound_url,
        rotate_token=request.rotate_token,
        rotate_secret=request.rotate_secret,
        allow_http=gateway().settings.allow_http_webhooks,
        by=caller_credential(),
    )
    return _settings(
        updated,
        "webhook settings changed",
        token=rotated.token,
        secret=rotated.secret,
    )
