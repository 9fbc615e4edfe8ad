"""DynamoDB adapter, operator side: credentials, senders, balance, settings and prices (a DynamoStore mixin).

Items it adds (see docs/data-model.md):
  credential listing  pk=ACC#<account_id>  sk=CRED#<kind>#<prefix>  -> secret_hash, created_at, revoked
  login listing       pk=ACC#<account_id>  sk=LOGIN                 -> username (reset-password finds the login)
  released sender     pk=SENDER#<sender>   sk=RELEASED              -> account_id (the account that released it)
The credential item itself (pk=CRED#<kind>#<sha256>) stays the one lookup authentication makes; the listing
lets an operator list and revoke an account's credentials without a scan.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sms_gateway.adapters.dynamodb_inbox import keywords_pending_to
from sms_gateway.adapters.dynamodb_optouts import (
    carry_over_opt_outs,
    names_releaser,
    released_sender_key,
    sender_released_by,
    still_released_check,
    unreleased_check,
)
from sms_gateway.adapters.dynamodb_transactions import TransactionUndecided, transact_or_unavailable
from sms_gateway.domain.models import Account, SealedSecret, SenderRegistration, iso
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.domain.senders import registry_form, same_sender
from sms_gateway.errors import Conflict, GatewayError, NotFound, Unauthorized, Unavailable
from sms_gateway.ports import (
    MOST_REVOKED_BY_A_RESET,
    PREFIX_LENGTH,
    AccountChanges,
    CredentialInfo,
    SenderAdded,
    rotated_meanwhile,
    urls_changed_meanwhile,
)

# The origin of the credentials an account is created with (create-account): the operator's.
OPERATOR_MADE = {"created_by": "operator"}
_ACCOUNT_SK = "ACCOUNT"
_LOGIN_SK = "LOGIN"
_EXISTS = "attribute_exists(pk)"
_NEW = "attribute_not_exists(pk)"
# Only these attributes of the account item may be changed through update_account.
_SETTABLE = (
    "default_country",
    "timezone",
    "rate_limit_per_second",
    "max_parts",
    "single_sends_in_order",
    "dlr_url",
    "inbound_url",
    "webhook_token",
    "webhook_secret",
    "webhooks_changed_at",
    "webhooks_changed_by",
)


def account_key(account_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": _ACCOUNT_SK}}


def _sender_key(sender: str) -> dict[str, Any]:
    # The same normal form as dynamodb.sender_pk: numbers with or without '+', ids in any case.
    return {"pk": {"S": f"SENDER#{registry_form(sender)}"}, "sk": {"S": "SENDER"}}


def credential_listing_item(
    account_id: str, kind: str, secret: str, created_at: str, *, origin: dict[str, str] | None = None
) -> dict[str, Any]:
    """The account-side pointer to a credential (plain values, for a transaction that also writes the credential).
    `origin`: who made it (created_by) and, made in the portal, under which password (password_epoch)."""
    return {
        "pk": f"ACC#{account_id}",
        "sk": f"CRED#{kind}#{secret[:PREFIX_LENGTH]}",
        "kind": kind,
        "prefix": secret[:PREFIX_LENGTH],
        "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
        "created_at": created_at,
        "revoked": False,
        **(origin or {}),
    }


def login_listing_item(account_id: str, username: str) -> dict[str, Any]:
    """The account-side pointer to its login (pk=LOGIN#<username>), so a password reset finds it by the account."""
    return {"pk": f"ACC#{account_id}", "sk": _LOGIN_SK, "username": username}


def failed_items(error: Any) -> list[bool]:
    """Which items of a cancelled transaction failed their condition, in request order."""
    reasons = error.response.get("CancellationReasons") or []
    return [reason.get("Code") == "ConditionalCheckFailed" for reason in reasons]


def _inbound_update(
    table_name: str, account_id: str, sender: str, inbound_upstreams: tuple[str, ...] | None
) -> dict[str, Any]:
    """The update of a sender's `inbound_upstreams` (None: removed), conditional on its being the account's."""
    request: dict[str, Any] = {
        "TableName": table_name,
        "Key": _sender_key(sender),
        "ConditionExpression": "account_id = :account",
        "ExpressionAttributeValues": {":account": {"S": account_id}},
        "ReturnValues": "ALL_NEW",
    }
    if inbound_upstreams is None:
        request["UpdateExpression"] = "REMOVE inbound_upstreams"
    else:
        request["UpdateExpression"] = "SET inbound_upstreams = :upstreams"
        request["ExpressionAttributeValues"][":upstreams"] = {"L": [{"S": name} for name in inbound_upstreams]}
    return request


def epoch_condition(epoch: str) -> dict[str, Any]:
    """The condition that the item's (the account's or its login's) password is still the one of `epoch` ("": the
    password the account was created with, whose item has no epoch)."""
    same = "password_epoch = :epoch"
    if epoch == "":
        same = f"({same} OR attribute_not_exists(password_epoch))"
    return {"ConditionExpression": f"{_EXISTS} AND {same}", "ExpressionAttributeValues": {":epoch": {"S": epoch}}}


def _revocation(table_name: str, account_id: str, listing: dict[str, Any], revoked_at: str) -> list[dict[str, Any]]:
    """The two updates that revoke a credential: its item (the one authentication reads) and its listing."""
    kind, prefix = listing["kind"], listing["prefix"]
    values = {":true": {"BOOL": True}, ":at": {"S": revoked_at}, ":account": {"S": account_id}}
    revoke = "SET revoked = :true, revoked_at = if_not_exists(revoked_at, :at)"
    return [
        {
            "Update": {
                "TableName": table_name,
                "Key": {"pk": {"S": f"CRED#{kind}#{listing['secret_hash']}"}, "sk": {"S": "CRED"}},
                "UpdateExpression": revoke,
                # The account check keeps an operator's typo from revoking another tenant's key.
                "ConditionExpression": "account_id = :account",
                "ExpressionAttributeValues": values,
            }
        },
        {
            "Update": {
                "TableName": table_name,
                "Key": {"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": f"CRED#{kind}#{prefix}"}},
                "UpdateExpression": revoke,
                "ConditionExpression": _EXISTS,
                "ExpressionAttributeValues": {":true": values[":true"], ":at": values[":at"]},
            }
        },
    ]


