"""Message states: the allowed moves, monotonic progress, and one status for a multi-part message."""

from __future__ import annotations

import itertools
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_gateway.domain.status import (
    TERMINAL,
    InvalidTransition,
    MessageStatus,
    aggregate_parts,
    allowed_previous,
    can_transition,
    rank,
    require_transition,
)

S = MessageStatus
ALL = list(MessageStatus)
statuses = st.sampled_from(ALL)
in_flight = st.sampled_from([S.ACCEPTED, S.SCHEDULED, S.QUEUED, S.SUBMITTED])

# The table from the design, written out here so that a change to the code has to be a deliberate one.
EXPECTED_PREVIOUS = {
    S.ACCEPTED: set(),
    S.SCHEDULED: {S.ACCEPTED},
    S.QUEUED: {S.ACCEPTED, S.SCHEDULED},
    S.SUBMITTED: {S.QUEUED},
    S.DELIVERED: {S.QUEUED, S.SUBMITTED},
    S.FAILED: {S.ACCEPTED, S.SCHEDULED, S.QUEUED, S.SUBMITTED},
    S.EXPIRED: {S.SCHEDULED, S.QUEUED, S.SUBMITTED},
    S.REJECTED: {S.ACCEPTED, S.QUEUED, S.SUBMITTED},
    S.CANCELLED: {S.ACCEPTED, S.SCHEDULED, S.QUEUED},
}


def test_statuses_are_stored_as_their_lowercase_names() -> None:
    assert [str(status) for status in MessageStatus] == [
        "accepted", "scheduled", "queued", "submitted",
        "delivered", "failed", "expired", "rejected", "cancelled",
    ]  # fmt: skip
    assert MessageStatus("delivered") is S.DELIVERED


def test_terminal_states_are_the_five_outcomes() -> None:
    assert frozenset({S.DELIVERED, S.FAILED, S.EXPIRED, S.REJECTED, S.CANCELLED}) == TERMINAL


@pytest.mark.parametrize("target", ALL)
def test_allowed_previous_states_match_the_design(target: MessageStatus) -> None:
    # Given a target state
    # When asked which states may move to it (what a DynamoDB condition expression lists)
    previous = allowed_previous(target)
    # Then the answer is exactly the designed set, and can_transition agrees with it for every state
    assert previous == EXPECTED_PREVIOUS[target]
    assert isinstance(previous, frozenset)
    assert {current for current in ALL if can_transition(current, target)} == previous


def test_a_delivery_report_may_overtake_the_submitted_write() -> None:
    # Given a message the dispatcher has not yet marked submitted
    # When the carrier's delivery report arrives first
    # Then it may move straight from queued to delivered
    assert can_transition(S.QUEUED, S.DELIVERED)
    assert not can_transition(S.SCHEDULED, S.DELIVERED)


@pytest.mark.parametrize(("current", "target"), itertools.product(ALL, ALL))
def test_no_status_moves_to_itself_backwards_or_out_of_a_final_state(
    current: MessageStatus, target: MessageStatus
) -> None:
    # Given any pair of states
    # When a move from one to the other is checked
    allowed = can_transition(current, target)
    # Then only forward moves out of non-final states are allowed
    if current == target or current in TERMINAL or rank(target) <= rank(current):
        assert not allowed


@given(st.lists(statuses, max_size=30))
def test_any_sequence_of_attempted_moves_only_ever_advances(attempts: list[MessageStatus]) -> None:
    # Given a new message and any sequence of status writes, in any order, repeated or not
    current = S.ACCEPTED
    for target in attempts:
        before = current
        # When each write is applied only if the transition is allowed
        if can_transition(current, target):
            current = target
            # Then every applied move strictly advances
            assert rank(current) > rank(before)
        # And the rank never goes down, and a final state stays
        assert rank(current) >= rank(before)
        if before in TERMINAL:
            assert current == before


def test_require_transition_raises_with_both_states() -> None:
    # Given a delivered message
    # When something tries to move it back to queued
    with pytest.raises(InvalidTransition) as raised:
        require_transition(S.DELIVERED, S.QUEUED)
    # Then the error names both states, and an allowed move passes silently
    assert (raised.value.current, raised.value.target) == (S.DELIVERED, S.QUEUED)
    assert str(raised.value) == "a message cannot move from delivered to queued"
    require_transition(S.QUEUED, S.SUBMITTED)


