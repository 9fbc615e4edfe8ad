"""DynamoDB session items of the session-key dialect: pk=SESSION#<sha256 of the key>, sk=SESSION."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sms_gateway.domain.models import iso


class DynamoSessionsMixin:
    """Implements ports.SessionStore with DynamoStore, whose `client`, `table_name` and `account_id_for_login`
    it uses."""

    client: Any
    table_name: str

    @staticmethod
    def _session_key_item(session_key: str) -> dict[str, Any]:
        # Imported here: adapters.dynamodb imports this module to build DynamoStore.
        from sms_gateway.adapters.dynamodb import hash_secret

        return {"pk": {"S": f"SESSION#{hash_secret(session_key)}"}, "sk": {"S": "SESSION"}}

    def save_session(self, session_key: str, account_id: str, *, created_at: datetime, expires_at: datetime) -> None:
        self.client.put_item(
            TableName=self.table_name,
            Item={
                **self._session_key_item(session_key),
                "account_id": {"S": account_id},
                "created_at": {"S": iso(created_at)},
                "expires_at": {"N": str(int(expires_at.timestamp()))},
            },
            # A 256-bit random key never collides; the condition makes sure a session is never overwritten.
            ConditionExpression="attribute_not_exists(pk)",
        )

    def account_id_for_session(self, session_key: str, *, now: datetime) -> str | None:
        found = self.client.get_item(
            TableName=self.table_name,
            Key=self._session_key_item(session_key),
            # A client sends its first request right after /login: the session must be there already.
            ConsistentRead=True,
        ).get("Item")
        # DynamoDB's TTL deletes expired items lazily (up to days later), so expiry is checked here.
        if not found or int(found["expires_at"]["N"]) <= int(now.timestamp()):
            return None
        return str(found["account_id"]["S"])
