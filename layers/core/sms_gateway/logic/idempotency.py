"""Idempotent sends: a repeated request under the same key returns the first answer and sends nothing again."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

from sms_gateway.domain.models import StoredAnswer
from sms_gateway.errors import InvalidRequest
from sms_gateway.ports import IdempotencyStore

MAX_KEY_LENGTH = 255


def request_key(header_value: str | None, ref_id: str | None) -> str | None:
    """The client's Idempotency-Key header wins; otherwise its own `ref_id` deduplicates (24 hours)."""
    if header_value is not None:
        key = header_value.strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        return f"key:{key}"
    return f"ref:{ref_id}" if ref_id else None


def fingerprint(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def run_once(
    store: IdempotencyStore,
    *,
    scope: str,
    key: str | None,
    request_fingerprint: str,
    now: datetime,
    produce: Callable[[], StoredAnswer],
) -> StoredAnswer:
    """Only a successful (2xx) answer is kept: a refused or failed request may be retried under its key."""
    if key is None:
        return produce()
    earlier = store.begin(scope, key, request_fingerprint, now=now)
    if earlier is not None:
        return earlier
    try:
        answer = produce()
    except BaseException:
        store.abandon(scope, key)
        raise
    if 200 <= answer.status_code < 300:
        store.complete(scope, key, answer)
    else:
        store.abandon(scope, key)
    return answer
