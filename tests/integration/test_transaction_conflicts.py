"""Sends and cancels through the real `api` handler on moto while DynamoDB keeps cancelling their transactions for
conflicts with other writes (TransactionConflict), as it does on AWS when many requests of one account write its
credits item at once (moto never does): each answers what it did, nothing is charged for what was not done."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import store_clients
from tests.integration.test_batches_dialect import Api, call, send, stored_batches
from tests.integration.test_send_path import FakeContext, balance, load_function

AIRTEL = "2348020000000"
MTN = "2348030000000"


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


@contextmanager
def transactions_conflicting(when: Callable[[list[dict[str, Any]]], bool] = lambda writes: True) -> Iterator[None]:
    """Every TransactWriteItems whose writes `when` picks cancelled for a conflict on each of its items, as while
    other requests keep writing them (the account's credits item, on AWS, under many sends at once)."""
    from sms_gateway.adapters import dynamodb_transactions

    def conflicting_on(client: Any) -> Callable[..., Any]:
        real = client.transact_write_items

        def conflicting(**request: Any) -> Any:
            writes = request["TransactItems"]
            if not when(writes):
                return real(**request)
            raise client.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                    "CancellationReasons": [{"Code": "TransactionConflict"} for _ in writes],
                },
                "TransactWriteItems",
            )

        return conflicting

    with pytest.MonkeyPatch.context() as patch:
        for client in store_clients():
            patch.setattr(client, "transact_write_items", conflicting_on(client))
        patch.setattr(dynamodb_transactions, "back_off", lambda attempt: None)
        yield


def test_a_send_whose_transactions_dynamodb_keeps_cancelling_answers_503_and_charges_nothing(aws, account, api):
    # Given an account with 100 credits, and DynamoDB cancelling every transaction for conflicts with other writes
    account_id, token = account["account_id"], account["token"]
    with transactions_conflicting():
        # When it sends
        status, body = send(api, token, [AIRTEL, MTN])
    # Then it is told to send again (503: nothing was sent, nothing charged), not that it may be done in part (500)
    assert status == 503, body
    assert "try again" in body["message"], body
    # And nothing is charged, and no batch waits to go out
    assert balance(account_id) == 100
    assert [item["status"]["S"] for item in stored_batches(account_id)] in ([], ["failed"])
    # And once the conflicts pass, the same send goes out
    status, body = send(api, token, [AIRTEL, MTN])
    assert (status, body.get("recipients_processed")) == (200, 2), body
    assert balance(account_id) == 98


def scheduled_two_with_one_stored(api: Api, account: dict[str, Any]) -> tuple[str, Any]:
    """A batch of two scheduled an hour ahead, charged 2 of the account's 100 credits, whose send has stored one of
    its messages so far (a send of many recipients storing them, or one killed part-way): its reference_id, and the
    message not stored yet."""
    from sms_gateway.adapters.dynamodb import _key_of
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages

    store = gateway().store
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at)
    assert status == 200, sent
    reference_id = str(sent["reference_id"])
    unstored = list(all_messages(store, account["account_id"], int(reference_id)))[-1]
    store.client.delete_item(TableName=store.table_name, Key=_key_of(unstored.key))
    assert len(list(all_messages(store, account["account_id"], int(reference_id)))) == 1
    return reference_id, unstored


def cancel(api: Api, account: dict[str, Any], reference_id: str) -> tuple[int, dict[str, Any]]:
    return call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")


