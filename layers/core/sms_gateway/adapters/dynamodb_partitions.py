"""The items of one account's partition under a sort-key prefix (a Query), or of every account's (a Scan of the whole
table: an operator's one-off, about half a read unit per 4 KB stored), for the admin commands that walk them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ACCOUNT_PK_PREFIX = "ACC#"


def account_pk(account_id: str) -> str:
    """The partition key of an account's own items (its batches, groups, credentials' listings...)."""
    return f"{ACCOUNT_PK_PREFIX}{account_id}"


def account_items(
    client: Any,
    table_name: str,
    account_id: str | None,
    sk_prefix: str,
    *,
    projection: str | None = None,
    condition: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Raw items whose sort key starts with `sk_prefix`: of `account_id`'s partition (read strongly consistent), or of
    every account's when it is None; `condition` (a filter expression on other attributes) narrows them."""
    values = {":prefix": {"S": sk_prefix}}
    request: dict[str, Any] = {"TableName": table_name}
    if projection is not None:
        request["ProjectionExpression"] = projection
    if account_id is None:
        pages = client.get_paginator("scan").paginate(
            **request,
            FilterExpression=" AND ".join(
                ["begins_with(pk, :account)", "begins_with(sk, :prefix)", *([condition] if condition else [])]
            ),
            ExpressionAttributeValues={**values, ":account": {"S": ACCOUNT_PK_PREFIX}},
        )
    else:
        if condition:
            request["FilterExpression"] = condition
        pages = client.get_paginator("query").paginate(
            **request,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={**values, ":pk": {"S": account_pk(account_id)}},
            ConsistentRead=True,
        )
    for page in pages:
        yield from page.get("Items", [])
