"""EventBridge Scheduler adapter: one one-time schedule per scheduled batch."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sms_gateway.adapters import aws


def schedule_name(account_id: str, reference_id: int) -> str:
    return f"batch-{account_id}-{reference_id}"


def release_input(account_id: str, reference_id: int) -> str:
    """What the scheduled_dispatch function is invoked with to release a batch (schedules.release_schedule).
    The id as a string: a 63-bit number does not survive a tool that reads JSON numbers as doubles (jq 1.6,
    JavaScript), such as the one an operator replays the schedule DLQ with (docs/runbook.md)."""
    return json.dumps({"account_id": account_id, "reference_id": str(reference_id)})


class EventBridgeBatchScheduler:
    def __init__(
        self,
        *,
        group_name: str,
        target_arn: str,
        role_arn: str,
        dead_letter_arn: str | None = None,
        client: Any | None = None,
        precision_seconds: int = 60,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.precision_seconds = max(1, precision_seconds)
        self.clock = clock
        self.group_name = group_name
        self.target_arn = target_arn
        self.role_arn = role_arn
        self.dead_letter_arn = dead_letter_arn
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("scheduler")
        return self._client

    def schedule(self, account_id: str, reference_id: int, at: datetime) -> None:
        target: dict[str, Any] = {
            "Arn": self.target_arn,
            "RoleArn": self.role_arn,
            "Input": release_input(account_id, reference_id),
            "RetryPolicy": {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 3600},
        }
        if self.dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self.dead_letter_arn}
        # Named by the batch: a schedule that exists already was made by an earlier request for this batch (a send
        # finished after its first request died, logic/send.finish_stored_batch).
        with contextlib.suppress(self.client.exceptions.ConflictException):
            self.client.create_schedule(
                Name=schedule_name(account_id, reference_id),
                GroupName=self.group_name,
                ScheduleExpression=f"at({self.firing_time(at).strftime('%Y-%m-%dT%H:%M:%S')})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target=target,
            )

    def firing_time(self, at: datetime) -> datetime:
        """The schedule's time for a batch due `at`, in UTC: rounded up to the scheduler's precision, as Scheduler
        fires anywhere within the minute of its time (a schedule at 10:00:30 could fire at 10:00:00, before the
        send_at); and a precision ahead of now at least, as a send finished after its first request died may be
        due already (a time in the past is no schedule to make)."""
        earliest = max(at, self.clock() + timedelta(seconds=self.precision_seconds)).astimezone(UTC)
        seconds = math.ceil(earliest.timestamp() / self.precision_seconds) * self.precision_seconds
        return datetime.fromtimestamp(seconds, tz=UTC)

    def schedule_name(self, account_id: str, reference_id: int) -> str:
        return f"{self.group_name}/{schedule_name(account_id, reference_id)}"

    def cancel(self, account_id: str, reference_id: int) -> bool:
        try:
            self.client.delete_schedule(Name=schedule_name(account_id, reference_id), GroupName=self.group_name)
        except self.client.exceptions.ResourceNotFoundException:
            return False
        return True


class LambdaBatchRelease:
    """Releases a scheduled batch as its schedule does: invokes the scheduled_dispatch function asynchronously with
    the schedule's Input, so the release runs there with Lambda's two retries and the schedule DLQ after them (its
    on-failure destination), and the caller needs no permission but to invoke it."""

    def __init__(self, *, function_arn: str, client: Any | None = None) -> None:
        self.function_arn = function_arn
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("lambda")
        return self._client

    def release(self, account_id: str, reference_id: int) -> None:
        """Returns once Lambda has queued the invocation; raises when it refused it."""
        answer = self.client.invoke(
            FunctionName=self.function_arn,
            InvocationType="Event",
            Payload=release_input(account_id, reference_id).encode(),
        )
        if answer.get("StatusCode") != 202:
            raise RuntimeError(f"Lambda did not queue the release of batch {reference_id}: {answer.get('StatusCode')}")
