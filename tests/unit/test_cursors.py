"""Page cursors come back only as this store gave them out: anything edited is the client's 400, never a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor
from sms_gateway.errors import InvalidRequest

PK = "ACC#7"
ISSUED = {"pk": {"S": PK}, "sk": {"S": "BATCH#0000000000000000042"}}


def forged(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def test_a_cursor_given_out_comes_back_as_its_key() -> None:
    cursor = encode_cursor(ISSUED)
    assert cursor is not None and encode_cursor(None) is None
    assert decode_cursor(cursor, pk=PK, sk_prefix="BATCH#", sk_range=("BATCH#0", "BATCH#9")) == ISSUED


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        forged([1, 2]),
        forged({"pk": {"S": PK}, "sk": {"S": 42}}),
        forged({"pk": {"S": PK}, "sk": {"N": "42"}}),
        forged({"pk": {"S": PK}, "sk": "BATCH#1"}),
        forged({"pk": {"S": PK}}),
        forged({"pk": {"S": "ACC#8"}, "sk": {"S": "BATCH#1"}}),
        forged({**ISSUED, "conversation": {"S": "x"}}),
        forged({"pk": {"S": PK}, "sk": {"S": "GROUP#1"}}),
        forged({"pk": {"S": PK}, "sk": {"S": "BATCH#99"}}),
    ],
    ids=[
        "garbage",
        "not-utf8",
        "a-list",
        "number-sk",
        "sk-of-another-type",
        "sk-not-typed",
        "no-sk",
        "another-account",
        "extra-key",
        "another-listing",
        "out-of-range",
    ],
)
def test_an_edited_or_forged_cursor_is_refused_as_invalid(cursor: str) -> None:
    with pytest.raises(InvalidRequest, match="not valid"):
        decode_cursor(cursor, pk=PK, sk_prefix="BATCH#", sk_range=("BATCH#0", "BATCH#9"))
