"""DynamoDB rate-limit counters: one item per scope and second, pk=RATE#<scope>, sk=<unix second>, `used`; and a
scope's hold (`hold_scope`), sk=HOLD, `held_until` and the holds running (`running_holds`)."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Callable
from typing import Any

from sms_gateway import deadlines
from sms_gateway.ports import AskedHold, RecordedHold, ScopeHeld, hold_shut_further, hold_written, seconds_to_shut

# A counter only matters during its own second; TTL removes it a minute later (lazily: it is never read again).
COUNTER_TTL_SECONDS = 60
# A partial grant can lose its race with another dispatcher; it is retried while room remains, this many times.
_PARTIAL_ATTEMPTS = 3
# A held second's count: past any limit however many tokens are given back in it (a limit is at most 10^6).
HELD_COUNT = 10**12
# BatchWriteItem's most puts a request.
_PUTS_A_REQUEST = 25
# The sort key of a scope's hold item: the holds running on it, and when the longest ends.
_HOLD_SK = "HOLD"
# Writes of a hold item a dispatcher makes at most while others change it under each (one each, in turn).
_HOLD_ATTEMPTS = 8


def _counter_key(scope: str, second: int) -> dict[str, Any]:
    return {"pk": {"S": f"RATE#{scope}"}, "sk": {"S": str(second)}}


def _hold_key(scope: str) -> dict[str, Any]:
    return {"pk": {"S": f"RATE#{scope}"}, "sk": {"S": _HOLD_SK}}


def _recorded_hold(item: dict[str, Any] | None) -> RecordedHold | None:
    if not item or "held_until" not in item:
        return None
    until = float(item["held_until"]["N"])
    through = int(item.get("held_through", {}).get("N", -1))
    running = tuple(
        AskedHold(float(hold["M"]["until"]["N"]), float(hold["M"]["asked_at"]["N"]))
        for hold in item.get("running_holds", {}).get("L", [])
    )
    since = float(item.get("held_since", {}).get("N", 0))
    if not running or max(hold.until for hold in running) != until:
        # An item written before session 38's list, or written over since by a dispatcher of that release (which
        # sets `held_until` and `held_since` and leaves the list as it found it): its longest hold alone, asked for
        # when it was last.
        return RecordedHold(until, through, (AskedHold(until, since),))
    # A `held_since` later than the list's longest was asked for: a dispatcher of that release met it again (its
    # Retry-After ending within RESTATED_WITHIN_SECONDS before it, which only lengthens, and keeps `held_until`),
    # and wrote when alone. Read with the list's older ask, a container whose message the upstream accepted in
    # between would cut a hold the upstream asked for after it.
    return RecordedHold(
        until,
        through,
        tuple(AskedHold(until, max(hold.asked_at, since)) if hold.until == until else hold for hold in running),
    )


def _running_holds(running: tuple[AskedHold, ...]) -> dict[str, Any]:
    return {
        "L": [
            {"M": {"until": {"N": f"{hold.until:.3f}"}, "asked_at": {"N": f"{hold.asked_at:.3f}"}}} for hold in running
        ]
    }


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
                recorded = self._read_hold(scope)
                if recorded is None:  # a counter held before holds were recorded: its own end
                    raise ScopeHeld(scope, float(current["held_until"]["N"])) from None
                raise ScopeHeld(scope, recorded.until, through=recorded.through) from None
            return int(current.get("used", {}).get("N", limit))
        return None

    def _read_hold(self, scope: str) -> RecordedHold | None:
        """The hold recorded on `scope`: when the longest hold running on it ends, and its last second shut."""
        return _recorded_hold(self._hold_item(scope))

    def _hold_item(self, scope: str) -> dict[str, Any]:
        found = self.client.get_item(TableName=self.table_name, Key=_hold_key(scope), ConsistentRead=True)
        return found.get("Item") or {}

    def _record_hold(
        self,
        scope: str,
        change: Callable[[RecordedHold | None], RecordedHold | None],
        read: dict[str, Any] | None = None,
    ) -> tuple[RecordedHold | None, RecordedHold | None]:
        """The scope's hold item before and after `change` (what it makes of the recorded hold, None when none is; it
        returns None to write nothing). The first write takes it that none is recorded, unless the item was `read`
        (empty when there is none). Each write is conditional on the item's version it saw (a random `hold_version`
        each write sets), so of dispatchers writing at once each changes what the one before it wrote; a refused one
        learns the item from the refusal.

        A write whose answer was lost (or that failed inside DynamoDB) is not sent again (`deadlines.at_most_once`):
        the item is read, and holds its version when it was applied. When it holds another's, it may have been
        applied and written over by a dispatcher that took its seconds for this one's to put: the hold it was written
        over is the one returned as before, so that the caller puts them (until session 38 botocore sent it again,
        refused, and taken as never applied: neither dispatcher put those seconds)."""
        seen_item = read or {}
        seen = _recorded_hold(seen_item)
        # The hold before the first write of ours that may have been applied unseen (a list: it may be None).
        maybe_applied_over: list[RecordedHold | None] = []

        def before() -> RecordedHold | None:
            return maybe_applied_over[0] if maybe_applied_over else seen

        for _ in range(_HOLD_ATTEMPTS):
            wanted = change(seen)
            if wanted is None or wanted == seen:
                return before(), seen  # the recorded hold reaches as far: nothing to write
            version = uuid.uuid4().hex
            if seen is None:
                condition, values = "attribute_not_exists(held_until)", {}
            elif "hold_version" in seen_item:
                condition, values = "hold_version = :seen", {":seen": seen_item["hold_version"]}
            else:  # an item written before session 38, without a version
                condition = "attribute_not_exists(hold_version) AND held_until = :seen"
                values = {":seen": seen_item["held_until"]}
            try:
                with deadlines.at_most_once():
                    self._write_hold(scope, wanted, version, condition, values)
            except deadlines.MaybeApplied:
                seen_item = self._hold_item(scope)
                if seen_item.get("hold_version", {}).get("S") == version:
                    return before(), wanted
                if not maybe_applied_over:
                    maybe_applied_over.append(seen)
                seen = _recorded_hold(seen_item)
                continue
            except self.client.exceptions.ConditionalCheckFailedException as error:
                seen_item = error.response.get("Item") or {}
                seen = _recorded_hold(seen_item)
                continue
            return before(), wanted
        raise RuntimeError(f"the hold of {scope} changed under each of {_HOLD_ATTEMPTS} writes")

    def _write_hold(
        self, scope: str, wanted: RecordedHold, version: str, condition: str, values: dict[str, Any]
    ) -> None:
        self.client.update_item(
            TableName=self.table_name,
            Key=_hold_key(scope),
            UpdateExpression="SET held_until = :until, held_through = :through, held_since = :since, "
            "running_holds = :running, hold_version = :version, expires_at = :expires",
            ConditionExpression=condition,
            ExpressionAttributeValues={
                **values,
                ":until": {"N": f"{wanted.until:.3f}"},
                ":through": {"N": str(wanted.through)},
                # For a dispatcher of the release before the list, which reads only the longest hold and its ask.
                ":since": {"N": f"{wanted.since:.3f}"},
                ":running": _running_holds(wanted.running),
                ":version": {"S": version},
                # Kept as long as any counter it held: a take that meets one reads it.
                ":expires": {"N": str(max(math.ceil(wanted.until), wanted.through) + COUNTER_TTL_SECONDS)},
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )

    def hold_scope(
        self,
        scope: str,
        until: float,
        *,
        first_second: int,
        seconds: int,
        asked_at: float | None = None,
        resumed_at: float | None = None,
    ) -> RecordedHold:
        # The hold goes to the scope's hold item first, by a conditional write that adds it to those running: a
        # shorter hold written at the same moment never shortens a longer one (until 2026-12-07 the seconds' puts
        # carried it alone, and the shorter hold's, landing last, told every dispatcher to come back too soon; the
        # seconds past the first 60 are not held, so they offered the upstream messages it answered with 429s).
        before, after = self._record_hold(
            scope,
            lambda seen: hold_written(
                seen, until, first_second=first_second, seconds=seconds, asked_at=asked_at, resumed_at=resumed_at
            ),
        )
        assert after is not None, "a hold is written whatever was recorded"
        # Then only the seconds no hold recorded before shut: the dispatchers whose submits in flight met the same
        # 429 write them once between them (until session 38 each wrote all of them, up to 600 puts each on the
        # route's partition at once, where a partition takes 1,000 writes a second).
        self._shut_seconds(scope, after.until, seconds_to_shut(before, after, first_second))
        return after

    def shut_more_of_hold(self, scope: str, until: float, *, first_second: int, seconds: int) -> RecordedHold | None:
        # Read first: unlike a hold, it writes nothing where none is recorded.
        before, after = self._record_hold(
            scope,
            lambda seen: hold_shut_further(seen, until, first_second=first_second, seconds=seconds),
            read=self._hold_item(scope),
        )
        if after is None:
            return None
        self._shut_seconds(scope, after.until, seconds_to_shut(before, after, first_second))
        return after

    def _shut_seconds(self, scope: str, until: float, seconds: range) -> None:
        # Puts, not conditional updates: a held second is full whatever it counted, and one BatchWriteItem holds
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
            for second in seconds
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
