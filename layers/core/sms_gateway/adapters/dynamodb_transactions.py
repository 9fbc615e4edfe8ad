"""TransactWriteItems until DynamoDB decides it: tried again while only conflicts with other writes (or, a few times,
throttling) cancel it (one loop for every store that writes an item and the account's counters together)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from sms_gateway.errors import NotDone, TransactionUndecided

MAX_TRANSACTION_ATTEMPTS = 6
_TRANSACTION_BACKOFF_SECONDS = 0.02

# What a TransactWriteItems cancellation says of the writes it did not refuse (the others' codes say why).
NOT_REFUSED = (None, "None", "TransactionConflict")
# What it says of a write DynamoDB throttled (its table's or index's capacity, on-demand's limits too): nothing was
# written, and a moment later it may be. botocore retries a throttled request for seconds, never a cancelled
# transaction, so it is tried again here, fewer times and sooner: MAX_THROTTLED_TRIES tries in all, waiting 50 ms
# then 100 ms (jittered by +-50%: at most 0.23 s), a short Lambda keeping the time to answer 503 (until session 38
# it was given up at its first try).
THROTTLED = ("ThrottlingError", "ProvisionedThroughputExceeded")
MAX_THROTTLED_TRIES = 3
_THROTTLED_BACKOFF_SECONDS = 0.05


def not_done(doing: str, error: TransactionUndecided) -> NotDone:
    """The answer to a caller whose request may simply be made again: `doing` did not happen, nothing changed."""
    return NotDone(f"{doing}: not done, nothing changed ({error}); try again")


def _jittered_sleep(seconds: float) -> None:
    time.sleep(seconds * (0.5 + secrets.randbelow(100) / 100))


def back_off(attempt: int) -> None:
    _jittered_sleep(_TRANSACTION_BACKOFF_SECONDS * (2**attempt))


def back_off_throttled(throttled: int) -> None:
    """The wait after the `throttled`th throttled try."""
    _jittered_sleep(_THROTTLED_BACKOFF_SECONDS * (2 ** (throttled - 1)))


def try_again_after(attempt: int, codes: Sequence[str | None], throttled: int) -> int:
    """After try `attempt` (from 0) that DynamoDB cancelled with `codes` and refused on no condition: waits before the
    next try (not after the last), and answers how many tries it throttled so far (`throttled` before this one).
    TransactionUndecided when a write was refused for another reason, or throttled MAX_THROTTLED_TRIES times."""
    if any(code not in NOT_REFUSED + THROTTLED for code in codes):
        raise TransactionUndecided(f"DynamoDB refused a transaction: {list(codes)}")
    is_throttled = any(code in THROTTLED for code in codes)
    throttled += is_throttled
    if throttled >= MAX_THROTTLED_TRIES:
        raise TransactionUndecided(f"DynamoDB throttled a transaction {throttled} times: {list(codes)}")
    # Nothing to wait for after the last try (until session 38 the longest wait of all, up to ~1 s, came there).
    if attempt + 1 == MAX_TRANSACTION_ATTEMPTS:
        return throttled
    if is_throttled:
        back_off_throttled(throttled)
    else:
        back_off(attempt)
    return throttled


def transact(client: Any, writes: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """One TransactWriteItems: None when it was applied, else why each write was refused (aligned with
    `writes`). A new token per transaction: botocore's retry of a call whose answer was lost is not applied twice."""
    try:
        client.transact_write_items(TransactItems=writes, ClientRequestToken=secrets.token_hex(16))
    except client.exceptions.TransactionCanceledException as error:
        reasons = error.response.get("CancellationReasons") or []
        if len(reasons) != len(writes):
            raise
        return list(reasons)
    return None


def transact_until_decided(client: Any, writes: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """`transact`, tried again while only conflicts with other writes refuse it (on AWS a concurrent write of
    one of its items cancels it with TransactionConflict; moto never does), or throttling, a few times
    (`try_again_after`), each try under a token of its own (`transact`: a token stands for one try, which
    botocore may send again; DynamoDB keeps a token's request for 10 minutes).
    Aligned with `writes`: the reason a condition refused each (its code and, if asked for, the item), or None for
    each when applied."""
    throttled = 0
    for attempt in range(MAX_TRANSACTION_ATTEMPTS):
        reasons = transact(client, writes)
        if reasons is None:
            return [None] * len(writes)
        codes = [reason.get("Code") for reason in reasons]
        if "ConditionalCheckFailed" in codes:
            return [reason if reason.get("Code") == "ConditionalCheckFailed" else None for reason in reasons]
        throttled = try_again_after(attempt, codes, throttled)
    raise TransactionUndecided(
        f"a transaction was cancelled {MAX_TRANSACTION_ATTEMPTS} times for conflicts with other writes or throttling"
    )


def transact_or_unavailable(client: Any, writes: list[dict[str, Any]], *, doing: str) -> list[dict[str, Any] | None]:
    """`transact_until_decided` for a request its caller may make again (an operator's, a portal user's): a
    transaction left undecided is Unavailable, saying what was not done."""
    try:
        return transact_until_decided(client, writes)
    except TransactionUndecided as error:
        raise not_done(doing, error) from error
