"""Recipient groups: a named set of numbers an account can send to by its id."""

from __future__ import annotations

from typing import Literal, NamedTuple

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


class StoredGroup(NamedTuple):
    """A stored group as a migration sees it: `in_summary` when its summary item holds members (stored before
    2026-12-06, or changed by the build before it after a roll back), which the migration moves."""

    account_id: str
    number: int
    in_summary: bool


# What moving a group's members out of its summary did: `changed` when the group changed between its read and the
# write (read it again), `already_new` when its summary held none, `gone` when it was deleted.
GroupMove = Literal["moved", "already_new", "gone", "changed"]


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
