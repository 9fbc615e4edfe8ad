"""`LocalStack`: the whole gateway in one process, with no AWS account and no Docker."""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sms_gateway_tools import template as tpl
from sms_gateway_tools.localstack.console import DivertedStdout
from sms_gateway_tools.localstack.http_bridge import HttpBridge, function_url_route
from sms_gateway_tools.localstack.lambdas import REGION, FairLock, Handler, LocalFunction, resolve_handlers
from sms_gateway_tools.localstack.moto_server import EmbeddedMoto, route_async_invocations
from sms_gateway_tools.localstack.resources import (
    LOCAL_NOTIFY_RETRY_DELAYS,
    STACK_SERVICES,
    UPSTREAM_NAME,
    Resources,
    aws_clients,
    create_stack_resources,
    function_environment,
    function_names,
    put_simulator_parameter,
)
from sms_gateway_tools.localstack.scheduler_loop import SchedulerLoop
from sms_gateway_tools.localstack.shared_state import let_functions_run_side_by_side
from sms_gateway_tools.localstack.sqs_poller import EventSource, SqsPoller
from sms_gateway_tools.simulator import UpstreamSimulator

logger = logging.getLogger("sms_gateway_tools.localstack")

DEFAULT_STACK_NAME = "sms-gateway-local"
STATE_FILE_NAME = "stack.json"


def repo_root() -> Path:
    """The checkout that holds template.yaml (and `.local/`)."""
    return tpl.DEFAULT_TEMPLATE_PATH.resolve().parent


def default_state_dir() -> Path:
    """The checkout's `.local/`: the state dir of the stack `sms-gateway local` (make dev) runs, whose stack.json
    the admin and simulate commands read."""
    return repo_root() / ".local"


def read_stack_file(state_dir: Path | None = None) -> dict[str, Any] | None:
    """What a running local stack wrote about itself, or None when none is running."""
    path = (state_dir or default_state_dir()) / STATE_FILE_NAME
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


