"""The portal in a real browser against the local stack: sign in, webhooks and a signed test event, a secret shown
once, API credentials created and revoked, a sender ID requested, sign out. Screenshots: artifacts/screenshots/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Portal
from tests.e2e.client_webhook import ClientWebhook

pytestmark = pytest.mark.browser

SETTINGS = "/portal/settings"
HOME = "/portal/messages"


def sign_in_to_settings(portal: Portal, account: dict[str, Any]) -> None:
    portal.sign_in(account)
    portal.open(SETTINGS)


@pytest.fixture
def hook() -> Iterator[ClientWebhook]:
    with ClientWebhook() as server:
        yield server


def send_sms(stack: Any, account: dict[str, Any], token: str) -> int:
    """A 9bits send from the account's shortcode with `token`, as a client application makes it."""
    answer = httpx.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={"from": account["senders"][0], "to": "2348030000000", "message": "hello from the portal test"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return answer.status_code


def assert_signed_by(request: dict[str, Any], secret: str) -> None:
    from sms_gateway.domain.webhooks import verify

    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert verify(secret, headers, request["raw"], now=time.time()), "the test event's signature does not verify"


def shown_once_secret(portal: Portal) -> str:
    secrets = portal.find_all(".reveal code.secret")
    assert len(secrets) == 1, portal.text()
    return str(secrets[0].text)


def test_signing_in_with_a_wrong_password_then_the_right_one(portal, account):
    # The portal's address leads a signed-out visitor to the sign-in form
    portal.open("/portal")
    assert portal.driver.current_url.endswith("/portal/login")
    portal.sign_in(account, password="not-the-password")
    portal.shot("wrong-password")
    assert "Wrong username or password." in portal.text()
    assert portal.driver.current_url.endswith("/portal/login")
    portal.sign_in(account)
    portal.shot("signed-in")
    # Signing in leads to the first page of the navigation (Messages)
    assert portal.driver.current_url.endswith(HOME)
    assert portal.find("h1").text == "Messages"
    assert "Cinema Club" in portal.find("header").text
    # The session cookie is out of the page's reach
    assert "portal_session" not in portal.driver.execute_script("return document.cookie")
    # And the portal's address now leads to the first page
    portal.open("/portal")
    assert portal.driver.current_url.endswith(HOME)


def test_setting_a_webhook_and_sending_a_signed_test_event(portal, account, hook):
    sign_in_to_settings(portal, account)
    portal.fill("#dlr_url", f"{hook.url}/dlr")
    portal.submit(portal.form("webhooks"))
    portal.shot("webhook-saved")
    assert "Webhook URLs saved." in portal.text()
    assert portal.find("#dlr_url").get_attribute("value") == f"{hook.url}/dlr"
    portal.choose("select[name=kind]", "dlr")
    portal.submit(portal.form("test-event"))
    portal.shot("test-event-sent")
    assert f"Test event sent to {hook.url}/dlr: your webhook answered 200." in portal.text()
    request = hook.next("/dlr", timeout=10)
    assert request["body"]["type"] == "test"
    assert request["headers"]["Authorization"] == f"Bearer {account['webhook_token']}"
    assert_signed_by(request, account["signing_secret"])


def test_a_rotated_signing_secret_is_shown_once_and_signs_from_then_on(portal, account, hook):
    sign_in_to_settings(portal, account)
    portal.fill("#dlr_url", f"{hook.url}/dlr")
    portal.submit(portal.form("webhooks"))
    portal.submit(portal.form("rotate-secret"), confirm=True)
    portal.shot("secret-shown-once")
    secret = shown_once_secret(portal)
    assert secret.startswith("whsec_") and secret != account["signing_secret"]
    assert "Shown once." in portal.text()
    # The next event is signed with the new secret, not the old one
    portal.submit(portal.form("test-event"))
    request = hook.next("/dlr", timeout=10)
    assert_signed_by(request, secret)
    from sms_gateway.domain.webhooks import verify

    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert not verify(account["signing_secret"], headers, request["raw"], now=time.time())
    # And the secret is never shown again
    portal.open(SETTINGS)
    portal.shot("secret-not-shown-again")
    assert secret not in portal.driver.page_source
    assert not portal.find_all(".reveal")


def test_an_api_credential_is_created_then_revoked_and_stops_working(portal, account, stack):
    sign_in_to_settings(portal, account)
    portal.choose(f"{portal.form('create-credential')} select[name=kind]", "token")
    portal.submit(portal.form("create-credential"))
    portal.shot("credential-created")
    token = shown_once_secret(portal)
    assert token.startswith("sk_")
    assert send_sms(stack, account, token) == 200
    # Listed by its prefix only
    portal.open(SETTINGS)
    assert token not in portal.driver.page_source
    row = f"#credentials tr:has(code[data-prefix='{token[:8]}'])"
    assert portal.find(row).text.count("active") == 1
    portal.submit(f"{row} form", confirm=True)
    portal.shot("credential-revoked")
    assert "no longer authenticates" in portal.text()
    assert "revoked" in portal.find(row).text
    assert send_sms(stack, account, token) == 401
    assert send_sms(stack, account, account["token"]) == 200


def test_a_requested_sender_id_is_pending(portal, account):
    sign_in_to_settings(portal, account)
    portal.fill("#sender", "CINEMA")
    portal.submit(portal.form("request-sender"))
    portal.shot("sender-requested")
    assert "pending until an operator approves it" in portal.text()
    row = portal.find("#senders tr:has(code[data-sender='CINEMA'])")
    assert "pending" in row.text
    # A bad one is refused with a clear message and not listed
    portal.fill("#sender", "WAY-TOO-LONG-NAME")
    portal.submit(portal.form("request-sender"))
    portal.shot("bad-sender-refused")
    assert "invalid sender id" in portal.find(".error").text
    assert not portal.find_all("#senders tr:has(code[data-sender='WAY-TOO-LONG-NAME'])")


def test_signing_out_ends_the_session(portal, account):
    portal.sign_in(account)
    portal.submit("form.sign-out")
    portal.shot("signed-out")
    assert "You are signed out." in portal.text()
    portal.open(SETTINGS)
    assert portal.driver.current_url.endswith("/portal/login")
