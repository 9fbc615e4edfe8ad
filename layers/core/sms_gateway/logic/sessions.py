"""Session keys of the session-key dialect: /login trades a username and password for a key that expires."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sms_gateway.domain.models import Account
from sms_gateway.errors import TooManyAttempts, Unauthorized
from sms_gateway.observability import logger
from sms_gateway.ports import (
    ConsistentAccountLookup,
    KeySession,
    LoginAttempt,
    LoginRefusal,
    PasswordLogin,
    PortalSession,
    SessionStore,
)

# Absolute, not sliding: a key is good for this long after /login whatever its use, so reading it never writes.
SESSION_LIFETIME = timedelta(hours=24)
BAD_LOGIN = "invalid username or password"
BAD_SESSION = "invalid or expired session: log in again with GET /login"
# Failed logins allowed in one fixed window from one source, and from all the sources a username does not know
# together: scrypt makes each guess slow, this caps how many there are, however many addresses they come from. Ten
# wrong passwords from one source lock that source out until the window ends; ten from anywhere lock out every source
# but those the username knows (a known source is still stopped by its own ten).
MAX_FAILED_LOGINS = 10
# A source is known to a username for this long after it logged in as it with its password (a reset forgets them
# all): the customer's own servers, which log in before each send as the seed's sample does, so that someone failing
# on purpose elsewhere does not keep them out.
KNOWN_SOURCE_FOR = timedelta(days=30)
# A known source's last login is written again at most this often: a login before each send writes nothing more.
REMEMBER_SOURCE_EVERY = timedelta(days=1)
# The sources a username knows at most (the latest ones): the record stays small on the item every login reads.
MOST_KNOWN_SOURCES = 32
# What failures are counted under when the request names no client address: one source that is never known.
UNKNOWN_SOURCE = "-"
# Logins of one username being checked at once. Failures are counted once checked, so concurrent guesses could
# overshoot the failure limit: this bounds the overshoot (at most MAX_FAILED_LOGINS + MAX_LOGINS_IN_FLIGHT - 1
# guesses a window) while a client's workers that all log in at once (each seed sample logs in as it starts) get in.
MAX_LOGINS_IN_FLIGHT = 20
LOGIN_WINDOW = timedelta(minutes=15)
# A login counts as in flight for at most this long: twice the longest an API request runs (API Gateway gives up
# after 30 s), so only a login whose invocation died (a timeout, out of memory) before giving its place back is
# past it, and its place is free again then rather than held until the window ends.
LOGIN_IN_FLIGHT_FOR = timedelta(seconds=60)
BUSY_RETRY_AFTER = 1


@dataclass(frozen=True)
class SessionKeys:
    """What /login answers as `user_key;session_key`."""

    user_key: str
    session_key: str

    def render(self) -> str:
        return f"{self.user_key};{self.session_key}"


def login_source(address: str | None) -> str:
    """What a login's failures are counted under: the client's address (API Gateway's sourceIp), an IPv6 one by its
    /64, which one host can take any address of; UNKNOWN_SOURCE when there is none (an event not from API Gateway)."""
    try:
        parsed = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return UNKNOWN_SOURCE
    if parsed.version == 6 and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed.ipv4_mapped or parsed) if parsed.version == 6 else str(parsed)


def check_login(
    store: SessionStore, username: str | None, password: str | None, *, now: datetime, address: str | None = None
) -> PasswordLogin:
    """The login (account id, password epoch) of a valid username and password, within the attempt limits of the
    client's `address` and of the username; Unauthorized with one message whatever was wrong (the session-key
    dialect's /login and the portal's sign-in both use it)."""
    if not username or not password:
        raise Unauthorized("username and password are required")
    source = login_source(address)
    window_seconds = int(LOGIN_WINDOW.total_seconds())
    window = int(now.timestamp()) // window_seconds
    window_ends = datetime.fromtimestamp((window + 1) * window_seconds, tz=now.tzinfo)

    def begin(*, known_source: bool) -> LoginAttempt | LoginRefusal:
        return store.begin_login_attempt(
            username,
            window,
            source=source,
            known_source=known_source,
            max_failures=MAX_FAILED_LOGINS,
            max_in_flight=MAX_LOGINS_IN_FLIGHT,
            started_at=now,
            stale_before=now - LOGIN_IN_FLIGHT_FOR,
            expires_at=window_ends + LOGIN_WINDOW,
        )

    attempt = begin(known_source=False)
    # Read only when the username is locked out: the usual login asks nothing of the known sources.
    if attempt == LoginRefusal.LOCKED_OUT_TO_UNKNOWN_SOURCES and _known(store, username, source, now=now):
        attempt = begin(known_source=True)
    if isinstance(attempt, LoginRefusal):
        raise refused(attempt, window_ends, now=now)
    try:
        login = store.password_login(username, password, source=source)
    except Exception:
        # Only a wrong password counts: a check that raised (the store failing) ends the attempt uncounted.
        store.end_login_attempt(username, window, attempt, source=source, failed=False)
        raise
    store.end_login_attempt(username, window, attempt, source=source, failed=login is None)
    if login is None:
        raise Unauthorized(BAD_LOGIN)
    if source != UNKNOWN_SOURCE and (
        login.source_seen_at is None or login.source_seen_at <= now - REMEMBER_SOURCE_EVERY
    ):
        _remember(store, username, source, login, now=now)
    return login


def _remember(store: SessionStore, username: str, source: str, login: PasswordLogin, *, now: datetime) -> None:
    """Makes `source` known to the username, never failing the login: the password was right, and the source only
    spares the login a lock-out others cause; the next login from it (it is still not known) remembers it. Until
    2026-12-08 a failed write (the table throttled past botocore's retries) answered that login 500."""
    try:
        store.remember_login_source(
            username,
            source,
            password_epoch=login.password_epoch,
            at=now,
            forget_before=now - KNOWN_SOURCE_FOR,
            most=MOST_KNOWN_SOURCES,
        )
    except Exception:  # whatever the store raised: the login stands
        logger.warning(
            "could not remember the source of a login; the next login from it tries again",
            exc_info=True,
            extra={"account_id": login.account_id},
        )


def _known(store: SessionStore, username: str, source: str, *, now: datetime) -> bool:
    return source != UNKNOWN_SOURCE and store.login_source_known(username, source, since=now - KNOWN_SOURCE_FOR)


def refused(refusal: LoginRefusal, window_ends: datetime, *, now: datetime) -> TooManyAttempts:
    """A login not let in, with when to come back: a busy username in a second (no login failed, a place frees
    within a password check), a locked-out one when its window ends."""
    if refusal == LoginRefusal.BUSY:
        return TooManyAttempts(
            f"too many logins of this username at once: retry in {BUSY_RETRY_AFTER} s", retry_after=BUSY_RETRY_AFTER
        )
    retry_after = max(int((window_ends - now).total_seconds()), 1)
    return TooManyAttempts(
        f"too many failed logins for this username: try again in {retry_after} s", retry_after=retry_after
    )


def log_in(
    store: SessionStore, username: str | None, password: str | None, *, now: datetime, address: str | None = None
) -> SessionKeys:
    """A fresh session for valid credentials; Unauthorized with one message whatever was wrong. `address`: the
    client's (check_login)."""
    login = check_login(store, username, password, now=now, address=address)
    # 256 bits from the OS; URL-safe characters only, so never a ';' that would split the answer.
    session_key = secrets.token_urlsafe(32)
    store.save_session(
        session_key,
        login.account_id,
        created_at=now,
        expires_at=now + SESSION_LIFETIME,
        password_epoch=login.password_epoch,
    )
    return SessionKeys(user_key=login.account_id, session_key=session_key)


def account_for_session(
    sessions: SessionStore,
    accounts: ConsistentAccountLookup,
    user_key: str | None,
    session_key: str | None,
    *,
    now: datetime,
) -> Account:
    """The caller's account, when `session_key` is live and was issued for `user_key`."""
    if not user_key or not session_key:
        raise Unauthorized("missing user_key or Session_key header: log in with GET /login first")
    session = sessions.key_session(session_key, now=now)
    # Both headers must agree, as the family requires: the session's own account is the user_key.
    if session is None or not hmac.compare_digest(session.account_id.encode(), user_key.encode()):
        raise Unauthorized(BAD_SESSION)
    account = session_account(accounts, session)
    if account is None:
        raise Unauthorized(BAD_SESSION)
    return account


def session_account(
    accounts: ConsistentAccountLookup, session: KeySession | PortalSession, *, consistent: bool = False
) -> Account | None:
    """The account of a session (session-key or portal), or None when it is gone or a password reset ended the
    session. It is read with the account the request needs anyway, so ending every session costs no scan. An
    eventually consistent read that says the session was ended is made again strongly consistent before the session
    is refused: a replica that has not seen a reset yet would end the sessions of the new password."""
    account = accounts.get_account(session.account_id, consistent=consistent)
    if account is not None and not consistent and ended_by_reset(account, session):
        account = accounts.get_account(session.account_id, consistent=True)
    if account is None or ended_by_reset(account, session):
        return None
    return account


def ended_by_reset(account: Account, session: KeySession | PortalSession) -> bool:
    """Whether a password reset ended the session: it was opened with another password than the account's now (the
    epoch its login read with the hash; a reset gives the login and the account a new one in one transaction, so a
    login that checked the old password, however late, opened a session the reset ends). A session opened before
    sessions carried the epoch (2026-12-06) is judged by the clock, as it was: ended when opened before the reset."""
    if session.password_epoch is None:
        return account.sessions_valid_from is not None and session.created_at < account.sessions_valid_from
    return session.password_epoch != account.password_epoch