class LocalStack:
    """The gateway on 127.0.0.1: moto, the API bridge, SQS pollers, the scheduler loop and the simulator.

    `functions` maps template logical ids (ApiFunction, DispatcherFunction, ...) to handler callables;
    by default every function's `app.handler` is loaded from its CodeUri. `port=0` picks a free port.
    """

    def __init__(
        self,
        port: int = 3000,
        simulator_port: int = 0,
        stack_name: str = DEFAULT_STACK_NAME,
        functions: Mapping[str, Handler] | None = None,
        *,
        dlr_delay: float = 0.3,
        failure_rate: float = 0.0,
        log_level: str = "WARNING",
        template_path: Path | None = None,
        state_dir: Path | None = None,
        divert_metrics: bool = True,
        scheduler_interval: float = 0.5,
        serialize_invocations: bool = True,
        http_concurrency: int = 1,
        notify_retry_delays: str | None = None,
        environment: Mapping[str, str] | None = None,
        visibility_timeouts: Mapping[str, int] | None = None,
        sqs_duplicate_rate: float = 0.0,
        seed: int | None = None,
        upstream_deduplicates: bool = True,
        rule_interval: float | None = None,
    ) -> None:
        self.port = port
        self.simulator_port = simulator_port
        self.stack_name = stack_name
        self.injected = dict(functions) if functions is not None else None
        self.dlr_delay = dlr_delay
        self.failure_rate = failure_rate
        self.log_level = log_level.upper()
        self.template_path = template_path
        # Only `sms-gateway local` (make dev) passes default_state_dir(): its .local/stack.json is how the admin and
        # simulate commands find the stack. Any other stack (the e2e and browser tests, chaos, bench) keeps its state
        # file and metrics.log in a private temporary directory, removed when it stops; until 2026-12-06 whichever
        # stack started first claimed .local/stack.json, so a `make dev` started while a test ran never got it.
        self._state_dir = state_dir
        self.divert_metrics = divert_metrics
        self.scheduler_interval = scheduler_interval
        self.serialize_invocations = serialize_invocations
        # With serialize_invocations=False: how many invocations each HTTP function (api, webhook) runs at once, as
        # Lambda runs a burst of requests in as many containers (the SQS consumers' is their MaximumConcurrency).
        self.http_concurrency = http_concurrency
        # Seconds between client webhook attempts, comma-separated: the argument, else NOTIFY_RETRY_DELAYS from
        # the environment, else a short local schedule (tests pass e.g. "1,1" to see retries in seconds).
        self.notify_retry_delays = (
            notify_retry_delays or os.environ.get("NOTIFY_RETRY_DELAYS") or LOCAL_NOTIFY_RETRY_DELAYS
        )
        # For fault-injection runs (`sms-gateway chaos`); the defaults change nothing. `environment` adds or
        # overrides the functions' variables (e.g. UPSTREAM_READ_TIMEOUT); `visibility_timeouts` maps queue
        # logical ids to seconds, so crashed invocations come back soon; `sqs_duplicate_rate` makes the pollers
        # hand that fraction of records to the function twice; `seed` makes those choices repeatable.
        self.extra_environment = dict(environment or {})
        self.visibility_timeouts = dict(visibility_timeouts or {})
        self.sqs_duplicate_rate = sqs_duplicate_rate
        self.seed = seed
        # False: the gateway is told the simulator cannot tell a repeated submit from a new one (like Kannel).
        self.upstream_deduplicates = upstream_deduplicates
        # Seconds between invocations of a function a rate rule invokes (the sweeper): the template's rate by
        # default, as on AWS; tests shorten it.
        self.rule_interval = rule_interval

        self.moto = EmbeddedMoto()
        self.simulator: UpstreamSimulator | None = None
        self.resources: Resources | None = None
        self.functions: dict[str, LocalFunction] = {}
        self.bridge: HttpBridge | None = None
        # One server per function with a FunctionUrlConfig (its own host:port, as each URL has its own host).
        self.url_bridges: dict[str, HttpBridge] = {}
        self.pollers: list[SqsPoller] = []
        self.scheduler: SchedulerLoop | None = None
        self._env: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self._stdout: DivertedStdout | None = None
        self._started = False
        self._clients: dict[str, Any] = {}
        self._private_state_dir: Path | None = None

    # -- public ----------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self._require(self.bridge, "bridge").url

    @property
    def function_urls(self) -> dict[str, str]:
        """Function logical id -> its local function URL (no trailing slash), for each FunctionUrlConfig."""
        return {logical_id: bridge.url for logical_id, bridge in self.url_bridges.items()}

    @property
    def callback_url(self) -> str:
        """Where upstream callbacks go: CALLBACK_BASE_URL as the functions got it."""
        return self._env.get("CALLBACK_BASE_URL") or self.api_url

    @property
    def simulator_url(self) -> str:
        return self._require(self.simulator, "simulator").url

    @property
    def moto_endpoint(self) -> str:
        return self.moto.endpoint

    @property
    def env(self) -> dict[str, str]:
        """Every variable this stack put into os.environ (AWS endpoint, credentials, functions' settings)."""
        return dict(self._env)

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            self._state_dir = self._private_state_dir = Path(tempfile.mkdtemp(prefix="sms-gateway-stack-"))
        return self._state_dir

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE_NAME

    def client(self, service: str) -> Any:
        """A boto3 client for moto (independent of os.environ)."""
        if service not in self._clients:
            self._clients[service] = aws_clients(self.moto_endpoint, [service])[service]
        return self._clients[service]

    def function_arn(self, logical_id: str) -> str:
        return self.functions[logical_id].arn

    def start(self) -> LocalStack:
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- start -----------------------------------------------------------------------------------

    def _start(self) -> None:
        template = tpl.load_template(self.template_path)
        definitions = {fn.logical_id: fn for fn in tpl.function_definitions(template)}

        endpoint = self.moto.start()
        self._set_env(aws_environment(endpoint))
        self.resources = create_stack_resources(aws_clients(endpoint, STACK_SERVICES), template, self.stack_name)
        for queue_id, seconds in self.visibility_timeouts.items():
            self.client("sqs").set_queue_attributes(
                QueueUrl=self.resources.queue_urls[queue_id], Attributes={"VisibilityTimeout": str(int(seconds))}
            )

        # Bind the API port now: its URL goes into the functions' environment and the simulator.
        routes = tpl.function_routes(list(definitions.values()))
        self.bridge = HttpBridge(
            lambda method, path: tpl.match_route(routes, method, path), self.functions, port=self.port
        )
        for fn in definitions.values():
            if fn.function_url_auth is not None:
                self.url_bridges[fn.logical_id] = HttpBridge(function_url_route(fn.logical_id), self.functions, port=0)
        # CALLBACK_BASE_URL names the webhook function's URL in the template (else the API's URL, as before).
        callback_function = next(
            (f for fn in definitions.values() for f in fn.function_url_environment.values() if f in self.url_bridges),
            None,
        )
        callback_url = self.url_bridges[callback_function].url if callback_function else self.api_url

        secret = secrets.token_hex(32)
        self.simulator = UpstreamSimulator(
            secret,
            port=self.simulator_port,
            inbound_url=f"{callback_url}/callbacks/{UPSTREAM_NAME}/inbound",
            dlr_delay=self.dlr_delay,
            failure_rate=self.failure_rate,
            seed=self.seed,
        ).start()
        put_simulator_parameter(self.client("ssm"), self.simulator.url, secret, deduplicates=self.upstream_deduplicates)

        names = function_names(template, self.stack_name)
        self._set_env(
            function_environment(
                self.stack_name,
                self.resources,
                self.api_url,
                names,
                callback_url=callback_url,
                log_level=self.log_level,
                template=template,
                notify_retry_delays=self.notify_retry_delays,
            )
        )
        self._set_env(self.extra_environment)
        self._forget_wiring()
        if self.divert_metrics:
            self._stdout = DivertedStdout(self.state_dir / "metrics.log")

        handlers = resolve_handlers(
            {logical_id: (fn.code_uri, fn.handler) for logical_id, fn in definitions.items()},
            repo_root(),
            self.injected,
        )
        # One invocation at a time per lock. The functions share module-level state of the runtime
        # package (Powertools' resolvers keep the current event in a class attribute; logger keys and
        # the metric set are one object), so by default every invocation takes one process-wide lock.
        # `serialize_invocations=False` gives each function its own lock (one warm container each; the HTTP ones
        # `http_concurrency`), once Powertools' process-wide state allows it (localstack/shared_state.py).
        shared_lock = FairLock()
        if not self.serialize_invocations:
            let_functions_run_side_by_side()
        for logical_id, handler in handlers.items():
            fn = definitions[logical_id]
            self.functions[logical_id] = LocalFunction(
                logical_id=logical_id,
                function_name=names[logical_id],
                handler=handler,
                timeout=float(fn.timeout),
                memory_size=int(fn.memory_size),
                before_invoke=self._ensure_env,
                lock=shared_lock
                if self.serialize_invocations
                else FairLock(permits=self.http_concurrency if fn.routes else 1),
                async_retries=fn.async_retries,
                on_failure_queue_arn=self.resources.queue_arns[fn.on_failure_queue] if fn.on_failure_queue else None,
            )

        self.bridge.start()
        for bridge in self.url_bridges.values():
            bridge.start()
        sqs = self.client("sqs")
        for logical_id, function in self.functions.items():
            for source in definitions[logical_id].sqs_events:
                poller = SqsPoller(
                    sqs,
                    EventSource(
                        queue_logical_id=source.queue,
                        queue_url=self.resources.queue_urls[source.queue],
                        queue_arn=self.resources.queue_arns[source.queue],
                        batch_size=int(source.batch_size),
                        report_batch_item_failures=bool(source.report_batch_item_failures),
                        maximum_batching_window_seconds=float(source.maximum_batching_window_seconds or 0),
                        maximum_concurrency=_maximum_concurrency(template, logical_id, source.queue),
                    ),
                    function,
                    duplicate_rate=self.sqs_duplicate_rate,
                    # Repeatable fault injection, not a secret.
                    rand=random.Random(f"{self.seed}:{source.queue}") if self.seed is not None else None,  # noqa: S311
                )
                poller.start()
                self.pollers.append(poller)

        self.scheduler = SchedulerLoop(
            self.client("scheduler"),
            sqs,
            self.resources.schedule_groups,
            {function.arn: function for function in self.functions.values()},
            interval=self.scheduler_interval,
            rules=self._rules(definitions),
        )
        self.scheduler.start()
        # The sweeper releases a scheduled batch whose schedule was never made by invoking scheduled_dispatch
        # asynchronously, as its schedule would: the same loop runs it.
        route_async_invocations(self.scheduler.invoke_async)
        self._write_state_file()
        logger.info(
            "local stack %s: API %s, callbacks %s, simulator %s",
            self.stack_name,
            self.api_url,
            self.callback_url,
            self.simulator.url,
        )

    def _rules(self, definitions: Mapping[str, tpl.FunctionDefinition]) -> list[tuple[LocalFunction, float]]:
        """(function, seconds between invocations) for each rate rule of a function this stack runs."""
        rules: list[tuple[LocalFunction, float]] = []
        for logical_id, function in self.functions.items():
            for expression in definitions[logical_id].schedule_events:
                period = tpl.rate_seconds(expression)
                if period is None:
                    logger.warning("%s: only rate(...) rules fire locally, not %r", logical_id, expression)
                    continue
                rules.append((function, self.rule_interval if self.rule_interval is not None else float(period)))
        return rules

    # -- stop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops everything this stack started (each step even when an earlier one failed)."""
        if not self._started:
            return
        self._started = False
        for poller in self.pollers:
            poller.request_stop()
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.scheduler is not None:
            steps.append(("asynchronous invocations", lambda: route_async_invocations(None)))
            steps.append(("scheduler", self.scheduler.stop))
        steps.extend((f"poller {p.source.queue_logical_id}", p.stop) for p in self.pollers)
        if self.bridge is not None:
            steps.append(("http bridge", self.bridge.stop))
        steps.extend((f"function URL of {logical_id}", bridge.stop) for logical_id, bridge in self.url_bridges.items())
        if self.simulator is not None:
            steps.append(("simulator", self.simulator.stop))
        steps.append(("state file", self._remove_state_file))
        steps.append(("moto", self.moto.stop))
        if self._stdout is not None:
            steps.append(("stdout", self._stdout.restore))
        steps.append(("environment", self._restore_env))
        if self._private_state_dir is not None:
            steps.append(("private state dir", self._remove_private_state_dir))
        for name, step in steps:
            try:
                step()
            except Exception:
                logger.exception("stopping the %s failed", name)
        self.scheduler = None
        self.pollers = []
        self.functions.clear()
        self.url_bridges = {}
        self._stdout = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _require(value: Any, what: str) -> Any:
        if value is None:
            raise RuntimeError(f"the local stack is not started (no {what})")
        return value

    def _set_env(self, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if name not in self._saved_env:
                self._saved_env[name] = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
                self._env.pop(name, None)
            else:
                os.environ[name] = value
                self._env[name] = value

    def _ensure_env(self) -> None:
        """Puts the stack's environment back if something (a test's monkeypatch) changed it meanwhile."""
        if not self._saved_env:
            return
        changed = False
        for name, value in self._env.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
                changed = True
        if changed:
            logger.debug("the local stack's environment was changed; restored it for the invocation")

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        self._forget_wiring()

    @staticmethod
    def _forget_wiring() -> None:
        """Drops clients and settings the runtime package cached under another environment."""
        try:
            from sms_gateway import bootstrap
        except ImportError:
            return
        bootstrap.reset()

    def _write_state_file(self) -> None:
        existing = read_stack_file(self.state_dir)
        if existing is not None and _is_other_live_process(existing.get("pid")):
            logger.warning(
                "%s belongs to another running local stack (pid %s); not overwriting it",
                self.state_file,
                existing.get("pid"),
            )
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "api_url": self.api_url,
            "function_urls": self.function_urls,
            "callback_url": self.callback_url,
            "simulator_url": self.simulator_url,
            "moto_endpoint": self.moto_endpoint,
            "stack_name": self.stack_name,
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "env": self.env,
        }
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.state_file)

    def _remove_private_state_dir(self) -> None:
        if self._private_state_dir is not None:
            shutil.rmtree(self._private_state_dir, ignore_errors=True)
            self._state_dir = self._private_state_dir = None

    def _remove_state_file(self) -> None:
        state = read_stack_file(self.state_dir)
        # Another stack may have started since and written its own file: leave that one alone.
        if state is not None and state.get("pid") == os.getpid() and state.get("moto_endpoint") == self.moto_endpoint:
            self.state_file.unlink(missing_ok=True)


def _maximum_concurrency(template: Mapping[str, Any], function_id: str, queue_id: str) -> int:
    """ScalingConfig.MaximumConcurrency of the function's SQS event on `queue_id` (default 2), at most 2: a queue
    consumer runs one invocation at a time here (its lock), so batches received further ahead would only wait,
    in flight, for their visibility timeout to run out (the notifier's 50 and the dispatcher's 10 on AWS stay 2
    here)."""
    events = ((template["Resources"][function_id].get("Properties") or {}).get("Events")) or {}
    for event in events.values():
        spec = event.get("Properties") or {}
        queue = spec.get("Queue")
        target = queue.get("Fn::GetAtt") if isinstance(queue, dict) else None
        if event.get("Type") == "SQS" and isinstance(target, list) and target[0] == queue_id:
            return min(int(tpl.resolved(template, (spec.get("ScalingConfig") or {}).get("MaximumConcurrency", 2))), 2)
    return 2


def _is_other_live_process(pid: Any) -> bool:
    if not isinstance(pid, int) or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def aws_environment(endpoint: str) -> dict[str, str | None]:
    """Points boto3 in this process at moto."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
