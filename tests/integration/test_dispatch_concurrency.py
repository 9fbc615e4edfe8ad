"""One dispatcher invocation over several accounts' records: concurrent across accounts, under one in-flight limit,
each account's batches still in the order they were accepted (the real handler on moto)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import STACK, route_simulator_upstreams_to
from tests.integration.test_send_path import (
    DISPATCH_QUEUES,
    FakeContext,
    as_lambda_sqs_event,
    delete_records,
    load_function,
    queued_records,
    received_from,
    send_event,
)


class SlowUpstream:
    """A simulator-protocol upstream that answers after a while, counting the submits it holds at once."""

    def __init__(self, latency: float = 0.05) -> None:
        self.latency = latency
        self.in_flight = 0
        self.peak = 0
        self.events: list[tuple[str, str]] = []
        # When set, each submit is held (up to `latency`) until this many are in flight at once: a test of overlap
        # then does not depend on the machine being quick enough to start them all within one latency.
        self.hold_until_in_flight: int | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.events.append(("start", payload["text"]))
        try:
            if self.hold_until_in_flight is None:
                await asyncio.sleep(self.latency)
            else:
                await self._held(self.hold_until_in_flight)
        finally:
            self.in_flight -= 1
            self.events.append(("end", payload["text"]))
        return httpx.Response(200, json={"message_id": f"sim-{payload['client_ref']}"})

    async def _held(self, wanted: int) -> None:
        deadline = asyncio.get_running_loop().time() + self.latency
        while self.peak < wanted and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)


@pytest.fixture
def upstream(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> SlowUpstream:
    recorder = SlowUpstream()
    route_simulator_upstreams_to(monkeypatch, recorder)
    return recorder


def in_flight_limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    from sms_gateway import bootstrap

    monkeypatch.setenv("DISPATCH_CONCURRENCY", str(limit))
    bootstrap.reset()


def bulk_send(api: Any, account: dict[str, Any], text: str, recipients: int) -> None:
    numbers = [f"234802000{index:04d}" for index in range(recipients)]
    response = api(send_event(account["token"], {"from": account["sender"], "to": numbers, "body": text}))
    assert response["statusCode"] == 200, response


@pytest.fixture
def api(aws: dict[str, str]) -> Any:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def new_account(name: str, sender: str) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return {**create_account(name=name, senders=[sender], credits=50), "sender": sender}


def single_sends(api: Any, account: dict[str, Any], count: int) -> None:
    """The account's `count` single sends from 48974, "code 0", "code 1", ..., one after another."""
    for index in range(count):
        answer = api(
            send_event(account["token"], {"from": "48974", "to": f"23480200000{index:02d}", "body": f"code {index}"})
        )
        assert answer["statusCode"] == 200, answer


def two_batches_of_one_account(aws: dict[str, str], api: Any, sender: str, recipients: int) -> list[dict[str, Any]]:
    """The dispatch records of one account's bulk batches "first" and "second": one message group, in that order."""
    account = new_account("Cinema Club", sender)
    bulk_send(api, account, "first", recipients=recipients)
    bulk_send(api, account, "second", recipients=recipients)
    records = queued_records(aws)
    assert len(records) == 2
    return records


