"""The dispatcher's rate limiter against an in-memory counter store and a virtual clock; the priority lane."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

import pytest

from sms_gateway.domain.models import Batch
from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.ratelimit import RateLimiter, Scope, account_scope, expected_grants, route_scope
from sms_gateway.logic.send import dispatch_commands
from sms_gateway.ports import RecordedHold, ScopeHeld
from tests.fakes import HeldScopes, InMemoryStore

START = 1_767_398_400.25  # a quarter of a second into a second


class CountingStore(InMemoryStore):
    """Per-second counters with the DynamoDB adapter's semantics: a grant never passes the limit, a partial
    grant takes what is left. Thread-safe, as the limiter calls it through asyncio.to_thread."""

    def __init__(self) -> None:
        super().__init__()
        self.used: dict[tuple[str, int], int] = defaultdict(int)
        self.calls: list[tuple[str, str, int]] = []
        self.held_scopes = HeldScopes()
        self._counters = threading.Lock()

    def take_tokens(self, scope: str, second: int, wanted: int, limit: int) -> int:
        with self._counters:
            self.calls.append(("take", scope, second))
            self.held_scopes.check(scope, second)
            got = max(0, min(wanted, limit - self.used[(scope, second)]))
            self.used[(scope, second)] += got
            return got

    def give_back_tokens(self, scope: str, second: int, count: int) -> None:
        with self._counters:
            self.calls.append(("give_back", scope, second))
            self.used[(scope, second)] -= count

    def hold_scope(self, scope: str, until: float, *, first_second: int, seconds: int, **when: Any) -> RecordedHold:
        with self._counters:
            self.calls.append(("hold", scope, first_second))
            return self.held_scopes.hold(scope, until, first_second=first_second, seconds=seconds, **when)

    def shut_more_of_hold(self, scope: str, until: float, *, first_second: int, seconds: int) -> RecordedHold | None:
        with self._counters:
            return self.held_scopes.shut_further(scope, until, first_second=first_second, seconds=seconds)

    def per_second(self, scope: str) -> dict[int, int]:
        return {second: used for (name, second), used in self.used.items() if name == scope and used}


class VirtualClock:
    """Time moves only when someone sleeps; a sleeper wakes when the clock reaches its own wake-up time."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        wake_at = self.now + delay
        await asyncio.sleep(0)
        self.now = max(self.now, wake_at)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def limiter(store: CountingStore, clock: VirtualClock, max_wait_seconds: float = 30.0) -> RateLimiter:
    return RateLimiter(store, clock=clock, sleep=clock.sleep, max_wait_seconds=max_wait_seconds)


SECOND = int(START)


# ---------------------------------------------------------------------------------------------- one scope


def test_a_grant_within_the_limit_is_whole_and_counted_in_the_current_second(store, clock):
    # Given an account limited to 50 per second, with nothing sent this second
    # When a dispatcher asks for 10
    granted = asyncio.run(limiter(store, clock).acquire([account_scope("a", 50)], 10))
    # Then it gets all 10 at once, counted in this second, without waiting
    assert granted == 10
    assert store.per_second("account:a") == {SECOND: 10}
    assert clock.sleeps == []


def test_near_the_limit_the_grant_is_what_is_left_of_the_second(store, clock):
    # Given 45 of the account's 50 already sent this second
    store.used[("account:a", SECOND)] = 45
    # When a dispatcher asks for 10
    granted = asyncio.run(limiter(store, clock).acquire([account_scope("a", 50)], 10))
    # Then it gets the 5 left, without waiting for the rest
    assert granted == 5
    assert store.per_second("account:a") == {SECOND: 50}
    assert clock.sleeps == []


def test_a_full_second_waits_for_the_next_one(store, clock):
    # Given the account's 50 all sent this second
    store.used[("account:a", SECOND)] = 50
    # When a dispatcher asks for 10
    granted = asyncio.run(limiter(store, clock).acquire([account_scope("a", 50)], 10))
    # Then it slept once, to just past the start of the next second, and got its 10 counted there
    assert granted == 10
    assert len(clock.sleeps) == 1
    assert 0.75 <= clock.sleeps[0] < 0.76
    assert store.per_second("account:a") == {SECOND: 50, SECOND + 1: 10}


def test_no_room_before_the_deadline_gives_nothing_and_waits_no_longer(store, clock):
    # Given every second of the next ten full
    for second in range(SECOND, SECOND + 10):
        store.used[("account:a", second)] = 50
    # When a dispatcher may wait at most 2.5 seconds
    granted = asyncio.run(limiter(store, clock, max_wait_seconds=2.5).acquire([account_scope("a", 50)], 10))
    # Then it gets nothing, counted nowhere, and gave up without sleeping past its deadline
    assert granted == 0
    assert clock.now <= START + 2.5
    assert sum(store.per_second("account:a").values()) == 500


