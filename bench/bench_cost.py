"""Benchmark: infrastructure cost per million single-part SMS with delivery reports, at AWS list prices
(bench/prices.json), from the counted requests and billing units and the measured handler durations."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from bench import REPO, median
from bench.bench_requests_per_message import STAGE_FUNCTION, STAGES, Flow, measure
from bench.moto_gateway import ALPHANUMERIC_SENDER, SENDER, TYPICAL_LATENCIES, Invocation

NAME = "cost"
TARGET_USD_PER_MILLION = 5.0
PRICES = Path(__file__).with_name("prices.json")
# Lambda's own lines per invocation (platform start and report; the template's LogFormat: JSON makes them JSON
# records, larger than the text START/END/REPORT lines of about 300 bytes).
PLATFORM_LOG_BYTES_PER_INVOCATION = 500
# CloudWatch Logs counts each event's bytes plus 26 bytes of overhead.
LOG_EVENT_OVERHEAD_BYTES = 26
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1769 MB, less below it. A second of CPU on
# one core takes 1769 / MemorySize seconds at a smaller size, so CPU costs the same GB-s at any size up to 1769 MB
# and waiting costs in proportion to the size.
ONE_VCPU_MB = 1769
# Lambda's fixed sampling for a function with Tracing: Active (the first request each second, then 5%; X-Ray's
# sampling rules do not apply to it); at a million messages' rate, ~5%.
XRAY_SAMPLED = 0.05
# Stages whose function, with Tracing: PassThrough, continues traces its queue's records carry from a sampled
# producer: counted as if each of their invocations were a trace of its own at the same 5% (an upper bound: a
# continued trace is the producer's). A PassThrough function invoked by an upstream's HTTP callback starts none.
CONTINUES_TRACES = frozenset({"dispatch", "notify", "settle"})
# Recipients of the bulk send whose durations are measured (two dispatch records; the counts use 1000).
TIMED_BULK = 200
# Typical values for the HttpApi access log format's variables (one line per HTTP request).
ACCESS_LOG_SAMPLE = {
    "requestId": "JKJaXmPLvHcESHA=",
    "identity.sourceIp": "203.0.113.10",
    "requestTime": "02/Jan/2024:23:50:37 +0000",
    "routeKey": "POST /callbacks/{provider}/dlr",
    "status": "200",
    "responseLength": "120",
    "responseLatency": "45",
    "integrationLatency": "43",
    "integrationErrorMessage": "-",
    "integrationStatus": "200",
    "apiId": "a1b2c3d4e5",
}


def load_prices() -> dict[str, float]:
    return {name: float(entry["usd"]) for name, entry in json.loads(PRICES.read_text())["prices"].items()}


def template_facts() -> dict[str, Any]:
    """What the bill depends on in template.yaml, read at run time: memory sizes and the access log line."""
    from sms_gateway_tools import template as tpl

    template = tpl.load_template(REPO / "template.yaml")
    memory = {fn.code_uri.strip("/").split("/")[-1]: fn.memory_size for fn in tpl.function_definitions(template)}
    tracing = {
        str(props["CodeUri"]).strip("/").split("/")[-1]: props.get("Tracing")
        or template["Globals"]["Function"]["Tracing"]
        for _, props in tpl.resources_of_type(template, "AWS::Serverless::Function")
    }
    access_format = template["Resources"]["HttpApi"]["Properties"]["AccessLogSettings"]["Format"]
    access_line = re.sub(
        r"\$context\.([A-Za-z.]+)", lambda m: ACCESS_LOG_SAMPLE.get(m.group(1), "x" * 8), access_format
    )
    return {"memory_mb": memory, "tracing": tracing, "access_log_bytes": len(access_line.encode()) + 1}


def traced_share(stage: str, facts: dict[str, Any]) -> float:
    """The share of a stage's invocations recorded as X-Ray traces, from its function's Tracing mode."""
    mode = facts["tracing"][STAGE_FUNCTION[stage]]
    if mode == "Active" or (mode == "PassThrough" and stage in CONTINUES_TRACES):
        return XRAY_SAMPLED
    return 0.0


def billed_seconds(flow: Flow, stage: str, memory_mb: int) -> float:
    """A stage's billed Lambda time per message at `memory_mb`: for each invocation, our code's CPU time (the
    handler's CPU minus the CPU moto spent standing in for AWS; CPU, not wall time, so other processes on this
    machine do not inflate it) stretched by the share of a vCPU Lambda gives that size, plus the time the handler
    spent waiting (its wall time less the process's CPU: AWS, the upstream and the client's webhook answering
    after TYPICAL_LATENCIES, as much of it overlapped as the code overlaps it), rounded up to Lambda's 1 ms."""
    stretch = max(1.0, ONE_VCPU_MB / memory_mb)
    billed = [
        math.ceil((max(0.0, i.cpu_seconds - i.moto_cpu_seconds) * stretch + waiting_seconds(i)) * 1000) / 1000
        for i in flow.stages[stage].invocations
    ]
    return sum(billed) / flow.messages


