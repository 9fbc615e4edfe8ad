"""Client date-times as the session-key family's clients write them, read into aware UTC datetimes; and ISO 8601's
basic form in digits alone, which every dialect reads as a date."""

from __future__ import annotations

import re
from datetime import MINYEAR, UTC, datetime, timedelta, timezone, tzinfo

# The forms the family documents, plus what the seed's sample clients emit: PHP's date('YmdHis'), Python's
# isoformat(), JSON.NET's DateTime, JavaScript's toJSON() and Gson's default (US-locale DateFormat).
ACCEPTED_FORMS = (
    "yyyyMMddHHmmss, yyyyMMddHHmm, yyyyMMdd, ddMMyyHHmm, ddMMyy, yyyy-MM-dd HH:mm, yyyy-MM-dd HH:mm:ss[.f], "
    "ISO 8601 (yyyy-MM-ddTHH:mm[:ss[.f]][Z|±HH:mm]) or 'MMM d, yyyy h:mm:ss AM'"
)

_DIGITS = re.compile(r"[0-9]+")
# yyyyMMdd, yyyyMMddHHmm and yyyyMMddHHmmss by their length. Read as Unix time they would name no moment anyone
# schedules (8 digits: before 1973 in seconds; 12: before 2002 in milliseconds; 14: after 2286 in milliseconds), so
# the dialects that take Unix time read these as dates too, in a string or a JSON number.
_BASIC_FORM_LENGTHS = (8, 12, 14)
_ISO = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[T ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    # Seconds with an optional fraction, or the family's literal "HH:mm.0" (a Java Timestamp cut short).
    r"(?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]{1,9}))?|\.0)?"
    r"(?P<offset>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?",
    re.IGNORECASE,
)
# Gson's default DateFormat in the US locale: "Aug 18, 2017 1:31:00 PM". Newer JDKs (CLDR data) add a comma
# after the year and put a narrow no-break space before AM/PM; \s covers that space in Python's str patterns.
_GSON = re.compile(
    r"(?P<month>[a-z]{3,4})\.?\s+(?P<day>[0-9]{1,2}),\s*(?P<year>[0-9]{4}),?\s+"
    r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})\s*(?P<meridiem>[AP]\.?M\.?)",
    re.IGNORECASE,
)
_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip


class InvalidClientDatetime(ValueError):
    def __init__(self, raw: str, reason: str) -> None:
        super().__init__(raw, reason)
        self.raw = raw
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.raw!r} is not a date-time we can read: {self.reason}"


def parse_client_datetime(value: str, tz: tzinfo) -> datetime:
    """The moment `value` names, as an aware UTC datetime. A value without an offset is wall-clock time in
    `tz` (the account's zone). Raises InvalidClientDatetime with the reason for anything else."""
    text = value.strip()
    if not text:
        raise InvalidClientDatetime(value, "it is empty")
    if _DIGITS.fullmatch(text):
        return _from_digits(value, text, tz)
    if found := _ISO.fullmatch(text):
        return _from_iso(value, found, tz)
    if found := _GSON.fullmatch(text):
        return _from_gson(value, found, tz)
    raise InvalidClientDatetime(value, f"use one of {ACCEPTED_FORMS}")


# Unix time in digits above this is milliseconds (2·10¹⁰ seconds is the year 2603), as the dialects read `send_at`.
_MILLISECONDS_ABOVE = 20_000_000_000
# More digits than any Unix time in milliseconds a datetime can hold: not read as a number at all.
_MAX_UNIX_DIGITS = 15


def upstream_moment(value: str) -> datetime | None:
    """The moment an upstream's time names, as an aware UTC datetime: ISO 8601 with any fraction, `Z`, an offset or
    none (UTC, as the SMSC dates are read), or Unix time in digits (seconds; milliseconds above 2·10¹⁰). None for
    anything else: an upstream's word for a time is never refused, it is only not known."""
    text = value.strip()
    if _DIGITS.fullmatch(text):
        if len(text) > _MAX_UNIX_DIGITS:
            return None
        number = int(text)
        try:
            return datetime.fromtimestamp(number / 1000 if number > _MILLISECONDS_ABOVE else number, UTC)
        except (ValueError, OverflowError, OSError):
            return None
    found = _ISO.fullmatch(text)
    if found is None:
        return None
    try:
        return _from_iso(value, found, UTC)
    except InvalidClientDatetime:
        return None


