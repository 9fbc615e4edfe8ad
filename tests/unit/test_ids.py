"""Time-ordered 63-bit ids: layout, decoding, and strict ordering within a process."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_gateway.domain.ids import (
    BATCH_BLOCK,
    EPOCH_MS,
    MAX_ID,
    MESSAGES_PER_BATCH,
    RANDOM_BITS,
    IdGenerator,
    batch_ids_around,
    id_time_ms,
    message_id_at,
    new_id,
)

LAST_MS = EPOCH_MS + 2**41 - 1
moments = st.integers(min_value=EPOCH_MS, max_value=LAST_MS)


def test_the_epoch_is_the_start_of_2024_utc() -> None:
    assert datetime.fromtimestamp(EPOCH_MS / 1000, UTC) == datetime(2024, 1, 1, tzinfo=UTC)
    assert MAX_ID == 2**63 - 1


def test_ten_thousand_ids_strictly_increase() -> None:
    # Given the process-wide generator
    # When 10,000 ids are made as fast as possible, many within the same millisecond
    ids = [new_id() for _ in range(10_000)]
    # Then each is larger than the one before, so all are unique
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)


def test_ids_made_on_many_threads_are_unique() -> None:
    # Given one generator shared by eight threads
    generator = IdGenerator()
    made: list[list[int]] = [[] for _ in range(8)]

    def work(out: list[int]) -> None:
        out.extend(generator.new_id() for _ in range(2_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in made]
    # When they all make ids at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then no id is handed out twice and each thread saw its own ids increase
    every = [id_ for out in made for id_ in out]
    assert len(set(every)) == len(every) == 16_000
    for out in made:
        assert out == sorted(out)


def test_a_fresh_id_is_positive_fits_63_bits_and_carries_the_current_time() -> None:
    # Given the wall clock
    before = time.time_ns() // 1_000_000
    # When an id is made
    id_ = new_id()
    after = time.time_ns() // 1_000_000
    # Then it is a positive signed 64-bit integer whose time is now
    assert 0 < id_ <= MAX_ID
    assert id_.bit_length() <= 63
    assert before <= id_time_ms(id_) <= after + 1


@given(now_ms=moments)
def test_an_id_decodes_back_to_its_millisecond(now_ms: int) -> None:
    # Given any millisecond the id space covers
    # When an id is made for it
    id_ = IdGenerator().new_id(now_ms)
    # Then it fits in 63 bits and decodes to that millisecond
    assert 0 <= id_ <= MAX_ID
    assert id_time_ms(id_) == now_ms


@given(earlier=st.integers(min_value=EPOCH_MS, max_value=LAST_MS - 1), gap=st.integers(min_value=1))
def test_ids_order_by_time_across_milliseconds(earlier: int, gap: int) -> None:
    # Given two different moments, each id made by a different process (its own generator)
    later = min(earlier + gap, LAST_MS)
    # When each makes an id
    # Then the later moment's id is larger, whatever their random bits
    assert IdGenerator().new_id(earlier) < IdGenerator().new_id(later)


def test_the_low_22_bits_are_random() -> None:
    # Given generators whose random source is fixed
    now_ms = EPOCH_MS + 123_456
    # When each makes an id for the same millisecond
    low = IdGenerator(random_bits=lambda bits: 0).new_id(now_ms)
    high = IdGenerator(random_bits=lambda bits: 2**bits - 1).new_id(now_ms)
    # Then the ids differ only in the 22 bits below the time
    assert low == 123_456 << 22
    assert high == low + 2**22 - 1


def test_within_one_millisecond_ids_count_up_even_past_the_random_bits() -> None:
    # Given a generator whose random bits are already at their maximum
    now_ms = EPOCH_MS + 5_000
    generator = IdGenerator(random_bits=lambda bits: 2**bits - 1)
    # When three ids are made in the same millisecond
    ids = [generator.new_id(now_ms) for _ in range(3)]
    # Then they count up by one, carrying into the next millisecond rather than repeating
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]
    assert [id_time_ms(id_) for id_ in ids] == [now_ms, now_ms + 1, now_ms + 1]


def test_a_clock_stepping_back_does_not_make_ids_go_back() -> None:
    # Given a generator that made an id at some moment
    generator = IdGenerator()
    first = generator.new_id(EPOCH_MS + 10_000)
    # When the clock steps back a second
    second = generator.new_id(EPOCH_MS + 9_000)
    # Then the next id is still larger
    assert second == first + 1


@pytest.mark.parametrize("now_ms", [EPOCH_MS - 1, 0, LAST_MS + 1])
def test_moments_outside_the_id_space_are_refused(now_ms: int) -> None:
    with pytest.raises(ValueError, match="outside the id range"):
        IdGenerator().new_id(now_ms)


def test_the_last_id_is_max_id_and_nothing_comes_after_it() -> None:
    # Given a generator at the last millisecond with all random bits set
    generator = IdGenerator(random_bits=lambda bits: 2**bits - 1)
    # When it makes the last id and then another
    assert generator.new_id(LAST_MS) == MAX_ID
    # Then it refuses rather than overflow 63 bits
    with pytest.raises(OverflowError):
        generator.new_id(LAST_MS)


@pytest.mark.parametrize("not_an_id", [-1, MAX_ID + 1])
def test_decoding_something_outside_63_bits_is_refused(not_an_id: int) -> None:
    with pytest.raises(ValueError, match="not an id"):
        id_time_ms(not_an_id)


def test_only_ascii_digits_count_as_digits_so_int_never_fails_on_them():
    from sms_gateway.domain.ids import ascii_digits
    from sms_gateway.domain.models import MessageKey

    assert ascii_digits("0123456789")
    # str.isdigit() says yes to these, and int() then raises: a bad id or timestamp became a 500.
    for text in ("\u00b2", "1\u00b2", "\u2460", "", " 1", "-1", "1.0"):
        assert not ascii_digits(text), text
    assert MessageKey.from_ref("acc.\u00b2.3") is None
    # Nor on digits too many for int() (4300): an upstream's callback naming such a ref is no message of ours
    assert MessageKey.from_ref(f"7.{'9' * 5000}.3") is None
    assert MessageKey.from_ref("7.9223372036854775807.3") == MessageKey(
        account_id="7", reference_id=9223372036854775807, message_id=3
    )


# -- a batch's ids and its messages' ----------------------------------------------------------------------------


def test_a_batch_keeps_the_ids_after_its_own_for_its_messages() -> None:
    # Given a generator that makes a batch's id and then any other id, in the same millisecond
    generator = IdGenerator(random_bits=lambda bits: 0)
    batch = generator.new_block(now_ms=EPOCH_MS + 5)
    after = generator.new_id(now_ms=EPOCH_MS + 5)
    # Then its messages' ids are the next 1000 numbers, and no later id falls among them
    ids = [message_id_at(batch, position) for position in range(MESSAGES_PER_BATCH)]
    assert ids == list(range(batch + 1, batch + 1 + MESSAGES_PER_BATCH))
    assert after > ids[-1]


def test_a_message_id_names_the_range_its_batch_is_in() -> None:
    batch = new_id()
    for position in (0, 1, 499, MESSAGES_PER_BATCH - 1):
        lowest, highest = batch_ids_around(message_id_at(batch, position))
        assert lowest <= batch <= highest
        assert highest - lowest == MESSAGES_PER_BATCH - 1


@pytest.mark.parametrize("position", [-1, MESSAGES_PER_BATCH])
def test_a_batch_has_no_message_beyond_its_room(position: int) -> None:
    with pytest.raises(ValueError, match="at most 1000 messages"):
        message_id_at(new_id(), position)


def drawn(draw: int) -> Callable[[int], int]:
    """A container's random source that draws `draw` (22 random bits): asked for fewer bits, it gives its top ones."""
    return lambda bits: draw >> (RANDOM_BITS - bits)


