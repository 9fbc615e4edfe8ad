"""template.yaml is the single source of the AWS resources: these tests hold it to the design."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from sms_gateway_tools.template import (
    DEFAULT_TEMPLATE_PATH,
    CloudFormationLoader,
    FunctionDefinition,
    function_definitions,
    function_routes,
    load_template,
    match_route,
    queue_definitions,
    resolved,
    resources_of_type,
    schedule_group_names,
    table_definitions,
)

STACK = "sms-gateway-test"
REGION = "us-east-1"
FUNCTIONS = {
    "ApiFunction": "functions/api/",
    "WebhookFunction": "functions/webhook/",
    "DispatcherFunction": "functions/dispatcher/",
    "ScheduledDispatchFunction": "functions/scheduled_dispatch/",
    "NotifierFunction": "functions/notifier/",
    "SweeperFunction": "functions/sweeper/",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def functions(template: dict[str, Any]) -> dict[str, FunctionDefinition]:
    return {fn.logical_id: fn for fn in function_definitions(template)}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every policy statement anywhere in the template, with where it sits. IAM takes a policy's `Statement` as a
    list or as one statement on its own: both are found."""
    if isinstance(node, dict):
        if "Statement" in node:
            for statement in _as_list(node["Statement"]):
                yield path, statement
        for key, value in node.items():
            yield from _statements(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _statements(value, f"{path}[{index}]")


def _is_key_root_delegation(template: dict[str, Any], path: str, statement: dict[str, Any]) -> bool:
    """The standard KMS key policy statement that hands key administration to the account's IAM."""
    resource = template["Resources"].get(path.split("/")[1], {})
    principal = statement.get("Principal", {})
    return (
        resource.get("Type") == "AWS::KMS::Key"
        and path.endswith("/KeyPolicy")
        and isinstance(principal, dict)
        and ":root" in json.dumps(principal.get("AWS"))
    )


# --------------------------------------------------------------------------------------- shape


def test_template_loads_with_short_form_intrinsics(template: dict[str, Any]) -> None:
    # Given the repository's template.yaml
    # When it is loaded
    resources = template["Resources"]

    # Then short-form tags arrive in their long form
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    assert resources["DispatchQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DispatchDeadLetterQueue", "Arn"]
    }
    assert template["Globals"]["Function"]["Environment"]["Variables"]["TABLE_NAME"] == {"Ref": "GatewayTable"}
    assert resources["GatewayTable"]["Properties"]["DeletionProtectionEnabled"] == {"Fn::If": ["IsProd", True, False]}
    assert DEFAULT_TEMPLATE_PATH.name == "template.yaml"


def test_logical_ids_other_code_depends_on_exist(template: dict[str, Any]) -> None:
    # Given the logical ids the local stack, the docs and the tests name
    expected = {
        "HttpApi": "AWS::Serverless::HttpApi",
        "CoreLayer": "AWS::Serverless::LayerVersion",
        "GatewayTable": "AWS::DynamoDB::Table",
        "DispatchQueue": "AWS::SQS::Queue",
        "PriorityDispatchQueue": "AWS::SQS::Queue",
        "DispatchDeadLetterQueue": "AWS::SQS::Queue",
        "NotifyQueue": "AWS::SQS::Queue",
        "NotifyDeadLetterQueue": "AWS::SQS::Queue",
        "ScheduleDeadLetterQueue": "AWS::SQS::Queue",
        "ScheduleGroup": "AWS::Scheduler::ScheduleGroup",
        "SchedulerRole": "AWS::IAM::Role",
        "AlarmTopic": "AWS::SNS::Topic",
        "DispatchDeadLetterAlarm": "AWS::CloudWatch::Alarm",
        "NotifyDeadLetterAlarm": "AWS::CloudWatch::Alarm",
        "ScheduleDeadLetterAlarm": "AWS::CloudWatch::Alarm",
        **dict.fromkeys(FUNCTIONS, "AWS::Serverless::Function"),
    }

    # When the template's resources are listed
    types = {logical_id: resource["Type"] for logical_id, resource in template["Resources"].items()}

    # Then each one is there with its type
    assert {logical_id: types.get(logical_id) for logical_id in expected} == expected


def test_every_table_queue_and_group_has_a_definition(template: dict[str, Any]) -> None:
    # Given the resources of each kind in the template
    tables = [logical_id for logical_id, _ in resources_of_type(template, "AWS::DynamoDB::Table")]
    queues = [logical_id for logical_id, _ in resources_of_type(template, "AWS::SQS::Queue")]
    groups = list(resources_of_type(template, "AWS::Scheduler::ScheduleGroup"))

    # When the local definitions are derived
    table_ids = [table.logical_id for table in table_definitions(template, STACK)]
    queue_ids = [queue.logical_id for queue in queue_definitions(template, STACK)]
    group_names = schedule_group_names(template, STACK)

    # Then nothing is left out and names follow the stack name
    assert sorted(table_ids) == sorted(tables) == ["GatewayTable"]
    assert sorted(queue_ids) == sorted(queues)
    assert len(queues) == 6
    assert len(group_names) == len(groups) == 1
    assert group_names == [f"{STACK}-schedules"]


def test_queues_are_ordered_dead_letter_first(template: dict[str, Any]) -> None:
    # Given the queue definitions
    queues = queue_definitions(template, STACK)
    position = {queue.logical_id: index for index, queue in enumerate(queues)}

    # Then every queue comes after the dead-letter queue it redrives into
    redriving = [queue for queue in queues if queue.dead_letter_target]
    assert {queue.logical_id for queue in redriving} == {"DispatchQueue", "PriorityDispatchQueue", "NotifyQueue"}
    for queue in redriving:
        assert queue.dead_letter_target is not None
        assert position[queue.dead_letter_target] < position[queue.logical_id]


