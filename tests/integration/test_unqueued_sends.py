"""Sends of 100 recipients or more to go out at once whose api Lambda died between storing the batch and queueing its
dispatch records (docs/decisions.md, option A100): the batch is written in `sweep-index`, the api takes it out once
its records are queued, and the sweeper releases one still there through scheduled_dispatch, once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sms_gateway.domain.models import RELEASE_SWEEP_MIN_RECIPIENTS, UNQUEUED_RELEASE_SWEEP_MARGIN
from tests.integration.test_batches_dialect import api, send  # noqa: F401 (fixture)
from tests.integration.test_notifications_and_inbound_edges import sweeper_runs
from tests.integration.test_routing_dispatch import dispatch_all
from tests.integration.test_send_path import balance, queued_records, upstream  # noqa: F401 (fixture)
from tests.integration.test_unreleased_schedules import (  # noqa: F401 (fixture)
    Killed,
    Sweeping,
    lambda_,
    raw_batches,
    two_sweeper_runs_at_once,
)

# Minutes from now to a run of the sweeper just before and just after a send accepted now may be released by it.
BEFORE_THE_MARGIN = UNQUEUED_RELEASE_SWEEP_MARGIN.total_seconds() / 60 - 1
AFTER_THE_MARGIN = UNQUEUED_RELEASE_SWEEP_MARGIN.total_seconds() / 60 + 1
CREDITS = 1000


def numbers(count: int, start: int = 0) -> list[str]:
    """Distinct valid Nigerian MTN numbers."""
    return [f"234803{start + i:07d}" for i in range(count)]


@pytest.fixture
def campaign(aws, api, upstream, lambda_, monkeypatch) -> Sweeping:  # noqa: F811
    """An account with 1000 credits, the api, an upstream recording its submits, Lambda's asynchronous invocations of
    scheduled_dispatch, and the test's monkeypatch."""
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Campaigns", senders=["48974"], credits=CREDITS)
    return Sweeping(aws, account, api, upstream, lambda_, monkeypatch)


def killed_before_queueing(campaign: Sweeping, recipients: list[str]) -> int:
    """A send to go out at once, stored and charged, whose api Lambda was killed before it queued its records (and
    whose client did not retry): its reference id."""
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    def killed(self: Any, commands: Any) -> None:
        raise Killed

    with campaign.monkeypatch.context() as patched:
        patched.setattr(SqsDispatchQueue, "enqueue", killed)
        with pytest.raises(Killed):
            send(campaign.api, campaign.account["token"], recipients)
    [batch] = raw_batches(campaign.account["account_id"])
    assert batch["status"]["S"] == "queued"
    assert balance(campaign.account["account_id"]) == CREDITS - len(recipients)
    return int(batch["reference_id"]["N"])


def submits_by_number(campaign: Sweeping) -> Counter[str]:
    return Counter(submit["to"] for submit in campaign.upstream.submits)


def message_statuses(campaign: Sweeping, reference_id: int) -> Counter[str]:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages

    stored = all_messages(gateway().store, campaign.account["account_id"], reference_id)
    return Counter(str(message.status) for message in stored)


def in_sweep_index(campaign: Sweeping) -> bool:
    [batch] = raw_batches(campaign.account["account_id"])
    return "sweep_at" in batch or "sweep_shard" in batch


def sent_once_each(campaign: Sweeping, recipients: list[str]) -> bool:
    return submits_by_number(campaign) == Counter({number: 1 for number in recipients})


