"""A dispatch record handed back to its queue (ChangeMessageVisibility) when SQS does not take the hand-back at once:
the wait the record asked for (an upstream's Retry-After, a backoff) still holds, and the record's failure count,
which parks it in the dead-letter queue, counts only failures (the real handler on moto)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import FakeContext, load_function, route_simulator_upstreams_to
from tests.integration.test_send_path import as_lambda_sqs_event, queued_records, send_event


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Cinema Club", senders=["48974"], credits=100)


def throttling_upstream(monkeypatch: pytest.MonkeyPatch, retry_after: int) -> list[str]:
    """Every simulator-protocol upstream answers 429 with `retry_after`; returns the numbers submitted."""
    submits: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        submits.append(json.loads(request.content)["to"])
        return httpx.Response(429, headers={"Retry-After": str(retry_after)}, json={"error": "slow down"})

    route_simulator_upstreams_to(monkeypatch, upstream)
    return submits


def hand_backs_refused(monkeypatch: pytest.MonkeyPatch, times: int | None) -> list[int]:
    """The dispatch queue's ChangeMessageVisibility refused the first `times` calls (None: every call), as when SQS
    throttles or a connection drops; returns the hidings asked for, refused or not."""
    from botocore.exceptions import ClientError

    from sms_gateway.adapters.sqs import SqsDispatchQueue

    asked: list[int] = []
    original = SqsDispatchQueue._delay

    def flaky(self: Any, receipt_handle: str, seconds: int, *, queue_url: str) -> None:
        asked.append(seconds)
        if times is None or len(asked) <= times:
            error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
            raise ClientError(error, "ChangeMessageVisibility")
        original(self, receipt_handle, seconds, queue_url=queue_url)

    monkeypatch.setattr(SqsDispatchQueue, "_delay", flaky)
    return asked


def single_send(aws: dict[str, str], account: dict[str, Any]) -> None:
    api = load_function("api")
    body = {"from": "48974", "to": "2348020000000", "message": "hi"}
    assert api.handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200


def failures_counted(aws: dict[str, str], record_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    item = boto3.client("dynamodb").get_item(
        TableName=store.table_name,
        Key={"pk": {"S": f"DISPATCH_FAILURES#{record_id}"}, "sk": {"S": "RECORD"}},
        ConsistentRead=True,
    )
    return len(item.get("Item", {}).get("failed_deliveries", {}).get("SS", []))


def hidden_for_ms(queue_url: str) -> list[int]:
    from moto.core.utils import unix_time_millis

    from sms_gateway_tools.localstack.moto_server import queue_contents

    return [record.visible_at - unix_time_millis() for record in queue_contents(queue_url)]


def test_a_throttled_record_whose_hand_back_sqs_refused_once_still_waits_out_the_upstreams_retry_after(
    aws, account, monkeypatch
):
    # Given a single send, an upstream that throttles it asking us to come back in no less than 120 s, and a dispatch
    # queue whose first ChangeMessageVisibility is refused (SQS throttling the call)
    submits = throttling_upstream(monkeypatch, retry_after=120)
    single_send(aws, account)
    asked = hand_backs_refused(monkeypatch, times=1)
    event = as_lambda_sqs_event(queued_records(aws))
    [record] = event["Records"]
    # When the dispatcher handles it
    result = load_function("dispatcher").handler(event, FakeContext())
    # Then the record goes back to the queue, hidden at least as long as the upstream asked, and the hand-back SQS
    # refused a moment is no failure of the record's (each failure brings it nearer the dead-letter queue)
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert len(submits) == 1
    assert asked[0] >= 120
    [hidden] = hidden_for_ms(aws["PRIORITY_DISPATCH_QUEUE_URL"])
    assert hidden > 100_000, (hidden, asked)
    assert failures_counted(aws, record["messageId"]) == 0


def test_a_throttled_record_whose_hand_backs_sqs_keeps_refusing_is_never_dead_lettered_for_it(
    aws, account, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages

    # Given a single send an upstream keeps throttling, and a dispatch queue that refuses every ChangeMessageVisibility
    throttling_upstream(monkeypatch, retry_after=30)
    single_send(aws, account)
    hand_backs_refused(monkeypatch, times=None)
    sqs = boto3.client("sqs")
    queue = aws["PRIORITY_DISPATCH_QUEUE_URL"]
    # When its record comes back as often as a failing record may fail before it is parked (each time after the
    # queue's visibility timeout, as no hand-back was taken)
    for _ in range(gateway().settings.dispatch_max_attempts):
        event = as_lambda_sqs_event(queued_records(aws))
        [record] = event["Records"]
        load_function("dispatcher").handler(event, FakeContext())
        sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0)
    # Then the record is still on its queue, not parked in the dead-letter queue, its message queued for the upstream
    parked = sqs.receive_message(QueueUrl=aws["DISPATCH_DEAD_LETTER_QUEUE_URL"], MaxNumberOfMessages=10)
    assert parked.get("Messages", []) == []
    assert len(queued_records(aws)) == 1
    batches, _ = gateway().store.list_batches(account["account_id"])
    [message] = all_messages(gateway().store, account["account_id"], batches[0].reference_id)
    assert message.status == "queued"


def test_an_upstreams_retry_after_holds_back_the_other_records_of_the_invocation_too(aws, monkeypatch):
    from sms_gateway import bootstrap
    from sms_gateway_tools.admin import create_account

    # Given three accounts' bulk sends of three messages each (three message groups, one invocation), submitted one
    # at a time, to an upstream that answers 429 and asks us to come back in no less than 60 s
    monkeypatch.setenv("DISPATCH_CONCURRENCY", "1")
    bootstrap.reset()
    submits = throttling_upstream(monkeypatch, retry_after=60)
    api = load_function("api")
    for index in range(3):
        sender = f"4897{index}"
        account = create_account(name=f"Client {index}", senders=[sender], credits=100)
        numbers = [f"23480200000{index}{n}" for n in range(3)]
        body = {"from": sender, "to": numbers, "body": f"campaign {index}"}
        assert api.handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200
    event = as_lambda_sqs_event(queued_records(aws))
    assert len(event["Records"]) == 3
    # When the dispatcher handles them
    load_function("dispatcher").handler(event, FakeContext())
    # Then, once the upstream said "not for 60 s", it is asked nothing more in that time: the other records' messages
    # wait with theirs, as the throttled record's own do
    assert len(submits) == 1, submits


def limit_the_default_upstream(aws: dict[str, str], per_second: int) -> None:
    """The default upstream's configuration given a `rate_limit_per_second` (its route's tokens are taken)."""
    ssm, name = boto3.client("ssm"), f"{aws['UPSTREAM_PARAMETER_PREFIX']}simulator"
    config = json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    limited = json.dumps({**config, "rate_limit_per_second": per_second})
    ssm.put_parameter(Name=name, Value=limited, Type="SecureString", Overwrite=True)


def test_an_upstreams_retry_after_holds_back_the_other_dispatcher_containers_too(aws, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import dispatch
    from sms_gateway.logic.batches import all_messages
    from sms_gateway_tools.admin import create_account

    # Given two accounts' single sends for the default upstream, limited to 50 a second, which answers 429 and asks
    # us to come back in no less than 60 s
    limit_the_default_upstream(aws, 50)
    submits = throttling_upstream(monkeypatch, retry_after=60)
    api = load_function("api")
    accounts = [create_account(name=f"Client {n}", senders=[f"4897{n}"], credits=100) for n in range(2)]
    for n, account in enumerate(accounts):
        body = {"from": f"4897{n}", "to": f"234802000000{n}", "message": "hi"}
        assert api.handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200
    first, second = queued_records(aws)
    # When one dispatcher container sends the first and meets the 429
    load_function("dispatcher").handler(as_lambda_sqs_event([first]), FakeContext())
    assert len(submits) == 1
    # And another container, which never heard from the upstream, takes the second a moment later
    dispatch.UPSTREAM_RETRY_AFTER.clear()
    result = load_function("dispatcher").handler(as_lambda_sqs_event([second]), FakeContext())
    # Then the upstream is asked nothing more within the 60 s it asked for: the second record comes back once they
    # are over, its message still queued, a throttle counted (as if throttled)
    assert len(submits) == 1, submits
    assert result == {"batchItemFailures": [{"itemIdentifier": second["MessageId"]}]}
    assert all(hidden > 50_000 for hidden in hidden_for_ms(aws["PRIORITY_DISPATCH_QUEUE_URL"]))
    batches, _ = gateway().store.list_batches(accounts[1]["account_id"])
    [message] = all_messages(gateway().store, accounts[1]["account_id"], batches[0].reference_id)
    assert (message.status, message.submit_throttles) == ("queued", 1)


def dynamodb_requests() -> Counter[str]:
    """The gateway's DynamoDB requests from now on, by operation; a rate-limit counter's as `<operation> RATE#`."""
    from sms_gateway.adapters import aws as aws_clients

    made: Counter[str] = Counter()

    def note(params: dict[str, Any], event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        on_counter = str(params.get("Key", {}).get("pk", {}).get("S", "")).startswith("RATE#")
        made[f"{operation} RATE#" if on_counter else operation] += 1

    aws_clients.client("dynamodb").meta.events.register("provide-client-params.dynamodb", note)
    return made


def test_a_dispatch_that_meets_no_throttle_makes_no_request_more_for_the_shared_hold(aws, monkeypatch):
    from sms_gateway_tools.admin import create_account

    # Given a bulk send of three messages for the default upstream, limited to 50 a second, which takes them all
    limit_the_default_upstream(aws, 50)
    submits: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        submits.append(json.loads(request.content)["to"])
        return httpx.Response(200, json={"message_id": f"up-{len(submits)}", "status": "accepted"})

    route_simulator_upstreams_to(monkeypatch, upstream)
    account = create_account(name="Counted", senders=["48974"], credits=100)
    numbers = [f"234802000000{n}" for n in range(3)]
    body = {"from": "48974", "to": numbers, "body": "campaign"}
    assert load_function("api").handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200
    event = as_lambda_sqs_event(queued_records(aws))
    # When the dispatcher sends them
    made = dynamodb_requests()
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    assert sorted(submits) == numbers
    # Then it asked DynamoDB for what it asked before the hold was shared (counted at f833370): the rate-limit
    # counters only through their conditional writes (one per scope, more only when a second ends on the way)
    counter_writes = made.pop("UpdateItem RATE#")
    assert 2 <= counter_writes <= 4, counter_writes
    assert made == Counter({"UpdateItem": 6, "GetItem": 2, "BatchGetItem": 1}), made
