"""Idempotent sends and credit arithmetic through the 9bits dialect on moto."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import FakeContext, ShortOfTime
from tests.integration.test_send_path import balance, queued_records, send_event


@pytest.fixture
def api(aws: dict[str, str]):
    from tests.integration.test_send_path import FakeContext, load_function

    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def with_key(event: dict[str, Any], key: str) -> dict[str, Any]:
    event["headers"]["idempotency-key"] = key
    return event


def make_account(credits: int, sender: str = "48974") -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Idem", senders=[sender], credits=credits)


def test_a_repeat_with_the_same_idempotency_key_returns_the_first_answer_and_sends_once(aws, api):
    account = make_account(10)
    first = api(with_key(send_event(account["token"]), "order-42"))
    second = api(with_key(send_event(account["token"]), "order-42"))
    assert first["statusCode"] == second["statusCode"] == 200
    assert json.loads(second["body"]) == json.loads(first["body"])
    assert balance(account["account_id"]) == 9
    assert len(queued_records(aws)) == 1


def test_the_same_key_with_a_different_body_is_refused_and_changes_nothing(aws, api):
    account = make_account(10)
    api(with_key(send_event(account["token"]), "order-43"))
    other = send_event(account["token"], {"from": "48974", "to": "2348030000000", "message": "another text"})
    answer = api(with_key(other, "order-43"))
    assert answer["statusCode"] == 409
    assert "different request" in json.loads(answer["body"])["message"]
    assert balance(account["account_id"]) == 9


def test_the_same_ref_id_within_a_day_is_sent_once(aws, api):
    account = make_account(10)
    body = {"from": "48974", "to": "2348020000000", "message": "hi", "ref_id": "873ghf8749956778gf5"}
    first = api(send_event(account["token"], body))
    second = api(send_event(account["token"], body))
    assert json.loads(first["body"])["reference_id"] == json.loads(second["body"])["reference_id"]
    assert balance(account["account_id"]) == 9


def test_a_repeat_re_encoded_by_another_json_library_is_the_same_request(aws, api):
    # Given a send with a ref_id, as the README writes it
    account = make_account(10)
    body = {"from": "48974", "to": "2348020000000", "message": "hi é", "ref_id": "873ghf8749956778gf5"}
    event = send_event(account["token"])
    event["body"] = json.dumps(body, indent=2)
    first = api(event)
    # When the client's retry writes the same fields in another order, without spaces and with é unescaped
    again = send_event(account["token"])
    again["body"] = json.dumps(dict(reversed(list(body.items()))), separators=(",", ":"), ensure_ascii=False)
    second = api(again)
    # Then it is the same request: the first answer, sent and charged once
    assert second["statusCode"] == 200, second
    assert json.loads(second["body"]) == json.loads(first["body"])
    assert balance(account["account_id"]) == 9
    assert len(queued_records(aws)) == 1


def test_a_ref_id_repeated_with_other_fields_is_a_409_that_names_the_ref_id(aws, api):
    account = make_account(10)
    body = {"from": "48974", "to": "2348020000000", "message": "hi", "ref_id": "873ghf8749956778gf5"}
    api(send_event(account["token"], body))
    answer = api(send_event(account["token"], {**body, "message": "another text"}))
    assert answer["statusCode"] == 409
    assert "ref_id '873ghf8749956778gf5'" in json.loads(answer["body"])["message"]
    assert balance(account["account_id"]) == 9


def test_keys_are_per_account(aws, api):
    one, two = make_account(10), make_account(10, sender="48975")
    first = api(with_key(send_event(one["token"]), "shared-key"))
    other_body = {"from": "48975", "to": "2348020000000", "message": "When was the last time you went to the cinema?"}
    second = api(with_key(send_event(two["token"], other_body), "shared-key"))
    assert json.loads(first["body"])["reference_id"] != json.loads(second["body"])["reference_id"]
    assert balance(one["account_id"]) == balance(two["account_id"]) == 9


def test_a_refused_request_does_not_burn_its_key(aws, api):
    account = make_account(0)
    refused = api(with_key(send_event(account["token"]), "retry-me"))
    assert refused["statusCode"] == 402
    from sms_gateway.bootstrap import gateway

    gateway().store.refund_credits(account["account_id"], 5)  # a top-up
    assert api(with_key(send_event(account["token"]), "retry-me"))["statusCode"] == 200


def test_a_wrong_content_type_is_a_415_and_changes_nothing(aws, api):
    account = make_account(10)
    event = send_event(account["token"])
    event["headers"]["content-type"] = "text/plain"
    answer = api(event)
    assert answer["statusCode"] == 415
    assert "application/json" in json.loads(answer["body"])["message"]
    assert balance(account["account_id"]) == 10


def test_two_requests_racing_for_the_last_credit_exactly_one_wins(aws, api):
    # Given an account with one credit left
    account = make_account(1)
    statuses: list[int] = []
    start = threading.Barrier(2)

    def send(number: str) -> None:
        event = send_event(account["token"], {"from": "48974", "to": number, "message": "last one"})
        start.wait()
        statuses.append(api(event)["statusCode"])

    # When two sends arrive at once
    threads = [threading.Thread(target=send, args=(n,)) for n in ("2348020000000", "2348030000000")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then exactly one is accepted, the other refused for credits, and the balance is zero, not negative
    assert sorted(statuses) == [200, 402]
    assert balance(account["account_id"]) == 0
    assert len(queued_records(aws)) == 1


# ---------------------------------------------------------------- a send whose Lambda died holding its key


class Killed(BaseException):
    """What a Lambda that times out or runs out of memory does to a request: it stops where it is, and no `except`
    or `finally` of ours runs (nor does Powertools' error handling: it catches Exception)."""


def die_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *, on_call: int = 1, after: bool = False) -> None:
    """The request dies in its `on_call`th call of `owner.name`, before the call does anything (`after`: once it
    has done it, before its caller hears back)."""
    real = getattr(owner, name)
    calls = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] != on_call:
            return real(*args, **kwargs)
        if after:
            real(*args, **kwargs)
        raise Killed(f"{name} call {on_call}")

    monkeypatch.setattr(owner, name, dying)


def sqs_answer_lost(monkeypatch: pytest.MonkeyPatch, meanwhile: Any = None) -> Any:
    """SQS takes each send's records but its answer is lost (a timeout after the request left); `meanwhile(commands)`
    runs between the two (a dispatcher that got them at once). Returns the real enqueue, to put back."""
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    real_enqueue = SqsDispatchQueue.enqueue

    def taken_but_unanswered(self: Any, commands: Any) -> None:
        real_enqueue(self, commands)
        if meanwhile is not None:
            meanwhile(commands)
        raise TimeoutError("Read timeout on endpoint URL")

    monkeypatch.setattr(SqsDispatchQueue, "enqueue", taken_but_unanswered)
    return real_enqueue


def leases_run_out() -> None:
    """Time passes beyond every send's lease (logic.idempotency.SEND_LEASE): its holder is taken to be dead."""
    import boto3

    from sms_gateway.bootstrap import gateway

    store = gateway().store
    table = boto3.client("dynamodb")
    for item in table.scan(TableName=store.table_name)["Items"]:
        if item["pk"]["S"].startswith("IDEM#") and "lease_until" in item:
            table.update_item(
                TableName=store.table_name,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression="SET lease_until = :past",
                ExpressionAttributeValues={":past": {"N": "1"}},
            )


def batches_of(account_id: str) -> list[Any]:
    from sms_gateway.bootstrap import gateway

    return gateway().store.list_batches(account_id, limit=100)[0]


def messages_of(account_id: str, reference_id: int) -> list[Any]:
    from sms_gateway.bootstrap import gateway

    return gateway().store.list_messages(account_id, reference_id, limit=1000)[0]


