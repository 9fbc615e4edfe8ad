"""The local stack's moto SQS as SQS behaves under concurrent callers (moto_server.serialise_sqs_actions): moto's
SQS backend does not lock, so a receive iterating a FIFO queue's in-flight messages while another thread's delete
or change of visibility edits them raised `Set changed size during iteration` (the dispatcher's pollers in a test,
2026-12-07), and two receives at once could both hand out messages of one group."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    from sms_gateway_tools.localstack.moto_server import serialise_sqs_actions

    # Credentials, region and no endpoint: tests/conftest.py's _isolated_aws_env.
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    serialise_sqs_actions()
    with mock_aws():
        yield boto3.client("sqs")


def fifo_queue(sqs: Any, groups: int, per_group: int) -> str:
    url = sqs.create_queue(QueueName="q.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})[
        "QueueUrl"
    ]
    for number in range(per_group):
        for group in range(groups):
            sqs.send_message(QueueUrl=url, MessageBody=f"{group}-{number}", MessageGroupId=f"g{group}")
    return url


def test_concurrent_receivers_of_a_fifo_queue_each_get_whole_groups_in_order_without_errors(sqs):
    # Given a FIFO queue of 20 groups of 10 messages
    url = fifo_queue(sqs, groups=20, per_group=10)
    errors: list[BaseException] = []
    # A group's messages in a receiver's hands, and which receiver has them
    in_flight: Counter[str] = Counter()
    holder: dict[str, int] = {}
    overlaps: list[str] = []
    done: list[str] = []
    lock = threading.Lock()

    def receiver() -> None:
        import boto3

        client = boto3.client("sqs")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(done) < 200:
                answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])
                messages = answer.get("Messages", [])
                with lock:
                    for message in messages:
                        group = message["Attributes"]["MessageGroupId"]
                        if in_flight[group] and holder[group] != threading.get_ident():
                            overlaps.append(group)
                        in_flight[group] += 1
                        holder[group] = threading.get_ident()
                for index, message in enumerate(messages):
                    group = message["Attributes"]["MessageGroupId"]
                    if index % 3 == 2:
                        # handed back: visible again at once, redelivered later in its group's order
                        with lock:
                            in_flight[group] -= 1
                        client.change_message_visibility(
                            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                        )
                        continue
                    with lock:
                        in_flight[group] -= 1
                        done.append(message["Body"])
                    client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        except BaseException as error:  # reported below
            errors.append(error)

    # When eight threads receive, delete and hand back at once (as Lambda's pollers of a queue do)
    threads = [threading.Thread(target=receiver, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    # Then no call failed, every message was handled once, and no group was in two receivers' hands at once
    assert not errors, errors
    assert sorted(done) == sorted(f"{group}-{number}" for group in range(20) for number in range(10))
    assert not overlaps


def test_a_long_polling_receive_gets_a_message_sent_while_it_waits_and_does_not_hold_up_the_sender(sqs):
    # Given a receive waiting up to 20 s on an empty queue
    url = sqs.create_queue(QueueName="plain")["QueueUrl"]
    received: list[Any] = []

    def receive() -> None:
        import boto3

        received.extend(boto3.client("sqs").receive_message(QueueUrl=url, WaitTimeSeconds=20).get("Messages", []))

    waiting = threading.Thread(target=receive, daemon=True)
    waiting.start()
    # When another thread sends a message meanwhile
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    waiting.join(timeout=30)
    # Then the send was not held up by the wait, and the waiting receive got the message
    assert [message["Body"] for message in received] == ["hello"]
