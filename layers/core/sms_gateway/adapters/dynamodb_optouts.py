"""DynamoDB opt-out items (pk=OPTOUT#<account_id>, sk=<sender>#<e164>), counted on the account item."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sms_gateway.adapters.dynamodb_batch import batch_get
from sms_gateway.adapters.dynamodb_transactions import transact_until_decided
from sms_gateway.domain.optouts import ALL_SENDERS, OptOut, sender_key
from sms_gateway.domain.senders import registry_form
from sms_gateway.errors import Conflict, NotFound, Unavailable

# Reading the account's whole opt-out partition (about 150 bytes an item: a few thousand fit in one 1 MB page)
# beats 2 keys per recipient when the account has few opt-outs for the send's size; up to this many items.
PARTITION_READ_LIMIT = 5000
PARTITION_ITEMS_PER_RECIPIENT = 25


def optout_pk(account_id: str) -> str:
    return f"OPTOUT#{account_id}"


def optout_sk(sender: str, msisdn: str) -> str:
    return f"{sender_key(sender)}#{msisdn}"


# A transaction holds at most 100 writes: the copies of a carried-over sender's opt-outs, the counter's change and
# the check that the sender is still released by the account they come from.
COPIES_PER_TRANSACTION = 98


def released_sender_key(sender: str) -> dict[str, Any]:
    """The record of the account that released a sender, present while no account holds it: its opt-outs of the
    sender go to the account given it next."""
    return {"pk": {"S": f"SENDER#{registry_form(sender)}"}, "sk": {"S": "RELEASED"}}


def names_releaser(released_by: str) -> dict[str, Any]:
    """The condition that a sender's release record still names the account that released it."""
    return {
        "ConditionExpression": "account_id = :released_by",
        "ExpressionAttributeValues": {":released_by": {"S": released_by}},
    }


def still_released_check(table_name: str, sender: str, released_by: str) -> dict[str, Any]:
    """A transaction's check that `sender` is still released by `released_by`: no account was given it since."""
    return {
        "ConditionCheck": {"TableName": table_name, "Key": released_sender_key(sender), **names_releaser(released_by)}
    }