def queued_message_ids(env: dict[str, str]) -> list[int]:
    return [i for record in queued_records(env) for i in json.loads(record["Body"])["message_ids"]]


MEMBERS = ["2348020000000", "2348030000000"]


def group_of_two(account_id: str) -> str:
    """A new group of two numbers (MEMBERS) on the account: its id."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import groups

    created = groups.create_group(
        gateway().store, account_id=account_id, default_country="NG", name="Regulars", members=MEMBERS, now=utc_now()
    )
    return created.group.group_id


def died_group_send(
    api: Any, monkeypatch: pytest.MonkeyPatch, account: dict[str, Any], key: str, *, queued: bool
) -> tuple[dict[str, Any], Any]:
    """A keyed 9bits send to a new group of two whose request died after storing and charging it, before queueing it
    (`queued`: right after, before it could answer): the request's body, and the batch it stored."""
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    body = {"from": "48974", "to": [group_of_two(account["account_id"])], "body": "Tonight: two for one"}
    die_once(monkeypatch, SqsDispatchQueue, "enqueue", after=queued)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), key))
    (stored,) = batches_of(account["account_id"])
    return body, stored


def a_member_joins(account_id: str, group_id: str) -> None:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import groups

    groups.add_members(
        gateway().store,
        account_id=account_id,
        default_country="NG",
        group_id=group_id,
        members=["2348040000000"],
        now=utc_now(),
    )


def taken_after_dying(monkeypatch: pytest.MonkeyPatch, account_id: str, request: Callable[[], Any]) -> Any:
    """Runs `request`, a send that dies right after queueing (before it could answer), and has a dispatcher take
    its messages (they go out, charged, whatever happens to the send now): the batch it stored."""
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    die_once(monkeypatch, SqsDispatchQueue, "enqueue", after=True)
    with pytest.raises(Killed):
        request()
    (stored,) = batches_of(account_id)
    taken_by_a_dispatcher(messages_of(account_id, stored.reference_id))
    return stored


def taken_by_a_dispatcher(messages: Any) -> None:
    """A dispatcher claims each of `messages`: they go out, charged, whatever happens to their send now."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now

    for message in messages:
        assert gateway().store.claim_for_dispatch(message.key, now=utc_now(), lease_seconds=60)


NUMBERS = [f"23480300{n:05d}" for n in range(30)]


def a_standing_send_with_a_waiting_message(
    api: Any, monkeypatch: Any, *, key: str
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """A keyed send with delivery reports to a group of two, with exactly the credits for it, whose request died right
    after queueing it; a dispatcher took the first member's message, the second (returned) waits; then the group
    gained two members, so a retry under `key` is refused for credits and answers with the send that stands."""
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import groups

    account = make_account(2)
    body = {
        "from": "48974",
        "to": [group_of_two(account["account_id"])],
        "body": "Tonight: two for one",
        "delivery_report": "yes",
    }
    die_once(monkeypatch, SqsDispatchQueue, "enqueue", after=True)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), key))
    (stored,) = batches_of(account["account_id"])
    taken, waiting = sorted(messages_of(account["account_id"], stored.reference_id), key=lambda m: m.msisdn)
    taken_by_a_dispatcher([taken])
    groups.add_members(
        gateway().store,
        account_id=account["account_id"],
        default_country="NG",
        group_id=body["to"][0],
        members=["2348040000000", "2348060000000"],
        now=utc_now(),
    )
    leases_run_out()
    return account, body, waiting


def notifications_queued(aws: dict[str, str]) -> list[dict[str, Any]]:
    """Every notification on the notify queue (taken off it)."""
    import boto3

    queue = boto3.client("sqs")
    reports = []
    while batch := queue.receive_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MaxNumberOfMessages=10).get("Messages"):
        reports += [json.loads(m["Body"]) for m in batch]
        queue.delete_message_batch(
            QueueUrl=aws["NOTIFY_QUEUE_URL"],
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    return reports


def test_a_send_that_died_before_queueing_is_finished_by_its_retry_once_its_lease_runs_out(aws, api, monkeypatch):
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    account = make_account(10)
    die_once(monkeypatch, SqsDispatchQueue, "enqueue")
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"]), "order-died"))
    # Stored and charged, not queued: a retry while the lease runs is told to wait, and changes nothing
    (stored,) = batches_of(account["account_id"])
    early = api(with_key(send_event(account["token"]), "order-died"))
    assert early["statusCode"] == 409
    assert "still being processed" in json.loads(early["body"])["message"]
    leases_run_out()
    retried = api(with_key(send_event(account["token"]), "order-died"))
    assert retried["statusCode"] == 200
    assert json.loads(retried["body"])["reference_id"] == str(stored.reference_id)
    assert [b.reference_id for b in batches_of(account["account_id"])] == [stored.reference_id]
    assert balance(account["account_id"]) == 9
    (message,) = messages_of(account["account_id"], stored.reference_id)
    assert queued_message_ids(aws) == [message.message_id]
    # The key is answered now: a further repeat gets the same answer and sends nothing
    again = api(with_key(send_event(account["token"]), "order-died"))
    assert json.loads(again["body"]) == json.loads(retried["body"])
    assert balance(account["account_id"]) == 9


def test_a_send_that_died_after_queueing_is_answered_by_its_retry_without_sending_again(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore

    account = make_account(10)
    die_once(monkeypatch, DynamoStore, "complete")
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"]), "answer-died"))
    leases_run_out()
    retried = api(with_key(send_event(account["token"]), "answer-died"))
    assert retried["statusCode"] == 200
    (stored,) = batches_of(account["account_id"])
    assert json.loads(retried["body"])["reference_id"] == str(stored.reference_id)
    assert balance(account["account_id"]) == 9
    # Queued again under the same deduplication id: the FIFO queue holds the record once
    assert len(queued_records(aws)) == 1


def test_a_send_that_died_before_storing_anything_is_sent_by_its_retry(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore

    account = make_account(10)
    die_once(monkeypatch, DynamoStore, "create_batch_and_reserve")
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"]), "died-early"))
    assert batches_of(account["account_id"]) == []
    leases_run_out()
    retried = api(with_key(send_event(account["token"]), "died-early"))
    assert retried["statusCode"] == 200
    assert [str(b.reference_id) for b in batches_of(account["account_id"])] == [
        json.loads(retried["body"])["reference_id"]
    ]
    assert balance(account["account_id"]) == 9
    assert len(queued_records(aws)) == 1


KILL_POINTS = [
    ("DynamoStore", "create_batch_and_reserve", 1, False),
    ("DynamoStore", "create_batch_and_reserve", 1, True),
    ("DynamoStore", "_batch_write", 1, True),
    ("DynamoStore", "_batch_write", 2, False),
    ("DynamoStore", "_batch_write", 2, True),
    ("SqsDispatchQueue", "enqueue", 1, False),
    ("SqsDispatchQueue", "enqueue", 1, True),
    ("DynamoStore", "complete", 1, False),
]


def owner_named(name: str) -> Any:
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    return {"DynamoStore": DynamoStore, "SqsDispatchQueue": SqsDispatchQueue}[name]


def assert_sent_once(env: dict[str, str], account_id: str, answer: dict[str, Any], credits_left: int) -> None:
    """The keyed send of NUMBERS stands as one batch: every recipient stored once, queued once, charged once."""
    assert answer["statusCode"] == 200, answer
    (batch,) = [b for b in batches_of(account_id) if b.status != "failed"]
    assert json.loads(answer["body"])["reference_id"] == str(batch.reference_id)
    messages = messages_of(account_id, batch.reference_id)
    assert sorted(m.msisdn for m in messages) == sorted(f"+{n}" for n in NUMBERS)
    assert sorted(queued_message_ids(env)) == sorted(m.message_id for m in messages)
    assert balance(account_id) == credits_left


def killed_at(
    monkeypatch: pytest.MonkeyPatch, api: Any, event: dict[str, Any], key: str, kill: tuple[str, str, int, bool]
) -> None:
    """The keyed request is killed at `kill` (a KILL_POINTS entry), and its lease then runs out."""
    owner, call, on_call, after = kill
    die_once(monkeypatch, owner_named(owner), call, on_call=on_call, after=after)
    with pytest.raises(Killed):
        api(with_key(event, key))
    leases_run_out()


@pytest.mark.parametrize(("owner", "call", "on_call", "after"), KILL_POINTS)
def test_wherever_a_keyed_send_dies_its_retry_sends_it_once_and_charges_it_once(
    aws, api, monkeypatch, owner, call, on_call, after
):
    # Given a send to 30 numbers whose request is killed at one of its steps (before it or right after it)
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    killed_at(monkeypatch, api, send_event(account["token"], body), "kill-point", (owner, call, on_call, after))
    # When the client retries under its key once the dead request's lease ran out
    retried = api(with_key(send_event(account["token"], body), "kill-point"))
    # Then the send stands once: 30 messages stored and queued, 30 credits taken, no more
    assert_sent_once(aws, account["account_id"], retried, 100 - 30)


def fail_the_second_chunk(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The second BatchWriteItem of the send's messages times out; returns the real method."""
    from sms_gateway.adapters.dynamodb import DynamoStore

    real_batch_write = DynamoStore._batch_write
    calls = [0]

    def second_chunk_fails(self, requests):
        calls[0] += 1
        if calls[0] == 2:
            raise TimeoutError("Read timeout on endpoint URL")
        return real_batch_write(self, requests)

    monkeypatch.setattr(DynamoStore, "_batch_write", second_chunk_fails)
    return real_batch_write


