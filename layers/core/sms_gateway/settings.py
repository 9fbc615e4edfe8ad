"""Settings read from the environment once per container (the template and the local stack set them)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, field_validator

from sms_gateway.ports import MAX_QUEUE_DELAY_SECONDS

# A submitted message with no final DLR after this long is expired and refunded (logic/settle.py). Each wait of a
# settle check is a visibility timeout of just under 12 h on the notify queue, which keeps messages 14 days and takes
# 12 receives: 72 h (7 receives) keeps both well out of reach.
MAX_DLR_WAIT_SECONDS = 259_200
# Notify attempts are delays + 1 and must stay below the notify queue's maxReceiveCount (template.yaml: 12).
MAX_NOTIFY_RETRY_DELAYS = 10
# How long the notify queue keeps a record (template.yaml NotifyQueue MessageRetentionPeriod, 14 days, the SQS
# maximum): from when it was sent, hidden or not. A notification's whole retry schedule must end well before it, or
# SQS deletes the record mid-schedule: no dead letter, no alarm, and its failure record reads `retrying` for ever.
NOTIFY_QUEUE_RETENTION_SECONDS = 1_209_600
# What the retry schedule leaves of that retention: the receives, the posts, a backlog the record waits in.
NOTIFY_RETENTION_MARGIN_SECONDS = 86_400


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: str = "dev"
    table_name: str = ""
    dispatch_queue_url: str = ""
    # Single sends' dispatch queue (their own event source and concurrency); unset: they share dispatch_queue_url.
    priority_dispatch_queue_url: str = ""
    notify_queue_url: str = ""
    dispatch_dead_letter_queue_url: str = ""
    schedule_group_name: str = ""
    scheduler_role_arn: str = ""
    scheduled_dispatch_function_arn: str = ""
    schedule_dlq_arn: str = ""
    upstream_parameter_prefix: str = "/sms-gateway/dev/upstreams/"
    callback_base_url: str = ""
    # The KMS key that seals the clients' webhook tokens and signing secrets (adapters/kms.py).
    webhook_credentials_key_id: str = ""
    default_upstream: str = "simulator"
    allow_http_webhooks: bool = False
    # How long a message record is kept after it was created (DynamoDB TTL), in days.
    message_retention_days: int = 180
    # Upper bound of concurrent upstream submits in one dispatcher invocation.
    dispatch_concurrency: int = 64
    # Submits a message gets before a transient upstream failure is final (counted per message), and failures a
    # dispatch record gets before the handler parks it in the dead-letter queue (counted per record in the table).
    dispatch_max_attempts: int = 6
    message_validity_hours: int = 24
    # How long a dispatcher's claim on a message lasts; it must outlive a submit and stay below the dispatch
    # queue's visibility timeout (360 s), so a crashed dispatcher's redelivered record finds the claim lapsed.
    dispatch_claim_lease_seconds: int = 120
    # The first retry delay of a record that met transient upstream failures; each further attempt doubles it
    # (with jitter, up to 5 minutes). The chaos run shortens it to finish in bounded time.
    dispatch_backoff_base_seconds: float = 5.0
    # The clock-skew tolerance of a send_at (logic.send.SCHEDULE_THRESHOLD): one at most this far ahead is sent now,
    # one further ahead is scheduled, so it never goes out before its time.
    schedule_threshold_seconds: int = 10
    # EventBridge Scheduler fires a one-time schedule anywhere within the minute of its time: a schedule is set to a
    # whole multiple of this (rounded up), so a batch never goes out before its send_at. The local stack, which
    # fires to the second, may use 1.
    scheduler_precision_seconds: int = 60
    upstream_connect_timeout: float = 3.0
    upstream_read_timeout: float = 10.0
    # How long a message recorded submitted without the upstream's word (a dispatcher died mid-submit) waits for
    # a final delivery report before it is expired with `no_delivery_report` and refunded.
    dlr_wait_seconds: int = 172_800
    # How long after its callback an inbound SMS whose notification it did not queue, or a final delivery report
    # whose announcement the notify queue refused, waits for the sweeper to queue it (logic/notify.py,
    # NOTIFY_SWEEP_DELAY); the local stack's tests shorten it.
    inbound_sweep_delay_seconds: int = 120
    # Client webhook notifications that fail every attempt are parked here with their reason.
    notify_dead_letter_queue_url: str = ""
    # Seconds to wait after each failed client webhook attempt (one attempt more than delays): 5 s, 5 min, 30 min,
    # 2 h, 5 h, 10 h, 6 h 25 min, about 24 h in all. The environment gives them comma-separated ("1,1,1").
    notify_retry_delays: tuple[int, ...] = (5, 300, 1_800, 7_200, 18_000, 36_000, 23_100)

    @field_validator("notify_retry_delays", mode="before")
    @classmethod
    def comma_separated_seconds(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.replace(" ", "").split(",") if part)
            except ValueError:
                raise ValueError(f"NOTIFY_RETRY_DELAYS must be comma-separated whole seconds, not {value!r}") from None
        return value

    @field_validator("notify_retry_delays")
    @classmethod
    def within_sqs_limits(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("NOTIFY_RETRY_DELAYS needs at least one delay")
        # So the handler, not the queue's redrive, decides when a notification is dead and records why; each delay
        # becomes a visibility timeout, which SQS caps at 12 h.
        if len(value) > MAX_NOTIFY_RETRY_DELAYS:
            raise ValueError(f"NOTIFY_RETRY_DELAYS takes at most {MAX_NOTIFY_RETRY_DELAYS} delays")
        if any(not 0 <= delay <= MAX_QUEUE_DELAY_SECONDS for delay in value):
            raise ValueError(
                f"each of NOTIFY_RETRY_DELAYS must be from 0 to {MAX_QUEUE_DELAY_SECONDS} seconds (12 h less 5 min)"
            )
        # At its longest each delay is the 12 h cap, whatever its value: a client's Retry-After stretches it that far.
        longest = len(value) * MAX_QUEUE_DELAY_SECONDS
        if longest + NOTIFY_RETENTION_MARGIN_SECONDS > NOTIFY_QUEUE_RETENTION_SECONDS:
            raise ValueError(
                f"NOTIFY_RETRY_DELAYS may take {longest} s (a Retry-After stretches each delay to "
                f"{MAX_QUEUE_DELAY_SECONDS} s): more than the notify queue keeps a record, "
                f"{NOTIFY_QUEUE_RETENTION_SECONDS} s, less {NOTIFY_RETENTION_MARGIN_SECONDS} s to spare"
            )
        return value

    @field_validator("dlr_wait_seconds")
    @classmethod
    def dlr_wait_within_queue_limits(cls, value: int) -> int:
        if not 1 <= value <= MAX_DLR_WAIT_SECONDS:
            raise ValueError(f"DLR_WAIT_SECONDS must be from 1 to {MAX_DLR_WAIT_SECONDS} (72 h)")
        return value

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        return cls.model_validate(values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_environ()
