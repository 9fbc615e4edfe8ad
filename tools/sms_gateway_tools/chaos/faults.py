"""Faults the chaos run injects into the gateway's own process: a dispatcher killed mid-submit."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from typing import Any


class DispatcherKilled(BaseException):
    """Stands for the Lambda container dying: a BaseException, so no `except Exception` in the handler, the
    batch processor or the poller treats it as an ordinary failure; nothing after it runs."""


def chosen(seed: int, key: str, rate: float) -> bool:
    """A stable choice of `rate` of the keys (the same keys for the same seed, whatever the thread timing)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


class KillAfterSubmit:
    """Kills the dispatcher after the upstream accepted a message and before its status is written, for a
    `rate` share of messages (each at most once), by wrapping the simulator provider's `submit`."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed
        self.killed: set[str] = set()
        self._lock = threading.Lock()

    def should_kill(self, client_ref: str) -> bool:
        if not chosen(self.seed, client_ref, self.rate):
            return False
        with self._lock:
            if client_ref in self.killed:
                return False
            self.killed.add(client_ref)
            return True

    @contextlib.contextmanager
    def installed(self) -> Iterator[KillAfterSubmit]:
        from sms_gateway.adapters.providers.simulator import SimulatorProvider

        original = SimulatorProvider.submit
        faults = self

        async def submit_then_maybe_die(provider: SimulatorProvider, request: Any) -> Any:
            result = await original(provider, request)
            if faults.should_kill(request.client_ref):
                raise DispatcherKilled(request.client_ref)
            return result

        SimulatorProvider.submit = submit_then_maybe_die  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            SimulatorProvider.submit = original  # type: ignore[method-assign]
