"""Scheduled batches whose schedule was never made (the api Lambda killed between storing the batch and scheduling
it): the sweeper function finds them in `sweep-index` and releases them through scheduled_dispatch, once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest

from sms_gateway.domain.models import SCHEDULED_RELEASE_SWEEP_MARGIN
from tests.conftest import FakeContext, load_event, load_function
from tests.integration.test_batches_dialect import AIRTEL, MTN, api, call, schedule_names, send  # noqa: F401 (fixture)
from tests.integration.test_notifications_and_inbound_edges import sweeper_runs
from tests.integration.test_routing_dispatch import dispatch_all
from tests.integration.test_send_path import RecordingUpstream, balance, queued_records, upstream  # noqa: F401

# Minutes from now to a run of the sweeper just before and just after a batch due in an hour may be released by it.
BEFORE_THE_MARGIN = 60 + SCHEDULED_RELEASE_SWEEP_MARGIN.total_seconds() / 60 - 1
AFTER_THE_MARGIN = 60 + SCHEDULED_RELEASE_SWEEP_MARGIN.total_seconds() / 60 + 1


def an_hour_ahead() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


class Killed(BaseException):
    """The api Lambda killed outright: no `except Exception` runs, so neither does the send's undo (withdraw)."""


class AsyncLambda:
    """Lambda's asynchronous invocations of scheduled_dispatch, as the sweeper makes them: each is queued by `invoke`
    (202) and run by `run`, through the function's handler, as Lambda runs it a moment later."""

    def __init__(self, function_arn: str) -> None:
        self.function_arn = function_arn
        self.invocations: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        assert (FunctionName, InvocationType) == (self.function_arn, "Event")
        event = json.loads(Payload)
        self.invocations.append(event)
        self.pending.append(event)
        return {"StatusCode": 202}

    def run(self) -> list[Any]:
        ran, self.pending = self.pending, []
        return [load_function("scheduled_dispatch").handler(event, FakeContext()) for event in ran]


