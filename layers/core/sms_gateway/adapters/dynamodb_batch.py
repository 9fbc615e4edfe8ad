"""BatchGetItem in chunks of 100, retrying the keys DynamoDB leaves unprocessed (one loop for every reader)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

BATCH_GET_SIZE = 100
MAX_UNPROCESSED_ROUNDS = 8


def batch_get(
    client: Any, table_name: str, keys: Sequence[dict[str, Any]], *, consistent: bool
) -> list[dict[str, Any]]:
    """The items found for `keys` (raw attribute values, in no particular order); absent keys are skipped."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), BATCH_GET_SIZE):
        pending: dict[str, Any] = {
            table_name: {"Keys": list(keys[start : start + BATCH_GET_SIZE]), "ConsistentRead": consistent}
        }
        for attempt in range(MAX_UNPROCESSED_ROUNDS):
            answer = client.batch_get_item(RequestItems=pending)
            found.extend(answer.get("Responses", {}).get(table_name, []))
            pending = answer.get("UnprocessedKeys") or {}
            if not pending:
                break
            time.sleep(min(0.05 * 2**attempt, 1.0))
        else:
            raise RuntimeError(f"DynamoDB left {len(pending[table_name]['Keys'])} reads unprocessed")
    return found
