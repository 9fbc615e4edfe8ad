"""Page cursors: a Query's LastEvaluatedKey given to the client as an opaque string, and taken back only when it is
one this store could have issued for the same listing (edited, forged or another account's: the client's error)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from sms_gateway.errors import InvalidRequest
from sms_gateway.ports import PageBudget

NOT_A_CURSOR = "the `next` cursor is not valid for this listing"

Kept = TypeVar("Kept")


def id_sort_key(prefix: str) -> re.Pattern[str]:
    """The form of a sort key that is `prefix` and an id of 19 digits (`GROUP#0000000000000000042`)."""
    return re.compile(re.escape(prefix) + "[0-9]{19}")


def encode_cursor(last_key: dict[str, Any] | None) -> str | None:
    return base64.urlsafe_b64encode(json.dumps(last_key).encode()).decode() if last_key else None


def decode_cursor(
    cursor: str,
    *,
    pk: str,
    sk_form: re.Pattern[str],
    sk_range: tuple[str, str] | None = None,
    problem: str = NOT_A_CURSOR,
) -> dict[str, Any]:
    """The start key a cursor names: exactly a `pk` of this partition and a string `sk` of exactly the form the
    listing's keys have (`sk_form`, matched whole) and within `sk_range`. DynamoDB answers a start key it refuses
    (outside the query's range, or a sort key over 1024 bytes) with an error no route expects, a 500: a key of the
    listing's own form is one it takes."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise InvalidRequest(problem) from None
    sk = key.get("sk") if isinstance(key, dict) else None
    valid = (
        isinstance(key, dict)
        and set(key) == {"pk", "sk"}
        and key["pk"] == {"S": pk}
        and isinstance(sk, dict)
        and set(sk) == {"S"}
        and isinstance(sk["S"], str)
        and sk_form.fullmatch(sk["S"]) is not None
        and (sk_range is None or sk_range[0] <= sk["S"] <= sk_range[1])
    )
    if not valid:
        raise InvalidRequest(problem)
    return dict(key)


def read_page(
    query: Callable[..., dict[str, Any]],
    request: dict[str, Any],
    limit: int,
    *,
    load: Callable[[list[dict[str, Any]]], list[Kept]],
    key_of: Callable[[Kept], dict[str, Any]],
    rounds: int = 1,
    read_size: int = 0,
    budget: PageBudget[Kept] | None = None,
) -> tuple[list[Kept], dict[str, Any] | None]:
    """A page of at most `limit` of what `load` keeps of the items `request` reads, and the start key of the next
    page, or None when there is none. It reads one item past the page: DynamoDB answers a LastEvaluatedKey whenever
    it stops at its Limit, so a page that ended exactly at the listing's end would otherwise carry a cursor to an
    empty page. With a filter (`load` keeps fewer than it is given) it reads on, at most `rounds` reads of at least
    `read_size` items each: the page may then come back short, with a cursor to follow. With a `budget`, the page
    also ends before the item that would fill it past the budget's bytes (always holding its first). The cursor of a
    page cut so, or full, is the key of its last item (`key_of`), so nothing is skipped or repeated."""
    request = {**request, "Limit": max(limit + 1, read_size)}
    kept: list[Kept] = []
    filled = 0
    last: dict[str, Any] | None = None
    for _ in range(rounds):
        answer = query(**request)
        for item in load(answer.get("Items", [])):
            size = budget.size_of(item) if budget is not None else 0
            if len(kept) == limit or (budget is not None and kept and filled + size > budget.max_bytes):
                return kept, key_of(kept[-1])
            kept.append(item)
            filled += size
        last = answer.get("LastEvaluatedKey")
        if not last:
            return kept, None
        request["ExclusiveStartKey"] = last
    return kept, last
