"""Idempotent sends: a repeated request under the same key returns the first answer and sends nothing again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta

from sms_gateway.domain.ids import new_batch_id
from sms_gateway.domain.models import KeyClaim, StoredAnswer
from sms_gateway.errors import GatewayError, IdTaken, InvalidRequest, KeyInProgress, KeyReused, NotDone
from sms_gateway.observability import logger
from sms_gateway.ports import IdempotencyStore

MAX_KEY_LENGTH = 255
# How long a send may hold its key before a retry takes it to have died: well over the `api` function's Timeout
# (template.yaml: 29 s, the HTTP API's limit), so a live request is never taken over.
SEND_LEASE = timedelta(seconds=90)


def request_key(header_value: str | None, ref_id: str | None) -> str | None:
    """The client's Idempotency-Key header wins; otherwise its own `ref_id` deduplicates (24 hours)."""
    if header_value is not None:
        key = header_value.strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        return f"key:{key}"
    return f"ref:{ref_id}" if ref_id else None


def canonical_body(body: str) -> str:
    """A JSON body as its value written one way (keys sorted, no spaces, characters unescaped), so that a retry that
    another JSON library wrote is the same request; any other body as it came."""
    try:
        value = json.loads(body)
    except ValueError:
        return body
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def run_once(
    store: IdempotencyStore,
    *,
    scope: str,
    key: str | None,
    request_fingerprint: str,
    now: datetime,
    produce: Callable[[KeyClaim | None], StoredAnswer],
    lease: timedelta | None = None,
    undo: Callable[[KeyClaim], StoredAnswer | None] | None = None,
    unversioned_fingerprint: str | None = None,
    retry_failed_at_once: bool = False,
) -> StoredAnswer:
    """Only a successful (2xx) answer is kept: a refused or failed request may be retried under its key.

    `unversioned_fingerprint`: the request's fingerprint as builds before 2026-12-06 made it, which a record they
    stored (it carries no FINGERPRINT_VERSION) is compared with, so that their requests' retries still get their
    answers (IdempotencyStore.begin); None when it is `request_fingerprint`.

    `produce` gets the claim on the key (None without a key): a send makes the batch the claim names. With a
    `lease` (sends: SEND_LEASE), a key whose request died holding it is taken over once the lease runs out, and
    the claim is `resumed`: the send finishes that batch (logic.send). A resumed request that fails keeps the key,
    since the batch may hold stored or charged messages that a fresh send under the key would send again; the
    next retry after the lease resumes it again. One that is refused (a GatewayError: too few credits for what its
    messages cost now, ...) has `undo` (logic.send.undo_standing_send) undo what the request it resumed left: a
    refused retry reaches no stored batch, so every later one would be refused too while the batch stayed charged.
    The undo returns None when nothing of that send stands: the key goes and the refusal is the answer. Otherwise
    it returns the answer of the send that stands (a dispatcher took some of it), kept under the key and given
    instead of the refusal, which would tell the client nothing was sent: it would send again. An undo that fails
    keeps the key and answers with its own error (a 500: the request may have been done in part), never the
    refusal; one that stops at a write DynamoDB left undecided (NotDone) is a 503, its key's lease ended, for the
    retry to finish the undo at once. Without `undo` the request leaves nothing that could stand (its claim names no
    batch: a group's creation), and a refused retry lets its key go. One that stops at a write DynamoDB left
    undecided (NotDone: it wrote nothing of it) is no refusal: nothing is undone, the key is kept with its lease
    ended (lapse), and the client's retry, told 503, resumes the send at once and finishes it.
    A leased request that is not resumed lets its key go when it fails with a GatewayError (a refusal, or a send
    undone: nothing of it stands): an unexpected failure, such as the undo of a send failing too, may leave its
    batch stored, charged or queued. `retry_failed_at_once`: such a failure ends the key's lease instead (lapse), for
    a request whose retry finishes what it left, each of its steps conditional (a cancel): the request is over, and
    its retry under the key, which the 500 asks for, is no longer told 409 "still being processed" for the lease."""
    if key is None:
        return produce(None)
    try:
        begun = store.begin(
            scope,
            key,
            request_fingerprint,
            now=now,
            reference_id=new_batch_id(),
            lease=lease,
            unversioned_fingerprint=unversioned_fingerprint,
        )
    except KeyReused as error:
        raise KeyReused(_used_for_another_request(key)) from error
    except KeyInProgress as error:
        raise KeyInProgress(_still_in_progress(key), reference_id=error.reference_id) from error
    if isinstance(begun, StoredAnswer):
        return begun
    try:
        answer = _produce_under_own_id(store, scope, key, begun, produce)
    except GatewayError as error:
        if begun.resumed and isinstance(error, NotDone):
            # Not a refusal: a write DynamoDB left undecided (other writes kept conflicting with it) wrote nothing, and
            # what the request it resumed left stands as it found it, for the retry the 503 asks for to finish, at
            # once (until 2026-12-07 a 500, and the retry met the key in progress for the lease's 90 s).
            _lapse(store, scope, key)
            raise
        # A refusal (or a send undone). A resumed request's key goes only once what the request it resumed left is
        # undone; while some of it stands, that is the answer.
        try:
            standing = _undo(undo, begun, error) if begun.resumed else None
        except NotDone:
            # The undo stopped at a write DynamoDB left undecided: what it did before stands, each step conditional,
            # and the retry the 503 asks for, at once, undoes the rest (until 2026-12-07 a 500, the key held).
            _lapse(store, scope, key)
            raise
        if standing is None:
            store.abandon(scope, key)
            if begun.resumed and isinstance(error, IdTaken):
                # The batch the key named is another send's, which took the id in the millisecond the dead request
                # made it (logic.send.send_standing_under_key): nothing of this key's send was written. The key is
                # claimed again under a new id, so that a death from here on leaves a record naming this send's own
                # batch. Once: a key claimed afresh is not resumed (its lease runs far beyond this request).
                logger.warning("the batch a resumed key named was another send's; claimed again under a new id")
                return run_once(
                    store,
                    scope=scope,
                    key=key,
                    request_fingerprint=request_fingerprint,
                    now=now,
                    produce=produce,
                    lease=lease,
                    undo=undo,
                    unversioned_fingerprint=unversioned_fingerprint,
                    retry_failed_at_once=retry_failed_at_once,
                )
            raise
        answer = standing
    except Exception:
        # A Lambda that dies (timeout, memory) runs none of this: its key waits for the lease (or the window).
        # Without a lease nothing could resume the request, so its key is let go whatever the failure.
        if lease is None:
            store.abandon(scope, key)
        elif retry_failed_at_once:
            # Until 2026-12-07 a cancel's retry met its key in progress for the lease's 90 s, held by no request.
            _lapse(store, scope, key)
        raise
    if 200 <= answer.status_code < 300:
        _keep(store, scope, key, answer)
    else:
        store.abandon(scope, key)
    return answer