def test_accounts_records_go_out_together_and_never_exceed_the_in_flight_limit(aws, api, upstream, monkeypatch):
    # Given an in-flight limit of 5 and three accounts' bulk batches of three messages each, one record apiece
    in_flight_limit(monkeypatch, 5)
    # Each answer waits (up to 5 s) for five to overlap: a busy machine may start the fifth later than 50 ms after the
    # first (CI once saw three at once)
    upstream.latency, upstream.hold_until_in_flight = 5.0, 5
    for index, sender in enumerate(("48971", "48972", "48973")):
        bulk_send(api, new_account(f"Account {index}", sender), f"batch {index}", recipients=3)
    records = queued_records(aws)
    assert len({record["Attributes"]["MessageGroupId"] for record in records}) == 3
    # When one invocation gets them
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then all nine went out, with the upstream holding as many at once as the limit allows (one record at a
    # time would have held three) and never more
    assert answer == {"batchItemFailures": []}
    assert sum(kind == "start" for kind, _ in upstream.events) == 9
    assert upstream.peak == 5


def test_an_accounts_next_batch_waits_until_its_batch_before_is_submitted(aws, api, upstream, monkeypatch):
    # Given one account's two bulk batches (one group) and room for everything at once
    in_flight_limit(monkeypatch, 64)
    upstream.latency, upstream.hold_until_in_flight = 5.0, 4  # the first batch's four overlap on a busy machine too
    records = two_batches_of_one_account(aws, api, "48974", recipients=4)
    # When one invocation gets both records
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then no message of the second batch was offered before the upstream had answered every one of the first
    assert answer == {"batchItemFailures": []}
    last_first_answered = max(i for i, event in enumerate(upstream.events) if event == ("end", "first"))
    first_second_offered = min(i for i, event in enumerate(upstream.events) if event == ("start", "second"))
    assert last_first_answered < first_second_offered
    assert upstream.peak == 4


@pytest.mark.parametrize("in_order", [True, False], ids=["single-sends-in-order", "single-sends-in-any-order"])
def test_an_accounts_single_sends_go_out_one_after_another_unless_it_lets_them_overlap(
    aws, api, upstream, monkeypatch, in_order
):
    from sms_gateway_tools.admin import set_account

    # Given an account's five single sends (OTPs), with or without `single_sends_in_order`, and room for all at once
    in_flight_limit(monkeypatch, 64)
    account = new_account("Bank", "48974")
    if not in_order:
        set_account(account_id=account["account_id"], single_sends_in_order=False)
        # Each answer waits (up to 5 s) for the five to overlap: a busy machine may start the fifth later than 50 ms
        # after the first, which once made this fail though the sends did overlap
        upstream.latency, upstream.hold_until_in_flight = 5.0, 5
    single_sends(api, account, 5)
    records = queued_records(aws)
    assert len(records) == 5
    # Then in order they share the account's priority lane; otherwise each send has a lane of its own
    groups = [record["Attributes"]["MessageGroupId"] for record in records]
    references = [json.loads(record["Body"])["reference_id"] for record in records]
    if in_order:
        assert groups == [f"{account['account_id']}#priority"] * 5
    else:
        assert groups == [f"{account['account_id']}#send#{reference}" for reference in references]
    # When one invocation gets them all
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then all are sent: one at a time, each after the answer to the one before, or all five at once
    assert answer == {"batchItemFailures": []}
    assert sorted(text for event, text in upstream.events if event == "end") == [f"code {i}" for i in range(5)]
    if in_order:
        assert upstream.peak == 1
        assert upstream.events == [(kind, f"code {i}") for i in range(5) for kind in ("start", "end")]
    else:
        assert upstream.peak == 5


def ten_queued_single_sends(
    aws: dict[str, str], api: Any, upstream: SlowUpstream, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A new account's ten single sends, queued in its priority lane (ten records), for an upstream answering in
    10 ms and 64 submits in flight."""
    in_flight_limit(monkeypatch, 64)
    upstream.latency = 0.01
    account = new_account("Bank", "48974")
    single_sends(api, account, 10)
    records = queued_records(aws)
    assert len(records) == 10
    return account, records


def test_an_invocations_single_sends_are_read_together_and_take_their_rate_limit_tokens_in_one_or_two_writes(
    aws, api, upstream, monkeypatch
):
    from sms_gateway.adapters import aws as aws_clients

    # Given an account (limited to 50 a second) with ten single sends queued in its priority lane
    account, records = ten_queued_single_sends(aws, api, upstream, monkeypatch)
    counter_writes = noted_counter_writes()
    message_reads: list[dict[str, Any]] = []
    aws_clients.client("dynamodb").meta.events.register(
        "provide-client-params.dynamodb.BatchGetItem", lambda params, **_: message_reads.append(params)
    )
    # When one invocation sends them, one after another
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then all ten went out, their tokens taken by one write for the ten (two when a second ended on the way, a
    # third to give back what the last second did not use), not one write per send
    assert answer == {"batchItemFailures": []}
    assert sum(kind == "end" for kind, _ in upstream.events) == 10
    assert 1 <= len(counter_writes) <= 3
    # And their ten messages were read in one request, not one per record
    assert len(message_reads) == 1
    # And the account's counters hold the ten sends, none above the limit
    used = tokens_counted(aws, account["account_id"])
    assert all(count <= 50 for count in used)
    assert sum(used) >= 10


def test_an_invocations_single_sends_for_a_limited_upstream_take_its_route_tokens_in_one_or_two_writes(
    aws, api, upstream, monkeypatch
):
    import boto3

    # Given ten single sends queued in an account's priority lane, for the default upstream limited to 50 a second
    _, records = ten_queued_single_sends(aws, api, upstream, monkeypatch)
    ssm, name = boto3.client("ssm"), f"{aws['UPSTREAM_PARAMETER_PREFIX']}simulator"
    config = json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    limited = json.dumps({**config, "rate_limit_per_second": 50})
    ssm.put_parameter(Name=name, Value=limited, Type="SecureString", Overwrite=True)
    counter_writes = noted_counter_writes()
    # When one invocation sends them, one after another
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then all ten went out, and the route's tokens were taken for the ten at once (the invocation routed the
    # single sends it read together before their records began), not by one write per send
    assert answer == {"batchItemFailures": []}
    assert sum(kind == "end" for kind, _ in upstream.events) == 10
    route_writes = [write for write in counter_writes if write["Key"]["pk"]["S"] == "RATE#route:simulator"]
    # (the first for all ten; a second each after that while sends remain: tokens are good for their second only,
    # so a busy machine whose ten sends span four seconds takes four times, once a second, never once a send)
    takes = [write for write in route_writes if int(write["ExpressionAttributeValues"][":n"]["N"]) > 0]
    assert int(takes[0]["ExpressionAttributeValues"][":n"]["N"]) == 10
    seconds = [write["Key"]["sk"]["S"] for write in takes]
    assert len(seconds) == len(set(seconds)) < 10


def test_when_the_shared_read_of_single_sends_fails_each_record_reads_its_own_and_all_are_sent_once(
    aws, api, upstream, monkeypatch
):
    from botocore.exceptions import ClientError

    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given ten single sends queued in an account's priority lane
    _, records = ten_queued_single_sends(aws, api, upstream, monkeypatch)
    # And DynamoDB refusing the invocation's first read of messages (the one meant for all ten)
    reads: list[int] = []
    read_messages = DynamoStore.get_messages_by_key

    def first_read_throttled(store: DynamoStore, keys: Any, **options: Any) -> Any:
        reads.append(len(keys))
        if len(reads) == 1:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "BatchGetItem"
            )
        return read_messages(store, keys, **options)

    monkeypatch.setattr(DynamoStore, "get_messages_by_key", first_read_throttled)
    # When one invocation handles the ten records
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then no record failed for it: each read its own message, and every send went out once
    assert answer == {"batchItemFailures": []}
    assert reads == [10] + [1] * 10
    assert sorted(text for kind, text in upstream.events if kind == "start") == sorted(f"code {i}" for i in range(10))


def noted_counter_writes() -> list[dict[str, Any]]:
    """The parameters of every rate-limit counter write the gateway's DynamoDB client makes from now on."""
    from sms_gateway.adapters import aws as aws_clients

    writes: list[dict[str, Any]] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        if params["Key"]["pk"]["S"].startswith("RATE#"):
            writes.append(params)

    aws_clients.client("dynamodb").meta.events.register("provide-client-params.dynamodb.UpdateItem", note)
    return writes


def tokens_counted(aws: dict[str, str], account_id: str) -> list[int]:
    """The account's rate-limit counters, a second each."""
    import boto3

    table = boto3.resource("dynamodb").Table(aws["TABLE_NAME"])
    counters = table.query(
        KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": f"RATE#account:{account_id}"}
    )["Items"]
    return [int(counter["used"]) for counter in counters]


def test_tokens_an_invocation_took_ahead_and_did_not_use_are_given_back_while_their_second_lasts(
    aws, api, upstream, monkeypatch
):
    import time

    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey, utc_now
    from sms_gateway.domain.status import MessageStatus

    # Given two single sends of an account, the second already sent by a duplicate delivery of its record
    in_flight_limit(monkeypatch, 64)
    account = new_account("Bank", "48974")
    single_sends(api, account, 2)
    records = queued_records(aws)
    second = json.loads(records[1]["Body"])
    key = MessageKey(
        account_id=second["account_id"], reference_id=second["reference_id"], message_id=second["message_ids"][0]
    )
    store = gateway().store
    store.claim_for_dispatch(key, now=utc_now(), lease_seconds=120)
    store.transition(key, MessageStatus.SUBMITTED, now=utc_now(), upstream="other", upstream_message_id="up-1")
    counter_writes = noted_counter_writes()
    # When one invocation gets both records, starting as a second begins (so that the invocation ends in it): the
    # first takes a token for each, and only the first is sent
    time.sleep(1 - time.time() % 1)
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    ended = int(time.time())
    assert answer == {"batchItemFailures": []}
    assert [text for event, text in upstream.events if event == "end"] == ["code 0"]
    took = counter_writes[0]
    assert took["ExpressionAttributeValues"][":n"] == {"N": "2"}
    # Then, when the invocation ended within the second of that take (unless the machine was slower than a second),
    # the unused token went back: the counter holds the one send (a second over by then keeps it counted there,
    # which no longer matters)
    if ended == int(took["Key"]["sk"]["S"]):
        assert any(":minus" in write["ExpressionAttributeValues"] for write in counter_writes[1:])
        assert tokens_counted(aws, account["account_id"]) == [1]


class ContainerDied(BaseException):
    """The Lambda container dying mid-invocation: no `except Exception` in the dispatcher handles it."""


class AcceptingUpstream(SlowUpstream):
    """Takes each message the moment its submit arrives (as a real SMSC does) and answers after the latency (batch
    1's quickly, the others' slowly), so a dispatcher dying at a batch 1 answer leaves the other submits taken by
    the upstream but unknown to the store as sent. `taken`: every submit it put on a phone; one that deduplicates
    answers a repeated reference with its first answer and takes nothing more."""

    def __init__(self, deduplicates: bool) -> None:
        super().__init__(latency=0.3)
        self.deduplicates = deduplicates
        self.asked: list[str] = []
        self.taken: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        self.asked.append(payload["client_ref"])
        if not (self.deduplicates and payload["client_ref"] in self.taken):
            self.taken.append(payload["client_ref"])
        self.latency = 0.05 if payload["text"] == "batch 1" else 0.3
        return await super().__call__(request)


@pytest.mark.parametrize("deduplicates", [False, True], ids=["upstream-cannot-tell-repeats", "upstream-deduplicates"])
def test_a_container_dying_mid_invocation_never_has_a_taken_message_sent_again(aws, api, monkeypatch, deduplicates):
    # Given three accounts' records in one invocation, submits taking 0.2 s, and the container dying right after
    # the upstream answered one of account 1's messages, while the other records' submits are still in flight
    from sms_gateway import bootstrap
    from sms_gateway.adapters import http
    from sms_gateway.adapters.providers.simulator import SimulatorProvider

    upstream = AcceptingUpstream(deduplicates)
    route_simulator_upstreams_to(monkeypatch, upstream, deduplicates=deduplicates)
    in_flight_limit(monkeypatch, 4)
    monkeypatch.setenv("DISPATCH_CLAIM_LEASE_SECONDS", "1")
    bootstrap.reset()
    accounts = [new_account(f"Account {index}", sender) for index, sender in enumerate(("48975", "48976", "48977"))]
    for index, account in enumerate(accounts):
        bulk_send(api, account, f"batch {index}", recipients=3)
    records = queued_records(aws)
    answered = SimulatorProvider.submit
    unanswered: set[str] = set()
    deaths: list[int] = []

    async def die_after_the_first_answer(provider: SimulatorProvider, request: Any) -> Any:
        unanswered.add(request.client_ref)
        result = await answered(provider, request)
        unanswered.discard(request.client_ref)
        if not deaths and request.text == "batch 1" and unanswered:
            deaths.append(len(unanswered))
            raise ContainerDied(request.client_ref)
        return result

    monkeypatch.setattr(SimulatorProvider, "submit", die_after_the_first_answer)
    with pytest.raises(ContainerDied):
        load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # The dead container's tasks never run again (on the thread's loop they would resume in the next invocation,
    # and one still waiting for an in-flight slot would claim its message under the next one's nose)
    http.forget_thread_loop()
    # (other submits were in flight when it died: the upstream has taken them, their answers are lost)
    assert deaths and deaths[0] > 0
    # When every record comes back once the claims of the dead container have lapsed (whole seconds: 2 s at most)
    monkeypatch.setattr(SimulatorProvider, "submit", answered)
    asyncio.run(asyncio.sleep(2.2))
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    # Then no message was put on a phone twice, and none is left queued
    assert answer == {"batchItemFailures": []}
    assert len(upstream.taken) == len(set(upstream.taken))
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    messages = []
    for record in records:
        command = json.loads(record["Body"])
        messages += store.get_messages(command["account_id"], command["reference_id"], command["message_ids"])
    assert sorted(str(m.status) for m in messages) == ["submitted"] * 9
    if deduplicates:
        # And the messages whose claim died with the container were asked of the upstream again under the same
        # reference: every one is sent, with the upstream's id, none left for a DLR that may never come
        assert len(upstream.asked) > len(upstream.taken) == 9
        assert [m.upstream_message_id for m in messages] == [f"sim-{m.key.to_ref()}" for m in messages]
        assert all(m.error_code is None for m in messages)
        return
    # And an upstream that cannot tell repeats is never asked again: those whose claim or answer died with the
    # container are left submitted-unconfirmed, for the upstream's DLR or the settle check to end (a claimed
    # message the container died before sending never reaches it)
    assert upstream.asked == upstream.taken
    taken = set(upstream.taken)
    assert all(m.error_code == "submit_unconfirmed" for m in messages if m.key.to_ref() not in taken)
    assert any(m.error_code == "submit_unconfirmed" for m in messages)


class ContextNearItsTimeout(FakeContext):
    """An invocation with 5 s left: less than a submit's worst case (3 s connect + 10 s read) and its recording."""

    def get_remaining_time_in_millis(self) -> int:
        return 5_000


def test_an_invocation_near_its_timeout_claims_nothing_and_hands_its_records_back(aws, api, upstream, monkeypatch):
    # Given two accounts' records, and a dispatcher invocation that has only 5 s left
    in_flight_limit(monkeypatch, 64)
    for index, sender in enumerate(("48978", "48979")):
        bulk_send(api, new_account(f"Account {index}", sender), f"batch {index}", recipients=2)
    records = queued_records(aws)
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), ContextNearItsTimeout())
    # Then nothing was offered upstream, both records go back to the queue, and their messages are still queued
    # and unclaimed, so a later invocation sends them
    assert upstream.events == []
    assert sorted(item["itemIdentifier"] for item in answer["batchItemFailures"]) == sorted(
        record["MessageId"] for record in records
    )
    again = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    assert again == {"batchItemFailures": []}
    assert sorted(text for kind, text in upstream.events if kind == "start") == ["batch 0"] * 2 + ["batch 1"] * 2


