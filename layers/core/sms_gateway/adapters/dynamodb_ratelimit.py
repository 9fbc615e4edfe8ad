"""DynamoDB rate-limit counters: one item per scope and second, pk=RATE#<scope>, sk=<unix second>, `used`."""

from __future__ import annotations

import contextlib
from typing import Any

from sms_gateway import deadlines

# A counter only matters during its own second; TTL removes it a minute later (lazily: it is never read again).
COUNTER_TTL_SECONDS = 60
# A partial grant can lose its race with another dispatcher; it is retried while room remains, this many times.
_PARTIAL_ATTEMPTS = 3


def _counter_key(scope: str, second: int) -> dict[str, Any]:
    return {"pk": {"S": f"RATE#{scope}"}, "sk": {"S": str(second)}}


class DynamoRateLimitMixin:
    """Implements ports.RateLimitStore; mixed into DynamoStore, so `client` and `table_name` are its."""

    client: Any
    table_name: str

    def take_tokens(self, scope: str, second: int, wanted: int, limit: int) -> int:
        # Asking for more than the limit would pass the condition on a fresh counter (no `used` yet).
        asked = min(wanted, limit)
        for _ in range(1 + _PARTIAL_ATTEMPTS):
            if asked <= 0:
                return 0
            used = self._add_if_room(scope, second, asked, limit)
            if used is None:
                return asked
            asked = limit - used
        return 0

    def _add_if_room(self, scope: str, second: int, count: int, limit: int) -> int | None:
        """One conditional write: adds `count` if the second stays within `limit`. None when it did; otherwise
        the count the write found, so the caller can ask for what is left."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_counter_key(scope, second),
                UpdateExpression="ADD used :n SET expires_at = :expires",
                ConditionExpression="attribute_not_exists(used) OR used <= :room",
                ExpressionAttributeValues={
                    ":n": {"N": str(count)},
                    ":room": {"N": str(limit - count)},
                    ":expires": {"N": str(second + COUNTER_TTL_SECONDS)},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            current = error.response.get("Item") or {}
            return int(current.get("used", {}).get("N", limit))
        return None

    def give_back_tokens(self, scope: str, second: int, count: int) -> None:
        if count <= 0:
            return
        # Only onto a counter that exists: a give-back must never create a negative one. A counter gone already
        # (its TTL passed) needs nothing back. Sent at most once: a retry after a lost answer would take the tokens
        # off twice, and the counter would then understate its second and grant more than its limit (until
        # 2026-12-05 the client's retries did so). A give-back that may not have been applied raises instead, and
        # leaves the counter overstating its second, the safe side.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException), deadlines.at_most_once():
            self.client.update_item(
                TableName=self.table_name,
                Key=_counter_key(scope, second),
                UpdateExpression="ADD used :minus",
                ConditionExpression="attribute_exists(used)",
                ExpressionAttributeValues={":minus": {"N": str(-count)}},
            )
