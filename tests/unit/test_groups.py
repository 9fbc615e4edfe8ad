"""Recipient groups against an in-memory store: create, read, change members, delete, expand in a send."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from sms_gateway.errors import Conflict, InvalidRecipient, InvalidRequest, NotFound
from sms_gateway.logic import groups
from sms_gateway.logic.groups import Group, GroupSummary
from tests.fakes import InMemoryStore

NOW = datetime(2026, 1, 2, 23, 50, 37, tzinfo=UTC)


class GroupMemoryStore(InMemoryStore):
    """InMemoryStore plus groups, with the adapter's conditional write on the group's version."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: dict[tuple[str, int], Group] = {}
        self.group_reads = 0
        # Changes another request slips in before the next conditional write (to exercise the retry).
        self.interleaved: list[Sequence[str]] = []

    def create_group(self, group: Group) -> bool:
        number = groups.group_number(group.group_id)
        assert number is not None
        if (group.account_id, number) in self.groups:
            return False
        self.groups[(group.account_id, number)] = group
        return True

    def get_group(self, account_id: str, group_number: int) -> Group | None:
        self.group_reads += 1
        return self.groups.get((account_id, group_number))

    def list_groups(
        self, account_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[GroupSummary], str | None]:
        found = [g for (owner, _), g in sorted(self.groups.items()) if owner == account_id]
        start = int(cursor or 0)
        page = [
            GroupSummary(**g.model_dump(exclude={"members", "version"}), member_count=g.member_count)
            for g in found[start : start + limit]
        ]
        return page, (str(start + limit) if start + limit < len(found) else None)

    def _change(self, account_id: str, number: int, members: set[str], version: int, now: str, *, add: bool) -> bool:
        key = (account_id, number)
        if self.interleaved and key in self.groups:
            other = self.groups[key]
            self.groups[key] = other.model_copy(
                update={"members": tuple(sorted({*other.members, *self.interleaved.pop()})), "version": version + 1}
            )
        group = self.groups.get(key)
        if group is None or group.version != version:
            return False
        updated = set(group.members) | members if add else set(group.members) - members
        self.groups[key] = group.model_copy(
            update={"members": tuple(sorted(updated)), "version": version + 1, "updated_at": now}
        )
        return True

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
        return self._change(account_id, group_number, set(members), expected_version, now, add=True)

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
        return self._change(account_id, group_number, set(members), expected_version, now, add=False)

    def delete_group(self, account_id: str, group_number: int) -> bool:
        return self.groups.pop((account_id, group_number), None) is not None


@pytest.fixture
def store() -> GroupMemoryStore:
    return GroupMemoryStore()


def create(store: GroupMemoryStore, members: Sequence[str], *, account_id: str = "7", name: str = "Regulars"):
    return groups.create_group(store, account_id=account_id, default_country="NG", name=name, members=members, now=NOW)


def add(store: GroupMemoryStore, group_id: str, members: Sequence[str], account_id: str = "7"):
    return groups.add_members(
        store, account_id=account_id, default_country="NG", group_id=group_id, members=members, now=NOW
    )


def remove(store: GroupMemoryStore, group_id: str, members: Sequence[str]):
    return groups.remove_members(
        store, account_id="7", default_country="NG", group_id=group_id, members=members, now=NOW
    )


class TestCreate:
    def test_members_are_normalised_deduplicated_and_invalid_ones_reported(self, store):
        # Given numbers in international, bare and local form, one of them twice, and one invalid
        # When a group is created with them
        change = create(store, ["+2348020000000", "2348030000000", "08020000000", "12"])
        # Then it holds the two distinct numbers in E.164, and the invalid one is reported with its reason
        assert change.group.members == ("+2348020000000", "+2348030000000")
        assert change.changed == 2
        assert [(r.raw, bool(r.reason)) for r in change.rejected] == [("12", True)]
        # And its id cannot be taken for a phone number
        assert change.group.group_id.startswith("grp_")
        assert groups.get_group(store, "7", change.group.group_id) == change.group

    def test_a_blank_name_is_refused_and_nothing_is_stored(self, store):
        with pytest.raises(InvalidRequest, match="name"):
            create(store, ["2348020000000"], name="   ")
        assert store.groups == {}

    def test_more_members_than_the_cap_are_refused_and_nothing_is_stored(self, store, monkeypatch):
        # Given a cap of 2 members per group
        monkeypatch.setattr(groups, "MAX_GROUP_MEMBERS", 2)
        # When a group of 3 is created
        with pytest.raises(InvalidRequest, match="at most 2 members"):
            create(store, ["2348020000000", "2348020000001", "2348020000002"])
        # Then nothing is stored
        assert store.groups == {}


