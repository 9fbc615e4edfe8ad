"""The portal's sign-in and sign-out: GET and POST /portal/login, POST /portal/logout, and /portal itself."""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.shared.cookies import Cookie

from sms_gateway.dialects.common import client_address
from sms_gateway.dialects.portal.framework import (
    BAD_CSRF,
    BAD_ORIGIN,
    CSRF_FIELD,
    LOGIN_PATH,
    LOGOUT_PATH,
    PORTAL_PATH,
    cookie,
    csrf_input,
    csrf_ok,
    current_session,
    home_path,
    html_response,
    page_html,
    portal_cookie,
    read_form,
    redirect,
    refusal,
    router,
    same_origin,
    session_cookie,
    session_cookie_header,
)
from sms_gateway.dialects.portal.markup import esc, field
from sms_gateway.domain.models import utc_now
from sms_gateway.errors import TooManyAttempts, Unauthorized

# Before there is a session, the sign-in form's CSRF token is a random value in a cookie and in the form (double
# submit): another site can neither read the cookie nor set it, so it cannot sign a browser into its own account.
LOGIN_COOKIE = "portal_login"
# One message whatever was wrong, so the page never tells whether a username exists.
WRONG_LOGIN = "Wrong username or password."
SIGNED_OUT_NOTICE = "You are signed out."
# What login_page mints (secrets.token_urlsafe(32)): a cookie of another shape is not one of ours and is replaced.
LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def _login_cookie(value: str | None) -> Cookie:
    return portal_cookie(LOGIN_COOKIE, value, path=LOGIN_PATH)


def login_page(
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    username: str = "",
    retry_after: int | None = None,
    event: Any = None,
) -> Response[Any]:
    # The browser's login token when it has one, so that every sign-in page it shows (two tabs sent to sign in when
    # the session ended) carries the token the cookie holds: a fresh one per view left older pages refused 403. The
    # token still binds the form to this browser's cookie, which another site can neither read nor set.
    held = cookie(event, LOGIN_COOKIE) if event is not None else None
    token = held if held and LOGIN_TOKEN.fullmatch(held) else secrets.token_urlsafe(32)
    notice_html = f'<div class="notice" role="status">{esc(notice)}</div>' if notice else ""
    form = (
        f'{notice_html}<form method="post" action="{LOGIN_PATH}" class="sign-in">{csrf_input(token)}'
        + field("Username", "username", username, required=True, autocomplete="username")
        + field("Password", "password", "", type_="password", required=True, autocomplete="current-password")
        + '<button type="submit">Sign in</button></form>'
    )
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return html_response(
        status, page_html(title="Sign in", body=form, error=error), headers=headers, cookies=[_login_cookie(token)]
    )


@router.get(PORTAL_PATH, include_in_schema=False)
def portal_root() -> Response[Any]:
    return redirect(home_path() if current_session(router.current_event) else LOGIN_PATH)


@router.get(LOGIN_PATH, include_in_schema=False)
def show_login() -> Response[Any]:
    if current_session(router.current_event):
        return redirect(home_path())
    signed_out = (router.current_event.query_string_parameters or {}).get("signed_out") == "1"
    return login_page(notice=SIGNED_OUT_NOTICE if signed_out else None, event=router.current_event)


@router.post(LOGIN_PATH, include_in_schema=False)
def sign_in() -> Response[Any]:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import portal_sessions

    event = router.current_event
    if not same_origin(event):
        return refusal(403, BAD_ORIGIN)
    form = read_form(event)
    expected = cookie(event, LOGIN_COOKIE) or ""
    given = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        return login_page(status=403, error=BAD_CSRF, event=event)
    username = form.get("username", "").strip()
    store = gateway().store
    current = current_session(event, consistent=True)
    try:
        token = portal_sessions.sign_in(
            store,
            store,
            username,
            form.get("password", ""),
            now=utc_now(),
            current=current,
            address=client_address(event),
        )
    except TooManyAttempts as error:
        return login_page(
            status=429, error=error.message, username=username, retry_after=error.retry_after, event=event
        )
    except Unauthorized:
        return login_page(status=401, error=WRONG_LOGIN, username=username, event=event)
    if current is not None and token == current.token:
        # Signed in to this account already (the form of another tab): the session stands, other tabs' forms too.
        return redirect(home_path())
    # A session this browser had before ends: one browser, one session (and no session outlives its cookie).
    # The login cookie stays: a sign-in form another tab shows carries its token and still signs in.
    portal_sessions.sign_out(store, session_cookie(event))
    return redirect(home_path(), cookies=[session_cookie_header(token)])


@router.post(LOGOUT_PATH, include_in_schema=False)
def sign_out() -> Response[Any]:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import portal_sessions

    event = router.current_event
    if not same_origin(event):
        return refusal(403, BAD_ORIGIN)
    who = current_session(event)
    if who is None:
        # Nothing to end: forget the stale cookie and show the sign-in page.
        return redirect(LOGIN_PATH, cookies=[session_cookie_header(None)])
    if not csrf_ok(who, read_form(event)):
        return refusal(403, BAD_CSRF)
    portal_sessions.sign_out(gateway().store, session_cookie(event))
    return redirect(f"{LOGIN_PATH}?signed_out=1", cookies=[session_cookie_header(None)])
