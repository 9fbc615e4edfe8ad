"""Client webhook retries through the real notifier and api handlers on moto: the schedule, dead-lettering with a
reason, the failure records, and listing and resending them in the 9bits dialect."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from sms_gateway.logic.notify import WebhookFailed, WebhookResponse
from tests.conftest import FakeContext, load_event, load_function


class ClientWebhook:
    """Stands in for consumers.post_webhook (the HTTP client and its SSRF guard are not what is tested here): answers
    each POST with the next scripted status, then 200."""

    def __init__(self, *statuses: int, retry_after: float | None = None) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.posts: list[dict[str, Any]] = []

    async def __call__(self, url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        status = self.statuses.pop(0) if self.statuses else 200
        self.posts.append({"url": url, "headers": headers, "body": json.loads(body), "status": status})
        if status == 0:
            raise WebhookFailed("client webhook unreachable: connection refused", unreachable=True, host_down=True)
        return WebhookResponse(status_code=status, body='{"ok":true}', retry_after=self.retry_after)


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch, aws: dict[str, str]) -> Callable[[str], None]:
    """Sets NOTIFY_RETRY_DELAYS for the handlers (0 s delays make a retry visible at once in moto)."""
    from sms_gateway import bootstrap

    def set_delays(value: str) -> None:
        monkeypatch.setenv("NOTIFY_RETRY_DELAYS", value)
        bootstrap.reset()

    return set_delays


@pytest.fixture
def accounts(aws: dict[str, str]) -> dict[str, dict[str, Any]]:
    from sms_gateway_tools.admin import create_account

    return {
        "a": create_account(name="Cinema Club", senders=["48974"], credits=10, dlr_url="https://client.example/dlr"),
        "b": create_account(name="Other", senders=["48975"], credits=10, dlr_url="https://other.example/dlr"),
    }


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ClientWebhook]:
    from sms_gateway import consumers

    def install(*statuses: int, retry_after: float | None = None) -> ClientWebhook:
        hook = ClientWebhook(*statuses, retry_after=retry_after)
        monkeypatch.setattr(consumers, "post_webhook", hook)
        return hook

    return install


def notification(account_id: str, n: int = 1) -> dict[str, Any]:
    return {
        "kind": "dlr",
        "id": f"dlr_{n}_3",
        "account_id": account_id,
        "url": None,
        "payload": {"type": "delivery report", "message_id": str(n), "status": "delivered", "sequence": 3},
    }


def publish(*notifications: dict[str, Any]) -> None:
    from sms_gateway.bootstrap import gateway

    gateway().notify_queue.publish(list(notifications))


def receive(url: str, *, wanted: int = 10) -> list[dict[str, Any]]:
    answer = boto3.client("sqs").receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=wanted,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
        WaitTimeSeconds=0,
    )
    return answer.get("Messages", [])


def run_notifier(env: dict[str, str], meter: Any = None) -> dict[str, Any]:
    """One poll of the notify queue, as Lambda's event source mapping does it: successes are deleted. With a
    bench.AwsCallMeter, `requests` are those the notifier's handler made."""
    from sms_gateway_tools.localstack.sqs_poller import failed_message_ids, lambda_record

    messages = receive(env["NOTIFY_QUEUE_URL"])
    assert messages, "nothing visible on the notify queue"
    records = [lambda_record(m, "arn:aws:sqs:us-east-1:123456789012:notify") for m in messages]
    if meter is not None:
        meter.reset()
    response = load_function("notifier").handler({"Records": records}, FakeContext())
    requests = Counter(meter.calls) if meter is not None else Counter()
    failed = failed_message_ids(response, [r["messageId"] for r in records])
    assert failed is not None
    for record in records:
        if record["messageId"] not in failed:
            boto3.client("sqs").delete_message(QueueUrl=env["NOTIFY_QUEUE_URL"], ReceiptHandle=record["receiptHandle"])
    return {"response": response, "failed": len(failed), "records": records, "requests": requests}


def queue_counts(url: str) -> tuple[int, int]:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def record_of(account_id: str, notification_id: str) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store.get_webhook_failure(account_id, notification_id)


def api(method: str, path: str, token: str, *, query: dict[str, str] | None = None, body: Any = None) -> Any:
    event = load_event("api-batch-read.json", YOUR_API_Token=token)
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["pathParameters"] = {"proxy": path.removeprefix("/ng/v1/")}
    if query:
        event["queryStringParameters"] = query
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    response = load_function("api").handler(event, FakeContext())
    return response["statusCode"], json.loads(response["body"])


def dead_notification(env: dict[str, str], account_id: str, n: int = 1) -> str:
    """A notification that failed its only two attempts (NOTIFY_RETRY_DELAYS=0)."""
    publish(notification(account_id, n))
    run_notifier(env)
    run_notifier(env)
    return f"dlr_{n}_3"


# ---------------------------------------------------------------- retries


def test_a_client_failing_twice_then_answering_gets_it_and_the_record_ends_delivered(aws, accounts, delays, webhook):
    # Given a client webhook that answers 500, then is unreachable, then answers 200
    delays("0,0,0")
    hook = webhook(500, 0, 200)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    # When the notifier takes the record: the first attempt fails and is reported as a failed item
    first = run_notifier(aws)
    assert first["failed"] == 1
    record = record_of(account_id, "dlr_1_3")
    assert (record.state, record.attempts, record.last_status_code) == ("retrying", 1, 500)
    assert record.url == "https://client.example/dlr"
    # And the second fails too (no status code: unreachable)
    assert run_notifier(aws)["failed"] == 1
    record = record_of(account_id, "dlr_1_3")
    assert (record.state, record.attempts, record.last_status_code) == ("retrying", 2, None)
    assert "unreachable" in record.last_error
    # When the third attempt succeeds
    assert run_notifier(aws)["failed"] == 0
    # Then the client got the same notification each time, signed with the same webhook-id
    assert [post["status"] for post in hook.posts] == [500, 0, 200]
    assert {post["headers"]["webhook-id"] for post in hook.posts} == {"dlr_1_3"}
    assert hook.posts[-1]["body"] == notification(account_id)["payload"]
    # And the record says delivered, the queue is empty and nothing was dead-lettered
    record = record_of(account_id, "dlr_1_3")
    assert record.state == "delivered" and record.delivered_at
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    assert receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]) == []


