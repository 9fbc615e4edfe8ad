"""Scheduled batches their schedule did not release, for the sweeper (logic/sweep.py): a scheduled batch is written
with sweep_shard=SCHEDULED#<0-3> and sweep_at (when the sweeper may release it: domain.models.release_sweep_due), and
every write that moves the batch out of `scheduled` removes both (adapters/dynamodb.py, _batch_status_update), so
`sweep-index` lists only batches still scheduled (dynamodb_sweep.py).

The sweeper's writes here name only pk, sk, status, sweep_shard and sweep_at and return nothing, so its IAM policy can
hold its writes to the account partition (ACC#) to those attributes (template.yaml, SweeperFunction): it never
writes an account's credits.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from sms_gateway.adapters.dynamodb_sweep import SCHEDULED, UNMARK, due_entries, epoch_seconds
from sms_gateway.domain.models import BatchKey
from sms_gateway.domain.status import MessageStatus

_ACCOUNT_PREFIX = "ACC#"
_BATCH_PREFIX = "BATCH#"


class DynamoUnreleasedBatchesMixin:
    client: Any
    table_name: str

    def claim_unreleased_batches(self, *, now: datetime, until: datetime, limit: int) -> list[BatchKey]:
        """Up to `limit` batches still scheduled whose sweep time has come by `now`, oldest first, each claimed until
        `until` (its `sweep_at` moved there, by a write conditional on its being due and scheduled still): a
        concurrent sweep, or one before `until`, does not get it again. One that moved on since the index listed it
        is passed over, and one that moved on and still carries its keys (written by a build before they were
        removed with its status) is taken out of the index."""
        claimed: list[BatchKey] = []
        for entry in due_entries(self, SCHEDULED, now=now, limit=limit):
            key = {"pk": entry["pk"], "sk": entry["sk"]}
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=key,
                    UpdateExpression="SET sweep_at = :until",
                    ConditionExpression="sweep_at <= :now AND #status = :scheduled",
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues={
                        ":now": {"N": str(epoch_seconds(now))},
                        ":until": {"N": str(epoch_seconds(until))},
                        ":scheduled": {"S": str(MessageStatus.SCHEDULED)},
                    },
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                self._unmark_moved_on(key)
                continue
            claimed.append(batch_key_of(entry))
        return claimed

    def _unmark_moved_on(self, key: dict[str, Any]) -> None:
        """Takes a batch that is no longer scheduled out of the index, if it is still in it; nothing otherwise (it was
        released or claimed meanwhile: the index lags behind the item)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression=f"REMOVE {UNMARK}",
                ConditionExpression="attribute_exists(sweep_at) AND #status <> :scheduled",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":scheduled": {"S": str(MessageStatus.SCHEDULED)}},
            )


def batch_key_of(entry: dict[str, Any]) -> BatchKey:
    """The batch an index entry's keys (`ACC#<account_id>`, `BATCH#<reference_id>`) name."""
    return BatchKey(
        account_id=entry["pk"]["S"].removeprefix(_ACCOUNT_PREFIX),
        reference_id=int(entry["sk"]["S"].removeprefix(_BATCH_PREFIX)),
    )
