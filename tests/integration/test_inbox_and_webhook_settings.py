"""The pull side of inbound SMS (`GET /ng/v1/inbounds`) and the webhook settings API through the real handlers on
moto: stored once per upstream message, newest first, filters, tenant isolation, rotation shown once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import FakeContext, load_event, load_function
from tests.integration.test_batches_dialect import request
from tests.integration.test_send_path import balance, queued_records
from tests.stored_accounts import stored, webhook_credentials

Api = Callable[[dict[str, Any]], dict[str, Any]]
AIRTEL = "+2348020000000"
MTN = "+2348030000000"
SIMULATOR_SECRET = "inbox-test-secret"
DAY = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def call(
    api: Api, token: str, method: str, path: str, body: Any = None, **query: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = api(request(token, method, path, body, query or None))
    return response["statusCode"], json.loads(response["body"]), response.get("headers") or {}


def inbox(api: Api, token: str, **query: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = call(api, token, "GET", "/ng/v1/inbounds", **query)
    return status, body


def put_inbound(
    account_id: str, at: datetime, msisdn: str = AIRTEL, upstream_id: str | None = None, text: str = "hi"
) -> Any:
    """Stores an inbound SMS received at `at` (its id is made in that millisecond), as the webhook would."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.ids import IdGenerator
    from sms_gateway.domain.models import StoredInbound, iso

    inbound_id = IdGenerator().new_id(int(at.timestamp() * 1000))
    inbound = StoredInbound(
        inbound_id=inbound_id,
        account_id=account_id,
        upstream="simulator",
        upstream_message_id=upstream_id,
        msisdn=msisdn,
        telco="airtel" if msisdn == AIRTEL else "mtn",
        to="48974",
        text=text,
        session_id=str(inbound_id),
        received_at=iso(at),
    )
    assert gateway().store.save_inbound(inbound)
    return inbound


def texts(body: dict[str, Any]) -> list[str]:
    return [entry["message"] for entry in body["data"]]


def all_pages(api: Api, token: str, **query: str) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(20):
        status, body = inbox(api, token, **query, **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        pages.append(texts(body))
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the cursor never ended")


# ---------------------------------------------------------------- storing once


def signed_inbound_callback() -> dict[str, Any]:
    from sms_gateway.adapters.providers.simulator import signature

    event = load_event("webhook-inbound-simulator.json")
    timestamp = str(int(time.time()))
    event["headers"]["x-simulator-timestamp"] = timestamp
    event["headers"]["x-simulator-signature"] = signature(SIMULATOR_SECRET, timestamp, event["body"])
    return event


def test_a_repeated_upstream_callback_is_stored_once_and_listed_in_the_seed_shape(aws, account, api):
    import boto3

    from sms_gateway_tools.localstack.resources import put_simulator_parameter

    put_simulator_parameter(boto3.client("ssm"), "http://127.0.0.1:9", SIMULATOR_SECRET)
    webhook = load_function("webhook")
    # Given the simulator's sample inbound callback, delivered twice (the upstream retried)
    first = webhook.handler(signed_inbound_callback(), FakeContext())
    again = webhook.handler(signed_inbound_callback(), FakeContext())
    assert (first["statusCode"], again["statusCode"]) == (200, 200), (first, again)
    # When the account reads its inbox
    status, body = inbox(api, account["token"])
    # Then the SMS is there once, in the seeds' "Receive SMS" shape plus its id and arrival time
    assert status == 200, body
    [entry] = body["data"]
    assert body["next_cursor"] is None
    assert entry["id"].startswith("in_") and entry["id"][3:].isdigit()
    assert {key: entry[key] for key in ("type", "telco", "from", "to", "message", "sent_date")} == {
        "type": "two-way sms",
        "telco": "airtel",
        "from": "2348020000000",
        "to": "48974",
        "message": "When was the last time you went to the cinema?",
        "sent_date": "2024-01-02T23:50:37.000000Z",
    }
    assert entry["session_id"]
    assert "ref_id" in entry
    received = datetime.fromisoformat(entry["received_at"].replace("Z", "+00:00"))
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=1)


