"""moto in this process, on a free 127.0.0.1 port: DynamoDB, SQS, EventBridge Scheduler and SSM."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

from sms_gateway_tools.localstack.shared_state import make_methods_take_turns

logger = logging.getLogger("sms_gateway_tools.localstack.moto")

# DynamoDB's write actions: each applies to its items atomically on AWS; and its reads, which on AWS see an item
# whole, before or after a write (moto edits a stored item in place, and a read serialising it meanwhile raised).
_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")
_DYNAMODB_READS = ("get_item", "batch_get_item", "query", "scan", "transact_get_items")
_dynamodb_writes_turns = threading.RLock()
# How long DynamoDB holds a transaction's ClientRequestToken, and how many the local stack's moto holds at most.
_TRANSACTION_TOKEN_SECONDS = 600
_TRANSACTION_TOKENS_HELD = 10_000
# SQS's limit on a received message's visibility: 12 hours from when it was received.
_SQS_MAX_VISIBILITY_MS = 43200 * 1000
# The embedded server running in this process (at most one: moto's backends are process-wide).
_running: EmbeddedMoto | None = None
_running_turns = threading.Lock()


def running_embedded_moto() -> str | None:
    """The endpoint of the moto server a local stack runs in this process ("" while it starts), None when none runs.
    moto keeps one state per process: a `mock_aws` entered meanwhile resets it under that stack (its queues and keys
    gone), and the stack's own invocations put its AWS_ENDPOINT_URL back into os.environ."""
    running = _running
    return None if running is None else running.endpoint


def serialise_dynamodb_writes() -> None:
    """Makes moto apply DynamoDB writes one at a time, in this process, from now on (idempotent). DynamoDB applies
    a conditional write to its item atomically; moto's handler does not lock (it even reads the old item before its
    backend applies the write), so two threads' conditional updates of one item can both succeed inside moto: a
    double refund that AWS would never allow. The consumers handle records concurrently (the dispatcher's messages,
    the notifier's records), so the local stack and the tests need DynamoDB's semantics here, not moto's. Reads take
    their turn too: moto updates a stored item in place, and a Query serialising that item as an UpdateItem changed it
    raised `dictionary changed size during iteration` (a 500; until 2026-12-07), where AWS shows a read the item
    whole, before or after the write."""
    from moto.dynamodb.responses import DynamoHandler

    make_methods_take_turns(DynamoHandler, _DYNAMODB_WRITES + _DYNAMODB_READS, _dynamodb_writes_turns)
    make_transactions_copy_only_their_items()


_transaction = threading.local()


def make_transactions_copy_only_their_items() -> None:
    """moto's transact_write_items deep-copies each table a transaction touches before it starts, to roll back if
    the transaction is cancelled: time that grows with the table (0.7 s at 10,000 items), where DynamoDB's does not,
    and every refund is a transaction (adapters/dynamodb.py, move_and_refund). While writes take turns
    (serialise_dynamodb_writes), nothing else changes the table during a transaction, so a copy of the table whose
    items the transaction names are deep copies and the rest shared is the same rollback. Idempotent."""
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    if getattr(DynamoDBBackend.transact_write_items, "_copies_only_its_items", False):
        return
    original = DynamoDBBackend.transact_write_items

    def named_items(backend: Any, transact_items: list[dict[str, Any]]) -> dict[str, set[tuple[Any, Any]]]:
        named: dict[str, set[tuple[Any, Any]]] = {}
        for entry in transact_items:
            _, operation = next(iter(entry.items()))
            table = backend.tables.get(operation.get("TableName"))
            if table is None:
                continue
            key = operation.get("Key") or operation.get("Item") or {}
            hash_value = DynamoType(key[table.hash_key_attr]) if table.hash_key_attr in key else None
            range_attr = table.range_key_attr
            range_value = DynamoType(key[range_attr]) if range_attr and range_attr in key else None
            named.setdefault(table.name, set()).add((hash_value, range_value))
        return named

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        _transaction.named = named_items(self, transact_items)
        try:
            return original(self, transact_items)
        finally:
            _transaction.named = None

    def table_snapshot(table: Any, named: set[tuple[Any, Any]]) -> Any:
        snapshot = copy.copy(table)
        items: dict[Any, Any] = (
            defaultdict(table.items.default_factory, table.items)
            if isinstance(table.items, defaultdict)
            else dict(table.items)
        )
        for hash_value in {hash_value for hash_value, _ in named if hash_value in table.items}:
            if not table.has_range_key:
                items[hash_value] = copy.deepcopy(table.items[hash_value])
                continue
            partition = items[hash_value] = dict(table.items[hash_value])
            for range_value in {r for h, r in named if h == hash_value and r in partition}:
                partition[range_value] = copy.deepcopy(partition[range_value])
        snapshot.items = items
        return snapshot

    class CopyOnlyNamedItems:
        """Stands in for the `copy` module inside moto.dynamodb.models."""

        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            named = getattr(_transaction, "named", None)
            if named is None or not isinstance(value, Table):
                return copy.deepcopy(value, memo)
            return table_snapshot(value, named.get(value.name, set()))

    transact_write_items._copies_only_its_items = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    models.copy = CopyOnlyNamedItems()  # type: ignore[assignment]


