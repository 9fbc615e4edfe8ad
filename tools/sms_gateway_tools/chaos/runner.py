"""`sms-gateway chaos`: drives messages through the local stack with faults injected, then checks the invariants."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx

from sms_gateway_tools.chaos.faults import FailingSendSteps, KillAfterSubmit
from sms_gateway_tools.chaos.invariants import (
    AccountCredits,
    MessageRecord,
    Observations,
    UpstreamMessage,
    Verdict,
    check,
)
from sms_gateway_tools.chaos.webhook import FlakyWebhook

# Each account's shortcode: a sender id belongs to one account.
FIRST_SENDER = 48970
SHORT_TEXT = "Your code is {n}. It expires in 10 minutes."
# 200 GSM-7 characters: two parts, so per-part DLRs are aggregated (and duplicated and reordered).
LONG_TEXT = ("Reminder {n}: your appointment is confirmed for Friday at 10:00. Reply STOP to opt out. " * 3)[:200]
INITIAL_CREDITS = 10_000_000
# Prices per part that differ by network, so a refund of the wrong message shows in the credit check; with each
# number's network (by its prefix: Nigeria's MTN, Airtel) the run knows what each message should cost.
PRICES = {"mtn": 2, "airtel": 3}
NETWORKS = {"234803": "mtn", "234802": "airtel"}
PREFIXES = tuple(NETWORKS)
# A GSM-7 text (the plan's all are) goes in one part up to 160 characters, else in parts of 153.
SINGLE_PART_CHARACTERS, CONCATENATED_PART_CHARACTERS = 160, 153
# How long the run must stay settled (queues empty, the client's webhook idle) before it is over: longer than the
# settle check's handler takes from a message's expiry to queueing its notification.
SETTLED_GRACE_SECONDS = 3.0
# How long the client waits before sending again a send whose first request is still under way (a 409).
STILL_PROCESSING_WAIT_SECONDS = 1.0
# Where records wait for the dispatcher: bulk batches, and single sends on a queue of their own (template.yaml).
DISPATCH_QUEUES = ("DispatchQueue", "PriorityDispatchQueue")


@dataclass(frozen=True)
class ChaosOptions:
    messages: int = 5000
    seed: int = 1
    # An hour: the session-15 run took 2,192 s on an idle machine, most of it the slow waves (docs/chaos.md).
    time_limit: float = 3600.0
    # Each account is a FIFO lane (two: bulk and priority) whose head record, backing off after an upstream
    # failure, holds up the records behind it: more accounts, more lanes moving at once.
    accounts: int = 8
    # Messages sent before waiting for the queues to drain (moto's SQS slows badly as a queue gets deep).
    wave: int = 500
    single_share: float = 0.1
    delivery_report_share: float = 0.4
    long_text_share: float = 0.1
    # Bulk sends scheduled a few seconds ahead (`send_at`; the local stack fires due schedules every 0.5 s), and of
    # those the share the client cancels at a moment between its accept and just after its time: some before the
    # schedule fires, some racing it, some after it (a 409: already released).
    scheduled_share: float = 0.3
    cancel_share: float = 0.5
    upstream_error_rate: float = 0.20
    upstream_timeout_rate: float = 0.05
    dlr_duplicate_rate: float = 0.10
    dlr_reorder_rate: float = 0.10
    kill_rate: float = 0.02
    # Each of the api's three send steps (a chunk stored, the records queued, SQS's answer to that) fails for this
    # share of sends (chaos/faults.FailingSendSteps); the client sends again under the same Idempotency-Key.
    send_step_failure_rate: float = 0.02
    # Each attempt after an undone send is a new batch, with new dice for the injected send-step faults (about 27% of
    # attempts fail at `make test`'s 10% a step): five attempts left about one send in 700 refused, one run in seven
    # of that test; ten leave one in 400,000.
    send_attempts: int = 10
    # False: the gateway is told the upstream cannot tell a repeated submit from a new one, as Kannel, Jasmin, Twilio
    # and Africa's Talking cannot, so every repeat the simulator counts is a text a real upstream would send twice.
    # True: it may count on the simulator's deduplication by client_ref (as on 9bits'), and repeats after a
    # submit whose answer the dispatcher missed are the designed retry.
    upstream_deduplicates: bool = False
    sqs_duplicate_rate: float = 0.05
    webhook_failure_rate: float = 0.30
    # Short local timings so every retry path completes within the run (the deployed values are far longer).
    read_timeout: float = 0.5
    timeout_delay: float = 1.0
    claim_lease_seconds: int = 10
    # A record's first retry after upstream failures (deployed: 5 s, doubling per attempt).
    backoff_base_seconds: float = 1.0
    dispatch_visibility_timeout: int = 20
    notify_retry_delays: str = "1,1,2,2,3,3,5,5,5,5"
    dlr_delay: float = 0.5
    # How long a submitted message waits for a final DLR before its settle check expires and refunds it (deployed:
    # 48 h). Well above dlr_delay and above the minutes a DLR POST can wait behind the busy local stack, so a DLR
    # that is coming mostly comes first; the run's end waits for the last check (at most this long) when a message
    # still needs one.
    dlr_wait_seconds: int = 180
    # The dispatcher and the notifier each take turns on their own lock instead of the process-wide one
    # (docs/local-stack.md, Limits): without it a dispatcher waiting out an upstream timeout stalls the API.
    serialize_invocations: bool = False
    # Invocations each HTTP function (the api, the webhook) runs at once: on Lambda a burst of DLR callbacks runs in
    # as many containers; with one at a time here, DLRs queued for minutes behind each other (docs/chaos.md).
    http_concurrency: int = 4
    # Stop waiting once the queues have been empty and nothing changed for this long.
    quiet_seconds: float = 45.0


@dataclass(frozen=True)
class Send:
    account: int
    recipients: tuple[str, ...]
    text: str
    delivery_report: bool
    # Seconds ahead of its post that the send is scheduled for (None: sent now).
    send_in: float | None = None
    # Seconds after its accept that the client cancels it (None: never).
    cancel_after: float | None = None


@dataclass
class Progress:
    sends: int = 0
    accepted_messages: int = 0
    refused_sends: list[str] = field(default_factory=list)
    # Sends the client sent again under the same Idempotency-Key, by why: the 5xx status, or the transport error
    # that lost the answer.
    sends_retried: dict[str, int] = field(default_factory=dict)
    waves: int = 0
    references: list[tuple[str, int]] = field(default_factory=list)
    # reference_id -> the status the cancel was answered with (its last attempt's; 0: none came).
    cancels: dict[str, int] = field(default_factory=dict)
    # reference_id -> the credits a cancel answered 200 said it gave back (`refunded_credits`).
    cancel_refunds: dict[str, int] = field(default_factory=dict)
    # Cancels sent again, by why: the 5xx status, or the transport error that lost the answer.
    cancels_retried: dict[str, int] = field(default_factory=dict)


def simulator_faults(options: ChaosOptions) -> dict[str, float]:
    """The simulator's settings for the run's upstream faults, each hitting its stated share of all submits. The
    simulator draws a timeout only for a submit it did not answer 5xx, so its `timeout_rate` is the share of those."""
    taken = 1 - options.upstream_error_rate
    return {
        "error_rate": options.upstream_error_rate,
        "timeout_rate": min(1.0, options.upstream_timeout_rate / taken) if taken > 0 else 0.0,
        "timeout_delay": options.timeout_delay,
        "dlr_duplicate_rate": options.dlr_duplicate_rate,
        "dlr_reorder_rate": options.dlr_reorder_rate,
    }


def plan_sends(options: ChaosOptions) -> list[Send]:
    """The run's sends, from the seed: bulk batches of 100-200 recipients and single-recipient sends."""
    rand = random.Random(options.seed)  # noqa: S311 (a repeatable test plan, not a secret)
    sends: list[Send] = []
    number = 0
    remaining = options.messages
    while remaining > 0:
        single = rand.random() < options.single_share / (options.single_share + (1 - options.single_share) / 150)
        size = 1 if single else min(remaining, rand.randint(100, 200))
        recipients = []
        for _ in range(size):
            number += 1
            recipients.append(f"{PREFIXES[number % 2]}{number:07d}")
        text = (LONG_TEXT if rand.random() < options.long_text_share else SHORT_TEXT).format(n=number)
        delivery_report = rand.random() < options.delivery_report_share
        send_in = cancel_after = None
        if not single and rand.random() < options.scheduled_share:
            send_in = rand.uniform(3, 15)
            if rand.random() < options.cancel_share:
                cancel_after = rand.uniform(0, send_in + 2)
        sends.append(
            Send(
                account=len(sends) % options.accounts,
                recipients=tuple(recipients),
                text=text,
                delivery_report=delivery_report,
                send_in=send_in,
                cancel_after=cancel_after,
            )
        )
        remaining -= size
    return sends