def test_records_held_back_behind_a_failed_one_come_back_with_it_not_after_the_visibility_timeout(
    aws, api, monkeypatch
):
    # Given one account's two batches (one message group) and an upstream failing the first batch for now
    from sms_gateway import bootstrap

    failing = {"first"}

    async def upstream(request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        if payload["text"] in failing:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, json={"message_id": f"sim-{payload['client_ref']}"})

    route_simulator_upstreams_to(monkeypatch, upstream)
    monkeypatch.setenv("DISPATCH_BACKOFF_BASE_SECONDS", "1")
    bootstrap.reset()
    records = two_batches_of_one_account(aws, api, "48980", recipients=2)
    # When one invocation gets both: the first record fails and is retried in about a second, the second is not
    # started (it must not overtake the first)
    answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
    assert len(answer["batchItemFailures"]) == 2
    # Then once the first record's retry is due, both come back, in order (not the first alone, with the second
    # out of sight for the queue's 360 s visibility timeout)
    failing.clear()
    asyncio.run(asyncio.sleep(1.5))
    again = queued_records(aws)
    assert [json.loads(r["Body"])["reference_id"] for r in again] == [
        json.loads(r["Body"])["reference_id"] for r in records
    ]


def time_for_checks(checks: int) -> Any:
    """An invocation's out-of-time test that passes `checks` times, then says the invocation is ending."""
    left = iter(range(checks))
    return lambda: next(left, None) is None


