"""SMS segmentation: encoding choice, unit counts, part counts and where multipart texts are cut."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_gateway.domain.segments import (
    Encoding,
    Segmentation,
    blind_cut_splits_a_pair,
    padded_for_blind_cut,
    segment,
    split,
)

# Written out independently of the module, from GSM 03.38, so a slip in either shows up here.
BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "\f^{}\\[~]|€"

gsm_basic_text = st.text(alphabet=BASIC, max_size=1000)
gsm_text = st.text(alphabet=BASIC + EXTENSION, max_size=700)
non_gsm_character = st.characters(exclude_characters=BASIC + EXTENSION, exclude_categories=["Cs"])
any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400) | gsm_text


def units_of(text: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return sum(2 if character in EXTENSION else 1 for character in text)
    return len(text.encode("utf-16-le")) // 2


def test_the_tables_hold_exactly_the_gsm_alphabet() -> None:
    # Given the 127 characters of the basic table (128 codes less the escape) and the 10 extension ones
    assert len(set(BASIC)) == 127
    assert len(set(EXTENSION)) == 10
    # When all of them are segmented
    result = segment(BASIC + EXTENSION)
    # Then they are GSM-7 at one septet each, two for the extension characters
    assert result.encoding is Encoding.GSM7
    assert result.units == 127 + 2 * 10


@pytest.mark.parametrize(
    ("text", "offenders"),
    [
        ("ça", ("ç",)),
        ("`quoted`", ("`",)),
        ("\u2019tis \u201cso\u201d", ("\u2019", "\u201c", "\u201d")),
        ("A\u0308", ("\u0308",)),
        ("tab\there", ("\t",)),
        ("no\u00a0break", ("\u00a0",)),
        ("\x1b", ("\x1b",)),
        ("á é", ("á",)),
    ],
)
def test_characters_outside_gsm_7_force_ucs_2(text: str, offenders: tuple[str, ...]) -> None:
    # Given a text with characters in neither GSM table: lowercase ç, backtick, smart quotes, a combining
    # accent, tab, no-break space, or the bare escape code itself
    # When it is segmented
    result = segment(text)
    # Then the text goes as UCS-2 and exactly those characters are named as the reason
    assert result.encoding is Encoding.UCS2
    assert result.ucs2_characters == offenders


def test_empty_text_is_one_gsm_part() -> None:
    # Given no text at all
    # When it is segmented and split
    # Then carriers still send one (empty) part
    assert segment("") == Segmentation(Encoding.GSM7, parts=1, units=0, per_part=160, ucs2_characters=())
    assert split("") == [""]


@given(gsm_basic_text)
def test_basic_gsm_text_takes_160_in_one_part_then_153_per_part(text: str) -> None:
    # Given any text from the basic GSM table
    # When it is segmented
    result = segment(text)
    # Then every character is one septet, and the part count follows 160 / 153
    n = len(text)
    assert result.encoding is Encoding.GSM7
    assert result.units == n
    assert result.parts == (1 if n <= 160 else math.ceil(n / 153))
    assert result.per_part == (160 if n <= 160 else 153)
    assert result.ucs2_characters == ()


@given(basic=gsm_basic_text, extension=st.text(alphabet=EXTENSION, max_size=100), data=st.data())
def test_extension_characters_count_two_septets(basic: str, extension: str, data: st.DataObject) -> None:
    # Given GSM text mixing basic and extension characters in any order
    text = "".join(data.draw(st.permutations(basic + extension)))
    # When it is segmented
    result = segment(text)
    # Then it stays GSM-7 and each extension character costs two septets
    assert result.encoding is Encoding.GSM7
    assert result.units == len(basic) + 2 * len(extension)


@given(text=gsm_basic_text, intruder=non_gsm_character, position=st.integers(min_value=0, max_value=1000))
def test_one_non_gsm_character_makes_the_whole_text_ucs_2(text: str, intruder: str, position: int) -> None:
    # Given GSM text with one character from outside GSM-7 put anywhere in it
    mixed = text[:position] + intruder + text[position:]
    # When it is segmented
    result = segment(mixed)
    # Then the text is UCS-2, counted in UTF-16 code units, and that character is reported
    assert result.encoding is Encoding.UCS2
    assert result.ucs2_characters == (intruder,)
    assert result.units == len(text) + (2 if ord(intruder) > 0xFFFF else 1)


def test_ucs2_characters_are_distinct_in_order_of_first_appearance() -> None:
    # Given a text with repeated non-GSM characters among GSM ones
    # When it is segmented
    # Then each offending character is reported once, in the order it first appears
    assert segment("Ça coûte 5€ — ça va? Ж ç —").ucs2_characters == ("û", "—", "ç", "Ж")


@given(st.text(alphabet=st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF), min_size=1, max_size=50))
def test_characters_outside_the_bmp_count_two_units(text: str) -> None:
    # Given text of emoji and other characters beyond U+FFFF
    # When it is segmented
    result = segment(text)
    # Then each is a surrogate pair: two UTF-16 code units
    assert result.encoding is Encoding.UCS2
    assert result.units == 2 * len(text)


@pytest.mark.parametrize(
    ("text", "encoding", "parts", "units", "per_part"),
    [
        ("a" * 160, Encoding.GSM7, 1, 160, 160),
        ("a" * 161, Encoding.GSM7, 2, 161, 153),
        ("a" * 158 + "€", Encoding.GSM7, 1, 160, 160),
        ("a" * 159 + "€", Encoding.GSM7, 2, 161, 153),
        ("a" * 306, Encoding.GSM7, 2, 306, 153),
        ("a" * 307, Encoding.GSM7, 3, 307, 153),
        ("я" * 70, Encoding.UCS2, 1, 70, 70),
        ("я" * 71, Encoding.UCS2, 2, 71, 67),
        ("😀" * 35, Encoding.UCS2, 1, 70, 70),
        ("я" * 69 + "😀", Encoding.UCS2, 2, 71, 67),
        ("я" * 134, Encoding.UCS2, 2, 134, 67),
    ],
)
def test_part_boundaries(text: str, encoding: Encoding, parts: int, units: int, per_part: int) -> None:
    # Given texts right at the single-part and multipart limits
    # When they are segmented
    result = segment(text)
    # Then they take exactly as many parts as the limits allow
    assert (result.encoding, result.parts, result.units, result.per_part) == (
        encoding,
        parts,
        units,
        per_part,
    )


def test_an_escape_pair_is_never_cut_across_parts() -> None:
    # Given 306 septets, two parts' worth, with a euro sign straddling the end of the first part
    text = "a" * 152 + "€" + "a" * 152
    # When it is segmented and split
    result = segment(text)
    parts = split(text)
    # Then the euro sign moves whole into the second part, which pushes one septet into a third
    assert result.units == 306
    assert result.parts == 3
    assert parts == ["a" * 152, "€" + "a" * 151, "a"]


def test_a_surrogate_pair_is_never_cut_across_parts() -> None:
    # Given 134 UTF-16 units, two parts' worth, with an emoji straddling the end of the first part
    text = "я" * 66 + "😀" + "я" * 66
    # When it is segmented and split
    result = segment(text)
    parts = split(text)
    # Then the emoji moves whole into the second part, which pushes one unit into a third
    assert result.units == 134
    assert result.parts == 3
    assert parts == ["я" * 66, "😀" + "я" * 65, "я"]


def test_a_gateway_that_cuts_blind_to_characters_sends_a_part_fewer_when_a_pair_straddles_a_boundary() -> None:
    # Given two parts' worth of units with an escape pair, or a surrogate pair, straddling the end of the first
    for text in ("a" * 152 + "€" + "a" * 152, "я" * 66 + "😀" + "я" * 66):
        result = segment(text)
        # Then the gateway counts 3 parts (the pair moves whole), one that cuts every per_part units (Jasmin) 2
        assert (result.parts, result.blind_parts) == (3, 2)
    # And a text of one part is one part either way, empty text too
    assert segment("x" * 160).blind_parts == segment("").blind_parts == 1


@given(any_text)
def test_blind_parts_are_the_units_cut_every_per_part_never_more_than_the_parts(text: str) -> None:
    result = segment(text)
    assert result.blind_parts <= result.parts
    if result.parts > 1:
        assert result.blind_parts == math.ceil(result.units / result.per_part)


@given(any_text)
def test_a_text_a_blind_ucs2_cut_would_split_is_told_and_every_other_is_cut_there_as_split_cuts_it(text: str) -> None:
    # Given any text, and Kannel's UCS-2 cut: every 134 octets of UTF-16, blind to characters (its GSM cut keeps
    # escape pairs whole, as split does)
    result = segment(text)
    encoded = text.encode("utf-16-be")
    blind = [encoded[start : start + 134] for start in range(0, len(encoded), 134)]
    ours = [part.encode("utf-16-be") for part in split(text)]
    # Then a long UCS-2 text is told apart exactly when the blind cut differs from split's
    differs = result.parts > 1 and result.encoding is Encoding.UCS2 and blind != ours
    assert blind_cut_splits_a_pair(text) == differs
    # And the emoji on the boundary is such a text; the same with the emoji elsewhere, or a GSM-7 €, is not
    assert blind_cut_splits_a_pair("я" * 66 + "😀" + "я" * 66)
    assert not blind_cut_splits_a_pair("я" * 65 + "😀" + "я" * 67)
    assert not blind_cut_splits_a_pair("a" * 152 + "€" + "a" * 152)


def blind_ucs2_cut(text: str) -> list[str]:
    """Kannel's and Jasmin's UCS-2 cut: every 134 octets of UTF-16, blind to characters."""
    encoded = text.encode("utf-16-be")
    return [
        encoded[start : start + 134].decode("utf-16-be", errors="surrogatepass")
        for start in range(0, len(encoded), 134)
    ]


def padded_parts(text: str) -> list[str]:
    """split's parts, each but the last that is short of 67 units ended with a zero width space."""
    parts = split(text)
    return [
        part + "\u200b" if index < len(parts) - 1 and units_of(part, Encoding.UCS2) < 67 else part
        for index, part in enumerate(parts)
    ]


