"""The DynamoDB rate-limit counters (DynamoStore.take_tokens / give_back_tokens) on moto."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sms_gateway.adapters import aws as clients
from sms_gateway.logic.ratelimit import RateLimiter, account_scope

SECOND = 1_767_398_400


@pytest.fixture
def store(aws: dict[str, str]) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store


def counter(aws: dict[str, str], scope: str, second: int) -> dict[str, Any] | None:
    found = clients.client("dynamodb").get_item(
        TableName=aws["TABLE_NAME"],
        Key={"pk": {"S": f"RATE#{scope}"}, "sk": {"S": str(second)}},
        ConsistentRead=True,
    )
    return found.get("Item")


def used(aws: dict[str, str], scope: str, second: int) -> int:
    item = counter(aws, scope, second)
    return int(item["used"]["N"]) if item else 0


def test_a_grant_within_the_limit_is_whole(aws, store):
    # Given a fresh second
    # When 10 tokens are asked of a limit of 50
    # Then all 10 are granted and counted
    assert store.take_tokens("account:a", SECOND, 10, 50) == 10
    assert used(aws, "account:a", SECOND) == 10


def test_the_counter_expires_a_minute_after_its_second(aws, store):
    store.take_tokens("account:a", SECOND, 1, 50)
    item = counter(aws, "account:a", SECOND)
    assert item is not None
    assert int(item["expires_at"]["N"]) == SECOND + 60


def test_near_the_limit_the_grant_is_what_is_left(aws, store):
    # Given 45 of 50 counted this second
    assert store.take_tokens("account:a", SECOND, 45, 50) == 45
    # When 10 more are asked
    # Then the 5 left are granted and the second is exactly full
    assert store.take_tokens("account:a", SECOND, 10, 50) == 5
    assert used(aws, "account:a", SECOND) == 50


def test_a_full_second_grants_nothing_and_changes_nothing(aws, store):
    # Given a full second
    store.take_tokens("account:a", SECOND, 50, 50)
    # When more is asked
    # Then nothing is granted and the counter stays at the limit
    assert store.take_tokens("account:a", SECOND, 1, 50) == 0
    assert used(aws, "account:a", SECOND) == 50


def test_asking_for_more_than_the_limit_on_a_fresh_second_gets_the_limit(aws, store):
    assert store.take_tokens("account:a", SECOND, 500, 50) == 50
    assert used(aws, "account:a", SECOND) == 50


def test_a_new_second_starts_fresh_and_scopes_are_separate(aws, store):
    # Given a full second for one account
    store.take_tokens("account:a", SECOND, 50, 50)
    # When the next second comes, or another scope asks in the same second
    # Then each gets its whole grant
    assert store.take_tokens("account:a", SECOND + 1, 50, 50) == 50
    assert store.take_tokens("account:b", SECOND, 50, 50) == 50
    assert used(aws, "account:a", SECOND) == 50


def test_given_back_tokens_can_be_taken_again(aws, store):
    # Given a full second, 20 of whose tokens are given back
    store.take_tokens("route:sim", SECOND, 200, 200)
    store.give_back_tokens("route:sim", SECOND, 20)
    # Then exactly those 20 can be taken again
    assert store.take_tokens("route:sim", SECOND, 50, 200) == 20
    assert used(aws, "route:sim", SECOND) == 200


def test_a_give_back_never_creates_a_counter(aws, store):
    store.give_back_tokens("route:sim", SECOND, 20)
    assert counter(aws, "route:sim", SECOND) is None


def lose_the_first_answer_to_an_update(
    client: Any, naming: bytes, meanwhile: Callable[[], Any] | None = None
) -> list[str]:
    """DynamoDB applies the first UpdateItem whose request names `naming`, and its answer is lost on the way back (a
    read timeout), as happens to any request now and then; `meanwhile` runs (another container's writes) before the
    caller learns so."""
    from botocore.exceptions import ReadTimeoutError
    from moto.core.models import botocore_stubber

    lost: list[str] = []

    def applied_then_lost(request: Any, **kwargs: Any) -> None:
        if lost or naming not in (request.body or b""):
            return None
        botocore_stubber(request=request, **kwargs)  # applied by the service ...
        lost.append(request.url)
        if meanwhile is not None:
            other = threading.Thread(target=meanwhile)
            other.start()
            other.join(timeout=60)
        raise ReadTimeoutError(endpoint_url=request.url)  # ... and the answer never arrives

    client.meta.events.register_first("before-send.dynamodb.UpdateItem", applied_then_lost)
    return lost


def test_a_give_back_whose_answer_was_lost_is_not_applied_twice_so_the_second_never_passes_its_limit(aws, store):
    from sms_gateway.deadlines import MaybeApplied

    # Given a second of a limit of 10 in which a holder took all 10 tokens and sent 6 (4 to give back)
    assert store.take_tokens("route:kannel", SECOND, 10, 10) == 10
    lost = lose_the_first_answer_to_an_update(store.client, b":minus")
    # When it gives the 4 back, and the answer to that write is lost
    with pytest.raises(MaybeApplied):
        store.give_back_tokens("route:kannel", SECOND, 4)
    assert lost, "the give-back's answer was lost once"
    # Then the give-back fails rather than being sent again, and no more than the 4 given back can be taken again
    # in that second: 6 + 4 = 10 sent, never more (until 2026-12-05 the client's retry sent the same ADD -4 again,
    # the counter fell to 2 while 6 were sent, and 8 more were granted: 14 in a second of 10)
    again = store.take_tokens("route:kannel", SECOND, 10, 10)
    assert 6 + again <= 10, (again, used(aws, "route:kannel", SECOND))


@pytest.mark.parametrize("wanted", [10, 7])
def test_threads_racing_for_one_second_get_exactly_the_limit(aws, store, wanted):
    # Given 20 dispatchers asking `wanted` tokens each of a limit of 50, all at once (7 leaves a partial grant)
    granted: list[int] = []
    start = threading.Barrier(20)

    def ask() -> None:
        start.wait()
        granted.append(store.take_tokens("account:a", SECOND, wanted, 50))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then exactly 50 were granted in total, and the counter says so
    assert len(granted) == 20
    assert sum(granted) == 50
    assert used(aws, "account:a", SECOND) == 50


def test_the_limiter_over_dynamodb_waits_for_the_next_second(aws, store):
    # Given an account whose current second is full
    store.take_tokens("account:a", SECOND, 50, 50)
    now = [SECOND + 0.5]

    async def sleep(delay: float) -> None:
        now[0] += delay

    rate = RateLimiter(store, clock=lambda: now[0], sleep=sleep)
    # When a dispatcher asks for 10
    granted = asyncio.run(rate.acquire([account_scope("a", 50)], 10))
    # Then it got them in the next second
    assert granted == 10
    assert used(aws, "account:a", SECOND + 1) == 10


def test_a_shorter_hold_written_over_a_longer_one_leaves_the_longer_wait(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given a route two dispatchers hold at the same moment for an upstream's 429s: one was asked to come back in
    # 300 s (its daily quota spent), the other in 90 s, whose puts land last on the same 60 seconds of counters
    store.hold_scope("route:up", SECOND + 300, first_second=SECOND, seconds=60)
    store.hold_scope("route:up", SECOND + 90, first_second=SECOND, seconds=60)
    # When a third dispatcher takes a route token within them
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 5, 1, 50)
    # Then it learns the longer wait: told 90 s, it would offer the upstream its messages from then on (the seconds
    # past the first 60 of these are not held), each met by a 429
    assert held.value.until == SECOND + 300
    # And a hold never lets a second grant: the counter stays past any limit
    assert used(aws, "route:up", SECOND + 5) > 10**6


def test_an_upstreams_retry_after_of_five_minutes_holds_its_route_for_every_dispatcher_the_whole_five_minutes(
    aws, store
):
    from sms_gateway.logic.ratelimit import route_scope
    from sms_gateway.ports import ScopeHeld

    # Given a dispatcher whose upstream answered 429 with Retry-After: 300, which holds the upstream's route for the
    # others
    now = [SECOND + 0.5]

    async def sleep(delay: float) -> None:
        now[0] += delay

    asyncio.run(RateLimiter(store, clock=lambda: now[0], sleep=sleep).hold("route:up", 300))
    # When another dispatcher container, which took no route token within the first minute (it had nothing for the
    # upstream then, or it is a new one), takes one 90 s and then 299 s later
    for later in (90, 299):
        now[0] = SECOND + later
        other = RateLimiter(store, clock=lambda: now[0], sleep=sleep)
        # Then it learns the upstream's wait, and offers it nothing: past the first 60 s it found a fresh second,
        # sent, and met a 429 of its own (and so did every container after it, one burst a minute)
        with pytest.raises(ScopeHeld) as held:
            asyncio.run(other.acquire([route_scope("up", 50)], 1, max_wait_seconds=0))
        assert held.value.until == SECOND + 300.5
    # And the hold ends when the upstream asked: a second past it grants
    now[0] = SECOND + 301
    assert asyncio.run(RateLimiter(store, clock=lambda: now[0], sleep=sleep).acquire([route_scope("up", 50)], 1)) == 1


def counted_puts(client: Any) -> list[int]:
    """The puts of each BatchWriteItem the client sends from now on (a hold's counters)."""
    puts: list[int] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        puts.append(sum(len(requests) for requests in params["RequestItems"].values()))

    client.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", note)
    return puts


def test_dispatcher_containers_meeting_the_same_429_at_once_hold_the_routes_seconds_once(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given five dispatcher containers whose submits in flight to one upstream all meet its 429 asking them to come
    # back in 300 s, a millisecond apart, each holding the route for the others at once
    puts = counted_puts(store.client)
    start = threading.Barrier(5)

    def container(n: int) -> None:
        start.wait()
        asyncio.run(RateLimiter(store, clock=lambda: SECOND + 0.5 + n / 1000).hold("route:up", 300))

    threads = [threading.Thread(target=container, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then the route's 301 seconds are written once, not once per container: five containers' 600-second holds were
    # 3,000 writes on the route's partition at once, three times what one partition takes in a second
    assert sum(puts) == 301, puts
    # And a container taking a route token within them learns the longest wait
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 200, 1, 50)
    assert held.value.until == pytest.approx(SECOND + 300.504)


def test_a_day_long_hold_is_shut_further_by_a_container_that_learnt_of_it_and_by_no_other_hold(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given a route held for a day (an upstream's daily quota spent): its first 600 seconds of counters shut
    store.hold_scope("route:up", SECOND + 86400, first_second=SECOND, seconds=600)
    # And a container that learnt of it at its route token, which tells it the counters' last second shut
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 10, 1, 50)
    assert (held.value.until, held.value.through) == (SECOND + 86400, SECOND + 599)
    # When it shuts more of it 400 s later, and a container that learnt only of a shorter hold tries the same
    puts = counted_puts(store.client)
    recorded = store.shut_more_of_hold("route:up", SECOND + 86400, first_second=SECOND + 400, seconds=600)
    assert store.shut_more_of_hold("route:up", SECOND + 3600, first_second=SECOND + 400, seconds=600) == recorded
    # Then only the seconds not shut yet are written, once, and a container taking a token past the first 600 learns
    # the day's wait
    assert sum(puts) == 400, (puts, recorded)
    assert (recorded.until, recorded.through) == (SECOND + 86400, SECOND + 999)
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 700, 1, 50)
    assert held.value.until == SECOND + 86400
    # And a scope no hold is recorded on is not shut by it
    assert store.shut_more_of_hold("route:other", SECOND + 86400, first_second=SECOND, seconds=600) is None
    assert store.take_tokens("route:other", SECOND + 10, 1, 50) == 1


def test_a_days_hold_is_replaced_only_by_a_container_whose_message_the_upstream_accepted_after_it_asked_for_it(
    aws, store
):
    from sms_gateway.ports import ScopeHeld

    def held_until(second: int) -> float:
        with pytest.raises(ScopeHeld) as held:
            store.take_tokens("route:up", second, 1, 50)
        return held.value.until

    # Given a route held for a day: the upstream's daily quota spent, its 429 met at SECOND
    store.hold_scope("route:up", SECOND + 86400, first_second=SECOND, seconds=600, asked_at=SECOND + 0.2)
    # When a container that had no message accepted since meets a 2 s 429 700 s later (its per-second limit)
    store.hold_scope("route:up", SECOND + 702, first_second=SECOND + 700, seconds=2, asked_at=SECOND + 700)
    # Then the day's hold stays: nothing says the upstream takes messages again
    assert held_until(SECOND + 701) == SECOND + 86400
    # And so it does when the upstream asked for the day again (at 800) after the request it accepted (sent at 750)
    store.hold_scope("route:up", SECOND + 86400, first_second=SECOND + 800, seconds=600, asked_at=SECOND + 800)
    store.hold_scope(
        "route:up", SECOND + 812, first_second=SECOND + 810, seconds=2, asked_at=SECOND + 810, resumed_at=SECOND + 750
    )
    assert held_until(SECOND + 811) == SECOND + 86400
    # But a container whose request sent at 1500 the upstream accepted, meeting a 2 s 429 at 1502, replaces it:
    # the upstream takes messages again, and a take learns its 2 s (until session 38 the day's end, all day)
    recorded = store.hold_scope(
        "route:up",
        SECOND + 1504,
        first_second=SECOND + 1502,
        seconds=2,
        asked_at=SECOND + 1502,
        resumed_at=SECOND + 1500,
    )
    assert recorded.until == SECOND + 1504
    assert held_until(SECOND + 1503) == SECOND + 1504
    assert store.take_tokens("route:up", SECOND + 1505, 1, 50) == 1


def test_a_hold_whose_answer_was_lost_while_another_container_wrote_over_it_still_shuts_its_seconds(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given two dispatcher containers meeting one upstream's 429 (Retry-After: 300) a moment apart, the first's write
    # of the route's hold item applied and its answer lost, the second's written over it before botocore sends the
    # first's again
    def second_container() -> None:
        store.hold_scope("route:up", SECOND + 301.5, first_second=SECOND + 1, seconds=301)

    lost = lose_the_first_answer_to_an_update(store.client, b"hold_version", meanwhile=second_container)
    # When the first holds the route
    store.hold_scope("route:up", SECOND + 300.5, first_second=SECOND, seconds=301)
    assert lost, "the first hold write's answer was lost once"
    # Then every second of the hold is shut for the other containers: the second container put only the second past
    # the first's (its hold item said the first would put them), and the first puts its own (until session 38
    # botocore sent its write again, which found the second's version, was taken as never applied, and put none:
    # every container met the upstream's 429 itself for the 300 s)
    for second in (SECOND, SECOND + 150, SECOND + 300):
        with pytest.raises(ScopeHeld):
            store.take_tokens("route:up", second, 1, 50)


def test_a_hold_whose_answer_alone_was_lost_is_taken_as_applied_and_puts_its_seconds_once(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given a dispatcher container meeting an upstream's 429 (Retry-After: 300), its write of the route's hold item
    # applied and its answer lost, and no other container writing the hold meanwhile
    lost = lose_the_first_answer_to_an_update(store.client, b"hold_version")
    puts = counted_puts(store.client)
    # When it holds the route
    recorded = store.hold_scope("route:up", SECOND + 300.5, first_second=SECOND, seconds=301)
    # Then it reads its own write on the item, not sent again, and puts the hold's seconds once
    assert lost, "the hold write's answer was lost once"
    assert (recorded.until, recorded.through) == (SECOND + 300.5, SECOND + 300)
    assert sum(puts) == 301, puts
    with pytest.raises(ScopeHeld):
        store.take_tokens("route:up", SECOND + 200, 1, 50)


def hold_met(store: Any, at: int, until: int, *, seconds: int = 600, resumed_at: int | None = None) -> Any:
    """The route's hold written by a container that met the upstream's 429 `at` seconds after SECOND, asking it to come
    back `until` seconds after SECOND, its last request the upstream accepted sent `resumed_at` seconds after SECOND
    (None: none since it started); it shuts `seconds` counters. The hold as recorded then."""
    resumed = None if resumed_at is None else SECOND + resumed_at
    return store.hold_scope(
        "route:up", SECOND + until, first_second=SECOND + at, seconds=seconds, asked_at=SECOND + at, resumed_at=resumed
    )


def test_a_hold_asked_after_the_upstream_last_accepted_is_not_cut_by_the_container_that_sent_it(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given a route held for a day (its 429 met at SECOND), the upstream taking a container's message sent at 4000
    # (its quota raised), and a new container meeting its hourly quota's 429 at 5000 (Retry-After: 3600), which only
    # lengthens the day's hold it knows nothing of
    hold_met(store, 0, 86400)
    hold_met(store, 5000, 8600)
    # When the container whose message was accepted at 4000 meets a 2 s 429 at 5100
    recorded = hold_met(store, 5100, 5102, seconds=2, resumed_at=4000)
    # Then the day's hold is over, but not the hour the upstream asked for at 5000, after it took that message:
    # cut to 2 s, every container offers the upstream messages once the hour's first 600 counters end, each met by
    # a 429, and the container that met the hour's 429 learns the cut when it shuts more of it, and forgets its own
    assert recorded.until == SECOND + 8600
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 5101, 1, 50)
    assert held.value.until == SECOND + 8600


def hold_item(aws: dict[str, str]) -> dict[str, Any]:
    """The route's hold item as DynamoDB holds it."""
    key = {"pk": {"S": "RATE#route:up"}, "sk": {"S": "HOLD"}}
    return clients.client("dynamodb").get_item(TableName=aws["TABLE_NAME"], Key=key, ConsistentRead=True)["Item"]


def running_holds(aws: dict[str, str]) -> list[tuple[float, float]]:
    """The holds the route's hold item records running: (until, asked_at), seconds after SECOND."""
    return [
        (float(hold["M"]["until"]["N"]) - SECOND, float(hold["M"]["asked_at"]["N"]) - SECOND)
        for hold in hold_item(aws)["running_holds"]["L"]
    ]


def written_by_the_release_before(aws: dict[str, str], **seconds: int) -> None:
    """The route's hold item written over by a dispatcher of the release before the list (during an upgrade): it sets
    these of its attributes (`held_until`, `held_since`, `held_through`; seconds after SECOND) and a version of its
    own, and leaves `running_holds` as it found it."""
    # As that release writes them: `held_through` a whole second, the others to the millisecond.
    values = {
        f":{name}": {"N": str(SECOND + at) if name == "held_through" else f"{SECOND + at:.3f}"}
        for name, at in seconds.items()
    }
    clients.client("dynamodb").update_item(
        TableName=aws["TABLE_NAME"],
        Key={"pk": {"S": "RATE#route:up"}, "sk": {"S": "HOLD"}},
        UpdateExpression="SET " + ", ".join(f"{name} = :{name}" for name in seconds) + ", hold_version = :version",
        ExpressionAttributeValues={**values, ":version": {"S": "v37"}},
    )


def test_a_hold_item_of_the_release_before_the_list_is_read_as_its_longest_hold_and_keeps_every_later_one(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given a route a dispatcher of the release before held for a day (its 429 met at SECOND): the hold item records
    # only its end, its last second shut and when it was asked for, as deployed stacks hold it
    clients.client("dynamodb").put_item(
        TableName=aws["TABLE_NAME"],
        Item={
            "pk": {"S": "RATE#route:up"},
            "sk": {"S": "HOLD"},
            "held_until": {"N": str(SECOND + 86400)},
            "held_through": {"N": str(SECOND + 599)},
            "held_since": {"N": str(SECOND)},
            "hold_version": {"S": "v37"},
            "expires_at": {"N": str(SECOND + 86460)},
        },
    )
    # When a container meets the upstream's hourly 429 at 5000, and then the container whose message the upstream
    # accepted at 4000 meets a 2 s one at 5100
    hold_met(store, 5000, 8600)
    assert running_holds(aws) == [(86400, 0), (8600, 5000)]
    recorded = hold_met(store, 5100, 5102, seconds=2, resumed_at=4000)
    # Then the day's hold read from the old item is over, and the hour's stays: every container learns it
    assert recorded.until == SECOND + 8600
    assert running_holds(aws) == [(8600, 5000), (5102, 5100)]
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 5500, 1, 50)
    assert held.value.until == SECOND + 8600


def test_a_hold_item_a_dispatcher_of_the_release_before_cut_is_not_read_back_from_its_stale_list(aws, store):
    # Given a route held for a day and an hour, its list recorded, and then cut by a dispatcher of the release before
    # (during an upgrade) whose message the upstream accepted after both: it sets the hold's end and ask alone
    hold_met(store, 0, 86400)
    hold_met(store, 5000, 8600)
    written_by_the_release_before(aws, held_until=6002, held_since=6000)
    # When a container of this release meets a 2 s 429 at 6001, no message accepted since it started
    recorded = hold_met(store, 6001, 6003, seconds=2)
    # Then the route is held as the cut left it, lengthened by the 2 s: not the day and the hour the stale list names
    assert recorded.until == SECOND + 6003
    assert running_holds(aws) == [(6003, 6001)]


def test_a_hold_item_records_at_most_sixteen_holds_running_the_longest(aws, store):
    from sms_gateway.ports import MAX_RUNNING_HOLDS

    # Given an upstream asking 20 containers, each a second after the other, to come back each 100 s later than the
    # one before, and then one whose hold ended before the last was asked for
    for n in range(20):
        hold_met(store, n, 1000 + 100 * n)
    # Then the hold item records the longest 16, not a list growing with every 429 the upstream answers
    assert MAX_RUNNING_HOLDS == 16
    assert running_holds(aws) == [(1000 + 100 * n, n) for n in reversed(range(4, 20))]
    assert float(hold_item(aws)["held_until"]["N"]) == SECOND + 2900
    # And a hold written once the shorter ones ended leaves only those still running
    hold_met(store, 2550, 2560, seconds=10)
    assert running_holds(aws) == [(2900, 19), (2800, 18), (2700, 17), (2600, 16), (2560, 2550)]


def test_a_days_hold_a_dispatcher_of_the_release_before_met_again_is_not_cut_by_an_acceptance_before_that(aws, store):
    from sms_gateway.ports import ScopeHeld

    # Given a route held for a day (its 429 met at SECOND), its list recorded
    hold_met(store, 0, 86400)
    # And a dispatcher of the release before (during an upgrade) meeting the day's 429 again at 5000, its Retry-After
    # counted to half a second before the recorded end: it only lengthens, so it keeps `held_until`, writes when the
    # upstream last asked for it (`held_since`), and leaves the list
    written_by_the_release_before(aws, held_since=5000)
    # When a container of this release whose message the upstream accepted at 4000 meets a 2 s 429 at 5100
    recorded = hold_met(store, 5100, 5102, seconds=2, resumed_at=4000)
    # Then the day's hold stays, as the release before would keep it: the upstream asked for it again after it took
    # that message
    assert recorded.until == SECOND + 86400
    with pytest.raises(ScopeHeld) as held:
        store.take_tokens("route:up", SECOND + 5101, 1, 50)
    assert held.value.until == SECOND + 86400
