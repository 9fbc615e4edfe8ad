"""Sender IDs: what a valid one looks like, and the one form the sender registry keeps each in."""

from __future__ import annotations

import re
from collections.abc import Collection

from sms_gateway.domain.msisdn import international_digits, read_in_country

# Alphanumeric, up to 11 characters with at least one letter, spaces only between others (" 48974" or "CINEMA "
# would be look-alikes the registry tells apart); or a number of 3 to 15 digits (shortcode or long code), with or
# without '+'. Without the letter, "1" or "12" passed as an alphanumeric id, though no network takes such a number.
SENDER_ID = re.compile(r"^(?:(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9 ]{0,9}[A-Za-z0-9])?|\+?[0-9]{3,15})$")

# Why a stored message is failed rather than sent: the operator removed its sender from its account (remove-sender)
# after the send was accepted, so the account may no longer send from it (the sender may be another's by now).
SENDER_REMOVED = "sender_removed"

# The longest sender an inbound SMS is taken from: a number in any form, a sender ID or a short code, as an upstream
# gives it, fits with room to spare; anything longer is not a sender but garbage (or an attack on the inbox).
MAX_INBOUND_SENDER = 32


def registry_form(sender: str) -> str:
    """One form per sender: numbers with or without their one '+', ids in any case, are the same sender. Only one
    '+' goes: "++48974" is no way to write 48974 (lstrip took every '+' until session 30, and such a sender was sent
    upstream as written)."""
    return sender.removeprefix("+").upper()


def same_sender(a: str, b: str) -> bool:
    return registry_form(a) == registry_form(b)


def holds_sender(senders: Collection[str], sender: str) -> bool:
    """Whether `sender` is one of an account's `senders`: as registered, or a number written with or without its
    '+' (the registry's one form). An ID in another case is not: the handset would show it as written."""
    if sender in senders:
        return True
    number = sender.removeprefix("+")
    return number.isascii() and number.isdigit() and any(same_sender(own, sender) for own in senders)


def inbound_sender(raw: str) -> str:
    """The sender of an inbound SMS as the upstream gave it, trimmed: a number, or what a handset shows when it is
    none (a service's sender ID such as `WhatsApp`, a carrier's short code such as `131`). ValueError, saying why,
    only for what cannot be a sender at all: nothing, more than MAX_INBOUND_SENDER characters, or a control
    character (a line break would forge log lines and the inbox's rows)."""
    sender = raw.strip()
    if not sender:
        raise ValueError("no sender")
    if len(sender) > MAX_INBOUND_SENDER:
        raise ValueError(f"a sender longer than {MAX_INBOUND_SENDER} characters")
    if not sender.isprintable():
        raise ValueError("a sender with a control character")
    return sender


def recipient_forms(to: str, country: str | None) -> tuple[str, ...]:
    """The registry forms the number an inbound SMS was sent to (`to`, as its upstream wrote it) may be registered
    under, the form as written first: then its international digits, a `00` prefix dropped (`002348020000011`) and,
    given the country whose national forms the upstream writes (its `country` setting), a national form read there
    (`08020000011` in NG). An SMSC (Kannel, Jasmin) passes the number as the network gave it, and an operator
    registers a long code in international form; a sender registered as written (a short code, `08020000011` itself)
    is still found as written."""
    forms = [registry_form(to)]
    digits = to.removeprefix("+")
    if digits.isascii() and digits.isdigit():
        international = read_in_country(digits, country) if country else international_digits(digits)
        if international and international not in forms:
            forms.append(international)
    return tuple(forms)
