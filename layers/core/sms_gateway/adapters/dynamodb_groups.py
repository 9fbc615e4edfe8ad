"""DynamoDB adapter for recipient groups: one item per group, its members a string set in the item.

group  pk=ACC#<account_id>  sk=GROUP#<group number, 19 digits>  members (SS of E.164), member_count, version
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key, read_page
from sms_gateway.domain.groups import Group, GroupSummary, group_number

GROUP_SK_PREFIX = "GROUP#"
GROUP_SK = id_sort_key(GROUP_SK_PREFIX)
# Lists leave the members out: a page of groups stays small however big the groups are.
_SUMMARY_ATTRIBUTES = ("group_id", "account_id", "#name", "member_count", "created_at", "updated_at")


def _account_pk(account_id: str) -> str:
    # The account's own partition, as adapters.dynamodb.account_pk (imported from there it would be circular).
    return f"ACC#{account_id}"


def group_sk(group_number: int) -> str:
    return f"{GROUP_SK_PREFIX}{group_number:019d}"


def _group_key(account_id: str, group_number: int) -> dict[str, Any]:
    return {"pk": {"S": _account_pk(account_id)}, "sk": {"S": group_sk(group_number)}}


def _listed_group_key(account_id: str, group: GroupSummary) -> dict[str, Any]:
    number = group_number(group.group_id)
    if number is None:  # a stored group's id is always one this store made
        raise ValueError(f"stored group has a malformed id {group.group_id!r}")
    return _group_key(account_id, number)


class DynamoGroupStore:
    """Implements ports.GroupStore; mixed into DynamoStore, so `client`, `table_name` and `_codec` are its."""

    client: Any
    table_name: str
    _codec: Any

    def create_group(self, group: Group) -> bool:
        item: dict[str, Any] = {
            "pk": _account_pk(group.account_id),
            "sk": group_sk(_group_number(group.group_id)),
            **group.model_dump(mode="json", exclude={"members"}),
            "member_count": group.member_count,
        }
        # DynamoDB has no empty sets: a group without members simply has no `members` attribute.
        if group.members:
            item["members"] = set(group.members)
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=self._codec.dump(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def get_group(self, account_id: str, group_number: int) -> Group | None:
        found = self.client.get_item(
            TableName=self.table_name, Key=_group_key(account_id, group_number), ConsistentRead=True
        ).get("Item")
        if not found:
            return None
        values = self._codec.load(found)
        values["members"] = tuple(sorted(values.get("members", ())))
        return Group.model_validate(values)

    def list_groups(
        self, account_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[GroupSummary], str | None]:
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": _account_pk(account_id)}, ":prefix": {"S": GROUP_SK_PREFIX}},
            "ExpressionAttributeNames": {"#name": "name"},
            "ProjectionExpression": ", ".join(_SUMMARY_ATTRIBUTES),
            # A group created or deleted a moment ago is listed or gone, as reading it by id already shows.
            "ConsistentRead": True,
        }
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(cursor, pk=_account_pk(account_id), sk_form=GROUP_SK)
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
            "ADD", account_id, group_number, members, expected_version=expected_version, count=member_count, now=now
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
            "DELETE", account_id, group_number, members, expected_version=expected_version, count=member_count, now=now
        )

    def _change_members(
        self,
        action: str,
        account_id: str,
        group_number: int,
        members: Sequence[str],
        *,
        expected_version: int,
        count: int,
        now: str,
    ) -> bool:
        if not members:
            return True
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_group_key(account_id, group_number),
                UpdateExpression=(
                    f"{action} members :members SET member_count = :count, version = :next, updated_at = :now"
                ),
                ConditionExpression="attribute_exists(pk) AND version = :expected",
                ExpressionAttributeValues={
                    ":members": {"SS": sorted(set(members))},
                    ":count": {"N": str(count)},
                    ":next": {"N": str(expected_version + 1)},
                    ":expected": {"N": str(expected_version)},
                    ":now": {"S": now},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def delete_group(self, account_id: str, group_number: int) -> bool:
        try:
            self.client.delete_item(
                TableName=self.table_name,
                Key=_group_key(account_id, group_number),
                ConditionExpression="attribute_exists(pk)",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


def _group_number(group_id: str) -> int:
    number = group_number(group_id)
    if number is None:
        raise ValueError(f"not a group id: {group_id!r}")
    return number
