"""The longest message an upstream sends. Jasmin (`[http-api] long_content_max_parts`) and Kannel (the sendsms-user's
`max-messages`) send only that many parts of a longer text, drop the rest and still answer that they took it; Twilio
refuses a Body over 1,600 characters (error 21617). So such a message is never handed to them: it goes to the route's
fallback, or fails and is refunded.
"""

from __future__ import annotations

from typing import Any

from sms_gateway.adapters.http import not_sent_there
from sms_gateway.domain.segments import MOST_PARTS
from sms_gateway.errors import UpstreamError

# Our own error_code for a message failed because no upstream on its route sends that many parts.
TOO_MANY_PARTS = "too_many_parts"


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
        raise too_long(
            f"{name} sends at most {max_parts} parts of a message (its max_parts), this one is {parts}: not sent there"
        )


def too_long(what: str) -> UpstreamError:
    """A message longer than the upstream sends (as `refuse_longer` finds, or as the upstream answers): never sent
    there, offered to the route's fallback; without one, failed `too_many_parts`."""
    return not_sent_there(what, error_code=TOO_MANY_PARTS)
