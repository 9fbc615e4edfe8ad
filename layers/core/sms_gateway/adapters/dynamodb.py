"""DynamoDB adapter: accounts, credentials, batches and messages in one table (pk/sk, one GSI).

Item layout (see docs/data-model.md):
  account     pk=ACC#<account_id>                 sk=ACCOUNT
  credential  pk=CRED#<kind>#<sha256 of secret>   sk=CRED          -> account_id
  login       pk=LOGIN#<username>                 sk=LOGIN         -> account_id, scrypt hash, password epoch
  sender      pk=SENDER#<sender id or number>     sk=SENDER        -> account_id (one owner per sender)
  inbound     pk=INBOX#<account_id>               sk=IN#<inbound_id>  (and its dedup marker: dynamodb_inbox.py)
  batch       pk=ACC#<account_id>                 sk=BATCH#<reference_id>
  message     pk=MSGS#<account_id>#<reference_id> sk=MSG#<message_id>   (GSI conversation-index on conversation)
  (upstream links, held DLRs and the conversation index: adapters/dynamodb_delivery.py)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sms_gateway.adapters import aws
from sms_gateway.adapters.cursors import decode_cursor, encode_cursor, id_sort_key, read_page
from sms_gateway.adapters.dynamodb_admin import (
    OPERATOR_MADE,
    DynamoAccountAdmin,
    account_key,
    credential_listing_item,
    failed_items,
    login_listing_item,
)
from sms_gateway.adapters.dynamodb_batch import batch_get
from sms_gateway.adapters.dynamodb_delivery import (
    REPORTER_CARRIES_IT,
    DynamoDeliveryMixin,
    conversation_key,
    reporter_values,
)
from sms_gateway.adapters.dynamodb_groups import DynamoGroupStore
from sms_gateway.adapters.dynamodb_history import DynamoHistoryMixin, goes_out_sk
from sms_gateway.adapters.dynamodb_inbox import DynamoInboxMixin
from sms_gateway.adapters.dynamodb_notifications import DynamoNotificationsMixin
from sms_gateway.adapters.dynamodb_optouts import DynamoOptOutsMixin, unreleased_check
from sms_gateway.adapters.dynamodb_partitions import account_pk
from sms_gateway.adapters.dynamodb_ratelimit import DynamoRateLimitMixin
from sms_gateway.adapters.dynamodb_routes import DynamoRouteStore
from sms_gateway.adapters.dynamodb_sender_requests import DynamoSenderRequestsMixin
from sms_gateway.adapters.dynamodb_sessions import DynamoSessionsMixin, source_seen_at
from sms_gateway.adapters.dynamodb_sweep import QUEUED, UNMARK, sweep_keys
from sms_gateway.adapters.dynamodb_transactions import (
    MAX_TRANSACTION_ATTEMPTS,
    NOT_REFUSED,
    THROTTLED,
    TransactionUndecided,
    not_done,
    transact,
    transact_until_decided,
    try_again_after,
)
from sms_gateway.adapters.dynamodb_unreleased import DynamoUnreleasedBatchesMixin, unreleased_sweep_keys
from sms_gateway.domain.ids import MESSAGES_PER_BATCH, batch_ids_around
from sms_gateway.domain.models import (
    FINGERPRINT_VERSION,
    Account,
    Batch,
    Claim,
    ClaimOutcome,
    CredentialKind,
    Credentials,
    KeyClaim,
    Message,
    MessageKey,
    SenderRegistration,
    StatusChange,
    StoredAnswer,
    goes_out_at,
    iso,
    unqueued_release_sweep_due,
    utc_now,
)
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.senders import registry_form
from sms_gateway.domain.status import TERMINAL, MessageStatus, allowed_previous
from sms_gateway.errors import Conflict, InsufficientCredits, KeyInProgress, KeyReused, NotFound
from sms_gateway.ports import PasswordLogin, TopUpOutcome

MESSAGE_INDEX = "message-index"
IDEMPOTENCY_WINDOW = timedelta(hours=24)
# How long a dispatch record's failure count is kept (the dispatch queue keeps a record 4 days).
RECORD_FAILURES_KEPT = timedelta(days=7)
BATCH_WRITE_SIZE = 25
BATCH_GET_SIZE = 100
# How long a top-up's request id is kept: the same top-up run again within it adds nothing (docs/operators.md).
TOP_UP_WINDOW = timedelta(minutes=10)
_TOP_UP_PREFIX = "TOPUP#"
_TOP_UP_SK = "TOPUP"
# Messages store_and_charge writes with their batch's cost and the account's credits: a transaction takes 100 items.
_MESSAGES_PER_CHARGED_WRITE = 98
# What the message items of one transaction may add up to, each measured as sent (_item_bytes). DynamoDB refuses whole
# a transaction whose items are over 4 MB (4,194,304 bytes): "The aggregate size of the items in the transaction
# cannot exceed 4 MB" (API reference, TransactWriteItems; developer guide, "Amazon DynamoDB Transactions: How it
# works"). The items, not the request: TransactGetItems' limit is the same sentence, for requests that carry only
# keys, so an Update (a move and refund: a request of a few hundred bytes) counts the whole message item it changes,
# as stored. Some emulators count only an Update's key; the documents do not, and a cut too many costs a request
# where one too few fails the write every time. The rest (about 190 KB) is for the other items of the transaction
# (the batch, the account) and what an Update adds to each message. A message of 255 parts in a script of 3 bytes a
# character (Amharic, Devanagari, CJK) is about 52 KB: 98 of them were 5 MB, a transaction DynamoDB refused whole.
_TRANSACTION_ITEM_BYTES = 4_000_000
# DynamoDB refuses any request whose partition key value is longer (in UTF-8).
MAX_PARTITION_KEY_BYTES = 2048
_MAX_UNPROCESSED_ROUNDS = 8
_MAX_FILTER_ROUNDS = 10
# A status filter runs in DynamoDB after a batch's messages are read: each round reads at least this many, so the
# rounds a page may take read past the end of any batch (1000 messages) and a filtered page comes back short only
# at the batch's end, never empty with a cursor to follow (page_size + 1 a round read 20 of a batch of 30 at size 1).
_FILTER_READ_SIZE = MESSAGES_PER_BATCH // _MAX_FILTER_ROUNDS + 1
# Messages moved and refunded in one TransactWriteItems (its limit is 100 items; one more is the account's).
REFUND_CHUNK = 99

# scrypt parameters (RFC 7914 interactive setting); cost is paid once per /login, not per send.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_secret(secret: str) -> str:
    """API secrets are long random strings: a plain SHA-256 is enough to store them irreversibly."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