def unreleased_check(table_name: str, sender: str) -> dict[str, Any]:
    """A transaction's check that `sender` has no release record: no account released it to be carried over."""
    return {
        "ConditionCheck": {
            "TableName": table_name,
            "Key": released_sender_key(sender),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def sender_released_by(client: Any, table_name: str, sender: str) -> str | None:
    """The account that released `sender`, read consistently; None while an account holds it or none released it."""
    found = client.get_item(TableName=table_name, Key=released_sender_key(sender), ConsistentRead=True)
    return found["Item"]["account_id"]["S"] if "Item" in found else None


def _account_key(account_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": "ACCOUNT"}}


def count_change(table_name: str, account_id: str, delta: int) -> dict[str, Any]:
    """The change of the account's opt-out counter, in the transaction that writes or deletes its opt-outs."""
    return {
        "Update": {
            "TableName": table_name,
            "Key": _account_key(account_id),
            "UpdateExpression": "ADD opt_outs :delta",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":delta": {"N": str(delta)}},
        }
    }


def carry_over_opt_outs(
    client: Any, table_name: str, released_by: str, account_id: str, sender: str, *, still_released: dict[str, Any]
) -> int:
    """Copies the opt-outs `released_by` holds for `sender` (not its STOPALLs: those are the account's) to
    `account_id`, which is being given the sender. Each copy is a conditional put, counted on the account in the
    same transaction, so a number the account has already is neither written nor counted twice, and a copy cut short
    is finished by running it again. Every transaction also holds `still_released` (a ConditionCheck that the
    sender's release record still names `released_by`): once another add-sender has given the sender away, a copy
    made now could bring back an opt-out its new owner has since taken back (a START to it), so nothing more is
    copied and the answer is Conflict. Returns how many opt-outs `released_by` had for the sender: all are now
    `account_id`'s. NotFound when there is no account `account_id`."""
    query: dict[str, Any] = {
        "TableName": table_name,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :sender)",
        "ExpressionAttributeValues": {
            ":pk": {"S": optout_pk(released_by)},
            ":sender": {"S": f"{sender_key(sender)}#"},
        },
        "ConsistentRead": True,
    }
    carried = 0
    while True:
        answer = client.query(**query)
        items = answer.get("Items", [])
        for start in range(0, len(items), COPIES_PER_TRANSACTION):
            chunk = items[start : start + COPIES_PER_TRANSACTION]
            if not _copy_opt_outs(client, table_name, account_id, chunk, still_released):
                raise Conflict(
                    f"sender {sender!r} was taken meanwhile: another add-sender registered it while this one copied "
                    f"account {released_by}'s opt-outs of it; nothing more copied"
                )
        carried += len(items)
        if "LastEvaluatedKey" not in answer:
            return carried
        query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def _copy_opt_outs(
    client: Any, table_name: str, account_id: str, items: list[dict[str, Any]], still_released: dict[str, Any]
) -> bool:
    """Copies `items` to `account_id`, each transaction with `still_released`; False when that check failed (the
    transaction it refused copied nothing)."""
    # The copy names where it came from; the inbound SMS that asked is in the other account's inbox, not this one's.
    copies = [
        {
            **{name: value for name, value in item.items() if name != "inbound_id"},
            "pk": {"S": optout_pk(account_id)},
            "account_id": {"S": account_id},
            "carried_over_from": item["account_id"],
        }
        for item in items
    ]
    while copies:
        *refused, account_refused, release_changed = transact_until_decided(
            client,
            [
                *(
                    {"Put": {"TableName": table_name, "Item": copy, "ConditionExpression": "attribute_not_exists(pk)"}}
                    for copy in copies
                ),
                count_change(table_name, account_id, len(copies)),
                still_released,
            ],
        )
        if release_changed:
            return False
        if account_refused:
            raise NotFound(f"no account {account_id}")
        if not any(refused):
            return True
        # The account has those numbers' opt-outs of the sender already: the others are copied and counted alone.
        copies = [copy for copy, taken in zip(copies, refused, strict=True) if not taken]
    return True  # every number's opt-out was the account's already


class DynamoOptOutsMixin:
    """Implements ports.OptOutStore; mixed into DynamoStore, so `client`, `table_name` and `_codec` are its."""

    client: Any
    table_name: str
    _codec: Any

    def _count_change(self, account_id: str, delta: int) -> dict[str, Any]:
        return count_change(self.table_name, account_id, delta)

    def sender_released_by(self, sender: str) -> str | None:
        return sender_released_by(self.client, self.table_name, sender)

    def _while_released(self, sender: str | None, account_id: str, while_released: bool) -> list[dict[str, Any]]:
        """The check, for an opt-out change of a sender nobody holds, that `account_id` still is the one that released
        it: once an account is given it (add-sender copied what there was), the change would reach nobody."""
        return [still_released_check(self.table_name, sender, account_id)] if while_released and sender else []

    def _sender_taken(self, sender: str, account_id: str) -> Unavailable:
        # Answered as a failure the caller retries (an upstream's callback): the retry finds the sender's new owner.
        return Unavailable(f"sender {sender!r} is no longer released by account {account_id}: given to an account")

    def opt_out(self, opt_out: OptOut, *, while_released: bool = False) -> bool:
        item = {
            "pk": optout_pk(opt_out.account_id),
            "sk": optout_sk(opt_out.sender, opt_out.msisdn),
            **opt_out.model_dump(mode="json"),
            "sender": sender_key(opt_out.sender),
        }
        # The item and the account's counter change together, so the counter is exact: a send trusts its zero.
        # A conflict with another write of the account item (a send's or a refund's credits) is tried again: only
        # the account's own condition says there is no account.
        item_refused, account_refused, *taken = transact_until_decided(
            self.client,
            [
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": self._codec.dump(item),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                self._count_change(opt_out.account_id, 1),
                *self._while_released(opt_out.sender, opt_out.account_id, while_released),
            ],
        )
        if any(taken):
            raise self._sender_taken(opt_out.sender, opt_out.account_id)
        if item_refused:
            return False  # opted out already: the first STOP's record stays
        if account_refused:
            raise NotFound(f"no account {opt_out.account_id}")
        return True

    def opt_in(
        self,
        account_id: str,
        msisdn: str,
        sender: str | None,
        *,
        only: Collection[str] | None = None,
        while_released: bool = False,
    ) -> int:
        if sender is None:
            sks = [
                optout_sk(found.sender, msisdn) for found in self.list_opt_outs(account_id) if found.msisdn == msisdn
            ]
        else:
            sks = [optout_sk(key, msisdn) for key in (sender, ALL_SENDERS) if only is None or key in only]
        released = sender if while_released else None
        return sum(self._remove(account_id, sk, released) for sk in dict.fromkeys(sks))

    def _remove(self, account_id: str, sk: str, released: str | None = None) -> bool:
        """`released`: a sender nobody holds, whose opt-out is removed only while `account_id` released it last."""
        # One transaction per item: it is uncounted only if this call is the one that deleted it.
        item_refused, account_refused, *failed_checks = transact_until_decided(
            self.client,
            [
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": {"pk": {"S": optout_pk(account_id)}, "sk": {"S": sk}},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
                self._count_change(account_id, -1),
                *self._while_released(released, account_id, released is not None),
            ],
        )
        if released is not None and any(failed_checks):
            raise self._sender_taken(released, account_id)
        if item_refused:
            return False
        if account_refused:
            raise NotFound(f"no account {account_id}")
        return True

    def opted_out(
        self, account_id: str, sender: str, msisdns: Sequence[str], *, known_count: int | None = None
    ) -> dict[str, OptOut]:
        numbers = list(dict.fromkeys(msisdns))
        if not numbers:
            return {}
        senders = (sender_key(sender), ALL_SENDERS)
        if known_count is not None and known_count <= min(
            PARTITION_READ_LIMIT, PARTITION_ITEMS_PER_RECIPIENT * len(numbers)
        ):
            wanted = set(numbers)
            found = [o for o in self._query_opt_outs(account_id, senders) if o.msisdn in wanted]
        else:
            found = self._get_opt_outs(account_id, [optout_sk(s, n) for n in numbers for s in senders])
        by_number: dict[str, OptOut] = {}
        for opt_out in found:
            # The sender's own opt-out names the STOP the number sent to it; a STOPALL only when there is none.
            if opt_out.msisdn not in by_number or opt_out.sender != ALL_SENDERS:
                by_number[opt_out.msisdn] = opt_out
        return by_number

    def _get_opt_outs(self, account_id: str, sks: list[str]) -> list[OptOut]:
        keys = [{"pk": {"S": optout_pk(account_id)}, "sk": {"S": sk}} for sk in sks]
        # Consistent: a STOP that arrived a moment ago must already refuse the next send.
        items = batch_get(self.client, self.table_name, keys, consistent=True)
        return [OptOut.model_validate(self._codec.load(item)) for item in items]

    def _query_opt_outs(self, account_id: str, senders: Sequence[str] | None = None) -> list[OptOut]:
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": optout_pk(account_id)}},
            "ConsistentRead": True,
        }
        if senders is not None:
            names = {f":s{i}": {"S": s} for i, s in enumerate(senders)}
            query["FilterExpression"] = f"#sender IN ({', '.join(names)})"
            query["ExpressionAttributeNames"] = {"#sender": "sender"}
            query["ExpressionAttributeValues"].update(names)
        found: list[OptOut] = []
        while True:
            answer = self.client.query(**query)
            found.extend(OptOut.model_validate(self._codec.load(item)) for item in answer.get("Items", []))
            last = answer.get("LastEvaluatedKey")
            if not last:
                return found
            query["ExclusiveStartKey"] = last

    def list_opt_outs(self, account_id: str) -> list[OptOut]:
        return self._query_opt_outs(account_id)
