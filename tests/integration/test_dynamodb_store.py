"""DynamoStore against moto: credentials, credits, batches and messages, conditional status writes, claims."""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sms_gateway.adapters.dynamodb import DynamoStore, message_sk, messages_pk
from sms_gateway.domain.ids import message_id_at, new_batch_id, new_id
from sms_gateway.domain.models import Account, Batch, Claim, ClaimOutcome, Credentials, Message, MessageKey, iso
from sms_gateway.domain.status import MessageStatus, allowed_previous
from sms_gateway.errors import Conflict, InsufficientCredits
from sms_gateway.logic.accounts import issue_credentials
from sms_gateway.ports import PasswordLogin
from tests.integration.conftest import moto_table

NOW = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
STATUSES = list(MessageStatus)


# ---------------------------------------------------------------------------------------------- helpers


def new_account(*, credits: int = 100, senders: tuple[str, ...] = ()) -> tuple[Account, Credentials]:
    account_id = str(new_id())
    account = Account(
        account_id=account_id,
        name=f"Account {account_id}",
        credits=credits,
        senders=senders,
        webhook_token="whk_" + account_id,
        created_at=iso(NOW),
    )
    return account, issue_credentials(f"user-{account_id}")


def new_batch(
    account_id: str,
    count: int,
    *,
    status: MessageStatus = MessageStatus.QUEUED,
    created_at: datetime = NOW,
    reference_id: int | None = None,
) -> tuple[Batch, list[Message]]:
    reference_id = reference_id or new_id()
    batch = Batch(
        reference_id=reference_id,
        account_id=account_id,
        sender="48974",
        text="Hello",
        encoding="GSM",
        parts=1,
        recipients=count,
        cost=count,
        status=status,
        created_at=iso(created_at),
    )
    messages = [
        Message(
            message_id=new_id(),
            reference_id=reference_id,
            account_id=account_id,
            msisdn=f"+234802{i:07d}",
            telco="mtn",
            sender="48974",
            text="Hello",
            encoding="GSM",
            parts=1,
            price=1,
            status=status,
            created_at=iso(created_at),
        )
        for i in range(count)
    ]
    return batch, messages


def one_message(store: DynamoStore, status: MessageStatus, account_id: str | None = None) -> Message:
    batch, messages = new_batch(account_id or str(new_id()), 1, status=status)
    store.create_batch(batch, messages)
    return messages[0]


def raw_item(store: DynamoStore, pk: str, sk: str) -> dict[str, Any] | None:
    return store.client.get_item(
        TableName=store.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
    ).get("Item")


def message_item_key(key: MessageKey) -> dict[str, dict[str, str]]:
    return {"pk": {"S": messages_pk(key.account_id, key.reference_id)}, "sk": {"S": message_sk(key.message_id)}}


def raw_message(store: DynamoStore, key: MessageKey) -> dict[str, Any] | None:
    return raw_item(store, messages_pk(key.account_id, key.reference_id), message_sk(key.message_id))


def scan_all(store: DynamoStore) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in store.client.get_paginator("scan").paginate(TableName=store.table_name):
        items.extend(page["Items"])
    return items


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside a DynamoDB attribute value (S, N, SS, L, M, ...)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from strings_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from strings_in(inner)


def balance(store: DynamoStore, account_id: str) -> int:
    found = store.get_account(account_id)
    assert found is not None
    return found.credits


def claim(store: DynamoStore, key: MessageKey, now: datetime = NOW) -> bool:
    """True when this caller now holds the message: a fresh claim, or one taken over after a lapsed lease."""
    return store.claim_for_dispatch(key, now=now, lease_seconds=120).outcome in (
        ClaimOutcome.CLAIMED,
        ClaimOutcome.ABANDONED,
    )


@pytest.fixture
def store(aws: dict[str, str]) -> DynamoStore:
    from sms_gateway.bootstrap import gateway

    found = gateway().store
    assert isinstance(found, DynamoStore)
    return found


@pytest.fixture(scope="class")
def shared_store() -> Iterator[DynamoStore]:
    """One moto table for a class of many small tests (each uses its own keys); much faster than `aws`."""
    with moto_table("matrix") as store:
        yield store


# ---------------------------------------------------------------------------------------------- accounts


def test_credentials_find_their_account_and_wrong_secrets_find_nothing(store):
    # Given an account created with a token and an API key
    account, credentials = new_account()
    other, other_credentials = new_account()
    store.create_account(account, credentials)
    store.create_account(other, other_credentials)
    # When each credential is looked up under its kind
    # Then it finds its own account
    assert store.account_id_for_credential("token", credentials.token) == account.account_id
    assert store.account_id_for_credential("apikey", credentials.apikey) == account.account_id
    assert store.account_id_for_credential("token", other_credentials.token) == other.account_id
    # And a wrong secret, or a right secret under the other kind, finds nothing
    assert store.account_id_for_credential("token", credentials.token + "x") is None
    assert store.account_id_for_credential("token", credentials.token[:-1]) is None
    assert store.account_id_for_credential("apikey", "0" * len(credentials.apikey)) is None
    assert store.account_id_for_credential("apikey", credentials.token) is None
    assert store.account_id_for_credential("token", credentials.apikey) is None
    # And the account reads back as it was stored
    assert store.get_account(account.account_id) == account


def test_no_secret_is_stored_in_the_clear(store):
    # Given an account with a token, an API key and a password
    account, credentials = new_account(senders=("48974",))
    store.create_account(account, credentials)
    # When every item of the table is read
    items = scan_all(store)
    # Then the account, both credentials, its sender and its login were written
    keys = {(item["pk"]["S"], item["sk"]["S"]) for item in items}
    token_hash = hashlib.sha256(credentials.token.encode()).hexdigest()
    apikey_hash = hashlib.sha256(credentials.apikey.encode()).hexdigest()
    assert {
        (f"ACC#{account.account_id}", "ACCOUNT"),
        (f"CRED#token#{token_hash}", "CRED"),
        (f"CRED#apikey#{apikey_hash}", "CRED"),
        ("SENDER#48974", "SENDER"),
        (f"LOGIN#{credentials.username}", "LOGIN"),
    } <= keys
    # And no attribute value anywhere contains the token, the API key or the password
    for item in items:
        for value in strings_in(item):
            for secret in (credentials.token, credentials.apikey, credentials.password):
                assert secret not in value, f"a secret is stored in the clear in {item['pk']['S']}"
    # And the login keeps an scrypt hash that is not the password
    login = raw_item(store, f"LOGIN#{credentials.username}", "LOGIN")
    assert login is not None
    assert login["password_hash"]["S"].startswith("scrypt$")


def test_login_needs_the_right_password_of_a_known_user(store):
    # Given an account with a username and password
    account, credentials = new_account()
    store.create_account(account, credentials)
    # Then the right password finds the account
    assert store.password_login(credentials.username, credentials.password) == PasswordLogin(account.account_id, "")
    # And a wrong password, an empty one, or an unknown user finds nothing
    assert store.password_login(credentials.username, credentials.password + "x") is None
    assert store.password_login(credentials.username, "") is None
    assert store.password_login("nobody-" + credentials.username, credentials.password) is None


