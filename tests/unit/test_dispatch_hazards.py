"""Dispatch hazards found in review, each a way a message could be sent twice, lost or wrongly settled."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from dataclasses import replace
from datetime import timedelta

import pytest

from sms_gateway.domain.models import DeliveryReportMode, SubmitResult
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import UpstreamError
from sms_gateway.logic.dispatch import dispatch
from sms_gateway.logic.ratelimit import RateLimiter
from tests.fakes import FakeProvider, InMemoryStore, cinema_store
from tests.unit.test_logic import (
    NOW,
    Crash,
    RememberingUpstream,
    RouteFullLimiter,
    command,
    dispatch_deps,
    send,
)
from tests.unit.test_ratelimit import CountingStore, VirtualClock


@pytest.fixture
def store() -> InMemoryStore:
    return cinema_store()


def test_a_taken_over_message_held_back_by_its_route_limit_is_never_offered_to_another_upstream(store):
    # Given a deduplicating fallback that took a message (the primary answered 503) just before its dispatcher died
    primary, fallback = FakeProvider("primary"), RememberingUpstream("fallback", dies_after_submit=True)
    primary.failure = UpstreamError("503", permanent=False, unavailable=True)
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    route = replace(dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback])
    with pytest.raises(Crash):
        asyncio.run(dispatch(record, route))
    [message] = store.messages.values()
    assert fallback.delivered_refs == [message.key.to_ref()]  # the fallback has it: it is on its way to the phone
    # When the record comes back after the claim lapsed, while the fallback is at its own rate limit: the claim is
    # taken over and the message is to be asked again of the fallback alone, which is held back by the route limit
    fallback.dies_after_submit = False
    later = NOW + timedelta(minutes=5)
    limited = replace(
        route,
        clock=lambda: later,
        limiter=RouteFullLimiter(),
        route_limit=lambda name: 10 if name == "fallback" else None,
    )
    outcome = asyncio.run(dispatch(record, limited))
    assert outcome.taken_over == 1 and outcome.needs_retry
    # And it comes back a second later, the primary healthy again and the fallback's second not full
    primary.failure = None
    asyncio.run(dispatch(record, replace(route, clock=lambda: later + timedelta(seconds=2))))
    # Then the primary must not be offered it: the fallback may already have delivered it (sent twice otherwise)
    assert primary.submits[1:] == [], "the message went out a second time, through the primary"
    assert store.messages[message.key].maybe_taken_by == "fallback"


class LinkFailsOnce:
    """The store's link write for an upstream that reports by its own id fails once (DynamoDB throttling past
    botocore's retries)."""

    def __init__(self, store) -> None:
        self.store = store
        self.failed = False

    def __getattr__(self, name):
        return getattr(self.store, name)

    def link_upstream_id(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("ProvisionedThroughputExceededException")
        return self.store.link_upstream_id(*args, **kwargs)


def test_a_message_whose_upstream_id_could_not_be_linked_is_settled_by_its_report_not_expired(store):
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from sms_gateway.logic.settle import settle, settle_checks
    from tests.unit.test_logic import callback, clock, report, settle_deps

    # Given an upstream whose DLRs name only its own id (like Africa's Talking), and a message it took whose link
    # write failed: the message is recorded submitted all the same, with the upstream's id
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    provider = FakeProvider()
    flaky = replace(dispatch_deps(store, provider), messages=LinkFailsOnce(store))
    asyncio.run(dispatch(deps.dispatch_queue.commands[0], flaky))
    [message] = store.messages.values()
    assert (message.status, message.upstream_message_id) == (MessageStatus.SUBMITTED, "up-1")
    # And the upstream reports it delivered, by its own id: the report is held, as no link names the message
    provider.reports = [report(message, MessageStatus.DELIVERED, by_ref=False)]
    outcome = receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
    assert outcome.held == 1
    # When its settle check comes, the DLR wait over
    [check] = settle_checks([message], now=NOW)
    settled = settle(check, settle_deps(store, NOW + timedelta(hours=49)))
    # Then the held report settles it: delivered, announced to the client, not expired and refunded
    assert store.messages[message.key].status == MessageStatus.DELIVERED
    assert [change.message.status for change in settled.changes] == [MessageStatus.DELIVERED]
    assert len(provider.submits) == 1


def test_only_messages_expired_for_want_of_a_report_count_as_expired_without_a_dlr(store, monkeypatch):
    import json
    from types import SimpleNamespace

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sms_gateway import consumers
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from sms_gateway.logic.settle import settle_checks
    from sms_gateway.observability import metrics
    from tests.unit.test_logic import callback, clock, report

    # Given two messages to an upstream whose DLRs name only its own id, the link write of one failed, and both
    # reported delivered: one report is applied, the other held on the upstream's id
    _, deps = send(store, command(2, delivery_report=DeliveryReportMode.YES))
    provider = FakeProvider()
    asyncio.run(
        dispatch(
            deps.dispatch_queue.commands[0], replace(dispatch_deps(store, provider), messages=LinkFailsOnce(store))
        )
    )
    reported = list(store.messages.values())
    provider.reports = [report(m, MessageStatus.DELIVERED, by_ref=False) for m in reported]
    assert receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock)).held == 1
    # And a third message the upstream never reports
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
    [unreported] = [m for m in store.messages.values() if m.key not in {r.key for r in reported}]
    # When their settle check comes, the DLR wait over
    [check] = settle_checks(list(store.messages.values()), now=NOW)
    wiring = SimpleNamespace(
        store=store,
        settings=SimpleNamespace(dlr_wait_seconds=172_800),
        notify_queue=SimpleNamespace(publish=lambda notifications: None),
    )
    monkeypatch.setattr(consumers, "gateway", lambda: wiring)
    record = SQSRecord({"messageId": "m-1", "receiptHandle": "rh-1", "body": json.dumps(check), "attributes": {}})
    metrics.clear_metrics()
    try:
        answer = consumers._settle_record(record, check)
        counted = {name: sum(entry["Value"]) for name, entry in metrics.metric_set.items()}
    finally:
        metrics.clear_metrics()
    # Then the held report settles its message (delivered), and only the unreported one is expired for want of a
    # report: MissingDeliveryReportsAlarm reads this count (it counted the held report's delivery too)
    assert store.messages[unreported.key].status == MessageStatus.EXPIRED
    assert [store.messages[m.key].status for m in reported] == [MessageStatus.DELIVERED] * 2
    assert counted["MessagesExpiredWithoutDlr"] == 1
    assert counted["MessagesDelivered"] == 1 and counted["MessagesExpired"] == 1
    assert answer == {"expired": 1}


class DiesRecording:
    """The dispatcher's container dies (a Lambda timeout) as it records `status`: `submitted`, right after the
    upstream took the message; `delivered`, applying the reports that were held on the upstream's id."""

    def __init__(self, store, status) -> None:
        self.store = store
        self.status = status

    def __getattr__(self, name):
        return getattr(self.store, name)

    def transition(self, key, target, **kwargs):
        if target == self.status:
            raise Crash("the container died here")
        return self.store.transition(key, target, **kwargs)


