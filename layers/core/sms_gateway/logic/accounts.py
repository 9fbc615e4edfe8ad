"""Operator use cases on accounts: create one with fresh credentials."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import Account, Credentials, iso
from sms_gateway.errors import InvalidRequest
from sms_gateway.ports import AccountStore

SENDER_ID = re.compile(r"^(?:[A-Za-z0-9 ]{1,11}|\+?[0-9]{3,15})$")


def check_webhook_url(url: str, *, allow_http: bool) -> None:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise InvalidRequest(f"webhook URL {url!r} must be an absolute {' or '.join(schemes)} URL")


def issue_credentials(username: str) -> Credentials:
    return Credentials(
        token=f"sk_{secrets.token_urlsafe(32)}",
        apikey=secrets.token_hex(24),
        partner_id=str(secrets.randbelow(900_000) + 100_000),
        username=username,
        password=secrets.token_urlsafe(18),
    )


def default_username(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "account"
    return f"{slug}-{secrets.token_hex(2)}"


def create_account(
    store: AccountStore,
    *,
    name: str,
    senders: Sequence[str],
    credits: int,
    now: datetime,
    default_country: str = "NG",
    timezone: str = "Africa/Lagos",
    username: str | None = None,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
    allow_http_webhooks: bool = False,
) -> tuple[Account, Credentials]:
    bad = [sender for sender in senders if not SENDER_ID.match(sender)]
    if bad:
        raise InvalidRequest(
            f"invalid sender id(s) {bad}: alphanumeric up to 11 characters, or a number (shortcode/long code)"
        )
    for url in (dlr_url, inbound_url):
        if url is not None:
            check_webhook_url(url, allow_http=allow_http_webhooks)
    if credits < 0:
        raise InvalidRequest("credits cannot be negative")
    credentials = issue_credentials(username or default_username(name))
    account = Account(
        account_id=str(new_id()),
        name=name,
        credits=credits,
        default_country=default_country.upper(),
        timezone=timezone,
        senders=tuple(dict.fromkeys(senders)),
        partner_id=credentials.partner_id,
        dlr_url=dlr_url,
        inbound_url=inbound_url,
        webhook_token=secrets.token_urlsafe(24),
        created_at=iso(now),
    )
    store.create_account(account, credentials)
    return account, credentials
