"""Load: concurrent 9bits clients sending 100-recipient requests to the local stack over HTTP; what it accepted,
how fast, with which errors, and that every accepted message was stored."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

from bench import median, offline_aws_environment, patched_environ

NAME = "load"
SENDER = "LOADTEST"


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _client(
    api_url: str, token: str, *, client: int, requests: int, recipients: int, results: list[tuple[int, float, Any]]
) -> None:
    """One client: `requests` sends one after the other, each to `recipients` numbers no other request uses."""
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=120) as http:
        for request in range(requests):
            first = (client * requests + request) * recipients
            body = {
                "from": SENDER,
                "to": [f"234803{first + index:07d}" for index in range(recipients)],
                "message": "Load test: your order has shipped.",
            }
            started = time.perf_counter()
            try:
                response = http.post("/ng/v1/sendsms", json=body)
                status, answer = response.status_code, response.json() if response.status_code == 200 else None
            except httpx.HTTPError as error:
                status, answer = 0, type(error).__name__
            results.append((status, time.perf_counter() - started, answer))


def _stored_messages(stack: Any, account_id: str, reference_id: str) -> int:
    from sms_gateway.adapters.dynamodb import messages_pk

    dynamodb = stack.client("dynamodb")
    query: dict[str, Any] = {
        "TableName": stack.env["TABLE_NAME"],
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": messages_pk(account_id, int(reference_id))}},
        "Select": "COUNT",
        "ConsistentRead": True,
    }
    count = 0
    while True:
        answer = dynamodb.query(**query)
        count += int(answer["Count"])
        if not answer.get("LastEvaluatedKey"):
            return count
        query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


class _DispatchQueueDrainer(threading.Thread):
    """Receives and deletes the dispatch queue's records while the load runs; `stop()` drains the rest and
    answers how many records there were."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        super().__init__(name="load-dispatch-drainer", daemon=True)
        self._sqs = sqs
        self._queue_url = queue_url
        self._stopping = threading.Event()
        self.records = 0

    def run(self) -> None:
        while True:
            answer = self._sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            received = answer.get("Messages", [])
            if received:
                self._sqs.delete_message_batch(
                    QueueUrl=self._queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)],
                )
                self.records += len(received)
            elif self._stopping.is_set():
                return

    def stop(self) -> int:
        self._stopping.set()
        self.join(timeout=120)
        return self.records


def measure(clients: int, requests: int, recipients: int) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account
    from sms_gateway_tools.localstack import LocalStack

    total = clients * requests * recipients
    with patched_environ(offline_aws_environment()), LocalStack(port=0, dlr_delay=3600) as stack:
        # Dispatch is paused: the figures are the API's intake, and the dispatcher would take the stack's one
        # invocation lock from the API (the account's 50 msg/s rate limit would also make it drain for minutes).
        # A drainer takes the dispatch records off the queue instead (counting them), because moto's SQS slows
        # down badly as a queue gets deep: left to pile up, the queue, not the API, would set the pace.
        # Both dispatch queues: bulk batches, and single sends (a send to one number) on the priority one.
        for poller in stack.pollers:
            if poller.source.queue_logical_id in ("DispatchQueue", "PriorityDispatchQueue"):
                poller.stop()
        drainers = [
            _DispatchQueueDrainer(stack.client("sqs"), stack.env[name])
            for name in ("DISPATCH_QUEUE_URL", "PRIORITY_DISPATCH_QUEUE_URL")
        ]
        for drainer in drainers:
            drainer.start()
        account = create_account(name="Load", senders=[SENDER], credits=total * 2, api_url=stack.api_url)
        results: list[tuple[int, float, Any]] = []
        threads = [
            threading.Thread(
                target=_client,
                args=(stack.api_url, account["token"]),
                kwargs={"client": client, "requests": requests, "recipients": recipients, "results": results},
                name=f"load-client-{client}",
            )
            for client in range(clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started

        accepted = [answer for status, _, answer in results if status == 200]
        processed = sum(int(answer["recipients_processed"]) for answer in accepted)
        stored = sum(_stored_messages(stack, account["account_id"], answer["reference_id"]) for answer in accepted)
        queued = sum(drainer.stop() for drainer in drainers)
    latencies = [seconds for _, seconds, _ in results]
    errors = Counter(str(status) for status, _, _ in results if status != 200)
    return {
        "clients": clients,
        "requests_each": requests,
        "recipients_each": recipients,
        "seconds": wall,
        "requests": len(results),
        "requests_per_s": len(results) / wall,
        "accepted_msg_per_s": processed / wall,
        "p50_ms": 1000 * median(latencies),
        "p95_ms": 1000 * _percentile(latencies, 0.95),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "errors": ", ".join(f"{status}: {count}" for status, count in sorted(errors.items())) or "none",
        "accepted_messages": processed,
        "stored_messages": stored,
        "all_stored": stored == processed and processed == len(accepted) * recipients,
        "dispatch_records_queued": int(queued),
    }


def run(quick: bool) -> dict[str, Any]:
    clients, requests, recipients = (5, 2, 10) if quick else (50, 20, 100)
    if os.environ.get("BENCH_LOAD_SHAPE"):
        clients, requests, recipients = (int(n) for n in os.environ["BENCH_LOAD_SHAPE"].split("x"))
    row = measure(clients, requests, recipients)
    return {
        "name": NAME,
        "title": f"Load: {clients} clients x {requests} requests x {recipients} recipients on the local stack",
        "command": f".venv/bin/python -m bench --only {NAME}  (BENCH_LOAD_SHAPE=CxRxN for another shape)",
        "target": "no errors, every accepted message stored (figures, no speed target)",
        "met": row["errors"] == "none" and row["all_stored"],
        "rows": [row],
        "notes": [
            "The local stack (sms_gateway_tools.localstack.LocalStack, port 0) in this process: moto's server, the "
            "HTTP bridge, the upstream simulator. Clients are threads with their own keep-alive httpx client, "
            "each sending its requests one after the other (9bits POST /ng/v1/sendsms, `to` a list of distinct "
            "valid Nigerian numbers). Latency is per request, measured by the client.",
            "Dispatch is paused (the pollers of both dispatch queues are stopped): the local stack runs one "
            "function invocation at a time (its default, serialize_invocations=True), so a dispatcher invocation "
            "would hold the API up, and the account's 50 msg/s rate limit would make it drain for minutes; the "
            "figures are the API's intake. A drainer thread per dispatch queue receives and deletes the records as "
            "they come (moto's SQS slows down badly as a queue gets deep); dispatch_records_queued counts them.",
            "Stored = message items counted per accepted batch in DynamoDB (moto), against recipients_processed "
            "of each accepted answer.",
            "These are this machine's figures (2 cores shared with other jobs), with moto as DynamoDB and SQS "
            "and one API invocation at a time: a floor for the code path, not what API Gateway and Lambda "
            "(many concurrent containers) would do on AWS.",
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=os.environ.get("QUICK") == "1"), indent=2))
