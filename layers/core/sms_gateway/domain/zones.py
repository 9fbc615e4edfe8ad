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


# The one file of the tz database's zone list that is no place: tz's placeholder for "no zone" ("-00").
_NO_PLACE = frozenset({"Factory"})


def is_chosen_zone(name: str) -> bool:
    """Whether `name` is a zone a person may give an account: a zone the tz database lists, as the tzdata package the
    layer ships has it (so every runtime knows it, the local stack's and Lambda's alike), less Factory. `localtime`
    (the host's own setting), `posixrules` and the copies some systems keep under `posix/` and `right/` are files
    ZoneInfo reads on such a host but no zone of that list: on another (Lambda's) they are not there, and an account
    set to one had its times read in UTC."""
    return name in _listed_zones() and name not in _NO_PLACE


def chosen_zone(name: str) -> ZoneInfo | None:
    """The zone of that name when it is one a person may choose (`is_chosen_zone`): an account's zone, a send's
    scheduled_delivery_timezone. None otherwise."""
    return zone_named(name) if is_chosen_zone(name) else None


def not_a_chosen_zone(name: str) -> str:
    """Why `name` is refused as a zone, naming the zone to give for a copy under posix/ or right/."""
    _, slash, rest = name.partition("/")
    hint = f": give {rest!r}" if slash and is_chosen_zone(rest) else " (e.g. Africa/Lagos)"
    return f"{name!r} is not an IANA time zone{hint}"


@cache
def _listed_zones() -> frozenset[str]:
    # Read once, only where a zone is chosen: an account's, or a send's (importlib.resources costs the api's cold
    # start).
    from importlib import resources

    return frozenset(resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())


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