def test_the_store_keeps_one_sms_per_upstream_id_and_every_sms_without_one(aws, account):
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    first = put_inbound(account["account_id"], DAY, upstream_id="up-1")
    # When the same upstream id comes again under a new inbound id, Then it is refused as a duplicate
    retried = first.model_copy(update={"inbound_id": first.inbound_id + 1})
    assert store.save_inbound(retried) is False
    # And SMS without an upstream id are each stored
    put_inbound(account["account_id"], DAY + timedelta(seconds=1))
    put_inbound(account["account_id"], DAY + timedelta(seconds=2))
    page, _ = store.list_inbounds(account["account_id"], limit=10)
    assert [inbound.inbound_id for inbound in page].count(first.inbound_id) == 1
    assert retried.inbound_id not in [inbound.inbound_id for inbound in page]
    assert len(page) == 3


def test_an_upstream_id_reused_for_another_accounts_number_is_a_new_sms_not_a_duplicate(aws, account, other_account):
    import boto3

    from sms_gateway.bootstrap import gateway

    store = gateway().store
    # Given an SMS a shared upstream delivered to the account's 48974 under its id "up-shared"
    first = put_inbound(account["account_id"], DAY, upstream_id="up-shared", text="for the first")
    # When the same upstream gives the same id to an SMS for another account's number (or another number)
    theirs = first.model_copy(
        update={"inbound_id": first.inbound_id + 1, "account_id": other_account["account_id"], "to": "55555"}
    )
    other_number = first.model_copy(update={"inbound_id": first.inbound_id + 2, "to": "48975"})
    # Then each is a new SMS, stored in its own inbox, and each one's repeat is the duplicate of that one only
    assert store.save_inbound(theirs) is True
    assert store.save_inbound(other_number) is True
    for sms in (first, theirs, other_number):
        assert store.save_inbound(sms.model_copy(update={"inbound_id": sms.inbound_id + 10})) is False
        found = store.find_inbound("simulator", "up-shared", sms.account_id, sms.to)
        assert found is not None and found.inbound == sms, sms
    assert [i.text for i in store.list_inbounds(other_account["account_id"], limit=10)[0]] == ["for the first"]
    assert store.find_inbound("simulator", "up-shared", other_account["account_id"], "48974") is None
    # And a marker stored before markers named the account and number still makes any SMS with its id a duplicate
    client, table = boto3.client("dynamodb"), aws["TABLE_NAME"]
    legacy = {"pk": {"S": "INUP#simulator#up-old"}, "sk": {"S": "INBOUND"}}
    client.put_item(
        TableName=table,
        Item={**legacy, "account_id": {"S": account["account_id"]}, "inbound_id": {"N": str(first.inbound_id)}},
    )
    for owner, to in ((account["account_id"], "48974"), (other_account["account_id"], "55555")):
        late = first.model_copy(
            update={"inbound_id": first.inbound_id + 20, "account_id": owner, "to": to, "upstream_message_id": "up-old"}
        )
        assert store.save_inbound(late) is False
        found = store.find_inbound("simulator", "up-old", owner, to)
        assert found is not None and found.inbound == first


# ---------------------------------------------------------------- listing


def test_pages_run_newest_first_and_the_cursor_continues_without_gaps(aws, account, api):
    for minute in range(5):
        put_inbound(account["account_id"], DAY + timedelta(minutes=minute), text=f"sms {minute}")
    assert all_pages(api, account["token"], limit="2") == [["sms 4", "sms 3"], ["sms 2", "sms 1"], ["sms 0"]]
    status, body = inbox(api, account["token"])
    assert status == 200
    assert texts(body) == ["sms 4", "sms 3", "sms 2", "sms 1", "sms 0"]
    assert body["data"][0]["received_at"] == "2026-01-02T10:04:00.000000Z"


