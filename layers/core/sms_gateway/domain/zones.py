"""Time zones by IANA name, and the moments clients write without an offset."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC_ZONE = ZoneInfo("UTC")


def zone_named(name: str) -> ZoneInfo | None:
    """The IANA zone of that name, or None. ZoneInfo refuses a name in more ways than ZoneInfoNotFoundError: a
    ValueError for a path-like one, IsADirectoryError for a region ('Europe') and OSError for one too long to be a
    file name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def account_zone(timezone: str) -> ZoneInfo:
    """The zone an account's local times are read in: its own, or UTC when its name is not a zone."""
    return zone_named(timezone) or UTC_ZONE


def in_zone(moment: datetime, zone: ZoneInfo) -> datetime:
    """The moment as written when it has an offset, else read as a wall-clock time in `zone`."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)