def test_a_message_whose_dispatcher_died_before_recording_it_is_found_by_its_upstream_id_report(store):
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from tests.unit.test_logic import callback, clock, report

    # Given an upstream whose DLRs name only its own id, which took a message just before its dispatcher died
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    [record] = deps.dispatch_queue.commands
    provider = FakeProvider()
    with pytest.raises(Crash):
        asyncio.run(
            dispatch(
                record, replace(dispatch_deps(store, provider), messages=DiesRecording(store, MessageStatus.SUBMITTED))
            )
        )
    # And the record comes back once the claim lapsed: the message is recorded submitted, unconfirmed, not resent
    asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), clock=lambda: NOW + timedelta(minutes=5))))
    [message] = store.messages.values()
    assert message.status == MessageStatus.SUBMITTED and len(provider.submits) == 1
    # When the upstream reports it delivered, by its own id
    by_its_id = message.model_copy(update={"upstream_message_id": "up-1"})
    provider.reports = [report(by_its_id, MessageStatus.DELIVERED, by_ref=False)]
    receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock))
    # Then the report finds the message (the link was written before the status): delivered
    assert store.messages[message.key].status == MessageStatus.DELIVERED


def report_held_before_the_link(store):
    """A single send with delivery reports, and its upstream (naming only its own id in DLRs) whose DELIVERED
    report overtook the dispatcher's link and is held; the send's deps and the upstream."""
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.delivery import DeliveryDependencies, receive_delivery_reports
    from tests.unit.test_logic import callback, clock, report

    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    [queued] = store.messages.values()
    provider = FakeProvider()
    by_its_id = queued.model_copy(update={"upstream_message_id": "up-1"})
    provider.reports = [report(by_its_id, MessageStatus.DELIVERED, by_ref=False)]
    assert receive_delivery_reports(provider, callback(), DeliveryDependencies(store, store, clock)).held == 1
    return deps, provider


def test_reports_held_before_the_link_survive_a_dispatcher_that_died_before_applying_them(store):
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.settle import settle, settle_checks
    from tests.unit.test_logic import settle_deps

    # Given an upstream whose DLRs name only its own id, whose DLR for a message overtook the dispatcher's link
    deps, provider = report_held_before_the_link(store)
    # And the dispatcher linked the id and recorded the message submitted, then died applying the held report
    with pytest.raises(Crash):
        dying = replace(dispatch_deps(store, provider), messages=DiesRecording(store, MessageStatus.DELIVERED))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dying))
    [message] = store.messages.values()
    assert (message.status, message.upstream_message_id) == (MessageStatus.SUBMITTED, "up-1")
    # When its settle check comes, the DLR wait over
    [check] = settle_checks([message], now=NOW)
    settled = settle(check, settle_deps(store, NOW + timedelta(hours=49)))
    # Then the report the link took is applied: delivered and announced, not expired and refunded
    assert store.messages[message.key].status == MessageStatus.DELIVERED
    assert [change.message.status for change in settled.changes] == [MessageStatus.DELIVERED]


def test_a_settle_check_not_due_yet_is_put_off_as_settle_later_not_a_key_error(store, monkeypatch):
    import json
    from types import SimpleNamespace

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sms_gateway import consumers
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.settle import settle_checks

    # Given a settle check as the dispatcher queues it today (its batches listed under "batches")
    _, deps = send(store, command(1))
    asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
    [check] = settle_checks(list(store.messages.values()), now=utc_now())
    delays: list[int] = []
    wiring = SimpleNamespace(
        store=store,
        settings=SimpleNamespace(dlr_wait_seconds=172_800),
        notify_queue=SimpleNamespace(delay=lambda handle, seconds: delays.append(seconds), publish=lambda n: None),
    )
    monkeypatch.setattr(consumers, "gateway", lambda: wiring)
    record = SQSRecord({"messageId": "m-1", "receiptHandle": "rh-1", "body": json.dumps(check), "attributes": {}})
    # When the notifier receives it before the DLR wait is over
    # Then it is hidden for the next hop and put off with SettleLater (the documented outcome), not a KeyError on
    # the top-level "reference_id" that only checks of the old format had
    with pytest.raises(consumers.SettleLater):
        consumers._settle_record(record, check)
    assert delays and delays[0] > 0


def test_a_backlogged_record_is_not_dead_lettered_on_its_first_failure_because_the_store_could_not_count_it(
    monkeypatch,
):
    from types import SimpleNamespace

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sms_gateway import consumers

    # Given a record near the front of a deep backlog: delivered 30 times, each a hand-back behind the records ahead
    # of it (docs/dispatch.md, "A backlog longer than an invocation"), never once failed
    record = SQSRecord(
        {
            "messageId": "m-1",
            "receiptHandle": "rh-1",
            "body": "{}",
            "attributes": {"ApproximateReceiveCount": "30", "MessageGroupId": "7"},
        }
    )
    dead_lettered: list[str] = []

    class ThrottledStore:
        def count_record_failure(self, record_id, *, delivery, now):
            raise RuntimeError("ProvisionedThroughputExceededException")

    wiring = SimpleNamespace(
        store=ThrottledStore(),
        settings=SimpleNamespace(dispatch_max_attempts=6),
        dispatch_dead_letters=SimpleNamespace(dead_letter=lambda body, **_: dead_lettered.append(body)),
    )
    monkeypatch.setattr(consumers, "gateway", lambda: wiring)

    async def throttled(record, invocation):
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(consumers, "_dispatch_record", throttled)
    # When its first failure comes from a moment of DynamoDB throttling (which also keeps the failure from being
    # counted in the table)
    with pytest.raises(RuntimeError, match="ProvisionedThroughputExceededException"):
        asyncio.run(consumers.dispatch_record(record, SimpleNamespace(handed_back={})))  # type: ignore[arg-type]
    # Then it is retried, not parked in the dead-letter queue on its first failure (its messages stay queued and
    # charged until an operator replays it): "failures per record, never by deliveries"
    assert dead_lettered == []


@pytest.mark.parametrize(("failures", "retry_in"), [(1, [5]), (2, [30]), (3, []), (5, []), (None, [])])
def test_a_failed_record_is_retried_soon_at_first_then_after_the_visibility_timeout(monkeypatch, failures, retry_in):
    from types import SimpleNamespace

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sms_gateway import consumers

    # Given a record whose dispatch fails for a reason not the upstream's (a throttled write, a dropped connection),
    # for the `failures`th time (None: the store could not count it), in its 9th delivery
    record = SQSRecord(
        {
            "messageId": "m-1",
            "receiptHandle": "rh-1",
            "body": "{}",
            "attributes": {"MessageGroupId": "7", "ApproximateReceiveCount": "9"},
        }
    )
    returned: list[int] = []
    deliveries: list[str] = []

    class Store:
        def count_record_failure(self, record_id, *, delivery, now):
            deliveries.append(delivery)
            if failures is None:
                raise RuntimeError("ProvisionedThroughputExceededException")
            return failures

    wiring = SimpleNamespace(
        store=Store(),
        settings=SimpleNamespace(dispatch_max_attempts=6),
        dispatch_queue=SimpleNamespace(delay=lambda handle, seconds, source_arn=None: returned.append(seconds)),
    )
    monkeypatch.setattr(consumers, "gateway", lambda: wiring)

    async def fails(record, invocation):
        raise RuntimeError("connection reset")

    monkeypatch.setattr(consumers, "_dispatch_record", fails)
    # When it fails
    with pytest.raises(RuntimeError, match="connection reset"):
        asyncio.run(consumers.dispatch_record(record, SimpleNamespace(handed_back={})))  # type: ignore[arg-type]
    # Then its first two retries come within seconds (it holds its account's FIFO group until then: six minutes of
    # the queue's visibility timeout for a moment's fault), later ones after the visibility timeout, so its six
    # attempts still span a longer outage before it is parked
    assert returned == retry_in
    # And the failure is counted for that delivery, so a repeated write of the count counts it once
    assert deliveries == ["9"]


