"""The shortcode dialect (seed 4) through the real `api` handler on moto: sendsms, getdlr, getbalance."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import REPO, load_event
from tests.integration.test_send_path import FakeContext, balance, load_function, queued_records

SEED_TEXT = "When was the last time you went to the cinema?"
AIRTEL = "2348020000000"  # 0802: Airtel Nigeria, networkid 2
MTN = "2348030000000"  # 0803: MTN Nigeria, networkid 1

Api = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def get_event(account: dict[str, Any], **params: str | None) -> dict[str, Any]:
    """The seed's GET request; keyword arguments replace (or, given None, drop) query parameters."""
    event = load_event("api-shortcode-sendsms-get.json", apikey=account["apikey"], partnerID=account["partner_id"])
    query = {**event["queryStringParameters"], **params}
    query = {key: value for key, value in query.items() if value is not None}
    event["queryStringParameters"] = query
    event["rawQueryString"] = urlencode(query)
    return event


def post_event(account: dict[str, Any], body: Any = None, **fields: Any) -> dict[str, Any]:
    """The seed's POST request; `body` replaces it whole, keyword arguments replace (None drops) fields."""
    event = load_event("api-shortcode-sendsms-post.json", apikey=account["apikey"], partnerID=account["partner_id"])
    if body is None:
        payload = {**json.loads(event["body"]), **fields}
        body = {key: value for key, value in payload.items() if value is not None}
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


def service_event(account: dict[str, Any], service: str, method: str = "POST", **fields: Any) -> dict[str, Any]:
    event = post_event(account, {"apikey": account["apikey"], "partnerID": account["partner_id"], **fields})
    event["rawPath"] = f"/api/services/{service}"
    event["requestContext"]["http"]["path"] = event["rawPath"]
    event["requestContext"]["http"]["method"] = method
    event["pathParameters"] = {"proxy": service}
    if method == "GET":
        event["queryStringParameters"] = {k: str(v) for k, v in json.loads(event.pop("body")).items()}
        event["rawQueryString"] = urlencode(event["queryStringParameters"])
    return event


def answer(response: dict[str, Any]) -> dict[str, Any]:
    assert response["statusCode"] == 200, response
    assert response["headers"]["Content-Type"] == "application/json"
    return json.loads(response["body"])


def schedules(env: dict[str, str]) -> list[dict[str, Any]]:
    import boto3

    client = boto3.client("scheduler")
    names = [s["Name"] for s in client.list_schedules(GroupName=env["SCHEDULE_GROUP_NAME"])["Schedules"]]
    return [client.get_schedule(Name=name, GroupName=env["SCHEDULE_GROUP_NAME"]) for name in names]


# ------------------------------------------------------------------ the seed's requests


def test_seed_get_sends_to_the_one_mobile(aws, account, api):
    # Given the seed's GET request with exactly its parameter names
    # When it is sent
    body = answer(api(get_event(account)))
    # Then the answer is the seed's shape: one entry, the number as digits, our message id as a string of digits
    # (quoted, as the seed's sample shows it)
    [entry] = body["responses"]
    assert list(body) == ["responses"]
    assert list(entry) == ["response-code", "response-description", "mobile", "messageid", "networkid"]
    assert entry["response-code"] == 200
    assert entry["response-description"] == "Success"
    assert entry["mobile"] == int(AIRTEL)
    assert isinstance(entry["messageid"], str) and entry["messageid"].isdigit()
    assert entry["networkid"] == 2
    # And one credit is taken and the message is queued
    assert balance(account["account_id"]) == 99
    [record] = queued_records(aws)
    assert json.loads(record["Body"])["message_ids"] == [int(entry["messageid"])]


def test_a_javascript_client_reads_every_messageid_exactly_and_gets_its_own_report(aws, account, api):
    """The seed's Node sample parses answers with JSON.parse, where a number is a double: an integer id above 2^53
    would be rounded to a neighbour's (a batch's ids are consecutive) and getdlr would answer that one's report."""

    def javascript(body: str) -> Any:
        return json.loads(body, parse_int=float)  # JSON.parse: every number a double

    # Given a send to 20 numbers, its answer read as JavaScript reads it
    numbers = [f"23480300000{n:02d}" for n in range(20)]
    sent = javascript(api(post_event(account, mobile=",".join(numbers)))["body"])["responses"]
    # When the client asks getdlr for each messageid it kept
    for entry in sent:
        event = service_event(account, "getdlr", messageID=entry["messageid"])
        report = javascript(api(event)["body"])
        # Then each is found and is its own message's report, under the same id
        assert report["response-code"] == 200, report
        assert report["message-id"] == entry["messageid"]
    assert len({entry["messageid"] for entry in sent}) == 20


def test_seed_post_sends_to_each_comma_separated_mobile(aws, account, api):
    # Given the seed's POST body with two numbers, comma separated
    # When it is posted
    body = answer(api(post_event(account)))
    # Then each number has its own success entry, with its network
    entries = body["responses"]
    assert [(e["response-code"], e["mobile"], e["networkid"]) for e in entries] == [
        (200, int(AIRTEL), 2),
        (200, int(MTN), 1),
    ]
    assert len({e["messageid"] for e in entries}) == 2
    # And both are charged and queued in one batch
    assert balance(account["account_id"]) == 98
    [record] = queued_records(aws)
    assert sorted(json.loads(record["Body"])["message_ids"]) == sorted(int(e["messageid"]) for e in entries)


def test_invalid_numbers_get_their_own_entry_while_the_valid_ones_are_sent(aws, account, api):
    # Given one valid number among invalid ones, and the valid one repeated in local form
    event = post_event(account, mobile=f"12,{AIRTEL}, abc ,08020000000")
    # When it is posted
    entries = answer(api(event))["responses"]
    # Then the invalid ones are listed as given with 1003, and the valid one once, sent
    assert entries[0] == {"response-code": 1003, "response-description": "Invalid mobile number", "mobile": "12"}
    assert entries[1]["response-code"] == 200
    assert entries[1]["mobile"] == int(AIRTEL)
    assert entries[2] == {"response-code": 1003, "response-description": "Invalid mobile number", "mobile": "abc"}
    assert len(entries) == 3
    # And only the valid number is charged and queued
    assert balance(account["account_id"]) == 99
    [record] = queued_records(aws)
    assert json.loads(record["Body"])["message_ids"] == [int(entries[1]["messageid"])]


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        ("application/x-www-form-urlencoded", urlencode),
        # PHP's curl labels a json_encode()d body as a form unless the client sets Content-Type.
        ("application/x-www-form-urlencoded", json.dumps),
        (None, json.dumps),
    ],
    ids=["form", "json-labelled-as-form", "json-without-content-type"],
)
def test_forms_and_unlabelled_json_are_read_too(aws, account, api, content_type, encode):
    # Given the seed's fields sent as a PHP client might
    fields = {**json.loads(post_event(account)["body"]), "mobile": AIRTEL, "partnerID": int(account["partner_id"])}
    event = post_event(account, encode(fields))
    event["headers"].pop("content-type")
    if content_type:
        event["headers"]["content-type"] = content_type
    # When it is posted
    [entry] = answer(api(event))["responses"]
    # Then it is sent
    assert entry["response-code"] == 200
    assert balance(account["account_id"]) == 99


