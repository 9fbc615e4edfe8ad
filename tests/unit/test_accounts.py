"""Operator use cases on accounts (logic/accounts.py) against an in-memory store."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from sms_gateway.domain.models import Account, CredentialKind, Credentials, SenderRegistration, iso
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.routing import Route, RouteTable
from sms_gateway.domain.senders import registry_form
from sms_gateway.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from sms_gateway.logic import accounts
from sms_gateway.logic.auth import account_for_credential
from sms_gateway.ports import (
    AccountAdmin,
    AccountChanges,
    CredentialInfo,
    SenderAdded,
    TopUpOutcome,
    rotated_meanwhile,
)
from tests.fakes import FakeSecretBox, InMemoryStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BOX = FakeSecretBox()
PREFIX = 8


class AdminStore(InMemoryStore):
    """InMemoryStore plus AccountAdmin, with the DynamoDB adapter's conditions (account must exist, one owner
    per sender, one credential per account, kind and prefix)."""

    def __init__(self) -> None:
        super().__init__()
        self.listings: dict[tuple[str, str, str], CredentialInfo] = {}
        self.secrets: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, secret) -> (account_id, prefix)
        self.owners: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self.cleared_logins: list[str] = []

    def _require(self, account_id: str) -> Account:
        if account_id not in self.accounts:
            raise NotFound(f"no account {account_id}")
        return self.accounts[account_id]

    def create_account(self, account: Account, credentials: Credentials) -> None:
        if any(registry_form(s) in self.owners for s in account.senders):
            raise Conflict("a sender is taken")
        super().create_account(account, credentials)
        for sender in account.senders:
            self.owners[registry_form(sender)] = account.account_id
        for kind, secret in (("token", credentials.token), ("apikey", credentials.apikey)):
            self.add_credential(account.account_id, kind, secret, created_at=account.created_at)

    def account_id_for_sender(self, sender: str) -> str | None:
        return self.owners.get(registry_form(sender))

    def sender_registration(self, sender: str) -> SenderRegistration | None:
        owner = self.owners.get(registry_form(sender))
        if owner is None:
            return None
        return SenderRegistration(account_id=owner, inbound_upstreams=self.inbound_upstreams.get(registry_form(sender)))

    def set_inbound_upstreams(
        self, account_id: str, sender: str, inbound_upstreams: tuple[str, ...] | None
    ) -> SenderRegistration:
        if self.owners.get(registry_form(sender)) != account_id:
            raise NotFound(f"sender {sender!r} is not registered to account {account_id}")
        if inbound_upstreams is None:
            self.inbound_upstreams.pop(registry_form(sender), None)
        else:
            self.inbound_upstreams[registry_form(sender)] = inbound_upstreams
        return SenderRegistration(account_id=account_id, inbound_upstreams=inbound_upstreams)

    def account_id_for_credential(self, kind: str, secret: str) -> str | None:
        found = self.secrets.get((kind, secret))
        if found is None or self.listings[(found[0], kind, found[1])].revoked:
            return None
        return found[0]

    def add_credential(
        self,
        account_id: str,
        kind: str,
        secret: str,
        *,
        created_at: str,
        created_by: str | None = None,
        password_epoch: str | None = None,
    ) -> CredentialInfo:
        account = self._require(account_id)
        if password_epoch is not None and password_epoch != account.password_epoch:
            raise Unauthorized("the account's password was reset")
        key = (account_id, kind, secret[:PREFIX])
        if key in self.listings:
            raise Conflict("prefix in use")
        self.listings[key] = CredentialInfo(
            kind=kind,
            prefix=secret[:PREFIX],
            created_at=created_at,
            created_by=created_by,
            password_epoch=password_epoch,
        )
        self.secrets[(kind, secret)] = (account_id, secret[:PREFIX])
        return self.listings[key]

    def list_credentials(self, account_id: str) -> list[CredentialInfo]:
        self._require(account_id)
        return [info for (owner, _, _), info in self.listings.items() if owner == account_id]

    def revoke_credential(self, account_id: str, kind: str, prefix: str, *, revoked_at: str) -> CredentialInfo:
        self._require(account_id)
        key = (account_id, kind, prefix)
        if key not in self.listings:
            raise NotFound("no such credential")
        info = self.listings[key]
        self.listings[key] = info.model_copy(update={"revoked": True, "revoked_at": info.revoked_at or revoked_at})
        return self.listings[key]

    def add_sender(
        self, account_id: str, sender: str, *, inbound_upstreams: tuple[str, ...] | None = None
    ) -> SenderAdded:
        account = self._require(account_id)
        if registry_form(sender) in self.owners:
            raise Conflict(f"sender {sender!r} is registered to account {self.owners[registry_form(sender)]}")
        self.owners[registry_form(sender)] = account_id
        if inbound_upstreams is not None:
            self.inbound_upstreams[registry_form(sender)] = inbound_upstreams
        self.accounts[account_id] = account.model_copy(update={"senders": (*account.senders, sender)})
        return SenderAdded(account=self.accounts[account_id])

    def remove_sender(self, account_id: str, sender: str) -> Account:
        account = self._require(account_id)
        kept = tuple(s for s in account.senders if registry_form(s) != registry_form(sender))
        if kept == account.senders or self.owners.get(registry_form(sender)) != account_id:
            raise NotFound(f"sender {sender!r} is not registered to account {account_id}")
        del self.owners[registry_form(sender)]
        self.inbound_upstreams.pop(registry_form(sender), None)
        self.accounts[account_id] = account.model_copy(update={"senders": kept})
        return self.accounts[account_id]

    def top_up(self, account_id: str, credits: int, *, request_id: str | None = None) -> TopUpOutcome:
        self.refund_credits(self._require(account_id).account_id, credits)
        return TopUpOutcome()

    def update_account(self, account_id: str, changes: AccountChanges) -> Account:
        account = self._require(account_id)
        if changes.under_password_epoch not in (None, account.password_epoch):
            raise Unauthorized("the account's password was reset")
        if any(
            (getattr(account, name).sealed if getattr(account, name) else None) != sealed
            for name, sealed in changes.replacing.items()
        ):
            raise rotated_meanwhile(account, changes)
        update: dict[str, Any] = {
            name: value
            for name, value in changes
            if name not in ("clear", "under_password_epoch", "replacing") and value is not None
        }
        update |= dict.fromkeys(changes.clear)
        # Validated as the table's item is read back (the times are written as strings).
        self.accounts[account_id] = Account.model_validate({**dict(account), **update})
        return self.accounts[account_id]

    def set_price(self, tier: str, network: str, credits: int) -> PriceTable:
        self.prices = self.prices.with_price(tier, network, credits)
        return self.prices

    def reset_password(
        self,
        account_id: str,
        password: str,
        *,
        sessions_valid_from: datetime,
        replacing_epoch: str,
        revoke: Sequence[CredentialInfo] = (),
    ) -> Account:
        account = self._require(account_id)
        if account.password_epoch != replacing_epoch:
            raise NotFound("its password changed meanwhile")
        self.passwords[account_id] = password
        for credential in revoke:
            self.revoke_credential(account_id, credential.kind, credential.prefix, revoked_at=iso(sessions_valid_from))
        self.accounts[account_id] = account.model_copy(
            update={"sessions_valid_from": sessions_valid_from, "password_epoch": secrets.token_hex(8)}
        )
        return self.accounts[account_id]

    def login_username(self, account_id: str) -> str:
        return f"user-{self._require(account_id).account_id}"

    def clear_login_failures(self, username: str) -> int:
        self.cleared_logins.append(username)
        return 1


@pytest.fixture
def store() -> AdminStore:
    return AdminStore()


@pytest.fixture
def account(store: AdminStore) -> tuple[Account, Credentials]:
    created, credentials, _ = accounts.create_account(
        store, BOX, name="Cinema Club", senders=["48974"], credits=10, now=NOW
    )
    return created, credentials


def test_the_fake_implements_the_port(store: AdminStore) -> None:
    admin: AccountAdmin = store
    assert admin.list_credentials is not None


class TestCredentials:
    def test_a_password_reset_gives_a_new_password_and_ends_the_sessions_before_it(self, store, account):
        created, credentials = account
        portal = accounts.issue_credential(store, created.account_id, "token", now=NOW, in_portal_under="")
        reset = accounts.reset_password(store, created.account_id, now=NOW)
        assert reset.password != credentials.password and store.passwords[created.account_id] == reset.password
        assert store.accounts[created.account_id].sessions_valid_from == NOW
        # The token made in the portal under the old password is revoked with it, the operator's are not
        assert [c.prefix for c in reset.revoked] == [portal.prefix]
        assert [c.prefix for c in store.list_credentials(created.account_id) if c.revoked] == [portal.prefix]
        assert reset.username == f"user-{created.account_id}"
        # And the username's failed logins are forgotten: the new password is not refused for the old one's
        assert store.cleared_logins == [reset.username] and reset.failed_logins_cleared
        with pytest.raises(NotFound):
            accounts.reset_password(store, "404", now=NOW)

    def test_a_reset_whose_failed_logins_could_not_be_cleared_still_answers_the_new_password(
        self, store, account, monkeypatch
    ):
        created, credentials = account

        def unavailable(username: str) -> int:
            raise RuntimeError("DynamoDB throttled the query")

        monkeypatch.setattr(store, "clear_login_failures", unavailable)
        reset = accounts.reset_password(store, created.account_id, now=NOW)
        assert reset.password != credentials.password and store.passwords[created.account_id] == reset.password
        assert not reset.failed_logins_cleared

    def test_unlock_login_clears_the_failed_logins_of_the_accounts_username(self, store, account):
        created, _ = account
        unlocked = accounts.unlock_login(store, created.account_id)
        assert (unlocked.username, unlocked.windows_cleared) == (f"user-{created.account_id}", 1)
        assert store.cleared_logins == [unlocked.username]
        with pytest.raises(NotFound):
            accounts.unlock_login(store, "404")
        assert store.cleared_logins == [unlocked.username]

    def test_an_issued_token_authenticates_and_is_listed_by_prefix_only(self, store, account):
        # Given an account
        created, _ = account
        # When a second token is issued
        issued = accounts.issue_credential(store, created.account_id, "token", now=NOW)
        # Then the secret authenticates as that account
        assert issued.secret.startswith("sk_")
        assert account_for_credential(store, CredentialKind.TOKEN, issued.secret).account_id == created.account_id
        # And the listing shows three credentials by prefix, never a secret
        listed = accounts.list_credentials(store, created.account_id)
        assert sorted(c.kind for c in listed) == ["apikey", "token", "token"]
        assert issued.prefix == issued.secret[:PREFIX]
        assert all(issued.secret not in info.model_dump_json() for info in listed)

    def test_an_apikey_is_hex(self, store, account):
        issued = accounts.issue_credential(store, account[0].account_id, "apikey", now=NOW)
        assert int(issued.secret, 16) >= 0
        assert len(issued.secret) == 48

    @pytest.mark.parametrize(
        ("account_id", "kind", "error"), [("404", "token", NotFound), (None, "session", InvalidRequest)]
    )
    def test_an_unknown_account_or_kind_issues_nothing(self, store, account, account_id, kind, error):
        before = dict(store.listings)
        with pytest.raises(error):
            accounts.issue_credential(store, account_id or account[0].account_id, kind, now=NOW)
        assert store.listings == before

    def test_a_prefix_collision_draws_a_new_secret(self, store, account, monkeypatch):
        # Given a secret whose prefix the account holds already, then a fresh one
        created, credentials = account
        drawn = iter([credentials.token[:PREFIX] + "collides", "sk_fresh-secret-value"])
        monkeypatch.setattr(accounts, "new_secret", lambda kind: next(drawn))
        # When a token is issued
        issued = accounts.issue_credential(store, created.account_id, "token", now=NOW)
        # Then the second draw is the one issued, and the colliding one authenticates nobody
        assert issued.secret == "sk_fresh-secret-value"
        assert store.account_id_for_credential("token", credentials.token[:PREFIX] + "collides") is None

    def test_a_revoked_token_no_longer_authenticates_and_the_other_credentials_do(self, store, account):
        # Given an account with its token and a second one
        created, credentials = account
        spare = accounts.issue_credential(store, created.account_id, "token", now=NOW)
        # When the first token is revoked by its prefix
        revoked = accounts.revoke_credential(store, created.account_id, credentials.token[:PREFIX], now=NOW)
        # Then it is refused, and the listing says so
        assert revoked.revoked
        with pytest.raises(Unauthorized):
            account_for_credential(store, CredentialKind.TOKEN, credentials.token)
        assert account_for_credential(store, CredentialKind.TOKEN, spare.secret).account_id == created.account_id
        assert account_for_credential(store, CredentialKind.APIKEY, credentials.apikey)
        assert [c.revoked for c in store.list_credentials(created.account_id) if c.prefix == revoked.prefix] == [True]

    def test_another_accounts_prefix_is_not_found_and_stays_valid(self, store, account):
        # Given two accounts
        other, other_credentials, _ = accounts.create_account(store, BOX, name="Other", senders=[], credits=0, now=NOW)
        # When the first account's operator names the other's token prefix
        with pytest.raises(NotFound, match="no credential with prefix"):
            accounts.revoke_credential(store, account[0].account_id, other_credentials.token[:PREFIX], now=NOW)
        # Then the other account's token still works
        assert (
            account_for_credential(store, CredentialKind.TOKEN, other_credentials.token).account_id == other.account_id
        )


class TestSenders:
    def test_a_sender_is_added_and_removed(self, store, account):
        created, _ = account
        added = accounts.add_sender(store, created.account_id, "CINEMA")
        assert added.account.senders == ("48974", "CINEMA")
        assert store.account_id_for_sender("cinema") == created.account_id
        removed = accounts.remove_sender(store, created.account_id, "48974")
        assert removed.senders == ("CINEMA",)
        assert store.account_id_for_sender("48974") is None

    def test_adding_an_own_sender_again_changes_nothing(self, store, account):
        created, _ = account
        assert accounts.add_sender(store, created.account_id, "48974").account.senders == ("48974",)

    def test_a_sender_taken_by_another_account_is_refused(self, store, account):
        other, _, _ = accounts.create_account(store, BOX, name="Other", senders=[], credits=0, now=NOW)
        with pytest.raises(Conflict, match="registered to account"):
            accounts.add_sender(store, other.account_id, "48974")
        assert store.accounts[other.account_id].senders == ()
        assert store.account_id_for_sender("48974") == account[0].account_id

    @pytest.mark.parametrize("sender", ["TOO-LONG-NAME-X", "", "bad!", "+12"])
    def test_an_invalid_sender_id_is_refused(self, store, account, sender):
        with pytest.raises(InvalidRequest, match="invalid sender id"):
            accounts.add_sender(store, account[0].account_id, sender)
        assert store.accounts[account[0].account_id].senders == ("48974",)

    @pytest.mark.parametrize("sender", ["1", "12", "00"])
    def test_a_number_shorter_than_three_digits_is_refused_as_a_sender(self, store, account, sender):
        # Given docs/operators.md: "a number of 3 to 15 digits (shortcode or long code)"; "+12" is refused already
        # When an operator registers a one- or two-digit number (a typo for 48974, say)
        with pytest.raises(InvalidRequest, match="invalid sender id"):
            accounts.add_sender(store, account[0].account_id, sender)
        # Then nothing is registered
        assert store.accounts[account[0].account_id].senders == ("48974",)

    def test_a_numbers_inbound_upstreams_are_set_shown_and_put_back_on_the_routes(self, store, account):
        created, _ = account
        routes = RouteTable(
            default_upstream="simulator",
            routes=(Route(route_id="own", account_id=created.account_id, network="mtn", upstream="twilio"),),
        )
        # Given a number added with the upstreams that may deliver its inbound SMS, one named twice
        added = accounts.add_sender(
            store, created.account_id, "55019", inbound_upstreams=["kannel", " twilio", "kannel"]
        )
        # Then it keeps them, each once; the number with none follows the routes: their primaries and the default
        assert store.sender_registration("55019") == SenderRegistration(
            account_id=created.account_id, inbound_upstreams=("kannel", "twilio")
        )
        shown = {s.sender: s for s in accounts.senders_inbound(store, added.account, routes)}
        assert (shown["48974"].inbound_upstreams, shown["48974"].taken_from) == (None, ("simulator", "twilio"))
        assert (shown["55019"].inbound_upstreams, shown["55019"].taken_from) == (("kannel", "twilio"),) * 2
        # When the operator sets 48974's, and then puts 55019 back on its routes
        accounts.set_inbound_upstreams(store, created.account_id, "48974", ["kannel"])
        accounts.set_inbound_upstreams(store, created.account_id, "+55019", [])
        # Then each is as set
        assert store.sender_registration("48974").inbound_upstreams == ("kannel",)
        assert store.sender_registration("55019").inbound_upstreams is None

    def test_adding_an_own_sender_again_with_inbound_upstreams_sets_them(self, store, account):
        created, _ = account
        accounts.add_sender(store, created.account_id, "+48974", inbound_upstreams=["kannel"])
        assert store.sender_registration("48974").inbound_upstreams == ("kannel",)

    @pytest.mark.parametrize("names", [["Kannel"], ["kannel", ""], ["../prod/kannel"]])
    def test_a_bad_inbound_upstream_name_changes_nothing(self, store, account, names):
        created, _ = account
        with pytest.raises(InvalidRequest, match="is not an upstream name"):
            accounts.set_inbound_upstreams(store, created.account_id, "48974", names)
        with pytest.raises(InvalidRequest, match="is not an upstream name"):
            accounts.add_sender(store, created.account_id, "55019", inbound_upstreams=names)
        assert store.sender_registration("48974").inbound_upstreams is None
        assert store.sender_registration("55019") is None

    def test_another_accounts_number_cannot_be_bound(self, store, account):
        other, _, _ = accounts.create_account(store, BOX, name="Other", senders=["55555"], credits=0, now=NOW)
        with pytest.raises(NotFound, match="not registered to account"):
            accounts.set_inbound_upstreams(store, account[0].account_id, "55555", ["kannel"])
        assert store.sender_registration("55555") == SenderRegistration(account_id=other.account_id)

    def test_removing_a_sender_the_account_does_not_have_is_not_found(self, store, account):
        with pytest.raises(NotFound):
            accounts.remove_sender(store, account[0].account_id, "55555")


class TestCreditsAndPrices:
    def test_a_top_up_adds_to_the_balance(self, store, account):
        accounts.top_up(store, account[0].account_id, 90)
        assert store.accounts[account[0].account_id].credits == 100

    @pytest.mark.parametrize("credits", [0, -5, accounts.MAX_TOP_UP + 1])
    def test_a_top_up_that_is_not_positive_or_absurd_changes_nothing(self, store, account, credits):
        with pytest.raises(InvalidRequest):
            accounts.top_up(store, account[0].account_id, credits)
        assert store.accounts[account[0].account_id].credits == 10

    @pytest.mark.parametrize("request_id", ["", "-x", "a" * 37, "two words", "ünï"])
    def test_a_top_up_with_a_request_id_dynamodb_cannot_take_changes_nothing(self, store, account, request_id):
        with pytest.raises(InvalidRequest, match="request id"):
            accounts.top_up(store, account[0].account_id, 5, request_id=request_id)
        assert store.accounts[account[0].account_id].credits == 10

    def test_a_top_up_of_an_unknown_account_is_not_found(self, store):
        with pytest.raises(NotFound, match="no account 404"):
            accounts.top_up(store, "404", 5)

    def test_a_price_is_set_per_tier_and_network(self, store):
        table = accounts.set_price(store, tier="n", network="mtn", credits=3)
        assert table.per_part("N", "mtn") == 3
        assert table.per_part("N", "glo") == 1
        assert accounts.show_prices(store).prices == {"N": {"mtn": 3}}

    def test_a_network_price_may_hold_in_one_country_and_wins_there(self, store):
        # Given MTN priced at 3 everywhere, at 7 in Ghana, and any network in Ghana at 5
        accounts.set_price(store, tier="N", network="mtn", credits=3)
        accounts.set_price(store, tier="N", network="mtn", country="gh", credits=7)
        table = accounts.set_price(store, tier="N", network="*", country="GH", credits=5)
        # Then the most specific price that is set prices a part: the network in the recipient's country, any
        # network there, the network anywhere, then the tier's default
        assert table.prices == {"N": {"mtn": 3, "mtn@GH": 7, "*@GH": 5}}
        assert table.per_part("N", "mtn", "GH") == 7
        assert table.per_part("N", "vodafone", "GH") == 5
        assert table.per_part("N", "mtn", "NG") == 3
        assert table.per_part("N", "mtn") == 3
        assert table.per_part("N", "glo", "NG") == 1

    @pytest.mark.parametrize(
        ("tier", "network", "credits", "fragment", "country"),
        [
            ("X", "*", 1, "route tier", None),
            ("N", "vodacomm", 1, "network", None),
            ("L", "*", -1, "negative", None),
            ("N", "mtn", 1, "ISO 3166", "Ghana"),
        ],
    )
    def test_a_bad_price_changes_nothing(self, store, tier, network, credits, fragment, country):
        with pytest.raises(InvalidRequest, match=fragment):
            accounts.set_price(store, tier=tier, network=network, credits=credits, country=country)
        assert store.prices == PriceTable()


class TestSettings:
    def test_webhooks_are_set_cleared_and_the_token_rotated(self, store, account):
        created, _ = account
        updated, rotated = accounts.set_webhooks(
            store, BOX, created.account_id, dlr_url="https://client.example/dlr", rotate_token=True
        )
        assert updated.dlr_url == "https://client.example/dlr"
        # The new token is answered once and stored sealed; the signing secret is untouched
        assert rotated.token and rotated.secret is None
        assert BOX.open(created.account_id, "webhook_token", updated.webhook_token) == rotated.token
        assert updated.webhook_token != created.webhook_token
        assert updated.webhook_secret == created.webhook_secret
        cleared, nothing_rotated = accounts.set_webhooks(store, BOX, created.account_id, dlr_url="")
        assert cleared.dlr_url is None
        assert nothing_rotated == accounts.WebhookCredentials()
        assert cleared.webhook_token == updated.webhook_token

    def test_a_rotated_signing_secret_is_answered_once_and_stored_sealed(self, store, account):
        created, _ = account
        updated, rotated = accounts.set_webhooks(store, BOX, created.account_id, rotate_secret=True)
        assert rotated.secret and rotated.secret.startswith("whsec_") and rotated.token is None
        assert rotated.secret not in str(store.accounts[created.account_id].model_dump())
        assert BOX.open(created.account_id, "webhook_secret", updated.webhook_secret) == rotated.secret
        assert updated.webhook_secret.prefix == rotated.secret[:14]

    def test_a_new_accounts_webhook_credentials_are_issued_once_and_stored_sealed(self, store):
        created, _, webhook = accounts.create_account(store, BOX, name="Sealed", senders=[], credits=0, now=NOW)
        stored = str(store.accounts[created.account_id].model_dump())
        assert webhook.token and webhook.secret
        assert webhook.token not in stored and webhook.secret not in stored
        assert BOX.open(created.account_id, "webhook_token", created.webhook_token) == webhook.token
        assert BOX.open(created.account_id, "webhook_secret", created.webhook_secret) == webhook.secret
        # Sealed for this account and purpose: it does not open as the other secret
        with pytest.raises(ValueError, match="sealed for"):
            BOX.open(created.account_id, "webhook_secret", created.webhook_token)

    @pytest.mark.parametrize(
        ("url", "allow_http"),
        [("http://client.example/dlr", False), ("ftp://client.example/", True), ("https://", False), ("dlr", True)],
    )
    def test_a_bad_webhook_url_changes_nothing(self, store, account, url, allow_http):
        before = store.accounts[account[0].account_id]
        with pytest.raises(InvalidRequest, match="webhook URL"):
            accounts.set_webhooks(
                store, BOX, before.account_id, inbound_url=url, rotate_token=True, allow_http=allow_http
            )
        assert store.accounts[before.account_id] == before

    def test_http_is_allowed_where_the_stack_allows_it(self, store, account):
        updated, _ = accounts.set_webhooks(
            store, BOX, account[0].account_id, inbound_url="http://127.0.0.1:9/in", allow_http=True
        )
        assert updated.inbound_url == "http://127.0.0.1:9/in"

    def test_settings_change(self, store, account):
        updated = accounts.set_account(
            store, account[0].account_id, country="ke", timezone="Africa/Nairobi", rate_limit=20, max_parts=4
        )
        assert (updated.default_country, updated.timezone) == ("KE", "Africa/Nairobi")
        assert (updated.rate_limit_per_second, updated.max_parts) == (20, 4)

    @pytest.mark.parametrize(
        ("change", "fragment"),
        [
            ({"country": "XX"}, "country"),
            ({"timezone": "Mars/Olympus_Mons"}, "time zone"),
            ({"timezone": "../../etc/passwd"}, "time zone"),
            ({"rate_limit": 0}, "rate limit"),
            ({"max_parts": -1}, "max parts"),
            ({"max_parts": 256}, "at most 255"),
            ({}, "nothing to change"),
        ],
    )
    def test_a_bad_setting_changes_nothing(self, store, account, change, fragment):
        before = store.accounts[account[0].account_id]
        with pytest.raises(InvalidRequest, match=fragment):
            accounts.set_account(store, before.account_id, **change)
        assert store.accounts[before.account_id] == before

    # The tz database's files that are no zone a person chooses: the host's own setting (whatever the machine says,
    # and absent on another), tz's placeholder of no zone ("-00"), and the copies some systems keep under posix/ and
    # right/ (the tzdata package the layer ships has none of them, so on Lambda the account's times were read in UTC)
    NOT_CHOSEN = ["localtime", "Factory", "posix/Africa/Lagos", "right/Africa/Lagos", "posixrules"]

    @pytest.mark.parametrize("zone", NOT_CHOSEN)
    def test_a_zone_file_that_is_no_chosen_zone_is_refused_with_a_clear_error(self, store, account, zone):
        before = store.accounts[account[0].account_id]
        # When an operator (admin CLI) or the client (portal Settings form) sets it, or creates an account in it
        with pytest.raises(InvalidRequest, match="not an IANA time zone"):
            accounts.set_account(store, before.account_id, country="NG", timezone=zone)
        with pytest.raises(InvalidRequest, match="not an IANA time zone"):
            accounts.create_account(store, BOX, name="Y", senders=[], credits=0, now=NOW, timezone=zone)
        # Then it is refused as no IANA zone, and nothing changed or was created
        assert store.accounts == {before.account_id: before}

    def test_a_zone_under_posix_or_right_is_refused_naming_the_zone_to_give(self, store, account):
        with pytest.raises(InvalidRequest, match="'right/Africa/Lagos' is not an IANA time zone: give 'Africa/Lagos'"):
            accounts.set_account(store, account[0].account_id, timezone="right/Africa/Lagos")

    def test_an_account_already_in_such_a_zone_keeps_it_and_its_settings_can_still_be_saved(self, store, account):
        # Given an account whose zone was set to posix/Africa/Lagos before such names were refused
        store.accounts[account[0].account_id] = account[0].model_copy(update={"timezone": "posix/Africa/Lagos"})
        # When the client saves the portal's Settings form, which sends the zone back unchanged with a new country
        updated = accounts.set_account(store, account[0].account_id, country="GH", timezone="posix/Africa/Lagos")
        # Then the country is saved and the zone kept; a move to a listed zone is taken, and back is refused
        assert (updated.default_country, updated.timezone) == ("GH", "posix/Africa/Lagos")
        assert accounts.set_account(store, account[0].account_id, timezone="Africa/Accra").timezone == "Africa/Accra"
        with pytest.raises(InvalidRequest, match="not an IANA time zone"):
            accounts.set_account(store, account[0].account_id, timezone="posix/Africa/Lagos")

    def test_an_unknown_account_is_not_found(self, store):
        with pytest.raises(NotFound):
            accounts.set_account(store, "404", rate_limit=5)
        with pytest.raises(NotFound):
            accounts.set_webhooks(store, BOX, "404", rotate_token=True)

    def test_the_account_view_holds_no_secret(self, store):
        created, _, webhook = accounts.create_account(store, BOX, name="Viewed", senders=["48974"], credits=10, now=NOW)
        view = accounts.account_view(created).model_dump()
        assert webhook.token not in str(view) and webhook.secret not in str(view)
        assert created.webhook_token.sealed not in str(view) and created.webhook_token.prefix not in str(view)
        assert view["credits"] == 10
        assert view["senders"] == ("48974",)

    @pytest.mark.parametrize(
        ("country", "zone"), [("NG", "Africa/Lagos"), ("ke", "Africa/Nairobi"), ("GH", "Africa/Accra")]
    )
    def test_a_new_account_reads_local_times_in_its_country_s_zone(self, store, country, zone):
        # Given an account created for a country of one time zone, no zone given
        created, _, _ = accounts.create_account(
            store, BOX, name="X", senders=[], credits=0, now=NOW, default_country=country
        )
        # Then its local times (timeToSend, scheduled_delivery_time, ...) are read in that country's zone
        assert created.timezone == zone

    @pytest.mark.parametrize("country", ["US", "CD", "XK"])
    def test_a_country_of_several_zones_or_none_needs_the_account_s_zone(self, store, country):
        # Given a country of several zones (US, DR Congo) or of none of its own (Kosovo), no zone given
        # Then the account is refused, saying which zones, and nothing is created
        with pytest.raises(InvalidRequest, match="give the account's time zone"):
            accounts.create_account(store, BOX, name="X", senders=[], credits=0, now=NOW, default_country=country)
        assert store.accounts == {}
        # And with a zone given it is created in that zone
        created, _, _ = accounts.create_account(
            store, BOX, name="X", senders=[], credits=0, now=NOW, default_country=country, timezone="Africa/Kinshasa"
        )
        assert created.timezone == "Africa/Kinshasa"

    def test_a_zone_given_wins_over_the_country_s_and_a_bad_one_is_refused(self, store):
        created, _, _ = accounts.create_account(
            store, BOX, name="X", senders=[], credits=0, now=NOW, default_country="KE", timezone="UTC"
        )
        assert created.timezone == "UTC"
        with pytest.raises(InvalidRequest, match="not an IANA time zone"):
            accounts.create_account(
                store, BOX, name="Y", senders=[], credits=0, now=NOW, default_country="KE", timezone="Africa/Atlantis"
            )
        assert list(store.accounts) == [created.account_id]

    @pytest.mark.parametrize("country", ["QQ", "\u00df", "\u0131d", "\uff4e\uff47", "N G", "NGA", ""])
    def test_an_account_with_an_unknown_country_is_not_created(self, store, country):
        # 'ß' and a dotless-i 'id' (U+0131) upper-case to 'SS' and 'ID', real regions the client never named
        with pytest.raises(InvalidRequest, match="country"):
            accounts.create_account(store, BOX, name="X", senders=[], credits=0, now=NOW, default_country=country)
        assert store.accounts == {}
        assert accounts.check_country(" ng ") == "NG"
