"""IAM as AWS applies it, for tests under moto (which applies none): each AWS call a function's code makes is checked
against that function's statements in template.yaml, and one they do not allow fails as AWS fails it
(AccessDeniedException) and is remembered, so a test sees the outage a missing grant is in production.

The acting function is the one whose `functions/<name>/app.py` handler is on the calling thread's stack, or, in a
worker thread (asyncio.to_thread, a handler's executor), the one that handed it the work: ThreadPoolExecutor.submit
passes it on while a check is on. Calls made outside any handler (a test's setup, the admin CLI with an operator's
credentials, the local stack's own pollers) are not checked.

`tests/conftest.py` turns the check on for every test with the `aws` fixture and every in-process local stack; a
refusal fails the test it happened in (DENIALS), even when the function's code caught the error.

Statements are evaluated as IAM does for what they use: Action (with `*` wildcards), Resource (ARNs with `*`), and
the condition operators StringEquals, StringLike, their IfExists forms and ForAllValues: prefixes, over the keys
DynamoDB documents (docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html):
`dynamodb:LeadingKeys` (the partition key), `dynamodb:Attributes` (every top-level attribute the request names: its
key, its update and condition expressions; ALL_OLD/ALL_NEW are checked through ReturnValues) and
`dynamodb:ReturnValues` (NONE when the request omits it), and `iam:PassedToService` of an iam:PassRole.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sms_gateway_tools.template import function_definitions, load_template
from tests.integration.test_security_iam import SAM_POLICY_TEMPLATES
from tests.unit.test_template import _as_list

# What SAM attaches to a function with an SQS event (AWSLambdaSQSQueueExecutionRole): its code may use it too.
SQS_EVENT_SOURCE_STATEMENT = {
    "Effect": "Allow",
    "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
    "Resource": "*",
}


@dataclass(frozen=True)
class Request:
    """One authorisation a call needs: an action on a resource, with its condition keys."""

    action: str
    resource: str
    context: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass
class Denial:
    function: str
    operation: str
    request: Request | None  # None: a call the checker cannot judge (teach it what the call needs)
    reason: str = ""
    thread: str = field(default_factory=lambda: threading.current_thread().name)

    def __str__(self) -> str:
        if self.request is None:
            return f"{self.function} {self.operation}: {self.reason}"
        return f"{self.function} {self.operation}: not allowed {self.request.action} on {self.request.resource}"


# Every refusal of every checker, in order: a test fails when one was added while it ran (tests/conftest.py).
DENIALS: list[Denial] = []
_HANDLER_FILE = re.compile(r"[/\\]functions[/\\](\w+)[/\\]app\.py$")


@functools.cache
def repository_template() -> dict[str, Any]:
    """template.yaml, parsed once (about 70 ms of CPU: a checker per test would add up). Not to be changed: copy
    it first."""
    return load_template()


class Enforcer:
    def __init__(self, env: Mapping[str, str], template: dict[str, Any] | None = None) -> None:
        self.template = template or repository_template()
        self.env = env
        dlq = env["SCHEDULE_DLQ_ARN"].split(":")
        self.region, self.account = dlq[3], dlq[4]
        self.functions = {
            definition.code_uri.strip("/").rsplit("/", 1)[-1]: definition
            for definition in function_definitions(self.template)
        }
        self.denials: list[Denial] = []
        self.checked: set[tuple[str, str]] = set()
        self._statements: dict[str, list[dict[str, Any]]] = {}
        # A code file's function (logical id), or None: the stack walk of each call looks each frame up once.
        self._function_of_file: dict[str, str | None] = {}

    # ------------------------------------------------------------------ the template's statements, resolved
    def _arn_of(self, logical_id: str) -> str:
        env = self.env
        queues = {
            "DispatchQueue": "DISPATCH_QUEUE_URL",
            "PriorityDispatchQueue": "PRIORITY_DISPATCH_QUEUE_URL",
            "NotifyQueue": "NOTIFY_QUEUE_URL",
            "DispatchDeadLetterQueue": "DISPATCH_DEAD_LETTER_QUEUE_URL",
            "NotifyDeadLetterQueue": "NOTIFY_DEAD_LETTER_QUEUE_URL",
        }
        if logical_id in queues:
            return self._queue_arn(env[queues[logical_id]])
        known = {
            "GatewayTable": f"arn:aws:dynamodb:{self.region}:{self.account}:table/{env['TABLE_NAME']}",
            "ScheduleDeadLetterQueue": env["SCHEDULE_DLQ_ARN"],
            "SchedulerRole": env["SCHEDULER_ROLE_ARN"],
            "ScheduledDispatchFunction": env["SCHEDULED_DISPATCH_FUNCTION_ARN"],
            "WebhookCredentialsKey": env["WEBHOOK_CREDENTIALS_KEY_ID"],
        }
        return known[logical_id]

    def _resolve(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        ((intrinsic, argument),) = value.items()
        if intrinsic == "Fn::GetAtt":
            target, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            assert attribute == "Arn", value
            return self._arn_of(target)
        if intrinsic == "Ref":
            return {"ScheduleGroup": self.env["SCHEDULE_GROUP_NAME"], "GatewayTable": self.env["TABLE_NAME"]}[argument]
        if intrinsic == "Fn::Sub":
            assert isinstance(argument, str), value
            names = {
                "AWS::Partition": "aws",
                "AWS::Region": self.region,
                "AWS::AccountId": self.account,
                "Stage": self.env["STAGE"],
                "ScheduleGroup": self.env["SCHEDULE_GROUP_NAME"],
            }

            def variable(match: re.Match[str]) -> str:
                name = match.group(1)
                if name.endswith(".Arn"):
                    return self._arn_of(name.removesuffix(".Arn"))
                return names[name]

            return re.sub(r"\$\{([^}]+)\}", variable, argument)
        raise AssertionError(f"teach the IAM checker to resolve {intrinsic}")

    def statements(self, function: str) -> list[dict[str, Any]]:
        """The statements of `function` (a logical id): its policies, SAM policy templates expanded."""
        props = self.template["Resources"][function]["Properties"]
        found: list[dict[str, Any]] = []
        for policy in props.get("Policies") or []:
            if "Statement" in policy:
                found.extend(_as_list(policy["Statement"]))
                continue
            ((name, arguments),) = policy.items()
            table = self._resolve(arguments["TableName"])
            expanded = dict(SAM_POLICY_TEMPLATES[name])
            expanded["Resource"] = [
                f"arn:aws:dynamodb:{self.region}:{self.account}:{pattern.replace('${TableName}', table)}"
                for pattern in expanded["Resource"]
            ]
            found.append(expanded)
        if any(event.get("Type") == "SQS" for event in (props.get("Events") or {}).values()):
            found.append(SQS_EVENT_SOURCE_STATEMENT)
        return [
            {**statement, "Resource": [self._resolve(r) for r in _as_list(statement["Resource"])]}
            for statement in found
        ]

    def allowed(self, function: str, request: Request) -> bool:
        if function not in self._statements:
            self._statements[function] = self.statements(function)
        return any(_allows(statement, request) for statement in self._statements[function])

    # ------------------------------------------------------------------ what a call needs
    def _queue_arn(self, url: str) -> str:
        name = url.rstrip("/").rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{self.region}:{self.account}:{name}"

    def _table_arn(self, name: str, index: str | None = None) -> str:
        arn = name if name.startswith("arn:") else f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}"
        return f"{arn}/index/{index}" if index else arn

    def requests(self, service: str, operation: str, params: Mapping[str, Any]) -> list[Request]:
        if service == "dynamodb":
            return self._dynamodb_requests(operation, params)
        if service == "sqs":
            action = {
                "SendMessageBatch": "SendMessage",
                "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
                "DeleteMessageBatch": "DeleteMessage",
            }.get(operation, operation)
            return [Request(f"sqs:{action}", self._queue_arn(params["QueueUrl"]))]
        if service == "scheduler" and operation in ("CreateSchedule", "DeleteSchedule", "GetSchedule"):
            group = params.get("GroupName", "default")
            arn = f"arn:aws:scheduler:{self.region}:{self.account}:schedule/{group}/{params['Name']}"
            needed = [Request(f"scheduler:{operation}", arn)]
            if "Target" in params:
                passed = {"iam:PassedToService": ["scheduler.amazonaws.com"]}
                needed.append(Request("iam:PassRole", params["Target"]["RoleArn"], passed))
            return needed
        if service == "lambda" and operation == "Invoke":
            name = params["FunctionName"]
            arn = name if name.startswith("arn:") else f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"
            return [Request("lambda:InvokeFunction", arn)]
        if service == "ssm":
            parameter = f"arn:aws:ssm:{self.region}:{self.account}:parameter"
            if operation == "GetParametersByPath":
                return [Request("ssm:GetParametersByPath", parameter + params["Path"])]
            if operation == "GetParameters":
                return [Request("ssm:GetParameters", parameter + name) for name in params["Names"]]
            return [Request(f"ssm:{operation}", parameter + params["Name"])]
        if service == "kms":
            key = params.get("KeyId") or self.env["WEBHOOK_CREDENTIALS_KEY_ID"]
            return [Request(f"kms:{operation}", key)]
        raise AssertionError(f"teach the IAM checker what {service}:{operation} needs")

    def _dynamodb_requests(self, operation: str, params: Mapping[str, Any]) -> list[Request]:
        if operation == "TransactWriteItems":
            kinds = {
                "Put": "PutItem",
                "Update": "UpdateItem",
                "Delete": "DeleteItem",
                "ConditionCheck": "ConditionCheckItem",
            }
            return [
                request
                for item in params["TransactItems"]
                for kind, inner in item.items()
                for request in self._dynamodb_requests(kinds[kind], inner)
            ]
        if operation == "TransactGetItems":
            return [r for item in params["TransactItems"] for r in self._dynamodb_requests("GetItem", item["Get"])]
        if operation in ("BatchGetItem", "BatchWriteItem"):
            return [Request(f"dynamodb:{operation}", self._table_arn(table)) for table in params["RequestItems"]]
        resource = self._table_arn(params["TableName"], params.get("IndexName"))
        context: dict[str, list[str]] = {}
        key = params.get("Key") or params.get("Item")
        if key is not None and "pk" in key:
            context["dynamodb:LeadingKeys"] = [key["pk"]["S"]]
        if operation in ("UpdateItem", "PutItem", "DeleteItem", "GetItem", "ConditionCheckItem"):
            context["dynamodb:Attributes"] = sorted(_attributes_named(params))
        if operation in ("UpdateItem", "PutItem", "DeleteItem"):
            context["dynamodb:ReturnValues"] = [params.get("ReturnValues", "NONE")]
        return [Request(f"dynamodb:{operation}", resource, context)]

    # ------------------------------------------------------------------ the hook
    def _function_of(self, filename: str) -> str | None:
        if filename not in self._function_of_file:
            found = _HANDLER_FILE.search(filename)
            definition = self.functions.get(found.group(1)) if found else None
            self._function_of_file[filename] = definition.logical_id if definition else None
        return self._function_of_file[filename]

    def acting_function(self) -> str | None:
        """The function whose handler is on this thread's stack, else the one that handed this thread its work."""
        frame = sys._getframe(1)
        while frame is not None:
            function = self._function_of(frame.f_code.co_filename)
            if function is not None:
                return function
            frame = frame.f_back
        return getattr(_handed_work_by, "function", None)

    def refuse(self, denial: Denial, operation: str) -> None:
        from botocore.exceptions import ClientError

        self.denials.append(denial)
        DENIALS.append(denial)
        message = f"{denial} (the IAM checker of tests/iam_enforcement.py)"
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": message}}, operation)

    def check(self, service: str, operation: str, params: Mapping[str, Any]) -> None:
        function = self.acting_function()
        if function is None:
            return
        call = f"{service}:{operation}"
        self.checked.add((function, call))
        try:
            needed = self.requests(service, operation, params)
        except AssertionError as unknown:
            self.refuse(Denial(function, call, None, str(unknown)), operation)
        for request in needed:
            if not self.allowed(function, request):
                self.refuse(Denial(function, call, request), operation)