def test_a_zero_wait_tries_once(store, clock):
    store.used[("account:a", SECOND)] = 50
    granted = asyncio.run(limiter(store, clock).acquire([account_scope("a", 50)], 10, max_wait_seconds=0))
    assert granted == 0
    assert clock.sleeps == []
    assert len(store.calls) == 1


def test_asking_for_nothing_gets_nothing_and_touches_nothing(store, clock):
    assert asyncio.run(limiter(store, clock).acquire([account_scope("a", 50)], 0)) == 0
    assert store.calls == []


# ---------------------------------------------------------------------------------------------- concurrency


def test_concurrent_acquirers_never_get_more_than_the_limit_in_any_second(store, clock):
    # Given 40 dispatchers, each with 7 messages for one account limited to 50 per second
    rate = limiter(store, clock)

    async def send_all(count: int) -> int:
        sent = 0
        while sent < count:
            sent += await rate.acquire([account_scope("a", 50)], count - sent)
        return sent

    async def everyone() -> list[int]:
        return await asyncio.gather(*(send_all(7) for _ in range(40)))

    # When they all acquire at once
    sent = asyncio.run(everyone())
    # Then every dispatcher sent all of its messages
    assert sent == [7] * 40
    # And no second counted more than 50, and the counters add up to exactly what was granted
    per_second = store.per_second("account:a")
    assert max(per_second.values()) <= 50
    assert sum(per_second.values()) == 280
    # And 280 messages at 50 per second took at least six seconds
    assert len(per_second) >= 6


def test_concurrent_accounts_sharing_a_route_keep_both_limits(store, clock):
    # Given two accounts of 50 per second each, whose messages share one upstream route of 60 per second
    rate = limiter(store, clock)

    async def send_all(account: str, count: int) -> int:
        sent = 0
        while sent < count:
            sent += await rate.acquire([route_scope("sim", 60), account_scope(account, 50)], count - sent)
        return sent

    async def everyone() -> list[int]:
        return await asyncio.gather(*(send_all(account, 9) for account in ("a", "b") * 15))

    # When 30 dispatchers (15 per account) acquire at once
    sent = asyncio.run(everyone())
    # Then all 270 messages went, never more than 60 a second on the route nor 50 on an account
    assert sum(sent) == 270
    route = store.per_second("route:sim")
    assert max(route.values()) <= 60
    assert max(store.per_second("account:a").values()) <= 50
    assert max(store.per_second("account:b").values()) <= 50
    # And the route's counters add up to exactly what was granted: tokens refused elsewhere were given back
    assert sum(route.values()) == 270
    assert sum(store.per_second("account:a").values()) == sum(store.per_second("account:b").values()) == 135


# ---------------------------------------------------------------------------------------------- several scopes


def test_several_scopes_grant_the_least_any_of_them_allows(store, clock):
    # Given an account of 50 per second on a route with only 30 left this second
    store.used[("route:sim", SECOND)] = 170
    # When a dispatcher asks for 40
    granted = asyncio.run(limiter(store, clock).acquire([account_scope("a", 50), route_scope("sim", 200)], 40))
    # Then it gets 30, and each scope counted exactly those 30
    assert granted == 30
    assert store.per_second("route:sim") == {SECOND: 200}
    assert store.per_second("account:a") == {SECOND: 30}


def test_the_most_restrictive_scope_is_asked_first(store, clock):
    # Given a route of 200 named before an account of 50
    scopes = [route_scope("sim", 200), account_scope("a", 50)]
    # When a dispatcher asks for 80
    granted = asyncio.run(limiter(store, clock).acquire(scopes, 80))
    # Then the account was asked first, and the route only for the 50 the account allowed
    assert granted == 50
    assert [call[1] for call in store.calls] == ["account:a", "route:sim"]
    assert store.per_second("route:sim") == {SECOND: 50}


def test_a_later_scope_that_is_full_gets_the_earlier_scopes_tokens_given_back(store, clock):
    # Given a route whose second is full, for an account with room
    store.used[("route:sim", SECOND)] = 200
    # When a dispatcher asks for 10 and will not wait
    rate = limiter(store, clock)
    granted = asyncio.run(rate.acquire([account_scope("a", 50), route_scope("sim", 200)], 10, max_wait_seconds=0))
    # Then it gets nothing, and the account's counter is back where it was, its 10 tokens usable by others
    assert granted == 0
    assert store.per_second("account:a") == {}
    assert ("give_back", "account:a", SECOND) in store.calls


