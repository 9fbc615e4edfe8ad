"""The local stack's moto resources match template.yaml, read straight from its raw Properties.

This deliberately does not use `table_definitions` / `queue_definitions`: it re-reads the template's own
values, so a mistake in that translation (a dropped attribute, a wrong DLQ) shows up here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sms_gateway_tools.localstack import LocalStack
from sms_gateway_tools.template import load_template

pytestmark = pytest.mark.timeout(90)

STACK_NAME = "tmpl-check"

# What SQS uses when a queue's template sets nothing (AWS::SQS::Queue documentation).
SQS_DEFAULT_VISIBILITY_TIMEOUT = 30
SQS_DEFAULT_RETENTION_PERIOD = 345600


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in template["Resources"].items()
        if resource.get("Type") == kind
    }


def sub(value: Any) -> str:
    """A name as the template writes it: a literal or a `!Sub` of ${AWS::StackName} only."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    assert isinstance(text, str), f"cannot read the name {value!r}"
    text = text.replace("${AWS::StackName}", STACK_NAME)
    assert not re.search(r"\$\{", text), f"unexpected substitution in {text!r}"
    return text


def flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def get_att_target(value: Any) -> str:
    """The logical id behind `!GetAtt X.Arn`, in either of the forms the loader produces."""
    target = value["Fn::GetAtt"]
    logical_id, attribute = target if isinstance(target, list) else str(target).split(".", 1)
    assert attribute == "Arn"
    return str(logical_id)


def attribute_set(definitions: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(d["AttributeName"], d["AttributeType"]) for d in definitions}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state_dir: Path = tmp_path_factory.mktemp("local-stack")
    stack = LocalStack(port=0, stack_name=STACK_NAME, functions={}, state_dir=state_dir, divert_metrics=False)
    with stack as running:
        yield running


