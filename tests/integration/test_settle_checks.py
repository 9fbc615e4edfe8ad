"""Settle checks through the real handlers on moto: a message the upstream took but never reported on, or one a dead
dispatcher left submitted-unconfirmed, is expired, refunded and announced once no final DLR came within the DLR wait;
a DLR that came first wins, and is announced even when its first announcement failed."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import boto3
import pytest

from tests.conftest import FakeContext, load_function
from tests.integration import test_send_path
from tests.integration.test_operations_metrics import simulator_dlr
from tests.integration.test_send_path import as_lambda_sqs_event, balance, queued_records, send_event
from tests.integration.test_webhook_retries import ClientWebhook, receive, run_notifier
from tests.state_snapshot import parked_records

# The send path's recording simulator upstream.
upstream = test_send_path.upstream


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Cinema Club", senders=["48974"], credits=100, dlr_url="https://client.example/dlr")


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> ClientWebhook:
    from sms_gateway import consumers

    recorder = ClientWebhook()
    monkeypatch.setattr(consumers, "post_webhook", recorder)
    return recorder


def stranded_message(aws: dict[str, str], account: dict[str, Any]) -> Any:
    """A sent message (delivery reports asked for) whose claim on the simulator a dead dispatcher left to lapse, on
    its last attempt, dispatched again: the dispatcher records it submitted-unconfirmed there without submitting it
    (the simulator deduplicates by our reference, so one with attempts left would be submitted again)."""
    from sms_gateway.adapters.dynamodb import _key_of
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.batches import all_messages

    api = load_function("api")
    body = {"from": "48974", "to": "2348020000000", "message": "hi", "delivery_report": "yes"}
    response = api.handler(send_event(account["token"], body), FakeContext())
    reference_id = int(json.loads(response["body"])["reference_id"])
    store = gateway().store
    [message] = all_messages(store, account["account_id"], reference_id)
    store.client.update_item(
        TableName=store.table_name,
        Key=_key_of(message.key),
        UpdateExpression="SET submit_attempts = :last",
        ExpressionAttributeValues={":last": {"N": str(gateway().settings.dispatch_max_attempts - 1)}},
    )
    store.claim_for_dispatch(message.key, now=utc_now() - timedelta(hours=1), lease_seconds=120, upstream="simulator")
    event = as_lambda_sqs_event(queued_records(aws))
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    [message] = all_messages(store, account["account_id"], reference_id)
    return message


def message_now(message: Any) -> Any:
    from sms_gateway.bootstrap import gateway

    found = gateway().store.find_message(message.account_id, message.message_id)
    assert found is not None
    return found


def notify_pass(aws: dict[str, str]) -> list[dict[str, Any]]:
    """One notifier poll; returns the records it left hidden on the queue (settle checks not due yet)."""
    result = run_notifier(aws)
    failed = {item["itemIdentifier"] for item in result["response"]["batchItemFailures"]}
    return [record for record in result["records"] if record["messageId"] in failed]


def after_the_wait(monkeypatch: pytest.MonkeyPatch, aws: dict[str, str], hidden: list[dict[str, Any]]) -> None:
    """49 hours pass: the handlers' clock moves on, and the hidden records are visible again."""
    from sms_gateway import consumers
    from sms_gateway.domain.models import utc_now

    later = utc_now() + timedelta(hours=49)
    monkeypatch.setattr(consumers, "utc_now", lambda: later)
    for record in hidden:
        boto3.client("sqs").change_message_visibility(
            QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
        )


def drain_notify_queue(aws: dict[str, str]) -> None:
    while visible(aws):
        assert notify_pass(aws) == [], "a due settle check asked to come back"


def raw_message(message: Any) -> dict[str, Any]:
    """The message's item as stored, with the attributes the adapter adds (the sweeper's mark, if any)."""
    from sms_gateway.adapters.dynamodb import _key_of
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    item = store.client.get_item(TableName=store.table_name, Key=_key_of(message.key), ConsistentRead=True)["Item"]
    return dict(store._codec.load(item))


