"""Request bodies: JSON whose strings can be stored and sent on; text echoed back cut to the bytes JSON writes."""

from __future__ import annotations

import pytest

from sms_gateway.dialects.common import json_prefix, json_response, parse_json_body
from sms_gateway.errors import InvalidRequest


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ('{"message": "\\ud83d\\ude00 party"}', "\U0001f600 party"),
        ('{"message": "\\uD83D\\uDE00"}', "\U0001f600"),
        ('{"message": "caf\\u00e9 \\\\ud800 is six characters"}', "caf\u00e9 \\ud800 is six characters"),
        ('{"message": "\U0001f600 as UTF-8"}', "\U0001f600 as UTF-8"),
    ],
    ids=["escaped-pair", "upper-case-pair", "escaped-backslash", "raw-utf8"],
)
def test_text_with_emoji_in_any_form_is_read(raw: str, text: str) -> None:
    assert parse_json_body(raw) == {"message": text}


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ude00\\ud83d", "\\ud83d x"])
def test_a_lone_surrogate_anywhere_refuses_the_body(escape: str) -> None:
    with pytest.raises(InvalidRequest, match="lone UTF-16 surrogate"):
        parse_json_body('{"to": ["1"], "nested": {"deep": ["' + escape + '"]}}')


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("a" * 80, "a" * 64),
        ("™" * 80, "™" * 10),
        ("\U0001f600" * 80, "\U0001f600" * 5),
        ('"' * 80, '"' * 32),
        ("\x01" * 80, "\x01" * 10),
        ("short ™", "short ™"),
    ],
    ids=["ascii", "non-ascii", "astral", "quotes", "control", "within"],
)
def test_echoed_text_is_cut_to_the_bytes_the_answer_writes_it_in(text: str, kept: str) -> None:
    assert json_prefix(text, 64) == kept
    assert len(str(json_response(200, kept).body)) - 2 <= 64
