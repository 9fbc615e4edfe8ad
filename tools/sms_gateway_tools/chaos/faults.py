"""Faults the chaos run injects into the gateway's own process: a dispatcher killed mid-submit, the api's storing and
queueing of a send failing."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx

from sms_gateway_tools.localstack.lambdas import Handler, LocalFunction


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
    simulator's own count also holds repeats after answers the dispatcher gave up waiting for). With the dispatcher
    function given to `installed`, it keeps them by invocation, so it knows which accepts died with a kill: the
    killed message's, and those its siblings in the same invocation had heard but maybe not yet recorded."""

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
        # The references the current dispatcher invocation heard accepted (None outside one), and those of each
        # invocation that was killed.
        self._this_invocation: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
            "chaos_dispatcher_invocation", default=None
        )
        self._killed_invocations: list[set[str]] = []
        self._lock = threading.Lock()

    def before_submit(self, client_ref: str) -> None:
        with self._lock:
            if client_ref in self.heard_accepted:
                self.resubmitted_after_heard_accept.append(client_ref)

    def answered(self, client_ref: str) -> None:
        with self._lock:
            self.heard_accepted.add(client_ref)
            heard_here = self._this_invocation.get()
            if heard_here is not None:
                heard_here.add(client_ref)

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
            # Kept by reference: a sibling that hears its answer as the invocation goes down is in it too.
            self._killed_invocations.append(self._this_invocation.get() or {client_ref})
            return True

    @property
    def accepted_then_killed(self) -> frozenset[str]:
        """The references a dispatcher read 'accepted' for in an invocation that was then killed: the only ones
        the dispatcher taking their lapsed claims over may ask a deduplicating upstream again."""
        with self._lock:
            return frozenset(ref for heard in self._killed_invocations for ref in heard)

    def one_invocation_each(self, handler: Handler) -> Handler:
        """The dispatcher's `handler`, each call an invocation of its own for the accepts it hears (its message
        tasks and threads inherit the context)."""

        def invocation(event: Any, context: Any) -> Any:
            token = self._this_invocation.set(set())
            try:
                return handler(event, context)
            finally:
                self._this_invocation.reset(token)

        return invocation

    @contextlib.contextmanager
    def installed(self, dispatcher: LocalFunction | None = None) -> Iterator[KillAfterSubmit]:
        """Wraps the simulator provider's `submit`, and `dispatcher`'s handler (the local stack's dispatcher
        function: without it, a kill is known to lose its own message's accept only) while it lasts."""
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
        unwrapped = dispatcher.handler if dispatcher is not None else None
        if dispatcher is not None:
            dispatcher.handler = self.one_invocation_each(dispatcher.handler)
        try:
            yield self
        finally:
            SimulatorProvider.submit = original  # type: ignore[method-assign]
            if dispatcher is not None and unwrapped is not None:
                dispatcher.handler = unwrapped


class SendStepFailed(Exception):
    """Stands for DynamoDB or SQS failing the api's request after botocore's own retries gave up."""


class FailingSendSteps:
    """Makes the api's storing or queueing of a send fail, at one of three steps, each for a `rate` share:

    - `store`: a chunk of the send's messages is refused by DynamoDB (before it is written);
    - `queue`: the send's dispatch records are refused by SQS (none taken);
    - `queue_answer_lost`: SQS takes the records but its answer never comes (the api cannot know it did).

    The api undoes such a send (logic/send.py: refunds it, fails what no dispatcher claimed) and answers 503, unless a
    dispatcher claimed one of its messages first (the third step only), when the send stands. The client sends it
    again under the same Idempotency-Key. Choices are stable per seed: by the chunk's first recipient, or by the
    batch's reference; each chosen one fails once."""

    STEPS = ("store", "queue", "queue_answer_lost")

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed
        self.injected: Counter[str] = Counter()
        # reference_id -> account_id of each batch whose queueing failed here (its send undone, unless it stood).
        self.unqueued_batches: dict[str, str] = {}
        self._failed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _fails(self, step: str, key: str) -> bool:
        """Once per chosen step and key: a chunk that failed is stored when the client sends it again."""
        if not chosen(self.seed, f"{step}:{key}", self.rate):
            return False
        with self._lock:
            if (step, key) in self._failed:
                return False
            self._failed.add((step, key))
            self.injected[step] += 1
        return True

    @contextlib.contextmanager
    def installed(self) -> Iterator[FailingSendSteps]:
        from sms_gateway.adapters.dynamodb import DynamoStore
        from sms_gateway.adapters.sqs import SqsDispatchQueue

        add_messages, enqueue = DynamoStore.add_messages, SqsDispatchQueue.enqueue
        faults = self

        def add_messages_or_fail(store: DynamoStore, batch: Any, messages: Any) -> None:
            if messages and faults._fails("store", messages[0].msisdn):
                raise SendStepFailed(f"DynamoDB refused a chunk of batch {batch.reference_id} (injected)")
            add_messages(store, batch, messages)

        def enqueue_or_fail(queue: SqsDispatchQueue, commands: Any) -> None:
            key = str(commands[0].reference_id) if commands else ""
            if commands and faults._fails("queue", key):
                faults.unqueued_batches[key] = commands[0].account_id
                raise SendStepFailed(f"SQS refused the records of batch {key} (injected)")
            enqueue(queue, commands)
            if commands and faults._fails("queue_answer_lost", key):
                faults.unqueued_batches[key] = commands[0].account_id
                raise SendStepFailed(f"SQS took the records of batch {key}, its answer was lost (injected)")

        DynamoStore.add_messages = add_messages_or_fail  # type: ignore[method-assign,assignment]
        SqsDispatchQueue.enqueue = enqueue_or_fail  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            DynamoStore.add_messages = add_messages  # type: ignore[method-assign]
            SqsDispatchQueue.enqueue = enqueue  # type: ignore[method-assign]
