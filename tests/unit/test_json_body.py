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


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ('{"message": "hi \\ud800"}', "hi \ufffd"),
        ('{"message": "\\ude00\\ud83d"}', "\ufffd\ufffd"),
        ('{"message": "\\ud83d\\ude00 kept"}', "\U0001f600 kept"),
        ('{"message": "\\\\ud800 is text"}', "\\ud800 is text"),
        (b'{"message": "cesu \xed\xa0\x80"}', "cesu \ufffd"),
    ],
    ids=["lone", "reversed-pair", "pair", "escaped-backslash", "surrogate-as-utf8-bytes"],
)
def test_an_upstreams_json_is_read_with_each_lone_surrogate_replaced(raw: str | bytes, text: str) -> None:
    from sms_gateway.domain.text import readable_json

    # Given an upstream's JSON (a callback's body, an answer's bytes) holding a surrogate
    # When it is read, then each lone one is U+FFFD (a pair is its character), in keys as in values, at any depth
    assert readable_json(raw) == {"message": text}
    assert readable_json('{"a\\udc00": [{"b": "\\ud800"}]}') == {"a\ufffd": [{"b": "\ufffd"}]}
    text.encode()


def test_a_callback_body_in_a_charset_that_makes_lone_surrogates_is_read_with_replacement_characters() -> None:
    from types import SimpleNamespace

    from sms_gateway.dialects.common import callback_text

    # Given a callback whose body names UTF-7, which decodes "+2AA-" to a lone surrogate
    event = SimpleNamespace(
        body="aGkgKzJBQS0=", is_base64_encoded=True, headers={"content-type": "text/plain; charset=utf-7"}
    )
    # When it is read, then the surrogate is U+FFFD
    assert callback_text(event) == "hi \ufffd"
