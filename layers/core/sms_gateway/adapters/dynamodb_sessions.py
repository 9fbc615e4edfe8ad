"""DynamoDB session items of the session-key dialect: pk=SESSION#<sha256 of the key>, sk=SESSION; portal sessions:
pk=PORTAL#<sha256 of the cookie's token>, sk=SESSION; and login counters (failed logins, logins in flight):
pk=LOGINS#<sha256 of the username>, sk=WINDOW#<window number>."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from sms_gateway.domain.models import from_iso, iso
from sms_gateway.ports import KeySession, LoginAttempt, LoginRefusal, PortalSession


class DynamoSessionsMixin:
    """Implements ports.SessionStore with DynamoStore, whose `client`, `table_name` and `password_login` it uses."""

    client: Any
    table_name: str

    @staticmethod
    def _session_key_item(session_key: str) -> dict[str, Any]:
        # Imported here: adapters.dynamodb imports this module to build DynamoStore.
        from sms_gateway.adapters.dynamodb import hash_secret

        return {"pk": {"S": f"SESSION#{hash_secret(session_key)}"}, "sk": {"S": "SESSION"}}

    def save_session(
        self, session_key: str, account_id: str, *, created_at: datetime, expires_at: datetime, password_epoch: str
    ) -> None:
        self.client.put_item(
            TableName=self.table_name,
            Item={
                **self._session_key_item(session_key),
                "account_id": {"S": account_id},
                "created_at": {"S": iso(created_at)},
                "expires_at": {"N": str(int(expires_at.timestamp()))},
                "password_epoch": {"S": password_epoch},
            },
            # A 256-bit random key never collides; the condition makes sure a session is never overwritten.
            ConditionExpression="attribute_not_exists(pk)",
        )

    def key_session(self, session_key: str, *, now: datetime) -> KeySession | None:
        found = self.client.get_item(
            TableName=self.table_name,
            Key=self._session_key_item(session_key),
            # A client sends its first request right after /login: the session must be there already.
            ConsistentRead=True,
        ).get("Item")
        # DynamoDB's TTL deletes expired items lazily (up to days later), so expiry is checked here.
        if not found or int(found["expires_at"]["N"]) <= int(now.timestamp()):
            return None
        return KeySession(
            account_id=found["account_id"]["S"],
            created_at=from_iso(found["created_at"]["S"]),
            password_epoch=_password_epoch(found),
        )

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
                **({"password_epoch": {"S": session.password_epoch}} if session.password_epoch is not None else {}),
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
            password_epoch=_password_epoch(found),
        )

    def extend_portal_session(self, token: str, idle_until: datetime) -> None:
        # Never brings back a session signed out meanwhile (an update alone would create the item), never moves the
        # idle expiry back (another request's read from before a renewal), nor past the expiry stored.
        self._update_portal_session(
            token,
            "SET idle_until = :idle",
            "attribute_exists(pk) AND idle_until < :idle AND expires_at >= :idle",
            {":idle": {"N": str(int(idle_until.timestamp()))}},
        )

    def renew_portal_session(self, token: str, session: PortalSession) -> bool:
        if session.password_epoch is None:
            return False
        # Never brings back a session signed out meanwhile, nor renews one of another account or password.
        return self._update_portal_session(
            token,
            "SET expires_at = :expires, idle_until = :idle",
            "attribute_exists(pk) AND account_id = :account AND password_epoch = :epoch",
            {
                ":expires": {"N": str(int(session.expires_at.timestamp()))},
                ":idle": {"N": str(int(session.idle_until.timestamp()))},
                ":account": {"S": session.account_id},
                ":epoch": {"S": session.password_epoch},
            },
        )

    def _update_portal_session(self, token: str, update: str, condition: str, values: dict[str, Any]) -> bool:
        """False when the condition failed, and nothing was written."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self._portal_session_key(token),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def delete_portal_session(self, token: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key=self._portal_session_key(token))

    @staticmethod
    def _login_window_item(username: str, window: int) -> dict[str, Any]:
        from sms_gateway.adapters.dynamodb import hash_secret

        # Hashed: the counter must not store what someone typed as a username (it may be a password by mistake).
        return {"pk": {"S": f"LOGINS#{hash_secret(username)}"}, "sk": {"S": f"WINDOW#{window}"}}

    def begin_login_attempt(
        self,
        username: str,
        window: int,
        *,
        max_failures: int,
        max_in_flight: int,
        started_at: datetime,
        stale_before: datetime,
        expires_at: datetime,
    ) -> LoginAttempt | LoginRefusal:
        # Each login in flight holds a place of its own, `attempt_<n>`, set to when it began: one whose login's
        # invocation died is taken over once stale, where a count would hold it until the window ends. The first
        # try takes place 0 without a read (a lone login, the usual case); a try that finds its place taken gets the
        # item back and tries a free one, so racing logins each end up in their own.
        started_ms = int(started_at.timestamp() * 1000)
        stale_ms = int(stale_before.timestamp() * 1000)
        key = self._login_window_item(username, window)
        values = {
            ":started": {"N": str(started_ms)},
            ":stale": {"N": str(stale_ms)},
            ":max_failures": {"N": str(max_failures)},
            ":expires": {"N": str(int(expires_at.timestamp()))},
        }
        place: int | None = 0
        for _ in range(max_in_flight + 1):
            if place is None:
                return LoginRefusal.BUSY
            found = self._take_login_place(key, place, values)
            if found is None:
                return LoginAttempt(place=place, started_ms=started_ms)
            if int(found.get("failures", {}).get("N", "0")) >= max_failures:
                return LoginRefusal.LOCKED_OUT
            place = next(
                (
                    free
                    for free in range(max_in_flight)
                    if int(found.get(f"attempt_{free}", {}).get("N", "0")) < stale_ms
                ),
                None,
            )
        return LoginRefusal.BUSY

    def _take_login_place(self, key: dict[str, Any], place: int, values: dict[str, Any]) -> dict[str, Any] | None:
        """None once this login holds `place`; else the item as it was (the place held by a live login, or the
        username locked out)."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET #place = :started, expires_at = :expires",
                ConditionExpression="(attribute_not_exists(failures) OR failures < :max_failures) "
                "AND (attribute_not_exists(#place) OR #place < :stale)",
                ExpressionAttributeNames={"#place": f"attempt_{place}"},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            return dict(error.response.get("Item") or {})
        return None

    def end_login_attempt(self, username: str, window: int, attempt: LoginAttempt, *, failed: bool) -> None:
        key = self._login_window_item(username, window)
        failure = {":one": {"N": "1"}} if failed else {}
        try:
            # Only its own place: one taken over as stale meanwhile is another login's now.
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="REMOVE #place" + (" ADD failures :one" if failed else ""),
                ConditionExpression="#place = :started",
                ExpressionAttributeNames={"#place": f"attempt_{attempt.place}"},
                ExpressionAttributeValues={":started": {"N": str(attempt.started_ms)}, **failure},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            if failed:
                # A wrong password counts all the same, on the window's counter while it exists.
                with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
                    self.client.update_item(
                        TableName=self.table_name,
                        Key=key,
                        UpdateExpression="ADD failures :one",
                        ConditionExpression="attribute_exists(pk)",
                        ExpressionAttributeValues=failure,
                    )


def _password_epoch(session: dict[str, Any]) -> str | None:
    """The epoch of the password a stored session was opened with; None for one opened before sessions carried it."""
    epoch = session.get("password_epoch")
    return str(epoch["S"]) if epoch is not None else None
