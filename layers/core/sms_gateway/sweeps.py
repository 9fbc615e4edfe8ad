"""The glue between the sweeper's scheduled invocation and its logic (kept apart from consumers.py, so the sweeper
function does not import the dispatch and webhook machinery it never uses)."""

from __future__ import annotations

from typing import Any

from sms_gateway.bootstrap import gateway
from sms_gateway.domain.models import utc_now
from sms_gateway.logic.sweep import SweepDependencies, sweep_notifications
from sms_gateway.observability import metrics


def sweep(event: dict[str, Any]) -> dict[str, Any]:
    """The EventBridge rule's event says nothing the sweep needs: it only says it is time."""
    wiring = gateway()
    outcome = sweep_notifications(
        SweepDependencies(
            inbox=wiring.store,
            messages=wiring.store,
            publish=lambda notification: wiring.notify_queue.publish([notification]),
            clock=utc_now,
        )
    )
    metrics.add_metric(name="InboundNotificationsSwept", unit="Count", value=outcome.inbound_queued)
    metrics.add_metric(name="DeliveryReportsSwept", unit="Count", value=outcome.reports_queued)
    return {"inbound_queued": outcome.inbound_queued, "reports_queued": outcome.reports_queued}
