"""The session-key dialect (seed 5) through the real `api` handler on moto: login, send, read, cancel, status."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import load_event
from tests.integration.test_send_path import FakeContext, balance, load_function, queued_records

Api = Callable[[dict[str, Any]], dict[str, Any]]
LAGOS = ZoneInfo("Africa/Lagos")  # the accounts' time zone (create_account's default)
VALID = "+39349123456789"  # the C# and Perl samples' recipient
NIGERIAN = "+2348020000000"


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Cinema Club", senders=["48974", "CINEMA"], credits=100)


@pytest.fixture
def other_account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Other Club", senders=["55555"], credits=100)


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def login_event(username: str | None, password: str | None) -> dict[str, Any]:
    event = load_event("api-login.json", USERNAME="u", PASSWORD="p")
    query = {k: v for k, v in {"username": username, "password": password}.items() if v is not None}
    event["queryStringParameters"] = query or None
    event["rawQueryString"] = urlencode(query)
    return event


def log_in(api: Api, account: dict[str, Any]) -> tuple[str, str]:
    response = api(login_event(account["username"], account["password"]))
    assert response["statusCode"] == 200, response
    user_key, session_key = response["body"].split(";")
    return user_key, session_key


def sms_event(keys: tuple[str, str] | None, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The seed's POST /sms (its Python sample's body); `body` replaces it, `headers` replace the keys' headers."""
    user_key, session_key = keys or ("", "")
    event = load_event("api-sms-session-key.json", USER_KEY=user_key, SESSION_KEY=session_key)
    if keys is None or headers is not None:
        del event["headers"]["user_key"], event["headers"]["session_key"]
    event["headers"].update(headers or {})
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


def route_event(method: str, path: str, keys: tuple[str, str], query: dict[str, str] | None = None) -> dict[str, Any]:
    event = sms_event(keys)
    event.pop("body")
    event["routeKey"] = f"{method} {path}"
    event["rawPath"] = path
    event["requestContext"]["http"].update(method=method, path=path)
    event["queryStringParameters"] = query
    event["rawQueryString"] = urlencode(query or {})
    return event


def answer(response: dict[str, Any]) -> dict[str, Any]:
    return json.loads(response["body"])


def seed_body(**fields: Any) -> dict[str, Any]:
    body = {
        "message": "Hello world!",
        "message_type": "N",
        "returnCredits": False,
        "recipient": [VALID],
        "sender": None,
    }
    return {**body, **fields}


def stored_batch(account_id: str, order_id: str) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store.get_batch(account_id, int(order_id))


def batch_count(account_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    found = store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :batch)",
        ExpressionAttributeValues={":pk": {"S": f"ACC#{account_id}"}, ":batch": {"S": "BATCH#"}},
    )
    return len(found["Items"])


def schedules(env: dict[str, str]) -> list[str]:
    import boto3

    listed = boto3.client("scheduler").list_schedules(GroupName=env["SCHEDULE_GROUP_NAME"])
    return [s["Name"] for s in listed["Schedules"]]


def in_lagos(delta: timedelta) -> datetime:
    """Wall-clock time in the account's zone, naive, as a client on that clock would write it."""
    return (datetime.now(UTC) + delta).astimezone(LAGOS).replace(tzinfo=None)


def gson(moment: datetime) -> str:
    """Gson's default date format (US locale): 'Aug 18, 2017 1:31:00 PM'."""
    return f"{moment:%b} {moment.day}, {moment.year} {moment.hour % 12 or 12}:{moment:%M:%S %p}"


# ------------------------------------------------------------------ login


def test_login_answers_user_key_and_session_key_as_text_and_stores_only_a_hash(aws, account, api):
    # Given an account's username and password, in the seed's query string
    # When it logs in
    response = api(login_event(account["username"], account["password"]))
    # Then the answer is `user_key;session_key` as plain text, the user_key naming the account
    assert response["statusCode"] == 200
    assert response["headers"]["Content-Type"].startswith("text/plain")
    user_key, session_key = response["body"].split(";")
    assert user_key == account["account_id"]
    assert len(session_key) >= 40
    # And the session is stored under the key's SHA-256 only, with an expiry about 24 hours away
    import boto3

    items = boto3.client("dynamodb").scan(TableName=aws["TABLE_NAME"])["Items"]
    assert session_key not in json.dumps(items)
    [session] = [i for i in items if i["pk"]["S"] == f"SESSION#{hashlib.sha256(session_key.encode()).hexdigest()}"]
    assert session["account_id"]["S"] == account["account_id"]
    lifetime = int(session["expires_at"]["N"]) - datetime.now(UTC).timestamp()
    assert 23.9 * 3600 < lifetime <= 24 * 3600
    # And each login gets a fresh key
    assert log_in(api, account)[1] != session_key


def test_bad_password_and_unknown_user_get_the_same_401(aws, account, api):
    # Given a wrong password for a real user, and a user that does not exist
    wrong_password = api(login_event(account["username"], "not-the-password"))
    unknown_user = api(login_event("nobody-here", "not-the-password"))
    # Then both are refused with the same 401 answer, which says nothing about which part was wrong
    assert wrong_password["statusCode"] == unknown_user["statusCode"] == 401
    assert wrong_password["body"] == unknown_user["body"]
    assert answer(wrong_password) == {"result": "KO", "error": "invalid username or password"}


@pytest.mark.parametrize(("username", "password"), [(None, None), ("someone", None), (None, "secret"), ("", "")])
def test_missing_credentials_get_a_401(aws, api, username, password):
    response = api(login_event(username, password))
    assert response["statusCode"] == 401
    assert answer(response)["result"] == "KO"


def test_login_also_takes_http_basic_credentials(aws, account, api):
    # Given the family's other way to log in: Basic authentication, no query string
    event = login_event(None, None)
    token = base64.b64encode(f"{account['username']}:{account['password']}".encode()).decode()
    event["headers"]["authorization"] = f"Basic {token}"
    # Then it answers the same pair
    response = api(event)
    assert response["statusCode"] == 200
    assert response["body"].split(";")[0] == account["account_id"]


def table_items(aws: dict[str, str]) -> list[dict[str, Any]]:
    import boto3

    return boto3.client("dynamodb").scan(TableName=aws["TABLE_NAME"], ConsistentRead=True)["Items"]


@pytest.mark.parametrize("route", ["/login", "/status"])
def test_a_get_whose_query_is_not_utf8_is_refused_and_changes_nothing(aws, account, api, route):
    # Given a GET whose query carries a percent-escape that is not UTF-8 (PHP's urlencode() of ISO-8859-1), which
    # API Gateway's queryStringParameters decode to a replacement character: a login whose password is 'pässwort'
    if route == "/login":
        event = login_event(account["username"], "p\ufffdsswort")
        event["rawQueryString"] = urlencode({"username": account["username"]}) + "&password=p%E4sswort"
    else:
        event = route_event("GET", route, log_in(api, account), {"getMoney": "true", "note": "Caf\ufffd"})
        event["rawQueryString"] = "getMoney=true&note=Caf%E9"
    before = table_items(aws)
    # When it is sent
    response = api(event)
    # Then it is refused in the family's shape (400, details in the body), not read as other text: no failed login
    # is counted against the username, nothing is stored
    assert response["statusCode"] == 400, response
    assert answer(response)["result"] == "KO"
    assert "not UTF-8" in answer(response)["error"]
    assert table_items(aws) == before