def test_dates_filter_on_arrival_in_the_account_time_zone_and_bounds_are_inclusive(aws, account, api):
    # Given SMS received at 10:00 UTC on 1, 2 and 3 January (the account is in Africa/Lagos, UTC+1)
    for day in (-1, 0, 1):
        put_inbound(account["account_id"], DAY + timedelta(days=day), text=f"day {day}")
    token = account["token"]
    # Then a date is that whole day in the account's zone, from and to alike
    assert texts(inbox(api, token, **{"from": "2026-01-02", "to": "2026-01-02"})[1]) == ["day 0"]
    assert texts(inbox(api, token, **{"from": "2026-01-02"})[1]) == ["day 1", "day 0"]
    # And a date-time bound includes an SMS received in its very millisecond, whatever its offset
    assert texts(inbox(api, token, to="2026-01-02T11:00:00+01:00")[1]) == ["day 0", "day -1"]
    assert texts(inbox(api, token, **{"from": "2026-01-02T10:00:00.001Z"})[1]) == ["day 1"]
    # And a date-time without an offset is the account's wall clock
    assert texts(inbox(api, token, to="2026-01-02T10:59:59")[1]) == ["day -1"]


@pytest.mark.parametrize("written", ["2026-01-02", "20260102", "2026-W01-5", "2026W015"])
def test_a_date_in_any_iso_8601_form_is_that_whole_day(aws, account, api, written):
    # Given SMS received at 10:00 UTC on 1, 2 and 3 January, 2 January being Friday of ISO week 1
    for day in (-1, 0, 1):
        put_inbound(account["account_id"], DAY + timedelta(days=day), text=f"day {day}")
    # Then the basic and week forms are the whole day like the extended form (until 2026-12-06 they were read as
    # its midnight: `to=20260102` ended before its day began, and left that day's SMS out without a word)
    assert texts(inbox(api, account["token"], **{"from": written, "to": written})[1]) == ["day 0"]


def test_a_number_filter_accepts_local_forms_and_fills_pages_across_reads(aws, account, api, monkeypatch):
    from sms_gateway.adapters import dynamodb_inbox

    # Given SMS from two numbers, one of them rare
    for minute in range(9):
        msisdn = MTN if minute % 3 == 0 else AIRTEL
        put_inbound(account["account_id"], DAY + timedelta(minutes=minute), msisdn=msisdn, text=f"sms {minute}")
    # When the inbox is read for the rare number in its local form, one at a time (one read finds more than a page)
    pages = all_pages(api, account["token"], number="0803 000 0000", limit="1")
    # Then only its SMS come, newest first, none skipped or repeated
    assert pages == [["sms 6"], ["sms 3"], ["sms 0"]]
    # And when each read holds fewer matches than a page, the gateway reads on until the page is full
    monkeypatch.setattr(dynamodb_inbox, "_FILTER_READ_SIZE", 2)
    assert all_pages(api, account["token"], number="+2348030000000", limit="2") == [["sms 6", "sms 3"], ["sms 0"]]
    status, body = inbox(api, account["token"], number="2348030000000")
    assert status == 200
    assert [entry["from"] for entry in body["data"]] == ["2348030000000"] * 3


def test_a_number_filter_finds_sms_from_a_sender_id_or_short_code_as_the_upstream_gave_it(aws, account, api):
    # Given SMS to the account's number from a service's sender ID, a carrier's short code and a handset
    for minute, sender in enumerate(["WhatsApp", "131", AIRTEL]):
        put_inbound(account["account_id"], DAY + timedelta(minutes=minute), msisdn=sender, text=f"from {sender}")
    # When the inbox is read for each sender that is no number, as the upstream gave it
    # Then each finds its own SMS, its sender shown as given (until 2026-12-07 such a value was refused with a 400:
    # "12" is no valid phone number, though a short code may send from it)
    for sender in ("WhatsApp", " 131 "):
        status, body = inbox(api, account["token"], number=sender)
        assert status == 200
        assert [(entry["from"], entry["message"]) for entry in body["data"]] == [
            (sender.strip(), f"from {sender.strip()}")
        ]