def test_a_copy_of_a_notification_already_delivered_is_dropped_when_its_post_fails(aws, accounts, delays, webhook):
    # Given a notification that failed once and then reached the client (its record reads delivered)
    delays("0")
    hook = webhook(500, 200, 500, 500)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    assert run_notifier(aws)["failed"] == 1
    assert run_notifier(aws)["failed"] == 0
    assert record_of(account_id, "dlr_1_3").state == "delivered"
    # When a second copy of it (SQS delivers at least once) comes and the client's webhook now fails
    publish(notification(account_id))
    result = run_notifier(aws)
    # Then the copy is dropped: not retried, not dead-lettered, and the record still says delivered
    assert result["failed"] == 0
    assert [post["status"] for post in hook.posts] == [500, 200, 500]
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    assert receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]) == []
    assert record_of(account_id, "dlr_1_3").state == "delivered"
    assert api("GET", "/ng/v1/webhooks/failures", accounts["a"]["token"], query={"state": "dead"})[1]["data"] == []


def test_a_notification_sqs_delivers_twice_while_the_webhook_fails_is_not_lost(aws, accounts, delays, webhook):
    # Given a client webhook that fails twice and then answers, and one notification on the queue
    from sms_gateway_tools.localstack.sqs_poller import failed_message_ids, lambda_record

    delays("0,0")
    hook = webhook(500, 500, 200)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    [message] = receive(aws["NOTIFY_QUEUE_URL"])
    record = lambda_record(message, "arn:aws:sqs:us-east-1:123456789012:notify")
    # When SQS delivers that one message twice (at least once: the same message, the same MessageId) and both
    # deliveries' posts fail, each invocation's successes deleted as Lambda's event source mapping does
    for _ in range(2):
        response = load_function("notifier").handler({"Records": [record]}, FakeContext())
        failed = failed_message_ids(response, [record["messageId"]])
        assert failed is not None
        if record["messageId"] not in failed:
            boto3.client("sqs").delete_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=record["receiptHandle"])
    # Then the message is still on the queue (neither delivery took the other's retry for a copy to drop, until
    # session 35's f9a60fa did and the notification was never delivered), and its next attempt reaches the client
    assert run_notifier(aws)["failed"] == 0
    assert [post["status"] for post in hook.posts] == [500, 500, 200]
    assert record_of(account_id, "dlr_1_3").state == "delivered"
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)


def test_a_notification_queued_twice_while_the_webhook_fails_runs_its_whole_schedule_once(
    aws, accounts, delays, webhook
):
    # Given a schedule of 4 attempts, a client webhook that keeps failing, and one notification queued twice (two SQS
    # messages: a final DLR and the upstream's first repeat of it, or a resend while a copy was queued)
    delays("0,0,0")
    hook = webhook(*[500] * 20)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id), notification(account_id))
    # When the notifier takes the queue pass after pass (each pass is one delay of the schedule)
    seen = []
    while queue_counts(aws["NOTIFY_QUEUE_URL"]) != (0, 0):
        run_notifier(aws)
        record = record_of(account_id, "dlr_1_3")
        seen.append((record.state, record.attempts))
    # Then one copy carries the whole schedule: an attempt a pass, dead only after the 4th (both copies stepped the one
    # count, and it was dead after the 2nd: half the schedule), and the other copy gave way after its first post
    assert seen == [("retrying", 1), ("retrying", 2), ("retrying", 3), ("dead", 4)]
    assert len(hook.posts) == 5
    # And it was parked once, with the count of the one schedule
    [parked] = receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    assert parked["MessageAttributes"]["reason"]["StringValue"] == "client webhook failed 4 attempts"


def test_a_notification_queued_twice_whose_carrying_copy_sqs_delivers_twice_is_not_lost(aws, accounts, delays, webhook):
    # Given a schedule of 5 attempts, a client webhook that fails 5 posts and then answers, and one notification
    # queued twice (two SQS messages), whose first pass fails both: one copy carries the schedule, the other gave way
    from sms_gateway_tools.localstack.sqs_poller import failed_message_ids, lambda_record

    delays("0,0,0,0")
    hook = webhook(*[500] * 5)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id), notification(account_id))
    first = run_notifier(aws)
    assert (first["failed"], len(first["records"])) == (1, 2)
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (1, 0)
    # When SQS delivers the copy left twice (the same message, the same MessageId), both deliveries failing
    [message] = receive(aws["NOTIFY_QUEUE_URL"])
    record = lambda_record(message, "arn:aws:sqs:us-east-1:123456789012:notify")
    for _ in range(2):
        response = load_function("notifier").handler({"Records": [record]}, FakeContext())
        # Then neither delivery is taken for another copy to give way: both hand the message back
        assert failed_message_ids(response, [record["messageId"]]) == {record["messageId"]}
    assert (record_of(account_id, "dlr_1_3").state, record_of(account_id, "dlr_1_3").attempts) == ("retrying", 3)
    # And its schedule goes on until the client answers: delivered, nothing parked, nothing left on the queue
    assert run_notifier(aws)["failed"] == 1
    assert run_notifier(aws)["failed"] == 0
    assert [post["status"] for post in hook.posts] == [500] * 5 + [200]
    assert record_of(account_id, "dlr_1_3").state == "delivered"
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    assert receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]) == []