@pytest.mark.parametrize("unlimited", [None, 0])
def test_an_unlimited_scope_is_not_counted(store, clock, unlimited):
    # Given an account without a limit
    rate = limiter(store, clock)
    # When a dispatcher asks for 500
    # Then it gets all 500 and the store was never asked
    assert asyncio.run(rate.acquire([account_scope("a", unlimited)], 500)) == 500
    assert store.calls == []
    # And next to a limited route, only the route counts
    assert asyncio.run(rate.acquire([account_scope("a", unlimited), route_scope("sim", 200)], 500)) == 200
    assert [call[1] for call in store.calls] == ["route:sim"]


class GiveBackFails(CountingStore):
    """Counters whose give-backs fail (or may not have been applied: the store never sends one twice)."""

    def give_back_tokens(self, scope: str, second: int, count: int) -> None:
        self.calls.append(("give_back", scope, second))
        raise RuntimeError("ReadTimeoutError: the give-back may have been applied")


def test_a_give_back_that_fails_leaves_the_counter_overstated_and_the_grant_stands(clock):
    # Given an account with room and a route with 30 tokens left this second, and give-backs that fail
    store = GiveBackFails()
    store.used[("route:sim", SECOND)] = 170
    rate = limiter(store, clock)
    # When 100 are asked of both: the account grants 50, the route 30, and the account's 20 should go back
    granted = asyncio.run(rate.acquire([account_scope("a", 50), route_scope("sim", 200)], 100))
    # Then the 30 are granted all the same, and the account's counter keeps the 20 (fewer sends, never more)
    assert granted == 30
    assert ("give_back", "account:a", SECOND) in store.calls
    assert store.per_second("account:a") == {SECOND: 50}


# ---------------------------------------------------------------------------------------------- taking ahead


def holder(store: CountingStore, clock: VirtualClock, expects: int, take_ahead: int = 64) -> RateLimiter:
    """A limiter for a holder (a dispatcher invocation) that expects to ask for `expects` tokens of each scope."""
    return RateLimiter(
        store, clock=clock, sleep=clock.sleep, max_wait_seconds=30.0, expected=lambda _: expects, take_ahead=take_ahead
    )


def takes(store: CountingStore) -> list[tuple[str, str, int]]:
    return [call for call in store.calls if call[0] == "take"]


def ten_asks_one_at_a_time(rate: RateLimiter, scope: Scope) -> list[int]:
    """Ten asks of one token each, one after another, as ten sends in turn make them."""

    async def in_turn() -> list[int]:
        return [await rate.acquire([scope], 1) for _ in range(10)]

    return asyncio.run(in_turn())


def test_a_holder_expecting_ten_sends_takes_their_tokens_in_one_write(store, clock):
    # Given an invocation with ten single sends of one account limited to 50 a second
    rate = holder(store, clock, expects=10)
    # When each send asks for its token in turn, within one second
    granted = ten_asks_one_at_a_time(rate, account_scope("a", 50))
    # Then each got one, and the ten were counted by a single write
    assert granted == [1] * 10
    assert takes(store) == [("take", "account:a", SECOND)]
    assert store.per_second("account:a") == {SECOND: 10}


def test_a_holder_takes_ahead_no_more_than_its_cap_nor_the_scopes_limit(store, clock):
    # Given a holder expecting 500 sends, taking ahead at most 64, of an account limited to 40 a second
    rate = holder(store, clock, expects=500, take_ahead=64)
    # When it asks for one token on a route of 1,000 a second and one on the account
    asyncio.run(rate.acquire([route_scope("sim", 1000)], 1))
    asyncio.run(rate.acquire([account_scope("a", 40)], 1))
    # Then the route counted 64 and the account its whole second, 40, no more
    assert store.per_second("route:sim") == {SECOND: 64}
    assert store.per_second("account:a") == {SECOND: 40}