@pytest.fixture(scope="module")
def queue_attributes(stack: LocalStack, template: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Logical id -> every SQS attribute of the queue the template names."""
    sqs = stack.client("sqs")
    found = {}
    for logical_id, props in resources(template, "AWS::SQS::Queue").items():
        url = sqs.get_queue_url(QueueName=sub(props["QueueName"]))["QueueUrl"]
        found[logical_id] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return found


def test_the_table_matches_the_template(stack, template):
    tables = resources(template, "AWS::DynamoDB::Table")
    assert list(tables) == ["GatewayTable"]
    props = tables["GatewayTable"]
    dynamodb = stack.client("dynamodb")
    # The template names no table: the local stack does, and it must be the only one
    assert stack.resources is not None
    name = stack.resources.tables["GatewayTable"]
    assert dynamodb.list_tables()["TableNames"] == [name]
    table = dynamodb.describe_table(TableName=name)["Table"]
    # Keys and attribute definitions as written
    assert table["KeySchema"] == props["KeySchema"]
    assert attribute_set(table["AttributeDefinitions"]) == attribute_set(props["AttributeDefinitions"])
    # On-demand billing
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert table.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    # Each global secondary index: name, keys, projection
    indexes = props["GlobalSecondaryIndexes"]
    expected_indexes = {index["IndexName"]: (index["KeySchema"], index["Projection"]) for index in indexes}
    actual_indexes = {
        index["IndexName"]: (
            index["KeySchema"],
            {k: v for k, v in index["Projection"].items() if k in ("ProjectionType", "NonKeyAttributes")},
        )
        for index in table.get("GlobalSecondaryIndexes", [])
    }
    assert actual_indexes == expected_indexes
    assert "conversation-index" in actual_indexes
    # TTL on the attribute the template names, enabled
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert flag(props["TimeToLiveSpecification"]["Enabled"])
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
    # Point-in-time recovery as the template asks
    backups = dynamodb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    pitr = backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"]
    wanted = flag(props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"])
    assert pitr == ("ENABLED" if wanted else "DISABLED")


def test_every_template_queue_exists_and_no_other(stack, template, queue_attributes):
    names = sorted(sub(props["QueueName"]) for props in resources(template, "AWS::SQS::Queue").values())
    urls = stack.client("sqs").list_queues().get("QueueUrls", [])
    assert sorted(url.rsplit("/", 1)[1] for url in urls) == names
    assert len(queue_attributes) >= 5


@pytest.mark.parametrize(
    "logical_id",
    [
        "DispatchQueue",
        "DispatchDeadLetterQueue",
        "NotifyQueue",
        "NotifyDeadLetterQueue",
        "ScheduleDeadLetterQueue",
    ],
)
def test_each_queue_has_the_templates_attributes(template, queue_attributes, logical_id):
    queues = resources(template, "AWS::SQS::Queue")
    assert logical_id in queues, "the template's queues changed: update this list"
    props = queues[logical_id]
    actual = queue_attributes[logical_id]
    # FIFO or standard, and content-based deduplication
    fifo = flag(props.get("FifoQueue", False))
    assert flag(actual.get("FifoQueue", "false")) is fifo
    assert sub(props["QueueName"]).endswith(".fifo") is fifo
    if fifo:
        assert flag(actual.get("ContentBasedDeduplication", "false")) is flag(
            props.get("ContentBasedDeduplication", False)
        )
        for key in ("DeduplicationScope", "FifoThroughputLimit"):
            if key in props:
                assert actual.get(key) == props[key], key
    else:
        assert "ContentBasedDeduplication" not in props
    # Timeouts and retention
    visibility = props.get("VisibilityTimeout", SQS_DEFAULT_VISIBILITY_TIMEOUT)
    assert int(actual["VisibilityTimeout"]) == int(visibility)
    assert int(actual["MessageRetentionPeriod"]) == int(
        props.get("MessageRetentionPeriod", SQS_DEFAULT_RETENTION_PERIOD)
    )
    # Redrive: to the right dead-letter queue, after the template's number of receives
    redrive = props.get("RedrivePolicy")
    if redrive is None:
        assert "RedrivePolicy" not in actual
        return
    policy = json.loads(actual["RedrivePolicy"])
    dead_letter = get_att_target(redrive["deadLetterTargetArn"])
    assert policy["deadLetterTargetArn"] == queue_attributes[dead_letter]["QueueArn"]
    assert int(policy["maxReceiveCount"]) == int(redrive["maxReceiveCount"])
    # A FIFO queue's dead-letter queue must be FIFO too (SQS refuses otherwise)
    assert flag(queue_attributes[dead_letter].get("FifoQueue", "false")) is fifo


def test_the_dispatch_and_notify_queues_dead_letter_as_designed(template):
    # The pairs themselves, so that a template edit that swaps them is noticed
    queues = resources(template, "AWS::SQS::Queue")
    assert get_att_target(queues["DispatchQueue"]["RedrivePolicy"]["deadLetterTargetArn"]) == (
        "DispatchDeadLetterQueue"
    )
    notify_dlq = queues["NotifyQueue"]["RedrivePolicy"]["deadLetterTargetArn"]
    assert get_att_target(notify_dlq) == "NotifyDeadLetterQueue"


def test_the_schedule_group_exists(stack, template):
    groups = resources(template, "AWS::Scheduler::ScheduleGroup")
    assert groups, "the template has no schedule group"
    scheduler = stack.client("scheduler")
    for props in groups.values():
        name = sub(props["Name"])
        assert scheduler.get_schedule_group(Name=name)["Name"] == name
    listed = {group["Name"] for group in scheduler.list_schedule_groups()["ScheduleGroups"]}
    assert {sub(props["Name"]) for props in groups.values()} <= listed


def test_the_functions_are_told_these_resources(stack, template, queue_attributes):
    # The environment the stack gives the functions names the resources checked above
    env = stack.env
    assert stack.resources is not None
    assert env["TABLE_NAME"] == stack.resources.tables["GatewayTable"]
    assert env["DISPATCH_QUEUE_URL"].endswith(
        "/" + sub(resources(template, "AWS::SQS::Queue")["DispatchQueue"]["QueueName"])
    )
    assert env["NOTIFY_QUEUE_URL"].endswith(
        "/" + sub(resources(template, "AWS::SQS::Queue")["NotifyQueue"]["QueueName"])
    )
    assert env["SCHEDULE_DLQ_ARN"] == queue_attributes["ScheduleDeadLetterQueue"]["QueueArn"]
    assert env["SCHEDULE_GROUP_NAME"] == sub(
        resources(template, "AWS::Scheduler::ScheduleGroup")["ScheduleGroup"]["Name"]
    )