def test_a_resent_notification_carries_a_whole_schedule_of_its_own(aws, accounts, delays, webhook):
    # Given a notification dead after its two attempts (the copy that carried them owns its record)
    delays("0")
    hook = webhook(*[500] * 4)
    account_id = accounts["a"]["account_id"]
    token = accounts["a"]["token"]
    dead_notification(aws, account_id)
    [_] = receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    # When the client resends it (a new SQS message) and the webhook fails again, then answers
    assert api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)[0] == 202
    assert run_notifier(aws)["failed"] == 1
    # Then the resend took the record over (not a copy giving way to the one that ran before): attempt 1 of its own
    assert (record_of(account_id, "dlr_1_3").state, record_of(account_id, "dlr_1_3").attempts) == ("retrying", 1)
    assert run_notifier(aws)["failed"] == 0
    assert (record_of(account_id, "dlr_1_3").state, record_of(account_id, "dlr_1_3").attempts) == ("dead", 2)
    assert len(hook.posts) == 4
    [parked] = receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    assert parked["MessageAttributes"]["reason"]["StringValue"] == "client webhook failed 2 attempts"


def test_telling_copies_apart_makes_no_request_more_for_a_notification(aws, accounts, delays, webhook):
    from bench import metering_boto3_clients
    from sms_gateway import bootstrap
    from sms_gateway.adapters import aws as aws_clients

    delays("0,0")
    webhook(200, 200, 500, 200)
    account_id = accounts["a"]["account_id"]
    aws_clients.reset_clients()
    bootstrap.reset()
    with metering_boto3_clients() as meter:
        # Given a warm notifier (its clients made, the account's settings read)
        publish(notification(account_id, 9))
        run_notifier(aws)
        # When a notification reaches the client on its first try, and another on its second
        publish(notification(account_id, 1))
        first_try = run_notifier(aws, meter)["requests"]
        publish(notification(account_id, 2))
        failed_once = run_notifier(aws, meter)["requests"]
        then_delivered = run_notifier(aws, meter)["requests"]
    # Then each asks AWS for what it asked before copies were told apart (counted at 002ef73): nothing for the first
    # try; the failure record and its listing pointer and the hand-back; the record closed and its pointer
    assert first_try == Counter()
    assert failed_once == Counter({"dynamodb:UpdateItem": 2, "sqs:ChangeMessageVisibility": 1})
    assert then_delivered == Counter({"dynamodb:UpdateItem": 2})


def test_a_copy_of_a_dead_notification_is_not_delivered_either_and_keeps_its_schedule(aws, accounts, delays, webhook):
    # Given a notification dead after its two attempts
    delays("0")
    webhook(500, 500, 500, 500)
    account_id = accounts["a"]["account_id"]
    dead_notification(aws, account_id)
    [_] = receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    # When a copy of it comes and fails too
    publish(notification(account_id))
    # Then the client never had it, so the copy is retried and dead-lettered like any undelivered notification
    assert run_notifier(aws)["failed"] == 1
    assert run_notifier(aws)["response"] == {"batchItemFailures": []}
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    assert record_of(account_id, "dlr_1_3").state == "dead"


def test_a_failed_attempt_hides_the_record_for_its_delay(aws, accounts, delays, webhook):
    # Given a 2-minute first delay and a client that asks for 5 minutes
    delays("120,120")
    webhook(503, retry_after=300)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    before = datetime.now(UTC)
    # When the first attempt fails
    assert run_notifier(aws)["failed"] == 1
    # Then the record is invisible (not redelivered after the queue's 200 s either), and due in 5 minutes
    assert receive(aws["NOTIFY_QUEUE_URL"]) == []
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 1)
    record = record_of(account_id, "dlr_1_3")
    due = datetime.fromisoformat(record.next_attempt_at.replace("Z", "+00:00"))
    assert before + timedelta(seconds=299) <= due <= datetime.now(UTC) + timedelta(seconds=301)


def test_a_2xx_answer_nested_too_deep_to_read_is_a_failed_delivery_on_the_schedule(aws, accounts, delays, monkeypatch):
    from sms_gateway import consumers

    # Given a client webhook answering 200 with a body json.loads cannot read (nested deeper than the recursion
    # limit: a RecursionError, not a ValueError)
    async def answers_deep_json(url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        return WebhookResponse(status_code=200, body="[" * 100_000)

    monkeypatch.setattr(consumers, "post_webhook", answers_deep_json)
    delays("120,120")
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    # When the notifier posts it
    assert run_notifier(aws)["failed"] == 1
    # Then it is a failed delivery like any 2xx without valid JSON: recorded retrying, hidden for its delay (it
    # escaped as an error: back every 200 s with no record, parked by the redrive after 12 receives, no reason)
    record = record_of(account_id, "dlr_1_3")
    assert (record.state, record.last_error, record.last_status_code) == (
        "retrying",
        "client webhook answered 2xx without valid JSON",
        200,
    )
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 1)


def test_the_happy_path_writes_no_failure_record(aws, accounts, delays, webhook):
    delays("0")
    hook = webhook(200)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    assert run_notifier(aws)["failed"] == 0
    assert len(hook.posts) == 1
    assert record_of(account_id, "dlr_1_3") is None
    assert api("GET", "/ng/v1/webhooks/failures", accounts["a"]["token"])[1]["data"] == []


# ---------------------------------------------------------------- dead letters