def test_an_unknown_username_costs_the_same_key_derivations_as_a_wrong_password(store, monkeypatch):
    import hashlib

    # Given an account with a username and password, and one unknown username already tried
    account, credentials = new_account()
    store.create_account(account, credentials)
    store.password_login("nobody-" + credentials.username, "guess")
    derivations: list[int] = []
    scrypt = hashlib.scrypt

    def counted(*args, **kwargs):
        derivations.append(1)
        return scrypt(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    # When a wrong password is tried for the known username, then for another unknown one
    assert store.password_login(credentials.username, "guess") is None
    for_known = len(derivations)
    assert store.password_login("someone-" + credentials.username, "guess") is None
    # Then both cost one derivation, so the time taken does not tell which usernames exist
    assert (for_known, len(derivations) - for_known) == (1, 1)


@pytest.mark.parametrize("clash", ["username", "sender"])
def test_an_account_whose_username_or_sender_is_taken_is_not_created_at_all(store, clash):
    # Given an account that holds a username and a sender
    first, first_credentials = new_account(senders=("48974",))
    store.create_account(first, first_credentials)
    before = scan_all(store)
    # When a second account asks for the same username (or sender) with everything else new
    second, second_credentials = new_account(senders=("48974",) if clash == "sender" else ("55555",))
    if clash == "username":
        second_credentials = second_credentials.model_copy(update={"username": first_credentials.username})
    # Then it is refused as a conflict that names what is taken (and, for a sender, its owner, as add-sender does)
    taken = {
        "username": f"username {first_credentials.username!r} is taken by another account",
        "sender": f"sender '48974' is registered to account {first.account_id}",
    }[clash]
    with pytest.raises(Conflict, match=re.escape(taken)) as refused:
        store.create_account(second, second_credentials)
    # And nothing else is named: not the free sender, nor the owner of a taken username
    assert "55555" not in str(refused.value)
    assert clash == "sender" or "registered to" not in str(refused.value)
    # And nothing of it was written: the table is exactly as before
    after = scan_all(store)
    assert sorted(map(repr, after)) == sorted(map(repr, before))
    assert store.get_account(second.account_id) is None
    assert store.account_id_for_credential("token", second_credentials.token) is None
    assert store.account_id_for_credential("apikey", second_credentials.apikey) is None
    # And the first account keeps its name and sender
    login = (first_credentials.username, first_credentials.password)
    assert store.password_login(*login) == PasswordLogin(first.account_id, "")
    assert store.account_id_for_sender("48974") == first.account_id


@pytest.mark.parametrize("scheduled_ahead", [None, timedelta(days=60)], ids=["sent-at-once", "scheduled-past-it"])
def test_batch_and_message_items_expire_the_retention_period_after_they_go_out(aws, monkeypatch, scheduled_ahead):
    # Given a store configured to keep records 30 days
    from sms_gateway import bootstrap

    monkeypatch.setenv("MESSAGE_RETENTION_DAYS", "30")
    bootstrap.reset()
    store = bootstrap.gateway().store
    created = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    account_id = str(new_id())
    batch, messages = new_batch(account_id, 30, created_at=created)
    goes_out = created
    if scheduled_ahead is not None:
        # (a batch scheduled further ahead than the retention)
        goes_out = created + scheduled_ahead
        batch = batch.model_copy(update={"status": MessageStatus.SCHEDULED, "send_at": iso(goes_out)})
        messages = [
            m.model_copy(update={"status": MessageStatus.SCHEDULED, "send_at": iso(goes_out)}) for m in messages
        ]
    # When a batch is created, and a retry adds the messages its first request had not stored
    store.create_batch(batch, messages[:20])
    store.add_messages(batch, messages[20:])
    # Then the batch and every message carry an epoch-seconds TTL 30 days after it goes out (its creation, or its
    # send time: never deleted before its schedule releases it)
    expected = int((goes_out + timedelta(days=30)).timestamp())
    batch_item = raw_item(store, f"ACC#{account_id}", f"BATCH#{batch.reference_id:019d}")
    assert batch_item is not None
    assert int(batch_item["expires_at"]["N"]) == expected
    for message in messages:
        item = raw_message(store, message.key)
        assert item is not None
        assert int(item["expires_at"]["N"]) == expected


class TestOnASharedTable:
    """Tests that each use their own keys share one moto table (far faster than a fresh `aws` each)."""

    @pytest.fixture
    def store(self, shared_store: DynamoStore) -> DynamoStore:
        return shared_store

    # ------------------------------------------------------------------------------------ credits

    def test_reserve_takes_credits_never_below_zero_and_refund_gives_back(self, store):
        # Given an account with 100 credits
        account, credentials = new_account(credits=100)
        store.create_account(account, credentials)
        # When 30 are reserved, the new balance is stored (and read consistently)
        store.reserve_credits(account.account_id, 30)
        assert balance(store, account.account_id) == store.balance(account.account_id) == 70
        # When more than the balance is asked, it is refused and the balance is unchanged
        with pytest.raises(InsufficientCredits):
            store.reserve_credits(account.account_id, 71)
        assert balance(store, account.account_id) == 70
        # When exactly the balance is asked, it goes to zero and no further
        store.reserve_credits(account.account_id, 70)
        with pytest.raises(InsufficientCredits):
            store.reserve_credits(account.account_id, 1)
        assert balance(store, account.account_id) == 0
        # When credits are refunded, they come back
        store.refund_credits(account.account_id, 12)
        assert balance(store, account.account_id) == 12

    def test_concurrent_reserves_never_overdraw(self, store):
        # moto races concurrent conditional updates inside itself (17 of 20 "succeeded" in a trial);
        # the `aws` fixture serialises DynamoDB's writes as DynamoDB does, so this checks the adapter's write.
        # Given an account with 100 credits and 20 threads that each want 10 at the same moment
        account, credentials = new_account(credits=100)
        store.create_account(account, credentials)
        start = threading.Barrier(20)
        taken: list[int] = []
        refused: list[InsufficientCredits] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def reserve() -> None:
            start.wait()
            try:
                store.reserve_credits(account.account_id, 10)
            except InsufficientCredits as error:
                with lock:
                    refused.append(error)
            except BaseException as error:
                with lock:
                    errors.append(error)
            else:
                with lock:
                    taken.append(10)

        threads = [threading.Thread(target=reserve) for _ in range(20)]
        # When they all reserve
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        # Then exactly 10 succeed and the rest are refused
        assert errors == []
        assert len(taken) == 10
        assert len(refused) == 10
        # And the balance is zero, never negative
        assert balance(store, account.account_id) == 0

    # ------------------------------------------------------------------------------------ batches

    def test_a_large_batch_is_stored_whole_and_read_back_in_pages(self, store):
        # Given a batch of 260 messages (more than one BatchWriteItem of 25)
        account_id = str(new_id())
        batch, messages = new_batch(account_id, 260)
        shuffled = random.Random(7).sample(messages, len(messages))
        store.create_batch(batch, shuffled)
        # When its messages are listed 100 at a time, following the cursor
        pages: list[list[Message]] = []
        cursor: str | None = None
        while True:
            page, cursor = store.list_messages(account_id, batch.reference_id, limit=100, cursor=cursor)
            pages.append(page)
            if cursor is None:
                break
            assert isinstance(cursor, str)
            assert len(pages) < 10, "the cursor never ends"
        # Then there are three pages of 100, 100 and 60
        assert [len(page) for page in pages] == [100, 100, 60]
        # And every message comes once, in message id order, as it was stored
        listed = [message for page in pages for message in page]
        assert [m.message_id for m in listed] == sorted(m.message_id for m in messages)
        assert listed == sorted(messages, key=lambda m: m.message_id)
        # And the batch reads back as stored; another account's lookup of it finds nothing
        assert store.get_batch(account_id, batch.reference_id) == batch
        assert store.get_batch(str(new_id()), batch.reference_id) is None
        assert store.list_messages(str(new_id()), batch.reference_id) == ([], None)

    def test_get_messages_fetches_more_than_one_batch_get_of_100(self, store):
        # Given a stored batch of 260 messages
        account_id = str(new_id())
        batch, messages = new_batch(account_id, 260)
        store.create_batch(batch, messages)
        # When 150 of them are asked for, out of order
        wanted = random.Random(3).sample(messages, 150)
        found = store.get_messages(account_id, batch.reference_id, [m.message_id for m in wanted])
        # Then exactly those 150 come back, in id order
        assert found == sorted(wanted, key=lambda m: m.message_id)
        # And ids that are not in the batch, or the batch under another account, give nothing
        assert store.get_messages(account_id, batch.reference_id, [new_id()]) == []
        assert store.get_messages(str(new_id()), batch.reference_id, [m.message_id for m in wanted[:5]]) == []

    def test_a_reference_id_is_created_once(self, store):
        # Given a stored batch
        account_id = str(new_id())
        batch, messages = new_batch(account_id, 3)
        store.create_batch(batch, messages)
        # When another batch with the same reference id is created
        again, other_messages = new_batch(
            account_id, 2, reference_id=batch.reference_id, status=MessageStatus.SCHEDULED
        )
        # Then it is refused as a conflict
        with pytest.raises(Conflict):
            store.create_batch(again, other_messages)
        # And the first batch and its messages are untouched, and none of the second's were written
        assert store.get_batch(account_id, batch.reference_id) == batch
        listed, _ = store.list_messages(account_id, batch.reference_id)
        assert listed == messages

    # ------------------------------------------------------------------------------------ transitions

    def test_transition_of_an_unknown_message_is_none(self, store):
        key = MessageKey(account_id=str(new_id()), reference_id=new_id(), message_id=new_id())
        assert store.transition(key, MessageStatus.SUBMITTED, now=NOW) is None
        assert raw_message(store, key) is None

    def test_each_change_counts_and_keeps_its_time(self, store):
        # Given a queued message
        message = one_message(store, MessageStatus.QUEUED)
        # When it is submitted and then delivered
        submitted_at, delivered_at = NOW + timedelta(seconds=1), NOW + timedelta(seconds=5)
        first = store.transition(message.key, MessageStatus.SUBMITTED, now=submitted_at)
        second = store.transition(
            message.key, MessageStatus.DELIVERED, now=delivered_at, reported_at="2025-03-14T09:27:00Z"
        )
        # Then each write moved it, counted one more change and kept its time
        assert first is not None and first.changed
        assert first.message.sequence == 1
        assert second is not None and second.changed
        assert second.message.status == MessageStatus.DELIVERED
        assert second.message.sequence == 2
        assert second.message.status_at == {"submitted": iso(submitted_at), "delivered": iso(delivered_at)}
        assert second.message.reported_at == "2025-03-14T09:27:00Z"
        # And a duplicate report changes nothing
        third = store.transition(message.key, MessageStatus.DELIVERED, now=NOW + timedelta(seconds=9))
        assert third is not None and not third.changed
        assert third.message == second.message

    def test_the_first_upstream_id_wins_and_finds_the_message(self, store):
        # Given a queued message
        message = one_message(store, MessageStatus.QUEUED)
        # When it is submitted to one upstream, and a report names another upstream id
        submitted = store.transition(
            message.key, MessageStatus.SUBMITTED, now=NOW, upstream="simulator", upstream_message_id="up-1"
        )
        delivered = store.transition(
            message.key,
            MessageStatus.DELIVERED,
            now=NOW + timedelta(seconds=2),
            upstream="other",
            upstream_message_id="up-2",
        )
        # Then both writes moved it, and it keeps the first upstream and id
        assert submitted is not None and submitted.changed
        assert delivered is not None and delivered.changed
        assert (delivered.message.upstream, delivered.message.upstream_message_id) == ("simulator", "up-1")
        item = raw_message(store, message.key)
        assert item is not None
        assert item["upstream_message_id"]["S"] == "up-1"

    def test_a_failed_transition_returns_the_current_message(self, store):
        # Given a delivered message
        message = one_message(store, MessageStatus.DELIVERED)
        # When a late `submitted` arrives with an error code and upstream id
        change = store.transition(
            message.key,
            MessageStatus.SUBMITTED,
            now=NOW,
            upstream="x",
            upstream_message_id="y",
            error_code="E1",
        )
        # Then it did not move the message, and nothing of it was written
        assert change is not None and not change.changed
        assert change.message == message

    # ------------------------------------------------------------------------------------ claims

    def test_only_a_queued_message_can_be_claimed(self, store):
        account_id = str(new_id())
        for status in MessageStatus:
            message = one_message(store, status, account_id)
            assert claim(store, message.key) is (status == MessageStatus.QUEUED), status
        # And a message that does not exist cannot be claimed (nor is it created)
        missing = MessageKey(account_id=account_id, reference_id=new_id(), message_id=new_id())
        assert claim(store, missing) is False
        assert raw_message(store, missing) is None

    def test_a_claim_holds_until_released_or_lapsed(self, store):
        # Given a queued message claimed with a 120-second lease
        message = one_message(store, MessageStatus.QUEUED)
        assert claim(store, message.key)
        # Then a second claim while the lease runs fails
        assert not claim(store, message.key)
        assert not claim(store, message.key, NOW + timedelta(seconds=119))
        # When the claim is released, a claim succeeds again
        store.release_claim(message.key)
        item = raw_message(store, message.key)
        assert item is not None and "claim_until" not in item
        assert claim(store, message.key)
        assert not claim(store, message.key)
        # And once the lease has lapsed, a claim succeeds without a release
        assert claim(store, message.key, NOW + timedelta(seconds=121))
        assert not claim(store, message.key, NOW + timedelta(seconds=122))
        # And the message itself is still queued and unchanged in status
        found = store.get_messages(message.account_id, message.reference_id, [message.message_id])
        assert [m.status for m in found] == [MessageStatus.QUEUED]

    def test_a_released_claim_counts_an_attempt_unless_the_message_was_never_offered(self, store):
        # Given a queued message claimed twice, released after an upstream failure and after our own throttle
        message = one_message(store, MessageStatus.QUEUED)
        assert claim(store, message.key)
        store.release_claim(message.key)
        assert claim(store, message.key)
        store.release_claim(message.key, attempted=False)
        assert claim(store, message.key)
        store.release_claim(message.key)
        # Then the message counts the two attempts an upstream did not take, and is free to claim
        (found,) = store.get_messages(message.account_id, message.reference_id, [message.message_id])
        assert (found.submit_attempts, found.status) == (2, MessageStatus.QUEUED)
        assert "claim_until" not in raw_message(store, message.key)

    def test_a_throttled_release_counts_a_throttle_not_an_attempt(self, store):
        # Given a queued message (stored without a throttle count) whose upstream throttled it twice
        message = one_message(store, MessageStatus.QUEUED)
        assert "submit_throttles" not in raw_message(store, message.key)
        for _ in range(2):
            assert claim(store, message.key)
            store.release_claim(message.key, attempted=False, throttled=True)
        # Then the throttles are counted and no attempt is, and the message is free to claim
        (found,) = store.get_messages(message.account_id, message.reference_id, [message.message_id])
        assert (found.submit_throttles, found.submit_attempts, found.status) == (2, 0, MessageStatus.QUEUED)
        assert claim(store, message.key)

    def test_a_released_claim_can_say_which_upstream_may_have_the_message(self, store):
        # Given a queued message whose submit got no answer from a deduplicating upstream, then a plain failure
        message = one_message(store, MessageStatus.QUEUED)
        assert claim(store, message.key)
        store.release_claim(message.key, maybe_taken_by="ninebits")
        assert claim(store, message.key)
        store.release_claim(message.key)
        # Then the same writes that count the attempts keep the upstream that may have it
        (found,) = store.get_messages(message.account_id, message.reference_id, [message.message_id])
        assert (found.maybe_taken_by, found.submit_attempts, found.status) == ("ninebits", 2, MessageStatus.QUEUED)
        assert "claim_until" not in raw_message(store, message.key)

    def test_a_dispatch_records_failures_are_counted_per_record(self, store):
        assert [store.count_record_failure("rec-1", delivery=str(n), now=NOW) for n in (1, 2, 3)] == [1, 2, 3]
        assert store.count_record_failure("rec-2", delivery="1", now=NOW) == 1

    def test_a_failure_counted_again_for_the_same_delivery_counts_once(self, store):
        # Given a record's failure in its 4th delivery, counted (the write applied, its answer lost)
        assert store.count_record_failure("rec-lost-answer", delivery="4", now=NOW) == 1
        # When botocore sends the same write again, then the record is still at one failure, not parked one early
        assert store.count_record_failure("rec-lost-answer", delivery="4", now=NOW) == 1
        assert store.count_record_failure("rec-lost-answer", delivery="7", now=NOW) == 2

    def test_failures_a_previous_build_counted_on_a_record_still_count(self, store):
        # Given a record whose two failures a build before the delivery set counted (`failures`, ADD 1)
        store.client.update_item(
            TableName=store.table_name,
            Key={"pk": {"S": "DISPATCH_FAILURES#rec-9"}, "sk": {"S": "RECORD"}},
            UpdateExpression="ADD failures :two",
            ExpressionAttributeValues={":two": {"N": "2"}},
        )
        # When it fails again after the deploy, then that is its third failure
        assert store.count_record_failure("rec-9", delivery="5", now=NOW) == 3

    def test_releasing_a_claim_does_not_touch_a_message_that_moved_on(self, store):
        # Given a message that was claimed and then submitted
        message = one_message(store, MessageStatus.QUEUED)
        assert claim(store, message.key)
        store.transition(message.key, MessageStatus.SUBMITTED, now=NOW)
        before = raw_message(store, message.key)
        # When a late release arrives
        store.release_claim(message.key)
        # Then nothing changes
        assert raw_message(store, message.key) == before


# ---------------------------------------------------------------------------------------------- login places


SOURCE = "203.0.113.7"


def begin_login(
    store: DynamoStore,
    at: datetime,
    *,
    max_in_flight: int = 2,
    max_failures: int = 3,
    source: str = SOURCE,
    known_source: bool = False,
    username: str = "ada",
    window: int = 7,
) -> Any:
    return store.begin_login_attempt(
        username,
        window,
        source=source,
        known_source=known_source,
        max_failures=max_failures,
        max_in_flight=max_in_flight,
        started_at=at,
        stale_before=at - timedelta(seconds=60),
        expires_at=at + timedelta(hours=1),
    )


def test_logins_in_flight_each_take_a_place_and_give_it_back(store):
    from sms_gateway.ports import LoginAttempt, LoginRefusal

    # Given two places, both taken
    first, second = begin_login(store, NOW), begin_login(store, NOW)
    assert isinstance(first, LoginAttempt) and isinstance(second, LoginAttempt)
    assert {first.place, second.place} == {0, 1}
    # Then a third is busy (not locked out), until one of them ends
    assert begin_login(store, NOW) == LoginRefusal.BUSY
    store.end_login_attempt("ada", 7, first, source=SOURCE, failed=False)
    assert isinstance(begin_login(store, NOW), LoginAttempt)


def test_a_login_whose_place_was_taken_over_as_stale_leaves_the_new_one_there_and_still_counts_its_failure(store):
    from sms_gateway.ports import LoginAttempt, LoginRefusal

    # Given a login that took the only place and was not heard of for over a minute, then taken over
    stale = begin_login(store, NOW - timedelta(seconds=61), max_in_flight=1)
    fresh = begin_login(store, NOW, max_in_flight=1)
    assert isinstance(stale, LoginAttempt) and isinstance(fresh, LoginAttempt) and fresh.place == stale.place
    # When the stale one ends after all, with a wrong password
    store.end_login_attempt("ada", 7, stale, source=SOURCE, failed=True)
    # Then the new one still holds its place, and the failure counts towards the lockout
    assert begin_login(store, NOW, max_in_flight=1) == LoginRefusal.BUSY
    store.end_login_attempt("ada", 7, fresh, source=SOURCE, failed=True)
    store.end_login_attempt("ada", 7, begin_login(store, NOW, max_in_flight=1), source=SOURCE, failed=True)
    assert begin_login(store, NOW, max_in_flight=1) == LoginRefusal.LOCKED_OUT


def test_failures_count_for_their_source_and_for_the_username(store):
    from sms_gateway.ports import LoginAttempt, LoginRefusal

    # Given as many failures from one source as the limit
    for _ in range(3):
        store.end_login_attempt("ada", 7, begin_login(store, NOW), source=SOURCE, failed=True)
    # Then that source is locked out, known or not
    for known in (False, True):
        assert begin_login(store, NOW, known_source=known) == LoginRefusal.LOCKED_OUT
    # And another source is locked out unless the username knows it
    assert begin_login(store, NOW, source="192.0.2.1") == LoginRefusal.LOCKED_OUT_TO_UNKNOWN_SOURCES
    known = begin_login(store, NOW, source="192.0.2.1", known_source=True)
    assert isinstance(known, LoginAttempt)
    # And a known source's own failures stop it in turn
    store.end_login_attempt("ada", 7, known, source="192.0.2.1", failed=True)
    for _ in range(2):
        store.end_login_attempt(
            "ada", 7, begin_login(store, NOW, source="192.0.2.1", known_source=True), source="192.0.2.1", failed=True
        )
    assert begin_login(store, NOW, source="192.0.2.1", known_source=True) == LoginRefusal.LOCKED_OUT


def test_clearing_a_usernames_failed_logins_forgets_every_window_and_source_and_no_other_username(store):
    from sms_gateway.ports import LoginAttempt, LoginRefusal

    def fail(username: str = "ada", window: int = 7, source: str = SOURCE) -> None:
        attempt = begin_login(store, NOW, username=username, window=window, source=source)
        assert isinstance(attempt, LoginAttempt), attempt
        store.end_login_attempt(username, window, attempt, source=source, failed=True)

    # Given failures in two windows, from two sources, and a login in flight; and another username's failures
    for window in (6, 7):
        for source in (SOURCE, "192.0.2.1"):
            fail(window=window, source=source)
    in_flight = begin_login(store, NOW)
    fail()
    assert begin_login(store, NOW, source="192.0.2.9") == LoginRefusal.LOCKED_OUT_TO_UNKNOWN_SOURCES
    for _ in range(3):
        fail("bob")
    # When they are cleared
    assert store.clear_login_failures("ada") == 2
    # Then every source may try again, with all its failures; the login in flight ends uncounted
    store.end_login_attempt("ada", 7, in_flight, source=SOURCE, failed=True)
    for _ in range(3):
        fail()
    assert begin_login(store, NOW) == LoginRefusal.LOCKED_OUT
    # And the other username is still locked out; a username without failures has nothing to clear
    assert begin_login(store, NOW, username="bob") == LoginRefusal.LOCKED_OUT
    assert store.clear_login_failures("nobody") == 0


def test_a_source_is_known_after_a_login_until_it_is_forgotten_or_the_password_is_reset(store):
    from sms_gateway_tools import admin

    account = admin.create_account(name="Ada", senders=["ADA"], credits=0)
    username, password = account["username"], account["password"]
    login = store.password_login(username, password, source=SOURCE)
    assert login is not None and login.source_seen_at is None
    assert not store.login_source_known(username, SOURCE, since=NOW - timedelta(days=30))
    # When it is remembered
    store.remember_login_source(
        username, SOURCE, password_epoch=login.password_epoch, at=NOW, forget_before=NOW - timedelta(days=30), most=2
    )
    # Then it is known since then, and the login's check says when
    assert store.login_source_known(username, SOURCE, since=NOW - timedelta(days=30))
    assert not store.login_source_known(username, SOURCE, since=NOW + timedelta(seconds=1))
    assert not store.login_source_known(username, "192.0.2.1", since=NOW - timedelta(days=30))
    again = store.password_login(username, password, source=SOURCE)
    assert again is not None and again.source_seen_at == NOW.replace(microsecond=0)
    # And only the latest are kept
    for n, other in enumerate(("192.0.2.1", "192.0.2.2"), start=1):
        store.remember_login_source(
            username,
            other,
            password_epoch=login.password_epoch,
            at=NOW + timedelta(minutes=n),
            forget_before=NOW - timedelta(days=30),
            most=2,
        )
    assert not store.login_source_known(username, SOURCE, since=NOW - timedelta(days=30))
    # When the password is reset, every source is forgotten, and a login that checked the old one remembers none
    admin.reset_password(account_id=account["account_id"])
    assert not store.login_source_known(username, "192.0.2.2", since=NOW - timedelta(days=30))
    store.remember_login_source(
        username, SOURCE, password_epoch=login.password_epoch, at=NOW, forget_before=NOW - timedelta(days=30), most=2
    )
    assert not store.login_source_known(username, SOURCE, since=NOW - timedelta(days=30))


# ---------------------------------------------------------------------------------------------- matrices


PAIRS = [pytest.param(old, new, id=f"{old}->{new}") for old in STATUSES for new in STATUSES]


class TestTransitionMatrix:
    @pytest.mark.parametrize(("current", "target"), PAIRS)
    def test_a_message_moves_exactly_as_allowed_previous_says(self, shared_store, current, target):
        store = shared_store
        # Given a message in state `current` with a running dispatch claim
        message = one_message(store, current)
        store.client.update_item(
            TableName=store.table_name,
            Key={
                "pk": {"S": f"MSGS#{message.account_id}#{message.reference_id}"},
                "sk": {"S": f"MSG#{message.message_id:019d}"},
            },
            UpdateExpression="SET claim_until = :until",
            ExpressionAttributeValues={":until": {"N": str(int(NOW.timestamp()) + 60)}},
        )
        before = raw_message(store, message.key)
        # When it is moved to `target`
        later = NOW + timedelta(seconds=3)
        if not allowed_previous(target):
            # (`accepted` follows nothing: the adapter refuses such a write outright, and writes nothing)
            with pytest.raises(ValueError, match="no status can move to"):
                store.transition(message.key, target, now=later)
            assert raw_message(store, message.key) == before
            return
        change = store.transition(message.key, target, now=later)
        after = raw_message(store, message.key)
        # Then it moved exactly when `current` is one of the states `target` may follow
        allowed = current in allowed_previous(target)
        assert change is not None
        assert change.changed is allowed
        assert after is not None
        if allowed:
            # And a move counts one change, keeps its time and ends the claim
            assert change.message.status == target
            assert change.message.sequence == message.sequence + 1
            assert change.message.status_at == {str(target): iso(later)}
            assert after["status"]["S"] == str(target)
            assert int(after["sequence"]["N"]) == message.sequence + 1
            assert after["status_at"]["M"][str(target)]["S"] == iso(later)
            assert "claim_until" not in after
        else:
            # And a refused move leaves the stored item exactly as it was, and reports it as it is
            assert after == before
            assert change.message.status == current
            assert change.message.sequence == message.sequence

    @pytest.mark.parametrize(("current", "target"), PAIRS)
    def test_a_batch_moves_exactly_as_allowed_previous_says(self, shared_store, current, target):
        store = shared_store
        # Given a batch in state `current`
        batch, messages = new_batch(str(new_id()), 1, status=current)
        store.create_batch(batch, messages)
        # When its status is set to `target`
        moved = store.set_batch_status(batch.account_id, batch.reference_id, target)
        # Then it moved exactly when `current` may precede `target`, and is stored so
        allowed = current in allowed_previous(target)
        assert moved is allowed
        found = store.get_batch(batch.account_id, batch.reference_id)
        assert found is not None
        assert found.status == (target if allowed else current)
        assert found == batch.model_copy(update={"status": found.status})

    def test_a_scheduled_batch_is_queued_once_and_a_cancelled_one_never(self, shared_store):
        store = shared_store
        account_id = str(new_id())
        scheduled, scheduled_messages = new_batch(account_id, 1, status=MessageStatus.SCHEDULED)
        cancelled, cancelled_messages = new_batch(account_id, 1, status=MessageStatus.SCHEDULED)
        store.create_batch(scheduled, scheduled_messages)
        store.create_batch(cancelled, cancelled_messages)
        # A scheduled batch is released into the queue once
        assert store.set_batch_status(account_id, scheduled.reference_id, MessageStatus.QUEUED)
        assert not store.set_batch_status(account_id, scheduled.reference_id, MessageStatus.QUEUED)
        # A cancelled batch cannot be queued (the release lost the race with the cancel)
        assert store.set_batch_status(account_id, cancelled.reference_id, MessageStatus.CANCELLED)
        assert not store.set_batch_status(account_id, cancelled.reference_id, MessageStatus.QUEUED)
        found = store.get_batch(account_id, cancelled.reference_id)
        assert found is not None and found.status == MessageStatus.CANCELLED
        # And an unknown batch is not moved (nor created)
        unknown = new_id()
        assert not store.set_batch_status(account_id, unknown, MessageStatus.QUEUED)
        assert store.get_batch(account_id, unknown) is None

    def test_a_cancelled_batch_s_refund_is_answered_once_and_only_once_it_is_cancelled(self, shared_store):
        store = shared_store
        account_id = str(new_id())
        batch, messages = new_batch(account_id, 1, status=MessageStatus.SCHEDULED)
        store.create_batch(batch, messages)
        # A batch still scheduled has no cancel to answer
        assert not store.claim_cancel_answer(account_id, batch.reference_id)
        # Once cancelled, one call answers its refund, and no later one
        assert store.set_batch_status(account_id, batch.reference_id, MessageStatus.CANCELLED)
        assert store.claim_cancel_answer(account_id, batch.reference_id)
        assert not store.claim_cancel_answer(account_id, batch.reference_id)
        # And an unknown batch is not answered (nor created)
        unknown = new_id()
        assert not store.claim_cancel_answer(account_id, unknown)
        assert store.get_batch(account_id, unknown) is None


def test_a_lapsed_claim_is_told_apart_from_a_live_one_and_taken_over_once(store):
    # Given a queued message whose dispatcher claimed it and then died (its lease lapsed)
    message = one_message(store, MessageStatus.QUEUED)
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120) == Claim(ClaimOutcome.CLAIMED)
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120) == Claim(ClaimOutcome.HELD)
    # When two dispatchers find it after the lease lapsed
    later = NOW + timedelta(seconds=121)
    first = store.claim_for_dispatch(message.key, now=later, lease_seconds=120)
    second = store.claim_for_dispatch(message.key, now=later, lease_seconds=120)
    # Then exactly one takes it over, knowing it may have been submitted already
    assert (first, second) == (Claim(ClaimOutcome.ABANDONED), Claim(ClaimOutcome.HELD))