# -- multi-part messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part_statuses", "parts", "expected"),
    [
        ([], 3, None),
        ([S.DELIVERED], 1, S.DELIVERED),
        ([S.DELIVERED, S.DELIVERED, S.DELIVERED], 3, S.DELIVERED),
        ([S.DELIVERED, S.DELIVERED], 3, S.SUBMITTED),
        ([S.DELIVERED, S.SUBMITTED, S.DELIVERED], 3, S.SUBMITTED),
        ([S.SUBMITTED, S.QUEUED], 3, S.QUEUED),
        ([S.DELIVERED, S.FAILED, S.DELIVERED], 3, S.FAILED),
        ([S.SUBMITTED, S.EXPIRED], 2, S.EXPIRED),
        ([S.EXPIRED, S.REJECTED, S.FAILED], 3, S.REJECTED),
        ([S.EXPIRED, S.FAILED], 2, S.FAILED),
        ([S.CANCELLED, S.CANCELLED], 2, S.CANCELLED),
        (["delivered", "delivered"], 2, S.DELIVERED),
    ],
)
def test_a_multipart_message_takes_one_status_from_its_parts(
    part_statuses: list[MessageStatus], parts: int, expected: MessageStatus | None
) -> None:
    # Given the latest status reported for each part of a message
    # When they are combined
    # Then all delivered is delivered, any part failing fails it, and otherwise the slowest part counts
    assert aggregate_parts(part_statuses, parts) == expected


@given(st.lists(statuses, min_size=1, max_size=8), st.integers(min_value=1, max_value=8), st.randoms())
def test_aggregation_ignores_the_order_reports_arrive_in(
    part_statuses: list[MessageStatus], parts: int, random: Random
) -> None:
    # Given part reports in some order, and the same reports shuffled
    shuffled = list(part_statuses)
    random.shuffle(shuffled)
    # When each is combined
    # Then the status is the same
    assert aggregate_parts(shuffled, parts) == aggregate_parts(part_statuses, parts)


@given(st.lists(in_flight, min_size=1, max_size=8), st.integers(min_value=1, max_value=8))
def test_parts_still_in_flight_report_the_least_advanced(part_statuses: list[MessageStatus], parts: int) -> None:
    # Given parts none of which has finished
    # When they are combined
    # Then the message is as far along as its slowest part
    assert aggregate_parts(part_statuses, parts) == min(part_statuses, key=rank)


@given(
    st.lists(statuses, min_size=1, max_size=8).filter(lambda s: any(x in TERMINAL - {S.DELIVERED} for x in s)),
    st.integers(min_value=1, max_value=8),
)
def test_one_failed_part_fails_the_message(part_statuses: list[MessageStatus], parts: int) -> None:
    # Given parts of which at least one ended without delivery
    # When they are combined
    result = aggregate_parts(part_statuses, parts)
    # Then the message ends that way too, never as delivered
    assert result in TERMINAL - {S.DELIVERED}
    assert result in part_statuses


@given(st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=10))
def test_delivered_only_once_every_part_is(parts: int, delivered: int) -> None:
    # Given some parts delivered and nothing else reported
    reports = [S.DELIVERED] * delivered
    # When they are combined
    result = aggregate_parts(reports, parts)
    # Then the message is delivered only when all its parts are
    if delivered == 0:
        assert result is None
    elif delivered >= parts:
        assert result is S.DELIVERED
    else:
        assert result is S.SUBMITTED


def test_a_message_has_at_least_one_part() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        aggregate_parts([S.DELIVERED], 0)


def test_statuses_come_in_the_order_reached_whatever_the_order_or_ties_of_their_times():
    from sms_gateway.domain.status import reached_in_order

    at = "2026-12-06T10:00:00.000000Z"
    # Given status times as a store may give them: accepted and queued at one instant, in no order, and a clock that
    # wrote the dispatcher's `submitted` after the DLR's `delivered`
    status_at = {"queued": at, "delivered": "2026-12-06T10:00:01Z", "accepted": at, "submitted": "2026-12-06T10:00:02Z"}
    # Then they read in the order the message went
    assert reached_in_order(status_at) == [
        MessageStatus.ACCEPTED,
        MessageStatus.QUEUED,
        MessageStatus.SUBMITTED,
        MessageStatus.DELIVERED,
    ]
