"""The `webhook` function's resolver: upstream DLR and inbound callbacks, verified per provider."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from botocore.exceptions import ClientError

from sms_gateway import deadlines
from sms_gateway.adapters.providers import callback_provider, upstream_country
from sms_gateway.bootstrap import gateway, route_table
from sms_gateway.dialects.common import callback_text, error_headers, json_response, status_for
from sms_gateway.domain.models import CallbackRequest, StatusChange, utc_now
from sms_gateway.errors import GatewayError, NotFound, TransactionUndecided, Unauthorized, Unavailable
from sms_gateway.logic.delivery import DeliveryDependencies, announce_change, receive_delivery_reports
from sms_gateway.logic.inbound import InboundDependencies, receive_inbound
from sms_gateway.observability import logger, metrics
from sms_gateway.outcome_metrics import count_final_statuses
from sms_gateway.ports import Provider

# A callback stops retrying a failed AWS call once less than this is left of its invocation (the webhook function's
# Timeout is 10 s): time for a retry's backoff and attempt that began just before (a prompt client's: at most 1 s,
# then 1 s to connect and 2 s to read), then the answer, 503 for the upstream to post it again, before Lambda ends the
# invocation with none (a 502 or 504 to the upstream, and no log of why).
CALLBACK_RESERVE_SECONDS = 4.0


class CallbackResolver(APIGatewayHttpResolver):
    """Resolves a callback with the invocation's deadline armed (deadlines.armed): past it a failed AWS call is not
    retried but raises DeadlineReached, answered 503 (`deadline_reached`)."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        with deadlines.armed(deadlines.out_of_time_after(remaining_ms, reserve_seconds=CALLBACK_RESERVE_SECONDS)):
            return super().resolve(event, context)


app = CallbackResolver()


def _callback_request() -> CallbackRequest:
    event = app.current_event
    return CallbackRequest(
        method=event.http_method,
        url=f"https://{event.request_context.domain_name}{event.raw_path}"
        + (f"?{event.raw_query_string}" if event.get("rawQueryString") else ""),
        headers={k.lower(): v for k, v in (event.headers or {}).items()},
        query=dict(event.query_string_parameters or {}),
        body=callback_text(event),
    )


def _provider(name: str) -> Provider:
    try:
        return callback_provider(name)
    except NotFound as error:
        # An unknown provider name is answered like a failed signature: callers learn nothing about our setup.
        raise Unauthorized("callback not verified") from error


@app.route("/callbacks/<provider>/dlr", method=["GET", "POST"])
def delivery_report(provider: str) -> Response:
    upstream = _provider(provider)
    wiring = gateway()
    # Its client gives up within seconds, and the deadline ends its retries: the answer comes before the timeout.
    store = wiring.prompt_store

    def queue_client_callback(change: StatusChange) -> None:
        announce_change(
            change,
            wiring.prompt_notify_queue.publish,
            store,
            clock=utc_now,
            sweep_delay=timedelta(seconds=wiring.settings.inbound_sweep_delay_seconds),
        )

    def count_and_queue(change: StatusChange) -> None:
        count_final_statuses([change])
        queue_client_callback(change)

    outcome = receive_delivery_reports(
        upstream,
        _callback_request(),
        DeliveryDependencies(
            messages=store,
            accounts=store,
            clock=utc_now,
            on_change=count_and_queue,
            # The same notification, same webhook id: a client that has it drops the repeat.
            on_repeat=queue_client_callback,
        ),
    )
    metrics.add_metric(name="DeliveryReportsApplied", unit="Count", value=outcome.applied)
    if outcome.unmatched:
        # Reports for no message of ours, or for one another upstream carries: acknowledged (an upstream would only
        # post them again) and dropped; many mean an upstream posting to the wrong gateway or a misconfigured route.
        metrics.add_metric(name="DeliveryReportsUnmatched", unit="Count", value=outcome.unmatched)
    if outcome.held:
        # Reports by an upstream's own id no message is linked to yet: kept until the dispatcher links it (a report
        # that overtook its submit, now and then), else they expire unapplied (another gateway's reports, posted here).
        metrics.add_metric(name="DeliveryReportsHeld", unit="Count", value=outcome.held)
    return _acknowledge(upstream, "dlr") or json_response(
        200, {"status": "ok", "applied": outcome.applied, "unchanged": outcome.unchanged}
    )


