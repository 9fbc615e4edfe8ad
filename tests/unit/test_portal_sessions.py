"""Portal sessions (logic/portal_sessions.py) with in-memory stores: expiry, the idle extension, CSRF tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sms_gateway.domain.models import Account
from sms_gateway.errors import TooManyAttempts, Unauthorized
from sms_gateway.logic import portal_sessions
from sms_gateway.logic.portal_sessions import ABSOLUTE_LIFETIME, EXTEND_EVERY, IDLE_TIMEOUT
from sms_gateway.ports import LoginAttempt, LoginRefusal, PasswordLogin, PortalSession

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ACCOUNT = Account(account_id="42", name="Cinema Club", credits=0, partner_id="123456", created_at="2026-01-01")


class Stores:
    """The account, login and portal-session stores in memory; counts the writes an extension makes."""

    def __init__(self) -> None:
        self.sessions: dict[str, PortalSession] = {}
        self.attempts: dict[tuple[str, int, str], int] = {}
        self.known_sources: dict[str, datetime] = {}
        self.extensions = 0
        self.account = ACCOUNT
        # What an eventually consistent read answers when a replica lags (None: what a consistent one does).
        self.replica: Account | None = None
        self.consistent_reads: list[bool] = []

    # login (ports.SessionStore, the parts check_login uses): failures by (username, window, source), "*" every source
    def password_login(self, username: str, password: str, *, source: str | None = None) -> PasswordLogin | None:
        if (username, password) != ("cinema", "right"):
            return None
        seen_at = self.known_sources.get(source or "")
        return PasswordLogin(
            account_id=ACCOUNT.account_id, password_epoch=self.account.password_epoch, source_seen_at=seen_at
        )

    def begin_login_attempt(
        self, username: str, window: int, *, source: str, known_source: bool, max_failures: int, **rest: object
    ) -> LoginAttempt | LoginRefusal:
        if self.attempts.get((username, window, source), 0) >= max_failures:
            return LoginRefusal.LOCKED_OUT
        if not known_source and self.attempts.get((username, window, "*"), 0) >= max_failures:
            return LoginRefusal.LOCKED_OUT_TO_UNKNOWN_SOURCES
        return LoginAttempt(place=0, started_ms=0)

    def end_login_attempt(
        self, username: str, window: int, attempt: LoginAttempt, *, source: str, failed: bool
    ) -> None:
        for counted in (source, "*"):
            self.attempts[(username, window, counted)] = self.attempts.get((username, window, counted), 0) + failed

    def login_source_known(self, username: str, source: str, *, since: datetime) -> bool:
        return self.known_sources.get(source, since - timedelta(seconds=1)) >= since

    def remember_login_source(
        self, username: str, source: str, *, password_epoch: str, at: datetime, forget_before: datetime, most: int
    ) -> None:
        self.known_sources[source] = at

    # accounts
    def get_account(self, account_id: str, *, consistent: bool = False) -> Account | None:
        self.consistent_reads.append(consistent)
        if account_id != ACCOUNT.account_id:
            return None
        return self.account if consistent or self.replica is None else self.replica

    # portal sessions
    def save_portal_session(self, token: str, session: PortalSession) -> None:
        assert token not in self.sessions
        self.sessions[token] = session

    def portal_session(self, token: str) -> PortalSession | None:
        return self.sessions.get(token)

    def extend_portal_session(self, token: str, idle_until: datetime) -> None:
        self.extensions += 1
        stored = self.sessions.get(token)
        if stored is not None and stored.idle_until < idle_until <= stored.expires_at:
            self.sessions[token] = stored.model_copy(update={"idle_until": idle_until})

    def renew_portal_session(self, token: str, session: PortalSession) -> bool:
        stored = self.sessions.get(token)
        if stored is None or (stored.account_id, stored.password_epoch) != (session.account_id, session.password_epoch):
            return False
        self.sessions[token] = stored.model_copy(
            update={"expires_at": session.expires_at, "idle_until": session.idle_until}
        )
        return True

    def delete_portal_session(self, token: str) -> None:
        self.sessions.pop(token, None)


@pytest.fixture
def stores() -> Stores:
    return Stores()


# The customer's office, where it signs in; someone failing on purpose from elsewhere.
OFFICE, ELSEWHERE = "203.0.113.7", "198.51.100.66"


def sign_in(stores: Stores, password: str = "right", at: datetime = NOW, address: str | None = OFFICE) -> str:
    return portal_sessions.sign_in(stores, stores, "cinema", password, now=at, address=address)


def signed_in(stores: Stores, token: str | None, at: datetime) -> portal_sessions.SignedIn | None:
    return portal_sessions.signed_in(stores, stores, token, now=at)


def test_a_session_is_stored_with_both_expiries_and_opens_the_account(stores):
    token = sign_in(stores)
    stored = stores.sessions[token]
    assert (stored.idle_until, stored.expires_at) == (NOW + IDLE_TIMEOUT, NOW + ABSOLUTE_LIFETIME)
    who = signed_in(stores, token, NOW + timedelta(minutes=1))
    assert who is not None and who.account == ACCOUNT
    assert len(token) >= 43  # 256 bits, URL-safe


def test_a_wrong_password_makes_no_session(stores):
    with pytest.raises(Unauthorized):
        sign_in(stores, password="wrong")
    assert stores.sessions == {}


def test_signing_in_again_to_the_account_a_browser_is_signed_in_to_keeps_its_session(stores):
    # Given a browser signed in (a second tab's sign-in form is sent)
    first = sign_in(stores)
    current = signed_in(stores, first, NOW + timedelta(minutes=1))
    # When it signs in again to the same account
    again = portal_sessions.sign_in(stores, stores, "cinema", "right", now=NOW + timedelta(minutes=2), current=current)
    # Then its session stands (the forms other tabs show keep their CSRF token) and no other is made
    assert again == first and list(stores.sessions) == [first]
    # But the password is still checked
    with pytest.raises(Unauthorized):
        portal_sessions.sign_in(stores, stores, "cinema", "wrong", now=NOW, current=current)


def test_review_a_sign_in_that_keeps_the_session_is_not_signed_out_minutes_later(stores):
    # Given a browser signed in at 9:00 and used all day (each request pushes its idle expiry on)
    first = sign_in(stores)
    at = NOW
    while at < NOW + ABSOLUTE_LIFETIME - timedelta(minutes=5):
        at += EXTEND_EVERY
        assert signed_in(stores, first, at) is not None
    # When the user signs in again with the right password (the sign-in form of another tab), 5 minutes before 21:00
    current = signed_in(stores, first, at)
    token = portal_sessions.sign_in(stores, stores, "cinema", "right", now=at, current=current)
    # Then the session the sign-in answers lives on as any sign-in's does (before 6472c87 a fresh 12 hours):
    # not ended 6 minutes after the password was typed
    assert signed_in(stores, token, at + timedelta(minutes=6)) is not None


def test_a_sign_in_that_keeps_the_session_is_still_ended_by_a_password_reset(stores):
    # Given a browser that signed in again to its account near the end of its session (the session was renewed)
    first = sign_in(stores)
    at = NOW
    while at < NOW + ABSOLUTE_LIFETIME - timedelta(minutes=20):
        at += EXTEND_EVERY
        current = signed_in(stores, first, at)
    assert portal_sessions.sign_in(stores, stores, "cinema", "right", now=at, current=current) == first
    # When the password is reset
    stores.account = reset(ACCOUNT, at + timedelta(minutes=1))
    # Then the session ends, as every session of the old password does
    assert signed_in(stores, first, at + timedelta(minutes=2)) is None


def test_a_sign_in_with_the_password_a_reset_set_while_the_session_was_read_gets_a_new_session(stores):
    # Given a browser's session read (live) just before the account's password was reset
    first = sign_in(stores)
    current = signed_in(stores, first, NOW + timedelta(minutes=1))
    stores.account = reset(ACCOUNT, NOW + timedelta(minutes=1))
    # When it signs in with the new password
    token = portal_sessions.sign_in(stores, stores, "cinema", "right", now=NOW + timedelta(minutes=2), current=current)
    # Then it gets a new session: the one the reset ended is not brought back under its old token
    assert token != first
    assert signed_in(stores, first, NOW + timedelta(minutes=3)) is None
    assert signed_in(stores, token, NOW + timedelta(minutes=3)) is not None


def test_a_browser_signed_in_to_another_account_gets_a_new_session(stores):
    import dataclasses

    first = sign_in(stores)
    current = signed_in(stores, first, NOW + timedelta(minutes=1))
    assert current is not None
    elsewhere = dataclasses.replace(current, account=ACCOUNT.model_copy(update={"account_id": "43"}))
    again = portal_sessions.sign_in(stores, stores, "cinema", "right", now=NOW, current=elsewhere)
    assert again != first and again in stores.sessions


def test_the_login_attempt_limit_applies(stores):
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS

    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(Unauthorized):
            sign_in(stores, password="wrong")
    with pytest.raises(TooManyAttempts):
        sign_in(stores)
    assert stores.sessions == {}


def test_failures_from_elsewhere_do_not_lock_out_a_source_that_signed_in_before(stores):
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS

    # Given the office signed in before, and someone failing on purpose elsewhere until that source is locked out
    sign_in(stores)
    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(Unauthorized):
            sign_in(stores, password="wrong", address=ELSEWHERE)
    for password in ("wrong", "right"):
        with pytest.raises(TooManyAttempts, match="too many failed logins for this username"):
            sign_in(stores, password=password, address=ELSEWHERE)
    # Then a source never seen is locked out with it (guesses spread over many addresses gain nothing)
    with pytest.raises(TooManyAttempts, match="too many failed logins for this username"):
        sign_in(stores, address="192.0.2.1")
    # And the office signs in all the same
    assert sign_in(stores, at=NOW + timedelta(minutes=1))


def test_a_known_source_is_still_stopped_by_its_own_failures(stores):
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS

    sign_in(stores)
    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(Unauthorized):
            sign_in(stores, password="wrong")
    with pytest.raises(TooManyAttempts, match="too many failed logins for this username"):
        sign_in(stores)


def test_a_source_is_remembered_once_a_day_however_often_it_signs_in(stores, monkeypatch):
    from sms_gateway.logic.sessions import REMEMBER_SOURCE_EVERY

    remembered: list[datetime] = []
    real = stores.remember_login_source
    monkeypatch.setattr(stores, "remember_login_source", lambda *a, **kw: remembered.append(kw["at"]) or real(*a, **kw))
    for minutes in range(0, 60, 5):
        sign_in(stores, at=NOW + timedelta(minutes=minutes))
    sign_in(stores, at=NOW + REMEMBER_SOURCE_EVERY)
    assert remembered == [NOW, NOW + REMEMBER_SOURCE_EVERY]


def test_a_request_without_an_address_is_never_a_known_source(stores):
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS, UNKNOWN_SOURCE

    sign_in(stores, address=None)
    assert UNKNOWN_SOURCE not in stores.known_sources
    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(Unauthorized):
            sign_in(stores, password="wrong", address=ELSEWHERE)
    with pytest.raises(TooManyAttempts):
        sign_in(stores, address=None)


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("203.0.113.7", "203.0.113.7"),
        # One host may use any address of its /64: each would be a source of its own
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "-"),
        ("", "-"),
        ("not an address", "-"),
    ],
)
def test_failures_are_counted_by_the_clients_address_an_ipv6_one_by_its_64(address, source):
    from sms_gateway.logic.sessions import login_source

    assert login_source(address) == source


@pytest.mark.parametrize("token", [None, "", "unknown"])
def test_no_or_an_unknown_token_is_no_session(stores, token):
    sign_in(stores)
    assert signed_in(stores, token, NOW) is None


def test_an_idle_session_ends_at_its_idle_expiry(stores):
    token = sign_in(stores)
    assert signed_in(stores, token, NOW + IDLE_TIMEOUT - timedelta(seconds=1)) is not None
    # The request just before moved the idle expiry: from there it is idle for IDLE_TIMEOUT again
    idle_until = stores.sessions[token].idle_until
    assert signed_in(stores, token, idle_until) is None


def test_use_moves_the_idle_expiry_but_never_past_the_absolute_one(stores):
    token = sign_in(stores)
    at = NOW
    while at < NOW + ABSOLUTE_LIFETIME - timedelta(minutes=1):
        at += timedelta(minutes=10)
        at = min(at, NOW + ABSOLUTE_LIFETIME - timedelta(seconds=1))
        assert signed_in(stores, token, at) is not None
    assert stores.sessions[token].idle_until <= NOW + ABSOLUTE_LIFETIME
    assert signed_in(stores, token, NOW + ABSOLUTE_LIFETIME) is None


def test_reading_pages_writes_the_session_at_most_every_few_minutes(stores):
    token = sign_in(stores)
    for second in range(0, int(EXTEND_EVERY.total_seconds()), 30):
        signed_in(stores, token, NOW + timedelta(seconds=second))
    assert stores.extensions == 0
    signed_in(stores, token, NOW + EXTEND_EVERY)
    assert stores.extensions == 1


def test_signing_out_deletes_the_session(stores):
    token = sign_in(stores)
    portal_sessions.sign_out(stores, token)
    assert signed_in(stores, token, NOW) is None


def test_each_session_has_its_own_csrf_token_that_reveals_nothing_of_the_cookie(stores):
    first, second = sign_in(stores), sign_in(stores)
    token = portal_sessions.csrf_token(first)
    assert token != portal_sessions.csrf_token(second)
    assert first not in token
    assert portal_sessions.csrf_matches(first, token)
    assert not portal_sessions.csrf_matches(second, token)
    assert not portal_sessions.csrf_matches(first, "")
    assert not portal_sessions.csrf_matches(first, None)


def reset(account: Account, at: datetime, epoch: str = "second") -> Account:
    """The account as admin reset-password leaves it: a new password epoch, and the time of the reset."""
    return account.model_copy(update={"sessions_valid_from": at, "password_epoch": epoch})


def test_a_password_reset_ends_the_sessions_signed_in_before_it(stores):
    # Given a session signed in before the account's password was reset, and one after
    before = sign_in(stores)
    stores.account = reset(ACCOUNT, NOW + timedelta(minutes=1))
    after = sign_in(stores, at=NOW + timedelta(minutes=2))
    # Then only the one after is a session
    assert signed_in(stores, before, NOW + timedelta(minutes=3)) is None
    assert signed_in(stores, after, NOW + timedelta(minutes=3)) is not None


def test_a_sign_in_that_checked_the_old_password_while_the_reset_was_made_is_ended_by_it(stores):
    # Given a sign-in that checked the old password after the reset took its time, before the reset was written
    stores.account = ACCOUNT.model_copy(update={"password_epoch": "first"})
    late = sign_in(stores, at=NOW + timedelta(seconds=2))
    # When the reset is written
    stores.account = reset(stores.account, NOW + timedelta(seconds=1))
    # Then its session is ended all the same, though it is younger than the reset's time
    assert signed_in(stores, late, NOW + timedelta(seconds=3)) is None
    # And the new password's sessions live, whatever the clocks (one opened a little before the reset's time)
    assert signed_in(stores, sign_in(stores, at=NOW), NOW + timedelta(seconds=3)) is not None


def test_a_session_signed_in_before_sessions_carried_the_password_epoch_is_judged_by_the_reset_time(stores):
    # Given sessions stored before 2026-12-06 (no epoch), one signed in before the reset and one after
    before, after = sign_in(stores), sign_in(stores, at=NOW + timedelta(minutes=2))
    for token in (before, after):
        stores.sessions[token] = stores.sessions[token].model_copy(update={"password_epoch": None})
    # When the password is reset between them
    stores.account = reset(ACCOUNT, NOW + timedelta(minutes=1))
    # Then the one before is ended and the one after lives: nobody is signed out by the deploy itself
    assert signed_in(stores, before, NOW + timedelta(minutes=3)) is None
    assert signed_in(stores, after, NOW + timedelta(minutes=3)) is not None


def test_a_page_view_read_from_a_replica_that_has_not_seen_the_reset_does_not_end_the_new_passwords_session(stores):
    # Given a reset, and a sign-in with the new password right after it
    stores.account = reset(ACCOUNT, NOW)
    token = sign_in(stores, at=NOW + timedelta(seconds=1))
    # When a page view's eventually consistent read is answered by a replica that still has the old password's epoch
    stores.replica = ACCOUNT
    stores.consistent_reads.clear()
    # Then the session is read again strongly consistent before it is refused, and lives
    assert signed_in(stores, token, NOW + timedelta(seconds=2)) is not None
    assert stores.consistent_reads == [False, True]


def test_a_form_reads_the_account_consistently_and_a_page_view_at_half_the_cost(stores):
    # Given a session
    token = sign_in(stores)
    # When a page is viewed, then a form posted
    portal_sessions.signed_in(stores, stores, token, now=NOW)
    portal_sessions.signed_in(stores, stores, token, now=NOW, consistent=True)
    # Then only the form's read of the account is strongly consistent (it sees a save or a reset just made)
    assert stores.consistent_reads == [False, True]


def test_review_another_tabs_request_during_a_renewing_sign_in_does_not_undo_the_renewal(stores, monkeypatch):
    # Given a browser signed in at 9:00 whose last request was 40 minutes before the end of its 12 hours
    first = sign_in(stores)
    end = NOW + ABSOLUTE_LIFETIME
    stores.sessions[first] = stores.sessions[first].model_copy(update={"idle_until": end - timedelta(minutes=10)})
    at = end - timedelta(minutes=12)
    current = signed_in(stores, first, at)
    assert current is not None
    # When, as another tab's request has read the session (old expiry) and is about to move its idle expiry, the
    # user signs in again in a third tab (the session is renewed), and the other tab's write lands after it
    extend = stores.extend_portal_session
    renewed: list[str] = []

    def renewal_lands_first(token: str, idle_until: datetime) -> None:
        renewed.append(portal_sessions.sign_in(stores, stores, "cinema", "right", now=at, current=current))
        extend(token, idle_until)

    monkeypatch.setattr(stores, "extend_portal_session", renewal_lands_first)
    # (the other tab's request, 1 second later, read the session before the renewal wrote it)
    stores.sessions[first] = stores.sessions[first].model_copy(update={"idle_until": end - timedelta(minutes=10)})
    assert signed_in(stores, first, at + timedelta(seconds=1)) is not None
    assert renewed == [first]
    monkeypatch.undo()
    # Then the session lives as a sign-in's does: 30 minutes idle from the sign-in, not ended at the old 21:00
    assert signed_in(stores, first, at + timedelta(minutes=20)) is not None


def test_a_right_password_signs_in_even_when_its_source_cannot_be_remembered(stores, monkeypatch):
    def table_throttled(*args: object, **kwargs: object) -> None:
        # As DynamoDB answers past botocore's retries when the login item's partition is throttled
        raise ConnectionError("the table did not answer")

    # Given a customer signing in from its office, which the username does not know yet (its first login of the day
    # from there), while the write that would remember that source fails
    monkeypatch.setattr(stores, "remember_login_source", table_throttled)
    # When it signs in with the right password
    token = sign_in(stores)
    # Then it is signed in (the password was checked, the attempt ended uncounted): remembering the source only spares
    # it a lock-out others cause, and the next login remembers it; not a 500 for a login that succeeded
    assert token in stores.sessions