def test_after_the_last_attempt_it_is_dead_lettered_with_the_reason_and_listed_as_dead(aws, accounts, delays, webhook):
    # Given two attempts in all and a client that keeps answering 500
    delays("0")
    webhook(500, 500, 500)
    account_id = accounts["a"]["account_id"]
    publish(notification(account_id))
    assert run_notifier(aws)["failed"] == 1
    # When the last attempt fails
    last = run_notifier(aws)
    # Then the record is not reported failed (SQS deletes it) but parked in the notify DLQ with the reason
    assert last["failed"] == 0
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    [parked] = receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    assert json.loads(parked["Body"]) == notification(account_id)
    assert parked["MessageAttributes"]["reason"]["StringValue"] == "client webhook failed 2 attempts"
    assert parked["MessageAttributes"]["error"]["StringValue"] == "client webhook answered 500"
    # And the client sees it listed as dead, with what it missed
    status, body = api("GET", "/ng/v1/webhooks/failures", accounts["a"]["token"], query={"state": "dead"})
    assert status == 200
    [entry] = body["data"]
    assert entry["id"] == "dlr_1_3"
    assert (entry["state"], entry["attempts"], entry["last_status_code"]) == ("dead", 2, 500)
    assert entry["payload"] == notification(account_id)["payload"]
    assert entry["next_attempt_at"] is None
    assert body["next_cursor"] is None
    # And not among the retrying ones
    assert api("GET", "/ng/v1/webhooks/failures", accounts["a"]["token"], query={"state": "retrying"})[1]["data"] == []


def test_a_410_gone_is_not_retried_nor_dead_lettered_but_listed_dead_and_resendable(aws, accounts, delays, webhook):
    # Given a client whose webhook answers 410 Gone (it says: stop sending here), and a schedule of 4 attempts
    delays("0,0,0")
    hook = webhook(410, 410, 410, 410)
    token, account_id = accounts["a"]["token"], accounts["a"]["account_id"]
    publish(notification(account_id))
    # When the notifier posts it
    result = run_notifier(aws)
    # Then it is posted once and not again: SQS deletes the record, nothing waits on the queue
    assert result["failed"] == 0
    assert [post["status"] for post in hook.posts] == [410]
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    # And it is not dead-lettered: the client chose this, there is nothing for the operator's alarm to page about
    assert receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]) == []
    # And the client sees it dead after that one attempt, saying why
    status, body = api("GET", "/ng/v1/webhooks/failures", token, query={"state": "dead"})
    assert status == 200
    [entry] = body["data"]
    assert (entry["id"], entry["attempts"], entry["last_status_code"], entry["next_attempt_at"]) == (
        "dlr_1_3",
        1,
        410,
        None,
    )
    assert "410 Gone" in entry["last_error"] and "not retried" in entry["last_error"]
    # And once the endpoint takes notifications again, the client can resend it, and it arrives
    hook.statuses = [200]
    assert api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)[0] == 202
    assert run_notifier(aws)["failed"] == 0
    assert hook.posts[-1]["status"] == 200
    assert record_of(account_id, "dlr_1_3").state == "delivered"


def test_a_redirect_is_a_failed_delivery_whose_listed_error_names_where_it_pointed(aws, accounts, delays, monkeypatch):
    from sms_gateway import consumers

    # Given a client webhook that moved: it answers 308 to its URL with a trailing slash (a token in its query)
    async def redirects(url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        return WebhookResponse(status_code=308, body="", location="https://client.example/dlr/?key=s3cret")

    monkeypatch.setattr(consumers, "post_webhook", redirects)
    delays("120,120")
    token = accounts["a"]["token"]
    publish(notification(accounts["a"]["account_id"]))
    # When the notifier posts it
    assert run_notifier(aws)["failed"] == 1
    # Then it is a failed delivery on the schedule (a signed post is not followed elsewhere), and the listing tells the
    # client which URL its server pointed to, without the query
    [entry] = api("GET", "/ng/v1/webhooks/failures", token)[1]["data"]
    assert (entry["state"], entry["last_status_code"]) == ("retrying", 308)
    assert "https://client.example/dlr/" in entry["last_error"]
    assert "s3cret" not in entry["last_error"]


def test_a_dead_notification_can_be_resent_and_then_arrives(aws, accounts, delays, webhook):
    delays("0")
    hook = webhook(500, 500)
    token, account_id = accounts["a"]["token"], accounts["a"]["account_id"]
    dead_notification(aws, account_id)
    # When the client resends it
    status, body = api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)
    # Then it is queued again as a fresh record, and marked resent
    assert status == 202, body
    assert (body["id"], body["state"]) == ("dlr_1_3", "resent")
    assert record_of(account_id, "dlr_1_3").state == "resent"
    # And a second resend while it is queued is a conflict that queues nothing more
    status, body = api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)
    assert status == 409 and "resent" in body["message"]
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (1, 0)
    # When the notifier takes it and the client answers
    assert run_notifier(aws)["failed"] == 0
    # Then the client got the notification, and the record ends delivered
    assert hook.posts[-1]["status"] == 200
    assert hook.posts[-1]["body"] == notification(account_id)["payload"]
    assert record_of(account_id, "dlr_1_3").state == "delivered"
    assert api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)[0] == 409


