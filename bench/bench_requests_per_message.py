"""Benchmark: AWS requests per message end to end (accept, dispatch, DLR, client notification) against a floor
derived from what must be written per message and the batch sizes (docs/benchmarks-floor.md)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import median
from bench.moto_gateway import (
    ALPHANUMERIC_SENDER,
    NO_LATENCIES,
    SENDER,
    Invocation,
    Latencies,
    LogVolume,
    MotoGateway,
    StageRun,
    captured_logs,
    moto_gateway,
    numbers,
    production_log_level,
)

NAME = "requests_per_message"
STAGES = ("accept", "dispatch", "dlr", "notify", "settle")
TARGET_RATIO = 1.1
# The function each stage runs in (its MemorySize and batch size come from template.yaml). `settle` is the settle
# checks' later passes through the notifier, after the DLR wait (their first pass shares the notify stage's batches).
STAGE_FUNCTION = {
    "accept": "api",
    "dispatch": "dispatcher",
    "dlr": "webhook",
    "notify": "notifier",
    "settle": "notifier",
}
# Each message a client asked delivery reports for reaches its webhook twice: the dispatcher's `submitted`
# and the upstream's final status (docs/webhooks.md).
NOTIFICATIONS_PER_MESSAGE = 2
BATCH_WRITE_SIZE = 25
SEND_BATCH_SIZE = 10
# Lambda's event source mapping, per batch it hands to the function: one ReceiveMessage, one DeleteMessageBatch.
POLLING_REQUESTS = ("sqs:ReceiveMessage[lambda]", "sqs:DeleteMessageBatch[lambda]")


@dataclass
class Stage:
    calls: Counter[str] = field(default_factory=Counter)
    units: Counter[str] = field(default_factory=Counter)
    invocations: list[Invocation] = field(default_factory=list)
    # Requests through the HttpApi (client sends, accept) and through the webhook function's URL (upstream
    # callbacks, dlr: no per-request charge, template.yaml's FunctionUrlConfig).
    http_requests: int = 0
    function_url_requests: int = 0
    log_bytes: int = 0
    log_lines: int = 0


@dataclass
class Flow:
    scenario: str
    sends: int
    recipients: int
    stages: dict[str, Stage]
    batch_sizes: dict[str, int]

    @property
    def messages(self) -> int:
        return self.sends * self.recipients

    def per_message(self, stage: str) -> float:
        return sum(self.stages[stage].calls.values()) / self.messages

    @property
    def total_per_message(self) -> float:
        return sum(self.per_message(stage) for stage in STAGES)


class _Recorder:
    """Adds what the meter and the log capture saw during a block to one stage (stages may interleave)."""

    def __init__(self, gateway: MotoGateway, logs: LogVolume, stages: dict[str, Stage]) -> None:
        self.gateway, self.logs, self.stages = gateway, logs, stages

    def run(self, name: str, action: Any) -> None:
        meter = self.gateway.meter
        calls, units = Counter(meter.calls), Counter(getattr(meter, "units", Counter()))
        log_bytes, log_lines = self.logs.bytes, self.logs.lines
        run = StageRun()
        action(run)
        stage = self.stages[name]
        stage.calls.update(Counter(meter.calls) - calls)
        stage.units.update(Counter(getattr(meter, "units", Counter())) - units)
        for key, count in run.polling_requests.items():
            stage.calls[f"{key}[lambda]"] += count
        stage.units.update(run.polling_units)
        stage.invocations.extend(run.invocations)
        stage.log_bytes += self.logs.bytes - log_bytes
        stage.log_lines += self.logs.lines - log_lines


def run_flow(
    scenario: str,
    sends: int,
    recipients: int,
    *,
    capacity: bool,
    warm: bool = False,
    sender: str = SENDER,
    latencies: Latencies = NO_LATENCIES,
    single_sends_in_order: bool = True,
) -> Flow:
    """`sends` sends of `recipients` recipients each with delivery reports, through every stage to the client's
    webhook. Queues are drained in the template's batch sizes; notifications are drained as they pile up so
    moto's queues stay shallow. With `warm`, one message goes through every stage first, uncounted, so that
    timed invocations are warm containers' (counted flows start cold: per-container reads are real requests)."""
    stages = {name: Stage() for name in STAGES}
    with (
        moto_gateway(capacity=capacity, latencies=latencies, single_sends_in_order=single_sends_in_order) as gateway,
        captured_logs(production_log_level()) as logs,
    ):
        record = _Recorder(gateway, logs, stages).run
        warm_up = 1 if warm else 0
        if warm:
            scratch = StageRun()
            gateway.send(numbers(1, start=9_999_999), delivery_report="yes")
            gateway.drain_dispatch(scratch)
            gateway.post_dlrs(scratch)
            gateway.drain("NOTIFY", "notifier", scratch)

        def accept(run: StageRun) -> None:
            for i in range(sends):
                _, invocation = gateway.send(
                    numbers(recipients, start=i * recipients), sender=sender, delivery_report="yes"
                )
                run.invocations.append(invocation)
                stages["accept"].http_requests += 1

        record("accept", accept)
        record("dispatch", gateway.drain_dispatch)
        record("notify", lambda run: gateway.drain("NOTIFY", "notifier", run))
        step = 100
        while gateway.dlr_cursor < len(gateway.upstream.submits):

            def dlrs(run: StageRun) -> None:
                before = gateway.dlr_cursor
                gateway.post_dlrs(run, limit=step)
                stages["dlr"].function_url_requests += gateway.dlr_cursor - before

            record("dlr", dlrs)
            record("notify", lambda run: gateway.drain("NOTIFY", "notifier", run))
        record("settle", gateway.settle_after_the_wait)
        if gateway.settle_checks_waiting:
            raise RuntimeError(f"{len(gateway.settle_checks_waiting)} settle checks never came due")
        posts = gateway.webhook.posts  # type: ignore[attr-defined]
        expected = (sends * recipients + warm_up) * NOTIFICATIONS_PER_MESSAGE
        if posts != expected:
            raise RuntimeError(f"the client's webhook got {posts} delivery reports, not {expected}")
        return Flow(scenario, sends, recipients, stages, dict(gateway.batch_sizes))


