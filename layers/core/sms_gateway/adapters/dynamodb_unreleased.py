"""Batches nothing released, for the sweeper (logic/sweep.py), in `sweep-index` (dynamodb_sweep.py) under two kinds:

  SCHEDULED#<0-3>  a scheduled batch, from its write until a write moves it out of `scheduled` (its release, a cancel,
                   a send's undo: adapters/dynamodb.py, _batch_status_update, removes the keys in the same write);
  QUEUED#<0-3>     a send of 100 recipients or more to go out at once (domain.models.swept_until_queued), from its
                   write until its dispatch records are queued: the api's write after its publish removes the keys
                   (adapters/dynamodb.py, clear_release_sweep), or the release's (logic.scheduled), or a write that
                   fails the batch.

`sweep_at` is when the sweeper may release it (domain.models.release_sweep_due), so the index lists only batches
that are still unreleased past their time. The kind says which status the batch must still have to be released,
and whether it may have a schedule to delete first.

The sweeper's writes here name only pk, sk, status, sweep_shard and sweep_at and return nothing, so its IAM policy can
hold its writes to the account partition (ACC#) to those attributes (template.yaml, SweeperFunction): it never
writes an account's credits.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from sms_gateway.adapters.dynamodb_partitions import ACCOUNT_PK_PREFIX
from sms_gateway.adapters.dynamodb_sweep import QUEUED, SCHEDULED, UNMARK, due_entries, epoch_seconds, sweep_keys
from sms_gateway.domain.models import Batch, UnreleasedBatch, release_sweep_due
from sms_gateway.domain.status import MessageStatus

_BATCH_PREFIX = "BATCH#"
# The sweep-index kind of an unreleased batch, by the status it is released from.
UNRELEASED_KINDS = {MessageStatus.SCHEDULED: SCHEDULED, MessageStatus.QUEUED: QUEUED}


def unreleased_sweep_keys(batch: Batch) -> dict[str, Any]:
    """The attributes (plain values) a batch being written carries to be in `sweep-index` until it is released; none
    for a batch the sweeper never releases."""
    due = release_sweep_due(batch)
    if due is None:
        return {}
    return sweep_keys(UNRELEASED_KINDS[batch.status], batch.reference_id, due)


class DynamoUnreleasedBatchesMixin:
    client: Any
    table_name: str

    def claim_unreleased_batches(self, *, now: datetime, until: datetime, limit: int) -> list[UnreleasedBatch]:
        """Up to `limit` batches still unreleased (scheduled, or to go out at once and not known to be queued) whose
        sweep time has come by `now`, oldest first, each claimed until `until` (its `sweep_at` moved there, by a
        write conditional on its being due and in its kind's status still): a concurrent sweep, or one before
        `until`, does not get it again. One that moved on since the index listed it is passed over, and one that
        moved on and still carries its keys (written by a build before they were removed with its status) is taken
        out of the index."""
        entries = [
            (status, entry)
            for status, kind in UNRELEASED_KINDS.items()
            for entry in due_entries(self, kind, now=now, limit=limit)
        ]
        entries.sort(key=lambda found: int(found[1]["sweep_at"]["N"]))
        claimed: list[UnreleasedBatch] = []
        for status, entry in entries[:limit]:
            key = {"pk": entry["pk"], "sk": entry["sk"]}
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=key,
                    UpdateExpression="SET sweep_at = :until",
                    ConditionExpression="sweep_at <= :now AND #status = :unreleased",
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues={
                        ":now": {"N": str(epoch_seconds(now))},
                        ":until": {"N": str(epoch_seconds(until))},
                        ":unreleased": {"S": str(status)},
                    },
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                self._unmark_moved_on(key, status)
                continue
            claimed.append(unreleased_batch_of(entry, status))
        return claimed

    def _unmark_moved_on(self, key: dict[str, Any], status: MessageStatus) -> None:
        """Takes a batch no longer in `status` (its kind's) out of the index, if it is still in it; nothing otherwise
        (it was released or claimed meanwhile: the index lags behind the item)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression=f"REMOVE {UNMARK}",
                ConditionExpression="attribute_exists(sweep_at) AND #status <> :unreleased",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":unreleased": {"S": str(status)}},
            )


def unreleased_batch_of(entry: dict[str, Any], status: MessageStatus) -> UnreleasedBatch:
    """The batch an index entry's keys (`ACC#<account_id>`, `BATCH#<reference_id>`) name, unreleased in `status`
    (its kind's)."""
    return UnreleasedBatch(
        account_id=entry["pk"]["S"].removeprefix(ACCOUNT_PK_PREFIX),
        reference_id=int(entry["sk"]["S"].removeprefix(_BATCH_PREFIX)),
        status=status,
    )
