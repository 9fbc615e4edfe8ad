"""TransactWriteItems until DynamoDB decides it: tried again while only conflicts with other writes cancel it
(one loop for every store that writes an item and the account's counters together)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sms_gateway.errors import NotDone, TransactionUndecided

MAX_TRANSACTION_ATTEMPTS = 6
_TRANSACTION_BACKOFF_SECONDS = 0.02

# What a TransactWriteItems cancellation says of the writes it did not refuse (the others' codes say why).
NOT_REFUSED = (None, "None", "TransactionConflict")


def not_done(doing: str, error: TransactionUndecided) -> NotDone:
    """The answer to a caller whose request may simply be made again: `doing` did not happen, nothing changed."""
    return NotDone(f"{doing}: not done, nothing changed ({error}); try again")


def back_off(attempt: int) -> None:
    time.sleep(_TRANSACTION_BACKOFF_SECONDS * (2**attempt) * (0.5 + secrets.randbelow(100) / 100))


def transact(client: Any, writes: list[dict[str, Any]], token: str | None = None) -> list[dict[str, Any]] | None:
    """One TransactWriteItems: None when it was applied, else why each write was refused (aligned with
    `writes`). A token per transaction (`token`, else a new one): botocore's retry of a call whose answer was lost
    is not applied twice."""
    try:
        client.transact_write_items(TransactItems=writes, ClientRequestToken=token or secrets.token_hex(16))
    except client.exceptions.TransactionCanceledException as error:
        reasons = error.response.get("CancellationReasons") or []
        if len(reasons) != len(writes):
            raise
        return list(reasons)
    return None


def transact_until_decided(
    client: Any, writes: list[dict[str, Any]], *, token: str | None = None
) -> list[dict[str, Any] | None]:
    """`transact`, tried again while only conflicts with other writes refuse it (on AWS a concurrent write of
    one of its items cancels it with TransactionConflict; moto never does), under `token` each time when given.
    Aligned with `writes`: the reason a condition refused each (its code and, if asked for, the item), or None for
    each when applied."""
    for attempt in range(MAX_TRANSACTION_ATTEMPTS):
        reasons = transact(client, writes, token)
        if reasons is None:
            return [None] * len(writes)
        codes = [reason.get("Code") for reason in reasons]
        if "ConditionalCheckFailed" in codes:
            return [reason if reason.get("Code") == "ConditionalCheckFailed" else None for reason in reasons]
        if any(code not in NOT_REFUSED for code in codes):
            raise TransactionUndecided(f"DynamoDB refused a transaction: {codes}")
        # Nothing to wait for after the last try (until session 38 the longest wait of all, up to ~1 s, came there).
        if attempt + 1 < MAX_TRANSACTION_ATTEMPTS:
            back_off(attempt)
    raise TransactionUndecided(f"a transaction conflicted with other writes {MAX_TRANSACTION_ATTEMPTS} times")


def transact_or_unavailable(client: Any, writes: list[dict[str, Any]], *, doing: str) -> list[dict[str, Any] | None]:
    """`transact_until_decided` for a request its caller may make again (an operator's, a portal user's): a
    transaction left undecided is Unavailable, saying what was not done."""
    try:
        return transact_until_decided(client, writes)
    except TransactionUndecided as error:
        raise not_done(doing, error) from error
