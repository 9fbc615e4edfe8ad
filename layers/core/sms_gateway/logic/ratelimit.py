"""Rate limiting shared by concurrent dispatchers: per-second token counters per scope (account, route)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from sms_gateway.observability import logger
from sms_gateway.ports import RateLimitStore, RecordedHold, ScopeHeld

# How long an acquire waits for a second with room in it before giving up, by default.
DEFAULT_MAX_WAIT_SECONDS = 5.0
# Waking a hair after the boundary, so a timer that fires a little early does not find the old second again.
_PAST_BOUNDARY = 0.001
# The seconds of a scope's counters a hold shuts at most (`RateLimiter.hold`): 24 BatchWriteItem requests, 600 write
# units on the scope's partition, within the 1,000 a second one partition takes. A dispatcher that takes a token of a
# held second learns the whole hold, however long; one that takes none until the held seconds are over meets the
# upstream's 429 itself (and holds the next ones). Until 2026-12-07 it was 60: past the first minute of a 5-minute
# Retry-After every container that had not taken a token in it offered the upstream messages, one 429 burst each.
MAX_HELD_SECONDS = 600

Scope = tuple[str, int | None]


def account_scope(account_id: str, limit: int | None) -> Scope:
    """The scope of an account's `rate_limit_per_second`."""
    return (f"account:{account_id}", limit)


def route_scope(upstream: str, limit: int | None) -> Scope:
    """The scope of an upstream route's messages per second."""
    return (f"route:{upstream}", limit)


def expected_grants(
    messages_by_account: Mapping[str, int], messages_by_upstream: Mapping[str, int] | None = None
) -> Callable[[str], int]:
    """How many tokens a holder with these messages to send may ask of a scope in all: an account's scope its own
    messages, a route's those offered first to its upstream (as far as the holder knows them yet: `expect` adds
    more). Until 2026-12-05 a route's scope expected every message of the holder, whatever its upstream: one
    message for a limited upstream took that upstream's whole second from every other dispatcher."""
    per_scope = {account_scope(account, None)[0]: count for account, count in messages_by_account.items()}
    per_scope |= {route_scope(upstream, None)[0]: count for upstream, count in (messages_by_upstream or {}).items()}
    return lambda scope: per_scope.get(scope, 0)


@dataclass(frozen=True)
class Grant:
    """Sends that may go now, and the second each limited scope counted them in (none when nothing was granted, or
    no scope is limited)."""

    count: int
    seconds: Mapping[str, int] = field(default_factory=dict)


