"""DynamoDB inbox: inbound SMS stored once per upstream message, listed newest first (a DynamoStore mixin).

Items it adds (see docs/data-model.md):
  inbound       pk=INBOX#<account_id>                     sk=IN#<inbound_id, 19 digits>  -> the StoredInbound
  dedup marker  pk=INUP#<upstream>#<upstream message id>  sk=INBOUND#<account_id>#<to>   -> account_id, to, inbound_id
  (markers written before they named the account and number have sk=INBOUND: they still make any SMS with that
  upstream id a duplicate, as they did, until they expire with their SMS)
Inbound ids are time-ordered, so the inbox sort key is the arrival order and a date range is a key range.
An inbound SMS whose notification is not queued yet carries sweep_shard=INBOUND#<0-3> and sweep_at=<when a sweep
may queue it, epoch seconds>: the keys of the sparse `sweep-index` (dynamodb_sweep.py), removed once it is queued.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key, read_page
from sms_gateway.adapters.dynamodb_sweep import INBOUND, UNMARK, claim_due, sweep_keys
from sms_gateway.adapters.dynamodb_transactions import transact_until_decided
from sms_gateway.domain.ids import EPOCH_MS, MAX_ID, RANDOM_BITS, id_time_ms
from sms_gateway.domain.models import FoundInbound, StoredInbound
from sms_gateway.domain.senders import same_sender
from sms_gateway.ports import PageBudget

INBOX_SK_PREFIX = "IN#"
INBOUND_SK = id_sort_key(INBOX_SK_PREFIX)
# The sort key of a marker written before markers named the account and number (kept until they expire).
LEGACY_MARKER_SK = "INBOUND"
# A number filter runs in DynamoDB after the key range is read: each round reads at least this many items, and
# a page stops after this many rounds (it may then come back short, with a cursor to follow).
_FILTER_READ_SIZE = 100
_MAX_FILTER_ROUNDS = 10
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def inbox_pk(account_id: str) -> str:
    return f"INBOX#{account_id}"


def inbound_sk(inbound_id: int) -> str:
    return f"{INBOX_SK_PREFIX}{inbound_id:019d}"


def marker_pk(upstream: str, upstream_message_id: str) -> str:
    return f"INUP#{upstream}#{upstream_message_id}"


def marker_sk(account_id: str, to: str) -> str:
    """An upstream's id is unique only to that upstream: a shared one may give the same id to SMS for two accounts'
    numbers, each a new SMS. So a marker claims the id for the account and the number the SMS was sent to."""
    return f"{LEGACY_MARKER_SK}#{account_id}#{to}"


def _unix_ms(moment: datetime) -> int:
    return (moment - _UNIX_EPOCH) // timedelta(milliseconds=1)


def first_id_at(moment: datetime) -> int:
    """The smallest id made in `moment`'s millisecond or later (`moment` is aware)."""
    elapsed = _unix_ms(moment) - EPOCH_MS
    return min(max(elapsed, 0) << RANDOM_BITS, MAX_ID)


def last_id_at(moment: datetime) -> int:
    """The largest id made in `moment`'s millisecond or earlier; -1 before ids began."""
    elapsed = _unix_ms(moment) - EPOCH_MS
    if elapsed < 0:
        return -1
    return min((elapsed << RANDOM_BITS) | (2**RANDOM_BITS - 1), MAX_ID)


def id_moment(inbound_id: int) -> datetime:
    """When an id was made: for an inbound SMS, when the gateway received it."""
    return _UNIX_EPOCH + timedelta(milliseconds=id_time_ms(inbound_id))


def keywords_pending_to(client: Any, table_name: str, account_id: str, sender: str) -> int:
    """How many of the account's inbound SMS to `sender` are a STOP / START still to be applied (`keyword_pending`:
    its callback failed, and the notifier applies it under this account only). The whole inbox is read, consistently:
    an operator's check before the sender's opt-outs are copied to another account, where a keyword applied since
    must be found, and an index would be read late."""
    query: dict[str, Any] = {
        "TableName": table_name,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :inbound)",
        "FilterExpression": "keyword_pending = :pending",
        "ProjectionExpression": "#to",
        "ExpressionAttributeNames": {"#to": "to"},
        "ExpressionAttributeValues": {
            ":pk": {"S": inbox_pk(account_id)},
            ":inbound": {"S": INBOX_SK_PREFIX},
            ":pending": {"BOOL": True},
        },
        "ConsistentRead": True,
    }
    pending = 0
    while True:
        answer = client.query(**query)
        pending += sum(same_sender(item["to"]["S"], sender) for item in answer.get("Items", []))
        if "LastEvaluatedKey" not in answer:
            return pending
        query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


