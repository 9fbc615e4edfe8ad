"""Rate limiting shared by concurrent dispatchers: per-second token counters per scope (account, route)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from sms_gateway.ports import RateLimitStore

# How long an acquire waits for a second with room in it before giving up, by default.
DEFAULT_MAX_WAIT_SECONDS = 5.0
# Waking a hair after the boundary, so a timer that fires a little early does not find the old second again.
_PAST_BOUNDARY = 0.001

Scope = tuple[str, int | None]


def account_scope(account_id: str, limit: int | None) -> Scope:
    """The scope of an account's `rate_limit_per_second`."""
    return (f"account:{account_id}", limit)


def route_scope(upstream: str, limit: int | None) -> Scope:
    """The scope of an upstream route's messages per second."""
    return (f"route:{upstream}", limit)


class RateLimiter:
    """Grants up to `wanted` sends for the current second under every scope's limit.

    Each scope's count lives in the store, so every dispatcher container shares it. A grant costs one store
    write per limited scope, whatever its size; tokens a scope granted that a later scope refused are given
    back, so a counter never stays above what was really sent (see docs/rate-limits.md).
    """

    def __init__(
        self,
        store: RateLimitStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.max_wait_seconds = max_wait_seconds

    async def acquire(self, scopes: Sequence[Scope], wanted: int, *, max_wait_seconds: float | None = None) -> int:
        """How many of `wanted` sends may go now: between 1 and `wanted`, all counted in the current second.

        Scopes are (name, limit per second) pairs; a limit of 0 or None is unlimited. When some scope's second
        is full, waits for the next second and tries again; returns 0 only when no second with room came before
        the deadline (`max_wait_seconds`, the limiter's own if not given), so the caller can retry later.
        """
        if wanted <= 0:
            return 0
        # The most restrictive scope first: it is the one most likely to cut the grant, and what it grants
        # is all that the others are asked for.
        limited = sorted(((name, limit) for name, limit in scopes if limit), key=lambda scope: scope[1])
        if not limited:
            return wanted
        deadline = self.clock() + (self.max_wait_seconds if max_wait_seconds is None else max_wait_seconds)
        while True:
            now = self.clock()
            granted = await self._take(limited, math.floor(now), wanted)
            if granted:
                return granted
            wake_at = math.floor(now) + 1 + _PAST_BOUNDARY
            if wake_at > deadline:
                return 0
            await self.sleep(max(wake_at - self.clock(), 0.0))

    async def _take(self, scopes: Sequence[tuple[str, int]], second: int, wanted: int) -> int:
        # Each scope is asked for what the one before it granted, so every scope taken so far holds `granted`.
        counted: list[str] = []
        granted = wanted
        for name, limit in scopes:
            got = await asyncio.to_thread(self.store.take_tokens, name, second, granted, limit)
            if got < granted:
                # What the earlier scopes counted but will not be sent goes back, to stay usable this second.
                for earlier in counted:
                    await asyncio.to_thread(self.store.give_back_tokens, earlier, second, granted - got)
            granted = got
            if not granted:
                return 0
            counted.append(name)
        return granted