def drain_like_the_event_source(aws: dict[str, str], invocations: int) -> int:
    """Hands the dispatch queues' records to the dispatcher as Lambda's pollers do (up to BatchSize 10, deleting
    what succeeded) until both queues are empty; returns the invocations it took."""
    import time

    dispatcher = load_function("dispatcher")
    for invocation in range(invocations):
        records = queued_records(aws)
        if not records:
            if not any(in_queue(aws[name]) for name in DISPATCH_QUEUES):
                return invocation
            time.sleep(0.25)
            continue
        answer = dispatcher.handler(as_lambda_sqs_event(records), FakeContext())
        failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
        delete_records([record for record in records if record["MessageId"] not in failed])
    raise AssertionError(f"the queue was not drained in {invocations} rounds")


def in_queue(queue_url: str) -> int:
    """The queue's records, visible or in flight."""
    import boto3

    counts = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return int(counts["ApproximateNumberOfMessages"]) + int(counts["ApproximateNumberOfMessagesNotVisible"])


def test_a_backlog_longer_than_an_invocation_is_all_sent_in_order_and_none_dead_lettered(
    aws, api, upstream, monkeypatch
):
    # Given one account's twelve single sends queued (twelve records of one message group), as a low rate limit
    # leaves them, and dispatcher invocations with time for one message each
    import boto3

    from sms_gateway import consumers

    account = new_account("Backlog", "48981")
    for index in range(12):
        bulk_send(api, account, f"message {index:02d}", recipients=1)
    monkeypatch.setattr(consumers, "_out_of_time", lambda remaining_ms: time_for_checks(2))
    # When Lambda's poller hands the group to invocation after invocation, each taking up to ten of its records
    drain_like_the_event_source(aws, invocations=400)
    # Then every message went upstream once and in the order sent, and no record was moved to the dead-letter
    # queue for having been received (held back) more often than its maxReceiveCount
    assert [text for kind, text in upstream.events if kind == "start"] == [f"message {i:02d}" for i in range(12)]
    dead = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws["DISPATCH_DEAD_LETTER_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert dead["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_rate_limited_backlogs_do_not_hold_every_dispatcher_slot_the_template_allows(aws, api, upstream, monkeypatch):
    # Given the dispatcher's SQS event sources as template.yaml sets them: each reads its queue, with its cap
    # (ScalingConfig.MaximumConcurrency) on concurrent invocations
    import threading
    import time
    import traceback

    import boto3

    from sms_gateway import consumers
    from sms_gateway_tools.admin import set_account
    from sms_gateway_tools.template import load_template, queue_definitions, resolved

    template = load_template()
    events = template["Resources"]["DispatcherFunction"]["Properties"]["Events"]
    names = {queue.logical_id: queue.queue_name for queue in queue_definitions(template, STACK)}
    sqs = boto3.client("sqs")
    sources = [
        (
            sqs.get_queue_url(QueueName=names[spec["Queue"]["Fn::GetAtt"][0]])["QueueUrl"],
            int(resolved(template, spec["ScalingConfig"]["MaximumConcurrency"])),
        )
        for spec in (event["Properties"] for event in events.values() if event["Type"] == "SQS")
    ]
    bulk_slots = int(resolved(template, events["Dispatch"]["Properties"]["ScalingConfig"]["MaximumConcurrency"]))
    # And that many accounts sending at 1 message a second, each with a backlog of ten bulk batches of two
    # recipients queued (ten records of its bulk lane, as a large send at a low rate leaves it), then another
    # account's one message, a single send (a one-time code)
    limited = []
    for index in range(bulk_slots):
        account = new_account(f"Limited {index}", f"4898{index}")
        set_account(account_id=account["account_id"], rate_limit=1)
        limited.append(account)
    for account in limited:
        for batch in range(10):
            bulk_send(api, account, f"{account['sender']} bulk {batch:02d}", recipients=2)
    other = new_account("Not limited", "48990")
    bulk_send(api, other, "one-time code", recipients=1)

    # And invocations of about 10 s (Lambda's 60 s less the dispatcher's 16 s reserve, scaled down; long enough that a
    # loaded machine's slowness is not mistaken for the one-time code waiting on the rate-limited invocations)
    ran_out_of_time: list[float] = []

    def ten_second_invocations(remaining_ms: Any) -> Any:
        deadline = time.monotonic() + 10.0

        def out_of_time() -> bool:
            if time.monotonic() < deadline:
                return False
            ran_out_of_time.append(time.monotonic())
            return True

        return out_of_time

    monkeypatch.setattr(consumers, "_out_of_time", ten_second_invocations)
    # When Lambda's pollers run, for each event source, at most its cap of invocations at once, each taking up to
    # BatchSize records of its own queue, oldest first
    dispatcher = load_function("dispatcher")
    started = time.monotonic()
    stop = threading.Event()
    errors: list[BaseException] = []

    def poller(queue_url: str) -> None:
        try:
            while not stop.is_set() and time.monotonic() - started < 40:
                records = received_from(queue_url)
                if not records:
                    time.sleep(0.05)
                    continue
                answer = dispatcher.handler(as_lambda_sqs_event(records), FakeContext())
                failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
                delete_records([record for record in records if record["MessageId"] not in failed])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=poller, args=(queue_url,), daemon=True)
        for queue_url, slots in sources
        for _ in range(slots)
    ]
    for thread in threads:
        thread.start()
    sent_after = None
    while time.monotonic() - started < 40:
        if ("start", "one-time code") in upstream.events:
            sent_after = time.monotonic() - started
            break
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, "".join(line for error in errors for line in traceback.format_exception(error))
    # Then the account that is not rate limited does not wait for the others' rate limits: its one-time code goes
    # out before any rate-limited invocation has run out its time (single sends have a queue and slots of their
    # own, which bulk backlogs cannot hold); an order of events, not a time limit, so a loaded machine cannot fail it
    assert sent_after is not None, "the one-time code was never sent"
    first_out_of_time = min(ran_out_of_time, default=None)
    assert first_out_of_time is None or started + sent_after < first_out_of_time, (sent_after, first_out_of_time)
