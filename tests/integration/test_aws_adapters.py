"""EventBridgeBatchScheduler and the SQS adapters against moto, with the resources template.yaml defines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sms_gateway.adapters import aws as clients
from sms_gateway.adapters.scheduler import EventBridgeBatchScheduler
from sms_gateway.adapters.sqs import SqsDispatchQueue, SqsNotifyQueue, dispatch_dedup_id
from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import DispatchCommand
from sms_gateway.ports import PartlyQueued


@pytest.fixture
def wired(aws: dict[str, str]) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway()


def receive_all(queue_url: str, *, expected: int) -> list[dict[str, Any]]:
    """Every message on a queue in receive order, deleting each batch so FIFO releases the next."""
    sqs = clients.client("sqs")
    received: list[dict[str, Any]] = []
    for _ in range(expected + 5):
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        messages = answer.get("Messages", [])
        if not messages:
            break
        received.extend(messages)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return received


def visible_count(queue_url: str) -> int:
    attributes = clients.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


# ---------------------------------------------------------------------------------------------- scheduler


def test_a_scheduled_batch_gets_a_one_time_schedule_in_utc(wired, aws):
    scheduler: EventBridgeBatchScheduler = wired.scheduler
    client = clients.client("scheduler")
    account_id, reference_id = str(new_id()), new_id()
    # Given a send time in Lagos (UTC+1) with a fraction of a second
    at = datetime(2031, 1, 2, 0, 30, 15, 987654, tzinfo=ZoneInfo("Africa/Lagos"))
    # When the batch is scheduled
    scheduler.schedule(account_id, reference_id, at)
    # Then one schedule exists in the stack's group
    listed = client.list_schedules(GroupName=aws["SCHEDULE_GROUP_NAME"])["Schedules"]
    assert len(listed) == 1
    found = client.get_schedule(Name=listed[0]["Name"], GroupName=aws["SCHEDULE_GROUP_NAME"])
    # And it fires once, at the same instant written in UTC (the day before, in UTC), rounded up to the whole
    # minute: Scheduler fires anywhere within the minute of its time, and a batch must not go out early
    assert found["ScheduleExpression"] == "at(2031-01-01T23:31:00)"
    assert found.get("ScheduleExpressionTimezone", "UTC") == "UTC"
    # And it deletes itself afterwards and does not wait for a flexible window
    assert found["ActionAfterCompletion"] == "DELETE"
    assert found["FlexibleTimeWindow"] == {"Mode": "OFF"}
    # And it invokes the scheduled-dispatch function with the scheduler role and names the batch
    target = found["Target"]
    assert target["Arn"] == aws["SCHEDULED_DISPATCH_FUNCTION_ARN"]
    assert target["RoleArn"] == aws["SCHEDULER_ROLE_ARN"]
    # (the id a string: a replay through a tool that reads JSON numbers as doubles must not round it)
    assert json.loads(target["Input"]) == {"account_id": account_id, "reference_id": str(reference_id)}
    # And it retries (a bounded, explicit policy rather than the service default) then dead-letters
    retry = target["RetryPolicy"]
    assert 1 <= retry["MaximumRetryAttempts"] < 185
    assert 60 <= retry["MaximumEventAgeInSeconds"] < 86400
    assert target["DeadLetterConfig"]["Arn"] == aws["SCHEDULE_DLQ_ARN"]
    assert aws["SCHEDULE_DLQ_ARN"].endswith("-schedule-dlq")


def test_a_batch_due_already_or_within_the_scheduler_s_precision_is_scheduled_a_precision_ahead(aws):
    # Given a scheduler at 10:00:20 (a send finished by a retry after its first request died may be due already)
    now = datetime(2030, 7, 1, 10, 0, 20, tzinfo=UTC)
    scheduler = EventBridgeBatchScheduler(group_name="g", target_arn="t", role_arn="r", clock=lambda: now)
    # Then a time past, or less than a minute ahead, fires in the first whole minute a minute ahead; a later one in
    # the whole minute at or after it; never before the time asked
    assert scheduler.firing_time(now - timedelta(hours=1)) == datetime(2030, 7, 1, 10, 2, tzinfo=UTC)
    assert scheduler.firing_time(now + timedelta(seconds=30)) == datetime(2030, 7, 1, 10, 2, tzinfo=UTC)
    assert scheduler.firing_time(datetime(2030, 7, 1, 10, 5, tzinfo=UTC)) == datetime(2030, 7, 1, 10, 5, tzinfo=UTC)
    assert scheduler.firing_time(datetime(2030, 7, 1, 10, 5, 1, tzinfo=UTC)) == datetime(2030, 7, 1, 10, 6, tzinfo=UTC)
    # And a scheduler that fires to the second (the local stack's) only keeps it a second ahead of now
    precise = EventBridgeBatchScheduler(
        group_name="g", target_arn="t", role_arn="r", clock=lambda: now, precision_seconds=1
    )
    assert precise.firing_time(now - timedelta(hours=1)) == now + timedelta(seconds=1)
    assert precise.firing_time(now + timedelta(seconds=30.2)) == now + timedelta(seconds=31)


def test_the_same_instant_in_any_zone_gives_the_same_expression(wired, aws):
    # Given the same instant as an aware UTC time and in India (UTC+05:30)
    client, group = clients.client("scheduler"), aws["SCHEDULE_GROUP_NAME"]
    account_id = str(new_id())
    first, second = new_id(), new_id()
    wired.scheduler.schedule(account_id, first, datetime.fromisoformat("2030-07-01T12:00:00+00:00"))
    kolkata = ZoneInfo("Asia/Kolkata")
    wired.scheduler.schedule(account_id, second, datetime(2030, 7, 1, 17, 30, tzinfo=kolkata))
    # Then both schedules carry the same UTC expression, under different names
    names = [s["Name"] for s in client.list_schedules(GroupName=group)["Schedules"]]
    assert len(set(names)) == 2
    expressions = {client.get_schedule(Name=name, GroupName=group)["ScheduleExpression"] for name in names}
    assert expressions == {"at(2030-07-01T12:00:00)"}


def test_cancel_deletes_the_schedule_once(wired, aws):
    client, group = clients.client("scheduler"), aws["SCHEDULE_GROUP_NAME"]
    account_id, reference_id, other = str(new_id()), new_id(), new_id()
    # Given two scheduled batches
    wired.scheduler.schedule(account_id, reference_id, datetime.fromisoformat("2030-01-01T00:00:00+00:00"))
    wired.scheduler.schedule(account_id, other, datetime.fromisoformat("2030-01-01T00:00:00+00:00"))
    # When one is cancelled
    assert wired.scheduler.cancel(account_id, reference_id) is True
    # Then its schedule is gone and the other one is still there
    remaining = client.list_schedules(GroupName=group)["Schedules"]
    assert len(remaining) == 1
    assert json.loads(client.get_schedule(Name=remaining[0]["Name"], GroupName=group)["Target"]["Input"]) == {
        "account_id": account_id,
        "reference_id": str(other),
    }
    # And cancelling it again, or a batch never scheduled, answers False
    assert wired.scheduler.cancel(account_id, reference_id) is False
    assert wired.scheduler.cancel(account_id, new_id()) is False


def test_scheduling_a_batch_again_keeps_its_one_schedule(wired, aws):
    # A send finished by a retry after its first request died schedules its batch again (logic/send.release)
    client, group = clients.client("scheduler"), aws["SCHEDULE_GROUP_NAME"]
    account_id, reference_id = str(new_id()), new_id()
    at = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
    wired.scheduler.schedule(account_id, reference_id, at)
    wired.scheduler.schedule(account_id, reference_id, at)
    assert len(client.list_schedules(GroupName=group)["Schedules"]) == 1


def test_without_a_dead_letter_queue_the_target_has_none(wired, aws):
    scheduler = EventBridgeBatchScheduler(
        group_name=aws["SCHEDULE_GROUP_NAME"],
        target_arn=aws["SCHEDULED_DISPATCH_FUNCTION_ARN"],
        role_arn=aws["SCHEDULER_ROLE_ARN"],
        client=clients.client("scheduler"),
    )
    scheduler.schedule("1", 2, datetime.fromisoformat("2030-01-01T00:00:00+00:00"))
    client = clients.client("scheduler")
    name = client.list_schedules(GroupName=aws["SCHEDULE_GROUP_NAME"])["Schedules"][0]["Name"]
    target = client.get_schedule(Name=name, GroupName=aws["SCHEDULE_GROUP_NAME"])["Target"]
    assert "DeadLetterConfig" not in target


# ---------------------------------------------------------------------------------------------- sqs


def commands_for(account_id: str, count: int) -> list[DispatchCommand]:
    reference_id = new_id()
    ids = [new_id() for _ in range(count * 3)]
    return [
        DispatchCommand(account_id=account_id, reference_id=reference_id, message_ids=tuple(ids[i * 3 :][:3]))
        for i in range(count)
    ]


def test_dispatch_commands_arrive_in_order_in_the_accounts_group(wired, aws):
    # Given 23 dispatch commands of one account (three SendMessageBatch calls)
    account_id = str(new_id())
    commands = commands_for(account_id, 23)
    assert isinstance(wired.dispatch_queue, SqsDispatchQueue)
    # When they are enqueued
    wired.dispatch_queue.enqueue(commands)
    # Then 23 FIFO messages arrive, in the order given, each the command it was made from
    received = receive_all(aws["DISPATCH_QUEUE_URL"], expected=23)
    assert [DispatchCommand.model_validate_json(m["Body"]) for m in received] == commands
    # And every one is in the account's message group, with its own deduplication id
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {account_id}
    dedup_ids = [m["Attributes"]["MessageDeduplicationId"] for m in received]
    assert len(set(dedup_ids)) == 23


def test_each_account_is_its_own_message_group(wired, aws):
    # Given commands of two accounts, interleaved
    first, second = str(new_id()), str(new_id())
    a, b = commands_for(first, 4), commands_for(second, 4)
    interleaved = [c for pair in zip(a, b, strict=True) for c in pair]
    # When they are enqueued
    wired.dispatch_queue.enqueue(interleaved)
    received = receive_all(aws["DISPATCH_QUEUE_URL"], expected=8)
    # Then each arrives in its own account's group, and within a group in the order given
    by_group: dict[str, list[DispatchCommand]] = {}
    for message in received:
        command = DispatchCommand.model_validate_json(message["Body"])
        assert message["Attributes"]["MessageGroupId"] == command.account_id
        by_group.setdefault(command.account_id, []).append(command)
    assert by_group == {first: a, second: b}


def test_enqueueing_the_same_commands_again_adds_nothing(wired, aws):
    # Given 23 commands that were enqueued
    queue_url = aws["DISPATCH_QUEUE_URL"]
    commands = commands_for(str(new_id()), 23)
    wired.dispatch_queue.enqueue(commands)
    assert visible_count(queue_url) == 23
    # When the same commands are enqueued again within the deduplication window (a retried Lambda)
    wired.dispatch_queue.enqueue(commands)
    # Then SQS dropped every duplicate (moto 5 honours FIFO MessageDeduplicationId for 5 minutes)
    assert visible_count(queue_url) == 23
    received = receive_all(queue_url, expected=23)
    assert [DispatchCommand.model_validate_json(m["Body"]) for m in received] == commands


def test_the_dispatch_queue_is_fifo_and_redrives_to_its_dead_letter_queue(aws):
    # The adapter's ordering and deduplication rely on the queue it is given being a FIFO queue.
    sqs = clients.client("sqs")
    answer = sqs.get_queue_attributes(QueueUrl=aws["DISPATCH_QUEUE_URL"], AttributeNames=["All"])
    attributes = answer["Attributes"]
    assert attributes["FifoQueue"] == "true"
    assert attributes.get("ContentBasedDeduplication", "false") == "false"
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"].endswith("-dispatch-dlq.fifo")


def test_notifications_round_trip_as_json(wired, aws):
    # Given notifications with nested values, unicode and more than one SendMessageBatch of them
    notifications: list[dict[str, Any]] = [
        {
            "kind": "dlr",
            "account_id": "1",
            "n": i,
            "payload": {"status": "delivered", "text": "Olá 👋", "parts": [1, 2], "ok": True, "none": None},
        }
        for i in range(13)
    ]
    assert isinstance(wired.notify_queue, SqsNotifyQueue)
    # When they are published
    wired.notify_queue.publish(notifications)
    # Then each comes back as the same JSON value
    received = receive_all(aws["NOTIFY_QUEUE_URL"], expected=13)
    assert sorted((json.loads(m["Body"]) for m in received), key=lambda n: n["n"]) == notifications
    # And publishing nothing sends nothing
    wired.notify_queue.publish([])
    assert visible_count(aws["NOTIFY_QUEUE_URL"]) == 0


class RefusingSqs:
    """Answers SendMessageBatch as SQS does when it refuses some entries (moto never refuses one)."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def send_message_batch(self, **request: Any) -> dict[str, Any]:
        entries = request["Entries"]
        self.calls.append(entries)
        refused = entries[-1]
        return {
            "Successful": [{"Id": e["Id"], "MessageId": "m" + e["Id"]} for e in entries[:-1]],
            "Failed": [{"Id": refused["Id"], "SenderFault": True, "Code": "InvalidParameterValue"}],
        }


