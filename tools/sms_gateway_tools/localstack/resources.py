"""The stack's data resources in moto, created from template.yaml (via `sms_gateway_tools.template`),
and the environment the functions get."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sms_gateway_tools import template as tpl
from sms_gateway_tools.localstack.lambdas import ACCOUNT_ID, REGION, function_arn

logger = logging.getLogger("sms_gateway_tools.localstack.resources")

STAGE = "local"
UPSTREAM_NAME = "simulator"
UPSTREAM_PARAMETER_PREFIX = f"/sms-gateway/{STAGE}/upstreams/"
# The services whose resources the local stack makes from the template (and the simulator's parameter).
STACK_SERVICES = ("dynamodb", "sqs", "scheduler", "ssm", "kms")
# Client webhook retries locally: 8 attempts within about 9 minutes rather than 24 hours (docs/local-stack.md).
LOCAL_NOTIFY_RETRY_DELAYS = "2,5,10,30,60,120,300"


@dataclass
class Resources:
    tables: dict[str, str] = field(default_factory=dict)  # logical id -> table name
    queue_urls: dict[str, str] = field(default_factory=dict)  # logical id -> queue URL
    queue_arns: dict[str, str] = field(default_factory=dict)  # logical id -> queue ARN
    schedule_groups: list[str] = field(default_factory=list)
    kms_keys: dict[str, str] = field(default_factory=dict)  # logical id -> key ARN


def aws_clients(endpoint: str | None, services: Iterable[str]) -> dict[str, Any]:
    """boto3 clients with fake credentials: for `endpoint` (moto server), or for whatever os.environ and
    an active `mock_aws` say when `endpoint` is None."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (moto's fake credentials)
        region_name=REGION,
    )
    if endpoint is None:
        return {service: session.client(service) for service in services}  # type: ignore[call-overload]
    return {service: session.client(service, endpoint_url=endpoint) for service in services}  # type: ignore[call-overload]


def function_names(template: Mapping[str, Any], stack_name: str) -> dict[str, str]:
    """Logical id -> deployed function name: the template's FunctionName (a literal or a `!Sub` of
    `${AWS::StackName}`), or `<stack>-<logical id>` as CloudFormation would generate it."""
    names: dict[str, str] = {}
    resources = template.get("Resources") or {}
    for fn in tpl.function_definitions(template):
        given = ((resources.get(fn.logical_id) or {}).get("Properties") or {}).get("FunctionName")
        if isinstance(given, dict) and isinstance(given.get("Fn::Sub"), str):
            given = given["Fn::Sub"].replace("${AWS::StackName}", stack_name)
        valid = isinstance(given, str) and "${" not in given
        names[fn.logical_id] = str(given) if valid else f"{stack_name}-{fn.logical_id}"
    return names