def refuse_notifications(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The notify queue refuses every notification until the returned function is called."""
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    publish = SqsNotifyQueue.publish

    def refused(self: Any, notifications: Any) -> None:
        raise RuntimeError("SQS did not take the notification")

    monkeypatch.setattr(SqsNotifyQueue, "publish", refused)
    return lambda: monkeypatch.setattr(SqsNotifyQueue, "publish", publish)


def visible(aws: dict[str, str]) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws["NOTIFY_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def test_a_stranded_message_is_expired_refunded_and_announced_once_no_dlr_came(aws, account, hook, monkeypatch):
    # Given a message a dead dispatcher left submitted-unconfirmed (charged)
    message = stranded_message(aws, account)
    assert (message.status, message.error_code) == ("submitted", "submit_unconfirmed")
    assert message.price > 0 and balance(account["account_id"]) == 100 - message.price
    # When the notifier takes the queue before the DLR wait (48 h) is over
    [hidden] = notify_pass(aws)
    # Then the client hears of the submit, and the settle check waits hidden on the queue, changing nothing
    check = json.loads(hidden["body"])
    assert check["kind"] == "settle"
    assert check["batches"] == [
        {"account_id": account["account_id"], "reference_id": message.reference_id, "message_ids": [message.message_id]}
    ]
    assert [p["body"]["status"] for p in hook.posts] == ["submitted"]
    assert receive(aws["NOTIFY_QUEUE_URL"]) == [] and message_now(message).status == "submitted"
    # When the wait is over and the check comes back, twice (SQS delivers at least once)
    after_the_wait(monkeypatch, aws, [hidden])
    boto3.client("sqs").send_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MessageBody=hidden["body"])
    drain_notify_queue(aws)
    # Then the message is expired for want of a DLR and refunded once
    settled = message_now(message)
    assert (settled.status, settled.error_code) == ("expired", "no_delivery_report")
    assert balance(account["account_id"]) == 100
    # And the client heard of it, the duplicate check's repeat under the same webhook id (one per status change)
    expired = [p["body"] for p in hook.posts if p["body"]["status"] == "expired"]
    assert {(body["error_code"], body["sequence"]) for body in expired} == {("no_delivery_report", settled.sequence)}


def test_a_dlr_before_the_check_is_due_wins_and_the_check_changes_nothing(aws, account, hook, monkeypatch):
    # Given a stranded message whose upstream did have it, and its final DLR arriving within the wait
    message = stranded_message(aws, account)
    charged = balance(account["account_id"])
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    assert load_function("webhook").handler(dlr, FakeContext())["statusCode"] == 200
    # (announced at once: nothing marks it for the check or the sweeper to announce again)
    assert (message_now(message).status, message_now(message).announce_pending) == ("delivered", None)
    assert "sweep_at" not in raw_message(message)
    hidden = notify_pass(aws)
    # When the settle check comes due
    after_the_wait(monkeypatch, aws, hidden)
    drain_notify_queue(aws)
    # Then the message stays delivered and charged, and the client heard of no expiry
    assert message_now(message).status == "delivered"
    assert balance(account["account_id"]) == charged
    # (posted concurrently by the notifier, so in either order: a client orders them by `sequence`)
    assert sorted((p["body"]["sequence"], p["body"]["status"]) for p in hook.posts)[-1][1] == "delivered"
    assert sorted(p["body"]["status"] for p in hook.posts) == ["delivered", "submitted"]


def test_a_dlr_whose_announcement_failed_is_announced_when_the_upstream_retries_it(aws, account, hook, monkeypatch):
    # Given a submitted message whose final DLR was written but not announced: the notify queue refused the
    # notification, so the webhook function failed and the upstream got no answer
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    message = stranded_message(aws, account)
    notify_pass(aws)  # the client hears of the submit; the settle check waits hidden
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    publish = SqsNotifyQueue.publish

    def refused(self, notifications):
        raise RuntimeError("SQS did not take the notification")

    monkeypatch.setattr(SqsNotifyQueue, "publish", refused)
    with pytest.raises(RuntimeError):
        load_function("webhook").handler(dlr, FakeContext())
    assert message_now(message).status == "delivered"
    # When the upstream retries the callback
    monkeypatch.setattr(SqsNotifyQueue, "publish", publish)
    assert load_function("webhook").handler(dlr, FakeContext())["statusCode"] == 200
    hidden = notify_pass(aws)
    # (and the repeat, once queued, cleared the mark the failure left, so the settle check does not repeat it)
    assert message_now(message).announce_pending is None
    after_the_wait(monkeypatch, aws, hidden)
    drain_notify_queue(aws)
    # Then the client hears of the delivery, under the webhook id of the change that made it
    delivered = message_now(message)
    assert sorted(((p["body"]["status"], p["body"]["sequence"]) for p in hook.posts), key=lambda post: post[1]) == [
        ("submitted", 2),
        ("delivered", delivered.sequence),
    ]


def test_a_final_dlr_the_upstream_posts_again_and_again_reaches_the_client_once_more_at_most(aws, account, hook):
    # Given a submitted message (delivery reports asked for) whose final DLR was applied and announced
    message = stranded_message(aws, account)
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    assert load_function("webhook").handler(dlr, FakeContext())["statusCode"] == 200
    notify_pass(aws)
    # When the upstream posts the same DLR three times more (its answers lost to timeouts; an SMSC sending duplicates)
    for _ in range(3):
        assert load_function("webhook").handler(dlr, FakeContext())["statusCode"] == 200
    while visible(aws):
        notify_pass(aws)
    # Then the client hears of the delivery twice at most, both under the change's webhook id, which it dedupes by:
    # the first repeat claims the announcement and queues it again (the first post might have died before queueing
    # it), the later ones find it claimed and queue nothing (until session 35 each repeat reached the client)
    delivered = message_now(message)
    assert delivered.status == "delivered"
    finals = [p for p in hook.posts if p["body"]["status"] != "submitted"]
    assert [(p["headers"]["webhook-id"], p["body"]["status"]) for p in finals] == [
        (f"dlr_{message.message_id}_{delivered.sequence}", "delivered")
    ] * 2


def test_a_final_dlr_costs_its_status_write_and_its_notification_and_only_a_repeat_pays_for_more(aws, account, hook):
    # Given two submitted messages (delivery reports asked for), and the webhook function warm from the first's DLR
    from collections import Counter

    from bench import metering_boto3_clients
    from sms_gateway import bootstrap
    from sms_gateway.adapters import aws as aws_clients

    warm, message = stranded_message(aws, account), stranded_message(aws, account)
    warm_dlr = simulator_dlr(aws, warm.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:41Z")
    webhook = load_function("webhook")
    aws_clients.reset_clients()
    bootstrap.reset()
    with metering_boto3_clients() as meter:

        def requests_of(event: dict[str, Any]) -> Counter[str]:
            meter.reset()
            assert webhook.handler(event, FakeContext())["statusCode"] == 200
            return Counter(meter.calls)

        requests_of(warm_dlr)
        # When the second's final DLR comes, and the upstream posts it twice more (its answers lost)
        first, repeat, again = requests_of(dlr), requests_of(dlr), requests_of(dlr)
    # Then the report costs its status write and its notification, nothing more (docs/benchmarks-floor.md: 2)
    assert first == Counter({"dynamodb:UpdateItem": 1, "sqs:SendMessageBatch": 1})
    # And the first repeat claims the announcement (one write) and queues it again; the next one only finds it claimed
    assert repeat == Counter({"dynamodb:UpdateItem": 2, "sqs:SendMessageBatch": 1})
    assert again == Counter({"dynamodb:UpdateItem": 1})
    assert message_now(message).status == "delivered"


def three_single_sends(aws: dict[str, str], account: dict[str, Any], *, reports: bool = False) -> dict[str, Any]:
    """Three sends of one message each (delivery reports asked for with `reports`): three dispatch records, as one
    SQS event."""
    api = load_function("api")
    for number in ("2348020000000", "2348020000001", "2348020000002"):
        body = {"from": "48974", "to": number, "message": "hi", **({"delivery_report": "yes"} if reports else {})}
        assert api.handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200
    event = as_lambda_sqs_event(queued_records(aws))
    assert len(event["Records"]) == 3
    return event


def account_messages(account: dict[str, Any]) -> list[Any]:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages

    store = gateway().store
    batches, _ = store.list_batches(account["account_id"])
    return [m for batch in batches for m in all_messages(store, account["account_id"], batch.reference_id)]


def test_messages_the_upstream_took_but_never_reported_on_are_expired_and_refunded_after_the_wait(
    aws, account, hook, upstream, monkeypatch
):
    # Given three single sends the upstream took, in one dispatcher invocation, and no DLR ever
    event = three_single_sends(aws, account)
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    assert len(upstream.submits) == 3 and balance(account["account_id"]) < 100
    # Then the invocation queued one settle check for the three batches, which waits hidden on the queue
    [hidden] = notify_pass(aws)
    check = json.loads(hidden["body"])
    assert sorted(len(batch["message_ids"]) for batch in check["batches"]) == [1, 1, 1]
    # (hidden by the notifier for just under 12 h: SQS refuses 12 h itself once the record was received)
    assert parked_records(aws["NOTIFY_QUEUE_URL"]) == 1
    # When the wait is over
    after_the_wait(monkeypatch, aws, [hidden])
    drain_notify_queue(aws)
    # Then every message is expired for want of a DLR and refunded (they asked for no reports: none is posted)
    settled = account_messages(account)
    assert [(m.status, m.error_code) for m in settled] == [("expired", "no_delivery_report")] * 3
    assert balance(account["account_id"]) == 100 and hook.posts == []


def test_an_invocation_that_cannot_queue_its_settle_check_hands_every_record_back(
    aws, account, hook, upstream, monkeypatch
):
    from moto.core.utils import unix_time_millis

    from sms_gateway.adapters.sqs import SqsNotifyQueue
    from sms_gateway.consumers import SETTLE_RETRY_SECONDS
    from sms_gateway_tools.localstack.moto_server import queue_contents

    # Given three records the upstream takes, and a notify queue that refuses the settle check
    event = three_single_sends(aws, account)
    publish = SqsNotifyQueue.publish

    def refused(self, notifications):
        raise RuntimeError("SQS did not take the settle check")

    monkeypatch.setattr(SqsNotifyQueue, "publish", refused)
    # When the dispatcher handles them
    answer = load_function("dispatcher").handler(event, FakeContext())
    # Then the messages are submitted, but no record is consumed: a record deleted now would leave its messages
    # without a check, `submitted` for good if their DLRs never come
    handed_back = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
    assert handed_back == {record["messageId"] for record in event["Records"]}
    assert len(upstream.submits) == 3 and {m.status for m in account_messages(account)} == {"submitted"}
    # And they come back within seconds, not after the queue's 360 s visibility timeout (holding their FIFO groups)
    back_within = [
        record.visible_at - unix_time_millis() for record in queue_contents(aws["PRIORITY_DISPATCH_QUEUE_URL"])
    ]
    assert len(back_within) == 3 and all(0 < ms <= SETTLE_RETRY_SECONDS * 1000 for ms in back_within), back_within
    # When the records come back and the queue takes the check
    monkeypatch.setattr(SqsNotifyQueue, "publish", publish)
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    # Then nothing is submitted again, and the check covers the messages the first invocation submitted
    assert len(upstream.submits) == 3
    [hidden] = notify_pass(aws)
    listed = {m for batch in json.loads(hidden["body"])["batches"] for m in batch["message_ids"]}
    assert listed == {m.message_id for m in account_messages(account)}


def published_to_the_notify_queue(monkeypatch: pytest.MonkeyPatch, *, first_fails: bool = False) -> list[list[str]]:
    """What the gateway queues for the notifier, one list per accepted publish (its entries' kinds, and the status
    of each `dlr` notification); with `first_fails`, the first publish is refused."""
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    accepted: list[list[str]] = []
    refused: list[int] = []
    publish = SqsNotifyQueue.publish

    def recorded(self: Any, notifications: Any) -> None:
        if first_fails and not refused:
            refused.append(len(notifications))
            raise RuntimeError("SQS did not take them")
        publish(self, notifications)
        accepted.append([n.get("payload", {}).get("status", n["kind"]) for n in notifications])

    monkeypatch.setattr(SqsNotifyQueue, "publish", recorded)
    return accepted


def test_an_invocations_notifications_go_out_with_its_settle_check_in_one_request(
    aws, account, hook, upstream, monkeypatch
):
    # Given three single sends with delivery reports (three records, one notification each), as one event
    event = three_single_sends(aws, account, reports=True)
    published = published_to_the_notify_queue(monkeypatch)
    # When the dispatcher handles them
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    # Then their `submitted` notifications and the settle check were queued together, not one request per record
    assert published == [["submitted", "submitted", "submitted", "settle"]]
    # And the client hears of each submit
    notify_pass(aws)
    assert sorted(p["body"]["status"] for p in hook.posts) == ["submitted"] * 3


def test_notifications_the_queue_refused_mid_invocation_go_out_at_its_end(aws, account, hook, upstream, monkeypatch):
    # Given a send to twelve numbers with delivery reports (one record, twelve notifications: a full batch of ten
    # is queued as soon as it is ready), and a notify queue that refuses the first batch
    api = load_function("api")
    numbers = [f"23480200000{n:02d}" for n in range(12)]
    body = {"from": "48974", "to": numbers, "message": "hi", "delivery_report": "yes"}
    assert api.handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200
    published = published_to_the_notify_queue(monkeypatch, first_fails=True)
    # When the dispatcher handles the record
    event = as_lambda_sqs_event(queued_records(aws))
    assert load_function("dispatcher").handler(event, FakeContext()) == {"batchItemFailures": []}
    # Then the refused ten went out later in the invocation: all twelve submits announced, once, and the check
    assert sorted(entry for accepted in published for entry in accepted) == ["settle"] + ["submitted"] * 12
    assert len(upstream.submits) == 12


def dispatched_again_after_a_5xx(
    aws: dict[str, str], account: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[test_send_path.RecordingUpstream, list[list[str]]]:
    """A send to two numbers with delivery reports (one record) whose dispatcher submits the first, is answered 503
    for the second (a 5xx: it hands the record back to retry that message later), and then, the upstream back, gets
    the record again and submits the second. The upstream, and what was queued for the notifier."""
    import httpx

    from tests.conftest import route_simulator_upstreams_to

    api = load_function("api")
    body = {"from": "48974", "to": ["2348020000000", "2348020000001"], "message": "hi", "delivery_report": "yes"}
    assert api.handler(send_event(account["token"], body), FakeContext())["statusCode"] == 200
    upstream, back = test_send_path.RecordingUpstream(), []

    def down_for_the_second(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["to"].endswith("01") and not back:
            return httpx.Response(503, json={"error": "unavailable"})
        return upstream(request)

    route_simulator_upstreams_to(monkeypatch, down_for_the_second)
    published = published_to_the_notify_queue(monkeypatch)
    event = as_lambda_sqs_event(queued_records(aws))
    dispatcher = load_function("dispatcher")
    assert dispatcher.handler(event, FakeContext())["batchItemFailures"] != []
    back.append(True)
    assert dispatcher.handler(event, FakeContext()) == {"batchItemFailures": []}
    assert len(upstream.submits) == 2
    return upstream, published


def test_a_record_handed_back_after_an_upstream_5xx_does_not_announce_again_what_it_queued(
    aws, account, hook, monkeypatch
):
    # Given a record the dispatcher handed back after an upstream's 5xx for one of its messages, and got again
    _, published = dispatched_again_after_a_5xx(aws, account, monkeypatch)
    # Then each submit was queued for the client once: the first invocation queued the first one's before it handed
    # the record back (until 2026-12-06 every delivery of a record queued again each change the dispatcher had made
    # to its messages: a record of a bulk send that met an upstream's 5xx three times told the client three times)
    assert sorted(entry for accepted in published for entry in accepted if entry != "settle") == ["submitted"] * 2


def test_a_record_handed_back_after_an_upstream_5xx_does_not_ask_again_to_settle_what_it_submitted(
    aws, account, hook, monkeypatch
):
    # Given a record the dispatcher handed back after an upstream's 5xx for one of its messages, and got again
    dispatched_again_after_a_5xx(aws, account, monkeypatch)
    # When the DLR wait is over and no DLR came, the notifier running each check the record asked for in turn
    for check in notify_pass(aws):
        after_the_wait(monkeypatch, aws, [check])
        drain_notify_queue(aws)
    # Then each message was expired and the client told so once: the first invocation asked to settle the first
    # message, the second only the second (until 2026-12-06 each delivery of a record asked again to settle every
    # message found submitted, and the second check to run announced the first one's expiry again)
    assert [(m.status, m.error_code) for m in account_messages(account)] == [("expired", "no_delivery_report")] * 2
    expiries = [p["headers"]["webhook-id"] for p in hook.posts if p["body"]["status"] == "expired"]
    assert len(expiries) == 2 and len(set(expiries)) == 2, expiries


def test_a_dlr_whose_announcement_failed_reaches_the_client_though_its_upstream_does_not_retry(
    aws, account, hook, monkeypatch
):
    # Given a submitted message whose final DLR was written but not announced (the notify queue refused it, so the
    # webhook answered 5xx), from an upstream that does not post a callback again: Twilio retries a status callback
    # only when its URL asks for it (#rc, webhooks-connection-overrides), and our StatusCallback does not
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    message = stranded_message(aws, account)
    hidden = notify_pass(aws)  # the client hears of the submit; the settle check waits hidden
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    publish = SqsNotifyQueue.publish

    def refused(self, notifications):
        raise RuntimeError("SQS did not take the notification")

    monkeypatch.setattr(SqsNotifyQueue, "publish", refused)
    with pytest.raises(RuntimeError):
        load_function("webhook").handler(dlr, FakeContext())
    monkeypatch.setattr(SqsNotifyQueue, "publish", publish)
    delivered = message_now(message)
    assert (delivered.status, delivered.announce_pending) == ("delivered", delivered.sequence)
    # When the message's settle check comes due (nothing else will look at it again), twice (SQS delivers at least
    # once)
    after_the_wait(monkeypatch, aws, hidden)
    [check] = hidden
    boto3.client("sqs").send_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MessageBody=check["body"])
    drain_notify_queue(aws)
    # Then the client has heard of the delivery ("Nothing lost between the write and your callback",
    # docs/delivery-reports.md), under the webhook id of the change that made it; it was told "submitted" only, and
    # would wait on a message that is final. (The two copies of the check ran side by side here, each reading the
    # mark before either cleared it: a repeat under the same webhook id, which the client drops.)
    assert {(p["body"]["status"], p["body"]["sequence"]) for p in hook.posts} == {
        ("delivered", delivered.sequence),
        ("submitted", 2),
    }
    ids = {p["headers"]["webhook-id"] for p in hook.posts if p["body"]["status"] == "delivered"}
    assert ids == {f"dlr_{message.message_id}_{delivered.sequence}"}
    # And the mark is cleared: a later copy of the check announces nothing more
    assert message_now(message).announce_pending is None
    posts = len(hook.posts)
    boto3.client("sqs").send_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MessageBody=check["body"])
    drain_notify_queue(aws)
    assert len(hook.posts) == posts


def test_a_dlr_whose_announcement_failed_reaches_the_client_from_the_sweeper_within_minutes(
    aws, account, hook, monkeypatch
):
    # Given a submitted message whose final DLR was written but not announced (the notify queue refused it, the
    # webhook answered 5xx), from an upstream that does not post the callback again
    from tests.integration.test_notifications_and_inbound_edges import sweeper_runs

    message = stranded_message(aws, account)
    hidden = notify_pass(aws)  # the client hears of the submit; the settle check waits hidden (48 h)
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    accept = refuse_notifications(monkeypatch)
    with pytest.raises(RuntimeError):
        load_function("webhook").handler(dlr, FakeContext())
    accept()
    # Then the message is marked in the same write for the sweeper, in a shard of its own kind
    delivered = message_now(message)
    stored = raw_message(message)
    assert stored["announce_pending"] == delivered.sequence and stored["sweep_shard"].startswith("REPORT#")
    # When the sweeper runs before the report is due, it queues nothing
    assert sweeper_runs(monkeypatch, 1) == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}
    assert visible(aws) == 0
    # And when it runs after, it queues the report's notification once, as the settle check would have, 2 days on
    assert sweeper_runs(monkeypatch, 3) == {"inbound_queued": 0, "reports_queued": 1, "batches_released": 0}
    notify_pass(aws)
    assert {(p["body"]["status"], p["body"]["sequence"]) for p in hook.posts} == {
        ("delivered", delivered.sequence),
        ("submitted", 2),
    }
    ids = [p["headers"]["webhook-id"] for p in hook.posts if p["body"]["status"] == "delivered"]
    assert ids == [f"dlr_{message.message_id}_{delivered.sequence}"]
    # And clears the mark: a later run, and the settle check when it comes due, announce nothing more
    assert not {"announce_pending", "sweep_shard", "sweep_at"} & raw_message(message).keys()
    assert sweeper_runs(monkeypatch, 10) == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}
    after_the_wait(monkeypatch, aws, hidden)
    drain_notify_queue(aws)
    assert len(hook.posts) == 2


def test_a_dlr_applied_as_the_last_settle_check_ran_is_announced_by_the_sweeper(aws, account, hook, monkeypatch):
    # Given a submitted message whose last settle check reads it still submitted, and whose final DLR is applied
    # just then, its announcement refused by the notify queue: the check's expiry write loses, and the check is done
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_notifications_and_inbound_edges import sweeper_runs

    message = stranded_message(aws, account)
    hidden = notify_pass(aws)
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    store = gateway().store
    read = store.get_messages_by_key

    def read_then_report(keys: Any, *, consistent: bool = True) -> Any:
        monkeypatch.setattr(store, "get_messages_by_key", read)
        found = read(keys, consistent=consistent)
        accept = refuse_notifications(monkeypatch)
        with pytest.raises(RuntimeError):
            load_function("webhook").handler(dlr, FakeContext())
        accept()
        return found

    monkeypatch.setattr(store, "get_messages_by_key", read_then_report)
    after_the_wait(monkeypatch, aws, hidden)
    drain_notify_queue(aws)
    delivered = message_now(message)
    assert (delivered.status, delivered.announce_pending) == ("delivered", delivered.sequence)
    assert [p["body"]["status"] for p in hook.posts] == ["submitted"]
    # When the sweeper runs once the report is due
    assert sweeper_runs(monkeypatch, 3) == {"inbound_queued": 0, "reports_queued": 1, "batches_released": 0}
    notify_pass(aws)
    # Then the client hears of the delivery, under the webhook id of the change that made it; before, the mark
    # stayed for good and the client waited on a message that is final
    ids = [p["headers"]["webhook-id"] for p in hook.posts if p["body"]["status"] == "delivered"]
    assert ids == [f"dlr_{message.message_id}_{delivered.sequence}"]
    assert message_now(message).announce_pending is None


def test_a_dlr_whose_publish_gets_no_answer_is_marked_for_the_sweeper_before_the_webhook_function_times_out(
    aws, account, hook, monkeypatch
):
    # Given a submitted message, and a notify queue that takes the request but never answers it (an SQS brownout,
    # a cut connection): every SendMessageBatch attempt ends in the client's read timeout. Time is virtual: each
    # attempt costs the read timeout, each of botocore's retry back-offs its sleep
    import types

    import botocore.endpoint
    from botocore.exceptions import ReadTimeoutError

    from sms_gateway.adapters import aws as aws_clients
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.template import function_definitions, load_template

    message = stranded_message(aws, account)
    notify_pass(aws)
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    elapsed = [0.0]
    # The client the webhook function publishes with (the notify queue's prompt client)
    sqs = aws_clients.client("sqs", prompt=True)

    def no_answer(request: Any, **_: Any) -> None:
        elapsed[0] += sqs.meta.config.read_timeout
        raise ReadTimeoutError(endpoint_url=request.url)

    sqs.meta.events.register_first("before-send.sqs.SendMessageBatch", no_answer)
    slept = types.SimpleNamespace(sleep=lambda seconds: elapsed.__setitem__(0, elapsed[0] + seconds))
    monkeypatch.setattr(botocore.endpoint, "time", slept)
    store = gateway().prompt_store
    mark = store.mark_unannounced
    marked_at: list[float] = []

    def marking(*args: Any, **kwargs: Any) -> bool:
        marked_at.append(elapsed[0])
        return mark(*args, **kwargs)

    monkeypatch.setattr(store, "mark_unannounced", marking)
    # When the upstream posts the final DLR (Twilio posts it once)
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the publish raises, the callback fails
            load_function("webhook").handler(dlr, FakeContext())
    finally:
        sqs.meta.events.unregister("before-send.sqs.SendMessageBatch", no_answer)
    # Then the status is written, and the mark that hands the report to the sweeper is written while the function
    # still lives: Lambda stops it at its Timeout, and a report written but neither queued nor marked reaches the
    # client only if the upstream posts it again
    assert message_now(message).status == "delivered"
    [webhook] = [fn for fn in function_definitions(load_template()) if fn.logical_id == "WebhookFunction"]
    assert marked_at and marked_at[0] < webhook.timeout, (
        f"marked after {marked_at} s of SQS attempts; the function is stopped at {webhook.timeout} s"
    )


def test_a_settle_check_taken_again_twelve_hours_after_it_was_queued_waits_hidden_for_its_next_hop(
    aws, account, hook, monkeypatch
):
    from moto.core.utils import unix_time_millis

    from sms_gateway import consumers
    from sms_gateway.domain.models import utc_now
    from sms_gateway_tools.localstack.moto_server import queue_contents

    def settle_record() -> Any:
        [found] = [m for m in queue_contents(aws["NOTIFY_QUEUE_URL"]) if json.loads(m.body).get("kind") == "settle"]
        return found

    # Given a stranded message whose settle check took its first hop (hidden just under 12 h of the 48 h wait)
    stranded_message(aws, account)
    [hidden] = notify_pass(aws)
    assert json.loads(hidden["body"])["kind"] == "settle"
    # When 12 hours pass (the record was queued 12 h ago) and the notifier receives the check again, 36 h early
    later = utc_now() + timedelta(hours=12)
    monkeypatch.setattr(consumers, "utc_now", lambda: later)
    record = settle_record()
    record.sent_timestamp -= 12 * 3600 * 1000
    record.change_visibility(0)
    [again] = notify_pass(aws)
    # Then, as on AWS (each receive may hide a record up to 12 h), it waits hidden for its next hop, not 200 s
    assert json.loads(again["body"])["kind"] == "settle"
    assert settle_record().visible_at - unix_time_millis() > 11 * 3600 * 1000


def test_the_local_stack_still_refuses_to_hide_a_record_past_twelve_hours_from_its_latest_receive(aws):
    from botocore.exceptions import ClientError

    from sms_gateway_tools.localstack.moto_server import queue_contents

    sqs = boto3.client("sqs")
    queue = aws["NOTIFY_QUEUE_URL"]
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    # Given a record received an hour ago
    [received] = sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0)["Messages"]
    [message] = queue_contents(queue)
    message.latest_receive_timestamp -= 3600 * 1000
    # Then it may hide up to 11 h more (12 h from the receive), as on SQS, and past that it is refused here too
    handle = received["ReceiptHandle"]
    with pytest.raises(ClientError, match="beyond the limit"):
        sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=11 * 3600 + 60)
    sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=11 * 3600 - 60)


def test_the_runbook_s_notify_dlq_procedure_keeps_a_settle_check_parked_there(aws, account, hook, monkeypatch):
    from tests.unit.test_operations_template import runbook_rows

    # Given a stranded message (charged, submitted) whose settle check SQS's redrive parked in the notify DLQ after
    # 12 receives, next to client notifications that are dead (docs/runbook.md, "Replay a dead-letter queue")
    message = stranded_message(aws, account)
    [hidden] = notify_pass(aws)
    sqs = boto3.client("sqs")
    sqs.delete_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], ReceiptHandle=hidden["receiptHandle"])
    sqs.send_message(QueueUrl=aws["NOTIFY_DEAD_LETTER_QUEUE_URL"], MessageBody=hidden["body"])
    # When the operator follows the notify DLQ row: the clients resend their dead notifications, then the DLQ
    # copies are purged "once resent" (the row's words); a row that says no such thing moves the DLQ back instead
    [row] = [" ".join(cells) for cells in runbook_rows("## Replay a dead-letter queue") if "notify-dlq" in cells[0]]
    if "purge" in row:
        sqs.purge_queue(QueueUrl=aws["NOTIFY_DEAD_LETTER_QUEUE_URL"])
    else:
        for parked in receive(aws["NOTIFY_DEAD_LETTER_QUEUE_URL"]):
            sqs.send_message(QueueUrl=aws["NOTIFY_QUEUE_URL"], MessageBody=parked["Body"])
    # And the DLR wait ends with no report
    after_the_wait(monkeypatch, aws, [])
    drain_notify_queue(aws)
    # Then the message is expired for want of a DLR and refunded, as every submitted message is
    settled = message_now(message)
    assert (settled.status, settled.error_code) == ("expired", "no_delivery_report")
    assert balance(account["account_id"]) == 100


def test_a_throttled_record_handed_back_because_its_settle_check_failed_still_waits_out_the_upstreams_retry_after(
    aws, account, hook, monkeypatch
):
    import httpx
    from moto.core.utils import unix_time_millis

    from sms_gateway.adapters.sqs import SqsNotifyQueue
    from sms_gateway_tools.localstack.moto_server import queue_contents
    from tests.conftest import route_simulator_upstreams_to

    # Given three single sends of one account (its priority lane), an upstream that takes the first and throttles the
    # second, asking us to come back in no less than 120 s (429, Retry-After: 120), and a notify queue that refuses
    # the invocation's settle check for the first
    submits: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        submits.append(payload["to"])
        if len(submits) == 2:
            return httpx.Response(429, headers={"Retry-After": "120"}, json={"error": "slow down"})
        return httpx.Response(200, json={"message_id": f"sim-{len(submits)}", "status": "accepted"})

    route_simulator_upstreams_to(monkeypatch, upstream)
    event = three_single_sends(aws, account)

    def refused(self, notifications):
        raise RuntimeError("SQS did not take the settle check")

    monkeypatch.setattr(SqsNotifyQueue, "publish", refused)
    # When the dispatcher handles them
    load_function("dispatcher").handler(event, FakeContext())
    assert len(submits) == 2
    # Then the throttled record is hidden at least as long as the upstream asked: handed back after 20 s to queue the
    # settle check again, it is offered to the upstream 100 s before the upstream said it would take it
    throttled = event["Records"][1]["body"]
    [hidden_for] = [
        record.visible_at - unix_time_millis()
        for record in queue_contents(aws["PRIORITY_DISPATCH_QUEUE_URL"])
        if record.body == throttled
    ]
    assert hidden_for > 100_000, hidden_for


def test_a_failed_record_left_to_the_visibility_timeout_is_not_brought_back_sooner_by_a_failed_settle_check(
    aws, account, hook, upstream, monkeypatch
):
    from moto.core.utils import unix_time_millis

    from sms_gateway import consumers
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.adapters.sqs import SqsNotifyQueue
    from sms_gateway_tools.localstack.moto_server import queue_contents

    # Given three single sends of one account (its priority lane): the upstream takes the first, the second's handling
    # fails and the store cannot count its failure (it waits out the queue's visibility timeout, as it would if the
    # store failed for a while), and the notify queue refuses the invocation's settle check for the first
    rate_limit = consumers._rate_limit
    reads: list[str] = []

    def second_fails(account_id: str) -> int | None:
        reads.append(account_id)
        if len(reads) == 2:
            raise RuntimeError("the store did not answer")
        return rate_limit(account_id)

    def not_counted(self, record_id, *, now):
        raise RuntimeError("the store did not answer")

    def refused(self, notifications):
        raise RuntimeError("SQS did not take the settle check")

    monkeypatch.setattr(consumers, "_rate_limit", second_fails)
    monkeypatch.setattr(DynamoStore, "count_record_failure", not_counted)
    monkeypatch.setattr(SqsNotifyQueue, "publish", refused)
    event = three_single_sends(aws, account)
    # When the dispatcher handles them
    load_function("dispatcher").handler(event, FakeContext())
    assert len(upstream.submits) == 1
    # Then the failed record still waits out most of the visibility timeout (360 s), and the others come back after
    # SETTLE_RETRY_SECONDS
    hidden_for = {
        record.body: record.visible_at - unix_time_millis()
        for record in queue_contents(aws["PRIORITY_DISPATCH_QUEUE_URL"])
    }
    first, failed, held_back = (hidden_for[record["body"]] for record in event["Records"])
    assert failed > 300_000, failed
    assert all(0 < ms <= consumers.SETTLE_RETRY_SECONDS * 1000 for ms in (first, held_back)), hidden_for
