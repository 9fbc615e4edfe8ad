"""Standard Webhooks signatures (standardwebhooks.com): how we sign client webhooks and verify a peer's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from sms_gateway.domain.ids import epoch_seconds

SECRET_PREFIX = "whsec_"  # noqa: S105 # the Standard Webhooks prefix, not a secret
DEFAULT_TOLERANCE_SECONDS = 300


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signing_key(secret: str) -> bytes:
    """A `whsec_<base64>` secret is the base64 of the key; any other string is the key itself."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: str, body: str) -> str:
    """The `webhook-signature` header value for a body: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`."""
    digest = hmac.new(signing_key(secret), f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, str(timestamp), body),
    }


def verify(
    secret: str, headers: Mapping[str, str], body: str, *, now: float, tolerance: float = DEFAULT_TOLERANCE_SECONDS
) -> bool:
    """True when one of the `v1` signatures matches and the timestamp is within `tolerance` of `now`
    (header names lowercased). Constant-time comparison. A timestamp that is not Unix seconds (digits, at most 12)
    is refused like a stale one."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    seconds = epoch_seconds(timestamp)
    if not webhook_id or seconds is None or abs(now - seconds) > tolerance:
        return False
    wanted = sign(secret, webhook_id, timestamp, body).removeprefix("v1,")
    for candidate in headers.get("webhook-signature", "").split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), wanted.encode()):
            return True
    return False
