"""Retry-After as an upstream or a client webhook writes it: seconds or an HTTP date, read into a wait we can keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sms_gateway.adapters.http import MAX_RETRY_AFTER_SECONDS, retry_after_seconds


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("-30", 0.0)])
def test_seconds_are_read_and_a_negative_wait_is_no_wait(header: str, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds


def test_a_wait_longer_than_a_day_is_cut_to_a_day() -> None:
    assert retry_after_seconds("31536000") == MAX_RETRY_AFTER_SECONDS == 86_400.0


def test_an_http_date_a_year_ahead_is_cut_to_a_day() -> None:
    a_year_ahead = format_datetime(datetime.now(UTC) + timedelta(days=365), usegmt=True)
    assert retry_after_seconds(a_year_ahead) == MAX_RETRY_AFTER_SECONDS


def test_an_http_date_is_read_as_the_seconds_until_it() -> None:
    in_two_minutes = format_datetime(datetime.now(UTC) + timedelta(minutes=2), usegmt=True)
    seconds = retry_after_seconds(in_two_minutes)
    assert seconds is not None and 100 < seconds <= 120


def test_an_http_date_in_the_past_is_no_wait() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "Infinity", "-Infinity", "1e999", "nan"])
def test_an_absent_or_unreadable_header_is_none(header: str | None) -> None:
    assert retry_after_seconds(header) is None