class TestReadAndDelete:
    def test_another_accounts_group_is_not_found(self, store):
        # Given a group of account 7
        group = create(store, ["2348020000000"]).group
        # When account 8 reads or deletes it
        # Then it is not found, and the group is still there
        with pytest.raises(NotFound):
            groups.get_group(store, "8", group.group_id)
        with pytest.raises(NotFound):
            groups.delete_group(store, "8", group.group_id)
        assert groups.get_group(store, "7", group.group_id) == group

    @pytest.mark.parametrize("group_id", ["grp_", "grp_x1", "2348020000000", "grp_" + "9" * 20])
    def test_a_malformed_group_id_is_not_found(self, store, group_id):
        with pytest.raises(NotFound):
            groups.get_group(store, "7", group_id)

    def test_a_deleted_group_is_gone(self, store):
        group = create(store, ["2348020000000"]).group
        groups.delete_group(store, "7", group.group_id)
        with pytest.raises(NotFound):
            groups.get_group(store, "7", group.group_id)
        with pytest.raises(NotFound):
            groups.delete_group(store, "7", group.group_id)

    def test_lists_are_paged_and_scoped_to_the_account(self, store):
        # Given three groups of account 7 and one of account 8
        for name in ("a", "b", "c"):
            create(store, ["2348020000000"], name=name)
        create(store, ["2348020000000"], account_id="8", name="theirs")
        # When account 7 lists two at a time
        first, cursor = groups.list_groups(store, "7", limit=2, cursor=None)
        second, end = groups.list_groups(store, "7", limit=2, cursor=cursor)
        # Then it sees its own three, with their member counts, and nothing else
        assert [g.name for g in first + second] == ["a", "b", "c"]
        assert {g.member_count for g in first + second} == {1}
        assert end is None


class TestMembers:
    def test_adding_counts_new_and_existing_members_and_reports_invalid_ones(self, store):
        group = create(store, ["2348020000000"]).group
        change = add(store, group.group_id, ["08020000000", "2348030000000", "abc"])
        assert change.group.members == ("+2348020000000", "+2348030000000")
        assert (change.changed, change.unchanged) == (1, 1)
        assert [r.raw for r in change.rejected] == ["abc"]
        assert change.group.version == group.version + 1

    def test_adding_only_existing_members_writes_nothing(self, store):
        group = create(store, ["2348020000000"]).group
        change = add(store, group.group_id, ["2348020000000"])
        assert (change.changed, change.unchanged) == (0, 1)
        assert change.group.version == group.version

    def test_adding_beyond_the_cap_is_refused_and_changes_nothing(self, store, monkeypatch):
        monkeypatch.setattr(groups, "MAX_GROUP_MEMBERS", 2)
        group = create(store, ["2348020000000", "2348020000001"]).group
        with pytest.raises(InvalidRequest, match="at most 2 members"):
            add(store, group.group_id, ["2348020000002"])
        assert groups.get_group(store, "7", group.group_id) == group

    def test_a_change_that_races_another_is_retried_on_the_new_version(self, store):
        # Given a group, and another request that adds a member just before our write
        group = create(store, ["2348020000000"]).group
        store.interleaved.append(["+2348040000000"])
        # When we add a member
        change = add(store, group.group_id, ["2348030000000"])
        # Then both additions are kept
        assert change.group.members == ("+2348020000000", "+2348030000000", "+2348040000000")
        assert change.changed == 1

    def test_a_group_that_keeps_changing_under_us_is_a_conflict(self, store):
        group = create(store, ["2348020000000"]).group
        store.interleaved.extend([[f"+23480400000{i:02d}"] for i in range(10)])
        with pytest.raises(Conflict):
            add(store, group.group_id, ["2348030000000"])

    def test_adding_to_another_accounts_group_is_not_found(self, store):
        group = create(store, ["2348020000000"]).group
        with pytest.raises(NotFound):
            add(store, group.group_id, ["2348030000000"], account_id="8")
        assert groups.get_group(store, "7", group.group_id) == group

    def test_removing_counts_members_and_non_members(self, store):
        group = create(store, ["2348020000000", "2348030000000"]).group
        change = remove(store, group.group_id, ["08020000000", "2348050000000"])
        assert change.group.members == ("+2348030000000",)
        assert (change.changed, change.unchanged) == (1, 1)