# Ids a send tries before it answers IdTaken (a keyed one moving its key to each: _produce_under_own_id): two
# containers' batch ids meet in one millisecond once in 4096 (domain/ids.BATCH_BLOCK), and a second meeting is as
# unlikely again.
NEW_ID_TRIES = 3


def _produce_under_own_id(
    store: IdempotencyStore, scope: str, key: str, claim: KeyClaim, produce: Callable[[KeyClaim | None], StoredAnswer]
) -> StoredAnswer:
    """`produce` under the claim. A key claimed first (not resumed) whose batch id another send took in the same
    millisecond (IdTaken: the send wrote nothing) is moved to a new id, and the send goes on under it, as an unkeyed
    one takes another id: the user is not answered 503 for ids that met. The key names the new id before anything is
    written under it (IdempotencyStore.renumber, held by this claim), so a request that dies from here on leaves the
    key naming its own batch, which a retry after the lease finishes; a retry meanwhile finds the key in progress.
    A resumed claim keeps the id its key names (run_once claims the key again when that id is another send's)."""
    for tries_left in reversed(range(NEW_ID_TRIES)):
        try:
            return produce(claim)
        except IdTaken:
            moved = None if claim.resumed or not tries_left else store.renumber(scope, key, claim, new_batch_id())
            if moved is None:
                raise
            logger.warning(
                "a keyed send's new batch id was another batch's; its key names a new one",
                extra={"taken": claim.reference_id, "reference_id": moved.reference_id},
            )
            claim = moved
    raise AssertionError("unreachable")


def _lapse(store: IdempotencyStore, scope: str, key: str) -> None:
    """Ends a resumed key's lease so that the retry resumes it at once. Best effort: failing, the retry resumes it
    once the lease runs out (it meets the key in progress until then)."""
    try:
        store.lapse(scope, key)
    except Exception:
        logger.exception("could not end the lease of a resumed key; its retry resumes it once the lease runs out")


def _undo(
    undo: Callable[[KeyClaim], StoredAnswer | None] | None, claim: KeyClaim, refusal: GatewayError
) -> StoredAnswer | None:
    """What the resumed claim's send left standing, undone: None when nothing of it stands, else its answer."""
    if undo is None:
        return None
    try:
        standing = undo(claim)
    except NotDone:
        logger.warning("the undo of a refused retry under its key was not finished; its retry finishes it")
        raise
    except Exception as error:
        logger.exception("could not undo the send of a refused retry under its key", extra={"scope": "send"})
        raise error from refusal
    if standing is not None:
        logger.warning("a refused retry answers with the send under its key that stands", extra={"code": refusal.code})
    return standing


def _used_for_another_request(key: str) -> str:
    kind, _, value = key.partition(":")
    if kind == "ref":
        return f"ref_id {value!r} was used within 24 hours for a different request: a repeat must carry the same fields"
    return "this Idempotency-Key was used for a different request"


def _still_in_progress(key: str) -> str:
    kind, _, value = key.partition(":")
    if kind == "ref":
        return f"a request with ref_id {value!r} is still being processed; retry later"
    return "a request with this idempotency key is still being processed; retry later"


def _keep(store: IdempotencyStore, scope: str, key: str, answer: StoredAnswer) -> None:
    """The request stands whether or not its answer can be kept, so the client gets it: a 500 would say it failed.
    A key that could not be completed stays in progress: a leased one is resumed by a retry after its lease (the
    send finishes the same batch and keeps the answer then); one without a lease answers its retries "still being
    processed" until its window ends. Letting the key go instead would let a retry do the request twice."""
    try:
        store.complete(scope, key, answer)
    except Exception:
        logger.exception("could not keep the answer under its idempotency key", extra={"scope": scope})