def test_one_account_never_sees_another_accounts_inbox(aws, account, other_account, api):
    for minute in range(3):
        put_inbound(account["account_id"], DAY + timedelta(minutes=minute))
    status, body = inbox(api, other_account["token"])
    assert (status, body["data"], body["next_cursor"]) == (200, [], None)
    # Not even with the first account's cursor
    _, first_page = inbox(api, account["token"], limit="1")
    status, refused = inbox(api, other_account["token"], cursor=first_page["next_cursor"])
    assert status == 400
    assert "cursor" in refused["message"]


BAD_QUERIES = [
    ({"limit": "0"}, "`limit` must be a whole number from 1 to 100"),
    ({"limit": "101"}, "`limit` must be a whole number from 1 to 100"),
    ({"limit": "ten"}, "`limit`"),
    ({"from": "yesterday"}, "`from` must be an ISO 8601 date"),
    ({"to": "2026-13-01"}, "`to` must be an ISO 8601 date"),
    ({"to": "2026-01-02T10:00:00 01:00"}, "%2B"),
    ({"from": "2026-01-03", "to": "2026-01-02"}, "is after"),
    ({"number": "1" * 33}, "is neither a phone number nor a sender: a sender longer than 32 characters"),
    ({"cursor": "not-a-cursor"}, "cursor"),
]


def test_a_bad_query_is_a_400_in_the_9bits_shape_saying_what_is_wrong(aws, account, api):
    put_inbound(account["account_id"], DAY)
    for query, fragment in BAD_QUERIES:
        status, body = inbox(api, account["token"], **query)
        assert (status, body["status_code"]) == (400, 400), query
        assert fragment in body["message"], (query, body)


def test_a_cursor_kept_across_a_change_of_dates_is_refused_not_a_server_error(aws, account, api):
    for day in (0, 1, 2):
        put_inbound(account["account_id"], DAY + timedelta(days=day))
    _, page = inbox(api, account["token"], limit="1")
    status, body = inbox(api, account["token"], cursor=page["next_cursor"], to="2026-01-02")
    assert status == 400
    assert "cursor" in body["message"]


def test_the_inbox_needs_a_valid_bearer_token(aws, account, api):
    status, body = inbox(api, "sk_not-a-token")
    assert (status, body["status_code"]) == (401, 401)


# ---------------------------------------------------------------- webhook settings


def settings(api: Api, token: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, Any], dict]:
    return call(api, token, method, "/ng/v1/settings/webhooks", body)


def test_webhook_settings_round_trip_without_showing_secrets(aws, account, api):
    token = account["token"]
    before = stored(account["account_id"])
    before_token, before_secret = webhook_credentials(account["account_id"])
    # When the client sets both URLs
    status, changed, headers = settings(
        api,
        token,
        "PUT",
        {"inbound_url": "https://client.example/in", "dlr_url": "https://client.example/dlr"},
    )
    # Then they are stored and shown, with only the start of each secret
    assert status == 200, changed
    assert (changed["inbound_url"], changed["dlr_url"]) == ("https://client.example/in", "https://client.example/dlr")
    assert changed["webhook_token_prefix"] == before_token[:8]
    assert changed["signing_secret_prefix"] == before_secret[:14]
    assert "webhook_token" not in changed and "signing_secret" not in changed
    assert before_token not in json.dumps(changed) and before_secret not in json.dumps(changed)
    assert headers.get("Cache-Control") == "no-store"
    status, read, _ = settings(api, token)
    assert status == 200
    assert {k: read[k] for k in changed if k != "message"} == {k: changed[k] for k in changed if k != "message"}
    # And "" removes one webhook while null keeps the other
    status, cleared, _ = settings(api, token, "PUT", {"dlr_url": "", "inbound_url": None})
    assert status == 200, cleared
    assert (cleared["inbound_url"], cleared["dlr_url"]) == ("https://client.example/in", None)
    after = stored(account["account_id"])
    assert (after.inbound_url, after.dlr_url) == ("https://client.example/in", None)
    assert (after.webhook_token, after.webhook_secret) == (before.webhook_token, before.webhook_secret)


