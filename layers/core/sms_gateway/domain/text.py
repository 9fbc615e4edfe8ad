"""Text UTF-8 can carry: a lone UTF-16 surrogate, which Python's json reads from a `\\ud800` escape without its pair
(and some codecs make), is no character, and DynamoDB, SQS and every webhook refuse a string holding one."""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON escape of a UTF-16 surrogate (\ud800-\udfff). A pair of them is one character (an emoji); one alone decodes
# to a str that cannot be written as UTF-8.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# The same in JSON bytes: the escape, or a surrogate written as UTF-8 bytes (CESU-8), which json.loads takes too.
_SURROGATE_IN_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"


def readable(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, as a decoder replaces bytes it cannot read (a pair of them,
    as a decoder that passes surrogates leaves an emoji, joined into its character)."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def readable_json(raw: str | bytes) -> Any:
    """An upstream's JSON as `json.loads` reads it (ValueError if it is not JSON, or nested too deeply to read), with
    every string in it, key or value, `readable`: an upstream cannot be made to send other text, and refusing its
    callback would lose the SMS or report (a 5xx: posted again for ever)."""
    try:
        payload = json.loads(raw)
        if not _may_hold_surrogates(raw):
            return payload
        return _readable_values(payload)
    except RecursionError as error:
        raise ValueError("JSON nested too deeply to read") from error


def _may_hold_surrogates(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        # JSON in UTF-16 or UTF-32, which json.loads reads too (by its zero bytes or byte-order mark), writes an escape
        # or a surrogate in other bytes than UTF-8's: its strings are all looked at (until 2026-12-07 such an answer's
        # lone surrogate was kept).
        utf8 = json.detect_encoding(raw) in ("utf-8", "utf-8-sig")
        return not utf8 or _SURROGATE_IN_BYTES.search(raw) is not None
    return SURROGATE_ESCAPE.search(raw) is not None or (not raw.isascii() and _SURROGATE.search(raw) is not None)


def _readable_values(value: Any) -> Any:
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, list):
        return [_readable_values(item) for item in value]
    if isinstance(value, dict):
        return {readable(key): _readable_values(item) for key, item in value.items()}
    return value
