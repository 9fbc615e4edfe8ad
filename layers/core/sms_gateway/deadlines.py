"""The time an invocation has left, as a test its work asks between steps, so it stops and tidies up before
Lambda kills it instead of dying half-way."""

from __future__ import annotations

import time
from collections.abc import Callable

OutOfTime = Callable[[], bool]


def out_of_time_after(remaining_ms: Callable[[], int] | None, *, reserve_seconds: float) -> OutOfTime | None:
    """True once less than `reserve_seconds` of the invocation are left (read from the Lambda context's
    `get_remaining_time_in_millis` now, once); None without a context, for callers that run outside Lambda."""
    if remaining_ms is None:
        return None
    deadline = time.monotonic() + remaining_ms() / 1000 - reserve_seconds
    return lambda: time.monotonic() >= deadline
