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


def account_reads_lag(monkeypatch: Any, account_id: str) -> None:
    """From now on an eventually consistent read of the account item answers it as it is now, as a DynamoDB replica
    that has not caught up may (moto is always consistent); a consistent read answers it as it is then."""
    from sms_gateway.adapters.dynamodb import account_key

    item_reads_lag(monkeypatch, account_key(account_id))


def item_reads_lag(monkeypatch: Any, key: dict[str, Any]) -> None:
    """From now on an eventually consistent GetItem of `key` answers the item as it is now, as a DynamoDB replica that
    has not caught up may (moto is always consistent); a consistent read answers it as it is then."""
    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    stale = client.get_item(TableName=gateway().store.table_name, Key=key, ConsistentRead=True)
    read = client.get_item

    def get_item(**request: Any) -> Any:
        if request.get("Key") == key and not request.get("ConsistentRead"):
            return stale
        return read(**request)

    monkeypatch.setattr(client, "get_item", get_item)


def batch_message_reads_lag(monkeypatch: Any, account_id: str, reference_id: int) -> None:
    """From now on an eventually consistent Query of the batch's messages answers as a DynamoDB replica that has not
    caught up with the send that stored them yet may (moto is always consistent): none of them; a consistent Query
    answers them as they are."""
    from sms_gateway.adapters.dynamodb import messages_pk
    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    pk = messages_pk(account_id, reference_id)
    query = client.query

    def lagging_query(**request: Any) -> Any:
        values = request.get("ExpressionAttributeValues") or {}
        if values.get(":pk") == {"S": pk} and not request.get("ConsistentRead") and "IndexName" not in request:
            return {"Items": [], "Count": 0, "ScannedCount": 0}
        return query(**request)

    monkeypatch.setattr(client, "query", lagging_query)
