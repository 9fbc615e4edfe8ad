"""Page cursors: a Query's LastEvaluatedKey given to the client as an opaque string, and taken back only when it is
one this store could have issued for the same listing (edited, forged or another account's: the client's error)."""

from __future__ import annotations

import base64
import json
from typing import Any

from sms_gateway.errors import InvalidRequest

NOT_A_CURSOR = "the `next` cursor is not valid for this listing"


def encode_cursor(last_key: dict[str, Any] | None) -> str | None:
    return base64.urlsafe_b64encode(json.dumps(last_key).encode()).decode() if last_key else None


def decode_cursor(
    cursor: str,
    *,
    pk: str,
    sk_prefix: str = "",
    sk_range: tuple[str, str] | None = None,
    problem: str = NOT_A_CURSOR,
) -> dict[str, Any]:
    """The start key a cursor names: exactly a `pk` of this partition and a string `sk` that starts with `sk_prefix`
    and lies within `sk_range` (DynamoDB refuses a start key outside the query's range with a server error)."""
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
        and sk["S"].startswith(sk_prefix)
        and (sk_range is None or sk_range[0] <= sk["S"] <= sk_range[1])
    )
    if not valid:
        raise InvalidRequest(problem)
    return dict(key)
