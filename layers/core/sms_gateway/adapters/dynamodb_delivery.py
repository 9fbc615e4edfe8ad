"""DynamoDB items that tie upstream reports and replies to our messages: upstream-id links, held DLRs, part
statuses and the conversation index.

  upstream link  pk=UPMSG#<upstream>#<upstream message id>  sk=LINK  -> message_ref, held (DLRs that came first, at
                 most MAX_HELD_REPORTS), held_last (the latest of those that came after them, never an interim one
                 after a final one: held_last_final says it is final)

A message whose final report's notification the notify queue refused carries announce_pending and, in the same
write, sweep_shard=REPORT#<0-3> and sweep_at (the sparse `sweep-index`, dynamodb_sweep.py), removed together.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sms_gateway.adapters.dynamodb_batch import batch_get
from sms_gateway.adapters.dynamodb_sweep import REPORT, UNMARK, claim_due, sweep_keys
from sms_gateway.domain.models import (
    DeliveryReport,
    Message,
    MessageKey,
    SentMessage,
    StatusChange,
    iso,
    reply_order,
)
from sms_gateway.domain.senders import registry_form, same_sender
from sms_gateway.domain.status import (
    SUBMIT_UNCONFIRMED,
    TERMINAL,
    MessageStatus,
    allowed_previous,
    may_have_reached_the_handset,
)
from sms_gateway.ports import Holding

CONVERSATION_INDEX = "conversation-index"
# A reply's lookup reads the number's newest index entries this many at a time, at most this many pages (100
# entries, from any of the account's numbers: the index's entries are small, a page of 25 is one read unit or two),
# keeping those from the number the reply was sent to; of these it reads the status of at most this many (messages
# scheduled ahead to one number are few). Past either bound the reply starts a conversation of its own.
_CONVERSATION_PAGE = 25
_CONVERSATION_PAGES = 4
_CONVERSATION_STATUS_READS = 20
# Kept as long as an upstream may still report on a message (validity plus the carriers' retry window).
LINK_RETENTION = timedelta(days=7)
# Reports an upstream link holds before it is linked, in arrival order, a repeat of one held not kept again. An
# upstream reports a message a few times (AT: Sent, Buffered, Success); past these only the latest other report is
# kept besides (`held_last`), each replacing the one before, but an interim report never replaces a final one
# (`held_last_final`): applied after it, the final report settles the message, where an interim one kept in its place
# left it submitted, expired and refunded after its DLR wait though delivered (until 2026-12-07). Until session 35
# every report was appended, repeats too: an id reported over and over (~4,000 times within the link's 7 days) filled
# DynamoDB's 400 KB item, and every later report for it failed its callback with a 5xx.
MAX_HELD_REPORTS = 32

# A report by our reference is applied only when the upstream that sent it carries the message: the one that took
# it, the one a dispatcher is submitting it to, or the one that may have it (an unanswered submit). Any other
# upstream's callback, authenticated by its own token, could otherwise settle and refund another's message. A
# message recorded submitted-unconfirmed before 2026-12-05 names no upstream (that write did not record it): any
# upstream's report applies to it, as it did then, until its DLR wait is over.
REPORTER_CARRIES_IT = (
    "(upstream = :reporter OR claim_upstream = :reporter OR maybe_taken_by = :reporter"
    " OR (attribute_not_exists(upstream) AND error_code = :unconfirmed))"
)


def reporter_values(reporter: str) -> dict[str, Any]:
    """The values REPORTER_CARRIES_IT names."""
    return {":reporter": {"S": reporter}, ":unconfirmed": {"S": SUBMIT_UNCONFIRMED}}


def upstream_link_key(upstream: str, upstream_message_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"UPMSG#{upstream}#{upstream_message_id}"}, "sk": {"S": "LINK"}}


def _linked_key(link: dict[str, Any]) -> MessageKey:
    """The message an upstream link names (link_upstream_id writes a key's ref, nothing else)."""
    key = MessageKey.from_ref(link["message_ref"]["S"])
    if key is None:
        raise ValueError(f"upstream link names no message: {link['message_ref']['S'][:64]!r}")
    return key


def conversation_key(account_id: str, msisdn: str) -> str:
    return f"{account_id}#{msisdn}"


class DynamoDeliveryMixin:
    """Implements the delivery parts of ports.MessageStore for DynamoStore (`client`, `table_name`, `_codec`)."""

    client: Any
    table_name: str
    _codec: Any

    def _link_expiry(self, now: datetime) -> dict[str, str]:
        return {"N": str(int((now + LINK_RETENTION).timestamp()))}

    def link_upstream_id(
        self, upstream: str, upstream_message_id: str, key: MessageKey, *, now: datetime
    ) -> list[DeliveryReport]:
        """Records which message an upstream id names, and hands back any DLRs that arrived before it did.
        One write: a report held at the same moment is either returned here or finds the link (hold_report). The
        held reports stay on the link (it expires with them), so a second link write, the settle check's, hands
        them back again when the first writer died before applying them; applying a report twice changes nothing."""
        answer = self.client.update_item(
            TableName=self.table_name,
            Key=upstream_link_key(upstream, upstream_message_id),
            UpdateExpression="SET message_ref = :ref, expires_at = :expires",
            ExpressionAttributeValues={":ref": {"S": key.to_ref()}, ":expires": self._link_expiry(now)},
            ReturnValues="ALL_OLD",
        )
        link = answer.get("Attributes", {})
        held = [*link.get("held", {}).get("L", []), *([link["held_last"]] if "held_last" in link else [])]
        return [DeliveryReport.model_validate_json(entry["S"]) for entry in held]

    def find_by_upstream_id(self, upstream: str, upstream_message_id: str) -> MessageKey | None:
        found = self.client.get_item(
            TableName=self.table_name, Key=upstream_link_key(upstream, upstream_message_id), ConsistentRead=True
        ).get("Item")
        return MessageKey.from_ref(found["message_ref"]["S"]) if found and "message_ref" in found else None

    def hold_report(self, report: DeliveryReport, *, now: datetime) -> MessageKey | Holding:
        """Keeps a DLR whose message is not linked yet: HELD when kept, NOTHING_NEW when held already (a repeat,
        which applying again would not change), or the message's key when the link appeared in the meantime (the
        caller applies the report then). Past MAX_HELD_REPORTS, the report is kept as the latest (`held_last`),
        unless it is an interim report and the latest is final: it would change nothing applied after the final one
        (NOTHING_NEW)."""
        assert report.upstream_message_id, "only reports that name the message by the upstream's id are held"
        entry = {"S": report.model_dump_json(exclude_none=True)}
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=upstream_link_key(report.upstream, report.upstream_message_id),
                UpdateExpression="SET held = list_append(if_not_exists(held, :empty), :report), expires_at = :expires",
                ConditionExpression="attribute_not_exists(message_ref) AND NOT contains(held, :entry)"
                " AND (attribute_not_exists(held) OR size(held) < :most)",
                ExpressionAttributeValues={
                    ":empty": {"L": []},
                    ":report": {"L": [entry]},
                    ":entry": entry,
                    ":most": {"N": str(MAX_HELD_REPORTS)},
                    ":expires": self._link_expiry(now),
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return Holding.HELD
        except self.client.exceptions.ConditionalCheckFailedException as error:
            link = error.response["Item"]
        if "message_ref" in link:
            return _linked_key(link)
        if entry in link.get("held", {}).get("L", []) or link.get("held_last") == entry:
            return Holding.NOTHING_NEW
        # The link holds MAX_HELD_REPORTS others already: this one is kept as the latest, in place of the one before,
        # unless that one is final and this one is not.
        final = report.status in TERMINAL
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=upstream_link_key(report.upstream, report.upstream_message_id),
                UpdateExpression="SET held_last = :entry, held_last_final = :final, expires_at = :expires",
                # Not over itself: a repeat sent at the same moment is kept (and counted held) once.
                ConditionExpression="attribute_not_exists(message_ref) AND (attribute_not_exists(held_last)"
                " OR held_last <> :entry)"
                + ("" if final else " AND (attribute_not_exists(held_last_final) OR held_last_final = :final)"),
                ExpressionAttributeValues={
                    ":entry": entry,
                    ":final": {"BOOL": final},
                    ":expires": self._link_expiry(now),
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            link = error.response["Item"]
            # Linked meanwhile; or kept already, or an interim report after the final one kept: nothing to keep.
            return _linked_key(link) if "message_ref" in link else Holding.NOTHING_NEW
        return Holding.HELD

    def record_part_status(
        self, key: MessageKey, part: int | str, status: MessageStatus, *, now: datetime, reported_by: str | None = None
    ) -> StatusChange | None:
        """Moves one part of a multi-part message forward (never back), on a report of an upstream that carries
        it (`reported_by`); returns the message as it is now and whether this write moved the part, or None when
        there is no such message."""
        from sms_gateway.adapters.dynamodb import _key_of, message_from_item  # it imports this module

        previous = sorted(allowed_previous(status))
        values: dict[str, Any] = {
            ":status": {"S": str(status)},
            ":now": {"S": iso(now)},
            **{f":p{i}": {"S": str(state)} for i, state in enumerate(previous)},
        }
        allowed = ", ".join(f":p{i}" for i in range(len(previous)))
        condition = (
            "attribute_exists(pk) AND attribute_exists(part_status) AND "
            f"(attribute_not_exists(part_status.#part) OR part_status.#part IN ({allowed}))"
        )
        update = "SET part_status.#part = :status, updated_at = :now"
        if reported_by is not None:
            condition += f" AND {REPORTER_CARRIES_IT}"
            update += ", upstream = if_not_exists(upstream, :reporter)"
            values |= reporter_values(reported_by)
        try:
            answer = self.client.update_item(
                TableName=self.table_name,
                Key=_key_of(key),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#part": str(part)},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            current = error.response.get("Item")
            return StatusChange(message=message_from_item(self._codec, current), changed=False) if current else None
        return StatusChange(message=message_from_item(self._codec, answer["Attributes"]), changed=True)

    def mark_unannounced(self, key: MessageKey, sequence: int, *, due: datetime) -> bool:
        keys = sweep_keys(REPORT, key.message_id, due)
        return self._update_if(
            key,
            "SET announce_pending = :sequence, sweep_shard = :shard, sweep_at = :due",
            "attribute_exists(pk) AND #sequence = :sequence",
            {"#sequence": "sequence"},
            {
                ":sequence": {"N": str(sequence)},
                ":shard": {"S": keys["sweep_shard"]},
                ":due": {"N": str(keys["sweep_at"])},
            },
        )

    def clear_unannounced(self, key: MessageKey, sequence: int) -> bool:
        return self._update_if(
            key,
            f"SET announced = :sequence REMOVE announce_pending, {UNMARK}",
            "announce_pending = :sequence",
            None,
            {":sequence": {"N": str(sequence)}},
        )

    def claim_announcement(self, key: MessageKey, sequence: int) -> bool:
        return self._update_if(
            key,
            "SET announced = :sequence",
            "attribute_exists(pk) AND #sequence = :sequence"
            " AND (attribute_not_exists(announced) OR announced <> :sequence)",
            {"#sequence": "sequence"},
            {":sequence": {"N": str(sequence)}},
        )

    def claim_unannounced_reports(self, *, now: datetime, until: datetime, limit: int) -> list[Message]:
        from sms_gateway.adapters.dynamodb import message_from_item  # it imports this module

        return [
            message_from_item(self._codec, item) for item in claim_due(self, REPORT, now=now, until=until, limit=limit)
        ]

    def _update_if(
        self,
        key: MessageKey,
        update: str,
        condition: str,
        names: dict[str, str] | None,
        values: dict[str, Any],
    ) -> bool:
        """One conditional update of a message item; whether its condition held."""
        from sms_gateway.adapters.dynamodb import _key_of  # it imports this module

        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": _key_of(key),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        if names:
            request["ExpressionAttributeNames"] = names
        try:
            self.client.update_item(**request)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def note_settles_as(self, key: MessageKey, settles_as: MessageStatus, *, reported_by: str) -> Message | None:
        from sms_gateway.adapters.dynamodb import _key_of, message_from_item  # it imports this module

        try:
            answer = self.client.update_item(
                TableName=self.table_name,
                Key=_key_of(key),
                UpdateExpression="SET settles_as = :settles_as",
                ConditionExpression=f"attribute_exists(pk) AND #status = :submitted AND {REPORTER_CARRIES_IT}",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":settles_as": {"S": str(settles_as)},
                    ":submitted": {"S": str(MessageStatus.SUBMITTED)},
                    **reporter_values(reported_by),
                },
                ReturnValues="ALL_NEW",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return message_from_item(self._codec, answer["Attributes"])

    def note_error_code(
        self, key: MessageKey, status: MessageStatus, error_code: str, *, reported_by: str, absent_only: bool = False
    ) -> bool:
        values = {":code": {"S": error_code}, ":status": {"S": str(status)}, **reporter_values(reported_by)}
        kept = (
            "attribute_not_exists(error_code)"
            if absent_only
            else "(attribute_not_exists(error_code) OR error_code <> :unconfirmed)"
        )
        return self._update_if(
            key,
            "SET error_code = :code",
            f"attribute_exists(pk) AND #status = :status AND {kept} AND {REPORTER_CARRIES_IT}",
            {"#status": "status"},
            values,
        )

    def last_sent_to(self, account_id: str, msisdn: str, sender: str | None = None) -> SentMessage | None:
        """The last message the account sent to a number (from `sender`, when given: the number a reply was sent
        to) that may have reached it: of its newest-created ones in the conversation index (kept by DynamoDB), the
        one an upstream took last (domain/models.reply_order), so a message scheduled earlier but released after a
        newer one-off is the one the reply answers; ones that never left, scheduled for later or cancelled, are
        passed over. Ones from another sender are filtered out by DynamoDB (read, not returned). Bounded: at most
        _CONVERSATION_PAGES index pages and the status of _CONVERSATION_STATUS_READS candidates, read in one
        BatchGetItem. A reply threads onto a message the handset got, or onto none."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": CONVERSATION_INDEX,
            "KeyConditionExpression": "conversation = :conversation",
            "ExpressionAttributeValues": {":conversation": {"S": conversation_key(account_id, msisdn)}},
            "ScanIndexForward": False,
            "Limit": _CONVERSATION_PAGE,
        }
        if sender is not None:
            # Only numbers are indexed (an alphanumeric sender cannot be replied to); one is stored as the client
            # gave it, with or without '+'.
            bare = registry_form(sender)
            request["FilterExpression"] = "sender IN (:bare, :plus)"
            request["ExpressionAttributeValues"] |= {":bare": {"S": bare}, ":plus": {"S": f"+{bare}"}}
        candidates: list[dict[str, Any]] = []
        for _ in range(_CONVERSATION_PAGES):
            answer = self.client.query(**request)
            for item in answer.get("Items", []):
                values = self._codec.load(item)
                if sender is None or same_sender(str(values.get("sender") or ""), sender):
                    candidates.append(values)
            if len(candidates) >= _CONVERSATION_STATUS_READS or "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return self._last_that_may_have_reached_the_handset(candidates[:_CONVERSATION_STATUS_READS])

    def _last_that_may_have_reached_the_handset(self, candidates: list[dict[str, Any]]) -> SentMessage | None:
        # The index holds no status: it would take replacing the index in every deployed table to add one.
        from sms_gateway.adapters.dynamodb import _key_of, _message_key_from_item_keys

        if not candidates:
            return None
        keys = [_key_of(_message_key_from_item_keys(values["pk"], values["sk"])) for values in candidates]
        found = batch_get(self.client, self.table_name, keys, consistent=False)
        rank: dict[tuple[str, str], tuple[datetime, int]] = {}
        for item in found:
            values = self._codec.load(item)
            status_at = values.get("status_at") or {}
            if may_have_reached_the_handset(MessageStatus(values["status"]), status_at):
                message_id = _message_key_from_item_keys(values["pk"], values["sk"]).message_id
                rank[(values["pk"], values["sk"])] = reply_order(status_at, message_id)
        reached = [values for values in candidates if (values["pk"], values["sk"]) in rank]
        if not reached:
            return None
        values = max(reached, key=lambda values: rank[(values["pk"], values["sk"])])
        return SentMessage(
            key=_message_key_from_item_keys(values["pk"], values["sk"]),
            sender=values.get("sender"),
            session_id=values.get("session_id"),
            ref_id=values.get("ref_id"),
        )
