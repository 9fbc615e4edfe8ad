"""The webhook credentials' KMS box against moto's KMS, with the key the local stack makes from template.yaml."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from sms_gateway.adapters.kms import KmsSecretBox
from sms_gateway.domain.models import Account, SealedSecret


class CountingDecrypts:
    """Counts the box's KMS Decrypt requests through botocore's own event hooks."""

    def __init__(self) -> None:
        from sms_gateway.adapters import aws

        self.count = 0
        aws.client("kms").meta.events.register("before-call.kms.Decrypt", self._count)

    def _count(self, **_: Any) -> None:
        self.count += 1


@pytest.fixture
def box(aws: dict[str, str]) -> KmsSecretBox:
    return KmsSecretBox(aws["WEBHOOK_CREDENTIALS_KEY_ID"])


def test_a_sealed_secret_opens_for_its_account_and_purpose_only(box: KmsSecretBox) -> None:
    # When a signing secret is sealed for one account
    sealed = box.seal("111", "webhook_secret", "whsec_c2VjcmV0LWtleS1ieXRlcw==")
    # Then the stored form is not the secret, shows only its start, and opens to it
    assert "c2VjcmV0" not in sealed.sealed
    assert sealed.prefix == "whsec_c2VjcmV0"
    assert box.open("111", "webhook_secret", sealed) == "whsec_c2VjcmV0LWtleS1ieXRlcw=="
    # And copied onto another account, or used as the other credential, it does not open
    for account_id, purpose in (("222", "webhook_secret"), ("111", "webhook_token")):
        with pytest.raises(Exception, match="InvalidCiphertext"):
            KmsSecretBox(box.key_id).open(account_id, purpose, sealed)


def test_a_container_asks_kms_once_per_sealed_value(box: KmsSecretBox) -> None:
    # Given two accounts' tokens
    first = box.seal("111", "webhook_token", "token-one")
    second = box.seal("222", "webhook_token", "token-two")
    decrypts = CountingDecrypts()
    # When a notifier container posts many webhooks for each
    for _ in range(5):
        assert box.open("111", "webhook_token", first) == "token-one"
        assert box.open("222", "webhook_token", second) == "token-two"
    # Then it opened each once
    assert decrypts.count == 2
    # And a rotated (newly sealed) token is opened afresh, never answered from the old one
    rotated = box.seal("111", "webhook_token", "token-three")
    assert box.open("111", "webhook_token", rotated) == "token-three"
    assert decrypts.count == 3


def test_threads_opening_one_sealed_value_at_once_ask_kms_once(box: KmsSecretBox) -> None:
    import threading
    import time

    # Given a sealed token, and KMS taking a while to answer (its first Decrypt is held until the others ask)
    sealed = box.seal("111", "webhook_token", "token-one")
    decrypts = CountingDecrypts()
    asked = threading.Event()

    def slow(**_: Any) -> None:
        asked.set()
        time.sleep(0.2)  # the other threads' time to ask (each would decrypt too, without the single opening)

    from sms_gateway.adapters import aws

    aws.client("kms").meta.events.register("before-call.kms.Decrypt", slow)
    # When a notifier's ten concurrent records open it at once
    opened: list[str] = []
    threads = [
        threading.Thread(target=lambda: opened.append(box.open("111", "webhook_token", sealed))) for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # Then KMS was asked once, and every record got the token
    assert asked.is_set()
    assert opened == ["token-one"] * 10
    assert decrypts.count == 1


def test_an_account_written_before_sealing_keeps_working(box: KmsSecretBox) -> None:
    # Given an account item from before the credentials were sealed (plain strings)
    account = Account.model_validate(
        {"account_id": "9", "name": "Old", "webhook_token": "old-token", "webhook_secret": "whsec_b2xkLXNlY3JldA=="}
    )
    # Then it reads as sealed "plain", opens to the stored value without KMS, and shows only the start
    assert account.webhook_token == SealedSecret(scheme="plain", sealed="old-token", prefix="old-toke")
    decrypts = CountingDecrypts()
    assert box.open("9", "webhook_secret", account.webhook_secret) == "whsec_b2xkLXNlY3JldA=="
    assert decrypts.count == 0
    # And an item with no credentials reads as none
    assert Account.model_validate({"account_id": "9", "name": "Old", "webhook_token": ""}).webhook_token is None


def test_without_a_key_nothing_is_sealed(aws: dict[str, str]) -> None:
    with pytest.raises(RuntimeError, match="WEBHOOK_CREDENTIALS_KEY_ID"):
        KmsSecretBox("").seal("111", "webhook_token", "token")


def test_the_stack_key_is_the_templates_webhook_credentials_key(aws: dict[str, str]) -> None:
    described = boto3.client("kms").describe_key(KeyId=aws["WEBHOOK_CREDENTIALS_KEY_ID"])["KeyMetadata"]
    assert described["Enabled"] and "WebhookCredentialsKey" in described["Description"]