def floor(recipients: int, batch_sizes: dict[str, int]) -> dict[str, float]:
    """The fewest AWS requests per message, by stage, for sends of `recipients` recipients with delivery reports
    (the derivation, line by line: docs/benchmarks-floor.md)."""
    from sms_gateway.domain.models import RELEASE_SWEEP_MIN_RECIPIENTS
    from sms_gateway.logic.send import DISPATCH_CHUNK
    from sms_gateway.logic.settle import MAX_HOP_SECONDS
    from sms_gateway.settings import Settings

    records = math.ceil(recipients / DISPATCH_CHUNK)
    per_record = min(recipients, DISPATCH_CHUNK)
    dispatch_batch = batch_sizes["DispatcherFunction"]
    notify_batch = batch_sizes["NotifierFunction"]
    # One settle check per dispatcher invocation, which under load gets full batches: dispatch_batch records (of
    # other sends too, for sends of fewer records), per_record messages each.
    checked_together = dispatch_batch * per_record
    hops = math.ceil(Settings.from_environ({}).dlr_wait_seconds / MAX_HOP_SECONDS)
    # credential read, account read, the batch put and credit reservation in one transaction, message writes,
    # enqueue; and for a send of 100 recipients or more, the write that takes it out of the sweep index once queued
    # (a send killed before queueing is released by the sweeper: docs/decisions.md, A100)
    swept = 1 if recipients >= RELEASE_SWEEP_MIN_RECIPIENTS else 0
    accept = 3 + math.ceil(recipients / BATCH_WRITE_SIZE) + math.ceil(records / SEND_BATCH_SIZE) + swept
    # per record: Lambda's receive and delete (shared by a batch of records), the messages' read (one for all of an
    # invocation's single sends), the rate-limit grant (each write takes the invocation's tokens up to its in-flight
    # limit ahead, so its records of fewer messages share one: docs/rate-limits.md); per message: the claim and the
    # submitted transition
    take_ahead = Settings.from_environ({}).dispatch_concurrency
    grants = math.ceil(dispatch_batch * per_record / max(per_record, take_ahead)) / dispatch_batch
    # an invocation's single sends are read together (logic/dispatch.ReadAhead), bulk records each on their own
    reads = 1 / dispatch_batch if per_record == 1 else 1
    dispatch_per_record = 2 / dispatch_batch + reads + grants
    # per invocation: the `submitted` notifications of its messages and its settle check, ten to a request
    announced = math.ceil((checked_together + 1) / SEND_BATCH_SIZE) / checked_together
    dispatch = records * dispatch_per_record / recipients + 2 + announced
    # per callback (one message): the status transition and its notification
    dlr = 2.0
    # per notification: Lambda's receive and delete, shared by a batch; per settle check, its first receive (a
    # share) and the hop that hides it
    notify = NOTIFICATIONS_PER_MESSAGE * 2 / notify_batch + (1 / notify_batch + 1) / checked_together
    # per settle check, once queued: `hops` more receives (shares), all but the last asking to be hidden again, the
    # delete (a share) and one read of its messages (BatchGetItem, 100 keys a request)
    settle = ((hops + 1) / notify_batch + hops - 1 + math.ceil(checked_together / 100)) / checked_together
    return {"accept": accept / recipients, "dispatch": dispatch, "dlr": dlr, "notify": notify, "settle": settle}


def _operations(stage: Stage, messages: int) -> str:
    return ", ".join(f"{key} {count / messages:.3g}" for key, count in sorted(stage.calls.items()))