def test_webhook_settings_read_right_after_a_change_show_the_change(aws, account, api, monkeypatch):
    from tests.stored_accounts import account_reads_lag

    # Given reads of the account that lag behind a change (as an eventually consistent read may)
    account_reads_lag(monkeypatch, account["account_id"])
    # When the client sets its inbound URL and reads its settings at once
    status, changed, _ = settings(api, account["token"], "PUT", {"inbound_url": "https://client.example/in"})
    assert status == 200, changed
    status, read, _ = settings(api, account["token"])
    # Then the read shows the URL just set (it could show the settings from before the change)
    assert (status, read["inbound_url"]) == (200, "https://client.example/in")


def test_a_rotated_token_and_secret_are_shown_in_full_once(aws, account, api):
    token = account["token"]
    before = stored(account["account_id"])
    # When the client rotates both
    status, rotated, headers = settings(api, token, "PUT", {"rotate_token": True, "rotate_secret": True})
    # Then the answer holds the new ones in full, and they are what the account now signs and sends with
    assert status == 200, rotated
    after = stored(account["account_id"])
    assert (rotated["webhook_token"], rotated["signing_secret"]) == webhook_credentials(account["account_id"])
    assert after.webhook_token != before.webhook_token and after.webhook_secret != before.webhook_secret
    assert rotated["webhook_token"] != account["webhook_token"]
    assert rotated["signing_secret"] != account["signing_secret"]
    assert rotated["signing_secret"].startswith("whsec_")
    assert rotated["webhook_token"].startswith(rotated["webhook_token_prefix"])
    assert rotated["signing_secret"].startswith(rotated["signing_secret_prefix"])
    assert headers.get("Cache-Control") == "no-store"
    # And a later read shows only their starts
    _, read, _ = settings(api, token)
    assert "webhook_token" not in read and "signing_secret" not in read
    assert read["signing_secret_prefix"] == rotated["signing_secret_prefix"]
    # And rotating only the secret leaves the token alone, and shows only the secret
    _, secret_only, _ = settings(api, token, "PUT", {"rotate_secret": True})
    assert "webhook_token" not in secret_only
    assert stored(account["account_id"]).webhook_token == after.webhook_token


@pytest.mark.parametrize(
    ("rotate", "shown", "which"), [("rotate_token", "webhook_token", 0), ("rotate_secret", "signing_secret", 1)]
)
def test_two_rotations_at_once_never_show_a_value_the_webhooks_do_not_get(
    aws, account, api, monkeypatch, rotate, shown, which
):
    from sms_gateway.bootstrap import gateway

    token = account["token"]
    box = gateway().webhook_credentials
    seal = box.seal
    answers: list[tuple[int, dict[str, Any], dict]] = []

    def seal_after_another_rotation(account_id: str, purpose: str, secret: str) -> Any:
        # Given a second rotation (a client's retry after a timeout, another operator) that runs from start to end
        # while the first is between reading the account and writing its new value
        if not answers:
            answers.append((0, {}, {}))
            answers.append(settings(api, token, "PUT", {rotate: True}))
        return seal(account_id, purpose, secret)

    monkeypatch.setattr(box, "seal", seal_after_another_rotation)
    # When the first rotation goes on
    answers.append(settings(api, token, "PUT", {rotate: True}))
    monkeypatch.setattr(box, "seal", seal)
    second, first = answers[1], answers[2]
    # Then the one that finished first holds the value now in use
    in_use = webhook_credentials(account["account_id"])[which]
    assert (second[0], second[1][shown]) == (200, in_use), second
    # And the other changed nothing and says so in the 9bits shape (it showed a value no webhook would ever get,
    # shown once and kept nowhere: every webhook call failed the client's check until it rotated again)
    assert (first[0], first[1]["status_code"]) == (409, 409), first
    assert shown not in first[1]
    assert "rotated" in first[1]["message"]


