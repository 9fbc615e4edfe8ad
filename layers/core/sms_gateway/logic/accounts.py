"""Operator use cases on accounts: create them, issue and revoke credentials, senders, credits, settings, prices."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime

from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import (
    Account,
    CredentialKind,
    Credentials,
    Record,
    SealedSecret,
    SenderRegistration,
    iso,
    utc_now,
)
from sms_gateway.domain.msisdn import region_code
from sms_gateway.domain.networks import CATALOGUE
from sms_gateway.domain.pricing import ANY_NETWORK, ROUTE_TIERS, PriceTable, price_key
from sms_gateway.domain.routing import RouteTable, upstream_name
from sms_gateway.domain.segments import MOST_PARTS
from sms_gateway.domain.senders import SENDER_ID, registry_form, same_sender
from sms_gateway.domain.webhook_urls import require_safe_webhook_url
from sms_gateway.domain.webhooks import new_signing_secret
from sms_gateway.domain.zones import chosen_zone, country_zones, not_a_chosen_zone
from sms_gateway.errors import Conflict, GatewayError, InvalidRequest, NotFound
from sms_gateway.ports import (
    MOST_REVOKED_BY_A_RESET,
    MOST_SENDERS_AT_CREATION,
    PREFIX_LENGTH,
    AccountAdmin,
    AccountChanges,
    AccountStore,
    CredentialInfo,
    InboundPins,
    PriceBook,
    SecretBox,
    SenderAdded,
    TopUpOutcome,
)

SENDER_RULE = "alphanumeric up to 11 characters with a letter, or a number of 3 to 15 digits (shortcode/long code)"
# Bearer tokens and shortcode API keys are issued here; session keys come from /login.
ISSUABLE_KINDS = (CredentialKind.TOKEN, CredentialKind.APIKEY)
# A typo guard: no real top-up (or opening balance) is a trillion credits, and DynamoDB numbers have 38 digits at
# most (a longer one fails in boto3 before any request).
MAX_TOP_UP = 10**12
# An account's display name; the default login username is made of it (default_username), and a login is a key.
MAX_ACCOUNT_NAME_LENGTH = 100
# Typo guards too: no route costs a million credits a part, and no account sends a million messages a second.
MAX_PRICE_PER_PART = 10**6
MAX_RATE_LIMIT = 10**6
# Concatenated SMS count their parts in one octet of the user data header.
MAX_PARTS_LIMIT = MOST_PARTS
# A secret's prefix is drawn again when it collides with one the account holds already (about 1 in 2**30).
_ISSUE_ATTEMPTS = 3


# A webhook URL is stored on the account (read on every send) or the batch, and posted to for every report.
MAX_URL_LENGTH = 2048


def check_webhook_url(url: str, *, allow_http: bool) -> None:
    """The SSRF guard's set-time check, and a length every surface shares (the API's models, the portal's forms);
    `allow_http` (the local stack's setting) also allows local hosts."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"a webhook URL has at most {MAX_URL_LENGTH} characters, not {len(url)}")
    require_safe_webhook_url(url, allow_local=allow_http)


def new_secret(kind: CredentialKind) -> str:
    """A fresh API secret: `sk_...` for Bearer tokens, hex for shortcode API keys (as that vendor issues them)."""
    if kind == CredentialKind.TOKEN:
        return f"sk_{secrets.token_urlsafe(32)}"
    if kind == CredentialKind.APIKEY:
        return secrets.token_hex(24)
    raise InvalidRequest(f"credential kind must be one of {', '.join(ISSUABLE_KINDS)}")


def new_password() -> str:
    """A /login password (and the portal's): 144 random bits, URL-safe, so it goes in a query string as it is."""
    return secrets.token_urlsafe(18)


def issue_credentials(username: str) -> Credentials:
    return Credentials(
        token=new_secret(CredentialKind.TOKEN),
        apikey=new_secret(CredentialKind.APIKEY),
        partner_id=str(secrets.randbelow(900_000) + 100_000),
        username=username,
        password=new_password(),
    )


def _account_name(name: str) -> str:
    """The name as stored, without spaces around it. A blank one made an account no listing tells apart, and a long
    one (a file pasted) failed in DynamoDB's words, the default username made of it being over a key's size."""
    name = name.strip()
    if not name or len(name) > MAX_ACCOUNT_NAME_LENGTH:
        raise InvalidRequest(f"an account name must be 1 to {MAX_ACCOUNT_NAME_LENGTH} characters, not {len(name)}")
    return name


def default_username(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "account"
    return f"{slug}-{secrets.token_hex(2)}"


class WebhookCredentials(Record):
    """The webhook token and signing secret as issued or rotated, shown this once: the account keeps them sealed
    (ports.SecretBox), so no stored item holds them in plain text. None: not issued by this call."""

    token: str | None = None
    secret: str | None = None


def new_webhook_credentials() -> WebhookCredentials:
    return WebhookCredentials(token=secrets.token_urlsafe(24), secret=new_signing_secret())


def sealed_changes(box: SecretBox, account_id: str, issued: WebhookCredentials) -> dict[str, SealedSecret]:
    """The account attributes that store newly issued webhook credentials, sealed for that account."""
    given = {"webhook_token": issued.token, "webhook_secret": issued.secret}
    return {name: box.seal(account_id, name, value) for name, value in given.items() if value is not None}


def create_account(
    store: AccountStore,
    box: SecretBox,
    *,
    name: str,
    senders: Sequence[str],
    credits: int,
    now: datetime,
    default_country: str = "NG",
    timezone: str | None = None,
    username: str | None = None,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
    allow_http_webhooks: bool = False,
) -> tuple[Account, Credentials, WebhookCredentials]:
    name = _account_name(name)
    senders = _distinct_senders(senders)
    if len(senders) > MOST_SENDERS_AT_CREATION:
        raise InvalidRequest(
            f"an account is created with at most {MOST_SENDERS_AT_CREATION} senders, not {len(senders)}: create it "
            "with some of them, then add-sender the rest"
        )
    for url in (dlr_url, inbound_url):
        if url is not None:
            check_webhook_url(url, allow_http=allow_http_webhooks)
    if credits < 0:
        raise InvalidRequest("credits cannot be negative")
    if credits > MAX_TOP_UP:
        raise InvalidRequest(f"an opening balance must be at most {MAX_TOP_UP}, not {credits}")
    default_country = check_country(default_country)
    timezone = check_timezone(timezone) if timezone is not None else country_timezone(default_country)
    credentials = issue_credentials(username or default_username(name))
    account_id = str(new_id())
    webhook = new_webhook_credentials()
    account = Account(
        account_id=account_id,
        name=name,
        credits=credits,
        default_country=default_country,
        timezone=timezone,
        senders=senders,
        partner_id=credentials.partner_id,
        dlr_url=dlr_url,
        inbound_url=inbound_url,
        **sealed_changes(box, account_id, webhook),
        created_at=iso(now),
    )
    store.create_account(account, credentials)
    return account, credentials, webhook


class IssuedCredential(Record):
    """A credential as issued: the secret is shown this once and stored only as a hash."""

    account_id: str
    kind: str
    prefix: str
    created_at: str
    secret: str


class AccountView(Record):
    """What an operator sees of an account: no secrets (not even the webhook token)."""

    account_id: str
    name: str
    credits: int
    senders: tuple[str, ...]
    dlr_url: str | None
    inbound_url: str | None
    default_country: str
    timezone: str
    rate_limit_per_second: int
    max_parts: int
    single_sends_in_order: bool
    partner_id: str
    created_at: str


def account_view(account: Account) -> AccountView:
    return AccountView.model_validate(account.model_dump(include=set(AccountView.model_fields)))


def check_country(code: str) -> str:
    country = region_code(code)
    if country is None:
        raise InvalidRequest(f"country {code!r} is not an ISO 3166 code phonenumbers knows (e.g. NG, KE, GH)")
    return country


def check_timezone(name: str, *, current: str | None = None) -> str:
    """An account's time zone as an operator or the client sets it: an IANA zone name (`is_chosen_zone`). The zone
    the account has (`current`) is taken back as it is, so one set before that rule (2026-12-07) keeps working, and a
    form that sends it back unchanged is not refused."""
    if name == current or chosen_zone(name) is not None:
        return name
    raise InvalidRequest(f"time zone {not_a_chosen_zone(name)}")


def country_timezone(country: str) -> str:
    """A new account's time zone when none is given: its country's, where the country has only one."""
    zones = country_zones(country)
    if len(zones) == 1:
        return zones[0]
    which = f"several time zones ({', '.join(zones)})" if zones else "no time zone of its own"
    raise InvalidRequest(f"country {country} has {which}: give the account's time zone (an IANA name)")


def _positive(value: int, what: str, *, most: int | None = None) -> int:
    if value <= 0:
        raise InvalidRequest(f"{what} must be a positive whole number, not {value}")
    if most is not None and value > most:
        raise InvalidRequest(f"{what} must be at most {most}, not {value}")
    return value


def require_account(store: AccountStore, account_id: str) -> Account:
    account = store.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    return account


def credential_kind(kind: str) -> CredentialKind:
    if kind not in {str(k) for k in ISSUABLE_KINDS}:
        raise InvalidRequest(f"credential kind {kind!r} must be one of {', '.join(ISSUABLE_KINDS)}")
    return CredentialKind(kind)


# Who made a credential (CredentialInfo.created_by).
BY_OPERATOR = "operator"
BY_PORTAL = "portal"


def issue_credential(
    store: AccountAdmin, account_id: str, kind: str, *, now: datetime, in_portal_under: str | None = None
) -> IssuedCredential:
    """An operator's new credential, or, with `in_portal_under` (the password epoch of the portal session asking),
    one made in the portal: a reset of that password revokes it (reset_password)."""
    issued_kind = credential_kind(kind)
    require_account(store, account_id)
    origin = {"created_by": BY_OPERATOR} if in_portal_under is None else {"created_by": BY_PORTAL}
    for attempt in range(_ISSUE_ATTEMPTS):
        secret = new_secret(issued_kind)
        try:
            info = store.add_credential(
                account_id, str(issued_kind), secret, created_at=iso(now), password_epoch=in_portal_under, **origin
            )
        except Conflict:
            if attempt == _ISSUE_ATTEMPTS - 1:
                raise
            continue
        return IssuedCredential(
            account_id=account_id, secret=secret, **info.model_dump(include={"kind", "prefix", "created_at"})
        )
    raise AssertionError("unreachable")


def list_credentials(store: AccountAdmin, account_id: str) -> list[CredentialInfo]:
    require_account(store, account_id)
    return store.list_credentials(account_id)


def revoke_credential(
    store: AccountAdmin, account_id: str, prefix: str, *, now: datetime, kind: str | None = None
) -> CredentialInfo:
    require_account(store, account_id)
    wanted = credential_kind(kind) if kind is not None else None
    matches = [c for c in store.list_credentials(account_id) if c.prefix == prefix and wanted in (None, c.kind)]
    if not matches:
        raise NotFound(f"account {account_id} has no credential with prefix {prefix!r} (see list-credentials)")
    if len(matches) > 1:
        raise Conflict(f"prefix {prefix!r} matches {len(matches)} credentials of account {account_id}: give the kind")
    return store.revoke_credential(account_id, matches[0].kind, prefix, revoked_at=iso(now))


class PasswordReset(Record):
    """A new /login password, shown this once (stored only hashed), and the time of the reset (the sessions of the
    old password, session-key and portal, are refused from then on: logic/sessions.ended_by_reset). And what whoever
    held the old password could have left behind, for the operator to check: the credentials made in the portal
    under it (revoked, unless kept), those of unknown origin (made before origins were recorded, left active), and
    the webhooks with when and by what they last changed."""

    account_id: str
    username: str
    password: str
    sessions_valid_from: str
    revoked: list[CredentialInfo]
    # Made in the portal under the old password and left active: revoking them one by one after the reset failed
    # (the reset itself is done). Revoke them with revoke-credential.
    not_revoked: list[CredentialInfo]
    kept_made_in_portal: list[CredentialInfo]
    active_of_unknown_origin: list[CredentialInfo]
    dlr_url: str | None
    inbound_url: str | None
    webhooks_changed_at: str | None
    # "portal", "operator", or the API credential used ("token <prefix>") with who made that credential.
    webhooks_changed_by: str | None
    # The username's failed logins are forgotten, so the new password is not refused 429 for those made against the
    # old one. False: forgetting them failed after the reset (the reset itself is done): run unlock-login.
    failed_logins_cleared: bool


def reset_password(
    store: AccountAdmin, account_id: str, *, now: datetime, keep_portal_credentials: bool = False
) -> PasswordReset:
    """Shuts a leaked password out: a new one replaces it, every session opened with the old one ends, and, in the
    same transaction, every credential made in the portal under the old password is revoked (a leaked password's
    holder can make API credentials there that never expire), unless `keep_portal_credentials`. Never refused for
    how many there are: past the MOST_REVOKED_BY_A_RESET the transaction holds, the rest are revoked right after it
    (none can be made once the password changed), and any that could not be are answered as not revoked."""
    account = require_account(store, account_id)
    active = [credential for credential in store.list_credentials(account_id) if not credential.revoked]
    under_old = [c for c in active if _made_in_portal_under(c, account.password_epoch)]
    with_reset = [] if keep_portal_credentials else under_old[:MOST_REVOKED_BY_A_RESET]
    username = store.login_username(account_id)
    password = new_password()
    after = store.reset_password(
        account_id, password, sessions_valid_from=now, replacing_epoch=account.password_epoch, revoke=with_reset
    )
    revoked = [c.model_copy(update={"revoked": True, "revoked_at": iso(now)}) for c in with_reset]
    failed: list[CredentialInfo] = []
    if not keep_portal_credentials:
        after_reset, failed = _revoke_rest(store, account, {(c.kind, c.prefix) for c in with_reset}, now=now)
        revoked += after_reset
    changed_at, changed_by = _webhooks_changed(after, store.list_credentials(account_id))
    return PasswordReset(
        failed_logins_cleared=_clear_failed_logins(store, username),
        account_id=account_id,
        username=username,
        password=password,
        sessions_valid_from=iso(now),
        revoked=revoked,
        not_revoked=failed,
        kept_made_in_portal=under_old if keep_portal_credentials else [],
        active_of_unknown_origin=[c for c in active if c.created_by is None],
        dlr_url=after.dlr_url,
        inbound_url=after.inbound_url,
        webhooks_changed_at=iso(changed_at) if changed_at is not None else None,
        webhooks_changed_by=changed_by,
    )


class LoginUnlocked(Record):
    """A login's failed-attempt lock cleared: whose, and how many 15-minute windows held failed logins (0: it was
    not locked, and nothing changed)."""

    account_id: str
    username: str
    windows_cleared: int


def unlock_login(store: AccountAdmin, account_id: str) -> LoginUnlocked:
    """Lets a locked-out login (the session-key /login and the portal's sign-in) in again at once: forgets its failed
    logins from every source. The password stays; the limit counts again from zero, so a brute force is stopped as
    before. NotFound for an unknown account."""
    require_account(store, account_id)
    username = store.login_username(account_id)
    return LoginUnlocked(account_id=account_id, username=username, windows_cleared=store.clear_login_failures(username))


def _clear_failed_logins(store: AccountAdmin, username: str) -> bool:
    """Forgets the username's failed logins after a reset; False when that failed. Never raises: the password is reset
    already, and its answer (the new password, shown once) must reach the operator."""
    try:
        store.clear_login_failures(username)
    except Exception:  # whatever the store raised: the reset is done, its answer must be shown
        return False
    return True


def _webhooks_changed(account: Account, credentials: Sequence[CredentialInfo]) -> tuple[datetime | None, str | None]:
    """When the webhooks last changed and by what, a credential named with who made it (so the operator sees a
    change made with a token the portal made)."""
    if account.webhooks_changed_at is None:
        at = account.webhooks_changed_in_portal_at
        return at, "portal" if at is not None else None
    by = account.webhooks_changed_by
    used = next((c for c in credentials if by == changed_with(c.kind, c.prefix)), None)
    if used is not None:
        by = f"{by}, made by {used.created_by or 'unknown (before origins were recorded)'}"
    return account.webhooks_changed_at, by


def changed_with(kind: str, secret: str) -> str:
    """How a webhook change records the API credential that made it: its kind and prefix (list-credentials)."""
    return f"{kind} {secret[:PREFIX_LENGTH]}"


def _made_in_portal_under(credential: CredentialInfo, epoch: str) -> bool:
    return not credential.revoked and credential.created_by == BY_PORTAL and credential.password_epoch == epoch


def _revoke_rest(
    store: AccountAdmin, account: Account, revoked: set[tuple[str, str]], *, now: datetime
) -> tuple[list[CredentialInfo], list[CredentialInfo]]:
    """The credentials made in the portal under the old password that the reset's write did not revoke: those past
    the MOST_REVOKED_BY_A_RESET it holds, and those made after the reset read them, before it was written (none can
    be made after: add_credential requires the session's password). Revoked one by one: the password is
    reset already, and its answer (the new password, shown once) must reach the operator, so a failure here is
    answered as a credential not revoked rather than raised. Answers (revoked, not revoked)."""
    late: list[CredentialInfo] = []
    failed: list[CredentialInfo] = []
    for credential in store.list_credentials(account.account_id):
        if (
            not _made_in_portal_under(credential, account.password_epoch)
            or (credential.kind, credential.prefix) in revoked
        ):
            continue
        try:
            late.append(
                store.revoke_credential(account.account_id, credential.kind, credential.prefix, revoked_at=iso(now))
            )
        except (GatewayError, RuntimeError):
            failed.append(credential)
    return late, failed


def check_sender(sender: str) -> str:
    """The sender as it is registered: spaces around it dropped (a pasted " 48974" is 48974, never a look-alike the
    registry would keep apart); InvalidRequest when it is no sender id."""
    sender = sender.strip()
    if not SENDER_ID.match(sender):
        raise InvalidRequest(f"invalid sender id {sender!r}: {SENDER_RULE}")
    return sender


def _distinct_senders(senders: Sequence[str]) -> tuple[str, ...]:
    """Each sender as it is registered, once: the same sender written twice ('48974' and '+48974') is a clear error,
    not a transaction DynamoDB refuses."""
    bad = [sender for sender in senders if not SENDER_ID.match(sender.strip())]
    if bad:
        raise InvalidRequest(f"invalid sender id(s) {bad}: {SENDER_RULE}")
    forms: dict[str, str] = {}
    for sender in (sender.strip() for sender in senders):
        if (earlier := forms.setdefault(registry_form(sender), sender)) != sender:
            raise InvalidRequest(f"senders {earlier!r} and {sender!r} are the same sender: give it once")
    return tuple(forms.values())


def add_sender(
    store: AccountAdmin, account_id: str, sender: str, *, inbound_upstreams: Sequence[str] | None = None
) -> SenderAdded:
    """`inbound_upstreams`: the upstreams that may deliver its inbound SMS (set_inbound_upstreams); None or empty,
    those the account's routes name. A sender another account released comes with that account's opt-outs of it
    (docs/opt-outs.md, "A sender that moves")."""
    sender = check_sender(sender)
    upstreams = inbound_upstream_names(inbound_upstreams or ())
    account = require_account(store, account_id)
    held = next((own for own in account.senders if same_sender(sender, own)), None)
    if held is None:
        return store.add_sender(account_id, sender, inbound_upstreams=upstreams)
    # Already this account's, in whatever form: adding it again changes nothing but a list of upstreams it names.
    if upstreams is not None:
        store.set_inbound_upstreams(account_id, held, upstreams)
    return SenderAdded(account=account)


def inbound_upstream_names(names: Sequence[str]) -> tuple[str, ...] | None:
    """The upstreams a number's inbound SMS may come from, each once, in the order given; None for none given (the
    number then follows the account's routes). InvalidRequest for a name that is no upstream name."""
    try:
        checked = tuple(dict.fromkeys(upstream_name(name.strip()) for name in names))
    except ValueError as error:
        raise InvalidRequest(str(error)) from error
    return checked or None


def set_inbound_upstreams(
    store: AccountAdmin, account_id: str, sender: str, inbound_upstreams: Sequence[str]
) -> SenderRegistration:
    """Binds the inbound SMS of one of the account's numbers to exactly these upstreams: an SMS to it from any other
    is acknowledged and dropped (logic/inbound.py). Empty: back to the upstreams the account's routes name."""
    upstreams = inbound_upstream_names(inbound_upstreams)
    require_account(store, account_id)
    return store.set_inbound_upstreams(account_id, sender.strip(), upstreams)


class SenderInbound(Record):
    """Where a number's inbound SMS is taken from, as an operator sees it: `inbound_upstreams` as set, or (None)
    following the account's routes, and `taken_from`, the upstreams that is now."""

    sender: str
    inbound_upstreams: tuple[str, ...] | None
    taken_from: tuple[str, ...]


def senders_inbound(store: AccountStore, account: Account, routes: RouteTable) -> list[SenderInbound]:
    routed = routes.upstreams_for_account(account.account_id)
    shown = []
    for sender in account.senders:
        registration = store.sender_registration(sender)
        set_to = registration.inbound_upstreams if registration is not None else None
        taken = registration.inbound_upstreams_with(routed) if registration is not None else frozenset()
        shown.append(SenderInbound(sender=sender, inbound_upstreams=set_to, taken_from=tuple(sorted(taken))))
    return shown


class PinnedInbound(Record):
    """A number that followed its account's routes, bound before a route edit to the upstreams it may take inbound
    SMS from (`set-sender --inbound-from-routes` releases it)."""

    account_id: str
    sender: str
    inbound_upstreams: tuple[str, ...]


def pin_inbound_before_route_change(store: InboundPins, before: RouteTable, after: RouteTable) -> list[PinnedInbound]:
    """Before the edit of `before` into `after` is written: binds each number that follows its routes, of every
    account whose routes `after` names fewer upstreams, to the upstreams they name before and after it. An inbound
    SMS is taken only from an upstream its number allows (logic/inbound.py), and an upstream the edit takes away
    from the routes may still deliver the number's SMS (the SMSC link of an upstream routed around); pinned, nothing
    taken today is dropped after the edit. Written first, so a crash before the edit leaves numbers pinned (safe),
    never routes changed under numbers that follow them. The callback path pays nothing for it."""
    accounts = before.accounts_losing_upstreams(after)
    candidates = store.accounts_following_routes() if accounts is None else iter(accounts)
    pinned = []
    for account_id in sorted(candidates):
        had, has = before.upstreams_for_account(account_id), after.upstreams_for_account(account_id)
        account = store.get_account(account_id) if not had <= has else None
        if account is None:  # lost nothing, or no such account (the edit's write refuses it)
            continue
        upstreams = tuple(sorted(had | has))
        for sender in account.senders:
            if store.pin_inbound_upstreams(account_id, sender, upstreams):
                pinned.append(PinnedInbound(account_id=account_id, sender=sender, inbound_upstreams=upstreams))
    return pinned


def remove_sender(store: AccountAdmin, account_id: str, sender: str) -> Account:
    require_account(store, account_id)
    return store.remove_sender(account_id, sender.strip())


# A top-up's request id: DynamoDB takes a transaction's ClientRequestToken of 1 to 36 characters.
TOP_UP_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,35}")


def top_up(store: AccountAdmin, account_id: str, credits: int, *, request_id: str | None = None) -> TopUpOutcome:
    """Adds the credits; the same top-up run again with the same `request_id` within 10 minutes adds them once (and
    says it was applied before)."""
    _positive(credits, "credits to add", most=MAX_TOP_UP)
    if request_id is not None and not TOP_UP_REQUEST_ID.fullmatch(request_id):
        raise InvalidRequest(
            f"request id {request_id!r} must be 1 to 36 letters, digits and . _ : - (starting with a letter or digit)"
        )
    require_account(store, account_id)
    return store.top_up(account_id, credits, request_id=request_id)


def set_price(store: AccountAdmin, *, tier: str, network: str, credits: int, country: str | None = None) -> PriceTable:
    tier = tier.upper()
    if tier not in ROUTE_TIERS:
        raise InvalidRequest(f"route tier {tier!r} must be one of {', '.join(ROUTE_TIERS)}")
    networks = {network.slug for network in CATALOGUE}
    if network != ANY_NETWORK and network not in networks:
        raise InvalidRequest(f"network {network!r} must be {ANY_NETWORK!r} or one of {', '.join(sorted(networks))}")
    if credits < 0:
        raise InvalidRequest(f"a price cannot be negative, not {credits}")
    if credits > MAX_PRICE_PER_PART:
        raise InvalidRequest(f"a price must be at most {MAX_PRICE_PER_PART} credits a part, not {credits}")
    return store.set_price(tier, price_key(network, check_country(country) if country is not None else None), credits)


def show_prices(store: PriceBook) -> PriceTable:
    return store.price_table()


def set_webhooks(
    store: AccountAdmin,
    box: SecretBox,
    account_id: str,
    *,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
    rotate_token: bool = False,
    allow_http: bool = False,
    rotate_secret: bool = False,
    by: str = "operator",
    now: datetime | None = None,
    under_password_epoch: str | None = None,
    expecting: Mapping[str, str | None] | None = None,
) -> tuple[Account, WebhookCredentials]:
    """An empty URL removes that webhook. Returns the account and the webhook credentials this call rotated (shown
    once): a new token with rotate_token, a new signing secret with rotate_secret. The account records when (`now`)
    and by what (`by`: "portal", "operator" or changed_with's credential) its webhooks last changed: whoever holds a
    leaked password can point them at their server, from the portal or with a token made there, and admin
    reset-password shows it. `under_password_epoch` (a portal session's): written only while the account's password
    is still that one, Unauthorized after a reset replaced it (nothing changed). Conflict, and nothing changed, when
    another change rotated the token or secret this one rotates while it ran (that change's answer shows the value
    in use). `expecting` (a portal form's): the URL each webhook it changes had as the form showed it (None or "":
    none), written only while it still has it; Conflict, nothing changed, when another change replaced it meanwhile
    (an API call, another tab), which this one would otherwise undo unseen."""
    if dlr_url is None and inbound_url is None and not rotate_token and not rotate_secret:
        raise InvalidRequest(
            "nothing to change: give a DLR URL, an inbound URL or rotate the webhook token or signing secret"
        )
    values: dict[str, str] = {}
    clear: set[str] = set()
    for name, url in (("dlr_url", dlr_url), ("inbound_url", inbound_url)):
        if url == "":
            clear.add(name)
        elif url is not None:
            check_webhook_url(url, allow_http=allow_http)
            values[name] = url
    # Only the URLs this change writes: one it leaves as it is may have changed meanwhile.
    expected = {name: (expecting or {})[name] or None for name in (*values, *clear) if name in (expecting or {})}
    rotating = [name for name, wanted in (("webhook_token", rotate_token), ("webhook_secret", rotate_secret)) if wanted]
    # A rotation reads what it replaces as it is now (consistently), and writes only while it is still that: of two
    # rotations at once (a client's retry after a timeout, two operators), the later one is refused instead of both
    # answering 200 with only one of them in use.
    account = store.get_account(account_id, consistent=True) if rotating else store.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    fresh = new_webhook_credentials()
    rotated = WebhookCredentials(
        token=fresh.token if rotate_token else None, secret=fresh.secret if rotate_secret else None
    )
    values["webhooks_changed_at"] = iso(now if now is not None else utc_now())
    values["webhooks_changed_by"] = by
    changes = AccountChanges.model_validate(
        {
            **values,
            **sealed_changes(box, account_id, rotated),
            "clear": clear,
            "under_password_epoch": under_password_epoch,
            "replacing": {name: _sealed_value(getattr(account, name)) for name in rotating},
            "expecting": expected,
        }
    )
    return store.update_account(account_id, changes), rotated


def _sealed_value(credential: SealedSecret | None) -> str | None:
    return credential.sealed if credential is not None else None


class SealingReport(Record):
    """What seal_plain_webhook_credentials did: the credentials it sealed, in how many accounts, and those it left
    because they changed while it ran (rotated: sealed by the rotation)."""

    sealed: int = 0
    accounts: int = 0
    changed_meanwhile: int = 0


def seal_plain_webhook_credentials(store: AccountAdmin, box: SecretBox) -> SealingReport:
    """Seals, in place, the webhook tokens and signing secrets of accounts written before sealing (scheme "plain"):
    the same secrets, so clients notice nothing, no longer readable from the table. Each is one conditional write
    (only while the stored value is still that plain text); running it again seals nothing more."""
    sealed = accounts = changed = 0
    for account in store.accounts_with_plain_webhook_credentials():
        plain = {
            name: credential.sealed
            for name, credential in (
                ("webhook_token", account.webhook_token),
                ("webhook_secret", account.webhook_secret),
            )
            if credential is not None and credential.scheme == "plain"
        }
        done = [
            store.seal_plain_credential(account.account_id, name, value, box.seal(account.account_id, name, value))
            for name, value in plain.items()
        ]
        sealed += sum(done)
        changed += len(done) - sum(done)
        accounts += any(done)
    return SealingReport(sealed=sealed, accounts=accounts, changed_meanwhile=changed)


def set_account(
    store: AccountAdmin,
    account_id: str,
    *,
    country: str | None = None,
    timezone: str | None = None,
    rate_limit: int | None = None,
    max_parts: int | None = None,
    single_sends_in_order: bool | None = None,
) -> Account:
    wanted = (country, timezone, rate_limit, max_parts, single_sends_in_order)
    if all(value is None for value in wanted):
        raise InvalidRequest(
            "nothing to change: give a country, a time zone, a rate limit, a maximum of parts or whether single "
            "sends keep their order"
        )
    account = require_account(store, account_id)
    changes = AccountChanges(
        default_country=check_country(country) if country is not None else None,
        timezone=check_timezone(timezone, current=account.timezone) if timezone is not None else None,
        rate_limit_per_second=(
            _positive(rate_limit, "rate limit", most=MAX_RATE_LIMIT) if rate_limit is not None else None
        ),
        max_parts=_positive(max_parts, "max parts", most=MAX_PARTS_LIMIT) if max_parts is not None else None,
        single_sends_in_order=single_sends_in_order,
    )
    return store.update_account(account_id, changes)