class DynamoAccountAdmin:
    """Implements ports.AccountAdmin; mixed into DynamoStore, so `client`, `table_name` and `_codec` are its."""

    client: Any
    table_name: str
    _codec: Any

    def _account_exists_check(self, account_id: str) -> dict[str, Any]:
        return {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": account_key(account_id),
                "ConditionExpression": _EXISTS,
            }
        }

    def _account_exists(self, account_id: str) -> bool:
        return "Item" in self.client.get_item(
            TableName=self.table_name, Key=account_key(account_id), ConsistentRead=True, ProjectionExpression="pk"
        )

    def _read_account(self, account_id: str) -> Account:
        found = self.client.get_item(TableName=self.table_name, Key=account_key(account_id), ConsistentRead=True).get(
            "Item"
        )
        if not found:
            raise NotFound(f"no account {account_id}")
        return Account.model_validate(self._codec.load(found))

    # ---------------------------------------------------------------- credentials

    def add_credential(
        self,
        account_id: str,
        kind: str,
        secret: str,
        *,
        created_at: str,
        created_by: str | None = None,
        password_epoch: str | None = None,
    ) -> CredentialInfo:
        origin = {"created_by": created_by} if created_by is not None else {}
        if password_epoch is not None:
            origin["password_epoch"] = password_epoch
        listing = credential_listing_item(account_id, kind, secret, created_at, origin=origin)
        credential = {
            "pk": f"CRED#{kind}#{listing['secret_hash']}",
            "sk": "CRED",
            "account_id": account_id,
            "kind": kind,
            "prefix": listing["prefix"],
            "created_at": created_at,
            **origin,
        }
        account_check = self._account_exists_check(account_id)
        if password_epoch is not None:
            # Made in the portal: only under the password its session signed in with, so a reset that revoked the
            # credentials of that password finds none made after it read them.
            account_check["ConditionCheck"] |= epoch_condition(password_epoch)
        account_refused, *credential_refused = transact_or_unavailable(
            self.client,
            [
                account_check,
                *(
                    {"Put": {"TableName": self.table_name, "Item": self._codec.dump(item), "ConditionExpression": _NEW}}
                    for item in (credential, listing)
                ),
            ],
            doing=f"adding a {kind} to account {account_id}",
        )
        if account_refused and password_epoch is not None and self._account_exists(account_id):
            raise Unauthorized("the account's password was reset: sign in again with the new one")
        if account_refused:
            raise NotFound(f"no account {account_id}")
        if any(credential_refused):
            raise Conflict(f"account {account_id} has a {kind} starting {listing['prefix']!r} already")
        return CredentialInfo.model_validate(listing)

    def list_credentials(self, account_id: str) -> list[CredentialInfo]:
        self._read_account(account_id)
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :cred)",
            "ExpressionAttributeValues": {":pk": {"S": f"ACC#{account_id}"}, ":cred": {"S": "CRED#"}},
            "ConsistentRead": True,
        }
        found: list[CredentialInfo] = []
        while True:
            answer = self.client.query(**query)
            found.extend(CredentialInfo.model_validate(self._codec.load(item)) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                return sorted(found, key=lambda info: (info.created_at, info.kind, info.prefix))
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def revoke_credential(self, account_id: str, kind: str, prefix: str, *, revoked_at: str) -> CredentialInfo:
        listing_key = {"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": f"CRED#{kind}#{prefix}"}}
        found = self.client.get_item(TableName=self.table_name, Key=listing_key, ConsistentRead=True).get("Item")
        if not found:
            raise NotFound(f"account {account_id} has no {kind} starting {prefix!r}")
        listing = self._codec.load(found)
        # A conflict with a send's write of the account item is tried again: only a condition says there is no such
        # credential (a token left valid while the operator reads "no token" would be the worst answer).
        refused = transact_or_unavailable(
            self.client,
            [self._account_exists_check(account_id), *_revocation(self.table_name, account_id, listing, revoked_at)],
            doing=f"revoking account {account_id}'s {kind} starting {prefix!r}",
        )
        if any(refused):
            raise NotFound(f"account {account_id} has no {kind} starting {prefix!r}")
        return CredentialInfo.model_validate(
            {**listing, "revoked": True, "revoked_at": listing.get("revoked_at") or revoked_at}
        )

    # ---------------------------------------------------------------- senders

    def add_sender(
        self, account_id: str, sender: str, *, inbound_upstreams: tuple[str, ...] | None = None
    ) -> SenderAdded:
        item = {**_sender_key(sender), "account_id": {"S": account_id}}
        if inbound_upstreams is not None:
            item["inbound_upstreams"] = {"L": [{"S": name} for name in inbound_upstreams]}
        released_by = sender_released_by(self.client, self.table_name, sender)
        carried = 0
        if released_by is not None and released_by != account_id:
            self._no_keyword_pending(released_by, account_id, sender)
            # Before the sender is the account's: no send from it here ever misses a number that said STOP to it.
            try:
                carried = carry_over_opt_outs(
                    self.client,
                    self.table_name,
                    released_by,
                    account_id,
                    sender,
                    # Each copy only while the release record still names it: not after another add-sender
                    # registered the sender (and its new owner took a copy back).
                    still_released=still_released_check(self.table_name, sender, released_by),
                )
            except TransactionUndecided as error:
                raise Unavailable(
                    f"adding sender {sender!r} to account {account_id}: not done, the opt-outs it keeps from account "
                    f"{released_by} are not all carried over yet ({error}); the sender is not the account's: run "
                    "the same command again to finish"
                ) from error
        sender_refused, account_refused, release_changed = transact_or_unavailable(
            self.client,
            [
                {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": _NEW}},
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": account_key(account_id),
                        "UpdateExpression": "SET senders = list_append(if_not_exists(senders, :empty), :new)",
                        "ConditionExpression": _EXISTS,
                        "ExpressionAttributeValues": {":empty": {"L": []}, ":new": {"L": [{"S": sender}]}},
                    }
                },
                self._release_taken(sender, released_by),
            ],
            doing=f"adding sender {sender!r} to account {account_id}",
        )
        if account_refused:
            raise NotFound(f"no account {account_id}")
        if sender_refused:
            raise self.sender_taken(sender)
        if release_changed:
            raise Conflict(f"sender {sender!r} was taken and released by another account meanwhile; try again")
        return SenderAdded(
            account=self._read_account(account_id), released_by=released_by, opt_outs_carried_over=carried
        )

    def _no_keyword_pending(self, released_by: str, account_id: str, sender: str) -> None:
        """A STOP / START to the sender whose callback failed is applied later (the notifier), under the account it
        was sent to only: copied now, its opt-outs would miss it. Once none is pending, none comes: while the sender
        is released nobody holds it, and an SMS to it is not taken."""
        pending = keywords_pending_to(self.client, self.table_name, released_by, sender)
        if pending:
            raise Unavailable(
                f"adding sender {sender!r} to account {account_id}: not done, a keyword to this sender is still being "
                f"applied to account {released_by} ({pending} STOP / START SMS whose opt-out change the notifier has "
                "yet to make); run again in a few minutes"
            )

    def _release_taken(self, sender: str, released_by: str | None) -> dict[str, Any]:
        """The end of the sender's release record as it is given to an account, conditional on its still naming the
        account whose opt-outs were carried over (none: on there still being none)."""
        if released_by is None:
            return unreleased_check(self.table_name, sender)
        return {
            "Delete": {"TableName": self.table_name, "Key": released_sender_key(sender), **names_releaser(released_by)}
        }

    def set_inbound_upstreams(
        self, account_id: str, sender: str, inbound_upstreams: tuple[str, ...] | None
    ) -> SenderRegistration:
        try:
            answer = self.client.update_item(**_inbound_update(self.table_name, account_id, sender, inbound_upstreams))
        except self.client.exceptions.ConditionalCheckFailedException as error:
            raise NotFound(f"sender {sender!r} is not registered to account {account_id}") from error
        return SenderRegistration.model_validate(self._codec.load(answer["Attributes"]))

    def pin_inbound_upstreams(self, account_id: str, sender: str, inbound_upstreams: tuple[str, ...]) -> bool:
        request = _inbound_update(self.table_name, account_id, sender, inbound_upstreams)
        # Never over a list an operator set, even one set since the caller looked.
        request["ConditionExpression"] += " AND attribute_not_exists(inbound_upstreams)"
        try:
            self.client.update_item(**request)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def accounts_following_routes(self) -> Iterator[str]:
        paginator = self.client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=self.table_name,
            FilterExpression="sk = :sender AND attribute_not_exists(inbound_upstreams)",
            ProjectionExpression="account_id",
            ExpressionAttributeValues={":sender": {"S": "SENDER"}},
            ConsistentRead=True,  # a number released a moment ago follows the routes, and must be found
        )
        seen: set[str] = set()
        for page in pages:
            for item in page.get("Items", []):
                account_id = item["account_id"]["S"]
                if account_id not in seen:
                    seen.add(account_id)
                    yield account_id

    def sender_taken(self, sender: str) -> Conflict:
        """The refusal of a sender another account holds, naming that account (an operator's answer only)."""
        owner = self.client.get_item(TableName=self.table_name, Key=_sender_key(sender), ConsistentRead=True)
        owner_id = owner.get("Item", {}).get("account_id", {}).get("S", "another account")
        return Conflict(f"sender {sender!r} is registered to account {owner_id}")

    def remove_sender(self, account_id: str, sender: str) -> Account:
        account = self._read_account(account_id)
        index = next((i for i, own in enumerate(account.senders) if same_sender(own, sender)), None)
        if index is None:
            raise NotFound(f"sender {sender!r} is not registered to account {account_id}")
        registry_refused, _, account_refused = transact_or_unavailable(
            self.client,
            [
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": _sender_key(sender),
                        "ConditionExpression": "account_id = :account",
                        "ExpressionAttributeValues": {":account": {"S": account_id}},
                    }
                },
                # Who released it, so the account given it next keeps the numbers that said STOP to it here.
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": {**released_sender_key(sender), "account_id": {"S": account_id}},
                    }
                },
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": account_key(account_id),
                        # A list element is removed by position: the condition makes sure it is still this one.
                        "UpdateExpression": f"REMOVE senders[{index}]",
                        "ConditionExpression": f"{_EXISTS} AND senders[{index}] = :sender",
                        "ExpressionAttributeValues": {":sender": {"S": account.senders[index]}},
                    }
                },
            ],
            doing=f"removing sender {sender!r} from account {account_id}",
        )
        if registry_refused:
            raise Conflict(f"sender {sender!r} is not owned by account {account_id} in the sender registry")
        if account_refused:
            raise Conflict(f"account {account_id} changed while removing {sender!r}; try again")
        return self._read_account(account_id)

    # ---------------------------------------------------------------- settings (credits: DynamoStore.top_up)

    def update_account(self, account_id: str, changes: AccountChanges) -> Account:
        values = changes.model_dump(include=set(_SETTABLE), exclude_none=True)
        names = {f"#{name}": name for name in (*values, *changes.clear)}
        clauses = []
        if values:
            clauses.append("SET " + ", ".join(f"#{name} = :{name}" for name in values))
        if changes.clear:
            clauses.append("REMOVE " + ", ".join(f"#{name}" for name in sorted(changes.clear)))
        if not clauses:
            return self._read_account(account_id)
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": account_key(account_id),
            "UpdateExpression": " ".join(clauses),
            "ConditionExpression": _EXISTS,
            "ExpressionAttributeNames": names,
            "ReturnValues": "ALL_NEW",
        }
        attribute_values = self._codec.dump({f":{name}": value for name, value in values.items()})
        epoch = changes.under_password_epoch
        conditions = [_EXISTS]
        if epoch is not None:
            condition = epoch_condition(epoch)
            conditions = [condition["ConditionExpression"]]
            attribute_values |= condition["ExpressionAttributeValues"]
        # What the change expects the account to hold still (None: nothing): each credential a rotation replaces
        # (its sealed value) and each webhook URL a portal form changes (as the page showed it).
        expected: list[tuple[str, str, str, str | None]] = [
            (name, f"#{name}.sealed", f":replacing_{name}", value) for name, value in sorted(changes.replacing.items())
        ]
        expected += [(name, f"#{name}", f":expecting_{name}", url) for name, url in sorted(changes.expecting.items())]
        for name, attribute, placeholder, value in expected:
            names[f"#{name}"] = name
            if value is None:
                conditions.append(f"attribute_not_exists(#{name})")
            else:
                conditions.append(f"{attribute} = {placeholder}")
                attribute_values[placeholder] = {"S": value}
        request["ConditionExpression"] = " AND ".join(conditions)
        if attribute_values:
            request["ExpressionAttributeValues"] = attribute_values
        try:
            answer = self.client.update_item(**request)
        except self.client.exceptions.ConditionalCheckFailedException as error:
            raise self._why_not_updated(account_id, changes) from error
        return Account.model_validate(self._codec.load(answer["Attributes"]))

    def _why_not_updated(self, account_id: str, changes: AccountChanges) -> GatewayError:
        """Which of update_account's conditions failed, as the error to answer."""
        account = self._read_account(account_id)  # NotFound when there is none
        if changes.under_password_epoch not in (None, account.password_epoch):
            return Unauthorized("the account's password was reset: sign in again with the new one")
        return urls_changed_meanwhile(account, changes) or rotated_meanwhile(account, changes)

    def reset_password(
        self,
        account_id: str,
        password: str,
        *,
        sessions_valid_from: datetime,
        replacing_epoch: str,
        revoke: Sequence[CredentialInfo] = (),
    ) -> Account:
        # Imported here: adapters.dynamodb imports this module to build DynamoStore.
        from sms_gateway.adapters.dynamodb import hash_password

        if len(revoke) > MOST_REVOKED_BY_A_RESET:
            # The caller revokes the rest after the reset (logic/accounts.reset_password): a programming error.
            raise ValueError(
                f"a reset revokes at most {MOST_REVOKED_BY_A_RESET} credentials with it, not {len(revoke)}"
            )
        revoked_at = iso(sessions_valid_from)
        revocations = [
            write
            for credential in revoke
            for write in _revocation(
                self.table_name,
                account_id,
                {"kind": credential.kind, "prefix": credential.prefix, "secret_hash": credential.secret_hash},
                revoked_at,
            )
        ]
        username = self.login_username(account_id)
        # The sessions of the old password carry the old epoch: this one ends them all, also those of a login that
        # checked the old password while this reset was being made.
        epoch = {":epoch": {"S": secrets.token_urlsafe(16)}}
        replacing = epoch_condition(replacing_epoch)
        # One transaction: the new password never works while the sessions of the old one still do, nor the reverse.
        refused = transact_or_unavailable(
            self.client,
            [
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": account_key(account_id),
                        "UpdateExpression": "SET sessions_valid_from = :valid_from, password_epoch = :new_epoch",
                        # The password read with the credentials to revoke is still the one replaced: a reset
                        # meanwhile (whose revocations these might miss) refuses this one.
                        "ConditionExpression": replacing["ConditionExpression"],
                        "ExpressionAttributeValues": {
                            ":valid_from": {"S": iso(sessions_valid_from)},
                            ":new_epoch": epoch[":epoch"],
                            **replacing["ExpressionAttributeValues"],
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": {"pk": {"S": f"LOGIN#{username}"}, "sk": {"S": _LOGIN_SK}},
                        # The sources that logged in with the old password are known no more.
                        "UpdateExpression": "SET password_hash = :hash, password_epoch = :epoch REMOVE known_sources",
                        "ConditionExpression": "account_id = :account",
                        "ExpressionAttributeValues": {
                            ":hash": {"S": hash_password(password)},
                            ":account": {"S": account_id},
                            **epoch,
                        },
                    }
                },
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": self._codec.dump(login_listing_item(account_id, username)),
                        "ConditionExpression": f"{_NEW} OR username = :username",
                        "ExpressionAttributeValues": {":username": {"S": username}},
                    }
                },
                *revocations,
            ],
            doing=f"resetting the password of account {account_id}",
        )
        if any(refused):
            raise NotFound(f"no account {account_id}, or its password or login changed meanwhile: try again")
        return self._read_account(account_id)

    def login_username(self, account_id: str) -> str:
        """The account's /login username: from its pointer, or, for an account created before pointers (2026-12-05),
        from the one login item that names it, found by a Scan of the table (once: the reset writes the pointer)."""
        pointer = self.client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": _LOGIN_SK}},
            ConsistentRead=True,
        ).get("Item")
        if pointer:
            return str(pointer["username"]["S"])
        pages = self.client.get_paginator("scan").paginate(
            TableName=self.table_name,
            FilterExpression="sk = :login AND begins_with(pk, :prefix) AND account_id = :account",
            ExpressionAttributeValues={
                ":login": {"S": _LOGIN_SK},
                ":prefix": {"S": "LOGIN#"},
                ":account": {"S": account_id},
            },
            ConsistentRead=True,
        )
        for page in pages:
            for item in page.get("Items", []):
                return str(item["pk"]["S"]).removeprefix("LOGIN#")
        raise NotFound(f"account {account_id} has no /login username")

    def accounts_with_plain_webhook_credentials(self) -> Iterator[Account]:
        """Accounts written before the webhook credentials were sealed: their token or secret is a string attribute.
        A Scan of the whole table (the accounts have no index of their own): an operator's one-off, about 0.5 read
        units per 4 KB of table."""
        paginator = self.client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=self.table_name,
            FilterExpression="sk = :account"
            " AND (attribute_type(webhook_token, :s) OR attribute_type(webhook_secret, :s))",
            ExpressionAttributeValues={":account": {"S": _ACCOUNT_SK}, ":s": {"S": "S"}},
        )
        for page in pages:
            for item in page.get("Items", []):
                yield Account.model_validate(self._codec.load(item))

    def seal_plain_credential(self, account_id: str, name: str, plain: str, sealed: SealedSecret) -> bool:
        """Replaces one webhook credential stored in plain text with the same secret sealed, only while the stored
        value is still that plain text (a rotation meanwhile wins). False when it was not."""
        if name not in ("webhook_token", "webhook_secret"):
            raise ValueError(f"{name} is not a webhook credential")
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=account_key(account_id),
                UpdateExpression="SET #name = :sealed",
                ConditionExpression="#name = :plain",
                ExpressionAttributeNames={"#name": name},
                ExpressionAttributeValues=self._codec.dump(
                    {":sealed": sealed.model_dump(mode="json"), ":plain": plain}
                ),
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # ---------------------------------------------------------------- prices

    def set_price(self, tier: str, network: str, credits: int) -> PriceTable:
        key = {"pk": {"S": "CONFIG"}, "sk": {"S": "PRICES"}}
        names = {"#tier": tier, "#network": network}
        # One cell at a time, so two operators pricing different routes never overwrite each other. A nested
        # path needs its parents to exist, and one update may not touch a path and its parent: three steps.
        self.client.update_item(
            TableName=self.table_name,
            Key=key,
            UpdateExpression="SET prices = if_not_exists(prices, :empty)",
            ExpressionAttributeValues={":empty": {"M": {}}},
        )
        self.client.update_item(
            TableName=self.table_name,
            Key=key,
            UpdateExpression="SET prices.#tier = if_not_exists(prices.#tier, :empty)",
            ExpressionAttributeNames={"#tier": tier},
            ExpressionAttributeValues={":empty": {"M": {}}},
        )
        answer = self.client.update_item(
            TableName=self.table_name,
            Key=key,
            UpdateExpression="SET prices.#tier.#network = :credits",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":credits": {"N": str(credits)}},
            ReturnValues="ALL_NEW",
        )
        return PriceTable.model_validate(self._codec.load(answer["Attributes"]))
