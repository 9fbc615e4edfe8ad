"""Lambda SnapStart's restore hook (docs/template.md, "SnapStart"): environments resumed from one snapshot must not
share the pseudo-random state it holds."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def reseed_after_restore() -> None:
    """Every environment resumed from one snapshot starts with the snapshot's Mersenne Twister state: without a new
    seed, they would all draw the same retry jitter (logic/dispatch.py, logic/webhook_retries.py, botocore's
    retries), so their retries would stay in step. Ids need nothing: domain/ids.py draws its random bits from the
    kernel (`secrets`) on every call and keeps no seed, and none is made during init."""
    random.seed()


def register_restore_hooks(register: Callable[..., Any] | None = None) -> bool:
    """Registers the hook with the runtime's `snapshot_restore_py` (in the Lambda Python runtime; absent elsewhere,
    where nothing is restored). Harmless without SnapStart: the runtime never calls the hook. Whether it was
    registered."""
    if register is None:
        try:
            from snapshot_restore_py import register_after_restore
        except ImportError:
            return False
        register = register_after_restore
    register(reseed_after_restore)
    return True
