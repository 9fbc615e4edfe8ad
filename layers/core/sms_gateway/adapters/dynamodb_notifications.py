"""DynamoDB records of failed client notifications: pk=NOTIFY#<account>, sk=FAIL#<notification id>, plus a
listing pointer sk=FAILAT#<first failure time>#<notification id> so they list newest first."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from typing import Any

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, read_page
from sms_gateway.adapters.dynamodb_batch import batch_get
from sms_gateway.ports import PageBudget, WebhookFailure, WebhookFailureState

# Long enough to look into last week's outage, short enough that the partition stays small.
FAILURE_RETENTION = timedelta(days=30)
_MAX_LIST_ROUNDS = 10
# The listing pointer's sort key: FAILAT#, the first failure's time as models.iso writes it, # and the notification's
# id (dlr_<message_id>_<sequence>, in_<inbound_id>, test_<hex>: the characters the resend route takes).
_LISTING_SK = re.compile(
    r"FAILAT#[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z#[A-Za-z0-9_.:-]{1,128}"
)


def _pk(account_id: str) -> str:
    return f"NOTIFY#{account_id}"


def _failure_key(account_id: str, notification_id: str) -> dict[str, Any]:
    return {"pk": {"S": _pk(account_id)}, "sk": {"S": f"FAIL#{notification_id}"}}


class DynamoNotificationsMixin:
    """Implements ports.WebhookFailureStore; mixed into DynamoStore, so `client`, `table_name` and `_codec` are
    its."""

    client: Any
    table_name: str
    _codec: Any

    def save_webhook_failure(
        self,
        failure: WebhookFailure,
        *,
        only_from: frozenset[WebhookFailureState],
        attempts_before: int | None = None,
        owner_before: str | None = None,
    ) -> bool:
        expires_at = int(time.time() + FAILURE_RETENTION.total_seconds())
        values: dict[str, Any] = {
            "account_id": failure.account_id,
            "notification_id": failure.notification_id,
            "kind": failure.kind,
            "url": failure.url,
            "state": failure.state,
            "attempts": failure.attempts,
            "last_error": failure.last_error,
            "last_status_code": failure.last_status_code,
            "last_attempt_at": failure.last_attempt_at,
            "next_attempt_at": failure.next_attempt_at,
            # A string, not a map: it goes back on the queue exactly as it came, whatever its values are.
            "notification": json.dumps(failure.notification, separators=(",", ":")),
            "owner": failure.owner,
            "expires_at": expires_at,
        }
        names = {f"#{name}": name for name in values}
        given = {name: value for name, value in values.items() if value is not None}
        sets = [f"#{name} = :{name}" for name in given]
        removed = [f"#{name}" for name, value in values.items() if value is None]
        names["#first_failed_at"] = "first_failed_at"
        sets.append("#first_failed_at = if_not_exists(#first_failed_at, :first_failed_at)")
        attribute_values = self._codec.dump({f":{name}": value for name, value in given.items()})
        attribute_values[":first_failed_at"] = {"S": failure.first_failed_at}
        condition = _failure_condition(
            sorted(only_from), attempts_before, owner_before or failure.owner, names, attribute_values
        )
        update = f"SET {', '.join(sets)}" + (f" REMOVE {', '.join(removed)}" if removed else "")
        try:
            answer = self.client.update_item(
                TableName=self.table_name,
                Key=_failure_key(failure.account_id, failure.notification_id),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attribute_values,
                ReturnValues="ALL_NEW",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        first_failed_at = answer["Attributes"]["first_failed_at"]["S"]
        self._put_listing_pointer(failure.account_id, failure.notification_id, first_failed_at, expires_at)
        return True

    def _put_listing_pointer(
        self, account_id: str, notification_id: str, first_failed_at: str, expires_at: int
    ) -> None:
        """Written with every change of the record, and expiring with it: if the first failure's Lambda died between
        the two writes, the next makes the record listable; a record kept longer (it failed again, or was resent)
        stays listed as long. The key holds the first failure time, which never changes."""
        self.client.update_item(
            TableName=self.table_name,
            Key={"pk": {"S": _pk(account_id)}, "sk": {"S": f"FAILAT#{first_failed_at}#{notification_id}"}},
            UpdateExpression="SET notification_id = :id, expires_at = :expires",
            ExpressionAttributeValues={":id": {"S": notification_id}, ":expires": {"N": str(expires_at)}},
        )

    def get_webhook_failure(self, account_id: str, notification_id: str) -> WebhookFailure | None:
        found = self.client.get_item(
            TableName=self.table_name, Key=_failure_key(account_id, notification_id), ConsistentRead=True
        ).get("Item")
        return self._failure_from_item(found) if found else None

    def _failure_from_item(self, item: dict[str, Any]) -> WebhookFailure:
        values = self._codec.load(item)
        values["notification"] = json.loads(values["notification"])
        return WebhookFailure.model_validate(values)

    def set_webhook_failure_state(
        self,
        account_id: str,
        notification_id: str,
        target: WebhookFailureState,
        *,
        only_from: frozenset[WebhookFailureState],
        now: str,
        last_error: str | None = None,
        resent_before: str | None = None,
        url: str | None = None,
    ) -> bool:
        allowed = sorted(only_from)
        if not allowed and resent_before is None:
            return False
        values: dict[str, dict[str, str]] = {f":from{i}": {"S": state} for i, state in enumerate(allowed)}
        movable = [f"#state IN ({', '.join(values)})"] if allowed else []
        if resent_before is not None:
            # models.iso stamps sort as strings in time order.
            movable.append("(#state = :resent AND (attribute_not_exists(resent_at) OR resent_at < :resent_before))")
            values |= {":resent": {"S": "resent"}, ":resent_before": {"S": resent_before}}
        sets, removed = "SET #state = :target, #stamp = :now, expires_at = :expires", "REMOVE next_attempt_at"
        if last_error is not None:
            sets += ", last_error = :error"
            removed += ", last_status_code"
            values[":error"] = {"S": last_error}
        if url is not None:
            sets += ", #url = :url"
            values[":url"] = {"S": url}
        # Kept for the retention after its last change, as after a failure (a resend on day 29 has its 30 days).
        expires_at = int(time.time() + FAILURE_RETENTION.total_seconds())
        try:
            answer = self.client.update_item(
                TableName=self.table_name,
                Key=_failure_key(account_id, notification_id),
                # No further attempt is planned in any state this moves to: resent starts a fresh schedule.
                UpdateExpression=f"{sets} {removed}",
                ConditionExpression=f"attribute_exists(pk) AND ({' OR '.join(movable)})",
                ExpressionAttributeNames={
                    "#state": "state",
                    "#stamp": f"{target}_at",
                    **({"#url": "url"} if url is not None else {}),
                },
                ExpressionAttributeValues={
                    ":target": {"S": target},
                    ":now": {"S": now},
                    ":expires": {"N": str(expires_at)},
                    **values,
                },
                ReturnValues="ALL_NEW",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        first_failed_at = answer["Attributes"].get("first_failed_at", {}).get("S")
        if first_failed_at is not None:
            self._put_listing_pointer(account_id, notification_id, first_failed_at, expires_at)
        return True

    def list_webhook_failures(
        self,
        account_id: str,
        *,
        state: WebhookFailureState | None = None,
        limit: int = 100,
        cursor: str | None = None,
        budget: PageBudget[WebhookFailure] | None = None,
    ) -> tuple[list[WebhookFailure], str | None]:
        """Reads the listing pointers newest first and fetches their records. With a state filter a page is filled
        by reading on, bounded in reads: it may come back short, with a cursor to follow. The cursor is the key
        of the last pointer kept or read, so no record is skipped or repeated."""
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": _pk(account_id)}, ":prefix": {"S": "FAILAT#"}},
            "ScanIndexForward": False,
        }
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(
                cursor,
                pk=_pk(account_id),
                sk_form=_LISTING_SK,
                problem="the `cursor` is not valid for this listing: pass the last page's next_cursor",
            )

        def load(pointers: list[dict[str, Any]]) -> list[tuple[dict[str, Any], WebhookFailure]]:
            found = self._failures_of(account_id, [p["notification_id"]["S"] for p in pointers])
            kept = []
            for pointer in pointers:
                failure = found.get(pointer["notification_id"]["S"])
                # A pointer outlives its record by at most TTL's lag: skip it.
                if failure is not None and (state is None or failure.state == state):
                    kept.append(({"pk": pointer["pk"], "sk": pointer["sk"]}, failure))
            return kept

        kept, last = read_page(
            self.client.query,
            query,
            limit,
            load=load,
            key_of=lambda pair: pair[0],
            rounds=_MAX_LIST_ROUNDS,
            budget=PageBudget(lambda pair: budget.size_of(pair[1]), budget.max_bytes) if budget else None,
        )
        return [failure for _, failure in kept], encode_cursor(last)

    def _failures_of(self, account_id: str, notification_ids: list[str]) -> dict[str, WebhookFailure]:
        keys = [_failure_key(account_id, nid) for nid in dict.fromkeys(notification_ids)]
        items = batch_get(self.client, self.table_name, keys, consistent=True)
        failures = [self._failure_from_item(item) for item in items]
        return {failure.notification_id: failure for failure in failures}


def _failure_condition(
    allowed: list[str], attempts_before: int | None, owner: str | None, names: dict[str, str], values: dict[str, Any]
) -> str:
    """save_webhook_failure's condition: no record yet, or one in an `allowed` state (and, with `attempts_before`,
    counting that many failed attempts: a `resent` one counts none, whoever owned it; one that counts some, owned by
    `owner` or by no one, when `owner` is given). Adds its names and values."""
    values |= {f":from{i}": {"S": state} for i, state in enumerate(allowed)}
    states = f"#state IN ({', '.join(f':from{i}' for i in range(len(allowed)))})" if allowed else ""
    if attempts_before is None:
        return " OR ".join(["attribute_not_exists(pk)", *([states] if states else [])])
    clauses = []
    if attempts_before == 0:
        clauses.append("attribute_not_exists(pk)")
        if "resent" in allowed:
            values[":resent"] = {"S": "resent"}
            clauses.append("#state = :resent")
    if states:
        names["#attempts"] = "attempts"
        values[":attempts_before"] = {"N": str(attempts_before)}
        owned = ""
        if owner is not None:
            values[":owner_before"] = {"S": owner}
            owned = " AND (attribute_not_exists(#owner) OR #owner = :owner_before)"
        clauses.append(f"({states} AND #attempts = :attempts_before{owned})")
    return " OR ".join(clauses) or "attribute_not_exists(pk) AND attribute_exists(pk)"