def test_a_refused_entry_is_an_error_not_a_silent_drop():
    # Given SQS that refuses one entry of a SendMessageBatch
    sqs = RefusingSqs()
    queue = SqsDispatchQueue("https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo", client=sqs)
    # When commands are enqueued, the refusal is raised
    with pytest.raises(RuntimeError, match="InvalidParameterValue"):
        queue.enqueue(commands_for("1", 3))
    assert [len(call) for call in sqs.calls] == [3]


def test_a_partly_refused_publish_names_the_notifications_not_queued():
    # Given SQS that refuses the last entry of a SendMessageBatch
    sqs = RefusingSqs()
    queue = SqsNotifyQueue("https://sqs.us-east-1.amazonaws.com/123456789012/notify", client=sqs)
    # When 13 notifications are published (two calls, the first partly refused)
    with pytest.raises(PartlyQueued) as refused:
        queue.publish([{"n": n} for n in range(13)])
    # Then the error names the one refused and the three never sent, and is still a RuntimeError to other callers
    assert refused.value.failed == (9, 10, 11, 12)
    assert isinstance(refused.value, RuntimeError)
    assert [len(call) for call in sqs.calls] == [10]


def test_a_priority_command_has_its_own_lane_on_its_own_queue_and_overtakes_the_accounts_bulk(wired, aws):
    sqs = clients.client("sqs")
    queue_url, priority_url = aws["DISPATCH_QUEUE_URL"], aws["PRIORITY_DISPATCH_QUEUE_URL"]
    # Given 12 bulk records of an account, then one priority record (an OTP) of the same account
    account_id = str(new_id())
    bulk = commands_for(account_id, 12)
    otp = DispatchCommand(account_id=account_id, reference_id=new_id(), message_ids=(new_id(),), priority=True)
    wired.dispatch_queue.enqueue([*bulk, otp])
    # When a dispatcher holds the account's first bulk record (its group is then blocked until it is done)
    first = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, MessageSystemAttributeNames=["All"])
    assert DispatchCommand.model_validate_json(first["Messages"][0]["Body"]) == bulk[0]
    # Then the priority record is on the priority dispatch queue (its own event source and slots), in the
    # account's priority group, and not on the dispatch queue
    assert sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []) == []
    answer = sqs.receive_message(QueueUrl=priority_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"])
    received = answer.get("Messages", [])
    assert [DispatchCommand.model_validate_json(m["Body"]) for m in received] == [otp]
    assert received[0]["Attributes"]["MessageGroupId"] == f"{account_id}#priority"
    # And it keeps the deduplication id scheme: the batch and its record's contents
    assert received[0]["Attributes"]["MessageDeduplicationId"] == dispatch_dedup_id(otp)
    # And the bulk records still come in order, in the account's own group, on the dispatch queue
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=first["Messages"][0]["ReceiptHandle"])
    rest = receive_all(queue_url, expected=11)
    assert [DispatchCommand.model_validate_json(m["Body"]) for m in rest] == bulk[1:]
    assert {m["Attributes"]["MessageGroupId"] for m in rest} == {account_id}


