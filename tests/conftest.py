"""Shared fixtures: sample events, and a moto-backed AWS built from template.yaml's own definitions."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property tests run the same examples on every run, with no time limit per example: a shared, loaded machine (CI runs
# `make test` once, on two cores) must not fail a test for its speed (Hypothesis's default 200 ms deadline and its
# too_slow health check did, once, 2026-12-07), nor find a new example on one run that every other run missed.
settings.register_profile(
    "repeatable", deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("repeatable")

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"
STACK = "sms-gateway-test"


def load_event(name: str, **placeholders: str) -> dict[str, Any]:
    """A sample event from events/, with `{PLACEHOLDER}` strings filled in."""
    text = (EVENTS / name).read_text()
    for key, value in placeholders.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)


@pytest.fixture(autouse=True)
def _isolated_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches a real AWS account by accident."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the clients read it first (adapters/aws.py region_name)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "SmsGateway")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")


@pytest.fixture(autouse=True)
def _no_claims_left_unreleased() -> Iterator[None]:
    """A claim one test could not give back (logic/dispatch.py UNRELEASED_CLAIMS, kept per container) is not given
    back by another test's dispatch; nor is a notification or settle check one test queued (QUEUED_ANNOUNCEMENTS,
    QUEUED_CHECKS) taken as queued in another."""
    yield
    dispatch = sys.modules.get("sms_gateway.logic.dispatch")
    if dispatch is not None:
        dispatch.UNRELEASED_CLAIMS.clear()
        dispatch.QUEUED_ANNOUNCEMENTS.clear()
        dispatch.QUEUED_CHECKS.clear()
        dispatch.UPSTREAM_RETRY_AFTER.clear()


def no_local_stack_running() -> None:
    """A test's own moto (`mock_aws`) and a local stack running in this process share moto's process-wide state:
    entering the mock resets the stack's tables, queues and keys under its pollers, and the stack's invocations put
    its AWS_ENDPOINT_URL back into os.environ, sending the test's clients to the stack's server (a test that fails
    now and then with "Key ... does not exist"). A stack a module shares must have stopped before such a test."""
    from sms_gateway_tools.localstack.moto_server import running_embedded_moto

    running = running_embedded_moto()
    assert running is None, f"a local stack still runs in this process (moto at {running!r}): stop it first"


@contextmanager
def template_stack(setenv: Callable[[str, str], None]) -> Iterator[dict[str, str]]:
    """moto with the table, queues and schedule group that template.yaml defines, and the functions' env."""
    from moto import mock_aws

    from sms_gateway import bootstrap
    from sms_gateway_tools.localstack.moto_server import (
        remember_transaction_tokens,
        serialise_dynamodb_writes,
        serialise_sqs_actions,
    )
    from sms_gateway_tools.localstack.resources import create_resources

    # The consumers make concurrent conditional writes: moto must apply them one at a time, as DynamoDB does.
    serialise_dynamodb_writes()
    # A transaction sent again under its ClientRequestToken must be applied once, as DynamoDB applies it.
    remember_transaction_tokens()
    # Concurrent pollers and consumers (the tests' threads) need SQS's atomic actions, not moto's unlocked ones; and a
    # settle check hides for hours in hops of just under 12 h: moto must count them from each receive, as SQS does.
    serialise_sqs_actions()
    no_local_stack_running()
    with mock_aws():
        env = create_resources(stack_name=STACK, simulator_url="http://127.0.0.1:9", api_url="http://127.0.0.1:8")
        for key, value in env.items():
            setenv(key, value)
        bootstrap.reset()
        yield env
        bootstrap.reset()
    for key in env:
        os.environ.pop(key, None)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The template's stack on moto, with the functions' IAM applied to the calls their code makes
    (tests/iam_enforcement.py; `iam` is the checker)."""
    from tests.iam_enforcement import iam_enforced

    with template_stack(monkeypatch.setenv) as env, iam_enforced(env):
        yield env


@pytest.fixture
def iam(aws: dict[str, str]) -> Any:
    """The IAM checker of the `aws` fixture: which calls it checked, and refused."""
    from tests.iam_enforcement import active_enforcer

    return active_enforcer()


@pytest.fixture(autouse=True)
def _iam_refusals_fail_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A call a function's IAM statements do not allow (tests/iam_enforcement.py) fails the test it was made in,
    even when the function's code caught the AccessDeniedException: in production it is an outage. A test marked
    `iam_unchecked` (calls made with an operator's credentials through a function's code) is not checked."""
    checker = sys.modules.get("tests.iam_enforcement")
    if request.node.get_closest_marker("iam_unchecked") is not None:
        from tests.iam_enforcement import iam_suspended

        with iam_suspended():
            yield
        return
    before = len(checker.DENIALS) if checker is not None else 0
    yield
    checker = sys.modules.get("tests.iam_enforcement")
    refused = checker.DENIALS[before:] if checker is not None else []
    if refused:
        pytest.fail(
            "calls the functions' IAM statements in template.yaml do not allow (tests/iam_enforcement.py):\n"
            + "\n".join(f"  {denial}" for denial in refused),
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _iam_applied_in_local_stacks() -> Iterator[None]:
    """Every local stack a test runs in this process applies the functions' IAM (tests/iam_enforcement.py)."""
    from sms_gateway_tools.localstack.stack import LocalStack
    from tests.iam_enforcement import iam_enforced

    original_start, original_stop = LocalStack._start, LocalStack.stop
    checks: dict[int, Any] = {}

    def start(stack: LocalStack) -> None:
        original_start(stack)
        checks[id(stack)] = iam_enforced(stack.env)
        checks[id(stack)].__enter__()

    def stop(stack: LocalStack) -> None:
        try:
            original_stop(stack)
        finally:
            check = checks.pop(id(stack), None)
            if check is not None:
                check.__exit__(None, None, None)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalStack, "_start", start)
        patch.setattr(LocalStack, "stop", stop)
        yield


