"""Least privilege in template.yaml: no policy statement allows every action of a service, and none names every
resource where the action can be scoped to one. SAM policy templates are expanded to the statements they mean."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sms_gateway_tools.template import load_template, resources_of_type
from tests.unit.test_template import _as_list, _is_key_root_delegation, _statements

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

# Every resource with a wildcard in it, as written (the string of its !Sub), and why it names only this stack's
# own resources. A wildcard anywhere else (`:*`, `:${AWS::AccountId}:*`, `table/*`, `parameter/*`) fails the test.
STACK_SCOPED_WILDCARDS: dict[str, str] = {
    "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:schedule/${ScheduleGroup}/*": (
        "the schedules of the stack's own schedule group (each batch's schedule is created at run time)"
    ),
    "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/sms-gateway/${Stage}/upstreams/*": (
        "the upstream configurations of this stage (one parameter per upstream, written by the operator)"
    ),
    "table/${TableName}/index/*": "DynamoDBCrudPolicy: the indexes of the one table its argument names (a Ref)",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _expanded_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every statement written in the template, plus what each SAM policy template in a function stands for. A
    managed policy (a function's policy named by a string, a role's ManagedPolicyArns) fails: its statements are
    not in the template to be checked."""
    found = list(_statements(template["Resources"]))
    for logical_id, props in resources_of_type(template, "AWS::IAM::Role"):
        if props.get("ManagedPolicyArns"):
            pytest.fail(
                f"{logical_id} attaches the managed policies {props['ManagedPolicyArns']}: write the statements"
            )
    for logical_id, props in resources_of_type(template, "AWS::Serverless::Function"):
        for index, policy in enumerate(_as_list(props.get("Policies") or [])):
            if isinstance(policy, str):
                pytest.fail(f"{logical_id} attaches the managed policy {policy}: write the statements it needs")
            if "Statement" in policy:
                continue  # an inline document: its statements are in the walk above, one or a list
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
        # A wildcard must follow this stack's own resource (no `arn:aws:sqs:*`, no `...:${AWS::AccountId}:*`, no
        # `table/*`): it is checked in the text an intrinsic builds the ARN from, not in the intrinsic's JSON.
        for resource in resources:
            for text in _resource_texts(resource):
                if "*" in text and text != "*" and text not in STACK_SCOPED_WILDCARDS:
                    offending.append((path, text))
    assert offending == []


def _resource_texts(resource: Any) -> list[str]:
    """The ARN texts a Resource is built from: a string, !Sub's template, !Join's parts (a reference in them as
    `${...}`), both sides of an !If. !Ref and !GetAtt name one resource: nothing to check."""
    if isinstance(resource, str):
        return [resource]
    ((intrinsic, argument),) = resource.items()
    if intrinsic in ("Ref", "Fn::GetAtt"):
        return []
    if intrinsic == "Fn::Sub":
        return [argument if isinstance(argument, str) else argument[0]]
    if intrinsic == "Fn::Join":
        separator, parts = argument
        return [separator.join(part if isinstance(part, str) else "${...}" for part in parts)]
    if intrinsic == "Fn::If":
        return [text for branch in argument[1:] for text in _resource_texts(branch)]
    pytest.fail(f"a Resource built with {intrinsic}: teach _resource_texts to read it")


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


def test_every_stack_scoped_wildcard_is_still_granted(template):
    # Given the wildcards the template writes
    written = {
        text
        for _, statement in _expanded_statements(template)
        for resource in _as_list(statement.get("Resource", []))
        for text in _resource_texts(resource)
        if "*" in text
    }
    # Then each allowed one is still among them: the list says why each wildcard is there, and no more
    assert set(STACK_SCOPED_WILDCARDS) <= written


# Grants wider than the template's, each of a shape the checks above must catch.
ACCOUNT_WIDE_QUEUES = {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"}
EVERY_TABLE = {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"}


def _with_api_policy(template: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    template["Resources"]["ApiFunction"]["Properties"]["Policies"].append(policy)
    return template


def _with_scheduler_managed_policy(template: dict[str, Any], arn: str) -> dict[str, Any]:
    template["Resources"]["SchedulerRole"]["Properties"]["ManagedPolicyArns"] = [arn]
    return template


WIDER_GRANTS = {
    # IAM takes `Statement` as one object as well as a list
    "one-statement-not-in-a-list-allowing-everything": lambda t: _with_api_policy(
        t, {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    ),
    # A wildcard inside a !Sub: every queue, every table of the account
    "every-queue-of-the-account": lambda t: _with_api_policy(
        t, {"Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": ACCOUNT_WIDE_QUEUES}]}
    ),
    "every-table-of-the-account": lambda t: _with_api_policy(
        t, {"Statement": [{"Effect": "Allow", "Action": "dynamodb:DeleteItem", "Resource": EVERY_TABLE}]}
    ),
    # A role's managed policies: statements the template does not hold
    "administrator-managed-policy-on-a-role": lambda t: _with_scheduler_managed_policy(
        t, "arn:aws:iam::aws:policy/AdministratorAccess"
    ),
    # The control: a service-wide action on every resource
    "every-sqs-action-on-everything": lambda t: _with_api_policy(
        t, {"Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}
    ),
}


@pytest.mark.parametrize("grant", list(WIDER_GRANTS))
def test_a_template_granting_more_than_it_needs_fails_the_checks(grant):
    from tests.unit.test_template import test_no_policy_statement_grants_a_wildcard_action

    # Given template.yaml with one over-broad grant added
    template = WIDER_GRANTS[grant](load_template())
    # When the least-privilege checks run on it
    caught = []
    for check in (
        test_no_statement_allows_every_action_of_a_service,
        test_no_statement_names_every_resource_where_one_can_be_named,
        test_trust_policies_name_one_service_of_this_account,
        test_iam_pass_role_is_limited_to_the_scheduler_role_and_service,
        test_no_policy_statement_grants_a_wildcard_action,
    ):
        try:
            check(template)
        except (AssertionError, pytest.fail.Exception):
            caught.append(check.__name__)
    # Then at least one of them fails
    assert caught, f"the IAM checks pass a template with {grant!r}"