def test_resend_all_queues_every_dead_one_and_answers_how_many(aws, accounts, delays, webhook):
    delays("0")
    webhook(*([500] * 6))
    token, account_id = accounts["a"]["token"], accounts["a"]["account_id"]
    for n in (1, 2, 3):
        dead_notification(aws, account_id, n)
    status, body = api("POST", "/ng/v1/webhooks/failures/resend", token, body={"state": "dead"})
    assert status == 202, body
    assert (body["resent"], body["more"]) == (3, False)
    queued = [json.loads(m["Body"]) for m in receive(aws["NOTIFY_QUEUE_URL"])]
    assert sorted(n["id"] for n in queued) == ["dlr_1_3", "dlr_2_3", "dlr_3_3"]
    assert all(n["resent"] is True for n in queued)
    # Nothing dead is left to resend
    assert api("POST", "/ng/v1/webhooks/failures/resend", token, body={"state": "dead"})[1]["resent"] == 0


def test_resend_all_of_one_dead_notification_says_so_in_the_singular(aws, accounts, delays, webhook):
    delays("0")
    webhook(500, 500)
    token, account_id = accounts["a"]["token"], accounts["a"]["account_id"]
    dead_notification(aws, account_id)
    status, body = api("POST", "/ng/v1/webhooks/failures/resend", token, body={"state": "dead"})
    assert status == 202, body
    assert body == {
        "status_code": 202,
        "message": "1 dead notification queued for delivery",
        "resent": 1,
        "more": False,
    }
    # And none, or several, in the plural (docs/dialects/9bits.md: "3 dead notifications queued for delivery")
    body = api("POST", "/ng/v1/webhooks/failures/resend", token, body={"state": "dead"})[1]
    assert body["message"] == "0 dead notifications queued for delivery"


def test_a_resend_that_died_before_queueing_can_be_resent_once_its_lease_is_over(aws, accounts, delays, webhook):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import iso

    delays("0")
    webhook(*([500] * 4))
    token, account_id = accounts["a"]["token"], accounts["a"]["account_id"]
    for n in (1, 2):
        dead_notification(aws, account_id, n)
    # Given two dead notifications that resends claimed and then died (a Lambda timeout) before queueing them: one
    # 16 minutes ago, one a minute ago
    store, now = gateway().store, datetime.now(UTC)
    for n, ago in ((1, 16), (2, 1)):
        moment = iso(now - timedelta(minutes=ago))
        assert store.set_webhook_failure_state(
            account_id, f"dlr_{n}_3", "resent", only_from=frozenset({"dead"}), now=moment
        )
    # When the client resends all, then only the one whose claim is over 15 minutes old goes (the other may still
    # be on its way)
    status, body = api("POST", "/ng/v1/webhooks/failures/resend", token, body={"state": "dead"})
    assert (status, body["resent"], body["more"]) == (202, 1, False)
    assert [json.loads(m["Body"])["id"] for m in receive(aws["NOTIFY_QUEUE_URL"])] == ["dlr_1_3"]
    assert api("POST", "/ng/v1/webhooks/failures/dlr_2_3/resend", token)[0] == 409
    # And a claim write whose condition names the lapse keeps a fresh one, in DynamoDB as in the logic
    lapsed_before = iso(now - timedelta(minutes=15))
    moved = store.set_webhook_failure_state(
        account_id, "dlr_2_3", "resent", only_from=frozenset({"dead"}), now=iso(now), resent_before=lapsed_before
    )
    assert moved is False
    assert record_of(account_id, "dlr_1_3").resent_at > lapsed_before


