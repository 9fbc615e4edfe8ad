"""SQS adapters: the FIFO dispatch queues (bulk batches, and single sends on their own; message group = account,
or its priority lane) and the notify queue."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sms_gateway.adapters import aws
from sms_gateway.domain.models import DispatchCommand
from sms_gateway.ports import MAX_QUEUE_DELAY_SECONDS, PartlyQueued

SEND_BATCH_SIZE = 10
# What the messages of one SendMessageBatch may add up to (their bodies, UTF-8): SQS refuses a call over its limit
# whole (BatchRequestTooLong), 256 KiB as long as a queue's messages were (1 MiB since SQS took bigger ones). Until
# session 36 every call took ten whatever their sizes, so a sweep or a resend-all of a few of the longest SMS (about
# 235 KB each queued) was refused on every run, the short ones beside them too.
SEND_BATCH_BYTES = 256 * 1024
# The longest DelaySeconds SQS takes on a message sent.
MAX_SEND_DELAY = 900


class _Queue:
    def __init__(self, queue_url: str, *, client: Any | None = None, prompt: bool = False) -> None:
        self.queue_url = queue_url
        self._client = client
        # aws.client's `prompt` client: gives up within seconds when SQS does not answer.
        self._prompt = prompt

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("sqs", prompt=self._prompt)
        return self._client

    def _send(self, entries: Sequence[dict[str, Any]], *, queue_url: str | None = None) -> None:
        """Sends in order, one SendMessageBatch call per 10 entries, fewer where they add up to more than
        SEND_BATCH_BYTES (_calls); any refused entry is an error, PartlyQueued naming the entries not on the queue:
        those refused and those after their call (not sent)."""
        for start, chunk in _calls(entries):
            numbered = [{**entry, "Id": str(i)} for i, entry in enumerate(chunk)]
            answer = self.client.send_message_batch(QueueUrl=queue_url or self.queue_url, Entries=numbered)
            failed = answer.get("Failed") or []
            if failed:
                reasons = "; ".join(f"{f.get('Id')}: {f.get('Code')} {f.get('Message', '')}" for f in failed)
                refused = sorted(start + int(f["Id"]) for f in failed)
                raise PartlyQueued(
                    f"SQS refused {len(failed)} entries: {reasons}",
                    [*refused, *range(start + len(chunk), len(entries))],
                )

    def delay(self, receipt_handle: str, seconds: int) -> None:
        """Keeps a received record invisible for `seconds`, at most MAX_QUEUE_DELAY_SECONDS: the retry's backoff. SQS
        refuses a visibility ending more than 12 hours after the record's receipt, and a refused hand-back brings
        the record back at once; a longer wait is several hops, the record's handler asking again each time."""
        self._delay(receipt_handle, seconds, queue_url=self.queue_url)

    def _delay(self, receipt_handle: str, seconds: int, *, queue_url: str) -> None:
        self.client.change_message_visibility(
            QueueUrl=queue_url,
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=max(0, min(seconds, MAX_QUEUE_DELAY_SECONDS)),
        )


def _calls(entries: Sequence[dict[str, Any]]) -> list[tuple[int, Sequence[dict[str, Any]]]]:
    """The entries in the SendMessageBatch calls that send them, in order, each with the index of its first entry: at
    most SEND_BATCH_SIZE entries a call, whose bodies add up to at most SEND_BATCH_BYTES (one bigger alone is a call
    of its own: SQS takes it or refuses it for its own size)."""
    calls: list[tuple[int, Sequence[dict[str, Any]]]] = []
    start = size = 0
    for index, entry in enumerate(entries):
        entry_size = len(str(entry["MessageBody"]).encode())
        if index > start and (index - start == SEND_BATCH_SIZE or size + entry_size > SEND_BATCH_BYTES):
            calls.append((start, entries[start:index]))
            start = index
            size = 0
        size += entry_size
    if start < len(entries):
        calls.append((start, entries[start:]))
    return calls


def dispatch_group_id(command: DispatchCommand) -> str:
    """The record's message group: the account's bulk lane (its batches in order), its priority lane (its single
    sends in order, ahead of its bulk), or, for a single send that needs no order, a lane of the send's own."""
    if not command.priority:
        return command.account_id
    if not command.in_order:
        return f"{command.account_id}#send#{command.reference_id}"
    return f"{command.account_id}#priority"


