"""Page cursors: a Query's LastEvaluatedKey given to the client as an opaque string, and taken back only when it is
one this store could have issued for the same listing (edited, forged or another account's: the client's error)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from sms_gateway.errors import InvalidRequest

NOT_A_CURSOR = "the `next` cursor is not valid for this listing"


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
