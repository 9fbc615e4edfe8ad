"""The account portal through the real `api` handler on moto, without a browser: sign-in, cookies, CSRF, session
expiry, sign-out, and every Settings form (its effect, and that bad input changes nothing)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sms_gateway.domain.models import DeliveryReportMode
from tests.conftest import FakeContext, load_function
from tests.e2e.client_webhook import ClientWebhook
from tests.integration.test_send_path import send_event
from tests.portal_client import ORIGIN, PortalClient
from tests.stored_accounts import item_reads_lag, webhook_credentials

SETTINGS = "/portal/settings"


@pytest.fixture
def api(aws: dict[str, str]) -> Any:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


@pytest.fixture
def browser(api: Any) -> PortalClient:
    return PortalClient(api)


@pytest.fixture
def signed_in(browser: PortalClient, account: dict[str, Any]) -> PortalClient:
    answer = browser.sign_in(account["username"], account["password"])
    assert answer.status == 303, answer.body
    return browser


@pytest.fixture
def hook() -> Iterator[ClientWebhook]:
    with ClientWebhook() as server:
        yield server


def stored(account_id: str) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store.get_account(account_id)


def set_cookie(answer: Any, name: str) -> str:
    return next(c for c in answer.cookies if c.startswith(f"{name}="))


# ---------------------------------------------------------------- signing in and out


def test_a_signed_out_visitor_is_sent_to_sign_in_and_a_post_is_refused(browser, account):
    # When someone without a session opens a page or posts a form
    page = browser.get(SETTINGS)
    posted = browser.post(SETTINGS, {"action": "webhooks", "dlr_url": "https://evil.example/x", "csrf_token": "x"})
    # Then the page sends them to sign in, and the form is refused with nothing changed
    assert (page.status, page.location) == (303, "/portal/login")
    assert posted.status == 401
    assert "sign in again" in posted.text()
    assert stored(account["account_id"]).dlr_url is None
    assert browser.get("/portal").location == "/portal/login"


def test_signing_in_sets_a_strict_http_only_cookie_and_leads_to_the_first_page(browser, account):
    from sms_gateway.dialects.portal.framework import home_path

    answer = browser.sign_in(account["username"], account["password"])
    # The first page of the navigation: Messages once it is registered (order 10), else Settings
    assert (answer.status, answer.location) == (303, home_path())
    assert home_path() in {"/portal/messages", SETTINGS}
    cookie = set_cookie(answer, "portal_session")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/portal" in cookie
    # The local stack serves plain http (STAGE=local): a Secure cookie would never come back
    assert "Secure" not in cookie
    page = browser.get(SETTINGS)
    assert page.status == 200
    assert "Cinema Club" in page.text()
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_outside_the_local_stack_the_cookie_is_secure(browser, account, monkeypatch):
    from sms_gateway import bootstrap

    monkeypatch.setenv("STAGE", "prod")
    bootstrap.get_settings.cache_clear()
    answer = browser.sign_in(account["username"], account["password"])
    assert "; Secure" in set_cookie(answer, "portal_session")


def test_a_wrong_password_and_an_unknown_user_get_the_same_page(browser, account):
    wrong = browser.sign_in(account["username"], "not-the-password")
    unknown = browser.sign_in("nobody-here", "not-the-password")
    for answer in (wrong, unknown):
        assert answer.status == 401
        assert "Wrong username or password." in answer.text()
        assert not any(c.startswith("portal_session=") for c in answer.cookies)
    # The username is kept in the form, the password is not
    assert f'value="{account["username"]}"' in wrong.body
    assert "not-the-password" not in wrong.body


def test_the_attempt_limit_of_the_session_key_login_applies(browser, account):
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS

    for _ in range(MAX_FAILED_LOGINS):
        assert browser.sign_in(account["username"], "wrong").status == 401
    # Then even the right password is refused until the window ends, with the wait
    limited = browser.sign_in(account["username"], account["password"])
    assert limited.status == 429
    assert "too many failed logins" in limited.text()
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    assert "portal_session" not in browser.cookies


def test_signing_in_to_another_account_ends_the_browsers_previous_session(browser, account, other_account):
    from sms_gateway.bootstrap import gateway

    # Given a sign-in form opened in a second tab before the first tab signed in
    second_tab_form = browser.get("/portal/login").csrf_token()
    browser.sign_in(account["username"], account["password"])
    first = browser.cookies["portal_session"]
    # When the second tab signs in to another account
    fields = {
        "csrf_token": second_tab_form,
        "username": other_account["username"],
        "password": other_account["password"],
    }
    assert browser.post("/portal/login", fields).status == 303
    # Then the browser has one session: the new one, the other account's
    assert browser.cookies["portal_session"] != first
    assert gateway().store.portal_session(first) is None
    assert other_account["name"] in browser.get(SETTINGS).text()


def test_a_second_tab_signs_in_after_the_first_did_and_keeps_the_first_tabs_forms(browser, account):
    # Given the session ended in two tabs, each sent to the sign-in page, and the first tab signed in
    second_tab = browser.get("/portal/login").csrf_token()
    browser.sign_in(account["username"], account["password"])
    first_tab_form = browser.get(SETTINGS).csrf_token()
    # When the user signs in from the second tab too, with the right password
    fields = {"csrf_token": second_tab, "username": account["username"], "password": account["password"]}
    answer = browser.post("/portal/login", fields)
    # Then it leads to the dashboard, not to 403 'form expired'
    assert answer.status == 303, answer.text()[:300]
    assert answer.location != "/portal/login"
    # And the session stands: a form the first tab shows still works
    form = {"csrf_token": first_tab_form, "action": "webhooks", "dlr_url": "https://a.example/x", "inbound_url": ""}
    assert browser.post(SETTINGS, form).status == 200
    assert stored(account["account_id"]).dlr_url == "https://a.example/x"


def test_signing_in_again_near_the_end_of_the_session_gives_it_a_new_lifetime(browser, account):
    import boto3

    from sms_gateway.bootstrap import gateway

    # Given a session 5 minutes before its absolute expiry (the browser signed in almost 12 hours ago)
    second_tab = browser.get("/portal/login").csrf_token()
    browser.sign_in(account["username"], account["password"])
    token = browser.cookies["portal_session"]
    store = gateway().store
    soon = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
    boto3.client("dynamodb").update_item(
        TableName=store.table_name,
        Key=store._portal_session_key(token),
        UpdateExpression="SET expires_at = :soon",
        ExpressionAttributeValues={":soon": {"N": str(soon)}},
    )
    # When the user signs in again from the second tab
    fields = {"csrf_token": second_tab, "username": account["username"], "password": account["password"]}
    assert browser.post("/portal/login", fields).status == 303
    # Then the session keeps its token and lives 12 hours from now, not 5 minutes
    assert browser.cookies["portal_session"] == token
    session = store.portal_session(token)
    assert session is not None
    assert session.expires_at > datetime.now(UTC) + timedelta(hours=11)


def test_a_sign_in_page_opened_before_another_still_signs_in(browser, account):
    # Given the session ended in two tabs, each sent to the sign-in page (the first tab's page loaded first)
    first_tab = browser.get("/portal/login").csrf_token()
    browser.get("/portal/login")
    # When the user signs in from the first tab with the right password
    fields = {"csrf_token": first_tab, "username": account["username"], "password": account["password"]}
    answer = browser.post("/portal/login", fields)
    # Then they are signed in, not told the form expired and asked to type the password again
    assert answer.status == 303, answer.text()[:300]
    assert "portal_session" in browser.cookies


def test_the_sign_in_form_needs_its_own_token_and_origin(browser, account):
    page = browser.get("/portal/login")
    fields = {"csrf_token": "forged", "username": account["username"], "password": account["password"]}
    assert browser.post("/portal/login", fields).status == 403
    fields["csrf_token"] = page.csrf_token()
    assert browser.post("/portal/login", fields, origin="https://evil.example").status == 403
    assert "portal_session" not in browser.cookies


def test_signing_out_ends_the_session_for_good(signed_in):
    old_cookie = dict(signed_in.cookies)
    answer = signed_in.submit("/portal/logout", "sign-out", from_page=SETTINGS)
    assert (answer.status, answer.location) == (303, "/portal/login?signed_out=1")
    assert "Max-Age=0" in set_cookie(answer, "portal_session")
    assert "You are signed out." in signed_in.get("/portal/login?signed_out=1").text()
    # The old cookie, replayed, opens nothing: the session is gone from the table
    replay = PortalClient(signed_in.handler, cookies=old_cookie)
    assert replay.get(SETTINGS).location == "/portal/login"


def _expire(token: str, attribute: str) -> None:
    from sms_gateway.adapters.dynamodb import hash_secret
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    past = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp())
    store.client.update_item(
        TableName=store.table_name,
        Key={"pk": {"S": f"PORTAL#{hash_secret(token)}"}, "sk": {"S": "SESSION"}},
        UpdateExpression=f"SET {attribute} = :past",
        ExpressionAttributeValues={":past": {"N": str(past)}},
    )


@pytest.mark.parametrize("expiry", ["idle_until", "expires_at"])
def test_an_expired_session_opens_nothing(signed_in, account, expiry):
    assert signed_in.get(SETTINGS).status == 200
    token = signed_in.get(SETTINGS).csrf_token()
    _expire(signed_in.cookies["portal_session"], expiry)
    assert signed_in.get(SETTINGS).location == "/portal/login"
    posted = signed_in.post(SETTINGS, {"csrf_token": token, "action": "webhooks", "dlr_url": "https://a.example/x"})
    assert posted.status == 401
    assert stored(account["account_id"]).dlr_url is None


def test_using_the_session_moves_its_idle_expiry_forward(signed_in, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import portal_sessions

    token = signed_in.cookies["portal_session"]
    before = gateway().store.portal_session(token)
    later = datetime.now(UTC) + timedelta(minutes=10)
    monkeypatch.setattr("sms_gateway.dialects.portal.framework.utc_now", lambda: later)
    assert signed_in.get(SETTINGS).status == 200
    after = gateway().store.portal_session(token)
    assert after.idle_until > before.idle_until
    assert after.idle_until <= before.expires_at
    assert after.expires_at == before.expires_at
    assert portal_sessions.IDLE_TIMEOUT < portal_sessions.ABSOLUTE_LIFETIME


def test_an_idle_extension_from_a_stale_read_never_moves_the_idle_expiry_back_nor_past_the_end(signed_in):
    """Another tab's request read the session before a renewing sign-in moved its expiries: its extension, computed
    from that read, must not undo the renewal."""
    from sms_gateway.bootstrap import gateway

    store, token = gateway().store, signed_in.cookies["portal_session"]
    session = store.portal_session(token)
    # Given the session's idle expiry stored later than the stale request computed
    store.extend_portal_session(token, session.idle_until + timedelta(minutes=20))
    # When the stale request writes the earlier one, then one past the session's end
    store.extend_portal_session(token, session.idle_until + timedelta(minutes=10))
    store.extend_portal_session(token, session.expires_at + timedelta(minutes=1))
    # Then neither is written
    assert store.portal_session(token).idle_until == session.idle_until + timedelta(minutes=20)


# ---------------------------------------------------------------- CSRF and origin


@pytest.mark.parametrize(
    ("token", "headers", "origin"),
    [
        ("wrong-token", {}, ORIGIN),
        ("", {}, ORIGIN),
        (None, {}, "https://evil.example"),
        (None, {}, None),
        (None, {"referer": "https://evil.example/page"}, None),
        (None, {}, "null"),
    ],
    ids=["wrong-token", "no-token", "cross-site-origin", "no-origin-or-referer", "cross-site-referer", "null-origin"],
)
def test_a_forged_form_is_refused_and_changes_nothing(signed_in, account, token, headers, origin):
    real = signed_in.get(SETTINGS).csrf_token()
    fields = {"csrf_token": real if token is None else token, "action": "webhooks", "dlr_url": "https://a.example/x"}
    answer = signed_in.post(SETTINGS, fields, headers=headers, origin=origin)
    assert answer.status == 403
    assert stored(account["account_id"]).dlr_url is None


def test_a_same_origin_referer_stands_in_for_a_missing_origin(signed_in, account):
    token = signed_in.get(SETTINGS).csrf_token()
    fields = {"csrf_token": token, "action": "webhooks", "dlr_url": "https://a.example/x", "inbound_url": ""}
    answer = signed_in.post(SETTINGS, fields, headers={"referer": f"{ORIGIN}{SETTINGS}"}, origin=None)
    assert answer.status == 200, answer.text()
    assert stored(account["account_id"]).dlr_url == "https://a.example/x"


def test_another_sessions_token_does_not_pass(api, signed_in, account, other_account):
    other = PortalClient(api)
    other.sign_in(other_account["username"], other_account["password"])
    foreign = other.get(SETTINGS).csrf_token()
    fields = {"csrf_token": foreign, "action": "webhooks", "dlr_url": "https://a.example/x"}
    assert signed_in.post(SETTINGS, fields).status == 403
    assert stored(account["account_id"]).dlr_url is None


# ---------------------------------------------------------------- settings: webhooks


def test_webhook_urls_are_saved_and_a_bad_one_changes_nothing(signed_in, account):
    saved = signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "https://hooks.example/dlr", "inbound_url": ""})
    assert saved.status == 200
    assert "Webhook URLs saved." in saved.text()
    assert stored(account["account_id"]).dlr_url == "https://hooks.example/dlr"
    bad = signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "ftp://hooks.example/dlr", "inbound_url": ""})
    assert bad.status == 400
    assert "https" in bad.text()
    # The form shows what was typed, the account keeps the saved URL
    assert 'value="ftp://hooks.example/dlr"' in bad.body
    assert stored(account["account_id"]).dlr_url == "https://hooks.example/dlr"
    # A URL longer than the API takes (2048 characters) is refused here too, not stored on the account
    long = "https://hooks.example/" + "a" * 3000
    too_long = signed_in.submit(SETTINGS, "webhooks", {"dlr_url": long, "inbound_url": ""})
    assert too_long.status == 400 and "at most 2048 characters" in too_long.text()
    assert stored(account["account_id"]).dlr_url == "https://hooks.example/dlr"


@pytest.fixture
def lagging_replica(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """DynamoDB's eventually consistent reads of the account answering from a replica that has seen none of the
    test's writes (what the cancel's own read guards against: "an eventually consistent read right after ... may
    show ... before"); consistent reads see them. The store."""
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    before = store.get_account(account["account_id"], consistent=True)
    real_get_account = type(store).get_account

    def lagging(self: Any, account_id: str, *, consistent: bool = False) -> Any:
        return (
            before
            if not consistent and account_id == account["account_id"]
            else real_get_account(self, account_id, consistent=consistent)
        )

    monkeypatch.setattr(type(store), "get_account", lagging)
    return store