def measure(
    quick: bool,
    *,
    capacity: bool = True,
    bulk: int | None = None,
    warm: bool = False,
    alphanumeric: bool = False,
    any_order: bool = False,
    latencies: Latencies = NO_LATENCIES,
    bulk_runs: int = 1,
) -> dict[str, list[Flow]]:
    """The single-send flow (several runs: their counts must agree) and the bulk flow (`bulk` recipients), from the
    shortcode SENDER; with `alphanumeric`, both again from ALPHANUMERIC_SENDER (one index write less per message;
    the same requests); with `any_order`, the single-send flow again for an account whose single sends need no
    order (`single_sends_in_order: false`: each send its own dispatch lane). AWS, the upstream and the client's
    webhook answer after `latencies`. `bulk_runs`: the bulk flow's runs (its counts are as deterministic as the
    single sends', which the runs check; its durations are not, so a timed measurement asks for several)."""
    single_runs, single_sends = (1, 10) if quick else (3, 20)
    bulk = bulk or (50 if quick else 1000)
    senders = {"": SENDER, **({"alphanumeric": ALPHANUMERIC_SENDER} if alphanumeric else {})}
    flows: dict[str, list[Flow]] = {}
    for label, sender in senders.items():
        single, many = (f"{kind} {label}".strip() for kind in ("single", "bulk"))
        flows[single] = [
            run_flow(single, single_sends, 1, capacity=capacity, warm=warm, sender=sender, latencies=latencies)
            for _ in range(single_runs)
        ]
        flows[many] = [
            run_flow(many, 1, bulk, capacity=capacity, warm=warm, sender=sender, latencies=latencies)
            for _ in range(bulk_runs)
        ]
    if any_order:
        flows["single any order"] = [
            run_flow(
                "single any order",
                single_sends,
                1,
                capacity=capacity,
                warm=warm,
                latencies=latencies,
                single_sends_in_order=False,
            )
            for _ in range(single_runs)
        ]
    return flows


def run(quick: bool) -> dict[str, Any]:
    flows = measure(quick)
    rows: list[dict[str, Any]] = []
    ratios: list[float] = []
    notes: list[str] = []
    for scenario, runs in flows.items():
        sample = runs[0]
        least = floor(sample.recipients, sample.batch_sizes)
        for stage in STAGES:
            measured = median([flow.per_message(stage) for flow in runs])
            rows.append(
                {
                    "scenario": f"{scenario} ({sample.recipients} recipient{'s' if sample.recipients > 1 else ''})",
                    "stage": stage,
                    "requests/message": round(measured, 3),
                    "floor": round(least[stage], 3),
                    "ratio": round(measured / least[stage], 2),
                    "by operation (per message)": _operations(sample.stages[stage], sample.messages),
                }
            )
        total = median([flow.total_per_message for flow in runs])
        ratio = total / sum(least.values())
        ratios.append(ratio)
        rows.append(
            {
                "scenario": f"{scenario} ({sample.recipients} recipient{'s' if sample.recipients > 1 else ''})",
                "stage": "total",
                "requests/message": round(total, 3),
                "floor": round(sum(least.values()), 3),
                "ratio": round(ratio, 2),
                "by operation (per message)": f"{sample.sends} send(s) x {sample.recipients}, {len(runs)} run(s)",
            }
        )
        spread = {round(flow.total_per_message, 6) for flow in runs}
        if len(spread) > 1:
            notes.append(f"{scenario}: runs differed ({sorted(spread)} requests/message); the median is shown.")
    notes += [
        "Every request counted with botocore's before-call hook on the gateway's own clients, the real handlers"
        " (functions/*/app.py) run in-process on moto. `[lambda]` rows are the SQS requests Lambda's event source"
        " mapping makes on our behalf (billed to us): one ReceiveMessage and one DeleteMessageBatch per batch it"
        " hands over and deletes, derived from the records the harness fed at the template's BatchSize and counted"
        " as shares of full batches, as under load (1/BatchSize per record; idle long polling, about 0.3 $/month"
        " per queue, is a fixed cost, not per message).",
        "The account's rate limit is set to 10,000/s, so a grant is always one write per record of 100 and the limiter"
        " never waits (at the default 50/s a 100-message record takes two grants: one more write per record); an"
        " invocation's single sends share one grant (its limiter takes their tokens ahead, docs/rate-limits.md), two"
        " when a second ends on the way.",
        "Each message asked for delivery reports: the client's webhook gets two (the dispatcher's `submitted`"
        " and the DLR's `delivered`), both checked to arrive. DLRs are the simulator's signed callbacks, one per"
        " message, through the webhook function.",
        "Every submitted message is in a settle check (logic/settle.py: expired and refunded if no final DLR comes"
        " within DLR_WAIT_SECONDS, 48 h): one check per dispatcher invocation, queued by the dispatch stage. Its"
        " first pass, hidden for just under 12 h, is in the notify stage; `settle` is the rest, run by letting the"
        " notifier's clock move on a hop at a time (MotoGateway.settle_after_the_wait): 48 h take five hops, and the"
        " last pass reads the messages (all delivered here) and deletes the check.",
        "The floor, line by line, and what is irreducible (a conditional write per state change per message):"
        " [docs/benchmarks-floor.md](benchmarks-floor.md).",
    ]
    return {
        "name": NAME,
        "title": "AWS requests per message, end to end",
        "command": f".venv/bin/python -m bench --only {NAME}",
        "target": f"within {TARGET_RATIO}x of the floor (docs/benchmarks-floor.md)",
        "met": all(ratio <= TARGET_RATIO for ratio in ratios),
        "rows": rows,
        "notes": notes,
    }
