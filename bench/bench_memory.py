"""Memory: peak RSS of each function handling its largest event, against template.yaml's MemorySize, with moto in
another process."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import REPO, median, offline_aws_environment
from bench.bench_cold_start import run_script
from bench.first_invocation import SCHEDULED_EVENT
from sms_gateway.logic.sweep import SWEEP_LIMIT

TARGET_SHARE = 0.60
STACK = "sms-gateway-bench"
# The order a run measures them in: each one's event comes from what the ones before it did.
FUNCTIONS = ("api", "dispatcher", "webhook", "notifier", "scheduled_dispatch", "sweeper")

# Run once against the moto server: the template's resources and an account, printed as the functions' env.
SEED_SCRIPT = """
import json, os, sys
from sms_gateway_tools.localstack.resources import create_resources
env = create_resources(stack_name=sys.argv[1], simulator_url="http://127.0.0.1:9", api_url="http://127.0.0.1:8",
                       simulator_secret=sys.argv[2], endpoint=os.environ["AWS_ENDPOINT_URL"])
os.environ.update(env)
from sms_gateway_tools.admin import create_account
account = create_account(name="Bench", senders=["48974"], credits=100_000_000, dlr_url=sys.argv[3])
print(json.dumps({"env": env, "token": account["token"], "account_id": account["account_id"]}))
"""

# Run against the moto server: `count` inbound SMS stored with their notification not queued and due (what an outage
# of the notify queue leaves the sweeper), so that one sweep has the most a run takes.
SWEEP_SEED_SCRIPT = """
import sys
from datetime import timedelta
from sms_gateway.bootstrap import gateway
from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import StoredInbound, utc_now
account_id, count = sys.argv[1], int(sys.argv[2])
store, now = gateway().store, utc_now()
for i in range(count):
    inbound_id = new_id()
    sms = StoredInbound(inbound_id=inbound_id, account_id=account_id, upstream="simulator",
                        upstream_message_id=f"bench-mo-{inbound_id}", msisdn=f"+23480{3100000 + i:08d}", to="48974",
                        text="Bench: a reply", session_id=str(inbound_id), received_at=now.isoformat())
    assert store.save_inbound(sms, notify_due=now - timedelta(minutes=1))