@app.post("/callbacks/<provider>/inbound")
def inbound_sms(provider: str) -> Response:
    upstream = _provider(provider)
    wiring = gateway()
    # Its client gives up within seconds, and the deadline ends its retries: the answer comes before the timeout.
    store = wiring.prompt_store
    outcome = receive_inbound(
        upstream,
        _callback_request(),
        InboundDependencies(
            accounts=store,
            inbox=store,
            publish=lambda notification: wiring.prompt_notify_queue.publish([notification]),
            clock=utc_now,
            routes=lambda: route_table(prompt=True),
            conversations=store,
            opt_outs=store,
            notify_sweep_delay=timedelta(seconds=wiring.settings.inbound_sweep_delay_seconds),
            upstream_country=upstream_country(provider),
        ),
    )
    metrics.add_metric(name="InboundReceived", unit="Count", value=1 if outcome.stored else 0)
    if outcome.not_allowed:
        metrics.add_metric(name="InboundNotAllowed", unit="Count", value=1)
    return _acknowledge(upstream, "inbound") or json_response(200, {"status": "ok", "routed": outcome.routed})


def _acknowledge(upstream: Provider, kind: str) -> Response[Any] | None:
    """Some upstreams count a callback as delivered only on their own answer: Jasmin wants `ACK/Jasmin`
    (else it re-sends), Twilio wants TwiML for an inbound message. An adapter says so with `callback_ack`
    (plain text, any callback) or `inbound_ack` ((content type, body), inbound only)."""
    if kind == "inbound" and getattr(upstream, "inbound_ack", None):
        content_type, body = upstream.inbound_ack  # type: ignore[attr-defined]
        return Response(status_code=200, content_type=content_type, body=body)
    ack = getattr(upstream, "callback_ack", None)
    if ack:
        return Response(status_code=200, content_type="text/plain", body=str(ack))
    return None


@app.exception_handler(GatewayError)
def gateway_error(error: GatewayError) -> Response:
    logger.warning("callback refused", extra={"code": error.code, "reason": error.logged})
    if isinstance(error, Unavailable):
        # Not taken now, posted again by the upstream: no invocation error, so counted for the webhook's error-rate
        # alarm here (a DynamoDB or Parameter Store throttling every callback would otherwise raise none).
        metrics.add_metric(name="CallbacksNotTaken", unit="Count", value=1)
    status = status_for(error)
    # Retry-After on a 503: when to post the callback again.
    return json_response(status, {"status": "error", "message": error.message}, error_headers(error))


@app.exception_handler(TransactionUndecided)
def transaction_undecided(error: TransactionUndecided) -> Response:
    """A write DynamoDB kept cancelling for conflicts with other writes (or throttled) past its tries: nothing of it
    was written. A callback is taken whole by its resend (an SMS is stored once, a STOP applied once, a report
    applied once), so the upstream is told to post it again, 503 with Retry-After, the answer upstreams retry on;
    until session 38 it was a 500, which says the gateway failed and the callback may be done in part."""
    return _not_taken(str(error))


@app.exception_handler(ClientError)
def aws_error(error: ClientError) -> Response:
    """An AWS request throttled past botocore's retries (deadlines.THROTTLING_ERROR_CODES: DynamoDB's
    ProvisionedThroughputExceededException, ThrottlingException, RequestLimitExceeded): not applied, and what the
    callback did before it is taken once by its resend, so the upstream is told to post it again, 503 with
    Retry-After, as for a transaction left undecided (until session 38 an invocation error, a bare 5xx). Any other
    AWS error is raised as before: the invocation fails, logged with its traceback, counted in the alarm."""
    if not deadlines.throttled(error):
        raise error
    return _not_taken(f"a request was throttled: {deadlines.error_code(error)}")


@app.exception_handler(deadlines.DeadlineReached)
def deadline_reached(error: deadlines.DeadlineReached) -> Response:
    """An AWS call that failed with too little of the invocation left to try it again (`CallbackResolver` armed the
    deadline): told to post it again, as for a throttled request."""
    return _not_taken(str(error))


def _not_taken(why: str) -> Response:
    """The answer to a callback not taken now: 503 with Retry-After, for the upstream to post it again (taken once)."""
    return gateway_error(Unavailable(f"callback not taken yet ({why}); try again"))
