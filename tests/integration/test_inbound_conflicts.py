"""Inbound SMS through the real `webhook` handler on moto while DynamoDB cancels its transactions for conflicts with
other writes (TransactionConflict: a resent MO whose first post is still being stored, a send writing the account's
credits as a STOP's opt-out does), as it does on AWS (moto never does), or throttles a request past botocore's retries:
the SMS is stored and forwarded once, and an upstream whose callback could not be taken is told to post it again (503,
Retry-After), never a 500."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from tests.conftest import FakeContext, ShortOfTime, load_function
from tests.integration.test_aws_adapters import throttling
from tests.integration.test_optouts import (
    SECRET,
    conflicting_transactions,
    counter,
    inbound_event,
    notifications,
    stored_opt_outs,
    texts,
)

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture(autouse=True)
def simulator_upstream(aws: dict[str, str]) -> None:
    """The simulator upstream, whose callbacks (`inbound_event`) are signed with SECRET."""
    from sms_gateway_tools.localstack.resources import put_simulator_parameter

    put_simulator_parameter(boto3.client("ssm"), "http://127.0.0.1:9", SECRET)


@pytest.fixture
def webhook(aws: dict[str, str]) -> Handler:
    module = load_function("webhook")
    return lambda event: module.handler(event, FakeContext())


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from sms_gateway.adapters import dynamodb_transactions

    monkeypatch.setattr(dynamodb_transactions, "back_off", lambda attempt: None)


def inbox(account_id: str) -> list[Any]:
    from sms_gateway.bootstrap import gateway

    return gateway().store.list_inbounds(account_id)[0]


def inbox_transactions(request: dict[str, Any]) -> bool:
    return "INUP#" in str(request["TransactItems"][0])


def test_an_mo_whose_inbox_transaction_meets_conflicts_is_stored_and_forwarded_once(aws, account, webhook, monkeypatch):
    # Given DynamoDB cancelling the inbox transaction (the SMS with its dedup marker) twice for conflicts
    conflicting_transactions(monkeypatch, 2, inbox_transactions)
    # When the upstream posts an MO
    texts(webhook, "See you at eight", "sim-conflicted")
    # Then it is taken at a later try, as the store's other transactions are: stored once, forwarded once
    assert [sms.text for sms in inbox(account["account_id"])] == ["See you at eight"]
    assert len(notifications(aws)) == 1


def test_a_resent_mo_meeting_its_first_post_in_flight_is_answered_200_and_stored_once(
    aws, account, webhook, monkeypatch
):
    # Given an MO stored and forwarded by its first post
    texts(webhook, "Two tickets please", "sim-resent")
    # And its resend, whose transaction DynamoDB first cancels for a conflict with that post's write of the marker
    conflicting_transactions(monkeypatch, 1, inbox_transactions)
    # When the upstream resends it
    texts(webhook, "Two tickets please", "sim-resent")
    # Then the resend is a duplicate, acknowledged: one SMS in the inbox, forwarded once
    assert len(inbox(account["account_id"])) == 1
    assert len(notifications(aws)) == 1


def sms_taken(account_id: str) -> int:
    return len(inbox(account_id))


def stops_taken(account_id: str) -> int:
    """The account's opt-outs, which its opt-out counter counts exactly."""
    opt_outs = len(stored_opt_outs(account_id))
    assert counter(account_id) == opt_outs
    return opt_outs


@pytest.mark.parametrize(
    ("text", "item", "taken"),
    [("Is the 9pm show full?", "INUP#", sms_taken), ("STOP", "OPTOUT#", stops_taken)],
    ids=["its-inbox-write", "its-opt-out"],
)
def test_an_mo_whose_transaction_conflicts_on_every_try_is_answered_503_and_its_resend_is_taken_once(
    aws, account, webhook, monkeypatch, text, item, taken
):
    # Given DynamoDB cancelling every transaction that writes the SMS with its dedup marker (or, for a STOP, its
    # opt-out with the account's counter, which every send's credits write too) for conflicts
    with monkeypatch.context() as patched:
        conflicting_transactions(patched, 100, lambda request: item in str(request["TransactItems"][0]))
        # When the upstream posts the MO
        answer = webhook(inbound_event(text, "sim-busy"))
    # Then it is told to post it again (503 after Retry-After), not that the gateway failed (500)
    assert answer["statusCode"] == 503, answer
    assert answer["headers"]["Retry-After"] == "1", answer
    assert "try again" in json.loads(answer["body"])["message"]
    assert taken(account["account_id"]) == 0
    # And its resend, once the conflicts pass, is taken once, and the client has the SMS once (a STOP's from the
    # first post, which stored and forwarded it before its opt-out write)
    texts(webhook, text, "sim-busy")
    assert taken(account["account_id"]) == 1
    assert len(inbox(account["account_id"])) == 1
    assert len(notifications(aws)) == 1


