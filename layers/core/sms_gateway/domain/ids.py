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


# A batch's messages take the ids right after the batch's own (reference_id + 1 + position), so a message id
# names its batch to within this many ids: a message is found by its id without an index (adapters/dynamodb.py).
MESSAGES_PER_BATCH = 1000


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

    def new_block(self, size: int, now_ms: int | None = None) -> int:
        """A new id whose next `size` ids are this generator's too: no later id falls among them."""
        first = self.new_id(now_ms)
        if first + size > MAX_ID:
            raise OverflowError("id space exhausted")
        with self._lock:
            self._last = max(self._last, first + size)
        return first


_default = IdGenerator()


def new_id(now_ms: int | None = None) -> int:
    """A new id from the process-wide generator; `now_ms` (Unix ms) defaults to the wall clock."""
    return _default.new_id(now_ms)


def new_batch_id(now_ms: int | None = None) -> int:
    """A batch's reference id, with the MESSAGES_PER_BATCH ids after it kept for its messages (message_id_at)."""
    return _default.new_block(MESSAGES_PER_BATCH, now_ms)


def message_id_at(reference_id: int, position: int) -> int:
    """The id of the message to the recipient at `position` (from 0) of its batch's request: the same on every
    attempt at the request, so a send finished after its first request died gives its messages the same ids."""
    if not 0 <= position < MESSAGES_PER_BATCH:
        raise ValueError(f"a batch has at most {MESSAGES_PER_BATCH} messages, not a message at {position}")
    return reference_id + 1 + position


def batch_ids_around(message_id: int) -> tuple[int, int]:
    """The lowest and highest reference id the batch of a message with this id can have (message_id_at)."""
    return max(0, message_id - MESSAGES_PER_BATCH), message_id - 1


def id_time_ms(id: int) -> int:
    """The Unix millisecond an id was made in."""
    if not 0 <= id <= MAX_ID:
        raise ValueError(f"{id} is not an id")
    return (id >> RANDOM_BITS) + EPOCH_MS


def ascii_digits(text: str) -> bool:
    """One or more of 0-9 and nothing else. `str.isdigit` alone also accepts '²' and other digits that `int()`
    refuses, which turned a bad query parameter, id or signature timestamp into a 500."""
    return text.isascii() and text.isdigit()


# Unix seconds are 10 digits until the year 2286. A longer "timestamp" is refused before int() reads it: int()
# raises on more than 4300 digits, and a caller's header or query string turned into a 500 that way.
MAX_EPOCH_DIGITS = 12


def epoch_seconds(text: str) -> int | None:
    """Unix seconds written as ASCII digits (at most MAX_EPOCH_DIGITS of them), or None for anything else."""
    if not ascii_digits(text) or len(text) > MAX_EPOCH_DIGITS:
        return None
    return int(text)
