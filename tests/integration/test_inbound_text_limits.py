"""An inbound SMS's text, from an upstream's callback through the inbox, the notify queue and the record of a failed
client notification, stays within what SQS and DynamoDB take.

The client's notification is queued as JSON with every non-ASCII character escaped (`\\uXXXX`: 6 bytes a UTF-16
unit). SQS refuses a message over the queue's MaximumMessageSize (262,144 bytes, which the template pins on every queue
since session 37; before, a queue that named none was 256 KiB or 1 MiB by when SQS made it, and moto's and so the
tests' 1 MiB), and a SendMessageBatch whose messages add up to more than SQS takes in one call (moto: 1 MiB).
DynamoDB refuses an item over 400 KB (moto enforces it): a failed notification's record holds the notification as
that JSON string."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_callback_acknowledgements import TOKEN, kannel_delivering_inbound_for, kannel_inbound_event
from tests.state_snapshot import assert_unchanged, capture, clients_for_moto

# SQS's classic message size limit, the template's MaximumMessageSize of every queue.
SQS_CLASSIC_MESSAGE_BYTES = 262_144
# What SQS made a queue that named no MaximumMessageSize after it took bigger messages (moto too).
SQS_LARGEST_MESSAGE_BYTES = 1_048_576


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(
        name="Cinema Club", senders=["48974"], credits=100, inbound_url="https://client.example/inbound"
    )


def notify_queue_limited_to(aws: dict[str, str], max_bytes: int) -> None:
    import boto3

    boto3.client("sqs").set_queue_attributes(
        QueueUrl=aws["NOTIFY_QUEUE_URL"], Attributes={"MaximumMessageSize": str(max_bytes)}
    )


def kannel_mo_posting(text: str, mo_id: str = "mo-1") -> dict[str, Any]:
    """Kannel's MO post with the text as its body (post-url, UTF-8), as an SMSC behind it may deliver any text."""
    query = {"token": TOKEN, "from": "+2348020000000", "to": "48974", "ts": "1767398400", "id": mo_id}
    return kannel_inbound_event(query, "text/plain; charset=utf-8", text, encoded=False)


def posted(event: dict[str, Any]) -> dict[str, Any]:
    """The webhook function's answer; an invocation that raised is what API Gateway answers then: a 500."""
    try:
        return load_function("webhook").handler(event, FakeContext())
    except Exception as error:
        return {"statusCode": 500, "body": repr(error)}


