"""Opt-outs through the real handlers on moto: STOP by an inbound callback, then sends in each dialect."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from tests.conftest import FakeContext, load_event, load_function, store_clients
from tests.integration.test_send_path import balance, queued_records

Handler = Callable[[dict[str, Any]], dict[str, Any]]
SECRET = "opt-out-test-simulator-secret"
STOPPED = "2348020000000"
OTHER = "2348030000000"


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account
    from sms_gateway_tools.localstack.resources import put_simulator_parameter

    # The simulator upstream's callbacks are signed with a secret the test knows.
    put_simulator_parameter(boto3.client("ssm"), "http://127.0.0.1:9", SECRET)
    return create_account(name="Cinema Club", senders=["48974", "48975"], credits=100)


@pytest.fixture
def api(aws: dict[str, str]) -> Handler:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


@pytest.fixture
def webhook(aws: dict[str, str]) -> Handler:
    module = load_function("webhook")
    return lambda event: module.handler(event, FakeContext())


def inbound_event(text: str, message_id: str, msisdn: str = STOPPED, to: str = "48974") -> dict[str, Any]:
    """The sample simulator inbound callback with another text, signed as the simulator signs it."""
    from sms_gateway.adapters.providers.simulator import signature

    event = load_event("webhook-inbound-simulator.json")
    body = json.dumps(
        {"message_id": message_id, "from": msisdn, "to": to, "text": text, "received_at": "2026-01-02T23:50:37.000000Z"}
    )
    stamp = str(int(time.time()))
    event["body"] = body
    event["headers"]["x-simulator-timestamp"] = stamp
    event["headers"]["x-simulator-signature"] = signature(SECRET, stamp, body)
    return event


def texts(webhook: Handler, text: str, message_id: str, **fields: str) -> None:
    response = webhook(inbound_event(text, message_id, **fields))
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]) == {"status": "ok", "routed": True}


def ninebits(
    api: Handler, account: dict[str, Any], to: list[str], sender: str = "48974", **options: Any
) -> tuple[int, Any]:
    event = load_event("api-sendsms-9bits.json", YOUR_API_Token=account["token"])
    event["body"] = json.dumps({"from": sender, "to": to, "body": "Tonight: two for one", **options})
    response = api(event)
    return response["statusCode"], json.loads(response["body"])


def notifications(env: dict[str, str]) -> list[dict[str, Any]]:
    answer = boto3.client("sqs").receive_message(QueueUrl=env["NOTIFY_QUEUE_URL"], MaxNumberOfMessages=10)
    return [json.loads(message["Body"]) for message in answer.get("Messages", [])]


def stored_opt_outs(account_id: str) -> list[dict[str, Any]]:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    found = store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"OPTOUT#{account_id}"}},
    )
    return [store._codec.load(item) for item in found["Items"]]


def stop_reason(account: dict[str, Any]) -> str:
    """Why a send to STOPPED is refused after its STOP to 48974: the day is the day the STOP was recorded."""
    [opt_out] = [item for item in stored_opt_outs(account["account_id"]) if item["sk"] == "48974#+2348020000000"]
    return f"{STOPPED} opted out of messages from 48974 (STOP received {opt_out['at'][:10]})"


def counter(account_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    found = gateway().store.get_account(account_id)
    assert found is not None
    return found.opt_outs


def batch_count(account_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    found = store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :batch)",
        ExpressionAttributeValues={":pk": {"S": f"ACC#{account_id}"}, ":batch": {"S": "BATCH#"}},
    )
    return len(found["Items"])


# ------------------------------------------------------------------ the inbound side


def test_stop_is_recorded_counted_and_still_forwarded_in_the_seed_shape(aws, account, webhook):
    # When the number texts "Stop!" to the account's shortcode through the simulator upstream
    texts(webhook, "Stop!", "sim-stop-1")
    # Then the opt-out item is in the account's partition, keyed by sender and number
    [item] = stored_opt_outs(account["account_id"])
    assert item["sk"] == "48974#+2348020000000"
    assert (item["sender"], item["msisdn"], item["keyword"]) == ("48974", "+2348020000000", "STOP")
    assert item["inbound_id"] > 0
    # And counted on the account
    assert counter(account["account_id"]) == 1
    # And the client is notified exactly as the seed's "Receive SMS" shows, text untouched
    [notification] = notifications(aws)
    assert notification["kind"] == "inbound"
    assert set(notification["payload"]) == {
        "type",
        "telco",
        "from",
        "to",
        "message",
        "session_id",
        "sent_date",
        "ref_id",
    }
    assert (notification["payload"]["from"], notification["payload"]["message"]) == (STOPPED, "Stop!")


def test_a_duplicate_stop_callback_is_applied_once(aws, account, webhook):
    # Given a STOP callback
    texts(webhook, "STOP", "sim-dup")
    # When the upstream posts the very same callback again
    texts(webhook, "STOP", "sim-dup")
    # Then there is one opt-out, counted once, and the client is sent the SMS once: the first callback queued it
    assert len(stored_opt_outs(account["account_id"])) == 1
    assert counter(account["account_id"]) == 1
    assert len(notifications(aws)) == 1


def test_a_stop_whose_opt_out_could_not_be_recorded_fails_the_callback_and_the_retry_records_it(
    aws, account, webhook, monkeypatch
):
    from sms_gateway.bootstrap import gateway

    # Given a STOP whose opt-out write fails (DynamoDB throttling past botocore's retries) in the webhook's store
    store = gateway().prompt_store
    record_opt_out = store.opt_out

    def throttled(opt_out, **_):
        monkeypatch.setattr(store, "opt_out", record_opt_out)
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(store, "opt_out", throttled)
    # When the upstream posts it, the callback fails (so the upstream retries it), and the client has its copy
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("STOP", "sim-throttled"))
    assert stored_opt_outs(account["account_id"]) == []
    # And when the upstream retries it
    texts(webhook, "STOP", "sim-throttled")
    # Then the STOP is recorded and counted once, and the client is not sent the SMS again (the failed callback
    # queued it before the opt-out write failed)
    assert [item["keyword"] for item in stored_opt_outs(account["account_id"])] == ["STOP"]
    assert counter(account["account_id"]) == 1
    assert len(notifications(aws)) == 1


def failing_opt_out_writes(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The next `times` opt-out writes of the webhook's store fail, as DynamoDB throttling past botocore's retries
    does."""
    from sms_gateway.bootstrap import gateway

    store = gateway().prompt_store
    record_opt_out, left = store.opt_out, [times]

    def throttled(opt_out, **_):
        left[0] -= 1
        if left[0] <= 0:
            monkeypatch.setattr(store, "opt_out", record_opt_out)
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(store, "opt_out", throttled)


