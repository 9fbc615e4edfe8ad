"""The SMPP receipt states every SMSC upstream reads alike (Kannel, Jasmin, the simulator): those that are not the
SMSC's last word, and how a message left at one is settled when the DLR wait ends (logic/settle.py)."""

from __future__ import annotations

from sms_gateway.domain.status import MessageStatus

# ACCEPTD: SMPP 3.4 lists ACCEPTED as a final state (the message read on behalf of the subscriber), but an SMSC may
# follow it with UNDELIV or DELIVRD, which Kannel (as buffered, type 4) and Jasmin (not in its final_states) pass on:
# the message stays submitted for that receipt, and is delivered (charged) if none comes within the DLR wait.
# UNKNOWN: the SMSC cannot say; a later receipt may, or the message expires and is refunded when the wait ends.
INTERIM_RECEIPTS: dict[str, MessageStatus] = {
    "ACCEPTD": MessageStatus.DELIVERED,
    "UNKNOWN": MessageStatus.EXPIRED,
}


def settles_as(state: str) -> MessageStatus | None:
    """What a message whose last receipt was `state` (an SMPP receipt's `stat`) becomes when the DLR wait ends; None
    for a state that says nothing of it (ENROUTE, a submit's acknowledgement) or is final."""
    return INTERIM_RECEIPTS.get(state.strip().upper())
