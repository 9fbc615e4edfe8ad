"""Every paged listing on DynamoDB's own paging: a page that ends exactly at the listing's end carries no cursor.

Real DynamoDB answers a LastEvaluatedKey whenever a Query stops at its Limit, even when nothing follows; moto does
not. `AsDynamoDbPages` gives moto's answers that habit, so these tests see what a deployed stack's clients see: a
cursor only when there is more to read (a "more" link in the portal that led to an empty page, a client's extra
request for an empty page)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sms_gateway.adapters import dynamodb
from sms_gateway.adapters.cursors import read_page
from sms_gateway.adapters.dynamodb import DynamoStore, messages_pk
from sms_gateway.domain.groups import Group
from sms_gateway.domain.ids import MESSAGES_PER_BATCH, new_id
from sms_gateway.domain.models import StoredInbound, iso
from sms_gateway.ports import PageBudget, WebhookFailure
from tests.integration.conftest import moto_table
from tests.integration.test_dynamodb_store import NOW, new_account, new_batch


class AsDynamoDbPages:
    """A DynamoDB client whose Query answers a LastEvaluatedKey whenever it read `Limit` items, as DynamoDB does."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, **request: Any) -> dict[str, Any]:
        self.queries += 1
        projection = request.get("ProjectionExpression")
        if projection:  # read the key too, to name it in LastEvaluatedKey
            request = {**request, "ProjectionExpression": f"{projection}, pk, sk"}
        answer = dict(self._client.query(**request))
        items = answer.get("Items", [])
        if "LastEvaluatedKey" not in answer and items and answer.get("ScannedCount") == request.get("Limit"):
            answer["LastEvaluatedKey"] = {"pk": items[-1]["pk"], "sk": items[-1]["sk"]}
        if projection:
            answer["Items"] = [{k: v for k, v in item.items() if k not in ("pk", "sk")} for item in items]
        return answer


@pytest.fixture(scope="module")
def moto_store() -> Iterator[DynamoStore]:
    with moto_table("pages") as store:
        yield store


@pytest.fixture
def store(moto_store: DynamoStore) -> DynamoStore:
    return DynamoStore(moto_store.table_name, client=AsDynamoDbPages(moto_store.client))


def every_page(listing: Callable[[str | None], tuple[list[Any], str | None]]) -> list[list[Any]]:
    pages, cursor = [], None
    while True:
        page, cursor = listing(cursor)
        pages.append(page)
        if cursor is None:
            return pages
        assert len(pages) < 20, "the listing never ended"


def page_sizes(pages: list[list[Any]]) -> list[int]:
    return [len(page) for page in pages]


# ------------------------------------------------------------------------------------------- read_page itself


def test_the_fake_client_answers_a_cursor_at_the_limit_as_dynamodb_does(store: DynamoStore) -> None:
    account, _ = new_account()
    batch, messages = new_batch(account.account_id, 3)
    store.create_batch(batch, messages)
    request = {
        "TableName": store.table_name,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": messages_pk(account.account_id, batch.reference_id)}},
        "Limit": 3,
    }
    assert "LastEvaluatedKey" in store.client.query(**request)


def query_of(items: list[int], *, page_limit_bytes: int | None = None) -> Callable[..., dict[str, Any]]:
    """A Query over `items` (ints as keys) that stops at Limit like DynamoDB, or earlier at a `page_limit_bytes` cap
    of one item a byte (DynamoDB's 1 MB page)."""

    def query(**request: Any) -> dict[str, Any]:
        start = request.get("ExclusiveStartKey", {"n": -1})["n"] + 1
        read = items[start : start + min(request["Limit"], page_limit_bytes or request["Limit"])]
        answer: dict[str, Any] = {"Items": [{"n": n} for n in read], "ScannedCount": len(read)}
        if read and (len(read) == request["Limit"] or start + len(read) < len(items)):
            answer["LastEvaluatedKey"] = {"n": read[-1]}
        return answer

    return query


