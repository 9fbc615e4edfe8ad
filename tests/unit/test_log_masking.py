"""The log filter that keeps phone numbers out of every log line, whatever logged them."""

from __future__ import annotations

import logging

from sms_gateway.observability import NumberMaskingFilter, mask_msisdn, mask_numbers


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


def test_numbers_written_in_groups_are_masked_in_their_shape_and_dates_are_not():
    # Given numbers as people type them (the separators the number parser takes), beside a date-time and our ids
    text = (
        "to +234 802 000 0199 (Ada), 0802-000-0199/, (0802) 000.0199 on 2026-01-02 10:30:00; batch 386161367775919616"
    )
    # Then each number keeps its shape with its middle digits hidden; the date-time and the id are left as they are
    assert mask_numbers(text) == (
        "to +234 *** *** *199 (Ada), 080*-***-*199/, (080*) ***.*199 on 2026-01-02 10:30:00; batch 386161367775919616"
    )


def test_a_refused_number_is_logged_as_its_digits_masked():
    from sms_gateway.observability import mask_typed_number

    # Given what a client typed as a number, separators, name and all; Then a log quotes only its digits, masked
    assert mask_typed_number("+234 802 000 0199 (Ada)") == "234*******199"
    assert mask_typed_number("0802/000/0199") == "080*****199"
    assert mask_typed_number("Ada") == "(no digits)"


def test_grouped_digit_masking_leaves_ids_decimals_addresses_and_dates_as_they_are():
    # Given a Jasmin message id (a UUID its DLRs name), logged as an extra
    jasmin_id = "f0c4d3d7-2351-483f-96ea-13f2c6cf299d"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "delivery report for an unknown message", (), None)
    record.upstream_message_id = jasmin_id
    assert NumberMaskingFilter().filter(record)
    # Then the id is logged whole, so the operator can find the message by it
    assert record.upstream_message_id == jasmin_id
    assert mask_numbers("ids 0c4d3d7f-2351-4837-96ea-13f2c6cf299d") == "ids 0c4d3d7f-2351-4837-96ea-13f2c6cf299d"
    # And neither a decimal, an IP address nor a date after a short number is taken for a grouped phone number
    for text in (
        "upstream answered in 1234.567 ms",
        "connect to 172.31.255.254:13013 failed",
        "batch 7 2026-12-05T10:00:00Z",
    ):
        assert mask_numbers(text) == text
    # While a dotted phone number still is masked
    assert mask_numbers("call 0802.000.0199.") == "call 080*.***.*199."


def in_script(text: str, zero: str) -> str:
    """`text` with its ASCII digits written in the script whose zero is `zero` (digits are consecutive in Unicode)."""
    return text.translate({ord("0") + d: ord(zero) + d for d in range(10)})


def test_numbers_in_non_ascii_digits_are_masked_like_any_other():
    # Arabic-Indic (U+0660...) and Persian (U+06F0...) digits are digits to a reader, and to the patterns that find
    # numbers: masked as ASCII ones would be, in their own script
    arabic, persian = (lambda text: in_script(text, "\u0660")), (lambda text: in_script(text, "\u06f0"))
    assert mask_numbers(arabic("from 08020000199, ok")) == arabic("from 080*****199, ok")
    assert mask_numbers(persian("from +2348020000199")) == persian("from 234*******199")
    assert mask_numbers(arabic("to 0802 000 0199")) == arabic("to 080* *** *199")
    # An inbound SMS's sender as an SMSC may pass it on, masked where the webhook logs it
    assert mask_msisdn(arabic("+2348020000199")) == arabic("234*******199")
