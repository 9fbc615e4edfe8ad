"""Settings read from the environment once per container (the template and the local stack set them)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: str = "dev"
    table_name: str = ""
    dispatch_queue_url: str = ""
    notify_queue_url: str = ""
    dispatch_dead_letter_queue_url: str = ""
    schedule_group_name: str = ""
    scheduler_role_arn: str = ""
    scheduled_dispatch_function_arn: str = ""
    schedule_dlq_arn: str = ""
    upstream_parameter_prefix: str = "/sms-gateway/dev/upstreams/"
    callback_base_url: str = ""
    default_upstream: str = "simulator"
    allow_http_webhooks: bool = False
    # How long a message record is kept after it was created (DynamoDB TTL), in days.
    message_retention_days: int = 180
    # Upper bound of concurrent upstream submits in one dispatcher invocation.
    dispatch_concurrency: int = 64
    # Attempts a dispatch record gets before its transient failures become final (below the queue's
    # maxReceiveCount, so the dead-letter queue keeps only records that crash the handler).
    dispatch_max_attempts: int = 6
    message_validity_hours: int = 24
    # A send_at closer than this is sent now: a schedule would fire about as late as the queue delivers.
    schedule_threshold_seconds: int = 60
    upstream_connect_timeout: float = 3.0
    upstream_read_timeout: float = 10.0

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
