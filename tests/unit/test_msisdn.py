"""Recipient number parsing, the network table, and docs/networks.md staying in step with it."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_gateway.domain.msisdn import InvalidMsisdn, Msisdn, parse_msisdn
from sms_gateway.domain.networks import CATALOGUE, NETWORKS, network_id, slugify, telco_slug

REPO = Path(__file__).resolve().parents[2]

MTN_LAGOS = Msisdn(e164="+2348031234567", country="NG", telco="mtn", network_id=1)

# Nigerian prefixes whose every 7-digit subscriber number libphonenumber gives to one carrier.
NG_PREFIXES = {
    "mtn": ["803", "806", "703", "706", "813", "816", "810", "814", "903", "906", "913", "916"],
    "airtel": ["802", "808", "701", "708", "812", "902", "907", "901", "904", "912"],
    "glo": ["805", "807", "815", "705", "905"],
    "9mobile": ["809", "817", "818", "908", "909"],
}
NG_NUMBERS = st.sampled_from([(telco, prefix) for telco, prefixes in NG_PREFIXES.items() for prefix in prefixes])
SUBSCRIBER = st.text(alphabet="0123456789", min_size=7, max_size=7)


@pytest.fixture(scope="module", autouse=True)
def phonenumbers_loaded() -> None:
    """The first parse imports phonenumbers and its carrier data, which can outlast a hypothesis deadline."""
    parse_msisdn("+2348031234567")


def sprinkle(digits: str, separators: list[str]) -> str:
    return "".join(separator + digit for separator, digit in zip(separators, digits, strict=True))


# -- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "+2348031234567",
        "2348031234567",
        "08031234567",
        "8031234567",
        "002348031234567",
        "+234 803 123 4567",
        "+234 (0) 803 123 4567",
        "0803-123-4567",
        "(0803) 123.4567",
        "(+234) 803-123-4567",
        "  0803 123 4567\t",
        "\u00a00803\u00a01234567",
    ],
)
def test_every_way_of_writing_a_nigerian_number_gives_the_same_msisdn(raw: str) -> None:
    # Given a Nigerian MTN number written the way clients write it
    # When it is parsed with Nigeria as the default country
    parsed = parse_msisdn(raw, "NG")
    # Then it is the one E.164 number on MTN
    assert parsed == MTN_LAGOS
    assert parsed.digits == "2348031234567"


@given(
    number=NG_NUMBERS,
    subscriber=SUBSCRIBER,
    form=st.sampled_from(["+234", "234", "00234", "0"]),
    data=st.data(),
)
def test_any_nigerian_mobile_number_in_any_form_keeps_its_network(
    number: tuple[str, str], subscriber: str, form: str, data: st.DataObject
) -> None:
    # Given any Nigerian mobile number with a known carrier, written in any accepted form with separators
    telco, prefix = number
    written = form + prefix + subscriber
    separators = data.draw(st.lists(st.sampled_from(["", "", " ", "-", ".", "(", ")"]), min_size=len(written)))
    raw = sprinkle(written, separators[: len(written)])
    # When it is parsed
    parsed = parse_msisdn(raw, "NG")
    # Then it is the E.164 number on that carrier's network
    assert parsed.e164 == "+234" + prefix + subscriber
    assert parsed.country == "NG"
    assert parsed.telco == telco
    assert parsed.network_id == NETWORKS[telco]


@given(number=NG_NUMBERS, subscriber=SUBSCRIBER)
def test_parsing_an_msisdn_s_own_output_gives_it_back(number: tuple[str, str], subscriber: str) -> None:
    # Given a parsed number
    parsed = parse_msisdn("0" + number[1] + subscriber, "NG")
    # When its E.164 form or its digits are parsed again, even with another default country
    # Then the result is the same number
    assert parse_msisdn(parsed.e164, "KE") == parsed
    assert parse_msisdn(parsed.digits, "NG") == parsed
    assert parse_msisdn(parsed.digits, "GH") == parsed


@pytest.mark.parametrize(
    ("raw", "default_country", "expected"),
    [
        ("0712345678", "KE", Msisdn("+254712345678", "KE", "safaricom", 5)),
        ("254712345678", "NG", Msisdn("+254712345678", "KE", "safaricom", 5)),
        ("0241234567", "GH", Msisdn("+233241234567", "GH", "mtn", 1)),
        ("+27821234567", "NG", Msisdn("+27821234567", "ZA", "vodacom", 6)),
        ("+201100000000", "NG", Msisdn("+201100000000", "EG", "etisalat", 20)),
        ("08031234567", "ng", MTN_LAGOS),
    ],
)
def test_numbers_are_read_in_their_own_country(raw: str, default_country: str, expected: Msisdn) -> None:
    # Given a number and an account's default country
    # When it is parsed
    # Then a bare international number is read as such, and a national one uses the default country
    assert parse_msisdn(raw, default_country) == expected


@pytest.mark.parametrize(
    ("raw", "default_country", "expected_e164"),
    [
        ("9513500049", "US", "+19513500049"),
        ("2015550123", "US", "+12015550123"),
        ("5143487481", "CA", "+15143487481"),
        ("3234411839", "IT", "+393234411839"),
        ("19513500049", "US", "+19513500049"),
        ("393234411839", "IT", "+393234411839"),
        ("254712345678", "NG", "+254712345678"),
    ],
)
def test_a_number_valid_both_ways_is_read_in_the_account_s_country(
    raw: str, default_country: str, expected_e164: str
) -> None:
    # Given bare digits that are a valid national number of the account's country and, read as starting with
    # a calling code, also a valid number elsewhere (US 951... is also Myanmar +95 13500049)
    # When they are parsed
    parsed = parse_msisdn(raw, default_country)
    # Then the account's own country wins, unless the digits begin with its calling code
    assert parsed.e164 == expected_e164


def test_a_fixed_line_number_is_valid_but_has_no_network() -> None:
    # Given a Nigerian landline
    # When it is parsed
    parsed = parse_msisdn("+234 203 312 3456")
    # Then it is accepted, with no telco and the unknown network id
    assert parsed == Msisdn("+2342033123456", "NG", None, 0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("+", "empty"),
        ("()-", "empty"),
        ("0803ABC4567", "contains letters"),
        ("+234 803 123 4567 ext 2", "contains letters"),
        ("0803#1234567", "contains '#'"),
        ("0803/123/4567", "contains '/'"),
        ("+234+8031234567", "contains '+'"),
        ("0803", "too short"),
        ("234803123456", "too short"),
        ("0803123456", "not a valid number for NG"),
        ("080312345678", "not a valid number for NG"),
        ("123456789012345678", "too long"),
        ("+44 7911 1234567", "too long"),
        ("+1 202 555 012", "too short"),
        ("8031234567+", "contains '+'"),
        ("+2341234567", "not a valid number for NG"),
        ("+999 1234 5678", "unknown country calling code"),
        ("+800 1234 5678", "not a number in any country"),
    ],
)
def test_what_cannot_be_a_number_is_rejected_with_a_reason(raw: str, reason: str) -> None:
    # Given something a client sent as a recipient
    # When it is parsed
    with pytest.raises(InvalidMsisdn) as raised:
        parse_msisdn(raw, "NG")
    # Then it is rejected, and the error says what was sent and why
    assert raised.value.raw == raw
    assert raised.value.reason == reason
    assert reason in str(raised.value)


def test_an_unknown_default_country_rejects_national_numbers_only() -> None:
    # Given an account whose default country is not a region
    # When a national and an international number are parsed with it
    with pytest.raises(InvalidMsisdn) as raised:
        parse_msisdn("08031234567", "XX")
    # Then the national one is rejected for that reason, and the international one is fine
    assert raised.value.reason == "unknown default country XX"
    assert parse_msisdn("+2348031234567", "XX") == MTN_LAGOS


@given(
    number=NG_NUMBERS,
    subscriber=SUBSCRIBER,
    position=st.integers(min_value=0, max_value=11),
    letter=st.characters(categories=["Lu", "Ll", "Lo"]),
)
def test_a_letter_anywhere_rejects_the_number(
    number: tuple[str, str], subscriber: str, position: int, letter: str
) -> None:
    # Given a valid number with a letter slipped in (phonenumbers would read it as a keypad digit)
    valid = "0" + number[1] + subscriber
    raw = valid[:position] + letter + valid[position:]
    # When it is parsed
    with pytest.raises(InvalidMsisdn) as raised:
        parse_msisdn(raw, "NG")
    # Then it is rejected because of the letter
    assert raised.value.reason == "contains letters"


def test_invalid_msisdn_is_a_value_error_that_survives_pickling() -> None:
    # Given a rejection
    with pytest.raises(ValueError, match="too short") as raised:
        parse_msisdn("0803")
    # When it crosses a process boundary
    copy = pickle.loads(pickle.dumps(raised.value))
    # Then it keeps what was sent and why
    assert isinstance(copy, InvalidMsisdn)
    assert (copy.raw, copy.reason) == ("0803", "too short")


def test_repeated_numbers_are_parsed_once_and_rejections_raise_fresh_errors() -> None:
    # Given a bulk send repeating the same numbers
    # When each is parsed twice
    first, second = parse_msisdn("0803 999 0001"), parse_msisdn("0803 999 0001")
    errors = []
    for _ in range(2):
        with pytest.raises(InvalidMsisdn) as raised:
            parse_msisdn("0803")
        errors.append(raised.value)
    # Then the valid number comes from the cache, and each rejection is its own exception
    assert first is second
    assert errors[0] is not errors[1]
    assert errors[0].reason == errors[1].reason == "too short"


def test_importing_the_domain_is_cheap_and_never_loads_the_geocoder() -> None:
    # Given a fresh interpreter
    script = (
        "import sys\n"
        "import sms_gateway.domain.ids, sms_gateway.domain.msisdn, sms_gateway.domain.networks\n"
        "import sms_gateway.domain.segments, sms_gateway.domain.status\n"
        "heavy = sorted(m for m in ('phonenumbers', 'boto3', 'botocore', 'httpx') if m in sys.modules)\n"
        "from sms_gateway.domain.msisdn import parse_msisdn\n"
        "parse_msisdn('08031234567')\n"
        "print(heavy, 'phonenumbers.geocoder' in sys.modules, 'phonenumbers.carrier' in sys.modules)\n"
    )
    # When the domain modules are imported and then a number is parsed
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    # Then importing loaded neither phonenumbers nor any AWS/HTTP library, and parsing used the carrier
    # data but not the geocoder
    assert run.stdout.split() == ["[]", "False", "True"]


# -- the network table -----------------------------------------------------------------------------------

# Every id ever published. Ids are stable forever: extend this when appending, never edit it.
PUBLISHED = {
    "mtn": 1, "airtel": 2, "glo": 3, "9mobile": 4, "safaricom": 5, "vodacom": 6, "vodafone": 7,
    "orange": 8, "telkom": 9, "cell-c": 10, "at": 11, "telecel": 12, "moov": 13, "africell": 14,
    "econet": 15, "yas": 16, "ethio-telecom": 17, "maroc-telecom": 18, "inwi": 19, "etisalat": 20,
    "zain": 21, "ooredoo": 22, "ntel": 23, "smile": 24, "lycamobile": 25, "lebara": 26, "ee": 27,
    "o2": 28, "three": 29, "t-mobile": 30, "jio": 31, "tigo": 32, "expresso": 33,
}  # fmt: skip


def test_published_network_ids_never_change() -> None:
    # Given the ids already handed to clients
    # When the table is read
    # Then each still names the same network
    assert {slug: NETWORKS.get(slug) for slug in PUBLISHED} == PUBLISHED


def test_network_ids_are_unique_and_appended_from_one() -> None:
    # Given the catalogue
    ids = [network.network_id for network in CATALOGUE]
    # Then ids run 1, 2, 3, ... in table order, so a new network can only be appended, and slugs are unique
    assert ids == list(range(1, len(CATALOGUE) + 1))
    assert len(NETWORKS) == len(CATALOGUE)
    assert NETWORKS["mtn"] == 1


def test_slugs_are_well_formed_and_each_carrier_name_is_listed_once() -> None:
    # Given the catalogue
    names = [name.casefold() for network in CATALOGUE for name in network.carriers]
    # Then every slug is lowercase words joined by '-', and no carrier name is listed twice (ignoring
    # case, as the lookup does), so no name can mean two networks
    for slug in NETWORKS:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), slug
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("region", "name", "slug"),
    [
        ("NG", "MTN", "mtn"),
        ("CM", "MTN Cameroon", "mtn"),
        ("NG", "9mobile", "9mobile"),
        ("NG", "Etisalat", "9mobile"),
        ("ng", "Etisalat", "9mobile"),
        ("EG", "Etisalat", "etisalat"),
        ("AE", "Etisalat", "etisalat"),
        ("GB", "LycaMobile", "lycamobile"),
        ("GB", "lycamobile", "lycamobile"),
        ("GH", "at", "at"),
        ("KE", "NRG Media Limited", "nrg-media-limited"),
        ("ZW", "Net*One", "net-one"),
        ("US", "AT&T", "at-t"),
        ("NG", "", None),
        ("NG", "  ", None),
    ],
)
def test_carrier_names_map_to_slugs_region_first(region: str, name: str, slug: str | None) -> None:
    # Given a carrier name libphonenumber reported for a number in a region
    # When it is turned into a telco slug
    # Then region-scoped names win, known names map to their network, others are slugified
    assert telco_slug(region, name) == slug


@given(st.text(max_size=40))
def test_slugify_makes_a_slug_or_nothing(name: str) -> None:
    # Given any carrier name
    # When it is slugified
    slug = slugify(name)
    # Then the result is a well-formed slug, or None exactly when the name has no ASCII letter or digit
    if slug is None:
        assert not re.search(r"[a-zA-Z0-9]", name)
    else:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)


def test_network_id_of_unknown_or_missing_slugs_is_zero() -> None:
    assert network_id("mtn") == 1
    assert network_id("safaricom") == 5
    assert network_id("nrg-media-limited") == 0
    assert network_id(None) == 0


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Each table in a markdown document as its rows of cells, keyed by its header row's first cell."""
    tables: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for index, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[index + 1].strip()):
            header = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            tables[header[0]] = rows
    return tables


def names(cell: str) -> tuple[str, ...]:
    return tuple(re.findall(r"`([^`]+)`", cell))


def test_docs_list_exactly_the_network_table() -> None:
    # Given docs/networks.md
    tables = markdown_tables((REPO / "docs" / "networks.md").read_text(encoding="utf-8"))
    # When its two tables are read
    documented = [
        (int(id_), names(slug)[0], names(carriers), tuple(c.strip() for c in countries.split(",")))
        for id_, slug, carriers, countries in tables["ID"]
    ]
    documented_regional = sorted((region, names(name)[0], names(slug)[0]) for region, name, slug in tables["Region"])
    # Then they hold the same rows as the code, in the same order
    assert documented == [
        (network.network_id, network.slug, network.carriers, network.countries) for network in CATALOGUE
    ]
    assert documented_regional == sorted(
        (region, name, network.slug) for network in CATALOGUE for region, name in network.regional_carriers
    )
