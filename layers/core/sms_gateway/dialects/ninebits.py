"""The 9bits dialect (seeds 1-3): POST /ng/v1/sendsms for one number or a batch, and batch reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sms_gateway.bootstrap import gateway, send_dependencies
from sms_gateway.dialects.common import idempotent, json_response, parse_json_body, parse_model, status_for
from sms_gateway.domain.models import (
    Account,
    CredentialKind,
    DeliveryReportMode,
    Message,
    SendCommand,
    utc_now,
)
from sms_gateway.errors import GatewayError, InvalidRequest
from sms_gateway.logic import batches
from sms_gateway.logic.auth import account_for_credential, bearer_token
from sms_gateway.logic.idempotency import request_key
from sms_gateway.logic.send import accept_send, normalise_recipients, require_valid

router = APIGatewayHttpRouter()
MAX_RECIPIENTS = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class SendRequest(BaseModel):
    """Seed 1/2 (`message`, one `to`) and seed 3 (`body` or `content`, `to` a list) in one model."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    sender: str = Field(alias="from", min_length=1, max_length=16)
    to: list[str] = Field(min_length=1)
    message: str | None = None
    body: str | None = None
    content: str | None = None
    session_id: str | None = Field(default=None, max_length=128)
    ref_id: str | None = Field(default=None, max_length=128)
    sent_date: str | None = Field(default=None, max_length=64)
    delivery_report: DeliveryReportMode = DeliveryReportMode.NONE
    send_at: datetime | None = None

    @field_validator("to", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str | int):
            return [str(value)]
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) else item for item in value]
        return value

    @field_validator("to")
    @classmethod
    def at_most_a_thousand(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients per request, got {len(value)}")
        return value

    @model_validator(mode="after")
    def exactly_one_text(self) -> SendRequest:
        given = [name for name in ("message", "body", "content") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give the text in exactly one of 'message', 'body' or 'content'")
        if not self.text:
            raise ValueError("the message text is empty")
        return self

    @property
    def text(self) -> str:
        return (
            self.message if self.message is not None else (self.body if self.body is not None else self.content or "")
        )


def render_error(error: GatewayError) -> Response:
    status = status_for(error)
    return json_response(status, {"status_code": status, "message": error.message})


def _caller() -> Account:
    event = router.current_event
    token = bearer_token(event.headers.get("authorization"))
    return account_for_credential(gateway().store, CredentialKind.TOKEN, token)


@router.post("/ng/v1/sendsms")
def send_sms() -> Response:
    account = _caller()
    event = router.current_event
    request = parse_model(SendRequest, parse_json_body(event.decoded_body))
    key = request_key(event.headers.get("idempotency-key"), request.ref_id)
    return idempotent(event, account.account_id, key, lambda: _send(account, request))


def _send(account: Account, request: SendRequest) -> Response:
    recipients, rejected = normalise_recipients(request.to, account.default_country)
    require_valid(rejected)
    command = SendCommand(
        account_id=account.account_id,
        sender=request.sender,
        text=request.text,
        recipients=tuple(recipients),
        session_id=request.session_id,
        ref_id=request.ref_id,
        sent_date=request.sent_date,
        delivery_report=request.delivery_report,
        send_at=request.send_at,
        dialect="9bits",
    )
    batch = accept_send(account, command, send_dependencies(), now=utc_now()).batch
    return json_response(
        200,
        {
            "status_code": 200,
            "message": "request is being processed",
            "reference_id": str(batch.reference_id),
            "recipients_processed": batch.recipients,
        },
    )


@router.get("/ng/v1/batches/<reference_id>")
def read_batch(reference_id: str) -> Response:
    account = _caller()
    view = batches.batch_view(gateway().store, account.account_id, batches.parse_reference_id(reference_id))
    batch = view.batch
    return json_response(
        200,
        {
            "reference_id": str(batch.reference_id),
            "status": view.status,
            "from": batch.sender,
            "recipients": batch.recipients,
            "counts": view.counts,
            "parts": batch.parts,
            "encoding": batch.encoding,
            "cost": batch.cost,
            "delivery_report": str(batch.delivery_report),
            "session_id": batch.session_id,
            "ref_id": batch.ref_id,
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
        "sequence": message.sequence,
        "created_at": message.created_at,
        "updated_at": message.status_at.get(str(message.status), message.created_at),
        "reported_at": message.reported_at,
    }


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


@router.get("/ng/v1/batches/<reference_id>/delivery_report")
def read_delivery_reports(reference_id: str) -> Response:
    account = _caller()
    query = router.current_event.query_string_parameters or {}
    page, cursor = batches.delivery_reports(
        gateway().store,
        account.account_id,
        batches.parse_reference_id(reference_id),
        status=query.get("status"),
        limit=_page_size(query.get("page_size")),
        cursor=query.get("next"),
    )
    return json_response(
        200,
        {"reference_id": reference_id, "data": [delivery_report_entry(m) for m in page], "next": cursor},
    )