def test_the_page_after_a_save_shows_the_saved_urls_even_from_a_replica_that_lags(signed_in, account, lagging_replica):
    # Given DynamoDB's eventually consistent reads answering from a replica that has not seen the save yet
    store = lagging_replica
    # When the user saves a DLR URL
    saved = signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "https://hooks.example/dlr", "inbound_url": ""})
    # Then the page that says "saved" shows the URL saved, not the field as it was before
    assert saved.status == 200 and "Webhook URLs saved." in saved.text()
    assert store.get_account(account["account_id"], consistent=True).dlr_url == "https://hooks.example/dlr"
    assert 'value="https://hooks.example/dlr"' in saved.body


def test_a_send_right_after_a_save_works_on_the_account_saved_even_from_a_replica_that_lags(
    signed_in, account, lagging_replica
):
    from tests.integration.test_portal_pages import COMPOSE, compose_form, preview, reference_of

    # Given a DLR URL just saved, and the account's eventually consistent reads answering from before the save
    signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "https://hooks.example/dlr", "inbound_url": ""})
    # When the user sends from Compose
    reference = reference_of(signed_in.post(COMPOSE, compose_form(signed_in, numbers="08030000001")))
    # Then the send asks for delivery reports to the URL saved, and the preview quotes the balance the send left
    batch = lagging_replica.get_batch(account["account_id"], int(reference))
    assert batch is not None and batch.delivery_report == DeliveryReportMode.YES
    csrf = signed_in.get(COMPOSE).csrf_token()
    status, answer = preview(signed_in, {"sender": "48974", "text": "Hi", "numbers": "08030000001"}, csrf=csrf)
    assert status == 200 and answer["balance"] == 99