@pytest.mark.parametrize(
    ("first", "second", "ms_apart"),
    [
        pytest.param(5_000, 5_010, 0, id="ten-apart"),
        pytest.param(1_022, 1_024, 0, id="two-apart-across-a-block"),
        pytest.param(2**22 - 3, 0, 1, id="into-the-next-millisecond"),
        pytest.param(7, 7, 0, id="the-same-draw"),
        pytest.param(0, 2**22 - 1, 0, id="far-apart"),
    ],
)
def test_two_containers_batches_never_give_two_messages_one_id(first: int, second: int, ms_apart: int) -> None:
    # Given two containers (a generator each) making a batch id in the same millisecond (or the next), whose random
    # sources draw numbers close together
    now_ms = EPOCH_MS + 86_400_000
    one = IdGenerator(random_bits=drawn(first)).new_block(now_ms=now_ms)
    other = IdGenerator(random_bits=drawn(second)).new_block(now_ms=now_ms + ms_apart)
    # When each batch gives its messages their ids
    ones = {message_id_at(one, position) for position in range(MESSAGES_PER_BATCH)}
    others = {message_id_at(other, position) for position in range(MESSAGES_PER_BATCH)}
    # Then no id is both a message of one and a message (or the batch) of the other: either the two batches have
    # one id, which the store refuses to write twice for an account (a conditional put), or their ids are apart
    assert one == other or not (ones | {one}) & (others | {other})


def test_a_burst_of_batches_in_one_millisecond_takes_blocks_one_after_another() -> None:
    # Given a container whose random source draws the same number every time (as a burst within one millisecond
    # can draw numbers below the last one)
    generator = IdGenerator(random_bits=drawn(5_000))
    now_ms = EPOCH_MS + 7
    # When it makes three batch ids and then another id in that millisecond
    batches = [generator.new_block(now_ms=now_ms) for _ in range(3)]
    after = generator.new_id(now_ms=now_ms)
    # Then each batch id starts a block of its own, the next free one, and no later id falls in a batch's block
    assert [b % BATCH_BLOCK for b in batches] == [0, 0, 0]
    assert [later - earlier for earlier, later in itertools.pairwise(batches)] == [BATCH_BLOCK, BATCH_BLOCK]
    assert after >= batches[-1] + BATCH_BLOCK