@pytest.mark.parametrize("code", ["ThrottlingError", "ProvisionedThroughputExceeded"])
def test_an_mo_whose_inbox_transaction_dynamodb_throttles_once_is_stored_at_its_first_post(
    aws, account, webhook, monkeypatch, code
):
    # Given DynamoDB throttling the inbox transaction once (a cancellation that names the throttled item)
    conflicting_transactions(monkeypatch, 1, inbox_transactions, code=code)
    # When the upstream posts an MO
    texts(webhook, "Row F, please", "sim-throttled")
    # Then it is taken at a later try of the same post, stored and forwarded once, not left to an upstream's resend
    assert [sms.text for sms in inbox(account["account_id"])] == ["Row F, please"]
    assert len(notifications(aws)) == 1


def refused_requests(monkeypatch: pytest.MonkeyPatch, error: Callable[[str], Exception], operations: set[str]) -> None:
    """DynamoDB refusing every request of `operations` as botocore raises it once its own retries are spent (or ended
    at the invocation's deadline): `error(operation)`."""
    from sms_gateway.bootstrap import gateway

    client = gateway().prompt_store.client
    call = client._make_api_call

    def refusing(operation: str, request: dict[str, Any]) -> Any:
        if operation in operations:
            raise error(operation)
        return call(operation, request)

    monkeypatch.setattr(client, "_make_api_call", refusing)


def aws_error(code: str) -> Callable[[str], Exception]:
    from botocore.exceptions import ClientError

    return lambda operation: ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, operation)


def deadline_reached(operation: str) -> Exception:
    from sms_gateway.deadlines import DeadlineReached

    return DeadlineReached("the AWS call failed with too little time left to try it again")


THROTTLED = {
    "ProvisionedThroughputExceededException": aws_error("ProvisionedThroughputExceededException"),
    "ThrottlingException": aws_error("ThrottlingException"),
    "RequestLimitExceeded": aws_error("RequestLimitExceeded"),
    "DeadlineReached": deadline_reached,
}


@pytest.mark.parametrize("refusal", list(THROTTLED))
def test_an_mo_whose_write_dynamodb_throttles_past_its_retries_is_answered_503_and_its_resend_is_taken_once(
    aws, account, webhook, monkeypatch, refusal, capsys
):
    # Given DynamoDB throttling the inbox transaction (the SMS with its dedup marker) past botocore's retries
    with monkeypatch.context() as patched:
        refused_requests(patched, THROTTLED[refusal], {"TransactWriteItems"})
        # When the upstream posts an MO
        capsys.readouterr()
        answer = webhook(inbound_event("Two for Friday", "sim-throttled-out"))
    # Then it is told to post it again (503 after Retry-After), as for a transaction left undecided
    assert answer["statusCode"] == 503, answer
    assert answer["headers"]["Retry-After"] == "1", answer
    assert "try again" in json.loads(answer["body"])["message"]
    # And, being no invocation error, it is counted for the webhook's error-rate alarm
    metric_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(line.get("CallbacksNotTaken") == [1.0] for line in metric_lines), metric_lines
    assert sms_taken(account["account_id"]) == 0
    # And its resend, once DynamoDB takes writes again, is stored and forwarded once
    texts(webhook, "Two for Friday", "sim-throttled-out")
    assert sms_taken(account["account_id"]) == 1
    assert len(notifications(aws)) == 1


