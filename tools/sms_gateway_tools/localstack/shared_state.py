"""The local stack runs its functions as threads of one process, where Lambda gives each invocation a container of
its own. Two pieces of Powertools' state are process-wide and assume one invocation at a time per process:

- the HTTP resolvers keep the request they are resolving in class attributes of `BaseRouter` (`current_event`,
  `lambda_context`), shared by every resolver, and in the resolver's `context` dict (route arguments, the parsed
  request): two HTTP invocations at once (the api's send and the webhook's DLR, or two DLRs) would read each
  other's request;
- `Metrics` keeps one metric set per process (class attributes): an invocation flushing it while another adds to
  it can fail with "dictionary changed size during iteration".

`let_functions_run_side_by_side()` keeps the resolvers' three attributes per thread and makes the metric set's
changes and flushes take turns, so each function can run on its own lock, and an HTTP function several
invocations at once (`LocalStack(serialize_invocations=False, http_concurrency=N)`). An invocation's flush may
carry a metric another invocation added meanwhile: same namespace and service, so the totals are right. The
deployed functions never call it."""

from __future__ import annotations

import functools
import threading
import warnings
from abc import ABCMeta
from collections.abc import Callable
from typing import Any

# What a resolver keeps of the request it is resolving: the event, the Lambda context, and its `context` dict
# (route arguments, the parsed request), which is per resolver instance on Lambda and per thread here (a thread
# resolves one request at a time), so concurrent invocations of one function keep theirs apart too.
PER_THREAD: dict[str, Callable[[], Any] | None] = {"current_event": None, "lambda_context": None, "context": dict}

_state = threading.local()
_installed = threading.RLock()


class _PerThread:
    """A data descriptor on `BaseRouter`: `self.current_event` (an instance read) and `BaseRouter.current_event`
    (a class read) both see the value the current thread set."""

    def __init__(self, name: str, default: Callable[[], Any] | None = None) -> None:
        self.name = name
        self.default = default

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        try:
            return getattr(_state, self.name)
        except AttributeError:
            if self.default is None:
                raise AttributeError(f"no request is being resolved in this thread ({self.name})") from None
        value = self.default()
        setattr(_state, self.name, value)
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(_state, self.name, value)


class _RouterMeta(ABCMeta):
    """`BaseRouter.current_event = event` (what `resolve()` does) is a class assignment: it goes to the metaclass,
    which stores it for the current thread instead of replacing the descriptor."""

    def __setattr__(cls, name: str, value: Any) -> None:
        descriptor = cls.__dict__.get(name)
        if isinstance(descriptor, _PerThread):
            descriptor.__set__(None, value)
            return
        super().__setattr__(name, value)


METRIC_SET_METHODS = (
    "add_metric",
    "add_dimension",
    "add_dimensions",
    "add_metadata",
    "set_timestamp",
    "serialize_metric_set",
    "clear_metrics",
    "flush_metrics",
)
_metric_set_turns = threading.RLock()


def make_methods_take_turns(cls: type, names: tuple[str, ...], turns: threading.RLock) -> None:
    """Wraps each named method of `cls` so that calls of any of them, from any thread, run one at a time (holding
    `turns`, reentrant: one may call another). Idempotent: a method already wrapped is left as it is."""
    with _installed:
        for name in names:
            method = getattr(cls, name)
            if getattr(method, "takes_turns", False):
                continue

            @functools.wraps(method)
            def in_turn(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
                with turns:
                    return _method(*args, **kwargs)

            in_turn.takes_turns = True  # type: ignore[attr-defined]
            setattr(cls, name, in_turn)


def let_functions_run_side_by_side() -> None:
    """Idempotent; for the local stack and tests only."""
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    with _installed:
        if type(BaseRouter) is not _RouterMeta:
            for name, default in PER_THREAD.items():
                type.__setattr__(BaseRouter, name, _PerThread(name, default))
            BaseRouter.__class__ = _RouterMeta  # type: ignore[method-assign,assignment]
    make_methods_take_turns(AmazonCloudWatchEMFProvider, METRIC_SET_METHODS, _metric_set_turns)
    # An invocation whose metrics another function's flush already carried finds the set empty: expected here.
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