# The longest texts taken (MOST_SMS_UNITS: 39,015 UTF-16 units), each escaped to 6 bytes a unit in the JSON queued:
# the longest SMS, 255 parts of GSM-7 in Greek capitals (GSM-7 has them, one septet each), and as many emoji as that
# many units hold (12 bytes each queued; no SMS carries as many: UCS-2 takes 17,085 units in 255 parts).
LONGEST_GSM7_SMS = ("ΔΦΓΛΩΠΨΣΘΞ" * 4000)[: 255 * 153]
MOST_EMOJI = "\U0001f600" * (255 * 153 // 2)


@pytest.mark.parametrize(
    ("text", "queue_limit"),
    [
        # 270 KB queued: over a 256 KiB notify queue, so the callback failed (5xx) and every repeat of it.
        ("ж" * 45_000, SQS_CLASSIC_MESSAGE_BYTES),
        # 420 KB queued: taken on a 1 MiB queue (a stack's before session 37), but its failure record would be over
        # DynamoDB's 400 KB.
        ("ж" * 70_000, SQS_LARGEST_MESSAGE_BYTES),
        # One character longer than the longest SMS.
        (LONGEST_GSM7_SMS + "Δ", SQS_CLASSIC_MESSAGE_BYTES),
    ],
    ids=["over-a-256-KiB-notify-queue", "over-a-DynamoDB-item-as-a-failure-record", "one-over-255-parts"],
)
def test_an_inbound_text_longer_than_any_sms_is_refused_and_changes_nothing(aws, account, text, queue_limit):
    # Given Kannel delivering the short code's SMS
    kannel_delivering_inbound_for(aws, account)
    notify_queue_limited_to(aws, queue_limit)
    state = clients_for_moto()
    before = capture(state)
    # When it posts a text longer than any SMS carries (255 parts: 39,015 GSM-7 characters, 17,085 UCS-2), in a
    # script of 2 bytes a character (the body is far within its 256 KB)
    answer = posted(kannel_mo_posting(text))
    # Then it is refused as a callback that cannot be an SMS (the upstream stops), and nothing is stored or queued
    assert answer["statusCode"] == 400, answer
    assert "255 parts" in answer["body"]
    assert_unchanged(state, before)


@pytest.mark.parametrize("text", [LONGEST_GSM7_SMS, MOST_EMOJI], ids=["255-parts-of-gsm7", "as-many-emoji"])
def test_the_longest_text_taken_reaches_the_client_and_its_failed_delivery_is_listed(aws, account, monkeypatch, text):
    from sms_gateway import consumers
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_webhook_retries import ClientWebhook, run_notifier

    # Given Kannel delivering the short code's SMS, a notify queue of SQS's classic 256 KiB, and a client webhook
    # that fails
    kannel_delivering_inbound_for(aws, account)
    notify_queue_limited_to(aws, SQS_CLASSIC_MESSAGE_BYTES)
    hook = ClientWebhook(500)
    monkeypatch.setattr(consumers, "post_webhook", hook)
    # When Kannel posts the longest text taken
    answer = posted(kannel_mo_posting(text))
    # Then it is taken and stored whole
    assert answer["statusCode"] == 200, answer
    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert stored.text == text
    # And its notification is queued and posted to the client's webhook, whose failure is recorded for the client to
    # see and resend (DynamoDB takes the record), to be retried
    outcome = run_notifier(aws)
    assert [post["body"]["message"] for post in hook.posts] == [text]
    assert outcome["failed"] == 1  # handed back for its retry
    [failure] = gateway().store.list_webhook_failures(account["account_id"])[0]
    assert (failure.notification_id, failure.state) == (f"in_{stored.inbound_id}", "retrying")
    assert failure.notification["payload"]["message"] == text


def test_long_sms_left_unqueued_by_an_outage_all_reach_the_client_from_the_sweeper(aws, account, monkeypatch):
    from tests.integration.test_notifications_and_inbound_edges import (
        queued_notifications,
        refusing_notify_queue,
        sweeper_runs,
    )

    # Given five of the longest SMS taken while the notify queue refused their notifications (Kannel does not post a
    # failed callback again): each about 235 KB queued, 1.2 MB together
    kannel_delivering_inbound_for(aws, account)
    refusing_notify_queue(monkeypatch, 5)
    answers = [posted(kannel_mo_posting(LONGEST_GSM7_SMS, f"mo-{n}"))["statusCode"] for n in range(5)]
    assert answers == [500] * 5
    # When the sweeper runs after they are due
    outcome = sweeper_runs(monkeypatch, 3)
    # Then it queues each of them for the client, once
    assert outcome == {"inbound_queued": 5, "reports_queued": 0, "batches_released": 0}
    queued = queued_notifications(aws)
    assert sorted(n["payload"]["message"] == LONGEST_GSM7_SMS for n in queued) == [True] * 5
    assert len({n["id"] for n in queued}) == 5


def test_resend_all_queues_every_dead_notification_of_the_longest_sms(aws, account):
    from datetime import UTC, datetime

    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import webhook_retries
    from sms_gateway.logic.notify import WebhookFailed
    from tests.integration.test_notifications_and_inbound_edges import queued_notifications

    store, account_id = gateway().store, account["account_id"]
    now = datetime(2026, 1, 2, tzinfo=UTC)
    # Given five dead notifications of the longest SMS (about 235 KB each queued)
    for n in range(5):
        notification = {
            "kind": "inbound",
            "id": f"in_{n}",
            "account_id": account_id,
            "url": None,
            "payload": {"type": "two-way sms", "from": "2348020000000", "to": "48974", "message": LONGEST_GSM7_SMS},
        }
        failure = WebhookFailed("client webhook answered 502", status_code=502)
        webhook_retries.record_failure(store, notification, failure, attempt=1, delays=(), now=now)
    # When the client resends every dead one (POST /ng/v1/webhooks/failures/resend)
    resent, more = webhook_retries.resend_dead(store, gateway().notify_queue, account_id, now=now, limit=500)
    # Then all five are queued again, once each
    assert (resent, more) == (5, False)
    assert sorted(n["id"] for n in queued_notifications(aws)) == [f"in_{n}" for n in range(5)]
