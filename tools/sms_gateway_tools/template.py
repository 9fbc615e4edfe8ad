"""Reads template.yaml so the local stack builds the same tables, queues, schedule groups and routes."""

from __future__ import annotations

import graphlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import yaml

DEFAULT_STACK_NAME = "sms-gateway-local"
DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"

# SAM's own defaults, used when neither the function nor Globals.Function sets a value.
_SAM_DEFAULT_TIMEOUT = 3
_SAM_DEFAULT_MEMORY_SIZE = 128
# Lambda retries an asynchronous invocation that raised twice unless EventInvokeConfig says otherwise.
_LAMBDA_DEFAULT_ASYNC_RETRIES = 2
_SQS_DEFAULT_BATCH_SIZE = 10

# Short-form tags whose long form is not "Fn::<Tag>".
_TAG_KEYS = {"Ref": "Ref", "Condition": "Condition"}
_INTRINSIC_TAGS = (
    "Ref",
    "Condition",
    "GetAtt",
    "Sub",
    "If",
    "Equals",
    "Not",
    "And",
    "Or",
    "Select",
    "Split",
    "Join",
    "FindInMap",
    "Base64",
    "Cidr",
    "GetAZs",
    "ImportValue",
    "Length",
    "ToJsonString",
    "Transform",
)

# Pseudo parameters the local stack can answer; others stay unresolved.
_LOCAL_PSEUDO_PARAMETERS = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