class DynamoInboxMixin:
    """Implements ports.InboxStore; mixed into DynamoStore, so `client`, `table_name`, `_codec` and `_retention`
    are its."""

    client: Any
    table_name: str
    _codec: Any
    _retention: timedelta

    def save_inbound(self, inbound: StoredInbound, *, notify_due: datetime | None = None) -> bool:
        # Expiry counts from our own arrival time (the id's): an upstream's timestamp may be absent or odd.
        expires_at = int((id_moment(inbound.inbound_id) + self._retention).timestamp())
        item = {
            "pk": inbox_pk(inbound.account_id),
            "sk": inbound_sk(inbound.inbound_id),
            "expires_at": expires_at,
            # Dumped whole, so fields other features add to StoredInbound are stored without a change here.
            **inbound.model_dump(mode="json"),
        }
        if notify_due is not None:
            item |= sweep_keys(INBOUND, inbound.inbound_id, notify_due)
        put_item = {
            "TableName": self.table_name,
            "Item": self._codec.dump(item),
            # Ids from two Lambdas could meet in the same millisecond; 22 random bits make that rare, never silent.
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        if not inbound.upstream_message_id:
            self.client.put_item(**put_item)
            return True
        pk = marker_pk(inbound.upstream, inbound.upstream_message_id)
        marker = {
            "pk": pk,
            "sk": marker_sk(inbound.account_id, inbound.to),
            "account_id": inbound.account_id,
            "to": inbound.to,
            "inbound_id": inbound.inbound_id,
            "expires_at": expires_at,
        }
        # One transaction: the upstream's id is claimed exactly when the SMS lands in the inbox, so a retried
        # callback (same upstream id, new inbound id) is stored once. Tried again while only conflicts with other
        # writes cancel it: a resend whose first post is writing the same marker meets it so on AWS, and its next
        # try finds the marker and is the duplicate it is (until session 38 the callback failed with a 500).
        marker_refused, legacy_marker_refused, inbound_refused = transact_until_decided(
            self.client,
            [
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": self._codec.dump(marker),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": self.table_name,
                        "Key": {"pk": {"S": pk}, "sk": {"S": LEGACY_MARKER_SK}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": put_item},
            ],
        )
        if marker_refused or legacy_marker_refused:
            return False
        if inbound_refused:
            raise RuntimeError(f"inbound id {inbound.inbound_id} is taken: the upstream's resend is stored anew")
        return True

    def find_inbound(self, upstream: str, upstream_message_id: str, account_id: str, to: str) -> FoundInbound | None:
        pk = marker_pk(upstream, upstream_message_id)
        for sk in (marker_sk(account_id, to), LEGACY_MARKER_SK):
            marker = self.client.get_item(
                TableName=self.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
            ).get("Item")
            if marker:
                break
        else:
            return None
        found = self._inbound_item(marker["account_id"]["S"], int(marker["inbound_id"]["N"]))
        if found is None:
            return None
        return FoundInbound(StoredInbound.model_validate(self._codec.load(found)), not_queued="sweep_at" in found)

    def get_inbound(self, account_id: str, inbound_id: int) -> StoredInbound | None:
        found = self._inbound_item(account_id, inbound_id)
        return StoredInbound.model_validate(self._codec.load(found)) if found else None

    def _inbound_item(self, account_id: str, inbound_id: int) -> dict[str, Any] | None:
        """The stored item (DynamoDB attribute values), read consistently, or None."""
        found: dict[str, Any] | None = self.client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": inbox_pk(account_id)}, "sk": {"S": inbound_sk(inbound_id)}},
            ConsistentRead=True,
        ).get("Item")
        return found

    def keyword_applied(self, inbound: StoredInbound) -> None:
        # Never an item of its own: an inbound SMS expired in the meantime stays gone.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key={"pk": {"S": inbox_pk(inbound.account_id)}, "sk": {"S": inbound_sk(inbound.inbound_id)}},
                UpdateExpression="REMOVE keyword_pending",
                ConditionExpression="attribute_exists(pk)",
            )

    def inbound_notified(self, inbound: StoredInbound) -> None:
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key={"pk": {"S": inbox_pk(inbound.account_id)}, "sk": {"S": inbound_sk(inbound.inbound_id)}},
                UpdateExpression=f"REMOVE {UNMARK}",
                ConditionExpression="attribute_exists(sweep_at)",
            )

    def claim_inbound_notifications(self, *, now: datetime, until: datetime, limit: int) -> list[StoredInbound]:
        claimed = claim_due(self, INBOUND, now=now, until=until, limit=limit)
        return [StoredInbound.model_validate(self._codec.load(item)) for item in claimed]

    def list_inbounds(
        self,
        account_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        msisdn: str | None = None,
        budget: PageBudget[StoredInbound] | None = None,
    ) -> tuple[list[StoredInbound], str | None]:
        pk = inbox_pk(account_id)
        low = first_id_at(since) if since is not None else 0
        high = last_id_at(until) if until is not None else MAX_ID
        if low > high:
            return [], None
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": {"S": pk},
                ":low": {"S": inbound_sk(low)},
                ":high": {"S": inbound_sk(high)},
            },
            "ScanIndexForward": False,
            # A client polling "from the last one I saw" must not miss an SMS stored a moment ago.
            "ConsistentRead": True,
        }
        if cursor:
            query["ExclusiveStartKey"] = self._inbox_cursor(cursor, pk, inbound_sk(low), inbound_sk(high))
        rounds, read_size = 1, 0
        if msisdn is not None:
            query["FilterExpression"] = "msisdn = :msisdn"
            query["ExpressionAttributeValues"][":msisdn"] = {"S": msisdn}
            rounds, read_size = _MAX_FILTER_ROUNDS, _FILTER_READ_SIZE
        found, last = read_page(
            self.client.query,
            query,
            limit,
            load=lambda items: [StoredInbound.model_validate(self._codec.load(item)) for item in items],
            key_of=lambda inbound: {"pk": {"S": pk}, "sk": {"S": inbound_sk(inbound.inbound_id)}},
            rounds=rounds,
            read_size=read_size,
            budget=budget,
        )
        return found, encode_cursor(last)

    @staticmethod
    def _inbox_cursor(cursor: str, pk: str, low: str, high: str) -> dict[str, Any]:
        # A cursor kept across a change of from/to falls outside the new range: refused, with a reason.
        return decode_cursor(
            cursor,
            pk=pk,
            sk_form=INBOUND_SK,
            sk_range=(low, high),
            problem="the `cursor` is not valid for this listing: pass the last page's next_cursor, with the same "
            "`from`/`to`",
        )