class RunsOutTheClock(FakeProvider):
    """Fails with `failure` and, answering, uses up the invocation's time for claims."""

    def __init__(self, name: str, clock_out: list[bool]) -> None:
        super().__init__(name)
        self.clock_out = clock_out

    async def submit(self, request):
        self.clock_out.append(True)
        return await super().submit(request)


def test_a_message_is_not_failed_over_once_the_invocation_has_no_time_left_for_a_submit(store):
    from sms_gateway.domain.status import MessageStatus

    # Given a route whose primary answers 503 only as the invocation's time for a submit and its recording runs out
    clock_out: list[bool] = []
    primary, fallback = RunsOutTheClock("primary", clock_out), FakeProvider("fallback")
    primary.failure = UpstreamError("503", permanent=False, unavailable=True)
    _, deps = send(store, command(1))
    [record] = deps.dispatch_queue.commands
    route = replace(
        dispatch_deps(store, primary), upstreams_for=lambda _: [primary, fallback], out_of_time=lambda: bool(clock_out)
    )
    # When the record is dispatched
    outcome = asyncio.run(dispatch(record, route))
    # Then the fallback is not offered it (its answer could come after Lambda ended the invocation, the message left
    # claimed and later taken for one that may have gone out): it is queued again, its claim released, the record
    # retried
    assert fallback.submits == []
    [message] = store.messages.values()
    assert message.status == MessageStatus.QUEUED and message.key not in store.claims
    assert outcome.retry == [message.message_id]
    # And the next delivery, with its whole time, fails it over
    asyncio.run(dispatch(record, replace(route, out_of_time=lambda: False)))
    assert len(fallback.submits) == 1
    assert store.messages[message.key].status == MessageStatus.SUBMITTED


@pytest.mark.parametrize("parts", [3, 5, 10])
def test_review_a_kannel_message_with_an_emoji_on_its_boundary_is_sent_whole_by_one_dispatcher_invocation(
    store, monkeypatch, parts
):
    import httpx

    from sms_gateway.adapters.providers.kannel import KannelProvider
    from sms_gateway.domain.segments import blind_cut_splits_a_pair, padded_for_blind_cut, segment
    from tests.integration.test_provider_kannel import sendsms_fields

    seen: list[httpx.Request] = []

    def smsbox(request: httpx.Request) -> httpx.Response:
        # A healthy smsbox answers at once
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    kannel = KannelProvider(
        name="fake",
        url="http://kannel:13013",
        username="u",
        password="p",
        callback_token="kannel-callback-token-0123",
        # docs/providers-smsc.md: keep max-messages at least the accounts' max_parts (10 unless changed)
        max_parts=10,
        client=httpx.AsyncClient(transport=httpx.MockTransport(smsbox)),
    )
    # Given a 3-, 5- or 10-part Cyrillic text with an emoji across Kannel's 67-unit boundary
    text = "я" * 66 + "😀" + "я" * {3: 66, 5: 200, 10: 600}[parts]
    assert segment(text).parts == parts and blind_cut_splits_a_pair(text)
    _, deps = send(store, command(1, text=text))
    [record] = deps.dispatch_queue.commands
    # When its record is dispatched
    outcome = asyncio.run(dispatch(record, dispatch_deps(store, kannel)))
    # Then it goes as one sendsms, the text padded so Kannel cuts it as counted, like any long message: it needs one
    # request's worst case, the dispatcher's reserve, and is never left partly sent
    [request] = seen
    assert sendsms_fields(request)["text"].decode() == padded_for_blind_cut(text)
    [message] = store.messages.values()
    assert (message.status, message.parts, outcome.retry) == (MessageStatus.SUBMITTED, parts, [])