# --------------------------------------------------------------------------------------- loading


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that turns CloudFormation short-form tags (``!Ref X``) into their long form."""


def _intrinsic_constructor(tag: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict[str, Any]]:
    key = _TAG_KEYS.get(tag, f"Fn::{tag}")

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt":
                # "!GetAtt Resource.Attribute" is the only scalar form; the attribute may contain dots.
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        else:  # pragma: no cover - yaml has no other node kinds
            raise yaml.constructor.ConstructorError(None, None, f"unexpected node for !{tag}", node.start_mark)
        return {key: value}

    return construct


for _tag in _INTRINSIC_TAGS:
    CloudFormationLoader.add_constructor(f"!{_tag}", _intrinsic_constructor(_tag))


def load_template(path: Path | None = None) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template (YAML or JSON) into plain dicts with long-form intrinsics.

    Without a path, the repository's ``template.yaml`` is read.
    """
    text = (path or DEFAULT_TEMPLATE_PATH).read_text(encoding="utf-8")
    document = yaml.load(text, Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise ValueError(f"{path or DEFAULT_TEMPLATE_PATH} is not a CloudFormation template")
    return document


def resources_of_type(template: Mapping[str, Any], resource_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(logical id, Properties) of every resource of one type, in template order."""
    for logical_id, resource in template.get("Resources", {}).items():
        if isinstance(resource, dict) and resource.get("Type") == resource_type:
            yield logical_id, resource.get("Properties") or {}


# --------------------------------------------------------------------------------------- resolving


class UnresolvableError(ValueError):
    """A template value depends on something only CloudFormation knows (an ARN, a generated name)."""


def _parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    return {
        name: str(spec["Default"])
        for name, spec in (template.get("Parameters") or {}).items()
        if isinstance(spec, dict) and "Default" in spec
    }


@dataclass(frozen=True)
class _Context:
    template: Mapping[str, Any]
    stack_name: str
    parameters: Mapping[str, str]

    def ref(self, name: str) -> str:
        if name == "AWS::StackName":
            return self.stack_name
        if name in _LOCAL_PSEUDO_PARAMETERS:
            return _LOCAL_PSEUDO_PARAMETERS[name]
        if name in self.parameters:
            return self.parameters[name]
        raise UnresolvableError(f"cannot resolve Ref {name} locally")


def _context(template: Mapping[str, Any], stack_name: str, parameters: Mapping[str, str] | None) -> _Context:
    values = _parameter_defaults(template)
    values.update(parameters or {})
    return _Context(template, stack_name, values)


_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")


def _resolve(value: Any, ctx: _Context) -> Any:
    """Resolve literals, Ref to parameters/pseudo parameters, Fn::Sub, Fn::FindInMap, Fn::Join, Fn::If."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {key: _resolve(item, ctx) for key, item in value.items()}
    ((key, arg),) = value.items()
    if key == "Ref":
        return ctx.ref(arg)
    if key == "Fn::Sub":
        text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # "${!Literal}" is an escaped "${Literal}"
                return "${" + name[1:] + "}"
            if name in variables:
                return str(_resolve(variables[name], ctx))
            return ctx.ref(name)

        return _SUB_VARIABLE.sub(substitute, text)
    if key == "Fn::FindInMap":
        mapping, top, second = (_resolve(part, ctx) for part in arg[:3])
        return ctx.template["Mappings"][mapping][top][second]
    if key == "Fn::Join":
        delimiter, parts = arg
        return str(delimiter).join(str(_resolve(part, ctx)) for part in parts)
    if key == "Fn::If":
        condition, if_true, if_false = arg
        return _resolve(if_true if _condition(condition, ctx) else if_false, ctx)
    if key.startswith("Fn::") or key == "Condition":
        raise UnresolvableError(f"cannot resolve {key} locally")
    return {key: _resolve(arg, ctx)}


def resolved(template: Mapping[str, Any], value: Any) -> Any:
    """`value` with its Refs to parameters (at their defaults) and its Subs, FindInMaps, Joins and Ifs resolved
    (UnresolvableError for what only CloudFormation knows)."""
    return _resolve(value, _context(template, "local", None))


def _condition(name_or_expression: Any, ctx: _Context) -> bool:
    expression = name_or_expression
    if isinstance(name_or_expression, str):
        expression = ctx.template["Conditions"][name_or_expression]
    ((key, arg),) = expression.items()
    if key == "Fn::Equals":
        left, right = (_resolve(part, ctx) for part in arg)
        return str(left) == str(right)
    if key == "Fn::Not":
        return not _condition(arg[0], ctx)
    if key == "Fn::And":
        return all(_condition(part, ctx) for part in arg)
    if key == "Fn::Or":
        return any(_condition(part, ctx) for part in arg)
    if key == "Condition":
        return _condition(arg, ctx)
    raise UnresolvableError(f"cannot evaluate condition {key} locally")


def _string(value: Any) -> str:
    """CloudFormation booleans and numbers as the strings SQS attributes want."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _logical_id_of_arn(value: Any) -> str:
    """The logical id behind ``!GetAtt X.Arn`` (or ``!Ref X``)."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else str(target).split(".", 1)[0])
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    raise UnresolvableError(f"expected a reference to another resource, got {value!r}")


# --------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TableDefinition:
    """What the local stack needs to recreate one AWS::DynamoDB::Table.

    ``create_kwargs`` go to ``dynamodb.create_table``; TTL and point-in-time recovery are separate
    API calls (``update_time_to_live``, ``update_continuous_backups``).
    """

    logical_id: str
    create_kwargs: dict[str, Any]
    ttl_attribute: str | None
    point_in_time_recovery: bool

    @property
    def table_name(self) -> str:
        return str(self.create_kwargs["TableName"])


def _index(spec: Mapping[str, Any], billing_mode: str) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": spec["IndexName"],
        "KeySchema": spec["KeySchema"],
        "Projection": {
            key: spec["Projection"][key]
            for key in ("ProjectionType", "NonKeyAttributes")
            if key in spec.get("Projection", {})
        },
    }
    if billing_mode == "PROVISIONED" and "ProvisionedThroughput" in spec:
        index["ProvisionedThroughput"] = spec["ProvisionedThroughput"]
    return index


def table_definitions(
    template: Mapping[str, Any],
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
) -> list[TableDefinition]:
    """Every AWS::DynamoDB::Table; tables without a TableName are named ``<stack_name>-<LogicalId>``."""
    ctx = _context(template, stack_name, parameters)
    definitions = []
    for logical_id, props in resources_of_type(template, "AWS::DynamoDB::Table"):
        billing_mode = str(_resolve(props.get("BillingMode", "PROVISIONED"), ctx))
        name = _resolve(props["TableName"], ctx) if "TableName" in props else f"{stack_name}-{logical_id}"
        kwargs: dict[str, Any] = {
            "TableName": name,
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": billing_mode,
        }
        if billing_mode == "PROVISIONED":
            kwargs["ProvisionedThroughput"] = props.get(
                "ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
            )
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = [_index(spec, billing_mode) for spec in props["GlobalSecondaryIndexes"]]
        if props.get("LocalSecondaryIndexes"):
            kwargs["LocalSecondaryIndexes"] = [_index(spec, "") for spec in props["LocalSecondaryIndexes"]]
        ttl = props.get("TimeToLiveSpecification") or {}
        pitr = props.get("PointInTimeRecoverySpecification") or {}
        definitions.append(
            TableDefinition(
                logical_id=logical_id,
                create_kwargs=kwargs,
                ttl_attribute=str(ttl["AttributeName"]) if _flag(_resolve(ttl.get("Enabled"), ctx)) else None,
                point_in_time_recovery=_flag(_resolve(pitr.get("PointInTimeRecoveryEnabled"), ctx)),
            )
        )
    return definitions


# --------------------------------------------------------------------------------------- queues

# CloudFormation property -> SQS attribute name, for the attributes the local stack reproduces.
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
)
_FIFO_ATTRIBUTES = ("ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit")


