"""SMS segmentation: GSM-7 or UCS-2, how many parts a text takes and where it is cut."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class Segmentation:
    encoding: Encoding
    parts: int
    units: int
    per_part: int
    ucs2_characters: tuple[str, ...]

    @property
    def blind_parts(self) -> int:
        """The parts of a gateway that cuts a long text every `per_part` units blind to characters (Jasmin): it
        splits an escape or surrogate pair on a boundary instead of moving it whole to the next part, so it may send
        fewer parts than `parts`, never more."""
        return 1 if self.parts == 1 else math.ceil(self.units / self.per_part)


# GSM 03.38 default alphabet in code order; 0x1B is the escape to the extension table, not a character.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Sent as the escape septet followed by the character's code, so each costs two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67
# The concatenation header (the handset's, SMPP's) counts a long SMS's parts in one octet.
MOST_PARTS = 255
# The longest text any SMS carries, in UTF-16 units (utf16_units): 255 parts of 153 GSM-7 characters. Its other
# codings carry less: UCS-2 255 x 67 = 17,085 units, 8-bit data 255 x 134 = 34,170 octets (a character at most each).
MOST_SMS_UNITS = MOST_PARTS * GSM7_MULTI


def segment(text: str) -> Segmentation:
    """How `text` is encoded and into how many parts; empty text still costs one part."""
    encoding, ucs2_characters = _encoding(text)
    units = _units(text, encoding)
    single, multi = _limits(encoding)
    if units <= single:
        return Segmentation(encoding, 1, units, single, ucs2_characters)
    parts = sum(1 for _ in _cuts(text, encoding, multi))
    return Segmentation(encoding, parts, units, multi, ucs2_characters)


def split(text: str) -> list[str]:
    """The texts of the parts, in order; joined they give back `text`."""
    encoding, _ = _encoding(text)
    single, multi = _limits(encoding)
    if _units(text, encoding) <= single:
        return [text]
    return [text[start:end] for start, end in _cuts(text, encoding, multi)]


def blind_cut_splits_a_pair(text: str) -> bool:
    """Whether a gateway that cuts a long UCS-2 text every 67 UTF-16 units, blind to characters (Kannel), would cut
    through an emoji's surrogate pair, so its parts differ from `split`'s (which moves the pair whole to the next
    part). False for a text of one part and for GSM-7 text (Kannel's GSM cut keeps escape pairs whole, as ours)."""
    segmentation = segment(text)
    if segmentation.parts == 1 or segmentation.encoding is Encoding.GSM7:
        return False
    unit = 0
    for character in text:
        cost = _cost(character, Encoding.UCS2)
        if cost == 2 and (unit + 1) % UCS2_MULTI == 0:
            return True
        unit += cost
    return False


# U+200B ZERO WIDTH SPACE: one UTF-16 unit that handsets draw as nothing (some as a box).
ZERO_WIDTH_SPACE = "\u200b"


def padded_for_blind_cut(text: str) -> str:
    """`text` with a U+200B ZERO WIDTH SPACE ending each part `split` left a unit short of 67 (it moved an emoji's
    surrogate pair whole to the next part), so a gateway that cuts a long UCS-2 text every 67 UTF-16 units blind to
    characters (Kannel, Jasmin) cuts it where `split` does: the same parts, no pair split. Any other text (one part,
    GSM-7, no pair on a boundary) comes back as it is."""
    if not blind_cut_splits_a_pair(text):
        return text
    parts = split(text)
    return "".join(
        part + ZERO_WIDTH_SPACE if index < len(parts) - 1 and _units(part, Encoding.UCS2) < UCS2_MULTI else part
        for index, part in enumerate(parts)
    )


def utf16_units(text: str) -> int:
    """The UTF-16 code units of `text`, as UCS-2 sends it: a character outside the BMP (an emoji) is two."""
    return _units(text, Encoding.UCS2)


def _units(text: str, encoding: Encoding) -> int:
    return sum(_cost(character, encoding) for character in text)


def _encoding(text: str) -> tuple[Encoding, tuple[str, ...]]:
    # A dict keeps the first-appearance order and drops repeats.
    outside = dict.fromkeys(
        character for character in text if character not in GSM7_BASIC and character not in GSM7_EXTENSION
    )
    if outside:
        return Encoding.UCS2, tuple(outside)
    return Encoding.GSM7, ()


def _limits(encoding: Encoding) -> tuple[int, int]:
    return (GSM7_SINGLE, GSM7_MULTI) if encoding is Encoding.GSM7 else (UCS2_SINGLE, UCS2_MULTI)


def _cost(character: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return 2 if character in GSM7_EXTENSION else 1
    # Outside the BMP a character is a surrogate pair: two UTF-16 code units.
    return 2 if ord(character) > 0xFFFF else 1


def _cuts(text: str, encoding: Encoding, limit: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each part, filled greedily. Python strings index code points, so a character never
    splits: an escape pair or surrogate pair that does not fit moves whole to the next part."""
    start, used = 0, 0
    for index, character in enumerate(text):
        cost = _cost(character, encoding)
        if used + cost > limit:
            yield start, index
            start, used = index, 0
        used += cost
    yield start, len(text)
