"""Least privilege in template.yaml: no policy statement allows every action of a service, and none names every
resource where the action can be scoped to one. SAM policy templates are expanded to the statements they mean."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sms_gateway_tools.template import load_template, resources_of_type
from tests.unit.test_template import _is_key_root_delegation, _statements

# What the SAM policy templates the functions use grant (from aws-sam-translator's policy_templates.json).
# A template not listed here fails the test: expand it here first, so its grants are checked like the rest.
SAM_POLICY_TEMPLATES: dict[str, dict[str, Any]] = {
    "DynamoDBCrudPolicy": {
        "Effect": "Allow",
        "Action": [
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:PutItem",
            "dynamodb:Scan",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:BatchGetItem",
            "dynamodb:DescribeTable",
            "dynamodb:ConditionCheckItem",
        ],
        "Resource": ["table/${TableName}", "table/${TableName}/index/*"],
    },
}

# Actions that IAM cannot scope to a resource, so `Resource: "*"` is the only form that works. Empty today:
# add an action only with the AWS documentation's word that it has no resource type.
UNSCOPABLE_ACTIONS: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _expanded_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every statement written in the template, plus what each SAM policy template in a function stands for."""
    found = list(_statements(template["Resources"]))
    for logical_id, props in resources_of_type(template, "AWS::Serverless::Function"):
        for index, policy in enumerate(props.get("Policies") or []):
            if isinstance(policy, str):
                pytest.fail(f"{logical_id} attaches the managed policy {policy}: write the statements it needs")
            if "Statement" in policy:
                continue
            ((name, arguments),) = policy.items()
            assert name in SAM_POLICY_TEMPLATES, f"{logical_id} uses the unexpanded SAM policy template {name}"
            # Every argument must name one of this stack's resources, never a wildcard or a literal of its own.
            for argument in arguments.values():
                assert isinstance(argument, dict) and set(argument) == {"Ref"}, (logical_id, name, argument)
                assert argument["Ref"] in template["Resources"], (logical_id, name, argument)
            found.append((f"/{logical_id}/Properties/Policies[{index}]/{name}", SAM_POLICY_TEMPLATES[name]))
    return found


def _is_key_policy(path: str) -> bool:
    """A KMS key policy's Resource is always "*": in a key policy it means the key itself, nothing wider."""
    return path.endswith("/KeyPolicy")


def test_the_walk_finds_every_kind_of_policy(template):
    # Given every statement of the template, SAM policy templates expanded
    paths = [path for path, _ in _expanded_statements(template)]
    # Then function policies, SAM templates, the scheduler role, the key and the topic policy are all there
    for where in ("/ApiFunction/Properties/Policies", "DynamoDBCrudPolicy", "/SchedulerRole/", "/AlarmTopicKey/"):
        assert any(where in path for path in paths), where
    assert any("/AlarmTopicPolicy/" in path for path in paths)


def test_no_statement_allows_every_action_of_a_service(template):
    offending = []
    for path, statement in _expanded_statements(template):
        for action in _as_list(statement.get("Action", [])):
            service_wide = action == "*" or action.endswith(":*")
            # The one exception: a key policy's standard grant of kms:* to the account root, which hands the key's
            # administration to IAM (without it nobody could manage the key; docs/template.md).
            if service_wide and not _is_key_root_delegation(template, path, statement):
                offending.append((path, action))
        assert "NotAction" not in statement, path
    assert offending == []


def test_no_statement_names_every_resource_where_one_can_be_named(template):
    offending = []
    for path, statement in _expanded_statements(template):
        if statement.get("Effect") != "Allow" or _is_key_policy(path):
            continue
        assert "NotResource" not in statement, path
        resources = _as_list(statement.get("Resource", []))
        actions = set(_as_list(statement.get("Action", [])))
        if "*" in resources and not actions <= UNSCOPABLE_ACTIONS:
            offending.append((path, sorted(actions - UNSCOPABLE_ACTIONS)))
        # A resource ending in a wildcard must still name this stack's resource before it (no `arn:aws:sqs:*`).
        for resource in resources:
            text = json.dumps(resource)
            assert ":*:" not in text and not text.strip('"').endswith(":*"), (path, resource)
    assert offending == []


def test_trust_policies_name_one_service_of_this_account(template):
    # Given the roles the template creates
    for logical_id, props in resources_of_type(template, "AWS::IAM::Role"):
        for statement in props["AssumeRolePolicyDocument"]["Statement"]:
            # Then each is assumable by one named service, only on behalf of this account (confused deputy)
            assert set(statement["Principal"]) == {"Service"}, logical_id
            assert "*" not in json.dumps(statement["Principal"]), logical_id
            assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_iam_pass_role_is_limited_to_the_scheduler_role_and_service(template):
    passes = [
        (path, statement)
        for path, statement in _expanded_statements(template)
        if "iam:PassRole" in _as_list(statement.get("Action", []))
    ]
    assert passes, "the api function passes the scheduler role"
    for path, statement in passes:
        assert statement["Resource"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}, path
        assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == "scheduler.amazonaws.com", path