BAD_CHANGES: list[tuple[Any, str]] = [
    ({"inbound_url": 5}, "inbound_url"),
    ({"rotate_token": "yes"}, "rotate_token"),
    ({"rotate_secret": 1}, "rotate_secret"),
    ({"inbound_url": "https://client.example/in", "callback": "x"}, "callback"),
    ({"dlr_url": "http://client.example/dlr", "rotate_token": True}, "https"),
    ({"inbound_url": "client.example/in"}, "webhook URL"),
    ({}, "nothing to change"),
    ({"inbound_url": None, "rotate_token": False}, "nothing to change"),
    (["https://client.example/in"], "JSON object"),
    ("not json", "not valid JSON"),
]


def test_a_bad_settings_change_is_a_400_and_changes_nothing(aws, account, api, monkeypatch):
    from sms_gateway import bootstrap

    # Given a deployed-like stack where webhooks must be https
    monkeypatch.setenv("ALLOW_HTTP_WEBHOOKS", "false")
    bootstrap.reset()
    before = stored(account["account_id"])
    for body, fragment in BAD_CHANGES:
        event = request(account["token"], "PUT", "/ng/v1/settings/webhooks", body)
        if isinstance(body, str):
            event["body"] = body
        # When the change is sent
        response = api(event)
        # Then it is refused in the 9bits shape, saying what is wrong
        answer = json.loads(response["body"])
        assert (response["statusCode"], answer["status_code"]) == (400, 400), (body, answer)
        assert fragment in answer["message"], (body, answer)
    # And nothing changed: not the account or its secrets, not its credits, nothing queued
    assert stored(account["account_id"]) == before
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_webhook_settings_need_a_valid_bearer_token(aws, account, api):
    before = stored(account["account_id"])
    status, body, _ = settings(api, "sk_not-a-token", "PUT", {"rotate_secret": True})
    assert (status, body["status_code"]) == (401, 401)
    assert stored(account["account_id"]) == before


def test_the_openapi_document_has_the_inbox_and_settings_routes(aws, api):
    event = request("unused", "GET", "/v1/openapi.json")
    event.pop("pathParameters", None)
    document = json.loads(api(event)["body"])
    inbox_parameters = {p["name"] for p in document["paths"]["/ng/v1/inbounds"]["get"]["parameters"]}
    assert {"limit", "cursor", "from", "to", "number"} <= inbox_parameters
    put = document["paths"]["/ng/v1/settings/webhooks"]["put"]
    schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert {"inbound_url", "dlr_url", "rotate_token", "rotate_secret"} <= set(schema["properties"])
    assert "get" in document["paths"]["/ng/v1/settings/webhooks"]


def test_the_cli_rotates_the_signing_secret(aws, account, monkeypatch, capsys):
    from sms_gateway_tools import admin, cli

    monkeypatch.setattr(admin, "_target", lambda args: "http://127.0.0.1:8")
    before = stored(account["account_id"])
    capsys.readouterr()
    code = cli.main(["admin", "set-webhooks", "--account", account["account_id"], "--rotate-secret", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    after = stored(account["account_id"])
    assert shown["signing_secret"] == webhook_credentials(account["account_id"])[1] != account["signing_secret"]
    assert after.webhook_secret != before.webhook_secret
    assert "webhook_token" not in shown
    assert after.webhook_token == before.webhook_token