def test_a_claim_on_a_read_made_before_the_message_was_handed_back_finds_it_stale_and_takes_nothing(store):
    # Given a queued message read by a dispatcher (no attempt yet), which another dispatcher then claimed and handed
    # back, naming the upstream that may have it
    message = one_message(store, MessageStatus.QUEUED)
    assert message.submit_attempts == 0
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120).outcome == ClaimOutcome.CLAIMED
    store.release_claim(message.key, maybe_taken_by="primary")
    # When the first dispatcher claims it on what it read
    claim = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="fallback", attempts_read=0)
    # Then the claim is refused as stale, and nothing of the message changed: no lease, still naming the primary
    assert claim == Claim(ClaimOutcome.STALE)
    item = raw_message(store, message.key)
    assert "claim_until" not in item and "claim_upstream" not in item
    assert (item["maybe_taken_by"], item["submit_attempts"]) == ({"S": "primary"}, {"N": "1"})
    # And a claim on a fresh read (one attempt) takes it
    fresh = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary", attempts_read=1)
    assert fresh == Claim(ClaimOutcome.CLAIMED)


def test_a_message_stored_without_an_attempt_count_is_claimed_as_never_attempted_and_counted_from_there(store):
    # Given a queued message stored without `submit_attempts` (no current writer stores one)
    message = one_message(store, MessageStatus.QUEUED)
    store.client.update_item(
        TableName=store.table_name,
        Key=message_item_key(message.key),
        UpdateExpression="REMOVE submit_attempts",
    )
    assert "submit_attempts" not in raw_message(store, message.key)
    # When a dispatcher that read one attempt claims it, then one that read it as never attempted
    stale = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, attempts_read=1)
    claim = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, attempts_read=0)
    # Then the first read is stale and the second claims it
    assert (stale, claim) == (Claim(ClaimOutcome.STALE), Claim(ClaimOutcome.CLAIMED))
    # And handing it back after a submit counts that attempt from nothing
    store.release_claim(message.key)
    assert raw_message(store, message.key)["submit_attempts"] == {"N": "1"}


