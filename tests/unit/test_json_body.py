"""Request bodies: JSON whose strings can be stored and sent on."""

from __future__ import annotations

import pytest

from sms_gateway.dialects.common import parse_json_body
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