def test_a_100_recipient_send_killed_between_storing_and_queueing_is_released_after_the_margin_and_sent_once(
    campaign: Sweeping,
) -> None:
    recipients = numbers(RELEASE_SWEEP_MIN_RECIPIENTS)
    # Given a send of 100 recipients to go out at once whose api Lambda was killed after storing it, before queueing
    reference_id = killed_before_queueing(campaign, recipients)
    [batch] = raw_batches(campaign.account["account_id"])
    assert batch["sweep_shard"]["S"].startswith("QUEUED#")
    assert dispatch_all(campaign.aws) == {"batchItemFailures": []}
    assert campaign.upstream.submits == []
    # When the sweeper runs before the margin, then it leaves it alone (a live api could still be queueing it)
    assert sweeper_runs(campaign.monkeypatch, BEFORE_THE_MARGIN)["batches_released"] == 0
    assert campaign.lambda_.invocations == []
    # Then the first run after the margin invokes scheduled_dispatch with the batch's account and reference id
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
    assert campaign.lambda_.invocations == [
        {"account_id": campaign.account["account_id"], "reference_id": str(reference_id)}
    ]
    # ... whose release queues its messages (the batch was `queued`: nothing of it moves), and each is sent once
    assert campaign.lambda_.run() == [{"released": False}]
    assert dispatch_all(campaign.aws) == {"batchItemFailures": []}
    assert sent_once_each(campaign, recipients)
    assert message_statuses(campaign, reference_id) == Counter({"submitted": len(recipients)})
    # And the release took it out of the sweep index: no later run takes it, nothing goes out twice, charged once
    assert not in_sweep_index(campaign)
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN + 30)["batches_released"] == 0
    assert len(campaign.lambda_.invocations) == 1
    assert dispatch_all(campaign.aws) == {"batchItemFailures": []}
    assert sent_once_each(campaign, recipients)
    assert balance(campaign.account["account_id"]) == CREDITS - len(recipients)


def test_a_100_recipient_send_its_api_queued_is_never_released_by_the_sweeper(campaign: Sweeping) -> None:
    recipients = numbers(RELEASE_SWEEP_MIN_RECIPIENTS)
    # Given a send of 100 recipients to go out at once, accepted as usual
    status, sent = send(campaign.api, campaign.account["token"], recipients)
    assert status == 200, sent
    # Then its api took it out of the sweep index once its records were queued
    assert not in_sweep_index(campaign)
    assert dispatch_all(campaign.aws) == {"batchItemFailures": []}
    # And the sweeper after the margin releases nothing: each message went out once
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 0
    assert campaign.lambda_.invocations == []
    assert queued_records(campaign.aws) == []
    assert sent_once_each(campaign, recipients)


def failing_removal(campaign: Sweeping, patched: pytest.MonkeyPatch) -> None:
    """The api's write that takes a queued send out of the sweep index fails (DynamoDB throttled it)."""
    from botocore.exceptions import ClientError

    from sms_gateway.adapters.dynamodb import DynamoStore

    def throttled(self: Any, account_id: str, reference_id: int) -> None:
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "UpdateItem")

    patched.setattr(DynamoStore, "clear_release_sweep", throttled)


@pytest.mark.parametrize("dispatched_first", [True, False], ids=["dispatched before the sweep", "dispatched after"])
def test_when_the_api_s_removal_write_fails_the_sweeper_s_release_sends_nothing_twice(
    campaign: Sweeping, dispatched_first: bool
) -> None:
    # 150 recipients: two dispatch records, of 100 and 50
    recipients = numbers(150)
    # Given a send whose records the api queued, and whose write to take it out of the sweep index then failed
    with campaign.monkeypatch.context() as patched:
        failing_removal(campaign, patched)
        status, sent = send(campaign.api, campaign.account["token"], recipients)
    # Then the send stands, as queued
    assert status == 200, sent
    reference_id = int(sent["reference_id"])
    assert in_sweep_index(campaign)
    if dispatched_first:
        # ... and the dispatcher sent every message before the sweep
        assert dispatch_all(campaign.aws) == {"batchItemFailures": []}
        assert sent_once_each(campaign, recipients)
    # When the sweeper releases it after the margin
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
    assert campaign.lambda_.run() == [{"released": False}]
    # Then the release queued no record more: once sent, nothing of it is `queued`; before, its records repeat the
    # api's (the same deduplication ids), which the FIFO queue drops
    records = queued_records(campaign.aws)
    assert len(records) == (0 if dispatched_first else 2)
    dispatch_all_of(campaign, records)
    # And each message went out once, charged once, and the batch left the index
    assert sent_once_each(campaign, recipients)
    assert message_statuses(campaign, reference_id) == Counter({"submitted": len(recipients)})
    assert balance(campaign.account["account_id"]) == CREDITS - len(recipients)
    assert not in_sweep_index(campaign)
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN + 30)["batches_released"] == 0


