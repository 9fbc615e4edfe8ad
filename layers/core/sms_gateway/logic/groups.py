"""Recipient groups: named, tenant-scoped lists of numbers that a send's `to` may name by group id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sms_gateway.domain.groups import (
    GROUP_ID_PREFIX,
    Group,
    GroupMove,
    GroupSummary,
    StoredGroup,
    group_id_of,
    group_number,
)
from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import Record, iso
from sms_gateway.errors import Conflict, InvalidRecipient, InvalidRequest, NotFound, Unavailable
from sms_gateway.logic.send import Rejection, normalise_recipients
from sms_gateway.ports import GroupStore

# Members live in an item of their own as a string set: 10,000 E.164 numbers are about 170 KB of the 400 KB an item
# may hold (adapters/dynamodb_groups.py; the summary the group list reads is another item).
MAX_GROUP_MEMBERS = 10_000
MAX_NAME_LENGTH = 100
# A membership change is a conditional write on the group's version; a race with another change retries.
_CHANGE_ATTEMPTS = 5


@dataclass(frozen=True)
class GroupChange:
    """What a create, add or remove did: the group as it is now, how many members moved, how many were
    already where the caller wanted them, and the numbers refused with their reasons."""

    group: Group
    changed: int
    unchanged: int
    rejected: list[Rejection]


@dataclass(frozen=True)
class Expansion:
    """A send's `to` with group ids replaced by their members, and the group ids that name no group.
    `stopped`: the groups read had more members than the cap given to expand, so the rest of `to` was not read
    (`group_members` then counts the groups read; `numbers` and `unknown_groups` end there too)."""

    numbers: list[str]
    unknown_groups: list[str]
    group_members: int
    stopped: bool = False


def is_group_id(entry: str) -> bool:
    return entry.strip().lower().startswith(GROUP_ID_PREFIX)


def new_group_id() -> str:
    return f"{GROUP_ID_PREFIX}{new_id()}"


def _name(raw: str) -> str:
    name = raw.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"name must be 1 to {MAX_NAME_LENGTH} characters")
    return name


def _require_within_cap(count: int) -> None:
    if count > MAX_GROUP_MEMBERS:
        raise InvalidRequest(f"a group holds at most {MAX_GROUP_MEMBERS} members; this change would make it {count}")


def create_group(
    store: GroupStore,
    *,
    account_id: str,
    default_country: str,
    name: str,
    members: Sequence[str],
    now: datetime,
    number: int | None = None,
) -> GroupChange:
    """Valid numbers join the group; invalid ones are reported with their reason, not stored. `number`: the group's
    id, when the request's idempotency key names it; a group with that id exists already when an earlier attempt
    under the key made it (its answer was lost, or its Lambda died after the write), and is the answer again."""
    recipients, rejected = normalise_recipients(members, default_country)
    _require_within_cap(len(recipients))
    created_at = iso(now)
    group = Group(
        group_id=group_id_of(number) if number is not None else new_group_id(),
        account_id=account_id,
        name=_name(name),
        members=tuple(sorted(r.msisdn for r in recipients)),
        created_at=created_at,
        updated_at=created_at,
    )
    if not store.create_group(group):
        made = store.get_group(account_id, number) if number is not None else None
        if made is None:
            raise Conflict(f"group {group.group_id} exists already")
        group = made
    return GroupChange(group=group, changed=len(recipients), unchanged=0, rejected=rejected)


def get_group(store: GroupStore, account_id: str, group_id: str) -> Group:
    # The account is part of the key: another account's group id is simply not found.
    number = group_number(group_id)
    group = store.get_group(account_id, number) if number is not None else None
    if group is None:
        raise NotFound(f"no group with group_id {group_id!r}")
    return group


def list_groups(
    store: GroupStore, account_id: str, *, limit: int, cursor: str | None
) -> tuple[list[GroupSummary], str | None]:
    return store.list_groups(account_id, limit=limit, cursor=cursor)


def delete_group(store: GroupStore, account_id: str, group_id: str) -> str:
    """Deletes the group; returns its id as the gateway writes it (`grp_<number>`), whichever spelling named it."""
    number = group_number(group_id)
    if number is None or not store.delete_group(account_id, number):
        raise NotFound(f"no group with group_id {group_id!r}")
    return group_id_of(number)


def add_members(
    store: GroupStore,
    *,
    account_id: str,
    default_country: str,
    group_id: str,
    members: Sequence[str],
    now: datetime,
) -> GroupChange:
    recipients, rejected = normalise_recipients(members, default_country)
    wanted = {r.msisdn for r in recipients}
    for _ in range(_CHANGE_ATTEMPTS):
        group = get_group(store, account_id, group_id)
        new = wanted - set(group.members)
        if not new:
            return GroupChange(group=group, changed=0, unchanged=len(wanted), rejected=rejected)
        count = group.member_count + len(new)
        _require_within_cap(count)
        if store.add_group_members(
            account_id, _number(group), sorted(new), expected_version=group.version, member_count=count, now=iso(now)
        ):
            return GroupChange(
                group=get_group(store, account_id, group_id),
                changed=len(new),
                unchanged=len(wanted) - len(new),
                rejected=rejected,
            )
    raise Conflict("the group is being changed by another request; retry")


def remove_members(
    store: GroupStore,
    *,
    account_id: str,
    default_country: str,
    group_id: str,
    members: Sequence[str],
    now: datetime,
) -> GroupChange:
    recipients, rejected = normalise_recipients(members, default_country)
    unwanted = {r.msisdn for r in recipients}
    for _ in range(_CHANGE_ATTEMPTS):
        group = get_group(store, account_id, group_id)
        present = unwanted & set(group.members)
        if not present:
            return GroupChange(group=group, changed=0, unchanged=len(unwanted), rejected=rejected)
        if store.remove_group_members(
            account_id,
            _number(group),
            sorted(present),
            expected_version=group.version,
            member_count=group.member_count - len(present),
            now=iso(now),
        ):
            return GroupChange(
                group=get_group(store, account_id, group_id),
                changed=len(present),
                unchanged=len(unwanted) - len(present),
                rejected=rejected,
            )
    raise Conflict("the group is being changed by another request; retry")


def _number(group: Group) -> int:
    number = group_number(group.group_id)
    assert number is not None, group.group_id
    return number


class MigrationReport(Record):
    """What migrate_groups did (in a dry run: would do): the groups whose members it moved out of their summary, those
    already in the new layout (moved by a member change or an earlier run), and those it could not move (to run
    again)."""

    moved: int = 0
    already_new: int = 0
    failed: int = 0
    dry_run: bool = False


# Told of each group moved ("moved"; "would move" in a dry run) or failed ("failed", with why): its id and account.
MigrationProgress = Callable[[str, str, str, str], None]


def migrate_groups(
    store: GroupStore,
    *,
    account_id: str | None = None,
    dry_run: bool = False,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """Moves the members of every group whose summary still holds them (stored before 2026-12-06, or changed by that
    build after a roll back) to the group's members item, as its next member change would: each one transaction
    conditional on the version read, so a member change made meanwhile is kept (the move that loses reads the group
    again). A group left half-way cannot be: a run stopped anywhere and run again moves only what is left."""
    counts = {"moved": 0, "already_new": 0, "failed": 0}
    tell = progress or (lambda *_: None)
    for group in store.stored_groups(account_id):
        group_id = group_id_of(group.number)
        outcome: str
        try:
            outcome = _move(store, group, dry_run=dry_run)
        except Unavailable as error:
            outcome = "failed"
            tell("failed", group_id, group.account_id, str(error))
        if outcome == "moved":
            tell("would move" if dry_run else "moved", group_id, group.account_id, "")
        # A group deleted since the scan counts nowhere.
        if outcome in counts:
            counts[outcome] += 1
    return MigrationReport(**counts, dry_run=dry_run)


def _move(store: GroupStore, group: StoredGroup, *, dry_run: bool) -> GroupMove:
    if not group.in_summary:
        return "already_new"
    if dry_run:
        return "moved"
    for _ in range(_CHANGE_ATTEMPTS):
        outcome = store.move_group_members(group.account_id, group.number)
        if outcome != "changed":
            return outcome
    raise Unavailable("the group kept changing while its members were moved; run again")


def expand(store: GroupStore, account_id: str, entries: Sequence[str], *, most: int | None = None) -> Expansion:
    """Group ids in `to` replaced by their members, in the order given; each group is read once. With `most`, no
    further group is read once those read have more than `most` distinct members (the request is refused then
    anyway: a send's 1000 group ids of 10,000 members would be ~43,000 read units, each group's two items read with
    two consistent GetItems, and 10 million numbers)."""
    numbers: list[str] = []
    unknown: list[str] = []
    members: set[str] = set()
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        if most is not None and len(members) > most:
            stopped = any(is_group_id(rest) for rest in entries[position:])
            return Expansion(numbers=numbers, unknown_groups=unknown, group_members=len(members), stopped=stopped)
        if not is_group_id(entry):
            numbers.append(entry)
            continue
        key = entry.strip().lower()
        if key in seen:
            continue
        seen.add(key)
        number = group_number(entry)
        group = store.get_group(account_id, number) if number is not None else None
        if group is None:
            unknown.append(entry)
            continue
        numbers.extend(group.members)
        members.update(group.members)
    return Expansion(numbers=numbers, unknown_groups=unknown, group_members=len(members))


def require_known_groups(expansion: Expansion) -> None:
    if expansion.unknown_groups:
        listed = ", ".join(repr(g) for g in expansion.unknown_groups[:10])
        raise InvalidRecipient(f"unknown group id {listed}: nothing was sent")