@pytest.fixture
def lambda_(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AsyncLambda:
    from sms_gateway.bootstrap import gateway

    fake = AsyncLambda(aws["SCHEDULED_DISPATCH_FUNCTION_ARN"])
    monkeypatch.setattr(gateway().batch_release, "_client", fake)
    return fake


class Sweeping(NamedTuple):
    aws: dict[str, str]
    account: dict[str, Any]
    api: Any
    upstream: RecordingUpstream
    lambda_: AsyncLambda
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def sweeping(aws, account, api, upstream, lambda_, monkeypatch) -> Sweeping:  # noqa: F811
    """An account with 100 credits, the api, an upstream recording its submits, Lambda's asynchronous invocations of
    scheduled_dispatch, and the test's monkeypatch."""
    return Sweeping(aws, account, api, upstream, lambda_, monkeypatch)


def kill_the_api_before_it_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    from sms_gateway.adapters.scheduler import EventBridgeBatchScheduler

    def killed(self: Any, account_id: str, reference_id: int, at: datetime) -> None:
        raise Killed

    monkeypatch.setattr(EventBridgeBatchScheduler, "schedule", killed)


def orphan(api: Any, account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> int:  # noqa: F811
    """A batch of two scheduled an hour ahead, stored and charged, whose api Lambda was killed before it made the
    schedule (and whose client did not retry): its reference id."""
    with monkeypatch.context() as patched:
        kill_the_api_before_it_schedules(patched)
        with pytest.raises(Killed):
            send(api, account["token"], [AIRTEL, MTN], send_at=an_hour_ahead())
    [batch] = raw_batches(account["account_id"])
    assert batch["status"]["S"] == "scheduled"
    assert balance(account["account_id"]) == 98
    return int(batch["reference_id"]["N"])


def raw_batches(account_id: str) -> list[dict[str, Any]]:
    from tests.integration.test_batches_dialect import stored_batches

    return stored_batches(account_id)


def statuses(api: Any, account: dict[str, Any], reference_id: int) -> set[str]:  # noqa: F811
    status, report = call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}/delivery_report")
    assert status == 200, report
    return {entry["status"] for entry in report["data"]}


def sent_to(upstream: RecordingUpstream) -> list[str]:  # noqa: F811
    return sorted(submit["to"] for submit in upstream.submits)


def test_a_batch_whose_schedule_was_never_made_is_released_and_sent_once_after_the_margin(sweeping: Sweeping) -> None:
    # Given a scheduled batch whose api Lambda was killed between storing it and making its schedule
    reference_id = orphan(sweeping.api, sweeping.account, sweeping.monkeypatch)
    assert schedule_names(sweeping.aws) == []
    # When the sweeper runs at its send time and just before the margin, then it is left to a schedule that may fire
    assert sweeper_runs(sweeping.monkeypatch, 60)["batches_released"] == 0
    assert sweeper_runs(sweeping.monkeypatch, BEFORE_THE_MARGIN)["batches_released"] == 0
    assert sweeping.lambda_.invocations == []
    # Then the first run after the margin invokes scheduled_dispatch with the schedule's own input
    assert sweeper_runs(sweeping.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
    assert sweeping.lambda_.invocations == [
        {"account_id": sweeping.account["account_id"], "reference_id": str(reference_id)}
    ]
    # ... which releases it, and the dispatcher sends each message once
    assert sweeping.lambda_.run() == [{"released": True}]
    assert dispatch_all(sweeping.aws) == {"batchItemFailures": []}
    assert sent_to(sweeping.upstream) == sorted([AIRTEL, MTN])
    assert statuses(sweeping.api, sweeping.account, reference_id) == {"submitted"}
    # And the batch left the sweep index with its release: no later run takes it, and its credits stay spent on it
    [batch] = raw_batches(sweeping.account["account_id"])
    assert "sweep_at" not in batch and "sweep_shard" not in batch
    assert sweeper_runs(sweeping.monkeypatch, AFTER_THE_MARGIN + 60)["batches_released"] == 0
    assert len(sweeping.lambda_.invocations) == 1
    assert dispatch_all(sweeping.aws) == {"batchItemFailures": []}
    assert len(sweeping.upstream.submits) == 2
    assert balance(sweeping.account["account_id"]) == 98


def fire_schedule(account: dict[str, Any], reference_id: int) -> Any:
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=str(reference_id))
    return load_function("scheduled_dispatch").handler(event, FakeContext())


def test_a_batch_its_schedule_released_is_not_touched_by_the_sweeper(sweeping: Sweeping) -> None:
    # Given a batch scheduled an hour ahead as usual, whose schedule fires at its time
    status, sent = send(sweeping.api, sweeping.account["token"], [AIRTEL, MTN], send_at=an_hour_ahead())
    assert status == 200, sent
    reference_id = int(sent["reference_id"])
    [batch] = raw_batches(sweeping.account["account_id"])
    assert batch["sweep_shard"]["S"].startswith("SCHEDULED#")
    assert fire_schedule(sweeping.account, reference_id) == {"released": True}
    dispatch_all(sweeping.aws)
    # When the sweeper runs after the margin
    assert sweeper_runs(sweeping.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 0
    # Then it invoked nothing, and each message went out once
    assert sweeping.lambda_.invocations == []
    assert sent_to(sweeping.upstream) == sorted([AIRTEL, MTN])


def test_a_schedule_that_fires_late_after_the_sweeper_released_its_batch_sends_nothing_twice(
    sweeping: Sweeping,
) -> None:
    # Given a batch scheduled an hour ahead whose schedule has not fired by the margin (Scheduler still retrying an
    # invoke Lambda refused)
    status, sent = send(sweeping.api, sweeping.account["token"], [AIRTEL, MTN], send_at=an_hour_ahead())
    assert status == 200, sent
    reference_id = int(sent["reference_id"])
    assert len(schedule_names(sweeping.aws)) == 1
    # When the sweeper releases it
    assert sweeper_runs(sweeping.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
    # Then its schedule is deleted first, so it does not fire later
    assert schedule_names(sweeping.aws) == []
    assert sweeping.lambda_.run() == [{"released": True}]
    dispatch_all(sweeping.aws)
    assert sent_to(sweeping.upstream) == sorted([AIRTEL, MTN])
    # And a firing Scheduler had already made releases nothing more: nothing is sent twice, nothing refunded
    assert fire_schedule(sweeping.account, reference_id) == {"released": False}
    dispatch_all(sweeping.aws)
    assert sent_to(sweeping.upstream) == sorted([AIRTEL, MTN])
    assert statuses(sweeping.api, sweeping.account, reference_id) == {"submitted"}
    assert balance(sweeping.account["account_id"]) == 98


def test_a_cancelled_batch_whose_schedule_was_never_made_is_never_released(sweeping: Sweeping) -> None:
    # Given a batch whose schedule was never made, which the client cancels (and is refunded)
    reference_id = orphan(sweeping.api, sweeping.account, sweeping.monkeypatch)
    status, body = call(sweeping.api, sweeping.account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    assert (status, body["status"], body["refunded_credits"]) == (200, "cancelled", 2), body
    # Then its cancel took it out of the sweep index
    [batch] = raw_batches(sweeping.account["account_id"])
    assert "sweep_at" not in batch
    # And the sweeper never releases it: nothing invoked, nothing sent, the refund kept
    assert sweeper_runs(sweeping.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 0
    assert sweeping.lambda_.invocations == []
    assert queued_records(sweeping.aws) == []
    assert statuses(sweeping.api, sweeping.account, reference_id) == {"cancelled"}
    assert balance(sweeping.account["account_id"]) == 100


def two_sweeper_runs_at_once(monkeypatch: pytest.MonkeyPatch, minutes_after_now: float) -> list[int]:
    """Two sweeper runs that find the same batches due at the same moment (EventBridge delivers a rule's event twice,
    say): the other's claim is made between this one's query of the index and its claim. The batches each released,
    in order."""
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    claim = store.claim_unreleased_batches
    other: list[dict[str, Any]] = []

    def the_other_run_claims_meanwhile(**kwargs: Any) -> Any:
        monkeypatch.setattr(store, "claim_unreleased_batches", claim)
        other.append(sweeper_runs(monkeypatch, minutes_after_now))
        return claim(**kwargs)

    monkeypatch.setattr(store, "claim_unreleased_batches", the_other_run_claims_meanwhile)
    first = sweeper_runs(monkeypatch, minutes_after_now)
    return sorted([first["batches_released"], other[0]["batches_released"]])


def test_two_sweeper_runs_at_once_release_a_batch_once(sweeping: Sweeping) -> None:
    # Given a batch whose schedule was never made
    reference_id = orphan(sweeping.api, sweeping.account, sweeping.monkeypatch)
    # When two sweeper runs find it due at the same moment
    released = two_sweeper_runs_at_once(sweeping.monkeypatch, AFTER_THE_MARGIN)
    # Then one of them released it, once, and each message goes out once
    assert released == [0, 1]
    assert len(sweeping.lambda_.invocations) == 1
    assert sweeping.lambda_.run() == [{"released": True}]
    dispatch_all(sweeping.aws)
    assert sent_to(sweeping.upstream) == sorted([AIRTEL, MTN])
    assert statuses(sweeping.api, sweeping.account, reference_id) == {"submitted"}


def test_a_batch_that_moved_on_with_its_sweep_keys_left_is_taken_out_of_the_index_not_released(
    sweeping: Sweeping,
) -> None:
    from sms_gateway.bootstrap import gateway

    # Given a batch released by its schedule whose item still carries its sweep keys (a status write by a build
    # before the keys were removed with the status: a roll back)
    status, sent = send(sweeping.api, sweeping.account["token"], [AIRTEL], send_at=an_hour_ahead())
    assert status == 200, sent
    [before] = raw_batches(sweeping.account["account_id"])
    assert fire_schedule(sweeping.account, int(sent["reference_id"])) == {"released": True}
    store = gateway().store
    store.client.update_item(
        TableName=store.table_name,
        Key={"pk": before["pk"], "sk": before["sk"]},
        UpdateExpression="SET sweep_shard = :shard, sweep_at = :at",
        ExpressionAttributeValues={":shard": before["sweep_shard"], ":at": before["sweep_at"]},
    )
    # When the sweeper runs after the margin
    assert sweeper_runs(sweeping.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 0
    # Then it released nothing, and took the batch out of the index so no run meets it again
    assert sweeping.lambda_.invocations == []
    [after] = raw_batches(sweeping.account["account_id"])
    assert "sweep_at" not in after and "sweep_shard" not in after


def test_the_local_stack_runs_the_sweeper_s_asynchronous_invoke_of_a_function_it_runs(aws):
    from botocore.exceptions import ClientError

    from sms_gateway.adapters.scheduler import LambdaBatchRelease
    from sms_gateway_tools.localstack.moto_server import route_async_invocations

    # Given the local stack's route for Lambda's asynchronous invocations (moto stores no function the stack runs)
    arn = aws["SCHEDULED_DISPATCH_FUNCTION_ARN"]
    ran: list[tuple[str, Any]] = []

    def invoke(name: str, event: Any) -> bool:
        if name != arn:
            return False
        ran.append((name, event))
        return True

    route_async_invocations(invoke)
    try:
        # When the sweeper's release invokes scheduled_dispatch through Lambda's API (moto's wire format)
        LambdaBatchRelease(function_arn=arn).release("7", 7269458935623581697)
        # Then the stack runs it with the schedule's input
        assert ran == [(arn, {"account_id": "7", "reference_id": "7269458935623581697"})]
        # And a function the stack does not run is moto's to answer
        with pytest.raises(ClientError):
            LambdaBatchRelease(function_arn=arn + "-gone").release("7", 1)
    finally:
        route_async_invocations(None)


def test_a_send_to_go_out_at_once_killed_before_queueing_is_sent_once_by_its_release_invoked_by_hand(
    sweeping: Sweeping,
) -> None:
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    def killed(self: Any, commands: Any) -> None:
        raise Killed

    # Given a send to go out at once whose api Lambda was killed after storing it and before queueing its records
    with sweeping.monkeypatch.context() as patched:
        patched.setattr(SqsDispatchQueue, "enqueue", killed)
        with pytest.raises(Killed):
            send(sweeping.api, sweeping.account["token"], [AIRTEL, MTN])
    [batch] = raw_batches(sweeping.account["account_id"])
    reference_id = int(batch["reference_id"]["N"])
    assert batch["status"]["S"] == "queued"
    assert balance(sweeping.account["account_id"]) == 98
    dispatch_all(sweeping.aws)
    assert sent_to(sweeping.upstream) == []
    # When an operator invokes scheduled_dispatch with its account and reference id (docs/decisions.md, "Sends to go
    # out at once whose api Lambda died before queueing them"), twice
    assert fire_schedule(sweeping.account, reference_id) == {"released": False}
    dispatch_all(sweeping.aws)
    assert fire_schedule(sweeping.account, reference_id) == {"released": False}
    dispatch_all(sweeping.aws)
    # Then each message went out once, charged once
    assert sent_to(sweeping.upstream) == sorted([AIRTEL, MTN])
    assert statuses(sweeping.api, sweeping.account, reference_id) == {"submitted"}
    assert balance(sweeping.account["account_id"]) == 98
