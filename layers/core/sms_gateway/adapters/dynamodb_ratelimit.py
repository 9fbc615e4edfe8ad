"""DynamoDB rate-limit counters: one item per scope and second, pk=RATE#<scope>, sk=<unix second>, `used`; and a
scope's hold (`hold_scope`), sk=HOLD, `held_until`."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from sms_gateway import deadlines
from sms_gateway.ports import ScopeHeld

# A counter only matters during its own second; TTL removes it a minute later (lazily: it is never read again).
COUNTER_TTL_SECONDS = 60
# A partial grant can lose its race with another dispatcher; it is retried while room remains, this many times.
_PARTIAL_ATTEMPTS = 3
# A held second's count: past any limit however many tokens are given back in it (a limit is at most 10^6).
HELD_COUNT = 10**12
# BatchWriteItem's most puts a request.
_PUTS_A_REQUEST = 25
# The sort key of a scope's hold item: when the longest hold written on it ends.
_HOLD_SK = "HOLD"


def _counter_key(scope: str, second: int) -> dict[str, Any]:
    return {"pk": {"S": f"RATE#{scope}"}, "sk": {"S": str(second)}}


def _hold_key(scope: str) -> dict[str, Any]:
    return {"pk": {"S": f"RATE#{scope}"}, "sk": {"S": _HOLD_SK}}


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
            if "held_until" in current:
                # The second's own `held_until` is the one its last put wrote, which may be a shorter hold's written
                # at the same moment as a longer one: the scope's hold item says how long the longest lasts. Read
                # only here, when a take meets a held second (once a hold in each dispatcher, which then holds the
                # upstream itself): the normal path reads nothing more.
                raise ScopeHeld(scope, max(float(current["held_until"]["N"]), self._held_until(scope))) from None
            return int(current.get("used", {}).get("N", limit))
        return None

    def _held_until(self, scope: str) -> float:
        """When the longest hold written on `scope` ends (0 when none was)."""
        found = self.client.get_item(TableName=self.table_name, Key=_hold_key(scope), ConsistentRead=True)
        return float(found.get("Item", {}).get("held_until", {}).get("N", 0))

    def _lengthen_hold(self, scope: str, until: float) -> float:
        """Writes `until` to the scope's hold item unless a hold as long or longer is there: one conditional write, so
        of two holds written at once the longer stays, whichever comes last. When the hold ends, the longer one."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_hold_key(scope),
                UpdateExpression="SET held_until = :until, expires_at = :expires",
                ConditionExpression="attribute_not_exists(held_until) OR held_until < :until",
                ExpressionAttributeValues={
                    ":until": {"N": f"{until:.3f}"},
                    ":expires": {"N": str(math.ceil(until) + COUNTER_TTL_SECONDS)},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            return max(until, float(error.response.get("Item", {}).get("held_until", {}).get("N", 0)))
        return until

    def hold_scope(self, scope: str, until: float, *, first_second: int, seconds: int) -> None:
        # The hold's end goes to the scope's hold item first, by a conditional write that only lengthens it: a
        # shorter hold written at the same moment never shortens a longer one (until 2026-12-07 the seconds' puts
        # carried it alone, and the shorter hold's, landing last, told every dispatcher to come back too soon; the
        # seconds past the first 60 are not held, so they offered the upstream messages it answered with 429s).
        until = self._lengthen_hold(scope, until)
        # Then puts, not conditional updates: a held second is full whatever it counted, and one BatchWriteItem holds
        # 25 seconds. Puts DynamoDB leaves unprocessed are sent once more; a second left unheld only lets a
        # dispatcher meet the upstream's 429 itself, as it would without the hold.
        puts = [
            {
                "PutRequest": {
                    "Item": {
                        **_counter_key(scope, second),
                        "used": {"N": str(HELD_COUNT)},
                        "held_until": {"N": f"{until:.3f}"},
                        "expires_at": {"N": str(second + COUNTER_TTL_SECONDS)},
                    }
                }
            }
            for second in range(first_second, first_second + seconds)
        ]
        for start in range(0, len(puts), _PUTS_A_REQUEST):
            chunk = puts[start : start + _PUTS_A_REQUEST]
            for _ in range(2):
                answer = self.client.batch_write_item(RequestItems={self.table_name: chunk})
                chunk = answer.get("UnprocessedItems", {}).get(self.table_name, [])
                if not chunk:
                    break

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
