"""Cold start including the first invocation: each function's import + init + one typical event in a fresh Python
process against moto (a server in this process) and the upstream simulator, against a floor that imports boto3,
creates the same clients and makes the same AWS requests. Moving work from init into the first call cannot look
like a saving here: a Lambda cold start is init plus the first invocation."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SENDER = "48974"
RECIPIENT = "2348030000001"

# Runs in a fresh interpreter after LAMBDA_PACKAGES_ONLY (bench_cold_start.py). Before the clock starts it loads
# only the gateway's client factory (a few lines, no boto3), to record every AWS request the function makes
# (service, operation, parameters) so the floor can make the same ones.
INVOKE_SCRIPT = """
import importlib.util, pickle, time
from sms_gateway.adapters import aws
recorded, recording_cpu, hooked = [], [0.0], set()
make_client = aws.client
def record(params, model, **_):
    started = time.process_time()
    recorded.append((model.service_model.service_name, model.name, pickle.dumps(params)))
    recording_cpu[0] += time.process_time() - started
def recording_client(service, **options):
    made = make_client(service, **options)
    if id(made) not in hooked:
        hooked.add(id(made))
        made.meta.events.register("provide-client-params.*.*", record)
    return made
aws.client = recording_client
class Context:
    function_name = "bench"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    memory_limit_in_mb = 256
    aws_request_id = "bench-request"
    log_group_name = "/aws/lambda/bench"
    log_stream_name = "bench"
    def get_remaining_time_in_millis(self):
        return 30000
event = json.loads(args["event"])
started, started_cpu = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("app", args["path"])
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
imported_cpu = time.process_time()
answer = module.handler(event, Context())
done, done_cpu = time.perf_counter(), time.process_time()
with open(args["record_to"], "wb") as out:
    pickle.dump(recorded, out)
print(json.dumps({"init_ms": (imported_cpu - started_cpu) * 1000,
                  "ready_ms": (done_cpu - started_cpu - recording_cpu[0]) * 1000,
                  "ready_wall_ms": (done - started) * 1000, "answer": answer}, default=str))
"""

# The floor with the same requests: boto3, one client per service the function called (with the gateway's client
# configuration) and the recorded requests, made again. A repeat may be refused (a conditional write already
# applied): the service answered, and the client parsed the answer, as for the function.
FLOOR_REQUESTS_SCRIPT = """
import pickle, time
with open(args["requests"], "rb") as recorded:
    requests = [(service, operation, pickle.loads(params)) for service, operation, params in pickle.load(recorded)]
started, started_cpu = time.perf_counter(), time.process_time()
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=3, read_timeout=10,
                max_pool_connections=64, parameter_validation=False)
session = boto3.session.Session()
clients = {service: session.client(service, config=config) for service in sorted({r[0] for r in requests})}
for service, operation, params in requests:
    try:
        clients[service]._make_api_call(operation, params)
    except ClientError:
        pass