def route_simulator_upstreams_to(
    monkeypatch: pytest.MonkeyPatch, handler: Any, *, deduplicates: bool | None = None
) -> None:
    """Every simulator-protocol upstream the dispatcher builds talks to `handler` through httpx.MockTransport;
    `deduplicates` overrides whether the dispatcher may count on it to answer a repeated reference with its first
    answer (configured on by default)."""
    import httpx

    from sms_gateway.adapters.providers import simulator

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    original = simulator.SimulatorProvider.__init__
    told = {} if deduplicates is None else {"deduplicates": deduplicates}

    def with_mock_client(self: Any, **kwargs: Any) -> None:
        original(self, **{**kwargs, "client": client, **told})

    monkeypatch.setattr(simulator.SimulatorProvider, "__init__", with_mock_client)


class FakeContext:
    """The Lambda context the handlers get in tests."""

    function_name = "test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:test"
    memory_limit_in_mb = 256
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/test"
    log_stream_name = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class ShortOfTime(FakeContext):
    """A Lambda context with `remaining_ms` left of its invocation."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def store_clients() -> list[Any]:
    """The DynamoDB clients of the gateway's stores: the usual one, and the prompt one the webhook function's callbacks
    use (bootstrap.Gateway.prompt_store)."""
    from sms_gateway.bootstrap import gateway

    return [gateway().store.client, gateway().prompt_store.client]


def load_function(name: str) -> ModuleType:
    """A function's handler module, loaded from functions/<name>/app.py as Lambda would."""
    spec = importlib.util.spec_from_file_location(f"fn_{name}", Path(REPO, "functions", name, "app.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def create_key_table(client: Any, name: str = "t") -> None:
    """A pay-per-request table keyed as the gateway's (string `pk` and `sk`), for tests of DynamoDB alone."""
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
