"""An in-memory store that behaves like DynamoDB seen from Lambda: conditional writes done in memory, each request
answered after a fixed network latency, so a benchmark measures the dispatcher rather than moto."""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from sms_gateway.domain.routing import RouteTable
from sms_gateway.ports import RecordedHold
from tests.fakes import HeldScopes, InMemoryStore

# What one small DynamoDB request (GetItem, UpdateItem, BatchGetItem of 100 keys) takes from a Lambda function in
# the same region: AWS quotes single-digit milliseconds; 5 ms is the middle of the 3 to 8 ms usually seen.
DYNAMODB_LATENCY = 0.005

F = TypeVar("F", bound=Callable[..., Any])


def _request(operation: str) -> Callable[[F], F]:
    """One DynamoDB request: waits the latency (sleeping, which releases the GIL as a socket wait does), then
    does the store's work in memory, timing that work's CPU so the benchmark can take it off ours."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def request(self: RemoteStore, *args: Any, **kwargs: Any) -> Any:
            time.sleep(self.latency)
            started = time.thread_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                self._count(operation, time.thread_time() - started)

        return request  # type: ignore[return-value]

    return wrap


class RemoteStore(InMemoryStore):
    """tests.fakes.InMemoryStore (the same conditional semantics as the DynamoDB adapter) behind a network wait,
    plus what the dispatcher also needs of the table: rate-limit counters and the route table."""

    def __init__(self, default_upstream: str, latency: float = DYNAMODB_LATENCY) -> None:
        super().__init__()
        self.latency = latency
        self.requests: Counter[str] = Counter()
        self.cpu_seconds = 0.0
        self.routes = RouteTable(default_upstream=default_upstream)
        self.counters: dict[tuple[str, int], int] = {}
        self.held_scopes = HeldScopes()
        self._meter_lock = threading.Lock()

    def _count(self, operation: str, cpu: float) -> None:
        with self._meter_lock:
            self.requests[operation] += 1
            self.cpu_seconds += cpu

    def reset_meter(self) -> None:
        with self._meter_lock:
            self.requests.clear()
            self.cpu_seconds = 0.0

    # The requests the dispatcher makes, each one DynamoDB request in adapters/dynamodb*.py.
    # get_messages reads through get_messages_by_key (an invocation's single sends are read with it alone).
    get_messages_by_key = _request("BatchGetItem")(InMemoryStore.get_messages_by_key)
    get_account = _request("GetItem")(InMemoryStore.get_account)
    claim_for_dispatch = _request("UpdateItem")(InMemoryStore.claim_for_dispatch)
    release_claim = _request("UpdateItem")(InMemoryStore.release_claim)
    move_claim = _request("UpdateItem")(InMemoryStore.move_claim)
    transition = _request("UpdateItem")(InMemoryStore.transition)
    # A transaction of the account item alone: its token makes a resent request apply once.
    refund_credits = _request("TransactWriteItems")(InMemoryStore.refund_credits)
    link_upstream_id = _request("UpdateItem")(InMemoryStore.link_upstream_id)

    @_request("GetItem")
    def route_table(self, default_upstream: str) -> RouteTable:
        return self.routes.model_copy(update={"default_upstream": default_upstream})

    @_request("UpdateItem")
    def take_tokens(self, scope: str, second: int, wanted: int, limit: int) -> int:
        # The adapter's condition (`used <= limit - n`) in one step: DynamoDB applies a conditional write atomically.
        with self._lock:
            self.held_scopes.check(scope, second)
            used = self.counters.get((scope, second), 0)
            granted = max(0, min(wanted, limit - used))
            self.counters[(scope, second)] = used + granted
            return granted

    @_request("UpdateItem")
    def give_back_tokens(self, scope: str, second: int, count: int) -> None:
        with self._lock:
            if (scope, second) in self.counters and count > 0:
                self.counters[(scope, second)] -= count

    # The adapter writes a hold's end to the scope's hold item (a conditional UpdateItem, which only lengthens it),
    # then the counters no hold recorded before shut in BatchWriteItems of 25 (at most 600: 24); counted as one, as
    # a benchmark meets a 429 only if its upstream answers one.
    @_request("BatchWriteItem")
    def hold_scope(self, scope: str, until: float, *, first_second: int, seconds: int, **when: Any) -> RecordedHold:
        with self._lock:
            return self.held_scopes.hold(scope, until, first_second=first_second, seconds=seconds, **when)

    @_request("BatchWriteItem")
    def shut_more_of_hold(self, scope: str, until: float, *, first_second: int, seconds: int) -> RecordedHold | None:
        with self._lock:
            return self.held_scopes.shut_further(scope, until, first_second=first_second, seconds=seconds)