def test_a_claim_whose_answer_is_lost_is_still_ours_and_its_message_is_sent_once(store):
    import asyncio
    from dataclasses import replace

    from sms_gateway.adapters import aws
    from sms_gateway.domain.models import DispatchCommand
    from sms_gateway.logic.dispatch import DispatchDependencies, dispatch
    from tests.fakes import FakeProvider
    from tests.integration.test_refund_transactions import AnswersLost

    # Given a queued message for an upstream that cannot tell a repeated submit (Kannel), and a dispatcher whose
    # claim write reaches DynamoDB while its answer is lost on the wire (botocore then sends the same write again)
    message = one_message(store, MessageStatus.QUEUED)
    record = DispatchCommand(
        account_id=message.account_id, reference_id=message.reference_id, message_ids=(message.message_id,)
    )
    kannel = FakeProvider("kannel")
    aws.reset_clients()
    client = aws.client("dynamodb")
    lost = AnswersLost(client)
    lossy = DynamoStore(store.table_name, client=client)
    deps = DispatchDependencies(
        messages=lossy,
        accounts=lossy,
        upstreams_for=lambda _: [kannel],
        callback_base_url="https://gw.example/",
        clock=lambda: NOW,
        read_ahead=[message],  # the claim is the dispatcher's first request
    )
    try:
        # When the record is dispatched, and dispatched again once its retry is due (after the claim's lease)
        first = asyncio.run(dispatch(record, deps))
    finally:
        aws.reset_clients()
    assert lost.sent >= 2
    later = replace(deps, messages=store, accounts=store, clock=lambda: NOW + timedelta(minutes=5), read_ahead=None)
    asyncio.run(dispatch(record, later))
    # Then the message went to the upstream once and is recorded submitted with its id. Instead the first claim's
    # retry found the lease it had itself just written (HELD, nothing submitted), and the redelivery took that lease
    # for a dead dispatcher's: recorded submitted, `submit_unconfirmed`, though no upstream ever saw it (the client
    # is told it was submitted, then after the 48 h DLR wait that it expired).
    assert not first.needs_retry
    assert len(kannel.submits) == 1
    found = raw_message(store, message.key)
    assert found is not None and found["status"] == {"S": "submitted"}
    assert "error_code" not in found