@pytest.mark.parametrize("after", [False, True])
def test_a_send_whose_undo_dies_is_charged_once_by_its_retry(aws, api, monkeypatch, after):
    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given a send whose second chunk of messages cannot be stored, and whose undo is killed before or after it ran
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    real_batch_write = fail_the_second_chunk(monkeypatch)
    die_once(monkeypatch, DynamoStore, "fail_batch_and_refund", after=after)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "undo-died"))
    # Then the batch and its credits moved together: failed and given back, or neither
    (first,) = batches_of(account["account_id"])
    assert (first.status, balance(account["account_id"])) == (("failed", 100) if after else ("queued", 70))
    # And the client's retry sends it once and charges it once (finishing the batch, or afresh if it was undone)
    monkeypatch.setattr(DynamoStore, "_batch_write", real_batch_write)
    leases_run_out()
    retried = api(with_key(send_event(account["token"], body), "undo-died"))
    assert_sent_once(aws, account["account_id"], retried, 100 - 30)


RESEND_KILL_POINTS = [
    ("DynamoStore", "create_batch_and_reserve", 1, True),
    ("DynamoStore", "_batch_write", 1, True),
    ("SqsDispatchQueue", "enqueue", 1, True),
    ("DynamoStore", "complete", 1, False),
]


@pytest.mark.parametrize(("owner", "call", "on_call", "after"), RESEND_KILL_POINTS)
def test_a_send_undone_and_then_sent_afresh_is_still_sent_once_when_the_fresh_send_dies(
    aws, api, monkeypatch, owner, call, on_call, after
):
    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given a keyed send that could not be stored and was undone (failed, refunded), killed before it let go of its key
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    real_batch_write = fail_the_second_chunk(monkeypatch)
    die_once(monkeypatch, DynamoStore, "abandon")
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "resent"))
    monkeypatch.setattr(DynamoStore, "_batch_write", real_batch_write)
    # And its first retry, finding the batch undone, sends afresh, and is killed part-way too
    leases_run_out()
    killed_at(monkeypatch, api, send_event(account["token"], body), "resent", (owner, call, on_call, after))
    # When the client retries once more
    retried = api(with_key(send_event(account["token"], body), "resent"))
    # Then the fresh send is the one finished: stored once, queued once, charged once
    assert_sent_once(aws, account["account_id"], retried, 100 - 30)
    # And a repeat gets the same answer
    again = api(with_key(send_event(account["token"], body), "resent"))
    assert json.loads(again["body"]) == json.loads(retried["body"])
    assert balance(account["account_id"]) == 100 - 30


def test_a_finishing_retry_that_dies_after_settling_the_difference_leaves_nothing_owed(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.optouts import OptOut

    # Given a keyed send to 30 numbers that died after storing 25 of them
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    die_once(monkeypatch, DynamoStore, "_batch_write", on_call=2)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "owed"))
    # And one of the 5 it did not store opted out meanwhile (so the batch costs 29 now, not the 30 it reserved)
    opted_out = f"+{NUMBERS[-1]}"
    gateway().store.opt_out(
        OptOut(account_id=account["account_id"], sender="48974", msisdn=opted_out, keyword="STOP", at="x")
    )
    # When its first retry dies right after storing the rest with the difference given back, and a second finishes it
    leases_run_out()
    die_once(monkeypatch, DynamoStore, "store_and_charge", after=True)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "owed"))
    leases_run_out()
    retried = api(with_key(send_event(account["token"], body), "owed"))
    # Then the 29 are stored and queued once, and the difference was given back once: 29 credits taken
    assert retried["statusCode"] == 200, retried
    (batch,) = batches_of(account["account_id"])
    messages = messages_of(account["account_id"], batch.reference_id)
    assert sorted(m.msisdn for m in messages) == sorted(f"+{n}" for n in NUMBERS[:-1])
    assert sorted(queued_message_ids(aws)) == sorted(m.message_id for m in messages)
    assert batch.cost == 29
    assert balance(account["account_id"]) == 100 - 29


@contextmanager
def queueing_and_then_undo_fail(failing_write: str) -> Iterator[None]:
    """Inside the block SQS takes a send's records but its answer is lost, and DynamoStore's `failing_write` is
    throttled (a ClientError) whenever the send's undo calls it."""
    from botocore.exceptions import ClientError

    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    real_enqueue = SqsDispatchQueue.enqueue

    def taken_but_unanswered(self: Any, commands: Any) -> None:
        real_enqueue(self, commands)
        raise TimeoutError("Read timeout on endpoint URL")

    def throttled(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, failing_write)

    with pytest.MonkeyPatch.context() as patches:
        patches.setattr(SqsDispatchQueue, "enqueue", taken_but_unanswered)
        patches.setattr(DynamoStore, failing_write, throttled)
        yield


def test_a_keyed_send_whose_undo_fails_keeps_its_key_and_its_retry_sends_it_once(aws, api):
    # Given a keyed send whose records SQS takes but whose answer is lost, and whose undo then fails too (DynamoDB
    # throttling the refunds): its records may be out, its batch queued and charged
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    with queueing_and_then_undo_fail("move_and_refund"):
        answer = api(with_key(send_event(account["token"], body), "undo-failed"))
    # Then the client is told it failed and may have been done in part
    assert answer["statusCode"] == 500, answer
    assert "may have been done in part" in json.loads(answer["body"])["message"]
    # And its retry under the key, once the lease ran out, finishes that send rather than sending it again
    early = api(with_key(send_event(account["token"], body), "undo-failed"))
    assert early["statusCode"] == 409
    leases_run_out()
    retried = api(with_key(send_event(account["token"], body), "undo-failed"))
    assert_sent_once(aws, account["account_id"], retried, 100 - 30)


