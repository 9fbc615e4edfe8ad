"""SQS event sources: long-poll a queue, invoke the function with Lambda's SQS event, delete successes."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sms_gateway_tools.localstack.lambdas import REGION, LocalFunction

logger = logging.getLogger("sms_gateway_tools.localstack.sqs_poller")

WAIT_TIME_SECONDS = 1
MAX_RECEIVE = 10


@dataclass(frozen=True)
class EventSource:
    queue_logical_id: str
    queue_url: str
    queue_arn: str
    batch_size: int = 10
    report_batch_item_failures: bool = False
    maximum_batching_window_seconds: float = 0.0
    maximum_concurrency: int = 2


def lambda_record(message: Mapping[str, Any], queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """One SQS message as a record of Lambda's SQS event."""
    attributes = dict(message.get("Attributes") or {})
    record_attributes: dict[str, str] = {}
    for name in (
        "ApproximateReceiveCount",
        "AWSTraceHeader",
        "SentTimestamp",
        "SequenceNumber",
        "MessageGroupId",
        "SenderId",
        "MessageDeduplicationId",
        "ApproximateFirstReceiveTimestamp",
        "DeadLetterQueueSourceArn",
    ):
        if name in attributes:
            record_attributes[name] = str(attributes[name])
    message_attributes: dict[str, dict[str, Any]] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        converted: dict[str, Any] = {
            "stringListValues": list(value.get("StringListValues") or []),
            "binaryListValues": [_b64(v) for v in value.get("BinaryListValues") or []],
            "dataType": value.get("DataType", "String"),
        }
        if "StringValue" in value:
            converted["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            converted["binaryValue"] = _b64(value["BinaryValue"])
        message_attributes[name] = converted
    body = str(message.get("Body", ""))
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": record_attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),  # noqa: S324 (SQS's checksum)
        **(
            {"md5OfMessageAttributes": message["MD5OfMessageAttributes"]} if "MD5OfMessageAttributes" in message else {}
        ),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _b64(value: Any) -> str:
    import base64

    raw = value if isinstance(value, bytes | bytearray) else str(value).encode()
    return base64.b64encode(raw).decode()


def failed_message_ids(response: Any, message_ids: Iterable[str]) -> set[str] | None:
    """The records Lambda keeps for a partial batch response; None when the whole batch failed.

    A null or empty response, or a null or empty `batchItemFailures`, is a complete success; an
    identifier that is missing, empty or not in the batch makes the whole batch a failure.
    """
    if response is None:
        return set()
    if not isinstance(response, dict):
        return None
    failures = response.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return None
    ids = set(message_ids)
    failed: set[str] = set()
    for failure in failures:
        if not isinstance(failure, dict):
            return None
        identifier = failure.get("itemIdentifier")
        if not isinstance(identifier, str) or not identifier or identifier not in ids:
            return None
        failed.add(identifier)
    return failed


class SqsPoller:
    """One event source mapping: a receiver thread and up to `maximum_concurrency` concurrent invocations."""

    def __init__(
        self,
        sqs: Any,
        source: EventSource,
        function: LocalFunction,
        *,
        duplicate_rate: float = 0.0,
        rand: random.Random | None = None,
    ) -> None:
        self.sqs = sqs
        self.source = source
        self.function = function
        # Fault injection (off by default): this fraction of records is handed to the function a second time,
        # as SQS's at-least-once delivery may.
        self.duplicate_rate = duplicate_rate
        self._random = rand or random.Random()  # noqa: S311 (fault injection, not a secret)
        self.duplicates_delivered = 0
        self._stopping = threading.Event()
        concurrency = max(1, int(source.maximum_concurrency))
        self._slots = threading.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"localstack-sqs-{function.logical_id}"
        )
        self._thread = threading.Thread(target=self._run, name=f"localstack-sqs-{source.queue_logical_id}", daemon=True)
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Stops receiving (the current long poll ends within a second); `stop()` waits for it."""
        self._stopping.set()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                messages = self._receive_batch()
            except Exception as error:
                self._slots.release()
                if not self._stopping.is_set():
                    logger.warning("receive from %s failed: %s", self.source.queue_logical_id, error)
                    self._stopping.wait(1.0)
                continue
            if not messages:
                self._slots.release()
                continue
            try:
                future: Future[None] = self._pool.submit(self.process, messages)
            except RuntimeError:
                self._slots.release()
                return
            future.add_done_callback(lambda _: self._slots.release())

    def _receive_batch(self) -> list[dict[str, Any]]:
        wanted = max(1, int(self.source.batch_size))
        window = float(self.source.maximum_batching_window_seconds or 0)
        deadline = time.monotonic() + window
        messages: list[dict[str, Any]] = []
        while len(messages) < wanted and not self._stopping.is_set():
            response = self.sqs.receive_message(
                QueueUrl=self.source.queue_url,
                MaxNumberOfMessages=min(MAX_RECEIVE, wanted - len(messages)),
                WaitTimeSeconds=0 if messages else WAIT_TIME_SECONDS,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = response.get("Messages") or []
            messages.extend(received)
            if not messages or time.monotonic() >= deadline:
                break
            if not received:
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
        return messages

    def process(self, messages: list[dict[str, Any]]) -> None:
        """Invokes the function with one batch and deletes the records that succeeded."""
        records = [lambda_record(message, self.source.queue_arn) for message in messages]
        self._invoke(records)
        if self.duplicate_rate:
            again = [record for record in records if self._random.random() < self.duplicate_rate]
            if again:
                self.duplicates_delivered += len(again)
                self._invoke(again)

    def _invoke(self, records: list[dict[str, Any]]) -> None:
        self.batches += 1
        try:
            response = self.function.invoke({"Records": records})
        except Exception:
            logger.exception(
                "%s failed on a batch of %d from %s; the messages return after their visibility timeout",
                self.function.logical_id,
                len(records),
                self.source.queue_logical_id,
            )
            return
        except BaseException as crash:  # a killed container: nothing after the crash point runs
            logger.warning(
                "%s crashed (%s) on a batch of %d from %s; the messages return after their visibility timeout",
                self.function.logical_id,
                type(crash).__name__,
                len(records),
                self.source.queue_logical_id,
            )
            return
        if self.source.report_batch_item_failures:
            failed = failed_message_ids(response, (record["messageId"] for record in records))
            if failed is None:
                logger.error(
                    "%s returned a malformed batch response, the whole batch is retried: %r",
                    self.function.logical_id,
                    response,
                )
                return
        else:
            failed = set()
        done = [record for record in records if record["messageId"] not in failed]
        self._delete(done)

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)]
            try:
                response = self.sqs.delete_message_batch(QueueUrl=self.source.queue_url, Entries=entries)
            except Exception as error:
                logger.warning("delete from %s failed: %s", self.source.queue_logical_id, error)
                continue
            for failure in response.get("Failed") or []:
                if failure.get("Code") != "ReceiptHandleIsInvalid":
                    logger.warning("delete from %s failed: %s", self.source.queue_logical_id, failure)
