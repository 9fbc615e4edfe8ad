"""A send whose queueing failed after SQS took its records: what it withdraws (only messages no dispatcher ever
claimed), what stays charged, and the balance its answer shows."""

from __future__ import annotations

import json

from tests.conftest import FakeContext
from tests.integration.test_idempotency_and_credits import make_account, messages_of, sqs_answer_lost, with_key
from tests.integration.test_send_path import (
    RecordingUpstream,
    as_lambda_sqs_event,
    balance,
    load_function,
    queued_records,
    send_event,
)


def api_handler():
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def test_a_message_a_dispatcher_submitted_before_the_queueing_failed_is_not_withdrawn_refunded_or_sent_again(
    aws, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from tests.conftest import route_simulator_upstreams_to

    upstream = RecordingUpstream()
    route_simulator_upstreams_to(monkeypatch, upstream)
    api = api_handler()
    account = make_account(10)

    # Given a dispatch queue that takes the send's record, and a dispatcher that gets it and submits the message
    # (tens of milliseconds) while SQS's answer is still lost (botocore waits seconds before it gives up)
    def sent_meanwhile(commands):
        records = queued_records(aws)
        assert load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext()) == {
            "batchItemFailures": []
        }

    real_enqueue = sqs_answer_lost(monkeypatch, sent_meanwhile)
    answer = api(with_key(send_event(account["token"]), "order-88"))
    # The upstream has the message: the handset gets it
    assert len(upstream.submits) == 1
    # Then the send stands: it was sent, so it is charged, and not reported failed (`not_queued`, "send it again")
    assert answer["statusCode"] == 200, answer
    assert balance(account["account_id"]) == 9
    reference_id = int(json.loads(answer["body"])["reference_id"])
    [message] = messages_of(account["account_id"], reference_id)
    assert message.status == "submitted"
    # And the client's retry under the same key sends nothing a second time
    monkeypatch.setattr(SqsDispatchQueue, "enqueue", real_enqueue)
    api(with_key(send_event(account["token"]), "order-88"))
    assert len(upstream.submits) == 1


def test_a_message_an_upstream_may_have_taken_before_the_queueing_failed_is_not_withdrawn_as_never_sent(
    aws, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now

    api = api_handler()
    account = make_account(10)
    # Given a dispatch queue that takes a send's record and then fails, while a dispatcher submits its message and
    # gets no answer (the upstream may have it): the dispatcher releases its claim naming that upstream
    real_enqueue = SqsDispatchQueue.enqueue

    def took_it_and_the_submit_got_no_answer(self, commands):
        real_enqueue(self, commands)
        store = gateway().store
        [message] = messages_of(account["account_id"], commands[0].reference_id)
        store.claim_for_dispatch(message.key, now=utc_now(), lease_seconds=60, upstream="simulator")
        store.release_claim(message.key, maybe_taken_by="simulator")
        raise TimeoutError("Read timeout on endpoint URL")

    monkeypatch.setattr(SqsDispatchQueue, "enqueue", took_it_and_the_submit_got_no_answer)
    answer = api(send_event(account["token"]))
    # Then the message is not recorded as never sent ("failed", `not_queued`) and refunded: the upstream may be
    # delivering it, and the client, told the send was undone, sends it again
    reference_id = gateway().store.list_batches(account["account_id"], limit=1)[0][0].reference_id
    [message] = messages_of(account["account_id"], reference_id)
    assert (message.status, message.error_code) != ("failed", "not_queued")
    assert answer["statusCode"] == 200, answer


def test_session_key_remaining_credits_after_a_partly_withdrawn_send_is_read_consistently(aws, monkeypatch):
    from sms_gateway.adapters.dynamodb_admin import account_key
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway_tools.admin import create_account
    from tests.integration.test_session_key_dialect import log_in, sms_event

    api = api_handler()
    account = create_account(name="Cinema Club", senders=["48974"], credits=100)
    keys = log_in(api, account)
    store = gateway().store
    # DynamoDB's eventually consistent reads may answer from a replica that has not seen the last writes yet: here,
    # one that holds the account's item as the request first read it (before the send's refund)
    real_get_item = store.client.get_item
    replica: dict[str, object] = {}

    def get_item(**kwargs):
        answer = real_get_item(**kwargs)
        if kwargs["Key"] == account_key(account["account_id"]) and not kwargs.get("ConsistentRead"):
            return replica.setdefault("answer", answer)
        return answer

    monkeypatch.setattr(store.client, "get_item", get_item)
    # Given a send of three whose queueing failed after a dispatcher claimed one message: the two others are
    # withdrawn and refunded, the send stands
    real_enqueue = SqsDispatchQueue.enqueue

    def took_it_and_one_was_claimed(self, commands):
        real_enqueue(self, commands)
        [first] = messages_of(account["account_id"], commands[0].reference_id)[:1]
        store.claim_for_dispatch(first.key, now=utc_now(), lease_seconds=60)
        raise TimeoutError("Read timeout on endpoint URL")

    monkeypatch.setattr(SqsDispatchQueue, "enqueue", took_it_and_one_was_claimed)
    body = {"message": "Hi", "recipient": ["+2348020000001", "+2348030000002", "+2348020000003"]}
    answer = api(sms_event(keys, {**body, "returnCredits": True}))
    assert answer["statusCode"] == 201, answer
    # Then remaining_credits is the balance the send left (100 - 1), read consistently as docs/dispatch.md promises
    assert store.balance(account["account_id"]) == 99
    assert json.loads(answer["body"])["remaining_credits"] == 99


def test_a_send_undone_whole_sends_the_client_no_report_when_a_dispatcher_gets_its_records_after_all(aws, monkeypatch):
    import boto3

    from tests.conftest import route_simulator_upstreams_to

    upstream = RecordingUpstream()
    route_simulator_upstreams_to(monkeypatch, upstream)
    api = api_handler()
    account = make_account(10)
    # Given a send of two that asked for delivery reports, whose records SQS took but whose answer was lost
    sqs_answer_lost(monkeypatch)
    body = {"from": "48974", "to": ["2348020000001", "2348030000002"], "body": "Hi", "delivery_report": "yes"}
    answer = api(send_event(account["token"], body))
    # Then the send is undone whole: a 503, no message id given, nothing charged
    assert answer["statusCode"] == 503, answer
    assert balance(account["account_id"]) == 10
    # When a dispatcher gets the records SQS took after all
    records = queued_records(aws)
    assert load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext()) == {"batchItemFailures": []}
    # Then nothing is sent, and the client's webhook is told nothing of messages whose ids it never had
    assert upstream.submits == []
    notify = boto3.client("sqs").receive_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MaxNumberOfMessages=10)
    assert notify.get("Messages", []) == []
