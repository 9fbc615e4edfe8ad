"""DynamoDB adapter for recipient groups: a summary item the group list reads, and a members item beside it.

group    pk=ACC#<account_id>  sk=GROUP#<group number, 19 digits>          name, member_count, version, timestamps
members  pk=ACC#<account_id>  sk=GROUP_MEMBERS#<group number, 19 digits>  members (SS of E.164), version

The list's `begins_with(sk, "GROUP#")` does not match `GROUP_MEMBERS#`: a page of groups reads their summaries only
(with the members in the summary item, DynamoDB's 1 MB per Query cut a page of big groups short). Both items are
written in one transaction, conditional on the summary's version, and both carry that version. A group is read with
two consistent GetItems, the summary first (a TransactGetItems would be cancelled by a member change in flight): a
members item ahead of the summary read means a change came between the two, and both are read again, so a read never
pairs a summary with the members of a later change. A group stored before 2026-12-06 has its
members in the summary item and no members item: it reads from there, and its first member change moves them (or
`sms-gateway admin migrate-groups`, move_group_members, with the same write). A
group the build before it changed after a roll back holds members in both: it reads as their union, and its next
member change moves the union.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key, read_page
from sms_gateway.adapters.dynamodb_partitions import ACCOUNT_PK_PREFIX, account_items, account_pk
from sms_gateway.adapters.dynamodb_transactions import (
    TransactionUndecided,
    back_off,
    not_done,
    transact_until_decided,
)
from sms_gateway.deadlines import RETRIED_ERROR_CODES
from sms_gateway.domain.groups import GROUP_ID_PREFIX, Group, GroupMove, GroupSummary, StoredGroup, group_number
from sms_gateway.errors import Unavailable

GROUP_SK_PREFIX = "GROUP#"
GROUP_SK = id_sort_key(GROUP_SK_PREFIX)
MEMBERS_SK_PREFIX = "GROUP_MEMBERS#"
# Reads of a group that a member change keeps overtaking before it answers Unavailable.
MAX_GROUP_READS = 4
# Lists leave the members out: a page of groups stays small however big the groups are (a summary stored before the
# members item existed still holds them; the projection leaves them unsent, though the Query reads them).
_SUMMARY_ATTRIBUTES = ("group_id", "account_id", "#name", "member_count", "created_at", "updated_at")


def group_sk(group_number: int) -> str:
    return f"{GROUP_SK_PREFIX}{group_number:019d}"


def members_sk(group_number: int) -> str:
    return f"{MEMBERS_SK_PREFIX}{group_number:019d}"


def _group_key(account_id: str, group_number: int) -> dict[str, Any]:
    return {"pk": {"S": account_pk(account_id)}, "sk": {"S": group_sk(group_number)}}


def _members_key(account_id: str, group_number: int) -> dict[str, Any]:
    return {"pk": {"S": account_pk(account_id)}, "sk": {"S": members_sk(group_number)}}


def _listed_group_key(account_id: str, group: GroupSummary) -> dict[str, Any]:
    number = group_number(group.group_id)
    if number is None:  # a stored group's id is always one this store made
        raise ValueError(f"stored group has a malformed id {group.group_id!r}")
    return _group_key(account_id, number)


@dataclass(frozen=True)
class _MemberChange:
    """One membership change: `ADD` or `DELETE` of `members`, conditional on the group being at `expected_version`;
    `count` is the member count after it."""

    action: str
    account_id: str
    number: int
    members: frozenset[str]
    expected_version: int
    count: int
    now: str


class DynamoGroupStore:
    """Implements ports.GroupStore; mixed into DynamoStore, so `client`, `table_name` and `_codec` are its."""

    client: Any
    table_name: str
    _codec: Any

    def create_group(self, group: Group) -> bool:
        number = _group_number(group.group_id)
        summary: dict[str, Any] = {
            "pk": account_pk(group.account_id),
            "sk": group_sk(number),
            **group.model_dump(mode="json", exclude={"members"}),
            "member_count": group.member_count,
        }
        writes = [
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": self._codec.dump(summary),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            self._put_members(group.account_id, number, group.members, group.version),
        ]
        try:
            return transact_until_decided(self.client, writes)[0] is None
        except TransactionUndecided as error:
            raise not_done(f"creating group {group.group_id}", error) from error

    def _put_members(self, account_id: str, number: int, members: Sequence[str], version: int) -> dict[str, Any]:
        item: dict[str, Any] = {"pk": account_pk(account_id), "sk": members_sk(number), "version": version}
        # DynamoDB has no empty sets: a group without members has a members item without `members`.
        if members:
            item["members"] = set(members)
        return {"Put": {"TableName": self.table_name, "Item": self._codec.dump(item)}}

    def get_group(self, account_id: str, group_number: int) -> Group | None:
        # Two consistent GetItems, the summary first: a TransactGetItems would be cancelled (TransactionConflict)
        # while a member change's transaction on the group is in flight, and costs twice the read units. A change
        # committed between the two reads leaves the members item ahead of the summary: read both again.
        for attempt in range(MAX_GROUP_READS):
            summary = self._get(_group_key(account_id, group_number))
            if not summary:
                return None
            members = self._get(_members_key(account_id, group_number))
            if not members and "members" not in summary and not self._get(_group_key(account_id, group_number)):
                # No members item beside a summary that holds none: the group was deleted between the two reads (a
                # group without the members item holds its members in its summary), not a group of no members.
                return None
            if not members or members.get("version", 0) <= summary.get("version", 0):
                return _group_of(summary, members)
            back_off(attempt)
        raise Unavailable("the group kept changing while it was read; try again")

    def _get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        found = self.client.get_item(TableName=self.table_name, Key=key, ConsistentRead=True).get("Item")
        return self._codec.load(found) if found else None

    def list_groups(
        self, account_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[GroupSummary], str | None]:
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": account_pk(account_id)}, ":prefix": {"S": GROUP_SK_PREFIX}},
            "ExpressionAttributeNames": {"#name": "name"},
            "ProjectionExpression": ", ".join(_SUMMARY_ATTRIBUTES),
            # A group created or deleted a moment ago is listed or gone, as reading it by id already shows.
            "ConsistentRead": True,
        }
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(cursor, pk=account_pk(account_id), sk_form=GROUP_SK)
        groups, last = read_page(
            self.client.query,
            query,
            limit,
            load=lambda items: [GroupSummary.model_validate(self._codec.load(item)) for item in items],
            key_of=lambda group: _listed_group_key(account_id, group),
        )
        return groups, encode_cursor(last)

    def add_group_members(
        self,
        account_id: str,
        group_number: int,
        members: Sequence[str],
        *,
        expected_version: int,
        member_count: int,
        now: str,
    ) -> bool:
        return self._change_members(
            _MemberChange("ADD", account_id, group_number, frozenset(members), expected_version, member_count, now)
        )

    def remove_group_members(
        self,
        account_id: str,
        group_number: int,
        members: Sequence[str],
        *,
        expected_version: int,
        member_count: int,
        now: str,
    ) -> bool:
        return self._change_members(
            _MemberChange("DELETE", account_id, group_number, frozenset(members), expected_version, member_count, now)
        )

    def _change_members(self, change: _MemberChange) -> bool:
        if not change.members:
            return True
        # The summary's version decides; a summary still holding members (stored before the members item existed)
        # refuses this write too, and the change then moves them (_move_members).
        moved = {
            "Update": {
                "TableName": self.table_name,
                "Key": _members_key(change.account_id, change.number),
                "UpdateExpression": f"{change.action} members :members SET version = :next",
                "ExpressionAttributeValues": {
                    ":members": {"SS": sorted(change.members)},
                    ":next": {"N": str(change.expected_version + 1)},
                },
            }
        }
        writes = [self._summary_change(change, condition="attribute_not_exists(members)"), moved]
        try:
            applied = transact_until_decided(self.client, writes)[0] is None
        except TransactionUndecided:
            # Conflicted with other writes of the group on every try: nothing written; the caller reads the group
            # again, and answers 409 when it keeps losing (a 500 until 2026-12-07).
            return False
        return True if applied else self._move_members(change)

    def _summary_change(self, change: _MemberChange, *, condition: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": _group_key(change.account_id, change.number),
                "UpdateExpression": "REMOVE members SET member_count = :count, version = :next, updated_at = :now",
                "ConditionExpression": f"attribute_exists(pk) AND version = :expected AND {condition}",
                "ExpressionAttributeValues": {
                    ":count": {"N": str(change.count)},
                    ":next": {"N": str(change.expected_version + 1)},
                    ":expected": {"N": str(change.expected_version)},
                    ":now": {"S": change.now},
                },
            }
        }

    def _move_members(self, change: _MemberChange) -> bool:
        """A change to a group whose summary holds members: its members (_held) as changed go to the members item and
        leave the summary, in one transaction on the version read. False when the group went or changed."""
        stored = self._get(_group_key(change.account_id, change.number)) or {}
        if stored.get("version") != change.expected_version or "members" not in stored:
            return False
        try:
            return self._move_held(change, stored)
        except TransactionUndecided:
            return False  # as _change_members: nothing written, the caller reads the group again

    def _move_held(self, change: _MemberChange, stored: dict[str, Any]) -> bool:
        # Any change to the members item after this read changes the summary's version too, refusing the write.
        held = _held(stored, self._get(_members_key(change.account_id, change.number)))
        changed = held | change.members if change.action == "ADD" else held - change.members
        # The count of the members moved: the caller's, read at this version, unless the build rolled back to counted
        # only its summary's (the migration's change of no member brings the count back in line).
        change = replace(change, count=len(changed))
        writes = [
            self._summary_change(change, condition="attribute_exists(members)"),
            self._put_members(change.account_id, change.number, sorted(changed), change.expected_version + 1),
        ]
        return transact_until_decided(self.client, writes)[0] is None

    def move_group_members(self, account_id: str, group_number: int) -> GroupMove:
        """The migration's move (`sms-gateway admin migrate-groups`): a change of no member, written as a member change
        writes its move (_move_held), so a member change racing it loses nothing: whichever writes second finds the
        version moved on and reads the group again. Its `updated_at` stays, as no member changed."""
        try:
            stored = self._get(_group_key(account_id, group_number))
            if stored is None:
                return "gone"
            if "members" not in stored:
                return "already_new"
            move = _MemberChange(
                "ADD",
                account_id,
                group_number,
                frozenset(),
                expected_version=stored["version"],
                count=0,  # _move_held counts the members it moves
                now=stored["updated_at"],
            )
            return "moved" if self._move_held(move, stored) else "changed"
        except TransactionUndecided as error:
            raise not_done(f"moving the members of group grp_{group_number}", error) from error
        except self.client.exceptions.ClientError as error:
            # Throttled past botocore's own retries (or another error it retries): the next run moves the group.
            if error.response.get("Error", {}).get("Code") not in RETRIED_ERROR_CODES:
                raise
            raise Unavailable(
                f"moving the members of group grp_{group_number}: not done ({error}); try again"
            ) from error

    def stored_groups(self, account_id: str | None = None) -> Iterator[StoredGroup]:
        """Every group's summary: of one account (a Query of its partition), else of all (a Scan of the whole table,
        about half a read unit per 4 KB stored: groups have no index of their own). The `members` projected say
        which summaries hold them; the move reads each again, consistently."""
        items = account_items(self.client, self.table_name, account_id, GROUP_SK_PREFIX, projection="pk, sk, members")
        for item in items:
            number = group_number(GROUP_ID_PREFIX + item["sk"]["S"].removeprefix(GROUP_SK_PREFIX))
            if number is not None:
                account = item["pk"]["S"].removeprefix(ACCOUNT_PK_PREFIX)
                yield StoredGroup(account, number, "members" in item)

    def delete_group(self, account_id: str, group_number: int) -> bool:
        writes = [
            {
                "Delete": {
                    "TableName": self.table_name,
                    "Key": _group_key(account_id, group_number),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
            {"Delete": {"TableName": self.table_name, "Key": _members_key(account_id, group_number)}},
        ]
        try:
            return transact_until_decided(self.client, writes)[0] is None
        except TransactionUndecided as error:
            raise not_done(f"deleting group grp_{group_number}", error) from error


def _group_of(summary: dict[str, Any], members: dict[str, Any] | None) -> Group:
    """The group read from its summary and members item (None for a group stored before it existed, whose members
    are in its summary)."""
    values = dict(summary)
    values["members"] = tuple(sorted(_held(summary, members)))
    return Group.model_validate(values)


def _held(summary: dict[str, Any], members: dict[str, Any] | None) -> set[str]:
    """The group's members: the members item's and, when the summary holds members too, theirs. A summary holds
    members when stored before the members item existed, or when the build before it, rolled back to, changed the
    group (it ADDs to the summary's set): their union loses none either build was given, though a member that
    build removed while rolled back comes back if this build holds it."""
    return set(summary.get("members", ())) | set((members or {}).get("members", ()))


def _group_number(group_id: str) -> int:
    number = group_number(group_id)
    if number is None:
        raise ValueError(f"not a group id: {group_id!r}")
    return number