def remember_transaction_tokens() -> None:
    """Makes moto honour a TransactWriteItems' ClientRequestToken for 10 minutes, as DynamoDB does, from now on
    (idempotent): the same transaction sent again under its token is answered as it was the first time and not
    applied again, and other writes under the token are refused with IdempotentParameterMismatchException, nothing
    applied. moto ignores the token, so under `make dev` an operator's top-up run again with its --request-id
    (docs/operators.md) added the credits again, and another top-up under the id went through. Only a transaction
    that was applied is remembered (a cancelled one is not, as on AWS), by moto's account and region, and forgotten
    when moto is reset; past _TRANSACTION_TOKENS_HELD the oldest are dropped."""
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler.transact_write_items, "_remembers_tokens", False):
        return
    original = DynamoHandler.transact_write_items

    class IdempotentParameterMismatch(DynamodbException):
        def __init__(self, token: str) -> None:
            super().__init__(
                ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
                f"ClientRequestToken {token} was used for another transaction in the last "
                f"{_TRANSACTION_TOKEN_SECONDS // 60} minutes",
            )

    def tokens_held(backend: Any) -> OrderedDict[str, tuple[float, str, Any]]:
        """token -> (when it expires, the fingerprint of its writes, the answer), oldest first. Kept on moto's
        backend, so that a reset (a stack's start and stop, each test's mock_aws) forgets them with the tables."""
        held: OrderedDict[str, tuple[float, str, Any]] | None = getattr(backend, "_transaction_tokens", None)
        if held is None:
            held = OrderedDict()
            backend._transaction_tokens = held
        now = time.monotonic()
        while held and next(iter(held.values()))[0] <= now:
            held.popitem(last=False)
        return held

    @functools.wraps(original)
    def transact_write_items(self: Any) -> Any:
        token = self.body.get("ClientRequestToken")
        if not token:
            return original(self)
        fingerprint = hashlib.sha256(
            json.dumps(self.body["TransactItems"], sort_keys=True, default=str).encode()
        ).hexdigest()
        # Looking the token up, applying and remembering it are one step, as on DynamoDB.
        with _dynamodb_writes_turns:
            held = tokens_held(self.dynamodb_backend)
            if token in held:
                _, applied, answer = held[token]
                if applied != fingerprint:
                    raise IdempotentParameterMismatch(token)
                return answer
            answer = original(self)
            held[token] = (time.monotonic() + _TRANSACTION_TOKEN_SECONDS, fingerprint, answer)
            while len(held) > _TRANSACTION_TOKENS_HELD:
                held.popitem(last=False)
            return answer

    transact_write_items._remembers_tokens = True  # type: ignore[attr-defined]
    DynamoHandler.transact_write_items = transact_write_items  # type: ignore[method-assign]