class FlakyCounters(CountingStore):
    """Rate-limit counters whose first `failures` writes fail, as a hot counter item's throttling does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def take_tokens(self, scope: str, second: int, wanted: int, limit: int) -> int:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("ProvisionedThroughputExceededException: the route's counter item is throttled")
        return super().take_tokens(scope, second, wanted, limit)


def test_a_route_token_that_cannot_be_taken_leaves_the_message_unclaimed_and_it_is_sent_when_it_comes_back(store):
    # Given a queued message for an upstream with a route limit (an upstream that does not deduplicate submits),
    # and a route counter whose first write fails (DynamoDB throttles the hot counter item)
    _, sent = send(store, command(1))
    [record] = sent.dispatch_queue.commands
    provider = FakeProvider("kannel")
    counters = FlakyCounters(failures=1)
    vclock = VirtualClock()

    def deps(at):
        return replace(
            dispatch_deps(store, provider),
            clock=lambda: at,
            limiter=RateLimiter(counters, clock=vclock, sleep=vclock.sleep),
            route_limit=lambda _: 30,
        )

    # When the record is dispatched (its handling fails on the counter write) and comes back later, after the
    # queue's visibility timeout (360 s), with the counters healthy again
    with contextlib.suppress(Exception):
        asyncio.run(dispatch(record, deps(NOW)))
    assert store.claims == {}
    vclock.now += 400
    asyncio.run(dispatch(record, deps(NOW + timedelta(seconds=400))))
    # Then the message was really submitted to the upstream, once: no upstream ever saw it before, as no submit
    # was made (until 2026-12-05 the token was taken under the claim: the redelivery found the claim lapsed and
    # recorded the message submitted, `submit_unconfirmed`, never offered to anyone)
    [message] = store.messages.values()
    assert len(provider.submits) == 1, (message.status, message.error_code)
    assert message.status == MessageStatus.SUBMITTED and message.error_code is None


def test_a_failovers_route_token_that_cannot_be_taken_releases_the_claim_and_the_message_comes_back(store):
    # Given a message whose primary is down (503) and whose fallback has a route limit, and a route counter that
    # fails the fallback's token write (the token of the primary, unlimited, needs none)
    _, sent = send(store, command(1))
    [record] = sent.dispatch_queue.commands
    primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
    primary.failure = UpstreamError("503", permanent=False, unavailable=True)
    vclock = VirtualClock()
    route = replace(
        dispatch_deps(store, primary),
        upstreams_for=lambda _: [primary, fallback],
        limiter=RateLimiter(FlakyCounters(failures=1), clock=vclock, sleep=vclock.sleep),
        route_limit=lambda name: 10 if name == "fallback" else None,
    )
    # When the record is dispatched: the primary fails, and the failover's token cannot be taken under the claim
    outcome = asyncio.run(dispatch(record, route))
    # Then the claim is released and the message comes back, with only the primary's failure counted as an
    # attempt: the fallback was never offered it, so it is not taken for one an upstream may have
    [message] = store.messages.values()
    assert outcome.needs_retry and store.claims == {}
    assert fallback.submits == []
    assert (message.status, message.submit_attempts, message.maybe_taken_by) == (MessageStatus.QUEUED, 1, None)
    # And it is sent through the fallback when it comes back
    vclock.now += 5
    asyncio.run(dispatch(record, route))
    assert len(fallback.submits) == 1 and store.messages[message.key].status == MessageStatus.SUBMITTED


def upstream_configured_with(monkeypatch, rate_limit):
    """The dispatcher's reading of an upstream's limit, over a configuration saying `rate_limit_per_second`."""
    from sms_gateway.adapters import providers

    config = {"type": "kannel"} if rate_limit is None else {"type": "kannel", "rate_limit_per_second": rate_limit}
    monkeypatch.setattr(providers, "provider_config", lambda name: config)
    return providers.upstream_rate_limit


@pytest.mark.parametrize("configured", [0.5, 1.5, -5, "-5", "30/s", True, [30]])
def test_an_upstream_limit_that_is_not_a_whole_number_of_messages_a_second_is_refused_before_any_claim(
    store, monkeypatch, caplog, configured
):
    # Given an upstream whose configuration says rate_limit_per_second: 0.5 (one every two seconds was meant),
    # -5 (a typo) or text, and two queued messages for it
    _, sent = send(store, command(2))
    [record] = sent.dispatch_queue.commands
    provider = FakeProvider("slow")
    vclock = VirtualClock()
    deps = replace(
        dispatch_deps(store, provider),
        limiter=RateLimiter(CountingStore(), clock=vclock, sleep=vclock.sleep),
        route_limit=upstream_configured_with(monkeypatch, configured),
    )
    # When the record is dispatched
    with pytest.raises(ValueError, match="rate_limit_per_second"):
        asyncio.run(dispatch(record, deps))
    # Then the record fails with an error naming the parameter (retried, then dead-lettered with that reason),
    # logged as an error, and nothing is claimed or sent: until 2026-12-05 0.5 and 1.5 were read as int() 0
    # (unlimited: both went in the same second) and 1, and a negative limit held every message back as "at its
    # rate limit" without counting an attempt, until it expired
    assert provider.submits == [] and store.claims == {}
    assert [m.submit_attempts for m in store.messages.values()] == [0, 0]
    assert any(r.levelname == "ERROR" and "/upstreams/slow" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("configured", "limit"), [(None, None), (0, None), (30, 30), (30.0, 30), (" 30", 30)])
def test_an_upstream_limit_is_a_whole_number_and_absent_or_zero_is_unlimited(monkeypatch, configured, limit):
    assert upstream_configured_with(monkeypatch, configured)("slow") == limit


def test_a_duplicate_delivery_whose_claim_is_held_gives_back_the_route_token_it_took(store):
    from sms_gateway.logic.ratelimit import RateLimiter, route_scope

    # Given a queued message for an upstream limited to 1 message a second, claimed by a live dispatcher (whose own
    # token is its business: the count starts from here)
    _, sent = send(store, command(1))
    [record] = sent.dispatch_queue.commands
    [message] = store.messages.values()
    provider = FakeProvider("kannel")
    counters, clock = CountingStore(), VirtualClock()
    scope = route_scope("kannel", None)[0]
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=60, upstream="kannel").outcome.value
    # When a duplicate SQS delivery of its record is dispatched meanwhile (the claim is held)
    deps = replace(
        dispatch_deps(store, provider),
        limiter=RateLimiter(counters, clock=clock, sleep=clock.sleep),
        route_limit=lambda _: 1,
    )
    outcome = asyncio.run(dispatch(record, deps))
    # Then it sends nothing and comes back later, and the route token it took before the claim is given back: the
    # second's one send is still there for the route's other messages
    assert provider.submits == [] and outcome.retry == [message.message_id]
    assert counters.per_second(scope) == {}


@pytest.mark.parametrize("limited", ["account", "route"])
def test_a_record_starved_by_a_rate_limit_waits_it_out_in_the_invocation_whichever_scope_limits_it(store, limited):
    from sms_gateway.logic.ratelimit import account_scope

    # Given a bulk record of 100 messages, limited to 2 messages a second either by the account or by its upstream
    # (an SMSC bind of 2 TPS), and an invocation with 40 s left for claims (the handler waits out the rate limit)
    _, sent = send(store, command(100))
    [record] = sent.dispatch_queue.commands
    provider = FakeProvider("kannel")
    counters, vclock = CountingStore(), VirtualClock()
    deps = replace(
        dispatch_deps(store, provider),
        limiter=RateLimiter(counters, clock=vclock, sleep=vclock.sleep),
        rate_scopes=[account_scope("7", 2 if limited == "account" else None)],
        route_limit=lambda _: 2 if limited == "route" else None,
        wait_out_the_rate_limit=True,
        out_of_time=lambda: vclock.now > vclock_start + 40,
    )
    vclock_start = vclock.now
    # When one delivery of the record is dispatched
    outcome = asyncio.run(dispatch(record, deps))
    # Then it sends at the limit for the invocation's time (about 80), under the route's limit as under the
    # account's. Until 2026-12-06, under the route's it sent about 6 and handed the other 94 back after a second.
    # Each such hand-back is one more invocation, and each invocation is one more receive of the nine records SQS
    # hands over behind it in the account's FIFO group: a 1,000-message batch to a 2-a-second upstream took about 17
    # deliveries per record, so its later records were received over 100 times (maxReceiveCount) and dead-lettered
    # unsent.
    assert len(provider.submits) >= 60, (len(provider.submits), len(outcome.retry))


def account_faster_than_its_route(store, limiter=None):
    """A bulk record of 100 messages for an account limited to 50 a second, to an upstream limited to 2 a second,
    and the deps to dispatch it for 10 virtual seconds with `limiter` (a plain one on the counters by default)."""
    from sms_gateway.logic.ratelimit import account_scope

    _, sent = send(store, command(100))
    [record] = sent.dispatch_queue.commands
    provider = FakeProvider("kannel")
    counters, vclock = CountingStore(), VirtualClock()
    start = vclock.now
    deps = replace(
        dispatch_deps(store, provider),
        limiter=(limiter or RateLimiter)(counters, clock=vclock, sleep=vclock.sleep),
        rate_scopes=[account_scope("7", 50)],
        route_limit=lambda _: 2,
        wait_out_the_rate_limit=True,
        out_of_time=lambda: vclock.now > start + 10,
    )
    return record, provider, counters, start, deps


def test_account_tokens_of_messages_their_route_holds_back_go_back_for_the_accounts_other_messages(store):
    # Given a bulk record of 100 messages for an account limited to 50 a second, to an upstream limited to 2 a second
    record, provider, counters, start, deps = account_faster_than_its_route(store)
    # When one delivery of the record is dispatched
    asyncio.run(dispatch(record, deps))
    # Then the account's second holds the tokens of the messages sent in it, not of the 50 it granted at first: the
    # 48 its upstream held back went back, for the account's single sends (its priority lane) that second, and each
    # took its token again with the route's. Until 2026-12-06 the account's first second was full for nothing.
    per_second = counters.per_second("account:7")
    assert per_second[int(start)] == 2, per_second
    assert sum(per_second.values()) <= len(provider.submits) + 2, (per_second, len(provider.submits))


def primary_down_and_fallback_limited(store, limit: int):
    """A bulk record of 100 messages whose primary is down (503) and whose fallback is healthy but limited to `limit`
    messages a second (its Parameter Store rate_limit_per_second), and the deps to dispatch it."""
    _, sent = send(store, command(100))
    [record] = sent.dispatch_queue.commands
    primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
    primary.failure = UpstreamError("503", permanent=False, unavailable=True)
    deps = replace(
        dispatch_deps(store, primary),
        upstreams_for=lambda _: [primary, fallback],
        route_limit=lambda name: limit if name == "fallback" else None,
    )
    return record, primary, fallback, deps


def test_messages_a_rate_limited_fallback_can_carry_are_not_failed_while_the_primary_is_down(store):
    # Given a bulk record of 100 messages whose primary is down (503) and whose fallback is healthy but limited to 5
    # messages a second (its Parameter Store rate_limit_per_second)
    record, _, fallback, deps = primary_down_and_fallback_limited(store, 5)
    counters, vclock = CountingStore(), VirtualClock()
    # When the record comes back, after its backoff each time, until nothing in it is left to retry (the primary
    # stays down throughout), each delivery with its invocation's limiter over the shared counters
    for _ in range(100):
        limiter = RateLimiter(counters, clock=vclock, sleep=vclock.sleep)
        outcome = asyncio.run(dispatch(record, replace(deps, limiter=limiter)))
        if not outcome.needs_retry:
            break
        vclock.now += outcome.retry_delay(backoff_base=5)
    # Then every message went out through the fallback, at its limit. Until 2026-12-06 74 of them were failed
    # `upstream_unavailable` and refunded on their 6th delivery: each delivery offered every message to the fallback
    # for a second, and each one its limit held back counted the primary's failure as an attempt
    statuses = {(m.status, m.error_code) for m in store.messages.values()}
    assert statuses == {(MessageStatus.SUBMITTED, None)}, (len(fallback.submits), statuses)


def test_with_the_primary_down_a_record_waits_for_its_rate_limited_fallback_in_the_invocation(store):
    from sms_gateway.logic.ratelimit import account_scope

    # Given a bulk record of 100 messages whose primary is down (503) and whose fallback is limited to 2 messages a
    # second, and an invocation with 40 s left for claims (the handler waits out the rate limit)
    record, primary, fallback, deps = primary_down_and_fallback_limited(store, 2)
    counters, vclock = CountingStore(), VirtualClock()
    start = vclock.now
    deps = replace(
        deps,
        limiter=RateLimiter(counters, clock=vclock, sleep=vclock.sleep),
        rate_scopes=[account_scope("7", 50)],
        wait_out_the_rate_limit=True,
        out_of_time=lambda: vclock.now > start + 40,
    )
    # When one delivery of the record is dispatched
    outcome = asyncio.run(dispatch(record, deps))
    # Then the fallback carried them at its limit for the invocation's time, each message waiting for its token
    # unclaimed rather than going back to the queue after a second (each delivery one more receive of the records
    # behind it in the account's FIFO group); the rest come back with the record, no attempt counted, none claimed
    assert len(fallback.submits) >= 70, len(fallback.submits)
    assert all(used <= 2 for used in counters.per_second("route:fallback").values())
    queued = [m for m in store.messages.values() if m.status == MessageStatus.QUEUED]
    assert sorted(outcome.retry) == sorted(m.message_id for m in queued)
    # (but a message that took its fallback's token as the invocation's time ran out, between its primary's 503 and
    # the failover, counts the primary's failure: too late to offer it the fallback; at 2 tokens a second, at most a
    # couple of seconds' worth)
    attempted = [m.submit_attempts for m in queued if m.submit_attempts]
    assert set(attempted) <= {1} and len(attempted) <= 4, attempted
    assert store.claims == {}
    # And the account's seconds counted no more than was sent in them, and a token for each
    assert sum(counters.per_second("account:7").values()) <= len(primary.submits) + len(fallback.submits)


def test_a_dispatcher_change_is_rebuilt_whatever_order_the_store_gives_the_status_times():
    from sms_gateway.domain.models import Message
    from sms_gateway.logic.dispatch import change_made_by_dispatch
    from sms_gateway.logic.notify import dlr_notification

    created, submitted, delivered = "2026-12-06T10:00:00.000000Z", "2026-12-06T10:00:01.000000Z", "2026-12-06T10:00:09Z"
    base = Message(
        message_id=71800327346180097,
        reference_id=71800327346180096,
        account_id="7",
        msisdn="+2348030000000",
        sender="48974",
        text="When was the last time you went to the cinema?",
        encoding="GSM7",
        parts=1,
        status=MessageStatus.SUBMITTED,
        sequence=2,
        delivery_report=DeliveryReportMode.YES,
        upstream="simulator",
        created_at=created,
    )
    # Given a message a send accepted and queued at one instant and a dispatcher submitted, as the store reads it
    # back with its status times in either order (a DynamoDB map has none)
    for status_at in (
        {"accepted": created, "queued": created, "submitted": submitted},
        {"queued": created, "accepted": created, "submitted": submitted},
    ):
        message = base.model_copy(update={"status_at": status_at})
        # When a redelivery of its dispatch record rebuilds the change the dispatcher made, to announce it again
        change = change_made_by_dispatch(message)
        # Then it is the `submitted` report, under the webhook id of its first announcement
        assert change is not None, f"no change rebuilt from {list(status_at)}"
        assert dlr_notification(change)["id"] == f"dlr_{message.message_id}_2"
    # And after the final report too, the rebuilt `submitted` keeps its own sequence
    later = base.model_copy(
        update={
            "status": MessageStatus.DELIVERED,
            "sequence": 3,
            "status_at": {"queued": created, "accepted": created, "submitted": submitted, "delivered": delivered},
        }
    )
    change = change_made_by_dispatch(later)
    assert change is not None and change.message.status == MessageStatus.SUBMITTED and change.message.sequence == 2


class ReleaseFails:
    """The store's claim release failing `times` times (a DynamoDB 500 or throttling past botocore's retries)."""

    def __init__(self, store, times: int) -> None:
        self.store = store
        self.times = times

    def __getattr__(self, name):
        return getattr(self.store, name)

    def release_claim(self, *args, **kwargs):
        if self.times:
            self.times -= 1
            raise RuntimeError("InternalServerError")
        return self.store.release_claim(*args, **kwargs)


def refused_for_now(store):
    """A single send's record, and an upstream (not deduplicating) answering 503 for now."""
    _, deps = send(store, command(1))
    [record] = deps.dispatch_queue.commands
    upstream = FakeProvider()
    upstream.failure = UpstreamError("503", permanent=False, unavailable=True)
    return record, upstream


