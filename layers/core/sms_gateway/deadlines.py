"""The time an invocation has left, as a test its work asks between steps, so it stops and tidies up before
Lambda kills it instead of dying half-way; and, while a deadline is armed, no failed AWS call is retried past it
(botocore's retries back off for up to about 15 s between five attempts). Also the other call that is never
retried: one made `at_most_once` that may have been applied."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

OutOfTime = Callable[[], bool]
T = TypeVar("T")

_armed: ContextVar[OutOfTime | None] = ContextVar("armed_deadline", default=None)
_invocation: ContextVar[OutOfTime | None] = ContextVar("invocation_deadline", default=None)
_at_most_once: ContextVar[bool] = ContextVar("aws_call_at_most_once", default=False)


class DeadlineReached(Exception):
    """An AWS call failed after its work ran out of time: it is not tried again."""


class MaybeApplied(Exception):
    """An AWS call made `at_most_once` got no answer, or failed inside the service: it may have been applied, so it
    is not sent again."""


@contextlib.contextmanager
def _within(var: ContextVar[T], value: T) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def out_of_time_after(remaining_ms: Callable[[], int] | None, *, reserve_seconds: float) -> OutOfTime | None:
    """True once less than `reserve_seconds` of the invocation are left (read from the Lambda context's
    `get_remaining_time_in_millis` now, once); None without a context, for callers that run outside Lambda."""
    if remaining_ms is None:
        return None
    deadline = time.monotonic() + remaining_ms() / 1000 - reserve_seconds
    return lambda: time.monotonic() >= deadline


def ran_out(out_of_time: OutOfTime | None) -> bool:
    """Whether a deadline that may be absent (no Lambda context) has been reached."""
    return out_of_time is not None and out_of_time()


@contextlib.contextmanager
def invocation(remaining_ms: Callable[[], int] | None, *, reserve_seconds: float) -> Iterator[None]:
    """Handles one invocation: within it, `invocation_out_of_time()` is true once less than `reserve_seconds` of it
    are left (None without a Lambda context)."""
    with _within(_invocation, out_of_time_after(remaining_ms, reserve_seconds=reserve_seconds)):
        yield


def invocation_out_of_time() -> OutOfTime | None:
    return _invocation.get()


@contextlib.contextmanager
def armed(out_of_time: OutOfTime | None) -> Iterator[None]:
    """Within it, an AWS call of this thread that fails once `out_of_time()` is true raises DeadlineReached instead
    of being retried. Work that must finish whatever the time (undoing a send) runs outside it."""
    with _within(_armed, out_of_time):
        yield


@contextlib.contextmanager
def at_most_once() -> Iterator[None]:
    """Within it, an AWS call of this thread that may have been applied is not retried: one whose answer never
    came (a read timeout, a cut connection) or that failed inside the service (5xx). A refusal that certainly was
    not applied (throttling, a failed condition) is retried or raised by botocore as usual. For writes that are not
    idempotent, which a retry would apply twice (a rate-limit give-back, `ADD used :-n`)."""
    with _within(_at_most_once, True):
        yield


def no_retry_past_deadline_or_once(response: Any = None, caught_exception: Any = None, **_: Any) -> None:
    """botocore `needs-retry` handler (adapters.aws registers it on every client): raising here ends the call."""
    if _at_most_once.get() and (
        caught_exception is not None or (response is not None and response[0].status_code >= 500)
    ):
        raise MaybeApplied("the AWS call may have been applied; it is not sent again") from caught_exception
    out_of_time = _armed.get()
    if not ran_out(out_of_time):
        return
    if _would_be_retried(response, caught_exception):
        raise DeadlineReached("the AWS call failed with too little time left to try it again")


# Error codes botocore's standard retry mode takes for throttling (botocore.retries.standard): the service refused
# the request for its rate, so it was not applied and is taken later. What is left of them once botocore's retries
# are spent (or ended at a deadline) is a caller's "try again later" (`throttled`), not a failure of the gateway.
THROTTLING_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
# Error codes botocore's standard retry mode tries again (besides connection errors, 5xx and 429): throttling and
# transient ones. Any other error is the caller's answer (a failed condition, a validation error) and is raised as
# botocore raises it, deadline or not: the sweeper passes over an item whose claim condition fails, late or not.
RETRIED_ERROR_CODES = THROTTLING_ERROR_CODES | frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
    }
)


def error_code(error: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (None for any other exception)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return None if code is None else str(code).split("#")[-1]


def throttled(error: BaseException) -> bool:
    """Whether `error` is an AWS request refused for throttling (THROTTLING_ERROR_CODES), as botocore raises it once
    its retries are spent: nothing of that request was applied, and the same request later may well be taken."""
    return error_code(error) in THROTTLING_ERROR_CODES


def _would_be_retried(response: Any, caught_exception: Any) -> bool:
    """Whether a failed call is one botocore would try again (and so, past the deadline, is ended here instead)."""
    if caught_exception is not None:
        return True
    if response is None or "Error" not in response[1]:
        return False
    status = response[0].status_code
    code = str(response[1]["Error"].get("Code", "")).split("#")[-1]
    return status >= 500 or status == 429 or code in RETRIED_ERROR_CODES