def test_a_lapsed_claim_taken_over_tells_where_its_holder_was_submitting_and_counts_its_attempt(store):
    # Given a queued message claimed for the primary, whose holder failed over to the fallback and then died
    message = one_message(store, MessageStatus.QUEUED)
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary").outcome == (
        ClaimOutcome.CLAIMED
    )
    assert raw_message(store, message.key)["claim_upstream"] == {"S": "primary"}
    assert not store.move_claim(message.key, from_upstream="fallback", to_upstream="primary")
    assert store.move_claim(message.key, from_upstream="primary", to_upstream="fallback")
    # When another dispatcher finds the lease lapsed, and a third one after it
    later = NOW + timedelta(seconds=121)
    first = store.claim_for_dispatch(message.key, now=later, lease_seconds=120, upstream="primary")
    second = store.claim_for_dispatch(message.key, now=later, lease_seconds=120, upstream="primary")
    # Then the first takes it over, told the upstream the dead holder was submitting to; the third is held off
    assert (first, second) == (Claim(ClaimOutcome.ABANDONED, lapsed_upstream="fallback"), Claim(ClaimOutcome.HELD))
    # And the lease still names that upstream, and the dead holder's submit is counted as an attempt
    item = raw_message(store, message.key)
    assert (item["claim_upstream"], item["submit_attempts"]) == ({"S": "fallback"}, {"N": "1"})
    # And the status write that records the outcome clears the lease and its upstream
    store.transition(message.key, MessageStatus.SUBMITTED, now=later, upstream="fallback", upstream_message_id="f-1")
    item = raw_message(store, message.key)
    assert "claim_until" not in item and "claim_upstream" not in item
    assert not store.move_claim(message.key, from_upstream="fallback", to_upstream="primary")


