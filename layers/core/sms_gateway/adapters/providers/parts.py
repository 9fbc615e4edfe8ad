"""The parts of a long message at an SMSC gateway. The most parts one sends of a message: Jasmin
(`[http-api] long_content_max_parts`) and Kannel (the sendsms-user's `max-messages`) send only that many parts of a
longer text, drop the rest and still answer that they took it; so such a message is never handed to them: it goes to
the route's fallback, or fails and is refunded. And the concatenation header of a part the gateway cut itself
(Kannel, a text it would cut through an emoji: docs/providers-smsc.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from sms_gateway.adapters.http import not_sent_there
from sms_gateway.errors import UpstreamError

# Our own error_code for a message failed because no upstream on its route sends that many parts.
TOO_MANY_PARTS = "too_many_parts"
# SMPP's concatenation header counts parts in one octet.
MOST_PARTS = 255


def max_parts_setting(name: str, value: Any, default: int) -> int:
    """A `max_parts` setting: a whole number of parts from 1 to 255; absent, the upstream's own default."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MOST_PARTS:
        raise ValueError(
            f"upstream {name!r}: max_parts is the most parts the upstream sends of one message, a whole number from 1 "
            f"to {MOST_PARTS} (default {default}), not {value!r}"
        )
    return value


def refuse_longer(name: str, parts: int, max_parts: int) -> None:
    """Raises when the upstream would send `parts` parts, more than it sends: unavailable (the fallback may take it;
    nothing was sent) and permanent (without one it fails at once, refunded, `too_many_parts`, rather than come back to
    be cut)."""
    if parts > max_parts:
        raise not_sent_there(
            f"{name} sends at most {max_parts} parts of a message (its max_parts), this one is {parts}: not sent there",
            error_code=TOO_MANY_PARTS,
        )


def concatenation_udh(client_ref: str, total: int, number: int) -> bytes:
    """The user data header of part `number` (1-based) of `total`: 3GPP TS 23.040's concatenated short message with
    an 8-bit reference (IEI 00, 6 octets with its length octet), the one SMSC gateways put on the parts they cut
    themselves, so a part holds 153 GSM septets or 67 UCS-2 units (domain/segments.py). The reference, which tells
    the handset which parts belong together, is drawn from our reference: the same for each part of one message. Two
    such messages to one handset share it 1 time in 256 (Kannel's own cut counts it up); both must be texts Kannel
    would cut through an emoji, so that is left as it is (docs/providers-smsc.md)."""
    reference = zlib.crc32(client_ref.encode()) & 0xFF
    return bytes([5, 0x00, 3, reference, total, number])


def partly_taken(name: str, total: int, failures: Mapping[int, UpstreamError]) -> UpstreamError:
    """Parts of a message of `total` not taken (`failures`, by part number) while the others were, or may have been:
    the handset may get those, so the message is never offered again, there or elsewhere (which would send them
    twice), nor failed and refunded while they may be delivered. Their reports settle it: never delivered in whole,
    it expires after the DLR wait, refunded."""
    missing = sorted(failures)
    first = failures[missing[0]]
    return UpstreamError(
        f"{name} took {total - len(missing)} of the {total} parts, not part(s) {', '.join(map(str, missing))}: "
        f"{first.message}",
        permanent=False,
        unavailable=False,
        maybe_taken=True,
    )
