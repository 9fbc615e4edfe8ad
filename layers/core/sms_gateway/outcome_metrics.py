"""The business metrics the operations dashboard and alarms read: messages accepted, final statuses and their
delivery-report latency, upstream submit failures. Dimensions stay low-cardinality: never an account."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from sms_gateway.domain.models import Message, StatusChange
from sms_gateway.domain.status import MessageStatus
from sms_gateway.observability import metrics

# One metric per final status a message can reach after it was accepted (cancelled is a client's own act).
FINAL_STATUS_METRICS: Mapping[MessageStatus, str] = {
    MessageStatus.DELIVERED: "MessagesDelivered",
    MessageStatus.FAILED: "MessagesUndelivered",
    MessageStatus.EXPIRED: "MessagesExpired",
    MessageStatus.REJECTED: "MessagesRejected",
}
UPSTREAM_FAILURES = "UpstreamFailures"
MESSAGES_ACCEPTED = "MessagesAccepted"
TRANSIENT, PERMANENT = "transient", "permanent"


def count_accepted(messages: int) -> None:
    """Messages (not requests) a send stored, once it stored all of them: a batch of 500 recipients counts 500.
    Printed at once, not with the invocation's other metrics at its end: a request that dies after storing them (a
    timeout while queueing or answering) has counted them, and the retry that finishes it counts only what it adds
    (logic.send.finish_stored_batch); until 2026-12-07 such a send was never counted."""
    if messages:
        _print_now(MESSAGES_ACCEPTED, messages, {})


def count_withdrawn(messages: int) -> None:
    """Messages counted accepted (count_accepted) that the send withdrew (failed `not_queued`, refunded) when it
    could not queue them: taken back out of MessagesAccepted (a negative count, netted in the dashboard's Sum), as the
    client was told they were not sent (a 503, or the send's answer) and sends them again, counted then. Until
    2026-12-07 they were counted accepted twice, and showed as accepted and never submitted."""
    if messages:
        _print_now(MESSAGES_ACCEPTED, -messages, {})


def count_sends_undone() -> None:
    """A send that could not be stored or queued (in time) and was undone: the caller got a 503 to retry. The
    api function's error-rate alarm counts these with its invocation errors."""
    metrics.add_metric(name="SendsUndone", unit=MetricUnit.Count, value=1)


def count_final_statuses(changes: Iterable[StatusChange]) -> None:
    """Each change that moved a message into a final status counts once under that status; one that reached it
    after a submit also gives the delivery-report latency (submitted to the report's time), for p50/p90."""
    for change in changes:
        metric = FINAL_STATUS_METRICS.get(change.message.status)
        if not change.changed or metric is None:
            continue
        metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
        latency = report_latency_ms(change.message)
        if latency is not None:
            metrics.add_metric(name="DeliveryReportLatency", unit=MetricUnit.Milliseconds, value=latency)


def report_latency_ms(message: Message) -> float | None:
    """Milliseconds from our submit to the upstream's report (its own time when it gave one we can read, else
    when the report reached us); None for a message never submitted."""
    submitted = _parsed(message.status_at.get(str(MessageStatus.SUBMITTED)))
    reported = _parsed(message.reported_at) or _parsed(message.status_at.get(str(message.status)))
    if submitted is None or reported is None:
        return None
    # An upstream's clock running behind ours must not give a negative latency.
    return max((reported - submitted).total_seconds() * 1000, 0.0)


def _parsed(timestamp: str | None) -> datetime | None:
    if not timestamp:
        return None
    try:
        parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    # A naive time (an upstream that gave no zone) would not compare with ours: it is taken as UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def count_upstream_failures(failures: Mapping[tuple[str, str], int]) -> None:
    """Submit attempts an upstream did not take, by (upstream, transient|permanent). The total (service only)
    feeds the failure-rate alarm; each upstream's own series (dimensions upstream and failure) the dashboard."""
    total = sum(failures.values())
    if not total:
        return
    metrics.add_metric(name=UPSTREAM_FAILURES, unit=MetricUnit.Count, value=total)
    for (upstream, failure), count in sorted(failures.items()):
        # Dimensions differ from the shared Metrics object's, so each upstream's series is its own EMF record.
        _print_now(UPSTREAM_FAILURES, count, {"upstream": upstream, "failure": failure})


def _print_now(name: str, count: int, dimensions: Mapping[str, str]) -> None:
    """A count printed as its own EMF record at once, with the shared Metrics object's dimensions and `dimensions`."""
    with single_metric(
        name=name,
        unit=MetricUnit.Count,
        value=count,
        namespace=metrics.namespace,
        # single_metric leaves out the service dimension the shared object adds itself.
        default_dimensions={"service": str(metrics.service), **metrics.default_dimensions},
    ) as metric:
        for dimension, value in dimensions.items():
            metric.add_dimension(name=dimension, value=value)
