"""Mobile networks: stable integer ids and the carrier names libphonenumber reports for them."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Network:
    network_id: int
    slug: str
    # English carrier names as `phonenumbers.carrier.name_for_number` returns them, mapped in every region.
    carriers: tuple[str, ...]
    # Where libphonenumber's data places those names; informational, the lookup never consults it.
    countries: tuple[str, ...]
    # (region, carrier name) pairs for names that mean a different network elsewhere.
    regional_carriers: tuple[tuple[str, str], ...] = ()


# Ids are stored with every message and sent to clients (the shortcode API's `networkid`), so they are
# stable forever: new networks are appended with the next id, nothing is renumbered or reused.
# docs/networks.md mirrors this table and a unit test keeps the two identical.
# fmt: off
CATALOGUE: tuple[Network, ...] = (
    Network(
        1,
        "mtn",
        ("MTN", "MTN Cameroon", "Swazi MTN"),
        (
            "BJ", "CG", "CI", "CM", "CY", "GH", "NA", "NG", "RW",
            "SD", "SS", "SY", "SZ", "UG", "YE", "ZA", "ZM",
        ),
    ),
    Network(
        2,
        "airtel",
        ("Airtel",),
        (
            "CD", "CG", "GA", "GG", "IN", "JE", "KE", "LK", "MG",
            "MW", "NE", "NG", "RW", "SC", "TD", "TZ", "UG", "ZM",
        ),
    ),
    Network(3, "glo", ("Glo",), ("NG",)),
    # libphonenumber used to report 9mobile's ranges as "Etisalat", its name until 2017.
    Network(4, "9mobile", ("9mobile",), ("NG",), regional_carriers=(("NG", "Etisalat"),)),
    Network(5, "safaricom", ("Safaricom",), ("ET", "KE")),
    Network(6, "vodacom", ("Vodacom", "Vodacom Lesotho (Pty) Ltd"), ("CD", "LS", "MZ", "TZ", "ZA")),
    Network(
        7,
        "vodafone",
        ("Vodafone", "Vodafone Libertel B.V."),
        (
            "AL", "AU", "CZ", "DE", "EG", "ES", "FJ", "FO", "GB", "GR", "IE", "IN",
            "IS", "IT", "NL", "NZ", "PF", "PG", "PT", "QA", "RO", "TR", "UA", "WS",
        ),
    ),
    Network(
        8,
        "orange",
        ("Orange", "Orange France"),
        (
            "BE", "BF", "BW", "CD", "CF", "CI", "CM", "DO", "EG", "ES", "FR", "GB",
            "GF", "GN", "GP", "GW", "IL", "JO", "LR", "LU", "MA", "MD", "MG", "ML",
            "MQ", "NE", "PL", "PM", "RE", "RO", "SK", "SL", "SN", "TN", "YT",
        ),
    ),
    Network(9, "telkom", ("Telkom", "Telkom Mobile"), ("KE", "ZA")),
    Network(10, "cell-c", ("Cell C",), ("ZA",)),
    # AirtelTigo Ghana, renamed AT in 2022; libphonenumber spells it in lower case.
    Network(11, "at", ("at",), ("GH",)),
    Network(12, "telecel", ("Telecel", "Telecel Faso"), ("BF", "CF", "GH", "ZW")),
    Network(13, "moov", ("Moov", "Moov Africa"), ("BF", "BJ", "CI", "GA", "NE", "TD", "TG")),
    Network(14, "africell", ("Africell",), ("AO", "CD", "GM", "SL", "UG")),
    Network(15, "econet", ("Econet", "Econet Ezi-Cel Lesotho"), ("LS", "ZW")),
    Network(16, "yas", ("Yas",), ("MG", "SN", "TZ")),
    Network(17, "ethio-telecom", ("Ethio Telecom",), ("ET",)),
    Network(18, "maroc-telecom", ("Maroc Telecom",), ("MA",)),
    Network(19, "inwi", ("Inwi",), ("MA",)),
    Network(20, "etisalat", ("Etisalat",), ("AE", "AF", "EG", "LK")),
    Network(21, "zain", ("Zain",), ("IQ", "KW", "SA", "SD", "SS")),
    Network(22, "ooredoo", ("Ooredoo",), ("DZ", "IL", "KW", "MM", "MV", "OM", "TN")),
    Network(23, "ntel", ("Ntel",), ("NG",)),
    Network(24, "smile", ("Smile",), ("NG", "SB", "UG")),
    Network(
        25,
        "lycamobile",
        ("Lycamobile", "Lyca Mobile"),
        ("AU", "BE", "CH", "ES", "FR", "GB", "HK", "IE", "MK", "NL", "PT", "RO", "RU", "UG"),
    ),
    Network(26, "lebara", ("Lebara",), ("ES", "GB", "NG", "NL", "SA")),
    Network(27, "ee", ("EE",), ("GB",)),
    Network(28, "o2", ("O2",), ("CZ", "DE", "GB", "IE")),
    Network(29, "three", ("3", "Three"), ("AT", "DK", "GB", "HK", "IE", "MO")),
    Network(30, "t-mobile", ("T-Mobile",), ("CZ", "DE", "MK", "NL", "PL")),
    Network(31, "jio", ("Reliance Jio",), ("IN",)),
    Network(32, "tigo", ("Tigo",), ("BO", "CO", "EC", "GT", "PY", "SV")),
    Network(33, "expresso", ("Expresso",), ("GH", "SN")),
)
# fmt: on

NETWORKS: dict[str, int] = {network.slug: network.network_id for network in CATALOGUE}

# Keys are casefolded: libphonenumber capitalises inconsistently ("LycaMobile" in UG, "Lycamobile" elsewhere).
_BY_NAME: dict[str, str] = {name.casefold(): network.slug for network in CATALOGUE for name in network.carriers}
_BY_REGION_AND_NAME: dict[tuple[str, str], str] = {
    (region, name.casefold()): network.slug for network in CATALOGUE for region, name in network.regional_carriers
}

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str | None:
    """Lowercase, runs of anything but ASCII letters and digits become one '-'; None when nothing is left."""
    return _NOT_SLUG.sub("-", name.lower()).strip("-") or None


def telco_slug(region: str, carrier_name: str) -> str | None:
    """The slug for a carrier name seen in a region; unknown carriers get their name slugified."""
    name = carrier_name.strip()
    if not name:
        return None
    key = name.casefold()
    return _BY_REGION_AND_NAME.get((region.upper(), key)) or _BY_NAME.get(key) or slugify(name)


def network_id(slug: str | None) -> int:
    """The network's stable id, 0 when the slug is None or not in the table."""
    if slug is None:
        return 0
    return NETWORKS.get(slug, 0)