def test_one_message_for_a_limited_upstream_takes_one_token_not_the_whole_second_from_other_dispatchers(store, clock):
    def invocation(messages_by_account, messages_by_upstream=None):
        # As consumers._dispatch_all builds it: expectations from the records' messages, take-ahead = in-flight limit
        return RateLimiter(
            store,
            clock=clock,
            sleep=clock.sleep,
            expected=expected_grants(messages_by_account, messages_by_upstream),
            take_ahead=64,
        )

    # Given an upstream "slow" limited to 10 messages a second, and two dispatcher invocations side by side: one
    # holding a bulk record of 100 messages of which a single one is routed to "slow", the other a single send
    # routed to "slow"
    bulk, single = invocation({"cinema": 100}), invocation({"bank": 1}, {"slow": 1})
    bulk.expect({route_scope("slow", None)[0]: 1})

    async def both():
        # When each takes the one route token its message needs, in the same second (as the dispatcher does)
        first = await bulk.acquire([route_scope("slow", 10)], 1, max_wait_seconds=0.0)
        second = await single.acquire([route_scope("slow", 10)], 1, max_wait_seconds=0.0)
        return first, second

    granted = asyncio.run(both())
    # Then both go, and the second counts two: two messages of a route allowing ten a second (until 2026-12-05 a
    # route's scope expected every message of the invocation: the bulk invocation took all 10 tokens for its one
    # message and kept 9 until it ended, so the single send was held back a second, or handed back to the queue)
    assert granted == (1, 1)
    assert store.per_second("route:slow") == {SECOND: 2}


def test_a_holder_told_of_a_records_messages_for_a_route_takes_their_tokens_in_one_write(store, clock):
    # Given an invocation that expected nothing of a route when it began, then read a record of ten messages for it
    rate = RateLimiter(store, clock=clock, sleep=clock.sleep, expected=expected_grants({"a": 10}), take_ahead=64)
    rate.expect({route_scope("sim", None)[0]: 10})
    # When each message asks for its route token in turn
    granted = ten_asks_one_at_a_time(rate, route_scope("sim", 200))
    # Then the ten tokens were taken by one write, and no more than the ten
    assert granted == [1] * 10
    assert takes(store) == [("take", "route:sim", SECOND)]
    assert store.per_second("route:sim") == {SECOND: 10}


def test_tokens_kept_from_a_second_are_never_handed_out_in_the_next(store, clock):
    # Given a holder that took ten tokens for its second and used one
    rate = holder(store, clock, expects=10)
    asyncio.run(rate.acquire([account_scope("a", 50)], 1))
    # When the next second has begun and it asks again
    clock.now += 1
    granted = asyncio.run(rate.acquire([account_scope("a", 50)], 1))
    # Then the grant was counted anew in the new second (nine left to expect, so nine taken), not served from the
    # old second's nine
    assert granted == 1
    assert takes(store) == [("take", "account:a", SECOND), ("take", "account:a", SECOND + 1)]
    assert store.per_second("account:a") == {SECOND: 10, SECOND + 1: 9}


def test_release_gives_back_what_is_kept_for_the_current_second(store, clock):
    # Given a holder that took ten tokens and used three
    rate = holder(store, clock, expects=10)
    for _ in range(3):
        asyncio.run(rate.acquire([account_scope("a", 50)], 1))
    # When it is done within the second
    asyncio.run(rate.release())
    # Then the seven it did not use are counted no more, and usable by others this second
    assert store.per_second("account:a") == {SECOND: 3}
    # And releasing again gives back nothing twice
    asyncio.run(rate.release())
    assert store.per_second("account:a") == {SECOND: 3}


def test_a_grant_waiting_on_a_full_scope_lends_what_is_kept_of_the_scopes_it_names_to_others(store, clock):
    # Given a holder that took ten of an account's tokens ahead and used one, and a route whose second is full
    rate = holder(store, clock, expects=10)
    asyncio.run(rate.acquire([account_scope("a", 50)], 1))
    store.take_tokens("route:kannel", SECOND, 1, 1)
    # When it asks for the route's token and an account token together, lending the account's while it waits
    grant = asyncio.run(
        rate.grant(
            [account_scope("a", 50), route_scope("kannel", 1)], 1, max_wait_seconds=0, lend_while_waiting=["account:a"]
        )
    )
    # Then nothing is granted, and the nine kept account tokens are counted no more: others may use them this second
    assert grant.count == 0
    assert store.per_second("account:a") == {SECOND: 1}
    # And waiting again lends nothing more: nothing is kept, so no write
    calls = len(store.calls)
    asyncio.run(rate.grant([route_scope("kannel", 1)], 1, max_wait_seconds=0, lend_while_waiting=["account:a"]))
    assert [call for call in store.calls[calls:] if call[0] == "give_back"] == []


