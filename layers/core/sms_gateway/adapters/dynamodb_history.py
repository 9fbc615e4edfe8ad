"""DynamoDB batch history: an account's batches newest first, optionally within a time range (a DynamoStore mixin).

Batches live in the account's partition (`pk=ACC#<account_id>`, `sk=BATCH#<reference_id, 19 digits>`) next to
the account item, its groups and credential listings. Reference ids are time-ordered, so a key range on
`BATCH#` is the time range, and reading the range backwards lists the newest batch first: no index needed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key, read_page
from sms_gateway.adapters.dynamodb_inbox import first_id_at, last_id_at
from sms_gateway.domain.ids import MAX_ID
from sms_gateway.domain.models import Batch

BATCH_SK_PREFIX = "BATCH#"
BATCH_SK = id_sort_key(BATCH_SK_PREFIX)


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
        from sms_gateway.adapters.dynamodb import account_pk, batch_sk

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