def test_single_sends_that_need_no_order_go_to_the_priority_queue_each_in_a_lane_of_its_own(wired, aws):
    # Given two single sends of an account that lets its single sends overlap, and one bulk record
    account_id = str(new_id())
    singles = [
        DispatchCommand(
            account_id=account_id, reference_id=new_id(), message_ids=(new_id(),), priority=True, in_order=False
        )
        for _ in range(2)
    ]
    bulk = commands_for(account_id, 1)
    # When they are enqueued together
    wired.dispatch_queue.enqueue([singles[0], *bulk, singles[1]])
    # Then the single sends are on the priority queue, each in its own group; the bulk record on the dispatch queue
    received = receive_all(aws["PRIORITY_DISPATCH_QUEUE_URL"], expected=2)
    assert sorted(m["Attributes"]["MessageGroupId"] for m in received) == sorted(
        f"{account_id}#send#{command.reference_id}" for command in singles
    )
    assert [
        DispatchCommand.model_validate_json(m["Body"]) for m in receive_all(aws["DISPATCH_QUEUE_URL"], expected=1)
    ] == bulk


def test_a_record_is_handed_back_on_the_queue_it_came_from(wired, aws):
    sqs = clients.client("sqs")
    # Given a priority record and a bulk record, each received from its queue
    account_id = str(new_id())
    otp = DispatchCommand(account_id=account_id, reference_id=new_id(), message_ids=(new_id(),), priority=True)
    wired.dispatch_queue.enqueue([otp, *commands_for(account_id, 1)])
    for name in ("PRIORITY_DISPATCH_QUEUE_URL", "DISPATCH_QUEUE_URL"):
        url = aws[name]
        [record] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        # When the dispatcher hands it back at once, naming the queue its event said it came from
        wired.dispatch_queue.delay(record["ReceiptHandle"], 0, source_arn=arn)
        # Then it is visible again on that queue (a receipt handle of another queue would be refused there)
        assert [m["MessageId"] for m in sqs.receive_message(QueueUrl=url)["Messages"]] == [record["MessageId"]], name