def expected_prices(sends: list[Send]) -> dict[str, int]:
    """What each planned message should cost, by its recipient: its network's price per part times its parts."""
    return {
        recipient: price_per_part(recipient) * parts_of(send.text) for send in sends for recipient in send.recipients
    }


def reports_asked(sends: list[Send]) -> dict[str, bool]:
    """Whether each planned message's send asked for delivery reports, by its recipient."""
    return {recipient: send.delivery_report for send in sends for recipient in send.recipients}


def price_per_part(msisdn: str) -> int:
    return next(PRICES[network] for prefix, network in NETWORKS.items() if msisdn.startswith(prefix))


def parts_of(text: str) -> int:
    if len(text) <= SINGLE_PART_CHARACTERS:
        return 1
    return math.ceil(len(text) / CONCATENATED_PART_CHARACTERS)


def waves(sends: list[Send], size: int) -> list[list[Send]]:
    grouped: list[list[Send]] = [[]]
    count = 0
    for send in sends:
        if count >= size:
            grouped.append([])
            count = 0
        grouped[-1].append(send)
        count += len(send.recipients)
    return grouped


class ChaosRun:
    def __init__(self, options: ChaosOptions, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.started = time.monotonic()
        self.deadline = self.started + options.time_limit
        self.progress = Progress()
        self.accounts: list[dict[str, Any]] = []
        # Recipient -> what the message to it should cost (every planned message has a recipient of its own).
        self.expected_prices: dict[str, int] = {}
        # Recipient -> whether its send asked for delivery reports.
        self.reports_asked: dict[str, bool] = {}
        self.timed_out = False
        self._progress_lock = threading.Lock()
        self._cancel_timers: list[threading.Timer] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from sms_gateway_tools.localstack import LocalStack

        o = self.options
        kills = KillAfterSubmit(o.kill_rate, o.seed)
        send_faults = FailingSendSteps(o.send_step_failure_rate, o.seed)
        with (
            FlakyWebhook(o.webhook_failure_rate, seed=o.seed) as webhook,
            LocalStack(
                port=0,
                dlr_delay=o.dlr_delay,
                log_level="CRITICAL",
                notify_retry_delays=o.notify_retry_delays,
                environment={
                    "UPSTREAM_READ_TIMEOUT": str(o.read_timeout),
                    "DISPATCH_CLAIM_LEASE_SECONDS": str(o.claim_lease_seconds),
                    "DISPATCH_BACKOFF_BASE_SECONDS": str(o.backoff_base_seconds),
                    "DLR_WAIT_SECONDS": str(o.dlr_wait_seconds),
                    # Scheduled sends a few seconds ahead get a schedule (deployed: only beyond 60 s).
                    "SCHEDULE_THRESHOLD_SECONDS": "1",
                    # And fired to the second (deployed: rounded up to Scheduler's minute).
                    "SCHEDULER_PRECISION_SECONDS": "1",
                },
                visibility_timeouts=dict.fromkeys(DISPATCH_QUEUES, o.dispatch_visibility_timeout),
                sqs_duplicate_rate=o.sqs_duplicate_rate,
                seed=o.seed,
                upstream_deduplicates=o.upstream_deduplicates,
                serialize_invocations=o.serialize_invocations,
                http_concurrency=o.http_concurrency,
            ) as stack,
            kills.installed(stack.functions["DispatcherFunction"]),
            send_faults.installed(),
        ):
            assert stack.simulator is not None
            stack.simulator.configure(**simulator_faults(o))
            self._create_accounts(stack, webhook)
            self.say(f"stack up: API {stack.api_url}, simulator {stack.simulator_url}, webhook {webhook.url}")
            planned = plan_sends(o)
            self.expected_prices = expected_prices(planned)
            self.reports_asked = reports_asked(planned)
            with httpx.Client(timeout=60) as client:
                for number, wave in enumerate(waves(planned, o.wave), start=1):
                    if self._past_deadline():
                        break
                    self._send_wave(client, stack, wave)
                    self.progress.waves = number
                    self.say(
                        f"wave {number}: {sum(len(s.recipients) for s in wave)} messages in {len(wave)} sends "
                        f"({self.progress.accepted_messages}/{o.messages} accepted)"
                    )
                    waited, deepest = self._drain(stack, dispatch_depth=20, notify_depth=300)
                    if waited >= 60:
                        # A slow wave: the next waits for the queues behind this one (docs/chaos.md, "Slow waves").
                        self.say(
                            f"waited {waited:.0f} s for the queues to drain before the next wave "
                            f"(deepest: dispatch {deepest[0]}, notify {deepest[1]})"
                        )
            self._wait_for_cancels()
            settled_at = self._settle(stack, webhook)
            observed = self._observe(stack, webhook, kills, send_faults)
            verdicts = check(observed)
            return self._summary(
                stack,
                webhook=webhook,
                kills=kills,
                send_faults=send_faults,
                observed=observed,
                verdicts=verdicts,
                settled_at=settled_at,
            )

    def _past_deadline(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.timed_out = True
        return self.timed_out

    def _create_accounts(self, stack: Any, webhook: FlakyWebhook) -> None:
        from sms_gateway.bootstrap import gateway
        from sms_gateway.logic import accounts
        from sms_gateway_tools.admin import create_account

        store = gateway().store
        for network, price in PRICES.items():
            accounts.set_price(store, tier="N", network=network, credits=price)
        for index in range(self.options.accounts):
            created = create_account(
                name=f"Chaos {index}",
                senders=[str(FIRST_SENDER + index)],
                credits=INITIAL_CREDITS,
                api_url=stack.api_url,
                dlr_url=f"{webhook.url}/dlr",
            )
            # The run measures correctness under faults, not the rate limiter: let each account send freely. Every
            # other account lets its single sends go out in any order (each a dispatch lane of its own).
            accounts.set_account(store, created["account_id"], rate_limit=10_000, single_sends_in_order=index % 2 == 0)
            webhook.register(
                created["webhook_token"], account_id=created["account_id"], signing_secret=created["signing_secret"]
            )
            self.accounts.append(created)

    def _send_wave(self, client: httpx.Client, stack: Any, wave: list[Send]) -> None:
        def post(send: Send) -> None:
            account = self.accounts[send.account]
            body: dict[str, Any] = {
                "from": account["senders"][0],
                "delivery_report": "yes" if send.delivery_report else "none",
            }
            if len(send.recipients) == 1:
                body |= {"to": send.recipients[0], "message": send.text}
            else:
                body |= {"to": list(send.recipients), "body": send.text}
            if send.send_in is not None:
                body["send_at"] = (datetime.now(UTC) + timedelta(seconds=send.send_in)).isoformat()
            # A client that sends again after a 5xx or a lost answer, under the same key, as the API documents.
            headers = {"Authorization": f"Bearer {account['token']}", "Idempotency-Key": f"chaos-{send.recipients[0]}"}
            answer, lost = self._until_answered(
                lambda: client.post(f"{stack.api_url}/ng/v1/sendsms", json=body, headers=headers),
                self.progress.sends_retried,
            )
            with self._progress_lock:
                self.progress.sends += 1
            if answer is None or answer.status_code != 200:
                refused = f"no answer ({lost})" if answer is None else f"{answer.status_code} {answer.text[:200]}"
                self.progress.refused_sends.append(refused)
                return
            reference_id = answer.json()["reference_id"]
            with self._progress_lock:
                self.progress.references.append((account["account_id"], int(reference_id)))
                # Counted with its reference: the settled invariant holds the table to it.
                self.progress.accepted_messages += len(send.recipients)
            if send.cancel_after is not None:
                cancel = threading.Timer(send.cancel_after, self._cancel, args=(stack, account, str(reference_id)))
                cancel.start()
                with self._progress_lock:
                    self._cancel_timers.append(cancel)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="chaos-send") as pool:
            list(pool.map(post, wave))

    def _cancel(self, stack: Any, account: dict[str, Any], reference_id: str) -> None:
        """The client's DELETE of a scheduled batch under an Idempotency-Key of its own, sent again under it after a
        5xx, a lost answer or a 409 saying the first request is still under way, as a client would: whichever attempt
        is answered 200 answers the refund the cancel gave back (docs/dialects/9bits.md), which the run keeps."""
        headers = {"Authorization": f"Bearer {account['token']}", "Idempotency-Key": f"chaos-cancel-{reference_id}"}
        with httpx.Client(timeout=30) as client:
            answer, _ = self._until_answered(
                lambda: client.delete(f"{stack.api_url}/ng/v1/batches/{reference_id}", headers=headers),
                self.progress.cancels_retried,
            )
        with self._progress_lock:
            self.progress.cancels[reference_id] = 0 if answer is None else answer.status_code
            if answer is not None and answer.status_code == 200:
                self.progress.cancel_refunds[reference_id] = int(answer.json()["refunded_credits"])

    def _until_answered(
        self, request: Callable[[], httpx.Response], retried: dict[str, int]
    ) -> tuple[httpx.Response | None, str]:
        """`request` (one under an Idempotency-Key) sent again after a 5xx, an answer lost (a transport error) or a
        409 saying the key's first request is still under way (after STILL_PROCESSING_WAIT_SECONDS), up to
        `send_attempts` in all, each repeat counted in `retried` by why. Returns the last answer (None: it was lost)
        and the name of the transport error that lost it."""
        answer, lost = None, ""
        for attempt in range(1, self.options.send_attempts + 1):
            try:
                answer = request()
            except httpx.TransportError as error:
                answer, lost = None, type(error).__name__
            else:
                if answer.status_code < 500 and not _still_being_processed(answer):
                    break
            if attempt < self.options.send_attempts:
                self._count_retry(retried, lost if answer is None else _why_again(answer))
                if answer is not None and _still_being_processed(answer):
                    time.sleep(STILL_PROCESSING_WAIT_SECONDS)
        return answer, lost

    def _count_retry(self, retried: dict[str, int], why: str) -> None:
        """Counts a send or cancel the client sends again, by why (`retried`: the progress's count of those)."""
        with self._progress_lock:
            retried[why] = retried.get(why, 0) + 1

    def _wait_for_cancels(self) -> None:
        with self._progress_lock:
            timers = list(self._cancel_timers)
        for timer in timers:
            timer.join(timeout=max(1.0, self.deadline - time.monotonic()))

    def _dispatch_depth(self, stack: Any) -> int:
        """Records on both dispatch queues (bulk batches and single sends)."""
        return sum(self._depth(stack, queue_id) for queue_id in DISPATCH_QUEUES)

    def _depth(self, stack: Any, queue_id: str) -> int:
        """Records on the queue, visible or not, but the settle checks: each waits out DLR_WAIT_SECONDS hidden on
        the notify queue whatever else happens, and the end of the run waits for them apart (`_settle`)."""
        assert stack.resources is not None
        attributes = stack.client("sqs").get_queue_attributes(
            QueueUrl=stack.resources.queue_urls[queue_id],
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return sum(int(value) for value in attributes.values()) - self._settle_checks(stack, queue_id)

    @staticmethod
    def _settle_checks(stack: Any, queue_id: str) -> int:
        from sms_gateway.logic.settle import is_settle_check
        from sms_gateway_tools.localstack.moto_server import queue_contents

        assert stack.resources is not None
        bodies = [message.body for message in queue_contents(stack.resources.queue_urls[queue_id])]
        return sum(is_settle_check(json.loads(body)) for body in bodies if body.startswith("{"))

    def _drain(self, stack: Any, *, dispatch_depth: int, notify_depth: int) -> tuple[float, tuple[int, int]]:
        """Waits until both queues are down to the given depths; returns how long it waited and the deepest each
        queue was meanwhile."""
        started, deepest = time.monotonic(), (0, 0)
        while not self._past_deadline():
            dispatch, notify = self._dispatch_depth(stack), self._depth(stack, "NotifyQueue")
            deepest = (max(deepest[0], dispatch), max(deepest[1], notify))
            if dispatch <= dispatch_depth and notify <= notify_depth:
                break
            time.sleep(0.5)
        return time.monotonic() - started, deepest

    def _settle(self, stack: Any, webhook: FlakyWebhook) -> float | None:
        """Waits until every message is final and both queues are empty; gives up at the time limit, or once
        nothing has moved for `quiet_seconds` (what is left then is reported unsettled). Returns when it
        settled (seconds into the run), or None."""
        self.say("all sent; waiting for every message to settle and every notification to drain")
        quiet_since: float | None = None
        last: tuple[int, ...] | None = None
        while not self._past_deadline():
            depths = (self._dispatch_depth(stack), self._depth(stack, "NotifyQueue"))
            if depths == (0, 0):
                counts = self._unsettled_counts()
                # Settle checks still waiting only look again at final messages: the run is over, once it stays so.
                if sum(counts) == 0:
                    settled_at = time.monotonic() - self.started
                    if self._stays_settled(stack, webhook):
                        return settled_at
                    continue
                if self._settle_checks(stack, "NotifyQueue"):
                    # Not quiet: what is not final may be waiting for its check, due within DLR_WAIT_SECONDS.
                    quiet_since, last = None, None
                    time.sleep(2.0)
                    continue
                state = (*counts, stack.simulator.stats()["dlrs_sent"])
                if state != last:
                    last, quiet_since = state, time.monotonic()
                    self.say(f"queues empty; {counts[0]} messages not final yet")
                elif time.monotonic() - (quiet_since or 0) > self.options.quiet_seconds:
                    self.say(f"nothing moved for {self.options.quiet_seconds:.0f} s; checking what is left")
                    return None
                time.sleep(2.0)
            else:
                quiet_since, last = None, None
                time.sleep(1.0)
        self.say("time limit reached; checking what is left")
        return None

    def _stays_settled(self, stack: Any, webhook: FlakyWebhook) -> bool:
        """Whether the queues are still empty and the client's webhook still idle SETTLED_GRACE_SECONDS later. A
        settle check being handled is not counted in the queues' depth (`_depth`): the one that expires the last
        message queues that message's notification just after its write, so a look in between saw the run over
        with a change still to announce (a 300-message run once reported it as never notified)."""
        requests = webhook.log.requests
        time.sleep(SETTLED_GRACE_SECONDS)
        depths = (self._dispatch_depth(stack), self._depth(stack, "NotifyQueue"))
        return depths == (0, 0) and webhook.log.requests == requests

    def _unsettled_counts(self) -> tuple[int]:
        from sms_gateway.domain.status import TERMINAL

        return (sum(1 for m in self._messages() if m.status not in TERMINAL),)

    def _messages(self) -> list[Any]:
        from sms_gateway.bootstrap import gateway
        from sms_gateway.logic.batches import all_messages

        store = gateway().store
        found: list[Any] = []
        for account_id, reference_id in self.progress.references:
            found.extend(all_messages(store, account_id, reference_id))
        return found

    # -- what happened ---------------------------------------------------------------------------

    def _observe(
        self, stack: Any, webhook: FlakyWebhook, kills: KillAfterSubmit, send_faults: FailingSendSteps
    ) -> Observations:
        from sms_gateway.bootstrap import gateway
        from sms_gateway.domain.models import DeliveryReportMode

        store = gateway().store
        messages = [
            MessageRecord(
                message_id=str(m.message_id),
                account_id=m.account_id,
                client_ref=m.key.to_ref(),
                status=str(m.status),
                status_at=dict(m.status_at),
                sequence=int(m.sequence),
                price=int(m.price),
                # Stored in E.164 ('+' first), planned as the client sent it.
                expected_price=self.expected_prices.get(m.msisdn.removeprefix("+")),
                delivery_report=m.delivery_report == DeliveryReportMode.YES,
                asked_for_reports=self.reports_asked.get(m.msisdn.removeprefix("+")),
                error_code=m.error_code,
                upstream_message_id=m.upstream_message_id,
                reference_id=str(m.reference_id),
            )
            for m in self._messages()
        ]
        credits = []
        for account in self.accounts:
            current = store.get_account(account["account_id"])
            credits.append(
                AccountCredits(
                    account_id=account["account_id"],
                    initial=INITIAL_CREDITS,
                    balance=current.credits if current else 0,
                )
            )
        upstream = [
            UpstreamMessage(
                message_id=m["message_id"],
                client_ref=m["client_ref"],
                repeats=m["duplicates"],
                repeats_after_accept=m["duplicates_after_accept"],
                dlr_status=m["dlr_status"],
                submitted_at=m["submitted_at"],
                dlr_delivered_at=m["dlr_delivered_at"],
            )
            for m in stack.simulator.messages()
        ]
        parked_messages: dict[str, str] = {}
        for body, reason in self._dead_letters(stack, "DispatchDeadLetterQueue"):
            for message_id in json.loads(body).get("message_ids", []):
                parked_messages[str(message_id)] = reason
        parked_notifications = {
            str(json.loads(body).get("id")): reason
            for body, reason in self._dead_letters(stack, "NotifyDeadLetterQueue")
        }
        return Observations(
            messages=messages,
            accounts=credits,
            upstream=upstream,
            upstream_stats=stack.simulator.stats(),
            notifications={key: delivery.body for key, delivery in webhook.log.delivered.items()},
            notified_accounts={key: frozenset(delivery.account_ids) for key, delivery in webhook.log.delivered.items()},
            unqueued_batches=dict(send_faults.unqueued_batches),
            dead_lettered_messages=parked_messages,
            dead_lettered_notifications=parked_notifications,
            resubmitted_after_heard_accept=list(kills.resubmitted_after_heard_accept),
            accepted_then_killed=kills.accepted_then_killed,
            unanswered_refs=frozenset(kills.unanswered_refs),
            submits_unanswered=dict(kills.unanswered),
            upstream_deduplicates=self.options.upstream_deduplicates,
            cancels=dict(self.progress.cancels),
            cancel_refunds=dict(self.progress.cancel_refunds),
            accepted_messages=self.progress.accepted_messages,
        )

    def _dead_letters(self, stack: Any, queue_id: str) -> list[tuple[str, str]]:
        """Every record in a dead-letter queue with its `reason` attribute ('' when it has none), read from moto's
        memory: ReceiveMessage returns nothing more of a FIFO message group while its received records are in
        flight, so receiving would stop at the first few of an account's lane (the dispatch DLQ is FIFO)."""
        from sms_gateway_tools.localstack.moto_server import queue_contents

        assert stack.resources is not None
        url = stack.resources.queue_urls.get(queue_id)
        if url is None:
            return []
        return [
            (message.body, (message.message_attributes.get("reason") or {}).get("StringValue", ""))
            for message in queue_contents(url)
        ]

    def _summary(
        self,
        stack: Any,
        *,
        webhook: FlakyWebhook,
        kills: KillAfterSubmit,
        send_faults: FailingSendSteps,
        observed: Observations,
        verdicts: list[Verdict],
        settled_at: float | None,
    ) -> dict[str, Any]:
        stats = dict(observed.upstream_stats)
        statuses: dict[str, int] = {}
        error_codes: dict[str, int] = {}
        for message in observed.messages:
            statuses[message.status] = statuses.get(message.status, 0) + 1
            if message.error_code and message.error_code != "000":
                code = f"{message.status}/{message.error_code}"
                error_codes[code] = error_codes.get(code, 0) + 1
        duplicates = {p.source.queue_logical_id: p.duplicates_delivered for p in stack.pollers}
        return {
            "options": asdict(self.options),
            "elapsed_seconds": round(time.monotonic() - self.started, 1),
            "settled_after_seconds": None if settled_at is None else round(settled_at, 1),
            "timed_out": self.timed_out,
            "sends": self.progress.sends,
            "messages": len(observed.messages),
            "refused_sends": self.progress.refused_sends[:5],
            "sends_retried": dict(sorted(self.progress.sends_retried.items())),
            "scheduled_sends": len({m.reference_id for m in observed.messages if "scheduled" in m.status_at}),
            "cancels_answered": _count_by_status(self.progress.cancels.values()),
            "cancels_retried": dict(sorted(self.progress.cancels_retried.items())),
            "statuses": dict(sorted(statuses.items())),
            "error_codes": dict(sorted(error_codes.items())),
            "expired_unreported": _expired_unreported(observed),
            "injected": {
                "upstream_5xx": stats.get("errors_injected", 0),
                "upstream_timeouts": stats.get("timeouts_injected", 0),
                "dlrs_duplicated": stats.get("dlrs_duplicated", 0),
                "dlrs_reordered": stats.get("dlrs_reordered", 0),
                "dispatcher_kills": len(kills.killed),
                "send_step_failures": {step: send_faults.injected[step] for step in FailingSendSteps.STEPS},
                "sqs_duplicate_deliveries": duplicates,
                "webhook_500s": webhook.log.failed,
            },
            "upstream": {
                "submits": stats.get("submits", 0),
                "unique": stats.get("unique", 0),
                "resubmits_after_timeout": stats.get("resubmits_after_timeout", 0),
                "resubmits_after_accept": stats.get("resubmits_after_accept", 0),
                "resubmits_after_dispatcher_heard_accept": len(observed.resubmitted_after_heard_accept),
                "submits_unanswered": dict(sorted(observed.submits_unanswered.items())),
                "dlrs_sent": stats.get("dlrs_sent", 0),
                "dlrs_failed": stats.get("dlrs_failed", 0),
            },
            "webhook": {
                "requests": webhook.log.requests,
                "answered_500": webhook.log.failed,
                "distinct_notifications": len(webhook.log.delivered),
                "repeats_same_id": webhook.log.repeats,
                "bad_signatures": webhook.log.bad_signatures,
            },
            "invariants": [verdict.to_dict() for verdict in verdicts],
            "ok": all(verdict.ok for verdict in verdicts)
            and not self.timed_out
            and not self.progress.refused_sends
            and webhook.log.bad_signatures == 0
            and len(observed.messages) == self.options.messages,
        }


def _still_being_processed(answer: httpx.Response) -> bool:
    """A 409 for a send whose Idempotency-Key's first request is still under way (one whose answer the client lost):
    it says to retry later."""
    return answer.status_code == 409 and "still being processed" in answer.text


def _why_again(answer: httpx.Response) -> str:
    return "409 still being processed" if _still_being_processed(answer) else str(answer.status_code)


def _count_by_status(statuses: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return dict(sorted(counts.items()))


def _expired_unreported(observed: Observations) -> dict[str, Any]:
    """Messages our settle check expired (`no_delivery_report`): how many the upstream had after all, and how many
    of those it delivered. The invariants allow them (a final status does not move); the count shows what a DLR wait
    shorter than the upstream's reporting delay costs. The first few that reached it come with the times on both
    sides, so a run shows whether their DLR came late or was lost."""
    upstream = {copy.client_ref: copy for copy in observed.upstream}
    expired = [m for m in observed.messages if m.status == "expired" and m.error_code == "no_delivery_report"]
    reached = [(m, upstream[m.client_ref]) for m in expired if m.client_ref in upstream]
    return {
        "total": len(expired),
        "reached": len(reached),
        "delivered": sum(1 for _, copy in reached if copy.dlr_status == "DELIVRD"),
        "examples": [
            {
                "message_id": message.message_id,
                "status_at": dict(message.status_at),
                "upstream_took_it_at": copy.submitted_at,
                "upstream_status": copy.dlr_status,
                "dlr_answered_at": copy.dlr_delivered_at,
            }
            for message, copy in reached[:5]
        ],
    }


def render(summary: dict[str, Any]) -> str:
    """The printed report: what was injected, what happened, and each invariant."""
    o = summary["options"]
    lines = [
        "",
        f"chaos run: {summary['messages']} messages in {summary['sends']} sends, seed {o['seed']}, "
        f"{summary['elapsed_seconds']} s (settled: "
        f"{'after ' + str(summary['settled_after_seconds']) + ' s' if summary['settled_after_seconds'] else 'no'})",
        "final statuses: " + ", ".join(f"{k} {v}" for k, v in summary["statuses"].items()),
        "error codes: " + (", ".join(f"{k} {v}" for k, v in summary["error_codes"].items()) or "none"),
        "expired for want of a DLR: {total}, of which the upstream had {reached} ({delivered} it reported delivered, "
        "its DLR answered too late or never); the rest never reached it".format(**summary["expired_unreported"]),
        *(f"    e.g. {json.dumps(example)}" for example in summary["expired_unreported"]["examples"][:3]),
        "injected: " + ", ".join(f"{k} {v}" for k, v in summary["injected"].items()),
        "sends answered 5xx, or never answered, and sent again under their Idempotency-Key: "
        + (", ".join(f"{k} {v}" for k, v in summary.get("sends_retried", {}).items()) or "none"),
        f"scheduled batches: {summary.get('scheduled_sends', 0)}; cancels answered: "
        + (", ".join(f"{k} {v}" for k, v in summary.get("cancels_answered", {}).items()) or "none")
        + " (sent again: "
        + (", ".join(f"{k} {v}" for k, v in summary.get("cancels_retried", {}).items()) or "none")
        + ")",
        "upstream: " + ", ".join(f"{k} {v}" for k, v in summary["upstream"].items()),
        "client webhook: " + ", ".join(f"{k} {v}" for k, v in summary["webhook"].items()),
        "",
        f"{'invariant':<58} {'checked':>8} {'violations':>10}  result",
    ]
    for verdict in summary["invariants"]:
        lines.append(
            f"{verdict['title']:<58} {verdict['checked']:>8} {verdict['violations']:>10}  "
            f"{'ok' if verdict['ok'] else 'BROKEN'}"
        )
        lines.extend(f"    {note}" for note in verdict["notes"])
        lines.extend(f"    ! {example}" for example in verdict["examples"])
    if summary["refused_sends"]:
        lines.append("sends refused by the API: " + "; ".join(summary["refused_sends"]))
    if summary["timed_out"]:
        lines.append(f"the time limit ({o['time_limit']:.0f} s) was reached before the run settled")
    lines.append("")
    lines.append("RESULT: " + ("all invariants hold" if summary["ok"] else "INVARIANTS BROKEN"))
    return "\n".join(lines)


def run_chaos(options: ChaosOptions, *, json_path: Path | None = None, out: TextIO = sys.stdout) -> int:
    """Runs the chaos test; prints the report; exit code 0 only when every invariant held."""
    # The gateway logs every injected fault at WARNING; the report says what matters. Its Logger is made first:
    # Powertools sets the level when it makes it (INFO, the functions' environment not applied yet), which would
    # undo a level set before.
    import sms_gateway.observability  # noqa: F401

    for name in ("sms_gateway_tools", "sms-gateway", "sms_gateway"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    summary = ChaosRun(options, out).run()
    print(render(summary), file=out, flush=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1