def test_a_login_without_credentials_is_challenged_for_http_basic(aws, account, api):
    """docs/dialects/session-key.md: /login also takes `Authorization: Basic`. RFC 9110 section 11.6.1: a 401 MUST
    carry WWW-Authenticate; a client that sends Basic credentials only when challenged gets nothing to answer."""
    # Given a client that asks /login first without credentials, as a non-preemptive Basic client does
    response = api(login_event(None, None))
    assert response["statusCode"] == 401
    # Then the answer challenges it for Basic credentials, which it then sends and logs in with
    headers = {name.lower(): value for name, value in (response.get("headers") or {}).items()}
    assert headers.get("www-authenticate") == 'Basic realm="sms-gateway", charset="UTF-8"', headers
    # And a wrong password is challenged the same way
    wrong = api(login_event(account["username"], "wrong"))
    assert {name.lower(): value for name, value in wrong["headers"].items()}["www-authenticate"].startswith("Basic ")


# ------------------------------------------------------------------ sessions on /sms


def test_concurrent_successful_logins_are_never_refused_as_failed_logins(aws, account, monkeypatch):
    """docs/dialects/session-key.md: "a successful login gives its place back, so successes never count". Eleven
    workers running the seed's sample at once (each one logs in first, as every sample's main does) must all get in."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.errors import GatewayError
    from sms_gateway.logic import sessions

    store = gateway().store
    workers = 11
    lock, reservations, all_reserved = threading.Lock(), [0], threading.Event()
    real_reserve, real_check = store.begin_login_attempt, store.password_login

    def reserve(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_reserve(*args, **kwargs)
        finally:
            with lock:
                reservations[0] += 1
                if reservations[0] == workers:
                    all_reserved.set()

    def check(username: str, password: str, **source: Any) -> Any:
        # Each login's password check (scrypt, tens of milliseconds) overlaps the others' reservations, as it
        # does when the logins arrive together: it goes on once all eleven have reserved their place.
        all_reserved.wait(timeout=10)
        return real_check(username, password, **source)

    monkeypatch.setattr(store, "begin_login_attempt", reserve)
    monkeypatch.setattr(store, "password_login", check)
    outcomes: list[str] = []

    def one_login() -> None:
        try:
            sessions.log_in(store, account["username"], account["password"], now=datetime.now(UTC))
            outcomes.append("ok")
        except GatewayError as error:
            outcomes.append(f"{error.code}: {error.message}")

    threads = [threading.Thread(target=one_login) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then every one of the right-password logins gets a session; none is told of "failed logins"
    assert outcomes == ["ok"] * workers, outcomes


def logins_in_flight(username: str, count: int, started_at: datetime) -> None:
    """`count` logins of `username` begun at `started_at` and not ended (being checked, or their Lambda died)."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import sessions
    from sms_gateway.ports import LoginAttempt

    window_seconds = int(sessions.LOGIN_WINDOW.total_seconds())
    window = int(datetime.now(UTC).timestamp()) // window_seconds  # the window a login now counts in
    for _ in range(count):
        attempt = gateway().store.begin_login_attempt(
            username,
            window,
            source="203.0.113.10",  # events/api-login.json's address
            known_source=False,
            max_failures=sessions.MAX_FAILED_LOGINS,
            max_in_flight=sessions.MAX_LOGINS_IN_FLIGHT,
            started_at=started_at,
            stale_before=started_at - sessions.LOGIN_IN_FLIGHT_FOR,
            expires_at=started_at + 2 * sessions.LOGIN_WINDOW,
        )
        assert isinstance(attempt, LoginAttempt)


def test_a_login_beyond_those_in_flight_is_told_to_retry_in_a_second_not_of_failed_logins(
    aws, account, api, monkeypatch
):
    """At most 20 logins of a username are checked at once. The 21st was refused like a locked-out username: "too
    many failed logins ... try again in <up to 900> s", though none had failed and a place frees within a password
    check, so a client whose workers all log in as they start was sent away for up to a quarter of an hour."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import sessions

    store = gateway().store
    real_check = store.password_login
    checking, go_on = threading.Semaphore(0), threading.Event()

    def slow_check(username: str, password: str, **source: Any) -> Any:
        checking.release()
        go_on.wait(timeout=10)
        return real_check(username, password, **source)

    # Given as many right-password logins of the username being checked right now as may be
    monkeypatch.setattr(store, "password_login", slow_check)
    outcomes: list[str] = []
    workers = [
        threading.Thread(target=lambda: outcomes.append(log_in(api, account)[0]))
        for _ in range(sessions.MAX_LOGINS_IN_FLIGHT)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        assert checking.acquire(timeout=10)
    # When one more arrives
    response = api(login_event(account["username"], account["password"]))
    go_on.set()
    for worker in workers:
        worker.join(timeout=30)
    # Then it is told to come back in a second, and not that logins failed; and the others all got in
    assert response["statusCode"] == 429
    assert response["headers"]["Retry-After"] == "1"
    assert answer(response) == {"result": "KO", "error": "too many logins of this username at once: retry in 1 s"}
    assert outcomes == [account["account_id"]] * len(workers)


def test_logins_whose_lambda_died_hold_their_place_only_for_a_minute(aws, account, api):
    """A login whose invocation dies between taking its place and giving it back (a timeout, out of memory) never
    gives it back: twenty such locked the username out until its 15-minute window ended."""
    from sms_gateway.logic import sessions

    # Given the username's every place held by logins that began over a minute ago and never ended
    now = datetime.now(UTC)
    began = now - sessions.LOGIN_IN_FLIGHT_FOR - timedelta(seconds=1)
    logins_in_flight(account["username"], sessions.MAX_LOGINS_IN_FLIGHT, began)
    # When the right password comes now, then it gets in: their places count as free
    assert api(login_event(account["username"], account["password"]))["statusCode"] == 200


def test_a_username_longer_than_a_dynamodb_key_gets_the_familys_401_not_a_500(aws, account, api, monkeypatch):
    """DynamoDB refuses a GetItem whose partition key is over 2048 bytes (ValidationException: "Size of hashkey has
    exceeded the maximum size limit of2048 bytes"); moto enforces that limit on writes only, so the read is made
    to behave as DynamoDB's here."""
    from botocore.exceptions import ClientError

    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    real_get_item = client.get_item

    def get_item(**kwargs: Any) -> Any:
        if len(kwargs["Key"]["pk"]["S"].encode()) > 2048:
            raise ClientError(
                {
                    "Error": {
                        "Code": "ValidationException",
                        "Message": "One or more parameter values were invalid: Size of hashkey has exceeded the "
                        "maximum size limit of2048 bytes",
                    }
                },
                "GetItem",
            )
        return real_get_item(**kwargs)

    monkeypatch.setattr(client, "get_item", get_item)
    # Given an unauthenticated /login whose username is 3000 characters (well within the HTTP API's request limit)
    response = api(login_event("u" * 3000, "whatever"))
    # Then it is refused like any unknown username: the family's 401, not an internal error
    assert response["statusCode"] == 401, response
    assert answer(response) == {"result": "KO", "error": "invalid username or password"}


def logged_in_at(api: Api, account: dict[str, Any], moment: datetime) -> tuple[str, str]:
    from sms_gateway.dialects import sessionkey

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sessionkey, "utc_now", lambda: moment)
        return log_in(api, account)


