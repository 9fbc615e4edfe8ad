"""Time zone names as clients and operators type them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from sms_gateway.domain.zones import UTC_ZONE, account_zone, in_zone, zone_named
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
