"""Billing units of the metered requests: DynamoDB read/write request units computed from item sizes, SQS
requests per 64 KB chunk, by queue type. moto returns no ConsumedCapacity, so the units are derived the way DynamoDB's
pricing pages define them (see docs/benchmarks-floor.md, "How capacity units are counted")."""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal
from typing import Any

from bench import AwsCallMeter

KB = 1024
WRITE_UNIT_BYTES = 1 * KB
READ_UNIT_BYTES = 4 * KB
SQS_CHUNK_BYTES = 64 * KB


def attribute_size(value: dict[str, Any]) -> int:
    """Bytes of one DynamoDB attribute value, by the published sizing rules (numbers: about one byte per two
    significant digits plus one; maps and lists: 3 bytes plus one per element plus their contents)."""
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        digits = Decimal(inner).normalize().as_tuple().digits
        return math.ceil(len(digits) / 2) + 1
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(attribute_size({kind[0]: element}) for element in inner)
    if kind == "M":
        return 3 + sum(len(name.encode()) + attribute_size(v) + 1 for name, v in inner.items())
    if kind == "L":
        return 3 + sum(attribute_size(v) + 1 for v in inner)
    raise ValueError(f"unknown attribute type {kind!r}")


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


class CapacityMeter(AwsCallMeter):
    """AwsCallMeter that also counts billing units: DynamoDB RRU and WRU (base table and each global
    secondary index an item write touches) and SQS billed requests (one per 64 KB of payload).

    Writes need the item before and after: they are read from moto's own table (no request, so nothing is
    counted), around each write. That costs time, so durations are never measured with this meter."""

    def __init__(self, probe: Any, table_name: str) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        super().__init__()
        self.table_name = table_name
        self._table = dynamodb_backends[DEFAULT_ACCOUNT_ID][probe.meta.region_name].get_table(table_name)
        self.units: Counter[str] = Counter()  # float counts: eventually consistent reads are half units
        table = probe.describe_table(TableName=table_name)["Table"]
        self.key_names = [k["AttributeName"] for k in table["KeySchema"]]
        self.indexes = [
            (
                index["IndexName"],
                [k["AttributeName"] for k in index["KeySchema"]],
                index["Projection"]["ProjectionType"],
                index["Projection"].get("NonKeyAttributes", []),
            )
            for index in table.get("GlobalSecondaryIndexes", [])
        ]

    def reset(self) -> None:
        super().reset()
        self.units.clear()

    def attach(self, client: Any) -> None:
        super().attach(client)
        unique = f"bench-capacity-{id(self)}"
        client.meta.events.register("provide-client-params.*.*", self._params, unique_id=f"{unique}-params")
        client.meta.events.register("before-call.*.*", self._before, unique_id=f"{unique}-before")
        client.meta.events.register("after-call.*.*", self._after, unique_id=f"{unique}-after")

    # ------------------------------------------------------------------ hooks

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = dict(params)

    def _before(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        params = context.get("bench_params", {})
        if service == "dynamodb" and operation in ("PutItem", "UpdateItem", "DeleteItem"):
            context["bench_old"] = [self._current(params["Key"] if "Key" in params else self._key(params["Item"]))]
        elif service == "dynamodb" and operation == "TransactWriteItems":
            context["bench_old"] = [self._current(key) if key else None for key in self._transaction_keys(params)]
        elif service == "dynamodb" and operation == "BatchWriteItem":
            context["bench_old"] = [
                self._current(
                    self._key(request["PutRequest"]["Item"])
                    if "PutRequest" in request
                    else request["DeleteRequest"]["Key"]
                )
                for request in params["RequestItems"].get(self.table_name, [])
            ]

    def _after(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], http_response: Any, **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        params = context.get("bench_params", {})
        ok = http_response.status_code < 300
        with self.lock:
            if service == "sqs":
                self._sqs(operation, params)
            elif service == "dynamodb":
                self._dynamodb(operation, params, parsed, context.get("bench_old", []), ok)
            elif service == "kms":
                # The notifier opens an account's webhook credentials once per container (adapters/kms.py).
                self.units["kms:request"] += 1

    # ------------------------------------------------------------------ SQS

    def _sqs(self, operation: str, params: dict[str, Any]) -> None:
        if operation == "SendMessageBatch":
            payload = sum(len(e["MessageBody"].encode()) + _attributes_size(e) for e in params["Entries"])
        elif operation == "SendMessage":
            payload = len(params["MessageBody"].encode()) + _attributes_size(params)
        else:
            payload = 0
        kind = "sqs:fifo" if str(params.get("QueueUrl", "")).endswith(".fifo") else "sqs:standard"
        self.units[kind] += max(1, math.ceil(payload / SQS_CHUNK_BYTES))

    # ------------------------------------------------------------------ DynamoDB

    def _key(self, item: dict[str, Any]) -> dict[str, Any]:
        return {name: item[name] for name in self.key_names}

    def _current(self, key: dict[str, Any]) -> dict[str, Any] | None:
        from moto.dynamodb.models.dynamo_type import DynamoType

        hash_name, *range_name = self.key_names
        found = self._table.get_item(DynamoType(key[hash_name]), DynamoType(key[range_name[0]]) if range_name else None)
        return found.to_json()["Attributes"] if found else None

    def _transaction_keys(self, params: dict[str, Any]) -> list[dict[str, Any] | None]:
        """The key of each entry of a TransactWriteItems on this table (None for another table's)."""
        keys: list[dict[str, Any] | None] = []
        for entry in params["TransactItems"]:
            spec = next(iter(entry.values()))
            if spec.get("TableName") != self.table_name:
                keys.append(None)
            else:
                keys.append(spec["Key"] if "Key" in spec else self._key(spec["Item"]))
        return keys

    def _write(self, old: dict[str, Any] | None, new: dict[str, Any] | None, ok: bool) -> None:
        if not ok:
            # A refused conditional write still costs the units of the item it was checked against.
            self.units["dynamodb:WRU"] += write_units(item_size(old))
            return
        self.units["dynamodb:WRU"] += write_units(max(item_size(old), item_size(new)))
        for name, keys, projection, included in self.indexes:
            before = _projected(old, keys, projection, included, self.key_names)
            after = _projected(new, keys, projection, included, self.key_names)
            if before == after:
                continue
            # A changed index key is a delete of the old entry and a put of the new one.
            writes = [p for p in (before, after) if p is not None]
            if before is not None and after is not None and all(before[k] == after[k] for k in keys):
                writes = [after if item_size(after) >= item_size(before) else before]
            self.units[f"dynamodb:WRU:{name}"] += sum(write_units(item_size(p)) for p in writes)

    def _dynamodb(
        self, operation: str, params: dict[str, Any], parsed: dict[str, Any], old: list[Any], ok: bool
    ) -> None:
        if operation == "GetItem":
            self.units["dynamodb:RRU"] += read_units(item_size(parsed.get("Item")), bool(params.get("ConsistentRead")))
        elif operation == "BatchGetItem":
            for table, request in params["RequestItems"].items():
                found = {
                    tuple(sorted((k, str(v)) for k, v in self._key(item).items())): item
                    for item in parsed.get("Responses", {}).get(table, [])
                }
                for key in request["Keys"]:
                    item = found.get(tuple(sorted((k, str(v)) for k, v in key.items())))
                    self.units["dynamodb:RRU"] += read_units(item_size(item), bool(request.get("ConsistentRead")))
        elif operation in ("Query", "Scan"):
            items = parsed.get("Items", [])
            size = sum(item_size(i) for i in items)
            scanned = parsed.get("ScannedCount", len(items))
            if items and scanned > len(items):
                # Filtered-out items were read too: assume they were the size of those kept.
                size = size * scanned // len(items)
            consistent = bool(params.get("ConsistentRead")) and "IndexName" not in params
            self.units["dynamodb:RRU"] += read_units(size, consistent)
        elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
            key = params["Key"] if "Key" in params else self._key(params["Item"])
            new = self._current(key) if ok else None
            self._write(old[0] if old else None, new, ok)
        elif operation == "BatchWriteItem":
            for before, request in zip(old, params["RequestItems"].get(self.table_name, []), strict=False):
                self._write(before, request.get("PutRequest", {}).get("Item"), ok)
        elif operation == "TransactWriteItems":
            # Each entry bills twice the units of a plain write of the same item (the larger of before and after;
            # a ConditionCheck the item it reads); its index entries as a plain write's.
            for key, before in zip(self._transaction_keys(params), old, strict=True):
                if key is None:
                    continue  # another table's item: not metered here
                after = self._current(key) if ok else None
                self.units["dynamodb:WRU"] += write_units(max(item_size(before), item_size(after)))
                self._write(before, after, ok)
        elif operation == "TransactGetItems":
            for entry in parsed.get("Responses", []):
                self.units["dynamodb:RRU"] += 2 * read_units(item_size(entry.get("Item")), True)


def _projected(
    item: dict[str, Any] | None, keys: list[str], projection: str, included: list[str], table_keys: list[str]
) -> dict[str, Any] | None:
    """What a global secondary index holds for an item (None when the item is not in the index)."""
    if item is None or not all(k in item for k in keys):
        return None
    if projection == "ALL":
        return dict(item)
    names = set(keys) | set(table_keys) | (set(included) if projection == "INCLUDE" else set())
    return {k: v for k, v in item.items() if k in names}


def _attributes_size(entry: dict[str, Any]) -> int:
    size = 0
    for name, value in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(value.get("DataType", "").encode())
        size += len(str(value.get("StringValue", "")).encode()) + len(value.get("BinaryValue", b""))
    return size
