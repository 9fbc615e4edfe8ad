"""Memory: peak RSS of the api and dispatcher functions handling their largest event, against template.yaml's
MemorySize, with moto in another process."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench import REPO, median, offline_aws_environment
from bench.bench_cold_start import run_script

TARGET_SHARE = 0.60
STACK = "sms-gateway-bench"

# Run once against the moto server: the template's resources and an account, printed as the functions' env.
SEED_SCRIPT = """
import json, os, sys
from sms_gateway_tools.localstack.resources import create_resources
env = create_resources(stack_name=sys.argv[1], simulator_url="http://127.0.0.1:9", api_url="http://127.0.0.1:8",
                       endpoint=os.environ["AWS_ENDPOINT_URL"])
os.environ.update(env)
from sms_gateway_tools.admin import create_account
account = create_account(name="Bench", senders=["48974"], credits=10_000_000)
print(json.dumps({"env": env, "token": account["token"]}))
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
if name == "api":
    assert answer["statusCode"] == 200, answer
else:
    assert answer == {"batchItemFailures": []}, answer
    assert len(submitted) == sum(len(json.loads(r["body"])["message_ids"]) for r in event["Records"]), submitted
print(json.dumps({"start": start, "with_boto3": with_boto3, "imported": imported, "peak": status("VmHWM"),
                  "init_cpu": init_cpu, "handler_cpu": handler_cpu}))
"""


def send_event(token: str, recipients: int) -> dict[str, Any]:
    event = json.loads((REPO / "events" / "api-sendsms-batch.json").read_text().replace("{YOUR_API_Token}", token))
    numbers = [f"23480{3100000 + i:08d}" for i in range(recipients)]
    event["body"] = json.dumps({"from": "48974", "to": numbers, "body": "Bench: hello there"})
    return event


def take_dispatch_event(sqs: Any, queue_url: str) -> dict[str, Any]:
    """Everything on the dispatch queue, as the Lambda event source would hand it over (then deleted)."""
    records: list[dict[str, Any]] = []
    while got := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    ).get("Messages", []):
        records += got
        for record in got:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=record["ReceiptHandle"])
    from sms_gateway_tools.localstack.sqs_poller import lambda_record

    arn = "arn:aws:sqs:us-east-1:123456789012:dispatch.fifo"
    return {"Records": [lambda_record(record, arn) for record in records]}


def _python(script: str, env: dict[str, str], *args: str) -> str:
    """The last line the script prints (the handlers' metrics go to stdout before it)."""
    return run_script(script, list(args), env).stdout.strip().splitlines()[-1]


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


def measure(recipients: int, runs: int) -> tuple[dict[str, list[dict[str, float]]], int, float]:
    """Per function, each run's figures; the number of dispatch records; what the moto server took."""
    import boto3

    from sms_gateway_tools.localstack.moto_server import EmbeddedMoto

    measured: dict[str, list[dict[str, float]]] = {"api": [], "dispatcher": []}
    records = 0
    before_moto = rss_mb()
    moto = EmbeddedMoto()
    endpoint = moto.start()
    try:
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(str(path) for path in (REPO / "layers" / "core", REPO / "tools", REPO)),
            **offline_aws_environment(),
            "AWS_ENDPOINT_URL": endpoint,
        }
        seeded = json.loads(_python(SEED_SCRIPT, base_env, STACK))
        env = {**base_env, **seeded["env"]}
        sqs = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).client("sqs", endpoint_url=endpoint)
        with tempfile.TemporaryDirectory() as scratch:
            event_file = str(Path(scratch) / "event.json")
            for _ in range(runs):
                Path(event_file).write_text(json.dumps(send_event(seeded["token"], recipients)))
                measured["api"].append(json.loads(_python(MEASURE_SCRIPT, env, "api", event_file)))
                event = take_dispatch_event(sqs, env["DISPATCH_QUEUE_URL"])
                records = len(event["Records"])
                Path(event_file).write_text(json.dumps(event))
                measured["dispatcher"].append(json.loads(_python(MEASURE_SCRIPT, env, "dispatcher", event_file)))
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
        "api": f"send to {recipients} recipients (9bits POST /ng/v1/sendsms)",
        "dispatcher": f"{records} records of up to 100 messages",
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
            "Each api run sends to the same recipients as a new batch; the dispatcher then gets exactly the records"
            " that send queued (taken off the queue by the bench, as the event source mapping would), and its"
            " upstream answers at once through httpx.MockTransport (simulator protocol).",
            "init_cpu_s (importing the handler module) and handler_cpu_s (handling the event, the boto3 clients"
            " included) are the function process's CPU time; moto's work is in the other process. On Lambda a"
            " function gets CPU in proportion to its memory (1769 MB = one vCPU), so at MemorySize M that CPU"
            " takes at least cpu_s x 1769 / M seconds.",
            "Quick mode sends to 100 recipients (one dispatch record) and does not judge the target.",
            "MemorySize is chosen from these figures and the cost per million requests: docs/template.md.",
        ],
    }