def test_a_multipart_form_base64_encoded_by_api_gateway_is_read(aws, account, api):
    # Given PHP's `CURLOPT_POSTFIELDS => $array`: multipart/form-data, which reaches Lambda base64-encoded
    fields = {**json.loads(post_event(account)["body"]), "mobile": AIRTEL}
    boundary = "------------------------d74496d66958873e"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    raw = ("".join(parts) + f"--{boundary}--\r\n").encode()
    event = post_event(account, base64.b64encode(raw).decode())
    event["isBase64Encoded"] = True
    event["headers"]["content-type"] = f"multipart/form-data; boundary={boundary}"
    # When it is posted
    [entry] = answer(api(event))["responses"]
    # Then it is sent
    assert entry["response-code"] == 200
    assert balance(account["account_id"]) == 99


@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_a_mobile_field_given_twice_in_a_form_sends_to_both(aws, account, api, encoding):
    # Given a form that names `mobile` twice (a client building the form from a list)
    fields = [(k, v) for k, v in json.loads(post_event(account)["body"]).items() if k != "mobile"]
    fields += [("mobile", AIRTEL), ("mobile", MTN)]
    if encoding == "form":
        event = post_event(account, urlencode(fields))
        event["headers"]["content-type"] = "application/x-www-form-urlencoded"
    else:
        boundary = "----b0undary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields]
        event = post_event(account, "".join(parts) + f"--{boundary}--\r\n")
        event["headers"]["content-type"] = f"multipart/form-data; boundary={boundary}"
    # When it is posted
    entries = answer(api(event))["responses"]
    # Then both numbers are sent to, as a GET's repeated query parameter is (API Gateway joins it with commas)
    assert sorted(str(entry["mobile"]) for entry in entries if entry["response-code"] == 200) == sorted([AIRTEL, MTN])
    assert balance(account["account_id"]) == 98


# ------------------------------------------------------------------ errors change nothing


def _too_many() -> str:
    return ",".join(f"234802{i:07d}" for i in range(1001))


BAD_REQUESTS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], int, str]] = [
    ("wrong apikey", lambda a: post_event(a, apikey="f" * 48), 1006, "Invalid credentials"),
    ("wrong partnerID", lambda a: post_event(a, partnerID="999999999"), 1006, "Invalid credentials"),
    ("wrong partnerID on GET", lambda a: get_event(a, partnerID="1"), 1006, "Invalid credentials"),
    ("no partnerID", lambda a: post_event(a, partnerID=None), 4091, "No Partner ID is Set"),
    ("empty partnerID", lambda a: get_event(a, partnerID=""), 4091, "No Partner ID is Set"),
    ("no apikey", lambda a: post_event(a, apikey=None), 4092, "No API KEY Provided"),
    ("shortcode not the account's", lambda a: post_event(a, shortcode="55555"), 1001, "Invalid sender id"),
    ("no shortcode", lambda a: post_event(a, shortcode=None), 4096, "No shortcode provided"),
    ("no message", lambda a: post_event(a, message=None), 4094, "No message provided"),
    ("blank message", lambda a: get_event(a, message="   "), 4094, "No message provided"),
    ("no mobile", lambda a: post_event(a, mobile=None), 4095, "No mobile provided"),
    ("only commas", lambda a: post_event(a, mobile=" , ,"), 4095, "No mobile provided"),
    ("no valid mobile", lambda a: post_event(a, mobile="12,abc"), 1003, "Invalid mobile number"),
    ("1001 mobiles", lambda a: post_event(a, mobile=_too_many()), 1104, "Too many comma separated contacts"),
    ("two mobiles on GET", lambda a: get_event(a, mobile=f"{AIRTEL},{MTN}"), 1104, "Too many comma separated contacts"),
    ("beyond the balance", lambda a: post_event(a, mobile=",".join(f"234802{i:07d}" for i in range(101))), 1004, ""),
    ("text over the part limit", lambda a: post_event(a, message="x" * 1600), 1009, "Unsupported data type"),
    ("bad timeToSend", lambda a: post_event(a, timeToSend="next tuesday"), 4098, "Invalid timeToSend"),
    # yyyyMMdd naming no date, as a JSON number: it was Unix time (1970), so sent at once
    ("timeToSend number naming no date", lambda a: post_event(a, timeToSend=20261332), 4098, "Invalid timeToSend"),
    ("boolean timeToSend", lambda a: post_event(a, timeToSend=True), 1009, "Unsupported data type"),
    ("mobile an object", lambda a: post_event(a, mobile={"n": 1}), 1009, "Unsupported data type"),
    ("malformed JSON", lambda a: post_event(a, "{not json"), 1009, "Unsupported data type"),
    ("JSON not an object", lambda a: post_event(a, "[1, 2]"), 1009, "Unsupported data type"),
]


