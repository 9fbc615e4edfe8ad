"""The functions of the local stack: handlers loaded by file path, invoked with a Lambda-like context."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger("sms_gateway_tools.localstack.lambdas")

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"

Handler = Callable[[Any, Any], Any]


class FairLock:
    """A lock (or, with `permits` > 1, a semaphore) granted in the order it was asked for. `threading.Lock` wakes an
    arbitrary waiter, so under load one caller (a client's send behind a stream of delivery-report callbacks) can
    wait far past its HTTP timeout; Lambda gives every request its own container instead."""

    def __init__(self, permits: int = 1) -> None:
        if permits < 1:
            raise ValueError("a lock needs at least one permit")
        self.permits = permits
        self._changed = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._released = 0

    def __enter__(self) -> FairLock:
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            # Tickets enter in order: the k-th waits until all but `permits - 1` of those before it have left.
            self._changed.wait_for(lambda: ticket < self._released + self.permits)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._released += 1
            self._changed.notify_all()


@dataclass
class LambdaContext:
    """The attributes and method of the Lambda Python context object that handlers and Powertools use."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline_epoch: float
    identity: Any = None
    client_context: Any = None
    tenant_id: str | None = None

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self.deadline_epoch - time.time()) * 1000), 0)


@dataclass
class LocalFunction:
    """One function of the stack: its identity from the template and the callable that runs it."""

    logical_id: str
    function_name: str
    handler: Handler
    timeout: float = 10.0
    memory_size: int = 512
    region: str = REGION
    account_id: str = ACCOUNT_ID
    # Called before every invocation (the local stack re-asserts the functions' environment there).
    before_invoke: Callable[[], None] | None = None
    # Held during an invocation: one invocation at a time, like one warm Lambda container. Handlers keep
    # per-invocation state in module globals (Powertools' resolver even in a class attribute), so
    # concurrent invocations in one process would see each other's events.
    lock: FairLock | None = None
    # Asynchronous invocations (EventBridge Scheduler's): retries after an error, and the queue ARN that then gets
    # the failure record (None: Lambda discards the event).
    async_retries: int = 2
    on_failure_queue_arn: str | None = None
    invocations: int = field(default=0, init=False)

    @property
    def arn(self) -> str:
        return function_arn(self.function_name, self.region, self.account_id)

    def context(self) -> LambdaContext:
        today = time.strftime("%Y/%m/%d", time.gmtime())
        return LambdaContext(
            function_name=self.function_name,
            function_version="$LATEST",
            invoked_function_arn=self.arn,
            memory_limit_in_mb=int(self.memory_size),
            aws_request_id=str(uuid.uuid4()),
            log_group_name=f"/aws/lambda/{self.function_name}",
            log_stream_name=f"{today}/[$LATEST]{uuid.uuid4().hex}",
            deadline_epoch=time.time() + float(self.timeout),
        )

    def invoke(self, event: Any) -> Any:
        """Runs the handler in the calling thread; exceptions propagate as Lambda reports them."""
        if self.lock is None:
            return self._invoke(event)
        with self.lock:
            return self._invoke(event)

    def _invoke(self, event: Any) -> Any:
        self.invocations += 1
        if self.before_invoke is not None:
            self.before_invoke()
        context = self.context()
        started = time.monotonic()
        try:
            return self.handler(event, context)
        finally:
            elapsed = time.monotonic() - started
            if elapsed > self.timeout:
                logger.warning(
                    "%s ran %.1f s, longer than its %.0f s timeout (Lambda would have stopped it)",
                    self.logical_id,
                    elapsed,
                    self.timeout,
                )


def async_failure_record(function: LocalFunction, event: Any, error: Exception, invoke_count: int) -> dict[str, Any]:
    """What Lambda sends to an on-failure destination once an asynchronous invocation's retries are spent: the
    event is the record's `requestPayload`."""
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    return {
        "version": "1.0",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{function.arn}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": str(error), "errorType": type(error).__name__, "requestId": request_id},
    }


def function_arn(function_name: str, region: str = REGION, account_id: str = ACCOUNT_ID) -> str:
    return f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"


def module_name_for(code_uri: str) -> str:
    """`functions/scheduled_dispatch/` -> `sms_gateway_fn_scheduled_dispatch`."""
    name = Path(code_uri.rstrip("/")).name
    return "sms_gateway_fn_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def load_handler(repo_root: Path, code_uri: str, handler: str) -> Handler:
    """Imports `<code_uri>/<module>.py` by file path under a unique module name and returns its handler.

    The module is executed afresh on every call (a new "container"), so module-level clients are made
    under the current environment.
    """
    module_file, _, attribute = handler.rpartition(".")
    path = (repo_root / code_uri / f"{module_file.replace('.', '/')}.py").resolve()
    if not path.is_file():
        raise FileNotFoundError(f"handler module {path} does not exist")
    name = module_name_for(code_uri)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    found = getattr(module, attribute, None)
    if not callable(found):
        raise AttributeError(f"{path} has no callable {attribute!r}")
    return found


def resolve_handlers(
    definitions: Mapping[str, tuple[str, str]],
    repo_root: Path,
    injected: Mapping[str, Handler] | None,
) -> dict[str, Handler]:
    """Handlers for every function: injected ones where given, otherwise loaded from `(code_uri, handler)`.

    With injected handlers, functions without one are left out (their routes answer 404, their queues
    are not polled); without any, every function's code is loaded.
    """
    if injected is not None:
        unknown = set(injected) - set(definitions)
        if unknown:
            raise KeyError(f"no such functions in the template: {', '.join(sorted(unknown))}")
        return dict(injected)
    return {
        logical_id: load_handler(repo_root, code_uri, handler)
        for logical_id, (code_uri, handler) in definitions.items()
    }
