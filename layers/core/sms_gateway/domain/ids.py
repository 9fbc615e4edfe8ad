"""Time-ordered 63-bit ids for batches and messages: milliseconds since 2024 above 22 random bits (a batch's id: 12
random bits above 10 zero bits, the block its messages take)."""

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
# A batch id is the first of a block of this many ids, aligned on it (its low BATCH_BLOCK_BITS are zero), and its
# messages' ids are the rest of the block: two containers' batches made in one millisecond either have one id, which
# the store refuses to write twice for an account, or blocks apart, never sharing a message id. Until session 35 a
# batch id took all 22 random bits, and two batches less than 1000 apart shared message ids (docs/decisions.md).
BATCH_BLOCK_BITS = 10
BATCH_BLOCK = 2**BATCH_BLOCK_BITS
assert MESSAGES_PER_BATCH < BATCH_BLOCK


class IdGenerator:
    """Ids that strictly increase within the process, even within one millisecond or when the clock steps
    back. Across processes (concurrent Lambdas) uniqueness rests on the 22 random bits, so stores still
    write new ids with a condition that the key does not exist."""

    def __init__(self, random_bits: Callable[[int], int] = secrets.randbits) -> None:
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last = 0

    def new_id(self, now_ms: int | None = None) -> int:
        candidate = _elapsed_ms(now_ms) << RANDOM_BITS | self._random_bits(RANDOM_BITS)
        with self._lock:
            # Taking last + 1 lets the counter carry into the time bits, so a decoded time may run a
            # millisecond or so ahead under a burst; order matters more than that precision.
            candidate = max(candidate, self._last + 1)
            if candidate > MAX_ID:
                raise OverflowError("id space exhausted")
            self._last = candidate
        return candidate

    def new_block(self, now_ms: int | None = None) -> int:
        """A new id at the start of a block of BATCH_BLOCK ids, whose ids are this generator's too: no later id of
        it falls among them, and another generator's block is either the same (one millisecond, the same random
        bits) or apart, never overlapping."""
        draw = self._random_bits(RANDOM_BITS - BATCH_BLOCK_BITS)
        candidate = _elapsed_ms(now_ms) << RANDOM_BITS | draw << BATCH_BLOCK_BITS
        with self._lock:
            # The next block after the last id, when the draw falls below it (a burst in one millisecond).
            candidate = max(candidate, -(-(self._last + 1) // BATCH_BLOCK) * BATCH_BLOCK)
            if candidate + BATCH_BLOCK - 1 > MAX_ID:
                raise OverflowError("id space exhausted")
            self._last = candidate + BATCH_BLOCK - 1
        return candidate


def _elapsed_ms(now_ms: int | None) -> int:
    """Milliseconds since EPOCH_MS to `now_ms` (Unix ms; the wall clock when None), checked to fit the time bits."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    elapsed = now_ms - EPOCH_MS
    if not 0 <= elapsed <= _MAX_ELAPSED_MS:
        raise ValueError(f"{now_ms} ms is outside the id range (2024-01-01 plus 2**41 ms)")
    return elapsed


_default = IdGenerator()


def new_id(now_ms: int | None = None) -> int:
    """A new id from the process-wide generator; `now_ms` (Unix ms) defaults to the wall clock."""
    return _default.new_id(now_ms)


def new_batch_id(now_ms: int | None = None) -> int:
    """A batch's reference id, with the ids after it in its block kept for its messages (message_id_at)."""
    return _default.new_block(now_ms)


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
