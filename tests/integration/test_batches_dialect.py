"""The batches dialect (seed 3) through the real `api` handler on moto: groups, sends to groups, dry run,
cancel of a scheduled batch, and delivery reports filtered by status."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import Mock
from urllib.parse import urlencode

import pytest

from tests.conftest import load_event
from tests.integration.test_send_path import FakeContext, balance, load_function, queued_records

Api = Callable[[dict[str, Any]], dict[str, Any]]
AIRTEL = "2348020000000"
MTN = "2348030000000"
GLO = "2348050000000"


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def request(
    token: str, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
) -> dict[str, Any]:
    """An HTTP API request on the `ANY /ng/v1/{proxy+}` route, built from the groups sample event."""
    event = load_event("api-groups-create.json", YOUR_API_Token=token)
    event["rawPath"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"proxy": path.removeprefix("/ng/v1/")}
    event["body"] = json.dumps(body) if body is not None else None
    event["queryStringParameters"] = query
    event["rawQueryString"] = urlencode(query or {})
    return event


def call(api: Api, token: str, method: str, path: str, body: Any = None, **query: str) -> tuple[int, dict[str, Any]]:
    response = api(request(token, method, path, body, query or None))
    return response["statusCode"], json.loads(response["body"])


def create_group(api: Api, token: str, members: list[str], name: str = "Regulars") -> str:
    status, body = call(api, token, "POST", "/ng/v1/groups", {"name": name, "members": members})
    assert status == 201, body
    return str(body["group_id"])


def send(api: Api, token: str, to: list[str], **extra: Any) -> tuple[int, dict[str, Any]]:
    return call(api, token, "POST", "/ng/v1/sendsms", {"from": "48974", "to": to, "body": "Hello Buddy", **extra})


def stored_batches(account_id: str) -> list[dict[str, Any]]:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    return store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :batch)",
        ExpressionAttributeValues={":pk": {"S": f"ACC#{account_id}"}, ":batch": {"S": "BATCH#"}},
    )["Items"]


def report_entries(api: Api, token: str, reference_id: str) -> list[dict[str, Any]]:
    status, body = call(api, token, "GET", f"/ng/v1/batches/{reference_id}/delivery_report")
    assert status == 200, body
    return list(body["data"])


def report_numbers(api: Api, token: str, reference_id: str) -> list[str]:
    return sorted(entry["to"] for entry in report_entries(api, token, reference_id))


# ---------------------------------------------------------------- groups


def test_the_sample_create_request_makes_a_group_of_valid_distinct_numbers(aws, account, api):
    # Given the sample request: three forms of two numbers, and one invalid number
    # When it is posted
    response = api(load_event("api-groups-create.json", YOUR_API_Token=account["token"]))
    # Then the group holds the two numbers without '+', and the invalid one is reported with its reason
    assert response["statusCode"] == 201
    body = json.loads(response["body"])
    assert body["status_code"] == 201
    assert body["group_id"].startswith("grp_")
    assert body["name"] == "Cinema regulars"
    assert body["members"] == [AIRTEL, MTN]
    assert body["member_count"] == 2
    assert body["invalid_count"] == 1
    assert body["invalid"][0]["member"] == "12"
    assert body["invalid"][0]["reason"]


def test_group_members_can_be_read_added_removed_and_the_group_deleted(aws, account, api):
    token = account["token"]
    group_id = create_group(api, token, [AIRTEL])
    # When a member is added (one new, one already there, one invalid)
    status, added = call(
        api, token, "POST", f"/ng/v1/groups/{group_id}/members", {"members": [MTN, "08020000000", "x"]}
    )
    assert status == 200, added
    assert (added["added"], added["already_members"], added["invalid_count"], added["member_count"]) == (1, 1, 1, 2)
    # Then reading the group shows both
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert (status, read["members"]) == (200, [AIRTEL, MTN])
    # And the list shows it with its count
    status, listed = call(api, token, "GET", "/ng/v1/groups")
    assert status == 200
    assert [(g["group_id"], g["member_count"]) for g in listed["data"]] == [(group_id, 2)]
    assert listed["next"] is None
    # When a member is removed (and one that is not a member)
    status, removed = call(api, token, "DELETE", f"/ng/v1/groups/{group_id}/members", {"members": [AIRTEL, GLO]})
    assert status == 200, removed
    assert (removed["removed"], removed["not_members"], removed["member_count"]) == (1, 1, 1)
    assert call(api, token, "GET", f"/ng/v1/groups/{group_id}")[1]["members"] == [MTN]
    # When the last member is removed the group stays, empty
    call(api, token, "DELETE", f"/ng/v1/groups/{group_id}/members", {"members": [MTN]})
    assert call(api, token, "GET", f"/ng/v1/groups/{group_id}")[1]["members"] == []
    # When the group is deleted it is gone
    status, deleted = call(api, token, "DELETE", f"/ng/v1/groups/{group_id}")
    assert (status, deleted["message"]) == (200, "group deleted")
    assert call(api, token, "GET", f"/ng/v1/groups/{group_id}")[0] == 404
    assert call(api, token, "DELETE", f"/ng/v1/groups/{group_id}")[0] == 404


@pytest.mark.parametrize("unset", [None, "", "  "])
def test_a_group_created_with_its_members_unset_as_clients_write_it_is_an_empty_group(aws, account, api, unset):
    # Given a client whose model writes the optional `members` unset: null (JSON.NET, Jackson) or "" (PHP)
    token = account["token"]
    # When it creates a group with a name and no members yet
    status, body = call(api, token, "POST", "/ng/v1/groups", {"name": "Newsletter", "members": unset})
    # Then the group is made, empty, as when `members` is left out, and members can be added to it
    assert (status, body["status_code"], body["member_count"], body["members"]) == (201, 201, 0, []), body
    assert body["invalid_count"] == 0
    status, added = call(api, token, "POST", f"/ng/v1/groups/{body['group_id']}/members", {"members": [AIRTEL]})
    assert (status, added["member_count"]) == (200, 1), added


def test_numbers_a_spreadsheet_gave_as_whole_floats_are_sent_to_and_grouped(aws, account, api):
    # Given numbers read from a spreadsheet column (pandas makes a column with a blank cell float64, PhpSpreadsheet
    # reads a numeric cell as a float), written by json.dumps / json_encode as 2348020000000.0
    token = account["token"]
    airtel, mtn = float(AIRTEL), float(MTN)
    # When a send names them, one alone and in a list, and a group is made of them
    alone = call(api, token, "POST", "/ng/v1/sendsms", {"from": "48974", "to": airtel, "message": "Hi"})
    listed = send(api, token, [airtel, mtn])
    status, group = call(api, token, "POST", "/ng/v1/groups", {"name": "From Excel", "members": [airtel, mtn]})
    # Then each is read as its digits, as a whole number is: sent to and stored as those numbers
    assert alone[0] == 200 and alone[1]["recipients_processed"] == 1, alone
    assert listed[0] == 200 and listed[1]["recipients_processed"] == 2, listed
    assert report_numbers(api, token, listed[1]["reference_id"]) == [AIRTEL, MTN]
    assert (status, group["members"], group["invalid_count"]) == (201, [AIRTEL, MTN], 0), group
    status, added = call(api, token, "POST", f"/ng/v1/groups/{group['group_id']}/members", {"members": float(GLO)})
    assert (status, added["added"]) == (200, 1), added


def test_group_lists_are_paged(aws, account, api):
    token = account["token"]
    made = [create_group(api, token, [AIRTEL], name=f"g{i}") for i in range(3)]
    status, first = call(api, token, "GET", "/ng/v1/groups", page_size="2")
    assert status == 200
    status, second = call(api, token, "GET", "/ng/v1/groups", page_size="2", next=first["next"])
    assert status == 200
    assert [g["group_id"] for g in first["data"] + second["data"]] == made
    assert call(api, token, "GET", "/ng/v1/groups", next="not-a-cursor")[0] == 400


def test_a_page_of_groups_holds_page_size_groups_however_big_they_are(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.groups import Group
    from sms_gateway.logic import groups

    # Given 9 groups of 10,000 members each (the cap docs/dialects/9bits.md allows), stored as a create stores them
    made = []
    for g in range(9):
        group = Group(
            group_id=groups.new_group_id(),
            account_id=account["account_id"],
            name=f"g{g}",
            members=tuple(sorted(f"+23480{g}{i:07d}" for i in range(10_000))),
            created_at="2026-01-01T00:00:00.000000Z",
            updated_at="2026-01-01T00:00:00.000000Z",
        )
        assert gateway().store.create_group(group)
        made.append(group.group_id)
    # When they are listed 100 to a page
    status, page = call(api, account["token"], "GET", "/ng/v1/groups", page_size="100")
    # Then the one page holds all 9 ("Lists leave the members out: a page of groups stays small however big the
    # groups are", adapters/dynamodb_groups.py), with no cursor
    assert status == 200
    assert ([g["group_id"] for g in page["data"]], page["next"]) == (made, None)


def group_items(account_id: str) -> dict[str, dict[str, Any]]:
    """The account's group items as stored, by sort key."""
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    items = store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :group)",
        ExpressionAttributeValues={":pk": {"S": f"ACC#{account_id}"}, ":group": {"S": "GROUP"}},
        ConsistentRead=True,
    )["Items"]
    return {item["sk"]["S"]: store._codec.load(item) for item in items}