def count_sqs_visibility_from_each_receive() -> None:
    """Makes moto cap a received message's visibility at 12 h from its latest receive, as SQS does, from now on
    (idempotent). moto counts the 12 h from when the message was sent, so a record that waits longer than that in
    hops (a settle check waits out the 48 h DLR wait hidden just under 12 h at a time, consumers.py) is refused its
    second hop locally: it would come back every few minutes and be redriven to the notify DLQ under `make dev`,
    where on AWS it waits out its hours. Only the limit's start changes: moto's change of visibility otherwise."""
    from moto.core.utils import unix_time_millis
    from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid
    from moto.sqs.models import Message, SQSBackend

    if getattr(SQSBackend.change_message_visibility, "_counts_from_each_receive", False):
        return
    mark_received = Message.mark_received

    def mark_received_now(self: Any, visibility_timeout: int | None = None) -> None:
        self.latest_receive_timestamp = int(unix_time_millis())
        mark_received(self, visibility_timeout)

    def change_message_visibility(self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
        queue = self.get_queue(queue_name)
        for message in queue._messages:
            if not message.had_receipt_handle(receipt_handle):
                continue
            received = getattr(message, "latest_receive_timestamp", None) or message.sent_timestamp
            if unix_time_millis() + int(visibility_timeout) * 1000 - received > _SQS_MAX_VISIBILITY_MS:
                raise InvalidParameterValue(
                    f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                    "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
                )
            message.change_visibility(visibility_timeout)
            if message.visible and message in queue.pending_messages:
                queue.pending_messages.remove(message)
            return
        raise ReceiptHandleIsInvalid

    change_message_visibility._counts_from_each_receive = True  # type: ignore[attr-defined]
    Message.mark_received = mark_received_now  # type: ignore[method-assign]
    SQSBackend.change_message_visibility = change_message_visibility  # type: ignore[method-assign]


# SQS's actions on a queue's messages, each atomic on AWS; moto's backend edits its queues without a lock.
_SQS_ACTIONS = (
    "send_message",
    "send_message_batch",
    "delete_message",
    "delete_message_batch",
    "change_message_visibility",
    "change_message_visibility_batch",
    "purge_queue",
    "get_queue_attributes",
)
_sqs_turns = threading.RLock()
# How often a long-polling receive looks again while the visible messages are in groups other receivers hold.
_SQS_POLL_SECONDS = 0.05


def serialise_sqs_actions() -> None:
    """Makes moto apply SQS actions one at a time, in this process, from now on (idempotent; also caps visibility
    from each receive: count_sqs_visibility_from_each_receive). moto's backend edits a queue's messages without a
    lock: a receive reading a FIFO queue's in-flight messages while another thread's delete or change of visibility
    edited them raised `Set changed size during iteration` (until 2026-12-07), a delete could miss a message another
    thread's delete had just rebuilt the list without (ReceiptHandleIsInvalid), and two receives at once could both
    hand out messages of one FIFO group. A long-polling receive waits out of turn (so that it never holds up the
    senders it waits for): for the next message sent to an empty queue, or _SQS_POLL_SECONDS while the visible ones
    are held in other receivers' groups."""
    from moto.sqs.models import SQSBackend

    count_sqs_visibility_from_each_receive()
    make_methods_take_turns(SQSBackend, _SQS_ACTIONS, _sqs_turns)
    receive = SQSBackend.receive_message
    if getattr(receive, "takes_turns", False):
        return

    @functools.wraps(receive)
    def receive_in_turn(
        self: Any, queue_name: str, count: int, wait_seconds_timeout: int, *args: Any, **kwargs: Any
    ) -> Any:
        waits_until = time.monotonic() + (wait_seconds_timeout or 0)
        while True:
            with _sqs_turns:
                received = receive(self, queue_name, count, 0, *args, **kwargs)
            left = waits_until - time.monotonic()
            if received or left <= 0:
                return received
            queue = self.get_queue(queue_name)
            if queue.messages:
                # Visible, but in groups other receivers hold (or delayed out of this receive): look again soon.
                time.sleep(min(_SQS_POLL_SECONDS, left))
            else:
                # Woken by the next message sent (moto notifies its queue's condition), as SQS's long poll is.
                queue.wait_for_messages(min(1.0, left))

    receive_in_turn.takes_turns = True  # type: ignore[attr-defined]
    SQSBackend.receive_message = receive_in_turn  # type: ignore[method-assign]


# Where Lambda's asynchronous Invoke of a function the local stack runs goes (the sweeper's release of a scheduled
# batch: adapters/scheduler.LambdaBatchRelease): set while a stack runs; None, moto's own (which knows no function).
_async_invocations: list[Callable[[str, Any], bool]] = []


def route_async_invocations(invoke: Callable[[str, Any], bool] | None) -> None:
    """From now on, an asynchronous Lambda Invoke (`InvocationType` `Event`) goes to `invoke(function name or ARN,
    event)`, which runs it as Lambda would and answers whether the function is one it runs (else moto answers as it
    does); None puts moto's own back. moto stores no function the stack runs: the handlers run in this process."""
    from moto.awslambda.responses import LambdaResponse

    with _running_turns:
        _async_invocations[:] = [invoke] if invoke is not None else []
        if getattr(LambdaResponse.invoke, "routed_locally", False):
            return
        original = LambdaResponse.invoke

        @functools.wraps(original)
        def invoke_locally(self: Any) -> Any:
            routed = list(_async_invocations)
            if routed and self.headers.get("X-Amz-Invocation-Type") == "Event":
                name = urllib.parse.unquote(self.path.rstrip("/").rsplit("/", 2)[-2])
                if routed[0](name, json.loads(self.body or "{}")):
                    return 202, {"status": "202"}, ""
            return original(self)

        invoke_locally.routed_locally = True  # type: ignore[attr-defined]
        LambdaResponse.invoke = invoke_locally  # type: ignore[method-assign]


class EmbeddedMoto:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> str:
        global _running
        with _running_turns:
            if _running is not None:
                raise RuntimeError(
                    f"another local stack's moto runs in this process ({_running.endpoint or 'starting'}): moto's "
                    "state is process-wide, so starting a second one would reset the first's tables and queues under "
                    "it; stop that stack first"
                )
            _running = self
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> str:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: keep that off the console unless debugging.
        werkzeug = logging.getLogger("werkzeug")
        if not werkzeug.isEnabledFor(logging.DEBUG):
            werkzeug.setLevel(logging.WARNING)
        serialise_dynamodb_writes()
        remember_transaction_tokens()
        serialise_sqs_actions()
        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint = f"http://{host}:{port}"
        # moto's backends are process-wide: start from a clean slate.
        self.reset()
        logger.info("moto listening on %s", self.endpoint)
        return self.endpoint

    def reset(self) -> None:
        if not self.endpoint:
            return
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310 (our own http URL)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            global _running
            with _running_turns:
                if _running is self:
                    _running = None

    def _stop(self) -> None:
        server = self._server
        self._server = None
        if server is None:
            return
        try:
            self.reset()
        except OSError as error:
            logger.debug("moto reset on stop failed: %s", error)
        server.stop()
        # ThreadedMotoServer.stop() shuts the loop down but leaves the listening socket open.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()
        self.endpoint = ""


def queue_contents(queue_url: str) -> list[Any]:
    """The messages moto holds for a queue, visible or hidden (its `Message` objects: `body`, `visible_at` in epoch
    ms), read from its memory: the embedded server and `mock_aws` both keep their backends in this process. SQS
    itself only counts hidden messages, and the local tools need to tell a settle check waiting out its hours, or a
    notification waiting for its retry, from work in progress."""
    from moto.sqs.models import sqs_backends

    name = queue_url.rsplit("/", 1)[-1]
    return [
        message
        for backend in list(sqs_backends.values())
        for regional in list(backend.values())
        for queue_name, queue in list(regional.queues.items())
        if queue_name == name
        for message in list(queue._messages)
    ]