def create_stack_resources(clients: Mapping[str, Any], template: Mapping[str, Any], stack_name: str) -> Resources:
    """Tables (with TTL and PITR), DLQs then queues (with their redrive policies), schedule groups, KMS keys."""
    resources = Resources()
    dynamodb, sqs, scheduler = clients["dynamodb"], clients["sqs"], clients["scheduler"]

    for table in tpl.table_definitions(template, stack_name):
        kwargs = dict(table.create_kwargs)
        dynamodb.create_table(**kwargs)
        name = kwargs["TableName"]
        if table.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
            )
        if table.point_in_time_recovery:
            dynamodb.update_continuous_backups(
                TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
            )
        resources.tables[table.logical_id] = name

    for queue in tpl.queue_definitions(template, stack_name):
        attributes = dict(queue.attributes)
        if queue.dead_letter_target:
            attributes["RedrivePolicy"] = queue.redrive_policy(resources.queue_arns[queue.dead_letter_target])
        url = sqs.create_queue(QueueName=queue.queue_name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        resources.queue_urls[queue.logical_id] = url
        resources.queue_arns[queue.logical_id] = arn

    for group in tpl.schedule_group_names(template, stack_name):
        scheduler.create_schedule_group(Name=group)
        resources.schedule_groups.append(group)

    for logical_id in tpl.kms_key_logical_ids(template):
        key = clients["kms"].create_key(Description=f"{stack_name} {logical_id}")["KeyMetadata"]
        resources.kms_keys[logical_id] = key["Arn"]
    return resources


def put_simulator_parameter(ssm: Any, simulator_url: str, secret: str, *, deduplicates: bool = True) -> str:
    """Registers the upstream simulator where the provider registry looks for upstreams; `deduplicates` says
    whether the gateway may count on it to answer a repeated submit instead of sending again."""
    name = f"{UPSTREAM_PARAMETER_PREFIX}{UPSTREAM_NAME}"
    config = {"type": "simulator", "url": simulator_url, "secret": secret, "deduplicates": deduplicates}
    ssm.put_parameter(Name=name, Type="SecureString", Value=json.dumps(config), Overwrite=True)
    return name


def function_environment(
    stack_name: str,
    resources: Resources,
    api_url: str,
    names: Mapping[str, str],
    *,
    callback_url: str | None = None,
    log_level: str = "WARNING",
    template: Mapping[str, Any] | None = None,
    notify_retry_delays: str = LOCAL_NOTIFY_RETRY_DELAYS,
) -> dict[str, str | None]:
    """The functions' environment as template.yaml sets it, with local values (None = unset). `callback_url`:
    where upstream callbacks reach the webhook function (its function URL; the API's URL when not given)."""
    scheduled = names.get("ScheduledDispatchFunction", f"{stack_name}-ScheduledDispatchFunction")
    computed: dict[str, str | None] = {
        "STAGE": STAGE,
        "TABLE_NAME": resources.tables["GatewayTable"],
        "DISPATCH_QUEUE_URL": resources.queue_urls["DispatchQueue"],
        "PRIORITY_DISPATCH_QUEUE_URL": resources.queue_urls["PriorityDispatchQueue"],
        "NOTIFY_QUEUE_URL": resources.queue_urls["NotifyQueue"],
        "DISPATCH_DEAD_LETTER_QUEUE_URL": resources.queue_urls.get("DispatchDeadLetterQueue", ""),
        "NOTIFY_DEAD_LETTER_QUEUE_URL": resources.queue_urls.get("NotifyDeadLetterQueue", ""),
        "NOTIFY_RETRY_DELAYS": notify_retry_delays,
        "SCHEDULE_GROUP_NAME": resources.schedule_groups[0] if resources.schedule_groups else "",
        "SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT_ID}:role/{stack_name}-scheduler",
        "SCHEDULED_DISPATCH_FUNCTION_ARN": function_arn(scheduled),
        "SCHEDULE_DLQ_ARN": resources.queue_arns.get("ScheduleDeadLetterQueue", ""),
        "UPSTREAM_PARAMETER_PREFIX": UPSTREAM_PARAMETER_PREFIX,
        "CALLBACK_BASE_URL": callback_url or api_url,
        "DEFAULT_UPSTREAM": UPSTREAM_NAME,
        "WEBHOOK_CREDENTIALS_KEY_ID": resources.kms_keys.get("WebhookCredentialsKey", ""),
        "ALLOW_HTTP_WEBHOOKS": "true",
        "POWERTOOLS_SERVICE_NAME": "sms-gateway",
        "POWERTOOLS_METRICS_NAMESPACE": "SmsGateway",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "POWERTOOLS_LOG_LEVEL": log_level,
        "POWERTOOLS_DEV": None,
    }
    if template is None:
        return computed
    # Literal values the template sets (and this module does not override) apply locally too.
    env: dict[str, str | None] = {}
    declared: set[str] = set()
    for fn in tpl.function_definitions(template):
        declared.update(fn.environment)
        env.update(fn.literal_environment)
    env.update(computed)
    missing = sorted(declared - set(env))
    if missing:
        logger.warning("no local value for the functions' variables %s", ", ".join(missing))
    return env


def create_resources(
    *,
    stack_name: str,
    simulator_url: str,
    api_url: str,
    callback_url: str | None = None,
    simulator_secret: str | None = None,
    template: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
    log_level: str = "WARNING",
) -> dict[str, str]:
    """Everything in one call, for tests under `moto.mock_aws` (endpoint None) or against a moto server:
    creates the resources and the simulator parameter, and returns the functions' environment."""
    template = tpl.load_template() if template is None else template
    clients = aws_clients(endpoint, STACK_SERVICES)
    resources = create_stack_resources(clients, template, stack_name)
    put_simulator_parameter(clients["ssm"], simulator_url, simulator_secret or secrets.token_hex(32))
    names = function_names(template, stack_name)
    env = function_environment(
        stack_name, resources, api_url, names, callback_url=callback_url, log_level=log_level, template=template
    )
    return {name: value for name, value in env.items() if value is not None}