def store_group_in_the_old_layout(account_id: str, members: list[str]) -> str:
    """A group as stores before 2026-12-06 wrote it: one item, its members a string set in it."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups

    store = gateway().store
    group_id = groups.new_group_id()
    number = group_id.removeprefix("grp_")
    item = {
        "pk": f"ACC#{account_id}",
        "sk": f"GROUP#{int(number):019d}",
        "group_id": group_id,
        "account_id": account_id,
        "name": "Old regulars",
        "version": 1,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
        "member_count": len(members),
        "members": {f"+{m}" for m in members},
    }
    store.client.put_item(TableName=store.table_name, Item=store._codec.dump(item))
    return group_id


def test_a_group_keeps_its_members_beside_the_summary_the_list_reads(aws, account, api):
    token = account["token"]
    group_id = create_group(api, token, [AIRTEL, MTN])
    number = f"{int(group_id.removeprefix('grp_')):019d}"
    items = group_items(account["account_id"])
    # The summary the list reads holds no members; the members item, which the list's key condition misses, does
    assert set(items) == {f"GROUP#{number}", f"GROUP_MEMBERS#{number}"}
    assert "members" not in items[f"GROUP#{number}"]
    assert set(items[f"GROUP_MEMBERS#{number}"]["members"]) == {f"+{AIRTEL}", f"+{MTN}"}
    # A change moves both versions on together; a delete takes both
    call(api, token, "POST", f"/ng/v1/groups/{group_id}/members", {"members": [GLO]})
    items = group_items(account["account_id"])
    assert items[f"GROUP#{number}"]["version"] == items[f"GROUP_MEMBERS#{number}"]["version"] == 2
    assert items[f"GROUP#{number}"]["member_count"] == 3
    assert call(api, token, "DELETE", f"/ng/v1/groups/{group_id}")[0] == 200
    assert group_items(account["account_id"]) == {}


def test_a_group_stored_with_its_members_in_its_summary_reads_sends_and_lists(aws, account, api):
    token = account["token"]
    # Given a group stored by an older deployment, members in its one item
    group_id = store_group_in_the_old_layout(account["account_id"], [AIRTEL, MTN])
    # Then it reads with its members, lists with its count, and a send to it reaches them
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert (status, read["members"], read["member_count"]) == (200, [AIRTEL, MTN], 2)
    status, listed = call(api, token, "GET", "/ng/v1/groups")
    assert [(g["group_id"], g["member_count"]) for g in listed["data"]] == [(group_id, 2)]
    status, sent = send(api, token, [group_id])
    assert (status, sent["recipients_processed"]) == (200, 2), sent
    assert report_numbers(api, token, sent["reference_id"]) == [AIRTEL, MTN]


@pytest.mark.parametrize(
    ("path_method", "change", "expected"),
    [("POST", [GLO, AIRTEL], [AIRTEL, MTN, GLO]), ("DELETE", [AIRTEL, GLO], [MTN])],
    ids=["add", "remove"],
)
def test_the_first_change_to_a_group_in_the_old_layout_moves_its_members_and_keeps_them(
    aws, account, api, path_method, change, expected
):
    token = account["token"]
    group_id = store_group_in_the_old_layout(account["account_id"], [AIRTEL, MTN])
    number = f"{int(group_id.removeprefix('grp_')):019d}"
    # When its members are first changed
    status, changed = call(api, token, path_method, f"/ng/v1/groups/{group_id}/members", {"members": change})
    assert status == 200, changed
    # Then it holds the old members as changed, counted right, now in the members item only
    assert changed["member_count"] == len(expected)
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert (read["members"], read["member_count"]) == (sorted(expected), len(expected))
    items = group_items(account["account_id"])
    assert "members" not in items[f"GROUP#{number}"]
    assert sorted(m.removeprefix("+") for m in items[f"GROUP_MEMBERS#{number}"]["members"]) == sorted(expected)
    # And later changes and the delete work on the new layout
    call(api, token, "DELETE", f"/ng/v1/groups/{group_id}/members", {"members": [MTN]})
    assert call(api, token, "GET", f"/ng/v1/groups/{group_id}")[1]["members"] == sorted(set(expected) - {MTN})
    assert call(api, token, "DELETE", f"/ng/v1/groups/{group_id}")[0] == 200
    assert group_items(account["account_id"]) == {}


def test_a_change_racing_another_on_a_group_in_the_old_layout_loses_nothing(aws, account, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups

    store = gateway().store
    group_id = store_group_in_the_old_layout(account["account_id"], [AIRTEL])
    number = int(group_id.removeprefix("grp_"))
    # Given another change lands (and moves the members) between this change's read and its write
    original = store.get_group
    raced: list[bool] = []

    def read_then_race(account_id: str, group_number: int) -> Any:
        group = original(account_id, group_number)
        if not raced:
            raced.append(True)
            assert store.add_group_members(
                account_id, number, [f"+{GLO}"], expected_version=1, member_count=2, now="2026-01-02T00:00:00Z"
            )
        return group

    monkeypatch.setattr(store, "get_group", read_then_race)
    change = groups.add_members(
        store,
        account_id=account["account_id"],
        default_country="NG",
        group_id=group_id,
        members=[MTN],
        now=datetime.now(UTC),
    )
    # Then the change is retried on the new version: all three members, counted three
    assert (change.group.members, change.group.member_count) == (tuple(f"+{n}" for n in (AIRTEL, MTN, GLO)), 3)
    assert group_items(account["account_id"])[f"GROUP#{number:019d}"]["member_count"] == 3


def add_as_the_previous_build_did(account_id: str, group_id: str, member: str, *, version: int, count: int) -> None:
    """A member added by the build before 2026-12-06 (the runbook's roll back with the previous build): one
    UpdateItem of the summary, its ADD to the summary's `members`, as adapters/dynamodb_groups.py wrote it then."""
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    store.client.update_item(
        TableName=store.table_name,
        Key={"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": f"GROUP#{int(group_id.removeprefix('grp_')):019d}"}},
        UpdateExpression="ADD members :members SET member_count = :count, version = :next, updated_at = :now",
        ConditionExpression="attribute_exists(pk) AND version = :expected",
        ExpressionAttributeValues={
            ":members": {"SS": [f"+{member}"]},
            ":count": {"N": str(count)},
            ":next": {"N": str(version + 1)},
            ":expected": {"N": str(version)},
            ":now": {"S": "2026-12-07T00:00:00.000000Z"},
        },
    )


def test_a_rolled_back_build_s_member_change_keeps_this_build_s_members_when_changed_again(aws, account, api):
    token = account["token"]
    # Given a group made by this build (members in their own item)
    group_id = create_group(api, token, [AIRTEL, MTN])
    # And, after a roll back to the previous build, a member added by it (to the summary's set)
    add_as_the_previous_build_did(account["account_id"], group_id, GLO, version=1, count=3)
    # Then this build, deployed again, reads the members of both
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert read["members"] == sorted([AIRTEL, MTN, GLO]), read
    # When it, deployed again, adds another
    nine_mobile = "2348090000000"
    status, changed = call(api, token, "POST", f"/ng/v1/groups/{group_id}/members", {"members": [nine_mobile]})
    assert status == 200, changed
    # Then the group holds every member it was given, by either build
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert read["members"] == sorted([AIRTEL, MTN, GLO, nine_mobile]), read


def conflicting_group_reads(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """DynamoDB cancelling the next `times` TransactGetItems on a conflict with a concurrent write of one of their
    items (a member change's transaction in flight), as it does on AWS (moto never does)."""
    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    read, conflicts = client.transact_get_items, [times]

    def conflicting(**request: Any) -> Any:
        if conflicts[0]:
            conflicts[0] -= 1
            reasons = [{"Code": "None"}] * (len(request["TransactItems"]) - 1) + [{"Code": "TransactionConflict"}]
            raise client.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                    "CancellationReasons": reasons,
                },
                "TransactGetItems",
            )
        return read(**request)

    monkeypatch.setattr(client, "transact_get_items", conflicting)


def test_a_group_read_or_send_meeting_a_member_change_in_flight_is_answered(aws, account, api, monkeypatch):
    token = account["token"]
    group_id = create_group(api, token, [AIRTEL, MTN])
    # Given DynamoDB cancelling the group's read once, on a conflict with a member change being written
    conflicting_group_reads(monkeypatch, 1)
    # Then reading the group still answers it
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert (status, read.get("members")) == (200, [AIRTEL, MTN]), read
    # And a send to it goes out
    conflicting_group_reads(monkeypatch, 1)
    status, sent = send(api, token, [group_id])
    assert (status, sent.get("recipients_processed")) == (200, 2), sent


def changed_between_reads(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None], times: int) -> None:
    """`change` made right after each of the next `times` reads of a group's summary, before its members item is
    read (a member change committing between the two GetItems)."""
    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    read, left = client.get_item, [times]

    def overtaken(**request: Any) -> Any:
        answer = read(**request)
        if left[0] and request["Key"]["sk"]["S"].startswith("GROUP#"):
            left[0] -= 1
            change()
        return answer

    monkeypatch.setattr(client, "get_item", overtaken)


