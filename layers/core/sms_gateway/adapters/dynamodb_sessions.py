"""DynamoDB session items of the session-key dialect: pk=SESSION#<sha256 of the key>, sk=SESSION; portal sessions:
pk=PORTAL#<sha256 of the cookie's token>, sk=SESSION; and failed-login counters: pk=LOGINS#<sha256 of the username>,
sk=WINDOW#<window number>."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sms_gateway.domain.models import iso
from sms_gateway.ports import PortalSession


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

    @staticmethod
    def _portal_session_key(token: str) -> dict[str, Any]:
        from sms_gateway.adapters.dynamodb import hash_secret

        return {"pk": {"S": f"PORTAL#{hash_secret(token)}"}, "sk": {"S": "SESSION"}}

    def save_portal_session(self, token: str, session: PortalSession) -> None:
        self.client.put_item(
            TableName=self.table_name,
            Item={
                **self._portal_session_key(token),
                "account_id": {"S": session.account_id},
                "created_at": {"S": iso(session.created_at)},
                # expires_at is the table's TTL attribute: DynamoDB removes the item some time after it.
                "expires_at": {"N": str(int(session.expires_at.timestamp()))},
                "idle_until": {"N": str(int(session.idle_until.timestamp()))},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )

    def portal_session(self, token: str) -> PortalSession | None:
        found = self.client.get_item(
            TableName=self.table_name, Key=self._portal_session_key(token), ConsistentRead=True
        ).get("Item")
        if not found:
            return None
        return PortalSession(
            account_id=found["account_id"]["S"],
            created_at=datetime.fromisoformat(found["created_at"]["S"]),
            expires_at=datetime.fromtimestamp(int(found["expires_at"]["N"]), tz=UTC),
            idle_until=datetime.fromtimestamp(int(found["idle_until"]["N"]), tz=UTC),
        )

    def extend_portal_session(self, token: str, idle_until: datetime) -> None:
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self._portal_session_key(token),
                UpdateExpression="SET idle_until = :idle",
                # Never brings back a session signed out meanwhile (an update alone would create the item).
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":idle": {"N": str(int(idle_until.timestamp()))}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return

    def delete_portal_session(self, token: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key=self._portal_session_key(token))

    @staticmethod
    def _login_window_item(username: str, window: int) -> dict[str, Any]:
        from sms_gateway.adapters.dynamodb import hash_secret

        # Hashed: the counter must not store what someone typed as a username (it may be a password by mistake).
        return {"pk": {"S": f"LOGINS#{hash_secret(username)}"}, "sk": {"S": f"WINDOW#{window}"}}

    def begin_login_attempt(
        self, username: str, window: int, *, max_failures: int, max_in_flight: int, expires_at: datetime
    ) -> bool:
        return self._count_login_attempt(
            username,
            window,
            UpdateExpression="ADD in_flight :one SET expires_at = :expires",
            ConditionExpression="(attribute_not_exists(failures) OR failures < :max_failures) "
            "AND (attribute_not_exists(in_flight) OR in_flight < :max_in_flight)",
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":max_failures": {"N": str(max_failures)},
                ":max_in_flight": {"N": str(max_in_flight)},
                ":expires": {"N": str(int(expires_at.timestamp()))},
            },
        )

    def end_login_attempt(self, username: str, window: int, *, failed: bool) -> None:
        # Never below zero: an end without its beginning (the item expired meanwhile) changes nothing.
        values = {":minus_one": {"N": "-1"}, ":zero": {"N": "0"}}
        update = "ADD in_flight :minus_one"
        if failed:
            values[":one"] = {"N": "1"}
            update += ", failures :one"
        self._count_login_attempt(
            username,
            window,
            UpdateExpression=update,
            ConditionExpression="in_flight > :zero",
            ExpressionAttributeValues=values,
        )

    def _count_login_attempt(self, username: str, window: int, **update: Any) -> bool:
        try:
            self.client.update_item(TableName=self.table_name, Key=self._login_window_item(username, window), **update)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
