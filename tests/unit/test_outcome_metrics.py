"""What the dashboard's business metrics count: final statuses once each, latency only after a submit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sms_gateway.domain.models import Message, StatusChange
from sms_gateway.domain.status import MessageStatus
from sms_gateway.observability import metrics
from sms_gateway.outcome_metrics import count_final_statuses, report_latency_ms

SUBMITTED = "2026-01-02T10:00:00.000Z"


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def recorded() -> dict[str, list[float]]:
    """The values the shared Metrics object holds, by metric name (what its next flush would publish)."""
    return {name: list(entry["Value"]) for name, entry in metrics.metric_set.items()}


def message(status: MessageStatus, **fields: Any) -> Message:
    base: dict[str, Any] = {
        "account_id": "7",
        "reference_id": 1,
        "message_id": 2,
        "msisdn": "+2348020000000",
        "sender": "48974",
        "text": "hi",
        "encoding": "GSM-7",
        "parts": 1,
        "status": status,
        "created_at": "2026-01-02T09:59:59.000Z",
    }
    return Message.model_validate({**base, **fields})


def test_each_final_status_counts_under_its_own_metric_and_unchanged_writes_do_not_count():
    changes = [
        StatusChange(message=message(MessageStatus.DELIVERED), changed=True),
        StatusChange(message=message(MessageStatus.DELIVERED), changed=True),
        StatusChange(message=message(MessageStatus.FAILED), changed=True),
        StatusChange(message=message(MessageStatus.EXPIRED), changed=True),
        StatusChange(message=message(MessageStatus.REJECTED), changed=True),
        # A duplicate DLR: the conditional write kept the message where it was
        StatusChange(message=message(MessageStatus.DELIVERED), changed=False),
        # Not final, or the client's own act: not an outcome of delivery
        StatusChange(message=message(MessageStatus.SUBMITTED), changed=True),
        StatusChange(message=message(MessageStatus.CANCELLED), changed=True),
    ]
    count_final_statuses(changes)
    assert recorded() == {
        "MessagesDelivered": [1.0, 1.0],
        "MessagesUndelivered": [1.0],
        "MessagesExpired": [1.0],
        "MessagesRejected": [1.0],
    }


def test_latency_runs_from_our_submit_to_the_upstream_s_report_time():
    delivered = message(
        MessageStatus.DELIVERED,
        status_at={"submitted": SUBMITTED, "delivered": "2026-01-02T10:00:09.000Z"},
        reported_at="2026-01-02T10:00:03.250Z",
    )
    assert report_latency_ms(delivered) == 3250.0
    count_final_statuses([StatusChange(message=delivered, changed=True)])
    assert recorded()["DeliveryReportLatency"] == [3250.0]
    assert metrics.metric_set["DeliveryReportLatency"]["Unit"] == "Milliseconds"


@pytest.mark.parametrize(
    ("reported_at", "expected"),
    [
        # No report time, or one we cannot read: when the report reached us
        (None, 9000.0),
        ("yesterday-ish", 9000.0),
        # A time without a zone is taken as UTC
        ("2026-01-02T10:00:01", 1000.0),
        # An upstream clock behind ours never gives a negative latency
        ("2026-01-02T09:59:58Z", 0.0),
    ],
)
def test_latency_falls_back_to_our_receipt_time_and_is_never_negative(reported_at, expected):
    delivered = message(
        MessageStatus.DELIVERED,
        status_at={"submitted": SUBMITTED, "delivered": "2026-01-02T10:00:09.000Z"},
        reported_at=reported_at,
    )
    assert report_latency_ms(delivered) == expected


def test_a_message_that_never_reached_an_upstream_has_no_latency():
    expired = message(MessageStatus.EXPIRED, status_at={"queued": SUBMITTED, "expired": "2026-01-03T10:00:00Z"})
    count_final_statuses([StatusChange(message=expired, changed=True)])
    assert report_latency_ms(expired) is None
    assert recorded() == {"MessagesExpired": [1.0]}