def basic_form_wall_clock(value: str | int | float) -> datetime | None:
    """The wall-clock time (naive) that `value` writes in ISO 8601's basic form in digits alone, yyyyMMdd[HHmm[ss]],
    or None for any other text. A JSON number written in those digits (PHP clients send 20261208 unquoted, and a
    JavaScript client's number may arrive as 20261208.0) is read the same; a number with a fraction is no date, and a
    boolean is no number here. InvalidClientDatetime when it has that form but names no such date or time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    raw = str(value)
    text = raw.strip()
    if not _DIGITS.fullmatch(text) or len(text) not in _BASIC_FORM_LENGTHS:
        return None
    fields = (text[0:4], text[4:6], text[6:8], text[8:10] or "0", text[10:12] or "0", text[12:14] or "0")
    year, month, day, hour, minute, second = (int(field) for field in fields)
    return _wall_clock(raw, year=year, month=month, day=day, hour=hour, minute=minute, second=second)


def _from_digits(raw: str, digits: str, tz: tzinfo) -> datetime:
    length = len(digits)
    if (wall_clock := basic_form_wall_clock(raw)) is not None:
        return _placed(raw, wall_clock, tz)
    if length == 10:  # ddMMyyHHmm
        fields = (_century(digits[4:6]), digits[2:4], digits[0:2], digits[6:8], digits[8:10], "0")
    elif length == 6:  # ddMMyy
        fields = (_century(digits[4:6]), digits[2:4], digits[0:2], "0", "0", "0")
    else:
        raise InvalidClientDatetime(
            raw,
            f"{length} digits match no form: use yyyyMMddHHmmss (14), yyyyMMddHHmm (12), yyyyMMdd (8), "
            "ddMMyyHHmm (10) or ddMMyy (6)",
        )
    year, month, day, hour, minute, second = (int(field) for field in fields)
    wall_clock = _wall_clock(raw, year=year, month=month, day=day, hour=hour, minute=minute, second=second)
    return _placed(raw, wall_clock, tz)


def _century(two_digits: str) -> str:
    # Two-digit years are this century's: the family schedules sends, it does not record birthdays.
    return str(2000 + int(two_digits))


def _from_iso(raw: str, found: re.Match[str], tz: tzinfo) -> datetime:
    fraction = (found["fraction"] or "").ljust(6, "0")[:6]
    zone = _offset(raw, found["offset"]) if found["offset"] else tz
    wall_clock = _wall_clock(
        raw,
        year=int(found["year"]),
        month=int(found["month"]),
        day=int(found["day"]),
        hour=int(found["hour"]),
        minute=int(found["minute"]),
        second=int(found["second"] or 0),
        microsecond=int(fraction),
    )
    return _placed(raw, wall_clock, zone)


def _offset(raw: str, text: str) -> tzinfo:
    if text.upper() == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise InvalidClientDatetime(raw, f"the offset {text} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _from_gson(raw: str, found: re.Match[str], tz: tzinfo) -> datetime:
    month = _MONTHS.get(found["month"].lower())
    if month is None:
        raise InvalidClientDatetime(raw, f"{found['month']!r} is not an English month abbreviation")
    hour = int(found["hour"])
    if not 1 <= hour <= 12:
        raise InvalidClientDatetime(raw, f"hour {hour} is not on a 12-hour clock")
    afternoon = found["meridiem"].upper().startswith("P")
    hour = hour % 12 + (12 if afternoon else 0)
    wall_clock = _wall_clock(
        raw,
        year=int(found["year"]),
        month=month,
        day=int(found["day"]),
        hour=hour,
        minute=int(found["minute"]),
        second=int(found["second"]),
    )
    return _placed(raw, wall_clock, tz)


def _wall_clock(
    raw: str,
    *,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    try:
        return datetime(year, month, day, hour, minute, second, microsecond)
    except ValueError as error:
        raise InvalidClientDatetime(raw, f"no such date or time ({error})") from error


def _placed(raw: str, wall_clock: datetime, zone: tzinfo) -> datetime:
    """The moment `wall_clock` names in `zone`, in UTC (which the first and last days of the calendar may not have:
    a time on the first day east of UTC is the calendar's first moment, long past, as a client's unset date-time,
    JSON.NET's `DateTime.MinValue`, means; until 2026-12-07 it was refused as no such date)."""
    try:
        return wall_clock.replace(tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError) as error:
        if wall_clock.year == MINYEAR:
            return datetime.min.replace(tzinfo=UTC)
        raise InvalidClientDatetime(raw, f"no such date or time ({error})") from error