def test_a_group_read_overtaken_by_a_member_change_reads_the_group_again(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway

    token = account["token"]
    group_id = create_group(api, token, [AIRTEL, MTN])
    store, number = gateway().store, int(group_id.removeprefix("grp_"))
    versions = iter(range(1, 10))

    def add_one() -> None:
        version = next(versions)
        member = f"+23480900000{version:02d}"
        now = "2026-12-07T00:00:00.000000Z"
        assert store.add_group_members(
            account["account_id"], number, [member], expected_version=version, member_count=2 + version, now=now
        )

    # Given a member change committing between the summary's read and the members item's, once
    changed_between_reads(monkeypatch, add_one, 1)
    # Then the read answers the group as that change left it, its count and members agreeing
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert status == 200, read
    assert read["members"] == sorted([AIRTEL, MTN, "2348090000001"]), read
    assert read["member_count"] == 3, read
    # And a group overtaken on every read answers 503, to be read again, not a mismatched group
    changed_between_reads(monkeypatch, add_one, 10)
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert status == 503, read


def test_a_group_stored_before_the_members_item_reads_its_members_from_the_summary(aws, account, api):
    from sms_gateway.bootstrap import gateway

    token = account["token"]
    group_id = create_group(api, token, [AIRTEL])
    store, number = gateway().store, int(group_id.removeprefix("grp_"))
    key = {"pk": {"S": f"ACC#{account['account_id']}"}}
    # Given a group as the build before 2026-12-06 stored it: members in the summary, no members item
    store.client.delete_item(TableName=store.table_name, Key={**key, "sk": {"S": f"GROUP_MEMBERS#{number:019d}"}})
    add_as_the_previous_build_did(account["account_id"], group_id, MTN, version=1, count=1)
    # Then it reads with the members its summary holds
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert (status, read.get("members")) == (200, [MTN]), read


def test_the_group_list_reads_what_a_create_or_delete_just_wrote(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway

    token = account["token"]
    create_group(api, token, [AIRTEL])
    client = gateway().store.client
    asked: list[dict[str, Any]] = []
    original = client.query

    def recording(**request: Any) -> Any:
        asked.append(request)
        return original(**request)

    monkeypatch.setattr(client, "query", recording)
    # When the account lists its groups right after creating one
    assert call(api, token, "GET", "/ng/v1/groups")[0] == 200
    # Then the listing's Query is strongly consistent (moto is always consistent; DynamoDB is not, by default)
    listing = [r for r in asked if r.get("ExpressionAttributeValues", {}).get(":prefix") == {"S": "GROUP#"}]
    assert listing and all(r.get("ConsistentRead") is True for r in listing)


def test_a_group_deleted_by_another_spelling_of_its_id_is_answered_with_its_id(aws, account, api):
    token = account["token"]
    group_id = create_group(api, token, [AIRTEL])
    spelled = "GRP_0" + group_id.removeprefix("grp_")
    # Given the group reads under that spelling with its own id
    assert call(api, token, "GET", f"/ng/v1/groups/{spelled}")[1]["group_id"] == group_id
    # When it is deleted under it
    status, deleted = call(api, token, "DELETE", f"/ng/v1/groups/{spelled}")
    # Then it is gone, and the answer names the group that went
    assert status == 200
    assert call(api, token, "GET", f"/ng/v1/groups/{group_id}")[0] == 404
    assert deleted["group_id"] == group_id


def test_another_accounts_group_is_not_found_and_not_changed(aws, account, other_account, api):
    # Given a group of the first account
    group_id = create_group(api, account["token"], [AIRTEL])
    theirs = other_account["token"]
    # When the other account reads, changes, deletes, lists or sends to it
    # Then it is not found, and the group is unchanged
    assert call(api, theirs, "GET", f"/ng/v1/groups/{group_id}")[0] == 404
    assert call(api, theirs, "POST", f"/ng/v1/groups/{group_id}/members", {"members": [MTN]})[0] == 404
    assert call(api, theirs, "DELETE", f"/ng/v1/groups/{group_id}/members", {"members": [AIRTEL]})[0] == 404
    assert call(api, theirs, "DELETE", f"/ng/v1/groups/{group_id}")[0] == 404
    assert call(api, theirs, "GET", "/ng/v1/groups")[1]["data"] == []
    status, body = call(api, theirs, "POST", "/ng/v1/sendsms", {"from": "55555", "to": [group_id], "body": "hi"})
    assert (status, body["status_code"]) == (400, 400)
    assert "unknown group id" in body["message"]
    assert balance(other_account["account_id"]) == 100
    assert call(api, account["token"], "GET", f"/ng/v1/groups/{group_id}")[1]["members"] == [AIRTEL]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"members": [AIRTEL]}, "name"),
        ({"name": "", "members": [AIRTEL]}, "name"),
        ({"name": "x" * 101, "members": [AIRTEL]}, "name"),
        ({"name": "big", "members": [AIRTEL] * 10_001}, "at most 10000"),
        ({"name": "x", "members": {"a": 1}}, "members"),
    ],
)
def test_a_bad_group_request_is_refused_in_the_9bits_shape_and_stores_nothing(aws, account, api, body, fragment):
    status, answer = call(api, account["token"], "POST", "/ng/v1/groups", body)
    assert (status, answer["status_code"]) == (400, 400)
    assert fragment in answer["message"]
    assert call(api, account["token"], "GET", "/ng/v1/groups")[1]["data"] == []


# ---------------------------------------------------------------- sends to groups


def test_a_send_to_a_group_and_numbers_expands_deduplicates_and_charges_each_recipient(aws, account, api):
    # Given a group of two numbers
    group_id = create_group(api, account["token"], [AIRTEL, MTN])
    # When a send names the group, one of its members again (in local form) and another number
    status, body = send(api, account["token"], [group_id, "08030000000", GLO])
    # Then three distinct recipients are processed, charged one credit each, and queued
    assert status == 200, body
    assert body["recipients_processed"] == 3
    assert balance(account["account_id"]) == 97
    [record] = queued_records(aws)
    assert len(json.loads(record["Body"])["message_ids"]) == 3
    assert report_numbers(api, account["token"], body["reference_id"]) == [AIRTEL, MTN, GLO]


def test_an_unknown_group_id_is_a_400_and_nothing_is_sent(aws, account, api):
    status, body = send(api, account["token"], [AIRTEL, "grp_123456"])
    assert (status, body["status_code"]) == (400, 400)
    assert "unknown group id 'grp_123456'" in body["message"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []
    assert stored_batches(account["account_id"]) == []


def test_a_send_to_a_group_with_no_members_is_a_400_and_leaves_its_key_free(aws, account, api):
    # Given a group whose every member was removed
    group_id = create_group(api, account["token"], [AIRTEL])
    assert call(api, account["token"], "DELETE", f"/ng/v1/groups/{group_id}/members", {"members": [AIRTEL]})[0] == 200
    # When a send names only that group
    status, body = send(api, account["token"], [group_id])
    # Then it is refused with a reason, and nothing is stored, charged or queued
    assert (status, body["status_code"]) == (400, 400), body
    assert "no recipient" in body["message"]
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == [] and stored_batches(account["account_id"]) == []


def test_a_keyed_group_create_with_thousands_of_invalid_members_answers_and_its_retry_gets_the_same(aws, account, api):
    # Given a group create under an Idempotency-Key listing one valid member and 9,999 invalid entries
    members = [AIRTEL] + [f"bad-entry-{i:010d}" for i in range(9999)]
    event = request(account["token"], "POST", "/ng/v1/groups", {"name": "Import", "members": members})
    event["headers"]["idempotency-key"] = "import-1"
    # When it is sent, and sent again under the key
    first = api(event)
    again = api(event)
    # Then the group is created once, the answer counts every invalid entry and lists the first thousand, and the
    # retry gets that answer back (it was a 500: the answer was too large to keep under the key)
    assert first["statusCode"] == 201, first["body"][:300]
    body = json.loads(first["body"])
    assert (body["member_count"], body["invalid_count"], len(body["invalid"])) == (1, 9999, 1000)
    assert (again["statusCode"], again["body"]) == (201, first["body"])
    assert len(call(api, account["token"], "GET", "/ng/v1/groups")[1]["data"]) == 1


def test_a_keyed_group_create_whose_invalid_members_are_not_ascii_is_answered_again_the_same(aws, account, api):
    # Given a group create under an Idempotency-Key of 1000 invalid members of 60 '™' each, which JSON writes as
    # 6-byte escapes (64 of them a member made ~400 KB of answer: too large to keep under the key, so a retry got
    # a 409, and on the local stack a 500, instead of the first answer)
    members = [f"{n:04d}" + "™" * 60 for n in range(1000)]
    event = request(account["token"], "POST", "/ng/v1/groups")
    event["headers"]["idempotency-key"] = "group-2026-01"
    event["body"] = json.dumps({"name": "Unicode junk", "members": members}, ensure_ascii=False)
    # When it is sent, and sent again under the key
    first = api(event)
    again = api(dict(event))
    # Then each member is echoed cut to 64 bytes as written, and the retry gets the first answer back
    assert first["statusCode"] == 201, first["body"][:300]
    body = json.loads(first["body"])
    assert (body["invalid_count"], len(body["invalid"])) == (1000, 1000)
    assert body["invalid"][0]["member"] == "0000" + "™" * 10
    assert (again["statusCode"], again["body"]) == (201, first["body"])


def test_the_thousand_recipient_cap_applies_after_expansion(aws, api):
    from sms_gateway_tools.admin import create_account

    # Given an account with credits to spare and a group of 1000 numbers
    rich = create_account(name="Big Club", senders=["48974"], credits=5000)
    numbers = [f"23480200{i:05d}" for i in range(1000)]
    group_id = create_group(api, rich["token"], numbers)
    # When a send names the group and one more number
    status, body = send(api, rich["token"], [group_id, GLO])
    # Then it is refused, saying so, and nothing is charged, queued or stored
    assert (status, body["status_code"]) == (400, 400)
    assert "at most 1000 recipients" in body["message"]
    assert "1001" in body["message"]
    assert balance(rich["account_id"]) == 5000
    assert queued_records(aws) == []
    assert stored_batches(rich["account_id"]) == []
    # And the group with one of its own members again is exactly 1000, which is accepted
    status, body = send(api, rich["token"], [group_id, numbers[0]])
    assert (status, body["recipients_processed"]) == (200, 1000)
    assert balance(rich["account_id"]) == 4000
    # And once the group itself grows past 1000, a send to it alone is refused before its numbers are priced
    call(api, rich["token"], "POST", f"/ng/v1/groups/{group_id}/members", {"members": [GLO]})
    status, body = send(api, rich["token"], [group_id])
    assert (status, body["status_code"]) == (400, 400)
    assert "its groups alone have 1001 members" in body["message"]
    assert balance(rich["account_id"]) == 4000


# ---------------------------------------------------------------- dry run


def test_the_dry_run_answers_parts_encoding_cost_and_invalid_recipients_and_changes_nothing(aws, account, api):
    # Given the sample dry run: a text with ™, two valid numbers and an invalid one
    response = api(load_event("api-batch-dry-run.json", YOUR_API_Token=account["token"]))
    # Then it answers how the send would go
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["status_code"] == 200
    assert (body["parts"], body["encoding"], body["ucs2_characters"]) == (1, "UCS-2", ["™"])
    assert body["cost_per_recipient"] == [
        {"to": AIRTEL, "telco": "airtel", "cost": 1},
        {"to": MTN, "telco": "mtn", "cost": 1},
    ]
    assert (body["total_cost"], body["balance"], body["balance_sufficient"]) == (2, 100, True)
    assert body["invalid_count"] == 1
    assert body["invalid"][0]["to"] == "12"
    assert body["would_be_accepted"] is False
    # And nothing was charged, queued or stored
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []
    assert stored_batches(account["account_id"]) == []


def test_the_dry_run_expands_groups_and_says_when_the_balance_is_short(aws, account, api):
    group_id = create_group(api, account["token"], [AIRTEL, MTN])
    status, body = call(
        api,
        account["token"],
        "POST",
        "/ng/v1/batches/dry_run",
        {"from": "48974", "to": [group_id, "grp_999"], "body": "x" * 161},
    )
    assert status == 200, body
    assert (body["parts"], body["encoding"], body["ucs2_characters"]) == (2, "GSM-7", [])
    assert (body["recipients"], body["total_cost"]) == (2, 4)
    assert body["invalid"] == [{"to": "grp_999", "reason": "unknown group id"}]
    assert balance(account["account_id"]) == 100
    # And a cost beyond the balance is reported, not refused
    numbers = [f"23480200{i:05d}" for i in range(60)]
    status, body = call(
        api, account["token"], "POST", "/ng/v1/batches/dry_run", {"from": "48974", "to": numbers, "body": "x" * 161}
    )
    assert (status, body["total_cost"], body["balance_sufficient"], body["would_be_accepted"]) == (
        200,
        120,
        False,
        False,
    )
    assert balance(account["account_id"]) == 100


def test_a_dry_run_right_after_a_send_weighs_the_balance_the_send_left(aws, account, api, monkeypatch):
    from tests.stored_accounts import account_reads_lag

    # Given reads of the account that lag behind (a replica that has not caught up yet), and a send of one credit
    account_reads_lag(monkeypatch, account["account_id"])
    assert send(api, account["token"], [AIRTEL])[0] == 200
    # When the client quotes its next send right after
    status, body = call(
        api, account["token"], "POST", "/ng/v1/batches/dry_run", {"from": "48974", "to": [MTN], "body": "hi"}
    )
    # Then the quote weighs the 99 credits the send left, not the 100 before it
    assert (status, body["balance"]) == (200, 99)


def test_a_dry_run_with_an_unregistered_sender_is_a_400(aws, account, api):
    status, body = call(
        api, account["token"], "POST", "/ng/v1/batches/dry_run", {"from": "NOTMINE", "to": [AIRTEL], "body": "hi"}
    )
    assert (status, body["status_code"]) == (400, 400)
    assert "not registered" in body["message"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"send_at": (datetime.now(UTC) + timedelta(days=91)).isoformat()}, "90 days"),
        ({"delivery_report": "yes", "callback_url": "ftp://client.example/dlr"}, "https"),
        ({"callback_url": "https://client.example/dlr"}, "needs 'delivery_report'"),
    ],
    ids=["send-at-beyond-90-days", "callback-url-not-https", "callback-url-without-reports"],
)
def test_a_dry_run_refuses_what_the_send_would_refuse(aws, account, api, extra, says):
    # Given a send the gateway would refuse for its send_at or its callback_url
    body = {"from": "48974", "to": [AIRTEL], "body": "hi", **extra}
    assert call(api, account["token"], "POST", "/ng/v1/sendsms", body)[0] == 400
    # When the same request is dry-run
    status, answer = call(api, account["token"], "POST", "/ng/v1/batches/dry_run", body)
    # Then it is refused the same way, not answered "would_be_accepted": true
    assert (status, answer["status_code"]) == (400, 400), answer
    assert says in answer["message"]


