"""Time zone names as clients and operators type them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from sms_gateway.domain.zones import UTC_ZONE, account_zone, country_zones, in_zone, zone_named
from sms_gateway.errors import InvalidRequest
from sms_gateway.logic.accounts import check_timezone


@pytest.mark.parametrize("name", ["Europe", "x" * 256, "../etc/passwd", "", "Mars/Base", "Africa/Lagos/"])
def test_a_name_that_is_no_zone_is_refused_as_such_and_never_raises_otherwise(name: str) -> None:
    # Given a region, a name too long for a file, a path, nothing, or an unknown name
    # When it is looked up as a zone, for a send or an account's settings
    # Then it is no zone (zoneinfo raised IsADirectoryError or OSError for the first two: a 500)
    assert zone_named(name) is None
    assert account_zone(name) == UTC_ZONE
    with pytest.raises(InvalidRequest, match="not an IANA time zone"):
        check_timezone(name)


def test_a_time_without_an_offset_is_read_in_the_zone_and_one_with_an_offset_is_kept() -> None:
    lagos = ZoneInfo("Africa/Lagos")
    assert in_zone(datetime(2030, 1, 1, 10), lagos) == datetime(2030, 1, 1, 10, tzinfo=lagos)
    assert in_zone(datetime(2030, 1, 1, 10, tzinfo=UTC_ZONE), lagos).utcoffset().total_seconds() == 0
    assert zone_named("Africa/Lagos") == lagos


@pytest.mark.parametrize(
    ("country", "zones"),
    [
        ("NG", ("Africa/Lagos",)),
        ("KE", ("Africa/Nairobi",)),
        ("GH", ("Africa/Accra",)),
        ("CD", ("Africa/Kinshasa", "Africa/Lubumbashi")),
        ("XK", ()),
    ],
)
def test_a_country_s_zones_are_the_ones_the_tz_database_gives_it(country: str, zones: tuple[str, ...]) -> None:
    # Given a country we serve, one of several zones, or one the tz database gives no zone of its own (Kosovo)
    # Then its zones are those of the tz database's zone.tab, each a zone zoneinfo knows
    assert country_zones(country) == zones
    assert all(zone_named(zone) is not None for zone in zones)
    assert len(country_zones("US")) > 1


def test_a_country_s_zones_are_found_without_the_system_s_zoneinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    from sms_gateway.domain import zones

    # Given a runtime image with no zoneinfo of its own (Lambda's may have none)
    monkeypatch.setattr(zones, "TZPATH", ())
    zones._zones_by_country.cache_clear()
    try:
        # Then the zones come from the tzdata package the layer ships
        assert country_zones("KE") == ("Africa/Nairobi",)
    finally:
        zones._zones_by_country.cache_clear()
