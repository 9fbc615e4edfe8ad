"""Webhook credentials sealed with the stack's KMS key (template.yaml `WebhookCredentialsKey`).

Each secret is encrypted with an encryption context naming its account and purpose, so a sealed value copied onto
another account, or into the other attribute, does not open. An opened value is kept per container by its sealed
form, which never changes meaning: a notifier container asks KMS once per account and secret, not per webhook."""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict

from sms_gateway.adapters import aws
from sms_gateway.caching import SingleFlight
from sms_gateway.domain.models import SealedSecret, shown_prefix

# Opened secrets kept per container: two per account, so this covers the accounts a container serves many times.
OPENED_KEPT = 2048


class KmsSecretBox:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self._opened: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        # The notifier posts a batch's records concurrently: one Decrypt for a secret they all need, not one each.
        self._opening = SingleFlight()

    def seal(self, account_id: str, purpose: str, secret: str) -> SealedSecret:
        if not self.key_id:
            raise RuntimeError("WEBHOOK_CREDENTIALS_KEY_ID is not set: webhook credentials cannot be sealed")
        answer = aws.client("kms").encrypt(
            KeyId=self.key_id, Plaintext=secret.encode(), EncryptionContext=_context(account_id, purpose)
        )
        sealed = base64.b64encode(answer["CiphertextBlob"]).decode()
        return SealedSecret(sealed=sealed, prefix=shown_prefix(secret))

    def open(self, account_id: str, purpose: str, sealed: SealedSecret) -> str:
        if sealed.scheme == "plain":
            return sealed.sealed
        key = (account_id, purpose, sealed.sealed)
        kept = self._kept(key)
        if kept is not None:
            return kept
        return self._opening.load(key, lambda: self._decrypt(key))

    def _decrypt(self, key: tuple[str, str, str]) -> str:
        kept = self._kept(key)  # opened by another thread since this one looked
        if kept is not None:
            return kept
        account_id, purpose, sealed = key
        # The key's id is inside the ciphertext: a sealed value opens after the key rotates, or the variable moves.
        answer = aws.client("kms").decrypt(
            CiphertextBlob=base64.b64decode(sealed), EncryptionContext=_context(account_id, purpose)
        )
        secret = bytes(answer["Plaintext"]).decode()
        with self._lock:
            self._opened[key] = secret
            while len(self._opened) > OPENED_KEPT:
                self._opened.popitem(last=False)
        return secret

    def _kept(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            if key in self._opened:
                self._opened.move_to_end(key)
                return self._opened[key]
        return None


def _context(account_id: str, purpose: str) -> dict[str, str]:
    return {"account_id": account_id, "purpose": purpose}
