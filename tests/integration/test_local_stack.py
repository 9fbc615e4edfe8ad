"""The local stack with injected fake handlers: the API Gateway v2 bridge, SQS pollers, the scheduler loop."""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sms_gateway_tools.localstack import LocalStack, read_stack_file

pytestmark = pytest.mark.timeout(90)
# How long a test waits for what the stack does in its own threads (a poller's invocation, the scheduler loop firing, a
# rate rule): generous for a loaded 2-core machine, since each wait ends as soon as the thing happens.
WAIT_SECONDS = 30.0
# SQS's longest long poll: a receive that ends as soon as a message is there.
LONGEST_SQS_WAIT = 20


class Fakes:
    """Handler callables standing in for the real functions; every call is recorded."""

    def __init__(self) -> None:
        self.api_events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.webhook_events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.dispatched: queue.Queue[dict[str, Any]] = queue.Queue()
        self.scheduled: queue.Queue[dict[str, Any]] = queue.Queue()
        self.swept: queue.Queue[dict[str, Any]] = queue.Queue()
        self.contexts: queue.Queue[Any] = queue.Queue()
        self.dispatch_batches: list[dict[str, Any]] = []
        self.slow_started = threading.Event()
        # Set by a test once the caller of /slow has reset its connection: the slow handler answers only then.
        self.caller_gone = threading.Event()

    def api(self, event: dict[str, Any], context: Any) -> Any:
        self.api_events.put(event)
        self.contexts.put(context)
        path = event["rawPath"]
        if path.endswith("/boom"):
            raise RuntimeError("boom")
        if path.endswith("/plain"):
            return {"hello": "world"}
        if path.endswith("/slow"):
            self.slow_started.set()
            self.caller_gone.wait(WAIT_SECONDS)
            return {"slow": True}
        return {
            "statusCode": 201,
            "headers": {"Content-Type": "application/octet-stream", "X-Request-Route": event["routeKey"]},
            "cookies": ["session=abc; Path=/", "theme=dark"],
            "body": base64.b64encode(b"\x00\x01binary\xff").decode(),
            "isBase64Encoded": True,
        }

    def webhook(self, event: dict[str, Any], context: Any) -> Any:
        self.webhook_events.put(event)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"ok":true}'}

    def dispatcher(self, event: dict[str, Any], context: Any) -> Any:
        self.dispatch_batches.append(event)
        failures = []
        for record in event["Records"]:
            self.dispatched.put(record)
            if record["body"].startswith("fail-once") and record["attributes"]["ApproximateReceiveCount"] == "1":
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def sweeper(self, event: dict[str, Any], context: Any) -> Any:
        self.swept.put(event)
        return {"inbound_queued": 0}

    def scheduled_dispatch(self, event: dict[str, Any], context: Any) -> Any:
        self.scheduled.put(event)
        if event.get("fail"):
            raise RuntimeError("cannot release this batch")
        return {"released": True}


def drain(found: queue.Queue[Any], seconds: float) -> list[Any]:
    """Everything that arrives on `found` within `seconds`."""
    items: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            items.append(found.get(timeout=left))
        except queue.Empty:
            break
    return items


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) != 0


def test_start_and_stop_leave_nothing_behind(tmp_path: Path) -> None:
    # Given a process with no local stack
    before = set(threading.enumerate())
    saved_env = dict(os.environ)

    # When a stack is started on free ports and stopped again
    with LocalStack(port=0, functions={"ApiFunction": Fakes().api}, state_dir=tmp_path) as stack:
        urls = [stack.api_url, *stack.function_urls.values(), stack.simulator_url, stack.moto_endpoint]
        assert list(stack.function_urls) == ["WebhookFunction"]
        assert httpx.get(f"{stack.api_url}/login", timeout=5).status_code == 201
        state = read_stack_file(tmp_path)
        assert state is not None
        assert state["api_url"] == stack.api_url
        assert state["callback_url"] == stack.function_urls["WebhookFunction"]
        assert state["env"]["TABLE_NAME"] == os.environ["TABLE_NAME"]

    # Then its ports are closed, its threads are gone, the state file is removed and the environment restored
    assert all(port_is_closed(url) for url in urls)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [t for t in set(threading.enumerate()) - before if not t.daemon or t.name.startswith("localstack")]
        if not left:
            break
        time.sleep(0.1)
    assert left == []
    assert read_stack_file(tmp_path) is None
    assert dict(os.environ) == saved_env