class TestExpand:
    def test_group_ids_become_their_members_in_place_and_unknown_ones_are_listed(self, store):
        # Given a group of two
        group = create(store, ["2348020000000", "2348030000000"]).group
        # When a `to` names a number, the group (twice, once in capitals) and an unknown group
        expansion = groups.expand(
            store, "7", ["08050000000", group.group_id, group.group_id.upper(), "grp_1", "grp_nope"]
        )
        # Then the group's members follow the number, the group is read once, and the unknown ids are listed
        assert expansion.numbers == ["08050000000", "+2348020000000", "+2348030000000"]
        assert expansion.group_members == 2
        assert expansion.unknown_groups == ["grp_1", "grp_nope"]
        assert store.group_reads == 2
        with pytest.raises(InvalidRecipient, match="unknown group id 'grp_1', 'grp_nope'"):
            groups.require_known_groups(expansion)

    def test_another_accounts_group_id_is_unknown(self, store):
        group = create(store, ["2348020000000"], account_id="8").group
        expansion = groups.expand(store, "7", [group.group_id])
        assert expansion.numbers == []
        assert expansion.unknown_groups == [group.group_id]

    def test_with_a_cap_no_group_is_read_once_those_read_pass_it(self, store):
        # Given two groups of three (one member shared) and a third group
        first = create(store, ["2348020000000", "2348030000000", "2348050000000"], name="a").group
        second = create(store, ["2348050000000", "2348060000000", "2348070000000"], name="b").group
        third = create(store, ["2348080000000"], name="c").group
        store.group_reads = 0
        # When a `to` naming all three is expanded with a cap of 4 distinct members
        expansion = groups.expand(store, "7", [first.group_id, second.group_id, third.group_id], most=4)
        # Then the third group is never read, and the expansion says it stopped (counting the 5 read)
        assert store.group_reads == 2
        assert (expansion.group_members, expansion.stopped) == (5, True)
        # And with the cap not passed every group is read, and none is reported as left out
        store.group_reads = 0
        assert not groups.expand(store, "7", [first.group_id, second.group_id, third.group_id], most=6).stopped
        assert store.group_reads == 3

    def test_numbers_alone_pass_through_without_any_read(self, store):
        expansion = groups.expand(store, "7", ["2348020000000"])
        assert expansion.numbers == ["2348020000000"]
        assert expansion.unknown_groups == []
        assert store.group_reads == 0


def test_a_boolean_is_no_phone_number_in_a_group_or_a_send():
    # Python's bool is an int: `true` used to become the member "True", and a group was created around it.
    from pydantic import ValidationError

    from sms_gateway.dialects.ninebits import GroupRequest, MembersRequest, SendRequest

    for model, payload in (
        (GroupRequest, {"name": "team", "members": [True, False]}),
        (MembersRequest, {"members": True}),
        (SendRequest, {"from": "BRAND", "to": [True], "message": "hi"}),
    ):
        with pytest.raises(ValidationError):
            model.model_validate(payload)
    assert GroupRequest.model_validate({"name": "team", "members": [2348020000000]}).members == ["2348020000000"]


def test_a_send_whose_groups_pass_a_thousand_members_reads_no_further_group(store):
    from sms_gateway.domain.models import Account
    from sms_gateway.logic import compose

    # Given three groups of 600 distinct members each
    made = [create(store, [f"+234803{g}{n:06d}" for n in range(600)], name=f"g{g}").group.group_id for g in range(1, 4)]
    store.group_reads = 0
    account = Account(account_id="7", name="Cinema", credits=10_000, senders=("48974",))
    # When a send (or its dry run) names all three
    for strict in (True, False):
        with pytest.raises(InvalidRequest, match="at most 1000 recipients"):
            compose.resolve_recipients(store, account, made, strict=strict)
    # Then it is refused, and once the first two groups named more than 1000 members the third was never read
    # (each group is up to 10,000 numbers, ~170 KB: one consistent read of ~43 units, and all kept in memory)
    assert store.group_reads <= 4, store.group_reads
