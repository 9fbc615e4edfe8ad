"""Message states and the only moves between them: forward, never back, and never out of a final state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

# The error code of a message recorded submitted though its submit got no answer: an upstream may have it, and its
# report (or the DLR wait) settles it (logic/dispatch.py).
SUBMIT_UNCONFIRMED = "submit_unconfirmed"
# The error code of a message failed by the undo of its send, whose queueing failed (logic/send.py): it was never
# queued. A change the send makes, not a dispatcher: it is reported only when the send stands.
NOT_QUEUED = "not_queued"
# The error code of a message expired rather than sent too late (domain.models.validity_ends): by the dispatcher, or
# by the release of a scheduled batch released after its send time's validity ended.
VALIDITY_PERIOD_ENDED = "validity_period_ended"


class MessageStatus(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


TERMINAL: frozenset[MessageStatus] = frozenset(
    {
        MessageStatus.DELIVERED,
        MessageStatus.FAILED,
        MessageStatus.EXPIRED,
        MessageStatus.REJECTED,
        MessageStatus.CANCELLED,
    }
)

_RANK: dict[MessageStatus, int] = {
    MessageStatus.ACCEPTED: 0,
    MessageStatus.SCHEDULED: 1,
    MessageStatus.QUEUED: 2,
    MessageStatus.SUBMITTED: 3,
    **dict.fromkeys(TERMINAL, 4),
}

_S = MessageStatus
_PREVIOUS: dict[MessageStatus, frozenset[MessageStatus]] = {
    _S.ACCEPTED: frozenset(),
    _S.SCHEDULED: frozenset({_S.ACCEPTED}),
    _S.QUEUED: frozenset({_S.ACCEPTED, _S.SCHEDULED}),
    _S.SUBMITTED: frozenset({_S.QUEUED}),
    # The carrier's delivery report can overtake the dispatcher's own write of `submitted`.
    _S.DELIVERED: frozenset({_S.QUEUED, _S.SUBMITTED}),
    _S.FAILED: frozenset({_S.ACCEPTED, _S.SCHEDULED, _S.QUEUED, _S.SUBMITTED}),
    _S.EXPIRED: frozenset({_S.SCHEDULED, _S.QUEUED, _S.SUBMITTED}),
    _S.REJECTED: frozenset({_S.ACCEPTED, _S.QUEUED, _S.SUBMITTED}),
    _S.CANCELLED: frozenset({_S.ACCEPTED, _S.SCHEDULED, _S.QUEUED}),
}

# When parts end differently, the message reports the most definitive failure.
_FAILURE_PRECEDENCE = (_S.REJECTED, _S.FAILED, _S.EXPIRED, _S.CANCELLED)


class InvalidTransition(Exception):
    def __init__(self, current: MessageStatus, target: MessageStatus) -> None:
        super().__init__(current, target)
        self.current = current
        self.target = target

    def __str__(self) -> str:
        return f"a message cannot move from {self.current} to {self.target}"


def rank(status: MessageStatus) -> int:
    """How far along a status is: accepted 0, scheduled 1, queued 2, submitted 3, any final state 4."""
    return _RANK[status]


def reached_in_order(status_at: Mapping[str, str]) -> list[MessageStatus]:
    """The statuses a message's status times record, in the order it reached them. By rank, not by time: every move
    goes forward, so rank is that order, where the times can tie (a send writes `accepted` and `queued`, or
    `scheduled`, at one instant, and a stored map, DynamoDB's, gives its keys in no order) or disagree (two Lambdas'
    clocks). The time only orders two final states, which no message should have."""
    return sorted((MessageStatus(status) for status in status_at), key=lambda status: (rank(status), status_at[status]))


def allowed_previous(target: MessageStatus) -> frozenset[MessageStatus]:
    """The states a message may move to `target` from; empty for `accepted`, where every message starts."""
    return _PREVIOUS[target]


def can_transition(current: MessageStatus, target: MessageStatus) -> bool:
    return current in _PREVIOUS[target]


def require_transition(current: MessageStatus, target: MessageStatus) -> None:
    """Raise InvalidTransition unless `current` may move to `target`."""
    if not can_transition(current, target):
        raise InvalidTransition(current, target)


def aggregate_parts(part_statuses: Sequence[MessageStatus], parts: int) -> MessageStatus | None:
    """One status for a multi-part message from the latest status of each part reported so far.

    Delivered once `parts` parts are delivered; the first of rejected, failed, expired, cancelled found
    once any part ends that way; otherwise the least advanced state still in flight. All reported parts
    delivered but some not yet reported counts as submitted. None when nothing was reported."""
    if parts < 1:
        raise ValueError(f"a message has at least one part, not {parts}")
    if not part_statuses:
        return None
    # Statuses read back from storage may be plain strings.
    statuses = [MessageStatus(status) for status in part_statuses]
    reported = set(statuses)
    for failure in _FAILURE_PRECEDENCE:
        if failure in reported:
            return failure
    if statuses.count(MessageStatus.DELIVERED) >= parts:
        return MessageStatus.DELIVERED
    in_flight = reported - TERMINAL
    if not in_flight:
        return MessageStatus.SUBMITTED
    return min(in_flight, key=rank)


def may_have_reached_the_handset(status: MessageStatus, status_at: Mapping[str, str]) -> bool:
    """Whether the recipient may have got the message, so that a reply from them can be an answer to it: it was
    delivered, or an upstream took it (submitted, whatever came after) and did not reject it. One that never left
    (scheduled, queued, cancelled, failed or expired before a submit) cannot have been read."""
    if status in (MessageStatus.DELIVERED, MessageStatus.SUBMITTED):
        return True
    return str(MessageStatus.SUBMITTED) in status_at and status != MessageStatus.REJECTED
