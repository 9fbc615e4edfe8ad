"""Benchmarks for `make bench`: each bench_<name>.py module has `run(quick: bool) -> dict` (see __main__.py)."""

from __future__ import annotations

import os
import statistics
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Bench code imports the runtime package and the tools the same way the tests do.
for _path in (REPO / "layers" / "core", REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

RESULT_KEYS = {"name": str, "title": str, "command": str, "target": str, "rows": list, "notes": list}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def check_result(result: Any) -> list[str]:
    """What is wrong with a module's result dict (empty when it follows the contract)."""
    if not isinstance(result, dict):
        return [f"result is {type(result).__name__}, not dict"]
    problems = [
        f"{key!r} missing or not {kind.__name__}"
        for key, kind in RESULT_KEYS.items()
        if not isinstance(result.get(key), kind)
    ]
    if "met" not in result or result["met"] not in (True, False, None):
        problems.append("'met' missing or not bool/None")
    rows = result.get("rows")
    if isinstance(rows, list) and not all(isinstance(row, dict) for row in rows):
        problems.append("'rows' must be a list of dicts")
    notes = result.get("notes")
    if isinstance(notes, list) and not all(isinstance(note, str) for note in notes):
        problems.append("'notes' must be a list of strings")
    return problems


def offline_aws_environment() -> dict[str, str]:
    """Fake credentials and a region so boto3 never looks for real ones (nothing here may reach AWS)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "SmsGateway",
        "POWERTOOLS_SERVICE_NAME": "sms-gateway",
    }


@contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class AwsCallMeter:
    """Counts the AWS requests botocore clients make, by service and operation, with botocore's event hooks.

    `before-call` fires once per API operation (botocore's retries happen inside it), so the count is the number
    of requests our code asks for. `moto_cpu_seconds` is the CPU spent inside moto's request handler (timed by
    wrapping moto's BotocoreStubber, see `timing_moto`); botocore's own serialisation stays on our side, as it
    would in Lambda. With `request_latency` (seconds) every request answers that much later than moto does, as
    AWS in the same region would: a wait, not CPU, so the handlers' waits and how they overlap them are measured."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.moto_cpu_seconds = 0.0
        self.request_latency = 0.0
        # The dispatcher makes requests from several threads at once: a Counter's += is not atomic.
        self.lock = threading.Lock()

    def before_call(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            with self.lock:
                self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    def reset(self) -> None:
        self.calls.clear()
        self.moto_cpu_seconds = 0.0

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def by_service(self) -> dict[str, int]:
        services: Counter[str] = Counter()
        for key, count in self.calls.items():
            services[key.split(":", 1)[0]] += count
        return dict(services)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.*.*", self.before_call, unique_id=f"bench-meter-{id(self)}")


@contextmanager
def metering_boto3_clients(meter: AwsCallMeter | None = None) -> Iterator[AwsCallMeter]:
    """Every boto3 client created inside the block is counted (the gateway makes its clients lazily, so call
    `bootstrap.reset()` first), and moto's share of the CPU is timed. `meter` may be a subclass that counts
    more (bench/capacity.py)."""
    import time

    import boto3.session
    from moto.core.botocore_stubber import BotocoreStubber

    meter = meter or AwsCallMeter()
    original_client = boto3.session.Session.client
    original_stub = BotocoreStubber.__call__

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original_client(self, *args, **kwargs)
        meter.attach(made)
        return made

    def stub(self: Any, *args: Any, **kwargs: Any) -> Any:
        # moto runs in the calling thread: that thread's CPU is moto's, even while other threads make requests too
        # (process_time would also count theirs).
        started = time.thread_time()
        try:
            return original_stub(self, *args, **kwargs)
        finally:
            meter.moto_cpu_seconds += time.thread_time() - started
            if meter.request_latency:
                time.sleep(meter.request_latency)

    boto3.session.Session.client = client  # type: ignore[method-assign]
    BotocoreStubber.__call__ = stub  # type: ignore[method-assign]
    try:
        yield meter
    finally:
        boto3.session.Session.client = original_client  # type: ignore[method-assign]
        BotocoreStubber.__call__ = original_stub  # type: ignore[method-assign]