def test_a_webhooks_post_changes_only_the_urls_it_carries(signed_in, account):
    """An empty field removes its webhook; a field the post leaves out (a script's form post) leaves it as it is."""
    signed_in.submit(
        SETTINGS, "webhooks", {"dlr_url": "https://hooks.example/dlr", "inbound_url": "https://hooks.example/in"}
    )
    saved = signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "https://hooks.example/dlr2"})
    assert saved.status == 200
    assert (stored(account["account_id"]).dlr_url, stored(account["account_id"]).inbound_url) == (
        "https://hooks.example/dlr2",
        "https://hooks.example/in",
    )
    signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "", "inbound_url": "https://hooks.example/in"})
    assert stored(account["account_id"]).dlr_url is None


def test_a_webhooks_form_from_a_stale_page_keeps_a_url_changed_meanwhile_through_the_api(api, signed_in, account):
    from tests.integration.test_batches_dialect import request

    # Given both webhook URLs saved, and the Settings page open in a tab
    first = {"dlr_url": "https://hooks.example/dlr", "inbound_url": "https://hooks.example/in"}
    signed_in.submit(SETTINGS, "webhooks", first)
    tab = signed_in.get(SETTINGS)
    stale_form = {"csrf_token": tab.csrf_token(), **tab.hidden_fields("webhooks"), **first}
    # And the inbound URL changed meanwhile through the API
    change = request(account["token"], "PUT", "/ng/v1/settings/webhooks", {"inbound_url": "https://new.example/in"})
    assert api(change)["statusCode"] == 200
    # When the user changes only the DLR URL in the tab and saves
    saved = signed_in.post(SETTINGS, {**stale_form, "dlr_url": "https://hooks.example/dlr2"})
    # Then the DLR URL is saved and the inbound URL stays as the API set it
    assert saved.status == 200 and "Webhook URLs saved." in saved.text(), saved.text()
    now = stored(account["account_id"])
    assert (now.dlr_url, now.inbound_url) == ("https://hooks.example/dlr2", "https://new.example/in")
    assert 'value="https://new.example/in"' in saved.body
    # And a change in the tab of the very URL changed meanwhile is refused, saying so, and changes nothing
    refused = signed_in.post(SETTINGS, {**stale_form, "inbound_url": "https://tab.example/in"})
    assert refused.status == 409, refused.text()
    assert "changed" in refused.text() and "https://new.example/in" in refused.text()
    assert stored(account["account_id"]).inbound_url == "https://new.example/in"
    # And the page keeps what the user typed, to save it again knowingly
    assert 'value="https://tab.example/in"' in refused.body
    resaved = signed_in.post(
        SETTINGS,
        {
            **refused.hidden_fields("webhooks"),
            "csrf_token": refused.csrf_token(),
            "dlr_url": "https://hooks.example/dlr2",
            "inbound_url": "https://tab.example/in",
        },
    )
    assert resaved.status == 200 and stored(account["account_id"]).inbound_url == "https://tab.example/in"


