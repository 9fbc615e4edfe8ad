"""The AWS calls the functions make are ones their statements in template.yaml allow, as AWS evaluates them: moto
applies no IAM, so a missing grant or a condition a call does not meet would first show as an outage in production.
tests/iam_enforcement.py checks each call a handler makes and fails it as AWS would (AccessDeniedException)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.iam_enforcement import Denial, Enforcer, Request, iam_enforced, refusals_expected
from tests.integration import test_unqueued_sends as unqueued
from tests.integration import test_unreleased_schedules as unreleased
from tests.integration.test_batches_dialect import api  # noqa: F401 (fixture)
from tests.integration.test_send_path import (
    as_lambda_sqs_event,
    queued_records,
    send_event,
    upstream,  # noqa: F401 (fixture)
)
from tests.integration.test_unqueued_sends import campaign  # noqa: F401 (fixture)
from tests.integration.test_unreleased_schedules import Sweeping, lambda_, sweeping  # noqa: F401 (fixture)


@pytest.fixture
def enforced(iam: Enforcer) -> Enforcer:
    """The checker every test with `aws` runs under (tests/conftest.py)."""
    return iam


# Each run with IAM applied: the sweeper's claims of unreleased batches (the account partition, where its UpdateItem
# is held to a few attributes and no return values), its schedule deletions, the api's schedules (iam:PassRole of the
# scheduler role), the releases and the dispatch that follow.
# Each scenario with the name of the fixture it takes (an account of 100 credits, or of a campaign's).
SCENARIOS: list[tuple[Callable[[Sweeping], None], str]] = [
    (unreleased.test_a_batch_whose_schedule_was_never_made_is_released_and_sent_once_after_the_margin, "sweeping"),
    (unreleased.test_a_schedule_that_fires_late_after_the_sweeper_released_its_batch_sends_nothing_twice, "sweeping"),
    (unreleased.test_a_batch_that_moved_on_with_its_sweep_keys_left_is_taken_out_of_the_index_not_released, "sweeping"),
    (
        unqueued.test_a_100_recipient_send_killed_between_storing_and_queueing_is_released_after_the_margin_and_sent_once,
        "campaign",
    ),
]


@pytest.mark.parametrize(
    ("scenario", "fixture"),
    SCENARIOS,
    ids=lambda value: value.__name__.removeprefix("test_") if callable(value) else "",
)
def test_the_sweepers_release_of_unreleased_batches_is_allowed_by_its_iam_statements(
    scenario: Callable[[Sweeping], None], fixture: str, enforced: Enforcer, request: pytest.FixtureRequest
) -> None:
    # When a scenario of the sweeper runs with the functions' IAM statements applied
    sweeping: Sweeping = request.getfixturevalue(fixture)  # noqa: F811
    scenario(sweeping)
    # Then no call of any function was refused, and the sweeper's claims in the account partition were checked
    assert enforced.denials == []
    assert ("SweeperFunction", "dynamodb:UpdateItem") in enforced.checked
    # And its asynchronous invoke of each release (a fake Lambda client here, not botocore) is one it may make
    for _ in sweeping.lambda_.invocations:
        assert enforced.allowed("SweeperFunction", Request("lambda:InvokeFunction", sweeping.lambda_.function_arn))


def claim(status: str = "scheduled", **changes: Any) -> dict[str, Any]:
    """The sweeper's claim of an unreleased batch, as adapters/dynamodb_unreleased.py sends it."""
    return {
        "TableName": "t",
        "Key": {"pk": {"S": "ACC#acme"}, "sk": {"S": "BATCH#7"}},
        "UpdateExpression": "SET sweep_at = :until",
        "ConditionExpression": "sweep_at <= :now AND #status = :unreleased",
        "ExpressionAttributeNames": {"#status": "status"},
        "ExpressionAttributeValues": {":now": {"N": "1"}, ":until": {"N": "2"}, ":unreleased": {"S": status}},
        **changes,
    }


def sweeper_may(enforcer: Enforcer, operation: str, params: dict[str, Any]) -> bool:
    table = {**params, "TableName": enforcer.env["TABLE_NAME"]}
    return all(enforcer.allowed("SweeperFunction", r) for r in enforcer.requests("dynamodb", operation, table))