def test_a_lapsed_claim_is_taken_over_only_while_it_names_the_upstream_read_with_it(store):
    # Given a lapsed claim naming the fallback (its holder failed over just before its lease lapsed)
    message = one_message(store, MessageStatus.QUEUED)
    store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary")
    store.move_claim(message.key, from_upstream="primary", to_upstream="fallback")
    lapsed = raw_message(store, message.key)["claim_until"]["N"]
    values = {":until": {"N": "9999999999"}, ":one": {"N": "1"}, ":queued": {"S": "queued"}, ":claim_id": {"S": "c"}}
    # When a dispatcher that read it still naming the primary tries to take it over
    taken = store._take_over_lapsed_claim(message.key, lapsed, "primary", values)
    # Then it is refused (it would ask the primary again while the fallback may have the message), nothing written
    assert taken == Claim(ClaimOutcome.HELD)
    assert raw_message(store, message.key)["claim_until"] == {"N": lapsed}


def test_a_released_claim_forgets_its_upstream(store):
    message = one_message(store, MessageStatus.QUEUED)
    store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary")
    store.release_claim(message.key)
    item = raw_message(store, message.key)
    assert "claim_until" not in item and "claim_upstream" not in item
    # And a fresh claim then names no upstream unless told one
    assert store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120) == Claim(ClaimOutcome.CLAIMED)
    assert "claim_upstream" not in raw_message(store, message.key)


