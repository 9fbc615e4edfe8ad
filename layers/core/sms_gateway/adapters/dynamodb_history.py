"""DynamoDB batch history: an account's batches newest first, optionally within a time range (a DynamoStore mixin).

Batches live in the account's partition (`pk=ACC#<account_id>`, `sk=BATCH#<reference_id, 19 digits>`) next to
the account item, its groups and credential listings. Reference ids are time-ordered, so a key range on
`BATCH#` is the range of times they were made, and reading the range backwards lists the newest batch first: no
index needed. A batch sent at once goes out when it is made, so that range is also when it went out.

A scheduled batch goes out at its own time, days or weeks after it was made: it has an entry of its own next to it,
`sk=GOES_OUT#<when it goes out, epoch ms, 13 digits>#<reference_id, 19 digits>` (`domain.models.goes_out_at`),
written in the transaction that writes the batch (no request more; a batch's `send_at` never changes) and expiring
with it. A key range on `GOES_OUT#` is then the scheduled batches going out in a time range, whenever they were
made: the portal's figures of what was sent in a week find a campaign made earlier. No index: a new one would be a
second index change in one deploy for a stack made before `sweep-index` (tests/unit/test_template.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key, read_page
from sms_gateway.adapters.dynamodb_batch import batch_get
from sms_gateway.adapters.dynamodb_inbox import first_id_at, last_id_at
from sms_gateway.adapters.dynamodb_partitions import account_items, account_pk
from sms_gateway.domain.ids import MAX_ID
from sms_gateway.domain.models import Batch, goes_out_at

BATCH_SK_PREFIX = "BATCH#"
BATCH_SK = id_sort_key(BATCH_SK_PREFIX)
GOES_OUT_SK_PREFIX = "GOES_OUT#"
_LATEST_MS = 10**13 - 1


def goes_out_sk(batch: Batch) -> str | None:
    """The sort key of a scheduled batch's entry by send time; None for a batch sent at once (its reference id
    orders it by when it went out already)."""
    if batch.send_at is None:
        return None
    moment = goes_out_at(created_at=batch.created_at, send_at=batch.send_at)
    return f"{GOES_OUT_SK_PREFIX}{_epoch_ms(moment):013d}#{batch.reference_id:019d}"


def _send_time_key(batch: Batch) -> dict[str, Any] | None:
    """The key of a scheduled batch's entry by send time; None for a batch sent at once."""
    sk = goes_out_sk(batch)
    return None if sk is None else {"pk": {"S": account_pk(batch.account_id)}, "sk": {"S": sk}}


def _epoch_ms(moment: datetime) -> int:
    return min(max(int(moment.timestamp() * 1000), 0), _LATEST_MS)


class DynamoHistoryMixin:
    """Implements ports.BatchHistory; mixed into DynamoStore, so `client`, `table_name` and `_codec` are its."""

    client: Any
    table_name: str
    _codec: Any

    def list_batches(
        self,
        account_id: str,
        *,
        limit: int = 25,
        cursor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[Batch], str | None]:
        # Imported here: adapters.dynamodb imports this module to build DynamoStore.
        from sms_gateway.adapters.dynamodb import batch_sk

        pk = account_pk(account_id)
        low_id = first_id_at(since) if since is not None else 0
        high_id = last_id_at(until) if until is not None else MAX_ID
        if low_id > high_id:
            return [], None
        low, high = batch_sk(low_id), batch_sk(high_id)
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":low": {"S": low}, ":high": {"S": high}},
            "ScanIndexForward": False,
        }
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(cursor, pk=pk, sk_form=BATCH_SK, sk_range=(low, high))
        batches, last = read_page(
            self.client.query,
            query,
            limit,
            load=lambda items: [Batch.model_validate(self._codec.load(item)) for item in items],
            key_of=lambda batch: {"pk": {"S": pk}, "sk": {"S": batch_sk(batch.reference_id)}},
        )
        return batches, encode_cursor(last)

    def scheduled_batch_ids(
        self, account_id: str, *, limit: int, since: datetime | None = None, until: datetime | None = None
    ) -> tuple[list[int], bool]:
        low = f"{GOES_OUT_SK_PREFIX}{_epoch_ms(since) if since is not None else 0:013d}#"
        high = f"{GOES_OUT_SK_PREFIX}{_epoch_ms(until) if until is not None else _LATEST_MS:013d}#{MAX_ID:019d}"
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": {"S": account_pk(account_id)},
                ":low": {"S": low},
                ":high": {"S": high},
            },
            "ProjectionExpression": "sk",
            "ScanIndexForward": False,
        }
        # One entry past the limit says whether there are more; pages are followed (a page stops at 1 MB).
        found: list[str] = []
        while len(found) <= limit:
            answer = self.client.query(**request, Limit=limit + 1 - len(found))
            found.extend(item["sk"]["S"] for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return [int(sk.rsplit("#", 1)[1]) for sk in found[:limit]], len(found) <= limit

    def get_batches(self, account_id: str, reference_ids: Sequence[int]) -> list[Batch]:
        from sms_gateway.adapters.dynamodb import batch_sk

        if not reference_ids:
            return []
        pk = account_pk(account_id)
        keys = [{"pk": {"S": pk}, "sk": {"S": batch_sk(reference_id)}} for reference_id in reference_ids]
        items = batch_get(self.client, self.table_name, keys, consistent=False)
        return [Batch.model_validate(self._codec.load(item)) for item in items]

    def scheduled_batches(self, account_id: str | None = None) -> Iterator[tuple[Batch, int | None]]:
        """Every scheduled batch (one with a `send_at`) and its TTL (`expires_at`, None without one): of one account
        (a Query of its partition), else of all (a Scan of the whole table, about half a read unit per 4 KB stored:
        an operator's one-off, `admin backfill-send-times`)."""
        items = account_items(
            self.client, self.table_name, account_id, BATCH_SK_PREFIX, condition="attribute_exists(send_at)"
        )
        for item in items:
            batch = Batch.model_validate(self._codec.load(item))
            if batch.send_at is not None:
                expires_at = item.get("expires_at", {}).get("N")
                yield batch, int(expires_at) if expires_at is not None else None

    def add_send_time_entry(self, batch: Batch, expires_at: int | None) -> bool:
        """Writes a scheduled batch's entry by send time unless it has one (conditional: run again, or racing another
        run, it writes nothing); True when written. It expires with its batch (`expires_at`, the batch's TTL)."""
        item = _send_time_key(batch)
        if item is None:
            return False
        if expires_at is not None:
            item["expires_at"] = {"N": str(expires_at)}
        try:
            self.client.put_item(TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def has_send_time_entry(self, batch: Batch) -> bool:
        key = _send_time_key(batch)
        if key is None:
            return False
        answer = self.client.get_item(
            TableName=self.table_name, Key=key, ProjectionExpression="pk", ConsistentRead=True
        )
        return "Item" in answer