def test_a_second_stack_in_the_process_is_refused_and_the_first_keeps_its_resources(tmp_path: Path) -> None:
    # Given a running stack (moto's state is process-wide: a second moto's start would reset it)
    with LocalStack(port=0, functions={}, state_dir=tmp_path / "first") as first:
        table = first.env["TABLE_NAME"]
        # When another stack is started in the same process
        second = LocalStack(port=0, functions={}, state_dir=tmp_path / "second")
        with pytest.raises(RuntimeError, match="another local stack's moto runs in this process"):
            second.start()
        # Then it says so, and the first stack's table and environment are as they were
        first.client("dynamodb").describe_table(TableName=table)
        assert os.environ["AWS_ENDPOINT_URL"] == first.moto_endpoint
    # And once the first has stopped, a stack starts again
    with LocalStack(port=0, functions={}, state_dir=tmp_path / "third") as third:
        third.client("dynamodb").describe_table(TableName=third.env["TABLE_NAME"])


def _at(moment: datetime) -> str:
    return f"at({moment.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')})"


def _due_schedule(stack: LocalStack, name: str, target_arn: str, payload: str) -> tuple[Any, str, str]:
    """A one-time schedule due a second ago at `target_arn`, with one scheduler retry and the schedule DLQ: the
    scheduler client, the group and the DLQ's ARN."""
    scheduler = stack.client("scheduler")
    group = stack.env["SCHEDULE_GROUP_NAME"]
    dlq_arn = stack.env["SCHEDULE_DLQ_ARN"]
    scheduler.create_schedule(
        Name=name,
        GroupName=group,
        ScheduleExpression=_at(datetime.now(UTC) - timedelta(seconds=1)),
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={
            "Arn": target_arn,
            "RoleArn": stack.env["SCHEDULER_ROLE_ARN"],
            "Input": payload,
            "RetryPolicy": {"MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 60},
            "DeadLetterConfig": {"Arn": dlq_arn},
        },
    )
    return scheduler, group, dlq_arn


class TestAStackWithFakeHandlers:
    """One stack for the tests of this class, stopped before any other test runs (a class-scoped fixture ends when
    the next test is outside its class, whatever the order): moto's state and os.environ are process-wide, so a test
    that enters its own `mock_aws` or starts a stack while this one runs has its state reset under it, and this
    stack's pollers and rate rule put its AWS_ENDPOINT_URL back into os.environ before each invocation. Only tests
    that use this stack belong here."""

    @pytest.fixture(scope="class")
    def fakes(self) -> Fakes:
        return Fakes()

    @pytest.fixture(scope="class")
    def stack(self, fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
        functions = {
            "ApiFunction": fakes.api,
            "WebhookFunction": fakes.webhook,
            "DispatcherFunction": fakes.dispatcher,
            "ScheduledDispatchFunction": fakes.scheduled_dispatch,
            "SweeperFunction": fakes.sweeper,
        }
        with LocalStack(
            port=0,
            functions=functions,
            state_dir=tmp_path_factory.mktemp("local"),
            scheduler_interval=0.2,
            rule_interval=0.5,
        ) as started:
            yield started

    def test_environment_points_the_functions_at_moto(self, stack: LocalStack) -> None:
        # Given a running stack, Then the functions' environment names its resources in moto
        env = stack.env
        assert env["AWS_ENDPOINT_URL"] == stack.moto_endpoint
        assert env["STAGE"] == "local"
        # And upstream callbacks go to the webhook function's URL (its own port, as on AWS its own host), not the API
        assert env["CALLBACK_BASE_URL"] == stack.function_urls["WebhookFunction"] == stack.callback_url
        assert stack.callback_url != stack.api_url
        assert env["DISPATCH_QUEUE_URL"].endswith("-dispatch.fifo")
        assert env["PRIORITY_DISPATCH_QUEUE_URL"].endswith("-priority-dispatch.fifo")
        assert env["SCHEDULED_DISPATCH_FUNCTION_ARN"] == stack.function_arn("ScheduledDispatchFunction")
        assert env["SCHEDULE_DLQ_ARN"].startswith("arn:aws:sqs:us-east-1:")
        stack.client("dynamodb").describe_table(TableName=env["TABLE_NAME"])
        # And the simulator's configuration is in Parameter Store, as the provider registry reads it
        parameter = stack.client("ssm").get_parameter(
            Name=f"{env['UPSTREAM_PARAMETER_PREFIX']}simulator", WithDecryption=True
        )["Parameter"]
        assert parameter["Type"] == "SecureString"
        assert json.loads(parameter["Value"])["url"] == stack.simulator_url

    def test_http_request_becomes_a_v2_event_and_the_result_a_response(self, stack: LocalStack, fakes: Fakes) -> None:
        # When a client posts JSON with repeated query parameters, custom headers and cookies
        response = httpx.post(
            f"{stack.api_url}/ng/v1/sendsms?tag=a&tag=b&empty=&q=hello%20world",
            content=b'{"to": "2348020000000"}',
            headers=[
                ("Content-Type", "application/json"),
                ("X-Custom", "one"),
                ("X-Custom", "two"),
                ("Authorization", "Bearer t0ken"),
                ("Cookie", "c1=v1; c2=v2"),
            ],
            timeout=10,
        )

        # Then the function got an API Gateway HTTP API payload v2.0 event
        event = fakes.api_events.get(timeout=5)
        assert event["version"] == "2.0"
        assert event["routeKey"] == "POST /ng/v1/sendsms"
        assert event["rawPath"] == "/ng/v1/sendsms"
        assert event["rawQueryString"] == "tag=a&tag=b&empty=&q=hello%20world"
        assert event["queryStringParameters"] == {"tag": "a,b", "empty": "", "q": "hello world"}
        assert event["headers"]["x-custom"] == "one,two"
        assert event["headers"]["authorization"] == "Bearer t0ken"
        assert event["headers"]["content-type"] == "application/json"
        assert all(name == name.lower() for name in event["headers"])
        assert "cookie" not in event["headers"]
        assert event["cookies"] == ["c1=v1", "c2=v2"]
        assert event["body"] == '{"to": "2348020000000"}'
        assert event["isBase64Encoded"] is False
        assert "pathParameters" not in event
        assert "stageVariables" not in event
        context = event["requestContext"]
        assert context["http"]["method"] == "POST"
        assert context["http"]["path"] == "/ng/v1/sendsms"
        assert context["http"]["sourceIp"] == "127.0.0.1"
        assert context["routeKey"] == "POST /ng/v1/sendsms"
        assert context["stage"] == "$default"
        assert abs(context["timeEpoch"] / 1000 - time.time()) < 30
        lambda_context = fakes.contexts.get(timeout=1)
        assert lambda_context.function_name.startswith(stack.stack_name)
        assert lambda_context.invoked_function_arn == stack.function_arn("ApiFunction")
        assert 0 < lambda_context.get_remaining_time_in_millis() <= 29_000

        # And the function's dict result became the HTTP response, its base64 body decoded
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["x-request-route"] == "POST /ng/v1/sendsms"
        assert response.headers.get_list("set-cookie") == ["session=abc; Path=/", "theme=dark"]
        assert response.content == b"\x00\x01binary\xff"

    def test_path_parameters_and_binary_bodies(self, stack: LocalStack, fakes: Fakes) -> None:
        # When an upstream posts a form to a route with a path parameter
        response = httpx.post(
            f"{stack.api_url}/callbacks/simulator/dlr",
            data={"id": "42", "stat": "DELIVRD"},
            timeout=10,
        )

        # Then the parameter is in pathParameters and the form body arrives base64-encoded, as on AWS
        event = fakes.webhook_events.get(timeout=5)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert event["routeKey"] == "POST /callbacks/{provider}/dlr"
        assert event["pathParameters"] == {"provider": "simulator"}
        assert event["isBase64Encoded"] is True
        assert base64.b64decode(event["body"]) == b"id=42&stat=DELIVRD"

    def test_the_webhook_function_url_takes_any_path_as_a_default_route_event(
        self, stack: LocalStack, fakes: Fakes
    ) -> None:
        # When an upstream posts a form to the webhook function's URL
        response = httpx.post(
            f"{stack.callback_url}/callbacks/simulator/dlr?ref=a.b.1",
            data={"id": "42", "stat": "DELIVRD"},
            timeout=10,
        )

        # Then the function gets a payload v2.0 event as Lambda builds for a function URL: route $default, no path
        # parameters (the resolver routes by rawPath), the URL's own host, the form base64-encoded
        event = fakes.webhook_events.get(timeout=5)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default"
        assert "pathParameters" not in event
        assert event["rawPath"] == "/callbacks/simulator/dlr"
        assert event["rawQueryString"] == "ref=a.b.1"
        assert event["requestContext"]["domainName"] == stack.callback_url.removeprefix("http://")
        assert base64.b64decode(event["body"]) == b"id=42&stat=DELIVRD"

        # And no other function is reachable through it
        httpx.get(f"{stack.callback_url}/ng/v1/balance", timeout=10)
        assert fakes.webhook_events.get(timeout=5)["rawPath"] == "/ng/v1/balance"
        assert fakes.api_events.empty()

    def test_greedy_path_and_plain_results(self, stack: LocalStack, fakes: Fakes) -> None:
        # When a route with {proxy+} is called and the function returns a plain dict
        response = httpx.get(f"{stack.api_url}/v1/accounts/me/plain", timeout=10)

        # Then the greedy parameter holds the rest of the path and the dict is the JSON body
        event = fakes.api_events.get(timeout=5)
        assert event["routeKey"] == "ANY /v1/{proxy+}"
        assert event["pathParameters"] == {"proxy": "accounts/me/plain"}
        assert "body" not in event
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"hello": "world"}

    def test_unknown_route_is_404_and_a_failing_handler_500(self, stack: LocalStack) -> None:
        # When no route matches
        missing = httpx.get(f"{stack.api_url}/no/such/route", timeout=10)
        # Then API Gateway's 404 comes back
        assert missing.status_code == 404
        assert missing.json() == {"message": "Not Found"}

        # When the handler raises
        failed = httpx.get(f"{stack.api_url}/v1/boom", timeout=10)
        # Then API Gateway's 500 comes back
        assert failed.status_code == 500
        assert failed.json() == {"message": "Internal Server Error"}

    def test_a_caller_gone_before_its_answer_is_logged_once_and_the_bridge_serves_on(
        self, stack: LocalStack, fakes: Fakes, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Given a client that gives up (resets its connection) while the function is still running
        caplog.set_level(logging.WARNING, logger="sms_gateway_tools.localstack.http_bridge")
        port = int(stack.api_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET /v1/accounts/me/slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert fakes.slow_started.wait(WAIT_SECONDS)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # (the function answers once the caller is gone, however late this thread got here: a fixed 0.3 s of work
        # answered first, to a caller still there, when this thread was late on a busy machine)
        fakes.caller_gone.set()

        # Then the bridge says in one line that the answer was dropped, and why
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline and not any("had gone" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        [dropped] = [r.getMessage() for r in caplog.records if "had gone" in r.getMessage()]
        assert dropped.startswith("the caller of GET /v1/accounts/me/slow had gone when its answer (200) was ready")
        # And the next caller is answered
        assert httpx.get(f"{stack.api_url}/v1/accounts/me/plain", timeout=10).json() == {"hello": "world"}

    def test_sqs_messages_reach_the_dispatcher_with_partial_batch_failures(
        self, stack: LocalStack, fakes: Fakes
    ) -> None:
        # Given the dispatch queue with a short visibility timeout, so a failed record returns quickly (3 s, not 1: a
        # record the poller handed over and deleted more than the timeout later, on a busy machine, would come again, as
        # SQS delivers at least once, and be counted here as a delivery too many)
        sqs = stack.client("sqs")
        queue_url = stack.env["DISPATCH_QUEUE_URL"]
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": "3"})
        run = uuid.uuid4().hex[:8]

        # When three messages are sent, one of which the dispatcher reports as failed on its first delivery
        bodies = [f"ok-1-{run}", f"fail-once-{run}", f"ok-2-{run}"]
        for index, body in enumerate(bodies):
            sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=body,
                MessageGroupId=f"account-{run}-{index}",
                MessageDeduplicationId=f"{run}-{index}",
                MessageAttributes={"kind": {"DataType": "String", "StringValue": "dispatch"}},
            )

        # Then each arrives as a Lambda SQS record, and the failed one arrives a second time
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline and sum(r["body"] == bodies[1] for r in seen) < 2:
            seen.extend(drain(fakes.dispatched, 0.5))
        counts = {body: sum(r["body"] == body for r in seen) for body in bodies}
        assert counts == {bodies[0]: 1, bodies[1]: 2, bodies[2]: 1}

        record = next(r for r in seen if r["body"] == bodies[0])
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"].endswith(":sms-gateway-local-dispatch.fifo")
        assert record["awsRegion"] == "us-east-1"
        assert record["attributes"]["MessageGroupId"] == f"account-{run}-0"
        assert record["attributes"]["MessageDeduplicationId"] == f"{run}-0"
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert {"SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp", "SequenceNumber"} <= set(
            record["attributes"]
        )
        assert record["messageAttributes"]["kind"] == {
            "stringValue": "dispatch",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
        assert record["md5OfBody"]
        retried = [r for r in seen if r["body"] == bodies[1]]
        assert retried[1]["attributes"]["ApproximateReceiveCount"] == "2"
        assert retried[0]["messageId"] == retried[1]["messageId"]

        # And every message is deleted once it succeeded
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            if attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}:
                break
            time.sleep(0.2)
        assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
        assert drain(fakes.dispatched, 1.5) == []

        # And the priority dispatch queue (single sends) is polled too, its records naming it as their source
        sqs.send_message(
            QueueUrl=stack.env["PRIORITY_DISPATCH_QUEUE_URL"],
            MessageBody=f"ok-priority-{run}",
            MessageGroupId=f"account-{run}#priority",
            MessageDeduplicationId=f"{run}-priority",
        )
        priority = fakes.dispatched.get(timeout=WAIT_SECONDS)
        assert priority["body"] == f"ok-priority-{run}"
        assert drain(fakes.dispatched, 5) == []  # and it comes once
        assert priority["eventSourceARN"].endswith(":sms-gateway-local-priority-dispatch.fifo")

    def test_due_schedule_fires_once_and_is_deleted(self, stack: LocalStack, fakes: Fakes) -> None:
        # Given one-time schedules two seconds and an hour ahead, both at the scheduled-dispatch function
        scheduler = stack.client("scheduler")
        group = stack.env["SCHEDULE_GROUP_NAME"]
        now = datetime.now(UTC)
        common = {
            "GroupName": group,
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "ActionAfterCompletion": "DELETE",
        }
        target = {"Arn": stack.env["SCHEDULED_DISPATCH_FUNCTION_ARN"], "RoleArn": stack.env["SCHEDULER_ROLE_ARN"]}
        scheduler.create_schedule(
            Name="soon",
            ScheduleExpression=_at(now + timedelta(seconds=2)),
            Target={**target, "Input": json.dumps({"account_id": "a-1", "reference_id": 7})},
            **common,
        )
        scheduler.create_schedule(
            Name="later",
            ScheduleExpression=_at(now + timedelta(hours=1)),
            Target={**target, "Input": json.dumps({"account_id": "a-1", "reference_id": 8})},
            **common,
        )

        # When its time comes
        fired = fakes.scheduled.get(timeout=WAIT_SECONDS)

        # Then the function got the schedule's Input as its event, once, and the schedule is gone
        assert fired == {"account_id": "a-1", "reference_id": 7}
        assert drain(fakes.scheduled, 1.5) == []
        with pytest.raises(scheduler.exceptions.ResourceNotFoundException):
            scheduler.get_schedule(GroupName=group, Name="soon")
        # And the future one waits
        assert scheduler.get_schedule(GroupName=group, Name="later")["State"] == "ENABLED"
        scheduler.delete_schedule(GroupName=group, Name="later")

    def test_a_function_with_a_rate_rule_is_invoked_on_its_rate_as_eventbridge_does(
        self, stack: LocalStack, fakes: Fakes
    ) -> None:
        # Given the sweeper's Schedule event (template.yaml: rate(2 minutes)), its rate shortened to half a second
        from sms_gateway_tools.template import function_definitions, load_template, rate_seconds

        [expression] = next(
            fn for fn in function_definitions(load_template()) if fn.logical_id == "SweeperFunction"
        ).schedule_events
        assert rate_seconds(expression) == 120
        # When the stack runs for a while
        events = [fakes.swept.get(timeout=WAIT_SECONDS), fakes.swept.get(timeout=WAIT_SECONDS)]
        # Then the function is invoked again and again, with a scheduled event as EventBridge sends it
        for event in events:
            assert (event["source"], event["detail-type"], event["detail"]) == ("aws.events", "Scheduled Event", {})
        assert events[0]["id"] != events[1]["id"]

    def test_a_release_that_keeps_failing_is_retried_by_lambda_then_kept_in_the_schedule_dlq(
        self, stack: LocalStack, fakes: Fakes
    ) -> None:
        # Given a due schedule whose function raises every time (Scheduler invokes it asynchronously, so its own retry
        # policy and DLQ cover only an invoke refused: the function's errors are Lambda's to retry)
        payload = json.dumps({"account_id": "a-2", "reference_id": 9, "fail": True})
        scheduler, group, dlq_arn = _due_schedule(
            stack, "failing", stack.env["SCHEDULED_DISPATCH_FUNCTION_ARN"], payload
        )

        # When the loop has fired it
        attempts = [fakes.scheduled.get(timeout=WAIT_SECONDS) for _ in range(3)]

        # Then Lambda ran it three times (the template's EventInvokeConfig: two retries), and its on-failure
        # destination, the schedule DLQ, holds the release as the failure record's requestPayload; the schedule is gone
        assert attempts == [json.loads(payload)] * 3
        sqs = stack.client("sqs")
        dlq_url = sqs.get_queue_url(QueueName=dlq_arn.rsplit(":", 1)[1])["QueueUrl"]
        [message] = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=LONGEST_SQS_WAIT)["Messages"]
        record = json.loads(message["Body"])
        assert record["requestPayload"] == json.loads(payload)
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["responsePayload"]["errorType"] == "RuntimeError"
        sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            names = [s["Name"] for s in scheduler.list_schedules(GroupName=group)["Schedules"]]
            if "failing" not in names:
                break
            time.sleep(0.1)
        assert "failing" not in names
        assert drain(fakes.scheduled, 1.0) == []

    def test_a_schedule_whose_target_refuses_it_is_retried_then_dead_lettered_by_the_scheduler(
        self, stack: LocalStack
    ) -> None:
        # Given a due schedule whose target function does not exist (the invoke itself is refused)
        payload = json.dumps({"account_id": "a-3", "reference_id": 10})
        _, _, dlq_arn = _due_schedule(stack, "refused", stack.env["SCHEDULED_DISPATCH_FUNCTION_ARN"] + "-gone", payload)

        # Then, its retry spent, the scheduler puts the input itself in its dead-letter queue, the error alongside
        sqs = stack.client("sqs")
        dlq_url = sqs.get_queue_url(QueueName=dlq_arn.rsplit(":", 1)[1])["QueueUrl"]
        [message] = sqs.receive_message(
            QueueUrl=dlq_url, WaitTimeSeconds=LONGEST_SQS_WAIT, MessageAttributeNames=["All"]
        )["Messages"]
        assert message["Body"] == payload
        assert message["MessageAttributes"]["ERROR_CODE"]["StringValue"] == "LookupError"
        sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": None}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "m-2"}]}, {"m-2"}),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, None),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, None),
        ({"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]}, None),
        ({"batchItemFailures": [{"id": "m-1"}]}, None),
        ({"batchItemFailures": "m-1"}, None),
        ("ok", None),
    ],
)
def test_partial_batch_response_follows_lambda(response: Any, expected: set[str] | None) -> None:
    # Given a batch of two messages, When the handler answers `response`,
    # Then these records are kept (None: the whole batch is retried)
    from sms_gateway_tools.localstack.sqs_poller import failed_message_ids

    assert failed_message_ids(response, ["m-1", "m-2"]) == expected


def local_stack_at(port: int) -> Any:
    """What the banner reads of a running stack."""
    from types import SimpleNamespace

    return SimpleNamespace(
        api_url=f"http://127.0.0.1:{port}",
        callback_url=f"http://127.0.0.1:{port + 1}",
        simulator_url=f"http://127.0.0.1:{port + 2}",
        moto_endpoint=f"http://127.0.0.1:{port + 3}",
        state_file=Path(".local/stack.json"),
    )


def test_the_banner_shows_the_demo_accounts_signing_secret_by_its_name(aws: dict[str, str]) -> None:
    from sms_gateway_tools.localstack.commands import _demo_account, banner

    # Given the demo account `make dev` creates
    stack = local_stack_at(3000)
    account = _demo_account(stack.api_url)
    assert account is not None
    # When the banner prints it
    lines = dict(line.split(None, 1) for line in banner(stack, account).splitlines() if " " in line.strip())
    # Then its signing secret is under the name the admin commands and the API use
    assert lines["signing_secret"].startswith("whsec_")
    assert "webhook_secret" not in lines


def test_the_banners_inbound_command_runs_as_printed_without_an_activated_virtualenv() -> None:
    import subprocess

    from sms_gateway_tools.localstack.commands import banner

    # Given the banner `make dev` prints (the virtualenv's bin is not on a fresh shell's PATH)
    lines = banner(local_stack_at(3000), None).splitlines()
    command = lines[lines.index("Simulate an inbound SMS:") + 1].split()
    # When its command is run as printed, from the repository root, with a PATH that has no virtualenv on it
    assert command[1:3] == ["simulate", "inbound"]
    ran = subprocess.run(
        [*command[:3], "--help"],
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it runs
    assert ran.returncode == 0, ran.stderr
    assert "--message" in ran.stdout


def test_the_banners_inbound_example_leaves_the_demo_number_able_to_receive(aws: dict[str, str]) -> None:
    import shlex

    from sms_gateway.domain.optouts import KeywordAction, keyword_request
    from sms_gateway_tools.localstack.commands import DEMO_BODY, _demo_account, banner

    # Given the banner `make dev` prints: a curl that sends from the demo sender to a number, then an inbound SMS
    # to try, which a newcomer pastes before going on to the README's examples (all to that number, from that sender)
    stack = local_stack_at(3000)
    lines = banner(stack, _demo_account(stack.api_url)).splitlines()
    command = shlex.split(lines[lines.index("Simulate an inbound SMS:") + 1])
    given = dict(zip(command[3::2], command[4::2], strict=True))
    assert (given["--from"], given["--to"]) == (DEMO_BODY["to"], DEMO_BODY["from"])
    # When that inbound SMS arrives, then it is a message to forward, not a keyword that opts the number out: the
    # curl printed above it (and every README example) still sends rather than answering "opted out"
    request = keyword_request(given["--message"], given["--to"])
    assert request is None or request.action is not KeywordAction.OPT_OUT


def test_the_banner_shows_an_unset_webhook_as_the_admin_commands_do(aws: dict[str, str]) -> None:
    from sms_gateway_tools.localstack.commands import _demo_account, banner

    # Given the demo account, which has no webhook URLs
    stack = local_stack_at(3000)
    account = _demo_account(stack.api_url)
    assert account is not None
    # When the banner prints it
    lines = dict(line.split(None, 1) for line in banner(stack, account).splitlines() if " " in line.strip())
    # Then an unset URL is "-", as show-account prints it, not Python's None
    assert (lines["dlr_url"], lines["inbound_url"]) == ("-", "-")
    assert lines["senders"] == "48974, DemoCo"


def test_a_busy_port_says_how_to_pick_another(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools.localstack import commands

    # Given a port another program listens on
    def busy(self: LocalStack) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(LocalStack, "start", busy)
    monkeypatch.setattr(LocalStack, "stop", lambda self: None)
    # When the local stack is started on it
    code = commands.run_local(port=3000, dlr_delay=0.3, failure_rate=0.0, log_level="WARNING")
    # Then it stops with exit code 1 and says how to use another port
    err = capsys.readouterr().err
    assert code == 1
    assert "Address already in use" in err
    assert "PORT=3001 make dev" in err and "--port 3001" in err


MAKE_DEV_WITH_STATE_DIR = """
import pathlib, sys
from sms_gateway_tools.localstack import stack
stack.default_state_dir = lambda: pathlib.Path(sys.argv[1])  # the checkout's .local/, here a temporary one
from sms_gateway_tools.localstack import commands
sys.exit(commands.run_local(port=0, dlr_delay=0.3, failure_rate=0.0, log_level="WARNING"))
"""


def test_make_dev_started_while_a_test_stack_runs_is_the_one_the_admin_commands_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from sms_gateway_tools.localstack import stack as stack_module

    monkeypatch.setattr(stack_module, "default_state_dir", lambda: tmp_path)
    # Given a stack started the way the e2e tests and `make chaos` start theirs (port 0, the default state dir)
    with LocalStack(port=0, functions={"ApiFunction": Fakes().api}):
        # When the developer starts `make dev` in another terminal (sms-gateway local, same checkout)
        dev = subprocess.Popen(
            [sys.executable, "-c", MAKE_DEV_WITH_STATE_DIR, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert dev.stdout is not None
            for line in dev.stdout:
                if "local stack is running" in line:
                    break
            else:
                raise AssertionError(f"make dev did not start (exit {dev.wait()})")
            # Then the state file the admin and simulate commands read describes the stack `make dev` runs
            state = read_stack_file(tmp_path)
            assert state is not None and state["pid"] == dev.pid, (state or {}).get("pid")
        finally:
            dev.terminate()
            dev.wait(timeout=60)


MAKE_DEV_SIGNALLED_TWICE = """
import signal, sys, threading
from sms_gateway_tools.localstack import commands
from sms_gateway_tools.localstack.stack import LocalStack

LocalStack.start = lambda self: None  # no AWS emulation needed: only run_local's own signal handling is exercised
LocalStack.stop = lambda self: None
LocalStack.api_url = property(lambda self: "http://127.0.0.1:0")
commands.banner = lambda stack, account: "local stack is running"
commands._demo_account = lambda api_url: None
notify_all = threading.Condition.notify_all


def notify_all_as_a_second_sigterm_lands(self):
    # The second SIGTERM lands while the first one's handler is inside Event.set(), as when `timeout` signals the
    # process group and make forwards its own SIGTERM to `sms-gateway local` microseconds later.
    if threading.current_thread() is threading.main_thread() and not getattr(sys, "second_sent", False):
        sys.second_sent = True
        signal.raise_signal(signal.SIGTERM)
    return notify_all(self)


threading.Condition.notify_all = notify_all_as_a_second_sigterm_lands
sys.exit(commands.run_local(port=0, dlr_delay=0.3, failure_rate=0.0, log_level="WARNING"))
"""


@pytest.mark.timeout(40)
def test_the_local_stack_stops_when_a_second_sigterm_arrives_while_the_first_is_handled() -> None:
    import signal
    import subprocess
    import sys

    # Given `sms-gateway local` running
    dev = subprocess.Popen(
        [sys.executable, "-c", MAKE_DEV_SIGNALLED_TWICE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert dev.stdout is not None
        assert "local stack is running" in dev.stdout.readline()
        # When it gets SIGTERM, and a second one while it handles the first
        dev.send_signal(signal.SIGTERM)
        dev.send_signal(signal.SIGTERM)  # and one more from outside, as make's own forwarded SIGTERM
        # Then it stops, exit code 0, as docs/local-stack.md says
        assert dev.wait(timeout=15) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(timeout=10)
