"""The log filter that keeps phone numbers out of every log line, whatever logged them."""

from __future__ import annotations

import logging

from sms_gateway.observability import NumberMaskingFilter, mask_numbers


def test_numbers_in_every_form_are_masked_and_ids_are_not():
    text = "to +2348020000101, 2348020000101 and 08020000101; batch 386161367775919616, 12 parts"
    assert mask_numbers(text) == "to 234*******101, 234*******101 and 080*****101; batch 386161367775919616, 12 parts"


def test_short_local_numbers_keep_only_two_digits_and_query_strings_are_dropped():
    assert mask_numbers("call 5550123") == "call *****23"
    assert mask_numbers("GET http://smsc:13013/cgi-bin/sendsms?password=s3cret&to=2348020000101 200") == (
        "GET http://smsc:13013/cgi-bin/sendsms?<query hidden> 200"
    )


def test_the_filter_masks_message_arguments_extras_and_the_exception():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "sent to %s", ("+2348020000101",), None)
    record.reason = "invalid recipient number: '08020000101'"
    record.numbers = ["2348030000102"]
    try:
        raise ValueError("denied: 2348050000103")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert NumberMaskingFilter().filter(record)
    assert record.getMessage() == "sent to 234*******101"
    assert record.reason == "invalid recipient number: '080*****101'"
    assert record.numbers == ["234*******102"]
    assert "234*******103" in record.exception and "2348050000103" not in record.exception
    assert record.exception_name == "ValueError" and record.exc_text == record.exception