def test_failures_list_newest_first_in_pages(aws, accounts):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import webhook_retries

    account_id, token = accounts["a"]["account_id"], accounts["a"]["token"]
    start = datetime(2026, 1, 2, tzinfo=UTC)
    for n in range(1, 6):
        webhook_retries.record_failure(
            gateway().store,
            notification(account_id, n),
            WebhookFailed("client webhook answered 502", status_code=502),
            attempt=1,
            delays=(60,) if n % 2 else (),
            now=start + timedelta(minutes=n),
        )
    # When the client reads them two at a time
    pages, cursor = [], None
    while True:
        status, body = api(
            "GET", "/ng/v1/webhooks/failures", token, query={"limit": "2", **({"cursor": cursor} if cursor else {})}
        )
        assert status == 200, body
        pages.append([entry["id"] for entry in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # Then they come newest first, each once
    assert [i for page in pages for i in page] == [f"dlr_{n}_3" for n in (5, 4, 3, 2, 1)]
    assert all(len(page) <= 2 for page in pages)
    # And a state filter pages the same way (odd ones are retrying, even ones dead)
    status, body = api("GET", "/ng/v1/webhooks/failures", token, query={"state": "retrying", "limit": "2"})
    assert [entry["id"] for entry in body["data"]] == ["dlr_5_3", "dlr_3_3"]
    status, body = api(
        "GET",
        "/ng/v1/webhooks/failures",
        token,
        query={"state": "retrying", "limit": "2", "cursor": body["next_cursor"]},
    )
    assert [entry["id"] for entry in body["data"]] == ["dlr_1_3"]


# ---------------------------------------------------------------- isolation and bad input


def test_one_account_can_neither_see_nor_resend_anothers_failures(aws, accounts, delays, webhook):
    # Given two dead notifications of account a
    delays("0")
    webhook(500, 500, 500, 500)
    dead_notification(aws, accounts["a"]["account_id"], 1)
    dead_notification(aws, accounts["a"]["account_id"], 2)
    owner_cursor = api("GET", "/ng/v1/webhooks/failures", accounts["a"]["token"], query={"limit": "1"})[1][
        "next_cursor"
    ]
    assert owner_cursor
    other = accounts["b"]["token"]
    # When account b lists and resends them
    assert api("GET", "/ng/v1/webhooks/failures", other)[1]["data"] == []
    status, body = api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", other)
    assert status == 404 and body["status_code"] == 404
    assert api("POST", "/ng/v1/webhooks/failures/resend", other, body={"state": "dead"})[1]["resent"] == 0
    # And a cursor from a's listing does not open a's partition to b
    assert api("GET", "/ng/v1/webhooks/failures", other, query={"cursor": owner_cursor})[0] == 400
    # Then nothing was queued and a's records are still dead
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    assert record_of(accounts["a"]["account_id"], "dlr_1_3").state == "dead"
    assert record_of(accounts["a"]["account_id"], "dlr_2_3").state == "dead"


BAD_REQUESTS = [
    ("GET", "/ng/v1/webhooks/failures", {"state": "lost"}, None, 400, "state must be one of"),
    ("GET", "/ng/v1/webhooks/failures", {"limit": "0"}, None, 400, "`limit` must be"),
    ("GET", "/ng/v1/webhooks/failures", {"limit": "501"}, None, 400, "`limit` must be"),
    ("GET", "/ng/v1/webhooks/failures", {"cursor": "bm90IGEgY3Vyc29y"}, None, 400, "the `cursor` is not valid"),
    ("POST", "/ng/v1/webhooks/failures/dlr_404_3/resend", None, None, 404, "no failed notification"),
    ("POST", "/ng/v1/webhooks/failures/dlr*1/resend", None, None, 400, "notification id"),
    ("POST", "/ng/v1/webhooks/failures/resend", None, {"state": "retrying"}, 400, "state"),
    ("POST", "/ng/v1/webhooks/failures/resend", None, "{not json", 400, "not valid JSON"),
    ("POST", "/ng/v1/webhooks/failures/resend", None, None, 400, "empty"),
]


def test_bad_requests_get_a_clear_error_and_change_nothing(aws, accounts, delays, webhook):
    # Given a dead notification and a retrying one
    delays("0")
    webhook(500, 500, 500)
    account_id, token = accounts["a"]["account_id"], accounts["a"]["token"]
    dead_notification(aws, account_id)
    publish(notification(account_id, 2))
    run_notifier(aws)
    assert record_of(account_id, "dlr_2_3").state == "retrying"
    boto3.client("sqs").purge_queue(QueueUrl=aws["NOTIFY_QUEUE_URL"])
    # (one setup for every case: each is a read or a refused write)
    for method, path, query, body, status, fragment in BAD_REQUESTS:
        # When the request is wrong in one way
        answer_status, answer = api(method, path, token, query=query, body=body)
        # Then the 9bits error says what is wrong
        case = f"{method} {path} {query} {body}"
        assert answer_status == status, (case, answer)
        assert answer["status_code"] == status, case
        assert fragment in answer["message"], (case, answer)
        # And nothing was queued or changed
        assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0), case
        assert record_of(account_id, "dlr_1_3").state == "dead", case
        assert record_of(account_id, "dlr_2_3").state == "retrying", case


def test_a_retrying_notification_cannot_be_resent_and_a_missing_token_is_refused(aws, accounts, delays, webhook):
    delays("60")
    webhook(500)
    account_id, token = accounts["a"]["account_id"], accounts["a"]["token"]
    publish(notification(account_id))
    run_notifier(aws)
    status, body = api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)
    assert status == 409 and "retrying" in body["message"]
    assert api("GET", "/ng/v1/webhooks/failures", "wrong-token")[0] == 401
    assert api("POST", "/ng/v1/webhooks/failures/resend", "wrong-token", body={"state": "dead"})[0] == 401
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 1)
    assert record_of(account_id, "dlr_1_3").state == "retrying"


def test_the_routes_are_in_the_openapi_document(aws):
    status, document = api("GET", "/v1/openapi.json", "unused")
    assert status == 200
    paths = document["paths"]
    assert "get" in paths["/ng/v1/webhooks/failures"]
    assert "post" in paths["/ng/v1/webhooks/failures/{notification_id}/resend"]
    resend_all = paths["/ng/v1/webhooks/failures/resend"]["post"]["requestBody"]["content"]["application/json"]
    assert resend_all["schema"]["properties"]["state"]