@functools.cache
def _hash_of_no_password() -> str:
    """What an unknown username's password is checked against: made once, so that check costs one derivation, as a
    wrong password for a real username does."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)).hex()
    except ValueError:
        return False
    return hmac.compare_digest(candidate, digest)


def batch_sk(reference_id: int) -> str:
    return f"BATCH#{reference_id:019d}"


def messages_pk(account_id: str, reference_id: int) -> str:
    return f"MSGS#{account_id}#{reference_id}"


def message_sk(message_id: int) -> str:
    return f"MSG#{message_id:019d}"


MESSAGE_SK = id_sort_key("MSG#")


def sender_pk(sender: str) -> str:
    # Numbers arrive with or without '+': one form, so an inbound SMS finds the account either way.
    return f"SENDER#{registry_form(sender)}"


def _key_of(key: MessageKey) -> dict[str, Any]:
    return {
        "pk": {"S": messages_pk(key.account_id, key.reference_id)},
        "sk": {"S": message_sk(key.message_id)},
    }


def _transition_update(
    key: MessageKey,
    target: MessageStatus,
    *,
    now: datetime,
    upstream: str | None = None,
    upstream_message_id: str | None = None,
    error_code: str | None = None,
    reported_at: str | None = None,
    unclaimed_only: bool = False,
    unheld_only: bool = False,
    reported_by: str | None = None,
    settles_as: MessageStatus | None = None,
    if_settles_as: MessageStatus | None = None,
    unless_settles_as: MessageStatus | None = None,
) -> dict[str, Any]:
    """The conditional write that moves a message to `target` (UpdateItem's, or a transaction's Update): only
    from a state allowed to move there; `unclaimed_only`: only a message no dispatcher ever claimed; `unheld_only`:
    only a queued message no dispatcher holds and no upstream may have;
    `reported_by`: only when that upstream carries the message (REPORTER_CARRIES_IT); `settles_as`: written with the
    move; `if_settles_as`: only a message whose settles_as is that; `unless_settles_as`: only one whose settles_as is
    not that (none, or another)."""
    previous = sorted(allowed_previous(target))
    if not previous:
        raise ValueError(f"no status can move to {target}")
    names = {"#status": "status", "#target": str(target), "#sequence": "sequence"}
    values: dict[str, Any] = {
        ":target": {"S": str(target)},
        ":now": {"S": iso(now)},
        ":one": {"N": "1"},
        **{f":p{i}": {"S": str(status)} for i, status in enumerate(previous)},
    }
    previous_names = ", ".join(f":p{i}" for i in range(len(previous)))
    sets = [
        "#status = :target",
        "status_at.#target = :now",
        "updated_at = :now",
        "#sequence = #sequence + :one",
    ]
    if upstream:
        # The first upstream wins: a DLR must not relabel a message another upstream accepted. Named without an id
        # too (a submit left unconfirmed), so that upstream's reports by our reference are known to be its own.
        sets.append("upstream = if_not_exists(upstream, :upstream)")
        values[":upstream"] = {"S": upstream}
        if upstream_message_id:
            sets.append("upstream_message_id = if_not_exists(upstream_message_id, :upstream_id)")
            values[":upstream_id"] = {"S": upstream_message_id}
    removes = ["claim_until", "claim_upstream", "claim_id"]
    # Each change says its own error code and handset time, or has none: a delivered report after an unconfirmed
    # submit must not carry `submit_unconfirmed`, nor an expiry the gateway made an interim report's time.
    for name, value in (("error_code", error_code), ("reported_at", reported_at)):
        if value is None:
            removes.append(name)
        else:
            sets.append(f"{name} = :{name}")
            values[f":{name}"] = {"S": value}
    if settles_as is not None:
        sets.append("settles_as = :settles_as")
        values[":settles_as"] = {"S": str(settles_as)}
    elif target in TERMINAL and if_settles_as is None:
        # A final report (or an expiry) makes an interim report's word moot, and goes: only the settle check's
        # delivery on that word keeps it, so that the check tells the change it made, which it may have to announce
        # again, from a report's (logic/settle._accepted_and_unannounced).
        removes.append("settles_as")
    condition = f"attribute_exists(pk) AND #status IN ({previous_names})"
    if if_settles_as is not None:
        condition += " AND settles_as = :if_settles_as"
        values[":if_settles_as"] = {"S": str(if_settles_as)}
    if unless_settles_as is not None:
        condition += " AND (attribute_not_exists(settles_as) OR settles_as <> :unless_settles_as)"
        values[":unless_settles_as"] = {"S": str(unless_settles_as)}
    if unclaimed_only:
        # Never claimed, not merely unclaimed now: a dispatcher drops its claim when it records the submit, or after
        # a submit that got no answer, and such a message went (or may have gone) out. Every claim adds to
        # dispatch_attempts.
        condition += " AND attribute_not_exists(claim_until) AND attribute_not_exists(dispatch_attempts)"
    if unheld_only:
        # Claimed before maybe, but queued again: handed back after a failure or a throttle, with no claim (a live
        # one's holder is submitting it, a lapsed one's may have) and no upstream that may have it (a submit that got
        # no answer). A message submitted is no longer queued.
        condition += (
            " AND #status = :unheld AND attribute_not_exists(claim_until) AND attribute_not_exists(maybe_taken_by)"
        )
        values[":unheld"] = {"S": str(MessageStatus.QUEUED)}
    if reported_by is not None:
        condition += f" AND {REPORTER_CARRIES_IT}"
        values |= reporter_values(reported_by)
    return {
        "Key": _key_of(key),
        "UpdateExpression": f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
        "ConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def _batch_key(account_id: str, reference_id: int) -> dict[str, Any]:
    return {"pk": {"S": account_pk(account_id)}, "sk": {"S": batch_sk(reference_id)}}


def _short_of_credits(amount: int) -> InsufficientCredits:
    return InsufficientCredits(f"this send costs {amount} credits, more than the balance")


def _batch_exists(batch: Batch) -> Conflict:
    return Conflict(f"batch {batch.reference_id} exists already")


def _holds(item: dict[str, Any], claim_id: str | None) -> bool:
    """The message item (as a refused write found it) is queued under the lease `claim_id` names."""
    return (
        claim_id is not None
        and item.get("claim_id", {}).get("S") == claim_id
        and item.get("status", {}).get("S") == MessageStatus.QUEUED
    )


def _message_key_from_item_keys(pk: str, sk: str) -> MessageKey:
    _, account_id, reference_id = pk.split("#", 2)
    return MessageKey(account_id=account_id, reference_id=int(reference_id), message_id=int(sk.split("#", 1)[1]))


def message_from_item(codec: Any, item: dict[str, Any]) -> Message:
    """A message item as the domain's Message. An item with no `conversation` entry carries no `message_id`
    attribute (the key of both indexes, so neither writes for it): its id is in its keys."""
    loaded = codec.load(item)
    if "message_id" not in loaded:
        loaded["message_id"] = _message_key_from_item_keys(loaded["pk"], loaded["sk"]).message_id
    return Message.model_validate(loaded)


class _Codec:
    """Plain Python values <-> DynamoDB attribute values (numbers come back as int, never Decimal)."""

    def __init__(self) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self._serializer = TypeSerializer()
        self._deserializer = TypeDeserializer()

    def dump(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: self._serializer.serialize(v) for k, v in values.items() if v is not None}

    def load(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: _plain(self._deserializer.deserialize(v)) for k, v in item.items()}


_Part = TypeVar("_Part")


def _item_bytes(item: dict[str, Any]) -> int:
    """An item's size as sent (the JSON of its typed attributes): never less than DynamoDB counts of it, its
    attribute names and values."""
    return len(json.dumps(item, ensure_ascii=False).encode())


def _transaction_parts(things: Sequence[_Part], sizes: Sequence[int], *, most: int) -> list[list[_Part]]:
    """`things` (each with its item's size, aligned) in the parts a transaction each writes: in order, each of at
    most `most` that add up to at most _TRANSACTION_ITEM_BYTES (one message's item is far below it: its text is at
    most 255 parts)."""
    parts: list[list[_Part]] = []
    total = 0
    for thing, size in zip(things, sizes, strict=True):
        if not parts or len(parts[-1]) == most or total + size > _TRANSACTION_ITEM_BYTES:
            parts.append([])
            total = 0
        parts[-1].append(thing)
        total += size
    return parts


def _charged_parts(items: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The messages' `items` in the parts store_and_charge writes a transaction each."""
    return _transaction_parts(items, [_item_bytes(item) for item in items], most=_MESSAGES_PER_CHARGED_WRITE)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(v) for v in value]
    return value