emoji_text = st.text(alphabet=st.sampled_from("я😀🎉a€"), min_size=60, max_size=400)


@given(any_text | emoji_text)
def test_a_padded_text_is_cut_blind_where_split_cuts_the_text_into_as_many_parts(text: str) -> None:
    # Given any text, padded for a gateway that cuts UCS-2 blind every 67 units
    padded = padded_for_blind_cut(text)
    # Then no pair lies across a boundary, and it is charged as many parts as the text
    assert not blind_cut_splits_a_pair(padded)
    assert segment(padded).parts == segment(text).parts
    if blind_cut_splits_a_pair(text):
        # And the blind cut gives split's parts, each ended with the padding where split moved a pair
        assert blind_ucs2_cut(padded) == padded_parts(text)
    else:
        # And any other text goes as it is
        assert padded == text


@pytest.mark.parametrize(
    ("text", "pads"),
    [
        # An emoji across the first boundary, moved whole to the second part
        ("я" * 66 + "😀" + "я" * 66, [66]),
        # One across each of three boundaries (code points: each part 66 units, the pair moved)
        ("я" * 66 + "😀" + "я" * 64 + "😀" + "я" * 64 + "😀" + "я" * 10, [66, 131, 196]),
        # Across the second boundary only
        ("я" * 67 + "я" * 66 + "😀" + "я" * 5, [133]),
        # Two emojis side by side, the first across the boundary
        ("я" * 66 + "😀😀" + "я" * 70, [66]),
    ],
)
def test_a_zero_width_space_goes_before_each_emoji_split_moved_to_the_next_part(text: str, pads: list[int]) -> None:
    # When it is padded
    padded = padded_for_blind_cut(text)
    # Then a zero width space is at each given place (code points, of the padded text less the earlier ones) and
    # nowhere else, and the blind cut puts each such emoji whole at the start of its part
    assert [index - number for number, index in enumerate(i for i, c in enumerate(padded) if c == "\u200b")] == pads
    assert padded.replace("\u200b", "") == text
    cut = blind_ucs2_cut(padded)
    assert len(cut) == segment(text).parts
    assert sum(part.endswith("\u200b") for part in cut[:-1]) == len(pads)
    assert all(cut[index + 1].startswith("😀") for index, part in enumerate(cut[:-1]) if part.endswith("\u200b"))


@given(any_text)
def test_split_parts_rebuild_the_text_and_each_fits_its_part(text: str) -> None:
    # Given any text
    # When it is segmented and split
    result = segment(text)
    parts = split(text)
    # Then the parts join back to the text, their number is the part count, each fits the per-part limit,
    # and each part but the last is full: the next character would not have fitted, so no part is wasted
    assert "".join(parts) == text
    assert len(parts) == result.parts
    assert sum(units_of(part, result.encoding) for part in parts) == result.units
    for part in parts:
        assert units_of(part, result.encoding) <= result.per_part
    for part, following in itertools.pairwise(parts):
        assert part
        assert units_of(part + following[0], result.encoding) > result.per_part


@given(any_text)
def test_a_single_part_text_is_not_split(text: str) -> None:
    # Given any text
    result = segment(text)
    # When it fits in one part
    # Then split returns it whole, and the single-part limit applies
    if result.parts == 1:
        assert split(text) == [text]
        assert result.per_part == (160 if result.encoding is Encoding.GSM7 else 70)
        assert result.units <= result.per_part