def waiting_seconds(invocation: Invocation) -> float:
    """Wall time the handler did not spend on this process's CPU (moto's included, which stands in for AWS and
    answers after the latency besides): what it waited for."""
    return max(0.0, invocation.wall_seconds - invocation.cpu_seconds)


def cost_per_million(units: Flow, timed: Flow, prices: dict[str, float], facts: dict[str, Any]) -> dict[str, float]:
    """$ per million messages by service. `units` counted requests and billing units; `timed` (without the
    capacity probes) measured durations."""
    million = 1_000_000 / units.messages
    invocations = {stage: len(units.stages[stage].invocations) for stage in STAGES}
    total_units: Counter[str] = Counter()
    for stage in STAGES:
        total_units.update(units.stages[stage].units)
    # Per message, from the timed flow (its own size), scaled to the counted flow's messages.
    memory = {stage: facts["memory_mb"][STAGE_FUNCTION[stage]] for stage in STAGES}
    gb_seconds = units.messages * sum(
        billed_seconds(timed, stage, memory[stage]) * memory[stage] / 1024 for stage in STAGES
    )
    http_requests = sum(units.stages[stage].http_requests for stage in STAGES)
    wru = sum(count for key, count in total_units.items() if key.startswith("dynamodb:WRU"))
    log_bytes = sum(
        units.stages[s].log_bytes + units.stages[s].log_lines * LOG_EVENT_OVERHEAD_BYTES for s in STAGES
    ) + sum(invocations.values()) * (PLATFORM_LOG_BYTES_PER_INVOCATION + LOG_EVENT_OVERHEAD_BYTES)
    log_bytes += http_requests * (facts["access_log_bytes"] + LOG_EVENT_OVERHEAD_BYTES)
    return {
        "Lambda requests": sum(invocations.values()) * prices["lambda_request"] * million,
        "Lambda duration (arm64 GB-s)": gb_seconds * prices["lambda_arm64_gb_second"] * million,
        "HTTP API": http_requests * prices["http_api_request"] * million,
        "SQS FIFO (dispatch)": total_units["sqs:fifo"] * prices["sqs_fifo_request"] * million,
        "SQS standard (notify)": total_units["sqs:standard"] * prices["sqs_standard_request"] * million,
        "DynamoDB writes (WRU, incl. indexes)": wru * prices["dynamodb_write_request_unit"] * million,
        "DynamoDB reads (RRU)": total_units["dynamodb:RRU"] * prices["dynamodb_read_request_unit"] * million,
        "EventBridge Scheduler": 0.0,
        "CloudWatch Logs ingestion": log_bytes / 1024**3 * prices["cloudwatch_logs_ingestion_gb"] * million,
        "X-Ray traces": sum(invocations[stage] * traced_share(stage, facts) for stage in STAGES)
        * prices["xray_trace_recorded"]
        * million,
        "SSM GetParameter (standard)": 0.0,
        "KMS requests (webhook credentials)": total_units["kms:request"] * prices["kms_request"] * million,
    }