def test_a_message_its_upstream_refused_whose_claim_release_failed_is_still_sent_when_its_record_comes_back(store):
    # Given a single send whose upstream (not deduplicating) answers 503 for now, and the claim's release after that
    # answer failing in the store for the whole delivery
    record, upstream = refused_for_now(store)
    with pytest.raises(RuntimeError):
        asyncio.run(dispatch(record, replace(dispatch_deps(store, upstream), messages=ReleaseFails(store, 99))))
    # When the record comes back (after the failed record's retries, once the lease has lapsed) and the upstream
    # has recovered
    upstream.failure = None
    later = replace(dispatch_deps(store, upstream), clock=lambda: NOW + timedelta(minutes=5))
    asyncio.run(dispatch(record, later))
    # Then the message is sent: the only submit so far was refused, so no upstream has it
    [message] = store.messages.values()
    assert len(upstream.submits) == 2, "the message was never sent again after its refused submit"
    assert (message.status, message.error_code, message.submit_attempts) == (MessageStatus.SUBMITTED, None, 1)


def test_a_claim_release_that_fails_a_moment_is_written_again_and_the_record_handed_back_as_usual(store):
    # Given a refused submit whose claim release fails once in the store
    record, upstream = refused_for_now(store)
    # When the record is dispatched
    outcome = asyncio.run(dispatch(record, replace(dispatch_deps(store, upstream), messages=ReleaseFails(store, 1))))
    # Then the release is written again: the message is queued unclaimed, its attempt counted, and its record comes
    # back after the usual backoff
    [message] = store.messages.values()
    assert outcome.retry == [message.message_id] and outcome.failed_attempts == 1
    assert (message.status, message.submit_attempts, store.claims) == (MessageStatus.QUEUED, 1, {})


