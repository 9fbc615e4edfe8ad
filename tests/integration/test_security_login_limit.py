"""/login's attempt limit: after the limit of failed logins a username is refused with 429 (and a Retry-After) until
its 15-minute window ends, before any password is checked; successes use up nothing; other usernames are untouched."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sms_gateway.logic import sessions
from sms_gateway.logic.sessions import LOGIN_WINDOW
from tests.security_stack import Gateway, create_account, portal_sign_in, scan_items

# The production limit is 10; a smaller one makes the same point with fewer scrypt checks (each costs ~0.1 s).
MAX_FAILED_LOGINS = 3


@pytest.fixture
def gateway(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Gateway:
    monkeypatch.setattr(sessions, "MAX_FAILED_LOGINS", MAX_FAILED_LOGINS)
    return Gateway.start()


# The customer's server, which runs the seed's sample (it logs in before each send); someone failing on purpose.
CUSTOMER = "203.0.113.7"
ATTACKER = "198.51.100.66"


def login(gateway: Gateway, account: dict[str, Any], password: str | None = None, *, source: str = CUSTOMER) -> Any:
    query = {"username": account["username"], "password": password or account["password"]}
    return gateway.request("GET", "/login", query=query, source_ip=source)


def send(gateway: Gateway, keys: str) -> Any:
    """The seed's sendSMS with the keys its login answered: POST /sms, expecting 201."""
    user_key, session_key = keys.split(";")
    body = {"message": "Hello world!", "message_type": "N", "recipient": ["+2348020000000"], "returnCredits": False}
    return gateway.request(
        "POST", "/sms", headers={"user_key": user_key, "Session_key": session_key}, body=body, source_ip=CUSTOMER
    )


def test_too_many_failures_lock_the_username_until_the_window_ends(aws, gateway, monkeypatch):
    account = create_account("Target", "48974")
    bystander = create_account("Bystander", "55555")
    # Given as many wrong passwords as the limit allows, each a plain 401
    for _ in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password").status == 401
    # When one more comes, or even the right password
    for password in ("wrong-password", account["password"]):
        refused = login(gateway, account, password)
        # Then it is refused in the dialect's shape, saying when to come back, and no session is made
        assert refused.status == 429, refused
        assert refused.json["result"] == "KO" and "too many failed logins" in refused.json["error"]
        assert 0 < int(refused.headers["Retry-After"]) <= LOGIN_WINDOW.total_seconds()
    # And another username is not affected
    assert login(gateway, bystander).status == 200
    # And the counter keeps no username in plain text (what was typed as one may be a password by mistake)
    counters = [item for item in scan_items(aws) if item["pk"]["S"].startswith("LOGINS#")]
    assert counters and not [item for item in counters if account["username"] in str(item)]

    # When the window has passed, the right password works again
    from sms_gateway.dialects import sessionkey

    later = sessionkey.utc_now() + LOGIN_WINDOW + timedelta(seconds=1)
    monkeypatch.setattr(sessionkey, "utc_now", lambda: later)
    assert login(gateway, account).status == 200


def test_successful_logins_use_up_nothing(aws, gateway):
    account = create_account("Busy", "48974")
    # Given more successful logins than the limit, with failures in between
    for _ in range(MAX_FAILED_LOGINS + 2):
        assert login(gateway, account).status == 200
    for _ in range(MAX_FAILED_LOGINS - 1):
        assert login(gateway, account, "wrong-password").status == 401
    # Then the username still has one failure left, and a success
    assert login(gateway, account).status == 200
    assert login(gateway, account, "wrong-password").status == 401
    assert login(gateway, account).status == 429