def test_the_client_s_sent_date_is_given_back_on_reads_and_in_delivery_reports(aws, account, api):
    # Given a send carrying the seed's sent_date
    sent_date = "2024-01-02T23:50:37.000000Z"
    status, sent = send(api, account["token"], [AIRTEL], sent_date=sent_date, session_id="s-1", ref_id="r-1")
    assert status == 200, sent
    # When the batch and its delivery report are read, and its message's status change is told to the client
    batch = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]
    report = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}/delivery_report")[1]
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import StatusChange
    from sms_gateway.logic.notify import dlr_notification

    [message] = gateway().store.list_messages(account["account_id"], int(sent["reference_id"]))[0]
    told = dlr_notification(StatusChange(message=message.model_copy(update={"delivery_report": "yes"}), changed=True))
    # Then each carries it back, as the docs say, beside session_id and ref_id
    assert (batch["sent_date"], batch["session_id"], batch["ref_id"]) == (sent_date, "s-1", "r-1")
    assert [entry["sent_date"] for entry in report["data"]] == [sent_date]
    assert told is not None and told["payload"]["sent_date"] == sent_date


def test_a_batch_read_gives_back_seed_3_s_body_and_to_in_the_9bits_envelope(aws, account, api):
    # Given a send to a group and a number the group also holds (seed 3 lists `body` and `to` in its schema)
    group_id = create_group(api, account["token"], [AIRTEL, MTN])
    status, sent = send(api, account["token"], [MTN, group_id])
    assert status == 200, sent
    # When the batch and its delivery reports are read
    status, batch = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")
    report = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}/delivery_report")[1]
    # Then the batch gives back its text and the numbers its messages go to, and both answers carry status_code
    # and message as every other 9bits answer does (until 2026-12-06 they had neither, nor `body` or `to`)
    assert status == 200, batch
    assert (batch["status_code"], batch["message"], batch["body"]) == (200, "ok", "Hello Buddy")
    assert sorted(batch["to"]) == sorted([AIRTEL, MTN]) == sorted(entry["to"] for entry in report["data"])
    assert (report["status_code"], report["message"]) == (200, "ok")


# ---------------------------------------------------------------- cancel


def schedule_names(env: dict[str, str]) -> list[str]:
    import boto3

    client = boto3.client("scheduler")
    return [s["Name"] for s in client.list_schedules(GroupName=env["SCHEDULE_GROUP_NAME"])["Schedules"]]


def schedule_two_an_hour_ahead(api: Api, account: dict[str, Any]) -> str:
    """Given a batch of two scheduled an hour ahead (98 credits of 100 left): its reference_id."""
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL, MTN], send_at=send_at)
    assert status == 200, sent
    assert balance(account["account_id"]) == 98
    return str(sent["reference_id"])


def test_cancelling_a_scheduled_batch_deletes_its_schedule_cancels_its_messages_and_refunds(aws, account, api):
    reference_id = schedule_two_an_hour_ahead(api, account)
    assert len(schedule_names(aws)) == 1
    # When it is cancelled
    status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then the answer says so with the credits refunded
    assert status == 200, body
    assert (body["status_code"], body["status"], body["refunded_credits"], body["balance"]) == (
        200,
        "cancelled",
        2,
        100,
    )
    # And the schedule is gone, the messages are cancelled, the credits are back
    assert schedule_names(aws) == []
    status, report = call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}/delivery_report")
    assert {entry["status"] for entry in report["data"]} == {"cancelled"}
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")[1]["status"] == "cancelled"
    assert balance(account["account_id"]) == 100
    # And a second cancel (a client that did not get the first answer) says the same and refunds nothing more
    status, again = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    assert (status, again["status_code"], again["status"], again["refunded_credits"]) == (200, 200, "cancelled", 0)
    assert balance(account["account_id"]) == 100


def test_the_cancel_answer_shows_the_balance_after_its_refund(aws, account, api, monkeypatch):
    from tests.stored_accounts import account_reads_lag

    # Given a batch scheduled for two credits (98 of 100 left), and reads of the account that lag behind
    reference_id = schedule_two_an_hour_ahead(api, account)
    account_reads_lag(monkeypatch, account["account_id"])
    # When it is cancelled
    status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then the answer's balance has the refund in it (it was read eventually consistent: maybe the one before)
    assert status == 200, body
    assert (body["refunded_credits"], body["balance"]) == (2, 100)


@pytest.mark.parametrize(
    ("written", "scheduled_for"),
    [
        ("{day}T10:00:00", "{day}T09:00:00.000000Z"),
        ("{day}T10:00", "{day}T09:00:00.000000Z"),
        ("{day}", "{eve}T23:00:00.000000Z"),
        ("{day}T10:00:00+03:00", "{day}T07:00:00.000000Z"),
        # ISO 8601's basic form, digits alone: a date, as the other dialects read it, not Unix time (which would be
        # 1970 or, as milliseconds, 1976: in the past, so sent at once and beyond a cancel)
        ("{digits}", "{eve}T23:00:00.000000Z"),
        ("{digits}1000", "{day}T09:00:00.000000Z"),
        ("{digits}100000", "{day}T09:00:00.000000Z"),
    ],
    ids=["no-offset", "no-seconds", "date-only", "with-offset", "yyyyMMdd", "yyyyMMddHHmm", "yyyyMMddHHmmss"],
)
def test_a_send_at_without_an_offset_is_read_in_the_account_s_time_zone(aws, account, api, written, scheduled_for):
    # Given a send_at two days ahead written as a wall-clock time or a date, for an account in Africa/Lagos (UTC+1)
    day = datetime.now(UTC).date() + timedelta(days=2)
    dates = {"day": day.isoformat(), "eve": (day - timedelta(days=1)).isoformat(), "digits": f"{day:%Y%m%d}"}
    # When the batch is sent
    status, sent = send(api, account["token"], [AIRTEL], send_at=written.format(**dates))
    # Then it is scheduled for that time in Lagos
    assert status == 200, sent
    batch = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]
    assert (batch["status"], batch["send_at"]) == ("scheduled", scheduled_for.format(**dates))