@dataclass(frozen=True)
class QueueDefinition:
    """One AWS::SQS::Queue: ``create_queue(QueueName=queue_name, Attributes=attributes)``.

    A queue with a dead-letter target is created after its DLQ; the caller then sets
    ``RedrivePolicy`` with :meth:`redrive_policy` and the DLQ's real ARN.
    """

    logical_id: str
    queue_name: str
    attributes: dict[str, str]
    dead_letter_target: str | None = None
    max_receive_count: int | None = None

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoQueue") == "true"

    def redrive_policy(self, dead_letter_arn: str) -> str:
        """The RedrivePolicy attribute value pointing at the (already created) DLQ."""
        if self.max_receive_count is None:
            raise ValueError(f"{self.logical_id} has no dead-letter queue")
        return json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": self.max_receive_count})


def queue_definitions(
    template: Mapping[str, Any],
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
) -> list[QueueDefinition]:
    """Every AWS::SQS::Queue, dead-letter queues before the queues that redrive into them."""
    ctx = _context(template, stack_name, parameters)
    found: dict[str, QueueDefinition] = {}
    for logical_id, props in resources_of_type(template, "AWS::SQS::Queue"):
        fifo = _flag(_resolve(props.get("FifoQueue"), ctx))
        if "QueueName" in props:
            name = str(_resolve(props["QueueName"], ctx))
        else:
            name = f"{stack_name}-{logical_id}" + (".fifo" if fifo else "")
        attributes = {key: _string(_resolve(props[key], ctx)) for key in _QUEUE_ATTRIBUTES if key in props}
        if fifo:
            attributes["FifoQueue"] = "true"
            attributes.update({key: _string(_resolve(props[key], ctx)) for key in _FIFO_ATTRIBUTES if key in props})
        redrive = props.get("RedrivePolicy") or {}
        if isinstance(redrive, str):
            redrive = json.loads(redrive)
        found[logical_id] = QueueDefinition(
            logical_id=logical_id,
            queue_name=name,
            attributes=attributes,
            dead_letter_target=_logical_id_of_arn(redrive["deadLetterTargetArn"]) if redrive else None,
            max_receive_count=int(_resolve(redrive["maxReceiveCount"], ctx)) if redrive else None,
        )
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for logical_id, queue in found.items():
        dependencies = [queue.dead_letter_target] if queue.dead_letter_target in found else []
        sorter.add(logical_id, *[dep for dep in dependencies if dep is not None])
    order = {logical_id: position for position, logical_id in enumerate(found)}
    ordered: list[QueueDefinition] = []
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        ordered.extend(found[logical_id] for logical_id in ready)
        sorter.done(*ready)
    return ordered


# --------------------------------------------------------------------------------------- scheduler


def schedule_group_names(
    template: Mapping[str, Any],
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
) -> list[str]:
    """Names of every AWS::Scheduler::ScheduleGroup (``<stack_name>-<LogicalId>`` when unnamed)."""
    ctx = _context(template, stack_name, parameters)
    return [
        str(_resolve(props["Name"], ctx)) if "Name" in props else f"{stack_name}-{logical_id}"
        for logical_id, props in resources_of_type(template, "AWS::Scheduler::ScheduleGroup")
    ]


# --------------------------------------------------------------------------------------- kms


def kms_key_logical_ids(template: Mapping[str, Any]) -> list[str]:
    """Every AWS::KMS::Key: the local stack makes one per logical id (their key policies are IAM's business)."""
    return [logical_id for logical_id, _ in resources_of_type(template, "AWS::KMS::Key")]


# --------------------------------------------------------------------------------------- functions


class Route(NamedTuple):
    method: str
    path: str


class SqsEventSource(NamedTuple):
    queue: str
    batch_size: int
    report_batch_item_failures: bool
    maximum_batching_window_seconds: int