def test_a_login_whose_check_failed_inside_the_gateway_is_not_counted_a_failed_login(aws, gateway, monkeypatch):
    from botocore.exceptions import ClientError

    from sms_gateway.bootstrap import gateway as wiring

    account = create_account("Unlucky", "48974")
    store = wiring().store

    def throttled(username: str, password: str, **source: Any) -> Any:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "GetItem")

    # Given as many right-password logins as the limit, each failing inside the gateway (DynamoDB throttling)
    with monkeypatch.context() as patched:
        patched.setattr(store, "password_login", throttled)
        for _ in range(MAX_FAILED_LOGINS):
            assert login(gateway, account).status == 500
    # Then none counted as a failed login: the right password gets in, and the username keeps all its failures
    assert login(gateway, account).status == 200
    for _ in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password").status == 401
    assert login(gateway, account).status == 429


def assert_locked_out(answer: Any) -> None:
    """The family's refusal of a locked-out login, as it has always been."""
    assert answer.status == 429, answer
    assert answer.json["result"] == "KO" and "too many failed logins for this username" in answer.json["error"]
    assert 0 < int(answer.headers["Retry-After"]) <= LOGIN_WINDOW.total_seconds()


def test_a_customer_logging_in_from_its_own_address_is_not_locked_out_by_someone_failing_elsewhere(aws, gateway):
    account = create_account("Target", "48974")
    # Given the customer's server logging in before each send, as the seed's sample does
    assert send(gateway, login(gateway, account).text).status == 201
    # When someone who knows the username fails on purpose from elsewhere, as many times as the limit allows
    for _ in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password", source=ATTACKER).status == 401
    # Then that source is locked out, right password or not (a brute-force from one source is still stopped)
    for password in ("wrong-password", account["password"]):
        assert_locked_out(login(gateway, account, password, source=ATTACKER))
    # And the customer's server logs in and sends as before
    answer = login(gateway, account)
    assert answer.status == 200, answer
    assert send(gateway, answer.text).status == 201


def test_failures_spread_over_many_sources_lock_out_every_source_the_username_does_not_know(aws, gateway):
    account = create_account("Target", "48974")
    assert login(gateway, account).status == 200
    # Given as many wrong passwords as the limit, each from an address of its own
    for n in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password", source=f"198.51.100.{n + 1}").status == 401
    # Then every source the username does not know is locked out, even with the right password (a guesser gains
    # nothing by spreading its guesses over many addresses)
    for source in ("198.51.100.1", "192.0.2.200"):
        assert_locked_out(login(gateway, account, source=source))
    # And so is a request that names no address at all
    assert_locked_out(login(gateway, account, source=""))
    # And the source that logged in before still gets in, to the API and to the portal
    assert login(gateway, account).status == 200
    assert portal_sign_in(gateway, account)["cookie"].startswith("portal_session=")


def test_a_known_source_is_stopped_by_its_own_failures(aws, gateway):
    account = create_account("Target", "48974")
    assert login(gateway, account).status == 200
    # Given as many wrong passwords as the limit from the source that logged in before
    for _ in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password").status == 401
    # Then it is locked out too: knowing a source never lifts its own limit
    for password in ("wrong-password", account["password"]):
        assert_locked_out(login(gateway, account, password))


def test_a_password_reset_clears_the_lock(aws, gateway):
    from sms_gateway_tools.admin import reset_password

    account = create_account("Target", "48974")
    # Given the username locked out by failed logins
    for _ in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password", source=ATTACKER).status == 401
    assert_locked_out(login(gateway, account))
    # When the operator resets the password
    reset = reset_password(account_id=account["account_id"])
    assert reset["failed_logins_cleared"] is True
    # Then the new password gets in at once, from a source the username does not know
    answer = login(gateway, account, reset["password"])
    assert answer.status == 200, answer
    assert send(gateway, answer.text).status == 201
    # And the limit counts again from zero: a brute-force of the new password is stopped as before
    for _ in range(MAX_FAILED_LOGINS):
        assert login(gateway, account, "wrong-password", source=ATTACKER).status == 401
    assert_locked_out(login(gateway, account, source=ATTACKER))