@pytest.mark.parametrize(
    ("written", "scheduled_for"),
    [
        ("{digits}", "{eve}T23:00:00.000000Z"),
        ("{digits}1000", "{day}T09:00:00.000000Z"),
        ("{digits}100000", "{day}T09:00:00.000000Z"),
    ],
    ids=["yyyyMMdd", "yyyyMMddHHmm", "yyyyMMddHHmmss"],
)
@pytest.mark.parametrize("number", [int, float], ids=["int", "whole-float"])
def test_a_send_at_in_the_basic_form_as_a_json_number_is_the_same_date(
    aws, account, api, written, scheduled_for, number
):
    # Given a send_at two days ahead in ISO 8601's basic form, written as a JSON number (a PHP client's int, or a
    # JavaScript client's 20261208.0): it was read as Unix time (1970, or 1976 as milliseconds), so the batch was
    # sent at once, charged and beyond a cancel
    day = datetime.now(UTC).date() + timedelta(days=2)
    dates = {"day": day.isoformat(), "eve": (day - timedelta(days=1)).isoformat(), "digits": f"{day:%Y%m%d}"}
    # When the batch is sent
    status, sent = send(api, account["token"], [AIRTEL], send_at=number(written.format(**dates)))
    # Then it is scheduled for that time in Lagos, as the same digits in a string are
    assert status == 200, sent
    batch = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]
    assert (batch["status"], batch["send_at"]) == ("scheduled", scheduled_for.format(**dates))
    assert queued_records(aws) == []


def test_a_send_at_number_in_the_basic_form_naming_no_date_is_refused(aws, account, api):
    # When a batch is sent with a send_at of 8 digits that name no date (as the string "20261332" is refused)
    status, body = send(api, account["token"], [AIRTEL], send_at=20261332)
    # Then it is refused, saying why, and nothing is sent or charged
    assert status == 400, body
    assert "no such date or time" in body["message"]
    assert queued_records(aws) == [] and schedule_names(aws) == []
    assert stored_batches(account["account_id"]) == []


@pytest.mark.parametrize("unit", [1, 1000], ids=["seconds", "milliseconds"])
@pytest.mark.parametrize("written", [str, int], ids=["string", "number"])
def test_a_send_at_of_other_digits_is_unix_time(aws, account, api, unit, written):
    # Given a moment two days ahead written as a Unix time in seconds (10 digits) or milliseconds (13)
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    # When the batch is sent with it
    status, sent = send(api, account["token"], [AIRTEL], send_at=written(int(at.timestamp()) * unit))
    # Then it is scheduled for that moment
    assert status == 200, sent
    batch = call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]
    assert (batch["status"], batch["send_at"]) == ("scheduled", at.strftime("%Y-%m-%dT%H:%M:%S.000000Z"))


def test_a_send_at_less_than_a_minute_ahead_is_not_sent_before_it(aws, account, api):
    # When a batch is sent with a send_at 45 seconds ahead ("at 10:00:00 sharp", posted at 09:59:15)
    send_at = (datetime.now(UTC) + timedelta(seconds=45)).isoformat()
    status, sent = send(api, account["token"], [AIRTEL], send_at=send_at)
    # Then nothing is handed to a dispatcher before that time (seed 3: "If set in the future, the message will be
    # delayed until send_at occurs")
    assert status == 200, sent
    assert queued_records(aws) == []
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]["status"] == "scheduled"


@pytest.mark.parametrize("send_at", ["", "  "], ids=["empty", "blank"])
def test_an_empty_send_at_sends_now_as_in_the_other_dialects(aws, account, api, send_at):
    # When a batch is sent with send_at "" (a PHP client's unset field; shortcode and session-key read it as now)
    status, sent = send(api, account["token"], [AIRTEL], send_at=send_at)
    # Then it is sent now
    assert status == 200, sent
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]["status"] == "queued"
    assert len(queued_records(aws)) == 1 and schedule_names(aws) == []


@pytest.mark.parametrize("send_at", ["0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00", "1970-01-01"])
def test_a_send_at_long_past_sends_now(aws, account, api, send_at):
    # When a batch is sent with a send_at at the start of the calendar
    status, sent = send(api, account["token"], [AIRTEL], send_at=send_at)
    # Then it is sent now, like any send_at in the past
    assert status == 200, sent
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{sent['reference_id']}")[1]["status"] == "queued"
    assert len(queued_records(aws)) == 1 and schedule_names(aws) == []


def test_cancelling_a_queued_batch_is_a_409_and_changes_nothing(aws, account, api):
    # Given a batch sent now
    status, sent = send(api, account["token"], [AIRTEL])
    reference_id = sent["reference_id"]
    # When it is cancelled
    status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then it is refused in the 9bits shape, saying why
    assert (status, body["status_code"]) == (409, 409)
    assert "only a scheduled batch can be cancelled" in body["message"]
    # And nothing changed: still queued, still charged, its dispatch record still on the queue
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")[1]["status"] == "queued"
    assert balance(account["account_id"]) == 99
    assert len(queued_records(aws)) == 1


