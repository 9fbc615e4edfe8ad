"""The metrics the operations dashboard and alarms read, as the real handlers emit them (EMF on stdout)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import boto3
import pytest

from tests.conftest import FakeContext, load_event, load_function
from tests.integration import test_send_path
from tests.integration.test_send_path import as_lambda_sqs_event, delete_records, queued_records, send_event

# The send path's fixtures: an account with credits, the api function, a recording simulator upstream.
account, api, upstream = test_send_path.account, test_send_path.api, test_send_path.upstream


def emitted(out: str) -> list[tuple[str, dict[str, str], list[float]]]:
    """Every (metric, dimensions, values) in the EMF records among the printed lines."""
    found = []
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if "_aws" not in record:
            continue
        for directive in record["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "SmsGateway"
            dimensions = {name: record[name] for names in directive["Dimensions"] for name in names}
            for metric in directive["Metrics"]:
                value = record[metric["Name"]]
                found.append((metric["Name"], dimensions, value if isinstance(value, list) else [value]))
    return found


def values(out: str, name: str, **dimensions: str) -> list[float]:
    wanted = {"service": "sms-gateway", **dimensions}
    return [v for metric, dims, vals in emitted(out) if metric == name and dims == wanted for v in vals]


def dispatch(records: list[dict[str, Any]]) -> dict[str, Any]:
    return load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())


def simulator_dlr(aws: dict[str, str], client_ref: str, status: str, done_at: str) -> dict[str, Any]:
    """The simulator's DLR callback, signed with the secret the stack registered for it."""
    from sms_gateway.adapters.providers.simulator import signature

    parameter = boto3.client("ssm").get_parameter(
        Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}simulator", WithDecryption=True
    )
    secret = json.loads(parameter["Parameter"]["Value"])["secret"]
    event = load_event("webhook-dlr-simulator.json")
    body = json.dumps({"message_id": "sim-1", "client_ref": client_ref, "status": status, "done_at": done_at})
    timestamp = str(int(time.time()))
    event["body"] = body
    event["headers"]["x-simulator-timestamp"] = timestamp
    event["headers"]["x-simulator-signature"] = signature(secret, timestamp, body)
    return event


@contextmanager
def log_lines_at(level: str) -> Iterator[list[dict[str, Any]]]:
    """The gateway logger's JSON lines written inside the block at `level` (prod logs at INFO), once it ends."""
    from sms_gateway.observability import logger

    handler, output = logger.registered_handler, StringIO()
    previous_stream, previous_level = handler.stream, logger.log_level
    handler.setStream(output)
    logger.setLevel(level)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        handler.setStream(previous_stream)
        logger.setLevel(previous_level)
        lines.extend(json.loads(line) for line in output.getvalue().splitlines() if line.startswith("{"))


def test_a_routine_dispatch_record_logs_nothing_at_info_and_one_with_a_failure_its_counts(aws, account, api, upstream):
    # Given a record whose message the upstream takes
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    with log_lines_at("INFO") as lines:
        assert dispatch([record]) == {"batchItemFailures": []}
    delete_records([record])
    # Then nothing is logged at INFO: the metrics count it
    assert [line["message"] for line in lines] == []

    # Given a record whose message the upstream refuses for good
    upstream.status = 400
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    with log_lines_at("INFO") as lines:
        dispatch([record])
    # Then its line is at INFO with the counts an operator looks for
    [line] = [line for line in lines if line["message"] == "dispatch record processed"]
    assert (line["level"], line["submitted"], line["failed"]) == ("INFO", 0, 1)
    assert line["reference_id"] == json.loads(record["Body"])["reference_id"]