def test_a_token_given_back_in_its_second_is_granted_again_and_one_given_back_late_is_not(store, clock):
    # Given a route limited to one send a second, whose one token a holder took
    rate = RateLimiter(store, clock=clock, sleep=clock.sleep)
    second = asyncio.run(rate.acquire_one(route_scope("kannel", 1), max_wait_seconds=0))
    assert second == SECOND and asyncio.run(rate.acquire([route_scope("kannel", 1)], 1, max_wait_seconds=0)) == 0
    # When it gives it back unused within that second, another send may have it
    asyncio.run(rate.give_back("route:kannel", second))
    assert asyncio.run(rate.acquire([route_scope("kannel", 1)], 1, max_wait_seconds=0)) == 1
    # And a token given back after its second is over goes back to that second, never to the current one
    clock.now += 1
    asyncio.run(rate.give_back("route:kannel", second))
    assert asyncio.run(rate.acquire([route_scope("kannel", 1)], 1, max_wait_seconds=0)) == 1
    assert asyncio.run(rate.acquire([route_scope("kannel", 1)], 1, max_wait_seconds=0)) == 0
    # And no second ever counted more than its limit
    assert all(used <= 1 for used in store.per_second("route:kannel").values())


def test_a_grants_unused_tokens_go_back_to_each_scope_while_their_second_lasts_and_cost_nothing_after(store, clock):
    # Given a grant of one send under an account's limit and a route's, and the second each counted it in
    rate = RateLimiter(store, clock=clock, sleep=clock.sleep)
    grant = asyncio.run(rate.grant([account_scope("a", 50), route_scope("kannel", 1)], 1))
    assert (grant.count, dict(grant.seconds)) == (1, {"account:a": SECOND, "route:kannel": SECOND})
    # When the send does not happen and the grant goes back within its second
    asyncio.run(rate.give_back_unused(grant.seconds))
    # Then both scopes count it no more
    assert store.per_second("account:a") == store.per_second("route:kannel") == {}
    # And a grant given back once its second is over costs no write
    grant = asyncio.run(rate.grant([account_scope("a", 50)], 1))
    clock.now += 1
    calls = len(store.calls)
    asyncio.run(rate.give_back_unused(grant.seconds))
    assert len(store.calls) == calls and store.per_second("account:a") == {SECOND: 1}


def test_release_after_the_second_is_over_writes_nothing(store, clock):
    rate = holder(store, clock, expects=10)
    asyncio.run(rate.acquire([account_scope("a", 50)], 1))
    clock.now += 1
    asyncio.run(rate.release())
    assert [call for call in store.calls if call[0] == "give_back"] == []


def test_tokens_a_later_scope_refuses_are_kept_by_a_holder_and_released_at_its_end(store, clock):
    # Given a route whose second is full, and a holder expecting ten sends of an account with room
    store.used[("route:sim", SECOND)] = 200
    rate = holder(store, clock, expects=10)
    # When it asks for one without waiting
    granted = asyncio.run(rate.acquire([account_scope("a", 50), route_scope("sim", 200)], 1, max_wait_seconds=0))
    # Then it gets nothing; the account's tokens stay with it, not written back at once
    assert granted == 0
    assert [call for call in store.calls if call[0] == "give_back"] == []
    # And when it is done, they go back
    asyncio.run(rate.release())
    assert store.per_second("account:a") == {}


class SlowFirstWriteStore(CountingStore):
    """Its first write to `slow_scope` is held until the test lets it go (a write that outlasts a second)."""

    def __init__(self, slow_scope: str) -> None:
        super().__init__()
        self.slow_scope = slow_scope
        self.held = threading.Event()
        self.let_go = threading.Event()

    def take_tokens(self, scope: str, second: int, wanted: int, limit: int) -> int:
        if scope == self.slow_scope and not self.held.is_set():
            self.held.set()
            self.let_go.wait(10)
        return super().take_tokens(scope, second, wanted, limit)


def test_an_ask_that_began_in_the_second_before_uses_the_tokens_kept_for_this_one_and_keeps_them(clock):
    # Given a holder whose ask on account a and route sim began in a second, its account write still pending when
    # the next second began
    store = SlowFirstWriteStore("account:a")
    rate = holder(store, clock, expects=50)
    both = [account_scope("a", 50), route_scope("sim", 1000)]

    async def scenario() -> list[int]:
        late = asyncio.create_task(rate.acquire(both, 1))
        while not store.held.is_set():
            await asyncio.sleep(0.001)
        clock.now += 1
        # And meanwhile an ask for account b, in the new second, that took route tokens ahead for it
        meanwhile = await rate.acquire([account_scope("b", 50), route_scope("sim", 1000)], 1)
        store.let_go.set()
        granted = [meanwhile, await late]
        # When the late ask is done and another comes in the new second
        granted.append(await rate.acquire([account_scope("b", 50), route_scope("sim", 1000)], 1))
        return granted

    granted = asyncio.run(scenario())
    # Then every ask got its token, and the route was written once, for the new second: the late ask took its
    # token from those kept for the new second rather than writing for the old one and dropping them, so the next
    # ask found them still kept
    assert granted == [1, 1, 1]
    assert [call for call in takes(store) if call[1] == "route:sim"] == [("take", "route:sim", SECOND + 1)]
    assert store.per_second("route:sim") == {SECOND + 1: 50}