def run(quick: bool) -> dict[str, Any]:
    prices = load_prices()
    facts = template_facts()
    # From the shortcode and from an alphanumeric sender ID: the two cost different DynamoDB writes.
    counted = measure(quick, capacity=True, alphanumeric=True, any_order=True)
    # Durations per message do not depend on the bulk send's size past a few records: a smaller one saves time.
    timed = measure(
        quick,
        capacity=False,
        bulk=None if quick else TIMED_BULK,
        warm=True,
        alphanumeric=True,
        any_order=True,
        latencies=TYPICAL_LATENCIES,
        bulk_runs=1 if quick else 3,
    )
    scenarios: dict[str, dict[str, float]] = {}
    for scenario, runs in counted.items():
        # Each run's counts with the same run's durations (the bulk flow's one count with each of its timed runs);
        # the median of the runs, service by service; the total is the sum of those medians.
        counts = runs * len(timed[scenario]) if len(runs) == 1 else runs
        pairs = zip(counts, timed[scenario], strict=True)
        each = [cost_per_million(units, time, prices, facts) for units, time in pairs]
        scenarios[scenario] = {service: median([cost[service] for cost in each]) for service in each[0]}
    rows = [
        {
            "service": service,
            **{
                f"$/M {scenario} ({counted[scenario][0].recipients} rcpt)": round(cost[service], 3)
                for scenario, cost in scenarios.items()
            },
        }
        for service, cost in zip(next(iter(scenarios.values())), next(iter(scenarios.values())).values(), strict=True)
    ]
    totals = {scenario: sum(cost.values()) for scenario, cost in scenarios.items()}
    rows.append(
        {
            "service": "total",
            **{
                f"$/M {scenario} ({counted[scenario][0].recipients} rcpt)": round(totals[scenario], 3)
                for scenario in scenarios
            },
        }
    )
    memory = {stage: facts["memory_mb"][STAGE_FUNCTION[stage]] for stage in STAGES}
    durations = {
        scenario: {
            stage: round(median([billed_seconds(flow, stage, memory[stage]) for flow in runs]) * 1000, 2)
            for stage in STAGES
        }
        for scenario, runs in timed.items()
    }
    waits = {
        scenario: {
            stage: round(
                median([sum(map(waiting_seconds, flow.stages[stage].invocations)) / flow.messages for flow in runs])
                * 1000,
                2,
            )
            for stage in STAGES
        }
        for scenario, runs in timed.items()
    }
    per_message = {
        scenario: {
            "invocations": round(sum(len(flow.stages[s].invocations) for s in STAGES) / flow.messages, 3),
            "WRU": round(
                sum(v for s in STAGES for k, v in flow.stages[s].units.items() if k.startswith("dynamodb:WRU"))
                / flow.messages,
                2,
            ),
            "RRU": round(sum(flow.stages[s].units["dynamodb:RRU"] for s in STAGES) / flow.messages, 2),
            "log bytes": round(sum(flow.stages[s].log_bytes for s in STAGES) / flow.messages),
        }
        for scenario, runs in counted.items()
        for flow in runs[:1]
    }
    verdicts = {
        f"{scenario} ({counted[scenario][0].recipients} rcpt)": (
            f"${total:.2f}/M: {'met' if total < TARGET_USD_PER_MILLION else 'NOT met'}"
        )
        for scenario, total in totals.items()
    }
    return {
        "name": NAME,
        "title": "Infrastructure cost per million SMS with delivery reports",
        "command": f".venv/bin/python -m bench --only {NAME}",
        "target": f"under ${TARGET_USD_PER_MILLION:.0f} per million single-part SMS with delivery reports",
        "met": all(total < TARGET_USD_PER_MILLION for total in totals.values()),
        "met_by_scenario": {scenario: total < TARGET_USD_PER_MILLION for scenario, total in totals.items()},
        "rows": rows,
        "notes": [
            f"Target (under ${TARGET_USD_PER_MILLION:.0f}/M) per scenario: "
            + "; ".join(f"{scenario} {verdict}" for scenario, verdict in verdicts.items())
            + ". The overall verdict above is met only if every scenario is.",
            f"Senders: `single` and `bulk` send from the shortcode {SENDER} (a reply is possible, so each message"
            " also writes a conversation-index entry); the `alphanumeric` scenarios send the same flows from the"
            f" sender ID {ALPHANUMERIC_SENDER} (no reply possible: no index entry, one WRU less per message,"
            " docs/data-model.md). Requests are the same for both. `single any order`: the `single` flow for an"
            " account set with single_sends_in_order: false (an option, off by default: each single send a dispatch"
            " lane of its own, so a dispatcher invocation's single sends go out together instead of one after the"
            " other; docs/dispatch.md).",
            "HTTP API: client sends only (one request per send). Upstream delivery reports reach the webhook"
            " function through its function URL (template.yaml FunctionUrlConfig), which has no per-request charge:"
            " they cost Lambda requests and duration, like any invocation.",
            "Prices: bench/prices.json (us-east-1 list prices, from memory of the public pages: check them before"
            " relying on the figures). Carrier fees, about $8,000 per million, are not included.",
            f"Per message: {json.dumps(per_message)}. Requests, DynamoDB units (from item sizes: bench/capacity.py)"
            " and SQS chunks counted as in requests_per_message; the flows drain full batches (the template's"
            " BatchSize), as under load.",
            f"Billed Lambda ms per message by stage: {json.dumps(durations)}, of which waiting: {json.dumps(waits)}."
            " Each invocation: the handler's CPU time on this machine (not Lambda arm64's) minus moto's, stretched"
            " by the vCPU share of the function's"
            f" MemorySize (x {ONE_VCPU_MB}/MemorySize below {ONE_VCPU_MB} MB: Lambda's CPU is proportional to memory),"
            " plus its waiting (wall time less the process's CPU) while AWS answered each request after"
            f" {TYPICAL_LATENCIES.aws_request * 1000:.0f} ms, the upstream each submit after"
            f" {TYPICAL_LATENCIES.upstream_submit * 1000:.0f} ms and the client's webhook each post after"
            f" {TYPICAL_LATENCIES.client_webhook * 1000:.0f} ms (as much of it overlapped as the code overlaps it),"
            " rounded up to 1 ms; times MemorySize read from template.yaml at run time"
            f" ({json.dumps(facts['memory_mb'])} MB). Durations come from a second run of the flows without the"
            " capacity probes, after one message through every stage (warm containers; its bulk send:"
            f" {TIMED_BULK} recipients in full mode). Waiting on this shared machine also holds any time the"
            " process waited for a core: an overestimate, never an underestimate. The client's webhook (a"
            " keep-alive HTTP/1.1 server) runs in a process of its own (bench/helpers.py), so its CPU is not the"
            " notifier's (until 2026-12-04 it ran on a thread of the measured process, and closed each connection);"
            " the upstream answers through httpx.MockTransport in the dispatcher's process (a few µs a submit).",
            "CloudWatch Logs: the handlers' output captured at the template's production log level (Powertools JSON"
            f" lines and EMF metric lines), plus {PLATFORM_LOG_BYTES_PER_INVOCATION} bytes per invocation for"
            " Lambda's own platform records (estimated: LogFormat JSON, system log level INFO: START and REPORT),"
            f" the HttpApi access log line ({facts['access_log_bytes']} bytes, its template format with typical"
            f" values) per HttpApi request (a function URL writes none), and {LOG_EVENT_OVERHEAD_BYTES} bytes per"
            " event.",
            "X-Ray is not in the issue's list but the template traces: Tracing per function"
            f" {json.dumps(facts['tracing'])}. An Active function is sampled at Lambda's fixed rate"
            f" (~{XRAY_SAMPLED:.0%} at this volume); the PassThrough queue consumers (dispatch, notify) are"
            " counted at the same share as an upper bound (they only continue traces their records carry); the"
            " PassThrough webhook, called by upstreams, starts none. Scheduler is 0 for unscheduled sends (one"
            " invocation per scheduled batch otherwise). Not counted: Lambda INIT time of cold starts (billed since"
            " August 2025, but once per container, not per message), idle SQS"
            " long polling (fixed, ~$0.3/month per queue), storage (DynamoDB GB-month, PITR, logs retention),"
            " data transfer.",
        ],
    }