def test_a_release_whose_removal_write_failed_is_not_released_again_by_every_later_sweep(campaign: Sweeping) -> None:
    recipients = numbers(RELEASE_SWEEP_MIN_RECIPIENTS)
    # Given a send whose records the api queued (its messages still queued: the account's backlog is ahead of them,
    # or the upstream asked the dispatcher to come back later), and whose write to take it out of the sweep index
    # failed; and the sweeper's release of it, whose own such write failed too (DynamoDB throttled both)
    with campaign.monkeypatch.context() as patched:
        failing_removal(campaign, patched)
        status, sent = send(campaign.api, campaign.account["token"], recipients)
        assert status == 200, sent
        assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
        [release] = campaign.lambda_.pending
        try:
            campaign.lambda_.run()
        except Exception:
            failed = True
        else:
            failed = False
    # When Lambda has run the release as it runs one (again after a failure, a minute or two later: its retries)
    if failed:
        campaign.lambda_.pending = [release]
        assert campaign.lambda_.run() == [{"released": False}]
    # Then the send left the sweep index, and no later sweep releases it again: each such release queues the send's
    # messages still queued once more, past the queue's deduplication window (new records, behind the account's
    # later sends), every claim's lease (15 minutes) until a removal write succeeds
    assert not in_sweep_index(campaign)
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN + 16)["batches_released"] == 0
    assert len(campaign.lambda_.invocations) == 1
    assert message_statuses(campaign, int(sent["reference_id"])) == Counter({"queued": len(recipients)})


def dispatch_all_of(campaign: Sweeping, records: list[dict[str, Any]]) -> None:
    from tests.conftest import FakeContext, load_function
    from tests.integration.test_send_path import as_lambda_sqs_event

    if records:
        answer = load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())
        assert answer == {"batchItemFailures": []}
    assert dispatch_all(campaign.aws) == {"batchItemFailures": []}


def test_a_message_a_dispatcher_holds_when_the_sweeper_releases_its_send_is_sent_once(campaign: Sweeping) -> None:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey, utc_now

    recipients = numbers(RELEASE_SWEEP_MIN_RECIPIENTS)
    # Given a send killed before queueing, ten of whose messages a dispatcher holds (claimed, mid-submit: a record
    # the release queued earlier, say)
    reference_id = killed_before_queueing(campaign, recipients)
    store = gateway().store
    first_ten = [reference_id + 1 + position for position in range(10)]
    for key in MessageKey.of_batch(campaign.account["account_id"], reference_id, first_ten):
        store.claim_for_dispatch(key, now=utc_now(), lease_seconds=600, upstream=None, attempts_read=0)
    # When the sweeper releases it and a dispatcher takes its record
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
    assert campaign.lambda_.run() == [{"released": False}]
    dispatch_all(campaign.aws)
    # Then the messages held are left to their holder, and the other 90 go out once
    assert sent_once_each(campaign, recipients[10:])
    assert message_statuses(campaign, reference_id) == Counter({"submitted": 90, "queued": 10})


def test_two_sweeper_runs_at_once_release_a_killed_send_once(campaign: Sweeping) -> None:
    recipients = numbers(RELEASE_SWEEP_MIN_RECIPIENTS)
    # Given a send of 100 killed before queueing
    reference_id = killed_before_queueing(campaign, recipients)
    # When two sweeper runs find it due at the same moment
    released = two_sweeper_runs_at_once(campaign.monkeypatch, AFTER_THE_MARGIN)
    # Then one of them released it, once, and each message goes out once
    assert released == [0, 1]
    assert len(campaign.lambda_.invocations) == 1
    assert campaign.lambda_.run() == [{"released": False}]
    dispatch_all(campaign.aws)
    assert sent_once_each(campaign, recipients)
    assert message_statuses(campaign, reference_id) == Counter({"submitted": len(recipients)})