def test_tokens_a_late_ask_took_from_the_new_second_go_back_there_when_a_later_scope_refuses(clock):
    # Given a holder whose ask on routes x and sim and account a began in a second, its write on route x (asked
    # first, the least limit) still pending when the next second began; route sim's old second full
    store = SlowFirstWriteStore("route:x")
    store.used[("route:sim", SECOND)] = 1000
    rate = holder(store, clock, expects=50)
    scopes = [route_scope("x", 10), account_scope("a", 50), route_scope("sim", 1000)]

    async def scenario() -> list[int]:
        late = asyncio.create_task(rate.acquire(scopes, 1, max_wait_seconds=0))
        while not store.held.is_set():
            await asyncio.sleep(0.001)
        clock.now += 1
        # And meanwhile an ask on account a alone, in the new second, that took its tokens ahead
        granted = [await rate.acquire([account_scope("a", 50)], 1)]
        store.let_go.set()
        # When the late ask takes account a's token from the new second and route sim refuses it
        granted.append(await late)
        # And one more ask on account a comes, and the holder is done
        granted.append(await rate.acquire([account_scope("a", 50)], 1))
        await rate.release()
        return granted

    granted = asyncio.run(scenario())
    # Then the refused token went back to those kept for the new second: the account's counter holds the two sent
    assert granted == [1, 0, 1]
    assert [call for call in takes(store) if call[1] == "account:a"] == [("take", "account:a", SECOND + 1)]
    assert store.per_second("account:a") == {SECOND + 1: 2}


def three_containers_sending_one_account(take_ahead: bool) -> tuple[list[int], CountingStore]:
    """Three dispatcher containers, each an invocation of ten records of 7 messages for one account limited to 50 a
    second, every record asking for at most 3 tokens at a time until its messages are sent."""
    store, clock = CountingStore(), VirtualClock()
    holders = [
        holder(store, clock, expects=70)
        if take_ahead
        else RateLimiter(store, clock=clock, sleep=clock.sleep, max_wait_seconds=30.0)
        for _ in range(3)
    ]

    async def send_all(rate: RateLimiter, count: int) -> int:
        sent = 0
        while sent < count:
            sent += await rate.acquire([account_scope("a", 50)], min(count - sent, 3))
        return sent

    async def everyone() -> list[int]:
        sent = await asyncio.gather(*(send_all(rate, 7) for rate in holders for _ in range(10)))
        for rate in holders:
            await rate.release()
        return sent

    return asyncio.run(everyone()), store


def test_holders_taking_ahead_side_by_side_never_pass_the_limit_and_write_far_less():
    # When three containers' records all ask at once, with and without taking ahead
    sent, store = three_containers_sending_one_account(take_ahead=True)
    _, plain = three_containers_sending_one_account(take_ahead=False)
    # Then every record sent all of its messages, no second counted more than 50, and the counters hold at least
    # what was sent (tokens taken ahead and unused when their second ended stay counted in it)
    assert sent == [7] * 30
    per_second = store.per_second("account:a")
    assert max(per_second.values()) <= 50
    assert sum(per_second.values()) >= 210
    # And the counter writes (refused ones included) were far fewer than without taking ahead: a container asks the
    # store once a second, give or take, instead of once per record and ask
    assert len(takes(store)) * 3 < len(takes(plain))


# ---------------------------------------------------------------------------------------------- priority lane


def batch_of(recipients: int) -> Batch:
    return Batch(
        reference_id=7,
        account_id="a",
        sender="48974",
        text="Your code is 123456",
        encoding="GSM",
        parts=1,
        recipients=recipients,
        status=MessageStatus.QUEUED,
        created_at="2026-01-02T23:50:37Z",
    )


def test_a_single_recipient_batch_is_dispatched_in_the_priority_lane():
    # Given a batch to one recipient (an OTP)
    # When its dispatch commands are made
    commands = dispatch_commands(batch_of(1), [101])
    # Then its one command is a priority command
    assert [c.priority for c in commands] == [True]