def test_a_batch_of_notifications_reads_the_accounts_settings_once(aws, accounts, webhook, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore

    reads: list[str] = []
    original = DynamoStore.get_account

    def counted(self: DynamoStore, account_id: str) -> Any:
        reads.append(account_id)
        return original(self, account_id)

    monkeypatch.setattr(DynamoStore, "get_account", counted)
    hook = webhook()
    # Given ten notifications for one account in one batch
    publish(*(notification(accounts["a"]["account_id"], n) for n in range(10)))
    # When the notifier takes them
    assert run_notifier(aws)["failed"] == 0
    # Then all ten were posted, signed with the account's settings read once (a setting, not a balance)
    assert len(hook.posts) == 10
    assert reads == [accounts["a"]["account_id"]]


def test_a_batch_of_notifications_is_posted_concurrently(aws, accounts, monkeypatch):
    from sms_gateway import consumers

    # Given a client webhook that answers none of ten posts until all ten are waiting on it at once
    everyone_posting = threading.Barrier(10, timeout=10)
    posted: list[dict[str, Any]] = []

    async def slow_webhook(url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        everyone_posting.wait()  # raises BrokenBarrierError (the post fails) if the posts come one at a time
        posted.append(json.loads(body))
        return WebhookResponse(status_code=200, body='{"ok":true}', retry_after=None)

    monkeypatch.setattr(consumers, "post_webhook", slow_webhook)
    publish(*(notification(accounts["a"]["account_id"], n) for n in range(10)))
    # When the notifier takes the batch of ten
    result = run_notifier(aws)
    # Then every post was made alongside the others (a batch waits for its slowest webhook answer, not their sum)
    assert result["failed"] == 0
    assert sorted(post["message_id"] for post in posted) == [str(n) for n in range(10)]


def test_a_webhook_url_set_after_the_notifier_read_the_account_without_one_gets_the_next_notification(aws, webhook):
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import create_account, set_webhooks

    # Given an account without a delivery-report URL, whose notification the notifier read it for (and cached it)
    account = create_account(name="No URL yet", senders=["48976"], credits=10)
    hook = webhook()
    seconds = [1000.0]
    gateway().settings_cache.clock = lambda: seconds[0]
    publish(notification(account["account_id"], 1))
    run_notifier(aws)
    assert hook.posts == []
    # When the client sets its URL, and the next notification comes 2 s later, within the settings' cache time (30 s)
    set_webhooks(account_id=account["account_id"], dlr_url="https://client.example/dlr")
    seconds[0] += 2
    publish(notification(account["account_id"], 2))
    run_notifier(aws)
    # Then it is posted to the new URL: the notifier read the account again before dropping it for want of one
    assert [(post["url"], post["body"]["message_id"]) for post in hook.posts] == [("https://client.example/dlr", "2")]


def test_a_notification_that_finds_its_url_removed_is_dead_and_can_be_resent_once_one_is_set(aws, accounts, delays):
    from sms_gateway import bootstrap, consumers
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts as account_logic

    delays("0,0,0")
    account_id, token = accounts["a"]["account_id"], accounts["a"]["token"]
    hook = ClientWebhook(500)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(consumers, "post_webhook", hook)
        # Given a delivery report the client's webhook failed once: listed `retrying`, due again
        publish(notification(account_id))
        run_notifier(aws)
        assert record_of(account_id, "dlr_1_3").state == "retrying"
        # When the client clears its DLR URL meanwhile (to pause webhooks while it moves its endpoint)
        account_logic.set_webhooks(gateway().store, gateway().webhook_credentials, account_id, dlr_url="")
        bootstrap.reset()  # past the notifier's settings cache
        run_notifier(aws)
        # ...the retry finds no URL and the notification leaves the queue
        assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
        # Then its record says so: dead, "no webhook URL set", no next attempt (it stayed `retrying`, due in the
        # past, for its 30 days, and could not be resent: the report was lost)
        record = record_of(account_id, "dlr_1_3")
        assert (record.state, record.last_error, record.next_attempt_at) == ("dead", "no webhook URL set", None)
        status, body = api("GET", "/ng/v1/webhooks/failures", token, query={"state": "dead"})
        assert status == 200 and [entry["id"] for entry in body["data"]] == ["dlr_1_3"]
        # And once a URL is set again, the client can have it resent, and it arrives there
        account_logic.set_webhooks(
            gateway().store, gateway().webhook_credentials, account_id, dlr_url="https://client.example/dlr2"
        )
        bootstrap.reset()
        status, body = api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)
        assert status == 202, body
        run_notifier(aws)
    assert [post["url"] for post in hook.posts] == ["https://client.example/dlr", "https://client.example/dlr2"]
    assert record_of(account_id, "dlr_1_3").state == "delivered"


def test_a_failure_resent_after_the_url_changed_lists_the_url_it_was_delivered_to(aws, accounts, delays, webhook):
    from sms_gateway import bootstrap
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts as account_logic

    delays("0")
    hook = webhook(500, 500)
    account_id, token = accounts["a"]["account_id"], accounts["a"]["token"]
    # Given a delivery report dead at the client's old webhook
    dead_notification(aws, account_id)
    assert record_of(account_id, "dlr_1_3").url == "https://client.example/dlr"
    # When the client moves its webhook to a new URL and resends the report, which arrives there
    account_logic.set_webhooks(
        gateway().store, gateway().webhook_credentials, account_id, dlr_url="https://client.example/dlr2"
    )
    bootstrap.reset()  # past the notifier's settings cache
    assert api("POST", "/ng/v1/webhooks/failures/dlr_1_3/resend", token)[0] == 202
    run_notifier(aws)
    assert [post["url"] for post in hook.posts][-1] == "https://client.example/dlr2"
    # Then its record says where it went (docs/data-model.md: `url`, where it was posted), not the old URL
    status, body = api("GET", "/ng/v1/webhooks/failures", token)
    assert status == 200
    [entry] = body["data"]
    assert (entry["state"], entry["url"]) == ("delivered", "https://client.example/dlr2")


def test_a_blackholed_origin_fails_its_sixth_notification_at_once_while_another_origin_is_posted(aws, accounts, delays):
    from sms_gateway import consumers

    # Given account a's webhook blackholed (its connections time out), account b's answering
    delays("120,120")
    posted: list[str] = []

    async def webhooks(url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        posted.append(url)
        if url.startswith("https://client.example/"):
            raise WebhookFailed(
                "client webhook unreachable: connecting to client.example:443 timed out",
                unreachable=True,
                host_down=True,
            )
        return WebhookResponse(status_code=200, body='{"ok":true}')

    a, b = accounts["a"]["account_id"], accounts["b"]["account_id"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(consumers, "post_webhook", webhooks)
        # And five of a's notifications that failed against it, in a row
        publish(*(notification(a, n) for n in range(1, 6)))
        assert run_notifier(aws)["failed"] == 5
        assert len(posted) == 5
        # When the sixth comes in one batch with a notification of b's
        publish(notification(a, 6), notification(b, 7))
        result = run_notifier(aws)
    # Then the sixth fails at once without a post, b's is posted and delivered
    assert result["failed"] == 1
    assert posted[5:] == ["https://other.example/dlr"]
    # And the sixth is on the retry schedule like any failure, recorded with why and its attempt counted
    record = record_of(a, "dlr_6_3")
    assert (record.state, record.attempts, record.last_status_code) == ("retrying", 1, None)
    assert record.last_error.startswith(
        "client webhook not tried: https://client.example:443 failed 5 times in a row in this container; next try after"
    )
    assert record.next_attempt_at is not None
    assert record_of(b, "dlr_7_3") is None


# ---------------------------------------------------------------- a batch's own callback_url


def report_to_callback_url(env: dict[str, str], account: dict[str, Any], callback_url: str) -> None:
    """Sends a batch with delivery reports to `callback_url` with the account's API token, and reports a status change
    of its message through the notifier."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import StatusChange
    from sms_gateway.logic.notify import dlr_notification

    body = {"from": "48974", "to": ["2348020000000"], "body": "hi", "delivery_report": "yes"}
    status, answer = api("POST", "/ng/v1/sendsms", account["token"], body={**body, "callback_url": callback_url})
    assert status == 200, answer
    [message] = gateway().store.list_messages(account["account_id"], int(answer["reference_id"]))[0]
    publish(dlr_notification(StatusChange(message=message, changed=True)))
    run_notifier(env)


def test_a_batch_callback_url_chosen_by_the_caller_never_receives_the_accounts_webhook_token(aws, accounts, webhook):
    # Given an account whose webhook token is sealed, shown once at creation, and never readable again
    account = accounts["a"]
    hook = webhook()
    # When anyone holding one of its API tokens sends a batch with delivery reports to a URL of their own, and a
    # status change of its message is reported
    report_to_callback_url(aws, account, "https://collector.attacker.example/dlr")
    # Then that URL got the report, but not the account's webhook token (which authenticates the gateway to the
    # client's real webhooks: with it, anyone can forge inbound SMS and delivery reports to them)
    [post] = hook.posts
    assert post["url"] == "https://collector.attacker.example/dlr"
    assert account["webhook_token"] not in post["headers"].get("Authorization", "")
    # And it is signed with the account's secret, so its receiver can tell it is ours
    assert post["headers"]["webhook-signature"].startswith("v1,")


def test_batch_callback_urls_naming_the_accounts_dlr_url_get_the_token_as_it_does(aws, accounts, webhook):
    # Given an account whose DLR URL is https://client.example/dlr, and batches whose reports go to that URL written
    # another way or with a query of their own, and to another path of its origin (a hook of someone else's, on a
    # host many customers share)
    account, hook = accounts["a"], webhook()
    own = ["https://client.example:443/dlr", "https://CLIENT.example/dlr?batch=8"]
    for url in [*own, "https://client.example/campaigns/7/dlr"]:
        report_to_callback_url(aws, account, url)
    # Then the posts to the DLR URL carry the webhook token, the other none, and each is signed
    bearer = f"Bearer {account['webhook_token']}"
    got = [(post["url"], post["headers"].get("Authorization")) for post in hook.posts]
    assert got == [*((url, bearer) for url in own), ("https://client.example/campaigns/7/dlr", None)]
    assert all("webhook-signature" in post["headers"] for post in hook.posts)


def test_a_copy_queued_by_a_repeated_report_and_delivered_first_try_closes_the_record(aws, accounts, delays, webhook):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import DeliveryReportMode, StatusChange, utc_now
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.delivery import announce_change
    from sms_gateway_tools.localstack.sqs_poller import lambda_record
    from tests.integration.test_dynamodb_store import new_batch

    # Given a schedule of 2 attempts, and a message of account a, asking for delivery reports, that is delivered:
    # its report's notification (copy A) is queued, and the client's webhook fails its first post
    delays("0")
    hook = webhook(500, 200, 500)
    account_id = accounts["a"]["account_id"]
    store = gateway().store
    batch, [message] = new_batch(account_id, 1, status=MessageStatus.SUBMITTED)
    message = message.model_copy(update={"delivery_report": DeliveryReportMode.YES})
    store.create_batch(batch.model_copy(update={"delivery_report": DeliveryReportMode.YES}), [message])
    publish_now = gateway().notify_queue.publish
    change = store.transition(message.key, MessageStatus.DELIVERED, now=utc_now())
    assert change is not None and change.changed
    announce_change(change, publish_now, store, clock=utc_now)
    [copy_a] = run_notifier(aws)["records"]
    notification_id = f"dlr_{message.message_id}_{change.message.sequence}"
    assert record_of(account_id, notification_id).state == "retrying"
    # When the upstream repeats the report: its repeat queues the notification again (copy B), which reaches the
    # client on its first try
    repeat = store.transition(message.key, MessageStatus.DELIVERED, now=utc_now())
    assert repeat is not None and not repeat.changed
    announce_change(StatusChange(message=repeat.message, changed=False), publish_now, store, clock=utc_now)
    received = receive(aws["NOTIFY_QUEUE_URL"])
    [copy_b] = [m for m in received if m["MessageId"] != copy_a["messageId"]]
    load_function("notifier").handler(
        {"Records": [lambda_record(copy_b, "arn:aws:sqs:us-east-1:123456789012:notify")]}, FakeContext()
    )
    boto3.client("sqs").delete_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=copy_b["ReceiptHandle"])
    for other in received:
        if other is not copy_b:
            boto3.client("sqs").change_message_visibility(
                QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=other["ReceiptHandle"], VisibilityTimeout=0
            )
    # Then the record reads delivered at once
    assert record_of(account_id, notification_id).state == "delivered"
    # And copy A, whose next post fails, is dropped: not dead, not parked (no alarm for a notification the client has)
    assert run_notifier(aws)["failed"] == 0
    assert [post["status"] for post in hook.posts] == [500, 200, 500]
    assert record_of(account_id, notification_id).state == "delivered"
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 0)
    assert receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]) == []
