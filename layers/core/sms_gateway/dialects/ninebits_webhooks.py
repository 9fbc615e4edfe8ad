"""The 9bits family's failed-notification routes: list the client webhook notifications that failed, resend them."""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict

from sms_gateway.bootstrap import gateway
from sms_gateway.dialects.common import json_request, json_response, page_budget, page_size_parameter
from sms_gateway.dialects.ninebits import caller
from sms_gateway.domain.models import utc_now
from sms_gateway.logic import webhook_retries
from sms_gateway.ports import WebhookFailure

router = APIGatewayHttpRouter()
DEFAULT_LIMIT = 100


class ResendAllRequest(BaseModel):
    """Which failures to resend: only dead ones can be (a retrying one is still on its schedule)."""

    model_config = ConfigDict(extra="ignore")

    state: Literal["dead"]


def failure_entry(failure: WebhookFailure) -> dict[str, Any]:
    return {
        "id": failure.notification_id,
        "kind": failure.kind,
        "url": failure.url,
        "state": failure.state,
        "attempts": failure.attempts,
        "last_error": failure.last_error,
        "last_status_code": failure.last_status_code,
        "first_failed_at": failure.first_failed_at,
        "last_attempt_at": failure.last_attempt_at,
        "next_attempt_at": failure.next_attempt_at,
        "resent_at": failure.resent_at,
        "delivered_at": failure.delivered_at,
        # What the webhook receives, so the client can see what it missed without a resend.
        "payload": failure.notification.get("payload"),
    }


@router.get("/ng/v1/webhooks/failures")
def list_failures() -> Response[Any]:
    account = caller()
    query = router.current_event.query_string_parameters or {}
    state = webhook_retries.parse_state(query.get("state"))
    limit = page_size_parameter(
        query.get("limit"), "limit", default=DEFAULT_LIMIT, maximum=webhook_retries.MAX_PAGE_SIZE
    )
    # A page of big payloads (inbound SMS of long texts) may hold fewer than `limit`, with a next_cursor to the rest.
    page, cursor = gateway().store.list_webhook_failures(
        account.account_id,
        state=state,
        limit=limit,
        cursor=query.get("cursor") or None,
        budget=page_budget(failure_entry),
    )
    return json_response(
        200,
        {"status_code": 200, "message": "ok", "data": [failure_entry(f) for f in page], "next_cursor": cursor},
    )


@router.post("/ng/v1/webhooks/failures/resend")
def resend_all() -> Response[Any]:
    account = caller()
    json_request(router.current_event, ResendAllRequest)
    wiring = gateway()
    resent, more = webhook_retries.resend_dead(wiring.store, wiring.notify_queue, account.account_id, now=utc_now())
    return json_response(
        202,
        {
            "status_code": 202,
            "message": f"{resent} dead {'notification' if resent == 1 else 'notifications'} queued for delivery",
            "resent": resent,
            # At most RESEND_ALL_LIMIT per call: call again while this is true.
            "more": more,
        },
    )


@router.post("/ng/v1/webhooks/failures/<notification_id>/resend")
def resend_one(notification_id: str) -> Response[Any]:
    account = caller()
    wiring = gateway()
    failure = webhook_retries.resend_failure(
        wiring.store, wiring.notify_queue, account.account_id, notification_id, now=utc_now()
    )
    return json_response(
        202,
        {"status_code": 202, "message": "notification queued for delivery", **failure_entry(failure)},
    )