def test_an_expired_session_is_refused_and_changes_nothing(aws, account, api):
    # Given a session opened 24 hours and a minute ago (its item still there: DynamoDB's TTL deletes lazily)
    keys = logged_in_at(api, account, datetime.now(UTC) - timedelta(hours=24, minutes=1))
    # When it is used to send
    response = api(sms_event(keys))
    # Then the send is refused with 401 and nothing is charged or queued
    assert response["statusCode"] == 401
    assert answer(response) == {"result": "KO", "error": "invalid or expired session: log in again with GET /login"}
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


def test_a_session_just_short_of_its_lifetime_still_works(aws, account, api):
    keys = logged_in_at(api, account, datetime.now(UTC) - timedelta(hours=23, minutes=59))
    assert api(sms_event(keys))["statusCode"] == 201


@pytest.mark.parametrize(
    "names",
    [
        ("user_key", "Session_key"),  # as the Java, Python, Ruby and C# samples write them
        ("User_Key", "SESSION_KEY"),
        ("user-key", "session-key"),  # what Perl makes of them without the ':' the seed warns about
    ],
)
def test_header_names_are_case_insensitive(aws, account, api, names):
    user_key, session_key = log_in(api, account)
    event = sms_event((user_key, session_key), headers={names[0]: user_key, names[1]: session_key})
    response = api(event)
    assert response["statusCode"] == 201, response


@pytest.mark.parametrize("case", ["no headers", "wrong session key", "another account's user_key", "no user_key"])
def test_bad_session_headers_get_a_401_and_change_nothing(aws, account, other_account, api, case):
    # Given a request whose keys are wrong in one way
    user_key, session_key = log_in(api, account)
    headers = {
        "no headers": {},
        "wrong session key": {"user_key": user_key, "session_key": "x" * 43},
        "another account's user_key": {"user_key": other_account["account_id"], "session_key": session_key},
        "no user_key": {"session_key": session_key},
    }[case]
    # When it is posted
    response = api(sms_event(None, headers=headers))
    # Then it is a 401 in the family's shape, and nothing moved
    assert response["statusCode"] == 401
    assert answer(response)["result"] == "KO"
    # (no challenge: the session headers are no HTTP authentication scheme a client could answer)
    assert "www-authenticate" not in {name.lower() for name in response["headers"]}
    assert balance(account["account_id"]) == 100
    assert balance(other_account["account_id"]) == 100
    assert queued_records(aws) == []


# ------------------------------------------------------------------ the seed's samples


def seed_sample(sample: str) -> tuple[Any, bool, bool]:
    """(request body as the sample writes it, returnCredits, scheduled?), built when the test runs. Where the
    seed leaves the recipient list out (Java, Node, Ruby) or prints a placeholder (PHP, Python), a valid
    number stands in, as the seed tells its reader to do."""
    in_five_minutes = in_lagos(timedelta(minutes=5))
    samples: dict[str, tuple[Any, bool, bool]] = {
        # Gson: the class's field order, the null sender left out, Date in Gson's default format
        "java": (
            {
                "message": "Hello world!",
                "message_type": "N",
                "returnCredits": False,
                "recipient": [VALID],
                "scheduled_delivery_time": gson(in_five_minutes),
            },
            False,
            True,
        ),
        # json_encode of the PHP array, with date('YmdHis', strtotime("+5 minutes"))
        "php": (
            {
                "message": "Hello world!",
                "message_type": "N",
                "returnCredits": False,
                "recipient": [NIGERIAN],
                "sender": None,
                "scheduled_delivery_time": in_five_minutes.strftime("%Y%m%d%H%M%S"),
            },
            False,
            True,
        ),
        # json.dumps(sendsms, default=json_serial): datetime.isoformat(), microseconds and all
        "python": (
            {
                "message": "Hello world!",
                "message_type": "N",
                "returnCredits": False,
                "recipient": [NIGERIAN],
                "sender": None,
                "scheduled_delivery_time": (in_five_minutes + timedelta(microseconds=123456)).isoformat(),
            },
            False,
            True,
        ),
        # request's json: true, with the sample's literal date (long past: sent at once)
        "node": (
            {
                "returnCredits": True,
                "recipient": [VALID],
                "scheduled_delivery_time": "20171223101010",
                "message": "Hello world!",
                "message_type": "N",
            },
            True,
            False,
        ),
        "ruby": (
            {"returnCredits": True, "recipient": [VALID], "message": "Hello world!", "message_type": "N"},
            True,
            False,
        ),
        # JSON.NET: every field, nulls included, DateTime? as ISO 8601 without an offset
        "csharp": (
            {
                "message": "Hello World!",
                "message_type": "N",
                "sender": None,
                "scheduled_delivery_time": "2017-08-18T13:31:00",
                "recipient": [VALID],
                "returnCredits": False,
            },
            False,
            False,
        ),
        "perl": ({"message": "Hello world!", "message_type": "N", "recipient": [VALID]}, False, False),
    }
    return samples[sample]


@pytest.mark.parametrize("sample", ["java", "php", "python", "node", "ruby", "csharp", "perl"])
def test_each_seed_sample_is_accepted_with_201(aws, account, api, sample):
    # Given the sample's request body, as its language's serializer writes it
    body, return_credits, scheduled = seed_sample(sample)
    keys = log_in(api, account)
    # When it is posted with the session headers
    response = api(sms_event(keys, body))
    # Then the answer is 201 in the seed's shape
    assert response["statusCode"] == 201, response
    result = answer(response)
    assert result["result"] == "OK"
    assert result["order_id"].isdigit()
    assert result["internal_order_id"] == result["order_id"]
    assert result["total_sent"] == 1
    # And remaining_credits is there exactly when returnCredits asked for it
    if return_credits:
        assert result["remaining_credits"] == 99
    else:
        assert "remaining_credits" not in result
    assert list(result)[:3] == ["result", "order_id", "total_sent"]
    # And one credit was charged, and the order sent now or scheduled for the sample's time
    assert balance(account["account_id"]) == 99
    batch = stored_batch(account["account_id"], result["order_id"])
    assert batch.sender == "48974"  # the account's default sender: the samples give none
    assert batch.status == ("scheduled" if scheduled else "queued")
    assert batch.dialect == "session-key"
    assert len(queued_records(aws)) == (0 if scheduled else 1)


def test_the_seeds_placeholder_number_is_refused_with_its_reason(aws, account, api):
    # Given the PHP and Python samples' recipient exactly as printed (+34 912 345 678 is Spain's longest form)
    keys = log_in(api, account)
    response = api(sms_event(keys, seed_body(recipient=["+349123456789"])))
    # Then the send is refused with the number and why, and nothing moved
    assert response["statusCode"] == 400
    assert answer(response)["error"] == "invalid recipient number: '+349123456789': too long"
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []


@pytest.mark.parametrize("flag", [True, False])
def test_return_credits_adds_the_balance_after_the_send(aws, account, api, flag):
    keys = log_in(api, account)
    result = answer(api(sms_event(keys, seed_body(returnCredits=flag, recipient=[VALID, NIGERIAN]))))
    assert result["total_sent"] == 2
    assert result.get("remaining_credits") == (98 if flag else None)


