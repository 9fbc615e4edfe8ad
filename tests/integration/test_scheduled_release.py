"""The scheduled_dispatch function, as its one-time schedule invokes it: releases a scheduled batch, once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sms_gateway.errors import NotFound
from tests.conftest import FakeContext, load_event, load_function
from tests.integration.test_batches_dialect import AIRTEL, MTN, api, send  # noqa: F401 (fixtures)
from tests.integration.test_send_path import queued_records


def test_the_schedule_releases_its_batch_into_the_dispatch_queue_once(aws, account, api):  # noqa: F811
    # Given a batch of two scheduled an hour ahead: nothing is queued yet
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at)
    assert status == 200, sent
    assert queued_records(aws) == []
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(sent["reference_id"]))
    # When its schedule fires the scheduled_dispatch function, and fires it again (schedulers retry)
    function = load_function("scheduled_dispatch")
    first = function.handler(event, FakeContext())
    second = function.handler(event, FakeContext())
    # Then the batch's two messages are queued for dispatch by the first call only
    assert first == {"released": True}
    assert second == {"released": False}
    [record] = queued_records(aws)
    command = json.loads(record["Body"])
    assert command["reference_id"] == int(sent["reference_id"])
    assert len(command["message_ids"]) == 2


def test_a_scheduled_single_send_is_released_into_the_priority_dispatch_queue(aws, account, api):  # noqa: F811
    # Given a send to one number scheduled an hour ahead
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL], send_at=send_at)
    assert status == 200, sent
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(sent["reference_id"]))
    # When its schedule fires
    assert load_function("scheduled_dispatch").handler(event, FakeContext()) == {"released": True}
    # Then its record is on the priority dispatch queue, with the single sends sent at once, not behind bulk
    assert queued_records(aws, ("DISPATCH_QUEUE_URL",)) == []
    [record] = queued_records(aws, ("PRIORITY_DISPATCH_QUEUE_URL",))
    assert json.loads(record["Body"])["reference_id"] == int(sent["reference_id"])
    assert record["Attributes"]["MessageGroupId"] == f"{account['account_id']}#priority"


def test_a_batch_scheduled_from_a_sender_the_operator_removed_is_not_sent_from_it(aws, account, api):  # noqa: F811
    from sms_gateway_tools import admin

    # Given a batch from 48974 scheduled an hour ahead
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL], send_at=send_at)
    assert status == 200, sent
    # When the operator removes 48974 from the account (docs/operators.md: "the account's sends from it are refused
    # from then on") and registers it to another account, then the schedule fires
    admin.remove_sender(account_id=account["account_id"], sender="48974")
    new_owner = admin.create_account(name="New Owner", senders=[], credits=0)
    admin.add_sender(account_id=new_owner["account_id"], sender="48974")
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(sent["reference_id"]))
    load_function("scheduled_dispatch").handler(event, FakeContext())
    # Then nothing is queued to go out from a sender the account no longer holds
    assert queued_records(aws) == []


def test_a_release_replayed_from_the_schedule_dlq_as_the_runbook_says_releases_its_batch(aws, account, api):  # noqa: F811
    import boto3

    # Given a batch scheduled an hour ahead, whose schedule's release went to the schedule DLQ as the Input it carries
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at)
    assert status == 200, sent
    client, group = boto3.client("scheduler"), aws["SCHEDULE_GROUP_NAME"]
    [name] = [s["Name"] for s in client.list_schedules(GroupName=group)["Schedules"]]
    dead_letter_body = client.get_schedule(Name=name, GroupName=group)["Target"]["Input"]
    # When the operator replays it with docs/runbook.md's loop: `jq -c 'if has("requestPayload") ...'`, whose jq
    # (1.6, as Amazon Linux 2023 and CloudShell ship it) reads every JSON number as a double, as JavaScript does
    replayed = json.loads(json.dumps(json.loads(dead_letter_body, parse_int=lambda digits: int(float(digits)))))
    answer = load_function("scheduled_dispatch").handler(replayed, FakeContext())
    # Then the batch is released (the loop deletes the DLQ message once the release returns without an error,
    # whatever it answers; `{"released": false}` is read as "no longer scheduled")
    assert answer == {"released": True}
    assert len(queued_records(aws)) == 1


def test_a_lambda_failure_record_replayed_as_it_is_from_the_schedule_dlq_releases_its_batch(aws, account, api):  # noqa: F811
    # Given a batch scheduled an hour ahead, whose release Lambda parked in the schedule DLQ (three failed tries)
    # as its failure record, the release as `requestPayload` (a schedule made before 2026-12-06: the id a number)
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at)
    assert status == 200, sent
    release = {"account_id": account["account_id"], "reference_id": int(sent["reference_id"])}
    failure = {
        "version": "1.0",
        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": release,
        "responsePayload": {"errorMessage": "Throughput exceeds the current capacity", "errorType": "ClientError"},
    }
    # When the operator replays the DLQ message's body as it is (docs/runbook.md: no tool re-encodes it)
    answer = load_function("scheduled_dispatch").handler(json.loads(json.dumps(failure)), FakeContext())
    # Then the batch is released
    assert answer == {"released": True}
    assert len(queued_records(aws)) == 1


def test_a_release_of_a_batch_that_does_not_exist_fails_loudly(aws, account):
    # Given a release whose reference_id names no batch of the account (rounded by a tool that re-encoded it)
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id="1234567890123456800")
    # When it is invoked, then it raises (the release stays in the DLQ, the function's errors alarm), rather than
    # answer {"released": false}, which the runbook's replay reads as "no longer scheduled" and deletes
    with pytest.raises(NotFound, match="nothing to release"):
        load_function("scheduled_dispatch").handler(event, FakeContext())
    assert queued_records(aws) == []


def test_a_batch_is_never_scheduled_past_its_own_records_retention(aws, account, api, monkeypatch):  # noqa: F811
    from sms_gateway import bootstrap
    from tests.integration.test_batches_dialect import stored_batches
    from tests.integration.test_dynamodb_store import raw_message

    # Given an operator who keeps records 30 days (MESSAGE_RETENTION_DAYS, settings.message_retention_days)
    monkeypatch.setenv("MESSAGE_RETENTION_DAYS", "30")
    bootstrap.reset()
    # When a client schedules a batch 60 days ahead (inside MAX_SCHEDULE_AHEAD, 90 days)
    send_at = datetime.now(UTC) + timedelta(days=60)
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at.isoformat())
    # Then it is accepted, and the batch outlives its send time: DynamoDB's TTL must not delete it (and its
    # messages) before its schedule releases it; its records are kept the 30 days after it is sent
    assert status == 200, sent
    [batch] = stored_batches(account["account_id"])
    expires_at = datetime.fromtimestamp(int(batch["expires_at"]["N"]), tz=UTC)
    assert expires_at > send_at, f"batch {sent['reference_id']} expires {expires_at}, before it is sent {send_at}"
    assert abs(expires_at - (send_at + timedelta(days=30))) < timedelta(seconds=2)
    store = bootstrap.gateway().store
    stored = store.list_messages(account["account_id"], int(sent["reference_id"]), limit=10)[0]
    assert len(stored) == 2
    for message in stored:
        item = raw_message(store, message.key)
        assert item is not None and item["expires_at"] == batch["expires_at"]