ready, ready_cpu = time.perf_counter(), time.process_time()
print(json.dumps({"ready_ms": (ready_cpu - started_cpu) * 1000, "ready_wall_ms": (ready - started) * 1000}))
"""


@dataclass
class Measured:
    function_ms: float
    init_ms: float
    floor_ms: float
    function_wall_ms: float
    floor_wall_ms: float
    requests: list[str]


class FirstInvocations:
    """The local stack's moto, resources and simulator (no pollers, no bridge functions: the events are built
    here and handed to fresh processes), one account, and a client webhook on 127.0.0.1."""

    def __init__(self, stack: Any, account: dict[str, Any], run_script: Callable[..., Any], base_env: dict[str, str]):
        self.stack = stack
        self.account = account
        self.run_script = run_script
        self.env = {**base_env, **stack.env}
        self.records = Path(tempfile.mkdtemp(prefix="bench-cold-"))
        self.api_handler: Any = None

    # -- events ---------------------------------------------------------------------------------

    def queue_event(self, queue: str) -> dict[str, Any]:
        """The one message a queue holds, as Lambda's SQS event (and removed, as the event source would)."""
        from sms_gateway_tools.localstack.sqs_poller import lambda_record

        sqs = self.stack.client("sqs")
        url = self.stack.resources.queue_urls[queue]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            messages = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if messages:
                if len(messages) != 1:
                    raise RuntimeError(f"{queue} held {len(messages)} messages, expected the one just queued")
                sqs.delete_message(QueueUrl=url, ReceiptHandle=messages[0]["ReceiptHandle"])
                return {"Records": [lambda_record(messages[0], self.stack.resources.queue_arns[queue])]}
            time.sleep(0.05)
        raise RuntimeError(f"nothing arrived on {queue}")

    def empty(self, queue: str) -> None:
        sqs = self.stack.client("sqs")
        url = self.stack.resources.queue_urls[queue]
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        ):
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )

    def send_event(self, **extra: Any) -> dict[str, Any]:
        from bench.moto_gateway import http_api_event

        # A one-time code with delivery reports: the report comes back through webhook and notifier.
        body = {"from": SENDER, "to": RECIPIENT, "message": "Your code is 123456", "delivery_report": "yes", **extra}
        return http_api_event(
            "POST", "/ng/v1/sendsms", json.dumps(body), {"authorization": f"Bearer {self.account['token']}"}
        )

    def dlr_event(self) -> dict[str, Any]:
        """The simulator's signed DLR for its latest submit (the dispatcher's), as the HTTP API hands it over."""
        from bench.moto_gateway import simulator_dlr_event

        submit = self.stack.simulator.messages()[-1]
        return simulator_dlr_event(
            self.stack.simulator.secret,
            message_id=submit["message_id"],
            client_ref=submit["client_ref"],
            to=submit["to"],
        )

    def schedule_event(self) -> dict[str, Any]:
        """A batch scheduled an hour ahead (sent through the api handler in this process), and the input its
        one-time schedule would invoke scheduled_dispatch with."""
        from tests.conftest import FakeContext, load_function

        if self.api_handler is None:
            self.api_handler = load_function("api").handler
        send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        # Its metrics line is this process's, not the benchmark's output.
        with contextlib.redirect_stdout(io.StringIO()):
            answer = self.api_handler(self.send_event(send_at=send_at), FakeContext())
        if answer["statusCode"] != 200:
            raise RuntimeError(f"scheduled send refused: {answer}")
        from bench.moto_gateway import take_schedule_input

        return take_schedule_input(self.stack.client("scheduler"), self.stack.resources.schedule_groups[0])

    # -- runs -----------------------------------------------------------------------------------

    def measure(
        self,
        name: str,
        path: str,
        event: dict[str, Any],
        accept: Callable[[Any], bool],
        then: Callable[[], Any] = lambda: None,
    ) -> tuple[Measured, Any]:
        """The function's first invocation with `event` in a fresh process, then `then()` (which takes what the
        invocation queued, before the floor's repeated requests queue it again), then the floor."""
        from bench.bench_cold_start import LAMBDA_PACKAGES_ONLY

        record_to = self.records / f"{name}.pickle"
        args = {"path": path, "event": json.dumps(event), "record_to": str(record_to), "importable": _importable()}
        function = _last_json(self.run_script(LAMBDA_PACKAGES_ONLY + INVOKE_SCRIPT, [json.dumps(args)], self.env))
        if not accept(function["answer"]):
            raise RuntimeError(f"{name}'s first invocation failed: {function['answer']}")
        following = then()
        floor_args = {"requests": str(record_to), "importable": args["importable"]}
        floor = _last_json(
            self.run_script(LAMBDA_PACKAGES_ONLY + FLOOR_REQUESTS_SCRIPT, [json.dumps(floor_args)], self.env)
        )
        with record_to.open("rb") as recorded:
            requests = [f"{service}:{operation}" for service, operation, _ in pickle.load(recorded)]
        measured = Measured(
            function["ready_ms"],
            function["init_ms"],
            floor["ready_ms"],
            function["ready_wall_ms"],
            floor["ready_wall_ms"],
            requests,
        )
        return measured, following

    def round(self, paths: dict[str, str]) -> dict[str, Measured]:
        """One typical invocation of each function, in pipeline order (each one's output is the next one's
        event), each paired with its floor. The queues are emptied after each step: moto's stay shallow."""
        unknown = set(paths) - set(PIPELINE)
        if unknown:
            raise RuntimeError(
                f"no typical event for {', '.join(sorted(unknown))}: add one to bench/first_invocation.py"
            )
        http_ok = lambda answer: answer.get("statusCode") == 200  # noqa: E731
        batch_ok = lambda answer: not answer.get("batchItemFailures")  # noqa: E731
        measured: dict[str, Measured] = {}
        measured["api"], dispatch = self.measure(
            "api", paths["api"], self.send_event(), http_ok, lambda: self.queue_event("PriorityDispatchQueue")
        )
        # A send to one number (an OTP) is a single send: on the priority dispatch queue.
        self.empty("PriorityDispatchQueue")
        measured["dispatcher"], _ = self.measure("dispatcher", paths["dispatcher"], dispatch, batch_ok)
        # What the dispatcher announced (the message went out; a settle check) is not the typical notifier record.
        self.empty("NotifyQueue")
        measured["webhook"], notify = self.measure(
            "webhook", paths["webhook"], self.dlr_event(), http_ok, lambda: self.queue_event("NotifyQueue")
        )
        self.empty("NotifyQueue")
        measured["notifier"], _ = self.measure("notifier", paths["notifier"], notify, batch_ok)
        self.empty("NotifyQueue")
        measured["scheduled_dispatch"], _ = self.measure(
            "scheduled_dispatch",
            paths["scheduled_dispatch"],
            self.schedule_event(),
            lambda answer: bool(answer.get("released")),
        )
        self.empty("PriorityDispatchQueue")
        # Its rate rule's event; a run that finds nothing to queue (the typical one: callbacks queue their SMS).
        measured["sweeper"], _ = self.measure(
            "sweeper", paths["sweeper"], SCHEDULED_EVENT, lambda answer: answer.get("inbound_queued") == 0
        )
        return {name: measured[name] for name in paths}