def test_message_types_are_priced_by_tier(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.pricing import PriceTable

    # Given LL at 1 credit per part, N at 3, and L left at the default of 1
    gateway().store.save_price_table(PriceTable().with_price("LL", "*", 1).with_price("N", "*", 3))
    keys = log_in(api, account)
    charged = []
    for message_type in ("LL", "N", "L", "GP"):  # GP: Skebby's name for the high-quality tier, N
        before = balance(account["account_id"])
        response = api(sms_event(keys, seed_body(message_type=message_type, returnCredits=True)))
        assert response["statusCode"] == 201, response
        charged.append(before - balance(account["account_id"]))
        # And returnCredits counts credits used, as the family's returnCredits does
        assert answer(response)["total_sent"] == charged[-1]
    assert charged == [1, 3, 1, 3]
    order = answer(api(sms_event(keys, seed_body(message_type="LL"))))["order_id"]
    assert stored_batch(account["account_id"], order).route_tier == "LL"


def test_a_given_sender_must_be_registered(aws, account, api):
    keys = log_in(api, account)
    good = api(sms_event(keys, seed_body(sender="CINEMA")))
    assert good["statusCode"] == 201
    assert stored_batch(account["account_id"], answer(good)["order_id"]).sender == "CINEMA"

    refused = api(sms_event(keys, seed_body(sender="NOTMINE")))
    assert refused["statusCode"] == 400
    assert answer(refused) == {"result": "KO", "error": "sender 'NOTMINE' is not registered for this account"}
    assert balance(account["account_id"]) == 99


def test_allow_invalid_recipients_sends_to_the_valid_ones_and_lists_the_others(aws, account, api):
    keys = log_in(api, account)
    body = seed_body(recipient=[NIGERIAN, "12"], allowInvalidRecipients=True)
    response = api(sms_event(keys, body))
    assert response["statusCode"] == 201
    result = answer(response)
    assert result["total_sent"] == 1
    assert result["invalid_recipients"] == [{"recipient": "12", "reason": "too short"}]
    assert balance(account["account_id"]) == 99


def test_an_order_refused_for_invalid_numbers_lists_each_of_them_with_its_reason(aws, account, api):
    # Given an order to one valid number and a dozen mistyped ones, without allowInvalidRecipients
    keys = log_in(api, account)
    invalid = [f"23480{i:02d}" for i in range(12)]
    # When it is posted
    response = api(sms_event(keys, seed_body(recipient=[NIGERIAN, *invalid])))
    # Then it is refused, changing nothing, its error naming the first ten and `invalid_recipients` each one with
    # its reason, as an order with allowInvalidRecipients lists them (docs/dialects/session-key.md, errors)
    assert response["statusCode"] == 400, response
    result = answer(response)
    assert (result["result"], result["error"].endswith("(and 2 more)")) == ("KO", True), result
    assert [entry["recipient"] for entry in result["invalid_recipients"]] == invalid, result
    assert all(entry["reason"] for entry in result["invalid_recipients"]), result
    assert balance(account["account_id"]) == 100
    assert batch_count(account["account_id"]) == 0


@pytest.mark.parametrize("return_credits", [True, False], ids=["credits", "messages"])
def test_a_send_that_stands_after_its_queueing_failed_counts_and_names_only_what_goes_out(
    aws, account, api, monkeypatch, return_credits
):
    """docs/dispatch.md: queueing fails after a dispatcher claimed one message, so the send stands with the other
    two failed (`not_queued`) and refunded. The answer counted all three as sent and named neither of the others."""
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now

    real_enqueue = SqsDispatchQueue.enqueue

    def took_it_and_one_was_claimed(self, commands):
        real_enqueue(self, commands)
        store = gateway().store
        first = store.list_messages(account["account_id"], commands[0].reference_id, limit=10)[0][0]
        store.claim_for_dispatch(first.key, now=utc_now(), lease_seconds=60)
        raise TimeoutError("Read timeout on endpoint URL")

    # Given a send of three whose queueing fails once a dispatcher has claimed the first
    monkeypatch.setattr(SqsDispatchQueue, "enqueue", took_it_and_one_was_claimed)
    keys = log_in(api, account)
    numbers = ["+2348020000001", "+2348030000002", "+2348020000003"]
    response = api(sms_event(keys, seed_body(recipient=numbers, returnCredits=return_credits, returnRemaining=True)))
    # Then it stands, and its answer counts the one message going out, in credits or messages, as charged
    assert response["statusCode"] == 201, response
    body = answer(response)
    messages = gateway().store.list_messages(account["account_id"], int(body["order_id"]), limit=10)[0]
    not_sent = sorted(m.msisdn.lstrip("+") for m in messages if m.status == "failed")
    assert len(not_sent) == 2
    assert body["remaining_credits"] == balance(account["account_id"]) == 99
    assert body["total_sent"] == 1
    # And it names the two numbers not sent, saying to send to them again
    assert sorted(r["recipient"] for r in body["invalid_recipients"]) == not_sent
    assert all("could not be queued in time" in r["reason"] for r in body["invalid_recipients"])


def test_a_naive_time_is_read_in_the_given_time_zone(aws, account, api):
    # Given a wall-clock time 5 minutes ahead in Tokyo, with scheduled_delivery_timezone saying so
    tokyo = (datetime.now(UTC) + timedelta(minutes=5)).astimezone(ZoneInfo("Asia/Tokyo"))
    body = seed_body(scheduled_delivery_time=tokyo.strftime("%Y%m%d%H%M%S"), scheduled_delivery_timezone="Asia/Tokyo")
    keys = log_in(api, account)
    result = answer(api(sms_event(keys, body)))
    # Then the order is scheduled for that moment (read in Lagos it would be long past)
    batch = stored_batch(account["account_id"], result["order_id"])
    assert batch.status == "scheduled"
    send_at = datetime.fromisoformat(batch.send_at)
    assert abs(send_at - tokyo.replace(microsecond=0)) < timedelta(seconds=1)


@pytest.mark.parametrize("number", [int, float], ids=["int", "whole-float"])
@pytest.mark.parametrize("form", ["%Y%m%d", "%Y%m%d%H%M", "%Y%m%d%H%M%S"])
def test_a_scheduled_time_in_the_basic_form_as_a_json_number_is_that_wall_clock_time(aws, account, api, form, number):
    # Given a time two days ahead in Lagos in yyyyMMdd[HHmm[ss]], written as a JSON number (a PHP client's int, or a
    # JavaScript client's 20261208.0, which was refused as no text)
    lagos = (datetime.now(UTC) + timedelta(days=2)).astimezone(ZoneInfo("Africa/Lagos"))
    written = lagos.strftime(form)
    keys = log_in(api, account)
    result = answer(api(sms_event(keys, seed_body(scheduled_delivery_time=number(written)))))
    # Then the order is scheduled for that wall-clock time in the account's zone, as the same digits in a string are
    batch = stored_batch(account["account_id"], result["order_id"])
    assert batch.status == "scheduled"
    wall_clock = datetime.strptime(written, form).replace(tzinfo=ZoneInfo("Africa/Lagos"))
    assert datetime.fromisoformat(batch.send_at) == wall_clock.astimezone(UTC)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"message_type": "N", "recipient": [VALID]}, "message: Field required"),
        (seed_body(message=""), "message: String should have at least 1 character"),
        (seed_body(message_type="X"), "message_type: must be N, L or LL, got 'X'"),
        (seed_body(recipient=[]), "recipient: List should have at least 1 item"),
        (seed_body(recipient=[NIGERIAN, "12"]), "invalid recipient number: '12': too short"),
        (seed_body(recipient=["12"], allowInvalidRecipients=True), "invalid recipient number: '12'"),
        (seed_body(sender="NOTMINE"), "not registered"),
        (seed_body(scheduled_delivery_time="tomorrow"), "scheduled_delivery_time: 'tomorrow' is not a date-time"),
        (seed_body(scheduled_delivery_time="20170230101010"), "no such date or time"),
        (seed_body(scheduled_delivery_time=in_lagos(timedelta(days=91)).isoformat()), "more than 90 days ahead"),
        (seed_body(scheduled_delivery_time="2030-01-01T10:00", scheduled_delivery_timezone="Mars/Base"), "IANA"),
        (seed_body(scheduled_delivery_time="2030-01-01T10:00", scheduled_delivery_timezone="Europe"), "IANA"),
        (seed_body(scheduled_delivery_time="2030-01-01T10:00", scheduled_delivery_timezone="x" * 256), "IANA"),
        (seed_body(order_id="mine-1"), "custom order ids are not supported"),
        (seed_body(recipient=[f"+23480200{i:05d}" for i in range(101)]), "more than the balance"),
        (seed_body(message="x" * 1601), "over this account's limit"),
    ],
)
def test_bad_sends_get_a_clear_400_and_change_nothing(aws, account, api, body, fragment):
    # Given a send that is wrong in one way, with a good session
    keys = log_in(api, account)
    # When it is posted
    response = api(sms_event(keys, body))
    # Then it is a 400 in the family's shape saying what is wrong
    assert response["statusCode"] == 400, response
    result = answer(response)
    assert result["result"] == "KO"
    assert fragment in result["error"]
    # And nothing was stored, charged, queued or scheduled
    assert balance(account["account_id"]) == 100
    assert batch_count(account["account_id"]) == 0
    assert queued_records(aws) == []
    assert schedules(aws) == []


