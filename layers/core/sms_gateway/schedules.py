"""The glue between a one-time schedule's invocation and the release of its batch (kept apart from consumers.py,
so the scheduled_dispatch function does not import the dispatch and webhook machinery it never uses: it only queues
the reports of messages it fails)."""

from __future__ import annotations

from typing import Any

from sms_gateway.bootstrap import gateway
from sms_gateway.domain.models import utc_now
from sms_gateway.logic.notify import notifications_of
from sms_gateway.logic.scheduled import release_scheduled_batch


def release_schedule(event: dict[str, Any]) -> dict[str, Any]:
    wiring = gateway()
    released = release_scheduled_batch(
        str(event["account_id"]),
        int(event["reference_id"]),
        messages=wiring.store,
        accounts=wiring.store,
        opt_outs=wiring.store,
        queue=wiring.dispatch_queue,
        clock=utc_now,
        announce=lambda changes: wiring.notify_queue.publish(notifications_of(changes)),
        finish_cancels=True,
    )
    return {"released": released}