def test_a_test_event_reaches_the_webhook_signed_and_the_page_shows_its_answer(signed_in, account, hook):
    from sms_gateway.domain.webhooks import verify

    signed_in.submit(SETTINGS, "webhooks", {"dlr_url": f"{hook.url}/dlr", "inbound_url": f"{hook.url}/in"})
    answer = signed_in.submit(SETTINGS, "test-event", {"kind": "dlr"})
    assert answer.status == 200
    assert f"Test event sent to {hook.url}/dlr: your webhook answered 200." in answer.text()
    request = hook.next("/dlr", timeout=5)
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert verify(account["signing_secret"], headers, request["raw"], now=time.time())
    assert headers["authorization"] == f"Bearer {account['webhook_token']}"
    assert request["body"]["type"] == "test"
    signed_in.submit(SETTINGS, "test-event", {"kind": "inbound"})
    assert hook.next("/in", timeout=5)["body"]["event"] == "two-way sms"


def test_a_failing_webhook_is_reported_on_the_page(signed_in):
    with ClientWebhook(failures=1) as failing:
        signed_in.submit(SETTINGS, "webhooks", {"dlr_url": f"{failing.url}/dlr", "inbound_url": ""})
        answer = signed_in.submit(SETTINGS, "test-event", {"kind": "dlr"})
    assert answer.status == 200
    assert "failed: client webhook answered 500" in answer.text()


def test_a_test_event_without_a_url_says_so(signed_in):
    answer = signed_in.submit(SETTINGS, "test-event", {"kind": "inbound"})
    assert answer.status == 400
    assert "no inbound SMS webhook URL is set" in answer.text()


