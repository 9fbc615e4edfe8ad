"""The gateway's real handlers run in-process on moto, stage by stage, as Lambda would run them (for the
request-counting and cost benchmarks): accept (api), dispatch, upstream DLR (webhook) and client notification."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench import AwsCallMeter, metering_boto3_clients, offline_aws_environment, patched_environ
from bench.capacity import CapacityMeter

STACK = "sms-gateway-bench"
SIMULATOR_SECRET = "bench-simulator-secret"
# The 9bits seed's shortcode: a handset can reply to it, so its messages get a conversation-index entry.
SENDER = "48974"
# An alphanumeric sender ID (OTPs, alerts): no reply possible, no conversation-index entry (docs/data-model.md).
ALPHANUMERIC_SENDER = "BenchBank"
API_DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"
# The webhook function's URL (template.yaml's FunctionUrlConfig): where upstream callbacks arrive.
CALLBACK_DOMAIN = "xyz789abcdefghijklmnopqrstuvwxyz.lambda-url.us-east-1.on.aws"
RATE_LIMIT = 10_000


@dataclass(frozen=True)
class Latencies:
    """How long what the functions wait on takes to answer (seconds): AWS (DynamoDB, SQS, KMS) per request, the
    upstream per submit, the client's webhook per post. All 0 (answers at once) where requests are counted; the
    cost benchmark's timed flows use TYPICAL_LATENCIES, so what a function bills for waiting, and how much of the
    waiting it overlaps, is measured rather than assumed."""

    aws_request: float = 0.0
    upstream_submit: float = 0.0
    client_webhook: float = 0.0


# Everything answers at once: where requests are counted, not timed.
NO_LATENCIES = Latencies()
# AWS in the same region answers in a few ms; an upstream's submit and a client's webhook in tens to hundreds
# (the dispatcher throughput benchmark's upstream answers in 50 ms too).
TYPICAL_LATENCIES = Latencies(aws_request=0.005, upstream_submit=0.050, client_webhook=0.050)


# The dispatcher's queues, by their environment names (`<name>_QUEUE_URL`): a single send's and a bulk batch's.
DISPATCH_QUEUES = ("PRIORITY_DISPATCH", "DISPATCH")


def numbers(count: int, start: int = 0) -> list[str]:
    """Distinct valid Nigerian MTN numbers (the 9bits seed's network)."""
    return [f"234803{start + i:07d}" for i in range(count)]


def unhurried_context() -> Any:
    from tests.conftest import FakeContext

    class Unhurried(FakeContext):
        # Lambda's longest timeout: moto in this process, with the capacity probes around every write, takes far
        # longer than AWS would, and the dispatcher hands back what it cannot finish before its deadline. What is
        # measured here is requests, not time, so every record is given the time to finish in one invocation.
        def get_remaining_time_in_millis(self) -> int:
            return 900_000

    return Unhurried()


class RecordingSimulator:
    """The upstream simulator's submit protocol through httpx.MockTransport: every submit is accepted and
    recorded, so its DLR can be posted back to the webhook function afterwards."""

    def __init__(self, latency: float = 0.0) -> None:
        self.submits: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.latency = latency

    def __call__(self, request: Any) -> Any:
        import httpx

        payload = json.loads(request.content)
        with self._lock:
            self.submits.append(payload)
            upstream_id = f"sim-{len(self.submits)}"
        response = httpx.Response(200, json={"message_id": upstream_id, "status": "accepted"})
        return self._later(response) if self.latency else response

    async def _later(self, response: Any) -> Any:
        # httpx.MockTransport awaits a handler's coroutine: the submit answers after the latency, without holding
        # the dispatcher's event loop (as a real upstream's answer would not).
        import asyncio

        await asyncio.sleep(self.latency)
        return response


class _ClientWebhookHandler(BaseHTTPRequestHandler):
    # Keep-alive, as client webhooks behind any current web server or load balancer answer (http.server's default,
    # HTTP/1.0, would make the notifier open a connection for every post).
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:  # type: ignore[attr-defined]
            # The notifier posts a batch's records concurrently: `+=` alone could lose a count.
            self.server.posts += 1  # type: ignore[attr-defined]
        time.sleep(self.server.latency)  # type: ignore[attr-defined]
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve_client_webhook(latency: float = 0.0) -> ThreadingHTTPServer:
    """A client's DLR webhook on 127.0.0.1, served on a thread of this process, that answers 200 with JSON after
    `latency` seconds, counting the posts it gets (`posts`). Stop it with shutdown() and server_close()."""
    from sms_gateway_tools.localstack.httpserver import TrackingHTTPServer

    # Not socketserver's default backlog (5): it drops connections of a notifier batch posting ten at once, and a
    # dropped SYN is sent again only after a second. A client's real webhook listens with a longer queue.
    server = TrackingHTTPServer(("127.0.0.1", 0), _ClientWebhookHandler)
    server.posts = 0  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.latency = latency  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class ClientWebhook:
    """The client's webhook as the benchmarks see it: where it listens, and how many posts it has had."""

    def __init__(self, helper: Any) -> None:
        self._helper = helper
        self.server_address = ("127.0.0.1", int(helper.url.rsplit(":", 1)[1]))

    @property
    def posts(self) -> int:
        return int(self._helper.ask("posts"))


@contextmanager
def client_webhook(latency: float = 0.0) -> Iterator[ClientWebhook]:
    """serve_client_webhook in a child process of its own (bench/helpers.py): its CPU (reading each post,
    answering it) is the client's, never counted as the notifier's or any measured function's."""
    from bench.helpers import Helper

    helper = Helper("webhook", latency=latency)
    try:
        yield ClientWebhook(helper)
    finally:
        helper.stop()


def take_schedule_input(scheduler: Any, group: str) -> dict[str, Any]:
    """The input of the one schedule the group holds (what it would invoke scheduled_dispatch with); the schedule
    is deleted, as a one-time schedule deletes itself once it fired."""
    names = [schedule["Name"] for schedule in scheduler.list_schedules(GroupName=group)["Schedules"]]
    if len(names) != 1:
        raise RuntimeError(f"expected one schedule, found {names}")
    schedule = scheduler.get_schedule(GroupName=group, Name=names[0])
    scheduler.delete_schedule(GroupName=group, Name=names[0])
    return dict(json.loads(schedule["Target"]["Input"]))


def simulator_dlr_event(
    secret: str,
    *,
    message_id: str,
    client_ref: str,
    to: str,
    status: str = "DELIVRD",
    done_at: str | None = None,
    function_url: bool = False,
) -> dict[str, Any]:
    """The simulator's signed DLR as the webhook function gets it: through its function URL (`function_url`, a
    `$default` route event), or through the HTTP API's `POST /callbacks/{provider}/dlr` route."""
    from datetime import UTC, datetime

    from sms_gateway_tools.simulator import sign

    report = {
        "message_id": message_id,
        "client_ref": client_ref,
        "to": to,
        "status": status,
        "error_code": "000",
        "done_at": done_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    body = json.dumps(report)
    timestamp = str(int(time.time()))
    headers = {"x-simulator-timestamp": timestamp, "x-simulator-signature": sign(secret, timestamp, body)}
    path = "/callbacks/simulator/dlr"
    if function_url:
        return http_api_event("POST", path, body, headers, domain=CALLBACK_DOMAIN, route_key="$default")
    event = http_api_event("POST", path, body, headers)
    event["pathParameters"] = {"provider": "simulator"}
    event["routeKey"] = event["requestContext"]["routeKey"] = "POST /callbacks/{provider}/dlr"
    return event


def http_api_event(
    method: str, path: str, body: str, headers: dict[str, str], *, domain: str = API_DOMAIN, route_key: str = ""
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as the HttpApi hands it to the function; with a function URL's
    `domain` and route_key `$default`, the event Lambda builds for a request to that function URL."""
    route_key = route_key or f"{method} {path}"
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": domain, "content-type": "application/json", **headers},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".", 1)[0],
            "domainName": domain,
            "domainPrefix": domain.split(".", 1)[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10"},
            "requestId": "bench",
            "routeKey": route_key,
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
        "body": body,
    }


@dataclass
class Invocation:
    """One handler call: which function, its wall and CPU time, and the SQS records it got (0 for HTTP)."""

    function: str
    wall_seconds: float
    cpu_seconds: float
    moto_cpu_seconds: float
    records: int = 0
    # AWS requests the handler made (the poller's are not among them).
    requests: int = 0


@dataclass
class StageRun:
    invocations: list[Invocation] = field(default_factory=list)
    # SQS requests Lambda's event source mapping makes for us (billed to us): one ReceiveMessage per batch it
    # hands over and one DeleteMessageBatch per batch it deletes.
    polling_requests: dict[str, float] = field(default_factory=dict)
    # Their billing units by queue type (`sqs:fifo`, `sqs:standard`): each receive of up to 10 small records
    # is one 64 KB chunk.
    polling_units: dict[str, float] = field(default_factory=dict)


class MotoGateway:
    """Handlers, queues and one account on moto. `meter` counts the gateway's own requests (made through the
    clients it creates); the harness's own reads (the stand-in for Lambda's poller) go through a client made
    before metering, so they are not counted but derived (see StageRun.polling_requests)."""

    def __init__(self, env: dict[str, str], meter: AwsCallMeter, account: dict[str, Any], poller: Any) -> None:
        from bench import REPO
        from sms_gateway_tools import template as tpl

        self.env = env
        self.meter = meter
        self.account = account
        self.poller = poller
        self.upstream = RecordingSimulator()
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        definitions = {fn.logical_id: fn for fn in tpl.function_definitions(tpl.load_template(REPO / "template.yaml"))}
        self.batch_sizes = {
            "DispatcherFunction": definitions["DispatcherFunction"].sqs_events[0].batch_size,
            "NotifierFunction": definitions["NotifierFunction"].sqs_events[0].batch_size,
        }
        self.dlr_cursor = 0
        # Settle checks the notifier handed back, hidden until their DLR wait is over (settle_after_the_wait).
        self.settle_checks_waiting: list[dict[str, Any]] = []

    def handler(self, name: str) -> Callable[[dict[str, Any], Any], Any]:
        if name not in self._handlers:
            from tests.conftest import load_function

            self._handlers[name] = load_function(name).handler
        return self._handlers[name]

    def invoke(self, name: str, event: dict[str, Any], records: int = 0) -> tuple[Any, Invocation]:
        handler = self.handler(name)
        moto_before, requests_before = self.meter.moto_cpu_seconds, self.meter.total
        wall, cpu = time.perf_counter(), time.process_time()
        answer = handler(event, unhurried_context())
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        moto = self.meter.moto_cpu_seconds - moto_before
        return answer, Invocation(name, wall, cpu, moto, records, self.meter.total - requests_before)

    # ------------------------------------------------------------------ stages

    def send(
        self, to: list[str], text: str = "Your code is 123456", sender: str = SENDER, **extra: Any
    ) -> tuple[dict[str, Any], Invocation]:
        body = {"from": sender, "to": to if len(to) > 1 else to[0], "message": text, **extra}
        event = http_api_event(
            "POST", "/ng/v1/sendsms", json.dumps(body), {"authorization": f"Bearer {self.account['token']}"}
        )
        answer, invocation = self.invoke("api", event)
        if answer["statusCode"] != 200:
            raise RuntimeError(f"send refused: {answer}")
        return answer, invocation

    def drain(self, queue: str, function: str, run: StageRun) -> None:
        """Feeds a queue to its function in batches of the template's BatchSize, deleting what succeeded, as
        the event source mapping does; until the queue is empty."""
        from sms_gateway_tools.localstack.sqs_poller import lambda_record

        url = self.env[f"{queue}_QUEUE_URL"]
        arn = self.poller.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        size = self.batch_sizes[f"{function.capitalize()}Function"]
        while True:
            messages = self.poller.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=size,
                MessageSystemAttributeNames=["All"],
                VisibilityTimeout=60,
                # The queue's own long polling would make moto wait on an empty queue.
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not messages:
                return
            event = {"Records": [lambda_record(m, arn) for m in messages]}
            answer, invocation = self.invoke(function, event, records=len(messages))
            run.invocations.append(invocation)
            failed = {item["itemIdentifier"] for item in answer.get("batchItemFailures", [])}
            # A settle check not due yet is handed back on purpose: the notifier hid it until it is.
            waiting = [m for m in messages if m["MessageId"] in failed and _is_settle_check(m)]
            self.settle_checks_waiting.extend(waiting)
            if failed - {m["MessageId"] for m in waiting}:
                raise RuntimeError(f"{function} failed records: {answer}")
            done = [m for m in messages if m["MessageId"] not in failed]
            if done:
                self.poller.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                )
            # As under load: the mapping's receive hands over full batches and its delete removes full batches, so
            # a batch's requests are shared by BatchSize records (the small flows' last batches are not full).
            received, deleted = len(messages) / size, len(done) / size
            for operation, share in (("sqs:ReceiveMessage", received), ("sqs:DeleteMessageBatch", deleted)):
                run.polling_requests[operation] = run.polling_requests.get(operation, 0) + share
            kind = "sqs:fifo" if url.endswith(".fifo") else "sqs:standard"
            run.polling_units[kind] = run.polling_units.get(kind, 0) + received + deleted

    def settle_after_the_wait(self, run: StageRun) -> None:
        """Lets the DLR wait (DLR_WAIT_SECONDS) pass for the settle checks the notifier hid, as it passes on AWS: the
        notifier's clock moves on a visibility hop (MAX_HOP_SECONDS, just under 12 h) at a time, each hidden check is
        made visible again (by the harness: on AWS its visibility timeout ends) and the notify queue drained, until
        no check is hidden. With the 48 h default a check queued at t=0 is hidden five times (the fifth for the 20
        minutes left) and acted on and deleted at the sixth receive: what it costs on AWS."""
        from sms_gateway import consumers
        from sms_gateway.domain.models import utc_now
        from sms_gateway.logic.settle import MAX_HOP_SECONDS

        start, hops = utc_now(), 0
        real_clock = consumers.utc_now
        try:
            while self.settle_checks_waiting:
                hops += 1
                consumers.utc_now = functools.partial(lambda at: at, start + timedelta(seconds=MAX_HOP_SECONDS * hops))
                waiting, self.settle_checks_waiting = self.settle_checks_waiting, []
                url = self.env["NOTIFY_QUEUE_URL"]
                for message in waiting:
                    self.poller.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                    )
                self.drain("NOTIFY", "notifier", run)
                if hops > 10:
                    raise RuntimeError("settle checks still waiting after 10 hops")
        finally:
            consumers.utc_now = real_clock

    def drain_dispatch(self, run: StageRun) -> None:
        """Drains both dispatch queues to the dispatcher, as its two event sources do: single sends are on the
        priority queue (PRIORITY_DISPATCH_QUEUE_URL), bulk batches on the other."""
        for queue in DISPATCH_QUEUES:
            self.drain(queue, "dispatcher", run)

    def empty_dispatch(self) -> None:
        """Drops what both dispatch queues hold, unread."""
        for queue in DISPATCH_QUEUES:
            self.empty(queue)

    def empty(self, queue: str) -> None:
        """Drops what a queue holds, unread (PurgeQueue allows one call a minute)."""
        url = self.env[f"{queue}_QUEUE_URL"]
        while messages := self.poller.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        ):
            self.poller.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )

    def post_dlrs(self, run: StageRun, *, limit: int | None = None, status: str = "DELIVRD") -> None:
        """The simulator's signed DLR callback for the next `limit` submits not yet reported (all by default),
        one HTTP request each, to the webhook function's URL (CALLBACK_BASE_URL)."""
        end = len(self.upstream.submits) if limit is None else min(len(self.upstream.submits), self.dlr_cursor + limit)
        for submit in self.upstream.submits[self.dlr_cursor : end]:
            event = simulator_dlr_event(
                SIMULATOR_SECRET,
                message_id=f"sim-{submit['client_ref']}",
                client_ref=submit["client_ref"],
                to=submit["to"],
                status=status,
                done_at="2026-01-01T00:00:01Z",
                function_url=True,
            )
            answer, invocation = self.invoke("webhook", event)
            if answer["statusCode"] != 200:
                raise RuntimeError(f"DLR refused: {answer}")
            run.invocations.append(invocation)
        self.dlr_cursor = end


def _is_settle_check(message: dict[str, Any]) -> bool:
    from sms_gateway.logic.settle import is_settle_check

    return is_settle_check(json.loads(message["Body"]))


@contextmanager
def moto_gateway(
    *,
    capacity: bool = False,
    credits: int = 10_000_000,
    latencies: Latencies = NO_LATENCIES,
    single_sends_in_order: bool = True,
) -> Iterator[MotoGateway]:
    """moto with the template's resources, one account with a DLR webhook on 127.0.0.1, the simulator as the
    default upstream (through httpx.MockTransport), and every boto3 client the gateway makes metered (with
    `capacity`, in DynamoDB and SQS billing units too: slower, so never with timings). AWS, the upstream and the
    client's webhook answer after `latencies`."""
    import boto3
    import pytest
    from moto import mock_aws

    from sms_gateway import bootstrap
    from sms_gateway_tools.admin import create_account, set_account
    from sms_gateway_tools.localstack.resources import create_resources
    from tests.conftest import route_simulator_upstreams_to

    with ExitStack() as stack:
        stack.enter_context(patched_environ(offline_aws_environment()))
        stack.enter_context(mock_aws())
        webhook = stack.enter_context(client_webhook(latencies.client_webhook))
        env = create_resources(
            stack_name=STACK,
            simulator_url="http://127.0.0.1:9",
            api_url=f"https://{API_DOMAIN}",
            callback_url=f"https://{CALLBACK_DOMAIN}/",
            simulator_secret=SIMULATOR_SECRET,
        )
        stack.enter_context(patched_environ(env))
        bootstrap.reset()
        stack.callback(bootstrap.reset)
        account = create_account(
            name="Bench",
            senders=[SENDER, ALPHANUMERIC_SENDER],
            credits=credits,
            dlr_url=f"http://127.0.0.1:{webhook.server_address[1]}/dlr",
        )
        # Above any single record (100 messages), so the limiter never makes the benchmark wait on the clock.
        set_account(
            account_id=account["account_id"], rate_limit=RATE_LIMIT, single_sends_in_order=single_sends_in_order
        )
        poller = boto3.client("sqs")
        patches = stack.enter_context(pytest.MonkeyPatch.context())
        wanted = CapacityMeter(boto3.client("dynamodb"), env["TABLE_NAME"]) if capacity else None
        meter = stack.enter_context(metering_boto3_clients(wanted))
        meter.request_latency = latencies.aws_request
        # Clients made from here on are the gateway's own, and counted.
        bootstrap.reset()
        gateway_run = MotoGateway(env, meter, account, poller)
        gateway_run.upstream.latency = latencies.upstream_submit
        route_simulator_upstreams_to(patches, gateway_run.upstream)
        gateway_run.webhook = webhook  # type: ignore[attr-defined]
        yield gateway_run


class LogVolume:
    """Bytes and lines the handlers write to stdout (Powertools' JSON log lines and EMF metric lines): what
    Lambda ships to CloudWatch Logs, apart from its own START/END/REPORT lines."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        self.lines += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def captured_logs(level: str) -> Iterator[LogVolume]:
    """The gateway's logger at `level` (the template's production level), its output and the EMF lines counted
    instead of printed."""
    import contextlib

    from sms_gateway.observability import logger

    volume = LogVolume()
    handler = logger.registered_handler
    saved_level = logger.log_level
    logger.setLevel(level)
    old_stream = handler.setStream(volume)  # type: ignore[attr-defined]
    try:
        with contextlib.redirect_stdout(volume):  # type: ignore[type-var]
            yield volume
    finally:
        handler.setStream(old_stream)  # type: ignore[attr-defined]
        logger.setLevel(saved_level)


def production_log_level() -> str:
    """POWERTOOLS_LOG_LEVEL as template.yaml sets it for Stage=prod."""
    from bench import REPO
    from sms_gateway_tools import template as tpl

    return str(tpl.load_template(REPO / "template.yaml")["Mappings"]["StageConfig"]["prod"]["LogLevel"])
