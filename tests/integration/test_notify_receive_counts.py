"""The notify queue's receive counts are not attempts: a settle check whose hand-backs SQS refused, or a notification
whose receives crashed before its post, still gets its whole wait or every attempt of its schedule, and is never
parked by the queue's redrive (maxReceiveCount) without a reason."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import boto3
import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_send_path import balance
from tests.integration.test_settle_checks import account, hook, message_now, notify_pass, stranded_message
from tests.integration.test_webhook_retries import (
    accounts,
    delays,
    notification,
    publish,
    receive,
    record_of,
    webhook,
)

__all__ = ["account", "accounts", "delays", "hook", "webhook"]


def show(aws: dict[str, str], records: list[dict[str, Any]]) -> None:
    """The records visible again at once, as if their hiding time were over."""
    for record in records:
        boto3.client("sqs").change_message_visibility(
            QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
        )


def notifier_pass(aws: dict[str, str]) -> list[dict[str, Any]]:
    """notify_pass, when a record is received at all: SQS's redrive moves one received a 13th time to the notify DLQ
    instead (counted visible until then). The records left hidden on the queue."""
    from sms_gateway_tools.localstack.sqs_poller import lambda_record

    messages = receive(aws["NOTIFY_QUEUE_URL"])
    records = [lambda_record(m, "arn:aws:sqs:us-east-1:123456789012:notify") for m in messages]
    if not records:
        return []
    response = load_function("notifier").handler({"Records": records}, FakeContext())
    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    for record in records:
        if record["messageId"] not in failed:
            boto3.client("sqs").delete_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=record["receiptHandle"])
    return [record for record in records if record["messageId"] in failed]


def refuse_hand_backs(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """SQS refuses the notify queue's next `times` hand-backs (ChangeMessageVisibility), as when it throttles."""
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    delay = SqsNotifyQueue.delay
    left = [times]

    def refused_at_first(self: Any, receipt_handle: str, seconds: int) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError("SQS refused the ChangeMessageVisibility call (throttled)")
        delay(self, receipt_handle, seconds)

    monkeypatch.setattr(SqsNotifyQueue, "delay", refused_at_first)


def test_a_settle_check_whose_hand_backs_sqs_refused_seven_times_still_expires_and_refunds(
    aws, account, hook, monkeypatch
):
    from sms_gateway import consumers
    from sms_gateway.adapters import sqs
    from sms_gateway.domain.models import utc_now

    # (moto's clock stands still: a record queued afresh is visible at once, not after its delay of up to 15 minutes)
    monkeypatch.setattr(sqs, "MAX_SEND_DELAY", 0)
    # Given a stranded message (charged, submitted) whose settle check waits on the notify queue
    message = stranded_message(aws, account)
    hidden = notify_pass(aws)
    # When SQS refuses its next 7 hand-backs (each brings it back after the visibility timeout, ~200 s)
    refuse_hand_backs(monkeypatch, 7)
    for _ in range(7):
        show(aws, hidden)
        hidden = notifier_pass(aws)
    # And it then waits out the DLR wait (48 h) in hops of just under 12 h, as it does on AWS
    start = utc_now()
    for hours in (12, 24, 36, 47.9, 49):
        monkeypatch.setattr(consumers, "utc_now", lambda hours=hours: start + timedelta(hours=hours))
        show(aws, hidden)
        hidden = notifier_pass(aws)
    # Then the message is expired for want of a DLR and refunded, and nothing was parked in the notify DLQ
    settled = message_now(message)
    assert (settled.status, settled.error_code) == ("expired", "no_delivery_report")
    assert balance(account["account_id"]) == 100
    assert receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]) == []


def test_a_notification_whose_first_receives_crashed_gets_every_attempt_and_is_dead_lettered_with_its_reason(
    aws, accounts, delays, webhook, monkeypatch
):
    from sms_gateway import consumers

    # Given the longest schedule (11 attempts), a client that keeps answering 500, and a notifier whose first two
    # receives of the notification crash before any post (the account's settings could not be read)
    delays(",".join(["0"] * 10))
    hook = webhook(*[500] * 20)
    account_id = accounts["a"]["account_id"]
    settings = consumers._account_settings
    crashes = [2]

    def crashing_at_first() -> Any:
        if crashes[0] > 0:
            crashes[0] -= 1
            raise RuntimeError("DynamoDB throttled the read")
        return settings()

    monkeypatch.setattr(consumers, "_account_settings", crashing_at_first)
    publish(notification(account_id))
    # When the notifier takes it until it is gone (a crashed receive comes back after the visibility timeout)
    for _ in range(20):
        show(aws, notifier_pass(aws))
    # Then the client got all 11 attempts, and the notification is parked with its reason and listed dead
    assert len(hook.posts) == 11
    [parked] = receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    assert json.loads(parked["Body"])["id"] == "dlr_1_3"
    assert parked["MessageAttributes"]["reason"]["StringValue"] == "client webhook failed 11 attempts"
    record = record_of(account_id, "dlr_1_3")
    assert (record.state, record.attempts) == ("dead", 11)


def test_the_receive_limit_the_notifier_keeps_below_is_the_notify_queues_max_receive_count():
    from sms_gateway import consumers
    from sms_gateway_tools.template import load_template

    redrive = load_template()["Resources"]["NotifyQueue"]["Properties"]["RedrivePolicy"]
    assert int(redrive["maxReceiveCount"]) == consumers.NOTIFY_MAX_RECEIVES
    # And the usual path hands back below the requeue's receive count: the longest DLR wait's hops, and the default
    # retry schedule's delays (a hand-back after each receive but the last)
    from sms_gateway.logic.settle import MAX_HOP_SECONDS
    from sms_gateway.settings import MAX_DLR_WAIT_SECONDS, Settings

    assert -(-MAX_DLR_WAIT_SECONDS // MAX_HOP_SECONDS) < consumers.NOTIFY_REQUEUE_FROM
    assert len(Settings().notify_retry_delays) < consumers.NOTIFY_REQUEUE_FROM