@pytest.mark.parametrize(
    ("action", "label", "attribute"),
    [
        ("rotate-secret", "Signing secret", "signing_secret"),
        ("rotate-token", "Webhook token", "webhook_token"),
    ],
)
def test_a_rotated_webhook_secret_is_shown_once(signed_in, account, action, label, attribute):
    answer = signed_in.submit(SETTINGS, action)
    token, secret = webhook_credentials(account["account_id"])
    new_value = secret if attribute == "signing_secret" else token
    assert new_value != account[attribute]
    assert label in answer.text()
    assert new_value in answer.body
    # Never again: not on the next visit, and the old value was never on a page
    again = signed_in.get(SETTINGS)
    assert new_value not in again.body
    assert account[attribute] not in again.body


# ---------------------------------------------------------------- settings: API credentials


def _send(api: Any, token: str, sender: str = "48974") -> int:
    event = send_event(token, {"from": sender, "to": "2348020000000", "message": "hi"})
    return int(api(event)["statusCode"])


def list_credentials(account_id: str) -> list[dict[str, Any]]:
    from sms_gateway_tools.admin import list_credentials as listed

    return listed(account_id=account_id)


def _mint(browser: PortalClient, kind: str = "token") -> str:
    created = browser.submit(SETTINGS, "create-credential", {"kind": kind})
    return created.body.split('<code class="secret">', 1)[1].split("<", 1)[0]


def test_a_token_a_leaked_password_made_in_the_portal_does_not_outlive_the_reset(api, browser, account):
    """docs/operators.md, reset-password: 'shuts a leaked password out'. The portal turns the password (which the
    seed's /login carries in a query string, so it leaks) into API tokens that never expire."""
    from sms_gateway_tools.admin import reset_password

    # Given a thief who signs in to the portal with the leaked password and creates a Bearer token there
    assert browser.sign_in(account["username"], account["password"]).status == 303
    minted = _mint(browser)
    assert _send(api, minted) == 200
    # And points the DLR webhook at their own server
    assert browser.submit(SETTINGS, "webhooks", {"dlr_url": "https://thief.example/dlr"}).status == 200
    # When the operator resets the password, as the runbook says to for a leaked one
    reset = reset_password(account_id=account["account_id"])
    # Then the thief's portal session is ended (it is)
    assert browser.get(SETTINGS).status == 303
    # And so is what the thief made with it: the token the old password's session minted sends nothing
    assert _send(api, minted) == 401
    # While the token the operator issued with the account goes on sending: the customer's systems keep working
    assert _send(api, account["token"]) == 200
    # And the operator is told what was revoked, whose account it is, and the webhooks the portal changed, and when
    assert [(c["kind"], c["prefix"], c["created_by"]) for c in reset["revoked"]] == [("token", minted[:8], "portal")]
    assert reset["username"] == account["username"]
    assert reset["dlr_url"] == "https://thief.example/dlr"
    assert reset["webhooks_changed_at"] is not None and reset["webhooks_changed_by"] == "portal"
    assert reset["active_of_unknown_origin"] == reset["not_revoked"] == reset["kept_made_in_portal"] == []


def test_a_reset_revokes_only_what_was_made_in_the_portal_under_the_password_it_replaces(api, browser, account):
    """A credential the customer made in the portal under an earlier password (before a first reset) is theirs:
    the second reset, for a leak of the password the first set, leaves it; --keep-portal-credentials keeps all."""
    from sms_gateway_tools.admin import reset_password

    assert browser.sign_in(account["username"], account["password"]).status == 303
    before_first = _mint(browser, "apikey")
    first = reset_password(account_id=account["account_id"], keep_portal_credentials=True)
    # Kept on request, and listed so the operator sees it
    assert [c["prefix"] for c in first["kept_made_in_portal"]] == [before_first[:8]] and first["revoked"] == []
    # Given the new password leaks and a thief makes a token with it
    thief = PortalClient(api)
    assert thief.sign_in(account["username"], first["password"]).status == 303
    minted = _mint(thief)
    # When the operator resets it again (the default: revoke)
    second = reset_password(account_id=account["account_id"])
    # Then only the thief's token is revoked: the API key made under the first password stays active
    assert [c["prefix"] for c in second["revoked"]] == [minted[:8]]
    assert _send(api, minted) == 401
    listed = {c["prefix"]: c for c in list_credentials(account["account_id"])}
    assert listed[before_first[:8]]["revoked"] is False and listed[minted[:8]]["revoked"] is True


