"""Benchmark: CPU time of the `api` handler per 9bits send and per recipient (1, 100, 1000 recipients), without
moto's share, and the AWS requests each send makes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench import median
from bench.moto_gateway import captured_logs, moto_gateway, numbers, production_log_level

NAME = "send_path"
SIZES = (1, 100, 1000)


def run(quick: bool) -> dict[str, Any]:
    runs = {1: 5, 100: 3, 1000: 2} if quick else {1: 25, 100: 9, 1000: 5}
    rows: list[dict[str, Any]] = []
    with moto_gateway() as gateway, captured_logs(production_log_level()):
        # The first send pays for imports and client creation (the cold start benchmark's business).
        gateway.send(numbers(1))
        start = 1
        for size in SIZES:
            cpu, wall, calls = [], [], []
            for _ in range(runs[size]):
                gateway.meter.reset()
                _, invocation = gateway.send(numbers(size, start=start))
                start += size
                cpu.append(invocation.cpu_seconds - invocation.moto_cpu_seconds)
                wall.append(invocation.wall_seconds)
                calls.append(Counter(gateway.meter.calls))
                # moto's SQS slows as a queue gets deep: nothing here reads the records.
                gateway.empty_dispatch()
            if any(c != calls[0] for c in calls):
                raise RuntimeError(f"sends of {size} made different requests: {calls}")
            handler_cpu = median(cpu)
            rows.append(
                {
                    "recipients": size,
                    "runs": runs[size],
                    "handler CPU ms/request": round(handler_cpu * 1000, 2),
                    "CPU µs/recipient": round(handler_cpu / size * 1e6, 1),
                    "wall ms/request (moto in-process)": round(median(wall) * 1000, 1),
                    "AWS requests/send": sum(calls[0].values()),
                    "by operation": ", ".join(f"{key} {count}" for key, count in sorted(calls[0].items())),
                }
            )
    return {
        "name": NAME,
        "title": "Send path cost (api handler)",
        "command": f".venv/bin/python -m bench --only {NAME}",
        "target": "figures (no target): CPU per request and per recipient, AWS requests per send",
        "met": None,
        "rows": rows,
        "notes": [
            "The real handler (functions/api/app.py) with a 9bits `POST /ng/v1/sendsms` event, warm (one send"
            " first), on moto in-process; the median of the runs. CPU is time.process_time() around the handler"
            " minus the CPU spent inside moto's request handler (bench.AwsCallMeter.moto_cpu_seconds): our code,"
            " Powertools, pydantic, phonenumbers and botocore's serialisation, as Lambda would run it. This"
            " machine's CPU, not Lambda arm64's.",
            "Requests counted with botocore's before-call hook: the same for every run of a size (checked).",
            "Logging at the template's production level (POWERTOOLS_LOG_LEVEL for Stage=prod), output discarded.",
        ],
    }
