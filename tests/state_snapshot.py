"""Everything a request could change, captured for a before/after comparison: every DynamoDB item of every table,
every queue's message counts, every EventBridge Scheduler schedule, and (inside the items) every credit balance.

Works against the local stack's moto server (`clients_for_stack(stack)`) and inside `moto.mock_aws`
(`clients_for_moto()`), so "bad input changes nothing" reads the same in e2e and integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

# What a refused request may write: a failed /login is counted against its username (the attempt limit,
# docs/security.md). Everything else must stay exactly as it was.
REFUSAL_BOOKKEEPING = ("LOGINS#",)

QUEUE_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


@dataclass(frozen=True)
class StateClients:
    dynamodb: Any
    sqs: Any
    scheduler: Any


@dataclass(frozen=True)
class State:
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # table -> items, sorted
    queues: dict[str, dict[str, int]] = field(default_factory=dict)  # queue URL -> counts
    schedules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # group -> schedules, sorted

    def without(self, pk_prefixes: tuple[str, ...]) -> State:
        """This state but the items whose partition key starts with one of `pk_prefixes`."""
        return replace(
            self,
            items={
                table: [item for item in items if not str(item["pk"].get("S", "")).startswith(pk_prefixes)]
                for table, items in self.items.items()
            },
        )

    def without_attribute(self, name: str) -> State:
        """This state with attribute `name` left out of every item (bookkeeping a request may write on an item it
        otherwise leaves as it was)."""
        return replace(
            self,
            items={
                table: [{key: value for key, value in item.items() if key != name} for item in items]
                for table, items in self.items.items()
            },
        )

    def differences(self, other: State) -> list[str]:
        """What changed from `self` to `other`, one line per item, queue or schedule group (empty when equal)."""
        changes: list[str] = []
        for table in sorted(set(self.items) | set(other.items)):
            before = {_item_key(item): item for item in self.items.get(table, [])}
            after = {_item_key(item): item for item in other.items.get(table, [])}
            changes += [f"{table}: item added {after[k]}" for k in sorted(after.keys() - before.keys())]
            changes += [f"{table}: item removed {before[k]}" for k in sorted(before.keys() - after.keys())]
            changes += [
                f"{table}: item changed {before[k]} -> {after[k]}"
                for k in sorted(before.keys() & after.keys())
                if before[k] != after[k]
            ]
        for url in sorted(set(self.queues) | set(other.queues)):
            if self.queues.get(url) != other.queues.get(url):
                changes.append(f"queue {url.rsplit('/', 1)[-1]}: {self.queues.get(url)} -> {other.queues.get(url)}")
        for group in sorted(set(self.schedules) | set(other.schedules)):
            if self.schedules.get(group) != other.schedules.get(group):
                changes.append(f"schedules in {group}: {self.schedules.get(group)} -> {other.schedules.get(group)}")
        return changes


def clients_for_stack(stack: Any) -> StateClients:
    """The clients of a running `LocalStack` (its moto server)."""
    return StateClients(stack.client("dynamodb"), stack.client("sqs"), stack.client("scheduler"))


def clients_for_moto() -> StateClients:
    """Clients for the active `moto.mock_aws` (the `aws` fixture)."""
    from sms_gateway_tools.localstack.resources import aws_clients

    clients = aws_clients(None, ["dynamodb", "sqs", "scheduler"])
    return StateClients(clients["dynamodb"], clients["sqs"], clients["scheduler"])


def capture(clients: StateClients) -> State:
    items = {table: _scan(clients.dynamodb, table) for table in _paged(clients.dynamodb.list_tables, "TableNames")}
    queues = {
        url: {
            name: int(value)
            for name, value in clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(QUEUE_COUNTS))[
                "Attributes"
            ].items()
        }
        for url in clients.sqs.list_queues().get("QueueUrls", [])
    }
    schedules = {
        group["Name"]: sorted(
            (
                {key: schedule.get(key) for key in ("Name", "State", "Target")}
                for schedule in _paged(clients.scheduler.list_schedules, "Schedules", GroupName=group["Name"])
            ),
            key=lambda schedule: str(schedule["Name"]),
        )
        for group in _paged(clients.scheduler.list_schedule_groups, "ScheduleGroups")
    }
    return State(items=items, queues=queues, schedules=schedules)


def assert_unchanged(clients: StateClients, before: State, *, settle: float = 0.0) -> None:
    """Fails with the list of differences when the state is not `before` any more. `settle` first gives work a
    request may have started in the background (pollers, the scheduler) that long to show."""
    time.sleep(settle)
    changes = before.without(REFUSAL_BOOKKEEPING).differences(capture(clients).without(REFUSAL_BOOKKEEPING))
    assert not changes, "the request changed state:\n" + "\n".join(changes[:20])


def wait_until_quiet(clients: StateClients, *, quiet_for: float = 1.0, timeout: float = 30.0) -> State:
    """The state once nothing has changed for `quiet_for` seconds (queues drained, DLRs in), to compare against."""
    deadline = time.monotonic() + timeout
    last = capture(clients)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = capture(clients)
        if current != last or _in_flight(current):
            last, stable_since = current, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_for:
            return current
    busy = {url.rsplit("/", 1)[-1]: (counts, parked_records(url)) for url, counts in last.queues.items()}
    raise AssertionError(
        "the stack did not settle: " + "\n".join([*capture(clients).differences(last)[:10], f"queues: {busy}"])
    )


def _in_flight(state: State) -> bool:
    """Messages waiting or being processed on a live queue (a dead-letter queue only ever fills). A record hidden
    for longer than any function runs is parked, not being processed: a settle check waiting out the DLR wait, or
    a client notification waiting for its retry."""
    return any(
        counts.get("ApproximateNumberOfMessages")
        or counts.get("ApproximateNumberOfMessagesNotVisible", 0) > parked_records(url)
        for url, counts in state.queues.items()
        if "dead" not in url.lower() and "dlq" not in url.lower()
    )


# Longer than any function's Timeout in template.yaml: a record hidden beyond it is not being processed.
PARKED_AFTER_SECONDS = 900


def parked_records(url: str) -> int:
    """Records of the queue hidden for more than PARKED_AFTER_SECONDS yet."""
    from moto.core.utils import unix_time_millis

    from sms_gateway_tools.localstack.moto_server import queue_contents

    horizon = unix_time_millis() + PARKED_AFTER_SECONDS * 1000
    return sum(message.visible_at > horizon for message in queue_contents(url))


def _scan(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    items = list(_paged(dynamodb.scan, "Items", TableName=table, ConsistentRead=True))
    return sorted(items, key=_item_key)


def _item_key(item: dict[str, Any]) -> str:
    return repr(sorted((name, repr(value)) for name, value in item.items() if name in ("pk", "sk", "PK", "SK")))


def _paged(call: Callable[..., dict[str, Any]], key: str, **kwargs: Any) -> list[Any]:
    """Every page of a list or scan call (DynamoDB's LastEvaluatedKey / ExclusiveStartKey, or NextToken)."""
    results: list[Any] = []
    while True:
        page = call(**kwargs)
        results.extend(page.get(key, []))
        if page.get("LastEvaluatedKey"):
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        elif page.get("NextToken"):
            kwargs["NextToken"] = page["NextToken"]
        elif page.get("LastEvaluatedTableName"):
            kwargs["ExclusiveStartTableName"] = page["LastEvaluatedTableName"]
        else:
            return results