def test_without_a_priority_queue_every_record_goes_to_the_one_dispatch_queue(aws):
    # Given the adapter of a stack from before the priority queue (no PRIORITY_DISPATCH_QUEUE_URL)
    queue = SqsDispatchQueue(aws["DISPATCH_QUEUE_URL"])
    otp = DispatchCommand(account_id="1", reference_id=new_id(), message_ids=(new_id(),), priority=True)
    # When a priority record and a bulk record are enqueued
    queue.enqueue([otp, *commands_for("1", 1)])
    # Then both are on the dispatch queue, and a record is handed back there whatever its ARN says
    sqs = clients.client("sqs")
    received = sqs.receive_message(QueueUrl=aws["DISPATCH_QUEUE_URL"], MaxNumberOfMessages=10)["Messages"]
    assert [DispatchCommand.model_validate_json(m["Body"]).priority for m in received] == [True, False]
    for record in received:
        queue.delay(record["ReceiptHandle"], 0, source_arn="arn:aws:sqs:us-east-1:123456789012:other.fifo")
    assert len(sqs.receive_message(QueueUrl=aws["DISPATCH_QUEUE_URL"], MaxNumberOfMessages=10)["Messages"]) == 2


def test_a_containers_clients_share_one_session_and_its_loaded_models(aws):
    """Cold start: a botocore session per client would load the endpoint rules and models once per client."""
    clients.reset_clients()
    sqs, dynamodb = clients.client("sqs"), clients.client("dynamodb")
    assert clients.client("sqs") is sqs
    assert sqs._loader is dynamodb._loader
    clients.reset_clients()
    assert clients.client("sqs") is not sqs


