"""Time-ordered 63-bit ids for batches and messages: milliseconds since 2024 above 22 random bits."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

# 2024-01-01T00:00:00Z in Unix milliseconds; 41 bits of milliseconds from here last until 2093.
EPOCH_MS = 1_704_067_200_000
RANDOM_BITS = 22
TIME_BITS = 41
MAX_ID = 2**63 - 1
_MAX_ELAPSED_MS = 2**TIME_BITS - 1


class IdGenerator:
    """Ids that strictly increase within the process, even within one millisecond or when the clock steps
    back. Across processes (concurrent Lambdas) uniqueness rests on the 22 random bits, so stores still
    write new ids with a condition that the key does not exist."""

    def __init__(self, random_bits: Callable[[int], int] = secrets.randbits) -> None:
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last = 0

    def new_id(self, now_ms: int | None = None) -> int:
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        elapsed = now_ms - EPOCH_MS
        if not 0 <= elapsed <= _MAX_ELAPSED_MS:
            raise ValueError(f"{now_ms} ms is outside the id range (2024-01-01 plus 2**41 ms)")
        candidate = elapsed << RANDOM_BITS | self._random_bits(RANDOM_BITS)
        with self._lock:
            # Taking last + 1 lets the counter carry into the time bits, so a decoded time may run a
            # millisecond or so ahead under a burst; order matters more than that precision.
            candidate = max(candidate, self._last + 1)
            if candidate > MAX_ID:
                raise OverflowError("id space exhausted")
            self._last = candidate
        return candidate


_default = IdGenerator()


def new_id(now_ms: int | None = None) -> int:
    """A new id from the process-wide generator; `now_ms` (Unix ms) defaults to the wall clock."""
    return _default.new_id(now_ms)


def id_time_ms(id: int) -> int:
    """The Unix millisecond an id was made in."""
    if not 0 <= id <= MAX_ID:
        raise ValueError(f"{id} is not an id")
    return (id >> RANDOM_BITS) + EPOCH_MS


def ascii_digits(text: str) -> bool:
    """One or more of 0-9 and nothing else. `str.isdigit` alone also accepts '²' and other digits that `int()`
    refuses, which turned a bad query parameter, id or signature timestamp into a 500."""
    return text.isascii() and text.isdigit()
