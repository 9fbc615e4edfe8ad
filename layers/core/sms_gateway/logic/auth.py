"""Authentication of clients by the credentials their dialect uses."""

from __future__ import annotations

from sms_gateway.domain.models import Account, CredentialKind
from sms_gateway.errors import Unauthorized
from sms_gateway.ports import AccountStore


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing or malformed Authorization header: expected 'Bearer <token>'")
    return token.strip()


def account_for_credential(store: AccountStore, kind: CredentialKind, secret: str) -> Account:
    account_id = store.account_id_for_credential(str(kind), secret)
    account = store.get_account(account_id) if account_id else None
    if account is None:
        raise Unauthorized("invalid credentials")
    return account