print(count)
"""

# A fresh process that is only the function: python, boto3, the handler module and what it does with the event
# (AWS calls go to the moto server in the bench process, AWS_ENDPOINT_URL).
MEASURE_SCRIPT = """
import json, sys, time
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
start = status("VmRSS")
import boto3
with_boto3 = status("VmRSS")
name, event = sys.argv[1], json.load(open(sys.argv[2]))
init_started = time.process_time()
import importlib.util
spec = importlib.util.spec_from_file_location("app", f"functions/{name}/app.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
imported = status("VmRSS")
init_cpu = time.process_time() - init_started
if name == "dispatcher":
    import httpx
    from sms_gateway.adapters.providers import simulator
    submitted = []
    def upstream(request):
        submitted.append(1)
        return httpx.Response(200, json={"message_id": f"sim-{len(submitted)}", "status": "accepted"})
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    original = simulator.SimulatorProvider.__init__
    simulator.SimulatorProvider.__init__ = lambda self, **kw: original(self, **{**kw, "client": client})
class Context:
    function_name, function_version, memory_limit_in_mb, aws_request_id = "bench", "$LATEST", 1024, "bench-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    log_group_name, log_stream_name = "/aws/lambda/bench", "bench"
    def get_remaining_time_in_millis(self):
        return 60_000
handler_started = time.process_time()
answer = module.handler(event, Context())
handler_cpu = time.process_time() - handler_started
if name in ("api", "webhook"):
    assert answer["statusCode"] == 200, answer
elif name == "scheduled_dispatch":
    assert answer == {"released": True}, answer
elif name == "sweeper":
    assert answer["inbound_queued"] == int(sys.argv[3]), answer
else:
    assert answer == {"batchItemFailures": []}, answer
if name == "dispatcher":
    assert len(submitted) == sum(len(json.loads(r["body"])["message_ids"]) for r in event["Records"]), submitted
print(json.dumps({"start": start, "with_boto3": with_boto3, "imported": imported, "peak": status("VmHWM"),
                  "init_cpu": init_cpu, "handler_cpu": handler_cpu}))
"""


def send_event(token: str, recipients: int, send_at: datetime | None = None) -> dict[str, Any]:
    """A 9bits bulk send with delivery reports (each status change is a client callback), now or scheduled."""
    event = json.loads((REPO / "events" / "api-sendsms-batch.json").read_text().replace("{YOUR_API_Token}", token))
    numbers = [f"23480{3100000 + i:08d}" for i in range(recipients)]
    body: dict[str, Any] = {"from": "48974", "to": numbers, "body": "Bench: hello there", "delivery_report": "yes"}
    if send_at is not None:
        body["send_at"] = send_at.isoformat()
    event["body"] = json.dumps(body)
    return event


def take_queue_event(sqs: Any, queue_url: str, arn: str, limit: int | None = None) -> dict[str, Any]:
    """What a queue holds (at most `limit` records), as the Lambda event source would hand it over (then
    deleted); the rest is left."""
    records: list[dict[str, Any]] = []
    while limit is None or len(records) < limit:
        wanted = 10 if limit is None else min(10, limit - len(records))
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=wanted, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            break
        records += got
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": record["ReceiptHandle"]} for i, record in enumerate(got)],
        )
    from sms_gateway_tools.localstack.sqs_poller import lambda_record

    return {"Records": [lambda_record(record, arn) for record in records]}


def dlr_event(dispatch: dict[str, Any]) -> dict[str, Any]:
    """The simulator's signed DLR for the first message the dispatcher submitted, as the HTTP API hands it over
    (one report per request, as every upstream sends them: the webhook's events are all about this size)."""
    from bench.moto_gateway import SIMULATOR_SECRET, simulator_dlr_event

    command = json.loads(dispatch["Records"][0]["body"])
    client_ref = f"{command['account_id']}.{command['reference_id']}.{command['message_ids'][0]}"
    return simulator_dlr_event(SIMULATOR_SECRET, message_id="sim-1", client_ref=client_ref, to="2348031000000")


def _python(script: str, env: dict[str, str], *args: str) -> str:
    """The last line the script prints (the handlers' metrics go to stdout before it)."""
    return run_script(script, list(args), env).stdout.strip().splitlines()[-1]


def notifier_batch_size() -> int:
    """The notifier's event source BatchSize in template.yaml: the most records its event holds."""
    from sms_gateway_tools import template as tpl

    [notifier] = [
        fn for fn in tpl.function_definitions(tpl.load_template()) if fn.code_uri.strip("/").endswith("notifier")
    ]
    return max(int(source.batch_size) for source in notifier.sqs_events)


def memory_sizes() -> dict[str, int]:
    from sms_gateway_tools import template as tpl

    return {
        fn.code_uri.strip("/").rsplit("/", 1)[-1]: fn.memory_size
        for fn in tpl.function_definitions(tpl.load_template())
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(recipients: int, runs: int) -> tuple[dict[str, list[dict[str, float]]], dict[str, int], float]:
    """Per function, each run's figures; how many records the queue-fed functions got; what the moto server took."""
    import boto3

    from bench.moto_gateway import SIMULATOR_SECRET, client_webhook, take_schedule_input
    from sms_gateway_tools.localstack.moto_server import EmbeddedMoto

    measured: dict[str, list[dict[str, float]]] = {name: [] for name in FUNCTIONS}
    records: dict[str, int] = {}
    before_moto = rss_mb()
    moto = EmbeddedMoto()
    endpoint = moto.start()
    try:
        with client_webhook() as webhook, tempfile.TemporaryDirectory() as scratch:
            base_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PYTHONPATH": os.pathsep.join(str(path) for path in (REPO / "layers" / "core", REPO / "tools", REPO)),
                **offline_aws_environment(),
                "AWS_ENDPOINT_URL": endpoint,
            }
            dlr_url = f"http://127.0.0.1:{webhook.server_address[1]}/dlr"
            seeded = json.loads(_python(SEED_SCRIPT, base_env, STACK, SIMULATOR_SECRET, dlr_url))
            env = {**base_env, **seeded["env"]}
            session = boto3.session.Session(
                aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
            )
            sqs = session.client("sqs", endpoint_url=endpoint)
            scheduler = session.client("scheduler", endpoint_url=endpoint)
            # A send to one number is a single send, queued on the priority dispatch queue (template.yaml).
            dispatch_url = env["PRIORITY_DISPATCH_QUEUE_URL" if recipients == 1 else "DISPATCH_QUEUE_URL"]
            dispatch_queue = (dispatch_url, f"arn:aws:sqs:us-east-1:123456789012:{dispatch_url.rsplit('/', 1)[-1]}")
            notify_queue = (env["NOTIFY_QUEUE_URL"], "arn:aws:sqs:us-east-1:123456789012:notify")
            event_file = str(Path(scratch) / "event.json")

            def run_function(name: str, event: dict[str, Any], *expected: str) -> dict[str, float]:
                Path(event_file).write_text(json.dumps(event))
                return dict(json.loads(_python(MEASURE_SCRIPT, env, name, event_file, *expected)))

            for _ in range(runs):
                measured["api"].append(run_function("api", send_event(seeded["token"], recipients)))
                dispatch = take_queue_event(sqs, *dispatch_queue)
                records["dispatcher"] = len(dispatch["Records"])
                measured["dispatcher"].append(run_function("dispatcher", dispatch))
                # The dispatcher announced a `submitted` callback per message: the notifier's queue is full.
                measured["webhook"].append(run_function("webhook", dlr_event(dispatch)))
                notify = take_queue_event(sqs, *notify_queue, limit=notifier_batch_size())
                records["notifier"] = len(notify["Records"])
                measured["notifier"].append(run_function("notifier", notify))
                take_queue_event(sqs, *notify_queue)
                # A batch of the same size scheduled an hour ahead (the api's run here is not measured), released by
                # the input its one-time schedule carries.
                later = datetime.now(UTC) + timedelta(hours=1)
                run_function("api", send_event(seeded["token"], recipients, send_at=later))
                release = take_schedule_input(scheduler, env["SCHEDULE_GROUP_NAME"])
                measured["scheduled_dispatch"].append(run_function("scheduled_dispatch", release))
                take_queue_event(sqs, *dispatch_queue)
                # A sweep that finds one page (SWEEP_LIMIT SMS a notify-queue outage left unqueued): a run holds one
                # page at a time, however many pages it queues.
                _python(SWEEP_SEED_SCRIPT, env, seeded["account_id"], str(SWEEP_LIMIT))
                measured["sweeper"].append(run_function("sweeper", SCHEDULED_EVENT, str(SWEEP_LIMIT)))
                take_queue_event(sqs, *notify_queue)
        moto_mb = rss_mb() - before_moto
    finally:
        moto.stop()
    return measured, records, moto_mb


def run(quick: bool) -> dict[str, Any]:
    recipients = 100 if quick else 1000
    runs = 1 if quick else 3
    sizes = memory_sizes()
    measured, records, moto_mb = measure(recipients, runs)
    events = {
        "api": f"send to {recipients} recipients with delivery reports (9bits POST /ng/v1/sendsms)",
        "dispatcher": f"{records['dispatcher']} records of up to 100 messages",
        "webhook": "a signed simulator DLR (upstreams send one report per request)",
        "notifier": f"{records['notifier']} client callbacks (its BatchSize) to a webhook on 127.0.0.1",
        "scheduled_dispatch": f"release of a scheduled batch of {recipients} recipients",
        "sweeper": f"a run queueing {SWEEP_LIMIT} inbound notifications a notify-queue outage left (SWEEP_LIMIT)",
    }
    rows: list[dict[str, Any]] = []
    for function, event_name in events.items():
        runs_of = measured[function]
        peak = median([m["peak"] for m in runs_of])
        rows.append(
            {
                "function": function,
                "event": event_name,
                "python_mb": round(median([m["start"] for m in runs_of]), 1),
                "python_boto3_mb": round(median([m["with_boto3"] for m in runs_of]), 1),
                "after_import_mb": round(median([m["imported"] for m in runs_of]), 1),
                "peak_mb": round(peak, 1),
                "function_share_mb": round(median([m["peak"] - m["with_boto3"] for m in runs_of]), 1),
                "init_cpu_s": round(median([m["init_cpu"] for m in runs_of]), 2),
                "handler_cpu_s": round(median([m["handler_cpu"] for m in runs_of]), 2),
                "memory_size_mb": sizes[function],
                "used": f"{peak / sizes[function]:.0%}",
                "met": peak <= TARGET_SHARE * sizes[function],
            }
        )
    return {
        "name": "memory",
        "title": "Memory: peak RSS on the largest event against MemorySize",
        "command": ".venv/bin/python -m bench --only memory",
        "target": f"peak RSS under {TARGET_SHARE:.0%} of the function's MemorySize (template.yaml)",
        "met": None if quick else all(row["met"] for row in rows),
        "rows": rows,
        "moto_server_mb": round(moto_mb, 1),
        "notes": [
            f"Median of {runs} fresh processes per function. moto runs as a server in the bench process (it grew"
            f" {moto_mb:.0f} MB there), so a measured process holds only what a Lambda sandbox would: the"
            " interpreter, boto3, the handler module and its work; its AWS calls go to moto on 127.0.0.1"
            " (AWS_ENDPOINT_URL). A seed process creates template.yaml's resources and an account first.",
            "peak_mb is the process's VmHWM after handling the event: the figure judged against MemorySize."
            " function_share_mb = peak - python_boto3_mb is what the gateway adds to an interpreter that has"
            " imported boto3, as the Lambda runtime's has (its own client, awslambdaric, a few MB, is not counted).",
            "Each api run sends to the same recipients as a new batch, with delivery reports; the dispatcher then gets"
            " exactly the records that send queued (taken off the queue by the bench, as the event source mapping"
            " would), and its upstream answers at once through httpx.MockTransport (simulator protocol). The"
            " webhook gets the simulator's signed DLR for the first of those messages; the notifier gets"
            f" {records['notifier']} (its BatchSize) of the callbacks the dispatcher queued (one per message) and"
            " posts them to a client webhook in a process of its own; scheduled_dispatch gets the input of the"
            " one-time schedule of a batch of the same size sent for an hour later (that api run is not measured),"
            " and queues its records; the sweeper gets its rate rule's event with as many inbound SMS due as a run"
            " takes (stored with their notification not queued, as an outage of the notify queue leaves them).",
            "init_cpu_s (importing the handler module) and handler_cpu_s (handling the event, the boto3 clients"
            " included) are the function process's CPU time; moto's work is in the other process. On Lambda a"
            " function gets CPU in proportion to its memory (1769 MB = one vCPU), so at MemorySize M that CPU"
            " takes at least cpu_s x 1769 / M seconds.",
            "Quick mode sends to 100 recipients (one dispatch record) and does not judge the target.",
            "MemorySize is chosen from these figures and the cost per million requests: docs/template.md.",
        ],
    }