def numbers(items: list[dict[str, Any]]) -> list[int]:
    return [item["n"] for item in items]


def test_a_page_ending_exactly_at_the_end_has_no_cursor_and_one_short_of_it_has_one() -> None:
    exact = read_page(query_of(list(range(5))), {}, 5, load=numbers, key_of=lambda n: {"n": n})
    assert exact == ([0, 1, 2, 3, 4], None)
    more = read_page(query_of(list(range(6))), {}, 5, load=numbers, key_of=lambda n: {"n": n})
    assert more == ([0, 1, 2, 3, 4], {"n": 4})


def test_a_page_cut_short_by_dynamodbs_page_size_keeps_its_cursor() -> None:
    # DynamoDB stops at 1 MB whatever the Limit: fewer items than asked for, and more to read.
    page = read_page(query_of(list(range(10)), page_limit_bytes=3), {}, 5, load=numbers, key_of=lambda n: {"n": n})
    assert page == ([0, 1, 2], {"n": 2})


def test_a_page_ends_before_the_item_that_would_fill_it_past_its_budget_and_holds_one_however_big() -> None:
    # Given items of these sizes in bytes, and a budget of 10 bytes a page
    sizes = [1, 2, 3, 4, 5, 30, 6]
    budget = PageBudget(size_of=lambda n: sizes[n], max_bytes=10)
    query = query_of(list(range(len(sizes))))

    def page_after(cursor: dict[str, Any] | None) -> tuple[list[int], dict[str, Any] | None]:
        start = {"ExclusiveStartKey": cursor} if cursor else {}
        return read_page(query, start, 100, load=numbers, key_of=lambda n: {"n": n}, budget=budget)

    # When the listing is read page by page
    first = page_after(None)
    second = page_after(first[1])
    third = page_after(second[1])
    # Then a page ends where the next item would fill it past the budget, its cursor at its last item; an item bigger
    # than the budget is a page of its own, never a page of none
    assert [first, second, third] == [([0, 1, 2, 3], {"n": 3}), ([4], {"n": 4}), ([5], {"n": 5})]
    assert page_after(third[1]) == ([6], None)


def test_a_filtered_page_reads_on_and_ends_at_its_last_kept_item() -> None:
    def evens(items: list[dict[str, Any]]) -> list[int]:
        return [n for n in numbers(items) if n % 2 == 0]

    query = query_of(list(range(30)))
    first, cursor = read_page(query, {}, 4, load=evens, key_of=lambda n: {"n": n}, rounds=10)
    assert (first, cursor) == ([0, 2, 4, 6], {"n": 6})
    rest, end = read_page(query, {"ExclusiveStartKey": cursor}, 100, load=evens, key_of=lambda n: {"n": n}, rounds=10)
    assert rest == list(range(8, 30, 2)) and end is None


def test_a_filter_that_runs_out_of_reads_answers_a_short_page_with_a_cursor() -> None:
    page, cursor = read_page(
        query_of(list(range(100))), {}, 5, load=lambda items: [], key_of=lambda n: {"n": n}, rounds=3
    )
    assert page == [] and cursor == {"n": 17}  # three reads of six


def test_a_status_filter_reads_a_whole_batch_within_its_rounds_so_no_page_is_empty_with_a_cursor() -> None:
    # Given the largest batch, whose only match is its last message, read one match per page from its start
    batch = query_of(list(range(MESSAGES_PER_BATCH)))
    last = MESSAGES_PER_BATCH - 1
    bounds = {"rounds": dynamodb._MAX_FILTER_ROUNDS, "read_size": dynamodb._FILTER_READ_SIZE}

    def only(wanted: int | None) -> Callable[[list[dict[str, Any]]], list[int]]:
        return lambda items: [n for n in numbers(items) if n == wanted]

    # Then the page holds the match and is the last one; with no match at all, the page is empty and the last one
    # (reads of page_size + 1 a round stopped at 20 messages: an empty page with a cursor, and a client that stops
    # at an empty page missed the match)
    assert read_page(batch, {}, 1, load=only(last), key_of=lambda n: {"n": n}, **bounds) == ([last], None)
    assert read_page(batch, {}, 1, load=only(None), key_of=lambda n: {"n": n}, **bounds) == ([], None)