class DynamoStore(
    DynamoDeliveryMixin,
    DynamoAccountAdmin,
    DynamoGroupStore,
    DynamoSessionsMixin,
    DynamoSenderRequestsMixin,
    DynamoRateLimitMixin,
    DynamoRouteStore,
    DynamoOptOutsMixin,
    DynamoInboxMixin,
    DynamoNotificationsMixin,
    DynamoHistoryMixin,
    DynamoUnreleasedBatchesMixin,
):
    """Implements AccountStore and MessageStore over one table."""

    def __init__(
        self, table_name: str, *, client: Any | None = None, retention_days: int = 180, prompt: bool = False
    ) -> None:
        self.table_name = table_name
        self._client = client
        # aws.client's `prompt` client: gives up within seconds when DynamoDB does not answer or throttles.
        self._prompt = prompt
        self._retention = timedelta(days=retention_days)
        self._codec = _Codec()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("dynamodb", prompt=self._prompt)
        return self._client

    # ---------------------------------------------------------------- accounts and credentials

    def create_account(self, account: Account, credentials: Credentials) -> None:
        account_item = {
            "pk": account_pk(account.account_id),
            "sk": "ACCOUNT",
            **account.model_dump(mode="json"),
        }
        items: list[dict[str, Any]] = [account_item]
        for kind, secret in (
            (CredentialKind.TOKEN, credentials.token),
            (CredentialKind.APIKEY, credentials.apikey),
        ):
            items.append(
                {
                    "pk": f"CRED#{kind}#{hash_secret(secret)}",
                    "sk": "CRED",
                    "account_id": account.account_id,
                    "kind": str(kind),
                    "prefix": secret[:8],
                    **OPERATOR_MADE,
                }
            )
            # The account-side pointer lets an operator list and revoke it later (adapters/dynamodb_admin.py).
            items.append(
                credential_listing_item(account.account_id, str(kind), secret, account.created_at, origin=OPERATOR_MADE)
            )
        for sender in account.senders:
            items.append({"pk": sender_pk(sender), "sk": "SENDER", "account_id": account.account_id})
        items.append(
            {
                "pk": f"LOGIN#{credentials.username}",
                "sk": "LOGIN",
                "account_id": account.account_id,
                "password_hash": hash_password(credentials.password),
            }
        )
        items.append(login_listing_item(account.account_id, credentials.username))
        # One transaction: an account never exists without its credentials; a taken name or sender fails whole.
        # A sender another account released is refused too: its opt-outs can go only to an account that exists
        # (add-sender carries them over).
        try:
            self._put_all_new(items, unreleased=account.senders)
        except self.client.exceptions.TransactionCanceledException as error:
            failed = failed_items(error)
            released = [sender for sender, held in zip(account.senders, failed[len(items) :], strict=False) if held]
            raise self._account_refused(
                items, failed, account.senders, credentials.username, released=released
            ) from error

    def _account_refused(
        self,
        items: list[dict[str, Any]],
        failed: list[bool],
        senders: Sequence[str],
        username: str,
        *,
        released: Sequence[str] = (),
    ) -> Conflict:
        """Names what a new account asked for that another holds: each taken sender with its owner (as add-sender
        does), or the username (not whose it is: no operator command shows an account's username), and each sender
        another account released, whose opt-outs only add-sender carries over."""
        refused = {item["pk"] for item, taken in zip(items, failed, strict=False) if taken}
        reasons = [str(self.sender_taken(sender)) for sender in senders if sender_pk(sender) in refused]
        reasons += [
            f"sender {sender!r} was released by another account: create the account without it, then add-sender it "
            "(the numbers that opted out of it there stay opted out)"
            for sender in released
        ]
        if f"LOGIN#{username}" in refused:
            reasons.append(f"username {username!r} is taken by another account")
        return Conflict("; ".join(reasons) or "the username or one of the sender ids is taken by another account")

    def _put_all_new(self, items: list[dict[str, Any]], *, unreleased: Sequence[str] = ()) -> None:
        """Puts the items, each only where none is; and only while none of the `unreleased` senders has a release
        record (checks after the puts, in that order)."""
        self.client.transact_write_items(
            TransactItems=[
                *(
                    {
                        "Put": {
                            "TableName": self.table_name,
                            "Item": self._codec.dump(item),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                    for item in items
                ),
                *(unreleased_check(self.table_name, sender) for sender in unreleased),
            ]
        )

    def get_account(self, account_id: str, *, consistent: bool = False) -> Account | None:
        """`consistent`: a strongly consistent read, for an answer that shows what this request just changed."""
        found = self.client.get_item(
            TableName=self.table_name, Key=account_key(account_id), ConsistentRead=consistent
        ).get("Item")
        return Account.model_validate(self._codec.load(found)) if found else None

    def account_id_for_credential(self, kind: str, secret: str) -> str | None:
        found = self.client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": f"CRED#{kind}#{hash_secret(secret)}"}, "sk": {"S": "CRED"}},
            # Strongly consistent (1 read unit, not 0.5): a replica that has not seen a revocation yet would let the
            # revoked credential send, and charge, on the requests right after it (docs/operators.md).
            ConsistentRead=True,
        ).get("Item")
        if not found or found.get("revoked", {}).get("BOOL"):
            return None
        return str(found["account_id"]["S"])

    def password_login(self, username: str, password: str, *, source: str | None = None) -> PasswordLogin | None:
        key = f"LOGIN#{username}"
        # DynamoDB refuses a read by a partition key over its limit (a ValidationException, a 500): no account
        # has such a username, so it is an unknown one, checked in the same time.
        found = (
            self.client.get_item(
                TableName=self.table_name,
                Key={"pk": {"S": key}, "sk": {"S": "LOGIN"}},
                # Strongly consistent: a replica that has not seen a password reset yet would let the old password
                # in. A login is rare next to sends (a session lasts 24 hours): 1 read unit instead of 0.5.
                ConsistentRead=True,
            ).get("Item")
            if len(key.encode()) <= MAX_PARTITION_KEY_BYTES
            else None
        )
        if not found:
            # Spend the same time as a wrong password so the answer does not reveal which usernames exist.
            verify_password(password, _hash_of_no_password())
            return None
        if not verify_password(password, found["password_hash"]["S"]):
            return None
        # The epoch comes from the item the hash came from: a login that checked the old password carries the old
        # epoch, however late it ends, and its session is refused once the reset is written.
        return PasswordLogin(
            account_id=str(found["account_id"]["S"]),
            password_epoch=found.get("password_epoch", {}).get("S", ""),
            source_seen_at=source_seen_at(found, source) if source is not None else None,
        )

    def account_id_for_sender(self, sender: str) -> str | None:
        registration = self.sender_registration(sender)
        return registration.account_id if registration is not None else None

    def sender_registration(self, sender: str) -> SenderRegistration | None:
        found = self.client.get_item(
            TableName=self.table_name, Key={"pk": {"S": sender_pk(sender)}, "sk": {"S": "SENDER"}}
        ).get("Item")
        return SenderRegistration.model_validate(self._codec.load(found)) if found else None

    # reserve_credits, refund_credits and create_batch are no port's any more (a send writes its batch and credits
    # together, create_batch_and_reserve, since 2026-12-05): kept for the tests that set up batches and balances,
    # and that hold the credit writes' transaction token to its promise.
    def reserve_credits(self, account_id: str, amount: int) -> None:
        if self._move_credits(self._reserve_update(account_id, amount)):
            raise _short_of_credits(amount)

    def _reserve_update(self, account_id: str, amount: int) -> dict[str, Any]:
        return {
            "TableName": self.table_name,
            "Key": account_key(account_id),
            "UpdateExpression": "SET credits = credits - :amount",
            "ConditionExpression": "attribute_exists(pk) AND credits >= :amount",
            "ExpressionAttributeValues": {":amount": {"N": str(amount)}},
        }

    def refund_credits(self, account_id: str, amount: int) -> None:
        if self._move_credits(self._credits_update(account_id, amount)):
            raise RuntimeError(f"account {account_id} is gone: {amount} credits could not be given back")

    def top_up(self, account_id: str, credits: int, *, request_id: str | None = None) -> TopUpOutcome:
        """Adds the credits with, under a `request_id`, a record of the top-up (`TOPUP#<request_id>`, kept
        TOP_UP_WINDOW) in the same transaction, conditional on none being there: the same top-up run again within
        the window finds it, adds nothing and answers when it was applied; another top-up under the id is refused
        (Conflict). Each try is a
        transaction under a token of its own: one a conflicting write cancelled is not the next one's answer
        (DynamoDB may answer a cancelled transaction's token with its cancellation for 10 minutes)."""
        writes: list[dict[str, Any]] = [{"Update": self._credits_update(account_id, credits)}]
        if request_id is not None:
            writes.append({"Put": self._top_up_record(account_id, credits, request_id)})
        try:
            account_refused, *recorded = transact_until_decided(self.client, writes)
        except TransactionUndecided as error:
            # Sends write the account's credits all the time: past the attempts an operator is told to run it again.
            raise not_done(f"adding {credits} credits to account {account_id}", error) from error
        if recorded and recorded[0]:
            earlier = self._codec.load(recorded[0].get("Item") or {})
            if (earlier.get("account_id"), earlier.get("credits")) != (account_id, credits):
                raise Conflict(
                    f"request id {request_id!r} was used for another top-up in the last "
                    f"{TOP_UP_WINDOW.seconds // 60} minutes: nothing was added"
                )
            # Done before, by a run whose answer was lost or that the operator repeats: its record expires
            # TOP_UP_WINDOW after it was applied.
            applied_at = datetime.fromtimestamp(int(earlier["expires_at"]), UTC) - TOP_UP_WINDOW
            return TopUpOutcome(already_applied=True, applied_at=applied_at)
        if account_refused:
            raise NotFound(f"no account {account_id}")
        return TopUpOutcome()

    def _top_up_record(self, account_id: str, credits: int, request_id: str) -> dict[str, Any]:
        now = int(utc_now().timestamp())
        return {
            "TableName": self.table_name,
            "Item": {
                "pk": {"S": f"{_TOP_UP_PREFIX}{request_id}"},
                "sk": {"S": _TOP_UP_SK},
                "account_id": {"S": account_id},
                "credits": {"N": str(credits)},
                "expires_at": {"N": str(now + int(TOP_UP_WINDOW.total_seconds()))},
            },
            # One past its window is another top-up's to take (TTL deletes it up to days later).
            "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now",
            "ExpressionAttributeValues": {":now": {"N": str(now)}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _credits_update(self, account_id: str, amount: int) -> dict[str, Any]:
        return {
            "TableName": self.table_name,
            "Key": account_key(account_id),
            "UpdateExpression": "SET credits = credits + :amount",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":amount": {"N": str(amount)}},
        }

    def _move_credits(self, update: dict[str, Any]) -> bool:
        """Writes an account's credits as a transaction of one item, so that the write carries a token: when its
        answer is lost botocore sends the same request again, and DynamoDB applies a transaction it receives twice
        under one token once, where it would apply an UpdateItem twice. Tried again while another transaction holds
        the item. True when the update's condition refused it. The transaction answers nothing: a caller that needs
        the balance after reads it (`balance`); a send reads it only for a dialect that answers with it."""
        (refused,) = transact_until_decided(self.client, [{"Update": update}])
        return refused is not None

    # ---------------------------------------------------------------- batches and messages

    def _expires_at(self, batch: Batch) -> int:
        """The TTL of a batch's items (the batch, its messages): the retention period after it goes out, so a batch
        scheduled ahead keeps its records until it is sent and for the whole period after (counted from its
        creation, a batch scheduled further ahead than the retention was deleted before its schedule released it:
        charged, never sent, never refunded)."""
        goes_out = goes_out_at(created_at=batch.created_at, send_at=batch.send_at)
        return int((goes_out + self._retention).timestamp())

    def create_batch(self, batch: Batch, messages: Sequence[Message]) -> None:
        try:
            self.client.put_item(**self._new_batch_put(batch))
        except self.client.exceptions.ConditionalCheckFailedException as error:
            raise _batch_exists(batch) from error
        for entry in self._goes_out_puts(batch):
            self.client.put_item(**entry)
        self.add_messages(batch, messages)

    def _goes_out_puts(self, batch: Batch) -> list[dict[str, Any]]:
        """A scheduled batch's entry by when it goes out (dynamodb_history.py), written with the batch and expiring
        with it: the portal finds by it a campaign made before the week it was sent in. None for a batch sent at
        once. Unconditional: its key is the batch's alone, and the batch's own put decides whether it is new."""
        sk = goes_out_sk(batch)
        if sk is None:
            return []
        item = {"pk": account_pk(batch.account_id), "sk": sk, "expires_at": self._expires_at(batch)}
        return [{"TableName": self.table_name, "Item": self._codec.dump(item)}]

    def _new_batch_put(self, batch: Batch) -> dict[str, Any]:
        item = {
            "pk": account_pk(batch.account_id),
            "sk": batch_sk(batch.reference_id),
            "expires_at": self._expires_at(batch),
            **batch.model_dump(mode="json"),
        }
        # In `sweep-index` while it is scheduled, or (100 recipients or more, to go out at once) until its records are
        # queued: one whose api Lambda was killed before it made its schedule or queued its records is released by the
        # sweeper (dynamodb_unreleased.py).
        item |= unreleased_sweep_keys(batch)
        return {
            "TableName": self.table_name,
            "Item": self._codec.dump(item),
            "ConditionExpression": "attribute_not_exists(pk)",
        }

    def create_batch_and_reserve(self, batch: Batch, *, superseding: int | None = None) -> None:
        """Writes the batch (without messages) and takes its cost from the account's credits in one transaction,
        both or neither. A retry that finds the batch then knows its credits were
        taken: there is no moment at which they are gone and the batch is not there. With `superseding`, the
        failed batch it replaces gets its link to this one in the same transaction: a retry that follows the
        link finds this batch, and one that finds no link knows nothing of this one was written."""
        # A scheduled batch's entry by send time goes in the same transaction: no request more (it is never refused).
        entries = [{"Put": entry} for entry in self._goes_out_puts(batch)]
        writes = [
            {"Update": self._reserve_update(batch.account_id, batch.cost)},
            {"Put": self._new_batch_put(batch)},
            *entries,
        ]
        if superseding is not None:
            writes.append({"Update": self._supersede_update(batch.account_id, superseding, batch.reference_id)})
        try:
            account_refused, batch_refused, *others = transact_until_decided(self.client, writes)
        except TransactionUndecided as error:
            # Other writes of the account's credits (its other sends, on AWS) cancelled every try: nothing was written,
            # and the send has nothing to undo (its undo would meet the same conflicts).
            raise not_done(f"writing batch {batch.reference_id} with its credits", error) from error
        superseded_refused = others[len(entries) :]
        if batch_refused:
            raise _batch_exists(batch)
        if any(superseded_refused):
            raise Conflict(f"batch {superseding} is not a failed batch waiting to be sent afresh")
        if account_refused:
            raise _short_of_credits(batch.cost)

    def _supersede_update(self, account_id: str, failed_reference_id: int, reference_id: int) -> dict[str, Any]:
        """Links a failed batch to the one sent afresh in its place, once."""
        return {
            "TableName": self.table_name,
            "Key": _batch_key(account_id, failed_reference_id),
            "UpdateExpression": "SET superseded_by = :by",
            "ConditionExpression": "#status = :failed AND attribute_not_exists(superseded_by)",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":by": {"N": str(reference_id)},
                ":failed": {"S": str(MessageStatus.FAILED)},
            },
        }

    def balance(self, account_id: str) -> int:
        """The account's credits, read consistently: the writes of credits are transactions, which return nothing, so
        what they left is read back when a caller needs it (with the writes of any send that overlapped)."""
        found = self.client.get_item(
            TableName=self.table_name,
            Key=account_key(account_id),
            ProjectionExpression="credits",
            ConsistentRead=True,
        ).get("Item")
        return int(found["credits"]["N"]) if found else 0

    def reprice_batch(self, batch: Batch, cost: int, recipients: int | None = None, *, by_cancel: bool = False) -> int:
        """Sets the batch's cost to `cost` and moves the difference between the credits it reserved (`batch.cost`,
        as read) and `cost` from or to the account in one transaction, only while the batch still has the cost and
        revision it was read with; returns the balance after. So a finisher that dies after it leaves a batch whose
        cost says what was taken, and the next one owes nothing more. InsufficientCredits when the balance is short
        (never `by_cancel`), Conflict when the batch changed meanwhile (another request repriced it or added
        messages): then nothing changed. `by_cancel`: the cancel's give-back, counted in the batch's
        `cancel_unstored_refund` by the same write."""
        self._reprice(batch, (), cost=cost, recipients=recipients, by_cancel=by_cancel)
        return self.balance(batch.account_id)

    def store_and_charge(self, batch: Batch, messages: Sequence[Message], *, stored_cost: int, stored: int) -> Batch:
        # The whole difference moves with the first part: from then on the batch holds what all its messages cost,
        # those stored and those still to come, so the credits it held for the rest are never let go of between two
        # parts (another send of the account took them, and the next part was refused for credits).
        # The count too: a part's write makes it all of them, so a batch a finisher died part-way through has fewer
        # messages than recipients, as one its send died storing has (the next finisher counts them accepted, and
        # a release gives back what the batch holds for the rest).
        cost, count = stored_cost + sum(message.price for message in messages), stored + len(messages)
        expires_at = self._expires_at(batch)
        items = [self._codec.dump(self._message_item(message, expires_at)) for message in messages]
        # With no messages, one write all the same: it makes the cost and count those of the messages stored.
        for part in _charged_parts(items) or [[]]:
            try:
                batch = self._reprice(batch, part, cost=cost, recipients=count, storing=True)
            except TransactionUndecided as error:
                # Other writes of the account's credits (or of the batch) cancelled every try: nothing of this part was
                # written, the parts before it were, and the finisher's next call goes on from what is stored.
                raise not_done(f"storing {len(part)} messages of batch {batch.reference_id}", error) from error
        return batch

    def _reprice(
        self,
        batch: Batch,
        messages: Sequence[dict[str, Any]],
        *,
        cost: int,
        recipients: int | None = None,
        by_cancel: bool = False,
        storing: bool = False,
    ) -> Batch:
        """One transaction: the batch's cost (and count) set and its revision moved on, while they are as read (and,
        when `storing`, while it is queued or scheduled), the difference moved between it and the account's
        credits, and `messages` (items, as written) stored (none of them stored already). The batch as written."""
        owed = cost - batch.cost
        update = self._repriced_batch_update(batch, cost, recipients, storing=storing or bool(messages))
        if by_cancel:
            # The cancel's answer counts what it gave back from here (logic.batches.cancel_refund), not from the cost
            # it read: another writer (the undo of a refused retry) may give that back first.
            update["UpdateExpression"] += " ADD cancel_unstored_refund :given"
            update["ExpressionAttributeValues"][":given"] = {"N": str(-owed)}
        writes: list[dict[str, Any]] = [{"Update": update}]
        if owed:
            # A cancel takes back (owed > 0) only for messages stored after an earlier give-back of theirs (a send
            # still storing when its batch was cancelled), which the same cancel then cancels and refunds: never
            # refused for the balance (until 2026-12-07 such a cancel answered 402 once the account had spent them),
            # which it leaves below what it was only until those refunds.
            account = (
                self._reserve_update(batch.account_id, owed)
                if owed > 0 and not by_cancel
                else self._credits_update(batch.account_id, -owed)
            )
            writes.append({"Update": account})
        writes += [
            {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}
            for item in messages
        ]
        batch_refused, *others_refused = transact_until_decided(self.client, writes)
        if batch_refused or any(others_refused[1 if owed else 0 :]):
            raise Conflict(f"batch {batch.reference_id} changed meanwhile")
        if owed and others_refused[0]:
            raise _short_of_credits(owed)
        counted = {"recipients": recipients} if recipients is not None else {}
        return batch.model_copy(update={"cost": cost, "revision": batch.revision + 1, **counted})

    def _repriced_batch_update(
        self, batch: Batch, cost: int, recipients: int | None, *, storing: bool
    ) -> dict[str, Any]:
        update: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": _batch_key(batch.account_id, batch.reference_id),
            "UpdateExpression": "SET #cost = :cost, #revision = :next",
            # A batch written before revisions has none: read as 0.
            "ConditionExpression": "#cost = :read AND (attribute_not_exists(#revision) OR #revision = :revision)",
            "ExpressionAttributeNames": {"#cost": "cost", "#revision": "revision"},
            "ExpressionAttributeValues": {
                ":cost": {"N": str(cost)},
                ":read": {"N": str(batch.cost)},
                ":revision": {"N": str(batch.revision)},
                ":next": {"N": str(batch.revision + 1)},
            },
        }
        if recipients is not None:
            update["UpdateExpression"] += ", recipients = :recipients"
            update["ExpressionAttributeValues"][":recipients"] = {"N": str(recipients)}
        if storing:
            # Messages join only a batch that may still send them: one cancelled or failed meanwhile gave back what
            # it held, and its release is done.
            update["ConditionExpression"] += " AND #status IN (:queued, :scheduled)"
            update["ExpressionAttributeNames"]["#status"] = "status"
            update["ExpressionAttributeValues"] |= {
                ":queued": {"S": str(MessageStatus.QUEUED)},
                ":scheduled": {"S": str(MessageStatus.SCHEDULED)},
            }
        return update

    def fail_batch_and_refund(self, batch: Batch) -> bool | None:
        """Moves a batch still in the status it was written with (`batch.status`, queued or scheduled: nothing of
        it released) to failed and gives its cost back to the account in one transaction, both or neither (the
        undo of a send that could not be stored or scheduled). True: this call did both; False: the batch is there
        but moved on (undone already, released, cancelled), nothing changed; None: there is no such batch."""
        fail = self._batch_status_update(
            batch.account_id, batch.reference_id, MessageStatus.FAILED, frozenset({batch.status})
        )
        if fail is None:
            return False  # failed cannot follow the status it has
        fail["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        refund = self._credits_update(batch.account_id, batch.cost)
        batch_refused, account_refused = transact_until_decided(self.client, [{"Update": fail}, {"Update": refund}])
        if batch_refused:
            return False if batch_refused.get("Item") else None
        if account_refused:
            raise RuntimeError(f"account {batch.account_id} is gone: the cost of batch {batch.reference_id} stays")
        return True

    def add_messages(self, batch: Batch, messages: Sequence[Message]) -> None:
        expires_at = self._expires_at(batch)
        requests = [
            {"PutRequest": {"Item": self._codec.dump(self._message_item(message, expires_at))}} for message in messages
        ]
        for start in range(0, len(requests), BATCH_WRITE_SIZE):
            self._batch_write(requests[start : start + BATCH_WRITE_SIZE])

    def _message_item(self, message: Message, expires_at: int) -> dict[str, Any]:
        item = {
            "pk": messages_pk(message.account_id, message.reference_id),
            "sk": message_sk(message.message_id),
            "expires_at": expires_at,
            **message.model_dump(mode="json"),
        }
        if message.can_be_replied_to:
            # The conversation index finds the last message to a number when a reply comes in. A message from an
            # alphanumeric sender cannot be replied to, so it gets no entry: the index is sparse, and each entry
            # is a write unit per message (docs/data-model.md).
            item["conversation"] = conversation_key(message.account_id, message.msisdn)
        else:
            # Nor a `message-index` entry: the id is in the sort key, and names the batch (find_message). The
            # conversation index sorts by `message_id`, so a message that has an entry keeps the attribute (and
            # with it an index entry too).
            del item["message_id"]
        if message.parts == 1:
            # Only multi-part messages track their parts (record_part_status needs the map to exist).
            item.pop("part_status", None)
        if not message.submit_throttles:
            # Counted by the first throttle's release (ADD on a missing attribute starts from 0).
            item.pop("submit_throttles", None)
        # Written only when a change's announcement failed (mark_unannounced), or by an upstream's repeat of its
        # report (claim_announcement).
        item.pop("announce_pending", None)
        item.pop("announced", None)
        if message.send_at is None:
            item.pop("send_at", None)
        return item

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending = {self.table_name: requests}
        for attempt in range(_MAX_UNPROCESSED_ROUNDS):
            pending = self.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                return
            time.sleep(min(0.05 * 2**attempt, 1.0))
        raise RuntimeError(f"DynamoDB left {len(pending[self.table_name])} writes unprocessed")

    def get_batch(self, account_id: str, reference_id: int) -> Batch | None:
        found = self.client.get_item(
            TableName=self.table_name,
            Key=_batch_key(account_id, reference_id),
            ConsistentRead=True,
        ).get("Item")
        return Batch.model_validate(self._codec.load(found)) if found else None

    def set_batch_status(
        self,
        account_id: str,
        reference_id: int,
        target: MessageStatus,
        *,
        only_from: frozenset[MessageStatus] | None = None,
    ) -> bool:
        update = self._batch_status_update(account_id, reference_id, target, only_from)
        if update is None:
            return False
        try:
            self.client.update_item(**update)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def claim_cancel_answer(self, account_id: str, reference_id: int, *, mark: str | None = None) -> Batch | None:
        # A random token written with the claim, which the condition accepts: this write, sent again by botocore after
        # its answer was lost, meets the claim it made and knows it for its own (as a dispatch claim's `claim_id`),
        # rather than take it for another cancel's and answer nothing of the refund.
        values: dict[str, Any] = {
            ":answered": {"BOOL": True},
            ":cancelled": {"S": str(MessageStatus.CANCELLED)},
            ":token": {"S": secrets.token_hex(16)},
        }
        update = "SET cancel_answered = :answered, cancel_answer_token = :token"
        unclaimed = "attribute_not_exists(cancel_answered) OR cancel_answer_token = :token"
        if mark is not None:
            values[":mark"] = {"S": mark}
            update, unclaimed = f"{update}, cancel_answer_mark = :mark", f"{unclaimed} OR cancel_answer_mark = :mark"
        try:
            claimed = self.client.update_item(
                TableName=self.table_name,
                Key=_batch_key(account_id, reference_id),
                UpdateExpression=update,
                ConditionExpression=f"#status = :cancelled AND ({unclaimed})",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return Batch.model_validate(self._codec.load(claimed["Attributes"]))

    def clear_release_sweep(self, account_id: str, reference_id: int) -> None:
        """Takes a batch to go out at once whose dispatch records are queued out of `sweep-index`
        (dynamodb_unreleased.py): one write, which changes nothing of a batch not in it (conditional on its keys, so
        it never makes an item either)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=_batch_key(account_id, reference_id),
                UpdateExpression=f"REMOVE {UNMARK}",
                ConditionExpression="attribute_exists(sweep_at)",
            )

    def leave_to_release_sweep(self, batch: Batch) -> None:
        """Puts a batch to go out at once that is still `queued` in `sweep-index` as a send of 100 recipients or more
        is written (QUEUED, due UNQUEUED_RELEASE_SWEEP_MARGIN after it was accepted), whatever its size: one write,
        conditional on its status, so nothing for a batch that moved on."""
        keys = sweep_keys(QUEUED, batch.reference_id, unqueued_release_sweep_due(batch))
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=_batch_key(batch.account_id, batch.reference_id),
                UpdateExpression="SET sweep_shard = :shard, sweep_at = :at",
                ConditionExpression="#status = :queued",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":shard": {"S": keys["sweep_shard"]},
                    ":at": {"N": str(keys["sweep_at"])},
                    ":queued": {"S": str(MessageStatus.QUEUED)},
                },
            )

    def _batch_status_update(
        self, account_id: str, reference_id: int, target: MessageStatus, only_from: frozenset[MessageStatus] | None
    ) -> dict[str, Any] | None:
        """The conditional write of a batch to `target`, from a state it may follow (narrowed to `only_from`);
        None when there is no such state."""
        previous = sorted(allowed_previous(target) & (only_from or allowed_previous(target)))
        if not previous:
            return None
        values = {f":p{i}": {"S": str(status)} for i, status in enumerate(previous)}
        # A batch that leaves `scheduled` or `queued` leaves `sweep-index` in the same write (removing absent
        # attributes writes no index entry), so the sweeper never meets a batch released, cancelled or undone.
        unmark = f" REMOVE {UNMARK}" if target != MessageStatus.SCHEDULED else ""
        return {
            "TableName": self.table_name,
            "Key": _batch_key(account_id, reference_id),
            "UpdateExpression": f"SET #status = :target{unmark}",
            "ConditionExpression": f"#status IN ({', '.join(values)})",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":target": {"S": str(target)}, **values},
        }

    def list_messages(
        self,
        account_id: str,
        reference_id: int,
        *,
        limit: int = 100,
        cursor: str | None = None,
        status: MessageStatus | None = None,
    ) -> tuple[list[Message], str | None]:
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": messages_pk(account_id, reference_id)}},
            # Read-your-writes: a cancel, a status lookup or a resumed send right after the send that stored them
            # must see every message (an eventually consistent replica may answer none yet).
            "ConsistentRead": True,
        }
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(
                cursor, pk=messages_pk(account_id, reference_id), sk_form=MESSAGE_SK
            )
        rounds, read_size = 1, 0
        if status is not None:
            # DynamoDB applies Limit before the filter: a page is filled by reading on, bounded in reads.
            query["FilterExpression"] = "#status = :status"
            query["ExpressionAttributeNames"] = {"#status": "status"}
            query["ExpressionAttributeValues"][":status"] = {"S": str(status)}
            rounds, read_size = _MAX_FILTER_ROUNDS, _FILTER_READ_SIZE
        messages, last = read_page(
            self.client.query,
            query,
            limit,
            load=lambda items: [message_from_item(self._codec, item) for item in items],
            key_of=lambda message: _key_of(message.key),
            rounds=rounds,
            read_size=read_size,
        )
        return messages, encode_cursor(last)

    def get_messages(self, account_id: str, reference_id: int, message_ids: Sequence[int]) -> list[Message]:
        return self.get_messages_by_key(MessageKey.of_batch(account_id, reference_id, message_ids))

    def get_messages_by_key(self, keys: Sequence[MessageKey], *, consistent: bool = True) -> list[Message]:
        items = batch_get(self.client, self.table_name, [_key_of(key) for key in keys], consistent=consistent)
        found = [message_from_item(self._codec, item) for item in items]
        found.sort(key=lambda message: message.message_id)
        return found

    def claim_for_dispatch(
        self,
        key: MessageKey,
        *,
        now: datetime,
        lease_seconds: int,
        upstream: str | None = None,
        attempts_read: int | None = None,
    ) -> Claim:
        now_epoch = int(now.timestamp())
        # The lease carries an id of its own, as the credit writes carry a transaction token: when the claim's answer
        # is lost botocore sends it again, and the retry, refused by the lease it finds, knows that lease for ours.
        # Until 2026-12-06 it read as another dispatcher's (HELD): nothing was submitted, and the record's return
        # took the lease for a dead holder's and recorded the message submitted, unconfirmed, never sent.
        claim_id = secrets.token_hex(16)
        values = {
            ":until": {"N": str(now_epoch + lease_seconds)},
            ":one": {"N": "1"},
            ":queued": {"S": str(MessageStatus.QUEUED)},
            ":claim_id": {"S": claim_id},
        }
        claim = "SET claim_until = :until, claim_id = :claim_id"
        if upstream is not None:
            claim += ", claim_upstream = :upstream"
            values[":upstream"] = {"S": upstream}
        condition = "#status = :queued AND attribute_not_exists(claim_until)"
        if attempts_read is not None:
            # Messages are stored with `submit_attempts: 0`; one stored without it has never been attempted either.
            never = " OR attribute_not_exists(submit_attempts)" if attempts_read == 0 else ""
            condition += f" AND (submit_attempts = :attempts_read{never})"
            values[":attempts_read"] = {"N": str(attempts_read)}
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_key_of(key),
                UpdateExpression=f"{claim} ADD dispatch_attempts :one",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            current = error.response.get("Item") or {}
            if _holds(current, claim_id):
                return Claim(ClaimOutcome.CLAIMED, claim_id=claim_id)
            lapsed = current.get("claim_until", {}).get("N")
            if current.get("status", {}).get("S") != MessageStatus.QUEUED:
                return Claim(ClaimOutcome.BUSY)
            if lapsed is None:
                attempts = int(current.get("submit_attempts", {}).get("N", "0"))
                stale = attempts_read is not None and attempts != attempts_read
                return Claim(ClaimOutcome.STALE if stale else ClaimOutcome.BUSY)
            if int(lapsed) >= now_epoch:
                return Claim(ClaimOutcome.HELD)
            return self._take_over_lapsed_claim(key, lapsed, current.get("claim_upstream", {}).get("S"), values)
        return Claim(ClaimOutcome.CLAIMED, claim_id=claim_id)

    def _take_over_lapsed_claim(
        self, key: MessageKey, lapsed: str, lapsed_upstream: str | None, claim_values: dict[str, Any]
    ) -> Claim:
        names = (":until", ":one", ":queued", ":claim_id")
        values = {name: claim_values[name] for name in names} | {":lapsed": {"N": lapsed}}
        claim_id = claim_values[":claim_id"]["S"]
        # Only the one dispatcher that replaces exactly this lapsed lease resolves the message, knowing where it
        # may be: the lease still names the upstream read with it. The dead holder's submit counts as an attempt.
        condition = "#status = :queued AND claim_until = :lapsed AND "
        if lapsed_upstream is None:
            condition += "attribute_not_exists(claim_upstream)"
        else:
            condition += "claim_upstream = :lapsed_upstream"
            values[":lapsed_upstream"] = {"S": lapsed_upstream}
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_key_of(key),
                UpdateExpression="SET claim_until = :until, claim_id = :claim_id "
                "ADD dispatch_attempts :one, submit_attempts :one",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            if _holds(error.response.get("Item") or {}, claim_id):
                # Our own takeover, applied, whose answer was lost: the retry found the lease it had just written.
                return Claim(ClaimOutcome.ABANDONED, lapsed_upstream=lapsed_upstream, claim_id=claim_id)
            # Another dispatcher took it over (or it moved on): if the first, that one now holds a live claim.
            return Claim(ClaimOutcome.HELD)
        return Claim(ClaimOutcome.ABANDONED, lapsed_upstream=lapsed_upstream, claim_id=claim_id)

    def move_claim(self, key: MessageKey, *, from_upstream: str, to_upstream: str, claim_id: str | None = None) -> bool:
        values = {
            ":queued": {"S": str(MessageStatus.QUEUED)},
            ":from": {"S": from_upstream},
            ":to": {"S": to_upstream},
        }
        condition = "#status = :queued AND attribute_exists(claim_until) AND claim_upstream = :from"
        if claim_id is not None:
            condition += " AND claim_id = :claim_id"
            values[":claim_id"] = {"S": claim_id}
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_key_of(key),
                UpdateExpression="SET claim_upstream = :to",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            # A move applied whose answer was lost finds, on botocore's retry, our lease naming `to_upstream`.
            current = error.response.get("Item") or {}
            return _holds(current, claim_id) and current.get("claim_upstream", {}).get("S") == to_upstream
        return True

    def release_claim(
        self,
        key: MessageKey,
        *,
        claim_id: str | None = None,
        attempted: bool = True,
        maybe_taken_by: str | None = None,
        throttled: bool = False,
    ) -> None:
        values: dict[str, Any] = {":queued": {"S": str(MessageStatus.QUEUED)}}
        condition = "#status = :queued"
        if claim_id is not None:
            # Only our own lease: a release applied whose answer was lost, sent again by botocore, must not count the
            # attempt twice, nor drop the lease another dispatcher took in between (it would then be sent twice).
            condition += " AND claim_id = :claim_id"
            values[":claim_id"] = {"S": claim_id}
        update = ""
        if maybe_taken_by is not None:
            values[":taken_by"] = {"S": maybe_taken_by}
            update += "SET maybe_taken_by = :taken_by "
        update += "REMOVE claim_until, claim_upstream, claim_id"
        added = [name for name, counted in (("submit_attempts", attempted), ("submit_throttles", throttled)) if counted]
        if added:
            values[":one"] = {"N": "1"}
            update += " ADD " + ", ".join(f"{name} :one" for name in added)
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=_key_of(key),
                # The same write counts the attempt the upstream did not take, and says who may have it.
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
            )

    def transition(
        self,
        key: MessageKey,
        target: MessageStatus,
        *,
        now: datetime,
        upstream: str | None = None,
        upstream_message_id: str | None = None,
        error_code: str | None = None,
        reported_at: str | None = None,
        unclaimed_only: bool = False,
        unheld_only: bool = False,
        refund: bool = False,
        reported_by: str | None = None,
        settles_as: MessageStatus | None = None,
        if_settles_as: MessageStatus | None = None,
        unless_settles_as: MessageStatus | None = None,
    ) -> StatusChange | None:
        options: dict[str, Any] = {
            "upstream": upstream,
            "upstream_message_id": upstream_message_id,
            "error_code": error_code,
            "reported_at": reported_at,
            "unclaimed_only": unclaimed_only,
            "unheld_only": unheld_only,
            "reported_by": reported_by,
            "settles_as": settles_as,
            "if_settles_as": if_settles_as,
            "unless_settles_as": unless_settles_as,
        }
        if refund:
            found = self.get_messages_by_key([key])
            return self.move_and_refund(found, target, now=now, **options)[0] if found else None
        try:
            answer = self.client.update_item(
                TableName=self.table_name,
                **_transition_update(key, target, now=now, **options),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            current = error.response.get("Item")
            if not current:
                return None
            return StatusChange(message=self._message(current), changed=False)
        return StatusChange(message=self._message(answer["Attributes"]), changed=True)

    def _message(self, item: dict[str, Any]) -> Message:
        return message_from_item(self._codec, item)

    def move_and_refund(
        self, messages: Sequence[Message], target: MessageStatus, *, now: datetime, **options: Any
    ) -> list[StatusChange | None]:
        """Moves each of `messages` (one account's, as last read) to `target` by its conditional write, and gives
        the price of every message it moved back to the account in the same transaction (TransactWriteItems, up to
        REFUND_CHUNK messages to one, fewer of long ones: _TRANSACTION_ITEM_BYTES), so a crash never leaves a message
        refunded-for but not moved, or moved but not refunded. `options`: transition's. Aligned with `messages`: each
        as it is now (changed: this call moved it), None for a message that is not there."""
        if not messages:
            return []
        account_ids = {message.account_id for message in messages}
        if len(account_ids) != 1:
            raise ValueError("move_and_refund takes one account's messages")
        return self._move_in_chunks(messages, target, now, options, refund=True)

    def move_messages(
        self, messages: Sequence[Message], target: MessageStatus, *, now: datetime, **options: Any
    ) -> list[StatusChange | None]:
        """move_and_refund without the refund (their credits went back another way): the same conditional writes,
        a transaction of up to REFUND_CHUNK messages (fewer of long ones: _TRANSACTION_ITEM_BYTES) at a time."""
        return self._move_in_chunks(messages, target, now, options, refund=False)

    def _move_in_chunks(
        self,
        messages: Sequence[Message],
        target: MessageStatus,
        now: datetime,
        options: dict[str, Any],
        *,
        refund: bool,
    ) -> list[StatusChange | None]:
        changes: dict[MessageKey, StatusChange | None] = {}
        # Cut by the messages' items as well as their count: each Update counts its whole item toward DynamoDB's 4 MB
        # (_TRANSACTION_ITEM_BYTES; until 2026-12-07 always 99, and a cancel of 99 of the longest messages, 5 MB of
        # items, answered 500 every time).
        sizes = [_item_bytes(self._codec.dump(self._message_item(message, expires_at=0))) for message in messages]
        for chunk in _transaction_parts(messages, sizes, most=REFUND_CHUNK):
            changes |= self._move_chunk(chunk, target, now, options, refund=refund)
        return [changes[message.key] for message in messages]

    def _move_chunk(
        self, chunk: Sequence[Message], target: MessageStatus, now: datetime, options: dict[str, Any], *, refund: bool
    ) -> dict[MessageKey, StatusChange | None]:
        changes: dict[MessageKey, StatusChange | None] = {}
        pending = list(chunk)
        throttled = 0
        for attempt in range(MAX_TRANSACTION_ATTEMPTS):
            writes = [
                {
                    "Update": {
                        "TableName": self.table_name,
                        **_transition_update(message.key, target, now=now, **options),
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
                for message in pending
            ]
            if refund:
                writes.append({"Update": self._credits_update(pending[0].account_id, sum(m.price for m in pending))})
            reasons = transact(self.client, writes)
            if reasons is not None:
                if refund and reasons[-1].get("Code") not in NOT_REFUSED + THROTTLED:
                    raise RuntimeError(f"the refund of {len(pending)} messages was refused: {reasons[-1]}")
                still: list[Message] = []
                for message, reason in zip(pending, reasons, strict=False):
                    if reason.get("Code") == "ConditionalCheckFailed":
                        # Not in a state it can move from (or not there): it stays, and nothing is given back for it.
                        item = reason.get("Item")
                        changes[message.key] = (
                            StatusChange(message=self._message(item), changed=False) if item else None
                        )
                    else:
                        still.append(message)
                if not still:
                    # Every message left was settled by another writer: decided, nothing is left to try (also when
                    # this was the last try).
                    return changes
                if len(still) == len(pending):
                    # A conflict with another write to one of the items, or throttling: try again (a while later).
                    throttled = try_again_after(attempt, [reason.get("Code") for reason in reasons], throttled)
                pending = still
                continue
            moved = {m.key: m for m in self.get_messages_by_key([m.key for m in pending])}
            changes |= {key: StatusChange(message=message, changed=True) for key, message in moved.items()}
            return changes
        # Nothing of this chunk's last transaction was written (the chunks before it were): TransactionUndecided, which
        # a cancel answers as to retry (logic.batches); every other caller takes it as any failure.
        raise TransactionUndecided(
            f"moving {len(pending)} messages and refunding them conflicted {MAX_TRANSACTION_ATTEMPTS} times"
        )

    def find_message(self, account_id: str, message_id: int) -> Message | None:
        """The account's message with this id: read in the batch its id names (a batch's messages take the ids
        after its own, domain/ids.message_id_at), else through `message-index` (messages stored before ids named
        their batch, and any a collision of two containers' ids put elsewhere)."""
        return self._find_message_in_its_batch(account_id, message_id) or self._find_indexed_message(
            account_id, message_id
        )

    def _find_message_in_its_batch(self, account_id: str, message_id: int) -> Message | None:
        lowest, highest = batch_ids_around(message_id)
        if highest < lowest:
            return None
        # The account's batches that could hold it, newest first: almost always one.
        answer = self.client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lowest AND :highest",
            ExpressionAttributeValues={
                ":pk": {"S": account_pk(account_id)},
                ":lowest": {"S": batch_sk(lowest)},
                ":highest": {"S": batch_sk(highest)},
            },
            ProjectionExpression="reference_id",
            ScanIndexForward=False,
            ConsistentRead=True,
        )
        for batch in answer.get("Items", []):
            reference_id = int(batch["reference_id"]["N"])
            key = MessageKey(account_id=account_id, reference_id=reference_id, message_id=message_id)
            found = self.client.get_item(TableName=self.table_name, Key=_key_of(key), ConsistentRead=True).get("Item")
            if found:
                return message_from_item(self._codec, found)
        return None

    def _find_indexed_message(self, account_id: str, message_id: int) -> Message | None:
        answer = self.client.query(
            TableName=self.table_name,
            IndexName=MESSAGE_INDEX,
            KeyConditionExpression="message_id = :id",
            ExpressionAttributeValues={":id": {"N": str(message_id)}},
        )
        for keys in answer.get("Items", []):
            pk = keys["pk"]["S"]
            # Ids are unique, but the account check is what keeps one tenant out of another's messages.
            if not pk.startswith(f"MSGS#{account_id}#"):
                continue
            found = self.client.get_item(
                TableName=self.table_name, Key={"pk": keys["pk"], "sk": keys["sk"]}, ConsistentRead=True
            ).get("Item")
            if found:
                return message_from_item(self._codec, found)
        return None

    # ---------------------------------------------------------------- prices

    def price_table(self) -> PriceTable:
        found = self.client.get_item(TableName=self.table_name, Key={"pk": {"S": "CONFIG"}, "sk": {"S": "PRICES"}}).get(
            "Item"
        )
        return PriceTable.model_validate(self._codec.load(found)) if found else PriceTable()

    def save_price_table(self, table: PriceTable) -> None:
        self.client.put_item(
            TableName=self.table_name,
            Item=self._codec.dump({"pk": "CONFIG", "sk": "PRICES", **table.model_dump(mode="json")}),
        )

    # ---------------------------------------------------------------- dispatch record failures

    def count_record_failure(self, record_id: str, *, delivery: str, now: datetime) -> int:
        """Counts a failure of the dispatch record with this SQS message id in its `delivery` (SQS's receive count)
        and returns how many deliveries of it failed. Each delivery is an element of a set, so botocore's retry of a
        write whose answer was lost counts it once (a plain `ADD 1` counted it twice, parking the record a failure
        early). Written only when a record fails (rare), kept a week: longer than the queue keeps a record (4 days)."""
        answer = self.client.update_item(
            TableName=self.table_name,
            Key={"pk": {"S": f"DISPATCH_FAILURES#{record_id}"}, "sk": {"S": "RECORD"}},
            UpdateExpression="ADD failed_deliveries :delivery SET expires_at = :expires",
            ExpressionAttributeValues={
                ":delivery": {"SS": [delivery]},
                ":expires": {"N": str(int((now + RECORD_FAILURES_KEPT).timestamp()))},
            },
            # ALL_NEW: UPDATED_NEW leaves out a set the write did not change (the same delivery counted again).
            ReturnValues="ALL_NEW",
        )
        item = answer["Attributes"]
        # `failures`: what a build before 2026-12-07 counted on the item (ADD 1 per failure), still counted.
        return len(item["failed_deliveries"]["SS"]) + int(item.get("failures", {}).get("N", "0"))

    # ---------------------------------------------------------------- idempotency

    def _idempotency_key(self, scope: str, key: str) -> dict[str, Any]:
        return {"pk": {"S": f"IDEM#{scope}#{hash_secret(key)}"}, "sk": {"S": "IDEM"}}

    def begin(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        now: datetime,
        reference_id: int,
        lease: timedelta | None = None,
        unversioned_fingerprint: str | None = None,
    ) -> StoredAnswer | KeyClaim:
        # This request's own mark on the record: botocore sends a write whose answer was lost again, unchanged, and
        # the copy that meets the record the first wrote must know it for its own, not for another request's.
        claim_token = secrets.token_hex(16)
        item = {
            **self._idempotency_key(scope, key),
            "fingerprint": {"S": fingerprint},
            "fingerprint_version": {"N": str(FINGERPRINT_VERSION)},
            "state": {"S": "in_progress"},
            "reference_id": {"N": str(reference_id)},
            "claim_token": {"S": claim_token},
            # The key's mark, which its batch carries (KeyClaim.mark): the first claim's token, never changed by a
            # takeover (claim_token is), so every request under the key knows the batch the key's sends wrote.
            "key_mark": {"S": claim_token},
            "expires_at": {"N": str(int((now + IDEMPOTENCY_WINDOW).timestamp()))},
        }
        if lease is not None:
            item["lease_until"] = {"N": str(int((now + lease).timestamp()))}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                # An expired record is as good as none: DynamoDB's TTL deletes lazily.
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(int(now.timestamp()))}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            current = self._codec.load(error.response.get("Item") or {})
            # A record an earlier build stored (no version) hashed the request as that build did: compared so, it is
            # still told from another request, and the request it was stored for still gets its answer.
            versioned = current.get("fingerprint_version") is not None
            expected = fingerprint if versioned or unversioned_fingerprint is None else unversioned_fingerprint
            if current.get("fingerprint") != expected:
                raise KeyReused("this idempotency key was used for a different request") from error
            if current.get("state") == "done":
                return StoredAnswer.model_validate(current["answer"])
            if current.get("claim_token") == claim_token:
                # Our own write, sent again after its answer was lost: the key is ours, as the first answer said.
                return KeyClaim(reference_id=reference_id, mark=current.get("key_mark"))
            return self._take_over(scope, key, current, now=now, lease=lease, claim_token=claim_token)
        return KeyClaim(reference_id=reference_id, mark=claim_token)

    def _take_over(
        self, scope: str, key: str, current: dict[str, Any], *, now: datetime, lease: timedelta | None, claim_token: str
    ) -> KeyClaim:
        """A key still in progress: taken over only when its holder's lease ran out (it died without answering),
        by a write conditional on that lease, so of two retries only one resumes the batch. The write puts this
        request's `claim_token` on the record, so that the write sent again after its answer was lost (the lease is
        moved then) still finds the key its own."""
        held_until, planned = current.get("lease_until"), current.get("reference_id")
        still_processing = KeyInProgress(
            "a request with this idempotency key is still being processed; retry later",
            reference_id=None if planned is None else int(planned),
        )
        if lease is None or held_until is None or planned is None or int(held_until) >= int(now.timestamp()):
            raise still_processing
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self._idempotency_key(scope, key),
                UpdateExpression="SET lease_until = :lease, claim_token = :token",
                ConditionExpression="#state = :in_progress AND (lease_until = :held OR claim_token = :token)",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":lease": {"N": str(int((now + lease).timestamp()))},
                    ":in_progress": {"S": "in_progress"},
                    ":held": {"N": str(int(held_until))},
                    ":token": {"S": claim_token},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            raise still_processing from error
        return KeyClaim(reference_id=int(planned), resumed=True, mark=current.get("key_mark"))

    def complete(self, scope: str, key: str, answer: StoredAnswer) -> None:
        self.client.update_item(
            TableName=self.table_name,
            Key=self._idempotency_key(scope, key),
            UpdateExpression="SET #state = :done, answer = :answer",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":done": {"S": "done"},
                ":answer": {"M": self._codec.dump(answer.model_dump(mode="json"))},
            },
        )

    def abandon(self, scope: str, key: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key=self._idempotency_key(scope, key))

    def lapse(self, scope: str, key: str) -> None:
        # A lease in the past is one a retry takes over (_take_over); only the holder writes the record meanwhile.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=self._idempotency_key(scope, key),
                UpdateExpression="SET lease_until = :lapsed",
                ConditionExpression="#state = :in_progress AND attribute_exists(lease_until)",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":lapsed": {"N": "0"}, ":in_progress": {"S": "in_progress"}},
            )

    def renumber(self, scope: str, key: str, claim: KeyClaim, reference_id: int) -> KeyClaim | None:
        # A first claim's token is the key's mark; a takeover (which a live request's lease rules out) changes it.
        if claim.resumed or claim.mark is None:
            return None
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self._idempotency_key(scope, key),
                UpdateExpression="SET reference_id = :next",
                ConditionExpression="#state = :in_progress AND reference_id = :named AND claim_token = :mark",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":next": {"N": str(reference_id)},
                    ":named": {"N": str(claim.reference_id)},
                    ":in_progress": {"S": "in_progress"},
                    ":mark": {"S": claim.mark},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return KeyClaim(reference_id=reference_id, mark=claim.mark)
