"""The time an upstream says an inbound SMS was sent: read into our one form, or, when it names none, when it came."""

from __future__ import annotations

from sms_gateway.domain.models import iso, upstream_time, utc_now
from sms_gateway.observability import logger

# How much of a time that names none goes into the log: enough to see what the upstream wrote.
_SHOWN = 64


def sent_time(upstream: str, written: str | None) -> str:
    """`written` in the seed's form (InboundSms reads it the same); when it names no time, when the SMS came, with a
    warning naming the upstream and what it wrote: the SMS is taken all the same (failing the upstream's post would
    only have it posted again, for ever). None or empty: the upstream gave none, which is no news."""
    if not written:
        return iso(utc_now())
    read = upstream_time(written)
    if read is not None:
        return read
    logger.warning(
        "inbound SMS whose sent time names no time: taken as sent when it came",
        extra={"upstream": upstream, "date": written[:_SHOWN]},
    )
    return iso(utc_now())
