"""DynamoDB session items of the session-key dialect: pk=SESSION#<sha256 of the key>, sk=SESSION; portal sessions:
pk=PORTAL#<sha256 of the cookie's token>, sk=SESSION; login counters (failed logins, of the username and of each
source, and logins in flight): pk=LOGINS#<sha256 of the username>, sk=WINDOW#<window number>; and the sources a
username knows: `known_sources` on its login item (pk=LOGIN#<username>, sk=LOGIN)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from sms_gateway.adapters.dynamodb_admin import epoch_condition
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
        source: str,
        known_source: bool,
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
        from_source = _source_failures(source)
        values = {
            ":started": {"N": str(started_ms)},
            ":stale": {"N": str(stale_ms)},
            ":max_failures": {"N": str(max_failures)},
            ":expires": {"N": str(int(expires_at.timestamp()))},
        }
        # The source's own failures always count; the username's, from every source, unless this one is known.
        condition = "(attribute_not_exists(#source) OR #source < :max_failures)"
        if not known_source:
            condition += " AND (attribute_not_exists(failures) OR failures < :max_failures)"
        place: int | None = 0
        for _ in range(max_in_flight + 1):
            if place is None:
                return LoginRefusal.BUSY
            found = self._take_login_place(key, place, condition, from_source, values)
            if found is None:
                return LoginAttempt(place=place, started_ms=started_ms)
            if _count(found, from_source) >= max_failures:
                return LoginRefusal.LOCKED_OUT
            if not known_source and _count(found, "failures") >= max_failures:
                return LoginRefusal.LOCKED_OUT_TO_UNKNOWN_SOURCES
            place = next(
                (free for free in range(max_in_flight) if _count(found, f"attempt_{free}") < stale_ms),
                None,
            )
        return LoginRefusal.BUSY

    def _take_login_place(
        self, key: dict[str, Any], place: int, condition: str, from_source: str, values: dict[str, Any]
    ) -> dict[str, Any] | None:
        """None once this login holds `place`; else the item as it was (the place held by a live login, or the
        source locked out)."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET #place = :started, expires_at = :expires",
                ConditionExpression=f"{condition} AND (attribute_not_exists(#place) OR #place < :stale)",
                ExpressionAttributeNames={"#place": f"attempt_{place}", "#source": from_source},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            return dict(error.response.get("Item") or {})
        return None

    def end_login_attempt(
        self, username: str, window: int, attempt: LoginAttempt, *, source: str, failed: bool
    ) -> None:
        key = self._login_window_item(username, window)
        failure = {":one": {"N": "1"}} if failed else {}
        counted = " ADD failures :one, #source :one" if failed else ""
        try:
            # Only its own place: one taken over as stale meanwhile is another login's now.
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="REMOVE #place" + counted,
                ConditionExpression="#place = :started",
                ExpressionAttributeNames={
                    "#place": f"attempt_{attempt.place}",
                    **({"#source": _source_failures(source)} if failed else {}),
                },
                ExpressionAttributeValues={":started": {"N": str(attempt.started_ms)}, **failure},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            if failed:
                # A wrong password counts all the same, on the window's counters while they exist.
                with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
                    self.client.update_item(
                        TableName=self.table_name,
                        Key=key,
                        UpdateExpression=counted.strip(),
                        ConditionExpression="attribute_exists(pk)",
                        ExpressionAttributeNames={"#source": _source_failures(source)},
                        ExpressionAttributeValues=failure,
                    )

    def clear_login_failures(self, username: str) -> int:
        # Every window the username has, not the clock's one: the operator's clock may be off, and windows past are
        # kept until DynamoDB's TTL removes them (they refuse nothing by then). Deleted, not updated, so a login in
        # flight ends uncounted (its conditional write finds no place) and the next one starts a fresh window item.
        partition = self._login_window_item(username, 0)["pk"]
        had_failures = 0
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :window)",
            ExpressionAttributeValues={":pk": partition, ":window": {"S": "WINDOW#"}},
            ConsistentRead=True,
        )
        for page in pages:
            for item in page.get("Items", []):
                self.client.delete_item(TableName=self.table_name, Key={"pk": item["pk"], "sk": item["sk"]})
                had_failures += _count(item, "failures") > 0
        return had_failures

    def login_source_known(self, username: str, source: str, *, since: datetime) -> bool:
        from sms_gateway.adapters.dynamodb import MAX_PARTITION_KEY_BYTES

        key = _login_item(username)
        if len(key["pk"]["S"].encode()) > MAX_PARTITION_KEY_BYTES:
            return False
        found = self.client.get_item(
            TableName=self.table_name,
            Key=key,
            ProjectionExpression="known_sources",
            # A reset a moment ago forgot them: a replica that has not seen it would still know them.
            ConsistentRead=True,
        ).get("Item")
        seen_at = source_seen_at(found or {}, source)
        return seen_at is not None and seen_at >= since

    def remember_login_source(
        self, username: str, source: str, *, password_epoch: str, at: datetime, forget_before: datetime, most: int
    ) -> None:
        key = _login_item(username)
        found = self.client.get_item(
            TableName=self.table_name, Key=key, ProjectionExpression="known_sources", ConsistentRead=True
        ).get("Item")
        oldest = int(forget_before.timestamp())
        known = {
            name: int(seen["N"])
            for name, seen in (found or {}).get("known_sources", {}).get("M", {}).items()
            if int(seen["N"]) >= oldest
        }
        known[_source_name(source)] = int(at.timestamp())
        latest = sorted(known.items(), key=lambda pair: pair[1], reverse=True)[:most]
        same_password = epoch_condition(password_epoch)
        # Only while the password logged in with is the login's: a reset meanwhile forgot every source, and a login
        # that checked the old password must not make one known again. Two sources remembered at once may each write
        # the map it read: one is then forgotten until its next login remembers it again.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET known_sources = :known",
                ConditionExpression=same_password["ConditionExpression"],
                ExpressionAttributeValues={
                    ":known": {"M": {name: {"N": str(seen)} for name, seen in latest}},
                    **same_password["ExpressionAttributeValues"],
                },
            )


def _login_item(username: str) -> dict[str, Any]:
    return {"pk": {"S": f"LOGIN#{username}"}, "sk": {"S": "LOGIN"}}


def _source_name(source: str) -> str:
    """A source as the login items name it: hashed (no client address stored in clear), 64 bits being plenty to tell
    one username's sources apart."""
    from sms_gateway.adapters.dynamodb import hash_secret

    return hash_secret(source)[:16]


def _source_failures(source: str) -> str:
    """The window item's attribute counting the failed logins from `source`."""
    return f"failures_{_source_name(source)}"


def _count(item: dict[str, Any], attribute: str) -> int:
    return int(item.get(attribute, {}).get("N", "0"))


def source_seen_at(login_item: dict[str, Any], source: str) -> datetime | None:
    """When `source` last logged in as the login item's username, as the item records it; None: not known."""
    seen = login_item.get("known_sources", {}).get("M", {}).get(_source_name(source))
    return datetime.fromtimestamp(int(seen["N"]), tz=UTC) if seen is not None else None


def _password_epoch(session: dict[str, Any]) -> str | None:
    """The epoch of the password a stored session was opened with; None for one opened before sessions carried it."""
    epoch = session.get("password_epoch")
    return str(epoch["S"]) if epoch is not None else None
