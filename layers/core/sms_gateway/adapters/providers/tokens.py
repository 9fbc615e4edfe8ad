"""The callback token of an SMSC gateway (Kannel, Jasmin) or of the callback URLs set at Africa's Talking, and the
ones it replaced. For Kannel and Jasmin the token travels in each message's DLR URL, which the gateway keeps until the
report arrives (up to DLR_WAIT_SECONDS): after a rotation those reports still carry the old token, so an upstream's
`previous_callback_tokens` are taken as well until the operator removes them (docs/runbook.md, "Rotate secrets"); at
Africa's Talking they cover the time until its dashboard's callback URLs carry the new token. Until 2026-12-06 only
the current token was taken, and every report of a message handed over before a rotation was refused for good:
delivered messages expired and were refunded.

Twilio signs its callbacks with the account's Auth Token, and switches to the new one the moment it is promoted,
while each container reads the configuration at its own time (within CONFIG_MAX_AGE): its `previous_auth_tokens` are
tried as well (the same setting, `previous_tokens_setting`), so none of its callbacks, never posted again, is refused.

Not a per-message value keyed by a secret that never rotates: a key that leaks must be replaceable too, and messages
in flight would then need the old key accepted all the same; the inbound post-url is one fixed URL besides.
"""

from __future__ import annotations

import hmac
from typing import Any

from sms_gateway.domain.models import CallbackRequest

MIN_TOKEN_LENGTH = 16
# The query parameter a callback carries its token in (the DLR URLs we give, the callback URLs set at the upstream).
TOKEN_PARAM = "token"  # noqa: S105 # the name of the query parameter, not a secret


def secret_setting(name: str, setting: str, value: Any, *, min_length: int = 1) -> str:
    """A secret of an upstream's configuration that verifies its callbacks (`callback_token`, Twilio's `auth_token`,
    the simulator's `secret`): a string of `min_length` characters or more. Anything else is refused when the upstream
    is configured (its value not named): read with str(), JSON null was the text "None", which anyone could present,
    and until 2026-12-07 an Africa's Talking callback_token of any length was taken."""
    if not isinstance(value, str) or len(value) < min_length:
        wanted = f"a string of {min_length} characters or more" if min_length > 1 else "a string that is not empty"
        raise ValueError(f"upstream {name!r}: {setting} must be {wanted}, not {_described(value)}")
    return value


def _described(value: Any) -> str:
    """What a secret setting holds, without its value."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"{len(value)} characters" if value else "empty"
    return type(value).__name__


def previous_tokens_setting(name: str, value: Any, *, setting: str = "previous_callback_tokens") -> tuple[str, ...]:
    """A `previous_callback_tokens` setting (or Twilio's `previous_auth_tokens`, named by `setting`): a list of the
    tokens replaced, each a string of 16 characters or more; absent, none. Anything else is refused when the upstream
    is configured (its values not named: they are secrets)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) and len(t) >= MIN_TOKEN_LENGTH for t in value):
        raise ValueError(
            f"upstream {name!r}: {setting} is a list of the tokens replaced, each {MIN_TOKEN_LENGTH} characters or more"
        )
    return tuple(value)


def token_verified(request: CallbackRequest, tokens: tuple[str, ...]) -> bool:
    """Whether the callback's `token` query parameter is one of `tokens` (the current one first), each compared in
    constant time and all of them compared, so the time taken tells nothing of which one or how much matched."""
    given = request.query.get(TOKEN_PARAM, "").encode()
    if not given:
        return False
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode())
    return matched
