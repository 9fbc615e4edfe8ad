"""Portal sessions: signing in with the account's username and password, the session's expiry, and its CSRF token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sms_gateway.domain.models import Account
from sms_gateway.logic.sessions import check_login, session_account
from sms_gateway.ports import ConsistentAccountLookup, PortalSession, PortalSessionStore, SessionStore

# Signed out after this long without a request, and after ABSOLUTE_LIFETIME whatever the use.
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_LIFETIME = timedelta(hours=12)
# The idle expiry is pushed forward at most this often, so reading pages seldom writes.
EXTEND_EVERY = timedelta(minutes=5)


@dataclass(frozen=True)
class SignedIn:
    """A live portal session: the account, and the token the cookie carries (never stored in clear)."""

    token: str
    account: Account
    session: PortalSession

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.token)


def csrf_token(session_token: str) -> str:
    """The synchronizer token of a session: derived from the session's own token, so it needs no storage, changes
    with every sign-in, and reveals nothing of the cookie (a one-way hash of it)."""
    digest = hashlib.sha256(f"portal-csrf:{session_token}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_matches(session_token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(session_token).encode(), (given or "").encode())


def sign_in(
    store: SessionStore,
    sessions: PortalSessionStore,
    username: str,
    password: str,
    *,
    now: datetime,
    current: SignedIn | None = None,
    address: str | None = None,
) -> str:
    """A new session's token for a valid username and password (the session-key /login's checks and attempt
    limits, `address` being the browser's); Unauthorized or TooManyAttempts otherwise, with the same message whichever
    part was wrong.
    `current`: the browser's live session, if any. Signed in to the same account already (a sign-in form left open
    in another tab), with the password just checked, its token is the answer: the session stands, so the forms other
    tabs show keep their CSRF token, and it lives on from now as a new one would (both expiries moved: a sign-in
    near the end of its 12 hours is not signed out minutes later). Signed in to another account, or with a password
    a reset has replaced since, a new session is made (the caller ends the old one)."""
    login = check_login(store, username, password, now=now, address=address)
    session = PortalSession(
        account_id=login.account_id,
        created_at=now,
        expires_at=now + ABSOLUTE_LIFETIME,
        idle_until=now + IDLE_TIMEOUT,
        password_epoch=login.password_epoch,
    )
    if (
        current is not None
        and current.account.account_id == login.account_id
        and current.session.password_epoch == login.password_epoch
        and sessions.renew_portal_session(current.token, session)
    ):
        return current.token
    token = secrets.token_urlsafe(32)
    sessions.save_portal_session(token, session)
    return token


def signed_in(
    sessions: PortalSessionStore,
    accounts: ConsistentAccountLookup,
    token: str | None,
    *,
    now: datetime,
    consistent: bool = False,
) -> SignedIn | None:
    """The live session of a cookie's token, its idle expiry moved forward; None when unknown or expired.
    `consistent`: the account read sees every write made before it (a form's action works on the account as it
    is, and a password reset just made ends the session); a page view may read it from a replica that lags."""
    if not token:
        return None
    session = sessions.portal_session(token)
    if session is None or now >= session.expires_at or now >= session.idle_until:
        return None
    account = session_account(accounts, session, consistent=consistent)
    if account is None:
        return None
    # Capped by the expiry read, which the store checks against the one stored (a renewal may have moved both since).
    idle_until = min(now + IDLE_TIMEOUT, session.expires_at)
    if idle_until - session.idle_until >= EXTEND_EVERY:
        sessions.extend_portal_session(token, idle_until)
        session = session.model_copy(update={"idle_until": idle_until})
    return SignedIn(token=token, account=account, session=session)


def sign_out(sessions: PortalSessionStore, token: str | None) -> None:
    if token:
        sessions.delete_portal_session(token)