class _Body:
    def __init__(self, content: bytes) -> None:
        self.content = content

    def stream(self, **_: Any) -> Any:
        yield self.content


@contextmanager
def throttling(dynamodb_clients: list[Any]) -> Iterator[list[str]]:
    """DynamoDB throttling every attempt of every call the clients make (a ThrottlingException): yields the
    operation of each attempt sent, in order."""
    from botocore.awsrequest import AWSResponse

    sent: list[str] = []
    throttled = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow down"})

    def throttle(request: Any, **_: Any) -> AWSResponse:
        sent.append(request.headers["X-Amz-Target"].decode().rsplit(".", 1)[-1])
        return AWSResponse(request.url, 400, {}, _Body(throttled.encode()))

    for client in dynamodb_clients:
        client.meta.events.register_first("before-send.dynamodb", throttle)
    try:
        yield sent
    finally:
        for client in dynamodb_clients:
            client.meta.events.unregister("before-send.dynamodb", throttle)


@pytest.mark.parametrize("out_of_time", [False, True])
def test_a_failing_aws_call_is_not_retried_once_an_armed_deadline_has_passed(aws, monkeypatch, out_of_time):
    from sms_gateway import deadlines

    # Given DynamoDB throttling every attempt of a call (and botocore's backoff sleeps skipped)
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)
    dynamodb = clients.client("dynamodb")
    # When it is made with a deadline armed that has (or has not) passed
    with throttling([dynamodb]) as sent, deadlines.armed(lambda: out_of_time), pytest.raises(Exception) as raised:
        dynamodb.describe_table(TableName=aws["TABLE_NAME"])
    # Then past the deadline it stops after the first failure instead of using its attempts (5 and more)
    assert len(sent) == 1 if out_of_time else len(sent) >= 5
    assert isinstance(raised.value, deadlines.DeadlineReached) == out_of_time