@contextlib.contextmanager
def answer_lost_once(store: DynamoStore) -> Iterator[DynamoStore]:
    """The store on a client whose first request reaches DynamoDB and then loses its answer (botocore sends it
    again)."""
    from sms_gateway.adapters import aws
    from tests.integration.test_refund_transactions import AnswersLost

    aws.reset_clients()
    client = aws.client("dynamodb")
    lost = AnswersLost(client)
    try:
        yield DynamoStore(store.table_name, client=client)
    finally:
        aws.reset_clients()
    assert lost.sent >= 2


def test_a_takeover_whose_answer_is_lost_is_still_ours(store):
    # Given a lapsed claim naming the primary (its holder died mid-submit)
    message = one_message(store, MessageStatus.QUEUED)
    store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary")
    # When a dispatcher takes it over and the answer to its takeover write is lost
    lapsed = raw_message(store, message.key)["claim_until"]["N"]
    with answer_lost_once(store) as lossy:
        taken = lossy._take_over_lapsed_claim(
            message.key,
            lapsed,
            "primary",
            {":until": {"N": "9999999999"}, ":one": {"N": "1"}, ":queued": {"S": "queued"}, ":claim_id": {"S": "c"}},
        )
    # Then botocore's retry finds the lease it wrote and knows it for its own: taken over (the dead holder's submit
    # counted once), not another dispatcher's live claim
    assert taken == Claim(ClaimOutcome.ABANDONED, lapsed_upstream="primary")
    assert (taken.claim_id, raw_message(store, message.key)["claim_id"]) == ("c", {"S": "c"})
    assert raw_message(store, message.key)["submit_attempts"] == {"N": "1"}


def test_a_failover_move_whose_answer_is_lost_is_still_made(store):
    # Given a claimed message
    message = one_message(store, MessageStatus.QUEUED)
    claim = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary")
    # When its holder names the fallback before failing over, and the answer to that write is lost
    with answer_lost_once(store) as lossy:
        moved = lossy.move_claim(message.key, from_upstream="primary", to_upstream="fallback", claim_id=claim.claim_id)
    # Then botocore's retry, finding the lease naming the fallback already, is the move made: the message is offered
    # to the fallback (until 2026-12-06 the holder stopped and counted an attempt the fallback never saw)
    assert moved
    assert raw_message(store, message.key)["claim_upstream"] == {"S": "fallback"}
    # And a holder whose lease is not that one moves nothing
    assert not store.move_claim(message.key, from_upstream="fallback", to_upstream="primary", claim_id="another")


def test_a_release_whose_answer_is_lost_counts_its_attempt_once(store):
    # Given a claimed message whose submit failed for now
    message = one_message(store, MessageStatus.QUEUED)
    claim = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary")
    # When its holder releases the claim and the answer to that write is lost
    with answer_lost_once(store) as lossy:
        lossy.release_claim(message.key, claim_id=claim.claim_id)
    # Then botocore's retry changes nothing: the attempt is counted once and the lease is gone
    item = raw_message(store, message.key)
    assert item["submit_attempts"] == {"N": "1"}
    assert not {"claim_until", "claim_upstream", "claim_id"} & item.keys()


def test_a_cancel_answer_claim_whose_answer_is_lost_is_still_ours(store):
    # Given a cancelled batch whose refund no cancel has answered yet
    account_id = str(new_id())
    batch, messages = new_batch(account_id, 1, status=MessageStatus.SCHEDULED)
    store.create_batch(batch, messages)
    assert store.set_batch_status(account_id, batch.reference_id, MessageStatus.CANCELLED)
    # When a cancel without an idempotency key claims the answer, and the answer to that write is lost
    with answer_lost_once(store) as lossy:
        answered = lossy.claim_cancel_answer(account_id, batch.reference_id)
    # Then botocore's retry, meeting the claim it wrote, knows it for its own: this cancel answers the refund (until
    # session 37 it took the claim for another cancel's, and the client was answered 0 refunded (9bits) or 404
    # (session-key) though its cancel refunded, with no cancel answering the credits)
    assert answered is not None and answered.reference_id == batch.reference_id
    # And another cancel, keyed or not, still does not claim it again
    assert store.claim_cancel_answer(account_id, batch.reference_id) is None
    assert store.claim_cancel_answer(account_id, batch.reference_id, mark="another-key") is None