def test_another_account_cannot_cancel_a_batch(aws, account, other_account, api):
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    reference_id = send(api, account["token"], [AIRTEL], send_at=send_at)[1]["reference_id"]
    assert call(api, other_account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")[0] == 404
    assert len(schedule_names(aws)) == 1
    assert balance(account["account_id"]) == 99


def all_records(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every record in the dispatch queue (received, so invisible to later reads)."""
    import boto3

    sqs = boto3.client("sqs")
    records: list[dict[str, Any]] = []
    while True:
        answer = sqs.receive_message(QueueUrl=env["DISPATCH_QUEUE_URL"], MaxNumberOfMessages=10, VisibilityTimeout=300)
        page = answer.get("Messages", [])
        if not page:
            return records
        records.extend(page)


def test_a_retried_release_after_sqs_refused_one_record_queues_every_message(aws, api, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey, utc_now
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Bulk Club", senders=["48974"], credits=1000)
    # Given a scheduled batch of 150 (two dispatch records: messages 0-99 and 100-149)
    numbers = [f"23480300{i:05d}" for i in range(150)]
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, sent = send(api, account["token"], numbers, send_at=send_at)
    assert (status, sent["recipients_processed"]) == (200, 150), sent
    reference_id = int(sent["reference_id"])
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=reference_id)
    function = load_function("scheduled_dispatch")
    # And SQS that refuses the second record of the release's SendMessageBatch once (a partial failure)
    client = gateway().dispatch_queue.client
    real = client.send_message_batch
    refused = []

    def refuse_second_entry_once(**kwargs: Any) -> Any:
        if refused:
            return real(**kwargs)
        refused.append(True)
        entries = kwargs["Entries"]
        answer = real(**{**kwargs, "Entries": [e for e in entries if e["Id"] != "1"]})
        return {
            **answer,
            "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "try again"}],
        }

    monkeypatch.setattr(client, "send_message_batch", refuse_second_entry_once)
    # When the schedule fires: the release fails (Lambda will retry the invocation)
    with pytest.raises(RuntimeError, match="SQS refused 1 entries"):
        function.handler(event, FakeContext())
    # And meanwhile the dispatcher takes the first record and submits its second message (the first waits its retry)
    store = gateway().store
    first_ids = [reference_id + 1 + i for i in range(150)]
    store.transition(
        MessageKey(account_id=account["account_id"], reference_id=reference_id, message_id=first_ids[1]),
        MessageStatus.SUBMITTED,
        now=utc_now(),
    )
    # And Lambda retries the invocation a minute later
    function.handler(event, FakeContext())
    # Then every message still queued is in some dispatch record
    queued = {
        m.message_id
        for m in store.list_messages(account["account_id"], reference_id, limit=1000)[0]
        if m.status == MessageStatus.QUEUED
    }
    in_records = {i for r in all_records(aws) for i in json.loads(r["Body"])["message_ids"]}
    assert queued - in_records == set(), f"queued but in no dispatch record: {sorted(queued - in_records)}"


def test_a_cancel_that_fails_refunding_leaves_its_schedule_to_finish_it(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.errors import TransactionUndecided

    reference_id = schedule_two_an_hour_ahead(api, account)
    # And DynamoDB that refuses the cancel's refund transactions (a busy account's credits item: TransactionConflict
    # six times running, the adapter's limit)
    store = gateway().store

    def refund_fails(*args: Any, **kwargs: Any) -> Any:
        raise TransactionUndecided("moving 2 messages and refunding them conflicted 6 times")

    with monkeypatch.context() as patched:
        patched.setattr(store, "move_and_refund", refund_fails)
        # When the client cancels: the answer is a 503 that tells it to send the cancel again (until 2026-12-07 a 500
        # that told it to look before trying again)
        status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    assert status == 503, body
    # And the batch reads cancelled already
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")[1]["status"] == "cancelled"
    # And the client does not send the cancel again (test_transaction_conflicts.py has the retry that finishes it)
    # Then its schedule is still there (deleted only once the refund is done), and its firing finishes the cancel
    assert schedule_names(aws) != [], "schedule deleted first: the messages stay scheduled and charged for good"
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(reference_id))
    assert load_function("scheduled_dispatch").handler(event, FakeContext()) == {"released": False}
    assert balance(account["account_id"]) == 100
    assert {entry["to"]: entry["status"] for entry in report_entries(api, account["token"], reference_id)} == {
        AIRTEL: "cancelled",
        MTN: "cancelled",
    }


@pytest.mark.parametrize("dialect", ["9bits", "session-key"])
def test_a_cancel_whose_schedule_cannot_be_deleted_still_answers_that_it_cancelled(
    aws, account, api, dialect, monkeypatch, caplog
):
    from botocore.exceptions import ClientError

    from sms_gateway.bootstrap import gateway
    from tests.integration.test_session_key_dialect import answer, log_in, route_event

    reference_id = schedule_two_an_hour_ahead(api, account)
    # And EventBridge Scheduler that refuses the schedule's deletion (throttled past botocore's retries)
    scheduler = gateway().scheduler

    def delete_refused(*args: Any, **kwargs: Any) -> bool:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "DeleteSchedule")

    monkeypatch.setattr(scheduler, "cancel", delete_refused)
    # When the client cancels it
    if dialect == "9bits":
        status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    else:
        response = api(route_event("DELETE", f"/sms/{reference_id}", log_in(api, account)))
        status, body = response["statusCode"], answer(response)
    # Then the batch is cancelled and refunded ...
    assert balance(account["account_id"]) == 100
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")[1]["status"] == "cancelled"
    # ... and the answer says so (not a 500 the client reads as "not cancelled", whose retry then answers 404 in the
    # session-key family: "order cannot be removed")
    assert status == 200, body
    # And the operator is told which schedule was left
    [left] = [r for r in caplog.records if "schedule could not be deleted" in r.getMessage()]
    assert vars(left)["schedule"].endswith(f"/batch-{account['account_id']}-{reference_id}")
    # And when the schedule left behind fires, it releases nothing and refunds nothing more
    assert len(schedule_names(aws)) == 1
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(reference_id))
    assert load_function("scheduled_dispatch").handler(event, FakeContext()) == {"released": False}
    assert queued_records(aws) == []
    assert balance(account["account_id"]) == 100
    assert {entry["to"]: entry["status"] for entry in report_entries(api, account["token"], reference_id)} == {
        AIRTEL: "cancelled",
        MTN: "cancelled",
    }


def test_cancelling_a_delivered_batch_names_the_status_the_batch_reads(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey, utc_now
    from sms_gateway.domain.status import MessageStatus

    # Given a batch sent now, long since delivered: it reads "completed"
    status, sent = send(api, account["token"], [AIRTEL])
    reference_id = int(sent["reference_id"])
    key = MessageKey(account_id=account["account_id"], reference_id=reference_id, message_id=reference_id + 1)
    gateway().store.transition(key, MessageStatus.DELIVERED, now=utc_now())
    status, batch = call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")
    assert batch["status"] == "completed"
    # When the client tries to cancel it
    status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then the 409 says why with the status the client can see, not "this one is queued" (still waiting to go)
    assert status == 409
    assert body["message"] == "only a scheduled batch can be cancelled; this one is completed", body


# ---------------------------------------------------------------- delivery report filter


def test_the_delivery_report_status_filter_pages_through_matches_only(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey, utc_now
    from sms_gateway.domain.status import MessageStatus

    # Given a batch of five, the middle three of whose messages were submitted
    numbers = [f"23480300000{i:02d}" for i in range(5)]
    reference_id = send(api, account["token"], numbers)[1]["reference_id"]
    store = gateway().store
    messages, _ = store.list_messages(account["account_id"], int(reference_id), limit=10)
    for message in messages[1:4]:
        key = MessageKey(
            account_id=account["account_id"], reference_id=int(reference_id), message_id=message.message_id
        )
        assert store.transition(key, MessageStatus.SUBMITTED, now=utc_now())
    path = f"/ng/v1/batches/{reference_id}/delivery_report"
    # When the submitted ones are read two per page
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"status": "submitted", "page_size": "2", **({"next": cursor} if cursor else {})}
        status, page = call(api, account["token"], "GET", path, **query)
        assert status == 200, page
        seen += [entry["to"] for entry in page["data"]]
        assert {entry["status"] for entry in page["data"]} <= {"submitted"}
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    # Then exactly those three come back, each once, and the first page is full
    assert seen == numbers[1:4]
    assert pages == 2
    # And the other filters and an unfiltered read agree
    assert len(call(api, account["token"], "GET", path, status="queued")[1]["data"]) == 2
    assert call(api, account["token"], "GET", path, status="delivered")[1] == {
        "status_code": 200,
        "message": "ok",
        "reference_id": reference_id,
        "data": [],
        "next": None,
    }
    assert len(call(api, account["token"], "GET", path)[1]["data"]) == 5


def test_a_status_filtered_page_of_an_ordinary_batch_holds_its_match_not_an_empty_page(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.domain.status import MessageStatus

    # Given a batch of 30 (far from "a very large batch": a send takes 1000), whose last message failed
    numbers = [f"23480300000{i:02d}" for i in range(30)]
    status, sent = send(api, account["token"], numbers)
    assert status == 200, sent
    store = gateway().store
    messages, _ = store.list_messages(account["account_id"], int(sent["reference_id"]), limit=100)
    assert store.transition(messages[-1].key, MessageStatus.FAILED, now=utc_now())
    # When its failed messages are read one per page, as a client checking for failures does
    status, page = call(
        api,
        account["token"],
        "GET",
        f"/ng/v1/batches/{sent['reference_id']}/delivery_report",
        status="failed",
        page_size="1",
    )
    # Then the first page holds the failed message. Until now each filtered read took only page_size + 1 messages
    # (10 reads: 20 of the 30), so the page came back empty with a `next`, and a client that stops at an empty page
    # (`while data:`) never saw the failure; the inbox's number filter reads at least 100 a round for this reason
    assert status == 200, page
    assert [entry["to"] for entry in page["data"]] == [numbers[-1]]


def test_an_unknown_delivery_report_status_is_a_400(aws, account, api):
    reference_id = send(api, account["token"], [AIRTEL])[1]["reference_id"]
    status, body = call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}/delivery_report", status="sent")
    assert (status, body["status_code"]) == (400, 400)
    assert "status must be one of" in body["message"]
    assert "delivered" in body["message"]


def test_a_cancel_right_after_a_scheduled_send_cancels_and_refunds_every_message(aws, account, api, monkeypatch):
    from tests.stored_accounts import batch_message_reads_lag

    # Given a batch of two scheduled an hour ahead (98 of 100 credits left), whose messages a lagging replica has not
    # got yet (the client cancels at once: an "undo" right after "send")
    reference_id = schedule_two_an_hour_ahead(api, account)
    batch_message_reads_lag(monkeypatch, account["account_id"], int(reference_id))
    # When it is cancelled
    status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then both messages are cancelled and refunded, as once the replica caught up
    assert status == 200, body
    assert (body["refunded_credits"], body["balance"]) == (2, 100)
    monkeypatch.undo()
    assert {entry["status"] for entry in report_entries(api, account["token"], reference_id)} == {"cancelled"}
    assert balance(account["account_id"]) == 100


def test_a_batch_being_released_reads_queued_until_a_message_moves_on(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway.logic.batches import ONLY_SCHEDULED

    # Given a batch of two scheduled an hour ahead, whose schedule fired: the release has moved the batch
    # (logic.scheduled.release_scheduled_batch moves it first, then each message, one write at a time)
    reference_id = schedule_two_an_hour_ahead(api, account)
    assert gateway().store.set_batch_status(
        account["account_id"], int(reference_id), MessageStatus.QUEUED, only_from=ONLY_SCHEDULED
    )
    # When the client reads it, and tries to cancel it, before the release got to its messages
    status, batch = call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")
    cancel_status, cancel = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then it reads as docs/dialects/9bits.md says a released batch reads until a message moves: `queued`, as it
    # will once the release queued both (not `processing`, which a later read would step back from)
    assert status == 200, batch
    assert batch["status"] == "queued", batch
    assert (cancel_status, cancel["message"]) == (409, "only a scheduled batch can be cancelled; this one is queued")
    # And the cancel changed nothing: the release goes on with both messages, charged
    assert call(api, account["token"], "GET", f"/ng/v1/batches/{reference_id}")[1]["counts"] == {"scheduled": 2}
    assert balance(account["account_id"]) == 98


def test_a_send_refused_for_invalid_numbers_names_each_of_them(aws, account, api):
    # Given a list of one valid number and a dozen mistyped ones (a spreadsheet column cut short)
    invalid = [f"23480{i:02d}" for i in range(12)]
    # When it is sent
    status, body = send(api, account["token"], [AIRTEL, *invalid])
    # Then it is refused, changing nothing, and every invalid number is named with its reason
    # (docs/dialects/9bits.md, errors: "an invalid number (each listed with its reason)")
    assert status == 400, body
    assert stored_batches(account["account_id"]) == []
    # in `invalid`, as the dry run lists them; the message stays short, naming the first ten
    assert body["invalid_count"] == 12, body
    assert [entry["to"] for entry in body["invalid"]] == invalid, body
    assert all(entry["reason"] for entry in body["invalid"]), body
    assert body["message"].endswith("(and 2 more)"), body["message"]


def test_a_request_level_error_does_not_blame_the_body_field_the_client_wrote_right(aws, account, api):
    token = account["token"]
    # Given seed 3's own sample request (text in `content`) with a callback_url but no delivery_report: yes
    payload = {"from": "48974", "to": [AIRTEL], "content": "Hi", "callback_url": "https://client.example/dlr"}
    # When it is sent
    status, body = call(api, token, "POST", "/ng/v1/sendsms", payload)
    # Then it is a 400 that stores and charges nothing
    assert status == 400, body
    assert stored_batches(account["account_id"]) == []
    assert balance(account["account_id"]) == 100
    # And the message names what is wrong (callback_url / delivery_report), not `body`: in seed 3 `body` is the
    # message text, which this client did not even send (it reads "body: Value error, 'callback_url' ...")
    assert "callback_url" in body["message"], body
    assert not body["message"].startswith("body:"), body
    # Nor is `body` blamed when the text given in `content` is blank
    status, blank = call(api, token, "POST", "/ng/v1/sendsms", {"from": "48974", "to": [AIRTEL], "content": "  "})
    assert status == 400, blank
    assert not blank["message"].startswith("body:"), blank


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_the_dry_run_path_asked_with_another_method_is_a_405(aws, account, api, method):
    # Given the dry run path, which the API serves for POST only (docs/dialects/9bits.md, "Dry run")
    # When a client asks it with another method (GET, as for a quote it thinks it reads)
    response = api(request(account["token"], method, "/ng/v1/batches/dry_run"))
    body = json.loads(response["body"])
    # Then it is the 405 that docs/dialects/9bits.md promises for "a path the API serves, asked with a method it does
    # not take", with `Allow: POST`, not a 404 "no batch with reference_id 'dry_run'"
    assert response["statusCode"] == 405, body
    assert response["headers"].get("Allow") == "POST", response["headers"]
    assert body["status_code"] == 405, body


def test_the_dry_run_path_asked_with_another_method_is_a_405_before_credentials_are_looked_at(aws, account, api):
    # Given no valid credentials
    # When the dry run path is asked with GET, as any path with a method it does not take
    response = api(request("not-a-token", "GET", "/ng/v1/batches/dry_run"))
    body = json.loads(response["body"])
    # Then it is the same 405 with Allow an unknown method of a served path gets (not a 401), naming what it takes
    assert (response["statusCode"], response["headers"].get("Allow")) == (405, "POST"), body
    assert body["message"] == "/ng/v1/batches/dry_run does not take GET: use POST", body
    put = api(request("not-a-token", "PUT", "/ng/v1/batches/dry_run"))
    assert (put["statusCode"], put["headers"].get("Allow")) == (405, "POST"), put


def test_the_delivery_report_names_the_batch_by_its_reference_id_however_the_path_wrote_it(aws, account, api):
    token = account["token"]
    # Given a sent batch
    status, sent = send(api, token, [AIRTEL])
    assert status == 200, sent
    reference_id = sent["reference_id"]
    # When its delivery report is read under a path that writes the id with a leading zero (which the gateway takes
    # for the same batch, as the batch read and the cancel do)
    status, report = call(api, token, "GET", f"/ng/v1/batches/0{reference_id}/delivery_report")
    assert status == 200, report
    # Then the listing names the batch as the send answered it and as each entry names it, as the batch read does
    assert [entry["reference_id"] for entry in report["data"]] == [reference_id]
    assert call(api, token, "GET", f"/ng/v1/batches/0{reference_id}")[1]["reference_id"] == reference_id
    assert report["reference_id"] == reference_id, report


def test_a_cancel_that_wins_the_race_with_its_schedule_answers_the_credits_it_gave_back(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.status import MessageStatus

    # Given a batch of two scheduled an hour ahead (98 of 100 credits left) whose schedule fires as it is cancelled
    reference_id = schedule_two_an_hour_ahead(api, account)
    event = load_event("scheduler-release-batch.json")
    event.update(account_id=account["account_id"], reference_id=int(reference_id))
    release = load_function("scheduled_dispatch")
    store = gateway().store
    moved = store.set_batch_status
    fired: list[Any] = []

    def cancel_then_the_schedule_fires(*args: Any, **kwargs: Any) -> Any:
        changed = moved(*args, **kwargs)
        if changed and args[2] == MessageStatus.CANCELLED and not fired:
            # the schedule fires right after the cancel's batch write: it finds the batch cancelled, releases nothing
            # and finishes the cancel itself (logic.scheduled), before the cancel request gets to its messages
            fired.append(release.handler(event, FakeContext()))
        return changed

    monkeypatch.setattr(store, "set_batch_status", cancel_then_the_schedule_fires)
    # When the client cancels it (its one and only cancel)
    status, body = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then the cancel won: nothing released, both messages cancelled, the 2 credits back
    assert fired == [{"released": False}]
    assert status == 200, body
    assert balance(account["account_id"]) == 100
    assert {entry["status"] for entry in report_entries(api, account["token"], reference_id)} == {"cancelled"}
    # And the answer says what this cancel gave back, as docs/dialects/9bits.md shows it (`refunded_credits`: 2, with
    # the balance that includes them), not 0, which reads as "nothing was refunded" beside a balance that rose by 2
    assert (body["refunded_credits"], body["balance"]) == (2, 100), body


def test_two_cancels_of_one_batch_racing_answer_its_refund_once(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.status import MessageStatus

    # Given a batch of two scheduled an hour ahead (98 of 100 credits left), and a client that sends its cancel twice
    # (a retry on a slow answer): the second comes in right after the first's batch write, before its messages
    reference_id = schedule_two_an_hour_ahead(api, account)
    store = gateway().store
    moved = store.set_batch_status
    second: list[tuple[int, dict[str, Any]]] = []

    def cancelled_then_cancelled_again(*args: Any, **kwargs: Any) -> Any:
        changed = moved(*args, **kwargs)
        if changed and args[2] == MessageStatus.CANCELLED and not second:
            second.append(call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}"))
        return changed

    monkeypatch.setattr(store, "set_batch_status", cancelled_then_cancelled_again)
    # When the first goes on
    status, first = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    # Then both answer 200 cancelled, and the credits came back once
    [(again_status, again)] = second
    assert (status, again_status) == (200, 200), (first, again)
    assert first["status"] == again["status"] == "cancelled"
    assert balance(account["account_id"]) == 100
    # And only one of them says so: the two answers together name the 2 credits that came back, not 4
    assert sorted([first["refunded_credits"], again["refunded_credits"]]) == [0, 2], (first, again)
    # And a later repeat refunds and answers nothing more
    monkeypatch.undo()
    status, repeat = call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
    assert (status, repeat["refunded_credits"], repeat["balance"]) == (200, 0, 100), repeat


def test_a_send_naming_a_group_deleted_while_it_is_read_is_refused_not_sent_without_the_group(
    aws, account, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway

    token = account["token"]
    group_id = create_group(api, token, [AIRTEL, MTN])
    store, number = gateway().store, int(group_id.removeprefix("grp_"))
    # Given the group deleted by another request between the send's read of its summary and of its members item
    changed_between_reads(monkeypatch, lambda: store.delete_group(account["account_id"], number), 1)
    # When a send names the group and another number
    status, body = send(api, token, [group_id, GLO])
    # Then the send is either before the delete (both members and GLO) or after it (400 unknown group id), never a
    # third outcome: accepted for GLO alone, the group read as one with no members, though it never was
    assert (status, body.get("recipients_processed")) in {(200, 3), (400, None)}, body
    # And the same holds for a read of the group: gone (404), not answered as an empty group
    group_id = create_group(api, token, [AIRTEL, MTN])
    number = int(group_id.removeprefix("grp_"))
    changed_between_reads(monkeypatch, lambda: store.delete_group(account["account_id"], number), 1)
    status, read = call(api, token, "GET", f"/ng/v1/groups/{group_id}")
    assert (status, read.get("member_count")) in {(200, 2), (404, None)}, read


def test_a_member_change_that_keeps_meeting_concurrent_writes_answers_409_and_changes_nothing(
    aws, account, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway

    token = account["token"]
    group_id = create_group(api, token, [AIRTEL])
    client = gateway().store.client

    def busy(**request: Any) -> Any:
        # Other member changes of the group in flight on every attempt: DynamoDB cancels with TransactionConflict
        reasons = [{"Code": "None"}] * (len(request["TransactItems"]) - 1) + [{"Code": "TransactionConflict"}]
        raise client.exceptions.TransactionCanceledException(
            {
                "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                "CancellationReasons": reasons,
            },
            "TransactWriteItems",
        )

    # Given a group that many requests change at once (a client adding a list in parallel chunks)
    monkeypatch.setattr(client, "transact_write_items", busy)
    # When an addition keeps losing to the others
    status, body = call(api, token, "POST", f"/ng/v1/groups/{group_id}/members", {"members": [MTN]})
    # Then it answers as docs/dialects/9bits.md says one that keeps losing the race answers: 409, retry; not the
    # 500 "it may have been done in part" (counted in RequestsFailed, the api's error-rate alarm), nothing was written
    assert (status, body["status_code"]) == (409, 409), body
    # And a delete meeting the same answers a retryable 409 or 503, not 500
    status, body = call(api, token, "DELETE", f"/ng/v1/groups/{group_id}")
    assert status in (409, 503), body
    monkeypatch.undo()
    assert call(api, token, "GET", f"/ng/v1/groups/{group_id}")[1]["members"] == [AIRTEL]


def test_a_send_whose_body_starts_with_a_utf8_bom_is_read_as_its_json(aws, account, api):
    # Given a send as Windows tools write its body: with a byte order mark before the JSON (PowerShell's Out-File,
    # .NET's Encoding.UTF8), which RFC 8259 section 8.1 lets a parser ignore
    event = request(account["token"], "POST", "/ng/v1/sendsms")
    event["body"] = "\ufeff" + json.dumps({"from": "48974", "to": [AIRTEL], "body": "Hello Buddy"})
    # When it is posted
    response = api(event)
    # Then it is sent, as the same body without the mark is
    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["recipients_processed"] == 1


@pytest.mark.parametrize("dialect", ["9bits", "session-key"])
def test_a_cancel_killed_once_done_before_it_answered_is_answered_as_done_by_its_retry(aws, account, api, dialect):
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_idempotency_and_credits import Killed, die_once
    from tests.integration.test_session_key_dialect import answer, log_in, route_event

    # Given a batch of two scheduled an hour ahead (98 of 100 credits left), whose cancel's Lambda is killed (timeout,
    # memory) once the cancel is done (batch and messages cancelled, credits back, schedule deleted), before it
    # claimed the batch's cancel answer: the client got no answer
    reference_id = schedule_two_an_hour_ahead(api, account)
    keys = log_in(api, account) if dialect == "session-key" else None

    def cancel() -> tuple[int, dict[str, Any]]:
        if keys is None:
            return call(api, account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
        response = api(route_event("DELETE", f"/sms/{reference_id}", keys))
        return response["statusCode"], answer(response)

    with pytest.MonkeyPatch.context() as killed:
        die_once(killed, gateway().store, "claim_cancel_answer")
        with pytest.raises(Killed):
            cancel()
    assert balance(account["account_id"]) == 100
    assert schedule_names(aws) == []
    # When the client sends its cancel again
    status, body = cancel()
    # Then it is told what the cancel did: cancelled, with the 2 credits it gave back (not "nothing refunded", nor
    # the session-key family's 404 "order cannot be removed", for an order it removed)
    assert status == 200, body
    if keys is None:
        assert (body["status"], body["refunded_credits"], body["balance"]) == ("cancelled", 2, 100), body
    else:
        assert body == {"result": "OK"}
    # And nothing moved twice, and a later repeat answers nothing more
    assert balance(account["account_id"]) == 100
    if keys is None:
        assert cancel()[1]["refunded_credits"] == 0


def keyed_cancel(api: Api, account: dict[str, Any], dialect: str) -> Callable[..., tuple[int, dict[str, Any]]]:
    """The dialect's cancel of a batch (9bits `DELETE /ng/v1/batches/{reference_id}`, session-key
    `DELETE /sms/{order_id}`), sent under `key` (an Idempotency-Key header) when one is given."""
    from tests.integration.test_session_key_dialect import log_in, route_event

    keys = log_in(api, account) if dialect == "session-key" else None

    def cancel(reference_id: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
        if keys is None:
            event = request(account["token"], "DELETE", f"/ng/v1/batches/{reference_id}")
        else:
            event = route_event("DELETE", f"/sms/{reference_id}", keys)
        if key is not None:
            event["headers"]["idempotency-key"] = key
        response = api(event)
        return response["statusCode"], json.loads(response["body"])

    return cancel


REFUNDED_TWO = {"9bits": ("cancelled", 2, 100), "session-key": {"result": "OK"}}


def cancel_answer(dialect: str, body: dict[str, Any]) -> Any:
    """What a cancel's answer says of the refund: the 9bits status, credits refunded and balance; the session-key
    family's whole body."""
    return (body["status"], body["refunded_credits"], body["balance"]) if dialect == "9bits" else body


@pytest.mark.parametrize(
    ("dialect", "resumed"),
    [
        ("9bits", False),
        ("9bits", True),
        ("session-key", False),
        ("session-key", True),
    ],
)
def test_an_unkeyed_cancel_whose_answer_claim_was_sent_again_answers_its_refund(aws, account, api, dialect, resumed):
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_idempotency_and_credits import Killed, die_once
    from tests.integration.test_refund_transactions import AnswersLost

    # Given a batch of two scheduled an hour ahead (98 of 100 credits left), cancelled without an Idempotency-Key
    # (`resumed`: by a cancel killed once it was done, before it claimed its answer, then by the client's retry)
    reference_id = schedule_two_an_hour_ahead(api, account)
    cancel = keyed_cancel(api, account, dialect)
    store = gateway().store
    if resumed:
        with pytest.MonkeyPatch.context() as killed:
            die_once(killed, store, "claim_cancel_answer")
            with pytest.raises(Killed):
                cancel(reference_id)
    # When that cancel's write claiming its answer reaches DynamoDB and then loses its answer on the wire (botocore
    # sends it again)
    real_claim = store.claim_cancel_answer
    lost: list[AnswersLost] = []

    def claim_whose_answer_is_lost(*args: Any, **kwargs: Any) -> Any:
        if not lost:
            lost.append(AnswersLost(store.client, of="UpdateItem"))
        return real_claim(*args, **kwargs)

    with pytest.MonkeyPatch.context() as lossy:
        lossy.setattr(store, "claim_cancel_answer", claim_whose_answer_is_lost)
        status, body = cancel(reference_id)
    assert lost[0].sent >= 2
    # Then the cancel answers the 2 credits it gave back (not "0 refunded", nor the session-key family's 404 "order
    # cannot be removed", for an order it removed)
    assert (status, cancel_answer(dialect, body)) == (200, REFUNDED_TWO[dialect]), body
    assert balance(account["account_id"]) == 100
    # And a repeat, the answer given, refunds nothing more
    if dialect == "9bits":
        assert cancel(reference_id)[1]["refunded_credits"] == 0


@pytest.mark.parametrize("dialect", ["9bits", "session-key"])
def test_a_keyed_cancel_whose_answer_was_lost_is_answered_the_same_refund_by_its_retry(aws, account, api, dialect):
    # Given a batch of two scheduled an hour ahead (98 of 100 credits left), cancelled under an Idempotency-Key: the
    # cancel refunded the 2 credits and answered so, but the answer was lost on its way (a reset connection)
    reference_id = schedule_two_an_hour_ahead(api, account)
    cancel = keyed_cancel(api, account, dialect)
    status, first = cancel(reference_id, key="cancel-1")
    assert (status, cancel_answer(dialect, first)) == (200, REFUNDED_TWO[dialect]), first
    # When the client sends the cancel again under the same key
    status, again = cancel(reference_id, key="cancel-1")
    # Then it gets the first answer again, naming the 2 credits refunded (not "0 refunded", nor the session-key
    # family's 404 "order cannot be removed", for an order it removed)
    assert (status, again) == (200, first)
    # And nothing moved twice
    assert balance(account["account_id"]) == 100


@pytest.mark.parametrize("dialect", ["9bits", "session-key"])
def test_a_keyed_cancel_killed_after_claiming_its_answer_is_answered_the_refund_by_its_retry(
    aws, account, api, dialect
):
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_idempotency_and_credits import Killed, die_once, leases_run_out

    # Given a batch of two scheduled an hour ahead, whose cancel under an Idempotency-Key is killed (timeout, memory)
    # once it claimed the batch's cancel answer, before that answer was kept under the key or sent: the client got none
    reference_id = schedule_two_an_hour_ahead(api, account)
    cancel = keyed_cancel(api, account, dialect)
    with pytest.MonkeyPatch.context() as killed:
        die_once(killed, gateway().store, "claim_cancel_answer", after=True)
        with pytest.raises(Killed):
            cancel(reference_id, key="cancel-1")
    assert balance(account["account_id"]) == 100
    # When the client sends it again under its key once the dead request's lease ran out
    leases_run_out()
    status, body = cancel(reference_id, key="cancel-1")
    # Then it is told what the cancel did: cancelled, with the 2 credits it gave back
    assert (status, cancel_answer(dialect, body)) == (200, REFUNDED_TWO[dialect]), body
    # And nothing moved twice; a repeat under the key answers the same, an unkeyed one nothing more
    assert balance(account["account_id"]) == 100
    assert cancel(reference_id, key="cancel-1") == (status, body)
    status, unkeyed = cancel(reference_id)
    if dialect == "9bits":
        assert (status, unkeyed["refunded_credits"]) == (200, 0), unkeyed
    else:
        assert status == 404, unkeyed


@pytest.mark.parametrize("dialect", ["9bits", "session-key"])
def test_a_cancel_key_reused_for_another_request_is_a_409_and_changes_nothing(aws, account, api, dialect):
    from sms_gateway.bootstrap import gateway

    # Given two batches scheduled an hour ahead, the first cancelled under a key
    first = schedule_two_an_hour_ahead(api, account)
    status, sent = send(api, account["token"], [GLO], send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert status == 200, sent
    cancel = keyed_cancel(api, account, dialect)
    assert cancel(first, key="cancel-1")[0] == 200
    # When the same key is sent with the cancel of the other batch
    status, body = cancel(str(sent["reference_id"]), key="cancel-1")
    # Then it is refused as a key reused for another request, as a send's is, and the other batch is not cancelled
    assert status == 409, body
    assert "Idempotency-Key was used for a different request" in json.dumps(body)
    assert balance(account["account_id"]) == 99
    other = gateway().store.get_batch(account["account_id"], int(sent["reference_id"]))
    assert other is not None and other.status == "scheduled"


@pytest.mark.parametrize("dialect", ["9bits", "session-key"])
def test_a_keyed_cancel_that_failed_unexpectedly_is_finished_by_its_retry_at_once(aws, account, api, dialect):
    from sms_gateway.bootstrap import gateway

    # Given a batch of two scheduled an hour ahead, whose cancel under an Idempotency-Key failed unexpectedly (a
    # DynamoDB error past botocore's retries) once it had cancelled and refunded the batch, before it claimed its
    # answer: the client was answered 500, "send it again under the same Idempotency-Key"
    reference_id = schedule_two_an_hour_ahead(api, account)
    cancel = keyed_cancel(api, account, dialect)
    store = gateway().store
    with pytest.MonkeyPatch.context() as failing:
        failing.setattr(store, "claim_cancel_answer", Mock(side_effect=RuntimeError("throttled")))
        assert cancel(reference_id, key="cancel-1")[0] == 500
    assert balance(account["account_id"]) == 100
    # When the client sends it again under its key at once, as the 500 asks
    status, body = cancel(reference_id, key="cancel-1")
    # Then it is told what the cancel did, the 2 credits refunded (not a 409 "still being processed" for the 90 s of
    # a lease that no request holds: the failed one is over), and nothing moved twice
    assert (status, cancel_answer(dialect, body)) == (200, REFUNDED_TWO[dialect]), body
    assert balance(account["account_id"]) == 100
    assert cancel(reference_id, key="cancel-1") == (status, body)


def test_a_keyed_cancel_resumed_into_a_503_keeps_the_refund_its_died_request_claimed(aws, account, api):
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.bootstrap import gateway
    from sms_gateway.errors import TransactionUndecided
    from tests.integration.test_idempotency_and_credits import Killed, die_once, leases_run_out

    # Given a batch of two scheduled an hour ahead, whose cancel under an Idempotency-Key was killed once it had
    # claimed the batch's cancel answer (2 credits refunded), before the answer was kept or sent
    reference_id = schedule_two_an_hour_ahead(api, account)
    cancel = keyed_cancel(api, account, "9bits")
    with pytest.MonkeyPatch.context() as killed:
        die_once(killed, gateway().store, "claim_cancel_answer", after=True)
        with pytest.raises(Killed):
            cancel(reference_id, key="cancel-1")
    # And whose retry after the lease met DynamoDB cancelling its transactions for conflicts with the account's
    # other writes (a busy account): 503, send it again
    leases_run_out()
    with pytest.MonkeyPatch.context() as busy:
        busy.setattr(DynamoStore, "move_and_refund", Mock(side_effect=TransactionUndecided("conflicts")))
        assert cancel(reference_id, key="cancel-1")[0] == 503
    # When the client sends it again under its key
    status, body = cancel(reference_id, key="cancel-1")
    # Then it is told the 2 credits the cancel refunded (not 0: the key's claim of the answer was lost with the key)
    assert (status, cancel_answer("9bits", body)) == (200, REFUNDED_TWO["9bits"]), body
    assert balance(account["account_id"]) == 100
