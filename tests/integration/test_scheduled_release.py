"""The scheduled_dispatch function, as its one-time schedule invokes it: releases a scheduled batch, once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

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
    admin.create_account(name="New Owner", senders=["48974"], credits=0)
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(sent["reference_id"]))
    load_function("scheduled_dispatch").handler(event, FakeContext())
    # Then nothing is queued to go out from a sender the account no longer holds
    assert queued_records(aws) == []