def test_a_malformed_time_zone_is_refused_even_without_a_time(aws, account, api):
    # Given a send naming a time zone that does not exist, and no scheduled_delivery_time (a client that meant to
    # schedule, and lost the time on the way)
    keys = log_in(api, account)
    response = api(sms_event(keys, seed_body(recipient=[NIGERIAN], scheduled_delivery_timezone="Mars/Base")))
    # Then it is refused like any malformed field, as the docs' errors table says, and nothing is sent or charged
    assert response["statusCode"] == 400, response["body"]
    assert "IANA" in answer(response)["error"]
    assert balance(account["account_id"]) == 100
    assert batch_count(account["account_id"]) == 0


@pytest.mark.parametrize("zone", ["localtime", "Factory", "posix/Africa/Lagos", "right/Africa/Lagos", "posixrules"])
def test_review_a_zone_file_that_is_no_iana_zone_is_refused_as_an_account_zone_is(aws, account, api, zone):
    # Given a send whose scheduled_delivery_timezone names a file of the host's zoneinfo that is no zone of the tz
    # database's list: the host's own setting, tz's "no zone", or a copy under posix/ or right/ (absent on Lambda, or
    # not what the client meant: localtime is the server's zone, right/ counts leap seconds)
    keys = log_in(api, account)
    tomorrow = in_lagos(timedelta(days=1)).strftime("%Y%m%d%H%M%S")
    body = seed_body(scheduled_delivery_time=tomorrow, scheduled_delivery_timezone=zone)
    # When it is posted
    response = api(sms_event(keys, body))
    # Then it is refused as an account's zone of that name is, a 400 saying it is no IANA zone, and nothing is
    # stored, charged or scheduled
    assert response["statusCode"] == 400, response["body"]
    assert f"scheduled_delivery_timezone: {zone!r} is not an IANA time zone" in answer(response)["error"]
    assert balance(account["account_id"]) == 100
    assert batch_count(account["account_id"]) == 0
    assert schedules(aws) == []


def test_an_oversized_send_is_answered_with_a_status_the_docs_list(aws, account, api):
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "dialects" / "session-key.md").read_text()
    errors_table = doc.split("## Errors", 1)[1].split("##", 1)[0]
    documented = {
        int(line.split("|")[1])
        for line in errors_table.splitlines()
        if line.startswith("| 4") or line.startswith("| 5")
    }
    keys = log_in(api, account)
    response = api(sms_event(keys, seed_body(recipient=[NIGERIAN], message="x" * 300_000)))
    assert answer(response)["result"] == "KO"
    assert balance(account["account_id"]) == 100
    assert response["statusCode"] in documented, (response["statusCode"], sorted(documented))
    # And every status the dialect's table can answer is one the docs list
    from sms_gateway.dialects.sessionkey import HTTP_STATUS

    assert set(HTTP_STATUS.values()) <= documented, sorted(set(HTTP_STATUS.values()) - documented)


def test_a_message_type_written_empty_is_the_default_tier(aws, account, api):
    # Given the seed's body with message_type written unset, as a PHP client writes an unset field
    keys = log_in(api, account)
    # When it is posted
    response = api(sms_event(keys, seed_body(message_type="", recipient=[NIGERIAN])))
    # Then it is sent on the default tier, as with message_type null or absent
    assert response["statusCode"] == 201, response["body"]
    assert balance(account["account_id"]) == 99


@pytest.mark.parametrize(
    ("fields", "sender", "text"),
    [
        ({"sender": 48974, "message": "Your code is 482913"}, "48974", "Your code is 482913"),  # PHP's int shortcode
        ({"sender": 48974.0, "message": 482913}, "48974", "482913"),  # JSON.NET's double, a one-time code alone
    ],
    ids=["int-sender", "float-sender-int-text"],
)
def test_a_sender_or_text_written_as_a_json_number_is_read_as_its_digits(aws, account, api, fields, sender, text):
    # Given an order whose shortcode (and text) an untyped client wrote as JSON numbers: PHP's json_encode of an int
    # read from a database, Perl's JSON of a scalar last used as a number, a JavaScript literal
    keys = log_in(api, account)
    # When it is posted
    response = api(sms_event(keys, seed_body(recipient=[NIGERIAN], **fields)))
    # Then it is sent from that sender with that text, as 9bits and shortcode read the same values
    assert response["statusCode"] == 201, response["body"]
    batch = stored_batch(account["account_id"], answer(response)["order_id"])
    assert (batch.sender, batch.text) == (sender, text)
    assert balance(account["account_id"]) == 99


def test_an_account_without_senders_needs_a_sender(aws, api):
    from sms_gateway_tools.admin import create_account

    bare = create_account(name="No Senders", senders=[], credits=10)
    response = api(sms_event(log_in(api, bare), seed_body()))
    assert response["statusCode"] == 400
    assert "no sender given" in answer(response)["error"]
    assert balance(bare["account_id"]) == 10


def test_an_idempotency_key_sends_once(aws, account, api):
    keys = log_in(api, account)
    event = sms_event(keys, seed_body())
    event["headers"]["idempotency-key"] = "order-42"
    first, again = api(event), api(event)
    assert first["statusCode"] == again["statusCode"] == 201
    assert first["body"] == again["body"]
    assert balance(account["account_id"]) == 99
    other = sms_event(keys, seed_body(message="Something else"))
    other["headers"]["idempotency-key"] = "order-42"
    conflict = api(other)
    assert conflict["statusCode"] == 409
    assert answer(conflict)["result"] == "KO"
    assert balance(account["account_id"]) == 99