# The function that handed the current worker thread its work (ThreadPoolExecutor.submit, while a check is on).
_handed_work_by = threading.local()


def _allows(statement: Mapping[str, Any], request: Request) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    if not any(fnmatch.fnmatchcase(request.action, action) for action in _as_list(statement["Action"])):
        return False
    if not any(fnmatch.fnmatchcase(request.resource, resource) for resource in statement["Resource"]):
        return False
    return all(
        _condition_holds(operator, key, _as_list(expected), request.context)
        for operator, keys in (statement.get("Condition") or {}).items()
        for key, expected in keys.items()
    )


def _condition_holds(operator: str, key: str, expected: list[str], context: Mapping[str, list[str]]) -> bool:
    """IAM's evaluation of one condition key (docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_
    condition-single-vs-multi-valued-context-keys.html): ForAllValues holds when every value of the request is
    matched, and when the request has none; a single-valued operator on a missing key fails unless IfExists."""
    qualifier, _, test = operator.rpartition(":")
    if_exists = test.endswith("IfExists")
    test = test.removesuffix("IfExists")
    matchers = {
        "StringEquals": lambda value, pattern: value == pattern,
        "StringLike": fnmatch.fnmatchcase,
    }
    if test not in matchers:
        raise AssertionError(f"teach the IAM checker the condition operator {operator}")
    match = matchers[test]
    values = context.get(key)
    if qualifier == "ForAllValues":
        return all(any(match(value, pattern) for pattern in expected) for value in values or [])
    if qualifier == "ForAnyValue":
        return any(any(match(value, pattern) for pattern in expected) for value in values or [])
    if values is None:
        return if_exists
    return any(match(values[0], pattern) for pattern in expected)


