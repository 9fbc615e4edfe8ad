"""The glue between a one-time schedule's invocation and the release of its batch (kept apart from consumers.py,
so the scheduled_dispatch function does not import the dispatch and webhook machinery it never uses: it only queues
the reports of messages it fails)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sms_gateway.bootstrap import gateway
from sms_gateway.domain.models import utc_now
from sms_gateway.logic.notify import notifications_of
from sms_gateway.logic.scheduled import release_scheduled_batch


def release_schedule(event: dict[str, Any]) -> dict[str, Any]:
    """`event`: a schedule's Input, `{"account_id", "reference_id"}` (the id a string; a number in schedules made
    before 2026-12-06), or Lambda's failure record of one from the schedule DLQ (its `requestPayload`), which an
    operator replays as it is (docs/runbook.md), so no tool re-encodes the id on the way."""
    release = event.get("requestPayload", event)
    wiring = gateway()
    released = release_scheduled_batch(
        str(release["account_id"]),
        int(release["reference_id"]),
        messages=wiring.store,
        accounts=wiring.store,
        opt_outs=wiring.store,
        queue=wiring.dispatch_queue,
        clock=utc_now,
        announce=lambda changes: wiring.notify_queue.publish(notifications_of(changes)),
        finish_cancels=True,
        validity=timedelta(hours=wiring.settings.message_validity_hours),
    )
    return {"released": released}