def test_a_dlr_arriving_while_dynamodb_throttles_every_request_is_answered_503(aws, account, webhook, monkeypatch):
    from tests.integration.test_operations_metrics import simulator_dlr

    # Given DynamoDB throttling every request past botocore's retries
    every_request = {"GetItem", "Query", "UpdateItem", "PutItem", "TransactWriteItems", "BatchGetItem"}
    refused_requests(monkeypatch, THROTTLED["ProvisionedThroughputExceededException"], every_request)
    # When the upstream posts a delivery report
    answer = webhook(simulator_dlr(aws, f"{account['account_id']}.1.1", "DELIVRD", "2026-01-02T23:50:37Z"))
    # Then it is told to post it again
    assert answer["statusCode"] == 503, answer
    assert answer["headers"]["Retry-After"] == "1", answer


def bug(operation: str) -> Exception:
    return KeyError("a bug's exception")


@pytest.mark.parametrize(
    ("failure", "raised"),
    [(aws_error("ValidationException"), "ClientError"), (bug, "KeyError")],
    ids=["aws-validation-error", "bug"],
)
def test_an_mo_failing_on_an_error_no_retry_helps_is_not_answered_try_again(
    aws, account, webhook, monkeypatch, failure, raised
):
    # Given the inbox transaction failing on an error that is no throttle (a malformed request, a bug)
    refused_requests(monkeypatch, failure, {"TransactWriteItems"})
    # When the upstream posts an MO, the invocation fails (logged with its traceback by Lambda, a 5xx to the upstream,
    # counted in the webhook's error-rate alarm), not told to come back later as if the gateway were only busy
    with pytest.raises(Exception) as failed:
        webhook(inbound_event("Two for Friday", "sim-bug"))
    assert type(failed.value).__name__ == raised


def webhook_timeout_seconds() -> int:
    """The webhook function's Timeout in template.yaml."""
    from sms_gateway_tools.template import function_definitions
    from tests.iam_enforcement import repository_template

    [webhook] = [
        function
        for function in function_definitions(repository_template())
        if function.code_uri.strip("/") == "functions/webhook"
    ]
    return webhook.timeout


@dataclass
class Throttled:
    """What a throttling DynamoDB saw: each attempt sent (its operation), and each backoff slept, in seconds."""

    sent: list[str]
    slept: list[float]


@pytest.fixture
def throttling_dynamodb(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Throttled]:
    """DynamoDB throttling every attempt of every request (of each client), botocore backing off for as long as its
    jitter allows, and every sleep taken on a clock the invocation's deadline reads, not waited out."""
    from botocore.retries.standard import ExponentialBackoff

    from sms_gateway import deadlines
    from sms_gateway.adapters import aws as clients

    slept: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time.sleep", slept.append)
    monkeypatch.setattr(
        ExponentialBackoff, "delay_amount", lambda self, context: min(2 ** (context.attempt_number - 1), 20)
    )
    real = time.monotonic
    monkeypatch.setattr(deadlines, "time", SimpleNamespace(monotonic=lambda: real() + sum(slept)))
    with throttling([clients.client("dynamodb"), clients.client("dynamodb", prompt=True)]) as sent:
        yield Throttled(sent, slept)


def test_an_mo_while_dynamodb_throttles_everything_is_answered_503_within_the_webhooks_timeout(
    aws, account, throttling_dynamodb
):
    timeout = webhook_timeout_seconds()
    # Given DynamoDB throttling every request, and botocore's backoffs at their longest
    module = load_function("webhook")
    # When the upstream posts an MO to the webhook function, which Lambda stops at its Timeout
    answer = module.handler(inbound_event("Row G", "sim-throttled-long"), ShortOfTime(timeout * 1000))
    # Then it is told to post it again, before Lambda's timeout kills it (a 502/504 with no log of why)
    assert answer["statusCode"] == 503, answer
    assert sum(throttling_dynamodb.slept) < timeout, throttling_dynamodb


def test_a_callback_with_too_little_time_left_does_not_retry_a_throttled_request(aws, account, throttling_dynamodb):
    # Given DynamoDB throttling every request, and an invocation with less time left than the webhook keeps to answer
    module = load_function("webhook")
    # When the upstream posts an MO
    answer = module.handler(inbound_event("Row H", "sim-throttled-late"), ShortOfTime(1_000))
    # Then its throttled request is not tried again: the upstream is told at once to post it again
    assert answer["statusCode"] == 503, answer
    assert (len(throttling_dynamodb.sent), throttling_dynamodb.slept) == (1, []), throttling_dynamodb
