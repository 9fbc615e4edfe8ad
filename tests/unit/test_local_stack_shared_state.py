"""The local stack's functions side by side in one process: Powertools' process-wide state kept apart
(tools/sms_gateway_tools/localstack/shared_state.py)."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from sms_gateway_tools.localstack.shared_state import let_functions_run_side_by_side, make_methods_take_turns

pytestmark = pytest.mark.timeout(30)


def http_event(path: str) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {},
        "requestContext": {
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"},
            "stage": "$default",
            "requestId": path,
            "routeKey": "$default",
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "domainPrefix": "localhost",
            "time": "03/Dec/2026:08:00:00 +0000",
            "timeEpoch": 0,
        },
        "isBase64Encoded": False,
    }


def test_two_http_functions_resolving_at_once_each_read_their_own_request() -> None:
    # Given the local stack's functions run side by side, and two resolvers (the api's and the webhook's)
    let_functions_run_side_by_side()
    both_resolving = threading.Barrier(2, timeout=10)
    seen: dict[str, str] = {}

    def function(name: str) -> APIGatewayHttpResolver:
        app = APIGatewayHttpResolver()

        @app.get(f"/{name}")
        def route() -> dict[str, str]:
            # Each reads the request only once the other has started resolving its own
            both_resolving.wait()
            both_resolving.wait()
            seen[name] = app.current_event.path
            return {"path": app.current_event.path}

        return app

    api, webhook = function("api"), function("webhook")
    answers: dict[str, Any] = {}

    def invoke(name: str, app: APIGatewayHttpResolver) -> None:
        answers[name] = json.loads(app.resolve(http_event(f"/{name}"), None)["body"])

    threads = [
        threading.Thread(target=invoke, args=("api", api)),
        threading.Thread(target=invoke, args=("webhook", webhook)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # Then neither read the other's request (with one class attribute both would read the last one set)
    assert seen == {"api": "/api", "webhook": "/webhook"}
    assert answers == {"api": {"path": "/api"}, "webhook": {"path": "/webhook"}}


class BlockingStdout(io.StringIO):
    """Stands in for stdout: the first write waits until released, holding whoever is printing."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        if not self.writing.is_set():
            self.writing.set()
            assert self.release.wait(10)
        return super().write(text)


def test_a_metric_added_while_another_invocation_flushes_waits_for_the_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the local stack's functions run side by side, and one invocation's metrics being flushed (printing)
    let_functions_run_side_by_side()
    metrics = Metrics(namespace="SharedStateTest", service="shared-state-test")
    metrics.clear_metrics()
    stdout = BlockingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    metrics.add_metric(name="Flushed", unit="Count", value=1)
    flushing = threading.Thread(target=metrics.flush_metrics)
    flushing.start()
    assert stdout.writing.wait(10)

    # When another invocation adds a metric meanwhile
    added = threading.Event()

    def add() -> None:
        metrics.add_metric(name="AddedDuringFlush", unit="Count", value=1)
        added.set()

    adding = threading.Thread(target=add)
    adding.start()

    # Then it waits for the flush (which would otherwise iterate the set while it changes), and is not lost
    assert not added.wait(0.3)
    stdout.release.set()
    flushing.join(timeout=10)
    assert added.wait(10)
    adding.join(timeout=10)
    metrics.flush_metrics()
    lines = [json.loads(line) for line in stdout.getvalue().splitlines() if line]
    assert [sorted(k for k in line if k not in ("_aws", "service")) for line in lines] == [
        ["Flushed"],
        ["AddedDuringFlush"],
    ]


def test_methods_made_to_take_turns_run_one_at_a_time_and_are_wrapped_once() -> None:
    # Given a class whose first call waits inside the method until released
    inside = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    class Handler:
        def write(self, name: str) -> None:
            calls.append(f"{name} in")
            if name == "first":
                inside.set()
                assert release.wait(10)
            calls.append(f"{name} out")

        def other_write(self, name: str) -> None:
            self.write(name)

    turns = threading.RLock()
    make_methods_take_turns(Handler, ("write", "other_write"), turns)
    wrapped = Handler.write
    make_methods_take_turns(Handler, ("write", "other_write"), turns)
    assert Handler.write is wrapped

    # When a second thread calls the other method while the first is inside
    first = threading.Thread(target=Handler().write, args=("first",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=Handler().other_write, args=("second",))
    second.start()
    second.join(timeout=0.3)

    # Then it waits its turn (and one method calling the other does not deadlock)
    assert second.is_alive()
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert calls == ["first in", "first out", "second in", "second out"]


def test_moto_applies_dynamodb_writes_one_at_a_time_once_asked() -> None:
    from moto.dynamodb.responses import DynamoHandler

    from sms_gateway_tools.localstack.moto_server import serialise_dynamodb_writes

    serialise_dynamodb_writes()
    assert all(
        getattr(getattr(DynamoHandler, action), "takes_turns", False)
        for action in ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")
    )


def test_two_invocations_of_one_http_function_at_once_keep_their_own_route_arguments() -> None:
    # Given one function (one resolver) invoked twice at once, as the webhook is by a burst of DLRs
    let_functions_run_side_by_side()
    app = APIGatewayHttpResolver()
    both_resolving = threading.Barrier(2, timeout=10)

    @app.get("/callbacks/<provider>")
    def callback(provider: str) -> dict[str, str]:
        both_resolving.wait()
        both_resolving.wait()
        # Read again after the other request was routed: the route arguments live in the resolver's context
        return {"provider": provider, "again": app.context["_route_args"]["provider"], "path": app.current_event.path}

    answers: dict[str, Any] = {}

    def invoke(provider: str) -> None:
        answers[provider] = json.loads(app.resolve(http_event(f"/callbacks/{provider}"), None)["body"])

    threads = [threading.Thread(target=invoke, args=(name,)) for name in ("kannel", "twilio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # Then each answered its own request
    assert answers == {
        name: {"provider": name, "again": name, "path": f"/callbacks/{name}"} for name in ("kannel", "twilio")
    }
