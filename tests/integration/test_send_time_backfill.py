"""`sms-gateway admin backfill-send-times`: the `GOES_OUT#` entries of scheduled batches made before they existed
(session 36), by which the portal's figures and its search by date find a campaign sent after the week it was made."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic import history
from tests.integration import test_admin_cli, test_portal_history
from tests.integration.test_portal_history import AIRTEL, MTN, NOW, add_batch

# Their fixtures: the admin CLI on moto, the gateway's store, an account as the store reads it.
cli = test_admin_cli.cli
store = test_portal_history.store
account = test_portal_history.account

S = MessageStatus


def as_made_before_send_time_entries(store: Any, batch: Any) -> None:
    """The batch as a build before session 36 wrote it: without its entry by send time."""
    from sms_gateway.adapters.dynamodb import account_pk
    from sms_gateway.adapters.dynamodb_history import goes_out_sk

    store.client.delete_item(
        TableName=store.table_name,
        Key={"pk": {"S": account_pk(batch.account_id)}, "sk": {"S": goes_out_sk(batch)}},
        ConditionExpression="attribute_exists(pk)",
    )


def table_items(store: Any) -> list[dict[str, Any]]:
    pages = store.client.get_paginator("scan").paginate(TableName=store.table_name)
    return sorted(
        (item for page in pages for item in page["Items"]), key=lambda item: (item["pk"]["S"], item["sk"]["S"])
    )


def found_on(store: Any, account: Any, day_start: Any) -> list[int]:
    query = history.SearchQuery(since=day_start, until=day_start + timedelta(days=1))
    return [batch.reference_id for batch in history.search(store, store, account, query).batches]


def test_campaigns_scheduled_before_the_deploy_are_in_the_charts_and_search_of_the_day_they_go_out(cli, store, account):
    # Given, written by the build before session 36 (no entry by send time): a campaign made 10 days ago and sent
    # yesterday, 1 of its 2 messages delivered, and one made last week for tomorrow
    sent = add_batch(
        store,
        account.account_id,
        NOW - timedelta(days=10),
        {MTN: S.DELIVERED, AIRTEL: S.FAILED},
        send_at=NOW - timedelta(days=1),
    )
    tomorrow = NOW.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    due = add_batch(
        store,
        account.account_id,
        NOW - timedelta(days=8),
        {MTN: S.SCHEDULED},
        send_at=tomorrow + timedelta(hours=9),
        status=S.SCHEDULED,
    )
    for batch in (sent, due):
        as_made_before_send_time_entries(store, batch)
    # And one sent at once today, which needs no entry
    add_batch(store, account.account_id, NOW - timedelta(hours=1), {MTN: S.DELIVERED})
    # (the portal misses both campaigns)
    window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
    assert sent.reference_id not in [batch.reference_id for batch in window.batches]
    before = table_items(store)
    # When the operator asks what the backfill would add
    code, report, err = cli("backfill-send-times", "--dry-run", "--json")
    # Then it counts both campaigns and writes nothing
    assert (code, report) == (0, {"added": 2, "already": 0, "dry_run": True}), err
    assert table_items(store) == before
    # When it runs
    code, report, err = cli("backfill-send-times", "--json")
    # Then both campaigns get their entry
    assert (code, report) == (0, {"added": 2, "already": 0, "dry_run": False}), err
    # And the week's charts draw the first on the day it went out, its credits still the week's it was made in
    window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
    days = {point.label: point for point in history.delivery_over_time(window, UTC, now=NOW)}
    assert days[(NOW - timedelta(days=1)).strftime("%Y-%m-%d")].counts == {"delivered": 1, "failed": 1}
    assert all(day.day != (NOW - timedelta(days=10)).date() for day in history.credit_usage(window, UTC))
    # And a search by yesterday's date finds the first, by tomorrow's the second
    assert sent.reference_id in found_on(store, account, tomorrow - timedelta(days=2))
    assert found_on(store, account, tomorrow) == [due.reference_id]
    # And each entry expires with its batch
    entries = [item for item in table_items(store) if item["sk"]["S"].startswith("GOES_OUT#")]
    batches = {item["sk"]["S"]: item for item in table_items(store) if item["sk"]["S"].startswith("BATCH#")}
    assert sorted(entry["expires_at"]["N"] for entry in entries) == sorted(
        batches[f"BATCH#{batch.reference_id:019d}"]["expires_at"]["N"] for batch in (sent, due)
    )
    # When it runs again, of every account or of this one
    for argv in (["--json"], ["--account", account.account_id, "--json"]):
        code, report, err = cli("backfill-send-times", *argv)
        # Then it adds nothing
        assert (code, report) == (0, {"added": 0, "already": 2, "dry_run": False}), err