def test_functions_resolve_globals(functions: dict[str, FunctionDefinition]) -> None:
    # Given the function definitions with Globals applied
    # Then each function has its code directory, the common handler, python3.13 and the shared settings
    assert {logical_id: fn.code_uri for logical_id, fn in functions.items()} == FUNCTIONS
    for fn in functions.values():
        assert fn.handler == "app.handler"
        assert fn.runtime == "python3.13"
        assert {"TABLE_NAME", "DISPATCH_QUEUE_URL", "NOTIFY_QUEUE_URL", "POWERTOOLS_LOG_LEVEL"} <= set(fn.environment)
        assert fn.literal_environment["POWERTOOLS_SERVICE_NAME"] == "sms-gateway"
        assert fn.literal_environment["POWERTOOLS_METRICS_NAMESPACE"] == "SmsGateway"
    # And the self-reference and the API URL sit only on the functions that need them
    # (the api schedules batches for it; the sweeper releases through it a batch whose schedule was never made)
    assert [n for n, fn in functions.items() if "SCHEDULED_DISPATCH_FUNCTION_ARN" in fn.environment] == [
        "ApiFunction",
        "SweeperFunction",
    ]
    assert [n for n, fn in functions.items() if "CALLBACK_BASE_URL" in fn.environment] == ["DispatcherFunction"]
    # And API Gateway's 30 s integration limit is respected by the HTTP-facing functions
    assert functions["ApiFunction"].timeout < 30
    assert functions["WebhookFunction"].timeout < 30
    # And a send that holds its idempotency key longer than its lease is taken to have died: never a live one
    from sms_gateway.logic.idempotency import SEND_LEASE

    assert functions["ApiFunction"].timeout * 2 < SEND_LEASE.total_seconds()


def test_http_routes_match_the_design(functions: dict[str, FunctionDefinition]) -> None:
    # Then the API function serves the four dialects and the account API, the webhook function the callbacks
    assert set(functions["ApiFunction"].routes) == {
        ("POST", "/ng/v1/sendsms"),
        ("ANY", "/ng/v1/{proxy+}"),
        ("ANY", "/api/services/{proxy+}"),
        ("ANY", "/login"),
        ("ANY", "/login/{proxy+}"),
        ("ANY", "/sms"),
        ("ANY", "/sms/{proxy+}"),
        ("ANY", "/status"),
        ("ANY", "/status/{proxy+}"),
        ("GET", "/portal"),
        ("ANY", "/portal/{proxy+}"),
        ("ANY", "/v1/{proxy+}"),
    }
    assert set(functions["WebhookFunction"].routes) == {
        ("POST", "/callbacks/{provider}/dlr"),
        ("GET", "/callbacks/{provider}/dlr"),
        ("POST", "/callbacks/{provider}/inbound"),
    }
    for name in ("DispatcherFunction", "ScheduledDispatchFunction", "NotifierFunction", "SweeperFunction"):
        assert functions[name].routes == []


def test_traces_start_only_where_a_client_request_enters(template: dict[str, Any]) -> None:
    # Lambda samples an Active function at a fixed rate (1/s and 5%) whatever X-Ray's sampling rules say: the
    # per-message functions (one webhook invocation per DLR) must not start traces of their own
    modes = {
        name: (props.get("Tracing") or template["Globals"]["Function"]["Tracing"])
        for name, props in resources_of_type(template, "AWS::Serverless::Function")
    }
    assert modes == {name: "Active" if name == "ApiFunction" else "PassThrough" for name in FUNCTIONS}


def test_upstream_callbacks_reach_the_webhook_through_its_function_url(
    functions: dict[str, FunctionDefinition],
) -> None:
    template = load_template()
    # Then only the webhook function has a URL, public because each callback proves itself by its signature
    assert {name: fn.function_url_auth for name, fn in functions.items() if fn.function_url_auth} == {
        "WebhookFunction": "NONE"
    }
    # And the dispatcher gives upstreams that URL, not the HttpApi's (no per-request charge)
    assert functions["DispatcherFunction"].function_url_environment == {"CALLBACK_BASE_URL": "WebhookFunction"}
    # And operators find the URL to give providers in the stack's outputs
    url = template["Outputs"]["CallbackUrl"]["Value"]["Fn::Sub"]
    assert url[0] == "https://${Host}"
    function_url = {"Fn::GetAtt": ["WebhookFunctionUrl", "FunctionUrl"]}
    assert url[1]["Host"] == {"Fn::Select": [2, {"Fn::Split": ["/", function_url]}]}


def test_queue_consumers_report_partial_batch_failures(functions: dict[str, FunctionDefinition]) -> None:
    # Given the SQS event sources
    sources = {source.queue: (name, source) for name, fn in functions.items() for source in fn.sqs_events}

    # Then exactly the three work queues have consumers, each reporting item failures in batches of 10
    assert {queue: name for queue, (name, _) in sources.items()} == {
        "DispatchQueue": "DispatcherFunction",
        "PriorityDispatchQueue": "DispatcherFunction",
        "NotifyQueue": "NotifierFunction",
    }
    for _, source in sources.values():
        assert source.report_batch_item_failures
        assert source.batch_size == 10
    assert sources["NotifyQueue"][1].maximum_batching_window_seconds == 1
    # FIFO event sources do not support a batching window
    assert sources["DispatchQueue"][1].maximum_batching_window_seconds == 0
    assert sources["PriorityDispatchQueue"][1].maximum_batching_window_seconds == 0


