"""The Compose page's recipients: pasted numbers, and an uploaded CSV read row by row with a reason for each bad row."""

from __future__ import annotations

import pytest

from sms_gateway.errors import InvalidRequest
from sms_gateway.logic.compose import MAX_RECIPIENTS, RowProblem, csv_numbers, pasted_numbers


def test_pasted_numbers_are_split_on_lines_commas_and_semicolons():
    text = "08030000001\n+2348020000002, 2348050000003;0803 000 0004\n\n , "
    assert pasted_numbers(text) == ["08030000001", "+2348020000002", "2348050000003", "0803 000 0004"]


def test_a_single_column_without_header_is_read_whole_and_blank_rows_skipped():
    numbers, problems = csv_numbers(b"08030000001\n\n+2348020000002\r\n", "NG")
    assert numbers == ["08030000001", "+2348020000002"]
    assert problems == []


def test_the_number_column_is_found_by_its_header_and_bad_rows_get_their_row_and_reason():
    content = "\ufeffname,Phone\nAda,08030000001\nBola,not a number\nChi,\nDayo,0803\n".encode()
    numbers, problems = csv_numbers(content, "NG")
    assert numbers == ["08030000001"]
    assert [(p.row, p.value) for p in problems] == [(3, "not a number"), (4, ""), (5, "0803")]
    assert all(p.reason for p in problems)
    assert str(problems[1]) == "row 4: no number in this row"
    assert str(problems[0]).startswith("row 3 'not a number': ")


def test_a_file_that_is_not_utf8_or_too_big_or_too_long_is_refused_whole():
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        csv_numbers(b"\xff\xfe0\x008\x00", "NG")
    with pytest.raises(InvalidRequest, match="KB limit"):
        csv_numbers(b"0" * (101 * 1024), "NG")
    many = "\n".join(f"+234803{n:07d}" for n in range(MAX_RECIPIENTS + 1)).encode()
    with pytest.raises(InvalidRequest, match=f"at most {MAX_RECIPIENTS}"):
        csv_numbers(many, "NG")


def test_a_row_problem_reads_like_a_spreadsheet_row():
    assert str(RowProblem(row=2, value="x", reason="not a number")) == "row 2 'x': not a number"


def test_the_9bits_request_limit_is_the_sends_limit():
    from sms_gateway.dialects import ninebits

    assert ninebits.MAX_RECIPIENTS == MAX_RECIPIENTS