_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_RATE_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> int | None:
    """The period of an EventBridge `rate(N unit)` expression in seconds; None for anything else (cron)."""
    found = _RATE.match(expression.strip())
    if found is None:
        return None
    return int(found.group(1)) * _RATE_UNIT_SECONDS[found.group(2).rstrip("s")]


@dataclass(frozen=True)
class FunctionDefinition:
    """One AWS::Serverless::Function with Globals.Function applied."""

    logical_id: str
    code_uri: str
    handler: str
    runtime: str | None
    timeout: int
    memory_size: int
    environment: list[str]
    routes: list[Route] = field(default_factory=list)
    sqs_events: list[SqsEventSource] = field(default_factory=list)
    # The expressions of its Schedule events (an EventBridge rule invokes it: `rate(2 minutes)`).
    schedule_events: list[str] = field(default_factory=list)
    # Environment variables whose value is a plain literal in the template (e.g. POWERTOOLS_SERVICE_NAME).
    literal_environment: dict[str, str] = field(default_factory=dict)
    # FunctionUrlConfig's AuthType (NONE or AWS_IAM) when the function has a URL: every path and method
    # reaches it, as payload v2.0 events with routeKey $default.
    function_url_auth: str | None = None
    # Environment variables whose value is another function's URL (`!GetAtt <Function>Url.FunctionUrl`):
    # variable -> that function's logical id.
    function_url_environment: dict[str, str] = field(default_factory=dict)
    # EventInvokeConfig: how often Lambda retries an asynchronous invocation that raised, and the queue (logical id)
    # its event then goes to (None: it is discarded).
    async_retries: int = _LAMBDA_DEFAULT_ASYNC_RETRIES
    on_failure_queue: str | None = None

    @property
    def module(self) -> str:
        """``app`` for ``app.handler``."""
        return self.handler.rsplit(".", 1)[0]

    @property
    def function_name(self) -> str:
        """``handler`` for ``app.handler``."""
        return self.handler.rsplit(".", 1)[1]


def _events(props: Mapping[str, Any]) -> tuple[list[Route], list[SqsEventSource], list[str]]:
    routes: list[Route] = []
    sqs: list[SqsEventSource] = []
    schedules: list[str] = []
    for event in (props.get("Events") or {}).values():
        kind, spec = event.get("Type"), event.get("Properties") or {}
        if kind in ("HttpApi", "Api"):
            if "Path" in spec or "Method" in spec:
                routes.append(Route(str(spec.get("Method", "ANY")).upper(), str(spec["Path"])))
            else:  # an HttpApi event without path and method is the API's $default route
                routes.append(Route("ANY", "$default"))
        elif kind == "SQS":
            sqs.append(
                SqsEventSource(
                    queue=_logical_id_of_arn(spec["Queue"]),
                    batch_size=int(spec.get("BatchSize", _SQS_DEFAULT_BATCH_SIZE)),
                    report_batch_item_failures="ReportBatchItemFailures" in (spec.get("FunctionResponseTypes") or []),
                    maximum_batching_window_seconds=int(spec.get("MaximumBatchingWindowInSeconds", 0)),
                )
            )
        elif kind == "Schedule":
            schedules.append(str(spec["Schedule"]))
    return routes, sqs, schedules


def function_definitions(template: Mapping[str, Any]) -> list[FunctionDefinition]:
    """Every AWS::Serverless::Function, resolving Globals.Function the way SAM does."""
    globals_ = ((template.get("Globals") or {}).get("Function")) or {}
    global_env = ((globals_.get("Environment") or {}).get("Variables")) or {}
    definitions = []
    for logical_id, props in resources_of_type(template, "AWS::Serverless::Function"):
        merged = {**globals_, **props}
        # SAM merges environment maps (function wins) instead of replacing them.
        env = {**global_env, **(((props.get("Environment") or {}).get("Variables")) or {})}
        routes, sqs, schedules = _events(props)
        invoke_config = merged.get("EventInvokeConfig") or {}
        on_failure = (invoke_config.get("DestinationConfig") or {}).get("OnFailure") or {}
        definitions.append(
            FunctionDefinition(
                logical_id=logical_id,
                code_uri=str(merged["CodeUri"]),
                handler=str(merged["Handler"]),
                runtime=str(merged["Runtime"]) if "Runtime" in merged else None,
                timeout=int(merged.get("Timeout", _SAM_DEFAULT_TIMEOUT)),
                memory_size=int(merged.get("MemorySize", _SAM_DEFAULT_MEMORY_SIZE)),
                environment=list(env),
                routes=routes,
                sqs_events=sqs,
                schedule_events=schedules,
                literal_environment={
                    name: _string(value) for name, value in env.items() if isinstance(value, str | int | bool)
                },
                function_url_auth=str((merged.get("FunctionUrlConfig") or {}).get("AuthType", "AWS_IAM"))
                if "FunctionUrlConfig" in merged
                else None,
                function_url_environment={
                    name: target for name, value in env.items() if (target := _function_url_target(value))
                },
                async_retries=int(invoke_config.get("MaximumRetryAttempts", _LAMBDA_DEFAULT_ASYNC_RETRIES)),
                on_failure_queue=_logical_id_of_arn(on_failure["Destination"])
                if on_failure.get("Type") == "SQS" and "Destination" in on_failure
                else None,
            )
        )
    return definitions