def notifier_handles_the_queued_notifications(env: dict[str, str]) -> None:
    from tests.integration.test_send_path import as_lambda_sqs_event

    answer = boto3.client("sqs").receive_message(
        QueueUrl=env["NOTIFY_QUEUE_URL"], MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    records = answer.get("Messages", [])
    assert records
    load_function("notifier").handler(as_lambda_sqs_event(records), FakeContext())


def test_a_stop_whose_callback_failed_and_was_never_retried_is_applied_by_the_notifier(
    aws, account, webhook, api, monkeypatch
):
    # Given a STOP whose opt-out write fails, through an upstream that never retries a failed callback (Twilio and
    # Kannel by default): the SMS is stored and its notification queued, the callback answered 5xx
    failing_opt_out_writes(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("STOP", "sim-never-retried"))
    assert stored_opt_outs(account["account_id"]) == []
    # When the notifier handles the SMS's notification
    notifier_handles_the_queued_notifications(aws)
    # Then the STOP is recorded, and a send to the number is refused
    assert [item["keyword"] for item in stored_opt_outs(account["account_id"])] == ["STOP"]
    status, body = ninebits(api, account, [STOPPED])
    assert status == 400 and stop_reason(account) in json.dumps(body)


def test_a_stop_whose_notification_the_queue_refused_is_applied_once_the_sweeper_queues_it(
    aws, account, webhook, api, monkeypatch
):
    from tests.integration.test_notifications_and_inbound_edges import refusing_notify_queue, sweeper_runs

    # Given a STOP whose notification the notify queue refuses, through an upstream that never retries a failed
    # callback: the SMS is stored, its opt-out still pending (the callback failed before applying it)
    refusing_notify_queue(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="SQS"):
        webhook(inbound_event("STOP", "sim-stop-unqueued"))
    assert stored_opt_outs(account["account_id"]) == []
    # When the sweeper queues its notification, and the notifier handles it
    assert sweeper_runs(monkeypatch, 3) == {"inbound_queued": 1, "reports_queued": 0, "batches_released": 0}
    notifier_handles_the_queued_notifications(aws)
    # Then the STOP is recorded, and a send to the number is refused
    assert [item["keyword"] for item in stored_opt_outs(account["account_id"])] == ["STOP"]
    status, body = ninebits(api, account, [STOPPED])
    assert status == 400 and stop_reason(account) in json.dumps(body)


def test_a_pending_stop_applied_late_does_not_undo_the_start_the_number_sent_after_it(
    aws, account, webhook, monkeypatch
):
    # Given a STOP whose opt-out write failed (left pending), and then a START from the same number, applied
    failing_opt_out_writes(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("STOP", "sim-stop-pending"))
    texts(webhook, "START", "sim-start-after")
    # When the STOP is applied late: by the upstream's retry of its callback, or by the notifier
    texts(webhook, "STOP", "sim-stop-pending")
    notifier_handles_the_queued_notifications(aws)
    # Then the number stays opted in: the latest keyword decides
    assert stored_opt_outs(account["account_id"]) == []


def test_a_pending_stopall_applied_late_is_not_lost_to_a_later_stop_of_one_sender(aws, account, webhook, monkeypatch):
    # Given a STOPALL whose opt-out write failed (left pending), then a STOP to 48974 from the same number, applied
    failing_opt_out_writes(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("STOPALL", "sim-stopall-pending"))
    texts(webhook, "STOP", "sim-stop-after")
    # When the STOPALL is applied late, by the upstream's retry of its callback
    texts(webhook, "STOPALL", "sim-stopall-pending")
    # Then the number is opted out of every sender: a STOP to one sender does not take back a STOPALL
    senders = sorted(item["sk"].split("#")[0] for item in stored_opt_outs(account["account_id"]))
    assert "*" in senders, senders


def test_a_pending_stop_applied_late_is_not_lost_to_a_stopall_a_later_start_took_back(
    aws, account, webhook, api, monkeypatch
):
    # Given a STOP to 48974 whose opt-out write failed (left pending), then a STOPALL, then a START to 48975 (which
    # takes back the STOPALL and 48975 only), both applied
    failing_opt_out_writes(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("STOP", "sim-stop-pending-2"))
    texts(webhook, "STOPALL", "sim-stopall-after")
    texts(webhook, "START", "sim-start-other", to="48975")
    # When the STOP is applied late: by the upstream's retry of its callback, or by the notifier
    texts(webhook, "STOP", "sim-stop-pending-2")
    notifier_handles_the_queued_notifications(aws)
    # Then, as had each keyword been applied when it came, the number is opted out of 48974 (START to 48975
    # took back the STOPALL, never the STOP to 48974)
    assert [item["sk"] for item in stored_opt_outs(account["account_id"])] == ["48974#+2348020000000"]
    status, _ = ninebits(api, account, [STOPPED])
    assert status == 400


def failing_opt_in_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next opt-in write of the webhook's store fails, as DynamoDB throttling past botocore's retries does."""
    from sms_gateway.bootstrap import gateway

    store = gateway().prompt_store
    record_opt_in = store.opt_in

    def throttled(*args, **kwargs):
        monkeypatch.setattr(store, "opt_in", record_opt_in)
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(store, "opt_in", throttled)


def test_a_pending_start_applied_late_does_not_undo_the_stop_after_it_on_a_busy_shortcode(
    aws, account, webhook, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.ids import new_id
    from sms_gateway.domain.models import StoredInbound

    # Given a START to 48974 whose opt-in write failed (left pending), then a STOP to 48974, applied
    failing_opt_in_writes(monkeypatch)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("START", "sim-start-pending"))
    texts(webhook, "STOP", "sim-stop-after-start")
    assert len(stored_opt_outs(account["account_id"])) == 1
    # And the shortcode's inbox busy meanwhile (a vote: 1100 SMS from other numbers)
    store = gateway().store
    for n in range(1100):
        inbound_id = new_id()
        store.save_inbound(
            StoredInbound(
                inbound_id=inbound_id,
                account_id=account["account_id"],
                upstream="simulator",
                upstream_message_id=f"vote-{n}",
                msisdn=f"+23480{40000000 + n}",
                to="48974",
                text="VOTE 3",
                session_id=str(inbound_id),
                received_at="2026-12-06T03:00:00Z",
            )
        )
    # When the START is applied late, by the upstream's retry of its callback (or a retry of its notification)
    texts(webhook, "START", "sim-start-pending")
    # Then the number stays opted out of 48974: its last word was STOP
    assert len(stored_opt_outs(account["account_id"])) == 1
    status, _ = ninebits(api, account, [STOPPED])
    assert status == 400


def test_a_repeated_stop_callback_after_a_start_does_not_opt_the_number_out_again(aws, account, webhook):
    # Given a STOP, applied, and then a START from the same number
    texts(webhook, "STOP", "sim-stop")
    texts(webhook, "START", "sim-start")
    # When the upstream posts the STOP's callback again (it never got our answer)
    texts(webhook, "STOP", "sim-stop")
    # Then the number stays opted in: the STOP was applied once, when it came
    assert stored_opt_outs(account["account_id"]) == []
    assert counter(account["account_id"]) == 0


# ------------------------------------------------------------------ 9bits


def test_a_9bits_send_refuses_the_opted_out_number_and_charges_only_the_other(aws, account, webhook, api):
    # Given a number that texted STOP to 48974
    texts(webhook, "STOP", "sim-1")
    # When 48974 sends to it and to another number
    status, body = ninebits(api, account, [STOPPED, OTHER])
    # Then one recipient is processed and the other is listed as refused, with the reason
    assert status == 200
    assert body["recipients_processed"] == 1
    assert body["refused"] == [{"to": STOPPED, "reason": stop_reason(account)}]
    # And only one credit is taken and one message queued
    assert balance(account["account_id"]) == 99
    [record] = queued_records(aws)
    assert len(json.loads(record["Body"])["message_ids"]) == 1


def test_a_number_that_texts_stop_after_a_send_was_scheduled_is_not_sent_to_at_its_release(aws, account, webhook, api):
    # Given a batch to two numbers scheduled an hour ahead, with delivery reports (2 credits)
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = ninebits(api, account, [STOPPED, OTHER], send_at=send_at, delivery_report="yes")
    assert status == 200, sent
    assert balance(account["account_id"]) == 98
    # And one of them texts STOP to the sender before the schedule fires
    texts(webhook, "STOP", "sim-1")
    # When the schedule fires
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(sent["reference_id"]))
    load_function("scheduled_dispatch").handler(event, FakeContext())
    # Then only the other number's message is queued for dispatch
    [record] = queued_records(aws)
    assert len(json.loads(record["Body"])["message_ids"]) == 1
    # And the stopped number's credit is given back
    assert balance(account["account_id"]) == 99
    # And the client is told with a delivery report: failed, opted_out
    [report] = [n["payload"] for n in notifications(aws) if n["kind"] == "dlr"]
    assert (report["to"], report["status"], report["error_code"]) == (STOPPED, "failed", "opted_out")


def test_a_9bits_send_without_opt_outs_answers_exactly_the_seed_shape(aws, account, api):
    status, body = ninebits(api, account, [STOPPED, OTHER])
    assert status == 200
    assert set(body) == {"status_code", "message", "reference_id", "recipients_processed"}


def test_a_9bits_send_to_only_opted_out_numbers_is_a_400_and_changes_nothing(aws, account, webhook, api):
    # Given both numbers opted out of 48974
    texts(webhook, "STOP", "sim-1")
    texts(webhook, "unsubscribe", "sim-2", msisdn=OTHER)
    # When 48974 sends to both
    status, body = ninebits(api, account, [STOPPED, OTHER])
    # Then the 9bits error shape says why, and nothing is stored, charged or queued
    assert status == 400
    assert body["status_code"] == 400
    assert "every recipient opted out" in body["message"]
    assert f"{OTHER} opted out of messages from 48974 (UNSUBSCRIBE received" in body["message"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []
    assert batch_count(account["account_id"]) == 0


def test_start_allows_sending_again(aws, account, webhook, api):
    # Given a STOP, then a START to the same shortcode
    texts(webhook, "STOP", "sim-1")
    texts(webhook, "Start", "sim-2")
    # Then the opt-out and its count are gone, and a send reaches the number again
    assert stored_opt_outs(account["account_id"]) == []
    assert counter(account["account_id"]) == 0
    status, body = ninebits(api, account, [STOPPED])
    assert (status, body["recipients_processed"], "refused" in body) == (200, 1, False)


def test_stop_covers_one_shortcode_and_stopall_every_one(aws, account, webhook, api):
    # Given a STOP to 48974
    texts(webhook, "STOP", "sim-1")
    # Then 48975 may still send to the number
    status, _ = ninebits(api, account, [STOPPED], sender="48975")
    assert status == 200
    # When the number then texts STOPALL
    texts(webhook, "STOPALL", "sim-2")
    # Then 48975 is refused too, naming every sender
    status, body = ninebits(api, account, [STOPPED], sender="48975")
    assert status == 400
    assert "opted out of messages from every sender of this account (STOPALL received" in body["message"]
    assert counter(account["account_id"]) == 2


def test_the_dry_run_lists_opted_out_numbers_and_prices_only_the_others(aws, account, webhook, api):
    texts(webhook, "STOP", "sim-1")
    event = load_event("api-batch-dry-run.json", YOUR_API_Token=account["token"])
    event["body"] = json.dumps({"from": "48974", "to": [STOPPED, OTHER], "body": "hello"})
    body = json.loads(api(event)["body"])
    assert body["recipients"] == 1
    assert body["total_cost"] == 1
    assert body["invalid"] == [{"to": STOPPED, "reason": stop_reason(account)}]
    # The send would go ahead for the other number
    assert body["would_be_accepted"] is True
    assert balance(account["account_id"]) == 100


# ------------------------------------------------------------------ shortcode


def shortcode_post(account: dict[str, Any], mobile: str) -> dict[str, Any]:
    event = load_event("api-shortcode-sendsms-post.json", apikey=account["apikey"], partnerID=account["partner_id"])
    event["body"] = json.dumps({**json.loads(event["body"]), "mobile": mobile})
    return event


def test_shortcode_answers_the_opt_out_code_for_that_number(aws, account, webhook, api):
    texts(webhook, "STOP", "sim-1")
    # When the seed's POST sends to the opted-out number and another
    response = api(shortcode_post(account, f"{STOPPED},{OTHER}"))
    # Then the opted-out number's entry has the opt-out code, the other is a success
    assert response["statusCode"] == 200
    stopped, sent = json.loads(response["body"])["responses"]
    assert stopped == {
        "response-code": 4100,
        "response-description": "Mobile number opted out",
        "mobile": int(STOPPED),
        "response-details": stop_reason(account),
    }
    assert (sent["response-code"], sent["mobile"]) == (200, int(OTHER))
    assert balance(account["account_id"]) == 99


def test_shortcode_with_only_opted_out_numbers_is_the_family_error_and_changes_nothing(aws, account, webhook, api):
    texts(webhook, "STOP", "sim-1")
    response = api(shortcode_post(account, STOPPED))
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert (body["response-code"], body["response-description"]) == (4100, "Mobile number opted out")
    assert "opted out of messages from 48974" in body["response-details"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


# ------------------------------------------------------------------ session key


def session_send(api: Handler, account: dict[str, Any], recipients: list[str], **fields: Any) -> dict[str, Any]:
    login = load_event("api-login.json", USERNAME="u", PASSWORD="p")
    query = {"username": account["username"], "password": account["password"]}
    login["queryStringParameters"], login["rawQueryString"] = query, urlencode(query)
    user_key, session_key = api(login)["body"].split(";")
    event = load_event("api-sms-session-key.json", USER_KEY=user_key, SESSION_KEY=session_key)
    event["body"] = json.dumps({"message": "Hello world!", "recipient": recipients, "sender": "48974", **fields})
    return api(event)


@pytest.mark.parametrize("allow_invalid", [False, True])
def test_session_key_sends_to_the_others_and_lists_the_opted_out_number(aws, account, webhook, api, allow_invalid):
    texts(webhook, "STOP", "sim-1")
    # When the seed's send names the opted-out number and another (whatever allowInvalidRecipients says)
    response = session_send(api, account, [f"+{STOPPED}", f"+{OTHER}"], allowInvalidRecipients=allow_invalid)
    # Then the other is sent and the opted-out one is listed with its reason
    assert response["statusCode"] == 201
    body = json.loads(response["body"])
    assert body["total_sent"] == 1
    assert body["invalid_recipients"] == [{"recipient": STOPPED, "reason": stop_reason(account)}]
    assert balance(account["account_id"]) == 99


def test_session_key_with_only_opted_out_numbers_is_a_400_ko(aws, account, webhook, api):
    texts(webhook, "STOP", "sim-1")
    response = session_send(api, account, [f"+{STOPPED}"])
    assert response["statusCode"] == 400
    body = json.loads(response["body"])
    assert body["result"] == "KO"
    assert "opted out of messages from 48974" in body["error"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


# ------------------------------------------------------------------ the store and the operator


def test_both_reads_find_the_same_opt_outs_across_many_keys(aws, account):
    # Given 60 numbers, every third opted out of 48974 and every fifth of every sender (STOPALL)
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.optouts import ALL_SENDERS, OptOut

    store = gateway().store
    numbers = [f"+234802000{i:04d}" for i in range(60)]
    for i, number in enumerate(numbers):
        for sender, every in (("48974", 3), (ALL_SENDERS, 5)):
            if i % every == 0:
                opt_out = OptOut(account_id=account["account_id"], sender=sender, msisdn=number, keyword="STOP", at="x")
                assert store.opt_out(opt_out)
    expected = {n for i, n in enumerate(numbers) if i % 3 == 0 or i % 5 == 0}
    # When they are looked up key by key (120 keys: two BatchGetItem calls) and by reading the partition
    by_keys = store.opted_out(account["account_id"], "48974", numbers)
    by_partition = store.opted_out(account["account_id"], "48974", numbers, known_count=counter(account["account_id"]))
    # Then both find the same numbers, preferring the sender's own opt-out to a STOPALL
    assert set(by_keys) == set(by_partition) == expected
    assert by_keys == by_partition
    assert by_keys[numbers[0]].sender == "48974"
    assert by_keys[numbers[5]].sender == ALL_SENDERS
    # And another sender sees only the STOPALLs
    assert set(store.opted_out(account["account_id"], "48975", numbers)) == {
        n for i, n in enumerate(numbers) if i % 5 == 0
    }
    assert counter(account["account_id"]) == len([i for i in range(60) if i % 3 == 0]) + 12


def test_operator_commands_list_add_and_remove_opt_outs(aws, account, webhook):
    from sms_gateway_tools import admin

    texts(webhook, "STOP", "sim-1")
    # When the operator opts another number out of every sender, then lists them
    added = admin.opt_out(account_id=account["account_id"], number="08030000000")
    assert (added["number"], added["sender"], added["keyword"], added["new"]) == (OTHER, "*", "OPERATOR", True)
    listed = admin.list_opt_outs(account_id=account["account_id"])
    assert [(row["number"], row["sender"], row["keyword"]) for row in listed] == [
        (STOPPED, "48974", "STOP"),
        (OTHER, "*", "OPERATOR"),
    ]
    # When they opt the first back in for 48974
    removed = admin.opt_in(account_id=account["account_id"], number=STOPPED, sender="48974")
    # Then it is gone and the count follows
    assert removed["removed"] == 1
    assert [row["number"] for row in admin.list_opt_outs(account_id=account["account_id"])] == [OTHER]
    assert counter(account["account_id"]) == 1


def test_operator_opt_out_errors_change_nothing(aws, account):
    from sms_gateway.errors import InvalidRequest, NotFound
    from sms_gateway_tools import admin

    with pytest.raises(NotFound):
        admin.opt_out(account_id="999", number=STOPPED)
    with pytest.raises(InvalidRequest, match="not registered"):
        admin.opt_out(account_id=account["account_id"], number=STOPPED, sender="OTHER")
    with pytest.raises(InvalidRequest, match="not a valid number"):
        admin.opt_out(account_id=account["account_id"], number="12")
    assert stored_opt_outs(account["account_id"]) == []
    assert counter(account["account_id"]) == 0


def test_the_command_line_runs_the_opt_out_commands(aws, account, monkeypatch, capsys):
    from sms_gateway_tools import admin, cli

    monkeypatch.setattr(admin, "_target", lambda args: "http://127.0.0.1:8")
    account_id = account["account_id"]

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(["admin", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    # When the operator opts a number out of 48974 and lists the account's opt-outs as JSON
    assert run("opt-out", "--account", account_id, "--number", STOPPED, "--sender", "48974")[0] == 0
    code, out, _ = run("opt-outs", "--account", account_id, "--json")
    # Then the list has it
    assert code == 0
    assert [(row["number"], row["sender"], row["keyword"]) for row in json.loads(out)] == [
        (STOPPED, "48974", "OPERATOR")
    ]
    # And opting in with a sender that is not the account's fails with exit code 2, changing nothing
    code, _, err = run("opt-in", "--account", account_id, "--number", STOPPED, "--sender", "NOTMINE")
    assert code == 2 and "not registered" in err
    assert counter(account_id) == 1
    # And opting in without a sender removes it
    code, out, _ = run("opt-in", "--account", account_id, "--number", STOPPED, "--json")
    assert (code, json.loads(out)["removed"]) == (0, 1)
    code, out, _ = run("opt-outs", "--account", account_id)
    assert "has no opt-outs" in out


def conflicting_opt_out_writes(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """DynamoDB cancelling the next `times` opt-out transactions on a conflict with a concurrent write of the account
    item (a send's or a refund's credits), as it does on AWS (moto never does): no condition failed."""
    conflicting_transactions(monkeypatch, times, lambda request: "OPTOUT#" in str(request["TransactItems"][0]))


def conflicting_transactions(
    monkeypatch: pytest.MonkeyPatch,
    times: int,
    applies: Callable[[dict[str, Any]], bool] = lambda request: True,
    code: str = "TransactionConflict",
) -> None:
    """DynamoDB cancelling the next `times` transactions that `applies` to on a conflict with a concurrent write of
    one of their items (the last), as it does on AWS (moto never does): no condition failed. Another `code` for
    that item: another reason (`ThrottlingError`: DynamoDB throttled the transaction). Through every store's client
    (the webhook's prompt one too), counted together."""
    conflicts = [times]

    def conflicting_on(client: Any) -> Callable[..., Any]:
        transact = client.transact_write_items

        def conflicting(**request: Any) -> Any:
            if applies(request) and conflicts[0]:
                conflicts[0] -= 1
                reasons = [{"Code": "None"}] * (len(request["TransactItems"]) - 1) + [{"Code": code}]
                raise client.exceptions.TransactionCanceledException(
                    {
                        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                        "CancellationReasons": reasons,
                    },
                    "TransactWriteItems",
                )
            return transact(**request)

        return conflicting

    for client in store_clients():
        monkeypatch.setattr(client, "transact_write_items", conflicting_on(client))


def test_a_stop_whose_opt_out_write_meets_a_transaction_conflict_is_recorded_not_refused_as_no_account(
    aws, account, webhook, monkeypatch
):
    # Given DynamoDB cancelling the opt-out transaction twice on a conflict with a write of the account item
    conflicting_opt_out_writes(monkeypatch, 2)
    # When the number texts STOP
    texts(webhook, "STOP", "sim-stop-conflict")
    # Then the STOP is recorded and counted, as the store's other transactions retry a conflict
    assert [item["keyword"] for item in stored_opt_outs(account["account_id"])] == ["STOP"]
    assert counter(account["account_id"]) == 1


def test_a_start_whose_opt_in_write_meets_a_transaction_conflict_removes_the_opt_out(
    aws, account, webhook, monkeypatch
):
    # Given an opted-out number, and DynamoDB cancelling the next opt-in transaction on a conflict
    texts(webhook, "STOP", "sim-stop")
    conflicting_opt_out_writes(monkeypatch, 1)
    # When the number texts START
    texts(webhook, "START", "sim-start-conflict")
    # Then the opt-out is gone and uncounted
    assert stored_opt_outs(account["account_id"]) == []
    assert counter(account["account_id"]) == 0


def test_an_opt_out_that_conflicts_with_other_writes_every_time_fails_and_is_not_called_a_missing_account(
    aws, account, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.optouts import OptOut
    from sms_gateway.errors import NotFound

    monkeypatch.setattr("sms_gateway.adapters.dynamodb_transactions.back_off", lambda attempt: None)
    conflicting_opt_out_writes(monkeypatch, 100)
    opt_out = OptOut(
        account_id=account["account_id"], msisdn=STOPPED, sender="48974", keyword="STOP", at="2026-12-06T00:00:00Z"
    )
    # A write that never got through is an error to retry (the webhook's 5xx), never a 404 `no account`
    with pytest.raises(RuntimeError, match="cancelled 6 times for conflicts") as raised:
        gateway().store.opt_out(opt_out)
    assert not isinstance(raised.value, NotFound)
    assert stored_opt_outs(account["account_id"]) == []


def test_a_number_that_texted_stop_to_a_shortcode_is_not_sent_to_from_it_after_it_moves_to_another_account(
    aws, account, webhook, api
):
    from sms_gateway_tools.admin import add_sender, create_account, remove_sender

    # Given a number that texted STOP to the shortcode 48974 while account A held it, and never START
    texts(webhook, "STOP", "sim-stop-moved")
    # When the operator moves 48974 to account B (remove-sender, then add-sender), and B sends from it
    remove_sender(account_id=account["account_id"], sender="48974")
    other = create_account(name="New owner", senders=["CINEMA"], credits=100)
    add_sender(account_id=other["account_id"], sender="48974")
    status, body = ninebits(api, other, [STOPPED, OTHER])
    # Then the handset that said STOP to 48974 gets nothing from 48974 (docs/opt-outs.md: "not sent to from that
    # sender again until it texts START"); the other number is sent to
    assert status == 200, body
    assert body["recipients_processed"] == 1
    assert [r["to"] for r in body["refused"]] == [STOPPED]


def test_a_moved_sender_keeps_its_own_opt_outs_once_and_the_stopall_stays_with_its_account(
    aws, account, webhook, api, monkeypatch, capsys
):
    from sms_gateway_tools import admin, cli

    monkeypatch.setattr(admin, "_target", lambda args: "http://127.0.0.1:8")
    first = account["account_id"]
    # Given under account A: STOPPED said STOP to 48974, OTHER said STOP to 48975, and a third number STOPALL to 48974
    third = "2348040000000"
    texts(webhook, "STOP", "sim-keep-1")
    texts(webhook, "STOP", "sim-keep-2", msisdn=OTHER, to="48975")
    texts(webhook, "STOPALL", "sim-keep-3", msisdn=third)
    # When the operator moves 48974 to account B with the command line
    admin.remove_sender(account_id=first, sender="48974")
    other = admin.create_account(name="New owner", senders=["CINEMA"], credits=100)
    capsys.readouterr()
    assert cli.main(["admin", "add-sender", "--account", other["account_id"], "--sender", "+48974"]) == 0
    out = capsys.readouterr().out
    # Then it says how many opt-outs came with the sender, and from which account
    assert "opt_outs_carried_over  1" in out
    assert f"released_by            {first}" in out
    # And B has STOPPED's opt-out of 48974 alone (not the other sender's, not the STOPALL), counted once
    [kept] = stored_opt_outs(other["account_id"])
    assert (kept["sk"], kept["keyword"], kept["carried_over_from"]) == ("48974#+2348020000000", "STOP", first)
    assert "inbound_id" not in kept  # that SMS is in A's inbox
    assert counter(other["account_id"]) == 1
    # And A keeps its three
    assert counter(first) == len(stored_opt_outs(first)) == 3
    # And B's send from 48974 leaves STOPPED out and goes to the number whose STOPALL was A's
    status, body = ninebits(api, other, [STOPPED, third])
    assert status == 200, body
    assert [r["to"] for r in body["refused"]] == [STOPPED]
    # When the sender goes back to A, which has STOPPED's opt-out of it still
    admin.remove_sender(account_id=other["account_id"], sender="48974")
    back = admin.add_sender(account_id=first, sender="48974")
    # Then nothing is written twice: A's count stays exact
    assert back["opt_outs_carried_over"] == 1 and back["released_by"] == other["account_id"]
    assert counter(first) == len(stored_opt_outs(first)) == 3
    # And adding it again changes nothing
    again = admin.add_sender(account_id=first, sender="48974")
    assert (again["opt_outs_carried_over"], again["released_by"]) == (0, None)


def test_an_add_sender_cut_short_while_carrying_opt_outs_over_is_finished_by_running_it_again(
    aws, account, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.optouts import OptOut
    from sms_gateway.errors import Unavailable
    from sms_gateway_tools import admin

    store = gateway().store
    first = account["account_id"]
    # Given 150 numbers that opted out of 48974 under account A (two transactions' worth), which releases it
    numbers = [f"+234802100{i:04d}" for i in range(150)]
    for number in numbers:
        assert store.opt_out(OptOut(account_id=first, sender="48974", msisdn=number, keyword="STOP", at="x"))
    admin.remove_sender(account_id=first, sender="48974")
    other = admin.create_account(name="New owner", senders=["CINEMA"], credits=100)
    # When add-sender for B dies after the first 98 copies (the second copy conflicts with other writes every time)
    copies, transact = [0], store.client.transact_write_items

    def second_copy_conflicts(**request: Any) -> Any:
        if f"OPTOUT#{other['account_id']}" in str(request["TransactItems"][0]):
            copies[0] += 1
            if copies[0] > 1:
                reasons = [{"Code": "None"}] * (len(request["TransactItems"]) - 1) + [{"Code": "TransactionConflict"}]
                raise store.client.exceptions.TransactionCanceledException(
                    {"Error": {"Code": "TransactionCanceledException"}, "CancellationReasons": reasons},
                    "TransactWriteItems",
                )
        return transact(**request)

    monkeypatch.setattr(store.client, "transact_write_items", second_copy_conflicts)
    with pytest.raises(Unavailable, match="run the same command again"):
        admin.add_sender(account_id=other["account_id"], sender="48974")
    # Then B does not have the sender yet, and counts exactly the copies made
    assert store.account_id_for_sender("48974") is None
    assert counter(other["account_id"]) == len(stored_opt_outs(other["account_id"])) == 98
    # When the operator runs it again
    monkeypatch.setattr(store.client, "transact_write_items", transact)
    added = admin.add_sender(account_id=other["account_id"], sender="48974")
    # Then every opt-out is B's, counted once, and B holds the sender
    assert added["opt_outs_carried_over"] == 150
    assert counter(other["account_id"]) == len(stored_opt_outs(other["account_id"])) == 150
    assert store.account_id_for_sender("48974") == other["account_id"]
    status, body = ninebits(api, other, [numbers[149].lstrip("+"), OTHER])
    assert status == 200 and [r["to"] for r in body["refused"]] == [numbers[149].lstrip("+")]


def test_a_released_sender_cannot_be_given_to_a_new_account_at_its_creation(aws, account):
    from sms_gateway.errors import Conflict
    from sms_gateway_tools import admin

    # Given 48974, released by account A
    admin.remove_sender(account_id=account["account_id"], sender="48974")
    # When an account is created with it, then Conflict: its opt-outs need the account to exist (add-sender)
    with pytest.raises(Conflict, match="'48974' was released by another account: create the account without it"):
        admin.create_account(name="New owner", senders=["CINEMA", "48974"], credits=100)
    # And nothing was created: CINEMA is free still
    added = admin.create_account(name="New owner", senders=["CINEMA"], credits=100)
    assert admin.add_sender(account_id=added["account_id"], sender="48974")["released_by"] == account["account_id"]


def test_a_second_add_sender_still_copying_does_not_undo_a_start_the_new_owner_recorded(
    aws, account, webhook, api, monkeypatch
):
    from sms_gateway.adapters import dynamodb_admin
    from sms_gateway.errors import Conflict
    from sms_gateway_tools import admin

    # Given STOPPED said STOP to 48974 under account A, which releases it
    texts(webhook, "STOP", "sim-straggler-stop")
    admin.remove_sender(account_id=account["account_id"], sender="48974")
    other = admin.create_account(name="New owner", senders=["CINEMA"], credits=100)
    carry, calls = dynamodb_admin.carry_over_opt_outs, [0]

    def slow_copy(*args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        if calls[0] == 1:
            # While this add-sender (the operator's retry of one that seemed stuck, or approve-sender for the same
            # request) is about to copy, the other one finishes: B holds 48974, and STOPPED texts START to it
            assert admin.add_sender(account_id=other["account_id"], sender="48974")["opt_outs_carried_over"] == 1
            texts(webhook, "START", "sim-straggler-start")
            assert counter(other["account_id"]) == len(stored_opt_outs(other["account_id"])) == 0
        return carry(*args, **kwargs)

    monkeypatch.setattr(dynamodb_admin, "carry_over_opt_outs", slow_copy)
    # When the slow one copies and then finds the sender registered
    with pytest.raises(Conflict, match=r"taken meanwhile: .* nothing more copied"):
        admin.add_sender(account_id=other["account_id"], sender="48974")
    # Then the START B recorded stands: STOPPED is sent to from 48974
    assert stored_opt_outs(other["account_id"]) == []
    status, body = ninebits(api, other, [STOPPED])
    assert status == 200 and body.get("refused", []) == [], body


def test_a_stop_still_pending_when_its_shortcode_moves_opts_the_number_out_under_the_new_owner(
    aws, account, webhook, api, monkeypatch
):
    from sms_gateway.errors import Unavailable
    from sms_gateway_tools import admin

    # Given a STOP to 48974 whose opt-out write failed, through an upstream that never retries (left pending)
    failing_opt_out_writes(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("STOP", "sim-pending-move"))
    # When the operator moves 48974 to account B before the notifier applies it
    admin.remove_sender(account_id=account["account_id"], sender="48974")
    other = admin.create_account(name="New owner", senders=["CINEMA"], credits=100)
    # Then add-sender waits for it: nothing is copied, and B does not hold the sender
    with pytest.raises(Unavailable, match=r"still being applied to account .*run again in a few minutes"):
        admin.add_sender(account_id=other["account_id"], sender="48974")
    assert stored_opt_outs(other["account_id"]) == []
    # And once the notifier has applied it, add-sender carries it over
    notifier_handles_the_queued_notifications(aws)
    assert [item["keyword"] for item in stored_opt_outs(account["account_id"])] == ["STOP"]
    assert admin.add_sender(account_id=other["account_id"], sender="48974")["opt_outs_carried_over"] == 1
    # So B does not send to the number from 48974 either (it texted STOP to it, and never START)
    status, body = ninebits(api, other, [STOPPED])
    assert status == 400, body


def test_a_start_still_pending_when_its_shortcode_moves_leaves_no_opt_out_with_the_new_owner(
    aws, account, webhook, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.errors import Unavailable
    from sms_gateway_tools import admin

    # Given a number that texted STOP to 48974, then START, whose opt-in failed (left pending)
    texts(webhook, "STOP", "sim-pending-start-stop")
    store = gateway().prompt_store
    opt_in = store.opt_in

    def throttled(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(store, "opt_in", throttled)
    with pytest.raises(RuntimeError, match="Throughput"):
        webhook(inbound_event("START", "sim-pending-start"))
    monkeypatch.setattr(store, "opt_in", opt_in)
    # When the operator moves 48974 to account B before the notifier applies it
    admin.remove_sender(account_id=account["account_id"], sender="48974")
    other = admin.create_account(name="New owner", senders=["CINEMA"], credits=100)
    with pytest.raises(Unavailable, match="still being applied"):
        admin.add_sender(account_id=other["account_id"], sender="48974")
    notifier_handles_the_queued_notifications(aws)
    # Then the START is applied before anything is copied: B has no opt-out of the number, and sends to it
    assert admin.add_sender(account_id=other["account_id"], sender="48974")["opt_outs_carried_over"] == 0
    assert stored_opt_outs(account["account_id"]) == stored_opt_outs(other["account_id"]) == []
    status, body = ninebits(api, other, [STOPPED])
    assert status == 200 and body.get("refused", []) == [], body