# ------------------------------------------------------------------------------------------- each listing


@pytest.mark.parametrize(("count", "sizes"), [(4, [4]), (5, [4, 1]), (8, [4, 4])])
def test_a_batchs_messages(store: DynamoStore, count: int, sizes: list[int]) -> None:
    account, _ = new_account()
    batch, messages = new_batch(account.account_id, count)
    store.create_batch(batch, messages)

    reference_id = batch.reference_id
    pages = every_page(lambda cursor: store.list_messages(account.account_id, reference_id, limit=4, cursor=cursor))

    assert page_sizes(pages) == sizes
    assert sorted(m.message_id for page in pages for m in page) == sorted(m.message_id for m in messages)


def test_an_accounts_batches_newest_first(store: DynamoStore) -> None:
    account, _ = new_account()
    made = []
    for _ in range(6):
        batch, messages = new_batch(account.account_id, 1)
        store.create_batch(batch, messages)
        made.append(batch.reference_id)

    pages = every_page(lambda cursor: store.list_batches(account.account_id, limit=3, cursor=cursor))

    assert page_sizes(pages) == [3, 3]
    assert [b.reference_id for page in pages for b in page] == sorted(made, reverse=True)


def test_an_accounts_groups(store: DynamoStore) -> None:
    account, _ = new_account()
    for i in range(4):
        store.create_group(
            Group(
                group_id=f"grp_{new_id()}",
                account_id=account.account_id,
                name=f"group {i}",
                created_at=iso(NOW),
                updated_at=iso(NOW),
            )
        )

    pages = every_page(lambda cursor: store.list_groups(account.account_id, limit=2, cursor=cursor))

    assert page_sizes(pages) == [2, 2]
    assert len({g.group_id for page in pages for g in page}) == 4


def inbound(account_id: str, msisdn: str) -> StoredInbound:
    inbound_id = new_id()
    return StoredInbound(
        inbound_id=inbound_id,
        account_id=account_id,
        upstream="simulator",
        upstream_message_id=str(inbound_id),
        msisdn=msisdn,
        to="48974",
        text="hi",
        session_id="s",
        received_at=iso(NOW),
    )


@pytest.mark.parametrize("by_number", [False, True])
def test_an_accounts_inbox_with_and_without_a_number_filter(store: DynamoStore, by_number: bool) -> None:
    account, _ = new_account()
    for _ in range(4):
        assert store.save_inbound(inbound(account.account_id, "+2348020000001"))

    pages = every_page(
        lambda cursor: store.list_inbounds(
            account.account_id, limit=2, cursor=cursor, msisdn="+2348020000001" if by_number else None
        )
    )

    assert page_sizes(pages) == [2, 2]


def test_an_accounts_failed_notifications(store: DynamoStore) -> None:
    account, _ = new_account()
    for i in range(4):
        stored = store.save_webhook_failure(
            WebhookFailure(
                account_id=account.account_id,
                notification_id=f"dlr_{i}_1",
                kind="dlr",
                state="dead",
                attempts=6,
                last_error="client webhook answered 500",
                first_failed_at=iso(NOW),
                last_attempt_at=iso(NOW),
                notification={"kind": "dlr", "id": f"dlr_{i}_1"},
            ),
            only_from=frozenset({"retrying", "resent", "dead"}),
        )
        assert stored

    pages = every_page(lambda cursor: store.list_webhook_failures(account.account_id, limit=2, cursor=cursor))

    assert page_sizes(pages) == [2, 2]