def _function_url_target(value: Any) -> str | None:
    """The function whose URL `value` names (`!GetAtt <Function>Url.FunctionUrl`: SAM's generated
    AWS::Lambda::Url is the function's logical id plus `Url`), else None."""
    target = value.get("Fn::GetAtt") if isinstance(value, dict) else None
    if isinstance(target, str):
        target = target.split(".", 1)
    if isinstance(target, list) and len(target) == 2 and target[1] == "FunctionUrl" and target[0].endswith("Url"):
        return str(target[0])[: -len("Url")]
    return None


def function_routes(definitions: list[FunctionDefinition]) -> list[tuple[str, str, str]]:
    """(function logical id, method, route path) for :func:`match_route`."""
    return [(fn.logical_id, route.method, route.path) for fn in definitions for route in fn.routes]


# --------------------------------------------------------------------------------------- routing

_LITERAL, _PARAMETER, _GREEDY = 0, 1, 2
_DEFAULT_ROUTE = "$default"


def _match_path(route_path: str, path: str) -> tuple[tuple[int, ...], dict[str, str]] | None:
    """Per-segment specificity ranks and path parameters, or None when the path does not match."""
    pattern = route_path.strip("/").split("/") if route_path != "/" else [""]
    actual = path.lstrip("/").split("/")
    ranks: list[int] = []
    parameters: dict[str, str] = {}
    for position, segment in enumerate(pattern):
        if segment.startswith("{") and segment.endswith("+}"):
            rest = "/".join(actual[position:])
            if position != len(pattern) - 1 or not rest:
                return None
            parameters[segment[1:-2]] = unquote(rest)
            ranks.append(_GREEDY)
            return tuple(ranks), parameters
        if position >= len(actual):
            return None
        if segment.startswith("{") and segment.endswith("}"):
            if not actual[position]:
                return None
            parameters[segment[1:-1]] = unquote(actual[position])
            ranks.append(_PARAMETER)
        elif segment == actual[position]:
            ranks.append(_LITERAL)
        else:
            return None
    if len(actual) != len(pattern):
        return None
    return tuple(ranks), parameters


def match_route(routes: list[tuple[str, str, str]], method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """Pick the route API Gateway (HTTP API) would pick for ``method path``.

    ``routes`` are (function logical id, method, route path) triples. The most specific path wins,
    compared segment by segment from the left: a literal segment beats ``{param}``, which beats a
    greedy ``{proxy+}``. For the same path a named method beats ``ANY``. A ``$default`` route catches
    what nothing else matches. Returns (function logical id, route key, path parameters) or None (404).
    """
    method = method.upper()
    path = path.split("?", 1)[0] or "/"
    best: tuple[tuple[tuple[int, ...], int], tuple[str, str, dict[str, str]]] | None = None
    fallback: tuple[str, str, dict[str, str]] | None = None
    for function_id, given_method, route_path in routes:
        route_method = given_method.upper()
        if route_method not in ("ANY", method):
            continue
        if route_path == _DEFAULT_ROUTE:
            fallback = fallback or (function_id, _DEFAULT_ROUTE, {})
            continue
        matched = _match_path(route_path, path)
        if matched is None:
            continue
        ranks, parameters = matched
        rank = (ranks, 1 if route_method == "ANY" else 0)
        if best is None or rank < best[0]:
            best = (rank, (function_id, f"{route_method} {route_path}", parameters))
    return best[1] if best else fallback
