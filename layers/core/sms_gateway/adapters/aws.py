"""AWS clients, created lazily and once per container (cold start; moto works without reloads)."""

from __future__ import annotations

import os
import threading
from typing import Any

from sms_gateway import deadlines

_clients: dict[tuple[str, bool], Any] = {}
# One session for every client: a botocore session loads and keeps the endpoint rules, partitions and service
# models, so a session per client loads them once per client (about 55 ms of CPU each at cold start, measured in
# docs/cold-start.md). Sessions are not thread-safe; clients are created under the lock only.
_session: list[Any] = []
_lock = threading.Lock()


def region_name() -> str | None:
    """AWS_REGION when set (Lambda's runtime sets it; the AWS CLI and docs/operators.md name the region with it),
    else None: boto3's own choice (AWS_DEFAULT_REGION, then the profile). boto3 alone never reads AWS_REGION, so
    an operator's AWS_REGION=eu-west-1 reached the profile region's stack of the same name."""
    return os.environ.get("AWS_REGION") or None


def client(service: str, *, prompt: bool = False) -> Any:
    """The container's client of `service`. A `prompt` one gives up within about 5 s when the service does not
    answer (two attempts of at most 1 s to connect and 2 s to read, one back-off of at most 1 s), where the usual
    one keeps trying for up to about a minute (five attempts of up to 13 s, back-offs of up to 15 s in all): for a
    call made while a caller waits on a short function (the webhook function stops at 10 s), so that a call that gets
    no answer still leaves the time to record what it did not do."""
    key = (service, prompt)
    found = _clients.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(
                # Attempts in all: botocore's `max_attempts` here counts the retries (until session 38 each client
                # sent a failing call once more than said above: three attempts and up to 3 s of throttle backoff
                # for a prompt one, six and up to 31 s for the usual one).
                retries={"mode": "standard", "total_max_attempts": 2 if prompt else 5},
                connect_timeout=1 if prompt else 3,
                read_timeout=2 if prompt else 10,
                max_pool_connections=64,
                # Client-side validation walks every parameter of every request (a 25-item BatchWriteItem is
                # thousands of nodes): about half the api handler's CPU per recipient. The service validates
                # the same request anyway and answers a ValidationException.
                parameter_validation=False,
            )
            if not _session:
                _session.append(boto3.session.Session(region_name=region_name()))
            created = _session[0].client(service, config=config)
            created.meta.events.register("needs-retry", deadlines.no_retry_past_deadline_or_once)
            _clients[key] = created
        return _clients[key]


def reset_clients() -> None:
    """Tests that start a new moto mock call this so the next client is created inside it."""
    with _lock:
        _clients.clear()
        _session.clear()