class RateLimiter:
    """Grants up to `wanted` sends for the current second under every scope's limit.

    Each scope's count lives in the store, so every dispatcher container shares it. A grant costs one store
    write per limited scope, whatever its size; tokens a scope granted that a later scope refused are given
    back, so a counter never stays above what was really sent (see docs/rate-limits.md).

    A holder that knows how much it will ask (`expected`: a dispatcher invocation, its records' messages) has a
    write take more than asked, up to what it still expects and `take_ahead` at most, and keeps the rest for later
    asks in the same second: ten single sends of an account in one invocation cost one counter write, not ten.
    Kept tokens are counted in the store, so no second grants more than its limit; they are used only in their own
    second (a new second takes anew) and `release` gives back what is left of the current one.
    """

    def __init__(
        self,
        store: RateLimitStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        expected: Callable[[str], int] | None = None,
        take_ahead: int = 0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.max_wait_seconds = max_wait_seconds
        self.expected = expected
        self.take_ahead = take_ahead
        # By scope: the second of the tokens kept, and how many of them are counted there and not handed out yet.
        self._kept: dict[str, tuple[int, int]] = {}
        self._handed: Counter[str] = Counter()
        # By scope: the last second the store found full, so that the holder's other asks in it need no write.
        self._full: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # By scope: asks the holder learnt of after it was made (`expect`), on top of `expected`.
        self._learnt: Counter[str] = Counter()

    def expect(self, asks: Mapping[str, int]) -> None:
        """More asks the holder now expects, by scope: those of a record whose messages it read only when the record
        began. Nothing changes for a holder without expectations (it takes exactly what is asked)."""
        self._learnt.update(asks)

    async def acquire(self, scopes: Sequence[Scope], wanted: int, *, max_wait_seconds: float | None = None) -> int:
        """How many of `wanted` sends may go now: between 1 and `wanted`, all counted in the current second.

        Scopes are (name, limit per second) pairs; a limit of 0 or None is unlimited. When some scope's second
        is full, waits for the next second and tries again; returns 0 only when no second with room came before
        the deadline (`max_wait_seconds`, the limiter's own if not given), so the caller can retry later.
        """
        return (await self.grant(scopes, wanted, max_wait_seconds=max_wait_seconds)).count

    async def grant(
        self,
        scopes: Sequence[Scope],
        wanted: int,
        *,
        max_wait_seconds: float | None = None,
        lend_while_waiting: Collection[str] = (),
    ) -> Grant:
        """What `acquire` grants, and the second each limited scope counted it in (what `give_back` needs, should
        some of it not be used). Each time the grant finds no room, the tokens this holder keeps for the current
        second of the scopes named in `lend_while_waiting` go back to the store (their second's counter): while this
        ask waits on another scope (a route at its limit), other holders may send with them (the account's priority
        lane, in another invocation); kept until `release`, that second's room was lost to them. Raises ScopeHeld
        when a scope is held (`hold`), what earlier scopes counted for the grant given back."""
        if wanted <= 0:
            return Grant(0)
        # The most restrictive scope first: it is the one most likely to cut the grant, and what it grants
        # is all that the others are asked for.
        limited = sorted(((name, limit) for name, limit in scopes if limit), key=lambda scope: scope[1])
        if not limited:
            return Grant(wanted)
        granted, counted = await self._acquire(limited, wanted, max_wait_seconds, lend_while_waiting)
        return Grant(granted, dict(counted))

    async def acquire_one(self, scope: Scope, *, max_wait_seconds: float | None = None) -> int | None:
        """One token of one limited scope, as `acquire` grants it: the second it is counted in (what `give_back`
        needs, should it not be used), or None when no second with room came before the deadline."""
        name, limit = scope
        if not limit:
            raise ValueError(f"scope {name!r} has no limit: there is no token to take")
        granted, counted = await self._acquire([(name, limit)], 1, max_wait_seconds)
        return counted[0][1] if granted else None

    async def give_back(self, name: str, second: int, count: int = 1) -> None:
        """Tokens of scope `name` this holder was granted in `second` and will not use (the send did not happen):
        kept for its next ask while that second lasts (a holder taking ahead), else given back to the store. Only in
        the second they were counted in: given back in another, they would let that second grant more than its
        limit."""
        await self._give_back(name, second, count)
        if self._full.get(name) == second:
            del self._full[name]  # there is room in it again

    async def give_back_unused(self, seconds: Mapping[str, int], count: int = 1) -> None:
        """Tokens of a grant (`Grant.seconds`) that will not be sent, given back to each scope whose second is still
        the current one; a second that is over needs nothing (no write): it grants no more."""
        now = math.floor(self.clock())
        for name, second in seconds.items():
            if second == now:
                await self.give_back(name, second, count)

    async def _acquire(
        self,
        limited: Sequence[tuple[str, int]],
        wanted: int,
        max_wait_seconds: float | None,
        lend_while_waiting: Collection[str] = (),
    ) -> tuple[int, list[tuple[str, int]]]:
        deadline = self.clock() + (self.max_wait_seconds if max_wait_seconds is None else max_wait_seconds)
        while True:
            now = self.clock()
            granted, counted = await self._take(limited, math.floor(now), wanted)
            if granted:
                return granted, counted
            for name in lend_while_waiting:
                await self._lend_kept(name)
            wake_at = math.floor(now) + 1 + _PAST_BOUNDARY
            if wake_at > deadline:
                return 0, []
            await self.sleep(max(wake_at - self.clock(), 0.0))

    async def hold(self, name: str, seconds: float, *, resumed_at: float | None = None) -> RecordedHold | None:
        """Shuts scope `name` for every holder for `seconds` from now (up to MAX_HELD_SECONDS of its counters): a
        take there raises ScopeHeld, which says until when. Returns the scope's hold as recorded then (it may reach
        farther). A hold that cannot be written is logged (None): each other holder then learns of it by itself.
        `resumed_at`: when this holder sent the last request the scope's upstream accepted (`RecordedHold.with_hold`:
        each hold the upstream asked for before then is over, and is dropped; the others stay)."""
        now = self.clock()
        return await self._shut(self.store.hold_scope, name, now + seconds, asked_at=now, resumed_at=resumed_at)

    async def shut_more_of_hold(self, name: str, until: float) -> RecordedHold | None:
        """Shuts the counters of scope `name` from now up to MAX_HELD_SECONDS ahead (those not shut yet) for the hold
        recorded there, which this holder learnt ends at `until`: only while it still does (or later). A holder that
        learnt of a hold longer than its counters keeps them shut ahead of it, so that a holder that never learnt of
        it (a new one) still meets it. Returns the hold as recorded (None when none is, or it could not be written)."""
        return await self._shut(self.store.shut_more_of_hold, name, until)

    async def _shut(
        self, write: Callable[..., RecordedHold | None], name: str, until: float, **when: float | None
    ) -> RecordedHold | None:
        now = self.clock()
        first = math.floor(now)
        held = min(math.ceil(until) - first, MAX_HELD_SECONDS)
        if held <= 0:
            return None
        try:
            return await asyncio.to_thread(write, name, until, first_second=first, seconds=held, **when)
        except Exception:
            logger.warning("could not hold a rate-limit scope for the other dispatchers", extra={"scope": name})
            return None

    async def release(self) -> None:
        """Gives back the tokens kept for the current second (one write per scope that has some): the holder is
        done, and other holders may use them. Those kept for a second gone by need nothing: it is over."""
        second = math.floor(self.clock())
        kept, self._kept = self._kept, {}
        for name, (kept_second, count) in kept.items():
            if kept_second == second and count:
                await self._give_back_to_store(name, second, count)

    async def _lend_kept(self, name: str) -> None:
        """The tokens kept of scope `name` for the current second, back to the store (one write, none if none)."""
        second = math.floor(self.clock())
        async with self._locks.setdefault(name, asyncio.Lock()):
            count = self._kept_for(name, second) if self._current_second(name, second) == second else 0
            if not count:
                return
            self._kept[name] = (second, 0)
            if self._full.get(name) == second:
                del self._full[name]  # there is room in it again
        await self._give_back_to_store(name, second, count)

    async def _take(
        self, scopes: Sequence[tuple[str, int]], second: int, wanted: int
    ) -> tuple[int, list[tuple[str, int]]]:
        """What every scope granted, and the second each scope counted it in."""
        # Each scope is asked for what the one before it granted, so every scope taken so far holds `granted`.
        counted: list[tuple[str, int]] = []
        granted = wanted
        for name, limit in scopes:
            try:
                got, counted_in = await self._take_from(name, limit, second, granted)
            except ScopeHeld:
                # Nothing of the grant goes out: what the earlier scopes counted for it is theirs again.
                for earlier, earlier_second in counted:
                    await self._give_back(earlier, earlier_second, granted)
                raise
            if got < granted:
                # What the earlier scopes counted but will not be sent goes back, to stay usable this second.
                for earlier, earlier_second in counted:
                    await self._give_back(earlier, earlier_second, granted - got)
            granted = got
            if not granted:
                return 0, []
            counted.append((name, counted_in))
        return granted, counted

    async def _take_from(self, name: str, limit: int, second: int, wanted: int) -> tuple[int, int]:
        """Up to `wanted` tokens of one scope: from those kept for this second, and what they lack from the store,
        with as many more as the holder still expects to ask for (kept); and the second they are counted in."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            # An ask that began before a second boundary and reaches this scope after another ask kept tokens for
            # the new second is served in the new second: from those tokens, and any write for it. Asked for the
            # old second, it would write there and then keep its leftover over the new second's, dropping them.
            second = self._current_second(name, second)
            kept = self._kept_for(name, second)
            if kept < wanted and self._full.get(name) != second:
                expected = self.expected(name) + self._learnt[name] if self.expected else 0
                ahead = min(self.take_ahead, expected - self._handed[name])
                asked = max(wanted, ahead) - kept
                try:
                    got = await asyncio.to_thread(self.store.take_tokens, name, second, asked, limit)
                except ScopeHeld as hold:
                    if hold.until > self.clock():
                        raise
                    # The last second a hold shut, its wait over: full (its count shuts it), the next one grants.
                    # Told held, a dispatcher would hold the upstream back a second more and count a throttle.
                    got = 0
                if not got:
                    self._full[name] = second
                kept += got
            handed = min(wanted, kept)
            self._kept[name] = (second, kept - handed)
            self._handed[name] += handed
            return handed, second

    async def _give_back(self, name: str, second: int, count: int) -> None:
        if self.expected is None:
            await self._give_back_to_store(name, second, count)
            return
        # A holder that takes ahead keeps them for its next ask this second (`release` returns what is left).
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._current_second(name, second) == second:
                self._kept[name] = (second, self._kept_for(name, second) + count)
            # Else they were counted in a second that is over, and tokens are kept for a later one: nothing to
            # keep of them, and those are not overwritten.
            self._handed[name] -= count

    async def _give_back_to_store(self, name: str, second: int, count: int) -> None:
        """A give-back that fails (or may not have been applied: the store never repeats one) leaves the counter
        overstating its second: fewer sends that second, never more than the limit. The grant stands."""
        try:
            await asyncio.to_thread(self.store.give_back_tokens, name, second, count)
        except Exception:
            logger.warning(
                "could not give back rate-limit tokens; the counter overstates its second",
                extra={"scope": name, "second": second, "tokens": count},
            )

    def _current_second(self, name: str, second: int) -> int:
        """`second`, or a later one this holder keeps tokens for (only a holder taking ahead keeps any)."""
        kept_second, count = self._kept.get(name, (second, 0))
        return kept_second if kept_second > second and count else second

    def _kept_for(self, name: str, second: int) -> int:
        kept_second, count = self._kept.get(name, (second, 0))
        return count if kept_second == second else 0