@pytest.mark.parametrize(
    ("lapsed_claim_for", "counts"),
    [("simulator", {"submitted": 1, "taken_over": 1, "unconfirmed": 0}), ("gone", {"submitted": 0, "unconfirmed": 1})],
    ids=["deduplicating-upstream-asked-again", "upstream-off-the-route"],
)
def test_a_record_meeting_a_dead_dispatchers_claim_logs_at_info_what_became_of_it(
    aws, account, api, upstream, lapsed_claim_for, counts
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now

    # Given a record whose message a dispatcher claimed for an upstream an hour ago and then died holding
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    body = json.loads(record["Body"])
    [message] = gateway().store.get_messages(body["account_id"], body["reference_id"], body["message_ids"])
    hour_ago = utc_now() - timedelta(hours=1)
    gateway().store.claim_for_dispatch(message.key, now=hour_ago, lease_seconds=120, upstream=lapsed_claim_for)
    # When the record comes back
    with log_lines_at("INFO") as lines:
        assert dispatch([record]) == {"batchItemFailures": []}
    # Then its line is at INFO, saying whether the message was asked again of the deduplicating simulator or left
    # submitted-unconfirmed (the upstream the claim names is not on its route)
    [line] = [line for line in lines if line["message"] == "dispatch record processed"]
    assert line["level"] == "INFO" and {name: line[name] for name in counts} == counts


def test_a_send_counts_its_accepted_messages_not_its_requests(aws, account, api, capsys):
    response = api(send_event(account["token"], {"from": "48974", "to": ["2348020000000", "2348030000000"]}))
    response = api(
        send_event(account["token"], {"from": "48974", "to": ["2348020000000", "2348030000000"], "body": "hi"})
    )
    assert response["statusCode"] == 200
    out = capsys.readouterr().out
    # The refused request (no body) accepted nothing and counted nothing; the good one counts both recipients
    assert values(out, "MessagesAccepted") == [2.0]


def test_a_keyed_send_whose_answer_was_lost_counts_its_messages_once_with_the_retry_that_finishes_it(
    aws, account, api, capsys, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from tests.integration.test_idempotency_and_credits import leases_run_out, with_key

    body = {"from": "48974", "to": ["2348020000000", "2348030000000"], "body": "hi"}
    # Given a keyed send of two messages, stored, charged and queued, whose answer could not be kept under its key
    # and never reached the client (a reset connection)
    real_complete = DynamoStore.complete

    def complete_fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the answer could not be kept")

    monkeypatch.setattr(DynamoStore, "complete", complete_fails)
    api(with_key(send_event(account["token"], body), "answer-lost"))
    monkeypatch.setattr(DynamoStore, "complete", real_complete)
    leases_run_out()
    # When the client retries under its key and the retry finishes the send (adding nothing)
    assert api(with_key(send_event(account["token"], body), "answer-lost"))["statusCode"] == 200
    # Then the two messages were counted once in all, by the request that accepted them
    assert sum(values(capsys.readouterr().out, "MessagesAccepted")) == 2.0


TWO_MESSAGES = {"from": "48974", "to": ["2348020000000", "2348030000000"], "body": "hi"}


def killed_in(
    api: Any,
    account: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    owner: Any,
    name: str,
    *,
    after: bool = False,
) -> None:
    """A keyed send of TWO_MESSAGES whose Lambda is killed in its first call of `owner.name` (`after`: once that call
    is done), its lease run out."""
    from tests.integration.test_idempotency_and_credits import Killed, die_once, leases_run_out, with_key

    die_once(monkeypatch, owner, name, after=after)
    with pytest.raises(Killed):
        api(with_key(send_event(account["token"], TWO_MESSAGES), key))
    leases_run_out()


def test_a_retry_that_stores_the_messages_a_killed_send_did_not_counts_those(aws, account, api, capsys, monkeypatch):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from tests.integration.test_idempotency_and_credits import with_key

    # Given a keyed send killed once its batch and credits were written, before any message was
    killed_in(api, account, monkeypatch, "killed", DynamoStore, "add_messages")
    # When its retry finishes it, storing both messages
    assert api(with_key(send_event(account["token"], TWO_MESSAGES), "killed"))["statusCode"] == 200
    # Then both are counted, once
    assert sum(values(capsys.readouterr().out, "MessagesAccepted")) == 2.0


def test_review_a_send_killed_once_its_messages_were_stored_is_counted_once(aws, account, api, capsys, monkeypatch):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from tests.integration.test_idempotency_and_credits import with_key

    # Given a keyed send whose Lambda is killed (a timeout) once both messages were stored, charged and queued for
    # the dispatcher, before it answered: they go out
    killed_in(api, account, monkeypatch, "killed-queued", SqsDispatchQueue, "enqueue", after=True)
    # When the client retries under its key (it got no answer) and the retry finishes the send, adding nothing
    assert api(with_key(send_event(account["token"], TWO_MESSAGES), "killed-queued"))["statusCode"] == 200
    # Then the dashboard's messages accepted count both, once
    assert sum(values(capsys.readouterr().out, "MessagesAccepted")) == 2.0


def test_a_send_finished_by_a_retry_after_another_retry_died_part_way_is_counted_whole(
    aws, account, api, capsys, monkeypatch
):
    from sms_gateway.adapters import dynamodb
    from sms_gateway.adapters.dynamodb import DynamoStore
    from tests.integration.test_idempotency_and_credits import with_key

    # Given a keyed send killed once its batch and credits were written, before any message was
    killed_in(api, account, monkeypatch, "killed-twice", DynamoStore, "add_messages")
    # And its retry killed once it stored the first of its parts (a message a part here), before the second
    monkeypatch.setattr(dynamodb, "_MESSAGES_PER_CHARGED_WRITE", 1)
    killed_in(api, account, monkeypatch, "killed-twice", DynamoStore, "_reprice", after=True)
    # When the next retry finishes it, storing the other message
    assert api(with_key(send_event(account["token"], TWO_MESSAGES), "killed-twice"))["statusCode"] == 200
    # Then both messages are counted, once
    assert sum(values(capsys.readouterr().out, "MessagesAccepted")) == 2.0


def test_a_send_undone_because_it_could_not_be_queued_is_not_counted_accepted(aws, account, api, capsys, monkeypatch):
    from sms_gateway.adapters.sqs import SqsDispatchQueue

    body = {"from": "48974", "to": ["2348020000000", "2348030000000"], "body": "hi"}

    def queue_refuses(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("SQS is down")

    # Given the dispatch queue refusing the send's records
    monkeypatch.setattr(SqsDispatchQueue, "enqueue", queue_refuses)
    # When a send is made: stored, then withdrawn and refunded when it cannot be queued, and answered 503 to retry
    assert api(send_event(account["token"], body))["statusCode"] == 503
    # Then its messages are not counted accepted (its retry, accepted, counts them)
    assert sum(values(capsys.readouterr().out, "MessagesAccepted")) == 0.0


def test_a_delivery_report_counts_the_final_status_and_its_latency(aws, account, api, upstream, capsys):
    from sms_gateway.bootstrap import gateway

    # Given a message submitted to the upstream
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    command = json.loads(record["Body"])
    assert dispatch([record]) == {"batchItemFailures": []}
    [message] = gateway().store.get_messages(account["account_id"], command["reference_id"], command["message_ids"])
    submitted_at = datetime.fromisoformat(message.status_at["submitted"].replace("Z", "+00:00"))
    capsys.readouterr()
    # When its DLR says delivered, done 2.5 s after our submit
    done_at = (submitted_at + timedelta(milliseconds=2500)).isoformat()
    answer = load_function("webhook").handler(
        simulator_dlr(aws, upstream.submits[0]["client_ref"], "DELIVRD", done_at), FakeContext()
    )
    assert answer["statusCode"] == 200
    # Then the dashboard's delivered count and latency come from it
    out = capsys.readouterr().out
    assert values(out, "MessagesDelivered") == [1.0]
    assert values(out, "DeliveryReportLatency") == [pytest.approx(2500.0)]
    assert [metric for metric, _, _ in emitted(out) if metric.startswith("Messages")] == ["MessagesDelivered"]


def test_a_delivery_report_for_no_message_of_ours_is_counted_unmatched_and_changes_nothing(
    aws, account, api, upstream, capsys
):
    from sms_gateway.bootstrap import gateway

    # Given a message submitted to the upstream
    api(send_event(account["token"]))
    [record] = queued_records(aws)
    command = json.loads(record["Body"])
    assert dispatch([record]) == {"batchItemFailures": []}
    real_ref = upstream.submits[0]["client_ref"]
    capsys.readouterr()
    # When the upstream posts a report naming a message id no message of the account has
    unknown_ref = f"{account['account_id']}.{command['reference_id']}.{max(command['message_ids']) + 1000}"
    answer = load_function("webhook").handler(
        simulator_dlr(aws, unknown_ref, "DELIVRD", datetime.now().astimezone().isoformat()), FakeContext()
    )
    # Then it is acknowledged (an upstream would only post it again), counted for the dashboard, and applied nowhere
    assert answer["statusCode"] == 200
    out = capsys.readouterr().out
    assert values(out, "DeliveryReportsUnmatched") == [1.0]
    assert values(out, "DeliveryReportsApplied") == [0.0]
    [message] = gateway().store.get_messages(account["account_id"], command["reference_id"], command["message_ids"])
    assert message.status == "submitted"
    # And a report for the real message is applied, not counted unmatched
    answer = load_function("webhook").handler(
        simulator_dlr(aws, real_ref, "DELIVRD", datetime.now().astimezone().isoformat()), FakeContext()
    )
    out = capsys.readouterr().out
    assert values(out, "DeliveryReportsApplied") == [1.0]
    assert values(out, "DeliveryReportsUnmatched") == []


@pytest.mark.parametrize(
    ("status", "kind", "other"), [(503, "transient", "throttled"), (429, "throttled", "transient")], ids=["503", "429"]
)
def test_upstream_failures_are_counted_per_upstream_and_kind(aws, account, api, upstream, capsys, status, kind, other):
    # A transient failure (503) or a throttle (429, the upstream up and asking us to slow down): the record goes
    # back, counted by its kind, so the dashboard tells a throttling upstream from a failing one (a 429 was counted
    # "transient", like a 503)
    upstream.status = status
    api(send_event(account["token"]))
    capsys.readouterr()
    dispatch(queued_records(aws))
    out = capsys.readouterr().out
    # The failure-rate alarm's total counts both (an upstream throttling most submits needs looking at too)
    assert values(out, "UpstreamFailures") == [1.0]
    assert values(out, "UpstreamFailures", upstream="simulator", failure=kind) == [1.0]
    assert values(out, "UpstreamFailures", upstream="simulator", failure=other) == []
    assert values(out, "MessagesUndelivered") == []


def test_a_permanent_refusal_counts_as_permanent_and_as_a_final_failure_without_latency(
    aws, account, api, upstream, capsys
):
    upstream.status = 400
    api(send_event(account["token"]))
    capsys.readouterr()
    dispatch(queued_records(aws))
    out = capsys.readouterr().out
    assert values(out, "UpstreamFailures", upstream="simulator", failure="permanent") == [1.0]
    assert values(out, "MessagesUndelivered") == [1.0]
    # Never submitted: there is no report latency to give
    assert values(out, "DeliveryReportLatency") == []


def another_gateways_dlr(aws: dict[str, str]) -> dict[str, Any]:
    """The simulator's DLR of another gateway's traffic (its DLR URL misconfigured): the upstream's own message id,
    and a client reference that is not one of ours."""
    from sms_gateway.adapters.providers.simulator import signature

    event = simulator_dlr(aws, "other-gateway-4711", "DELIVRD", datetime.now().astimezone().isoformat())
    body = json.loads(event["body"])
    body["message_id"] = "sim-not-ours-4711"
    event["body"] = json.dumps(body)
    parameter = boto3.client("ssm").get_parameter(
        Name=f"{aws['UPSTREAM_PARAMETER_PREFIX']}simulator", WithDecryption=True
    )
    secret = json.loads(parameter["Parameter"]["Value"])["secret"]
    event["headers"]["x-simulator-signature"] = signature(
        secret, event["headers"]["x-simulator-timestamp"], event["body"]
    )
    return event


def test_a_delivery_report_from_another_gateways_traffic_is_counted_held(aws, account, api, upstream, capsys):
    # Given an upstream that posts this gateway reports of another gateway's traffic
    event = another_gateways_dlr(aws)
    capsys.readouterr()
    # When it is posted
    answer = load_function("webhook").handler(event, FakeContext())
    # Then it is acknowledged and held on the upstream's id (it might be a report that overtook its submit), and
    # counted held, so the dashboard shows "an upstream posting another gateway's reports to this one" (docs/runbook.md)
    assert answer["statusCode"] == 200, answer
    out = capsys.readouterr().out
    assert values(out, "DeliveryReportsHeld") == [1.0]
    assert values(out, "DeliveryReportsApplied") == [0.0]


def test_a_held_report_posted_again_is_counted_held_once(aws, account, api, upstream, capsys):
    # Given a report held on an upstream id no message is linked to
    event = another_gateways_dlr(aws)
    assert load_function("webhook").handler(event, FakeContext())["statusCode"] == 200
    capsys.readouterr()
    # When the upstream posts it again (it retries a callback it took for failed, or repeats a report)
    answer = load_function("webhook").handler(event, FakeContext())
    # Then it is acknowledged, and not counted held again: one report is held, and the dashboard says so
    assert answer["statusCode"] == 200, answer
    assert values(capsys.readouterr().out, "DeliveryReportsHeld") == []
