"""Client date-times of the session-key family: every form its clients write, and clear refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_gateway.domain.dates import InvalidClientDatetime, basic_form_wall_clock, parse_client_datetime

ROME = ZoneInfo("Europe/Rome")
ZONES = st.sampled_from(
    [ZoneInfo(name) for name in ("Africa/Lagos", "Europe/Rome", "America/New_York", "Asia/Kolkata", "UTC")]
)
# Naive wall-clock times as clients write them (second precision unless a form carries more).
WALL_CLOCK = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31)).map(
    lambda moment: moment.replace(fold=0)
)
THIS_CENTURY = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59))


def in_zone(naive: datetime, zone: ZoneInfo) -> datetime:
    return naive.replace(tzinfo=zone).astimezone(UTC)


def gson(moment: datetime) -> str:
    """Gson's default (US locale, pre-CLDR JDK): 'Aug 18, 2017 1:31:00 PM'."""
    return f"{moment:%b} {moment.day}, {moment.year} {moment.hour % 12 or 12}:{moment:%M:%S %p}"


# ------------------------------------------------------------------ the seed's own values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # PHP date('YmdHis') and the Node sample's literal: Rome is UTC+1 in December
        ("20171223101010", datetime(2017, 12, 23, 9, 10, 10, tzinfo=UTC)),
        # C#'s JSON.NET DateTime (Kind unspecified): wall clock, UTC+2 in August
        ("2017-08-18T13:31:00", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        # Java's Gson Date, old and new JDKs (CLDR: a comma after the year, U+202F before PM)
        ("Aug 18, 2017 1:31:00 PM", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        ("Aug 18, 2017, 1:31:00\u202fPM", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        ("Aug 18, 2017 12:05:00 AM", datetime(2017, 8, 17, 22, 5, tzinfo=UTC)),
        ("Aug 18, 2017 12:05:00 PM", datetime(2017, 8, 18, 10, 5, tzinfo=UTC)),
        # Python isoformat(), naive with microseconds, and aware
        ("2017-08-18T13:31:00.250000", datetime(2017, 8, 18, 11, 31, 0, 250000, tzinfo=UTC)),
        ("2017-08-18T13:31:00+05:30", datetime(2017, 8, 18, 8, 1, tzinfo=UTC)),
        # JavaScript toJSON() and JSON.NET's seven fraction digits (cut to microseconds)
        ("2017-08-18T13:31:00.000Z", datetime(2017, 8, 18, 13, 31, tzinfo=UTC)),
        ("2017-08-18T13:31:00.1234567", datetime(2017, 8, 18, 11, 31, 0, 123456, tzinfo=UTC)),
        # The family's documented forms
        ("20170818", datetime(2017, 8, 17, 22, 0, tzinfo=UTC)),
        ("180817", datetime(2017, 8, 17, 22, 0, tzinfo=UTC)),
        ("1808171331", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        ("2017-08-18 13:31", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        ("2017-08-18 13:31.0", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        ("2017-08-18 13:31:00.0", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
        ("  20171223101010 ", datetime(2017, 12, 23, 9, 10, 10, tzinfo=UTC)),
        # yyyyMMddHHmm: ISO 8601's basic form without seconds, which the shortcode and 9bits dialects read too
        ("201708181331", datetime(2017, 8, 18, 11, 31, tzinfo=UTC)),
    ],
)
def test_each_form_is_read_in_the_accounts_zone_unless_it_has_an_offset(value, expected):
    assert parse_client_datetime(value, ROME) == expected


def test_the_answer_is_aware_utc():
    parsed = parse_client_datetime("20171223101010", ROME)
    assert parsed.tzinfo is UTC


# ------------------------------------------------------------------ round trips


@given(WALL_CLOCK, ZONES)
def test_php_yyyymmddhhmmss_round_trips(moment, zone):
    moment = moment.replace(microsecond=0)
    assert parse_client_datetime(moment.strftime("%Y%m%d%H%M%S"), zone) == in_zone(moment, zone)


@given(WALL_CLOCK, ZONES)
def test_python_naive_isoformat_round_trips(moment, zone):
    assert parse_client_datetime(moment.isoformat(), zone) == in_zone(moment, zone)


@given(WALL_CLOCK, st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1), ZONES)
def test_an_offset_wins_over_the_zone(moment, offset_minutes, zone):
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert parse_client_datetime(aware.isoformat(), zone) == aware


@given(WALL_CLOCK, ZONES)
def test_json_net_seven_digit_fractions_round_trip_to_the_microsecond(moment, zone):
    written = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}9"
    assert parse_client_datetime(written, zone) == in_zone(moment, zone)


@given(WALL_CLOCK, ZONES, st.booleans())
def test_gson_round_trips(moment, zone, new_jdk):
    moment = moment.replace(microsecond=0)
    written = gson(moment)
    if new_jdk:
        written = written.replace(f"{moment.year} ", f"{moment.year}, ").replace(" AM", "\u202fAM")
        written = written.replace(" PM", "\u202fPM")
    assert parse_client_datetime(written, zone) == in_zone(moment, zone)


@given(THIS_CENTURY, ZONES)
def test_two_digit_year_forms_round_trip_in_this_century(moment, zone):
    assert parse_client_datetime(moment.strftime("%d%m%y%H%M"), zone) == in_zone(
        moment.replace(second=0, microsecond=0), zone
    )
    assert parse_client_datetime(moment.strftime("%d%m%y"), zone) == in_zone(
        moment.replace(hour=0, minute=0, second=0, microsecond=0), zone
    )


@given(st.text(max_size=40), ZONES)
def test_anything_else_is_either_a_moment_or_a_clear_refusal(text, zone):
    try:
        parsed = parse_client_datetime(text, zone)
    except InvalidClientDatetime as error:
        assert error.raw == text
        assert error.reason
    else:
        assert parsed.tzinfo is UTC


# ------------------------------------------------------------------ ISO 8601's basic form, which every dialect reads


@given(WALL_CLOCK)
def test_the_basic_form_in_digits_is_a_wall_clock_time(moment):
    moment = moment.replace(microsecond=0)
    assert basic_form_wall_clock(moment.strftime("%Y%m%d%H%M%S")) == moment
    assert basic_form_wall_clock(moment.strftime("%Y%m%d%H%M")) == moment.replace(second=0)
    assert basic_form_wall_clock(f" {moment:%Y%m%d} ") == moment.replace(hour=0, minute=0, second=0)


@pytest.mark.parametrize(
    "value",
    ["1765000000", "1765000000000", "176500000", "1808171331", "180817", "2017-08-18", "2017-08-18T13:31", "", "x" * 8],
)
def test_other_text_is_not_the_basic_form(value):
    # Unix seconds (9, 10 digits) and milliseconds (13), the session-key family's ddMMyy forms, and ISO's extended form
    assert basic_form_wall_clock(value) is None


@given(WALL_CLOCK)
def test_the_basic_form_as_a_json_number_is_the_same_wall_clock_time(moment):
    # A PHP client sends 20261208 unquoted: read as the digit string is, not as Unix time (1970)
    moment = moment.replace(microsecond=0)
    for form in ("%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d"):
        assert basic_form_wall_clock(int(moment.strftime(form))) == basic_form_wall_clock(moment.strftime(form))
        # ... and so is a whole float (a JavaScript or PHP client's 20261208.0): it was Unix time, in 1970
        assert basic_form_wall_clock(float(moment.strftime(form))) == basic_form_wall_clock(moment.strftime(form))


@pytest.mark.parametrize(
    "value",
    [1765000000, 1765000000000, 176500000, 1808171331, 180817, -20261208, True, False, 20261208.5, float("nan")],
)
def test_other_numbers_are_not_the_basic_form(value):
    # Unix seconds (9, 10 digits) and milliseconds (13), negative numbers, booleans (Python's bool is an int), and
    # floats with a fraction (a moment in Unix time, not a date)
    assert basic_form_wall_clock(value) is None


def test_the_basic_form_naming_no_such_date_is_refused_with_the_reason():
    with pytest.raises(InvalidClientDatetime) as raised:
        basic_form_wall_clock("20170230")
    assert "no such date or time" in raised.value.reason
    with pytest.raises(InvalidClientDatetime) as raised:
        basic_form_wall_clock(20170230)
    assert (raised.value.raw, raised.value.reason[:20]) == ("20170230", "no such date or time")


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("tomorrow", "use one of yyyyMMddHHmmss"),
        ("123", "3 digits match no form"),
        ("20171223101", "11 digits match no form"),
        ("2017122310101", "13 digits match no form"),
        ("201712231060", "no such date or time"),
        ("1513937410", "no such date or time"),  # a Unix timestamp reads as ddMMyyHHmm: day 15, month 13
        ("20171323101010", "no such date or time"),
        ("20170230101010", "no such date or time"),
        ("2017-02-30T10:00", "no such date or time"),
        ("2017-08-18T24:00:00", "no such date or time"),
        ("2017-08-18T13:31:00+24:00", "the offset +24:00 is out of range"),
        ("2017-08-18T13:31:00+02:61", "the offset +02:61 is out of range"),
        ("2017-08-18", "use one of"),
        ("2017-08-18T13:31:00 UTC", "use one of"),
        ("Foo 18, 2017 1:31:00 PM", "'Foo' is not an English month abbreviation"),
        ("Aug 18, 2017 13:31:00 PM", "hour 13 is not on a 12-hour clock"),
        ("Aug 18, 2017 0:31:00 AM", "hour 0 is not on a 12-hour clock"),
        ("Aug 32, 2017 1:31:00 PM", "no such date or time"),
        ("18 août 2017 13:31:00", "use one of"),
        ("२०१७१२२३१०१०१०", "use one of"),  # digits, but not ASCII ones
    ],
)
def test_other_values_are_refused_with_the_reason(value, reason):
    with pytest.raises(InvalidClientDatetime) as raised:
        parse_client_datetime(value, ROME)
    assert reason in raised.value.reason
    assert repr(value) in str(raised.value)
