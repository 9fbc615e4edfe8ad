"""Recipient groups: a named set of numbers an account can send to by its id."""

from __future__ import annotations

from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import Record

GROUP_ID_PREFIX = "grp_"


class Group(Record):
    group_id: str
    account_id: str
    name: str
    # E.164 with '+', sorted; outputs render them without the '+'.
    members: tuple[str, ...] = ()
    version: int = 1
    created_at: str
    updated_at: str

    @property
    def member_count(self) -> int:
        return len(self.members)


class GroupSummary(Record):
    """A group as lists show it: without its members, which may be thousands."""

    group_id: str
    account_id: str
    name: str
    member_count: int = 0
    created_at: str
    updated_at: str


def group_id_of(number: int) -> str:
    """The canonical id of group `number`: what every answer names it by, however the caller spelled it."""
    return f"{GROUP_ID_PREFIX}{number}"


def group_number(group_id: str) -> int | None:
    """The numeric part of `grp_<digits>`, or None when the text is not a well-formed group id."""
    text = group_id.strip().lower()
    digits = text[len(GROUP_ID_PREFIX) :]
    if not text.startswith(GROUP_ID_PREFIX) or not ascii_digits(digits) or len(digits) > 19:
        return None
    return int(digits)
