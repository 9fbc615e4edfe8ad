"""Page cursors come back only as this store gave them out: anything edited is the client's 400, never a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key
from sms_gateway.errors import InvalidRequest

PK = "ACC#7"
BATCH_SK = id_sort_key("BATCH#")
ISSUED = {"pk": {"S": PK}, "sk": {"S": "BATCH#0000000000000000042"}}


def forged(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def test_a_cursor_given_out_comes_back_as_its_key() -> None:
    cursor = encode_cursor(ISSUED)
    assert cursor is not None and encode_cursor(None) is None
    assert decode_cursor(cursor, pk=PK, sk_form=BATCH_SK, sk_range=("BATCH#0", "BATCH#9")) == ISSUED


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
        forged({"pk": {"S": PK}, "sk": {"S": "BATCH#00000000000000000042"}}),
        forged({"pk": {"S": PK}, "sk": {"S": "BATCH#0000000000000000042" + "9" * 1100}}),
        forged({"pk": {"S": PK}, "sk": {"S": "BATCH#000000000000000004x"}}),
        forged({"pk": {"S": PK}, "sk": {"S": "BATCH#0000000000000000042\n"}}),
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
        "a-longer-id",
        "a-sort-key-dynamodb-refuses",
        "not-digits",
        "a-line-after",
    ],
)
def test_an_edited_or_forged_cursor_is_refused_as_invalid(cursor: str) -> None:
    with pytest.raises(InvalidRequest, match="not valid"):
        decode_cursor(cursor, pk=PK, sk_form=BATCH_SK, sk_range=("BATCH#0", "BATCH#9"))


def test_each_listing_takes_back_the_keys_it_issues_and_not_one_longer_than_dynamodb_takes() -> None:
    # A sort key over 1024 bytes is DynamoDB's ValidationException, a 500 on AWS (moto does not check): each listing
    # takes back only a key of its own form, which is always a short one (the delivery reports' took any key)
    from sms_gateway.adapters import dynamodb, dynamodb_groups, dynamodb_history, dynamodb_inbox, dynamodb_notifications

    issued = [
        ("GROUP#0000000000000000042", dynamodb_groups.GROUP_SK),
        ("MSG#0000000000000000042", dynamodb.MESSAGE_SK),
        ("IN#0000000000000000042", dynamodb_inbox.INBOUND_SK),
        ("BATCH#0000000000000000042", dynamodb_history.BATCH_SK),
        ("FAILAT#2026-01-02T12:00:00.104000Z#dlr_71800327346180097_3", dynamodb_notifications._LISTING_SK),
    ]
    for sk, form in issued:
        assert decode_cursor(forged({"pk": {"S": PK}, "sk": {"S": sk}}), pk=PK, sk_form=form)["sk"] == {"S": sk}
        for edited in (sk + "9" * 1100, sk + "#", "X" + sk):
            with pytest.raises(InvalidRequest):
                decode_cursor(forged({"pk": {"S": PK}, "sk": {"S": edited}}), pk=PK, sk_form=form)
