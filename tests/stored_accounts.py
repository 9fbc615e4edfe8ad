"""What the table holds for an account, read through the gateway's own wiring (under a moto stack)."""

from __future__ import annotations

from typing import Any


def stored(account_id: str) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store.get_account(account_id)


def webhook_credentials(account_id: str) -> tuple[str, str]:
    """The account's webhook token and signing secret as stored, opened with the stack's key."""
    from sms_gateway.bootstrap import gateway

    account = stored(account_id)
    box = gateway().webhook_credentials
    return (
        box.open(account_id, "webhook_token", account.webhook_token),
        box.open(account_id, "webhook_secret", account.webhook_secret),
    )