_EXPRESSION_WORDS = {
    "SET", "REMOVE", "ADD", "DELETE", "AND", "OR", "NOT", "BETWEEN", "IN",
    "attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains", "size",
    "if_not_exists", "list_append",
}  # fmt: skip


def _attributes_named(params: Mapping[str, Any]) -> set[str]:
    """The top-level attribute names a request accesses: its key's and item's, and those its expressions name (a
    nested path counts as its top-level attribute)."""
    names = set((params.get("Key") or params.get("Item") or {}).keys())
    aliases = params.get("ExpressionAttributeNames") or {}
    for field_name in ("UpdateExpression", "ConditionExpression", "ProjectionExpression"):
        expression = params.get(field_name) or ""
        # Strip values (":v") and nested parts (".x", "[0]") first: only the first name of each path is top-level.
        expression = re.sub(r":\w+", " ", expression)
        expression = re.sub(r"\[\d+\]", "", expression)
        expression = re.sub(r"\.[#\w]+", "", expression)
        for token in re.findall(r"#?\w+", expression):
            if token.startswith("#"):
                names.add(aliases[token])
            elif token not in _EXPRESSION_WORDS and not token.isdigit():
                names.add(token)
    return names


_active: list[Enforcer] = []
_originals: list[Any] = []  # aws.client and ThreadPoolExecutor.submit, while a check is on
_HOOK_ID = "iam-enforcement"