def test_a_keyed_send_withdrawn_whole_but_for_its_batch_is_sent_afresh_by_its_retry(aws, api):
    # Given a keyed send whose records SQS took without answering, whose undo failed and refunded every message,
    # and whose last write (the batch to failed) failed: a batch still queued with nothing left to send
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    with queueing_and_then_undo_fail("set_batch_status"):
        assert api(with_key(send_event(account["token"], body), "withdrawn"))["statusCode"] == 500
    (withdrawn,) = batches_of(account["account_id"])
    assert withdrawn.status == "queued" and balance(account["account_id"]) == 100
    # When the client retries under its key once the lease ran out
    leases_run_out()
    retried = api(with_key(send_event(account["token"], body), "withdrawn"))
    # Then the withdrawn batch is failed and the send goes out afresh, once, as after the 503 it should have had
    assert retried["statusCode"] == 200, retried
    standing = [b for b in batches_of(account["account_id"]) if b.status != "failed"]
    assert [str(b.reference_id) for b in standing] == [json.loads(retried["body"])["reference_id"]]
    messages = messages_of(account["account_id"], standing[0].reference_id)
    assert sorted(m.msisdn for m in messages) == sorted(f"+{n}" for n in NUMBERS)
    assert balance(account["account_id"]) == 100 - 30
    # And the withdrawn batch's records, still queued, hold only failed messages: nothing of them is sent
    first = {m.message_id: m.status for m in messages_of(account["account_id"], withdrawn.reference_id)}
    assert set(first.values()) == {"failed"}
    assert sorted(queued_message_ids(aws)) == sorted([*first, *(m.message_id for m in messages)])


def test_an_unkeyed_send_that_cannot_be_stored_is_failed_and_refunded_once(aws, api, monkeypatch):
    # Given a send without a key whose second chunk of messages cannot be stored
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    fail_the_second_chunk(monkeypatch)
    answer = api(send_event(account["token"], body))
    # Then the caller is told to retry, the batch is failed, the credits are all back and nothing is queued
    assert answer["statusCode"] == 503, answer
    assert "could not be stored in time and was undone" in json.loads(answer["body"])["message"]
    (batch,) = batches_of(account["account_id"])
    assert batch.status == "failed"
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []
    # And the messages it stored before the failure are failed too: none reads as waiting to be sent
    stored = messages_of(account["account_id"], batch.reference_id)
    assert stored and {(m.status, m.error_code) for m in stored} == {("failed", "not_queued")}


