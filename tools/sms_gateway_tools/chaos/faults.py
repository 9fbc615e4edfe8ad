"""Faults the chaos run injects into the gateway's own process: a dispatcher killed mid-submit."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx


class DispatcherKilled(BaseException):
    """Stands for the Lambda container dying: a BaseException, so no `except Exception` in the handler, the
    batch processor or the poller treats it as an ordinary failure; nothing after it runs."""


def chosen(seed: int, key: str, rate: float) -> bool:
    """A stable choice of `rate` of the keys (the same keys for the same seed, whatever the thread timing)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


class KillAfterSubmit:
    """Kills the dispatcher after the upstream accepted a message and before its status is written, for a
    `rate` share of messages (each at most once), by wrapping the simulator provider's `submit`.

    It also keeps the dispatcher's side of every submit: which references it heard accepted, and each submit
    of a reference it had already heard accepted (a second send the dispatcher knew better than to make; the
    simulator's own count also holds repeats after answers the dispatcher gave up waiting for)."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed
        self.killed: set[str] = set()
        self.heard_accepted: set[str] = set()
        self.resubmitted_after_heard_accept: list[str] = []
        # Submits that ended without an answer the dispatcher read (timeouts, dropped connections): their
        # references, and the count by the transport error's type name.
        self.unanswered_refs: set[str] = set()
        self.unanswered: Counter[str] = Counter()
        self._lock = threading.Lock()

    def before_submit(self, client_ref: str) -> None:
        with self._lock:
            if client_ref in self.heard_accepted:
                self.resubmitted_after_heard_accept.append(client_ref)

    def answered(self, client_ref: str) -> None:
        with self._lock:
            self.heard_accepted.add(client_ref)

    def not_answered(self, client_ref: str, error: BaseException) -> None:
        with self._lock:
            self.unanswered_refs.add(client_ref)
            self.unanswered[type(error).__name__] += 1

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
            faults.before_submit(request.client_ref)
            try:
                result = await original(provider, request)
            except Exception as error:
                # An answer read (a 5xx, a refusal) has no transport error behind it. A cancelled submit (a
                # sibling record's kill) is not counted: its claim stays, so it must never be submitted again.
                if isinstance(error.__cause__, httpx.TransportError):
                    faults.not_answered(request.client_ref, error.__cause__)
                raise
            faults.answered(request.client_ref)
            if faults.should_kill(request.client_ref):
                raise DispatcherKilled(request.client_ref)
            return result

        SimulatorProvider.submit = submit_then_maybe_die  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            SimulatorProvider.submit = original  # type: ignore[method-assign]