def test_single_sends_have_dispatcher_slots_that_bulk_backlogs_cannot_hold(template: dict[str, Any]) -> None:
    # Given the dispatcher's two event sources: bulk batches and single sends
    events = template["Resources"]["DispatcherFunction"]["Properties"]["Events"]
    bulk, priority = events["Dispatch"]["Properties"], events["PriorityDispatch"]["Properties"]
    # Then each reads its own queue and has its own cap on concurrent invocations (a template parameter each)
    assert bulk["Queue"] == {"Fn::GetAtt": ["DispatchQueue", "Arn"]}
    assert priority["Queue"] == {"Fn::GetAtt": ["PriorityDispatchQueue", "Arn"]}
    assert bulk["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "DispatcherMaximumConcurrency"}
    assert priority["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "PriorityDispatcherMaximumConcurrency"}
    assert resolved(template, priority["ScalingConfig"]["MaximumConcurrency"]) == "5"
    assert template["Parameters"]["PriorityDispatcherMaximumConcurrency"]["MinValue"] == 2  # Lambda's smallest
    # And the priority queue is a FIFO queue like the dispatch queue, with the same visibility and redrive
    queues = template["Resources"]
    for name in ("FifoQueue", "VisibilityTimeout", "MessageRetentionPeriod", "RedrivePolicy", "DeduplicationScope"):
        assert queues["PriorityDispatchQueue"]["Properties"][name] == queues["DispatchQueue"]["Properties"][name]


def test_the_notifier_cannot_take_the_whole_accounts_lambda_concurrency(template: dict[str, Any]) -> None:
    # Given the notifier: one client's webhook that answers in 10 s (the read timeout) or blackholes its SYN holds a
    # slot 3-10 s per notification (x8 attempts), and a bulk send with delivery reports queues two per recipient
    notifier = template["Resources"]["NotifierFunction"]["Properties"]
    scaling = notifier["Events"]["Notify"]["Properties"].get("ScalingConfig") or {}
    # Then its event source bounds its concurrent invocations (a template parameter, 50 unless set), so a slow
    # client's backlog cannot scale it to the region's whole Lambda concurrency and throttle the API and the
    # upstream callbacks of every account
    assert resolved(template, scaling.get("MaximumConcurrency")) == "50"
    assert template["Parameters"]["NotifierMaximumConcurrency"]["MinValue"] == 2  # Lambda's smallest
    # And no function reserves concurrency: a reservation can fail the deploy on an account with a low quota
    assert not [
        logical_id
        for logical_id, properties in resources_of_type(template, "AWS::Serverless::Function")
        if "ReservedConcurrentExecutions" in properties
    ]


# --------------------------------------------------------------------------------------- moto


def test_table_definitions_create_the_table_in_dynamodb(template: dict[str, Any], aws: None) -> None:
    # Given the table definitions and an empty (mocked) account
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    (table,) = table_definitions(template, STACK)

    # When the local stack creates them the way the template says
    dynamodb.create_table(**table.create_kwargs)
    assert table.ttl_attribute is not None
    dynamodb.update_time_to_live(
        TableName=table.table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
    )
    if table.point_in_time_recovery:
        dynamodb.update_continuous_backups(
            TableName=table.table_name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )

    # Then the created table has the single-table keys, the conversation, message and sweep indexes, TTL and PITR
    described = dynamodb.describe_table(TableName=f"{STACK}-GatewayTable")["Table"]
    assert described["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {index["IndexName"]: index for index in described["GlobalSecondaryIndexes"]}
    assert sorted(indexes) == ["conversation-index", "message-index", "sweep-index"]
    assert indexes["conversation-index"]["KeySchema"] == [
        {"AttributeName": "conversation", "KeyType": "HASH"},
        {"AttributeName": "message_id", "KeyType": "RANGE"},
    ]
    assert indexes["conversation-index"]["Projection"]["ProjectionType"] == "INCLUDE"
    assert indexes["message-index"]["KeySchema"] == [{"AttributeName": "message_id", "KeyType": "HASH"}]
    assert indexes["message-index"]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    assert indexes["sweep-index"]["KeySchema"] == [
        {"AttributeName": "sweep_shard", "KeyType": "HASH"},
        {"AttributeName": "sweep_at", "KeyType": "RANGE"},
    ]
    assert indexes["sweep-index"]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    ttl = dynamodb.describe_time_to_live(TableName=table.table_name)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    backups = dynamodb.describe_continuous_backups(TableName=table.table_name)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_queue_definitions_create_queues_with_redrive_in_sqs(
    template: dict[str, Any], functions: dict[str, FunctionDefinition], aws: None
) -> None:
    # Given the queue definitions and an empty (mocked) account
    sqs = boto3.client("sqs", region_name=REGION)
    definitions = queue_definitions(template, STACK)

    # When they are created in order, each redrive pointing at the DLQ's real ARN
    arns: dict[str, str] = {}
    urls: dict[str, str] = {}
    for queue in definitions:
        attributes = dict(queue.attributes)
        if queue.dead_letter_target:
            attributes["RedrivePolicy"] = queue.redrive_policy(arns[queue.dead_letter_target])
        urls[queue.logical_id] = sqs.create_queue(QueueName=queue.queue_name, Attributes=attributes)["QueueUrl"]
        arns[queue.logical_id] = sqs.get_queue_attributes(QueueUrl=urls[queue.logical_id], AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]

    # Then the created queues carry what the template says
    def attributes_of(logical_id: str) -> dict[str, str]:
        return sqs.get_queue_attributes(QueueUrl=urls[logical_id], AttributeNames=["All"])["Attributes"]

    dispatch, notify = attributes_of("DispatchQueue"), attributes_of("NotifyQueue")
    assert urls["DispatchQueue"].endswith(f"{STACK}-dispatch.fifo")
    assert urls["PriorityDispatchQueue"].endswith(f"{STACK}-priority-dispatch.fifo")
    priority = attributes_of("PriorityDispatchQueue")
    assert {k: v for k, v in priority.items() if k in dispatch and "Arn" not in k and "Timestamp" not in k} == {
        k: v for k, v in dispatch.items() if k in priority and "Arn" not in k and "Timestamp" not in k
    }
    assert dispatch["FifoQueue"] == "true"
    assert dispatch["ContentBasedDeduplication"] == "false"
    assert dispatch["DeduplicationScope"] == "messageGroup"
    assert dispatch["FifoThroughputLimit"] == "perMessageGroupId"
    assert attributes_of("DispatchDeadLetterQueue")["FifoQueue"] == "true"
    assert "FifoQueue" not in notify or notify["FifoQueue"] == "false"

    assert json.loads(dispatch["RedrivePolicy"]) == {
        "deadLetterTargetArn": arns["DispatchDeadLetterQueue"],
        "maxReceiveCount": 100,
    }
    assert json.loads(notify["RedrivePolicy"]) == {
        "deadLetterTargetArn": arns["NotifyDeadLetterQueue"],
        "maxReceiveCount": 12,
    }
    for dlq in ("DispatchDeadLetterQueue", "NotifyDeadLetterQueue", "ScheduleDeadLetterQueue"):
        assert attributes_of(dlq)["MessageRetentionPeriod"] == str(14 * 24 * 3600)

    # And no message becomes visible again while its consumer may still be working on it
    consumers = {source.queue: fn for fn in functions.values() for source in fn.sqs_events}
    for logical_id, fn in consumers.items():
        assert int(attributes_of(logical_id)["VisibilityTimeout"]) >= 6 * fn.timeout, logical_id


def test_redrive_policy_needs_a_dead_letter_queue(template: dict[str, Any]) -> None:
    # Given a queue without a dead-letter target
    dlq = next(queue for queue in queue_definitions(template, STACK) if queue.dead_letter_target is None)

    # Then asking for its redrive policy is an error rather than a bogus policy
    with pytest.raises(ValueError, match="no dead-letter queue"):
        dlq.redrive_policy("arn:aws:sqs:us-east-1:123456789012:nowhere")


def test_the_dispatchers_concurrency_cap_is_a_parameter(template: dict[str, Any]) -> None:
    # Given the dispatcher: a record a rate limit holds back waits in its invocation (up to about 44 s), so each
    # account with a rate-limited backlog can hold one invocation (docs/dispatch.md, "A backlog longer than an
    # invocation")
    dispatcher = template["Resources"]["DispatcherFunction"]["Properties"]
    scaling = dispatcher["Events"]["Dispatch"]["Properties"].get("ScalingConfig") or {}
    # Then its event source's cap is a template parameter, 10 unless set (no longer a fixed 2, which two such
    # backlogs filled), that an operator can raise: the rate limits are shared DynamoDB counters, not per container
    assert scaling.get("MaximumConcurrency") == {"Ref": "DispatcherMaximumConcurrency"}
    assert resolved(template, scaling.get("MaximumConcurrency")) == "10"
    parameter = template["Parameters"]["DispatcherMaximumConcurrency"]
    assert (parameter["Type"], parameter["MinValue"], parameter["MaxValue"]) == ("Number", 2, 1000)  # Lambda's range
    # And the local stack still runs at most 2 (a queue consumer runs one invocation at a time there)
    from sms_gateway_tools.localstack.stack import _maximum_concurrency

    assert _maximum_concurrency(template, "DispatcherFunction", "DispatchQueue") == 2


# --------------------------------------------------------------------------------------- operations


def test_every_function_logs_to_its_own_group_with_retention(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for logical_id in FUNCTIONS:
        # Given a function
        props = resources[logical_id]["Properties"]
        log_group_id = logical_id.removesuffix("Function") + "LogGroup"

        # Then it writes JSON logs to its own log group ...
        assert props["LoggingConfig"] == {"LogGroup": {"Ref": log_group_id}, "LogFormat": "JSON"}
        # ... which exists, expires per stage, and is named after the function's fixed name
        group = resources[log_group_id]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert group["Properties"]["RetentionInDays"] == {
            "Fn::FindInMap": ["StageConfig", {"Ref": "Stage"}, "LogRetentionDays"]
        }
        function_name = props["FunctionName"]["Fn::Sub"]
        assert group["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/{function_name}"}
    assert template["Mappings"]["StageConfig"]["dev"]["LogRetentionDays"] == 14
    assert template["Mappings"]["StageConfig"]["prod"]["LogRetentionDays"] == 90


def test_runtime_is_python313_on_arm64_everywhere(template: dict[str, Any]) -> None:
    # Given the function globals and the layer
    function_globals = template["Globals"]["Function"]
    layer = template["Resources"]["CoreLayer"]

    # Then functions and layer target the same runtime and architecture
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    assert function_globals["Layers"] == [{"Ref": "CoreLayer"}]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    # And no function overrides them
    for _, props in resources_of_type(template, "AWS::Serverless::Function"):
        assert props.get("Runtime", "python3.13") == "python3.13"
        assert props.get("Architectures", ["arm64"]) == ["arm64"]


def test_no_policy_statement_grants_a_wildcard_action(template: dict[str, Any]) -> None:
    # Given every policy statement in the template
    statements = list(_statements(template["Resources"]))
    assert len(statements) > 10  # the walk really finds them

    # Then none of them allows an action with a wildcard (except KMS's own delegation to IAM)
    offending = []
    for path, statement in statements:
        actions = statement.get("Action", [])
        for action in [actions] if isinstance(actions, str) else actions:
            if "*" in action and not _is_key_root_delegation(template, path, statement):
                offending.append((path, action))
    assert offending == []


def test_sam_policy_templates_are_scoped_to_one_resource(template: dict[str, Any]) -> None:
    # Given the SAM policy templates the functions use
    scoped = {
        "DynamoDBCrudPolicy": {"TableName": {"Ref": "GatewayTable"}},
    }
    for _, props in resources_of_type(template, "AWS::Serverless::Function"):
        for policy in props["Policies"]:
            # Then each template is one we know, pointed at the gateway's own resource
            if "Statement" not in policy:
                ((name, arguments),) = policy.items()
                assert arguments == scoped[name], name


def test_scheduler_role_can_only_invoke_scheduled_dispatch(template: dict[str, Any]) -> None:
    # Given the role EventBridge Scheduler assumes
    role = template["Resources"]["SchedulerRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    (policy,) = role["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}

    # Then only the scheduler service of this account can assume it ...
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    # ... and it may invoke the scheduled dispatch function and write to the schedule DLQ, nothing else
    assert set(statements) == {"InvokeScheduledDispatch", "DeadLetter"}
    assert statements["InvokeScheduledDispatch"]["Action"] == "lambda:InvokeFunction"
    assert statements["InvokeScheduledDispatch"]["Resource"]["Fn::Sub"].endswith(
        ":function:${AWS::StackName}-scheduled-dispatch"
    )
    assert template["Resources"]["ScheduledDispatchFunction"]["Properties"]["FunctionName"] == {
        "Fn::Sub": "${AWS::StackName}-scheduled-dispatch"
    }
    assert statements["DeadLetter"]["Resource"] == {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}


def test_every_dead_letter_queue_has_an_alarm(template: dict[str, Any]) -> None:
    # Given the queues other queues redrive into, and the schedule DLQ
    dead_letter_queues = {q.dead_letter_target for q in queue_definitions(template, STACK) if q.dead_letter_target}
    dead_letter_queues.add("ScheduleDeadLetterQueue")

    # When the alarms are listed by the queue they watch
    watched = {}
    for logical_id, props in resources_of_type(template, "AWS::CloudWatch::Alarm"):
        # The operations alarms (queue age, error and failure rates) are tested in test_operations_template.py
        if props.get("MetricName") != "ApproximateNumberOfMessagesVisible":
            continue
        (dimension,) = props["Dimensions"]
        watched[dimension["Value"]["Fn::GetAtt"][0]] = (logical_id, props)

    # Then each DLQ raises an alarm to the alarm topic as soon as one message lands in it
    assert set(watched) == dead_letter_queues
    for _, props in watched.values():
        assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert props["Threshold"] == 1
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_outputs_name_what_operators_need(template: dict[str, Any]) -> None:
    assert set(template["Outputs"]) >= {
        "ApiUrl",
        "TableName",
        "DispatchQueueUrl",
        "PriorityDispatchQueueUrl",
        "NotifyQueueUrl",
        "DispatchDeadLetterQueueUrl",
        "NotifyDeadLetterQueueUrl",
        "ScheduleGroupName",
        "AlarmTopicArn",
    }


# --------------------------------------------------------------------------------------- routing

ROUTES = [
    ("ApiFunction", "POST", "/ng/v1/sendsms"),
    ("ApiFunction", "ANY", "/ng/v1/{proxy+}"),
    ("ApiFunction", "GET", "/login"),
    ("ApiFunction", "ANY", "/v1/{proxy+}"),
    ("ApiFunction", "GET", "/v1/accounts/{account_id}"),
    ("ApiFunction", "ANY", "/v1/accounts/me"),
    ("WebhookFunction", "POST", "/callbacks/{provider}/dlr"),
    ("WebhookFunction", "GET", "/callbacks/{provider}/dlr"),
    ("OtherFunction", "GET", "/callbacks/kannel/dlr"),
    ("CatchAll", "ANY", "/callbacks/{proxy+}"),
]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # an exact path beats a greedy one
        ("POST", "/ng/v1/sendsms", ("ApiFunction", "POST /ng/v1/sendsms", {})),
        ("GET", "/ng/v1/sendsms", ("ApiFunction", "ANY /ng/v1/{proxy+}", {"proxy": "sendsms"})),
        ("DELETE", "/ng/v1/batches/42", ("ApiFunction", "ANY /ng/v1/{proxy+}", {"proxy": "batches/42"})),
        # an exact path beats a {param}, which beats a greedy path
        ("GET", "/callbacks/kannel/dlr", ("OtherFunction", "GET /callbacks/kannel/dlr", {})),
        (
            "GET",
            "/callbacks/jasmin/dlr",
            ("WebhookFunction", "GET /callbacks/{provider}/dlr", {"provider": "jasmin"}),
        ),
        ("PUT", "/callbacks/jasmin/dlr", ("CatchAll", "ANY /callbacks/{proxy+}", {"proxy": "jasmin/dlr"})),
        (
            "POST",
            "/callbacks/twilio/dlr",
            ("WebhookFunction", "POST /callbacks/{provider}/dlr", {"provider": "twilio"}),
        ),
        # a literal segment beats a {param} even when a later segment is less specific
        ("GET", "/v1/accounts/me", ("ApiFunction", "ANY /v1/accounts/me", {})),
        (
            "GET",
            "/v1/accounts/acc1",
            ("ApiFunction", "GET /v1/accounts/{account_id}", {"account_id": "acc1"}),
        ),
        ("POST", "/v1/accounts/acc1", ("ApiFunction", "ANY /v1/{proxy+}", {"proxy": "accounts/acc1"})),
        # query strings are not part of the path; methods are case-insensitive
        ("get", "/login?username=a&password=b", ("ApiFunction", "GET /login", {})),
        # path parameters arrive decoded
        (
            "GET",
            "/callbacks/a%20b/dlr",
            ("WebhookFunction", "GET /callbacks/{provider}/dlr", {"provider": "a b"}),
        ),
    ],
)
def test_match_route_picks_the_most_specific_route(
    method: str, path: str, expected: tuple[str, str, dict[str, str]]
) -> None:
    assert match_route(ROUTES, method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/login"),  # GET only
        ("GET", "/nowhere"),
        ("GET", "/ng/v1"),  # a greedy variable needs at least one segment
        ("GET", "/ng/v1/"),
        ("GET", "/login/extra"),
    ],
)
def test_match_route_without_a_match_is_none(method: str, path: str) -> None:
    assert match_route(ROUTES, method, path) is None


def test_an_empty_segment_is_not_a_path_parameter() -> None:
    # Given only the webhook's parameterised route
    routes = [("WebhookFunction", "GET", "/callbacks/{provider}/dlr")]

    # Then a path with an empty provider segment does not match it
    assert match_route(routes, "GET", "/callbacks//dlr") is None
    assert match_route(routes, "GET", "/callbacks/x/dlr") is not None


def test_default_route_catches_only_what_nothing_else_matches() -> None:
    # Given a $default route next to a specific one
    routes = [("Fallback", "ANY", "$default"), ("ApiFunction", "GET", "/login")]

    # Then the specific route wins where it matches and $default takes the rest
    assert match_route(routes, "GET", "/login") == ("ApiFunction", "GET /login", {})
    assert match_route(routes, "POST", "/anything/else") == ("Fallback", "$default", {})


def test_template_routes_dispatch_to_the_right_function(functions: dict[str, FunctionDefinition]) -> None:
    # Given the routes of the real template
    routes = function_routes(list(functions.values()))

    # Then requests of each dialect reach the function and route key the design names
    assert match_route(routes, "POST", "/ng/v1/sendsms") == ("ApiFunction", "POST /ng/v1/sendsms", {})
    assert match_route(routes, "GET", "/api/services/sendsms") == (
        "ApiFunction",
        "ANY /api/services/{proxy+}",
        {"proxy": "sendsms"},
    )
    assert match_route(routes, "POST", "/sms") == ("ApiFunction", "ANY /sms", {})
    assert match_route(routes, "DELETE", "/sms/123") == ("ApiFunction", "ANY /sms/{proxy+}", {"proxy": "123"})
    assert match_route(routes, "GET", "/status") == ("ApiFunction", "ANY /status", {})
    # And a session-key path asked with a method it does not take still reaches the api, which answers 405 in the
    # family's shape (API Gateway's own 404 is in no dialect's shape)
    assert match_route(routes, "GET", "/sms") == ("ApiFunction", "ANY /sms", {})
    assert match_route(routes, "POST", "/login") == ("ApiFunction", "ANY /login", {})
    assert match_route(routes, "GET", "/callbacks/kannel/dlr") == (
        "WebhookFunction",
        "GET /callbacks/{provider}/dlr",
        {"provider": "kannel"},
    )
    assert match_route(routes, "GET", "/callbacks/kannel/inbound") is None


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_every_path_of_a_dialect_reaches_the_api_so_its_errors_are_in_the_dialects_shape(
    functions: dict[str, FunctionDefinition], method: str
) -> None:
    from sms_gateway.dialects.api import DIALECTS

    # Given the routes of the real template, and a path under each prefix the api function renders errors for
    routes = function_routes(list(functions.values()))
    for prefix, _, dialect in DIALECTS:
        path = f"{prefix}/no-such-thing"
        # Then the request reaches the api function, which answers 404 or 405 as its dialect writes errors: a
        # session-key client typing /status/credits reads {"result": "KO", "error": ...}, not API Gateway's
        # {"message": "Not Found"}, which is in no dialect's shape
        found = match_route(routes, method, path)
        assert found is not None and found[0] == "ApiFunction", (method, path, dialect)


# --------------------------------------------------------------------------------------- linters


def test_cfn_lint_passes() -> None:
    # Given cfn-lint installed next to the running interpreter
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    if not cfn_lint.exists():
        found = shutil.which("cfn-lint")
        if found is None:
            pytest.skip("cfn-lint is not installed")
        cfn_lint = Path(found)

    # When it lints the template
    result = subprocess.run(
        [str(cfn_lint), str(DEFAULT_TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
    )

    # Then it reports nothing
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sweeper_runs_on_a_rate_rule_the_local_stack_can_fire(functions: dict[str, FunctionDefinition]) -> None:
    from sms_gateway_tools.template import rate_seconds

    # Given the template's Schedule events, Then only the sweeper has one, a rate the local stack reads
    assert {name: fn.schedule_events for name, fn in functions.items() if fn.schedule_events} == {
        "SweeperFunction": ["rate(2 minutes)"]
    }
    assert [rate_seconds(e) for e in ("rate(2 minutes)", "rate(1 minute)", "rate(1 hour)", "rate(3 days)")] == [
        120,
        60,
        3600,
        259200,
    ]
    assert rate_seconds("cron(0 12 * * ? *)") is None


def test_the_sweepers_writes_are_bound_to_inbound_sms_and_messages(template: dict[str, Any]) -> None:
    # Given the sweeper's policy: it only claims and clears inbound SMS (INBOX#<account>) and messages whose report
    # it announces (MSGS#<account>#<batch>)
    [policy] = template["Resources"]["SweeperFunction"]["Properties"]["Policies"]
    [update, batches] = [s for s in policy["Statement"] if "dynamodb:UpdateItem" in str(s["Action"])]
    # Then its UpdateItem reaches only those partitions, not every item of the table: a bug or a compromised sweeper
    # could otherwise rewrite an account's credits, credentials or the route table (found by a review of 2026-12-06)
    leading = (update.get("Condition") or {}).get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys")
    assert leading == ["INBOX#*", "MSGS#*"], update
    # And in the account partition, where it claims scheduled batches whose schedule was never made, only the
    # attributes of that claim, returning nothing: never the account's credits
    condition = batches["Condition"]
    assert condition["ForAllValues:StringLike"] == {"dynamodb:LeadingKeys": ["ACC#*"]}, batches
    assert condition["ForAllValues:StringEquals"] == {
        "dynamodb:Attributes": ["pk", "sk", "status", "sweep_shard", "sweep_at"]
    }
    assert condition["StringEqualsIfExists"] == {"dynamodb:ReturnValues": ["NONE"]}
    # ... which are the partitions its adapter writes
    from sms_gateway.adapters.dynamodb import messages_pk
    from sms_gateway.adapters.dynamodb_inbox import inbox_pk

    assert inbox_pk("7").startswith("INBOX#") and messages_pk("7", 1).startswith("MSGS#")


def test_lambda_keeps_the_log_level_each_stage_asks_for(template: dict[str, Any], monkeypatch) -> None:
    # Given Powertools' Logger, which takes Lambda's own application log level (AWS_LAMBDA_LOG_LEVEL, set by Lambda
    # from LoggingConfig.ApplicationLogLevel: INFO when a JSON-format function does not set it) over
    # POWERTOOLS_LOG_LEVEL
    import logging

    from aws_lambda_powertools import Logger

    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", "INFO")
    assert Logger(service="review-log-level").log_level == logging.INFO
    # Then every function writes JSON logs (so Lambda's level filter applies) at the stage's level: the one
    # POWERTOOLS_LOG_LEVEL names (dev DEBUG: docs/template.md, docs/dispatch.md "What a record logs")
    stage_level = {"Fn::FindInMap": ["StageConfig", {"Ref": "Stage"}, "LogLevel"]}
    assert template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_LOG_LEVEL"] == stage_level
    for name, props in resources_of_type(template, "AWS::Serverless::Function"):
        logging_config = {**(template["Globals"]["Function"].get("LoggingConfig") or {}), **props["LoggingConfig"]}
        assert logging_config["LogFormat"] == "JSON", name
        assert logging_config.get("ApplicationLogLevel") == stage_level, name
    # And each stage's level is one both Lambda's ApplicationLogLevel and Powertools' POWERTOOLS_LOG_LEVEL take
    # (Lambda also takes TRACE, which Python's logging does not know)
    for stage, config in template["Mappings"]["StageConfig"].items():
        assert config["LogLevel"] in ("DEBUG", "INFO", "WARN", "ERROR", "FATAL"), stage
    assert template["Mappings"]["StageConfig"]["dev"]["LogLevel"] == "DEBUG"


# Each function's row of docs/template.md's IAM table, and the template statements it must name.
def _iam_rows() -> dict[str, str]:
    text = (DEFAULT_TEMPLATE_PATH.parent / "docs" / "template.md").read_text()
    section = text.split("## IAM", 1)[1].split("Choices worth knowing", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] and cells[0] not in ("function", "---"):
            rows[cells[0]] = cells[1]
    return rows


def test_the_documented_iam_table_names_every_grant_of_each_function(template: dict[str, Any]) -> None:
    # Given the documented extra permissions of each function (docs/template.md, "IAM")
    rows = _iam_rows()
    documented = {
        "ApiFunction": rows["api"],
        "WebhookFunction": rows["webhook"],
        "DispatcherFunction": rows["dispatcher"],
        "ScheduledDispatchFunction": rows["scheduled_dispatch"],
        "NotifierFunction": rows["notifier"],
        "SweeperFunction": rows["sweeper"],
    }
    # Then each statement the template grants a function beyond DynamoDBCrudPolicy names its actions and the
    # resource it is on in that function's row, so an operator auditing IAM from the docs sees every grant
    assert set(documented) == {name for name, _ in resources_of_type(template, "AWS::Serverless::Function")}
    missing = []
    for name, row in documented.items():
        for action, target in sorted(_grants_of(template, name), key=str):
            # ("SSM read as above" names the webhook's ssm:GetParameter grant)
            named = action.split(":", 1)[1] in row or (action.startswith("ssm:") and "SSM read" in row)
            if not named or (target and target not in row):
                missing.append((name, action, target))
    assert missing == [], missing


def _grants_of(template: dict[str, Any], function: str) -> set[tuple[str, str | None]]:
    """(action, logical id of the resource or None for a built ARN) of each statement of the function's policies."""
    grants = set()
    for policy in template["Resources"][function]["Properties"]["Policies"]:
        for statement in _as_list(policy.get("Statement", [])):
            for resource in _as_list(statement["Resource"]):
                named = isinstance(resource, dict)
                target = (resource.get("Fn::GetAtt") or [resource.get("Ref")])[0] if named else None
                grants.update((action, target) for action in _as_list(statement["Action"]))
    return grants


def test_no_function_is_granted_a_call_its_code_never_makes(template: dict[str, Any]) -> None:
    # Given the calls each function's code makes: the dispatcher hands records back to DispatchQueue with
    # ChangeMessageVisibility only (consumers._return_records, its backoff) and never sends to it; the api's scheduler
    # adapter creates and deletes schedules (adapters/scheduler.py) and never reads one
    dispatcher, api = _grants_of(template, "DispatcherFunction"), _grants_of(template, "ApiFunction")
    # Then neither holds a grant for what it never calls
    assert ("sqs:SendMessage", "DispatchQueue") not in dispatcher
    assert ("sqs:ChangeMessageVisibility", "DispatchQueue") in dispatcher
    assert not [action for action, _ in api if action == "scheduler:GetSchedule"]
    assert {"scheduler:CreateSchedule", "scheduler:DeleteSchedule"} <= {action for action, _ in api}


# --------------------------------------------------------------------------------------- upgrades and names


def _global_secondary_indexes(template: dict[str, Any]) -> dict[str, str]:
    """Each GSI of the gateway table by name, with what CloudFormation cannot change in place (keys, projection)."""
    ((_, table),) = resources_of_type(template, "AWS::DynamoDB::Table")
    return _indexes_of_table(table)


def _indexes_of_table(table: dict[str, Any]) -> dict[str, str]:
    return {
        index["IndexName"]: json.dumps([index["KeySchema"], index["Projection"]], sort_keys=True)
        for index in table.get("GlobalSecondaryIndexes", [])
    }


def _global_secondary_index_changes(before: dict[str, str], after: dict[str, str]) -> int:
    """How many GSI creates and deletes an update from one table to the other takes (a changed one is both)."""
    changed = sum(before[name] != after[name] for name in before.keys() & after.keys())
    return len(before.keys() ^ after.keys()) + 2 * changed


def _table_indexes_of(text: str) -> dict[str, str]:
    """The GSIs of a template's table, parsed from the table's resource alone when it can be found: the whole
    template takes 0.1 s to parse, which every version of it in the history would make seconds."""
    block = re.search(r"^  \w+:\n    Type: AWS::DynamoDB::Table\n(?:(?: {4}.*|[ \t]*)\n)*", text, re.MULTILINE)
    document = yaml.load(f"Resources:\n{block.group(0)}" if block else text, Loader=CloudFormationLoader)
    return _global_secondary_indexes(document)


def _git(root: Path, *args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(
        ["git", "-C", str(root), *args], input=stdin, capture_output=True, check=True, timeout=30
    ).stdout


def _template_history(root: Path) -> dict[str, str]:
    """Each committed template.yaml by its commit's hash (7 digits, as the runbook writes them), newest first;
    skips the test where the clone has no history to read (no git, not a repository, or a shallow clone)."""
    try:
        if _git(root, "rev-parse", "--is-shallow-repository").strip() != b"false":
            pytest.skip("a shallow clone: no earlier template.yaml to upgrade from")
        commits = _git(root, "log", "--format=%H", "--", "template.yaml").split()
        # One git process reads every version (a `git show` each would start dozens)
        blobs = _git(root, "cat-file", "--batch", stdin=b"".join(commit + b":template.yaml\n" for commit in commits))
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no git history of template.yaml here")
    texts: dict[str, str] = {}
    at = 0
    for commit in commits:
        header_end = blobs.index(b"\n", at)
        size = int(blobs[at:header_end].split()[2])
        texts[commit[:7].decode()] = blobs[header_end + 1 : header_end + 1 + size].decode("utf-8")
        at = header_end + 1 + size + 1
    return texts


# The templates docs/runbook.md ("Upgrading a stack deployed before 459f801") takes to this one a deploy at a time:
# each needs more than one GSI change. Every other template in the history must upgrade in one deploy.
_UPGRADED_IN_STEPS = ("ee3c028", "fdcac1a", "6021199", "fde7661", "0da6ac4")


def test_every_earlier_template_upgrades_to_this_one_in_one_deploy(template: dict[str, Any]) -> None:
    # Given every version of template.yaml in the repository's history (an operator's stack runs one of them)
    root = DEFAULT_TEMPLATE_PATH.parent
    indexes = {short: _table_indexes_of(text) for short, text in _template_history(root).items()}
    current = _global_secondary_indexes(template)

    # When each is upgraded to this template by one `sam deploy`
    blocked = {
        short: changes
        for short, before in indexes.items()
        if (changes := _global_secondary_index_changes(before, current)) > 1
    }

    # Then CloudFormation can apply it: one GSI created or deleted per table update ("Cannot perform more than one
    # GSI creation or deletion in a single update"), or the update fails and rolls back; the runbook walks the rest
    unwalked = {short: changes for short, changes in blocked.items() if short not in _UPGRADED_IN_STEPS}
    assert unwalked == {}, f"stacks of these templates cannot upgrade in one deploy: {unwalked}"
    assert set(_UPGRADED_IN_STEPS) <= blocked.keys(), "the runbook walks a template that upgrades in one deploy"

    # And the runbook names each and its steps each change one index: fdcac1a first from ee3c028; from the other
    # four, 459f801 with the runbook's upstream-index put back, then 459f801 (then this release: checked above)
    runbook = (root / "docs" / "runbook.md").read_text(encoding="utf-8")
    heading = "### Upgrading a stack deployed before 459f801"
    assert heading in runbook, "docs/runbook.md does not say how a stack of these templates is upgraded"
    section = runbook.split(heading, 1)[1].split("\n#", 1)[0]
    assert all(short in section for short in _UPGRADED_IN_STEPS), section
    put_back = _indexes_of_table(yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0]))
    step_1 = indexes["459f801"] | put_back
    assert _global_secondary_index_changes(indexes["ee3c028"], indexes["fdcac1a"]) == 1
    assert all(indexes[short] == indexes["0da6ac4"] for short in ("fdcac1a", "6021199", "fde7661"))
    assert _global_secondary_index_changes(indexes["0da6ac4"], step_1) == 1
    assert _global_secondary_index_changes(step_1, indexes["459f801"]) == 1


# CloudFormation takes stack names up to 128 characters; AWS limits the names the template builds from it.
_NAME_LIMITS = {
    ("AWS::Serverless::Function", "FunctionName"): 64,
    ("AWS::SQS::Queue", "QueueName"): 80,
    ("AWS::Scheduler::ScheduleGroup", "Name"): 64,
    ("AWS::Serverless::LayerVersion", "LayerName"): 140,
    ("AWS::Logs::LogGroup", "LogGroupName"): 512,
    ("AWS::CloudWatch::Dashboard", "DashboardName"): 255,
}


def test_every_stack_name_the_docs_allow_gives_names_aws_accepts(template: dict[str, Any]) -> None:
    # Given the longest stack name the deploy docs allow (CloudFormation's 128 unless they state a shorter one)
    # (README.md and docs/runbook.md each say how to deploy: the longer either allows)
    allowed = []
    for doc in ("README.md", "docs/runbook.md"):
        stated = re.search(
            r"stack name[^.]*?at most (\d+) characters", (DEFAULT_TEMPLATE_PATH.parent / doc).read_text()
        )
        allowed.append(int(stated.group(1)) if stated else 128)
    stack_name = "s" * max(allowed)

    # When the template's fixed names are built from it
    too_long = []
    for (resource_type, prop), limit in _NAME_LIMITS.items():
        for logical_id, props in resources_of_type(template, resource_type):
            value = props.get(prop)
            if not isinstance(value, dict) or "Fn::Sub" not in value:
                continue
            name = value["Fn::Sub"].replace("${AWS::StackName}", stack_name)
            if len(name) > limit:
                too_long.append((logical_id, prop, len(name), limit))

    # Then each fits AWS's limit, so the first deploy creates them
    assert too_long == []


def test_every_queue_pins_the_message_size_the_code_is_built_for(template: dict[str, Any]) -> None:
    from sms_gateway.adapters.sqs import SEND_BATCH_BYTES

    # Given the code, which sizes what it queues for SQS's classic 256 KiB (a SendMessageBatch's bytes, the longest
    # inbound SMS's notification, about 235 KB, logic/inbound.py), and a queue whose template names no size, which SQS
    # makes 256 KiB or 1 MiB by when it was created (moto, and so the local stack and every test: 1 MiB)
    queues = {
        logical_id: resource.get("Properties", {})
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::SQS::Queue"
    }
    # Then every queue names the size the code is built for, so a deployed stack, the local stack and the tests
    # refuse the same messages (a dead-letter queue takes what its queue held, with the reason attributes)
    assert SEND_BATCH_BYTES == 262_144
    assert {logical_id: props.get("MaximumMessageSize") for logical_id, props in queues.items()} == dict.fromkeys(
        queues, SEND_BATCH_BYTES
    )