def test_a_holder_whose_lease_was_taken_over_releases_nothing_of_the_new_holders(store):
    # Given a claim whose holder outlived its lease, and another dispatcher that took the lapsed lease over
    message = one_message(store, MessageStatus.QUEUED)
    slow = store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="primary")
    later = NOW + timedelta(minutes=5)
    taken = store.claim_for_dispatch(message.key, now=later, lease_seconds=120, upstream="primary")
    assert taken.outcome == ClaimOutcome.ABANDONED
    before = raw_message(store, message.key)
    # When the slow holder, its submit failed at last, releases its claim and tries to fail over
    store.release_claim(message.key, claim_id=slow.claim_id)
    moved = store.move_claim(message.key, from_upstream="primary", to_upstream="fallback", claim_id=slow.claim_id)
    # Then the new holder's lease stands untouched (released, the message could have been claimed and sent again)
    assert not moved
    assert raw_message(store, message.key) == before


def test_a_withdrawal_takes_only_a_message_no_dispatcher_has_claimed(store):
    # Given two queued messages, one of them claimed by a dispatcher
    claimed, free = one_message(store, MessageStatus.QUEUED), one_message(store, MessageStatus.QUEUED)
    assert claim(store, claimed.key)
    # When both are withdrawn (failed, only if unclaimed)
    refused = store.transition(claimed.key, MessageStatus.FAILED, now=NOW, error_code="not_queued", unclaimed_only=True)
    taken = store.transition(free.key, MessageStatus.FAILED, now=NOW, error_code="not_queued", unclaimed_only=True)
    # Then the claimed one stays queued for its dispatcher, and the other is failed
    assert refused is not None and (refused.changed, refused.message.status) == (False, MessageStatus.QUEUED)
    assert taken is not None and (taken.changed, taken.message.status) == (True, MessageStatus.FAILED)
    assert taken.message.error_code == "not_queued"


def test_a_dispatcher_fails_before_its_claim_only_a_queued_message_none_holds_and_no_upstream_may_have(store):
    # Given queued messages: one claimed now, one handed back after a throttle, one handed back naming an upstream
    # that may have it (its submit got no answer), one submitted
    held, handed_back, maybe_out, submitted = (one_message(store, MessageStatus.QUEUED) for _ in range(4))
    for message in (held, handed_back, maybe_out):
        assert claim(store, message.key)
    store.release_claim(handed_back.key, attempted=False, throttled=True)
    store.release_claim(maybe_out.key, maybe_taken_by="primary")
    store.transition(submitted.key, MessageStatus.SUBMITTED, now=NOW, upstream="primary", upstream_message_id="u1")
    # When each is failed before a claim (unheld only)
    moved = {
        message.key: store.transition(
            message.key, MessageStatus.FAILED, now=NOW, error_code="opted_out", unheld_only=True
        )
        for message in (held, handed_back, maybe_out, submitted)
    }
    # Then only the one handed back after a throttle is failed; the others are left as they were
    assert {key: change.changed for key, change in moved.items() if change is not None} == {
        held.key: False,
        handed_back.key: True,
        maybe_out.key: False,
        submitted.key: False,
    }


# ------------------------------------------------------------------------------ a message found by its id alone


def batch_from(account_id: str, sender: str, count: int, *, ids_name_their_batch: bool = True) -> tuple[Batch, list]:
    """A batch whose messages take the ids after its own (as sends make them), or random ids (as they were made
    before ids named their batch)."""
    reference_id = new_batch_id()
    batch, messages = new_batch(account_id, count, reference_id=reference_id)
    batch = batch.model_copy(update={"sender": sender})
    messages = [
        message.model_copy(
            update={
                "sender": sender,
                "message_id": message_id_at(reference_id, position) if ids_name_their_batch else new_id(),
            }
        )
        for position, message in enumerate(messages)
    ]
    return batch, messages


def indexed(store: DynamoStore, message_id: int) -> list[dict[str, Any]]:
    return store.client.query(
        TableName=store.table_name,
        IndexName="message-index",
        KeyConditionExpression="message_id = :id",
        ExpressionAttributeValues={":id": {"N": str(message_id)}},
    )["Items"]


class TestAMessageFoundByItsId:
    def test_an_alphanumeric_senders_message_has_no_index_entry_and_is_found_in_the_batch_its_id_names(
        self, store: DynamoStore
    ) -> None:
        # Given a send from an alphanumeric sender ID (no handset can reply to it)
        account_id = str(new_id())
        batch, messages = batch_from(account_id, "ACME", 3)
        store.create_batch(batch, messages)
        second = messages[1]
        # Then its items carry no message_id attribute, so no index writes an entry for them
        item = raw_message(store, second.key)
        assert item is not None and "message_id" not in item and "conversation" not in item
        assert indexed(store, second.message_id) == []
        # And the message is found by its id alone, and read back with it, whichever way it is read
        assert store.find_message(account_id, second.message_id) == second
        assert [m.message_id for m in store.get_messages(account_id, batch.reference_id, [second.message_id])] == [
            second.message_id
        ]
        listed, _ = store.list_messages(account_id, batch.reference_id)
        assert [m.message_id for m in listed] == [m.message_id for m in messages]

    def test_a_message_a_handset_can_reply_to_keeps_its_id_for_the_conversation_index(self, store: DynamoStore) -> None:
        account_id = str(new_id())
        batch, messages = batch_from(account_id, "48974", 2)
        store.create_batch(batch, messages)
        item = raw_message(store, messages[0].key)
        assert item is not None and item["message_id"] == {"N": str(messages[0].message_id)}
        assert store.find_message(account_id, messages[0].message_id) == messages[0]
        assert store.transition(messages[1].key, MessageStatus.SUBMITTED, now=NOW) is not None
        assert store.last_sent_to(account_id, messages[1].msisdn) is not None

    def test_a_message_stored_before_ids_named_their_batch_is_found_through_the_index(self, store: DynamoStore) -> None:
        # Given a message whose id was random (stored before the change; its item has the attribute)
        account_id = str(new_id())
        batch, messages = batch_from(account_id, "48974", 2, ids_name_their_batch=False)
        store.create_batch(batch, messages)
        # Then it is still found by its id
        assert store.find_message(account_id, messages[1].message_id) == messages[1]

    @pytest.mark.parametrize("sender", ["ACME", "48974"])
    def test_another_accounts_message_is_never_found(self, store: DynamoStore, sender: str) -> None:
        owner, stranger = str(new_id()), str(new_id())
        batch, messages = batch_from(owner, sender, 1)
        store.create_batch(batch, messages)
        store.create_batch(*batch_from(stranger, sender, 1))
        assert store.find_message(stranger, messages[0].message_id) is None

    def test_an_id_that_names_no_message_of_the_account_is_none(self, store: DynamoStore) -> None:
        account_id = str(new_id())
        batch, messages = batch_from(account_id, "ACME", 2)
        store.create_batch(batch, messages)
        # One past its last message, and its own batch's id
        assert store.find_message(account_id, messages[-1].message_id + 1) is None
        assert store.find_message(account_id, batch.reference_id) is None