def test_a_bulk_batch_is_not_priority_even_in_a_record_of_one():
    # Given a batch to 201 recipients: three records, the last with one message
    commands = dispatch_commands(batch_of(201), list(range(201)))
    # Then none of its records is priority
    assert [len(c.message_ids) for c in commands] == [100, 100, 1]
    assert not any(c.priority for c in commands)


def test_a_single_send_that_needs_no_order_has_a_lane_of_its_own_and_a_bulk_batch_never():
    from sms_gateway.adapters.sqs import dispatch_group_id

    # Given an account whose single sends need no order (single_sends_in_order: false)
    single = dispatch_commands(batch_of(1), [101], in_order=False)
    bulk = dispatch_commands(batch_of(201), list(range(201)), in_order=False)
    # Then its single send's record is a lane of its own, its bulk batch's records stay in the account's lane
    assert [dispatch_group_id(c) for c in single] == ["a#send#7"]
    assert [dispatch_group_id(c) for c in bulk] == ["a"] * 3
    # And by default a single send takes the account's priority lane
    assert [dispatch_group_id(c) for c in dispatch_commands(batch_of(1), [101])] == ["a#priority"]


# ------------------------------------------------------------------ records of one batch dispatched side by side


class ClockedUpstream:
    """Notes the virtual second of each submit, and answers after a virtual 50 ms."""

    name = "fake"
    echoes_client_ref = True

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.seconds: list[int] = []

    async def submit(self, request):
        from sms_gateway.domain.models import SubmitResult

        self.seconds.append(int(self.clock()))
        await self.clock.sleep(0.05)
        return SubmitResult(upstream_message_id=f"up-{request.client_ref}")


def test_records_of_one_batch_dispatched_side_by_side_keep_the_accounts_limit(store, clock):
    from datetime import UTC, datetime

    from sms_gateway.domain.models import Account, Credentials, Recipient, SendCommand
    from sms_gateway.logic.dispatch import DispatchDependencies, SubmitSlots, dispatch
    from sms_gateway.logic.send import SendDependencies, accept_send
    from tests.fakes import RecordingQueue, RecordingScheduler

    # Given an account limited to 40 messages a second and a batch of 150 (two records), dispatched as one
    # invocation dispatches them: both records at once, under one in-flight limit
    now = datetime(2026, 1, 3, tzinfo=UTC)
    store.create_account(
        Account(account_id="7", name="Cinema", credits=1000, senders=("48974",)),
        Credentials(token="t", apikey="k", partner_id="1", username="u", password="p"),
    )
    queue = RecordingQueue()
    deps = SendDependencies(
        accounts=store, messages=store, dispatch_queue=queue, scheduler=RecordingScheduler(), prices=store
    )
    recipients = tuple(Recipient(msisdn=f"+2348020{index:06d}") for index in range(150))
    accept_send(
        store.accounts["7"],
        SendCommand(account_id="7", sender="48974", text="hi", recipients=recipients),
        deps,
        now=now,
    )
    upstream = ClockedUpstream(clock)

    async def invocation() -> list[int]:
        dispatch_deps = DispatchDependencies(
            messages=store,
            accounts=store,
            upstreams_for=lambda _: [upstream],
            callback_base_url="https://gw.example/",
            clock=lambda: now,
            in_flight=SubmitSlots(64),
            limiter=limiter(store, clock),
            rate_scopes=[account_scope("7", 40)],
        )
        outcomes = await asyncio.gather(*(dispatch(record, dispatch_deps) for record in queue.commands))
        return [outcome.submitted for outcome in outcomes]

    # When they run
    submitted = asyncio.run(invocation())
    # Then all went out, the two records' grants counted against the one account counter: never more than 40 in
    # a second, so 150 messages took four seconds of grants (the limit counts grants, docs/rate-limits.md)
    assert [len(record.message_ids) for record in queue.commands] == [100, 50]
    assert submitted == [100, 50]
    per_second = store.per_second("account:7")
    assert max(per_second.values()) == 40
    assert sum(per_second.values()) == 150
    assert len(per_second) == 4
    # (no submit before its grant: the last ones went out in the fourth second at the earliest; when the first
    # went out depends on the store threads' timing against the virtual clock)
    assert min(upstream.seconds) >= SECOND and max(upstream.seconds) >= SECOND + 3


# ---------------------------------------------------------------------------------------------- a held scope