@pytest.mark.parametrize(("label", "build", "code", "description"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_every_error_is_the_family_shape_and_changes_nothing(aws, account, api, label, build, code, description):
    # Given a request that is wrong in one way
    # When it is sent
    body = answer(api(build(account)))
    # Then the answer is the family's flat error shape with the code for that fault
    assert body["response-code"] == code, body
    if description:
        assert body["response-description"] == description
    assert set(body) <= {"response-code", "response-description", "response-details"}
    # And nothing was charged, queued or scheduled
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []
    assert schedules(aws) == []


def test_credential_errors_say_exactly_what_the_seed_shows_and_no_more(aws, account, api):
    # Given a request with a known apikey but another account's partnerID, and one with an unknown apikey
    wrong_partner = answer(api(post_event(account, partnerID="123456")))
    unknown_key = answer(api(post_event(account, apikey="0" * 48)))
    # Then both get the seed's error body, word for word: nothing tells them apart
    assert wrong_partner == unknown_key == {"response-code": 1006, "response-description": "Invalid credentials"}


def test_wrong_content_type_and_unknown_services_are_unsupported_requests(aws, account, api):
    xml = post_event(account, "<sms/>")
    xml["headers"]["content-type"] = "application/xml"
    unknown = service_event(account, "sendvoice")
    put = post_event(account)
    put["requestContext"]["http"]["method"] = "PUT"
    for event in (xml, unknown, put):
        body = answer(api(event))
        assert body["response-code"] == 1010, body
        assert body["response-description"] == "Unsupported request type"
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


@pytest.mark.parametrize("method", ["OPTIONS", "HEAD"])
def test_a_method_no_service_takes_is_told_the_methods_the_service_takes(aws, account, api, method):
    # Given a request to sendsms with a method no route of the dialect takes
    event = service_event(account, "sendsms", method="GET")
    event["requestContext"]["http"]["method"] = method
    # When it is answered
    response = api(event)
    # Then it is the family's 1010, and Allow names what sendsms takes
    assert json.loads(response["body"] or "{}").get("response-code", 1010) == 1010
    assert response["headers"]["Allow"] == "GET, POST"


# With a trailing slash too, as the services take one (until session 35 it was 4093 "Details Not Found", the answer
# for a message that does not exist).
@pytest.mark.parametrize("service", ["sendvoice", "sendvoice/"])
@pytest.mark.parametrize("method", ["OPTIONS", "HEAD", "GET", "POST", "PUT"])
def test_a_service_the_family_does_not_have_is_unsupported_whatever_the_method(aws, account, api, method, service):
    # Given a request to a service the family does not have, with any method (those no route of the dialect takes too)
    event = service_event(account, service, method="GET")
    event["requestContext"]["http"]["method"] = method
    # When it is answered
    response = api(event)
    # Then it is told the service does not exist, as GET and POST are: no Allow sends it to methods that answer the same
    body = answer(response)
    assert (body["response-code"], body["response-description"]) == (1010, "Unsupported request type")
    assert "not a service" in body["response-details"]
    assert "Allow" not in (response.get("headers") or {})


@pytest.mark.parametrize("service", ["sendsms", "getdlr", "getbalance"])
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_a_method_a_service_does_not_take_is_told_the_methods_it_takes(aws, account, api, service, method):
    # Given a request to one of the dialect's services with a method the service does not take
    event = service_event(account, service)
    event["requestContext"]["http"]["method"] = method
    # When it is answered
    response = api(event)
    # Then it is the family's flat 1010 (HTTP 200, as every answer of the dialect), and Allow names what it takes
    body = answer(response)
    assert (body["response-code"], body["response-description"]) == (1010, "Unsupported request type")
    assert response["headers"].get("Allow") == "GET, POST"
    # And nothing was charged or queued
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_an_empty_post_is_missing_its_partner_id(aws, account, api):
    event = post_event(account, "")
    assert answer(api(event)) == {"response-code": 4091, "response-description": "No Partner ID is Set"}


# ------------------------------------------------------------------ timeToSend


def _lagos_tomorrow() -> datetime:
    return (datetime.now(ZoneInfo("Africa/Lagos")) + timedelta(days=1)).replace(second=0, microsecond=0)


@pytest.mark.parametrize(
    "render",
    [
        lambda t: t.strftime("%Y-%m-%d %H:%M"),
        lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
        lambda t: t.astimezone(UTC).isoformat(),
        lambda t: int(t.timestamp()),
        lambda t: str(int(t.timestamp())),
        # ISO 8601's basic form, as strtotime reads it: a date, not Unix time
        lambda t: t.strftime("%Y%m%d%H%M"),
        lambda t: t.strftime("%Y%m%d%H%M%S"),
        # ... also as a JSON number (a PHP client's int), which was read as Unix seconds (1976, or past year 9999)
        lambda t: int(t.strftime("%Y%m%d%H%M")),
        lambda t: int(t.strftime("%Y%m%d%H%M%S")),
        lambda t: float(t.strftime("%Y%m%d%H%M")),
    ],
    ids=[
        "seed-format",
        "with-seconds",
        "iso-8601-utc",
        "unix-number",
        "unix-string",
        "yyyyMMddHHmm",
        "yyyyMMddHHmmss",
        "yyyyMMddHHmm-number",
        "yyyyMMddHHmmss-number",
        "yyyyMMddHHmm-whole-float",
    ],
)
def test_time_to_send_in_the_account_zone_schedules_the_batch(aws, account, api, render):
    # Given a timeToSend a day ahead, written as the account's local time (Africa/Lagos, UTC+1) or absolute
    at = _lagos_tomorrow()
    # When it is posted
    [entry, _] = answer(api(post_event(account, timeToSend=render(at))))["responses"]
    # Then the batch is scheduled for that instant, charged, and not queued now
    assert entry["response-code"] == 200
    [schedule] = schedules(aws)
    assert schedule["ScheduleExpression"] == f"at({at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')})"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert balance(account["account_id"]) == 98
    assert queued_records(aws) == []


@pytest.mark.parametrize("written", [str, int], ids=["string", "number"])
def test_time_to_send_written_as_yyyymmdd_is_that_day_s_midnight_in_the_account_zone(aws, account, api, written):
    # Given timeToSend as a date in digits, two days ahead, in a string or a JSON number: strtotime("20261208") is
    # that day, as the session-key dialect reads it too (as Unix seconds it would be 1970, so sent at once and beyond
    # a cancel; the number was read so until 2026-12-06)
    day = _lagos_tomorrow().date() + timedelta(days=1)
    # When it is posted
    answered = answer(api(post_event(account, timeToSend=written(f"{day:%Y%m%d}"))))
    # Then the batch is scheduled for that day's midnight in Lagos (UTC+1), not sent now
    assert [entry["response-code"] for entry in answered["responses"]] == [200, 200]
    [schedule] = schedules(aws)
    assert schedule["ScheduleExpression"] == f"at({day - timedelta(days=1):%Y-%m-%d}T23:00:00)"
    assert queued_records(aws) == []


def test_time_to_send_of_an_account_created_for_another_country_is_read_in_that_country_s_time(aws, api):
    from sms_gateway_tools.admin import create_account

    # Given an account created, as docs/operators.md shows, for a client in Kenya
    kenyan = create_account(name="Nairobi Club", senders=["48974"], credits=100, default_country="KE")
    nairobi = ZoneInfo("Africa/Nairobi")
    at = (datetime.now(nairobi) + timedelta(days=1)).replace(second=0, microsecond=0)
    # When its client schedules with the seed's date form, written in its own (Nairobi) wall clock
    body = {
        "apikey": kenyan["apikey"],
        "partnerID": kenyan["partner_id"],
        "message": "Tonight at the cinema",
        "shortcode": "48974",
        "mobile": "0722000000",
        "timeToSend": at.strftime("%Y-%m-%d %H:%M"),
    }
    [entry] = answer(api(post_event(kenyan, body)))["responses"]
    assert entry["response-code"] == 200
    # Then the batch is scheduled for that Nairobi time, not the same wall clock in Lagos (two hours later)
    [schedule] = schedules(aws)
    assert schedule["ScheduleExpression"] == f"at({at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')})"


def test_time_to_send_in_the_past_or_empty_sends_now(aws, account, api):
    answers = [
        answer(api(get_event(account, timeToSend=when)))["responses"]
        for when in ("2019-09-01 18:00", "", "0001-01-01 00:00", "0001-01-01T00:00:00+05:00")
    ]
    assert [[entry["response-code"] for entry in entries] for entries in answers] == [[200]] * 4
    assert schedules(aws) == []
    assert len(queued_records(aws)) == 4


def test_a_scheduled_message_reads_scheduled(aws, account, api):
    at = _lagos_tomorrow().strftime("%Y-%m-%d %H:%M")
    [entry] = answer(api(get_event(account, timeToSend=at)))["responses"]
    report = answer(api(service_event(account, "getdlr", messageID=entry["messageid"])))
    assert (report["delivery-status"], report["delivery-description"]) == (11, "Scheduled")


# ------------------------------------------------------------------ idempotency


def test_a_repeat_under_the_same_idempotency_key_gets_the_same_answer_and_is_charged_once(aws, account, api):
    # Given a send with an Idempotency-Key
    event = post_event(account)
    event["headers"]["idempotency-key"] = "order-1234"
    # When it is sent twice
    first = api(event)
    second = api(event)
    # Then the second answer is the first, word for word, and only one batch was charged and queued
    assert answer(first)["responses"][0]["response-code"] == 200
    assert second["body"] == first["body"]
    assert balance(account["account_id"]) == 98
    assert len(queued_records(aws)) == 1


def test_a_retry_refused_after_its_shortcode_was_removed_answers_with_the_send_a_dispatcher_took(
    aws, account, api, monkeypatch
):
    from sms_gateway_tools.admin import remove_sender
    from tests.integration.test_idempotency_and_credits import leases_run_out, messages_of, taken_after_dying

    # Given a keyed send to two numbers whose request died right after queueing it, before it could answer
    event = post_event(account)
    event["headers"]["idempotency-key"] = "order-taken"
    # And a dispatcher took its messages (they go out, charged), and the operator removed the shortcode meanwhile
    stored = taken_after_dying(monkeypatch, account["account_id"], lambda: api(event))
    messages = messages_of(account["account_id"], stored.reference_id)
    remove_sender(account_id=account["account_id"], sender="48974")
    leases_run_out()
    # When the client retries under its key
    responses = answer(api(event))["responses"]
    # Then the retry is not refused as an invalid sender (which says nothing was sent: the client sends again):
    # it answers as the first request would have, with the message ids of the send that stands, charged once
    assert [(r["response-code"], r["mobile"]) for r in responses] == [(200, 2348020000000), (200, 2348030000000)]
    assert sorted(r["messageid"] for r in responses) == sorted(str(m.message_id) for m in messages)
    assert balance(account["account_id"]) == 98


def test_a_standing_answer_gives_an_opted_out_number_the_opt_out_code_as_the_first_answer_would(
    aws, account, api, monkeypatch
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out
    from sms_gateway_tools.admin import remove_sender
    from tests.integration.test_idempotency_and_credits import leases_run_out, taken_after_dying

    # Given a number that texted STOP to the shortcode
    store = gateway().store
    stopped = "2348050000000"
    record_opt_out(store, store, account["account_id"], stopped, "48974", now=utc_now())
    # And a keyed send to it and two others whose request died right after queueing (before it could answer):
    # it would have answered the opted-out number with 4100 "Mobile number opted out"
    event = post_event(account, mobile=f"{AIRTEL},{MTN},{stopped}")
    event["headers"]["idempotency-key"] = "order-stop"
    taken_after_dying(monkeypatch, account["account_id"], lambda: api(event))
    # And the shortcode was removed meanwhile, so the retry is refused and answers with the send that stands
    remove_sender(account_id=account["account_id"], sender="48974")
    leases_run_out()
    responses = answer(api(event))["responses"]
    by_mobile = {r["mobile"]: r for r in responses}
    assert by_mobile[2348020000000]["response-code"] == 200
    # Then the opted-out number is answered as opted out, as the first answer (and a plain send) would have
    assert by_mobile[int(stopped)]["response-code"] == 4100, by_mobile[int(stopped)]


def test_a_keyed_send_with_many_long_invalid_mobiles_is_answered_again_the_same(aws, account, api):
    # Given a keyed send to one valid number and 999 invalid entries of non-ASCII text (240 KB as UTF-8, under the
    # 256 KB body limit; its answer writes each character as a 6-byte \u escape)
    mobiles = [AIRTEL, *(f"{n:03d}" + "\u2122" * 80 for n in range(999))]
    event = post_event(account, mobile=",".join(mobiles))
    event["body"] = json.dumps(json.loads(event["body"]), ensure_ascii=False)
    event["headers"]["idempotency-key"] = "long-invalid"
    first = api(event)
    entries = answer(first)["responses"]
    assert [e["response-code"] for e in entries].count(1003) == 999
    # Each invalid entry is echoed cut short, as the answer's JSON writes it
    assert all(len(json.dumps(e["mobile"])) - 2 <= 64 for e in entries if e["response-code"] == 1003)
    # When the client repeats it under its key (its first answer was lost)
    again = api(event)
    # Then it gets the first answer again, and nothing more is sent
    assert again["body"] == first["body"]
    assert balance(account["account_id"]) == 99
    assert len(queued_records(aws)) == 1


def test_the_same_idempotency_key_with_another_request_is_refused(aws, account, api):
    first = post_event(account)
    first["headers"]["idempotency-key"] = "order-1234"
    other = post_event(account, message="Another text")
    other["headers"]["idempotency-key"] = "order-1234"
    answer(api(first))
    body = answer(api(other))
    assert body["response-code"] == 4099
    assert balance(account["account_id"]) == 98
    assert len(queued_records(aws)) == 1


def _keyed_get(account: dict[str, Any], raw_message: str, decoded: str) -> dict[str, Any]:
    """A keyed GET whose raw query carries `raw_message` (as sent) while API Gateway's queryStringParameters say
    `decoded`: `+` in a query is a space to a form reader, a plus to a plain percent-decoder."""
    event = get_event(account, message=None)
    event["rawQueryString"] += f"&message={raw_message}"
    event["queryStringParameters"]["message"] = decoded
    event["headers"]["idempotency-key"] = "get-1234"
    return event


def test_a_keyed_get_with_another_message_is_refused_though_api_gateway_decoded_both_alike(aws, account, api):
    # Given a keyed GET whose message is "1 2" as the dialect reads its raw query ('+' is a space in a query)
    first = answer(api(_keyed_get(account, "1+2", "1+2")))
    assert first["responses"][0]["response-code"] == 200
    # When another GET under the same key asks for "1+2" ('%2B'), which queryStringParameters give as the first's
    second = answer(api(_keyed_get(account, "1%2B2", "1+2")))
    # Then it is refused as a different request (4099): it is not answered with the first send, unsent
    assert second.get("response-code") == 4099, second
    assert balance(account["account_id"]) == 99
    assert len(queued_records(aws)) == 1


def test_a_keyed_get_repeated_with_its_query_written_another_way_gets_the_first_answer(aws, account, api):
    # Given a keyed GET whose message is "1 2", its space written '+'
    first = api(_keyed_get(account, "1+2", "1+2"))
    assert answer(first)["responses"][0]["response-code"] == 200
    # When it is repeated with the space written '%20' (queryStringParameters differ: they read '+' as a plus)
    again = api(_keyed_get(account, "1%202", "1 2"))
    # Then it is the same request as the dialect reads it: the first answer, nothing sent again
    assert again["body"] == first["body"]
    assert balance(account["account_id"]) == 99
    assert len(queued_records(aws)) == 1


def _stored_by_the_previous_build(api: Api, event: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """`event` answered by the build before bea1477: its key's fingerprint hashed API Gateway's
    queryStringParameters, and its record carries no fingerprint version."""
    import boto3

    from sms_gateway.bootstrap import gateway
    from sms_gateway.dialects import common, shortcode

    def previous_build(*args: Any, query: Any = None, **kwargs: Any) -> Any:
        return common.idempotent(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(shortcode, "idempotent", previous_build)
        response = api(event)
    table, name = boto3.client("dynamodb"), gateway().store.table_name
    for item in table.scan(TableName=name)["Items"]:
        if item["pk"]["S"].startswith("IDEM#"):
            table.update_item(
                TableName=name, Key={"pk": item["pk"], "sk": item["sk"]}, UpdateExpression="REMOVE fingerprint_version"
            )
    return response


def test_review_a_keyed_get_the_previous_build_stored_gets_its_first_answer_on_retry(aws, account, api, monkeypatch):
    # Given a keyed GET "Hello world" (its space written '+', as every form encoder writes it) that the previous
    # build answered and stored under its key (queryStringParameters keep the '+')
    first = _stored_by_the_previous_build(api, _keyed_get(account, "Hello+world", "Hello+world"), monkeypatch)
    assert answer(first)["responses"][0]["response-code"] == 200
    # When the client repeats it word for word under its key after the deploy (its answer was lost)
    again = api(_keyed_get(account, "Hello+world", "Hello+world"))
    # Then it gets the first answer (docs/dialects/shortcode.md: a repeat under the same key within 24 hours),
    # not 4099 "a different request" for the very request that was sent
    assert again["body"] == first["body"]
    assert len(queued_records(aws)) == 1


def test_a_keyed_get_the_previous_build_stored_still_refuses_another_request(aws, account, api, monkeypatch):
    # Given a keyed GET "Hello world" that the previous build answered and stored under its key
    first = _stored_by_the_previous_build(api, _keyed_get(account, "Hello+world", "Hello+world"), monkeypatch)
    assert answer(first)["responses"][0]["response-code"] == 200
    # When another text comes under the same key after the deploy
    other = answer(api(_keyed_get(account, "Hello+there", "Hello+there")))
    # Then it is refused as a different request, and nothing more is sent
    assert other.get("response-code") == 4099, other
    assert len(queued_records(aws)) == 1


def test_a_malformed_idempotency_key_changes_nothing(aws, account, api):
    event = post_event(account)
    event["headers"]["idempotency-key"] = "k" * 300
    assert answer(api(event))["response-code"] == 1009
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


# ------------------------------------------------------------------ getdlr and getbalance


def test_getdlr_follows_the_message_to_delivered(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey
    from sms_gateway.domain.status import MessageStatus

    # Given a message sent through the seed's GET request
    [entry] = answer(api(get_event(account)))["responses"]
    message_id = int(entry["messageid"])
    # When its delivery report is asked for before and after the carrier reports it delivered
    queued = answer(api(service_event(account, "getdlr", messageID=str(message_id))))
    message = gateway().store.find_message(account["account_id"], message_id)
    assert message is not None
    key = MessageKey(account_id=account["account_id"], reference_id=message.reference_id, message_id=message_id)
    delivered_at = datetime.now(UTC)
    gateway().store.transition(key, MessageStatus.SUBMITTED, now=delivered_at)
    gateway().store.transition(key, MessageStatus.DELIVERED, now=delivered_at + timedelta(seconds=2))
    delivered = answer(api(service_event(account, "getdlr", method="GET", messageID=str(message_id))))
    # Then it first reads scheduled (queued), then delivered, in the family's shape and the account's time zone
    assert queued["delivery-status"] == 11
    assert queued["delivery-tat"] is None
    assert list(delivered) == [
        "response-code",
        "message-id",
        "response-description",
        "delivery-status",
        "delivery-description",
        "delivery-tat",
        "delivery-networkid",
        "delivery-time",
    ]
    assert delivered["response-code"] == 200
    assert delivered["message-id"] == str(message_id)
    assert delivered["delivery-status"] == 32
    assert delivered["delivery-description"] == "DeliveredToTerminal"
    assert delivered["delivery-networkid"] == 2
    lagos = (delivered_at + timedelta(seconds=2)).astimezone(ZoneInfo("Africa/Lagos"))
    assert delivered["delivery-time"] == lagos.strftime("%Y-%m-%d %H:%M:%S")
    assert delivered["delivery-tat"].startswith("00:00:")


def test_getdlr_is_tenant_scoped(aws, account, other_account, api):
    # Given a message of one account
    [entry] = answer(api(get_event(account)))["responses"]
    # When another account asks for it, or anyone asks for an id that does not exist
    theirs = answer(api(service_event(other_account, "getdlr", messageID=entry["messageid"])))
    missing = answer(api(service_event(account, "getdlr", messageID="1234567")))
    nonsense = answer(api(service_event(account, "getdlr", messageID="abc")))
    # Then each is the same "not found"
    for body in (theirs, missing, nonsense):
        assert (body["response-code"], body["response-description"]) == (4093, "Details Not Found")
    assert answer(api(service_event(account, "getdlr")))["response-code"] == 4097
    assert answer(api(service_event(account, "getdlr", messageID="1", partnerID="0")))["response-code"] == 1006


def test_getbalance_answers_the_callers_own_balance(aws, account, other_account, api):
    # Given one send by the account
    answer(api(get_event(account)))
    # When each account asks for its balance, by POST and by GET
    mine = answer(api(service_event(account, "getbalance")))
    theirs = answer(api(service_event(other_account, "getbalance", method="GET")))
    # Then each sees its own credit in the family's shape
    assert mine == {"response-code": 200, "credit": "99.00", "partner-id": account["partner_id"]}
    assert theirs == {"response-code": 200, "credit": "100.00", "partner-id": other_account["partner_id"]}
    wrong = answer(api(service_event(account, "getbalance", apikey="nope")))
    assert wrong == {"response-code": 1006, "response-description": "Invalid credentials"}


def test_getbalance_right_after_a_send_includes_its_charge(aws, account, api, monkeypatch):
    from tests.stored_accounts import account_reads_lag

    # Given reads of the account that lag behind (a replica that has not caught up yet), and one send of one credit
    account_reads_lag(monkeypatch, account["account_id"])
    [entry] = answer(api(get_event(account)))["responses"]
    assert entry["response-code"] == 200
    from sms_gateway.bootstrap import gateway

    assert gateway().store.balance(account["account_id"]) == 99  # as stored (a consistent read)
    # When the client asks for its balance right after
    mine = answer(api(service_event(account, "getbalance")))
    # Then it is the balance after the send, not before it
    assert mine["credit"] == "99.00"


def test_services_answer_with_a_trailing_slash_too(aws, account, api):
    # Celcom-style clients call `.../api/services/getbalance/`
    event = service_event(account, "getbalance")
    event["rawPath"] += "/"
    event["requestContext"]["http"]["path"] = event["rawPath"]
    assert answer(api(event))["credit"] == "100.00"


def test_a_path_that_is_not_one_service_is_not_found_in_the_family_shape(aws, account, api):
    event = service_event(account, "getdlr/extra")
    assert answer(api(event))["response-code"] == 4093
    assert balance(account["account_id"]) == 100


def test_the_documented_tables_are_the_code_tables():
    # Given docs/dialects/shortcode.md, which clients read
    from sms_gateway.dialects.shortcode import DELIVERY_STATUS, ERROR_CODES, INTERNAL_ERROR

    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in (REPO / "docs" / "dialects" / "shortcode.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    documented_codes = {(int(r[0]), r[1]) for r in rows if r[0].isdigit() and len(r) == 3 and r[0] != "200"}
    documented_statuses = {(int(r[1]), r[2]) for r in rows if len(r) == 3 and r[1].isdigit()}
    # Then every code the module can answer is documented with the same words, and so is every delivery state
    assert set(ERROR_CODES.values()) | {INTERNAL_ERROR} <= documented_codes
    assert set(DELIVERY_STATUS.values()) == documented_statuses


def test_a_send_with_too_little_time_left_is_the_familys_try_again_error_and_changes_nothing(aws, account):
    from sms_gateway.bootstrap import gateway
    from tests.conftest import ShortOfTime

    module = load_function("api")
    response = module.handler(get_event(account), ShortOfTime(4_000))
    assert response["headers"]["Retry-After"] == "1"
    body = answer(response)
    assert (body["response-code"], body["response-description"]) == (4090, "Internal Error. Try again after 5 minutes")
    assert "nothing was stored or charged; try again" in body["response-details"]
    assert gateway().store.get_account(account["account_id"]).credits == 100


# ---------------------------------------------------------------- bodies as PHP clients send them


BOUNDARY = "------------------------d74496d66958873e"


def _multipart(fields: list[tuple[str, str]], part_headers: dict[str, str] | None = None) -> str:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (part_headers or {}).items())
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n{extra}\r\n{value}\r\n'
        for name, value in fields
    ]
    return "".join(parts) + f"--{BOUNDARY}--\r\n"


def _multipart_event(account: dict[str, Any], body: str) -> dict[str, Any]:
    # As API Gateway hands multipart/form-data to Lambda: base64-encoded.
    event = post_event(account, base64.b64encode(body.encode()).decode())
    event["isBase64Encoded"] = True
    event["headers"]["content-type"] = f"multipart/form-data; boundary={BOUNDARY}"
    return event


def _seed_fields(account: dict[str, Any], message: str) -> list[tuple[str, str]]:
    return [
        ("apikey", account["apikey"]),
        ("partnerID", account["partner_id"]),
        ("message", message),
        ("shortcode", "48974"),
        ("mobile", AIRTEL),
    ]


def _stored_texts() -> list[str]:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    items = store.client.scan(TableName=store.table_name)["Items"]
    return sorted(
        {item["text"]["S"] for item in items if "text" in item and item.get("sk", {}).get("S", "").startswith("MSG")}
    )


# ------------------------------------------------------------------ 1. multipart text is mangled and over-charged


def test_a_multipart_form_sends_non_ascii_text_as_written_and_charges_its_real_parts(aws, account, api):
    # Given PHP's `CURLOPT_POSTFIELDS => $array` (multipart/form-data, the form docs/dialects/shortcode.md supports):
    # curl sends each field without a Content-Type of its own, the text as UTF-8. 64 Cyrillic characters are one
    # UCS-2 part.
    text = "Привет! " * 8
    event = _multipart_event(account, _multipart(_seed_fields(account, text)))
    # When it is posted
    [entry] = answer(api(event))["responses"]
    assert entry["response-code"] == 200
    # Then the recipient gets the text that was sent, and one part (one credit) is charged
    assert (_stored_texts(), balance(account["account_id"])) == ([text], 99)


# ------------------------------------------------------------------ 2. malformed bodies answer "internal error"

DEEP_JSON = '{"apikey": "k", "partnerID": "1", "x": ' + "[" * 100_000


@pytest.mark.parametrize(
    ("label", "build"),
    [
        ("deeply nested JSON", lambda a: post_event(a, DEEP_JSON)),
        (
            "multipart part that is itself multipart",
            lambda a: _multipart_event(
                a, _multipart([("apikey", "x")], {"Content-Type": "multipart/mixed; boundary=z"})
            ),
        ),
        (
            "multipart part with an unknown charset",
            lambda a: _multipart_event(a, _multipart([("apikey", "x")], {"Content-Type": "text/plain; charset=foo"})),
        ),
        (
            "multipart part that is a message/rfc822",
            lambda a: _multipart_event(a, _multipart([("apikey", "x")], {"Content-Type": "message/rfc822"})),
        ),
    ],
)
def test_an_unreadable_body_is_1009_not_the_internal_error(aws, account, api, label, build):
    # Given an unauthenticated request whose body cannot be read as the fields it claims to carry
    # When it is posted
    body = answer(api(build(account)))
    # Then it is the dialect's "Unsupported data type", as docs/dialects/shortcode.md says for a body that cannot be
    # read, not 4090 "Internal Error" (which also logs an ERROR and counts RequestsFailed for the api error alarm)
    assert (body["response-code"], body["response-description"]) == (1009, "Unsupported data type"), body
    assert balance(account["account_id"]) == 100


# ------------------------------------------------------------------ 3. a form that is not UTF-8 is sent garbled


def test_a_form_whose_text_is_not_utf8_is_refused_not_sent_garbled(aws, account, api):
    # Given a form whose message is percent-encoded Latin-1 (PHP's urlencode() of an ISO-8859-1 "Café")
    body = (
        f"apikey={account['apikey']}&partnerID={account['partner_id']}&shortcode=48974&mobile={AIRTEL}&message=Caf%E9"
    )
    event = post_event(account, body)
    event["headers"]["content-type"] = "application/x-www-form-urlencoded"
    # When it is posted
    answered = answer(api(event))
    # Then it is refused like a JSON body that is not UTF-8 (1009), and nothing is sent or charged,
    # instead of "Caf\ufffd" going to the recipient
    assert answered.get("response-code") == 1009, (answered, _stored_texts())
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


@pytest.mark.parametrize("service", ["sendsms", "getdlr", "getbalance"])
def test_a_get_whose_query_is_not_utf8_is_refused_not_read_garbled(aws, account, api, service):
    # Given a GET whose query string carries a percent-escape that is not UTF-8 (PHP's urlencode() of ISO-8859-1),
    # which API Gateway's queryStringParameters decode to a replacement character
    event = service_event(account, service, method="GET", message="x", shortcode="48974", mobile=AIRTEL)
    event["rawQueryString"] += "&message=Caf%E9"
    event["queryStringParameters"]["message"] = "Caf\ufffd"
    # When it is sent
    answered = answer(api(event))
    # Then it is refused as a form of the same text is (1009), whichever service it asks, and nothing is charged
    assert answered.get("response-code") == 1009, answered
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_a_get_that_gives_mobile_twice_is_read_as_api_gateway_joins_it(aws, account, api):
    # Given a GET that gives `mobile` twice, which API Gateway joins with a comma in queryStringParameters
    event = get_event(account)
    event["rawQueryString"] += f"&mobile={AIRTEL}"
    event["queryStringParameters"]["mobile"] += f",{AIRTEL}"
    # When it is sent
    answered = answer(api(event))
    # Then it is two numbers, as ever: a GET sends to one (1104), not to the last one given
    assert answered["response-code"] == 1104, answered


# ------------------------------------------------------------------ 4. timeToSend date strings of the vendor


@pytest.mark.parametrize(
    "render",
    [
        lambda t: t.strftime("%Y/%m/%d %H:%M"),
        lambda t: f"{t.year}-{t.month}-{t.day} {t.hour}:{t.minute:02d}",  # the hour (7) is never padded here
        lambda t: t.strftime("%Y-%m-%d %I:%M %p"),
    ],
    ids=["slashes", "no-zero-padding", "12-hour-clock"],
)
def test_time_to_send_accepts_the_date_strings_that_resolve_to_a_unix_timestamp(aws, account, api, render):
    # Given the seed's tip: timeToSend is "a valid date string that resolves to a Unix timestamp" (the family's
    # PHP strtotime() reads all of these), a day ahead in the account's zone
    at = (_lagos_tomorrow() + timedelta(days=1)).replace(hour=7, minute=5)
    # When it is posted
    answered = answer(api(post_event(account, timeToSend=render(at), mobile=AIRTEL)))
    # Then the message is scheduled for that time, not refused with 4098
    assert "responses" in answered, answered
    assert len(schedules(aws)) == 1


def test_a_shortcode_message_refused_by_its_upstream_is_reported_to_the_accounts_dlr_url(aws, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageStatus, StatusChange
    from sms_gateway.logic.notify import dlr_notification
    from sms_gateway_tools.admin import create_account

    # Given an account with a DLR URL that sends with the shortcode dialect
    account = create_account(name="Cinema Club", senders=["48974"], credits=100, dlr_url="https://client.example/dlr")
    sent = answer(api(post_event(account, mobile=MTN)))["responses"][0]
    message = gateway().store.find_message(account["account_id"], int(sent["messageid"]))
    assert message is not None
    # When its upstream refuses it (the dispatcher fails it, as docs/dialects/shortcode.md describes)
    refused = message.model_copy(
        update={"status": MessageStatus.FAILED, "error_code": "upstream_rejected", "sequence": message.sequence + 1}
    )
    # Then the failure is reported to the account's DLR URL, as the dialect's docs promise
    notification = dlr_notification(StatusChange(message=refused, changed=True))
    assert notification is not None
    assert notification["payload"]["status"] == "failed"


# ------------------------------------------------------------------ review (session 31)


def test_an_invalid_number_beside_an_opted_out_one_keeps_its_own_entry(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out

    # Given a number that texted STOP to the shortcode
    store = gateway().store
    record_opt_out(store, store, account["account_id"], AIRTEL, "48974", now=utc_now())
    # When a send names it and an invalid number
    body = answer(api(post_event(account, mobile=f"{AIRTEL},12")))
    # Then each number gets its own entry, as docs/dialects/shortcode.md says ("one entry per number, in the order
    # given"): the invalid one is not reported as opted out; and nothing is sent or charged
    assert [(e["response-code"], e["mobile"]) for e in body.get("responses", [])] == [
        (4100, int(AIRTEL)),
        (1003, "12"),
    ], body
    assert balance(account["account_id"]) == 100


def test_an_invalid_number_given_twice_is_listed_once(aws, account, api):
    # Given a send that names one valid number and the same invalid number twice
    body = answer(api(post_event(account, mobile=f"{AIRTEL},12,12")))
    # Then, as docs/dialects/shortcode.md says ("A number given twice (in any form) is sent once and listed once"),
    # the invalid one is listed once
    assert [e["response-code"] for e in body["responses"]] == [200, 1003], body


def _latin1_message_event(account: dict[str, Any], message_headers: str) -> dict[str, Any]:
    """A multipart form whose message part, with `message_headers`, is "Café" written in ISO-8859-1."""
    return _multipart_message_event(account, message_headers, "Café".encode("latin-1"))


def _multipart_message_event(account: dict[str, Any], message_headers: str, message: bytes) -> dict[str, Any]:
    """A multipart form whose message part, with `message_headers`, holds the bytes `message`."""
    fields = [(name, value) for name, value in _seed_fields(account, "") if name != "message"]
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    body += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="message"\r\n{message_headers}\r\n'.encode()
        + message
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    event = post_event(account, base64.b64encode(body).decode())
    event["isBase64Encoded"] = True
    event["headers"]["content-type"] = f"multipart/form-data; boundary={BOUNDARY}"
    return event


def test_a_multipart_field_in_its_declared_latin1_charset_is_read_in_it(aws, account, api):
    # Given a multipart form whose message part declares charset=ISO-8859-1 and is written in it
    event = _latin1_message_event(account, "Content-Type: text/plain; charset=ISO-8859-1\r\n")
    # When it is posted
    answered = answer(api(event))
    # Then the text is read in that charset, as docs/dialects/shortcode.md says, and sent as written
    assert "responses" in answered, answered
    assert _stored_texts() == ["Café"]


def test_a_keyed_multipart_form_in_latin1_is_sent_once_and_answered_alike(aws, account, api):
    # Given the same form under an Idempotency-Key (its fingerprint reads a body that is not UTF-8)
    event = _latin1_message_event(account, "Content-Type: text/plain; charset=ISO-8859-1\r\n")
    event["headers"]["idempotency-key"] = "latin-1"
    # When it is posted twice
    first, again = answer(api(event)), answer(api(copy.deepcopy(event)))
    # Then the repeat gets the first answer back, and one message is charged
    assert first == again and "responses" in first, (first, again)
    assert balance(account["account_id"]) == 99


def test_a_multipart_field_in_latin1_that_names_no_charset_is_refused(aws, account, api):
    # Given a multipart form whose message part names no charset (read as UTF-8) but is written in ISO-8859-1
    event = _latin1_message_event(account, "")
    # When it is posted
    answered = answer(api(event))
    # Then it is refused with 1009, as docs/dialects/shortcode.md says of a field that is not text in its charset
    assert answered["response-code"] == 1009, answered
    assert balance(account["account_id"]) == 100


def test_a_keyed_send_refused_for_opted_out_and_invalid_numbers_is_not_kept_under_its_key(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out, remove_opt_out

    # Given a number that texted STOP to the shortcode, and a keyed send to it and an invalid number
    store = gateway().store
    record_opt_out(store, store, account["account_id"], AIRTEL, "48974", now=utc_now())
    event = post_event(account, mobile=f"{AIRTEL},12")
    event["headers"]["idempotency-key"] = "stop-then-start"
    refused = answer(api(copy.deepcopy(event)))
    assert [e["response-code"] for e in refused["responses"]] == [4100, 1003], refused
    # When the number opts back in (START) and the client retries under the same key
    remove_opt_out(store, store, account["account_id"], AIRTEL, "48974")
    again = answer(api(copy.deepcopy(event)))
    # Then the retry is answered afresh, as a refusal is (docs: only a send's answer is kept; the flat 4100 of a send
    # with no invalid number is not kept), and the number is sent to and charged
    assert [e["response-code"] for e in again["responses"]] == [200, 1003], again
    assert balance(account["account_id"]) == 99


def test_a_multipart_field_that_decodes_to_a_lone_surrogate_is_refused(aws, account, api):
    # Given a multipart form whose message part declares charset=UTF-7 (an IANA charset) and holds "+2AA-", which
    # Python decodes to a lone surrogate: no text, and one that DynamoDB and every webhook would refuse
    event = _multipart_message_event(account, "Content-Type: text/plain; charset=UTF-7\r\n", b"Caf+2AA-")
    # When it is posted
    response = api(event)
    # Then it is refused with 1009, as docs/dialects/shortcode.md says of a field that is not text in its charset
    # (and as a JSON body with a lone \ud800 escape is), and nothing is charged
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]).get("response-code") == 1009, response
    assert balance(account["account_id"]) == 100


@pytest.mark.parametrize("charset", ["unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined"])
def test_a_multipart_field_in_a_python_codec_that_is_no_charset_is_refused(aws, account, api, charset):
    # Given a multipart form whose message part names one of Python's codecs that is no charset (an escape syntax,
    # a domain name's encoding), which docs/dialects/shortcode.md says is refused
    event = _multipart_message_event(account, f"Content-Type: text/plain; charset={charset}\r\n", b"Cafe")
    # When it is posted
    answered = answer(api(event))
    # Then it is refused with 1009, not read (unicode_escape would read "\\ud800" as a lone surrogate), and nothing
    # is charged
    assert answered["response-code"] == 1009, answered
    assert balance(account["account_id"]) == 100


@pytest.mark.parametrize("written", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_message_that_is_no_finite_number_is_refused_not_sent_as_nan_or_inf(aws, account, api, written):
    # Given the seed's POST body whose message is a number Python reads as NaN or infinite (JSON has no NaN or
    # Infinity; 1e400 overflows a double), where a number message is otherwise sent as its digits
    payload = json.dumps({"apikey": account["apikey"], "partnerID": account["partner_id"], "message": "MESSAGE"})
    payload = payload.replace('"MESSAGE"', written)[:-1] + ', "shortcode": "48974", "mobile": "2348020000000"}'
    # When it is posted
    body = answer(api(post_event(account, payload)))
    # Then it is refused as a value of the wrong type, and nothing is sent or charged (it was sent as "nan" or "inf")
    assert (body["response-code"], body["response-description"]) == (1009, "Unsupported data type"), body
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_a_message_that_is_a_whole_number_too_large_for_a_double_is_sent_as_its_digits(aws, account, api):
    # Given the seed's POST body whose message is an integer of 300 digits (no double holds it; Python's int does)
    digits = "9" * 300
    payload = json.dumps({"apikey": account["apikey"], "partnerID": account["partner_id"], "message": "MESSAGE"})
    payload = payload.replace('"MESSAGE"', digits)[:-1] + ', "shortcode": "48974", "mobile": "2348020000000"}'
    # When it is posted
    [entry] = answer(api(post_event(account, payload)))["responses"]
    # Then it is sent as those digits, in two parts
    assert entry["response-code"] == 200, entry
    assert balance(account["account_id"]) == 98


@pytest.mark.parametrize("mobile", [[float(AIRTEL), float(MTN)], float(AIRTEL)], ids=["list", "alone"])
def test_mobiles_a_spreadsheet_gave_as_whole_floats_are_sent_to(aws, account, api, mobile):
    # Given the seed's POST body whose numbers came from a spreadsheet column (pandas makes a column with a blank
    # cell float64, PhpSpreadsheet reads a numeric cell as a float), written by json.dumps / json_encode as
    # 2348020000000.0
    # When it is posted
    body = answer(api(post_event(account, mobile=mobile)))
    # Then each is read as its digits, as a whole number is: sent to those numbers
    expected = [int(AIRTEL), int(MTN)] if isinstance(mobile, list) else [int(AIRTEL)]
    assert [(e["response-code"], e["mobile"]) for e in body["responses"]] == [(200, n) for n in expected], body
    assert balance(account["account_id"]) == 100 - len(expected)


@pytest.mark.parametrize("mobile", [2348020000000.5, [2348020000000.5], True, [True]])
def test_a_mobile_that_is_a_fraction_or_a_boolean_is_refused(aws, account, api, mobile):
    # Given the seed's POST body whose number is a JSON number with a fraction, or a boolean: no phone number
    # When it is posted
    body = answer(api(post_event(account, mobile=mobile)))
    # Then it is refused as a value of the wrong type, and nothing is sent or charged
    assert (body["response-code"], body["response-description"]) == (1009, "Unsupported data type"), body
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [("application/json", json.dumps), ("application/x-www-form-urlencoded", urlencode), (None, json.dumps)],
    ids=["json", "form", "json-without-content-type"],
)
def test_a_body_that_starts_with_a_utf8_bom_is_read_as_its_fields(aws, account, api, content_type, encode):
    # Given the seed's POST as Windows tools write its body: with a byte order mark before it (PowerShell's
    # Out-File, .NET's Encoding.UTF8), which RFC 8259 section 8.1 lets a parser ignore
    fields = {**json.loads(post_event(account)["body"]), "mobile": AIRTEL}
    event = post_event(account, "\ufeff" + encode(fields))
    event["headers"].pop("content-type")
    if content_type:
        event["headers"]["content-type"] = content_type
    # When it is posted
    [entry] = answer(api(event))["responses"]
    # Then it is sent, as the same body without the mark is (the form's first field was read as "\ufeffapikey")
    assert entry["response-code"] == 200, entry
    assert balance(account["account_id"]) == 99


def test_a_message_written_as_a_whole_float_is_sent_as_its_digits(aws, account, api):
    # Given the seed's POST body whose message is a one-time code a client wrote as a double (JSON.NET's 482913.0),
    # as session-key and 9bits read the same value
    # When it is posted
    [entry] = answer(api(post_event(account, message=482913.0, mobile=AIRTEL)))["responses"]
    # Then it is sent as the code's digits, not the text "482913.0"
    assert entry["response-code"] == 200, entry
    assert _stored_texts() == ["482913"]
