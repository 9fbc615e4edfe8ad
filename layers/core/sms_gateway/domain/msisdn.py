"""Recipient numbers: what clients type, parsed into E.164 with its country and mobile network."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sms_gateway.domain.networks import network_id, telco_slug

if TYPE_CHECKING:
    from phonenumbers import PhoneNumber

_DIGITS = frozenset("0123456789")
_SEPARATORS = frozenset(" -.()")
# E.164 allows 15 digits; "00" in front makes 17. Anything longer is refused before phonenumbers sees it.
_MAX_DIGITS = 17


@dataclass(frozen=True, slots=True)
class Msisdn:
    e164: str
    country: str
    telco: str | None
    network_id: int

    @property
    def digits(self) -> str:
        """E.164 without the '+', the way every output renders a number."""
        return self.e164[1:]


class InvalidMsisdn(ValueError):
    def __init__(self, raw: str, reason: str) -> None:
        # Both go to args so the exception survives pickling (multiprocessing, Lambda error payloads).
        super().__init__(raw, reason)
        self.raw = raw
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.raw!r} is not a valid phone number: {self.reason}"


def parse_msisdn(raw: str, default_country: str = "NG") -> Msisdn:
    """Parse an international (+, 00 or bare country code) or national number; raise InvalidMsisdn."""
    outcome = _parse(raw, default_country)
    if isinstance(outcome, str):
        raise InvalidMsisdn(raw, outcome)
    return outcome


def international_digits(raw: str) -> str | None:
    """The digits of a number written in international form, however it is written: '+234 802-000 0011',
    '(+234) 8020000011', '002348020000011' and '2348020000011' all give '2348020000011'. Without the account's
    country nothing more can be told: a national form keeps its own digits ('08020000011'), and bare digits are
    taken as international (as a send takes them when they start with the account's calling code).
    None when the text cannot be a number (letters, other characters, no digits, too many)."""
    cleaned = _clean(raw)
    if isinstance(cleaned, str):
        return None
    digits, international = cleaned
    if not international and digits.startswith("00"):
        return digits[2:]
    return digits


def read_in_country(raw: str, country: str) -> str | None:
    """The international digits of a number as it is written in `country`: its national form (`08020000011` in NG
    is `2348020000011`), or international however written (`+`, `00`, or bare digits starting with the country's
    calling code). Read by its length alone, not checked: for finding a number already registered, never for taking a
    new one, so a range `phonenumbers` does not know yet is read all the same. None when the text cannot be a number
    there."""
    import phonenumbers

    cleaned = _clean(raw)
    if isinstance(cleaned, str):
        return None
    digits, international = cleaned
    if international or digits.startswith("00"):
        return international_digits(raw)
    try:
        parsed = phonenumbers.parse(digits, country.upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None  # too short or long to be a number there: a short code (`48974`) is a short code
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")


def national_digits(international: str) -> str | None:
    """The digits of a number given in international digits as it is written at home, in its own country's national
    form: `2348020000011` is `08020000011`, `12125550123` `2125550123`. For finding a number registered so, never for
    taking a new one: read by its length alone, like `read_in_country`. None when it can be no number anywhere, or is
    written the same either way."""
    import phonenumbers

    if not (international.isascii() and international.isdigit()) or len(international) > _MAX_DIGITS:
        return None
    try:
        parsed = phonenumbers.parse("+" + international, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    digits = "".join(character for character in national if character in _DIGITS)
    return digits if digits and digits != international else None


def region_code(code: str) -> str | None:
    """`code` as the ISO 3166 region `phonenumbers` knows it by (`ng` is `NG`), or None when it is none."""
    import phonenumbers

    # Two ASCII letters before upper-casing: Unicode's upper case makes 'ß' 'SS' (South Sudan) and a dotless-i 'id'
    # 'ID' (Indonesia), real regions nobody named.
    country = code.strip().upper() if re.fullmatch(r"[A-Za-z]{2}", code.strip()) else ""
    return country if country in phonenumbers.SUPPORTED_REGIONS else None


# Bulk sends repeat the same numbers. Rejections are cached as their reason rather than as an exception,
# which would grow a longer traceback every time it was re-raised.
@functools.lru_cache(maxsize=4096)
def _parse(raw: str, default_country: str) -> Msisdn | str:
    cleaned = _clean(raw)
    if isinstance(cleaned, str):
        return cleaned
    digits, international = cleaned
    region = default_country.upper()
    if international:
        return _resolve("+" + digits, None)
    if digits.startswith("00"):
        return _resolve("+" + digits[2:], None)
    as_international = _resolve("+" + digits, None)
    as_national = _resolve(digits, region)
    # Bare digits can read both ways (US 951 350 0049 is also Myanmar +95 1350 0049). The client most likely
    # meant international when they start with the account's calling code, and its own country otherwise;
    # that reading also names the error when neither is valid.
    meant_international = _starts_with_calling_code(digits, region)
    preferred, other = (as_international, as_national) if meant_international else (as_national, as_international)
    if isinstance(preferred, Msisdn) or not isinstance(other, Msisdn):
        return preferred
    return other


def _clean(raw: str) -> tuple[str, bool] | str:
    """The digits and whether a '+' led them, or why the text cannot be a phone number."""
    text = raw.strip()
    if not text:
        return "empty"
    if any(character.isalpha() for character in text):
        return "contains letters"
    international = False
    digits: list[str] = []
    for character in text:
        if character in _DIGITS:
            digits.append(character)
        elif character == "+" and not digits and not international:
            # Only before the first digit, so "(+234) 803 ..." reads as international.
            international = True
        elif character not in _SEPARATORS and not character.isspace():
            return f"contains {character!r}"
    if not digits:
        return "empty"
    if len(digits) > _MAX_DIGITS:
        return "too long"
    return "".join(digits), international


def _resolve(number: str, region: str | None) -> Msisdn | str:
    import phonenumbers

    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        return f"unknown default country {region}"
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as error:
        return _parse_error_reason(error)
    if not phonenumbers.is_valid_number(parsed):
        return _invalid_reason(parsed)
    country = phonenumbers.region_code_for_number(parsed)
    if not country or not country.isalpha():
        # Non-geographic ranges (+800 freephone, +882 satellite, ...) have region "001" and take no SMS.
        return "not a number in any country"
    from phonenumbers import carrier

    telco = telco_slug(country, carrier.name_for_number(parsed, "en"))
    return Msisdn(
        e164=phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
        country=country,
        telco=telco,
        network_id=network_id(telco),
    )


def _parse_error_reason(error: Exception) -> str:
    from phonenumbers import NumberParseException

    kind = getattr(error, "error_type", None)
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        return "unknown country calling code"
    if kind in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD):
        return "too short"
    if kind == NumberParseException.TOO_LONG:
        return "too long"
    return "not a phone number"


def _invalid_reason(parsed: PhoneNumber) -> str:
    import phonenumbers
    from phonenumbers import ValidationResult

    calling_code = parsed.country_code or 0
    possible = phonenumbers.is_possible_number_with_reason(parsed)
    if possible == ValidationResult.INVALID_COUNTRY_CODE:
        return f"unknown country calling code +{calling_code}"
    if possible == ValidationResult.TOO_SHORT:
        return "too short"
    if possible == ValidationResult.TOO_LONG:
        return "too long"
    region = phonenumbers.region_code_for_country_code(calling_code)
    return f"not a valid number for {region}"


def _starts_with_calling_code(digits: str, region: str) -> bool:
    import phonenumbers

    code = phonenumbers.country_code_for_region(region)
    return code != 0 and digits.startswith(str(code))