PIPELINE = ("api", "dispatcher", "webhook", "notifier", "scheduled_dispatch", "sweeper")
# What an EventBridge rule's Schedule event hands its function.
SCHEDULED_EVENT = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-12-06T05:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/sms-gateway-sweeper"],
    "detail": {},
}


_IMPORTABLE: list[str] = []


def _importable() -> list[str]:
    from bench.bench_cold_start import lambda_importable

    if not _IMPORTABLE:
        _IMPORTABLE.extend(lambda_importable())
    return _IMPORTABLE


def _last_json(completed: Any) -> dict[str, Any]:
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


@contextmanager
def first_invocations(run_script: Callable[..., Any], base_env: dict[str, str]) -> Iterator[FirstInvocations]:
    """The local stack's moto, resources and simulator in this process (its environment set meanwhile), with
    one account whose delivery reports go to a webhook on 127.0.0.1."""
    from bench.moto_gateway import client_webhook
    from sms_gateway_tools.admin import create_account, set_account
    from sms_gateway_tools.localstack.stack import LocalStack

    with ExitStack() as stack:
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cold-stack-"))
        webhook = stack.enter_context(client_webhook())
        # No functions: nothing polls the queues or answers the API; the simulator's own DLR callbacks are
        # held back for an hour (the benchmark builds the DLR event itself).
        local = LocalStack(
            port=0, functions={}, divert_metrics=False, state_dir=Path(state), dlr_delay=3600, log_level="WARNING"
        ).start()
        stack.callback(local.stop)
        account = create_account(
            name="Bench",
            senders=[SENDER],
            credits=1_000_000,
            dlr_url=f"http://127.0.0.1:{webhook.server_address[1]}/dlr",
        )
        set_account(account_id=account["account_id"], rate_limit=10_000)
        env = {key: value for key, value in base_env.items() if not key.startswith(("AWS_", "POWERTOOLS_"))}
        yield FirstInvocations(local, account, run_script, env)
