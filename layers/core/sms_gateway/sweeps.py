"""The glue between the sweeper's scheduled invocation and its logic (kept apart from consumers.py, so the sweeper
function does not import the dispatch and webhook machinery it never uses)."""

from __future__ import annotations

from typing import Any

from sms_gateway import deadlines
from sms_gateway.bootstrap import gateway
from sms_gateway.domain.models import utc_now
from sms_gateway.logic.sweep import SweepDependencies, sweep_notifications
from sms_gateway.observability import metrics

# Seconds of the invocation kept back when the sweep claims another page: the page's work (a few seconds) and one
# SQS or DynamoDB call that gets no answer (13 s, adapters/aws.py), within the function's Timeout (template.yaml).
SWEEP_RESERVE_SECONDS = 20


def sweep(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The EventBridge rule's event says nothing the sweep needs: it only says it is time."""
    wiring = gateway()
    out_of_time = deadlines.out_of_time_after(
        getattr(context, "get_remaining_time_in_millis", None), reserve_seconds=SWEEP_RESERVE_SECONDS
    )
    # Armed: once the run is out of time, a failing call is not retried (botocore's five attempts and back-offs
    # take about a minute, the function's whole Timeout: a run whose last page met a notify queue outage was
    # killed mid-page). What it leaves claimed is taken again once its claim runs out.
    with deadlines.armed(out_of_time):
        outcome = sweep_notifications(
            SweepDependencies(
                inbox=wiring.store,
                messages=wiring.store,
                publish=wiring.notify_queue.publish,
                clock=utc_now,
                out_of_time=out_of_time,
                scheduler=wiring.scheduler,
                batch_release=wiring.batch_release,
            )
        )
    metrics.add_metric(name="InboundNotificationsSwept", unit="Count", value=outcome.inbound_queued)
    metrics.add_metric(name="DeliveryReportsSwept", unit="Count", value=outcome.reports_queued)
    metrics.add_metric(name="UnreleasedBatchesSwept", unit="Count", value=outcome.batches_released)
    return {
        "inbound_queued": outcome.inbound_queued,
        "reports_queued": outcome.reports_queued,
        "batches_released": outcome.batches_released,
    }