def test_a_failed_condition_past_an_armed_deadline_is_raised_as_the_callers_answer(aws):
    from sms_gateway import deadlines

    # Given a deadline that has passed, and a conditional write whose condition fails (an answer, never retried)
    dynamodb = clients.client("dynamodb")
    with deadlines.armed(lambda: True), pytest.raises(Exception) as raised:
        dynamodb.put_item(
            TableName=aws["TABLE_NAME"],
            Item={"pk": {"S": "X"}, "sk": {"S": "Y"}},
            ConditionExpression="attribute_exists(pk)",
        )
    # Then the caller gets the failed condition, which it handles (the sweeper passes over such an item), not
    # DeadlineReached (until 2026-12-06 every error past the deadline became one)
    assert not isinstance(raised.value, deadlines.DeadlineReached)
    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "once"),
    [("read timeout", True), ("internal error", True), ("throttled", False)],
)
def test_a_call_made_at_most_once_is_not_retried_when_it_may_have_been_applied(aws, monkeypatch, failure, once):
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ReadTimeoutError

    from sms_gateway import deadlines

    # Given DynamoDB failing every attempt of a call: with no answer, inside the service (500: it may have applied
    # the call), or refusing it (throttled: certainly not applied); botocore's backoff sleeps skipped
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)
    dynamodb = clients.client("dynamodb")
    sent: list[str] = []
    kinds = {"internal error": (500, "InternalServerError"), "throttled": (400, "ThrottlingException")}

    def fail(request: Any, **_: Any) -> AWSResponse:
        sent.append(request.url)
        if failure == "read timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        status, code = kinds[failure]
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": failure})
        return AWSResponse(request.url, status, {}, _Body(body.encode()))

    dynamodb.meta.events.register_first("before-send.dynamodb.DescribeTable", fail)
    try:
        # When it is made at most once (as a rate-limit give-back is)
        with deadlines.at_most_once(), pytest.raises(Exception) as raised:
            dynamodb.describe_table(TableName=aws["TABLE_NAME"])
    finally:
        dynamodb.meta.events.unregister("before-send.dynamodb.DescribeTable", fail)
    # Then one that may have been applied is sent once and fails as such; a refusal is retried as usual (5 and more)
    assert len(sent) == 1 if once else len(sent) >= 5
    assert isinstance(raised.value, deadlines.MaybeApplied) == once


@pytest.mark.parametrize(("prompt", "attempts"), [(False, 5), (True, 2)])
def test_a_throttled_call_is_sent_as_many_times_as_the_client_says_and_no_more(aws, monkeypatch, prompt, attempts):
    # Given DynamoDB throttling every attempt of a call (botocore's backoff sleeps noted, not waited out)
    slept: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time.sleep", slept.append)
    dynamodb = clients.client("dynamodb", prompt=prompt)
    with throttling([dynamodb]) as sent, pytest.raises(Exception, match="ThrottlingException"):
        dynamodb.describe_table(TableName=aws["TABLE_NAME"])
    # Then it is sent as many times as aws.client promises (five; a prompt client, which a caller waiting on the
    # 10 s webhook function uses, two), backing off between them only (until session 38 one attempt more each: a
    # prompt client's throttled call took up to 3 s of backoff where it promises at most 1)
    assert len(sent) == attempts
    assert len(slept) == attempts - 1