def test_a_hold_shuts_a_scope_for_every_holder_and_gives_back_what_earlier_scopes_counted(store, clock):
    # Given a route an upstream's Retry-After of 12.5 s held through one holder
    asyncio.run(limiter(store, clock).hold("route:up", 12.5))
    assert store.calls == [("hold", "route:up", SECOND)]
    # When another holder asks for an account's token and the route's, within the hold or at its last second
    other = limiter(store, clock)
    with pytest.raises(ScopeHeld) as held:
        asyncio.run(other.acquire([account_scope("a", 100), route_scope("up", 500)], 3))
    clock.now = START + 12.4
    with pytest.raises(ScopeHeld):
        asyncio.run(other.acquire([route_scope("up", 500)], 1))
    # Then it learns until when, and the account's tokens counted for the grant are its own again
    assert held.value.until == START + 12.5
    assert store.per_second("account:a") == {}
    # And once the hold is over the route grants again, no more than 600 of its seconds ever held (one request a 25)
    clock.now = START + 13
    assert asyncio.run(other.acquire([route_scope("up", 500)], 1)) == 1
    asyncio.run(limiter(store, clock).hold("route:up", 3600))
    assert len([key for key in store.held_scopes.holds if key[1] > SECOND + 13]) == 599


def test_a_holder_asking_in_a_holds_last_second_after_the_wait_is_over_waits_for_the_next_second(store, clock):
    # Given a route an upstream's Retry-After of 1 s held at a quarter into a second: its counters are shut for that
    # second and the next, the wait over a quarter into the next
    asyncio.run(limiter(store, clock).hold("route:up", 1.0))
    # When another holder asks for the route's token after the wait is over, still in the last second held
    clock.now = START + 1.5
    granted = asyncio.run(limiter(store, clock).acquire([route_scope("up", 500)], 1))
    # Then it is not told the route is held (the dispatcher would hold the upstream back a second more, and count a
    # throttle on the message): that second is full, and it is granted in the next one
    assert granted == 1
    assert store.per_second("route:up") == {SECOND + 2: 1}


def test_a_holder_whose_message_the_upstream_accepted_cuts_the_holds_asked_before_it_and_keeps_the_later_ones(
    store, clock
):
    # Given a route held for a day (the upstream's daily quota spent, its 429 met at SECOND), and 5000 s later an hour
    # the upstream asked another holder for (its hourly quota), which knew nothing of the day's
    asyncio.run(limiter(store, clock).hold("route:up", 86400))
    clock.now = START + 5000
    asyncio.run(limiter(store, clock).hold("route:up", 3600))
    # When a holder whose request the upstream accepted at 4000 (its daily quota raised) meets a 2 s 429 at 5100
    clock.now = START + 5100
    recorded = asyncio.run(limiter(store, clock).hold("route:up", 2, resumed_at=START + 4000))
    # Then the day's hold is over, but not the hour's, asked for after that: another holder taking a route token
    # within it learns the hour's end (cut to the 2 s, it would offer the upstream messages each met by a 429)
    assert recorded is not None and recorded.until == START + 8600
    clock.now = START + 5200
    with pytest.raises(ScopeHeld) as held:
        asyncio.run(limiter(store, clock).acquire([route_scope("up", 500)], 1))
    assert held.value.until == START + 8600
    # And a holder whose request the upstream accepted after the hour's ask cuts that one too
    clock.now = START + 5300
    recorded = asyncio.run(limiter(store, clock).hold("route:up", 2, resumed_at=START + 5250))
    assert recorded is not None and recorded.until == START + 5302


def test_holds_restating_one_the_upstream_asked_are_recorded_once_and_at_most_sixteen_are_recorded():
    from sms_gateway.ports import MAX_RUNNING_HOLDS, AskedHold, hold_written

    # Given a scope five holders met the same 300 s Retry-After on, a few milliseconds apart
    recorded = None
    for n in range(5):
        asked = SECOND + n / 1000
        recorded = hold_written(recorded, asked + 300, first_second=SECOND, seconds=300, asked_at=asked)
    # Then one hold is recorded running: as long as the latest, asked for when it was
    assert recorded is not None and recorded.running == (AskedHold(SECOND + 300.004, SECOND + 0.004),)
    # And when the upstream asked for 20 holds of different lengths, the longest 16 are kept, the hold their longest
    for n in range(20):
        recorded = hold_written(recorded, SECOND + 1000 + 100 * n, first_second=SECOND + n, seconds=600)
    assert len(recorded.running) == MAX_RUNNING_HOLDS
    assert [hold.until for hold in recorded.running] == [SECOND + 1000 + 100 * n for n in reversed(range(4, 20))]
    assert (recorded.until, recorded.through) == (SECOND + 2900, SECOND + 19 + 599)
