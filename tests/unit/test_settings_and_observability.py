"""Settings come from the environment; logs never carry a whole phone number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_gateway.observability import mask_msisdn
from sms_gateway.settings import Settings


def test_settings_read_the_variables_the_template_sets():
    settings = Settings.from_environ(
        {
            "TABLE_NAME": "gw-table",
            "DISPATCH_QUEUE_URL": "https://sqs/dispatch.fifo",
            "ALLOW_HTTP_WEBHOOKS": "true",
            "DISPATCH_CONCURRENCY": "16",
            "UNRELATED": "x",
        }
    )
    assert settings.table_name == "gw-table"
    assert settings.dispatch_queue_url == "https://sqs/dispatch.fifo"
    assert settings.allow_http_webhooks is True
    assert settings.dispatch_concurrency == 16
    # Unset variables keep safe defaults: plain-http webhooks are off outside the local stack
    assert Settings.from_environ({}).allow_http_webhooks is False


def test_a_malformed_setting_fails_loudly_at_start():
    with pytest.raises(ValueError, match="dispatch_concurrency"):
        Settings.from_environ({"DISPATCH_CONCURRENCY": "many"})


def test_the_dlr_wait_defaults_to_48_hours_and_stays_within_what_the_notify_queue_can_hold():
    # Each hop of a settle check is a visibility timeout (12 h at most) on a queue keeping messages 14 days
    assert Settings.from_environ({}).dlr_wait_seconds == 172_800
    assert Settings.from_environ({"DLR_WAIT_SECONDS": "20"}).dlr_wait_seconds == 20
    for beyond in ("0", "259201"):
        with pytest.raises(ValueError, match="DLR_WAIT_SECONDS must be from 1 to 259200"):
            Settings.from_environ({"DLR_WAIT_SECONDS": beyond})


@given(st.from_regex(r"\+?[0-9]{7,15}", fullmatch=True))
def test_a_masked_number_keeps_only_the_country_code_and_last_three_digits(number):
    masked = mask_msisdn(number)
    digits = number.lstrip("+")
    assert masked[:3] == digits[:3]
    assert masked[-3:] == digits[-3:]
    assert len(masked) == len(digits)
    assert masked.count("*") == len(digits) - 6


def test_an_inbound_sender_that_is_no_number_is_logged_as_it_is_with_any_number_in_it_masked():
    # A sender ID or short code an inbound SMS came from is kept (stored since 2026-12-07); a number in it is not
    assert [mask_msisdn(sender) for sender in ("WhatsApp", "131", "MTN 08020000199")] == [
        "WhatsApp",
        "***",
        "MTN 080*****199",
    ]