def test_a_portal_session_whose_password_was_reset_meanwhile_makes_no_credential(api, signed_in, account):
    """The credential item is written only while the account's password is the session's: a form sent as the reset
    is written makes nothing that would outlive it."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.errors import Unauthorized
    from sms_gateway.logic import accounts

    stale_epoch = stored(account["account_id"]).password_epoch
    accounts.reset_password(gateway().store, account["account_id"], now=utc_now())
    with pytest.raises(Unauthorized):
        accounts.issue_credential(
            gateway().store, account["account_id"], "token", now=utc_now(), in_portal_under=stale_epoch
        )
    assert [c for c in list_credentials(account["account_id"]) if c["created_by"] == "portal"] == []


def test_a_credential_is_created_shown_once_listed_by_prefix_and_revoked(api, signed_in, account):
    created = signed_in.submit(SETTINGS, "create-credential", {"kind": "token"})
    assert created.status == 200
    secret = created.body.split('<code class="secret">', 1)[1].split("<", 1)[0]
    assert secret.startswith("sk_")
    listing = signed_in.get(SETTINGS)
    assert secret not in listing.body
    assert f'<code data-prefix="{secret[:8]}">{secret[:8]}…</code>' in listing.body
    assert _send(api, secret) == 200
    revoked = signed_in.submit(SETTINGS, "revoke-credential", {"prefix": secret[:8], "kind": "token"})
    assert revoked.status == 200
    assert "no longer authenticates" in revoked.text()
    assert _send(api, secret) == 401
    # The account's first token still works
    assert _send(api, account["token"]) == 200


def test_a_create_credential_form_sent_twice_makes_one_credential(signed_in, account):
    from sms_gateway.bootstrap import gateway

    def active() -> int:
        listed = gateway().store.list_credentials(account["account_id"])
        return sum(not credential.revoked for credential in listed)

    before = active()
    # Given the Settings page's Create credential form
    fields = {**signed_in.get(SETTINGS).hidden_fields("create-credential"), "kind": "token"}
    # When it is sent twice (a double click: the browser shows only the second answer; or a reload of the answer)
    first = signed_in.post(SETTINGS, fields)
    second = signed_in.post(SETTINGS, fields)
    assert second.status == 200
    # Then one credential was made (the one shown), not a second live one whose secret no page ever showed
    assert active() == before + 1
    # And the second answer names it without its secret, shown once by the first
    secret = first.body.split('<code class="secret">', 1)[1].split("<", 1)[0]
    assert f"created a token (starts with {secret[:8]}) already" in second.text()
    assert secret not in second.body and '<code class="secret">' not in second.body


@pytest.mark.parametrize(
    ("action", "attribute"), [("rotate-secret", "signing_secret"), ("rotate-token", "webhook_token")]
)
def test_a_rotate_form_sent_twice_rotates_once(signed_in, account, action, attribute):
    # Given the Settings page's rotate form, sent once: its answer shows the new value
    fields = signed_in.get(SETTINGS).hidden_fields(action)
    first = signed_in.post(SETTINGS, fields)
    token, secret = webhook_credentials(account["account_id"])
    shown = secret if attribute == "signing_secret" else token
    assert shown in first.body
    # When the answer is reloaded (the same form posted again)
    again = signed_in.post(SETTINGS, fields)
    # Then the value shown stays the one in use: nothing was rotated again, and it is not shown again
    assert again.status == 200 and "already" in again.text()
    assert webhook_credentials(account["account_id"]) == (token, secret)
    assert shown not in again.body


def test_a_create_credential_form_without_its_key_makes_nothing(signed_in, account):
    from sms_gateway.bootstrap import gateway

    before = gateway().store.list_credentials(account["account_id"])
    fields = {"csrf_token": signed_in.get(SETTINGS).csrf_token(), "action": "create-credential", "kind": "token"}
    answer = signed_in.post(SETTINGS, fields)
    assert answer.status == 400 and "reload the page" in answer.text()
    assert gateway().store.list_credentials(account["account_id"]) == before


def test_a_revoked_credential_is_refused_from_the_next_request_even_from_a_replica_that_lags(
    api, signed_in, account, monkeypatch
):
    from sms_gateway.adapters.dynamodb import hash_secret

    created = signed_in.submit(SETTINGS, "create-credential", {"kind": "token"})
    secret = created.body.split('<code class="secret">', 1)[1].split("<", 1)[0]
    assert _send(api, secret) == 200
    # Given DynamoDB's eventually consistent reads of the credential answering from a replica that has not seen
    # the revocation yet (consistent reads see it)
    item_reads_lag(monkeypatch, {"pk": {"S": f"CRED#token#{hash_secret(secret)}"}, "sk": {"S": "CRED"}})
    # When the user revokes it on the portal ("it no longer authenticates")
    revoked = signed_in.submit(SETTINGS, "revoke-credential", {"prefix": secret[:8], "kind": "token"})
    assert revoked.status == 200 and "no longer authenticates" in revoked.text()
    # Then the very next request with it is refused (docs/operators.md: "From the next request on ... 401")
    assert _send(api, secret) == 401


def test_a_credential_of_another_account_cannot_be_revoked(api, signed_in, other_account):
    prefix = other_account["token"][:8]
    answer = signed_in.submit(SETTINGS, "revoke-credential", {"prefix": prefix, "kind": "token"})
    assert answer.status == 404
    assert _send(api, other_account["token"], sender="55555") == 200


def test_revoking_a_credential_the_account_does_not_have_says_so_in_the_portals_words(signed_in, account):
    # When the user revokes a credential their account does not have (another tab removed it, a hand-edited form)
    answer = signed_in.submit(SETTINGS, "revoke-credential", {"prefix": "sk_nothere", "kind": "token"})
    # Then the page says so in its own words: no operator command, no internal account id
    assert answer.status == 404
    text = answer.text()
    assert "list-credentials" not in text and account["account_id"] not in text
    assert "This account has no token starting sk_nothere" in text
    assert "the API credentials listed below" in text


def test_settings_shows_when_credentials_and_requests_were_made_in_the_accounts_zone(signed_in, account):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import from_iso
    from sms_gateway.domain.zones import account_zone
    from sms_gateway.logic import accounts, sender_requests

    # Given an account in Nairobi (UTC+3), whose Messages page shows its times in Nairobi time
    assert signed_in.submit(SETTINGS, "defaults", {"country": "KE", "timezone": "Africa/Nairobi"}).status == 200
    zone = account_zone("Africa/Nairobi")
    # When it makes a token, revokes it and requests a sender ID
    secret = signed_in.submit(SETTINGS, "create-credential", {"kind": "token"}).body.split('<code class="secret">')[1]
    signed_in.submit(SETTINGS, "revoke-credential", {"prefix": secret[:8], "kind": "token"})
    signed_in.submit(SETTINGS, "request-sender", {"sender": "CINEMA"})
    # Then Settings shows those times in Nairobi time too, as Messages writes them
    store = gateway().store
    [made] = [c for c in accounts.list_credentials(store, account["account_id"]) if c.prefix == secret[:8]]
    [asked] = sender_requests.list_requests(store, account["account_id"])
    page = signed_in.get(SETTINGS).body

    def local(stamp: str | None) -> str:
        assert stamp is not None
        return from_iso(stamp).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

    assert f"<td>{local(made.created_at)}</td>" in page
    assert f"revoked {local(made.revoked_at)}" in page
    assert f"<td>{local(asked.requested_at)}</td>" in page


def test_an_unknown_credential_kind_is_refused(signed_in, account):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts

    before = accounts.list_credentials(gateway().store, account["account_id"])
    answer = signed_in.submit(SETTINGS, "create-credential", {"kind": "session"})
    assert answer.status == 400
    assert accounts.list_credentials(gateway().store, account["account_id"]) == before


# ---------------------------------------------------------------- settings: senders


def test_a_sender_request_is_pending_until_an_operator_approves_it(signed_in, account):
    from sms_gateway_tools import admin

    answer = signed_in.submit(SETTINGS, "request-sender", {"sender": "CINEMA"})
    assert answer.status == 200
    assert "pending" in answer.text()
    assert 'status-pending">pending' in signed_in.get(SETTINGS).body
    assert "CINEMA" not in stored(account["account_id"]).senders
    # Asking again while it is pending changes nothing
    assert signed_in.submit(SETTINGS, "request-sender", {"sender": "cinema"}).status == 409
    listed = admin.list_sender_requests(status="pending")
    assert [(r["account_id"], r["sender"]) for r in listed] == [(account["account_id"], "CINEMA")]
    approved = admin.approve_sender(account_id=account["account_id"], sender="CINEMA")
    assert approved["status"] == "approved"
    assert "CINEMA" in stored(account["account_id"]).senders
    assert 'status-approved">approved' in signed_in.get(SETTINGS).body


def test_a_rejected_request_shows_its_reason_and_may_be_asked_again(signed_in, account):
    from sms_gateway.errors import Conflict
    from sms_gateway_tools import admin

    signed_in.submit(SETTINGS, "request-sender", {"sender": "BANK"})
    admin.reject_sender(account_id=account["account_id"], sender="BANK", reason="looks like a bank's name")
    page = signed_in.get(SETTINGS)
    assert 'status-rejected">rejected' in page.body
    assert "looks like a bank&#x27;s name" in page.body
    with pytest.raises(Conflict):
        admin.approve_sender(account_id=account["account_id"], sender="BANK")
    assert signed_in.submit(SETTINGS, "request-sender", {"sender": "BANK"}).status == 200
    assert "BANK" not in stored(account["account_id"]).senders


def test_a_sender_the_operator_released_is_shown_released_and_may_be_asked_for_again(signed_in, account):
    from sms_gateway_tools import admin

    # Given CINEMA requested, approved, and later released by the operator (admin remove-sender)
    assert signed_in.submit(SETTINGS, "request-sender", {"sender": "CINEMA"}).status == 200
    admin.approve_sender(account_id=account["account_id"], sender="CINEMA")
    admin.remove_sender(account_id=account["account_id"], sender="CINEMA")
    assert "CINEMA" not in stored(account["account_id"]).senders
    # When the account opens Settings
    page = signed_in.get(SETTINGS)
    # Then CINEMA is not shown as approved (Compose refuses it) but as released
    assert 'status-approved">approved' not in page.body
    assert 'status-released">released' in page.body and "you may request it again" in page.body
    # And the operator's listing says released too (and filters on it), not approved
    listed = admin.list_sender_requests(account_id=account["account_id"])
    assert [(r["sender"], r["status"]) for r in listed] == [("CINEMA", "released")]
    assert admin.list_sender_requests(status="approved") == []
    assert [r["sender"] for r in admin.list_sender_requests(status="released")] == ["CINEMA"]
    # And when the account asks for it again, it is pending as after a rejection, and the operator can approve it
    again = signed_in.submit(SETTINGS, "request-sender", {"sender": "CINEMA"})
    assert again.status == 200, again.text()[-400:]
    assert 'status-pending">pending' in signed_in.get(SETTINGS).body
    assert signed_in.submit(SETTINGS, "request-sender", {"sender": "CINEMA"}).status == 409
    admin.approve_sender(account_id=account["account_id"], sender="CINEMA")
    assert "CINEMA" in stored(account["account_id"]).senders
    assert 'status-approved">approved' in signed_in.get(SETTINGS).body


@pytest.mark.parametrize("decided", ["rejected", "pending"])
def test_a_sender_the_operator_registered_after_its_request_is_shown_registered_not_rejected_or_pending(
    signed_in, account, decided
):
    from sms_gateway_tools import admin

    # Given BANK requested (and rejected, or still pending), then registered by the operator with add-sender
    assert signed_in.submit(SETTINGS, "request-sender", {"sender": "BANK"}).status == 200
    if decided == "rejected":
        admin.reject_sender(account_id=account["account_id"], sender="BANK", reason="looks like a bank's name")
    admin.add_sender(account_id=account["account_id"], sender="BANK")
    assert "BANK" in stored(account["account_id"]).senders
    # When the account opens Settings
    page = signed_in.get(SETTINGS).body
    # Then BANK reads as its own sender (Compose offers it and sends from it), not as refused or waiting
    assert f'status-{decided}">{decided}' not in page
    assert "looks like a bank" not in page
    # And the operator's pending list does not ask for a decision on a sender the account already has
    assert admin.list_sender_requests(status="pending") == []


@pytest.mark.parametrize(
    ("sender", "status", "message"),
    [
        ("WAY-TOO-LONG-NAME", 400, "invalid sender id"),
        ("", 400, "invalid sender id"),
        ("48974", 409, "registered to your account already"),
    ],
)
def test_a_bad_or_owned_sender_request_is_refused(signed_in, account, sender, status, message):
    from sms_gateway_tools import admin

    answer = signed_in.submit(SETTINGS, "request-sender", {"sender": sender})
    assert answer.status == status
    assert message in answer.text()
    assert admin.list_sender_requests(account_id=account["account_id"]) == []


# ---------------------------------------------------------------- settings: defaults, assets


def test_defaults_are_saved_and_a_bad_one_changes_nothing(signed_in, account):
    saved = signed_in.submit(SETTINGS, "defaults", {"country": "ke", "timezone": "Africa/Nairobi"})
    assert saved.status == 200
    assert (stored(account["account_id"]).default_country, stored(account["account_id"]).timezone) == (
        "KE",
        "Africa/Nairobi",
    )
    for fields in ({"country": "XX", "timezone": "Africa/Lagos"}, {"country": "NG", "timezone": "Mars/Olympus"}):
        answer = signed_in.submit(SETTINGS, "defaults", fields)
        assert answer.status == 400
        assert stored(account["account_id"]).timezone == "Africa/Nairobi"
        assert stored(account["account_id"]).default_country == "KE"


def test_an_unknown_form_action_is_refused(signed_in):
    assert signed_in.submit(SETTINGS, "drop-tables").status == 400


def test_assets_are_served_with_their_type_and_cached_by_version(browser):
    page = browser.get("/portal/login")
    css_url = page.body.split('rel="stylesheet" href="', 1)[1].split('"', 1)[0]
    css = browser.get(css_url)
    assert css.status == 200
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    assert "immutable" in css.headers["Cache-Control"]
    js = browser.get("/portal/assets/portal.js")
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert js.headers["Cache-Control"] == "public, max-age=300"
    assert browser.get("/portal/assets/framework.py").status == 404
    assert browser.get("/portal/assets/..%2Fframework.py").status == 404


def test_asking_for_unknown_assets_keeps_nothing_per_name(browser):
    # Given the assets served once (the container reads them)
    from sms_gateway.dialects.portal import framework

    browser.get("/portal/assets/portal.js")
    kept = framework._assets()
    # When anyone, signed in or not, asks for many names that are no asset
    for number in range(50):
        assert browser.get(f"/portal/assets/{number:04d}{'x' * 300}.css").status == 404
    # Then they are all 404 and the container keeps only its one table of real assets: a cache keyed by the
    # name asked for grew by every unknown name (about 6 KB each), so requests alone could fill the api's memory
    assert framework._assets.cache_info().currsize == 1
    assert framework._assets() is kept and set(kept) == {path.name for path in framework.ASSETS_DIR.iterdir()}


def test_approving_a_sender_another_account_owns_is_refused_and_the_request_stays_pending(
    signed_in, account, other_account
):
    from sms_gateway.errors import Conflict
    from sms_gateway_tools import admin

    signed_in.submit(SETTINGS, "request-sender", {"sender": "55555"})
    with pytest.raises(Conflict, match="registered to account"):
        admin.approve_sender(account_id=account["account_id"], sender="55555")
    assert [r["status"] for r in admin.list_sender_requests(account_id=account["account_id"])] == ["pending"]
    assert "55555" not in stored(account["account_id"]).senders
    assert stored(other_account["account_id"]).senders == ("55555",)


def test_review_a_webhook_form_sent_as_the_password_is_reset_changes_nothing(api, signed_in, account, monkeypatch):
    """The portal makes a credential only while the session's password is the account's (add_credential's epoch
    condition): the webhook forms write the account with no such condition, so one whose session check passed just
    before the reset lands after it."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    original = accounts.set_webhooks
    resets: list[Any] = []

    def reset_lands_first(*args: Any, **kwargs: Any) -> Any:
        # The session was checked (consistently); the operator's reset is written before the form's write
        resets.append(accounts.reset_password(gateway().store, account["account_id"], now=utc_now()))
        return original(*args, **kwargs)

    monkeypatch.setattr(accounts, "set_webhooks", reset_lands_first)
    # Given a thief's portal session (the leaked password) sending the webhook form as the operator resets
    answer = signed_in.submit(SETTINGS, "webhooks", {"dlr_url": "https://thief.example/dlr"})
    # Then the form is answered as a signed-out session's
    assert answer.status == 401
    # And the reset's answer showed the webhooks as they were
    assert resets and resets[0].dlr_url != "https://thief.example/dlr"
    # And the form of the password the reset replaced changed nothing after it
    assert stored(account["account_id"]).dlr_url != "https://thief.example/dlr"
