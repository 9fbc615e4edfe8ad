"""EventBridge Scheduler, locally: moto stores schedules but never fires them; this loop does. It also fires the
template's EventBridge rules (a function's Schedule event, `rate(...)`): those moto never sees at all."""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sms_gateway_tools.localstack.lambdas import LocalFunction, async_failure_record
from sms_gateway_tools.localstack.timers import DelayedExecutor

logger = logging.getLogger("sms_gateway_tools.localstack.scheduler")

POLL_INTERVAL = 0.5
# AWS retries a failed target up to 185 times over 24 hours; locally a few quick retries show the path.
MAX_LOCAL_RETRIES = 3
RETRY_DELAY = 0.5
_AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")


def parse_at(expression: str, timezone: str | None = None) -> datetime | None:
    """`at(yyyy-mm-ddThh:mm:ss)` in `timezone` (default UTC) as an aware UTC datetime; None for rate/cron."""
    found = _AT.match(expression.strip())
    if found is None:
        return None
    local = datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")
    zone = ZoneInfo(timezone) if timezone and timezone.upper() != "UTC" else UTC
    return local.replace(tzinfo=zone).astimezone(UTC)


def rule_event(function: LocalFunction) -> dict[str, Any]:
    """What an EventBridge rule's Schedule event hands the function."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": function.account_id,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": function.region,
        "resources": [f"arn:aws:events:{function.region}:{function.account_id}:rule/{function.function_name}"],
        "detail": {},
    }


@dataclass
class _Rule:
    function: LocalFunction
    period: float
    # When it is next due, on the monotonic clock.
    due: float


class SchedulerLoop:
    """Fires due one-time schedules of `group_names` at their function (by ARN) or SQS queue target, and invokes
    each function of `rules` (function, seconds between invocations) as its rate rule would, asynchronously."""

    def __init__(
        self,
        scheduler: Any,
        sqs: Any,
        group_names: list[str],
        functions_by_arn: Mapping[str, LocalFunction],
        *,
        interval: float = POLL_INTERVAL,
        max_retries: int = MAX_LOCAL_RETRIES,
        retry_delay: float = RETRY_DELAY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rules: Sequence[tuple[LocalFunction, float]] = (),
    ) -> None:
        self.scheduler = scheduler
        # A rule first fires one period after start, as a new rule on AWS does.
        self._rules = [_Rule(function, period, time.monotonic() + period) for function, period in rules]
        self.sqs = sqs
        self.group_names = list(group_names)
        self.functions_by_arn = dict(functions_by_arn)
        self.interval = interval
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.clock = clock
        self._fired: set[tuple[str, str, str, str]] = set()
        self._warned: set[tuple[str, str]] = set()
        self._known: dict[tuple[str, str], tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localstack-scheduler", daemon=True)
        self._jobs = DelayedExecutor("localstack-scheduler", max_workers=4)
        self.fired_count = 0

    def start(self) -> None:
        self._jobs.start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._jobs.stop(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception as error:
                if not self._stopping.is_set():
                    logger.warning("scheduler loop: %s", error)
            self._stopping.wait(self.interval)

    def fire_rules(self) -> int:
        """Invokes each rule's function whose period ran out (a slow run delays none: Lambda would run them side by
        side); returns how many it started."""
        started = 0
        now = time.monotonic()
        for rule in self._rules:
            if rule.due <= now:
                rule.due = now + rule.period
                self._jobs.call_later(
                    0, functools.partial(self._run_async, rule.function, rule_event(rule.function), 0)
                )
                started += 1
        return started

    def tick(self) -> int:
        """One pass over every group; returns how many schedules were started."""
        self.fire_rules()
        started = 0
        now = self.clock()
        listed: set[tuple[str, str]] = set()
        for group in self.group_names:
            for summary in self._summaries(group):
                if self._stopping.is_set():
                    return started
                name = str(summary["Name"])
                listed.add((group, name))
                schedule = self._details(group, name, summary)
                if schedule is not None and self._maybe_fire(group, schedule, now):
                    started += 1
        for gone in set(self._known) - listed:
            del self._known[gone]
        return started

    def _summaries(self, group: str) -> list[dict[str, Any]]:
        summaries: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"GroupName": group}
        while True:
            page = self.scheduler.list_schedules(**kwargs)
            summaries.extend(page.get("Schedules") or [])
            token = page.get("NextToken")
            if not token:
                return summaries
            kwargs["NextToken"] = token

    def _details(self, group: str, name: str, summary: Mapping[str, Any]) -> dict[str, Any] | None:
        """The full schedule, read again only when it was created or modified since the last read."""
        version = (
            str(summary.get("CreationDate")),
            str(summary.get("LastModificationDate")),
            summary.get("State"),
        )
        known = self._known.get((group, name))
        if known is not None and known[0] == version:
            return known[1]
        try:
            schedule = dict(self.scheduler.get_schedule(GroupName=group, Name=name))
        except self.scheduler.exceptions.ResourceNotFoundException:
            return None
        self._known[(group, name)] = (version, schedule)
        return schedule

    def _maybe_fire(self, group: str, schedule: Mapping[str, Any], now: datetime) -> bool:
        name = str(schedule["Name"])
        expression = str(schedule.get("ScheduleExpression", ""))
        key = (group, name, expression, str(schedule.get("CreationDate", "")))
        if key in self._fired or schedule.get("State", "ENABLED") != "ENABLED":
            return False
        due = parse_at(expression, schedule.get("ScheduleExpressionTimezone"))
        if due is None:
            if (group, name) not in self._warned:
                self._warned.add((group, name))
                logger.warning("schedule %s/%s: only at(...) expressions fire locally, not %r", group, name, expression)
            return False
        if due > now:
            return False
        self._fired.add(key)
        self.fired_count += 1
        target = dict(schedule.get("Target") or {})
        retries = min(int((target.get("RetryPolicy") or {}).get("MaximumRetryAttempts", 185)), self.max_retries)
        self._jobs.call_later(0, lambda: self._attempt(group, schedule, target, 0, retries))
        return True

    def _attempt(
        self, group: str, schedule: Mapping[str, Any], target: Mapping[str, Any], attempt: int, retries: int
    ) -> None:
        over = self._try(
            f"schedule {group}/{schedule['Name']}",
            attempt,
            retries,
            lambda: self._invoke(target),
            again=lambda: self._attempt(group, schedule, target, attempt + 1, retries),
            give_up=lambda error: self._dead_letter(schedule, target, error, attempt + 1),
        )
        if over:
            self._complete(group, schedule)

    def _try(
        self,
        label: str,
        attempt: int,
        retries: int,
        action: Callable[[], None],
        *,
        again: Callable[[], None],
        give_up: Callable[[Exception], None],
    ) -> bool:
        """Runs attempt `attempt` (from 0) of `action`: after a failure `again` runs a little later while retries
        remain, then `give_up`. True once it is over (it succeeded, or gave up); False while a retry is due or the
        loop is stopping."""
        try:
            action()
            return True
        except Exception as error:
            if self._stopping.is_set():
                logger.warning("%s: attempt %d failed while stopping: %s", label, attempt + 1, error)
                return False
            if attempt < retries:
                logger.warning("%s: attempt %d failed (%s), retrying", label, attempt + 1, error)
                if self._jobs.call_later(self.retry_delay * (attempt + 1), again):
                    return False
            logger.error("%s: failed after %d attempts: %s", label, attempt + 1, error)
            give_up(error)
            return True

    def _invoke(self, target: Mapping[str, Any]) -> None:
        """Hands the schedule's input to its target; raises only when the target refuses it (the scheduler's retry
        policy and dead-letter queue cover that, and nothing else)."""
        arn = str(target.get("Arn", ""))
        raw_input = target.get("Input")
        function = self.functions_by_arn.get(arn)
        if function is not None:
            # Scheduler invokes a function asynchronously: Lambda accepts the event at once, and the function's own
            # errors are Lambda's to retry and then send to its on-failure destination, never the scheduler's.
            event = json.loads(raw_input) if raw_input else {}
            self._jobs.call_later(0, lambda: self._run_async(function, event, 0))
            return
        if arn.startswith("arn:aws:sqs:"):
            self._send_to_queue(arn, raw_input or "{}", {}, target.get("SqsParameters") or {})
            return
        raise LookupError(f"no local function or queue for target {arn}")

    def invoke_async(self, function_name_or_arn: str, event: Any) -> bool:
        """Lambda's asynchronous Invoke of a function this loop knows (by ARN or name): run a moment later, retried
        and sent to its on-failure destination as a schedule's invocation is. False for a function it does not know."""
        function = self.functions_by_arn.get(function_name_or_arn) or next(
            (f for f in self.functions_by_arn.values() if f.function_name == function_name_or_arn), None
        )
        if function is None:
            return False
        self._jobs.call_later(0, lambda: self._run_async(function, event, 0))
        return True

    def _run_async(self, function: LocalFunction, event: Any, attempt: int) -> None:
        self._try(
            f"{function.logical_id} (asynchronous)",
            attempt,
            min(function.async_retries, self.max_retries),
            lambda: function.invoke(event),
            again=lambda: self._run_async(function, event, attempt + 1),
            give_up=lambda error: self._send_failure_record(function, event, error, attempt + 1),
        )

    def _send_failure_record(self, function: LocalFunction, event: Any, error: Exception, attempts: int) -> None:
        """Lambda's on-failure destination, when the function names one; otherwise it discards the event."""
        if function.on_failure_queue_arn is None:
            return
        record = async_failure_record(function, event, error, attempts)
        try:
            self._send_to_queue(function.on_failure_queue_arn, json.dumps(record), {}, {})
        except Exception as destination_error:
            logger.error("%s: on-failure destination failed: %s", function.logical_id, destination_error)

    def _dead_letter(
        self, schedule: Mapping[str, Any], target: Mapping[str, Any], error: Exception, attempts: int
    ) -> None:
        dlq_arn = (target.get("DeadLetterConfig") or {}).get("Arn")
        if not dlq_arn:
            return
        attributes = {
            "ERROR_CODE": {"DataType": "String", "StringValue": type(error).__name__},
            "ERROR_MESSAGE": {"DataType": "String", "StringValue": str(error)[:1000] or type(error).__name__},
            "EXHAUSTED_RETRY_CONDITION": {"DataType": "String", "StringValue": "MaximumRetryAttempts"},
            "RETRY_ATTEMPTS": {"DataType": "Number", "StringValue": str(max(attempts - 1, 0))},
            "SCHEDULE_ARN": {"DataType": "String", "StringValue": str(schedule.get("Arn", ""))},
            "TARGET_ARN": {"DataType": "String", "StringValue": str(target.get("Arn", ""))},
        }
        try:
            self._send_to_queue(str(dlq_arn), str(target.get("Input") or "{}"), attributes, {})
        except Exception as dlq_error:
            logger.error("schedule %s: dead-letter queue %s failed: %s", schedule.get("Name"), dlq_arn, dlq_error)

    def _send_to_queue(
        self, arn: str, body: str, attributes: Mapping[str, Any], sqs_parameters: Mapping[str, Any]
    ) -> None:
        queue_name = arn.rsplit(":", 1)[-1]
        account = arn.split(":")[4]
        url = self.sqs.get_queue_url(QueueName=queue_name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        kwargs: dict[str, Any] = {"QueueUrl": url, "MessageBody": body}
        if attributes:
            kwargs["MessageAttributes"] = dict(attributes)
        if queue_name.endswith(".fifo"):
            kwargs["MessageGroupId"] = str(sqs_parameters.get("MessageGroupId") or "scheduler")
            kwargs["MessageDeduplicationId"] = f"{int(time.time() * 1000)}-{abs(hash(body))}"
        self.sqs.send_message(**kwargs)

    def _complete(self, group: str, schedule: Mapping[str, Any]) -> None:
        if schedule.get("ActionAfterCompletion") != "DELETE":
            return
        try:
            self.scheduler.delete_schedule(GroupName=group, Name=schedule["Name"])
        except self.scheduler.exceptions.ResourceNotFoundException:
            pass
        except Exception as error:
            logger.warning("schedule %s/%s: delete failed: %s", group, schedule.get("Name"), error)