def batch_status(api: Api, account: dict[str, Any], reference_id: str) -> str:
    return str(call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")[1]["status"])


def test_a_cancel_that_moved_the_batch_but_could_not_finish_its_give_back_says_to_retry_and_its_retry_finishes(
    aws, account, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.errors import Conflict

    # Given a scheduled batch of two whose send stored one message (2 credits taken)
    account_id = account["account_id"]
    reference_id, _ = scheduled_two_with_one_stored(api, account)

    # And other writers moving the batch's cost every time the cancel reads it (a finisher, an undo, another cancel)
    def moved_meanwhile(self: Any, batch: Any, *args: Any, **kwargs: Any) -> int:
        raise Conflict(f"batch {batch.reference_id} changed meanwhile")

    with monkeypatch.context() as patched:
        patched.setattr(DynamoStore, "reprice_batch", moved_meanwhile)
        # When the client cancels it
        status, body = cancel(api, account, reference_id)
    # Then the batch is cancelled, and the answer is not a 409 ("only a scheduled batch can be cancelled", which a
    # client reads as not cancelled) but a 503 to retry: the cancel is under way
    assert batch_status(api, account, reference_id) == "cancelled"
    assert status == 503, body
    # And its retry finishes it and answers all it gave back
    status, body = cancel(api, account, reference_id)
    assert (status, body.get("refunded_credits"), body.get("status")) == (200, 2, "cancelled"), body
    assert balance(account_id) == 100


def test_a_cancel_again_after_its_send_stored_the_rest_answers_the_cancel_not_402_and_keeps_the_credits_right(
    aws, account, api
):
    from sms_gateway.adapters.dynamodb_admin import account_key
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages

    store = gateway().store
    account_id = account["account_id"]
    # Given a scheduled batch of two whose send has stored one message so far, cancelled meanwhile: the cancel gave
    # back both credits (one for the message not stored yet, one with the message it cancelled)
    reference_id, late = scheduled_two_with_one_stored(api, account)
    status, body = cancel(api, account, reference_id)
    assert (status, body.get("refunded_credits")) == (200, 2), body
    assert balance(account_id) == 100
    # And the send, still under way, stores its other message (charged at the send's start, given back since)
    batch = store.get_batch(account_id, int(reference_id))
    assert batch is not None
    store.add_messages(batch, [late])
    # And the account spends its credits
    store.client.update_item(
        TableName=store.table_name,
        Key=account_key(account_id),
        UpdateExpression="SET credits = :none",
        ExpressionAttributeValues={":none": {"N": "0"}},
    )
    # When the client cancels again (it did not get the first answer)
    status, body = cancel(api, account, reference_id)
    # Then it is answered as a repeated cancel (nothing more refunded), not 402 "not enough credits" for a cancel
    assert (status, body.get("refunded_credits"), body.get("status")) == (200, 0, "cancelled"), body
    # And the late message is cancelled too, without its credits given back a second time
    messages = list(all_messages(store, account_id, int(reference_id)))
    assert {str(message.status) for message in messages} == {"cancelled"}
    assert balance(account_id) == 0


def scheduled_two(api: Api, account: dict[str, Any]) -> str:
    """A batch of two scheduled an hour ahead, both its messages stored, charged 2 of the account's 100 credits."""
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at)
    assert status == 200, sent
    return str(sent["reference_id"])


@pytest.mark.parametrize("killed_while_storing", [False, True], ids=["its-refunds", "its-give-back"])
def test_a_cancel_whose_refunds_dynamodb_keeps_cancelling_says_to_retry_and_its_retry_finishes(
    aws, account, api, killed_while_storing
):
    # Given a scheduled batch of two, charged 2 credits (whose send stored both messages, or was killed after one)
    account_id = account["account_id"]
    if killed_while_storing:
        reference_id, _ = scheduled_two_with_one_stored(api, account)
    else:
        reference_id = scheduled_two(api, account)
    # When the client cancels it while DynamoDB cancels every transaction for conflicts with other writes of the
    # account's credits (its other sends, on AWS): the cancel's refunds, or its give-back of what the batch took for
    # the message never stored
    with transactions_conflicting():
        status, body = cancel(api, account, reference_id)
    # Then the batch is cancelled, and the answer is a 503 to retry, not a 500 that says to look before trying again
    assert batch_status(api, account, reference_id) == "cancelled"
    assert status == 503, body
    assert "try again" in body["message"], body
    # And its retry, once the conflicts pass, finishes the cancel and answers all it gave back
    status, body = cancel(api, account, reference_id)
    assert (status, body.get("refunded_credits"), body.get("status")) == (200, 2, "cancelled"), body
    assert balance(account_id) == 100


def test_a_keyed_retry_whose_finishing_write_dynamodb_keeps_cancelling_answers_503_and_the_next_retry_finishes_it(
    aws, api, monkeypatch
):
    from tests.integration.test_idempotency_and_credits import (
        NUMBERS,
        assert_sent_once,
        killed_at,
        make_account,
        send_event,
        with_key,
    )

    # Given a keyed send to 30 numbers whose request was killed after storing 25 of its messages (its batch charged
    # 30 credits), and whose lease ran out
    account = make_account(100)
    body = {"from": "48974", "to": NUMBERS, "message": "thirty of them"}
    killed_at(monkeypatch, api, send_event(account["token"], body), "finish", ("DynamoStore", "_batch_write", 1, True))
    # When the client retries under its key while DynamoDB cancels every transaction for conflicts with other writes
    with transactions_conflicting():
        retried = api(with_key(send_event(account["token"], body), "finish"))
    # Then it is told to retry (503, after Retry-After), not that the request may be done in part (500)
    assert retried["statusCode"] == 503, retried
    assert retried["headers"]["Retry-After"] == "1", retried
    # And its retry as told, once the conflicts pass, finishes the send: every message stored, queued and charged once
    again = api(with_key(send_event(account["token"], body), "finish"))
    assert_sent_once(aws, account["account_id"], again, 100 - 30)


def test_a_refused_keyed_retry_whose_undo_dynamodb_keeps_cancelling_answers_503_and_the_next_retry_undoes_it(
    aws, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups
    from tests.integration.test_idempotency_and_credits import (
        batches_of,
        died_group_send,
        leases_run_out,
        make_account,
        queued_message_ids,
        send_event,
        with_key,
    )

    # Given a keyed send to a group of two whose request died after storing and charging it, before queueing it
    account = make_account(10)
    body, _ = died_group_send(api, monkeypatch, account, "group-gone", queued=False)
    assert balance(account["account_id"]) == 8
    # And the group is deleted meanwhile, so that its retry is refused and undoes what the request left
    groups.delete_group(gateway().store, account["account_id"], body["to"][0])
    leases_run_out()
    # When the client retries under its key while DynamoDB cancels every transaction for conflicts with other writes
    # of the account's credits (the undo's refunds)
    with transactions_conflicting():
        retried = api(with_key(send_event(account["token"], body), "group-gone"))
    # Then it is told to retry (503, after Retry-After: nothing of the undo was written), not that the request may
    # be done in part (500), and the send stays as the request left it, charged and not queued
    assert retried["statusCode"] == 503, retried
    assert retried["headers"]["Retry-After"] == "1", retried
    assert balance(account["account_id"]) == 8
    # And its retry as told, at once and once the conflicts pass, is refused and undoes the send: the credits back
    again = api(with_key(send_event(account["token"], body), "group-gone"))
    assert again["statusCode"] == 400, again
    assert "unknown group" in again["body"]
    assert queued_message_ids(aws) == []
    assert balance(account["account_id"]) == 10
    assert batches_of(account["account_id"])[0].status == "failed"


def test_a_keyed_retry_whose_failing_of_an_opted_out_message_dynamodb_keeps_cancelling_answers_503_and_retry_finishes(
    aws, api, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out
    from tests.integration.test_idempotency_and_credits import (
        keyed_two_number_send_that_dies,
        leases_run_out,
        queued_message_ids,
        send_event,
        with_key,
    )

    # Given a keyed send to two numbers whose request died after storing and charging it, before queueing it
    account, body = keyed_two_number_send_that_dies(api, monkeypatch, SqsDispatchQueue, "enqueue", "stop-meanwhile")
    # And the first number texts STOP to the sender before the client retries
    store = gateway().store
    record_opt_out(store, store, account["account_id"], AIRTEL, "48974", now=utc_now())
    leases_run_out()
    # When the client retries under its key while DynamoDB cancels every transaction for conflicts with other writes
    # of the account's credits (the finisher's failing and refund of the message to the number that opted out)
    with transactions_conflicting():
        retried = api(with_key(send_event(account["token"], body), "stop-meanwhile"))
    # Then it is told to retry (503, after Retry-After), not that the request may be done in part (500)
    assert retried["statusCode"] == 503, retried
    assert retried["headers"]["Retry-After"] == "1", retried
    # And its retry as told, at once and once the conflicts pass, finishes the send without the number that opted out
    again = api(with_key(send_event(account["token"], body), "stop-meanwhile"))
    assert again["statusCode"] == 200, again
    assert [r["to"] for r in json.loads(again["body"]).get("refused", [])] == [AIRTEL]
    assert len(queued_message_ids(aws)) == 1
    assert balance(account["account_id"]) == 9


def test_a_failure_report_whose_refund_dynamodb_keeps_cancelling_answers_503_and_its_resend_refunds_once(
    aws, account, api, monkeypatch
):
    from tests.integration.test_operations_metrics import dispatch, simulator_dlr
    from tests.integration.test_send_path import RecordingUpstream, queued_records, route_simulator_upstreams_to
    from tests.integration.test_send_path import send_event as one_sms

    # Given a message submitted to the upstream, its 1 credit taken
    upstream = RecordingUpstream()
    route_simulator_upstreams_to(monkeypatch, upstream)
    assert api(one_sms(account["token"]))["statusCode"] == 200
    [record] = queued_records(aws)
    assert dispatch([record]) == {"batchItemFailures": []}
    assert balance(account["account_id"]) == 99
    webhook = load_function("webhook")
    report = simulator_dlr(aws, upstream.submits[0]["client_ref"], "UNDELIV", datetime.now(UTC).isoformat())
    # When its failure report arrives while DynamoDB cancels every transaction for conflicts with other writes of the
    # account's credits (the refund moves the message and gives its price back in one)
    with transactions_conflicting():
        answer = webhook.handler(report, FakeContext())
    # Then the upstream is told to post it again (503 after Retry-After), not that the gateway failed (500)
    assert answer["statusCode"] == 503, answer
    assert answer["headers"]["Retry-After"] == "1", answer
    assert balance(account["account_id"]) == 99
    # And its resend, once the conflicts pass, fails the message and refunds it, once
    assert webhook.handler(report, FakeContext())["statusCode"] == 200
    assert webhook.handler(report, FakeContext())["statusCode"] == 200
    assert balance(account["account_id"]) == 100