def test_the_sweepers_write_to_an_account_partition_is_held_to_its_claim(aws: dict[str, str]) -> None:
    enforcer = Enforcer(aws)
    # Given the sweeper's statements, as AWS evaluates them: its claim of a batch (no ReturnValues: NONE) is allowed
    assert sweeper_may(enforcer, "UpdateItem", claim())
    assert sweeper_may(enforcer, "UpdateItem", claim(ReturnValues="NONE"))
    # Then a write naming any other attribute of the account partition (its credits) is refused
    assert not sweeper_may(enforcer, "UpdateItem", claim(UpdateExpression="SET sweep_at = :until, credits = :until"))
    assert not sweeper_may(enforcer, "UpdateItem", claim(ConditionExpression="credits > :now"))
    # And so is a claim that returns the whole item (ALL_NEW hands back the account's attributes), or reads it
    assert not sweeper_may(enforcer, "UpdateItem", claim(ReturnValues="ALL_NEW"))
    assert not sweeper_may(enforcer, "GetItem", {"Key": claim()["Key"]})
    # And a write to a partition other than the account's, inbound SMS' or messages' (credentials, routes)
    assert not sweeper_may(enforcer, "UpdateItem", claim(Key={"pk": {"S": "CRED#x"}, "sk": {"S": "CRED"}}))


def test_a_claim_naming_an_attribute_its_statement_leaves_out_is_refused(aws: dict[str, str]) -> None:
    # Given the template without `status` among the attributes the sweeper may name in the account partition (its
    # claim's condition reads it: a condition's attributes count, docs.aws.amazon.com/amazondynamodb/latest/
    # developerguide/specifying-conditions.html, example 2)
    enforcer = Enforcer(aws)
    template = copy.deepcopy(enforcer.template)
    [policy] = template["Resources"]["SweeperFunction"]["Properties"]["Policies"]
    [batches] = [s for s in policy["Statement"] if s.get("Sid") == "ClaimUnreleasedBatches"]
    batches["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"].remove("status")
    # Then the sweeper's claim is refused: the check would catch a grant that no longer matches the claim
    assert not sweeper_may(Enforcer(aws, template), "UpdateItem", claim())


@pytest.fixture
def dispatch_without_table_grants(
    aws: dict[str, str],
    iam: Enforcer,
    api: Callable[[dict[str, Any]], dict[str, Any]],  # noqa: F811
) -> Callable[[], list[Denial]]:
    """An accepted send waiting in the dispatch queue; called, the dispatcher runs it under a template whose
    dispatcher may not use the table, and what was refused is returned."""
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Cinema Club", senders=["48974"], credits=100)
    assert api(send_event(account["token"]))["statusCode"] == 200
    template = copy.deepcopy(iam.template)
    policies = template["Resources"]["DispatcherFunction"]["Properties"]["Policies"]
    policies[:] = [policy for policy in policies if "DynamoDBCrudPolicy" not in policy]

    def dispatch() -> list[Denial]:
        with refusals_expected() as refused, iam_enforced(aws, template):
            load_function("dispatcher").handler(as_lambda_sqs_event(queued_records(aws)), FakeContext())
        return refused

    return dispatch


def test_a_call_a_handlers_worker_thread_makes_is_judged_as_that_functions(
    dispatch_without_table_grants: Callable[[], list[Denial]],
    upstream: Any,  # noqa: F811
) -> None:
    # When the dispatcher runs a send under a template that does not let it use the table (it reads the batch and
    # the account in asyncio.to_thread's workers)
    refused = dispatch_without_table_grants()
    # Then its reads are refused as the dispatcher's, in the workers too, and nothing reached the upstream
    assert refused
    assert {denial.function for denial in refused} == {"DispatcherFunction"}
    assert any(denial.operation.startswith("dynamodb:") and denial.thread != "MainThread" for denial in refused)
    assert upstream.submits == []


@pytest.mark.iam_unchecked
def test_a_test_marked_iam_unchecked_has_no_call_judged(
    dispatch_without_table_grants: Callable[[], list[Denial]],
    upstream: Any,  # noqa: F811
) -> None:
    # When the same runs in a test marked iam_unchecked (its calls carry an operator's credentials)
    refused = dispatch_without_table_grants()
    # Then nothing was refused, and the message reached the upstream
    assert refused == []
    assert len(upstream.submits) == 1
