"""Time zones by IANA name, and the moments clients write without an offset."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

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


def country_zones(country: str) -> tuple[str, ...]:
    """The tz database's zones of an ISO 3166 country (upper case), as its zone.tab lists them: one for most
    countries we serve (KE: Africa/Nairobi), several for some (US, CD), none for a few (XK)."""
    return _zones_by_country().get(country, ())


@cache
def _zones_by_country() -> dict[str, tuple[str, ...]]:
    # Read once, only where an account is created: the zoneinfo data ZoneInfo itself reads (the system's, else the
    # tzdata package the layer ships), so the zones are ones zone_named knows.
    zones: dict[str, tuple[str, ...]] = {}
    for line in _zone_tab().splitlines():
        if line and not line.startswith("#"):
            code, _, name = line.split("\t")[:3]
            zones[code] = (*zones.get(code, ()), name)
    return zones


def _zone_tab() -> str:
    # Imported here: only account creation reads the table, and importlib.resources costs the api's cold start.
    from importlib import resources
    from pathlib import Path

    for directory in TZPATH:
        if (tab := Path(directory, "zone.tab")).is_file():
            return tab.read_text(encoding="utf-8")
    return resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text(encoding="utf-8")