_suspended: list[None] = []


def active_enforcer() -> Enforcer:
    return _active[-1]


@contextmanager
def iam_suspended() -> Iterator[None]:
    """Within: no call is checked (a test whose calls through a function's code carry an operator's credentials)."""
    _suspended.append(None)
    try:
        yield
    finally:
        _suspended.pop()


def _hook(params: Mapping[str, Any], model: Any, event_name: str, **_: Any) -> None:
    if _active and not _suspended:
        _active[-1].check(event_name.split(".")[1], model.name, params)


def _watch(created: Any) -> Any:
    created.meta.events.register("before-parameter-build", _hook, unique_id=_HOOK_ID)
    return created


def _submit_as_acting_function(original: Callable[..., Any]) -> Callable[..., Any]:
    """ThreadPoolExecutor.submit that runs the work as the function that submitted it (asyncio.to_thread and
    run_in_executor submit from the handler's thread), so a worker's AWS calls are checked as that function's."""

    def submit(executor: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        function = _active[-1].acting_function() if _active and not _suspended else None
        if function is None:
            return original(executor, fn, *args, **kwargs)

        def as_function(*args: Any, **kwargs: Any) -> Any:
            before = getattr(_handed_work_by, "function", None)
            _handed_work_by.function = function
            try:
                return fn(*args, **kwargs)
            finally:
                _handed_work_by.function = before

        return original(executor, as_function, *args, **kwargs)

    return submit


@contextmanager
def refusals_expected() -> Iterator[list[Denial]]:
    """Within: refusals are the test's to assert (the yielded list, filled on exit), not failures of it."""
    before = len(DENIALS)
    expected: list[Denial] = []
    try:
        yield expected
    finally:
        expected.extend(DENIALS[before:])
        del DENIALS[before:]


@contextmanager
def iam_enforced(env: Mapping[str, str], template: dict[str, Any] | None = None) -> Iterator[Enforcer]:
    """Within: every AWS client the functions' code makes (sms_gateway.adapters.aws.client) is checked by an
    Enforcer (yielded) of the functions in `env` (their environment: the stack's resources). Nested, the innermost
    checks."""
    from sms_gateway.adapters import aws

    enforcer = Enforcer(env, template)
    if not _active:
        original_client = aws.client
        _originals[:] = [original_client, ThreadPoolExecutor.submit]
        aws.client = lambda service, **kwargs: _watch(original_client(service, **kwargs))  # type: ignore[assignment]
        ThreadPoolExecutor.submit = _submit_as_acting_function(_originals[1])  # type: ignore[method-assign]
        for created in list(aws._clients.values()):
            _watch(created)
    _active.append(enforcer)
    try:
        yield enforcer
    finally:
        _active.remove(enforcer)
        if not _active:
            aws.client, ThreadPoolExecutor.submit = _originals  # type: ignore[method-assign]
            for created in list(aws._clients.values()):
                created.meta.events.unregister("before-parameter-build", unique_id=_HOOK_ID)