def test_a_retry_refused_for_want_of_a_sender_answers_with_the_order_a_dispatcher_took(aws, account, api, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import remove_sender
    from tests.integration.test_idempotency_and_credits import leases_run_out, taken_after_dying

    # Given a keyed order without a sender (the account's is used) whose request died right after queueing it
    keys = log_in(api, account)
    event = sms_event(keys, seed_body(returnCredits=True))
    event["headers"]["idempotency-key"] = "order-taken"
    # And a dispatcher took its message (it goes out, charged), and the operator removed the account's senders
    stored = taken_after_dying(monkeypatch, account["account_id"], lambda: api(event))
    for sender in gateway().store.get_account(account["account_id"]).senders:
        remove_sender(account_id=account["account_id"], sender=sender)
    leases_run_out()
    # When the client retries under its key
    retried = api(event)
    # Then it is not refused for want of a sender (a 400 says nothing was sent): it answers with the order that stands
    assert retried["statusCode"] == 201, retried
    assert answer(retried)["order_id"] == str(stored.reference_id)
    assert (answer(retried)["total_sent"], answer(retried)["remaining_credits"]) == (1, 99)
    assert balance(account["account_id"]) == 99


# ------------------------------------------------------------------ orders: state and removal


def test_an_order_reads_per_recipient_status_until_delivered(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey
    from sms_gateway.domain.status import MessageStatus

    # Given an order to two numbers, sent now
    keys = log_in(api, account)
    order = answer(api(sms_event(keys, seed_body(recipient=[NIGERIAN, VALID]))))["order_id"]
    state = answer(api(route_event("GET", f"/sms/{order}", keys)))
    assert state["result"] == "OK"
    assert state["recipient_number"] == 2
    assert {(r["destination"], r["status"]) for r in state["recipients"]} == {(NIGERIAN, "WAITING"), (VALID, "WAITING")}
    # When the first is submitted and its delivery reported
    store = gateway().store
    first = next(m for m in store.list_messages(account["account_id"], int(order))[0] if m.msisdn == NIGERIAN)
    key = MessageKey(account_id=account["account_id"], reference_id=int(order), message_id=first.message_id)
    now = datetime.now(UTC)
    store.transition(key, MessageStatus.SUBMITTED, now=now, upstream="simulator", upstream_message_id="sim-1")
    store.transition(key, MessageStatus.DELIVERED, now=now, reported_at="2024-01-02T23:50:37.000000Z")
    # Then it reads DLVRD with the handset's time in the account's zone (Lagos is UTC+1), the other WAITING
    state = answer(api(route_event("GET", f"/sms/{order}", keys)))
    by_number = {r["destination"]: r for r in state["recipients"]}
    assert by_number[NIGERIAN] == {"status": "DLVRD", "destination": NIGERIAN, "delivery_date": "20240103005037"}
    assert by_number[VALID]["status"] == "WAITING"


@pytest.mark.parametrize("order", ["abc", "99999999999999999999", "1234"])
def test_an_unknown_order_is_a_404(aws, account, api, order):
    keys = log_in(api, account)
    for method in ("GET", "DELETE"):
        response = api(route_event(method, f"/sms/{order}", keys))
        assert response["statusCode"] == 404
        assert answer(response) == {"result": "KO", "error": f"no order with order_id {order!r}"}


def test_another_accounts_order_is_not_found(aws, account, other_account, api):
    mine = answer(api(sms_event(log_in(api, account), seed_body())))["order_id"]
    theirs = log_in(api, other_account)
    assert api(route_event("GET", f"/sms/{mine}", theirs))["statusCode"] == 404
    assert api(route_event("DELETE", f"/sms/{mine}", theirs))["statusCode"] == 404
    assert balance(account["account_id"]) == 99


def test_removing_a_scheduled_order_cancels_it_and_refunds(aws, account, api):
    # Given an order scheduled for tomorrow
    keys = log_in(api, account)
    tomorrow = in_lagos(timedelta(days=1)).strftime("%Y%m%d%H%M%S")
    body = seed_body(recipient=[NIGERIAN, VALID], scheduled_delivery_time=tomorrow)
    order = answer(api(sms_event(keys, body)))["order_id"]
    assert balance(account["account_id"]) == 98
    assert len(schedules(aws)) == 1
    assert {r["status"] for r in answer(api(route_event("GET", f"/sms/{order}", keys)))["recipients"]} == {"SCHEDULED"}
    # When it is removed
    response = api(route_event("DELETE", f"/sms/{order}", keys))
    # Then the answer is OK, the credits come back, the schedule is gone and the order reads cancelled
    assert response["statusCode"] == 200
    assert answer(response) == {"result": "OK"}
    assert balance(account["account_id"]) == 100
    assert schedules(aws) == []
    assert {r["status"] for r in answer(api(route_event("GET", f"/sms/{order}", keys)))["recipients"]} == {"CANCELLED"}
    # And removing it again is the family's 404, refunding nothing twice
    again = api(route_event("DELETE", f"/sms/{order}", keys))
    assert again["statusCode"] == 404
    assert "cannot be removed" in answer(again)["error"]
    assert balance(account["account_id"]) == 100


def test_an_order_already_on_its_way_cannot_be_removed(aws, account, api):
    keys = log_in(api, account)
    order = answer(api(sms_event(keys, seed_body())))["order_id"]
    response = api(route_event("DELETE", f"/sms/{order}", keys))
    assert response["statusCode"] == 404
    assert answer(response)["error"] == (
        f"order {order} cannot be removed: only a scheduled batch can be cancelled; this one is queued"
    )
    assert balance(account["account_id"]) == 99
    assert stored_batch(account["account_id"], order).status == "queued"


def test_order_routes_need_a_session(aws, account, api):
    keys = log_in(api, account)
    in_a_month = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y%m%d%H%M%S")
    order = answer(api(sms_event(keys, seed_body(scheduled_delivery_time=in_a_month))))["order_id"]
    for method, path in (("GET", f"/sms/{order}"), ("DELETE", f"/sms/{order}"), ("GET", "/status")):
        response = api(route_event(method, path, (account["account_id"], "stale")))
        assert response["statusCode"] == 401
    assert stored_batch(account["account_id"], order).status == "scheduled"
    assert balance(account["account_id"]) == 99


def test_an_unknown_path_under_sms_is_a_404_and_a_wrong_method_a_405_in_the_familys_shape(aws, account, api):
    keys = log_in(api, account)
    response = api(route_event("GET", "/sms/123/recipients", keys))
    assert response["statusCode"] == 404
    assert answer(response)["result"] == "KO"
    # An order's path asked with a method it does not take: HTTP's 405, naming the ones it takes
    response = api(route_event("PUT", "/sms/123", keys))
    assert response["statusCode"] == 405
    assert response["headers"]["Allow"] == "DELETE, GET, HEAD"
    assert answer(response)["result"] == "KO"


# ------------------------------------------------------------------ status


def test_status_answers_what_the_balance_buys_per_tier(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.pricing import PriceTable

    gateway().store.save_price_table(PriceTable().with_price("LL", "*", 1).with_price("N", "*", 3))
    keys = log_in(api, account)
    status = answer(api(route_event("GET", "/status", keys)))
    assert status == {
        "money": None,
        "sms": [{"type": "N", "quantity": 33}, {"type": "L", "quantity": 100}, {"type": "LL", "quantity": 100}],
        "email": None,
    }
    with_money = answer(api(route_event("GET", "/status", keys, {"getMoney": "true", "typeAliases": "true"})))
    assert with_money["money"] == 100


def test_status_right_after_a_send_includes_its_charge(aws, account, api, monkeypatch):
    from tests.stored_accounts import account_reads_lag

    # Given reads of the account that lag behind (a replica that has not caught up yet), and one send of one credit
    keys = log_in(api, account)
    account_reads_lag(monkeypatch, account["account_id"])
    assert answer(api(sms_event(keys, seed_body())))["result"] == "OK"
    from sms_gateway.bootstrap import gateway

    assert gateway().store.balance(account["account_id"]) == 99  # as stored (a consistent read)
    # When the client asks for its money right after
    status = answer(api(route_event("GET", "/status", keys, {"getMoney": "true"})))
    # Then it is the balance after the send, and so is what it buys
    assert status["money"] == 99
    assert {tier["quantity"] for tier in status["sms"]} == {99}


def test_status_refuses_a_malformed_flag(aws, account, api):
    response = api(route_event("GET", "/status", log_in(api, account), {"getMoney": "maybe"}))
    assert response["statusCode"] == 400
    assert answer(response)["error"] == "getMoney must be 'true' or 'false', got 'maybe'"


def test_an_order_with_too_little_time_left_is_a_503_to_retry_and_changes_nothing(aws, account, api):
    from tests.conftest import ShortOfTime

    keys = log_in(api, account)
    response = load_function("api").handler(sms_event(keys), ShortOfTime(4_000))
    assert (response["statusCode"], response["headers"]["Retry-After"]) == (503, "1")
    assert answer(response)["result"] == "KO"
    assert "nothing was stored or charged; try again" in answer(response)["error"]
    assert batch_count(account["account_id"]) == 0


def test_status_counts_what_the_balance_buys_at_the_accounts_country_price(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.pricing import PriceTable

    # Given N priced at 4 credits per part for any network in Nigeria (the account's country), 1 elsewhere
    gateway().store.save_price_table(PriceTable().with_price("N", "*@NG", 4))
    keys = log_in(api, account)
    # And a one-part N send to a Nigerian number costs 4 of the 100 credits
    sent = api(sms_event(keys, seed_body(recipient=[NIGERIAN], returnCredits=True)))
    assert answer(sent)["remaining_credits"] == 96
    # Then /status says the 96 credits left buy 24 such messages, not 96
    status = answer(api(route_event("GET", "/status", keys)))
    assert status["sms"][0] == {"type": "N", "quantity": 24}, status


@pytest.mark.parametrize("reported_at", ["0001-01-01T00:30:00+05:00", "9999-12-31T23:30:00-05:00"])
def test_an_order_whose_dlr_time_is_out_of_range_still_reads(aws, account, api, reported_at):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageKey
    from sms_gateway.domain.status import MessageStatus

    keys = log_in(api, account)
    order = answer(api(sms_event(keys, seed_body(recipient=[NIGERIAN]))))["order_id"]
    store = gateway().store
    [message] = store.list_messages(account["account_id"], int(order))[0]
    key = MessageKey(account_id=account["account_id"], reference_id=int(order), message_id=message.message_id)
    now = datetime.now(UTC)
    store.transition(key, MessageStatus.SUBMITTED, now=now, upstream="simulator", upstream_message_id="sim-1")
    # Given a DLR whose reported_at is a valid ISO date-time that cannot be moved into the account's zone
    # (a 9bits upstream's reported_at is stored as the text it sent)
    store.transition(key, MessageStatus.DELIVERED, now=now, reported_at=reported_at)
    # Then the order still reads, delivered, rather than failing with a 500
    response = api(route_event("GET", f"/sms/{order}", keys))
    assert response["statusCode"] == 200, response
    assert answer(response)["recipients"][0]["status"] == "DLVRD"


def test_a_keyed_order_with_many_long_invalid_recipients_is_answered_again_the_same(aws, account, api):
    # Given a keyed order to one valid number and 999 invalid entries of non-ASCII text (240 KB as UTF-8, under the
    # 256 KB body limit; its answer writes each character as a 6-byte \u escape)
    keys = log_in(api, account)
    body = seed_body(recipient=[NIGERIAN, *(f"{n:03d}" + "\u2122" * 80 for n in range(999))])
    body["allowInvalidRecipients"] = True
    event = sms_event(keys, json.dumps(body, ensure_ascii=False))
    event["headers"]["idempotency-key"] = "long-invalid"
    first = api(event)
    assert first["statusCode"] == 201, first["body"][:300]
    # When the client repeats it under its key (its first answer was lost)
    again = api(event)
    # Then it gets the first answer again, and nothing more is sent
    assert again["statusCode"] == 201, again["body"][:300]
    assert again["body"] == first["body"]
    assert balance(account["account_id"]) == 99


def test_a_session_key_message_refused_by_its_upstream_is_reported_to_the_accounts_dlr_url(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import MessageStatus, StatusChange
    from sms_gateway.logic.notify import dlr_notification
    from sms_gateway_tools.admin import create_account

    # Given an account with a DLR URL that sends with the session-key dialect (its seed has no report flag)
    reporting = create_account(name="Film Club", senders=["48975"], credits=100, dlr_url="https://client.example/dlr")
    order = answer(api(sms_event(log_in(api, reporting), seed_body(recipient=[NIGERIAN]))))["order_id"]
    message = gateway().store.list_messages(reporting["account_id"], int(order))[0][0]
    # When its upstream refuses it (the dispatcher fails it, as docs/dialects/session-key.md describes)
    refused = message.model_copy(
        update={"status": MessageStatus.FAILED, "error_code": "upstream_rejected", "sequence": message.sequence + 1}
    )
    # Then the failure is reported to the account's DLR URL, as the dialect's docs promise
    notification = dlr_notification(StatusChange(message=refused, changed=True))
    assert notification is not None and notification["payload"]["status"] == "failed"
    # And an account without a DLR URL asks for no reports: there is nowhere to send them
    quiet = answer(api(sms_event(log_in(api, account), seed_body(recipient=[NIGERIAN]))))["order_id"]
    unreported = gateway().store.list_messages(account["account_id"], int(quiet))[0][0]
    failed = unreported.model_copy(update={"status": MessageStatus.FAILED})
    assert dlr_notification(StatusChange(message=failed, changed=True)) is None


def test_a_keyed_order_finished_by_its_retry_answers_the_balance_after_its_opt_out_refund(
    aws, account, api, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic.optouts import record_opt_out
    from tests.integration.test_idempotency_and_credits import Killed, die_once, leases_run_out

    # Given a keyed order to two numbers, with returnCredits, whose request died after storing and charging it
    keys = log_in(api, account)
    event = sms_event(
        keys, seed_body(recipient=["+2348020000000", "+2348030000000"], returnCredits=True, sender="48974")
    )
    event["headers"]["idempotency-key"] = "stop-meanwhile"
    die_once(monkeypatch, SqsDispatchQueue, "enqueue")
    with pytest.raises(Killed):
        api(event)
    assert balance(account["account_id"]) == 98
    # And the first number texts STOP to the sender before the client retries
    store = gateway().store
    record_opt_out(store, store, account["account_id"], "2348020000000", "48974", now=utc_now())
    leases_run_out()
    # When the client retries under its key
    response = api(event)
    assert response["statusCode"] == 201, response
    body = answer(response)
    # Then the opted-out number was refunded (not sent, not charged) and one credit used...
    assert body["total_sent"] == 1
    assert balance(account["account_id"]) == 99
    # ...and remaining_credits says the balance the client really has
    assert body["remaining_credits"] == balance(account["account_id"])


@pytest.mark.parametrize("sender", ["48974", None], ids=["given", "account-default"])
def test_a_retry_of_an_order_whose_sender_was_removed_meanwhile_is_refused_and_undone(
    aws, account, api, monkeypatch, sender
):
    from sms_gateway.adapters.sqs import SqsDispatchQueue
    from sms_gateway_tools.admin import remove_sender
    from tests.integration.test_idempotency_and_credits import (
        Killed,
        batches_of,
        die_once,
        leases_run_out,
        queued_message_ids,
    )

    # Given a keyed order from 48974 (given, or the account's first sender) whose request died after storing and
    # charging it, before queueing it
    keys = log_in(api, account)
    event = sms_event(keys, seed_body(sender=sender))
    event["headers"]["idempotency-key"] = "sender-gone"
    die_once(monkeypatch, SqsDispatchQueue, "enqueue")
    with pytest.raises(Killed):
        api(event)
    (stored,) = batches_of(account["account_id"])
    assert stored.sender == "48974"
    assert balance(account["account_id"]) == 99
    # And the operator removes 48974 before the client retries (the account keeps CINEMA)
    remove_sender(account_id=account["account_id"], sender="48974")
    leases_run_out()
    # When the client retries under its key
    retried = api(event)
    # Then (docs/dialects/session-key.md, docs/dispatch.md "A send's credits") the retry is refused, the order its
    # request stored is undone (nothing queued, the credit back) and the key is free; not answered 201 "OK" for an
    # order whose message the dispatcher then fails `sender_removed`
    assert retried["statusCode"] == 400, retried
    assert queued_message_ids(aws) == []
    assert balance(account["account_id"]) == 100
    assert batches_of(account["account_id"])[0].status == "failed"


@pytest.mark.parametrize("written", ["0001-01-01T00:00:00", "0001-01-01T00:00:00+05:00", "0001-01-01 00:00"])
def test_a_scheduled_delivery_time_at_the_start_of_the_calendar_sends_the_order_now(aws, account, api, written):
    # Given a C# client whose model holds a non-nullable DateTime it never set: JSON.NET writes DateTime.MinValue,
    # 0001-01-01T00:00:00, a time long past (the 9bits send_at and the shortcode timeToSend send such a time now)
    keys = log_in(api, account)
    # When it sends an order with it, for an account in Africa/Lagos (east of UTC)
    response = api(sms_event(keys, seed_body(recipient=[NIGERIAN], scheduled_delivery_time=written)))
    # Then, as docs/dialects/session-key.md says of a time in the past, the order is sent now, not refused
    assert response["statusCode"] == 201, response["body"]
    assert stored_batch(account["account_id"], answer(response)["order_id"]).status == "queued"
    assert len(queued_records(aws)) == 1


def test_a_send_whose_balance_cannot_be_read_after_it_is_still_answered_201_and_sent_once(
    aws, account, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given a send asking for the credits left, which DynamoDB will not read back once the send is queued
    def unreadable(self, account_id):
        raise TimeoutError("Read timeout on endpoint URL")

    monkeypatch.setattr(DynamoStore, "balance", unreadable)
    keys = log_in(api, account)
    response = api(sms_event(keys, seed_body(returnCredits=True)))
    # Then the send, stored, charged and queued, is answered as sent (201 with its order id), not as an internal error
    # that a client sends again (a second SMS, charged twice); only the credits left go unsaid
    assert response["statusCode"] == 201, response
    body = answer(response)
    assert (body["result"], body["total_sent"]) == ("OK", 1)
    assert "remaining_credits" not in body
    assert stored_batch(account["account_id"], body["order_id"]).status == "queued"
    assert balance(account["account_id"]) == 99
    assert len(queued_records(aws)) == 1


@pytest.mark.parametrize(
    "recipient",
    [[float(NIGERIAN[1:]), float(VALID[1:])], float(NIGERIAN[1:])],
    ids=["list", "alone"],
)
def test_recipients_a_spreadsheet_gave_as_whole_floats_are_sent_to(aws, account, api, recipient):
    # Given an order whose numbers came from a spreadsheet column (pandas makes a column with a blank cell float64,
    # PhpSpreadsheet reads a numeric cell as a float), written by json.dumps / json_encode as 2348020000000.0
    keys = log_in(api, account)
    # When it is posted
    response = api(sms_event(keys, seed_body(recipient=recipient)))
    # Then each is read as its digits, as a whole number is (and as 9bits reads them): sent to those numbers
    assert response["statusCode"] == 201, response["body"]
    order = answer(response)["order_id"]
    state = answer(api(route_event("GET", f"/sms/{order}", keys)))
    expected = {NIGERIAN, VALID} if isinstance(recipient, list) else {NIGERIAN}
    assert {r["destination"] for r in state["recipients"]} == expected


@pytest.mark.parametrize(
    ("recipient", "fragment"),
    [([2348020000000.5], "recipient.0: Input should be a valid string"), ([True], "recipient.0")],
    ids=["fraction", "boolean"],
)
def test_a_recipient_that_is_a_fraction_or_a_boolean_is_refused(aws, account, api, recipient, fragment):
    # Given an order whose number is a JSON number with a fraction, or a boolean: no phone number
    keys = log_in(api, account)
    # When it is posted
    response = api(sms_event(keys, seed_body(recipient=recipient)))
    # Then it is refused, saying which entry, and nothing is charged
    assert response["statusCode"] == 400, response["body"]
    assert fragment in answer(response)["error"]
    assert balance(account["account_id"]) == 100
    assert batch_count(account["account_id"]) == 0


@pytest.mark.parametrize("base64_encoded", [False, True], ids=["text", "base64"])
def test_a_body_that_starts_with_a_utf8_bom_is_read_as_its_json(aws, account, api, base64_encoded):
    # Given the seed's body as Windows tools write it: with a byte order mark before the JSON (PowerShell's
    # Out-File, .NET's Encoding.UTF8), which RFC 8259 section 8.1 lets a parser ignore
    keys = log_in(api, account)
    text = "\ufeff" + json.dumps(seed_body(recipient=[NIGERIAN]))
    event = sms_event(keys, text)
    if base64_encoded:
        event["body"], event["isBase64Encoded"] = base64.b64encode(text.encode()).decode(), True
    # When it is posted
    response = api(event)
    # Then it is sent, as the same body without the mark is
    assert response["statusCode"] == 201, response["body"]
    assert balance(account["account_id"]) == 99


@pytest.mark.parametrize(("written", "tier"), [("n", "N"), ("ll", "LL"), ("Ll", "LL"), ("l", "L"), ("gp", "N")])
def test_a_message_type_written_in_another_case_is_that_tier(aws, account, api, written, tier):
    # Given an order whose message_type a client's enum converter wrote by its member's name in another case
    # (JSON.NET's StringEnumConverter and System.Text.Json's JsonStringEnumConverter with a camelCase policy write
    # N, L, LL as "n", "l", "ll"; a PHP or Node client lowercasing a setting)
    keys = log_in(api, account)
    # When it is posted
    response = api(sms_event(keys, seed_body(message_type=written, recipient=[NIGERIAN])))
    # Then it is sent on that tier, as the name in capitals is
    assert response["statusCode"] == 201, response["body"]
    assert stored_batch(account["account_id"], answer(response)["order_id"]).route_tier == tier