def test_a_failover_the_claim_could_not_name_is_not_taken_for_one_the_fallback_may_have(store):
    # Given a primary that answers 503 for now and a fallback, and the store failing to name the fallback on the claim
    record, primary = refused_for_now(store)
    primary.name = "primary"
    fallback = FakeProvider()
    fallback.name = "fallback"

    class MoveFails(ReleaseFails):
        def move_claim(self, *args, **kwargs):
            raise RuntimeError("InternalServerError")

    deps = replace(
        dispatch_deps(store, primary), messages=MoveFails(store, 0), upstreams_for=lambda _: [primary, fallback]
    )
    # When the record is dispatched
    outcome = asyncio.run(dispatch(record, deps))
    # Then the message goes back to the queue unclaimed, an attempt counted, not offered to the fallback
    [message] = store.messages.values()
    assert outcome.retry == [message.message_id] and fallback.submits == []
    assert (message.status, message.submit_attempts, store.claims) == (MessageStatus.QUEUED, 1, {})


def test_a_failed_expiry_write_gives_the_claim_back_for_the_record_s_return_to_expire(store):
    # Given a message past its validity, and the store failing its expiry write once
    record, upstream = refused_for_now(store)

    class ExpiryFailsOnce(ReleaseFails):
        def transition(self, *args, **kwargs):
            if self.times:
                self.times -= 1
                raise RuntimeError("InternalServerError")
            return self.store.transition(*args, **kwargs)

    too_late = replace(dispatch_deps(store, upstream), clock=lambda: NOW + timedelta(days=3))
    # When the record is dispatched, and comes back once the claim's lease has lapsed
    with pytest.raises(RuntimeError):
        asyncio.run(dispatch(record, replace(too_late, messages=ExpiryFailsOnce(store, 1))))
    asyncio.run(dispatch(record, replace(too_late, clock=lambda: NOW + timedelta(days=3, minutes=5))))
    # Then the message is expired and refunded, not recorded submitted-unconfirmed as a dead holder's
    [message] = store.messages.values()
    assert (message.status, message.error_code) == (MessageStatus.EXPIRED, "validity_period_ended")
    assert upstream.submits == []


def test_account_tokens_its_route_holds_back_go_back_for_the_priority_lane_in_the_handlers_limiter(store):
    from functools import partial

    from sms_gateway.logic.ratelimit import expected_grants

    # Given the same bulk record as above (100 messages, account limited to 50 a second, upstream to 2 a second),
    # dispatched with the limiter the handler builds for an invocation: it expects the record's 100 messages of the
    # account and takes tokens ahead (consumers._dispatch_all)
    handlers_limiter = partial(RateLimiter, expected=expected_grants({"7": 100}), take_ahead=64)
    record, _, counters, start, deps = account_faster_than_its_route(store, handlers_limiter)
    bulk_invocation = deps.limiter
    # When one delivery of the record is dispatched (the invocation's last act is to release what it kept)
    asyncio.run(dispatch(record, deps))
    asyncio.run(bulk_invocation.release())
    # Then the account's first second holds only the tokens of the messages sent in it: the 48 the upstream held
    # back went back while that second lasted, for the account's single sends, which the priority dispatch queue
    # hands to another invocation (docs/dispatch.md step 5, docs/rate-limits.md "Per upstream route")
    per_second = counters.per_second("account:7")
    assert per_second[int(start)] == 2, per_second
    # and so does each later second the record waits on its route in: the account tokens taken ahead with a route
    # token go back as soon as the next message finds the route at its limit, one write a second
    assert set(per_second.values()) == {2}, per_second
    assert sum(call[:2] == ("give_back", "account:7") for call in counters.calls) <= len(per_second) + 2


def notifier_due_to_run(monkeypatch, check, *, store, publish):
    """The settle check `check`'s SQS record, and the notifier's wiring (`store`, a notify queue that publishes with
    `publish`) at 49 hours, once the DLR wait (48 h) is over."""
    import json
    from types import SimpleNamespace

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sms_gateway import consumers

    wiring = SimpleNamespace(
        store=store,
        settings=SimpleNamespace(dlr_wait_seconds=172_800, inbound_sweep_delay_seconds=120),
        notify_queue=SimpleNamespace(delay=lambda handle, seconds: None, publish=publish),
    )
    monkeypatch.setattr(consumers, "gateway", lambda: wiring)
    monkeypatch.setattr(consumers, "utc_now", lambda: NOW + timedelta(hours=49))
    return SQSRecord({"messageId": "m-1", "receiptHandle": "rh-1", "body": json.dumps(check), "attributes": {}})


def held_report_its_dispatcher_died_applying(store):
    """report_held_before_the_link, and a dispatcher that linked the id, recorded the message submitted and died
    applying the held report; the upstream."""
    from sms_gateway.domain.status import MessageStatus

    deps, provider = report_held_before_the_link(store)
    with pytest.raises(Crash):
        dying = replace(dispatch_deps(store, provider), messages=DiesRecording(store, MessageStatus.DELIVERED))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dying))
    return provider


def test_a_held_report_a_settle_check_applied_is_announced_by_the_checks_redelivery_when_its_first_announcement_failed(
    store, monkeypatch
):

    from sms_gateway import consumers
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.settle import settle_checks

    # Given a message whose DLR (by the upstream's own id) was held, and whose dispatcher died applying it, as in
    # test_reports_held_before_the_link_survive_a_dispatcher_that_died_before_applying_them
    held_report_its_dispatcher_died_applying(store)
    [message] = store.messages.values()
    [check] = settle_checks([message], now=NOW)
    # And the notifier that runs its settle check once the wait is over cannot queue the check's announcement
    published: list[dict] = []
    refusing = {"on": True}

    def publish(notifications):
        if refusing["on"]:
            raise RuntimeError("SQS did not take the notification")
        published.extend(notifications)

    record = notifier_due_to_run(monkeypatch, check, store=store, publish=publish)
    with pytest.raises(RuntimeError):
        consumers._settle_record(record, check)
    delivered = store.messages[message.key]
    assert delivered.status == MessageStatus.DELIVERED  # applied from the link, then the publish failed
    # When SQS brings the check back (the record failed) and the queue takes notifications again
    refusing["on"] = False
    consumers._settle_record(record, check)
    # Then the client hears of the delivery, under the webhook id of the change ("Nothing lost between the write
    # and your callback", docs/delivery-reports.md); the client was told only "submitted" and would wait for good
    assert [n["id"] for n in published] == [f"dlr_{message.message_id}_{delivered.sequence}"]


