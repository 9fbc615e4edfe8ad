"""The sparse `sweep-index` of work a sweep finishes (logic/sweep.py): the keys an item carries while it waits for
one, and the claim a sweep takes on it. Shared by the kinds that use it (docs/data-model.md):

  sweep_shard=<KIND>#<0-3>  sweep_at=<when a sweep may take the item, epoch seconds>

INBOUND: an inbound SMS whose notification is not queued yet (dynamodb_inbox.py); REPORT: a message whose final
delivery report's notification the notify queue refused (dynamodb_delivery.py, mark_unannounced); SCHEDULED: a batch
still `scheduled`, due for the sweeper SCHEDULED_RELEASE_SWEEP_MARGIN after its send time; QUEUED: a send of 100
recipients or more to go out at once whose records are not known to be queued, due UNQUEUED_RELEASE_SWEEP_MARGIN after
it was accepted (both unreleased batches: dynamodb_unreleased.py, domain.models.release_sweep_due).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

SWEEP_INDEX = "sweep-index"
INBOUND = "INBOUND"
REPORT = "REPORT"
SCHEDULED = "SCHEDULED"
QUEUED = "QUEUED"
# A few partitions per kind, so a burst (the notify queue down) is not one hot key; an item's shard is its id's low
# bits, which are random.
SWEEP_SHARDS = 4
# The update expression clause that takes an item out of the index.
UNMARK = "sweep_shard, sweep_at"


def sweep_shard(kind: str, shard: int) -> str:
    return f"{kind}#{shard}"


def epoch_seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def sweep_keys(kind: str, item_id: int, due: datetime) -> dict[str, Any]:
    """The attributes (plain values) that put an item in the index, due at `due`."""
    return {"sweep_shard": sweep_shard(kind, item_id % SWEEP_SHARDS), "sweep_at": epoch_seconds(due)}


def due_entries(store: Any, kind: str, *, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` index entries (keys and `sweep_at`) of `kind` due by `now`, oldest due first. The index is
    eventually consistent (and keys only): a claim on the item itself decides. `store` is a DynamoStore (`client`,
    `table_name`)."""
    at_now = {"N": str(epoch_seconds(now))}
    due: list[tuple[int, dict[str, Any]]] = []
    for shard in range(SWEEP_SHARDS):
        found = store.client.query(
            TableName=store.table_name,
            IndexName=SWEEP_INDEX,
            KeyConditionExpression="sweep_shard = :shard AND sweep_at <= :now",
            ExpressionAttributeValues={":shard": {"S": sweep_shard(kind, shard)}, ":now": at_now},
            Limit=limit,
        )
        due.extend((int(item["sweep_at"]["N"]), item) for item in found.get("Items", []))
    due.sort(key=lambda entry: entry[0])
    return [item for _, item in due[:limit]]


def claim_due(store: Any, kind: str, *, now: datetime, until: datetime, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` items of `kind` due by `now`, oldest due first, each claimed until `until` by a conditional write
    on it being due still (its `sweep_at` moved there): the items as stored now (DynamoDB attribute values). An item
    cleared, gone or claimed by another sweep since the index listed it is passed over."""
    client = store.client
    at_now = {"N": str(epoch_seconds(now))}
    claimed: list[dict[str, Any]] = []
    for item in due_entries(store, kind, now=now, limit=limit):
        try:
            answer = client.update_item(
                TableName=store.table_name,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression="SET sweep_at = :until",
                ConditionExpression="sweep_at <= :now",
                ExpressionAttributeValues={":now": at_now, ":until": {"N": str(epoch_seconds(until))}},
                ReturnValues="ALL_NEW",
            )
        except client.exceptions.ConditionalCheckFailedException:
            continue  # finished since (its mark removed), gone, or claimed by another sweep
        claimed.append(answer["Attributes"])
    return claimed