def requests_of_a_send(campaign: Sweeping, recipients: list[str]) -> Counter[str]:
    """The AWS requests the api makes for a send (counted as the benchmarks count them: bench.AwsCallMeter)."""
    from bench import metering_boto3_clients
    from sms_gateway import bootstrap
    from sms_gateway.adapters import aws

    aws.reset_clients()
    bootstrap.reset()
    with metering_boto3_clients() as meter:
        # Warm: the clients made and the settings read, as in a warm container
        status, _ = send(campaign.api, campaign.account["token"], numbers(1, start=9000))
        assert status == 200
        meter.reset()
        status, sent = send(campaign.api, campaign.account["token"], recipients)
        assert status == 200, sent
        return Counter(meter.calls)


# What a send to go out at once of 99 recipients asked AWS for before sends of 100 or more were swept (counted at
# e30d65f): the credential and account reads, the batch and its credits in one transaction, the messages 25 to a
# BatchWriteItem, and its one dispatch record.
REQUESTS_OF_99 = Counter(
    {
        "dynamodb:GetItem": 2,
        "dynamodb:TransactWriteItems": 1,
        "dynamodb:BatchWriteItem": 4,
        "sqs:SendMessageBatch": 1,
    }
)


def test_a_99_recipient_send_makes_the_requests_it_made_before_and_a_100_recipient_send_one_more(
    aws,
    api,  # noqa: F811
) -> None:
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Counted", senders=["48974"], credits=CREDITS)
    counted = Sweeping(aws, account, api, None, None, None)  # type: ignore[arg-type]
    # A send of 99 recipients asks for exactly what it asked for before
    assert requests_of_a_send(counted, numbers(RELEASE_SWEEP_MIN_RECIPIENTS - 1)) == REQUESTS_OF_99
    # A send of 100 asks for the same, and one UpdateItem: the write that takes it out of the sweep index
    assert requests_of_a_send(counted, numbers(RELEASE_SWEEP_MIN_RECIPIENTS, start=100)) == REQUESTS_OF_99 + Counter(
        {"dynamodb:UpdateItem": 1}
    )


@pytest.mark.parametrize("failed_step", ["storing", "queueing"])
def test_a_small_send_whose_undo_dynamodb_keeps_cancelling_is_left_to_the_sweeper_and_charged_only_for_what_it_sends(
    campaign: Sweeping, failed_step: str
) -> None:
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from tests.integration.test_transaction_conflicts import transactions_conflicting

    recipients = numbers(2)

    def timed_out(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("Read timeout on endpoint URL")

    written = []

    def after_the_batch(writes: list[dict[str, Any]]) -> bool:
        written.append(writes)
        return len(written) > 1

    # Given a send of 2 to go out at once, without a key (so under 100 recipients it is in no sweep index), whose
    # batch and credits were written but whose messages could not be stored, or its records queued
    with campaign.monkeypatch.context() as patched:
        if failed_step == "storing":
            patched.setattr(DynamoStore, "_batch_write", timed_out)
        else:
            patched.setattr(SqsDispatchQueue, "enqueue", timed_out)
        # And whose undo DynamoDB cancels for conflicts with other writes of the account's credits, every try
        with transactions_conflicting(after_the_batch):
            status, body = send(campaign.api, campaign.account["token"], recipients)
    # Then the client is told it may have been done in part
    assert status == 500, body
    # And the sweeper, once the api cannot be at it any more, releases what stands of it
    assert sweeper_runs(campaign.monkeypatch, AFTER_THE_MARGIN)["batches_released"] == 1
    assert campaign.lambda_.run() == [{"released": False}]
    dispatch_all(campaign.aws)
    # So the account pays only for what goes out: the messages stored, once each; nothing for a send never stored
    if failed_step == "storing":
        assert campaign.upstream.submits == []
        assert balance(campaign.account["account_id"]) == CREDITS
    else:
        assert sent_once_each(campaign, recipients)
        assert balance(campaign.account["account_id"]) == CREDITS - len(recipients)
    assert not in_sweep_index(campaign)