def dispatch_dedup_id(command: DispatchCommand) -> str:
    """Names the record's whole contents, so SQS drops only a record that repeats one exactly (a retried enqueue).
    A retry that regrouped the messages still queued (the dispatcher sent some of the first records meanwhile) makes
    new records: named by their first message alone, one could share an earlier record's id while holding a message
    that record did not, and be dropped with it. A message in two records is submitted once (the dispatcher's
    claim)."""
    contents = ",".join(str(message_id) for message_id in command.message_ids)
    return f"{command.reference_id}-{hashlib.sha256(contents.encode()).hexdigest()[:64]}"


class SqsDispatchQueue(_Queue):
    """Bulk batches on the dispatch queue, single sends (`priority`) on the priority dispatch queue: each has its
    own event source and MaximumConcurrency, so bulk backlogs a rate limit holds in their invocations never take
    the slots a one-time code needs. A lane lives wholly on one queue, so its order is kept. Without a priority
    queue URL every record goes to the one queue."""

    def __init__(self, queue_url: str, *, priority_queue_url: str = "", client: Any | None = None) -> None:
        super().__init__(queue_url, client=client)
        self.priority_queue_url = priority_queue_url or queue_url

    def queue_url_of(self, command: DispatchCommand) -> str:
        return self.priority_queue_url if command.priority else self.queue_url

    def enqueue(self, commands: Sequence[DispatchCommand]) -> None:
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for command in commands:
            by_queue.setdefault(self.queue_url_of(command), []).append(
                {
                    "MessageBody": command.model_dump_json(),
                    # The account is the message group: its batches keep their order; others don't wait.
                    # Priority commands have a lane of their own, so an OTP overtakes the account's bulk.
                    "MessageGroupId": dispatch_group_id(command),
                    "MessageDeduplicationId": dispatch_dedup_id(command),
                }
            )
        for queue_url, entries in by_queue.items():
            self._send(entries, queue_url=queue_url)

    def delay(self, receipt_handle: str, seconds: int, *, source_arn: str | None = None) -> None:
        """As _Queue.delay, on the queue the record was received from (its eventSourceARN; the bulk queue when
        it names neither)."""
        self._delay(receipt_handle, seconds, queue_url=self._url_of_arn(source_arn))

    def _url_of_arn(self, arn: str | None) -> str:
        # A queue's ARN ends with its name, as its URL does: arn:aws:sqs:<region>:<account>:<name>.
        name = (arn or "").rsplit(":", 1)[-1]
        for url in (self.priority_queue_url, self.queue_url):
            if name and url.rstrip("/").rsplit("/", 1)[-1] == name:
                return url
        return self.queue_url


class SqsDeadLetterQueue(_Queue):
    def dead_letter(
        self, body: str, *, reason: str, error: str, group_id: str | None = None, dedup_id: str | None = None
    ) -> None:
        """Parks a record for an operator, with why it failed as message attributes (the DLQ alarm fires).
        A FIFO dead-letter queue needs `group_id` and `dedup_id`; a standard one takes neither."""
        fifo = {"MessageGroupId": group_id, "MessageDeduplicationId": dedup_id} if group_id and dedup_id else {}
        self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=body,
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:256]},
                "error": {"DataType": "String", "StringValue": error[:1024] or "-"},
            },
            **fifo,
        )


class SqsNotifyQueue(_Queue):
    """Client notifications (DLR callbacks, inbound SMS) for the notifier."""

    def publish(self, notifications: Sequence[dict[str, Any]]) -> None:
        self._send([{"MessageBody": json.dumps(n)} for n in notifications])

    def requeue(self, body: dict[str, Any], seconds: int) -> None:
        """Queues `body` as a fresh record (its receive count starts over), delayed for `seconds`, at most the 15
        minutes SQS delays a message: a record due later is received early and waits again."""
        self.client.send_message(
            QueueUrl=self.queue_url, MessageBody=json.dumps(body), DelaySeconds=max(0, min(seconds, MAX_SEND_DELAY))
        )