def test_a_held_report_a_dispatcher_applied_is_announced_by_the_records_redelivery_when_its_announcement_failed(store):

    # Given an upstream whose DLRs name only its own id, whose final DLR for a message overtook the dispatcher's link
    deps, provider = report_held_before_the_link(store)
    [record] = deps.dispatch_queue.commands

    def refused(changes):
        raise RuntimeError("SQS did not take the notifications")

    # When the dispatcher submits it, links the id, applies the held report, and cannot queue the announcements
    with pytest.raises(RuntimeError):
        asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), announce=refused)))
    [message] = store.messages.values()
    assert message.status == MessageStatus.DELIVERED
    # And SQS brings the record back (the invocation failed), the queue taking notifications again
    announced: list = []
    asyncio.run(dispatch(record, replace(dispatch_deps(store, provider), announce=announced.extend)))
    # Then the client hears of the delivery too, not only of the submit; nothing else will tell it (the message is
    # final, unmarked, and in no settle check)
    assert MessageStatus.DELIVERED in {change.message.status for change in announced}


def test_a_held_report_a_settle_check_applied_is_announced_when_the_check_fails_on_another_of_its_messages(
    store, monkeypatch
):

    from sms_gateway import consumers
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.settle import settle_checks

    # Given a message whose DLR (by the upstream's own id) was held, and whose dispatcher died applying it
    provider = held_report_its_dispatcher_died_applying(store)
    [held] = store.messages.values()
    # And another message of the same invocation, submitted, that no report reached
    _, other_deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
    asyncio.run(dispatch(other_deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
    [silent] = [m for m in store.messages.values() if m.key != held.key]
    assert silent.status == MessageStatus.SUBMITTED
    [check] = settle_checks([held, silent], now=NOW)

    class ExpiryRefusedOnce:
        """The store refuses the check's expiry write once (a refund transaction that conflicted 6 times with the
        account's sends, say)."""

        def __init__(self, store) -> None:
            self.store = store
            self.times = 1

        def __getattr__(self, name):
            return getattr(self.store, name)

        def transition(self, key, target, **kwargs):
            if target == MessageStatus.EXPIRED and self.times:
                self.times -= 1
                raise RuntimeError("a transaction conflicted with other writes 6 times")
            return self.store.transition(key, target, **kwargs)

    published: list[dict] = []
    record = notifier_due_to_run(monkeypatch, check, store=ExpiryRefusedOnce(store), publish=published.extend)
    # When the notifier runs the check once the wait is over: the held report is applied, then the other message's
    # expiry fails and the check fails
    with pytest.raises(RuntimeError):
        consumers._settle_record(record, check)
    delivered = store.messages[held.key]
    assert delivered.status == MessageStatus.DELIVERED
    # And SQS brings the check back, the store answering again
    consumers._settle_record(record, check)
    # Then the client hears of the delivery (it was told only "submitted"), not only of the other one's expiry
    ids = [n["id"] for n in published]
    assert f"dlr_{held.message_id}_{delivered.sequence}" in ids, ids


class RunsAtOnce(concurrent.futures.ThreadPoolExecutor):
    """Runs each store call the moment the dispatcher hands it to its thread pool: a claim is written as soon as it is
    asked for (a thread's DynamoDB request leaves at once), whatever the threads' timing."""

    def submit(self, fn, /, *args, **kwargs):
        done: concurrent.futures.Future = concurrent.futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as error:
            done.set_exception(error)
        return done


class DiesAtItsFirstAnswer(FakeProvider):
    """An upstream taking every submit; the dispatcher's container dies as it reads the first answer, while the
    other submits of the invocation are in flight (how `make chaos` kills a dispatcher: chaos/faults.py)."""

    died = False

    async def submit(self, request):
        self.submits.append(request)
        await asyncio.sleep(0)  # on the wire: the other slots' submits go out meanwhile
        if not self.died:
            self.died = True
            raise Crash("the container died reading the upstream's answer")
        return SubmitResult(upstream_message_id=f"up-{request.client_ref}")


def test_a_dispatcher_dying_mid_flight_leaves_no_claim_on_a_message_it_had_not_begun_to_submit(store):
    # Given a record of 10 messages, 3 submits in flight at once, the rest waiting for a slot, and the container
    # dying as it reads its first answer
    _, deps = send(store, command(10))
    [record] = deps.dispatch_queue.commands
    dying = DiesAtItsFirstAnswer()

    async def invocation() -> None:
        asyncio.get_running_loop().set_default_executor(RunsAtOnce())
        await dispatch(record, replace(dispatch_deps(store, dying), concurrency=3))

    with pytest.raises(Crash):
        asyncio.run(invocation())
    # Then the only claims it leaves are on messages it was submitting: every message it left claimed may be at the
    # upstream. (Until 2026-12-07 the slots the dying tasks gave back went to messages waiting for one, which claimed
    # before the death reached them: claimed, never sent, so taken for maybe sent and never sent by anyone.)
    offered = {request.client_ref for request in dying.submits}
    claimed = {key.to_ref() for key in store.claims}
    assert claimed <= offered
    # And when the record comes back after the lease, to an upstream that cannot tell repeats: what the dying
    # dispatcher never offered is sent now, and only what it may have sent is left to a DLR, unconfirmed
    healthy = FakeProvider()
    asyncio.run(dispatch(record, replace(dispatch_deps(store, healthy), clock=lambda: NOW + timedelta(minutes=5))))
    sent_now = {request.client_ref for request in healthy.submits}
    unconfirmed = {m.key.to_ref() for m in store.messages.values() if m.error_code == "submit_unconfirmed"}
    assert unconfirmed <= offered and sent_now.isdisjoint(offered)
    assert sent_now | offered == {m.key.to_ref() for m in store.messages.values()}


def test_messages_held_back_for_an_upstreams_retry_after_leave_their_accounts_tokens_to_its_other_sends(store):
    from sms_gateway.logic.ratelimit import account_scope

    # Given a bulk record of 20 messages of an account limited to 5 a second, for an upstream that asked another
    # dispatcher to come back in 30 s (its route's counters held), and an invocation with 40 s left for claims
    _, sent = send(store, command(20))
    [record] = sent.dispatch_queue.commands
    provider = FakeProvider("kannel")
    counters, vclock = CountingStore(), VirtualClock(NOW.timestamp())
    counters.hold_scope("route:kannel", NOW.timestamp() + 30, first_second=int(NOW.timestamp()), seconds=31)
    start = vclock.now
    deps = replace(
        dispatch_deps(store, provider),
        clock=lambda: NOW + timedelta(seconds=vclock.now - start),
        limiter=RateLimiter(counters, clock=vclock, sleep=vclock.sleep),
        rate_scopes=[account_scope("7", 5)],
        route_limit=lambda _: 100,
        wait_out_the_rate_limit=True,
        out_of_time=lambda: vclock.now > start + 40,
    )
    # When the record is dispatched
    outcome = asyncio.run(dispatch(record, deps))
    # Then none is offered to the upstream, each comes back after the wait it asked for
    assert provider.submits == [] and sorted(outcome.retry) == sorted(record.message_ids)
    assert outcome.retry_delay(backoff_base=5.0) >= 29
    # And the account's tokens are not spent on them: its other sends (an OTP through another upstream, its priority
    # lane in another invocation) keep the account's rate, and the record does not take four seconds of it to be
    # held back 5 messages a second
    assert counters.per_second("account:7") == {}
    assert vclock.now - start < 1


def test_a_failover_held_back_by_another_dispatchers_retry_after_counts_no_failure_of_the_fallback(store):
    # Given a message whose primary is down (503), and a fallback with a route limit that asked another dispatcher
    # to come back in 30 s (its route's counters held)
    _, sent = send(store, command(1))
    [record] = sent.dispatch_queue.commands
    primary, fallback = FakeProvider("primary"), FakeProvider("fallback")
    primary.failure = UpstreamError("503", permanent=False, unavailable=True)
    counters, vclock = CountingStore(), VirtualClock(NOW.timestamp())
    counters.hold_scope("route:fallback", NOW.timestamp() + 30, first_second=int(NOW.timestamp()), seconds=31)
    deps = replace(
        dispatch_deps(store, primary),
        upstreams_for=lambda _: [primary, fallback],
        limiter=RateLimiter(counters, clock=vclock, sleep=vclock.sleep),
        route_limit=lambda name: 10 if name == "fallback" else None,
    )
    # When the record is dispatched: the primary fails, and the fallback is found held, without a request to it
    outcome = asyncio.run(dispatch(record, deps))
    # Then the message comes back, and the failures counted for the failure-rate alarm (UpstreamFailures) are the
    # requests that failed: the primary's, not a throttle of the fallback that was never asked
    assert fallback.submits == [] and outcome.needs_retry
    assert dict(outcome.upstream_failures) == {("primary", "transient"): 1}


class ThrottlesLongerEachAnswer(FakeProvider):
    """An upstream answering the submits in flight at once with 429s, each later answer asking for a longer wait (its
    per-second limit first, then its daily quota spent)."""

    def __init__(self, name: str, waits: list[float]) -> None:
        super().__init__(name)
        self.waits = waits
        self.all_in_flight = asyncio.Event()
        self.answered = 0

    async def submit(self, request):
        self.submits.append(request)
        wait = self.waits[len(self.submits) - 1]
        if len(self.submits) == len(self.waits):
            self.all_in_flight.set()
        await self.all_in_flight.wait()  # on the wire until every slot's submit went out
        while self.answered < self.waits.index(wait):  # answered in the order they went out
            await asyncio.sleep(0)
        self.answered += 1
        raise UpstreamError("429", permanent=False, throttled=True, retry_after=wait)


def test_a_longer_retry_after_met_while_the_upstream_is_held_is_shared_with_the_other_dispatchers(store):
    from sms_gateway.logic.ratelimit import route_scope
    from sms_gateway.ports import ScopeHeld

    # Given a bulk record of 2 messages submitted at once to an upstream with a route limit, which answers the first
    # with a 429 asking us to come back in 5 s and the second, a moment later, in 120 s
    _, sent = send(store, command(2))
    [record] = sent.dispatch_queue.commands
    provider = ThrottlesLongerEachAnswer("kannel", [5.0, 120.0])
    counters, vclock = CountingStore(), VirtualClock(NOW.timestamp())
    start = vclock.now
    deps = replace(
        dispatch_deps(store, provider),
        clock=lambda: NOW + timedelta(seconds=vclock.now - start),
        limiter=RateLimiter(counters, clock=vclock, sleep=vclock.sleep),
        route_limit=lambda _: 100,
        concurrency=2,
    )
    # When the record is dispatched
    asyncio.run(dispatch(record, deps))
    assert len(provider.submits) == 2
    # Then another dispatcher container that takes a route token 10 s later learns the whole 120 s wait: told only
    # of the first 5 s, it (and every other container) would offer the upstream a message of its own and meet a 429
    vclock.now = start + 10
    other = RateLimiter(counters, clock=vclock, sleep=vclock.sleep)
    with pytest.raises(ScopeHeld) as held:
        asyncio.run(other.acquire([route_scope("kannel", 100)], 1))
    assert held.value.until >= start + 119
    # And the hold was written twice at most (the first 429's, then the longer one's), not once per 429
    assert len([call for call in counters.calls if call[0] == "hold"]) == 2


class Container:
    """A dispatcher container over the route counters every container shares, with its own limiter and clock (seconds
    after NOW), that has heard nothing from the upstream yet (UPSTREAM_RETRY_AFTER is per container)."""

    def __init__(self, store, provider, counters) -> None:
        from sms_gateway.logic import dispatch as dispatch_module

        dispatch_module.UPSTREAM_RETRY_AFTER.clear()
        self.vclock = VirtualClock(NOW.timestamp())
        self.deps = replace(
            dispatch_deps(store, provider),
            clock=lambda: NOW + timedelta(seconds=self.vclock.now - NOW.timestamp()),
            limiter=RateLimiter(counters, clock=self.vclock, sleep=self.vclock.sleep),
            route_limit=lambda _: 100,
        )

    def dispatch_at(self, seconds: float, store) -> object:
        self.vclock.now = NOW.timestamp() + seconds
        _, sent = send(store, command(1))
        [record] = sent.dispatch_queue.commands
        return asyncio.run(dispatch(record, self.deps))


def test_a_day_long_hold_still_holds_back_a_new_container_past_its_first_ten_minutes(store):
    # Given an upstream whose daily quota is spent: a container met its 429 asking us to come back in a day, and held
    # the route's first 600 seconds for the others
    provider, counters = FakeProvider("kannel"), CountingStore()
    counters.hold_scope("route:kannel", NOW.timestamp() + 86400, first_second=int(NOW.timestamp()), seconds=600)
    # And a container that learnt of it taking a route token 10 s later, and holds back another send 400 s later
    learnt = Container(store, provider, counters)
    learnt.dispatch_at(10, store)
    learnt.dispatch_at(400, store)
    assert provider.submits == []
    # When a new container (Lambda started one) has a send for the upstream 700 s after the hold began
    outcome = Container(store, provider, counters).dispatch_at(700, store)
    # Then it learns the day's wait too, and offers the upstream nothing: it met a 429 of its own (and so did a new
    # container every ten minutes, all day)
    assert provider.submits == []
    assert outcome.retry_delay(backoff_base=5.0) > 3600


def test_a_short_retry_after_once_the_upstream_accepted_again_does_not_bring_back_a_stale_days_hold(store):
    # Given a route held for a day (the upstream's daily quota spent), its first 600 seconds of counters held
    provider, counters = FakeProvider("kannel"), CountingStore()
    counters.hold_scope("route:kannel", NOW.timestamp() + 86400, first_second=int(NOW.timestamp()), seconds=600)
    # And 700 s later a container that never learnt of it sends, and the upstream accepts (its quota was raised),
    # then answers its next send with a 429 asking 2 s (its per-second limit)
    resumed = Container(store, provider, counters)
    resumed.dispatch_at(700, store)
    assert len(provider.submits) == 1
    provider.failure = UpstreamError("429", permanent=False, throttled=True, retry_after=2.0)
    resumed.dispatch_at(701, store)
    provider.failure = None
    # When another container has a send for it a second later, and again 5 s later
    other = Container(store, provider, counters)
    held = other.dispatch_at(702, store)
    other.dispatch_at(706, store)
    # Then it waits out the 2 s the upstream asked, not the rest of a day the upstream no longer asks for
    assert held.retry_delay(backoff_base=5.0) < 60
    assert len(provider.submits) == 3