def test_an_unkeyed_send_whose_batch_and_credits_write_fails_takes_nothing(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore

    account = make_account(100)

    def unreachable(self, batch, *, superseding=None):
        raise TimeoutError("Connect timeout on endpoint URL")

    monkeypatch.setattr(DynamoStore, "create_batch_and_reserve", unreachable)
    answer = api(send_event(account["token"], {"from": "48974", "to": NUMBERS, "message": "thirty of them"}))
    assert answer["statusCode"] == 503, answer
    assert batches_of(account["account_id"]) == []
    assert balance(account["account_id"]) == 100


def test_an_unkeyed_send_whose_batch_and_credits_write_lost_its_answer_is_given_back_once(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore

    account = make_account(100)
    written = DynamoStore.create_batch_and_reserve

    def answer_lost(self, batch, *, superseding=None):
        written(self, batch, superseding=superseding)
        raise TimeoutError("Read timeout on endpoint URL")

    monkeypatch.setattr(DynamoStore, "create_batch_and_reserve", answer_lost)
    answer = api(send_event(account["token"], {"from": "48974", "to": NUMBERS, "message": "thirty of them"}))
    assert answer["statusCode"] == 503, answer
    assert [batch.status for batch in batches_of(account["account_id"])] == ["failed"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_an_unkeyed_send_given_an_id_another_batch_has_takes_nothing_and_leaves_that_batch_alone(aws, api, monkeypatch):
    from sms_gateway.logic import send

    # Given a batch sent and charged (30 credits), and a second send whose new id happens to be the same (two
    # containers' ids met in one millisecond with the same random bits)
    account = make_account(100)
    first = api(send_event(account["token"], {"from": "48974", "to": NUMBERS, "message": "thirty of them"}))
    taken = int(json.loads(first["body"])["reference_id"])
    monkeypatch.setattr(send, "new_batch_id", lambda: taken)
    # When that second send is made without a key
    answer = api(send_event(account["token"], {"from": "48974", "to": NUMBERS[:5], "message": "five"}))
    # Then it is a 503 to retry (a retry gets a new id) and takes nothing, and the first batch is still queued and
    # charged (not failed and refunded by the second send's undo)
    assert answer["statusCode"] == 503, answer
    [batch] = batches_of(account["account_id"])
    assert (batch.reference_id, batch.status) == (taken, "queued")
    assert balance(account["account_id"]) == 70


@pytest.mark.parametrize("keyed", ["Idempotency-Key", "ref_id"])
@pytest.mark.parametrize("dies", [False, True], ids=["answered", "killed-after-its-batch"])
def test_a_keyed_send_whose_first_id_another_batch_has_is_sent_under_another_once(aws, api, monkeypatch, keyed, dies):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.domain import ids
    from sms_gateway.logic import idempotency

    # Given a batch sent and charged (30 credits), and a keyed send whose key's new id happens to be the same (two
    # containers' ids met in one millisecond with the same random bits): nothing of the key's send is stored yet
    account = make_account(100)
    first = api(send_event(account["token"], {"from": "48974", "to": NUMBERS, "message": "thirty of them"}))
    taken = int(json.loads(first["body"])["reference_id"])
    new_ids = iter([taken])
    monkeypatch.setattr(idempotency, "new_batch_id", lambda: next(new_ids, None) or ids.new_batch_id())
    body = {"from": "48974", "to": NUMBERS[:5], "message": "five"}

    def request() -> dict[str, Any]:
        if keyed == "ref_id":
            return send_event(account["token"], {**body, "ref_id": "five-1"})
        return with_key(send_event(account["token"], body), "five-1")

    # When it is sent (and, killed, its Lambda dies right after it wrote its batch under another id, and the client
    # retries once the lease has run out)
    if dies:
        with pytest.MonkeyPatch.context() as dying:
            die_once(dying, DynamoStore, "create_batch_and_reserve", on_call=2, after=True)
            with pytest.raises(Killed):
                api(request())
        leases_run_out()
    answer = api(request())
    # Then it is sent, as an unkeyed send would be under another id, not answered 503 for ids that met
    assert answer["statusCode"] == 200, answer
    mine = int(json.loads(answer["body"])["reference_id"])
    assert mine != taken
    # And once: the key names that one batch of five, charged once, and the first batch is left alone
    batches = {b.reference_id: b for b in batches_of(account["account_id"])}
    assert sorted(batches) == sorted([taken, mine])
    assert (batches[taken].text, batches[taken].status, batches[mine].text, batches[mine].recipients) == (
        "thirty of them",
        "queued",
        "five",
        5,
    )
    assert balance(account["account_id"]) == 65
    assert len(queued_message_ids(aws)) == 35
    # And its retry under the same key answers the same, sending nothing again
    again = api(request())
    assert json.loads(again["body"]) == json.loads(answer["body"])
    assert balance(account["account_id"]) == 65


def test_of_two_retries_after_the_lease_only_one_finishes_the_send(aws):
    from datetime import timedelta

    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import KeyClaim, utc_now
    from sms_gateway.errors import Conflict

    store = gateway().store
    now = utc_now()
    lease = timedelta(seconds=90)
    assert store.begin("acc", "k", "f", now=now, reference_id=42, lease=lease) == KeyClaim(reference_id=42)
    later = now + timedelta(seconds=91)
    assert store.begin("acc", "k", "f", now=later, reference_id=43, lease=lease) == KeyClaim(42, resumed=True)
    with pytest.raises(Conflict, match="still being processed"):
        store.begin("acc", "k", "f", now=later, reference_id=44, lease=lease)
    # A key taken without a lease (a request that cannot be finished) waits for its window, as before
    store.begin("acc", "group", "f", now=now, reference_id=45)
    with pytest.raises(Conflict, match="still being processed"):
        store.begin("acc", "group", "f", now=later + timedelta(hours=1), reference_id=46, lease=lease)


def test_a_send_with_too_little_of_its_invocation_left_is_a_503_to_retry_and_changes_nothing(aws):
    from tests.integration.test_send_path import load_function

    account = make_account(10)
    module = load_function("api")
    # When a send arrives with less than the send's reserve left of its invocation
    answer = module.handler(with_key(send_event(account["token"]), "late-1"), ShortOfTime(4_000))
    # Then it is the 9bits family's error shape, 503 with Retry-After, and nothing was stored, charged or queued
    assert answer["statusCode"] == 503
    assert answer["headers"]["Retry-After"] == "1"
    body = json.loads(answer["body"])
    assert body["status_code"] == 503
    assert "nothing was stored or charged; try again" in body["message"]
    assert balance(account["account_id"]) == 10
    assert queued_records(aws) == []
    # And the key was let go: the retry, with time, is sent once
    retry = module.handler(with_key(send_event(account["token"]), "late-1"), ShortOfTime(20_000))
    assert retry["statusCode"] == 200
    assert balance(account["account_id"]) == 9


def test_a_send_the_queue_took_but_failed_to_confirm_is_withdrawn_never_submitted_and_its_retry_sends_once(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from tests.conftest import route_simulator_upstreams_to
    from tests.integration.test_send_path import RecordingUpstream

    upstream = RecordingUpstream()
    route_simulator_upstreams_to(monkeypatch, upstream)
    from tests.integration.test_send_path import as_lambda_sqs_event, load_function, read_delivery_report

    account = make_account(10)
    # Given a dispatch queue that takes the send's record and then fails (SQS gave no answer)
    real_enqueue = sqs_answer_lost(monkeypatch)
    answer = api(with_key(send_event(account["token"]), "order-77"))
    # Then the caller gets a 503 to retry, and the credits are back
    assert answer["statusCode"] == 503, answer
    assert "could not be queued in time and was undone" in json.loads(answer["body"])["message"]
    assert balance(account["account_id"]) == 10
    # And when the dispatcher gets the record SQS took after all, it submits nothing: the message was withdrawn
    records = queued_records(aws)
    assert len(records) == 1
    withdrawn = json.loads(records[0]["Body"])["reference_id"]
    assert load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext()) == {"batchItemFailures": []}
    assert upstream.submits == []
    [entry] = read_delivery_report(api, account["token"], str(withdrawn))
    assert entry["status"] == "failed"
    # And the client's retry under the same key is a new send, charged and submitted once
    monkeypatch.setattr(SqsDispatchQueue, "enqueue", real_enqueue)
    retry = api(with_key(send_event(account["token"]), "order-77"))
    assert retry["statusCode"] == 200
    assert json.loads(retry["body"])["reference_id"] != withdrawn
    assert balance(account["account_id"]) == 9


def test_a_send_that_stands_after_its_queueing_failed_reports_its_withdrawn_messages_to_the_client(
    aws, api, monkeypatch
):
    import boto3

    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now

    account = make_account(10)
    # Given a dispatch queue that takes a send's record and then fails, while a dispatcher claims one message
    real_enqueue = SqsDispatchQueue.enqueue

    def took_it_and_one_was_claimed(self, commands):
        real_enqueue(self, commands)
        [first] = messages_of(account["account_id"], commands[0].reference_id)[:1]
        gateway().store.claim_for_dispatch(first.key, now=utc_now(), lease_seconds=60)
        raise TimeoutError("Read timeout on endpoint URL")

    monkeypatch.setattr(SqsDispatchQueue, "enqueue", took_it_and_one_was_claimed)
    body = {
        "from": "48974",
        "to": ["2348020000001", "2348030000002", "2348020000003"],
        "body": "Hi",
        "delivery_report": "yes",
    }
    answer = api(send_event(account["token"], body))
    # Then the send stands (the claimed message goes on), the other two are failed and refunded
    assert answer["statusCode"] == 200, answer
    answered = json.loads(answer["body"])
    reference_id = int(answered["reference_id"])
    failed = [m for m in messages_of(account["account_id"], reference_id) if m.status == "failed"]
    assert len(failed) == 2
    assert balance(account["account_id"]) == 10 - 1
    # And its answer counts only the message going out (it counted all three) and names the two others in
    # `refused`, saying to send to them again
    assert answered["recipients_processed"] == 1
    assert sorted(r["to"] for r in answered["refused"]) == sorted(m.msisdn.lstrip("+") for m in failed)
    assert all("could not be queued in time" in r["reason"] for r in answered["refused"])
    # And the client hears of the two failures through its delivery-report webhook, as of any other
    queued = boto3.client("sqs").receive_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MaxNumberOfMessages=10)
    reports = [json.loads(m["Body"]) for m in queued.get("Messages", [])]
    assert sorted(r["id"] for r in reports) == sorted(f"dlr_{m.message_id}_2" for m in failed)
    assert {(r["payload"]["status"], r["payload"]["error_code"]) for r in reports} == {("failed", "not_queued")}


def keyed_two_number_send_that_dies(
    api: Any, monkeypatch: pytest.MonkeyPatch, owner: type, method: str, key: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An account of 10 credits whose keyed send to two numbers died in `owner.method` (the account, the body)."""
    account = make_account(10)
    body = {"from": "48974", "to": ["2348020000000", "2348030000000"], "body": "Tonight: two for one"}
    die_once(monkeypatch, owner, method)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), key))
    return account, body


def test_a_send_finished_by_its_retry_after_a_recipient_opted_out_does_not_send_to_that_recipient(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out

    # Given a keyed send to two numbers whose request died after storing and charging it, before queueing it
    account, body = keyed_two_number_send_that_dies(api, monkeypatch, SqsDispatchQueue, "enqueue", "stop-meanwhile")
    assert balance(account["account_id"]) == 8
    # And the first number texts STOP to the sender before the client retries
    store = gateway().store
    record_opt_out(store, store, account["account_id"], "2348020000000", "48974", now=utc_now())
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "stop-meanwhile"))
    assert retried["statusCode"] == 200, retried
    answered = json.loads(retried["body"])
    # Then the answer names the opted-out number as refused (not sent, not charged)...
    assert [r["to"] for r in answered.get("refused", [])] == ["2348020000000"]
    # ...and that is what happened: only the other number is counted, queued and charged
    assert answered["recipients_processed"] == 1
    (batch,) = batches_of(account["account_id"])
    going = [m for m in messages_of(account["account_id"], batch.reference_id) if m.status == "queued"]
    assert [m.msisdn for m in going] == ["+2348030000000"]
    assert sorted(queued_message_ids(aws)) == [m.message_id for m in going]
    assert balance(account["account_id"]) == 9


def test_a_keyed_send_to_a_group_deleted_after_its_request_died_is_undone_and_refused_by_its_retry(
    aws, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups

    # Given a keyed send to a group of two whose request died after storing and charging it, before queueing it
    account = make_account(10)
    body, _ = died_group_send(api, monkeypatch, account, "group-gone", queued=False)
    assert balance(account["account_id"]) == 8
    # And the group is deleted meanwhile
    groups.delete_group(gateway().store, account["account_id"], body["to"][0])
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "group-gone"))
    # Then, since no dispatcher had any of it, the send is undone (credits back, nothing queued) and the refusal is
    # true: the group is unknown and nothing was sent. From 2026-12-06 until the same day's fix the retry finished
    # with the members its request had stored, which for a request that died storing is only part of the group
    # (test_a_keyed_group_send_that_died_while_storing_is_not_sent_in_part_once_its_group_is_deleted)
    assert retried["statusCode"] == 400, retried
    assert "unknown group" in json.loads(retried["body"])["message"]
    assert queued_message_ids(aws) == []
    assert balance(account["account_id"]) == 10
    assert batches_of(account["account_id"])[0].status == "failed"


def test_a_keyed_send_whose_retry_is_short_of_credits_for_its_grown_group_is_refunded_and_lets_its_key_go(
    aws, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway

    # Given a keyed send to a group of two, with exactly the credits for it, whose request died after storing and
    # charging it, before queueing it
    account = make_account(2)
    store = gateway().store
    body, _ = died_group_send(api, monkeypatch, account, "group-grew", queued=False)
    assert balance(account["account_id"]) == 0
    # And the group gains a member meanwhile, so finishing the send would cost a credit the account does not have
    a_member_joins(account["account_id"], body["to"][0])
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "group-grew"))
    # Then it is refused for want of credits, and the send its first request left is undone: nothing queued, the
    # two credits back
    assert retried["statusCode"] == 402, retried
    assert queued_message_ids(aws) == []
    assert balance(account["account_id"]) == 2
    (undone,) = batches_of(account["account_id"])
    assert undone.status == "failed"
    assert {m.status for m in messages_of(account["account_id"], undone.reference_id)} == {"failed"}
    # And the key is let go: after a top-up, the same request is sent (once, to the three)
    store.refund_credits(account["account_id"], 1)
    again = api(with_key(send_event(account["token"], body), "group-grew"))
    assert again["statusCode"] == 200, again
    assert json.loads(again["body"])["recipients_processed"] == 3
    assert len(queued_message_ids(aws)) == 3
    assert balance(account["account_id"]) == 0


def test_a_repeat_without_a_content_type_re_encoded_by_another_json_library_is_the_same_request(aws, api):
    import base64

    # Given a send without a Content-Type header (read as JSON), which API Gateway hands over base64-encoded
    account = make_account(10)
    body = {"from": "48974", "to": "2348020000000", "message": "hi", "ref_id": "no-content-type-1"}

    def untyped(text: str) -> dict[str, Any]:
        event = send_event(account["token"])
        del event["headers"]["content-type"]
        event["isBase64Encoded"] = True
        event["body"] = base64.b64encode(text.encode()).decode()
        return event

    first = api(untyped(json.dumps(body, indent=2)))
    assert first["statusCode"] == 200, first
    # When the client's retry writes the same fields in another order and spacing
    second = api(untyped(json.dumps(dict(reversed(list(body.items()))), separators=(",", ":"))))
    # Then it is the same request (docs/dialects/9bits.md: the JSON is compared as its value)
    assert second["statusCode"] == 200, second
    assert json.loads(second["body"]) == json.loads(first["body"])
    assert balance(account["account_id"]) == 9


def test_a_refused_retry_of_a_keyed_group_send_that_a_dispatcher_took_does_not_say_nothing_was_sent(
    aws, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups

    # Given a keyed send to a group of two whose request died right after queueing it (before it could answer)
    account = make_account(10)
    body, stored = died_group_send(api, monkeypatch, account, "group-sent", queued=True)
    # And a dispatcher took its messages (they go out, charged)
    taken_by_a_dispatcher(messages_of(account["account_id"], stored.reference_id))
    # And the client deleted the group meanwhile (a campaign's temporary group, say)
    groups.delete_group(gateway().store, account["account_id"], body["to"][0])
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "group-sent"))
    answered = json.loads(retried["body"])
    # Then the send still stands, sent and charged...
    assert balance(account["account_id"]) == 8
    assert [b.status for b in batches_of(account["account_id"])] == ["queued"]
    # ...and the answer says so: it names the batch that stands (as the first request would have), never
    # "nothing was sent" (which has the client send it again under a new key: every member texted twice)
    assert "nothing was sent" not in answered["message"], (retried["statusCode"], answered)
    assert str(stored.reference_id) in retried["body"], (retried["statusCode"], answered)


def test_a_retry_refused_for_credits_whose_send_a_dispatcher_took_in_part_answers_with_the_send_that_stands(
    aws, api, monkeypatch
):

    # Given a keyed send to a group of two, with exactly the credits for it, whose request died right after queueing
    account = make_account(2)
    body, stored = died_group_send(api, monkeypatch, account, "group-grew-taken", queued=True)
    # And a dispatcher took the first member's message (it goes out, charged)
    taken, waiting = sorted(messages_of(account["account_id"], stored.reference_id), key=lambda m: m.msisdn)
    taken_by_a_dispatcher([taken])
    # And the group gained a member, so finishing the send would cost a credit the account does not have
    a_member_joins(account["account_id"], body["to"][0])
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "group-grew-taken"))
    # Then it is not refused (a 402 says nothing was sent): it answers with the send that stands, the message the
    # dispatcher took, and names the member it does not send to (withdrawn, refunded) for the client to send again
    assert retried["statusCode"] == 200, retried
    answered = json.loads(retried["body"])
    assert answered["reference_id"] == str(stored.reference_id)
    assert answered["recipients_processed"] == 1
    assert [r["to"] for r in answered["refused"]] == [waiting.msisdn.lstrip("+")]
    assert balance(account["account_id"]) == 1
    statuses = {m.msisdn: m.status for m in messages_of(account["account_id"], stored.reference_id)}
    assert statuses == {taken.msisdn: "queued", waiting.msisdn: "failed"}
    # And the key keeps that answer: a later retry gets it again and changes nothing
    again = api(with_key(send_event(account["token"], body), "group-grew-taken"))
    assert (again["statusCode"], json.loads(again["body"])) == (200, answered)
    assert balance(account["account_id"]) == 1


def test_a_retry_answered_with_the_send_that_stands_still_names_the_number_that_opted_out(aws, api, monkeypatch):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out

    # Given a number that texted STOP to the sender
    account = make_account(2)
    store = gateway().store
    stopped = "2348050000000"
    record_opt_out(store, store, account["account_id"], stopped, "48974", now=utc_now())
    # And a keyed send to a group of two and that number, with exactly the credits for the two, whose request died
    # right after queueing (the first answer would have named the number in `refused`, opted out)
    body = {"from": "48974", "to": [group_of_two(account["account_id"]), stopped], "body": "Tonight: two for one"}
    die_once(monkeypatch, SqsDispatchQueue, "enqueue", after=True)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "stop-standing"))
    (stored,) = batches_of(account["account_id"])
    taken, _ = sorted(messages_of(account["account_id"], stored.reference_id), key=lambda m: m.msisdn)
    taken_by_a_dispatcher([taken])
    # And the group gained a member, so the retry is refused for credits and answers with the send that stands
    a_member_joins(account["account_id"], body["to"][0])
    leases_run_out()
    retried = api(with_key(send_event(account["token"], body), "stop-standing"))
    assert retried["statusCode"] == 200, retried
    answered = json.loads(retried["body"])
    assert answered["reference_id"] == str(stored.reference_id)
    # Then the opted-out number is still named in `refused`, as the first answer (and a finishing retry) names it
    assert stopped in [r["to"] for r in answered.get("refused", [])], answered


def test_a_withdrawn_message_of_a_send_that_stands_is_reported_under_one_webhook_id_however_often_its_retry_is_refused(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given a keyed send with delivery reports to a group of two whose request died after queueing it, a dispatcher
    # took the first member's message, and the group then grew so that a retry is refused for credits
    account, body, waiting = a_standing_send_with_a_waiting_message(api, monkeypatch, key="reported-once")
    # When the first such retry's answer cannot be kept under the key (a throttled write: the retry still answers)
    real_complete = DynamoStore.complete
    calls = [0]

    def throttled_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise TimeoutError("Read timeout on endpoint URL")
        return real_complete(self, *args, **kwargs)

    monkeypatch.setattr(DynamoStore, "complete", throttled_once)
    first = api(with_key(send_event(account["token"], body), "reported-once"))
    assert first["statusCode"] == 200, first
    # And the client retries again after the lease
    leases_run_out()
    again = api(with_key(send_event(account["token"], body), "reported-once"))
    assert again["statusCode"] == 200, again
    # Then the withdrawn member's failure was reported to the client, and each refused retry's report of it (at least
    # once: a retry cannot tell whether the undo before it died before reporting) carries the same webhook id, so the
    # client keeps one
    reports = notifications_queued(aws)
    withdrawn = [r for r in reports if r["payload"].get("error_code") == "not_queued"]
    assert withdrawn, reports
    assert {r["id"] for r in withdrawn} == {withdrawn[0]["id"]}
    assert withdrawn[0]["id"].startswith(f"dlr_{waiting.message_id}_")


def test_a_keyed_group_send_that_died_while_storing_is_not_sent_in_part_once_its_group_is_deleted(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import groups

    # Given a keyed send to a group of 150 whose request died storing its messages: the first chunk of 100 was
    # written, the rest never was, nothing was queued (no dispatcher has any of it)
    account = make_account(200)
    members = [f"2348030{n:06d}" for n in range(150)]
    store = gateway().store
    created = groups.create_group(
        store, account_id=account["account_id"], default_country="NG", name="Campaign", members=members, now=utc_now()
    )
    body = {"from": "48974", "to": [created.group.group_id], "body": "Tonight: two for one"}
    die_once(monkeypatch, DynamoStore, "add_messages", on_call=2)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "campaign"))
    (stored,) = batches_of(account["account_id"])
    assert len(messages_of(account["account_id"], stored.reference_id)) == 100
    # And the client deleted its campaign group meanwhile
    groups.delete_group(store, account["account_id"], created.group.group_id)
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "campaign"))
    answered = json.loads(retried["body"])
    # Then the group is not sent to a hundred of its 150 members with a 200 that names none of the 50 left out:
    # either the send is undone and refused (nothing of it was ever queued), or its answer accounts for every member
    if retried["statusCode"] == 200:
        assert answered["recipients_processed"] + len(answered.get("refused", [])) == 150, answered
    else:
        assert balance(account["account_id"]) == 200
        assert queued_message_ids(aws) == []


def test_a_withdrawn_message_is_reported_when_the_undo_that_withdrew_it_died_before_reporting_it(aws, api, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given a keyed send with delivery reports to a group of two whose request died after queueing it, a dispatcher
    # took the first member's message, and the group then grew so that a retry is refused for credits
    account, body, _waiting = a_standing_send_with_a_waiting_message(api, monkeypatch, key="undo-died")
    # When the first such retry's undo dies right after its conditional write withdrew the waiting message (the
    # Lambda's timeout), before it reported it
    die_once(monkeypatch, DynamoStore, "move_and_refund", after=True)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], body), "undo-died"))
    # And the client retries after the lease, and is answered with the send that stands
    leases_run_out()
    again = api(with_key(send_event(account["token"], body), "undo-died"))
    assert again["statusCode"] == 200, again
    # Then the withdrawn member's failure was reported to the client once: the retry that finished the undo reported
    # it (the undo that withdrew it died before reporting it, and a report is never lost that way)
    reports = notifications_queued(aws)
    withdrawn = [r for r in reports if r["payload"].get("error_code") == "not_queued"]
    assert len(withdrawn) == 1, [r["id"] for r in withdrawn]


def test_a_retry_after_the_answer_was_lost_answers_as_the_send_did_though_an_upstream_failed_one_message_since(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.domain.status import MessageStatus

    # Given a keyed send to two numbers that was stored, charged and queued, whose request died before its answer
    # was kept (the client got no answer: a reset connection)
    account, body = keyed_two_number_send_that_dies(api, monkeypatch, DynamoStore, "complete", "answer-lost")
    (stored,) = batches_of(account["account_id"])
    # And the dispatcher sent both, and the upstream refused one of them (failed and refunded, as dispatch does)
    refused_by_upstream = sorted(messages_of(account["account_id"], stored.reference_id), key=lambda m: m.msisdn)[0]
    gateway().store.move_and_refund(
        [refused_by_upstream], MessageStatus.FAILED, now=utc_now(), error_code="upstream_rejected"
    )
    leases_run_out()
    # When the client retries under its key
    retried = api(with_key(send_event(account["token"], body), "answer-lost"))
    # Then it gets the answer the send gave (docs/dialects/9bits.md: "returns the answer it would have given"):
    # both recipients were processed, none was refused before sending
    answer = json.loads(retried["body"])
    assert retried["statusCode"] == 200, answer
    assert answer == {
        "status_code": 200,
        "message": "request is being processed",
        "reference_id": str(stored.reference_id),
        "recipients_processed": 2,
    }


def test_a_refused_retry_of_a_send_whose_sender_was_removed_before_any_dispatcher_took_it_frees_its_key(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.domain.senders import SENDER_REMOVED
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway_tools.admin import remove_sender

    # Given a keyed send whose request died right after queueing it, before it could answer
    account = make_account(10)
    die_once(monkeypatch, SqsDispatchQueue, "enqueue", after=True)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"]), "sender-gone"))
    (stored,) = batches_of(account["account_id"])
    # And its sender was removed, so a dispatcher failed its message sender_removed before offering it to any
    # upstream
    # (dispatch.py's check before it claims), and refunded it
    remove_sender(account_id=account["account_id"], sender="48974")
    gateway().store.move_and_refund(
        messages_of(account["account_id"], stored.reference_id),
        MessageStatus.FAILED,
        now=utc_now(),
        error_code=SENDER_REMOVED,
        unheld_only=True,
    )
    assert balance(account["account_id"]) == 10
    # When the client retries under the key once the lease has run out
    leases_run_out()
    retried = api(with_key(send_event(account["token"]), "sender-gone"))
    # Then, as docs/dialects/9bits.md says of a repeat refused because its sender was removed: nothing was sent, the
    # refusal is the answer and the key is free (no dispatcher took any of it, so nothing of the send stands)
    assert retried["statusCode"] == 400, retried["body"]


def test_a_ref_id_repeat_while_the_first_is_still_being_sent_is_a_409_that_names_the_ref_id(aws, api, monkeypatch):
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    # Given a seed 2 send under its ref_id (no Idempotency-Key), whose client sends it again while the first is queueing
    account = make_account(10)
    body = {"from": "48974", "to": "2348020000000", "message": "hi", "ref_id": "873ghf8749956778gf5"}
    enqueue = SqsDispatchQueue.enqueue
    repeats: list[dict[str, Any]] = []

    def repeated_while_queueing(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not repeats:
            repeats.append(api(send_event(account["token"], body)))
        return enqueue(self, *args, **kwargs)

    monkeypatch.setattr(SqsDispatchQueue, "enqueue", repeated_while_queueing)
    first = api(send_event(account["token"], body))
    # Then the first is sent, once, and the repeat is a 409 that changes nothing
    assert first["statusCode"] == 200, first
    [repeat] = repeats
    assert repeat["statusCode"] == 409, repeat
    assert balance(account["account_id"]) == 9
    assert len(queued_records(aws)) == 1
    # And it names what the client sent, its ref_id: this client sent no Idempotency-Key, and a message about one
    # sends it looking for a header it never set
    message = json.loads(repeat["body"])["message"]
    assert "ref_id '873ghf8749956778gf5'" in message and "still being processed" in message, message
    assert "idempotency key" not in message.lower(), message


@pytest.mark.parametrize("draws", [(1022, 1024), (5000, 5010)], ids=["two-apart", "ten-apart-in-one-block"])
def test_sends_of_one_account_from_two_containers_in_one_millisecond_never_share_a_message_id(
    aws, api, monkeypatch, draws
):
    import time

    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.ids import RANDOM_BITS, IdGenerator
    from sms_gateway.logic import send

    # Given two containers taking one account's sends in the same millisecond, whose random sources draw numbers a
    # few apart (each container's generator draws 22 random bits, or the top ones of them when it asks for fewer):
    # the first send is the first container's, every id after it the second's
    now_ms = time.time_ns() // 1_000_000
    first, second = (IdGenerator(random_bits=lambda bits, d=draw: d >> (RANDOM_BITS - bits)) for draw in draws)
    containers = iter([first])
    monkeypatch.setattr(send, "new_batch_id", lambda: next(containers, second).new_block(now_ms=now_ms))
    account = make_account(100)
    # When each sends five messages (without a key: when the two draws give one batch id, the second send is refused
    # it by the store, having written nothing, and takes its container's next id)
    sent = [
        api(send_event(account["token"], {"from": "48974", "to": numbers, "message": "five"}))
        for numbers in (NUMBERS[:5], NUMBERS[5:10])
    ]
    assert [answer["statusCode"] for answer in sent] == [200, 200], sent
    # Then every message is found by its id (shortcode getdlr, the portal's search) as itself, never as a message
    # of the other send, and no two messages have one id (nor one notification id, `dlr_<message_id>_<sequence>`)
    stored = [
        m
        for answer in sent
        for m in messages_of(account["account_id"], int(json.loads(answer["body"])["reference_id"]))
    ]
    assert len({m.message_id for m in stored}) == len(stored) == 10
    for message in stored:
        found = gateway().store.find_message(account["account_id"], message.message_id)
        assert found is not None and (found.reference_id, found.msisdn) == (message.reference_id, message.msisdn)


@pytest.mark.parametrize("write", ["PutItem", "UpdateItem"], ids=["first-claim", "take-over-after-the-lease"])
def test_a_claim_on_a_key_whose_answer_was_lost_is_recognised_by_its_retry_as_its_own(aws, write):
    from datetime import timedelta

    from sms_gateway.adapters import aws as aws_clients
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import KeyClaim, utc_now
    from tests.integration.test_refund_transactions import AnswersLost

    # Given a send's key (taken before by a request that died, for the take-over), and a client with the gateway's
    # own retry settings whose claim write reaches DynamoDB and then loses its answer, so botocore sends it again
    now, lease = utc_now(), timedelta(seconds=90)
    table_name = gateway().store.table_name
    if write == "UpdateItem":
        gateway().store.begin("acc", "order-7", "f", now=now - lease * 2, reference_id=41, lease=lease)
    aws_clients.reset_clients()
    client = aws_clients.client("dynamodb")
    lost = AnswersLost(client, of=write)
    try:
        # When a request claims the key through it
        claim = DynamoStore(table_name, client=client).begin(
            "acc", "order-7", "f", now=now, reference_id=42, lease=lease
        )
    finally:
        aws_clients.reset_clients()
    # Then the write was sent again and met the record it wrote, which it knows for its own: the request goes on
    # (not a 409 "still being processed" that holds its key for the 90 s lease with nothing done)
    assert lost.sent >= 2
    assert claim == (KeyClaim(reference_id=41, resumed=True) if write == "UpdateItem" else KeyClaim(reference_id=42))
    # And another request under the key is still told it is in progress
    with pytest.raises(Exception, match="still being processed"):
        gateway().store.begin("acc", "order-7", "f", now=now, reference_id=43, lease=lease)


def died_before_its_batch_whose_id_another_took(api: Any, account: dict[str, Any], five: dict[str, Any]) -> int:
    """A keyed send of `five` ("died-before-its-batch") whose request claimed its key, naming batch `planned`, and
    died before writing it; then another send of the account to NUMBERS[5:] from 48974 ("the others") took that id
    (another container, the same millisecond and random bits); then the dead request's lease ran out: `planned`."""
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.domain import ids
    from sms_gateway.logic import idempotency, send

    planned = ids.new_batch_id()
    with pytest.MonkeyPatch.context() as dying:
        dying.setattr(idempotency, "new_batch_id", lambda: planned)
        die_once(dying, DynamoStore, "create_batch_and_reserve")
        with pytest.raises(Killed):
            api(with_key(send_event(account["token"], five), "died-before-its-batch"))
    with pytest.MonkeyPatch.context() as meeting:
        meeting.setattr(send, "new_batch_id", lambda: planned)
        other = api(send_event(account["token"], {"from": "48974", "to": NUMBERS[5:], "message": "the others"}))
    assert json.loads(other["body"])["reference_id"] == str(planned)
    leases_run_out()
    return planned


def assert_the_others_as_sent(account_id: str, planned: int) -> None:
    """The other send's batch (died_before_its_batch_whose_id_another_took) is as it sent it: its 25, its text."""
    theirs = next(b for b in batches_of(account_id) if b.reference_id == planned)
    assert (theirs.text, theirs.recipients, theirs.cost, theirs.status) == ("the others", 25, 25, "queued")
    stored = messages_of(account_id, planned)
    assert sorted(m.msisdn for m in stored) == [f"+{n}" for n in NUMBERS[5:]]
    assert {m.status for m in stored} == {"queued"}


def test_a_keyed_send_that_died_before_its_batch_does_not_finish_another_send_that_took_its_id(aws, api):
    # Given a keyed send of five that died after claiming its key, before writing the batch its key names, and
    # another send of the account that took that id
    account = make_account(100)
    five = {"from": "48974", "to": NUMBERS[:5], "message": "five of them"}
    planned = died_before_its_batch_whose_id_another_took(api, account, five)
    # When the client retries its keyed send
    retried = api(with_key(send_event(account["token"], five), "died-before-its-batch"))
    # Then its five are sent as a batch of their own, with their text, and charged once
    assert retried["statusCode"] == 200, retried
    mine = int(json.loads(retried["body"])["reference_id"])
    assert mine != planned
    batches = {b.reference_id: b for b in batches_of(account["account_id"])}
    assert (batches[mine].text, batches[mine].recipients) == ("five of them", 5)
    assert sorted(m.msisdn for m in messages_of(account["account_id"], mine)) == [f"+{n}" for n in NUMBERS[:5]]
    # And the other send's batch is as it sent it
    assert_the_others_as_sent(account["account_id"], planned)
    assert balance(account["account_id"]) == 100 - 25 - 5
    assert len(queued_message_ids(aws)) == 30
    # And a retry after that answers as the retry did, sending nothing again
    again = api(with_key(send_event(account["token"], five), "died-before-its-batch"))
    assert json.loads(again["body"]) == json.loads(retried["body"])
    assert balance(account["account_id"]) == 70


def test_a_refused_retry_of_a_keyed_send_that_died_before_its_batch_leaves_another_send_with_its_id_alone(aws, api):
    from sms_gateway_tools.admin import create_account, remove_sender

    # Given a keyed send of five from 55555 that died before writing its batch, whose id another send took
    account = create_account(name="Idem", senders=["48974", "55555"], credits=100)
    five = {"from": "55555", "to": NUMBERS[:5], "message": "five of them"}
    planned = died_before_its_batch_whose_id_another_took(api, account, five)
    # When its retry is refused (the operator removed its sender meanwhile)
    remove_sender(account_id=account["account_id"], sender="55555")
    retried = api(with_key(send_event(account["token"], five), "died-before-its-batch"))
    # Then it is refused, and the other send is not undone: still queued, charged, its messages waiting
    assert retried["statusCode"] == 400, retried
    assert_the_others_as_sent(account["account_id"], planned)
    assert balance(account["account_id"]) == 75
