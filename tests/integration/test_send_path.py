"""The 9bits send path through the real handlers on moto: accept, dispatch, DLR, read back."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import FakeContext, load_event, load_function, route_simulator_upstreams_to


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Cinema Club", senders=["48974"], credits=100)


@pytest.fixture
def api(aws: dict[str, str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


ONE = {"from": "48974", "to": "2348020000000", "message": "hi"}


def send_event(token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    event = load_event("api-sendsms-9bits.json", YOUR_API_Token=token)
    if body is not None:
        event["body"] = json.dumps(body)
    return event


# What is queued for dispatch is on two queues: single sends on the priority one, bulk batches on the other.
DISPATCH_QUEUES = ("PRIORITY_DISPATCH_QUEUE_URL", "DISPATCH_QUEUE_URL")


def queued_records(env: dict[str, str], queues: tuple[str, ...] = DISPATCH_QUEUES) -> list[dict[str, Any]]:
    """Up to 10 records received from each of `queues` (the dispatch queues' env names, single sends first)."""
    return [record for name in queues for record in received_from(env[name])]


def received_from(queue_url: str) -> list[dict[str, Any]]:
    """Up to 10 records received from the queue, each with the URL and ARN of the queue it came from (`QueueUrl`,
    `EventSourceARN`, which as_lambda_sqs_event puts in the Lambda event, as the event source does)."""
    import boto3

    sqs = boto3.client("sqs")
    answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"])
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return [{**record, "QueueUrl": queue_url, "EventSourceARN": arn} for record in answer.get("Messages", [])]


def delete_records(records: list[dict[str, Any]]) -> None:
    """Deletes records queued_records received, each from its own queue, as Lambda's poller does once handled."""
    import boto3

    for record in records:
        boto3.client("sqs").delete_message(QueueUrl=record["QueueUrl"], ReceiptHandle=record["ReceiptHandle"])


def balance(account_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    found = gateway().store.get_account(account_id)
    assert found is not None
    return found.credits


def test_seed_one_send_is_accepted_stored_charged_and_queued(aws, account, api):
    # Given the 9bits seed's request body and a valid token
    # When it is posted
    response = api(send_event(account["token"]))
    # Then the answer is the batches seed's shape
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["status_code"] == 200
    assert body["message"] == "request is being processed"
    assert body["recipients_processed"] == 1
    assert body["reference_id"].isdigit()
    # And one credit is taken for the one-part message
    assert balance(account["account_id"]) == 99
    # And one dispatch record is queued in the account's message group
    records = queued_records(aws)
    assert len(records) == 1
    # A single-recipient send takes the account's priority lane (OTPs overtake its bulk batches)
    assert records[0]["Attributes"]["MessageGroupId"] == f"{account['account_id']}#priority"
    command = json.loads(records[0]["Body"])
    assert command["reference_id"] == int(body["reference_id"])
    assert len(command["message_ids"]) == 1


@pytest.mark.parametrize(
    ("headers", "body", "status", "fragment"),
    [
        ({"authorization": "Bearer wrong"}, None, 401, "invalid credentials"),
        ({"authorization": ""}, None, 401, "Bearer"),
        (None, {"from": "48974", "to": "12", "message": "hi"}, 400, "invalid recipient"),
        (None, {"from": "NOTMINE", "to": "2348020000000", "message": "hi"}, 400, "not registered"),
        (None, {"from": "48974", "to": "2348020000000"}, 400, "exactly one of"),
        (None, {"from": "48974", "to": "2348020000000", "message": "a", "body": "b"}, 400, "exactly one of"),
        (None, {"to": "2348020000000", "message": "hi"}, 400, "from"),
        (None, {**ONE, "callback_url": "https://client.example/dlr"}, 400, "needs 'delivery_report': 'yes'"),
        (None, {**ONE, "delivery_report": "yes", "callback_url": "ftp://client.example/dlr"}, 400, "https"),
        # A host name the notifier's httpx (IDNA 2008) could never post to
        (None, {**ONE, "delivery_report": "yes", "callback_url": "https://☃.net/dlr"}, 400, "IDNA 2008"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(aws, account, api, headers, body, status, fragment):
    # Given a request that is wrong in one way
    event = send_event(account["token"], body)
    if headers is not None:
        event["headers"].update(headers)
    # When it is posted
    response = api(event)
    # Then the status and message say what is wrong, in the 9bits shape
    assert response["statusCode"] == status
    answer = json.loads(response["body"])
    assert answer["status_code"] == status
    assert fragment in answer["message"]
    # And a 401 challenges for the Bearer token the family takes (RFC 9110 11.6.1), the body unchanged
    challenge = {name.lower(): value for name, value in response["headers"].items()}.get("www-authenticate")
    assert challenge == ("Bearer" if status == 401 else None)
    # And nothing was charged or queued
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


@pytest.mark.parametrize(
    "unset",
    [{"delivery_report": None}, {"delivery_report": ""}, {"callback_url": ""}],
    ids=["delivery_report-null", "delivery_report-empty", "callback_url-empty"],
)
def test_optional_fields_written_unset_take_the_seeds_defaults(aws, account, api, unset):
    # Given seed 1's send with an optional field of seed 3 written unset, as a client's serializer writes it
    # When it is posted
    response = api(send_event(account["token"], {**ONE, **unset}))
    # Then it is sent as if the field were absent: delivery_report "none", no callback URL
    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["recipients_processed"] == 1
    assert balance(account["account_id"]) == 99


@pytest.mark.parametrize(
    "numeric",
    [{"from": 48974}, {"ref_id": 1234567}, {"session_id": 67543}, {"message": 123456}, {"ref_id": 128152.0}],
    ids=["from", "ref_id", "session_id", "message", "ref_id as a whole float"],
)
def test_scalar_fields_given_as_json_numbers_are_read_as_text(aws, account, api, numeric):
    # Given seed 1/2's send with one text field written as a JSON number (PHP's json_encode of an int)
    # When it is posted
    response = api(send_event(account["token"], {**ONE, **numeric}))
    # Then it is sent, the number read as its digits, as `to` already is
    assert response["statusCode"] == 200, response["body"]
    assert balance(account["account_id"]) == 99


@pytest.mark.parametrize(
    ("sent_date", "echoed"),
    [(1704239437000, "1704239437000"), (1704239437, "1704239437"), (1704239437000.0, "1704239437000")],
    ids=["Jackson's java.util.Date (epoch milliseconds)", "PHP's time()", "a whole float"],
)
def test_a_sent_date_written_as_a_json_number_is_sent_and_echoed_as_its_digits(aws, account, api, sent_date, echoed):
    # Given seed 1's send whose sent_date a client's serializer wrote as a number: plain Jackson writes a
    # java.util.Date as epoch milliseconds (WRITE_DATES_AS_TIMESTAMPS is on by default), PHP sends time()
    body = {**ONE, "sent_date": sent_date, "delivery_report": "yes"}
    # When it is posted
    response = api(send_event(account["token"], body))
    # Then it is sent, the number kept as its digits as session_id and ref_id are, and echoed back so
    assert response["statusCode"] == 200, response["body"]
    assert balance(account["account_id"]) == 99
    reference_id = json.loads(response["body"])["reference_id"]
    [entry] = read_delivery_report(api, account["token"], reference_id)
    assert entry["sent_date"] == echoed


@pytest.mark.parametrize(
    ("written", "mode"), [("Yes", "yes"), ("YES", "yes"), ("None", "none"), ("NONE", "none"), (" yes ", "yes")]
)
def test_delivery_report_is_read_whatever_its_case(aws, account, api, written, mode):
    # Given a send whose delivery_report a .NET client's enum converter wrote by the member's name ("Yes", "None":
    # JSON.NET's StringEnumConverter and System.Text.Json's JsonStringEnumConverter write names as declared)
    response = api(send_event(account["token"], {**ONE, "delivery_report": written}))
    # Then it is sent with that mode, as the seed's lower-case value is
    assert response["statusCode"] == 200, response["body"]
    reference_id = json.loads(response["body"])["reference_id"]
    event = load_event("api-batch-read.json", YOUR_API_Token=account["token"])
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/ng/v1/batches/{reference_id}"
    batch = json.loads(api(event)["body"])
    assert batch["delivery_report"] == mode


def test_a_fraction_where_text_is_read_is_refused_and_nothing_is_charged(aws, account, api):
    response = api(send_event(account["token"], {**ONE, "ref_id": 1.5}))
    assert response["statusCode"] == 400
    assert "ref_id" in json.loads(response["body"])["message"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_a_send_beyond_the_balance_is_refused_with_402(aws, account, api):
    numbers = [f"234802000{i:04d}" for i in range(101)]
    response = api(send_event(account["token"], {"from": "48974", "to": numbers, "body": "hello"}))
    assert response["statusCode"] == 402
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_invalid_json_body_is_a_400(aws, account, api):
    event = send_event(account["token"])
    event["body"] = "{not json"
    response = api(event)
    assert response["statusCode"] == 400
    assert "not valid JSON" in json.loads(response["body"])["message"]


class RecordingUpstream:
    """An upstream speaking the simulator's protocol through httpx.MockTransport."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.fail_texts: set[str] = set()
        self.submits: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        self.submits.append(payload)
        if payload["text"] in self.fail_texts:
            return httpx.Response(503, json={"error": "unavailable"})
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "nope"})
        return httpx.Response(200, json={"message_id": f"sim-{len(self.submits)}", "status": "accepted"})


@pytest.fixture
def upstream(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> RecordingUpstream:
    recorder = RecordingUpstream()
    route_simulator_upstreams_to(monkeypatch, recorder)
    return recorder


def as_lambda_sqs_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": r["MessageId"],
                "receiptHandle": r["ReceiptHandle"],
                "body": r["Body"],
                "attributes": r["Attributes"],
                "messageAttributes": {},
                "md5OfBody": r["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": r.get("EventSourceARN", "arn:aws:sqs:us-east-1:123456789012:dispatch.fifo"),
                "awsRegion": "us-east-1",
            }
            for r in records
        ]
    }


def read_delivery_report(api: Callable, token: str, reference_id: str) -> list[dict[str, Any]]:
    event = load_event("api-batch-delivery-report.json", YOUR_API_Token=token)
    event["rawPath"] = f"/ng/v1/batches/{reference_id}/delivery_report"
    event["requestContext"]["http"]["path"] = event["rawPath"]
    response = api(event)
    assert response["statusCode"] == 200, response
    return json.loads(response["body"])["data"]


def test_dispatch_submits_once_even_when_the_record_comes_twice(aws, account, api, upstream):
    # Given an accepted send and its dispatch record
    reference_id = json.loads(api(send_event(account["token"]))["body"])["reference_id"]
    event = as_lambda_sqs_event(queued_records(aws))
    dispatcher = load_function("dispatcher")
    # When the dispatcher gets the record, and then the same record again (SQS is at-least-once)
    first = dispatcher.handler(event, FakeContext())
    second = dispatcher.handler(event, FakeContext())
    # Then the upstream saw exactly one submit, with our client reference and the seed's fields
    assert first == {"batchItemFailures": []}
    assert second == {"batchItemFailures": []}
    assert len(upstream.submits) == 1
    submit = upstream.submits[0]
    assert submit["to"] == "2348020000000"
    assert submit["from"] == "48974"
    assert submit["text"] == "When was the last time you went to the cinema?"
    assert submit["dlr_url"].endswith("/callbacks/simulator/dlr")
    # And the message reads submitted
    [entry] = read_delivery_report(api, account["token"], reference_id)
    assert entry["status"] == "submitted"


def test_a_transient_upstream_failure_returns_the_record_to_the_queue(aws, account, api, upstream):
    upstream.status = 503
    api(send_event(account["token"]))
    event = as_lambda_sqs_event(queued_records(aws))
    answer = load_function("dispatcher").handler(event, FakeContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    # And once the upstream recovers, the retry submits it
    upstream.status = 200
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    assert len(upstream.submits) == 2
    assert upstream.submits[0]["client_ref"] == upstream.submits[1]["client_ref"]


def test_a_single_send_handed_back_comes_back_on_the_priority_queue_after_its_backoff(
    aws, account, api, upstream, monkeypatch
):
    import time

    from sms_gateway import bootstrap

    # Given a single send's record, received from the priority dispatch queue, and an upstream busy for now
    monkeypatch.setenv("DISPATCH_BACKOFF_BASE_SECONDS", "1")
    bootstrap.reset()
    upstream.status = 503
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    assert record["QueueUrl"] == aws["PRIORITY_DISPATCH_QUEUE_URL"]
    # When the dispatcher hands it back to retry after its backoff
    answer = load_function("dispatcher").handler(as_lambda_sqs_event([record]), FakeContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": record["MessageId"]}]}
    # Then it is visible again on the priority queue once its backoff is over, not after the queue's 360 s
    # visibility timeout (the backoff set on the queue it came from, not on the bulk dispatch queue)
    time.sleep(1.5)
    assert [again["MessageId"] for again in queued_records(aws)] == [record["MessageId"]]


class TwelveHoursFromReceipt:
    """The SQS client, refusing a ChangeMessageVisibility that would hide a received record past 12 hours from its
    receipt, as SQS does ("If you try to extend the visibility timeout beyond the maximum, your request is rejected";
    ports.MAX_QUEUE_DELAY_SECONDS). A handler asks within its timeout of the receipt, so more than 43200 less a
    second is always refused."""

    def __init__(self, client) -> None:
        self.client = client
        self.asked: list[int] = []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def change_message_visibility(self, **params):
        self.asked.append(params["VisibilityTimeout"])
        if params["VisibilityTimeout"] > 43_199:
            raise RuntimeError("InvalidParameterValue: total VisibilityTimeout beyond 12 hours from the receipt")
        return self.client.change_message_visibility(**params)


def test_a_throttle_asking_for_a_day_hands_the_record_back_for_as_long_as_sqs_allows(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway

    # Given an upstream whose daily quota is spent: it answers 429 with Retry-After of a day
    async def quota_spent(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "86400"}, json={"error": "daily quota exceeded"})

    route_simulator_upstreams_to(monkeypatch, quota_spent)
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    queue = gateway().dispatch_queue
    sqs = TwelveHoursFromReceipt(queue.client)
    monkeypatch.setattr(queue, "_client", sqs)
    # When the dispatcher gets the record
    answer = load_function("dispatcher").handler(as_lambda_sqs_event([record]), FakeContext())
    # Then the record goes back for as long as SQS lets a received record be hidden (12 h from its receipt, less
    # the handler's time), not for a day nor for 43200 s, which SQS refuses: it is not counted as a failed record,
    # nor back in 5 s to be throttled again
    assert answer == {"batchItemFailures": [{"itemIdentifier": record["MessageId"]}]}
    assert sqs.asked and all(seconds <= 42_900 for seconds in sqs.asked), sqs.asked


@pytest.mark.parametrize("in_order", [True, False])
def test_a_single_send_is_queued_on_the_priority_queue_and_a_bulk_batch_on_the_dispatch_queue(
    aws, account, api, in_order
):
    from sms_gateway_tools.admin import set_account

    # Given an account whose single sends go out in order (its priority lane), or each in a lane of its own
    set_account(account_id=account["account_id"], single_sends_in_order=in_order)
    # When it sends a batch to two numbers, then one message to one number
    bulk = api(send_event(account["token"], {**ONE, "to": ["2348020000001", "2348020000002"], "message": "bulk"}))
    single = api(send_event(account["token"], {**ONE, "message": "code 1234"}))
    assert bulk["statusCode"] == single["statusCode"] == 200
    # Then the batch is on the dispatch queue in the account's bulk lane, and the single send on the priority
    # dispatch queue (its own event source and slots) in the lane the account's setting gives it
    [batch] = queued_records(aws, ("DISPATCH_QUEUE_URL",))
    [one] = queued_records(aws, ("PRIORITY_DISPATCH_QUEUE_URL",))
    assert str(json.loads(batch["Body"])["reference_id"]) == json.loads(bulk["body"])["reference_id"]
    assert str(json.loads(one["Body"])["reference_id"]) == json.loads(single["body"])["reference_id"]
    assert batch["Attributes"]["MessageGroupId"] == account["account_id"]
    lane = "#priority" if in_order else f"#send#{json.loads(one['Body'])['reference_id']}"
    assert one["Attributes"]["MessageGroupId"] == account["account_id"] + lane


def test_a_permanent_upstream_refusal_fails_the_message_and_refunds_it(aws, account, api, upstream):
    upstream.status = 400
    reference_id = json.loads(api(send_event(account["token"]))["body"])["reference_id"]
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(queued_records(aws)), FakeContext())
    assert answer == {"batchItemFailures": []}
    [entry] = read_delivery_report(api, account["token"], reference_id)
    assert entry["status"] == "failed"
    assert balance(account["account_id"]) == 100


def test_a_body_over_256_kb_is_refused_with_413_and_changes_nothing(aws, account, api):
    event = send_event(account["token"], {"from": "48974", "to": "2348020000000", "message": "x" * (257 * 1024)})
    response = api(event)
    assert response["statusCode"] == 413
    assert "256 KB" in json.loads(response["body"])["message"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_a_forged_cursor_is_a_400_not_a_read_of_someone_else(aws, account, api):
    reference_id = json.loads(api(send_event(account["token"]))["body"])["reference_id"]
    event = load_event("api-batch-delivery-report.json", YOUR_API_Token=account["token"])
    event["rawPath"] = f"/ng/v1/batches/{reference_id}/delivery_report"
    event["requestContext"]["http"]["path"] = event["rawPath"]
    forged = base64.urlsafe_b64encode(
        json.dumps({"pk": {"S": "MSGS#1#2"}, "sk": {"S": "MSG#0000000000000000003"}}).encode()
    ).decode()
    event["queryStringParameters"] = {"next": forged}
    response = api(event)
    assert response["statusCode"] == 400
    assert "cursor" in json.loads(response["body"])["message"]


def poison_record(receive_count: int) -> dict[str, Any]:
    event = load_event("sqs-dispatch.json")
    record = event["Records"][0]
    record["body"] = '{"not": "a dispatch command"}'
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    return event


def test_a_record_that_keeps_failing_is_dead_lettered_with_its_reason(aws):
    import boto3

    dispatcher = load_function("dispatcher")
    # Given a record the dispatcher cannot process, delivered many times already (held behind others of its group,
    # handed back for want of time: not failures): its first five failures are simply retried
    for delivery in range(5):
        early = poison_record(receive_count=50 + delivery)
        assert dispatcher.handler(early, FakeContext()) == {
            "batchItemFailures": [{"itemIdentifier": early["Records"][0]["messageId"]}]
        }
    # When it fails for the sixth time (DISPATCH_MAX_ATTEMPTS), counted per record in the table
    last = poison_record(receive_count=55)
    # Then it is consumed and parked in the dead-letter queue with the reason
    assert dispatcher.handler(last, FakeContext()) == {"batchItemFailures": []}
    parked = boto3.client("sqs").receive_message(
        QueueUrl=aws["DISPATCH_DEAD_LETTER_QUEUE_URL"], MessageAttributeNames=["All"]
    )["Messages"]
    assert parked[0]["Body"] == '{"not": "a dispatch command"}'
    assert parked[0]["MessageAttributes"]["reason"]["StringValue"] == "failed 6 times: ValidationError"


def test_a_failed_record_holds_back_the_rest_of_its_account_but_not_other_accounts(aws, account, api, upstream):
    from sms_gateway_tools.admin import create_account

    other = create_account(name="Other", senders=["48977"], credits=10)
    # Given two bulk batches of one account, the first of which meets an unavailable upstream,
    # and a batch of another account behind them
    for text in ("first", "second"):
        api(send_event(account["token"], {"from": "48974", "to": ["2348020000000", "2348030000000"], "body": text}))
    api(send_event(other["token"], {"from": "48977", "to": ["2348020000000", "2348030000000"], "body": "other"}))
    upstream.fail_texts = {"first"}
    records = queued_records(aws)
    assert len(records) == 3
    # When the dispatcher gets them in one invocation
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then the account's second batch is not sent ahead of its first (both go back), the other account's is
    by_text = {json.loads(r["Body"])["reference_id"]: r["MessageId"] for r in records}
    failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
    assert len(failed) == 2 and failed <= set(by_text.values())
    sent_texts = [submit["text"] for submit in upstream.submits]
    assert "second" not in sent_texts
    assert sent_texts.count("other") == 2


def test_a_send_from_a_sender_just_added_is_sent_by_a_dispatcher_that_cached_the_account_before(
    aws, account, api, upstream
):

    from sms_gateway_tools.admin import add_sender

    # Given a warm dispatcher that has just dispatched one of the account's sends (its account settings cached)
    dispatcher = load_function("dispatcher")
    api(send_event(account["token"]))
    [first] = queued_records(aws)
    assert dispatcher.handler(as_lambda_sqs_event([first]), FakeContext()) == {"batchItemFailures": []}
    delete_records([first])
    # And the operator then adds a sender to the account, and the client sends from it at once (accepted: 200)
    add_sender(account_id=account["account_id"], sender="CINEMA")
    answer = api(send_event(account["token"], {"from": "CINEMA", "to": "2348020000001", "message": "new sender"}))
    assert answer["statusCode"] == 200, answer
    reference_id = json.loads(answer["body"])["reference_id"]
    # When the same dispatcher gets its record a few seconds later
    [second] = queued_records(aws)
    assert dispatcher.handler(as_lambda_sqs_event([second]), FakeContext()) == {"batchItemFailures": []}
    # Then it is sent from the new sender, not failed sender_removed and refunded
    [entry] = read_delivery_report(api, account["token"], reference_id)
    assert entry["status"] == "submitted", entry
    assert [s["from"] for s in upstream.submits] == ["48974", "CINEMA"]
